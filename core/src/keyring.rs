//! The key ring: active signing key per algorithm plus older verifying keys by `kid`,
//! published as an immutable [`KeySnapshot`] behind an `ArcSwap`.
//!
//! Readers (`mint`, `verify`) load the current snapshot without locks and keep using it for
//! the whole operation, so a rotation mid-verification can never mix two key sets. Writers
//! build a new snapshot and swap it in with `rcu` (compare-and-swap retry), so concurrent
//! rotations do not lose each other's updates. Rotation is rare; verification is the hot path.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::alg::Algorithm;
use crate::claims::{Claims, TokenType};
use crate::error::{Error, KeyError, RejectedError};
use crate::jwk::{Jwk, JwkSet};
use crate::keys::{SigningKey, VerifyingKey};
use crate::mint::Minter;

/// One immutable generation of keys.
#[derive(Debug, Default)]
pub struct KeySnapshot {
    active: [Option<Arc<Minter>>; Algorithm::ALL.len()],
    verifying: HashMap<String, Arc<VerifyingKey>>,
}

impl KeySnapshot {
    /// The active minter for `alg`.
    pub fn minter(&self, alg: Algorithm) -> Option<&Arc<Minter>> {
        self.active[alg.index()].as_ref()
    }

    /// The verifying key with this `kid` (active or retired-but-not-removed).
    pub fn key(&self, kid: &str) -> Option<&Arc<VerifyingKey>> {
        self.verifying.get(kid)
    }

    /// Every verifying key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &Arc<VerifyingKey>> {
        self.verifying.values()
    }

    /// The public JWK Set (secret HMAC keys are never included), sorted by kid.
    pub fn public_jwks(&self) -> JwkSet {
        let mut keys: Vec<Jwk> = self
            .verifying
            .values()
            .filter_map(|k| Jwk::from_public_key(k).ok())
            .collect();
        keys.sort_by(|a, b| a.kid.cmp(&b.kid));
        JwkSet { keys }
    }

    fn with_key(&self, kid: &str, key: Arc<VerifyingKey>) -> Result<KeySnapshot, Error> {
        if let Some(existing) = self.verifying.get(kid)
            && **existing != *key
        {
            // Two different keys under one kid would make lookup ambiguous.
            return Err(KeyError::DuplicateKid.into());
        }
        let mut verifying = self.verifying.clone();
        verifying.insert(kid.to_owned(), key);
        Ok(KeySnapshot {
            active: self.active.clone(),
            verifying,
        })
    }
}

/// Shared, lock-free key ring.
#[derive(Debug, Default)]
pub struct KeyRing {
    current: ArcSwap<KeySnapshot>,
}

impl KeyRing {
    /// An empty ring.
    pub fn new() -> KeyRing {
        KeyRing::default()
    }

    /// The current snapshot (lock-free; hold it for the duration of one operation).
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<KeySnapshot>> {
        self.current.load()
    }

    /// Makes `key` the active signing key for its algorithm. The previous active key stays
    /// available for verification (by kid) until [`KeyRing::retire`]d.
    pub fn rotate(&self, key: SigningKey) -> Result<(), Error> {
        let minter = Arc::new(Minter::new(key)?);
        let public = Arc::new(minter.key().verifying_key());
        let kid = minter.key().kid().to_owned();
        let alg = minter.key().algorithm();
        self.update(|snap| {
            let mut next = snap.with_key(&kid, public.clone())?;
            next.active[alg.index()] = Some(minter.clone());
            Ok(next)
        })
    }

    /// Adds a key that verifies but never signs (e.g. a predecessor restored from storage).
    pub fn add_verifying_key(&self, key: VerifyingKey) -> Result<(), Error> {
        let kid = key.kid().ok_or(KeyError::Jwk("kid"))?.to_owned();
        let key = Arc::new(key);
        self.update(|snap| snap.with_key(&kid, key.clone()))
    }

    /// Removes a non-active key; tokens signed by it stop verifying. Returns whether it was
    /// present. The active signing key cannot be retired (rotate first).
    pub fn retire(&self, kid: &str) -> Result<bool, Error> {
        let mut removed = false;
        self.update(|snap| {
            if snap.active.iter().flatten().any(|m| m.key().kid() == kid) {
                return Err(KeyError::NotPossible.into());
            }
            let mut verifying = snap.verifying.clone();
            removed = verifying.remove(kid).is_some();
            Ok(KeySnapshot {
                active: snap.active.clone(),
                verifying,
            })
        })?;
        Ok(removed)
    }

    /// Mints with the active key for `alg`.
    pub fn mint(
        &self,
        alg: Algorithm,
        token_type: TokenType,
        claims: &Claims,
    ) -> Result<String, Error> {
        let snap = self.current.load();
        let minter = snap.minter(alg).ok_or(RejectedError::UnknownKey)?;
        minter.mint(token_type, claims)
    }

