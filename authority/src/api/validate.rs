//! The shape of every identifier and free-text field a request can put into the store or the
//! audit log, in one table, checked before anything is submitted.
//!
//! | field | alphabet | length |
//! | --- | --- | --- |
//! | operator `client_id`, `kid`, certificate `alias`/`new_alias`, revoked token `id` (jti) | [`Alphabet::Id`] | 1..=128 |
//! | `tenant`, `profile` | [`Alphabet::Id`] | 1..=64 |
//! | agent `entityId` / `id` / `client_id` | [`Alphabet::AgentId`] | 1..=64 |
//! | agent `name`, `display_name`, JWK `kid` of an agent key | [`Alphabet::Text`] | 1..=128 characters |
//! | revocation `reason` | [`Alphabet::Text`] | 1..=256 characters |
//! | certificate `common_name` | [`Alphabet::Text`] | 1..=64 characters (X.509's upper bound) |
//! | certificate `sans` | [`Alphabet::Text`], at most [`MAX_SANS`] | 1..=253 characters each |
//!
//! Agent ids keep MindSphere's shape (`[A-Za-z0-9_-]`: what the MindConnect SDKs and MindSphere
//! produce). Other ids are wider but still need no escaping in a URL path segment, a JWT claim,
//! a store key or a log line; base64url key ids and token ids fit (and may start with `-`).
//! Agent JWK `kid`s are free text because agents choose them (MCL: random per rotation).
//!
//! A refusal is 400 `invalid_request` whose description starts with the field's wire name and
//! states the rule; it never echoes the value (which may be huge or hold control characters).
//!
//! Names of things that may already exist (a path naming a client to delete, a key to revoke)
//! are checked with [`Field::lookup`] instead: only the store's own bound (1..=
//! [`MAX_ID_BYTES`] bytes, no control characters), so objects stored before these alphabets
//! were enforced can still be named and deleted.

use crate::error::ApiError;
use crate::store::MAX_ID_BYTES;

/// Which characters a field may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alphabet {
    /// ASCII letters, digits and `- _ . ~ @ :`, but not `.` or `..` alone (dot segments that
    /// URL libraries rewrite). Lengths count bytes (= characters).
    Id,
    /// MindSphere's agent ids: ASCII letters, digits, `-` and `_`.
    AgentId,
    /// Any Unicode text without control characters, not blank. Lengths count characters.
    Text,
}

/// One request field: its wire name, alphabet and longest value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub alphabet: Alphabet,
    pub max: usize,
}

/// Most subject alternative names one issued certificate may carry.
pub const MAX_SANS: usize = 16;

pub const CLIENT_ID: Field = Field::new("client_id", Alphabet::Id, 128);
pub const TENANT: Field = Field::new("tenant", Alphabet::Id, 64);
pub const PROFILE: Field = Field::new("profile", Alphabet::Id, 64);
pub const DISPLAY_NAME: Field = Field::new("display_name", Alphabet::Text, 128);
pub const KID: Field = Field::new("kid", Alphabet::Id, 128);
pub const ALIAS: Field = Field::new("alias", Alphabet::Id, 128);
pub const NEW_ALIAS: Field = ALIAS.named("new_alias");
/// A token id (`jti`) named for revocation.
pub const JTI: Field = Field::new("id", Alphabet::Id, 128);
pub const REASON: Field = Field::new("reason", Alphabet::Text, 256);
pub const COMMON_NAME: Field = Field::new("common_name", Alphabet::Text, 64);
pub const SAN: Field = Field::new("sans", Alphabet::Text, 253);
/// `entityId`: the agent id, which is also its OAuth `client_id` and the IAT's `sub`.
pub const ENTITY_ID: Field = Field::new("entityId", Alphabet::AgentId, 64);
pub const AGENT_NAME: Field = Field::new("name", Alphabet::Text, 128);
/// The `kid` of a key an agent registers.
pub const AGENT_KID: Field = Field::new("kid", Alphabet::Text, 128);

impl Field {
    pub const fn new(name: &'static str, alphabet: Alphabet, max: usize) -> Field {
        Field {
            name,
            alphabet,
            max,
        }
    }

    /// The same rule under another wire name (the agent id in a path is `id`).
    pub const fn named(self, name: &'static str) -> Field {
        Field { name, ..self }
    }

