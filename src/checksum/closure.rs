//! The closure walk: every file, symlink, remote reference, plugin config
//! and submodule that `kustomize build` would read for an overlay, found by
//! following kustomizations through the commit's tree (contract 4.1).

use super::{ChecksumError, EntryKind, RepoObjects};
use crate::kustomize::{self, Inputs, Node, PluginEntry, RefKind};
use crate::tree::{self, BlobError, Crossed, ObjectSource, ResolveError, Resolved, Target, show};
use gix::ObjectId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::rc::Rc;

/// Kustomizations nested deeper than this are refused (kubeflow, the
/// deepest real repository measured, nests seven).
pub const MAX_NESTING: usize = 64;

/// Directories nested deeper than this inside a walked Helm chart are refused.
pub const MAX_DIR_DEPTH: usize = 256;

/// Where an entry's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A blob: a file's bytes or a symlink's target.
    Blob(ObjectId),
    /// Bytes known without reading a blob: a remote reference, a gitlink's
    /// commit id, an inline plugin config.
    Text(Vec<u8>),
}

/// Entries keyed by (kind, target): this order is the byte order of names.
pub type Closure = BTreeMap<(EntryKind, Vec<u8>), Content>;

/// The overlay cannot be checksummed at this commit (contract: `OverlayError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayError {
    pub kind: OverlayErrorKind,
    /// The kustomization files that led here, outermost first.
    pub chain: Vec<String>,
}

impl fmt::Display for OverlayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.kind.to_string();
        if !self.chain.is_empty() {
            text.push_str(" (via ");
            text.push_str(&self.chain.join(" -> "));
            text.push(')');
        }
        // 64 nested kustomizations of long names: still one bounded message.
        f.write_str(&crate::echo::message(text))
    }
}

impl std::error::Error for OverlayError {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverlayErrorKind {
    #[error("overlay: {0}")]
    Overlay(ResolveError),
    #[error("{field} {reference:?}: {error}")]
    Reference {
        field: String,
        reference: String,
        error: ResolveError,
    },
    #[error("expected a file, found a directory: {path}")]
    ExpectedFile { path: String },
    #[error("expected a directory, found a file: {path}")]
    ExpectedDirectory { path: String },
    #[error(
        "no kustomization file in {dir} (looked for kustomization.yaml, kustomization.yml, Kustomization)"
    )]
    NoKustomization { dir: String },
    #[error("multiple kustomization files in {dir}: {names}")]
    MultipleKustomizations { dir: String, names: String },
    #[error("invalid kustomization {file}: {reason}")]
    InvalidKustomization { file: String, reason: String },
    #[error("{field}: no chart at {dir} and no repo to pull it from (kustomize refuses to build)")]
    ChartNotFound { field: String, dir: String },
    #[error("invalid plugin config {file}: {reason}")]
    InvalidPluginConfig { file: String, reason: String },
    #[error("cycle detected: {dir} equals or contains {on_chain}, which is already being built")]
    Cycle { dir: String, on_chain: String },
    #[error("kustomization nesting deeper than {MAX_NESTING} at {dir}")]
    TooDeep { dir: String },
    #[error("directory nesting deeper than {MAX_DIR_DEPTH} at {dir}")]
    TooDeepDirectory { dir: String },
    #[error(
        "overlay {path} is inside submodule {submodule}; its content is not in this repository"
    )]
    InSubmodule { path: String, submodule: String },
    #[error("{what} {path} is {too_large}")]
    TooLarge {
        what: &'static str,
        path: String,
        too_large: tree::TooLarge,
    },
}

/// A kustomization being built: the chain kustomize uses for cycle checks.
struct Frame {
    dir: Vec<u8>,
    file: Vec<u8>,
}

