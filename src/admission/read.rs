//! Reading an AdmissionReview in one pass. The request's fields are read
//! into [`Request`] as they come; when its `object` arrives, the fields
//! read so far (the API server writes `kind`, `name`, `namespace`,
//! `operation` and `userInfo` before it) may pick a rendering to check the
//! object against ([`crate::content`]), and the object is then walked once
//! for both its metadata and that check. Without a pick the object is read
//! as [`AppliedObject`] says.

use super::{AppliedObject, Request, Str};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use std::fmt;

/// What a request's object is checked against while it is read.
pub trait Expectation {
    /// The rendered object.
    fn rendered(&self) -> &serde_json::Value;
    /// Where objects were found to contain it before, if that is kept.
    fn seen(&self) -> Option<&crate::content::Seen> {
        None
    }
}

/// No expectation: the plain parse.
pub enum Nothing {}

impl Expectation for Nothing {
    fn rendered(&self) -> &serde_json::Value {
        match *self {}
    }
}

/// An expectation and whether the object, as written in the body,
/// contains it (`content::review_contains`'s answer).
pub struct Prechecked<P> {
    pub expected: P,
    pub contains: bool,
}

/// The envelope's fields and the request: `(apiVersion, kind, request)`.
pub(super) type Read<'a, P> = (
    Str<'a>,
    Str<'a>,
    Option<(Request<'a>, Option<Prechecked<P>>)>,
);

/// Reads an AdmissionReview body, `pick` choosing what its object is
/// checked against.
pub(super) fn review<'a, P, F>(body: &'a [u8], pick: F) -> serde_json::Result<Read<'a, P>>
where
    P: Expectation,
    F: FnOnce(&Request<'a>) -> Option<P>,
{
    // Checked whole once, so the parser borrows strings without checking
    // each again (RFC 8259: JSON between systems is UTF-8).
    let text = std::str::from_utf8(body).map_err(|e| {
        <serde_json::Error as de::Error>::custom(format_args!(
            "the body is not UTF-8 (byte {})",
            e.valid_up_to()
        ))
    })?;
    let mut de = serde_json::Deserializer::from_str(text);
    let read = de::Deserializer::deserialize_map(&mut de, EnvelopeVisitor { pick })?;
    de.end()?;
    Ok(read)
}

struct EnvelopeVisitor<F> {
    pick: F,
}

impl<'de, P, F> Visitor<'de> for EnvelopeVisitor<F>
where
    P: Expectation,
    F: FnOnce(&Request<'de>) -> Option<P>,
{
    type Value = Read<'de, P>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("struct Envelope")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut pick = Some(self.pick);
        let (mut api_version, mut kind, mut request) = (None, None, None);
        while let Some(key) = map.next_key::<Str<'de>>()? {
            match &*key {
                "apiVersion" => set(&mut api_version, "apiVersion", map.next_value()?)?,
                "kind" => set(&mut kind, "kind", map.next_value()?)?,
                "request" => {
                    let seed = OrNull(RequestVisitor { pick: pick.take() });
                    let read = map.next_value_seed(seed)?;
                    set(&mut request, "request", read)?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok((
            api_version.unwrap_or_default(),
            kind.unwrap_or_default(),
            request.flatten(),
        ))
    }
}

/// Sets a field read once; a second time is an error, as serde's derive
/// says it.
fn set<T, E: de::Error>(slot: &mut Option<T>, field: &'static str, value: T) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(field));
    }
    *slot = Some(value);
    Ok(())
}

/// A map read by the visitor `V`, or `null` (`None`): the one `Option`
/// wrapper the hand-written seeds share (serde's own needs a
/// `Deserialize` type, not a visitor with state).
pub(crate) struct OrNull<V>(pub V);

impl<'de, V: Visitor<'de>> DeserializeSeed<'de> for OrNull<V> {
    type Value = Option<V::Value>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for OrNull<V> {
    type Value = Option<V::Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self.0).map(Some)
    }
}

/// A request's fields, kube's names (`AdmissionRequest`); the others are
/// skipped without being built.
pub(super) struct RequestVisitor<F> {
    pub pick: Option<F>,
}

