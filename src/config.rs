//! The `serve --config` file (contract section 6): YAML, camelCase fields,
//! validated at start so that a mistake is refused with the field's name
//! instead of surfacing as a wrong verdict later.

use crate::checksum::CacheLimits;
use crate::policy::{ContentCheck, FailureAction, Mode, Provenance, Staleness};
use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The API server's own limit on a webhook's `timeoutSeconds`.
pub const MAX_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: String,
    pub tls: TlsConfig,
    pub mirror_dir: PathBuf,
    #[serde(default)]
    pub annotations: AnnotationKeys,
    pub sources: Vec<SourceConfig>,
    pub rules: Vec<RuleConfig>,
    #[serde(default)]
    pub break_glass: BreakGlass,
    #[serde(default)]
    pub failure: FailureConfig,
    #[serde(default)]
    pub limits: Limits,
    /// Rendering for rules with `content: verify`.
    #[serde(default)]
    pub render: RenderConfig,
    /// Argo CD, for `provenance: argo` (contract section 9).
    #[serde(default)]
    pub argo: ArgoConfig,
    /// A plain-HTTP listener for `/healthz`, `/readyz` and `/metrics`,
    /// apart from the review listener (an extension of the contract's
    /// configuration). Absent: none; the TLS port answers them too.
    #[serde(default)]
    pub probes: Option<ProbesConfig>,
    /// Default grace window for rules that do not set one.
    #[serde(default, with = "duration")]
    pub grace_period: Duration,
    /// After SIGTERM, how long in-flight reviews may take before the
    /// process exits; keep it below the pod's terminationGracePeriodSeconds.
    #[serde(default = "default_shutdown_grace", with = "duration")]
    pub shutdown_grace_period: Duration,
    /// The push receiver (contract section 10); absent: none.
    #[serde(default)]
    pub receiver: Option<crate::receiver::ReceiverConfig>,
    /// How to reach the Kubernetes API; absent: in-cluster.
    #[serde(default)]
    pub kube: Option<crate::kube_client::KubeConfig>,
    /// Replicas share their heads through Leases (contract section 10).
    #[serde(default)]
    pub heads: Option<crate::heads::HeadsConfig>,
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(20)
}