struct Walk<'o, 'r> {
    objects: &'o RepoObjects<'r>,
    root: ObjectId,
    closure: Closure,
    chain: Vec<Frame>,
    /// Kustomization directories done, with every kustomization directory
    /// reached from them: a second route to the same directory adds no
    /// entries and only needs the cycle check (diamonds stay linear).
    done: HashMap<Vec<u8>, Rc<[Vec<u8>]>>,
    /// The kustomization blob of each directory done.
    kustomization_blobs: HashMap<Vec<u8>, ObjectId>,
    /// Directories walked whole (Helm charts, config homes).
    walked: HashSet<Vec<u8>>,
}

/// Collects the closure of the overlay at clean path `overlay` in the tree
/// `root`.
pub(super) fn walk(
    objects: &RepoObjects<'_>,
    root: ObjectId,
    overlay: &[u8],
) -> Result<Closure, ChecksumError> {
    let mut walk = Walk {
        objects,
        root,
        closure: Closure::new(),
        chain: Vec::new(),
        done: HashMap::new(),
        kustomization_blobs: HashMap::new(),
        walked: HashSet::new(),
    };
    let overlay = if overlay == b"." { &b""[..] } else { overlay };
    let resolved = match tree::resolve(objects, root, overlay) {
        Ok(r) => r,
        Err(ResolveError::Git(e)) => return Err(e.into()),
        Err(e) => return Err(walk.error(OverlayErrorKind::Overlay(e))),
    };
    walk.record_crossed(&resolved.crossed);
    match resolved.target {
        Target::Dir(tree) => {
            walk.kustomization(&resolved.path, tree)?;
        }
        Target::File(_) => {
            return Err(walk.error(OverlayErrorKind::ExpectedDirectory {
                path: show(overlay),
            }));
        }
        Target::Submodule(_) => {
            return Err(walk.error(OverlayErrorKind::InSubmodule {
                path: show(overlay),
                submodule: show(&resolved.path),
            }));
        }
    }
    Ok(walk.closure)
}

impl Walk<'_, '_> {
    fn error(&self, kind: OverlayErrorKind) -> ChecksumError {
        OverlayError {
            kind,
            chain: self.chain.iter().map(|f| show(&f.file)).collect(),
        }
        .into()
    }

    fn reference_error(&self, field: &str, reference: &str, error: ResolveError) -> ChecksumError {
        match error {
            ResolveError::Git(e) => e.into(),
            error => self.error(OverlayErrorKind::Reference {
                field: crate::echo::value(field),
                reference: crate::echo::value(reference),
                error,
            }),
        }
    }

    /// A blob that was not read: too large (naming the file) or unreadable.
    fn blob_error(&self, error: BlobError, what: &'static str, path: &[u8]) -> ChecksumError {
        match error {
            BlobError::Git(e) => e.into(),
            BlobError::TooLarge(too_large) => self.error(OverlayErrorKind::TooLarge {
                what,
                path: show(path),
                too_large,
            }),
        }
    }

    fn insert(&mut self, kind: EntryKind, target: Vec<u8>, content: Content) {
        self.closure.insert((kind, target), content);
    }

    fn record_crossed(&mut self, crossed: &[Crossed]) {
        for c in crossed {
            match c {
                Crossed::Link { path, blob } => {
                    self.insert(EntryKind::Link, path.clone(), Content::Blob(*blob))
                }
                Crossed::Submodule { path, commit } => self.insert(
                    EntryKind::Submodule,
                    path.clone(),
                    Content::Text(commit.to_hex().to_string().into_bytes()),
                ),
            }
        }
    }

    /// Resolves `reference` relative to the real directory `base` without
    /// recording anything.
    fn lookup(&self, base: &[u8], reference: &str) -> Result<Resolved, ResolveError> {
        if reference.starts_with('/') {
            return Err(ResolveError::Absolute {
                path: crate::echo::value(reference).into_bytes(),
            });
        }
        let path = tree::join_clean(base, reference.as_bytes())?;
        tree::resolve(self.objects, self.root, &path)
    }

