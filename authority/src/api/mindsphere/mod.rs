//! MindSphere agent-management wire types: what real MindSphere agents and operator tools send
//! and expect, recognised into typed values before any handler acts on them.
//!
//! Wire compatibility beats elegance here. The shapes follow the published clients (the
//! MindConnect Node.js SDK and the MindConnect C library, see `protocol-notes.md`):
//! camelCase for agent management (`entityId`, `eTag`, `securityProfile`), snake_case for the
//! RFC 7591/7592/6749 parts (`client_id`, `registration_access_token`), a Spring page for agent
//! lists, a one-line PEM in `token_key`. Errors are not here: every error body is the OAuth
//! shape that `error::WireError` renders.

use std::time::{Duration, UNIX_EPOCH};

use latchkey_core::json::StrictValue;
use latchkey_core::{Jwk, JwkSet};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Form;
use super::validate::{self, Field};
use crate::error::ApiError;
use crate::store::{AgentRecord, SecurityProfile};

mod query;
pub use query::*;

/// Path prefix of the agent-management API.
pub const API_BASE: &str = "/api/agentmanagement/v3";
/// The audience MindSphere agents put in their client assertions.
pub const SOUTHGATE_AUDIENCE: &str = "southgate";
/// The `schemas` value MindSphere tokens carry.
pub const MINDSPHERE_SCHEMA: &str = "urn:siemens:mindsphere:v1";
/// `client_assertion_type` for RFC 7523 client authentication.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest agent id (= entityId = client id).
pub const MAX_AGENT_ID: usize = validate::ENTITY_ID.max;
/// Longest agent name, in characters.
pub const MAX_AGENT_NAME: usize = validate::AGENT_NAME.max;
/// Longest key id we accept in an agent's JWK, in characters.
pub const MAX_KID: usize = validate::AGENT_KID.max;
/// Largest page size for `GET /agents`.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Page size when the request names none (Spring's default).
pub const DEFAULT_PAGE_SIZE: u32 = 10;

// ---------------------------------------------------------------------------------------------
// Identifiers

/// An agent id: MindSphere's `entityId`, which is also the agent's OAuth `client_id` and the
/// initial access token's `sub`. 1..=64 characters of `[A-Za-z0-9_-]` ([`validate::ENTITY_ID`]),
/// so it can sit in a URL path segment, a store key and a JWT claim without any escaping.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentId(String);

impl AgentId {
    /// Recognises an agent id sent as `entityId`, refusing anything else with 400.
    pub fn parse(s: &str) -> Result<AgentId, ApiError> {
        AgentId::parse_as(validate::ENTITY_ID, s)
    }

