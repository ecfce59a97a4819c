//! Reaching the `request.object` of an AdmissionReview body without
//! building the rest, and stopping right after it: the API server writes
//! `object` before `oldObject`, so an UPDATE's old copy (half the body) is
//! never read.
//!
//! The body has been parsed whole before (`admission::parse_review`, which
//! refuses malformed JSON and a duplicate `request` or `object`), so
//! nothing after the object could change what is read here.

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use std::fmt;

/// The error that stops the parser once the object has been read; never
/// returned to a caller.
const STOP: &str = "stale-guard: the object has been read";

/// `seed` run on `request.object`: `Ok(None)` when the body has none.
pub(super) fn read_object<'de, S>(body: &'de [u8], seed: S) -> Result<Option<S::Value>, String>
where
    S: DeserializeSeed<'de>,
{
    let mut out = None;
    let walk = Walk {
        keys: &["request", "object"],
        seed,
        out: &mut out,
    };
    let read = walk.deserialize(&mut serde_json::Deserializer::from_slice(body));
    match (read, out) {
        (_, Some(value)) => Ok(Some(value)),
        (Ok(()), None) => Ok(None),
        (Err(e), None) => Err(crate::echo::message(format!(
            "the object cannot be read: {e}"
        ))),
    }
}

/// The map key `keys[0]`, then `keys[1]` inside it, ..., read with `seed`
/// into `out`; other keys skipped without being built.
struct Walk<'o, S, T> {
    keys: &'static [&'static str],
    seed: S,
    out: &'o mut Option<T>,
}

impl<'de, S> DeserializeSeed<'de> for Walk<'_, S, S::Value>
where
    S: DeserializeSeed<'de>,
{
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, S> Visitor<'de> for Walk<'_, S, S::Value>
where
    S: DeserializeSeed<'de>,
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an object with {:?}", self.keys.first().unwrap_or(&""))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Walk { keys, seed, out } = self;
        let mut seed = Some(seed);
        while let Some(key) = map.next_key::<crate::admission::Str<'de>>()? {
            let wanted = keys.first().is_some_and(|k| *k == &*key);
            match seed.take() {
                Some(s) if wanted && keys.len() == 1 => {
                    *out = Some(map.next_value_seed(s)?);
                    return Err(de::Error::custom(STOP));
                }
                Some(s) if wanted => {
                    map.next_value_seed(Walk {
                        keys: &keys[1..],
                        seed: s,
                        out: &mut *out,
                    })?;
                    // Not inside: nothing else to look for.
                }
                other => {
                    seed = other;
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn object(body: &[u8]) -> Result<Option<Value>, String> {
        read_object(body, std::marker::PhantomData::<Value>)
    }

    #[test]
    fn reads_the_object_and_stops() {
        // What follows the object is not read: here it is not even JSON.
        let body = br#"{"kind": "AdmissionReview", "request": {"uid": "u",
            "object": {"a": [1, {"b": null}]}, "oldObject": !!! "#;
        assert_eq!(object(body).unwrap(), Some(json!({"a": [1, {"b": null}]})));
    }

    #[test]
    fn no_object_is_none_and_broken_bodies_are_errors() {
        assert_eq!(object(br#"{"request": {"uid": "u"}}"#).unwrap(), None);
        assert_eq!(object(br#"{"response": {"object": 1}}"#).unwrap(), None);
        for bad in [
            &b"{"[..],
            b"[]",
            br#"{"request": 7}"#,
            br#"{"request": {"object": tru"#,
        ] {
            let why = object(bad).unwrap_err();
            assert!(why.starts_with("the object cannot be read"), "{why}");
            assert!(!why.contains(STOP), "{why}");
        }
    }
}
