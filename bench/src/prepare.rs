//! The preparation phase: operator login, then agents created and registered through the
//! real onboarding API (`POST /agents` → `GET …/boarding/configuration` → `POST /register`),
//! in parallel, optionally saved to and reloaded from an agents file so a later run (say,
//! the next step of a scaling series) only adds the missing ones.

use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use latchkey_core::{Algorithm, Jwk, SigningKey};
use serde_json::{Value, json};

use crate::client::Client;
use crate::error::Error;
use crate::http::{Request, Response, form_encode};
use crate::target::{Target, path_of};

/// The agent-management API prefix (MindSphere's).
pub const API_BASE: &str = "/api/agentmanagement/v3";
/// Refresh the operator token after this many agents (tokens live an hour by default).
const AGENTS_PER_LOGIN: usize = 20_000;

/// Operator client credentials, as `latchkey serve` writes them to `admin-client.json`.
#[derive(Clone)]
pub struct Operator {
    pub client_id: String,
    /// `Basic base64(id:secret)`; holds the secret, so Debug leaves it out.
    pub basic: String,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl Operator {
    pub fn new(client_id: &str, secret: &str) -> Operator {
        // RFC 6749 §2.3.1: form-encode both before joining them.
        let mut raw = String::new();
        form_encode(client_id, &mut raw);
        raw.push(':');
        form_encode(secret, &mut raw);
        Operator {
            client_id: client_id.to_owned(),
            basic: format!(
                "Authorization: Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            ),
        }
    }

    /// Reads `{"client_id", "client_secret"}` from a credentials file; the first run's
    /// `admin-client.json` opens with the `master.key` beside it (and `LATCHKEY_PASSPHRASE`).
    pub fn from_file(path: &Path) -> Result<Operator, Error> {
        let options = latchkey_authority::cmd::passphrase::key_options(None)
            .map_err(|e| Error::Usage(e.to_string()))?;
        let c = latchkey_authority::credentials::read(path, &options)
            .map_err(|e| Error::Usage(e.to_string()))?;
        Ok(Operator::new(&c.client_id, &c.client_secret))
    }

    /// `POST /oauth/token` with Basic credentials: an operator access token.
    pub fn login(&self, client: &mut Client) -> Result<String, Error> {
        let r = client.request(&Request {
            method: "POST",
            path: "/oauth/token",
            headers: &[&self.basic],
            content_type: Some("application/x-www-form-urlencoded"),
            body: b"grant_type=client_credentials",
        })?;
        let v = expect_json(&r, 200, "operator token")?;
        str_member(&v, "access_token", "operator token")
    }
}

/// A SHARED_SECRET agent's credentials.
#[derive(Clone)]
pub struct SecretAgent {
    pub id: String,
    pub secret: String,
    pub rat: String,
    /// Path of the `registration_client_uri`.
    pub registration_path: String,
}

/// A `tls_client_auth` agent (RFC 8705): it authenticates with the client certificate whose
/// subject it was registered with, and holds no secret.
#[derive(Debug, Clone)]
pub struct MtlsAgent {
    pub id: String,
    pub subject_dn: String,
    pub rat: String,
    pub registration_path: String,
}

/// An RSA_3072 agent: its key is `keys[key]` of the [`Agents`].
#[derive(Clone)]
pub struct RsaAgent {
    pub id: String,
    pub key: usize,
    pub rat: String,
    pub registration_path: String,
}

// Credentials never reach Debug output.
impl std::fmt::Debug for SecretAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretAgent")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RsaAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaAgent")
            .field("id", &self.id)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Every prepared agent, and the RSA keys the RSA agents share.
#[derive(Debug, Default)]
pub struct Agents {
    pub secret: Vec<SecretAgent>,
    pub rsa: Vec<RsaAgent>,
    pub mtls: Vec<MtlsAgent>,
    pub keys: Vec<SigningKey>,
    /// The tenant the agents belong to (`ten` of their assertions).
    pub tenant: Option<String>,
}

/// How many agents to have, and how to make the missing ones.
#[derive(Debug, Clone)]
pub struct PrepareConfig {
    pub secret_agents: usize,
    pub rsa_agents: usize,
    /// Distinct RSA-3072 keys shared round-robin by the RSA agents (key generation costs
    /// about a second each; the server keeps one registration per agent either way).
    pub rsa_keys: usize,
    /// tls_client_auth agents, and the certificate subject they are registered with.
    pub mtls_agents: usize,
    pub mtls_subject_dn: Option<String>,
    pub threads: usize,
}

/// How one planned agent registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    Secret,
    /// RSA_3072 with the shared key of this index.
    Rsa(usize),
    Mtls,
}

