//! Certificates for mutual TLS: reading them, issuing them, exporting them, and turning the
//! store's trust store into what the TLS layer checks.
//!
//! # Design decisions
//!
//! **Parse once, then act.** Every certificate that enters (an import, a CSR's result, a JWKS
//! `x5c`) becomes a [`CertInfo`] first: subject, SANs, validity, SHA-256 fingerprint. A
//! certificate that does not parse, has expired, or is not yet valid is refused with a message
//! that says which.
//!
//! **Keys stay where they are made.** `latchkey cert issue` generates the agent's key in the
//! CLI process and sends the authority a CSR; the authority signs it with its CA and records the
//! certificate (never a private key). A CSR can also come from the agent itself.
//!
//! **What is trusted.** The TLS layer's [`TrustStore`] is rebuilt from: the data directory's CA
//! and `--client-ca` files (the *base*), plus every `Trusted` (pinned) and `TrustedCa`
//! (anchor) certificate in the store that is valid and not revoked. Revoked fingerprints are
//! the `cert:` revocations plus certificates marked `Revoked`. [`TrustState::refresh`] runs after
//! every commit that changes any of that, before the request that caused it is answered, so the
//! next handshake sees it.
//!
//! **Pinned or anchored.** A certificate trusted by alias (`cert trust`) is *pinned*: it
//! authenticates exactly itself, by SHA-256 fingerprint, under `tls_client_auth` and
//! `self_signed_tls_client_auth` alike, whatever its CA flag says (openssl makes self-signed
//! certificates CA:TRUE by default, which WebPKI refuses as an end entity). It never anchors
//! other certificates, so a self-signed agent's key cannot mint certificates for another
//! subject. Only the data directory's CA, `--client-ca` files and imports made with `--as-ca`
//! anchor chains.
//!
//! **Revocation reaches tokens.** A token bound to a certificate (`cnf.x5t#S256`) stops
//! verifying once the certificate is revoked: [`TrustState::binding_revoked`] is checked on
//! every verification, in memory. The CA's CRL ([`TrustState::crl`]) lists the revoked
//! certificates it issued, for relays that check offline.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use base64::Engine as _;
use crossbeam_skiplist::SkipMap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, UnixTime};
use sha2::Digest as _;
use x509_parser::der_parser::asn1_rs::ToDer as _;
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate, X509Name};

use crate::app::App;
use crate::error::{ApiError, Error};
use crate::store::{
    CertificateKind, CertificateRecord, CertificateState, MasterKey, RevocationKind,
};
use crate::tls::{self, TrustStore};

/// Largest PEM or PKCS#12 input (a chain of a few certificates).
pub const MAX_CERT_INPUT: usize = 64 * 1024;
/// Most certificates in one PEM chain.
pub const MAX_CHAIN: usize = 8;
/// Longest validity an issued certificate may ask for.
pub const MAX_DAYS: u32 = 3 * 366;

fn bad(msg: impl Into<String>) -> Error {
    ApiError::InvalidRequest(msg.into()).into()
}

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
                crate::cmd::remote::time(self.not_after)
            )));
        }
        if now + 300 < self.not_before {
            return Err(bad(format!(
                "certificate {:?} is not valid before {}",
                self.subject,
                crate::cmd::remote::time(self.not_before)
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
fn name_text(name: &X509Name<'_>) -> String {
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

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn ip_text(bytes: &[u8]) -> Option<String> {
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

fn fingerprint_bytes(hex: &str) -> Option<[u8; 32]> {
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

// ---------------------------------------------------------------------------------------------
// Distinguished names

/// A distinguished name as RDNs in certificate (ASN.1) order, each RDN its attributes as
/// (dotted attribute type OID, value), sorted: RDNs are sets.
///
/// RFC 8705 `tls_client_auth_subject_dn` is an RFC 4514 string; it is parsed into this (with
/// its escapes) and compared with the certificate's parsed subject, never as text: `CN=a\,
/// O=b` (one RDN whose CN holds a comma) and `CN=a,O=b` (two RDNs) are different names.
/// Attribute types compare by OID (`cn`, `CN` and `2.5.4.3` are one type); values compare
/// exactly, without case folding, which never matches a name that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dn(Vec<Vec<(String, String)>>);

/// Most RDNs in a configured DN.
const MAX_RDNS: usize = 64;

/// RFC 4514 §3 short names (and a few common ones) and their OIDs; the first name of an OID is
/// the one shown.
const ATTRIBUTE_TYPES: [(&str, &str); 20] = [
    ("CN", "2.5.4.3"),
    ("SN", "2.5.4.4"),
    ("SERIALNUMBER", "2.5.4.5"),
    ("C", "2.5.4.6"),
    ("L", "2.5.4.7"),
    ("ST", "2.5.4.8"),
    ("STREET", "2.5.4.9"),
    ("O", "2.5.4.10"),
    ("OU", "2.5.4.11"),
    ("TITLE", "2.5.4.12"),
    ("GIVENNAME", "2.5.4.42"),
    ("INITIALS", "2.5.4.43"),
    ("GENERATIONQUALIFIER", "2.5.4.44"),
    ("DNQUALIFIER", "2.5.4.46"),
    ("PSEUDONYM", "2.5.4.65"),
    ("ORGANIZATIONIDENTIFIER", "2.5.4.97"),
    ("DC", "0.9.2342.19200300.100.1.25"),
    ("UID", "0.9.2342.19200300.100.1.1"),
    ("EMAILADDRESS", "1.2.840.113549.1.9.1"),
    ("E", "1.2.840.113549.1.9.1"),
];

fn attribute_name(oid: &str) -> Option<&'static str> {
    ATTRIBUTE_TYPES
        .iter()
        .find(|(_, o)| *o == oid)
        .map(|(n, _)| *n)
}

/// An attribute type: a known short name (any case) or a dotted OID.
fn attribute_oid(text: &str) -> Result<String, String> {
    if let Some((_, oid)) = ATTRIBUTE_TYPES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(text))
    {
        return Ok((*oid).to_owned());
    }
    let arcs: Vec<&str> = text.split('.').collect();
    let numeric = arcs.len() >= 2
        && arcs.iter().all(|a| {
            !a.is_empty()
                && a.bytes().all(|b| b.is_ascii_digit())
                && (a.len() == 1 || !a.starts_with('0'))
        });
    if numeric {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "unknown attribute type {text:?} (use a dotted OID)"
        ))
    }
}

/// The text of a directory string value; `None` for anything else.
fn attribute_text(value: &x509_parser::der_parser::asn1_rs::Any<'_>) -> Option<String> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let data = value.data;
    match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString => std::str::from_utf8(data).ok().map(str::to_owned),
        Tag::BmpString if data.len().is_multiple_of(2) => char::decode_utf16(
            data.chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]])),
        )
        .collect::<Result<String, _>>()
        .ok(),
        Tag::UniversalString if data.len().is_multiple_of(4) => data
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => None,
    }
}

