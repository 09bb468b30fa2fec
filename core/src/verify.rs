//! The verification pipeline for tokens Latchkey minted: parse → key by `kid` → signature
//! with the key's algorithm → claims validation → revocation. Everything on this path is
//! lock-free: the key ring is an `ArcSwap` snapshot and the revocation set is read the same way.

use std::sync::Arc;

use crate::alg::Algorithm;
use crate::batch::{self, BatchItem};
use crate::claims::Validation;
use crate::error::{Error, RejectedError};
use crate::jws::{UnverifiedToken, VerifiedToken};
use crate::keyring::{KeyRing, KeySnapshot};
use crate::revocation::RevocationSet;

/// What the verifier asks about revocation. [`RevocationSet`] implements it; the trait lets
/// tests and callers that have no revocations plug in something else, and keeps the call
/// static (the verifier is generic, so it inlines).
pub trait Revocations {
    /// True if the token with this `jti` (empty if the token has none) signed by `kid` is
    /// revoked at `now`.
    fn is_revoked(&self, jti: &str, kid: Option<&str>, now: u64) -> bool;
}

impl Revocations for RevocationSet {
    #[inline]
    fn is_revoked(&self, jti: &str, kid: Option<&str>, now: u64) -> bool {
        RevocationSet::is_revoked(self, jti, kid, now)
    }
}

/// Nothing is revoked (for token types that cannot be revoked, and tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRevocations;

impl Revocations for NoRevocations {
    #[inline]
    fn is_revoked(&self, _: &str, _: Option<&str>, _: u64) -> bool {
        false
    }
}

// Transient (one per token, moved once), so the size difference costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
enum Route<'t, 'k> {
    Batch(
        UnverifiedToken<'t>,
        [u8; 64],
        &'k ed25519_dalek::VerifyingKey,
    ),
    Done(Result<VerifiedToken, Error>),
}

/// Verifies tokens signed by keys in a [`KeyRing`] against one [`Validation`].
#[derive(Debug)]
pub struct Verifier<R = RevocationSet> {
    keys: Arc<KeyRing>,
    revocations: Arc<R>,
    validation: Validation,
}

impl<R: Revocations> Verifier<R> {
    /// A verifier for one token type (set in `validation`).
    pub fn new(keys: Arc<KeyRing>, revocations: Arc<R>, validation: Validation) -> Verifier<R> {
        Verifier {
            keys,
            revocations,
            validation,
        }
    }

    /// The rules applied.
    pub fn validation(&self) -> &Validation {
        &self.validation
    }

    /// Verifies one token at `now` (unix seconds). The token must name a `kid` in the ring.
    pub fn verify(&self, token: &str, now: u64) -> Result<VerifiedToken, Error> {
        let parsed = UnverifiedToken::parse(token)?;
        let snapshot = self.keys.snapshot();
        let kid = parsed.header().kid().ok_or(RejectedError::UnknownKey)?;
        let key = snapshot.key(kid).ok_or(RejectedError::UnknownKey)?;
        parsed.check_signature(key)?;
        self.finish(parsed, now)
    }

