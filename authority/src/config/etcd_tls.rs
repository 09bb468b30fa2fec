//! TLS to etcd (`--etcd-ca`, `--etcd-cert`, `--etcd-key`): read and checked once at start,
//! then handed to every etcd connection of the node (the engine's, membership's, import's,
//! backup's), so none of them can fall back to plain gRPC.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

/// The three flags, for commands other than `serve` (whose [`super::Settings`] holds them
/// too, so that they can also come from the settings file).
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct EtcdTlsArgs {
    /// PEM CA certificate(s) etcd's server certificate chains to; connects to etcd over TLS.
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// PEM client certificate for etcd's `--client-cert-auth` (with --etcd-key and --etcd-ca).
    #[arg(long, value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// PEM private key of --etcd-cert.
    #[arg(long, value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
}

impl EtcdTlsArgs {
    /// Reads and checks the files: see [`EtcdTls::load`].
    pub fn load(&self) -> Result<EtcdTls, String> {
        EtcdTls::load(
            self.etcd_ca.as_deref(),
            self.etcd_cert.as_deref(),
            self.etcd_key.as_deref(),
        )
    }
}

/// How a node reaches etcd: plain gRPC (the default), or TLS with a trusted CA and,
/// optionally, a client certificate. Its `Debug` never shows the key.
#[derive(Clone, Default)]
pub struct EtcdTls {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdTls")
            .field("tls", &self.ca.is_some())
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl EtcdTls {
    /// Reads the files: a CA switches every connection to TLS; a client certificate and key
    /// come together and only with a CA. Each file must hold what it is named for (the key
    /// must match the certificate), so a wrong file is refused at start, by name, rather than
    /// showing up as a failed handshake.
    pub fn load(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<EtcdTls, String> {
        let read =
            |p: &Path| std::fs::read(p).map_err(|e| format!("etcd TLS {}: {e}", p.display()));
        let certs = |p: &Path, bytes: &[u8]| -> Result<Vec<CertificateDer<'static>>, String> {
            let certs = CertificateDer::pem_slice_iter(bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("etcd TLS {}: not a PEM certificate: {e}", p.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "etcd TLS {}: holds no PEM certificate",
                    p.display()
                ));
            }
            Ok(certs)
        };
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(_), None) => return Err("--etcd-cert needs --etcd-key".into()),
            (None, Some(_)) => return Err("--etcd-key needs --etcd-cert".into()),
            (Some(c), Some(k)) => Some((c, k)),
        };
        let Some(ca) = ca else {
            if identity.is_some() {
                return Err("--etcd-cert and --etcd-key need --etcd-ca (they are for TLS)".into());
            }
            return Ok(EtcdTls::default());
        };
        let ca_pem = read(ca)?;
        let roots = certs(ca, &ca_pem)?;
        let mut store = rustls::RootCertStore::empty();
        let (added, _) = store.add_parsable_certificates(roots);
        if added == 0 {
            return Err(format!(
                "etcd TLS {}: holds no usable CA certificate",
                ca.display()
            ));
        }
        let identity = match identity {
            None => None,
            Some((c, k)) => {
                let cert_pem = read(c)?;
                let chain = certs(c, &cert_pem)?;
                let key_pem = Zeroizing::new(read(k)?);
                let der = PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| format!("etcd TLS {}: not a PEM private key: {e}", k.display()))?;
                let provider = rustls::crypto::aws_lc_rs::default_provider();
                let signing = provider
                    .key_provider
                    .load_private_key(der)
                    .map_err(|e| format!("etcd TLS {}: unusable private key: {e}", k.display()))?;
                // Only a proven mismatch is refused: a certificate webpki cannot parse (an
                // X.509 v1 one, say) may still be one etcd accepts.
                if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
                    rustls::sign::CertifiedKey::new(chain, signing).keys_match()
                {
                    return Err(format!(
                        "etcd TLS {} does not match the certificate in {}",
                        k.display(),
                        c.display()
                    ));
                }
                Some((cert_pem, key_pem))
            }
        };
        Ok(EtcdTls {
            ca: Some(ca_pem),
            identity,
        })
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.ca.is_some()
    }

    /// The URL of an endpoint (`HOST:PORT`).
    pub fn url(&self, endpoint: &str) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{endpoint}")
    }

    /// `options` with this TLS (unchanged for plain gRPC).
    #[cfg(feature = "etcd")]
    pub fn apply(&self, options: etcd_client::ConnectOptions) -> etcd_client::ConnectOptions {
        let Some(ca) = &self.ca else {
            return options;
        };
        let mut tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(ca.clone()));
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(etcd_client::Identity::from_pem(
                cert.clone(),
                key.as_slice(),
            ));
        }
        options.with_tls(tls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CaSigner, IssueRequest, Usage, key_and_csr, new_ca};

    /// A CA (`ca.pem`, `ca.key`), and a client certificate and key it signed (`client.pem`,
    /// `client.key`), written to `dir`.
    fn pki(dir: &Path) {
        let (ca_pem, ca_key) = new_ca("test etcd CA", 1).unwrap();
        let (client_key, csr) = key_and_csr("node", &[]).unwrap();
        let client = CaSigner::from_pem(&ca_pem, &ca_key)
            .unwrap()
            .sign_csr(
                &csr,
                &IssueRequest {
                    common_name: None,
                    sans: Vec::new(),
                    days: 2,
                    usages: vec![Usage::Client],
                },
            )
            .unwrap();
        for (name, text) in [
            ("ca.pem", ca_pem.as_str()),
            ("ca.key", ca_key.as_str()),
            ("client.pem", client.pem().as_str()),
            ("client.key", client_key.as_str()),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    #[test]
    fn files_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        pki(dir.path());
        let p = |n: &str| dir.path().join(n);
        let load = |ca: Option<&str>, cert: Option<&str>, key: Option<&str>| {
            EtcdTls::load(
                ca.map(p).as_deref(),
                cert.map(p).as_deref(),
                key.map(p).as_deref(),
            )
        };
        // Nothing: plain gRPC.
        let plain = load(None, None, None).unwrap();
        assert!(!plain.is_tls());
        assert_eq!(plain.url("127.0.0.1:2379"), "http://127.0.0.1:2379");
        // A CA: TLS, with or without a client certificate.
        let tls = load(Some("ca.pem"), None, None).unwrap();
        assert_eq!(tls.url("127.0.0.1:2379"), "https://127.0.0.1:2379");
        let mtls = load(Some("ca.pem"), Some("client.pem"), Some("client.key")).unwrap();
        assert!(mtls.is_tls() && mtls.identity.is_some());
        // The key stays out of `Debug` (and so out of logs).
        let shown = format!("{mtls:?}");
        assert!(
            !shown.contains("PRIVATE") && !shown.contains("BEGIN"),
            "{shown}"
        );

        let err = |r: Result<EtcdTls, String>| r.unwrap_err();
        assert!(err(load(Some("ca.pem"), Some("client.pem"), None)).contains("--etcd-key"));
        assert!(err(load(Some("ca.pem"), None, Some("client.key"))).contains("--etcd-cert"));
        assert!(err(load(None, Some("client.pem"), Some("client.key"))).contains("need --etcd-ca"));
        // Missing or wrong files are named.
        let e = err(load(Some("nope.pem"), None, None));
        assert!(e.contains("nope.pem"), "{e}");
        let e = err(load(Some("client.key"), None, None));
        assert!(
            e.contains("client.key") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = err(load(Some("ca.pem"), Some("client.key"), Some("client.key")));
        assert!(e.contains("client.key") && e.contains("certificate"), "{e}");
        let e = err(load(Some("ca.pem"), Some("client.pem"), Some("client.pem")));
        assert!(e.contains("client.pem") && e.contains("private key"), "{e}");
        // A key that is not the certificate's.
        let e = err(load(Some("ca.pem"), Some("client.pem"), Some("ca.key")));
        assert!(e.contains("ca.key") && e.contains("does not match"), "{e}");
    }

    #[test]
    fn settings_take_the_files_from_flags_or_the_file() {
        let dir = tempfile::tempdir().unwrap();
        pki(dir.path());
        let ca = dir.path().join("ca.pem");
        let text = format!("etcd-ca = {:?}\n", ca.display().to_string());
        let file: super::super::Settings = toml::from_str(&text).unwrap();
        assert_eq!(file.etcd_ca.as_deref(), Some(ca.as_path()));
        let merged = super::super::Settings::default().merge(file);
        assert_eq!(merged.etcd_ca.as_deref(), Some(ca.as_path()));
        // Checked when resolved: TLS to etcd is for an etcd store only.
        let e = merged.resolve().unwrap_err().to_string();
        assert!(e.contains("etcd-ca needs --store etcd://"), "{e}");
        let half = super::super::Settings {
            etcd_cert: Some(dir.path().join("client.pem")),
            ..Default::default()
        };
        let e = half.resolve().unwrap_err().to_string();
        assert!(e.contains("--etcd-key"), "{e}");
    }
}
