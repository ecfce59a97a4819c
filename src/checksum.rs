//! The overlay checksum, version 1 (contract section 4).
//!
//! A pure function of (commit, overlay path), computed from git objects
//! only. [`closure`] walks the kustomizations and collects the named entries;
//! this module turns entries into the checksum and owns the caches that make
//! a second computation cheap: every cache is keyed by an immutable input (a
//! blob or tree id, or a commit), so nothing ever needs invalidating.

mod closure;

use crate::kustomize::Inputs;
use crate::tree::{self, BlobError, Dir, GitError, ObjectSource};
use gix::ObjectId;
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

pub use closure::{OverlayError, OverlayErrorKind};

/// Domain separation prefix of version 1.
pub const DOMAIN: &[u8] = b"stale-guard/overlay/v1";

/// Default largest closure file or symlink target, in bytes
/// (`limits.maxBlobBytes`): real manifests are KiB; a bigger blob is an
/// `OverlayError`, refused from its object header without being read.
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 16 << 20;

/// Blobs bigger than this are read and hashed one at a time in the whole
/// process: however many computations and hashing threads run, at most
/// one large blob (up to the cap) is in memory at once.
const LARGE_BLOB_BYTES: u64 = 1 << 20;

/// Blobs a computation keeps after reading them (symlink targets, read at
/// every crossing) are at most this big; bigger ones are read again if
/// needed rather than held for the whole walk.
const MEMO_BLOB_BYTES: usize = 64 << 10;
static LARGE_BLOB: Mutex<()> = Mutex::new(());

/// Default largest kustomization or plugin config parsed, in bytes
/// (`limits.maxKustomizationBytes`). Parsing costs far more memory than
/// the file (about 60 bytes per byte for a long list of short entries: a
/// 1 MiB list of `- a` peaks at 88 MiB, a 15 MiB one at 946 MiB); real
/// kustomizations are a few KiB.
pub const DEFAULT_MAX_KUSTOMIZATION_BYTES: u64 = 512 << 10;

/// The size limits of one computation (`limits.maxBlobBytes` and
/// `limits.maxKustomizationBytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeLimits {
    pub max_blob_bytes: u64,
    pub max_kustomization_bytes: u64,
}

impl Default for SizeLimits {
    fn default() -> Self {
        SizeLimits {
            max_blob_bytes: DEFAULT_MAX_BLOB_BYTES,
            max_kustomization_bytes: DEFAULT_MAX_KUSTOMIZATION_BYTES,
        }
    }
}

/// A SHA-256 checksum, written `sha256:<64 lower-case hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Checksum(pub [u8; 32]);

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a checksum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected sha256: followed by exactly 64 lower-case hex digits")]
pub struct MalformedChecksum;

impl FromStr for Checksum {
    type Err = MalformedChecksum;

    /// Strict: the contract accepts no other spelling (no upper case, no
    /// whitespace, no other algorithm).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.strip_prefix("sha256:").ok_or(MalformedChecksum)?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(MalformedChecksum);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex, &mut out).map_err(|_| MalformedChecksum)?;
        Ok(Checksum(out))
    }
}

/// The kind of a closure entry; its name starts with `<kind>:`.
///
/// Declared in the byte order of the prefixes, so ordering `(kind, target)`
/// pairs is ordering names (the prefixes differ in their first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryKind {
    File,
    Link,
    Plugin,
    Remote,
    Submodule,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Link => "link",
            EntryKind::Remote => "remote",
            EntryKind::Plugin => "plugin",
            EntryKind::Submodule => "submodule",
        }
    }

    /// True for entries whose content the checksum cannot vouch for.
    pub fn is_unverifiable(self) -> bool {
        matches!(
            self,
            EntryKind::Remote | EntryKind::Plugin | EntryKind::Submodule
        )
    }
}

/// One named entry of the closure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    /// The name without its `<kind>:` prefix: a path, or a reference.
    pub target: Vec<u8>,
    /// SHA-256 of the entry's content.
    pub digest: [u8; 32],
}

impl Entry {
    /// The full name, `<kind>:<target>`, as hashed and listed.
    pub fn name(&self) -> Vec<u8> {
        let mut name = Vec::with_capacity(self.target.len() + 10);
        name.extend_from_slice(self.kind.as_str().as_bytes());
        name.push(b':');
        name.extend_from_slice(&self.target);
        name
    }
}

