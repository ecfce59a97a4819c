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

/// notBefore and notAfter of every certificate in a PEM file, as seconds
/// since the epoch.
fn cert_dates(path: &std::path::Path) -> Vec<(i64, i64)> {
    let pem = std::fs::read(path).unwrap();
    x509_parser::pem::Pem::iter_from_buffer(&pem)
        .map(|p| {
            let p = p.expect("PEM");
            let cert = p.parse_x509().expect("an X.509 certificate");
            let v = cert.validity();
            (v.not_before.timestamp(), v.not_after.timestamp())
        })
        .collect()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The CA and the serving certificate are valid from a few minutes before
/// now (clock skew) for one year, or for `--validity`; a validity beyond
/// ten years or under an hour is refused.
#[test]
fn certs_are_valid_from_now_for_a_bounded_time() {
    const DAY: i64 = 86_400;
    let tmp = tempfile::tempdir().unwrap();
    let run = |out: &std::path::Path, validity: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stale-guard"));
        cmd.args(["certs", "--service", "sg", "--namespace", "ns", "--out"])
            .arg(out);
        if let Some(v) = validity {
            cmd.args(["--validity", v]);
        }
        cmd.output().expect("run stale-guard certs")
    };
    for (validity, days) in [(None, 365), (Some("30d"), 30), (Some("2y"), 730)] {
        let out = tmp.path().join(format!("{days}"));
        let before = now();
        let done = run(&out, validity);
        let after = now();
        assert!(
            done.status.success(),
            "{validity:?}: {}",
            String::from_utf8_lossy(&done.stderr)
        );
        for file in ["ca.crt", "tls.crt"] {
            let certs = cert_dates(&out.join(file));
            assert_eq!(certs.len(), 1, "{file}");
            let (not_before, not_after) = certs[0];
            // Starts now, minus the 5 minute clock-skew allowance.
            assert!(
                (before - 300 - 1..=after - 300 + 1).contains(&not_before),
                "{file} {validity:?}: notBefore {not_before}, now {before}..{after}"
            );
            // `2y` is humantime's 2 * 365.25 days.
            let want = before + days * DAY + if days == 730 { DAY / 2 } else { 0 };
            assert!(
                (want - 1..=after - before + want + 1).contains(&not_after),
                "{file} {validity:?}: notAfter {not_after}, want about {want}"
            );
        }
    }
    for bad in ["11y", "10m", "soon"] {
        let done = run(&tmp.path().join(format!("bad-{bad}")), Some(bad));
        assert_eq!(done.status.code(), Some(2), "--validity {bad}");
        assert!(
            String::from_utf8_lossy(&done.stderr).contains("validity"),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
    }
}