fn default_listen() -> String {
    "0.0.0.0:8443".to_owned()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    #[serde(default, rename = "clientCAFile")]
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbesConfig {
    /// `address:port` of the plain-HTTP probe listener, e.g. `0.0.0.0:8080`.
    pub listen: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnnotationKeys {
    pub revision: String,
    pub checksum: String,
}

impl Default for AnnotationKeys {
    fn default() -> Self {
        AnnotationKeys {
            revision: "stale-guard.io/revision".to_owned(),
            checksum: "stale-guard.io/checksum".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    /// Any git URL, or a local path.
    pub url: String,
    #[serde(default = "default_branch")]
    pub branch: String,
    #[serde(default = "default_poll", with = "duration")]
    pub poll_interval: Duration,
    #[serde(default = "default_fetch_timeout", with = "duration")]
    pub fetch_timeout: Duration,
    #[serde(default)]
    pub credentials: Option<CredentialsConfig>,
}

fn default_branch() -> String {
    "main".to_owned()
}
fn default_poll() -> Duration {
    Duration::from_secs(30)
}
fn default_fetch_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Paths of mounted Secret files; the secrets themselves are read when
/// needed and never copied into the configuration. One kind per source,
/// each with every file it needs: an incomplete or mixed set is refused
/// when the file is parsed, naming what is missing.
#[derive(Debug, Clone, PartialEq)]
pub enum CredentialsConfig {
    Basic {
        username_file: PathBuf,
        password_file: PathBuf,
    },
    Token {
        token_file: PathBuf,
    },
    Ssh {
        ssh_key_file: PathBuf,
        known_hosts_file: PathBuf,
    },
}

impl CredentialsConfig {
    /// Every file this kind reads.
    pub fn files(&self) -> Vec<&Path> {
        match self {
            CredentialsConfig::Basic {
                username_file,
                password_file,
            } => vec![username_file, password_file],
            CredentialsConfig::Token { token_file } => vec![token_file],
            CredentialsConfig::Ssh {
                ssh_key_file,
                known_hosts_file,
            } => vec![ssh_key_file, known_hosts_file],
        }
    }
}

impl<'de> Deserialize<'de> for CredentialsConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The check runs inside the mapping's visitor, so the error carries
        // the path `sources[N].credentials` (serde's `try_from` would report
        // it at the enclosing source).
        struct Files;
        impl<'de> serde::de::Visitor<'de> for Files {
            type Value = CredentialsConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping of credential files")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let files = CredentialFiles::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                CredentialsConfig::try_from(files).map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_map(Files)
    }
}

/// `credentials` as written; only [`CredentialsConfig`] leaves parsing.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CredentialFiles {
    username_file: Option<PathBuf>,
    password_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
    ssh_key_file: Option<PathBuf>,
    known_hosts_file: Option<PathBuf>,
}

impl TryFrom<CredentialFiles> for CredentialsConfig {
    type Error = String;

    fn try_from(c: CredentialFiles) -> Result<Self, String> {
        const KINDS: &str =
            "give one of usernameFile+passwordFile, tokenFile, or sshKeyFile+knownHostsFile";
        let basic = c.username_file.is_some() || c.password_file.is_some();
        let ssh = c.ssh_key_file.is_some() || c.known_hosts_file.is_some();
        match (basic, c.token_file, ssh) {
            (true, None, false) => match (c.username_file, c.password_file) {
                (Some(username_file), Some(password_file)) => Ok(CredentialsConfig::Basic {
                    username_file,
                    password_file,
                }),
                (None, _) => Err("passwordFile needs usernameFile".into()),
                (_, None) => Err("usernameFile needs passwordFile".into()),
            },
            (false, Some(token_file), false) => Ok(CredentialsConfig::Token { token_file }),
            (false, None, true) => match (c.ssh_key_file, c.known_hosts_file) {
                (Some(ssh_key_file), Some(known_hosts_file)) => Ok(CredentialsConfig::Ssh {
                    ssh_key_file,
                    known_hosts_file,
                }),
                // Without it ssh could not check the server's host key.
                (Some(_), None) => Err("sshKeyFile needs knownHostsFile".into()),
                (None, _) => Err("knownHostsFile needs sshKeyFile".into()),
            },
            (false, None, false) => Err(format!("no credentials given: {KINDS}")),
            _ => Err(format!("more than one kind of credentials: {KINDS}")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    #[serde(default, rename = "match")]
    pub match_: MatchConfig,
    /// Required, except with `provenance: flux|argo` (then the
    /// controller's source, restricted to this one when given).
    #[serde(default)]
    pub source: String,
    /// Required, except with `provenance: flux|argo` (then the
    /// controller's path, replaced by this one when given).
    #[serde(default)]
    pub overlay: String,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub staleness: Staleness,
    #[serde(default, with = "opt_duration")]
    pub grace_period: Option<Duration>,
    /// Where the claimed revision is read (contract sections 8 and 9).
    #[serde(default)]
    pub provenance: Provenance,
    /// Whether the object is compared with head's rendering (section 8).
    #[serde(default)]
    pub content: ContentCheck,
}

/// `argo:`: where Argo CD keeps its Applications.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArgoConfig {
    /// The Applications' namespace when a tracking id names none.
    #[serde(default = "default_argo_namespace")]
    pub namespace: String,
}

fn default_argo_namespace() -> String {
    "argocd".to_owned()
}

impl Default for ArgoConfig {
    fn default() -> Self {
        ArgoConfig {
            namespace: default_argo_namespace(),
        }
    }
}

/// How overlays are rendered for `content: verify` (contract section 8).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RenderConfig {
    /// argv; the overlay directory is appended after `args`.
    #[serde(default = "default_render_command")]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default = "default_render_timeout", with = "duration")]
    pub timeout: Duration,
    /// Renders at once, all sources together.
    #[serde(default = "default_render_concurrency")]
    pub concurrency: usize,
    /// Earlier distinct renderings kept per rule to explain a mismatch.
    #[serde(default = "default_render_history")]
    pub history: usize,
    /// Commits walked back from head (first parents) to find the earlier
    /// renderings at start; an extension of the contract.
    #[serde(default = "default_render_history_depth")]
    pub history_depth: usize,
    /// Largest rendering read from the command (bytes, or `Ki`/`Mi`/`Gi`);
    /// beyond it the run is stopped and fails. Parsed, a rendering takes
    /// about 20 times its YAML on the heap.
    #[serde(default = "default_render_max_output", with = "byte_size")]
    pub max_output_bytes: usize,
    /// Parsed renderings kept in memory, weighed by their estimated heap.
    #[serde(default = "default_render_cache", with = "byte_size")]
    pub cache_bytes: usize,
}

fn default_render_command() -> Vec<String> {
    vec!["kustomize".to_owned(), "build".to_owned()]
}
fn default_render_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_render_concurrency() -> usize {
    2
}
fn default_render_history() -> usize {
    5
}
fn default_render_history_depth() -> usize {
    1000
}
/// 4 MiB of YAML (thousands of objects) parse into about 80 MiB.
fn default_render_max_output() -> usize {
    4 << 20
}
fn default_render_cache() -> usize {
    64 << 20
}

impl RenderConfig {
    /// The renderer's settings.
    pub fn settings(&self) -> crate::render::RenderSettings {
        crate::render::RenderSettings {
            command: self.command.clone(),
            args: self.args.clone(),
            timeout: self.timeout,
            concurrency: self.concurrency,
            max_output_bytes: self.max_output_bytes as u64,
            cache_bytes: self.cache_bytes as u64,
            work_dir: None,
        }
    }
}

impl Config {
    /// How long a review waits for the controller watch to deliver the
    /// revision a fresh object would carry (`kube.controllerWait`).
    pub fn controller_wait(&self) -> Duration {
        self.kube
            .as_ref()
            .map_or(crate::kube_client::DEFAULT_CONTROLLER_WAIT, |k| {
                k.controller_wait
            })
    }

    /// Where renderings write their private trees: beside the mirrors (a
    /// volume sized for repositories), not in a small `/tmp`.
    pub fn render_dir(&self) -> PathBuf {
        self.mirror_dir.join(".render")
    }
}

impl Default for RenderConfig {
    fn default() -> Self {
        RenderConfig {
            command: default_render_command(),
            args: Vec::new(),
            timeout: default_render_timeout(),
            concurrency: default_render_concurrency(),
            history: default_render_history(),
            history_depth: default_render_history_depth(),
            max_output_bytes: default_render_max_output(),
            cache_bytes: default_render_cache(),
        }
    }
}

/// Every field optional; all given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchConfig {
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub kinds: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BreakGlass {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailureConfig {
    #[serde(default)]
    pub mirror_unavailable: FailureAction,
    #[serde(default = "default_staleness", with = "duration")]
    pub max_mirror_staleness: Duration,
    #[serde(default = "default_decision_timeout", with = "duration")]
    pub decision_timeout: Duration,
    #[serde(default)]
    pub decision_timeout_action: FailureAction,
}

fn default_staleness() -> Duration {
    Duration::from_secs(600)
}
fn default_decision_timeout() -> Duration {
    Duration::from_secs(4)
}

impl Default for FailureConfig {
    fn default() -> Self {
        FailureConfig {
            mirror_unavailable: FailureAction::Deny,
            max_mirror_staleness: default_staleness(),
            decision_timeout: default_decision_timeout(),
            decision_timeout_action: FailureAction::Deny,
        }
    }
}

/// Overload protection (an extension of the contract's configuration).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Cold checksum computations run at once; 0 means one per core.
    #[serde(default)]
    pub checksum_concurrency: usize,
    /// Distinct cold checksums that may wait for a computation slot; a
    /// review that would queue beyond it is answered at once with
    /// `DecisionTimeout` (and the `decisionTimeoutAction`).
    #[serde(default = "default_checksum_queue")]
    pub checksum_queue: usize,
    /// Bounds of each source's checksum caches: what the webhook's memory
    /// grows to as new commits arrive (`stale_guard_cache_weight` shows
    /// how full they are). Each bound counts the unit its cache is weighed in (about 225
    /// bytes of heap each, a parsed kustomization about 1.1 KB); the
    /// defaults fill to about 40 MB per source at most.
    #[serde(default)]
    pub caches: CacheLimits,
    /// How often freed heap memory is handed back to the OS (glibc's
    /// `malloc_trim`; see `memory`); `0s` turns it off.
    #[serde(default = "default_memory_trim_interval", with = "duration")]
    pub memory_trim_interval: Duration,
    /// Request body bytes being received at once, all connections together
    /// (bytes, or `Ki`/`Mi`/`Gi`): a body beyond it is refused with 503.
    #[serde(default = "default_request_body_budget", with = "byte_size")]
    pub request_body_budget: usize,
    /// The part of `requestBodyBudget` one client address may hold; unset,
    /// 16 MiB or the whole budget if smaller (see
    /// [`Limits::body_budget_per_peer`]).
    #[serde(default, with = "opt_byte_size")]
    pub request_body_budget_per_peer: Option<usize>,
    /// Connections the review listener serves at once; more wait in the
    /// kernel's backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one client address may have open on the review
    /// listener; beyond it, its new connections are closed at once.
    #[serde(default = "default_max_connections_per_peer")]
    pub max_connections_per_peer: usize,
    /// An HTTP/2 connection with no stream open for this long is sent a
    /// GOAWAY and closed; `0s` keeps idle ones open.
    #[serde(default = "default_http2_idle_timeout", with = "duration")]
    pub http2_idle_timeout: Duration,
    /// Largest file (or symlink target) an overlay's closure may hold, in
    /// bytes: a bigger one is an `OverlayError` naming it and its size,
    /// refused from the object's header before it is read.
    #[serde(default = "default_max_blob_bytes")]
    pub max_blob_bytes: u64,
    /// Largest kustomization or plugin config parsed, in bytes (at most
    /// 16 MiB): parsing costs tens of times the file's size in memory.
    #[serde(default = "default_max_kustomization_bytes")]
    pub max_kustomization_bytes: u64,
    /// Fetches that reviews of unknown revisions may start, per source
    /// (polls are not counted): `{ perMinute: 30, burst: 5 }`.
    #[serde(default)]
    pub on_demand_fetches: crate::mirror::OnDemandFetches,
}

fn default_max_kustomization_bytes() -> u64 {
    crate::checksum::DEFAULT_MAX_KUSTOMIZATION_BYTES
}

fn default_max_blob_bytes() -> u64 {
    crate::checksum::DEFAULT_MAX_BLOB_BYTES
}

/// Largest `limits.maxBlobBytes` accepted: a blob that passes is read into
/// memory whole.
pub const MAX_MAX_BLOB_BYTES: u64 = 1 << 30;

fn default_checksum_queue() -> usize {
    64
}

fn default_memory_trim_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_request_body_budget() -> usize {
    32 << 20
}

fn default_max_connections() -> usize {
    1024
}

fn default_max_connections_per_peer() -> usize {
    128
}

fn default_http2_idle_timeout() -> Duration {
    Duration::from_secs(120)
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            checksum_concurrency: 0,
            checksum_queue: default_checksum_queue(),
            caches: CacheLimits::default(),
            memory_trim_interval: default_memory_trim_interval(),
            request_body_budget: default_request_body_budget(),
            request_body_budget_per_peer: None,
            max_connections: default_max_connections(),
            max_connections_per_peer: default_max_connections_per_peer(),
            http2_idle_timeout: default_http2_idle_timeout(),
            max_blob_bytes: default_max_blob_bytes(),
            max_kustomization_bytes: default_max_kustomization_bytes(),
            on_demand_fetches: crate::mirror::OnDemandFetches::default(),
        }
    }
}

impl Limits {
    /// `requestBodyBudgetPerPeer`, or when unset 16 MiB, at most the budget.
    pub fn body_budget_per_peer(&self) -> usize {
        self.request_body_budget_per_peer
            .unwrap_or_else(|| self.request_body_budget.min(16 << 20))
    }

    /// The checksum's size limits.
    pub fn size_limits(&self) -> crate::checksum::SizeLimits {
        crate::checksum::SizeLimits {
            max_blob_bytes: self.max_blob_bytes,
            max_kustomization_bytes: self.max_kustomization_bytes,
        }
    }

    /// `checksumConcurrency` with 0 resolved to the number of cores.
    pub fn checksum_threads(&self) -> usize {
        match self.checksum_concurrency {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }
}

/// A configuration that cannot be used: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(path.display().to_string(), format!("cannot read: {e}")))?;
        Config::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = serde_yaml_ng::from_str(text).map_err(|e| {
            // serde_yaml_ng puts the field path first: "rules[0].mode: unknown variant ..."
            let msg = e.to_string();
            match msg.split_once(": ") {
                Some((field, reason)) if !field.contains(' ') => invalid(field, reason),
                _ => invalid("(document)", msg),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|e| {
            invalid(
                "listen",
                format!("{:?} is not an address:port: {e}", self.listen),
            )
        })
    }

    /// The probe listener's address, when `probes` is set.
    pub fn probes_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(probes) = &self.probes else {
            return Ok(None);
        };
        probes.listen.parse().map(Some).map_err(|e| {
            invalid(
                "probes.listen",
                format!("{:?} is not an address:port: {e}", probes.listen),
            )
        })
    }

    /// Checks what serde cannot: each section in turn, the first problem
    /// named by its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        self.validate_annotations()?;
        let sources = self.validate_sources()?;
        self.validate_limits()?;
        self.validate_probes()?;
        self.validate_rules(&sources)?;
        self.validate_render()?;
        if let Some(receiver) = &self.receiver {
            receiver.validate()?;
        }
        if let Some(heads) = &self.heads {
            validate_name(&heads.namespace).map_err(|r| invalid("heads.namespace", r))?;
        }
        self.validate_failure()
    }

    fn validate_render(&self) -> Result<(), ConfigError> {
        let r = &self.render;
        match r.command.first() {
            None => return Err(invalid("render.command", "must name a program")),
            Some(p) if p.trim().is_empty() => {
                return Err(invalid("render.command", "must name a program"));
            }
            Some(_) => {}
        }
        if r.timeout.is_zero() {
            return Err(invalid("render.timeout", "must be positive"));
        }
        if r.concurrency == 0 {
            return Err(invalid("render.concurrency", "must be at least 1"));
        }
        if r.history > 100 {
            return Err(invalid("render.history", "at most 100"));
        }
        if r.max_output_bytes < 1024 {
            return Err(invalid("render.maxOutputBytes", "at least 1Ki"));
        }
        Ok(())
    }

    fn validate_annotations(&self) -> Result<(), ConfigError> {
        for (field, key) in [
            ("annotations.revision", &self.annotations.revision),
            ("annotations.checksum", &self.annotations.checksum),
        ] {
            validate_annotation_key(key).map_err(|r| invalid(field, r))?;
        }
        if self.annotations.revision == self.annotations.checksum {
            return Err(invalid(
                "annotations.checksum",
                "must differ from annotations.revision",
            ));
        }
        Ok(())
    }

    /// Returns the source names, which rules must use.
    fn validate_sources(&self) -> Result<HashSet<&str>, ConfigError> {
        if self.sources.is_empty() {
            return Err(invalid("sources", "at least one source is required"));
        }
        let mut names = HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let f = |name: &str| format!("sources[{i}].{name}");
            validate_name(&s.name).map_err(|r| invalid(f("name"), r))?;
            if !names.insert(s.name.as_str()) {
                return Err(invalid(
                    f("name"),
                    format!("duplicate source name {:?}", s.name),
                ));
            }
            if s.url.trim().is_empty() {
                return Err(invalid(f("url"), "must not be empty"));
            }
            if s.branch.is_empty() || s.branch.starts_with('-') || s.branch.contains("..") {
                return Err(invalid(
                    f("branch"),
                    format!("{:?} is not a branch name", s.branch),
                ));
            }
            if s.poll_interval < Duration::from_secs(1) {
                return Err(invalid(f("pollInterval"), "must be at least 1s"));
            }
            if s.fetch_timeout.is_zero() {
                return Err(invalid(f("fetchTimeout"), "must be positive"));
            }
        }
        Ok(names)
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        if self.limits.checksum_concurrency > 1024 {
            return Err(invalid(
                "limits.checksumConcurrency",
                "must be at most 1024 (0 means one per core)",
            ));
        }
        if !(1..=MAX_MAX_BLOB_BYTES).contains(&self.limits.max_blob_bytes) {
            return Err(invalid(
                "limits.maxBlobBytes",
                format!("must be between 1 and {MAX_MAX_BLOB_BYTES} (1 GiB)"),
            ));
        }
        let yaml_max = crate::kustomize::MAX_YAML_BYTES as u64;
        if !(1..=yaml_max).contains(&self.limits.max_kustomization_bytes) {
            return Err(invalid(
                "limits.maxKustomizationBytes",
                format!("must be between 1 and {yaml_max} (16 MiB)"),
            ));
        }
        let c = &self.limits.caches;
        for (field, value) in [
            ("limits.caches.blobDigests", c.blob_digests),
            ("limits.caches.treeEntries", c.tree_entries),
            ("limits.caches.kustomizations", c.kustomizations),
            ("limits.caches.resultEntries", c.result_entries),
        ] {
            // Without room for one overlay's entries every review would be
            // a cold one.
            if value < 100 {
                return Err(invalid(field, "must be at least 100"));
            }
        }
        let max_body = crate::server::MAX_BODY_BYTES;
        let limits = &self.limits;
        if limits.request_body_budget < max_body {
            return Err(invalid(
                "limits.requestBodyBudget",
                format!("must be at least {max_body} bytes (8Mi), the largest review accepted"),
            ));
        }
        let per_peer = limits.body_budget_per_peer();
        if per_peer < max_body || per_peer > limits.request_body_budget {
            return Err(invalid(
                "limits.requestBodyBudgetPerPeer",
                format!(
                    "must be at least {max_body} bytes (8Mi) and at most limits.requestBodyBudget"
                ),
            ));
        }
        if limits.max_connections == 0 {
            return Err(invalid("limits.maxConnections", "must be at least 1"));
        }
        if limits.max_connections_per_peer == 0
            || limits.max_connections_per_peer > limits.max_connections
        {
            return Err(invalid(
                "limits.maxConnectionsPerPeer",
                "must be at least 1 and at most limits.maxConnections",
            ));
        }
        let od = &self.limits.on_demand_fetches;
        if od.burst == 0 || od.burst > 1000 {
            return Err(invalid(
                "limits.onDemandFetches.burst",
                "must be between 1 and 1000",
            ));
        }
        if od.per_minute > 6000 {
            return Err(invalid(
                "limits.onDemandFetches.perMinute",
                "must be at most 6000 (0 turns on-demand fetches off)",
            ));
        }
        Ok(())
    }

    fn validate_probes(&self) -> Result<(), ConfigError> {
        if let Some(addr) = self.probes_addr()? {
            // Port 0 (any free port, in tests) cannot collide.
            if addr == self.listen_addr()? && addr.port() != 0 {
                return Err(invalid(
                    "probes.listen",
                    "must differ from listen (the probe port is plain HTTP)",
                ));
            }
        }
        Ok(())
    }

    fn validate_rules(&self, names: &HashSet<&str>) -> Result<(), ConfigError> {
        if self.rules.is_empty() {
            return Err(invalid("rules", "at least one rule is required"));
        }
        let mut rule_names = HashSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let f = |name: &str| format!("rules[{i}].{name}");
            validate_name(&r.name).map_err(|e| invalid(f("name"), e))?;
            if !rule_names.insert(r.name.as_str()) {
                return Err(invalid(
                    f("name"),
                    format!("duplicate rule name {:?}", r.name),
                ));
            }
            let from_controller = matches!(r.provenance, Provenance::Flux | Provenance::Argo);
            if r.source.is_empty() && !from_controller {
                return Err(invalid(
                    f("source"),
                    "required (only provenance: flux or argo take it from the controller's object)",
                ));
            }
            if !r.source.is_empty() && !names.contains(r.source.as_str()) {
                return Err(invalid(
                    f("source"),
                    format!("no source is named {:?}", r.source),
                ));
            }
            if r.overlay.is_empty() && !from_controller {
                return Err(invalid(
                    f("overlay"),
                    "required (only provenance: flux or argo take it from the controller's object)",
                ));
            }
            if (r.provenance, r.content) == (Provenance::None, ContentCheck::Off) {
                return Err(invalid(
                    f("content"),
                    "a rule with provenance: none and content: off checks nothing; set content: verify or another provenance",
                ));
            }
            // The same check the server compiles the rule with.
            if !r.overlay.is_empty() && crate::checksum::overlay_key(&r.overlay).is_err() {
                return Err(invalid(
                    f("overlay"),
                    "must be a path relative to the repository root that stays inside it",
                ));
            }
        }
        Ok(())
    }

    fn validate_failure(&self) -> Result<(), ConfigError> {
        let fc = &self.failure;
        if fc.decision_timeout.is_zero() || fc.decision_timeout >= MAX_WEBHOOK_TIMEOUT {
            return Err(invalid(
                "failure.decisionTimeout",
                "must be positive and below the webhook's timeoutSeconds (at most 30s; keep it under the ValidatingWebhookConfiguration's value)",
            ));
        }
        if self.shutdown_grace_period.is_zero() {
            return Err(invalid("shutdownGracePeriod", "must be positive"));
        }
        if fc.max_mirror_staleness.is_zero() {
            return Err(invalid("failure.maxMirrorStaleness", "must be positive"));
        }
        Ok(())
    }

    /// The mirror's view of `source`, with the limits that apply to every
    /// source (`limits.onDemandFetches`).
    pub fn source_spec(&self, source: &SourceConfig) -> crate::mirror::SourceSpec {
        let mut spec = source.spec();
        spec.on_demand = self.limits.on_demand_fetches;
        spec
    }

    /// The grace period a rule gets.
    pub fn grace_period(&self, rule: &RuleConfig) -> Duration {
        rule.grace_period.unwrap_or(self.grace_period)
    }
}