/// The checksum of an overlay at a commit, with the closure it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayChecksum {
    pub commit: ObjectId,
    /// The overlay path, cleaned (`.` for the repository root).
    pub overlay: String,
    pub checksum: Checksum,
    /// Sorted by name, each name once.
    pub entries: Vec<Entry>,
}

impl OverlayChecksum {
    /// Entries the checksum cannot vouch for (remote, plugin, submodule).
    pub fn unverifiable(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.kind.is_unverifiable())
    }
}

/// Combines sorted, deduplicated entries into the version 1 checksum.
pub fn combine(entries: &[Entry]) -> Checksum {
    let mut hasher = Sha256::new();
    hasher.update(DOMAIN);
    hasher.update([0u8]);
    for entry in entries {
        hasher.update(entry.kind.as_str().as_bytes());
        hasher.update(b":");
        hasher.update(&entry.target);
        hasher.update([0u8]);
        hasher.update(entry.digest);
    }
    Checksum(hasher.finalize().into())
}

/// Why no checksum could be computed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChecksumError {
    /// The overlay itself is wrong at this commit (contract: `OverlayError`).
    #[error(transparent)]
    Overlay(Box<OverlayError>),
    /// The `--overlay` argument is absolute or leaves the repository.
    #[error(
        "invalid overlay path {0:?}: it must be relative to the repository root and stay inside it"
    )]
    InvalidOverlayPath(String),
    /// The object database could not be read (I/O, corruption, missing
    /// objects): not the overlay's fault, never cached.
    #[error(transparent)]
    Git(#[from] GitError),
}

impl From<OverlayError> for ChecksumError {
    fn from(e: OverlayError) -> Self {
        ChecksumError::Overlay(Box::new(e))
    }
}

/// Why a revision could not be turned into a commit.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown revision {rev:?}: {reason}")]
pub struct RevisionError {
    pub rev: String,
    pub reason: String,
}

/// Cache sizes. Defaults suit a webhook watching a few large repositories.
/// Also the `limits.caches` block of the server's configuration (camelCase
/// names; a missing field keeps its default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CacheLimits {
    /// Number of blob digests kept.
    pub blob_digests: u64,
    /// Total tree entries kept across decoded trees.
    pub tree_entries: u64,
    /// Number of parsed kustomizations kept.
    pub kustomizations: u64,
    /// Total closure entries kept across cached (commit, overlay) results
    /// (a result weighs its entry count).
    pub result_entries: u64,
}

impl Default for CacheLimits {
    fn default() -> Self {
        // A unit (a digest, a tree entry, a closure entry) holds about 225
        // bytes of live heap with moka's bookkeeping, a parsed
        // kustomization about 1.1 KB (`examples/cache_cost.rs`). So these
        // fill to about 40 MB per source at most, which the shipped 128Mi
        // limit holds next to the process (~20 MiB) and a `git fetch`;
        // they still cover a thousand-file overlay over dozens of commits.
        CacheLimits {
            blob_digests: 50_000,
            tree_entries: 50_000,
            kustomizations: 5_000,
            result_entries: 50_000,
        }
    }
}

pub(crate) type ParsedInputs = Arc<Result<Inputs, String>>;
pub type CachedResult = Arc<Result<Arc<OverlayChecksum>, OverlayError>>;

/// Caches shared by every computation over one repository. Each is keyed by
/// an immutable input, so entries never go stale: a new commit only reads
/// the trees and blobs that changed.
pub struct Caches {
    blob_digests: moka::sync::Cache<ObjectId, [u8; 32]>,
    trees: moka::sync::Cache<ObjectId, Arc<Dir>>,
    kustomizations: moka::sync::Cache<ObjectId, ParsedInputs>,
    results: moka::sync::Cache<(ObjectId, Arc<str>), CachedResult>,
}

impl Caches {
    pub fn new(limits: CacheLimits) -> Self {
        Caches {
            blob_digests: moka::sync::Cache::new(limits.blob_digests),
            trees: moka::sync::Cache::builder()
                .max_capacity(limits.tree_entries)
                .weigher(|_, dir: &Arc<Dir>| dir.entries.len().try_into().unwrap_or(u32::MAX))
                .build(),
            kustomizations: moka::sync::Cache::new(limits.kustomizations),
            results: moka::sync::Cache::builder()
                .max_capacity(limits.result_entries)
                .weigher(|_, result: &CachedResult| match result.as_ref() {
                    Ok(sum) => sum
                        .entries
                        .len()
                        .saturating_add(1)
                        .try_into()
                        .unwrap_or(u32::MAX),
                    Err(_) => 1,
                })
                .build(),
        }
    }
}

