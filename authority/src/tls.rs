//! TLS for the server: rustls configurations, the mutual-TLS trust store, and the
//! certificates a data directory gets on first run.
//!
//! Defaults follow the issue: TLS 1.3 and 1.2 only, ALPN `http/1.1`, an ECDSA P-256 server key
//! (its handshake signs about 3× faster than RSA-2048), session resumption by tickets (TLS 1.3
//! and 1.2) plus a stateful cache for TLS 1.2 clients without ticket support.
//!
//! The [`TrustStore`] decides which client certificates are accepted. Its anchors and its set of
//! revoked fingerprints sit behind `ArcSwap`, so the `cert` commands can change them
//! while the server runs and the next handshake sees the change; requests on connections that
//! are already open can be re-checked with [`TrustStore::is_revoked`].

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use sha2::Digest as _;

use crate::error::Error;
use crate::store::MasterKey;

/// Stateful TLS 1.2 session cache entries (tickets cover the rest).
const SESSION_CACHE_SIZE: usize = 16 * 1024;

/// The certificate files of a data directory. Private keys are sealed under the master key
/// (`store::MasterKey::seal_file`): a copy of the directory without `master.key` cannot sign.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The local CA certificate: what clients must trust (printed on first run).
    pub ca_cert: PathBuf,
    /// The CA's private key, sealed.
    pub ca_key: PathBuf,
    /// The server certificate chain (leaf, then CA).
    pub server_cert: PathBuf,
    /// The server's private key, sealed.
    pub server_key: PathBuf,
    dir: PathBuf,
}

/// Seal purposes (associated data) of the two keys.
const CA_KEY: &str = "ca.key";
const SERVER_KEY: &str = "server.key";

impl CertFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key.sealed"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key.sealed"),
            dir: dir.to_path_buf(),
        }
    }

    /// Plain PEM keys as earlier releases wrote them (and the `*.old` copies `cert init
    /// --replace` kept), each with the sealed file it becomes and its seal purpose.
    fn plain_keys(&self) -> [(PathBuf, PathBuf, &'static str); 4] {
        let old = |p: &Path| {
            let mut s = p.as_os_str().to_owned();
            s.push(".old");
            PathBuf::from(s)
        };
        let (ca, server) = (self.dir.join("ca.key"), self.dir.join("server.key"));
        [
            (old(&ca), old(&self.ca_key), CA_KEY),
            (old(&server), old(&self.server_key), SERVER_KEY),
            (ca, self.ca_key.clone(), CA_KEY),
            (server, self.server_key.clone(), SERVER_KEY),
        ]
    }

    /// Seals the plain PEM private keys an earlier release left in the directory and removes
    /// them, so a data directory upgraded in place keeps its CA and server certificate.
    /// Returns the files sealed. Idempotent; a crash in between leaves the plain file, which
    /// the next start seals again.
    pub fn seal_plain_keys(&self, key: &MasterKey) -> Result<Vec<PathBuf>, Error> {
        let mut sealed = Vec::new();
        for (plain, target, purpose) in self.plain_keys() {
            let pem = match fs::read(&plain) {
                Ok(b) => zeroize::Zeroizing::new(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::Config(format!("{}: {e}", plain.display()))),
            };
            PrivateKeyDer::from_pem_slice(&pem)
                .map_err(|e| Error::Config(format!("{}: {e}", plain.display())))?;
            key.seal_file(purpose, &target, &pem)?;
            fs::remove_file(&plain)?;
            sealed.push(plain);
        }
        if !sealed.is_empty() {
            fs::File::open(&self.dir)?.sync_all()?;
        }
        Ok(sealed)
    }

    /// Seals `pem` as the CA's private key.
    pub fn seal_ca_key(&self, key: &MasterKey, pem: &str) -> Result<(), Error> {
        Ok(key.seal_file(CA_KEY, &self.ca_key, pem.as_bytes())?)
    }

    /// The CA's private key (PKCS#8 PEM).
    pub fn ca_key_pem(&self, key: &MasterKey) -> Result<zeroize::Zeroizing<String>, Error> {
        open_pem(key, CA_KEY, &self.ca_key)
    }

    /// The server's private key.
    pub fn server_key_der(&self, key: &MasterKey) -> Result<PrivateKeyDer<'static>, Error> {
        let pem = open_pem(key, SERVER_KEY, &self.server_key)?;
        PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| Error::Config(format!("{}: {e}", self.server_key.display())))
    }
}

