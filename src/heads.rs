//! Replicas that agree on the head (contract section 10): each successful
//! fetch is recorded as `{source, head}` in a `coordination.k8s.io/v1`
//! Lease per source, and every replica watches those Leases and fetches at
//! once when one names a head it does not have.
//!
//! A Lease rather than one ConfigMap: one small object per source, so
//! replicas recording different sources never conflict, RBAC can name each
//! object, and `holderIdentity` says which replica recorded the head; it is
//! the object kind Kubernetes itself uses for this kind of shared note.
//!
//! Writes use optimistic concurrency (`metadata.resourceVersion`): a 409
//! means another replica wrote first, and the record is read again and
//! judged again. A replica overwrites a record only when its own mirror
//! proves the record older: the recorded head is an ancestor of its head,
//! or, after a fetch that started after the record was seen, the recorded
//! head (known locally) and the branch have diverged (a force-push). A
//! record it cannot place (not in its mirror, or a descendant of what its
//! fetch found) is kept: a replica with an older head, or one whose remote
//! lags, never overwrites a newer record.
//!
//! Without API access (no `heads:`, or no client) each replica works alone,
//! as before; while the API is unreachable, the watch retries with backoff
//! and nothing is written.

use crate::kube_client::KubeConfig;
use crate::metrics::{HeadsLabels, Metrics};
use crate::mirror::Mirror;
use futures::StreamExt as _;
use gix::ObjectId;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Label on every Lease this writes (the watch selects on it).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "stale-guard");
const SOURCE_LABEL: &str = "stale-guard.io/source";
const HEAD: &str = "stale-guard.io/head";
const BRANCH: &str = "stale-guard.io/branch";
const URL: &str = "stale-guard.io/url";

/// How often a replica looks for a new head of its own (after a poll, a
/// push or an on-demand fetch): the only delay a recording adds.
const HEAD_CHECK: Duration = Duration::from_millis(50);
/// Pause after a failed write or fetch before judging again.
const RETRY: Duration = Duration::from_millis(250);

/// `heads:` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeadsConfig {
    /// Where the Leases live (the server's own namespace).
    pub namespace: String,
    /// This replica's name in `holderIdentity`; default `$POD_NAME`, else
    /// `$HOSTNAME` (a pod's name), else `stale-guard-<pid>`.
    #[serde(default)]
    pub identity: Option<String>,
}

impl HeadsConfig {
    fn identity(&self) -> String {
        self.identity
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()))
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| format!("stale-guard-{}", std::process::id()))
    }
}

/// The Lease that records `source`'s head.
pub fn lease_name(source: &str) -> String {
    format!("stale-guard-head-{source}")
}

/// What the watch knows of one source's Lease.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    /// The watch has not listed yet (or the API is unreachable).
    Unknown,
    Listed(Option<Box<Lease>>),
}

/// One source's recorder.
struct SourceHeads {
    name: String,
    mirror: Arc<Mirror>,
    leases: Api<Lease>,
    identity: String,
    url: String,
    branch: String,
    events: Family<HeadsLabels, Counter>,
}

/// Starts the watch and one recorder per source; returns at once. A client
/// that cannot be built is logged and the server works alone.
pub async fn spawn(
    config: &HeadsConfig,
    kube: Option<&KubeConfig>,
    sources: Vec<(String, Arc<Mirror>)>,
    metrics: &Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let client = match kube.cloned().unwrap_or_default().client().await {
        Ok(client) => client,
        Err(e) => {
            warn!(error = %e, "heads: no Kubernetes API; this replica works alone");
            return;
        }
    };
    let leases: Api<Lease> = Api::namespaced(client, &config.namespace);
    let identity = config.identity();
    let mut senders = HashMap::new();
    let mut tasks = Vec::new();
    for (name, mirror) in sources {
        let (tx, rx) = watch::channel(Seen::Unknown);
        senders.insert(lease_name(&name), tx);
        let spec = mirror.spec().clone();
        let heads = Arc::new(SourceHeads {
            url: crate::receiver::normalize_url(&spec.url).unwrap_or_default(),
            branch: spec.branch.clone(),
            name,
            mirror,
            leases: leases.clone(),
            identity: identity.clone(),
            events: metrics.heads.clone(),
        });
        tasks.push(tokio::spawn(heads.run(rx)));
    }
    let watch_task = tokio::spawn(watch_leases(leases, senders));
    tokio::spawn(async move {
        shutdown.await;
        watch_task.abort();
        for t in tasks {
            t.abort();
        }
    });
}

