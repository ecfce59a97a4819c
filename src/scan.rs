//! `stale-guard scan`: what is already stale in running clusters.
//!
//! For each cluster (kubeconfig contexts, or the in-cluster configuration
//! of a CronJob) it reads, with the Kubernetes API at the edge of this
//! module:
//! - the objects of the kinds and namespaces named by the rules that carry
//!   the revision or checksum annotation (or a near miss of either), with
//!   paginated metadata-only lists;
//! - Flux `Kustomization`s with their `GitRepository`, and Argo CD
//!   `Application`s.
//!
//! Each is judged from the same mirrors and checksum engine as the webhook,
//! by the pure [`verdict`] module, and the report is rendered by [`output`].
//! A cluster that cannot be read is reported and does not stop the others.

pub mod output;
pub mod verdict;

use crate::argo::Application;
use crate::checksum::{Caches, ChecksumEngine, SizeLimits};
use crate::config::{Config, RuleConfig};
use crate::controllers::sources;
use crate::flux::{self, GitRepository, Kustomization};
use crate::mirror::{Lookup, Mirror};
use crate::policy::{ChecksumFact, HeadFacts, MirrorFacts, Position, Revision};
use gix::ObjectId;
use kube::api::{Api, DynamicObject, ListParams, ObjectList};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope, verbs};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use verdict::{Applied, Severity, Verdict};

/// Objects asked for per list request.
pub const PAGE_SIZE: u32 = 500;

/// The name a cluster gets when the scan runs inside it (no kubeconfig).
pub const IN_CLUSTER: &str = "in-cluster";

/// What to scan and how to judge it.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// The kubeconfig file; default `$KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Contexts to scan; empty: the current context (or in-cluster).
    pub contexts: Vec<String>,
    pub all_contexts: bool,
    /// A stale revision at most this far behind head (by commit time) is
    /// tolerated.
    pub max_age: MaxAge,
    /// Overrides the configuration's `mirrorDir`.
    pub mirror_dir: Option<PathBuf>,
}

/// `--max-age`: the tolerance, and the text it was given as. The report
/// repeats the text: formatted back from the duration, `1200h` would read
/// `1month 19days 13h 30m`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaxAge {
    pub duration: Duration,
    pub text: String,
}

impl MaxAge {
    /// `30m`, `1h30m`, `1200h`, `0`: what the configuration's durations take.
    pub fn parse(text: &str) -> Result<MaxAge, String> {
        Ok(MaxAge {
            duration: crate::config::parse_duration(text)?,
            text: text.trim().to_owned(),
        })
    }
}

impl Default for MaxAge {
    fn default() -> Self {
        MaxAge {
            duration: Duration::ZERO,
            text: "0s".to_owned(),
        }
    }
}

/// A problem that stops the scan before any cluster is read (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ScanError(String);

