//! Black-box tests of `stale-guard checksum` (contract sections 4 and 5).

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use support::*;

const COMMENT: &str = "\n# touched by a test\n";

fn incident_closure_sorted() -> Vec<String> {
    let mut v: Vec<String> = INCIDENT_CLOSURE.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Copies `src` (a directory, repo-relative) to `dst` with `cp -a`.
fn copy_dir(repo: &Repo, src: &str, dst: &str) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(repo.path().join(src))
        .arg(repo.path().join(dst))
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {src} {dst}");
}

fn assert_error(run: &Run, phrases: &[&str], paths: &[&str]) {
    let err = run.fails_with(1);
    assert!(
        err.trim_start().starts_with("error:"),
        "{:?}: stderr does not start with `error:`:\n{err}",
        run.args
    );
    assert!(
        phrases.iter().any(|p| err.contains(p)),
        "{:?}: stderr lacks any of {phrases:?}:\n{err}",
        run.args
    );
    for p in paths {
        assert!(
            err.contains(p),
            "{:?}: stderr does not name {p:?}:\n{err}",
            run.args
        );
    }
}

// ---------------------------------------------------------------------------
// the incident replay
// ---------------------------------------------------------------------------

#[test]
fn incident_closure_is_exact_and_lists_the_symlinks() {
    let g = gitops_repo();
    let (sum, names) = list(&g.repo, INCIDENT_OVERLAY, None);
    assert_eq!(
        names,
        incident_closure_sorted(),
        "closure of {INCIDENT_OVERLAY}"
    );
    assert!(names.contains(&"link:overlays/prod/east/base".to_string()));
    assert!(names.contains(&"link:bases/prod-east/config".to_string()));
    assert!(names.len() >= 16);
    assert_eq!(cross_check(&g.repo, INCIDENT_OVERLAY, "HEAD"), sum);
}

#[test]
fn incident_every_file_and_link_of_the_closure_changes_the_checksum() {
    let g = gitops_repo();
    let r = &g.repo;
    let base = r.head();
    let baseline = checksum(r, INCIDENT_OVERLAY, None);
    let (_, names) = list(r, INCIDENT_OVERLAY, None);

    // Every file of the symlinked base directory, except its README, is read.
    let base_files: Vec<String> = r
        .ls_files()
        .into_iter()
        .filter(|p| p.starts_with("bases/prod-east/") && !p.ends_with("README.md"))
        .collect();
    assert!(base_files.len() >= 6, "{base_files:?}");
    for f in &base_files {
        if r.is_symlink(f) {
            assert!(
                names.contains(&format!("link:{f}")),
                "{f} not listed as a link"
            );
        } else {
            assert!(
                names.contains(&format!("file:{f}")),
                "{f} not in the closure"
            );
        }
    }

    let mut seen = BTreeSet::new();
    seen.insert(baseline.clone());
    let mut tested = 0;
    for name in &names {
        if let Some(path) = name.strip_prefix("file:") {
            r.append(path, COMMENT);
        } else if let Some(path) = name.strip_prefix("link:") {
            // Re-point the link to an identical copy of its target directory.
            let target = r.read_link(path);
            let parent = path.rsplit_once('/').map(|x| x.0).unwrap_or("");
            let real = r.path().join(parent).join(&target).canonicalize().unwrap();
            let real_rel = real
                .strip_prefix(r.path().canonicalize().unwrap())
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            copy_dir(r, &real_rel, &format!("{real_rel}-copy"));
            r.symlink(path, &format!("{target}-copy"));
        } else {
            panic!("unexpected entry {name} in the incident closure");
        }
        let c = r.commit(&format!("touch {name}"));
        let after = checksum(r, INCIDENT_OVERLAY, Some(&c));
        assert_ne!(
            after, baseline,
            "changing {name} did not change the checksum"
        );
        assert!(
            seen.insert(after),
            "changing {name} gave a checksum seen before"
        );
        tested += 1;
        r.reset_hard(&base);
    }
    assert_eq!(tested, INCIDENT_CLOSURE.len());
}

#[test]
fn incident_ingress_host_change_in_symlinked_base_is_detected() {
    let g = gitops_repo();
    let r = &g.repo;
    let before = checksum(r, INCIDENT_OVERLAY, None);
    let before_render = r.kustomize("HEAD", INCIDENT_OVERLAY).unwrap();
    let p = "bases/prod-east/patches/ingress-host.yaml";
    let text = String::from_utf8(r.read(p)).unwrap();
    r.write(p, text.replace("east.example.com", "east-v2.example.com"));
    let c = r.commit("ingress: new host");
    let after_render = r.kustomize(&c, INCIDENT_OVERLAY).unwrap();
    assert_ne!(
        before_render, after_render,
        "fixture: the host change must render"
    );
    assert!(after_render.contains("east-v2.example.com"));
    assert_ne!(checksum(r, INCIDENT_OVERLAY, Some(&c)), before);
}

#[test]
fn incident_unrelated_changes_do_not_change_the_checksum() {
    let g = gitops_repo();
    let r = &g.repo;
    let baseline = checksum(r, INCIDENT_OVERLAY, None);
    let base = r.head();
    let unrelated = [
        "README.md",
        "docs/runbook.md",
        "shared/README.md",
        "bases/prod-east/README.md",
        "bases/web/README.md",
        "overlays/prod/README.md",
        "overlays/prod/west/kustomization.yaml",
        "bases/prod-west/ingress-host.yaml",
        "bases/prod-west/kustomization.yaml",
        "shared/config/west/west.env",
        "shared/config/west/region.properties",
        "overlays/staging/east/settings.env",
        "overlays/staging/common/kustomization.yaml",
        "overlays/dev/local/kustomization.yaml",
        "overlays/prod/edge/kustomization.yaml",
    ];
    // One at a time…
    for f in unrelated {
        r.append(f, COMMENT);
        let c = r.commit(&format!("unrelated: {f}"));
        assert_eq!(
            checksum(r, INCIDENT_OVERLAY, Some(&c)),
            baseline,
            "changing {f} (not read by the overlay) changed the checksum"
        );
        r.reset_hard(&base);
    }
    // …and all together, plus new and deleted unrelated files.
    for f in unrelated {
        r.append(f, COMMENT);
    }
    r.write(
        "overlays/prod/north/kustomization.yaml",
        "resources:\n- ../east\n",
    );
    r.write("bases/prod-east/NOTES.txt", "not referenced\n");
    r.write("shared/config/east/unused.env", "UNUSED=1\n");
    r.remove("bases/prod-east/README.md");
    r.remove("bases/web/README.md");
    let c = r.commit("unrelated churn");
    assert_eq!(checksum(r, INCIDENT_OVERLAY, Some(&c)), baseline);
}

// ---------------------------------------------------------------------------
// output format
// ---------------------------------------------------------------------------

