//! PEM armour: one block, label and DER body, bounded before decoding.

use crate::b64;
use crate::error::{Error, MalformedError};

/// Largest PEM document we parse.
const MAX_PEM_LEN: usize = 8 * 1024;

/// Parses one PEM block: returns its label and DER body. Accepts the one-line form.
pub(crate) fn pem_decode(pem: &str) -> Result<(String, Vec<u8>), Error> {
    if pem.len() > MAX_PEM_LEN {
        return Err(MalformedError::TooLarge { limit: MAX_PEM_LEN }.into());
    }
    let pem = pem.trim();
    let rest = pem.strip_prefix("-----BEGIN ").ok_or(MalformedError::Pem)?;
    let (label, rest) = rest.split_once("-----").ok_or(MalformedError::Pem)?;
    let end = format!("-----END {label}-----");
    let body = rest.strip_suffix(end.as_str()).ok_or(MalformedError::Pem)?;
    if label.is_empty() || body.contains('-') || body.contains(':') {
        // No nested armour and no RFC 1421 headers (encrypted PEM is not supported).
        return Err(MalformedError::Pem.into());
    }
    let compact: Vec<u8> = body.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let der = b64::decode_standard(&compact).map_err(|_| MalformedError::Pem)?;
    Ok((label.to_owned(), der))
}

/// PEM with 64-column lines and a trailing newline.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = b64::encode_standard(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        // Standard base64 is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
