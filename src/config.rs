//! The `serve --config` file (contract section 6): YAML, camelCase fields,
//! validated at start so that a mistake is refused with the field's name
//! instead of surfacing as a wrong verdict later.

use crate::checksum::CacheLimits;
use crate::policy::{FailureAction, Mode, Staleness};
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
    /// Default grace window for rules that do not set one.
    #[serde(default, with = "duration")]
    pub grace_period: Duration,
    /// After SIGTERM, how long in-flight reviews may take before the
    /// process exits; keep it below the pod's terminationGracePeriodSeconds.
    #[serde(default = "default_shutdown_grace", with = "duration")]
    pub shutdown_grace_period: Duration,
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
/// needed and never copied into the configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialsConfig {
    pub username_file: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub ssh_key_file: Option<PathBuf>,
    pub known_hosts_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    #[serde(default, rename = "match")]
    pub match_: MatchConfig,
    pub source: String,
    pub overlay: String,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub staleness: Staleness,
    #[serde(default, with = "opt_duration")]
    pub grace_period: Option<Duration>,
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
    /// Fetches that reviews of unknown revisions may start, per source
    /// (polls are not counted): `{ perMinute: 30, burst: 5 }`.
    #[serde(default)]
    pub on_demand_fetches: crate::mirror::OnDemandFetches,
}

fn default_checksum_queue() -> usize {
    64
}

fn default_memory_trim_interval() -> Duration {
    Duration::from_secs(30)
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            checksum_concurrency: 0,
            checksum_queue: default_checksum_queue(),
            caches: CacheLimits::default(),
            memory_trim_interval: default_memory_trim_interval(),
            on_demand_fetches: crate::mirror::OnDemandFetches::default(),
        }
    }
}

impl Limits {
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

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
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
            if let Some(c) = &s.credentials {
                let basic = c.username_file.is_some() || c.password_file.is_some();
                let kinds = [basic, c.token_file.is_some(), c.ssh_key_file.is_some()];
                if kinds.iter().filter(|k| **k).count() > 1 {
                    return Err(invalid(
                        f("credentials"),
                        "give one of usernameFile+passwordFile, tokenFile, or sshKeyFile",
                    ));
                }
                if basic && (c.username_file.is_none() || c.password_file.is_none()) {
                    return Err(invalid(
                        f("credentials"),
                        "usernameFile and passwordFile go together",
                    ));
                }
                if c.known_hosts_file.is_some() && c.ssh_key_file.is_none() {
                    return Err(invalid(
                        f("credentials.knownHostsFile"),
                        "only used with sshKeyFile",
                    ));
                }
            }
        }
        if self.limits.checksum_concurrency > 1024 {
            return Err(invalid(
                "limits.checksumConcurrency",
                "must be at most 1024 (0 means one per core)",
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
            if !names.contains(r.source.as_str()) {
                return Err(invalid(
                    f("source"),
                    format!("no source is named {:?}", r.source),
                ));
            }
            if r.overlay.starts_with('/')
                || crate::tree::join_clean(b"", r.overlay.as_bytes()).is_err()
            {
                return Err(invalid(
                    f("overlay"),
                    "must be a path relative to the repository root that stays inside it",
                ));
            }
        }
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
        let credentials = self.credentials.as_ref().and_then(|c| {
            match (
                &c.username_file,
                &c.password_file,
                &c.token_file,
                &c.ssh_key_file,
            ) {
                (Some(u), Some(p), _, _) => Some(Credentials::Basic {
                    username_file: u.clone(),
                    password_file: p.clone(),
                }),
                (_, _, Some(t), _) => Some(Credentials::Token {
                    token_file: t.clone(),
                    username: None,
                }),
                (_, _, _, Some(k)) => c.known_hosts_file.as_ref().map(|h| Credentials::Ssh {
                    private_key_file: k.clone(),
                    known_hosts_file: h.clone(),
                }),
                _ => None,
            }
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

mod duration {
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