/// Creates and registers agents until `agents` holds as many as `cfg` asks for.
/// `progress` is called with the number of agents finished so far.
pub fn prepare(
    target: &Arc<Target>,
    tls: Option<&Arc<rustls::ClientConfig>>,
    operator: &Operator,
    cfg: &PrepareConfig,
    agents: &mut Agents,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), Error> {
    let want_secret = cfg.secret_agents.saturating_sub(agents.secret.len());
    let want_rsa = cfg.rsa_agents.saturating_sub(agents.rsa.len());
    // Agents registered for another subject would fail every request: only matching ones count.
    let have_mtls = agents
        .mtls
        .iter()
        .filter(|a| Some(&a.subject_dn) == cfg.mtls_subject_dn.as_ref())
        .count();
    let want_mtls = cfg.mtls_agents.saturating_sub(have_mtls);
    let mtls_body = match (&cfg.mtls_subject_dn, want_mtls) {
        (_, 0) => String::new(),
        (Some(dn), _) => json!({ "token_endpoint_auth_method": "tls_client_auth",
                                 "tls_client_auth_subject_dn": dn })
        .to_string(),
        (None, _) => {
            return Err(Error::Usage(
                "tls_client_auth agents need --mtls-subject-dn (the subject of --client-cert)"
                    .into(),
            ));
        }
    };
    if want_rsa > 0 {
        while agents.keys.len() < cfg.rsa_keys.max(1) {
            let key = SigningKey::generate(Algorithm::RS256)?;
            agents.keys.push(key);
        }
    }
    if want_secret + want_rsa + want_mtls == 0 {
        return Ok(());
    }
    let jwks: Vec<String> = agents
        .keys
        .iter()
        .map(|k| {
            let mut jwk = Jwk::from_public_key(&k.verifying_key())?;
            // The SDKs send kty, e, n, kid; an `alg` would narrow what the server accepts.
            jwk.alg = None;
            jwk.use_ = None;
            Ok(json!({ "jwks": { "keys": [jwk] } }).to_string())
        })
        .collect::<Result<_, latchkey_core::Error>>()?;
    let run = random_tag()?;
    let plan: Vec<(String, Profile)> = (0..want_secret)
        .map(|i| (format!("lg{run}-s{i}"), Profile::Secret))
        .chain(
            (0..want_rsa).map(|i| (format!("lg{run}-r{i}"), Profile::Rsa(i % jwks.len().max(1)))),
        )
        .chain((0..want_mtls).map(|i| (format!("lg{run}-m{i}"), Profile::Mtls)))
        .collect();
    let done = AtomicU64::new(0);
    let threads = cfg.threads.clamp(1, plan.len());
    let chunk = plan.len().div_ceil(threads);
    let results: Vec<Result<Vec<Prepared>, Error>> = std::thread::scope(|scope| {
        let handles: Vec<_> = plan
            .chunks(chunk)
            .map(|part| {
                let (done, jwks, mtls_body) = (&done, &jwks, &mtls_body);
                scope.spawn(move || {
                    let mut client = Client::new(Arc::clone(target), tls.cloned());
                    let mut token = String::new();
                    let mut out = Vec::with_capacity(part.len());
                    for (i, (id, profile)) in part.iter().enumerate() {
                        if i % AGENTS_PER_LOGIN == 0 {
                            token = operator.login(&mut client)?;
                        }
                        let body = match profile {
                            Profile::Secret => "{}",
                            Profile::Rsa(k) => jwks[*k].as_str(),
                            Profile::Mtls => mtls_body.as_str(),
                        };
                        out.push(onboard(&mut client, &token, id, *profile, body)?);
                        progress(done.fetch_add(1, Ordering::Relaxed) + 1);
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Protocol("preparation thread panicked".into())))
            })
            .collect()
    });
    for r in results {
        for p in r? {
            if agents.tenant.is_none() {
                agents.tenant = Some(p.tenant.clone());
            }
            match p.profile {
                Profile::Secret => agents.secret.push(SecretAgent {
                    id: p.id,
                    secret: p.secret.unwrap_or_default(),
                    rat: p.rat,
                    registration_path: p.registration_path,
                }),
                Profile::Mtls => agents.mtls.push(MtlsAgent {
                    id: p.id,
                    subject_dn: cfg.mtls_subject_dn.clone().unwrap_or_default(),
                    rat: p.rat,
                    registration_path: p.registration_path,
                }),
                Profile::Rsa(key) => agents.rsa.push(RsaAgent {
                    id: p.id,
                    key,
                    rat: p.rat,
                    registration_path: p.registration_path,
                }),
            }
        }
    }
    Ok(())
}

/// Deletes the agents `ids` (those this run created) through the agent-management API, so
/// runs do not pile agents up in the server. An agent already gone counts as removed.
pub fn remove(
    target: &Arc<Target>,
    tls: Option<&Arc<rustls::ClientConfig>>,
    operator: &Operator,
    ids: &[String],
) -> Result<(), Error> {
    let mut client = Client::new(Arc::clone(target), tls.cloned());
    let mut token = String::new();
    for (i, id) in ids.iter().enumerate() {
        if i % AGENTS_PER_LOGIN == 0 {
            token = operator.login(&mut client)?;
        }
        let bearer = format!("Authorization: Bearer {token}");
        let r = client.request(&Request {
            method: "DELETE",
            path: &format!("{API_BASE}/agents/{id}"),
            // Rotations during the run changed the eTag; this run owns the agent either way.
            headers: &[&bearer, "If-Match: *"],
            content_type: None,
            body: b"",
        })?;
        if r.status != 204 && r.status != 404 {
            return Err(Error::Http {
                step: format!("delete agent {id}"),
                status: r.status,
                body: r.text(),
            });
        }
    }
    Ok(())
}

/// One agent as registration left it.
struct Prepared {
    id: String,
    profile: Profile,
    secret: Option<String>,
    rat: String,
    registration_path: String,
    tenant: String,
}

/// Creates one agent, reads its boarding configuration and registers it with `register_body`.
fn onboard(
    client: &mut Client,
    token: &str,
    id: &str,
    profile: Profile,
    register_body: &str,
) -> Result<Prepared, Error> {
    let bearer = format!("Authorization: Bearer {token}");
    // tls_client_auth is registration metadata of an ordinary (SHARED_SECRET) agent.
    let security = match profile {
        Profile::Rsa(_) => "RSA_3072",
        Profile::Secret | Profile::Mtls => "SHARED_SECRET",
    };
    let body = json!({ "entityId": id, "name": id, "securityProfile": security }).to_string();
    let r = client.request(&Request {
        method: "POST",
        path: &format!("{API_BASE}/agents"),
        headers: &[&bearer],
        content_type: Some("application/json"),
        body: body.as_bytes(),
    })?;
    expect_json(&r, 201, "create agent")?;
    let r = client.request(&Request {
        method: "GET",
        path: &format!("{API_BASE}/agents/{id}/boarding/configuration"),
        headers: &[&bearer],
        content_type: None,
        body: b"",
    })?;
    let config = expect_json(&r, 200, "boarding configuration")?;
    let content = &config["content"];
    let iat = str_member(content, "iat", "boarding configuration")?;
    let tenant = str_member(content, "tenant", "boarding configuration")?;
    let iat_header = format!("Authorization: Bearer {iat}");
    let r = client.request(&Request {
        method: "POST",
        path: &format!("{API_BASE}/register"),
        headers: &[&iat_header],
        content_type: Some("application/json"),
        body: register_body.as_bytes(),
    })?;
    let reg = expect_json(&r, 201, "register")?;
    let uri = str_member(&reg, "registration_client_uri", "register")?;
    let registration_path = path_of(&uri)
        .ok_or_else(|| Error::Protocol(format!("register: bad registration_client_uri {uri:?}")))?
        .to_owned();
    let secret = match profile {
        Profile::Secret => Some(str_member(&reg, "client_secret", "register")?),
        Profile::Rsa(_) | Profile::Mtls => None,
    };
    Ok(Prepared {
        id: id.to_owned(),
        profile,
        secret,
        rat: str_member(&reg, "registration_access_token", "register")?,
        registration_path,
        tenant,
    })
}

/// The response as JSON if its status is `status`, else an error naming `step`.
pub fn expect_json(r: &Response, status: u16, step: &str) -> Result<Value, Error> {
    if r.status != status {
        return Err(Error::Http {
            step: step.to_owned(),
            status: r.status,
            body: r.text(),
        });
    }
    serde_json::from_slice(&r.body)
        .map_err(|e| Error::Protocol(format!("{step}: response is not JSON: {e}")))
}

/// A string member of a JSON object.
pub fn str_member(v: &Value, name: &str, step: &str) -> Result<String, Error> {
    v[name]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::Protocol(format!("{step}: response has no string {name:?}")))
}

