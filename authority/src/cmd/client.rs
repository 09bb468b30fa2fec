//! `latchkey client create|list|delete`: operator clients, through a running server's API or
//! on a stopped server's data directory.

use serde_json::{Value, json};

use super::remote::{Place, Target, print, s, segment, time};
use crate::api::validate;
use crate::app::{self, App};
use crate::error::Error;
use crate::store::{OperatorClientRecord, SecretHash, WriteOp, WriteOutcome};

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
    Delete { id: String },
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
        "{:<24} {:<12} {:<16} {:<16} CREATED\n",
        "CLIENT", "TENANT", "PROFILE", "HASH"
    );
    for c in v
        .get("clients")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "{:<24} {:<12} {:<16} {:<16} {}\n",
            s(c, "client_id"),
            s(c, "tenant"),
            s(c, "profile"),
            s(c, "hash_scheme"),
            time(c.get("created_at").and_then(Value::as_u64).unwrap_or(0)),
        ));
    }
    out
}
