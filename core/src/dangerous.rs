//! Reading tokens without verifying them. Everything here skips the signature check.
//!
//! The token endpoint needs this once: a client assertion names its client in `iss`, and the
//! key to verify it with is found through that client. Use the result only to *choose a key*;
//! then verify with [`UnverifiedToken::verify`], which parses the claims again from the
//! authenticated bytes. Never make an authorization decision from these claims.

use std::borrow::Cow;

use crate::claims::{Claims, ClaimsRef};
use crate::error::Error;
use crate::jws::UnverifiedToken;

/// The claims of a token whose signature has NOT been checked (strict parsing still applies:
/// duplicates, NumericDates).
pub fn insecure_claims(token: &UnverifiedToken<'_>) -> Result<Claims, Error> {
    Claims::from_json(token.payload())
}

/// Just the (unverified) issuer, for key lookup. The whole claims set is still parsed
/// strictly, but only `iss` is copied out (no values are built for other members).
pub fn insecure_issuer(token: &UnverifiedToken<'_>) -> Result<Option<String>, Error> {
    Ok(ClaimsRef::parse(token.payload())?.iss.map(Cow::into_owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alg::Algorithm;
    use crate::claims::{TokenType, Validation};
    use crate::keys::SigningKey;

    #[test]
    fn reads_issuer_before_key_is_known_then_verifies() {
        let agent = SigningKey::hmac(Algorithm::HS256, &[5; 32]).expect("key");
        let payload =
            br#"{"iss":"agent-7","sub":"agent-7","aud":["southgate"],"exp":2000000000,"jti":"u"}"#;
        let mut t = format!(
            "{}.{}",
            crate::b64::encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            crate::b64::encode(payload)
        );
        let mut sig = String::new();
        agent.sign_into(t.as_bytes(), &mut sig).expect("sign");
        t = format!("{t}.{sig}");
        let parsed = UnverifiedToken::parse(&t).expect("parse");
        assert_eq!(insecure_issuer(&parsed), Ok(Some("agent-7".into())));
        let verified = parsed
            .verify(
                &agent.verifying_key(),
                &Validation::new(TokenType::ClientAssertion),
                1_999_999_999,
            )
            .expect("verify");
        assert_eq!(verified.claims().sub.as_deref(), Some("agent-7"));
        // A forged token still yields claims here, which is exactly why this is `dangerous`.
        let forged = format!("{}.AAAA", t.rsplit_once('.').expect("dot").0);
        let parsed = UnverifiedToken::parse(&forged).expect("parse");
        assert!(insecure_claims(&parsed).is_ok());
    }

    #[test]
    fn issuer_lookup_is_as_strict_as_full_parsing() {
        let key = SigningKey::hmac(Algorithm::HS256, &[5; 32]).expect("key");
        let token = |payload: &str| {
            let t = format!(
                "{}.{}",
                crate::b64::encode(br#"{"alg":"HS256"}"#),
                crate::b64::encode(payload.as_bytes())
            );
            let mut sig = String::new();
            key.sign_into(t.as_bytes(), &mut sig).expect("sign");
            format!("{t}.{sig}")
        };
        let issuer = |payload: &str| {
            let t = token(payload);
            let parsed = UnverifiedToken::parse(&t).expect("parse");
            let full = insecure_claims(&parsed).map(|c| c.iss);
            let quick = insecure_issuer(&parsed);
            assert_eq!(quick, full, "{payload}");
            quick
        };
        assert_eq!(issuer(r#"{"iss":"a\u0062c"}"#), Ok(Some("abc".into())));
        assert_eq!(issuer(r#"{"sub":"x","ten":{"k":[1]}}"#), Ok(None));
        let dup = Err(crate::MalformedError::DuplicateMember(crate::Part::Payload).into());
        assert_eq!(issuer(r#"{"iss":"a","x":{"k":1,"k":2}}"#), dup);
        assert_eq!(issuer(r#"{"iss":"a","\u0069ss":"b"}"#), dup);
        assert_eq!(
            issuer(r#"{"iss":"a","exp":1.5}"#),
            Err(crate::MalformedError::NumericDate("exp").into())
        );
    }
}
