//! Latchkey's token core: compact JWS/JWT parsing, keys, claim validation and the lock-free
//! mint/verify pipeline. No I/O: no files, sockets or clocks — callers pass `now` as unix
//! seconds and keys as bytes.
//!
//! # Design decisions
//!
//! **Parse, don't validate.** A compact JWS becomes a [`jws::UnverifiedToken`] only when all
//! three segments are strict base64url and the header is acceptable (no `crit`, no `jku`/
//! `x5u`/`jwk`/`x5c`, no duplicate members, a known `alg`). A [`jws::VerifiedToken`] is a
//! different type that only signature verification plus [`claims::Validation`] produce.
//! Anything that reads claims without verifying lives in [`dangerous`].
//!
//! **The key decides the algorithm.** Every [`keys::VerifyingKey`] carries the set of
//! algorithms it may verify ([`alg::AlgorithmSet`]), fixed when the key is imported or
//! registered. The header `alg` is only *checked against* that set, never used to pick how to
//! interpret key bytes, so the classic confusions (HS256 signed with an RSA public key, `none`,
//! ES256 vs EdDSA) cannot happen. An agent's RSA key may allow {RS256, RS384, RS512}
//! explicitly because the two MindSphere SDKs sign with different ones.
//!
//! **Distinct token types.** Each type Latchkey mints has its own header `typ`
//! ([`claims::TokenType`]); client assertions, which agents mint, are recognised by the
//! absence of any of ours plus `iss` = `sub`. No type is accepted in another's place.
//!
//! **Snapshots, not locks.** The [`keyring::KeyRing`] publishes an immutable snapshot in an
//! `ArcSwap`: readers load it with a few atomic operations and keep one consistent key set for
//! a whole operation; rotation builds a new snapshot and swaps it atomically. Revocation
//! ([`revocation`]) is read the same way and `jti`s come from an atomic counter ([`jti`]).
//! Minting encodes each key's headers once ([`mint::Minter`]) and serializes claims into a
//! per-thread buffer, so a token costs one allocation plus the signature.
//!
//! **Backends by measurement** (reference machine, one core):
//! - Ed25519 sign: aws-lc-rs, 12 µs vs 29 µs for ed25519-dalek.
//! - Ed25519 verify: `verify_strict`'s rules checked on the signature's bytes
//!   (`ed25519::strict_encoding`), then the cofactorless equation on ed25519-dalek's AVX-512
//!   IFMA backend where the CPU has it (~20–24 µs), otherwise aws-lc-rs (~40–50 µs); never a
//!   decompression of R. Keys hold the decompressed point.
//! - Ed25519 batch verify: one random linear combination on curve25519-dalek's vartime
//!   multiscalar multiplication, each distinct key's terms summed first (~9–10 µs/token at
//!   n = 64, ~8.5–9 µs at n = 256). See [`batch`] for exactly what the batch path guarantees.
//! - RSA verify/sign: aws-lc-rs with a cached parsed key per allowed algorithm (0.05 ms vs
//!   0.5–0.7 ms verify with `rsa` 0.9; 2.5 ms vs 7 ms sign).
//! - RSA import and policy: the `rsa` crate (PKCS#1/SPKI structure, PKCS#1 PEM, key
//!   validation) after a byte-length check, so oversized moduli cost no bignum work.
//! - ECDSA P-256 (fixed-size signatures) and HMAC (constant-time verify): aws-lc-rs.
//!
//! **Errors.** One [`Error`] enum separates malformed input, rejected credentials, key
//! problems and fail-closed unavailability, so the HTTP layer maps it in one place.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod alg;
pub mod b64;
pub mod batch;
pub mod claims;
pub mod dangerous;
mod ed25519;
pub mod error;
pub mod json;
pub mod jti;
pub mod jwk;
pub mod jws;
pub mod keyring;
pub mod keys;
pub mod mint;
mod pem;
pub mod replay;
pub mod revocation;
pub mod verify;

pub use alg::{Algorithm, AlgorithmSet};
pub use claims::{Audience, Claims, RequiredClaims, TokenType, Validation};
pub use error::{Error, KeyError, MalformedError, Part, RejectedError, UnavailableError};
pub use jwk::{Jwk, JwkSet};
pub use jws::{Header, UnverifiedToken, VerifiedToken};
pub use keyring::{KeyRing, KeySnapshot};
pub use keys::{
    Ed25519Backend, KeyKind, KeyPolicy, RsaPolicy, SigningKey, VerifyingKey, ed25519_backend,
};
pub use mint::Minter;
pub use verify::{NoRevocations, Revocations, Verifier};
