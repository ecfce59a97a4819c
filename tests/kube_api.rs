//! The fake Kubernetes API server of `tests/kube_support`, checked with the
//! clients that use it: `kube::Client` lists, writes and `kube::runtime`
//! watchers.

mod kube_support;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube_support::{KubeApi, Resource, wait_until};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn cm(ns: &str, name: &str, v: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"namespace": ns, "name": name}, "data": {"v": v}})
}

#[tokio::test]
async fn list_pages_with_limit_and_continue() {
    let api = KubeApi::start(&[Resource::config_map(), Resource::cluster_role()]).await;
    for i in 0..7 {
        api.set(cm("a", &format!("cm-{i}"), "1"));
    }
    api.set(cm("b", "other", "1"));
    let client = api.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "a");
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut lp = ListParams::default().limit(3);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = cms.list(&lp).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= 3);
        names.extend(page.items.iter().map(|c| c.metadata.name.clone().unwrap()));
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names.len(), 7, "{names:?}");
    assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted: {names:?}");
    // All namespaces, and a label selector.
    let all: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        8
    );
    api.set(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"namespace": "b", "name": "labelled", "labels": {"app": "web"}}}));
    let sel = all
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(sel.items.len(), 1);
    // A token older than a compaction is 410.
    let first = cms.list(&ListParams::default().limit(2)).await.unwrap();
    api.set(cm("a", "cm-0", "2"));
    api.compact();
    let err = cms
        .list(
            &ListParams::default()
                .limit(2)
                .continue_token(first.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 410),
        "{err:?}"
    );
    // Cluster-scoped resources are served without a namespace.
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(client);
    api.set(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "viewer"}, "rules": []}),
    );
    assert_eq!(
        roles.get("viewer").await.unwrap().metadata.name.unwrap(),
        "viewer"
    );
    assert_eq!(api.requests("list"), 7);
}

#[tokio::test]
async fn writes_honour_resource_version_preconditions() {
    let api = KubeApi::start(&[Resource::lease(), Resource::config_map()]).await;
    let leases: Api<Lease> = Api::namespaced(api.client(), "stale-guard");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "source-gitops"},
        "spec": {"holderIdentity": "a"}
    }))
    .unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    let err = leases
        .create(&PostParams::default(), &lease)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err:?}"
    );

    let mut next = created.clone();
    next.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let replaced = leases
        .replace("source-gitops", &PostParams::default(), &next)
        .await
        .unwrap();
    assert_ne!(
        replaced.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    // The same stale version again: 409 Conflict.
    let err = leases
        .replace("source-gitops", &PostParams::default(), &next)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );

    // A merge patch with a version precondition.
    let patch =
        |rv: &str| json!({"metadata": {"resourceVersion": rv, "annotations": {"head": "abc"}}});
    let err = leases
        .patch(
            "source-gitops",
            &PatchParams::default(),
            &Patch::Merge(patch(&rv)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409),
        "{err:?}"
    );
    let current = replaced.metadata.resource_version.clone().unwrap();
    let patched = leases
        .patch(
            "source-gitops",
            &PatchParams::default(),
            &Patch::Merge(patch(&current)),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.annotations.unwrap()["head"], "abc");
    assert_eq!(patched.spec.unwrap().holder_identity.as_deref(), Some("b"));
    // Strategic merge is applied as a merge patch.
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "stale-guard");
    api.set(cm("stale-guard", "heads", "x"));
    let p = json!({"data": {"gitops": "abc"}});
    let got = cms
        .patch("heads", &PatchParams::default(), &Patch::Strategic(p))
        .await
        .unwrap();
    assert_eq!(
        got.data.unwrap(),
        BTreeMap::from([("gitops".into(), "abc".into()), ("v".into(), "x".into())])
    );
    cms.delete("heads", &Default::default()).await.unwrap();
    assert!(cms.get_opt("heads").await.unwrap().is_none());
    assert!(api.get("v1", "ConfigMap", "stale-guard", "heads").is_none());
    let counts = api.request_counts();
    for verb in ["create", "update", "patch", "delete", "get"] {
        assert!(
            counts.get(verb).copied().unwrap_or(0) > 0,
            "{verb}: {counts:?}"
        );
    }
}

