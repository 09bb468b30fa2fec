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
//! **What is trusted.** The TLS layer's [`crate::tls::TrustStore`] is rebuilt from: the data
//! directory's CA and `--client-ca` files (the *base*), plus every `Trusted` (pinned) and
//! `TrustedCa` (anchor) certificate in the store that is valid and not revoked. Revoked
//! fingerprints are the `cert:` revocations plus certificates marked `Revoked`.
//! [`TrustState::refresh`] runs after every commit that changes any of that (off the store's
//! writer thread), before the request that caused it is answered, so the next handshake sees
//! it.
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

mod cert;
mod dn;
mod issue;
mod pkcs12;
mod trust;

pub use cert::*;
pub use dn::*;
pub use issue::*;
pub use pkcs12::*;
pub use trust::*;

use crate::error::{ApiError, Error};

/// Largest PEM or PKCS#12 input (a chain of a few certificates).
pub const MAX_CERT_INPUT: usize = 64 * 1024;
/// Most certificates in one PEM chain.
pub const MAX_CHAIN: usize = 8;
/// Longest validity an issued certificate may ask for.
pub const MAX_DAYS: u32 = 3 * 366;

fn bad(msg: impl Into<String>) -> Error {
    ApiError::InvalidRequest(msg.into()).into()
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    use super::cert::fingerprint_bytes;
    use super::issue::new_key;
    use super::trust::{chain_key, earliest_expiry};
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
