//! `provenance: flux|argo` through the real server over TLS (contract
//! section 9): objects without any stale-guard annotation, judged by the
//! revision the Flux Kustomization or the Argo CD Application applying
//! them records, read from the fake API server of `tests/kube_support`
//! through the server's watches, against a real git repository.
//!
//! The fixture: c0 routes the prod Ingress to `web-v1`, c1 to `web-v2`,
//! c2 (head) changes only the staging overlay and the README. So at c1 the
//! prod overlay is unchanged since (UnchangedOverlay with `staleness:
//! content`) and the staging overlay is not.
#![cfg(unix)]

mod kube_support;
mod support;
mod webhook_support;

use kube_support::{KubeApi, Resource};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::Repo;
use webhook_support::*;

const PROD: &str = "overlays/prod";
const STAGING: &str = "overlays/staging";
const FLUX_NS: &str = "flux-system";

struct Fixture {
    repo: Repo,
    c0: String,
    c1: String,
    c2: String,
    api: KubeApi,
    scratch: tempfile::TempDir,
}

fn overlay(repo: &Repo, dir: &str, backend: &str) {
    repo.write(
        &format!("{dir}/kustomization.yaml"),
        "resources: [ingress.yaml]\n",
    )
    .write(
        &format!("{dir}/ingress.yaml"),
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: web\nspec:\n  defaultBackend:\n    service: {{name: {backend}, port: {{number: 80}}}}\n"
        ),
    );
}

impl Fixture {
    async fn build() -> Fixture {
        let repo = Repo::new();
        overlay(&repo, PROD, "web-v1");
        overlay(&repo, STAGING, "web-v1");
        repo.write("README.md", "# gitops\n");
        let t0 = 1_760_000_000;
        let c0 = commit_at(&repo, "prod: web-v1", t0);
        overlay(&repo, PROD, "web-v2");
        let c1 = commit_at(&repo, "prod: web-v2", t0 + 10 * DAY);
        overlay(&repo, STAGING, "web-v2");
        repo.write("README.md", "# gitops\n\nstaging moved\n");
        let c2 = commit_at(&repo, "staging: web-v2", t0 + 20 * DAY);
        let api = KubeApi::start(&[
            Resource::flux_kustomization(),
            Resource::flux_git_repository(),
            Resource::argo_application(),
        ])
        .await;
        Fixture {
            repo,
            c0,
            c1,
            c2,
            api,
            scratch: tempfile::Builder::new()
                .prefix("sg-provenance-")
                .tempdir()
                .unwrap(),
        }
    }

    fn url(&self) -> String {
        self.repo.path_str().to_owned()
    }

    /// Source `gitops` (this repository, main) and the `kube:` block;
    /// rules are added by each test.
    fn config(&self, wait: &str, more_kube: &str) -> ConfigBuilder {
        let kubeconfig = self.scratch.path().join("kubeconfig");
        std::fs::write(&kubeconfig, self.api.kubeconfig()).unwrap();
        let mut c = ConfigBuilder::new(self.scratch.path());
        c.source("gitops", &self.url(), "1h");
        c.extra = format!(
            "kube: {{ kubeconfig: {}, controllerWait: {wait}{more_kube} }}\nargo: {{ namespace: argocd }}\n",
            serde_json::to_string(kubeconfig.to_str().unwrap()).unwrap()
        );
        c
    }

    /// The GitRepository `gitops` on `url` and `branch`, as `name`.
    fn git_repository(&self, name: &str, url: &str, branch: &str) {
        self.api.set(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
            "metadata": {"namespace": FLUX_NS, "name": name},
            "spec": {"interval": "1m", "url": url, "ref": {"branch": branch}}
        }));
    }

    /// A Kustomization applying `path` from GitRepository `repo`, whose
    /// `status.lastAttemptedRevision` is `attempted` (written as given).
    fn kustomization(&self, name: &str, repo: &str, path: Option<&str>, attempted: &str) {
        let mut spec = json!({"interval": "10m", "prune": true,
                              "sourceRef": {"kind": "GitRepository", "name": repo}});
        if let Some(path) = path {
            spec["path"] = json!(format!("./{path}"));
        }
        self.api.set(json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"namespace": FLUX_NS, "name": name},
            "spec": spec,
            "status": {"lastAttemptedRevision": attempted,
                       "lastAppliedRevision": format!("main@sha1:{}", self.c0)}
        }));
    }

    /// An Application in `namespace` on this repository's main at `path`.
    fn application(&self, namespace: &str, name: &str, path: &str, status: Value) {
        self.api.set(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
            "metadata": {"namespace": namespace, "name": name},
            "spec": {"project": "default",
                     "source": {"repoURL": format!("{}.git/", self.url()), "path": path,
                                "targetRevision": "main"},
                     "destination": {"server": "https://kubernetes.default.svc",
                                     "namespace": "argo-apps"}},
            "status": status
        }));
    }
}