fn open_pem(
    key: &MasterKey,
    purpose: &str,
    path: &Path,
) -> Result<zeroize::Zeroizing<String>, Error> {
    let secret = key.open_file(purpose, path).map_err(|e| match e {
        crate::store::StoreError::Io { source, .. } => {
            Error::Config(format!("{}: {source}", path.display()))
        }
        e => e.into(),
    })?;
    String::from_utf8(secret.expose().to_vec())
        .map(zeroize::Zeroizing::new)
        .map_err(|_| Error::Config(format!("{}: not a PEM key", path.display())))
}

/// What `ensure_certificates` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Nothing,
    ServerCertificate,
    CaAndServerCertificate,
}

/// Creates the local CA and an ECDSA P-256 server certificate in `dir` if they are missing.
/// The server certificate names `localhost`, `127.0.0.1`, `::1` and `extra_names`. Keys are
/// sealed under `key` (files of mode 0600); plain keys of earlier releases are sealed first.
pub fn ensure_certificates(
    dir: &Path,
    key: &MasterKey,
    extra_names: &[String],
) -> Result<(CertFiles, Created), Error> {
    let files = CertFiles::in_dir(dir);
    files.seal_plain_keys(key)?;
    let mut created = Created::Nothing;
    if !files.ca_cert.exists() {
        let ca_key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(cert_error)?;
        let params = ca_params()?;
        let cert = params.self_signed(&ca_key).map_err(cert_error)?;
        files.seal_ca_key(key, &zeroize::Zeroizing::new(ca_key.serialize_pem()))?;
        write_public(&files.ca_cert, cert.pem().as_bytes())?;
        let _ = fs::remove_file(&files.server_cert);
        created = Created::CaAndServerCertificate;
    }
    if !files.server_cert.exists() {
        let ca_pem = fs::read_to_string(&files.ca_cert)?;
        let ca_key = rcgen::KeyPair::from_pem(&files.ca_key_pem(key)?).map_err(cert_error)?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, &ca_key).map_err(cert_error)?;
        let server_key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(cert_error)?;
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        names.extend(
            extra_names
                .iter()
                .filter(|n| !names.contains(n))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let mut params = rcgen::CertificateParams::new(names).map_err(cert_error)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "latchkey server");
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, 2)?;
        let cert = params.signed_by(&server_key, &issuer).map_err(cert_error)?;
        let pem = zeroize::Zeroizing::new(server_key.serialize_pem());
        key.seal_file(SERVER_KEY, &files.server_key, pem.as_bytes())?;
        write_public(
            &files.server_cert,
            format!("{}{}", cert.pem(), ca_pem).as_bytes(),
        )?;
        if created == Created::Nothing {
            created = Created::ServerCertificate;
        }
    }
    Ok((files, created))
}

fn ca_params() -> Result<rcgen::CertificateParams, Error> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Latchkey local CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, 10)?;
    Ok(params)
}

/// Valid from yesterday (clock skew) for `years`.
fn set_validity(params: &mut rcgen::CertificateParams, years: i32) -> Result<(), Error> {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| Error::Config(e.to_string()))?
        .as_secs()
        / 86_400;
    let (y, m, d) = crate::http::date::civil_from_days(days as i64 - 1);
    let (y, m, d) = (y as i32, m as u8, d as u8);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    // 29 February does not exist in most target years.
    params.not_after = rcgen::date_time_ymd(y + years, m, d.min(28));
    Ok(())
}

