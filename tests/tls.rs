//! Tests of the HTTPS serving layer (`stale_guard::tls`): real TLS on
//! 127.0.0.1 ephemeral ports, certificates generated with rcgen into a
//! tempdir laid out like a kubelet-mounted Secret, reqwest clients that
//! trust only the test CA.
#![cfg(unix)]

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use stale_guard::tls::{ReloadingTls, ServeOptions, TlsError, TlsFileRole, TlsFiles, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

// --- PKI -------------------------------------------------------------------

/// A test certificate authority.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM encoded.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn server(&self, name: &str) -> Leaf {
        self.issue(name, ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self, name: &str) -> Leaf {
        self.issue(name, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

impl Leaf {
    fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(&self.der))
    }

    fn identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(format!("{}{}", self.cert_pem, self.key_pem).as_bytes())
            .unwrap()
    }
}

// --- Kubelet-style Secret volume -------------------------------------------

/// A directory laid out like a kubelet Secret mount: `tls.crt ->
/// ..data/tls.crt`, `..data -> ..<timestamp>`, rotated by renaming a new
/// `..data_tmp` symlink over `..data`.
struct SecretDir {
    root: tempfile::TempDir,
    generation: u32,
    current: Option<String>,
}

impl SecretDir {
    fn new() -> Self {
        SecretDir {
            root: tempfile::tempdir().unwrap(),
            generation: 0,
            current: None,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn files(&self, with_client_ca: bool) -> TlsFiles {
        TlsFiles {
            cert_file: self.path("tls.crt"),
            key_file: self.path("tls.key"),
            client_ca_file: with_client_ca.then(|| self.path("ca.crt")),
        }
    }

    /// Atomically publishes a new set of files, the way kubelet does.
    fn publish(&mut self, files: &[(&str, &[u8])]) {
        let root = self.root.path();
        self.generation += 1;
        let dir_name = format!("..2025_01_01_00_00_00.{:09}", self.generation);
        std::fs::create_dir(root.join(&dir_name)).unwrap();
        for (name, data) in files {
            std::fs::write(root.join(&dir_name).join(name), data).unwrap();
        }
        let tmp = root.join("..data_tmp");
        std::os::unix::fs::symlink(&dir_name, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
        for (name, _) in files {
            let link = root.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
        if let Some(old) = self.current.replace(dir_name) {
            std::fs::remove_dir_all(root.join(old)).unwrap();
        }
    }

    fn publish_leaf(&mut self, leaf: &Leaf) {
        self.publish(&[
            ("tls.crt", leaf.cert_pem.as_bytes()),
            ("tls.key", leaf.key_pem.as_bytes()),
        ]);
    }
}

// --- Server and clients ----------------------------------------------------

fn app() -> Router {
    Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route("/echo", post(|body: String| async move { body }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                "slow done"
            }),
        )
}

struct TestServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<io::Result<()>>,
}

impl TestServer {
    async fn start(tls: Arc<ReloadingTls>, options: ServeOptions) -> Self {
        init_tracing();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve(listener, tls, app(), options, async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            stop: Some(stop),
            handle,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    fn trigger_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Triggers shutdown and waits for `serve` to return.
    async fn shutdown(mut self) -> io::Result<()> {
        self.trigger_shutdown();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("serve did not return after shutdown")
            .expect("serve task panicked")
    }
}

/// A client trusting only `ca_pem`, reporting the peer certificate.
fn client_builder(ca_pem: &str) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .tls_info(true)
        .timeout(Duration::from_secs(10))
}

fn client(ca_pem: &str) -> reqwest::Client {
    client_builder(ca_pem).build().unwrap()
}

fn peer_fingerprint(response: &reqwest::Response) -> Option<String> {
    let info = response.extensions().get::<reqwest::tls::TlsInfo>()?;
    Some(hex::encode(Sha256::digest(info.peer_certificate()?)))
}

/// GET /ping with a fresh client; returns the served leaf's fingerprint.
async fn ping_fresh(server: &TestServer, ca_pem: &str) -> Result<String, reqwest::Error> {
    let response = client(ca_pem)
        .get(server.url("/ping"))
        .send()
        .await?
        .error_for_status()?;
    let fingerprint = peer_fingerprint(&response).unwrap_or_default();
    assert_eq!(response.text().await?, "pong");
    Ok(fingerprint)
}

fn quick_options() -> ServeOptions {
    ServeOptions {
        handshake_timeout: Duration::from_millis(500),
        header_read_timeout: Duration::from_secs(2),
        stall_timeout: Duration::from_secs(30),
        max_connections: 64,
        shutdown_grace: Duration::from_secs(10),
        drain_delay: Duration::ZERO,
        ..ServeOptions::default()
    }
}

async fn wait_for_fingerprint(tls: &ReloadingTls, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tls.fingerprint() != expected {
        assert!(
            Instant::now() < deadline,
            "rotation not picked up by the watcher"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// --- 1. HTTP/1.1 and HTTP/2 by ALPN ---------------------------------------

#[tokio::test]
async fn serves_http2_and_http1_by_alpn() -> TestResult {
    let ca = Ca::new("test CA");
    let leaf = ca.server("server");
    let mut secret = SecretDir::new();
    secret.publish_leaf(&leaf);
    let tls = ReloadingTls::load(secret.files(false))?;
    assert_eq!(tls.fingerprint(), leaf.fingerprint());
    let server = TestServer::start(tls, quick_options()).await;

    let h2 = client(&ca.pem());
    let response = h2.get(server.url("/ping")).send().await?;
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(peer_fingerprint(&response), Some(leaf.fingerprint()));
    assert_eq!(response.text().await?, "pong");
    let response = h2.post(server.url("/echo")).body("hello h2").send().await?;
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.text().await?, "hello h2");

    let h1 = client_builder(&ca.pem()).http1_only().build()?;
    let response = h1.get(server.url("/ping")).send().await?;
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.text().await?, "pong");
    let response = h1.post(server.url("/echo")).body("hello h1").send().await?;
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.text().await?, "hello h1");

    // A client trusting another CA must not accept the server.
    let stranger = client(&Ca::new("other CA").pem());
    assert!(stranger.get(server.url("/ping")).send().await.is_err());

    server.shutdown().await?;
    Ok(())
}

// --- 2. Rotation by kubelet-style symlink swap under load -------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_symlink_swap_under_load() -> TestResult {
    let ca = Ca::new("test CA");
    let old = ca.server("server-old");
    let new = ca.server("server-new");
    let mut secret = SecretDir::new();
    secret.publish_leaf(&old);
    let tls = ReloadingTls::load(secret.files(false))?;
    let (stop_watcher, watcher_stopped) = oneshot::channel::<()>();
    let watcher = tls.spawn_watcher(Duration::from_millis(100), async move {
        let _ = watcher_stopped.await;
    });
    let server = Arc::new(TestServer::start(Arc::clone(&tls), quick_options()).await);

    #[derive(Default)]
    struct Tally {
        ok: usize,
        failures: Vec<String>,
        seen: HashMap<String, usize>,
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut loops = Vec::new();
    // Loop 0: a fresh client (so a fresh connection and handshake) for
    // every request, alternating HTTP/2 and HTTP/1.1.
    // Loop 1: one pooled HTTP/2 client, requests on a long-lived connection.
    for kind in 0..2 {
        let server = Arc::clone(&server);
        let ca_pem = ca.pem();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let t = Arc::clone(&tally);
        loops.push((
            tally,
            tokio::spawn(async move {
                let pooled = client(&ca_pem);
                let mut i = 0u32;
                while Instant::now() < deadline {
                    i += 1;
                    let c = match (kind, i % 2) {
                        (1, _) => pooled.clone(),
                        (_, 0) => client(&ca_pem),
                        _ => client_builder(&ca_pem).http1_only().build().unwrap(),
                    };
                    let result = async {
                        let response = c
                            .post(server.url("/echo"))
                            .body(format!("request {i}"))
                            .send()
                            .await?
                            .error_for_status()?;
                        let fingerprint = peer_fingerprint(&response).unwrap_or_default();
                        let body = response.text().await?;
                        Ok::<_, reqwest::Error>((fingerprint, body))
                    }
                    .await;
                    let mut t = t.lock().unwrap();
                    match result {
                        Ok((fingerprint, body)) if body == format!("request {i}") => {
                            t.ok += 1;
                            *t.seen.entry(fingerprint).or_default() += 1;
                        }
                        Ok((_, body)) => t.failures.push(format!("wrong body {body:?}")),
                        Err(e) => t.failures.push(format!("{e:?}")),
                    }
                }
            }),
        ));
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    secret.publish_leaf(&new);
    wait_for_fingerprint(&tls, &new.fingerprint()).await;

    let mut tallies = Vec::new();
    for (tally, task) in loops {
        task.await?;
        let t = tally.lock().unwrap();
        assert!(t.failures.is_empty(), "failed requests: {:?}", t.failures);
        assert!(t.ok > 5, "too few requests: {}", t.ok);
        tallies.push(t.seen.clone());
    }
    // Fresh connections saw the old certificate, then the new one.
    let fresh = &tallies[0];
    assert!(fresh.contains_key(&old.fingerprint()), "{fresh:?}");
    assert!(fresh.contains_key(&new.fingerprint()), "{fresh:?}");
    assert_eq!(fresh.len(), 2, "{fresh:?}");
    eprintln!("requests per served certificate: {tallies:?}");
    // After the swap, new connections see the new certificate.
    assert_eq!(ping_fresh(&server, &ca.pem()).await?, new.fingerprint());
    let h1 = client_builder(&ca.pem()).http1_only().build()?;
    let response = h1.get(server.url("/ping")).send().await?;
    assert_eq!(peer_fingerprint(&response), Some(new.fingerprint()));

    let _ = stop_watcher.send(());
    tokio::time::timeout(Duration::from_secs(5), watcher).await??;
    let server = Arc::into_inner(server).expect("server still shared");
    server.shutdown().await?;
    Ok(())
}

// --- 3. Broken rotations keep the old certificate ---------------------------

#[tokio::test]
async fn broken_rotation_keeps_serving_old_certificate() -> TestResult {
    let ca = Ca::new("test CA");
    let old = ca.server("server-old");
    let new = ca.server("server-new");
    let mut secret = SecretDir::new();
    secret.publish_leaf(&old);
    let tls = ReloadingTls::load(secret.files(false))?;
    let server = TestServer::start(Arc::clone(&tls), quick_options()).await;
    assert!(!tls.reload_if_changed()?, "unchanged files must not reload");

    // Garbage certificate.
    secret.publish(&[
        ("tls.crt", b"this is not a certificate\n"),
        ("tls.key", old.key_pem.as_bytes()),
    ]);
    let err = tls.reload_if_changed().unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert!(err.to_string().contains("tls.crt"), "{err}");
    assert_eq!(tls.fingerprint(), old.fingerprint());
    assert_eq!(ping_fresh(&server, &ca.pem()).await?, old.fingerprint());

    // Half-written pair: new certificate, old key.
    secret.publish(&[
        ("tls.crt", new.cert_pem.as_bytes()),
        ("tls.key", old.key_pem.as_bytes()),
    ]);
    let err = tls.reload_if_changed().unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("tls.crt"), "{err}");
    assert!(err.to_string().contains("tls.key"), "{err}");
    assert!(!err.to_string().contains("PRIVATE KEY-----"), "{err}");
    assert_eq!(tls.fingerprint(), old.fingerprint());
    assert_eq!(ping_fresh(&server, &ca.pem()).await?, old.fingerprint());

    // Key file vanished (dangling symlink).
    secret.publish(&[("tls.crt", new.cert_pem.as_bytes())]);
    let err = tls.reload_if_changed().unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::Read {
                role: TlsFileRole::PrivateKey,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(ping_fresh(&server, &ca.pem()).await?, old.fingerprint());

    // The complete pair arrives: installed.
    secret.publish_leaf(&new);
    assert!(tls.reload_if_changed()?);
    assert_eq!(tls.fingerprint(), new.fingerprint());
    assert_eq!(ping_fresh(&server, &ca.pem()).await?, new.fingerprint());
    assert!(!tls.reload_if_changed()?);

    server.shutdown().await?;
    Ok(())
}

/// The watcher survives a broken rotation and picks up the repaired one.
#[tokio::test]
async fn watcher_recovers_after_broken_rotation() -> TestResult {
    let ca = Ca::new("test CA");
    let old = ca.server("server-old");
    let new = ca.server("server-new");
    let mut secret = SecretDir::new();
    secret.publish_leaf(&old);
    let tls = ReloadingTls::load(secret.files(false))?;
    let (stop, stopped) = oneshot::channel::<()>();
    let watcher = tls.spawn_watcher(Duration::from_millis(50), async move {
        let _ = stopped.await;
    });
    secret.publish(&[
        ("tls.crt", new.cert_pem.as_bytes()),
        ("tls.key", old.key_pem.as_bytes()),
    ]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tls.fingerprint(), old.fingerprint());
    secret.publish_leaf(&new);
    wait_for_fingerprint(&tls, &new.fingerprint()).await;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), watcher).await??;
    Ok(())
}

// --- 4. Mutual TLS ---------------------------------------------------------

#[tokio::test]
async fn mtls_requires_client_certificate_from_client_ca() -> TestResult {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let other_ca = Ca::new("other CA");
    let leaf = server_ca.server("server");
    let mut secret = SecretDir::new();
    secret.publish(&[
        ("tls.crt", leaf.cert_pem.as_bytes()),
        ("tls.key", leaf.key_pem.as_bytes()),
        ("ca.crt", client_ca.pem().as_bytes()),
    ]);
    let tls = ReloadingTls::load(secret.files(true))?;
    let server = TestServer::start(tls, quick_options()).await;

    // No client certificate: refused (both protocols).
    for http1 in [false, true] {
        let mut builder = client_builder(&server_ca.pem());
        if http1 {
            builder = builder.http1_only();
        }
        let result = builder.build()?.get(server.url("/ping")).send().await;
        assert!(result.is_err(), "anonymous client accepted: {result:?}");
    }

    // Certificate from the client CA: accepted (both protocols).
    let good = client_ca.client("apiserver");
    for http1 in [false, true] {
        let mut builder = client_builder(&server_ca.pem()).identity(good.identity());
        if http1 {
            builder = builder.http1_only();
        }
        let response = builder.build()?.get(server.url("/ping")).send().await?;
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await?, "pong");
    }

    // Certificate from another CA: refused.
    let bad = other_ca.client("intruder");
    for http1 in [false, true] {
        let mut builder = client_builder(&server_ca.pem()).identity(bad.identity());
        if http1 {
            builder = builder.http1_only();
        }
        let result = builder.build()?.get(server.url("/ping")).send().await;
        assert!(
            result.is_err(),
            "foreign client certificate accepted: {result:?}"
        );
    }

    server.shutdown().await?;
    Ok(())
}

// --- 5. Graceful shutdown --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() -> TestResult {
    let (ca, tls, _secret) = test_pki();
    let mut server = TestServer::start(tls, quick_options()).await;

