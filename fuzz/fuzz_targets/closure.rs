//! The closure walk, `ChecksumEngine::checksum`, over generated git trees:
//! kustomizations that point anywhere (`..`, absolute paths, remote URLs,
//! themselves), symlinks (cycles, out of the repository, to directories),
//! files where directories are expected, submodule entries, executable
//! blobs, and malformed trees (unsorted, duplicate and odd names such as
//! `..` or `a/b`, which a hostile remote could serve).
//!
//! The tree is derived from the fuzz bytes with `arbitrary`, written as raw
//! git objects (gix, no process) into a scratch bare repository, and
//! checksummed twice with fresh caches. It must return `Ok` or a typed
//! error, never panic or hang (libFuzzer's `-timeout`), and do so
//! deterministically; an `Ok` is sorted and is the combination of its
//! entries.
#![no_main]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arbitrary::Arbitrary;
use gix::ObjectId;
use gix::objs::Write as _;
use libfuzzer_sys::fuzz_target;
use stale_guard::checksum::{CacheLimits, Caches, ChecksumEngine, ChecksumError, combine};
use stale_guard_fuzz::scratch_dir;

const DIRS: [&str; 9] = [
    "base",
    "overlays/prod",
    "overlays/dev",
    "components/c",
    "shared",
    "a/b/c",
    "overlays/prod/sub",
    "deep/x/y/z",
    "",
];

const NAMES: [&str; 14] = [
    "kustomization.yaml",
    "cm.yaml",
    "link",
    "loop-a",
    "loop-b",
    "sub",
    "kustomization.yml",
    "Kustomization",
    "patch.yaml",
    "app.properties",
    "..",
    ".",
    "a/b",
    "",
];

const TARGETS: [&str; 26] = [
    ".",
    "..",
    "../base",
    "../../base",
    "../../..",
    "../../../..",
    "/etc",
    "/",
    "missing",
    "cm.yaml",
    "link",
    "loop-a",
    "loop-b",
    "../shared",
    "../../shared/cm.yaml",
    "../../components/c",
    "sub",
    "./cm.yaml",
    "a//b",
    "https://github.com/org/repo//base?ref=v1",
    "kustomization.yaml",
    "../overlays/prod",
    "../../../../../../etc/passwd",
    "app.properties",
    "patch.yaml",
    "",
];

const OVERLAYS: [&str; 13] = [
    "overlays/prod",
    "overlays/dev",
    "base",
    ".",
    "a/b/c",
    "overlays/prod/sub",
    "deep/x/y/z",
    "overlays/prod/link",
    "overlays/prod/",
    "./overlays//prod",
    "../x",
    "/abs",
    "missing",
];

const FIELDS: [&str; 12] = [
    "resources",
    "components",
    "bases",
    "crds",
    "configurations",
    "patchesStrategicMerge",
    "generators",
    "transformers",
    "patches",
    "patchesJson6902",
    "configMapGenerator",
    "helmCharts",
];

#[derive(Arbitrary, Debug)]
enum Text {
    Known(u8),
    Free(String),
}

