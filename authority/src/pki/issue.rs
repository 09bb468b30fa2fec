//! Issuing: the authority's CA ([`CaSigner`]) signs CSRs into client certificates whose key
//! usage and EKU come from [`Usage`]; new CAs, keys and CSRs for the CLI.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::*;
use crate::error::Error;
use crate::store::MasterKey;
use crate::tls::{self};

/// What an issued agent certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRequest {
    /// Subject CN [default: the CSR's subject].
    pub common_name: Option<String>,
    /// Subject alternative names (DNS names or IP addresses) [default: the CSR's].
    pub sans: Vec<String>,
    pub days: u32,
    /// What the certificate is for; empty means [`Usage::Client`].
    pub usages: Vec<Usage>,
}

/// What an issued certificate is for: it decides key usage and extended key usage.
///
/// | usage        | key usage                                                   | EKU        |
/// |--------------|-------------------------------------------------------------|------------|
/// | `client`     | digitalSignature                                            | clientAuth |
/// | `server`     | digitalSignature, keyEncipherment (RSA keys)                | serverAuth |
/// | `encryption` | keyEncipherment (RSA) or keyAgreement (EC), dataEncipherment | none       |
///
/// Several usages combine: key usages are joined, and the EKU lists the purposes of the
/// others (an `encryption` certificate alone has no EKU, so it is not limited to one protocol;
/// `emailProtection` would say S/MIME, which a Usercube agent's encryption is not).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Usage {
    /// TLS client authentication (agents): the default.
    Client,
    /// TLS server (relays); needs at least one subject alternative name.
    Server,
    /// Encrypting data for the holder (Usercube agents' encryption certificates).
    Encryption,
}

/// The authority's CA, able to sign.
pub struct CaSigner {
    cert_pem: String,
    key: rcgen::KeyPair,
}

impl std::fmt::Debug for CaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaSigner").finish_non_exhaustive()
    }
}

impl CaSigner {
    /// The CA of a data directory (`ca.pem`, and `ca.key.sealed` opened with `key`).
    pub fn load(data_dir: &Path, key: &MasterKey) -> Result<CaSigner, Error> {
        let files = tls::CertFiles::in_dir(data_dir);
        let cert_pem = std::fs::read_to_string(&files.ca_cert).map_err(|e| {
            Error::Config(format!(
                "{}: {e} (run `latchkey cert init` or start the server once)",
                files.ca_cert.display()
            ))
        })?;
        files.seal_plain_keys(key)?;
        CaSigner::from_pem(&cert_pem, &files.ca_key_pem(key)?)
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CaSigner, Error> {
        let key =
            rcgen::KeyPair::from_pem(key_pem).map_err(|e| bad(format!("CA private key: {e}")))?;
        let chain = pem_chain(cert_pem)?;
        let ca = chain.first().ok_or_else(|| bad("no CA certificate"))?;
        if !ca.is_ca {
            return Err(bad(format!("{:?} is not a CA certificate", ca.subject)));
        }
        // The key must be the certificate's: sign a probe and check it chains.
        let signer = CaSigner {
            cert_pem: ca.pem(),
            key,
        };
        let probe = signer.sign_new("probe", &[], 1)?;
        let roots = {
            let mut r = rustls::RootCertStore::empty();
            r.add(ca.der.clone())
                .map_err(|e| bad(format!("CA certificate: {e}")))?;
            r
        };
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .map_err(|e| bad(format!("CA certificate: {e}")))?;
        verifier
            .verify_client_cert(&probe.0, &[], UnixTime::now())
            .map_err(|_| bad("the CA private key does not belong to the CA certificate"))?;
        Ok(signer)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub(super) fn issuer(&self) -> Result<rcgen::Issuer<'_, &rcgen::KeyPair>, Error> {
        rcgen::Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)
            .map_err(|e| bad(format!("CA certificate: {e}")))
    }

