//! Reading only what a comparison looks at: the object of an
//! AdmissionReview built as far as the renderings it is compared with set
//! fields, everything else (`managedFields`, `status`, labels and
//! annotations other tools add) skipped by the parser without being
//! built. Building the whole object was most of a warm review's cost.
//!
//! [`super::compare`] reads the object only where the rendering sets a
//! field, so for each rendering given, `compare(rendering, pruned)` equals
//! `compare(rendering, whole)`; a test checks it, and the fuzz target
//! too.

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// The `request.object` of an AdmissionReview `body`, built only where one
/// of `renderings` sets a field. `None` when the body has no object.
pub fn review_object(body: &[u8], renderings: &[&Value]) -> Result<Option<Value>, String> {
    let pruned = Pruned {
        renderings: renderings.to_vec(),
        top: true,
    };
    super::envelope::read_object(body, pruned)
}

/// A value built where one of `renderings` sets something: a map keeps
/// the keys some rendering has (recursively), anything else is built
/// whole (lists of maps are matched element by element, in any order).
#[derive(Clone)]
struct Pruned<'r> {
    renderings: Vec<&'r Value>,
    /// The object itself: a Secret's `stringData` is compared with its
    /// `data`, so `data` is kept when a rendering has `stringData`.
    top: bool,
}

impl<'r> Pruned<'r> {
    /// The renderings' values under `key`, when every rendering here is a
    /// map (or absent); `None` to skip the key.
    fn under(&self, key: &str) -> Option<Pruned<'r>> {
        let mut subs: Vec<&'r Value> = self
            .renderings
            .iter()
            .filter_map(|r| r.as_object()?.get(key))
            .collect();
        if self.top
            && key == "data"
            && subs.is_empty()
            && self
                .renderings
                .iter()
                .any(|r| r.get("stringData").is_some())
        {
            // Built whole: the rendering's stringData is read against it.
            subs.push(&Value::Null);
        }
        (!subs.is_empty()).then_some(Pruned {
            renderings: subs,
            top: false,
        })
    }

    /// True when some rendering here is not a map: build the value whole.
    fn whole(&self) -> bool {
        self.renderings.iter().any(|r| !r.is_object())
    }
}

impl<'de> DeserializeSeed<'de> for Pruned<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.whole() {
            return <Value as serde::Deserialize>::deserialize(d);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Pruned<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<crate::admission::Str<'de>>()? {
            match self.under(&key) {
                Some(seed) => {
                    let value = map.next_value_seed(seed)?;
                    out.insert(key.0.into_owned(), value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    // Where the rendering has a map but the object has something else,
    // the value is built whole, as Value's own visitor would.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element::<Value>()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::content::test_review::review;

    #[test]
    fn only_what_a_rendering_sets_is_built() {
        let object = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "prod",
                "managedFields": [{"manager": "kubectl"}],
                "annotations": {"a": "1", "b": "2"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "web", "image": "web:1"}, {"name": "sidecar"}]}}},
            "status": {"replicas": 2}
        });
        let rendered = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "annotations": {"a": "1"}},
            "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "web:1"}]}}}
        });
        let pruned = review_object(&review(&object), &[&rendered])
            .unwrap()
            .unwrap();
        assert_eq!(
            pruned,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "annotations": {"a": "1"}},
                "spec": {"template": {"spec": {"containers": [
                    {"name": "web", "image": "web:1"}, {"name": "sidecar"}]}}}
            })
        );
        assert!(crate::content::matches(&rendered, &pruned));
    }

    /// For every rendering given, the comparison with the pruned object
    /// says what it says with the whole one.
    #[test]
    fn comparisons_agree_with_the_whole_object() {
        let object = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "labels": {"x": "1"}},
            "data": {"k": "dg=="}, "type": "Opaque"
        });
        let renderings = [
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                   "stringData": {"k": "v"}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                   "stringData": {"k": "w"}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "labels": {"x": "2"}}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": "odd", "data": [1]}),
            json!(null),
        ];
        for r in &renderings {
            let pruned = review_object(&review(&object), &[r]).unwrap().unwrap();
            assert_eq!(
                crate::content::compare(r, &pruned),
                crate::content::compare(r, &object),
                "{r}"
            );
        }
    }

    #[test]
    fn a_body_without_an_object_has_none() {
        let body = br#"{"request": {"uid": "u"}}"#;
        assert_eq!(review_object(body, &[&json!({})]).unwrap(), None);
        assert!(review_object(b"{", &[]).is_err());
    }
}
