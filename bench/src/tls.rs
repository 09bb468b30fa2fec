//! The client's rustls configuration: trust exactly the CA the user names (Latchkey writes
//! its own to `<data-dir>/ca.pem`), HTTP/1.1 over TLS 1.3 or 1.2.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::error::Error;

/// A client configuration trusting the certificates in the PEM file `ca`.
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| Error::Tls(format!("{}: {e}", ca.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| Error::Tls(format!("{}: {e}", ca.display())))?;
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
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The name the server's certificate must carry: the target's host (a name or an IP).
pub fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(host.to_owned()).map_err(|e| Error::Tls(format!("{host}: {e}")))
}
