//! The watch-fed controller caches (`stale_guard::controllers`) against the
//! fake API server of `tests/kube_support`, through the real kube client
//! and `kube::runtime` watcher.

mod kube_support;

use kube_support::{KubeApi, Resource, wait_until};
use serde_json::{Value, json};
use stale_guard::controllers::{CacheOptions, ControllerCaches, Watched};
use std::sync::Arc;
use std::time::Duration;

const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const WITHIN: Duration = Duration::from_secs(20);

fn kustomization(ns: &str, name: &str, attempted: &str) -> Value {
    json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"namespace": ns, "name": name, "generation": 3,
                     "finalizers": ["finalizers.fluxcd.io"],
                     "managedFields": [{"manager": "kustomize-controller", "operation": "Update",
                                        "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}}]},
        "spec": {"interval": "10m", "path": "./overlays/prod", "prune": true,
                 "sourceRef": {"kind": "GitRepository", "name": "gitops"},
                 "postBuild": {"substitute": {"CLUSTER": "east", "REGION": "eu-west-1"},
                               "substituteFrom": [{"kind": "ConfigMap", "name": "cluster-vars"}]}},
        "status": {"observedGeneration": 3,
                   "lastAttemptedRevision": format!("main@sha1:{attempted}"),
                   "lastAppliedRevision": format!("main@sha1:{A}"),
                   "conditions": [{"type": "Ready", "status": "True", "reason": "ReconciliationSucceeded",
                                   "message": format!("Applied revision: main@sha1:{attempted}"),
                                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    })
}

fn git_repository(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"namespace": ns, "name": name},
        "spec": {"url": "https://git.example.com/gitops.git", "ref": {"branch": "main"}}
    })
}

fn application(name: &str, revision: &str) -> Value {
    json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
        "metadata": {"namespace": "argocd", "name": name},
        "spec": {"source": {"repoURL": "https://git.example.com/gitops.git", "path": "overlays/prod",
                            "targetRevision": "main"},
                 "destination": {"namespace": "prod"}},
        "status": {"sync": {"revision": revision}}
    })
}

fn attempted(caches: &ControllerCaches, ns: &str, name: &str) -> Option<String> {
    caches
        .kustomization(ns, name)
        .and_then(|k| k.object.status.last_attempted_revision.clone())
}

async fn server() -> KubeApi {
    KubeApi::start(&[
        Resource::flux_kustomization(),
        Resource::flux_git_repository(),
        Resource::argo_application(),
    ])
    .await
}

fn options(unready_after: Duration) -> CacheOptions {
    CacheOptions {
        unready_after,
        // Pages of 2: the first lists take several requests.
        page_size: 2,
    }
}

fn start(api: &KubeApi, kinds: &[Watched], o: CacheOptions) -> (Arc<ControllerCaches>, Stop) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let caches = ControllerCaches::start_with(
        api.client(),
        kinds,
        async move {
            let _ = rx.await;
        },
        o,
    );
    (caches, Stop(Some(tx)))
}