#[test]
fn list_output_is_sorted_prefixed_and_clean() {
    let g = gitops_repo();
    let r = &g.repo;
    for overlay in GITOPS_OVERLAYS.iter().chain([&GITOPS_REMOTE_OVERLAY]) {
        let run = checksum_run(r, overlay, None, &["--list"]);
        let out = run.ok();
        assert!(out.ends_with('\n'), "output should end with a newline");
        let lines: Vec<&str> = out.lines().collect();
        assert_checksum_format(lines[0]);
        assert_eq!(
            lines[0],
            checksum(r, overlay, None),
            "--list line 1 != plain output"
        );
        let names = &lines[1..];
        assert!(!names.is_empty());
        for w in names.windows(2) {
            assert!(
                w[0].as_bytes() < w[1].as_bytes(),
                "{overlay}: not strictly ascending: {w:?}"
            );
        }
        for n in names {
            let (kind, path) = n
                .split_once(':')
                .unwrap_or_else(|| panic!("no prefix: {n}"));
            assert!(
                ["file", "link", "remote", "plugin", "submodule"].contains(&kind),
                "bad prefix in {n}"
            );
            if kind != "remote" {
                assert!(!path.starts_with('/') && !path.starts_with("./"), "{n}");
                assert!(!path.contains("//") && !path.contains("/./"), "{n}");
                assert!(
                    !path
                        .split('/')
                        .any(|c| c == ".." || c == "." || c.is_empty()),
                    "{n}"
                );
            }
        }
    }
}

#[test]
fn list_reports_remote_resources_without_fetching() {
    let g = gitops_repo();
    let (_, names) = list(&g.repo, GITOPS_REMOTE_OVERLAY, None);
    let mut expected = incident_closure_sorted();
    expected.push("file:overlays/prod/edge/kustomization.yaml".into());
    expected.push(format!("remote:{EDGE_REMOTE}"));
    expected.sort();
    assert_eq!(names, expected);
    cross_check(&g.repo, GITOPS_REMOTE_OVERLAY, "HEAD");
}

#[test]
fn json_output_fields_and_revision_forms() {
    let g = gitops_repo();
    let r = &g.repo;
    r.git(&["branch", "release", &g.commits[8]]);
    let head = r.head();
    let short = &g.commits[9][..8];
    for (rev, want) in [
        (None, head.clone()),
        (Some("HEAD"), head.clone()),
        (Some("main"), head.clone()),
        (Some("release"), g.commits[8].clone()),
        (Some("HEAD~2"), g.commits[g.commits.len() - 3].clone()),
        (Some(short), g.commits[9].clone()),
        (Some(g.commits[5].as_str()), g.commits[5].clone()),
    ] {
        let doc = json(r, INCIDENT_OVERLAY, rev);
        assert_eq!(doc["version"], 1);
        assert_eq!(
            doc["revision"].as_str().unwrap(),
            want,
            "revision for --rev {rev:?}"
        );
        assert_eq!(doc["overlay"].as_str().unwrap(), INCIDENT_OVERLAY);
        let text = checksum(r, INCIDENT_OVERLAY, rev);
        assert_eq!(
            doc["checksum"].as_str().unwrap(),
            text,
            "--json vs text for {rev:?}"
        );
        assert_eq!(checksum_from_json(&doc), text);
        let entries = json_entries(&doc);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for e in &entries {
            assert_eq!(e.name, format!("{}:{}", e.kind, e.target));
        }
    }
    // The overlay is echoed cleaned.
    for given in [
        "./overlays/prod/east",
        "overlays/prod/east/",
        "overlays//prod/./east",
        "overlays/prod/west/../east",
    ] {
        let doc = json(r, given, None);
        assert_eq!(
            doc["overlay"].as_str().unwrap(),
            INCIDENT_OVERLAY,
            "--overlay {given}"
        );
        assert_eq!(
            doc["checksum"].as_str().unwrap(),
            checksum(r, INCIDENT_OVERLAY, None)
        );
    }
    // Only the documented top-level keys, one object on stdout.
    let run = checksum_run(r, INCIDENT_OVERLAY, None, &["--json"]);
    let doc: serde_json::Value = serde_json::from_str(run.ok().trim()).unwrap();
    let keys: BTreeSet<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    for k in ["version", "checksum", "revision", "overlay", "entries"] {
        assert!(keys.contains(k), "--json lacks {k}");
    }
    for e in doc["entries"].as_array().unwrap() {
        let ek: BTreeSet<&str> = e.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(ek, BTreeSet::from(["name", "kind", "target", "sha256"]));
    }
}

#[test]
fn independent_recomputation_matches_for_every_overlay_and_commit() {
    let g = gitops_repo();
    let r = &g.repo;
    let all: Vec<&str> = GITOPS_OVERLAYS
        .iter()
        .copied()
        .chain([GITOPS_REMOTE_OVERLAY])
        .collect();
    for (i, c) in g.commits.iter().enumerate() {
        for o in &all {
            // An overlay that does not exist yet at an early commit is an error, not a checksum.
            match checksum_outcome(r, o, Some(c)) {
                Ok(sum) => assert_eq!(cross_check(r, o, c), sum, "{o} at commit #{i}"),
                Err((code, err)) => {
                    assert_eq!(code, 1, "{o} at commit #{i}: {err}");
                    assert!(err.contains("not found"), "{o} at #{i}: {err}");
                }
            }
        }
    }
}

#[test]
fn list_quotes_names_with_quotes_and_backslashes_like_git() {
    let r = Repo::new();
    r.write("q/we\"ird.yaml", configmap_yaml("weird", "a"));
    r.write("q/back\\slash.yaml", configmap_yaml("backslash", "b"));
    r.write("q/plain.yaml", configmap_yaml("plain", "c"));
    r.write(
        "q/kustomization.yaml",
        "resources:\n- 'we\"ird.yaml'\n- 'back\\slash.yaml'\n- plain.yaml\n",
    );
    let c = r.commit("odd names");
    assert!(r.kustomize(&c, "q").is_ok(), "fixture must render");
    let (_, names) = list(&r, "q", None);
    assert_eq!(
        names,
        vec![
            "\"file:q/back\\\\slash.yaml\"".to_string(),
            "file:q/kustomization.yaml".to_string(),
            "file:q/plain.yaml".to_string(),
            "\"file:q/we\\\"ird.yaml\"".to_string(),
        ]
    );
    let doc = json(&r, "q", None);
    let raw: Vec<String> = json_entries(&doc).into_iter().map(|e| e.name).collect();
    assert!(raw.contains(&"file:q/we\"ird.yaml".to_string()), "{raw:?}");
    cross_check(&r, "q", &c);
}

#[test]
fn working_tree_edits_do_not_change_the_output() {
    let g = gitops_repo();
    let r = &g.repo;
    let text = checksum_run(r, INCIDENT_OVERLAY, None, &["--list"])
        .ok()
        .to_string();
    let js = checksum_run(r, INCIDENT_OVERLAY, None, &["--json"])
        .ok()
        .to_string();
    // Unstaged edits, a deleted file, a re-pointed link, an untracked second
    // kustomization file, and a staged (but uncommitted) edit.
    r.append("bases/prod-east/kustomization.yaml", COMMENT);
    r.append("shared/config/east/east.env", "EXTRA=1\n");
    r.remove("bases/web/nginx.conf");
    r.symlink("bases/prod-east/config", "../../shared/config/west");
    r.write("overlays/prod/east/kustomization.yml", "resources: []\n");
    r.append("bases/api/api.env", "STAGED=1\n");
    r.git(&["add", "bases/api/api.env"]);
    assert_eq!(
        checksum_run(r, INCIDENT_OVERLAY, None, &["--list"]).ok(),
        text
    );
    assert_eq!(
        checksum_run(r, INCIDENT_OVERLAY, None, &["--json"]).ok(),
        js
    );
    assert_eq!(
        checksum_run(r, INCIDENT_OVERLAY, Some("HEAD"), &["--list"]).ok(),
        text
    );
    // Even with the working tree gone entirely.
    for f in r.ls_files() {
        r.remove(&f);
    }
    assert_eq!(
        checksum_run(r, INCIDENT_OVERLAY, None, &["--list"]).ok(),
        text
    );
}