/// RFC 4514 §2.4 escaping of one value.
fn escape_dn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

impl Dn {
    /// Parses an RFC 4514 string (most specific RDN first). Spaces around `,`, `+` and `=`
    /// are allowed (RFC 1779 style, as most tools print); escaped characters (`\,`, `\2C`)
    /// belong to the value. The `#hex` form is refused.
    pub fn parse(text: &str) -> Result<Dn, Error> {
        Dn::parse_text(text).map_err(|why| bad(format!("distinguished name {text:?}: {why}")))
    }

    fn parse_text(text: &str) -> Result<Dn, String> {
        let mut rdns: Vec<Vec<(String, String)>> = Vec::new();
        let mut rdn = Vec::new();
        let mut chars = text.chars().peekable();
        let skip_spaces = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
            while chars.next_if_eq(&' ').is_some() {}
        };
        if text.trim().is_empty() {
            return Err("empty".into());
        }
        loop {
            skip_spaces(&mut chars);
            let mut ty = String::new();
            while let Some(c) = chars.next_if(|c| *c != '=') {
                ty.push(c);
            }
            if chars.next() != Some('=') {
                return Err(format!("{:?} has no '='", ty.trim()));
            }
            let oid = attribute_oid(ty.trim())?;
            skip_spaces(&mut chars);
            if chars.peek() == Some(&'#') {
                return Err("the #hex value form is not supported".into());
            }
            let mut value: Vec<u8> = Vec::new();
            // Length without trailing unescaped spaces (they are not part of the value).
            let mut significant = 0;
            let mut end = None;
            while let Some(c) = chars.next() {
                match c {
                    ',' | '+' => {
                        end = Some(c);
                        break;
                    }
                    '\\' => {
                        match chars.next() {
                            Some(
                                e @ ('"' | '+' | ',' | ';' | '<' | '>' | '\\' | ' ' | '#' | '='),
                            ) => value.push(e as u8),
                            Some(h) if h.is_ascii_hexdigit() => {
                                let l = chars
                                    .next()
                                    .filter(char::is_ascii_hexdigit)
                                    .ok_or("'\\' must be followed by two hex digits")?;
                                let pair = format!("{h}{l}");
                                value.push(
                                    u8::from_str_radix(&pair, 16).map_err(|e| e.to_string())?,
                                );
                            }
                            _ => return Err("bad escape after '\\'".into()),
                        }
                        significant = value.len();
                    }
                    '"' | ';' | '<' | '>' | '\0' => {
                        return Err(format!("{c:?} must be escaped in a value"));
                    }
                    c => {
                        let mut buf = [0u8; 4];
                        value.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        if c != ' ' {
                            significant = value.len();
                        }
                    }
                }
            }
            value.truncate(significant);
            let value =
                String::from_utf8(value).map_err(|_| "escaped bytes are not UTF-8".to_owned())?;
            rdn.push((oid, value));
            if end != Some('+') {
                rdn.sort();
                rdns.push(std::mem::take(&mut rdn));
                if rdns.len() > MAX_RDNS {
                    return Err(format!("more than {MAX_RDNS} RDNs"));
                }
            }
            if end.is_none() {
                break;
            }
        }
        // The string lists the last RDN of the sequence first (RFC 4514 §2.1).
        rdns.reverse();
        Ok(Dn(rdns))
    }

    /// A certificate name's RDNs; `None` when a value is not a directory string (such a name
    /// matches no configured DN).
    pub fn from_name(name: &X509Name<'_>) -> Option<Dn> {
        name.iter_rdn()
            .map(|rdn| {
                let mut set = rdn
                    .iter()
                    .map(|atv| {
                        Some((
                            atv.attr_type().to_id_string(),
                            attribute_text(atv.attr_value())?,
                        ))
                    })
                    .collect::<Option<Vec<_>>>()?;
                set.sort();
                Some(set)
            })
            .collect::<Option<Vec<_>>>()
            .map(Dn)
    }

    /// The most specific common name (the last CN in certificate order).
    pub fn common_name(&self) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .flatten()
            .find(|(oid, _)| oid == "2.5.4.3")
            .map(|(_, v)| v.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Issuing

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

    fn issuer(&self) -> Result<rcgen::Issuer<'_, &rcgen::KeyPair>, Error> {
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

fn new_key() -> Result<rcgen::KeyPair, Error> {
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

fn is_rsa(alg: &rcgen::SignatureAlgorithm) -> bool {
    [
        &rcgen::PKCS_RSA_SHA256,
        &rcgen::PKCS_RSA_SHA384,
        &rcgen::PKCS_RSA_SHA512,
    ]
    .contains(&alg)
}

/// Key usage and EKU for `usages` (see [`Usage`]); `rsa` says whether the key can encipher.
fn usage_extensions(
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

fn client_params(
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
fn set_days(params: &mut rcgen::CertificateParams, from: i64, to: i64) -> Result<(), Error> {
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

fn san(s: &str) -> Result<rcgen::SanType, Error> {
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

fn random_serial() -> Result<rcgen::SerialNumber, Error> {
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

// ---------------------------------------------------------------------------------------------
// PKCS#12

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

// ---------------------------------------------------------------------------------------------
// The live trust state

/// What the TLS layer trusts, rebuilt from the store after every relevant commit.
#[derive(Debug, Default)]
pub struct TrustState {
    /// Anchors from files (the data directory's CA, `--client-ca`).
    base: Mutex<Vec<CertificateDer<'static>>>,
    /// Bumped by every rebuild once the new stores are in place; a verdict checked against an
    /// older generation is not used.
    generation: AtomicU64,
    /// Chains that verified, by content (see [`TrustState::verify_chain`]).
    verified: SkipMap<[u8; 32], Verdict>,
    /// Fingerprints of revoked certificates, kept whether or not mutual TLS is on: a token
    /// bound to one (`cnf.x5t#S256`) stops verifying ([`TrustState::binding_revoked`]).
    revoked: ArcSwap<HashSet<[u8; 32]>>,
    /// The server certificate chain file, for its expiry in `/metrics`.
    server_cert: Mutex<Option<std::path::PathBuf>>,
    /// The last CRL signed, reused until the trust changes or it is [`CRL_RESIGN`] old.
    crl: Mutex<Option<SignedCrl>>,
}

#[derive(Debug)]
struct SignedCrl {
    generation: u64,
    signed_at: u64,
    der: Arc<[u8]>,
}

/// A CRL's lifetime (`nextUpdate - thisUpdate`, seconds): relays fetch a new one before then.
pub const CRL_VALIDITY: u64 = 24 * 3600;
/// A served CRL is re-signed at least this often (seconds), so its `nextUpdate` stays
/// [`CRL_VALIDITY`] minus at most this far away.
pub const CRL_RESIGN: u64 = 3600;

/// A chain that verified against trust generation `generation`; good until `until` (Unix
/// seconds), when its first certificate expires.
#[derive(Debug)]
struct Verdict {
    generation: u64,
    until: u64,
}

/// Chains remembered at most; past it the cache starts over. Only chains that verified get in,
/// so filling it takes that many trusted certificates, not just traffic.
const VERIFIED_CAP: usize = 16 * 1024;

/// The anchors, pins and revoked fingerprints the store says, with the base added.
#[derive(Debug, Default)]
pub struct TrustMaterial {
    /// CAs trusted on purpose: the files and `cert trust --ca`.
    pub anchors: Vec<CertInfo>,
    /// Certificates trusted by alias: each authenticates only itself.
    pub pins: Vec<CertInfo>,
    pub revoked: HashSet<[u8; 32]>,
}

impl TrustState {
    /// Sets the file anchors (once, at `serve`).
    pub fn set_base(&self, anchors: Vec<CertificateDer<'static>>) {
        if let Ok(mut b) = self.base.lock() {
            *b = anchors;
        }
    }

    /// The data directory's CA and the `--client-ca` files.
    pub fn file_anchors(
        data_dir: &Path,
        client_cas: &[std::path::PathBuf],
    ) -> Result<Vec<CertificateDer<'static>>, Error> {
        let mut anchors = Vec::new();
        let own = tls::CertFiles::in_dir(data_dir).ca_cert;
        if own.exists() {
            anchors.extend(tls::load_certs(&own)?);
        }
        for p in client_cas {
            anchors.extend(tls::load_certs(p)?);
        }
        Ok(anchors)
    }

    /// What the store and files say is trusted now.
    pub fn material(&self, app: &App) -> Result<TrustMaterial, Error> {
        let snap = app.store.read()?;
        let now = app.now();
        let mut revoked: HashSet<[u8; 32]> = snap
            .revocations()?
            .iter()
            .filter(|r| r.kind == RevocationKind::Certificate)
            .filter_map(|r| fingerprint_bytes(&r.id))
            .collect();
        let records = snap.certificates()?;
        revoked.extend(
            records
                .iter()
                .filter(|r| r.state == CertificateState::Revoked)
                .filter_map(|r| fingerprint_bytes(&r.fingerprint)),
        );
        let base = self.base.lock().map(|b| b.clone()).unwrap_or_default();
        let (mut anchors, mut pins) = (Vec::new(), Vec::new());
        let mut seen = HashSet::new();
        let live =
            |r: &&CertificateRecord| r.state == CertificateState::Valid && r.not_after >= now;
        let stored_anchors = records
            .iter()
            .filter(|r| {
                matches!(
                    r.kind,
                    CertificateKind::TrustedCa | CertificateKind::Authority
                )
            })
            .filter(live)
            .map(|r| CertificateDer::from(r.der.clone()));
        let stored_pins = records
            .iter()
            .filter(|r| r.kind == CertificateKind::Trusted)
            .filter(live)
            .map(|r| CertificateDer::from(r.der.clone()));
        for (der, pinned) in base
            .into_iter()
            .chain(stored_anchors)
            .map(|d| (d, false))
            .chain(stored_pins.map(|d| (d, true)))
        {
            let fp = tls::fingerprint(&der);
            if revoked.contains(&fp) || !seen.insert((fp, pinned)) {
                continue;
            }
            match CertInfo::parse(der) {
                Ok(info) if pinned => pins.push(info),
                Ok(info) => anchors.push(info),
                Err(e) => tracing::warn!(error = %e, "skipping unreadable trusted certificate"),
            }
        }
        Ok(TrustMaterial {
            anchors,
            pins,
            revoked,
        })
    }

    /// Names the file of the server's certificate chain (for `/metrics`).
    pub fn set_server_cert_file(&self, path: std::path::PathBuf) {
        if let Ok(mut p) = self.server_cert.lock() {
            *p = Some(path);
        }
    }

    /// Publishes the earliest expiry per kind of certificate to `/metrics`, as a gauge of
    /// Unix seconds: `trusted` (pinned and CA imports), `issued` (certificates this CA
    /// signed), `ca` (the authority's CA), `server` (the TLS server certificate). Valid,
    /// unrevoked certificates only; a kind with none has no line.
    fn publish_expiry(&self, app: &App) -> Result<(), Error> {
        let snap = app.store.read()?;
        let mut earliest: [(&str, Option<u64>); 4] = [
            ("trusted", None),
            ("issued", None),
            ("ca", None),
            ("server", None),
        ];
        let mut note = |i: usize, t: u64| {
            let slot = &mut earliest[i].1;
            *slot = Some(slot.map_or(t, |s| s.min(t)));
        };
        let revoked = self.revoked.load();
        for r in snap.certificates()? {
            let live = r.state == CertificateState::Valid
                && fingerprint_bytes(&r.fingerprint).is_none_or(|fp| !revoked.contains(&fp));
            let slot = match r.kind {
                CertificateKind::Trusted | CertificateKind::TrustedCa => 0,
                CertificateKind::Agent => 1,
                CertificateKind::Authority => 2,
                CertificateKind::Server => 3,
            };
            if live {
                note(slot, r.not_after);
            }
        }
        let leaf_expiry = |p: &Path| -> Option<u64> {
            let certs = tls::load_certs(p).ok()?;
            Some(CertInfo::parse(certs.into_iter().next()?).ok()?.not_after)
        };
        if let Some(t) = leaf_expiry(&tls::CertFiles::in_dir(&app.store.paths().dir).ca_cert) {
            note(2, t);
        }
        let server = self.server_cert.lock().ok().and_then(|p| p.clone());
        if let Some(t) = server.as_deref().and_then(leaf_expiry) {
            note(3, t);
        }
        let name = "latchkey_certificate_earliest_expiry_seconds";
        let mut lines = format!(
            "# HELP {name} When the first valid certificate of each kind expires (Unix seconds).\n\
             # TYPE {name} gauge\n"
        );
        for (kind, t) in earliest {
            if let Some(t) = t {
                lines.push_str(&format!("{name}{{kind=\"{kind}\"}} {t}\n"));
            }
        }
        app.metrics.set_section("certificates", lines);
        Ok(())
    }

    /// Whether the certificate a token is bound to (its `cnf.x5t#S256`, base64url SHA-256)
    /// is revoked. A lookup in memory: this sits on every verification of a bound token.
    pub fn binding_revoked(&self, x5t_s256: &str) -> bool {
        let mut fp = [0u8; 32];
        match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(x5t_s256, &mut fp) {
            Ok(32) => self.revoked.load().contains(&fp),
            // Not a SHA-256: names no certificate this authority could have bound.
            _ => false,
        }
    }

    /// Rebuilds the revoked set and, with mutual TLS on, the TLS trust store from
    /// [`TrustState::material`].
    pub fn refresh(&self, app: &App) -> Result<(), Error> {
        let result = match &app.trust {
            Some(trust) => self.rebuild(app, trust),
            None => self
                .material(app)
                .map(|m| self.revoked.store(Arc::new(m.revoked))),
        };
        // After the swaps, and also after a rebuild that failed half-way: no verdict from
        // before this point counts any more.
        self.generation.fetch_add(1, Ordering::Release);
        self.verified.clear();
        result?;
        self.publish_expiry(app)
    }

    fn rebuild(&self, app: &App, trust: &TrustStore) -> Result<(), Error> {
        let m = self.material(app)?;
        // Revocations first: a certificate that was just revoked and also stops being an
        // anchor must not verify in between.
        trust.replace_revoked(m.revoked.iter().copied());
        trust.replace_pins(
            m.pins
                .iter()
                .filter_map(|p| Some((fingerprint_bytes(&p.fingerprint)?, p.not_after))),
        );
        trust.replace_anchors(m.anchors.iter().map(|a| a.der.clone()).collect())?;
        self.revoked.store(Arc::new(m.revoked));
        Ok(())
    }

    /// The authority CA's CRL (DER): the certificates it issued that are revoked and not
    /// yet expired. Signed on demand and reused until the trust changes (any certificate op
    /// bumps the generation) or it is [`CRL_RESIGN`] old, so serving it without authentication
    /// costs one signature per change, not per request.
    pub fn crl(&self, app: &App) -> Result<Arc<[u8]>, Error> {
        let generation = self.generation.load(Ordering::Acquire);
        let now = app.now();
        if let Ok(cached) = self.crl.lock()
            && let Some(c) = cached.as_ref()
            && c.generation == generation
            && now < c.signed_at.saturating_add(CRL_RESIGN)
        {
            return Ok(c.der.clone());
        }
        let der: Arc<[u8]> = build_crl(app, now)?.into();
        if let Ok(mut cached) = self.crl.lock() {
            *cached = Some(SignedCrl {
                generation,
                signed_at: now,
                der: der.clone(),
            });
        }
        Ok(der)
    }

    /// Re-verifies a client chain against the current trust (revocations, removed anchors,
    /// expiry): a live connection outlives its handshake. The same rules as the handshake:
    /// a pinned certificate is itself, anything else chains to a CA trusted on purpose.
    ///
    /// A chain that verified is remembered until the trust changes (any rebuild) or its first
    /// certificate expires, so a keep-alive connection pays for path building and signature
    /// checks once, not on every request.
    pub fn verify_chain(&self, app: &App, chain: &[CertificateDer<'static>]) -> Result<(), Error> {
        let refused = |why: &str| -> Error {
            ApiError::InvalidClient(format!("client certificate refused: {why}")).into()
        };
        let (ee, rest) = chain
            .split_first()
            .ok_or_else(|| refused("no certificate"))?;
        // Read before the stores: a rebuild bumps it only after swapping them, so a verdict is
        // never filed under a generation newer than the trust it was checked against.
        let generation = self.generation.load(Ordering::Acquire);
        let now = UnixTime::now();
        let key = chain_key(chain);
        if let Some(entry) = self.verified.get(&key) {
            let v = entry.value();
            if v.generation == generation && now.as_secs() < v.until {
                return Ok(());
            }
        }
        let store = app
            .trust
            .clone()
            .ok_or_else(|| refused("mutual TLS is off"))?;
        store
            .verifier()
            .verify_client_cert(ee, rest, now)
            .map_err(|e| refused(&e.to_string()))?;
        if let Some(until) = earliest_expiry(chain) {
            if self.verified.len() >= VERIFIED_CAP {
                self.verified.clear();
            }
            self.verified.insert(key, Verdict { generation, until });
        }
        Ok(())
    }
}

/// Signs a CRL of the revoked, unexpired certificates the data directory's CA issued. A
/// revocation by fingerprint is dated when it was recorded; a revocation by alias (the store
/// keeps no time for it) is dated when the certificate was issued, which is never later than
/// the truth.
fn build_crl(app: &App, now: u64) -> Result<Vec<u8>, Error> {
    let dir = &app.store.paths().dir;
    if !tls::CertFiles::in_dir(dir).ca_cert.exists() {
        return Err(ApiError::NotFound("this server has no CA of its own".into()).into());
    }
    let signer = CaSigner::load(dir, app.store.master_key())?;
    let ca_der = pem_chain(signer.cert_pem())?
        .into_iter()
        .next()
        .ok_or_else(|| bad("no CA certificate"))?
        .der;
    let (_, ca) = X509Certificate::from_der(ca_der.as_ref())
        .map_err(|e| bad(format!("CA certificate: {e}")))?;
    let snap = app.store.read()?;
    let dated: std::collections::HashMap<String, u64> = snap
        .revocations()?
        .into_iter()
        .filter(|r| r.kind == RevocationKind::Certificate)
        .map(|r| (r.id, r.revoked_at))
        .collect();
    let time = |secs: u64| {
        x509_parser::time::ASN1Time::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
            .map(|t| t.to_datetime())
            .map_err(|e| bad(format!("time {secs}: {e}")))
    };
    let mut revoked_certs = Vec::new();
    for r in snap.certificates()? {
        let at = match (dated.get(&r.fingerprint), r.state) {
            (Some(&at), _) => at,
            (None, CertificateState::Revoked) => r.created_at,
            (None, CertificateState::Valid) => continue,
        };
        if r.not_after < now {
            continue;
        }
        let Ok((_, cert)) = X509Certificate::from_der(&r.der) else {
            continue;
        };
        if cert.issuer().as_raw() != ca.subject().as_raw() {
            continue;
        }
        revoked_certs.push(rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(cert.raw_serial()),
            revocation_time: time(at)?,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let number = now.to_be_bytes();
    // Seconds since 1970 increase, so each CRL's number is larger than the last (RFC 5280
    // §5.2.3); leading zero bytes trimmed, the top bit is clear, so it is positive.
    let first = number.iter().position(|b| *b != 0).unwrap_or(7);
    let params = rcgen::CertificateRevocationListParams {
        this_update: time(now)?,
        next_update: time(now.saturating_add(CRL_VALIDITY))?,
        crl_number: rcgen::SerialNumber::from_slice(&number[first..]),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(&signer.issuer()?)
        // The CA's own certificate forbids it (no cRLSign): the operator's to fix, not the
        // client's.
        .map_err(|e| Error::Config(format!("cannot sign the CRL with the CA: {e}")))?;
    Ok(crl.der().to_vec())
}

/// What a verdict is filed under: every certificate of the chain.
fn chain_key(chain: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    for c in chain {
        // Length-prefixed, so no two chains hash the same bytes.
        h.update((c.len() as u64).to_be_bytes());
        h.update(c.as_ref());
    }
    h.finalize().into()
}

/// When the first certificate of `chain` expires (Unix seconds); `None` if one does not parse.
fn earliest_expiry(chain: &[CertificateDer<'_>]) -> Option<u64> {
    chain
        .iter()
        .map(|c| {
            let (_, cert) = X509Certificate::from_der(c.as_ref()).ok()?;
            u64::try_from(cert.validity().not_after.timestamp()).ok()
        })
        .try_fold(u64::MAX, |min, t| Some(min.min(t?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An issue request that only sets the lifetime.
    fn valid_for(days: u32) -> IssueRequest {
        IssueRequest {
            common_name: None,
            sans: vec![],
            days,
            usages: vec![],
        }
    }

    fn signer() -> CaSigner {
        let (c, k) = new_ca("Test CA", 1).unwrap();
        CaSigner::from_pem(&c, &k).unwrap()
    }

    #[test]
    fn verdicts_are_filed_under_the_whole_chain() {
        let ca = signer();
        let req = valid_for(30);
        let leaf = |cn: &str| {
            let (_key, csr) = key_and_csr(cn, &[]).unwrap();
            ca.sign_csr(&csr, &req).unwrap().der
        };
        let (a, b) = (leaf("a"), leaf("b"));
        let key = |chain: &[CertificateDer<'static>]| chain_key(chain);
        let one = [a.clone()];
        let two = [a.clone(), b.clone()];
        // The same bytes, wherever they come from, find the same verdict.
        assert_eq!(key(&one), key(&[CertificateDer::from(a.to_vec())]));
        assert_ne!(key(&one), key(&two), "every certificate is part of the key");
        assert_ne!(key(&two), key(&[b.clone(), a.clone()]), "in order");
        // Lengths are hashed too: moving bytes between certificates changes the key.
        let joined = CertificateDer::from([a.as_ref(), b.as_ref()].concat());
        assert_ne!(key(&two), key(&[joined]));
    }

    #[test]
    fn a_verdict_lasts_until_the_first_certificate_of_the_chain_expires() {
        let (ca_pem, ca_key) = new_ca("Test CA", 1).unwrap();
        let ca = CaSigner::from_pem(&ca_pem, &ca_key).unwrap();
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
        let ca_expiry = CertInfo::parse(ca_der.clone()).unwrap().not_after;
        let (_key, csr) = key_and_csr("agent", &[]).unwrap();
        let leaf = ca.sign_csr(&csr, &valid_for(3)).unwrap();
        assert!(leaf.not_after < ca_expiry);
        assert_eq!(
            earliest_expiry(&[leaf.der.clone(), ca_der.clone()]),
            Some(leaf.not_after)
        );
        assert_eq!(earliest_expiry(&[ca_der]), Some(ca_expiry));
        // Something that does not parse is never cached.
        let junk = CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]);
        assert_eq!(earliest_expiry(&[leaf.der, junk]), None);
    }

    #[test]
    fn csr_becomes_a_client_certificate_that_is_never_a_ca() {
        let ca = signer();
        let (_key, csr) = key_and_csr("agent-1", &["agent-1.example".into()]).unwrap();
        let req = valid_for(30);
        let cert = ca.sign_csr(&csr, &req).unwrap();
        assert_eq!(cert.subject, "CN=agent-1");
        assert_eq!(cert.issuer, "CN=Test CA");
        assert_eq!(cert.sans, vec!["dns:agent-1.example".to_owned()]);
        assert!(!cert.is_ca);
        assert!(cert.not_after > cert.not_before + 29 * 86_400);
        assert_eq!(cert.fingerprint.len(), 64);
        assert_eq!(cert.thumbprint().len(), 43);

        // A CSR asking to be a CA still yields a leaf.
        let key = new_key().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["evil".to_owned()]).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let csr = p.serialize_request(&key).unwrap().pem().unwrap();
        let cert = ca.sign_csr(&csr, &req).unwrap();
        assert!(!cert.is_ca);
    }

    #[test]
    fn clear_errors_for_bad_input() {
        let ca = signer();
        let req = valid_for(30);
        let msg = |r: Result<CertInfo, Error>| r.unwrap_err().to_string();
        assert!(msg(ca.sign_csr("nonsense", &req)).contains("CSR"));
        assert!(
            pem_chain("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .unwrap_err()
                .to_string()
                .contains("malformed")
        );
        assert!(
            pem_chain("")
                .unwrap_err()
                .to_string()
                .contains("no certificate")
        );
        let (_k, csr) = key_and_csr("a", &[]).unwrap();
        let zero = IssueRequest { days: 0, ..req };
        assert!(msg(ca.sign_csr(&csr, &zero)).contains("days"));

        // An expired certificate says so.
        let chain = pem_chain(ca.cert_pem()).unwrap();
        let info = &chain[0];
        assert!(info.check_current(info.not_after + 1).is_err());
        info.check_current(info.not_before + 1).unwrap();

        // A CA key that does not belong to the certificate.
        let (c, _) = new_ca("A", 1).unwrap();
        let (_, k2) = new_ca("B", 1).unwrap();
        assert!(
            CaSigner::from_pem(&c, &k2)
                .unwrap_err()
                .to_string()
                .contains("does not belong")
        );
    }

    #[test]
    fn pkcs12_round_trip_and_wrong_password() {
        let ca = signer();
        let (key, csr) = key_and_csr("agent-p12", &[]).unwrap();
        let cert = ca.sign_csr(&csr, &valid_for(1)).unwrap();
        let p12 = to_pkcs12("agent", std::slice::from_ref(&cert.der), &key, "s3cret").unwrap();
        let (certs, back) = from_pkcs12(&p12, "s3cret").unwrap();
        assert_eq!(certs[0].fingerprint, cert.fingerprint);
        assert!(back.unwrap().contains("PRIVATE KEY"));
        assert!(
            from_pkcs12(&p12, "wrong")
                .unwrap_err()
                .to_string()
                .contains("wrong password")
        );
        assert!(to_pkcs12("agent", &[cert.der], &key, "").is_err());
    }

    #[test]
    fn import_formats_are_told_by_content() {
        let ca = signer();
        let (key, csr) = key_and_csr("agent", &[]).unwrap();
        let cert = ca.sign_csr(&csr, &valid_for(1)).unwrap();
        let p12 = to_pkcs12("a", std::slice::from_ref(&cert.der), &key, "pw").unwrap();
        let check = |bytes: &[u8], format: Option<ImportFormat>| {
            assert_eq!(ImportFormat::detect(bytes), format);
        };
        check(cert.pem().as_bytes(), Some(ImportFormat::Pem));
        check(
            format!("\n  {}", cert.pem()).as_bytes(),
            Some(ImportFormat::Pem),
        );
        check(cert.der.as_ref(), Some(ImportFormat::Der));
        check(&p12, Some(ImportFormat::Pkcs12));
        check(
            &[0xFE, 0xED, 0xFE, 0xED, 0, 0, 0, 2],
            Some(ImportFormat::Jks),
        );
        check(b"", None);
        check(b"hello", None);
        check(&[0x30], None);
        check(&[0x30, 0x84], None);

        for (bytes, password) in [
            (cert.pem().into_bytes(), None),
            (cert.der.to_vec(), None),
            (p12.clone(), Some("pw")),
        ] {
            let got = read_certificates(&bytes, password, "f").unwrap();
            assert_eq!(got[0].fingerprint, cert.fingerprint);
        }
        let msg = |bytes: &[u8], pw| {
            read_certificates(bytes, pw, "store.jks")
                .unwrap_err()
                .to_string()
        };
        assert!(msg(&p12, Some("no")).contains("wrong password"));
        assert!(msg(&[0xFE, 0xED, 0xFE, 0xED, 0, 0, 0, 2], None).contains(
            "keytool -importkeystore -srckeystore store.jks -destkeystore store.jks.p12 \
                 -deststoretype pkcs12"
        ));
        // A truncated DER certificate is a malformed certificate, not a PKCS#12 problem.
        let cut = &cert.der[..cert.der.len() - 10];
        let e = msg(cut, None);
        assert!(e.contains("malformed certificate"), "{e}");
        assert!(msg(b"hello", None).contains("expected PEM, DER, or PKCS#12"));
    }

    #[test]
    fn usages_read_back_from_what_was_issued() {
        let ca = signer();
        for usages in [
            vec![Usage::Client],
            vec![Usage::Server],
            vec![Usage::Encryption],
            vec![Usage::Client, Usage::Server],
            vec![Usage::Client, Usage::Encryption],
        ] {
            let (_key, csr) = key_and_csr("u", &["u.example".into()]).unwrap();
            let req = IssueRequest {
                usages: usages.clone(),
                ..valid_for(1)
            };
            let cert = ca.sign_csr(&csr, &req).unwrap();
            assert_eq!(Usage::of(&cert.der), usages);
        }
        // Server certificates need a SAN.
        let (_key, csr) = key_and_csr("u", &[]).unwrap();
        let req = IssueRequest {
            usages: vec![Usage::Server],
            ..valid_for(1)
        };
        assert!(
            ca.sign_csr(&csr, &req)
                .unwrap_err()
                .to_string()
                .contains("subject alternative name")
        );
        assert_eq!(Usage::of(b"junk"), vec![Usage::Client]);
    }

    #[test]
    fn fingerprints_parse_in_openssl_and_plain_form() {
        let fp = fingerprint_hex(b"x");
        assert_eq!(parse_fingerprint(&fp), Some(fp.clone()));
        let colons: Vec<String> = fp
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_uppercase())
            .collect();
        assert_eq!(parse_fingerprint(&colons.join(":")), Some(fp.clone()));
        assert_eq!(parse_fingerprint("abc"), None);
        assert_eq!(fingerprint_bytes(&fp).map(|b| b.len()), Some(32));
    }

    /// A certificate whose subject is `dn` (rcgen writes one RDN per entry, in order).
    fn cert_with_subject(dn: &[(rcgen::DnType, &str)]) -> CertInfo {
        let key = new_key().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (ty, v) in dn {
            params.distinguished_name.push(ty.clone(), *v);
        }
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        signer().sign_csr(&csr, &valid_for(1)).unwrap()
    }

    fn dn(rdns: &[&[(&str, &str)]]) -> Dn {
        Dn(rdns
            .iter()
            .map(|rdn| {
                let mut set: Vec<(String, String)> = rdn
                    .iter()
                    .map(|(o, v)| ((*o).to_owned(), (*v).to_owned()))
                    .collect();
                set.sort();
                set
            })
            .collect())
    }

    const CN: &str = "2.5.4.3";
    const O: &str = "2.5.4.10";
    const C: &str = "2.5.4.6";

    #[test]
    fn rfc_4514_strings_parse_into_rdns_in_certificate_order() {
        let check = |text: &str, expect: Dn| assert_eq!(Dn::parse(text).unwrap(), expect, "{text}");
        check("CN=a", dn(&[&[(CN, "a")]]));
        check("cn = a", dn(&[&[(CN, "a")]]));
        check("2.5.4.3=a", dn(&[&[(CN, "a")]]));
        // Most specific first in the string, last in the certificate.
        check(
            "CN=a,O=b,C=DE",
            dn(&[&[(C, "DE")], &[(O, "b")], &[(CN, "a")]]),
        );
        check("CN=a, O=b", dn(&[&[(O, "b")], &[(CN, "a")]]));
        // Escapes belong to the value.
        check("CN=a\\, O=b", dn(&[&[(CN, "a, O=b")]]));
        check("CN=a\\2C O=b", dn(&[&[(CN, "a, O=b")]]));
        check("CN=a\\+b", dn(&[&[(CN, "a+b")]]));
        check("CN=\\ a\\ ", dn(&[&[(CN, " a ")]]));
        check("CN=a  ", dn(&[&[(CN, "a")]]));
        check("CN=caf\\C3\\A9", dn(&[&[(CN, "café")]]));
        check("CN=a=b", dn(&[&[(CN, "a=b")]]));
        // A multi-valued RDN is a set.
        check("CN=a+O=b", dn(&[&[(O, "b"), (CN, "a")]]));
        assert_eq!(
            Dn::parse("O=b+CN=a").unwrap(),
            Dn::parse("CN=a+O=b").unwrap()
        );
        assert_ne!(
            Dn::parse("CN=a+O=b").unwrap(),
            Dn::parse("CN=a,O=b").unwrap()
        );

        for bad in [
            "", "CN", "CN=a,", "=a", "XX=a", "1.=a", "CN=#0403", "CN=a;O=b", "CN=a\\", "CN=a\\x",
            "CN=a\\4", "CN=\\FF", "CN=a\"b",
        ] {
            assert!(Dn::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn subjects_render_as_rfc_4514_and_parse_back_to_the_same_rdns() {
        use rcgen::DnType;
        for subject in [
            &[(DnType::CommonName, "agent-1")][..],
            &[
                (DnType::CountryName, "DE"),
                (DnType::OrganizationName, "Acme, Inc."),
                (DnType::CommonName, "a+b"),
            ][..],
            &[(DnType::CommonName, "a, O=b")][..],
            &[(DnType::CommonName, " #lead")][..],
        ] {
            let cert = cert_with_subject(subject);
            let parsed = Dn::parse(&cert.subject).unwrap();
            assert_eq!(Some(&parsed), cert.subject_dn.as_ref(), "{}", cert.subject);
        }
        let cert = cert_with_subject(&[
            (DnType::OrganizationName, "Acme"),
            (DnType::CommonName, "x"),
        ]);
        assert_eq!(cert.subject, "CN=x,O=Acme");
        assert_eq!(cert.common_name(), Some("x"));
    }

    /// Regression: matching used to compare unescaped text, so a certificate whose one CN was
    /// `a, O=b` matched the DN `CN=a,O=b` of another agent.
    #[test]
    fn a_comma_inside_a_value_is_not_an_rdn_boundary() {
        use rcgen::DnType;
        let forged = cert_with_subject(&[(DnType::CommonName, "a, O=b")]);
        let real = cert_with_subject(&[(DnType::OrganizationName, "b"), (DnType::CommonName, "a")]);
        let victim = Dn::parse("CN=a,O=b").unwrap();
        assert_eq!(real.subject_dn.as_ref(), Some(&victim));
        assert_ne!(forged.subject_dn.as_ref(), Some(&victim));
        assert_eq!(forged.subject_dn, Some(Dn::parse("CN=a\\, O=b").unwrap()));
        // Nor does a `+` inside a value make a multi-valued RDN.
        let plus = cert_with_subject(&[(DnType::CommonName, "a+O=b")]);
        assert_ne!(plus.subject_dn, Some(Dn::parse("CN=a+O=b").unwrap()));
    }
}