    /// Resolves a reference that must exist, recording the links crossed.
    fn resolve(
        &mut self,
        base: &[u8],
        field: &str,
        reference: &str,
    ) -> Result<Resolved, ChecksumError> {
        let resolved = self
            .lookup(base, reference)
            .map_err(|e| self.reference_error(field, reference, e))?;
        self.record_crossed(&resolved.crossed);
        Ok(resolved)
    }

    fn check_cycle(&self, dirs: &[Vec<u8>]) -> Result<(), ChecksumError> {
        for dir in dirs {
            if let Some(frame) = self
                .chain
                .iter()
                .find(|f| tree::is_same_or_ancestor(dir, &f.dir))
            {
                return Err(self.error(OverlayErrorKind::Cycle {
                    dir: show(dir),
                    on_chain: show(&frame.dir),
                }));
            }
        }
        Ok(())
    }

    /// Builds the kustomization in the real directory `dir`; returns every
    /// kustomization directory reached from it, itself included.
    fn kustomization(
        &mut self,
        dir: &[u8],
        tree: ObjectId,
    ) -> Result<Rc<[Vec<u8>]>, ChecksumError> {
        if let Some(reached) = self.done.get(dir).cloned() {
            self.check_cycle(&reached)?;
            return Ok(reached);
        }
        self.check_cycle(&[dir.to_vec()])?;
        if self.chain.len() >= MAX_NESTING {
            return Err(self.error(OverlayErrorKind::TooDeep { dir: show(dir) }));
        }
        let (file, blob) = self.kustomization_file(dir, tree)?;
        self.insert(EntryKind::File, file.clone(), Content::Blob(blob));
        let parsed = self
            .objects
            .kustomization(blob)
            .map_err(|e| self.blob_error(e, "kustomization", &file))?;
        let inputs = match parsed.as_ref() {
            Ok(inputs) => inputs,
            Err(reason) => {
                return Err(self.error(OverlayErrorKind::InvalidKustomization {
                    file: show(&file),
                    reason: crate::echo::value(reason),
                }));
            }
        };
        self.chain.push(Frame {
            dir: dir.to_vec(),
            file: file.clone(),
        });
        let mut reached = vec![dir.to_vec()];
        let mut plugins = PluginCount { file, next: 0 };
        let result = self.inputs(dir, inputs, &mut reached, &mut plugins);
        self.chain.pop();
        result?;
        reached.sort_unstable();
        reached.dedup();
        let reached: Rc<[Vec<u8>]> = reached.into();
        self.done.insert(dir.to_vec(), reached.clone());
        self.kustomization_blobs.insert(dir.to_vec(), blob);
        Ok(reached)
    }

