//! HTTPS serving layer: TLS configuration that follows certificate rotation,
//! and an accept loop that serves an axum [`Router`] over HTTP/1.1 or HTTP/2.
//!
//! # Certificate rotation
//!
//! [`ReloadingTls`] loads a certificate chain, its private key and an
//! optional client CA bundle (for mutual TLS) into a rustls
//! [`ServerConfig`]. [`ReloadingTls::reload_if_changed`] re-reads the files
//! and installs a new configuration when their *contents* changed; the
//! watcher task ([`ReloadingTls::spawn_watcher`]) calls it periodically.
//!
//! Comparing contents (rather than inode or mtime) is what makes this work
//! for a Kubernetes Secret volume: there `tls.crt` is a symlink to
//! `..data/tls.crt`, and kubelet rotates by atomically renaming a new
//! `..data` symlink pointing at a fresh timestamped directory. Reading the
//! files follows all symlinks, so the new content is seen as soon as the swap
//! happens, whatever the top-level path's metadata says.
//!
//! A new configuration is only installed when the certificate, key and
//! client CA all parse *and* the key matches the leaf certificate. A
//! half-updated pair (new certificate, old key) is rejected; the previous
//! configuration keeps serving and the next poll retries.
//!
//! Each TLS handshake uses the configuration current at accept time, so a
//! rotation affects new connections only; established connections keep
//! their session until they close.
//!
//! # Serving
//!
//! [`serve`] accepts TCP connections, performs the TLS handshake (bounded by
//! [`ServeOptions::handshake_timeout`]) and hands the stream to hyper-util's
//! auto connection builder, forced to HTTP/2 or HTTP/1.1 by the negotiated
//! ALPN protocol. Shutdown is graceful: stop accepting, let in-flight
//! requests finish, give up after [`ServeOptions::shutdown_grace`].
//! [`serve_plain`] runs the same loop without TLS, HTTP/1.1 only, for a
//! probe port.
//!
//! Limits that hold whatever clients do: connections at once, in all and
//! per client address; a budget of request body bytes being received,
//! shared by all connections (`tls/limits.rs`); idle, slowloris and stall
//! checks per connection (`tls/activity.rs`); HTTP/2 streams and windows
//! per connection.
//!
//! The crypto provider is always rustls' `ring` provider, passed explicitly
//! to every builder; nothing depends on a process-wide default provider.

mod activity;
mod limits;

pub use limits::BodyBudgetExceeded;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{InconsistentKeys, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;
use tokio_rustls::TlsAcceptor;

/// ALPN protocols offered by the server, in preference order.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// HTTP/2 streams open at once per connection. The API server opens more
/// connections when it needs more streams.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 64;
/// HTTP/2 flow-control window of each stream: data a client may send ahead
/// of what the handler has read (hyper's default is 1 MiB).
pub const H2_STREAM_WINDOW: u32 = 256 << 10;
/// HTTP/2 flow-control window of a connection, all streams together.
pub const H2_CONNECTION_WINDOW: u32 = 512 << 10;
/// Largest HTTP/2 header list accepted (hyper's default, made explicit).
pub const H2_MAX_HEADER_LIST_SIZE: u32 = 16 << 10;

/// The files a [`ReloadingTls`] reads. Paths may be symlinks (they are
/// followed on every read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file with the server certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM file with the private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM bundle of CA certificates. When set, every client must present a
    /// certificate chaining to one of them (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
}

/// Which of the [`TlsFiles`] an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFileRole {
    /// [`TlsFiles::cert_file`].
    Certificate,
    /// [`TlsFiles::key_file`].
    PrivateKey,
    /// [`TlsFiles::client_ca_file`].
    ClientCa,
}

impl fmt::Display for TlsFileRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Certificate => "certificate",
            Self::PrivateKey => "private key",
            Self::ClientCa => "client CA",
        })
    }
}

