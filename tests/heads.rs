//! Replicas that agree on the head (contract section 10): three
//! `stale-guard serve` processes against one `git daemon` and the fake
//! Kubernetes API server (tests/kube_support), polling hourly, so every
//! head they reach here came from a push or from the shared Lease.
#![cfg(unix)]

mod kube_support;
mod mirror_support;
mod support;
mod webhook_support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use kube_support::{KubeApi, Resource};
use mirror_support::{GitDaemon, Origin};
use serde_json::{Value, json};
use sha2::Sha256;
use webhook_support::{ConfigBuilder, Pki, Proto, SgProcess, fields, write_config};

const NAMESPACE: &str = "stale-guard-system";
const LEASE: &str = "stale-guard-head-gitops";
/// The contract: a push is known to every replica within about a second.
const ALL_WITHIN: Duration = Duration::from_secs(2);
const SECRET: &str = "heads-test-secret";

struct Cluster {
    replicas: Vec<Option<SgProcess>>,
    configs: Vec<PathBuf>,
    api: KubeApi,
    pki: Pki,
    origin: Origin,
    daemon: GitDaemon,
    _dir: tempfile::TempDir,
}

async fn cluster(n: usize) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::new(dir.path(), "gitops.git");
    origin.commit("main", "first");
    let daemon = GitDaemon::start(dir.path());
    let api = KubeApi::start(&[Resource::lease()]).await;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let secret_file = dir.path().join("receiver-secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let pki = Pki::write(&dir.path().join("tls"));
    let q = |p: &std::path::Path| serde_json::to_string(p.to_str().unwrap()).unwrap();
    let mut configs = Vec::new();
    for i in 0..n {
        let home = dir.path().join(format!("replica-{i}"));
        std::fs::create_dir_all(&home).unwrap();
        let mut c = ConfigBuilder::new(&home);
        c.source("gitops", &daemon.url("gitops.git"), "1h");
        c.rule(
            "gitops",
            "prod-apps",
            "gitops",
            "overlays/prod",
            "enforce",
            "strict",
        );
        c.receiver = Some(format!(
            "{{ secretFile: {} }}\nkube: {{ kubeconfig: {} }}\nheads: {{ namespace: {NAMESPACE}, identity: replica-{i} }}",
            q(&secret_file),
            q(&kubeconfig)
        ));
        configs.push(write_config(&home, &c, &pki));
    }
    let mut cluster = Cluster {
        replicas: Vec::new(),
        configs,
        api,
        pki,
        origin,
        daemon,
        _dir: dir,
    };
    for i in 0..n {
        let p = cluster.spawn(i, true).await;
        cluster.replicas.push(Some(p));
    }
    cluster
}

impl Cluster {
    async fn spawn(&self, i: usize, first: bool) -> SgProcess {
        let config = self.configs[i].clone();
        tokio::task::spawn_blocking(move || {
            if first {
                SgProcess::spawn(&config)
            } else {
                SgProcess::spawn_serving(&config)
            }
        })
        .await
        .unwrap()
    }

    fn replica(&self, i: usize) -> &SgProcess {
        self.replicas[i].as_ref().unwrap()
    }

    /// The last head replica `i` logged (a rewritten history logs it as
    /// `new`).
    fn head(&self, i: usize) -> Option<String> {
        self.replica(i)
            .json_lines()
            .iter()
            .rev()
            .map(fields)
            .find_map(|f| match f["message"].as_str() {
                Some("new head") => f["head"].as_str().map(str::to_owned),
                Some(m) if m.starts_with("history rewritten") => {
                    f["new"].as_str().map(str::to_owned)
                }
                _ => None,
            })
    }

    fn lease(&self) -> Option<Value> {
        self.api
            .get("coordination.k8s.io/v1", "Lease", NAMESPACE, LEASE)
    }

    fn recorded(&self) -> Option<String> {
        self.lease()?["metadata"]["annotations"]["stale-guard.io/head"]
            .as_str()
            .map(str::to_owned)
    }

