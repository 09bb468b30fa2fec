//! JWT claims (RFC 7519), token types and claim validation.
//!
//! Registered claims are typed fields; everything else (`ten`, `scope`, `schemas`, `cnf`,
//! `client_id`, …) is kept in [`Claims::extra`], parsed with duplicate member names rejected
//! at every depth.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::Value;

use crate::error::{Error, MalformedError, Part, RejectedError};
use crate::json::{self, Scanner};

/// Registered claim names; they can never appear in [`Claims::extra`].
pub const REGISTERED: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

/// `aud`: a single string or an array of strings (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Audience {
    /// `"aud": "x"`
    One(String),
    /// `"aud": ["x", "y"]`
    Many(Vec<String>),
}

impl Audience {
    /// The audience values.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let (one, many) = match self {
            Audience::One(s) => (Some(s.as_str()), &[][..]),
            Audience::Many(v) => (None, v.as_slice()),
        };
        one.into_iter().chain(many.iter().map(String::as_str))
    }
}

/// A JWT claims set.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Claims {
    /// Issuer.
    pub iss: Option<String>,
    /// Subject.
    pub sub: Option<String>,
    /// Audience.
    pub aud: Option<Audience>,
    /// Expiry (NumericDate, seconds).
    pub exp: Option<u64>,
    /// Not before.
    pub nbf: Option<u64>,
    /// Issued at.
    pub iat: Option<u64>,
    /// Token id.
    pub jti: Option<String>,
    /// Every other member. Registered names here make serialization fail.
    pub extra: BTreeMap<String, Value>,
}

impl Claims {
    /// An extra member as a string.
    pub fn extra_str(&self, name: &str) -> Option<&str> {
        self.extra.get(name).and_then(Value::as_str)
    }

    /// Parses a claims set from JSON bytes (strict: duplicates, NumericDates, member types).
    pub fn from_json(bytes: &[u8]) -> Result<Claims, Error> {
        Ok(ClaimsRef::parse(bytes)?.into_owned()?)
    }

    /// Serializes into `buf` (cleared first). Fails only if `extra` holds a registered name.
    pub fn write_json(&self, buf: &mut Vec<u8>) -> Result<(), Error> {
        buf.clear();
        serde_json::to_writer(&mut *buf, self)
            .map_err(|_| crate::error::MalformedError::Json(crate::error::Part::Payload).into())
    }
}

