//! AdmissionReview in and out (`admission.k8s.io/v1`, kube's types), rule
//! matching, and reading the two annotations. No I/O.

use crate::checksum::Checksum;
use crate::config::{Config, RuleConfig};
use crate::policy::{self, Annotation, Decision, RequestFacts, Revision};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{DynamicObject, Status};
use std::collections::BTreeMap;

pub const API_VERSION: &str = "admission.k8s.io/v1";

/// Why a body is not an AdmissionReview we can answer (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadReview(pub String);

/// Parses and checks an AdmissionReview body.
pub fn parse_review(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, BadReview> {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
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
    check_types(&review.types)?;
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| BadReview("the AdmissionReview has no request".to_owned()))?;
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
pub fn out_of_scope(req: &AdmissionRequest<DynamicObject>) -> Option<&'static str> {
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

/// The first rule whose match holds (every given field must hold).
pub fn matching_rule<'c>(
    config: &'c Config,
    req: &AdmissionRequest<DynamicObject>,
) -> Option<&'c RuleConfig> {
    let namespace = req.namespace.as_deref().unwrap_or("");
    let user = req.user_info.username.as_deref().unwrap_or("");
    let groups = req.user_info.groups.as_deref().unwrap_or(&[]);
    config.rules.iter().find(|rule| {
        let m = &rule.match_;
        (m.namespaces.is_empty() || m.namespaces.iter().any(|n| n == namespace))
            && (m.users.is_empty() || m.users.iter().any(|u| u == user))
            && (m.groups.is_empty() || m.groups.iter().any(|g| groups.contains(g)))
            && (m.kinds.is_empty() || m.kinds.iter().any(|k| kind_matches(k, req)))
    })
}

/// `Ingress` matches the kind in any group; `networking.k8s.io/Ingress`
/// only in that group.
fn kind_matches(pattern: &str, req: &AdmissionRequest<DynamicObject>) -> bool {
    match pattern.rsplit_once('/') {
        Some((group, kind)) => group == req.kind.group && kind == req.kind.kind,
        None => pattern == req.kind.kind,
    }
}

/// True when the requester is a configured break-glass user or group member.
pub fn is_break_glass(config: &Config, req: &AdmissionRequest<DynamicObject>) -> bool {
    let user = req.user_info.username.as_deref().unwrap_or("");
    let groups = req.user_info.groups.as_deref().unwrap_or(&[]);
    config.break_glass.users.iter().any(|u| u == user)
        || config.break_glass.groups.iter().any(|g| groups.contains(g))
}

/// The annotations of the object being applied.
pub fn annotations(req: &AdmissionRequest<DynamicObject>) -> BTreeMap<String, String> {
    req.object
        .as_ref()
        .and_then(|o| o.metadata.annotations.clone())
        .unwrap_or_default()
}

/// Reads both annotations with the configured keys.
pub fn request_facts(config: &Config, req: &AdmissionRequest<DynamicObject>) -> RequestFacts {
    let annotations = annotations(req);
    let pairs = annotations.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    RequestFacts {
        revision: policy::read_annotation(
            pairs.clone(),
            &config.annotations.revision,
            Revision::parse,
        ),
        checksum: policy::read_annotation(pairs, &config.annotations.checksum, |v| {
            v.parse::<Checksum>().map_err(|e| e.to_string())
        }),
        break_glass: is_break_glass(config, req),
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
pub fn response(
    req: &AdmissionRequest<DynamicObject>,
    decision: &Decision,
) -> AdmissionReview<DynamicObject> {
    let mut resp = AdmissionResponse::from(req);
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
            annotations(&req).get("fluxcd").map(String::as_str),
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