    fn update(
        &self,
        mut f: impl FnMut(&KeySnapshot) -> Result<KeySnapshot, Error>,
    ) -> Result<(), Error> {
        let mut result = Ok(());
        self.current.rcu(|snap| match f(snap) {
            Ok(next) => {
                result = Ok(());
                Arc::new(next)
            }
            Err(e) => {
                result = Err(e);
                Arc::clone(snap)
            }
        });
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::{Audience, Validation};
    use crate::jws::verify;

    fn claims() -> Claims {
        Claims {
            iss: Some("i".into()),
            sub: Some("s".into()),
            aud: Some(Audience::One("a".into())),
            exp: Some(2_000_000_000),
            iat: Some(1_999_999_000),
            jti: Some("j".into()),
            ..Claims::default()
        }
    }

    fn check(ring: &KeyRing, token: &str) -> Result<(), Error> {
        let parsed = crate::jws::UnverifiedToken::parse(token)?;
        let kid = parsed.header().kid().ok_or(RejectedError::UnknownKey)?;
        let key = ring
            .snapshot()
            .key(kid)
            .cloned()
            .ok_or(RejectedError::UnknownKey)?;
        verify(
            token,
            &key,
            &Validation::new(TokenType::AccessToken),
            1_999_999_500,
        )
        .map(|_| ())
    }

    #[test]
    fn rotate_keeps_old_keys_until_retired() {
        let ring = KeyRing::new();
        assert!(
            ring.mint(Algorithm::EdDSA, TokenType::AccessToken, &claims())
                .is_err()
        );
        let first = SigningKey::generate(Algorithm::EdDSA).expect("key");
        let first_kid = first.kid().to_owned();
        ring.rotate(first).expect("rotate");
        let old = ring
            .mint(Algorithm::EdDSA, TokenType::AccessToken, &claims())
            .expect("mint");
        let held = ring.snapshot();
        ring.rotate(SigningKey::generate(Algorithm::EdDSA).expect("key"))
            .expect("rotate");
        let new = ring
            .mint(Algorithm::EdDSA, TokenType::AccessToken, &claims())
            .expect("mint");
        assert_ne!(
            crate::jws::UnverifiedToken::parse(&new)
                .expect("p")
                .header()
                .kid(),
            Some(first_kid.as_str())
        );
        assert_eq!(check(&ring, &old), Ok(()));
        assert_eq!(check(&ring, &new), Ok(()));
        // The active key cannot be retired; the old one can.
        let new_kid = ring
            .snapshot()
            .minter(Algorithm::EdDSA)
            .expect("m")
            .key()
            .kid()
            .to_owned();
        assert!(ring.retire(&new_kid).is_err());
        assert_eq!(ring.retire(&first_kid), Ok(true));
        assert_eq!(ring.retire(&first_kid), Ok(false));
        assert_eq!(check(&ring, &old), Err(RejectedError::UnknownKey.into()));
        assert_eq!(check(&ring, &new), Ok(()));
        // A snapshot taken earlier is immutable.
        assert!(held.key(&first_kid).is_some());
    }

    #[test]
    fn kid_collisions_refused() {
        let ring = KeyRing::new();
        let a = SigningKey::generate(Algorithm::ES256)
            .expect("a")
            .with_kid("same");
        let b = SigningKey::generate(Algorithm::ES256)
            .expect("b")
            .with_kid("same");
        ring.rotate(a).expect("rotate");
        assert_eq!(ring.rotate(b), Err(KeyError::DuplicateKid.into()));
        let vk = SigningKey::generate(Algorithm::EdDSA)
            .expect("c")
            .verifying_key()
            .with_kid("same");
        assert_eq!(
            ring.add_verifying_key(vk),
            Err(KeyError::DuplicateKid.into())
        );
    }

    #[test]
    fn public_jwks_excludes_secrets() {
        let ring = KeyRing::new();
        ring.rotate(SigningKey::generate(Algorithm::EdDSA).expect("ed"))
            .expect("rotate");
        ring.rotate(SigningKey::generate(Algorithm::HS256).expect("hs"))
            .expect("rotate");
        let jwks = ring.snapshot().public_jwks();
        assert_eq!(jwks.keys.len(), 1);
        assert_eq!(jwks.keys[0].kty, "OKP");
        assert_eq!(ring.snapshot().keys().count(), 2);
    }

    #[test]
    fn concurrent_rotations_are_not_lost() {
        let ring = Arc::new(KeyRing::new());
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let ring = Arc::clone(&ring);
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        ring.rotate(SigningKey::generate(Algorithm::EdDSA).expect("k"))
                            .expect("rotate");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("join");
        }
        assert_eq!(ring.snapshot().keys().count(), 20);
    }
}
