//! `stale-guard certs` output is accepted by the real server, and by a
//! client that trusts only the printed caBundle, under every DNS name of the
//! Service; a name outside the certificate is refused.

use base64::Engine as _;
use std::process::Command;

fn git(dir: &std::path::Path, args: &[&str]) {
    let status = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .status()
        .expect("git");
    assert!(status.success(), "git {args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_are_accepted_for_every_service_name() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("certs");
    let run = |force: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stale-guard"));
        cmd.args([
            "certs",
            "--service",
            "stale-guard",
            "--namespace",
            "sg-system",
            "--out",
        ])
        .arg(&out);
        if force {
            cmd.arg("--force");
        }
        cmd.output().expect("run stale-guard certs")
    };
    let first = run(false);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let again = run(false);
    assert_eq!(
        again.status.code(),
        Some(2),
        "refuses to overwrite without --force"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let bundle = String::from_utf8(first.stdout).unwrap();
    let ca_pem = base64::engine::general_purpose::STANDARD
        .decode(bundle.trim())
        .expect("the caBundle is base64");

    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(repo.join("app")).unwrap();
    std::fs::write(repo.join("app/kustomization.yaml"), "resources: []\n").unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "init"]);
    let config = stale_guard::config::Config::parse(&format!(
        r#"
listen: "127.0.0.1:0"
tls: {{ certFile: "{c}/tls.crt", keyFile: "{c}/tls.key" }}
mirrorDir: "{m}"
sources: [{{ name: s, url: "{r}", branch: main }}]
rules: [{{ name: r, source: s, overlay: app }}]
"#,
        c = out.display(),
        m = tmp.path().join("mirrors").display(),
        r = repo.display()
    ))
    .unwrap();
    let running = stale_guard::server::start(config, Default::default())
        .await
        .unwrap();
    let addr = running.local_addr;

    let client = |name: &str| {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).unwrap())
            .resolve(name, addr)
            .build()
            .unwrap()
    };
    for name in stale_guard::certs::service_names("stale-guard", "sg-system") {
        let url = format!("https://{name}:{}/healthz", addr.port());
        let response = client(&name).get(&url).send().await;
        assert!(
            response.as_ref().is_ok_and(|r| r.status().is_success()),
            "{name}: {response:?}"
        );
    }
    let wrong = "other.sg-system.svc";
    let refused = client(wrong)
        .get(format!("https://{wrong}:{}/healthz", addr.port()))
        .send()
        .await;
    assert!(refused.is_err(), "a name outside the certificate must fail");
    running.shutdown.trigger();
    running.task.await.unwrap().unwrap();
}