impl Serialize for Claims {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        if let Some(name) = REGISTERED.iter().find(|n| self.extra.contains_key(**n)) {
            return Err(S::Error::custom(format_args!(
                "registered claim `{name}` in extra members"
            )));
        }
        let mut m = s.serialize_map(None)?;
        if let Some(v) = &self.iss {
            m.serialize_entry("iss", v)?;
        }
        if let Some(v) = &self.sub {
            m.serialize_entry("sub", v)?;
        }
        if let Some(v) = &self.aud {
            m.serialize_entry("aud", v)?;
        }
        if let Some(v) = &self.exp {
            m.serialize_entry("exp", v)?;
        }
        if let Some(v) = &self.nbf {
            m.serialize_entry("nbf", v)?;
        }
        if let Some(v) = &self.iat {
            m.serialize_entry("iat", v)?;
        }
        if let Some(v) = &self.jti {
            m.serialize_entry("jti", v)?;
        }
        for (k, v) in &self.extra {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// A claims set borrowed from the decoded payload: what verification parses, validates and
/// then turns into an owned [`Claims`]. Strings without escapes point into the payload;
/// members other than the registered ones stay raw JSON text (already checked strictly:
/// valid, no duplicate names at any depth) until [`ClaimsRef::into_owned`] builds values.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct ClaimsRef<'a> {
    pub(crate) iss: Option<Cow<'a, str>>,
    pub(crate) sub: Option<Cow<'a, str>>,
    pub(crate) aud: Option<AudienceRef<'a>>,
    pub(crate) exp: Option<u64>,
    pub(crate) nbf: Option<u64>,
    pub(crate) iat: Option<u64>,
    pub(crate) jti: Option<Cow<'a, str>>,
    /// Other members: name and raw JSON value, sorted by name.
    pub(crate) extra: Vec<(Cow<'a, str>, &'a str)>,
}

/// Borrowed `aud`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AudienceRef<'a> {
    One(Cow<'a, str>),
    Many(Vec<Cow<'a, str>>),
}

impl<'a> ClaimsRef<'a> {
    /// Parses a claims set strictly: duplicate names anywhere, registered claims of the wrong
    /// type and NumericDates that are not integers in range are all refused.
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<ClaimsRef<'a>, MalformedError> {
        let mut s = Scanner::new(bytes, Part::Payload)?;
        let mut c = ClaimsRef::default();
        let mut object = s.object()?;
        while let Some(name) = s.next_key(&mut object)? {
            // Names compare after unescaping, so `"i\u0073s"` is `iss` (and a duplicate of it).
            match name.as_ref() {
                "iss" => set(&mut c.iss, s.string_member("iss")?)?,
                "sub" => set(&mut c.sub, s.string_member("sub")?)?,
                "jti" => set(&mut c.jti, s.string_member("jti")?)?,
                "aud" => {
                    let aud = if s.peek() == Some(b'"') {
                        AudienceRef::One(s.string()?)
                    } else {
                        AudienceRef::Many(s.string_array("aud")?)
                    };
                    set(&mut c.aud, aud)?;
                }
                "exp" => set(&mut c.exp, s.numeric_date("exp")?)?,
                "nbf" => set(&mut c.nbf, s.numeric_date("nbf")?)?,
                "iat" => set(&mut c.iat, s.numeric_date("iat")?)?,
                _ => {
                    let raw = s.value(1)?;
                    c.extra.push((name, raw));
                }
            }
        }
        s.unique_by(&mut c.extra, |(name, _)| name)?;
        s.finish()?;
        Ok(c)
    }

    /// The owned claims set. Extra members become `serde_json` values here (their text was
    /// already validated, so this only builds them).
    pub(crate) fn into_owned(self) -> Result<Claims, MalformedError> {
        let extra = self
            .extra
            .into_iter()
            .map(|(name, raw)| {
                serde_json::from_str(raw)
                    .map(|v| (name.into_owned(), v))
                    .map_err(|_| MalformedError::Json(Part::Payload))
            })
            .collect::<Result<_, _>>()?;
        Ok(Claims {
            iss: self.iss.map(Cow::into_owned),
            sub: self.sub.map(Cow::into_owned),
            aud: self.aud.map(|aud| match aud {
                AudienceRef::One(a) => Audience::One(a.into_owned()),
                AudienceRef::Many(v) => {
                    Audience::Many(v.into_iter().map(Cow::into_owned).collect())
                }
            }),
            exp: self.exp,
            nbf: self.nbf,
            iat: self.iat,
            jti: self.jti.map(Cow::into_owned),
            extra,
        })
    }
}

fn set<T>(slot: &mut Option<T>, v: T) -> Result<(), MalformedError> {
    json::once(slot, v, Part::Payload)
}

// ---------------------------------------------------------------------------------------------
// Token types

/// The kinds of token Latchkey handles. Each must never be accepted in another's place.
///
/// Tokens Latchkey mints carry a distinct header `typ` (RFC 8725 §3.11 explicit typing):
/// the verifier compares it exactly, so an initial access token cannot pass as an access
/// token, and so on. Client assertions are minted by agents, whose SDKs write `typ: JWT` or
/// nothing; they are recognised by that *absence* of a Latchkey type plus the RFC 7523 claim
/// rule (`iss` = `sub`, `aud`, `exp` and `jti` present), so none of our own tokens can be
/// replayed as an assertion and no assertion can pass as one of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// OAuth access token for agents (RFC 9068 `at+jwt`).
    AccessToken,
    /// Operator/admin access token.
    OperatorAccessToken,
    /// Initial access token (one-shot onboarding credential).
    InitialAccessToken,
    /// Registration access token (RFC 7592).
    RegistrationAccessToken,
    /// Client assertion minted by an agent (RFC 7523).
    ClientAssertion,
}

