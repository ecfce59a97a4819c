//! Overlay checksum benchmark, recorded in `docs/benchmarks.md`.
//!
//! Generates, once per run, a GitOps repository with the git CLI in a
//! temporary directory: `overlays/prod/east` -> `overlays/prod/common` ->
//! seven bases, three of them reached through `bases/platform`, a symlink to
//! the `platform` directory outside the overlays. The closure is about 1,000
//! files totalling about 10 MiB (ConfigMaps of varied size listed in
//! `resources:`, a Deployment and a Service per base, configMapGenerator
//! files, one patch file), next to unrelated overlays, bases and docs. The
//! first commit is repacked like a clone; a second commit changes one
//! ConfigMap in the closure.
//!
//! Benchmarks:
//! - `checksum/cold`: fresh caches, checksum of the overlay at commit 1;
//! - `checksum/warm_after_one_file_commit`: per-object caches warm from
//!   commits 1 and 2, result cache cleared, checksum at commit 2;
//! - `checksum/first_after_one_file_commit`: caches warm from commit 1 only,
//!   the first checksum at commit 2 (reads the one new blob and the trees
//!   on its path; each iteration rebuilds the caches outside the timing);
//! - `checksum/cached_result`: the (commit, overlay) result cache hit;
//! - `kustomize/kubectl_kustomize`: `kubectl kustomize` of the same overlay
//!   in the work tree, process spawn included.
//!
//! Run with `cargo bench --bench checksum`; needs `git` and `kubectl` (with
//! kustomize v5) on the PATH.

use criterion::{BatchSize, Criterion, SamplingMode};
use stale_guard::checksum::{Caches, ChecksumEngine, EntryKind};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const OVERLAY: &str = "overlays/prod/east";
/// What the closure's files should add up to.
const TARGET_BYTES: u64 = 10 * 1024 * 1024;
/// Bases referenced directly from `overlays/prod/common`.
const BASES: [&str; 4] = ["payments", "orders", "catalog", "search"];
/// Bases under `platform/`, referenced through the `bases/platform` symlink.
const PLATFORM: [&str; 3] = ["monitoring", "logging", "ingress"];
/// ConfigMap resources per base (plus a Deployment and a Service).
const CONFIGMAPS_PER_BASE: usize = 128;
/// configMapGenerator files per base.
const GENERATOR_FILES_PER_BASE: usize = 8;
/// The file the second commit changes (in a base reached through the symlink).
const CHANGED_FILE: &str = "platform/monitoring/resources/monitoring-cm-0042.yaml";
const KUSTOMIZE_ARGS: [&str; 3] = ["kustomize", "--load-restrictor", "LoadRestrictionsNone"];

/// SplitMix64: the repository is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// Words of the generated settings, split once.
static WORDS: std::sync::LazyLock<Vec<&str>> = std::sync::LazyLock::new(|| {
    "timeout retry backoff replica shard region east west primary secondary cache ttl limit \
     burst queue worker pool connection endpoint upstream tls cert rotate window threshold \
     alert metric scrape interval bucket latency p99 budget feature enabled disabled rollout \
     canary weight header route service namespace token audience issuer schema version"
        .split_whitespace()
        .collect()
});

fn word(rng: &mut Rng) -> &'static str {
    WORDS[rng.below(WORDS.len() as u64) as usize]
}

/// Text lines of about `bytes` bytes, each `indent` + `key = words`.
fn text_block(rng: &mut Rng, bytes: usize, indent: &str, out: &mut String) {
    let start = out.len();
    while out.len() - start < bytes {
        let _ = write!(
            out,
            "{indent}{}.{}.{} =",
            word(rng),
            word(rng),
            rng.below(1000)
        );
        for _ in 0..rng.range(3, 10) {
            out.push(' ');
            out.push_str(word(rng));
        }
        let _ = writeln!(out, " {}", rng.below(100_000));
    }
}

/// A ConfigMap of about `bytes` bytes, its data split in keys of ~4 KiB.
fn configmap(rng: &mut Rng, app: &str, name: &str, bytes: usize) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  labels:\n    \
         app.kubernetes.io/name: {app}\n    app.kubernetes.io/component: settings\n  \
         annotations:\n    owner: team-{app}\ndata:\n"
    );
    let mut part = 0;
    while out.len() < bytes {
        let _ = writeln!(out, "  part-{part:02}.properties: |");
        let chunk = bytes.saturating_sub(out.len()).clamp(256, 4096);
        text_block(rng, chunk, "    ", &mut out);
        part += 1;
    }
    out
}