fn cert_error(e: rcgen::Error) -> Error {
    Error::Config(format!("certificate: {e}"))
}

/// Writes a new secret file readable only by the owner.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!("{}: no certificate", path.display())));
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// SHA-256 of a certificate's DER: the fingerprint used for revocation and RFC 8705 `x5t#S256`.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    sha2::Sha256::digest(cert.as_ref()).into()
}

/// Whether clients present certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    /// Do not ask for client certificates.
    #[default]
    Off,
    /// Ask; verify what is offered; allow clients without one (they authenticate otherwise).
    Optional,
    /// Refuse handshakes without a trusted client certificate.
    Required,
}

/// Client certificates Latchkey trusts, and those it has revoked. Swappable at runtime.
///
/// Two kinds of trust: *anchors* (CAs trusted on purpose) verify chains with WebPKI; *pins*
/// (certificates trusted by alias) authenticate exactly themselves, by SHA-256 fingerprint,
/// whatever their CA flag or issuer says, and never anchor anything. WebPKI alone cannot do
/// the second: it refuses an end-entity certificate marked CA:TRUE (openssl's default for a
/// self-signed certificate), and an anchor made of a leaf would let that leaf's key sign
/// certificates for anyone.
#[derive(Debug)]
pub struct TrustStore {
    anchors: ArcSwap<Anchors>,
    /// Pinned fingerprints and when each certificate expires (Unix seconds).
    pins: ArcSwap<HashMap<[u8; 32], u64>>,
    revoked: ArcSwap<HashSet<[u8; 32]>>,
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

/// One generation of trust anchors and the verifier built from them.
#[derive(Debug)]
struct Anchors {
    /// `None` when nothing is trusted: every client certificate is refused.
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl TrustStore {
    /// Trusts `anchors` (CA or self-signed leaf certificates); refuses `revoked` fingerprints.
    pub fn new(
        anchors: Vec<CertificateDer<'static>>,
        revoked: impl IntoIterator<Item = [u8; 32]>,
        mode: ClientAuthMode,
    ) -> Result<Arc<Self>, Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let store = Self {
            anchors: ArcSwap::from_pointee(Anchors { verifier: None }),
            pins: ArcSwap::from_pointee(HashMap::new()),
            revoked: ArcSwap::from_pointee(revoked.into_iter().collect()),
            mandatory: mode == ClientAuthMode::Required,
            provider,
        };
        store.replace_anchors(anchors)?;
        Ok(Arc::new(store))
    }

    /// Replaces the trusted certificates; the next handshake uses the new set.
    pub fn replace_anchors(&self, anchors: Vec<CertificateDer<'static>>) -> Result<(), Error> {
        let verifier = if anchors.is_empty() {
            None
        } else {
            let mut roots = RootCertStore::empty();
            for a in anchors {
                roots
                    .add(a)
                    .map_err(|e| Error::Config(format!("trust anchor: {e}")))?;
            }
            let v =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| Error::Config(format!("client verifier: {e}")))?;
            Some(v)
        };
        self.anchors.store(Arc::new(Anchors { verifier }));
        Ok(())
    }

    /// Replaces the pinned certificates: fingerprint and expiry (Unix seconds).
    pub fn replace_pins(&self, pins: impl IntoIterator<Item = ([u8; 32], u64)>) {
        self.pins.store(Arc::new(pins.into_iter().collect()));
    }

    /// Replaces the set of revoked fingerprints.
    pub fn replace_revoked(&self, revoked: impl IntoIterator<Item = [u8; 32]>) {
        self.revoked.store(Arc::new(revoked.into_iter().collect()));
    }

    /// Adds one revoked fingerprint.
    pub fn revoke(&self, fp: [u8; 32]) {
        self.revoked.rcu(|set| {
            let mut set = HashSet::clone(set);
            set.insert(fp);
            set
        });
    }