impl Text {
    fn get<'a>(&'a self, table: &[&'a str]) -> &'a str {
        match self {
            Text::Known(i) => table[*i as usize % table.len()],
            Text::Free(s) => s,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A kustomization in DIRS[dir] naming (field, target) pairs.
    Kustomization { dir: u8, entries: Vec<(u8, Text)> },
    /// A kustomization with arbitrary text.
    RawKustomization { dir: u8, name: Text, text: String },
    /// A plain (or executable) file.
    File { dir: u8, name: Text, exec: bool },
    /// A symlink.
    Link { dir: u8, name: Text, target: Text },
    /// A submodule (gitlink) entry.
    Submodule { dir: u8, name: Text },
    /// A file where a directory DIRS[dir] is expected.
    FileAsDir { dir: u8 },
    /// A symlink where a directory DIRS[dir] is expected.
    LinkAsDir { dir: u8, target: Text },
}

#[derive(Arbitrary, Debug)]
struct Input {
    overlay: Text,
    ops: Vec<Op>,
    /// Write trees in reverse order (unsorted), as a hostile remote could.
    unsorted: bool,
    /// Repeat the first entry of every tree.
    duplicate: bool,
}

#[derive(Debug, Clone)]
enum VNode {
    Dir(BTreeMap<Vec<u8>, VNode>),
    Blob(Vec<u8>, bool),
    Link(Vec<u8>),
    Submodule,
}

fn components(dir: &str) -> Vec<Vec<u8>> {
    dir.split('/')
        .filter(|c| !c.is_empty())
        .map(|c| c.as_bytes().to_vec())
        .collect()
}

/// Puts `node` at `dir/name` (an empty name: at `dir` itself), turning
/// whatever is in the way into directories.
fn put(root: &mut VNode, dir: &str, name: Option<&str>, node: VNode) {
    let mut path = components(dir);
    if let Some(n) = name {
        path.push(n.as_bytes().to_vec());
    }
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = root;
    for c in parents {
        let VNode::Dir(entries) = cur else {
            unreachable!()
        };
        let next = entries
            .entry(c.clone())
            .or_insert_with(|| VNode::Dir(BTreeMap::new()));
        if !matches!(next, VNode::Dir(_)) {
            *next = VNode::Dir(BTreeMap::new());
        }
        cur = next;
    }
    let VNode::Dir(entries) = cur else {
        unreachable!()
    };
    entries.insert(last.clone(), node);
}

fn kustomization_text(entries: &[(u8, Text)]) -> String {
    let mut y = String::from("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n");
    let mut by_field: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (f, t) in entries {
        let field = FIELDS[*f as usize % FIELDS.len()];
        let target = serde_json::to_string(t.get(&TARGETS)).unwrap();
        by_field.entry(field).or_default().push(target);
    }
    for (field, targets) in by_field {
        y.push_str(field);
        y.push_str(":\n");
        for t in targets {
            match field {
                "patches" | "patchesJson6902" => y.push_str(&format!("  - path: {t}\n")),
                "configMapGenerator" => {
                    y.push_str(&format!("  - name: g\n    files: [{t}]\n    envs: [{t}]\n"))
                }
                "helmCharts" => y.push_str(&format!("  - name: {t}\n    valuesFile: {t}\n")),
                _ => y.push_str(&format!("  - {t}\n")),
            }
        }
    }
    y
}

const MANIFEST: &[u8] = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n";

fn build(input: &Input) -> VNode {
    let mut root = VNode::Dir(BTreeMap::new());
    // A sane start: an overlay over a base, a manifest.
    put(
        &mut root,
        "base",
        Some("cm.yaml"),
        VNode::Blob(MANIFEST.to_vec(), false),
    );
    put(
        &mut root,
        "base",
        Some("kustomization.yaml"),
        VNode::Blob(b"resources: [cm.yaml]\n".to_vec(), false),
    );
    put(
        &mut root,
        "overlays/prod",
        Some("kustomization.yaml"),
        VNode::Blob(b"resources: [../../base]\n".to_vec(), false),
    );
    let dir = |d: &u8| DIRS[*d as usize % DIRS.len()];
    for op in &input.ops {
        match op {
            Op::Kustomization { dir: d, entries } => put(
                &mut root,
                dir(d),
                Some("kustomization.yaml"),
                VNode::Blob(kustomization_text(entries).into_bytes(), false),
            ),
            Op::RawKustomization { dir: d, name, text } => put(
                &mut root,
                dir(d),
                Some(name.get(&NAMES[..8])),
                VNode::Blob(text.clone().into_bytes(), false),
            ),
            Op::File { dir: d, name, exec } => put(
                &mut root,
                dir(d),
                Some(name.get(&NAMES)),
                VNode::Blob(MANIFEST.to_vec(), *exec),
            ),
            Op::Link {
                dir: d,
                name,
                target,
            } => put(
                &mut root,
                dir(d),
                Some(name.get(&NAMES)),
                VNode::Link(target.get(&TARGETS).as_bytes().to_vec()),
            ),
            Op::Submodule { dir: d, name } => {
                put(&mut root, dir(d), Some(name.get(&NAMES)), VNode::Submodule)
            }
            Op::FileAsDir { dir: d } => put(
                &mut root,
                dir(d),
                None,
                VNode::Blob(b"not a directory\n".to_vec(), false),
            ),
            Op::LinkAsDir { dir: d, target } => put(
                &mut root,
                dir(d),
                None,
                VNode::Link(target.get(&TARGETS).as_bytes().to_vec()),
            ),
        }
    }
    root
}

/// Git's tree order: names compared as bytes, a directory as `name/`.
fn git_order(a: &(Vec<u8>, &VNode), b: &(Vec<u8>, &VNode)) -> std::cmp::Ordering {
    let key = |(n, v): &(Vec<u8>, &VNode)| {
        let mut k = n.clone();
        if matches!(v, VNode::Dir(_)) {
            k.push(b'/');
        }
        k
    };
    key(a).cmp(&key(b))
}

/// A submodule entry points at a commit that is not in the repository.
const SUBMODULE_COMMIT: [u8; 20] = [0x5a; 20];

fn write_node(
    repo: &gix::Repository,
    node: &VNode,
    input: &Input,
) -> Option<(&'static str, ObjectId)> {
    Some(match node {
        VNode::Blob(data, exec) => {
            let id = repo.write_blob(data).ok()?.detach();
            (if *exec { "100755" } else { "100644" }, id)
        }
        VNode::Link(target) => ("120000", repo.write_blob(target).ok()?.detach()),
        VNode::Submodule => ("160000", ObjectId::from_bytes_or_panic(&SUBMODULE_COMMIT)),
        VNode::Dir(entries) => {
            let mut list: Vec<(Vec<u8>, &VNode)> =
                entries.iter().map(|(n, v)| (n.clone(), v)).collect();
            list.sort_by(git_order);
            if input.unsorted {
                list.reverse();
            }
            if input.duplicate
                && let Some(first) = list.first().cloned()
            {
                list.push(first);
            }
            let mut buf = Vec::new();
            for (name, child) in list {
                if name.contains(&0) {
                    continue;
                }
                let (mode, id) = write_node(repo, child, input)?;
                buf.extend_from_slice(mode.trim_start_matches('0').as_bytes());
                buf.push(b' ');
                buf.extend_from_slice(&name);
                buf.push(0);
                buf.extend_from_slice(id.as_bytes());
            }
            (
                "40000",
                repo.objects.write_buf(gix::objs::Kind::Tree, &buf).ok()?,
            )
        }
    })
}

fn write_commit(repo: &gix::Repository, tree: ObjectId) -> Option<ObjectId> {
    let text = format!(
        "tree {tree}\nauthor Fuzz <fuzz@example.com> 1700000000 +0000\ncommitter Fuzz <fuzz@example.com> 1700000000 +0000\n\nfuzz\n"
    );
    repo.objects
        .write_buf(gix::objs::Kind::Commit, text.as_bytes())
        .ok()
}

struct Scratch {
    dir: PathBuf,
    repo: gix::Repository,
    uses: u32,
}

/// Inputs written into one repository before it is thrown away (its loose
/// objects would otherwise pile up for the whole run).
const USES_PER_REPOSITORY: u32 = 1_000;

fn new_repo(dir: &std::path::Path) -> gix::Repository {
    let _ = std::fs::remove_dir_all(dir);
    gix::init_bare(dir).expect("init the scratch repository")
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

fn checksum_text(
    repo: &gix::Repository,
    commit: ObjectId,
    overlay: &str,
) -> Result<String, String> {
    let limits = CacheLimits {
        blob_digests: 1_000,
        tree_entries: 1_000,
        kustomizations: 100,
        result_entries: 1_000,
    };
    let engine =
        ChecksumEngine::with_caches(repo.clone().into_sync(), Arc::new(Caches::new(limits)));
    match engine.checksum(commit, overlay) {
        Ok(sum) => {
            assert_eq!(sum.commit, commit);
            let names: Vec<Vec<u8>> = sum.entries.iter().map(|e| e.name()).collect();
            assert!(
                names.windows(2).all(|w| w[0] < w[1]),
                "entries are not sorted and unique"
            );
            assert_eq!(combine(&sum.entries), sum.checksum);
            Ok(format!("{} {names:?}", sum.checksum))
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
            if overlay.starts_with('/') || overlay.starts_with("../") || overlay == ".." {
                assert!(matches!(e, ChecksumError::InvalidOverlayPath(_)), "{e:?}");
            }
            Err(msg)
        }
    }
}

fuzz_target!(|input: Input| {
    if input.ops.len() > 64 {
        return;
    }
    SCRATCH.with_borrow_mut(|scratch| {
        let s = scratch.get_or_insert_with(|| {
            let dir = scratch_dir("closure").join("repo.git");
            Scratch {
                repo: new_repo(&dir),
                dir,
                uses: 0,
            }
        });
        s.uses += 1;
        if s.uses > USES_PER_REPOSITORY {
            s.repo = new_repo(&s.dir);
            s.uses = 1;
        }
        let root = build(&input);
        let Some(("40000", tree)) = write_node(&s.repo, &root, &input) else {
            return;
        };
        let Some(commit) = write_commit(&s.repo, tree) else {
            return;
        };
        let overlay = input.overlay.get(&OVERLAYS);
        let first = checksum_text(&s.repo, commit, overlay);
        let second = checksum_text(&s.repo, commit, overlay);
        assert_eq!(first, second, "not deterministic");
        if overlay.starts_with('/') || overlay.starts_with("../") || overlay == ".." {
            assert!(
                first.is_err(),
                "overlay {overlay:?} outside the repository accepted"
            );
        }
    });
});