/// Why TLS material could not be loaded. Every message names the file
/// concerned; none contains key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read (missing, unreadable, dangling symlink...).
    #[error("cannot read {role} file {}: {source}", path.display())]
    Read {
        role: TlsFileRole,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not valid PEM.
    #[error("invalid PEM in {role} file {}: {source}", path.display())]
    Pem {
        role: TlsFileRole,
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    /// The file contains no `CERTIFICATE` PEM block.
    #[error("no certificate (PEM \"BEGIN CERTIFICATE\" block) in {role} file {}", path.display())]
    NoCertificate { role: TlsFileRole, path: PathBuf },
    /// The key file contains no private key PEM block.
    #[error(
        "no private key (PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block) in private key file {}",
        path.display()
    )]
    NoPrivateKey { path: PathBuf },
    /// The private key parsed as PEM but rustls/ring cannot use it.
    #[error("unusable private key in {}: {source}", path.display())]
    InvalidKey {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// The leaf certificate could not be parsed.
    #[error("invalid leaf certificate in {}: {source}", path.display())]
    InvalidCertificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// The private key is not the key of the leaf certificate.
    #[error(
        "private key {} does not match certificate {} (public keys differ)",
        key_path.display(),
        cert_path.display()
    )]
    KeyMismatch {
        cert_path: PathBuf,
        key_path: PathBuf,
    },
    /// The client CA bundle cannot be used to verify client certificates.
    #[error("unusable client CA file {}: {source}", path.display())]
    ClientCa {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// rustls refused the configuration as a whole (not expected with the
    /// ring provider).
    #[error("cannot build TLS server configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// A rustls server configuration that can be replaced at runtime when the
/// certificate files change. See the [module documentation](self).
pub struct ReloadingTls {
    files: TlsFiles,
    state: RwLock<Loaded>,
    /// Serialises reloads so concurrent callers cannot install an older
    /// configuration over a newer one.
    reload_lock: Mutex<()>,
}

/// What is currently served.
struct Loaded {
    config: Arc<ServerConfig>,
    /// Digest of the file contents the config was built from.
    digest: [u8; 32],
    /// SHA-256 of the leaf certificate (DER), lowercase hex.
    fingerprint: String,
}

/// Raw contents of the files, read once per (re)load.
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("files", &self.files)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl ReloadingTls {
    /// Loads certificate, key and optional client CA and builds a rustls
    /// [`ServerConfig`]: ring provider, TLS 1.3 and 1.2, ALPN `h2` then
    /// `http/1.1`. With [`TlsFiles::client_ca_file`], client certificates are
    /// required and verified against that bundle.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let contents = read_contents(&files)?;
        let loaded = build(&files, &contents)?;
        Ok(Arc::new(Self {
            files,
            state: RwLock::new(loaded),
            reload_lock: Mutex::new(()),
        }))
    }

    /// The files this configuration is loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The configuration to use for the next handshake (an `Arc` clone under
    /// a read lock).
    pub fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.read_state().config)
    }

    /// SHA-256 fingerprint (lowercase hex, no separators) of the leaf
    /// certificate currently served, for logs and tests.
    pub fn fingerprint(&self) -> String {
        self.read_state().fingerprint.clone()
    }

    /// Re-reads the files and, if their contents differ from what is served,
    /// builds and installs a new configuration. Returns `Ok(true)` when a new
    /// configuration was installed, `Ok(false)` when nothing changed.
    ///
    /// On error the previous configuration stays in place and the error is
    /// returned for the caller to log; a later call retries. This does
    /// blocking file I/O (a few small files).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let _serialised = self
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let contents = read_contents(&self.files)?;
        if contents.digest() == self.read_state().digest {
            return Ok(false);
        }
        let loaded = build(&self.files, &contents)?;
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = loaded;
        Ok(true)
    }

    /// Spawns a task that calls [`reload_if_changed`](Self::reload_if_changed)
    /// every `interval` (on the blocking pool) until `shutdown` resolves.
    /// Reloads are logged at info with the new leaf fingerprint; failures at
    /// warn, once per distinct error (a persistently broken file does not
    /// flood the log). Nothing logged contains key material.
    ///
    /// Must be called from within a Tokio runtime.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        interval: Duration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        let this = Arc::clone(self);
        // `tokio::time::interval` panics on a zero period.
        let interval = interval.max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut shutdown = pin!(shutdown);
            let mut ticker =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut last_error: Option<String> = None;
            loop {
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    _ = ticker.tick() => {}
                }
                let reloader = Arc::clone(&this);
                let result =
                    match tokio::task::spawn_blocking(move || reloader.reload_if_changed()).await {
                        Ok(result) => result,
                        Err(e) => {
                            tracing::warn!(error = %e, "TLS reload task failed");
                            continue;
                        }
                    };
                match result {
                    Ok(true) => {
                        last_error = None;
                        tracing::info!(
                            cert_file = %this.files.cert_file.display(),
                            fingerprint = %this.fingerprint(),
                            "reloaded TLS certificate"
                        );
                    }
                    Ok(false) => {
                        if last_error.take().is_some() {
                            tracing::info!(
                                cert_file = %this.files.cert_file.display(),
                                "TLS files are back to the served content"
                            );
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        if last_error.as_deref() != Some(message.as_str()) {
                            tracing::warn!(
                                error = %message,
                                fingerprint = %this.fingerprint(),
                                "TLS reload failed; still serving the previous certificate"
                            );
                            last_error = Some(message);
                        }
                    }
                }
            }
        })
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Contents {
    fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            match part {
                Some(bytes) => {
                    hasher.update([1u8]);
                    hasher.update((bytes.len() as u64).to_be_bytes());
                    hasher.update(bytes);
                }
                None => hasher.update([0u8]),
            }
        }
        hasher.finalize().into()
    }
}

