//! Flux objects as stale-guard reads them: the fields of a
//! `kustomize.toolkit.fluxcd.io/v1` Kustomization and a
//! `source.toolkit.fluxcd.io/v1` GitRepository that decide provenance and
//! rendering, and the pure functions over them (revision forms, which
//! Kustomization an applied object names, what a GitRepository follows).
//!
//! Every field is optional or defaulted and unknown fields are ignored, so
//! an object of an older or newer Flux, or one half written, still reads;
//! one whose fields have the wrong types does not, and is skipped by the
//! caller with the reason ([`from_dynamic`]).

use crate::controllers::sources::GitRef;
use crate::policy::Revision;
use kube::api::DynamicObject;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const KUSTOMIZE_GROUP: &str = "kustomize.toolkit.fluxcd.io";
pub const SOURCE_GROUP: &str = "source.toolkit.fluxcd.io";
pub const VERSION: &str = "v1";
/// The labels kustomize-controller puts on every object it applies.
pub const NAME_LABEL: &str = "kustomize.toolkit.fluxcd.io/name";
pub const NAMESPACE_LABEL: &str = "kustomize.toolkit.fluxcd.io/namespace";
/// The labels that name an object's Kustomization.
pub const LABELS: [&str; 2] = [NAME_LABEL, NAMESPACE_LABEL];

/// The identity and version of a controller object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Meta {
    pub namespace: String,
    pub name: String,
    pub resource_version: String,
}

impl Meta {
    pub fn of(object: &DynamicObject) -> Meta {
        Meta {
            namespace: object.metadata.namespace.clone().unwrap_or_default(),
            name: object.metadata.name.clone().unwrap_or_default(),
            resource_version: object.metadata.resource_version.clone().unwrap_or_default(),
        }
    }
}

/// Reads the typed `T` (spec and status) from a dynamic object. The error
/// names the object and the field serde stopped at, cut to the echo cap.
pub fn from_dynamic<T: DeserializeOwned>(object: &DynamicObject) -> Result<(Meta, T), String> {
    let meta = Meta::of(object);
    T::deserialize(&object.data)
        .map(|t| (meta.clone(), t))
        .map_err(|e| {
            crate::echo::value(&format!(
                "{}/{}: {e}",
                if meta.namespace.is_empty() {
                    "-"
                } else {
                    &meta.namespace
                },
                meta.name
            ))
        })
}

