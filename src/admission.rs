//! AdmissionReview in (a lean request in kube's shape) and out (kube's types), rule
//! matching, and reading the two annotations. No I/O.

use crate::checksum::Checksum;
use crate::config::{Config, RuleConfig};
use crate::policy::{self, Annotation, Decision, RequestFacts, Revision};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::admission::{AdmissionResponse, AdmissionReview, Operation};
use kube::core::{DynamicObject, Status};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The object under review, as far as the webhook reads it: the name,
/// namespace and annotations of its metadata. The parser skips everything
/// else (spec, status, managedFields...) without building it: that is most
/// of a review's bytes, and building it dominated the cost of a request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppliedObject {
    pub metadata: ObjectMeta,
}

/// A review request, as far as the webhook reads it. The shape and field
/// types are kube's (`AdmissionRequest`), minus what no decision uses
/// (resource, requestKind, options, oldObject...), which the parser skips
/// without building: each of those costs allocations on every request.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// From the envelope, echoed in the response.
    #[serde(skip)]
    pub types: kube::core::TypeMeta,
    pub uid: String,
    pub kind: kube::core::GroupVersionKind,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub operation: Operation,
    #[serde(default)]
    pub user_info: UserInfo,
    #[serde(default)]
    pub object: Option<AppliedObject>,
    #[serde(default)]
    pub dry_run: bool,
}

/// Who sent the request.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct UserInfo {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub groups: Option<Vec<String>>,
}

impl<'de> Deserialize<'de> for AppliedObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Unknown fields are skipped by the derived code (IgnoredAny).
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            metadata: Option<RawMeta>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct RawMeta {
            name: Option<String>,
            namespace: Option<String>,
            generate_name: Option<String>,
            annotations: Option<BTreeMap<String, String>>,
        }
        let raw = Raw::deserialize(d)?;
        // Every Kubernetes object has metadata; one without is not a review
        // the API server sent.
        let m = raw
            .metadata
            .ok_or_else(|| serde::de::Error::custom("the object has no metadata"))?;
        Ok(AppliedObject {
            metadata: ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                generate_name: m.generate_name,
                annotations: m.annotations,
                ..ObjectMeta::default()
            },
        })
    }
}

pub const API_VERSION: &str = "admission.k8s.io/v1";

/// Why a body is not an AdmissionReview we can answer (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadReview(pub String);

/// Parses and checks an AdmissionReview body.
pub fn parse_review(body: &[u8]) -> Result<Request, BadReview> {
    // kube's `AdmissionReview` flattens its TypeMeta, which makes serde
    // buffer the whole body into an intermediate tree first; this envelope
    // reads the same fields in one pass (half the cost of a request).
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Envelope {
        #[serde(default)]
        api_version: String,
        #[serde(default)]
        kind: String,
        request: Option<Request>,
    }
    let envelope: Envelope = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            // A wrong version deserves that message rather than the first
            // field it lacks; only pay for a second look on failure.
            if let Ok(types) = serde_json::from_slice::<kube::core::TypeMeta>(body) {
                check_types(&types)?;
            }
            return Err(BadReview(format!(
                "body is not a valid AdmissionReview: {e}"
            )));
        }
    };
    let types = kube::core::TypeMeta {
        api_version: envelope.api_version,
        kind: envelope.kind,
    };
    check_types(&types)?;
    let mut request = envelope
        .request
        .ok_or_else(|| BadReview("the AdmissionReview has no request".to_owned()))?;
    request.types = types;
    if request.uid.is_empty() {
        return Err(BadReview(
            "the AdmissionReview request has an empty uid".to_owned(),
        ));
    }
    Ok(request)
}

fn check_types(types: &kube::core::TypeMeta) -> Result<(), BadReview> {
    if types.api_version == API_VERSION && types.kind == "AdmissionReview" {
        return Ok(());
    }
    let or = |s: &str, none: &'static str| {
        if s.is_empty() {
            none.to_owned()
        } else {
            s.to_owned()
        }
    };
    Err(BadReview(format!(
        "unsupported {} {}: this webhook answers {API_VERSION} AdmissionReview (set admissionReviewVersions: [v1])",
        or(&types.api_version, "<no apiVersion>"),
        or(&types.kind, "<no kind>"),
    )))
}