    /// `value` if it has this field's shape, else 400 naming the field.
    pub fn check<'v>(&self, value: &'v str) -> Result<&'v str, ApiError> {
        let fits = match self.alphabet {
            Alphabet::Id => {
                (1..=self.max).contains(&value.len())
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.~@:".contains(&b))
                    && value != "."
                    && value != ".."
            }
            Alphabet::AgentId => {
                (1..=self.max).contains(&value.len())
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }
            // Bytes first: a huge value is refused without counting its characters.
            Alphabet::Text => {
                value.len() <= self.max * 4
                    && value.chars().count() <= self.max
                    && !value.trim().is_empty()
                    && !value.chars().any(char::is_control)
            }
        };
        if fits {
            Ok(value)
        } else {
            Err(ApiError::InvalidRequest(format!(
                "{}: {} (got {} bytes)",
                self.name,
                self.rule(),
                value.len()
            )))
        }
    }

    /// An optional field: absent is fine, present must fit.
    pub fn check_opt<'v>(&self, value: Option<&'v str>) -> Result<Option<&'v str>, ApiError> {
        value.map(|v| self.check(v)).transpose()
    }

    /// A name of something that may already exist: whatever the store accepts as an id, so
    /// objects stored before this field's alphabet was enforced can still be named.
    pub fn lookup<'v>(&self, value: &'v str) -> Result<&'v str, ApiError> {
        if (1..=MAX_ID_BYTES).contains(&value.len()) && !value.chars().any(char::is_control) {
            Ok(value)
        } else {
            Err(ApiError::InvalidRequest(format!(
                "{}: 1 to {MAX_ID_BYTES} bytes without control characters (got {} bytes)",
                self.name,
                value.len()
            )))
        }
    }

    /// The rule in words, as error descriptions state it.
    pub fn rule(&self) -> String {
        let max = self.max;
        match self.alphabet {
            Alphabet::Id => format!(
                "1 to {max} characters of A-Z, a-z, 0-9 and - _ . ~ @ : (not . or .. alone)"
            ),
            Alphabet::AgentId => {
                format!("agent ids are 1 to {max} characters of A-Z, a-z, 0-9, '-' and '_'")
            }
            Alphabet::Text => format!("1 to {max} characters, not blank, no control characters"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(field: Field, value: &str, ok: bool) {
        let got = field.check(value);
        assert_eq!(got.is_ok(), ok, "{} {value:?}: {got:?}", field.name);
        if let Err(e) = got {
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("{}: ", field.name)), "{msg}");
            assert!(msg.len() < 200, "the value is not echoed: {msg}");
        }
    }

    #[test]
    fn ids_are_path_safe_and_bounded() {
        for ok in [
            "admin",
            "acme-admin",
            "Job",
            "ops@corp:1",
            "a.b~c",
            // base64url thumbprints and jtis may start with '-'.
            "-3kUtxGZg_D5JB551SjzFgs4kzQs4-2thHNrymYgVuo",
            "3f2a6c1e-8d4b-4c7e-9a0f-1b2c3d4e5f60",
        ] {
            check(CLIENT_ID, ok, true);
            check(KID, ok, true);
        }
        check(CLIENT_ID, &"x".repeat(128), true);
        for bad in [
            "", ".", "..", "evil/x", "a b", "a%2Fb", "a\nb", "é", "a?b", "a#b", "a+b",
        ] {
            check(CLIENT_ID, bad, false);
        }
        check(CLIENT_ID, &"x".repeat(129), false);
        check(CLIENT_ID, &"x".repeat(300 * 1024), false);
        check(TENANT, &"t".repeat(65), false);
    }

    #[test]
    fn agent_ids_keep_the_mindsphere_shape() {
        check(ENTITY_ID, "ss-1", true);
        check(ENTITY_ID, "a1B2_c3-", true);
        check(ENTITY_ID, &"e".repeat(64), true);
        check(ENTITY_ID, &"e".repeat(65), false);
        check(ENTITY_ID, "a.b", false);
        check(ENTITY_ID.named("id"), "a@b", false);
        let e = ENTITY_ID.named("id").check("a/b").unwrap_err().to_string();
        assert!(e.starts_with("id: "), "{e}");
    }

    #[test]
    fn text_is_bounded_in_characters_without_control_characters() {
        check(DISPLAY_NAME, "Administrator (created on first run)", true);
        check(DISPLAY_NAME, &"é".repeat(128), true);
        check(DISPLAY_NAME, &"é".repeat(129), false);
        check(DISPLAY_NAME, "   ", false);
        check(DISPLAY_NAME, "a\u{7}b", false);
        check(REASON, &"r".repeat(256), true);
        check(REASON, &"r".repeat(300 * 1024), false);
        check(AGENT_KID, "mindconnect-key-1", true);
        assert_eq!(REASON.check_opt(None).unwrap(), None);
        assert!(REASON.check_opt(Some("")).is_err());
    }

    #[test]
    fn lookups_take_anything_the_store_could_hold() {
        assert!(CLIENT_ID.lookup("evil/x").is_ok());
        assert!(CLIENT_ID.lookup(&"x".repeat(MAX_ID_BYTES)).is_ok());
        for bad in [String::new(), "a\0b".into(), "x".repeat(MAX_ID_BYTES + 1)] {
            let e = CLIENT_ID.lookup(&bad).unwrap_err().to_string();
            assert!(e.starts_with("client_id: "), "{e}");
        }
    }
}
