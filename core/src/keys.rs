//! Signing and verifying keys.
//!
//! A key is parsed once, into the form its backend verifies fastest with, and carries the set
//! of algorithms it may be used with. Token headers never widen that set: the key decides the
//! algorithm.
//!
//! Backends, chosen by measurement on the reference machine (2 cores):
//! - Ed25519 signing: aws-lc-rs (12 µs vs 29 µs for ed25519-dalek).
//! - Ed25519 single verification, chosen once per process ([`ed25519_backend`]): ed25519-dalek
//!   where its AVX-512 IFMA backend runs, otherwise aws-lc-rs (which beats dalek's AVX2
//!   backend). Either way the `verify_strict` rules that need only bytes are checked first
//!   (`ed25519::strict_encoding`; the key's own rules at import), so neither
//!   decompresses R; both accept exactly what dalek's `verify_strict` accepts (differential
//!   test in `batch`). Numbers: bench/results/core.md.
//! - Ed25519 batch verification: ed25519-dalek (aws-lc has none), with the point decompressed
//!   once, at import.
//! - RSA sign/verify: aws-lc-rs with a cached `ParsedPublicKey` per allowed algorithm
//!   (0.05 ms vs 0.5–0.7 ms verify with `rsa` 0.9; 2.5 ms vs 7 ms sign).
//! - RSA import and policy: the `rsa` crate (PKCS#1/PKCS#8/SPKI DER structure, PKCS#1 PEM,
//!   modulus/exponent validation) after a length check that needs no bignum work.
//! - ECDSA P-256 and HMAC: aws-lc-rs (fixed-size ES256 signatures; constant-time HMAC verify).

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SecureRandom as _;
use aws_lc_rs::signature::{self as lc, KeyPair as _};
use aws_lc_rs::{hmac, rand::SystemRandom};
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
use zeroize::Zeroizing;

use crate::alg::{Algorithm, AlgorithmSet};
use crate::b64;
use crate::error::{Error, KeyError, MalformedError, RejectedError};
use crate::pem::{pem_decode, pem_encode};

pub use crate::ed25519::{Ed25519Backend, ed25519_backend};

mod params;
mod parse;

use params::{hmac_alg, hmac_len, rsa_encoding, rsa_params, rsa_slot};

/// Largest RSA modulus any policy may allow. Larger keys are refused on byte length alone,
/// before any bignum arithmetic (a 16k-bit key makes every verification ~30× slower).
pub const RSA_MAX_BITS: usize = 4096;
/// Smallest RSA modulus any policy may allow (aws-lc-rs refuses smaller ones anyway).
pub const RSA_MIN_BITS: usize = 2048;
/// Smallest HMAC key, in bytes (RFC 7518 §3.2: at least the hash output size for HS256).
pub const HMAC_MIN_BYTES: usize = 32;
/// Largest signature any supported algorithm produces (RSA-4096).
pub const MAX_SIGNATURE_LEN: usize = RSA_MAX_BITS / 8;

const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// An SPKI for a 4096-bit RSA key is ~550 bytes; anything much larger is refused unparsed.
const MAX_SPKI_LEN: usize = 600;
/// A PKCS#8 RSA-4096 private key is ~2.4 KB.
const MAX_PKCS8_LEN: usize = 2600;

/// RSA key-size policy (a config struct, so profiles can name their rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RsaPolicy {
    /// Smallest accepted modulus, in bits.
    pub min_bits: usize,
    /// Largest accepted modulus, in bits (never above [`RSA_MAX_BITS`]).
    pub max_bits: usize,
}

impl RsaPolicy {
    /// MindSphere's RSA_3072 profile: exactly 3072 bits.
    pub const RSA_3072: RsaPolicy = RsaPolicy::exact(3072);
    /// Anything from 2048 to 4096 bits.
    pub const DEFAULT: RsaPolicy = RsaPolicy {
        min_bits: RSA_MIN_BITS,
        max_bits: RSA_MAX_BITS,
    };

    /// Exactly `bits` bits.
    pub const fn exact(bits: usize) -> RsaPolicy {
        RsaPolicy {
            min_bits: bits,
            max_bits: bits,
        }
    }

