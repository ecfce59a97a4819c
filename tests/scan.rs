//! `stale-guard scan` end to end, through the real binary.
//!
//! No Kubernetes API server can run on these machines, so each "cluster" is
//! a real HTTP server started by the test on loopback
//! (`scan_support::FakeApiServer`) that serves recorded API responses:
//! discovery documents, metadata-only `PartialObjectMetadataList`s paginated
//! with `metadata.continue`, and full lists of Flux `Kustomization`s,
//! `GitRepository`s and Argo CD `Application`s. A kubeconfig written by the
//! test points one context at each, and one at a closed port (an
//! unreachable cluster). The git source is a real repository made with the
//! git CLI, mirrored by the scan like the webhook mirrors it. One test
//! uses the live fake API server of `tests/kube_support` instead, for lists
//! larger than a page.

mod kube_support;
mod scan_support;
mod support;

use kube_support::{KubeApi, Resource};
use scan_support::{FakeApiServer, Recorded, closed_port_url, kubeconfig};
use serde_json::Value;
use stale_guard::checksum::ChecksumEngine;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{Repo, configmap_yaml};

/// The git source: A (overlay v1), B (overlay v2), C (head: README only, so
/// the overlay at B and C is the same), X on another branch. Commits are an
/// hour apart.
struct Fixture {
    _repo: Repo,
    vars: HashMap<String, String>,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let repo = Repo::new();
        repo.write(
            "overlays/prod/kustomization.yaml",
            "resources:\n- configmap.yaml\n",
        );
        repo.write("overlays/prod/configmap.yaml", configmap_yaml("web", "v1"));
        repo.write("README.md", "# gitops\n");
        let a = repo.commit("A: web v1");
        repo.write("overlays/prod/configmap.yaml", configmap_yaml("web", "v2"));
        let b = repo.commit("B: web v2");
        repo.write("README.md", "# gitops\n\nDocs only.\n");
        let c = repo.commit("C: docs");
        repo.git(&["checkout", "-q", "-b", "feature", &a]);
        repo.write("overlays/prod/configmap.yaml", configmap_yaml("web", "v3"));
        let x = repo.commit("X: web v3 on a feature branch");
        repo.git(&["checkout", "-q", "main"]);

