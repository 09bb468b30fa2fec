//! Client assertions (RFC 7523) minted with `latchkey-core`, shaped like the MindSphere SDKs'
//! (see `protocol-notes.md`): `iss` = `sub` = client id, `aud`, `iat`, `nbf`, `exp`, a UUID
//! `jti`, `schemas` and `ten`.
//!
//! HMAC assertions cost about a microsecond and are minted per request. An RSA-3072 signature
//! costs milliseconds, which would make the client the bottleneck, so RS256 assertions are
//! minted into a pool before the timed phase ([`premint`]), on every core, each with its own
//! `jti` and an `exp` that outlives the run.

use std::sync::Arc;

use latchkey_core::claims::{Audience, Claims};
use latchkey_core::jti::JtiGenerator;
use latchkey_core::{Algorithm, SigningKey, b64};

use crate::error::Error;

/// MindSphere's `schemas` claim value.
pub const MINDSPHERE_SCHEMA: &str = "urn:siemens:mindsphere:v1";

/// What every assertion says besides the client id and times.
#[derive(Debug, Clone)]
pub struct AssertionSpec {
    /// `aud` values (one value is written as a string, several as an array).
    pub audience: Vec<String>,
    /// `ten`, if any.
    pub tenant: Option<String>,
    /// `exp - iat` in seconds.
    pub lifetime: u64,
}

/// Mints assertions; one per worker thread (it owns a scratch buffer), sharing the `jti`
/// generator.
#[derive(Debug)]
pub struct AssertionMinter {
    spec: AssertionSpec,
    jti: Arc<JtiGenerator>,
    payload: Vec<u8>,
}

impl AssertionMinter {
    pub fn new(spec: AssertionSpec, jti: Arc<JtiGenerator>) -> AssertionMinter {
        AssertionMinter {
            spec,
            jti,
            payload: Vec::with_capacity(512),
        }
    }

    /// An assertion for `client_id` signed by `key`, issued at `now` (unix seconds).
    /// `header_b64` comes from [`header_b64`] for the same key.
    pub fn mint(
        &mut self,
        client_id: &str,
        key: &SigningKey,
        header_b64: &str,
        now: u64,
    ) -> Result<String, Error> {
        let mut claims = Claims {
            iss: Some(client_id.to_owned()),
            sub: Some(client_id.to_owned()),
            aud: Some(match self.spec.audience.as_slice() {
                [one] => Audience::One(one.clone()),
                many => Audience::Many(many.to_vec()),
            }),
            exp: Some(now + self.spec.lifetime),
            nbf: Some(now),
            iat: Some(now),
            jti: Some(self.jti.next_uuid()),
            ..Claims::default()
        };
        claims
            .extra
            .insert("schemas".into(), vec![MINDSPHERE_SCHEMA].into());
        if let Some(ten) = &self.spec.tenant {
            claims.extra.insert("ten".into(), ten.clone().into());
        }
        claims.write_json(&mut self.payload)?;
        let mut out = String::with_capacity(
            header_b64.len() + 2 + b64::encoded_len(self.payload.len()) + 520,
        );
        out.push_str(header_b64);
        out.push('.');
        b64::encode_into(&self.payload, &mut out);
        let signing_input_len = out.len();
        out.push('.');
        let mut sig = String::with_capacity(b64::encoded_len(key.signature_len()));
        key.sign_into(&out.as_bytes()[..signing_input_len], &mut sig)?;
        out.push_str(&sig);
        Ok(out)
    }
}

/// The base64url JOSE header for assertions signed by `key`: `typ: JWT` as the SDKs write,
/// and the `kid` when the key has one.
pub fn header_b64(key: &SigningKey) -> String {
    let mut header = serde_json::json!({ "alg": key.algorithm().as_str(), "typ": "JWT" });
    if !key.kid().is_empty() {
        header["kid"] = key.kid().into();
    }
    b64::encode(header.to_string().as_bytes())
}

/// An HS256 key over a shared secret's bytes (the SDKs use the secret string as the key).
pub fn hmac_key(secret: &str) -> Result<SigningKey, Error> {
    Ok(SigningKey::hmac(Algorithm::HS256, secret.as_bytes())?)
}

/// One RSA agent's identity for pre-minting.
#[derive(Debug)]
pub struct RsaSigner<'a> {
    pub client_id: &'a str,
    pub key: &'a SigningKey,
}