impl Caches {
    /// The cached result for (commit, overlay), if any, the overlay already
    /// cleaned by [`overlay_key`]: a lookup without allocation that lets a
    /// caller skip handing the work to a blocking thread when there is none
    /// to do.
    pub fn cached_result_for(&self, commit: ObjectId, overlay: &Arc<str>) -> Option<CachedResult> {
        self.results.get(&(commit, Arc::clone(overlay)))
    }

    /// Entries and weight (the unit each cache is bounded in) of every
    /// cache, for metrics: `(name, entries, weight)`.
    pub fn sizes(&self) -> [(&'static str, u64, u64); 4] {
        [
            cache_size("blob_digests", &self.blob_digests),
            cache_size("trees", &self.trees),
            cache_size("kustomizations", &self.kustomizations),
            cache_size("results", &self.results),
        ]
    }

    /// Drops every (commit, overlay) result while keeping the per-object
    /// caches: the next computation re-walks the closure but reads only
    /// objects it has not seen (what a new commit costs).
    pub fn clear_results(&self) {
        self.results.invalidate_all();
    }
}

/// `(name, entries, weight)` of one cache. moka counts lazily: pending
/// inserts and evictions are applied first.
fn cache_size<K, V>(name: &'static str, cache: &moka::sync::Cache<K, V>) -> (&'static str, u64, u64)
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    cache.run_pending_tasks();
    (name, cache.entry_count(), cache.weighted_size())
}

impl Default for Caches {
    fn default() -> Self {
        Caches::new(CacheLimits::default())
    }
}

/// Counters of the work one computation did (for metrics and benchmarks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkStats {
    /// True when the (commit, overlay) result came from the cache.
    pub result_cached: bool,
    /// Blobs read and hashed because their digest was not cached.
    pub blobs_hashed: usize,
    /// Entries in the closure.
    pub entries: usize,
}

/// Pauses before computing again after the object database failed a read.
/// A repack (the mirror's maintenance, or `git gc` in a repository `stamp`
/// reads) writes a new pack and then deletes the packs and loose objects it
/// replaced; a read racing it can look in the old files after they are
/// gone and in the new pack before gix has re-read the pack directory, and
/// report an object missing that is there. A moment later a new handle
/// finds it. A genuinely missing object costs these pauses once: the error
/// is never cached. (Seen in `tests/mirror.rs`
/// `reads_keep_working_while_maintenance_deletes_packs` about one run in
/// five on a loaded machine before the retry.)
const GIT_RETRY_PAUSES: [std::time::Duration; 2] = [
    std::time::Duration::from_millis(20),
    std::time::Duration::from_millis(200),
];

/// Computes overlay checksums over one git repository.
pub struct ChecksumEngine {
    repo: gix::ThreadSafeRepository,
    caches: Arc<Caches>,
    limits: SizeLimits,
}

impl ChecksumEngine {
    /// Opens the repository at `path` (bare or not; only its object database
    /// and refs are read).
    pub fn open(path: &std::path::Path) -> Result<Self, GitError> {
        let repo = gix::open(path)
            .map_err(|e| GitError(format!("cannot open {}: {e}", path.display())))?;
        Ok(Self::with_caches(
            repo.into_sync(),
            Arc::new(Caches::default()),
        ))
    }

    pub fn with_caches(repo: gix::ThreadSafeRepository, caches: Arc<Caches>) -> Self {
        ChecksumEngine {
            repo,
            caches,
            limits: SizeLimits::default(),
        }
    }

