//! The I/O side of content verification (contract section 8): for each
//! rule with `content: verify`, head's rendering is started as soon as the
//! mirror sees a new head, and the earlier distinct renderings are kept to
//! explain a mismatch. The comparison and the verdict are `policy`'s.

use super::{AppState, Rule, Unanswered};
use crate::checksum::{Checksum, ChecksumEngine};
use crate::mirror::Head;
use crate::render::build::BuildOptions;
use crate::render::{Renderer, Rendering};
use gix::ObjectId;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

/// One earlier distinct rendering of a rule's overlay.
#[derive(Clone)]
pub(super) struct Earlier {
    /// The newest commit on the first-parent history that rendered it (the
    /// one its successor replaced).
    pub commit: ObjectId,
    pub rendering: Arc<Rendering>,
}

/// A content rule's renderings beyond the cache: the head's as last
/// prepared, and the earlier ones, newest first.
#[derive(Default)]
pub(super) struct Renderings {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    current: Option<(ObjectId, Arc<Rendering>)>,
    history: VecDeque<Earlier>,
    /// Whether the first-parent walk that fills `history` at start began,
    /// and whether it is over.
    walked: bool,
    filled: bool,
}

impl Renderings {
    /// Whether head was rendered and the earlier renderings were looked
    /// for (those that could be rendered are kept).
    pub(super) fn filled(&self) -> bool {
        lock(&self.state).filled
    }

    /// Head's rendering as last prepared: what a review of this rule most
    /// likely compares with.
    pub(super) fn current(&self) -> Option<Arc<Rendering>> {
        lock(&self.state).current.as_ref().map(|(_, r)| r.clone())
    }

    /// Head's rendering as last prepared, when it is `commit`'s.
    fn current_at(&self, commit: ObjectId) -> Option<Arc<Rendering>> {
        lock(&self.state)
            .current
            .as_ref()
            .filter(|(at, _)| *at == commit)
            .map(|(_, r)| r.clone())
    }

    /// The earlier renderings, newest first, without head's checksum.
    pub(super) fn history(&self, head: &Checksum) -> Vec<Earlier> {
        lock(&self.state)
            .history
            .iter()
            .filter(|e| e.rendering.checksum != *head)
            .cloned()
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How a rendering is built: the options and the variables.
pub(super) struct Build<'r> {
    options: &'r BuildOptions,
    vars: BTreeMap<String, String>,
}

/// A plain `kustomize build`.
static PLAIN: BuildOptions = BuildOptions::None;

impl Default for Build<'_> {
    fn default() -> Self {
        Build {
            options: &PLAIN,
            vars: BTreeMap::new(),
        }
    }
}

/// What a review of a content rule compares with.
pub(super) enum Rendered {
    /// Head's overlay cannot be checksummed or rendered: why.
    Failed(String),
    Ready {
        head: Arc<Rendering>,
        /// The previous head and its rendering, within the grace period.
        grace: Option<(ObjectId, Arc<Rendering>)>,
        /// Empty until a verdict needs to explain a difference
        /// ([`Renderings::history`]).
        history: Vec<Earlier>,
    },
}

impl AppState {
    fn engine(&self, rule: &Rule) -> ChecksumEngine {
        ChecksumEngine::with_caches(rule.source.mirror.repository(), rule.source.caches.clone())
            .with_size_limits(self.config.limits.size_limits())
    }

