//! JSON Web Keys (RFC 7517/7518/8037) and RFC 7638 thumbprints.
//!
//! Import goes through [`VerifyingKey`], so every JWK is held to the same policy as any other
//! key. Public exports never contain private members: a [`Jwk`] built from a public key has no
//! `d`/`p`/`q`/`k` fields at all, and `oct` (secret) keys are only exported by the explicitly
//! named [`Jwk::from_secret_key`].

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::alg::{Algorithm, AlgorithmSet};
use crate::b64;
use crate::error::{Error, KeyError, MalformedError, Part};
use crate::json;
use crate::keys::{Components, KeyPolicy, VerifyingKey};

/// Largest JWK / JWK Set document we parse.
pub const MAX_JWK_LEN: usize = 64 * 1024;
/// Most keys accepted in one JWK Set.
pub const MAX_JWKS_KEYS: usize = 16;

/// A JSON Web Key, public members only (plus `k` for `oct`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type: `OKP`, `EC`, `RSA` or `oct`.
    pub kty: String,
    /// Key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Intended algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Public key use (`sig`).
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// Curve (`Ed25519`, `P-256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// OKP public key / EC x coordinate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// EC y coordinate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// RSA modulus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA public exponent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// Symmetric key (only for `oct`; secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<String>,
    /// Private exponent / private scalar. Present only so that imports can refuse it.
    #[serde(default, skip_serializing)]
    pub d: Option<String>,
    /// X.509 certificate chain: standard base64 DER, leaf first (RFC 7517 section 4.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x5c: Option<Vec<String>>,
    /// base64url SHA-256 of the leaf certificate's DER (RFC 7517 section 4.9).
    #[serde(default, rename = "x5t#S256", skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
}

/// A JWK Set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JwkSet {
    /// The keys.
    pub keys: Vec<Jwk>,
}

impl Jwk {
    /// Parses one JWK, rejecting duplicate member names anywhere in the document.
    pub fn from_json(bytes: &[u8]) -> Result<Jwk, Error> {
        parse_strict(bytes)
    }

    /// The public JWK of `key` with `kid` and `alg` (single-algorithm keys) filled in.
    /// Secret (HMAC) keys are refused: use [`Jwk::from_secret_key`].
    pub fn from_public_key(key: &VerifyingKey) -> Result<Jwk, Error> {
        if key.is_secret() {
            return Err(KeyError::NotPossible.into());
        }
        Ok(Jwk::from_components(key))
    }

    /// The `oct` JWK of a secret (HMAC) key, including the secret `k`.
    pub fn from_secret_key(key: &VerifyingKey) -> Result<Jwk, Error> {
        if !key.is_secret() {
            return Err(KeyError::NotPossible.into());
        }
        Ok(Jwk::from_components(key))
    }

    fn from_components(key: &VerifyingKey) -> Jwk {
        let mut jwk = Jwk {
            kid: key.kid().map(str::to_owned),
            use_: Some("sig".to_owned()),
            ..Jwk::default()
        };
        let mut algs = key.algorithms().iter();
        if let (Some(alg), None) = (algs.next(), algs.next()) {
            jwk.alg = Some(alg.as_str().to_owned());
        }
        match key.components() {
            Components::Okp { x } => {
                jwk.kty = "OKP".into();
                jwk.crv = Some("Ed25519".into());
                jwk.x = Some(b64::encode(x));
            }
            Components::Ec { x, y } => {
                jwk.kty = "EC".into();
                jwk.crv = Some("P-256".into());
                jwk.x = Some(b64::encode(x));
                jwk.y = Some(b64::encode(y));
            }
            Components::Rsa { n, e } => {
                jwk.kty = "RSA".into();
                jwk.n = Some(b64::encode(n));
                jwk.e = Some(b64::encode(e));
            }
            Components::Oct { k } => {
                jwk.kty = "oct".into();
                jwk.k = Some(b64::encode(k));
            }
        }
        jwk
    }

