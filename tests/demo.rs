//! The README's first command, `stale-guard demo`, run as a user would: it
//! must exit 0 and show one allowed and three denied verdicts with their
//! reason codes, and the denial log lines. The fourth apply (content
//! verification) needs kubectl, which these tests require anyway.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn demo_shows_one_allowed_and_three_denied_applies() {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_stale-guard"))
        .arg("demo")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("run stale-guard demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed: {stdout}\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60));

    assert_eq!(stdout.matches("-> allowed  (Fresh)").count(), 1, "{stdout}");
    assert_eq!(stdout.matches("-> DENIED").count(), 3, "{stdout}");
    assert!(
        stdout.contains("Error from server (Forbidden): StaleRevision: revision "),
        "{stdout}"
    );
    assert!(
        stdout.contains("commits and 40 days behind main@"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Error from server (Forbidden): MissingChecksum: ")
            && stdout.contains("near-miss key \"fluxcd\""),
        "{stdout}"
    );
    // No annotation at all: the body is compared with head's rendering, and
    // the denial says which six-week-old commit it is.
    assert!(
        stdout.contains("Error from server (Forbidden): ContentMismatch: Ingress.networking.k8s.io prod-apps/web differs from the rendering at main@")
            && stdout.contains("spec.rules[0].http.paths[0].backend.service.name: found \"web-v1\", head renders \"web-v37\"")
            && stdout.contains("; it matches the rendering at ")
            && stdout.contains(", 36 commits and 40 days behind main@"),
        "{stdout}"
    );
    // The audit log lines of the denials, as JSON.
    let audit: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix('{').map(|_| l.trim()))
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect();
    let reasons: Vec<&str> = audit
        .iter()
        .filter_map(|v| v["fields"]["reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        ["StaleRevision", "MissingChecksum", "ContentMismatch"],
        "{stdout}"
    );
}