    // An idle keep-alive connection must not hold up shutdown.
    let idle = client_builder(&ca.pem()).http1_only().build()?;
    assert_eq!(idle.get(server.url("/ping")).send().await?.status(), 200);

    let h2 = client(&ca.pem());
    let h1 = client_builder(&ca.pem()).http1_only().build()?;
    let mut in_flight = Vec::new();
    for i in 0..6 {
        let c = if i % 2 == 0 { h2.clone() } else { h1.clone() };
        let url = server.url("/slow");
        in_flight.push(tokio::spawn(async move {
            let response = c.get(url).send().await?;
            let status = response.status();
            let version = response.version();
            let body = response.text().await?;
            Ok::<_, reqwest::Error>((status, version, body))
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    server.trigger_shutdown();

    // While the slow requests are still running, new connections are refused.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = TcpStream::connect(server.addr).await;
    assert!(refused.is_err(), "listener still accepting after shutdown");
    assert!(ping_fresh(&server, &ca.pem()).await.is_err());

    let mut versions = Vec::new();
    for request in in_flight {
        let (status, version, body) = request.await??;
        assert_eq!(status, 200);
        assert_eq!(body, "slow done");
        versions.push(version);
    }
    assert!(versions.contains(&reqwest::Version::HTTP_2));
    assert!(versions.contains(&reqwest::Version::HTTP_11));

    tokio::time::timeout(Duration::from_secs(5), &mut server.handle).await???;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "shutdown waited for the grace period ({elapsed:?}) instead of draining"
    );
    drop(idle);
    Ok(())
}

/// When requests outlive `shutdown_grace`, `serve` returns anyway.
#[tokio::test]
async fn shutdown_grace_bounds_the_wait() -> TestResult {
    let (ca, tls, _secret) = test_pki();
    let options = ServeOptions {
        shutdown_grace: Duration::from_millis(100),
        ..quick_options()
    };
    let server = TestServer::start(tls, options).await;
    let c = client(&ca.pem());
    let url = server.url("/slow");
    let request = tokio::spawn(async move { c.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    server.shutdown().await?;
    assert!(started.elapsed() < Duration::from_secs(5));
    // The connection was dropped before the response.
    assert!(request.await?.is_err());
    Ok(())
}

// --- 6. Garbage, silent clients, connection limit ---------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_silent_clients_do_not_disturb_others() -> TestResult {
    let ca = Ca::new("test CA");
    let leaf = ca.server("server");
    let mut secret = SecretDir::new();
    secret.publish_leaf(&leaf);
    let tls = ReloadingTls::load(secret.files(false))?;
    let server = TestServer::start(tls, quick_options()).await;

    // Plain HTTP to the TLS port: the server closes the connection quickly.
    let mut plain = TcpStream::connect(server.addr).await?;
    plain
        .write_all(b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut sink))
        .await?
        .ok();
    assert!(!String::from_utf8_lossy(&sink).contains("pong"));

    // Random bytes.
    let mut noise = TcpStream::connect(server.addr).await?;
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let _ = noise.write_all(&bytes).await;
    tokio::time::timeout(Duration::from_secs(5), noise.read_to_end(&mut sink))
        .await?
        .ok();

    // A TLS record header announcing a ClientHello, then nothing.
    let mut partial = TcpStream::connect(server.addr).await?;
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await?;

    // A client that connects and sends nothing.
    let silent_since = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await?;

    // Everyone else is still served, meanwhile.
    assert_eq!(ping_fresh(&server, &ca.pem()).await?, leaf.fingerprint());
    let h1 = client_builder(&ca.pem()).http1_only().build()?;
    assert_eq!(
        h1.get(server.url("/ping")).send().await?.text().await?,
        "pong"
    );

    // The silent client is dropped after the handshake timeout (500 ms).
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await?;
    let waited = silent_since.elapsed();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "silent client got data: {read:?}"
    );
    assert!(
        waited >= Duration::from_millis(400),
        "dropped too early: {waited:?}"
    );
    let read = tokio::time::timeout(Duration::from_secs(5), partial.read(&mut buf)).await?;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "partial client got data: {read:?}"
    );

    assert_eq!(ping_fresh(&server, &ca.pem()).await?, leaf.fingerprint());
    server.shutdown().await?;
    Ok(())
}

/// Beyond `max_connections`, new clients wait (in the listen backlog) for a
/// connection to close, and are then served.
#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_slot() -> TestResult {
    let ca = Ca::new("test CA");
    let leaf = ca.server("server");
    let mut secret = SecretDir::new();
    secret.publish_leaf(&leaf);
    let tls = ReloadingTls::load(secret.files(false))?;
    let options = ServeOptions {
        max_connections: 1,
        ..quick_options()
    };
    let server = TestServer::start(tls, options).await;

