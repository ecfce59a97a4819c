//! The git mirror: a cached, always-fresh bare copy of each GitOps source.
//!
//! One [`Mirror`] per configured source keeps a bare repository under
//! `mirrorDir/<source name>`, tracks the head of one branch (polling, and on
//! demand), and answers the webhook's questions about a revision from local
//! objects only ([`Mirror::facts`]). The network side runs the git CLI
//! (isolated configuration, timeout, credentials from files through a
//! credential helper); the read side uses gix and an in-memory index of the
//! branch history, so no request spawns a process. See `docs/mirror.md`.

mod git;
mod history;
mod state;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

use gix::ObjectId;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use history::{BuildKind, HistoryIndex};

pub use git::redact_url;

/// One configured source.
#[derive(Clone, Debug)]
pub struct SourceSpec {
    /// Names the mirror's directory: `[A-Za-z0-9._-]`, not starting with `.`.
    pub name: String,
    /// Any git URL (`https://`, `http://`, `git://`, `ssh://`, scp-like) or a
    /// local path. Credentials belong in [`Credentials`], not in the URL.
    pub url: String,
    pub branch: String,
    pub poll_interval: Duration,
    /// Bound on every git process (clone, fetch); it is killed after this.
    pub fetch_timeout: Duration,
    pub credentials: Option<Credentials>,
    /// When the poller repacks the mirror.
    pub maintenance: MaintenancePolicy,
    /// How many fetches reviews may trigger (polls are not counted).
    pub on_demand: OnDemandFetches,
}

/// The fetches that lookups of unknown revisions ([`Mirror::ensure_known`])
/// may start, per source: a token bucket of `burst` fetches, refilled at
/// `per_minute`. A lookup that finds no token waits for the next one if it
/// is due before its deadline, else is answered `StillUnknown` at once;
/// joining a fetch already running costs nothing. Fetches by id only
/// spend a token when one more stays for branch fetches. `per_minute: 0`
/// turns on-demand fetches off (only polls fetch). Configured as
/// `limits.onDemandFetches`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnDemandFetches {
    #[serde(default = "OnDemandFetches::default_per_minute")]
    pub per_minute: u32,
    #[serde(default = "OnDemandFetches::default_burst")]
    pub burst: u32,
}

impl OnDemandFetches {
    fn default_per_minute() -> u32 {
        30
    }
    fn default_burst() -> u32 {
        5
    }
}

impl Default for OnDemandFetches {
    /// 30 a minute, 5 at once: a flood of made-up revisions costs the git
    /// server at most one fetch every 2 s per source, while a real push
    /// reviewed before the next poll still waits at most 2 s for its fetch.
    fn default() -> Self {
        OnDemandFetches {
            per_minute: Self::default_per_minute(),
            burst: Self::default_burst(),
        }
    }
}

/// The token bucket of [`OnDemandFetches`].
struct FetchBudget {
    limit: OnDemandFetches,
    tokens: f64,
    at: tokio::time::Instant,
}

impl FetchBudget {
    fn new(limit: OnDemandFetches) -> Self {
        FetchBudget {
            limit,
            tokens: f64::from(limit.burst),
            at: tokio::time::Instant::now(),
        }
    }

    /// Takes a token if more than `keep` remain; otherwise how long until
    /// enough are due (`None`: never, on-demand fetches are off).
    fn take(&mut self, now: tokio::time::Instant, keep: f64) -> Result<(), Option<Duration>> {
        let per_second = f64::from(self.limit.per_minute) / 60.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(f64::from(self.limit.burst));
        self.at = now;
        let need = 1.0 + keep;
        if self.tokens >= need {
            self.tokens -= 1.0;
            return Ok(());
        }
        if per_second <= 0.0 || need > f64::from(self.limit.burst) {
            return Err(None);
        }
        // Bounded: at most `burst` tokens at no less than 1/60 a second.
        Err(Some(Duration::from_secs_f64(
            ((need - self.tokens) / per_second).max(0.0),
        )))
    }
}

/// When the poller repacks the mirror: after a successful fetch, if the
/// mirror holds at least `loose_objects` loose objects or `packs` packs,
/// and the last maintenance started at least `min_interval` ago. The
/// counts are taken with a few directory reads; the repack is geometric
/// (amortised O(new objects)). See `docs/mirror.md`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaintenancePolicy {
    /// `false` turns maintenance off (the poller only fetches).
    pub enabled: bool,
    pub loose_objects: usize,
    pub packs: usize,
    pub min_interval: Duration,
    /// Bound on the repack process; it is killed after this.
    pub timeout: Duration,
}

impl Default for MaintenancePolicy {
    /// 512 loose objects or 32 packs, at most every 10 minutes, 10 minute
    /// timeout. git's own `gc --auto` waits for 6,700 loose objects or 50
    /// packs; a mirror fetched every 30 s gets there in hours, and a smaller
    /// geometric repack is cheaper than a larger one.
    fn default() -> Self {
        MaintenancePolicy {
            enabled: true,
            loose_objects: 512,
            packs: 32,
            min_interval: Duration::from_secs(600),
            timeout: Duration::from_secs(600),
        }
    }
}

impl SourceSpec {
    /// A spec with the defaults: poll every 30 s, fetch timeout 60 s, no
    /// credentials.
    pub fn new(name: impl Into<String>, url: impl Into<String>, branch: impl Into<String>) -> Self {
        SourceSpec {
            name: name.into(),
            url: url.into(),
            branch: branch.into(),
            poll_interval: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(60),
            credentials: None,
            maintenance: MaintenancePolicy::default(),
            on_demand: OnDemandFetches::default(),
        }
    }

