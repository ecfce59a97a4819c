//! What a rendered object was already found in: for each of its top-level
//! maps and lists (`spec`, `data`, `rules`...), the bytes of the first
//! review whose object contained it there. A later review whose object
//! writes that field with the same bytes contains it too, and the field
//! is not walked again: it is only delimited, as a parser that reads
//! nothing of it would. An unchanged object applied again (every
//! reconciliation of a GitOps controller) writes the same bytes: the API
//! server serialises it the same way each time.
//!
//! Kept beside the rendered object, so a new rendering starts empty. The
//! first bytes are kept (never replaced: reads take no lock); a field
//! written differently later is walked as before. Each field keeps at most
//! [`Seen::limit`] bytes, counted in the rendering's cache weight.

use serde_json::Value;
use std::sync::OnceLock;

/// The fields of one rendered object, and the bytes each was found in.
#[derive(Debug, Default)]
pub struct Seen {
    fields: Vec<Field>,
}

#[derive(Debug)]
struct Field {
    key: Box<str>,
    /// The most bytes kept: four times the rendered value's JSON, plus 1
    /// KiB (defaults the API server adds can double a spec).
    limit: usize,
    bytes: OnceLock<Box<[u8]>>,
}

impl Seen {
    /// The fields of `rendered` worth remembering: its top-level maps and
    /// lists but `metadata` (read for the request too) and `status` (not
    /// compared).
    pub fn new(rendered: &Value) -> Seen {
        let fields = rendered
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| (v.is_object() || v.is_array()) && *k != "metadata" && *k != "status")
            .map(|(k, v)| Field {
                key: k.as_str().into(),
                limit: json_len(v).saturating_mul(4).saturating_add(1024),
                bytes: OnceLock::new(),
            })
            .collect();
        Seen { fields }
    }

    /// The most heap this can come to hold, in bytes.
    pub fn limit(&self) -> usize {
        self.fields
            .iter()
            .map(|f| f.limit + f.key.len() + std::mem::size_of::<Field>())
            .sum()
    }

    /// Whether `key` is remembered.
    pub(crate) fn field(&self, key: &[u8]) -> Option<SeenField<'_>> {
        self.fields
            .iter()
            .find(|f| f.key.as_bytes() == key)
            .map(SeenField)
    }
}

/// One remembered field.
#[derive(Clone, Copy)]
pub(crate) struct SeenField<'s>(&'s Field);

impl SeenField<'_> {
    /// Whether `raw` (the field's JSON as a review wrote it) is the bytes
    /// found to contain the rendering before.
    pub fn is(self, raw: &[u8]) -> bool {
        self.0.bytes.get().is_some_and(|b| **b == *raw)
    }

    /// Remembers `raw`, found to contain the rendering (unless over the
    /// limit, or bytes are remembered already).
    pub fn remember(self, raw: &[u8]) {
        if raw.len() <= self.0.limit {
            let _ = self.0.bytes.set(raw.into());
        }
    }
}

/// The length of `v` written as compact JSON.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value to a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, v);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn remembers_top_level_maps_and_lists_once_within_the_limit() {
        let seen = Seen::new(&json!({
            "kind": "X", "metadata": {"name": "a"}, "status": {"a": 1},
            "spec": {"a": 1}, "rules": [1]
        }));
        assert!(seen.field(b"kind").is_none());
        assert!(seen.field(b"metadata").is_none());
        assert!(seen.field(b"status").is_none());
        let spec = seen.field(b"spec").unwrap();
        assert!(!spec.is(br#"{"a":1}"#));
        spec.remember(br#"{"a":1}"#);
        spec.remember(br#"{"a":1,"b":2}"#);
        assert!(spec.is(br#"{"a":1}"#), "the first bytes are kept");
        assert!(!spec.is(br#"{"a":1,"b":2}"#));
        let rules = seen.field(b"rules").unwrap();
        rules.remember(&vec![b' '; 2000]);
        assert!(!rules.is(&vec![b' '; 2000]), "over the limit: not kept");
        assert_eq!(json_len(&json!({"a": [1, "b"]})), 13);
        assert!(seen.limit() >= 2 * 1024);
    }
}