    /// Builds the verifying key this JWK describes. RSA keys are allowed `rsa_algorithms`
    /// (narrowed to the JWK's `alg` if it names one); other key types their one algorithm.
    /// JWKs carrying private members (`d`) are refused: a registration must never ship a
    /// private key to us, and accepting one would mean holding it.
    pub fn to_verifying_key(
        &self,
        rsa_algorithms: AlgorithmSet,
        policy: &KeyPolicy,
    ) -> Result<VerifyingKey, Error> {
        if self.d.is_some() {
            return Err(KeyError::Jwk("private key material not accepted").into());
        }
        if let Some(u) = &self.use_
            && u != "sig"
        {
            return Err(KeyError::Jwk("`use` must be `sig`").into());
        }
        let named_alg = self
            .alg
            .as_deref()
            .map(Algorithm::from_name)
            .transpose()
            .map_err(|_| KeyError::Jwk("unsupported `alg`"))?;
        let key = match (self.kty.as_str(), self.crv.as_deref()) {
            ("OKP", Some("Ed25519")) => VerifyingKey::ed25519(&member(&self.x, "x")?)?,
            ("EC", Some("P-256")) => {
                let x = member(&self.x, "x")?;
                let y = member(&self.y, "y")?;
                if x.len() != 32 || y.len() != 32 {
                    return Err(KeyError::Jwk("P-256 coordinates must be 32 bytes").into());
                }
                let point = [&[0x04u8][..], &x, &y].concat();
                VerifyingKey::es256(&point)?
            }
            ("RSA", None) => {
                // Base64 length bound first: no decoding of oversized moduli.
                let n_len = self.n.as_ref().map_or(0, String::len);
                if n_len > b64::encoded_len(policy.rsa.max_bits.div_ceil(8)) + 4 {
                    return Err(KeyError::RsaSize {
                        bits: 0,
                        min: policy.rsa.min_bits,
                        max: policy.rsa.max_bits,
                    }
                    .into());
                }
                let algs = match named_alg {
                    Some(a) if rsa_algorithms.contains(a) => AlgorithmSet::one(a),
                    Some(_) => return Err(KeyError::AlgorithmNotAllowed.into()),
                    None => rsa_algorithms,
                };
                VerifyingKey::rsa(
                    &member(&self.n, "n")?,
                    &member(&self.e, "e")?,
                    algs,
                    &policy.rsa,
                )?
            }
            ("oct", None) => {
                let alg = named_alg.ok_or(KeyError::Jwk("`oct` keys need `alg`"))?;
                VerifyingKey::hmac(alg, &zeroize::Zeroizing::new(member(&self.k, "k")?))?
            }
            ("OKP" | "EC", _) => return Err(KeyError::Unsupported.into()),
            _ => return Err(KeyError::Jwk("unsupported `kty`").into()),
        };
        if let Some(alg) = named_alg
            && !key.algorithms().contains(alg)
        {
            return Err(KeyError::AlgorithmNotAllowed.into());
        }
        Ok(match &self.kid {
            Some(kid) => key.with_kid(kid.clone()),
            None => key,
        })
    }

    /// RFC 7638 thumbprint: base64url(SHA-256(canonical JSON of the required members)).
    pub fn thumbprint(&self) -> Result<String, Error> {
        let m = |v: &Option<String>, name| {
            v.as_deref()
                .ok_or(Error::Key(KeyError::Jwk(name)))
                .map(json_string)
        };
        // Members in lexicographic order, no whitespace (RFC 7638 §3.2).
        let canonical = match self.kty.as_str() {
            "EC" => format!(
                r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
                m(&self.crv, "crv")?,
                m(&self.x, "x")?,
                m(&self.y, "y")?
            ),
            "OKP" => format!(
                r#"{{"crv":{},"kty":"OKP","x":{}}}"#,
                m(&self.crv, "crv")?,
                m(&self.x, "x")?
            ),
            "RSA" => format!(
                r#"{{"e":{},"kty":"RSA","n":{}}}"#,
                m(&self.e, "e")?,
                m(&self.n, "n")?
            ),
            "oct" => format!(r#"{{"k":{},"kty":"oct"}}"#, m(&self.k, "k")?),
            _ => return Err(KeyError::Jwk("unsupported `kty`").into()),
        };
        Ok(b64::encode(&Sha256::digest(canonical.as_bytes())))
    }
}

impl JwkSet {
    /// Parses a JWK Set, rejecting duplicate member names and more than [`MAX_JWKS_KEYS`] keys.
    pub fn from_json(bytes: &[u8]) -> Result<JwkSet, Error> {
        let set: JwkSet = parse_strict(bytes)?;
        if set.keys.len() > MAX_JWKS_KEYS {
            return Err(MalformedError::TooLarge {
                limit: MAX_JWKS_KEYS,
            }
            .into());
        }
        Ok(set)
    }
}

impl VerifyingKey {
    /// RFC 7638 thumbprint of this key's JWK (usable as a `kid`).
    pub fn thumbprint(&self) -> String {
        // Every key type we hold has all required members, so this cannot fail; fall back to
        // an empty string rather than panic if that ever changes.
        Jwk::from_components(self).thumbprint().unwrap_or_default()
    }