    fn validate(&self) -> Result<(), MirrorError> {
        let bad = |field: &str, why: &str| Err(MirrorError::InvalidSpec(format!("{field}: {why}")));
        if self.name.is_empty()
            || self.name.starts_with('.')
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return bad(
                "name",
                "must be non-empty, [A-Za-z0-9._-], not starting with '.'",
            );
        }
        if self.url.is_empty() || self.url.starts_with('-') {
            return bad("url", "must be a git URL or a path");
        }
        if self.branch.is_empty()
            || self.branch.starts_with('-')
            || self.branch.starts_with('/')
            || self.branch.ends_with('/')
            || self.branch.contains("..")
            || self.branch.chars().any(|c| {
                c.is_whitespace()
                    || c.is_control()
                    || matches!(c, ':' | '~' | '^' | '?' | '*' | '[' | '\\')
            })
        {
            return bad("branch", "not a valid branch name");
        }
        if self.poll_interval.is_zero() {
            return bad("pollInterval", "must be positive");
        }
        if self.fetch_timeout.is_zero() {
            return bad("fetchTimeout", "must be positive");
        }
        if self.maintenance.timeout.is_zero() {
            return bad("maintenance.timeout", "must be positive");
        }
        Ok(())
    }
}

/// Credentials, always as files (a mounted Secret): read by git at fetch
/// time, never by a log line, never written into the mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// HTTPS basic auth: both files hold one value (a trailing newline is
    /// ignored).
    Basic {
        username_file: PathBuf,
        password_file: PathBuf,
    },
    /// HTTPS token, sent as the basic-auth password with `username`
    /// (default `x-access-token`, accepted by GitHub; GitLab and Gitea
    /// accept any name).
    Token {
        token_file: PathBuf,
        username: Option<String>,
    },
    /// SSH: the private key (mode 0400/0600, as ssh demands) and a
    /// known_hosts file; host keys are checked strictly.
    Ssh {
        private_key_file: PathBuf,
        known_hosts_file: PathBuf,
    },
}

/// An error that prevents a mirror from existing at all (local problems).
/// Remote failures never fail [`Mirror::open`]; they show in [`MirrorStatus`].
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("invalid source: {0}")]
    InvalidSpec(String),
    #[error("mirror directory {path}: {reason}")]
    Local { path: String, reason: String },
}

/// What kind of failure a fetch hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchErrorKind {
    /// The remote did not answer within `fetch_timeout`.
    Timeout,
    /// The remote refused the credentials (or asked for some).
    Auth,
    /// The branch does not exist on the remote (deleted).
    BranchMissing,
    /// The remote could not be reached or is not a repository.
    Unreachable,
    /// A local problem: git missing, disk, a mirror that could not be repaired.
    Local,
    /// Anything else git reported.
    Other,
}

impl FetchErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FetchErrorKind::Timeout => "timeout",
            FetchErrorKind::Auth => "auth",
            FetchErrorKind::BranchMissing => "branch-missing",
            FetchErrorKind::Unreachable => "unreachable",
            FetchErrorKind::Local => "local",
            FetchErrorKind::Other => "other",
        }
    }
}

/// A failed fetch. The message never holds a secret (URLs are redacted,
/// credentials are only ever in files git reads).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct FetchFailure {
    pub kind: FetchErrorKind,
    pub message: String,
}

/// The branch head as last observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub commit: ObjectId,
    /// Committer time, seconds since the epoch.
    pub commit_time: i64,
    /// When this mirror first saw this head.
    pub observed_at: SystemTime,
    /// The head before this one, if this process saw it move (the grace
    /// window lets it pass for a while after `observed_at`).
    pub previous: Option<ObjectId>,
}

/// The last failed fetch.
#[derive(Clone, Debug)]
pub struct FailureRecord {
    pub at: SystemTime,
    pub kind: FetchErrorKind,
    pub message: String,
}

/// Health of one mirror, for readiness, metrics and `MirrorUnavailable`.
#[derive(Clone, Debug)]
pub struct MirrorStatus {
    pub head: Option<Head>,
    /// Last successful fetch; survives restarts (kept on disk).
    pub last_success: Option<SystemTime>,
    pub last_failure: Option<FailureRecord>,
    /// The branch was not found on the remote at the last fetch; `head` is
    /// the last head seen before.
    pub branch_missing: bool,
    /// Branch fetches attempted by this process.
    pub fetches: u64,
    /// Fetches of single commits by id (on-demand, for revisions not on the branch).
    pub revision_fetches: u64,
    /// Lookups of unknown revisions answered without the fetch they would
    /// have started: the on-demand budget was spent until past their
    /// deadline.
    pub on_demand_refused: u64,
    pub consecutive_failures: u64,
    /// Times the head moved to a commit that does not descend from the old head.
    pub history_rewrites: u64,
    /// Times the mirror directory was found missing or corrupt and rebuilt.
    pub repairs: u64,
    /// Commits in the branch history index.
    pub commits: usize,
    /// Repacks run by this process (successful or not).
    pub maintenance_runs: u64,
    /// The last successful repack.
    pub last_maintenance: Option<MaintenanceReport>,
    /// The last repack's error, if it failed (cleared by a success).
    pub maintenance_failure: Option<FailureRecord>,
    /// A branch fetch is running now (the first clone, a poll or an
    /// on-demand fetch).
    pub fetching: bool,
}

/// What one repack of the mirror did (object counts from the directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaintenanceReport {
    pub at: SystemTime,
    pub duration: Duration,
    pub before: ObjectCounts,
    pub after: ObjectCounts,
}

/// Packs and loose objects in the mirror's object directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectCounts {
    pub packs: usize,
    pub loose_objects: usize,
}

impl MirrorStatus {
    /// Time since the last successful fetch; `None` if never synced.
    pub fn staleness(&self, now: SystemTime) -> Option<Duration> {
        self.last_success
            .map(|t| now.duration_since(t).unwrap_or(Duration::ZERO))
    }

    /// Synced, and the last successful fetch is within `max` of `now`
    /// (contract: otherwise `MirrorUnavailable`, and `/readyz` is unready).
    pub fn is_fresh(&self, max: Duration, now: SystemTime) -> bool {
        self.head.is_some() && self.staleness(now).is_some_and(|s| s <= max)
    }
}

/// What the mirror knows about a revision, from local objects only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionFacts {
    pub revision: ObjectId,
    /// The head these facts are relative to (`None`: never synced).
    pub head: Option<ObjectId>,
    /// A commit with this id is in the mirror.
    pub known: bool,
    pub is_head: bool,
    /// A strict ancestor of head (false for head itself).
    pub is_ancestor_of_head: bool,
    /// `git rev-list --count <revision>..<head>` when on the branch (0 for head).
    pub behind_commits: Option<u64>,
    /// Committer time of the revision, seconds since the epoch.
    pub commit_time: Option<i64>,
    pub head_commit_time: Option<i64>,
}