impl SourceConfig {
    /// The mirror's view of this source.
    pub fn spec(&self) -> crate::mirror::SourceSpec {
        use crate::mirror::Credentials;
        let credentials = self.credentials.clone().map(|c| match c {
            CredentialsConfig::Basic {
                username_file,
                password_file,
            } => Credentials::Basic {
                username_file,
                password_file,
            },
            CredentialsConfig::Token { token_file } => Credentials::Token {
                token_file,
                username: None,
            },
            CredentialsConfig::Ssh {
                ssh_key_file,
                known_hosts_file,
            } => Credentials::Ssh {
                private_key_file: ssh_key_file,
                known_hosts_file,
            },
        });
        let mut spec = crate::mirror::SourceSpec::new(&self.name, &self.url, &self.branch);
        spec.poll_interval = self.poll_interval;
        spec.fetch_timeout = self.fetch_timeout;
        spec.credentials = credentials;
        spec
    }
}

/// Parses a duration as the config writes it: `30s`, `10m`, `1h30m`, `500ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    duration::parse(text)
}

fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be 1-63 lower-case letters, digits or '-' (it names a directory and a metric label)"
        ))
    }
}

/// A Kubernetes annotation key: `[prefix/]name`, prefix a DNS subdomain, name
/// at most 63 characters of `[A-Za-z0-9._-]` starting and ending alphanumeric.
pub fn validate_annotation_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
        && name.bytes().next().is_some_and(alnum)
        && name.bytes().last().is_some_and(alnum);
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    });
    if name_ok && prefix_ok {
        Ok(())
    } else {
        Err(format!(
            "{key:?} is not a valid annotation key ([dns-prefix/]name)"
        ))
    }
}

