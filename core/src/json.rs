//! Strict JSON: objects with duplicate member names are rejected at every level we keep, and
//! NumericDate values must be plain non-negative integers in range.
//!
//! serde_json itself keeps the last duplicate; RFC 7515 §5.2 lets a parser do that or reject,
//! and rejecting is the only choice that cannot be exploited by two parsers disagreeing.
//!
//! Two parsers live here, with the same rules:
//! - `Scanner`, a small hand-written RFC 8259 scanner for the token verify path (JOSE
//!   headers and claims sets). It borrows every string without escapes straight from the
//!   decoded bytes, validates nested values without building them, and returns unknown
//!   members as raw JSON slices, so a typical claims set costs no allocation beyond the
//!   strings the caller keeps. It is the hot path of every verification.
//! - [`StrictValue`] / `strict_object` on top of serde_json for everything else (JWKs,
//!   request bodies), where speed does not matter.
//!
//! Neither puts token content into an error: errors are [`MalformedError`] values.

use std::borrow::Cow;
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

/// Error for a duplicate member, raised from inside a visitor.
pub(crate) fn duplicate<E: de::Error>() -> E {
    E::custom(DUPLICATE)
}

/// Parses `bytes` as `T`, mapping serde_json errors to a content-free [`MalformedError`].
pub(crate) fn from_slice<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
    part: Part,
) -> Result<T, MalformedError> {
    // One UTF-8 check over the whole document (RFC 8259 §8.1 requires UTF-8) lets serde_json
    // skip its per-string checks.
    let text = std::str::from_utf8(bytes).map_err(|_| MalformedError::Json(part))?;
    serde_json::from_str(text).map_err(|e| {
        if e.to_string().starts_with(DUPLICATE) {
            MalformedError::DuplicateMember(part)
        } else {
            MalformedError::Json(part)
        }
    })
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

// ---------------------------------------------------------------------------------------------
// The verify-path scanner

/// Fills a member slot that may be set once; a second occurrence is a duplicate in `part`.
pub(crate) fn once<T>(slot: &mut Option<T>, v: T, part: Part) -> Result<(), MalformedError> {
    if slot.is_some() {
        return Err(MalformedError::DuplicateMember(part));
    }
    *slot = Some(v);
    Ok(())
}

/// A strict JSON scanner over one document. The caller drives it member by member
/// ([`Scanner::object`], [`Scanner::next_key`]) and picks how each value is read, so typed
/// members are checked as they are read and nothing is built that is not kept.
///
/// Rules, identical to the serde_json path: RFC 8259 grammar only (no comments, trailing
/// commas, leading zeros, `NaN`); UTF-8 input; `\u` escapes must pair surrogates; numbers must
/// be finite as an `f64` (so `1e400` is refused, as serde_json refuses it); duplicate member
/// names (compared after unescaping) are refused in every object at any depth; nesting is
/// bounded by `MAX_DEPTH`.
pub(crate) struct Scanner<'a> {
    text: &'a str,
    pos: usize,
    part: Part,
}

/// Where [`Scanner::next_key`] is inside an object.
pub(crate) struct Object {
    first: bool,
}

type Scan<T> = Result<T, MalformedError>;