    /// Recognises an agent id sent under another name (`id` in a path, `client_id`).
    pub fn parse_as(field: Field, s: &str) -> Result<AgentId, ApiError> {
        field.check(s).map(|s| AgentId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An agent name: 1..=128 characters, no control characters, not only whitespace
/// ([`validate::AGENT_NAME`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentName(String);

impl AgentName {
    pub fn parse(s: &str) -> Result<AgentName, ApiError> {
        validate::AGENT_NAME
            .check(s)
            .map(|s| AgentName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Recognises `SHARED_SECRET` or `RSA_3072`.
pub fn parse_profile(s: &str) -> Result<SecurityProfile, ApiError> {
    SecurityProfile::parse(s).ok_or_else(|| {
        ApiError::InvalidRequest("securityProfile must be SHARED_SECRET or RSA_3072".into())
    })
}

// ---------------------------------------------------------------------------------------------
// JSON bodies

/// Parses a JSON body into `T`, refusing duplicate member names anywhere (two parsers must
/// never disagree about what a request said). Errors are 400 without echoing the input.
pub fn parse_json<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    let invalid = |detail: String| ApiError::InvalidRequest(format!("{what}: {detail}"));
    let value = serde_json::from_slice::<StrictValue>(body)
        .map_err(|_| invalid("not a JSON document without duplicate members".into()))?;
    serde_json::from_value(value.0).map_err(|e| invalid(describe_serde(&e)))
}

/// A serde error without input values: serde names the field or expected type, which helps,
/// but its "invalid value: string \"...\"" parts could echo anything, so they are dropped.
fn describe_serde(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    if let Some(field) = msg.strip_prefix("missing field ") {
        return format!("missing member {field}");
    }
    if let Some(field) = msg.strip_prefix("unknown field ") {
        let field = field.split(',').next().unwrap_or("");
        return format!("unknown member {field}");
    }
    if msg.starts_with("invalid type") {
        return "a member has the wrong JSON type".into();
    }
    "unexpected JSON shape".into()
}

/// `POST /agents` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AgentCreateBody {
    entity_id: String,
    name: String,
    security_profile: String,
}

/// A recognised agent creation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCreate {
    pub id: AgentId,
    pub name: AgentName,
    pub security_profile: SecurityProfile,
}

impl AgentCreate {
    pub fn parse(body: &[u8]) -> Result<AgentCreate, ApiError> {
        let b: AgentCreateBody = parse_json(body, "agent")?;
        Ok(AgentCreate {
            id: AgentId::parse(&b.entity_id)?,
            name: AgentName::parse(&b.name)?,
            security_profile: parse_profile(&b.security_profile)?,
        })
    }
}

/// `PUT /agents/{id}` body (MindSphere `AgentUpdate`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AgentUpdateBody {
    name: String,
    security_profile: String,
}

/// A recognised agent update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUpdate {
    pub name: AgentName,
    pub security_profile: SecurityProfile,
}

impl AgentUpdate {
    pub fn parse(body: &[u8]) -> Result<AgentUpdate, ApiError> {
        let b: AgentUpdateBody = parse_json(body, "agent update")?;
        Ok(AgentUpdate {
            name: AgentName::parse(&b.name)?,
            security_profile: parse_profile(&b.security_profile)?,
        })
    }
}

/// An agent as MindSphere shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    pub id: String,
    /// A string on the wire (`"eTag": "2"`), as MindSphere sends it.
    pub e_tag: String,
    pub entity_id: String,
    pub name: String,
    pub security_profile: &'static str,
}

impl From<&AgentRecord> for Agent {
    fn from(a: &AgentRecord) -> Agent {
        Agent {
            id: a.id.clone(),
            e_tag: a.etag.to_string(),
            entity_id: a.id.clone(),
            name: a.name.clone(),
            security_profile: a.security_profile.as_str(),
        }
    }
}

/// A Spring `Page<Agent>`, which the SDKs' `PagedAgent` model reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PagedAgent {
    pub content: Vec<Agent>,
    pub last: bool,
    pub total_pages: u64,
    pub total_elements: u64,
    pub number_of_elements: u64,
    pub first: bool,
    pub sort: Vec<SortOrder>,
    pub size: u32,
    pub number: u32,
}

/// One Spring `Sort.Order`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SortOrder {
    pub direction: &'static str,
    pub property: &'static str,
    pub ignore_case: bool,
    pub null_handling: &'static str,
    pub ascending: bool,
    pub descending: bool,
}

/// `GET /agents/{id}/boarding/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OnboardingStatus {
    pub status: &'static str,
}

/// `GET /agents/{id}/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OnlineStatus {
    /// `ONLINE` or `OFFLINE`.
    pub status: &'static str,
    /// RFC 3339 with milliseconds.
    pub since: String,
}

/// `GET /agents/{id}/boarding/configuration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BoardingConfiguration {
    pub content: BoardingContent,
    /// When the IAT expires (RFC 3339 with milliseconds); absent once the agent is onboarded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
}

/// The `content` of a boarding configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BoardingContent {
    pub base_url: String,
    /// The initial access token; absent once the agent is onboarded (offboard to board again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<String>,
    /// A one-element array: the SDK converts it to a string, MindSphere sends an array.
    pub client_credential_profile: [&'static str; 1],
    pub client_id: String,
    pub tenant: String,
}

// ---------------------------------------------------------------------------------------------
// Registration (RFC 7591 / 7592)

#[derive(Debug, Deserialize)]
struct RegisterBody {
    #[serde(default)]
    jwks: Option<StrictValue>,
    #[serde(default)]
    client_id: Option<String>,
}

/// A recognised register or rotate request body. Other RFC 7591 metadata members are ignored
/// (the server decides them), as RFC 7591 §2 allows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegisterRequest {
    pub jwks: Option<JwkSet>,
    pub client_id: Option<String>,
}

