//! The webhook's HTTP surface: `/validate`, `/healthz`, `/readyz`,
//! `/metrics`, and the gathering of facts for a decision under a deadline.
//!
//! TLS and connection handling live in `tls`; this module only builds the
//! router and its state, so tests can drive it without a network too.

mod cold;
mod content;
mod controller;

use crate::admission::{self, Expectation, Prechecked};
use crate::checksum::{Caches, ChecksumEngine, ChecksumError};
use crate::config::{Config, RuleConfig};
use crate::metrics::{CacheLabels, Metrics, ReviewDecision};
use crate::mirror::Mirror;
use crate::policy::{
    self, ChecksumFact, Decision, HeadFacts, MirrorFacts, Position, Revision, RulePolicy,
};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gix::ObjectId;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

/// Largest AdmissionReview accepted. The API server limits an object to
/// about 3 MiB; a review carries the object and the old object.
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// Kept between the verdict and the API server's own deadline, for the
/// answer to travel back.
const DEADLINE_MARGIN: Duration = Duration::from_millis(300);

/// One GitOps source: its mirror and the checksum caches over it.
#[derive(Clone)]
pub struct Source {
    pub mirror: Arc<Mirror>,
    pub caches: Arc<Caches>,
}

/// Everything a request handler needs.
pub struct AppState {
    pub config: Arc<Config>,
    /// The rules in `config.rules` order, compiled once at start.
    rules: Vec<Compiled>,
    /// Some static rule verifies content: only then does a review's parse
    /// look for a rendering to check the object against.
    static_content: bool,
    pub sources: HashMap<String, Source>,
    pub metrics: Metrics,
    /// Set once the serving certificate is loaded.
    pub tls_ready: AtomicBool,
    /// Cold checksum computations: bounded and shared per key.
    cold: cold::ColdWork<ColdKey, ChecksumFact>,
    /// Renders for rules with `content: verify`, all sources together.
    renderer: Option<Arc<crate::render::Renderer>>,
    /// Watch-fed caches of Flux and Argo CD objects, for
    /// `provenance: flux|argo` (set by [`start`]).
    controllers: Option<Arc<crate::controllers::ControllerCaches>>,
    /// Reads Flux's `postBuild.substituteFrom` objects (set by [`start`]
    /// with the controllers' client).
    variables: Option<Arc<crate::controllers::variables::Variables>>,
    /// What stops the tasks a review may start (a resolved content rule's
    /// head follower).
    shutdown: Shutdown,
}

/// A configured rule: compiled at start, or, for `provenance: flux|argo`,
/// resolved per controller object to its source and path.
enum Compiled {
    Static(Arc<Rule>),
    Controller(Box<controller::ControllerRule>),
}

impl Compiled {
    fn config(&self) -> &RuleConfig {
        match self {
            Compiled::Static(rule) => &rule.config,
            Compiled::Controller(cr) => &cr.config,
        }
    }
}

/// A rule compiled once from the config: everything matching, gathering
/// and deciding read about it, together, so nothing is looked up by
/// position or by name per review.
struct Rule {
    config: RuleConfig,
    /// The decision's view of the rule.
    policy: RulePolicy,
    /// The overlay as a checksum cache key.
    overlay_key: Arc<str>,
    source: Source,
    provenance: policy::Provenance,
    /// Present for `content: verify`.
    renderings: Option<content::Renderings>,
    /// `provenance: flux|argo` with `content: verify`: what the controller
    /// adds to the build (the rendering follows it).
    build: Option<crate::controllers::ControllerBuild>,
}

/// (source, commit, overlay as configured).
type ColdKey = (String, ObjectId, String);

/// Why `gather` produced no facts.
enum Unanswered {
    /// The deadline passed (waiting for a fetch, a slot or a computation).
    Timeout,
    /// Too many cold checksums are queued: answered at once instead of
    /// waiting until the deadline.
    Overloaded { queued: usize },
}

impl AppState {
    /// Compiles the rules against the opened sources. Fails only on a
    /// configuration `Config::validate` would refuse (an unknown source,
    /// an overlay path outside the repository).
    pub fn new(config: Arc<Config>, sources: HashMap<String, Source>) -> anyhow::Result<Self> {
        let rules = config
            .rules
            .iter()
            .map(|r| match r.provenance {
                policy::Provenance::Flux | policy::Provenance::Argo => Ok(Compiled::Controller(
                    Box::new(controller::ControllerRule::new(&config, r)),
                )),
                _ => compile_rule(&config, &sources, r.clone())
                    .map(|c| Compiled::Static(Arc::new(c))),
            })
            .collect::<anyhow::Result<Vec<Compiled>>>()?;
        let static_content = rules
            .iter()
            .any(|r| matches!(r, Compiled::Static(rule) if rule.renderings.is_some()));
        let renderer = config
            .rules
            .iter()
            .any(|r| r.content == policy::ContentCheck::Verify)
            .then(|| {
                Arc::new(crate::render::Renderer::new(
                    crate::render::RenderSettings {
                        work_dir: Some(config.render_dir()),
                        ..config.render.settings()
                    },
                ))
            });
        let cold = cold::ColdWork::new(
            config.limits.checksum_threads(),
            config.limits.checksum_queue,
        );
        Ok(AppState {
            config,
            rules,
            static_content,
            sources,
            metrics: Metrics::new(),
            tls_ready: AtomicBool::new(false),
            cold,
            renderer,
            controllers: None,
            variables: None,
            shutdown: Shutdown::default(),
        })
    }

