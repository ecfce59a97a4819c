//! A one-sided check read straight from the review's bytes: true only
//! when the object contains the rendering field for field, strings and
//! numbers written the same, lists of maps in the same order (extra
//! elements, such as an injected sidecar, skipped). Nothing is built: the
//! parser walks the object against the rendering and skips what the
//! rendering does not set.
//!
//! When it says true, [`super::compare`] says the same (the rendering is
//! then a subset of the object in the strictest sense; the fuzz target and
//! a property test check it). When it says false, the caller parses the
//! object and compares properly: quantities written another way, a
//! Secret's `stringData`, numbers like `1.0`, reordered lists and real
//! differences all take that path. A warm review of an unchanged object,
//! by far the most common, takes this one: building the object was most
//! of its cost.

use super::seen::{Pairs, PairsRead};
use crate::admission::OrNull;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::fmt;

/// Whether the `request.object` of the AdmissionReview `body` contains
/// `rendered` as described above. Malformed JSON or no object: false.
pub fn review_contains(body: &[u8], rendered: &Value) -> bool {
    let sub = Sub {
        rendered,
        top: true,
    };
    matches!(super::envelope::read_object(body, sub), Ok(Some(true)))
}

/// Whether the value being read contains `rendered`.
#[derive(Clone, Copy)]
struct Sub<'r> {
    rendered: &'r Value,
    /// The object itself: its `status` is not compared.
    top: bool,
}

impl<'de> DeserializeSeed<'de> for Sub<'_> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        if self.rendered.is_null() {
            // `null` in the rendering sets nothing.
            d.deserialize_ignored_any(IgnoredAny)?;
            return Ok(true);
        }
        // Never an error on valid JSON, whatever the types: the review's
        // parse reads the object with this (`ObjectSeed`), and an error
        // there would refuse the review.
        d.deserialize_any(self)
    }
}

/// A map key as bytes borrowed from the body (copied when it has escapes),
/// without the UTF-8 check a `str` costs.
struct KeyBytes<'de>(std::borrow::Cow<'de, [u8]>);

