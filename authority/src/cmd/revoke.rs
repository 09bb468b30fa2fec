//! `latchkey revoke`: revoke one token (by value or jti), every token of an agent, or a signing
//! key. Through a running server, or on a stopped server's data directory (not by token value:
//! verifying it needs the server's issuer).

use serde_json::{Value, json};

use super::remote::{Place, Target, print, s};
use crate::api::validate;
use crate::error::Error;
use crate::store::{RevocationKind, WriteOp, WriteOutcome};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["token", "token_file", "jti", "agent", "key"])))]
pub struct RevokeArgs {
    /// An access token (operator or agent). Prefer --token-file: flags show in `ps`, and the
    /// token works until it is revoked.
    #[arg(long, allow_hyphen_values = true)]
    pub token: Option<String>,
    /// File whose first line is the access token to revoke (`-`: standard input).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// A token id.
    #[arg(long, allow_hyphen_values = true)]
    pub jti: Option<String>,
    /// Every token issued so far to this agent.
    #[arg(long, allow_hyphen_values = true)]
    pub agent: Option<String>,
    /// A signing key id: it stops signing and every token it signed is refused.
    #[arg(long, allow_hyphen_values = true)]
    pub key: Option<String>,
    /// Why (kept in the revocation record and the audit log).
    #[arg(long, allow_hyphen_values = true)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

pub fn run(args: &RevokeArgs) -> Result<(), Error> {
    let json = args.target.json;
    let reason = args
        .reason
        .clone()
        .unwrap_or_else(|| "revoked with the latchkey CLI".into());
    let token = super::passphrase::value_or_file(
        args.token.as_deref(),
        args.token_file.as_deref(),
        "token file",
    )?;
    let v = match args.target.open()? {
        Place::Remote(r) => {
            let body = match (&token, &args.jti, &args.agent, &args.key) {
                (Some(t), ..) => json!({ "kind": "token", "token": t.as_str(), "reason": reason }),
                (_, Some(j), ..) => json!({ "kind": "token", "id": j, "reason": reason }),
                (_, _, Some(a), _) => json!({ "kind": "agent", "id": a, "reason": reason }),
                (_, _, _, Some(k)) => json!({ "kind": "key", "id": k, "reason": reason }),
                _ => return Err(Error::Cli("say what to revoke".into())),
            };
            r.call("POST", "/api/latchkey/v1/revocations", Some(&body), &[])?
                .ok()?
        }
        Place::Local(app) => {
            // The same rules as the API: an offline write must not store what the server
            // would refuse.
            validate::REASON.check(&reason)?;
            let now = app.now();
            let rec = if let Some(kid) = &args.key {
                validate::KID.named("key").lookup(kid)?;
                app.revoke_key(kid, "cli", &reason)?
            } else {
                let (kind, id) =
                    match (&args.jti, &args.agent) {
                        (Some(j), _) => (
                            RevocationKind::Token,
                            validate::JTI.named("jti").check(j)?.to_owned(),
                        ),
                        (_, Some(a)) => (
                            RevocationKind::Agent,
                            validate::ENTITY_ID.named("agent").check(a)?.to_owned(),
                        ),
                        _ => return Err(Error::Cli(
                            "--token needs a running server (--server); use --jti with --data-dir"
                                .into(),
                        )),
                    };
                let op = WriteOp::Revoke {
                    kind,
                    id,
                    by: "cli".into(),
                    reason,
                    now,
                    forget_after: now.saturating_add(app.settings.retire_after()),
                };
                match app.write(op)? {
                    WriteOutcome::Revocation(rec) => rec,
                    _ => return Err(Error::Cli("unexpected answer from the store".into())),
                }
            };
            json!({ "kind": rec.kind.as_str(), "id": rec.id, "revoked_at": rec.revoked_at, "forget_after": rec.forget_after })
        }
    };
    print(json, &v, |v: &Value| {
        format!("revoked {} {}", s(v, "kind"), s(v, "id"))
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: RevokeArgs,
    }

    /// Regression: key ids are base64url RFC 7638 thumbprints and jtis are base64url too, so one
    /// in 64 starts with `-`; clap used to take `--key -3kUt…` for an unknown flag.
    #[test]
    fn identifiers_may_start_with_a_hyphen() {
        let id = "-3kUtxGZg_D5JB551SjzFgs4kzQs4-2thHNrymYgVuo";
        let parse = |flag: &str| {
            Cli::try_parse_from(["latchkey", flag, id, "--reason", "-x", "--json"])
                .unwrap_or_else(|e| panic!("{flag}: {e}"))
                .args
        };
        assert_eq!(parse("--key").key.as_deref(), Some(id));
        assert_eq!(parse("--jti").jti.as_deref(), Some(id));
        assert_eq!(parse("--agent").agent.as_deref(), Some(id));
        let args = parse("--token");
        assert_eq!(args.token.as_deref(), Some(id));
        assert_eq!(args.reason.as_deref(), Some("-x"));
        assert!(args.target.json, "flags after the values still parse");
    }
}
