//! A small, faithful slice of the Kubernetes API server over plain HTTP, for
//! tests that drive `kube::Client` (lists, watches, reflectors, leases).
//!
//! One process-local store with a single resource-version counter, like
//! etcd's revision: every write (through the API or through the test
//! controls) takes the next version, and every watch of that resource sees
//! it as an event.
//!
//! What it serves, for each registered [`Resource`] (namespaced or cluster
//! scoped, core `v1` or a group):
//! - discovery: `/api`, `/api/v1`, `/apis`, `/apis/<group>/<version>`
//!   (legacy, non-aggregated documents), and `/version`;
//! - list: items sorted by namespace and name, `metadata.resourceVersion`
//!   the current version, `limit` with an opaque `continue` token (an
//!   expired token, older than [`KubeApi::compact`], is `410 Expired`);
//!   `resourceVersion`/`resourceVersionMatch` are accepted and the list is
//!   always served at the latest version; `labelSelector` (`k=v`, `k==v`,
//!   `k!=v`, `k`, `!k`, comma-joined) and `fieldSelector`
//!   (`metadata.name=`, `metadata.namespace=`);
//! - watch (`watch=1` or `watch=true`): a chunked stream of
//!   newline-delimited `ADDED`/`MODIFIED`/`DELETED` events after the given
//!   `resourceVersion` (none or `0`: every current object as `ADDED`
//!   first); `BOOKMARK` events when `allowWatchBookmarks=true`, every
//!   [`KubeApi::set_bookmark_interval`] and on demand
//!   ([`KubeApi::bookmark`]); an `ERROR` event carrying a `410 Expired`
//!   Status when the version is older than the compaction point, then the
//!   end of the stream; `timeoutSeconds` ends the stream;
//! - metadata-only lists and gets (`Accept: …;as=PartialObjectMetadataList`
//!   or `as=PartialObjectMetadata`, as `Api::list_metadata` sends);
//! - get, create (`POST`, `409 AlreadyExists`; `generateName`), update
//!   (`PUT`, `409 Conflict` when `metadata.resourceVersion` is given and is
//!   not the stored one), patch (`application/merge-patch+json`, and
//!   `application/strategic-merge-patch+json` applied as a merge patch; a
//!   `metadata.resourceVersion` in the patch is a precondition, `409` on
//!   mismatch), delete (answers with the object; its `DELETED` event
//!   carries the deletion's version).
//!
//! Test controls, from the test process while the server runs: [`set`],
//! [`delete`], [`get`] objects (watchers see the events), [`compact`],
//! [`expire_watches`] (410 on every open watch), [`pause_watches`],
//! [`close_watches`], [`bookmark`], [`go_away`]/[`come_back`] (every open
//! connection is dropped and new ones are accepted and closed at once, so
//! clients see resets), counters of requests by verb ([`requests`]) and the
//! number of open watches ([`open_watches`]).
//!
//! What it does not reproduce: server-side apply (`application/apply-patch+yaml`)
//! and JSON patch (`415`); subresources (`/status`, `/scale`: `404`), so a
//! write replaces status too; admission, defaulting, validation, schemas and
//! `metadata.generation`/`managedFields`; finalizers and graceful deletion
//! (a delete is immediate); `deletecollection`; set-based label selectors
//! (`in`, `notin`) and other field selectors (`400`); a watch does not send
//! `DELETED` when an object stops matching its selector; continued list
//! pages read the current objects, not the first page's snapshot;
//! `resourceVersionMatch=Exact` and list-from-cache semantics; streaming
//! lists (`sendInitialEvents`: `400`); aggregated discovery, OpenAPI,
//! protobuf and Table output (JSON only); authentication, authorization,
//! impersonation and TLS (plain HTTP, any token accepted); HTTP/2
//! (HTTP/1.1 only); API priority and fairness (`429`).
//!
//! [`set`]: KubeApi::set
//! [`delete`]: KubeApi::delete
//! [`get`]: KubeApi::get
//! [`compact`]: KubeApi::compact
//! [`expire_watches`]: KubeApi::expire_watches
//! [`pause_watches`]: KubeApi::pause_watches
//! [`close_watches`]: KubeApi::close_watches
//! [`bookmark`]: KubeApi::bookmark
//! [`go_away`]: KubeApi::go_away
//! [`come_back`]: KubeApi::come_back
//! [`requests`]: KubeApi::requests
//! [`open_watches`]: KubeApi::open_watches
#![allow(dead_code)]