    /// How the rule's overlay is built: plainly, or as its controller
    /// builds it, with the post-build variables as they are now (read
    /// objects are cached for a short time: no API call per review). The
    /// review and the head's pre-rendering both take them from here, so
    /// they render the same thing.
    async fn build<'r>(&self, rule: &'r Rule) -> Result<Build<'r>, String> {
        let Some(build) = &rule.build else {
            return Ok(Build::default());
        };
        let options = build.options.as_ref().map_err(Clone::clone)?;
        let vars = match &build.post_build {
            // Boxed, as a render below: kept out of every review's future.
            Some(inputs) if options.substitutes() => {
                Box::pin(crate::controllers::variables::post_build_variables(
                    self.variables.as_deref(),
                    inputs,
                ))
                .await?
            }
            _ => BTreeMap::new(),
        };
        Ok(Build { options, vars })
    }

    /// The rendering of the rule's overlay at `commit`, whose overlay
    /// checksum is `sum`, built as `build` says: cached, or the one run
    /// for that key.
    async fn rendering(
        &self,
        renderer: &Renderer,
        rule: &Rule,
        build: &Build<'_>,
        commit: ObjectId,
        sum: Checksum,
    ) -> Result<Arc<Rendering>, String> {
        let result = match renderer.cached_with(&sum, build.options, &build.vars) {
            Some(cached) => cached,
            // Boxed: inline, a render's state would make every review's
            // future (moved and copied per request) larger.
            None => {
                Box::pin(renderer.render_with(
                    self.engine(rule),
                    commit,
                    &rule.config.overlay,
                    sum,
                    build.options,
                    &build.vars,
                ))
                .await
            }
        };
        result.map_err(|e| crate::echo::message(e.to_string()))
    }

    /// Head's rendering, the previous head's within the grace period, and
    /// the earlier ones: everything a content verdict reads.
    pub(super) async fn renderings(
        &self,
        rule: &Rule,
        head: &Head,
        in_grace: bool,
    ) -> Result<Rendered, Unanswered> {
        let (Some(renderer), Some(kept)) = (&self.renderer, &rule.renderings) else {
            return Ok(Rendered::Failed(
                "content verification is not set up for this rule".to_owned(),
            ));
        };
        let build = match self.build(rule).await {
            Ok(build) => build,
            Err(why) => return Ok(Rendered::Failed(why)),
        };
        // Warm, a plain build's head rendering is the one prepared when
        // the head moved (any commit renders as its checksum does).
        let prepared = rule
            .build
            .is_none()
            .then(|| kept.current_at(head.commit))
            .flatten();
        let at_head = match prepared {
            Some(prepared) => prepared,
            None => {
                let sum = match self.checksum(rule, head.commit).await? {
                    Ok(sum) => sum,
                    Err(why) => return Ok(Rendered::Failed(why)),
                };
                match self
                    .rendering(renderer, rule, &build, head.commit, sum)
                    .await
                {
                    Ok(r) => r,
                    Err(why) => return Ok(Rendered::Failed(why)),
                }
            }
        };
        let mut grace = None;
        if in_grace
            && let Some(previous) = head.previous
            && let Ok(prev_sum) = self.checksum(rule, previous).await?
            && let Ok(r) = self
                .rendering(renderer, rule, &build, previous, prev_sum)
                .await
        {
            grace = Some((previous, r));
        }
        Ok(Rendered::Ready {
            head: at_head,
            grace,
            history: Vec::new(),
        })
    }
}

/// Keeps a content rule's renderings following the head: renders each new
/// head at once (before a review asks), moves the replaced one into the
/// history, and at the first head walks back the first-parent history for
/// the earlier distinct renderings. Runs until `stop` resolves.
pub(super) async fn follow_head(
    state: Arc<AppState>,
    rule: Arc<Rule>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let rule = &*rule;
    let mut heads = rule.source.mirror.head_changes();
    loop {
        let head = *heads.borrow_and_update();
        if let Some(head) = head {
            state.prepare(rule, head).await;
        }
        tokio::select! {
            changed = heads.changed() => if changed.is_err() { return },
            () = &mut stop => return,
        }
    }
}

impl AppState {
    async fn prepare(&self, rule: &Rule, head: ObjectId) {
        let (Some(renderer), Some(kept)) = (&self.renderer, &rule.renderings) else {
            return;
        };
        let name = &rule.config.name;
        let sum = match self.blocking_checksum(rule, head).await {
            Some(sum) => sum,
            None => return,
        };
        let build = match self.build(rule).await {
            Ok(build) => build,
            Err(why) => {
                tracing::warn!(rule = %name, %head, error = %why, "head's build inputs are not available");
                return;
            }
        };
        let rendering = match self.rendering(renderer, rule, &build, head, sum).await {
            Ok(r) => r,
            Err(why) => {
                tracing::warn!(rule = %name, %head, error = %why, "head's rendering failed");
                return;
            }
        };
        tracing::info!(rule = %name, %head, objects = rendering.len(), took_ms = rendering.took.as_millis() as u64, "head rendered");
        let walk = {
            let mut st = lock(&kept.state);
            if let Some((commit, previous)) = st.current.take()
                && previous.checksum != rendering.checksum
            {
                st.history
                    .retain(|e| e.rendering.checksum != previous.checksum);
                st.history.push_front(Earlier {
                    commit,
                    rendering: previous,
                });
            }
            st.history
                .retain(|e| e.rendering.checksum != rendering.checksum);
            st.history.truncate(self.config.render.history);
            st.current = Some((head, rendering.clone()));
            !std::mem::replace(&mut st.walked, true)
        };
        if walk && self.config.render.history > 0 {
            self.fill_history(renderer, rule, &build, kept, head, rendering.checksum)
                .await;
        }
        lock(&kept.state).filled = true;
    }