impl TokenType {
    /// The types Latchkey mints (each has its own header `typ`).
    pub const MINTED: [TokenType; 4] = [
        TokenType::AccessToken,
        TokenType::OperatorAccessToken,
        TokenType::InitialAccessToken,
        TokenType::RegistrationAccessToken,
    ];

    /// The header `typ` Latchkey writes, `None` for client assertions (which we never mint).
    pub const fn header_typ(self) -> Option<&'static str> {
        match self {
            TokenType::AccessToken => Some("at+jwt"),
            TokenType::OperatorAccessToken => Some("latchkey-op+jwt"),
            TokenType::InitialAccessToken => Some("latchkey-iat+jwt"),
            TokenType::RegistrationAccessToken => Some("latchkey-rat+jwt"),
            TokenType::ClientAssertion => None,
        }
    }

    /// Position in [`TokenType::MINTED`] (client assertions have none).
    pub const fn minted_index(self) -> Option<usize> {
        match self {
            TokenType::AccessToken => Some(0),
            TokenType::OperatorAccessToken => Some(1),
            TokenType::InitialAccessToken => Some(2),
            TokenType::RegistrationAccessToken => Some(3),
            TokenType::ClientAssertion => None,
        }
    }

    /// Does a header `typ` fit this type? Media types compare case-insensitively and may omit
    /// `application/` (RFC 7515 §4.1.9).
    pub fn accepts_header(self, typ: Option<&str>) -> bool {
        let typ = typ.map(|t| {
            t.get(..12)
                .filter(|p| p.eq_ignore_ascii_case("application/"))
                .map_or(t, |_| &t[12..])
        });
        match (self.header_typ(), typ) {
            (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
            (Some(_), None) => false,
            (None, None) => true,
            (None, Some(got)) => got.eq_ignore_ascii_case("JWT"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation

/// Which registered claims must be present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequiredClaims {
    /// `iss` must be present.
    pub iss: bool,
    /// `sub` must be present.
    pub sub: bool,
    /// `aud` must be present.
    pub aud: bool,
    /// `exp` must be present.
    pub exp: bool,
    /// `iat` must be present.
    pub iat: bool,
    /// `nbf` must be present.
    pub nbf: bool,
    /// `jti` must be present.
    pub jti: bool,
}

impl RequiredClaims {
    /// `exp` only.
    pub const EXP: RequiredClaims = RequiredClaims {
        iss: false,
        sub: false,
        aud: false,
        exp: true,
        iat: false,
        nbf: false,
        jti: false,
    };
    /// Everything Latchkey itself always writes: `iss`, `sub`, `aud`, `exp`, `iat`, `jti`.
    pub const MINTED: RequiredClaims = RequiredClaims {
        iss: true,
        sub: true,
        aud: true,
        exp: true,
        iat: true,
        nbf: false,
        jti: true,
    };
}

/// Claim validation rules (a config struct; every check is explicit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    pub leeway: u64,
    /// Claims that must be present.
    pub required: RequiredClaims,
    /// Accepted issuers; empty means `iss` is not checked (only sensible for client
    /// assertions, whose issuer is checked against the key's owner instead).
    pub issuers: Vec<String>,
    /// Accepted audiences; at least one `aud` value must be in this set. Empty means `aud` is
    /// not checked.
    pub audiences: Vec<String>,
    /// Upper bound on `exp - iat` (or `exp - now` if `iat` is absent), in seconds.
    pub max_lifetime: Option<u64>,
    /// The token type expected here.
    pub token_type: TokenType,
}

impl Validation {
    /// Rules for `token_type` with Latchkey's defaults: 60 s leeway, the claims Latchkey always
    /// writes (for client assertions: RFC 7523 §3 `iss`, `sub`, `aud`, `exp`, plus `jti` for
    /// replay protection), no issuer/audience sets (fill them in), no lifetime bound.
    pub fn new(token_type: TokenType) -> Validation {
        let required = match token_type {
            TokenType::ClientAssertion => RequiredClaims {
                iat: false,
                ..RequiredClaims::MINTED
            },
            _ => RequiredClaims::MINTED,
        };
        Validation {
            leeway: 60,
            required,
            issuers: Vec::new(),
            audiences: Vec::new(),
            max_lifetime: None,
            token_type,
        }
    }

    /// Checks the header `typ` and the claims at time `now` (unix seconds).
    pub fn validate(&self, typ: Option<&str>, claims: &Claims, now: u64) -> Result<(), Error> {
        if !self.token_type.accepts_header(typ) {
            return Err(RejectedError::WrongType.into());
        }
        let r = &self.required;
        let missing = [
            (r.iss && claims.iss.is_none(), "iss"),
            (r.sub && claims.sub.is_none(), "sub"),
            (r.aud && claims.aud.is_none(), "aud"),
            (r.exp && claims.exp.is_none(), "exp"),
            (r.iat && claims.iat.is_none(), "iat"),
            (r.nbf && claims.nbf.is_none(), "nbf"),
            (r.jti && claims.jti.is_none(), "jti"),
        ];
        if let Some((_, name)) = missing.iter().find(|(m, _)| *m) {
            return Err(RejectedError::MissingClaim(name).into());
        }
        if self.token_type == TokenType::ClientAssertion {
            // RFC 7523 §3: the client authenticates as itself.
            match (&claims.iss, &claims.sub) {
                (Some(iss), Some(sub)) if iss == sub => {}
                _ => return Err(RejectedError::WrongType.into()),
            }
        }
        // NumericDates are bounded by parsing (≤ year 9999), so these sums cannot overflow;
        // saturating anyway keeps that independent of the parser.
        if let Some(exp) = claims.exp
            && now >= exp.saturating_add(self.leeway)
        {
            return Err(RejectedError::Expired.into());
        }
        if let Some(nbf) = claims.nbf
            && nbf > now.saturating_add(self.leeway)
        {
            return Err(RejectedError::NotYetValid.into());
        }
        if let Some(iat) = claims.iat
            && iat > now.saturating_add(self.leeway)
        {
            return Err(RejectedError::IssuedInFuture.into());
        }
        if let (Some(max), Some(exp)) = (self.max_lifetime, claims.exp) {
            let start = claims.iat.unwrap_or(now);
            if exp.saturating_sub(start) > max {
                return Err(RejectedError::LifetimeTooLong.into());
            }
        }
        if !self.issuers.is_empty() {
            match &claims.iss {
                Some(iss) if self.issuers.iter().any(|a| a == iss) => {}
                _ => return Err(RejectedError::WrongIssuer.into()),
            }
        }
        if !self.audiences.is_empty() {
            let ok = claims
                .aud
                .as_ref()
                .is_some_and(|aud| aud.iter().any(|a| self.audiences.iter().any(|x| x == a)));
            if !ok {
                return Err(RejectedError::WrongAudience.into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(json: &str) -> Result<Claims, Error> {
        Claims::from_json(json.as_bytes())
    }

    #[test]
    fn parses_registered_and_extra_members() {
        let c = parse(
            r#"{"iss":"a","sub":"a","aud":["southgate"],"iat":1,"nbf":1,"exp":3601,"jti":"j",
                "schemas":["urn:siemens:mindsphere:v1"],"ten":"t","cnf":{"x5t#S256":"abc"}}"#,
        )
        .expect("parse");
        assert_eq!(c.iss.as_deref(), Some("a"));
        assert_eq!(c.aud, Some(Audience::Many(vec!["southgate".into()])));
        assert_eq!(c.exp, Some(3601));
        assert_eq!(c.extra_str("ten"), Some("t"));
        assert_eq!(c.extra.len(), 3);
        let c = parse(r#"{"aud":"southgate"}"#).expect("parse");
        assert_eq!(c.aud, Some(Audience::One("southgate".into())));
    }

    #[test]
    fn rejects_malformed_claims() {
        let check = |json: &str, want: MalformedError| {
            assert_eq!(parse(json), Err(Error::Malformed(want)), "{json}");
        };
        let dup = MalformedError::DuplicateMember(Part::Payload);
        check(r#"{"iss":"a","iss":"b"}"#, dup.clone());
        check(r#"{"exp":1,"exp":1}"#, dup.clone());
        check(r#"{"ten":"a","ten":"b"}"#, dup.clone());
        check(r#"{"cnf":{"a":1,"a":2}}"#, dup.clone());
        check(r#"{"i\u0073s":"a","iss":"b"}"#, dup);
        check(r#"{"exp":1.5}"#, MalformedError::NumericDate("exp"));
        check(r#"{"nbf":"1"}"#, MalformedError::NumericDate("nbf"));
        check(r#"{"iat":-1}"#, MalformedError::NumericDate("iat"));
        check(r#"{"exp":1e3}"#, MalformedError::NumericDate("exp"));
        check(r#"{"iss":1}"#, MalformedError::MemberType("iss"));
        check(r#"{"aud":[1]}"#, MalformedError::MemberType("aud"));
        check(r#"{"aud":{}}"#, MalformedError::MemberType("aud"));
        check("[]", MalformedError::Json(Part::Payload));
        check(r#"{"exp":1} x"#, MalformedError::Json(Part::Payload));
    }

    #[test]
    fn borrowed_view_borrows_plain_strings_and_unescapes_the_rest() {
        let json = br#"{"iss":"agent","sub":"ag\u0065nt","aud":["a","\/b"],"jti":"j",
            "exp":2,"ten":"main","schemas":["urn:x"],"cnf":{"x5t#S256":"abc"}}"#;
        let c = ClaimsRef::parse(json).expect("parse");
        assert!(matches!(c.iss, Some(Cow::Borrowed("agent"))));
        assert!(matches!(&c.sub, Some(Cow::Owned(s)) if s == "agent"));
        assert!(matches!(c.jti, Some(Cow::Borrowed("j"))));
        match &c.aud {
            Some(AudienceRef::Many(v)) => {
                assert!(matches!(v[0], Cow::Borrowed("a")));
                assert!(matches!(&v[1], Cow::Owned(s) if s == "/b"));
            }
            other => panic!("{other:?}"),
        }
        // Unknown members stay raw JSON, sorted by name.
        let extra: Vec<(&str, &str)> = c.extra.iter().map(|(n, r)| (n.as_ref(), *r)).collect();
        assert_eq!(
            extra,
            [
                ("cnf", r#"{"x5t#S256":"abc"}"#),
                ("schemas", r#"["urn:x"]"#),
                ("ten", r#""main""#),
            ]
        );
        let owned = c.into_owned().expect("owned");
        assert_eq!(owned, Claims::from_json(json).expect("parse"));
        assert_eq!(owned.sub.as_deref(), Some("agent"));
        assert_eq!(owned.extra["cnf"], serde_json::json!({"x5t#S256": "abc"}));
    }

    #[test]
    fn escaped_member_names_are_the_names_they_spell() {
        let check = |json: &str, want: Result<(), MalformedError>| {
            assert_eq!(
                ClaimsRef::parse(json.as_bytes()).map(|_| ()),
                want,
                "{json}"
            );
        };
        let dup = Err(MalformedError::DuplicateMember(Part::Payload));
        check(r#"{"\u0065xp":1,"exp":2}"#, dup.clone());
        check(r#"{"t\u0065n":"a","ten":"b"}"#, dup.clone());
        check(r#"{"ten":"a","x":1,"t\u0065n":"b"}"#, dup.clone());
        check(r#"{"a\/b":1,"a/b":2}"#, dup);
        // An escaped registered name is still typed.
        check(
            r#"{"\u0065xp":"soon"}"#,
            Err(MalformedError::NumericDate("exp")),
        );
        check(r#"{"j\u0074i":7}"#, Err(MalformedError::MemberType("jti")));
        check(r#"{"ten":"a","Ten":"b","te n":"c"}"#, Ok(()));
        let c = ClaimsRef::parse(br#"{"\u0069ss":"x"}"#).expect("parse");
        assert_eq!(c.iss.as_deref(), Some("x"));
    }

    #[test]
    fn audience_forms() {
        let aud = |json: &str| Claims::from_json(json.as_bytes()).map(|c| c.aud);
        assert_eq!(aud(r#"{"aud":"a"}"#), Ok(Some(Audience::One("a".into()))));
        assert_eq!(aud(r#"{"aud":[]}"#), Ok(Some(Audience::Many(vec![]))));
        assert_eq!(
            aud(r#"{"aud":[ "a" , "b" ]}"#),
            Ok(Some(Audience::Many(vec!["a".into(), "b".into()])))
        );
        let wrong = Err(MalformedError::MemberType("aud").into());
        for json in [
            r#"{"aud":1}"#,
            r#"{"aud":null}"#,
            r#"{"aud":["a",1]}"#,
            r#"{"aud":["a",["b"]]}"#,
            r#"{"aud":{"a":1}}"#,
        ] {
            assert_eq!(aud(json), wrong, "{json}");
        }
        // Structure inside `aud` is still checked strictly.
        assert_eq!(
            aud(r#"{"aud":[{"k":1,"k":2}]}"#),
            Err(MalformedError::DuplicateMember(Part::Payload).into())
        );
        assert_eq!(
            aud(r#"{"aud":["a",]}"#),
            Err(MalformedError::Json(Part::Payload).into())
        );
    }

    #[test]
    fn serialization_refuses_registered_names_in_extra() {
        let mut c = Claims::default();
        c.extra.insert("exp".into(), Value::from(1));
        assert!(serde_json::to_string(&c).is_err());
    }

    fn assertion(now: u64) -> Claims {
        Claims {
            iss: Some("agent".into()),
            sub: Some("agent".into()),
            aud: Some(Audience::One("southgate".into())),
            exp: Some(now + 3600),
            iat: Some(now),
            nbf: Some(now),
            jti: Some("j".into()),
            extra: BTreeMap::new(),
        }
    }

    fn assertion_rules() -> Validation {
        Validation {
            audiences: vec!["southgate".into()],
            max_lifetime: Some(86_400),
            ..Validation::new(TokenType::ClientAssertion)
        }
    }

    #[test]
    fn time_rules_with_leeway() {
        let now = 1_700_000_000;
        let v = assertion_rules();
        let ok = assertion(now);
        assert_eq!(v.validate(None, &ok, now), Ok(()));
        let check = |c: Claims, at: u64, want: RejectedError| {
            assert_eq!(v.validate(Some("JWT"), &c, at), Err(want.into()));
        };
        // Expiry honours leeway: valid until exp + 60 (exclusive).
        assert_eq!(v.validate(None, &ok, now + 3600 + 59), Ok(()));
        check(ok.clone(), now + 3600 + 60, RejectedError::Expired);
        check(
            Claims {
                nbf: Some(now + 61),
                ..ok.clone()
            },
            now,
            RejectedError::NotYetValid,
        );
        check(
            Claims {
                iat: Some(now + 61),
                ..ok.clone()
            },
            now,
            RejectedError::IssuedInFuture,
        );
        check(
            Claims {
                exp: Some(now + 86_401),
                ..ok.clone()
            },
            now,
            RejectedError::LifetimeTooLong,
        );
        check(
            Claims {
                exp: None,
                ..ok.clone()
            },
            now,
            RejectedError::MissingClaim("exp"),
        );
        check(
            Claims {
                jti: None,
                ..ok.clone()
            },
            now,
            RejectedError::MissingClaim("jti"),
        );
        // exp far in the future without iat: lifetime measured from now.
        check(
            Claims {
                iat: None,
                exp: Some(now + 90_000),
                ..ok
            },
            now,
            RejectedError::LifetimeTooLong,
        );
    }

    #[test]
    fn issuer_and_audience_sets() {
        let now = 1_700_000_000;
        let v = Validation {
            issuers: vec!["https://latchkey".into()],
            audiences: vec!["southgate".into(), "admin".into()],
            ..Validation::new(TokenType::AccessToken)
        };
        let mut c = assertion(now);
        c.iss = Some("https://latchkey".into());
        c.aud = Some(Audience::Many(vec!["other".into(), "admin".into()]));
        assert_eq!(v.validate(Some("at+jwt"), &c, now), Ok(()));
        let mut wrong = c.clone();
        wrong.aud = Some(Audience::Many(vec!["other".into()]));
        assert_eq!(
            v.validate(Some("at+jwt"), &wrong, now),
            Err(RejectedError::WrongAudience.into())
        );
        wrong.aud = Some(Audience::Many(vec![]));
        assert_eq!(
            v.validate(Some("at+jwt"), &wrong, now),
            Err(RejectedError::WrongAudience.into())
        );
        let mut wrong = c.clone();
        wrong.iss = Some("https://latchkey.evil".into());
        assert_eq!(
            v.validate(Some("at+jwt"), &wrong, now),
            Err(RejectedError::WrongIssuer.into())
        );
    }

    #[test]
    fn token_types_never_substitute() {
        let now = 1_700_000_000;
        let c = assertion(now);
        let all = [
            TokenType::AccessToken,
            TokenType::OperatorAccessToken,
            TokenType::InitialAccessToken,
            TokenType::RegistrationAccessToken,
            TokenType::ClientAssertion,
        ];
        for presented in all {
            for expected in all {
                let v = Validation::new(expected);
                let result = v.validate(presented.header_typ(), &c, now);
                if presented == expected {
                    assert_eq!(result, Ok(()), "{presented:?}");
                } else {
                    assert_eq!(
                        result,
                        Err(RejectedError::WrongType.into()),
                        "{presented:?} as {expected:?}"
                    );
                }
            }
        }
        // typ spelling variants.
        assert!(TokenType::AccessToken.accepts_header(Some("application/AT+JWT")));
        assert!(TokenType::ClientAssertion.accepts_header(Some("jwt")));
        assert!(!TokenType::ClientAssertion.accepts_header(Some("at+jwt")));
        assert!(!TokenType::AccessToken.accepts_header(None));
        assert!(!TokenType::AccessToken.accepts_header(Some("JWT")));
        // An assertion must name itself: iss != sub is not an assertion.
        let mut other = c;
        other.sub = Some("someone-else".into());
        assert_eq!(
            Validation::new(TokenType::ClientAssertion).validate(None, &other, now),
            Err(RejectedError::WrongType.into())
        );
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[ -~]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_claims() -> impl Strategy<Value = Claims> {
        let date = proptest::option::of(0..=json::MAX_NUMERIC_DATE);
        let text = proptest::option::of("[ -~\u{e9}\u{1F600}]{0,16}");
        let aud = proptest::option::of(prop_oneof![
            "[a-z]{0,8}".prop_map(Audience::One),
            proptest::collection::vec("[a-z]{0,8}", 0..3).prop_map(Audience::Many),
        ]);
        let extra = proptest::collection::btree_map("x[a-z]{0,6}", arb_value(), 0..4);
        (
            text.clone(),
            text.clone(),
            aud,
            (date.clone(), date.clone(), date),
            text,
            extra,
        )
            .prop_map(|(iss, sub, aud, (exp, nbf, iat), jti, extra)| Claims {
                iss,
                sub,
                aud,
                exp,
                nbf,
                iat,
                jti,
                extra,
            })
    }

    proptest! {
        #[test]
        fn claims_round_trip(c in arb_claims()) {
            let mut buf = Vec::new();
            c.write_json(&mut buf).expect("serialize");
            prop_assert_eq!(Claims::from_json(&buf).expect("parse"), c);
        }

        #[test]
        fn claims_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Claims::from_json(&bytes);
        }
    }
}
