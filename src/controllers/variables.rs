//! Flux's `postBuild.substituteFrom` (contract section 9): the ConfigMaps
//! and Secrets a Kustomization takes substitution variables from, read
//! through the Kubernetes API and kept for a short time, so that a review
//! makes no API call of its own and a changed value is seen soon.
//!
//! Values are never logged nor echoed (Secrets): messages name the object
//! only.

use crate::flux::SubstituteReference;
use crate::render::varsub;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OnceCell;

/// How long a read object's variables (or its absence, or the error
/// reading it) are used before it is read again.
pub const TTL: Duration = Duration::from_secs(30);
/// The bytes of names and values kept, all objects together.
const CACHE_BYTES: u64 = 16 << 20;
/// One read's bound, also on the background path (the review's deadline
/// bounds it further).
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What a Kustomization's `spec.postBuild` gives the build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostBuildInputs {
    /// The Kustomization's namespace: where `substituteFrom` objects are.
    pub namespace: String,
    pub substitute: BTreeMap<String, String>,
    pub substitute_from: Vec<SubstituteReference>,
}

/// (namespace, kind, name).
type Key = (String, String, String);
/// An object's variables, `None` when it does not exist, or why it could
/// not be read.
type Read = Result<Option<Arc<BTreeMap<String, String>>>, String>;

/// Reads `substituteFrom` objects, cached by (namespace, kind, name) for
/// [`TTL`], one read at a time per object.
pub struct Variables {
    client: kube::Client,
    cache: moka::sync::Cache<Key, Read>,
    inflight: Mutex<HashMap<Key, Arc<OnceCell<Read>>>>,
}

impl Variables {
    pub fn new(client: kube::Client) -> Variables {
        Variables::with_ttl(client, TTL)
    }

    pub fn with_ttl(client: kube::Client, ttl: Duration) -> Variables {
        let cache = moka::sync::Cache::builder()
            .time_to_live(ttl)
            .max_capacity(CACHE_BYTES)
            .weigher(|k: &Key, v: &Read| {
                let value: usize = match v {
                    Ok(Some(vars)) => vars.iter().map(|(k, v)| k.len() + v.len() + 16).sum(),
                    Ok(None) => 0,
                    Err(e) => e.len(),
                };
                u32::try_from(k.0.len() + k.1.len() + k.2.len() + value + 64).unwrap_or(u32::MAX)
            })
            .build();
        Variables {
            client,
            cache,
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// The variables `inputs` give, merged by Flux's precedence
    /// ([`varsub::merge_variables`]) and their names checked. A missing
    /// optional object is skipped; a missing or unreadable required one
    /// is an error naming it.
    pub async fn resolve(
        &self,
        inputs: &PostBuildInputs,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut from = Vec::new();
        for r in &inputs.substitute_from {
            let what = format!(
                "{} {}/{} (spec.postBuild.substituteFrom)",
                crate::echo::value(&r.kind),
                inputs.namespace,
                crate::echo::value(&r.name)
            );
            match self.read(&inputs.namespace, r).await {
                Ok(Some(vars)) => from.push(vars),
                Ok(None) if r.optional => {}
                Ok(None) => return Err(format!("{what} not found")),
                Err(e) => return Err(crate::echo::message(format!("{what}: {e}"))),
            }
        }
        let vars = varsub::merge_variables(from.iter().map(|v| &**v), &inputs.substitute);
        varsub::check_names(&vars)?;
        Ok(vars)
    }

    async fn read(&self, namespace: &str, r: &SubstituteReference) -> Read {
        let key = (namespace.to_owned(), r.kind.clone(), r.name.clone());
        if let Some(hit) = self.cache.get(&key) {
            return hit;
        }
        let cell = lock(&self.inflight)
            .entry(key.clone())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let read = cell
            .get_or_init(|| async {
                // Another read may have finished between the two looks.
                if let Some(hit) = self.cache.get(&key) {
                    return hit;
                }
                let read = match tokio::time::timeout(READ_TIMEOUT, self.fetch(&key)).await {
                    Ok(read) => read,
                    Err(_) => Err(format!("no answer within {}s", READ_TIMEOUT.as_secs())),
                };
                self.cache.insert(key.clone(), read.clone());
                read
            })
            .await
            .clone();
        let mut inflight = lock(&self.inflight);
        if inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&key);
        }
        read
    }

    async fn fetch(&self, (namespace, kind, name): &Key) -> Read {
        let fail = |e: kube::Error| Err(format!("cannot be read: {e}"));
        match kind.as_str() {
            "ConfigMap" => {
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
                match api.get_opt(name).await {
                    Ok(found) => Ok(found.map(|cm| Arc::new(cm.data.unwrap_or_default()))),
                    Err(e) => fail(e),
                }
            }
            "Secret" => {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
                match api.get_opt(name).await {
                    // `data` arrives base64-encoded and is decoded here;
                    // `stringData` is write-only and never read back.
                    Ok(found) => Ok(found.map(|s| {
                        Arc::new(
                            s.data
                                .unwrap_or_default()
                                .into_iter()
                                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                                .collect(),
                        )
                    })),
                    Err(e) => fail(e),
                }
            }
            _ => Err("is neither a ConfigMap nor a Secret".to_owned()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The variables `inputs` give: inline ones alone need no reader; with
/// `substituteFrom`, `reader` reads the objects (none: an error).
pub async fn post_build_variables(
    reader: Option<&Variables>,
    inputs: &PostBuildInputs,
) -> Result<BTreeMap<String, String>, String> {
    match reader {
        Some(reader) => reader.resolve(inputs).await,
        None if inputs.substitute_from.is_empty() => {
            let vars = varsub::merge_variables([], &inputs.substitute);
            varsub::check_names(&vars)?;
            Ok(vars)
        }
        None => {
            Err("spec.postBuild.substituteFrom cannot be read: no Kubernetes API client".to_owned())
        }
    }
}
