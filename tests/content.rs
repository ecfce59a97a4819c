//! Content verification through the real server over TLS (contract
//! section 8): objects without any annotation compared with what real
//! kustomize (`kubectl kustomize`) renders from a real git repository at
//! the branch head.
//!
//! The fixture has the incident's shape: the overlay reaches its base
//! through a symlink outside it, adds a component, and generates a
//! ConfigMap (hash-suffixed name). Three commits: c0 routes the Ingress to
//! `web-v1`, c1 to `web-v2`, c2 only changes the generated ConfigMap.
#![cfg(unix)]

mod support;
mod webhook_support;

use serde_json::{Value, json};
use std::time::Duration;
use support::Repo;
use webhook_support::*;

const OVERLAY: &str = "overlays/prod/east";
const NS: &str = "prod-apps";

struct Fixture {
    repo: Repo,
    c0: String,
    c1: String,
    c2: String,
    scratch: tempfile::TempDir,
}

fn ingress_yaml(backend: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  annotations:
    nginx.ingress.kubernetes.io/proxy-body-size: 8m
spec:
  ingressClassName: nginx-internal
  rules:
    - host: east.example.com
      http:
        paths:
          - path: /
            pathType: Prefix
            backend:
              service:
                name: {backend}
                port:
                  number: 80
"
    )
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: registry.example.com/web:1.4.2
          env:
            - {name: MODE, value: prod}
            - {name: UPSTREAM, valueFrom: {configMapKeyRef: {name: web-config, key: upstream}}}
          resources:
            requests: {cpu: 500m, memory: 256Mi}
            limits: {cpu: '1', memory: 1Gi}
";

impl Fixture {
    fn build() -> Fixture {
        let repo = Repo::new();
        repo.write(
            "bases/web/kustomization.yaml",
            "resources: [ingress.yaml, deployment.yaml]\nconfigMapGenerator:\n  - name: web-config\n    literals: [upstream=v1]\n",
        )
        .write("bases/web/ingress.yaml", ingress_yaml("web-v1"))
        .write("bases/web/deployment.yaml", DEPLOYMENT)
        .symlink("bases/linked", "web")
        .write(
            "components/team/kustomization.yaml",
            "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\ncommonAnnotations:\n  team.example.com/owner: platform\n",
        )
        .write(
            &format!("{OVERLAY}/kustomization.yaml"),
            "resources: [../../../bases/linked]\ncomponents: [../../../components/team]\nnamespace: prod-apps\n",
        )
        .write("README.md", "# gitops\n");
        let day = 86_400;
        let t0 = 1_760_000_000;
        let c0 = commit_at(&repo, "web: route to web-v1", t0);
        repo.write("bases/web/ingress.yaml", ingress_yaml("web-v2"));
        let c1 = commit_at(&repo, "web: route to web-v2", t0 + 20 * day);
        repo.write(
            "bases/web/kustomization.yaml",
            "resources: [ingress.yaml, deployment.yaml]\nconfigMapGenerator:\n  - name: web-config\n    literals: [upstream=v2]\n",
        );
        let c2 = commit_at(&repo, "web: upstream v2", t0 + 40 * day);
        Fixture {
            repo,
            c0,
            c1,
            c2,
            scratch: tempfile::Builder::new()
                .prefix("sg-content-")
                .tempdir()
                .unwrap(),
        }
    }

    /// For namespace prod-apps: `stamped-east` (annotations and content)
    /// for user ci-bot, `warn-east` (content only, warn mode) for
    /// warn-bot, `content-east` (content only, enforced) for the rest.
    fn config(&self) -> ConfigBuilder {
        let mut c = ConfigBuilder::new(self.scratch.path());
        c.source("gitops", self.repo.path_str(), "1h");
        for (name, users, extra) in [
            ("stamped-east", ", users: [ci-bot]", "content: verify\n"),
            (
                "warn-east",
                ", users: [warn-bot]",
                "provenance: none\n    content: verify\n    mode: warn\n",
            ),
            (
                "content-east",
                "",
                "provenance: none\n    content: verify\n",
            ),
        ] {
            c.rules.push(format!(
                "  - name: {name}\n    match: {{ namespaces: [{NS}]{users} }}\n    source: gitops\n    overlay: {OVERLAY}\n    {extra}"
            ));
        }
        c.extra = "render: { command: [kubectl, kustomize], timeout: 30s }\n".into();
        c
    }

    /// The objects `kubectl kustomize` renders at `rev`.
    fn rendered(&self, rev: &str) -> Vec<Value> {
        let text = self.repo.kustomize(rev, OVERLAY).expect("kustomize");
        serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| {
                let v: serde_yaml_ng::Value = serde::Deserialize::deserialize(d).unwrap();
                serde_json::to_value(v).unwrap()
            })
            .filter(|v| !v.is_null())
            .collect()
    }

    fn object(&self, rev: &str, kind: &str) -> Value {
        self.rendered(rev)
            .into_iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} rendered at {rev}"))
    }
}