fn deployment(app: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {app}\nspec:\n  replicas: 2\n  \
         selector:\n    matchLabels:\n      app.kubernetes.io/name: {app}\n  template:\n    \
         metadata:\n      labels:\n        app.kubernetes.io/name: {app}\n    spec:\n      \
         containers:\n        - name: {app}\n          image: registry.example.com/{app}:1.4.2\n          \
         ports:\n            - containerPort: 8080\n          envFrom:\n            \
         - configMapRef:\n                name: {app}-env\n          volumeMounts:\n            \
         - name: config\n              mountPath: /etc/{app}\n      volumes:\n        \
         - name: config\n          configMap:\n            name: {app}-config\n"
    )
}

fn service(app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {app}\nspec:\n  selector:\n    \
         app.kubernetes.io/name: {app}\n  ports:\n    - port: 80\n      targetPort: 8080\n"
    )
}

/// Files of the repository: (path, content), plus symlinks (path, target).
struct Layout {
    files: Vec<(String, String)>,
    links: Vec<(String, String)>,
}

impl Layout {
    fn add(&mut self, path: String, content: String) {
        self.files.push((path, content));
    }
}

/// Sizes of `n` resources: half small, a third medium, some large.
fn resource_sizes(rng: &mut Rng, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| match rng.below(100) {
            0..50 => rng.range(2 << 10, 6 << 10),
            50..85 => rng.range(8 << 10, 16 << 10),
            _ => rng.range(24 << 10, 40 << 10),
        })
        .collect()
}

/// A base: a kustomization, ConfigMaps, a Deployment, a Service, and
/// configMapGenerator files (one `envs:` file, the rest `files:`).
fn base(layout: &mut Layout, rng: &mut Rng, dir: &str, app: &str, sizes: &[u64]) {
    let mut k = String::from("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n");
    k.push_str("resources:\n  - deployment.yaml\n  - service.yaml\n");
    layout.add(format!("{dir}/deployment.yaml"), deployment(app));
    layout.add(format!("{dir}/service.yaml"), service(app));
    for (i, size) in sizes.iter().enumerate() {
        let name = format!("{app}-cm-{i:04}");
        let _ = writeln!(k, "  - resources/{name}.yaml");
        layout.add(
            format!("{dir}/resources/{name}.yaml"),
            configmap(rng, app, &name, *size as usize),
        );
    }
    let _ = write!(
        k,
        "configMapGenerator:\n  - name: {app}-env\n    envs:\n      - config/app.env\n  \
         - name: {app}-config\n    files:\n"
    );
    let mut env = String::new();
    for i in 0..20 {
        let _ = writeln!(env, "{}_{i}={}", app.to_uppercase(), rng.below(10_000));
    }
    layout.add(format!("{dir}/config/app.env"), env);
    for i in 1..GENERATOR_FILES_PER_BASE {
        let name = format!("{app}-{i}.properties");
        let _ = writeln!(k, "      - config/{name}");
        let mut text = String::new();
        let size = rng.range(1 << 10, 6 << 10) as usize;
        text_block(rng, size, "", &mut text);
        layout.add(format!("{dir}/config/{name}"), text);
    }
    k.push_str("labels:\n  - pairs:\n      app.kubernetes.io/part-of: shop\n");
    layout.add(format!("{dir}/kustomization.yaml"), k);
}

/// An unrelated overlay of `n` small ConfigMaps (not in the closure).
fn unrelated_overlay(layout: &mut Layout, rng: &mut Rng, dir: &str, base_ref: &str, n: usize) {
    let mut k = format!("resources:\n  - {base_ref}\n");
    for i in 0..n {
        let name = format!("{}-extra-{i:02}", dir.replace('/', "-"));
        let _ = writeln!(k, "  - {name}.yaml");
        let size = rng.range(1 << 10, 8 << 10) as usize;
        layout.add(
            format!("{dir}/{name}.yaml"),
            configmap(rng, "extra", &name, size),
        );
    }
    layout.add(format!("{dir}/kustomization.yaml"), k);
}