impl RevisionFacts {
    /// Head or an ancestor of head.
    pub fn on_branch(&self) -> bool {
        self.is_head || self.is_ancestor_of_head
    }

    /// How long before head's commit the revision was committed (zero if
    /// the clocks say otherwise); `None` unless both times are known.
    pub fn behind_time(&self) -> Option<Duration> {
        let (r, h) = (self.commit_time?, self.head_commit_time?);
        Some(Duration::from_secs(h.saturating_sub(r).max(0) as u64))
    }
}

/// The answer of [`Mirror::ensure_known`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Known,
    StillUnknown,
}

/// What a successful fetch changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchReport {
    pub head: ObjectId,
    pub head_changed: bool,
    pub history_rewritten: bool,
    pub repaired: bool,
}

type FetchResult = Result<FetchReport, FetchFailure>;

struct Snapshot {
    head: Head,
    index: Arc<HistoryIndex>,
}

#[derive(Default)]
struct Counters {
    last_success: Option<SystemTime>,
    last_failure: Option<FailureRecord>,
    branch_missing: bool,
    fetches: u64,
    revision_fetches: u64,
    on_demand_refused: u64,
    consecutive_failures: u64,
    history_rewrites: u64,
    repairs: u64,
    maintenance_runs: u64,
    /// When the last repack started (gates `min_interval`, failed or not).
    maintenance_started: Option<std::time::Instant>,
    last_maintenance: Option<MaintenanceReport>,
    maintenance_failure: Option<FailureRecord>,
}

struct Inflight {
    branch: Option<watch::Receiver<Option<FetchResult>>>,
    /// Branch fetches started and completed; one runs at a time, so fetch
    /// number `n` (counted from 1) has completed once `completed >= n`.
    started: u64,
    completed: u64,
    revisions: HashMap<ObjectId, watch::Receiver<Option<bool>>>,
    /// What lookups may still start (polls do not spend it).
    budget: FetchBudget,
}

/// A mirror of one source. Create with [`Mirror::open`]; share as `Arc`.
pub struct Mirror {
    spec: SourceSpec,
    mirror_dir: PathBuf,
    path: PathBuf,
    git: git::GitCli,
    repo: RwLock<gix::ThreadSafeRepository>,
    snapshot: RwLock<Option<Arc<Snapshot>>>,
    counters: Mutex<Counters>,
    inflight: Mutex<Inflight>,
    /// Serialises everything that writes into the mirror directory.
    write_lock: tokio::sync::Mutex<()>,
    /// The head commit, sent on every move (renderings start from it).
    head_tx: watch::Sender<Option<ObjectId>>,
    facts_cache: moka::sync::Cache<(ObjectId, ObjectId), RevisionFacts>,
    /// Revisions a branch fetch, started after they were asked for, did
    /// not bring (nor a fetch by id, when the budget allowed one): answered
    /// "still unknown" without another fetch until the head moves (a push
    /// seen by a poll or any fetch), which empties it.
    unknown: moka::sync::Cache<ObjectId, ()>,
}

/// Revisions remembered as not found (a few MB at most).
const UNKNOWN_CAPACITY: u64 = 50_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn open_repo(path: &Path) -> Result<gix::ThreadSafeRepository, String> {
    gix::open_opts(path, gix::open::Options::isolated())
        .map(gix::Repository::into_sync)
        .map_err(|e| e.to_string())
}

/// What was found in the mirror directory (a one-off value: size is moot).
#[allow(clippy::large_enum_variant)]
enum Found {
    Missing,
    Corrupt(String),
    /// A valid repository; the branch history if the branch exists.
    Valid(gix::ThreadSafeRepository, Option<Box<(HistoryIndex, i64)>>),
}

/// Opens and checks the mirror at `path`: the branch must resolve to a
/// readable commit and its whole history must be readable.
fn inspect(path: &Path, branch: &str) -> Found {
    match std::fs::read_dir(path) {
        Err(_) => return Found::Missing,
        Ok(mut entries) => {
            if entries.next().is_none() {
                return Found::Missing;
            }
        }
    }
    let repo = match open_repo(path) {
        Ok(r) => r,
        Err(e) => return Found::Corrupt(e),
    };
    let local = repo.to_thread_local();
    let head = match resolve_branch(&local, branch) {
        Ok(Some(id)) => id,
        Ok(None) => return Found::Valid(repo, None),
        Err(e) => return Found::Corrupt(e),
    };
    match HistoryIndex::build(&local, head, None) {
        Ok((index, _)) => match index.commit_time(&head) {
            Some(t) => Found::Valid(repo, Some(Box::new((index, t)))),
            None => Found::Corrupt("head missing from its own history".into()),
        },
        Err(e) => Found::Corrupt(e.to_string()),
    }
}

fn resolve_branch(repo: &gix::Repository, branch: &str) -> Result<Option<ObjectId>, String> {
    let name = format!("refs/heads/{branch}");
    match repo.try_find_reference(name.as_str()) {
        Ok(Some(mut r)) => r
            .peel_to_id()
            .map(|id| Some(id.detach()))
            .map_err(|e| format!("{name}: {e}")),
        Ok(None) => Ok(None),
        Err(e) => Err(format!("{name}: {e}")),
    }
}

/// Cheap check before a fetch: the directory still looks like a bare repo.
fn looks_like_repo(path: &Path) -> bool {
    std::fs::metadata(path.join("HEAD")).is_ok_and(|m| m.len() > 0)
        && path.join("objects").is_dir()
        && path.join("refs").is_dir()
}

