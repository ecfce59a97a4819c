//! The push receiver (contract section 10): `POST <receiver.path>` on the
//! review listener takes a push event from GitHub, Gitea/Forgejo, GitLab or
//! a generic sender and fetches the sources it names at once, instead of at
//! their next poll.
//!
//! Order of checks: the body is read up to [`MAX_PUSH_BYTES`] (413 beyond,
//! refused from `Content-Length` before reading when it says so), then
//! authenticated (401, one body whatever was wrong), then parsed (400), then
//! matched against the sources (204 when nothing matches, 202 when a fetch
//! is due). Nothing from the body reaches a command line: a match only
//! runs the configured source's own fetch.
//!
//! Each source has one [`Pusher`]: accepted pushes queue there, and one
//! task at a time runs the fetches they need (see [`Pusher::run`] for what
//! a burst costs).

use crate::config::ConfigError;
use crate::metrics::{Metrics, PushLabels, SourceLabels};
use crate::mirror::Mirror;
use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use gix::ObjectId;
use hmac::{Hmac, Mac};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Deserializer};
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Largest push body read; a bigger one is answered 413 without reading
/// the rest.
pub const MAX_PUSH_BYTES: usize = 1 << 20;

/// Largest secret file read (a bigger one is a mistake, not a key).
const MAX_SECRET_BYTES: u64 = 64 << 10;

/// Paths the review listener already serves.
const RESERVED_PATHS: [&str; 4] = ["/validate", "/healthz", "/readyz", "/metrics"];

/// Pushes remembered individually while a fetch runs (for the latency
/// histogram); beyond this a burst still shares the next fetch, untimed.
const MAX_TIMED_PUSHES: usize = 1024;
/// Distinct pushed commits remembered while a fetch runs; beyond this the
/// next fetch always runs.
const MAX_AFTERS: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// `receiver:` in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReceiverConfig {
    /// Served on the review listener (TLS).
    #[serde(default = "default_path")]
    pub path: String,
    /// The HMAC key (GitHub, Gitea/Forgejo) or token (GitLab, generic), a
    /// mounted Secret's file; one trailing newline is ignored.
    pub secret_file: PathBuf,
}

fn default_path() -> String {
    "/hooks/git".to_owned()
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

impl ReceiverConfig {
    /// What the file itself can say: the path. The secret file is read
    /// when the server starts ([`ReceiverConfig::read_secret`]), so that
    /// a configuration can be checked away from its Secret.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.path;
        let plain = |c: char| c.is_ascii_alphanumeric() || "-._~/".contains(c);
        if !p.starts_with('/') || p.len() < 2 || p.len() > 256 {
            return Err(invalid(
                "receiver.path",
                format!(
                    "{:?} must start with / and name a path below it (at most 256 characters)",
                    crate::echo::value(p)
                ),
            ));
        }
        // Route syntax (`{param}`, `*`) and odd segments are refused so the
        // path means exactly what it says.
        if !p.chars().all(plain) || p.contains("//") || p.split('/').any(|s| s == "." || s == "..")
        {
            return Err(invalid(
                "receiver.path",
                format!(
                    "{:?} may hold only letters, digits, '-', '.', '_', '~' and single '/' between segments",
                    crate::echo::value(p)
                ),
            ));
        }
        let trimmed = p.trim_end_matches('/');
        if RESERVED_PATHS.contains(&trimmed) {
            return Err(invalid(
                "receiver.path",
                format!("{p} is already an endpoint of the webhook"),
            ));
        }
        if self.secret_file.as_os_str().is_empty() {
            return Err(invalid("receiver.secretFile", "must not be empty"));
        }
        Ok(())
    }

    /// Reads the secret file: readable, non-empty after its trailing
    /// newline, at most 64 KiB. The error names the file, never its content.
    pub fn read_secret(&self) -> Result<Secret, ConfigError> {
        read_secret_file(&self.secret_file).map_err(|why| invalid("receiver.secretFile", why))
    }
}