    /// Sets the largest closure blob and the largest kustomization parsed.
    /// Engines sharing caches must use the same limits: a cached result
    /// (or parse) is not checked again.
    pub fn with_size_limits(mut self, limits: SizeLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The caches this engine fills (shared with every engine built from them).
    pub fn caches(&self) -> &Arc<Caches> {
        &self.caches
    }

    /// Resolves `rev` (a name, `HEAD~2`, a full or abbreviated id) to the
    /// full id of the commit it names.
    pub fn resolve_commit(&self, rev: &str) -> Result<ObjectId, RevisionError> {
        let repo = self.repo.to_thread_local();
        let err = |reason: String| RevisionError {
            rev: rev.to_owned(),
            reason,
        };
        let id = repo.rev_parse_single(rev).map_err(|e| err(e.to_string()))?;
        let commit = id
            .object()
            .map_err(|e| err(e.to_string()))?
            .peel_to_commit()
            .map_err(|e| err(format!("not a commit: {e}")))?;
        Ok(commit.id)
    }

    /// The checksum of `overlay` at `commit`.
    pub fn checksum(
        &self,
        commit: ObjectId,
        overlay: &str,
    ) -> Result<Arc<OverlayChecksum>, ChecksumError> {
        self.checksum_with_stats(commit, overlay).0
    }

    /// Like [`checksum`](Self::checksum), also saying how much work it did.
    pub fn checksum_with_stats(
        &self,
        commit: ObjectId,
        overlay: &str,
    ) -> (Result<Arc<OverlayChecksum>, ChecksumError>, WorkStats) {
        let mut stats = WorkStats::default();
        let overlay = match clean_overlay(overlay) {
            Ok(o) => o,
            Err(e) => return (Err(e), stats),
        };
        let key = (commit, Arc::<str>::from(overlay));
        if let Some(cached) = self.caches.results.get(&key) {
            stats.result_cached = true;
            if let Ok(sum) = cached.as_ref() {
                stats.entries = sum.entries.len();
            }
            return ((*cached).clone().map_err(ChecksumError::from), stats);
        }
        let mut result = self.compute(commit, &key.1, &mut stats);
        for pause in GIT_RETRY_PAUSES {
            let Err(ChecksumError::Git(e)) = &result else {
                break;
            };
            tracing::warn!(%commit, overlay = %key.1, error = %e, retry_in_ms = pause.as_millis() as u64,
                "reading the repository failed; retrying (a repack may have moved the objects)");
            std::thread::sleep(pause);
            result = self.compute(commit, &key.1, &mut stats);
        }
        match &result {
            Ok(sum) => self.caches.results.insert(key, Arc::new(Ok(sum.clone()))),
            Err(ChecksumError::Overlay(e)) => self
                .caches
                .results
                .insert(key, Arc::new(Err((**e).clone()))),
            Err(_) => {}
        }
        (result, stats)
    }

    fn compute(
        &self,
        commit: ObjectId,
        overlay: &str,
        stats: &mut WorkStats,
    ) -> Result<Arc<OverlayChecksum>, ChecksumError> {
        let repo = self.repo.to_thread_local();
        let root = root_tree(&repo, commit)?;
        let objects = RepoObjects::new(&repo, &self.caches, self.limits);
        let closure = closure::walk(&objects, root, overlay.as_bytes())?;
        drop(objects);
        let entries = self.digest_entries(&repo, closure, stats)?;
        stats.entries = entries.len();
        Ok(Arc::new(OverlayChecksum {
            commit,
            overlay: overlay.to_owned(),
            checksum: combine(&entries),
            entries,
        }))
    }

    /// Turns closure contents into digests: blobs through the digest cache,
    /// the misses hashed on all cores (a cold overlay is mostly this). A
    /// blob not hashed before is sized from its object header first: one
    /// over the cap is an `OverlayError` and is never read.
    fn digest_entries(
        &self,
        repo: &gix::Repository,
        closure: closure::Closure,
        stats: &mut WorkStats,
    ) -> Result<Vec<Entry>, ChecksumError> {
        let mut missing: Vec<(ObjectId, u64)> = Vec::new();
        let mut seen = HashSet::new();
        for ((kind, target), content) in &closure {
            if let closure::Content::Blob(oid) = content
                && !self.caches.blob_digests.contains_key(oid)
                && seen.insert(*oid)
            {
                let size = blob_size(repo, *oid)?;
                if size > self.limits.max_blob_bytes {
                    let what = if *kind == EntryKind::Link {
                        "symlink"
                    } else {
                        "file"
                    };
                    return Err(too_large(what, target, size, self.limits).into());
                }
                missing.push((*oid, size));
            }
        }
        missing.sort_unstable();
        stats.blobs_hashed = missing.len();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8);
        let mut fresh: HashMap<ObjectId, [u8; 32]> = HashMap::with_capacity(missing.len());
        if threads > 1 && missing.len() >= 64 {
            let chunk = missing.len().div_ceil(threads);
            let parts: Vec<Result<Digests, GitError>> = std::thread::scope(|s| {
                let handles: Vec<_> = missing
                    .chunks(chunk)
                    .map(|ids| s.spawn(move || hash_blobs(&self.repo.to_thread_local(), ids)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(GitError("a hashing thread panicked".into())))
                    })
                    .collect()
            });
            for part in parts {
                fresh.extend(part?);
            }
        } else {
            fresh.extend(hash_blobs(repo, &missing)?);
        }
        for (id, digest) in &fresh {
            self.caches.blob_digests.insert(*id, *digest);
        }

