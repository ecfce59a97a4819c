//! What a rendered object was already found in: for each of its top-level
//! maps and lists (`spec`, `data`, `rules`...), the bytes of the first
//! review whose object contained it there. A later review whose object
//! writes that field with the same bytes contains it too, and the field
//! is not walked again: it is only delimited, as a parser that reads
//! nothing of it would. An unchanged object applied again (every
//! reconciliation of a GitOps controller) writes the same bytes: the API
//! server serialises it the same way each time.
//!
//! `metadata.labels` and `metadata.annotations` are kept the same way,
//! with where each pair is in the bytes (the request reads them too), and
//! whether they contained the rendering's: they are remembered whether
//! or not they did.
//!
//! Kept beside the rendered object, so a new rendering starts empty. The
//! first bytes are kept (never replaced: reads take no lock); a field
//! written differently later is walked as before. Each field keeps at most
//! [`Seen::limit`] bytes, counted in the rendering's cache weight.

use crate::admission::{Str, StrMap};
use serde_json::Value;
use std::borrow::Cow;
use std::sync::OnceLock;

/// The fields of one rendered object, and the bytes each was found in.
#[derive(Debug, Default)]
pub struct Seen {
    fields: Vec<Field>,
    /// `metadata.labels`, then `metadata.annotations`.
    pairs: [PairsField; 2],
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
        let metadata = &rendered["metadata"];
        let pairs = [Pairs::Labels, Pairs::Annotations].map(|which| PairsField {
            limit: json_len(&metadata[which.key()])
                .saturating_mul(4)
                .saturating_add(1024),
            kept: OnceLock::new(),
        });
        Seen { fields, pairs }
    }

    /// The most heap this can come to hold, in bytes.
    pub fn limit(&self) -> usize {
        let fields: usize = self
            .fields
            .iter()
            .map(|f| f.limit + f.key.len() + std::mem::size_of::<Field>())
            .sum();
        fields + self.pairs.iter().map(|p| p.limit).sum::<usize>()
    }

    /// The labels or annotations remembered.
    pub(crate) fn pairs(&self, which: Pairs) -> SeenPairs<'_> {
        SeenPairs(&self.pairs[which as usize])
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

/// Which map of strings in `metadata`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Pairs {
    Labels = 0,
    Annotations = 1,
}

impl Pairs {
    fn key(self) -> &'static str {
        match self {
            Pairs::Labels => "labels",
            Pairs::Annotations => "annotations",
        }
    }
}

/// A map of strings read before (or not a map), and what it was read as.
#[derive(Debug, Default)]
struct PairsField {
    /// The most heap [`Kept`] may take: four times the rendered map's
    /// JSON, plus 1 KiB.
    limit: usize,
    kept: OnceLock<Kept>,
}

#[derive(Debug)]
struct Kept {
    bytes: Box<str>,
    /// Each pair's key and value; `None`: not a map (lenient labels).
    pairs: Option<Box<[[Place; 2]]>>,
    /// The strings that had escapes, unescaped.
    unescaped: Box<str>,
    contained: bool,
}

/// Where a string is: as written in the bytes, or in `unescaped`.
#[derive(Clone, Copy, Debug)]
enum Place {
    Written(u32, u32),
    Unescaped(u32, u32),
}

/// Labels or annotations read as [`StrMap`], and whether they contain the
/// rendering's.
pub(crate) type PairsRead<'de> = (Option<StrMap<'de>>, bool);

/// One remembered map of strings.
#[derive(Clone, Copy)]
pub(crate) struct SeenPairs<'s>(&'s PairsField);

impl SeenPairs<'_> {
    /// What `text` (the map's JSON as a review wrote it) was read as, when
    /// it is the bytes remembered: its strings borrowed from `text`.
    pub fn get<'de>(self, text: &'de str) -> Option<PairsRead<'de>> {
        let kept = self.0.kept.get().filter(|k| *k.bytes == *text)?;
        let string = |place: Place| -> Option<Str<'de>> {
            Some(Str(match place {
                Place::Written(a, b) => Cow::Borrowed(text.get(a as usize..b as usize)?),
                Place::Unescaped(a, b) => {
                    Cow::Owned(kept.unescaped.get(a as usize..b as usize)?.to_owned())
                }
            }))
        };
        let pairs = match &kept.pairs {
            None => None,
            Some(places) => {
                let mut pairs = Vec::with_capacity(places.len());
                for [k, v] in places.iter() {
                    pairs.push((string(*k)?, string(*v)?));
                }
                Some(StrMap(pairs))
            }
        };
        Some((pairs, kept.contained))
    }

    /// Remembers what `text` was read as (unless over the limit, or
    /// something is remembered already).
    pub fn remember(self, text: &str, read: &PairsRead<'_>) {
        if self.0.kept.get().is_some() {
            return;
        }
        let mut unescaped = String::new();
        let mut place = |s: &Str<'_>| -> Option<Place> {
            // Borrowed strings point into `text` (the parser's input).
            let at = (s.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
            let written = matches!(s.0, Cow::Borrowed(_))
                && at.checked_add(s.len()).is_some_and(|end| end <= text.len());
            let (start, len) = if written {
                (at, s.len())
            } else {
                unescaped.push_str(s);
                (unescaped.len() - s.len(), s.len())
            };
            let (a, b) = (u32::try_from(start).ok()?, u32::try_from(start + len).ok()?);
            Some(if written {
                Place::Written(a, b)
            } else {
                Place::Unescaped(a, b)
            })
        };
        // A string that cannot be placed (past 4 GiB): not remembered.
        let pairs: Option<Box<[[Place; 2]]>> = match &read.0 {
            None => None,
            Some(map) => {
                let Some(places) = map
                    .0
                    .iter()
                    .map(|(k, v)| Some([place(k)?, place(v)?]))
                    .collect()
                else {
                    return;
                };
                Some(places)
            }
        };
        let size = text.len()
            + unescaped.len()
            + pairs.as_ref().map_or(0, |p| std::mem::size_of_val(&**p));
        if size <= self.0.limit {
            let _ = self.0.kept.set(Kept {
                bytes: text.into(),
                pairs,
                unescaped: unescaped.into(),
                contained: read.1,
            });
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