impl RegisterRequest {
    /// An empty body counts as `{}` (some clients send none on POST).
    pub fn parse(body: &[u8]) -> Result<RegisterRequest, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(RegisterRequest::default());
        }
        let b: RegisterBody = parse_json(body, "registration")?;
        let jwks = match b.jwks {
            None => None,
            Some(v) => Some(serde_json::from_value::<JwkSet>(v.0).map_err(|_| {
                ApiError::InvalidRequest(
                    "registration: jwks must be a JWK Set ({\"keys\": [...]})".into(),
                )
            })?),
        };
        Ok(RegisterRequest {
            jwks,
            client_id: b.client_id,
        })
    }
}

/// The register (201) and rotate (200) answer, and the RFC 7592 read answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistrationResponse {
    pub client_id: String,
    pub token_endpoint_auth_method: &'static str,
    pub grant_types: [&'static str; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// Seconds; never 0 (the Node SDK throws on 0).
    pub client_secret_expires_at: u64,
    pub registration_access_token: String,
    pub registration_client_uri: String,
    /// Only on the RFC 7592 read: the registered public keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwkSet>,
}

// ---------------------------------------------------------------------------------------------
// Token endpoint (RFC 6749 §4.4 + RFC 7523 §2.2)

/// A recognised token request: client credentials with a JWT client assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub client_assertion: String,
    /// Optional; when sent it must name the assertion's issuer.
    pub client_id: Option<String>,
}

impl TokenRequest {
    /// Recognises the form of a token request (`Form` has already refused repeated names).
    pub fn parse(form: &Form<'_>) -> Result<TokenRequest, ApiError> {
        match form.get("grant_type") {
            Some("client_credentials") => {}
            Some(_) => {
                return Err(ApiError::UnsupportedGrantType(
                    "only grant_type=client_credentials is supported here".into(),
                ));
            }
            None => return Err(ApiError::InvalidRequest("grant_type is missing".into())),
        }
        match form.get("client_assertion_type") {
            Some(JWT_BEARER) => {}
            Some(_) => {
                return Err(ApiError::InvalidRequest(format!(
                    "client_assertion_type must be {JWT_BEARER}"
                )));
            }
            None => {
                return Err(ApiError::InvalidClient(
                    "client authentication with a JWT client assertion is required".into(),
                ));
            }
        }
        let client_assertion = form
            .get("client_assertion")
            .ok_or_else(|| ApiError::InvalidRequest("client_assertion is missing".into()))?
            .to_owned();
        Ok(TokenRequest {
            client_assertion,
            client_id: form.get("client_id").map(str::to_owned),
        })
    }
}

/// The token endpoint's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub scope: Vec<String>,
    pub jti: String,
}

/// `GET /oauth/token_key`: the signing key as a JWK plus its PEM on one line in `value` (the
/// Node SDK inserts the line breaks itself; a multi-line PEM would then fail to parse).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenKey {
    #[serde(flatten)]
    pub jwk: Jwk,
    pub value: String,
}

// ---------------------------------------------------------------------------------------------
// Times and headers

/// Unix seconds as RFC 3339 with milliseconds (`2017-12-18T14:04:01.000Z`), as MindSphere
/// writes `expiration`.
pub fn rfc3339_millis(unix: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// An `If-Match` header: `*`, or one eTag, quoted (`"3"`), weak (`W/"3"`) or bare (`3`, what
/// the Node SDK sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMatch {
    Any,
    ETag(u64),
}

