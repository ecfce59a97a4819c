//! AdmissionReview in (a lean request in kube's shape) and out (kube's types), rule
//! matching, and reading the two annotations. No I/O.

use crate::checksum::Checksum;
use crate::config::{Config, RuleConfig};
use crate::policy::{self, Annotation, Decision, RequestFacts, Revision};
use kube::core::admission::{AdmissionResponse, AdmissionReview, Operation};
use kube::core::{DynamicObject, Status};
use serde::Deserialize;
use std::borrow::{Borrow, Cow};
use std::collections::BTreeMap;

mod read;
pub(crate) use read::OrNull;
pub use read::{Expectation, Nothing, Prechecked};

/// A string of the review body: borrowed from the body when it has no JSON
/// escapes (nearly always), owned when it had to be unescaped. Every field
/// the webhook reads is one; building them as `String`s was most of the
/// allocations of a request. (serde's own `Cow` support borrows only a
/// direct field, not inside an `Option`, `Vec` or map.)
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Str<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Str<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Str<'_> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Str<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Str<'_> {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Str<'_> {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl serde::Serialize for Str<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// The object under review, as far as the webhook reads it: the
/// annotations of its metadata. The parser skips everything
/// else (spec, status, managedFields...) without building it: that is most
/// of a review's bytes, and building it dominated the cost of a request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppliedObject<'a> {
    pub metadata: Metadata<'a>,
}

/// The part of an object's metadata the webhook reads. Read by
/// [`crate::content::MetaSeed`], the one reader of metadata (with or
/// without a rendering to check it against).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata<'a> {
    /// Values must be strings: anything else refuses the review.
    pub annotations: Option<StrMap<'a>>,
    /// A value that is not a string is skipped (only `provenance: flux`
    /// reads labels, and a label it cannot read is a missing one).
    pub labels: Option<StrMap<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Metadata<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(crate::content::MetaSeed {
            rendered: None,
            seen: None,
        })
        .map(|(metadata, _)| metadata)
    }
}

/// A JSON map of strings (an object's labels or annotations) as the body
/// writes it, borrowing from the body: a list, not a tree, since a review
/// reads at most a few of its keys and building a tree cost more than
/// reading them. A key written twice reads as its last value, as it would
/// in a map.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StrMap<'a>(pub Vec<(Str<'a>, Str<'a>)>);

impl<'a> StrMap<'a> {
    /// The value of `key` (the last, if written twice).
    pub fn get(&self, key: &str) -> Option<&Str<'a>> {
        self.0.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// A map of strings read by key: an object's annotations from a review
/// ([`StrMap`]) or from the API (`BTreeMap`, in `scan`).
pub trait StringMap {
    /// The value of `key`.
    fn value(&self, key: &str) -> Option<&str>;
    /// Every key and value, a key written twice perhaps twice.
    fn entries(&self) -> impl Iterator<Item = (&str, &str)> + Clone;
}

impl StringMap for StrMap<'_> {
    fn value(&self, key: &str) -> Option<&str> {
        self.get(key).map(|v| &**v)
    }
    fn entries(&self) -> impl Iterator<Item = (&str, &str)> + Clone {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }
}

impl<K: Ord + Borrow<str>, V: AsRef<str>> StringMap for BTreeMap<K, V> {
    fn value(&self, key: &str) -> Option<&str> {
        self.get(key).map(AsRef::as_ref)
    }
    fn entries(&self) -> impl Iterator<Item = (&str, &str)> + Clone {
        self.iter().map(|(k, v)| (k.borrow(), v.as_ref()))
    }
}

/// The object's labels named in `keys` (as those keys), borrowed from the
/// body where they have no escapes.
pub fn labels<'k, 'a>(req: &Request<'a>, keys: &[&'k str]) -> Option<BTreeMap<&'k str, Str<'a>>> {
    let labels = req.object.as_ref()?.metadata.labels.as_ref()?;
    Some(
        keys.iter()
            .filter_map(|k| Some((*k, labels.get(k)?.clone())))
            .collect(),
    )
}