    /// A rule resolved to its source and overlay.
    fn compile(&self, rule: RuleConfig) -> anyhow::Result<Rule> {
        compile_rule(&self.config, &self.sources, rule)
    }

    /// True once every rule with `content: verify` has head's rendering and
    /// has looked for its earlier ones (what explains a mismatch).
    pub fn renderings_ready(&self) -> bool {
        self.static_rules()
            .filter_map(|r| r.renderings.as_ref())
            .all(|r| r.filled())
    }

    fn static_rules(&self) -> impl Iterator<Item = &Arc<Rule>> {
        self.rules.iter().filter_map(|r| match r {
            Compiled::Static(rule) => Some(rule),
            Compiled::Controller(_) => None,
        })
    }

    /// Starts, for each rule with `content: verify`, the task that renders
    /// each new head before a review asks for it.
    pub fn spawn_renderers(self: &Arc<Self>) {
        for rule in self.static_rules() {
            if rule.renderings.is_some() {
                self.follow_head(rule.clone());
            }
        }
    }

    fn follow_head(self: &Arc<Self>, rule: Arc<Rule>) {
        tokio::spawn(content::follow_head(
            self.clone(),
            rule,
            self.shutdown.wait(),
        ));
    }
}

/// The review listener's routes: `/validate`, and the probe routes too
/// (for configurations without a probe listener).
pub fn router(state: Arc<AppState>) -> Router {
    probe_routes()
        .route("/validate", post(validate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The probe listener's routes: `/healthz`, `/readyz`, `/metrics`.
pub fn probe_router(state: Arc<AppState>) -> Router {
    probe_routes().with_state(state)
}

fn probe_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Limits of the plain-HTTP probe listener: a few short requests at a time
/// from kubelet and Prometheus, no bodies.
fn probe_options(review: &crate::tls::ServeOptions) -> crate::tls::ServeOptions {
    crate::tls::ServeOptions {
        header_read_timeout: Duration::from_secs(5),
        stall_timeout: Duration::from_secs(10),
        body_budget: 1 << 20,
        body_budget_per_peer: 1 << 20,
        max_connections: 64,
        max_connections_per_peer: 16,
        ..review.clone()
    }
}

/// A JSON error body: `{"status": 400, "message": "..."}`.
fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "status": status.as_u16(), "message": message.into() });
    (status, Json(body)).into_response()
}

async fn validate(
    State(st): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            if let Some(refused) = budget_refusal(&rejection) {
                st.metrics.body_budget_refusals.inc();
                return json_error(StatusCode::SERVICE_UNAVAILABLE, refused.to_string());
            }
            st.metrics.bad_requests.inc();
            let status = rejection.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("request body is larger than {MAX_BODY_BYTES} bytes")
            } else {
                rejection.body_text()
            };
            return json_error(status, message);
        }
    };
    let (req, prechecked) = match admission::parse_review_checking(&body, |req| st.expectation(req))
    {
        Ok(read) => read,
        Err(e) => {
            st.metrics.bad_requests.inc();
            return json_error(StatusCode::BAD_REQUEST, e.0);
        }
    };
    let decision = st
        .decide(
            &req,
            &body,
            prechecked.as_ref(),
            api_timeout(query.as_deref()),
        )
        .await;
    let latency = started.elapsed();
    st.metrics
        .count_review(decision_label(&decision), decision.reason);
    st.metrics.review_duration.observe(latency.as_secs_f64());
    crate::audit::record(&req, &decision, latency);
    (
        [(header::CONTENT_TYPE, "application/json")],
        admission::response_json(&req, &decision),
    )
        .into_response()
}

/// The transport's refusal of a body beyond the request body budget, if
/// that is why the body could not be read.
fn budget_refusal(rejection: &BytesRejection) -> Option<&crate::tls::BodyBudgetExceeded> {
    let mut source = std::error::Error::source(rejection);
    while let Some(error) = source {
        if let Some(refused) = error.downcast_ref::<crate::tls::BodyBudgetExceeded>() {
            return Some(refused);
        }
        source = error.source();
    }
    None
}

/// Compiles one rule against the opened sources. Fails only on a
/// configuration `Config::validate` would refuse, or a controller's path
/// that leaves the repository.
fn compile_rule(
    config: &Config,
    sources: &HashMap<String, Source>,
    r: RuleConfig,
) -> anyhow::Result<Rule> {
    let source = sources
        .get(&r.source)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("rule {}: no source {:?}", r.name, r.source))?;
    let overlay_key = crate::checksum::overlay_key(&r.overlay)
        .map_err(|e| anyhow::anyhow!("rule {}: {e}", r.name))?;
    Ok(Rule {
        policy: rule_policy(config, &r),
        overlay_key,
        source,
        provenance: r.provenance,
        renderings: (r.content == policy::ContentCheck::Verify).then(content::Renderings::default),
        build: None,
        config: r,
    })
}

/// Who the object under review is: the request's kind, name and
/// namespace, which the API server takes from the object.
fn request_identity(req: &admission::Request<'_>) -> Result<crate::content::Identity, String> {
    if req.name.is_empty() {
        return Err(
            "the object has no metadata.name (generateName) to look it up in the rendering by"
                .to_owned(),
        );
    }
    Ok(crate::content::Identity {
        group: req.kind.group.to_string(),
        kind: req.kind.kind.to_string(),
        namespace: req
            .namespace
            .as_deref()
            .filter(|ns| !ns.is_empty())
            .map(str::to_owned),
        name: req.name.to_string(),
    })
}