impl IfMatch {
    pub fn parse(v: &str) -> Result<IfMatch, ApiError> {
        let v = v.trim();
        if v == "*" {
            return Ok(IfMatch::Any);
        }
        let v = v.strip_prefix("W/").unwrap_or(v);
        let v = v
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or(v);
        if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::InvalidRequest(
                "If-Match must be an eTag this server issued".into(),
            ));
        }
        v.parse()
            .map(IfMatch::ETag)
            .map_err(|_| ApiError::InvalidRequest("If-Match out of range".into()))
    }

    /// The eTag the store must find, `None` for `*`.
    pub fn expected(self) -> Option<u64> {
        match self {
            IfMatch::Any => None,
            IfMatch::ETag(e) => Some(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids() {
        let check = |s: &str, ok: bool| assert_eq!(AgentId::parse(s).is_ok(), ok, "{s:?}");
        check("3b27818ea09a46b48c7eb3fbd878349f", true);
        check("5fa51b64-dce2-11e7-9296-cec278b6b50a", true);
        check("a_b", true);
        check(&"a".repeat(64), true);
        check(&"a".repeat(65), false);
        check("", false);
        check("a/b", false);
        check("a b", false);
        check("a%2Fb", false);
        check("ä", false);
        check("..", false);
    }

    #[test]
    fn agent_names() {
        assert!(AgentName::parse("Nanobox Agent").is_ok());
        assert!(AgentName::parse(&"é".repeat(128)).is_ok());
        assert!(AgentName::parse(&"é".repeat(129)).is_err());
        assert!(AgentName::parse("  ").is_err());
        assert!(AgentName::parse("a\nb").is_err());
    }

    #[test]
    fn agent_create_bodies() {
        let ok = AgentCreate::parse(
            br#"{"entityId":"3b27818e","name":"Nanobox Agent","securityProfile":"SHARED_SECRET"}"#,
        )
        .expect("parse");
        assert_eq!(ok.id.as_str(), "3b27818e");
        assert_eq!(ok.security_profile, SecurityProfile::SharedSecret);
        let bad = |body: &str, want: &str| {
            let e = AgentCreate::parse(body.as_bytes()).expect_err(body);
            assert!(
                matches!(&e, ApiError::InvalidRequest(m) if m.contains(want)),
                "{e:?}"
            );
        };
        bad(
            r#"{"entityId":"a","name":"n","securityProfile":"RSA_2048"}"#,
            "SHARED_SECRET or RSA_3072",
        );
        bad(
            r#"{"entityId":"a/b","name":"n","securityProfile":"RSA_3072"}"#,
            "agent ids",
        );
        bad(r#"{"entityId":"a","name":"n"}"#, "missing member");
        bad(
            r#"{"entityId":"a","entityId":"b","name":"n","securityProfile":"RSA_3072"}"#,
            "duplicate",
        );
        bad(
            r#"{"entityId":"a","name":"n","securityProfile":"RSA_3072","x":1}"#,
            "unknown member",
        );
        bad(
            r#"{"entityId":1,"name":"n","securityProfile":"RSA_3072"}"#,
            "wrong JSON type",
        );
        bad("[]", "agent");
    }

    #[test]
    fn agent_json_shape() {
        let rec = AgentRecord {
            id: "e1".into(),
            tenant: "t".into(),
            name: "Nanobox Agent".into(),
            security_profile: SecurityProfile::Rsa3072,
            state: crate::store::BoardingState::Onboarding,
            etag: 2,
            current_iat: None,
            created_at: 1,
            updated_at: 1,
            suspended_at: None,
        };
        let json = serde_json::to_value(Agent::from(&rec)).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"id":"e1","eTag":"2","entityId":"e1","name":"Nanobox Agent",
                               "securityProfile":"RSA_3072"})
        );
    }

    #[test]
    fn register_bodies() {
        assert_eq!(
            RegisterRequest::parse(b"").expect("empty"),
            RegisterRequest::default()
        );
        assert_eq!(
            RegisterRequest::parse(b"{}").expect("{}"),
            RegisterRequest::default()
        );
        let r = RegisterRequest::parse(
            br#"{"client_id":"a","jwks":{"keys":[{"kty":"RSA","e":"AQAB","n":"xyz","kid":"k"}]},
                 "grant_types":["client_credentials"]}"#,
        )
        .expect("parse");
        assert_eq!(r.client_id.as_deref(), Some("a"));
        assert_eq!(r.jwks.expect("jwks").keys[0].kid.as_deref(), Some("k"));
        assert!(RegisterRequest::parse(br#"{"jwks":[]}"#).is_err());
        assert!(
            RegisterRequest::parse(br#"{"jwks":{"keys":[{"kty":"RSA","kty":"oct"}]}}"#).is_err()
        );
        assert!(RegisterRequest::parse(b"{").is_err());
    }

    #[test]
    fn token_requests() {
        let parse = |body: &str| {
            let form = Form::parse(body).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
            TokenRequest::parse(&form)
        };
        let body = format!(
            "grant_type=client_credentials&client_assertion_type={}&client_assertion=a.b.c",
            "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
        );
        let r = parse(&body).expect("parse");
        assert_eq!(r.client_assertion, "a.b.c");
        assert_eq!(r.client_id, None);
        let check = |body: &str, want: fn(&ApiError) -> bool| {
            let e = parse(body).expect_err(body);
            assert!(want(&e), "{body}: {e:?}");
        };
        check("grant_type=password&client_assertion_type=x", |e| {
            matches!(e, ApiError::UnsupportedGrantType(_))
        });
        check(
            "grant_type=client_credentials&client_assertion=a.b.c",
            |e| matches!(e, ApiError::InvalidClient(_)),
        );
        check(
            &format!("{body}&grant_type=client_credentials"),
            |e| matches!(e, ApiError::InvalidRequest(m) if m.contains("more than once")),
        );
        check(
            "grant_type=client_credentials&client_assertion_type=x",
            |e| matches!(e, ApiError::InvalidRequest(m) if m.contains("jwt-bearer")),
        );
        check(
            "client_assertion=a",
            |e| matches!(e, ApiError::InvalidRequest(m) if m.contains("grant_type")),
        );
    }

    #[test]
    fn if_match_forms() {
        assert_eq!(IfMatch::parse("3").expect("bare"), IfMatch::ETag(3));
        assert_eq!(IfMatch::parse("\"3\"").expect("quoted"), IfMatch::ETag(3));
        assert_eq!(IfMatch::parse("W/\"12\"").expect("weak"), IfMatch::ETag(12));
        assert_eq!(IfMatch::parse("*").expect("any"), IfMatch::Any);
        for bad in ["", "\"\"", "x", "-1", "99999999999999999999"] {
            assert!(IfMatch::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn agent(id: &str, name: &str, etag: u64) -> AgentRecord {
        AgentRecord {
            id: id.into(),
            tenant: "t".into(),
            name: name.into(),
            security_profile: SecurityProfile::SharedSecret,
            state: crate::store::BoardingState::Onboarding,
            etag,
            current_iat: None,
            created_at: 1,
            updated_at: 1,
            suspended_at: None,
        }
    }

    fn query(q: &str) -> Result<AgentQuery, ApiError> {
        let form = Form::parse(q).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
        AgentQuery::parse(&form)
    }

    #[test]
    fn agent_pages_filter_sort_and_count() {
        let all: Vec<AgentRecord> = (0..25)
            .map(|i| agent(&format!("a{i:02}"), &format!("name-{}", 24 - i), i))
            .collect();
        let page = query("").expect("defaults").page(all.clone(), |_| false);
        assert_eq!(
            (
                page.size,
                page.number,
                page.total_elements,
                page.total_pages
            ),
            (10, 0, 25, 3)
        );
        assert!(page.first && !page.last);
        assert_eq!(page.content[0].id, "a00");
        let page = query("page=2&size=10&sort=eTag,desc")
            .expect("q")
            .page(all.clone(), |_| false);
        assert_eq!(page.number_of_elements, 5);
        assert!(page.last && !page.first);
        assert_eq!(page.content[0].id, "a04");
        assert_eq!(page.sort[0].direction, "DESC");
        let page = query("sort=name").expect("q").page(all.clone(), |_| false);
        assert_eq!(page.content[0].name, "name-0");
        let f = "filter=%7B%22name%22%3A%7B%22startsWith%22%3A%22name-1%22%7D%7D&size=100";
        let page = query(f).expect("q").page(all.clone(), |_| false);
        // name-1 and name-10 .. name-19
        assert_eq!(page.total_elements, 11);
        let page = query("filter=%7B%22id%22%3A%22a03%22%7D")
            .expect("q")
            .page(all.clone(), |_| false);
        assert_eq!(
            page.content
                .iter()
                .map(|a| a.id.as_str())
                .collect::<Vec<_>>(),
            ["a03"]
        );
        let page = query("page=9").expect("q").page(all, |_| false);
        assert!(page.content.is_empty() && page.last);
        for bad in [
            "size=0",
            "size=101",
            "page=-1",
            "sort=secret",
            "sort=name,sideways",
            "filter=%5B%5D",
            "filter=%7B%22x%22%3A%22y%22%7D",
            "filter=%7B%22name%22%3A%7B%22like%22%3A%22y%22%7D%7D",
            "filter=%7B%22name%22%3A1%7D",
        ] {
            assert!(query(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339_millis(1_513_605_841), "2017-12-18T14:04:01.000Z");
    }
}