/// What a watcher saw, as text: `ADDED a/x 1`, `DELETED a/x`, `INIT`...
fn record(log: &Arc<Mutex<Vec<String>>>, e: &watcher::Event<ConfigMap>) {
    let id = |c: &ConfigMap| {
        format!(
            "{}/{}",
            c.metadata.namespace.as_deref().unwrap_or(""),
            c.metadata.name.as_deref().unwrap_or("")
        )
    };
    let v = |c: &ConfigMap| {
        c.data
            .as_ref()
            .and_then(|d| d.get("v").cloned())
            .unwrap_or_default()
    };
    let line = match e {
        watcher::Event::Init => "INIT".to_owned(),
        watcher::Event::InitApply(c) => format!("INITAPPLY {} {}", id(c), v(c)),
        watcher::Event::InitDone => "INITDONE".to_owned(),
        watcher::Event::Apply(c) => format!("APPLY {} {}", id(c), v(c)),
        watcher::Event::Delete(c) => format!("DELETE {}", id(c)),
    };
    log.lock().unwrap().push(line);
}

fn spawn_watcher(api: &KubeApi, log: Arc<Mutex<Vec<String>>>) -> tokio::task::JoinHandle<()> {
    let cms: Api<ConfigMap> = Api::all(api.client());
    let stream = watcher(cms, watcher::Config::default()).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(e) = stream.next().await {
            if let Ok(e) = e {
                record(&log, &e);
            }
        }
    })
}

#[tokio::test]
async fn runtime_watcher_sees_changes_and_relists_after_410() {
    let api = KubeApi::start(&[Resource::config_map()]).await;
    api.set(cm("a", "x", "1"));
    let log = Arc::new(Mutex::new(Vec::new()));
    let task = spawn_watcher(&api, Arc::clone(&log));
    let within = Duration::from_secs(10);
    wait_until(within, "the watch opens", || api.open_watches() == 1).await;
    assert_eq!(
        *log.lock().unwrap(),
        ["INIT", "INITAPPLY a/x 1", "INITDONE"]
    );
    api.set(cm("a", "y", "1"));
    api.set(cm("a", "x", "2"));
    api.delete("v1", "ConfigMap", "a", "y");
    let has = |want: &str| {
        let log = Arc::clone(&log);
        let want = want.to_owned();
        move || log.lock().unwrap().contains(&want)
    };
    wait_until(within, "DELETE a/y", has("DELETE a/y")).await;
    assert_eq!(
        log.lock().unwrap()[3..],
        ["APPLY a/y 1", "APPLY a/x 2", "DELETE a/y"]
    );

    // A closed watch resumes from its version: no relist, no lost change.
    let lists = api.requests("list");
    api.close_watches();
    wait_until(within, "a second watch", || api.requests("watch") == 2).await;
    wait_until(within, "the watch reopens", || api.open_watches() == 1).await;
    api.set(cm("a", "z", "1"));
    wait_until(within, "APPLY a/z", has("APPLY a/z 1")).await;
    assert_eq!(api.requests("list"), lists, "resumed without a relist");

    // A compaction while the watcher is cut off: the resumed watch gets
    // 410, the watcher relists and sees the current state.
    api.go_away(Duration::from_secs(60));
    wait_until(within, "a refused re-watch", || api.requests("refused") > 0).await;
    api.set(cm("a", "x", "3"));
    api.compact();
    api.come_back();
    wait_until(within, "a relist", || api.requests("list") == lists + 1).await;
    wait_until(within, "INITAPPLY a/x 3", has("INITAPPLY a/x 3")).await;
    wait_until(within, "the watch reopens", || api.open_watches() == 1).await;
    task.abort();
}

