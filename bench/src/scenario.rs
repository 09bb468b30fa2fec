//! What each request is: the scenarios, and a per-thread [`Workload`] that writes the next
//! request into a buffer and judges its response.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use latchkey_core::SigningKey;

use crate::assertion::{AssertionMinter, header_b64, hmac_key};
use crate::error::Error;
use crate::http::{self, Connection, Request, Response, form_encode};
use crate::prepare::SecretAgent;
use crate::stats::ErrorKind;

/// `client_assertion_type` for RFC 7523 JWT bearer assertions, form-encoded.
const JWT_BEARER: &str = "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer";

/// A named load scenario (`--scenario`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Agent token requests, `client_secret_jwt` (HS256 assertion minted per request).
    TokenSecretJwt,
    /// Agent token requests, `private_key_jwt` (RS256 assertions from a pre-minted pool).
    TokenPrivateKeyJwt,
    /// Agent token requests authenticated by the TLS client certificate alone
    /// (`tls_client_auth`, RFC 8705): `client_id` and no secret. Needs --client-cert.
    TokenMtls,
    /// `GET /healthz`: the cheapest request; with --new-connection-per-request and
    /// --no-resumption it measures full TLS handshakes.
    Healthz,
    /// Operator token requests, `client_secret_basic` at `POST /oauth/token`.
    TokenBasic,
    /// RFC 7662 introspection of agent access tokens, operator Basic credentials.
    Introspect,
    /// RFC 7592 rotation: `PUT registration_client_uri` with the current RAT.
    RegisterRotate,
    /// 60 % secret JWT, 20 % private key JWT, 15 % introspection, 5 % rotation.
    Mix,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::TokenSecretJwt => "token-secret-jwt",
            Scenario::TokenPrivateKeyJwt => "token-private-key-jwt",
            Scenario::TokenMtls => "token-mtls",
            Scenario::Healthz => "healthz",
            Scenario::TokenBasic => "token-basic",
            Scenario::Introspect => "introspect",
            Scenario::RegisterRotate => "register-rotate",
            Scenario::Mix => "mix",
        }
    }

    /// The operations, in the order a worker cycles through them.
    pub fn cycle(self) -> Vec<Op> {
        match self {
            Scenario::TokenSecretJwt => vec![Op::SecretJwt],
            Scenario::TokenPrivateKeyJwt => vec![Op::PrivateKeyJwt],
            Scenario::TokenMtls => vec![Op::Mtls],
            Scenario::Healthz => vec![Op::Healthz],
            Scenario::TokenBasic => vec![Op::Basic],
            Scenario::Introspect => vec![Op::Introspect],
            Scenario::RegisterRotate => vec![Op::Rotate],
            Scenario::Mix => {
                // 20 slots, interleaved so every stretch of the run sees every kind.
                let mut v = Vec::with_capacity(20);
                for i in 0..20 {
                    v.push(match i {
                        3 | 8 | 13 | 18 => Op::PrivateKeyJwt,
                        4 | 11 | 17 => Op::Introspect,
                        9 => Op::Rotate,
                        _ => Op::SecretJwt,
                    });
                }
                v
            }
        }
    }

    /// Which credentials the scenario needs.
    pub fn needs(self) -> Needs {
        let ops = self.cycle();
        Needs {
            secret_agents: ops.iter().any(|o| matches!(o, Op::SecretJwt | Op::Rotate)),
            rsa_agents: ops.contains(&Op::PrivateKeyJwt),
            mtls_agents: ops.contains(&Op::Mtls),
            operator: ops.iter().any(|o| matches!(o, Op::Basic | Op::Introspect)),
            introspect_tokens: ops.contains(&Op::Introspect),
            rotation: ops.contains(&Op::Rotate),
        }
    }
}

/// What a scenario needs prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    pub secret_agents: bool,
    pub rsa_agents: bool,
    pub mtls_agents: bool,
    pub operator: bool,
    pub introspect_tokens: bool,
    pub rotation: bool,
}

/// One kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    SecretJwt,
    PrivateKeyJwt,
    Mtls,
    Healthz,
    Basic,
    Introspect,
    Rotate,
}

/// What a sent request was, to judge its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub op: Op,
    /// For rotations: the index of the agent in the worker's rotation set.
    pub agent: usize,
}

/// Why no request could be written now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// Every rotation agent has a rotation in flight; try again after a response.
    Busy,
    /// The pre-minted RS256 pool is used up: this worker's run ends.
    PoolExhausted,
}