/// The receiver's key or token. Never printed: `Debug` shows its length.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Secret {
    /// Test and embedding use: a secret from bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length; this cannot fail.
        HmacSha256::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("HMAC key length"))
    }

    /// `hex` (64 digits) is the HMAC-SHA256 of `body` under this key,
    /// compared in constant time.
    fn verifies_hex(&self, body: &[u8], hex_sig: &str) -> bool {
        let mut sig = [0u8; 32];
        if hex::decode_to_slice(hex_sig.trim(), &mut sig).is_err() {
            return false;
        }
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(&sig).is_ok()
    }

    /// `token` equals the secret. Both are compared as HMACs under the
    /// secret, in constant time: neither the content nor the length of the
    /// secret shows in the timing.
    fn equals_token(&self, token: &[u8]) -> bool {
        let mut expected = self.mac();
        expected.update(&self.0);
        let expected = expected.finalize().into_bytes();
        let mut given = self.mac();
        given.update(token);
        given.verify_slice(&expected).is_ok()
    }
}

fn read_secret_file(path: &Path) -> Result<Secret, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a file"));
    }
    if meta.len() > MAX_SECRET_BYTES {
        return Err(format!(
            "{shown} is {} bytes, more than {MAX_SECRET_BYTES}: not a key or token",
            meta.len()
        ));
    }
    let mut bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(format!("{shown} is empty"));
    }
    Ok(Secret(bytes))
}

/// The `result` label of `stale_guard_receiver_pushes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushResult {
    Accepted,
    Ignored,
    Unauthorized,
    Malformed,
    TooLarge,
}

impl PushResult {
    pub const ALL: [PushResult; 5] = [
        PushResult::Accepted,
        PushResult::Ignored,
        PushResult::Unauthorized,
        PushResult::Malformed,
        PushResult::TooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PushResult::Accepted => "accepted",
            PushResult::Ignored => "ignored",
            PushResult::Unauthorized => "unauthorized",
            PushResult::Malformed => "malformed",
            PushResult::TooLarge => "too_large",
        }
    }
}

/// The receiver: its path, the current secret, and a pusher per source.
pub struct Receiver {
    path: String,
    secret_file: PathBuf,
    secret: RwLock<Arc<Secret>>,
    targets: Vec<Target>,
    pushes: Family<PushLabels, Counter>,
    body_budget_refusals: Counter,
}

/// One source as pushes are matched against it.
struct Target {
    /// The source's URL, normalised ([`normalize_url`]).
    url: Option<String>,
    branch: String,
    pusher: Arc<Pusher>,
}

impl Receiver {
    /// `sources` are (name, mirror) pairs; the metrics are `metrics`'s
    /// receiver families.
    pub fn new(
        config: &ReceiverConfig,
        secret: Secret,
        sources: impl IntoIterator<Item = (String, Arc<Mirror>)>,
        metrics: &Metrics,
    ) -> Arc<Receiver> {
        let targets = sources
            .into_iter()
            .map(|(name, mirror)| {
                let spec = mirror.spec();
                let latency = metrics
                    .receiver_push_to_head
                    .get_or_create(&SourceLabels {
                        source: name.clone(),
                    })
                    .clone();
                Target {
                    url: normalize_url(&spec.url),
                    branch: spec.branch.clone(),
                    pusher: Arc::new(Pusher {
                        name,
                        mirror,
                        latency,
                        queue: Mutex::new(Queue::default()),
                    }),
                }
            })
            .collect();
        // Every result shows from the start, at 0.
        for result in PushResult::ALL {
            let _ = metrics.receiver_pushes.get_or_create(&PushLabels {
                result: result.as_str(),
            });
        }
        Arc::new(Receiver {
            path: config.path.clone(),
            secret_file: config.secret_file.clone(),
            secret: RwLock::new(Arc::new(secret)),
            targets,
            pushes: metrics.receiver_pushes.clone(),
            body_budget_refusals: metrics.body_budget_refusals.clone(),
        })
    }

