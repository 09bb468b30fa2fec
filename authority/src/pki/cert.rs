//! Reading certificates: [`CertInfo`] (parsed once: subject, SANs, validity, SHA-256
//! fingerprint), fingerprints, PEM, and import formats told by content ([`ImportFormat`]).

use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use sha2::Digest as _;
use x509_parser::der_parser::asn1_rs::ToDer as _;
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate, X509Name};

use super::*;
use crate::error::Error;

/// A parsed X.509 certificate: what the trust store shows and matches on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub der: CertificateDer<'static>,
    /// RFC 4514, most specific first, e.g. `CN=agent-1,O=Acme`: what a
    /// `tls_client_auth_subject_dn` registration names.
    pub subject: String,
    pub issuer: String,
    /// The subject as RDNs, for matching ([`Dn`]); `None` if a value is not a string.
    pub subject_dn: Option<Dn>,
    /// Subject alternative names as `dns:..`, `uri:..`, `ip:..`, `email:..`.
    pub sans: Vec<String>,
    pub not_before: u64,
    pub not_after: u64,
    /// SHA-256 of the DER, lower-case hex.
    pub fingerprint: String,
    pub is_ca: bool,
}

impl CertInfo {
    /// Parses one DER certificate (trailing bytes refused).
    pub fn parse(der: CertificateDer<'static>) -> Result<CertInfo, Error> {
        let (rest, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| bad(format!("malformed certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(bad("malformed certificate: trailing bytes"));
        }
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(d) => sans.push(format!("dns:{d}")),
                    GeneralName::URI(u) => sans.push(format!("uri:{u}")),
                    GeneralName::RFC822Name(m) => sans.push(format!("email:{m}")),
                    GeneralName::IPAddress(ip) => {
                        if let Some(ip) = ip_text(ip) {
                            sans.push(format!("ip:{ip}"));
                        }
                    }
                    _ => {}
                }
            }
        }
        let secs = |t: i64| u64::try_from(t).unwrap_or(0);
        let subject_dn = Dn::from_name(cert.subject());
        Ok(CertInfo {
            subject: name_text(cert.subject()),
            issuer: name_text(cert.issuer()),
            subject_dn,
            sans,
            not_before: secs(cert.validity().not_before.timestamp()),
            not_after: secs(cert.validity().not_after.timestamp()),
            fingerprint: fingerprint_hex(&der),
            is_ca: cert.is_ca(),
            der,
        })
    }

    /// The subject's (first) common name.
    pub fn common_name(&self) -> Option<&str> {
        self.subject_dn.as_ref()?.common_name()
    }

    pub fn self_signed(&self) -> bool {
        self.subject == self.issuer
    }

    /// Refuses a certificate that is expired or not yet valid at `now`.
    pub fn check_current(&self, now: u64) -> Result<(), Error> {
        if now > self.not_after {
            return Err(bad(format!(
                "certificate {:?} expired at {}",
                self.subject,
                crate::clock::rfc3339(self.not_after)
            )));
        }
        if now + 300 < self.not_before {
            return Err(bad(format!(
                "certificate {:?} is not valid before {}",
                self.subject,
                crate::clock::rfc3339(self.not_before)
            )));
        }
        Ok(())
    }

    /// RFC 8705 `x5t#S256`: base64url SHA-256 of the DER.
    pub fn thumbprint(&self) -> String {
        x5t_s256(&self.der)
    }

    pub fn pem(&self) -> String {
        pem(&self.der)
    }
}

/// A name as RFC 4514 text; values that are not strings are shown as `#` and the hex of their
/// DER, as RFC 4514 §2.4 says.
pub(super) fn name_text(name: &X509Name<'_>) -> String {
    let mut rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let oid = atv.attr_type().to_id_string();
                    let value = match attribute_text(atv.attr_value()) {
                        Some(v) => escape_dn_value(&v),
                        None => format!(
                            "#{}",
                            atv.attr_value()
                                .to_der_vec()
                                .map(|d| hex_lower(&d))
                                .unwrap_or_default()
                        ),
                    };
                    format!("{}={value}", attribute_name(&oid).unwrap_or(&oid))
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.reverse();
    rdns.join(",")
}

