//! Text from requests and repositories is echoed capped (`src/echo.rs`):
//! hostile values megabytes long, tens of thousands of near-miss keys and
//! multi-megabyte symlink targets, paths and parse errors in an overlay
//! all get a bounded answer and a bounded audit line from the real server,
//! over TLS.
#![cfg(unix)]

mod support;
mod webhook_support;

use serde_json::Value;
use support::Repo;
use webhook_support::*;

/// Longest answer body and audit line accepted: a message is bounded to
/// 2 KiB, the rest of an answer and a line is a few hundred bytes.
const BOUND: usize = 8 << 10;

/// Asserts the raw answer and the audit line of `uid` are bounded, and
/// returns the line's fields.
async fn assert_bounded(v: &Verdict, reason: &str, allowed: bool) -> Value {
    let answer = v.body.to_string();
    assert!(
        answer.len() < BOUND,
        "answer of {} bytes: {}…",
        answer.len(),
        &answer[..2000.min(answer.len())]
    );
    let fields = audit_line(&v.uid, reason, allowed).await;
    let line = audit_lines(&v.uid)[0].to_string();
    assert!(
        line.len() < BOUND,
        "audit line of {} bytes: {}…",
        line.len(),
        &line[..2000.min(line.len())]
    );
    fields
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_request_text_is_echoed_capped() {
    let repo = Repo::new();
    repo.write("app/kustomization.yaml", "resources: []\n");
    let head = repo.commit("app");
    let scratch = tempfile::tempdir().unwrap();
    let mut config = ConfigBuilder::new(scratch.path());
    config.source("gitops", repo.path_str(), "1h");
    config.rule("app", "prod-apps", "gitops", "app", "enforce", "strict");
    config.rule("app-warn", "warn-apps", "gitops", "app", "warn", "strict");
    let srv = Server::start(&config).await;
    let client = srv.client(Proto::H2);
    let sum = format!("sha256:{}", "0".repeat(64));

    // A 7 MiB revision annotation: named, cut, its size said.
    let huge = format!("{}{}", "7".repeat(7 << 20), "TAIL");
    let size = format!("({} bytes)", huge.len());
    for (namespace, allowed) in [("prod-apps", false), ("warn-apps", true)] {
        let review = Review::ingress("huge", namespace).stamped(&huge, &sum);
        let v = post_review(&client, &srv.base, &review).await;
        let text = if allowed {
            v.assert_allowed("MalformedRevision");
            let warnings = v.warnings();
            assert_eq!(warnings.len(), 1, "{}", v.body);
            warnings[0].clone()
        } else {
            v.assert_denied("MalformedRevision").to_owned()
        };
        assert!(text.contains(&size) && text.contains("7TAIL"), "{text}");
        let line = assert_bounded(&v, "MalformedRevision", allowed).await;
        assert!(line["detail"].as_str().unwrap().contains(&size), "{line}");
    }

    // 50,000 near-miss keys: five named, the rest counted.
    let mut review = Review::ingress("near", "prod-apps").annotate(CHECKSUM_KEY, &sum);
    review
        .annotations
        .extend((0..50_000).map(|i| (format!("team{i:05}.example.com/revision"), "x".to_owned())));
    let v = post_review(&client, &srv.base, &review).await;
    let msg = v.assert_denied("MissingRevision");
    assert!(msg.contains("\"team00000.example.com/revision\""), "{msg}");
    assert!(msg.contains("and 49995 more"), "{msg}");
    assert_bounded(&v, "MissingRevision", false).await;

    // Request fields only the audit line shows (name, user): capped there
    // too.
    let mut review = Review::ingress("user", "prod-apps").stamped(&head, &sum);
    review.username = "u".repeat(2 << 20);
    review.name = "n".repeat(2 << 20);
    let v = post_review(&client, &srv.base, &review).await;
    v.assert_denied("ChecksumMismatch");
    let line = assert_bounded(&v, "ChecksumMismatch", false).await;
    assert!(
        line["name"].as_str().unwrap().contains("(2097152 bytes)"),
        "{line}"
    );

    // A 400 that quotes the body's apiVersion: capped.
    let body = serde_json::json!({
        "apiVersion": "v".repeat(7 << 20),
        "kind": "AdmissionReview",
        "request": {},
    });
    let resp = client
        .post(format!("{}/validate", srv.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let text = resp.text().await.unwrap();
    assert!(text.len() < BOUND, "400 body of {} bytes", text.len());
    assert!(text.contains("(7340032 bytes)"), "{text}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_repository_text_is_echoed_capped() {
    let repo = Repo::new();
    let long = "p".repeat(3 << 20);
    // A reference to a path megabytes long (not found: path echoed).
    repo.write(
        "path/kustomization.yaml",
        format!("resources:\n- {long}/cm.yaml\n"),
    );
    // A parse error quoting a megabytes-long generator source.
    repo.write(
        "yaml/kustomization.yaml",
        format!("configMapGenerator:\n- name: x\n  files:\n  - ={long}\n"),
    );
    repo.write("link/kustomization.yaml", "resources:\n- base\n");
    // A symlink whose absolute target is megabytes long (git stores it;
    // no filesystem could).
    let target = format!("/{long}");
    let head = repo.commit_with_raw_symlink("link/base", target.as_bytes(), "hostile");
    let scratch = tempfile::tempdir().unwrap();
    let mut config = ConfigBuilder::new(scratch.path());
    config.source("gitops", repo.path_str(), "1h");
    // Room for the megabytes-long kustomizations, so that the text inside
    // them reaches the messages (the default refuses them by size first).
    config.limits = Some("{ maxKustomizationBytes: 16777216 }".into());
    for name in ["path", "yaml", "link"] {
        config.rule(
            name,
            &format!("{name}-apps"),
            "gitops",
            name,
            "enforce",
            "strict",
        );
    }
    let srv = Server::start(&config).await;
    let client = srv.client(Proto::H1);
    let sum = format!("sha256:{}", "0".repeat(64));
    for (name, says) in [
        ("path", "not found"),
        ("yaml", "empty key or path"),
        ("link", "absolute target"),
    ] {
        // Twice: the second answer comes from the cached error.
        for round in 0..2 {
            let review = Review::ingress(&format!("{name}-{round}"), &format!("{name}-apps"))
                .stamped(&head, &sum);
            let v = post_review(&client, &srv.base, &review).await;
            let msg = v.assert_denied("OverlayError");
            assert!(msg.contains(says), "{name}: {msg}");
            assert!(
                msg.contains("bytes)…ppp"),
                "{name}: the cut is marked: {msg}"
            );
            assert_bounded(&v, "OverlayError", false).await;
        }
    }
    srv.stop().await;
}