    /// Imports a JWK (see [`Jwk::to_verifying_key`]).
    pub fn from_jwk(
        jwk: &Jwk,
        rsa_algorithms: AlgorithmSet,
        policy: &KeyPolicy,
    ) -> Result<VerifyingKey, Error> {
        jwk.to_verifying_key(rsa_algorithms, policy)
    }

    /// The public JWK (refused for secret keys).
    pub fn to_jwk(&self) -> Result<Jwk, Error> {
        Jwk::from_public_key(self)
    }
}

fn parse_strict<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.len() > MAX_JWK_LEN {
        return Err(MalformedError::TooLarge { limit: MAX_JWK_LEN }.into());
    }
    let map = json::strict_object(bytes, Part::Document)?;
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|_| MalformedError::Json(Part::Document).into())
}

fn member(v: &Option<String>, name: &'static str) -> Result<Vec<u8>, KeyError> {
    let s = v.as_deref().ok_or(KeyError::Jwk(name))?;
    b64::decode(s.as_bytes()).map_err(|_| KeyError::Jwk(name))
}

fn json_string(s: &str) -> String {
    // Serializing a &str cannot fail.
    serde_json::to_string(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{RsaPolicy, SigningKey};
    use proptest::prelude::*;

    /// RFC 7638 §3.1 example key (2048-bit RSA).
    const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    fn rfc7638_jwk() -> Jwk {
        Jwk {
            kty: "RSA".into(),
            n: Some(RFC7638_N.into()),
            e: Some("AQAB".into()),
            alg: Some("RS256".into()),
            kid: Some("2011-04-29".into()),
            ..Jwk::default()
        }
    }

    #[test]
    fn rfc7638_thumbprint_vector() {
        assert_eq!(
            rfc7638_jwk().thumbprint().expect("thumbprint"),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        // The same through a parsed key (2048 bits: allowed by the default policy).
        let key = rfc7638_jwk()
            .to_verifying_key(AlgorithmSet::RSA_PKCS1, &KeyPolicy::default())
            .expect("import");
        assert_eq!(
            key.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert_eq!(key.kid(), Some("2011-04-29"));
        assert_eq!(key.algorithms(), AlgorithmSet::one(Algorithm::RS256));
        // RSA_3072 profile refuses it.
        let policy = KeyPolicy {
            rsa: RsaPolicy::RSA_3072,
        };
        assert!(matches!(
            rfc7638_jwk().to_verifying_key(AlgorithmSet::RSA_PKCS1, &policy),
            Err(Error::Key(KeyError::RsaSize { bits: 2048, .. }))
        ));
    }

    #[test]
    fn rfc8037_okp_thumbprint() {
        // RFC 8037 A.3.
        let jwk = Jwk::from_json(
            br#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#,
        )
        .expect("parse");
        assert_eq!(
            jwk.thumbprint().expect("tp"),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn public_export_has_no_private_members() {
        let ed = SigningKey::generate(Algorithm::EdDSA).expect("ed");
        let jwk = ed.verifying_key().to_jwk().expect("jwk");
        let json = serde_json::to_string(&jwk).expect("json");
        assert!(!json.contains("\"d\""), "{json}");
        assert!(!json.contains("\"k\""), "{json}");
        assert_eq!(jwk.kid.as_deref(), Some(ed.kid()));
        assert_eq!(jwk.alg.as_deref(), Some("EdDSA"));
        // kid defaults to the RFC 7638 thumbprint.
        assert_eq!(jwk.thumbprint().expect("tp"), ed.kid());
        // A secret key has no public export.
        let hs = SigningKey::hmac(Algorithm::HS256, &[9u8; 32]).expect("hs");
        assert!(hs.verifying_key().to_jwk().is_err());
        let oct = Jwk::from_secret_key(&hs.verifying_key()).expect("oct");
        assert_eq!(oct.kty, "oct");
        // Even a JWK that carries `d` never serializes it.
        let mut with_d = jwk.clone();
        with_d.d = Some("c2VjcmV0".into());
        assert!(
            !serde_json::to_string(&with_d)
                .expect("json")
                .contains("c2VjcmV0")
        );
    }

    #[test]
    fn import_rejections() {
        let policy = KeyPolicy::default();
        let algs = AlgorithmSet::RSA_PKCS1;
        let check = |json: &str| Jwk::from_json(json.as_bytes())?.to_verifying_key(algs, &policy);
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        assert!(check(&format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{x}"}}"#)).is_ok());
        for bad in [
            // private member
            format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{x}","d":"AAAA"}}"#),
            // duplicate member
            format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{x}","x":"{x}"}}"#),
            // wrong curve / type
            format!(r#"{{"kty":"OKP","crv":"X25519","x":"{x}"}}"#),
            format!(r#"{{"kty":"OKP","crv":"Ed448","x":"{x}"}}"#),
            format!(r#"{{"kty":"EC","crv":"P-384","x":"{x}","y":"{x}"}}"#),
            r#"{"kty":"XYZ"}"#.to_owned(),
            // padded base64
            format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{x}="}}"#),
            // alg contradicting the key type
            format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{x}","alg":"RS256"}}"#),
            format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{x}","alg":"none"}}"#),
            format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{x}","use":"enc"}}"#),
            // oct without alg, and a short oct key
            r#"{"kty":"oct","k":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#.to_owned(),
            r#"{"kty":"oct","alg":"HS256","k":"AAAA"}"#.to_owned(),
            // RSA: e != 65537, oversize modulus (refused on length)
            format!(r#"{{"kty":"RSA","n":"{RFC7638_N}","e":"Aw"}}"#),
            format!(r#"{{"kty":"RSA","n":"{}","e":"AQAB"}}"#, "x".repeat(800)),
            format!(r#"{{"kty":"RSA","n":"{RFC7638_N}","e":"AQAB","alg":"ES256"}}"#),
            "[]".to_owned(),
        ] {
            assert!(check(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn jwks_bounds() {
        let one =
            r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        let set = |n: usize| format!(r#"{{"keys":[{}]}}"#, vec![one; n].join(","));
        assert_eq!(
            JwkSet::from_json(set(2).as_bytes())
                .expect("set")
                .keys
                .len(),
            2
        );
        assert!(JwkSet::from_json(set(MAX_JWKS_KEYS + 1).as_bytes()).is_err());
        assert!(JwkSet::from_json(&vec![b' '; MAX_JWK_LEN + 1]).is_err());
    }

    #[test]
    fn every_key_type_round_trips() {
        let keys = [
            SigningKey::generate(Algorithm::EdDSA).expect("ed"),
            SigningKey::generate(Algorithm::ES256).expect("es"),
        ];
        for vk in keys
            .iter()
            .map(SigningKey::verifying_key)
            .chain([crate::keys::tests::rsa_key().verifying_key()])
        {
            let jwk = vk.to_jwk().expect("jwk");
            let json = serde_json::to_vec(&jwk).expect("json");
            let back = Jwk::from_json(&json)
                .expect("parse")
                .to_verifying_key(AlgorithmSet::RSA_PKCS1, &KeyPolicy::default())
                .expect("import");
            assert_eq!(back, vk);
            assert_eq!(back.kid(), vk.kid());
        }
    }

    proptest! {
        #[test]
        fn ed25519_and_oct_jwk_round_trip(seed in any::<[u8; 32]>(), secret in proptest::collection::vec(any::<u8>(), 32..80), kid in "[a-zA-Z0-9_-]{0,20}") {
            let ed = ed25519_dalek::SigningKey::from_bytes(&seed);
            let vk = VerifyingKey::ed25519(ed.verifying_key().as_bytes()).expect("ed").with_kid(kid.clone());
            let json = serde_json::to_vec(&vk.to_jwk().expect("jwk")).expect("json");
            let back = VerifyingKey::from_jwk(&Jwk::from_json(&json).expect("parse"), AlgorithmSet::EMPTY, &KeyPolicy::default()).expect("import");
            prop_assert_eq!(&back, &vk);
            prop_assert_eq!(back.kid(), Some(kid.as_str()));

            let hs = VerifyingKey::hmac(Algorithm::HS384, &secret).expect("hs");
            let json = serde_json::to_vec(&Jwk::from_secret_key(&hs).expect("oct")).expect("json");
            let back = VerifyingKey::from_jwk(&Jwk::from_json(&json).expect("parse"), AlgorithmSet::EMPTY, &KeyPolicy::default()).expect("import");
            prop_assert_eq!(back, hs);
        }

        #[test]
        fn jwk_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(jwk) = Jwk::from_json(&bytes) {
                let _ = jwk.to_verifying_key(AlgorithmSet::RSA_PKCS1, &KeyPolicy::default());
                let _ = jwk.thumbprint();
            }
        }
    }
}