impl<'de> serde::Deserialize<'de> for KeyBytes<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyBytes<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<KeyBytes<'de>, E> {
                Ok(KeyBytes(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<KeyBytes<'de>, E> {
                Ok(KeyBytes(std::borrow::Cow::Owned(v.to_vec())))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Whether the map being read contains `rendered`: each key the
/// rendering sets (but `null`, and the object's own `status`) present once
/// and containing the rendered value. `hook` sees every key first, with
/// the rendered value when the key counts; when it returns `Some`, it has
/// read the value itself and says whether that contains it.
fn contains_map<'de, A, H>(
    mut map: A,
    rendered: &serde_json::Map<String, Value>,
    top: bool,
    mut hook: H,
) -> Result<bool, A::Error>
where
    A: MapAccess<'de>,
    H: FnMut(&[u8], Option<&Value>, &mut A) -> Result<Option<bool>, A::Error>,
{
    let counted = |k: &str, v: &Value| !(v.is_null() || top && k == "status");
    let want = rendered.iter().filter(|(k, v)| counted(k, v)).count();
    // Which rendered keys were matched, by position: a key written
    // twice must not stand in for one the object lacks. Wider maps
    // take the careful path.
    let mut matched: u128 = 0;
    let mut ok = rendered.len() <= 128;
    while let Some(key) = map.next_key::<KeyBytes<'de>>()? {
        let found = rendered
            .iter()
            .enumerate()
            .find(|(_, (k, _))| k.as_bytes() == &*key.0)
            .filter(|(_, (k, v))| counted(k, v));
        let read = hook(&key.0, found.map(|(_, (_, v))| v), &mut map)?;
        match found {
            Some((i, (_, v))) if ok => {
                let bit = 1u128 << i;
                let contained = match read {
                    Some(contained) => contained,
                    None if matched & bit != 0 => {
                        map.next_value::<IgnoredAny>()?;
                        false
                    }
                    None => map.next_value_seed(Sub {
                        rendered: v,
                        top: false,
                    })?,
                };
                if matched & bit != 0 || !contained {
                    ok = false;
                } else {
                    matched |= bit;
                }
            }
            _ => {
                if read.is_none() {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
    }
    Ok(ok && matched.count_ones() as usize == want)
}

/// The `request.object` of a review read once for two purposes: the
/// metadata the request needs ([`crate::admission::Metadata`], as its own
/// parser reads it) and whether the object contains `rendered` (as
/// [`review_contains`] says). A map visitor: `null` is the caller's
/// (`admission::read::OrNull`).
pub(crate) struct ObjectSeed<'r> {
    pub rendered: &'r Value,
    /// Where the object's fields were found to contain the rendering
    /// before ([`super::Seen`]).
    pub seen: Option<&'r super::Seen>,
}

/// The metadata read, and whether the object contains the rendering.
pub(crate) type ObjectRead<'de> = (Option<crate::admission::Metadata<'de>>, bool);

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = ObjectRead<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let (rendered, shaped) = match self.rendered.as_object() {
            Some(m) => (m, true),
            None => (&*EMPTY, false),
        };
        let mut metadata = None;
        let contained = contains_map(map, rendered, true, |key, want, map| {
            if key != b"metadata" {
                let (Some(want), Some(field)) = (want, self.seen.and_then(|s| s.field(key))) else {
                    return Ok(None);
                };
                // Delimited only; walked when not the bytes seen before.
                let raw: &serde_json::value::RawValue = map.next_value()?;
                let raw = raw.get();
                if field.is(raw.as_bytes()) {
                    return Ok(Some(true));
                }
                let sub = Sub {
                    rendered: want,
                    top: false,
                };
                let contained = sub
                    .deserialize(&mut serde_json::Deserializer::from_str(raw))
                    .unwrap_or(false);
                if contained {
                    field.remember(raw.as_bytes());
                }
                return Ok(Some(contained));
            }
            if metadata.is_some() {
                return Err(de::Error::duplicate_field("metadata"));
            }
            let seed = OrNull(MetaSeed {
                rendered: want,
                seen: self.seen,
            });
            let (read, contained) = match map.next_value_seed(seed)? {
                Some((read, contained)) => (Some(read), contained),
                // `null` sets nothing: contained only if nothing is rendered.
                None => (None, want.is_none()),
            };
            metadata = Some(read);
            Ok(Some(contained))
        })?;
        Ok((metadata.flatten(), shaped && contained))
    }
}

static EMPTY: std::sync::LazyLock<serde_json::Map<String, Value>> =
    std::sync::LazyLock::new(serde_json::Map::new);

/// An object's `metadata` (a map visitor), read as
/// [`crate::admission::Metadata`] and checked against the rendered
/// metadata when there is one (`None`: the plain parse, whose check is
/// not looked at).
pub(crate) struct MetaSeed<'r> {
    pub rendered: Option<&'r Value>,
    /// Where the labels and annotations were read before.
    pub seen: Option<&'r super::Seen>,
}

impl<'de> Visitor<'de> for MetaSeed<'_> {
    type Value = (crate::admission::Metadata<'de>, bool);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("struct Metadata")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        use crate::admission::{Metadata, StrMap};
        let (rendered, shaped) = match self.rendered.map(Value::as_object) {
            None => (&*EMPTY, true),
            Some(Some(m)) => (m, true),
            Some(None) => (&*EMPTY, false),
        };
        let mut annotations: Option<Option<StrMap<'de>>> = None;
        let mut labels: Option<Option<StrMap<'de>>> = None;
        let contained = contains_map(map, rendered, false, |key, want, map| {
            let (slot, field, lenient, which) = match key {
                b"annotations" => (&mut annotations, "annotations", false, Pairs::Annotations),
                b"labels" => (&mut labels, "labels", true, Pairs::Labels),
                _ => return Ok(None),
            };
            if slot.is_some() {
                return Err(de::Error::duplicate_field(field));
            }
            let seed = PairsSeed {
                rendered: want,
                lenient,
            };
            let (read, contained) = match self.seen.map(|s| s.pairs(which)) {
                None => map.next_value_seed(seed)?,
                Some(seen) => {
                    // Delimited only; walked when not the bytes seen before.
                    let raw: &'de serde_json::value::RawValue = map.next_value()?;
                    let text = raw.get();
                    match seen.get(text) {
                        Some(read) => read,
                        None => {
                            let read = seed
                                .deserialize(&mut serde_json::Deserializer::from_str(text))
                                .map_err(|e| de::Error::custom(without_position(&e)))?;
                            seen.remember(text, &read);
                            read
                        }
                    }
                }
            };
            *slot = Some(read);
            Ok(Some(contained))
        })?;
        let metadata = Metadata {
            annotations: annotations.flatten(),
            labels: labels.flatten(),
        };
        Ok((metadata, shaped && contained))
    }
}

