//! The decision table (contract section 3), as a pure function.
//!
//! [`decide`] takes what the request says, the rule it matched and the facts
//! gathered from the mirror and the checksum engine, and returns the verdict
//! with its reason code and message. It does no I/O: the server gathers the
//! facts (fetching, computing checksums, under a deadline) and calls it.

use crate::checksum::Checksum;
use std::fmt;
use std::time::Duration;

/// Declares [`Reason`] from one list: each code's contract string is its
/// name, and its contract verdict sits beside it. The enum, [`Reason::ALL`]
/// (the metrics' index), [`Reason::as_str`] and [`Reason::allows`] all come
/// from the list, so a code added here is everywhere, and every `match` on
/// `Reason` elsewhere must handle it to compile.
macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $name:ident => $verdict:ident,)*) => {
        /// Reason codes (contract section 3).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[doc = $doc])* $name,)*
        }

        impl Reason {
            /// Every code, in declaration order (`reason as usize` indexes it).
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            /// The contract string.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)*
                }
            }

            /// Whether the contract's verdict for this reason is "allow"
            /// (before a rule's mode or the failure policy soften a deny).
            pub fn allows(self) -> bool {
                match self {
                    $(Reason::$name => reasons!(@allows $verdict),)*
                }
            }
        }
    };
    (@allows allow) => { true };
    (@allows deny) => { false };
}

reasons! {
    /// No rule matches; DELETE/CONNECT; a subresource.
    OutOfScope => allow,
    /// The revision is the branch head and the checksum matches.
    Fresh => allow,
    /// `staleness: content`: an ancestor of head with head's checksum.
    UnchangedOverlay => allow,
    /// A break-glass user or group; logged as the denial it overrode.
    BreakGlass => allow,
    MissingRevision => deny,
    MalformedRevision => deny,
    MissingChecksum => deny,
    MalformedChecksum => deny,
    StaleRevision => deny,
    UnknownRevision => deny,
    RevisionNotOnBranch => deny,
    ChecksumMismatch => deny,
    OverlayError => deny,
    /// The object differs from head's rendering (section 8).
    ContentMismatch => deny,
    /// Head's rendering has no object with this identity (section 8).
    NotRendered => deny,
    /// `provenance: flux|argo`: the controller's git source is not one of
    /// the configured sources (section 9).
    UntrackedSource => allow,
    /// Configurable: `failure.mirrorUnavailable`.
    MirrorUnavailable => deny,
    /// Configurable: `failure.decisionTimeoutAction`.
    DecisionTimeout => deny,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A revision annotation, normalised: 40 lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Revision(pub [u8; 20]);

impl Revision {
    /// Accepts `<40 hex>`, `sha1:<40 hex>` and Flux's `<branch>@sha1:<40 hex>`;
    /// hex is case-insensitive. Abbreviated ids are refused.
    pub fn parse(value: &str) -> Result<Revision, String> {
        Revision::parse_claim(value).map(|(revision, _)| revision)
    }

    /// [`Revision::parse`], also returning the branch a
    /// `<branch>@sha1:<40 hex>` value names.
    pub fn parse_claim(value: &str) -> Result<(Revision, Option<&str>), String> {
        let (branch, hex) = if let Some((branch, rest)) = value.rsplit_once('@') {
            if branch.is_empty() {
                return Err("empty branch before '@'".to_owned());
            }
            let hex = rest
                .strip_prefix("sha1:")
                .ok_or_else(|| "expected <branch>@sha1:<40 hex digits>".to_owned())?;
            (Some(branch), hex)
        } else {
            (None, value.strip_prefix("sha1:").unwrap_or(value))
        };
        if hex.len() != 40 {
            return Err(format!(
                "expected a full 40-digit commit id, found {} characters",
                hex.len()
            ));
        }
        let mut out = [0u8; 20];
        // Both cases are accepted by the decoder: no lower-cased copy.
        hex::decode_to_slice(hex, &mut out)
            .map_err(|_| "commit id is not hexadecimal".to_owned())?;
        Ok((Revision(out), branch))
    }

    /// The 40 lower-case hex digits. On every verdict's audit annotations,
    /// so without the `hex` crate's char-by-char `String` building.
    pub fn to_hex(self) -> String {
        let digits = hex_digits(self.0);
        // ASCII by construction.
        String::from_utf8_lossy(&digits).into_owned()
    }

    /// The 7-digit abbreviation used in messages.
    pub fn short(self) -> ShortId {
        let digits = hex_digits(self.0);
        let mut short = [0u8; 7];
        short.copy_from_slice(&digits[..7]);
        ShortId(short)
    }
}

/// The first 7 hex digits of a commit id, for messages (formatted without
/// allocating).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ShortId([u8; 7]);

impl ShortId {
    pub fn as_str(&self) -> &str {
        // Hex digits are ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl fmt::Debug for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The 40 lower-case hex digits of a commit id, without allocating.
pub(crate) fn hex_digits(bytes: [u8; 20]) -> [u8; 40] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 40];
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    out
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = hex_digits(self.0);
        // Hex digits are ASCII.
        f.write_str(std::str::from_utf8(&digits).unwrap_or_default())
    }
}

/// What an annotation holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Annotation<T> {
    /// Absent or empty; near-miss keys that are present, if any.
    Missing {
        near_misses: Vec<String>,
    },
    Malformed {
        value: String,
        why: String,
    },
    Valid(T),
}

/// Reads the annotation `key` (matched whole and exactly, never split on
/// `.` or `/`) from `annotations`, naming near misses when it is absent.
pub fn read_annotation<'a, T>(
    annotations: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
    key: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Annotation<T> {
    let value = annotations
        .clone()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v);
    match value {
        Some(v) if !v.is_empty() => match parse(v) {
            Ok(t) => Annotation::Valid(t),
            Err(why) => Annotation::Malformed {
                // Capped on the way in: a 7 MiB value is not copied whole.
                value: crate::echo::value(v),
                why,
            },
        },
        _ => {
            // Sorted and once each, however the map was written.
            let mut near_misses: Vec<String> = annotations
                .into_iter()
                .map(|(k, _)| k)
                .filter(|k| *k != key && is_near_miss(k, key))
                .map(str::to_owned)
                .collect();
            near_misses.sort_unstable();
            near_misses.dedup();
            Annotation::Missing { near_misses }
        }
    }
}

/// A key that is probably the expected one, mangled: a prefix of it ending
/// at a `.` or `/` boundary (a key split on its dots: `fluxcd` for
/// `fluxcd.io/checksum`), the same key in another case, or the same name
/// under another prefix.
pub fn is_near_miss(candidate: &str, key: &str) -> bool {
    if candidate.is_empty() {
        return false;
    }
    if candidate.eq_ignore_ascii_case(key) {
        return true;
    }
    if let Some(rest) = key.strip_prefix(candidate)
        && (rest.starts_with('.') || rest.starts_with('/'))
    {
        return true;
    }
    let name = |k: &str| {
        k.rsplit_once('/')
            .map_or(k, |(_, n)| n)
            .to_ascii_lowercase()
    };
    name(candidate) == name(key)
}