        let mut entries = Vec::with_capacity(closure.len());
        for ((kind, target), content) in closure {
            let digest = match content {
                closure::Content::Blob(oid) => match fresh.get(&oid) {
                    Some(d) => *d,
                    None => match self.caches.blob_digests.get(&oid) {
                        Some(d) => d,
                        // Evicted between the two looks: hash it again.
                        None => blob_digest(repo, oid, blob_size(repo, oid)?)?,
                    },
                },
                closure::Content::Text(bytes) => Sha256::digest(&bytes).into(),
            };
            entries.push(Entry {
                kind,
                target,
                digest,
            });
        }
        Ok(entries)
    }
}

/// What `kustomize build` reads of an overlay at a commit, laid out to be
/// written to disk (contract section 8: the input of a rendering). The
/// same closure walk as the checksum, so the rendering reads exactly what
/// the checksum covers. Paths are real repository paths (no symlink in
/// their parent directories), `/`-separated, never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayTree {
    pub commit: ObjectId,
    /// The overlay path, cleaned (`.` for the repository root).
    pub overlay: Arc<str>,
    pub files: Vec<TreeFile>,
    pub links: Vec<TreeLink>,
    /// Directories a symlink target passes through only to leave again
    /// with `..` (`x -> a/b/../c`): nothing under them is read, but the
    /// kernel needs them to exist.
    pub dirs: Vec<Vec<u8>>,
    /// Entry names with nothing to write: remote references, plugin
    /// configs (their file is among `files`), submodules.
    pub not_written: Vec<Vec<u8>>,
}

/// A regular file of an [`OverlayTree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFile {
    pub path: Vec<u8>,
    pub blob: ObjectId,
    /// From the object header; within `limits.maxBlobBytes`.
    pub size: u64,
    /// Mode 100755 in git.
    pub executable: bool,
}

/// A symlink of an [`OverlayTree`]: its path and its target's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeLink {
    pub path: Vec<u8>,
    pub target: Vec<u8>,
}

impl ChecksumEngine {
    /// The closure of `overlay` at `commit` as files, symlinks and
    /// directories to write (see [`OverlayTree`]). Errors as
    /// [`checksum`](Self::checksum) would give them; nothing is cached
    /// beyond the objects read.
    pub fn overlay_tree(
        &self,
        commit: ObjectId,
        overlay: &str,
    ) -> Result<OverlayTree, ChecksumError> {
        let overlay = overlay_key(overlay)?;
        let repo = self.repo.to_thread_local();
        let root = root_tree(&repo, commit)?;
        let objects = RepoObjects::new(&repo, &self.caches, self.limits);
        let closure = closure::walk(&objects, root, overlay.as_bytes())?;
        let mut out = OverlayTree {
            commit,
            overlay,
            files: Vec::new(),
            links: Vec::new(),
            dirs: Vec::new(),
            not_written: Vec::new(),
        };
        // Executable names per parent directory, each tree read once.
        let mut executables: HashMap<Vec<u8>, HashSet<Vec<u8>>> = HashMap::new();
        for ((kind, target), content) in closure {
            match (kind, content) {
                (EntryKind::File, closure::Content::Blob(blob)) => {
                    let size = blob_size(&repo, blob)?;
                    if size > self.limits.max_blob_bytes {
                        return Err(too_large("file", &target, size, self.limits).into());
                    }
                    let (parent, name) = match target.iter().rposition(|&b| b == b'/') {
                        Some(i) => (target[..i].to_vec(), target[i + 1..].to_vec()),
                        None => (Vec::new(), target.clone()),
                    };
                    let executable = match executables.get(&parent) {
                        Some(names) => names.contains(&name),
                        None => {
                            let names = executable_names(&objects, root, &parent)?;
                            let found = names.contains(&name);
                            executables.insert(parent, names);
                            found
                        }
                    };
                    out.files.push(TreeFile {
                        path: target,
                        blob,
                        size,
                        executable,
                    });
                }
                (EntryKind::Link, closure::Content::Blob(blob)) => {
                    let link_target = objects.blob(blob).map_err(|e| match e {
                        BlobError::Git(e) => ChecksumError::Git(e),
                        BlobError::TooLarge(t) => {
                            too_large("symlink", &target, t.size, self.limits).into()
                        }
                    })?;
                    out.dirs
                        .extend(dirs_left_again(&objects, root, &target, &link_target));
                    out.links.push(TreeLink {
                        path: target,
                        target: link_target.to_vec(),
                    });
                }
                (kind, _) => {
                    let mut name = kind.as_str().as_bytes().to_vec();
                    name.push(b':');
                    name.extend_from_slice(&target);
                    out.not_written.push(name);
                }
            }
        }
        out.dirs.sort_unstable();
        out.dirs.dedup();
        Ok(out)
    }