/// Packs (`objects/pack/*.pack`) and loose objects (`objects/xx/*`, skipping
/// git's temporary files) of the bare repository at `path`.
fn count_objects(path: &Path) -> Option<ObjectCounts> {
    let objects = path.join("objects");
    let packs = std::fs::read_dir(objects.join("pack"))
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
        .count();
    let mut loose_objects = 0;
    for entry in std::fs::read_dir(&objects).ok()?.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.len() != 2 || !name.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        if let Ok(dir) = std::fs::read_dir(entry.path()) {
            loose_objects += dir
                .filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().starts_with("tmp_"))
                .count();
        }
    }
    Some(ObjectCounts {
        packs,
        loose_objects,
    })
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

impl Mirror {
    /// Opens the mirror of `spec` under `mirror_dir/<spec.name>`: reuses an
    /// existing mirror without reaching the remote (its last successful
    /// fetch is read from disk), clones on first start, and rebuilds a
    /// missing, empty or corrupt mirror. A remote that fails the first clone
    /// does not fail `open`: the mirror is returned unsynced
    /// (`head() == None`, the error in [`Mirror::status`]) and the poller
    /// keeps trying.
    pub async fn open(spec: SourceSpec, mirror_dir: &Path) -> Result<Arc<Mirror>, MirrorError> {
        let mirror = Self::open_local(spec, mirror_dir).await?;
        if mirror.head().is_none()
            && let Err(e) = mirror.refresh().await
        {
            warn!(source = %mirror.spec.name, error = %e, "first fetch failed; will retry at each poll");
        }
        Ok(mirror)
    }

    /// [`Mirror::open`] without reaching the remote: an existing mirror is
    /// reused, a missing or corrupt one is replaced by an empty repository,
    /// and a mirror without the branch is returned unsynced. The server
    /// opens its mirrors this way, so that a hanging remote cannot keep it
    /// from serving: the poller's first fetch (at once when unsynced) does
    /// the clone in the background.
    pub async fn open_local(
        spec: SourceSpec,
        mirror_dir: &Path,
    ) -> Result<Arc<Mirror>, MirrorError> {
        spec.validate()?;
        let local_err = |path: &Path, reason: String| MirrorError::Local {
            path: path.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(mirror_dir).map_err(|e| local_err(mirror_dir, e.to_string()))?;
        let path = mirror_dir.join(&spec.name);
        let git = git::GitCli::new(
            &spec.url,
            &spec.branch,
            spec.credentials.clone(),
            spec.fetch_timeout,
            mirror_dir.to_path_buf(),
        );
        let found = {
            let (p, b) = (path.clone(), spec.branch.clone());
            tokio::task::spawn_blocking(move || inspect(&p, &b))
                .await
                .map_err(|e| local_err(&path, e.to_string()))?
        };
        let mut repairs = 0;
        let (repo, history) = match found {
            Found::Valid(repo, history) => (repo, history),
            Found::Missing => {
                info!(source = %spec.name, url = %git.redacted_url(), "no mirror yet; cloning");
                (
                    Self::init_fresh(&git, mirror_dir, &path, &spec.name).await?,
                    None,
                )
            }
            Found::Corrupt(reason) => {
                warn!(source = %spec.name, %reason, "mirror is corrupt; discarding it and cloning again");
                repairs = 1;
                (
                    Self::init_fresh(&git, mirror_dir, &path, &spec.name).await?,
                    None,
                )
            }
        };
        let mut counters = Counters {
            repairs,
            ..Counters::default()
        };
        let snapshot = history.map(|boxed| {
            let (index, commit_time) = *boxed;
            let saved = state::read(&path).filter(|s| {
                s.version == 1 && s.url == git.redacted_url() && s.branch == spec.branch
            });
            let head = index.head();
            let observed_at = match &saved {
                Some(s) => {
                    counters.last_success = Some(state::from_ms(s.last_success_ms));
                    if ObjectId::from_hex(s.head.as_bytes()).ok() == Some(head) {
                        state::from_ms(s.head_observed_ms)
                    } else {
                        state::from_ms(s.last_success_ms)
                    }
                }
                None => SystemTime::now(),
            };
            Arc::new(Snapshot {
                head: Head {
                    commit: head,
                    commit_time,
                    observed_at,
                    previous: None,
                },
                index: Arc::new(index),
            })
        });
        let budget = FetchBudget::new(spec.on_demand);
        let head_tx = watch::Sender::new(snapshot.as_ref().map(|s| s.head.commit));
        let mirror = Arc::new(Mirror {
            head_tx,
            facts_cache: moka::sync::Cache::new(100_000),
            unknown: moka::sync::Cache::new(UNKNOWN_CAPACITY),
            spec,
            mirror_dir: mirror_dir.to_path_buf(),
            path,
            git,
            repo: RwLock::new(repo),
            snapshot: RwLock::new(snapshot),
            counters: Mutex::new(counters),
            inflight: Mutex::new(Inflight {
                branch: None,
                started: 0,
                completed: 0,
                revisions: HashMap::new(),
                budget,
            }),
            write_lock: tokio::sync::Mutex::new(()),
        });
        if let Some(head) = mirror.head() {
            info!(source = %mirror.spec.name, head = %head.commit, "reusing existing mirror");
        }
        Ok(mirror)
    }

    /// Creates an empty bare repository at `path` atomically (in a temporary
    /// directory beside it, then renamed), replacing whatever is there.
    async fn init_fresh(
        git: &git::GitCli,
        mirror_dir: &Path,
        path: &Path,
        name: &str,
    ) -> Result<gix::ThreadSafeRepository, MirrorError> {
        let local_err = |reason: String| MirrorError::Local {
            path: path.display().to_string(),
            reason,
        };
        let tmp = mirror_dir.join(format!(".{name}.tmp-{}", unique_suffix()));
        git.init_bare(&tmp)
            .await
            .map_err(|e| local_err(e.message))?;
        Self::swap_into_place(mirror_dir, &tmp, path, name).map_err(local_err)?;
        open_repo(path).map_err(local_err)
    }

    fn swap_into_place(
        mirror_dir: &Path,
        tmp: &Path,
        path: &Path,
        name: &str,
    ) -> Result<(), String> {
        let old = mirror_dir.join(format!(".{name}.old-{}", unique_suffix()));
        let had_old = match std::fs::rename(path, &old) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(format!("cannot move the old mirror aside: {e}")),
        };
        std::fs::rename(tmp, path)
            .map_err(|e| format!("cannot move the new mirror in place: {e}"))?;
        if had_old && let Err(e) = std::fs::remove_dir_all(&old) {
            warn!(path = %old.display(), error = %e, "cannot remove the old mirror");
        }
        Ok(())
    }