fn read_file(role: TlsFileRole, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        role,
        path: path.to_owned(),
        source,
    })
}

fn read_contents(files: &TlsFiles) -> Result<Contents, TlsError> {
    Ok(Contents {
        cert: read_file(TlsFileRole::Certificate, &files.cert_file)?,
        key: read_file(TlsFileRole::PrivateKey, &files.key_file)?,
        client_ca: files
            .client_ca_file
            .as_deref()
            .map(|path| read_file(TlsFileRole::ClientCa, path))
            .transpose()?,
    })
}

fn parse_certs(
    role: TlsFileRole,
    path: &Path,
    pem_bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            role,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            role,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn parse_key(path: &Path, pem_bytes: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem_bytes).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_owned(),
        },
        source => TlsError::Pem {
            role: TlsFileRole::PrivateKey,
            path: path.to_owned(),
            source,
        },
    })
}

fn client_verifier(
    path: &Path,
    pem_bytes: &[u8],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let ca_error = |source: Box<dyn std::error::Error + Send + Sync>| TlsError::ClientCa {
        path: path.to_owned(),
        source,
    };
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(TlsFileRole::ClientCa, path, pem_bytes)? {
        roots.add(cert).map_err(|e| ca_error(Box::new(e)))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|e| ca_error(Box::new(e)))
}