    /// Writes the bytes of `blob` (of `size` bytes, from an
    /// [`OverlayTree`]) to `out`. Large blobs go one at a time in the whole
    /// process, as for hashing.
    pub fn copy_blob(
        &self,
        blob: ObjectId,
        size: u64,
        out: &mut impl std::io::Write,
    ) -> std::io::Result<()> {
        let _one_at_a_time = (size > LARGE_BLOB_BYTES)
            .then(|| LARGE_BLOB.lock().unwrap_or_else(PoisonError::into_inner));
        let repo = self.repo.to_thread_local();
        let object = repo
            .find_object(blob)
            .map_err(|e| std::io::Error::other(format!("cannot read blob {blob}: {e}")))?;
        if object.kind != gix::object::Kind::Blob {
            return Err(std::io::Error::other(format!(
                "object {blob} is not a blob"
            )));
        }
        out.write_all(&object.data)
    }
}

/// The root tree of `commit`.
fn root_tree(repo: &gix::Repository, commit: ObjectId) -> Result<ObjectId, GitError> {
    repo.find_commit(commit)
        .and_then(|c| c.tree_id().map(|id| id.detach()))
        .map_err(|e| GitError(format!("cannot read commit {commit}: {e}")))
}

/// A closure blob over `limits.maxBlobBytes` (refused from its header).
fn too_large(what: &'static str, path: &[u8], size: u64, limits: SizeLimits) -> OverlayError {
    OverlayError {
        kind: OverlayErrorKind::TooLarge {
            what,
            path: tree::show(path),
            too_large: tree::TooLarge {
                size,
                limit: limits.max_blob_bytes,
                setting: "limits.maxBlobBytes",
            },
        },
        chain: Vec::new(),
    }
}

/// The names of the executable files in the real directory `dir`. The
/// decoded trees the walk caches drop modes, so the raw tree is read.
fn executable_names(
    objects: &RepoObjects<'_>,
    root: ObjectId,
    dir: &[u8],
) -> Result<HashSet<Vec<u8>>, ChecksumError> {
    let tree_id = match tree::resolve(objects, root, dir) {
        Ok(tree::Resolved {
            target: tree::Target::Dir(id),
            ..
        }) => id,
        Ok(_) => return Ok(HashSet::new()),
        Err(tree::ResolveError::Git(e)) => return Err(e.into()),
        Err(e) => {
            return Err(GitError(format!("cannot find directory {}: {e}", tree::show(dir))).into());
        }
    };
    let data = objects.read(tree_id, gix::object::Kind::Tree)?;
    let parsed = gix::objs::TreeRef::from_bytes(&data, gix::hash::Kind::Sha1)
        .map_err(|e| GitError(format!("corrupt tree object {tree_id}: {e}")))?;
    Ok(parsed
        .entries
        .iter()
        .filter(|e| e.mode.is_executable())
        .map(|e| e.filename.to_vec())
        .collect())
}

/// The real directories a symlink target walks into only to leave with
/// the next component, `..` (the `a/b` of `a/b/../c`), resolved from the
/// link's real parent directory as the kernel would.
fn dirs_left_again(
    objects: &RepoObjects<'_>,
    root: ObjectId,
    link: &[u8],
    target: &[u8],
) -> Vec<Vec<u8>> {
    let parent = link
        .iter()
        .rposition(|&b| b == b'/')
        .map_or(&b""[..], |i| &link[..i]);
    let parts: Vec<&[u8]> = target.split(|&b| b == b'/').collect();
    let mut dirs = Vec::new();
    for i in 0..parts.len().saturating_sub(1) {
        if parts.get(i + 1) != Some(&&b".."[..]) || matches!(parts[i], b"" | b"." | b"..") {
            continue;
        }
        let mut path = parent.to_vec();
        for part in &parts[..=i] {
            path.push(b'/');
            path.extend_from_slice(part);
        }
        // The walk resolved this link already; a failure here only means
        // the directory is not needed.
        if let Ok(tree::Resolved {
            path,
            target: tree::Target::Dir(_),
            ..
        }) = tree::resolve(objects, root, &path)
            && !path.is_empty()
        {
            dirs.push(path);
        }
    }
    dirs
}

