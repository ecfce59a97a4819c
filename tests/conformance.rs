//! Conformance of the overlay checksum against real kustomize (`kubectl
//! kustomize`, kustomize v5.5.0): every file of the fixture repository is
//! mutated, committed, and both kustomize and the checksum are re-run.
//!
//! For every (mutation, overlay) pair:
//! - kustomize output (or success/failure) changed  => the checksum changed;
//! - the mutated path is not in the baseline closure => the checksum did not change;
//! - the mutated path is in the baseline closure     => the checksum changed
//!   (its bytes, or its link target, changed).
//!
//! `kubectl` missing fails the tests; nothing is skipped.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::thread;
use std::time::Instant;

use support::*;

#[test]
fn every_fixture_overlay_renders_with_kustomize() {
    let g = gitops_repo();
    let d = g.repo.checkout("HEAD");
    for o in GITOPS_OVERLAYS {
        let out = kustomize_dir(d.path(), o).unwrap_or_else(|e| panic!("{o} does not render: {e}"));
        assert!(
            out.contains("kind: Deployment"),
            "{o} renders no Deployment"
        );
    }
    // The incident overlay really renders content from the symlinked base
    // and from the link inside it.
    let east = kustomize_dir(d.path(), INCIDENT_OVERLAY).unwrap();
    for needle in [
        "east.example.com",
        "region: us-east-1",
        "search-beta=on",
        "memory: 256Mi",
    ] {
        assert!(east.contains(needle), "prod/east output lacks {needle:?}");
    }
    // Every commit of the history renders (for the overlays that exist then).
    for c in &g.commits {
        let d = g.repo.checkout(c);
        for o in GITOPS_OVERLAYS {
            if d.path().join(o).exists() {
                kustomize_dir(d.path(), o).unwrap_or_else(|e| panic!("{o} at {c}: {e}"));
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mutation {
    /// Append a comment line: changes generator inputs, not YAML resources.
    AppendComment,
    /// Change the first `name:`/`value:`/`replicas:`/… scalar, `KEY=value`
    /// line or first line; for a kustomization, add an annotation.
    ValueChange,
    /// Re-point a symlink to a sibling of its target.
    Repoint,
    /// Re-point a symlink to a missing target.
    Dangle,
}

const VALUE_KEYS: &[&str] = &[
    "replicas",
    "value",
    "name",
    "namespace",
    "image",
    "host",
    "newTag",
    "count",
    "port",
    "schedule",
    "fieldPath",
];

fn is_kustomization(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap();
    ["kustomization.yaml", "kustomization.yml", "Kustomization"].contains(&base)
}

/// A targeted textual change that alters the value of the first scalar of
/// interest. Returns None if nothing could be changed.
fn value_change(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let change = |i: usize, new_line: String| -> String {
        let mut out = String::new();
        for (j, l) in lines.iter().enumerate() {
            if j == i {
                out.push_str(&new_line);
            } else {
                out.push_str(l);
            }
        }
        out
    };
    for (i, line) in lines.iter().enumerate() {
        let body = line.trim_end_matches('\n');
        let t = body.trim_start();
        let t = t.strip_prefix("- ").unwrap_or(t);
        for key in VALUE_KEYS {
            if let Some(rest) = t.strip_prefix(key).and_then(|r| r.strip_prefix(':')) {
                let v = rest.trim();
                if v.is_empty() || v.starts_with(['|', '>', '{', '[', '&', '*']) {
                    continue;
                }
                let pos = body.rfind(v).unwrap();
                let nv = if v.bytes().all(|b| b.is_ascii_digit()) {
                    format!("{v}1")
                } else if v.len() >= 2 && (v.starts_with('"') || v.starts_with('\'')) {
                    format!("{}x{}", &v[..v.len() - 1], &v[v.len() - 1..])
                } else {
                    format!("{v}x")
                };
                let nl = if line.ends_with('\n') { "\n" } else { "" };
                return Some(change(i, format!("{}{nv}{nl}", &body[..pos])));
            }
        }
    }
    let pick = lines
        .iter()
        .position(|l| l.contains('=') && !l.trim_start().starts_with('#'))
        .or_else(|| lines.iter().position(|l| !l.trim().is_empty()))?;
    let body = lines[pick].trim_end_matches('\n');
    let nl = if lines[pick].ends_with('\n') {
        "\n"
    } else {
        ""
    };
    Some(change(pick, format!("{body}x{nl}")))
}

/// Applies `m` to `path` in the working tree; false when not applicable.
fn apply(repo: &Repo, path: &str, m: Mutation) -> bool {
    let link = repo.is_symlink(path);
    match (m, link) {
        (Mutation::AppendComment, false) => {
            let text = repo.read(path);
            let sep = if text.ends_with(b"\n") || text.is_empty() {
                ""
            } else {
                "\n"
            };
            repo.append(path, format!("{sep}# conformance: appended comment\n"));
            true
        }
        (Mutation::ValueChange, false) => {
            let text = String::from_utf8(repo.read(path)).expect("fixture files are UTF-8");
            let new = if is_kustomization(path)
                && !text.lines().any(|l| l.starts_with("commonAnnotations:"))
            {
                let sep = if text.ends_with('\n') { "" } else { "\n" };
                Some(format!(
                    "{text}{sep}commonAnnotations:\n  conformance/mutated: \"yes\"\n"
                ))
            } else {
                value_change(&text)
            };
            match new {
                Some(n) if n != text => {
                    repo.write(path, n);
                    true
                }
                _ => false,
            }
        }
        (Mutation::Repoint, true) => match repoint_target(repo, path) {
            Some(t) => {
                repo.symlink(path, &t);
                true
            }
            None => false,
        },
        (Mutation::Dangle, true) => {
            let t = repo.read_link(path);
            repo.symlink(path, &format!("{t}-missing"));
            true
        }
        _ => false,
    }
}

/// A sibling of the link's current target, of the same kind (a directory
/// holding a kustomization is preferred for a directory link).
fn repoint_target(repo: &Repo, path: &str) -> Option<String> {
    let target = repo.read_link(path);
    let parent = path.rsplit_once('/').map(|x| x.0).unwrap_or("");
    let resolved = repo.path().join(parent).join(&target).canonicalize().ok()?;
    let dir = resolved.parent()?;
    let own = resolved.file_name()?.to_str()?.to_string();
    let is_dir = resolved.is_dir();
    let mut candidates: Vec<(bool, String)> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let p = e.path();
            if name == own || name.starts_with('.') || p.is_dir() != is_dir {
                return None;
            }
            let preferred = if is_dir {
                p.join("kustomization.yaml").exists()
            } else {
                Path::new(&name).extension() == Path::new(&own).extension()
            };
            Some((!preferred, name))
        })
        .collect();
    candidates.sort();
    let (_, pick) = candidates.into_iter().next()?;
    Some(match target.rsplit_once('/') {
        Some((head, _)) => format!("{head}/{pick}"),
        None => pick,
    })
}

#[derive(Clone)]
struct OverlayBaseline {
    name: String,
    /// Rendered with kustomize (false: closure-only checks, remote resource).
    rendered: bool,
    kustomize: Result<String, String>,
    checksum: String,
    /// Paths of the baseline `file:` and `link:` entries.
    closure: BTreeSet<String>,
}

#[derive(Clone)]
struct Baseline {
    rev: String,
    overlays: Vec<OverlayBaseline>,
}

#[derive(Default)]
struct Stats {
    mutations: usize,
    pairs: usize,
    kustomize_changed: usize,
    closure_pairs: usize,
    closure_pairs_kustomize_changed: usize,
    per_overlay_changed: Vec<usize>,
    failures: Vec<String>,
}

fn outcome(r: Result<String, (i32, String)>) -> Result<String, String> {
    r.map_err(|(code, err)| format!("exit {code}: {}", err.trim()))
}

fn run_mutations(repo: Repo, base: Baseline, files: Vec<String>) -> Stats {
    let mut st = Stats {
        per_overlay_changed: vec![0; base.overlays.len()],
        ..Stats::default()
    };
    for f in &files {
        for m in [
            Mutation::AppendComment,
            Mutation::ValueChange,
            Mutation::Repoint,
            Mutation::Dangle,
        ] {
            if !apply(&repo, f, m) {
                continue;
            }
            let c = repo.commit(&format!("mutate {f} ({m:?})"));
            let checkout = repo.checkout(&c);
            st.mutations += 1;
            for (i, ob) in base.overlays.iter().enumerate() {
                let (o, rendered, k0, sum0, closure) = (
                    &ob.name,
                    ob.rendered,
                    &ob.kustomize,
                    &ob.checksum,
                    &ob.closure,
                );
                let sum = outcome(checksum_outcome(&repo, o, Some(&c)));
                let checksum_changed = sum.as_ref() != Ok(sum0);
                let in_closure = closure.contains(f);
                let what = format!("{m:?} of {f} for overlay {o}");
                if rendered {
                    let k = kustomize_dir(checkout.path(), o);
                    let k_changed = match (&k, k0) {
                        (Ok(a), Ok(b)) => a != b,
                        (Err(_), Err(_)) => false,
                        _ => true,
                    };
                    st.pairs += 1;
                    if k_changed {
                        st.kustomize_changed += 1;
                        st.per_overlay_changed[i] += 1;
                    }
                    if in_closure {
                        st.closure_pairs += 1;
                        if k_changed {
                            st.closure_pairs_kustomize_changed += 1;
                        }
                    }
                    if k_changed && !checksum_changed {
                        st.failures.push(format!(
                            "{what}: kustomize output changed ({}) but the checksum did not ({sum0})",
                            if k.is_ok() { "still renders" } else { "now fails" }
                        ));
                    }
                }
                if !in_closure && checksum_changed {
                    st.failures.push(format!(
                        "{what}: not in the baseline closure, yet the checksum changed: {sum0} -> {sum:?}"
                    ));
                }
                if in_closure && !checksum_changed {
                    st.failures.push(format!(
                        "{what}: in the baseline closure and changed, yet the checksum did not change"
                    ));
                }
            }
            drop(checkout);
            repo.reset_hard(&base.rev);
        }
    }
    st
}

#[test]
fn every_file_mutation_conforms_to_kustomize() {
    let start = Instant::now();
    let g = gitops_repo();
    let r = &g.repo;
    let rev = r.head();
    let checkout = r.checkout(&rev);
    let mut overlays = Vec::new();
    for o in GITOPS_OVERLAYS.iter().chain([&GITOPS_REMOTE_OVERLAY]) {
        let rendered = *o != GITOPS_REMOTE_OVERLAY;
        let k = if rendered {
            let out = kustomize_dir(checkout.path(), o);
            assert!(out.is_ok(), "baseline of {o} must render: {out:?}");
            out
        } else {
            Err("not rendered (remote resource)".to_string())
        };
        let (sum, names) = list(r, o, Some(&rev));
        let closure: BTreeSet<String> = names
            .iter()
            .filter_map(|n| n.strip_prefix("file:").or_else(|| n.strip_prefix("link:")))
            .map(str::to_string)
            .collect();
        assert!(!closure.is_empty(), "{o}: empty closure");
        overlays.push(OverlayBaseline {
            name: o.to_string(),
            rendered,
            kustomize: k,
            checksum: sum,
            closure,
        });
    }
    let base = Baseline {
        rev: rev.clone(),
        overlays,
    };

    let files = r.ls_files();
    assert!(
        files.len() >= 50,
        "fixture too small: {} files",
        files.len()
    );
    assert!(
        files.iter().any(|f| r.is_symlink(f)),
        "fixture has no symlinks"
    );

    // Two workers (the machine has 2 cores), each on its own clone.
    let workers = 2;
    let mut handles = Vec::new();
    for w in 0..workers {
        let clone = r.clone_no_local();
        clone.git(&["checkout", "-q", "-B", "main", &rev]);
        let part: Vec<String> = files.iter().skip(w).step_by(workers).cloned().collect();
        let base = base.clone();
        handles.push(thread::spawn(move || run_mutations(clone, base, part)));
    }
    let mut total = Stats {
        per_overlay_changed: vec![0; base.overlays.len()],
        ..Stats::default()
    };
    for h in handles {
        let st = h.join().expect("worker panicked");
        total.mutations += st.mutations;
        total.pairs += st.pairs;
        total.kustomize_changed += st.kustomize_changed;
        total.closure_pairs += st.closure_pairs;
        total.closure_pairs_kustomize_changed += st.closure_pairs_kustomize_changed;
        for (a, b) in total
            .per_overlay_changed
            .iter_mut()
            .zip(st.per_overlay_changed)
        {
            *a += b;
        }
        total.failures.extend(st.failures);
    }
    eprintln!(
        "conformance: {} files, {} mutations, {} (mutation, rendered overlay) pairs, {} changed kustomize output \
         ({} of {} pairs on closure files); per overlay: {:?}; {:?}",
        files.len(),
        total.mutations,
        total.pairs,
        total.kustomize_changed,
        total.closure_pairs_kustomize_changed,
        total.closure_pairs,
        base.overlays
            .iter()
            .map(|o| o.name.as_str())
            .zip(total.per_overlay_changed.iter())
            .collect::<Vec<_>>(),
        start.elapsed()
    );
    assert!(
        total.failures.is_empty(),
        "{} conformance violation(s):\n{}",
        total.failures.len(),
        total.failures.join("\n")
    );
    // Not vacuous: the mutations really changed what kustomize renders.
    assert!(
        total.mutations >= 2 * files.len(),
        "too few mutations applied"
    );
    assert!(
        total.kustomize_changed >= 90,
        "only {} changed kustomize output",
        total.kustomize_changed
    );
    assert!(
        total.closure_pairs_kustomize_changed * 2 >= total.closure_pairs,
        "fewer than half of the closure-file mutations changed kustomize output"
    );
    for (ob, n) in base.overlays.iter().zip(&total.per_overlay_changed) {
        let o = &ob.name;
        if ob.rendered {
            assert!(*n >= 15, "{o}: only {n} mutations changed its output");
        }
    }
}

#[test]
fn mutations_change_what_kustomize_reads() {
    // The mutation helpers themselves, on the shapes the fixture uses.
    assert_eq!(
        value_change("kind: X\nmetadata:\n  name: web\n").unwrap(),
        "kind: X\nmetadata:\n  name: webx\n"
    );
    assert_eq!(
        value_change("spec:\n  replicas: 2\n").unwrap(),
        "spec:\n  replicas: 21\n"
    );
    assert_eq!(
        value_change("a:\n  - name: \"q\"\n").unwrap(),
        "a:\n  - name: \"qx\"\n"
    );
    assert_eq!(value_change("# c\nA=1\nB=2\n").unwrap(), "# c\nA=1x\nB=2\n");
    assert_eq!(value_change("hello\n").unwrap(), "hellox\n");
}