use axum::body::{Body, Bytes};
use axum::http::{Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A kind the server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Empty for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
}

impl Resource {
    pub fn new(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        Resource {
            group: group.to_owned(),
            version: version.to_owned(),
            kind: kind.to_owned(),
            plural: plural.to_owned(),
            namespaced,
        }
    }

    pub fn config_map() -> Self {
        Self::new("", "v1", "ConfigMap", "configmaps", true)
    }
    pub fn secret() -> Self {
        Self::new("", "v1", "Secret", "secrets", true)
    }
    pub fn namespace() -> Self {
        Self::new("", "v1", "Namespace", "namespaces", false)
    }
    pub fn lease() -> Self {
        Self::new("coordination.k8s.io", "v1", "Lease", "leases", true)
    }
    pub fn flux_kustomization() -> Self {
        Self::new(
            "kustomize.toolkit.fluxcd.io",
            "v1",
            "Kustomization",
            "kustomizations",
            true,
        )
    }
    pub fn flux_git_repository() -> Self {
        Self::new(
            "source.toolkit.fluxcd.io",
            "v1",
            "GitRepository",
            "gitrepositories",
            true,
        )
    }
    pub fn argo_application() -> Self {
        Self::new(
            "argoproj.io",
            "v1alpha1",
            "Application",
            "applications",
            true,
        )
    }
    pub fn cluster_role() -> Self {
        Self::new(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
        )
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn singular(&self) -> String {
        self.kind.to_ascii_lowercase()
    }

    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// One stored change, kept until [`KubeApi::compact`].
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    resource: usize,
    namespace: String,
    kind: &'static str,
    object: Value,
}

/// Identity of a stored object: (resource index, namespace, name).
type Key = (usize, String, String);

#[derive(Default)]
struct Store {
    rv: u64,
    /// Watches from a version below this get 410.
    compacted: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    uid: u64,
}

struct Inner {
    resources: Vec<Resource>,
    store: Mutex<Store>,
    /// The latest version, for watchers to wake on.
    rv_tx: watch::Sender<u64>,
    /// Bumped by close_watches.
    close_tx: watch::Sender<u64>,
    /// Bumped by bookmark.
    bookmark_tx: watch::Sender<u64>,
    /// Bumped by expire_watches.
    expire_tx: watch::Sender<u64>,
    /// While true, open watches deliver nothing.
    pause_tx: watch::Sender<bool>,
    /// Bumped by go_away: every open connection is dropped.
    kill_tx: watch::Sender<u64>,
    bookmark_interval: Mutex<Option<Duration>>,
    gone_until: Mutex<Option<Instant>>,
    counts: Mutex<BTreeMap<String, u64>>,
    open_watches: AtomicUsize,
    connections: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running fake API server. Dropping it stops it.
pub struct KubeApi {
    pub url: String,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.task.abort();
        // Ends the open connections and watches too.
        self.inner.kill_tx.send_modify(|g| *g += 1);
    }
}

impl KubeApi {
    /// Starts a server on a loopback port that serves `resources`.
    pub async fn start(resources: &[Resource]) -> KubeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let inner = Arc::new(Inner {
            resources: resources.to_vec(),
            store: Mutex::new(Store {
                // Any start will do; not 0, which means "any" to a client.
                rv: 100,
                ..Store::default()
            }),
            rv_tx: watch::channel(100).0,
            close_tx: watch::channel(0).0,
            bookmark_tx: watch::channel(0).0,
            expire_tx: watch::channel(0).0,
            pause_tx: watch::channel(false).0,
            kill_tx: watch::channel(0).0,
            bookmark_interval: Mutex::new(Some(Duration::from_secs(1))),
            gone_until: Mutex::new(None),
            counts: Mutex::new(BTreeMap::new()),
            open_watches: AtomicUsize::new(0),
            connections: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&inner)));
        KubeApi { url, inner, task }
    }

    /// A kube client for this server (no credentials).
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().expect("server URL"));
        kube::Client::try_from(config).expect("a kube client")
    }

    /// A kubeconfig with one context, `fake`, pointing here.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: fake\n  user:\n    token: fake-token\ncontexts:\n- name: fake\n  \
             context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n",
            self.url
        )
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        lock(&self.inner.store).rv
    }

    /// Creates or replaces an object (its `apiVersion` and `kind` say which
    /// resource; `metadata.resourceVersion` is ignored). Watchers see
    /// `ADDED` or `MODIFIED`. Returns the stored object.
    pub fn set(&self, object: Value) -> Value {
        let resource = self
            .inner
            .resource_of(&object)
            .unwrap_or_else(|| panic!("not a registered resource: {object}"));
        let meta = &object["metadata"];
        let namespace = meta["namespace"].as_str().unwrap_or("").to_owned();
        let name = meta["name"].as_str().expect("metadata.name").to_owned();
        assert_eq!(
            self.inner.resources[resource].namespaced,
            !namespace.is_empty(),
            "namespace of {name} does not fit the resource's scope"
        );
        let mut store = lock(&self.inner.store);
        let stored = self
            .inner
            .write(&mut store, (resource, namespace, name), object);
        drop(store);
        self.inner.published();
        stored
    }

    /// Deletes an object; false when there was none.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let resource = self
            .inner
            .resources
            .iter()
            .position(|r| r.api_version() == api_version && r.kind == kind)
            .expect("a registered resource");
        let mut store = lock(&self.inner.store);
        let deleted = self
            .inner
            .remove(
                &mut store,
                (resource, namespace.to_owned(), name.to_owned()),
            )
            .is_some();
        drop(store);
        self.inner.published();
        deleted
    }

    /// The stored object.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let resource = self
            .inner
            .resources
            .iter()
            .position(|r| r.api_version() == api_version && r.kind == kind)?;
        lock(&self.inner.store)
            .objects
            .get(&(resource, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Forgets history up to now: a watch or a continue token from an
    /// older version gets `410 Gone`, as after an etcd compaction.
    pub fn compact(&self) {
        let mut store = lock(&self.inner.store);
        store.compacted = store.rv;
        store.history.clear();
    }

    /// Ends every open watch stream normally (as the API server does at
    /// its request timeout); clients re-watch from their last version.
    pub fn close_watches(&self) {
        self.inner.close_tx.send_modify(|g| *g += 1);
    }

    /// Compacts at the current version and ends every open watch with an
    /// `ERROR` event carrying `410 Expired`, as the API server does to a
    /// watcher that fell behind its watch cache: clients relist.
    pub fn expire_watches(&self) {
        self.compact();
        self.inner.expire_tx.send_modify(|g| *g += 1);
    }

    /// Holds every watch's events (as a watch cache that fell behind)
    /// until [`KubeApi::resume_watches`]; with [`KubeApi::expire_watches`]
    /// the held events are never delivered.
    pub fn pause_watches(&self) {
        self.inner.pause_tx.send_replace(true);
    }

    pub fn resume_watches(&self) {
        self.inner.pause_tx.send_replace(false);
    }

    /// Sends a `BOOKMARK` now on every watch that allows bookmarks.
    pub fn bookmark(&self) {
        self.inner.bookmark_tx.send_modify(|g| *g += 1);
    }

    /// How often watches that allow bookmarks get one (None: only on
    /// demand). Default 1 s.
    pub fn set_bookmark_interval(&self, every: Option<Duration>) {
        *lock(&self.inner.bookmark_interval) = every;
    }

    /// Drops every open connection and, for `duration`, closes every new
    /// one as soon as it is accepted (clients see resets and
    /// "connection closed" errors). [`KubeApi::come_back`] ends it sooner.
    pub fn go_away(&self, duration: Duration) {
        *lock(&self.inner.gone_until) = Some(Instant::now() + duration);
        self.inner.kill_tx.send_modify(|g| *g += 1);
    }

    pub fn come_back(&self) {
        *lock(&self.inner.gone_until) = None;
    }

    pub fn is_gone(&self) -> bool {
        self.inner.gone()
    }

    /// Requests served so far with this verb: `list`, `watch`, `get`,
    /// `create`, `update`, `patch`, `delete`, `discovery`, and `refused`
    /// (connections closed while gone).
    pub fn requests(&self, verb: &str) -> u64 {
        lock(&self.inner.counts).get(verb).copied().unwrap_or(0)
    }

    /// Every counter.
    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        lock(&self.inner.counts).clone()
    }

    /// Watch streams open now.
    pub fn open_watches(&self) -> usize {
        self.inner.open_watches.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far (refused ones included).
    pub fn connections(&self) -> u64 {
        self.inner.connections.load(Ordering::SeqCst)
    }
}

/// Polls `cond` every 10 ms until it holds or `within` passes.
pub async fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Inner {
    fn gone(&self) -> bool {
        let mut until = lock(&self.gone_until);
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    fn count(&self, verb: &str) {
        *lock(&self.counts).entry(verb.to_owned()).or_default() += 1;
    }

    fn resource_of(&self, object: &Value) -> Option<usize> {
        let api_version = object["apiVersion"].as_str()?;
        let kind = object["kind"].as_str()?;
        self.resources
            .iter()
            .position(|r| r.api_version() == api_version && r.kind == kind)
    }

    fn published(&self) {
        let rv = lock(&self.store).rv;
        self.rv_tx.send_replace(rv);
    }

    /// Stores `object` at the next version, recording the change.
    fn write(&self, store: &mut Store, key: Key, mut object: Value) -> Value {
        store.rv += 1;
        let rv = store.rv;
        let r = &self.resources[key.0];
        let previous = store.objects.get(&key);
        let (uid, created) = match previous {
            Some(p) => (
                p["metadata"]["uid"].clone(),
                p["metadata"]["creationTimestamp"].clone(),
            ),
            None => {
                store.uid += 1;
                (
                    json!(format!("00000000-0000-4000-8000-{:012x}", store.uid)),
                    json!("2026-01-01T00:00:00Z"),
                )
            }
        };
        let kind = if previous.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        if !object.is_object() {
            object = json!({});
        }
        object["apiVersion"] = json!(r.api_version());
        object["kind"] = json!(r.kind);
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        let meta = &mut object["metadata"];
        meta["name"] = json!(key.2);
        if r.namespaced {
            meta["namespace"] = json!(key.1);
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        meta["resourceVersion"] = json!(rv.to_string());
        meta["uid"] = uid;
        meta["creationTimestamp"] = created;
        store.objects.insert(key.clone(), object.clone());
        store.history.push(Change {
            rv,
            resource: key.0,
            namespace: key.1,
            kind,
            object: object.clone(),
        });
        object
    }

    fn remove(&self, store: &mut Store, key: Key) -> Option<Value> {
        let mut object = store.objects.remove(&key)?;
        store.rv += 1;
        let rv = store.rv;
        // The DELETED event carries the version of the deletion.
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        store.history.push(Change {
            rv,
            resource: key.0,
            namespace: key.1,
            kind: "DELETED",
            object: object.clone(),
        });
        Some(object)
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, inner: Arc<Inner>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        inner.connections.fetch_add(1, Ordering::SeqCst);
        if inner.gone() {
            inner.count("refused");
            drop(stream);
            continue;
        }
        let inner = Arc::clone(&inner);
        tokio::spawn(async move {
            let mut kill = inner.kill_tx.subscribe();
            let service_inner = Arc::clone(&inner);
            let service = hyper::service::service_fn(move |req| {
                let inner = Arc::clone(&service_inner);
                async move { Ok::<_, Infallible>(handle(inner, req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            tokio::select! {
                _ = conn => {}
                // Dropping the connection closes the socket mid-request.
                _ = kill.changed() => {}
            }
        });
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason,
        "details": {}, "code": code.as_u16(),
    });
    json_response(code, &body)
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn params(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a request path names.
struct Target {
    resource: usize,
    /// The namespace in the path (empty: all namespaces, or cluster scope).
    namespace: String,
    name: Option<String>,
}

enum Parsed {
    Discovery(Value),
    Resource(Target),
    NotFound,
}

fn parse_path(inner: &Inner, path: &str) -> Parsed {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => {
            return Parsed::Discovery(json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake",
                "platform": "linux/amd64",
            }));
        }
        ["api"] => {
            return Parsed::Discovery(json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}],
            }));
        }
        ["apis"] => return Parsed::Discovery(group_list(inner)),
        ["api", "v1"] => return Parsed::Discovery(resource_list(inner, "", "v1")),
        ["apis", g, v] => {
            if inner
                .resources
                .iter()
                .any(|r| r.group == *g && r.version == *v)
            {
                return Parsed::Discovery(resource_list(inner, g, v));
            }
            return Parsed::NotFound;
        }
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Parsed::NotFound,
    };
    let find = |plural: &str| {
        inner
            .resources
            .iter()
            .position(|r| r.group == group && r.version == version && r.plural == plural)
    };
    let (resource, namespace, name) = match rest {
        ["namespaces", ns, plural] => (find(plural), *ns, None),
        ["namespaces", ns, plural, name] => (find(plural), *ns, Some(*name)),
        [plural] => (find(plural), "", None),
        [plural, name] => (find(plural), "", Some(*name)),
        _ => (None, "", None),
    };
    match resource {
        // A namespace in the path of a cluster-scoped resource is not found.
        Some(i) if !namespace.is_empty() && !inner.resources[i].namespaced => Parsed::NotFound,
        // A name without a namespace names nothing for a namespaced resource.
        Some(i) if namespace.is_empty() && name.is_some() && inner.resources[i].namespaced => {
            Parsed::NotFound
        }
        Some(i) => Parsed::Resource(Target {
            resource: i,
            namespace: namespace.to_owned(),
            name: name.map(str::to_owned),
        }),
        None => Parsed::NotFound,
    }
}

fn group_list(inner: &Inner) -> Value {
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in inner.resources.iter().filter(|r| !r.group.is_empty()) {
        let versions = groups.entry(&r.group).or_default();
        if !versions.contains(&r.version.as_str()) {
            versions.push(&r.version);
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, versions)| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            let preferred = vs[0].clone();
            json!({"name": g, "versions": vs, "preferredVersion": preferred})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(inner: &Inner, group: &str, version: &str) -> Value {
    let resources: Vec<Value> = inner
        .resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| {
            json!({
                "name": r.plural, "singularName": r.singular(), "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            })
        })
        .collect();
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

/// A parsed `labelSelector` and `fieldSelector`.
#[derive(Default, Clone)]
struct Selector {
    /// (key, Some(value) or None for existence, negated)
    labels: Vec<(String, Option<String>, bool)>,
    name: Option<String>,
    namespace: Option<String>,
}

impl Selector {
    fn parse(p: &HashMap<String, String>) -> Result<Selector, String> {
        let mut s = Selector::default();
        for term in p
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            if term.contains(" in ") || term.contains(" notin ") || term.contains('(') {
                return Err(format!("set-based selector {term:?} is not supported"));
            }
            if let Some((k, v)) = term.split_once("!=") {
                s.labels
                    .push((k.trim().into(), Some(v.trim().into()), true));
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                s.labels
                    .push((k.trim().into(), Some(v.trim().into()), false));
            } else if let Some(k) = term.strip_prefix('!') {
                s.labels.push((k.trim().into(), None, true));
            } else {
                s.labels.push((term.into(), None, false));
            }
        }
        for term in p
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or("")
            .split(',')
            .filter(|t| !t.is_empty())
        {
            match term.split_once('=') {
                Some(("metadata.name", v)) => s.name = Some(v.trim_start_matches('=').into()),
                Some(("metadata.namespace", v)) => {
                    s.namespace = Some(v.trim_start_matches('=').into())
                }
                _ => return Err(format!("field selector {term:?} is not supported")),
            }
        }
        Ok(s)
    }

    fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        if let Some(n) = &self.name
            && meta["name"].as_str() != Some(n)
        {
            return false;
        }
        if let Some(n) = &self.namespace
            && meta["namespace"].as_str().unwrap_or("") != n
        {
            return false;
        }
        self.labels.iter().all(|(k, v, negated)| {
            let found = meta["labels"][k].as_str();
            let hit = match v {
                Some(v) => found == Some(v.as_str()),
                None => found.is_some(),
            };
            hit != *negated
        })
    }
}

async fn handle(inner: Arc<Inner>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let p = params(req.uri().query().unwrap_or(""));
    let target = match parse_path(&inner, &path) {
        Parsed::Discovery(doc) => {
            inner.count("discovery");
            return json_response(StatusCode::OK, &doc);
        }
        Parsed::NotFound => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
        Parsed::Resource(t) => t,
    };
    let method = req.method().clone();
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let metadata_only = accept.contains("as=PartialObjectMetadata");
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = match axum::body::to_bytes(Body::new(req.into_body()), 3 << 20).await {
        Ok(b) => b,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
    };
    let watching = matches!(p.get("watch").map(String::as_str), Some("1" | "true"));
    match (&method, &target.name) {
        (&Method::GET, None) if watching => {
            inner.count("watch");
            watch_response(inner, target, &p)
        }
        (&Method::GET, None) => {
            inner.count("list");
            list(&inner, &target, &p, metadata_only)
        }
        (&Method::GET, Some(_)) => {
            inner.count("get");
            get(&inner, &target, metadata_only)
        }
        (&Method::POST, None) => {
            inner.count("create");
            create(&inner, &target, &body)
        }
        (&Method::PUT, Some(_)) => {
            inner.count("update");
            update(&inner, &target, &body)
        }
        (&Method::PATCH, Some(_)) => {
            inner.count("patch");
            patch(&inner, &target, &content_type, &body)
        }
        (&Method::DELETE, Some(_)) => {
            inner.count("delete");
            delete(&inner, &target)
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("{method} is not supported on {path}"),
        ),
    }
}

fn not_found(r: &Resource, name: &str) -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{} \"{name}\" not found", r.qualified()),
    )
}

fn key_of(t: &Target, name: &str) -> Key {
    (t.resource, t.namespace.clone(), name.to_owned())
}

/// An object as `PartialObjectMetadata` (`Accept: ...;as=PartialObjectMetadata`).
fn metadata_of(object: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
           "metadata": object["metadata"]})
}