pub(super) fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv4Addr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
        _ => None,
    }
}

/// SHA-256 of a certificate's DER, lower-case hex (the trust store's key).
pub fn fingerprint_hex(der: &[u8]) -> String {
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Parses a lower-case or upper-case hex SHA-256 fingerprint (colons allowed, as openssl
/// prints them).
pub fn parse_fingerprint(text: &str) -> Option<String> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hex.to_lowercase())
}

pub(super) fn fingerprint_bytes(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// RFC 8705 §3.1 `x5t#S256`: base64url (no padding) SHA-256 of the certificate's DER.
pub fn x5t_s256(der: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(der))
}

/// One certificate as PEM.
pub fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Every certificate in PEM text, parsed; at least one, at most [`MAX_CHAIN`].
pub fn pem_chain(text: &str) -> Result<Vec<CertInfo>, Error> {
    if text.len() > MAX_CERT_INPUT {
        return Err(bad("certificate file too large"));
    }
    let ders = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("malformed PEM: {e}")))?;
    if ders.is_empty() {
        return Err(bad("no certificate in the PEM input"));
    }
    if ders.len() > MAX_CHAIN {
        return Err(bad(format!("more than {MAX_CHAIN} certificates")));
    }
    ders.into_iter().map(CertInfo::parse).collect()
}

/// What a certificate file holds, told by its content: the extension and the operator's habit
/// (keytool writes DER, openssl PEM) do not matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFormat {
    Pem,
    /// One DER certificate (`keytool -exportcert` without `-rfc`, `openssl x509 -outform DER`).
    Der,
    Pkcs12,
    /// A Java keystore (magic `0xFEEDFEED`): refused with the conversion command.
    Jks,
}

impl ImportFormat {
    /// Both a certificate and a PKCS#12 PFX are DER SEQUENCEs; the first element tells them
    /// apart: the certificate's is its `tbsCertificate` (a SEQUENCE), the PFX's its version (an
    /// INTEGER).
    pub fn detect(bytes: &[u8]) -> Option<ImportFormat> {
        if bytes.starts_with(&[0xFE, 0xED, 0xFE, 0xED]) {
            return Some(ImportFormat::Jks);
        }
        let text = bytes.trim_ascii_start();
        if text.starts_with(b"-----BEGIN") {
            return Some(ImportFormat::Pem);
        }
        let (&tag, rest) = bytes.split_first()?;
        if tag != 0x30 {
            return None;
        }
        // Skip the outer length (short form, or long form with up to 4 length bytes).
        let (&len0, rest) = rest.split_first()?;
        let skip = if len0 & 0x80 == 0 {
            0
        } else {
            usize::from(len0 & 0x7f)
        };
        match rest.get(skip)? {
            0x30 => Some(ImportFormat::Der),
            0x02 => Some(ImportFormat::Pkcs12),
            _ => None,
        }
    }
}

/// The certificates of an imported file, leaf first, whatever its format (see
/// [`ImportFormat::detect`]). `file` names the file in the JKS hint.
pub fn read_certificates(
    bytes: &[u8],
    password: Option<&str>,
    file: &str,
) -> Result<Vec<CertInfo>, Error> {
    if bytes.len() > MAX_CERT_INPUT {
        return Err(bad("certificate file too large"));
    }
    match ImportFormat::detect(bytes) {
        Some(ImportFormat::Pem) => {
            let text =
                std::str::from_utf8(bytes).map_err(|_| bad("malformed PEM: not UTF-8 text"))?;
            pem_chain(text)
        }
        Some(ImportFormat::Der) => Ok(vec![CertInfo::parse(CertificateDer::from(bytes.to_vec()))?]),
        Some(ImportFormat::Pkcs12) => Ok(from_pkcs12(bytes, password.unwrap_or_default())?.0),
        Some(ImportFormat::Jks) => Err(bad(format!(
            "{file} is a Java keystore (JKS), which Latchkey does not read; convert it to \
             PKCS#12 first: keytool -importkeystore -srckeystore {file} -destkeystore \
             {file}.p12 -deststoretype pkcs12"
        ))),
        None => Err(bad(
            "not a certificate: expected PEM, DER, or PKCS#12 (.p12/.pfx)",
        )),
    }
}
