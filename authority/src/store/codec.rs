//! The only user of bincode. Every stored value is `[format version byte][bincode payload]`.
//!
//! bincode is pinned at `=2.0.1` (3.0.0 is a deliberate compile error upstream), so its wire
//! format cannot drift under us; the version byte is ours and says which Rust shape the payload
//! has. A record whose version byte this release does not know is refused with
//! [`StoreError::UnknownRecordVersion`], never guessed at. When a record's shape changes, bump
//! its `VERSION` and keep a decoder for the old one here (the fixtures under
//! `authority/tests/fixtures/` fail otherwise).

use bincode::config::{Configuration, Limit, LittleEndian, Varint};

use super::error::StoreError;

/// Largest stored record. A registration with a bounded JWKS or a certificate chain fits well
/// below; anything larger is refused on write and treated as corrupt on read, so a damaged
/// length prefix cannot make the decoder allocate gigabytes.
pub const MAX_RECORD_BYTES: usize = 256 * 1024;

type Config = Configuration<LittleEndian, Varint, Limit<MAX_RECORD_BYTES>>;

const CONFIG: Config = bincode::config::standard().with_limit::<MAX_RECORD_BYTES>();

/// A value stored in a table. `NAME` is used in errors, `VERSION` is the format version byte.
pub trait Record: bincode::Encode + bincode::Decode<()> + Sized {
    const NAME: &'static str;
    const VERSION: u8;

    /// Decodes a payload written at an older format `version`, or `None` if this record never
    /// had that version. Records that changed shape override it (see `codec::legacy`).
    fn decode_older(version: u8, body: &[u8]) -> Option<Result<Self, StoreError>> {
        let _ = (version, body);
        None
    }
}

/// Encodes `record` with its version byte.
pub fn encode<R: Record>(record: &R) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![R::VERSION];
    let body = bincode::encode_to_vec(record, CONFIG)
        .map_err(|e| StoreError::Invalid(format!("{} record cannot be encoded: {e}", R::NAME)))?;
    if body.len() + 1 > MAX_RECORD_BYTES {
        return Err(StoreError::Invalid(format!(
            "{} record is {} bytes, more than the {MAX_RECORD_BYTES}-byte limit",
            R::NAME,
            body.len() + 1
        )));
    }
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a record, refusing unknown versions, trailing bytes and oversized input.
pub fn decode<R: Record>(bytes: &[u8]) -> Result<R, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        table: R::NAME,
        reason,
    };
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| corrupt("empty record".into()))?;
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(corrupt(format!(
            "{} bytes exceeds the record size limit",
            bytes.len()
        )));
    }
    if version != R::VERSION {
        return R::decode_older(version, body).unwrap_or(Err(StoreError::UnknownRecordVersion {
            record: R::NAME,
            found: version,
            supported: R::VERSION,
        }));
    }
    decode_body(R::NAME, body)
}

/// Decodes one payload (no version byte) as `T`, refusing trailing bytes.
fn decode_body<T: bincode::Decode<()>>(table: &'static str, body: &[u8]) -> Result<T, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { table, reason };
    let (record, used) =
        bincode::decode_from_slice::<T, _>(body, CONFIG).map_err(|e| corrupt(e.to_string()))?;
    if used != body.len() {
        return Err(corrupt(format!("{} trailing bytes", body.len() - used)));
    }
    Ok(record)
}

/// Decoders for the older shapes of records whose format changed. Each old shape stays here,
/// frozen, for as long as data directories written with it may still be opened.
pub(crate) mod legacy {
    use bincode::{Decode, Encode};

    use super::super::records::{
        AgentRecord, BoardingState, KeyState, OperatorClientRecord, SecurityProfile,
        SigningKeyRecord,
    };
    use super::super::seal::SecretHash;
    use super::{StoreError, decode_body};

    /// `operator_clients` version 1: no `generation`. Such a client reads as generation 0;
    /// the store never draws 0, so re-creating it (or changing its secret) still moves it on.
    #[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
    pub(crate) struct OperatorClientRecordV1 {
        pub id: String,
        pub tenant: String,
        pub secret_hash: SecretHash,
        pub display_name: String,
        pub profile: String,
        pub created_at: u64,
    }

    /// `operator_clients` version 2: a generation, but no suspension and no previous secret.
    #[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
    pub(crate) struct OperatorClientRecordV2 {
        pub id: String,
        pub tenant: String,
        pub secret_hash: SecretHash,
        pub display_name: String,
        pub profile: String,
        pub created_at: u64,
        pub generation: u64,
    }