    /// Finds the one kustomization file of `dir`: its real path and blob.
    fn kustomization_file(
        &mut self,
        dir: &[u8],
        tree: ObjectId,
    ) -> Result<(Vec<u8>, ObjectId), ChecksumError> {
        let listing = self.objects.dir(tree)?;
        // (name, real path, blob, links crossed)
        let mut found: Vec<(&str, Vec<u8>, ObjectId, Vec<Crossed>)> = Vec::new();
        for name in kustomize::KUSTOMIZATION_FILE_NAMES {
            if listing.get(name.as_bytes()).is_none() {
                continue;
            }
            let path = tree::child(dir, name.as_bytes());
            match tree::resolve(self.objects, self.root, &path) {
                Ok(Resolved {
                    path,
                    target: Target::File(blob),
                    crossed,
                }) => found.push((name, path, blob, crossed)),
                Ok(Resolved {
                    target: Target::Dir(_),
                    ..
                }) => {
                    return Err(self.error(OverlayErrorKind::ExpectedFile { path: show(&path) }));
                }
                // A gitlink or a dangling symlink: a checkout has no file
                // there, and kustomize's probe says "absent".
                Ok(Resolved {
                    target: Target::Submodule(_),
                    ..
                })
                | Err(ResolveError::NotFound { .. }) => {}
                Err(e) => return Err(self.reference_error("kustomization file", name, e)),
            }
        }
        match found.len() {
            0 => Err(self.error(OverlayErrorKind::NoKustomization { dir: show(dir) })),
            1 => {
                let (_, path, blob, crossed) = found.remove(0);
                self.record_crossed(&crossed);
                Ok((path, blob))
            }
            _ => Err(self.error(OverlayErrorKind::MultipleKustomizations {
                dir: show(dir),
                names: found
                    .iter()
                    .map(|(n, ..)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            })),
        }
    }

    fn inputs(
        &mut self,
        base: &[u8],
        inputs: &Inputs,
        reached: &mut Vec<Vec<u8>>,
        plugins: &mut PluginCount,
    ) -> Result<(), ChecksumError> {
        for remote in &inputs.remotes {
            let bytes = remote.as_bytes().to_vec();
            self.insert(EntryKind::Remote, bytes.clone(), Content::Text(bytes));
        }
        for r in &inputs.refs {
            match r.kind {
                RefKind::File => {
                    let resolved = self.resolve(base, &r.field, &r.path)?;
                    self.file(&resolved)?;
                }
                RefKind::FileOrKustomization | RefKind::Kustomization | RefKind::PluginConfig => {
                    let resolved = self.resolve(base, &r.field, &r.path)?;
                    match resolved.target {
                        Target::File(blob) if r.kind != RefKind::Kustomization => {
                            self.insert(EntryKind::File, resolved.path, Content::Blob(blob));
                        }
                        Target::File(_) => {
                            return Err(self.error(OverlayErrorKind::ExpectedDirectory {
                                path: show(&resolved.path),
                            }));
                        }
                        Target::Dir(tree) => {
                            reached
                                .extend(self.kustomization(&resolved.path, tree)?.iter().cloned());
                        }
                        Target::Submodule(_) => {}
                    }
                }
            }
        }
        for chart in &inputs.helm_charts {
            let chart_dir = chart.chart_dir();
            match self.lookup(base, &chart_dir) {
                Ok(resolved) => {
                    self.record_crossed(&resolved.crossed);
                    self.whole_directory(&resolved)?;
                }
                // Not vendored and nowhere to pull it from: kustomize fails.
                Err(ResolveError::NotFound { .. }) if chart.repo.is_empty() => {
                    return Err(self.error(OverlayErrorKind::ChartNotFound {
                        field: chart.field.clone(),
                        dir: show(
                            &tree::join_clean(base, chart_dir.as_bytes()).unwrap_or_default(),
                        ),
                    }));
                }
                // Not vendored: kustomize pulls it.
                Err(ResolveError::NotFound { .. }) => {
                    let remote = chart.remote_ref().into_bytes();
                    self.insert(EntryKind::Remote, remote.clone(), Content::Text(remote));
                }
                Err(e) => return Err(self.reference_error(&chart.field, &chart_dir, e)),
            }
        }
        for home in &inputs.helm_config_homes {
            // Usually an absolute path outside the repository; only a
            // directory in the tree can be hashed.
            if home.starts_with('/') {
                continue;
            }
            match self.lookup(base, home) {
                Ok(resolved) => {
                    self.record_crossed(&resolved.crossed);
                    self.whole_directory(&resolved)?;
                }
                Err(ResolveError::NotFound { .. }) => {}
                Err(e) => return Err(self.reference_error("helmGlobals.configHome", home, e)),
            }
        }
        for plugin in &inputs.plugins {
            self.plugin(base, plugin, reached, plugins)?;
        }
        Ok(())
    }

    fn file(&mut self, resolved: &Resolved) -> Result<(), ChecksumError> {
        match resolved.target {
            Target::File(blob) => {
                self.insert(EntryKind::File, resolved.path.clone(), Content::Blob(blob));
                Ok(())
            }
            Target::Dir(_) => Err(self.error(OverlayErrorKind::ExpectedFile {
                path: show(&resolved.path),
            })),
            Target::Submodule(_) => Ok(()),
        }
    }

    /// A Helm chart or config directory: every file under it, symlinks
    /// followed.
    fn whole_directory(&mut self, resolved: &Resolved) -> Result<(), ChecksumError> {
        match resolved.target {
            Target::Dir(tree) => self.walk_directory(&resolved.path, tree, &mut Vec::new()),
            Target::File(_) => Err(self.error(OverlayErrorKind::ExpectedDirectory {
                path: show(&resolved.path),
            })),
            Target::Submodule(_) => Ok(()),
        }
    }

    fn walk_directory(
        &mut self,
        dir: &[u8],
        tree: ObjectId,
        stack: &mut Vec<Vec<u8>>,
    ) -> Result<(), ChecksumError> {
        if self.walked.contains(dir) {
            return Ok(());
        }
        if let Some(outer) = stack.iter().find(|s| tree::is_same_or_ancestor(dir, s)) {
            return Err(self.error(OverlayErrorKind::Cycle {
                dir: show(dir),
                on_chain: show(outer),
            }));
        }
        if stack.len() >= MAX_DIR_DEPTH {
            return Err(self.error(OverlayErrorKind::TooDeepDirectory { dir: show(dir) }));
        }
        stack.push(dir.to_vec());
        let listing = self.objects.dir(tree)?;
        for entry in &listing.entries {
            let path = tree::child(dir, &entry.name);
            match entry.kind {
                tree::EntryKind::File => {
                    self.insert(EntryKind::File, path, Content::Blob(entry.oid))
                }
                tree::EntryKind::Dir => self.walk_directory(&path, entry.oid, stack)?,
                tree::EntryKind::Submodule => self.record_crossed(&[Crossed::Submodule {
                    path,
                    commit: entry.oid,
                }]),
                tree::EntryKind::Link => {
                    let resolved = tree::resolve(self.objects, self.root, &path)
                        .map_err(|e| self.reference_error("file in directory", &show(&path), e))?;
                    self.record_crossed(&resolved.crossed);
                    match resolved.target {
                        Target::File(blob) => {
                            self.insert(EntryKind::File, resolved.path, Content::Blob(blob))
                        }
                        Target::Dir(t) => self.walk_directory(&resolved.path, t, stack)?,
                        Target::Submodule(_) => {}
                    }
                }
            }
        }
        stack.pop();
        self.walked.insert(dir.to_vec());
        Ok(())
    }

    fn plugin(
        &mut self,
        base: &[u8],
        plugin: &PluginEntry,
        reached: &mut Vec<Vec<u8>>,
        count: &mut PluginCount,
    ) -> Result<(), ChecksumError> {
        match plugin {
            PluginEntry::Inline { text, .. } => {
                let docs = kustomize::all_documents(text.as_bytes()).map_err(|reason| {
                    self.error(OverlayErrorKind::InvalidPluginConfig {
                        file: show(&count.file),
                        reason: crate::echo::value(&reason),
                    })
                })?;
                for doc in docs.iter().filter(|d| **d != Node::Null) {
                    let n = count.next;
                    count.next += 1;
                    let content = Content::Text(text.as_bytes().to_vec());
                    let file = count.file.clone();
                    self.plugin_config(base, doc, &file, n, content)?;
                }
            }
            PluginEntry::Path(r) => {
                let resolved = self.resolve(base, &r.field, &r.path)?;
                match resolved.target {
                    Target::File(blob) => {
                        self.insert(EntryKind::File, resolved.path.clone(), Content::Blob(blob));
                        self.plugin_file(base, &resolved.path, blob)?;
                    }
                    Target::Dir(tree) => {
                        reached.extend(self.kustomization(&resolved.path, tree)?.iter().cloned());
                        self.plugin_directory(base, &resolved.path)?;
                    }
                    Target::Submodule(_) => {}
                }
            }
        }
        Ok(())
    }

    /// Every config document of a plugin file.
    fn plugin_file(
        &mut self,
        base: &[u8],
        file: &[u8],
        blob: ObjectId,
    ) -> Result<(), ChecksumError> {
        let bytes = self
            .objects
            .yaml(blob)
            .map_err(|e| self.blob_error(e, "plugin config", file))?;
        let docs = kustomize::all_documents(&bytes).map_err(|reason| {
            self.error(OverlayErrorKind::InvalidPluginConfig {
                file: show(file),
                reason: crate::echo::value(&reason),
            })
        })?;
        for (n, doc) in docs.iter().filter(|d| **d != Node::Null).enumerate() {
            self.plugin_config(base, doc, file, n, Content::Blob(blob))?;
        }
        Ok(())
    }

    /// A kustomization directory listed as a plugin: kustomize builds it
    /// and takes every resource of the result as a plugin config, so the
    /// configs are its resource files and those of every kustomization
    /// under it (resources and components, recursively). Builtin configs
    /// among them read their files relative to `base`, the kustomization
    /// that lists the plugin. Configs it generates itself cannot be seen.
    fn plugin_directory(&mut self, base: &[u8], dir: &[u8]) -> Result<(), ChecksumError> {
        let mut pending = vec![dir.to_vec()];
        let mut seen = HashSet::new();
        while let Some(dir) = pending.pop() {
            if !seen.insert(dir.clone()) {
                continue;
            }
            let Some(blob) = self.kustomization_blobs.get(&dir).copied() else {
                continue;
            };
            let parsed = self
                .objects
                .kustomization(blob)
                .map_err(|e| self.blob_error(e, "kustomization", &dir))?;
            let Ok(inputs) = parsed.as_ref() else {
                continue;
            };
            for r in &inputs.refs {
                if !matches!(
                    r.kind,
                    RefKind::FileOrKustomization | RefKind::Kustomization
                ) {
                    continue;
                }
                match self.lookup(&dir, &r.path) {
                    Ok(Resolved {
                        path,
                        target: Target::File(file_blob),
                        ..
                    }) if r.kind == RefKind::FileOrKustomization => {
                        self.plugin_file(base, &path, file_blob)?;
                    }
                    Ok(Resolved {
                        path,
                        target: Target::Dir(_),
                        ..
                    }) => pending.push(path),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// One config document: a builtin's paths resolve against the
    /// kustomization listing it; anything else is an external plugin whose
    /// config is all the checksum can see.
    fn plugin_config(
        &mut self,
        base: &[u8],
        doc: &Node,
        file: &[u8],
        n: usize,
        content: Content,
    ) -> Result<(), ChecksumError> {
        let (api_version, kind) = kustomize::plugin_identity(doc);
        if api_version == Some("builtin") {
            let mut inputs = Inputs::default();
            inputs
                .builtin_plugin(doc, kind.unwrap_or_default())
                .map_err(|e| {
                    self.error(OverlayErrorKind::InvalidPluginConfig {
                        file: show(file),
                        reason: crate::echo::value(&e.0),
                    })
                })?;
            // Builtin configs name no plugins, so these stay unused.
            let mut reached = Vec::new();
            let mut count = PluginCount {
                file: file.to_vec(),
                next: 0,
            };
            return self.inputs(base, &inputs, &mut reached, &mut count);
        }
        let mut name = file.to_vec();
        name.extend_from_slice(format!("#{n}").as_bytes());
        self.insert(EntryKind::Plugin, name, content);
        Ok(())
    }
}

/// Numbering of the plugin config documents read from one file.
struct PluginCount {
    file: Vec<u8>,
    next: usize,
}