    /// The source this mirror follows.
    pub fn spec(&self) -> &SourceSpec {
        &self.spec
    }

    /// The bare repository's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle on the bare mirror, e.g. for
    /// `ChecksumEngine::with_caches(mirror.repository(), caches)`. After a
    /// repair a new handle is returned; old handles keep working on what
    /// they had opened.
    pub fn repository(&self) -> gix::ThreadSafeRepository {
        read(&self.repo).clone()
    }

    /// The head commit now and on every later move: what work that must
    /// follow the head (rendering) waits on, instead of polling.
    pub fn head_changes(&self) -> watch::Receiver<Option<ObjectId>> {
        self.head_tx.subscribe()
    }

    /// The branch head as last observed (`None`: never synced).
    pub fn head(&self) -> Option<Head> {
        read(&self.snapshot).as_ref().map(|s| s.head.clone())
    }

    pub fn status(&self) -> MirrorStatus {
        let fetching = lock(&self.inflight).branch.is_some();
        let snap = read(&self.snapshot).clone();
        let c = lock(&self.counters);
        MirrorStatus {
            head: snap.as_ref().map(|s| s.head.clone()),
            last_success: c.last_success,
            last_failure: c.last_failure.clone(),
            branch_missing: c.branch_missing,
            fetches: c.fetches,
            revision_fetches: c.revision_fetches,
            on_demand_refused: c.on_demand_refused,
            consecutive_failures: c.consecutive_failures,
            history_rewrites: c.history_rewrites,
            repairs: c.repairs,
            commits: snap.as_ref().map_or(0, |s| s.index.len()),
            maintenance_runs: c.maintenance_runs,
            last_maintenance: c.last_maintenance.clone(),
            maintenance_failure: c.maintenance_failure.clone(),
            fetching,
        }
    }

    /// Facts about `rev` relative to the current head, from local objects
    /// only (no process, no network). Cached per (revision, head) for known
    /// revisions.
    pub fn facts(&self, rev: ObjectId) -> RevisionFacts {
        let snap = read(&self.snapshot).clone();
        // The head's facts are two index lookups: cheaper than the cache.
        if let Some(s) = &snap
            && s.head.commit == rev
        {
            return self.facts_uncached_with(Some(s), rev);
        }
        if let Some(s) = &snap
            && let Some(f) = self.facts_cache.get(&(rev, s.head.commit))
        {
            return f;
        }
        let facts = self.facts_uncached_with(snap.as_deref(), rev);
        if let (Some(s), true) = (&snap, facts.known) {
            self.facts_cache.insert((rev, s.head.commit), facts.clone());
        }
        facts
    }

    /// [`Mirror::facts`] without the cache (for benchmarks and tests).
    pub fn facts_uncached(&self, rev: ObjectId) -> RevisionFacts {
        let snap = read(&self.snapshot).clone();
        self.facts_uncached_with(snap.as_deref(), rev)
    }

    fn facts_uncached_with(&self, snap: Option<&Snapshot>, rev: ObjectId) -> RevisionFacts {
        let mut facts = RevisionFacts {
            revision: rev,
            head: snap.map(|s| s.head.commit),
            known: false,
            is_head: false,
            is_ancestor_of_head: false,
            behind_commits: None,
            commit_time: None,
            head_commit_time: snap.map(|s| s.head.commit_time),
        };
        if let Some(s) = snap
            && let Some(t) = s.index.commit_time(&rev)
        {
            facts.known = true;
            facts.commit_time = Some(t);
            facts.is_head = rev == s.head.commit;
            facts.is_ancestor_of_head = !facts.is_head;
            facts.behind_commits = s.index.behind_count(&rev);
            return facts;
        }
        if let Some(t) = self.local_commit_time(rev) {
            facts.known = true;
            facts.commit_time = Some(t);
        }
        facts
    }

    /// Committer time of a commit in the object database (any branch).
    fn local_commit_time(&self, rev: ObjectId) -> Option<i64> {
        let repo = read(&self.repo).to_thread_local();
        let commit = repo.find_commit(rev).ok()?;
        commit.time().ok().map(|t| t.seconds)
    }

    /// Whether a commit `rev` is in the mirror (local objects only).
    pub fn is_known(&self, rev: ObjectId) -> bool {
        if read(&self.snapshot)
            .as_ref()
            .is_some_and(|s| s.index.contains(&rev))
        {
            return true;
        }
        self.local_commit_time(rev).is_some()
    }