    /// Signs a CSR (PEM) for `req.usages`: never a CA, and the key usages [`Usage`] says,
    /// whatever the CSR asked for.
    pub fn sign_csr(&self, csr_pem: &str, req: &IssueRequest) -> Result<CertInfo, Error> {
        if csr_pem.len() > MAX_CERT_INPUT {
            return Err(bad("CSR too large"));
        }
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| bad(format!("malformed or unsigned CSR: {e}")))?;
        let rsa = is_rsa(csr.public_key.algorithm());
        client_params(&mut csr.params, req, rsa)?;
        let cert = csr
            .signed_by(&self.issuer()?)
            .map_err(|e| bad(format!("cannot sign: {e}")))?;
        CertInfo::parse(cert.der().clone())
    }

    /// Generates a key and a certificate for it (tests, `cert init` server certificates).
    fn sign_new(
        &self,
        cn: &str,
        sans: &[String],
        days: u32,
    ) -> Result<(CertificateDer<'static>, rcgen::KeyPair), Error> {
        let key = new_key()?;
        let mut params = rcgen::CertificateParams::default();
        client_params(
            &mut params,
            &IssueRequest {
                common_name: Some(cn.to_owned()),
                sans: sans.to_vec(),
                days,
                usages: vec![Usage::Client],
            },
            false,
        )?;
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(|e| bad(format!("cannot sign: {e}")))?;
        Ok((cert.der().clone(), key))
    }
}

pub(super) fn new_key() -> Result<rcgen::KeyPair, Error> {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::Config(format!("key generation: {e}")))
}

impl Usage {
    /// The usages an issued certificate was made for, read back from its EKU and key usage
    /// (so a renewal keeps them); `Client` if it says nothing this authority would have
    /// written.
    pub fn of(der: &[u8]) -> Vec<Usage> {
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            return vec![Usage::Client];
        };
        let mut usages = Vec::new();
        if let Ok(Some(eku)) = cert.extended_key_usage() {
            if eku.value.client_auth {
                usages.push(Usage::Client);
            }
            if eku.value.server_auth {
                usages.push(Usage::Server);
            }
        }
        if let Ok(Some(ku)) = cert.key_usage()
            && ku.value.data_encipherment()
        {
            usages.push(Usage::Encryption);
        }
        if usages.is_empty() {
            usages.push(Usage::Client);
        }
        usages
    }
}

pub(super) fn is_rsa(alg: &rcgen::SignatureAlgorithm) -> bool {
    [
        &rcgen::PKCS_RSA_SHA256,
        &rcgen::PKCS_RSA_SHA384,
        &rcgen::PKCS_RSA_SHA512,
    ]
    .contains(&alg)
}

/// Key usage and EKU for `usages` (see [`Usage`]); `rsa` says whether the key can encipher.
pub(super) fn usage_extensions(
    usages: &[Usage],
    rsa: bool,
) -> (
    Vec<rcgen::KeyUsagePurpose>,
    Vec<rcgen::ExtendedKeyUsagePurpose>,
) {
    use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose as Ku};
    let usages: &[Usage] = if usages.is_empty() {
        &[Usage::Client]
    } else {
        usages
    };
    let (mut ku, mut eku) = (Vec::new(), Vec::new());
    let mut add = |k: Ku| {
        if !ku.contains(&k) {
            ku.push(k);
        }
    };
    for u in usages {
        match u {
            Usage::Client => {
                add(Ku::DigitalSignature);
                eku.push(Eku::ClientAuth);
            }
            Usage::Server => {
                add(Ku::DigitalSignature);
                if rsa {
                    add(Ku::KeyEncipherment);
                }
                eku.push(Eku::ServerAuth);
            }
            Usage::Encryption => {
                add(if rsa {
                    Ku::KeyEncipherment
                } else {
                    Ku::KeyAgreement
                });
                add(Ku::DataEncipherment);
            }
        }
    }
    eku.dedup();
    (ku, eku)
}

pub(super) fn client_params(
    params: &mut rcgen::CertificateParams,
    req: &IssueRequest,
    rsa: bool,
) -> Result<(), Error> {
    if req.days == 0 || req.days > MAX_DAYS {
        return Err(bad(format!("days must be 1..={MAX_DAYS}")));
    }
    if let Some(cn) = &req.common_name {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, cn.as_str());
        params.distinguished_name = dn;
    }
    if !req.sans.is_empty() {
        params.subject_alt_names = req
            .sans
            .iter()
            .map(|s| san(s))
            .collect::<Result<Vec<_>, _>>()?;
    }
    if req.usages.contains(&Usage::Server) && params.subject_alt_names.is_empty() {
        return Err(bad(
            "a server certificate needs at least one subject alternative name (--san \
             relay.example.com or --san 10.0.0.7): TLS clients check the server's name there, \
             not in the CN",
        ));
    }
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    (params.key_usages, params.extended_key_usages) = usage_extensions(&req.usages, rsa);
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    // Valid from yesterday (clock skew between agents and the authority).
    set_days(params, -1, i64::from(req.days))
}