/// Stops the caches' watches when dropped.
struct Stop(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for Stop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_fill_from_lists_and_follow_changes() {
    let api = server().await;
    for i in 0..5 {
        api.set(kustomization("flux-system", &format!("k{i}"), A));
    }
    api.set(git_repository("flux-system", "gitops"));
    api.set(application("web", A));
    // An object whose fields do not read is left out, the others are not.
    api.set(
        json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"namespace": "flux-system", "name": "odd"}, "spec": {"path": ["x"]}}),
    );
    // Not ready before the first list: the server refuses at first.
    api.go_away(Duration::from_secs(60));
    let kinds: Vec<Watched> = Watched::FLUX.into_iter().chain(Watched::ARGO).collect();
    let (caches, _stop) = start(&api, &kinds, options(Duration::from_secs(10)));
    wait_until(WITHIN, "a refused list", || api.requests("refused") >= 3).await;
    let why = caches.ready().unwrap_err();
    assert_eq!(why.len(), 3, "{why:?}");
    assert!(
        why.iter()
            .all(|w| w.contains("waiting for the first complete list")),
        "{why:?}"
    );
    assert!(caches.kustomization("flux-system", "k0").is_none());
    api.come_back();
    wait_until(WITHIN, "ready", || caches.ready().is_ok()).await;

    let k = caches.kustomization("flux-system", "k3").unwrap();
    assert_eq!(
        k.object.status.last_attempted_revision.as_deref(),
        Some(format!("main@sha1:{A}").as_str())
    );
    let stored = api
        .get(
            "kustomize.toolkit.fluxcd.io/v1",
            "Kustomization",
            "flux-system",
            "k3",
        )
        .unwrap();
    assert_eq!(
        k.meta.resource_version,
        stored["metadata"]["resourceVersion"].as_str().unwrap()
    );
    assert_eq!(
        k.object.spec.post_build.as_ref().unwrap().substitute["CLUSTER"],
        "east"
    );
    assert_eq!(
        caches
            .git_repository("flux-system", "gitops")
            .unwrap()
            .object
            .url(),
        Some("https://git.example.com/gitops.git")
    );
    assert_eq!(
        caches
            .application("argocd", "web")
            .unwrap()
            .object
            .revision()
            .0,
        Some(A)
    );
    assert!(caches.kustomization("flux-system", "odd").is_none());
    let status = caches.status();
    let ks = status.iter().find(|s| s.kind == "Kustomization").unwrap();
    assert_eq!((ks.objects, ks.skipped), (5, 1), "{ks:?}");
    let lists = api.requests("list");
    assert!(lists >= 5, "paged lists: {lists}");

    // MODIFIED and DELETED follow, without another list.
    api.set(kustomization("flux-system", "k1", B));
    api.delete("argoproj.io/v1alpha1", "Application", "argocd", "web");
    wait_until(WITHIN, "k1 at B", || {
        attempted(&caches, "flux-system", "k1") == Some(format!("main@sha1:{B}"))
    })
    .await;
    wait_until(WITHIN, "web deleted", || {
        caches.application("argocd", "web").is_none()
    })
    .await;
    assert_eq!(api.requests("list"), lists, "no relist for changes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_survive_closed_watches_and_410() {
    let api = server().await;
    api.set(kustomization("flux-system", "apps", A));
    api.set(kustomization("flux-system", "gone-later", A));
    let (caches, stop) = start(
        &api,
        &[Watched::Kustomizations],
        options(Duration::from_secs(10)),
    );
    wait_until(WITHIN, "ready", || caches.ready().is_ok()).await;
    wait_until(WITHIN, "watching", || api.open_watches() == 1).await;
    let lists = api.requests("list");

    // The API server ends watches at its request timeout: resumed from the
    // last version, nothing missed, no relist, no restart.
    api.close_watches();
    wait_until(WITHIN, "a second watch", || api.requests("watch") >= 2).await;
    api.set(kustomization("flux-system", "apps", B));
    wait_until(WITHIN, "apps at B", || {
        attempted(&caches, "flux-system", "apps") == Some(format!("main@sha1:{B}"))
    })
    .await;
    assert_eq!(api.requests("list"), lists);
    assert_eq!(caches.status()[0].restarts, 0);

    // The watch falls behind (its events held), misses a deletion and a
    // change, and gets 410: the watcher relists, and the relist replaces
    // the objects (the deleted one is gone).
    wait_until(WITHIN, "watching", || api.open_watches() == 1).await;
    api.pause_watches();
    api.delete(
        "kustomize.toolkit.fluxcd.io/v1",
        "Kustomization",
        "flux-system",
        "gone-later",
    );
    api.set(kustomization("flux-system", "apps", A));
    api.expire_watches();
    api.resume_watches();
    wait_until(WITHIN, "a relist", || api.requests("list") > lists).await;
    wait_until(WITHIN, "gone-later dropped", || {
        caches.kustomization("flux-system", "gone-later").is_none()
    })
    .await;
    wait_until(WITHIN, "apps at A", || {
        attempted(&caches, "flux-system", "apps") == Some(format!("main@sha1:{A}"))
    })
    .await;
    let s = &caches.status()[0];
    assert!(s.relists >= 1, "{s:?}");
    assert_eq!(s.restarts, 0, "{s:?}");
    assert!(caches.ready().is_ok());

    // Shutdown ends the watches.
    wait_until(WITHIN, "watching", || api.open_watches() == 1).await;
    drop(stop);
    wait_until(WITHIN, "no watch open", || api.open_watches() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_the_server_is_gone_and_recovers() {
    let api = server().await;
    api.set(kustomization("flux-system", "apps", A));
    let unready_after = Duration::from_millis(500);
    let (caches, _stop) = start(&api, &[Watched::Kustomizations], options(unready_after));
    wait_until(WITHIN, "ready", || caches.ready().is_ok()).await;
    wait_until(WITHIN, "watching", || api.open_watches() == 1).await;

    api.go_away(Duration::from_secs(60));
    let gone_at = std::time::Instant::now();
    // Broken at once (the watch connection was reset), unready only after
    // unready_after.
    wait_until(WITHIN, "broken", || {
        caches.status()[0].broken_since.is_some()
    })
    .await;
    let detected = gone_at.elapsed();
    assert!(caches.ready().is_ok() || gone_at.elapsed() >= unready_after);
    wait_until(WITHIN, "unready", || caches.ready().is_err()).await;
    let unready = gone_at.elapsed();
    assert!(unready >= unready_after, "{unready:?}");
    let why = caches.ready().unwrap_err();
    assert!(
        why[0].starts_with("Kustomization: watch broken since 20"),
        "{why:?}"
    );
    // What was read before is still served.
    assert!(caches.kustomization("flux-system", "apps").is_some());
    println!("broken detected after {detected:?}, unready after {unready:?}");

    api.set(kustomization("flux-system", "apps", B));
    api.come_back();
    let back_at = std::time::Instant::now();
    wait_until(WITHIN, "ready again", || caches.ready().is_ok()).await;
    wait_until(WITHIN, "apps at B", || {
        attempted(&caches, "flux-system", "apps") == Some(format!("main@sha1:{B}"))
    })
    .await;
    let s = &caches.status()[0];
    assert!(s.restarts >= 1, "{s:?}");
    assert!(s.last_error.is_some(), "{s:?}");
    println!(
        "ready again {:?} after the server came back ({} restarts)",
        back_at.elapsed(),
        s.restarts
    );
}

/// Flux writes lastAttemptedRevision just before it applies; the watch may
/// deliver it after the review arrives. wait_for answers as soon as it
/// does, and gives up at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_returns_when_the_awaited_event_arrives() {
    let api = server().await;
    api.set(kustomization("flux-system", "apps", A));
    let (caches, _stop) = start(
        &api,
        &[Watched::Kustomizations],
        options(Duration::from_secs(10)),
    );
    wait_until(WITHIN, "ready", || caches.ready().is_ok()).await;
    wait_until(WITHIN, "watching", || api.open_watches() == 1).await;

    let want = format!("main@sha1:{B}");
    let at_b = |c: &ControllerCaches| attempted(c, "flux-system", "apps").filter(|r| *r == want);
    // Not there: None at the deadline.
    let started = tokio::time::Instant::now();
    let none = caches
        .wait_for(started + Duration::from_millis(200), at_b)
        .await;
    assert_eq!(none, None);
    assert!(started.elapsed() >= Duration::from_millis(200));

    // The change lands while the review waits.
    let waiter = {
        let caches = Arc::clone(&caches);
        let want = want.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let got = caches
                .wait_for(started + Duration::from_secs(15), |c| {
                    attempted(c, "flux-system", "apps").filter(|r| *r == want)
                })
                .await;
            (got, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let set_at = tokio::time::Instant::now();
    api.set(kustomization("flux-system", "apps", B));
    let (got, waited) = waiter.await.unwrap();
    assert_eq!(got.as_deref(), Some(want.as_str()));
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    println!("wait_for answered {:?} after the change", set_at.elapsed());
    // Already there: at once.
    let now = tokio::time::Instant::now();
    assert!(caches.wait_for(now, at_b).await.is_some());
}

mod memory {
    //! The heap a cached Kustomization keeps, counted by an allocator
    //! that tracks this thread's live bytes.
    use super::*;
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Counting;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
    }

    fn add(n: isize) {
        // Ignored during thread teardown.
        let _ = LIVE.try_with(|l| l.set(l.get() + n));
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            add(layout.size() as isize);
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            add(-(layout.size() as isize));
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
            add(new as isize - layout.size() as isize);
            unsafe { System.realloc(ptr, layout, new) }
        }
    }

    #[global_allocator]
    static ALLOC: Counting = Counting;

    #[test]
    fn heap_per_thousand_kustomizations() {
        use kube::api::DynamicObject;
        use kube::runtime::watcher::Event;
        use stale_guard::controllers::Store;
        use stale_guard::flux::Kustomization;

        let before = LIVE.with(Cell::get);
        let mut store = Store::<Kustomization>::default();
        store.apply(Event::Init);
        // Each object is built and dropped inside the window: what stays
        // is what the store keeps.
        for i in 0..1000 {
            let mut k = kustomization(&format!("team-{}", i % 20), &format!("app-{i:04}"), A);
            k["metadata"]["resourceVersion"] = json!((100_000 + i).to_string());
            let o: DynamicObject = serde_json::from_value(k).unwrap();
            store.apply(Event::InitApply(o));
        }
        store.apply(Event::InitDone);
        let kept = LIVE.with(Cell::get) - before;
        assert_eq!(store.len(), 1000);
        println!("1000 Kustomizations keep {kept} bytes of heap");
        // A regression guard, about twice the measured figure.
        assert!(kept < 2_000_000, "{kept} bytes");
    }
    /// What reviewing every Kustomization once adds: each one's claim,
    /// kept until its objects change.
    #[test]
    fn heap_per_thousand_claims() {
        use kube::api::DynamicObject;
        use std::collections::BTreeMap;

        let mut objects: Vec<DynamicObject> = (0..1000)
            .map(|i| {
                let ns = format!("team-{}", i % 20);
                serde_json::from_value(kustomization(&ns, &format!("app-{i:04}"), A)).unwrap()
            })
            .collect();
        for t in 0..20 {
            objects.push(
                serde_json::from_value(git_repository(&format!("team-{t}"), "gitops")).unwrap(),
            );
        }
        let caches = ControllerCaches::from_objects(&objects);
        drop(objects);
        let labels: Vec<BTreeMap<String, String>> = (0..1000)
            .map(|i| {
                BTreeMap::from([
                    (
                        stale_guard::flux::NAME_LABEL.to_owned(),
                        format!("app-{i:04}"),
                    ),
                    (
                        stale_guard::flux::NAMESPACE_LABEL.to_owned(),
                        format!("team-{}", i % 20),
                    ),
                ])
            })
            .collect();
        let before = LIVE.with(Cell::get);
        for l in &labels {
            assert!(caches.flux_provenance(Some(l)).is_ok());
        }
        let kept = LIVE.with(Cell::get) - before;
        println!("1000 claims keep {kept} bytes of heap");
        // A regression guard, about twice the measured figure.
        assert!(kept < 1_100_000, "{kept} bytes");
    }
}

/// A kind the cluster does not serve (Argo CD not installed): never ready,
/// and readiness says which kind, since when and the API server's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_not_served_keeps_readiness_failing_with_the_reason() {
    let api = KubeApi::start(&[Resource::flux_kustomization()]).await;
    let kinds = [Watched::Kustomizations, Watched::Applications];
    let (caches, _stop) = start(&api, &kinds, options(Duration::from_secs(10)));
    wait_until(WITHIN, "Kustomizations listed", || {
        caches.status()[0].listed && caches.status()[1].restarts >= 1
    })
    .await;
    let why = caches.ready().unwrap_err();
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(
        why[0].starts_with("Application: waiting for the first complete list, failing since 20"),
        "{why:?}"
    );
    assert!(
        why[0].contains("404") || why[0].contains("NotFound"),
        "{why:?}"
    );
}
