//! Strict JSON: objects with duplicate member names are rejected at every level we keep, and
//! NumericDate values must be plain non-negative integers in range.
//!
//! serde_json itself keeps the last duplicate; RFC 7515 §5.2 lets a parser do that or reject,
//! and rejecting is the only choice that cannot be exploited by two parsers disagreeing. The
//! visitors here report problems through marker messages that `from_slice` maps back to a
//! [`MalformedError`], so no token content ever reaches an error message.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::{MalformedError, Part};

/// Largest NumericDate accepted: 9999-12-31T23:59:59Z. Anything later is a bug or an attack
/// (and would overflow arithmetic with leeway in other implementations).
pub const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

/// Maximum nesting depth of values kept from untrusted JSON (serde_json stops at 128 anyway).
const MAX_DEPTH: usize = 32;

const DUPLICATE: &str = "latchkey:duplicate-member";
const NUMERIC_DATE: &str = "latchkey:numeric-date:";
const MEMBER_TYPE: &str = "latchkey:member-type:";

/// Names that can appear in the marker messages; used to get a `&'static str` back.
const KNOWN_NAMES: &[&str] = &[
    "exp", "nbf", "iat", "iss", "sub", "aud", "jti", "alg", "kid", "typ", "crit", "cty",
];

/// Error for a duplicate member, raised from inside a visitor.
pub(crate) fn duplicate<E: de::Error>() -> E {
    E::custom(DUPLICATE)
}

/// Error for a member of the wrong type, raised from inside a visitor.
pub(crate) fn member_type<E: de::Error>(name: &'static str) -> E {
    E::custom(format_args!("{MEMBER_TYPE}{name}"))
}

/// Parses `bytes` as `T`, mapping serde_json errors to a content-free [`MalformedError`].
pub(crate) fn from_slice<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
    part: Part,
) -> Result<T, MalformedError> {
    // One UTF-8 check over the whole document (RFC 8259 §8.1 requires UTF-8) lets serde_json
    // skip its per-string checks: measurably cheaper on the verify path.
    let text = std::str::from_utf8(bytes).map_err(|_| MalformedError::Json(part))?;
    serde_json::from_str(text).map_err(|e| classify(&e, part))
}

fn classify(e: &serde_json::Error, part: Part) -> MalformedError {
    let msg = e.to_string();
    if msg.starts_with(DUPLICATE) {
        return MalformedError::DuplicateMember(part);
    }
    if let Some(rest) = msg.strip_prefix(NUMERIC_DATE) {
        return MalformedError::NumericDate(static_name(rest));
    }
    // Also found inside serde's own "invalid type … expected <marker>" messages.
    if let Some(idx) = msg.find(MEMBER_TYPE) {
        return MalformedError::MemberType(static_name(&msg[idx + MEMBER_TYPE.len()..]));
    }
    MalformedError::Json(part)
}

fn static_name(rest: &str) -> &'static str {
    KNOWN_NAMES
        .iter()
        .find(|n| {
            rest.strip_prefix(**n)
                .is_some_and(|r| r.is_empty() || r.starts_with(' '))
        })
        .copied()
        .unwrap_or("claim")
}

/// A JSON value parsed with duplicate member names rejected at every depth.
#[derive(Debug, Clone, PartialEq)]
pub struct StrictValue(pub Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        StrictSeed { depth: 0 }.deserialize(d).map(StrictValue)
    }
}

/// Parses a JSON document that must be an object, rejecting duplicates anywhere inside.
pub(crate) fn strict_object(
    bytes: &[u8],
    part: Part,
) -> Result<Map<String, Value>, MalformedError> {
    match from_slice::<StrictValue>(bytes, part)?.0 {
        Value::Object(map) => Ok(map),
        _ => Err(MalformedError::Json(part)),
    }
}

#[derive(Clone, Copy)]
pub(crate) struct StrictSeed {
    pub(crate) depth: usize,
}

impl<'de> DeserializeSeed<'de> for StrictSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictSeed {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
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
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
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
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(duplicate());
            }
            let v = map.next_value_seed(inner)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

impl StrictSeed {
    fn nested<E: de::Error>(self) -> Result<StrictSeed, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom("nesting too deep"));
        }
        Ok(StrictSeed {
            depth: self.depth + 1,
        })
    }
}

