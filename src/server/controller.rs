//! `provenance: flux|argo` on the review path (contract section 9): the
//! revision an object claims read from the controller object that applies
//! it, in the watch-fed caches (`controllers`; no API call per review),
//! and the rule resolved to that controller's source and path.

use super::{AppState, Rule, rule_policy};
use crate::admission::{self, Request};
use crate::config::RuleConfig;
use crate::controllers::{ControllerCaches, NoProvenance, Provenance};
use crate::policy::{self, Annotation, ClaimedBy, Decision, Reason, RequestFacts, RulePolicy};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Resolved rules kept per controller rule; beyond it a resolution is
/// used once and not kept (no rendering history for it).
const MAX_RESOLVED: usize = 1024;

/// A rule whose source and overlay come from the controller's object.
pub(super) struct ControllerRule {
    pub config: RuleConfig,
    /// For verdicts reached before the source is known.
    template: RulePolicy,
    /// The configured sources' URLs, normalised once (in order).
    source_urls: Vec<String>,
    /// source -> overlay -> digest of the controller's build when content
    /// is verified -> the rule resolved to them. Nested, so a review looks
    /// it up with borrowed keys.
    resolved: Mutex<Resolved>,
}

type Resolved = HashMap<String, HashMap<String, HashMap<Option<[u8; 32]>, Arc<Rule>>>>;

impl ControllerRule {
    pub fn new(config: &crate::config::Config, rule: &RuleConfig) -> ControllerRule {
        ControllerRule {
            config: rule.clone(),
            template: rule_policy(config, rule),
            source_urls: config
                .sources
                .iter()
                .map(|s| crate::controllers::sources::normalise_url(&s.url))
                .collect(),
            resolved: Mutex::new(HashMap::new()),
        }
    }
}

/// What a controller rule's review goes on with, or its verdict already.
pub(super) enum Claimed {
    Checked {
        rule: Arc<Rule>,
        facts: RequestFacts,
        /// Newly resolved, with content verification: start following
        /// its head.
        new_content_rule: bool,
    },
    Decided(Decision),
}

impl AppState {
    /// The controller object's claim for `req` under `cr`, resolved to a
    /// configured source. When the cached claim is not the branch head
    /// (or there is none yet), waits up to `kube.controllerWait`, within
    /// `deadline`, for the watch to deliver a newer one: Flux writes its
    /// revision before it applies, but the event can trail the review.
    pub(super) async fn controller_claim(
        &self,
        cr: &ControllerRule,
        req: &Request<'_>,
        deadline: tokio::time::Instant,
    ) -> Claimed {
        let unclaimed = |reason: Reason, detail: String| {
            let facts = admission::facts_without_claim(&self.config, req);
            Claimed::Decided(policy::without_claim(&cr.template, &facts, reason, detail))
        };
        let Some(caches) = &self.controllers else {
            return unclaimed(
                Reason::MissingRevision,
                "the controller objects are not being watched (no Kubernetes API client)"
                    .to_owned(),
            );
        };
        let lookup = self.lookup(cr, req);
        let mut claim = lookup(caches);
        let fresh = |claim: &Result<Arc<Provenance>, NoProvenance>| match claim {
            Ok(p) => self
                .resolve_source(cr, p)
                .ok()
                .and_then(|name| self.sources.get(name))
                .and_then(|s| s.mirror.head())
                .is_some_and(|head| head.commit.as_bytes() == p.revision.0.as_slice()),
            Err(_) => false,
        };
        // Only a newer controller status can change the verdict: not when
        // the object names no controller object, nor for a source that is
        // not configured (every such review would wait in full).
        let may_change = match &claim {
            Ok(p) => !matches!(self.resolve_source(cr, p), Err(Unresolved::Untracked(_))),
            Err(NoProvenance::Unnamed(_) | NoProvenance::NotGit(_)) => false,
            Err(_) => true,
        };
        if may_change && !fresh(&claim) {
            let until = deadline.min(tokio::time::Instant::now() + self.config.controller_wait());
            claim = caches
                .wait_for(until, |c| {
                    let newer = lookup(c);
                    fresh(&newer).then_some(newer)
                })
                .await
                .unwrap_or_else(|| lookup(caches));
        }
        let provenance = match claim {
            Ok(p) => p,
            Err(NoProvenance::Missing(why) | NoProvenance::Unnamed(why)) => {
                return unclaimed(Reason::MissingRevision, why);
            }
            Err(NoProvenance::NotGit(why)) => return unclaimed(Reason::UntrackedSource, why),
            Err(NoProvenance::Malformed {
                controller,
                field,
                value,
                why,
            }) => {
                return unclaimed(
                    Reason::MalformedRevision,
                    format!(
                        "{field} of {controller} is {value}, not a commit id ({why})",
                        controller = crate::echo::value(&controller)
                    ),
                );
            }
        };
        let source = match self.resolve_source(cr, &provenance) {
            Ok(source) => source,
            Err(Unresolved::Untracked(why)) => return unclaimed(Reason::UntrackedSource, why),
            Err(Unresolved::Unknown(why)) => return unclaimed(Reason::MissingRevision, why),
        };
        let overlay = if cr.config.overlay.is_empty() {
            &provenance.overlay
        } else {
            &cr.config.overlay
        };
        let (rule, new_content_rule) = match self.resolved_rule(cr, source, overlay, &provenance) {
            Ok(resolved) => resolved,
            Err(why) => return unclaimed(Reason::OverlayError, why),
        };
        let facts = RequestFacts {
            revision: Annotation::Valid(provenance.revision),
            branch: provenance.branch.clone(),
            checksum: Annotation::Missing {
                near_misses: Vec::new(),
            },
            break_glass: admission::is_break_glass(&self.config, req),
            claimed_by: ClaimedBy::Controller {
                object: provenance.controller.clone(),
                field: provenance.field,
            },
        };
        Claimed::Checked {
            rule,
            facts,
            new_content_rule,
        }
    }

