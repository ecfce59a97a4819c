//! Git mirror benchmark, recorded in `docs/benchmarks.md`.
//!
//! 1. Revision facts (ancestry + behind count), uncached, on a 10,000-commit
//!    linear history and on a 10,000-commit merge-heavy history (every
//!    fourth commit merges a two-commit side line), for revisions near the
//!    root (behind by ~10,000: the worst case), in the middle, and just
//!    below head; plus a commit off the branch. Target: at most 1 ms.
//! 2. Incremental fetch of one new commit into a 10,000-commit mirror over
//!    `git daemon`: `Mirror::refresh()` (fetch + head/index update + state
//!    file) against `git fetch` by the git CLI into a copy of the same
//!    mirror, side by side, alternating which goes first.
//!
//! Run with `cargo bench --bench mirror`; needs `git` on the PATH. Prints
//! medians and maxima; no criterion statistics (each sample is a whole
//! fetch, and the facts targets are about worst cases).

#[path = "../tests/mirror_support/mod.rs"]
mod mirror_support;

use std::path::Path;
use std::time::{Duration, Instant};

use mirror_support::{GitDaemon, Origin, git, oid, run_git};
use stale_guard::mirror::{Mirror, SourceSpec};

fn spec(url: &str) -> SourceSpec {
    let mut s = SourceSpec::new("bench", url, "main");
    s.poll_interval = Duration::from_secs(3600);
    s.fetch_timeout = Duration::from_secs(120);
    s
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99) / 100]
}

fn facts_bench(rt: &tokio::runtime::Runtime, label: &str, origin: &Origin, mirrors: &Path) {
    let m = rt
        .block_on(Mirror::open(
            spec(origin.dir.to_str().unwrap_or_default()),
            mirrors,
        ))
        .expect("open");
    let revs = run_git(&origin.dir, &["rev-list", "--first-parent", "main"]);
    let revs: Vec<&str> = revs.lines().collect();
    let n = revs.len();
    let picks = [
        ("head~1", revs[1]),
        ("middle", revs[n / 2]),
        ("root", revs[n - 1]),
    ];
    let off_branch = origin.commit_with(&[revs[n / 2]], "off the branch");
    origin.set("side", &off_branch);
    run_git(
        m.path(),
        &[
            "fetch",
            "-q",
            origin.dir.to_str().unwrap_or_default(),
            "side",
        ],
    );
    println!("{label}: {} commits in the index", m.status().commits);
    for (name, rev) in picks
        .iter()
        .chain([("off-branch", off_branch.as_str())].iter())
    {
        let id = oid(rev);
        let mut samples = Vec::new();
        let mut facts = m.facts_uncached(id);
        for _ in 0..300 {
            let t = Instant::now();
            facts = m.facts_uncached(id);
            samples.push(t.elapsed());
        }
        let p = p99(samples.clone());
        let (median, max) = stats(samples);
        println!(
            "  facts_uncached {name:<10} behind={:<6} median {:>8.1} us  p99 {:>8.1} us  max {:>8.1} us",
            facts
                .behind_commits
                .map_or("-".to_owned(), |b| b.to_string()),
            median.as_secs_f64() * 1e6,
            p.as_secs_f64() * 1e6,
            max.as_secs_f64() * 1e6
        );
        let t = Instant::now();
        for _ in 0..1000 {
            std::hint::black_box(m.facts(id));
        }
        println!(
            "  facts (cached) {name:<10} mean {:>8.2} us",
            t.elapsed().as_secs_f64() * 1e6 / 1000.0
        );
    }
}

fn fetch_bench(rt: &tokio::runtime::Runtime, root: &Path) {
    let origin = Origin::new(root, "fetch-origin.git");
    origin.linear_history("main", 10_000);
    let daemon = GitDaemon::start(root);
    let url = daemon.url("fetch-origin.git");
    let mirrors = root.join("fetch-mirrors");
    let m = rt
        .block_on(Mirror::open(spec(&url), &mirrors))
        .expect("open");
    assert!(m.head().is_some(), "{:?}", m.status().last_failure);
    let cli = root.join("cli.git");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(m.path())
        .arg(&cli)
        .status()
        .expect("cp");
    assert!(status.success());
    let refspec = "+refs/heads/main:refs/heads/main";
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for round in 0..15 {
        let new = origin.commit("main", &format!("round {round}"));
        let run_cli = |samples: &mut Vec<Duration>| {
            let t = Instant::now();
            let out = git(&cli)
                .args(["--git-dir", "."])
                .args(["fetch", "--quiet", "--no-tags", &url, refspec])
                .output()
                .expect("git fetch");
            samples.push(t.elapsed());
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let run_ours = |samples: &mut Vec<Duration>| {
            let t = Instant::now();
            let report = rt.block_on(m.refresh()).expect("refresh");
            samples.push(t.elapsed());
            assert_eq!(report.head, oid(&new));
        };
        if round % 2 == 0 {
            run_ours(&mut ours);
            run_cli(&mut theirs);
        } else {
            run_cli(&mut theirs);
            run_ours(&mut ours);
        }
    }
    let (om, ox) = stats(ours);
    let (tm, tx) = stats(theirs);
    println!(
        "incremental fetch of 1 commit into a 10,000-commit mirror over git daemon (15 rounds):"
    );
    println!(
        "  Mirror::refresh   median {:>7.1} ms  max {:>7.1} ms",
        om.as_secs_f64() * 1e3,
        ox.as_secs_f64() * 1e3
    );
    println!(
        "  git fetch (CLI)   median {:>7.1} ms  max {:>7.1} ms",
        tm.as_secs_f64() * 1e3,
        tx.as_secs_f64() * 1e3
    );
    drop(daemon);
}

fn main() {
    // `cargo test --benches` runs this with --test-ish args; only run the
    // full benchmark under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();

    let linear = Origin::new(root, "linear.git");
    linear.linear_history("main", 10_000);
    facts_bench(&rt, "linear 10,000", &linear, &root.join("m-linear"));

    let merges = Origin::new(root, "merges.git");
    merges.merge_history("main", 10_000);
    facts_bench(&rt, "merge-heavy 10,000", &merges, &root.join("m-merges"));

    fetch_bench(&rt, root);
}