/// The cache key of an overlay path: cleaned as the computation cleans it.
pub fn overlay_key(overlay: &str) -> Result<Arc<str>, ChecksumError> {
    clean_overlay(overlay).map(Arc::from)
}

/// Validates and cleans an `--overlay` argument.
fn clean_overlay(overlay: &str) -> Result<String, ChecksumError> {
    if overlay.starts_with('/') {
        return Err(ChecksumError::InvalidOverlayPath(overlay.to_owned()));
    }
    let clean = tree::join_clean(b"", overlay.as_bytes())
        .map_err(|_| ChecksumError::InvalidOverlayPath(overlay.to_owned()))?;
    Ok(if clean.is_empty() {
        ".".to_owned()
    } else {
        String::from_utf8_lossy(&clean).into_owned()
    })
}

type Digests = Vec<(ObjectId, [u8; 32])>;

fn hash_blobs(repo: &gix::Repository, ids: &[(ObjectId, u64)]) -> Result<Digests, GitError> {
    ids.iter()
        .map(|(id, size)| Ok((*id, blob_digest(repo, *id, *size)?)))
        .collect()
}

/// The size of a blob from its object header, without reading its data.
fn blob_size(repo: &gix::Repository, id: ObjectId) -> Result<u64, GitError> {
    repo.find_header(id)
        .map(|h| h.size())
        .map_err(|e| GitError(format!("cannot read the header of object {id}: {e}")))
}

fn blob_digest(repo: &gix::Repository, id: ObjectId, size: u64) -> Result<[u8; 32], GitError> {
    let _one_at_a_time = (size > LARGE_BLOB_BYTES)
        .then(|| LARGE_BLOB.lock().unwrap_or_else(PoisonError::into_inner));
    // Detached: the buffer is freed here, not kept for reuse by `repo`.
    let data = repo
        .find_object(id)
        .map_err(|e| GitError(format!("cannot read blob {id}: {e}")))?
        .detach()
        .data;
    Ok(Sha256::digest(&data).into())
}

/// [`ObjectSource`] over a thread-local repository handle: trees through the
/// shared cache (with a per-computation front to skip its locking), symlink
/// targets memoised per computation.
pub(crate) struct RepoObjects<'a> {
    repo: &'a gix::Repository,
    caches: &'a Caches,
    limits: SizeLimits,
    trees: RefCell<HashMap<ObjectId, Arc<Dir>>>,
    blobs: RefCell<HashMap<ObjectId, Arc<[u8]>>>,
}

impl<'a> RepoObjects<'a> {
    fn new(repo: &'a gix::Repository, caches: &'a Caches, limits: SizeLimits) -> Self {
        RepoObjects {
            repo,
            caches,
            limits,
            trees: RefCell::default(),
            blobs: RefCell::default(),
        }
    }

    /// Refuses a blob over `limit` from its header, before reading it.
    fn check_size(
        &self,
        oid: ObjectId,
        limit: u64,
        setting: &'static str,
    ) -> Result<u64, BlobError> {
        let size = blob_size(self.repo, oid)?;
        if size > limit {
            return Err(BlobError::TooLarge(tree::TooLarge {
                size,
                limit,
                setting,
            }));
        }
        Ok(size)
    }

    /// A YAML file to parse (kustomization, plugin config): within the
    /// parse limit and the blob cap, both checked before reading.
    pub(crate) fn yaml(&self, oid: ObjectId) -> Result<Arc<[u8]>, BlobError> {
        let limit = self
            .limits
            .max_kustomization_bytes
            .min(crate::kustomize::MAX_YAML_BYTES as u64);
        if limit < self.limits.max_blob_bytes {
            self.check_size(oid, limit, "limits.maxKustomizationBytes")?;
        }
        self.blob(oid)
    }

    fn read(&self, oid: ObjectId, want: gix::object::Kind) -> Result<Vec<u8>, GitError> {
        let object = self
            .repo
            .find_object(oid)
            .map_err(|e| GitError(format!("cannot read object {oid}: {e}")))?;
        if object.kind != want {
            return Err(GitError(format!(
                "object {oid} is a {}, expected a {want}",
                object.kind
            )));
        }
        Ok(object.detach().data)
    }