/// `e`'s message without the position in the text it was read from (the
/// enclosing parser adds its own).
fn without_position(e: &serde_json::Error) -> String {
    let message = e.to_string();
    match message.rfind(" at line ") {
        Some(at) if e.line() > 0 => message[..at].to_owned(),
        _ => message,
    }
}

/// Labels or annotations, a map of strings: read into a
/// [`crate::admission::StrMap`] and, in the same pass, checked against the
/// rendered map when there is one (as [`Sub`] would check it). `lenient`:
/// a value that is not a string, or a map that is not one, is skipped
/// (labels); otherwise it refuses the review, as it always has
/// (annotations).
struct PairsSeed<'r> {
    rendered: Option<&'r Value>,
    lenient: bool,
}

impl<'de> DeserializeSeed<'de> for PairsSeed<'_> {
    type Value = PairsRead<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        if self.lenient {
            d.deserialize_any(self)
        } else {
            d.deserialize_option(self)
        }
    }
}

/// A value of a lenient map: a string or nothing.
struct LenientStr<'de>(Option<crate::admission::Str<'de>>);

impl<'de> serde::Deserialize<'de> for LenientStr<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use crate::admission::Str;
        use std::borrow::Cow;
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LenientStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Str(Cow::Borrowed(v)))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Str(Cow::Owned(v.to_owned())))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
                IgnoredAny.visit_seq(a).map(|_| LenientStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
                IgnoredAny.visit_map(a).map(|_| LenientStr(None))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Visitor<'de> for PairsSeed<'_> {
    type Value = PairsRead<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use crate::admission::{Str, StrMap};
        // Which rendered keys were matched, by position, as in
        // `contains_map`; `None`: nothing to check, or too wide to track.
        let rendered = match self.rendered.map(Value::as_object) {
            Some(Some(m)) if m.len() <= 128 => Some(m),
            _ => None,
        };
        let mut ok = rendered.is_some();
        let mut matched: u128 = 0;
        // Room for the usual number of labels or annotations at once.
        let mut pairs = Vec::with_capacity(16);
        while let Some(key) = map.next_key::<Str<'de>>()? {
            let value = if self.lenient {
                map.next_value::<LenientStr<'de>>()?.0
            } else {
                Some(map.next_value::<Str<'de>>()?)
            };
            if let (true, Some(rendered)) = (ok, rendered) {
                let found = rendered
                    .iter()
                    .enumerate()
                    .find(|(_, (k, _))| k.as_str() == &*key);
                if let Some((i, (_, want))) = found.filter(|(_, (_, w))| !w.is_null()) {
                    let bit = 1u128 << i;
                    match (&value, want.as_str()) {
                        (Some(v), Some(w)) if matched & bit == 0 && **v == *w => matched |= bit,
                        _ => ok = false,
                    }
                }
            }
            if let Some(value) = value {
                pairs.push((key, value));
            }
        }
        let want = rendered.map_or(0, |m| m.values().filter(|v| !v.is_null()).count());
        Ok((
            Some(StrMap(pairs)),
            ok && matched.count_ones() as usize == want,
        ))
    }

    // `null`: no map (and not containing a rendered one).
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok((None, false))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok((None, false))
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }

    // Only when lenient (`deserialize_any`): not a map, no labels.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok((None, false))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok((None, false))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok((None, false))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok((None, false))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok((None, false))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_seq(a).map(|_| (None, false))
    }
}

