//! The stored records: one Rust type per table value, each with its format version.
//!
//! Times are Unix seconds. Secrets appear only sealed (`sealed_*`: see `seal`) or hashed
//! ([`SecretHash`]); nothing here holds a secret in clear.

use bincode::{Decode, Encode};

use super::codec::Record;
use super::seal::SecretHash;

macro_rules! record {
    ($t:ty, $name:literal, $v:literal) => {
        impl Record for $t {
            const NAME: &'static str = $name;
            const VERSION: u8 = $v;
        }
    };
}

/// A tenant and its token policy.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TenantRecord {
    pub id: String,
    pub display_name: String,
    /// JWS algorithm of access tokens minted for this tenant's agents (e.g. "RS256").
    pub token_alg: String,
    pub created_at: u64,
}
record!(TenantRecord, "tenants", 1);

/// How an agent authenticates at the token endpoint (MindSphere `securityProfile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum SecurityProfile {
    SharedSecret,
    Rsa3072,
}

impl SecurityProfile {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProfile::SharedSecret => "SHARED_SECRET",
            SecurityProfile::Rsa3072 => "RSA_3072",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "SHARED_SECRET" => Some(SecurityProfile::SharedSecret),
            "RSA_3072" => Some(SecurityProfile::Rsa3072),
            _ => None,
        }
    }
}

/// MindSphere boarding states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum BoardingState {
    NotOnboarded,
    Onboarding,
    Onboarded,
}

impl BoardingState {
    pub fn as_str(self) -> &'static str {
        match self {
            BoardingState::NotOnboarded => "NOT_ONBOARDED",
            BoardingState::Onboarding => "ONBOARDING",
            BoardingState::Onboarded => "ONBOARDED",
        }
    }
}

/// An agent. Its id is the entityId and, once registered, its OAuth client id.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct AgentRecord {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub security_profile: SecurityProfile,
    pub state: BoardingState,
    /// Bumped on every change of this record; the HTTP `eTag`.
    pub etag: u64,
    /// `jti` of the initial access token currently offered (if any).
    pub current_iat: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
    /// When an operator suspended the agent: its token requests and registration rotations
    /// are refused and the tokens it held were revoked; records, registration and keys stay.
    /// Version 1 records had none and read as not suspended.
    pub suspended_at: Option<u64>,
}

impl Record for AgentRecord {
    const NAME: &'static str = "agents";
    const VERSION: u8 = 2;

    fn decode_older(version: u8, body: &[u8]) -> Option<Result<Self, super::StoreError>> {
        super::codec::legacy::agent(version, body)
    }
}

/// An initial access token, usable for exactly one registration before `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct BoardingRecord {
    pub jti: String,
    pub agent_id: String,
    pub tenant: String,
    pub issued_at: u64,
    pub expires_at: u64,
    /// Set once, by the registration that consumed it.
    pub used_at: Option<u64>,
}
record!(BoardingRecord, "boarding", 1);

/// RFC 7591 `token_endpoint_auth_method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum AuthMethod {
    ClientSecretJwt,
    PrivateKeyJwt,
    TlsClientAuth,
    SelfSignedTlsClientAuth,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretJwt => "client_secret_jwt",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
            AuthMethod::TlsClientAuth => "tls_client_auth",
            AuthMethod::SelfSignedTlsClientAuth => "self_signed_tls_client_auth",
        }
    }
}

/// An agent's registration (RFC 7591/7592 client).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RegistrationRecord {
    pub client_id: String,
    pub tenant: String,
    pub auth_method: AuthMethod,
    /// The shared secret, sealed for (`registrations`, client id); `None` for key-based methods.
    pub sealed_secret: Option<Vec<u8>>,
    /// Public keys as JWK JSON objects (validated by the API before they get here).
    pub jwks: Vec<String>,
    pub secret_expires_at: u64,
    /// Hash of the current registration access token; the only one that works.
    pub rat_hash: SecretHash,
    /// 1 at registration, +1 per rotation.
    pub generation: u64,
    pub created_at: u64,
    pub updated_at: u64,
}
record!(RegistrationRecord, "registrations", 1);

