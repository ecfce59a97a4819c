//! A commit's tree seen as a read-only filesystem.
//!
//! Paths resolve through git tree objects exactly as they would through a
//! checkout: symlinks are followed one component at a time, as the kernel
//! does, and every symlink or submodule crossed is reported so the checksum
//! can record it. Nothing here touches a working tree.

use gix::ObjectId;
use std::collections::VecDeque;
use std::sync::Arc;

/// More hops than this while resolving one path is a symlink loop (the
/// contract's limit; Linux itself stops at 40).
pub const MAX_SYMLINK_HOPS: usize = 255;

/// What a tree entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    Link,
    Submodule,
}

/// One entry of a directory (a decoded tree object).
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: Box<[u8]>,
    pub kind: EntryKind,
    pub oid: ObjectId,
}

/// A decoded tree object, entries sorted by name bytes for binary search
/// (git's own order sorts directories as if their name ended in `/`).
#[derive(Debug, Clone, Default)]
pub struct Dir {
    pub entries: Vec<DirEntry>,
}

impl Dir {
    pub fn get(&self, name: &[u8]) -> Option<&DirEntry> {
        self.entries
            .binary_search_by(|e| e.name.as_ref().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Decodes raw tree bytes.
    pub fn decode(data: &[u8]) -> Result<Dir, GitError> {
        let tree = gix::objs::TreeRef::from_bytes(data, gix::hash::Kind::Sha1)
            .map_err(|e| GitError(format!("corrupt tree object: {e}")))?;
        let mut entries: Vec<DirEntry> = tree
            .entries
            .iter()
            .map(|e| DirEntry {
                name: e.filename.to_vec().into_boxed_slice(),
                kind: if e.mode.is_tree() {
                    EntryKind::Dir
                } else if e.mode.is_link() {
                    EntryKind::Link
                } else if e.mode.is_commit() {
                    EntryKind::Submodule
                } else {
                    EntryKind::File
                },
                oid: e.oid.to_owned(),
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Dir { entries })
    }
}

/// Reading the object database failed (not a problem of the overlay).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("git object database: {0}")]
pub struct GitError(pub String);

/// A blob over a size limit: refused from its object header, never read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{size} bytes, over the {limit}-byte limit ({setting})")]
pub struct TooLarge {
    pub size: u64,
    pub limit: u64,
    /// Which limit: the setting that raises it, or what it protects.
    pub setting: &'static str,
}

/// Why a blob's bytes were not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    TooLarge(TooLarge),
}

/// Where tree and blob objects come from. Implementations cache by object id:
/// objects are immutable, so a cache entry never goes stale.
pub trait ObjectSource {
    fn dir(&self, oid: ObjectId) -> Result<Arc<Dir>, GitError>;
    /// A blob's bytes; one over the size limit is refused unread.
    fn blob(&self, oid: ObjectId) -> Result<Arc<[u8]>, BlobError>;
}

/// A symlink or gitlink met on the way to a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Crossed {
    /// The link's real repository path and the blob holding its target.
    Link { path: Vec<u8>, blob: ObjectId },
    /// The gitlink's real path and the commit it pins.
    Submodule { path: Vec<u8>, commit: ObjectId },
}

/// What a path resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Dir(ObjectId),
    File(ObjectId),
    /// Resolution reached or passed a gitlink: the content is not in this
    /// repository, so it stops there.
    Submodule(ObjectId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The real (symlink-free) repository path, `/`-separated, `` for the root.
    pub path: Vec<u8>,
    pub target: Target,
    pub crossed: Vec<Crossed>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("not found: {}{}", show(.path), behind_link(.path, .real))]
    NotFound { path: Vec<u8>, real: Vec<u8> },
    #[error("expected a directory, found a file: {}", show(.path))]
    NotADirectory { path: Vec<u8> },
    #[error("{} leaves the repository", show(.path))]
    Escapes { path: Vec<u8> },
    #[error("absolute path {} leaves the repository", show(.path))]
    Absolute { path: Vec<u8> },
    #[error("symlink {} has an absolute target {}; absolute paths leave the repository", show(.link), show(.target))]
    AbsoluteLink { link: Vec<u8>, target: Vec<u8> },
    #[error("symlink {} has an empty target", show(.link))]
    EmptyLink { link: Vec<u8> },
    #[error("symlink loop: more than {MAX_SYMLINK_HOPS} symlinks while resolving {}", show(.path))]
    Loop { path: Vec<u8> },
    #[error("symlink {} has a target of {too_large}", show(.link))]
    LinkTooLarge { link: Vec<u8>, too_large: TooLarge },
    #[error(transparent)]
    Git(#[from] GitError),
}

/// Renders a repository path for messages, capped ([`crate::echo`]).
pub fn show(path: &[u8]) -> String {
    if path.is_empty() {
        ".".to_owned()
    } else {
        crate::echo::bytes(path)
    }
}

/// A path or symlink target as an error keeps it: capped, so that a cached
/// error never holds a multi-megabyte name (showing it again keeps it as
/// is).
fn kept(path: &[u8]) -> Vec<u8> {
    if path.len() <= crate::echo::CUT_ABOVE {
        path.to_vec()
    } else {
        crate::echo::bytes(path).into_bytes()
    }
}

/// Joins `rel` to the directory `base` and cleans the result lexically
/// (`a/../b` is `b`), as kustomize does before touching the filesystem.
/// Going above the root at any point is an error, even if a later component
/// comes back in.
pub fn join_clean(base: &[u8], rel: &[u8]) -> Result<Vec<u8>, ResolveError> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in base.split(|&b| b == b'/').chain(rel.split(|&b| b == b'/')) {
        match part {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    let mut path = base.to_vec();
                    if !path.is_empty() {
                        path.push(b'/');
                    }
                    path.extend_from_slice(rel);
                    return Err(ResolveError::Escapes { path: kept(&path) });
                }
            }
            name => parts.push(name),
        }
    }
    Ok(parts.join(&b'/'))
}

