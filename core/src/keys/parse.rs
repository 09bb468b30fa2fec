//! Public keys from raw bytes, SPKI, PKCS#1 and PEM, each vetted before it is usable.

use super::*;

impl VerifyingKey {
    /// An Ed25519 public key (32 bytes). Small-order and non-canonical points are refused so
    /// that strict and batch verification agree on the key.
    pub fn ed25519(public: &[u8]) -> Result<VerifyingKey, Error> {
        let bytes: &[u8; 32] = public.try_into().map_err(|_| KeyError::Encoding)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::Encoding)?;
        if key.is_weak() || !crate::ed25519::is_canonical_point(bytes) {
            return Err(KeyError::WeakEd25519.into());
        }
        let parsed =
            lc::ParsedPublicKey::new(&lc::ED25519, bytes).map_err(|_| KeyError::Encoding)?;
        Ok(VerifyingKey {
            kid: None,
            algorithms: AlgorithmSet::one(Algorithm::EdDSA),
            inner: VerifyingInner::Ed25519 { dalek: key, parsed },
        })
    }

    /// A P-256 public key as an uncompressed SEC1 point (65 bytes, `04‖x‖y`).
    pub fn es256(point: &[u8]) -> Result<VerifyingKey, Error> {
        let point: [u8; 65] = point.try_into().map_err(|_| KeyError::Encoding)?;
        if point[0] != 0x04 {
            return Err(KeyError::Encoding.into());
        }
        let parsed = lc::ParsedPublicKey::new(&lc::ECDSA_P256_SHA256_FIXED, point)
            .map_err(|_| KeyError::Encoding)?;
        Ok(VerifyingKey {
            kid: None,
            algorithms: AlgorithmSet::one(Algorithm::ES256),
            inner: VerifyingInner::Es256 { parsed, point },
        })
    }

    /// An RSA public key from big-endian `n` and `e`, allowed `algorithms` (a subset of
    /// [`AlgorithmSet::RSA_PKCS1`]), checked against `policy` by length before any bignum work.
    pub fn rsa(
        n: &[u8],
        e: &[u8],
        algorithms: AlgorithmSet,
        policy: &RsaPolicy,
    ) -> Result<VerifyingKey, Error> {
        if algorithms.is_empty() || !algorithms.is_subset(AlgorithmSet::RSA_PKCS1) {
            return Err(KeyError::AlgorithmNotAllowed.into());
        }
        let (n, bits) = policy.check(n, e)?;
        // The `rsa` crate validates the key as a whole (a second, independent opinion).
        rsa::RsaPublicKey::new_with_max_size(
            rsa::BigUint::from_bytes_be(n),
            rsa::BigUint::from_bytes_be(e),
            RSA_MAX_BITS,
        )
        .map_err(|_| KeyError::Encoding)?;
        let components = lc::RsaPublicKeyComponents {
            n,
            e: &[0x01u8, 0x00, 0x01][..],
        };
        let mut parsed: [Option<lc::ParsedPublicKey>; 3] = [None, None, None];
        for alg in algorithms.iter() {
            let params = rsa_params(alg)?;
            let key = components
                .to_parsed_public_key(params)
                .map_err(|_| KeyError::Encoding)?;
            parsed[rsa_slot(alg)] = Some(key);
        }
        Ok(VerifyingKey {
            kid: None,
            algorithms,
            inner: VerifyingInner::Rsa {
                n: n.to_vec(),
                e: vec![0x01, 0x00, 0x01],
                bits,
                parsed,
            },
        })
    }

    /// An HMAC key (shared secret of at least 256 bits) for exactly `alg`.
    pub fn hmac(alg: Algorithm, secret: &[u8]) -> Result<VerifyingKey, Error> {
        let hash = hmac_alg(alg)?;
        if secret.len() < HMAC_MIN_BYTES {
            return Err(KeyError::WeakHmacKey.into());
        }
        Ok(VerifyingKey {
            kid: None,
            algorithms: AlgorithmSet::one(alg),
            inner: VerifyingInner::Hmac {
                key: Box::new(hmac::Key::new(hash, secret)),
                secret: Zeroizing::new(secret.to_vec()),
            },
        })
    }

    /// A public key from SPKI DER (`PUBLIC KEY`): Ed25519, P-256 or RSA. RSA keys get
    /// `rsa_algorithms` and `policy`; other types ignore them.
    pub fn from_spki_der(
        der: &[u8],
        rsa_algorithms: AlgorithmSet,
        policy: &RsaPolicy,
    ) -> Result<VerifyingKey, Error> {
        if der.len() > MAX_SPKI_LEN {
            return Err(KeyError::RsaSize {
                bits: 0,
                min: policy.min_bits,
                max: policy.max_bits.min(RSA_MAX_BITS),
            }
            .into());
        }
        if let Some(pk) = der.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
            return VerifyingKey::ed25519(pk);
        }
        if let Some(point) = der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            return VerifyingKey::es256(point);
        }
        // Structure only (no bignums): SPKI → PKCS#1 RSAPublicKey → n, e.
        let spki =
            rsa::pkcs8::SubjectPublicKeyInfoRef::try_from(der).map_err(|_| KeyError::Encoding)?;
        if spki.algorithm.oid != rsa::pkcs1::ALGORITHM_OID {
            return Err(KeyError::Unsupported.into());
        }
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or(KeyError::Encoding)?;
        VerifyingKey::from_pkcs1_der(bits, rsa_algorithms, policy)
    }

    fn from_pkcs1_der(
        der: &[u8],
        algorithms: AlgorithmSet,
        policy: &RsaPolicy,
    ) -> Result<VerifyingKey, Error> {
        use rsa::pkcs1::der::Decode as _;
        let key = rsa::pkcs1::RsaPublicKey::from_der(der).map_err(|_| KeyError::Encoding)?;
        VerifyingKey::rsa(
            key.modulus.as_bytes(),
            key.public_exponent.as_bytes(),
            algorithms,
            policy,
        )
    }

    /// A public key from PEM: `PUBLIC KEY` (SPKI) or `RSA PUBLIC KEY` (PKCS#1). The one-line
    /// form (no newlines) is accepted too.
    pub fn from_pem(
        pem: &str,
        rsa_algorithms: AlgorithmSet,
        policy: &RsaPolicy,
    ) -> Result<VerifyingKey, Error> {
        let (label, der) = pem_decode(pem)?;
        match label.as_str() {
            "PUBLIC KEY" => VerifyingKey::from_spki_der(&der, rsa_algorithms, policy),
            "RSA PUBLIC KEY" => VerifyingKey::from_pkcs1_der(&der, rsa_algorithms, policy),
            _ => Err(MalformedError::Pem.into()),
        }
    }
}