/// Six random hex digits, so agent ids of different runs never collide.
fn random_tag() -> Result<String, Error> {
    let mut b = [0u8; 3];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| latchkey_core::Error::Crypto)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

// ---------------------------------------------------------------------------------------------
// Agents file: JSON lines, one record each. It holds live credentials, so it is written 0600.

/// Loads agents saved by [`save`]; a missing file is an empty set.
pub fn load(path: &Path) -> Result<Agents, Error> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Agents::default()),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let bad = |n: usize, what: &str| Error::Usage(format!("{}:{}: {what}", path.display(), n + 1));
    let mut agents = Agents::default();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| bad(n, &e.to_string()))?;
        let s = |name: &str| {
            v[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| bad(n, &format!("missing {name}")))
        };
        match v["kind"].as_str() {
            Some("tenant") => agents.tenant = Some(s("tenant")?),
            Some("key") => agents
                .keys
                .push(SigningKey::from_pem(Algorithm::RS256, &s("pem")?)?),
            Some("secret") => agents.secret.push(SecretAgent {
                id: s("id")?,
                secret: s("secret")?,
                rat: s("rat")?,
                registration_path: s("registration_path")?,
            }),
            Some("rsa") => {
                let key = v["key"]
                    .as_u64()
                    .and_then(|k| usize::try_from(k).ok())
                    .filter(|k| *k < agents.keys.len())
                    .ok_or_else(|| bad(n, "key index out of range"))?;
                agents.rsa.push(RsaAgent {
                    id: s("id")?,
                    key,
                    rat: s("rat")?,
                    registration_path: s("registration_path")?,
                });
            }
            Some("mtls") => agents.mtls.push(MtlsAgent {
                id: s("id")?,
                subject_dn: s("subject_dn")?,
                rat: s("rat")?,
                registration_path: s("registration_path")?,
            }),
            _ => return Err(bad(n, "unknown record kind")),
        }
    }
    Ok(agents)
}