/// The whole report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Seconds since the epoch.
    pub generated_at: u64,
    /// `--max-age` as given.
    pub max_age: String,
    pub max_age_seconds: u64,
    pub sources: Vec<SourceReport>,
    pub clusters: Vec<ClusterReport>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceReport {
    pub name: String,
    pub branch: String,
    pub head: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterReport {
    /// The kubeconfig context, or `in-cluster`.
    pub name: String,
    /// The API server answered discovery.
    pub reachable: bool,
    /// Failures (unreachable, a list refused): each makes the exit code 2.
    pub errors: Vec<String>,
    /// What was not scanned and why.
    pub notes: Vec<String>,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    pub kind: String,
    pub api_version: String,
    /// Empty for a cluster-scoped object.
    pub namespace: String,
    pub name: String,
    /// The configured source it was judged against.
    pub source: Option<String>,
    pub overlay: Option<String>,
    /// The rule (annotated objects) that named it.
    pub rule: Option<String>,
    pub severity: Severity,
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl Report {
    /// (objects stale beyond --max-age, errors: unreadable clusters, failed
    /// lists, undecidable objects).
    pub fn counts(&self) -> (usize, usize) {
        let items = self.clusters.iter().flat_map(|c| &c.items);
        let stale = items
            .clone()
            .filter(|i| i.severity == Severity::Stale)
            .count();
        let errors = items.filter(|i| i.severity == Severity::Error).count()
            + self.clusters.iter().map(|c| c.errors.len()).sum::<usize>();
        (stale, errors)
    }

    /// 2 when something could not be read or judged (an unreachable
    /// cluster included), else 1 when something is stale, else 0.
    pub fn exit_code(&self) -> u8 {
        match self.counts() {
            (_, e) if e > 0 => 2,
            (s, _) if s > 0 => 1,
            _ => 0,
        }
    }
}

/// One configured source, opened for the scan.
struct ScanSource {
    mirror: Option<Arc<Mirror>>,
    caches: Arc<Caches>,
    /// The size limits, as the webhook applies them.
    size_limits: SizeLimits,
    error: Option<String>,
}

/// What every cluster's scan shares.
struct Shared {
    config: Config,
    sources: HashMap<String, ScanSource>,
    max_age: Duration,
}

/// A cluster to scan.
struct Target {
    name: String,
    config: Result<kube::Config, String>,
}

/// Runs the scan over every selected cluster.
pub async fn run(config: Config, options: &ScanOptions) -> Result<Report, ScanError> {
    // kube's rustls client needs a process-wide provider; the webhook
    // installs the same one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let targets = targets(options).await?;
    let mirror_dir = options
        .mirror_dir
        .clone()
        .unwrap_or_else(|| config.mirror_dir.clone());
    let sources = open_sources(&config, &mirror_dir).await;
    let source_reports = config
        .sources
        .iter()
        .map(|s| {
            let opened = sources.get(&s.name);
            SourceReport {
                name: s.name.clone(),
                branch: s.branch.clone(),
                head: opened
                    .and_then(|o| o.mirror.as_ref())
                    .and_then(|m| m.head())
                    .map(|h| h.commit.to_string()),
                error: opened.and_then(|o| o.error.clone()),
            }
        })
        .collect();
    let shared = Arc::new(Shared {
        config,
        sources,
        max_age: options.max_age.duration,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (index, target) in targets.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        tasks.spawn(async move { (index, scan_cluster(&shared, target).await) });
    }
    let mut clusters = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(done) => clusters.push(done),
            Err(e) => return Err(ScanError(format!("a cluster scan task failed: {e}"))),
        }
    }
    clusters.sort_by_key(|(i, _)| *i);
    Ok(Report {
        generated_at: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        max_age: options.max_age.text.clone(),
        max_age_seconds: options.max_age.duration.as_secs(),
        sources: source_reports,
        clusters: clusters.into_iter().map(|(_, c)| c).collect(),
    })
}

/// The clusters to scan: the named contexts, every context, the current
/// context, or (no kubeconfig at all) the cluster this runs in.
async fn targets(options: &ScanOptions) -> Result<Vec<Target>, ScanError> {
    let explicit = options.all_contexts || !options.contexts.is_empty();
    let kubeconfig = match &options.kubeconfig {
        Some(path) => Some(
            Kubeconfig::read_from(path)
                .map_err(|e| ScanError(format!("reading kubeconfig {}: {e}", path.display())))?,
        ),
        None => match Kubeconfig::read() {
            Ok(k) => Some(k),
            Err(e) if explicit => {
                return Err(ScanError(format!(
                    "--context/--all-contexts need a kubeconfig ($KUBECONFIG or ~/.kube/config): {e}"
                )));
            }
            Err(_) => None,
        },
    };
    let Some(kubeconfig) = kubeconfig else {
        let config = kube::Config::incluster().map_err(|e| {
            ScanError(format!(
                "no kubeconfig ($KUBECONFIG, ~/.kube/config or --kubeconfig) and not running in a cluster: {e}"
            ))
        })?;
        return Ok(vec![Target {
            name: IN_CLUSTER.to_owned(),
            config: Ok(config),
        }]);
    };
    let known: Vec<String> = kubeconfig.contexts.iter().map(|c| c.name.clone()).collect();
    let names: Vec<String> = if options.all_contexts {
        known.clone()
    } else if !options.contexts.is_empty() {
        for c in &options.contexts {
            if !known.contains(c) {
                return Err(ScanError(format!(
                    "context {c:?} is not in the kubeconfig (it has: {})",
                    known.join(", ")
                )));
            }
        }
        options.contexts.clone()
    } else {
        match &kubeconfig.current_context {
            Some(c) if !c.is_empty() => vec![c.clone()],
            _ => {
                return Err(ScanError(
                    "the kubeconfig has no current-context: name one with --context or use --all-contexts"
                        .to_owned(),
                ));
            }
        }
    };
    if names.is_empty() {
        return Err(ScanError("the kubeconfig has no contexts".to_owned()));
    }
    let mut targets = Vec::new();
    for name in names {
        let opts = KubeConfigOptions {
            context: Some(name.clone()),
            ..KubeConfigOptions::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &opts)
            .await
            .map_err(|e| format!("context {name}: {e}"));
        targets.push(Target { name, config });
    }
    Ok(targets)
}

/// Opens (and fetches) the mirror of every configured source. A source
/// that cannot be opened or fetched is recorded; its objects are then
/// judged `MirrorUnavailable` unless an earlier fetch is recent enough.
async fn open_sources(
    config: &Config,
    mirror_dir: &std::path::Path,
) -> HashMap<String, ScanSource> {
    let mut out = HashMap::new();
    for s in &config.sources {
        let caches = Arc::new(Caches::new(config.limits.caches));
        let opened = match Mirror::open(config.source_spec(s), mirror_dir).await {
            Ok(mirror) => {
                // `open` fetches only when it had to clone: an existing
                // mirror must catch up with the remote first.
                let error = if mirror.status().fetches == 0 {
                    mirror
                        .refresh()
                        .await
                        .err()
                        .map(|e| format!("fetch failed: {e}"))
                } else {
                    mirror
                        .status()
                        .last_failure
                        .map(|f| format!("fetch failed: {}", f.message))
                };
                ScanSource {
                    mirror: Some(mirror),
                    caches,
                    size_limits: config.limits.size_limits(),
                    error,
                }
            }
            Err(e) => ScanSource {
                mirror: None,
                caches,
                size_limits: config.limits.size_limits(),
                error: Some(e.to_string()),
            },
        };
        out.insert(s.name.clone(), opened);
    }
    out
}

async fn scan_cluster(shared: &Shared, target: Target) -> ClusterReport {
    let mut report = ClusterReport {
        name: target.name.clone(),
        reachable: false,
        errors: Vec::new(),
        notes: Vec::new(),
        items: Vec::new(),
    };
    let client = match target
        .config
        .and_then(|c| kube::Client::try_from(c).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            report.errors.push(format!("cannot build a client: {e}"));
            return report;
        }
    };
    let discovery = match Discovery::new(client.clone()).run().await {
        Ok(d) => d,
        Err(e) => {
            report
                .errors
                .push(format!("cannot reach the API server (discovery): {e}"));
            return report;
        }
    };
    report.reachable = true;
    annotated_objects(shared, &client, &discovery, &mut report).await;
    flux_kustomizations(shared, &client, &discovery, &mut report).await;
    argo_applications(shared, &client, &discovery, &mut report).await;
    report
        .items
        .sort_by(|a, b| (&a.kind, &a.namespace, &a.name).cmp(&(&b.kind, &b.namespace, &b.name)));
    report
}