/// Why a request is out of scope before any rule is consulted.
pub fn out_of_scope(req: &Request) -> Option<&'static str> {
    match req.operation {
        Operation::Delete => return Some("DELETE is not checked"),
        Operation::Connect => return Some("CONNECT is not checked"),
        Operation::Create | Operation::Update => {}
    }
    if req.sub_resource.as_deref().is_some_and(|s| !s.is_empty()) {
        return Some("subresources are not checked");
    }
    if req.object.is_none() {
        return Some("the request carries no object");
    }
    None
}

/// The first rule whose match holds (every given field must hold), with
/// its index in `config.rules`.
pub fn matching_rule<'c>(config: &'c Config, req: &Request) -> Option<(usize, &'c RuleConfig)> {
    let namespace = req.namespace.as_deref().unwrap_or("");
    let user = req.user_info.username.as_deref().unwrap_or("");
    let groups = req.user_info.groups.as_deref().unwrap_or(&[]);
    config.rules.iter().enumerate().find(|(_, rule)| {
        let m = &rule.match_;
        (m.namespaces.is_empty() || m.namespaces.iter().any(|n| n == namespace))
            && (m.users.is_empty() || m.users.iter().any(|u| u == user))
            && (m.groups.is_empty() || m.groups.iter().any(|g| groups.contains(g)))
            && (m.kinds.is_empty() || m.kinds.iter().any(|k| kind_matches(k, req)))
    })
}

