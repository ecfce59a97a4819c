//! The git mirror against real git: a local path, `git daemon` and smart
//! HTTP (`git http-backend`) on loopback ports.

mod mirror_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mirror_support::{
    GitDaemon, HangingServer, HttpServer, Origin, eventually, object_counts, oid, run_git,
};
use stale_guard::checksum::{Caches, ChecksumEngine};
use stale_guard::mirror::{
    FetchErrorKind, Lookup, MaintenancePolicy, Mirror, OnDemandFetches, SourceSpec,
};

fn spec(url: &str) -> SourceSpec {
    let mut s = SourceSpec::new("src", url, "main");
    s.poll_interval = Duration::from_secs(3600);
    s.fetch_timeout = Duration::from_secs(20);
    s
}

fn deadline(secs: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(secs)
}

fn pack_files(mirror: &Mirror) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(mirror.path().join("objects/pack"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_path_clone_head_and_facts() {
    mirror_support::capture_logs();
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    let c: Vec<String> = (0..5)
        .map(|i| origin.commit("main", &format!("c{i}")))
        .collect();
    let m = Mirror::open(
        spec(origin.dir.to_str().unwrap()),
        &tmp.path().join("mirrors"),
    )
    .await
    .unwrap();
    let head = m.head().expect("synced");
    assert_eq!(head.commit, oid(&c[4]));
    assert_eq!(head.commit_time, (mirror_support::EPOCH + 5 * 60) as i64);
    let st = m.status();
    assert_eq!(st.fetches, 1);
    assert!(st.last_success.is_some());
    assert!(st.is_fresh(Duration::from_secs(60), SystemTime::now()));
    assert_eq!(st.commits, 5);

    let f = m.facts(oid(&c[4]));
    assert!(f.known && f.is_head && !f.is_ancestor_of_head && f.on_branch());
    assert_eq!(f.behind_commits, Some(0));
    let f = m.facts(oid(&c[1]));
    assert!(f.known && !f.is_head && f.is_ancestor_of_head);
    assert_eq!(f.behind_commits, Some(3));
    assert_eq!(f.behind_time(), Some(Duration::from_secs(180)));
    // Cached answer is the same.
    assert_eq!(m.facts(oid(&c[1])), f);
    let unknown = oid("0123456789abcdef0123456789abcdef01234567");
    let f = m.facts(unknown);
    assert!(!f.known && !f.on_branch() && f.behind_commits.is_none());

    // The handle works for the checksum engine's kind of reads.
    let repo = m.repository().to_thread_local();
    assert!(repo.find_commit(oid(&c[0])).is_ok());
    // The state file is there, and no URL/credential in the repo config.
    assert!(m.path().join("stale-guard-mirror.json").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_history_behind_counts_match_git() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    origin.merge_history("main", 400);
    let m = Mirror::open(
        spec(origin.dir.to_str().unwrap()),
        &tmp.path().join("mirrors"),
    )
    .await
    .unwrap();
    assert_history_matches_git(&m, &origin, 13, "merge history");
}

/// The mirror's commit count equals `git rev-list --count main`, and the
/// behind count of every `every`-th commit equals git's `rev..main`.
fn assert_history_matches_git(m: &Mirror, origin: &Origin, every: usize, step: &str) {
    let all = run_git(&origin.dir, &["rev-list", "main"]);
    let all: Vec<&str> = all.lines().collect();
    assert_eq!(m.status().commits, all.len(), "{step}: commits");
    for rev in all.iter().step_by(every) {
        let expected: u64 = run_git(
            &origin.dir,
            &["rev-list", "--count", &format!("{rev}..main")],
        )
        .parse()
        .unwrap();
        let f = m.facts_uncached(oid(rev));
        assert_eq!(
            f.behind_commits,
            Some(expected),
            "{step}: behind count of {rev}"
        );
    }
}

/// The index is extended at each new head (not rebuilt) and stays exact:
/// merges of side lines that fork from old commits, runs of linear
/// commits, and polls that find nothing new, checked against git after
/// every step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_extended_head_by_head_matches_git() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    origin.linear_history("main", 20);
    let m = Mirror::open(
        spec(origin.dir.to_str().unwrap()),
        &tmp.path().join("mirrors"),
    )
    .await
    .unwrap();
    let check = |step: &str| assert_history_matches_git(&m, &origin, 3, step);
    check("first build");
    for round in 0..12 {
        let tip = origin.tip("main").unwrap();
        // A side line forking a few commits back, merged into main.
        let fork = run_git(
            &origin.dir,
            &["rev-parse", &format!("main~{}", round % 5 + 1)],
        );
        let side = origin.commit_with(&[&fork], &format!("side {round}"));
        let side = origin.commit_with(&[&side], &format!("side {round} b"));
        let merge = origin.commit_with(&[&tip, &side], &format!("merge {round}"));
        origin.set("main", &merge);
        if round % 3 == 0 {
            origin.linear_history("main", 7);
        }
        let report = m.refresh().await.unwrap();
        assert!(
            report.head_changed && !report.history_rewritten,
            "round {round}"
        );
        check(&format!("round {round}"));
        // A poll with nothing new changes nothing.
        let again = m.refresh().await.unwrap();
        assert!(
            !again.head_changed && !again.history_rewritten,
            "round {round}"
        );
        check(&format!("round {round}, unchanged"));
    }
    assert_eq!(m.status().history_rewrites, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reuses_existing_mirror_without_reaching_remote() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    origin.linear_history("main", 200);
    let dir = tmp.path().join("mirrors");
    let first = Mirror::open(spec(origin.dir.to_str().unwrap()), &dir)
        .await
        .unwrap();
    let head = first.head().unwrap();
    let last_success = first.status().last_success.unwrap();
    let packs = pack_files(&first);
    drop(first);

    // Reopen while the remote is gone: ready from disk, no fetch.
    let moved = tmp.path().join("origin-away.git");
    std::fs::rename(&origin.dir, &moved).unwrap();
    let second = Mirror::open(spec(origin.dir.to_str().unwrap()), &dir)
        .await
        .unwrap();
    let st = second.status();
    assert_eq!(st.fetches, 0, "a restart must not fetch");
    assert_eq!(second.head().unwrap().commit, head.commit);
    let ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    assert_eq!(
        ms(st.last_success.unwrap()),
        ms(last_success),
        "last success kept on disk"
    );
    assert!(st.is_fresh(Duration::from_secs(600), SystemTime::now()));
    assert!(!st.is_fresh(Duration::ZERO, SystemTime::now() + Duration::from_secs(1)));

    // Remote back, one new commit: an incremental fetch, old packs kept.
    std::fs::rename(&moved, &origin.dir).unwrap();
    let new = origin.commit("main", "after restart");
    let report = second.refresh().await.unwrap();
    assert!(report.head_changed && !report.repaired);
    assert_eq!(second.head().unwrap().commit, oid(&new));
    let after = pack_files(&second);
    for p in &packs {
        assert!(
            after.contains(p),
            "pack {p} was replaced: a full re-clone happened"
        );
    }
    assert_eq!(second.status().repairs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_daemon_poll_sees_new_commit_within_one_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    origin.commit("main", "c0");
    let daemon = GitDaemon::start(tmp.path());
    let mut s = spec(&daemon.url("origin.git"));
    s.poll_interval = Duration::from_secs(1);
    let m = Mirror::open(s, &tmp.path().join("mirrors")).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let poller = Arc::clone(&m).spawn_poller(async {
        let _ = rx.await;
    });
    let new = origin.commit("main", "c1");
    let pushed = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || m.head().map(|h| h.commit)
            == Some(oid(&new)))
        .await,
        "poller never saw the new head"
    );
    let seen = pushed.elapsed();
    // One interval, plus the fetch itself.
    assert!(
        seen < Duration::from_millis(1000 + 1500),
        "seen after {seen:?}"
    );
    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(10), poller)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_daemon_on_demand_fetch_sees_new_commit_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    origin.commit("main", "c0");
    let daemon = GitDaemon::start(tmp.path());
    let m = Mirror::open(spec(&daemon.url("origin.git")), &tmp.path().join("mirrors"))
        .await
        .unwrap();
    let new = origin.commit("main", "c1");
    assert!(!m.facts(oid(&new)).known);
    let start = Instant::now();
    assert_eq!(m.ensure_known(oid(&new), deadline(10)).await, Lookup::Known);
    assert!(start.elapsed() < Duration::from_secs(5));
    let f = m.facts(oid(&new));
    assert!(f.known && f.is_head);
    assert_eq!(m.status().fetches, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_thousand_concurrent_lookups_share_one_fetch() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    origin.commit("main", "c0");
    let server = HttpServer::start(tmp.path(), &tmp.path().join("http.log"), None);
    let m = Mirror::open(spec(&server.url("origin.git")), &tmp.path().join("mirrors"))
        .await
        .unwrap();
    assert!(m.head().is_some(), "{:?}", m.status().last_failure);
    let fetches_before = m.status().fetches;
    let served_before = server.count("info/refs?service=git-upload-pack");
    let new = oid(&origin.commit("main", "c1"));

    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let m = Arc::clone(&m);
        tasks.push(tokio::spawn(async move {
            m.ensure_known(new, deadline(20)).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Lookup::Known);
    }
    let st = m.status();
    assert_eq!(
        st.fetches - fetches_before,
        1,
        "exactly one fetch for 1000 lookups"
    );
    assert_eq!(st.revision_fetches, 0);
    assert_eq!(
        server.count("info/refs?service=git-upload-pack") - served_before,
        1,
        "the server saw exactly one fetch"
    );
}

/// A flood of made-up revisions costs the git server a bounded number of
/// fetches (limits.onDemandFetches: here 60 a minute, 1 at once, which
/// leaves no spare token for fetches by id, whatever the timing), and a
/// revision not found is not fetched again until the head moves; a push
/// is still found, by a poll or by the next on-demand fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_flood_of_unknown_revisions_costs_a_bounded_number_of_fetches() {
    const FLOOD: u64 = 300;
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    let c0 = origin.commit("main", "c0");
    // On the server, but not on main yet.
    let later = origin.commit_with(&[&c0], "later");
    origin.set("next", &later);
    let server = HttpServer::start(tmp.path(), &tmp.path().join("http.log"), None);
    let mut s = spec(&server.url("origin.git"));
    s.on_demand = OnDemandFetches {
        per_minute: 60,
        burst: 1,
    };
    let m = Mirror::open(s, &tmp.path().join("mirrors")).await.unwrap();
    assert!(m.head().is_some(), "{:?}", m.status().last_failure);
    // One git process, one info/refs request.
    let fetches = || server.count("info/refs?service=git-upload-pack");

    let start = fetches();
    assert_eq!(
        m.ensure_known(oid(&later), deadline(5)).await,
        Lookup::StillUnknown
    );
    assert_eq!(
        fetches() - start,
        1,
        "one branch fetch, no spare token for by-id"
    );

    let bogus: Vec<gix::ObjectId> = (0..FLOOD)
        .map(|i| oid(&format!("{:040x}", 0x0bad_0000_0000_u64 + i)))
        .collect();
    // Three waves of 100 at once: each wave needs a fetch of its own.
    let flood = |revs: Vec<gix::ObjectId>| {
        let m = Arc::clone(&m);
        async move {
            for wave in revs.chunks(100) {
                let tasks: Vec<_> = wave
                    .iter()
                    .map(|rev| {
                        let (m, rev) = (Arc::clone(&m), *rev);
                        tokio::spawn(async move { m.ensure_known(rev, deadline(4)).await })
                    })
                    .collect();
                for t in tasks {
                    assert_eq!(t.await.unwrap(), Lookup::StillUnknown);
                }
            }
        }
    };
    let before = fetches();
    let t0 = Instant::now();
    flood(bogus.clone()).await;
    let elapsed = t0.elapsed();
    let flood_fetches = fetches() - before;
    // One a second (the first token was spent above), and one for rounding.
    let bound = elapsed.as_secs() as usize + 1 + 1;
    eprintln!(
        "{FLOOD} made-up revisions: {flood_fetches} fetches in {elapsed:?} (bound {bound}); {:?}",
        m.status()
    );
    assert!(
        flood_fetches <= bound,
        "{flood_fetches} fetches for {FLOOD} made-up revisions in {elapsed:?}"
    );
    assert_eq!(m.status().revision_fetches, 0);

    // Asked again: remembered as not found, no fetch at all.
    let before = fetches();
    flood(bogus.clone()).await;
    assert_eq!(
        m.ensure_known(oid(&later), deadline(5)).await,
        Lookup::StillUnknown
    );
    assert_eq!(fetches() - before, 0, "not found is remembered");

    // The push reaches main; the next poll moves the head and forgets
    // what was not found.
    origin.set("main", &later);
    assert_eq!(
        m.ensure_known(oid(&later), deadline(5)).await,
        Lookup::StillUnknown,
        "remembered until the head moves"
    );
    m.refresh().await.unwrap();
    assert!(m.facts(oid(&later)).is_head);
    let before = fetches();
    assert_eq!(
        m.ensure_known(bogus[0], deadline(5)).await,
        Lookup::StillUnknown
    );
    assert!(fetches() > before, "looked for again after the head moved");

    // A push reviewed before any poll is found by an on-demand fetch
    // (waiting for a token if need be).
    let pushed = origin.commit("main", "pushed");
    assert_eq!(
        m.ensure_known(oid(&pushed), deadline(5)).await,
        Lookup::Known
    );
    assert!(m.facts(oid(&pushed)).is_head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_stopped_mid_life_then_back() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    let c0 = origin.commit("main", "c0");
    let c1 = origin.commit("main", "c1");
    let mut daemon = GitDaemon::start(tmp.path());
    let m = Mirror::open(spec(&daemon.url("origin.git")), &tmp.path().join("mirrors"))
        .await
        .unwrap();
    let success = m.status().last_success.unwrap();

    daemon.stop();
    let err = m.refresh().await.unwrap_err();
    assert_eq!(err.kind, FetchErrorKind::Unreachable, "{err}");
    let st = m.status();
    assert_eq!(
        st.head.as_ref().unwrap().commit,
        oid(&c1),
        "head stays available"
    );
    assert_eq!(st.last_success, Some(success));
    let failure = st.last_failure.clone().unwrap();
    assert!(failure.at >= success);
    assert_eq!(st.consecutive_failures, 1);
    std::thread::sleep(Duration::from_millis(50));
    assert!(st.staleness(SystemTime::now()).unwrap() >= Duration::from_millis(50));
    // Objects stay available.
    let f = m.facts(oid(&c0));
    assert!(f.known && f.is_ancestor_of_head);
    assert_eq!(f.behind_commits, Some(1));
    assert!(
        m.repository()
            .to_thread_local()
            .find_commit(oid(&c0))
            .is_ok()
    );

    // Remote back: recovers without a restart.
    daemon.restart();
    let c2 = origin.commit("main", "c2");
    m.refresh().await.unwrap();
    let st = m.status();
    assert_eq!(st.head.unwrap().commit, oid(&c2));
    assert_eq!(st.consecutive_failures, 0);
    assert!(st.last_success.unwrap() > success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_remote_times_out() {
    let tmp = tempfile::tempdir().unwrap();
    let hang = HangingServer::start();
    let mut s = spec(&format!("git://127.0.0.1:{}/origin.git", hang.port));
    s.fetch_timeout = Duration::from_secs(2);
    let start = Instant::now();
    let m = Mirror::open(s, &tmp.path().join("mirrors")).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "open took {:?}",
        start.elapsed()
    );
    assert!(m.head().is_none());
    let st = m.status();
    let failure = st.last_failure.clone().unwrap();
    assert_eq!(failure.kind, FetchErrorKind::Timeout, "{}", failure.message);
    assert!(st.last_success.is_none());
    assert!(!st.is_fresh(Duration::from_secs(3600), SystemTime::now()));
    // A lookup is bounded by its deadline even while the remote hangs.
    let start = Instant::now();
    let r = m
        .ensure_known(
            oid("0123456789abcdef0123456789abcdef01234567"),
            tokio::time::Instant::now() + Duration::from_millis(300),
        )
        .await;
    assert_eq!(r, Lookup::StillUnknown);
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_push_is_detected_and_old_commits_leave_the_branch() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    let a = origin.commit("main", "a");
    let b = origin.commit("main", "b");
    let c = origin.commit("main", "c");
    let m = Mirror::open(
        spec(origin.dir.to_str().unwrap()),
        &tmp.path().join("mirrors"),
    )
    .await
    .unwrap();
    assert!(m.facts(oid(&b)).is_ancestor_of_head);

    let x = origin.commit_with(&[&a], "x");
    origin.set("main", &x);
    let report = m.refresh().await.unwrap();
    assert!(report.history_rewritten);
    assert_eq!(m.status().history_rewrites, 1);
    assert_eq!(m.head().unwrap().commit, oid(&x));
    for gone in [&b, &c] {
        let f = m.facts(oid(gone));
        assert!(f.known, "objects of the old history stay");
        assert!(!f.on_branch(), "{gone} must no longer be on the branch");
        assert_eq!(f.behind_commits, None);
    }
    let f = m.facts(oid(&a));
    assert!(f.is_ancestor_of_head);
    assert_eq!(f.behind_commits, Some(1));
    // Moving back to an older commit is a rewrite too.
    origin.set("main", &a);
    assert!(m.refresh().await.unwrap().history_rewritten);
    assert!(m.facts(oid(&a)).is_head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_deleted_keeps_head_and_marks_it() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    origin.commit("main", "a");
    let b = origin.commit("main", "b");
    let m = Mirror::open(
        spec(origin.dir.to_str().unwrap()),
        &tmp.path().join("mirrors"),
    )
    .await
    .unwrap();
    origin.delete("main");
    let err = m.refresh().await.unwrap_err();
    assert_eq!(err.kind, FetchErrorKind::BranchMissing);
    assert!(err.message.contains("main"), "{}", err.message);
    let st = m.status();
    assert!(st.branch_missing);
    assert_eq!(st.head.unwrap().commit, oid(&b));
    assert!(m.facts(oid(&b)).is_head);
    // Branch back: recovers.
    origin.set("main", &b);
    let c = origin.commit("main", "c");
    m.refresh().await.unwrap();
    assert!(!m.status().branch_missing);
    assert_eq!(m.head().unwrap().commit, oid(&c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_directory_deleted_while_running_is_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    let a = origin.commit("main", "a");
    let b = origin.commit("main", "b");
    let m = Mirror::open(
        spec(origin.dir.to_str().unwrap()),
        &tmp.path().join("mirrors"),
    )
    .await
    .unwrap();
    std::fs::remove_dir_all(m.path()).unwrap();
    // Ancestry keeps being answered from memory.
    assert!(m.facts_uncached(oid(&a)).is_ancestor_of_head);
    let report = m.refresh().await.unwrap();
    assert!(report.repaired);
    assert_eq!(report.head, oid(&b));
    assert_eq!(m.status().repairs, 1);
    assert!(
        m.repository()
            .to_thread_local()
            .find_commit(oid(&a))
            .is_ok()
    );
    assert!(m.path().join("stale-guard-mirror.json").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_directory_truncated_while_running_is_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    origin.linear_history("main", 50);
    let m = Mirror::open(
        spec(origin.dir.to_str().unwrap()),
        &tmp.path().join("mirrors"),
    )
    .await
    .unwrap();
    // Truncate: HEAD emptied, packs and refs gone.
    std::fs::write(m.path().join("HEAD"), b"").unwrap();
    let _ = std::fs::remove_dir_all(m.path().join("objects/pack"));
    let _ = std::fs::remove_dir_all(m.path().join("refs"));
    let _ = std::fs::remove_file(m.path().join("packed-refs"));
    let new = origin.commit("main", "after truncation");
    let report = m.refresh().await.unwrap();
    assert!(report.repaired);
    assert_eq!(report.head, oid(&new));
    assert_eq!(m.status().commits, 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_mirror_found_at_start_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    let a = origin.commit("main", "a");
    let dir = tmp.path().join("mirrors");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/garbage"), b"not a repository").unwrap();
    let m = Mirror::open(spec(origin.dir.to_str().unwrap()), &dir)
        .await
        .unwrap();
    assert_eq!(m.status().repairs, 1);
    assert_eq!(m.head().unwrap().commit, oid(&a));
    assert!(!m.path().join("garbage").exists());
    // No temporary or old directories are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_on_another_branch_is_fetched_by_id() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    let a = origin.commit("main", "a");
    origin.commit("main", "b");
    let daemon = GitDaemon::start(tmp.path());
    let m = Mirror::open(spec(&daemon.url("origin.git")), &tmp.path().join("mirrors"))
        .await
        .unwrap();
    let side = origin.commit_with(&[&a], "side");
    origin.set("feature", &side);
    assert_eq!(
        m.ensure_known(oid(&side), deadline(10)).await,
        Lookup::Known
    );
    let f = m.facts(oid(&side));
    assert!(f.known && !f.on_branch(), "{f:?}");
    assert!(f.commit_time.is_some());
    assert_eq!(m.status().revision_fetches, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_revision_stays_unknown_and_is_not_refetched_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    origin.commit("main", "a");
    let m = Mirror::open(
        spec(origin.dir.to_str().unwrap()),
        &tmp.path().join("mirrors"),
    )
    .await
    .unwrap();
    let nowhere = oid("0123456789abcdef0123456789abcdef01234567");
    assert_eq!(
        m.ensure_known(nowhere, deadline(10)).await,
        Lookup::StillUnknown
    );
    let first = m.status();
    assert_eq!(first.revision_fetches, 1);
    assert_eq!(
        m.ensure_known(nowhere, deadline(10)).await,
        Lookup::StillUnknown
    );
    let st = m.status();
    assert_eq!(
        (st.fetches, st.revision_fetches),
        (first.fetches, first.revision_fetches),
        "negative answer cached briefly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, url, branch) in [
        ("", "/x", "main"),
        ("../up", "/x", "main"),
        (".hidden", "/x", "main"),
        ("ok", "--upload-pack=evil", "main"),
        ("ok", "/x", "-b"),
        ("ok", "/x", "a..b"),
        ("ok", "/x", "a b"),
    ] {
        let r = Mirror::open(SourceSpec::new(name, url, branch), tmp.path()).await;
        assert!(r.is_err(), "{name} {url} {branch} accepted");
    }
}

// ---------------------------------------------------------------------------
// maintenance (repack)
// ---------------------------------------------------------------------------

const KUSTOMIZATION: &str = "resources:\n- cm.yaml\n";

fn configmap(n: usize) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  n: \"{n}\"\n")
}

/// Push number `i` of a maintenance test: usually one commit (4 new objects,
/// fetched as loose objects), every 4th a batch of 40 commits (120+
/// objects: git keeps the fetched pack).
fn push(origin: &Origin, i: usize) -> String {
    if i % 4 == 3 {
        origin.linear_history("main", 40)
    } else {
        origin.commit_files("main", &[("apps/cm.yaml", &configmap(i))], &format!("p{i}"))
    }
}

fn checksum(repo: gix::ThreadSafeRepository, rev: gix::ObjectId) -> Result<String, String> {
    let engine = ChecksumEngine::with_caches(repo, Arc::new(Caches::default()));
    engine
        .checksum(rev, "apps")
        .map(|s| format!("{:?}", s.checksum))
        .map_err(|e| format!("checksum of {rev}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_fetches_then_maintenance_bounds_packs_and_loose_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    let first = origin.commit_files(
        "main",
        &[
            ("apps/kustomization.yaml", KUSTOMIZATION),
            ("apps/cm.yaml", &configmap(0)),
        ],
        "base",
    );
    let m = Mirror::open(
        spec(origin.dir.to_str().unwrap()),
        &tmp.path().join("mirrors"),
    )
    .await
    .unwrap();
    let mut heads = vec![oid(&first)];
    for i in 0..60 {
        let tip = push(&origin, i);
        m.refresh().await.unwrap();
        assert_eq!(m.head().unwrap().commit, oid(&tip));
        heads.push(oid(&tip));
    }
    let (packs_before, loose_before) = object_counts(m.path());
    assert!(
        packs_before >= 15 && loose_before >= 100,
        "60 fetches leave packs and loose objects: {packs_before} packs, {loose_before} loose"
    );
    let sum_head = checksum(m.repository(), heads[60]).unwrap();
    let sum_old = checksum(m.repository(), heads[1]).unwrap();

    let report = m.maintain().await.unwrap();
    let (packs_after, loose_after) = object_counts(m.path());
    eprintln!(
        "maintenance after 60 fetches: packs {packs_before} -> {packs_after}, loose objects {loose_before} -> {loose_after}, {:?}",
        report.duration
    );
    assert_eq!(report.before.packs, packs_before);
    assert_eq!(report.before.loose_objects, loose_before);
    assert_eq!(
        (report.after.packs, report.after.loose_objects),
        (packs_after, loose_after)
    );
    assert_eq!(loose_after, 0, "every loose object packed");
    assert!(packs_after <= 3, "{packs_after} packs left");
    let st = m.status();
    assert_eq!(st.maintenance_runs, 1);
    assert_eq!(st.last_maintenance, Some(report));
    assert!(st.maintenance_failure.is_none());

    // Every read still works and gives the same answers.
    assert_eq!(checksum(m.repository(), heads[60]).unwrap(), sum_head);
    assert_eq!(checksum(m.repository(), heads[1]).unwrap(), sum_old);
    let all = run_git(&origin.dir, &["rev-list", "main"]);
    for (n, rev) in all.lines().enumerate().step_by(7) {
        let f = m.facts_uncached(oid(rev));
        assert!(f.known && f.on_branch(), "{rev}");
        assert_eq!(f.behind_commits, Some(n as u64));
        assert!(
            m.repository()
                .to_thread_local()
                .find_commit(oid(rev))
                .is_ok()
        );
    }
    // A later fetch still works on the repacked mirror.
    let tip = push(&origin, 60);
    m.refresh().await.unwrap();
    assert!(m.facts(oid(&tip)).is_head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_keep_working_while_maintenance_deletes_packs() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    mirror_support::capture_logs();
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    let first = origin.commit_files(
        "main",
        &[
            ("apps/kustomization.yaml", KUSTOMIZATION),
            ("apps/cm.yaml", &configmap(0)),
        ],
        "base",
    );
    let mut s = spec(origin.dir.to_str().unwrap());
    s.maintenance = MaintenancePolicy {
        enabled: true,
        loose_objects: 20,
        packs: 4,
        min_interval: Duration::ZERO,
        timeout: Duration::from_secs(60),
    };
    let m = Mirror::open(s, &tmp.path().join("mirrors")).await.unwrap();
    // Opened before any repack, held throughout: its mapped packs get deleted.
    let long_lived = m.repository();

    let revs = Arc::new(Mutex::new(vec![oid(&first)]));
    let sums: Arc<Mutex<HashMap<gix::ObjectId, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let maintaining = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reads_during = Arc::new(AtomicU64::new(0));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (m, long_lived, revs, sums, stop, maintaining, reads, reads_during, errors) = (
                Arc::clone(&m),
                long_lived.clone(),
                Arc::clone(&revs),
                Arc::clone(&sums),
                Arc::clone(&stop),
                Arc::clone(&maintaining),
                Arc::clone(&reads),
                Arc::clone(&reads_during),
                Arc::clone(&errors),
            );
            std::thread::spawn(move || {
                let mut n = r;
                while !stop.load(Ordering::Relaxed) {
                    let during = maintaining.load(Ordering::Relaxed);
                    let rev = {
                        let v = revs.lock().unwrap();
                        v[n % v.len()]
                    };
                    n += 1;
                    // Ancestry facts (in memory) and an object read.
                    let f = m.facts_uncached(rev);
                    if !f.known || !f.on_branch() {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("facts of {rev}: {f:?}"));
                    }
                    // A checksum through a fresh handle and through the one
                    // held since before the first repack, cold caches both.
                    let handle = if n % 2 == 0 {
                        m.repository()
                    } else {
                        long_lived.clone()
                    };
                    match checksum(handle, rev) {
                        Ok(sum) => {
                            let mut known = sums.lock().unwrap();
                            let expected = known.entry(rev).or_insert_with(|| sum.clone());
                            if *expected != sum {
                                errors
                                    .lock()
                                    .unwrap()
                                    .push(format!("checksum of {rev} changed"));
                            }
                        }
                        Err(e) => errors.lock().unwrap().push(e),
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                    if during && maintaining.load(Ordering::Relaxed) {
                        reads_during.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    let start = Instant::now();
    let mut runs = Vec::new();
    for i in 0..60 {
        let tip = push(&origin, i);
        m.refresh().await.unwrap();
        revs.lock().unwrap().push(oid(&tip));
        // What the poller does after a successful fetch.
        maintaining.store(true, Ordering::Relaxed);
        let done = m.maintain_if_due().await;
        maintaining.store(false, Ordering::Relaxed);
        if let Some(r) = done {
            runs.push(r.unwrap());
        }
        let (packs, loose) = object_counts(m.path());
        assert!(loose < 20, "after push {i}: {loose} loose objects");
        assert!(packs <= 8, "after push {i}: {packs} packs");
    }
    // Keep reading a little after the last repack.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let errors = std::mem::take(&mut *errors.lock().unwrap());
    let deleting = runs
        .iter()
        .filter(|r| r.after.packs < r.before.packs)
        .count();
    let held = deleted_mappings(&m);
    // Once the handle from before the first repack is gone, the next fetch
    // and read must not leave any mapped: a deleted pack that stays mapped
    // keeps its disk space and memory for the life of the process.
    drop(long_lived);
    let tip = push(&origin, 60);
    m.refresh().await.unwrap();
    checksum(m.repository(), oid(&tip)).unwrap();
    let released = deleted_mappings(&m);
    eprintln!(
        "mappings of deleted pack files: {held} while the old handle was held, {released} after"
    );
    assert_eq!(released, 0, "deleted pack files still mapped");
    let retries = mirror_support::captured_logs()
        .matches("reading the repository failed; retrying")
        .count();
    eprintln!("checksums retried after a failed read: {retries}");
    eprintln!(
        "60 fetches in {:?}: {} repacks ({deleting} deleted packs), {} reads ({} during a repack), {} errors; final {:?}",
        start.elapsed(),
        runs.len(),
        reads.load(Ordering::Relaxed),
        reads_during.load(Ordering::Relaxed),
        errors.len(),
        object_counts(m.path()),
    );
    assert!(
        errors.is_empty(),
        "{} failed reads, first: {}",
        errors.len(),
        errors[0]
    );
    assert!(runs.len() >= 10, "{} repacks", runs.len());
    assert!(deleting >= 5, "repacks deleted packs {deleting} times");
    assert!(reads.load(Ordering::Relaxed) > 100);
    assert!(
        reads_during.load(Ordering::Relaxed) > 0,
        "no read overlapped a repack"
    );
    assert_eq!(m.status().maintenance_runs, runs.len() as u64);
}

/// Mappings of this mirror's files that were deleted (other tests run in
/// this process too: only `mirror`'s directory counts).
fn deleted_mappings(mirror: &Mirror) -> usize {
    let dir = mirror.path().to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/maps")
        .expect("reading /proc/self/maps")
        .lines()
        .filter(|l| l.contains(&dir) && l.ends_with(" (deleted)"))
        .count()
}

/// The soak's pattern: one small commit at a time, so every fetch leaves
/// loose objects and every read finds its objects (loose, or in a pack
/// gix has mapped) without a miss, the only thing that makes gix re-read
/// the pack directory. A repack deletes the packs gix has mapped; they must
/// not stay mapped (holding their disk space) until some later miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_deleted_by_a_repack_are_unmapped_without_waiting_for_a_miss() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    let mut tip = origin.commit_files(
        "main",
        &[
            ("apps/kustomization.yaml", KUSTOMIZATION),
            ("apps/cm.yaml", &configmap(0)),
        ],
        "base",
    );
    origin.linear_history("main", 30);
    let m = Mirror::open(
        spec(origin.dir.to_str().unwrap()),
        &tmp.path().join("mirrors"),
    )
    .await
    .unwrap();
    let small_push =
        |i: usize| origin.commit_files("main", &[("apps/cm.yaml", &configmap(i))], "one");
    let mut n = 0;
    let mut deleted_packs = 0;
    // Four rounds of pushes, each ending in a repack; then pushes only.
    for round in 0..5 {
        for _ in 0..4 {
            n += 1;
            tip = small_push(n);
            m.refresh().await.unwrap();
            checksum(m.repository(), oid(&tip)).unwrap();
        }
        if round == 4 {
            break;
        }
        let before = pack_files(&m);
        m.maintain().await.unwrap();
        let after = pack_files(&m);
        deleted_packs += before.iter().filter(|p| !after.contains(p)).count();
        assert_eq!(
            deleted_mappings(&m),
            0,
            "round {round}: deleted pack files still mapped after the repack"
        );
        // The last commits' objects now live in the new pack only: reading
        // them maps it, and the next round's repack rolls it up.
        checksum(m.repository(), oid(&tip)).unwrap();
        assert_eq!(
            object_counts(m.path()).1,
            0,
            "round {round}: loose objects left"
        );
    }
    assert!(deleted_packs > 0, "no repack deleted a pack");
    assert_eq!(deleted_mappings(&m), 0, "deleted pack files still mapped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poller_runs_maintenance_at_most_once_per_interval() {
    mirror_support::capture_logs();
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    origin.commit("main", "c0");
    let mut s = spec(origin.dir.to_str().unwrap());
    s.poll_interval = Duration::from_millis(100);
    s.maintenance.loose_objects = 1;
    s.maintenance.min_interval = Duration::from_secs(3600);
    let m = Mirror::open(s, &tmp.path().join("mirrors")).await.unwrap();
    assert!(
        object_counts(m.path()).1 > 0,
        "the clone left loose objects"
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let poller = Arc::clone(&m).spawn_poller(async {
        let _ = rx.await;
    });
    assert!(
        eventually(Duration::from_secs(10), || m.status().maintenance_runs == 1).await,
        "the poller never repacked"
    );
    // More fetches bring more loose objects, but the interval holds.
    for i in 1..4 {
        origin.commit("main", &format!("c{i}"));
        let before = m.status().fetches;
        assert!(eventually(Duration::from_secs(10), || m.status().fetches > before + 1).await);
    }
    let st = m.status();
    assert_eq!(st.maintenance_runs, 1, "{st:?}");
    let report = st.last_maintenance.unwrap();
    assert_eq!(report.after.loose_objects, 0);
    assert!(object_counts(m.path()).1 > 0);
    assert!(
        mirror_support::captured_logs().contains("mirror maintenance: repacked"),
        "logged at info"
    );
    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(10), poller)
        .await
        .unwrap()
        .unwrap();
}

/// `refresh` after a fetch has returned starts a new fetch; it never joins
/// the finished one and hands back its stale result. The fetch task used to
/// publish its result before freeing the single-flight slot, so a caller
/// woken by the result that asked again at once (a rotated secret, a push
/// just made) could get the old answer: on a loaded machine
/// tests/mirror_credentials.rs saw an auth failure after the password file
/// was already fixed. Busy threads make the window likely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_after_a_finished_fetch_starts_a_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::new(tmp.path(), "origin.git");
    origin.commit("main", "c0");
    let m = Mirror::open(
        spec(origin.dir.to_str().unwrap()),
        &tmp.path().join("mirrors"),
    )
    .await
    .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hogs: Vec<_> = (0..4)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let mut joined = 0;
    for _ in 0..150 {
        let before = m.status().fetches;
        m.refresh().await.unwrap();
        m.refresh().await.unwrap();
        if m.status().fetches != before + 2 {
            joined += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in hogs {
        h.join().unwrap();
    }
    assert_eq!(joined, 0, "refreshes that joined a finished fetch");
}