/// A Kustomization: what it applies from and how it renders.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Kustomization {
    pub spec: KustomizationSpec,
    pub status: KustomizationStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct KustomizationSpec {
    pub source_ref: SourceRef,
    /// The overlay; Flux's default is the repository root.
    pub path: Option<String>,
    pub target_namespace: Option<String>,
    pub name_prefix: Option<String>,
    pub name_suffix: Option<String>,
    pub common_metadata: Option<CommonMetadata>,
    pub patches: Vec<Patch>,
    pub images: Vec<Image>,
    pub components: Vec<String>,
    pub post_build: Option<PostBuild>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SourceRef {
    pub kind: String,
    pub name: String,
    /// Defaults to the Kustomization's namespace.
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CommonMetadata {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// A kustomize patch with an optional target (Flux and Argo CD alike).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Patch {
    /// Inline strategic-merge or JSON 6902 patch.
    pub patch: Option<String>,
    /// A file (Argo CD only).
    pub path: Option<String>,
    pub target: Option<PatchTarget>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PatchTarget {
    pub group: Option<String>,
    pub version: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub label_selector: Option<String>,
    pub annotation_selector: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Image {
    pub name: String,
    pub new_name: Option<String>,
    pub new_tag: Option<String>,
    pub digest: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PostBuild {
    pub substitute: BTreeMap<String, String>,
    pub substitute_from: Vec<SubstituteReference>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SubstituteReference {
    /// `ConfigMap` or `Secret`.
    pub kind: String,
    pub name: String,
    /// A missing optional object is not an error (Flux's rule).
    pub optional: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct KustomizationStatus {
    /// Written before Flux builds and applies.
    pub last_attempted_revision: Option<String>,
    /// Written after a successful apply.
    pub last_applied_revision: Option<String>,
}

impl Kustomization {
    /// The GitRepository's (namespace, name), or why it is not one.
    pub fn git_repository<'s>(
        &'s self,
        own_namespace: &'s str,
    ) -> Result<(&'s str, &'s str), String> {
        let r = &self.spec.source_ref;
        if r.kind != "GitRepository" {
            return Err(format!(
                "sourceRef is a {}, not a GitRepository",
                crate::echo::value(&format!("{:?}", r.kind))
            ));
        }
        if r.name.is_empty() {
            return Err("sourceRef.name is empty".to_owned());
        }
        let ns = r
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(own_namespace);
        Ok((ns, r.name.as_str()))
    }

    /// `spec.path`, or the repository root.
    pub fn overlay(&self) -> &str {
        self.spec
            .path
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or(".")
    }
}

/// A GitRepository: where and what it follows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GitRepository {
    pub spec: GitRepositorySpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GitRepositorySpec {
    pub url: Option<String>,
    #[serde(rename = "ref")]
    pub reference: Option<GitRepositoryRef>,
}

/// `spec.ref`; Flux's precedence is commit, name, semver, tag, branch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GitRepositoryRef {
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub semver: Option<String>,
    pub name: Option<String>,
    pub commit: Option<String>,
}

impl GitRepository {
    pub fn url(&self) -> Option<&str> {
        self.spec.url.as_deref().filter(|u| !u.is_empty())
    }

    /// What the repository follows, by Flux's precedence.
    pub fn git_ref(&self) -> GitRef {
        let r = self.spec.reference.clone().unwrap_or_default();
        let set = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        if let Some(commit) = set(&r.commit) {
            GitRef::Pinned(format!("commit {commit}"))
        } else if let Some(name) = set(&r.name) {
            match name.strip_prefix("refs/heads/") {
                Some(b) => GitRef::Branch(b.to_owned()),
                None => GitRef::Pinned(format!("ref {name}")),
            }
        } else if let Some(semver) = set(&r.semver) {
            GitRef::Pinned(format!("semver {semver}"))
        } else if let Some(tag) = set(&r.tag) {
            GitRef::Pinned(format!("tag {tag}"))
        } else if let Some(branch) = set(&r.branch) {
            GitRef::Branch(branch)
        } else {
            GitRef::Default
        }
    }
}

/// A Flux revision: `main@sha1:<hex>`, `refs/heads/main@sha1:<hex>`,
/// `sha1:<hex>`, a bare `<hex>`, or the pre-v2 `main/<hex>`. Returns the
/// branch it names (`refs/heads/` dropped; none for other refs such as
/// `refs/tags/…` or `refs/pull/…`) and the commit.
pub fn parse_revision(value: &str) -> Result<(Option<String>, Revision), String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("empty revision".to_owned());
    }
    let (reference, revision) = match Revision::parse_claim(value) {
        Ok((revision, reference)) => (reference, revision),
        Err(why) => match value.rsplit_once('/') {
            // Flux before v2.0: `main/3f2a…`.
            Some((branch, hex)) if !branch.is_empty() && !value.contains('@') => {
                let revision = Revision::parse(hex).map_err(|_| why)?;
                (Some(branch), revision)
            }
            _ => return Err(why),
        },
    };
    let branch = reference.and_then(|r| match r.strip_prefix("refs/") {
        Some(rest) => rest.strip_prefix("heads/").map(str::to_owned),
        None => Some(r.to_owned()),
    });
    Ok((branch, revision))
}

/// The Kustomization (namespace, name) that applied an object, from its
/// labels; the error says which label is missing.
pub fn kustomization_of<K, V>(labels: Option<&BTreeMap<K, V>>) -> Result<(&str, &str), String>
where
    K: std::borrow::Borrow<str> + Ord,
    V: AsRef<str>,
{
    let get = |k: &str| {
        labels
            .and_then(|l| l.get(k))
            .map(|v| v.as_ref().trim())
            .filter(|v| !v.is_empty())
    };
    match (get(NAMESPACE_LABEL), get(NAME_LABEL)) {
        (Some(ns), Some(name)) => Ok((ns, name)),
        (ns, name) => {
            let missing: Vec<&str> = [(NAMESPACE_LABEL, ns), (NAME_LABEL, name)]
                .into_iter()
                .filter(|(_, v)| v.is_none())
                .map(|(k, _)| k)
                .collect();
            Err(format!(
                "the object has no label {} (set by Flux's kustomize-controller)",
                missing.join(" or ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HEX: &str = "3f2a9c0d5e6f708192a3b4c5d6e7f8091a2b3c4d";

    #[test]
    fn revision_forms() {
        let r = Revision::parse(HEX).unwrap();
        let main = Some("main".to_owned());
        for (value, branch) in [
            (format!("main@sha1:{HEX}"), main.clone()),
            (format!("refs/heads/main@sha1:{HEX}"), main.clone()),
            (format!("main/{HEX}"), main.clone()),
            (format!("release/v1@sha1:{HEX}"), Some("release/v1".into())),
            (format!("sha1:{HEX}"), None),
            (HEX.to_owned(), None),
            (format!("refs/tags/v1.0@sha1:{HEX}"), None),
            (format!("refs/pull/7/head@sha1:{HEX}"), None),
            (format!("main@sha1:{}", HEX.to_uppercase()), main.clone()),
        ] {
            assert_eq!(parse_revision(&value), Ok((branch, r)), "{value}");
        }
        for bad in [
            "",
            "main@sha1:3f2a9c0",
            "main/3f2a9c0",
            "latest@sha256:0123",
            "@sha1:3f2a9c0d5e6f708192a3b4c5d6e7f8091a2b3c4d",
            "main@3f2a9c0d5e6f708192a3b4c5d6e7f8091a2b3c4d",
        ] {
            assert!(parse_revision(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_kustomization_an_object_names() {
        let labels = BTreeMap::from([
            (NAME_LABEL.to_owned(), "apps".to_owned()),
            (NAMESPACE_LABEL.to_owned(), "flux-system".to_owned()),
        ]);
        assert_eq!(kustomization_of(Some(&labels)), Ok(("flux-system", "apps")));
        let mut only_name = labels.clone();
        only_name.remove(NAMESPACE_LABEL);
        let e = kustomization_of(Some(&only_name)).unwrap_err();
        assert!(e.contains(NAMESPACE_LABEL) && !e.contains(" or "), "{e}");
        let e = kustomization_of::<String, String>(None).unwrap_err();
        assert!(e.contains(NAME_LABEL) && e.contains(NAMESPACE_LABEL), "{e}");
        let empty = BTreeMap::from([(NAME_LABEL.to_owned(), " ".to_owned())]);
        assert!(kustomization_of(Some(&empty)).is_err());
    }

    fn dynamic(v: serde_json::Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_full_kustomization_reads_and_an_odd_one_is_refused() {
        let o = dynamic(json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"namespace": "flux-system", "name": "apps", "resourceVersion": "7"},
            "spec": {
                "interval": "10m", "path": "./overlays/prod", "prune": true,
                "sourceRef": {"kind": "GitRepository", "name": "gitops"},
                "targetNamespace": "prod", "namePrefix": "p-", "nameSuffix": "-s",
                "commonMetadata": {"labels": {"team": "a"}},
                "patches": [{"patch": "- op: remove\n  path: /x", "target": {"kind": "Deployment", "labelSelector": "app=web"}}],
                "images": [{"name": "web", "newTag": "1.2"}],
                "components": ["../components/x"],
                "postBuild": {"substitute": {"ENV": "prod"},
                              "substituteFrom": [{"kind": "ConfigMap", "name": "vars"},
                                                 {"kind": "Secret", "name": "secret-vars", "optional": true}]},
                "somethingNew": {"a": 1}
            },
            "status": {"lastAttemptedRevision": format!("main@sha1:{HEX}"), "conditions": []}
        }));
        let (meta, k) = from_dynamic::<Kustomization>(&o).unwrap();
        assert_eq!(meta.resource_version, "7");
        assert_eq!(
            k.git_repository(&meta.namespace),
            Ok(("flux-system", "gitops"))
        );
        assert_eq!(k.overlay(), "./overlays/prod");
        assert_eq!(k.spec.images[0].new_tag.as_deref(), Some("1.2"));
        let pb = k.spec.post_build.as_ref().unwrap();
        assert!(pb.substitute_from[1].optional && !pb.substitute_from[0].optional);
        assert_eq!(
            k.spec.patches[0]
                .target
                .as_ref()
                .unwrap()
                .label_selector
                .as_deref(),
            Some("app=web")
        );
        assert_eq!(k.status.last_applied_revision, None);

        // Nothing but metadata: still a Kustomization, with defaults.
        let bare = dynamic(json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization", "metadata": {"namespace": "a", "name": "b"}}));
        let (_, k) = from_dynamic::<Kustomization>(&bare).unwrap();
        assert_eq!(k.overlay(), ".");
        assert!(
            k.git_repository("a")
                .unwrap_err()
                .contains("not a GitRepository")
        );
        // A wrong type names the field.
        let odd = dynamic(json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization", "metadata": {"namespace": "a", "name": "b"},
            "spec": {"path": 7}}));
        let e = from_dynamic::<Kustomization>(&odd).unwrap_err();
        assert!(e.starts_with("a/b: invalid type"), "{e}");
    }

    #[test]
    fn what_a_git_repository_follows() {
        let repo = |r: serde_json::Value| GitRepository {
            spec: serde_json::from_value(json!({"url": "https://x/y.git", "ref": r})).unwrap(),
        };
        assert_eq!(
            repo(json!({"branch": "main"})).git_ref(),
            GitRef::Branch("main".into())
        );
        assert_eq!(
            repo(json!({"branch": "main", "tag": "v1"})).git_ref(),
            GitRef::Pinned("tag v1".into())
        );
        assert_eq!(
            repo(json!({"name": "refs/heads/dev", "branch": "main"})).git_ref(),
            GitRef::Branch("dev".into())
        );
        assert_eq!(
            repo(json!({"commit": "abc", "branch": "main"})).git_ref(),
            GitRef::Pinned("commit abc".into())
        );
        assert_eq!(repo(json!(null)).git_ref(), GitRef::Default);
        assert_eq!(repo(json!({})).url(), Some("https://x/y.git"));
    }
}
