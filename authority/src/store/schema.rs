//! Every redb table of the store, in one place. Only `authority::store` opens these.
//!
//! Values are `&[u8]` holding a versioned record (see `codec`); keys are plain strings or tuples
//! of strings so that `latchkey check` and a hex dump can read them. `DESIGN.md` next to this
//! file describes each table's invariants.

use redb::TableDefinition;

/// The schema generation this release writes and reads. Stored under `META_SCHEMA_VERSION`.
pub const SCHEMA_VERSION: u32 = 1;

/// Store-wide facts: schema version, creation time, master key id.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub const META_SCHEMA_VERSION: &str = "schema_version";
pub const META_CREATED_AT: &str = "created_at";
pub const META_KEY_ID: &str = "master_key_id";

/// tenant id → `TenantRecord`.
pub const TENANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("tenants");

/// agent id (= entityId, = client id, globally unique) → `AgentRecord`.
pub const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");

/// (tenant, agent name) → agent id. Enforces "name unique per tenant".
pub const AGENT_NAMES: TableDefinition<(&str, &str), &str> = TableDefinition::new("agent_names");

/// (tenant, agent id) → (). Lists a tenant's agents in id order for paging.
pub const TENANT_AGENTS: TableDefinition<(&str, &str), ()> = TableDefinition::new("tenant_agents");

/// initial access token `jti` → `BoardingRecord`.
pub const BOARDING: TableDefinition<&str, &[u8]> = TableDefinition::new("boarding");

/// client id → `RegistrationRecord` (sealed shared secret, JWKs, RAT hash, generation).
pub const REGISTRATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("registrations");

/// operator client identifier → `OperatorClientRecord`.
pub const OPERATOR_CLIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("operator_clients");

/// profile name → `ProfileRecord`.
pub const PROFILES: TableDefinition<&str, &[u8]> = TableDefinition::new("profiles");

/// kid → `SigningKeyRecord` (sealed private key).
pub const SIGNING_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("signing_keys");

/// alias → `CertificateRecord`.
pub const CERTIFICATES: TableDefinition<&str, &[u8]> = TableDefinition::new("certificates");

/// SHA-256 fingerprint (lower-case hex) → alias. Enforces "one alias per certificate".
pub const CERT_FINGERPRINTS: TableDefinition<&str, &str> =
    TableDefinition::new("cert_fingerprints");

/// (kind, id) → `RevocationRecord`; kind is one of `RevocationKind::as_str`.
pub const REVOCATIONS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("revocations");

/// sequence number (dense, from 1) → `AuditRecord`. Append-only.
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// client id → `RotationRecord`: what a rotation replaced, kept only while its grace window
/// lasts and until the agent first uses its new credentials.
pub const ROTATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("rotations");

/// agent id → `DataSourceConfigRecord`.
pub const DATASOURCE_CONFIGS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("datasource_configs");