    /// The route, to merge into the review listener's router.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(&self.path, post(receive))
            .with_state(Arc::clone(self))
    }

    fn secret(&self) -> Arc<Secret> {
        Arc::clone(&self.secret.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Re-reads the secret file every `interval` (a rotated Secret volume
    /// swaps its `..data` link: contents are compared, as for the TLS
    /// files). A file that became unreadable or empty keeps the previous
    /// secret, with one warning.
    pub fn spawn_secret_watcher(
        self: &Arc<Self>,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        let interval = interval.max(Duration::from_millis(1));
        tokio::spawn(async move {
            tokio::pin!(shutdown);
            let mut warned = false;
            loop {
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(interval) => {}
                }
                let file = this.secret_file.clone();
                let read = tokio::task::spawn_blocking(move || read_secret_file(&file)).await;
                match read {
                    Ok(Ok(secret)) => {
                        warned = false;
                        if *this.secret() != secret {
                            *this.secret.write().unwrap_or_else(|e| e.into_inner()) =
                                Arc::new(secret);
                            info!(secret_file = %this.secret_file.display(), "reloaded the receiver secret");
                        }
                    }
                    Ok(Err(why)) if !warned => {
                        warned = true;
                        warn!(error = %why, "receiver secret reload failed; keeping the previous secret");
                    }
                    _ => {}
                }
            }
        })
    }

    fn count(&self, result: PushResult) {
        self.pushes
            .get_or_create(&PushLabels {
                result: result.as_str(),
            })
            .inc();
    }

    fn answer(&self, result: PushResult, message: &str) -> Response {
        self.count(result);
        let status = match result {
            PushResult::Accepted => StatusCode::ACCEPTED,
            PushResult::Ignored => return StatusCode::NO_CONTENT.into_response(),
            PushResult::Unauthorized => StatusCode::UNAUTHORIZED,
            PushResult::Malformed => StatusCode::BAD_REQUEST,
            PushResult::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        };
        json(status, message)
    }
}

fn json(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "status": status.as_u16(), "message": message });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Why a body could not be read.
enum ReadError {
    TooLarge,
    /// The transport's request body budget is in use (503, as for reviews).
    Budget(String),
    Broken(String),
}

