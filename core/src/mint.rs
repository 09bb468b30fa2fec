//! Minting: headers encoded once per key, claims serialized into a reused per-thread buffer,
//! one output allocation per token.

use std::cell::RefCell;
use std::fmt;

use crate::b64;
use crate::claims::{Claims, TokenType};
use crate::error::{Error, KeyError};
use crate::keys::SigningKey;

thread_local! {
    /// Claims JSON scratch space; per thread, so minting takes no lock.
    static PAYLOAD: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

/// A signing key with its base64url headers, one per [`TokenType::MINTED`] type.
pub struct Minter {
    key: SigningKey,
    headers: [String; TokenType::MINTED.len()],
}

impl Minter {
    /// Pre-encodes `{"alg","kid","typ"}` for every type Latchkey mints. The key must have a
    /// non-empty kid: verifiers look keys up by it.
    pub fn new(key: SigningKey) -> Result<Minter, Error> {
        if key.kid().is_empty() {
            return Err(KeyError::Jwk("kid").into());
        }
        let headers = TokenType::MINTED.map(|t| {
            let json = serde_json::json!({
                "alg": key.algorithm().as_str(),
                "kid": key.kid(),
                "typ": t.header_typ(),
            });
            b64::encode(json.to_string().as_bytes())
        });
        Ok(Minter { key, headers })
    }

    /// The signing key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// The pre-encoded header for `token_type` (`None` for client assertions, which Latchkey
    /// never mints).
    pub fn header_b64(&self, token_type: TokenType) -> Option<&str> {
        token_type
            .minted_index()
            .and_then(|i| self.headers.get(i))
            .map(String::as_str)
    }

    /// Mints a compact JWS of `token_type` over `claims`.
    pub fn mint(&self, token_type: TokenType, claims: &Claims) -> Result<String, Error> {
        PAYLOAD.with(|buf| {
            // A re-entrant call (impossible today: serialization calls no user code) would
            // find the buffer borrowed; fall back to a fresh one instead of panicking.
            match buf.try_borrow_mut() {
                Ok(mut buf) => {
                    claims.write_json(&mut buf)?;
                    self.mint_payload(token_type, &buf)
                }
                Err(_) => {
                    let mut fresh = Vec::new();
                    claims.write_json(&mut fresh)?;
                    self.mint_payload(token_type, &fresh)
                }
            }
        })
    }

    /// Mints over an already-serialized payload (the caller vouches that it is a JSON claims
    /// object).
    pub fn mint_payload(&self, token_type: TokenType, payload: &[u8]) -> Result<String, Error> {
        let header = self
            .header_b64(token_type)
            .ok_or(KeyError::AlgorithmNotAllowed)?;
        let sig_len = self.key.signature_len();
        let mut out = String::with_capacity(
            header.len() + 2 + b64::encoded_len(payload.len()) + b64::encoded_len(sig_len),
        );
        out.push_str(header);
        out.push('.');
        b64::encode_into(payload, &mut out);
        let sig = self.key.signature(out.as_bytes())?;
        out.push('.');
        b64::encode_into(sig.as_ref(), &mut out);
        Ok(out)
    }
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minter").field("key", &self.key).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alg::Algorithm;
    use crate::claims::{Audience, Validation};
    use crate::jws::{UnverifiedToken, verify};

    fn claims() -> Claims {
        Claims {
            iss: Some("https://latchkey".into()),
            sub: Some("agent-1".into()),
            aud: Some(Audience::One("southgate".into())),
            exp: Some(2_000_000_000),
            iat: Some(1_999_999_000),
            jti: Some("abc".into()),
            ..Claims::default()
        }
    }

    #[test]
    fn minted_tokens_verify_and_carry_type_and_kid() {
        for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::HS512] {
            let minter = Minter::new(SigningKey::generate(alg).expect("key")).expect("minter");
            for t in TokenType::MINTED {
                let token = minter.mint(t, &claims()).expect("mint");
                let parsed = UnverifiedToken::parse(&token).expect("parse");
                assert_eq!(parsed.header().alg(), alg);
                assert_eq!(parsed.header().kid(), Some(minter.key().kid()));
                assert_eq!(parsed.header().typ(), t.header_typ());
                let v = verify(
                    &token,
                    &minter.key().verifying_key(),
                    &Validation::new(t),
                    1_999_999_500,
                )
                .expect("verify");
                assert_eq!(v.claims(), &claims());
            }
            assert!(minter.mint(TokenType::ClientAssertion, &claims()).is_err());
        }
    }

    #[test]
    fn kid_required() {
        let key = SigningKey::hmac(Algorithm::HS256, &[1; 32]).expect("key");
        assert!(Minter::new(key).is_err());
    }

    #[test]
    fn kid_is_json_escaped_in_header() {
        let key = SigningKey::hmac(Algorithm::HS256, &[1; 32])
            .expect("key")
            .with_kid("a\"b");
        let minter = Minter::new(key).expect("minter");
        let token = minter
            .mint(TokenType::AccessToken, &claims())
            .expect("mint");
        let parsed = UnverifiedToken::parse(&token).expect("parse");
        assert_eq!(parsed.header().kid(), Some("a\"b"));
    }
}