impl<'a> Scanner<'a> {
    /// Checks UTF-8 once for the whole document (RFC 8259 §8.1); every slice later cut at an
    /// ASCII delimiter is then a `&str` with no further check.
    pub(crate) fn new(bytes: &'a [u8], part: Part) -> Scan<Scanner<'a>> {
        let text = std::str::from_utf8(bytes).map_err(|_| MalformedError::Json(part))?;
        Ok(Scanner { text, pos: 0, part })
    }

    /// A syntax error in this document.
    pub(crate) fn syntax(&self) -> MalformedError {
        MalformedError::Json(self.part)
    }

    /// A duplicate member name in this document.
    pub(crate) fn duplicate(&self) -> MalformedError {
        MalformedError::DuplicateMember(self.part)
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn slice(&self, start: usize, end: usize) -> Scan<&'a str> {
        self.text.get(start..end).ok_or_else(|| self.syntax())
    }

    /// Skips whitespace and returns the next byte without consuming it.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        let bytes = self.bytes();
        while let Some(&b) = bytes.get(self.pos) {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => self.pos += 1,
                _ => return Some(b),
            }
        }
        None
    }

    fn eat(&mut self, want: u8) -> Scan<()> {
        if self.peek() == Some(want) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.syntax())
        }
    }

    /// Opens an object (the document's top level, or one nested inside).
    pub(crate) fn object(&mut self) -> Scan<Object> {
        self.eat(b'{')?;
        Ok(Object { first: true })
    }

    /// The next member name of `object` (with its `:` consumed), or `None` once the closing
    /// brace is read. The caller must read the member's value before asking again.
    pub(crate) fn next_key(&mut self, object: &mut Object) -> Scan<Option<Cow<'a, str>>> {
        match self.peek() {
            Some(b'}') => {
                self.pos += 1;
                return Ok(None);
            }
            Some(b',') if !object.first => self.pos += 1,
            _ if object.first => {}
            _ => return Err(self.syntax()),
        }
        object.first = false;
        if self.peek() != Some(b'"') {
            return Err(self.syntax());
        }
        let key = self.string()?;
        self.eat(b':')?;
        Ok(Some(key))
    }

    /// Ends the document: only whitespace may follow.
    pub(crate) fn finish(&mut self) -> Scan<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.syntax()),
        }
    }

    /// Refuses duplicate names among `items` (names compared after unescaping). Sorting
    /// keeps this O(n log n) however many members an attacker sends.
    pub(crate) fn unique_by<T>(&self, items: &mut [T], name: impl Fn(&T) -> &str) -> Scan<()> {
        if items.len() < 2 {
            return Ok(());
        }
        items.sort_unstable_by(|a, b| name(a).cmp(name(b)));
        if items.windows(2).any(|w| name(&w[0]) == name(&w[1])) {
            return Err(self.duplicate());
        }
        Ok(())
    }

    /// A member that must be a string; any other (valid) JSON value is a `MemberType` error.
    pub(crate) fn string_member(&mut self, name: &'static str) -> Scan<Cow<'a, str>> {
        if self.peek() == Some(b'"') {
            return self.string();
        }
        self.value(1)?;
        Err(MalformedError::MemberType(name))
    }

    /// A member that must be an array of strings (`aud`); anything else (valid JSON) is a
    /// `MemberType` error.
    pub(crate) fn string_array(&mut self, name: &'static str) -> Scan<Vec<Cow<'a, str>>> {
        if self.peek() != Some(b'[') {
            self.value(1)?;
            return Err(MalformedError::MemberType(name));
        }
        self.pos += 1;
        let mut out = Vec::new();
        let mut wrong_type = false;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(out);
        }
        loop {
            if self.peek() == Some(b'"') {
                out.push(self.string()?);
            } else {
                // Keep reading: a syntax error later in the document still wins, as it does
                // with serde_json.
                self.value(2)?;
                wrong_type = true;
            }
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.syntax()),
            }
        }
        if wrong_type {
            return Err(MalformedError::MemberType(name));
        }
        Ok(out)
    }

    /// A NumericDate member: a plain integer in `0..=MAX_NUMERIC_DATE`. Floats (`1.0`, `1e3`),
    /// negatives, strings and the rest are `NumericDate` errors; invalid JSON is a syntax
    /// error.
    pub(crate) fn numeric_date(&mut self, name: &'static str) -> Scan<u64> {
        if let Some(b'0'..=b'9') = self.peek() {
            return self
                .number()?
                .filter(|v| *v <= MAX_NUMERIC_DATE)
                .ok_or(MalformedError::NumericDate(name));
        }
        self.value(1)?;
        Err(MalformedError::NumericDate(name))
    }

    /// Validates any JSON value at nesting `depth` and returns its raw text. Nothing is
    /// built; objects inside are checked for duplicate names.
    pub(crate) fn value(&mut self, depth: usize) -> Scan<&'a str> {
        let Some(b) = self.peek() else {
            return Err(self.syntax());
        };
        let start = self.pos;
        match b {
            b'"' => {
                self.string()?;
            }
            b'{' | b'[' if depth >= MAX_DEPTH => return Err(self.syntax()),
            b'{' => {
                let mut object = self.object()?;
                let mut names = Vec::new();
                while let Some(name) = self.next_key(&mut object)? {
                    names.push(name);
                    self.value(depth + 1)?;
                }
                self.unique_by(&mut names, |n| n)?;
            }
            b'[' => {
                self.pos += 1;
                if self.peek() == Some(b']') {
                    self.pos += 1;
                } else {
                    loop {
                        self.value(depth + 1)?;
                        match self.peek() {
                            Some(b',') => self.pos += 1,
                            Some(b']') => {
                                self.pos += 1;
                                break;
                            }
                            _ => return Err(self.syntax()),
                        }
                    }
                }
            }
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            b'-' | b'0'..=b'9' => {
                self.number()?;
            }
            _ => return Err(self.syntax()),
        }
        self.slice(start, self.pos)
    }

    fn literal(&mut self, word: &[u8]) -> Scan<()> {
        if self
            .bytes()
            .get(self.pos..)
            .is_some_and(|rest| rest.starts_with(word))
        {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.syntax())
        }
    }

    /// Reads a number (RFC 8259 §6). Returns its value when it is a plain non-negative
    /// integer that fits a `u64`.
    fn number(&mut self) -> Scan<Option<u64>> {
        let bytes = self.bytes();
        let start = self.pos;
        let mut i = start;
        let negative = bytes.get(i) == Some(&b'-');
        if negative {
            i += 1;
        }
        let mut value = Some(0u64);
        match bytes.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while let Some(&d @ b'0'..=b'9') = bytes.get(i) {
                    value = value
                        .and_then(|v| v.checked_mul(10))
                        .and_then(|v| v.checked_add(u64::from(d - b'0')));
                    i += 1;
                }
            }
            _ => return Err(self.syntax()),
        }
        let mut integer = !negative;
        if bytes.get(i) == Some(&b'.') {
            integer = false;
            i = self.digits(i + 1)?;
        }
        if let Some(b'e' | b'E') = bytes.get(i) {
            integer = false;
            i += 1;
            if let Some(b'+' | b'-') = bytes.get(i) {
                i += 1;
            }
            i = self.digits(i)?;
        }
        self.pos = i;
        match value.filter(|_| integer) {
            Some(v) => Ok(Some(v)),
            None => {
                // serde_json turns every other number into an f64 and refuses infinities
                // (`1e400`, 400-digit integers); do the same so both parsers accept one set.
                let finite = self
                    .slice(start, i)?
                    .parse::<f64>()
                    .is_ok_and(f64::is_finite);
                if finite { Ok(None) } else { Err(self.syntax()) }
            }
        }
    }

    /// One or more digits from `i`; returns the index after them.
    fn digits(&self, mut i: usize) -> Scan<usize> {
        let start = i;
        while let Some(b'0'..=b'9') = self.bytes().get(i) {
            i += 1;
        }
        if i == start {
            Err(self.syntax())
        } else {
            Ok(i)
        }
    }

    /// Reads a string at the current position (its opening quote). Borrowed from the input
    /// unless it contains escapes.
    pub(crate) fn string(&mut self) -> Scan<Cow<'a, str>> {
        let bytes = self.bytes();
        if bytes.get(self.pos) != Some(&b'"') {
            return Err(self.syntax());
        }
        let start = self.pos + 1;
        let end = string_run(bytes, start);
        match bytes.get(end) {
            Some(b'"') => {
                self.pos = end + 1;
                self.slice(start, end).map(Cow::Borrowed)
            }
            Some(b'\\') => self.escaped(start, end).map(Cow::Owned),
            // A control character (which JSON requires escaped) or the end of input.
            _ => Err(self.syntax()),
        }
    }

    /// The rest of a string from its first backslash at `i`, unescaped into a new `String`.
    fn escaped(&mut self, start: usize, mut i: usize) -> Scan<String> {
        let bytes = self.bytes();
        let mut out = String::with_capacity(i - start + 16);
        out.push_str(self.slice(start, i)?);
        loop {
            match bytes.get(i) {
                Some(b'"') => {
                    self.pos = i + 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    let escape = bytes.get(i + 1).copied();
                    i += 2;
                    out.push(match escape {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            let (ch, next) = self.unicode_escape(i)?;
                            i = next;
                            ch
                        }
                        _ => return Err(self.syntax()),
                    });
                }
                Some(&b) if b < 0x20 => return Err(self.syntax()),
                Some(_) => {
                    let run = i;
                    i = string_run(bytes, i);
                    out.push_str(self.slice(run, i)?);
                }
                None => return Err(self.syntax()),
            }
        }
    }

    /// The character of a `\u` escape whose hex digits start at `i` (a high surrogate must be
    /// followed by `\u` and a low one; lone surrogates are refused, as serde_json does).
    /// Returns the index after the escape.
    fn unicode_escape(&self, i: usize) -> Scan<(char, usize)> {
        let high = self.hex4(i)?;
        if !(0xD800..0xDC00).contains(&high) {
            // `from_u32` refuses a lone low surrogate (0xDC00..0xE000).
            let ch = char::from_u32(high).ok_or_else(|| self.syntax())?;
            return Ok((ch, i + 4));
        }
        if self.bytes().get(i + 4..i + 6) != Some(b"\\u") {
            return Err(self.syntax());
        }
        let low = self.hex4(i + 6)?;
        if !(0xDC00..0xE000).contains(&low) {
            return Err(self.syntax());
        }
        let ch = char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
            .ok_or_else(|| self.syntax())?;
        Ok((ch, i + 10))
    }

    fn hex4(&self, i: usize) -> Scan<u32> {
        let digits = self.bytes().get(i..i + 4).ok_or_else(|| self.syntax())?;
        digits.iter().try_fold(0u32, |acc, &d| {
            let v = char::from(d).to_digit(16).ok_or_else(|| self.syntax())?;
            Ok(acc << 4 | v)
        })
    }
}