impl<'de, P, F> Visitor<'de> for RequestVisitor<F>
where
    P: Expectation,
    F: FnOnce(&Request<'de>) -> Option<P>,
{
    type Value = (Request<'de>, Option<Prechecked<P>>);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("struct Request")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut pick = self.pick;
        // Built in place, so `pick` sees what has been read; the required
        // fields are checked at the end.
        let mut req = Request {
            uid: Str::default(),
            kind: super::Kind::default(),
            sub_resource: None,
            name: Str::default(),
            namespace: None,
            operation: kube::core::admission::Operation::Create,
            user_info: super::UserInfo::default(),
            object: None,
            dry_run: false,
        };
        let mut seen = Seen::default();
        let mut prechecked = None;
        while let Some(key) = map.next_key::<Str<'de>>()? {
            match &*key {
                "uid" => {
                    seen.once(Seen::UID, "uid")?;
                    req.uid = map.next_value()?;
                }
                "kind" => {
                    seen.once(Seen::KIND, "kind")?;
                    req.kind = map.next_value()?;
                }
                "subResource" => {
                    seen.once(Seen::SUB_RESOURCE, "subResource")?;
                    req.sub_resource = map.next_value()?;
                }
                "name" => {
                    seen.once(Seen::NAME, "name")?;
                    req.name = map.next_value()?;
                }
                "namespace" => {
                    seen.once(Seen::NAMESPACE, "namespace")?;
                    req.namespace = map.next_value()?;
                }
                "operation" => {
                    seen.once(Seen::OPERATION, "operation")?;
                    req.operation = map.next_value()?;
                }
                "userInfo" => {
                    seen.once(Seen::USER_INFO, "userInfo")?;
                    req.user_info = map.next_value()?;
                }
                "dryRun" => {
                    seen.once(Seen::DRY_RUN, "dryRun")?;
                    req.dry_run = map.next_value()?;
                }
                "object" => {
                    seen.once(Seen::OBJECT, "object")?;
                    // Only from a request whose identifying fields are in.
                    let expected = match pick.take() {
                        Some(pick) if seen.has(Seen::UID | Seen::KIND | Seen::OPERATION) => {
                            pick(&req)
                        }
                        _ => None,
                    };
                    match expected {
                        Some(expected) => {
                            let seed = OrNull(crate::content::ObjectSeed {
                                rendered: expected.rendered(),
                                seen: expected.seen(),
                            });
                            let (metadata, contains) = match map.next_value_seed(seed)? {
                                Some((metadata, contains)) => (Some(metadata), contains),
                                None => (None, false),
                            };
                            req.object = match metadata {
                                None => None,
                                Some(None) => return Err(de::Error::custom(NO_METADATA)),
                                Some(Some(metadata)) => Some(AppliedObject { metadata }),
                            };
                            prechecked = Some(Prechecked { expected, contains });
                        }
                        None => req.object = map.next_value()?,
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        for (bit, field) in [
            (Seen::UID, "uid"),
            (Seen::KIND, "kind"),
            (Seen::OPERATION, "operation"),
        ] {
            if !seen.has(bit) {
                return Err(de::Error::missing_field(field));
            }
        }
        Ok((req, prechecked))
    }
}

/// Every Kubernetes object has metadata; one without is not a review the
/// API server sent.
pub(super) const NO_METADATA: &str = "the object has no metadata";

/// The request's fields read so far.
#[derive(Default)]
struct Seen(u16);

impl Seen {
    const UID: u16 = 1;
    const KIND: u16 = 1 << 1;
    const SUB_RESOURCE: u16 = 1 << 2;
    const NAME: u16 = 1 << 3;
    const NAMESPACE: u16 = 1 << 4;
    const OPERATION: u16 = 1 << 5;
    const USER_INFO: u16 = 1 << 6;
    const DRY_RUN: u16 = 1 << 7;
    const OBJECT: u16 = 1 << 8;

    fn once<E: de::Error>(&mut self, bit: u16, field: &'static str) -> Result<(), E> {
        if self.0 & bit != 0 {
            return Err(E::duplicate_field(field));
        }
        self.0 |= bit;
        Ok(())
    }

    fn has(&self, bits: u16) -> bool {
        self.0 & bits == bits
    }
}