/// Feeds every source's channel from one watch of the labelled Leases.
async fn watch_leases(leases: Api<Lease>, senders: HashMap<String, watch::Sender<Seen>>) {
    let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    let stream = watcher(leases, watcher::Config::default().labels(&selector)).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut listing: Option<HashMap<String, Lease>> = None;
    let mut last_error = None;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                let message = e.to_string();
                if last_error.as_ref() != Some(&message) {
                    warn!(error = %crate::echo::Capped(&message), "heads: watching the Leases failed; retrying");
                    last_error = Some(message);
                }
                continue;
            }
        };
        last_error = None;
        let name_of = |l: &Lease| l.metadata.name.clone().unwrap_or_default();
        match event {
            watcher::Event::Init => listing = Some(HashMap::new()),
            watcher::Event::InitApply(lease) => {
                if let Some(l) = listing.as_mut() {
                    l.insert(name_of(&lease), lease);
                }
            }
            watcher::Event::InitDone => {
                let mut listed = listing.take().unwrap_or_default();
                for (name, tx) in &senders {
                    let lease = listed.remove(name).map(Box::new);
                    tx.send_if_modified(|seen| replace(seen, Seen::Listed(lease)));
                }
            }
            watcher::Event::Apply(lease) => {
                if let Some(tx) = senders.get(&name_of(&lease)) {
                    let seen = Seen::Listed(Some(Box::new(lease)));
                    tx.send_if_modified(|s| replace(s, seen));
                }
            }
            watcher::Event::Delete(lease) => {
                if let Some(tx) = senders.get(&name_of(&lease)) {
                    tx.send_if_modified(|s| replace(s, Seen::Listed(None)));
                }
            }
        }
    }
}

fn replace(slot: &mut Seen, new: Seen) -> bool {
    if *slot == new {
        false
    } else {
        *slot = new;
        true
    }
}

/// What a Lease records, when it is for this source's URL and branch.
fn recorded(lease: &Lease, url: &str, branch: &str) -> Option<ObjectId> {
    let a = lease.metadata.annotations.as_ref()?;
    if a.get(URL).map(String::as_str) != Some(url)
        || a.get(BRANCH).map(String::as_str) != Some(branch)
    {
        return None;
    }
    ObjectId::from_hex(a.get(HEAD)?.as_bytes()).ok()
}

/// The outcome of judging a record against this replica's mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judged {
    Same,
    /// Write this replica's head over the record (or create it).
    Write(ObjectId),
    /// The record is newer, or cannot be placed: keep it.
    Keep,
}

impl SourceHeads {
    fn count(&self, event: &'static str) {
        self.events
            .get_or_create(&HeadsLabels {
                source: self.name.clone(),
                event,
            })
            .inc();
    }

    async fn run(self: Arc<Self>, mut seen: watch::Receiver<Seen>) {
        let mut last: Option<(Option<ObjectId>, Seen)> = None;
        let mut failures: u32 = 0;
        loop {
            tokio::select! {
                changed = seen.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(HEAD_CHECK) => {}
            }
            let current = seen.borrow_and_update().clone();
            let Seen::Listed(lease) = &current else {
                continue;
            };
            let head = self.mirror.head().map(|h| h.commit);
            let state = (head, current.clone());
            if last.as_ref() == Some(&state) {
                continue;
            }
            if self.reconcile(lease.as_deref().cloned()).await {
                last = Some(state);
                if failures > 0 {
                    info!(source = %self.name, "heads: in step with the shared record again");
                }
                failures = 0;
            } else {
                // Not settled (the API or the remote failed): judged again
                // later, whatever changes meanwhile; one warning per outage.
                if failures == 0 {
                    warn!(source = %self.name, "heads: could not record or follow the shared head; retrying");
                }
                last = None;
                failures = failures.saturating_add(1);
                tokio::time::sleep(RETRY * failures.min(40)).await;
            }
        }
    }

    /// Judges the record, fetching first when only a fresh fetch can tell,
    /// and writes this replica's head when it is proven newer; on a 409,
    /// reads the Lease again and judges again (a few times). False when
    /// it could not settle (a failed write or fetch): retry later.
    async fn reconcile(&self, mut lease: Option<Lease>) -> bool {
        for _ in 0..4 {
            let record = lease
                .as_ref()
                .and_then(|l| recorded(l, &self.url, &self.branch));
            let head = match self.judge(record).await {
                Ok(Judged::Same) => return true,
                Ok(Judged::Keep) => {
                    self.count("kept");
                    return true;
                }
                Ok(Judged::Write(head)) => head,
                Err(()) => return false,
            };
            match self.write(lease.as_ref(), head).await {
                Ok(()) => {
                    self.count("recorded");
                    info!(source = %self.name, head = %head, "recorded the head for the other replicas");
                    return true;
                }
                Err(Some(conflict)) => {
                    self.count("conflict");
                    debug!(source = %self.name, "head record changed meanwhile (409); judging again");
                    lease = conflict;
                }
                Err(None) => return false,
            }
        }
        false
    }