/// How a rule acts on a denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Warn,
    Audit,
}

/// Which older revisions a rule lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Staleness {
    /// Only the branch head passes.
    #[default]
    Strict,
    /// An ancestor passes when the overlay checksum is unchanged since.
    Content,
}

/// Where a rule reads the revision an object claims (contract sections 8
/// and 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provenance {
    /// The revision and checksum annotations (section 2).
    #[default]
    Annotations,
    /// No claim is read: only the content is checked.
    None,
    /// The Flux Kustomization that applies the object.
    Flux,
    /// The Argo CD Application that applies the object.
    Argo,
}

/// Whether a rule compares the object with head's rendering (section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentCheck {
    #[default]
    Off,
    Verify,
}

/// The part of a rule the decision needs (matching is the caller's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulePolicy {
    pub name: String,
    pub branch: String,
    pub mode: Mode,
    pub staleness: Staleness,
    /// After the head moves, the previous head still passes this long.
    pub grace_period: Duration,
}

/// What the request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFacts {
    pub revision: Annotation<Revision>,
    /// The branch a `<branch>@sha1:<hex>` revision names (`None` for the
    /// forms without one).
    pub branch: Option<String>,
    /// Not read for a claim by a controller object.
    pub checksum: Annotation<Checksum>,
    pub break_glass: bool,
    /// Where the revision claim comes from.
    pub claimed_by: ClaimedBy,
}

/// Where an object's revision claim comes from (contract sections 2 and
/// 9): its annotations, or the controller object applying it. A
/// controller claims no checksum: what it applies is the overlay at its
/// revision, which is recomputed there and at head.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ClaimedBy {
    #[default]
    Annotations,
    Controller {
        /// `Kustomization flux-system/apps`, `Application argocd/web`.
        object: String,
        /// The field read (`status.lastAttemptedRevision`, ...).
        field: &'static str,
    },
}

impl ClaimedBy {
    /// ` (status.lastAttemptedRevision of Kustomization flux-system/apps)`,
    /// or nothing for annotations; written straight into the message.
    fn source(&self) -> impl std::fmt::Display + '_ {
        struct Source<'a>(&'a ClaimedBy);
        impl std::fmt::Display for Source<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self.0 {
                    ClaimedBy::Annotations => Ok(()),
                    ClaimedBy::Controller { object, field } => {
                        write!(f, " ({field} of {})", crate::echo::Capped(object))
                    }
                }
            }
        }
        Source(self)
    }
}

/// The branch head as the mirror knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadFacts {
    pub commit: Revision,
    /// Seconds since the epoch of the head commit's committer time.
    pub commit_time: i64,
    /// The head before the last move, and how long ago the move was seen.
    pub previous: Option<(Revision, Duration)>,
}

/// Where the annotated revision stands relative to the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Not in the mirror, even after an on-demand fetch.
    Unknown,
    Head,
    Ancestor {
        behind: u64,
        commit_time: i64,
    },
    /// Known, but neither the head nor an ancestor of it.
    OffBranch,
}

impl Position {
    /// Where a revision stands, from the mirror's facts about it.
    pub fn of(facts: &crate::mirror::RevisionFacts) -> Position {
        if !facts.known {
            Position::Unknown
        } else if facts.is_head {
            Position::Head
        } else if facts.is_ancestor_of_head {
            Position::Ancestor {
                behind: facts.behind_commits.unwrap_or(0),
                commit_time: facts
                    .commit_time
                    .or(facts.head_commit_time)
                    .unwrap_or_default(),
            }
        } else {
            Position::OffBranch
        }
    }
}

/// The overlay checksum at a commit, or why there is none.
pub type ChecksumFact = Result<Checksum, String>;

/// Everything gathered for one in-scope request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorFacts {
    /// Never synced, or the last successful fetch is too old.
    Unavailable { why: String },
    Available {
        head: HeadFacts,
        position: Position,
        /// At the annotated revision (None when not needed or not known).
        at_revision: Option<ChecksumFact>,
        /// At the head (needed by `staleness: content` only).
        at_head: Option<ChecksumFact>,
    },
}

/// What the failure policy says for an unavailable mirror or a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    #[default]
    Deny,
    Allow,
}

/// The verdict, with what the audit trail records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub reason: Reason,
    /// The response's `allowed`, after the rule's mode.
    pub allowed: bool,
    /// `<Reason>: what was found, what was expected, what to do`.
    pub message: String,
    pub rule: Option<String>,
    pub revision: Option<Revision>,
    pub head: Option<Revision>,
    pub expected_checksum: Option<Checksum>,
    pub found_checksum: Option<Checksum>,
    /// For `BreakGlass`: the denial that was overridden.
    pub overridden: Option<Reason>,
    /// AdmissionResponse warnings (warn mode).
    pub warnings: Vec<String>,
    pub mode: Option<Mode>,
    /// For `ContentMismatch`: the first differing field's path.
    pub field: Option<String>,
}

impl Decision {
    pub fn out_of_scope(why: &str) -> Decision {
        Decision {
            reason: Reason::OutOfScope,
            allowed: true,
            message: format!("OutOfScope: {why}"),
            rule: None,
            revision: None,
            head: None,
            expected_checksum: None,
            found_checksum: None,
            overridden: None,
            warnings: Vec::new(),
            mode: None,
            field: None,
        }
    }

    /// True when this verdict must be logged (every non-allow, and break-glass).
    pub fn is_denial(&self) -> bool {
        !self.reason.allows() || self.overridden.is_some()
    }
}

/// Whether `claimed`, the branch a revision annotation names, is the
/// rule's `branch`, by its short name or its full ref (`refs/heads/main`,
/// which Flux writes for a GitRepository with `ref.name`).
pub fn is_rule_branch(claimed: &str, branch: &str) -> bool {
    claimed == branch || claimed.strip_prefix("refs/heads/") == Some(branch)
}

/// True when the request's annotations alone decide the verdict: either
/// annotation missing or malformed, or a revision that names another
/// branch than the rule's. No mirror fact (and no fetch) is needed then.
pub fn decided_by_annotations(rule: &RulePolicy, request: &RequestFacts) -> bool {
    let checksum_read = request.claimed_by == ClaimedBy::Annotations;
    !matches!(request.revision, Annotation::Valid(_))
        || (checksum_read && !matches!(request.checksum, Annotation::Valid(_)))
        || request
            .branch
            .as_deref()
            .is_some_and(|claimed| !is_rule_branch(claimed, &rule.branch))
}

/// Which checksums [`decide`] will need for a revision at `position`:
/// (at the revision, at the head). A strictly stale revision outside the
/// grace window is denied without any (cheap under load); a head revision
/// needs its own; `staleness: content` compares with the head.
pub fn needed_checksums(
    rule: &RulePolicy,
    revision: Revision,
    head: &HeadFacts,
    position: Position,
) -> (bool, bool) {
    let in_grace = head
        .previous
        .is_some_and(|(prev, since)| prev == revision && since <= rule.grace_period);
    match position {
        Position::Head => (true, false),
        Position::Ancestor { .. } => match rule.staleness {
            Staleness::Strict => (in_grace, false),
            Staleness::Content => (true, !in_grace),
        },
        Position::Unknown | Position::OffBranch => (false, false),
    }
}

