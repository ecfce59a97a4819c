//! What GitOps controllers say they apply: Flux Kustomizations and
//! GitRepositories ([`crate::flux`]) and Argo CD Applications
//! ([`crate::argo`]), matched to the configured sources ([`sources`]),
//! and kept in watch-fed caches ([`ControllerCaches`]) so that a review
//! reads them without an API call.
//!
//! Each watched kind runs one `kube::runtime::watcher` (list, then watch
//! from the list's version; a `410 Gone` relists inside the watcher). The
//! objects are read into the typed structs as they arrive and only those
//! are kept (no `managedFields`, no unread fields); a relist replaces the
//! kind's objects at once when its last page is in. Any other watch error
//! drops the watcher and starts a new one (a fresh list) after kube's
//! default backoff (0.8 s doubling to 30 s, jittered), counting a restart.
//! The objects read before stay served meanwhile.

pub mod sources;
pub mod variables;

use crate::argo::{self, Application, TrackingId};
use crate::flux::{self, GitRepository, Kustomization, Meta};
use crate::policy::Revision;
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, DefaultBackoff};
use serde::de::DeserializeOwned;
use sources::GitSource;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::Instant;

/// A kind the caches can watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Watched {
    /// `kustomize.toolkit.fluxcd.io/v1` Kustomization.
    Kustomizations,
    /// `source.toolkit.fluxcd.io/v1` GitRepository.
    GitRepositories,
    /// `argoproj.io/v1alpha1` Application.
    Applications,
}

impl Watched {
    /// What `provenance: flux` needs.
    pub const FLUX: [Watched; 2] = [Watched::Kustomizations, Watched::GitRepositories];
    /// What `provenance: argo` needs.
    pub const ARGO: [Watched; 1] = [Watched::Applications];

    pub fn kind(self) -> &'static str {
        match self {
            Watched::Kustomizations => "Kustomization",
            Watched::GitRepositories => "GitRepository",
            Watched::Applications => "Application",
        }
    }

    pub fn api_resource(self) -> ApiResource {
        let (group, version, plural) = match self {
            Watched::Kustomizations => (flux::KUSTOMIZE_GROUP, flux::VERSION, "kustomizations"),
            Watched::GitRepositories => (flux::SOURCE_GROUP, flux::VERSION, "gitrepositories"),
            Watched::Applications => (argo::GROUP, argo::VERSION, "applications"),
        };
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, self.kind()),
            plural,
        )
    }
}

/// One cached object: its identity and version, and its typed fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot<T> {
    pub meta: Meta,
    pub object: T,
}

/// Tuning; the defaults suit a server.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// A watch broken for longer than this makes [`ControllerCaches::ready`]
    /// fail; shorter blips (an API server rollout) do not flap readiness.
    pub unready_after: Duration,
    /// Objects per list page.
    pub page_size: u32,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            unready_after: Duration::from_secs(10),
            page_size: 500,
        }
    }
}

/// The health of one kind's watch, for readiness, metrics and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindStatus {
    pub kind: &'static str,
    /// The first complete list is in.
    pub listed: bool,
    pub objects: usize,
    /// Watchers dropped and started again after an error.
    pub restarts: u64,
    /// `410 Gone` answers the watcher relisted after.
    pub relists: u64,
    /// Objects left out because they do not read (their reason is logged).
    pub skipped: u64,
    /// Events applied (list items included).
    pub events: u64,
    /// Set while the watch is broken: since when.
    pub broken_since: Option<SystemTime>,
    pub last_error: Option<String>,
}

/// By namespace, then name: looked up with borrowed strings.
type ByName<V> = HashMap<String, HashMap<String, V>>;

type Objects<T> = ByName<Arc<Snapshot<T>>>;

fn insert<T>(objects: &mut Objects<T>, snapshot: Snapshot<T>) {
    objects
        .entry(snapshot.meta.namespace.clone())
        .or_default()
        .insert(snapshot.meta.name.clone(), Arc::new(snapshot));
}

fn remove<T>(objects: &mut Objects<T>, meta: &Meta) {
    if let Some(names) = objects.get_mut(&meta.namespace) {
        names.remove(&meta.name);
        if names.is_empty() {
            objects.remove(&meta.namespace);
        }
    }
}

/// The objects of one kind.
#[derive(Debug)]
pub struct Store<T> {
    objects: Objects<T>,
    /// A relist in progress: it replaces `objects` when complete.
    relist: Option<Objects<T>>,
}

impl<T> Default for Store<T> {
    fn default() -> Self {
        Store {
            objects: HashMap::new(),
            relist: None,
        }
    }
}

/// What a watcher event did to a [`Store`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A (re)list begins: nothing is known yet about the server.
    Started,
    /// The store changed as seen by lookups.
    Changed,
    /// Buffered for a relist.
    Buffered,
    /// The first or a new complete list is in.
    Listed,
    /// The object does not read: left out (and removed if it was there).
    Skipped(String),
}