    /// Makes sure `rev` is in the mirror if the remote has it: a branch fetch
    /// (shared by every concurrent caller: single flight), then, if the
    /// revision is still missing, a fetch of that commit by id (also single
    /// flight). Returns by `deadline` whatever happens; a fetch that outlives
    /// the deadline continues in the background for later callers.
    ///
    /// Bounded per source ([`OnDemandFetches`]): joining a running fetch is
    /// free, starting one takes a token (waiting for the next if it is due
    /// before `deadline`, else answering `StillUnknown` at once, counted in
    /// `on_demand_refused`); a fetch by id only takes a spare token. A
    /// revision still missing after a branch fetch that started after it
    /// was asked for is answered `StillUnknown` without another fetch until
    /// the head moves.
    pub async fn ensure_known(
        self: &Arc<Self>,
        rev: ObjectId,
        deadline: tokio::time::Instant,
    ) -> Lookup {
        // Read before looking, so that a fetch finishing in between is seen.
        let (arrived, mut seen) = {
            let g = lock(&self.inflight);
            (g.started, g.completed)
        };
        if self.is_known(rev) {
            return Lookup::Known;
        }
        if self.unknown.contains_key(&rev) {
            return Lookup::StillUnknown;
        }
        let now_known = || {
            if self.is_known(rev) {
                Lookup::Known
            } else {
                Lookup::StillUnknown
            }
        };
        let rx = loop {
            let wait = {
                let mut g = lock(&self.inflight);
                if let Some(rx) = &g.branch {
                    break Some(rx.clone());
                }
                if g.completed != seen {
                    // A fetch finished since we looked: it may have brought
                    // the revision, and if it started after we were asked
                    // it is the fetch this lookup needed.
                    seen = g.completed;
                    let covered = g.completed > arrived;
                    drop(g);
                    if self.is_known(rev) {
                        return Lookup::Known;
                    }
                    if covered {
                        break None;
                    }
                    continue;
                }
                match g.budget.take(tokio::time::Instant::now(), 0.0) {
                    Ok(()) => break Some(self.start_locked(g)),
                    Err(wait) => wait,
                }
            };
            match wait {
                Some(wait) if tokio::time::Instant::now() + wait < deadline => {
                    tokio::time::sleep(wait).await;
                }
                // Not within the deadline: answered without a fetch, and
                // without remembering it as not found.
                _ => {
                    lock(&self.counters).on_demand_refused += 1;
                    return now_known();
                }
            }
        };
        // Deadline passed while the fetch runs: answer with what we have,
        // without caching a negative answer the fetch may still overturn.
        if let Some(rx) = rx
            && wait_until(rx, deadline).await.is_none()
        {
            return now_known();
        }
        if self.is_known(rev) {
            return Lookup::Known;
        }
        if tokio::time::Instant::now() < deadline {
            let rx = {
                let mut g = lock(&self.inflight);
                match g.revisions.get(&rev) {
                    Some(rx) => Some(rx.clone()),
                    // Only a spare token: one stays for branch fetches,
                    // which find what reviews of new pushes ask for.
                    None => match g.budget.take(tokio::time::Instant::now(), 1.0) {
                        Ok(()) => Some(self.start_revision_locked(g, rev)),
                        Err(_) => None,
                    },
                }
            };
            if let Some(rx) = rx
                && wait_until(rx, deadline).await.is_none()
            {
                return now_known();
            }
        }
        let answer = now_known();
        if answer == Lookup::StillUnknown {
            self.unknown.insert(rev, ());
        }
        answer
    }

    /// Fetches the branch now, or joins the fetch already running (not
    /// counted against the on-demand budget).
    pub async fn refresh(self: &Arc<Self>) -> Result<FetchReport, FetchFailure> {
        let rx = {
            let g = lock(&self.inflight);
            match &g.branch {
                Some(rx) => rx.clone(),
                None => self.start_locked(g),
            }
        };
        let far =
            tokio::time::Instant::now() + self.spec.fetch_timeout * 4 + Duration::from_secs(10);
        match wait_until(rx, far).await {
            Some(Some(result)) => result,
            _ => Err(FetchFailure {
                kind: FetchErrorKind::Local,
                message: "fetch task ended without a result".into(),
            }),
        }
    }