    /// Checks `n` (big-endian, leading zeros allowed) and `e` by length and value only, no
    /// bignum work. Returns the modulus without leading zeros and its bit length.
    pub fn check<'n>(&self, n: &'n [u8], e: &[u8]) -> Result<(&'n [u8], usize), KeyError> {
        let max = self.max_bits.min(RSA_MAX_BITS);
        let min = self.min_bits.max(RSA_MIN_BITS);
        let size_error = |bits| KeyError::RsaSize { bits, min, max };
        let start = n.iter().position(|b| *b != 0).unwrap_or(n.len());
        let n = &n[start..];
        if n.len() > max.div_ceil(8) {
            return Err(size_error(0));
        }
        let bits = match n.first() {
            Some(top) => n.len() * 8 - top.leading_zeros() as usize,
            None => 0,
        };
        if bits < min || bits > max {
            return Err(size_error(bits));
        }
        let e_start = e.iter().position(|b| *b != 0).unwrap_or(e.len());
        if e[e_start..] != [0x01, 0x00, 0x01] {
            return Err(KeyError::RsaExponent);
        }
        Ok((n, bits))
    }
}

impl Default for RsaPolicy {
    fn default() -> Self {
        RsaPolicy::DEFAULT
    }
}

/// What a key import will accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyPolicy {
    /// RSA size rule.
    pub rsa: RsaPolicy,
}

// ---------------------------------------------------------------------------------------------
// Signing keys

/// A private key that mints tokens.
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    inner: SigningInner,
    verifying: VerifyingKey,
}

enum SigningInner {
    Ed25519(lc::Ed25519KeyPair),
    Es256(lc::EcdsaKeyPair, SystemRandom),
    Rsa(lc::RsaKeyPair, SystemRandom),
    // Boxed: an HMAC key holds precomputed inner/outer hash states (~1.2 KB).
    Hmac(Box<hmac::Key>),
}