/// Mints `count` RS assertions spread round-robin over `signers`, on `threads` threads.
pub fn premint(
    signers: &[RsaSigner<'_>],
    count: usize,
    threads: usize,
    spec: &AssertionSpec,
    jti: &Arc<JtiGenerator>,
    now: u64,
) -> Result<Vec<String>, Error> {
    if signers.is_empty() || count == 0 {
        return Ok(Vec::new());
    }
    let headers: Vec<String> = signers.iter().map(|s| header_b64(s.key)).collect();
    let threads = threads.clamp(1, count);
    let results: Vec<Result<Vec<String>, Error>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let headers = &headers;
                scope.spawn(move || {
                    let mut minter = AssertionMinter::new(spec.clone(), Arc::clone(jti));
                    (t..count)
                        .step_by(threads)
                        .map(|i| {
                            let s = &signers[i % signers.len()];
                            minter.mint(s.client_id, s.key, &headers[i % signers.len()], now)
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Protocol("minting thread panicked".into())))
            })
            .collect()
    });
    let mut all = Vec::with_capacity(count);
    for r in results {
        all.extend(r?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_core::claims::{TokenType, Validation};
    use latchkey_core::jws::{UnverifiedToken, verify};

    fn spec(aud: &[&str]) -> AssertionSpec {
        AssertionSpec {
            audience: aud.iter().map(|s| s.to_string()).collect(),
            tenant: Some("main".into()),
            lifetime: 300,
        }
    }

    fn validation() -> Validation {
        Validation {
            audiences: vec!["southgate".into()],
            ..Validation::new(TokenType::ClientAssertion)
        }
    }

    #[test]
    fn hs256_assertions_verify_as_client_assertions() {
        let secret = "x".repeat(43);
        let key = hmac_key(&secret).unwrap();
        let header = header_b64(&key);
        let jti = Arc::new(JtiGenerator::random().unwrap());
        let mut m = AssertionMinter::new(spec(&["southgate"]), jti);
        let now = 1_800_000_000;
        let a = m.mint("agent-1", &key, &header, now).unwrap();
        let b = m.mint("agent-1", &key, &header, now).unwrap();
        let v = verify(&a, &key.verifying_key(), &validation(), now + 1).unwrap();
        let c = v.claims();
        assert_eq!(c.iss.as_deref(), Some("agent-1"));
        assert_eq!(c.sub.as_deref(), Some("agent-1"));
        assert_eq!(c.aud, Some(Audience::One("southgate".into())));
        assert_eq!(
            (c.iat, c.nbf, c.exp),
            (Some(now), Some(now), Some(now + 300))
        );
        assert_eq!(c.extra_str("ten"), Some("main"));
        assert_eq!(c.extra["schemas"], serde_json::json!([MINDSPHERE_SCHEMA]));
        assert_eq!(c.jti.as_ref().map(String::len), Some(36), "UUID-shaped jti");
        let other = UnverifiedToken::parse(&b).unwrap();
        assert_eq!(other.header().typ(), Some("JWT"));
        let jb = verify(&b, &key.verifying_key(), &validation(), now).unwrap();
        assert_ne!(c.jti, jb.claims().jti, "every assertion has its own jti");
        // Another secret does not verify it.
        let wrong = hmac_key(&"y".repeat(43)).unwrap();
        assert!(verify(&a, &wrong.verifying_key(), &validation(), now).is_err());
    }

    #[test]
    fn several_audiences_are_an_array() {
        let key = hmac_key(&"s".repeat(40)).unwrap();
        let jti = Arc::new(JtiGenerator::random().unwrap());
        let mut m = AssertionMinter::new(spec(&["southgate", "https://h/t"]), jti);
        let a = m.mint("c", &key, &header_b64(&key), 1_800_000_000).unwrap();
        let v = verify(&a, &key.verifying_key(), &validation(), 1_800_000_000).unwrap();
        assert_eq!(
            v.claims().aud,
            Some(Audience::Many(vec![
                "southgate".into(),
                "https://h/t".into()
            ]))
        );
    }

    #[test]
    fn rs256_pool_has_distinct_valid_assertions() {
        let key = SigningKey::generate(Algorithm::RS256).unwrap();
        let signers = [
            RsaSigner {
                client_id: "rsa-a",
                key: &key,
            },
            RsaSigner {
                client_id: "rsa-b",
                key: &key,
            },
        ];
        let jti = Arc::new(JtiGenerator::random().unwrap());
        let now = 1_800_000_000;
        let pool = premint(&signers, 7, 3, &spec(&["southgate"]), &jti, now).unwrap();
        assert_eq!(pool.len(), 7);
        let mut jtis = std::collections::BTreeSet::new();
        let mut subs = std::collections::BTreeSet::new();
        for a in &pool {
            let parsed = UnverifiedToken::parse(a).unwrap();
            assert_eq!(parsed.header().kid(), Some(key.kid()));
            let v = verify(a, &key.verifying_key(), &validation(), now).unwrap();
            jtis.insert(v.claims().jti.clone().unwrap());
            subs.insert(v.claims().sub.clone().unwrap());
        }
        assert_eq!(jtis.len(), 7);
        assert_eq!(subs.len(), 2, "round-robin over the signers");
        assert!(
            premint(&[], 5, 2, &spec(&["a"]), &jti, now)
                .unwrap()
                .is_empty()
        );
    }
}