/// An object's API group, version and kind (kube's `GroupVersionKind`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Kind<'a> {
    #[serde(borrow)]
    pub group: Str<'a>,
    #[serde(borrow)]
    pub version: Str<'a>,
    #[serde(borrow)]
    pub kind: Str<'a>,
}

/// A review request, as far as the webhook reads it, borrowing from the
/// body. The shape and field types are kube's (`AdmissionRequest`), minus
/// what no decision uses (resource, requestKind, options, oldObject...),
/// which the parser skips without building: each of those costs
/// allocations on every request. Read by [`read::RequestVisitor`]
/// (`uid`, `kind` and `operation` required; the rest default).
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub uid: Str<'a>,
    pub kind: Kind<'a>,
    pub sub_resource: Option<Str<'a>>,
    pub name: Str<'a>,
    pub namespace: Option<Str<'a>>,
    pub operation: Operation,
    pub user_info: UserInfo<'a>,
    pub object: Option<AppliedObject<'a>>,
    pub dry_run: bool,
}

impl<'de> Deserialize<'de> for Request<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let visitor =
            read::RequestVisitor::<fn(&Request<'de>) -> Option<read::Nothing>> { pick: None };
        d.deserialize_map(visitor).map(|(req, _)| req)
    }
}

/// Who sent the request.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct UserInfo<'a> {
    #[serde(default, borrow)]
    pub username: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub groups: Option<Vec<Str<'a>>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for AppliedObject<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Unknown fields are skipped by the derived code (IgnoredAny).
        #[derive(Deserialize)]
        struct Raw<'a> {
            #[serde(default, borrow)]
            metadata: Option<Metadata<'a>>,
        }
        let raw = Raw::deserialize(d)?;
        let metadata = raw
            .metadata
            .ok_or_else(|| serde::de::Error::custom(read::NO_METADATA))?;
        Ok(AppliedObject { metadata })
    }
}

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// Why a body is not an AdmissionReview we can answer (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadReview(pub String);

/// Parses and checks an AdmissionReview body. The request borrows from it.
pub fn parse_review(body: &[u8]) -> Result<Request<'_>, BadReview> {
    parse_review_checking(body, |_| None::<Nothing>).map(|(req, _)| req)
}

/// [`parse_review`], checking the object against what `pick` chooses from
/// the request's other fields while it is read (see [`read`]): one walk
/// of the object instead of two.
pub fn parse_review_checking<'a, P, F>(
    body: &'a [u8],
    pick: F,
) -> Result<(Request<'a>, Option<Prechecked<P>>), BadReview>
where
    P: Expectation,
    F: FnOnce(&Request<'a>) -> Option<P>,
{
    // kube's `AdmissionReview` flattens its TypeMeta, which makes serde
    // buffer the whole body into an intermediate tree first; this reads
    // the same fields in one pass (half the cost of a request).
    let (api_version, kind, request) = match read::review(body, pick) {
        Ok(r) => r,
        Err(e) => {
            // A wrong version deserves that message rather than the first
            // field it lacks; only pay for a second look on failure.
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Types<'a> {
                #[serde(borrow)]
                api_version: Str<'a>,
                #[serde(borrow)]
                kind: Str<'a>,
            }
            if let Ok(types) = serde_json::from_slice::<Types<'_>>(body) {
                check_types(&types.api_version, &types.kind)?;
            }
            // serde quotes what it could not read (an unknown variant of
            // any length): capped, keeping where it stopped.
            return Err(BadReview(format!(
                "body is not a valid AdmissionReview: {}",
                crate::echo::Capped(&e.to_string())
            )));
        }
    };
    check_types(&api_version, &kind)?;
    let (request, prechecked) =
        request.ok_or_else(|| BadReview("the AdmissionReview has no request".to_owned()))?;
    if request.uid.is_empty() {
        return Err(BadReview(
            "the AdmissionReview request has an empty uid".to_owned(),
        ));
    }
    // The API server always sends the object of a CREATE or UPDATE; one
    // without it is malformed input, refused like any other (an allow here
    // would let a crafted review through unchecked).
    let operation = match request.operation {
        Operation::Create => Some("CREATE"),
        Operation::Update => Some("UPDATE"),
        Operation::Delete | Operation::Connect => None,
    };
    if let (Some(operation), None) = (operation, &request.object) {
        return Err(BadReview(format!(
            "the AdmissionReview request is a {operation} without an object (null or missing); the API server always sends one"
        )));
    }
    Ok((request, prechecked))
}