/// A flux or argo rule for `namespace`, `extra` lines added as given.
fn rule(c: &mut ConfigBuilder, name: &str, namespace: &str, provenance: &str, extra: &str) {
    c.rules.push(format!(
        "  - name: {name}\n    match: {{ namespaces: [{namespace}] }}\n    provenance: {provenance}\n{extra}"
    ));
}

/// The Ingress `web` in `namespace` as the API server sends it for
/// review, with these labels and annotations and nothing of stale-guard.
fn ingress(namespace: &str, labels: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "web", "namespace": namespace,
                     "uid": "a41e7c52-93d0-4b6f-8e25-7c1d9f0b3e68", "generation": 1,
                     "labels": labels, "annotations": annotations},
        "spec": {"defaultBackend": {"service": {"name": "web-v2", "port": {"number": 80}}}}
    })
}

/// Applied by Kustomization `flux-system/<name>`.
fn by_flux(namespace: &str, kustomization: &str) -> Value {
    ingress(
        namespace,
        json!({"app.kubernetes.io/name": "web",
               "kustomize.toolkit.fluxcd.io/name": kustomization,
               "kustomize.toolkit.fluxcd.io/namespace": FLUX_NS}),
        json!({}),
    )
}

/// Tracked by Argo CD with `id`.
fn by_argo(namespace: &str, id: &str) -> Value {
    ingress(
        namespace,
        json!({"app.kubernetes.io/name": "web"}),
        json!({"argocd.argoproj.io/tracking-id": id}),
    )
}

async fn review(srv: &Server, tag: &str, object: &Value) -> (Verdict, Duration) {
    let client = srv.client(Proto::H2);
    let review = Review::of_object(tag, object);
    let t0 = Instant::now();
    let v = post_review(&client, &srv.base, &review).await;
    (v, t0.elapsed())
}

/// The audit line's `detail` (the decision message), for allows too.
async fn detail(v: &Verdict) -> String {
    eventually(WAIT, "the audit line", || {
        let lines = audit_lines(&v.uid);
        async move {
            lines
                .first()
                .and_then(|l| fields(l)["detail"].as_str().map(str::to_owned))
        }
    })
    .await
}

/// Waits (bounded) until `/readyz` answers `want`; returns its body.
async fn wait_ready(srv: &Server, want: u16, limit: Duration) -> String {
    eventually(limit, &format!("/readyz answering {want}"), || async {
        let (status, body) = srv.get("/readyz").await;
        (status == want).then_some(body)
    })
    .await
}