impl<T: DeserializeOwned> Store<T> {
    pub fn len(&self) -> usize {
        self.objects.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Snapshot<T>>> {
        self.objects.get(namespace)?.get(name).cloned()
    }

    /// Applies one watcher event.
    pub fn apply(&mut self, event: watcher::Event<DynamicObject>) -> Applied {
        match event {
            watcher::Event::Init => {
                self.relist = Some(HashMap::new());
                Applied::Started
            }
            watcher::Event::InitApply(o) => match flux::from_dynamic::<T>(&o) {
                Ok((meta, object)) => {
                    insert(
                        self.relist.get_or_insert_with(HashMap::new),
                        Snapshot { meta, object },
                    );
                    Applied::Buffered
                }
                Err(e) => Applied::Skipped(e),
            },
            watcher::Event::InitDone => {
                self.objects = self.relist.take().unwrap_or_default();
                Applied::Listed
            }
            watcher::Event::Apply(o) => match flux::from_dynamic::<T>(&o) {
                Ok((meta, object)) => {
                    insert(&mut self.objects, Snapshot { meta, object });
                    Applied::Changed
                }
                Err(e) => {
                    // What it said before is no longer what it says.
                    remove(&mut self.objects, &Meta::of(&o));
                    Applied::Skipped(e)
                }
            },
            watcher::Event::Delete(o) => {
                remove(&mut self.objects, &Meta::of(&o));
                Applied::Changed
            }
        }
    }
}

struct KindCache<T> {
    store: RwLock<Store<T>>,
    status: Mutex<KindStatus>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: DeserializeOwned> KindCache<T> {
    fn new(kind: &'static str) -> Arc<Self> {
        Arc::new(KindCache {
            store: RwLock::new(Store::default()),
            status: Mutex::new(KindStatus {
                kind,
                ..KindStatus::default()
            }),
        })
    }

    fn get(&self, namespace: &str, name: &str) -> Option<Arc<Snapshot<T>>> {
        self.store
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(namespace, name)
    }

    fn len(&self) -> usize {
        self.store.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn status(&self) -> KindStatus {
        let mut s = lock(&self.status).clone();
        s.objects = self.store.read().unwrap_or_else(|e| e.into_inner()).len();
        s
    }
}

/// What the controller that applied an object says it applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Provenance {
    /// `Kustomization flux-system/apps`, `Application argocd/web`.
    pub controller: String,
    /// The controller object's version the answer was read from.
    pub resource_version: String,
    /// Where the revision was read (`status.lastAttemptedRevision`, ...).
    pub field: &'static str,
    pub revision: Revision,
    /// The branch a Flux revision names (`main@sha1:...`).
    pub branch: Option<String>,
    /// The git URL and what it follows, or why there is none (a missing
    /// GitRepository, a multi-source Application).
    pub source: Result<GitSource, String>,
    /// `spec.path` / `spec.source.path`, `.` when empty.
    pub overlay: String,
    /// The controller object the build is read from (content
    /// verification only): read on first use, then kept.
    build_from: BuildFrom,
    /// Boxed: most claims never need it.
    build: std::sync::OnceLock<Box<(ControllerBuild, [u8; 32])>>,
}

/// The object a claim's [`ControllerBuild`] is read from.
#[derive(Debug, Clone, PartialEq)]
enum BuildFrom {
    Flux(Arc<Snapshot<Kustomization>>),
    Argo(Arc<Snapshot<Application>>),
}

impl Provenance {
    /// What the controller adds when it builds the overlay, and its
    /// digest; read once.
    pub fn build(&self) -> &(ControllerBuild, [u8; 32]) {
        self.build.get_or_init(|| {
            let controller = &self.controller;
            let build = match &self.build_from {
                BuildFrom::Flux(k) => ControllerBuild {
                    options: crate::render::build::BuildOptions::flux(&k.object.spec)
                        .map_err(|why| format!("{controller}: {why}")),
                    post_build: k.object.spec.post_build.as_ref().map(|p| {
                        variables::PostBuildInputs {
                            namespace: k.meta.namespace.clone(),
                            substitute: p.substitute.clone(),
                            substitute_from: p.substitute_from.clone(),
                        }
                    }),
                },
                BuildFrom::Argo(app) => ControllerBuild {
                    options: crate::render::build::BuildOptions::argo(&app.object.spec)
                        .map_err(|why| format!("{controller}: {why}")),
                    post_build: None,
                },
            };
            let digest = build.digest();
            Box::new((build, digest))
        })
    }
}

/// How the controller builds the overlay it applies (contract section 9),
/// for content verification: what it adds to kustomize's input, and, for
/// Flux, where its post-build substitution variables come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerBuild {
    /// The build options, or why the controller's spec cannot be
    /// reproduced (content verification then fails with it).
    pub options: Result<crate::render::build::BuildOptions, String>,
    /// Flux's `spec.postBuild`.
    pub post_build: Option<variables::PostBuildInputs>,
}

impl ControllerBuild {
    /// A digest of everything here (inline values included), to key what
    /// is resolved and rendered for it. In memory only.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest as _, Sha256};
        let mut h = Sha256::new();
        h.update(b"stale-guard controller build v1\0");
        match &self.options {
            Ok(options) => {
                h.update([0]);
                h.update(options.digest().0);
            }
            Err(why) => {
                h.update([1]);
                h.update(why.as_bytes());
            }
        }
        if let Some(p) = &self.post_build {
            h.update([2]);
            h.update(crate::render::build::variables_digest(&p.substitute));
            let mut refs = vec![(String::new(), p.namespace.clone())];
            refs.extend(p.substitute_from.iter().map(|r| {
                let optional = if r.optional { "?" } else { "" };
                (format!("{}{optional}", r.kind), r.name.clone())
            }));
            for (a, b) in refs {
                for s in [a, b] {
                    h.update((s.len() as u64).to_le_bytes());
                    h.update(s.as_bytes());
                }
            }
        }
        h.finalize().into()
    }
}