/// Paths and fixed headers.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The agents' token endpoint (or the peer's).
    pub token_path: String,
    /// `Authorization: Basic …` of the operator client, if any.
    pub operator_basic: Option<String>,
    /// The `Host` header value.
    pub host: String,
    /// Keep-alive, or `Connection: close` on every request.
    pub connection: Connection,
    /// Extra form parameters appended to agent token requests (e.g. `client_id=…`).
    pub extra_form: String,
}

/// One rotation agent: its credentials, and whether a rotation is in flight.
#[derive(Debug)]
struct RotationAgent {
    agent: SecretAgent,
}

/// One worker's share of the agents and its request factory.
#[derive(Debug)]
pub struct Workload {
    cycle: Vec<Op>,
    pos: usize,
    endpoints: Endpoints,
    minter: AssertionMinter,
    hs_header: String,
    /// Agents used for token requests, picked at random per request (for `Op::Mtls`, the
    /// tls_client_auth agents: only their ids are used).
    token_agents: Vec<SecretAgent>,
    /// Agents used for rotations (disjoint from `token_agents` in the mix, so a rotation
    /// never invalidates a token request's secret in flight).
    rotation: Vec<RotationAgent>,
    free: VecDeque<usize>,
    /// Agents whose rotation ended in a transport error: their RAT state is unknown.
    pub lost_rotation_agents: usize,
    pool: Vec<String>,
    introspect_tokens: Arc<Vec<String>>,
    rng: u64,
    form: String,
    body: String,
}