    /// Polls every `poll_interval` until `shutdown` completes.
    pub fn spawn_poller<F>(self: Arc<Self>, shutdown: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(async move {
            tokio::pin!(shutdown);
            let interval = self.spec.poll_interval;
            // After a restart the last fetch (kept on disk) may be old: the
            // first poll is due when it would have been, possibly at once.
            let since_last = self
                .status()
                .staleness(SystemTime::now())
                .unwrap_or(Duration::MAX);
            let mut wait = interval.saturating_sub(since_last);
            loop {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = interval;
                let fetched = tokio::select! {
                    _ = &mut shutdown => break,
                    r = self.refresh() => match r {
                        Ok(_) => true,
                        Err(e) => {
                            debug!(source = %self.spec.name, error = %e, "poll failed");
                            false
                        }
                    }
                };
                // Only after a success: a failing remote or a full disk
                // gets no extra work. Cancelling a repack is safe (nothing
                // is deleted before the new pack is in place).
                if fetched {
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = self.maintain_if_due() => {}
                    }
                }
            }
        })
    }

    /// Repacks the mirror if the policy says it is due (see
    /// [`MaintenancePolicy`]); `None` when it is not. The poller calls this
    /// after every successful fetch.
    pub async fn maintain_if_due(&self) -> Option<Result<MaintenanceReport, FetchFailure>> {
        let policy = &self.spec.maintenance;
        if !policy.enabled {
            return None;
        }
        let recent = lock(&self.counters)
            .maintenance_started
            .is_some_and(|t| t.elapsed() < policy.min_interval);
        if recent {
            return None;
        }
        let counts = self.object_counts().await?;
        if counts.loose_objects < policy.loose_objects && counts.packs < policy.packs {
            return None;
        }
        Some(self.maintain().await)
    }

    /// Repacks the mirror now (geometric repack, deleting what it made
    /// redundant), serialised with fetches and repairs. Readers are not
    /// blocked: gix keeps deleted packs it has mapped and re-reads the pack
    /// directory on a miss. Afterwards the repository is opened again:
    /// gix lets go of a deleted pack only when a lookup misses, and with
    /// small fetches (loose objects) and warm caches that can take until
    /// the next repack, holding the deleted files' disk space meanwhile.
    /// Reads in flight keep the old handle until they finish.
    pub async fn maintain(&self) -> Result<MaintenanceReport, FetchFailure> {
        let _w = self.write_lock.lock().await;
        let started = std::time::Instant::now();
        let at = SystemTime::now();
        {
            let mut c = lock(&self.counters);
            c.maintenance_runs += 1;
            c.maintenance_started = Some(started);
        }
        let before = self.object_counts().await.unwrap_or_default();
        let result = if looks_like_repo(&self.path) {
            self.git
                .repack(&self.path, self.spec.maintenance.timeout)
                .await
        } else {
            Err(FetchFailure {
                kind: FetchErrorKind::Local,
                message: format!(
                    "maintenance of {}: the mirror directory is missing or incomplete",
                    self.path.display()
                ),
            })
        };
        match result {
            Ok(()) => {
                match open_repo(&self.path) {
                    Ok(repo) => *write(&self.repo) = repo,
                    // The old handle still reads everything (it re-reads
                    // the pack directory on a miss); only the unmapping
                    // waits.
                    Err(e) => {
                        warn!(source = %self.spec.name, error = %e, "cannot reopen the mirror after maintenance")
                    }
                }
                let after = self.object_counts().await.unwrap_or_default();
                let report = MaintenanceReport {
                    at,
                    duration: started.elapsed(),
                    before,
                    after,
                };
                info!(
                    source = %self.spec.name,
                    packs_before = before.packs,
                    loose_before = before.loose_objects,
                    packs_after = after.packs,
                    loose_after = after.loose_objects,
                    ms = report.duration.as_millis() as u64,
                    "mirror maintenance: repacked"
                );
                let mut c = lock(&self.counters);
                c.last_maintenance = Some(report.clone());
                c.maintenance_failure = None;
                Ok(report)
            }
            Err(f) => {
                warn!(source = %self.spec.name, kind = f.kind.as_str(), error = %f.message, "mirror maintenance failed");
                lock(&self.counters).maintenance_failure = Some(FailureRecord {
                    at,
                    kind: f.kind,
                    message: f.message.clone(),
                });
                Err(f)
            }
        }
    }

    /// Counts packs and loose objects (257 directory reads, off the async
    /// threads); `None` if the object directory cannot be read.
    async fn object_counts(&self) -> Option<ObjectCounts> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || count_objects(&path))
            .await
            .ok()
            .flatten()
    }

    /// Starts a branch fetch; `g` shows none running.
    fn start_locked(
        self: &Arc<Self>,
        mut g: MutexGuard<'_, Inflight>,
    ) -> watch::Receiver<Option<FetchResult>> {
        let (tx, rx) = watch::channel(None);
        g.branch = Some(rx.clone());
        g.started += 1;
        drop(g);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            // Clears the slot even if the fetch task is cancelled.
            struct Done(Arc<Mirror>);
            impl Drop for Done {
                fn drop(&mut self) {
                    let mut g = lock(&self.0.inflight);
                    g.branch = None;
                    g.completed += 1;
                }
            }
            let done = Done(Arc::clone(&me));
            let result = me.fetch_branch_now().await;
            // Free the slot before publishing: a caller woken by this
            // result that asks again (a secret just rotated, a push just
            // made) must start a new fetch, not join this finished one.
            drop(done);
            let _ = tx.send(Some(result));
        });
        rx
    }

    /// Starts a fetch of `rev` by id; `g` shows none running for it.
    fn start_revision_locked(
        self: &Arc<Self>,
        mut g: MutexGuard<'_, Inflight>,
        rev: ObjectId,
    ) -> watch::Receiver<Option<bool>> {
        let (tx, rx) = watch::channel(None);
        g.revisions.insert(rev, rx.clone());
        drop(g);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            struct Done(Arc<Mirror>, ObjectId);
            impl Drop for Done {
                fn drop(&mut self) {
                    lock(&self.0.inflight).revisions.remove(&self.1);
                }
            }
            let done = Done(Arc::clone(&me), rev);
            let ok = me.fetch_revision_now(rev).await;
            // As for the branch: free the slot, then publish.
            drop(done);
            let _ = tx.send(Some(ok));
        });
        rx
    }

    async fn fetch_revision_now(&self, rev: ObjectId) -> bool {
        let _w = self.write_lock.lock().await;
        lock(&self.counters).revision_fetches += 1;
        if self.is_known(rev) {
            return true;
        }
        match self.git.fetch_commit(&self.path, &rev).await {
            Ok(()) => true,
            Err(e) => {
                debug!(source = %self.spec.name, revision = %rev, error = %e, "fetch by id failed");
                false
            }
        }
    }

    /// One branch fetch, with detection and repair of a missing or corrupt
    /// mirror; records the outcome.
    async fn fetch_branch_now(&self) -> FetchResult {
        let _w = self.write_lock.lock().await;
        lock(&self.counters).fetches += 1;
        let result = self.fetch_branch_locked().await;
        let now = SystemTime::now();
        match &result {
            Ok(report) => {
                {
                    let mut c = lock(&self.counters);
                    c.last_success = Some(now);
                    c.consecutive_failures = 0;
                    c.branch_missing = false;
                    if report.history_rewritten {
                        c.history_rewrites += 1;
                    }
                    if report.repaired {
                        c.repairs += 1;
                    }
                }
                self.save_state(now).await;
            }
            Err(f) => {
                warn!(source = %self.spec.name, kind = f.kind.as_str(), error = %f.message, "fetch failed");
                let mut c = lock(&self.counters);
                c.consecutive_failures += 1;
                if f.kind == FetchErrorKind::BranchMissing {
                    c.branch_missing = true;
                }
                c.last_failure = Some(FailureRecord {
                    at: now,
                    kind: f.kind,
                    message: f.message.clone(),
                });
            }
        }
        result
    }

    async fn fetch_branch_locked(&self) -> FetchResult {
        if !looks_like_repo(&self.path) {
            return self
                .repair("the mirror directory is missing or incomplete")
                .await;
        }
        match self.git.fetch_branch(&self.path).await {
            Ok(()) => match self.update_head().await {
                Ok(report) => Ok(report),
                Err(reason) => self.repair(&reason).await,
            },
            Err(f) if matches!(f.kind, FetchErrorKind::Other | FetchErrorKind::Local) => {
                let (p, b) = (self.path.clone(), self.spec.branch.clone());
                let healthy = tokio::task::spawn_blocking(move || match inspect(&p, &b) {
                    Found::Valid(..) => None,
                    Found::Missing => Some("the mirror directory is missing".to_owned()),
                    Found::Corrupt(r) => Some(r),
                })
                .await
                .unwrap_or(None);
                match healthy {
                    None => Err(f),
                    Some(reason) => self.repair(&reason).await,
                }
            }
            Err(f) => Err(f),
        }
    }

    /// Rebuilds the mirror directory from the remote (into a temporary
    /// directory, then swapped in). The in-memory history keeps answering
    /// meanwhile.
    async fn repair(&self, reason: &str) -> FetchResult {
        warn!(source = %self.spec.name, %reason, "mirror missing or corrupt; re-cloning");
        let tmp = self
            .mirror_dir
            .join(format!(".{}.tmp-{}", self.spec.name, unique_suffix()));
        let local = |message: String| FetchFailure {
            kind: FetchErrorKind::Local,
            message,
        };
        self.git.init_bare(&tmp).await?;
        let fetched = self.git.fetch_branch(&tmp).await;
        if let Err(e) = &fetched {
            if !looks_like_repo(&self.path) {
                // Nothing usable there: put the empty repository in place so
                // the next fetch only has to fill it.
                let _ = Self::swap_into_place(&self.mirror_dir, &tmp, &self.path, &self.spec.name);
                if let Ok(repo) = open_repo(&self.path) {
                    *write(&self.repo) = repo;
                }
            } else {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            return Err(FetchFailure {
                kind: e.kind,
                message: format!("repairing the mirror ({reason}): {}", e.message),
            });
        }
        Self::swap_into_place(&self.mirror_dir, &tmp, &self.path, &self.spec.name)
            .map_err(local)?;
        *write(&self.repo) = open_repo(&self.path).map_err(local)?;
        let mut report = self.update_head().await.map_err(local)?;
        report.repaired = true;
        info!(source = %self.spec.name, head = %report.head, "mirror repaired");
        Ok(report)
    }

    /// Reads the fetched branch ref and moves the snapshot to it, extending
    /// the history index (or rebuilding it after a rewrite). `Err` means the
    /// mirror is unreadable.
    async fn update_head(&self) -> Result<FetchReport, String> {
        let repo = self.repository();
        let branch = self.spec.branch.clone();
        let old = read(&self.snapshot).clone();
        let base = old.as_ref().map(|s| Arc::clone(&s.index));
        let built = tokio::task::spawn_blocking(move || {
            let local = repo.to_thread_local();
            let head = resolve_branch(&local, &branch)?
                .ok_or_else(|| format!("refs/heads/{branch} missing after a successful fetch"))?;
            if base.as_ref().is_some_and(|b| b.head() == head) {
                // Most polls: nothing new, and nothing to build.
                return Ok::<_, String>((head, None));
            }
            let (index, kind) =
                HistoryIndex::build(&local, head, base.as_deref()).map_err(|e| e.to_string())?;
            let time = index
                .commit_time(&head)
                .ok_or_else(|| "head missing from its own history".to_owned())?;
            Ok((head, Some((index, kind, time))))
        })
        .await
        .map_err(|e| format!("history index task: {e}"))??;
        let (head, Some((index, kind, commit_time))) = built else {
            return Ok(FetchReport {
                head: built.0,
                head_changed: false,
                history_rewritten: false,
                repaired: false,
            });
        };
        let head_changed = old.as_ref().is_none_or(|s| s.head.commit != head);
        let history_rewritten = old.is_some() && head_changed && kind == BuildKind::Full;
        if head_changed {
            if history_rewritten {
                warn!(
                    source = %self.spec.name,
                    old = ?old.as_ref().map(|s| s.head.commit),
                    new = %head,
                    "history rewritten: the old head is not an ancestor of the new head"
                );
            } else {
                info!(source = %self.spec.name, head = %head, commits = index.len(), "new head");
            }
            *write(&self.snapshot) = Some(Arc::new(Snapshot {
                head: Head {
                    commit: head,
                    commit_time,
                    observed_at: SystemTime::now(),
                    previous: old.as_ref().map(|s| s.head.commit),
                },
                index: Arc::new(index),
            }));
            self.facts_cache.invalidate_all();
            self.unknown.invalidate_all();
            self.head_tx.send_replace(Some(head));
        }
        Ok(FetchReport {
            head,
            head_changed,
            history_rewritten,
            repaired: false,
        })
    }

    async fn save_state(&self, now: SystemTime) {
        let Some(head) = self.head() else { return };
        let st = state::MirrorState {
            version: 1,
            url: self.git.redacted_url().to_owned(),
            branch: self.spec.branch.clone(),
            last_success_ms: state::to_ms(now),
            head: head.commit.to_string(),
            head_observed_ms: state::to_ms(head.observed_at),
        };
        let path = self.path.clone();
        let res = tokio::task::spawn_blocking(move || state::write(&path, &st)).await;
        if let Ok(Err(e)) | Err(e) = res.map_err(std::io::Error::other) {
            let file = state::path(&self.path);
            warn!(source = %self.spec.name, path = %file.display(), error = %e, "cannot write the mirror state file");
        }
    }
}