/// Why an object has no controller provenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoProvenance {
    /// `MissingRevision`: the object itself names no controller object
    /// (no labels, no tracking id, or one naming another object). Nothing
    /// a watch delivers can change that.
    Unnamed(String),
    /// `MissingRevision`: what was looked for and not found.
    Missing(String),
    /// `UntrackedSource`: the controller applies from something that is
    /// not a git branch stale-guard can follow (a Flux OCIRepository or
    /// Bucket, an Argo CD multi-source Application or Helm chart), so it
    /// records no git revision.
    NotGit(String),
    /// `MalformedRevision`: the controller's field holds no commit id.
    Malformed {
        controller: String,
        field: &'static str,
        value: String,
        why: String,
    },
}

fn revision_of(
    controller: &str,
    field: &'static str,
    value: Option<&str>,
) -> Result<(Revision, Option<String>), NoProvenance> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Err(NoProvenance::Missing(format!(
            "{controller} has no {field} yet (it has not started applying anything)"
        )));
    };
    flux::parse_revision(value)
        .map(|(branch, revision)| (revision, branch))
        .map_err(|why| NoProvenance::Malformed {
            controller: controller.to_owned(),
            field,
            value: crate::echo::value(value),
            why,
        })
}

/// The field a Flux Kustomization's revision is read from: written before
/// Flux builds and applies, so it names what is being applied.
pub const FLUX_REVISION_FIELD: &str = "status.lastAttemptedRevision";

/// What a Kustomization (`ns`/`name`) and its GitRepository, when known,
/// say is being applied.
fn flux_claim(
    ns: &str,
    name: &str,
    k: &Arc<Snapshot<Kustomization>>,
    repo: Option<&Snapshot<GitRepository>>,
) -> Result<Provenance, NoProvenance> {
    let controller = format!("Kustomization {ns}/{name}");
    let kind = k.object.spec.source_ref.kind.as_str();
    if !kind.is_empty() && kind != "GitRepository" {
        return Err(NoProvenance::NotGit(format!(
            "{controller} applies from a {}, not a GitRepository: not followed",
            crate::echo::value(kind)
        )));
    }
    let (revision, branch) = revision_of(
        &controller,
        FLUX_REVISION_FIELD,
        k.object.status.last_attempted_revision.as_deref(),
    )?;
    let source =
        k.object
            .git_repository(ns)
            .and_then(|(repo_ns, repo_name)| {
                let repo = repo.ok_or_else(|| {
                    format!("GitRepository {repo_ns}/{repo_name} (its sourceRef) is not known")
                })?;
                let url = repo.object.url().ok_or_else(|| {
                    format!("GitRepository {repo_ns}/{repo_name} has no spec.url")
                })?;
                Ok(GitSource::new(url, repo.object.git_ref()))
            });
    Ok(Provenance {
        controller,
        resource_version: k.meta.resource_version.clone(),
        field: FLUX_REVISION_FIELD,
        revision,
        branch,
        source,
        overlay: k.object.overlay().to_owned(),
        build_from: BuildFrom::Flux(k.clone()),
        build: std::sync::OnceLock::new(),
    })
}

