//! The client's rustls configuration: trust exactly the CA the user names (Latchkey writes
//! its own to `<data-dir>/ca.pem`), HTTP/1.1 over TLS 1.3 or 1.2, optionally a client
//! certificate (mutual TLS) and optionally no session resumption, so that a run with a new
//! connection per request measures full handshakes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::error::Error;

/// How the client does TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM file of the CA(s) the server's certificate must chain to.
    pub ca: PathBuf,
    /// Client certificate chain and key (PEM files) to present, for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
    pub resumption: Resumption,
}

/// Whether the client resumes TLS sessions (tickets / session ids) on new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumption {
    /// rustls's default: an in-memory cache, so reconnections skip the full handshake.
    On,
    /// Every connection does a full handshake (certificate, signature, key exchange).
    Off,
}

/// The rustls client configuration `tls` describes.
pub fn client_config(tls: &ClientTls) -> Result<Arc<rustls::ClientConfig>, Error> {
    let ca = &tls.ca;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| Error::Tls(format!("{}: {e}", ca.display())))?;
    }
    if roots.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no certificate in the file",
            ca.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match &tls.identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certs(cert)?;
            if chain.is_empty() {
                return Err(Error::Tls(format!(
                    "{}: no certificate in the file",
                    cert.display()
                )));
            }
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| Error::Tls(format!("{}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Tls(format!("client certificate: {e}")))?
        }
    };
    if tls.resumption == Resumption::Off {
        config.resumption = rustls::client::Resumption::disabled();
    }
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    CertificateDer::pem_file_iter(path)
        .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?
        .map(|c| c.map_err(|e| Error::Tls(format!("{}: {e}", path.display()))))
        .collect()
}

/// The name the server's certificate must carry: the target's host (a name or an IP).
pub fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(host.to_owned()).map_err(|e| Error::Tls(format!("{host}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_authority::pki;

    /// A CA and a client certificate issued by it (what `latchkey cert issue` writes).
    fn material(dir: &Path) -> ClientTls {
        let (ca_pem, ca_key) = pki::new_ca("loadgen test CA", 1).unwrap();
        let signer = pki::CaSigner::from_pem(&ca_pem, &ca_key).unwrap();
        let (key_pem, csr) = pki::key_and_csr("lg-agent", &[]).unwrap();
        let issued = signer
            .sign_csr(
                &csr,
                &pki::IssueRequest {
                    common_name: None,
                    sans: vec![],
                    days: 1,
                    usages: vec![],
                },
            )
            .unwrap();
        let (ca, cert, key) = (
            dir.join("ca.pem"),
            dir.join("agent.pem"),
            dir.join("agent.key"),
        );
        std::fs::write(&ca, &ca_pem).unwrap();
        std::fs::write(&cert, issued.pem()).unwrap();
        std::fs::write(&key, key_pem.as_str()).unwrap();
        ClientTls {
            ca,
            identity: Some((cert, key)),
            resumption: Resumption::On,
        }
    }

    #[test]
    fn identity_and_resumption_follow_the_options() {
        let dir = tempfile::tempdir().unwrap();
        let mut tls = material(dir.path());
        let with_cert = client_config(&tls).unwrap();
        assert!(with_cert.client_auth_cert_resolver.has_certs());
        assert_eq!(with_cert.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(format!("{:?}", with_cert.resumption).contains("Memory"));

        tls.identity = None;
        tls.resumption = Resumption::Off;
        let plain = client_config(&tls).unwrap();
        assert!(!plain.client_auth_cert_resolver.has_certs());
        // rustls's "disabled" resumption is a store that holds no sessions.
        let disabled = format!("{:?}", rustls::client::Resumption::disabled());
        assert_eq!(format!("{:?}", plain.resumption), disabled);
        assert_ne!(format!("{:?}", with_cert.resumption), disabled);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let good = material(dir.path());
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let with_ca = |ca: &Path| ClientTls {
            ca: ca.to_owned(),
            identity: None,
            resumption: Resumption::On,
        };
        let err = client_config(&with_ca(&empty)).unwrap_err().to_string();
        assert!(err.contains("no certificate"), "{err}");
        let err = client_config(&with_ca(&dir.path().join("missing.pem")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.pem"), "{err}");
        // A certificate file as the key: no private key in it.
        let (cert, _) = good.identity.clone().unwrap();
        let swapped = ClientTls {
            identity: Some((cert.clone(), cert)),
            ..good
        };
        let err = client_config(&swapped).unwrap_err().to_string();
        assert!(err.contains("agent.pem"), "{err}");
    }
}