    /// Verifies many tokens in one call. EdDSA tokens go through batch verification (see
    /// [`crate::batch`] for exactly what that guarantees); others are verified one by one.
    /// `result[i]` belongs to `tokens[i]`.
    pub fn verify_batch(&self, tokens: &[&str], now: u64) -> Vec<Result<VerifiedToken, Error>> {
        let snapshot = self.keys.snapshot();
        let mut results: Vec<Option<Result<VerifiedToken, Error>>> =
            Vec::with_capacity(tokens.len());
        let mut pending = Vec::new();
        for (i, token) in tokens.iter().enumerate() {
            match self.route(token, &snapshot, now) {
                Route::Batch(parsed, sig, key) => {
                    results.push(None);
                    pending.push((i, parsed, sig, key));
                }
                Route::Done(r) => results.push(Some(r)),
            }
        }
        let items: Vec<BatchItem<'_>> = pending
            .iter()
            .map(|(_, parsed, sig, key)| BatchItem {
                message: parsed.signing_input().as_bytes(),
                signature: sig,
                key,
            })
            .collect();
        let ok = batch::verify_batch(&items);
        drop(items);
        for ((i, parsed, _, _), good) in pending.into_iter().zip(ok) {
            results[i] = Some(if good {
                self.finish(parsed, now)
            } else {
                Err(RejectedError::BadSignature.into())
            });
        }
        // Every slot was filled above; a gap would be a bug, reported as a rejection.
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(RejectedError::BadSignature.into())))
            .collect()
    }

    /// Parses and looks up one token of a batch: EdDSA tokens are queued for the batch
    /// equation, everything else is finished on the single path.
    fn route<'t, 'k>(&self, token: &'t str, snapshot: &'k KeySnapshot, now: u64) -> Route<'t, 'k> {
        let parsed = match UnverifiedToken::parse(token) {
            Ok(p) => p,
            Err(e) => return Route::Done(Err(e)),
        };
        let Some(key) = parsed.header().kid().and_then(|kid| snapshot.key(kid)) else {
            return Route::Done(Err(RejectedError::UnknownKey.into()));
        };
        if parsed.header().alg() == Algorithm::EdDSA
            && key.algorithms().contains(Algorithm::EdDSA)
            && let Some(ed) = key.ed25519_key()
            && let Ok(sig) = <[u8; 64]>::try_from(parsed.signature())
        {
            return Route::Batch(parsed, sig, ed);
        }
        Route::Done(
            parsed
                .check_signature(key)
                .and_then(|()| self.finish(parsed, now)),
        )
    }

    /// Claims, type and revocation, after the signature is known good.
    fn finish(&self, parsed: UnverifiedToken<'_>, now: u64) -> Result<VerifiedToken, Error> {
        let verified = parsed.into_validated(&self.validation, now)?;
        let jti = verified.claims().jti.as_deref().unwrap_or("");
        if self
            .revocations
            .is_revoked(jti, verified.header().kid(), now)
        {
            return Err(RejectedError::Revoked.into());
        }
        Ok(verified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::{Audience, Claims, TokenType};
    use crate::keys::SigningKey;

    const NOW: u64 = 1_999_999_500;

    fn claims(jti: &str) -> Claims {
        Claims {
            iss: Some("https://latchkey".into()),
            sub: Some("agent".into()),
            aud: Some(Audience::One("southgate".into())),
            exp: Some(2_000_000_000),
            iat: Some(1_999_999_000),
            jti: Some(jti.into()),
            ..Claims::default()
        }
    }

    fn setup() -> (Arc<KeyRing>, Arc<RevocationSet>, Verifier) {
        let ring = Arc::new(KeyRing::new());
        ring.rotate(SigningKey::generate(Algorithm::EdDSA).expect("ed"))
            .expect("rotate");
        ring.rotate(SigningKey::generate(Algorithm::ES256).expect("es"))
            .expect("rotate");
        let revoked = Arc::new(RevocationSet::new());
        let validation = Validation {
            issuers: vec!["https://latchkey".into()],
            audiences: vec!["southgate".into()],
            ..Validation::new(TokenType::AccessToken)
        };
        let v = Verifier::new(Arc::clone(&ring), Arc::clone(&revoked), validation);
        (ring, revoked, v)
    }

    #[test]
    fn pipeline_accepts_and_revokes() {
        let (ring, revoked, v) = setup();
        let t = ring
            .mint(Algorithm::EdDSA, TokenType::AccessToken, &claims("j1"))
            .expect("mint");
        assert_eq!(
            v.verify(&t, NOW).expect("ok").claims().jti.as_deref(),
            Some("j1")
        );
        revoked.revoke_jti("j1", 2_000_000_000);
        assert_eq!(v.verify(&t, NOW), Err(RejectedError::Revoked.into()));
    }

    #[test]
    fn kid_required_and_must_be_known() {
        let (ring, _, v) = setup();
        let t = ring
            .mint(Algorithm::EdDSA, TokenType::AccessToken, &claims("j"))
            .expect("mint");
        // Same signature, header without kid.
        let rest = t.split_once('.').expect("dot").1;
        let no_kid = format!(
            "{}.{rest}",
            crate::b64::encode(br#"{"alg":"EdDSA","typ":"at+jwt"}"#)
        );
        assert_eq!(
            v.verify(&no_kid, NOW),
            Err(RejectedError::UnknownKey.into())
        );
        let other = format!(
            "{}.{rest}",
            crate::b64::encode(br#"{"alg":"EdDSA","typ":"at+jwt","kid":"nope"}"#)
        );
        assert_eq!(v.verify(&other, NOW), Err(RejectedError::UnknownKey.into()));
    }

    #[test]
    fn other_token_types_refused() {
        let (ring, _, v) = setup();
        for t in [
            TokenType::InitialAccessToken,
            TokenType::RegistrationAccessToken,
            TokenType::OperatorAccessToken,
        ] {
            let token = ring.mint(Algorithm::ES256, t, &claims("j")).expect("mint");
            assert_eq!(v.verify(&token, NOW), Err(RejectedError::WrongType.into()));
        }
    }

    #[test]
    fn batch_matches_single_verification() {
        let (ring, revoked, v) = setup();
        let mut tokens: Vec<String> = (0..70)
            .map(|i| {
                ring.mint(
                    Algorithm::EdDSA,
                    TokenType::AccessToken,
                    &claims(&format!("j{i}")),
                )
                .expect("mint")
            })
            .collect();
        // An ES256 token, a corrupted signature, garbage, a revoked one, a wrong-type one.
        tokens[1] = ring
            .mint(Algorithm::ES256, TokenType::AccessToken, &claims("es"))
            .expect("mint");
        let mut bad = tokens[5].clone().into_bytes();
        let last = bad.len() - 10;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        tokens[5] = String::from_utf8(bad).expect("utf8");
        tokens[9] = "garbage".into();
        revoked.revoke_jti("j33", 2_000_000_000);
        tokens[50] = ring
            .mint(
                Algorithm::EdDSA,
                TokenType::InitialAccessToken,
                &claims("x"),
            )
            .expect("mint");
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let batch = v.verify_batch(&refs, NOW);
        assert_eq!(batch.len(), refs.len());
        for (i, (t, r)) in refs.iter().zip(&batch).enumerate() {
            assert_eq!(r, &v.verify(t, NOW), "token {i}");
        }
        assert!(batch[0].is_ok() && batch[1].is_ok());
        assert_eq!(batch[5], Err(RejectedError::BadSignature.into()));
        assert!(batch[9].as_ref().is_err_and(Error::is_malformed));
        assert_eq!(batch[33], Err(RejectedError::Revoked.into()));
        assert_eq!(batch[50], Err(RejectedError::WrongType.into()));
        assert!(v.verify_batch(&[], NOW).is_empty());
    }
}