/// Every page of a list, following `metadata.continue`.
async fn list_all<K, F, Fut>(what: &str, list: F) -> Result<Vec<K>, String>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
    F: Fn(ListParams) -> Fut,
    Fut: std::future::Future<Output = kube::Result<ObjectList<K>>>,
{
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default().limit(PAGE_SIZE);
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let page = list(params)
            .await
            .map_err(|e| format!("listing {what}: {e}"))?;
        items.extend(page.items);
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(items),
        }
    }
}

fn api_for(
    client: &kube::Client,
    ar: &ApiResource,
    caps: &ApiCapabilities,
    ns: Option<&str>,
) -> Api<DynamicObject> {
    match (ns, &caps.scope) {
        (Some(ns), Scope::Namespaced) => Api::namespaced_with(client.clone(), ns, ar),
        _ => Api::all_with(client.clone(), ar),
    }
}

/// Every served resource whose kind matches a rule's `match.kinds` entry
/// (`Ingress` in any group, `networking.k8s.io/Ingress` in that one), at
/// the group's preferred version.
fn resolve_kind(discovery: &Discovery, pattern: &str) -> Vec<(ApiResource, ApiCapabilities)> {
    discovery
        .groups()
        .filter_map(|g| {
            g.recommended_resources().into_iter().find(|(ar, caps)| {
                crate::admission::kind_pattern_matches(pattern, &ar.group, &ar.kind)
                    && caps.supports_operation(verbs::LIST)
                    && !ar.plural.contains('/')
            })
        })
        .collect()
}