/// Only `admission.k8s.io/v1` `AdmissionReview` is answered, so the
/// response can echo these constants.
fn check_types(api_version: &str, kind: &str) -> Result<(), BadReview> {
    if api_version == API_VERSION && kind == KIND {
        return Ok(());
    }
    let or = |s: &str, none: &'static str| {
        if s.is_empty() {
            none.to_owned()
        } else {
            crate::echo::value(s)
        }
    };
    Err(BadReview(format!(
        "unsupported {} {}: this webhook answers {API_VERSION} {KIND} (set admissionReviewVersions: [v1])",
        or(api_version, "<no apiVersion>"),
        or(kind, "<no kind>"),
    )))
}

/// Why a request is out of scope before any rule is consulted.
pub fn out_of_scope(req: &Request<'_>) -> Option<&'static str> {
    match req.operation {
        Operation::Delete => return Some("DELETE is not checked"),
        Operation::Connect => return Some("CONNECT is not checked"),
        Operation::Create | Operation::Update => {}
    }
    if req.sub_resource.as_deref().is_some_and(|s| !s.is_empty()) {
        return Some("subresources are not checked");
    }
    // A CREATE or UPDATE without an object never gets here from
    // `parse_review` (400); built by hand, it has no annotations and is
    // denied like any unannotated object, never allowed.
    None
}

/// Whether `rule`'s match holds for the request (every given field must
/// hold). The server asks its rules in order and takes the first.
pub fn rule_matches(rule: &RuleConfig, req: &Request<'_>) -> bool {
    let namespace = req.namespace.as_deref().unwrap_or("");
    let user = req.user_info.username.as_deref().unwrap_or("");
    let groups = req.user_info.groups.as_deref().unwrap_or(&[]);
    let m = &rule.match_;
    (m.namespaces.is_empty() || m.namespaces.iter().any(|n| n == namespace))
        && (m.users.is_empty() || m.users.iter().any(|u| u == user))
        && (m.groups.is_empty()
            || m.groups
                .iter()
                .any(|g| groups.iter().any(|have| have == g.as_str())))
        && (m.kinds.is_empty() || m.kinds.iter().any(|k| kind_matches(k, req)))
}

/// The first rule of `config` whose match holds, with its index in
/// `config.rules` (what the server's compiled rules find too).
pub fn matching_rule<'c>(config: &'c Config, req: &Request<'_>) -> Option<(usize, &'c RuleConfig)> {
    config
        .rules
        .iter()
        .enumerate()
        .find(|(_, rule)| rule_matches(rule, req))
}

/// `Ingress` matches the kind in any group; `networking.k8s.io/Ingress`
/// only in that group.
fn kind_matches(pattern: &str, req: &Request<'_>) -> bool {
    kind_pattern_matches(pattern, &req.kind.group, &req.kind.kind)
}

/// A rule's `match.kinds` entry against an object's API group and kind.
pub fn kind_pattern_matches(pattern: &str, group: &str, kind: &str) -> bool {
    match pattern.rsplit_once('/') {
        Some((g, k)) => g == group && k == kind,
        None => pattern == kind,
    }
}

/// True when the requester is a configured break-glass user or group member.
pub fn is_break_glass(config: &Config, req: &Request<'_>) -> bool {
    let user = req.user_info.username.as_deref().unwrap_or("");
    let groups = req.user_info.groups.as_deref().unwrap_or(&[]);
    config.break_glass.users.iter().any(|u| u == user)
        || config
            .break_glass
            .groups
            .iter()
            .any(|g| groups.iter().any(|have| have == g.as_str()))
}