/// Writes every agent and key (replacing the file atomically).
pub fn save(path: &Path, agents: &Agents) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let io = |e| Error::io(format!("writing {}", tmp.display()), e);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let file = opts.open(&tmp).map_err(io)?;
    let mut w = std::io::BufWriter::new(file);
    if let Some(t) = &agents.tenant {
        writeln!(w, "{}", json!({"kind": "tenant", "tenant": t})).map_err(io)?;
    }
    for k in &agents.keys {
        let pem = k.to_pkcs8_pem()?;
        writeln!(w, "{}", json!({"kind": "key", "pem": pem.as_str()})).map_err(io)?;
    }
    for a in &agents.secret {
        let line = json!({"kind": "secret", "id": a.id, "secret": a.secret, "rat": a.rat,
                          "registration_path": a.registration_path});
        writeln!(w, "{line}").map_err(io)?;
    }
    for a in &agents.rsa {
        let line = json!({"kind": "rsa", "id": a.id, "key": a.key, "rat": a.rat,
                          "registration_path": a.registration_path});
        writeln!(w, "{line}").map_err(io)?;
    }
    for a in &agents.mtls {
        let line = json!({"kind": "mtls", "id": a.id, "subject_dn": a.subject_dn, "rat": a.rat,
                          "registration_path": a.registration_path});
        writeln!(w, "{line}").map_err(io)?;
    }
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    fs::rename(&tmp, path).map_err(|e| Error::io(format!("renaming to {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agents.jsonl");
        assert_eq!(
            load(&path).unwrap().secret.len(),
            0,
            "missing file = no agents"
        );
        let key = SigningKey::generate(Algorithm::RS256).unwrap();
        let kid = key.kid().to_owned();
        let agents = Agents {
            secret: vec![SecretAgent {
                id: "a1".into(),
                secret: "s".repeat(43),
                rat: "rat1".into(),
                registration_path: "/api/agentmanagement/v3/register/a1".into(),
            }],
            rsa: vec![RsaAgent {
                id: "r1".into(),
                key: 0,
                rat: "rat2".into(),
                registration_path: "/api/agentmanagement/v3/register/r1".into(),
            }],
            mtls: vec![MtlsAgent {
                id: "m1".into(),
                subject_dn: "CN=lg-agent".into(),
                rat: "rat3".into(),
                registration_path: "/api/agentmanagement/v3/register/m1".into(),
            }],
            keys: vec![key],
            tenant: Some("main".into()),
        };
        save(&path, &agents).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "credentials file is private");
        let back = load(&path).unwrap();
        assert_eq!(back.tenant.as_deref(), Some("main"));
        assert_eq!(back.secret[0].secret, "s".repeat(43));
        assert_eq!(
            back.secret[0].registration_path,
            agents.secret[0].registration_path
        );
        assert_eq!(back.rsa[0].id, "r1");
        assert_eq!(
            (back.mtls[0].id.as_str(), back.mtls[0].subject_dn.as_str()),
            ("m1", "CN=lg-agent")
        );
        assert_eq!(back.keys.len(), 1);
        assert_eq!(
            back.keys[0].verifying_key().to_jwk().unwrap().n,
            agents.keys[0].verifying_key().to_jwk().unwrap().n
        );
        let _ = kid;
        fs::write(&path, "{\"kind\":\"rsa\",\"id\":\"x\",\"key\":3,\"rat\":\"r\",\"registration_path\":\"/p\"}\n").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("key index"));
    }

    #[test]
    fn mtls_agents_need_a_subject_before_anything_is_sent() {
        use crate::target::Reach;
        // Port 1 on loopback: nothing listens, so reaching the network would fail differently.
        let target = Arc::new(Target::parse("http://127.0.0.1:1", Reach::LoopbackOnly).unwrap());
        let cfg = PrepareConfig {
            secret_agents: 0,
            rsa_agents: 0,
            rsa_keys: 1,
            mtls_agents: 2,
            mtls_subject_dn: None,
            threads: 1,
        };
        let mut agents = Agents::default();
        let err = prepare(
            &target,
            None,
            &Operator::new("a", "b"),
            &cfg,
            &mut agents,
            &|_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--mtls-subject-dn"), "{err}");
        // Agents registered for another subject do not count as prepared.
        agents.mtls.push(MtlsAgent {
            id: "m0".into(),
            subject_dn: "CN=other".into(),
            rat: "r".into(),
            registration_path: "/p".into(),
        });
        let cfg = PrepareConfig {
            mtls_subject_dn: Some("CN=lg-agent".into()),
            ..cfg
        };
        let err = prepare(
            &target,
            None,
            &Operator::new("a", "b"),
            &cfg,
            &mut agents,
            &|_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("127.0.0.1:1"), "tried to create agents: {err}");
    }

    #[test]
    fn operator_basic_header_encodes_credentials() {
        let op = Operator::new("admin", "a:b");
        // base64("admin:a%3Ab")
        assert_eq!(op.basic, "Authorization: Basic YWRtaW46YSUzQWI=");
        assert!(!format!("{op:?}").contains("a%3Ab"));
    }
}