    /// Whether any certificate of `chain` is revoked (for re-checking live connections).
    pub fn is_revoked(&self, chain: &[CertificateDer<'_>]) -> bool {
        let revoked = self.revoked.load();
        chain.iter().any(|c| revoked.contains(&fingerprint(c)))
    }

    /// The verifier rustls calls; hand it to [`server_config`].
    pub fn verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(TrustStoreVerifier(self.clone(), self.mandatory))
    }

    /// Like [`TrustStore::verifier`] for a listener with its own mode (same anchors and
    /// revocations): `None` for [`ClientAuthMode::Off`].
    pub fn verifier_for(
        self: &Arc<Self>,
        mode: ClientAuthMode,
    ) -> Option<Arc<dyn ClientCertVerifier>> {
        (mode != ClientAuthMode::Off).then(|| {
            Arc::new(TrustStoreVerifier(
                self.clone(),
                mode == ClientAuthMode::Required,
            )) as Arc<dyn ClientCertVerifier>
        })
    }

    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

/// rustls' view of a [`TrustStore`], and whether its listener requires a certificate.
#[derive(Debug)]
struct TrustStoreVerifier(Arc<TrustStore>, bool);

impl ClientCertVerifier for TrustStoreVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.1
    }

    /// No hints: the anchors can change under us, and an empty list lets a client send
    /// whichever certificate it has.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let revoked = self.0.revoked.load();
        if std::iter::once(end_entity)
            .chain(intermediates)
            .any(|c| revoked.contains(&fingerprint(c)))
        {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        // A pinned certificate is accepted as itself, alone; rustls then checks the
        // handshake signature with its key, which proves possession.
        if let Some(&not_after) = self.0.pins.load().get(&fingerprint(end_entity)) {
            if now.as_secs() > not_after {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
            }
            return Ok(ClientCertVerified::assertion());
        }
        match &self.0.anchors.load().verifier {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.0.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.0.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algorithms().supported_schemes()
    }
}

/// Refused client-certificate handshakes logged per [`REFUSAL_LOG_WINDOW`] seconds; past it
/// they are counted and the count is logged with the next window's first line, so a client
/// retrying in a loop cannot flood the log.
pub const REFUSAL_LOG_BURST: u32 = 10;
/// Seconds of one rate-limiting window for refused-handshake lines.
pub const REFUSAL_LOG_WINDOW: u64 = 60;

/// Counts refused-handshake lines per window: at most [`REFUSAL_LOG_BURST`] per
/// [`REFUSAL_LOG_WINDOW`] seconds are logged, the rest counted.
#[derive(Debug, Default)]
struct RefusalLimiter {
    window_start: u64,
    logged: u32,
    suppressed: u64,
}