    /// `Err`: the fetch that would tell failed.
    async fn judge(&self, record: Option<ObjectId>) -> Result<Judged, ()> {
        let Some(head) = self.mirror.head().map(|h| h.commit) else {
            return Ok(Judged::Same);
        };
        let Some(record) = record else {
            return Ok(Judged::Write(head));
        };
        if record == head {
            return Ok(Judged::Same);
        }
        if self.mirror.facts(record).is_ancestor_of_head {
            return Ok(Judged::Write(head));
        }
        // Behind, diverged, or not known here: a fetch that starts now
        // says where the branch is.
        self.count("followed");
        if let Err(e) = crate::receiver::fetch_started_now(&self.mirror).await {
            debug!(source = %self.name, error = %e, "heads: fetch for a recorded head failed");
            return Err(());
        }
        let Some(fetched) = self.mirror.head().map(|h| h.commit) else {
            return Ok(Judged::Keep);
        };
        let facts = self.mirror.facts(record);
        if facts.is_head {
            return Ok(Judged::Same);
        }
        if facts.is_ancestor_of_head {
            return Ok(Judged::Write(fetched));
        }
        if !facts.known {
            // Not on the branch the remote shows us, and not placeable:
            // the remote may lag; never overwrite what we cannot prove older.
            return Ok(Judged::Keep);
        }
        let repo = self.mirror.repository();
        let behind = tokio::task::spawn_blocking(move || is_ancestor(&repo, fetched, record))
            .await
            .unwrap_or(true);
        if behind {
            Ok(Judged::Keep)
        } else {
            // Diverged: a force-push, as this replica's own fetch shows.
            info!(source = %self.name, recorded = %record, head = %fetched, "the branch was rewritten (force-push)");
            Ok(Judged::Write(fetched))
        }
    }

    /// Creates or replaces the Lease (with the resourceVersion it was read
    /// at). `Err(Some(lease))`: a conflict, with the Lease as it is now;
    /// `Err(None)`: another failure (logged).
    async fn write(
        &self,
        current: Option<&Lease>,
        head: ObjectId,
    ) -> Result<(), Option<Option<Lease>>> {
        let name = lease_name(&self.name);
        let mut lease = current.cloned().unwrap_or_else(|| Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            spec: None,
        });
        let labels = lease.metadata.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned());
        labels.insert(SOURCE_LABEL.to_owned(), self.name.clone());
        let annotations = lease.metadata.annotations.get_or_insert_with(BTreeMap::new);
        annotations.insert(HEAD.to_owned(), head.to_string());
        annotations.insert(BRANCH.to_owned(), self.branch.clone());
        annotations.insert(URL.to_owned(), self.url.clone());
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        let pp = PostParams::default();
        let result = match current {
            Some(_) => self.leases.replace(&name, &pp, &lease).await.map(drop),
            None => self.leases.create(&pp, &lease).await.map(drop),
        };
        match result {
            Ok(()) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                match self.leases.get_opt(&name).await {
                    Ok(now) => Err(Some(now)),
                    Err(e) => {
                        debug!(source = %self.name, error = %crate::echo::Capped(&e.to_string()), "heads: reading the Lease after a conflict failed");
                        Err(None)
                    }
                }
            }
            Err(e) => {
                debug!(source = %self.name, error = %crate::echo::Capped(&e.to_string()), "heads: recording the head failed");
                Err(None)
            }
        }
    }
}

/// `a` is an ancestor of (or equal to) `b`; `true` when it cannot be told,
/// so that an unplaceable record is kept.
fn is_ancestor(repo: &gix::ThreadSafeRepository, a: ObjectId, b: ObjectId) -> bool {
    let repo = repo.to_thread_local();
    match repo.merge_base(a, b) {
        Ok(Some(base)) => base.detach() == a,
        Ok(None) => false,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_counts_only_for_its_url_and_branch() {
        let head = "0123456789abcdef0123456789abcdef01234567";
        let lease = |url: &str, branch: &str| Lease {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([
                    (HEAD.to_owned(), head.to_owned()),
                    (URL.to_owned(), url.to_owned()),
                    (BRANCH.to_owned(), branch.to_owned()),
                ])),
                ..ObjectMeta::default()
            },
            spec: None,
        };
        let url = "git.example.com/corp/gitops";
        assert_eq!(
            recorded(&lease(url, "main"), url, "main").map(|o| o.to_string()),
            Some(head.to_owned())
        );
        assert_eq!(recorded(&lease(url, "dev"), url, "main"), None);
        assert_eq!(recorded(&lease("elsewhere/x", "main"), url, "main"), None);
        assert_eq!(recorded(&Lease::default(), url, "main"), None);
    }

    #[test]
    fn the_config_file_takes_kube_and_heads() {
        let base = "tls: { certFile: /t/c, keyFile: /t/k }\nmirrorDir: /m\nsources: [{ name: s, url: \"https://h/r.git\" }]\nrules: [{ name: r, source: s, overlay: o }]\n";
        let parse = |extra: &str| crate::config::Config::parse(&format!("{base}{extra}\n"));
        let c = parse(
            "kube: { kubeconfig: /k, context: prod }\nheads: { namespace: stale-guard-system }",
        )
        .unwrap();
        let kube = c.kube.unwrap();
        assert_eq!(kube.context.as_deref(), Some("prod"));
        assert_eq!(c.heads.unwrap().namespace, "stale-guard-system");
        for (extra, field) in [
            ("heads: { namespace: Not_A_Name }", "heads.namespace"),
            ("heads: {}", "heads"),
            ("kube: { config: /k }", "kube"),
        ] {
            let e = parse(extra).unwrap_err();
            assert!(e.field.starts_with(field), "{extra}: {e}");
        }
        assert_eq!(lease_name("corp-gitops"), "stale-guard-head-corp-gitops");
    }
}
