//! Fault drills: the webhook against a remote that hangs, a remote gone
//! for longer than `maxMirrorStaleness`, a process killed (SIGKILL) in the
//! middle of a fetch, a rollout-style restart of one of two replicas while
//! a client keeps sending, and a mirror directory on a full filesystem.
//! Verdicts are read from real HTTPS AdmissionReviews and readiness from
//! `GET /readyz` over HTTPS. Loopback only; every wait is bounded.
#![cfg(unix)]

mod support;
mod webhook_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use stale_guard::mirror::FetchErrorKind;
use webhook_support::*;

// ---------------------------------------------------------------------------
// a TCP proxy in front of the git:// remote: pass, hang, drop, throttle
// ---------------------------------------------------------------------------

const PASS: u8 = 0;
const HANG: u8 = 1;
const DROP: u8 = 2;

/// A loopback proxy in front of a [`GitRemote`]. In `PASS` mode it forwards
/// (optionally throttled towards the client), in `HANG` it accepts and
/// never answers, in `DROP` it accepts and closes at once (the remote is
/// unreachable). [`cut`](Self::cut) closes every connection it holds.
struct Proxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Bytes per 50 ms towards the client; 0 is unlimited.
    throttle: Arc<AtomicU64>,
    /// Bytes forwarded from the remote to clients so far.
    forwarded: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(PASS));
        let throttle = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, th, fw, cs, st) = (
            mode.clone(),
            throttle.clone(),
            forwarded.clone(),
            conns.clone(),
            stop.clone(),
        );
        let accept = thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                match m.load(Ordering::SeqCst) {
                    HANG => {
                        cs.lock().unwrap().push(conn);
                        continue;
                    }
                    DROP => {
                        let _ = conn.shutdown(std::net::Shutdown::Both);
                        continue;
                    }
                    _ => {}
                }
                let Ok(up) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
                    continue;
                };
                {
                    let mut held = cs.lock().unwrap();
                    held.push(conn.try_clone().unwrap());
                    held.push(up.try_clone().unwrap());
                }
                let (mut c_in, mut c_out) = (conn.try_clone().unwrap(), conn);
                let (mut u_in, mut u_out) = (up.try_clone().unwrap(), up);
                thread::spawn(move || {
                    copy(&mut c_in, &mut u_out, None, None);
                    let _ = u_out.shutdown(std::net::Shutdown::Write);
                });
                let (th, fw) = (th.clone(), fw.clone());
                thread::spawn(move || {
                    copy(&mut u_in, &mut c_out, Some(&th), Some(&fw));
                    let _ = c_out.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Proxy {
            addr,
            mode,
            throttle,
            forwarded,
            conns,
            stop,
            accept: Some(accept),
        }
    }

    fn url(&self, name: &str) -> String {
        format!("git://{}/{name}", self.addr)
    }

    fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// Closes every connection held or forwarded so far.
    fn cut(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        self.cut();
    }
}

/// Copies until end of input or an error; throttled to `throttle` bytes per
/// 50 ms when that is set and non-zero.
fn copy(
    from: &mut impl Read,
    to: &mut impl Write,
    throttle: Option<&AtomicU64>,
    counter: Option<&AtomicU64>,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let limit = throttle.map_or(0, |t| t.load(Ordering::SeqCst)) as usize;
        let want = if limit == 0 {
            buf.len()
        } else {
            limit.min(buf.len())
        };
        match from.read(&mut buf[..want]) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                    return;
                }
                if let Some(c) = counter {
                    c.fetch_add(n as u64, Ordering::SeqCst);
                }
                if limit != 0 {
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// `size` incompressible bytes (xorshift), so a push of them is a big pack.
fn noise(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size);
    out
}

fn rule_east(config: &mut ConfigBuilder, source: &str) {
    config.rule("prod-east", "prod-apps", source, EAST, "enforce", "strict");
}