impl SigningKey {
    /// Generates a fresh key for `alg` (RSA keys are 3072 bits, HMAC keys the hash size).
    /// The `kid` is the RFC 7638 thumbprint of the public JWK (for HMAC keys: of a random
    /// value, so the secret's hash is never published).
    pub fn generate(alg: Algorithm) -> Result<SigningKey, Error> {
        match alg {
            Algorithm::EdDSA => {
                let kp = lc::Ed25519KeyPair::generate().map_err(|_| Error::Crypto)?;
                SigningKey::from_inner(alg, SigningInner::Ed25519(kp))
            }
            Algorithm::ES256 => {
                let kp = lc::EcdsaKeyPair::generate(&lc::ECDSA_P256_SHA256_FIXED_SIGNING)
                    .map_err(|_| Error::Crypto)?;
                SigningKey::from_inner(alg, SigningInner::Es256(kp, SystemRandom::new()))
            }
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
                let kp = lc::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa3072)
                    .map_err(|_| Error::Crypto)?;
                SigningKey::from_inner(alg, SigningInner::Rsa(kp, SystemRandom::new()))
            }
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let mut secret = Zeroizing::new(vec![0u8; hmac_len(alg)]);
                SystemRandom::new()
                    .fill(&mut secret)
                    .map_err(|_| Error::Crypto)?;
                let mut kid = [0u8; 16];
                SystemRandom::new()
                    .fill(&mut kid)
                    .map_err(|_| Error::Crypto)?;
                Ok(SigningKey::hmac(alg, &secret)?.with_kid(b64::encode(&kid)))
            }
        }
    }

    /// An HMAC key from a shared secret of at least 256 bits. The kid defaults to empty; set
    /// one with [`SigningKey::with_kid`] (never derived from the secret).
    pub fn hmac(alg: Algorithm, secret: &[u8]) -> Result<SigningKey, Error> {
        let verifying = VerifyingKey::hmac(alg, secret)?;
        Ok(SigningKey {
            kid: String::new(),
            alg,
            inner: SigningInner::Hmac(Box::new(hmac::Key::new(hmac_alg(alg)?, secret))),
            verifying,
        })
    }

    /// Imports a PKCS#8 v1/v2 DER private key for `alg`.
    pub fn from_pkcs8_der(alg: Algorithm, der: &[u8]) -> Result<SigningKey, Error> {
        if der.len() > MAX_PKCS8_LEN {
            return Err(KeyError::Encoding.into());
        }
        let inner = match alg {
            Algorithm::EdDSA => SigningInner::Ed25519(
                lc::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map_err(|_| KeyError::Encoding)?,
            ),
            Algorithm::ES256 => SigningInner::Es256(
                lc::EcdsaKeyPair::from_pkcs8(&lc::ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(|_| KeyError::Encoding)?,
                SystemRandom::new(),
            ),
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => SigningInner::Rsa(
                lc::RsaKeyPair::from_pkcs8(der).map_err(|_| KeyError::Encoding)?,
                SystemRandom::new(),
            ),
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                return Err(KeyError::AlgorithmNotAllowed.into());
            }
        };
        SigningKey::from_inner(alg, inner)
    }

    /// Imports a PEM private key: `PRIVATE KEY` (PKCS#8) or, for RSA, `RSA PRIVATE KEY`
    /// (PKCS#1, converted with the `rsa` crate).
    pub fn from_pem(alg: Algorithm, pem: &str) -> Result<SigningKey, Error> {
        let (label, der) = pem_decode(pem)?;
        let der = Zeroizing::new(der);
        match label.as_str() {
            "PRIVATE KEY" => SigningKey::from_pkcs8_der(alg, &der),
            "RSA PRIVATE KEY" if alg.is_rsa() => {
                if der.len() > MAX_PKCS8_LEN {
                    return Err(KeyError::Encoding.into());
                }
                let key =
                    rsa::RsaPrivateKey::from_pkcs1_der(&der).map_err(|_| KeyError::Encoding)?;
                let pkcs8 = key.to_pkcs8_der().map_err(|_| KeyError::Encoding)?;
                SigningKey::from_pkcs8_der(alg, pkcs8.as_bytes())
            }
            _ => Err(MalformedError::Pem.into()),
        }
    }

    fn from_inner(alg: Algorithm, inner: SigningInner) -> Result<SigningKey, Error> {
        let algs = AlgorithmSet::one(alg);
        let verifying = match &inner {
            SigningInner::Ed25519(kp) => VerifyingKey::ed25519(kp.public_key().as_ref())?,
            SigningInner::Es256(kp, _) => VerifyingKey::es256(kp.public_key().as_ref())?,
            SigningInner::Rsa(kp, _) => {
                let public = kp.public_key();
                VerifyingKey::rsa(
                    public.modulus().big_endian_without_leading_zero(),
                    public.exponent().big_endian_without_leading_zero(),
                    algs,
                    &RsaPolicy::DEFAULT,
                )?
            }
            SigningInner::Hmac(_) => return Err(KeyError::Unsupported.into()),
        };
        let kid = verifying.thumbprint();
        Ok(SigningKey {
            verifying: verifying.with_kid(kid.clone()),
            kid,
            alg,
            inner,
        })
    }

    /// Sets the key id (also on the verifying half).
    pub fn with_kid(mut self, kid: impl Into<String>) -> SigningKey {
        self.kid = kid.into();
        self.verifying.kid = Some(self.kid.clone());
        self
    }

    /// The key id written into minted headers.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The public (for HMAC: the same secret) half, allowed exactly this key's algorithm.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.verifying.clone()
    }

    /// The private key as PKCS#8 v1 DER (not for HMAC keys, which have no PKCS#8 form).
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        let der = match &self.inner {
            SigningInner::Ed25519(kp) => kp
                .to_pkcs8v1()
                .map_err(|_| Error::Crypto)?
                .as_ref()
                .to_vec(),
            SigningInner::Es256(kp, _) => kp
                .to_pkcs8v1()
                .map_err(|_| Error::Crypto)?
                .as_ref()
                .to_vec(),
            SigningInner::Rsa(kp, _) => {
                let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> =
                    kp.as_der().map_err(|_| Error::Crypto)?;
                der.as_ref().to_vec()
            }
            SigningInner::Hmac(_) => return Err(KeyError::NotPossible.into()),
        };
        Ok(Zeroizing::new(der))
    }

    /// The private key as a PKCS#8 PEM document.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, Error> {
        let der = self.to_pkcs8_der()?;
        Ok(Zeroizing::new(pem_encode("PRIVATE KEY", &der)))
    }

    /// Signs `message` into `sig` (at least [`SigningKey::signature_len`] bytes), returning
    /// the signature length.
    pub fn sign(&self, message: &[u8], sig: &mut [u8]) -> Result<usize, Error> {
        let made = self.signature(message)?;
        let bytes = made.as_ref();
        sig.get_mut(..bytes.len())
            .ok_or(Error::Crypto)?
            .copy_from_slice(bytes);
        Ok(bytes.len())
    }

    /// Signs `message` and appends the base64url signature to `out`.
    pub fn sign_into(&self, message: &[u8], out: &mut String) -> Result<(), Error> {
        let sig = self.signature(message)?;
        b64::encode_into(sig.as_ref(), out);
        Ok(())
    }

    /// Signs `message`, returning the signature by value: the fixed-size algorithms need no
    /// zeroed `MAX_SIGNATURE_LEN` buffer (the minting hot path), RSA (milliseconds per
    /// signature) takes one allocation.
    pub fn signature(&self, message: &[u8]) -> Result<Signature, Error> {
        Ok(Signature(match &self.inner {
            SigningInner::Ed25519(kp) => SignatureInner::short(kp.sign(message).as_ref())?,
            SigningInner::Es256(kp, rng) => {
                SignatureInner::short(kp.sign(rng, message).map_err(|_| Error::Crypto)?.as_ref())?
            }
            SigningInner::Rsa(kp, rng) => {
                let mut out = vec![0u8; kp.public_modulus_len()];
                kp.sign(rsa_encoding(self.alg)?, rng, message, &mut out)
                    .map_err(|_| Error::Crypto)?;
                SignatureInner::Heap(out)
            }
            SigningInner::Hmac(key) => SignatureInner::short(hmac::sign(key, message).as_ref())?,
        }))
    }

    /// Length in bytes of this key's signatures.
    pub fn signature_len(&self) -> usize {
        match &self.inner {
            SigningInner::Ed25519(_) | SigningInner::Es256(..) => 64,
            SigningInner::Rsa(kp, _) => kp.public_modulus_len(),
            SigningInner::Hmac(_) => hmac_len(self.alg),
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private half.
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// Verifying keys

/// A signature made by [`SigningKey::signature`]; its bytes via `as_ref()`.
pub struct Signature(SignatureInner);

// aws-lc-rs's own `Signature` is 4.6 KiB (sized for post-quantum schemes); the 64 bytes that
// matter are copied out of it at once.
enum SignatureInner {
    /// Ed25519, ES256, HS256/384/512: at most 64 bytes.
    Short([u8; 64], usize),
    /// RSA.
    Heap(Vec<u8>),
}

impl SignatureInner {
    fn short(bytes: &[u8]) -> Result<SignatureInner, Error> {
        let mut out = [0u8; 64];
        out.get_mut(..bytes.len())
            .ok_or(Error::Crypto)?
            .copy_from_slice(bytes);
        Ok(SignatureInner::Short(out, bytes.len()))
    }
}

impl AsRef<[u8]> for Signature {
    fn as_ref(&self) -> &[u8] {
        match &self.0 {
            SignatureInner::Short(s, n) => s.get(..*n).unwrap_or_default(),
            SignatureInner::Heap(v) => v,
        }
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({} bytes)", self.as_ref().len())
    }
}

/// A key that checks signatures, with the algorithms it may be used with.
#[derive(Clone)]
pub struct VerifyingKey {
    kid: Option<String>,
    algorithms: AlgorithmSet,
    inner: VerifyingInner,
}

#[derive(Clone)]
enum VerifyingInner {
    Ed25519 {
        /// For batch verification.
        dalek: ed25519_dalek::VerifyingKey,
        /// For single verification when dalek has no IFMA backend here.
        parsed: lc::ParsedPublicKey,
    },
    Es256 {
        parsed: lc::ParsedPublicKey,
        point: [u8; 65],
    },
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
        bits: usize,
        /// One parsed key per RS256/RS384/RS512, present only if allowed.
        parsed: [Option<lc::ParsedPublicKey>; 3],
    },
    Hmac {
        key: Box<hmac::Key>,
        secret: Zeroizing<Vec<u8>>,
    },
}

/// Which key type a verifying key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Ed25519 (JWK `OKP`).
    Ed25519,
    /// ECDSA P-256 (JWK `EC`).
    P256,
    /// RSA.
    Rsa,
    /// HMAC shared secret (JWK `oct`).
    Hmac,
}