pub(crate) mod duration {
    use serde::Deserializer;
    use std::time::Duration;

    /// Parses inside the visitor, so the YAML deserializer attaches the
    /// field's path to the error.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(Visitor)
    }

    pub struct Visitor;

    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a duration like 30s, 10m or 1h30m")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).map_err(E::custom)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            parse(&v.to_string()).map_err(E::custom)
        }
    }

    /// `30s`, `10m`, `1h30m`, `500ms`, `0`.
    pub fn parse(text: &str) -> Result<Duration, String> {
        if text.trim() == "0" {
            return Ok(Duration::ZERO);
        }
        humantime::parse_duration(text.trim())
            .map_err(|e| format!("{text:?} is not a duration like 30s, 10m or 1h30m: {e}"))
    }
}

/// Byte sizes: an integer, or one with a binary suffix (`512Ki`, `32Mi`,
/// `1Gi`), as Kubernetes writes quantities.
mod byte_size {
    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        d.deserialize_any(Visitor)
    }

    struct Visitor;

    impl serde::de::Visitor<'_> for Visitor {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a size in bytes like 33554432 or 32Mi")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<usize, E> {
            parse(v).map_err(E::custom)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::custom(format!("{v} bytes is too large")))
        }
    }

    pub fn parse(text: &str) -> Result<usize, String> {
        let text = text.trim();
        let (digits, shift) = [("Ki", 10), ("Mi", 20), ("Gi", 30)]
            .into_iter()
            .find_map(|(suffix, shift)| Some((text.strip_suffix(suffix)?, shift)))
            .unwrap_or((text, 0));
        digits
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_mul(1usize.checked_shl(shift)?))
            .ok_or_else(|| format!("{text:?} is not a size like 33554432, 512Ki or 32Mi"))
    }
}

