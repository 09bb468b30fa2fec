//! Compact JWS/JWT: parse everything, then verify, then validate.
//!
//! An [`UnverifiedToken`] exists only when all three segments are strict base64url and the
//! header is a well-formed, acceptable JOSE header. A [`VerifiedToken`] is a different type,
//! produced only after the signature verified under a key *we* chose (by `kid`, never by a key
//! the token carries) with an algorithm that key allows, and the claims passed a
//! [`Validation`].
//!
//! Header rules:
//! - `alg` is required and must name a supported algorithm; `none` cannot be represented.
//! - `crit` is rejected whenever present: we understand no extensions, and RFC 7515 §4.1.11
//!   forbids an empty list, so every `crit` is either unsupported or invalid.
//! - `jku`, `x5u`, `jwk` and `x5c` are rejected rather than ignored. We never fetch or trust a
//!   key named by the token; refusing them makes that visible to the sender immediately and
//!   removes any chance that a later code path starts honouring them.
//! - Duplicate member names are rejected (RFC 7515 §5.2 allows either that or last-wins; only
//!   rejecting is safe against parser differentials).

use std::borrow::Cow;
use std::fmt;

use crate::alg::Algorithm;
use crate::b64;
use crate::claims::{Claims, TokenType, Validation};
use crate::error::{Error, MalformedError, Part, RejectedError};
use crate::json::{self, Scanner};
use crate::keys::{MAX_SIGNATURE_LEN, VerifyingKey};

/// Largest encoded header we decode (ours are ~100 bytes).
pub const MAX_HEADER_LEN: usize = 2048;
const MAX_SIGNATURE_B64: usize = b64::encoded_len(MAX_SIGNATURE_LEN);

/// The parts of a JOSE header Latchkey uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    alg: Algorithm,
    kid: Option<String>,
    typ: Option<Cow<'static, str>>,
}

impl Header {
    /// The algorithm the token claims; only ever compared against the key's own set.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// Key id.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Token type (`typ`).
    pub fn typ(&self) -> Option<&str> {
        self.typ.as_deref()
    }

    fn parse(bytes: &[u8]) -> Result<Header, Error> {
        let mut s = Scanner::new(bytes, Part::Header)?;
        let (mut alg, mut kid, mut typ, mut cty, mut crit) = (None, None, None, None, None);
        let mut forbidden = None;
        // Names of members we skip, kept only to reject their duplicates.
        let mut others = Vec::new();
        let mut object = s.object()?;
        while let Some(name) = s.next_key(&mut object)? {
            match name.as_ref() {
                "alg" => once(&mut alg, s.string_member("alg")?)?,
                "kid" => once(&mut kid, s.string_member("kid")?)?,
                "typ" => once(&mut typ, s.string_member("typ")?)?,
                "cty" => once(&mut cty, s.string_member("cty")?)?,
                "crit" => {
                    s.value(1)?;
                    once(&mut crit, ())?;
                }
                "jku" | "x5u" | "jwk" | "x5c" => {
                    s.value(1)?;
                    forbidden =
                        forbidden.or_else(|| FORBIDDEN.iter().copied().find(|f| *f == name));
                }
                _ => {
                    s.value(1)?;
                    others.push(name);
                }
            }
        }
        s.unique_by(&mut others, |n| n)?;
        s.finish()?;
        if let Some(name) = forbidden {
            return Err(MalformedError::ForbiddenHeader(name).into());
        }
        if crit.is_some() {
            return Err(MalformedError::Critical.into());
        }
        let alg = alg.ok_or(MalformedError::MissingAlgorithm)?;
        Ok(Header {
            alg: Algorithm::from_name(&alg)?,
            kid: kid.map(Cow::into_owned),
            typ: typ.map(intern_typ),
        })
    }
}

/// Header members that name a key or certificate to fetch or trust; always refused.
const FORBIDDEN: [&str; 4] = ["jku", "x5u", "jwk", "x5c"];

fn once<T>(slot: &mut Option<T>, v: T) -> Result<(), MalformedError> {
    json::once(slot, v, Part::Header)
}