impl RefusalLimiter {
    const fn new() -> Self {
        Self {
            window_start: 0,
            logged: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be logged at `now`, `n` being how many were suppressed since
    /// the last logged line; `None` when this one is suppressed.
    fn admit(&mut self, now: u64) -> Option<u64> {
        if now >= self.window_start.saturating_add(REFUSAL_LOG_WINDOW) {
            self.window_start = now;
            self.logged = 0;
        }
        if self.logged >= REFUSAL_LOG_BURST {
            self.suppressed += 1;
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

static REFUSALS: std::sync::Mutex<RefusalLimiter> = std::sync::Mutex::new(RefusalLimiter::new());

/// Logs a handshake that failed on the client's certificate at WARN, with the peer address
/// and the reason, rate-limited. Other TLS failures (scanners, wrong protocol, no shared
/// cipher suite) say nothing about a certificate the operator configured: INFO, on their own
/// limit.
pub fn log_refused_handshake(peer: std::net::SocketAddr, error: &rustls::Error) {
    let reason = match error {
        rustls::Error::InvalidCertificate(_) => error.to_string(),
        rustls::Error::NoCertificatesPresented => "no client certificate presented".to_owned(),
        _ => {
            static OTHER: crate::http::admission::LogLimiter =
                crate::http::admission::LogLimiter::new(std::time::Duration::from_secs(10));
            if let Some(held_back) = OTHER.allow(std::time::Instant::now()) {
                tracing::info!(peer = %peer, reason = %error, held_back, "TLS handshake failed");
            }
            return;
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let admitted = match REFUSALS.lock() {
        Ok(mut limiter) => limiter.admit(now),
        Err(_) => return,
    };
    match admitted {
        None => {}
        Some(0) => tracing::warn!(peer = %peer, reason = %reason, "TLS handshake refused"),
        Some(earlier) => tracing::warn!(peer = %peer, reason = %reason, suppressed = earlier,
            "TLS handshake refused (more were refused and not logged)"),
    }
}

/// The server's rustls configuration: TLS 1.3 + 1.2, ALPN `http/1.1`, resumption on, client
/// certificates checked by `trust` when given.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    trust: Option<&Arc<TrustStore>>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    server_config_with(&ServerCert::new(chain, key)?, trust.map(|t| t.verifier()))
}

/// The server's certificate and key, replaceable while the server runs (SIGHUP): the next
/// handshake gets the new one, connections already open keep the one they shook hands with.
#[derive(Debug)]
pub struct ServerCert {
    current: ArcSwap<rustls::sign::CertifiedKey>,
}

impl ServerCert {
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<Self>, Error> {
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(certified(chain, key)?),
        }))
    }

    /// Serves `chain` from the next handshake on; a key that does not match is refused and
    /// the current certificate stays.
    pub fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), Error> {
        self.current.store(Arc::new(certified(chain, key)?));
        Ok(())
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::sign::CertifiedKey, Error> {
    if chain.is_empty() {
        return Err(Error::Config("TLS certificate: the chain is empty".into()));
    }
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| Error::Config(format!("TLS private key: {e}")))?;
    let certified = rustls::sign::CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| Error::Config(format!("TLS certificate and key: {e}")))?;
    Ok(certified)
}

impl rustls::server::ResolvesServerCert for ServerCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// [`server_config`] over a replaceable certificate and a given client verifier (`None`: no
/// client certificates asked).
pub fn server_config_with(
    cert: &Arc<ServerCert>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Config(format!("TLS: {e}")))?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(cert.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
        .map_err(|e| Error::Config(format!("TLS tickets: {e}")))?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ca {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    fn ca(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = ca_params().unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Ca {
            cert: params.self_signed(&key).unwrap(),
            key,
        }
    }

    fn client_cert(ca: &Ca) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["agent-1".to_owned()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        set_validity(&mut params, 1).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(ca.cert.der(), &ca.key).unwrap();
        params.signed_by(&key, &issuer).unwrap().der().clone()
    }

    fn verify(store: &Arc<TrustStore>, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        store
            .verifier()
            .verify_client_cert(cert, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn trust_changes_and_revocations_apply_to_the_next_verification() {
        let (a, b) = (ca("A"), ca("B"));
        let cert = client_cert(&a);
        let store =
            TrustStore::new(vec![a.cert.der().clone()], [], ClientAuthMode::Required).unwrap();
        assert!(store.verifier().client_auth_mandatory());
        verify(&store, &cert).unwrap();

        store.revoke(fingerprint(&cert));
        assert!(store.is_revoked(std::slice::from_ref(&cert)));
        assert_eq!(
            verify(&store, &cert),
            Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
        );
        store.replace_revoked([]);
        verify(&store, &cert).unwrap();

        // Revoking the issuing CA's fingerprint refuses chains that carry it.
        store.revoke(fingerprint(a.cert.der()));
        let chain_err =
            store
                .verifier()
                .verify_client_cert(&cert, &[a.cert.der().clone()], UnixTime::now());
        assert!(chain_err.is_err());
        store.replace_revoked([]);

        store.replace_anchors(vec![b.cert.der().clone()]).unwrap();
        assert!(verify(&store, &cert).is_err());
        store.replace_anchors(vec![]).unwrap();
        assert_eq!(
            verify(&store, &cert),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        );
    }

    /// A pinned certificate is accepted as itself even when it says CA:TRUE (which WebPKI
    /// refuses as an end entity), and anchors nothing: a leaf its key signed is refused.
    #[test]
    fn a_pinned_certificate_authenticates_itself_and_anchors_nothing() {
        let pinned = ca("agent-x");
        let minted = client_cert(&pinned);
        let store = TrustStore::new(vec![], [], ClientAuthMode::Required).unwrap();
        let fp = fingerprint(pinned.cert.der());
        assert!(verify(&store, pinned.cert.der()).is_err());
        store.replace_pins([(fp, u64::MAX)]);
        verify(&store, pinned.cert.der()).unwrap();
        assert_eq!(
            verify(&store, &minted),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        );
        // Nor with the pinned certificate sent along as an intermediate.
        assert!(
            store
                .verifier()
                .verify_client_cert(&minted, &[pinned.cert.der().clone()], UnixTime::now())
                .is_err()
        );
        // Expired pins and revoked pins are refused.
        store.replace_pins([(fp, 1)]);
        assert_eq!(
            verify(&store, pinned.cert.der()),
            Err(rustls::Error::InvalidCertificate(CertificateError::Expired))
        );
        store.replace_pins([(fp, u64::MAX)]);
        store.revoke(fp);
        assert_eq!(
            verify(&store, pinned.cert.der()),
            Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
        );
    }

    #[test]
    fn refused_handshake_lines_are_rate_limited_per_window_and_counted() {
        let mut l = RefusalLimiter::new();
        let t = 1_000_000;
        for _ in 0..REFUSAL_LOG_BURST {
            assert_eq!(l.admit(t), Some(0));
        }
        assert_eq!(l.admit(t), None);
        assert_eq!(l.admit(t + REFUSAL_LOG_WINDOW - 1), None);
        // The next window logs again and says how many were dropped.
        assert_eq!(l.admit(t + REFUSAL_LOG_WINDOW), Some(2));
        assert_eq!(l.admit(t + REFUSAL_LOG_WINDOW), Some(0));
    }

    /// A listener's own mode changes only whether a certificate is mandatory; anchors and
    /// revocations are the store's.
    #[test]
    fn listener_verifiers_share_the_trust_and_differ_in_mode() {
        let a = ca("A");
        let cert = client_cert(&a);
        let store =
            TrustStore::new(vec![a.cert.der().clone()], [], ClientAuthMode::Optional).unwrap();
        assert!(store.verifier_for(ClientAuthMode::Off).is_none());
        let required = store.verifier_for(ClientAuthMode::Required).unwrap();
        let optional = store.verifier_for(ClientAuthMode::Optional).unwrap();
        assert!(required.client_auth_mandatory() && !optional.client_auth_mandatory());
        assert!(!store.verifier().client_auth_mandatory());
        store.revoke(fingerprint(&cert));
        for v in [&required, &optional] {
            assert!(v.verify_client_cert(&cert, &[], UnixTime::now()).is_err());
        }
    }

    /// A replacement whose key is not the certificate's is refused and the current pair stays.
    #[test]
    fn server_certificate_replacement_checks_the_key() {
        let a = ca("A");
        let b = ca("B");
        let pkcs8 = |k: &rcgen::KeyPair| PrivateKeyDer::Pkcs8(k.serialize_der().into());
        let cert = ServerCert::new(vec![a.cert.der().clone()], pkcs8(&a.key)).unwrap();
        let err = cert
            .replace(vec![b.cert.der().clone()], pkcs8(&a.key))
            .unwrap_err();
        assert!(err.to_string().contains("certificate and key"), "{err}");
        assert_eq!(cert.current.load().cert[0], *a.cert.der());
        cert.replace(vec![b.cert.der().clone()], pkcs8(&b.key))
            .unwrap();
        assert_eq!(cert.current.load().cert[0], *b.cert.der());
        assert!(ServerCert::new(vec![], pkcs8(&a.key)).is_err());
    }

    fn master_key(dir: &Path) -> MasterKey {
        crate::store::open_master_key(dir, &crate::store::KeyFileOptions::default()).unwrap()
    }

    /// Whether any file in `dir` holds a PEM private key in clear.
    fn plain_keys_in(dir: &Path) -> Vec<PathBuf> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| fs::read(p).is_ok_and(|b| b.windows(11).any(|w| w == b"PRIVATE KEY")))
            .collect()
    }

    #[test]
    fn first_run_creates_ca_and_server_certificate_with_sealed_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let key = master_key(dir.path());
        let (files, created) =
            ensure_certificates(dir.path(), &key, &["auth.example".to_owned()]).unwrap();
        assert_eq!(created, Created::CaAndServerCertificate);
        use std::os::unix::fs::PermissionsExt as _;
        for key in [&files.ca_key, &files.server_key] {
            assert_eq!(
                fs::metadata(key).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(plain_keys_in(dir.path()), Vec::<PathBuf>::new());
        let chain = load_certs(&files.server_cert).unwrap();
        assert_eq!(chain.len(), 2);
        let config = server_config(chain, files.server_key_der(&key).unwrap(), None).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        rcgen::KeyPair::from_pem(&files.ca_key_pem(&key).unwrap()).unwrap();
        let (_, again) = ensure_certificates(dir.path(), &key, &[]).unwrap();
        assert_eq!(again, Created::Nothing);
        // Another data directory's master key opens neither key.
        let other = tempfile::tempdir().unwrap();
        assert!(files.ca_key_pem(&master_key(other.path())).is_err());
        // Nor does one key's file pass for the other's.
        fs::copy(&files.ca_key, &files.server_key).unwrap();
        assert!(files.server_key_der(&key).is_err());
    }

    #[test]
    fn plain_keys_of_earlier_releases_are_sealed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let key = master_key(dir.path());
        // What an earlier release left: plain PEM keys beside their certificates.
        let (files, _) = ensure_certificates(dir.path(), &key, &[]).unwrap();
        let ca_pem = files.ca_key_pem(&key).unwrap();
        let server_pem = open_pem(&key, SERVER_KEY, &files.server_key).unwrap();
        fs::remove_file(&files.ca_key).unwrap();
        fs::remove_file(&files.server_key).unwrap();
        fs::write(dir.path().join("ca.key"), ca_pem.as_bytes()).unwrap();
        fs::write(dir.path().join("server.key"), server_pem.as_bytes()).unwrap();
        fs::write(dir.path().join("ca.key.old"), ca_pem.as_bytes()).unwrap();

        let (_, created) = ensure_certificates(dir.path(), &key, &[]).unwrap();
        assert_eq!(
            created,
            Created::Nothing,
            "the same CA and server certificate"
        );
        assert_eq!(plain_keys_in(dir.path()), Vec::<PathBuf>::new());
        assert!(!dir.path().join("ca.key").exists());
        assert_eq!(*files.ca_key_pem(&key).unwrap(), *ca_pem);
        assert_eq!(
            *open_pem(&key, SERVER_KEY, &files.server_key).unwrap(),
            *server_pem
        );
        assert_eq!(
            *open_pem(&key, CA_KEY, &dir.path().join("ca.key.sealed.old")).unwrap(),
            *ca_pem
        );
        assert_eq!(files.seal_plain_keys(&key).unwrap(), Vec::<PathBuf>::new());
    }
}