// ---------------------------------------------------------------------------
// exit codes and error messages
// ---------------------------------------------------------------------------

#[test]
fn bad_input_exits_2() {
    let g = gitops_repo();
    let r = &g.repo;
    let repo = r.path_str();
    let not_repo = tempfile::tempdir().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "checksum",
            "--repo",
            repo,
            "--overlay",
            INCIDENT_OVERLAY,
            "--rev",
            "no-such-branch",
        ],
        vec![
            "checksum",
            "--repo",
            repo,
            "--overlay",
            INCIDENT_OVERLAY,
            "--rev",
            "0123456789abcdef0123456789abcdef01234567",
        ],
        vec![
            "checksum",
            "--repo",
            repo,
            "--overlay",
            INCIDENT_OVERLAY,
            "--rev",
            "HEAD~100",
        ],
        vec![
            "checksum",
            "--repo",
            not_repo.path().to_str().unwrap(),
            "--overlay",
            INCIDENT_OVERLAY,
        ],
        vec![
            "checksum",
            "--repo",
            "does/not/exist/anywhere",
            "--overlay",
            INCIDENT_OVERLAY,
        ],
        vec![
            "checksum",
            "--repo",
            repo,
            "--overlay",
            "/overlays/prod/east",
        ],
        vec!["checksum", "--repo", repo, "--overlay", "/"],
        vec!["checksum", "--repo", repo, "--overlay", "../x"],
        vec!["checksum", "--repo", repo, "--overlay", ".."],
        vec!["checksum", "--repo", repo, "--overlay", "overlays/../../x"],
        vec!["checksum", "--repo", repo],
        vec![
            "checksum",
            "--repo",
            repo,
            "--overlay",
            INCIDENT_OVERLAY,
            "--no-such-flag",
        ],
    ];
    for args in cases {
        let run = run_sg(&args);
        assert_eq!(
            run.code, 2,
            "{args:?} should exit 2\nstdout:{}\nstderr:{}",
            run.stdout, run.stderr
        );
        assert!(
            !run.stderr.trim().is_empty(),
            "{args:?}: no message on stderr"
        );
        assert!(
            !run.stdout.starts_with("sha256:"),
            "{args:?}: printed a checksum"
        );
    }
}

/// A repository holding one small overlay per error kind.
fn error_repo() -> Repo {
    let r = Repo::new();
    r.write("e/ok.yaml", configmap_yaml("ok", "1"));
    r.write(
        "e/missing-file/kustomization.yaml",
        "resources:\n- nope.yaml\n",
    );
    r.write(
        "e/missing-dir/kustomization.yaml",
        "resources:\n- ../does-not-exist\n",
    );
    r.write(
        "e/missing-patch/kustomization.yaml",
        "resources:\n- ../ok.yaml\npatches:\n- path: missing-patch.yaml\n",
    );
    r.write(
        "e/missing-env/kustomization.yaml",
        "configMapGenerator:\n- name: x\n  envs:\n  - vars.env\n",
    );
    r.write("e/plain-dir/readme.txt", "no kustomization here\n");
    r.write(
        "e/no-kust/kustomization.yaml",
        "resources:\n- ../plain-dir\n",
    );
    r.write("e/two/kustomization.yaml", "resources: []\n");
    r.write("e/two/kustomization.yml", "resources: []\n");
    r.write("e/multi/kustomization.yaml", "resources:\n- ../two\n");
    r.write("e/three/Kustomization", "resources: []\n");
    r.write("e/three/kustomization.yaml", "resources: []\n");
    r.write(
        "e/invalid/kustomization.yaml",
        "resources: [unclosed\n  - : :\n",
    );
    r.write(
        "e/invalid-nested/kustomization.yaml",
        "resources:\n- ../invalid\n",
    );
    r.write(
        "e/escape-path/kustomization.yaml",
        "resources:\n- ../../../outside\n",
    );
    r.write(
        "e/escape-file/kustomization.yaml",
        "resources:\n- ../../../../etc/passwd\n",
    );
    r.write(
        "e/escape-back/kustomization.yaml",
        "resources:\n- ../../../repo/e/ok.yaml\n",
    );
    r.write("e/escape-link/kustomization.yaml", "resources:\n- base\n");
    r.symlink("e/escape-link/base", "../../../outside");
    r.write("e/abs-link/kustomization.yaml", "resources:\n- base\n");
    r.symlink("e/abs-link/base", "/etc");
    r.write(
        "e/abs-path/kustomization.yaml",
        "resources:\n- /etc/hosts\n",
    );
    r.write("e/loop/kustomization.yaml", "resources:\n- a\n");
    r.symlink("e/loop/a", "b");
    r.symlink("e/loop/b", "a");
    r.write("e/selfloop/kustomization.yaml", "resources:\n- s\n");
    r.symlink("e/selfloop/s", "s");
    r.write("e/cycle/kustomization.yaml", "resources:\n- ../cycle\n");
    r.write("e/cycle-dot/kustomization.yaml", "resources:\n- .\n");
    r.write("e/cycle-a/kustomization.yaml", "resources:\n- ../cycle-b\n");
    r.write("e/cycle-b/kustomization.yaml", "resources:\n- ../cycle-a\n");
    r.write("e/comp-file/comp.yaml", configmap_yaml("c", "1"));
    r.write(
        "e/comp-file/kustomization.yaml",
        "components:\n- comp.yaml\n",
    );
    r.write("e/gen-dir/somedir/a.txt", "a\n");
    r.write(
        "e/gen-dir/kustomization.yaml",
        "configMapGenerator:\n- name: g\n  files:\n  - somedir\n",
    );
    r.write("e/chain/kustomization.yaml", "resources:\n- ../chain-mid\n");
    r.write(
        "e/chain-mid/kustomization.yaml",
        "resources:\n- ../ok.yaml\n- missing.yaml\n",
    );
    r.write("e/file-overlay.yaml", configmap_yaml("f", "1"));
    // The repo root is a kustomization too; `rc/a` points back at it.
    r.write("kustomization.yaml", "resources:\n- e/ok.yaml\n");
    r.write("rc/a/kustomization.yaml", "resources:\n- ../..\n");
    r.commit("error cases");
    r
}