impl VerifyingKey {
    /// Sets the key id.
    pub fn with_kid(mut self, kid: impl Into<String>) -> VerifyingKey {
        self.kid = Some(kid.into());
        self
    }

    /// Narrows or changes the allowed algorithms; only algorithms this key type supports.
    /// For RSA, only algorithms parsed at construction can be kept (narrowing).
    pub fn with_algorithms(mut self, algorithms: AlgorithmSet) -> Result<VerifyingKey, Error> {
        if algorithms.is_empty() || !algorithms.is_subset(self.algorithms) {
            return Err(KeyError::AlgorithmNotAllowed.into());
        }
        if let VerifyingInner::Rsa { parsed, .. } = &mut self.inner {
            for alg in AlgorithmSet::RSA_PKCS1.iter() {
                if !algorithms.contains(alg) {
                    parsed[rsa_slot(alg)] = None;
                }
            }
        }
        self.algorithms = algorithms;
        Ok(self)
    }

    /// The key id, if any.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The algorithms this key may verify.
    pub fn algorithms(&self) -> AlgorithmSet {
        self.algorithms
    }

    /// The key type.
    pub fn kind(&self) -> KeyKind {
        match &self.inner {
            VerifyingInner::Ed25519 { .. } => KeyKind::Ed25519,
            VerifyingInner::Es256 { .. } => KeyKind::P256,
            VerifyingInner::Rsa { .. } => KeyKind::Rsa,
            VerifyingInner::Hmac { .. } => KeyKind::Hmac,
        }
    }