/// What an Application (`ns`/`name`) says is being applied.
fn argo_claim(
    ns: &str,
    name: &str,
    app: &Arc<Snapshot<Application>>,
) -> Result<Provenance, NoProvenance> {
    let controller = format!("Application {ns}/{name}");
    // Argo CD reads spec.sources when it is set, and records their
    // revisions in status.sync.revisions; a chart's is its version.
    if app.object.spec.sources.is_some() {
        return Err(NoProvenance::NotGit(format!(
            "{controller} has several sources (spec.sources): not followed"
        )));
    }
    if let Some(chart) = app.object.chart() {
        return Err(NoProvenance::NotGit(format!(
            "{controller} applies Helm chart {}: not followed",
            crate::echo::value(chart)
        )));
    }
    let (value, field) = app.object.revision();
    let (revision, branch) = revision_of(&controller, field, value)?;
    let source = match app.object.repo_url() {
        Some(url) => Ok(GitSource::new(url, app.object.git_ref())),
        None => Err(format!("{controller} has no spec.source.repoURL")),
    };
    Ok(Provenance {
        controller,
        resource_version: app.meta.resource_version.clone(),
        field,
        revision,
        branch,
        source,
        overlay: app.object.overlay().to_owned(),
        build_from: BuildFrom::Argo(app.clone()),
        build: std::sync::OnceLock::new(),
    })
}

/// Claims already read, by the controller object's namespace and name,
/// with the snapshots they were read from. A watch event replaces an
/// object's snapshot, so while the cached snapshots are these very ones
/// (pointer equality) the claim stands, and a review reuses it instead of
/// reading the objects again.
struct ClaimMemo<A, B> {
    entries: RwLock<ByName<Memoised<A, B>>>,
}

struct Memoised<A, B> {
    from: (Arc<Snapshot<A>>, Option<Arc<Snapshot<B>>>),
    claim: Result<Arc<Provenance>, NoProvenance>,
}

impl<A, B> Default for ClaimMemo<A, B> {
    fn default() -> Self {
        ClaimMemo {
            entries: RwLock::new(HashMap::new()),
        }
    }
}

impl<A, B> ClaimMemo<A, B> {
    fn get(
        &self,
        ns: &str,
        name: &str,
        a: &Arc<Snapshot<A>>,
        b: Option<&Arc<Snapshot<B>>>,
    ) -> Option<Result<Arc<Provenance>, NoProvenance>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let m = entries.get(ns)?.get(name)?;
        let same_b = match (&m.from.1, b) {
            (Some(x), Some(y)) => Arc::ptr_eq(x, y),
            (None, None) => true,
            _ => false,
        };
        (Arc::ptr_eq(&m.from.0, a) && same_b).then(|| m.claim.clone())
    }

    /// Keeps `claim`; the memo is emptied first when it holds more than
    /// twice `objects` (the objects it can be about, plus deleted ones).
    fn insert(
        &self,
        ns: &str,
        name: &str,
        from: (Arc<Snapshot<A>>, Option<Arc<Snapshot<B>>>),
        claim: Result<Arc<Provenance>, NoProvenance>,
        objects: usize,
    ) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.values().map(HashMap::len).sum::<usize>() > 2 * objects + 16 {
            entries.clear();
        }
        entries
            .entry(ns.to_owned())
            .or_default()
            .insert(name.to_owned(), Memoised { from, claim });
    }
}

/// The watch-fed caches of the controller objects the rules need.
pub struct ControllerCaches {
    kustomizations: Option<Arc<KindCache<Kustomization>>>,
    git_repositories: Option<Arc<KindCache<GitRepository>>>,
    applications: Option<Arc<KindCache<Application>>>,
    flux_claims: ClaimMemo<Kustomization, GitRepository>,
    argo_claims: ClaimMemo<Application, ()>,
    /// Bumped on every change a lookup or readiness can see.
    changed: watch::Sender<u64>,
    options: CacheOptions,
}

/// The lookups and the notification, for one kind's watch task.
type Changed = Arc<watch::Sender<u64>>;