    /// Parsed inputs of a kustomization blob, shared across computations.
    pub(crate) fn kustomization(&self, oid: ObjectId) -> Result<ParsedInputs, BlobError> {
        if let Some(parsed) = self.caches.kustomizations.get(&oid) {
            return Ok(parsed);
        }
        let bytes = self.yaml(oid)?;
        // The error is cached: capped before it is kept.
        let parsed = crate::kustomize::first_document(&bytes)
            .and_then(|doc| crate::kustomize::kustomization_inputs(&doc).map_err(|e| e.0))
            .map_err(|e| crate::echo::value(&e));
        let parsed = Arc::new(parsed);
        self.caches.kustomizations.insert(oid, parsed.clone());
        Ok(parsed)
    }
}

impl ObjectSource for RepoObjects<'_> {
    fn dir(&self, oid: ObjectId) -> Result<Arc<Dir>, GitError> {
        if let Some(dir) = self.trees.borrow().get(&oid) {
            return Ok(dir.clone());
        }
        let dir = match self.caches.trees.get(&oid) {
            Some(dir) => dir,
            None => {
                let dir = Arc::new(Dir::decode(&self.read(oid, gix::object::Kind::Tree)?)?);
                self.caches.trees.insert(oid, dir.clone());
                dir
            }
        };
        self.trees.borrow_mut().insert(oid, dir.clone());
        Ok(dir)
    }

    fn blob(&self, oid: ObjectId) -> Result<Arc<[u8]>, BlobError> {
        if let Some(blob) = self.blobs.borrow().get(&oid) {
            return Ok(blob.clone());
        }
        let size = self.check_size(oid, self.limits.max_blob_bytes, "limits.maxBlobBytes")?;
        let _one_at_a_time = (size > LARGE_BLOB_BYTES)
            .then(|| LARGE_BLOB.lock().unwrap_or_else(PoisonError::into_inner));
        let blob: Arc<[u8]> = self.read(oid, gix::object::Kind::Blob)?.into();
        if blob.len() <= MEMO_BLOB_BYTES {
            self.blobs.borrow_mut().insert(oid, blob.clone());
        }
        Ok(blob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_text_round_trips_and_is_strict() {
        let text = format!("sha256:{}", "ab".repeat(32));
        let sum: Checksum = text.parse().unwrap();
        assert_eq!(sum.to_string(), text);
        for bad in [
            "",
            "sha256:",
            &format!("sha256:{}", "AB".repeat(32)),
            &format!("sha256:{}", "ab".repeat(31)),
            &format!("sha256:{}0", "ab".repeat(32)),
            &format!("SHA256:{}", "ab".repeat(32)),
            &format!("sha1:{}", "ab".repeat(32)),
            &format!(" sha256:{}", "ab".repeat(32)),
        ] {
            assert_eq!(bad.parse::<Checksum>(), Err(MalformedChecksum), "{bad:?}");
        }
    }

    #[test]
    fn combine_follows_the_contract_byte_for_byte() {
        let entries = vec![
            Entry {
                kind: EntryKind::File,
                target: b"a.yaml".to_vec(),
                digest: Sha256::digest(b"x").into(),
            },
            Entry {
                kind: EntryKind::Remote,
                target: b"https://h/r".to_vec(),
                digest: Sha256::digest(b"https://h/r").into(),
            },
        ];
        let mut manual = Vec::new();
        manual.extend_from_slice(b"stale-guard/overlay/v1\0");
        manual.extend_from_slice(b"file:a.yaml\0");
        manual.extend_from_slice(&Sha256::digest(b"x"));
        manual.extend_from_slice(b"remote:https://h/r\0");
        manual.extend_from_slice(&Sha256::digest(b"https://h/r"));
        let expected: [u8; 32] = Sha256::digest(&manual).into();
        assert_eq!(combine(&entries), Checksum(expected));
        // No entries still hashes the domain.
        let empty: [u8; 32] = Sha256::digest(b"stale-guard/overlay/v1\0").into();
        assert_eq!(combine(&[]), Checksum(empty));
    }

    #[test]
    fn overlay_argument_rules() {
        assert_eq!(clean_overlay("overlays/./prod/").unwrap(), "overlays/prod");
        assert_eq!(clean_overlay("").unwrap(), ".");
        assert_eq!(clean_overlay("a/..").unwrap(), ".");
        for bad in ["/abs", "../x", "a/../../x"] {
            assert!(matches!(
                clean_overlay(bad),
                Err(ChecksumError::InvalidOverlayPath(_))
            ));
        }
    }
}