impl Workload {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        scenario: Scenario,
        endpoints: Endpoints,
        minter: AssertionMinter,
        token_agents: Vec<SecretAgent>,
        rotation_agents: Vec<SecretAgent>,
        pool: Vec<String>,
        introspect_tokens: Arc<Vec<String>>,
        seed: u64,
    ) -> Workload {
        let hs_header = hmac_key(&"h".repeat(32))
            .map(|k| header_b64(&k))
            .unwrap_or_default();
        let free = (0..rotation_agents.len()).collect();
        Workload {
            cycle: scenario.cycle(),
            pos: seed as usize % 20,
            endpoints,
            minter,
            hs_header,
            token_agents,
            rotation: rotation_agents
                .into_iter()
                .map(|agent| RotationAgent { agent })
                .collect(),
            free,
            lost_rotation_agents: 0,
            pool,
            introspect_tokens,
            rng: seed | 1,
            form: String::with_capacity(1024),
            body: String::with_capacity(256),
        }
    }

    /// The agents, back from the worker (rotations changed their credentials).
    pub fn into_agents(self) -> (Vec<SecretAgent>, Vec<SecretAgent>) {
        (
            self.token_agents,
            self.rotation.into_iter().map(|r| r.agent).collect(),
        )
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*: uniform enough to spread requests over agents, and free.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Appends the next request to `out`.
    pub fn next(&mut self, out: &mut Vec<u8>) -> Result<Result<Tag, Pause>, Error> {
        let op = self.cycle[self.pos % self.cycle.len()];
        let tag = match op {
            Op::SecretJwt => {
                if self.token_agents.is_empty() {
                    return Err(Error::Usage(
                        "no SHARED_SECRET agents to request tokens for".into(),
                    ));
                }
                let i = (self.next_rand() % self.token_agents.len() as u64) as usize;
                let agent = &self.token_agents[i];
                let key = hmac_key(&agent.secret)?;
                let id = agent.id.clone();
                let assertion = self.minter.mint(&id, &key, &self.hs_header, unix_now())?;
                self.write_token_request(&assertion, out);
                Tag { op, agent: i }
            }
            Op::PrivateKeyJwt => {
                let Some(assertion) = self.pool.pop() else {
                    return Ok(Err(Pause::PoolExhausted));
                };
                self.write_token_request(&assertion, out);
                Tag { op, agent: 0 }
            }
            Op::Mtls => {
                if self.token_agents.is_empty() {
                    return Err(Error::Usage(
                        "no tls_client_auth agents to request tokens for".into(),
                    ));
                }
                let i = (self.next_rand() % self.token_agents.len() as u64) as usize;
                self.form.clear();
                self.form
                    .push_str("grant_type=client_credentials&client_id=");
                form_encode(&self.token_agents[i].id, &mut self.form);
                Request {
                    method: "POST",
                    path: &self.endpoints.token_path,
                    headers: &[],
                    content_type: Some("application/x-www-form-urlencoded"),
                    body: self.form.as_bytes(),
                }
                .write(&self.endpoints.host, self.endpoints.connection, out);
                Tag { op, agent: i }
            }
            Op::Healthz => {
                Request {
                    method: "GET",
                    path: "/healthz",
                    headers: &[],
                    content_type: None,
                    body: b"",
                }
                .write(&self.endpoints.host, self.endpoints.connection, out);
                Tag { op, agent: 0 }
            }
            Op::Basic => {
                let basic = self.endpoints.operator_basic.as_deref().unwrap_or("");
                Request {
                    method: "POST",
                    path: "/oauth/token",
                    headers: &[basic],
                    content_type: Some("application/x-www-form-urlencoded"),
                    body: b"grant_type=client_credentials",
                }
                .write(&self.endpoints.host, self.endpoints.connection, out);
                Tag { op, agent: 0 }
            }
            Op::Introspect => {
                if self.introspect_tokens.is_empty() {
                    return Err(Error::Usage("no access tokens to introspect".into()));
                }
                let i = (self.next_rand() % self.introspect_tokens.len() as u64) as usize;
                self.form.clear();
                self.form.push_str("token=");
                form_encode(&self.introspect_tokens[i], &mut self.form);
                let basic = self.endpoints.operator_basic.as_deref().unwrap_or("");
                Request {
                    method: "POST",
                    path: "/oauth/introspect",
                    headers: &[basic],
                    content_type: Some("application/x-www-form-urlencoded"),
                    body: self.form.as_bytes(),
                }
                .write(&self.endpoints.host, self.endpoints.connection, out);
                Tag { op, agent: 0 }
            }
            Op::Rotate => {
                let Some(i) = self.free.pop_front() else {
                    return Ok(Err(Pause::Busy));
                };
                let agent = &self.rotation[i].agent;
                self.body.clear();
                self.body
                    .push_str(&serde_json::json!({ "client_id": agent.id }).to_string());
                let bearer = format!("Authorization: Bearer {}", agent.rat);
                Request {
                    method: "PUT",
                    path: &agent.registration_path,
                    headers: &[&bearer],
                    content_type: Some("application/json"),
                    body: self.body.as_bytes(),
                }
                .write(&self.endpoints.host, self.endpoints.connection, out);
                Tag { op, agent: i }
            }
        };
        self.pos += 1;
        Ok(Ok(tag))
    }

    fn write_token_request(&mut self, assertion: &str, out: &mut Vec<u8>) {
        self.form.clear();
        self.form
            .push_str("grant_type=client_credentials&client_assertion_type=");
        self.form.push_str(JWT_BEARER);
        self.form.push_str("&client_assertion=");
        // Compact JWS characters are all unreserved: no escaping needed.
        self.form.push_str(assertion);
        self.form.push_str(&self.endpoints.extra_form);
        Request {
            method: "POST",
            path: &self.endpoints.token_path,
            headers: &[],
            content_type: Some("application/x-www-form-urlencoded"),
            body: self.form.as_bytes(),
        }
        .write(&self.endpoints.host, self.endpoints.connection, out);
    }

    /// Judges the response to `tag` (`None`: no response, the transport failed) and updates
    /// credentials after a rotation. Returns the error kind, if it failed.
    pub fn complete(&mut self, tag: Tag, response: Option<&Response>) -> Option<ErrorKind> {
        let Some(r) = response else {
            if tag.op == Op::Rotate {
                // The rotation may or may not have committed: the agent's RAT is unknown.
                self.lost_rotation_agents += 1;
            }
            return None;
        };
        let ok = (200..300).contains(&r.status);
        let verdict = match tag.op {
            Op::SecretJwt | Op::PrivateKeyJwt | Op::Mtls | Op::Basic => {
                if !ok {
                    Some(ErrorKind::Status(r.status))
                } else if !http::contains(&r.body, b"\"access_token\"") {
                    Some(ErrorKind::UnexpectedBody)
                } else {
                    None
                }
            }
            Op::Introspect => {
                if !ok {
                    Some(ErrorKind::Status(r.status))
                } else if !http::contains(&r.body, b"\"active\":true") {
                    Some(ErrorKind::UnexpectedBody)
                } else {
                    None
                }
            }
            Op::Healthz => (!ok).then_some(ErrorKind::Status(r.status)),
            Op::Rotate => self.rotated(tag.agent, r),
        };
        if tag.op == Op::Rotate {
            self.free.push_back(tag.agent);
        }
        verdict
    }

    fn rotated(&mut self, i: usize, r: &Response) -> Option<ErrorKind> {
        if !(200..300).contains(&r.status) {
            return Some(ErrorKind::Status(r.status));
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&r.body) else {
            return Some(ErrorKind::UnexpectedBody);
        };
        let (Some(rat), Some(secret)) = (
            v["registration_access_token"].as_str(),
            v["client_secret"].as_str(),
        ) else {
            return Some(ErrorKind::UnexpectedBody);
        };
        let agent = &mut self.rotation[i].agent;
        if rat == agent.rat || secret == agent.secret {
            return Some(ErrorKind::UnexpectedBody);
        }
        agent.rat = rat.to_owned();
        agent.secret = secret.to_owned();
        None
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The HS256 key of a token agent (for the readiness probe and the introspection tokens).
pub fn agent_key(agent: &SecretAgent) -> Result<SigningKey, Error> {
    hmac_key(&agent.secret)
}

/// The keep-alive setting's name.
pub fn connection_mode(c: Connection) -> &'static str {
    match c {
        Connection::KeepAlive => "keep-alive",
        Connection::Close => "new connection per request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assertion::AssertionSpec;
    use latchkey_core::jti::JtiGenerator;

    fn agent(id: &str) -> SecretAgent {
        SecretAgent {
            id: id.into(),
            secret: format!("{id}-secret-0123456789012345678901234567890"),
            rat: format!("{id}-rat"),
            registration_path: format!("/api/agentmanagement/v3/register/{id}"),
        }
    }

    fn workload(scenario: Scenario, pool: Vec<String>) -> Workload {
        let minter = AssertionMinter::new(
            AssertionSpec {
                audience: vec!["southgate".into()],
                tenant: Some("main".into()),
                lifetime: 60,
            },
            Arc::new(JtiGenerator::random().unwrap()),
        );
        Workload::new(
            scenario,
            Endpoints {
                token_path: "/api/agentmanagement/v3/oauth/token".into(),
                operator_basic: Some("Authorization: Basic YTpi".into()),
                host: "127.0.0.1:1".into(),
                connection: Connection::KeepAlive,
                extra_form: String::new(),
            },
            minter,
            vec![agent("a"), agent("b")],
            vec![agent("r")],
            pool,
            Arc::new(vec!["tok.en.x".into()]),
            7,
        )
    }

    fn response(status: u16, body: &str) -> Response {
        Response {
            status,
            body: body.as_bytes().to_vec(),
            closes: false,
        }
    }

    fn request_text(w: &mut Workload) -> (Tag, String) {
        let mut out = Vec::new();
        let tag = w.next(&mut out).unwrap().unwrap();
        (tag, String::from_utf8(out).unwrap())
    }

    #[test]
    fn secret_jwt_requests_carry_a_fresh_assertion() {
        let mut w = workload(Scenario::TokenSecretJwt, vec![]);
        let (tag, text) = request_text(&mut w);
        assert_eq!(tag.op, Op::SecretJwt);
        assert!(text.starts_with("POST /api/agentmanagement/v3/oauth/token HTTP/1.1\r\n"));
        assert!(text.contains("client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=ey"));
        let (_, again) = request_text(&mut w);
        assert_ne!(text, again, "every request has its own assertion");
        assert_eq!(
            w.complete(tag, Some(&response(200, r#"{"access_token":"x"}"#))),
            None
        );
        assert_eq!(
            w.complete(tag, Some(&response(200, "{}"))),
            Some(ErrorKind::UnexpectedBody)
        );
        assert_eq!(
            w.complete(tag, Some(&response(401, "{}"))),
            Some(ErrorKind::Status(401))
        );
    }

    #[test]
    fn the_pool_runs_out() {
        let mut w = workload(Scenario::TokenPrivateKeyJwt, vec!["p.q.r".into()]);
        let (_, text) = request_text(&mut w);
        assert!(text.ends_with("&client_assertion=p.q.r"));
        let mut out = Vec::new();
        assert_eq!(w.next(&mut out).unwrap(), Err(Pause::PoolExhausted));
        assert!(w.pool.is_empty());
    }

    #[test]
    fn rotation_updates_credentials_and_serialises_per_agent() {
        let mut w = workload(Scenario::RegisterRotate, vec![]);
        let (tag, text) = request_text(&mut w);
        assert!(text.starts_with("PUT /api/agentmanagement/v3/register/r HTTP/1.1\r\n"));
        assert!(text.contains("Authorization: Bearer r-rat\r\n"));
        assert!(text.ends_with(r#"{"client_id":"r"}"#));
        // The only rotation agent is busy.
        assert_eq!(w.next(&mut Vec::new()).unwrap(), Err(Pause::Busy));
        let body =
            r#"{"client_id":"r","client_secret":"new-secret","registration_access_token":"rat2"}"#;
        assert_eq!(w.complete(tag, Some(&response(200, body))), None);
        let (tag, text) = request_text(&mut w);
        assert!(text.contains("Authorization: Bearer rat2\r\n"));
        // Same RAT back again is not a rotation.
        let same = r#"{"client_secret":"other","registration_access_token":"rat2"}"#;
        assert_eq!(
            w.complete(tag, Some(&response(200, same))),
            Some(ErrorKind::UnexpectedBody)
        );
        let (tag, _) = request_text(&mut w);
        assert_eq!(w.complete(tag, None), None);
        assert_eq!(w.lost_rotation_agents, 1);
        let (_, rot) = w.into_agents();
        assert_eq!(rot[0].secret, "new-secret");
    }

    #[test]
    fn introspection_and_basic_use_operator_credentials() {
        let mut w = workload(Scenario::Introspect, vec![]);
        let (tag, text) = request_text(&mut w);
        assert!(text.starts_with("POST /oauth/introspect HTTP/1.1\r\n"));
        assert!(text.contains("Authorization: Basic YTpi\r\n"));
        assert!(text.ends_with("token=tok.en.x"));
        assert_eq!(
            w.complete(tag, Some(&response(200, r#"{"active":false}"#))),
            Some(ErrorKind::UnexpectedBody)
        );
        let mut w = workload(Scenario::TokenBasic, vec![]);
        let (_, text) = request_text(&mut w);
        assert!(text.ends_with("\r\n\r\ngrant_type=client_credentials"));
    }

    #[test]
    fn mtls_token_requests_carry_only_the_client_id() {
        let mut w = workload(Scenario::TokenMtls, vec![]);
        let (tag, text) = request_text(&mut w);
        assert_eq!(tag.op, Op::Mtls);
        assert!(text.starts_with("POST /api/agentmanagement/v3/oauth/token HTTP/1.1\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        assert!(
            body == "grant_type=client_credentials&client_id=a"
                || body == "grant_type=client_credentials&client_id=b",
            "{body}"
        );
        assert!(!text.contains("client_assertion"));
        assert_eq!(
            w.complete(tag, Some(&response(200, r#"{"access_token":"x"}"#))),
            None
        );
        assert_eq!(
            w.complete(tag, Some(&response(401, "{}"))),
            Some(ErrorKind::Status(401))
        );
        let needs = Scenario::TokenMtls.needs();
        assert!(needs.mtls_agents && !needs.secret_agents && !needs.operator);
    }

    #[test]
    fn healthz_needs_nothing_and_wants_200() {
        let mut w = workload(Scenario::Healthz, vec![]);
        let (tag, text) = request_text(&mut w);
        assert!(text.starts_with("GET /healthz HTTP/1.1\r\n"));
        assert_eq!(w.complete(tag, Some(&response(200, "ok"))), None);
        assert_eq!(
            w.complete(tag, Some(&response(503, ""))),
            Some(ErrorKind::Status(503))
        );
        let needs = Scenario::Healthz.needs();
        assert!(!(needs.secret_agents || needs.rsa_agents || needs.mtls_agents || needs.operator));
    }

    #[test]
    fn mix_covers_every_kind() {
        let ops = Scenario::Mix.cycle();
        let count = |op| ops.iter().filter(|o| **o == op).count();
        assert_eq!(
            (
                count(Op::SecretJwt),
                count(Op::PrivateKeyJwt),
                count(Op::Introspect),
                count(Op::Rotate)
            ),
            (12, 4, 3, 1)
        );
        let needs = Scenario::Mix.needs();
        assert!(needs.secret_agents && needs.rsa_agents && needs.operator && needs.rotation);
        assert!(!Scenario::TokenSecretJwt.needs().operator);
    }
}
