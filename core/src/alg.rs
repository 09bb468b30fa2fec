//! JWS algorithms Latchkey knows, and sets of them.
//!
//! `none` is not a variant: it cannot be represented, so it cannot be accepted.

use std::fmt;

use crate::error::RejectedError;

/// A JWS `alg` value we support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// Ed25519 (RFC 8037).
    EdDSA,
    /// ECDSA P-256 with SHA-256, fixed-size (r‖s) signature.
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// HMAC with SHA-256.
    HS256,
    /// HMAC with SHA-384.
    HS384,
    /// HMAC with SHA-512.
    HS512,
}

impl Algorithm {
    /// Every algorithm, in a fixed order (the order of [`Algorithm::index`]).
    pub const ALL: [Algorithm; 8] = [
        Algorithm::EdDSA,
        Algorithm::ES256,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
    ];

    /// The JWS name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::EdDSA => "EdDSA",
            Algorithm::ES256 => "ES256",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
        }
    }

    /// Parses a JWS `alg` name (exact, case-sensitive as RFC 7515 requires).
    pub fn from_name(name: &str) -> Result<Algorithm, RejectedError> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == name)
            .ok_or(RejectedError::UnsupportedAlgorithm)
    }

    /// Position in [`Algorithm::ALL`]; used to index per-algorithm tables.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// True for the RSA PKCS#1 v1.5 family.
    pub const fn is_rsa(self) -> bool {
        matches!(self, Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512)
    }

    /// True for the HMAC family.
    pub const fn is_hmac(self) -> bool {
        matches!(self, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of algorithms a key may be used with. It comes from the key (and its registration),
/// never from a token header.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AlgorithmSet(u8);

impl AlgorithmSet {
    /// The empty set.
    pub const EMPTY: AlgorithmSet = AlgorithmSet(0);
    /// RS256, RS384 and RS512: what an agent's registered RSA key may sign with.
    pub const RSA_PKCS1: AlgorithmSet = AlgorithmSet::one(Algorithm::RS256)
        .with(Algorithm::RS384)
        .with(Algorithm::RS512);

    /// A set holding exactly `alg`.
    pub const fn one(alg: Algorithm) -> AlgorithmSet {
        AlgorithmSet(1 << alg as u8)
    }

    /// This set plus `alg`.
    pub const fn with(self, alg: Algorithm) -> AlgorithmSet {
        AlgorithmSet(self.0 | 1 << alg as u8)
    }

    /// Membership test.
    pub const fn contains(self, alg: Algorithm) -> bool {
        self.0 & (1 << alg as u8) != 0
    }

    /// True if no algorithm is in the set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True if every member of `self` is in `other`.
    pub const fn is_subset(self, other: AlgorithmSet) -> bool {
        self.0 & !other.0 == 0
    }

    /// The members, in [`Algorithm::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Algorithm> {
        Algorithm::ALL
            .into_iter()
            .filter(move |a| self.contains(*a))
    }
}

impl fmt::Debug for AlgorithmSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_none_is_unrepresentable() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(a.as_str()), Ok(a));
            assert_eq!(Algorithm::ALL[a.index()], a);
        }
        for bad in ["none", "None", "NONE", "", "hs256", "PS256", "ES384", "RS1"] {
            assert_eq!(
                Algorithm::from_name(bad),
                Err(RejectedError::UnsupportedAlgorithm),
                "{bad}"
            );
        }
    }

    #[test]
    fn sets() {
        let rsa = AlgorithmSet::RSA_PKCS1;
        assert!(rsa.contains(Algorithm::RS384));
        assert!(!rsa.contains(Algorithm::HS256));
        assert!(AlgorithmSet::one(Algorithm::RS256).is_subset(rsa));
        assert!(!AlgorithmSet::one(Algorithm::EdDSA).is_subset(rsa));
        assert_eq!(rsa.iter().count(), 3);
        assert!(AlgorithmSet::EMPTY.is_empty());
        assert_eq!(format!("{rsa:?}"), "{RS256, RS384, RS512}");
    }
}
