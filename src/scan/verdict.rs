//! The verdict on one running object, from what it says it was applied from
//! and what the mirror knows: a pure function, no I/O.
//!
//! It is the webhook's decision table ([`policy::decide`]) asked as if the
//! object were applied again now, under `staleness: content` with no grace
//! period, so that "stale content" (`StaleRevision`: the overlay changed
//! since) and "merely an old revision" (`UnchangedOverlay`) come apart. The
//! scan adds one outcome of its own, [`ScanReason::UntrackedSource`], for a
//! Flux Kustomization or Argo CD Application whose source is not one of the
//! configured sources.

use crate::checksum::Checksum;
use crate::policy::{
    self, Annotation, FailureAction, MirrorFacts, Mode, Position, Reason, RequestFacts, Revision,
    RulePolicy, Staleness,
};
use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// The outcome for one object: a contract reason code, or a scan-only one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScanReason {
    Policy(Reason),
    /// A controller object whose git source (URL and branch) is not
    /// configured: nothing to compare with. Reported, never an error.
    UntrackedSource,
}

impl ScanReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ScanReason::Policy(r) => r.as_str(),
            ScanReason::UntrackedSource => "UntrackedSource",
        }
    }
}

impl fmt::Display for ScanReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ScanReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// How an outcome counts for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Current, or old but with the same overlay content, or untracked, or
    /// behind by no more than `--max-age`.
    Ok,
    /// What the webhook would deny if it were applied now (exit 1).
    Stale,
    /// The scan could not tell (exit 2): the mirror is unavailable.
    Error,
}

/// What the object says it was applied from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// An object carrying the stamped annotations.
    Annotated {
        revision: Annotation<Revision>,
        /// The branch a `<branch>@sha1:<hex>` revision names.
        branch: Option<String>,
        checksum: Annotation<Checksum>,
    },
    /// A Flux Kustomization or Argo CD Application: a revision from its
    /// status (`field` names it in messages), no checksum of its own.
    Controller {
        revision: Annotation<Revision>,
        field: &'static str,
    },
}

/// The verdict on one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub reason: ScanReason,
    /// `<Reason>: what was found, what was expected, what to do`.
    pub message: String,
    #[serde(serialize_with = "opt_display")]
    pub revision: Option<Revision>,
    #[serde(serialize_with = "opt_display")]
    pub head: Option<Revision>,
    /// Commits between the revision and head (0 at head); `None` unless on
    /// the branch.
    pub behind_commits: Option<u64>,
    /// How far the revision's commit time is behind head's (0 at head);
    /// `None` unless on the branch.
    pub age_seconds: Option<i64>,
}

fn opt_display<S: serde::Serializer>(v: &Option<Revision>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(r) => s.serialize_str(&r.to_hex()),
        None => s.serialize_none(),
    }
}

impl Verdict {
    /// A controller object whose source is not configured.
    pub fn untracked(why: impl fmt::Display) -> Verdict {
        Verdict {
            reason: ScanReason::UntrackedSource,
            message: format!(
                "UntrackedSource: {why}; add the source to the configuration to scan it"
            ),
            revision: None,
            head: None,
            behind_commits: None,
            age_seconds: None,
        }
    }

    /// How this verdict counts, given the tolerated age of a stale revision.
    pub fn severity(&self, max_age: Duration) -> Severity {
        let reason = match self.reason {
            ScanReason::UntrackedSource => return Severity::Ok,
            ScanReason::Policy(r) => r,
        };
        // Every code by name: a new one must be placed here to compile.
        match reason {
            Reason::MirrorUnavailable | Reason::DecisionTimeout => Severity::Error,
            Reason::StaleRevision => match self.age_seconds {
                Some(age) if u64::try_from(age).unwrap_or(0) <= max_age.as_secs() => Severity::Ok,
                _ => Severity::Stale,
            },
            Reason::OutOfScope | Reason::Fresh | Reason::UnchangedOverlay | Reason::BreakGlass => {
                Severity::Ok
            }
            Reason::MissingRevision
            | Reason::MalformedRevision
            | Reason::MissingChecksum
            | Reason::MalformedChecksum
            | Reason::UnknownRevision
            | Reason::RevisionNotOnBranch
            | Reason::ChecksumMismatch
            | Reason::OverlayError
            | Reason::ContentMismatch
            | Reason::NotRendered => Severity::Stale,
        }
    }
}

