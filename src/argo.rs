//! Argo CD objects as stale-guard reads them: the fields of an
//! `argoproj.io/v1alpha1` Application that decide provenance and rendering,
//! the tracking id Argo CD writes on every object it applies, and which
//! revision an Application is applying.
//!
//! As in [`crate::flux`], every field is optional or defaulted; an object
//! whose fields have the wrong types is skipped by the caller with the
//! reason ([`crate::flux::from_dynamic`]).

use crate::controllers::sources::GitRef;
use crate::flux::Patch;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const GROUP: &str = "argoproj.io";
pub const VERSION: &str = "v1alpha1";
/// The annotation Argo CD's annotation-based tracking writes.
pub const TRACKING_ID: &str = "argocd.argoproj.io/tracking-id";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Application {
    pub spec: ApplicationSpec,
    pub status: ApplicationStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ApplicationSpec {
    pub source: Option<ApplicationSource>,
    /// Multi-source Applications: only noticed, not followed.
    pub sources: Option<Vec<serde_json::Value>>,
    pub destination: Destination,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ApplicationSource {
    #[serde(rename = "repoURL")]
    pub repo_url: Option<String>,
    pub path: Option<String>,
    /// A branch, tag, commit or `HEAD` (the default).
    pub target_revision: Option<String>,
    /// A Helm chart from a Helm repository: not a git source.
    pub chart: Option<String>,
    pub kustomize: Option<ArgoKustomize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ArgoKustomize {
    pub name_prefix: Option<String>,
    pub name_suffix: Option<String>,
    /// `name=newName:tag` forms, as `kustomize edit set image` takes them.
    pub images: Vec<String>,
    pub common_labels: BTreeMap<String, String>,
    pub common_annotations: BTreeMap<String, String>,
    pub namespace: Option<String>,
    pub patches: Vec<Patch>,
    pub components: Vec<String>,
    pub replicas: Vec<Replica>,
    /// `kustomize edit add label --force`: override the overlay's own.
    pub force_common_labels: bool,
    pub force_common_annotations: bool,
    /// Flags stale-guard does not reproduce: a rendering with them set is
    /// refused ([`crate::render::BuildOptions::argo`]).
    pub label_without_selector: bool,
    pub label_include_templates: bool,
    pub common_annotations_envsubst: bool,
    pub ignore_missing_components: bool,
    /// A kustomize version by name (Argo CD's `kustomize.versions`).
    pub version: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Replica {
    pub name: String,
    pub count: Option<IntOrString>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Destination {
    pub namespace: Option<String>,
    pub server: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ApplicationStatus {
    pub sync: SyncStatus,
    pub operation_state: Option<OperationState>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SyncStatus {
    pub revision: Option<String>,
    pub status: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct OperationState {
    /// `Running`, `Succeeded`, `Failed`, `Error`, `Terminating`.
    pub phase: Option<String>,
    pub operation: Option<Operation>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Operation {
    pub sync: Option<SyncOperation>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SyncOperation {
    pub revision: Option<String>,
}

pub const SYNC_REVISION_FIELD: &str = "status.sync.revision";
pub const OPERATION_REVISION_FIELD: &str = "status.operationState.operation.sync.revision";

impl Application {
    /// The revision being applied and the field it was read from: the
    /// running operation's sync revision while an operation runs (Argo CD
    /// applies before it updates `status.sync`), else `status.sync.revision`.
    /// None (with the field looked at) when that field is empty.
    pub fn revision(&self) -> (Option<&str>, &'static str) {
        let op = self.status.operation_state.as_ref();
        if op.and_then(|o| o.phase.as_deref()) == Some("Running") {
            let rev = op
                .and_then(|o| o.operation.as_ref())
                .and_then(|o| o.sync.as_ref())
                .and_then(|s| s.revision.as_deref())
                .filter(|r| !r.is_empty());
            return (rev, OPERATION_REVISION_FIELD);
        }
        (
            self.status
                .sync
                .revision
                .as_deref()
                .filter(|r| !r.is_empty()),
            SYNC_REVISION_FIELD,
        )
    }

    pub fn repo_url(&self) -> Option<&str> {
        self.spec
            .source
            .as_ref()
            .and_then(|s| s.repo_url.as_deref())
            .filter(|u| !u.is_empty())
    }

    /// `spec.source.chart`, when it is one.
    pub fn chart(&self) -> Option<&str> {
        self.spec
            .source
            .as_ref()
            .and_then(|s| s.chart.as_deref())
            .filter(|c| !c.is_empty())
    }

    /// `spec.source.path`, or the repository root.
    pub fn overlay(&self) -> &str {
        self.spec
            .source
            .as_ref()
            .and_then(|s| s.path.as_deref())
            .filter(|p| !p.is_empty())
            .unwrap_or(".")
    }

    /// What `spec.source.targetRevision` follows.
    pub fn git_ref(&self) -> GitRef {
        let target = self
            .spec
            .source
            .as_ref()
            .and_then(|s| s.target_revision.as_deref())
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .unwrap_or("HEAD");
        if target == "HEAD" {
            GitRef::Default
        } else if let Some(b) = target.strip_prefix("refs/heads/") {
            GitRef::Branch(b.to_owned())
        } else if target.len() == 40 && target.bytes().all(|b| b.is_ascii_hexdigit()) {
            GitRef::Pinned(format!("commit {target}"))
        } else {
            // A branch or a tag: only a configured branch matches.
            GitRef::Branch(target.to_owned())
        }
    }
}

/// A parsed `argocd.argoproj.io/tracking-id`:
/// `<app>:<group>/<kind>:<namespace>/<name>`, the app optionally
/// `<app-namespace>_<app>`; the group is empty for the core group and the
/// namespace for a cluster-scoped object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackingId {
    pub app_namespace: Option<String>,
    pub app: String,
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl TrackingId {
    pub fn parse(value: &str) -> Result<TrackingId, String> {
        let bad = |why: &str| {
            format!(
                "tracking id {} is not <app>:<group>/<kind>:<namespace>/<name>: {why}",
                crate::echo::value(&format!("{value:?}"))
            )
        };
        let value = value.trim();
        let (app, rest) = value.split_once(':').ok_or_else(|| bad("no ':'"))?;
        let (group_kind, ns_name) = rest.split_once(':').ok_or_else(|| bad("one ':' only"))?;
        let (group, kind) = group_kind
            .split_once('/')
            .ok_or_else(|| bad("no '/' between group and kind"))?;
        let (namespace, name) = ns_name
            .split_once('/')
            .ok_or_else(|| bad("no '/' between namespace and name"))?;
        let (app_namespace, app) = match app.split_once('_') {
            Some((ns, app)) => (Some(ns), app),
            None => (None, app),
        };
        if app.is_empty() || app_namespace.is_some_and(str::is_empty) {
            return Err(bad("empty application"));
        }
        if kind.is_empty() || name.is_empty() {
            return Err(bad("empty kind or name"));
        }
        if [group, kind, namespace, name]
            .iter()
            .any(|s| s.contains(['/', ':']))
        {
            return Err(bad("extra '/' or ':'"));
        }
        Ok(TrackingId {
            app_namespace: app_namespace.map(str::to_owned),
            app: app.to_owned(),
            group: group.to_owned(),
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The Application's (namespace, name): the id's namespace, or
    /// `default_namespace` (the `argo.namespace` setting).
    pub fn application(&self, default_namespace: &str) -> (String, String) {
        (
            self.app_namespace
                .clone()
                .unwrap_or_else(|| default_namespace.to_owned()),
            self.app.clone(),
        )
    }

    /// Ok when the id names this very object (group from `api_version`,
    /// kind, namespace, name; empty namespace for a cluster-scoped one);
    /// else which part differs, so a copied annotation cannot vouch for
    /// another object.
    pub fn check_names(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<(), String> {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        for (what, found, want) in [
            ("group", &self.group, group),
            ("kind", &self.kind, kind),
            ("namespace", &self.namespace, namespace),
            ("name", &self.name, name),
        ] {
            if found != want {
                return Err(format!(
                    "the tracking id names {what} {} but the object's is {}",
                    crate::echo::value(&format!("{found:?}")),
                    crate::echo::value(&format!("{want:?}"))
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tracking_ids() {
        let id = TrackingId::parse("web:apps/Deployment:prod/web").unwrap();
        assert_eq!(
            id,
            TrackingId {
                app_namespace: None,
                app: "web".into(),
                group: "apps".into(),
                kind: "Deployment".into(),
                namespace: "prod".into(),
                name: "web".into(),
            }
        );
        assert_eq!(id.application("argocd"), ("argocd".into(), "web".into()));
        assert_eq!(
            id.check_names("apps/v1", "Deployment", "prod", "web"),
            Ok(())
        );
        let e = id
            .check_names("apps/v1", "Deployment", "prod", "other")
            .unwrap_err();
        assert!(e.contains("name \"web\"") && e.contains("\"other\""), "{e}");
        assert!(
            id.check_names("apps/v1", "StatefulSet", "prod", "web")
                .is_err()
        );
        assert!(
            id.check_names("apps/v1", "Deployment", "dev", "web")
                .is_err()
        );
        assert!(id.check_names("v1", "Deployment", "prod", "web").is_err());

        // Core group, apps in any namespace, cluster scope.
        let core = TrackingId::parse("team-a_web:/ConfigMap:prod/cfg").unwrap();
        assert_eq!(core.application("argocd"), ("team-a".into(), "web".into()));
        assert_eq!(core.check_names("v1", "ConfigMap", "prod", "cfg"), Ok(()));
        let cluster =
            TrackingId::parse("web:rbac.authorization.k8s.io/ClusterRole:/viewer").unwrap();
        assert_eq!(
            cluster.check_names("rbac.authorization.k8s.io/v1", "ClusterRole", "", "viewer"),
            Ok(())
        );
        for bad in [
            "",
            "web",
            "web:apps/Deployment",
            "web:Deployment:prod/web",
            "web:apps/Deployment:web",
            ":apps/Deployment:prod/web",
            "_web:apps/Deployment:prod/web",
            "web:apps/Deployment:prod/",
            "web:apps/Deployment:prod/a/b",
            "web:apps/Deployment:prod/a:b",
        ] {
            assert!(TrackingId::parse(bad).is_err(), "{bad}");
        }
    }

    fn app(v: serde_json::Value) -> Application {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_revision_being_applied() {
        let a = app(json!({"status": {"sync": {"revision": "aaa", "status": "Synced"}}}));
        assert_eq!(a.revision(), (Some("aaa"), SYNC_REVISION_FIELD));
        let running = app(json!({"status": {
            "sync": {"revision": "aaa"},
            "operationState": {"phase": "Running", "operation": {"sync": {"revision": "bbb"}}}}}));
        assert_eq!(running.revision(), (Some("bbb"), OPERATION_REVISION_FIELD));
        let done = app(json!({"status": {
            "sync": {"revision": "aaa"},
            "operationState": {"phase": "Succeeded", "operation": {"sync": {"revision": "bbb"}}}}}));
        assert_eq!(done.revision(), (Some("aaa"), SYNC_REVISION_FIELD));
        let none = app(json!({"status": {"operationState": {"phase": "Running"}}}));
        assert_eq!(none.revision(), (None, OPERATION_REVISION_FIELD));
        assert_eq!(app(json!({})).revision(), (None, SYNC_REVISION_FIELD));
    }

    #[test]
    fn source_and_kustomize_fields() {
        let a = app(json!({"spec": {
            "source": {"repoURL": "https://git.example.com/g.git", "path": "overlays/prod",
                       "targetRevision": "main",
                       "kustomize": {"namePrefix": "p-", "images": ["web=web:1.2"],
                                     "commonLabels": {"team": "a"}, "namespace": "prod",
                                     "patches": [{"path": "p.yaml"}],
                                     "components": ["../c"],
                                     "replicas": [{"name": "web", "count": 3}, {"name": "db", "count": "2"}]}},
            "destination": {"server": "https://kubernetes.default.svc", "namespace": "prod"},
            "project": "default"}}));
        assert_eq!(a.repo_url(), Some("https://git.example.com/g.git"));
        assert_eq!(a.overlay(), "overlays/prod");
        assert_eq!(a.git_ref(), GitRef::Branch("main".into()));
        let k = a.spec.source.as_ref().unwrap().kustomize.as_ref().unwrap();
        assert_eq!(k.replicas[0].count, Some(IntOrString::Int(3)));
        assert_eq!(k.replicas[1].count, Some(IntOrString::String("2".into())));
        assert_eq!(k.patches[0].path.as_deref(), Some("p.yaml"));
        assert_eq!(a.spec.destination.namespace.as_deref(), Some("prod"));
        let head = app(json!({"spec": {"source": {"repoURL": "x", "targetRevision": "HEAD"}}}));
        assert_eq!(head.git_ref(), GitRef::Default);
        assert_eq!(head.overlay(), ".");
        let pinned = app(
            json!({"spec": {"source": {"targetRevision": "3f2a9c0d5e6f708192a3b4c5d6e7f8091a2b3c4d"}}}),
        );
        assert!(matches!(pinned.git_ref(), GitRef::Pinned(_)));
        assert_eq!(pinned.repo_url(), None);
    }
}