fn layout() -> Layout {
    let mut rng = Rng(0x5747_4c45_4755_4152);
    let mut layout = Layout {
        files: Vec::new(),
        links: vec![("bases/platform".into(), "../platform".into())],
    };
    // Sizes first, scaled so that the closure adds up to about 10 MiB (the
    // small files, about 190 KiB, are left out of the scaling).
    let bases: Vec<(String, &str)> = BASES
        .iter()
        .map(|b| (format!("bases/{b}"), *b))
        .chain(PLATFORM.iter().map(|p| (format!("platform/{p}"), *p)))
        .collect();
    let east_resources = 24;
    let mut sizes = resource_sizes(&mut rng, bases.len() * CONFIGMAPS_PER_BASE + east_resources);
    let small = 190 << 10;
    let scale = (TARGET_BYTES - small) as f64 / sizes.iter().sum::<u64>() as f64;
    for s in &mut sizes {
        *s = (*s as f64 * scale) as u64;
    }
    let mut chunks = sizes.chunks(CONFIGMAPS_PER_BASE);
    for (dir, app) in &bases {
        base(&mut layout, &mut rng, dir, app, chunks.next().unwrap());
    }
    let east_sizes = chunks.next().unwrap();

    let mut common = String::from("resources:\n");
    for b in BASES {
        let _ = writeln!(common, "  - ../../../bases/{b}");
    }
    for p in PLATFORM {
        let _ = writeln!(common, "  - ../../../bases/platform/{p}");
    }
    common.push_str(
        "labels:\n  - pairs:\n      env: prod\n    includeSelectors: false\n\
         configMapGenerator:\n  - name: prod-common\n    files:\n",
    );
    for i in 0..4 {
        let name = format!("common-{i}.properties");
        let _ = writeln!(common, "      - files/{name}");
        let mut text = String::new();
        text_block(&mut rng, 2048, "", &mut text);
        layout.add(format!("overlays/prod/common/files/{name}"), text);
    }
    layout.add("overlays/prod/common/kustomization.yaml".into(), common);

    let mut east = String::from("namespace: prod-east\nresources:\n  - ../common\n");
    for (i, size) in east_sizes.iter().enumerate() {
        let name = format!("east-cm-{i:02}");
        let _ = writeln!(east, "  - resources/{name}.yaml");
        layout.add(
            format!("{OVERLAY}/resources/{name}.yaml"),
            configmap(&mut rng, "east", &name, *size as usize),
        );
    }
    east.push_str("patches:\n  - path: patches/payments-replicas.yaml\n");
    layout.add(
        format!("{OVERLAY}/patches/payments-replicas.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: payments\nspec:\n  replicas: 6\n"
            .into(),
    );
    east.push_str("configMapGenerator:\n  - name: east-settings\n    files:\n");
    for i in 0..6 {
        let name = format!("east-{i}.properties");
        let _ = writeln!(east, "      - settings/{name}");
        let mut text = String::new();
        text_block(&mut rng, 3072, "", &mut text);
        layout.add(format!("{OVERLAY}/settings/{name}"), text);
    }
    layout.add(format!("{OVERLAY}/kustomization.yaml"), east);

    // Unrelated: other overlays, an unused base, docs.
    unrelated_overlay(&mut layout, &mut rng, "overlays/prod/west", "../common", 20);
    unrelated_overlay(
        &mut layout,
        &mut rng,
        "overlays/staging",
        "../../bases/orders",
        20,
    );
    let sizes = resource_sizes(&mut rng, 40);
    base(&mut layout, &mut rng, "platform/tracing", "tracing", &sizes);
    layout.add("README.md".into(), "# shop GitOps repository\n".into());
    for doc in ["runbook", "architecture", "oncall"] {
        let mut text = format!("# {doc}\n\n");
        text_block(&mut rng, 8192, "", &mut text);
        layout.add(format!("docs/{doc}.md"), text);
    }
    for dir in bases.iter().map(|(d, _)| d) {
        layout.add(format!("{dir}/README.md"), format!("# {dir}\n"));
    }
    layout
}

/// The generated repository, opened, and its two commits.
struct Fixture {
    _dir: tempfile::TempDir,
    worktree: PathBuf,
    repo: gix::ThreadSafeRepository,
    commit1: gix::ObjectId,
    commit2: gix::ObjectId,
    /// One `kubectl kustomize` run, timed while verifying.
    kustomize_time: Duration,
}

fn git(dir: &Path, global_config: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", global_config)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.com")
        .env("GIT_AUTHOR_DATE", "2025-01-01T00:00:00Z")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.com")
        .env("GIT_COMMITTER_DATE", "2025-01-01T00:00:00Z")
        .args(args)
        .output()
        .expect("git is on the PATH");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("git prints UTF-8")
}