/// The annotations of the object being applied.
pub fn annotations<'r, 'a>(req: &'r Request<'a>) -> Option<&'r StrMap<'a>> {
    req.object.as_ref()?.metadata.annotations.as_ref()
}

/// Reads both annotations with the configured keys.
pub fn request_facts(config: &Config, req: &Request<'_>) -> RequestFacts {
    let annotations = annotations(req);
    let (revision, checksum) = read_annotations(config, annotations);
    RequestFacts {
        branch: match revision {
            Annotation::Valid(_) => revision_branch(config, annotations),
            _ => None,
        },
        revision,
        checksum,
        break_glass: is_break_glass(config, req),
        claimed_by: policy::ClaimedBy::Annotations,
    }
}

/// The facts of a request whose claim is not read from its annotations
/// (`provenance: none`, or a controller's claim to come): only break-glass.
pub fn facts_without_claim(config: &Config, req: &Request<'_>) -> RequestFacts {
    RequestFacts {
        revision: Annotation::Missing {
            near_misses: Vec::new(),
        },
        branch: None,
        checksum: Annotation::Missing {
            near_misses: Vec::new(),
        },
        break_glass: is_break_glass(config, req),
        claimed_by: policy::ClaimedBy::Annotations,
    }
}

/// The revision and checksum annotations of an object's `annotations`, read
/// with the configured keys (also used by `scan` on running objects).
pub fn read_annotations<M: StringMap>(
    config: &Config,
    annotations: Option<&M>,
) -> (Annotation<Revision>, Annotation<Checksum>) {
    let pairs = annotations.into_iter().flat_map(StringMap::entries);
    // The common case, the key present: one lookup. Otherwise every key
    // is looked at for near misses.
    let exact = |key| annotations.and_then(|a| a.value(key)).map(|v| [(key, v)]);
    let parse_checksum = |v: &str| v.parse::<Checksum>().map_err(|e| e.to_string());
    let keys = &config.annotations;
    (
        match exact(&keys.revision) {
            Some(found) => policy::read_annotation(found, &keys.revision, Revision::parse),
            None => policy::read_annotation(pairs.clone(), &keys.revision, Revision::parse),
        },
        match exact(&keys.checksum) {
            Some(found) => policy::read_annotation(found, &keys.checksum, parse_checksum),
            None => policy::read_annotation(pairs, &keys.checksum, parse_checksum),
        },
    )
}

/// The branch the revision annotation names (`<branch>@sha1:<hex>`), if
/// it is of that form (also used by `scan`).
pub fn revision_branch<M: StringMap>(config: &Config, annotations: Option<&M>) -> Option<String> {
    let value = annotations?.value(config.annotations.revision.as_str())?;
    // The bare and `sha1:` forms name no branch: nothing to parse again.
    if !value.contains('@') {
        return None;
    }
    match Revision::parse_claim(value) {
        Ok((_, Some(branch))) => Some(branch.to_owned()),
        _ => None,
    }
}

/// The revision in a request's annotation, when valid.
pub fn valid_revision(facts: &RequestFacts) -> Option<Revision> {
    match facts.revision {
        Annotation::Valid(r) => Some(r),
        _ => None,
    }
}

/// The AdmissionReview answering `req` with `decision`. Denials carry
/// `status.code: 403` and `reason: Forbidden` (kubectl prints
/// "Error from server (Forbidden)"); every answer carries audit annotations.
pub fn response(req: &Request<'_>, decision: &Decision) -> AdmissionReview<DynamicObject> {
    // `AdmissionResponse::from` wants kube's request type; build the same.
    let mut resp = AdmissionResponse::invalid("");
    resp.types = kube::core::TypeMeta {
        api_version: API_VERSION.to_owned(),
        kind: KIND.to_owned(),
    };
    resp.uid = req.uid.to_string();
    resp.allowed = true;
    resp.result = Status::default();
    if !decision.allowed {
        resp = resp.deny(&decision.message);
        resp.result = Status::failure(&decision.message, "Forbidden").with_code(403);
    }
    resp.audit_annotations = audit_annotations(decision);
    if !decision.warnings.is_empty() {
        resp.warnings = Some(decision.warnings.clone());
    }
    resp.into_review()
}