/// The value of the metric line `name` exactly (labels included).
async fn metric(srv: &Server, name: &str) -> Option<f64> {
    let (status, text) = srv.get("/metrics").await;
    assert_eq!(status, 200);
    text.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Sends `object` until its verdict's reason is `reason` (the watch
/// delivers a change some time after the API server takes it).
async fn until_reason(srv: &Server, tag: &str, object: &Value, reason: &str) -> Verdict {
    eventually(WAIT, &format!("{tag}: {reason}"), || async {
        let (v, _) = review(srv, tag, object).await;
        (v.audit("reason") == Some(reason)).then_some(v)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_kustomizations_vouch_for_what_they_apply() {
    let fx = Fixture::build().await;
    let (c0, c1, c2) = (fx.c0.clone(), fx.c1.clone(), fx.c2.clone());
    fx.git_repository("gitops", &format!("file://{}/", fx.url()), "main");
    fx.git_repository("other-url", "https://git.example.com/other.git", "main");
    fx.git_repository("other-branch", &fx.url(), "release");
    fx.kustomization("apps", "gitops", Some(PROD), &format!("main@sha1:{c2}"));
    fx.kustomization("sha1-form", "gitops", Some(PROD), &format!("sha1:{c2}"));
    fx.kustomization("old-form", "gitops", Some(PROD), &format!("main/{c2}"));
    fx.kustomization("behind", "gitops", Some(PROD), &format!("main@sha1:{c0}"));
    fx.kustomization("prod-c1", "gitops", Some(PROD), &format!("main@sha1:{c1}"));
    fx.kustomization(
        "staging-c1",
        "gitops",
        Some(STAGING),
        &format!("main@sha1:{c1}"),
    );
    fx.kustomization(
        "elsewhere",
        "other-url",
        Some(PROD),
        &format!("main@sha1:{c2}"),
    );
    fx.kustomization(
        "release",
        "other-branch",
        Some(PROD),
        &format!("main@sha1:{c2}"),
    );
    let mut c = fx.config("300ms", "");
    rule(&mut c, "flux-strict", "prod-apps", "flux", "");
    rule(
        &mut c,
        "flux-content",
        "content-apps",
        "flux",
        "    staleness: content\n",
    );
    // The rule's own source and overlay win over the Kustomization's path.
    rule(
        &mut c,
        "flux-pinned",
        "pinned-apps",
        "flux",
        &format!("    source: gitops\n    overlay: {PROD}\n    staleness: content\n"),
    );
    let srv = Server::start(&c).await;
    wait_ready(&srv, 200, WAIT).await;

    // Head, in each revision form: Fresh with no annotation at all.
    for k in ["apps", "sha1-form", "old-form"] {
        let (v, _) = review(&srv, k, &by_flux("prod-apps", k)).await;
        v.assert_allowed("Fresh");
        assert_eq!(v.audit("revision"), Some(c2.as_str()), "{}", v.body);
        assert_eq!(v.audit("head"), Some(c2.as_str()), "{}", v.body);
        let d = detail(&v).await;
        assert!(
            d.contains(&format!(
                "status.lastAttemptedRevision of Kustomization {FLUX_NS}/{k}"
            )),
            "{k}: {d}"
        );
    }

    // Two commits behind.
    let (v, _) = review(&srv, "behind", &by_flux("prod-apps", "behind")).await;
    let msg = v.assert_denied("StaleRevision");
    assert!(msg.contains("2 commits"), "{msg}");
    assert!(
        msg.contains(&format!("Kustomization {FLUX_NS}/behind")),
        "{msg}"
    );
    assert_eq!(v.audit("revision"), Some(c0.as_str()), "{}", v.body);

    // staleness: content, overlay from spec.path: prod is unchanged since
    // c1, staging is not, and prod changed after c0.
    let (v, _) = review(&srv, "prod-c1", &by_flux("content-apps", "prod-c1")).await;
    v.assert_allowed("UnchangedOverlay");
    let (v, _) = review(&srv, "staging-c1", &by_flux("content-apps", "staging-c1")).await;
    v.assert_denied("StaleRevision");
    let (v, _) = review(&srv, "behind-c", &by_flux("content-apps", "behind")).await;
    v.assert_denied("StaleRevision");
    // ...unless the rule names the overlay itself.
    let (v, _) = review(&srv, "pinned", &by_flux("pinned-apps", "staging-c1")).await;
    v.assert_allowed("UnchangedOverlay");

    // A Kustomization that is not there, and no labels at all.
    let (v, _) = review(&srv, "nope", &by_flux("prod-apps", "nope")).await;
    let msg = v.assert_denied("MissingRevision");
    assert!(
        msg.contains(&format!("Kustomization {FLUX_NS}/nope")),
        "{msg}"
    );
    let unlabelled = ingress(
        "prod-apps",
        json!({"app.kubernetes.io/name": "web"}),
        json!({}),
    );
    let (v, _) = review(&srv, "unlabelled", &unlabelled).await;
    let msg = v.assert_denied("MissingRevision");
    assert!(msg.contains("kustomize.toolkit.fluxcd.io/name"), "{msg}");

    // Another repository, or another branch of this one: not guarded.
    for k in ["elsewhere", "release"] {
        let (v, _) = review(&srv, k, &by_flux("prod-apps", k)).await;
        v.assert_allowed("UntrackedSource");
        let d = detail(&v).await;
        assert!(d.contains(&format!("Kustomization {FLUX_NS}/{k}")), "{d}");
        assert!(d.contains("add it to sources"), "{d}");
    }
    let d = detail(
        &review(&srv, "release", &by_flux("prod-apps", "release"))
            .await
            .0,
    )
    .await;
    assert!(d.contains("\"release\""), "names the branch: {d}");

    // A new revision arrives through the watch.
    fx.kustomization("behind", "gitops", Some(PROD), &format!("main@sha1:{c2}"));
    until_reason(&srv, "caught-up", &by_flux("prod-apps", "behind"), "Fresh").await;

    let kinds = [("Kustomization", 8.0), ("GitRepository", 3.0)];
    for (kind, n) in kinds {
        let objects = format!("stale_guard_controller_objects{{kind=\"{kind}\"}}");
        assert_eq!(metric(&srv, &objects).await, Some(n), "{objects}");
        let up = format!("stale_guard_controller_watch_up{{kind=\"{kind}\"}}");
        assert_eq!(metric(&srv, &up).await, Some(1.0), "{up}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argo_applications_vouch_for_the_objects_they_track() {
    let fx = Fixture::build().await;
    let (c0, c1, c2) = (fx.c0.clone(), fx.c1.clone(), fx.c2.clone());
    let synced = |rev: &str| json!({"sync": {"status": "Synced", "revision": rev}});
    let running = |synced: &str, op: &str| {
        json!({"sync": {"status": "OutOfSync", "revision": synced},
               "operationState": {"phase": "Running", "startedAt": "2026-12-01T10:00:00Z",
                                  "operation": {"sync": {"revision": op}}}})
    };
    fx.application("argocd", "web", PROD, synced(&c2));
    fx.application("team-a", "web", PROD, synced(&c0));
    fx.application("argocd", "syncing", PROD, running(&c0, &c2));
    fx.application("argocd", "rolling-back", PROD, running(&c2, &c0));
    fx.application("argocd", "prod-c1", PROD, synced(&c1));
    fx.application("argocd", "staging-c1", STAGING, synced(&c1));
    let mut c = fx.config("300ms", "");
    rule(&mut c, "argo-strict", "argo-apps", "argo", "");
    rule(
        &mut c,
        "argo-content",
        "argo-content",
        "argo",
        "    staleness: content\n",
    );
    let srv = Server::start(&c).await;
    wait_ready(&srv, 200, WAIT).await;
    let id = |app: &str, ns: &str| format!("{app}:networking.k8s.io/Ingress:{ns}/web");

    // `argo.namespace` by default, the id's own namespace when it has one.
    let (v, _) = review(&srv, "web", &by_argo("argo-apps", &id("web", "argo-apps"))).await;
    v.assert_allowed("Fresh");
    let d = detail(&v).await;
    assert!(
        d.contains("status.sync.revision of Application argocd/web"),
        "{d}"
    );
    let (v, _) = review(
        &srv,
        "team-a",
        &by_argo("argo-apps", &id("team-a_web", "argo-apps")),
    )
    .await;
    let msg = v.assert_denied("StaleRevision");
    assert!(msg.contains("Application team-a/web"), "{msg}");
    assert!(msg.contains("2 commits"), "{msg}");

    // A running operation's revision is what is being applied.
    let (v, _) = review(
        &srv,
        "syncing",
        &by_argo("argo-apps", &id("syncing", "argo-apps")),
    )
    .await;
    v.assert_allowed("Fresh");
    let d = detail(&v).await;
    assert!(
        d.contains("status.operationState.operation.sync.revision of Application argocd/syncing"),
        "{d}"
    );
    let rolling = by_argo("argo-apps", &id("rolling-back", "argo-apps"));
    let (v, _) = review(&srv, "rolling-back", &rolling).await;
    v.assert_denied("StaleRevision");
    assert_eq!(v.audit("revision"), Some(c0.as_str()), "{}", v.body);

    // An id copied from another object vouches for nothing.
    let copied = by_argo("argo-apps", "web:networking.k8s.io/Ingress:argo-apps/api");
    let (v, _) = review(&srv, "copied", &copied).await;
    let msg = v.assert_denied("MissingRevision");
    assert!(msg.contains("name \"api\""), "{msg}");
    let (v, _) = review(
        &srv,
        "no-app",
        &by_argo("argo-apps", &id("gone", "argo-apps")),
    )
    .await;
    let msg = v.assert_denied("MissingRevision");
    assert!(msg.contains("Application argocd/gone"), "{msg}");

    // spec.source.path is the overlay.
    let prod = by_argo("argo-content", &id("prod-c1", "argo-content"));
    review(&srv, "prod-c1", &prod)
        .await
        .0
        .assert_allowed("UnchangedOverlay");
    let staging = by_argo("argo-content", &id("staging-c1", "argo-content"));
    review(&srv, "staging-c1", &staging)
        .await
        .0
        .assert_denied("StaleRevision");

    let objects = "stale_guard_controller_objects{kind=\"Application\"}";
    assert_eq!(metric(&srv, objects).await, Some(6.0));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_written_just_after_the_review_is_waited_for() {
    let fx = Fixture::build().await;
    let (c0, c1, c2) = (fx.c0.clone(), fx.c1.clone(), fx.c2.clone());
    fx.git_repository("gitops", &fx.url(), "main");
    fx.kustomization("apps", "gitops", Some(PROD), &format!("main@sha1:{c1}"));
    fx.kustomization("behind", "gitops", Some(PROD), &format!("main@sha1:{c0}"));
    let wait = Duration::from_secs(3);
    let mut c = fx.config("3s", "");
    rule(&mut c, "flux-strict", "prod-apps", "flux", "");
    let srv = Server::start(&c).await;
    wait_ready(&srv, 200, WAIT).await;

    // Flux writes lastAttemptedRevision, then applies; here the apply's
    // review comes first and the status 300 ms later.
    let object = by_flux("prod-apps", "apps");
    let pending = review(&srv, "race", &object);
    let update = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        fx.kustomization("apps", "gitops", Some(PROD), &format!("main@sha1:{c2}"));
    };
    let ((v, elapsed), ()) = tokio::join!(pending, update);
    v.assert_allowed("Fresh");
    assert_eq!(v.audit("revision"), Some(c2.as_str()), "{}", v.body);
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < wait,
        "Fresh once the watch delivers, within controllerWait: {elapsed:?}"
    );
    eprintln!("race: status written 300 ms after the review, Fresh after {elapsed:?}");

    // A stale one waits for controllerWait, no longer.
    let (v, elapsed) = review(&srv, "stale", &by_flux("prod-apps", "behind")).await;
    v.assert_denied("StaleRevision");
    assert!(
        elapsed >= wait - Duration::from_millis(100) && elapsed < wait + Duration::from_secs(2),
        "a stale claim waits controllerWait ({wait:?}): {elapsed:?}"
    );
    eprintln!("race: stale claim answered after {elapsed:?} (controllerWait {wait:?})");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_watch_could_change_is_waited_for() {
    let fx = Fixture::build().await;
    let c2 = fx.c2.clone();
    fx.git_repository("other-url", "https://git.example.com/other.git", "main");
    fx.kustomization(
        "elsewhere",
        "other-url",
        Some(PROD),
        &format!("main@sha1:{c2}"),
    );
    fx.application("argocd", "web", PROD, json!({"sync": {"revision": c2}}));
    let wait = Duration::from_secs(5);
    let mut c = fx.config("5s", "");
    rule(&mut c, "flux-strict", "prod-apps", "flux", "");
    rule(&mut c, "argo-strict", "argo-apps", "argo", "");
    let srv = Server::start(&c).await;
    wait_ready(&srv, 200, WAIT).await;
    let cases = [
        (
            "unlabelled",
            ingress("prod-apps", json!({}), json!({})),
            "MissingRevision",
        ),
        (
            "untracked",
            by_flux("prod-apps", "elsewhere"),
            "UntrackedSource",
        ),
        (
            "untracked-argo",
            ingress("argo-apps", json!({}), json!({})),
            "MissingRevision",
        ),
        (
            "copied-id",
            by_argo("argo-apps", "web:networking.k8s.io/Ingress:argo-apps/api"),
            "MissingRevision",
        ),
    ];
    for (tag, object, reason) in cases {
        let (v, elapsed) = review(&srv, tag, &object).await;
        assert_eq!(v.audit("reason"), Some(reason), "{tag}: {}", v.body);
        assert!(
            elapsed < wait / 2,
            "{tag}: answered at once, not after controllerWait ({wait:?}): {elapsed:?}"
        );
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claims_wait_is_part_of_the_api_servers_timeout() {
    let fx = Fixture::build().await;
    let remote = GitRemote::start(fx.repo.path().parent().unwrap());
    let url = remote.url("repo");
    fx.git_repository("gitops", &url, "main");
    // Not in the repository: answering needs an on-demand fetch.
    let unknown = "5eed5eed5eed5eed5eed5eed5eed5eed5eed0dd1";
    fx.kustomization(
        "apps",
        "gitops",
        Some(PROD),
        &format!("main@sha1:{unknown}"),
    );
    let mut c = fx.config("2s", "");
    c.sources.clear();
    c.source("gitops", &url, "1h");
    rule(&mut c, "flux-strict", "prod-apps", "flux", "");
    let srv = Server::start(&c).await;
    wait_ready(&srv, 200, WAIT).await;
    remote.hang();

    let client = srv.client(Proto::H1);
    let review = Review::of_object("timeout", &by_flux("prod-apps", "apps"));
    let t0 = Instant::now();
    let v = post_review_query(&client, &srv.base, &review, "?timeout=4s").await;
    let elapsed = t0.elapsed();
    let reason = v.audit("reason").unwrap_or_default().to_owned();
    assert!(
        reason == "DecisionTimeout" || reason == "UnknownRevision",
        "{}",
        v.body
    );
    assert!(
        elapsed < Duration::from_millis(4500),
        "answered within the API server's 4s, the 2s wait included: {elapsed:?}"
    );
    eprintln!("deadline: {reason} after {elapsed:?} (?timeout=4s, controllerWait 2s)");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_watches_keep_serving_the_cache() {
    let fx = Fixture::build().await;
    let (c0, c2) = (fx.c0.clone(), fx.c2.clone());
    fx.git_repository("gitops", &fx.url(), "main");
    fx.kustomization("apps", "gitops", Some(PROD), &format!("main@sha1:{c2}"));
    fx.kustomization("behind", "gitops", Some(PROD), &format!("main@sha1:{c0}"));
    let mut c = fx.config("200ms", ", unreadyAfter: 1s");
    rule(&mut c, "flux-strict", "prod-apps", "flux", "");
    let srv = Server::start(&c).await;
    wait_ready(&srv, 200, WAIT).await;
    let fresh = by_flux("prod-apps", "apps");
    let stale = by_flux("prod-apps", "behind");
    let up = "stale_guard_controller_watch_up{kind=\"Kustomization\"}";

    // The watch ends normally (the API server's request timeout).
    fx.api.close_watches();
    review(&srv, "closed", &fresh)
        .await
        .0
        .assert_allowed("Fresh");
    fx.kustomization("behind", "gitops", Some(PROD), &format!("main@sha1:{c2}"));
    until_reason(&srv, "after-close", &stale, "Fresh").await;

    // 410 Gone: a relist, which sees what changed meanwhile.
    fx.api.pause_watches();
    fx.kustomization("behind", "gitops", Some(PROD), &format!("main@sha1:{c0}"));
    fx.api.expire_watches();
    fx.api.resume_watches();
    until_reason(&srv, "after-410", &stale, "StaleRevision").await;
    review(&srv, "after-410-fresh", &fresh)
        .await
        .0
        .assert_allowed("Fresh");
    let relists = "stale_guard_controller_watch_relists{kind=\"Kustomization\"}";
    eventually(WAIT, "a relist counted", || async {
        (metric(&srv, relists).await >= Some(1.0)).then_some(())
    })
    .await;
    wait_ready(&srv, 200, WAIT).await;

    // The API server goes away: the cache still answers, readiness fails
    // once the watch has been broken for unreadyAfter.
    fx.api.go_away(Duration::from_secs(60));
    let gone = Instant::now();
    let body = wait_ready(&srv, 503, WAIT).await;
    let unready = gone.elapsed();
    assert!(body.contains("Kustomization: watch broken since"), "{body}");
    assert!(
        unready >= Duration::from_millis(900) && unready < Duration::from_secs(8),
        "after unreadyAfter (1s), not the 10s default: {unready:?}"
    );
    eprintln!("watch failure: /readyz 503 after {unready:?} (unreadyAfter 1s)");
    assert_eq!(metric(&srv, up).await, Some(0.0));
    for i in 0..3 {
        review(&srv, &format!("gone-fresh-{i}"), &fresh)
            .await
            .0
            .assert_allowed("Fresh");
        review(&srv, &format!("gone-stale-{i}"), &stale)
            .await
            .0
            .assert_denied("StaleRevision");
    }

    fx.api.come_back();
    let back = Instant::now();
    wait_ready(&srv, 200, Duration::from_secs(45)).await;
    eprintln!(
        "watch failure: ready again {:?} after the API server came back",
        back.elapsed()
    );
    assert_eq!(metric(&srv, up).await, Some(1.0));
    fx.kustomization("behind", "gitops", Some(PROD), &format!("main@sha1:{c2}"));
    until_reason(&srv, "after-return", &stale, "Fresh").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_that_are_not_git_branches_are_untracked() {
    let fx = Fixture::build().await;
    let digest = "sha256:".to_owned() + &"ab".repeat(32);
    // Flux from an OCI artifact: its revision is a digest.
    fx.api.set(json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"namespace": FLUX_NS, "name": "from-oci"},
        "spec": {"interval": "10m", "path": "./", "prune": true,
                 "sourceRef": {"kind": "OCIRepository", "name": "manifests"}},
        "status": {"lastAttemptedRevision": format!("latest@{digest}")}
    }));
    // Argo CD with several sources, and from a Helm repository.
    fx.api.set(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
        "metadata": {"namespace": "argocd", "name": "multi"},
        "spec": {"sources": [{"repoURL": fx.url(), "path": PROD, "targetRevision": "main"},
                             {"repoURL": "https://charts.example.com", "chart": "web",
                              "targetRevision": "1.2.3"}]},
        "status": {"sync": {"revisions": [fx.c2, "1.2.3"]}}
    }));
    fx.api.set(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
        "metadata": {"namespace": "argocd", "name": "chart"},
        "spec": {"source": {"repoURL": "https://charts.example.com", "chart": "web",
                            "targetRevision": "1.2.*"}},
        "status": {"sync": {"revision": "1.2.3"}}
    }));
    let mut c = fx.config("5s", "");
    rule(&mut c, "flux-strict", "prod-apps", "flux", "");
    rule(&mut c, "argo-strict", "argo-apps", "argo", "");
    let srv = Server::start(&c).await;
    wait_ready(&srv, 200, WAIT).await;
    let id = |app: &str| format!("{app}:networking.k8s.io/Ingress:argo-apps/web");
    for (tag, object, names) in [
        ("oci", by_flux("prod-apps", "from-oci"), "OCIRepository"),
        ("multi", by_argo("argo-apps", &id("multi")), "spec.sources"),
        (
            "chart",
            by_argo("argo-apps", &id("chart")),
            "Helm chart web",
        ),
    ] {
        let (v, elapsed) = review(&srv, tag, &object).await;
        v.assert_allowed("UntrackedSource");
        let d = detail(&v).await;
        assert!(d.contains(names), "{tag}: {d}");
        assert!(elapsed < Duration::from_secs(2), "{tag}: {elapsed:?}");
    }
    srv.stop().await;
}

/// Not a test: the fake API server for `MODE=flux benches/webhook-load.sh`.
/// Serves GitRepository `gitops` (`SG_BENCH_URL`, main) and Kustomization
/// `flux-system/bench` (overlays/prod/east, attempted `SG_BENCH_REV`),
/// writes `$SG_BENCH_DIR/kubeconfig`, and serves until
/// `$SG_BENCH_DIR/stop` exists (at most an hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "serves the fake API server for a benchmark, run by the script"]
async fn serve_api_for_bench() {
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    let (url, rev, dir) = (
        env("SG_BENCH_URL"),
        env("SG_BENCH_REV"),
        env("SG_BENCH_DIR"),
    );
    let dir = std::path::PathBuf::from(dir);
    let api = KubeApi::start(&[
        Resource::flux_kustomization(),
        Resource::flux_git_repository(),
    ])
    .await;
    api.set(json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"namespace": FLUX_NS, "name": "gitops"},
        "spec": {"interval": "1m", "url": url, "ref": {"branch": "main"}}
    }));
    api.set(json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"namespace": FLUX_NS, "name": "bench"},
        "spec": {"interval": "10m", "path": "./overlays/prod/east", "prune": true,
                 "sourceRef": {"kind": "GitRepository", "name": "gitops"}},
        "status": {"lastAttemptedRevision": format!("main@sha1:{rev}")}
    }));
    std::fs::write(dir.join("kubeconfig"), api.kubeconfig()).unwrap();
    let until = Instant::now() + Duration::from_secs(3600);
    while !dir.join("stop").exists() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