/// The verdict for an in-scope request matched by `rule`.
pub fn decide(
    rule: &RulePolicy,
    request: &RequestFacts,
    facts: &MirrorFacts,
    mirror_unavailable: FailureAction,
) -> Decision {
    let (reason, detail, context) = evaluate(rule, request, facts);
    finish(rule, request, reason, detail, context, mirror_unavailable)
}

/// One rendering of a rule's overlay, as far as a content verdict reads
/// it: where its commit stands and its object with the request's identity.
#[derive(Debug, Clone, Copy)]
pub struct RenderedAt<'a> {
    pub commit: Revision,
    /// Where the commit stands relative to the head ([`Position::Head`]
    /// for head's own rendering).
    pub position: Position,
    /// The rendered object with the request's identity, if it has one.
    pub object: Option<&'a serde_json::Value>,
}

/// What content verification (contract section 8) compares, gathered by
/// the server: head's rendering and the earlier ones that explain a
/// mismatch.
#[derive(Debug, Clone)]
pub enum ContentFacts<'a> {
    /// Head's rendering failed: why (kustomize's first error line).
    RenderFailed { why: String },
    Rendered {
        head: RenderedAt<'a>,
        /// The previous head's rendering, while the rule's grace period
        /// after the head moved lasts.
        in_grace: Option<RenderedAt<'a>>,
        /// Earlier distinct renderings, newest first.
        history: Vec<RenderedAt<'a>>,
    },
}

/// The object under review, for content verification.
#[derive(Debug, Clone, Copy)]
pub struct ReviewedObject<'a> {
    pub identity: &'a crate::content::Identity,
    pub object: &'a serde_json::Value,
}

/// The verdict for a rule with the given checks (contract sections 3 and
/// 8): `MirrorUnavailable` first, then the provenance (the annotations, or
/// none), then the content when `content` is given (`content: verify`).
/// `Fresh` means every enabled check passed.
pub fn decide_checks(
    rule: &RulePolicy,
    provenance: Provenance,
    request: &RequestFacts,
    facts: &MirrorFacts,
    content: Option<(ReviewedObject<'_>, &ContentFacts<'_>)>,
    mirror_unavailable: FailureAction,
) -> Decision {
    let (mut reason, mut detail, mut cx) = match provenance {
        Provenance::None => match facts {
            MirrorFacts::Unavailable { why } => (
                Reason::MirrorUnavailable,
                format!("cannot check the object against head's rendering: {why}"),
                Context::default(),
            ),
            MirrorFacts::Available { head, .. } => (
                Reason::Fresh,
                String::new(),
                Context {
                    head: Some(head.commit),
                    ..Context::default()
                },
            ),
        },
        Provenance::Annotations | Provenance::Flux | Provenance::Argo => {
            evaluate(rule, request, facts)
        }
    };
    if reason.allows()
        && let (Some((object, content)), MirrorFacts::Available { head, .. }) = (content, facts)
    {
        match content_verdict(rule, head, object, content) {
            Ok(passed) => {
                if detail.is_empty() {
                    detail = passed;
                } else {
                    detail.push_str("; ");
                    detail.push_str(&passed);
                }
            }
            Err((denied, why, field)) => {
                reason = denied;
                detail = why;
                cx.field = field;
            }
        }
    }
    finish(rule, request, reason, detail, cx, mirror_unavailable)
}

/// Whether the provenance check passes, so that the content is compared
/// next (the server renders only then).
pub fn provenance_passes(
    rule: &RulePolicy,
    provenance: Provenance,
    request: &RequestFacts,
    facts: &MirrorFacts,
) -> bool {
    match provenance {
        Provenance::None => matches!(facts, MirrorFacts::Available { .. }),
        Provenance::Annotations | Provenance::Flux | Provenance::Argo => {
            evaluate(rule, request, facts).0.allows()
        }
    }
}

/// The verdict when a controller object gives no revision to check:
/// `MissingRevision` or `MalformedRevision` naming what was looked for,
/// or `UntrackedSource` (an allow) when its git source is not configured.
pub fn without_claim(
    rule: &RulePolicy,
    request: &RequestFacts,
    reason: Reason,
    detail: String,
) -> Decision {
    let detail = match reason {
        Reason::UntrackedSource => format!("{detail}; add it to sources to guard it"),
        _ => detail,
    };
    finish(
        rule,
        request,
        reason,
        detail,
        Context::default(),
        FailureAction::Deny,
    )
}

/// The verdict for an object content verification cannot look up: it has
/// no identity (`why` says what is missing), so no rendering renders it.
pub fn unverifiable_object(rule: &RulePolicy, request: &RequestFacts, why: &str) -> Decision {
    let detail = format!("{why}; it cannot be compared with head's rendering");
    finish(
        rule,
        request,
        Reason::NotRendered,
        detail,
        revision_only(request),
        FailureAction::Deny,
    )
}

/// Content verification as a pure function: `Ok(what passed)`, or
/// `Err((reason, message, differing path))`.
fn content_verdict(
    rule: &RulePolicy,
    head: &HeadFacts,
    reviewed: ReviewedObject<'_>,
    content: &ContentFacts<'_>,
) -> Result<String, (Reason, String, Option<String>)> {
    let head_name = format!("{}@{}", rule.branch, head.commit.short());
    let (at_head, in_grace, history) = match content {
        ContentFacts::RenderFailed { why } => {
            return Err((
                Reason::OverlayError,
                format!("the overlay cannot be rendered at {head_name}: {why}"),
                None,
            ));
        }
        ContentFacts::Rendered {
            head,
            in_grace,
            history,
        } => (head, in_grace, history),
    };
    let object = reviewed.object;
    let matches = |r: &RenderedAt<'_>| r.object.is_some_and(|o| crate::content::matches(o, object));
    let compared = at_head.object.map(|o| crate::content::compare(o, object));
    if let Some(Ok(())) = compared {
        return Ok(format!("the object matches the rendering at {head_name}"));
    }
    if let Some(previous) = in_grace.as_ref().filter(|p| matches(p)) {
        return Ok(format!(
            "the object matches the rendering at {}, the head of {} until moments ago (within the grace period)",
            previous.commit.short(),
            rule.branch
        ));
    }
    // The product's signature: which earlier rendering the object is.
    let explain = || match history.iter().find(|r| matches(r)) {
        Some(r) => format!(
            "; it matches the rendering at {}, {}",
            r.commit.short(),
            how_far_behind(r.position, head, &head_name)
        ),
        None if history.is_empty() => String::new(),
        None => format!(
            "; it matches none of the {} earlier renderings kept",
            history.len()
        ),
    };
    match compared {
        None => Err((
            Reason::NotRendered,
            format!(
                "the rendering at {head_name} has no {} (removed from the overlay, renamed, or not from this overlay){}; re-render from head or check the rule's match",
                crate::echo::Capped(&reviewed.identity.to_string()),
                explain()
            ),
            None,
        )),
        Some(Err(difference)) => Err((
            Reason::ContentMismatch,
            format!(
                "{} differs from the rendering at {head_name}: {difference}{}; re-render from head",
                crate::echo::Capped(&reviewed.identity.to_string()),
                explain()
            ),
            Some(crate::echo::value(&difference.path)),
        )),
        Some(Ok(())) => Ok(String::new()),
    }
}