    /// RSA modulus size in bits (0 for other key types).
    pub fn rsa_bits(&self) -> usize {
        match &self.inner {
            VerifyingInner::Rsa { bits, .. } => *bits,
            _ => 0,
        }
    }

    /// True for secret (HMAC) keys, which must never be published.
    pub fn is_secret(&self) -> bool {
        matches!(self.inner, VerifyingInner::Hmac { .. })
    }

    /// Checks `signature` over `message` for `alg`. `alg` must be in the key's own set —
    /// this is where a header `alg` that the key does not allow is refused.
    #[inline]
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> Result<(), Error> {
        if !self.algorithms.contains(alg) {
            return Err(RejectedError::AlgorithmMismatch.into());
        }
        let ok = match &self.inner {
            VerifyingInner::Ed25519 { dalek, parsed } => {
                let sig: &[u8; 64] = signature
                    .try_into()
                    .map_err(|_| MalformedError::SignatureLength)?;
                match ed25519_backend() {
                    Ed25519Backend::Dalek => {
                        crate::ed25519::verify_dalek_strict(dalek, message, sig)
                    }
                    Ed25519Backend::AwsLc => {
                        crate::ed25519::verify_aws_lc_strict(parsed, message, sig)
                    }
                }
            }
            VerifyingInner::Es256 { parsed, .. } => {
                if signature.len() != 64 {
                    return Err(MalformedError::SignatureLength.into());
                }
                parsed.verify_sig(message, signature).is_ok()
            }
            VerifyingInner::Rsa { parsed, bits, .. } => {
                if signature.len() != bits.div_ceil(8) {
                    return Err(MalformedError::SignatureLength.into());
                }
                let key = parsed[rsa_slot(alg)]
                    .as_ref()
                    .ok_or(RejectedError::AlgorithmMismatch)?;
                key.verify_sig(message, signature).is_ok()
            }
            VerifyingInner::Hmac { key, .. } => {
                if signature.len() != hmac_len(alg) {
                    return Err(MalformedError::SignatureLength.into());
                }
                // Constant-time comparison inside aws-lc-rs.
                hmac::verify(key, message, signature).is_ok()
            }
        };
        if ok {
            Ok(())
        } else {
            Err(RejectedError::BadSignature.into())
        }
    }

    /// The dalek key, for batch verification.
    pub(crate) fn ed25519_key(&self) -> Option<&ed25519_dalek::VerifyingKey> {
        match &self.inner {
            VerifyingInner::Ed25519 { dalek, .. } => Some(dalek),
            _ => None,
        }
    }

    /// SubjectPublicKeyInfo DER. Not for HMAC keys.
    pub fn to_spki_der(&self) -> Result<Vec<u8>, Error> {
        match &self.inner {
            VerifyingInner::Ed25519 { dalek, .. } => {
                Ok([&ED25519_SPKI_PREFIX[..], dalek.as_bytes()].concat())
            }
            VerifyingInner::Es256 { point, .. } => Ok([&P256_SPKI_PREFIX[..], point].concat()),
            VerifyingInner::Rsa { n, e, .. } => {
                let key = rsa::RsaPublicKey::new_with_max_size(
                    rsa::BigUint::from_bytes_be(n),
                    rsa::BigUint::from_bytes_be(e),
                    RSA_MAX_BITS,
                )
                .map_err(|_| KeyError::Encoding)?;
                Ok(key
                    .to_public_key_der()
                    .map_err(|_| KeyError::Encoding)?
                    .into_vec())
            }
            VerifyingInner::Hmac { .. } => Err(KeyError::NotPossible.into()),
        }
    }

    /// SPKI PEM with 64-column lines.
    pub fn to_pem(&self) -> Result<String, Error> {
        Ok(pem_encode("PUBLIC KEY", &self.to_spki_der()?))
    }

    /// SPKI PEM on one line (`-----BEGIN PUBLIC KEY-----MIIB...-----END PUBLIC KEY-----`), the
    /// form MindSphere clients insert their own line breaks into.
    pub fn to_pem_one_line(&self) -> Result<String, Error> {
        let body = b64::encode_standard(&self.to_spki_der()?);
        Ok(format!(
            "-----BEGIN PUBLIC KEY-----{body}-----END PUBLIC KEY-----"
        ))
    }

