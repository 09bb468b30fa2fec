//! `latchkey keys list|rotate|import`: token signing keys, through a running server's API or
//! on a stopped server's data directory.

use std::path::PathBuf;

use base64::Engine as _;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::remote::{Place, Target, print, s, segment, time};
use crate::api::operator::{ImportBody, KeyView, key_views};
use crate::app::{self, App};
use crate::error::Error;

#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// List signing keys: published (not signing yet), active, retiring (still verifying),
    /// retired.
    List,
    /// Publish a new key; it signs after the pre-publication time (`[keys] pre-publication`,
    /// 1 h), so consumers caching the JWKS as told have it first. The previous key keeps
    /// verifying until its tokens expired.
    Rotate {
        /// Algorithm [default: the operator token algorithm, RS256].
        #[arg(long)]
        alg: Option<String>,
        /// Activate at once (emergencies: consumers that cached the key set miss the new
        /// key until their cache expires). A published key of the algorithm is the one
        /// activated.
        #[arg(long)]
        now: bool,
    },
    /// Import a private key (PEM/PKCS#8, or PKCS#12 .pfx/.p12) and make it active.
    Import {
        /// The key file.
        #[arg(long)]
        file: PathBuf,
        /// Password of a PKCS#12 file (or set LATCHKEY_KEY_PASSWORD).
        #[arg(
            long,
            env = "LATCHKEY_KEY_PASSWORD",
            hide_env_values = true,
            allow_hyphen_values = true
        )]
        password: Option<String>,
        /// Algorithm [default: inferred; RSA keys sign RS256].
        #[arg(long)]
        alg: Option<String>,
        /// Key id [default: the RFC 7638 thumbprint].
        #[arg(
            long,
            allow_hyphen_values = true,
            conflicts_with = "kid_from_thumbprint"
        )]
        kid: Option<String>,
        /// Key id = the certificate's SHA-1 thumbprint in upper-case hex, as IdentityServer
        /// names certificate keys (PKCS#12 with a certificate only).
        #[arg(long)]
        kid_from_thumbprint: bool,
    },
    /// Write a key's certificate chain as PEM (leaf first), or its public key as PEM when it
    /// has no certificate: for verifiers configured with a file instead of the JWKS.
    Export {
        /// Key id (thumbprint kids may start with `-`).
        #[arg(allow_hyphen_values = true)]
        kid: String,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(args: &KeysArgs) -> Result<(), Error> {
    let json = args.target.json;
    let place = args.target.open()?;
    let v = match &args.command {
        KeysCommand::List => {
            let v = match &place {
                Place::Remote(r) => r.call("GET", "/api/latchkey/v1/keys", None, &[])?.ok()?,
                Place::Local(app) => json!({ "keys": key_views(app)? }),
            };
            print(json, &v, listing);
            return Ok(());
        }
        KeysCommand::Rotate { alg, now } => match &place {
            Place::Remote(r) => r
                .call(
                    "POST",
                    "/api/latchkey/v1/keys/rotate",
                    Some(&json!({ "alg": alg, "now": now })),
                    &[],
                )?
                .ok()?,
            Place::Local(app) => {
                let alg = match alg {
                    Some(a) => app::parse_token_alg(a)?,
                    None => app.settings.operator_alg,
                };
                let rec = if *now {
                    app.rotate_key_now(alg, "cli")?
                } else {
                    app.rotate_key(alg, "cli")?
                };
                view(app, &rec)
            }
        },
        KeysCommand::Import {
            file,
            password,
            alg,
            kid,
            kid_from_thumbprint,
        } => {
            let bytes = Zeroizing::new(
                std::fs::read(file).map_err(|e| Error::Cli(format!("{}: {e}", file.display())))?,
            );
            let body = match std::str::from_utf8(&bytes) {
                Ok(text) if text.contains("-----BEGIN") => ImportBody {
                    alg: alg.clone(),
                    pem: Some(text.to_owned()),
                    pkcs12: None,
                    password: None,
                    kid: kid.clone(),
                    kid_from_thumbprint: *kid_from_thumbprint,
                },
                _ => ImportBody {
                    alg: alg.clone(),
                    pem: None,
                    pkcs12: Some(base64::engine::general_purpose::STANDARD.encode(&*bytes)),
                    password: Some(password.clone().unwrap_or_default()),
                    kid: kid.clone(),
                    kid_from_thumbprint: *kid_from_thumbprint,
                },
            };
            match &place {
                Place::Remote(r) => {
                    let v = serde_json::json!({
                        "alg": body.alg, "pem": body.pem, "pkcs12": body.pkcs12,
                        "password": body.password, "kid": body.kid,
                        "kid_from_thumbprint": body.kid_from_thumbprint,
                    });
                    r.call("POST", "/api/latchkey/v1/keys/import", Some(&v), &[])?
                        .ok()?
                }
                Place::Local(app) => {
                    let (key, certificate_chain) = body.signing_key()?;
                    let origin = app::KeyOrigin::Imported { certificate_chain };
                    view(app, &app.install_key(key, origin, "cli")?)
                }
            }
        }
        KeysCommand::Export { kid, out } => {
            let v = match &place {
                Place::Remote(r) => {
                    let path = format!("/api/latchkey/v1/keys/{}/export", segment(kid));
                    r.call("GET", &path, None, &[])?.ok()?
                }
                Place::Local(app) => {
                    let key = app
                        .store
                        .hot()
                        .signing_key(kid)
                        .ok_or_else(|| Error::Cli(format!("signing key {kid:?} not found")))?;
                    json!({
                        "kid": key.kid,
                        "pem": crate::api::operator::key_export_pem(
                            &key.certificate_chain,
                            &key.public_key,
                        ),
                    })
                }
            };
            let pem = s(&v, "pem");
            match out {
                Some(path) => std::fs::write(path, pem.as_bytes())
                    .map_err(|e| Error::Cli(format!("{}: {e}", path.display())))?,
                None if json => print(json, &v, |_| String::new()),
                None => print!("{pem}"),
            }
            return Ok(());
        }
    };
    print(json, &v, |v| {
        format!("{} is now the active {} key", s(v, "kid"), s(v, "alg"))
    });
    Ok(())
}

fn view(app: &App, rec: &crate::store::SigningKeyRecord) -> Value {
    serde_json::to_value(KeyView::new(app, rec)).unwrap_or_default()
}

fn listing(v: &Value) -> String {
    let mut out = format!(
        "{:<45} {:<6} {:<9} {:<21} RETIRES\n",
        "KID", "ALG", "STATE", "CREATED"
    );
    for k in v
        .get("keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let retires = k
            .get("retires_at")
            .and_then(Value::as_u64)
            .map(time)
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<45} {:<6} {:<9} {:<21} {retires}\n",
            s(k, "kid"),
            s(k, "alg"),
            s(k, "state"),
            time(k.get("created_at").and_then(Value::as_u64).unwrap_or(0)),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: KeysArgs,
    }

    /// Regression: a thumbprint kid starts with `-` one time in 64, and `keys export -zab…`
    /// was refused as an unknown flag.
    #[test]
    fn a_kid_may_start_with_a_hyphen() {
        let kid = "-zRt5xGZg_D5JB551SjzFgs4kzQs4-2thHNrymYgVuo";
        for argv in [
            vec!["latchkey", "export", kid, "--json"],
            vec!["latchkey", "export", "--json", kid],
        ] {
            let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            let KeysCommand::Export { kid: got, .. } = cli.args.command else {
                panic!("{argv:?}: not export");
            };
            assert_eq!(got, kid);
            assert!(cli.args.target.json, "{argv:?}: --json still a flag");
        }
    }
}