impl ControllerCaches {
    /// Starts one watch per kind in `kinds` (duplicates ignored), all
    /// stopped when `shutdown` completes.
    pub fn start<F>(client: kube::Client, kinds: &[Watched], shutdown: F) -> Arc<ControllerCaches>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        Self::start_with(client, kinds, shutdown, CacheOptions::default())
    }

    pub fn start_with<F>(
        client: kube::Client,
        kinds: &[Watched],
        shutdown: F,
        options: CacheOptions,
    ) -> Arc<ControllerCaches>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            stop_tx.send_replace(true);
        });
        let (changed, _) = watch::channel(0u64);
        let caches = Arc::new(ControllerCaches {
            kustomizations: kinds
                .contains(&Watched::Kustomizations)
                .then(|| KindCache::new(Watched::Kustomizations.kind())),
            git_repositories: kinds
                .contains(&Watched::GitRepositories)
                .then(|| KindCache::new(Watched::GitRepositories.kind())),
            applications: kinds
                .contains(&Watched::Applications)
                .then(|| KindCache::new(Watched::Applications.kind())),
            flux_claims: ClaimMemo::default(),
            argo_claims: ClaimMemo::default(),
            changed,
            options,
        });
        let notify: Changed = Arc::new(caches.changed.clone());
        let spawn = |kind: Watched| {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.api_resource());
            let config = watcher::Config::default().page_size(caches.options.page_size);
            (api, config, Arc::clone(&notify), stop_rx.clone())
        };
        if let Some(c) = &caches.kustomizations {
            let (api, config, n, stop) = spawn(Watched::Kustomizations);
            tokio::spawn(run_watch(Arc::clone(c), api, config, n, stop));
        }
        if let Some(c) = &caches.git_repositories {
            let (api, config, n, stop) = spawn(Watched::GitRepositories);
            tokio::spawn(run_watch(Arc::clone(c), api, config, n, stop));
        }
        if let Some(c) = &caches.applications {
            let (api, config, n, stop) = spawn(Watched::Applications);
            tokio::spawn(run_watch(Arc::clone(c), api, config, n, stop));
        }
        caches
    }

    /// A Kustomization by namespace and name; None when it is not known
    /// (or Kustomizations are not watched).
    pub fn kustomization(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<Snapshot<Kustomization>>> {
        self.kustomizations.as_ref()?.get(namespace, name)
    }

    pub fn git_repository(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<Snapshot<GitRepository>>> {
        self.git_repositories.as_ref()?.get(namespace, name)
    }

    pub fn application(&self, namespace: &str, name: &str) -> Option<Arc<Snapshot<Application>>> {
        self.applications.as_ref()?.get(namespace, name)
    }

    /// Caches filled once from `objects` (any of the three kinds, others
    /// ignored), every kind listed, no watch: for tests and tools.
    pub fn from_objects(objects: &[DynamicObject]) -> Arc<ControllerCaches> {
        fn fill<T: DeserializeOwned>(
            kind: Watched,
            objects: &[DynamicObject],
        ) -> Option<Arc<KindCache<T>>> {
            let cache = KindCache::<T>::new(kind.kind());
            {
                let mut store = cache.store.write().unwrap_or_else(|e| e.into_inner());
                store.apply(watcher::Event::Init);
                for o in objects.iter().filter(|o| {
                    o.types.as_ref().is_some_and(|t| {
                        t.kind == kind.kind() && t.api_version == kind.api_resource().api_version
                    })
                }) {
                    store.apply(watcher::Event::InitApply(o.clone()));
                }
                store.apply(watcher::Event::InitDone);
            }
            lock(&cache.status).listed = true;
            Some(cache)
        }
        Arc::new(ControllerCaches {
            kustomizations: fill(Watched::Kustomizations, objects),
            git_repositories: fill(Watched::GitRepositories, objects),
            applications: fill(Watched::Applications, objects),
            flux_claims: ClaimMemo::default(),
            argo_claims: ClaimMemo::default(),
            changed: watch::channel(0).0,
            options: CacheOptions::default(),
        })
    }

    /// `provenance: flux`: the Kustomization an object's labels name, its
    /// `status.lastAttemptedRevision`, and its GitRepository's URL and ref.
    /// Read once per version of the two objects (see [`ClaimMemo`]).
    pub fn flux_provenance<K, V>(
        &self,
        labels: Option<&BTreeMap<K, V>>,
    ) -> Result<Arc<Provenance>, NoProvenance>
    where
        K: std::borrow::Borrow<str> + Ord,
        V: AsRef<str>,
    {
        let (ns, name) = flux::kustomization_of(labels).map_err(NoProvenance::Unnamed)?;
        let Some(k) = self.kustomization(ns, name) else {
            return Err(NoProvenance::Missing(format!(
                "Kustomization {ns}/{name} (named by the object's labels) is not known"
            )));
        };
        let repo = match k.object.git_repository(ns) {
            Ok((repo_ns, repo_name)) => self.git_repository(repo_ns, repo_name),
            Err(_) => None,
        };
        if let Some(claim) = self.flux_claims.get(ns, name, &k, repo.as_ref()) {
            return claim;
        }
        let claim = flux_claim(ns, name, &k, repo.as_deref()).map(Arc::new);
        let bound = self.kustomizations.as_ref().map_or(0, |c| c.len());
        self.flux_claims
            .insert(ns, name, (k, repo), claim.clone(), bound);
        claim
    }

    /// `provenance: argo`: the Application the object's tracking id names
    /// (the id must name this very object), the revision it is applying,
    /// and its source. `default_namespace` is where Applications live
    /// when the id does not say (`argo.namespace`).
    pub fn argo_provenance(
        &self,
        annotations: Option<&BTreeMap<String, String>>,
        object: (&str, &str, &str, &str),
        default_namespace: &str,
    ) -> Result<Arc<Provenance>, NoProvenance> {
        let (api_version, kind, namespace, name) = object;
        let Some(id) = annotations
            .and_then(|a| a.get(argo::TRACKING_ID))
            .filter(|v| !v.trim().is_empty())
        else {
            return Err(NoProvenance::Unnamed(format!(
                "the object has no annotation {} (set by Argo CD's annotation tracking)",
                argo::TRACKING_ID
            )));
        };
        let id = TrackingId::parse(id).map_err(NoProvenance::Unnamed)?;
        id.check_names(api_version, kind, namespace, name)
            .map_err(NoProvenance::Unnamed)?;
        let (app_ns, app_name) = id.application(default_namespace);
        let Some(app) = self.application(&app_ns, &app_name) else {
            return Err(NoProvenance::Missing(format!(
                "Application {app_ns}/{app_name} (named by the tracking id) is not known"
            )));
        };
        if let Some(claim) = self.argo_claims.get(&app_ns, &app_name, &app, None) {
            return claim;
        }
        let claim = argo_claim(&app_ns, &app_name, &app).map(Arc::new);
        let bound = self.applications.as_ref().map_or(0, |c| c.len());
        self.argo_claims
            .insert(&app_ns, &app_name, (app, None), claim.clone(), bound);
        claim
    }

    /// The status of every watched kind.
    pub fn status(&self) -> Vec<KindStatus> {
        let mut out = Vec::new();
        if let Some(c) = &self.kustomizations {
            out.push(c.status());
        }
        if let Some(c) = &self.git_repositories {
            out.push(c.status());
        }
        if let Some(c) = &self.applications {
            out.push(c.status());
        }
        out
    }

    /// Ready once every watched kind has had its first complete list, and
    /// while none has been broken for longer than `unready_after`; else
    /// one line per kind that is not, saying why and since when.
    pub fn ready(&self) -> Result<(), Vec<String>> {
        let now = SystemTime::now();
        let problems: Vec<String> = self
            .status()
            .into_iter()
            .filter_map(|s| {
                // "since <time> (<how long>): <error>"
                let broken = s.broken_since.map(|t| {
                    let d = now.duration_since(t).unwrap_or_default();
                    let text = format!(
                        "since {} ({}){}",
                        humantime::format_rfc3339_seconds(t),
                        humantime::format_duration(Duration::from_secs(d.as_secs())),
                        s.last_error
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    );
                    (d, text)
                });
                match broken {
                    _ if !s.listed => Some(format!(
                        "{}: waiting for the first complete list{}",
                        s.kind,
                        broken
                            .map(|(_, text)| format!(", failing {text}"))
                            .unwrap_or_default()
                    )),
                    Some((d, text)) if d >= self.options.unready_after => {
                        Some(format!("{}: watch broken {text}", s.kind))
                    }
                    _ => None,
                }
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// A receiver that sees a new value on every change (an object, a
    /// list, a watch breaking or recovering).
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// `f` now, or as soon as a change makes it `Some`, or None at
    /// `deadline`. For the race where a controller patches its status just
    /// before applying, and the watch delivers that after the review.
    pub async fn wait_for<T>(
        &self,
        deadline: Instant,
        f: impl Fn(&Self) -> Option<T>,
    ) -> Option<T> {
        // Subscribed before the first look, so no change falls in between.
        let mut rx = self.changed.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(t) = f(self) {
                return Some(t);
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return f(self) },
                _ = tokio::time::sleep_until(deadline) => return f(self),
            }
        }
    }
}

/// A watch error in one line: what failed, then the API server's code,
/// reason and message (kube's own text nests the whole Status).
fn watch_error(e: &watcher::Error) -> String {
    let client = |what: &str, e: &kube::Error| match e {
        kube::Error::Api(s) => format!("{what}: {} {}: {}", s.code, s.reason, s.message),
        other => format!("{what}: {other}"),
    };
    match e {
        watcher::Error::InitialListFailed(e) => client("list failed", e),
        watcher::Error::WatchStartFailed(e) => client("watch failed to start", e),
        watcher::Error::WatchFailed(e) => client("watch failed", e),
        watcher::Error::WatchError(s) => {
            format!(
                "watch ended with an error: {} {}: {}",
                s.code, s.reason, s.message
            )
        }
        other => other.to_string(),
    }
}

/// One kind's watch, until `stop`.
async fn run_watch<T: DeserializeOwned + Send + Sync + 'static>(
    cache: Arc<KindCache<T>>,
    api: Api<DynamicObject>,
    config: watcher::Config,
    notify: Changed,
    mut stop: watch::Receiver<bool>,
) {
    let kind = lock(&cache.status).kind;
    let mut backoff = DefaultBackoff::default();
    let bump = || notify.send_modify(|g| *g = g.wrapping_add(1));
    loop {
        let stream = watcher::watcher(api.clone(), config.clone());
        let mut stream = std::pin::pin!(stream);
        let error = loop {
            let next = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                next = stream.next() => next,
            };
            match next {
                None => break "the watch stream ended".to_owned(),
                Some(Ok(event)) => {
                    let applied = cache
                        .store
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .apply(event);
                    let mut status = lock(&cache.status);
                    status.events += 1;
                    // A list or watch answered: the server is back.
                    let recovered =
                        applied != Applied::Started && status.broken_since.take().is_some();
                    match applied {
                        Applied::Started | Applied::Buffered if !recovered => continue,
                        Applied::Started | Applied::Buffered | Applied::Changed => {}
                        Applied::Listed => status.listed = true,
                        Applied::Skipped(why) => {
                            status.skipped += 1;
                            tracing::warn!(kind, reason = %why, "a controller object does not read; left out");
                        }
                    }
                    drop(status);
                    bump();
                }
                Some(Err(watcher::Error::WatchError(e))) if e.code == 410 => {
                    // The watcher relists by itself.
                    lock(&cache.status).relists += 1;
                    tracing::info!(kind, "watch expired (410 Gone): relisting");
                }
                Some(Err(e)) => break crate::echo::value(&watch_error(&e)),
            }
        };
        {
            let mut status = lock(&cache.status);
            status.restarts += 1;
            status.broken_since.get_or_insert_with(SystemTime::now);
            status.last_error = Some(error.clone());
        }
        bump();
        let delay = backoff.next().unwrap_or(Duration::from_secs(30));
        tracing::warn!(kind, error = %error, retry_in = ?delay, "controller watch broken");
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn objects(v: serde_json::Value) -> Vec<DynamicObject> {
        serde_json::from_value(v).unwrap()
    }

    fn caches() -> Arc<ControllerCaches> {
        ControllerCaches::from_objects(&objects(json!([
            {"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
             "metadata": {"namespace": "flux-system", "name": "apps", "resourceVersion": "11"},
             "spec": {"path": "./overlays/prod", "sourceRef": {"kind": "GitRepository", "name": "gitops"}},
             "status": {"lastAttemptedRevision": format!("main@sha1:{B}"),
                        "lastAppliedRevision": format!("main@sha1:{A}")}},
            {"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
             "metadata": {"namespace": "flux-system", "name": "new"},
             "spec": {"sourceRef": {"kind": "GitRepository", "name": "missing"}}},
            {"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
             "metadata": {"namespace": "flux-system", "name": "odd"},
             "spec": {"sourceRef": {"kind": "GitRepository", "name": "gitops"}},
             "status": {"lastAttemptedRevision": "main@sha1:abc"}},
            {"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
             "metadata": {"namespace": "flux-system", "name": "gitops"},
             "spec": {"url": "https://git.example.com/gitops.git", "ref": {"branch": "main"}}},
            {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
             "metadata": {"namespace": "argocd", "name": "web", "resourceVersion": "12"},
             "spec": {"source": {"repoURL": "https://git.example.com/gitops", "path": "overlays/prod",
                                 "targetRevision": "main"}},
             "status": {"sync": {"revision": A},
                        "operationState": {"phase": "Running", "operation": {"sync": {"revision": B}}}}},
            {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
             "metadata": {"namespace": "team-a", "name": "multi"},
             "spec": {"sources": [{"repoURL": "x"}, {"repoURL": "y"}]},
             "status": {"sync": {"revision": A}}}
        ])))
    }

    fn labels(ns: &str, name: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (flux::NAME_LABEL.to_owned(), name.to_owned()),
            (flux::NAMESPACE_LABEL.to_owned(), ns.to_owned()),
        ])
    }

    fn missing(r: Result<Arc<Provenance>, NoProvenance>) -> String {
        match r {
            Err(NoProvenance::Missing(why) | NoProvenance::Unnamed(why)) => why,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flux_provenance_reads_the_attempted_revision_and_the_source() {
        let c = caches();
        assert!(c.ready().is_ok());
        let p = c
            .flux_provenance(Some(&labels("flux-system", "apps")))
            .unwrap();
        assert_eq!(p.revision, Revision::parse(B).unwrap());
        assert_eq!(p.branch.as_deref(), Some("main"));
        assert_eq!(p.field, "status.lastAttemptedRevision");
        assert_eq!(p.controller, "Kustomization flux-system/apps");
        assert_eq!(p.resource_version, "11");
        assert_eq!(p.overlay, "./overlays/prod");
        assert_eq!(
            p.source,
            Ok(GitSource::new(
                "https://git.example.com/gitops.git",
                sources::GitRef::Branch("main".into())
            ))
        );

        let why = missing(c.flux_provenance::<String, String>(None));
        assert!(why.contains(flux::NAME_LABEL), "{why}");
        let why = missing(c.flux_provenance(Some(&labels("flux-system", "nope"))));
        assert!(why.contains("Kustomization flux-system/nope"), "{why}");
        let why = missing(c.flux_provenance(Some(&labels("flux-system", "new"))));
        assert!(
            why.contains("has no status.lastAttemptedRevision yet"),
            "{why}"
        );
        match c.flux_provenance(Some(&labels("flux-system", "odd"))) {
            Err(NoProvenance::Malformed { value, .. }) => assert_eq!(value, "main@sha1:abc"),
            other => panic!("{other:?}"),
        }
    }

    /// A claim is read once per version of its objects: the same claim
    /// while they stand, a new one when either changes.
    #[test]
    fn a_claim_is_reused_until_its_objects_change() {
        let c = caches();
        let read = || {
            c.flux_provenance(Some(&labels("flux-system", "apps")))
                .unwrap()
        };
        let first = read();
        assert!(Arc::ptr_eq(&first, &read()), "read again");
        let apply = |kind: &KindCache<GitRepository>, o: serde_json::Value| {
            let o: DynamicObject = serde_json::from_value(o).unwrap();
            let applied = kind.store.write().unwrap().apply(watcher::Event::Apply(o));
            assert_eq!(applied, Applied::Changed);
        };
        apply(
            c.git_repositories.as_ref().unwrap(),
            json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
                   "metadata": {"namespace": "flux-system", "name": "gitops"},
                   "spec": {"url": "https://git.example.com/moved.git", "ref": {"branch": "main"}}}),
        );
        let moved = read();
        assert!(!Arc::ptr_eq(&first, &moved));
        assert_eq!(
            moved.source.as_ref().map(|s| s.url.as_str()),
            Ok("https://git.example.com/moved.git")
        );
        assert!(Arc::ptr_eq(&moved, &read()));
        let k: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"namespace": "flux-system", "name": "apps", "resourceVersion": "12"},
            "spec": {"path": "./overlays/prod", "sourceRef": {"kind": "GitRepository", "name": "gitops"}},
            "status": {"lastAttemptedRevision": format!("main@sha1:{A}")}}))
        .unwrap();
        c.kustomizations
            .as_ref()
            .unwrap()
            .store
            .write()
            .unwrap()
            .apply(watcher::Event::Apply(k));
        let newer = read();
        assert_eq!(newer.revision, Revision::parse(A).unwrap());
        assert_eq!(newer.resource_version, "12");
    }

    #[test]
    fn argo_provenance_checks_the_tracking_id() {
        let c = caches();
        let ann = |id: &str| BTreeMap::from([(argo::TRACKING_ID.to_owned(), id.to_owned())]);
        let obj = ("apps/v1", "Deployment", "prod", "web");
        let p = c
            .argo_provenance(Some(&ann("web:apps/Deployment:prod/web")), obj, "argocd")
            .unwrap();
        // An operation is running: its revision, not status.sync's.
        assert_eq!(p.revision, Revision::parse(B).unwrap());
        assert_eq!(p.field, argo::OPERATION_REVISION_FIELD);
        assert_eq!(p.overlay, "overlays/prod");
        assert_eq!(
            p.source,
            Ok(GitSource::new(
                "https://git.example.com/gitops",
                sources::GitRef::Branch("main".into())
            ))
        );
        let why = missing(c.argo_provenance(None, obj, "argocd"));
        assert!(why.contains(argo::TRACKING_ID), "{why}");
        // Copied from another object: refused.
        let why =
            missing(c.argo_provenance(Some(&ann("web:apps/Deployment:prod/api")), obj, "argocd"));
        assert!(why.contains("name \"api\""), "{why}");
        let why =
            missing(c.argo_provenance(Some(&ann("other:apps/Deployment:prod/web")), obj, "argocd"));
        assert!(why.contains("Application argocd/other"), "{why}");
        // The id's namespace wins over the default; several sources are
        // not followed.
        match c.argo_provenance(
            Some(&ann("team-a_multi:apps/Deployment:prod/web")),
            obj,
            "argocd",
        ) {
            Err(NoProvenance::NotGit(why)) => {
                assert!(why.contains("Application team-a/multi") && why.contains("spec.sources"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_relist_replaces_the_objects_and_an_unreadable_update_removes_one() {
        let mut store = Store::<Kustomization>::default();
        let k = |name: &str, path: serde_json::Value| -> DynamicObject {
            serde_json::from_value(json!({
                "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
                "metadata": {"namespace": "a", "name": name}, "spec": {"path": path}}))
            .unwrap()
        };
        store.apply(watcher::Event::Init);
        store.apply(watcher::Event::InitApply(k("x", json!("p"))));
        store.apply(watcher::Event::InitApply(k("y", json!("p"))));
        assert!(store.is_empty(), "not visible before the list completes");
        assert_eq!(store.apply(watcher::Event::InitDone), Applied::Listed);
        assert_eq!(store.len(), 2);
        store.apply(watcher::Event::Init);
        store.apply(watcher::Event::InitApply(k("y", json!("q"))));
        assert_eq!(store.len(), 2, "the old objects serve during a relist");
        store.apply(watcher::Event::InitDone);
        assert!(store.get("a", "x").is_none());
        assert_eq!(store.get("a", "y").unwrap().object.overlay(), "q");
        assert!(matches!(
            store.apply(watcher::Event::Apply(k("y", json!(7)))),
            Applied::Skipped(_)
        ));
        assert!(store.get("a", "y").is_none());
    }
}