        let engine = ChecksumEngine::open(repo.path()).unwrap();
        let sum = |rev: &str| {
            let id = engine.resolve_commit(rev).unwrap();
            engine
                .checksum(id, "overlays/prod")
                .unwrap()
                .checksum
                .to_string()
        };
        let mut vars = HashMap::new();
        for (k, v) in [
            ("REV_A", a.clone()),
            ("REV_B", b.clone()),
            ("REV_C", c.clone()),
            ("REV_X", x),
            (
                "REV_UNKNOWN",
                "0123456789abcdef0123456789abcdef01234567".into(),
            ),
            ("SUM_A", sum(&a)),
            ("SUM_B", sum(&b)),
            ("SUM_C", sum(&c)),
            ("REPO_URL", repo.path_str().to_owned()),
            ("REPO_FILE_URL", format!("file://{}", repo.path_str())),
        ] {
            vars.insert(k.to_owned(), v);
        }
        assert_ne!(vars["SUM_A"], vars["SUM_B"]);
        assert_eq!(vars["SUM_B"], vars["SUM_C"]);
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"tls: {{ certFile: /unused/tls.crt, keyFile: /unused/tls.key }}
mirrorDir: {mirrors}
sources:
  - name: gitops
    url: {url}
    branch: main
rules:
  - name: prod
    match:
      namespaces: [prod-apps]
      kinds: [ConfigMap, apps/Deployment]
    source: gitops
    overlay: overlays/prod
"#,
            mirrors = dir.path().join("mirrors").display(),
            url = repo.path_str(),
        );
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        Fixture {
            _repo: repo,
            vars,
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The "east" cluster: Flux, Argo CD, ConfigMaps over two pages.
    fn east(&self) -> Recorded {
        let v = &self.vars;
        Recorded::default()
            .serve("/api", None, "api.json", v)
            .serve("/api/v1", None, "api-v1.json", v)
            .serve("/apis", None, "apis-full.json", v)
            .serve("/apis/apps/v1", None, "apps-v1.json", v)
            .serve(
                "/apis/kustomize.toolkit.fluxcd.io/v1",
                None,
                "kustomize-v1.json",
                v,
            )
            .serve(
                "/apis/kustomize.toolkit.fluxcd.io/v1beta2",
                None,
                "kustomize-v1beta2.json",
                v,
            )
            .serve(
                "/apis/source.toolkit.fluxcd.io/v1",
                None,
                "source-v1.json",
                v,
            )
            .serve(
                "/apis/argoproj.io/v1alpha1",
                None,
                "argoproj-v1alpha1.json",
                v,
            )
            .serve(
                "/api/v1/namespaces/prod-apps/configmaps",
                None,
                "east-configmaps-page1.json",
                v,
            )
            .serve(
                "/api/v1/namespaces/prod-apps/configmaps",
                Some(CONTINUE),
                "east-configmaps-page2.json",
                v,
            )
            .serve(
                "/apis/apps/v1/namespaces/prod-apps/deployments",
                None,
                "empty-metadata-list.json",
                v,
            )
            .serve(
                "/apis/kustomize.toolkit.fluxcd.io/v1/kustomizations",
                None,
                "east-kustomizations.json",
                v,
            )
            .serve(
                "/apis/source.toolkit.fluxcd.io/v1/gitrepositories",
                None,
                "east-gitrepositories.json",
                v,
            )
            .serve(
                "/apis/argoproj.io/v1alpha1/applications",
                None,
                "east-applications.json",
                v,
            )
    }

    /// The "west" cluster: Argo CD only, everything current or unchanged.
    fn west(&self) -> Recorded {
        let v = &self.vars;
        Recorded::default()
            .serve("/api", None, "api.json", v)
            .serve("/api/v1", None, "api-v1.json", v)
            .serve("/apis", None, "apis-argo-only.json", v)
            .serve(
                "/apis/argoproj.io/v1alpha1",
                None,
                "argoproj-v1alpha1.json",
                v,
            )
            .serve(
                "/api/v1/namespaces/prod-apps/configmaps",
                None,
                "west-configmaps.json",
                v,
            )
            .serve(
                "/apis/argoproj.io/v1alpha1/applications",
                None,
                "west-applications.json",
                v,
            )
    }

    fn write_kubeconfig(&self, clusters: &[(&str, &str)]) -> PathBuf {
        let path = self.path("kubeconfig");
        std::fs::write(&path, kubeconfig(clusters)).unwrap();
        path
    }
}

/// The continue token of the first ConfigMap page.
const CONTINUE: &str =
    "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6OTE4MjczLCJzdGFydCI6ImNtLXN0YWxlXHUwMDAwIn0";

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `stale-guard scan` with the fixture's config and `kubeconfig`,
/// isolated from the user's kubeconfig and git configuration.
async fn scan(fx: &Fixture, kubeconfig: &Path, extra: &[&str]) -> Outcome {
    scan_env(fx, kubeconfig, extra, &[]).await
}