    let started = Instant::now();
    let silent = TcpStream::connect(server.addr).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ping_fresh(&server, &ca.pem()).await?, leaf.fingerprint());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "second connection served while the only slot was taken ({waited:?})"
    );
    drop(silent);
    server.shutdown().await?;
    Ok(())
}

// --- 7. load() errors --------------------------------------------------------

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

fn files(cert: &Path, key: &Path, ca: Option<&Path>) -> TlsFiles {
    TlsFiles {
        cert_file: cert.to_owned(),
        key_file: key.to_owned(),
        client_ca_file: ca.map(Path::to_owned),
    }
}

#[test]
fn load_errors_name_the_file() {
    let ca = Ca::new("test CA");
    let leaf = ca.server("server");
    let other = ca.server("other");
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "server.crt", leaf.cert_pem.as_bytes());
    let key = write(dir.path(), "server.key", leaf.key_pem.as_bytes());
    let other_key = write(dir.path(), "other.key", other.key_pem.as_bytes());
    let empty = write(dir.path(), "empty.pem", b"");
    let bad_base64 = write(
        dir.path(),
        "bad-base64.crt",
        b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    let missing = dir.path().join("missing.pem");
    let client_ca = write(dir.path(), "client-ca.crt", ca.pem().as_bytes());

    let load = |f: TlsFiles| ReloadingTls::load(f).map(|_| ()).unwrap_err();
    let named = |err: &TlsError, needle: &str| {
        let message = err.to_string();
        assert!(
            message.contains(needle),
            "{message:?} does not name {needle}"
        );
        assert!(!message.contains("-----BEGIN"), "{message:?} leaks PEM");
        message
    };

    // Sanity: the good pair loads, with and without client CA.
    ReloadingTls::load(files(&cert, &key, None)).unwrap();
    ReloadingTls::load(files(&cert, &key, Some(&client_ca))).unwrap();

    let err = load(files(&missing, &key, None));
    assert!(
        matches!(
            err,
            TlsError::Read {
                role: TlsFileRole::Certificate,
                ..
            }
        ),
        "{err:?}"
    );
    named(&err, "missing.pem");

    let err = load(files(&cert, &missing, None));
    assert!(
        matches!(
            err,
            TlsError::Read {
                role: TlsFileRole::PrivateKey,
                ..
            }
        ),
        "{err:?}"
    );
    named(&err, "missing.pem");

    let err = load(files(&empty, &key, None));
    assert!(
        matches!(
            err,
            TlsError::NoCertificate {
                role: TlsFileRole::Certificate,
                ..
            }
        ),
        "{err:?}"
    );
    named(&err, "empty.pem");

    let err = load(files(&bad_base64, &key, None));
    assert!(
        matches!(
            err,
            TlsError::Pem {
                role: TlsFileRole::Certificate,
                ..
            }
        ),
        "{err:?}"
    );
    named(&err, "bad-base64.crt");

    let err = load(files(&cert, &empty, None));
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");
    named(&err, "empty.pem");

    // A certificate where the key should be.
    let err = load(files(&cert, &cert, None));
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");
    named(&err, "server.crt");

    let err = load(files(&cert, &other_key, None));
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    let message = named(&err, "other.key");
    assert!(message.contains("server.crt"), "{message}");
    assert!(message.contains("does not match"), "{message}");

    let err = load(files(&cert, &key, Some(&missing)));
    assert!(
        matches!(
            err,
            TlsError::Read {
                role: TlsFileRole::ClientCa,
                ..
            }
        ),
        "{err:?}"
    );
    named(&err, "missing.pem");

    let err = load(files(&cert, &key, Some(&empty)));
    assert!(
        matches!(
            err,
            TlsError::NoCertificate {
                role: TlsFileRole::ClientCa,
                ..
            }
        ),
        "{err:?}"
    );
    let message = named(&err, "empty.pem");
    assert!(message.contains("client CA"), "{message}");
}