/// `36 commits and 40 days behind main@950bf0f`.
fn how_far_behind(position: Position, head: &HeadFacts, head_name: &str) -> String {
    match position {
        Position::Head => format!("the head, {head_name}"),
        Position::Ancestor {
            behind,
            commit_time,
        } => format!(
            "{} and {} behind {head_name}",
            plural(behind, "commit"),
            human_age(head.commit_time.saturating_sub(commit_time))
        ),
        Position::OffBranch => format!("a commit that is not on the history of {head_name}"),
        Position::Unknown => "a commit no longer in the mirror".to_owned(),
    }
}

/// The context of a verdict reached without mirror facts.
fn revision_only(request: &RequestFacts) -> Context {
    Context {
        revision: match request.revision {
            Annotation::Valid(r) => Some(r),
            _ => None,
        },
        ..Context::default()
    }
}

/// The verdict when no decision was reached within `budget`.
pub fn timed_out(
    rule: &RulePolicy,
    request: &RequestFacts,
    budget: Duration,
    action: FailureAction,
) -> Decision {
    let cx = revision_only(request);
    let detail = format!(
        "no verdict within {} ms (fetching or checksumming took too long); retry, and check the mirror's health",
        budget.as_millis()
    );
    finish(rule, request, Reason::DecisionTimeout, detail, cx, action)
}

/// The verdict when the review was not attempted because `queued` cold
/// checksum computations already wait: answered at once, with the same
/// code and failure action as a timeout (the API server would otherwise
/// get one later).
pub fn overloaded(
    rule: &RulePolicy,
    request: &RequestFacts,
    queued: usize,
    action: FailureAction,
) -> Decision {
    let cx = revision_only(request);
    let detail = format!(
        "overloaded: {queued} checksum computations already queued, this review was not attempted; retry shortly"
    );
    finish(rule, request, Reason::DecisionTimeout, detail, cx, action)
}

/// Applies the failure policy, break-glass and the rule's mode to a reason.
fn finish(
    rule: &RulePolicy,
    request: &RequestFacts,
    reason: Reason,
    detail: String,
    context: Context,
    failure_action: FailureAction,
) -> Decision {
    // "{reason}: {detail}" without the formatting machinery: this runs for
    // every review.
    let code = reason.as_str();
    let mut message = String::with_capacity(code.len() + 2 + detail.len());
    message.push_str(code);
    message.push_str(": ");
    message.push_str(&detail);
    // Every verdict's text (status.message, warnings, the audit detail)
    // is bounded here.
    let message = crate::echo::message(message);
    let mut decision = Decision {
        reason,
        allowed: reason.allows(),
        message,
        rule: Some(rule.name.clone()),
        revision: context.revision,
        head: context.head,
        expected_checksum: context.expected,
        found_checksum: context.found,
        overridden: None,
        warnings: Vec::new(),
        mode: Some(rule.mode),
        field: context.field,
    };
    if decision.allowed {
        return decision;
    }
    let infrastructure = matches!(reason, Reason::MirrorUnavailable | Reason::DecisionTimeout);
    if infrastructure && failure_action == FailureAction::Allow {
        decision.allowed = true;
        return decision;
    }
    if request.break_glass {
        decision.overridden = Some(reason);
        decision.reason = Reason::BreakGlass;
        decision.allowed = true;
        decision.message = crate::echo::message(format!(
            "BreakGlass: allowed by a break-glass identity, overriding {}",
            decision.message
        ));
        return decision;
    }
    match rule.mode {
        Mode::Enforce => {}
        Mode::Warn => {
            decision.allowed = true;
            // The message is bounded already; the warning keeps it whole.
            decision
                .warnings
                .push(format!("stale-guard (warn mode): {}", decision.message));
        }
        Mode::Audit => decision.allowed = true,
    }
    decision
}

#[derive(Default)]
struct Context {
    revision: Option<Revision>,
    head: Option<Revision>,
    expected: Option<Checksum>,
    found: Option<Checksum>,
    field: Option<String>,
}

/// The message for an absent annotation, naming near-miss keys.
fn missing_annotation(what: &str, near_misses: &[String]) -> String {
    let hint = if near_misses.is_empty() {
        String::new()
    } else {
        let list = crate::echo::list(near_misses.iter().map(|k| crate::echo::Quoted(k)));
        format!(
            "; found near-miss key {list} (an annotation key must be written whole, never split on dots)"
        )
    };
    format!(
        "the object has no {what} annotation{hint}; stamp rendered manifests with `stale-guard stamp`"
    )
}

/// `main@950bf0f`, written when a message is.
struct HeadName<'a>(&'a str, Revision);

impl std::fmt::Display for HeadName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.0, self.1.short())
    }
}