/// Index of the first byte at or after `i` that ends a run of plain string content (`"`,
/// `\\` or a control character), or `bytes.len()`. Eight bytes at a time: strings are most
/// of a claims set, and a byte loop cost several instructions per byte.
fn string_run(bytes: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    while let Some(chunk) = bytes
        .get(i..i + 8)
        .and_then(|c| <[u8; 8]>::try_from(c).ok())
    {
        // Little-endian, so the lowest flagged byte is the first in the text. Each test is
        // exact for the lowest match (borrows only run upwards from a true match).
        let w = u64::from_le_bytes(chunk);
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let hits = (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (w.wrapping_sub(ONES * 0x20) & !w);
        let hits = hits & HIGH;
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = bytes.get(i) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        let mut s = Scanner::new(json.as_bytes(), Part::Payload)?;
        let v = s.numeric_date("exp")?;
        s.finish()?;
        Ok(v)
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
        // Not JSON at all: a syntax error, not a date error.
        for input in ["01", "-", "1.", "1e", "+1", "0x10", ""] {
            assert_eq!(
                date(input),
                Err(MalformedError::Json(Part::Payload)),
                "{input}"
            );
        }
    }

    // ----- the verify-path scanner -----

    /// Reads a document the way the header and claims parsers do: every member through
    /// `Scanner::value`, names checked for duplicates.
    fn scan(json: &str) -> Result<Vec<(String, String)>, MalformedError> {
        let mut s = Scanner::new(json.as_bytes(), Part::Document)?;
        let mut members = Vec::new();
        let mut object = s.object()?;
        while let Some(name) = s.next_key(&mut object)? {
            let raw = s.value(1)?;
            members.push((name, raw));
        }
        s.unique_by(&mut members, |(n, _)| n)?;
        s.finish()?;
        Ok(members
            .into_iter()
            .map(|(n, raw)| (n.into_owned(), raw.to_owned()))
            .collect())
    }

    fn string(json: &str) -> Result<Cow<'_, str>, MalformedError> {
        let mut s = Scanner::new(json.as_bytes(), Part::Document)?;
        s.peek();
        let v = s.string()?;
        s.finish()?;
        Ok(v)
    }

    #[test]
    fn scanner_rejects_duplicates_at_any_depth() {
        let dup = Err(MalformedError::DuplicateMember(Part::Document));
        for json in [
            r#"{"a":1,"a":2}"#,
            r#"{"a":1,"b":2,"a":3}"#,
            r#"{"a":{"b":1,"b":1}}"#,
            r#"{"a":[{"b":1,"c":{"d":0,"d":0}}]}"#,
            r#"{"a":1,"\u0061":2}"#,
            r#"{"x":{"\n":1,"\u000a":2}}"#,
            r#"{"\ud83d\ude00":1,"😀":2}"#,
        ] {
            assert_eq!(scan(json), dup, "{json}");
        }
        assert!(scan(r#"{"a":1,"b":{"a":2},"c":[{"a":1},{"a":1}]}"#).is_ok());
        assert!(scan(r#"{"a":1,"A":2,"a ":3}"#).is_ok());
    }

    #[test]
    fn scanner_keeps_raw_values() {
        let members =
            scan(r#" { "a" : [1, {"b": null}] , "c":"x\"y" , "d": -1.5e3 } "#).expect("valid");
        assert_eq!(
            members,
            [
                ("a".into(), r#"[1, {"b": null}]"#.into()),
                ("c".into(), r#""x\"y""#.into()),
                ("d".into(), "-1.5e3".into()),
            ]
        );
    }

    #[test]
    fn scanner_borrows_plain_strings_and_unescapes_the_rest() {
        assert!(matches!(string(r#""plain""#), Ok(Cow::Borrowed("plain"))));
        assert!(matches!(string(r#""é😀""#), Ok(Cow::Borrowed("é😀"))));
        let owned = |json: &str, want: &str| match string(json) {
            Ok(Cow::Owned(got)) => assert_eq!(got, want, "{json}"),
            other => panic!("{json}: {other:?}"),
        };
        owned(r#""a\"b""#, "a\"b");
        owned(r#""\\\/\b\f\n\r\t""#, "\\/\u{8}\u{c}\n\r\t");
        owned(r#""\u0041\u00e9\u20AC""#, "Aé€");
        owned(r#""x\ud83d\ude00y""#, "x😀y");
        owned(r#""\u0000""#, "\0");
        owned(r#""é\n😀 tail""#, "é\n😀 tail");
        let bad = Err(MalformedError::Json(Part::Document));
        for json in [
            r#""unterminated"#,
            r#""bad \x escape""#,
            r#""\u12""#,
            r#""\u12G4""#,
            r#""\ud83d""#,
            r#""\ud83d\u0041""#,
            r#""\ude00""#,
            r#""\ud83dx""#,
            "\"tab\tinside\"",
            "\"nl\ninside\"",
            "\"\u{1f}\"",
            r#""trailing" x"#,
            r#""trailing\\""#,
        ] {
            if json == r#""trailing\\""# {
                assert!(string(json).is_ok());
                continue;
            }
            assert_eq!(string(json), bad, "{json:?}");
        }
        assert_eq!(
            Scanner::new(b"\"\xff\"", Part::Document).err(),
            Some(MalformedError::Json(Part::Document))
        );
    }

    #[test]
    fn scanner_grammar() {
        let bad = Err(MalformedError::Json(Part::Document));
        for json in [
            "",
            "[]",
            "1",
            r#""x""#,
            "{",
            "}",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{,"a":1}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":[,1]}"#,
            r#"{"a":[1 2]}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":1e}"#,
            r#"{"a":1e+}"#,
            r#"{"a":+1}"#,
            r#"{"a":-}"#,
            r#"{"a":1e400}"#,
            r#"{"a":-1e400}"#,
            r#"{"a":tru}"#,
            r#"{"a":True}"#,
            r#"{"a":nul}"#,
            r#"{"a":NaN}"#,
            r#"{"a":Infinity}"#,
            r#"{"a":'x'}"#,
            r#"{a:1}"#,
            r#"{"a":1}}"#,
            r#"{"a":1} {}"#,
            "{\"a\":1}\u{0}",
            "{\"a\":\u{a0}1}",
            "{\u{c}\"a\":1}",
        ] {
            assert_eq!(scan(json), bad, "{json:?}");
        }
        for json in [
            "{}",
            " \t\r\n{ \t\r\n} \t\r\n",
            r#"{"a":[]}"#,
            r#"{"a":[[],{}]}"#,
            r#"{"a":0,"b":-0,"c":1.25,"d":1E+2,"e":-3e-2,"f":true,"g":false,"h":null}"#,
            r#"{"a":18446744073709551616}"#,
        ] {
            assert!(scan(json).is_ok(), "{json:?}");
        }
    }

    #[test]
    fn scanner_depth_matches_serde_path() {
        for depth in [1, 30, 31, 32, 33, 40] {
            let json = format!(r#"{{"a":{}1{}}}"#, "[".repeat(depth), "]".repeat(depth));
            assert_eq!(
                scan(&json).is_ok(),
                object(&json).is_ok(),
                "arrays nested {depth} deep"
            );
            let json = format!("{}{}{}", "{\"a\":".repeat(depth), "1", "}".repeat(depth));
            assert_eq!(
                scan(&json).is_ok(),
                object(&json).is_ok(),
                "objects nested {depth} deep"
            );
        }
        assert!(scan(&format!(r#"{{"a":{}1{}}}"#, "[".repeat(31), "]".repeat(31))).is_ok());
        assert!(scan(&format!(r#"{{"a":{}1{}}}"#, "[".repeat(32), "]".repeat(32))).is_err());
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a\"\\/é😀\u{0}-\u{1f} ]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[ab\"é]{0,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Mutations that keep a document close to JSON: a byte replaced by JSON punctuation,
    /// a duplicated member, an escape.
    fn mutate(json: &str, pos: usize, with: u8) -> Vec<u8> {
        let mut bytes = json.as_bytes().to_vec();
        if !bytes.is_empty() {
            let pos = pos % bytes.len();
            let table = b"{}[]\",:\\ 0-.eu";
            bytes[pos] = table[usize::from(with) % table.len()];
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The scanner and the serde_json path accept exactly the same documents, and agree
        /// on every member's value.
        #[test]
        fn scanner_agrees_with_serde_path(
            members in proptest::collection::btree_map("[abé\"]{0,3}", arb_json(), 0..5),
            duplicate in any::<bool>(),
            mutation in proptest::option::of((any::<usize>(), any::<u8>())),
        ) {
            let mut json = serde_json::to_string(&members).expect("json");
            if duplicate && let Some((name, value)) = members.iter().next() {
                let extra = serde_json::to_string(&serde_json::json!({ name.clone(): value }))
                    .expect("json");
                json = format!("{},{}", &json[..json.len() - 1], &extra[1..]);
            }
            let bytes = match mutation {
                Some((pos, with)) => mutate(&json, pos, with),
                None => json.into_bytes(),
            };
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let ours = scan(&text);
            let reference = object(&text);
            prop_assert_eq!(ours.is_ok(), reference.is_ok(), "{} {:?} {:?}", text, ours, reference);
            if let (Ok(ours), Ok(reference)) = (ours, reference) {
                prop_assert_eq!(ours.len(), reference.len());
                for (name, raw) in ours {
                    let v: Value = serde_json::from_str(&raw).expect("raw value parses");
                    prop_assert_eq!(Some(&v), reference.get(&name));
                }
            }
        }

        /// The word-at-a-time search finds exactly what a byte loop finds.
        #[test]
        fn string_run_matches_byte_loop(
            bytes in proptest::collection::vec(
                prop_oneof![
                    6 => 0x20u8..0x7f,
                    1 => Just(b'"'),
                    1 => Just(b'\\'),
                    1 => 0u8..0x20,
                    2 => 0x80u8..=0xff,
                ],
                0..40,
            ),
            start in 0usize..40,
        ) {
            let start = start.min(bytes.len());
            let naive = bytes[start..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .map_or(bytes.len(), |p| start + p);
            prop_assert_eq!(string_run(&bytes, start), naive);
        }

        #[test]
        fn scanner_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            if let Ok(text) = std::str::from_utf8(&bytes) {
                let _ = scan(text);
            }
        }
    }
}