/// `Ingress` matches the kind in any group; `networking.k8s.io/Ingress`
/// only in that group.
fn kind_matches(pattern: &str, req: &Request) -> bool {
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
pub fn is_break_glass(config: &Config, req: &Request) -> bool {
    let user = req.user_info.username.as_deref().unwrap_or("");
    let groups = req.user_info.groups.as_deref().unwrap_or(&[]);
    config.break_glass.users.iter().any(|u| u == user)
        || config.break_glass.groups.iter().any(|g| groups.contains(g))
}

/// The annotations of the object being applied.
pub fn annotations(req: &Request) -> Option<&BTreeMap<String, String>> {
    req.object.as_ref()?.metadata.annotations.as_ref()
}

/// Reads both annotations with the configured keys.
pub fn request_facts(config: &Config, req: &Request) -> RequestFacts {
    let (revision, checksum) = read_annotations(config, annotations(req));
    RequestFacts {
        revision,
        checksum,
        break_glass: is_break_glass(config, req),
    }
}

/// The revision and checksum annotations of an object's `annotations`, read
/// with the configured keys (also used by `scan` on running objects).
pub fn read_annotations(
    config: &Config,
    annotations: Option<&BTreeMap<String, String>>,
) -> (Annotation<Revision>, Annotation<Checksum>) {
    let pairs = annotations
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str()));
    // The common case, the key present: one map lookup. Otherwise every
    // key is looked at for near misses.
    let exact = |key: &str| {
        annotations
            .and_then(|a| a.get_key_value(key))
            .map(|(k, v)| [(k.as_str(), v.as_str())])
    };
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
pub fn response(req: &Request, decision: &Decision) -> AdmissionReview<DynamicObject> {
    // `AdmissionResponse::from` wants kube's request type; build the same.
    let mut resp = AdmissionResponse::invalid("");
    resp.types = req.types.clone();
    resp.uid = req.uid.clone();
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
/// (a test compares the two), at a fraction of the allocations, for the
/// request path.
pub fn response_json(req: &Request, decision: &Decision) -> Vec<u8> {
    use serde::Serialize;

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Review<'a> {
        api_version: &'a str,
        kind: &'a str,
        response: Response<'a>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Response<'a> {
        uid: &'a str,
        allowed: bool,
        status: Status<'a>,
        audit_annotations: Audit<'a>,
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        warnings: &'a [String],
    }
    /// kube's `Status`: empty when allowed, a 403 Failure when denied.
    #[derive(Serialize)]
    struct Status<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<u16>,
        #[serde(skip_serializing_if = "str::is_empty")]
        message: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        reason: &'a str,
    }
    struct Audit<'a>(&'a Decision);
    impl Serialize for Audit<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let d = self.0;
            let mut map = s.serialize_map(None)?;
            map.serialize_entry("reason", d.reason.as_str())?;
            if let Some(rule) = &d.rule {
                map.serialize_entry("rule", rule)?;
            }
            for (key, commit) in [("revision", d.revision), ("head", d.head)] {
                if let Some(commit) = commit {
                    let digits = policy::hex_digits(commit.0);
                    map.serialize_entry(key, std::str::from_utf8(&digits).unwrap_or_default())?;
                }
            }
            if let Some(o) = d.overridden {
                map.serialize_entry("overridden", o.as_str())?;
            }
            if !d.reason.allows() && d.allowed {
                map.serialize_entry("enforced", "false")?;
            }
            map.end()
        }
    }
    let status = if decision.allowed {
        Status {
            status: None,
            code: None,
            message: "",
            reason: "",
        }
    } else {
        Status {
            status: Some("Failure"),
            code: Some(403),
            message: &decision.message,
            reason: "Forbidden",
        }
    };
    let review = Review {
        api_version: &req.types.api_version,
        kind: &req.types.kind,
        response: Response {
            uid: &req.uid,
            allowed: decision.allowed,
            status,
            audit_annotations: Audit(decision),
            warnings: &decision.warnings,
        },
    };
    let mut out = Vec::with_capacity(512);
    // Serialising borrowed strings and integers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, &review);
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
    if !decision.reason.allows() && decision.allowed {
        a.insert("enforced".to_owned(), "false".to_owned());
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `response_json` writes what kube's types would, for every shape of
    /// verdict: allowed, denied, warned, overridden, unenforced.
    #[test]
    fn response_json_equals_kubes_serialisation() {
        let req = parse_review(review("").as_bytes()).unwrap();
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
        };
        let stale = Decision {
            reason: policy::Reason::StaleRevision,
            allowed: false,
            message: "StaleRevision: \"quoted\" \u{1F600} and \\ escapes".into(),
            head: Revision::parse(&"a".repeat(40)).ok(),
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
        for d in [base, stale, warned, overridden, bare] {
            let ours: serde_json::Value = serde_json::from_slice(&response_json(&req, &d)).unwrap();
            let kubes = serde_json::to_value(response(&req, &d)).unwrap();
            assert_eq!(ours, kubes, "{d:?}");
        }
    }

    fn review(extra: &str) -> String {
        format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u-1","kind":{{"group":"networking.k8s.io","version":"v1","kind":"Ingress"}},"resource":{{"group":"networking.k8s.io","version":"v1","resource":"ingresses"}},"name":"web","namespace":"prod-apps","operation":"CREATE","userInfo":{{"username":"system:serviceaccount:flux-system:kustomize-controller","groups":["system:serviceaccounts"]}},"object":{{"apiVersion":"networking.k8s.io/v1","kind":"Ingress","metadata":{{"name":"web","annotations":{{"fluxcd":"x"}}}}}}{extra}}}}}"#
        )
    }

    #[test]
    fn parses_a_v1_review() {
        let req = parse_review(review("").as_bytes()).unwrap();
        assert_eq!(req.uid, "u-1");
        assert_eq!(
            annotations(&req)
                .and_then(|a| a.get("fluxcd"))
                .map(String::as_str),
            Some("x")
        );
        assert_eq!(out_of_scope(&req), None);
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
    }

    #[test]
    fn scope() {
        let del = review("").replace("CREATE", "DELETE");
        assert!(out_of_scope(&parse_review(del.as_bytes()).unwrap()).is_some());
        let sub = review(r#","subResource":"status""#);
        assert!(out_of_scope(&parse_review(sub.as_bytes()).unwrap()).is_some());
    }
}