/// The registration a rotation replaced, kept while its grace window lasts so that an agent
/// whose rotation answer was lost can still get it: a repeated rotation with the previous RAT
/// is answered with the same new credentials, and the previous secret or keys keep working.
/// Deleted when the agent first uses a new credential (the cut-over) or by `Forget` after
/// `grace_until`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RotationRecord {
    pub client_id: String,
    /// The registration generation this rotation produced; the record means nothing for any
    /// other generation.
    pub generation: u64,
    /// Hash of the registration access token the rotation replaced.
    pub previous_rat_hash: SecretHash,
    /// The public keys the rotation replaced (empty for shared-secret clients).
    pub previous_jwks: Vec<String>,
    /// When the replaced secret or keys expired on their own; the grace window never
    /// extends them.
    pub previous_secret_expires_at: u64,
    /// Sealed for (`rotations`, client id): the new RAT the lost answer carried and the
    /// previous shared secret, if any (`RotationSecrets`).
    pub sealed: Vec<u8>,
    pub rotated_at: u64,
    pub grace_until: u64,
}
record!(RotationRecord, "rotations", 1);

/// An agent's data source configuration (MindSphere `dataSourceConfiguration`).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct DataSourceConfigRecord {
    pub agent_id: String,
    pub tenant: String,
    /// The configuration object's `id`, fixed at the first write.
    pub id: String,
    /// Starts at 1; +1 per write. An agent without a configuration is at eTag 0.
    pub etag: u64,
    /// The validated JSON object without `id` and `eTag`, returned as stored.
    pub json: String,
    pub updated_at: u64,
    /// Who wrote it last (agent or operator client id).
    pub updated_by: String,
}
record!(DataSourceConfigRecord, "datasource_configs", 1);

/// An operator (Usercube-style OpenID) client.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OperatorClientRecord {
    pub id: String,
    pub tenant: String,
    pub secret_hash: SecretHash,
    pub display_name: String,
    pub profile: String,
    pub created_at: u64,
    /// Drawn by the store (random, never 0) each time the client is created; its operator
    /// tokens carry it (`gen`) and stop working when it changes. Changing a client's secret
    /// re-creates it. Version 1 records had none and read as 0.
    pub generation: u64,
    /// When an operator suspended the client: no token grant, and the suspension drew a new
    /// generation, so tokens issued before it stay dead after a resume.
    pub suspended_at: Option<u64>,
    /// The secret a rotation replaced, still accepted until `previous_valid_until`.
    pub previous_secret_hash: Option<SecretHash>,
    /// End of the previous secret's grace (Unix seconds); meaningless without
    /// `previous_secret_hash`. Versions 1 and 2 had neither, nor `suspended_at`.
    pub previous_valid_until: u64,
}

impl OperatorClientRecord {
    /// Whether `secret` is this client's secret at `now`: the current one, or the previous
    /// one within its grace. Both hashes are checked whenever a previous one is kept, so the
    /// work does not say which matched.
    pub fn secret_matches(&self, secret: &[u8], now: u64) -> bool {
        let current = self.secret_hash.verify(secret);
        let previous = self
            .previous_secret_hash
            .as_ref()
            .is_some_and(|h| h.verify(secret))
            && now < self.previous_valid_until;
        current | previous
    }
}

impl Record for OperatorClientRecord {
    const NAME: &'static str = "operator_clients";
    const VERSION: u8 = 3;

    fn decode_older(version: u8, body: &[u8]) -> Option<Result<Self, super::StoreError>> {
        super::codec::legacy::operator_client(version, body)
    }
}

/// A named permission set; its permissions become token scopes.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ProfileRecord {
    pub name: String,
    pub permissions: Vec<String>,
}
record!(ProfileRecord, "profiles", 1);

