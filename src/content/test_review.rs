//! The AdmissionReview body the content module's tests read objects
//! from: an UPDATE whose `oldObject` differs from the object (so a reader
//! that took the wrong one would notice).

use serde_json::{Value, json};

pub(super) fn review(object: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u", "oldObject": {"spec": 1, "x": 1}, "object": object}
    }))
    .expect("a JSON value serialises")
}
