//! Transport hardening, tried as a client on the pod network would:
//! request bodies held unfinished on many HTTP/2 streams and HTTP/1.1
//! connections (the request body budget), and probes while the review
//! listener is saturated. The server runs as a process (`stale-guard
//! serve`), so its resident memory (/proc/PID/status) is its own; valid
//! reviews come from another loopback address than the attacks.
#![cfg(target_os = "linux")]

mod support;
mod webhook_support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use webhook_support::*;

/// Content-Length of each attacking request: just under the 8 MiB limit.
const ATTACK_BODY: usize = (8 << 20) - 1;

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// The webhook as a process, with the world it reviews against.
struct Target {
    w: World,
    sg: SgProcess,
    ca: String,
}

impl Target {
    fn start(limits: &str) -> Target {
        let w = World::build();
        let dir = w.scratch.path().join("proc");
        let pki = Pki::write(&dir.join("tls"));
        let mut config = w.config();
        config.limits(limits);
        config.probes = Some("127.0.0.1:0".into());
        let sg = SgProcess::spawn(&write_config(&dir, &config, &pki));
        Target {
            w,
            sg,
            ca: pki.ca.pem(),
        }
    }

    /// A client from `from`.
    fn client(&self, proto: Proto, from: IpAddr) -> reqwest::Client {
        client_builder(&self.ca, proto)
            .local_address(from)
            .build()
            .unwrap()
    }

    /// `http://ADDR` of the plain-HTTP probe listener.
    fn probes(&self) -> String {
        let addr = self
            .sg
            .logged_addr("stale-guard probes serving")
            .expect("a \"stale-guard probes serving\" line");
        format!("http://{addr}")
    }

    /// A fresh, stamped review of the head: allowed as `Fresh`.
    fn valid(&self, tag: &str) -> Review {
        Review::ingress(tag, "prod-apps").stamped(&self.w.head, &self.w.head_sum)
    }
}

/// Requests on one HTTP/2 connection, each sending all but one byte of an
/// `ATTACK_BODY` body and never ending it.
struct H2Attack {
    /// Kept so the streams stay open.
    _bodies: Vec<h2::SendStream<Bytes>>,
    /// Status and body of each stream's answer.
    responses: Vec<JoinHandle<Option<(u16, String)>>>,
    connection: JoinHandle<Result<(), h2::Error>>,
}

impl H2Attack {
    async fn start(t: &Target, from: IpAddr, streams: usize) -> H2Attack {
        let tls = tls_connect(&t.sg.addr, from, &t.ca, b"h2").await.unwrap();
        let (send, connection) = h2::client::handshake(tls).await.unwrap();
        let connection = tokio::spawn(connection);
        let payload = Bytes::from(vec![b'x'; ATTACK_BODY - 1]);
        let mut bodies = Vec::new();
        let mut responses = Vec::new();
        for _ in 0..streams {
            let mut ready = send.clone().ready().await.unwrap();
            let request = axum::http::Request::post("https://localhost/validate")
                .header("content-type", "application/json")
                .header("content-length", ATTACK_BODY.to_string())
                .body(())
                .unwrap();
            let (response, mut body) = ready.send_request(request, false).unwrap();
            // Queued in the client; sent as the server's windows allow.
            body.send_data(payload.clone(), false).unwrap();
            bodies.push(body);
            responses.push(tokio::spawn(async move {
                let response = response.await.ok()?;
                let status = response.status().as_u16();
                let mut body = response.into_body();
                let mut text = Vec::new();
                while let Some(Ok(chunk)) = body.data().await {
                    text.extend_from_slice(&chunk);
                }
                Some((status, String::from_utf8_lossy(&text).into_owned()))
            }));
        }
        H2Attack {
            _bodies: bodies,
            responses,
            connection,
        }
    }

    fn answered(&self) -> usize {
        self.responses.iter().filter(|r| r.is_finished()).count()
    }

    /// Answers of the streams answered so far (the rest are held).
    async fn answers(self) -> Vec<(u16, String)> {
        self.connection.abort();
        let mut statuses = Vec::new();
        for r in self.responses {
            if r.is_finished()
                && let Ok(Some(answer)) = r.await
            {
                statuses.push(answer);
            }
        }
        statuses
    }
}

/// HTTP/1.1 connections, each sending all but one byte of an
/// `ATTACK_BODY` body; a task per connection holds it open afterwards.
struct H1Attack {
    writers: Vec<JoinHandle<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>,
}