fn evaluate(
    rule: &RulePolicy,
    request: &RequestFacts,
    facts: &MirrorFacts,
) -> (Reason, String, Context) {
    let mut cx = Context::default();
    let revision = match &request.revision {
        Annotation::Missing { near_misses } => {
            return (
                Reason::MissingRevision,
                missing_annotation("revision", near_misses),
                cx,
            );
        }
        Annotation::Malformed { value, why } => {
            return (
                Reason::MalformedRevision,
                format!(
                    "revision annotation {} is not a commit id ({why}); expected 40 hex digits, sha1:<40 hex> or <branch>@sha1:<40 hex>",
                    crate::echo::Quoted(value)
                ),
                cx,
            );
        }
        Annotation::Valid(r) => *r,
    };
    cx.revision = Some(revision);
    let claimed = request.claimed_by.source();
    let found = match (&request.claimed_by, &request.checksum) {
        (ClaimedBy::Controller { .. }, _) => None,
        (ClaimedBy::Annotations, checksum) => Some(match checksum {
            Annotation::Missing { near_misses } => {
                return (
                    Reason::MissingChecksum,
                    missing_annotation("checksum", near_misses),
                    cx,
                );
            }
            Annotation::Malformed { value, why } => {
                return (
                    Reason::MalformedChecksum,
                    format!(
                        "checksum annotation {} is malformed: {why}",
                        crate::echo::Quoted(value)
                    ),
                    cx,
                );
            }
            Annotation::Valid(c) => *c,
        }),
    };
    cx.found = found;
    // The annotation says which branch it was rendered from: another
    // branch's commit must not pass because it is also on this one.
    if let Some(named) = request.branch.as_deref()
        && !is_rule_branch(named, &rule.branch)
    {
        let remedy = match request.claimed_by {
            ClaimedBy::Annotations => format!(
                "re-render from {} and stamp it as {}@sha1:<commit>",
                rule.branch, rule.branch
            ),
            ClaimedBy::Controller { .. } => format!("point the controller at {}", rule.branch),
        };
        return (
            Reason::RevisionNotOnBranch,
            format!(
                "revision {}{claimed} names branch {:?}, but rule {} checks branch {:?}; {remedy}",
                revision.short(),
                crate::echo::value(named),
                rule.name,
                rule.branch,
            ),
            cx,
        );
    }
    let (head, position, at_revision, at_head) = match facts {
        MirrorFacts::Unavailable { why } => {
            return (
                Reason::MirrorUnavailable,
                format!(
                    "cannot tell whether revision {}{claimed} is current: {why}",
                    revision.short()
                ),
                cx,
            );
        }
        MirrorFacts::Available {
            head,
            position,
            at_revision,
            at_head,
        } => (head, position, at_revision, at_head),
    };
    cx.head = Some(head.commit);
    // Only the verdicts that are not `Fresh` at head name it.
    let head_name = HeadName(&rule.branch, head.commit);
    let in_grace = head
        .previous
        .is_some_and(|(prev, since)| prev == revision && since <= rule.grace_period);

    let (behind, commit_time) = match *position {
        Position::Unknown => {
            return (
                Reason::UnknownRevision,
                format!(
                    "revision {}{claimed} is not in the repository as fetched (by polls, and on demand within limits.onDemandFetches); push it to {} or re-render from {head_name}",
                    revision.short(),
                    rule.branch
                ),
                cx,
            );
        }
        Position::OffBranch => {
            return (
                Reason::RevisionNotOnBranch,
                format!(
                    "revision {}{claimed} is not on {} (another branch, or history rewritten); re-render from {head_name}",
                    revision.short(),
                    rule.branch
                ),
                cx,
            );
        }
        Position::Head => (0, head.commit_time),
        Position::Ancestor {
            behind,
            commit_time,
        } => (behind, commit_time),
    };
    let stale_message = || {
        format!(
            "revision {}{claimed} is {} and {} behind {head_name}; re-render from head",
            revision.short(),
            plural(behind, "commit"),
            human_age(head.commit_time.saturating_sub(commit_time)),
        )
    };
    let is_head = *position == Position::Head;
    if !is_head && rule.staleness == Staleness::Strict && !in_grace {
        return (Reason::StaleRevision, stale_message(), cx);
    }

    let expected = match at_revision {
        Some(Ok(sum)) => *sum,
        Some(Err(why)) => {
            return (
                Reason::OverlayError,
                format!(
                    "the overlay cannot be checksummed at revision {}: {why}",
                    revision.short()
                ),
                cx,
            );
        }
        None => {
            return (
                Reason::OverlayError,
                format!("no checksum was computed at revision {}", revision.short()),
                cx,
            );
        }
    };
    cx.expected = Some(expected);
    if let Some(found) = found
        && expected != found
    {
        return (
            Reason::ChecksumMismatch,
            format!(
                "checksum annotation {found} does not match {expected}, the checksum of the overlay at revision {}; re-render and stamp from one commit",
                revision.short()
            ),
            cx,
        );
    }
    if is_head {
        return (
            Reason::Fresh,
            format!(
                "revision {}{claimed} is the head of {}",
                revision.short(),
                rule.branch
            ),
            cx,
        );
    }
    if in_grace {
        return (
            Reason::Fresh,
            format!(
                "revision {}{claimed} was the head of {} until moments ago (within the grace period)",
                revision.short(),
                rule.branch
            ),
            cx,
        );
    }
    // staleness: content
    match at_head {
        Some(Ok(head_sum)) if *head_sum == expected => (
            Reason::UnchangedOverlay,
            format!(
                "revision {}{claimed} is {} behind {head_name}, but the overlay is unchanged since",
                revision.short(),
                plural(behind, "commit")
            ),
            cx,
        ),
        _ => (Reason::StaleRevision, stale_message(), cx),
    }
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// `41 days`, `3 hours`, `12 minutes`, `40 seconds`.
pub fn human_age(seconds: i64) -> String {
    let s = seconds.max(0) as u64;
    match s {
        0..=119 => plural(s, "second"),
        120..=7199 => plural(s / 60, "minute"),
        7200..=172_799 => plural(s / 3600, "hour"),
        _ => plural(s / 86_400, "day"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "9be0d41aa1b2c3d4e5f60718293a4b5c6d7e8f90";
    const OLD: &str = "3f2a1c9ff1e2d3c4b5a697887766554433221100";
    const DAY: i64 = 86_400;

    fn sum(byte: u8) -> Checksum {
        Checksum([byte; 32])
    }

    fn rule(staleness: Staleness, mode: Mode) -> RulePolicy {
        RulePolicy {
            name: "prod-east".into(),
            branch: "main".into(),
            mode,
            staleness,
            grace_period: Duration::from_secs(60),
        }
    }

    fn request(rev: &str, checksum: Checksum) -> RequestFacts {
        let (revision, branch) = Revision::parse_claim(rev).unwrap();
        RequestFacts {
            revision: Annotation::Valid(revision),
            branch: branch.map(str::to_owned),
            checksum: Annotation::Valid(checksum),
            break_glass: false,
            claimed_by: ClaimedBy::Annotations,
        }
    }

    fn head() -> HeadFacts {
        HeadFacts {
            commit: Revision::parse(HEAD).unwrap(),
            commit_time: 100 * DAY,
            previous: None,
        }
    }

    fn facts(
        position: Position,
        at_rev: ChecksumFact,
        at_head: Option<ChecksumFact>,
    ) -> MirrorFacts {
        MirrorFacts::Available {
            head: head(),
            position,
            at_revision: Some(at_rev),
            at_head,
        }
    }

    fn stale_position() -> Position {
        Position::Ancestor {
            behind: 37,
            commit_time: 59 * DAY,
        }
    }

    fn strict() -> RulePolicy {
        rule(Staleness::Strict, Mode::Enforce)
    }

    fn run(rule: &RulePolicy, req: &RequestFacts, facts: &MirrorFacts) -> Decision {
        decide(rule, req, facts, FailureAction::Deny)
    }

    #[test]
    fn revision_text_forms() {
        let mut bytes = [0u8; 20];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37) ^ 0xa5;
        }
        let r = Revision(bytes);
        assert_eq!(r.to_hex(), hex::encode(bytes));
        assert_eq!(r.to_string(), r.to_hex());
        assert_eq!(r.short().as_str(), &r.to_hex()[..7]);
        assert_eq!(Revision::parse(&r.to_hex().to_uppercase()), Ok(r));
    }

    #[test]
    fn revision_forms() {
        let want = Revision::parse(HEAD).unwrap();
        for form in [
            HEAD.to_owned(),
            HEAD.to_uppercase(),
            format!("sha1:{HEAD}"),
            format!("main@sha1:{HEAD}"),
            format!("release/v1@sha1:{}", HEAD.to_uppercase()),
        ] {
            assert_eq!(Revision::parse(&form), Ok(want), "{form}");
        }
        for bad in [
            "9be0d41",
            "",
            "sha1:",
            "main@9be0d41",
            &format!("@sha1:{HEAD}"),
            &format!("{HEAD}0"),
            &format!("sha256:{HEAD}"),
            &"g".repeat(40),
        ] {
            assert!(Revision::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fresh() {
        let d = run(
            &strict(),
            &request(HEAD, sum(1)),
            &facts(Position::Head, Ok(sum(1)), None),
        );
        assert_eq!(d.reason, Reason::Fresh);
        assert!(d.allowed);
        assert!(d.message.starts_with("Fresh: "));
    }

    #[test]
    fn stale_revision_says_how_far_behind() {
        let d = run(
            &strict(),
            &request(OLD, sum(1)),
            &facts(stale_position(), Ok(sum(1)), None),
        );
        assert_eq!(d.reason, Reason::StaleRevision);
        assert!(!d.allowed);
        assert_eq!(
            d.message,
            "StaleRevision: revision 3f2a1c9 is 37 commits and 41 days behind main@9be0d41; re-render from head"
        );
    }

    #[test]
    fn unchanged_overlay_in_content_mode() {
        let r = rule(Staleness::Content, Mode::Enforce);
        let d = run(
            &r,
            &request(OLD, sum(1)),
            &facts(stale_position(), Ok(sum(1)), Some(Ok(sum(1)))),
        );
        assert_eq!(d.reason, Reason::UnchangedOverlay);
        assert!(d.allowed);
        let d = run(
            &r,
            &request(OLD, sum(1)),
            &facts(stale_position(), Ok(sum(1)), Some(Ok(sum(2)))),
        );
        assert_eq!(d.reason, Reason::StaleRevision);
    }

    #[test]
    fn missing_revision() {
        let mut req = request(HEAD, sum(1));
        req.revision = Annotation::Missing {
            near_misses: vec![],
        };
        let d = run(&strict(), &req, &facts(Position::Head, Ok(sum(1)), None));
        assert_eq!(d.reason, Reason::MissingRevision);
        assert!(!d.allowed);
    }

    #[test]
    fn malformed_revision() {
        let mut req = request(HEAD, sum(1));
        req.revision = Annotation::Malformed {
            value: "9be0d41".into(),
            why: "short".into(),
        };
        let d = run(&strict(), &req, &facts(Position::Head, Ok(sum(1)), None));
        assert_eq!(d.reason, Reason::MalformedRevision);
        assert!(d.message.contains("\"9be0d41\""));
    }

    #[test]
    fn missing_checksum_names_the_near_miss() {
        let annotations = [("fluxcd", "sha256:abc"), ("other", "x")];
        let read = read_annotation(
            annotations.iter().map(|(k, v)| (*k, *v)),
            "fluxcd.io/checksum",
            |v| v.parse::<Checksum>().map_err(|e| e.to_string()),
        );
        assert_eq!(
            read,
            Annotation::Missing {
                near_misses: vec!["fluxcd".into()]
            }
        );
        let mut req = request(HEAD, sum(1));
        req.checksum = read;
        let d = run(&strict(), &req, &facts(Position::Head, Ok(sum(1)), None));
        assert_eq!(d.reason, Reason::MissingChecksum);
        assert!(d.message.contains("\"fluxcd\""), "{}", d.message);
    }

    #[test]
    fn near_misses() {
        let key = "fluxcd.io/checksum";
        for near in [
            "fluxcd",
            "fluxcd.io",
            "FluxCD.io/Checksum",
            "stale-guard.io/checksum",
            "checksum",
        ] {
            assert!(is_near_miss(near, key), "{near}");
        }
        for far in [
            "flux",
            "fluxcd.i",
            "fluxcd.io/revision",
            "",
            "kubectl.kubernetes.io/last-applied-configuration",
        ] {
            assert!(!is_near_miss(far, key), "{far}");
        }
    }

    #[test]
    fn malformed_checksum() {
        let read = read_annotation([("k", "sha256:ABC")], "k", |v| {
            v.parse::<Checksum>().map_err(|e| e.to_string())
        });
        let mut req = request(HEAD, sum(1));
        req.checksum = read;
        let d = run(&strict(), &req, &facts(Position::Head, Ok(sum(1)), None));
        assert_eq!(d.reason, Reason::MalformedChecksum);
    }

    #[test]
    fn unknown_revision() {
        let d = run(
            &strict(),
            &request(OLD, sum(1)),
            &facts(Position::Unknown, Ok(sum(1)), None),
        );
        assert_eq!(d.reason, Reason::UnknownRevision);
        assert!(!d.allowed);
    }

    #[test]
    fn revision_not_on_branch() {
        let d = run(
            &strict(),
            &request(OLD, sum(1)),
            &facts(Position::OffBranch, Ok(sum(1)), None),
        );
        assert_eq!(d.reason, Reason::RevisionNotOnBranch);
    }

    /// `<branch>@sha1:<hex>` names the branch it was rendered from: a
    /// commit of another branch is refused even when it is also on the
    /// rule's branch (here: its head), with both names; the rule's own
    /// branch passes by its short name or its full ref.
    #[test]
    fn revision_naming_another_branch() {
        let head_facts = facts(Position::Head, Ok(sum(1)), None);
        let cases = [
            (format!("main@sha1:{HEAD}"), Reason::Fresh),
            (format!("refs/heads/main@sha1:{HEAD}"), Reason::Fresh),
            (format!("sha1:{HEAD}"), Reason::Fresh),
            (HEAD.to_owned(), Reason::Fresh),
            (
                format!("feature/x@sha1:{HEAD}"),
                Reason::RevisionNotOnBranch,
            ),
            (
                format!("refs/heads/release@sha1:{HEAD}"),
                Reason::RevisionNotOnBranch,
            ),
            (format!("v1.2.0@sha1:{HEAD}"), Reason::RevisionNotOnBranch),
            (format!("mainline@sha1:{HEAD}"), Reason::RevisionNotOnBranch),
        ];
        for (value, want) in cases {
            let req = request(&value, sum(1));
            let d = run(&strict(), &req, &head_facts);
            assert_eq!(d.reason, want, "{value}: {}", d.message);
            assert_eq!(
                decided_by_annotations(&strict(), &req),
                want == Reason::RevisionNotOnBranch,
                "{value}"
            );
            if want == Reason::RevisionNotOnBranch {
                assert!(!d.allowed);
                let claimed = value.rsplit_once('@').unwrap().0;
                assert!(
                    d.message.contains(&format!("{claimed:?}")) && d.message.contains("\"main\""),
                    "names both branches: {}",
                    d.message
                );
                // Decided from the request alone: the same verdict
                // without mirror facts.
                let unused = MirrorFacts::Unavailable { why: String::new() };
                assert_eq!(run(&strict(), &req, &unused), d);
            }
        }
    }

    #[test]
    fn checksum_mismatch_shows_both() {
        let d = run(
            &strict(),
            &request(HEAD, sum(1)),
            &facts(Position::Head, Ok(sum(2)), None),
        );
        assert_eq!(d.reason, Reason::ChecksumMismatch);
        assert!(d.message.contains(&sum(1).to_string()) && d.message.contains(&sum(2).to_string()));
        assert_eq!(d.expected_checksum, Some(sum(2)));
        assert_eq!(d.found_checksum, Some(sum(1)));
    }

    #[test]
    fn overlay_error() {
        let d = run(
            &strict(),
            &request(HEAD, sum(1)),
            &facts(Position::Head, Err("symlink loop".into()), None),
        );
        assert_eq!(d.reason, Reason::OverlayError);
        assert!(d.message.contains("symlink loop"));
    }

    #[test]
    fn mirror_unavailable_follows_the_failure_policy() {
        let f = MirrorFacts::Unavailable {
            why: "last fetch 12 minutes ago".into(),
        };
        let d = decide(&strict(), &request(HEAD, sum(1)), &f, FailureAction::Deny);
        assert_eq!((d.reason, d.allowed), (Reason::MirrorUnavailable, false));
        let d = decide(&strict(), &request(HEAD, sum(1)), &f, FailureAction::Allow);
        assert_eq!((d.reason, d.allowed), (Reason::MirrorUnavailable, true));
        assert!(d.is_denial());
    }

    #[test]
    fn break_glass_overrides_and_is_logged() {
        let mut req = request(OLD, sum(1));
        req.break_glass = true;
        let d = run(&strict(), &req, &facts(stale_position(), Ok(sum(1)), None));
        assert_eq!(d.reason, Reason::BreakGlass);
        assert!(d.allowed);
        assert_eq!(d.overridden, Some(Reason::StaleRevision));
        assert!(d.is_denial());
    }

    #[test]
    fn warn_and_audit_modes_allow_but_keep_the_reason() {
        let d = run(
            &rule(Staleness::Strict, Mode::Warn),
            &request(OLD, sum(1)),
            &facts(stale_position(), Ok(sum(1)), None),
        );
        assert_eq!((d.reason, d.allowed), (Reason::StaleRevision, true));
        assert_eq!(d.warnings.len(), 1);
        let d = run(
            &rule(Staleness::Strict, Mode::Audit),
            &request(OLD, sum(1)),
            &facts(stale_position(), Ok(sum(1)), None),
        );
        assert_eq!((d.reason, d.allowed), (Reason::StaleRevision, true));
        assert!(d.warnings.is_empty() && d.is_denial());
    }

    #[test]
    fn previous_head_passes_within_the_grace_period_only() {
        let old = Revision::parse(OLD).unwrap();
        let mut h = head();
        h.previous = Some((old, Duration::from_secs(30)));
        let f = MirrorFacts::Available {
            head: h,
            position: Position::Ancestor {
                behind: 1,
                commit_time: 99 * DAY,
            },
            at_revision: Some(Ok(sum(1))),
            at_head: None,
        };
        let d = run(&strict(), &request(OLD, sum(1)), &f);
        assert_eq!((d.reason, d.allowed), (Reason::Fresh, true));
        h.previous = Some((old, Duration::from_secs(61)));
        let f = MirrorFacts::Available {
            head: h,
            position: Position::Ancestor {
                behind: 1,
                commit_time: 99 * DAY,
            },
            at_revision: Some(Ok(sum(1))),
            at_head: None,
        };
        assert_eq!(
            run(&strict(), &request(OLD, sum(1)), &f).reason,
            Reason::StaleRevision
        );
    }

    #[test]
    fn decision_timeout_follows_the_failure_policy_and_mode() {
        let req = request(HEAD, sum(1));
        let budget = Duration::from_secs(4);
        let d = timed_out(&strict(), &req, budget, FailureAction::Deny);
        assert_eq!((d.reason, d.allowed), (Reason::DecisionTimeout, false));
        assert!(
            d.message
                .starts_with("DecisionTimeout: no verdict within 4000 ms")
        );
        let d = timed_out(&strict(), &req, budget, FailureAction::Allow);
        assert_eq!((d.reason, d.allowed), (Reason::DecisionTimeout, true));
        let warn = rule(Staleness::Strict, Mode::Warn);
        let d = timed_out(&warn, &req, budget, FailureAction::Deny);
        assert_eq!(
            (d.reason, d.allowed, d.warnings.len()),
            (Reason::DecisionTimeout, true, 1)
        );
    }

    #[test]
    fn overload_is_a_decision_timeout_that_says_so() {
        let req = request(HEAD, sum(1));
        let d = overloaded(&strict(), &req, 64, FailureAction::Deny);
        assert_eq!((d.reason, d.allowed), (Reason::DecisionTimeout, false));
        assert!(
            d.message.starts_with(
                "DecisionTimeout: overloaded: 64 checksum computations already queued"
            ),
            "{}",
            d.message
        );
        assert_eq!(d.revision, Revision::parse(HEAD).ok());
        let d = overloaded(&strict(), &req, 64, FailureAction::Allow);
        assert_eq!((d.reason, d.allowed), (Reason::DecisionTimeout, true));
    }

    #[test]
    fn checksums_are_computed_only_when_the_verdict_needs_them() {
        let old = Revision::parse(OLD).unwrap();
        let stale = stale_position();
        assert_eq!(
            needed_checksums(&strict(), old, &head(), Position::Head),
            (true, false)
        );
        assert_eq!(
            needed_checksums(&strict(), old, &head(), stale),
            (false, false)
        );
        let content = rule(Staleness::Content, Mode::Enforce);
        assert_eq!(
            needed_checksums(&content, old, &head(), stale),
            (true, true)
        );
        let mut h = head();
        h.previous = Some((old, Duration::from_secs(1)));
        assert_eq!(needed_checksums(&strict(), old, &h, stale), (true, false));
        assert_eq!(
            needed_checksums(&strict(), old, &h, Position::Unknown),
            (false, false)
        );
    }

    mod content {
        use super::*;
        use crate::content::Identity;
        use serde_json::{Value, json};

        fn ingress(service: &str) -> Value {
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "web", "namespace": "prod"},
                "spec": {"rules": [{"http": {"paths": [{"backend": {"service": {"name": service}}}]}}]}})
        }

        fn at<'a>(commit: &str, position: Position, object: Option<&'a Value>) -> RenderedAt<'a> {
            RenderedAt {
                commit: Revision::parse(commit).unwrap(),
                position,
                object,
            }
        }

        fn none_facts() -> MirrorFacts {
            MirrorFacts::Available {
                head: head(),
                position: Position::Head,
                at_revision: None,
                at_head: None,
            }
        }

        fn verdict(rule: &RulePolicy, object: &Value, content: &ContentFacts<'_>) -> Decision {
            let id = Identity::of(object).unwrap();
            let reviewed = ReviewedObject {
                identity: &id,
                object,
            };
            let unused = request(HEAD, sum(1));
            decide_checks(
                rule,
                Provenance::None,
                &unused,
                &none_facts(),
                Some((reviewed, content)),
                FailureAction::Deny,
            )
        }

        #[test]
        fn an_object_equal_to_heads_rendering_is_fresh() {
            let rendered = ingress("web-v2");
            let content = ContentFacts::Rendered {
                head: at(HEAD, Position::Head, Some(&rendered)),
                in_grace: None,
                history: Vec::new(),
            };
            let d = verdict(&strict(), &ingress("web-v2"), &content);
            assert_eq!(d.reason, Reason::Fresh, "{}", d.message);
            assert_eq!(
                d.message,
                "Fresh: the object matches the rendering at main@9be0d41"
            );
        }

        /// The product's signature: the mismatch names the earlier
        /// rendering the object is, and how far behind head it is.
        #[test]
        fn a_mismatch_names_the_earlier_rendering_it_matches() {
            let (new, old) = (ingress("web-v2"), ingress("web-v1"));
            let content = ContentFacts::Rendered {
                head: at(HEAD, Position::Head, Some(&new)),
                in_grace: None,
                history: vec![at(OLD, stale_position(), Some(&old))],
            };
            let d = verdict(&strict(), &old, &content);
            assert_eq!(d.reason, Reason::ContentMismatch);
            assert!(!d.allowed);
            assert!(
                d.message.starts_with(
                    "ContentMismatch: Ingress.networking.k8s.io prod/web differs from the rendering at main@9be0d41: "
                ),
                "{}",
                d.message
            );
            assert!(
                d.message.ends_with(
                    "; it matches the rendering at 3f2a1c9, 37 commits and 41 days behind main@9be0d41; re-render from head"
                ),
                "{}",
                d.message
            );
            assert!(d.field.is_some());
            // Warn mode allows with the same words as a warning.
            let warn = verdict(&rule(Staleness::Strict, Mode::Warn), &old, &content);
            assert!(warn.allowed);
            assert_eq!(warn.warnings.len(), 1);
            assert!(warn.warnings[0].contains("it matches the rendering at 3f2a1c9"));
        }

        #[test]
        fn an_object_head_does_not_render_is_not_rendered() {
            let content = ContentFacts::Rendered {
                head: at(HEAD, Position::Head, None),
                in_grace: None,
                history: Vec::new(),
            };
            let d = verdict(&strict(), &ingress("x"), &content);
            assert_eq!(d.reason, Reason::NotRendered);
            assert!(
                d.message.contains(
                    "the rendering at main@9be0d41 has no Ingress.networking.k8s.io prod/web"
                ),
                "{}",
                d.message
            );
        }

        #[test]
        fn the_previous_heads_rendering_passes_within_grace() {
            let (new, old) = (ingress("web-v2"), ingress("web-v1"));
            let content = ContentFacts::Rendered {
                head: at(HEAD, Position::Head, Some(&new)),
                in_grace: Some(at(OLD, stale_position(), Some(&old))),
                history: Vec::new(),
            };
            let d = verdict(&strict(), &old, &content);
            assert_eq!(d.reason, Reason::Fresh, "{}", d.message);
            assert!(d.message.contains("within the grace period"));
        }

        #[test]
        fn a_failed_rendering_is_an_overlay_error() {
            let content = ContentFacts::RenderFailed {
                why: "Error: accumulating resources: boom".into(),
            };
            let d = verdict(&strict(), &ingress("x"), &content);
            assert_eq!(d.reason, Reason::OverlayError);
            assert_eq!(
                d.message,
                "OverlayError: the overlay cannot be rendered at main@9be0d41: Error: accumulating resources: boom"
            );
        }

        /// Provenance first: a stale annotation is denied as such, with no
        /// rendering looked at; content second, after a fresh claim.
        #[test]
        fn provenance_is_checked_before_content() {
            let (new, old) = (ingress("web-v2"), ingress("web-v1"));
            let content = ContentFacts::Rendered {
                head: at(HEAD, Position::Head, Some(&new)),
                in_grace: None,
                history: Vec::new(),
            };
            let id = Identity::of(&old).unwrap();
            let reviewed = ReviewedObject {
                identity: &id,
                object: &old,
            };
            let stale = facts(stale_position(), Ok(sum(1)), None);
            let req = request(OLD, sum(1));
            assert!(!provenance_passes(
                &strict(),
                Provenance::Annotations,
                &req,
                &stale
            ));
            let d = decide_checks(
                &strict(),
                Provenance::Annotations,
                &req,
                &stale,
                Some((reviewed, &content)),
                FailureAction::Deny,
            );
            assert_eq!(d.reason, Reason::StaleRevision);
            // A copied fresh annotation on an old body: the content decides.
            let fresh = facts(Position::Head, Ok(sum(1)), None);
            let req = request(HEAD, sum(1));
            let d = decide_checks(
                &strict(),
                Provenance::Annotations,
                &req,
                &fresh,
                Some((reviewed, &content)),
                FailureAction::Deny,
            );
            assert_eq!(d.reason, Reason::ContentMismatch, "{}", d.message);
            // And with no mirror: MirrorUnavailable, before anything.
            let gone = MirrorFacts::Unavailable {
                why: "never synced".into(),
            };
            let d = decide_checks(
                &strict(),
                Provenance::None,
                &req,
                &gone,
                Some((reviewed, &content)),
                FailureAction::Deny,
            );
            assert_eq!(d.reason, Reason::MirrorUnavailable);
        }
    }

    #[test]
    fn reason_codes_are_the_contract_table() {
        // Contract section 3, code and verdict, verbatim.
        let contract = [
            ("OutOfScope", true),
            ("Fresh", true),
            ("UnchangedOverlay", true),
            ("BreakGlass", true),
            ("MissingRevision", false),
            ("MalformedRevision", false),
            ("MissingChecksum", false),
            ("MalformedChecksum", false),
            ("StaleRevision", false),
            ("UnknownRevision", false),
            ("RevisionNotOnBranch", false),
            ("ChecksumMismatch", false),
            ("OverlayError", false),
            // Section 8.
            ("ContentMismatch", false),
            ("NotRendered", false),
            // Section 9.
            ("UntrackedSource", true),
            ("MirrorUnavailable", false),
            ("DecisionTimeout", false),
        ];
        let ours: Vec<(&str, bool)> = Reason::ALL
            .iter()
            .map(|r| (r.as_str(), r.allows()))
            .collect();
        assert_eq!(ours, contract);
        // The metrics index their counters by `reason as usize`.
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r}");
        }
    }

    #[test]
    fn ages() {
        assert_eq!(human_age(41 * DAY + 5), "41 days");
        assert_eq!(human_age(3 * 3600), "3 hours");
        assert_eq!(human_age(90), "90 seconds");
        assert_eq!(human_age(-5), "0 seconds");
    }
}