#[tokio::test]
async fn bookmarks_on_demand_and_periodic() {
    let api = KubeApi::start(&[Resource::config_map()]).await;
    api.set_bookmark_interval(None);
    api.set(cm("a", "x", "1"));
    let client = api.client();
    let cms: Api<ConfigMap> = Api::all(client);
    let rv = api.resource_version().to_string();
    let wp = kube::api::WatchParams::default().timeout(5);
    let mut stream = Box::pin(cms.watch(&wp, &rv).await.unwrap());
    api.bookmark();
    let e = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match e {
        kube::api::WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, rv),
        other => panic!("{other:?}"),
    }
    api.set(cm("a", "x", "2"));
    let e = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(e, kube::api::WatchEvent::Modified(_)), "{e:?}");
    drop(stream);

    // Periodic, at the current version.
    api.set_bookmark_interval(Some(Duration::from_millis(50)));
    let rv = api.resource_version().to_string();
    let stream = cms.watch(&wp, &rv).await.unwrap();
    let mut stream = std::pin::pin!(stream);
    let e = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(e, kube::api::WatchEvent::Bookmark(ref b) if b.metadata.resource_version == rv),
        "{e:?}"
    );

    // A version older than the compaction point: an ERROR event with 410.
    api.set(cm("a", "x", "3"));
    api.compact();
    let stream = cms.watch(&wp, "101").await.unwrap();
    let events: Vec<_> = stream.collect().await;
    assert_eq!(events.len(), 1, "{events:?}");
    match &events[0] {
        Ok(kube::api::WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("{other:?}"),
    }
    // timeoutSeconds ends the stream.
    let wp1 = kube::api::WatchParams::default().timeout(1);
    let stream = cms
        .watch(&wp1, &api.resource_version().to_string())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn go_away_resets_connections_until_it_comes_back() {
    let api = KubeApi::start(&[Resource::config_map()]).await;
    api.set(cm("a", "x", "1"));
    let cms: Api<ConfigMap> = Api::all(api.client());
    assert_eq!(
        cms.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    api.go_away(Duration::from_secs(60));
    let err = cms.list(&ListParams::default()).await.unwrap_err();
    assert!(
        !matches!(err, kube::Error::Api(_)),
        "a transport error: {err:?}"
    );
    assert!(api.requests("refused") >= 1);
    api.come_back();
    assert_eq!(
        cms.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    // It comes back by itself after the duration.
    api.go_away(Duration::from_millis(200));
    wait_until(Duration::from_secs(10), "back", || !api.is_gone()).await;
    assert_eq!(
        cms.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
}

/// What `stale-guard scan` asks: discovery, then metadata-only lists.
#[tokio::test]
async fn discovery_and_metadata_only_lists() {
    let api = KubeApi::start(&[
        Resource::config_map(),
        Resource::flux_kustomization(),
        Resource::cluster_role(),
    ])
    .await;
    let client = api.client();
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .unwrap();
    let (ar, caps) = discovery
        .get("kustomize.toolkit.fluxcd.io")
        .unwrap()
        .recommended_kind("Kustomization")
        .unwrap();
    assert_eq!(
        (ar.plural.as_str(), ar.version.as_str()),
        ("kustomizations", "v1")
    );
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    let (_, caps) = discovery
        .get("rbac.authorization.k8s.io")
        .unwrap()
        .recommended_kind("ClusterRole")
        .unwrap();
    assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
    assert!(
        discovery
            .get("")
            .unwrap()
            .recommended_kind("ConfigMap")
            .is_some()
    );

    api.set(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"namespace": "a", "name": "x", "annotations": {"k": "v"}},
        "data": {"big": "not in a metadata list"}}));
    let cms: Api<ConfigMap> = Api::namespaced(client, "a");
    let list = cms.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(
        list.items[0].metadata.annotations.as_ref().unwrap()["k"],
        "v"
    );
    let one = cms.get_metadata("x").await.unwrap();
    assert_eq!(one.metadata.name.as_deref(), Some("x"));
    assert_eq!(one.types.unwrap().kind, "PartialObjectMetadata");
}