/// The scan's view of a rule: the webhook's table under `staleness:
/// content`, enforcing, with no grace period.
fn scan_policy(rule: &str, branch: &str) -> RulePolicy {
    RulePolicy {
        name: rule.to_owned(),
        branch: branch.to_owned(),
        mode: Mode::Enforce,
        staleness: Staleness::Content,
        grace_period: Duration::ZERO,
    }
}

/// The verdict on an object applied as `applied`, checked against the
/// branch `branch` of a source (`rule` names the rule or the controller
/// object in messages). `facts` must carry the overlay checksum at the
/// revision and at head whenever the revision is on the branch.
pub fn verdict(rule: &str, branch: &str, applied: &Applied, facts: &MirrorFacts) -> Verdict {
    let (revision, claimed_branch, checksum) = match applied {
        Applied::Annotated {
            revision,
            branch: claimed,
            checksum,
        } => (revision.clone(), claimed.clone(), checksum.clone()),
        Applied::Controller { revision, field } => {
            if let Some(v) = controller_revision_problem(revision, field) {
                return v;
            }
            // A controller carries no checksum: what it applied is the
            // overlay at its revision by definition, so only the revision
            // and the content since are judged.
            let at_revision = match facts {
                MirrorFacts::Available {
                    at_revision: Some(Ok(sum)),
                    ..
                } => *sum,
                // decide() answers before it reads the checksum.
                _ => Checksum([0; 32]),
            };
            // The source was matched by its branch already.
            (revision.clone(), None, Annotation::Valid(at_revision))
        }
    };
    let request = RequestFacts {
        revision,
        branch: claimed_branch,
        checksum,
        break_glass: false,
    };
    let decision = policy::decide(
        &scan_policy(rule, branch),
        &request,
        facts,
        FailureAction::Deny,
    );
    let (behind_commits, age_seconds) = match facts {
        MirrorFacts::Available { head, position, .. } => match *position {
            Position::Head => (Some(0), Some(0)),
            Position::Ancestor {
                behind,
                commit_time,
            } => (
                Some(behind),
                Some(head.commit_time.saturating_sub(commit_time).max(0)),
            ),
            Position::Unknown | Position::OffBranch => (None, None),
        },
        MirrorFacts::Unavailable { .. } => (None, None),
    };
    Verdict {
        reason: ScanReason::Policy(decision.reason),
        message: decision.message,
        revision: decision.revision,
        head: decision.head,
        behind_commits,
        age_seconds,
    }
}

/// Missing or malformed revisions of controller objects, with messages
/// that name the status field instead of an annotation.
fn controller_revision_problem(revision: &Annotation<Revision>, field: &str) -> Option<Verdict> {
    let (reason, message) = match revision {
        Annotation::Valid(_) => return None,
        Annotation::Missing { .. } => (
            Reason::MissingRevision,
            format!("{field} is empty: the controller has not applied anything yet"),
        ),
        Annotation::Malformed { value, why } => (
            Reason::MalformedRevision,
            format!("{field} {value:?} is not a commit id ({why})"),
        ),
    };
    Some(Verdict {
        reason: ScanReason::Policy(reason),
        message: format!("{reason}: {message}"),
        revision: None,
        head: None,
        behind_commits: None,
        age_seconds: None,
    })
}

