//! The renderer (contract section 8) on real git repositories with real
//! `kubectl kustomize`, and against hostile commands (small shell scripts
//! in a tempdir): hanging, flooding, failing, printing garbage, dumping
//! their environment. Every test renders into its own work directory and
//! checks it is empty afterwards.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gix::ObjectId;
use serde_json::Value;
use stale_guard::checksum::{Checksum, ChecksumEngine};
use stale_guard::content::Identity;
use stale_guard::render::varsub::merge_variables;
use stale_guard::render::{BuildOptions, RenderError, RenderSettings, Renderer, Rendering};
use support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn settings(command: &[&str], work: &Path) -> RenderSettings {
    RenderSettings {
        command: command.iter().map(|s| s.to_string()).collect(),
        timeout: Duration::from_secs(30),
        work_dir: Some(work.to_owned()),
        ..RenderSettings::default()
    }
}

/// `kubectl kustomize --load-restrictor LoadRestrictionsNone`, as
/// `support::kustomize_dir` runs it on checkouts.
fn kubectl(work: &Path) -> RenderSettings {
    RenderSettings {
        args: vec!["--load-restrictor".into(), "LoadRestrictionsNone".into()],
        ..settings(&["kubectl", "kustomize"], work)
    }
}

/// The commit `rev` names and the checksum of `overlay` there.
fn key(repo: &Repo, rev: &str, overlay: &str) -> (ObjectId, Checksum) {
    let engine = ChecksumEngine::open(repo.path()).unwrap();
    let commit = engine.resolve_commit(rev).unwrap();
    (commit, engine.checksum(commit, overlay).unwrap().checksum)
}

fn render(
    rt: &tokio::runtime::Runtime,
    renderer: &Renderer,
    repo: &Repo,
    rev: &str,
    overlay: &str,
) -> Result<Arc<Rendering>, RenderError> {
    let (commit, sum) = key(repo, rev, overlay);
    let engine = ChecksumEngine::open(repo.path()).unwrap();
    rt.block_on(renderer.render(engine, commit, overlay, sum))
}

/// An executable `#!/bin/sh` script in `dir`; returns its path.
fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_owned()
}

const CONFIGMAP: &str = "printf 'apiVersion: v1\\nkind: ConfigMap\\nmetadata:\\n  name: c\\n'";

/// A one-overlay repository.
fn small_repo() -> Repo {
    let r = Repo::new();
    r.write(
        "o/kustomization.yaml",
        "configMapGenerator:\n- name: c\n  literals: [a=b]\n",
    );
    r.commit("overlay");
    r
}

/// Parses `kubectl kustomize` output independently of the renderer.
fn documents(yaml: &str) -> BTreeMap<String, Value> {
    use serde::Deserialize as _;
    let mut out = BTreeMap::new();
    for de in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value = Value::deserialize(de).unwrap();
        if value.is_null() {
            continue;
        }
        let id = Identity::of(&value).expect("identity").to_string();
        assert!(out.insert(id.clone(), value).is_none(), "{id} twice");
    }
    out
}

fn objects(r: &Rendering) -> BTreeMap<String, Value> {
    r.objects()
        .map(|(id, v)| (id.to_string(), v.clone()))
        .collect()
}