/// Builds the served configuration from file contents (not from the files
/// again, so the digest and the configuration always agree).
fn build(files: &TlsFiles, contents: &Contents) -> Result<Loaded, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let chain = parse_certs(TlsFileRole::Certificate, &files.cert_file, &contents.cert)?;
    let key_der = parse_key(&files.key_file, &contents.key)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|source| TlsError::InvalidKey {
            path: files.key_file.clone(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // `Unknown`: the key type cannot report its public key; rustls'
        // own `with_single_cert` accepts that case too.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                cert_path: files.cert_file.clone(),
                key_path: files.key_file.clone(),
            });
        }
        Err(source) => {
            return Err(TlsError::InvalidCertificate {
                path: files.cert_file.clone(),
                source,
            });
        }
    }
    let fingerprint = certified
        .cert
        .first()
        .map(|leaf| hex::encode(Sha256::digest(leaf.as_ref())))
        .unwrap_or_default();

    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?;
    let builder = match (&files.client_ca_file, &contents.client_ca) {
        (Some(path), Some(pem_bytes)) => {
            builder.with_client_cert_verifier(client_verifier(path, pem_bytes, &provider)?)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();

    Ok(Loaded {
        config: Arc::new(config),
        digest: contents.digest(),
        fingerprint,
    })
}

/// Limits and timeouts of [`serve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// Longest time from TCP accept to a completed TLS handshake; slower
    /// (or silent) clients are disconnected. Default 10 s.
    pub handshake_timeout: Duration,
    /// HTTP/1.1: longest time a connection may go without a request in
    /// flight: from the accept or the previous response to the end of the
    /// next request's headers. It bounds both slowly sent headers
    /// (slowloris) and idle keep-alive connections. HTTP/2 connections,
    /// which kube-apiserver keeps open between reviews, have the longer
    /// [`http2_idle_timeout`](Self::http2_idle_timeout) instead. Checked
    /// per connection, a few times per period, not with a timer per
    /// request. Default 10 s.
    pub header_read_timeout: Duration,
    /// HTTP/1.1 and HTTP/2: a connection with a request (an HTTP/2 stream)
    /// in flight for this long is closed (a client trickling a request
    /// body). Each request is timed from its own start, so other requests
    /// finishing on the connection do not keep a stalled one alive.
    /// Default 60 s, above any review's deadline.
    pub stall_timeout: Duration,
    /// Request body bytes being received at once, all connections
    /// together. Every body frame is charged before the handler sees it and
    /// released when its request ends; a frame beyond the budget fails the
    /// body with [`BodyBudgetExceeded`] at once. Default 32 MiB.
    pub body_budget: usize,
    /// The part of [`body_budget`](Self::body_budget) one peer address may
    /// hold, so that one client cannot take all of it. Default 16 MiB.
    pub body_budget_per_peer: usize,
    /// HTTP/2: a connection with no stream open for this long is sent a
    /// GOAWAY and closed (it is dropped if it has not closed 5 s later).
    /// Zero keeps idle HTTP/2 connections open, found dead by pings only.
    /// Default 2 min.
    pub http2_idle_timeout: Duration,
    /// Most connections one client address may have open at once (0 is
    /// treated as 1); beyond it, its new connections are closed at once.
    /// Default 128.
    pub max_connections_per_peer: usize,
    /// Most connections served at once (0 is treated as 1). When reached,
    /// the server stops accepting: further clients wait in the kernel's
    /// listen backlog until a connection closes. Default 1024.
    pub max_connections: usize,
    /// After shutdown is requested, how long in-flight requests may take
    /// before the remaining connections are dropped. Default 20 s (below
    /// the default 30 s pod termination grace period).
    pub shutdown_grace: Duration,
    /// After shutdown is requested and the listener is closed, how long
    /// connections already accepted keep being served as usual (handshakes
    /// finish, first requests are answered) before idle ones are closed.
    /// Without it, a client whose connection was accepted just before the
    /// signal sees it closed before its request is read. Default 0; the
    /// `serve` command uses 1 s.
    pub drain_delay: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(60),
            body_budget: 32 << 20,
            body_budget_per_peer: 16 << 20,
            http2_idle_timeout: Duration::from_secs(120),
            max_connections_per_peer: 128,
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(20),
            drain_delay: Duration::ZERO,
        }
    }
}

/// Accepts TLS connections on `listener` and serves `app` over HTTP/2 or
/// HTTP/1.1, as negotiated by ALPN (clients without ALPN are served by
/// protocol sniffing). Each handshake uses [`ReloadingTls::current`].
///
/// Handshake failures, handshake timeouts and connection errors are logged
/// at debug and never stop the loop. At most
/// [`ServeOptions::max_connections`] connections are served at once;
/// further clients wait in the listen backlog (they are not accepted, so not
/// closed either). A client address over
/// [`ServeOptions::max_connections_per_peer`] has its new connections
/// closed at once.
///
/// When `shutdown` resolves: the listener is closed (new connections are
/// refused), handshakes in progress are abandoned, idle connections are
/// closed, HTTP/2 connections get a GOAWAY, and in-flight requests are
/// allowed to finish. Returns once every connection has closed, or after
/// [`ServeOptions::shutdown_grace`] (remaining connections are then
/// dropped). Dropping the returned future drops all connections at once.
///
/// Accept errors other than per-connection ones (e.g. out of file
/// descriptors) are logged at warn and retried after a short pause, so this
/// currently always returns `Ok`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    accept_loop(listener, Some(tls), app, options, shutdown).await
}