    impl From<OperatorClientRecordV2> for OperatorClientRecord {
        fn from(v2: OperatorClientRecordV2) -> Self {
            OperatorClientRecord {
                id: v2.id,
                tenant: v2.tenant,
                secret_hash: v2.secret_hash,
                display_name: v2.display_name,
                profile: v2.profile,
                created_at: v2.created_at,
                generation: v2.generation,
                suspended_at: None,
                previous_secret_hash: None,
                previous_valid_until: 0,
            }
        }
    }

    pub(crate) fn operator_client(
        version: u8,
        body: &[u8],
    ) -> Option<Result<OperatorClientRecord, StoreError>> {
        match version {
            1 => Some(
                decode_body::<OperatorClientRecordV1>("operator_clients", body).map(|v1| {
                    OperatorClientRecordV2 {
                        id: v1.id,
                        tenant: v1.tenant,
                        secret_hash: v1.secret_hash,
                        display_name: v1.display_name,
                        profile: v1.profile,
                        created_at: v1.created_at,
                        generation: 0,
                    }
                    .into()
                }),
            ),
            2 => Some(
                decode_body::<OperatorClientRecordV2>("operator_clients", body).map(Into::into),
            ),
            _ => None,
        }
    }

    /// `agents` version 1: no suspension.
    #[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
    pub(crate) struct AgentRecordV1 {
        pub id: String,
        pub tenant: String,
        pub name: String,
        pub security_profile: SecurityProfile,
        pub state: BoardingState,
        pub etag: u64,
        pub current_iat: Option<String>,
        pub created_at: u64,
        pub updated_at: u64,
    }

    pub(crate) fn agent(version: u8, body: &[u8]) -> Option<Result<AgentRecord, StoreError>> {
        (version == 1).then(|| {
            decode_body::<AgentRecordV1>("agents", body).map(|v1| AgentRecord {
                id: v1.id,
                tenant: v1.tenant,
                name: v1.name,
                security_profile: v1.security_profile,
                state: v1.state,
                etag: v1.etag,
                current_iat: v1.current_iat,
                created_at: v1.created_at,
                updated_at: v1.updated_at,
                suspended_at: None,
            })
        })
    }

    /// `signing_keys` version 1: no certificate chain, never pinned (every key then was
    /// generated by the authority).
    #[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
    pub(crate) struct SigningKeyRecordV1 {
        pub kid: String,
        pub alg: String,
        pub state: KeyState,
        pub sealed_private_key: Vec<u8>,
        pub public_key: Vec<u8>,
        pub created_at: u64,
        pub state_changed_at: u64,
    }

    pub(crate) fn signing_key(
        version: u8,
        body: &[u8],
    ) -> Option<Result<SigningKeyRecord, StoreError>> {
        (version == 1).then(|| {
            decode_body::<SigningKeyRecordV1>("signing_keys", body).map(|v1| SigningKeyRecord {
                kid: v1.kid,
                alg: v1.alg,
                state: v1.state,
                sealed_private_key: v1.sealed_private_key,
                public_key: v1.public_key,
                created_at: v1.created_at,
                state_changed_at: v1.state_changed_at,
                certificate_chain: Vec::new(),
                pinned: false,
            })
        })
    }
}