impl<'de> Visitor<'de> for Sub<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let Some(rendered) = self.rendered.as_object() else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(false);
        };
        contains_map(map, rendered, self.top, |_, _, _| Ok(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let Some(rendered) = self.rendered.as_array() else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(false);
        };
        // An empty rendered list is not a list of maps: it says "empty".
        let maps = !rendered.is_empty() && rendered.iter().all(Value::is_object);
        let mut next = 0;
        let mut ok = true;
        while let Some(want) = rendered.get(next).filter(|_| ok) {
            let Some(matched) = seq.next_element_seed(Sub {
                rendered: want,
                top: false,
            })?
            else {
                break;
            };
            if matched {
                next += 1;
            } else if !maps {
                // Scalars and mixed lists: equal, in order.
                ok = false;
            }
            // Lists of maps: an element the rendering lacks (a sidecar)
            // is skipped.
        }
        let mut extra = false;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            extra = true;
        }
        Ok(ok && next == rendered.len() && (maps || !extra))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(self.rendered.as_bool() == Some(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        Ok(self.rendered.as_i64() == Some(v) && !self.rendered.is_f64())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        Ok(self.rendered.as_u64() == Some(v) && !self.rendered.is_f64())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<bool, E> {
        Ok(self.rendered.is_f64() && self.rendered.as_f64() == Some(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(self.rendered.as_str() == Some(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::content::test_review::review;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "prod", "labels": {"app": "web"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "web", "image": "web:1", "args": ["-v", "--x"],
                 "resources": {"requests": {"cpu": "500m"}}}]}}}
        })
    }

    /// What the careful comparison accepts, this one accepts only when it
    /// is written the same; it never accepts what the comparison refuses.
    #[test]
    fn true_only_for_literal_subsets() {
        let rendered = deployment();
        let mut admitted = deployment();
        admitted["metadata"]["uid"] = json!("u-1");
        admitted["metadata"]["managedFields"] = json!([{"manager": "x"}]);
        admitted["status"] = json!({"replicas": 1});
        admitted["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .insert(0, json!({"name": "istio-proxy"}));
        assert!(review_contains(&review(&admitted), &rendered));
        assert!(crate::content::matches(&rendered, &admitted));

        let cases: Vec<(&str, Value)> = vec![
            ("another image", json!("web:2")),
            ("0.5 for 500m", json!("0.5")),
        ];
        for (what, cpu_or_image) in cases {
            let mut o = admitted.clone();
            let c = &mut o["spec"]["template"]["spec"]["containers"][1];
            if what == "another image" {
                c["image"] = cpu_or_image;
            } else {
                c["resources"]["requests"]["cpu"] = cpu_or_image;
            }
            assert!(!review_contains(&review(&o), &rendered), "{what}");
        }
        // The careful path still accepts 0.5 for 500m.
        let mut o = admitted.clone();
        o["spec"]["template"]["spec"]["containers"][1]["resources"]["requests"]["cpu"] =
            json!("0.5");
        assert!(crate::content::matches(&rendered, &o));

        let mut reordered = admitted.clone();
        reordered["spec"]["template"]["spec"]["containers"][1]["args"] = json!(["--x", "-v"]);
        assert!(!review_contains(&review(&reordered), &rendered));
        let mut one = rendered.clone();
        one["spec"]["replicas"] = json!(2.0);
        assert!(!review_contains(&review(&admitted), &one));
        // The rendering's status is not compared; a null sets nothing.
        let mut with_status = rendered.clone();
        with_status["status"] = json!({"replicas": 9});
        with_status["metadata"]["annotations"] = Value::Null;
        assert!(review_contains(&review(&admitted), &with_status));
    }

    #[test]
    fn a_field_seen_before_is_not_walked_again() {
        let rendered = deployment();
        let read = |seen: &crate::content::Seen, object: &Value| {
            let text = object.to_string();
            let mut d = serde_json::Deserializer::from_str(&text);
            let seed = ObjectSeed {
                rendered: &rendered,
                seen: Some(seen),
            };
            de::Deserializer::deserialize_map(&mut d, seed).unwrap().1
        };
        let seen = crate::content::Seen::new(&rendered);
        let mut other = deployment();
        other["spec"]["replicas"] = json!(3);
        assert!(!read(&seen, &other));
        assert!(read(&seen, &deployment()), "walked, and remembered");
        assert!(read(&seen, &deployment()), "seen");
        assert!(!read(&seen, &other), "other bytes are walked");
        // The bytes remembered are trusted, not walked: here wrongly.
        let trusting = crate::content::Seen::new(&rendered);
        let spec = trusting.field(b"spec").unwrap();
        spec.remember(other["spec"].to_string().as_bytes());
        assert!(read(&trusting, &other));
    }

    #[test]
    fn labels_and_annotations_seen_before_are_not_walked_again() {
        use crate::admission::{Metadata, Str, StrMap};
        use crate::content::seen::Pairs;
        use std::borrow::Cow;
        fn read<'a>(
            rendered: &Value,
            seen: &crate::content::Seen,
            text: &'a str,
        ) -> (Option<Metadata<'a>>, bool) {
            let mut d = serde_json::Deserializer::from_str(text);
            let seed = ObjectSeed {
                rendered,
                seen: Some(seen),
            };
            de::Deserializer::deserialize_map(&mut d, seed).unwrap()
        }
        let mut rendered = deployment();
        rendered["metadata"]["annotations"] = json!({"a": "x&y"});
        let seen = crate::content::Seen::new(&rendered);
        // Go's encoder writes `&` as \u0026: that string is unescaped.
        let mut applied = rendered.clone();
        applied["metadata"]["labels"]["extra"] = json!(7);
        let text = applied.to_string().replace('&', "\\u0026");
        let walked = read(&rendered, &seen, &text);
        assert!(walked.1);
        assert_eq!(
            read(&rendered, &seen, &text),
            walked,
            "seen: the same pairs"
        );
        let metadata = walked.0.unwrap();
        let annotations = metadata.annotations.unwrap();
        assert_eq!(annotations.get("a").map(|v| &**v), Some("x&y"));
        let labels = metadata.labels.unwrap();
        assert_eq!(labels.0.len(), 1, "a label that is not a string is skipped");
        let mut other = applied.clone();
        other["metadata"]["labels"]["app"] = json!("other");
        let other = other.to_string();
        assert!(!read(&rendered, &seen, &other).1, "other bytes are walked");
        // The pairs remembered are trusted, not walked: here wrongly.
        let trusting = crate::content::Seen::new(&rendered);
        let labels = r#"{"app":"other","extra":7}"#;
        assert!(other.contains(labels));
        let pairs = StrMap(vec![(
            Str(Cow::Borrowed("app")),
            Str(Cow::Borrowed(&labels[8..13])),
        )]);
        trusting
            .pairs(Pairs::Labels)
            .remember(labels, &(Some(pairs), true));
        let (metadata, contained) = read(&rendered, &trusting, &other);
        assert!(contained);
        let labels = metadata.and_then(|m| m.labels).unwrap();
        assert_eq!(labels.get("app").map(|v| &**v), Some("other"));
    }

    #[test]
    fn malformed_or_absent_objects_are_not_contained() {
        let rendered = deployment();
        assert!(!review_contains(
            b"{\"request\":{\"uid\":\"u\"}}",
            &rendered
        ));
        assert!(!review_contains(b"{\"request\":", &rendered));
        assert!(!review_contains(&review(&json!("text")), &rendered));
        let dup = br#"{"request":{"object":{"kind":"Deployment","kind":"Deployment"}}}"#;
        assert!(!review_contains(
            dup,
            &json!({"kind": "Deployment", "apiVersion": "v1"})
        ));
    }
}