/// Reads at most `limit` bytes of `body`; stops at the first frame past it.
async fn read_capped(mut body: Body, limit: usize) -> Result<Bytes, ReadError> {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        let frame = frame.map_err(|e| {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(err) = source {
                if let Some(refused) = err.downcast_ref::<crate::tls::BodyBudgetExceeded>() {
                    return ReadError::Budget(refused.to_string());
                }
                source = err.source();
            }
            ReadError::Broken(crate::echo::message(e.to_string()))
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ReadError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

const UNAUTHORIZED: &str = "missing or invalid signature or token";

/// Headers carrying an HMAC-SHA256 of the body, and their value's prefix.
const HMAC_HEADERS: [(&str, &str); 3] = [
    ("x-hub-signature-256", "sha256="),
    ("x-gitea-signature", ""),
    ("x-forgejo-signature", ""),
];

/// Headers naming the event.
const EVENT_HEADERS: [&str; 5] = [
    "x-github-event",
    "x-gitea-event",
    "x-forgejo-event",
    "x-gogs-event",
    "x-gitlab-event",
];

/// Whether the request proves it knows the secret: every HMAC header
/// present must verify (Gitea sends several; one wrong one refuses);
/// without one, `X-Gitlab-Token`, else `Authorization: Bearer`.
fn authenticated(headers: &HeaderMap, body: &[u8], secret: &Secret) -> bool {
    let mut signed = false;
    for (name, prefix) in HMAC_HEADERS {
        for value in headers.get_all(name) {
            signed = true;
            let verified = value
                .to_str()
                .ok()
                .and_then(|v| strip_prefix_ignore_case(v.trim(), prefix))
                .is_some_and(|hex_sig| secret.verifies_hex(body, hex_sig));
            if !verified {
                return false;
            }
        }
    }
    if signed {
        return true;
    }
    // A token header given twice is refused rather than guessing which
    // value counts.
    let once = |name: &str| {
        let mut values = headers.get_all(name).iter();
        let first = values.next()?;
        Some(values.next().is_none().then_some(first))
    };
    if let Some(token) = once("x-gitlab-token") {
        return token.is_some_and(|t| secret.equals_token(t.as_bytes()));
    }
    if let Some(auth) = once(header::AUTHORIZATION.as_str()) {
        return auth
            .and_then(|v| v.to_str().ok())
            .and_then(|v| strip_prefix_ignore_case(v.trim(), "bearer "))
            .is_some_and(|token| secret.equals_token(token.trim().as_bytes()));
    }
    false
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

/// The event named by a sender's header, if any.
fn event(headers: &HeaderMap) -> Option<String> {
    EVENT_HEADERS.iter().find_map(|name| {
        headers
            .get(*name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
    })
}

fn is_push_event(event: &str) -> bool {
    event.eq_ignore_ascii_case("push") || event.eq_ignore_ascii_case("push hook")
}

/// A string field, or nothing: any other JSON type is ignored (senders add
/// and change fields; only these strings matter).
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

/// A repository (GitHub, Gitea, GitLab's `repository`) or project
/// (GitLab): every URL field a sender may fill.
#[derive(Default, Deserialize)]
struct RepoUrls {
    #[serde(default, deserialize_with = "text")]
    clone_url: Option<String>,
    #[serde(default, deserialize_with = "text")]
    ssh_url: Option<String>,
    #[serde(default, deserialize_with = "text")]
    html_url: Option<String>,
    #[serde(default, deserialize_with = "text")]
    git_url: Option<String>,
    #[serde(default, deserialize_with = "text")]
    git_http_url: Option<String>,
    #[serde(default, deserialize_with = "text")]
    git_ssh_url: Option<String>,
    #[serde(default, deserialize_with = "text")]
    web_url: Option<String>,
    #[serde(default, deserialize_with = "text")]
    http_url: Option<String>,
    #[serde(default, deserialize_with = "text")]
    homepage: Option<String>,
}

impl RepoUrls {
    fn all(self) -> impl Iterator<Item = String> {
        [
            self.clone_url,
            self.ssh_url,
            self.html_url,
            self.git_url,
            self.git_http_url,
            self.git_ssh_url,
            self.web_url,
            self.http_url,
            self.homepage,
        ]
        .into_iter()
        .flatten()
    }
}

/// The fields of a push body that matter; the generic sender's
/// `{"url", "branch", "after"}` and the hosted senders' shapes together.
#[derive(Deserialize)]
struct PushBody {
    #[serde(default, rename = "ref", deserialize_with = "text")]
    ref_: Option<String>,
    #[serde(default, deserialize_with = "text")]
    after: Option<String>,
    #[serde(default, deserialize_with = "text")]
    url: Option<String>,
    #[serde(default, deserialize_with = "text")]
    branch: Option<String>,
    #[serde(default)]
    repository: Option<RepoUrls>,
    #[serde(default)]
    project: Option<RepoUrls>,
}

/// A push, as far as matching needs it.
#[derive(Debug, PartialEq, Eq)]
struct Push {
    /// Normalised repository URLs.
    urls: Vec<String>,
    /// `None`: any branch (a generic push naming only a URL).
    branch: Option<String>,
    /// The pushed commit, when the sender says (skips a fetch that would
    /// bring nothing).
    after: Option<ObjectId>,
}

/// What a body says.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Push(Push),
    /// A push of something no source follows (a tag, another ref kind).
    NotABranch,
}

fn parse_push(body: &[u8]) -> Result<Parsed, String> {
    let b: PushBody = serde_json::from_slice(body).map_err(|e| {
        crate::echo::message(format!(
            "the body is not a push event in JSON (send application/json): {e}"
        ))
    })?;
    let branch = match (&b.ref_, &b.branch) {
        (Some(r), _) => match r.strip_prefix("refs/heads/") {
            Some(branch) if !branch.is_empty() => Some(branch.to_owned()),
            _ => return Ok(Parsed::NotABranch),
        },
        (None, Some(branch)) => Some(
            branch
                .strip_prefix("refs/heads/")
                .unwrap_or(branch)
                .to_owned(),
        ),
        (None, None) if b.repository.is_some() || b.project.is_some() => {
            return Err("the push names no ref".to_owned());
        }
        (None, None) => None,
    };
    let urls: Vec<String> = b
        .url
        .into_iter()
        .chain(b.repository.unwrap_or_default().all())
        .chain(b.project.unwrap_or_default().all())
        .filter_map(|u| normalize_url(&u))
        .collect();
    if urls.is_empty() {
        return Err("the push names no repository URL".to_owned());
    }
    let after = b
        .after
        .and_then(|a| ObjectId::from_hex(a.trim().as_bytes()).ok())
        .filter(|oid| !oid.is_null());
    Ok(Parsed::Push(Push {
        urls,
        branch,
        after,
    }))
}

/// A git URL reduced to `host/path` for comparison: no scheme, no user, no
/// port, the host in lower case, no trailing `/` or `.git`. The scp-like
/// `git@host:path` equals `ssh://git@host/path` and `https://host/path`.
/// A local path (or `file://`) stays a path. `None` for an empty URL.
pub fn normalize_url(url: &str) -> Option<String> {
    let url = url.trim();
    let (host, path) = if let Some((_, rest)) = url.split_once("://") {
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        (strip_port(host), path)
    } else if let Some((authority, path)) = url.split_once(':').filter(|(a, _)| !a.contains('/')) {
        // scp-like `[user@]host:path` (a path never has ':' before its first '/').
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        (host, path)
    } else {
        ("", url)
    };
    let mut path = path.trim_start_matches('/').trim_end_matches('/');
    path = path.strip_suffix(".git").unwrap_or(path);
    path = path.trim_end_matches('/');
    let host = host.to_ascii_lowercase();
    if host.is_empty() && path.is_empty() {
        return None;
    }
    Some(format!("{host}/{path}"))
}

fn strip_port(host: &str) -> &str {
    // `[::1]:22` keeps its brackets; `host:22` loses the port.
    match host.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => {
            if h.starts_with('[') || !h.contains(':') {
                h
            } else {
                host
            }
        }
        _ => host,
    }
}

async fn receive(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: Body) -> Response {
    let received = Instant::now();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = format!("the body is larger than {MAX_PUSH_BYTES} bytes");
    if declared.is_some_and(|n| n > MAX_PUSH_BYTES as u64) {
        return rx.answer(PushResult::TooLarge, &too_large);
    }
    let body = match read_capped(body, MAX_PUSH_BYTES).await {
        Ok(body) => body,
        Err(ReadError::TooLarge) => return rx.answer(PushResult::TooLarge, &too_large),
        Err(ReadError::Budget(why)) => {
            rx.body_budget_refusals.inc();
            return json(StatusCode::SERVICE_UNAVAILABLE, &why);
        }
        Err(ReadError::Broken(why)) => return rx.answer(PushResult::Malformed, &why),
    };
    if !authenticated(&headers, &body, &rx.secret()) {
        debug!("push refused: missing or invalid signature or token");
        return rx.answer(PushResult::Unauthorized, UNAUTHORIZED);
    }
    if let Some(event) = event(&headers)
        && !is_push_event(&event)
    {
        debug!(event = %crate::echo::Capped(&event), "receiver: not a push event; ignored");
        return rx.answer(PushResult::Ignored, "");
    }
    let push = match parse_push(&body) {
        Ok(Parsed::Push(push)) => push,
        Ok(Parsed::NotABranch) => return rx.answer(PushResult::Ignored, ""),
        Err(why) => return rx.answer(PushResult::Malformed, &why),
    };
    let mut names = Vec::new();
    for target in &rx.targets {
        let url_matches = target.url.as_ref().is_some_and(|u| push.urls.contains(u));
        let branch_matches = push.branch.as_ref().is_none_or(|b| *b == target.branch);
        if url_matches && branch_matches {
            target.pusher.push(received, push.after);
            names.push(target.pusher.name.as_str());
        }
    }
    if names.is_empty() {
        debug!(
            url = %crate::echo::Capped(push.urls.first().map_or("", String::as_str)),
            branch = %crate::echo::Capped(push.branch.as_deref().unwrap_or("")),
            "receiver: push for no configured source; ignored"
        );
        return rx.answer(PushResult::Ignored, "");
    }
    let after = push.after.map(|a| a.to_string()).unwrap_or_default();
    info!(sources = %names.join(","), %after, "push received; fetching");
    rx.answer(
        PushResult::Accepted,
        &format!("fetching {}", crate::echo::list(names.iter())),
    )
}

/// Runs the fetches accepted pushes need, for one source.
struct Pusher {
    name: String,
    mirror: Arc<Mirror>,
    /// Seconds from a push received to its fetch done.
    latency: Histogram,
    queue: Mutex<Queue>,
}

/// Pushes waiting for a fetch.
#[derive(Default)]
struct Queue {
    /// A task is running fetches for this source.
    running: bool,
    /// When each waiting push was received (at most [`MAX_TIMED_PUSHES`]).
    received: Vec<Instant>,
    /// Waiting pushes, timed or not.
    waiting: u64,
    /// Distinct commits the waiting pushes announced.
    afters: Vec<ObjectId>,
    /// A waiting push announced no commit (or too many were announced):
    /// only a fetch can satisfy it.
    must_fetch: bool,
}

impl Pusher {
    fn push(self: &Arc<Self>, received: Instant, after: Option<ObjectId>) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.waiting += 1;
        if q.received.len() < MAX_TIMED_PUSHES {
            q.received.push(received);
        }
        match after {
            Some(a) if q.afters.contains(&a) => {}
            Some(a) if q.afters.len() < MAX_AFTERS => q.afters.push(a),
            _ => q.must_fetch = true,
        }
        if !q.running {
            q.running = true;
            tokio::spawn(Arc::clone(self).run());
        }
    }

    /// Takes the waiting pushes as one batch, until none wait. A batch
    /// whose announced commits are all the mirror's head already is done
    /// without a fetch; otherwise one fetch that starts after every push
    /// of the batch was received serves the whole batch (a running fetch,
    /// which may have listed the remote's refs before the push landed, is
    /// waited for, then the next one is started or joined).
    ///
    /// So a burst costs at most two fetches: the one its first push
    /// starts, and one for the pushes that arrived while that one ran —
    /// none when they announce the commit the first fetch brought (50
    /// deliveries of the same push: one fetch).
    async fn run(self: Arc<Self>) {
        loop {
            let batch = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                if q.waiting == 0 {
                    q.running = false;
                    return;
                }
                let batch = std::mem::take(&mut *q);
                // `take` reset it: this task still runs.
                q.running = true;
                batch
            };
            let head = self.mirror.head().map(|h| h.commit);
            let at_head = !batch.must_fetch && batch.afters.iter().all(|a| Some(*a) == head);
            if !at_head {
                match fetch_started_now(&self.mirror).await {
                    Ok(report) => info!(
                        source = %self.name,
                        head = %report.head,
                        head_changed = report.head_changed,
                        pushes = batch.waiting,
                        "fetched after a push"
                    ),
                    Err(e) => {
                        // Counted by the mirror's own failure metrics; the
                        // pushes stay untimed (nothing was fetched).
                        warn!(source = %self.name, error = %e, "fetch after a push failed");
                        continue;
                    }
                }
            }
            for received in &batch.received {
                self.latency.observe(received.elapsed().as_secs_f64());
            }
        }
    }
}

/// A branch fetch that starts after this call: a running one (which may
/// have listed the remote's refs before what the caller learnt of) is
/// waited for, then the next one is started, or joined when another
/// caller started it meanwhile.
pub(crate) async fn fetch_started_now(
    mirror: &Arc<Mirror>,
) -> Result<crate::mirror::FetchReport, crate::mirror::FetchFailure> {
    if mirror.status().fetching {
        let _ = mirror.refresh().await;
    }
    mirror.refresh().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_normalise() {
        let same = [
            "https://GitHub.com/corp/gitops.git",
            "https://github.com/corp/gitops",
            "https://github.com/corp/gitops/",
            "https://user:pw@github.com/corp/gitops.git",
            "git@github.com:corp/gitops.git",
            "ssh://git@github.com/corp/gitops.git",
            "ssh://git@github.com:2222/corp/gitops",
            "git://github.com/corp/gitops.git",
            "http://github.com:80/corp/gitops.git/",
        ];
        for u in same {
            assert_eq!(
                normalize_url(u).as_deref(),
                Some("github.com/corp/gitops"),
                "{u}"
            );
        }
        assert_ne!(
            normalize_url("https://github.com/corp/other"),
            normalize_url("https://github.com/corp/gitops")
        );
        // Paths keep their case; a local path stays a path.
        assert_ne!(
            normalize_url("https://github.com/Corp/gitops"),
            normalize_url("https://github.com/corp/gitops")
        );
        assert_eq!(
            normalize_url("/srv/git/gitops.git").as_deref(),
            Some("/srv/git/gitops")
        );
        assert_eq!(
            normalize_url("file:///srv/git/gitops").as_deref(),
            Some("/srv/git/gitops")
        );
        assert_eq!(normalize_url("  "), None);
    }

    #[test]
    fn signatures_and_tokens() {
        let s = Secret::new("It's a Secret to Everybody");
        // GitHub's documented example.
        let body = b"Hello, World!";
        let sig = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(s.verifies_hex(body, sig));
        assert!(!s.verifies_hex(b"Hello, World?", sig));
        assert!(!s.verifies_hex(body, &sig[..62]));
        assert!(!s.verifies_hex(body, "zz"));
        assert!(s.equals_token(b"It's a Secret to Everybody"));
        assert!(!s.equals_token(b"It's a Secret to Everybod"));
        assert!(!s.equals_token(b""));
        assert_eq!(format!("{s:?}"), "Secret(26 bytes)");
    }

    #[test]
    fn push_bodies() {
        let github = br#"{"ref":"refs/heads/main","after":"1111111111111111111111111111111111111111",
            "repository":{"clone_url":"https://github.com/corp/gitops.git","ssh_url":"git@github.com:corp/gitops.git","homepage":null,"size":3}}"#;
        let Ok(Parsed::Push(p)) = parse_push(github) else {
            panic!("github push")
        };
        assert_eq!(p.branch.as_deref(), Some("main"));
        assert!(p.urls.contains(&"github.com/corp/gitops".to_owned()));
        assert!(p.after.is_some());
        let gitlab = br#"{"object_kind":"push","ref":"refs/heads/dev","after":"0000000000000000000000000000000000000000",
            "project":{"git_http_url":"https://gitlab.example.com/g/r.git","git_ssh_url":"git@gitlab.example.com:g/r.git","web_url":"https://gitlab.example.com/g/r"}}"#;
        let Ok(Parsed::Push(p)) = parse_push(gitlab) else {
            panic!("gitlab push")
        };
        assert_eq!(p.branch.as_deref(), Some("dev"));
        assert_eq!(p.after, None, "a deleted branch announces no commit");
        let tag = br#"{"ref":"refs/tags/v1","repository":{"clone_url":"https://h/r"}}"#;
        assert_eq!(parse_push(tag), Ok(Parsed::NotABranch));
        let generic = br#"{"url":"https://h/r.git"}"#;
        let Ok(Parsed::Push(p)) = parse_push(generic) else {
            panic!("generic push")
        };
        assert_eq!((p.branch, p.urls), (None, vec!["h/r".to_owned()]));
        for bad in [
            &b"{"[..],
            b"[]",
            b"payload=%7B%7D",
            br#"{"ref":"refs/heads/main"}"#,
            br#"{"repository":{"clone_url":"https://h/r"}}"#,
        ] {
            assert!(parse_push(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn paths_are_checked() {
        let with = |path: &str| ReceiverConfig {
            path: path.to_owned(),
            secret_file: "/receiver/secret".into(),
        };
        assert!(with("/hooks/git").validate().is_ok());
        for bad in [
            "hooks",
            "/",
            "/validate",
            "/metrics/",
            "/hooks/{x}",
            "/hooks//git",
            "/hooks/../validate",
            "/a b",
        ] {
            let e = with(bad).validate().unwrap_err();
            assert_eq!(e.field, "receiver.path", "{bad}");
        }
    }

    #[test]
    fn the_config_file_takes_a_receiver() {
        let base = "tls: { certFile: /t/c, keyFile: /t/k }\nmirrorDir: /m\nsources: [{ name: s, url: \"https://h/r.git\" }]\nrules: [{ name: r, source: s, overlay: o }]\n";
        let parse =
            |receiver: &str| crate::config::Config::parse(&format!("{base}receiver: {receiver}\n"));
        let c = parse("{ secretFile: /receiver/secret }").unwrap();
        let r = c.receiver.unwrap();
        assert_eq!(
            (r.path.as_str(), r.secret_file),
            ("/hooks/git", "/receiver/secret".into())
        );
        assert!(
            crate::config::Config::parse(base)
                .unwrap()
                .receiver
                .is_none()
        );
        for (receiver, field) in [
            ("{ path: /validate, secretFile: /s }", "receiver.path"),
            ("{ path: hooks, secretFile: /s }", "receiver.path"),
            ("{ path: /x, secretFile: \"\" }", "receiver.secretFile"),
            ("{ path: /x }", "receiver"),
            ("{ secretFile: /s, token: x }", "receiver"),
        ] {
            let e = parse(receiver).unwrap_err();
            assert!(e.field.starts_with(field), "{receiver}: {e}");
        }
    }

    #[test]
    fn secret_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        let config = ReceiverConfig {
            path: default_path(),
            secret_file: file.clone(),
        };
        let e = config.read_secret().unwrap_err();
        assert_eq!(e.field, "receiver.secretFile");
        std::fs::write(&file, "\n").unwrap();
        let e = config.read_secret().unwrap_err();
        assert!(e.reason.contains("empty"), "{e}");
        std::fs::write(&file, "s3cret-value\n").unwrap();
        assert_eq!(config.read_secret().unwrap(), Secret::new("s3cret-value"));
        std::fs::write(&file, "x".repeat(70 << 10)).unwrap();
        let e = config.read_secret().unwrap_err();
        assert!(!e.to_string().contains("xxxx"), "{e}");
    }
}