/// Waits for a shared fetch's result until `deadline`; `None` on timeout.
async fn wait_until<T: Clone>(
    mut rx: watch::Receiver<Option<T>>,
    deadline: tokio::time::Instant,
) -> Option<Option<T>> {
    match tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some)).await {
        Ok(Ok(v)) => Some(v.clone()),
        // The task ended without sending (cancelled): no result.
        Ok(Err(_)) => Some(None),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `burst` at once, then one every 60/perMinute s; a spare take keeps
    /// one token back; perMinute 0 never refills.
    #[test]
    fn fetch_budget_is_a_token_bucket() {
        let t0 = tokio::time::Instant::now();
        let limit = OnDemandFetches {
            per_minute: 30,
            burst: 3,
        };
        let mut b = FetchBudget::new(limit);
        b.at = t0;
        assert_eq!(b.take(t0, 1.0), Ok(()));
        assert_eq!(b.take(t0, 1.0), Ok(()));
        // One left: only for branch fetches.
        assert_eq!(b.take(t0, 1.0), Err(Some(Duration::from_secs(2))));
        assert_eq!(b.take(t0, 0.0), Ok(()));
        assert_eq!(b.take(t0, 0.0), Err(Some(Duration::from_secs(2))));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.take(t1, 0.0), Err(Some(Duration::from_secs(1))));
        assert_eq!(b.take(t0 + Duration::from_secs(2), 0.0), Ok(()));
        // Refills up to the burst only.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(b.take(later, 0.0), Ok(()));
        }
        assert!(b.take(later, 0.0).is_err());
        let mut off = FetchBudget::new(OnDemandFetches {
            per_minute: 0,
            burst: 1,
        });
        assert_eq!(off.take(later, 0.0), Ok(()));
        assert_eq!(off.take(later, 0.0), Err(None));
        assert_eq!(off.take(later, 1.0), Err(None));
    }
}