fn get(inner: &Inner, t: &Target, metadata_only: bool) -> Response<Body> {
    let name = t.name.clone().unwrap_or_default();
    match lock(&inner.store).objects.get(&key_of(t, &name)) {
        Some(o) if metadata_only => json_response(StatusCode::OK, &metadata_of(o)),
        Some(o) => json_response(StatusCode::OK, o),
        None => not_found(&inner.resources[t.resource], &name),
    }
}

fn gone(message: &str) -> Response<Body> {
    status(StatusCode::GONE, "Expired", message)
}

fn list(
    inner: &Inner,
    t: &Target,
    p: &HashMap<String, String>,
    metadata_only: bool,
) -> Response<Body> {
    let selector = match Selector::parse(p) {
        Ok(s) => s,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let limit: usize = p
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let store = lock(&inner.store);
    // Token: "<list version>/<namespace>/<name>" of the last item served.
    let (list_rv, after) = match p.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let mut parts = token.splitn(3, '/');
            let rv = parts.next().and_then(|r| r.parse::<u64>().ok());
            let (Some(rv), Some(ns), Some(name)) = (rv, parts.next(), parts.next()) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "continue key is not valid",
                );
            };
            if rv < store.compacted {
                return gone(
                    "The provided continue parameter is too old to display a consistent list result. \
                     You can start a new list without the continue parameter.",
                );
            }
            (rv, Some((ns.to_owned(), name.to_owned())))
        }
        None => (store.rv, None),
    };
    let r = &inner.resources[t.resource];
    let mut items: Vec<Value> = Vec::new();
    let mut next = None;
    for ((res, ns, name), object) in store.objects.iter() {
        if *res != t.resource || (!t.namespace.is_empty() && *ns != t.namespace) {
            continue;
        }
        if let Some((a_ns, a_name)) = &after
            && (ns, name) <= (a_ns, a_name)
        {
            continue;
        }
        if !selector.matches(object) {
            continue;
        }
        if items.len() == limit {
            // There is more: the token resumes after the last item served.
            let last = items.last().map(|o| &o["metadata"]);
            if let Some(m) = last {
                next = Some(format!(
                    "{list_rv}/{}/{}",
                    m["namespace"].as_str().unwrap_or(""),
                    m["name"].as_str().unwrap_or("")
                ));
            }
            break;
        }
        items.push(if metadata_only {
            metadata_of(object)
        } else {
            object.clone()
        });
    }
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if let Some(n) = next {
        metadata["continue"] = json!(n);
    }
    let (kind, api_version) = if metadata_only {
        (
            "PartialObjectMetadataList".to_owned(),
            "meta.k8s.io/v1".to_owned(),
        )
    } else {
        (format!("{}List", r.kind), r.api_version())
    };
    json_response(
        StatusCode::OK,
        &json!({
            "kind": kind, "apiVersion": api_version,
            "metadata": metadata, "items": items,
        }),
    )
}