mod opt_byte_size {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        struct Wrapped(usize);
        impl<'de> Deserialize<'de> for Wrapped {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                super::byte_size::deserialize(d).map(Wrapped)
            }
        }
        Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
    }
}

mod opt_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        struct Wrapped(Duration);
        impl<'de> Deserialize<'de> for Wrapped {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(super::duration::Visitor).map(Wrapped)
            }
        }
        Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
listen: "0.0.0.0:8443"
tls: { certFile: /tls/tls.crt, keyFile: /tls/tls.key, clientCAFile: /tls/ca.crt }
mirrorDir: /var/lib/stale-guard
annotations: { revision: stale-guard.io/revision, checksum: fluxcd.io/checksum }
sources:
  - name: corp-gitops
    url: https://git.example.com/corp-gitops.git
    branch: main
    pollInterval: 30s
rules:
  - name: prod-east
    match:
      namespaces: [prod-apps]
      users: ["system:serviceaccount:flux-system:kustomize-controller"]
      kinds: [Ingress]
    source: corp-gitops
    overlay: overlays/prod/east
    mode: enforce
    staleness: strict
breakGlass: { users: [], groups: [] }
failure: { mirrorUnavailable: deny, maxMirrorStaleness: 10m, decisionTimeout: 4s }
"#;

    #[test]
    fn the_contract_example_parses() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.sources[0].poll_interval, Duration::from_secs(30));
        assert_eq!(c.failure.max_mirror_staleness, Duration::from_secs(600));
        assert_eq!(c.failure.decision_timeout, Duration::from_secs(4));
        assert_eq!(c.annotations.checksum, "fluxcd.io/checksum");
        assert_eq!(c.rules[0].match_.kinds, ["Ingress"]);
        assert_eq!(
            c.tls.client_ca_file.as_deref(),
            Some(Path::new("/tls/ca.crt"))
        );
        assert_eq!(c.grace_period(&c.rules[0]), Duration::ZERO);
        assert_eq!(c.limits, Limits::default());
        assert!(c.limits.checksum_threads() >= 1);
    }

    #[test]
    fn credentials_are_one_complete_kind() {
        let with = |creds: &str| {
            let text = EXAMPLE.replace(
                "    pollInterval: 30s\n",
                &format!("    pollInterval: 30s\n    credentials: {creds}\n"),
            );
            Config::parse(&text)
        };
        let spec = |creds: &str| with(creds).unwrap().sources[0].spec().credentials;
        assert!(matches!(
            spec("{ usernameFile: /g/u, passwordFile: /g/p }"),
            Some(crate::mirror::Credentials::Basic { .. })
        ));
        assert!(matches!(
            spec("{ tokenFile: /g/t }"),
            Some(crate::mirror::Credentials::Token { username: None, .. })
        ));
        assert!(matches!(
            spec("{ sshKeyFile: /g/k, knownHostsFile: /g/h }"),
            Some(crate::mirror::Credentials::Ssh { .. })
        ));
        // Each of these used to pass validation and run with no credentials
        // (or the wrong ones); now parsing names the field and what is missing.
        for (creds, says) in [
            ("{ sshKeyFile: /g/k }", "sshKeyFile needs knownHostsFile"),
            (
                "{ knownHostsFile: /g/h }",
                "knownHostsFile needs sshKeyFile",
            ),
            ("{}", "no credentials given"),
            ("{ usernameFile: /g/u }", "usernameFile needs passwordFile"),
            ("{ passwordFile: /g/p }", "passwordFile needs usernameFile"),
            (
                "{ tokenFile: /g/t, sshKeyFile: /g/k }",
                "more than one kind",
            ),
            (
                "{ tokenFile: /g/t, passwordFile: /g/p }",
                "more than one kind",
            ),
            (
                "{ tokenFile: /g/t, password: x }",
                "unknown field `password`",
            ),
        ] {
            let e = with(creds).unwrap_err().to_string();
            assert!(e.contains("sources[0].credentials"), "{creds}: {e}");
            assert!(e.contains(says), "{creds}: {e}");
        }
    }

    #[test]
    fn limits_parse_and_are_checked() {
        let with = |limits: &str| {
            let text = format!("{EXAMPLE}limits: {limits}\n");
            Config::parse(&text)
        };
        let c = with("{ checksumConcurrency: 3, checksumQueue: 0 }").unwrap();
        assert_eq!(
            (c.limits.checksum_threads(), c.limits.checksum_queue),
            (3, 0)
        );
        let e = with("{ checksumConcurrency: 5000 }").unwrap_err();
        assert!(e.to_string().contains("limits.checksumConcurrency"), "{e}");
        let e = with("{ checksumThreads: 2 }").unwrap_err();
        assert!(e.to_string().contains("checksumThreads"), "{e}");
        let c = with("{ caches: { resultEntries: 5000, treeEntries: 4000 } }").unwrap();
        let limits = c.limits.caches;
        assert_eq!((limits.result_entries, limits.tree_entries), (5000, 4000));
        let defaults = CacheLimits::default();
        assert_eq!(limits.blob_digests, defaults.blob_digests);
        assert_eq!(limits.kustomizations, defaults.kustomizations);
        let e = with("{ caches: { resultEntries: 0 } }").unwrap_err();
        assert!(e.to_string().contains("limits.caches.resultEntries"), "{e}");
        let e = with("{ caches: { results: 10 } }").unwrap_err();
        assert!(e.to_string().contains("results"), "{e}");
        assert_eq!(
            Limits::default().memory_trim_interval,
            Duration::from_secs(30)
        );
        let c = with("{ memoryTrimInterval: 2m }").unwrap();
        assert_eq!(c.limits.memory_trim_interval, Duration::from_secs(120));
        let c = with("{ memoryTrimInterval: 0s }").unwrap();
        assert_eq!(c.limits.memory_trim_interval, Duration::ZERO);
        let e = with("{ memoryTrimInterval: often }").unwrap_err();
        assert!(e.to_string().contains("memoryTrimInterval"), "{e}");
        let od = Limits::default().on_demand_fetches;
        assert_eq!((od.per_minute, od.burst), (30, 5));
        let c = with("{ onDemandFetches: { perMinute: 6 } }").unwrap();
        let od = c.limits.on_demand_fetches;
        assert_eq!((od.per_minute, od.burst), (6, 5));
        let c = with("{ onDemandFetches: { perMinute: 0, burst: 1 } }").unwrap();
        assert_eq!(c.limits.on_demand_fetches.per_minute, 0);
        for (bad, field) in [
            ("{ onDemandFetches: { burst: 0 } }", "burst"),
            ("{ onDemandFetches: { perMinute: 100000 } }", "perMinute"),
            ("{ onDemandFetches: { rate: 3 } }", "rate"),
        ] {
            let e = with(bad).unwrap_err();
            assert!(e.to_string().contains(field), "{bad}: {e}");
        }
        assert_eq!(Limits::default().max_blob_bytes, 16 << 20);
        let c = with("{ maxBlobBytes: 1048576 }").unwrap();
        assert_eq!(c.limits.max_blob_bytes, 1 << 20);
        for bad in ["0", "1073741825", "-1", "16Mi"] {
            let e = with(&format!("{{ maxBlobBytes: {bad} }}")).unwrap_err();
            assert!(e.to_string().contains("maxBlobBytes"), "{bad}: {e}");
        }
        assert_eq!(Limits::default().max_kustomization_bytes, 512 << 10);
        let c = with("{ maxKustomizationBytes: 2097152 }").unwrap();
        assert_eq!(c.limits.max_kustomization_bytes, 2 << 20);
        for bad in ["0", "16777217"] {
            let e = with(&format!("{{ maxKustomizationBytes: {bad} }}")).unwrap_err();
            assert!(
                e.to_string().contains("limits.maxKustomizationBytes"),
                "{bad}: {e}"
            );
        }

        let defaults = Limits::default();
        assert_eq!(defaults.request_body_budget, 32 << 20);
        assert_eq!(defaults.body_budget_per_peer(), 16 << 20);
        // Unset, the share is never more than the budget.
        let c = with("{ requestBodyBudget: 12Mi }").unwrap();
        assert_eq!(c.limits.body_budget_per_peer(), 12 << 20);
        let c = with("{ requestBodyBudget: 64Mi, requestBodyBudgetPerPeer: 10485760 }").unwrap();
        assert_eq!(c.limits.request_body_budget, 64 << 20);
        assert_eq!(c.limits.body_budget_per_peer(), 10 << 20);
        assert_eq!(defaults.max_connections, 1024);
        assert_eq!(defaults.max_connections_per_peer, 128);
        assert_eq!(defaults.http2_idle_timeout, Duration::from_secs(120));
        let c = with("{ maxConnections: 64, maxConnectionsPerPeer: 8, http2IdleTimeout: 30s }")
            .unwrap();
        let l = &c.limits;
        assert_eq!(l.max_connections, 64);
        assert_eq!(l.max_connections_per_peer, 8);
        assert_eq!(l.http2_idle_timeout, Duration::from_secs(30));
        for (limits, field) in [
            ("{ maxConnections: 0 }", "limits.maxConnections"),
            (
                "{ maxConnectionsPerPeer: 0 }",
                "limits.maxConnectionsPerPeer",
            ),
            (
                "{ maxConnectionsPerPeer: 2000 }",
                "limits.maxConnectionsPerPeer",
            ),
            ("{ http2IdleTimeout: never }", "http2IdleTimeout"),
            ("{ requestBodyBudget: 1Mi }", "limits.requestBodyBudget"),
            ("{ requestBodyBudget: lots }", "requestBodyBudget"),
            ("{ requestBodyBudget: -5 }", "requestBodyBudget"),
            (
                "{ requestBodyBudgetPerPeer: 4Mi }",
                "limits.requestBodyBudgetPerPeer",
            ),
            (
                "{ requestBodyBudgetPerPeer: 33Mi }",
                "limits.requestBodyBudgetPerPeer",
            ),
        ] {
            let e = with(limits).unwrap_err();
            assert!(e.field.contains(field), "{limits}: {e}");
        }
    }

    #[test]
    fn probes_listener() {
        assert_eq!(Config::parse(EXAMPLE).unwrap().probes_addr(), Ok(None));
        let with = |probes: &str| Config::parse(&format!("{EXAMPLE}probes: {probes}\n"));
        let c = with("{ listen: \"0.0.0.0:8080\" }").unwrap();
        assert_eq!(
            c.probes_addr().unwrap().map(|a| a.port()),
            Some(8080),
            "{c:?}"
        );
        for (probes, field) in [
            ("{ listen: nowhere }", "probes.listen"),
            ("{ listen: \"0.0.0.0:8443\" }", "probes.listen"),
            ("{ port: 8080 }", "probes"),
        ] {
            let e = with(probes).unwrap_err();
            assert!(e.field.starts_with(field), "{probes}: {e}");
        }
    }

    fn error_for(from: &str, to: &str) -> ConfigError {
        let text = EXAMPLE.replace(from, to);
        assert_ne!(text, EXAMPLE, "replacement {from:?} did not apply");
        Config::parse(&text).unwrap_err()
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("mode: enforce", "mode: block", "rules[0].mode"),
            (
                "pollInterval: 30s",
                "pollInterval: soon",
                "sources[0].pollInterval",
            ),
            ("source: corp-gitops", "source: nope", "rules[0].source"),
            (
                "overlay: overlays/prod/east",
                "overlay: ../elsewhere",
                "rules[0].overlay",
            ),
            (
                "decisionTimeout: 4s",
                "decisionTimeout: 45s",
                "failure.decisionTimeout",
            ),
            (
                "checksum: fluxcd.io/checksum",
                "checksum: stale-guard.io/revision",
                "annotations.checksum",
            ),
            (
                "checksum: fluxcd.io/checksum",
                "checksum: \"Bad Key/x y\"",
                "annotations.checksum",
            ),
            ("listen: \"0.0.0.0:8443\"", "listen: \"nowhere\"", "listen"),
            (
                "staleness: strict",
                "staleness: strict\n    colour: blue",
                "rules[0]",
            ),
            (
                "  - name: prod-east",
                "  - name: Prod_East",
                "rules[0].name",
            ),
        ];
        for (from, to, field) in cases {
            let e = error_for(from, to);
            assert!(e.field.starts_with(field), "{from} -> {to}: {e}");
        }
    }

    #[test]
    fn durations() {
        for (text, secs) in [("30s", 30), ("10m", 600), ("1h30m", 5400), ("0", 0)] {
            assert_eq!(
                duration::parse(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        assert_eq!(duration::parse("500ms"), Ok(Duration::from_millis(500)));
        assert!(duration::parse("ten").is_err());
    }

    #[test]
    fn byte_sizes() {
        for (text, bytes) in [
            ("0", 0),
            ("4096", 4096),
            ("512Ki", 512 << 10),
            ("32Mi", 32 << 20),
        ] {
            assert_eq!(byte_size::parse(text), Ok(bytes), "{text}");
        }
        assert_eq!(byte_size::parse("1Gi"), Ok(1 << 30));
        for bad in ["", "Mi", "32M", "1.5Mi", "-1", "99999999999999999999Gi"] {
            assert!(byte_size::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn annotation_keys() {
        for ok in [
            "fluxcd.io/checksum",
            "stale-guard.io/revision",
            "checksum",
            "a.b-c/x_y.z",
        ] {
            assert!(validate_annotation_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/x", "Fluxcd.IO/x", "a/", "a/-x", &"x".repeat(64)] {
            assert!(validate_annotation_key(bad).is_err(), "{bad}");
        }
    }
}