/// What the API server adds to an applied object before admission.
fn as_admitted(mut object: Value) -> Value {
    let meta = object["metadata"].as_object_mut().unwrap();
    meta.insert("uid".into(), json!("a41e7c52-93d0-4b6f-8e25-7c1d9f0b3e68"));
    meta.insert("resourceVersion".into(), json!("48213"));
    meta.insert("generation".into(), json!(3));
    meta.insert("creationTimestamp".into(), json!("2026-11-28T16:20:31Z"));
    meta.insert(
        "managedFields".into(),
        json!([{"manager": "kustomize-controller", "operation": "Apply",
                "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {}}]),
    );
    object["status"] = json!({"observedGeneration": 2});
    object
}

fn short(rev: &str) -> &str {
    &rev[..7]
}

async fn metric(srv: &Server, name: &str) -> f64 {
    let (status, text) = srv.get("/metrics").await;
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse::<f64>().ok()).flatten()
        })
        .unwrap_or(0.0)
}

async fn refresh(srv: &Server) {
    let state = srv.running.as_ref().unwrap().state.clone();
    state.sources["gitops"]
        .mirror
        .refresh()
        .await
        .expect("fetch the push");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_objects_pass_without_annotations() {
    let fx = Fixture::build();
    let srv = Server::start(&fx.config()).await;
    let rendered = fx.rendered(&fx.c2);
    assert_eq!(
        rendered.len(),
        3,
        "Ingress, Deployment, generated ConfigMap"
    );
    for proto in [Proto::H1, Proto::H2] {
        let client = srv.client(proto);
        for object in &rendered {
            let mut admitted = as_admitted(object.clone());
            if object["kind"] == "Deployment" {
                // A mutating webhook's sidecar, and server defaults.
                let spec = &mut admitted["spec"]["template"]["spec"];
                spec["containers"].as_array_mut().unwrap().insert(
                    0,
                    json!({"name": "istio-proxy", "image": "istio/proxyv2:1.24"}),
                );
                spec["containers"][1]["imagePullPolicy"] = json!("IfNotPresent");
                spec["containers"][1]["resources"]["requests"]["cpu"] = json!("0.5");
                spec["restartPolicy"] = json!("Always");
            }
            let review = Review::of_object("head", &admitted);
            let v = post_review(&client, &srv.base, &review).await;
            v.assert_version(proto);
            v.assert_allowed("Fresh");
            assert!(
                v.message().is_empty() || v.message().contains("matches the rendering"),
                "{}",
                v.body
            );
            assert_no_warn_audit(&review.uid);
        }
    }
    // The generated ConfigMap carries its hash suffix, and is found by it.
    let cm = rendered.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    let name = cm["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("web-config-") && name.len() > "web-config-".len());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_commits_ingress_is_denied_naming_the_commit_it_matches() {
    let fx = Fixture::build();
    let srv = Server::start(&fx.config()).await;
    let client = srv.client(Proto::H1);
    let old = as_admitted(fx.object(&fx.c0, "Ingress"));
    // The earlier renderings are found in the background after start.
    let message = eventually(WAIT, "the history of renderings", || {
        let review = Review::of_object("old", &old);
        let (client, base) = (client.clone(), srv.base.clone());
        async move {
            let v = post_review(&client, &base, &review).await;
            let message = v.assert_denied("ContentMismatch").to_owned();
            message
                .contains("it matches the rendering at")
                .then_some(message)
        }
    })
    .await;
    let want = format!(
        "ContentMismatch: Ingress.networking.k8s.io prod-apps/web differs from the rendering at main@{}: spec.rules[0].http.paths[0].backend.service.name: found \"web-v1\", head renders \"web-v2\"; it matches the rendering at {}, 2 commits and 40 days behind main@{}; re-render from head",
        short(&fx.c2),
        short(&fx.c0),
        short(&fx.c2)
    );
    assert_eq!(message, want);
    let review = Review::of_object("old-audit", &old);
    let v = post_review(&client, &srv.base, &review).await;
    v.assert_denied("ContentMismatch");
    assert_eq!(
        v.audit("field"),
        Some("spec.rules[0].http.paths[0].backend.service.name"),
        "{}",
        v.body
    );
    let line = audit_line(&review.uid, "ContentMismatch", false).await;
    assert_eq!(
        fields(&line)["field"],
        "spec.rules[0].http.paths[0].backend.service.name"
    );

    // A dry run and an UPDATE are compared the same way.
    let mut dry = Review::of_object("old-dry", &old).operation("UPDATE");
    dry.dry_run = true;
    post_review(&client, &srv.base, &dry)
        .await
        .assert_denied("ContentMismatch");
    // c1's Ingress is head's: it passes, whatever revision it came from.
    let c1 = Review::of_object("c1", &as_admitted(fx.object(&fx.c1, "Ingress")));
    post_review(&client, &srv.base, &c1)
        .await
        .assert_allowed("Fresh");
    // Again: its spec is now the bytes seen to contain head's (not walked
    // again). The old spec below is still walked, and denied.
    post_review(&client, &srv.base, &c1)
        .await
        .assert_allowed("Fresh");

    // Copied fresh annotations do not make an old body pass.
    let head_sum = checksum_at(fx.repo.path(), &fx.c2, OVERLAY);
    let mut stamped = old.clone();
    stamped["metadata"]["annotations"][REVISION_KEY] = json!(fx.c2);
    stamped["metadata"]["annotations"][CHECKSUM_KEY] = json!(head_sum);
    let review = Review::of_object("copied", &stamped).user("ci-bot", &[]);
    let v = post_review(&client, &srv.base, &review).await;
    assert_eq!(v.audit("rule"), Some("stamped-east"), "{}", v.body);
    let msg = v.assert_denied("ContentMismatch");
    assert!(msg.contains("found \"web-v1\""), "{msg}");

    // Warn mode lets it through with the same words as a warning.
    let review = Review::of_object("warn", &old).user("warn-bot", &[]);
    let v = post_review(&client, &srv.base, &review).await;
    assert!(v.allowed(), "{}", v.body);
    assert!(
        v.warnings()
            .iter()
            .any(|w| w.contains("ContentMismatch") && w.contains(short(&fx.c0))),
        "{}",
        v.body
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_the_overlay_does_not_render_is_not_rendered() {
    let fx = Fixture::build();
    let srv = Server::start(&fx.config()).await;
    let client = srv.client(Proto::H2);
    let mut other = as_admitted(fx.object(&fx.c2, "Ingress"));
    other["metadata"]["name"] = json!("web-canary");
    let v = post_review(&client, &srv.base, &Review::of_object("other", &other)).await;
    let msg = v.assert_denied("NotRendered");
    assert!(
        msg.contains(&format!(
            "the rendering at main@{} has no Ingress.networking.k8s.io prod-apps/web-canary",
            short(&fx.c2)
        )),
        "{msg}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_kustomization_at_head_is_an_overlay_error() {
    let fx = Fixture::build();
    let srv = Server::start(&fx.config()).await;
    let client = srv.client(Proto::H1);
    let ingress = as_admitted(fx.object(&fx.c2, "Ingress"));
    // Valid for the checksum (it reads files, not their YAML), refused by
    // kustomize.
    fx.repo.write("bases/web/ingress.yaml", "kind: [unclosed\n");
    commit_at(&fx.repo, "break the ingress", 1_765_000_000);
    refresh(&srv).await;
    let v = post_review(&client, &srv.base, &Review::of_object("broken", &ingress)).await;
    let msg = v.assert_denied("OverlayError");
    assert!(
        msg.starts_with("OverlayError: the overlay cannot be rendered at main@"),
        "{msg}"
    );
    assert!(msg.len() < 2100, "bounded: {} bytes", msg.len());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_render_once_and_only_when_the_overlay_changes() {
    let fx = Fixture::build();
    let srv = Server::start(&fx.config()).await;
    let client = srv.client(Proto::H1);
    let ingress = Review::of_object("warm", &as_admitted(fx.object(&fx.c2, "Ingress")));
    post_review(&client, &srv.base, &ingress)
        .await
        .assert_allowed("Fresh");
    // Head and the earlier renderings are done once the history is full.
    eventually(WAIT, "head and 2 earlier renderings", || async {
        (metric(&srv, "stale_guard_renders").await >= 3.0).then_some(())
    })
    .await;
    let before = metric(&srv, "stale_guard_renders").await;

    // A README push moves the head but not the overlay: no rendering.
    fx.repo.write("README.md", "# gitops\n\nmore docs\n");
    let readme = commit_at(&fx.repo, "docs", 1_765_000_000);
    refresh(&srv).await;
    let v = post_review(&client, &srv.base, &ingress).await;
    v.assert_allowed("Fresh");
    assert_eq!(v.audit("head"), Some(readme.as_str()), "{}", v.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        metric(&srv, "stale_guard_renders").await,
        before,
        "a push outside the overlay rendered again (head {readme})"
    );

    // An overlay push, then 200 reviews at once (HTTP/2 streams: more
    // connections than one address may open): one rendering.
    let client = srv.client(Proto::H2);
    fx.repo.write(
        "bases/web/kustomization.yaml",
        "resources: [ingress.yaml, deployment.yaml]\nconfigMapGenerator:\n  - name: web-config\n    literals: [upstream=v3]\n",
    );
    commit_at(&fx.repo, "web: upstream v3", 1_765_100_000);
    refresh(&srv).await;
    let mut reviews = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (client, base) = (client.clone(), srv.base.clone());
        let review = Review::of_object(
            &format!("burst-{i}"),
            &ingress.object_override.clone().unwrap(),
        );
        reviews.spawn(async move { post_review(&client, &base, &review).await });
    }
    while let Some(v) = reviews.join_next().await {
        v.unwrap().assert_allowed("Fresh");
    }
    assert_eq!(
        metric(&srv, "stale_guard_renders").await,
        before + 1.0,
        "200 reviews after one push"
    );
    srv.stop().await;
}