/// Parses a controller's applied revision: Flux's `<branch>@sha1:<40 hex>`
/// (and its pre-2.0 form `<branch>/<40 hex>`), Argo CD's `<40 hex>`.
/// Empty is missing.
pub fn controller_revision(value: Option<&str>) -> Annotation<Revision> {
    let value = value.unwrap_or("").trim();
    if value.is_empty() {
        return Annotation::Missing {
            near_misses: Vec::new(),
        };
    }
    // Flux's forms, Argo CD's bare ids.
    let parsed = crate::flux::parse_revision(value).map(|(_, r)| r);
    match parsed {
        Ok(r) => Annotation::Valid(r),
        Err(why) => Annotation::Malformed {
            value: crate::echo::value(value),
            why,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{ChecksumFact, HeadFacts};

    const HEAD: &str = "9be0d41aa1b2c3d4e5f60718293a4b5c6d7e8f90";
    const OLD: &str = "3f2a1c9ff1e2d3c4b5a697887766554433221100";
    const DAY: i64 = 86_400;

    fn rev(hex: &str) -> Revision {
        Revision::parse(hex).unwrap()
    }

    fn sum(byte: u8) -> Checksum {
        Checksum([byte; 32])
    }

    fn facts(
        position: Position,
        at_rev: Option<ChecksumFact>,
        at_head: ChecksumFact,
    ) -> MirrorFacts {
        MirrorFacts::Available {
            head: HeadFacts {
                commit: rev(HEAD),
                commit_time: 100 * DAY,
                previous: None,
            },
            position,
            at_revision: at_rev,
            at_head: Some(at_head),
        }
    }

    fn behind(n: u64, days: i64) -> Position {
        Position::Ancestor {
            behind: n,
            commit_time: (100 - days) * DAY,
        }
    }

    fn annotated(r: &str, c: Checksum) -> Applied {
        Applied::Annotated {
            revision: Annotation::Valid(rev(r)),
            branch: None,
            checksum: Annotation::Valid(c),
        }
    }

    fn flux(value: &str) -> Applied {
        Applied::Controller {
            revision: controller_revision(Some(value)),
            field: "status.lastAppliedRevision",
        }
    }

    fn check(applied: &Applied, facts: &MirrorFacts) -> Verdict {
        verdict("prod", "main", applied, facts)
    }

    #[test]
    fn head_with_matching_checksum_is_fresh() {
        let v = check(
            &annotated(HEAD, sum(1)),
            &facts(Position::Head, Some(Ok(sum(1))), Ok(sum(1))),
        );
        assert_eq!(v.reason, ScanReason::Policy(Reason::Fresh));
        assert_eq!((v.behind_commits, v.age_seconds), (Some(0), Some(0)));
        assert_eq!(v.severity(Duration::ZERO), Severity::Ok);
        assert_eq!(v.head, Some(rev(HEAD)));
    }

    #[test]
    fn ancestor_with_changed_overlay_is_stale_with_commits_and_age() {
        let v = check(
            &annotated(OLD, sum(1)),
            &facts(behind(37, 41), Some(Ok(sum(1))), Ok(sum(2))),
        );
        assert_eq!(v.reason, ScanReason::Policy(Reason::StaleRevision));
        assert_eq!(v.behind_commits, Some(37));
        assert_eq!(v.age_seconds, Some(41 * DAY));
        assert!(
            v.message
                .contains("37 commits and 41 days behind main@9be0d41"),
            "{}",
            v.message
        );
        assert_eq!(v.severity(Duration::ZERO), Severity::Stale);
        // Tolerated up to --max-age, by commit time.
        assert_eq!(
            v.severity(Duration::from_secs(41 * DAY as u64)),
            Severity::Ok
        );
        assert_eq!(
            v.severity(Duration::from_secs(40 * DAY as u64)),
            Severity::Stale
        );
    }

    #[test]
    fn ancestor_with_same_overlay_is_unchanged_overlay() {
        let v = check(
            &annotated(OLD, sum(1)),
            &facts(behind(3, 2), Some(Ok(sum(1))), Ok(sum(1))),
        );
        assert_eq!(v.reason, ScanReason::Policy(Reason::UnchangedOverlay));
        assert_eq!(v.behind_commits, Some(3));
        assert_eq!(v.severity(Duration::ZERO), Severity::Ok);
    }

    #[test]
    fn unknown_and_off_branch_revisions_are_stale_without_a_distance() {
        let v = check(
            &annotated(OLD, sum(1)),
            &facts(Position::Unknown, None, Ok(sum(1))),
        );
        assert_eq!(v.reason, ScanReason::Policy(Reason::UnknownRevision));
        assert_eq!(v.behind_commits, None);
        assert_eq!(v.severity(Duration::MAX), Severity::Stale);
        let v = check(
            &annotated(OLD, sum(1)),
            &facts(Position::OffBranch, None, Ok(sum(1))),
        );
        assert_eq!(v.reason, ScanReason::Policy(Reason::RevisionNotOnBranch));
        assert_eq!(v.severity(Duration::MAX), Severity::Stale);
    }

    #[test]
    fn annotation_problems_are_reported_as_such() {
        let f = facts(Position::Head, Some(Ok(sum(1))), Ok(sum(1)));
        let missing = Applied::Annotated {
            revision: Annotation::Valid(rev(HEAD)),
            branch: None,
            checksum: Annotation::Missing {
                near_misses: vec!["fluxcd".into()],
            },
        };
        let v = check(&missing, &f);
        assert_eq!(v.reason, ScanReason::Policy(Reason::MissingChecksum));
        assert!(v.message.contains("\"fluxcd\""), "{}", v.message);
        let malformed = Applied::Annotated {
            revision: Annotation::Valid(rev(HEAD)),
            branch: None,
            checksum: Annotation::Malformed {
                value: "sha256:ABC".into(),
                why: "bad".into(),
            },
        };
        assert_eq!(
            check(&malformed, &f).reason,
            ScanReason::Policy(Reason::MalformedChecksum)
        );
        let mismatch = check(&annotated(HEAD, sum(9)), &f);
        assert_eq!(
            mismatch.reason,
            ScanReason::Policy(Reason::ChecksumMismatch)
        );
        assert_eq!(mismatch.severity(Duration::MAX), Severity::Stale);
    }

    #[test]
    fn flux_and_argo_revision_forms() {
        let want = Annotation::Valid(rev(HEAD));
        assert_eq!(
            controller_revision(Some(&format!("main@sha1:{HEAD}"))),
            want
        );
        assert_eq!(controller_revision(Some(&format!("main/{HEAD}"))), want);
        assert_eq!(controller_revision(Some(HEAD)), want);
        assert!(matches!(
            controller_revision(Some("")),
            Annotation::Missing { .. }
        ));
        assert!(matches!(
            controller_revision(None),
            Annotation::Missing { .. }
        ));
        assert!(matches!(
            controller_revision(Some("main@sha1:9be0d41")),
            Annotation::Malformed { .. }
        ));
    }

    #[test]
    fn controllers_are_judged_by_revision_and_content() {
        let fresh = check(
            &flux(&format!("main@sha1:{HEAD}")),
            &facts(Position::Head, Some(Ok(sum(1))), Ok(sum(1))),
        );
        assert_eq!(fresh.reason, ScanReason::Policy(Reason::Fresh));
        let stale = check(
            &flux(&format!("main@sha1:{OLD}")),
            &facts(behind(2, 1), Some(Ok(sum(1))), Ok(sum(2))),
        );
        assert_eq!(stale.reason, ScanReason::Policy(Reason::StaleRevision));
        let same = check(
            &flux(&format!("main@sha1:{OLD}")),
            &facts(behind(2, 1), Some(Ok(sum(1))), Ok(sum(1))),
        );
        assert_eq!(same.reason, ScanReason::Policy(Reason::UnchangedOverlay));
        let broken = check(
            &flux(&format!("main@sha1:{OLD}")),
            &facts(
                behind(2, 1),
                Some(Err("no kustomization".into())),
                Ok(sum(1)),
            ),
        );
        assert_eq!(broken.reason, ScanReason::Policy(Reason::OverlayError));
        let never = check(
            &Applied::Controller {
                revision: controller_revision(None),
                field: "status.sync.revision",
            },
            &facts(Position::Head, None, Ok(sum(1))),
        );
        assert_eq!(never.reason, ScanReason::Policy(Reason::MissingRevision));
        assert!(
            never.message.contains("status.sync.revision is empty"),
            "{}",
            never.message
        );
    }

    #[test]
    fn unavailable_mirror_is_an_error_and_untracked_is_not() {
        let v = check(
            &annotated(HEAD, sum(1)),
            &MirrorFacts::Unavailable {
                why: "the mirror of gitops has never synced".into(),
            },
        );
        assert_eq!(v.reason, ScanReason::Policy(Reason::MirrorUnavailable));
        assert_eq!(v.severity(Duration::MAX), Severity::Error);
        let u = Verdict::untracked("https://x.example/y.git is not configured");
        assert_eq!(u.severity(Duration::ZERO), Severity::Ok);
        assert_eq!(u.reason.as_str(), "UntrackedSource");
    }
}
