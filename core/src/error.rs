//! The crate's one error type.
//!
//! Families are sub-enums so the HTTP layer can map them in one place: *malformed input*
//! (the bytes are not a token we can even read), a *rejected credential* (a well-formed token
//! that must not be honoured), *key problems* (a key that we refuse to hold) and *unavailable*
//! (we cannot decide safely right now and fail closed). Messages never contain key material,
//! secrets or token contents: they name what failed, not the offending bytes.

use std::fmt;

/// Everything that can go wrong in `latchkey-core`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input could not be parsed as what it claims to be.
    #[error("malformed input: {0}")]
    Malformed(#[from] MalformedError),
    /// The input parsed, but the credential must not be accepted.
    #[error("credential rejected: {0}")]
    Rejected(#[from] RejectedError),
    /// A key was refused (unsupported, weak, outside policy, badly encoded).
    #[error("key error: {0}")]
    Key(#[from] KeyError),
    /// A check could not be carried out safely; the credential is refused (fail closed).
    #[error("unavailable: {0}")]
    Unavailable(#[from] UnavailableError),
    /// The crypto backend failed while producing a signature or random bytes.
    #[error("cryptographic backend failure")]
    Crypto,
}

impl Error {
    /// True if the input was not a well-formed token/JWK/document.
    pub fn is_malformed(&self) -> bool {
        matches!(self, Error::Malformed(_))
    }

    /// True if a well-formed credential was refused (signature, claims, revocation, replay…).
    pub fn is_rejected(&self) -> bool {
        matches!(self, Error::Rejected(_))
    }

    /// True if a key was refused.
    pub fn is_key(&self) -> bool {
        matches!(self, Error::Key(_))
    }
}

/// Which part of a compact JWS an error refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The protected header (first segment).
    Header,
    /// The payload / claims set (second segment).
    Payload,
    /// The signature (third segment).
    Signature,
    /// A JSON document that is not part of a token (JWK, JWK set…).
    Document,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Header => "header",
            Part::Payload => "payload",
            Part::Signature => "signature",
            Part::Document => "document",
        })
    }
}