/// The first rule whose namespaces and kinds hold for a running object
/// (users and groups are properties of a request, not of an object).
fn rule_for<'c>(
    config: &'c Config,
    namespace: &str,
    group: &str,
    kind: &str,
) -> Option<&'c RuleConfig> {
    config.rules.iter().find(|r| {
        let m = &r.match_;
        (m.namespaces.is_empty() || m.namespaces.iter().any(|n| n == namespace))
            && !m.kinds.is_empty()
            && m.kinds
                .iter()
                .any(|k| crate::admission::kind_pattern_matches(k, group, kind))
    })
}

/// (group, version, plural).
type ResourceKey = (String, String, String);
/// A resource and the namespaces to list it in (`None`: all).
type ResourceLists = (ApiResource, ApiCapabilities, BTreeSet<Option<String>>);

async fn annotated_objects(
    shared: &Shared,
    client: &kube::Client,
    discovery: &Discovery,
    report: &mut ClusterReport,
) {
    let config = &shared.config;
    // (group, version, plural) -> namespaces to list (None: all).
    let mut lists: BTreeMap<ResourceKey, ResourceLists> = BTreeMap::new();
    for rule in &config.rules {
        if rule.match_.kinds.is_empty() {
            report.notes.push(format!(
                "rule {} names no kinds: its objects are not listed (give match.kinds to scan them)",
                rule.name
            ));
            continue;
        }
        for pattern in &rule.match_.kinds {
            let found = resolve_kind(discovery, pattern);
            if found.is_empty() {
                report.notes.push(format!(
                    "rule {}: kind {pattern} is not served by this cluster",
                    rule.name
                ));
            }
            for (ar, caps) in found {
                let key = (ar.group.clone(), ar.version.clone(), ar.plural.clone());
                let entry = lists
                    .entry(key)
                    .or_insert_with(|| (ar.clone(), caps.clone(), BTreeSet::new()));
                if rule.match_.namespaces.is_empty() || caps.scope == Scope::Cluster {
                    entry.2.insert(None);
                } else {
                    entry
                        .2
                        .extend(rule.match_.namespaces.iter().cloned().map(Some));
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    for (ar, caps, namespaces) in lists.into_values() {
        let namespaces: Vec<Option<String>> = if namespaces.contains(&None) {
            vec![None]
        } else {
            namespaces.into_iter().collect()
        };
        for ns in namespaces {
            let api = api_for(client, &ar, &caps, ns.as_deref());
            let what = match &ns {
                Some(ns) => format!("{} in namespace {ns}", ar.plural),
                None => ar.plural.clone(),
            };
            let objects = match list_all(&what, |p| {
                let api = api.clone();
                async move { api.list_metadata(&p).await }
            })
            .await
            {
                Ok(o) => o,
                Err(e) => {
                    report.errors.push(e);
                    continue;
                }
            };
            for object in objects {
                let meta = &object.metadata;
                let namespace = meta.namespace.clone().unwrap_or_default();
                let name = meta.name.clone().unwrap_or_default();
                if !seen.insert((
                    ar.group.clone(),
                    ar.kind.clone(),
                    namespace.clone(),
                    name.clone(),
                )) {
                    continue;
                }
                let Some(rule) = rule_for(config, &namespace, &ar.group, &ar.kind) else {
                    continue;
                };
                let carries = meta.annotations.as_ref().is_some_and(|a| {
                    a.keys().any(|k| {
                        [&config.annotations.revision, &config.annotations.checksum]
                            .iter()
                            .any(|want| k == *want || crate::policy::is_near_miss(k, want))
                    })
                });
                if !carries {
                    continue;
                }
                let (revision, checksum) =
                    crate::admission::read_annotations(config, meta.annotations.as_ref());
                let branch = crate::admission::revision_branch(config, meta.annotations.as_ref());
                let applied = Applied::Annotated {
                    revision,
                    branch,
                    checksum,
                };
                let branch = source_branch(config, &rule.source);
                let verdict = judge(
                    shared,
                    &rule.source,
                    &branch,
                    &rule.name,
                    &rule.overlay,
                    &applied,
                )
                .await;
                report.items.push(Item {
                    kind: ar.kind.clone(),
                    api_version: ar.api_version.clone(),
                    namespace,
                    name,
                    source: Some(rule.source.clone()),
                    overlay: Some(rule.overlay.clone()),
                    rule: Some(rule.name.clone()),
                    severity: verdict.severity(shared.max_age),
                    verdict,
                });
            }
        }
    }
}

fn source_branch(config: &Config, source: &str) -> String {
    config
        .sources
        .iter()
        .find(|s| s.name == source)
        .map(|s| s.branch.clone())
        .unwrap_or_default()
}

/// Lists every object of `group`'s `kind` when the cluster serves it.
async fn list_custom(
    client: &kube::Client,
    discovery: &Discovery,
    group: &str,
    kind: &str,
    report: &mut ClusterReport,
) -> Option<(ApiResource, Vec<DynamicObject>)> {
    let (ar, caps) = discovery.get(group)?.recommended_kind(kind)?;
    let api = api_for(client, &ar, &caps, None);
    match list_all(&format!("{}.{group}", ar.plural), |p| {
        let api = api.clone();
        async move { api.list(&p).await }
    })
    .await
    {
        Ok(objects) => Some((ar, objects)),
        Err(e) => {
            report.errors.push(e);
            None
        }
    }
}

/// The typed objects of a list; one that does not read is noted and
/// skipped, so one odd object does not hide the others.
fn typed<T: serde::de::DeserializeOwned>(
    kind: &str,
    objects: &[DynamicObject],
    report: &mut ClusterReport,
) -> Vec<(flux::Meta, T)> {
    objects
        .iter()
        .filter_map(|o| match flux::from_dynamic::<T>(o) {
            Ok(t) => Some(t),
            Err(e) => {
                report
                    .notes
                    .push(format!("{kind} skipped, it does not read: {e}"));
                None
            }
        })
        .collect()
}

async fn flux_kustomizations(
    shared: &Shared,
    client: &kube::Client,
    discovery: &Discovery,
    report: &mut ClusterReport,
) {
    let Some((ar, kustomizations)) = list_custom(
        client,
        discovery,
        flux::KUSTOMIZE_GROUP,
        "Kustomization",
        report,
    )
    .await
    else {
        return;
    };
    let repos: HashMap<(String, String), GitRepository> = match list_custom(
        client,
        discovery,
        flux::SOURCE_GROUP,
        "GitRepository",
        report,
    )
    .await
    {
        Some((_, repos)) => typed::<GitRepository>("GitRepository", &repos, report)
            .into_iter()
            .map(|(meta, r)| ((meta.namespace, meta.name), r))
            .collect(),
        None => HashMap::new(),
    };
    for (meta, k) in typed::<Kustomization>("Kustomization", &kustomizations, report) {
        let overlay = k.overlay().to_owned();
        let applied = Applied::Controller {
            revision: verdict::controller_revision(k.status.last_applied_revision.as_deref()),
            field: "status.lastAppliedRevision",
        };
        let matched = k.git_repository(&meta.namespace).and_then(|(ns, name)| {
            match repos.get(&(ns.to_owned(), name.to_owned())) {
                None => Err(format!("GitRepository {ns}/{name} does not exist")),
                Some(repo) => match repo.url() {
                    None => Err(format!("GitRepository {ns}/{name} has no spec.url")),
                    Some(url) => {
                        sources::match_source(&shared.config.sources, url, &repo.git_ref())
                            .map(|s| (s.name.clone(), s.branch.clone()))
                    }
                },
            }
        });
        report
            .items
            .push(controller_item(shared, &ar, meta, overlay, matched, &applied).await);
    }
}

async fn argo_applications(
    shared: &Shared,
    client: &kube::Client,
    discovery: &Discovery,
    report: &mut ClusterReport,
) {
    let Some((ar, apps)) =
        list_custom(client, discovery, crate::argo::GROUP, "Application", report).await
    else {
        return;
    };
    for (meta, app) in typed::<Application>("Application", &apps, report) {
        let overlay = app.overlay().to_owned();
        let applied = Applied::Controller {
            revision: verdict::controller_revision(app.status.sync.revision.as_deref()),
            field: crate::argo::SYNC_REVISION_FIELD,
        };
        let matched = match app.repo_url() {
            None if app.spec.sources.is_some() => {
                Err("a multi-source Application (spec.sources) is not scanned yet".to_owned())
            }
            None => Err("spec.source.repoURL is empty".to_owned()),
            Some(url) => sources::match_source(&shared.config.sources, url, &app.git_ref())
                .map(|s| (s.name.clone(), s.branch.clone())),
        };
        report
            .items
            .push(controller_item(shared, &ar, meta, overlay, matched, &applied).await);
    }
}

async fn controller_item(
    shared: &Shared,
    ar: &ApiResource,
    flux::Meta {
        namespace, name, ..
    }: flux::Meta,
    overlay: String,
    matched: Result<(String, String), String>,
    applied: &Applied,
) -> Item {
    let (source, verdict) = match matched {
        Ok((source, branch)) => {
            let who = format!("{} {namespace}/{name}", ar.kind);
            let v = judge(shared, &source, &branch, &who, &overlay, applied).await;
            (Some(source), v)
        }
        Err(why) => (None, Verdict::untracked(why)),
    };
    Item {
        kind: ar.kind.clone(),
        api_version: ar.api_version.clone(),
        namespace,
        name,
        source,
        overlay: Some(overlay),
        rule: None,
        severity: verdict.severity(shared.max_age),
        verdict,
    }
}

/// Gathers the mirror facts for `applied` and returns the verdict.
async fn judge(
    shared: &Shared,
    source: &str,
    branch: &str,
    who: &str,
    overlay: &str,
    applied: &Applied,
) -> Verdict {
    let revision = match applied {
        Applied::Annotated {
            revision: crate::policy::Annotation::Valid(r),
            ..
        }
        | Applied::Controller {
            revision: crate::policy::Annotation::Valid(r),
            ..
        } => Some(*r),
        _ => None,
    };
    let facts = match revision {
        Some(r) => gather(shared, source, overlay, r).await,
        // The annotations decide before any fact is consulted.
        None => MirrorFacts::Unavailable { why: String::new() },
    };
    verdict::verdict(who, branch, applied, &facts)
}

/// What the mirror says about `revision`: its position, and the overlay
/// checksum at it and at head (both, always: the scan reports stale content
/// apart from an old revision).
async fn gather(shared: &Shared, source: &str, overlay: &str, revision: Revision) -> MirrorFacts {
    let unavailable = |why: String| MirrorFacts::Unavailable { why };
    let Some(scan_source) = shared.sources.get(source) else {
        return unavailable(format!("source {source:?} is not configured"));
    };
    let Some(mirror) = &scan_source.mirror else {
        return unavailable(format!(
            "the mirror of {source} cannot be opened: {}",
            scan_source.error.as_deref().unwrap_or("unknown error")
        ));
    };
    let max = shared.config.failure.max_mirror_staleness;
    let now = SystemTime::now();
    let status = mirror.status();
    let head = match (&status.head, status.is_fresh(max, now)) {
        (Some(head), true) => head.clone(),
        _ => {
            return unavailable(format!(
                "the mirror of {source} has not fetched within maxMirrorStaleness ({}){}",
                crate::policy::human_age(max.as_secs().try_into().unwrap_or(i64::MAX)),
                scan_source
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
    };
    let oid = ObjectId::Sha1(revision.0);
    let mut facts = mirror.facts(oid);
    if !facts.known {
        let deadline = tokio::time::Instant::now() + mirror.spec().fetch_timeout;
        if mirror.ensure_known(oid, deadline).await == Lookup::Known {
            facts = mirror.facts(oid);
        }
    }
    let position = Position::of(&facts);
    let on_branch = matches!(position, Position::Head | Position::Ancestor { .. });
    let at_revision = if on_branch {
        Some(checksum(scan_source, mirror, oid, overlay).await)
    } else {
        None
    };
    let at_head = Some(checksum(scan_source, mirror, head.commit, overlay).await);
    MirrorFacts::Available {
        head: HeadFacts {
            commit: Revision(head.commit.as_bytes().try_into().unwrap_or([0; 20])),
            commit_time: head.commit_time,
            previous: None,
        },
        position,
        at_revision,
        at_head,
    }
}

async fn checksum(
    source: &ScanSource,
    mirror: &Mirror,
    commit: ObjectId,
    overlay: &str,
) -> ChecksumFact {
    let engine = ChecksumEngine::with_caches(mirror.repository(), Arc::clone(&source.caches))
        .with_size_limits(source.size_limits);
    let overlay = overlay.to_owned();
    match tokio::task::spawn_blocking(move || engine.checksum(commit, &overlay)).await {
        Ok(Ok(sum)) => Ok(sum.checksum),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("checksum task failed: {e}")),
    }
}
