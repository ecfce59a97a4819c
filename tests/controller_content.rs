//! `provenance: flux|argo` with `content: verify` through the real server
//! over TLS (contract section 9): the rendering follows what the
//! controller builds (Flux's targetNamespace, namePrefix and postBuild
//! substitution with `substituteFrom` read from the fake API server;
//! Argo CD's `spec.source.kustomize`), rendered with real
//! `kubectl kustomize` from a real git repository.
#![cfg(unix)]

mod kube_support;
mod support;
mod webhook_support;

use kube_support::{KubeApi, Resource};
use serde_json::{Value, json};
use support::Repo;
use webhook_support::*;

const FLUX_NS: &str = "flux-system";
const NS: &str = "prod-apps";

struct Fixture {
    repo: Repo,
    head: String,
    api: KubeApi,
    scratch: tempfile::TempDir,
}

impl Fixture {
    async fn build() -> Fixture {
        let repo = Repo::new();
        repo.write(
            "apps/web/kustomization.yaml",
            "resources: [settings.yaml, deployment.yaml]\n",
        )
        .write(
            "apps/web/settings.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-settings\ndata:\n  greeting: ${greeting}\n  region: ${region:=nowhere}\n",
        )
        .write(
            "apps/web/deployment.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n        - name: web\n          image: registry.example.com/web:1.0.0\n",
        );
        let head = commit_at(&repo, "web", 1_760_000_000);
        let api = KubeApi::start(&[
            Resource::flux_kustomization(),
            Resource::flux_git_repository(),
            Resource::argo_application(),
            Resource::config_map(),
            Resource::secret(),
        ])
        .await;
        Fixture {
            repo,
            head,
            api,
            scratch: tempfile::Builder::new()
                .prefix("sg-controller-content-")
                .tempdir()
                .unwrap(),
        }
    }

    fn config(&self) -> ConfigBuilder {
        let kubeconfig = self.scratch.path().join("kubeconfig");
        std::fs::write(&kubeconfig, self.api.kubeconfig()).unwrap();
        let mut c = ConfigBuilder::new(self.scratch.path());
        c.source("gitops", self.repo.path_str(), "1h");
        c.extra = format!(
            "kube: {{ kubeconfig: {}, controllerWait: 300ms }}\nargo: {{ namespace: argocd }}\nrender: {{ command: [kubectl, kustomize], timeout: 30s }}\n",
            serde_json::to_string(kubeconfig.to_str().unwrap()).unwrap()
        );
        for (name, namespace, provenance) in [
            ("flux-content", NS, "flux"),
            ("argo-content", "argo-apps", "argo"),
        ] {
            c.rules.push(format!(
                "  - name: {name}\n    match: {{ namespaces: [{namespace}] }}\n    provenance: {provenance}\n    content: verify\n"
            ));
        }
        c
    }

    /// A Kustomization applying apps/web at head into prod-apps with the
    /// prefix `east-`, substituting from `from` and `greeting` inline.
    fn kustomization(&self, name: &str, from: Value) {
        self.api.set(json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"namespace": FLUX_NS, "name": name},
            "spec": {"interval": "10m", "prune": true, "path": "./apps/web",
                     "sourceRef": {"kind": "GitRepository", "name": "gitops"},
                     "targetNamespace": NS, "namePrefix": "east-",
                     "postBuild": {"substitute": {"greeting": "hello"},
                                   "substituteFrom": from}},
            "status": {"lastAttemptedRevision": format!("main@sha1:{}", self.head)}
        }));
    }
}

/// The ConfigMap as Flux applies it for Kustomization `by`.
fn settings(by: &str, region: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "east-web-settings", "namespace": NS,
                     "uid": "a41e7c52-93d0-4b6f-8e25-7c1d9f0b3e68",
                     "labels": {"kustomize.toolkit.fluxcd.io/name": by,
                                "kustomize.toolkit.fluxcd.io/namespace": FLUX_NS}},
        "data": {"greeting": "hello", "region": region}
    })
}

async fn review(srv: &Server, tag: &str, object: &Value) -> Verdict {
    let client = srv.client(Proto::H2);
    post_review(&client, &srv.base, &Review::of_object(tag, object)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_builds_are_reproduced_with_substitute_from() {
    let fx = Fixture::build().await;
    fx.api.set(json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"namespace": FLUX_NS, "name": "gitops"},
        "spec": {"interval": "1m", "url": fx.repo.path_str(), "ref": {"branch": "main"}}
    }));
    fx.api.set(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"namespace": FLUX_NS, "name": "cluster-vars"},
        "data": {"region": "eu-west-1", "greeting": "overridden inline"}
    }));
    fx.kustomization(
        "apps",
        json!([{"kind": "ConfigMap", "name": "cluster-vars"},
               {"kind": "Secret", "name": "absent", "optional": true}]),
    );
    fx.kustomization(
        "broken",
        json!([{"kind": "ConfigMap", "name": "missing-vars"}]),
    );
    let srv = Server::start(&fx.config()).await;
    eventually(WAIT, "ready", || async {
        (srv.get("/readyz").await.0 == 200).then_some(())
    })
    .await;

    // As Flux applies it: prefixed, in the target namespace, substituted
    // from the ConfigMap with the inline value winning.
    let v = review(&srv, "fresh", &settings("apps", "eu-west-1")).await;
    v.assert_allowed("Fresh");

    // An old substituted value.
    let v = review(&srv, "old", &settings("apps", "us-east-1")).await;
    let msg = v.assert_denied("ContentMismatch");
    assert!(msg.contains("data.region"), "{msg}");
    assert!(msg.contains("eu-west-1"), "{msg}");

    // A required substituteFrom object that is not there.
    let v = review(&srv, "missing", &settings("broken", "eu-west-1")).await;
    let msg = v.assert_denied("OverlayError");
    assert!(msg.contains("ConfigMap flux-system/missing-vars"), "{msg}");
    assert!(msg.contains("not found"), "{msg}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argo_kustomize_options_are_reproduced() {
    let fx = Fixture::build().await;
    fx.api.set(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
        "metadata": {"namespace": "argocd", "name": "web"},
        "spec": {"project": "default",
                 "source": {"repoURL": fx.repo.path_str(), "path": "apps/web",
                            "targetRevision": "main",
                            "kustomize": {"namePrefix": "blue-",
                                          "images": ["registry.example.com/web:2.0.0"]}},
                 "destination": {"server": "https://kubernetes.default.svc",
                                 "namespace": "argo-apps"}},
        "status": {"sync": {"status": "Synced", "revision": fx.head}}
    }));
    let srv = Server::start(&fx.config()).await;
    eventually(WAIT, "ready", || async {
        (srv.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    let deployment = |image: &str| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "blue-web", "namespace": "argo-apps",
                         "uid": "0b6f3e1c-5d7a-4c2e-9f1b-2a8d4e6c7f90",
                         "annotations": {"argocd.argoproj.io/tracking-id":
                                         "web:apps/Deployment:argo-apps/blue-web"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": image,
                                                           "imagePullPolicy": "IfNotPresent"}]}}}
        })
    };
    let v = review(
        &srv,
        "applied",
        &deployment("registry.example.com/web:2.0.0"),
    )
    .await;
    v.assert_allowed("Fresh");
    let v = review(
        &srv,
        "committed",
        &deployment("registry.example.com/web:1.0.0"),
    )
    .await;
    let msg = v.assert_denied("ContentMismatch");
    assert!(msg.contains("image"), "{msg}");
    srv.stop().await;
}