/// The bytes are not a token (or JWK) we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MalformedError {
    /// Input longer than the configured bound; checked before any decoding.
    #[error("input exceeds {limit} bytes")]
    TooLarge {
        /// The bound that was exceeded.
        limit: usize,
    },
    /// A compact JWS must have exactly three dot-separated segments.
    #[error("compact JWS must have exactly three segments")]
    Segments,
    /// Not strict, canonical, unpadded base64url.
    #[error("{0} is not canonical base64url")]
    Base64(Part),
    /// Not a JSON object of the expected shape.
    #[error("{0} is not a valid JSON object")]
    Json(Part),
    /// The same member name appears twice in one JSON object.
    #[error("{0} contains a duplicate member name")]
    DuplicateMember(Part),
    /// A NumericDate claim is not an integer in range.
    #[error("claim `{0}` is not an integer NumericDate in range")]
    NumericDate(&'static str),
    /// A claim or header member has the wrong JSON type.
    #[error("member `{0}` has the wrong type")]
    MemberType(&'static str),
    /// The header has no `alg`.
    #[error("header has no `alg`")]
    MissingAlgorithm,
    /// The header lists critical extensions we do not understand (or an empty `crit`).
    #[error("header `crit` lists extensions that are not understood")]
    Critical,
    /// The header carries a key reference we never follow (`jku`, `x5u`, `jwk`, `x5c`).
    #[error("header member `{0}` is not accepted")]
    ForbiddenHeader(&'static str),
    /// The signature has the wrong length for its algorithm.
    #[error("signature length does not match the algorithm")]
    SignatureLength,
    /// PEM armour missing or wrong.
    #[error("not a PEM document of the expected type")]
    Pem,
}

/// A well-formed credential that must not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RejectedError {
    /// The signature does not verify under the selected key.
    #[error("signature verification failed")]
    BadSignature,
    /// The header `alg` is not one the key allows (algorithm-confusion defence).
    #[error("header `alg` does not match the key's algorithm")]
    AlgorithmMismatch,
    /// `alg` names an algorithm we never accept (including `none`).
    #[error("algorithm not supported")]
    UnsupportedAlgorithm,
    /// No key with the token's `kid` (or the token has no `kid` where one is required).
    #[error("no key for the token's `kid`")]
    UnknownKey,
    /// `exp` is in the past (beyond leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` is in the future (beyond leeway).
    #[error("token issued in the future")]
    IssuedInFuture,
    /// `exp - iat` (or `exp - now`) exceeds the configured maximum lifetime.
    #[error("token lifetime exceeds the maximum")]
    LifetimeTooLong,
    /// A required claim is absent.
    #[error("required claim `{0}` is missing")]
    MissingClaim(&'static str),
    /// `iss` is not in the accepted set.
    #[error("issuer not accepted")]
    WrongIssuer,
    /// No `aud` value is in the accepted set.
    #[error("audience not accepted")]
    WrongAudience,
    /// The token is of a different type than expected (header `typ` or type rule).
    #[error("token type not accepted here")]
    WrongType,
    /// The token's `jti` (or its signing key) has been revoked.
    #[error("token revoked")]
    Revoked,
    /// The token's `jti` was already presented (client-assertion replay).
    #[error("token replayed")]
    Replayed,
}

/// A key that we refuse to hold or use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Key type or curve we do not support.
    #[error("unsupported key type")]
    Unsupported,
    /// HMAC secret shorter than 256 bits.
    #[error("HMAC key must be at least 256 bits")]
    WeakHmacKey,
    /// RSA modulus size outside the policy.
    #[error("RSA modulus of {bits} bits is outside the policy ({min}..={max})")]
    RsaSize {
        /// Bits of the offered modulus (0 if it was refused on length alone).
        bits: usize,
        /// Policy minimum.
        min: usize,
        /// Policy maximum.
        max: usize,
    },
    /// RSA public exponent other than 65537.
    #[error("RSA public exponent must be 65537")]
    RsaExponent,
    /// Ed25519 public key of small order or non-canonical encoding.
    #[error("weak or non-canonical Ed25519 public key")]
    WeakEd25519,
    /// The key cannot be used with the requested algorithm.
    #[error("key cannot be used with this algorithm")]
    AlgorithmNotAllowed,
    /// A JWK is missing a member or has an invalid one.
    #[error("invalid JWK: {0}")]
    Jwk(&'static str),
    /// DER/PEM contents could not be parsed as a key.
    #[error("invalid key encoding")]
    Encoding,
    /// A different key is already registered under this `kid`.
    #[error("a different key already uses this kid")]
    DuplicateKid,
    /// The operation needs a private key (or exports would leak one).
    #[error("operation not possible with this key")]
    NotPossible,
}

/// We cannot decide safely right now; the caller must refuse (fail closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnavailableError {
    /// The replay cache is at capacity with unexpired entries; new assertions are refused
    /// until entries expire rather than evicting (which would re-open replay).
    #[error("replay cache full")]
    ReplayCacheFull,
}

impl From<crate::replay::ReplayError> for Error {
    fn from(e: crate::replay::ReplayError) -> Error {
        use crate::replay::ReplayError as R;
        match e {
            R::Full => UnavailableError::ReplayCacheFull.into(),
            R::ExpiryOutOfRange => RejectedError::LifetimeTooLong.into(),
            // Replayed, issued before the floor (cannot be proven fresh), and anything added
            // later: refuse as a replay.
            _ => RejectedError::Replayed.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_distinguished() {
        let m = Error::from(MalformedError::Segments);
        let r = Error::from(RejectedError::Expired);
        let k = Error::from(KeyError::WeakHmacKey);
        let u = Error::from(UnavailableError::ReplayCacheFull);
        assert!(m.is_malformed() && !m.is_rejected());
        assert!(r.is_rejected() && !r.is_malformed());
        assert!(k.is_key() && !k.is_rejected() && !k.is_malformed());
        assert!(!u.is_rejected() && !u.is_malformed());
    }

    #[test]
    fn replay_errors_fold_in() {
        use crate::replay::ReplayError;
        assert_eq!(
            Error::from(ReplayError::Replayed),
            RejectedError::Replayed.into()
        );
        assert_eq!(
            Error::from(ReplayError::Full),
            UnavailableError::ReplayCacheFull.into()
        );
        assert!(Error::from(ReplayError::BeforeFloor).is_rejected());
    }

    #[test]
    fn messages_name_the_failure() {
        assert_eq!(
            Error::from(MalformedError::Base64(Part::Payload)).to_string(),
            "malformed input: payload is not canonical base64url"
        );
        assert_eq!(
            Error::from(RejectedError::Revoked).to_string(),
            "credential rejected: token revoked"
        );
        assert_eq!(
            Error::from(KeyError::RsaSize {
                bits: 1024,
                min: 3072,
                max: 3072
            })
            .to_string(),
            "key error: RSA modulus of 1024 bits is outside the policy (3072..=3072)"
        );
    }
}
