//! Credentials for the mirror: basic auth and tokens from files over smart
//! HTTP, rotation, refusal, and no secret in any log line, error message or
//! file of the mirror.

mod mirror_support;

use std::path::Path;
use std::time::Duration;

use mirror_support::{HttpServer, Origin, captured_logs, oid};
use stale_guard::mirror::{Credentials, FetchErrorKind, Mirror, SourceSpec};

const PASSWORD: &str = "pa55-S3CRET-basic-7f3a";
const WRONG: &str = "WRONG-S3CRET-basic-91c2";
const TOKEN: &str = "tok-S3CRET-token-44d1";
const URL_PASSWORD: &str = "url-S3CRET-userinfo-5e6b";
const SECRETS: &[&str] = &[PASSWORD, WRONG, TOKEN, URL_PASSWORD];

fn spec(url: &str, credentials: Option<Credentials>) -> SourceSpec {
    let mut s = SourceSpec::new("src", url, "main");
    s.poll_interval = Duration::from_secs(3600);
    s.fetch_timeout = Duration::from_secs(20);
    s.credentials = credentials;
    s
}

/// No secret in any file under `dir` (the mirror: config, state, refs).
fn assert_no_secret_in_files(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                seen += 1;
                let text = String::from_utf8_lossy(&bytes);
                for s in SECRETS {
                    assert!(!text.contains(s), "secret found in {}", p.display());
                }
            }
        }
    }
    assert!(seen > 0);
}

fn assert_no_secret(text: &str, what: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "secret in {what}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_files_over_smart_http() {
    mirror_support::capture_logs();
    let tmp = tempfile::tempdir().unwrap();
    let repos = tmp.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let origin = Origin::new(&repos, "origin.git");
    let c0 = origin.commit("main", "c0");
    let server = HttpServer::start(
        &repos,
        &tmp.path().join("http.log"),
        Some(("alice", PASSWORD)),
    );
    let secrets = tmp.path().join("secret");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("username"), "alice\n").unwrap();
    std::fs::write(secrets.join("password"), format!("{PASSWORD}\n")).unwrap();
    let creds = Credentials::Basic {
        username_file: secrets.join("username"),
        password_file: secrets.join("password"),
    };
    let mirrors = tmp.path().join("mirrors");

    // Without credentials: refused, and the message says so.
    let anonymous = Mirror::open(
        spec(&server.url("origin.git"), None),
        &tmp.path().join("anon"),
    )
    .await
    .unwrap();
    let failure = anonymous.status().last_failure.unwrap();
    assert_eq!(failure.kind, FetchErrorKind::Auth, "{}", failure.message);
    assert!(
        failure.message.contains("authentication"),
        "{}",
        failure.message
    );

    // With them: synced.
    let m = Mirror::open(spec(&server.url("origin.git"), Some(creds)), &mirrors)
        .await
        .unwrap();
    assert_eq!(
        m.head().map(|h| h.commit),
        Some(oid(&c0)),
        "{:?}",
        m.status().last_failure
    );

    // A rotated (wrong) secret is read at the next fetch: refused, no secret shown.
    std::fs::write(secrets.join("password"), WRONG).unwrap();
    let c1 = origin.commit("main", "c1");
    let err = m.refresh().await.unwrap_err();
    assert_eq!(err.kind, FetchErrorKind::Auth, "{err}");
    assert!(err.message.contains("authentication"), "{}", err.message);
    assert_no_secret(&err.message, "the error message");
    assert_eq!(m.head().unwrap().commit, oid(&c0), "head kept");

    // Rotated back: works again without a restart.
    std::fs::write(secrets.join("password"), PASSWORD).unwrap();
    m.refresh().await.unwrap();
    assert_eq!(m.head().unwrap().commit, oid(&c1));

    let st = m.status();
    assert_no_secret(&format!("{st:?}"), "the status");
    assert_no_secret_in_files(&mirrors);
    let logs = captured_logs();
    assert!(logs.contains("fetch failed"), "the log capture works");
    assert_no_secret(&logs, "the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_from_file_over_smart_http() {
    mirror_support::capture_logs();
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    let c0 = origin.commit("main", "c0");
    let server = HttpServer::start(
        tmp.path(),
        &tmp.path().join("http.log"),
        Some(("x-access-token", TOKEN)),
    );
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let creds = Credentials::Token {
        token_file,
        username: None,
    };
    let mirrors = tmp.path().join("mirrors");
    let m = Mirror::open(spec(&server.url("origin.git"), Some(creds)), &mirrors)
        .await
        .unwrap();
    assert_eq!(
        m.head().map(|h| h.commit),
        Some(oid(&c0)),
        "{:?}",
        m.status().last_failure
    );
    assert_no_secret_in_files(&mirrors);
    assert_no_secret(&captured_logs(), "the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userinfo_in_the_url_is_redacted_everywhere() {
    mirror_support::capture_logs();
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    origin.commit("main", "c0");
    let server = HttpServer::start(
        tmp.path(),
        &tmp.path().join("http.log"),
        Some(("bob", "right")),
    );
    let url = format!(
        "http://bob:{URL_PASSWORD}@127.0.0.1:{}/origin.git",
        server.port
    );
    let mirrors = tmp.path().join("mirrors");
    let m = Mirror::open(spec(&url, None), &mirrors).await.unwrap();
    let failure = m.status().last_failure.unwrap();
    assert_eq!(failure.kind, FetchErrorKind::Auth, "{}", failure.message);
    assert!(
        failure.message.contains("***@127.0.0.1"),
        "{}",
        failure.message
    );
    assert_no_secret(&failure.message, "the error message");
    assert_no_secret_in_files(&mirrors);
    assert_no_secret(&captured_logs(), "the logs");
}

#[test]
fn credentials_debug_shows_paths_only() {
    let c = Credentials::Ssh {
        private_key_file: "/var/run/secrets/git/id_ed25519".into(),
        known_hosts_file: "/var/run/secrets/git/known_hosts".into(),
    };
    let text = format!("{c:?}");
    assert!(text.contains("id_ed25519"));
}