fn assert_empty(work: &Path) {
    let left: Vec<_> = fs::read_dir(work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the work dir: {left:?}");
}

#[test]
fn renders_the_gitops_overlays_like_kubectl_kustomize_on_a_checkout() {
    let g = gitops_repo();
    let work = tempfile::tempdir().unwrap();
    let renderer = Renderer::new(kubectl(work.path()));
    let rt = runtime();
    let checkout = g.repo.checkout("HEAD");
    for overlay in GITOPS_OVERLAYS {
        let t = Instant::now();
        let expected = documents(&kustomize_dir(checkout.path(), overlay).unwrap());
        let bare = t.elapsed();
        let t = Instant::now();
        let rendering = render(&rt, &renderer, &g.repo, "HEAD", overlay)
            .unwrap_or_else(|e| panic!("{overlay}: {e}"));
        let took = t.elapsed();
        assert_eq!(objects(&rendering), expected, "{overlay}");
        assert!(!expected.is_empty());
        eprintln!(
            "{overlay}: {} objects, {} bytes; rendered in {took:?}, bare kubectl kustomize {bare:?}",
            rendering.len(),
            rendering.bytes
        );
    }
    // The incident overlay over its history: each distinct checksum
    // rendered once, each equal to kustomize on that commit's checkout.
    for c in &g.commits {
        let d = g.repo.checkout(c);
        if !d.path().join(INCIDENT_OVERLAY).exists() {
            continue;
        }
        let expected = documents(&kustomize_dir(d.path(), INCIDENT_OVERLAY).unwrap());
        let rendering = render(&rt, &renderer, &g.repo, c, INCIDENT_OVERLAY).unwrap();
        assert_eq!(objects(&rendering), expected, "{INCIDENT_OVERLAY} at {c}");
    }
    let stats = renderer.stats();
    assert_eq!(stats.failed, 0);
    eprintln!("{stats:?}");
    assert_empty(work.path());
}

/// The tree kustomize sees: the closure's files (with git's executable
/// bit) and symlinks, their directories, a directory a link target only
/// passes through, and nothing else of the repository.
#[test]
fn writes_exactly_the_closure_with_modes_links_and_passed_directories() {
    let r = Repo::new();
    r.write(
        "o/kustomization.yaml",
        "resources:\n- base\nconfigMapGenerator:\n- name: c\n  files:\n  - run.sh\n  - data\n",
    );
    r.write("o/run.sh", "echo hi\n");
    fs::set_permissions(r.path().join("o/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    // `shared/sub` holds nothing the overlay reads; the link passes it.
    r.symlink("o/data", "../shared/sub/../data.txt");
    r.write("shared/data.txt", "d=1\n");
    r.write("shared/sub/unrelated.txt", "not read\n");
    r.symlink("o/base", "../bases/b");
    r.write("bases/b/kustomization.yaml", "resources:\n- cm.yaml\n");
    r.write(
        "bases/b/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: base\n",
    );
    // Not read by the overlay: never written.
    r.symlink("evil", "/etc");
    r.symlink("o/up", "../../../../..");
    r.write("README.md", "hello\n");
    r.commit("fixture");

    let tools = tempfile::tempdir().unwrap();
    let listing = tools.path().join("listing");
    let lister = script(
        tools.path(),
        "lister",
        &format!(
            "cd tree && find . -mindepth 1 -printf '%y %m %P %l\\n' > {}\n{CONFIGMAP}",
            listing.display()
        ),
    );
    let work = tempfile::tempdir().unwrap();
    let rt = runtime();
    render(
        &rt,
        &Renderer::new(settings(&[&lister], work.path())),
        &r,
        "HEAD",
        "o",
    )
    .unwrap();
    let mut got: Vec<String> = fs::read_to_string(&listing)
        .unwrap()
        .lines()
        .map(|l| l.trim_end().to_owned())
        .collect();
    got.sort();
    let expected = [
        "d 755 bases",
        "d 755 bases/b",
        "d 755 o",
        "d 755 shared",
        "d 755 shared/sub",
        "f 644 bases/b/cm.yaml",
        "f 644 bases/b/kustomization.yaml",
        "f 644 o/kustomization.yaml",
        "f 644 shared/data.txt",
        "f 755 o/run.sh",
        "l 777 o/base ../bases/b",
        "l 777 o/data ../shared/sub/../data.txt",
    ];
    assert_eq!(got, expected);

    // And real kustomize renders it as on a checkout.
    let rendering = render(&rt, &Renderer::new(kubectl(work.path())), &r, "HEAD", "o").unwrap();
    assert_eq!(
        objects(&rendering),
        documents(&r.kustomize("HEAD", "o").unwrap())
    );
    assert_empty(work.path());
}

/// Symlinks that leave the repository, relative and absolute, with a
/// canary next to the work directory: the render fails on the ones the
/// overlay reads, the canary is neither read nor changed, and nothing is
/// created outside the (emptied) work directory.
#[test]
fn symlinks_out_of_the_tree_read_and_write_nothing_outside() {
    let outer = tempfile::tempdir().unwrap();
    let canary = outer.path().join("canary");
    fs::write(&canary, "secret=canary\n").unwrap();
    let work = outer.path().join("work");
    fs::create_dir(&work).unwrap();
    let depth = "../".repeat(outer.path().components().count() + 8);
    let relative = format!(
        "{depth}{}",
        canary.display().to_string().trim_start_matches('/')
    );
    let r = Repo::new();
    let rt = runtime();
    let renderer = Renderer::new(kubectl(&work));
    for (name, target) in [
        ("rel", relative.as_str()),
        ("abs", canary.to_str().unwrap()),
    ] {
        r.write(
            &format!("{name}/kustomization.yaml"),
            "configMapGenerator:\n- name: c\n  envs:\n  - leak\n",
        );
        r.symlink(&format!("{name}/leak"), target);
        // A directory link out of the tree, as a resource.
        r.write(
            &format!("{name}-dir/kustomization.yaml"),
            "resources:\n- out\n",
        );
        r.symlink(&format!("{name}-dir/out"), &format!("{target}/.."));
    }
    r.commit("hostile links");
    for overlay in ["rel", "abs", "rel-dir", "abs-dir"] {
        let engine = ChecksumEngine::open(r.path()).unwrap();
        let commit = engine.resolve_commit("HEAD").unwrap();
        // No checksum exists for these overlays; any key will do: the
        // renderer must refuse before writing anything.
        let result = rt.block_on(renderer.render(engine, commit, overlay, Checksum([0; 32])));
        let err = result.expect_err(overlay);
        assert!(matches!(err, RenderError::Overlay(_)), "{overlay}: {err:?}");
        assert!(
            err.to_string().contains("the repository"),
            "{overlay}: {err}"
        );
        assert_eq!(fs::read_to_string(&canary).unwrap(), "secret=canary\n");
        let mut around: Vec<_> = fs::read_dir(outer.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        around.sort();
        assert_eq!(around, ["canary", "work"]);
        assert_empty(&work);
    }
    let stats = renderer.stats();
    assert_eq!((stats.started, stats.failed), (4, 4));
}

/// A process that never ends is killed at the timeout, with the children
/// it started; the failure is not cached (the next call runs again).
#[test]
fn a_hanging_command_times_out_and_its_children_are_gone() {
    let tools = tempfile::tempdir().unwrap();
    let pidfile = tools.path().join("child.pid");
    let hang = script(
        tools.path(),
        "hang",
        &format!("sleep 300 &\necho $! > {}\nwait", pidfile.display()),
    );
    let work = tempfile::tempdir().unwrap();
    // Long enough for a loaded machine to start the script.
    let timeout = Duration::from_secs(3);
    let renderer = Renderer::new(RenderSettings {
        timeout,
        ..settings(&[&hang], work.path())
    });
    let rt = runtime();
    let repo = small_repo();
    let t = Instant::now();
    let err = render(&rt, &renderer, &repo, "HEAD", "o").unwrap_err();
    let took = t.elapsed();
    assert_eq!(err, RenderError::Timeout(timeout));
    assert!(took < timeout + Duration::from_secs(10), "{took:?}");
    let pid = fs::read_to_string(&pidfile).unwrap().trim().to_owned();
    // Killed: gone, or a zombie waiting for a reaper that is not us.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        if stat.is_empty() || state.starts_with('Z') {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "child {pid} still running: {stat}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(renderer.cached(&key(&repo, "HEAD", "o").1).is_none());
    render(&rt, &renderer, &repo, "HEAD", "o").unwrap_err();
    let stats = renderer.stats();
    assert_eq!((stats.started, stats.timed_out), (2, 2));
    assert_empty(work.path());
}

/// A command that prints 1 GiB is killed at the output cap; the test
/// process never holds more than the cap.
#[test]
fn a_flood_of_output_is_cut_at_the_cap_without_buffering_it() {
    let tools = tempfile::tempdir().unwrap();
    let flood = script(tools.path(), "flood", "head -c 1073741824 /dev/zero");
    let work = tempfile::tempdir().unwrap();
    let limit = 1 << 20;
    let renderer = Renderer::new(RenderSettings {
        max_output_bytes: limit,
        ..settings(&[&flood], work.path())
    });
    let rt = runtime();
    let repo = small_repo();
    let me = std::process::id();
    let before = proc_status_kib(me, "VmRSS");
    let err = render(&rt, &renderer, &repo, "HEAD", "o").unwrap_err();
    let peak = proc_status_kib(me, "VmHWM");
    eprintln!("VmRSS before {before} KiB, VmHWM after {peak} KiB");
    // The other tests of this binary hold a few MiB at most.
    assert!(
        peak < before + 128 * 1024,
        "peak RSS {peak} KiB, {before} KiB before"
    );
    assert_eq!(err, RenderError::OutputTooLarge { limit });
    assert_empty(work.path());
}

#[test]
fn a_failing_command_gives_its_error_line_and_the_failure_is_cached() {
    let tools = tempfile::tempdir().unwrap();
    let fail = script(
        tools.path(),
        "fail",
        "echo '# Warning: a warning first' >&2\n\
         echo \"Error: accumulating resources: missing.yaml in $1\" >&2\n\
         echo 'more detail' >&2\nexit 1",
    );
    let work = tempfile::tempdir().unwrap();
    let renderer = Renderer::new(settings(&[&fail], work.path()));
    let rt = runtime();
    let repo = small_repo();
    let err = render(&rt, &renderer, &repo, "HEAD", "o").unwrap_err();
    // The temporary directory is cut from paths: the message is stable.
    assert_eq!(
        err,
        RenderError::Kustomize {
            first_line: "Error: accumulating resources: missing.yaml in o".into()
        }
    );
    assert_eq!(render(&rt, &renderer, &repo, "HEAD", "o").unwrap_err(), err);
    assert_eq!(renderer.stats().started, 1);

    // Real kubectl's error line (klog): two resources with one id, which
    // only kustomize sees.
    let bad = Repo::new();
    bad.write("o/kustomization.yaml", "resources:\n- a.yaml\n- b.yaml\n");
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n";
    bad.write("o/a.yaml", cm).write("o/b.yaml", cm);
    bad.commit("bad");
    let Err(RenderError::Kustomize { first_line }) =
        render(&rt, &Renderer::new(kubectl(work.path())), &bad, "HEAD", "o")
    else {
        panic!("kubectl kustomize should fail");
    };
    assert!(
        first_line.starts_with("accumulating resources"),
        "{first_line}"
    );
    assert!(first_line.contains("already registered id"), "{first_line}");
    assert!(first_line.contains("'o/b.yaml'"), "{first_line}");
    assert!(
        !first_line.contains(&work.path().display().to_string()),
        "{first_line}"
    );

    // An overlay that reads remote content: its failure may be the
    // network's, so it is not cached.
    let remote = Repo::new();
    remote.write(
        "o/kustomization.yaml",
        "resources:\n- http://127.0.0.1:9/x.yaml\n",
    );
    remote.commit("remote");
    let renderer = Renderer::new(kubectl(work.path()));
    for _ in 0..2 {
        let err = render(&rt, &renderer, &remote, "HEAD", "o").unwrap_err();
        assert!(err.to_string().contains("connection refused"), "{err}");
    }
    assert_eq!(renderer.stats().started, 2);
    assert_empty(work.path());
}

#[test]
fn invalid_yaml_and_a_missing_command_are_errors() {
    let tools = tempfile::tempdir().unwrap();
    let garbage = script(tools.path(), "garbage", "printf 'a: [\\n  b: }\\n'");
    let work = tempfile::tempdir().unwrap();
    let rt = runtime();
    let repo = small_repo();
    let err = render(
        &rt,
        &Renderer::new(settings(&[&garbage], work.path())),
        &repo,
        "HEAD",
        "o",
    )
    .unwrap_err();
    assert!(matches!(err, RenderError::Parse(_)), "{err:?}");
    let missing = tools.path().join("no-such-command");
    let renderer = Renderer::new(settings(&[missing.to_str().unwrap()], work.path()));
    let err = render(&rt, &renderer, &repo, "HEAD", "o").unwrap_err();
    assert!(matches!(err, RenderError::Spawn(_)), "{err:?}");
    // Not cached: installing the command fixes it.
    render(&rt, &renderer, &repo, "HEAD", "o").unwrap_err();
    assert_eq!(renderer.stats().started, 2);
    assert_empty(work.path());
}

/// 50 reviews asking at once run the command once; a caller that gives up
/// does not cancel the run; later calls come from the cache.
#[test]
fn concurrent_renders_of_one_checksum_run_the_command_once() {
    let tools = tempfile::tempdir().unwrap();
    let runs = tools.path().join("runs");
    let slow = script(
        tools.path(),
        "slow",
        &format!("echo run >> {}\nsleep 2\n{CONFIGMAP}", runs.display()),
    );
    let work = tempfile::tempdir().unwrap();
    let renderer = Renderer::new(settings(&[&slow], work.path()));
    let rt = runtime();
    let repo = small_repo();
    let (commit, sum) = key(&repo, "HEAD", "o");
    // Opened first: the 50 callers arrive while the run sleeps.
    let mut engines: Vec<_> = (0..51)
        .map(|_| ChecksumEngine::open(repo.path()).unwrap())
        .collect();
    let results = rt.block_on(async {
        // The first caller gives up at once; its run goes on.
        let engine = engines.pop().unwrap();
        let gave_up = tokio::time::timeout(
            Duration::from_millis(10),
            renderer.render(engine, commit, "o", sum),
        )
        .await;
        assert!(gave_up.is_err());
        let mut tasks = tokio::task::JoinSet::new();
        for engine in engines {
            let renderer = renderer.clone();
            tasks.spawn(async move { renderer.render(engine, commit, "o", sum).await });
        }
        tasks.join_all().await
    });
    let first = results[0].as_ref().unwrap();
    for r in &results {
        assert!(Arc::ptr_eq(r.as_ref().unwrap(), first));
    }
    assert_eq!(first.len(), 1);
    assert_eq!(fs::read_to_string(&runs).unwrap(), "run\n");
    let cached = renderer.cached(&sum).unwrap().unwrap();
    assert!(Arc::ptr_eq(&cached, first));
    render(&rt, &renderer, &repo, "HEAD", "o").unwrap();
    assert_eq!(fs::read_to_string(&runs).unwrap(), "run\n");
    let stats = renderer.stats();
    assert_eq!((stats.started, stats.succeeded, stats.joined), (1, 1, 50));
    assert_eq!(stats.cache_entries, 1);
    // Weighed by the parsed objects' heap, far more than the YAML.
    assert_eq!(stats.cache_bytes, first.bytes);
    assert!(first.bytes > 10 * first.output_bytes, "{first:?}");
    assert_empty(work.path());
}

/// The command sees PATH, and HOME and TMPDIR inside its private
/// directory: nothing else of the server's environment.
#[test]
fn the_command_runs_with_a_clean_environment() {
    let tools = tempfile::tempdir().unwrap();
    let dump = tools.path().join("env");
    let cwd = tools.path().join("cwd");
    let envdump = script(
        tools.path(),
        "envdump",
        &format!(
            "tr '\\0' '\\n' < /proc/$$/environ > {}\npwd > {}\n{CONFIGMAP}",
            dump.display(),
            cwd.display()
        ),
    );
    let work = tempfile::tempdir().unwrap();
    let rt = runtime();
    render(
        &rt,
        &Renderer::new(settings(&[&envdump], work.path())),
        &small_repo(),
        "HEAD",
        "o",
    )
    .unwrap();
    let env = fs::read_to_string(&dump).unwrap();
    let vars: BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(
        vars.keys().copied().collect::<Vec<_>>(),
        ["HOME", "PATH", "TMPDIR"]
    );
    assert_eq!(Some(vars["PATH"]), std::env::var("PATH").ok().as_deref());
    let ws = fs::read_to_string(&cwd).unwrap().trim().to_owned();
    assert!(ws.starts_with(work.path().to_str().unwrap()), "{ws}");
    assert_eq!(vars["HOME"], format!("{ws}/home"));
    assert_eq!(vars["TMPDIR"], format!("{ws}/tmp"));
    assert_empty(work.path());
}

/// The checksum vectors' repositories render as on a checkout; the Helm
/// ones fail on both (kubectl kustomize without `--enable-helm`).
#[test]
fn renders_the_vector_repositories_like_kubectl_kustomize() {
    let work = tempfile::tempdir().unwrap();
    let renderer = Renderer::new(kubectl(work.path()));
    let rt = runtime();
    for (name, overlay) in [
        ("plain", "overlay"),
        ("symlinked", "overlays/prod/east"),
        ("generators", "app"),
        ("helm", "deploy"),
        ("helm-repo-slash", "deploy"),
    ] {
        let r = vector_repo(name);
        match (
            r.kustomize("HEAD", overlay),
            render(&rt, &renderer, &r, "HEAD", overlay),
        ) {
            (Ok(yaml), Ok(rendering)) => {
                assert_eq!(objects(&rendering), documents(&yaml), "{name}")
            }
            (Err(_), Err(RenderError::Kustomize { .. })) => {}
            (expected, got) => panic!("{name}: kustomize {expected:?}, rendered {got:?}"),
        }
    }
    assert_empty(work.path());
}

/// A base with a Deployment that reads Flux variables and two
/// ConfigMaps (one opting out of substitution), an overlay over it that
/// sets its own namespace.
fn controller_repo() -> Repo {
    let r = Repo::new();
    r.write(
        "base/kustomization.yaml",
        "resources: [deploy.yaml, cm.yaml]\n",
    );
    r.write(
        "base/deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: web\n        image: nginx:1.0\n        env:\n        - {name: CLUSTER, value: \"${cluster}\"}\n        - {name: REGION, value: \"${region:=eu}\"}\n",
    );
    r.write(
        "base/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\ndata:\n  script: \"echo $${HOME} $HOME ${cluster}\"\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: raw\n  annotations:\n    kustomize.toolkit.fluxcd.io/substitute: disabled\ndata:\n  x: \"${cluster}\"\n",
    );
    r.write(
        "apps/prod/kustomization.yaml",
        "resources: [../../base]\nnamespace: overlay-ns\n",
    );
    r.commit("controller overlay");
    r
}

fn render_with(
    rt: &tokio::runtime::Runtime,
    renderer: &Renderer,
    repo: &Repo,
    overlay: &str,
    options: &BuildOptions,
    vars: &BTreeMap<String, String>,
) -> Result<Arc<Rendering>, RenderError> {
    let (commit, sum) = key(repo, "HEAD", overlay);
    let engine = ChecksumEngine::open(repo.path()).unwrap();
    rt.block_on(renderer.render_with(engine, commit, overlay, sum, options, vars))
}

fn flux_spec(yaml: &str) -> stale_guard::flux::KustomizationSpec {
    serde_yaml_ng::from_str(yaml).unwrap()
}

/// What kustomize-controller applies for this Kustomization, field by
/// field from its sources: the generator puts `targetNamespace` over the
/// overlay's `namespace`, adds `namePrefix`, the patch (applied before
/// the prefix, so it targets `web`) and the image; substitution then
/// expands `${cluster}` and the default of `${region:=eu}`, turns `$${HOME}`
/// into `${HOME}`, leaves `$HOME` and the opted-out ConfigMap alone;
/// `commonMetadata` lands on each object's metadata only (the selector
/// and the pod template keep theirs).
const FLUX_EXPECTED: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: p-web
  namespace: prod
  labels: {app: web, team: payments}
  annotations: {owner: sre}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.25
        env:
        - {name: CLUSTER, value: east}
        - {name: REGION, value: eu}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: p-cfg
  namespace: prod
  labels: {team: payments}
  annotations: {owner: sre}
data:
  script: echo ${HOME} $HOME east
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: p-raw
  namespace: prod
  labels: {team: payments}
  annotations: {kustomize.toolkit.fluxcd.io/substitute: disabled, owner: sre}
data:
  x: ${cluster}
"#;

const FLUX_SPEC: &str = r#"
path: ./apps/prod
targetNamespace: prod
namePrefix: p-
patches:
- patch: |
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
    spec:
      replicas: 3
  target: {kind: Deployment, name: web}
images:
- {name: nginx, newTag: "1.25"}
commonMetadata:
  labels: {team: payments}
  annotations: {owner: sre}
postBuild:
  substitute: {cluster: east}
"#;

#[test]
fn renders_what_a_flux_kustomization_applies() {
    let r = controller_repo();
    let work = tempfile::tempdir().unwrap();
    let renderer = Renderer::new(kubectl(work.path()));
    let rt = runtime();
    let spec = flux_spec(FLUX_SPEC);
    let options = BuildOptions::flux(&spec).unwrap();
    let vars = merge_variables([], &spec.post_build.clone().unwrap().substitute);
    let rendering = render_with(&rt, &renderer, &r, "apps/prod", &options, &vars).unwrap();
    assert_eq!(objects(&rendering), documents(FLUX_EXPECTED));
    assert_eq!(rendering.build, options.digest());

    // The plain rendering of the same checksum is kustomize's own, kept
    // apart from the controller's.
    let plain = render(&rt, &renderer, &r, "HEAD", "apps/prod").unwrap();
    let bare = documents(&r.kustomize("HEAD", "apps/prod").unwrap());
    assert_eq!(objects(&plain), bare);
    assert!(
        bare.keys().any(|k| k.contains("overlay-ns/web")),
        "{bare:?}"
    );

    // Other variables: another key, another rendering; the first is
    // still cached.
    let west: BTreeMap<String, String> = [("cluster".to_owned(), "west".to_owned())].into();
    let other = render_with(&rt, &renderer, &r, "apps/prod", &options, &west).unwrap();
    let web = |r: &Rendering| {
        r.objects()
            .find(|(id, _)| id.kind == "Deployment")
            .map(|(_, v)| v["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"].clone())
            .unwrap()
    };
    assert_eq!(web(&other), "west");
    let again = render_with(&rt, &renderer, &r, "apps/prod", &options, &vars).unwrap();
    assert!(Arc::ptr_eq(&again, &rendering));
    let (_, sum) = key(&r, "HEAD", "apps/prod");
    assert!(renderer.cached_with(&sum, &options, &vars).is_some());
    assert_eq!(renderer.stats().started, 3);

    // The repository's files are as committed: only the private tree was
    // edited.
    assert_eq!(
        r.read("apps/prod/kustomization.yaml"),
        b"resources: [../../base]\nnamespace: overlay-ns\n"
    );
    assert_empty(work.path());
}

/// What Argo CD's repo server renders for this Application, from its
/// `kustomize edit` calls: `set namesuffix` names every object `-a`;
/// `set image` makes nginx `mirror/nginx:2.0`; `set replicas` gives `web`
/// 4; `add label` writes `commonLabels`, which kustomize puts on the
/// metadata, the selector and the pod template; `set namespace` puts
/// `argo-ns` over the overlay's. No substitution: the `${...}` texts
/// stay.
const ARGO_EXPECTED: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web-a
  namespace: argo-ns
  labels: {app: web, env: prod}
spec:
  replicas: 4
  selector:
    matchLabels: {app: web, env: prod}
  template:
    metadata:
      labels: {app: web, env: prod}
    spec:
      containers:
      - name: web
        image: mirror/nginx:2.0
        env:
        - {name: CLUSTER, value: "${cluster}"}
        - {name: REGION, value: "${region:=eu}"}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg-a
  namespace: argo-ns
  labels: {env: prod}
data:
  script: echo $${HOME} $HOME ${cluster}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: raw-a
  namespace: argo-ns
  labels: {env: prod}
  annotations: {kustomize.toolkit.fluxcd.io/substitute: disabled}
data:
  x: ${cluster}
"#;

#[test]
fn renders_what_an_argo_application_applies() {
    let r = controller_repo();
    let work = tempfile::tempdir().unwrap();
    let renderer = Renderer::new(kubectl(work.path()));
    let rt = runtime();
    let spec: stale_guard::argo::ApplicationSpec = serde_yaml_ng::from_str(
        r#"
source:
  repoURL: https://example.com/repo.git
  path: apps/prod
  kustomize:
    nameSuffix: -a
    commonLabels: {env: prod}
    images: ["nginx=mirror/nginx:2.0"]
    replicas: [{name: web, count: 4}]
    namespace: argo-ns
destination: {namespace: dest-ns}
"#,
    )
    .unwrap();
    let options = BuildOptions::argo(&spec).unwrap();
    let rendering =
        render_with(&rt, &renderer, &r, "apps/prod", &options, &BTreeMap::new()).unwrap();
    assert_eq!(objects(&rendering), documents(ARGO_EXPECTED));

    // The same as kustomize on a checkout whose kustomization file was
    // edited by hand the way those `kustomize edit` calls write it.
    let checkout = r.checkout("HEAD");
    fs::write(
        checkout.path().join("apps/prod/kustomization.yaml"),
        "resources: [../../base]\nnamespace: argo-ns\nnameSuffix: -a\nimages:\n- {name: nginx, newName: mirror/nginx, newTag: '2.0'}\nreplicas:\n- {name: web, count: 4}\ncommonLabels: {env: prod}\n",
    )
    .unwrap();
    let by_hand = documents(&kustomize_dir(checkout.path(), "apps/prod").unwrap());
    assert_eq!(objects(&rendering), by_hand);

    // A label the overlay already has stops Argo CD's `add label` (no
    // --force): an overlay error, cached like kustomize's own.
    r.write(
        "apps/prod/kustomization.yaml",
        "resources: [../../base]\ncommonLabels: {env: dev}\n",
    );
    r.commit("own label");
    let err = render_with(&rt, &renderer, &r, "apps/prod", &options, &BTreeMap::new()).unwrap_err();
    assert!(
        matches!(&err, RenderError::Overlay(m) if m.contains("label env already in kustomization file")),
        "{err}"
    );
    assert_empty(work.path());
}

/// A component the controller adds is outside the overlay's closure:
/// the renderer writes its closure too and keys the rendering by its
/// checksum, so a change only to the component renders anew.
#[test]
fn components_the_controller_adds_are_written_and_keyed() {
    let r = controller_repo();
    r.write(
        "components/extra/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nresources: [extra.yaml]\n",
    );
    r.write(
        "components/extra/extra.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\ndata: {v: one}\n",
    );
    r.commit("component");
    let work = tempfile::tempdir().unwrap();
    let renderer = Renderer::new(kubectl(work.path()));
    let rt = runtime();
    let spec = flux_spec("targetNamespace: prod\ncomponents: [../../components/extra]\n");
    let options = BuildOptions::flux(&spec).unwrap();
    let extra = |r: &Rendering| {
        r.objects()
            .find(|(id, _)| id.name == "extra")
            .map(|(id, v)| (id.to_string(), v["data"]["v"].clone()))
    };
    let first = render_with(&rt, &renderer, &r, "apps/prod", &options, &BTreeMap::new()).unwrap();
    assert_eq!(
        extra(&first),
        Some(("ConfigMap prod/extra".to_owned(), Value::from("one")))
    );
    let overlay_sum = first.checksum;

    r.write(
        "components/extra/extra.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\ndata: {v: two}\n",
    );
    r.commit("component changed");
    let second = render_with(&rt, &renderer, &r, "apps/prod", &options, &BTreeMap::new()).unwrap();
    assert_eq!(
        second.checksum, overlay_sum,
        "the overlay's own closure is unchanged"
    );
    assert_eq!(extra(&second).unwrap().1, "two");

    // Argo CD adds components the same way.
    let app: stale_guard::argo::ApplicationSpec = serde_yaml_ng::from_str(
        "source: {path: apps/prod, kustomize: {components: [../../components/extra]}}\n",
    )
    .unwrap();
    let argo = BuildOptions::argo(&app).unwrap();
    let third = render_with(&rt, &renderer, &r, "apps/prod", &argo, &BTreeMap::new()).unwrap();
    assert_eq!(
        extra(&third),
        Some(("ConfigMap overlay-ns/extra".to_owned(), Value::from("two")))
    );
    assert_eq!(renderer.stats().started, 3);
    assert_empty(work.path());
}