impl H1Attack {
    async fn start(t: &Target, from: IpAddr, connections: usize) -> H1Attack {
        let payload = Bytes::from(vec![b'x'; ATTACK_BODY - 1]);
        let mut writers = Vec::new();
        for _ in 0..connections {
            let mut tls = tls_connect(&t.sg.addr, from, &t.ca, b"http/1.1")
                .await
                .unwrap();
            let payload = payload.clone();
            writers.push(tokio::spawn(async move {
                let head = format!(
                    "POST /validate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {ATTACK_BODY}\r\n\r\n"
                );
                let write = async {
                    tls.write_all(head.as_bytes()).await?;
                    tls.write_all(&payload).await?;
                    tls.flush().await
                };
                // A refused body ends in a write error: the server answered
                // and closed.
                let _ = tokio::time::timeout(WAIT, write).await;
                tls
            }));
        }
        H1Attack { writers }
    }

    fn done_writing(&self) -> usize {
        self.writers.iter().filter(|w| w.is_finished()).count()
    }
}

/// Polls until `done` or `limit`, sampling the server's RSS; returns the
/// peak in KiB.
async fn peak_rss_while(sg: &SgProcess, limit: Duration, mut done: impl FnMut() -> bool) -> u64 {
    let started = Instant::now();
    let mut peak = sg.rss_kib();
    while !done() && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak = peak.max(sg.rss_kib());
    }
    peak
}

/// A 503 body of the request body budget: `{"status": 503, "message"}`.
fn assert_budget_refusal(body: &serde_json::Value) {
    assert_eq!(body["status"], 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("request body budget") && m.contains("in use")),
        "{body}"
    );
}

/// A valid review from another address, over both protocols: allowed.
async fn assert_reviews_answered(t: &Target, tag: &str) {
    for proto in [Proto::H2, Proto::H1] {
        let review = t.valid(&format!("{tag}-{proto:?}"));
        let client = t.client(proto, loopback(2));
        let started = Instant::now();
        post_review(&client, &t.sg.base(), &review)
            .await
            .assert_allowed("Fresh");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{tag}: valid review took {:?}",
            started.elapsed()
        );
    }
}

/// 24 HTTP/2 streams from one address and 16 HTTP/1.1 connections from
/// another, each holding an almost 8 MiB unfinished body (320 MiB asked
/// for in all): each address gets its share of the budget (16 MiB), the
/// rest is refused at once with 503 and a JSON message, the server's RSS
/// stays bounded, and valid reviews from a third address are answered
/// meanwhile. When more addresses fill the whole budget (48 MiB here), the
/// process still does not grow, and reviews are answered at once (with a
/// verdict, or 503 if no room is left); once the attack ends they are
/// answered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unfinished_bodies_stay_within_the_request_body_budget() {
    let t = Target::start("{ requestBodyBudget: 48Mi, requestBodyBudgetPerPeer: 16Mi }");
    assert_reviews_answered(&t, "before").await;
    let baseline = t.sg.rss_kib();

    let h2 = H2Attack::start(&t, loopback(1), 24).await;
    let h1 = H1Attack::start(&t, loopback(3), 16).await;
    // Each address keeps two bodies (2 x 8 MiB), the others are answered.
    let peak = peak_rss_while(&t.sg, Duration::from_secs(20), || {
        h2.answered() >= 22 && h1.done_writing() == 16
    })
    .await;
    assert_reviews_answered(&t, "during").await;
    let peak = peak.max(t.sg.rss_kib());
    let grown_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!(
        "two addresses: RSS {} MiB -> peak {} MiB (+{grown_mib} MiB)",
        baseline / 1024,
        peak / 1024
    );
    assert!(
        grown_mib < 48 + 32,
        "RSS grew by {grown_mib} MiB under 320 MiB of unfinished bodies (budget 48 MiB)"
    );

    // Two more addresses: the whole budget is in use.
    let more = [
        H2Attack::start(&t, loopback(4), 8).await,
        H2Attack::start(&t, loopback(5), 8).await,
    ];
    let peak = peak_rss_while(&t.sg, Duration::from_secs(20), || {
        more.iter().all(|a| a.answered() >= 6)
    })
    .await;
    let grown_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!(
        "four addresses: peak {} MiB (+{grown_mib} MiB)",
        peak / 1024
    );
    assert!(
        grown_mib < 48 + 32,
        "RSS grew by {grown_mib} MiB with the whole budget (48 MiB) in use"
    );
    // Whether a review still fits depends on the room the last refused
    // bodies left; either way it is answered at once, with a verdict or a
    // clear refusal, never left waiting.
    let client = t.client(Proto::H2, loopback(2));
    for i in 0..3 {
        let started = Instant::now();
        let v = post_review(&client, &t.sg.base(), &t.valid(&format!("full-{i}"))).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "answered after {:?}",
            started.elapsed()
        );
        match v.status {
            200 => v.assert_allowed("Fresh"),
            503 => assert_budget_refusal(&v.body),
            other => panic!("review answered {other}: {}", v.body),
        }
    }

    // Every attacking stream answered was refused with the JSON message.
    let mut answers = h2.answers().await;
    for a in more {
        answers.extend(a.answers().await);
    }
    assert!(answers.len() >= 22 + 2 * 6, "{} answers", answers.len());
    for (status, body) in &answers {
        assert_eq!(*status, 503, "{body}");
        assert_budget_refusal(&serde_json::from_str(body).expect("a JSON body"));
    }
    drop(h1);
    eventually(WAIT, "reviews answered after the attack", || async {
        let client = t.client(Proto::H2, loopback(2));
        let v = post_review(&client, &t.sg.base(), &t.valid("after")).await;
        (v.status == 200).then_some(v)
    })
    .await
    .assert_allowed("Fresh");
    assert_reviews_answered(&t, "after").await;
}