fn kubectl_kustomize(worktree: &Path) -> std::process::Output {
    let out = Command::new("kubectl")
        .args(KUSTOMIZE_ARGS)
        .arg(worktree.join(OVERLAY))
        .output()
        .expect("kubectl is on the PATH");
    assert!(
        out.status.success(),
        "kubectl kustomize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Fixture {
    fn generate() -> Fixture {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("stale-guard-bench-")
            .tempdir()
            .expect("temporary directory");
        let global_config = dir.path().join("gitconfig");
        std::fs::write(&global_config, "").unwrap();
        let worktree = dir.path().join("repo");
        std::fs::create_dir(&worktree).unwrap();
        let git = |args: &[&str]| git(&worktree, &global_config, args);
        git(&["init", "-q", "-b", "main"]);

        let layout = layout();
        for (path, content) in &layout.files {
            let path = worktree.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        for (path, target) in &layout.links {
            std::os::unix::fs::symlink(target, worktree.join(path)).unwrap();
        }
        git(&["add", "-A"]);
        git(&["commit", "-qm", "shop: prod and staging overlays"]);
        git(&["gc", "-q"]);
        git(&["repack", "-adq"]);
        let commit1_hex = git(&["rev-parse", "HEAD"]);
        let packed = git(&["count-objects", "-v"]);

        // The one-file change: a value in one ConfigMap.
        let changed = worktree.join(CHANGED_FILE);
        let text = std::fs::read_to_string(&changed).unwrap();
        let text = text.replacen(" =", " = changed", 1);
        std::fs::write(&changed, text).unwrap();
        git(&["commit", "-qam", "monitoring: tune one setting"]);
        let diff = git(&["diff", "--name-only", "HEAD~1", "HEAD"]);
        assert_eq!(
            diff.trim(),
            CHANGED_FILE,
            "the second commit changes one file"
        );

        let repo = gix::open(&worktree)
            .expect("open the repository")
            .into_sync();
        let probe = ChecksumEngine::with_caches(repo.clone(), Arc::new(Caches::default()));
        let commit1 = probe.resolve_commit("HEAD~1").unwrap();
        let commit2 = probe.resolve_commit("HEAD").unwrap();
        assert_eq!(commit1.to_string(), commit1_hex.trim());

        // The closure, checked once outside the timing.
        let sum = probe
            .checksum(commit1, OVERLAY)
            .expect("checksum at commit 1");
        let sizes: HashMap<String, u64> = git(&["ls-tree", "-r", "-l", "HEAD~1"])
            .lines()
            .filter_map(|line| {
                let (meta, path) = line.split_once('\t')?;
                let size = meta.split_whitespace().nth(3)?.parse().ok()?;
                Some((path.to_owned(), size))
            })
            .collect();
        let mut files = 0;
        let mut links = 0;
        let mut bytes = 0;
        for entry in &sum.entries {
            let path = String::from_utf8_lossy(&entry.target);
            match entry.kind {
                EntryKind::File => files += 1,
                EntryKind::Link => links += 1,
                other => panic!("unexpected {other:?} entry {path}"),
            }
            bytes += sizes
                .get(path.as_ref())
                .unwrap_or_else(|| panic!("{path} is not a blob of commit 1"));
        }
        assert!(sum.entries.len() >= 1000, "{} entries", sum.entries.len());
        assert!(
            sum.entries
                .iter()
                .any(|e| e.target == CHANGED_FILE.as_bytes()),
            "the changed file is in the closure"
        );

        let kustomize_started = Instant::now();
        let rendered = kubectl_kustomize(&worktree);
        let kustomize_time = kustomize_started.elapsed();
        let documents = rendered
            .stdout
            .split(|b| *b == b'\n')
            .filter(|line| line.starts_with(b"kind: "))
            .count();
        assert!(
            documents >= 900,
            "kubectl kustomize rendered {documents} objects"
        );

        let pack = packed
            .lines()
            .find_map(|l| l.strip_prefix("size-pack: "))
            .unwrap_or("?");
        let repo_files = sizes.len();
        let repo_bytes: u64 = sizes.values().sum();
        eprintln!(
            "generated repository in {:.1?}: {repo_files} blobs, {repo_bytes} bytes, \
             packed {pack} KiB (git count-objects size-pack)",
            started.elapsed()
        );
        eprintln!(
            "closure of {OVERLAY}: {} entries ({files} files, {links} links), {bytes} bytes \
             ({:.2} MiB)",
            sum.entries.len(),
            bytes as f64 / (1 << 20) as f64
        );
        eprintln!(
            "kubectl kustomize: {documents} objects, {} bytes of output, one run {:.1?}",
            rendered.stdout.len(),
            kustomize_time
        );
        Fixture {
            _dir: dir,
            worktree,
            repo,
            commit1,
            commit2,
            kustomize_time,
        }
    }

    fn engine(&self) -> ChecksumEngine {
        ChecksumEngine::with_caches(self.repo.clone(), Arc::new(Caches::default()))
    }
}

fn bench_checksum(c: &mut Criterion, fx: &Fixture) {
    let mut group = c.benchmark_group("checksum");

    // Tens of milliseconds an iteration: flat sampling keeps it to seconds.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group.bench_function("cold", |b| {
        b.iter_batched(
            || fx.engine(),
            |engine| {
                let sum = engine.checksum(fx.commit1, OVERLAY).unwrap();
                // Dropped outside the timing, with the caches.
                (engine, sum)
            },
            BatchSize::PerIteration,
        )
    });

    let engine = fx.engine();
    engine.checksum(fx.commit1, OVERLAY).unwrap();
    let (sum, stats) = engine.checksum_with_stats(fx.commit2, OVERLAY);
    let sum = sum.unwrap();
    eprintln!("first checksum at commit 2 after commit 1: {stats:?}");
    assert!(!stats.result_cached && (1..=2).contains(&stats.blobs_hashed));
    assert_eq!(stats.entries, sum.entries.len());

    group
        .sampling_mode(SamplingMode::Linear)
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group.bench_function("warm_after_one_file_commit", |b| {
        b.iter(|| {
            engine.caches().clear_results();
            engine.checksum(black_box(fx.commit2), OVERLAY).unwrap()
        })
    });

    // The exact first sight of commit 2: every iteration needs caches warm
    // from commit 1 only, a cold computation in the (untimed) setup, so few
    // iterations.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(10));
    group.bench_function("first_after_one_file_commit", |b| {
        b.iter_batched(
            || {
                let engine = fx.engine();
                engine.checksum(fx.commit1, OVERLAY).unwrap();
                engine
            },
            |engine| {
                let sum = engine.checksum(fx.commit2, OVERLAY).unwrap();
                (engine, sum)
            },
            BatchSize::PerIteration,
        )
    });

    group
        .sampling_mode(SamplingMode::Linear)
        .sample_size(100)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("cached_result", |b| {
        b.iter(|| engine.checksum(black_box(fx.commit2), OVERLAY).unwrap())
    });
    group.finish();
}

