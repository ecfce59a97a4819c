//! The webhook as a process: `stale-guard serve --config FILE` spawned with
//! its JSON log on stdout (the port is read from the "stale-guard webhook
//! serving" line). SIGTERM during a burst of requests (graceful drain),
//! mutual TLS, and certificate rotation by a kubelet-style `..data`
//! symlink swap under continuous requests.
#![cfg(unix)]

mod support;
mod webhook_support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use webhook_support::*;

/// A client that opens a new connection for every request.
fn fresh_conn_client(ca_pem: &str, proto: Proto) -> reqwest::Client {
    client_builder(ca_pem, proto)
        .pool_max_idle_per_host(0)
        .tls_info(true)
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// SIGTERM
// ---------------------------------------------------------------------------

// Fields are read through `Debug` in failure messages.
#[allow(dead_code)]
#[derive(Debug)]
enum Outcome {
    /// A complete, valid AdmissionReview answering the request's uid.
    Answered { slow: bool, reason: String },
    /// The connection could not be made (listener closed): expected after SIGTERM.
    Refused { after_term: bool },
    /// Anything else: a broken exchange.
    Broken {
        after_term: bool,
        slow: bool,
        task: usize,
        fresh_connection: bool,
        started: Duration,
        failed: Duration,
        error: String,
    },
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_a_burst_drains_in_flight_requests() {
    let w = World::build();
    let remote = GitRemote::start(w.repo().path().parent().unwrap());
    let dir = w.scratch.path().join("proc");
    let pki = Pki::write(&dir.join("tls"));
    let mut config = ConfigBuilder::new(&dir);
    config.source_with("gitops", &remote.url("repo"), "1h", "30s");
    config.rule(
        "prod-east",
        "prod-apps",
        "gitops",
        EAST,
        "enforce",
        "strict",
    );
    config.failure("{ mirrorUnavailable: deny, maxMirrorStaleness: 10m, decisionTimeout: 2s }");
    let mut sg = SgProcess::spawn(&write_config(&dir, &config, &pki));
    let base = sg.base();
    let ca = pki.ca.pem();
    let warm = Review::ingress("term-warm", "prod-apps").stamped(&w.head, &w.head_sum);
    post_review(&client(&ca, Proto::H2), &base, &warm)
        .await
        .assert_allowed("Fresh");

    // From now on an on-demand fetch hangs: a review of an unknown revision
    // stays in flight for the whole decision timeout (2 s).
    remote.hang();
    let termed = Arc::new(AtomicBool::new(false));
    let slow_in_flight = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let epoch = Instant::now();
    for t in 0..4usize {
        let proto = if t % 2 == 0 { Proto::H1 } else { Proto::H2 };
        // Tasks 0 and 1 reuse connections; 2 and 3 open one per request.
        let client = if t < 2 {
            client(&ca, proto)
        } else {
            fresh_conn_client(&ca, proto)
        };
        let (base, w_head, w_sum) = (base.clone(), w.head.clone(), w.head_sum.clone());
        let (termed, slow_in_flight, answered, stop) = (
            termed.clone(),
            slow_in_flight.clone(),
            answered.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let slow = i % 6 == 1;
                let review = if slow {
                    let rev = format!("{:08x}{:032x}", 0x5107_0000u32 + t as u32, i);
                    Review::ingress("term-slow", "prod-apps").stamped(&rev, &w_sum)
                } else {
                    Review::ingress("term", "prod-apps").stamped(&w_head, &w_sum)
                };
                let t0 = Instant::now();
                if slow {
                    slow_in_flight.fetch_add(1, Ordering::SeqCst);
                }
                let result = client
                    .post(format!("{base}/validate"))
                    .json(&review.to_json())
                    .send()
                    .await;
                let outcome = match result {
                    Err(e) if e.is_connect() => Outcome::Refused {
                        after_term: termed.load(Ordering::SeqCst),
                    },
                    Err(e) => Outcome::Broken {
                        after_term: termed.load(Ordering::SeqCst),
                        slow,
                        task: t,
                        fresh_connection: t >= 2,
                        started: t0.duration_since(epoch),
                        failed: epoch.elapsed(),
                        error: format!("send: {e:?}"),
                    },
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        match resp.bytes().await {
                            Err(e) => Outcome::Broken {
                                after_term: termed.load(Ordering::SeqCst),
                                slow,
                                task: t,
                                fresh_connection: t >= 2,
                                started: t0.duration_since(epoch),
                                failed: epoch.elapsed(),
                                error: format!("body ({status}): {e:?}"),
                            },
                            Ok(bytes) => {
                                let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                                    panic!(
                                        "incomplete or invalid AdmissionReview ({e}): {:?}",
                                        String::from_utf8_lossy(&bytes)
                                    )
                                });
                                let verdict = Verdict {
                                    uid: review.uid.clone(),
                                    status,
                                    version: reqwest::Version::HTTP_11,
                                    body: v,
                                };
                                verdict.assert_envelope();
                                answered.fetch_add(1, Ordering::SeqCst);
                                Outcome::Answered {
                                    slow,
                                    reason: verdict.audit("reason").unwrap_or("").to_string(),
                                }
                            }
                        }
                    }
                };
                if slow {
                    slow_in_flight.fetch_sub(1, Ordering::SeqCst);
                }
                let refused = matches!(outcome, Outcome::Refused { .. });
                outcomes.push((t0.duration_since(epoch), outcome));
                if refused && termed.load(Ordering::SeqCst) {
                    break; // the listener is closed: this client is done
                }
            }
            outcomes
        }));
    }

    // SIGTERM once the burst runs and slow requests are in flight.
    let start = Instant::now();
    while answered.load(Ordering::SeqCst) < 20 || slow_in_flight.load(Ordering::SeqCst) < 2 {
        assert!(start.elapsed() < WAIT, "the burst did not get going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let them get past their handshakes and into the handler.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let in_flight_at_term = slow_in_flight.load(Ordering::SeqCst);
    let term_at = epoch.elapsed();
    termed.store(true, Ordering::SeqCst);
    sg.sigterm();
    let (status, took) = tokio::task::block_in_place(|| sg.wait_exit(Duration::from_secs(8)));
    stop.store(true, Ordering::SeqCst);
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.extend(
            tokio::time::timeout(WAIT, t)
                .await
                .expect("client task stuck")
                .expect("client task panicked"),
        );
    }

    let count = |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|(_, o)| f(o)).count();
    eprintln!(
        "SIGTERM with {in_flight_at_term} slow requests in flight; exit after {took:?}; \
         answered {} (slow {}), refused after SIGTERM {}, broken {}",
        count(&|o| matches!(o, Outcome::Answered { .. })),
        count(&|o| matches!(o, Outcome::Answered { slow: true, .. })),
        count(&|o| matches!(o, Outcome::Refused { after_term: true })),
        count(&|o| matches!(o, Outcome::Broken { .. })),
    );
    assert!(in_flight_at_term >= 1, "slow requests were in flight");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status:?}\n{}",
        sg.stdout_text()
    );
    assert!(took < Duration::from_secs(6), "exit took {took:?}");
    // No response is ever cut off mid-body.
    let mid_response: Vec<_> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Broken { error, .. } if error.starts_with("body")))
        .collect();
    assert!(
        mid_response.is_empty(),
        "responses broken mid-body around SIGTERM: {mid_response:#?}"
    );
    // Every request already being handled when SIGTERM came (sent at least
    // 250 ms before it: past its TLS handshake) got its complete answer; a
    // connection opened in the last moments may be refused or abandoned
    // before any request is read, never after.
    let settled = term_at.saturating_sub(Duration::from_millis(250));
    let failed_in_flight: Vec<_> = outcomes
        .iter()
        .filter(|(started, o)| *started < settled && !matches!(o, Outcome::Answered { .. }))
        .collect();
    assert!(
        failed_in_flight.is_empty(),
        "requests in flight at SIGTERM (sent at {term_at:?}) failed: {failed_in_flight:#?}"
    );
    let answered_slow_in_flight = outcomes
        .iter()
        .filter(|(started, o)| {
            *started < settled && matches!(o, Outcome::Answered { slow: true, .. })
        })
        .count();
    assert!(
        answered_slow_in_flight >= 1,
        "a slow request was in flight at SIGTERM and answered: {outcomes:#?}"
    );
    let after_term_failures: Vec<_> = outcomes
        .iter()
        .filter(|(started, o)| *started >= settled && matches!(o, Outcome::Broken { .. }))
        .collect();
    if !after_term_failures.is_empty() {
        eprintln!(
            "connections opened around SIGTERM that were dropped before a request was answered \
             (TLS handshake abandoned at shutdown): {after_term_failures:#?}"
        );
    }
    // Slow requests were answered with a denial (the fetch hung).
    for (_, o) in &outcomes {
        if let Outcome::Answered { slow: true, reason } = o {
            assert!(
                reason == "DecisionTimeout" || reason == "UnknownRevision",
                "slow request answered {reason}"
            );
        }
    }
    // The log: JSON lines, a drain message, audit lines for the denials.
    let lines = sg.json_lines();
    assert!(
        lines.iter().any(|l| fields(l)["message"]
            .as_str()
            .is_some_and(|m| m.contains("SIGTERM"))),
        "{}",
        sg.stdout_text()
    );
    let audit: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "stale_guard::audit" && l["level"] == "WARN")
        .collect();
    assert!(!audit.is_empty(), "denials are audited on stdout");
    for l in audit {
        let f = fields(l);
        assert!(
            f["uid"]
                .as_str()
                .is_some_and(|u| u.starts_with("term-slow")),
            "{l}"
        );
        assert_eq!(f["allowed"], false, "{l}");
        assert_eq!(f["rule"], "prod-east", "{l}");
    }
    drop(remote);
}