/// Like [`serve`], in plain HTTP/1.1 (no TLS): for kubelet probes and
/// Prometheus on a port of their own, which a saturated TLS listener does
/// not block. The same limits apply; HTTP/2 is not offered.
pub async fn serve_plain(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    accept_loop(listener, None, app, options, shutdown).await
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<ReloadingTls>>,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut shutdown = pin!(shutdown);
    let permits = Arc::new(Semaphore::new(options.max_connections.max(1)));
    // Tells connections to give up their TLS handshake, close when idle
    // and send HTTP/2 a GOAWAY.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let shared = limits::Shared::new(
        options.body_budget,
        options.body_budget_per_peer,
        options.max_connections_per_peer,
    );
    let limits = ConnectionLimits {
        handshake_timeout: options.handshake_timeout,
        header_read_timeout: options.header_read_timeout,
        stall_timeout: options.stall_timeout,
        http2_idle_timeout: options.http2_idle_timeout,
    };
    let mut over_cap = OverCapLog::default();

    loop {
        // Reap finished connection tasks (their results carry nothing).
        while let Some(result) = connections.try_join_next() {
            log_join_error(result);
        }
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_per_connection_error(&e) => {
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying shortly");
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        // Counted from the accept, before any TLS work.
        let Some(slot) = shared.admit(peer.ip().to_canonical()) else {
            over_cap.refused(peer);
            continue;
        };
        connections.spawn(serve_connection(
            tcp,
            peer,
            slot,
            tls.as_ref().map(|tls| tls.current()),
            app.clone(),
            limits,
            stop_rx.clone(),
            permit,
        ));
    }

    // Refuse new connections right away, let the ones just accepted be
    // served for a moment, then drain.
    drop(listener);
    if !options.drain_delay.is_zero() {
        let delay = options.drain_delay.min(options.shutdown_grace);
        tracing::info!(
            ?delay,
            "shutting down: listener closed, serving accepted connections"
        );
        tokio::time::sleep(delay).await;
    }
    let _ = stop_tx.send(true);
    while let Some(result) = connections.try_join_next() {
        log_join_error(result);
    }
    tracing::info!(
        connections = connections.len(),
        grace = ?options.shutdown_grace,
        "shutting down: waiting for in-flight requests"
    );
    let drained = tokio::time::timeout(options.shutdown_grace, async {
        while let Some(result) = connections.join_next().await {
            log_join_error(result);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "shutdown grace period elapsed; dropping remaining connections"
        );
        connections.shutdown().await;
    } else {
        tracing::info!("all connections closed");
    }
    Ok(())
}

/// Connections closed for their address's cap: logged at warn at most once
/// a minute, with a count, so that an attack is visible without flooding
/// the log.
#[derive(Debug, Default)]
struct OverCapLog {
    since_last: u64,
    last: Option<tokio::time::Instant>,
}

impl OverCapLog {
    const EVERY: Duration = Duration::from_secs(60);

    fn refused(&mut self, peer: SocketAddr) {
        self.since_last += 1;
        tracing::debug!(%peer, "too many connections from this address; closing");
        let now = tokio::time::Instant::now();
        if self.last.is_none_or(|last| now >= last + Self::EVERY) {
            tracing::warn!(
                %peer,
                refused = self.since_last,
                "closing connections from addresses over the per-address connection limit (limits.maxConnectionsPerPeer)"
            );
            self.since_last = 0;
            self.last = Some(now);
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    handshake_timeout: Duration,
    header_read_timeout: Duration,
    stall_timeout: Duration,
    http2_idle_timeout: Duration,
}

/// How long an HTTP/2 connection told to go away (GOAWAY) because it was
/// idle may take to close before it is dropped.
const GOAWAY_GRACE: Duration = Duration::from_secs(5);

/// One connection: TLS handshake (unless `config` is `None`: plain
/// HTTP/1.1), then HTTP until the peer closes, the connection expires or a
/// graceful shutdown completes. Never panics; errors are logged at debug.
#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: limits::PeerSlot,
    config: Option<Arc<ServerConfig>>,
    app: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let Some(config) = config else {
        let io = TokioIo::new(tcp);
        return serve_http(io, Some(false), peer, slot, app, limits, stop).await;
    };
    let handshake = tokio::time::timeout(
        limits.handshake_timeout,
        TlsAcceptor::from(config).accept(tcp),
    );
    let stream = tokio::select! {
        biased;
        // Also resolves (with Err) if the server future was dropped.
        _ = stop.wait_for(|stopping| *stopping) => {
            tracing::debug!(%peer, "shutting down: TLS handshake abandoned");
            return;
        }
        handshake = handshake => match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, timeout = ?limits.handshake_timeout, "TLS handshake timed out");
                return;
            }
        },
    };

    let alpn_h2 = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Some(true),
        Some(_) => Some(false),
        None => None,
    };
    serve_http(TokioIo::new(stream), alpn_h2, peer, slot, app, limits, stop).await;
}