/// [`scan`] with environment variables added (`NO_COLOR` is removed first).
async fn scan_env(
    fx: &Fixture,
    kubeconfig: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Outcome {
    let mut cmd = tokio::process::Command::new(support::bin());
    cmd.arg("scan")
        .arg("--config")
        .arg(fx.path("config.yaml"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(extra)
        .env_remove("KUBECONFIG")
        .env("HOME", fx.dir.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("stale-guard scan did not finish within 120 s")
        .expect("spawning stale-guard");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn item<'a>(cluster: &'a Value, kind: &str, name: &str) -> &'a Value {
    cluster["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == kind && i["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {cluster:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_contexts_one_unreachable_json() {
    let fx = Fixture::new();
    let east = FakeApiServer::start(fx.east()).await;
    let west = FakeApiServer::start(fx.west()).await;
    let down = closed_port_url();
    let kc = fx.write_kubeconfig(&[("east", &east.url), ("west", &west.url), ("down", &down)]);
    let out = scan(&fx, &kc, &["--all-contexts", "--output", "json"]).await;
    assert_eq!(
        out.code, 2,
        "an unreachable cluster makes the exit code 2\nstdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    let report: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\nstderr:\n{}", out.stdout, out.stderr));
    let clusters = report["clusters"].as_array().unwrap();
    let names: Vec<&str> = clusters
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["east", "west", "down"]);
    assert_eq!(report["sources"][0]["head"], fx.vars["REV_C"].as_str());

    // The unreachable cluster is reported, the others are complete.
    let down = &clusters[2];
    assert_eq!(down["reachable"], false);
    let err = down["errors"][0].as_str().unwrap();
    assert!(err.contains("cannot reach the API server"), "{err}");
    assert!(down["items"].as_array().unwrap().is_empty());

    let east_c = &clusters[0];
    assert_eq!(east_c["reachable"], true);
    assert_eq!(east_c["errors"].as_array().unwrap().len(), 0, "{east_c:#}");
    let reason = |kind: &str, name: &str| {
        item(east_c, kind, name)["reason"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // Annotated objects, from two pages of a metadata-only list.
    assert_eq!(reason("ConfigMap", "cm-fresh"), "Fresh");
    assert_eq!(reason("ConfigMap", "cm-stale"), "StaleRevision");
    assert_eq!(reason("ConfigMap", "cm-unchanged"), "UnchangedOverlay");
    assert_eq!(
        reason("ConfigMap", "cm-missing-checksum"),
        "MissingChecksum"
    );
    assert_eq!(
        reason("ConfigMap", "cm-malformed-checksum"),
        "MalformedChecksum"
    );
    let stale = item(east_c, "ConfigMap", "cm-stale");
    assert_eq!(stale["behindCommits"], 2);
    assert_eq!(stale["ageSeconds"], 7200);
    assert_eq!(stale["severity"], "stale");
    assert_eq!(stale["revision"], fx.vars["REV_A"].as_str());
    assert_eq!(stale["head"], fx.vars["REV_C"].as_str());
    let unchanged = item(east_c, "ConfigMap", "cm-unchanged");
    assert_eq!(unchanged["behindCommits"], 1);
    assert_eq!(unchanged["severity"], "ok");
    let missing = item(east_c, "ConfigMap", "cm-missing-checksum")["message"]
        .as_str()
        .unwrap();
    assert!(
        missing.contains("near-miss key \"stale-guard\""),
        "{missing}"
    );
    assert!(
        east_c["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["name"] != "kube-root-ca.crt"),
        "an object without the annotations is not reported"
    );
    // Flux: `main@sha1:` revisions, GitRepository URL and branch.
    assert_eq!(reason("Kustomization", "apps"), "StaleRevision");
    assert_eq!(item(east_c, "Kustomization", "apps")["behindCommits"], 2);
    assert_eq!(item(east_c, "Kustomization", "apps")["source"], "gitops");
    assert_eq!(reason("Kustomization", "infra"), "Fresh");
    assert_eq!(reason("Kustomization", "legacy"), "UntrackedSource");
    let legacy = item(east_c, "Kustomization", "legacy");
    assert_eq!(legacy["severity"], "ok");
    assert!(
        legacy["message"]
            .as_str()
            .unwrap()
            .contains("https://git.example.com/vendor/platform.git is not a configured source"),
        "{legacy}"
    );
    // Argo CD: bare revisions, repoURL with .git, targetRevision HEAD/main.
    assert_eq!(reason("Application", "web-feature"), "RevisionNotOnBranch");
    assert_eq!(reason("Application", "web-lost"), "UnknownRevision");
    assert_eq!(reason("Application", "web-new"), "MissingRevision");
    assert!(east_c["notes"].as_array().unwrap().is_empty(), "{east_c:#}");

    let west_c = &clusters[1];
    assert_eq!(item(west_c, "ConfigMap", "cm-fresh")["reason"], "Fresh");
    assert_eq!(
        item(west_c, "Application", "web")["reason"],
        "UnchangedOverlay"
    );
    let notes = west_c["notes"].to_string();
    assert!(notes.contains("apps/Deployment is not served"), "{notes}");
    // An Application whose fields do not read is skipped with the reason;
    // the others are still judged.
    assert!(
        notes.contains("Application skipped, it does not read: argocd/odd: invalid type"),
        "{notes}"
    );
    assert!(
        west_c["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["name"] != "odd"),
        "{west_c:#}"
    );

    // Pagination: the second page was asked for with the first page's token,
    // every list was bounded, and object lists asked for metadata only.
    let seen = east.seen();
    let cm: Vec<_> = seen
        .iter()
        .filter(|s| s.path == "/api/v1/namespaces/prod-apps/configmaps")
        .collect();
    assert_eq!(cm.len(), 2, "{cm:#?}");
    assert_eq!(cm[0].param("continue"), None);
    assert_eq!(cm[1].param("continue").as_deref(), Some(CONTINUE));
    for s in &cm {
        assert_eq!(s.param("limit").as_deref(), Some("500"), "{s:?}");
        assert!(s.accept.contains("as=PartialObjectMetadataList"), "{s:?}");
    }
    assert!(seen.iter().all(|s| s.authorization == "Bearer scan-token"));
    let ks = seen
        .iter()
        .find(|s| s.path.ends_with("/kustomizations"))
        .unwrap();
    assert!(
        ks.path.starts_with("/apis/kustomize.toolkit.fluxcd.io/v1/"),
        "the preferred version is listed: {ks:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|s| s.path.contains("/apis/apps/v1/deployments"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_textfile_parses_back_and_exit_code_says_stale() {
    let fx = Fixture::new();
    let east = FakeApiServer::start(fx.east()).await;
    let west = FakeApiServer::start(fx.west()).await;
    let kc = fx.write_kubeconfig(&[("east", &east.url), ("west", &west.url)]);
    let textfile = fx.path("textfile/stale_guard_scan.prom");
    std::fs::create_dir_all(textfile.parent().unwrap()).unwrap();
    std::fs::write(&textfile, "# left over from the last run\n").unwrap();
    let out = scan(
        &fx,
        &kc,
        &[
            "--context",
            "east,west",
            "--prometheus-file",
            textfile.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(
        out.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    // The default output is the table, grouped by cluster.
    assert!(
        out.stdout.contains("CLUSTER east: 11 objects"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("CLUSTER west: 2 objects, 0 stale"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("stale beyond --max-age"),
        "{}",
        out.stderr
    );

    let text = std::fs::read_to_string(&textfile).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(textfile.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        leftovers,
        ["stale_guard_scan.prom"],
        "no temporary file is left"
    );
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("the textfile parses");
    for family in [
        "stale_guard_scan_stale",
        "stale_guard_scan_behind_commits",
        "stale_guard_scan_age_seconds",
    ] {
        assert!(scrape.docs.contains_key(family), "no HELP for {family}");
    }
    assert!(text.contains("# TYPE stale_guard_scan_stale gauge"));
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name}: unexpected {other:?}"),
            })
    };
    let id = |cluster: &'static str, kind: &'static str, ns: &'static str, name: &'static str| {
        vec![
            ("cluster", cluster),
            ("kind", kind),
            ("namespace", ns),
            ("name", name),
        ]
    };
    let stale_apps = id("east", "Kustomization", "flux-system", "apps");
    let mut with_reason = stale_apps.clone();
    with_reason.push(("reason", "StaleRevision"));
    assert_eq!(value("stale_guard_scan_stale", &with_reason), Some(1.0));
    assert_eq!(
        value("stale_guard_scan_behind_commits", &stale_apps),
        Some(2.0)
    );
    assert_eq!(
        value("stale_guard_scan_age_seconds", &stale_apps),
        Some(7200.0)
    );
    let mut unchanged = id("west", "Application", "argocd", "web");
    assert_eq!(
        value("stale_guard_scan_behind_commits", &unchanged),
        Some(1.0)
    );
    unchanged.push(("reason", "UnchangedOverlay"));
    assert_eq!(value("stale_guard_scan_stale", &unchanged), Some(0.0));
    let mut fresh = id("east", "ConfigMap", "prod-apps", "cm-fresh");
    fresh.push(("reason", "Fresh"));
    assert_eq!(value("stale_guard_scan_stale", &fresh), Some(0.0));
    let mut offbranch = id("east", "Application", "argocd", "web-feature");
    offbranch.push(("reason", "RevisionNotOnBranch"));
    assert_eq!(value("stale_guard_scan_stale", &offbranch), Some(1.0));
    assert_eq!(
        value("stale_guard_scan_cluster_up", &[("cluster", "west")]),
        Some(1.0)
    );
    let stale_count = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "stale_guard_scan_stale")
        .filter(|s| matches!(s.value, prometheus_parse::Value::Gauge(v) if v == 1.0))
        .count();
    // cm-stale, cm-missing-checksum, cm-malformed-checksum, apps,
    // web-feature, web-lost, web-new.
    assert_eq!(stale_count, 7, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_stale_exits_zero_and_max_age_tolerates_old_revisions() {
    let fx = Fixture::new();
    let west = FakeApiServer::start(fx.west()).await;
    let kc = fx.write_kubeconfig(&[("west", &west.url)]);
    // The current context by default.
    let out = scan(&fx, &kc, &["--output", "prometheus"]).await;
    assert_eq!(
        out.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout
            .contains("stale_guard_scan_stale{cluster=\"west\""),
        "{}",
        out.stdout
    );

    // cm-stale is 2 hours behind head by commit time: tolerated by
    // --max-age 3h, but the other findings (wrong annotations, unknown and
    // off-branch revisions) still count.
    let east = FakeApiServer::start(fx.east()).await;
    let kc = fx.write_kubeconfig(&[("east", &east.url)]);
    let out = scan(&fx, &kc, &["--max-age", "3h", "--output", "json"]).await;
    assert_eq!(out.code, 1, "stderr:\n{}", out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["maxAge"], "3h");
    assert_eq!(report["maxAgeSeconds"], 3 * 3600);
    let east_c = &report["clusters"][0];
    assert_eq!(item(east_c, "ConfigMap", "cm-stale")["severity"], "ok");
    assert_eq!(
        item(east_c, "ConfigMap", "cm-stale")["reason"],
        "StaleRevision"
    );
    assert_eq!(
        item(east_c, "ConfigMap", "cm-malformed-checksum")["severity"],
        "stale"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_usage_exits_two_with_a_precise_message() {
    let fx = Fixture::new();
    let kc = fx.write_kubeconfig(&[("east", &closed_port_url())]);
    let out = scan(&fx, &kc, &["--context", "nowhere"]).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("context \"nowhere\" is not in the kubeconfig (it has: east)"),
        "{}",
        out.stderr
    );
    let out = scan(&fx, &fx.path("missing-kubeconfig"), &[]).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("missing-kubeconfig"), "{}", out.stderr);
    // Only the unreachable cluster: still exit 2, with the reason.
    let out = scan(&fx, &kc, &[]).await;
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(
        out.stdout.contains("CLUSTER east: unreachable"),
        "{}",
        out.stdout
    );
}

/// stderr is a pipe here, as in a CronJob's log: no escape codes in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_no_colour_when_stderr_is_not_a_terminal() {
    let fx = Fixture::new();
    let west = FakeApiServer::start(fx.west()).await;
    let kc = fx.write_kubeconfig(&[("west", &west.url)]);
    let out = scan_env(&fx, &kc, &[], &[("RUST_LOG", "info")]).await;
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains("cloning"),
        "the clone is logged at info:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains('\u{1b}'),
        "escape codes on a pipe:\n{:?}",
        out.stderr
    );
}

/// The summary repeats `--max-age` as it was written, not reformatted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_is_reported_as_given() {
    let fx = Fixture::new();
    let west = FakeApiServer::start(fx.west()).await;
    let kc = fx.write_kubeconfig(&[("west", &west.url)]);
    let out = scan(&fx, &kc, &["--max-age", "1200h"]).await;
    assert_eq!(out.code, 0, "stderr:\n{}", out.stderr);
    assert!(
        out.stdout
            .contains("0 stale beyond --max-age 1200h, 0 errors"),
        "{}",
        out.stdout
    );
}

/// A fetch that fails while the mirror's last sync is within
/// `maxMirrorStaleness` (10m by default): the objects are judged against
/// the mirror's head, the source line carries the failure, and the exit
/// code is the verdicts' (0 or 1), not 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_fetch_within_max_mirror_staleness_judges_from_the_mirror() {
    let fx = Fixture::new();
    let west = FakeApiServer::start(fx.west()).await;
    let east = FakeApiServer::start(fx.east()).await;
    let kc = fx.write_kubeconfig(&[("west", &west.url), ("east", &east.url)]);
    let first = scan(&fx, &kc, &["--context", "west"]).await;
    assert_eq!(first.code, 0, "stderr:\n{}", first.stderr);

    // The remote (a local path) disappears; the mirror from the first scan
    // stays.
    let origin = fx._repo.path().to_path_buf();
    let moved = origin.with_extension("moved");
    std::fs::rename(&origin, &moved).unwrap();
    let west_out = scan(&fx, &kc, &["--context", "west", "--output", "json"]).await;
    let east_out = scan(&fx, &kc, &["--context", "east"]).await;
    std::fs::rename(&moved, &origin).unwrap();

    assert_eq!(west_out.code, 0, "stderr:\n{}", west_out.stderr);
    let report: Value = serde_json::from_str(&west_out.stdout).unwrap();
    let source = &report["sources"][0];
    assert_eq!(source["head"], fx.vars["REV_C"].as_str(), "{report:#}");
    assert!(
        source["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("fetch failed")),
        "{report:#}"
    );
    let west_c = &report["clusters"][0];
    assert_eq!(
        item(west_c, "Application", "web")["reason"],
        "UnchangedOverlay"
    );

    assert_eq!(
        east_out.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        east_out.stdout, east_out.stderr
    );
    let short = &fx.vars["REV_C"][..7];
    assert!(
        east_out
            .stdout
            .contains(&format!("source gitops: main@{short} (fetch failed")),
        "{}",
        east_out.stdout
    );
    assert!(
        !east_out.stdout.contains("MirrorUnavailable"),
        "{}",
        east_out.stdout
    );
}

/// Flux objects from a live (fake) API server rather than recorded
/// answers: more Kustomizations than one list page holds, so the scan
/// must follow `continue`; each is judged and none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_lists_over_several_pages_are_read_whole() {
    let fx = Fixture::new();
    let api = KubeApi::start(&[
        Resource::config_map(),
        Resource::flux_kustomization(),
        Resource::flux_git_repository(),
    ])
    .await;
    api.set(serde_json::json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"namespace": "flux-system", "name": "gitops"},
        "spec": {"url": fx.vars["REPO_URL"], "ref": {"branch": "main"}}
    }));
    let count = 501;
    for i in 0..count {
        let rev = if i == 0 {
            &fx.vars["REV_A"]
        } else {
            &fx.vars["REV_C"]
        };
        api.set(serde_json::json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"namespace": "flux-system", "name": format!("k{i:03}")},
            "spec": {"path": "./overlays/prod",
                     "sourceRef": {"kind": "GitRepository", "name": "gitops"}},
            "status": {"lastAppliedRevision": format!("main@sha1:{rev}")}
        }));
    }
    let kc = fx.write_kubeconfig(&[("live", &api.url)]);
    let out = scan(&fx, &kc, &["--output", "json"]).await;
    assert_eq!(out.code, 1, "k000 is stale\nstderr:\n{}", out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let cluster = &report["clusters"][0];
    let items = cluster["items"].as_array().unwrap();
    let kustomizations = items
        .iter()
        .filter(|i| i["kind"] == "Kustomization")
        .count();
    assert_eq!(kustomizations, count, "{}", cluster["errors"]);
    assert_eq!(
        item(cluster, "Kustomization", "k000")["reason"],
        "StaleRevision"
    );
    assert_eq!(item(cluster, "Kustomization", "k500")["reason"], "Fresh");
    // Two pages of Kustomizations (500 + 1), one of GitRepositories, one
    // metadata-only list of ConfigMaps in the rule's namespace.
    assert_eq!(api.requests("list"), 4, "{:?}", api.request_counts());
}