    /// Public components for JWK export.
    pub(crate) fn components(&self) -> Components<'_> {
        match &self.inner {
            VerifyingInner::Ed25519 { dalek, .. } => Components::Okp {
                x: dalek.as_bytes(),
            },
            VerifyingInner::Es256 { point, .. } => Components::Ec {
                x: &point[1..33],
                y: &point[33..65],
            },
            VerifyingInner::Rsa { n, e, .. } => Components::Rsa { n, e },
            VerifyingInner::Hmac { secret, .. } => Components::Oct { k: secret },
        }
    }
}

/// Raw key material, for JWK encoding.
pub(crate) enum Components<'a> {
    Okp { x: &'a [u8] },
    Ec { x: &'a [u8], y: &'a [u8] },
    Rsa { n: &'a [u8], e: &'a [u8] },
    Oct { k: &'a [u8] },
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("VerifyingKey");
        d.field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .field("kind", &self.kind());
        if let VerifyingInner::Rsa { bits, .. } = &self.inner {
            d.field("bits", bits);
        }
        // HMAC secrets are never printed.
        d.finish_non_exhaustive()
    }
}

impl PartialEq for VerifyingKey {
    /// Same key material and algorithms (kid ignored). Secret comparison is constant-time.
    fn eq(&self, other: &VerifyingKey) -> bool {
        use subtle::ConstantTimeEq as _;
        if self.algorithms != other.algorithms {
            return false;
        }
        match (self.components(), other.components()) {
            (Components::Okp { x: a }, Components::Okp { x: b }) => a == b,
            (Components::Ec { x: a, y: b }, Components::Ec { x: c, y: d }) => a == c && b == d,
            (Components::Rsa { n: a, e: b }, Components::Rsa { n: c, e: d }) => a == c && b == d,
            (Components::Oct { k: a }, Components::Oct { k: b }) => bool::from(a.ct_eq(b)),
            _ => false,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::OnceLock;

    /// One RSA-3072 key per test binary: generation takes about a second.
    pub(crate) fn rsa_key() -> &'static SigningKey {
        static KEY: OnceLock<SigningKey> = OnceLock::new();
        KEY.get_or_init(|| SigningKey::generate(Algorithm::RS256).expect("RSA keygen"))
    }

    fn sign(key: &SigningKey, msg: &[u8]) -> Vec<u8> {
        let mut s = String::new();
        key.sign_into(msg, &mut s).expect("sign");
        b64::decode(s.as_bytes()).expect("b64")
    }

    #[test]
    fn sign_verify_each_algorithm() {
        let keys = [
            SigningKey::generate(Algorithm::EdDSA).expect("ed"),
            SigningKey::generate(Algorithm::ES256).expect("es"),
            SigningKey::generate(Algorithm::HS256).expect("hs256"),
            SigningKey::generate(Algorithm::HS384).expect("hs384"),
            SigningKey::generate(Algorithm::HS512).expect("hs512"),
        ];
        for key in keys.iter().chain([rsa_key()]) {
            let sig = sign(key, b"msg");
            assert_eq!(sig.len(), key.signature_len());
            let vk = key.verifying_key();
            assert_eq!(vk.verify(key.algorithm(), b"msg", &sig), Ok(()));
            assert_eq!(
                vk.verify(key.algorithm(), b"msh", &sig),
                Err(RejectedError::BadSignature.into())
            );
        }
    }

    #[test]
    fn key_decides_the_algorithm() {
        let hs = SigningKey::generate(Algorithm::HS256).expect("hs");
        let sig = sign(&hs, b"m");
        let vk = hs.verifying_key();
        for alg in [Algorithm::HS384, Algorithm::RS256, Algorithm::EdDSA] {
            assert_eq!(
                vk.verify(alg, b"m", &sig),
                Err(RejectedError::AlgorithmMismatch.into())
            );
        }
        // An RSA key registered for RS256 only refuses RS384 even with a valid RS384 signature.
        let rsa = rsa_key();
        let vk = rsa.verifying_key();
        assert_eq!(vk.algorithms(), AlgorithmSet::one(Algorithm::RS256));
        assert_eq!(
            vk.verify(Algorithm::RS384, b"m", &sign(rsa, b"m")),
            Err(RejectedError::AlgorithmMismatch.into())
        );
    }

    #[test]
    fn rsa_key_with_explicit_algorithm_set() {
        // Agents sign with RS256 (MCL) or RS384 (Node SDK) under one registered key.
        let der = rsa_key().to_pkcs8_der().expect("der");
        let rs384 = SigningKey::from_pkcs8_der(Algorithm::RS384, &der).expect("import");
        let public = rsa_key().verifying_key();
        let spki = public.to_spki_der().expect("spki");
        let vk = VerifyingKey::from_spki_der(&spki, AlgorithmSet::RSA_PKCS1, &RsaPolicy::RSA_3072)
            .expect("spki import");
        assert_eq!(vk.rsa_bits(), 3072);
        let sig384 = sign(&rs384, b"m");
        assert_eq!(vk.verify(Algorithm::RS384, b"m", &sig384), Ok(()));
        assert_eq!(
            vk.verify(Algorithm::RS256, b"m", &sign(rsa_key(), b"m")),
            Ok(())
        );
        // RS384 signature presented as RS256 fails (the hash differs).
        assert_eq!(
            vk.verify(Algorithm::RS256, b"m", &sig384),
            Err(RejectedError::BadSignature.into())
        );
        let narrowed = vk
            .with_algorithms(AlgorithmSet::one(Algorithm::RS256))
            .expect("narrow");
        assert_eq!(
            narrowed.verify(Algorithm::RS384, b"m", &sig384),
            Err(RejectedError::AlgorithmMismatch.into())
        );
        assert!(
            narrowed.with_algorithms(AlgorithmSet::RSA_PKCS1).is_err(),
            "widening is refused"
        );
    }

    #[test]
    fn rsa_policy() {
        let policy = RsaPolicy::RSA_3072;
        let n3072 = [0xc1u8; 384];
        let e = [1u8, 0, 1];
        assert_eq!(policy.check(&n3072, &e).map(|(_, b)| b), Ok(3072));
        // Leading zeros do not count.
        let mut padded = vec![0u8; 3];
        padded.extend_from_slice(&n3072);
        assert_eq!(policy.check(&padded, &e).map(|(_, b)| b), Ok(3072));
        // 3071 bits: top byte 0x7f.
        let mut n3071 = n3072;
        n3071[0] = 0x7f;
        assert_eq!(
            policy.check(&n3071, &e),
            Err(KeyError::RsaSize {
                bits: 3071,
                min: 3072,
                max: 3072
            })
        );
        assert!(policy.check(&[0xc1u8; 256], &e).is_err());
        for bad_e in [&[3u8][..], &[1, 0, 0, 1], &[], &[1, 0, 1, 0]] {
            assert_eq!(policy.check(&n3072, bad_e), Err(KeyError::RsaExponent));
        }
        assert_eq!(
            policy.check(&n3072, &[0, 1, 0, 1]).map(|(_, b)| b),
            Ok(3072)
        );
        // Even a policy asking for more is capped at 4096, refused on length alone.
        let huge = RsaPolicy::exact(16384);
        assert_eq!(
            huge.check(&vec![0xffu8; 2048], &e),
            Err(KeyError::RsaSize {
                bits: 0,
                min: 16384,
                max: 4096
            })
        );
        assert!(RsaPolicy::DEFAULT.check(&[0xffu8; 512], &e).is_ok());
        assert!(RsaPolicy::DEFAULT.check(&[0xffu8; 513], &e).is_err());
        assert!(
            RsaPolicy::DEFAULT.check(&[0x01u8; 256], &e).is_err(),
            "2041 bits"
        );
    }

    #[test]
    fn hmac_keys_must_be_256_bits() {
        assert_eq!(
            VerifyingKey::hmac(Algorithm::HS256, &[7u8; 31]).err(),
            Some(KeyError::WeakHmacKey.into())
        );
        assert!(SigningKey::hmac(Algorithm::HS512, &[7u8; 31]).is_err());
        assert!(SigningKey::hmac(Algorithm::HS256, &[7u8; 32]).is_ok());
        assert_eq!(
            SigningKey::hmac(Algorithm::RS256, &[7u8; 32]).err(),
            Some(KeyError::AlgorithmNotAllowed.into())
        );
    }

    #[test]
    fn debug_never_shows_secrets() {
        let key = SigningKey::hmac(Algorithm::HS256, b"0123456789abcdef0123456789abcdef")
            .expect("hs")
            .with_kid("k1");
        let dbg = format!("{key:?} {:?}", key.verifying_key());
        assert!(!dbg.contains("0123456789"), "{dbg}");
        assert!(!dbg.contains("48, 49"), "{dbg}");
        assert!(dbg.contains("k1"));
    }

    #[test]
    fn pkcs8_and_pem_round_trip() {
        for alg in [Algorithm::EdDSA, Algorithm::ES256] {
            let key = SigningKey::generate(alg).expect("gen");
            let der = key.to_pkcs8_der().expect("der");
            let back = SigningKey::from_pkcs8_der(alg, &der).expect("import");
            assert_eq!(back.verifying_key(), key.verifying_key());
            assert_eq!(back.kid(), key.kid());
            let pem = key.to_pkcs8_pem().expect("pem");
            let back = SigningKey::from_pem(alg, &pem).expect("pem import");
            assert_eq!(back.verifying_key(), key.verifying_key());
            let public = key.verifying_key();
            for pem in [
                public.to_pem().expect("pem"),
                public.to_pem_one_line().expect("one line"),
            ] {
                let vk = VerifyingKey::from_pem(&pem, AlgorithmSet::EMPTY, &RsaPolicy::DEFAULT)
                    .expect("public pem");
                assert_eq!(vk, public);
            }
        }
        let one_line = rsa_key().verifying_key().to_pem_one_line().expect("pem");
        assert!(one_line.starts_with("-----BEGIN PUBLIC KEY-----MII"));
        assert!(one_line.ends_with("-----END PUBLIC KEY-----"));
        assert!(!one_line.contains('\n'));
        let vk = VerifyingKey::from_pem(
            &one_line,
            AlgorithmSet::one(Algorithm::RS256),
            &RsaPolicy::RSA_3072,
        )
        .expect("one-line import");
        assert_eq!(vk, rsa_key().verifying_key());
        // A 3072-bit key under a 2048-only policy is refused.
        assert!(
            VerifyingKey::from_pem(
                &one_line,
                AlgorithmSet::one(Algorithm::RS256),
                &RsaPolicy::exact(2048)
            )
            .is_err()
        );
    }

    #[test]
    fn pkcs1_rsa_private_pem() {
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        use rsa::pkcs8::DecodePrivateKey as _;
        let der = rsa_key().to_pkcs8_der().expect("der");
        let key = rsa::RsaPrivateKey::from_pkcs8_der(&der).expect("rsa crate");
        let pem = key
            .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
            .expect("pkcs1 pem");
        assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let back = SigningKey::from_pem(Algorithm::RS256, &pem).expect("import");
        assert_eq!(back.verifying_key(), rsa_key().verifying_key());
        // PKCS#1 public PEM too.
        use rsa::pkcs1::EncodeRsaPublicKey as _;
        let public_pem = key
            .to_public_key()
            .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
            .expect("pub pem");
        let vk = VerifyingKey::from_pem(
            &public_pem,
            AlgorithmSet::one(Algorithm::RS256),
            &RsaPolicy::DEFAULT,
        )
        .expect("pkcs1 public");
        assert_eq!(vk, rsa_key().verifying_key());
    }

    #[test]
    fn bad_pem_rejected() {
        for pem in [
            "",
            "-----BEGIN PUBLIC KEY-----",
            "-----BEGIN PUBLIC KEY-----AAAA-----END PRIVATE KEY-----",
            "-----BEGIN PUBLIC KEY-----!!!!-----END PUBLIC KEY-----",
            "-----BEGIN PUBLIC KEY-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END PUBLIC KEY-----",
            "-----BEGIN CERTIFICATE-----AAAA-----END CERTIFICATE-----",
        ] {
            assert!(
                VerifyingKey::from_pem(pem, AlgorithmSet::RSA_PKCS1, &RsaPolicy::DEFAULT).is_err(),
                "{pem}"
            );
        }
        let big = format!(
            "-----BEGIN PUBLIC KEY-----{}-----END PUBLIC KEY-----",
            "A".repeat(9000)
        );
        assert!(
            VerifyingKey::from_pem(&big, AlgorithmSet::RSA_PKCS1, &RsaPolicy::DEFAULT).is_err()
        );
    }

    #[test]
    fn weak_ed25519_keys_refused() {
        // The identity point and a point of order 8.
        let identity = {
            let mut b = [0u8; 32];
            b[0] = 1;
            b
        };
        assert_eq!(
            VerifyingKey::ed25519(&identity).err(),
            Some(KeyError::WeakEd25519.into())
        );
        assert!(VerifyingKey::ed25519(&[0u8; 31]).is_err());
    }

    #[test]
    fn signature_length_checked() {
        let key = SigningKey::generate(Algorithm::ES256).expect("es");
        let mut sig = sign(&key, b"m");
        sig.push(0);
        assert_eq!(
            key.verifying_key().verify(Algorithm::ES256, b"m", &sig),
            Err(MalformedError::SignatureLength.into())
        );
    }
}