/// The `typ` values seen on nearly every verification are kept as `&'static str`, saving an
/// allocation per token; anything else is copied.
fn intern_typ(typ: Cow<'_, str>) -> Cow<'static, str> {
    let known = TokenType::MINTED
        .iter()
        .filter_map(|t| t.header_typ())
        .chain(["JWT"])
        .find(|k| *k == typ);
    match known {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(typ.into_owned()),
    }
}

/// Decodes and parses the header segment. Headers are ~100 bytes, so a small stack buffer
/// (cheap to zero) serves nearly all; larger ones, up to `MAX_HEADER_LEN`, use the heap.
fn decode_header(header_b64: &[u8]) -> Result<Header, Error> {
    let invalid = |_| MalformedError::Base64(Part::Header);
    let mut small = [0u8; 256];
    if header_b64.len() <= b64::encoded_len(small.len()) {
        let n = b64::decode_into(header_b64, &mut small).map_err(invalid)?;
        Header::parse(small.get(..n).unwrap_or_default())
    } else {
        Header::parse(&b64::decode(header_b64).map_err(invalid)?)
    }
}

/// A compact JWS whose three segments decoded; nothing about it is trusted yet.
pub struct UnverifiedToken<'a> {
    signing_input: &'a str,
    header: Header,
    payload: Vec<u8>,
    signature: [u8; MAX_SIGNATURE_LEN],
    signature_len: usize,
}

impl<'a> UnverifiedToken<'a> {
    /// Recognises a compact JWS. Size is bounded before decoding; see the module docs for the
    /// header rules.
    pub fn parse(token: &'a str) -> Result<UnverifiedToken<'a>, Error> {
        if token.len() > b64::MAX_TOKEN_LEN {
            return Err(MalformedError::TooLarge {
                limit: b64::MAX_TOKEN_LEN,
            }
            .into());
        }
        // One SIMD pass finds both dots and proves there is no third.
        let bytes = token.as_bytes();
        let mut dots = memchr::memchr_iter(b'.', bytes);
        let (Some(first), Some(second), None) = (dots.next(), dots.next(), dots.next()) else {
            return Err(MalformedError::Segments.into());
        };
        let segment = |range: std::ops::Range<usize>| bytes.get(range).unwrap_or_default();
        let header_b64 = segment(0..first);
        let payload_b64 = segment(first + 1..second);
        let sig_b64 = segment(second + 1..bytes.len());
        // '.' is ASCII, so this is a char boundary; `get` just avoids a panic path.
        let signing_input = token.get(..second).ok_or(MalformedError::Segments)?;
        if header_b64.len() > MAX_HEADER_LEN {
            return Err(MalformedError::TooLarge {
                limit: MAX_HEADER_LEN,
            }
            .into());
        }
        let header = decode_header(header_b64)?;
        let payload =
            b64::decode(payload_b64).map_err(|_| MalformedError::Base64(Part::Payload))?;
        if sig_b64.len() > MAX_SIGNATURE_B64 {
            return Err(MalformedError::SignatureLength.into());
        }
        let mut signature = [0u8; MAX_SIGNATURE_LEN];
        let signature_len = b64::decode_into(sig_b64, &mut signature)
            .map_err(|_| MalformedError::Base64(Part::Signature))?;
        Ok(UnverifiedToken {
            signing_input,
            header,
            payload,
            signature,
            signature_len,
        })
    }

    /// The (unverified) header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Verifies the signature with `key` (which must allow the header's `alg`), parses and
    /// validates the claims at `now`. If both the key and the token name a `kid`, they must
    /// agree.
    pub fn verify(
        self,
        key: &VerifyingKey,
        validation: &Validation,
        now: u64,
    ) -> Result<VerifiedToken, Error> {
        self.check_signature(key)?;
        self.into_validated(validation, now)
    }

    pub(crate) fn check_signature(&self, key: &VerifyingKey) -> Result<(), Error> {
        if let (Some(want), Some(got)) = (key.kid(), self.header.kid())
            && want != got
        {
            return Err(RejectedError::UnknownKey.into());
        }
        key.verify(
            self.header.alg,
            self.signing_input.as_bytes(),
            self.signature(),
        )
    }

    /// Second half of verification, after the signature is known good.
    pub(crate) fn into_validated(
        self,
        validation: &Validation,
        now: u64,
    ) -> Result<VerifiedToken, Error> {
        let claims = Claims::from_json(&self.payload)?;
        validation.validate(self.header.typ(), &claims, now)?;
        Ok(VerifiedToken {
            header: self.header,
            claims,
        })
    }

    pub(crate) fn signing_input(&self) -> &'a str {
        self.signing_input
    }