/// `GET base/readyz` over HTTPS: (status, body).
async fn readyz(client: &reqwest::Client, base: &str) -> (u16, String) {
    let resp = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /readyz: {e:?}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// Waits (bounded) until `/readyz` answers `want`; returns its body.
async fn wait_ready(client: &reqwest::Client, base: &str, want: u16, limit: Duration) -> String {
    let mut last = (0, String::new());
    let start = Instant::now();
    while start.elapsed() < limit {
        last = readyz(client, base).await;
        if last.0 == want {
            return last.1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/readyz never answered {want} within {limit:?}; last {last:?}");
}

/// Sends `make()` reviews until one is answered with `reason` (bounded).
async fn wait_reason(
    client: &reqwest::Client,
    base: &str,
    limit: Duration,
    reason: &str,
    make: impl Fn() -> Review,
) -> Verdict {
    let start = Instant::now();
    loop {
        let v = post_review(client, base, &make()).await;
        if v.audit("reason") == Some(reason) {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "no {reason} verdict within {limit:?}; last {}",
            v.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn mirror_status(srv: &Server, source: &str) -> stale_guard::mirror::MirrorStatus {
    srv.running.as_ref().unwrap().state.sources[source]
        .mirror
        .status()
}

// ---------------------------------------------------------------------------
// the webhook as a process
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// 1. a remote that accepts and never answers
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_that_accepts_and_never_answers() {
    let w = World::build();
    let remote = GitRemote::start(w.repo().path().parent().unwrap());
    let mut config = ConfigBuilder::new(w.scratch.path());
    config.source_with("gitops", &remote.url("repo"), "1s", "1s");
    rule_east(&mut config, "gitops");
    let decision = Duration::from_secs(2);
    config.failure("{ mirrorUnavailable: deny, maxMirrorStaleness: 10m, decisionTimeout: 2s }");
    let srv = Server::start(&config).await;
    let client = srv.client(Proto::H2);
    wait_ready(&client, &srv.base, 200, WAIT).await;
    let fresh = || Review::ingress("hang-fresh", "prod-apps").stamped(&w.head, &w.head_sum);
    post_review(&client, &srv.base, &fresh())
        .await
        .assert_allowed("Fresh");

    remote.hang();
    let hung_at = Instant::now();
    // Polls now time out (fetchTimeout 1s, pollInterval 1s).
    let failure = eventually(Duration::from_secs(10), "a poll that times out", || {
        let st = mirror_status(&srv, "gitops");
        async move {
            st.last_failure
                .filter(|f| f.kind == FetchErrorKind::Timeout)
        }
    })
    .await;
    eprintln!(
        "drill 1: first poll timeout recorded {:?} after the hang: {}",
        hung_at.elapsed(),
        failure.message
    );
    assert!(
        remote.hung_connections() >= 1,
        "the polls reached the remote"
    );

    // The known head is still answered from the last head, fast.
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let t0 = Instant::now();
        let v = post_review(&client, &srv.base, &fresh()).await;
        worst = worst.max(t0.elapsed());
        v.assert_allowed("Fresh");
    }
    assert!(
        worst < decision,
        "Fresh answered within the decision deadline: worst {worst:?}"
    );
    eprintln!("drill 1: Fresh while hanging, worst latency {worst:?}");

    // An unknown revision: no verdict possible, answered by the deadline.
    let unknown = "5eed5eed5eed5eed5eed5eed5eed5eed5eed0dd1";
    let review = Review::ingress("hang-unknown", "prod-apps").stamped(unknown, &w.head_sum);
    let t0 = Instant::now();
    let v = post_review(&client, &srv.base, &review).await;
    let elapsed = t0.elapsed();
    let reason = v.audit("reason").unwrap_or_default().to_string();
    assert!(
        reason == "DecisionTimeout" || reason == "UnknownRevision",
        "an unknown revision while the remote hangs: {}",
        v.body
    );
    v.assert_denied(&reason);
    assert!(
        elapsed < decision + Duration::from_millis(500),
        "answered by the decision deadline ({decision:?}), not later: {elapsed:?}"
    );
    eprintln!("drill 1: unknown revision -> {reason} in {elapsed:?}");
    // Still ready: the last fetch is well within maxMirrorStaleness.
    assert_eq!(readyz(&client, &srv.base).await.0, 200);
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// 2. a remote unreachable for longer than maxMirrorStaleness, then back
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_unreachable_longer_than_max_staleness() {
    let w = World::build();
    let remote = GitRemote::start(w.repo().path().parent().unwrap());
    let proxy = Proxy::start(remote.addr);
    let mut config = ConfigBuilder::new(w.scratch.path());
    config.source_with("gitops", &proxy.url("repo"), "1s", "1s");
    rule_east(&mut config, "gitops");
    config.failure("{ mirrorUnavailable: deny, maxMirrorStaleness: 2s, decisionTimeout: 2s }");
    let srv = Server::start(&config).await;
    let client = srv.client(Proto::H2);
    wait_ready(&client, &srv.base, 200, WAIT).await;
    let fresh = || Review::ingress("gone-fresh", "prod-apps").stamped(&w.head, &w.head_sum);
    post_review(&client, &srv.base, &fresh())
        .await
        .assert_allowed("Fresh");

    // Unreachable: every connection is closed at once.
    proxy.set_mode(DROP);
    proxy.cut();
    let gone = Instant::now();
    let v = wait_reason(
        &client,
        &srv.base,
        Duration::from_secs(10),
        "MirrorUnavailable",
        fresh,
    )
    .await;
    let msg = v.assert_denied("MirrorUnavailable");
    assert!(msg.contains("gitops"), "names the source: {msg}");
    eprintln!(
        "drill 2: MirrorUnavailable {:?} after the remote went away: {msg}",
        gone.elapsed()
    );
    assert!(
        gone.elapsed() >= Duration::from_millis(1500),
        "not unavailable before maxMirrorStaleness could pass: {:?}",
        gone.elapsed()
    );
    let body = wait_ready(&client, &srv.base, 503, Duration::from_secs(5)).await;
    assert!(body.contains("gitops"), "/readyz names the source: {body}");
    let st = mirror_status(&srv, "gitops");
    assert!(st.consecutive_failures >= 1, "{st:?}");

    // Back: within a few poll intervals, Fresh and ready, no restart.
    proxy.set_mode(PASS);
    let back = Instant::now();
    wait_reason(&client, &srv.base, Duration::from_secs(8), "Fresh", fresh)
        .await
        .assert_allowed("Fresh");
    wait_ready(&client, &srv.base, 200, Duration::from_secs(8)).await;
    eprintln!(
        "drill 2: Fresh and ready again {:?} after the remote came back",
        back.elapsed()
    );
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// 3. SIGKILL in the middle of a fetch, then a restart on the same mirror
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_killed_during_fetch_and_restarted() {
    let w = World::build();
    let remote = GitRemote::start(w.repo().path().parent().unwrap());
    let proxy = Proxy::start(remote.addr);
    let dir = w.scratch.path().join("proc");
    let pki = Pki::write(&dir.join("tls"));
    let mut config = ConfigBuilder::new(&dir);
    config.source_with("gitops", &proxy.url("repo"), "1s", "30s");
    rule_east(&mut config, "gitops");
    config.failure("{ mirrorUnavailable: deny, maxMirrorStaleness: 10m, decisionTimeout: 2s }");
    let config_file = write_config(&dir, &config, &pki);
    let mirror = dir.join("mirror").join("gitops");
    let ca = pki.ca.pem();
    let client = client(&ca, Proto::H2);
    let fresh = |rev: &str| Review::ingress("kill-fresh", "prod-apps").stamped(rev, &w.head_sum);

    let mut sg = SgProcess::spawn_serving(&config_file);
    wait_ready(&client, &sg.base(), 200, WAIT).await;
    post_review(&client, &sg.base(), &fresh(&w.head))
        .await
        .assert_allowed("Fresh");

    // A big push (4 MiB of noise outside the overlay) fetched slowly.
    proxy.throttle.store(16 * 1024, Ordering::SeqCst);
    let before = proxy.forwarded.load(Ordering::SeqCst);
    w.repo().write("assets/blob.bin", noise(4 << 20, 0x5eed));
    let new_head = w.repo().commit("a big asset");
    assert_eq!(
        checksum_at(w.repo().path(), &new_head, EAST),
        w.head_sum,
        "the asset is outside the east overlay"
    );
    eventually(Duration::from_secs(10), "the big fetch under way", || {
        let n = proxy.forwarded.load(Ordering::SeqCst) - before;
        async move { (n > 256 * 1024).then_some(()) }
    })
    .await;
    let got = proxy.forwarded.load(Ordering::SeqCst) - before;
    sg.kill9();
    // The pod is gone: so is its network (the orphaned git fetch ends).
    proxy.set_mode(HANG);
    proxy.cut();
    eprintln!("drill 3: SIGKILL after {got} bytes of the big fetch");
    let leftovers: Vec<String> = std::fs::read_dir(mirror.join("objects/pack"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("tmp_"))
                .collect()
        })
        .unwrap_or_default();
    eprintln!("drill 3: temporary pack files left behind: {leftovers:?}");
    let fsck = support::git_command(&mirror)
        .args(["fsck", "--connectivity-only", "--no-dangling"])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "the killed fetch left the mirror inconsistent: {}",
        String::from_utf8_lossy(&fsck.stderr)
    );

    // Restart on the same mirrorDir while the remote hangs: ready from disk.
    proxy.throttle.store(0, Ordering::SeqCst);
    let t0 = Instant::now();
    let sg2 = SgProcess::spawn_serving(&config_file);
    wait_ready(&client, &sg2.base(), 200, Duration::from_secs(10)).await;
    let ready_in = t0.elapsed();
    post_review(&client, &sg2.base(), &fresh(&w.head))
        .await
        .assert_allowed("Fresh");
    eprintln!("drill 3: restarted and ready in {ready_in:?} without the remote");

    // The remote comes back: the new head is fetched and Fresh.
    proxy.set_mode(PASS);
    proxy.cut();
    let t1 = Instant::now();
    wait_reason(
        &client,
        &sg2.base(),
        Duration::from_secs(20),
        "Fresh",
        || fresh(&new_head),
    )
    .await;
    eprintln!(
        "drill 3: the pushed head is Fresh {:?} after the remote came back",
        t1.elapsed()
    );
    let log = sg2.log();
    assert!(
        !log.contains("no mirror yet; cloning")
            && !log.contains("corrupt")
            && !log.contains("re-cloning"),
        "the restart reused the mirror (no re-clone, no repair):\n{log}"
    );
}

// ---------------------------------------------------------------------------
// 4. rollout-style restart of one of two replicas under traffic
// ---------------------------------------------------------------------------

// Fields are read through `Debug` in failure messages.
#[allow(dead_code)]
#[derive(Debug)]
enum Outcome {
    Answered {
        replica: usize,
    },
    Refused {
        replica: usize,
    },
    /// Connected (TCP and TLS done for the client), then closed by the
    /// server before any response byte.
    ClosedUnanswered {
        replica: usize,
        proto: Proto,
        error: String,
    },
    Broken {
        replica: usize,
        proto: Proto,
        error: String,
    },
}

/// Every request either got a complete 200 AdmissionReview or failed to
/// connect before sending: a connection closed unanswered after the client
/// completed its TLS handshake counts as broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_style_restart_strict() {
    rollout(true).await;
}

/// The same drill, tolerating connections closed before any response byte
/// by the draining replica (see the strict variant): no error status, no
/// response cut mid-body, no broken exchange with the surviving replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_style_restart_while_a_client_keeps_sending() {
    rollout(false).await;
}

async fn rollout(strict: bool) {
    let w = World::build();
    let mut replicas = Vec::new();
    let pki = Pki::write(&w.scratch.path().join("tls"));
    for i in 0..2 {
        let dir = w.scratch.path().join(format!("replica-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = ConfigBuilder::new(&dir);
        config.source("gitops", w.repo().path_str(), "1h");
        rule_east(&mut config, "gitops");
        replicas.push(SgProcess::spawn_serving(&write_config(&dir, &config, &pki)));
    }
    let bases: Arc<Vec<String>> = Arc::new(replicas.iter().map(SgProcess::base).collect());
    let ca = pki.ca.pem();
    for base in bases.iter() {
        wait_ready(&client(&ca, Proto::H2), base, 200, WAIT).await;
    }
    let target = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..3usize {
        let proto = if t % 2 == 0 { Proto::H1 } else { Proto::H2 };
        // A new connection for every request.
        let client = client_builder(&ca, proto)
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let (bases, target, stop) = (bases.clone(), target.clone(), stop.clone());
        let (head, sum) = (w.head.clone(), w.head_sum.clone());
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let replica = target.load(Ordering::SeqCst);
                let review = Review::ingress("rollout", "prod-apps").stamped(&head, &sum);
                let sent = client
                    .post(format!("{}/validate", bases[replica]))
                    .json(&review.to_json())
                    .send()
                    .await;
                let outcome = match sent {
                    Err(e) if e.is_connect() => {
                        // Switch to the other replica, on a new connection.
                        target.store(1, Ordering::SeqCst);
                        Outcome::Refused { replica }
                    }
                    Err(e) => Outcome::ClosedUnanswered {
                        replica,
                        proto,
                        error: format!("send: {e:?}"),
                    },
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        match resp.bytes().await {
                            Err(e) => Outcome::Broken {
                                replica,
                                proto,
                                error: format!("body ({status}): {e:?}"),
                            },
                            Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                                Err(e) => Outcome::Broken {
                                    replica,
                                    proto,
                                    error: format!(
                                        "cut or invalid body ({status}, {e}): {:?}",
                                        String::from_utf8_lossy(&bytes)
                                    ),
                                },
                                Ok(body) => {
                                    let v = Verdict {
                                        uid: review.uid.clone(),
                                        status,
                                        version: reqwest::Version::HTTP_11,
                                        body,
                                    };
                                    if status == 200 && v.audit("reason") == Some("Fresh") {
                                        v.assert_allowed("Fresh");
                                        Outcome::Answered { replica }
                                    } else {
                                        Outcome::Broken {
                                            replica,
                                            proto,
                                            error: format!("answer {status}: {}", v.body),
                                        }
                                    }
                                }
                            },
                        }
                    }
                };
                outcomes.push(outcome);
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let termed = Instant::now();
    replicas[0].sigterm();
    let status = tokio::task::block_in_place(|| replicas[0].wait_exit(WAIT).0);
    let drained = termed.elapsed();
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::SeqCst);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(
            tokio::time::timeout(WAIT, t)
                .await
                .expect("client task ended")
                .unwrap(),
        );
    }
    let count = |f: &dyn Fn(&Outcome) -> bool| all.iter().filter(|o| f(o)).count();
    let first = count(&|o| matches!(o, Outcome::Answered { replica: 0 }));
    let second = count(&|o| matches!(o, Outcome::Answered { replica: 1 }));
    let refused = count(&|o| matches!(o, Outcome::Refused { .. }));
    let closed: Vec<&Outcome> = all
        .iter()
        .filter(|o| matches!(o, Outcome::ClosedUnanswered { .. }))
        .collect();
    let broken: Vec<&Outcome> = all
        .iter()
        .filter(|o| match o {
            Outcome::Broken { .. } => true,
            Outcome::ClosedUnanswered { replica, .. } => strict || *replica != 0,
            _ => false,
        })
        .collect();
    eprintln!(
        "drill 4 (strict {strict}): replica 0 exited {status} {drained:?} after SIGTERM; answered \
         {first} by replica 0, {second} by replica 1, {refused} refused connections, {} closed \
         unanswered after connecting {closed:?}, {} broken",
        closed.len(),
        broken.len()
    );
    assert!(broken.is_empty(), "broken exchanges: {broken:#?}");
    assert!(status.success(), "graceful exit: {status}");
    assert!(first > 0 && second > 0, "both replicas served");
    assert!(
        all.iter()
            .all(|o| !matches!(o, Outcome::Refused { replica: 1 })),
        "replica 1 never refused"
    );
}

// ---------------------------------------------------------------------------
// 5. the mirror directory on a full filesystem
// ---------------------------------------------------------------------------

/// Unmounts (lazily if busy) on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_dir_on_a_full_filesystem() {
    let w = World::build();
    // The repository outgrows the filesystem: 3 MiB of noise, 1 MiB tmpfs.
    w.repo().write("assets/blob.bin", noise(3 << 20, 0xf011));
    w.repo().commit("a big asset");
    let dir = w.scratch.path().join("full");
    let mount_point = dir.join("mirror");
    std::fs::create_dir_all(&mount_point).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mount_point)
        .output()
        .expect("run mount");
    if !mounted.status.success() {
        eprintln!(
            "SKIPPED mirror_dir_on_a_full_filesystem: cannot mount a tmpfs here: {}",
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        return;
    }
    let _mount = Mount(mount_point.clone());
    let mut config = ConfigBuilder::new(&dir);
    config.source_with("gitops", w.repo().path_str(), "1s", "10s");
    rule_east(&mut config, "gitops");
    init_audit_capture();
    let pki = Pki::write(&w.scratch.path().join("tls"));
    let yaml = config.yaml(&pki.cert_file, &pki.key_file);
    let parsed = stale_guard::config::Config::parse(&yaml).unwrap();
    let started = tokio::time::timeout(
        WAIT,
        stale_guard::server::start(parsed, stale_guard::tls::ServeOptions::default()),
    )
    .await
    .expect("server::start returned within 20s");
    let running = match started {
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("drill 5: start refused: {msg}");
            assert!(
                msg.contains(mount_point.to_str().unwrap()),
                "the error names the mirror path: {msg}"
            );
            return;
        }
        Ok(r) => r,
    };
    let base = format!("https://{}", running.local_addr);
    let client = client(&pki.ca.pem(), Proto::H2);
    // Several polls (1 s) fail for lack of space: never ready.
    let t0 = Instant::now();
    let mut body = String::new();
    while t0.elapsed() < Duration::from_secs(4) {
        let (status, b) = readyz(&client, &base).await;
        assert_eq!(status, 503, "ready on a full filesystem: {b}");
        body = b;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(body.contains("gitops"), "/readyz names the source: {body}");
    let st = running.state.sources["gitops"].mirror.status();
    let failure = st
        .last_failure
        .clone()
        .unwrap_or_else(|| panic!("a failed fetch is recorded: {st:?}"));
    eprintln!(
        "drill 5: /readyz {body:?}; last failure {:?}: {}",
        failure.kind, failure.message
    );
    assert!(st.consecutive_failures >= 1, "{st:?}");
    let review = Review::ingress("full", "prod-apps").stamped(&w.head, &w.head_sum);
    post_review(&client, &base, &review)
        .await
        .assert_denied("MirrorUnavailable");
    // The operator learns both what (the disk is full) and where (the
    // mirror's directory on that filesystem); the same message is logged.
    assert_eq!(failure.kind, FetchErrorKind::Local, "{}", failure.message);
    assert!(
        failure
            .message
            .to_lowercase()
            .contains("no space left on device"),
        "the failure says the disk is full: {}",
        failure.message
    );
    let mirror_path = mount_point.join("gitops");
    assert!(
        failure.message.contains(mirror_path.to_str().unwrap()),
        "the failure names the mirror directory {}: {}",
        mirror_path.display(),
        failure.message
    );
    running.shutdown.trigger();
    let joined = tokio::time::timeout(WAIT, running.task)
        .await
        .expect("stopped within 20s");
    joined.expect("no panic").expect("serve ended cleanly");
}