/// HTTP on an established stream: `h2` says whether the client chose
/// HTTP/2 (`None`: sniff the protocol).
async fn serve_http<I>(
    io: I,
    h2: Option<bool>,
    peer: SocketAddr,
    slot: limits::PeerSlot,
    app: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No hyper timer for HTTP/1.1: its header-read timeout resets a timer
    // per request; the connection's Activity does that job (see activity.rs).
    builder.http1().header_read_timeout(None);
    // HTTP/2 connections may idle for a while (the API server keeps them);
    // pings find peers that vanished without closing, and the idle limit
    // closes the ones that stay but send nothing. Streams and flow-control
    // windows are sized so that what one connection can make the server
    // hold outside the body budget (data received but not yet read by a
    // handler) stays small: at most the connection window.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_header_list_size(H2_MAX_HEADER_LIST_SIZE);
    let builder = match h2 {
        Some(true) => builder.http2_only(),
        Some(false) => builder.http1_only(),
        None => builder,
    };
    // Without ALPN the protocol is sniffed; such a client is held to the
    // HTTP/1.1 idle limit either way.
    let is_h2 = h2 == Some(true);
    let idle_limit = if is_h2 {
        Some(limits.http2_idle_timeout).filter(|limit| !limit.is_zero())
    } else {
        Some(limits.header_read_timeout)
    };
    let activity = activity::Activity::new(limits.stall_timeout);
    let service = activity::Tracked::new(
        TowerToHyperService::new(app),
        Arc::clone(&activity),
        Arc::new(slot),
    );
    let mut connection = pin!(builder.serve_connection(io, service));
    let period = activity::Activity::check_period(idle_limit, limits.stall_timeout);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set once the connection was asked to go away: it is dropped if it
    // has not closed by then.
    let mut going_away: Option<tokio::time::Instant> = None;
    let mut stopping = false;
    loop {
        tokio::select! {
            biased;
            result = &mut connection => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection error");
                }
                return;
            }
            // Resolves at once, and for good, once stopping: hence the guard.
            _ = stop.wait_for(|stopping| *stopping), if !stopping => {
                stopping = true;
                // Idle HTTP/1.1 connections close; HTTP/2 gets a GOAWAY.
                // In-flight requests finish (the caller bounds the wait).
                connection.as_mut().graceful_shutdown();
            }
            _ = ticks.tick() => {
                if going_away.is_some_and(|deadline| tokio::time::Instant::now() >= deadline) {
                    tracing::debug!(%peer, "closing connection: GOAWAY not honoured");
                    return;
                }
                match activity.expired(idle_limit) {
                    // An idle HTTP/2 connection is told to go away, so a
                    // client about to send a request retries it on a new
                    // connection instead of seeing it fail.
                    Some(activity::Expired::Idle) if is_h2 && going_away.is_none() => {
                        tracing::debug!(%peer, "HTTP/2 connection idle; sending GOAWAY");
                        connection.as_mut().graceful_shutdown();
                        going_away = Some(tokio::time::Instant::now() + GOAWAY_GRACE);
                    }
                    // Told already: the deadline above ends it.
                    Some(activity::Expired::Idle) if is_h2 => {}
                    Some(why) => {
                        // Dropping the connection closes the socket.
                        tracing::debug!(%peer, reason = why.as_str(), "closing connection");
                        return;
                    }
                    None => {}
                }
            }
        }
    }
}

fn log_join_error(result: Result<(), tokio::task::JoinError>) {
    if let Err(e) = result
        && e.is_panic()
    {
        tracing::warn!(error = %e, "connection task panicked");
    }
}

/// Accept errors that concern one connection only (the next accept may
/// succeed at once), as opposed to e.g. running out of file descriptors.
fn is_per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