fn create(inner: &Inner, t: &Target, body: &Bytes) -> Response<Body> {
    let r = &inner.resources[t.resource];
    let mut object: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the body is not a JSON object",
            );
        }
    };
    let mut store = lock(&inner.store);
    let name = match object["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
    {
        Some(n) => n.to_owned(),
        None => match object["metadata"]["generateName"].as_str() {
            Some(prefix) => format!("{prefix}{:05x}", store.uid + 1),
            None => {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "metadata.name: Required value: name or generateName is required",
                );
            }
        },
    };
    if let Some(ns) = object["metadata"]["namespace"].as_str()
        && !ns.is_empty()
        && ns != t.namespace
    {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        );
    }
    let key = key_of(t, &name);
    if store.objects.contains_key(&key) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("{} \"{name}\" already exists", r.qualified()),
        );
    }
    if let Some(m) = object["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    let stored = inner.write(&mut store, key, object);
    drop(store);
    inner.published();
    json_response(StatusCode::CREATED, &stored)
}

fn conflict(r: &Resource, name: &str) -> Response<Body> {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            r.qualified()
        ),
    )
}

fn update(inner: &Inner, t: &Target, body: &Bytes) -> Response<Body> {
    let r = &inner.resources[t.resource];
    let name = t.name.clone().unwrap_or_default();
    let object: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the body is not a JSON object",
            );
        }
    };
    if object["metadata"]["name"].as_str() != Some(name.as_str()) {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the name of the object does not match the name on the URL",
        );
    }
    let mut store = lock(&inner.store);
    let key = key_of(t, &name);
    let Some(current) = store.objects.get(&key) else {
        return not_found(r, &name);
    };
    if let Some(want) = object["metadata"]["resourceVersion"].as_str()
        && !want.is_empty()
        && current["metadata"]["resourceVersion"].as_str() != Some(want)
    {
        return conflict(r, &name);
    }
    let stored = inner.write(&mut store, key, object);
    drop(store);
    inner.published();
    json_response(StatusCode::OK, &stored)
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn patch(inner: &Inner, t: &Target, content_type: &str, body: &Bytes) -> Response<Body> {
    let r = &inner.resources[t.resource];
    let name = t.name.clone().unwrap_or_default();
    let ct = content_type.split(';').next().unwrap_or("").trim();
    if ct != "application/merge-patch+json" && ct != "application/strategic-merge-patch+json" {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            &format!("the body of the request was in an unknown format: {ct}"),
        );
    }
    let patch: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the patch is not a JSON object",
            );
        }
    };
    let mut store = lock(&inner.store);
    let key = key_of(t, &name);
    let Some(current) = store.objects.get(&key) else {
        return not_found(r, &name);
    };
    if let Some(want) = patch["metadata"]["resourceVersion"].as_str()
        && current["metadata"]["resourceVersion"].as_str() != Some(want)
    {
        return conflict(r, &name);
    }
    let mut object = current.clone();
    merge_patch(&mut object, &patch);
    let stored = inner.write(&mut store, key, object);
    drop(store);
    inner.published();
    json_response(StatusCode::OK, &stored)
}