/// The object content verification compares, read from the body in the
/// cheapest way that gives the same verdict:
/// - when the object literally contains head's (or, within the grace
///   period, the previous head's) rendering, the common case, nothing is
///   built: that rendering itself stands for the object (the comparison
///   only reads the object where the rendering sets fields, and a
///   rendering matches itself);
/// - else, built only where those renderings set fields, when that
///   matches one of them (a quantity written another way, a sidecar
///   elsewhere in a list);
/// - else whole, so the explanation can compare it with the earlier
///   renderings too.
fn compared_object<'r>(
    body: &[u8],
    content: &policy::ContentFacts<'r>,
    prechecked: Option<&Prechecked<Guess>>,
) -> Result<Compared<'r>, String> {
    let seeds: Vec<&'r serde_json::Value> = match content {
        policy::ContentFacts::RenderFailed { .. } => {
            return Ok(Compared::Parsed(serde_json::Value::Null));
        }
        policy::ContentFacts::Rendered { head, in_grace, .. } => head
            .object
            .into_iter()
            .chain(in_grace.and_then(|g| g.object))
            .collect(),
    };
    // Checked while the review was parsed, when the guess was right.
    let guessed = prechecked.and_then(|p| {
        let value = p.expected.rendered();
        seeds
            .iter()
            .find(|s| std::ptr::eq(**s, value))
            .map(|s| (*s, p.contains))
    });
    if let Some((seed, true)) = guessed {
        return Ok(Compared::Rendered(seed));
    }
    let known_not = guessed.map(|(seed, _)| seed);
    if let Some(seed) = seeds.iter().find(|s| {
        !known_not.is_some_and(|k| std::ptr::eq(k, **s)) && crate::content::review_contains(body, s)
    }) {
        return Ok(Compared::Rendered(seed));
    }
    if !seeds.is_empty()
        && let Some(pruned) = crate::content::review_object(body, &seeds)?
        && seeds.iter().any(|s| crate::content::matches(s, &pruned))
    {
        return Ok(Compared::Parsed(pruned));
    }
    #[derive(serde::Deserialize)]
    struct Review {
        request: ObjectOnly,
    }
    #[derive(serde::Deserialize)]
    struct ObjectOnly {
        object: serde_json::Value,
    }
    let review: Review = serde_json::from_slice(body)
        .map_err(|e| crate::echo::message(format!("the object cannot be read: {e}")))?;
    Ok(Compared::Parsed(review.request.object))
}

/// The rendered object a review's object is most likely compared with
/// (head's, for the static rule the request matches), picked while the
/// review is parsed so the object is checked against it in the same pass.
/// [`compared_object`] uses that answer only when `gather` brings this
/// very object (the same rendering).
struct Guess {
    rendering: Arc<crate::render::Rendering>,
    /// The request's identity (the verdict reads it too).
    identity: crate::content::Identity,
    /// The one the object is kept under, when not that one (a rendered
    /// object without a namespace).
    key: Option<crate::content::Identity>,
}

impl Guess {
    fn key(&self) -> &crate::content::Identity {
        self.key.as_ref().unwrap_or(&self.identity)
    }
}

impl Expectation for Guess {
    fn rendered(&self) -> &serde_json::Value {
        self.rendering
            .get(self.key())
            .unwrap_or(&serde_json::Value::Null)
    }

    fn seen(&self) -> Option<&crate::content::Seen> {
        self.rendering.get_seen(self.key()).map(|(_, seen)| seen)
    }
}

/// What [`compared_object`] gives: a rendering the object contains, or
/// the object as parsed.
enum Compared<'r> {
    Rendered(&'r serde_json::Value),
    Parsed(serde_json::Value),
}

/// The part of a rule the decision reads.
fn rule_policy(config: &Config, rule: &RuleConfig) -> RulePolicy {
    let branch = config
        .sources
        .iter()
        .find(|s| s.name == rule.source)
        .map(|s| s.branch.clone())
        .unwrap_or_default();
    RulePolicy {
        name: rule.name.clone(),
        branch,
        mode: rule.mode,
        staleness: rule.staleness,
        grace_period: config.grace_period(rule),
    }
}

fn decision_label(d: &Decision) -> ReviewDecision {
    match (d.allowed, d.reason.allows(), d.mode) {
        (false, _, _) => ReviewDecision::Deny,
        (true, true, _) => ReviewDecision::Allow,
        (true, false, Some(policy::Mode::Warn)) => ReviewDecision::Warn,
        (true, false, Some(policy::Mode::Audit)) => ReviewDecision::Audit,
        (true, false, _) => ReviewDecision::Allow,
    }
}

/// The API server appends `?timeout=5s`: its own deadline.
fn api_timeout(query: Option<&str>) -> Option<Duration> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("timeout="))
        .and_then(|v| crate::config::parse_duration(v).ok())
}

impl AppState {
    /// What the object of `req` (read up to its object) is checked against
    /// while the review is parsed: head's rendering of the object, for a
    /// static rule with content verification whose head is rendered.
    fn expectation(&self, req: &crate::admission::Request<'_>) -> Option<Guess> {
        if !self.static_content || admission::out_of_scope(req).is_some() {
            return None;
        }
        let Compiled::Static(rule) = self
            .rules
            .iter()
            .find(|r| admission::rule_matches(r.config(), req))?
        else {
            return None;
        };
        let rendering = rule.renderings.as_ref()?.current()?;
        let identity = request_identity(req).ok()?;
        let key = match rendering.find_entry(&identity)? {
            (key, _) if *key == identity => None,
            (key, _) => Some(key.clone()),
        };
        Some(Guess {
            rendering,
            identity,
            key,
        })
    }

