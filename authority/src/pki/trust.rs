//! The live trust state: what the TLS layer trusts, the revoked set that ends
//! certificate-bound tokens, the expiry gauges and the CA's CRL, all built from the store.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use base64::Engine as _;
use crossbeam_skiplist::SkipMap;
use rustls::pki_types::{CertificateDer, UnixTime};
use sha2::Digest as _;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::*;
use crate::error::{ApiError, Error};
use crate::http::Metrics;
use crate::store::{CertificateKind, CertificateRecord, CertificateState, RevocationKind, Store};
use crate::tls::{self, TrustStore};

/// Where trust comes from besides the store, fixed when the server starts.
#[derive(Debug, Default)]
pub struct TrustConfig {
    /// The TLS layer's client trust store, when a listener asks for certificates (`None`:
    /// mutual TLS is off, and only the revoked set is kept, for certificate-bound tokens).
    pub tls: Option<Arc<TrustStore>>,
    /// Anchors from files (the data directory's CA, `--client-ca`; see
    /// [`TrustState::file_anchors`]).
    pub file_anchors: Vec<CertificateDer<'static>>,
    /// The server certificate chain file, for its expiry in `/metrics`.
    pub server_cert: Option<std::path::PathBuf>,
}

/// What the TLS layer trusts, rebuilt from the store after every relevant commit.
#[derive(Debug, Default)]
pub struct TrustState {
    /// The TLS layer's trust store, if mutual TLS is on.
    tls: Option<Arc<TrustStore>>,
    /// Anchors from files (the data directory's CA, `--client-ca`).
    base: Vec<CertificateDer<'static>>,
    /// Bumped by every rebuild once the new stores are in place; a verdict checked against an
    /// older generation is not used.
    generation: AtomicU64,
    /// Chains that verified, by content (see [`TrustState::verify_chain`]).
    verified: SkipMap<[u8; 32], Verdict>,
    /// Fingerprints of revoked certificates, kept whether or not mutual TLS is on: a token
    /// bound to one (`cnf.x5t#S256`) stops verifying ([`TrustState::binding_revoked`]).
    revoked: ArcSwap<HashSet<[u8; 32]>>,
    /// The server certificate chain file, for its expiry in `/metrics`.
    server_cert: Option<std::path::PathBuf>,
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
pub(super) const VERIFIED_CAP: usize = 16 * 1024;

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
    /// The trust of `config`; empty until the first [`TrustState::refresh`].
    pub fn new(config: TrustConfig) -> TrustState {
        TrustState {
            tls: config.tls,
            base: config.file_anchors,
            server_cert: config.server_cert,
            ..TrustState::default()
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
    pub fn material(&self, store: &Store, now: u64) -> Result<TrustMaterial, Error> {
        let snap = store.read()?;
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
        let base = self.base.clone();
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

    /// Publishes the earliest expiry per kind of certificate to `/metrics`, as a gauge of
    /// Unix seconds: `trusted` (pinned and CA imports), `issued` (certificates this CA
    /// signed), `ca` (the authority's CA), `server` (the TLS server certificate). Valid,
    /// unrevoked certificates only; a kind with none has no line.
    fn publish_expiry(&self, store: &Store, metrics: &Metrics) -> Result<(), Error> {
        let snap = store.read()?;
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
        if let Some(t) = leaf_expiry(&tls::CertFiles::in_dir(&store.paths().dir).ca_cert) {
            note(2, t);
        }
        if let Some(t) = self.server_cert.as_deref().and_then(leaf_expiry) {
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
        metrics.set_section("certificates", lines);
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
    /// [`TrustState::material`], then publishes the expiry gauges to `metrics`.
    pub fn refresh(&self, store: &Store, now: u64, metrics: &Metrics) -> Result<(), Error> {
        let result = match &self.tls {
            Some(trust) => self.rebuild(store, now, trust),
            None => self
                .material(store, now)
                .map(|m| self.revoked.store(Arc::new(m.revoked))),
        };
        // After the swaps, and also after a rebuild that failed half-way: no verdict from
        // before this point counts any more.
        self.generation.fetch_add(1, Ordering::Release);
        self.verified.clear();
        result?;
        self.publish_expiry(store, metrics)
    }

    fn rebuild(&self, store: &Store, now: u64, trust: &TrustStore) -> Result<(), Error> {
        let m = self.material(store, now)?;
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
    pub fn crl(&self, store: &Store, now: u64) -> Result<Arc<[u8]>, Error> {
        let generation = self.generation.load(Ordering::Acquire);
        if let Ok(cached) = self.crl.lock()
            && let Some(c) = cached.as_ref()
            && c.generation == generation
            && now < c.signed_at.saturating_add(CRL_RESIGN)
        {
            return Ok(c.der.clone());
        }
        let der: Arc<[u8]> = build_crl(store, now)?.into();
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
    pub fn verify_chain(
        &self,
        chain: &[CertificateDer<'static>],
        now: UnixTime,
    ) -> Result<(), Error> {
        let refused = |why: &str| -> Error {
            ApiError::InvalidClient(format!("client certificate refused: {why}")).into()
        };
        let (ee, rest) = chain
            .split_first()
            .ok_or_else(|| refused("no certificate"))?;
        // Read before the stores: a rebuild bumps it only after swapping them, so a verdict is
        // never filed under a generation newer than the trust it was checked against.
        let generation = self.generation.load(Ordering::Acquire);
        let key = chain_key(chain);
        if let Some(entry) = self.verified.get(&key) {
            let v = entry.value();
            if v.generation == generation && now.as_secs() < v.until {
                return Ok(());
            }
        }
        let store = self
            .tls
            .as_ref()
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
pub(super) fn build_crl(store: &Store, now: u64) -> Result<Vec<u8>, Error> {
    let dir = &store.paths().dir;
    if !tls::CertFiles::in_dir(dir).ca_cert.exists() {
        return Err(ApiError::NotFound("this server has no CA of its own".into()).into());
    }
    let signer = CaSigner::load(dir, store.master_key())?;
    let ca_der = pem_chain(signer.cert_pem())?
        .into_iter()
        .next()
        .ok_or_else(|| bad("no CA certificate"))?
        .der;
    let (_, ca) = X509Certificate::from_der(ca_der.as_ref())
        .map_err(|e| bad(format!("CA certificate: {e}")))?;
    let snap = store.read()?;
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
pub(super) fn chain_key(chain: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    for c in chain {
        // Length-prefixed, so no two chains hash the same bytes.
        h.update((c.len() as u64).to_be_bytes());
        h.update(c.as_ref());
    }
    h.finalize().into()
}

/// When the first certificate of `chain` expires (Unix seconds); `None` if one does not parse.
pub(super) fn earliest_expiry(chain: &[CertificateDer<'_>]) -> Option<u64> {
    chain
        .iter()
        .map(|c| {
            let (_, cert) = X509Certificate::from_der(c.as_ref()).ok()?;
            u64::try_from(cert.validity().not_after.timestamp()).ok()
        })
        .try_fold(u64::MAX, |min, t| Some(min.min(t?)))
}