/// Deserializes a NumericDate claim named `name`: an integer in `0..=MAX_NUMERIC_DATE`.
/// Floats (`1.0`, `1e3`, `1e400`), strings, negatives and booleans are refused.
pub(crate) struct NumericDate(pub(crate) &'static str);

impl<'de> DeserializeSeed<'de> for NumericDate {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NumericDate {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer NumericDate")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        if v <= MAX_NUMERIC_DATE {
            Ok(v)
        } else {
            Err(self.error())
        }
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v)
            .map_err(|_| self.error())
            .and_then(|v| self.visit_u64(v))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<u64, E> {
        Err(self.error())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<u64, E> {
        Err(self.error())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<u64, E> {
        Err(self.error())
    }
    fn visit_unit<E: de::Error>(self) -> Result<u64, E> {
        Err(self.error())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<u64, A::Error> {
        Err(self.error())
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<u64, A::Error> {
        Err(self.error())
    }
}

impl NumericDate {
    fn error<E: de::Error>(&self) -> E {
        E::custom(format_args!("{NUMERIC_DATE}{}", self.0))
    }
}

/// Deserializes a JSON string member named `name` (anything else is a [`MalformedError::MemberType`]).
pub(crate) struct StringMember(pub(crate) &'static str);

impl<'de> DeserializeSeed<'de> for StringMember {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_string(self)
    }
}

impl<'de> Visitor<'de> for StringMember {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // serde_json reports type mismatches itself with this text; `classify` finds it.
        write!(f, "{MEMBER_TYPE}{}", self.0)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<String, E> {
        Err(member_type(self.0))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<String, E> {
        Err(member_type(self.0))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<String, E> {
        Err(member_type(self.0))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<String, E> {
        Err(member_type(self.0))
    }
    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Err(member_type(self.0))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(member_type(self.0))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(member_type(self.0))
    }
}

/// A member name, borrowed from the input when it has no escapes (serde's own `Cow` impl
/// always allocates).
pub(crate) struct MemberName<'de>(pub(crate) std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for MemberName<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MemberName<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MemberName(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MemberName(std::borrow::Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(MemberName(std::borrow::Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A map of extra members that rejects duplicates among themselves; values are strict too.
pub(crate) fn insert_unique<E: de::Error>(
    map: &mut BTreeMap<String, Value>,
    key: String,
    value: Value,
) -> Result<(), E> {
    use std::collections::btree_map::Entry;
    match map.entry(key) {
        Entry::Vacant(v) => {
            v.insert(value);
            Ok(())
        }
        Entry::Occupied(_) => Err(duplicate()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(json: &str) -> Result<Map<String, Value>, MalformedError> {
        strict_object(json.as_bytes(), Part::Document)
    }

    #[test]
    fn duplicate_members_rejected_at_any_depth() {
        let dup = Err(MalformedError::DuplicateMember(Part::Document));
        assert_eq!(object(r#"{"a":1,"a":2}"#), dup);
        assert_eq!(object(r#"{"a":{"b":1,"b":1}}"#), dup);
        assert_eq!(object(r#"{"a":[{"b":1,"c":{"d":0,"d":0}}]}"#), dup);
        // Escapes that decode to the same name are the same name.
        assert_eq!(object(r#"{"a":1,"\u0061":2}"#), dup);
        assert!(object(r#"{"a":1,"b":{"a":2}}"#).is_ok());
    }

    #[test]
    fn non_objects_and_trailing_garbage_rejected() {
        let bad = Err(MalformedError::Json(Part::Document));
        assert_eq!(object("[]"), bad);
        assert_eq!(object("1"), bad);
        assert_eq!(object(r#"{"a":1} x"#), bad);
        assert_eq!(object(r#"{"a":1"#), bad);
        assert_eq!(object(""), bad);
    }

    #[test]
    fn depth_is_bounded() {
        let deep = format!("{}{}{}", "{\"a\":".repeat(40), "1", "}".repeat(40));
        assert!(object(&deep).is_err());
        let ok = format!("{}{}{}", "{\"a\":".repeat(10), "1", "}".repeat(10));
        assert!(object(&ok).is_ok());
    }

    fn date(json: &str) -> Result<u64, MalformedError> {
        let mut de = serde_json::Deserializer::from_str(json);
        NumericDate("exp")
            .deserialize(&mut de)
            .and_then(|v| de.end().map(|()| v))
            .map_err(|e| classify(&e, Part::Payload))
    }

    #[test]
    fn numeric_dates_must_be_integers_in_range() {
        assert_eq!(date("0"), Ok(0));
        assert_eq!(date("1700000000"), Ok(1_700_000_000));
        assert_eq!(date("253402300799"), Ok(MAX_NUMERIC_DATE));
        let bad = Err(MalformedError::NumericDate("exp"));
        for input in [
            "253402300800",
            "-1",
            "1.0",
            "1700000000.5",
            "1e3",
            "1E3",
            "\"1700000000\"",
            "true",
            "null",
            "[1]",
            "{}",
            "18446744073709551616",
        ] {
            assert_eq!(date(input), bad, "{input}");
        }
        // serde_json refuses 1e400 itself (out of range); either way it is not a date.
        assert!(date("1e400").is_err());
    }
}