/// A raw TLS connection to `server` trusting `ca`, offering one ALPN
/// protocol, from the local address `from`.
async fn tls_connect(
    server: &TestServer,
    ca: &Ca,
    alpn: &[u8],
    from: std::net::IpAddr,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Box<dyn std::error::Error + Send + Sync>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca.pem().as_bytes()) {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let tcp = socket.connect(server.addr).await?;
    Ok(connector
        .connect(rustls_pki_types::ServerName::try_from("localhost")?, tcp)
        .await?)
}

const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A raw HTTP/1.1-over-TLS connection (ALPN http/1.1) trusting `ca`, for
/// tests that need to control every byte and its timing.
async fn raw_http1(
    server: &TestServer,
    ca: &Ca,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Box<dyn std::error::Error + Send + Sync>> {
    tls_connect(server, ca, b"http/1.1", LOOPBACK).await
}

/// Reads until the server closes (EOF or an unclean close), at most 5 s;
/// returns what was read and how long it took.
async fn read_until_closed(
    stream: &mut tokio_rustls::client::TlsStream<TcpStream>,
) -> Result<(String, Duration), Box<dyn std::error::Error + Send + Sync>> {
    let started = Instant::now();
    let mut buf = Vec::new();
    // Either way of closing counts: the question is when.
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await?;
    Ok((
        String::from_utf8_lossy(&buf).into_owned(),
        started.elapsed(),
    ))
}

/// Sends `bytes` one at a time, 50 ms apart, until the server closes the
/// connection; returns when that happened (from the first byte) and what
/// the server sent.
async fn trickle(
    stream: &mut tokio_rustls::client::TlsStream<TcpStream>,
    bytes: &[u8],
) -> Result<(Duration, String), Box<dyn std::error::Error + Send + Sync>> {
    let started = Instant::now();
    for byte in bytes {
        if stream.write_all(&[*byte]).await.is_err() || stream.flush().await.is_err() {
            return Ok((started.elapsed(), String::new()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (read, _) = read_until_closed(stream).await?;
    Ok((started.elapsed(), read))
}

/// A CA, and TLS files for a server certificate it signed.
fn test_pki() -> (Ca, Arc<ReloadingTls>, SecretDir) {
    let ca = Ca::new("test CA");
    let leaf = ca.server("server");
    let mut secret = SecretDir::new();
    secret.publish_leaf(&leaf);
    let tls = ReloadingTls::load(secret.files(false)).unwrap();
    (ca, tls, secret)
}

/// After the TLS handshake, an HTTP/1.1 client that sends no request is
/// disconnected after `header_read_timeout` (and not long after it).
#[tokio::test]
async fn http1_client_without_request_is_dropped_after_header_read_timeout() -> TestResult {
    let options = ServeOptions {
        header_read_timeout: Duration::from_millis(300),
        ..quick_options()
    };
    let (ca, tls, _secret) = test_pki();
    let server = TestServer::start(tls, options).await;

    let mut stream = raw_http1(&server, &ca).await?;
    let (read, waited) = read_until_closed(&mut stream).await?;
    assert!(!read.contains("pong"));
    assert!(
        waited >= Duration::from_millis(250),
        "closed too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(2),
        "not closed near the timeout: {waited:?}"
    );

    server.shutdown().await?;
    Ok(())
}

/// Slowloris: headers trickled one byte at a time keep bytes flowing but
/// never complete a request; the connection is closed near
/// `header_read_timeout` all the same.
#[tokio::test]
async fn http1_headers_trickled_byte_by_byte_are_cut_off() -> TestResult {
    let options = ServeOptions {
        header_read_timeout: Duration::from_millis(400),
        ..quick_options()
    };
    let (ca, tls, _secret) = test_pki();
    let server = TestServer::start(tls, options).await;

    let mut stream = raw_http1(&server, &ca).await?;
    let request = b"GET /ping HTTP/1.1\r\nhost: localhost\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    // Never the final CRLF: the headers stay incomplete.
    let (cut_after, read) = trickle(&mut stream, &request[..request.len() - 2]).await?;
    assert!(!read.contains("pong"), "an incomplete request was answered");
    // 93 bytes at 50 ms each would take 4.6 s.
    assert!(
        cut_after >= Duration::from_millis(350) && cut_after < Duration::from_secs(2),
        "trickling client cut off after {cut_after:?}"
    );

    server.shutdown().await?;
    Ok(())
}

/// The idle limit restarts with every response: a keep-alive connection
/// used more often than `header_read_timeout` stays open for many times
/// that limit, and is closed once it goes quiet.
#[tokio::test]
async fn http1_keep_alive_connection_in_use_stays_open() -> TestResult {
    let options = ServeOptions {
        header_read_timeout: Duration::from_millis(300),
        ..quick_options()
    };
    let (ca, tls, _secret) = test_pki();
    let server = TestServer::start(tls, options).await;

    let mut stream = raw_http1(&server, &ca).await?;
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    for i in 0..12 {
        stream
            .write_all(b"GET /ping HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await?;
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
        let response = String::from_utf8_lossy(&buf[..n]);
        assert!(
            response.starts_with("HTTP/1.1 200") && response.contains("pong"),
            "request {i} after {:?}: {response:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let (read, waited) = read_until_closed(&mut stream).await?;
    assert!(read.is_empty(), "{read:?}");
    assert!(waited < Duration::from_secs(2), "idle for {waited:?}");

    server.shutdown().await?;
    Ok(())
}

/// A request whose body is trickled makes no progress: the connection is
/// closed after `stall_timeout`, HTTP/1.1 or not.
#[tokio::test]
async fn request_body_trickled_is_cut_off_after_stall_timeout() -> TestResult {
    let options = ServeOptions {
        stall_timeout: Duration::from_millis(500),
        ..quick_options()
    };
    let (ca, tls, _secret) = test_pki();
    let server = TestServer::start(tls, options).await;

    let mut stream = raw_http1(&server, &ca).await?;
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-length: 1000\r\n\r\n")
        .await?;
    let (cut_after, read) = trickle(&mut stream, &[b'x'; 100]).await?;
    assert!(!read.contains("HTTP/1.1 200"), "{read:?}");
    assert!(
        cut_after >= Duration::from_millis(450) && cut_after < Duration::from_secs(3),
        "trickled body cut off after {cut_after:?}"
    );

    server.shutdown().await?;
    Ok(())
}

/// An HTTP/2 client connection (the `h2` crate, ALPN h2) trusting `ca`,
/// driven by its own task (which also answers the server's pings): the
/// task ends when the server closes the connection.
async fn raw_h2(
    server: &TestServer,
    ca: &Ca,
) -> Result<
    (
        h2::client::SendRequest<axum::body::Bytes>,
        JoinHandle<Result<(), h2::Error>>,
    ),
    Box<dyn std::error::Error + Send + Sync>,
> {
    let tls = tls_connect(server, ca, b"h2", LOOPBACK).await?;
    let (send, connection) = h2::client::handshake(tls).await?;
    Ok((send, tokio::spawn(connection)))
}

fn h2_request(method: &str, path: &str) -> axum::http::Request<()> {
    axum::http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .body(())
        .unwrap()
}

/// A stalled upload on one HTTP/2 stream closes the connection after
/// `stall_timeout` even while other streams on the same connection keep
/// finishing (a `/ping` every 100 ms): progress is counted per stream.
#[tokio::test]
async fn http2_stalled_stream_is_cut_off_while_other_streams_finish() -> TestResult {
    let options = ServeOptions {
        stall_timeout: Duration::from_millis(600),
        ..quick_options()
    };
    let (ca, tls, _secret) = test_pki();
    let server = TestServer::start(tls, options).await;

    let (send, connection) = raw_h2(&server, &ca).await?;
    let mut send = send.ready().await?;
    let mut upload = h2_request("POST", "/echo");
    upload.headers_mut().insert(
        "content-length",
        axum::http::HeaderValue::from_static("1000"),
    );
    let (_stalled_response, mut body) = send.send_request(upload, false)?;
    body.send_data(axum::body::Bytes::from_static(&[b'x'; 10]), false)?;
    let started = Instant::now();

    let mut pings = 0;
    let closed_after = loop {
        if connection.is_finished() {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "stalled stream kept its connection open for 5 s ({pings} pings answered)"
        );
        let ping = async {
            let mut ready = send.clone().ready().await?;
            let (response, _) = ready.send_request(h2_request("GET", "/ping"), true)?;
            response.await
        };
        // An error: the connection is going away.
        if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(2), ping).await {
            assert_eq!(response.status(), 200);
            pings += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(pings >= 3, "only {pings} pings answered");
    assert!(
        closed_after >= Duration::from_millis(550) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}"
    );
    server.shutdown().await?;
    Ok(())
}

/// An HTTP/2 connection that answers pings but opens no stream is sent a
/// GOAWAY and closed after `http2_idle_timeout`; one in use stays open.
#[tokio::test]
async fn http2_idle_connection_is_closed_after_the_idle_timeout() -> TestResult {
    let options = ServeOptions {
        http2_idle_timeout: Duration::from_millis(500),
        ..quick_options()
    };
    let (ca, tls, _secret) = test_pki();
    let server = TestServer::start(tls, options).await;

    // In use: a request every 200 ms for 1.5 s keeps it open.
    let (send, busy) = raw_h2(&server, &ca).await?;
    let started = Instant::now();
    let mut idle_since = started;
    while started.elapsed() < Duration::from_millis(1500) {
        let mut ready = send.clone().ready().await?;
        let (response, _) = ready.send_request(h2_request("GET", "/ping"), true)?;
        assert_eq!(response.await?.status(), 200);
        idle_since = Instant::now();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!busy.is_finished(), "a connection in use was closed");

    // Then idle: closed near the limit, cleanly (GOAWAY, then EOF).
    let closed = tokio::time::timeout(Duration::from_secs(5), busy).await;
    let waited = idle_since.elapsed();
    let result =
        closed.map_err(|_| format!("idle HTTP/2 connection still open after {waited:?}"))?;
    assert!(result?.is_ok(), "connection ended with an error");
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
        "closed after {waited:?} idle"
    );
    server.shutdown().await?;
    Ok(())
}

/// Beyond `max_connections_per_peer`, an address's new connections are
/// closed at once, while another address is served.
#[tokio::test]
async fn connections_beyond_the_per_peer_cap_are_closed() -> TestResult {
    let options = ServeOptions {
        max_connections_per_peer: 2,
        header_read_timeout: Duration::from_secs(10),
        ..quick_options()
    };
    let (ca, tls, _secret) = test_pki();
    let server = TestServer::start(tls, options).await;

    let held = [
        raw_http1(&server, &ca).await?,
        raw_http1(&server, &ca).await?,
    ];
    let started = Instant::now();
    let third = tls_connect(&server, &ca, b"http/1.1", LOOPBACK).await;
    assert!(
        third.is_err(),
        "a third connection from the same address was served"
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    let other = client_builder(&ca.pem())
        .local_address(std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)))
        .build()?;
    let response = other.get(server.url("/ping")).send().await?;
    assert_eq!(response.text().await?, "pong");

    // A slot freed is a slot for the same address again.
    drop(held);
    let mut again = None;
    for _ in 0..100 {
        if let Ok(stream) = tls_connect(&server, &ca, b"http/1.1", LOOPBACK).await {
            again = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the address's slots were not released");
    server.shutdown().await?;
    Ok(())
}
