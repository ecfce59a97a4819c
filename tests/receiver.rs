//! The push receiver (contract section 10) over real TLS with the real
//! server: GitHub, Gitea, GitLab and generic deliveries against a source
//! served by `git daemon`, polled only hourly, so every head seen moving
//! here was moved by a push. Refusals (401, 413, 400), pushes for nothing
//! configured (204), a burst of identical deliveries, replays, and the
//! secret kept out of logs and metrics.
#![cfg(unix)]

mod mirror_support;
mod support;
mod webhook_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use mirror_support::{GitDaemon, Origin};
use serde_json::json;
use sha2::Sha256;
use webhook_support::{ConfigBuilder, Pki, Proto, Server, SgProcess, new_uid, write_config};

const SOURCE: &str = "gitops";
const HOOK: &str = "/hooks/git";
/// A pushed head must be fetched well before this (the poll is hourly).
const FETCHED_WITHIN: Duration = Duration::from_secs(10);

fn hmac_hex(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[derive(Clone, Copy, Debug)]
enum Sender {
    GitHub,
    Gitea,
    GitLab,
    Generic,
}

/// One delivery: headers and body.
struct Delivery {
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

/// The source's URL in the shapes each sender uses (the daemon serves
/// `git://127.0.0.1:PORT/gitops.git`; ports, schemes, users and `.git`
/// do not matter).
fn push_body(sender: Sender, port: u16, branch: &str, after: &str) -> Vec<u8> {
    let reference = format!("refs/heads/{branch}");
    let value = match sender {
        Sender::GitHub | Sender::Gitea => json!({
            "ref": reference,
            "before": "0".repeat(40),
            "after": after,
            "repository": {
                "id": 1,
                "full_name": "corp/gitops",
                "html_url": format!("http://127.0.0.1:{port}/gitops"),
                "clone_url": "https://127.0.0.1/gitops.git",
                "ssh_url": "git@127.0.0.1:gitops.git",
                "homepage": null,
            },
            "pusher": { "name": "dev" },
        }),
        Sender::GitLab => json!({
            "object_kind": "push",
            "ref": reference,
            "after": after,
            "project": {
                "git_http_url": format!("https://127.0.0.1:{port}/gitops.git"),
                "git_ssh_url": "git@127.0.0.1:gitops.git",
                "web_url": "https://127.0.0.1/gitops",
            },
        }),
        Sender::Generic => json!({
            "url": format!("git://127.0.0.1:{port}/gitops.git"),
            "branch": branch,
            "after": after,
        }),
    };
    serde_json::to_vec(&value).unwrap()
}

/// Signs or authorises `body` as `sender` does, with `secret`.
fn deliver(sender: Sender, secret: &str, body: Vec<u8>) -> Delivery {
    let sig = hmac_hex(secret, &body);
    let headers = match sender {
        Sender::GitHub => vec![
            ("x-github-event", "push".to_owned()),
            ("x-hub-signature-256", format!("sha256={sig}")),
        ],
        // Gitea sends its own headers and GitHub's.
        Sender::Gitea => vec![
            ("x-gitea-event", "push".to_owned()),
            ("x-github-event", "push".to_owned()),
            ("x-gitea-signature", sig.clone()),
            ("x-hub-signature-256", format!("sha256={sig}")),
        ],
        Sender::GitLab => vec![
            ("x-gitlab-event", "Push Hook".to_owned()),
            ("x-gitlab-token", secret.to_owned()),
        ],
        Sender::Generic => vec![("authorization", format!("Bearer {secret}"))],
    };
    Delivery { headers, body }
}

/// Fields drop in order: the server stops before its remote and directory go.
struct Fixture {
    srv: Server,
    _daemon: GitDaemon,
    origin: Origin,
    port: u16,
    secret: String,
    secret_file: PathBuf,
    _dir: tempfile::TempDir,
}

fn receiver_config(dir: &Path, url: &str, secret_file: &Path) -> ConfigBuilder {
    let mut c = ConfigBuilder::new(dir);
    c.source(SOURCE, url, "1h");
    c.rule(
        "gitops",
        "prod-apps",
        SOURCE,
        "overlays/prod",
        "enforce",
        "strict",
    );
    c.receiver = Some(format!(
        "{{ path: {HOOK}, secretFile: {} }}",
        serde_json::to_string(secret_file.to_str().unwrap()).unwrap()
    ));
    c
}

/// An origin with one commit, served by `git daemon`, and a synced server.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::new(dir.path(), "gitops.git");
    origin.commit("main", "first");
    let daemon = GitDaemon::start(dir.path());
    let secret = format!("rcv-{}-k3y", new_uid("secret"));
    let secret_file = dir.path().join("receiver-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let config = receiver_config(dir.path(), &daemon.url("gitops.git"), &secret_file);
    let srv = Server::start(&config).await;
    let f = Fixture {
        port: daemon.port,
        _dir: dir,
        origin,
        _daemon: daemon,
        secret,
        secret_file,
        srv,
    };
    assert_eq!(f.head(), f.origin.tip("main"), "first sync");
    f
}

impl Fixture {
    fn mirror(&self) -> Arc<stale_guard::mirror::Mirror> {
        let state = &self.srv.running.as_ref().unwrap().state;
        state.sources[SOURCE].mirror.clone()
    }

    fn head(&self) -> Option<String> {
        self.mirror().head().map(|h| h.commit.to_string())
    }

    fn fetches(&self) -> u64 {
        self.mirror().status().fetches
    }

    fn metrics_text(&self) -> String {
        self.srv.running.as_ref().unwrap().state.metrics.encode()
    }

    /// `stale_guard_receiver_push_to_head_seconds_count` for the source.
    fn timed_pushes(&self) -> u64 {
        metric(
            &self.metrics_text(),
            &format!("stale_guard_receiver_push_to_head_seconds_count{{source=\"{SOURCE}\"}}"),
        )
    }

    fn pushes(&self, result: &str) -> u64 {
        metric(
            &self.metrics_text(),
            &format!("stale_guard_receiver_pushes_total{{result=\"{result}\"}}"),
        )
    }

    fn body(&self, sender: Sender, branch: &str, after: &str) -> Vec<u8> {
        push_body(sender, self.port, branch, after)
    }

    async fn post(&self, proto: Proto, d: &Delivery) -> (u16, String) {
        post(&self.srv.client(proto), &self.srv.base, d).await
    }

    /// Waits until the mirror's head is `commit`; returns how long it took.
    async fn wait_head(&self, commit: &str) -> Duration {
        let start = Instant::now();
        while self.head().as_deref() != Some(commit) {
            assert!(
                start.elapsed() < FETCHED_WITHIN,
                "head {commit} not fetched within {FETCHED_WITHIN:?} (the poll is hourly)"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start.elapsed()
    }

    /// Waits until `n` pushes have been served (their fetch done).
    async fn wait_timed(&self, n: u64) {
        let start = Instant::now();
        while self.timed_pushes() < n {
            assert!(
                start.elapsed() < FETCHED_WITHIN,
                "{} of {n} pushes served",
                self.timed_pushes()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn post(client: &reqwest::Client, base: &str, d: &Delivery) -> (u16, String) {
    let mut req = client
        .post(format!("{base}{HOOK}"))
        .header("content-type", "application/json")
        .body(d.body.clone());
    for (name, value) in &d.headers {
        req = req.header(*name, value);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST the push: {e:?}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// The value of the sample line that starts with `series ` (0 if absent).
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sender_fetches_the_pushed_head_at_once() {
    let f = fixture().await;
    let mut latencies = Vec::new();
    let senders = [
        (Sender::GitHub, Proto::H2),
        (Sender::Gitea, Proto::H1),
        (Sender::GitLab, Proto::H2),
        (Sender::Generic, Proto::H1),
    ];
    for (i, (sender, proto)) in senders.into_iter().enumerate() {
        let commit = f.origin.commit("main", &format!("push {i}"));
        let d = deliver(sender, &f.secret, f.body(sender, "main", &commit));
        let sent = Instant::now();
        let (status, text) = f.post(proto, &d).await;
        assert_eq!(status, 202, "{sender:?}: {text}");
        assert!(text.contains(SOURCE), "{sender:?}: {text}");
        f.wait_head(&commit).await;
        latencies.push(sent.elapsed());
    }
    eprintln!("push to head fetched: {latencies:?}");
    // A ping (GitHub's first delivery) is authenticated, then ignored.
    let mut ping = deliver(Sender::GitHub, &f.secret, br#"{"zen":"hi"}"#.to_vec());
    ping.headers[0].1 = "ping".into();
    assert_eq!(f.post(Proto::H2, &ping).await.0, 204);
    f.wait_timed(4).await;
    assert_eq!(f.pushes("accepted"), 4);
    assert_eq!(f.pushes("ignored"), 1);
    // Exported at /metrics, with every result from the start.
    let (_, text) = f.srv.get("/metrics").await;
    for series in [
        "stale_guard_receiver_pushes_total{result=\"unauthorized\"} 0",
        "stale_guard_receiver_pushes_total{result=\"accepted\"} 4",
        "stale_guard_receiver_push_to_head_seconds_count{source=\"gitops\"} 4",
    ] {
        assert!(text.lines().any(|l| l == series), "{series} not in\n{text}");
    }
    f.srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_pushes_for_nothing_configured_fetch_nothing() {
    let f = fixture().await;
    let head = f.head();
    let fetches = f.fetches();
    let new = f.origin.commit("main", "not announced");
    let body = f.body(Sender::GitHub, "main", &new);
    let client = f.srv.client(Proto::H1);
    let base = &f.srv.base;

    // 401: one answer whatever was wrong.
    let signed_by = |key: &str, sender| deliver(sender, key, body.clone());
    let mut wrong_sig = signed_by(&f.secret, Sender::GitHub);
    wrong_sig.headers[1].1 = format!("sha256={}", "0".repeat(64));
    let mut missing = signed_by(&f.secret, Sender::GitHub);
    missing.headers.truncate(1);
    let mut not_hex = signed_by(&f.secret, Sender::GitHub);
    not_hex.headers[1].1 = "sha256=xyz".into();
    let mut tampered = signed_by(&f.secret, Sender::GitHub);
    tampered.body = f.body(Sender::GitHub, "main", &"1".repeat(40));
    // Gitea's two signatures: one wrong one refuses.
    let mut half_gitea = signed_by(&f.secret, Sender::Gitea);
    half_gitea.headers[2].1 = "0".repeat(64);
    let mut wrong_token = signed_by(&f.secret, Sender::GitLab);
    wrong_token.headers[1].1 = format!("{}x", f.secret);
    let mut twice = signed_by(&f.secret, Sender::GitLab);
    twice.headers.push(("x-gitlab-token", f.secret.clone()));
    let unauthorized = [
        ("wrong signature", wrong_sig),
        ("missing signature", missing),
        ("signature not hex", not_hex),
        ("body changed after signing", tampered),
        ("one of two signatures wrong", half_gitea),
        (
            "wrong secret (GitHub)",
            signed_by("another-secret", Sender::GitHub),
        ),
        (
            "wrong secret (Gitea)",
            signed_by("another-secret", Sender::Gitea),
        ),
        ("wrong token (GitLab)", wrong_token),
        ("token sent twice", twice),
        (
            "wrong secret (generic)",
            signed_by("another-secret", Sender::Generic),
        ),
        (
            "a prefix of the token",
            deliver(
                Sender::Generic,
                &f.secret[..f.secret.len() - 1],
                body.clone(),
            ),
        ),
        (
            "no credentials",
            Delivery {
                headers: vec![],
                body: body.clone(),
            },
        ),
    ];
    let mut bodies = Vec::new();
    for (what, d) in &unauthorized {
        let (status, text) = post(&client, base, d).await;
        assert_eq!(status, 401, "{what}: {text}");
        bodies.push(text);
    }
    bodies.dedup();
    assert_eq!(bodies.len(), 1, "401 bodies differ: {bodies:?}");

    // 413: declared, and streamed without a length (chunked).
    let big = {
        let mut v = b"{\"pad\":\"".to_vec();
        v.resize((1 << 20) + 1, b'a');
        v
    };
    let d = deliver(Sender::GitHub, &f.secret, big.clone());
    // Over HTTP/2: refused before the body is read, an HTTP/1.1 client
    // may see the connection close while it still sends.
    let (status, text) = post(&f.srv.client(Proto::H2), base, &d).await;
    assert_eq!(status, 413, "{text}");
    assert_eq!(chunked_post(&f, &d.headers, &big).await, 413);
    // Exactly 1 MiB is read (and refused as JSON, having been signed).
    let at_limit = deliver(Sender::GitHub, &f.secret, big[..1 << 20].to_vec());
    assert_eq!(post(&client, base, &at_limit).await.0, 400);

    // 400: authenticated, not a push body.
    for bad in [
        &b"{\"ref\": "[..],
        b"payload=%7B%7D",
        b"[1,2]",
        br#"{"ref":"refs/heads/main"}"#,
    ] {
        let d = deliver(Sender::GitHub, &f.secret, bad.to_vec());
        let (status, text) = post(&client, base, &d).await;
        assert_eq!(status, 400, "{}: {text}", String::from_utf8_lossy(bad));
        assert!(text.contains("message"), "{text}");
    }

    // 204: pushes for no configured branch or URL, tags, other events.
    let elsewhere = serde_json::to_vec(&json!({
        "ref": "refs/heads/main", "after": new,
        "repository": { "clone_url": "https://127.0.0.1/other.git" },
    }))
    .unwrap();
    let tag = serde_json::to_vec(&json!({
        "ref": "refs/tags/v1", "after": new,
        "repository": { "clone_url": "https://127.0.0.1/gitops.git" },
    }))
    .unwrap();
    let mut issue = deliver(Sender::GitHub, &f.secret, body.clone());
    issue.headers[0].1 = "issues".into();
    for (what, d) in [
        (
            "another branch",
            deliver(
                Sender::GitHub,
                &f.secret,
                f.body(Sender::GitHub, "dev", &new),
            ),
        ),
        (
            "another branch (generic)",
            deliver(
                Sender::Generic,
                &f.secret,
                f.body(Sender::Generic, "dev", &new),
            ),
        ),
        ("another URL", deliver(Sender::GitHub, &f.secret, elsewhere)),
        ("a tag", deliver(Sender::GitLab, &f.secret, tag)),
        ("not a push event", issue),
    ] {
        let (status, text) = post(&client, base, &d).await;
        assert_eq!((status, text.as_str()), (204, ""), "{what}");
    }

    // 405: other methods.
    let resp = client.get(format!("{base}{HOOK}")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);

    assert_eq!(f.pushes("unauthorized"), unauthorized.len() as u64);
    assert_eq!(f.pushes("too_large"), 2);
    assert_eq!(f.pushes("malformed"), 5);
    assert_eq!(f.pushes("ignored"), 5);
    assert_eq!(f.pushes("accepted"), 0);
    // Give a wrongly started fetch time to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(f.fetches(), fetches, "a refused or ignored push fetched");
    assert_eq!(f.head(), head);

    // A rotated secret is picked up without a restart; the old one stops.
    let rotated = format!("{}-rotated", f.secret);
    std::fs::write(&f.secret_file, &rotated).unwrap();
    let probe = |key: &str| deliver(Sender::GitHub, key, f.body(Sender::GitHub, "release", &new));
    let start = Instant::now();
    while post(&client, base, &probe(&rotated)).await.0 != 204 {
        assert!(start.elapsed() < FETCHED_WITHIN, "rotated secret not used");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(post(&client, base, &probe(&f.secret)).await.0, 401);
    f.srv.stop().await;
}

/// POSTs `body` in 64 KiB chunks with no `Content-Length`, over HTTP/1.1;
/// returns the status.
async fn chunked_post(f: &Fixture, headers: &[(&str, String)], body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = f.srv.base.trim_start_matches("https://").to_owned();
    let mut tls = webhook_support::tls_connect(
        &addr,
        "127.0.0.1".parse().unwrap(),
        &f.srv.pki.ca.pem(),
        b"http/1.1",
    )
    .await
    .unwrap();
    let mut head = format!(
        "POST {HOOK} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and close before the whole body is sent.
    for chunk in body.chunks(64 << 10) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        if tls.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = tls.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_identical_pushes_fetches_once() {
    let f = fixture().await;
    let before = f.fetches();
    let commit = f.origin.commit("main", "burst");
    let d = Arc::new(deliver(
        Sender::GitHub,
        &f.secret,
        f.body(Sender::GitHub, "main", &commit),
    ));
    let client = f.srv.client(Proto::H2);
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (client, base, d) = (client.clone(), f.srv.base.clone(), d.clone());
        burst.spawn(async move { post(&client, &base, &d).await.0 });
    }
    while let Some(status) = burst.join_next().await {
        assert_eq!(status.unwrap(), 202);
    }
    f.wait_head(&commit).await;
    f.wait_timed(50).await;
    assert_eq!(
        f.fetches() - before,
        1,
        "50 deliveries of one push: one fetch"
    );
    // A push after that fetch finished starts a new one.
    let next = f.origin.commit("main", "after the burst");
    let d = deliver(
        Sender::GitLab,
        &f.secret,
        f.body(Sender::GitLab, "main", &next),
    );
    assert_eq!(f.post(Proto::H1, &d).await.0, 202);
    f.wait_head(&next).await;
    f.wait_timed(51).await;
    assert_eq!(f.fetches() - before, 2);
    f.srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_pushes_change_nothing_but_a_fetch() {
    let f = fixture().await;
    let start_fetches = f.fetches();
    let c2 = f.origin.commit("main", "two");
    let push2 = deliver(
        Sender::GitHub,
        &f.secret,
        f.body(Sender::GitHub, "main", &c2),
    );
    assert_eq!(f.post(Proto::H2, &push2).await.0, 202);
    f.wait_head(&c2).await;
    f.wait_timed(1).await;
    assert_eq!(f.fetches() - start_fetches, 1);
    // The same delivery again: its commit is the head already.
    assert_eq!(f.post(Proto::H2, &push2).await.0, 202);
    f.wait_timed(2).await;
    assert_eq!(
        f.fetches() - start_fetches,
        1,
        "a replay of the head fetched"
    );
    let c3 = f.origin.commit("main", "three");
    let push3 = deliver(
        Sender::GitHub,
        &f.secret,
        f.body(Sender::GitHub, "main", &c3),
    );
    assert_eq!(f.post(Proto::H1, &push3).await.0, 202);
    f.wait_head(&c3).await;
    f.wait_timed(3).await;
    // An old push replayed: one fetch, and the head stays where the
    // remote says, not where the old body says.
    let rewrites = f.mirror().status().history_rewrites;
    assert_eq!(f.post(Proto::H1, &push2).await.0, 202);
    f.wait_timed(4).await;
    assert_eq!(f.fetches() - start_fetches, 3);
    assert_eq!(f.head().as_deref(), Some(c3.as_str()));
    assert_eq!(f.mirror().status().history_rewrites, rewrites);
    f.srv.stop().await;
}

#[test]
fn the_secret_stays_out_of_logs_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::new(dir.path(), "gitops.git");
    origin.commit("main", "first");
    let daemon = GitDaemon::start(dir.path());
    let secret = format!("leak-canary-{}", new_uid("s"));
    let secret_file = dir.path().join("receiver-secret");
    let pki = Pki::write(&dir.path().join("tls"));
    let config = receiver_config(dir.path(), &daemon.url("gitops.git"), &secret_file);
    let config_file = write_config(dir.path(), &config, &pki);

    // Refused at start, naming the field: no file, an empty one.
    let serve = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_stale-guard"))
            .args(["serve", "--config"])
            .arg(&config_file)
            .output()
            .unwrap()
    };
    for content in [None, Some("\n")] {
        if let Some(content) = content {
            std::fs::write(&secret_file, content).unwrap();
        }
        let out = serve();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started without a secret");
        assert!(stderr.contains("receiver.secretFile"), "{stderr}");
    }

    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let sg = SgProcess::spawn(&config_file);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = webhook_support::client(&pki.ca.pem(), Proto::H2);
    let base = sg.base();
    rt.block_on(async {
        let mut expected_head = None;
        for (i, sender) in [
            Sender::GitHub,
            Sender::Gitea,
            Sender::GitLab,
            Sender::Generic,
        ]
        .into_iter()
        .enumerate()
        {
            let commit = origin.commit("main", &format!("leak {i}"));
            let body = push_body(sender, daemon.port, "main", &commit);
            let good = deliver(sender, &secret, body.clone());
            assert_eq!(post(&client, &base, &good).await.0, 202);
            // Near misses of the secret, which a careless message might echo.
            let bad = deliver(sender, &format!("{secret}0"), body);
            assert_eq!(post(&client, &base, &bad).await.0, 401);
            expected_head = Some(commit);
        }
        let expected_head = expected_head.unwrap();
        let start = Instant::now();
        while !sg.stdout_text().contains(&expected_head) {
            assert!(start.elapsed() < FETCHED_WITHIN, "{}", sg.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let metrics = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("stale_guard_receiver_pushes_total"));
        assert!(!metrics.contains(&secret), "the secret in /metrics");
        // The prefix shared with every near miss must not show either.
        assert!(!metrics.contains("leak-canary"), "{metrics}");
    });
    let log = sg.log();
    assert!(log.contains("push received"), "{log}");
    assert!(
        !log.contains("leak-canary"),
        "the secret in the log:\n{log}"
    );
}