    /// The time this request may take: the configured decision timeout,
    /// cut short by the API server's deadline.
    fn budget(&self, api_timeout: Option<Duration>) -> Duration {
        let configured = self.config.failure.decision_timeout;
        match api_timeout {
            Some(t) => configured.min(
                t.checked_sub(DEADLINE_MARGIN)
                    .unwrap_or(Duration::from_millis(100))
                    .max(Duration::from_millis(100)),
            ),
            None => configured,
        }
    }

    /// The verdict for one request. Never fails: every problem is a verdict.
    /// `body` is the review the request was parsed from: content
    /// verification reads the whole object from it.
    async fn decide(
        self: &Arc<Self>,
        req: &crate::admission::Request<'_>,
        body: &[u8],
        prechecked: Option<&Prechecked<Guess>>,
        api_timeout: Option<Duration>,
    ) -> Decision {
        if let Some(why) = admission::out_of_scope(req) {
            return Decision::out_of_scope(why);
        }
        let Some(compiled) = self
            .rules
            .iter()
            .find(|r| admission::rule_matches(r.config(), req))
        else {
            return Decision::out_of_scope("no rule matches this request");
        };
        // The deadline set on arrival: a controller claim's wait is part
        // of the same budget, not in addition to it.
        let budget = self.budget(api_timeout);
        let deadline = tokio::time::Instant::now() + budget;
        let (rule, facts) = match compiled {
            Compiled::Static(rule) => {
                // `provenance: none` reads no claim from the annotations.
                let facts = match rule.provenance {
                    policy::Provenance::None => admission::facts_without_claim(&self.config, req),
                    _ => admission::request_facts(&self.config, req),
                };
                (rule.clone(), facts)
            }
            Compiled::Controller(cr) => match self.controller_claim(cr, req, deadline).await {
                controller::Claimed::Checked {
                    rule,
                    facts,
                    new_content_rule,
                } => {
                    if new_content_rule {
                        self.follow_head(rule.clone());
                    }
                    (rule, facts)
                }
                controller::Claimed::Decided(decision) => return decision,
            },
        };
        let rule = &*rule;
        let rule_policy = &rule.policy;
        let failure = &self.config.failure;
        let revision = match rule.provenance {
            policy::Provenance::None => None,
            _ => match admission::valid_revision(&facts) {
                Some(revision) if !policy::decided_by_annotations(rule_policy, &facts) => {
                    Some(revision)
                }
                _ => {
                    // The annotations decide before any fact is consulted
                    // (and before anything is fetched).
                    let unused = MirrorFacts::Unavailable { why: String::new() };
                    return policy::decide(
                        rule_policy,
                        &facts,
                        &unused,
                        failure.mirror_unavailable,
                    );
                }
            },
        };
        // Who the object is, for content verification only: read once,
        // while the review was parsed, when it was looked up then.
        let identity = match (&rule.renderings, prechecked) {
            (None, _) => None,
            (Some(_), Some(p)) => Some(std::borrow::Cow::Borrowed(&p.expected.identity)),
            (Some(_), None) => match request_identity(req) {
                Ok(identity) => Some(std::borrow::Cow::Owned(identity)),
                Err(why) => {
                    return policy::unverifiable_object(rule_policy, &facts, &why);
                }
            },
        };
        let mut gather =
            std::pin::pin!(self.gather(rule, &facts, revision, identity.is_some(), deadline));
        // Warm, the facts are in memory and the first poll finishes: only a
        // review that has to wait (a fetch, a cold checksum) gets a timer.
        let first = std::future::poll_fn(|cx| Poll::Ready(gather.as_mut().poll(cx))).await;
        let gathered = match first {
            Poll::Ready(result) => Ok(result),
            Poll::Pending => tokio::time::timeout_at(deadline, gather).await,
        };
        match gathered {
            Ok(Ok((mirror_facts, rendered))) => {
                let compared_content = rendered.is_some();
                let decide =
                    |content: Option<(policy::ReviewedObject<'_>, &policy::ContentFacts<'_>)>| {
                        policy::decide_checks(
                            rule_policy,
                            rule.provenance,
                            &facts,
                            &mirror_facts,
                            content,
                            failure.mirror_unavailable,
                        )
                    };
                let decision = match (&identity, rendered) {
                    (Some(identity), Some(mut rendered)) => {
                        let content = self.content_facts(rule, identity, &rendered);
                        let parsed = match compared_object(body, &content, prechecked) {
                            // Head's or the grace rendering is contained:
                            // a match, no earlier rendering to explain.
                            Ok(Compared::Rendered(object)) => {
                                let reviewed = policy::ReviewedObject { identity, object };
                                return self.count_comparison(decide(Some((reviewed, &content))));
                            }
                            Ok(Compared::Parsed(object)) => object,
                            Err(why) => {
                                return policy::unverifiable_object(rule_policy, &facts, &why);
                            }
                        };
                        drop(content);
                        // A difference may need explaining.
                        self.add_history(rule, &mut rendered);
                        let content = self.content_facts(rule, identity, &rendered);
                        let reviewed = policy::ReviewedObject {
                            identity,
                            object: &parsed,
                        };
                        decide(Some((reviewed, &content)))
                    }
                    _ => decide(None),
                };
                if compared_content {
                    self.count_comparison(decision)
                } else {
                    decision
                }
            }
            Ok(Err(Unanswered::Overloaded { queued })) => {
                self.metrics.checksum_overloaded.inc();
                policy::overloaded(rule_policy, &facts, queued, failure.decision_timeout_action)
            }
            // The deadline passed, here or inside an on-demand fetch.
            Ok(Err(Unanswered::Timeout)) | Err(_) => {
                policy::timed_out(rule_policy, &facts, budget, failure.decision_timeout_action)
            }
        }
    }

