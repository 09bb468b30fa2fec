//! `latchkey client create|list|delete|suspend|resume|rotate-secret`: operator clients, through a running server's API or
//! on a stopped server's data directory.

use serde_json::{Value, json};

use super::remote::{Place, Target, print, s, segment, time};
use crate::api::validate;
use crate::app::{self, App};
use crate::error::Error;
use crate::store::{OperatorClientRecord, SecretHash, SecretRotation, WriteOp, WriteOutcome};

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    #[command(subcommand)]
    pub command: ClientCommand,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Create an operator client. Without --hashed-secret a secret is generated and printed
    /// once.
    Create {
        /// The client id: 1 to 128 characters of A-Z, a-z, 0-9 and - _ . ~ @ :
        id: String,
        /// Profile (permission set) [default: ReadOnly].
        #[arg(long)]
        profile: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        display_name: Option<String>,
        /// Tenant [default: the caller's].
        #[arg(long)]
        tenant: Option<String>,
        /// A hash from `latchkey hash-secret` (the secret then stays with you).
        #[arg(long, allow_hyphen_values = true)]
        hashed_secret: Option<String>,
    },
    /// List operator clients.
    List,
    /// Delete an operator client; its tokens stop working at once.
    Delete {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Suspend an operator client: no token grant, and the tokens it holds stop working for
    /// good; its record, secret and profile stay.
    Suspend {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Resume a suspended operator client: it may ask for tokens again.
    Resume {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Give an operator client a new generated secret, printed once; the replaced secret
    /// keeps working for the grace period. Tokens already issued stay valid until they expire.
    RotateSecret {
        id: String,
        /// How long the replaced secret keeps working ("0s": not at all) [default: the
        /// server's `[tokens] client-secret-grace`, 24h unless set; at most
        /// `client-secret-grace-max`].
        #[arg(long)]
        grace: Option<humantime::Duration>,
    },
    /// Print the secret of a credentials file (--credentials), opening the first run's sealed
    /// `admin-client.json` with the `master.key` beside it: for clients such as curl.
    Secret,
}

pub fn run(args: &ClientArgs) -> Result<(), Error> {
    let json = args.target.json;
    if let ClientCommand::Secret = args.command {
        if args.target.credentials.is_none() {
            return Err(Error::Cli(
                "client secret needs --credentials FILE (e.g. DATA_DIR/admin-client.json)".into(),
            ));
        }
        let (id, secret, _) = args.target.credential()?;
        let v = json!({ "client_id": id, "client_secret": secret.as_str() });
        print(json, &v, |_| secret.to_string());
        return Ok(());
    }
    match (&args.command, args.target.open()?) {
        (ClientCommand::Secret, _) => {}
        (
            ClientCommand::Create {
                id,
                profile,
                display_name,
                tenant,
                hashed_secret,
            },
            Place::Remote(r),
        ) => {
            let body = json!({
                "client_id": id, "profile": profile, "display_name": display_name,
                "tenant": tenant, "hashed_secret": hashed_secret,
            });
            let v = r
                .call("POST", "/api/latchkey/v1/clients", Some(&body), &[])?
                .ok()?;
            print(json, &v, created);
        }
        (
            ClientCommand::Create {
                id,
                profile,
                display_name,
                tenant,
                hashed_secret,
            },
            Place::Local(app),
        ) => {
            let v = create_local(
                &app,
                id,
                profile.as_deref(),
                display_name.as_deref(),
                tenant.as_deref(),
                hashed_secret.as_deref(),
            )?;
            print(json, &v, created);
        }
        (ClientCommand::List, Place::Remote(r)) => {
            let v = r.call("GET", "/api/latchkey/v1/clients", None, &[])?.ok()?;
            print(json, &v, listing);
        }
        (ClientCommand::List, Place::Local(app)) => {
            let clients: Vec<Value> = app
                .store
                .read()?
                .operator_clients()?
                .iter()
                .map(|c| {
                    serde_json::to_value(crate::api::clients::ClientView::from(c))
                        .unwrap_or_default()
                })
                .collect();
            print(json, &json!({ "clients": clients }), listing);
        }
        (ClientCommand::Delete { id }, Place::Remote(r)) => {
            r.call(
                "DELETE",
                &format!("/api/latchkey/v1/clients/{}", segment(id)),
                None,
                &[],
            )?
            .ok()?;
            print(json, &json!({ "deleted": id }), |_| {
                format!("deleted client {id}")
            });
        }
        (ClientCommand::Suspend { id } | ClientCommand::Resume { id }, place) => {
            let suspend = matches!(args.command, ClientCommand::Suspend { .. });
            let v = match place {
                Place::Remote(r) => {
                    let verb = if suspend { "suspend" } else { "resume" };
                    r.call(
                        "POST",
                        &format!("/api/latchkey/v1/clients/{}/{verb}", segment(id)),
                        None,
                        &[],
                    )?
                    .ok()?
                }
                Place::Local(app) => {
                    validate::CLIENT_ID.lookup(id)?;
                    let c: OperatorClientRecord = app
                        .write(WriteOp::SuspendOperatorClient {
                            id: id.clone(),
                            suspend,
                            by: "cli".into(),
                            now: app.now(),
                        })?
                        .into_record()?;
                    serde_json::to_value(crate::api::clients::ClientView::from(&c))
                        .unwrap_or_default()
                }
            };
            print(json, &v, |v| {
                if v["suspended"] == true {
                    format!("suspended client {id}")
                } else {
                    format!("client {id} is active")
                }
            });
        }
        (ClientCommand::RotateSecret { id, grace }, place) => {
            let grace = grace.map(|g| g.as_secs());
            let v = match place {
                Place::Remote(r) => r
                    .call(
                        "POST",
                        &format!("/api/latchkey/v1/clients/{}/rotate-secret", segment(id)),
                        Some(&json!({ "grace": grace })),
                        &[],
                    )?
                    .ok()?,
                Place::Local(app) => rotate_local(&app, id, grace)?,
            };
            print(json, &v, rotated);
        }
        (ClientCommand::Delete { id }, Place::Local(app)) => {
            validate::CLIENT_ID.lookup(id)?;
            app.write(WriteOp::DeleteOperatorClient {
                id: id.clone(),
                by: "cli".into(),
                now: app.now(),
            })?;
            print(json, &json!({ "deleted": id }), |_| {
                format!("deleted client {id}")
            });
        }
    }
    Ok(())
}

fn create_local(
    app: &App,
    id: &str,
    profile: Option<&str>,
    display_name: Option<&str>,
    tenant: Option<&str>,
    hashed: Option<&str>,
) -> Result<Value, Error> {
    // The same rules as the API: an offline write must not store what the server would refuse.
    validate::CLIENT_ID.check(id)?;
    validate::DISPLAY_NAME.check_opt(display_name)?;
    validate::PROFILE.check_opt(profile)?;
    validate::TENANT.check_opt(tenant)?;
    let (hash, secret) = match hashed {
        Some(h) => (SecretHash::parse(h)?, None),
        None => {
            let s = app::generate_secret()?;
            (SecretHash::blake3(s.as_bytes())?, Some(s))
        }
    };
    let tenant = tenant.unwrap_or(&app.settings.default_tenant).to_owned();
    if !app.tenant_exists(&tenant) {
        return Err(Error::Cli(format!("tenant {tenant:?} does not exist")));
    }
    let record = OperatorClientRecord {
        id: id.to_owned(),
        tenant,
        secret_hash: hash,
        display_name: display_name.unwrap_or(id).to_owned(),
        profile: profile.unwrap_or(app::READ_ONLY).to_owned(),
        created_at: app.now(),
        generation: 0, // drawn by the store
        suspended_at: None,
        previous_secret_hash: None,
        previous_valid_until: 0,
    };
    let WriteOutcome::OperatorClient(c) = app.write(WriteOp::CreateOperatorClient {
        record,
        by: "cli".into(),
    })?
    else {
        return Err(Error::Cli("unexpected answer from the store".into()));
    };
    let mut v = serde_json::to_value(crate::api::clients::ClientView::from(&c)).unwrap_or_default();
    if let (Some(s), Value::Object(m)) = (secret, &mut v) {
        m.insert("client_secret".into(), Value::String(s.to_string()));
    }
    Ok(v)
}

/// The offline rotation: the same rules as the API's.
fn rotate_local(app: &App, id: &str, grace: Option<u64>) -> Result<Value, Error> {
    validate::CLIENT_ID.lookup(id)?;
    if app.settings.clients.iter().any(|c| c.identifier == id) {
        return Err(Error::Cli(format!(
            "client {id:?} is declared in the settings file; change its hashed-secret there"
        )));
    }
    let max = app.settings.client_secret_grace_max;
    let grace = grace.unwrap_or(app.settings.client_secret_grace);
    if grace > max {
        return Err(Error::Cli(format!(
            "--grace must be at most {max} seconds (tokens.client-secret-grace-max)"
        )));
    }
    let secret = app::generate_secret()?;
    let now = app.now();
    let c: OperatorClientRecord = app
        .write(WriteOp::RotateOperatorClientSecret(SecretRotation {
            id: id.to_owned(),
            secret_hash: SecretHash::blake3(secret.as_bytes())?,
            grace_until: now.saturating_add(grace),
            by: "cli".into(),
            now,
        }))?
        .into_record()?;
    let mut v = serde_json::to_value(crate::api::clients::ClientView::from(&c)).unwrap_or_default();
    if let Value::Object(m) = &mut v {
        m.insert("client_secret".into(), Value::String(secret.to_string()));
    }
    Ok(v)
}

fn rotated(v: &Value) -> String {
    let mut out = format!(
        "new secret for client {} (shown once): {}",
        s(v, "client_id"),
        s(v, "client_secret")
    );
    match v.get("previous_valid_until").and_then(Value::as_u64) {
        Some(until) => out.push_str(&format!(
            "\nthe previous secret works until {}",
            time(until)
        )),
        None => out.push_str("\nthe previous secret no longer works"),
    }
    out
}

fn created(v: &Value) -> String {
    let mut out = format!(
        "created client {} (tenant {}, profile {})",
        s(v, "client_id"),
        s(v, "tenant"),
        s(v, "profile")
    );
    if let Some(secret) = v.get("client_secret").and_then(Value::as_str) {
        out.push_str(&format!("\nclient secret (shown once): {secret}"));
    }
    out
}

fn listing(v: &Value) -> String {
    let mut out = format!(
        "{:<24} {:<12} {:<16} {:<16} {:<10} CREATED\n",
        "CLIENT", "TENANT", "PROFILE", "HASH", "STATE"
    );
    for c in v
        .get("clients")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "{:<24} {:<12} {:<16} {:<16} {:<10} {}\n",
            s(c, "client_id"),
            s(c, "tenant"),
            s(c, "profile"),
            s(c, "hash_scheme"),
            if c["suspended"] == true {
                "suspended"
            } else {
                "active"
            },
            time(c.get("created_at").and_then(Value::as_u64).unwrap_or(0)),
        ));
    }
    out
}