// ---------------------------------------------------------------------------
// mTLS
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_clients_without_a_trusted_certificate() {
    let w = World::build();
    let dir = w.scratch.path().join("mtls");
    let pki = Pki::write(&dir.join("tls"));
    let client_ca = Ca::new("kube-apiserver client CA");
    let client_ca_file = dir.join("client-ca.crt");
    std::fs::write(&client_ca_file, client_ca.pem()).unwrap();
    let mut config = ConfigBuilder::new(&dir);
    config.source("gitops", w.repo().path_str(), "1h");
    config.rule(
        "prod-east",
        "prod-apps",
        "gitops",
        EAST,
        "enforce",
        "strict",
    );
    config.client_ca = Some(client_ca_file);
    let sg = SgProcess::spawn(&write_config(&dir, &config, &pki));
    let base = sg.base();
    let ca = pki.ca.pem();
    let apiserver = client_ca.client("kube-apiserver");
    let stranger = Ca::new("some other CA").client("kube-apiserver");
    for proto in [Proto::H1, Proto::H2] {
        // No client certificate: refused.
        let review = Review::ingress("mtls-none", "prod-apps").stamped(&w.head, &w.head_sum);
        let r = client(&ca, proto)
            .post(format!("{base}/validate"))
            .json(&review.to_json())
            .send()
            .await;
        assert!(
            r.is_err(),
            "{proto:?}: a client without a certificate got {r:?}"
        );
        // A certificate from another CA: refused.
        let c = client_builder(&ca, proto)
            .identity(stranger.identity())
            .build()
            .unwrap();
        let r = c
            .post(format!("{base}/validate"))
            .json(&review.to_json())
            .send()
            .await;
        assert!(
            r.is_err(),
            "{proto:?}: an untrusted client certificate got {r:?}"
        );
        // The API server's certificate: served.
        let c = client_builder(&ca, proto)
            .identity(apiserver.identity())
            .build()
            .unwrap();
        let review = Review::ingress("mtls-ok", "prod-apps").stamped(&w.head, &w.head_sum);
        let v = post_review(&c, &base, &review).await;
        v.assert_version(proto);
        v.assert_allowed("Fresh");
        let stale = Review::ingress("mtls-stale", "prod-apps").stamped(&w.old, &w.old_sum);
        post_review(&c, &base, &stale)
            .await
            .assert_denied("StaleRevision");
    }
    drop(sg);
}