/// Life cycle of a signing key: published verifies (and is in the JWKS) but does not sign
/// yet; active signs; retiring only verifies; retired is kept for audit. `Published` is last so
/// the encoding of the older states is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum KeyState {
    Active,
    Retiring,
    Retired,
    Published,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
            KeyState::Retired => "retired",
            KeyState::Published => "published",
        }
    }
}

/// A token signing key. Key material is opaque bytes interpreted per `alg` by the token core.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SigningKeyRecord {
    pub kid: String,
    /// JWS algorithm name ("EdDSA", "ES256", "RS256", ...).
    pub alg: String,
    pub state: KeyState,
    /// Private key (e.g. PKCS#8 DER) sealed for (`signing_keys`, kid).
    pub sealed_private_key: Vec<u8>,
    /// Public key bytes (e.g. SPKI DER), not secret.
    pub public_key: Vec<u8>,
    pub created_at: u64,
    pub state_changed_at: u64,
    /// The key's X.509 certificate chain, DER, leaf first (an imported PKCS#12 carries one);
    /// empty when the key has no certificate. Published as the JWK's `x5c`.
    pub certificate_chain: Vec<Vec<u8>>,
    /// Imported keys are pinned: scheduled rotation never replaces them, since verifiers may
    /// hold their certificate; an explicit rotation or revocation still does.
    pub pinned: bool,
}

impl Record for SigningKeyRecord {
    const NAME: &'static str = "signing_keys";
    const VERSION: u8 = 2;

    fn decode_older(version: u8, body: &[u8]) -> Option<Result<Self, super::StoreError>> {
        super::codec::legacy::signing_key(version, body)
    }
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum CertificateKind {
    /// The authority's own CA.
    Authority,
    /// The authority's TLS server certificate.
    Server,
    /// An agent certificate issued by the authority.
    Agent,
    /// A trusted external certificate (agent, relay), pinned: it authenticates only itself.
    Trusted,
    /// An external CA trusted on purpose (`cert trust --ca`): it anchors the chains it signs.
    TrustedCa,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum CertificateState {
    Valid,
    Revoked,
}

/// A certificate in the trust store, under a unique alias.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct CertificateRecord {
    pub alias: String,
    /// SHA-256 of the DER, lower-case hex.
    pub fingerprint: String,
    pub subject: String,
    pub kind: CertificateKind,
    pub state: CertificateState,
    pub not_after: u64,
    pub der: Vec<u8>,
    /// Private key, sealed for (`certificates`, alias), for certificates the authority issued.
    pub sealed_private_key: Option<Vec<u8>>,
    pub created_at: u64,
}
record!(CertificateRecord, "certificates", 1);

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub enum RevocationKind {
    /// One token, by `jti`.
    Token,
    /// Every token signed by a key, by kid.
    Key,
    /// A certificate, by SHA-256 fingerprint.
    Certificate,
    /// Every token issued to an agent before `revoked_at`, by agent id.
    Agent,
}

impl RevocationKind {
    pub const ALL: [RevocationKind; 4] = [
        RevocationKind::Token,
        RevocationKind::Key,
        RevocationKind::Certificate,
        RevocationKind::Agent,
    ];

    /// The key prefix in the `revocations` table.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Token => "jti",
            RevocationKind::Key => "key",
            RevocationKind::Certificate => "cert",
            RevocationKind::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A revocation. It may be forgotten after `forget_after`, once nothing it names can still
/// verify (the token, or every token of the key/agent, has expired by then).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RevocationRecord {
    pub kind: RevocationKind,
    pub id: String,
    pub revoked_at: u64,
    pub forget_after: u64,
    /// Who revoked (operator client id, agent id, "system").
    pub by: String,
    pub reason: String,
}
record!(RevocationRecord, "revocations", 1);

/// Outcome of an audited action.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum AuditOutcome {
    Success,
    /// Refused, with the refusal's text (never a secret).
    Refused(String),
}

/// One audit log entry: who did what to what, when, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct AuditRecord {
    pub seq: u64,
    pub at: u64,
    pub actor: String,
    pub event: String,
    pub subject: String,
    pub outcome: AuditOutcome,
}
record!(AuditRecord, "audit", 1);