fn delete(inner: &Inner, t: &Target) -> Response<Body> {
    let name = t.name.clone().unwrap_or_default();
    let mut store = lock(&inner.store);
    let removed = inner.remove(&mut store, key_of(t, &name));
    drop(store);
    match removed {
        Some(o) => {
            inner.published();
            json_response(StatusCode::OK, &o)
        }
        None => not_found(&inner.resources[t.resource], &name),
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// Decrements the open-watch count when the watch task ends.
struct OpenWatch(Arc<Inner>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

fn watch_response(inner: Arc<Inner>, t: Target, p: &HashMap<String, String>) -> Response<Body> {
    if p.get("sendInitialEvents").is_some_and(|v| v == "true") {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "sendInitialEvents (streaming lists) is not supported by this server",
        );
    }
    let selector = match Selector::parse(p) {
        Ok(s) => s,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let from: Option<u64> = match p.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(v) => match v.parse() {
            Ok(v) => Some(v),
            Err(_) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid resource version {v:?}"),
                );
            }
        },
    };
    let bookmarks = p.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = p
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    inner.open_watches.fetch_add(1, Ordering::SeqCst);
    let guard = OpenWatch(Arc::clone(&inner));
    tokio::spawn(async move {
        let _guard = guard;
        run_watch(&inner, &t, selector, from, bookmarks, timeout, tx).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn run_watch(
    inner: &Arc<Inner>,
    t: &Target,
    selector: Selector,
    from: Option<u64>,
    bookmarks: bool,
    timeout: Option<Duration>,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) {
    let r = inner.resources[t.resource].clone();
    let mut rv_rx = inner.rv_tx.subscribe();
    let mut close_rx = inner.close_tx.subscribe();
    let mut bookmark_rx = inner.bookmark_tx.subscribe();
    let mut kill_rx = inner.kill_tx.subscribe();
    let mut expire_rx = inner.expire_tx.subscribe();
    let mut pause_rx = inner.pause_tx.subscribe();
    let relevant = |resource: usize, ns: &str, object: &Value| {
        resource == t.resource
            && (t.namespace.is_empty() || ns == t.namespace)
            && selector.matches(object)
    };
    // The first events: everything current (no version given), or the
    // history after the version, or 410 when it was compacted away.
    let start = {
        let store = lock(&inner.store);
        match from {
            None => Ok((
                store.rv,
                store
                    .objects
                    .iter()
                    .filter(|((res, ns, _), o)| relevant(*res, ns, o))
                    .map(|(_, o)| event_line("ADDED", o))
                    .collect::<Vec<_>>(),
            )),
            Some(v) if v < store.compacted => Err(expired_status(v)),
            Some(v) => Ok((v, Vec::new())),
        }
    };
    let (mut last, first) = match start {
        Ok(s) => s,
        Err(status) => {
            let _ = tx.send(event_line("ERROR", &status)).await;
            return;
        }
    };
    for line in first {
        if tx.send(line).await.is_err() {
            return;
        }
    }
    let deadline = timeout.map(|d| tokio::time::Instant::now() + d);
    let interval = *lock(&inner.bookmark_interval);
    let mut next_bookmark = interval.map(|i| tokio::time::Instant::now() + i);
    loop {
        let paused = *pause_rx.borrow_and_update();
        if !paused {
            rv_rx.borrow_and_update();
            // Everything after `last`, in version order; every change up to
            // the store's version is in the history while the lock is held.
            let (pending, upto, expired) = {
                let store = lock(&inner.store);
                let pending: Vec<(u64, Bytes)> = store
                    .history
                    .iter()
                    .filter(|c| c.rv > last && relevant(c.resource, &c.namespace, &c.object))
                    .map(|c| (c.rv, event_line(c.kind, &c.object)))
                    .collect();
                (pending, store.rv, last < store.compacted)
            };
            if expired {
                // Fell behind a compaction: what it missed is gone.
                let _ = tx.send(event_line("ERROR", &expired_status(last))).await;
                return;
            }
            for (_, line) in pending {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
            last = last.max(upto);
        }
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            changed = rv_rx.changed(), if !paused => if changed.is_err() { return },
            _ = pause_rx.changed() => {}
            _ = close_rx.changed() => return,
            _ = kill_rx.changed() => return,
            _ = expire_rx.changed() => {
                let _ = tx.send(event_line("ERROR", &expired_status(last))).await;
                return;
            }
            _ = tx.closed() => return,
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => return,
            _ = bookmark_rx.changed() => {
                if bookmarks && !send_bookmark(&tx, &r, last).await {
                    return;
                }
            }
            _ = tokio::time::sleep_until(next_bookmark.unwrap_or(far)), if next_bookmark.is_some() => {
                next_bookmark = interval.map(|i| tokio::time::Instant::now() + i);
                if bookmarks && !send_bookmark(&tx, &r, last).await {
                    return;
                }
            }
        }
    }
}

fn expired_status(rv: u64) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": format!("too old resource version: {rv}"),
        "reason": "Expired", "code": 410,
    })
}

async fn send_bookmark(tx: &tokio::sync::mpsc::Sender<Bytes>, r: &Resource, rv: u64) -> bool {
    let object = json!({
        "kind": r.kind, "apiVersion": r.api_version(),
        "metadata": {"resourceVersion": rv.to_string()},
    });
    tx.send(event_line("BOOKMARK", &object)).await.is_ok()
}