fn bench_kustomize(c: &mut Criterion, fx: &Fixture) {
    let mut group = c.benchmark_group("kustomize");
    // Seconds an iteration: ten samples of one run each (criterion warns
    // that it cannot fit ten samples in the target time; that is intended).
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(fx.kustomize_time * 5);
    group.bench_function("kubectl_kustomize", |b| {
        b.iter(|| kubectl_kustomize(&fx.worktree))
    });
    // What content verification adds to the bare process: the closure
    // written out, the output parsed and indexed. A new renderer each time
    // (no cache); the engine's checksum caches are warm, as on a server
    // that checksummed the head before rendering it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let engine = fx.engine();
    let key = engine
        .checksum(fx.commit1, OVERLAY)
        .expect("checksum")
        .checksum;
    let settings = stale_guard::render::RenderSettings {
        command: vec!["kubectl".to_owned(), KUSTOMIZE_ARGS[0].to_owned()],
        args: KUSTOMIZE_ARGS[1..].iter().map(|s| s.to_string()).collect(),
        ..stale_guard::render::RenderSettings::default()
    };
    group.bench_function("render", |b| {
        b.iter(|| {
            let renderer = stale_guard::render::Renderer::new(settings.clone());
            let rendering = runtime
                .block_on(renderer.render(
                    ChecksumEngine::with_caches(fx.repo.clone(), engine.caches().clone()),
                    fx.commit1,
                    OVERLAY,
                    key,
                ))
                .expect("the overlay renders");
            assert!(rendering.len() >= 100);
            rendering
        })
    });
    group.finish();
}

fn main() {
    let fixture = Fixture::generate();
    let mut criterion = Criterion::default().configure_from_args();
    bench_checksum(&mut criterion, &fixture);
    bench_kustomize(&mut criterion, &fixture);
    criterion.final_summary();
}