#[test]
fn overlay_errors_exit_1_with_phrase_and_path() {
    let r = error_repo();
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "e/missing-file",
            &["not found"],
            &["e/missing-file/nope.yaml"],
        ),
        ("e/missing-dir", &["not found"], &["e/does-not-exist"]),
        (
            "e/missing-patch",
            &["not found"],
            &["e/missing-patch/missing-patch.yaml"],
        ),
        ("e/missing-env", &["not found"], &["e/missing-env/vars.env"]),
        ("e/absent-overlay", &["not found"], &["e/absent-overlay"]),
        ("e/no-kust", &["no kustomization file"], &["e/plain-dir"]),
        ("e/plain-dir", &["no kustomization file"], &["e/plain-dir"]),
        ("e/multi", &["multiple kustomization files"], &["e/two"]),
        ("e/two", &["multiple kustomization files"], &["e/two"]),
        ("e/three", &["multiple kustomization files"], &["e/three"]),
        (
            "e/invalid",
            &["invalid kustomization"],
            &["e/invalid/kustomization.yaml"],
        ),
        (
            "e/invalid-nested",
            &["invalid kustomization"],
            &["e/invalid/kustomization.yaml"],
        ),
        (
            "e/escape-path",
            &["leaves the repository"],
            &["e/escape-path/kustomization.yaml"],
        ),
        (
            "e/escape-file",
            &["leaves the repository"],
            &["e/escape-file/kustomization.yaml"],
        ),
        // Leaves and comes back in: still an error (contract 4.1).
        (
            "e/escape-back",
            &["leaves the repository"],
            &["e/escape-back/kustomization.yaml"],
        ),
        (
            "e/escape-link",
            &["leaves the repository"],
            &["e/escape-link/base"],
        ),
        (
            "e/abs-link",
            &["leaves the repository", "absolute"],
            &["e/abs-link/base"],
        ),
        (
            "e/abs-path",
            &["leaves the repository", "absolute"],
            &["e/abs-path/kustomization.yaml"],
        ),
        ("e/loop", &["symlink loop"], &["e/loop/a"]),
        ("e/selfloop", &["symlink loop"], &["e/selfloop/s"]),
        ("e/cycle", &["cycle detected"], &["e/cycle"]),
        ("e/cycle-dot", &["cycle detected"], &["e/cycle-dot"]),
        (
            "e/cycle-a",
            &["cycle detected"],
            &["e/cycle-a", "e/cycle-b"],
        ),
        ("rc/a", &["cycle detected"], &["rc/a/kustomization.yaml"]),
        (
            "e/comp-file",
            &["expected a directory"],
            &["e/comp-file/comp.yaml"],
        ),
        ("e/gen-dir", &["expected a file"], &["e/gen-dir/somedir"]),
        (
            "e/file-overlay.yaml",
            &["expected a directory"],
            &["e/file-overlay.yaml"],
        ),
    ];
    let mut failures = Vec::new();
    for (overlay, phrases, paths) in cases {
        let run = checksum_run(&r, overlay, None, &[]);
        let res = std::panic::catch_unwind(|| assert_error(&run, phrases, paths));
        if res.is_err() {
            failures.push(format!(
                "--overlay {overlay}: want exit 1, one of {phrases:?}, paths {paths:?}; got exit {} stderr: {}",
                run.code,
                run.stderr.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} overlay-error case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn overlay_error_names_the_chain_of_kustomizations() {
    let r = error_repo();
    let run = checksum_run(&r, "e/chain", None, &[]);
    assert_error(&run, &["not found"], &["e/chain-mid/missing.yaml"]);
    assert!(
        run.stderr
            .contains("via e/chain/kustomization.yaml -> e/chain-mid/kustomization.yaml"),
        "chain missing from: {}",
        run.stderr
    );
    let run = checksum_run(&r, "e/invalid-nested", None, &[]);
    assert!(
        run.stderr.contains("e/invalid-nested/kustomization.yaml"),
        "chain missing from: {}",
        run.stderr
    );
}

#[test]
fn kustomize_agrees_the_error_cases_fail() {
    // Sanity of the fixture: kustomize itself rejects the cases that it can
    // see on a checkout (escapes outside the temp checkout are not checked).
    let r = error_repo();
    let d = r.checkout("HEAD");
    for o in [
        "e/missing-file",
        "e/missing-dir",
        "e/no-kust",
        "e/multi",
        "e/invalid",
        "e/loop",
        "e/selfloop",
        "e/cycle",
        "e/cycle-a",
        "rc/a",
        "e/comp-file",
        "e/gen-dir",
        "e/chain",
    ] {
        assert!(
            kustomize_dir(d.path(), o).is_err(),
            "kustomize accepted {o}"
        );
    }
    assert!(
        kustomize_dir(d.path(), "").is_ok(),
        "the root kustomization renders"
    );
}

// ---------------------------------------------------------------------------
// determinism
// ---------------------------------------------------------------------------

#[test]
fn identical_from_independent_clones() {
    let g = gitops_repo();
    let a = g.repo.clone_no_local();
    let b = g.repo.clone_no_local();
    for o in GITOPS_OVERLAYS.iter().chain([&GITOPS_REMOTE_OVERLAY]) {
        let orig = checksum_run(&g.repo, o, None, &["--json"]).ok().to_string();
        let ja = checksum_run(&a, o, None, &["--json"]).ok().to_string();
        let jb = checksum_run(&b, o, Some("origin/main"), &["--json"])
            .ok()
            .to_string();
        assert_eq!(orig, ja, "{o}: clone A differs");
        assert_eq!(orig, jb, "{o}: clone B differs");
        assert_eq!(
            checksum(&a, o, Some(&g.commits[8])),
            checksum(&g.repo, o, Some(&g.commits[8]))
        );
    }
}

#[test]
fn older_revision_keeps_its_checksum_after_newer_commits() {
    let g = gitops_repo();
    let r = &g.repo;
    let then = r.head();
    let taken: Vec<(String, String)> = GITOPS_OVERLAYS
        .iter()
        .map(|o| {
            (
                o.to_string(),
                checksum_run(r, o, None, &["--list"]).ok().to_string(),
            )
        })
        .collect();
    // Newer commits touching everything the overlays read.
    r.append("bases/prod-east/kustomization.yaml", COMMENT);
    r.append("shared/config/east/east.env", "NEW=1\n");
    r.commit("newer 1");
    r.append("bases/web/deployment.yaml", COMMENT);
    r.append("overlays/dev/local/overrides.properties", "x=1\n");
    r.append("overlays/staging/east/settings.env", "Y=2\n");
    for f in ["region.properties", "feature-flags.txt", "west.env"] {
        let bytes = r.read(&format!("shared/config/west/{f}"));
        r.write(&format!("shared/config/west2/{f}"), bytes);
    }
    r.symlink("bases/prod-west/config", "../../shared/config/west2");
    r.commit("newer 2");
    for (o, out) in &taken {
        assert_ne!(
            checksum_run(r, o, None, &["--list"]).ok(),
            out,
            "{o} at HEAD should differ"
        );
        assert_eq!(
            checksum_run(r, o, Some(&then), &["--list"]).ok(),
            out,
            "{o} at the old rev"
        );
    }
}

// ---------------------------------------------------------------------------
// references the checksum cannot vouch for
// ---------------------------------------------------------------------------

#[test]
fn remote_references_of_every_form_are_listed_as_written() {
    let r = Repo::new();
    r.write("app/cm.yaml", configmap_yaml("cm", "1"));
    r.write(
        "app/kustomization.yaml",
        r#"resources:
- cm.yaml
- https://github.com/example/one//deploy?ref=v1.0.0
- git@github.com:example/two.git//base?ref=main
- github.com/example/three/base?ref=v3
- ssh://git@example.com/org/four.git//k8s
- git::https://example.com/org/five.git//x?timeout=90s
components:
- https://github.com/example/comp//monitoring?ref=v2
patches:
- path: https://example.com/patches/p.yaml
"#,
    );
    r.commit("remotes");
    let (_, names) = list(&r, "app", None);
    let mut expected: Vec<String> = [
        "file:app/cm.yaml",
        "file:app/kustomization.yaml",
        "remote:https://github.com/example/one//deploy?ref=v1.0.0",
        "remote:git@github.com:example/two.git//base?ref=main",
        "remote:github.com/example/three/base?ref=v3",
        "remote:ssh://git@example.com/org/four.git//k8s",
        "remote:git::https://example.com/org/five.git//x?timeout=90s",
        "remote:https://github.com/example/comp//monitoring?ref=v2",
        "remote:https://example.com/patches/p.yaml",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    expected.sort();
    assert_eq!(names, expected);
    let head = r.head();
    cross_check(&r, "app", &head);
}

#[test]
fn scheme_less_gitlab_path_is_local() {
    // kustomize-fields.md: `gitlab.com/x/y` without a scheme is a local path.
    let r = Repo::new();
    r.write("app/kustomization.yaml", "resources:\n- gitlab.com/x/y\n");
    r.commit("gitlab");
    assert_error(
        &checksum_run(&r, "app", None, &[]),
        &["not found"],
        &["app/gitlab.com/x/y"],
    );
}

#[test]
fn submodule_reached_is_listed_with_its_commit() {
    let r = Repo::new();
    r.write("app/cm.yaml", configmap_yaml("cm", "1"));
    r.write(
        "app/kustomization.yaml",
        "resources:\n- cm.yaml\n- ../vendor/lib\n",
    );
    let sub = "1234567890abcdef1234567890abcdef12345678";
    r.git(&[
        "update-index",
        "--add",
        "--cacheinfo",
        &format!("160000,{sub},vendor/lib"),
    ]);
    r.git(&["add", "app"]);
    let out = git_command(r.path())
        .args(["commit", "-q", "-m", "gitlink"])
        .env("GIT_AUTHOR_DATE", "1700000000 +0000")
        .env("GIT_COMMITTER_DATE", "1700000000 +0000")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = json(&r, "app", None);
    let entries = json_entries(&doc);
    let e = entries
        .iter()
        .find(|e| e.name == "submodule:vendor/lib")
        .unwrap_or_else(|| panic!("no submodule entry in {doc}"));
    assert_eq!(e.sha256, hex::encode(sha256(sub.as_bytes())));
    cross_check(&r, "app", "HEAD");
    // An overlay inside a submodule cannot be checksummed.
    assert_eq!(checksum_run(&r, "vendor/lib/overlay", None, &[]).code, 1);
}

#[test]
fn plugin_configs_are_listed() {
    let r = Repo::new();
    r.write("p/cm.yaml", configmap_yaml("cm", "1"));
    r.write(
        "p/plugin.yaml",
        "apiVersion: someteam.example.com/v1\nkind: SecretsFromVault\nmetadata:\n  name: vault\n",
    );
    r.write(
        "p/kustomization.yaml",
        r#"resources:
- cm.yaml
generators:
- |-
  apiVersion: example.com/v1
  kind: Fancy
  metadata:
    name: inline-gen
transformers:
- plugin.yaml
- |-
  apiVersion: builtin
  kind: AnnotationsTransformer
  metadata:
    name: notes
  annotations:
    a: b
  fieldSpecs:
  - path: metadata/annotations
    create: true
"#,
    );
    r.commit("plugins");
    let (_, names) = list(&r, "p", None);
    for want in ["plugin:p/plugin.yaml#0", "plugin:p/kustomization.yaml#0"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n == "plugin:p/kustomization.yaml#1"),
        "a builtin inline config got an entry: {names:?}"
    );
    assert!(names.iter().any(|n| n == "file:p/kustomization.yaml"));
    assert!(names.iter().any(|n| n == "file:p/cm.yaml"));
    cross_check(&r, "p", "HEAD");
}

/// What kustomize refuses to build is an OverlayError, not a checksum: a
/// chart neither vendored nor pullable (no repo), a chart with an empty
/// name, a ValueAddTransformer whose targetFilePath is missing.
#[test]
fn inputs_kustomize_refuses_are_overlay_errors() {
    let r = Repo::new();
    r.write("nochart/kustomization.yaml", "helmCharts:\n- name: ghost\n");
    r.write(
        "noname/kustomization.yaml",
        "helmCharts:\n- name: ''\n  repo: https://charts.example.com\n",
    );
    r.write("va/cm.yaml", configmap_yaml("a", "1"));
    r.write(
        "va/kustomization.yaml",
        "resources:\n- cm.yaml\ntransformers:\n- |-\n  apiVersion: builtin\n  kind: ValueAddTransformer\n  metadata:\n    name: v\n  value: hello\n  targetFilePath: nothere.yaml\n",
    );
    let c = r.commit("refused inputs");
    assert_error(
        &checksum_run(&r, "nochart", None, &[]),
        &["no chart at nochart/charts/ghost", "no repo"],
        &["helmCharts[0]"],
    );
    assert_error(
        &checksum_run(&r, "noname", None, &[]),
        &["chart name cannot be empty"],
        &["noname/kustomization.yaml"],
    );
    assert_error(
        &checksum_run(&r, "va", None, &[]),
        &["nothere.yaml"],
        &["targetFilePath"],
    );
    // kustomize (no helm needed for this one) refuses it too.
    let err = kustomize_dir(r.checkout(&c).path(), "va").unwrap_err();
    assert!(err.contains("nothere.yaml"), "{err}");
    // The file present: a checksum that covers it.
    r.write(
        "va/nothere.yaml",
        "- selector: {kind: ConfigMap}\n  fieldPath: metadata/annotations/x\n",
    );
    r.commit("target file added");
    let (_, names) = list(&r, "va", None);
    assert!(
        names.iter().any(|n| n == "file:va/nothere.yaml"),
        "{names:?}"
    );
}

/// kustomize refuses an empty kustomization ("kustomization.yaml is
/// empty"), as the overlay or as a base: so does the checksum.
#[test]
fn empty_kustomizations_are_overlay_errors() {
    let r = Repo::new();
    r.write("zero/kustomization.yaml", "");
    r.write(
        "typeonly/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n",
    );
    r.write("app/kustomization.yaml", "resources:\n- ../zero\n");
    let c = r.commit("empty kustomizations");
    for overlay in ["zero", "typeonly", "app"] {
        assert_error(
            &checksum_run(&r, overlay, None, &[]),
            &["kustomization is empty"],
            &[],
        );
        let err = kustomize_dir(r.checkout(&c).path(), overlay).unwrap_err();
        assert!(err.contains("is empty"), "{overlay}: {err}");
    }
}

/// A generator entry that is a directory: kustomize builds it and takes
/// every resource of the result as a plugin config, including those of
/// kustomizations further down. A builtin config found there reads its files
/// relative to the kustomization that lists the generator.
#[test]
fn nested_generator_directories_are_followed() {
    let r = Repo::new();
    r.write("app/cm.yaml", configmap_yaml("plain", "1"));
    r.write(
        "app/kustomization.yaml",
        "resources:\n- cm.yaml\ngenerators:\n- gens\n",
    );
    r.write("app/gens/kustomization.yaml", "resources:\n- nested\n");
    r.write(
        "app/gens/nested/kustomization.yaml",
        "components:\n- ../part\n",
    );
    r.write(
        "app/gens/part/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nresources:\n- gen.yaml\n",
    );
    r.write(
        "app/gens/part/gen.yaml",
        "apiVersion: builtin\nkind: ConfigMapGenerator\nmetadata:\n  name: from-nested\nfiles:\n- data.txt\n",
    );
    r.write("app/data.txt", "v1\n");
    let c0 = r.commit("nested generator");
    let (sum0, names) = list(&r, "app", None);
    assert!(
        names.iter().any(|n| n == "file:app/data.txt"),
        "the nested generator's file is missing: {names:?}"
    );
    cross_check(&r, "app", "HEAD");
    let before = kustomize_dir(r.checkout(&c0).path(), "app").unwrap();
    r.write("app/data.txt", "v2\n");
    let c1 = r.commit("change the generated data");
    let after = kustomize_dir(r.checkout(&c1).path(), "app").unwrap();
    assert_ne!(before, after, "kustomize reads app/data.txt");
    let (sum1, _) = list(&r, "app", None);
    assert_ne!(sum0, sum1, "a change kustomize sees changes the checksum");
}

// ---------------------------------------------------------------------------
// hostile trees
// ---------------------------------------------------------------------------

#[test]
fn hostile_symlink_escapes_are_errors() {
    let r = Repo::new();
    r.write("outside-sibling.yaml", configmap_yaml("o", "1"));
    r.write("a/b/kustomization.yaml", "resources:\n- base\n");
    r.symlink("a/b/base", "../../../x");
    r.write("c/d/kustomization.yaml", "resources:\n- base\n");
    r.symlink("c/d/base", "/tmp");
    r.write("e/f/kustomization.yaml", "resources:\n- cm.yaml\n");
    r.symlink("e/f/cm.yaml", "../../../../../../etc/passwd");
    // A link that leaves and re-enters the repository.
    r.write("g/h/kustomization.yaml", "resources:\n- cm.yaml\n");
    r.symlink("g/h/cm.yaml", "../../../repo/outside-sibling.yaml");
    r.commit("escapes");
    assert_error(
        &checksum_run(&r, "a/b", None, &[]),
        &["leaves the repository"],
        &["a/b/base"],
    );
    assert_error(
        &checksum_run(&r, "c/d", None, &[]),
        &["leaves the repository", "absolute"],
        &["c/d/base"],
    );
    assert_error(
        &checksum_run(&r, "e/f", None, &[]),
        &["leaves the repository"],
        &["e/f/cm.yaml"],
    );
    assert_error(
        &checksum_run(&r, "g/h", None, &[]),
        &["leaves the repository"],
        &["g/h/cm.yaml"],
    );
    // The overlay path itself through an escaping link.
    r.symlink("ov", "../elsewhere");
    r.commit("escaping overlay link");
    assert_error(
        &checksum_run(&r, "ov", None, &[]),
        &["leaves the repository"],
        &["ov"],
    );
}

#[test]
fn hostile_empty_symlink_target_is_an_error() {
    let r = Repo::new();
    r.write("i/kustomization.yaml", "resources:\n- cm.yaml\n");
    // git can store an empty link target even though most filesystems cannot.
    let oid = {
        let mut child = git_command(r.path())
            .args(["hash-object", "-w", "--stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    r.git(&["add", "i/kustomization.yaml"]);
    r.git(&[
        "update-index",
        "--add",
        "--cacheinfo",
        &format!("120000,{oid},i/cm.yaml"),
    ]);
    let out = git_command(r.path())
        .args(["commit", "-q", "-m", "empty link"])
        .env("GIT_AUTHOR_DATE", "1700000000 +0000")
        .env("GIT_COMMITTER_DATE", "1700000000 +0000")
        .output()
        .unwrap();
    assert!(out.status.success());
    let run = checksum_run(&r, "i", None, &[]);
    assert_eq!(
        run.code, 1,
        "empty symlink target must be an overlay error: {}",
        run.stderr
    );
    assert!(run.stderr.contains("i/cm.yaml"), "{}", run.stderr);
}

#[test]
fn hostile_symlink_loops_are_errors() {
    let r = Repo::new();
    r.write("l/kustomization.yaml", "resources:\n- a\n");
    r.symlink("l/a", "b");
    r.symlink("l/b", "a");
    r.write("s/kustomization.yaml", "resources:\n- self\n");
    r.symlink("s/self", "self");
    r.write("d/kustomization.yaml", "resources:\n- loop/x.yaml\n");
    r.symlink("d/loop", "../d/loop");
    // A 300-link chain that ends in a real file: more than 255 hops.
    r.write("chain/target.yaml", configmap_yaml("t", "1"));
    r.write("chain/kustomization.yaml", "resources:\n- l000\n");
    for i in 0..300 {
        let next = if i == 299 {
            "target.yaml".to_string()
        } else {
            format!("l{:03}", i + 1)
        };
        r.symlink(&format!("chain/l{i:03}"), &next);
    }
    // A 100-link chain is fine.
    r.write("short/target.yaml", configmap_yaml("t", "1"));
    r.write("short/kustomization.yaml", "resources:\n- l000\n");
    for i in 0..100 {
        let next = if i == 99 {
            "target.yaml".to_string()
        } else {
            format!("l{:03}", i + 1)
        };
        r.symlink(&format!("short/l{i:03}"), &next);
    }
    r.commit("loops");
    assert_error(
        &checksum_run(&r, "l", None, &[]),
        &["symlink loop"],
        &["l/a"],
    );
    assert_error(
        &checksum_run(&r, "s", None, &[]),
        &["symlink loop"],
        &["s/self"],
    );
    assert_error(
        &checksum_run(&r, "d", None, &[]),
        &["symlink loop"],
        &["d/loop"],
    );
    assert_error(
        &checksum_run(&r, "chain", None, &[]),
        &["symlink loop"],
        &["chain/l000"],
    );
    let (_, names) = list(&r, "short", None);
    assert_eq!(names.len(), 102, "100 links + 2 files: {names:?}");
    cross_check(&r, "short", "HEAD");
}

#[test]
fn hostile_self_inclusion_and_root_cycles() {
    let r = Repo::new();
    r.write("kustomization.yaml", "resources:\n- apps/a\n");
    r.write("apps/a/kustomization.yaml", "resources:\n- ../..\n");
    r.write("apps/b/kustomization.yaml", "resources:\n- ../../apps/b\n");
    r.write("apps/c/kustomization.yaml", "resources:\n- ../c/../c\n");
    r.write("apps/d/kustomization.yaml", "resources:\n- ../e\n");
    r.write("apps/e/kustomization.yaml", "resources:\n- sub\n");
    r.write("apps/e/sub/kustomization.yaml", "resources:\n- ../../d\n");
    // Through a symlink back to an ancestor.
    r.write("apps/f/kustomization.yaml", "resources:\n- up\n");
    r.symlink("apps/f/up", "..");
    r.commit("cycles");
    for (o, path) in [
        ("apps/a", "apps/a"),
        ("apps/b", "apps/b"),
        ("apps/c", "apps/c"),
        ("apps/d", "apps/d"),
        ("apps/f", "apps/f"),
    ] {
        assert_error(
            &checksum_run(&r, o, None, &[]),
            &["cycle detected"],
            &[path],
        );
    }
    // The root itself includes apps/a, which points back at the root.
    assert_error(&checksum_run(&r, ".", None, &[]), &["cycle detected"], &[]);
}

#[test]
fn large_file_just_under_the_blob_cap_in_the_closure() {
    // 16 MiB is the default `limits.maxBlobBytes`; above it see
    // tests/blob_limits.rs.
    let r = Repo::new();
    r.write(
        "big/blob.bin",
        pseudo_random_bytes(16 * 1024 * 1024 - 1, 0x5eed),
    );
    r.write(
        "big/kustomization.yaml",
        "configMapGenerator:\n- name: big\n  files:\n  - blob.bin\n",
    );
    let c = r.commit("a 16 MiB generator input");
    let sum = cross_check(&r, "big", &c);
    // And the digest of the big entry is the digest of the bytes we wrote.
    let doc = json(&r, "big", Some(&c));
    let e = json_entries(&doc)
        .into_iter()
        .find(|e| e.name == "file:big/blob.bin")
        .unwrap();
    assert_eq!(e.sha256, hex::encode(sha256(&r.read("big/blob.bin"))));
    assert_eq!(checksum(&r, "big", None), sum);
}

#[test]
fn hostile_ten_thousand_files() {
    let r = Repo::new();
    for i in 0..10_000 {
        r.write(
            &format!("data/d{:02}/f{i:05}.txt", i / 200),
            format!("value {i}\n"),
        );
    }
    r.write(
        "few/kustomization.yaml",
        "configMapGenerator:\n- name: few\n  files:\n  - ../data/d00/f00000.txt\n  - ../data/d10/f02000.txt\n  - ../data/d49/f09999.txt\n",
    );
    let mut many = String::from("configMapGenerator:\n- name: many\n  files:\n");
    for i in (0..10_000).step_by(2) {
        many.push_str(&format!("  - ../data/d{:02}/f{i:05}.txt\n", i / 200));
    }
    r.write("many/kustomization.yaml", many);
    let c = r.commit("ten thousand files");
    let (_, few) = list(&r, "few", Some(&c));
    assert_eq!(
        few,
        vec![
            "file:data/d00/f00000.txt",
            "file:data/d10/f02000.txt",
            "file:data/d49/f09999.txt",
            "file:few/kustomization.yaml"
        ]
    );
    cross_check(&r, "few", &c);
    let (_, many) = list(&r, "many", Some(&c));
    assert_eq!(many.len(), 5_001);
    cross_check(&r, "many", &c);
}

#[test]
fn hostile_nesting_of_one_hundred_kustomizations() {
    let r = Repo::new();
    for i in 0..100 {
        let body = if i == 99 {
            "resources:\n- cm.yaml\n".to_string()
        } else {
            format!("resources:\n- ../l{:03}\n", i + 1)
        };
        r.write(&format!("n/l{i:03}/kustomization.yaml"), body);
    }
    r.write("n/l099/cm.yaml", configmap_yaml("deep", "1"));
    r.commit("deep");
    assert_error(
        &checksum_run(&r, "n/l000", None, &[]),
        &["nesting deeper than"],
        &[],
    );
    // A modest depth is fine.
    let (_, names) = list(&r, "n/l090", None);
    assert_eq!(names.len(), 11);
}

#[test]
fn hostile_diamond_dag_thirty_levels_is_fast() {
    let r = Repo::new();
    for i in 0..30 {
        r.write(
            &format!("dag/d{i:02}/kustomization.yaml"),
            format!("resources:\n- ../d{n:02}\n- ../a{n:02}\n", n = i + 1),
        );
        r.symlink(&format!("dag/a{:02}", i + 1), &format!("d{:02}", i + 1));
    }
    r.write("dag/d30/kustomization.yaml", "resources:\n- cm.yaml\n");
    r.write("dag/d30/cm.yaml", configmap_yaml("leaf", "1"));
    let c = r.commit("diamond");
    let run = run_sg_deadline(
        &[
            "checksum",
            "--repo",
            r.path_str(),
            "--overlay",
            "dag/d00",
            "--list",
        ],
        Duration::from_secs(30),
    );
    let out = run.ok();
    assert!(
        run.elapsed < Duration::from_secs(20),
        "took {:?}",
        run.elapsed
    );
    let names: Vec<&str> = out.lines().skip(1).collect();
    let mut expected: Vec<String> = (0..=30)
        .map(|i| format!("file:dag/d{i:02}/kustomization.yaml"))
        .chain((1..=30).map(|i| format!("link:dag/a{i:02}")))
        .chain(["file:dag/d30/cm.yaml".to_string()])
        .collect();
    expected.sort();
    assert_eq!(names, expected);
    cross_check(&r, "dag/d00", &c);
}

// ---------------------------------------------------------------------------
// kustomize semantics the closure must follow
// ---------------------------------------------------------------------------

#[test]
fn a_second_kustomization_file_in_any_visited_directory_is_an_error() {
    let g = gitops_repo();
    let r = &g.repo;
    let base = r.head();
    let (_, names) = list(r, INCIDENT_OVERLAY, None);
    // Every directory whose kustomization the overlay loads (by its real path).
    let dirs: Vec<String> = names
        .iter()
        .filter_map(|n| n.strip_prefix("file:"))
        .filter_map(|p| p.strip_suffix("/kustomization.yaml"))
        .map(str::to_string)
        .collect();
    assert!(dirs.len() >= 8, "{dirs:?}");
    for (i, d) in dirs.iter().enumerate() {
        let extra = if i % 2 == 0 {
            "kustomization.yml"
        } else {
            "Kustomization"
        };
        r.write(&format!("{d}/{extra}"), "resources: []\n");
        let c = r.commit(&format!("second kustomization in {d}"));
        assert!(
            r.kustomize(&c, INCIDENT_OVERLAY).is_err(),
            "kustomize accepted two files in {d}"
        );
        assert_error(
            &checksum_run(r, INCIDENT_OVERLAY, Some(&c), &[]),
            &["multiple kustomization files"],
            &[d.as_str()],
        );
        r.reset_hard(&base);
    }
}

#[test]
fn kustomization_parsing_follows_kustomize() {
    let r = Repo::new();
    r.write("k/cm.yaml", configmap_yaml("cm", "1"));
    r.write("k/other.yaml", configmap_yaml("other", "2"));
    // Field names match case-insensitively; only the first document counts;
    // a duplicated key keeps its last value.
    r.write(
        "k/kustomization.yaml",
        "Resources:\n- missing-but-overridden.yaml\nResources:\n- cm.yaml\n---\nresources:\n- also-missing.yaml\n",
    );
    r.write("y/kustomization.yml", "resources:\n- ../k/other.yaml\n");
    r.write("z/Kustomization", "resources:\n- ../k\n");
    let c = r.commit("parsing");
    let d = r.checkout(&c);
    for o in ["k", "y", "z"] {
        kustomize_dir(d.path(), o).unwrap_or_else(|e| panic!("fixture {o} must render: {e}"));
    }
    assert_eq!(
        list(&r, "k", None).1,
        vec!["file:k/cm.yaml", "file:k/kustomization.yaml"]
    );
    assert_eq!(
        list(&r, "y", None).1,
        vec!["file:k/other.yaml", "file:y/kustomization.yml"]
    );
    assert_eq!(
        list(&r, "z", None).1,
        vec![
            "file:k/cm.yaml",
            "file:k/kustomization.yaml",
            "file:z/Kustomization"
        ]
    );
    for o in ["k", "y", "z"] {
        cross_check(&r, o, &c);
    }
}

#[test]
fn kustomization_file_reached_through_a_symlink() {
    let r = Repo::new();
    r.write(
        "templates/kustomization.yaml",
        "resources:\n- ../app/cm.yaml\n",
    );
    r.write("app/cm.yaml", configmap_yaml("cm", "1"));
    r.symlink("app/kustomization.yaml", "../templates/kustomization.yaml");
    let c = r.commit("linked kustomization file");
    kustomize_dir(r.checkout(&c).path(), "app").expect("fixture renders");
    // cm.yaml is resolved against the kustomization's directory (app), and the
    // kustomization file is recorded by its real path plus the link crossed.
    let (_, names) = list(&r, "app", None);
    assert!(
        names.contains(&"link:app/kustomization.yaml".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"file:templates/kustomization.yaml".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"file:app/cm.yaml".to_string()), "{names:?}");
    cross_check(&r, "app", &c);
}

#[test]
fn every_file_field_is_followed() {
    let r = Repo::new();
    r.write("f/cm.yaml", configmap_yaml("cm", "1"));
    r.write(
        "f/legacy-base/kustomization.yaml",
        "resources:\n- svc.yaml\n",
    );
    r.write(
        "f/legacy-base/svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc\nspec:\n  ports:\n  - port: 80\n",
    );
    r.write(
        "f/crd.yaml",
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.example.com\n",
    );
    r.write("f/config/namerefs.yaml", "nameReference:\n- kind: ConfigMap\n  fieldSpecs:\n  - path: spec/configName\n    kind: Widget\n");
    r.write("f/schema.json", "{\"definitions\": {}}\n");
    r.write("f/legacy.env", "LEGACY=1\n");
    r.write("f/new.env", "NEW=1\n");
    r.write(
        "f/smp.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\ndata:\n  smp: \"1\"\n",
    );
    r.write(
        "f/json6902.yaml",
        "- op: add\n  path: /data/j\n  value: \"1\"\n",
    );
    r.write(
        "f/transformer-patch.yaml",
        "- op: add\n  path: /data/t\n  value: \"1\"\n",
    );
    r.write("f/repl.yaml", "- source:\n    kind: ConfigMap\n    name: cm\n    fieldPath: data.value\n  targets:\n  - select:\n      kind: Service\n    fieldPaths:\n    - metadata.annotations.v\n    options:\n      create: true\n");
    r.write("f/unreferenced.yaml", configmap_yaml("nope", "0"));
    r.write(
        "f/kustomization.yaml",
        r#"resources:
- cm.yaml
bases:
- legacy-base
crds:
- crd.yaml
configurations:
- config/namerefs.yaml
openapi:
  path: schema.json
configMapGenerator:
- name: gen
  env: legacy.env
  envs:
  - new.env
patchesStrategicMerge:
- smp.yaml
patchesJson6902:
- target:
    version: v1
    kind: ConfigMap
    name: cm
  path: json6902.yaml
replacements:
- path: repl.yaml
transformers:
- |-
  apiVersion: builtin
  kind: PatchJson6902Transformer
  metadata:
    name: tp
  target:
    version: v1
    kind: ConfigMap
    name: cm
  path: transformer-patch.yaml
"#,
    );
    let c = r.commit("all file fields");
    let (_, names) = list(&r, "f", None);
    let expected = [
        "file:f/cm.yaml",
        "file:f/config/namerefs.yaml",
        "file:f/crd.yaml",
        "file:f/json6902.yaml",
        "file:f/kustomization.yaml",
        "file:f/legacy-base/kustomization.yaml",
        "file:f/legacy-base/svc.yaml",
        "file:f/legacy.env",
        "file:f/new.env",
        "file:f/repl.yaml",
        "file:f/schema.json",
        "file:f/smp.yaml",
        "file:f/transformer-patch.yaml",
    ];
    assert_eq!(names, expected);
    cross_check(&r, "f", &c);
}

#[test]
fn helm_chart_directories_are_walked_with_their_links() {
    let r = Repo::new();
    r.write("shared/_helpers.tpl", "{{- define \"x\" -}}x{{- end -}}\n");
    r.write(
        "h/charts/web/Chart.yaml",
        "apiVersion: v2\nname: web\nversion: 1.0.0\n",
    );
    r.write("h/charts/web/values.yaml", "replicas: 1\n");
    r.write("h/charts/web/.helmignore", "*.tpl\n");
    r.write(
        "h/charts/web/templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n",
    );
    r.symlink(
        "h/charts/web/templates/_helpers.tpl",
        "../../../../shared/_helpers.tpl",
    );
    // version + repo: <chartHome>/<name>-<version>/<name> when present locally.
    r.write(
        "h/charts/db-2.0.0/db/Chart.yaml",
        "apiVersion: v2\nname: db\nversion: 2.0.0\n",
    );
    r.write("h/charts/db-2.0.0/db/values.yaml", "{}\n");
    r.write("h/values-extra.yaml", "replicas: 2\n");
    r.write(
        "h/charts/unused/Chart.yaml",
        "apiVersion: v2\nname: unused\nversion: 0.0.1\n",
    );
    r.write(
        "h/kustomization.yaml",
        r#"helmCharts:
- name: web
  valuesFile: values-extra.yaml
- name: db
  repo: https://charts.example.com/db
  version: 2.0.0
- name: cache
  repo: oci://registry.example.com/charts
  version: 1.2.3
- name: nover
  repo: https://charts.example.com/misc
"#,
    );
    let c = r.commit("helm");
    let (_, names) = list(&r, "h", None);
    let expected = [
        "file:h/charts/db-2.0.0/db/Chart.yaml",
        "file:h/charts/db-2.0.0/db/values.yaml",
        "file:h/charts/web/.helmignore",
        "file:h/charts/web/Chart.yaml",
        "file:h/charts/web/templates/cm.yaml",
        "file:h/charts/web/values.yaml",
        "file:h/kustomization.yaml",
        "file:h/values-extra.yaml",
        "file:shared/_helpers.tpl",
        "link:h/charts/web/templates/_helpers.tpl",
        "remote:https://charts.example.com/misc/nover",
        "remote:oci://registry.example.com/charts/cache@1.2.3",
    ];
    assert_eq!(names, expected);
    cross_check(&r, "h", &c);
}

#[test]
fn helm_legacy_generator_field_reads_local_charts() {
    // kustomize's FixKustomizationPostUnmarshalling appends the legacy
    // `helmChartInflationGenerator` entries to `helmCharts`; `helmGlobals`
    // (or, when absent, the entries' own `chartHome`) locates the chart.
    let r = Repo::new();
    r.write(
        "charts-home/api/Chart.yaml",
        "apiVersion: v2\nname: api\nversion: 0.1.0\n",
    );
    r.write("charts-home/api/values.yaml", "{}\n");
    r.write(
        "g/kustomization.yaml",
        "helmGlobals:\n  chartHome: ../charts-home\nhelmChartInflationGenerator:\n- chartName: api\n",
    );
    r.write(
        "l/kustomization.yaml",
        "helmChartInflationGenerator:\n- chartName: api\n  chartHome: ../charts-home\n",
    );
    let c = r.commit("legacy helm");
    for (o, k) in [
        ("g", "file:g/kustomization.yaml"),
        ("l", "file:l/kustomization.yaml"),
    ] {
        let (_, names) = list(&r, o, Some(&c));
        let expected = vec![
            "file:charts-home/api/Chart.yaml".to_string(),
            "file:charts-home/api/values.yaml".to_string(),
            k.to_string(),
        ];
        assert_eq!(names, expected, "overlay {o}");
    }
}

#[test]
fn overlay_path_through_a_symlink_is_recorded() {
    let g = gitops_repo();
    let r = &g.repo;
    r.symlink("current", "overlays/prod");
    let c = r.commit("current -> overlays/prod");
    let (sum, names) = list(r, "current/east", Some(&c));
    let mut expected = incident_closure_sorted();
    expected.push("link:current".into());
    expected.sort();
    assert_eq!(names, expected);
    assert_ne!(sum, checksum(r, INCIDENT_OVERLAY, Some(&c)));
    cross_check(r, "current/east", &c);
}