    /// Counts a content verdict by its outcome.
    fn count_comparison(&self, decision: Decision) -> Decision {
        self.metrics
            .count_comparison(match decision.overridden.unwrap_or(decision.reason) {
                policy::Reason::ContentMismatch => "mismatch",
                policy::Reason::NotRendered => "not_rendered",
                policy::Reason::OverlayError => "render_failed",
                _ => "match",
            });
        decision
    }

    /// Fills in the earlier renderings of `rendered`, to explain a
    /// difference with.
    fn add_history(&self, rule: &Rule, rendered: &mut content::Rendered) {
        if let (Some(kept), content::Rendered::Ready { head, history, .. }) =
            (&rule.renderings, rendered)
        {
            *history = kept.history(&head.checksum);
        }
    }

    /// The content facts a verdict reads, from gathered renderings: each
    /// rendering's object with the request's identity, and where each
    /// earlier rendering's commit stands.
    fn content_facts<'r>(
        &self,
        rule: &Rule,
        identity: &crate::content::Identity,
        rendered: &'r content::Rendered,
    ) -> policy::ContentFacts<'r> {
        match rendered {
            content::Rendered::Failed(why) => {
                policy::ContentFacts::RenderFailed { why: why.clone() }
            }
            content::Rendered::Ready {
                head,
                grace,
                history,
            } => {
                let mirror = &rule.source.mirror;
                let at = |commit: ObjectId, rendering: &'r crate::render::Rendering| {
                    policy::RenderedAt {
                        commit: Revision(oid_bytes(commit)),
                        position: Position::of(&mirror.facts(commit)),
                        object: rendering.find(identity),
                    }
                };
                policy::ContentFacts::Rendered {
                    head: policy::RenderedAt {
                        commit: Revision(oid_bytes(head.commit)),
                        position: Position::Head,
                        object: head.find(identity),
                    },
                    in_grace: grace.as_ref().map(|(commit, r)| at(*commit, r)),
                    history: history.iter().map(|e| at(e.commit, &e.rendering)).collect(),
                }
            }
        }
    }

    async fn gather(
        &self,
        compiled: &Rule,
        request: &policy::RequestFacts,
        revision: Option<Revision>,
        want_content: bool,
        deadline: tokio::time::Instant,
    ) -> Result<(MirrorFacts, Option<content::Rendered>), Unanswered> {
        let (rule, rule_policy, source) = (&compiled.config, &compiled.policy, &compiled.source);
        let now = SystemTime::now();
        let mut status = source.mirror.status();
        let max = self.config.failure.max_mirror_staleness;
        let oid = revision.map(|r| ObjectId::Sha1(r.0));
        let mut facts = oid.map(|oid| source.mirror.facts(oid));
        if let (Some(oid), Some(f)) = (oid, &facts)
            && !f.known
            && status.is_fresh(max, now)
        {
            let lookup = Box::pin(source.mirror.ensure_known(oid, deadline)).await;
            if lookup == crate::mirror::Lookup::StillUnknown
                && tokio::time::Instant::now() >= deadline
            {
                // The fetch is still running: we cannot tell, which is a
                // timeout, not an unknown revision.
                return Err(Unanswered::Timeout);
            }
            // The fetch may have moved the head too.
            status = source.mirror.status();
            facts = Some(source.mirror.facts(oid));
        }
        let head = match (&status.head, status.staleness(now)) {
            (Some(head), Some(age)) if age <= max => head.clone(),
            (_, Some(age)) => {
                let why = format!(
                    "the mirror of {} last fetched {} ago, longer than maxMirrorStaleness ({})",
                    rule.source,
                    policy::human_age(age.as_secs().try_into().unwrap_or(i64::MAX)),
                    policy::human_age(max.as_secs().try_into().unwrap_or(i64::MAX)),
                );
                return Ok((MirrorFacts::Unavailable { why }, None));
            }
            (_, None) => {
                let why = format!("the mirror of {} has never synced", rule.source);
                return Ok((MirrorFacts::Unavailable { why }, None));
            }
        };
        let since_move = now
            .duration_since(head.observed_at)
            .unwrap_or(Duration::ZERO);
        let head_facts = HeadFacts {
            commit: Revision(oid_bytes(head.commit)),
            commit_time: head.commit_time,
            previous: head.previous.map(|p| (Revision(oid_bytes(p)), since_move)),
        };
        let (position, at_revision, at_head) = match (revision, oid, &facts) {
            (Some(revision), Some(oid), Some(facts)) => {
                let position = Position::of(facts);
                let (need_revision, need_head) =
                    policy::needed_checksums(rule_policy, revision, &head_facts, position);
                let at_revision = if need_revision {
                    Some(self.checksum(compiled, oid).await?)
                } else {
                    None
                };
                let at_head = if need_head {
                    Some(self.checksum(compiled, head.commit).await?)
                } else {
                    None
                };
                (position, at_revision, at_head)
            }
            // `provenance: none`: no claim to place.
            _ => (Position::Head, None, None),
        };
        let mirror_facts = MirrorFacts::Available {
            head: head_facts,
            position,
            at_revision,
            at_head,
        };
        // Render only when the provenance passed: a denial needs none.
        let rendered = if want_content
            && policy::provenance_passes(rule_policy, compiled.provenance, request, &mirror_facts)
        {
            let in_grace = head.previous.is_some() && since_move <= rule_policy.grace_period;
            Some(self.renderings(compiled, &head, in_grace).await?)
        } else {
            None
        };
        Ok((mirror_facts, rendered))
    }

    /// The overlay checksum at `commit`: from the cache inline, else
    /// computed off the async workers under the cold-work limits.
    async fn checksum(
        &self,
        compiled: &Rule,
        commit: ObjectId,
    ) -> Result<ChecksumFact, Unanswered> {
        // The common case, a warm cache, needs no blocking thread.
        let cached = compiled
            .source
            .caches
            .cached_result_for(commit, &compiled.overlay_key);
        if let Some(cached) = cached {
            self.metrics.count_checksum_hit();
            return Ok(match cached.as_ref() {
                Ok(sum) => Ok(sum.checksum),
                Err(e) => Err(crate::echo::message(e.to_string())),
            });
        }
        // Boxed: inline, the computation's state would make every
        // review's future (moved and copied per request) 5 KiB larger.
        Box::pin(self.computed_checksum(compiled, commit)).await
    }

    /// [`Self::checksum`] not in the cache: computed.
    async fn computed_checksum(
        &self,
        compiled: &Rule,
        commit: ObjectId,
    ) -> Result<ChecksumFact, Unanswered> {
        let (rule, source) = (&compiled.config, &compiled.source);
        let overlay = rule.overlay.as_str();
        let cache = |result| CacheLabels {
            cache: "checksum",
            result,
        };
        let engine = ChecksumEngine::with_caches(source.mirror.repository(), source.caches.clone())
            .with_size_limits(self.config.limits.size_limits());
        let owned = overlay.to_owned();
        // Counted by whichever request runs the computation, once.
        let (cache_counts, computations, files) = (
            self.metrics.cache.clone(),
            self.metrics.checksum_computations.clone(),
            self.metrics.checksum_files.clone(),
        );
        let key = (rule.source.clone(), commit, overlay.to_owned());
        let computed = self.cold.run(key, move || {
            let (result, stats) = engine.checksum_with_stats(commit, &owned);
            if stats.result_cached {
                cache_counts.get_or_create(&cache("hit")).inc();
            } else {
                cache_counts.get_or_create(&cache("miss")).inc();
                computations.inc();
                files.inc_by(stats.entries as u64);
            }
            result
                .map(|sum| sum.checksum)
                .map_err(|e: ChecksumError| crate::echo::message(e.to_string()))
        });
        match computed.await {
            Ok(fact) => Ok(fact),
            Err(cold::ColdError::Overloaded { queued }) => Err(Unanswered::Overloaded { queued }),
            Err(cold::ColdError::Failed(why)) => Ok(Err(why)),
        }
    }

    /// Ready once the certificate is loaded and every source is synced
    /// within `maxMirrorStaleness`; the body says what is missing.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if !self.tls_ready.load(Ordering::Relaxed) {
            problems.push("serving certificate not loaded".to_owned());
        }
        if let Some(controllers) = &self.controllers
            && let Err(watches) = controllers.ready()
        {
            problems.extend(watches);
        }
        let now = SystemTime::now();
        let max = self.config.failure.max_mirror_staleness;
        let mut names: Vec<&String> = self.sources.keys().collect();
        names.sort();
        for name in names {
            let status = self.sources[name].mirror.status();
            if !status.is_fresh(max, now) {
                let mut problem = match status.staleness(now) {
                    None if status.fetching && status.last_failure.is_none() => {
                        format!("source {name}: never synced (first fetch running)")
                    }
                    None => format!("source {name}: never synced"),
                    Some(age) => format!(
                        "source {name}: last successful fetch {}s ago (maxMirrorStaleness {}s)",
                        age.as_secs(),
                        max.as_secs()
                    ),
                };
                // Say why, so `kubectl describe pod` shows the cause.
                if let Some(failure) = &status.last_failure {
                    problem.push_str("; last fetch failed: ");
                    problem.push_str(&failure.message);
                }
                problems.push(problem);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// True once every source has synced, or failed a fetch, since start
    /// (or had synced before a restart): what `/readyz` says is then the
    /// remote's answer, not "still cloning". Tests wait for it.
    pub fn first_fetches_done(&self) -> bool {
        self.sources.values().all(|s| {
            let status = s.mirror.status();
            status.last_success.is_some() || status.last_failure.is_some()
        })
    }

    fn refresh_gauges(&self) {
        let now = SystemTime::now();
        let max = self.config.failure.max_mirror_staleness;
        let epoch = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        self.metrics
            .checksum_queued
            .set(saturating_i64(self.cold.queued() as u64));
        if let Some(controllers) = &self.controllers {
            let m = &self.metrics;
            for kind in controllers.status() {
                let labels = crate::metrics::KindLabels { kind: kind.kind };
                m.controller_objects
                    .get_or_create(&labels)
                    .set(saturating_i64(kind.objects as u64));
                m.controller_watch_restarts
                    .get_or_create(&labels)
                    .set(saturating_i64(kind.restarts));
                m.controller_watch_relists
                    .get_or_create(&labels)
                    .set(saturating_i64(kind.relists));
                m.controller_watch_up
                    .get_or_create(&labels)
                    .set(i64::from(kind.listed && kind.broken_since.is_none()));
            }
        }
        if let Some(renderer) = &self.renderer {
            let stats = renderer.stats();
            let m = &self.metrics;
            m.renders.set(saturating_i64(stats.started));
            m.render_failures.set(saturating_i64(stats.failed));
            m.render_seconds.set(stats.seconds);
            m.render_cache_bytes.set(saturating_i64(stats.cache_bytes));
        }
        for (name, source) in &self.sources {
            for (cache, entries, weight) in source.caches.sizes() {
                let labels = crate::metrics::CacheSizeLabels {
                    source: name.clone(),
                    cache,
                };
                let m = &self.metrics;
                m.cache_entries
                    .get_or_create(&labels)
                    .set(saturating_i64(entries));
                m.cache_weight
                    .get_or_create(&labels)
                    .set(saturating_i64(weight));
            }
            let labels = Metrics::source(name);
            let status = source.mirror.status();
            let m = &self.metrics;
            if let Some(head) = &status.head {
                let age = epoch(now).as_secs_f64() - head.commit_time as f64;
                m.mirror_head_age.get_or_create(&labels).set(age.max(0.0));
            }
            if let Some(t) = status.last_success {
                m.mirror_last_success
                    .get_or_create(&labels)
                    .set(epoch(t).as_secs_f64());
            }
            m.mirror_fetches
                .get_or_create(&labels)
                .set(saturating_i64(status.fetches));
            m.mirror_on_demand_refused
                .get_or_create(&labels)
                .set(saturating_i64(status.on_demand_refused));
            m.mirror_consecutive_failures
                .get_or_create(&labels)
                .set(saturating_i64(status.consecutive_failures));
            m.mirror_ready
                .get_or_create(&labels)
                .set(i64::from(status.is_fresh(max, now)));
        }
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn oid_bytes(oid: ObjectId) -> [u8; 20] {
    let mut out = [0u8; 20];
    let bytes = oid.as_bytes();
    let n = bytes.len().min(20);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    match st.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(problems) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{}\n", problems.join("\n")),
        )
            .into_response(),
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    st.refresh_gauges();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
        .into_response()
}

/// Tells every part of a running server to stop.
#[derive(Clone)]
pub struct Shutdown(tokio::sync::watch::Sender<bool>);

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown(tokio::sync::watch::channel(false).0)
    }
}