/// Encodes a plain `u64` (meta values) as 8 big-endian bytes.
pub fn encode_u64(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// Decodes a meta `u64`, naming the key on failure.
pub fn decode_u64(key: &'static str, bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        table: "meta",
        reason: format!("{key} is {} bytes, expected 8", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, bincode::Encode, bincode::Decode)]
    struct Thing {
        name: String,
        n: u64,
        items: Vec<String>,
    }
    impl Record for Thing {
        const NAME: &'static str = "thing";
        const VERSION: u8 = 3;
    }

    fn thing() -> Thing {
        Thing {
            name: "a".into(),
            n: 7,
            items: vec!["x".into(), "y".into()],
        }
    }

    #[test]
    fn round_trip_starts_with_version_byte() {
        let bytes = encode(&thing()).unwrap();
        assert_eq!(bytes[0], 3);
        assert_eq!(decode::<Thing>(&bytes).unwrap(), thing());
    }

    #[test]
    fn unknown_version_is_a_clear_error() {
        let mut bytes = encode(&thing()).unwrap();
        bytes[0] = 4;
        let err = decode::<Thing>(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::UnknownRecordVersion {
                    record: "thing",
                    found: 4,
                    supported: 3
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("newer latchkey"), "{err}");
    }

    #[test]
    fn truncated_trailing_and_empty_input_are_corrupt() {
        let bytes = encode(&thing()).unwrap();
        for cut in 0..bytes.len() {
            let err = decode::<Thing>(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, StoreError::Corrupt { .. }),
                "cut {cut}: {err:?}"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode::<Thing>(&long),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // Version byte, name length varint claiming u64::MAX bytes.
        let bytes = [3u8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(matches!(
            decode::<Thing>(&bytes),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn oversized_records_are_refused_on_write() {
        let big = Thing {
            name: "x".repeat(MAX_RECORD_BYTES),
            n: 0,
            items: vec![],
        };
        assert!(matches!(encode(&big), Err(StoreError::Invalid(_))));
    }

    /// `[version][payload]`, as an older release wrote it.
    fn older<T: bincode::Encode>(version: u8, v: &T) -> Vec<u8> {
        let mut out = vec![version];
        out.extend(bincode::encode_to_vec(v, bincode::config::standard()).unwrap());
        out
    }

    #[test]
    fn agents_of_version_1_read_as_not_suspended() {
        use super::super::records::{AgentRecord, BoardingState, SecurityProfile};
        let v1 = legacy::AgentRecordV1 {
            id: "a1".into(),
            tenant: "t".into(),
            name: "n".into(),
            security_profile: SecurityProfile::SharedSecret,
            state: BoardingState::Onboarded,
            etag: 3,
            current_iat: None,
            created_at: 1,
            updated_at: 2,
        };
        let bytes = older(1, &v1);
        let agent = decode::<AgentRecord>(&bytes).unwrap();
        assert_eq!((agent.id.as_str(), agent.etag), ("a1", 3));
        assert_eq!(agent.suspended_at, None);
        assert!(matches!(
            decode::<AgentRecord>(&bytes[..bytes.len() - 1]),
            Err(StoreError::Corrupt { .. })
        ));
        let suspended = AgentRecord {
            suspended_at: Some(9),
            ..agent
        };
        let bytes = encode(&suspended).unwrap();
        assert_eq!(bytes[0], 2);
        assert_eq!(decode::<AgentRecord>(&bytes).unwrap(), suspended);
    }

    #[test]
    fn operator_clients_of_versions_1_and_2_read_without_suspension_or_previous_secret() {
        use super::super::records::OperatorClientRecord;
        use super::super::seal::SecretHash;
        let hash = SecretHash::usercube(b"s");
        let v2 = legacy::OperatorClientRecordV2 {
            id: "c".into(),
            tenant: "t".into(),
            secret_hash: hash.clone(),
            display_name: "C".into(),
            profile: "p".into(),
            created_at: 4,
            generation: 77,
        };
        let c = decode::<OperatorClientRecord>(&older(2, &v2)).unwrap();
        assert_eq!(c.generation, 77);
        assert_eq!(
            (
                c.suspended_at,
                c.previous_secret_hash.clone(),
                c.previous_valid_until
            ),
            (None, None, 0)
        );
        let v1 = legacy::OperatorClientRecordV1 {
            id: "c".into(),
            tenant: "t".into(),
            secret_hash: hash.clone(),
            display_name: "C".into(),
            profile: "p".into(),
            created_at: 4,
        };
        let c1 = decode::<OperatorClientRecord>(&older(1, &v1)).unwrap();
        assert_eq!(c1, OperatorClientRecord { generation: 0, ..c });
        // A version 2 payload labelled 3 is corrupt, never misread.
        assert!(matches!(
            decode::<OperatorClientRecord>(&older(3, &v2)),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn previous_secret_works_only_within_its_grace() {
        use super::super::records::OperatorClientRecord;
        use super::super::seal::SecretHash;
        let c = OperatorClientRecord {
            id: "c".into(),
            tenant: "t".into(),
            secret_hash: SecretHash::blake3(b"new").unwrap(),
            display_name: "C".into(),
            profile: "p".into(),
            created_at: 0,
            generation: 1,
            suspended_at: None,
            previous_secret_hash: Some(SecretHash::blake3(b"old").unwrap()),
            previous_valid_until: 100,
        };
        assert!(c.secret_matches(b"new", 99) && c.secret_matches(b"new", 100));
        assert!(c.secret_matches(b"old", 99));
        assert!(!c.secret_matches(b"old", 100));
        assert!(!c.secret_matches(b"other", 99));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode::<Thing>(&bytes);
        }
    }
}
