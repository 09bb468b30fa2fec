//! PKCS#12 keystores: export with a chain and key, import of a chain and key.

use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use sha2::Digest as _;

use super::*;
use crate::error::Error;

/// A PKCS#12 keystore with `key_pem` (PKCS#8) and `chain` (leaf first) under `alias`.
pub fn to_pkcs12(
    alias: &str,
    chain: &[CertificateDer<'_>],
    key_pem: &str,
    password: &str,
) -> Result<Vec<u8>, Error> {
    if password.is_empty() {
        return Err(bad("a PKCS#12 export needs a non-empty password"));
    }
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| bad(format!("private key (PKCS#8 PEM expected): {e}")))?;
    let key = p12_keystore::PrivateKey::from_der(key.secret_pkcs8_der())
        .map_err(|e| bad(format!("private key: {e}")))?;
    let certs = chain
        .iter()
        .map(|c| p12_keystore::Certificate::from_der(c.as_ref()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("certificate: {e}")))?;
    let local_id = sha2::Sha256::digest(chain.first().map_or(&[][..], |c| c.as_ref())).to_vec();
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry(
        alias,
        p12_keystore::KeyStoreEntry::PrivateKeyChain(p12_keystore::PrivateKeyChain::new(
            local_id, key, certs,
        )),
    );
    store
        .writer(password)
        .write()
        .map_err(|e| bad(format!("PKCS#12: {e}")))
}

/// The certificates (leaf first) and PKCS#8 private key (PEM) of a PKCS#12 file.
pub fn from_pkcs12(
    der: &[u8],
    password: &str,
) -> Result<(Vec<CertInfo>, Option<zeroize::Zeroizing<String>>), Error> {
    if der.len() > MAX_CERT_INPUT {
        return Err(bad("PKCS#12 file too large"));
    }
    let store = p12_keystore::KeyStore::from_pkcs12(
        der,
        password,
        p12_keystore::Pkcs12ImportPolicy::Relaxed,
    )
    .map_err(|e| {
        bad(format!(
            "cannot open the PKCS#12 file: wrong password, or not a PKCS#12 file ({e})"
        ))
    })?;
    if let Some((_, chain)) = store.private_key_chain() {
        let certs = chain
            .certs()
            .iter()
            .map(|c| CertInfo::parse(CertificateDer::from(c.as_der().to_vec())))
            .collect::<Result<Vec<_>, _>>()?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(chain.key().as_der());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        return Ok((certs, Some(zeroize::Zeroizing::new(pem))));
    }
    let certs = store
        .entries()
        .filter_map(|(_, e)| match e {
            p12_keystore::KeyStoreEntry::Certificate(c) => Some(c.as_der().to_vec()),
            _ => None,
        })
        .map(|d| CertInfo::parse(CertificateDer::from(d)))
        .collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(bad("the PKCS#12 file holds no certificate"));
    }
    Ok((certs, None))
}