    /// Waits until every running replica logged `commit` as its head and
    /// the Lease records it; returns how long that took.
    async fn wait_all(&self, commit: &str, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let heads: Vec<_> = (0..self.replicas.len())
                .filter(|i| self.replicas[*i].is_some())
                .map(|i| self.head(i))
                .collect();
            let done = heads.iter().all(|h| h.as_deref() == Some(commit));
            if done && self.recorded().as_deref() == Some(commit) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "not every replica at {commit} within {within:?}: heads {heads:?}, lease {:?}\n{}",
                self.lease(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .flatten()
            .map(|p| p.log())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }

    /// Delivers a GitHub push of `commit` to replica `i`.
    async fn push(&self, i: usize, commit: &str) {
        let body = serde_json::to_vec(&json!({
            "ref": "refs/heads/main",
            "after": commit,
            "repository": { "clone_url": self.daemon.url("gitops.git") },
        }))
        .unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(&body);
        let sig = hex::encode(mac.finalize().into_bytes());
        let client = webhook_support::client(&self.pki.ca.pem(), Proto::H2);
        let resp = client
            .post(format!("{}/hooks/git", self.replica(i).base()))
            .header("x-github-event", "push")
            .header("x-hub-signature-256", format!("sha256={sig}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 202);
    }

    /// `stale_guard_heads_total{source="gitops",event=...}` of replica `i`.
    async fn heads_metric(&self, i: usize, event: &str) -> u64 {
        let client = webhook_support::client(&self.pki.ca.pem(), Proto::H2);
        let text = client
            .get(format!("{}/metrics", self.replica(i).base()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let series = format!("stale_guard_heads_total{{source=\"gitops\",event=\"{event}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |v| v.trim().parse().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_one_replica_reaches_all_three() {
    let c = cluster(3).await;
    let first = c.origin.tip("main").unwrap();
    c.wait_all(&first, Duration::from_secs(10)).await;
    let commit = c.origin.commit("main", "second");
    let sent = Instant::now();
    c.push(0, &commit).await;
    c.wait_all(&commit, ALL_WITHIN).await;
    eprintln!(
        "push to replica 0 -> head at all three: {:?}",
        sent.elapsed()
    );
    let lease = c.lease().unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-0", "{lease}");
    assert_eq!(
        lease["metadata"]["annotations"]["stale-guard.io/branch"],
        "main"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_later_catches_up_from_the_lease() {
    let mut c = cluster(3).await;
    let first = c.origin.tip("main").unwrap();
    c.wait_all(&first, Duration::from_secs(10)).await;
    // Replica 2 stops; the branch moves while it is down.
    let mut down = c.replicas[2].take().unwrap();
    down.sigterm();
    down.wait_exit(Duration::from_secs(30));
    let commit = c.origin.commit("main", "while replica 2 was down");
    c.push(0, &commit).await;
    c.wait_all(&commit, ALL_WITHIN).await;
    // Restarted on its mirror (fresh, so no fetch at start; the poll is
    // hourly): only the Lease tells it the head moved.
    let started = Instant::now();
    let p = c.spawn(2, false).await;
    c.replicas[2] = Some(p);
    c.wait_all(&commit, ALL_WITHIN).await;
    eprintln!(
        "restarted replica at the recorded head: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_push_is_recorded_and_followed() {
    let c = cluster(3).await;
    let first = c.origin.tip("main").unwrap();
    let second = c.origin.commit("main", "second");
    c.push(0, &second).await;
    c.wait_all(&second, ALL_WITHIN).await;
    // Rewrite: main goes to a sibling of `second`.
    let rewritten = c.origin.commit_with(&[&first], "rewritten");
    c.origin.set("main", &rewritten);
    c.push(1, &rewritten).await;
    c.wait_all(&rewritten, ALL_WITHIN).await;
    let lease = c.lease().unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-1", "{lease}");
    assert!(c.heads_metric(1, "recorded").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_head_never_overwrites_a_newer_record() {
    let c = cluster(1).await;
    let first = c.origin.tip("main").unwrap();
    c.wait_all(&first, Duration::from_secs(10)).await;
    // Another replica recorded `third`, a commit this replica has never
    // seen. The record arrives late: without the label the watch selects
    // on, this replica still believes the Lease says `first`.
    let second = c.origin.commit_with(&[&first], "second");
    let third = c.origin.commit_with(&[&second], "third");
    let mut lease = c.lease().unwrap();
    lease["metadata"]["labels"] = json!({});
    lease["metadata"]["annotations"]["stale-guard.io/head"] = json!(third);
    lease["spec"]["holderIdentity"] = json!("replica-elsewhere");
    c.api.set(lease);
    // Its remote (lagging) shows `second`; a push brings it there. Its
    // write of `second` at the old resourceVersion conflicts (409); it
    // reads the Lease again, cannot prove `third` older (a fetch does not
    // bring it), and keeps it.
    c.origin.set("main", &second);
    c.push(0, &second).await;
    let start = Instant::now();
    while c.heads_metric(0, "kept").await == 0 {
        assert!(start.elapsed() < ALL_WITHIN, "{}", c.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.head(0).as_deref(), Some(second.as_str()));
    assert!(c.heads_metric(0, "conflict").await >= 1, "{}", c.logs());
    let lease = c.lease().unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-elsewhere");
    assert_eq!(c.recorded().as_deref(), Some(third.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_api_a_replica_works_alone() {
    let c = cluster(1).await;
    let first = c.origin.tip("main").unwrap();
    c.wait_all(&first, Duration::from_secs(10)).await;
    c.api.go_away(Duration::from_secs(600));
    let second = c.origin.commit("main", "second");
    c.push(0, &second).await;
    let start = Instant::now();
    while c.head(0).as_deref() != Some(second.as_str()) {
        assert!(start.elapsed() < ALL_WITHIN, "{}", c.logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // One warning for the outage, however long it lasts.
    let warned = |p: &SgProcess| {
        p.json_lines()
            .iter()
            .filter(|l| {
                fields(l)["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("heads: could not record"))
            })
            .count()
    };
    let start = Instant::now();
    while warned(c.replica(0)) == 0 {
        assert!(start.elapsed() < ALL_WITHIN, "{}", c.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(warned(c.replica(0)), 1, "{}", c.logs());
    assert_eq!(c.recorded().as_deref(), Some(first.as_str()));
}

/// The measurement of docs/benchmarks.md ("Push to head on every
/// replica"), not a timed test: run by hand with
/// `cargo test --release --test heads -- --ignored --nocapture measure`.
/// 100 pushes, each delivered to one replica in turn, from the push sent
/// to the head logged by all three and recorded in the Lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn measure_push_to_all_replicas() {
    let c = cluster(3).await;
    let first = c.origin.tip("main").unwrap();
    c.wait_all(&first, Duration::from_secs(10)).await;
    let mut took = Vec::new();
    for n in 0..100 {
        let commit = c.origin.commit("main", &format!("push {n}"));
        let sent = Instant::now();
        c.push(n % 3, &commit).await;
        c.wait_all(&commit, Duration::from_secs(30)).await;
        took.push(sent.elapsed());
    }
    took.sort();
    let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "push to head at all three replicas, {} pushes: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        took.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        took[took.len() - 1]
    );
}