/// [`response`] serialised, without building kube's types: the same JSON
/// (a test compares the two for every shape of verdict), written directly
/// for the request path. Only the strings that come from outside or from
/// the config (uid, rule name, message, warnings) go through the JSON
/// escaper; the rest are constants, reason codes and hex digits, which
/// need no escaping. It was the largest cost of a warm review after
/// parsing when serialised through serde.
pub fn response_json(req: &Request<'_>, decision: &Decision) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        // Writing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
    fn ascii(out: &mut Vec<u8>, key: &str, value: &[u8]) {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":\"");
        out.extend_from_slice(value);
        out.push(b'"');
    }
    let d = decision;
    let extra = d.message.len() + d.warnings.iter().map(|w| w.len() + 8).sum::<usize>();
    let mut out = Vec::with_capacity(320 + req.uid.len() + extra);
    out.extend_from_slice(b"{\"apiVersion\":\"");
    out.extend_from_slice(API_VERSION.as_bytes());
    out.extend_from_slice(b"\",\"kind\":\"");
    out.extend_from_slice(KIND.as_bytes());
    out.extend_from_slice(b"\",\"response\":{\"uid\":");
    string(&mut out, &req.uid);
    if d.allowed {
        out.extend_from_slice(b",\"allowed\":true,\"status\":{}");
    } else {
        // kube's `Status::failure(message, "Forbidden").with_code(403)`.
        out.extend_from_slice(
            b",\"allowed\":false,\"status\":{\"status\":\"Failure\",\"code\":403",
        );
        if !d.message.is_empty() {
            out.extend_from_slice(b",\"message\":");
            string(&mut out, &d.message);
        }
        out.extend_from_slice(b",\"reason\":\"Forbidden\"}");
    }
    out.extend_from_slice(b",\"auditAnnotations\":{\"reason\":\"");
    out.extend_from_slice(d.reason.as_str().as_bytes());
    out.push(b'"');
    if let Some(rule) = &d.rule {
        out.extend_from_slice(b",\"rule\":");
        string(&mut out, rule);
    }
    for (key, commit) in [("revision", d.revision), ("head", d.head)] {
        if let Some(commit) = commit {
            ascii(&mut out, key, &policy::hex_digits(commit.0));
        }
    }
    if let Some(o) = d.overridden {
        ascii(&mut out, "overridden", o.as_str().as_bytes());
    }
    if let Some(field) = &d.field {
        out.extend_from_slice(b",\"field\":");
        string(&mut out, field);
    }
    if !d.reason.allows() && d.allowed {
        ascii(&mut out, "enforced", b"false");
    }
    out.push(b'}');
    if !d.warnings.is_empty() {
        out.extend_from_slice(b",\"warnings\":[");
        for (i, w) in d.warnings.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(&mut out, w);
        }
        out.push(b']');
    }
    out.extend_from_slice(b"}}");
    out
}