// ---------------------------------------------------------------------------
// certificate rotation
// ---------------------------------------------------------------------------

/// Writes `leaf` into `dir/<version>/` and points `dir/..data` at it with an
/// atomic rename of a new symlink, as kubelet does for a Secret volume.
fn publish(dir: &Path, version: &str, leaf: &Leaf) {
    let v = dir.join(version);
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(v.join("tls.key"), &leaf.key_pem).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

/// The DER of the certificate the server presents on a new connection.
async fn served_cert(ca_pem: &str, base: &str) -> Vec<u8> {
    let resp = fresh_conn_client(ca_pem, Proto::H1)
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("GET /healthz");
    let info = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("tls info");
    info.peer_certificate().expect("peer certificate").to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificate_rotation_by_data_symlink_swap_under_load() {
    let w = World::build();
    let dir = w.scratch.path().join("rotate");
    let pki = Pki::write(&dir.join("unused"));
    let secret = dir.join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    publish(&secret, "..2026_01_01_00_00_00.000000001", &pki.leaf);
    std::os::unix::fs::symlink("..data/tls.crt", secret.join("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", secret.join("tls.key")).unwrap();
    let mut config = ConfigBuilder::new(&dir);
    config.source("gitops", w.repo().path_str(), "1h");
    config.rule(
        "prod-east",
        "prod-apps",
        "gitops",
        EAST,
        "enforce",
        "strict",
    );
    config.cert_file = Some(secret.join("tls.crt"));
    config.key_file = Some(secret.join("tls.key"));
    let sg = SgProcess::spawn(&write_config(&dir, &config, &pki));
    let base = sg.base();
    let ca = pki.ca.pem();
    assert_eq!(served_cert(&ca, &base).await, pki.leaf.der);

    // Continuous requests: pooled and new connections, HTTP/1.1 and HTTP/2.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..4usize {
        let proto = if t % 2 == 0 { Proto::H1 } else { Proto::H2 };
        let client = if t < 2 {
            client(&ca, proto)
        } else {
            fresh_conn_client(&ca, proto)
        };
        let (base, head, sum, stop) = (
            base.clone(),
            w.head.clone(),
            w.head_sum.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failures) = (0usize, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let review = Review::ingress("rotate", "prod-apps").stamped(&head, &sum);
                let r = client
                    .post(format!("{base}/validate"))
                    .json(&review.to_json())
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status() == 200 => match resp.bytes().await {
                        Ok(b) => {
                            let v: Value = serde_json::from_slice(&b).expect("JSON");
                            assert_eq!(v["response"]["allowed"], true, "{v}");
                            ok += 1;
                        }
                        Err(e) => failures.push(format!("body: {e:?}")),
                    },
                    Ok(resp) => failures.push(format!("status {}", resp.status())),
                    Err(e) => failures.push(format!("send: {e:?}")),
                }
            }
            (ok, failures)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Rotate: a new key and certificate from the same CA.
    let new_leaf = pki.ca.server("stale-guard.test (rotated)");
    publish(&secret, "..2026_02_01_00_00_00.000000002", &new_leaf);
    let rotated_at = Instant::now();
    let new_der = new_leaf.der.clone();
    let seen_after = eventually(
        Duration::from_secs(10),
        "the new certificate served",
        || {
            let (ca, base, new_der) = (ca.clone(), base.clone(), new_der.clone());
            async move { (served_cert(&ca, &base).await == new_der).then(|| rotated_at.elapsed()) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    let mut failures = Vec::new();
    for t in tasks {
        let (ok, f) = tokio::time::timeout(WAIT, t)
            .await
            .expect("client task stuck")
            .expect("client task panicked");
        total += ok;
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "requests failed during rotation: {failures:#?}"
    );
    assert!(total > 20, "continuous requests: only {total}");
    assert!(
        seen_after < Duration::from_secs(5),
        "the watcher polls every ~2 s: new certificate after {seen_after:?}"
    );
    // The old leaf is no longer served.
    assert_ne!(served_cert(&ca, &base).await, pki.leaf.der);
    assert!(
        sg.stdout_text().contains("reloaded TLS certificate"),
        "{}",
        sg.stdout_text()
    );
    drop(sg);
}

// ---------------------------------------------------------------------------
// a huge file in an overlay
// ---------------------------------------------------------------------------

/// A commit with a 200 MiB file in an overlay: the server refuses it from
/// the object header (`limits.maxBlobBytes`) without reading it, its peak
/// memory stays where it was, and other overlays are still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_file_in_an_overlay_is_refused_without_reading_it() {
    let repo = support::Repo::with_big_file(
        "big/data.yaml",
        200 << 20,
        &[
            ("app/kustomization.yaml", "resources:\n- cm.yaml\n"),
            (
                "app/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n",
            ),
            ("big/kustomization.yaml", "resources:\n- data.yaml\n"),
        ],
    );
    let head = repo.head();
    let app_sum = checksum_at(repo.path(), &head, "app");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::write(&dir.path().join("tls"));
    let mut config = ConfigBuilder::new(dir.path());
    config.source("gitops", repo.path_str(), "1h");
    config.rule("app", "prod-apps", "gitops", "app", "enforce", "strict");
    config.rule("big", "big-apps", "gitops", "big", "enforce", "strict");
    let sg = SgProcess::spawn(&write_config(dir.path(), &config, &pki));
    let before = sg.peak_rss_kib();
    let client = client(&pki.ca.pem(), Proto::H2);
    let sum = format!("sha256:{}", "0".repeat(64));
    for round in 0..3 {
        let review = Review::ingress(&format!("big-{round}"), "big-apps").stamped(&head, &sum);
        let msg = post_review(&client, &sg.base(), &review).await;
        let msg = msg.assert_denied("OverlayError");
        assert!(
            msg.contains("file big/data.yaml is 209715200 bytes, over the 16777216-byte limit"),
            "{msg}"
        );
    }
    let review = Review::ingress("app", "prod-apps").stamped(&head, &app_sum);
    post_review(&client, &sg.base(), &review)
        .await
        .assert_allowed("Fresh");
    let after = sg.peak_rss_kib();
    eprintln!("server peak RSS: {before} KiB serving, {after} KiB after the reviews");
    assert!(
        after < 100 << 10,
        "the server peaked at {after} KiB (was {before} KiB before the reviews)"
    );
}
