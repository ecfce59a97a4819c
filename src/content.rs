//! Content verification (contract section 8): an admitted object compared
//! with the object of the same identity in the rendering of head.
//!
//! Everything here is pure: no I/O, so the webhook (`server`), the CI check
//! (`verify --content`) and the fuzz targets judge with the same code.

use serde_json::Value;

/// Who an object is: API group (from `apiVersion`), kind, namespace, name.
/// A rendered namespaced object without a namespace has `namespace: None`
/// and matches the request's namespace (see [`Identity::lookup_keys`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// `""` for the core group (`apiVersion: v1`).
    pub group: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl Identity {
    /// The identity of a rendered or admitted object, `None` when it lacks
    /// `apiVersion`, `kind` or `metadata.name` (strings, non-empty).
    pub fn of(object: &Value) -> Option<Identity> {
        let api_version = object.get("apiVersion")?.as_str()?;
        let kind = object.get("kind")?.as_str()?;
        let metadata = object.get("metadata")?;
        let name = metadata.get("name")?.as_str()?;
        if api_version.is_empty() || kind.is_empty() || name.is_empty() {
            return None;
        }
        let namespace = metadata
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|ns| !ns.is_empty())
            .map(str::to_owned);
        Some(Identity {
            group: group_of(api_version).to_owned(),
            kind: kind.to_owned(),
            namespace,
            name: name.to_owned(),
        })
    }

    /// The keys under which a rendering may hold the object a request
    /// names, in the order to try: the exact namespace first, then the
    /// rendered object without one (it takes the request's namespace).
    pub fn lookup_keys(&self) -> impl Iterator<Item = Identity> + '_ {
        let bare = self.namespace.as_ref().map(|_| Identity {
            namespace: None,
            ..self.clone()
        });
        std::iter::once(self.clone()).chain(bare)
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}", self.kind)?;
        } else {
            write!(f, "{}.{}", self.kind, self.group)?;
        }
        match &self.namespace {
            Some(ns) => write!(f, " {ns}/{}", self.name),
            None => write!(f, " {}", self.name),
        }
    }
}

/// The group part of an `apiVersion` (`apps/v1` -> `apps`, `v1` -> ``).
pub fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// The first field where the object differs from the rendering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub path: String,
    pub found: Option<String>,
    pub rendered: String,
    pub note: Option<String>,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.found {
            Some(found) => write!(
                f,
                "{}: found {found}, head renders {}",
                self.path, self.rendered
            ),
            None => write!(f, "{}: missing, head renders {}", self.path, self.rendered),
        }
    }
}

/// Placeholder until the comparison lands: equality.
pub fn compare(rendered: &Value, object: &Value) -> Result<(), Difference> {
    if rendered == object {
        Ok(())
    } else {
        Err(Difference {
            path: String::new(),
            found: None,
            rendered: String::new(),
            note: None,
        })
    }
}

pub fn matches(rendered: &Value, object: &Value) -> bool {
    compare(rendered, object).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identity_takes_the_group_and_an_optional_namespace() {
        let id = Identity::of(&json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "web", "namespace": "prod"}
        }))
        .unwrap();
        assert_eq!(id.group, "networking.k8s.io");
        assert_eq!(id.to_string(), "Ingress.networking.k8s.io prod/web");
        let keys: Vec<_> = id.lookup_keys().collect();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].namespace, None);
        let core = Identity::of(&json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c"}}))
        .unwrap();
        assert_eq!((core.group.as_str(), core.namespace), ("", None));
        assert!(Identity::of(&json!({"apiVersion": "v1", "kind": "ConfigMap"})).is_none());
    }
}
