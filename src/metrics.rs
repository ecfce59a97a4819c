//! Prometheus metrics (text exposition at `/metrics`).

use crate::policy::Reason;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

/// The `decision` label of `stale_guard_reviews_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewDecision {
    Allow,
    Deny,
    /// Allowed by warn mode.
    Warn,
    /// Allowed by audit mode.
    Audit,
}

impl ReviewDecision {
    pub const ALL: [ReviewDecision; 4] = [
        ReviewDecision::Allow,
        ReviewDecision::Deny,
        ReviewDecision::Warn,
        ReviewDecision::Audit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReviewDecision::Allow => "allow",
            ReviewDecision::Deny => "deny",
            ReviewDecision::Warn => "warn",
            ReviewDecision::Audit => "audit",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// `allow`, `deny`, `warn` (allowed by warn mode) or `audit`.
    pub decision: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheSizeLabels {
    pub source: String,
    pub cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub cache: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Labels of the controller watch gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// The `result` label of `stale_guard_receiver_pushes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    pub result: &'static str,
}

/// Labels of `stale_guard_heads_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HeadsLabels {
    pub source: String,
    /// `recorded`, `conflict`, `followed` or `kept`.
    pub event: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric stale-guard exports.
pub struct Metrics {
    registry: Registry,
    pub reviews: Family<ReviewLabels, Counter>,
    /// Handles into `reviews`, resolved on first use: counting a review is
    /// then one atomic add, not a hash and a lock of the family's map. A
    /// series appears at its first review, as with `get_or_create`.
    review_counters: [[OnceLock<Counter>; Reason::ALL.len()]; ReviewDecision::ALL.len()],
    pub review_duration: Histogram,
    pub bad_requests: Counter,
    pub body_budget_refusals: Counter,
    pub mirror_head_age: Family<SourceLabels, FloatGauge>,
    pub mirror_last_success: Family<SourceLabels, FloatGauge>,
    pub mirror_fetches: Family<SourceLabels, Gauge>,
    pub mirror_on_demand_refused: Family<SourceLabels, Gauge>,
    pub mirror_consecutive_failures: Family<SourceLabels, Gauge>,
    pub mirror_ready: Family<SourceLabels, Gauge>,
    pub cache: Family<CacheLabels, Counter>,
    /// `cache{cache="checksum",result="hit"}`, resolved on first use (one
    /// per warm review).
    checksum_hits: OnceLock<Counter>,
    pub checksum_computations: Counter,
    pub checksum_files: Counter,
    pub checksum_overloaded: Counter,
    pub checksum_queued: Gauge,
    pub cache_entries: Family<CacheSizeLabels, Gauge>,
    pub cache_weight: Family<CacheSizeLabels, Gauge>,
    /// Controller watches (contract section 9), per kind.
    pub controller_objects: Family<KindLabels, Gauge>,
    pub controller_watch_restarts: Family<KindLabels, Gauge>,
    pub controller_watch_relists: Family<KindLabels, Gauge>,
    pub controller_watch_up: Family<KindLabels, Gauge>,
    /// Content verification (contract section 8).
    pub content_comparisons: Family<ResultLabels, Counter>,
    pub renders: Gauge,
    pub render_failures: Gauge,
    pub render_seconds: FloatGauge,
    pub render_cache_bytes: Gauge,
    pub receiver_pushes: Family<PushLabels, Counter>,
    pub receiver_push_to_head: Family<SourceLabels, Histogram, fn() -> Histogram>,
    pub heads: Family<HeadsLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("stale_guard");
        let reviews = Family::<ReviewLabels, Counter>::default();
        registry.register(
            "reviews",
            "AdmissionReviews answered, by decision and reason code",
            reviews.clone(),
        );
        // From 1 ms to 10 s: the API server gives up at timeoutSeconds.
        let review_duration = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "review_duration_seconds",
            "Time from request to verdict",
            review_duration.clone(),
        );
        let bad_requests = Counter::default();
        registry.register(
            "bad_requests",
            "Bodies refused with a 4xx (malformed, oversized, wrong version)",
            bad_requests.clone(),
        );
        let body_budget_refusals = Counter::default();
        registry.register(
            "body_budget_refusals",
            "Reviews refused with 503 because the request body budget (limits.requestBodyBudget, or one address's share) was in use",
            body_budget_refusals.clone(),
        );
        let mirror_head_age = Family::<SourceLabels, FloatGauge>::default();
        registry.register(
            "mirror_head_age_seconds",
            "Seconds since the head commit of each source's branch was committed",
            mirror_head_age.clone(),
        );
        let mirror_last_success = Family::<SourceLabels, FloatGauge>::default();
        registry.register(
            "mirror_last_success_timestamp_seconds",
            "Unix time of the last successful fetch of each source",
            mirror_last_success.clone(),
        );
        let mirror_fetches = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "mirror_fetches",
            "Branch fetches attempted by this process, per source",
            mirror_fetches.clone(),
        );
        let mirror_on_demand_refused = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "mirror_on_demand_refused",
            "Lookups of unknown revisions answered without a fetch because limits.onDemandFetches was spent, per source",
            mirror_on_demand_refused.clone(),
        );
        let mirror_consecutive_failures = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "mirror_consecutive_fetch_failures",
            "Fetches failed in a row, per source (0 after a success)",
            mirror_consecutive_failures.clone(),
        );
        let mirror_ready = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "mirror_ready",
            "1 when the source is synced within maxMirrorStaleness",
            mirror_ready.clone(),
        );
        let cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Checksum cache lookups by result",
            cache.clone(),
        );
        let checksum_computations = Counter::default();
        registry.register(
            "checksum_computations",
            "Overlay checksums computed (not served from cache)",
            checksum_computations.clone(),
        );
        let checksum_files = Counter::default();
        registry.register(
            "checksum_entries",
            "Closure entries included in computed checksums",
            checksum_files.clone(),
        );
        let checksum_overloaded = Counter::default();
        registry.register(
            "checksum_overloaded",
            "Reviews answered at once because too many cold checksums were queued",
            checksum_overloaded.clone(),
        );
        let checksum_queued = Gauge::default();
        registry.register(
            "checksum_queued",
            "Cold checksum computations waiting for a thread",
            checksum_queued.clone(),
        );
        let cache_entries = Family::<CacheSizeLabels, Gauge>::default();
        registry.register(
            "cache_entries",
            "Entries in each checksum cache, by source",
            cache_entries.clone(),
        );
        let cache_weight = Family::<CacheSizeLabels, Gauge>::default();
        registry.register(
            "cache_weight",
            "Weight of each checksum cache, in the unit of its bound (entries; tree and closure entries for trees and results)",
            cache_weight.clone(),
        );
        let controller_objects = Family::<KindLabels, Gauge>::default();
        registry.register(
            "controller_objects",
            "Controller objects (Flux Kustomizations, GitRepositories, Argo CD Applications) in the watch-fed caches",
            controller_objects.clone(),
        );
        let controller_watch_restarts = Family::<KindLabels, Gauge>::default();
        registry.register(
            "controller_watch_restarts",
            "Controller watches started again after an error, since start",
            controller_watch_restarts.clone(),
        );
        let controller_watch_relists = Family::<KindLabels, Gauge>::default();
        registry.register(
            "controller_watch_relists",
            "Controller watches relisted after 410 Gone, since start",
            controller_watch_relists.clone(),
        );
        let controller_watch_up = Family::<KindLabels, Gauge>::default();
        registry.register(
            "controller_watch_up",
            "1 when the kind's first list is in and its watch is not broken",
            controller_watch_up.clone(),
        );
        let content_comparisons = Family::<ResultLabels, Counter>::default();
        registry.register(
            "content_comparisons",
            "Objects compared with head's rendering (content: verify), by result: match, mismatch, not_rendered, render_failed",
            content_comparisons.clone(),
        );
        let renders = Gauge::default();
        registry.register(
            "renders",
            "Overlay renderings run (kustomize processes started) since start",
            renders.clone(),
        );
        let render_failures = Gauge::default();
        registry.register(
            "render_failures",
            "Overlay renderings that failed (non-zero exit, timeout, output too large, unparsable)",
            render_failures.clone(),
        );
        let render_seconds = FloatGauge::default();
        registry.register(
            "render_seconds",
            "Seconds spent rendering overlays since start (materialise, run, parse)",
            render_seconds.clone(),
        );
        let render_cache_bytes = Gauge::default();
        registry.register(
            "render_cache_bytes",
            "Bytes of parsed renderings held in the rendering cache (render.cacheBytes)",
            render_cache_bytes.clone(),
        );
        let receiver_pushes = Family::<PushLabels, Counter>::default();
        registry.register(
            "receiver_pushes",
            "Push events received on receiver.path, by result (accepted, ignored, unauthorized, malformed, too_large)",
            receiver_pushes.clone(),
        );
        // From 50 ms to 2 min: a fetch is bounded by fetchTimeout.
        let receiver_push_to_head =
            Family::<SourceLabels, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0])
            });
        registry.register(
            "receiver_push_to_head_seconds",
            "Seconds from a push received to the fetch it caused done (whether or not the head moved), per source",
            receiver_push_to_head.clone(),
        );
        let heads = Family::<HeadsLabels, Counter>::default();
        registry.register(
            "heads",
            "Shared head records (heads:), per source: recorded (this replica wrote its head), conflict (409: another replica wrote first), followed (a record started a fetch), kept (a record this replica could not prove older was left alone)",
            heads.clone(),
        );
        Metrics {
            registry,
            reviews,
            review_counters: Default::default(),
            checksum_hits: OnceLock::new(),
            review_duration,
            bad_requests,
            body_budget_refusals,
            mirror_head_age,
            mirror_last_success,
            mirror_fetches,
            mirror_on_demand_refused,
            mirror_consecutive_failures,
            mirror_ready,
            cache,
            checksum_computations,
            checksum_files,
            checksum_overloaded,
            checksum_queued,
            cache_entries,
            cache_weight,
            controller_objects,
            controller_watch_restarts,
            controller_watch_relists,
            controller_watch_up,
            content_comparisons,
            renders,
            render_failures,
            render_seconds,
            render_cache_bytes,
            receiver_pushes,
            receiver_push_to_head,
            heads,
        }
    }

    /// Counts one review with its decision and reason code.
    /// Counts one content comparison by its result.
    /// A checksum read from the cache.
    pub fn count_checksum_hit(&self) {
        self.checksum_hits
            .get_or_init(|| {
                self.cache
                    .get_or_create(&CacheLabels {
                        cache: "checksum",
                        result: "hit",
                    })
                    .clone()
            })
            .inc();
    }

    pub fn count_comparison(&self, result: &'static str) {
        self.content_comparisons
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn count_review(&self, decision: ReviewDecision, reason: Reason) {
        let Some(slot) = self
            .review_counters
            .get(decision as usize)
            .and_then(|row| row.get(reason as usize))
        else {
            return;
        };
        slot.get_or_init(|| {
            self.reviews
                .get_or_create(&ReviewLabels {
                    decision: decision.as_str(),
                    reason: reason.as_str(),
                })
                .clone()
        })
        .inc();
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn source(name: &str) -> SourceLabels {
        SourceLabels {
            source: name.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cached handles count into the exported family, per label pair.
    #[test]
    fn count_review_counts_per_decision_and_reason() {
        let m = Metrics::new();
        m.count_review(ReviewDecision::Deny, Reason::StaleRevision);
        m.count_review(ReviewDecision::Deny, Reason::StaleRevision);
        m.count_review(ReviewDecision::Warn, Reason::StaleRevision);
        m.count_review(ReviewDecision::Allow, Reason::Fresh);
        let text = m.encode();
        for line in [
            r#"stale_guard_reviews_total{decision="deny",reason="StaleRevision"} 2"#,
            r#"stale_guard_reviews_total{decision="warn",reason="StaleRevision"} 1"#,
            r#"stale_guard_reviews_total{decision="allow",reason="Fresh"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        assert!(!text.contains(r#"decision="audit""#), "{text}");
    }
}