/// Idle HTTP/2 connections that answer pings, opened from `from`: the
/// client tasks, or the number the server closed at once.
async fn idle_h2(t: &Target, from: IpAddr, n: usize) -> Vec<IdleH2> {
    let mut out = Vec::new();
    for _ in 0..n {
        let Ok(tls) = tls_connect(&t.sg.addr, from, &t.ca, b"h2").await else {
            continue;
        };
        let Ok((send, connection)) = h2::client::handshake(tls).await else {
            continue;
        };
        out.push(IdleH2 {
            _send: send,
            connection: tokio::spawn(connection),
        });
    }
    out
}

struct IdleH2 {
    _send: h2::client::SendRequest<Bytes>,
    connection: JoinHandle<Result<(), h2::Error>>,
}

/// GET on the probe port within 2 s.
async fn probe(base: &str, path: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let response = client
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} on the probe port: {e:?}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Idle HTTP/2 connections that answer pings: one address gets at most
/// `maxConnectionsPerPeer` of them (others are served meanwhile); when
/// several addresses fill the review listener, the plain-HTTP probe port
/// still answers `/healthz`, `/readyz` and `/metrics` (and not
/// `/validate`); and the idle connections are closed after
/// `http2IdleTimeout`, so reviews are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_cannot_lock_out_reviews_or_probes() {
    let t = Target::start("{ maxConnections: 16, maxConnectionsPerPeer: 4, http2IdleTimeout: 2s }");
    let probes = t.probes();
    assert_reviews_answered(&t, "before").await;
    assert_eq!(probe(&probes, "/healthz").await, (200, "ok\n".into()));

    // One address: four connections held, the rest closed at once.
    let mut held = idle_h2(&t, loopback(1), 16).await;
    let open = held.iter().filter(|c| !c.connection.is_finished()).count();
    assert!(open <= 4, "{open} connections held by one address");
    // Visible in the log (once a minute at most).
    eventually(WAIT, "a warning about the per-address limit", || async {
        t.sg.json_lines()
            .into_iter()
            .any(|line| {
                line["level"] == "WARN"
                    && fields(&line)["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("limits.maxConnectionsPerPeer"))
            })
            .then_some(())
    })
    .await;
    assert_reviews_answered(&t, "one-address").await;

    // Three more addresses: the review listener is full.
    for last in [3, 4, 5] {
        held.extend(idle_h2(&t, loopback(last), 4).await);
    }
    let started = Instant::now();
    let review = t.valid("full");
    let body = serde_json::to_vec(&review.to_json()).unwrap();
    let blocked = t
        .client(Proto::H2, loopback(2))
        .post(format!("{}/validate", t.sg.base()))
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    // Not answered while 16 idle connections hold every slot (it may be
    // served once the idle timeout frees them).
    if blocked.is_ok() {
        assert!(started.elapsed() >= Duration::from_millis(400));
    }
    // Probes are served all the same, on their own port.
    assert_eq!(probe(&probes, "/healthz").await, (200, "ok\n".into()));
    let (status, ready) = probe(&probes, "/readyz").await;
    assert_eq!((status, ready.as_str()), (200, "ready\n"));
    let (status, metrics) = probe(&probes, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("stale_guard_reviews_total"), "{metrics}");
    let (status, _) = probe(&probes, "/validate").await;
    assert_eq!(status, 404, "the probe port must not review");

    // http2IdleTimeout (2 s) closes them; reviews are answered again.
    eventually(WAIT, "idle connections closed", || async {
        held.iter()
            .all(|c| c.connection.is_finished())
            .then_some(())
    })
    .await;
    assert_reviews_answered(&t, "after").await;
}