/// Appends a component to a real path.
pub fn child(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = Vec::with_capacity(parent.len() + 1 + name.len());
    path.extend_from_slice(parent);
    if !parent.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

/// True when `dir` equals `other` or is one of its ancestors (`` is the
/// ancestor of everything).
pub fn is_same_or_ancestor(dir: &[u8], other: &[u8]) -> bool {
    dir.is_empty()
        || other == dir
        || (other.len() > dir.len() && other.starts_with(dir) && other[dir.len()] == b'/')
}

/// Resolves the clean repository path `path` (from [`join_clean`]) starting
/// at the root tree, following symlinks like the kernel: a link's target is
/// read relative to the link's real parent directory, `..` goes to the
/// parent of what was resolved so far.
pub fn resolve(
    objects: &impl ObjectSource,
    root: ObjectId,
    path: &[u8],
) -> Result<Resolved, ResolveError> {
    // Real directories resolved so far, innermost last: (tree, length of
    // `here` before the directory's name was appended).
    let mut stack: Vec<(ObjectId, usize)> = Vec::new();
    // The real path of the innermost resolved directory.
    let mut here: Vec<u8> = Vec::new();
    let mut pending: VecDeque<Vec<u8>> = path
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    let mut crossed = Vec::new();
    let mut hops = 0;

    while let Some(part) = pending.pop_front() {
        match part.as_slice() {
            b"" | b"." => continue,
            b".." => {
                let Some((_, len)) = stack.pop() else {
                    return Err(ResolveError::Escapes { path: kept(path) });
                };
                here.truncate(len);
                continue;
            }
            _ => {}
        }
        let tree = stack.last().map_or(root, |(t, _)| *t);
        let dir = objects.dir(tree)?;
        let full = child(&here, &part);
        let Some(entry) = dir.get(&part) else {
            return Err(ResolveError::NotFound {
                path: kept(path),
                real: kept(&full),
            });
        };
        match entry.kind {
            EntryKind::Dir => {
                stack.push((entry.oid, here.len()));
                here = full;
            }
            EntryKind::File => {
                // `file/` or `file/x`: the kernel says ENOTDIR.
                if !pending.is_empty() {
                    return Err(ResolveError::NotADirectory { path: kept(&full) });
                }
                return Ok(Resolved {
                    path: full,
                    target: Target::File(entry.oid),
                    crossed,
                });
            }
            EntryKind::Submodule => {
                crossed.push(Crossed::Submodule {
                    path: full.clone(),
                    commit: entry.oid,
                });
                return Ok(Resolved {
                    path: full,
                    target: Target::Submodule(entry.oid),
                    crossed,
                });
            }
            EntryKind::Link => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(ResolveError::Loop { path: kept(path) });
                }
                let target = match objects.blob(entry.oid) {
                    Ok(target) => target,
                    Err(BlobError::Git(e)) => return Err(e.into()),
                    Err(BlobError::TooLarge(too_large)) => {
                        return Err(ResolveError::LinkTooLarge {
                            link: kept(&full),
                            too_large,
                        });
                    }
                };
                if target.is_empty() {
                    return Err(ResolveError::EmptyLink { link: kept(&full) });
                }
                if target.starts_with(b"/") {
                    return Err(ResolveError::AbsoluteLink {
                        link: kept(&full),
                        target: kept(&target),
                    });
                }
                for comp in target.split(|&b| b == b'/').rev() {
                    pending.push_front(comp.to_vec());
                }
                crossed.push(Crossed::Link {
                    path: full,
                    blob: entry.oid,
                });
            }
        }
    }
    let tree = stack.last().map_or(root, |(t, _)| *t);
    Ok(Resolved {
        path: here,
        target: Target::Dir(tree),
        crossed,
    })
}

/// Where a path broke, when symlinks made that differ from the request.
fn behind_link(requested: &[u8], real: &[u8]) -> String {
    if requested == real {
        String::new()
    } else {
        format!(" (no {} behind its symlinks)", show(real))
    }
}