impl Shutdown {
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once [`trigger`](Self::trigger) was called.
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// A server started by [`start`].
pub struct Running {
    pub local_addr: std::net::SocketAddr,
    /// The plain-HTTP probe listener's address, when `probes` is set.
    pub probe_addr: Option<std::net::SocketAddr>,
    pub state: Arc<AppState>,
    pub shutdown: Shutdown,
    /// Resolves when the server has stopped (after a graceful drain).
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Opens the mirrors (locally), loads the certificate, binds, starts
/// serving, then starts each source's poller, which clones or fetches in
/// the background. Fails on local problems only (unusable mirror directory,
/// unreadable certificate, address in use); an unreachable or hanging
/// remote is a readiness matter, not a start-up failure or delay.
///
/// The transport limits configured under `limits:` (request body budget,
/// connection caps, HTTP/2 idle timeout) replace the corresponding fields
/// of `options`. With `probes` set, a plain-HTTP listener serves the probe
/// routes too; `task` ends when both listeners have stopped.
pub async fn start(config: Config, options: crate::tls::ServeOptions) -> anyhow::Result<Running> {
    use anyhow::Context as _;
    let limits = &config.limits;
    let options = crate::tls::ServeOptions {
        body_budget: limits.request_body_budget,
        body_budget_per_peer: limits.body_budget_per_peer(),
        max_connections: limits.max_connections,
        max_connections_per_peer: limits.max_connections_per_peer,
        http2_idle_timeout: limits.http2_idle_timeout,
        ..options
    };
    // One process-wide provider; components also pass ring explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Arc::new(config);
    let shutdown = Shutdown::default();
    std::fs::create_dir_all(&config.mirror_dir)
        .with_context(|| format!("mirrorDir: cannot create {}", config.mirror_dir.display()))?;
    if config
        .rules
        .iter()
        .any(|r| r.content == crate::policy::ContentCheck::Verify)
    {
        let dir = config.render_dir();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("mirrorDir: cannot create {}", dir.display()))?;
    }
    // Local work only, every source at once: no remote is reached before
    // the listener opens, so a hanging remote cannot keep the pod from
    // answering its probes. Each source's poller clones or fetches in the
    // background (at once when unsynced); until then `/readyz` names the
    // source and its reviews get `MirrorUnavailable`.
    let mut opening = tokio::task::JoinSet::new();
    for source in &config.sources {
        let spec = config.source_spec(source);
        let (name, dir) = (source.name.clone(), config.mirror_dir.clone());
        opening.spawn(async move { (name, Mirror::open_local(spec, &dir).await) });
    }
    let mut sources = HashMap::new();
    while let Some(opened) = opening.join_next().await {
        let (name, mirror) = opened.context("opening a mirror")?;
        let mirror = mirror.with_context(|| format!("source {name}"))?;
        let caches = Arc::new(Caches::new(config.limits.caches));
        sources.insert(name, Source { mirror, caches });
    }
    // Read before binding, so a missing Secret fails the start.
    let receiver_secret = match &config.receiver {
        Some(receiver) => Some(receiver.read_secret()?),
        None => None,
    };
    let tls = crate::tls::ReloadingTls::load(crate::tls::TlsFiles {
        cert_file: config.tls.cert_file.clone(),
        key_file: config.tls.key_file.clone(),
        client_ca_file: config.tls.client_ca_file.clone(),
    })?;
    tls.spawn_watcher(Duration::from_secs(2), shutdown.wait());
    crate::memory::spawn_trimmer(config.limits.memory_trim_interval, shutdown.wait());
    let addr = config.listen_addr()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen: cannot bind {addr}"))?;
    let local_addr = listener.local_addr()?;
    let probes = match config.probes_addr()? {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("probes.listen: cannot bind {addr}"))?,
        ),
        None => None,
    };
    let mut state = AppState::new(config, sources)?;
    state.shutdown = shutdown.clone();
    (state.controllers, state.variables) = start_controllers(&state.config, &shutdown).await?;
    let state = Arc::new(state);
    state.tls_ready.store(true, Ordering::Relaxed);
    let mut app = router(state.clone());
    if let (Some(receiver), Some(secret)) = (&state.config.receiver, receiver_secret) {
        let mirrors = state
            .sources
            .iter()
            .map(|(name, s)| (name.clone(), s.mirror.clone()));
        let receiver = crate::receiver::Receiver::new(receiver, secret, mirrors, &state.metrics);
        receiver.spawn_secret_watcher(Duration::from_secs(2), shutdown.wait());
        app = app.merge(receiver.router());
    }
    let mut probe_addr = None;
    let probes = match probes {
        Some(listener) => {
            let addr = listener.local_addr()?;
            probe_addr = Some(addr);
            tracing::info!(local_addr = %addr, "stale-guard probes serving");
            Some(crate::tls::serve_plain(
                listener,
                probe_router(state.clone()),
                probe_options(&options),
                shutdown.wait(),
            ))
        }
        None => None,
    };
    let reviews = crate::tls::serve(listener, tls, app, options, shutdown.wait());
    let task = tokio::spawn(async move {
        match probes {
            Some(probes) => {
                let (reviews, probes) = tokio::join!(reviews, probes);
                reviews.and(probes)
            }
            None => reviews.await,
        }
    });
    for source in state.sources.values() {
        source.mirror.clone().spawn_poller(shutdown.wait());
    }
    state.spawn_renderers();
    if let Some(heads) = &state.config.heads {
        let mirrors = state
            .sources
            .iter()
            .map(|(name, s)| (name.clone(), s.mirror.clone()))
            .collect();
        let kube = state.config.kube.as_ref();
        crate::heads::spawn(heads, kube, mirrors, &state.metrics, shutdown.wait()).await;
    }
    tracing::info!(%local_addr, "stale-guard webhook serving");
    Ok(Running {
        local_addr,
        probe_addr,
        state,
        shutdown,
        task,
    })
}