    /// The overlay checksum at `commit` off the async workers (the
    /// background path: not counted against the review's cold limits).
    async fn blocking_checksum(&self, rule: &Rule, commit: ObjectId) -> Option<Checksum> {
        let engine = self.engine(rule);
        let overlay = rule.config.overlay.clone();
        let result = tokio::task::spawn_blocking(move || engine.checksum(commit, &overlay)).await;
        match result {
            Ok(Ok(sum)) => Some(sum.checksum),
            Ok(Err(e)) => {
                tracing::warn!(rule = %rule.config.name, %commit, error = %e, "overlay cannot be checksummed for rendering");
                None
            }
            Err(e) => {
                tracing::warn!(rule = %rule.config.name, error = %e, "checksum task failed");
                None
            }
        }
    }

    /// Walks the first-parent history back from `head` (at most
    /// `render.historyDepth` commits) for the last `render.history`
    /// distinct overlay checksums, and renders them, newest first.
    async fn fill_history(
        &self,
        renderer: &Renderer,
        rule: &Rule,
        build: &Build<'_>,
        kept: &Renderings,
        head: ObjectId,
        head_sum: Checksum,
    ) {
        let engine = self.engine(rule);
        let overlay = rule.config.overlay.clone();
        let (want, depth) = (self.config.render.history, self.config.render.history_depth);
        let repo = rule.source.mirror.repository();
        let found = tokio::task::spawn_blocking(move || {
            earlier_checksums(&repo, &engine, &overlay, head, head_sum, want, depth)
        })
        .await
        .unwrap_or_default();
        for (commit, sum) in found {
            match self.rendering(renderer, rule, build, commit, sum).await {
                Ok(rendering) => {
                    let mut st = lock(&kept.state);
                    if st.history.len() < want
                        && !st.history.iter().any(|e| e.rendering.checksum == sum)
                    {
                        st.history.push_back(Earlier { commit, rendering });
                    }
                }
                Err(why) => {
                    tracing::info!(rule = %rule.config.name, %commit, error = %why, "an earlier rendering failed; not kept");
                }
            }
        }
    }
}

/// Going back from `head` by first parents, the newest commit of each run
/// of equal overlay checksums other than head's, up to `want` of them,
/// looking at no more than `depth` commits. Commits whose overlay cannot
/// be checksummed end a run and are skipped.
fn earlier_checksums(
    repo: &gix::ThreadSafeRepository,
    engine: &ChecksumEngine,
    overlay: &str,
    head: ObjectId,
    head_sum: Checksum,
    want: usize,
    depth: usize,
) -> Vec<(ObjectId, Checksum)> {
    let repo = repo.to_thread_local();
    let mut found: Vec<(ObjectId, Checksum)> = Vec::new();
    let mut last = Some(head_sum);
    let mut commit = head;
    for _ in 0..depth {
        let Some(parent) = repo
            .find_commit(commit)
            .ok()
            .and_then(|c| c.parent_ids().next().map(|id| id.detach()))
        else {
            break;
        };
        commit = parent;
        let sum = engine.checksum(commit, overlay).ok().map(|s| s.checksum);
        if let Some(s) = sum
            && sum != last
            && s != head_sum
            && !found.iter().any(|(_, f)| *f == s)
        {
            found.push((commit, s));
            if found.len() >= want {
                break;
            }
        }
        last = sum;
    }
    found
}
