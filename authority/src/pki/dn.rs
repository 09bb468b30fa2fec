//! Distinguished names: [`Dn`], an RFC 4514 string or a certificate's subject as RDNs.

use x509_parser::prelude::X509Name;

use super::*;
use crate::error::Error;

/// A distinguished name as RDNs in certificate (ASN.1) order, each RDN its attributes as
/// (dotted attribute type OID, value), sorted: RDNs are sets.
///
/// RFC 8705 `tls_client_auth_subject_dn` is an RFC 4514 string; it is parsed into this (with
/// its escapes) and compared with the certificate's parsed subject, never as text: `CN=a\,
/// O=b` (one RDN whose CN holds a comma) and `CN=a,O=b` (two RDNs) are different names.
/// Attribute types compare by OID (`cn`, `CN` and `2.5.4.3` are one type); values compare
/// exactly, without case folding, which never matches a name that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dn(pub(super) Vec<Vec<(String, String)>>);

/// Most RDNs in a configured DN.
pub(super) const MAX_RDNS: usize = 64;

/// RFC 4514 §3 short names (and a few common ones) and their OIDs; the first name of an OID is
/// the one shown.
pub(super) const ATTRIBUTE_TYPES: [(&str, &str); 20] = [
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

pub(super) fn attribute_name(oid: &str) -> Option<&'static str> {
    ATTRIBUTE_TYPES
        .iter()
        .find(|(_, o)| *o == oid)
        .map(|(n, _)| *n)
}

/// An attribute type: a known short name (any case) or a dotted OID.
pub(super) fn attribute_oid(text: &str) -> Result<String, String> {
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
pub(super) fn attribute_text(value: &x509_parser::der_parser::asn1_rs::Any<'_>) -> Option<String> {
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
pub(super) fn escape_dn_value(v: &str) -> String {
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