/// What reads the cluster for `provenance: flux|argo`: the controller
/// objects' caches, and the reader of `postBuild.substituteFrom` objects.
type ControllerReaders = (
    Option<Arc<crate::controllers::ControllerCaches>>,
    Option<Arc<crate::controllers::variables::Variables>>,
);

/// The watches of the controller objects the rules' provenance reads, if
/// any rule reads one, and, when a Flux rule verifies content, the reader
/// of its substitution variables. Only the client is built here: the
/// watches list and follow in the background, and `/readyz` waits for
/// their first list.
async fn start_controllers(
    config: &Config,
    shutdown: &Shutdown,
) -> anyhow::Result<ControllerReaders> {
    use crate::controllers::Watched;
    let mut kinds = Vec::new();
    for rule in &config.rules {
        match rule.provenance {
            policy::Provenance::Flux => kinds.extend_from_slice(&Watched::FLUX),
            policy::Provenance::Argo => kinds.extend_from_slice(&Watched::ARGO),
            _ => {}
        }
    }
    if kinds.is_empty() {
        return Ok((None, None));
    }
    let kube = config.kube.clone().unwrap_or_default();
    let client = kube
        .client()
        .await
        .map_err(|e| anyhow::anyhow!("provenance: flux|argo needs the Kubernetes API: {e}"))?;
    let options = crate::controllers::CacheOptions {
        unready_after: kube.unready_after,
        ..Default::default()
    };
    let substitutes = config.rules.iter().any(|r| {
        r.provenance == policy::Provenance::Flux && r.content == policy::ContentCheck::Verify
    });
    let variables = substitutes.then(|| {
        Arc::new(crate::controllers::variables::Variables::new(
            client.clone(),
        ))
    });
    let caches =
        crate::controllers::ControllerCaches::start_with(client, &kinds, shutdown.wait(), options);
    Ok((Some(caches), variables))
}

/// `stale-guard serve`: runs until SIGTERM or SIGINT, then drains.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let options = crate::tls::ServeOptions {
        shutdown_grace: config.shutdown_grace_period,
        drain_delay: Duration::from_secs(1),
        ..crate::tls::ServeOptions::default()
    };
    let running = start(config, options).await?;
    let shutdown = running.shutdown.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
    shutdown.trigger();
    running.task.await??;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A review's future is moved into a box and copied on every request:
    /// the rare waits (a fetch, a checksum computed, a render) keep their
    /// state in boxes of their own, not inline in it (it was 8.5 KiB).
    #[test]
    fn a_reviews_future_stays_small() {
        fn future_size<A, B, C, R>(_: impl Fn(A, B, C) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        let size = future_size(validate);
        assert!(size <= 4096, "validate's future is {size} bytes");
    }

    #[test]
    fn api_timeout_is_read_from_the_query() {
        assert_eq!(
            api_timeout(Some("timeout=5s")),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            api_timeout(Some("a=b&timeout=10s")),
            Some(Duration::from_secs(10))
        );
        assert_eq!(api_timeout(Some("timeout=soon")), None);
        assert_eq!(api_timeout(None), None);
    }
}