    pub(crate) fn signature(&self) -> &[u8] {
        &self.signature[..self.signature_len]
    }

    pub(crate) fn payload(&self) -> &[u8] {
        &self.payload
    }
}

impl fmt::Debug for UnverifiedToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A token is a bearer credential: print only the header.
        f.debug_struct("UnverifiedToken")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// A token whose signature verified and whose claims passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    header: Header,
    claims: Claims,
}

impl VerifiedToken {
    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The validated claims.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// Takes the claims.
    pub fn into_claims(self) -> Claims {
        self.claims
    }
}

/// Verifies `token` with `key` and validates it: the one-call form for client assertions,
/// whose key comes from the client's registration.
pub fn verify(
    token: &str,
    key: &VerifyingKey,
    validation: &Validation,
    now: u64,
) -> Result<VerifiedToken, Error> {
    UnverifiedToken::parse(token)?.verify(key, validation, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alg::AlgorithmSet;
    use crate::claims::{RequiredClaims, TokenType};
    use crate::jwk::Jwk;
    use crate::keys::{KeyPolicy, RsaPolicy, SigningKey};
    use proptest::prelude::*;

    fn token(header: &str, payload: &str, key: &SigningKey) -> String {
        let mut t = format!(
            "{}.{}",
            b64::encode(header.as_bytes()),
            b64::encode(payload.as_bytes())
        );
        let mut sig = String::new();
        key.sign_into(t.as_bytes(), &mut sig).expect("sign");
        t.push('.');
        t.push_str(&sig);
        t
    }

    fn parse_err(t: &str) -> Error {
        UnverifiedToken::parse(t).expect_err(t)
    }

    fn hs() -> SigningKey {
        SigningKey::hmac(Algorithm::HS256, &[0x42; 32])
            .expect("key")
            .with_kid("k")
    }

    /// A minimal client-assertion payload (iss = sub).
    const ASSERTION: &str = r#"{"iss":"a","sub":"a"}"#;

    /// Validation that checks nothing but type (for signature-focused tests).
    fn lenient() -> Validation {
        Validation {
            required: RequiredClaims {
                exp: false,
                ..RequiredClaims::EXP
            },
            ..Validation::new(TokenType::ClientAssertion)
        }
    }

    #[test]
    fn segment_structure() {
        assert_eq!(parse_err(""), MalformedError::Segments.into());
        assert_eq!(parse_err("a.b"), MalformedError::Segments.into());
        assert_eq!(parse_err("a.b.c.d"), MalformedError::Segments.into());
        assert_eq!(
            parse_err("e30.e30.AAAA.AAAA.AAAA"),
            MalformedError::Segments.into()
        );
        let big = "a".repeat(b64::MAX_TOKEN_LEN + 1);
        assert_eq!(
            parse_err(&big),
            MalformedError::TooLarge {
                limit: b64::MAX_TOKEN_LEN
            }
            .into()
        );
    }

    #[test]
    fn base64_strictness_per_segment() {
        let good = token(r#"{"alg":"HS256"}"#, "{}", &hs());
        assert!(UnverifiedToken::parse(&good).is_ok());
        let parts: Vec<&str> = good.split('.').collect();
        let cases = [
            (
                format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
                Part::Header,
            ),
            (
                format!("{}.{}=.{}", parts[0], parts[1], parts[2]),
                Part::Payload,
            ),
            (
                format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
                Part::Signature,
            ),
            (format!("{}.e30 .{}", parts[0], parts[2]), Part::Payload),
            (
                format!("{}.{}.{}", parts[0], parts[1], parts[2].replace('-', "+")),
                Part::Signature,
            ),
            // "e31" is '{}' with non-zero trailing bits.
            (format!("{}.e31.{}", parts[0], parts[2]), Part::Payload),
        ];
        for (t, part) in cases {
            if t == good {
                continue;
            }
            assert_eq!(parse_err(&t), MalformedError::Base64(part).into(), "{t}");
        }
    }

    #[test]
    fn header_rules() {
        let key = hs();
        let check = |header: &str, want: Error| {
            let t = token(header, "{}", &key);
            assert_eq!(parse_err(&t), want, "{header}");
        };
        check(
            r#"{"alg":"none"}"#,
            RejectedError::UnsupportedAlgorithm.into(),
        );
        check(
            r#"{"alg":"PS256"}"#,
            RejectedError::UnsupportedAlgorithm.into(),
        );
        check(r#"{"typ":"JWT"}"#, MalformedError::MissingAlgorithm.into());
        check(r#"{"alg":1}"#, MalformedError::MemberType("alg").into());
        check(
            r#"{"alg":"HS256","kid":7}"#,
            MalformedError::MemberType("kid").into(),
        );
        check(
            r#"{"alg":"HS256","alg":"HS256"}"#,
            MalformedError::DuplicateMember(Part::Header).into(),
        );
        check(
            r#"{"alg":"HS256","x":1,"x":2}"#,
            MalformedError::DuplicateMember(Part::Header).into(),
        );
        check(
            r#"{"alg":"HS256","crit":["exp"],"exp":1}"#,
            MalformedError::Critical.into(),
        );
        check(
            r#"{"alg":"HS256","crit":[]}"#,
            MalformedError::Critical.into(),
        );
        check(
            r#"{"alg":"HS256","crit":["b64"],"b64":false}"#,
            MalformedError::Critical.into(),
        );
        for name in ["jku", "x5u", "jwk", "x5c"] {
            check(
                &format!(r#"{{"alg":"HS256","{name}":"x"}}"#),
                MalformedError::ForbiddenHeader(match name {
                    "jku" => "jku",
                    "x5u" => "x5u",
                    "jwk" => "jwk",
                    _ => "x5c",
                })
                .into(),
            );
        }
        check("[]", MalformedError::Json(Part::Header).into());
        check(
            r#"{"alg":"HS256"} x"#,
            MalformedError::Json(Part::Header).into(),
        );
        // Escaped names are the names they spell: duplicates, types and rules still apply.
        check(
            r#"{"alg":"HS256","\u0061lg":"HS256"}"#,
            MalformedError::DuplicateMember(Part::Header).into(),
        );
        check(
            r#"{"alg":"HS256","x\u0035c":["a"]}"#,
            MalformedError::ForbiddenHeader("x5c").into(),
        );
        check(
            r#"{"alg":"HS256","\u0063rit":["exp"]}"#,
            MalformedError::Critical.into(),
        );
        check(
            r#"{"alg":"HS256","cty":"JWT","cty":"JWT"}"#,
            MalformedError::DuplicateMember(Part::Header).into(),
        );
        check(
            r#"{"alg":"HS256","cty":1}"#,
            MalformedError::MemberType("cty").into(),
        );
        check(
            r#"{"alg":"HS256","x":{"a":1,"\u0061":2}}"#,
            MalformedError::DuplicateMember(Part::Header).into(),
        );
        check(
            r#"{"alg":"HS256","x":1e400}"#,
            MalformedError::Json(Part::Header).into(),
        );
        // Unknown members are ignored.
        let t = token(
            r#"{"alg":"HS256","x5t#S256":"abc","cty":"JWT"}"#,
            "{}",
            &key,
        );
        assert!(UnverifiedToken::parse(&t).is_ok());
    }

    #[test]
    fn header_strings_unescape_and_common_types_are_interned() {
        let key = hs();
        let parsed = |header: &str| {
            let t = token(header, "{}", &key);
            UnverifiedToken::parse(&t).expect(header).header().clone()
        };
        let h = parsed(r#"{"alg":"HS\u0032\u00356","kid":"k\/1","typ":"JWT"}"#);
        assert_eq!(h.alg(), Algorithm::HS256);
        assert_eq!(h.kid(), Some("k/1"));
        assert!(matches!(h.typ, Some(Cow::Borrowed("JWT"))));
        for t in TokenType::MINTED {
            let typ = t.header_typ().expect("minted types have a typ");
            let h = parsed(&format!(r#"{{"alg":"HS256","typ":"{typ}"}}"#));
            assert!(matches!(h.typ, Some(Cow::Borrowed(got)) if got == typ));
        }
        // Anything else is kept as sent (type checks compare case-insensitively later).
        let h = parsed(r#"{"alg":"HS256","typ":"application/at+JWT"}"#);
        assert_eq!(h.typ(), Some("application/at+JWT"));
        let h = parsed(r#"{"alg":"HS256","typ":"\u004aWT"}"#);
        assert_eq!(h.typ(), Some("JWT"));
    }

    #[test]
    fn large_headers_use_the_heap_path() {
        let key = hs();
        let pad = "p".repeat(400);
        let t = token(
            &format!(r#"{{"alg":"HS256","x":"{pad}","kid":"k"}}"#),
            "{}",
            &key,
        );
        assert_eq!(
            UnverifiedToken::parse(&t).expect("parse").header().kid(),
            Some("k")
        );
        let t = token(
            &format!(r#"{{"alg":"HS256","x":"{pad}","x":1}}"#),
            "{}",
            &key,
        );
        assert_eq!(
            parse_err(&t),
            MalformedError::DuplicateMember(Part::Header).into()
        );
        let bad = format!("{}=.e30.AAAA", b64::encode(pad.as_bytes()));
        assert_eq!(parse_err(&bad), MalformedError::Base64(Part::Header).into());
    }

    #[test]
    fn algorithm_confusion_refused() {
        // The classic attack: sign HS256 with the bytes of an RSA public key.
        let rsa = crate::keys::tests::rsa_key();
        let public = rsa.verifying_key();
        let pem = public.to_pem().expect("pem");
        let forged_key = SigningKey::hmac(Algorithm::HS256, pem.as_bytes()).expect("hmac");
        let t = token(r#"{"alg":"HS256"}"#, "{}", &forged_key);
        assert_eq!(
            verify(&t, &public, &lenient(), 0),
            Err(RejectedError::AlgorithmMismatch.into())
        );
        // And an EdDSA key never accepts an ES256 header even if lengths match.
        let ed = SigningKey::generate(Algorithm::EdDSA).expect("ed");
        let es = SigningKey::generate(Algorithm::ES256).expect("es");
        let t = token(r#"{"alg":"ES256"}"#, "{}", &es);
        assert_eq!(
            verify(&t, &ed.verifying_key(), &lenient(), 0),
            Err(RejectedError::AlgorithmMismatch.into())
        );
    }

    #[test]
    fn kid_must_agree_when_both_present() {
        let key = hs();
        let t = token(r#"{"alg":"HS256","kid":"other"}"#, ASSERTION, &key);
        assert_eq!(
            verify(&t, &key.verifying_key(), &lenient(), 0),
            Err(RejectedError::UnknownKey.into())
        );
        let t = token(r#"{"alg":"HS256","kid":"k"}"#, ASSERTION, &key);
        assert!(verify(&t, &key.verifying_key(), &lenient(), 0).is_ok());
        let t = token(r#"{"alg":"HS256"}"#, ASSERTION, &key);
        assert!(verify(&t, &key.verifying_key(), &lenient(), 0).is_ok());
    }

    #[test]
    fn claims_are_checked_only_after_signature() {
        let key = hs();
        let other = SigningKey::hmac(Algorithm::HS256, &[0x43; 32]).expect("key");
        // Bad JSON payload under a wrong key: the signature error wins.
        let t = token(r#"{"alg":"HS256"}"#, "not json", &other);
        assert_eq!(
            verify(&t, &key.verifying_key(), &lenient(), 0),
            Err(RejectedError::BadSignature.into())
        );
        let t = token(r#"{"alg":"HS256"}"#, "not json", &key);
        assert_eq!(
            verify(&t, &key.verifying_key(), &lenient(), 0),
            Err(MalformedError::Json(Part::Payload).into())
        );
    }

    // ----- RFC vectors -----

    /// RFC 7515 A.1: HS256 (the key is 256 bits, within policy).
    #[test]
    fn rfc7515_a1_hs256() {
        let jwk = Jwk::from_json(
            br#"{"kty":"oct","alg":"HS256","k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"}"#,
        )
        .expect("jwk");
        let key = jwk
            .to_verifying_key(AlgorithmSet::EMPTY, &KeyPolicy::default())
            .expect("key");
        let t = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        // The RFC's claims have no `sub`, so they fit none of Latchkey's token types: check
        // the signature step and the strict claims parse.
        let parsed = UnverifiedToken::parse(t).expect("parse");
        assert_eq!(parsed.header().typ(), Some("JWT"));
        assert_eq!(parsed.check_signature(&key), Ok(()));
        let claims = Claims::from_json(parsed.payload()).expect("claims");
        assert_eq!(claims.iss.as_deref(), Some("joe"));
        assert_eq!(claims.exp, Some(1_300_819_380));
        assert_eq!(
            claims.extra.get("http://example.com/is_root"),
            Some(&serde_json::Value::Bool(true))
        );
        let tampered = t.replace(".dBjf", ".dBjg");
        assert_eq!(
            UnverifiedToken::parse(&tampered)
                .expect("parse")
                .check_signature(&key),
            Err(RejectedError::BadSignature.into())
        );
    }

    /// RFC 7515 A.2: RS256 with a 2048-bit key, accepted here through the default policy
    /// (2048..=4096); the RSA_3072 profile would refuse this key.
    #[test]
    fn rfc7515_a2_rs256() {
        let jwk = Jwk {
            kty: "RSA".into(),
            n: Some("ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ".into()),
            e: Some("AQAB".into()),
            ..Jwk::default()
        };
        let key = jwk
            .to_verifying_key(AlgorithmSet::one(Algorithm::RS256), &KeyPolicy::default())
            .expect("key");
        let t = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
        let parsed = UnverifiedToken::parse(t).expect("parse");
        assert_eq!(parsed.check_signature(&key), Ok(()));
        let claims = Claims::from_json(parsed.payload()).expect("claims");
        assert_eq!(claims.iss.as_deref(), Some("joe"));
        let strict = KeyPolicy {
            rsa: RsaPolicy::RSA_3072,
        };
        assert!(
            jwk.to_verifying_key(AlgorithmSet::one(Algorithm::RS256), &strict)
                .is_err()
        );
    }

    /// RFC 8037 A.4: Ed25519 signature over "Example of Ed25519 signing" (a JWS, not a JWT;
    /// the payload is not a claims set, so only the signature step is checked).
    #[test]
    fn rfc8037_a4_ed25519() {
        let jwk = Jwk::from_json(
            br#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#,
        )
        .expect("jwk");
        let key = jwk
            .to_verifying_key(AlgorithmSet::EMPTY, &KeyPolicy::default())
            .expect("key");
        let t = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
        let parsed = UnverifiedToken::parse(t).expect("parse");
        assert_eq!(parsed.header().alg(), Algorithm::EdDSA);
        assert_eq!(parsed.payload(), b"Example of Ed25519 signing");
        assert_eq!(parsed.check_signature(&key), Ok(()));
        // Signing with the RFC's private key reproduces the signature (Ed25519 is
        // deterministic).
        let d = b64::decode(b"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A").expect("d");
        let pkcs8 = [
            &[
                0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
                0x04, 0x20,
            ][..],
            &d,
        ]
        .concat();
        let signer = SigningKey::from_pkcs8_der(Algorithm::EdDSA, &pkcs8).expect("signer");
        let mut sig = String::new();
        signer
            .sign_into(parsed.signing_input().as_bytes(), &mut sig)
            .expect("sign");
        assert_eq!(Some(sig.as_str()), t.rsplit('.').next());
        assert_eq!(signer.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    /// RFC 7520 §4.4: HMAC-SHA2 integrity protection (HS256, kid from the RFC 7520 §3.5 key).
    #[test]
    fn rfc7520_4_4_hs256() {
        let jwk = Jwk::from_json(
            br#"{"kty":"oct","kid":"018c0ae5-4d9b-471b-bfd6-eef314bc7037","use":"sig","alg":"HS256","k":"hJtXIZ2uSN5kbQfbtTNWbpdmhkV8FJG-Onbc6mxCcYg"}"#,
        )
        .expect("jwk");
        let key = jwk
            .to_verifying_key(AlgorithmSet::EMPTY, &KeyPolicy::default())
            .expect("key");
        let t = "eyJhbGciOiJIUzI1NiIsImtpZCI6IjAxOGMwYWU1LTRkOWItNDcxYi1iZmQ2LWVlZjMxNGJjNzAzNyJ9.SXTigJlzIGEgZGFuZ2Vyb3VzIGJ1c2luZXNzLCBGcm9kbywgZ29pbmcgb3V0IHlvdXIgZG9vci4gWW91IHN0ZXAgb250byB0aGUgcm9hZCwgYW5kIGlmIHlvdSBkb24ndCBrZWVwIHlvdXIgZmVldCwgdGhlcmXigJlzIG5vIGtub3dpbmcgd2hlcmUgeW91IG1pZ2h0IGJlIHN3ZXB0IG9mZiB0by4.s0h6KThzkfBBBkLspW1h84VsJZFTsPPqMDA7g1Md7p0";
        let parsed = UnverifiedToken::parse(t).expect("parse");
        assert_eq!(
            parsed.header().kid(),
            Some("018c0ae5-4d9b-471b-bfd6-eef314bc7037")
        );
        assert_eq!(parsed.check_signature(&key), Ok(()));
        let tampered = t.replace("s0h6", "s0h7");
        assert_eq!(
            UnverifiedToken::parse(&tampered)
                .expect("parse")
                .check_signature(&key),
            Err(RejectedError::BadSignature.into())
        );
    }

    // ----- property: any single-byte change breaks verification -----

    fn signed_token(key: &SigningKey) -> String {
        token(
            &format!(r#"{{"alg":"{}","kid":"{}"}}"#, key.algorithm(), key.kid()),
            r#"{"iss":"a","sub":"a","aud":"s","exp":2000000000,"jti":"j"}"#,
            key,
        )
    }

    fn tamper_fails(key: &SigningKey, t: &str, pos: usize, byte: u8) -> Result<(), TestCaseError> {
        let mut bytes = t.as_bytes().to_vec();
        let pos = pos % bytes.len();
        prop_assume!(bytes[pos] != byte);
        bytes[pos] = byte;
        // Non-UTF-8 is not even a &str: nothing to verify.
        if let Ok(s) = std::str::from_utf8(&bytes) {
            let r = verify(s, &key.verifying_key(), &lenient(), 1_000_000_000);
            prop_assert!(r.is_err(), "accepted tampered token {s}");
        }
        Ok(())
    }

    fn keys() -> &'static [SigningKey; 3] {
        static KEYS: std::sync::OnceLock<[SigningKey; 3]> = std::sync::OnceLock::new();
        KEYS.get_or_init(|| {
            [
                SigningKey::generate(Algorithm::EdDSA).expect("ed"),
                SigningKey::generate(Algorithm::ES256).expect("es"),
                SigningKey::generate(Algorithm::HS256).expect("hs"),
            ]
        })
    }

    #[test]
    fn untampered_tokens_verify() {
        for key in keys().iter().chain([crate::keys::tests::rsa_key()]) {
            let t = signed_token(key);
            assert!(verify(&t, &key.verifying_key(), &lenient(), 1_000_000_000).is_ok());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn single_byte_change_fails(which in 0usize..4, pos in any::<usize>(), byte in any::<u8>()) {
            let key = match which {
                3 => crate::keys::tests::rsa_key(),
                i => &keys()[i],
            };
            let t = signed_token(key);
            tamper_fails(key, &t, pos, byte)?;
        }

        #[test]
        fn parse_never_panics(s in "[A-Za-z0-9_.=+/-]{0,300}") {
            let _ = UnverifiedToken::parse(&s);
        }
    }
}