/// Validity from midnight UTC `from` days after today to `to` days after today (rcgen takes
/// calendar dates; `civil_from_days` only yields real ones, so `date_time_ymd` cannot panic).
pub(super) fn set_days(
    params: &mut rcgen::CertificateParams,
    from: i64,
    to: i64,
) -> Result<(), Error> {
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| Error::Config(e.to_string()))?
        .as_secs()
        / 86_400;
    let date = |offset: i64| {
        let (y, m, d) = crate::http::date::civil_from_days(today as i64 + offset);
        rcgen::date_time_ymd(y as i32, m as u8, d as u8)
    };
    params.not_before = date(from);
    params.not_after = date(to);
    Ok(())
}

pub(super) fn san(s: &str) -> Result<rcgen::SanType, Error> {
    let invalid = |e: rcgen::Error| bad(format!("subject alternative name {s:?}: {e}"));
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(rcgen::SanType::IpAddress(ip));
    }
    if let Some(uri) = s.strip_prefix("uri:") {
        return Ok(rcgen::SanType::URI(uri.try_into().map_err(invalid)?));
    }
    if let Some(mail) = s.strip_prefix("email:") {
        return Ok(rcgen::SanType::Rfc822Name(
            mail.try_into().map_err(invalid)?,
        ));
    }
    let dns = s.strip_prefix("dns:").unwrap_or(s);
    Ok(rcgen::SanType::DnsName(dns.try_into().map_err(invalid)?))
}

pub(super) fn random_serial() -> Result<rcgen::SerialNumber, Error> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| Error::Config("system random source failed".into()))?;
    bytes[0] &= 0x7f; // positive
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

/// A fresh ECDSA P-256 key (PKCS#8 PEM) and a CSR for `cn` and `sans`: what `latchkey cert
/// issue` makes locally so the key never leaves the machine.
pub fn key_and_csr(
    cn: &str,
    sans: &[String],
) -> Result<(zeroize::Zeroizing<String>, String), Error> {
    let key = new_key()?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<_, _>>()?;
    let csr = params
        .serialize_request(&key)
        .map_err(|e| bad(format!("CSR: {e}")))?
        .pem()
        .map_err(|e| bad(format!("CSR: {e}")))?;
    Ok((zeroize::Zeroizing::new(key.serialize_pem()), csr))
}

/// A new self-signed CA certificate and key (PEM): `latchkey cert init` and relay CAs.
pub fn new_ca(cn: &str, years: u32) -> Result<(String, zeroize::Zeroizing<String>), Error> {
    let key = new_key()?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial()?);
    set_days(&mut params, -1, 365 * i64::from(years.max(1)))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| bad(format!("CA: {e}")))?;
    Ok((cert.pem(), zeroize::Zeroizing::new(key.serialize_pem())))
}

/// Installs a CA in a data directory (`ca.pem`, `ca.key`) and issues a new server certificate
/// from it. An existing CA is replaced only with `replace` (old files are kept as `*.old`).
pub fn install_ca(
    data_dir: &Path,
    key: &MasterKey,
    ca: Option<(&str, &str)>,
    server_names: &[String],
    replace: bool,
) -> Result<tls::CertFiles, Error> {
    let files = tls::CertFiles::in_dir(data_dir);
    std::fs::create_dir_all(data_dir)?;
    // Plain keys of an earlier release are sealed before anything is renamed to `*.old`.
    files.seal_plain_keys(key)?;
    if files.ca_cert.exists() && !replace {
        return Err(Error::Cli(format!(
            "{} exists; pass --replace to replace the authority's CA (every agent must then \
             trust the new one)",
            files.ca_cert.display()
        )));
    }
    let (cert_pem, key_pem) = match ca {
        Some((c, k)) => {
            // Checks that the key belongs to the certificate and that it is a CA.
            CaSigner::from_pem(c, k)?;
            (c.to_owned(), zeroize::Zeroizing::new(k.to_owned()))
        }
        None => new_ca("Latchkey local CA", 10)?,
    };
    for p in [
        &files.ca_cert,
        &files.ca_key,
        &files.server_cert,
        &files.server_key,
    ] {
        if p.exists() {
            let mut old = p.clone().into_os_string();
            old.push(".old");
            std::fs::rename(p, old)?;
        }
    }
    files.seal_ca_key(key, &key_pem)?;
    std::fs::write(&files.ca_cert, cert_pem.as_bytes())?;
    tls::ensure_certificates(data_dir, key, server_names)?;
    Ok(files)
}
