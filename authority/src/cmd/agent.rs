//! `latchkey agent create|list|show|update|offboard|delete|import`: agents, through a running
//! server's MindSphere agent management API (`/api/agentmanagement/v3`). `import` also works
//! offline on a stopped server's data directory (see `cmd::import`).

use serde_json::{Value, json};

use super::remote::{Remote, Target, print, s, segment};
use crate::error::Error;

const BASE: &str = "/api/agentmanagement/v3/agents";

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: AgentCommand,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Create an agent; its boarding configuration is ready at once (`agent show`).
    Create {
        /// The entity id (becomes the agent id and OAuth client id).
        #[arg(long, allow_hyphen_values = true)]
        entity_id: String,
        /// Unique name within the tenant [default: the entity id].
        #[arg(long, allow_hyphen_values = true)]
        name: Option<String>,
        /// SHARED_SECRET or RSA_3072.
        #[arg(long, default_value = "SHARED_SECRET")]
        security_profile: String,
    },
    /// List agents.
    List,
    /// Show an agent, its boarding status and (with agents:write) its boarding configuration.
    Show {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Change an agent's name or security profile (what is not given stays).
    Update {
        id: String,
        /// New unique name within the tenant.
        #[arg(long, allow_hyphen_values = true)]
        name: Option<String>,
        /// SHARED_SECRET or RSA_3072.
        #[arg(long)]
        security_profile: Option<String>,
    },
    /// Offboard an agent: its registration, secrets and tokens are revoked.
    Offboard {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Suspend an agent: its token requests, registration and rotation are refused and the
    /// tokens it holds are revoked; its records, registration and keys stay.
    Suspend {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Resume a suspended agent: it gets tokens again, without boarding again.
    Resume {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Create many agents from a JSON-lines or CSV file (factory provisioning); lines that
    /// fail are reported by number, and re-running creates only what is missing.
    Import(super::import::ImportArgs),
    /// Delete an agent (and revoke everything it holds).
    Delete {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
}

pub fn run(args: &AgentArgs) -> Result<(), Error> {
    if let AgentCommand::Import(import) = &args.command {
        return super::import::run(import, &args.target);
    }
    let json = args.target.json;
    let r = args.target.remote("latchkey agent")?;
    match &args.command {
        AgentCommand::Create {
            entity_id,
            name,
            security_profile,
        } => {
            let body = json!({
                "entityId": entity_id,
                "name": name.as_deref().unwrap_or(entity_id),
                "securityProfile": security_profile,
            });
            let v = r.call("POST", BASE, Some(&body), &[])?.ok()?;
            print(json, &v, |v| {
                format!("created agent {} ({})", s(v, "id"), s(v, "securityProfile"))
            });
        }
        AgentCommand::List => {
            // Every page (the API caps a page at 100), each agent with its boarding status,
            // which the MindSphere `Agent` shape does not carry.
            let mut agents = Vec::new();
            for page in 0.. {
                let v = r
                    .call("GET", &format!("{BASE}?page={page}&size=100"), None, &[])?
                    .ok()?;
                let items = v
                    .get("content")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let last = v.get("last").and_then(Value::as_bool).unwrap_or(true);
                for mut agent in items {
                    let id = s(&agent, "id").to_owned();
                    let status = r
                        .call(
                            "GET",
                            &format!("{BASE}/{}/boarding/status", segment(&id)),
                            None,
                            &[],
                        )?
                        .ok()?;
                    agent["boardingStatus"] = status.get("status").cloned().unwrap_or(Value::Null);
                    agents.push(agent);
                }
                if last {
                    break;
                }
            }
            print(json, &json!({ "agents": agents }), listing);
        }
        AgentCommand::Show { id } => {
            let agent = r
                .call("GET", &format!("{BASE}/{}", segment(id)), None, &[])?
                .ok()?;
            let status = r
                .call(
                    "GET",
                    &format!("{BASE}/{}/boarding/status", segment(id)),
                    None,
                    &[],
                )?
                .ok()?;
            // The configuration discloses the initial access token, so it needs agents:write;
            // a read-only operator still sees the agent and its status.
            let answer = r.call(
                "GET",
                &format!("{BASE}/{}/boarding/configuration", segment(id)),
                None,
                &[],
            )?;
            let config = if answer.status == 403 {
                json!("(withheld: reading it needs agents:write)")
            } else {
                answer.ok()?
            };
            let credentials = r
                .call(
                    "GET",
                    &format!("/api/latchkey/v1/agents/{}/credentials", segment(id)),
                    None,
                    &[],
                )?
                .ok()?;
            let v = json!({ "agent": agent, "boarding_status": status,
                            "credentials": credentials, "boarding_configuration": config });
            print(json, &v, |v| {
                format!(
                    "agent {} ({}), {}\nboarding status: {}\n{}boarding configuration:\n{}",
                    s(&v["agent"], "id"),
                    s(&v["agent"], "name"),
                    s(&v["agent"], "securityProfile"),
                    s(&v["boarding_status"], "status"),
                    credentials_text(&v["credentials"]),
                    serde_json::to_string_pretty(&v["boarding_configuration"]).unwrap_or_default()
                )
            });
        }
        AgentCommand::Update {
            id,
            name,
            security_profile,
        } => {
            if name.is_none() && security_profile.is_none() {
                return Err(super::remote::usage(
                    "say what to change: --name and/or --security-profile",
                ));
            }
            let etag = etag(&r, id)?;
            let current = r
                .call("GET", &format!("{BASE}/{}", segment(id)), None, &[])?
                .ok()?;
            let body = json!({
                "name": name.as_deref().unwrap_or(s(&current, "name")),
                "securityProfile": security_profile
                    .as_deref()
                    .unwrap_or(s(&current, "securityProfile")),
            });
            let v = r
                .call(
                    "PUT",
                    &format!("{BASE}/{}", segment(id)),
                    Some(&body),
                    &[("If-Match", etag.as_str())],
                )?
                .ok()?;
            print(json, &v, |v| {
                format!(
                    "updated agent {} ({}, {})",
                    s(v, "id"),
                    s(v, "name"),
                    s(v, "securityProfile")
                )
            });
        }
        // Returned above: it may act offline, without a server.
        AgentCommand::Import(_) => {}
        AgentCommand::Offboard { id } => {
            let v = r
                .call(
                    "POST",
                    &format!("{BASE}/{}/boarding/offboard", segment(id)),
                    None,
                    &[],
                )?
                .ok()?;
            print(json, &v, |_| format!("offboarded agent {id}"));
        }
        AgentCommand::Suspend { id } | AgentCommand::Resume { id } => {
            let verb = match &args.command {
                AgentCommand::Suspend { .. } => "suspend",
                _ => "resume",
            };
            let v = r
                .call(
                    "POST",
                    &format!("/api/latchkey/v1/agents/{}/{verb}", segment(id)),
                    None,
                    &[],
                )?
                .ok()?;
            print(json, &v, |v| {
                if v["suspended"] == true {
                    format!("suspended agent {id}")
                } else {
                    format!("agent {id} is active")
                }
            });
        }
        AgentCommand::Delete { id } => {
            let etag = etag(&r, id)?;
            r.call(
                "DELETE",
                &format!("{BASE}/{}", segment(id)),
                None,
                &[("If-Match", etag.as_str())],
            )?
            .ok()?;
            print(json, &json!({ "deleted": id }), |_| {
                format!("deleted agent {id}")
            });
        }
    }
    Ok(())
}

/// The agent's current eTag, for `If-Match`.
fn etag(r: &Remote, id: &str) -> Result<String, Error> {
    let answer = r.call("GET", &format!("{BASE}/{}", segment(id)), None, &[])?;
    let header = answer.header("etag").map(str::to_owned);
    let body = answer.ok()?;
    let from_body = match body.get("eTag") {
        Some(Value::String(t)) => Some(t.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    from_body
        .or(header)
        .ok_or_else(|| Error::Cli(format!("agent {id}: the server sent no eTag")))
}

/// The credentials view as lines of `agent show`: method, keys, expiry, last seen.
fn credentials_text(c: &Value) -> String {
    let seen = c.get("lastSeen").and_then(Value::as_str).unwrap_or("never");
    let online = if c["online"] == true {
        "online"
    } else {
        "offline"
    };
    let mut out = format!("last seen: {seen} ({online})\n");
    if let Some(at) = c.get("suspendedAt").and_then(Value::as_str) {
        out.push_str(&format!("SUSPENDED since {at}\n"));
    }
    let reg = &c["registration"];
    if reg.is_null() {
        out.push_str("registration: none\n");
        return out;
    }
    out.push_str(&format!(
        "auth method: {} (registration generation {})\n",
        s(reg, "authMethod"),
        reg["generation"]
    ));
    if let Some(at) = reg.get("secretExpiresAt").and_then(Value::as_str) {
        out.push_str(&format!("credentials expire: {at}\n"));
    }
    for key in reg["keys"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        out.push_str(&format!(
            "key: {} {} thumbprint {}\n",
            s(key, "kty"),
            key.get("kid").and_then(Value::as_str).unwrap_or("-"),
            s(key, "thumbprint")
        ));
    }
    if let Some(until) = reg
        .get("previousCredentialsValidUntil")
        .and_then(Value::as_str)
    {
        out.push_str(&format!("previous credentials valid until: {until}\n"));
    }
    out
}

fn listing(v: &Value) -> String {
    let items = v
        .get("agents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = format!("{:<36} {:<24} {:<14} STATE\n", "ID", "NAME", "PROFILE");
    for a in &items {
        let state = s(a, "boardingStatus");
        out.push_str(&format!(
            "{:<36} {:<24} {:<14} {state}\n",
            s(a, "id"),
            s(a, "name"),
            s(a, "securityProfile")
        ));
    }
    out
}