/// Plain keys: the API server prefixes each with the webhook's name.
pub fn audit_annotations(decision: &Decision) -> std::collections::HashMap<String, String> {
    let mut a = std::collections::HashMap::new();
    a.insert("reason".to_owned(), decision.reason.as_str().to_owned());
    if let Some(rule) = &decision.rule {
        a.insert("rule".to_owned(), rule.clone());
    }
    if let Some(r) = decision.revision {
        a.insert("revision".to_owned(), r.to_hex());
    }
    if let Some(h) = decision.head {
        a.insert("head".to_owned(), h.to_hex());
    }
    if let Some(o) = decision.overridden {
        a.insert("overridden".to_owned(), o.as_str().to_owned());
    }
    if let Some(field) = &decision.field {
        a.insert("field".to_owned(), field.clone());
    }
    if !decision.reason.allows() && decision.allowed {
        a.insert("enforced".to_owned(), "false".to_owned());
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_copies_only_the_named_strings() {
        let body = |labels: &str| {
            format!(
                r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{
                "uid":"u","kind":{{"group":"","version":"v1","kind":"ConfigMap"}},
                "name":"c","namespace":"n","operation":"CREATE",
                "object":{{"metadata":{{"name":"c","labels":{labels}}}}}}}}}"#
            )
        };
        let want = |pairs: &[(&'static str, &'static str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (*k, Str(Cow::Borrowed(*v))))
                    .collect::<BTreeMap<_, _>>(),
            )
        };
        let text = body(r#"{"a/name":"web","other":"x","a\/ns":"esc\u0061ped"}"#);
        let req = parse_review(text.as_bytes()).unwrap();
        assert_eq!(
            labels(&req, &["a/name", "a/ns"]),
            want(&[("a/name", "web"), ("a/ns", "escaped")])
        );
        // A label written twice reads as its last value, as in a map.
        let text = body(r#"{"a/name":"old","a/ns":"n","a/name":"web"}"#);
        let req = parse_review(text.as_bytes()).unwrap();
        assert_eq!(
            labels(&req, &["a/name", "a/ns"]),
            want(&[("a/name", "web"), ("a/ns", "n")])
        );
        // Labels that are not a map are no labels, not a refused review.
        let text = body(r#""web""#);
        assert_eq!(
            labels(&parse_review(text.as_bytes()).unwrap(), &["a/name"]),
            None
        );
        // A label that is not a string is skipped, the rest still read.
        let text = body(r#"{"a/name":7,"a/ns":"flux-system"}"#);
        let req = parse_review(text.as_bytes()).unwrap();
        assert_eq!(
            labels(&req, &["a/name", "a/ns"]),
            want(&[("a/ns", "flux-system")])
        );
    }

    /// `response_json` writes what kube's types would, for every shape of
    /// verdict: allowed, denied, warned, overridden, unenforced.
    #[test]
    fn response_json_equals_kubes_serialisation() {
        let body = review("");
        let req = parse_review(body.as_bytes()).unwrap();
        let rev = Revision::parse("9be0d41c9be0d41c9be0d41c9be0d41c9be0d41c").ok();
        let base = Decision {
            reason: policy::Reason::Fresh,
            allowed: true,
            message: "Fresh: revision 9be0d41 is the head of main".into(),
            rule: Some("prod-east".into()),
            revision: rev,
            head: rev,
            expected_checksum: None,
            found_checksum: None,
            overridden: None,
            warnings: Vec::new(),
            mode: None,
            field: None,
        };
        let stale = Decision {
            reason: policy::Reason::StaleRevision,
            allowed: false,
            message: "StaleRevision: \"quoted\" \u{1F600} and \\ escapes".into(),
            head: Revision::parse(&"a".repeat(40)).ok(),
            field: Some("metadata.annotations[\"a.b/c\"]".into()),
            ..base.clone()
        };
        let warned = Decision {
            allowed: true,
            warnings: vec!["stale-guard (warn mode): StaleRevision: x".into()],
            ..stale.clone()
        };
        let overridden = Decision {
            reason: policy::Reason::BreakGlass,
            overridden: Some(policy::Reason::StaleRevision),
            ..base.clone()
        };
        let bare = Decision::out_of_scope("a subresource");
        let odd = Decision {
            rule: Some("rule \"quoted\" \\ <&>".into()),
            warnings: vec!["one".into(), "two \"2\"\n".into()],
            ..warned.clone()
        };
        let escaped_uid = body.replace(r#""uid":"u-1""#, r#""uid":"u-\"1\u0026\\""#);
        let req2 = parse_review(escaped_uid.as_bytes()).unwrap();
        assert_eq!(&*req2.uid, "u-\"1&\\");
        for d in [base, stale, warned, overridden, bare, odd] {
            for req in [&req, &req2] {
                let ours: serde_json::Value =
                    serde_json::from_slice(&response_json(req, &d)).unwrap();
                let kubes = serde_json::to_value(response(req, &d)).unwrap();
                assert_eq!(ours, kubes, "{d:?}");
            }
        }
    }

    fn review(extra: &str) -> String {
        format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u-1","kind":{{"group":"networking.k8s.io","version":"v1","kind":"Ingress"}},"resource":{{"group":"networking.k8s.io","version":"v1","resource":"ingresses"}},"name":"web","namespace":"prod-apps","operation":"CREATE","userInfo":{{"username":"system:serviceaccount:flux-system:kustomize-controller","groups":["system:serviceaccounts"]}},"object":{{"apiVersion":"networking.k8s.io/v1","kind":"Ingress","metadata":{{"name":"web","annotations":{{"fluxcd":"x"}}}}}}{extra}}}}}"#
        )
    }

    /// The one-pass parse: `pick` sees the fields the API server writes
    /// before the object, and the object is checked while it is read.
    #[test]
    fn the_object_is_checked_against_what_the_fields_before_it_pick() {
        struct Fixed(serde_json::Value);
        impl Expectation for Fixed {
            fn rendered(&self) -> &serde_json::Value {
                &self.0
            }
        }
        let body = review("");
        let mut seen = None;
        let (req, pre) = parse_review_checking(body.as_bytes(), |req| {
            seen = Some((
                req.name.to_string(),
                req.namespace.as_deref().map(str::to_owned),
            ));
            Some(Fixed(serde_json::json!({
                "kind": "Ingress", "metadata": {"name": "web", "annotations": {"fluxcd": "x"}}
            })))
        })
        .unwrap();
        assert_eq!(seen, Some(("web".into(), Some("prod-apps".into()))));
        assert!(pre.unwrap().contains);
        assert_eq!(req.object, parse_review(body.as_bytes()).unwrap().object);
        let other = |rendered: serde_json::Value| {
            parse_review_checking(body.as_bytes(), |_| Some(Fixed(rendered)))
                .unwrap()
                .1
                .unwrap()
                .contains
        };
        assert!(!other(
            serde_json::json!({"metadata": {"annotations": {"fluxcd": "y"}}})
        ));
        assert!(!other(
            serde_json::json!({"metadata": {"labels": {"a": "b"}}})
        ));
        // A type the rendering does not expect is "not contained", never
        // a refused review.
        assert!(!other(
            serde_json::json!({"kind": 7, "metadata": {"name": {"x": 1}}})
        ));

        // The object's own errors are the plain parse's.
        for (object, why) in [
            (r#"{"kind":"x"}"#, "no metadata"),
            (r#"{"metadata":null}"#, "no metadata"),
            (
                r#"{"metadata":{"annotations":{"a":"1"},"annotations":{}}}"#,
                "duplicate field",
            ),
            (r#"{"metadata":{"annotations":{"a":1}}}"#, "invalid type"),
        ] {
            let body = review("").replace(
                r#"{"apiVersion":"networking.k8s.io/v1","kind":"Ingress","metadata":{"name":"web","annotations":{"fluxcd":"x"}}}"#,
                object,
            );
            let checked =
                parse_review_checking(body.as_bytes(), |_| Some(Fixed(serde_json::json!({}))));
            let e = checked.err().unwrap().0;
            assert!(e.contains(why), "{object}: {e}");
            assert!(parse_review(body.as_bytes()).unwrap_err().0.contains(why));
        }
        // A null object: no check, and the plain parse's refusal.
        let body = review("").replace(
            r#"{"apiVersion":"networking.k8s.io/v1","kind":"Ingress","metadata":{"name":"web","annotations":{"fluxcd":"x"}}}"#,
            "null",
        );
        let e = parse_review_checking(body.as_bytes(), |_| Some(Fixed(serde_json::json!({}))));
        assert!(e.err().unwrap().0.contains("without an object"));
    }

    #[test]
    fn parses_a_v1_review() {
        let body = review("");
        let req = parse_review(body.as_bytes()).unwrap();
        assert_eq!(req.uid, "u-1");
        assert_eq!(
            annotations(&req)
                .and_then(|a| a.get("fluxcd"))
                .map(|v| &**v),
            Some("x")
        );
        assert_eq!(out_of_scope(&req), None);
    }

    /// Strings borrow from the body unless JSON escapes had to be undone,
    /// and read the same either way (the Go encoder of the API server
    /// writes `<`, `>` and `&` as `\u003c`...).
    #[test]
    fn strings_borrow_unless_escaped() {
        let body = review("")
            .replace(r#""fluxcd":"x""#, r#""a\/b":"x \u0026 \"y\"","plain":"z""#)
            .replace(
                r#""namespace":"prod-apps""#,
                r#""namespace":"prod\u002dapps""#,
            );
        let req = parse_review(body.as_bytes()).unwrap();
        let ann = annotations(&req).unwrap();
        let (k, v) = ann.0.iter().find(|(k, _)| *k == "a/b").unwrap();
        assert!(matches!(k.0, Cow::Owned(_)) && matches!(v.0, Cow::Owned(_)));
        assert_eq!(&**v, "x & \"y\"");
        assert!(matches!(ann.get("plain").unwrap().0, Cow::Borrowed("z")));
        assert_eq!(req.namespace.as_deref(), Some("prod-apps"));
        assert!(matches!(req.uid.0, Cow::Borrowed("u-1")));
        assert!(matches!(req.kind.kind.0, Cow::Borrowed("Ingress")));
        let groups = req.user_info.groups.as_deref().unwrap();
        assert!(matches!(
            groups[0].0,
            Cow::Borrowed("system:serviceaccounts")
        ));
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        let cases: [(&str, &str); 5] = [
            ("{", "not a valid AdmissionReview"),
            (
                r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#,
                "unsupported",
            ),
            (
                r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
                "no request",
            ),
            ("\u{0}\u{1}binary", "not a valid AdmissionReview"),
            ("[]", "not a valid AdmissionReview"),
        ];
        for (body, want) in cases {
            let e = parse_review(body.as_bytes()).unwrap_err();
            assert!(e.0.contains(want), "{body:?}: {e}");
        }
        let no_uid = review("").replace(r#""uid":"u-1","#, "");
        assert!(
            parse_review(no_uid.as_bytes())
                .unwrap_err()
                .0
                .contains("uid")
        );
        let empty_uid = review("").replace(r#""uid":"u-1""#, r#""uid":"""#);
        assert!(
            parse_review(empty_uid.as_bytes())
                .unwrap_err()
                .0
                .contains("empty uid")
        );
        // Not UTF-8, even where nothing is read (the body is checked
        // whole before it is parsed): the byte is named.
        let mut latin1 = review("").into_bytes();
        let at = latin1.len() - 2;
        latin1.splice(at..at, *b",\"x\":\"caf\xe9\"");
        let e = parse_review(&latin1).unwrap_err();
        assert!(e.0.contains(&format!("not UTF-8 (byte {})", at + 9)), "{e}");
    }

    /// A CREATE or UPDATE must carry its object: null or missing is a 400,
    /// not an allow. DELETE and CONNECT carry none.
    #[test]
    fn create_or_update_without_object_is_malformed() {
        let base: serde_json::Value = serde_json::from_str(&review("")).unwrap();
        for op in ["CREATE", "UPDATE"] {
            for null in [true, false] {
                let mut v = base.clone();
                v["request"]["operation"] = op.into();
                let request = v["request"].as_object_mut().unwrap();
                if null {
                    request.insert("object".into(), serde_json::Value::Null);
                } else {
                    request.remove("object");
                }
                let body = v.to_string();
                let e = parse_review(body.as_bytes()).unwrap_err();
                assert!(
                    e.0.contains(op) && e.0.contains("without an object"),
                    "{body}: {e}"
                );
            }
        }
        let mut delete = base.clone();
        delete["request"]["operation"] = "DELETE".into();
        delete["request"]["object"] = serde_json::Value::Null;
        let body = delete.to_string();
        let req = parse_review(body.as_bytes()).unwrap();
        assert!(out_of_scope(&req).is_some());
    }

    #[test]
    fn scope() {
        let del = review("").replace("CREATE", "DELETE");
        assert!(out_of_scope(&parse_review(del.as_bytes()).unwrap()).is_some());
        let sub = review(r#","subResource":"status""#);
        assert!(out_of_scope(&parse_review(sub.as_bytes()).unwrap()).is_some());
    }
}