    /// How `cr` reads a claim from the caches for this request.
    fn lookup<'r>(
        &'r self,
        cr: &'r ControllerRule,
        req: &'r Request<'_>,
    ) -> impl Fn(&ControllerCaches) -> Result<Arc<Provenance>, NoProvenance> + 'r {
        let labels = match cr.config.provenance {
            policy::Provenance::Flux => admission::labels(req, &crate::flux::LABELS),
            _ => None,
        };
        // Only the tracking id is read from the annotations.
        let annotations: Option<BTreeMap<String, String>> = (cr.config.provenance
            == policy::Provenance::Argo)
            .then(|| admission::annotations(req))
            .flatten()
            .and_then(|a| a.get(crate::argo::TRACKING_ID))
            .map(|v| BTreeMap::from([(crate::argo::TRACKING_ID.to_owned(), v.to_string())]));
        let api_version = match cr.config.provenance {
            policy::Provenance::Argo if req.kind.group.is_empty() => req.kind.version.to_string(),
            policy::Provenance::Argo => format!("{}/{}", req.kind.group, req.kind.version),
            _ => String::new(),
        };
        move |caches: &ControllerCaches| match cr.config.provenance {
            policy::Provenance::Argo => caches.argo_provenance(
                annotations.as_ref(),
                (
                    &api_version,
                    &req.kind.kind,
                    req.namespace.as_deref().unwrap_or(""),
                    &req.name,
                ),
                &self.config.argo.namespace,
            ),
            _ => caches.flux_provenance(labels.as_ref()),
        }
    }

    /// The configured source a claim's git URL and ref are, restricted to
    /// the rule's `source` when it names one.
    fn resolve_source<'c>(
        &'c self,
        cr: &ControllerRule,
        claim: &Provenance,
    ) -> Result<&'c str, Unresolved> {
        let wanted = claim
            .source
            .as_ref()
            .map_err(|why| Unresolved::Unknown(why.clone()))?;
        let sources = cr.source_urls.iter().map(String::as_str);
        let source = crate::controllers::sources::match_normalised(
            sources.zip(&self.config.sources),
            wanted,
        )
        .map_err(|why| {
            Unresolved::Untracked(format!("{}: {why}", crate::echo::value(&claim.controller)))
        })?;
        if !cr.config.source.is_empty() && source.name != cr.config.source {
            return Err(Unresolved::Untracked(format!(
                "{} follows source {}, not {} (the rule's source)",
                crate::echo::value(&claim.controller),
                source.name,
                cr.config.source
            )));
        }
        Ok(source.name.as_str())
    }

    /// The rule `cr` resolved to `source` and `overlay` (and, when it
    /// verifies content, to the controller's `build`, which changes the
    /// rendering): kept, so its checksum key, policy and renderings are
    /// made once; `true` when it is new and verifies content (its head is
    /// to be followed).
    fn resolved_rule(
        &self,
        cr: &ControllerRule,
        source: &str,
        overlay: &str,
        claim: &Provenance,
    ) -> Result<(Arc<Rule>, bool), String> {
        let verifies = cr.config.content == policy::ContentCheck::Verify;
        let build = verifies.then(|| claim.build().1);
        let mut kept = cr.resolved.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rule) = kept
            .get(source)
            .and_then(|o| o.get(overlay))
            .and_then(|b| b.get(&build))
        {
            return Ok((rule.clone(), false));
        }
        let mut config = cr.config.clone();
        config.source = source.to_owned();
        config.overlay = overlay.to_owned();
        let mut rule = self
            .compile(config)
            .map_err(|e| crate::echo::message(e.to_string()))?;
        if verifies {
            rule.build = Some(claim.build().0.clone());
        }
        let rule = Arc::new(rule);
        let count: usize = kept
            .values()
            .flat_map(HashMap::values)
            .map(HashMap::len)
            .sum();
        let keep = count < MAX_RESOLVED;
        if keep {
            kept.entry(source.to_owned())
                .or_default()
                .entry(overlay.to_owned())
                .or_default()
                .insert(build, rule.clone());
        }
        Ok((rule.clone(), keep && rule.renderings.is_some()))
    }
}

/// Why a claim has no configured source.
enum Unresolved {
    /// Its URL or branch is not configured: `UntrackedSource`.
    Untracked(String),
    /// Its source object is not known (a GitRepository not in the cache):
    /// `MissingRevision`.
    Unknown(String),
}
