//! `latchkey cert ...`: the mutual-TLS trust store in a few commands, where UrbanCode takes a
//! page of `keytool` steps.
//!
//! ```text
//! latchkey cert init --data-dir D                      # CA + server certificate (or --ca-cert/--ca-key)
//! latchkey cert export-ca --out ca.pem                 # what agents trust
//! latchkey cert issue agent-1 --cn agent-1 --out agent-1   # key made here, CSR signed by the CA
//! latchkey cert issue relay-1 --usage server --san relay-1.example   # a relay's server certificate
//! latchkey cert trust agent-7 --file agent-7.cer       # pin a self-signed agent (PEM, DER, PKCS#12)
//! latchkey cert trust relay-ca --as-ca --file relay-ca.pem   # trust a relay CA's certificates
//! latchkey cert rename agent-7 edge-7                  # keytool -changealias
//! latchkey cert list
//! latchkey cert revoke agent-1                         # or a SHA-256 fingerprint
//! latchkey cert renew agent-1 --out agent-1-new        # new key, same subject; no downtime
//! latchkey cert pkcs12 --cert a.pem --key a.key --out a.p12   # a keystore for Java agents
//! ```
//!
//! Against a running server (`--server`) changes apply to the next handshake; with
//! `--data-dir` they apply when the server starts.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::passphrase::value_or_file;
use super::remote::{Place, Target, print, s, segment, time, usage};
use crate::api::certs::{self, ImportBody, IssueBody, RenameBody, RenewBody};
use crate::app::App;
use crate::error::Error;
use crate::pki;
use crate::store::WriteOp;

#[derive(Debug, clap::Args)]
pub struct CertArgs {
    #[command(subcommand)]
    pub command: CertCommand,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Subcommand)]
pub enum CertCommand {
    /// Create (or import) the authority's CA and issue a new server certificate from it.
    /// Needs --data-dir; then send the server SIGHUP (or restart it) to serve the new one.
    Init {
        /// An existing CA certificate (PEM) to use instead of generating one.
        #[arg(long, requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        /// Its private key (PEM, PKCS#8).
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        /// Extra DNS names or IP addresses for the server certificate.
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// Replace an existing CA (the old files are kept as *.old).
        #[arg(long)]
        replace: bool,
    },
    /// Print (or write) the CA certificate agents must trust.
    ExportCa {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Issue an agent certificate. The key is generated here unless --csr is given.
    Issue {
        /// Unique alias in the trust store.
        alias: String,
        /// Subject common name [default: the alias, or the CSR's subject].
        #[arg(long, allow_hyphen_values = true)]
        cn: Option<String>,
        /// Subject alternative names (DNS names, IP addresses, uri:..., email:...).
        #[arg(long = "san")]
        sans: Vec<String>,
        #[arg(long, default_value_t = certs::DEFAULT_DAYS)]
        days: u32,
        /// Sign this CSR (PEM) instead of generating a key.
        #[arg(long)]
        csr: Option<PathBuf>,
        /// What the certificate is for (repeatable): client (clientAuth), server (serverAuth;
        /// needs --san), encryption (key/data encipherment, no EKU).
        #[arg(long, value_enum, default_values_t = [pki::Usage::Client])]
        usage: Vec<pki::Usage>,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Trust an external certificate under an alias (`keytool -importcert`). Without --as-ca it
    /// is pinned: it authenticates only itself, by its SHA-256 fingerprint, whatever its CA
    /// flag, and must be self-signed. With --as-ca it anchors the chains it signs (a relay CA).
    Trust {
        alias: String,
        /// Certificate file: PEM, DER (as `keytool -exportcert` writes) or PKCS#12 (with a
        /// password), told by content. A JKS keystore must be converted to PKCS#12 first.
        #[arg(long)]
        file: PathBuf,
        /// Trust it as a CA: certificates it signs authenticate too. (`--ca` names the
        /// server's CA for remote use.)
        #[arg(long)]
        as_ca: bool,
        /// Password of a PKCS#12 file. Prefer LATCHKEY_P12_PASSWORD or --password-file: flags
        /// show in `ps`.
        #[arg(
            long,
            env = "LATCHKEY_P12_PASSWORD",
            hide_env_values = true,
            allow_hyphen_values = true
        )]
        password: Option<String>,
        /// File whose first line is the PKCS#12 password (`-`: standard input).
        #[arg(long, value_name = "FILE", conflicts_with = "password")]
        password_file: Option<PathBuf>,
    },
    /// List the trust store: aliases, subjects, fingerprints, expiry, state.
    List,
    /// Give a certificate a new alias (`keytool -changealias`); its fingerprint and trust are
    /// unchanged.
    Rename { alias: String, new_alias: String },
    /// Revoke a certificate by alias or SHA-256 fingerprint: it stops authenticating at the
    /// next handshake or request, and stops anchoring chains.
    Revoke { alias_or_fingerprint: String },
    /// Issue a replacement for an agent certificate (same subject, SANs and usages, new key) under a
    /// new alias; the old one keeps working until it expires or is revoked.
    Renew {
        alias: String,
        #[arg(long, allow_hyphen_values = true)]
        new_alias: Option<String>,
        #[arg(long)]
        days: Option<u32>,
        #[arg(long)]
        csr: Option<PathBuf>,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Bundle a certificate chain and its key into a password-protected PKCS#12 keystore.
    Pkcs12 {
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "latchkey", allow_hyphen_values = true)]
        alias: String,
        /// Keystore password. Prefer LATCHKEY_P12_PASSWORD or --password-file: flags show in
        /// `ps`.
        #[arg(
            long,
            env = "LATCHKEY_P12_PASSWORD",
            hide_env_values = true,
            allow_hyphen_values = true,
            required_unless_present = "password_file"
        )]
        password: Option<String>,
        /// File whose first line is the keystore password (`-`: standard input).
        #[arg(long, value_name = "FILE", conflicts_with = "password")]
        password_file: Option<PathBuf>,
    },
}

/// Where issued material goes.
#[derive(Debug, Clone, clap::Args)]
pub struct OutArgs {
    /// Write PREFIX.pem (chain), PREFIX.key (0600, when generated here) [default: the alias].
    #[arg(long, value_name = "PREFIX")]
    pub out: Option<PathBuf>,
    /// Also write PREFIX.p12 (0600) protected by this password. Prefer LATCHKEY_P12_PASSWORD
    /// or --p12-password-file: flags show in `ps`.
    #[arg(
        long,
        env = "LATCHKEY_P12_PASSWORD",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub p12_password: Option<String>,
    /// File whose first line is the PKCS#12 password (`-`: standard input).
    #[arg(long, value_name = "FILE", conflicts_with = "p12_password")]
    pub p12_password_file: Option<PathBuf>,
}

impl OutArgs {
    fn p12_password(&self) -> Result<Option<Zeroizing<String>>, Error> {
        value_or_file(
            self.p12_password.as_deref(),
            self.p12_password_file.as_deref(),
            "PKCS#12 password file",
        )
    }
}

pub fn run(args: &CertArgs) -> Result<(), Error> {
    let json_out = args.target.json;
    match &args.command {
        CertCommand::Init {
            ca_cert,
            ca_key,
            server_names,
            replace,
        } => {
            let dir = args.target.data_dir.as_ref().ok_or_else(|| {
                usage("cert init needs --data-dir (then SIGHUP or restart the server)")
            })?;
            let ca = match (ca_cert, ca_key) {
                (Some(c), Some(k)) => Some((read(c)?, Zeroizing::new(read(k)?))),
                _ => None,
            };
            // The CA key is sealed under the data directory's master key (made here if the
            // directory is new, as the server's first run would).
            let key = crate::store::open_master_key(dir, &args.target.key_options()?)?;
            let files = pki::install_ca(
                dir,
                &key,
                ca.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
                server_names,
                *replace,
            )?;
            let v = json!({ "ca": files.ca_cert, "server_certificate": files.server_cert });
            print(json_out, &v, |_| {
                format!(
                    "CA at {}; server certificate at {}. Agents trust the CA (`latchkey cert export-ca`).",
                    files.ca_cert.display(),
                    files.server_cert.display()
                )
            });
            return Ok(());
        }
        CertCommand::Pkcs12 {
            cert,
            key,
            out,
            alias,
            password,
            password_file,
        } => {
            let password = value_or_file(
                password.as_deref(),
                password_file.as_deref(),
                "PKCS#12 password file",
            )?
            .ok_or_else(|| {
                usage("a keystore password is needed: LATCHKEY_P12_PASSWORD or --password-file")
            })?;
            let chain: Vec<_> = pki::pem_chain(&read(cert)?)?
                .into_iter()
                .map(|c| c.der)
                .collect();
            let key = Zeroizing::new(read(key)?);
            write_secret(out, &pki::to_pkcs12(alias, &chain, &key, &password)?)?;
            println!("wrote {}", out.display());
            return Ok(());
        }
        _ => {}
    }
    let place = args.target.open()?;
    let v = match &args.command {
        CertCommand::List => {
            let v = match &place {
                Place::Remote(r) => r
                    .call("GET", "/api/latchkey/v1/certificates", None, &[])?
                    .ok()?,
                Place::Local(app) => json!({ "certificates": certs::views(app)? }),
            };
            print(json_out, &v, listing);
            return Ok(());
        }
        CertCommand::ExportCa { out } => {
            let pem = match &place {
                Place::Remote(r) => s(
                    &r.call("GET", "/api/latchkey/v1/certificates/ca", None, &[])?
                        .ok()?,
                    "pem",
                )
                .to_owned(),
                Place::Local(app) => {
                    read(&crate::tls::CertFiles::in_dir(&app.store.paths().dir).ca_cert)?
                }
            };
            match out {
                Some(p) => {
                    std::fs::write(p, &pem)?;
                    println!("wrote {}", p.display());
                }
                None => print!("{pem}"),
            }
            return Ok(());
        }
        CertCommand::Trust {
            alias,
            file,
            password,
            password_file,
            as_ca,
        } => {
            let bytes = std::fs::read(file).map_err(|e| file_error(file, &e))?;
            if bytes.len() > pki::MAX_CERT_INPUT {
                return Err(Error::Cli(format!("{}: file too large", file.display())));
            }
            // The format is told by content; a JKS keystore is refused here, so the hint names
            // the operator's own file.
            if pki::ImportFormat::detect(&bytes) == Some(pki::ImportFormat::Jks) {
                pki::read_certificates(&bytes, None, &file.display().to_string())?;
            }
            let password = if pki::ImportFormat::detect(&bytes) == Some(pki::ImportFormat::Pkcs12) {
                value_or_file(
                    password.as_deref(),
                    password_file.as_deref(),
                    "PKCS#12 password file",
                )?
            } else {
                None
            };
            let body = ImportBody {
                alias: alias.clone(),
                pem: None,
                file: Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
                password: password.as_ref().map(|p| p.as_str().to_owned()),
                ca: *as_ca,
            };
            match &place {
                Place::Remote(r) => r
                    .call(
                        "POST",
                        "/api/latchkey/v1/certificates",
                        Some(&json!({
                            "alias": body.alias, "file": body.file, "password": body.password,
                            "ca": body.ca,
                        })),
                        &[],
                    )?
                    .ok()?,
                Place::Local(app) => local(app, certs::plan_import(app, &body, "cli")?)?,
            }
        }
        CertCommand::Rename { alias, new_alias } => {
            let body = RenameBody {
                new_alias: new_alias.clone(),
            };
            match &place {
                Place::Remote(r) => r
                    .call(
                        "POST",
                        &format!("/api/latchkey/v1/certificates/{}/rename", segment(alias)),
                        Some(&json!({ "new_alias": body.new_alias })),
                        &[],
                    )?
                    .ok()?,
                Place::Local(app) => local(app, certs::plan_rename(app, alias, &body, "cli")?)?,
            }
        }
        CertCommand::Revoke {
            alias_or_fingerprint,
        } => match &place {
            Place::Remote(r) => r
                .call(
                    "POST",
                    &format!(
                        "/api/latchkey/v1/certificates/{}/revoke",
                        segment(alias_or_fingerprint)
                    ),
                    None,
                    &[],
                )?
                .ok()?,
            Place::Local(app) => local(app, certs::plan_revoke(app, alias_or_fingerprint, "cli")?)?,
        },
        CertCommand::Issue {
            alias,
            cn,
            sans,
            days,
            csr,
            usage,
            out,
        } => {
            let cn = cn.clone().unwrap_or_else(|| alias.clone());
            let (key, csr) = csr_or_key(csr.as_deref(), &cn, sans)?;
            let body = IssueBody {
                alias: alias.clone(),
                csr,
                common_name: key.as_ref().map(|_| cn.clone()),
                sans: sans.clone(),
                days: Some(*days),
                usage: usage.clone(),
            };
            let v = match &place {
                Place::Remote(r) => r
                    .call(
                        "POST",
                        "/api/latchkey/v1/certificates/issue",
                        Some(&json!({
                            "alias": body.alias, "csr": body.csr, "common_name": body.common_name,
                            "sans": body.sans, "days": body.days, "usage": body.usage,
                        })),
                        &[],
                    )?
                    .ok()?,
                Place::Local(app) => {
                    let (op, pem) = certs::plan_issue(app, &body, "cli")?;
                    with_pem(local(app, op)?, &pem)
                }
            };
            write_out(&v, alias, out, key.as_ref().map(|k| k.as_str()))?
        }
        CertCommand::Renew {
            alias,
            new_alias,
            days,
            csr,
            out,
        } => {
            let (key, csr) = csr_or_key(csr.as_deref(), alias, &[])?;
            let body = RenewBody {
                csr,
                new_alias: new_alias.clone(),
                days: *days,
            };
            let v = match &place {
                Place::Remote(r) => r
                    .call(
                        "POST",
                        &format!(
                            "/api/latchkey/v1/certificates/{}/renew",
                            segment(alias)
                        ),
                        Some(&json!({ "csr": body.csr, "new_alias": body.new_alias, "days": body.days })),
                        &[],
                    )?
                    .ok()?,
                Place::Local(app) => {
                    let (op, pem) = certs::plan_renew(app, alias, &body, "cli")?;
                    with_pem(local(app, op)?, &pem)
                }
            };
            let new = s(&v, "alias").to_owned();
            write_out(&v, &new, out, key.as_ref().map(|k| k.as_str()))?
        }
        CertCommand::Init { .. } | CertCommand::Pkcs12 { .. } => Value::Null,
    };
    print(json_out, &v, |v| {
        let mut line = format!(
            "{} {} ({}), fingerprint {}, expires {}",
            s(v, "alias"),
            s(v, "state"),
            s(v, "subject"),
            s(v, "fingerprint"),
            v.get("not_after")
                .and_then(Value::as_u64)
                .map(time)
                .unwrap_or_default()
        );
        if let Some(files) = v.get("files").and_then(Value::as_array) {
            for f in files.iter().filter_map(Value::as_str) {
                line.push_str(&format!("\nwrote {f}"));
            }
        }
        line
    });
    Ok(())
}

/// Writes a file holding a private key (a PKCS#12 keystore) with mode 0600, replacing an
/// existing one; the mode is set before any byte is written.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let io = |e: std::io::Error| Error::Cli(format!("{}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    // An existing file keeps its mode through `open`; tighten it before writing.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

fn read(p: &Path) -> Result<String, Error> {
    std::fs::read_to_string(p).map_err(|e| file_error(p, &e))
}

fn file_error(p: &Path, e: &std::io::Error) -> Error {
    Error::Cli(format!("{}: {e}", p.display()))
}

fn local(app: &App, op: WriteOp) -> Result<Value, Error> {
    let outcome = app.write(op)?;
    Ok(match outcome {
        crate::store::WriteOutcome::Certificate(rec) => {
            serde_json::to_value(certs::CertView::new(app, &rec, false)).unwrap_or_default()
        }
        crate::store::WriteOutcome::Revocation(r) => {
            json!({ "fingerprint": r.id, "state": "revoked", "alias": "", "subject": "" })
        }
        _ => Value::Null,
    })
}

fn with_pem(mut v: Value, pem: &str) -> Value {
    if let Value::Object(m) = &mut v {
        m.insert("pem".into(), Value::String(pem.to_owned()));
    }
    v
}

/// The CSR to send: read from a file, or made here with a fresh key (returned, to be saved).
fn csr_or_key(
    csr: Option<&Path>,
    cn: &str,
    sans: &[String],
) -> Result<(Option<Zeroizing<String>>, String), Error> {
    match csr {
        Some(p) => Ok((None, read(p)?)),
        None => {
            let (key, csr) = pki::key_and_csr(cn, sans)?;
            Ok((Some(key), csr))
        }
    }
}

/// Writes PREFIX.pem, PREFIX.key (0600) and PREFIX.p12; returns the view with the file list.
fn write_out(v: &Value, alias: &str, out: &OutArgs, key: Option<&str>) -> Result<Value, Error> {
    let prefix = out.out.clone().unwrap_or_else(|| PathBuf::from(alias));
    let with_ext = |ext: &str| {
        let mut p = prefix.clone().into_os_string();
        p.push(ext);
        PathBuf::from(p)
    };
    let pem = s(v, "pem");
    let mut files = Vec::new();
    let cert_path = with_ext(".pem");
    std::fs::write(&cert_path, pem)?;
    files.push(cert_path.display().to_string());
    if let Some(key) = key {
        let key_path = with_ext(".key");
        crate::tls::write_private(&key_path, key.as_bytes())
            .map_err(|e| Error::Cli(format!("{}: {e}", key_path.display())))?;
        files.push(key_path.display().to_string());
        if let Some(pw) = out.p12_password()? {
            let chain: Vec<_> = pki::pem_chain(pem)?.into_iter().map(|c| c.der).collect();
            let p12_path = with_ext(".p12");
            write_secret(&p12_path, &pki::to_pkcs12(alias, &chain, key, &pw)?)?;
            files.push(p12_path.display().to_string());
        }
    } else if out.p12_password.is_some() || out.p12_password_file.is_some() {
        return Err(usage(
            "--p12-password needs the private key: without --csr the key is generated here",
        ));
    }
    let mut v = v.clone();
    if let Value::Object(m) = &mut v {
        m.remove("pem");
        m.insert("files".into(), json!(files));
    }
    Ok(v)
}

fn listing(v: &Value) -> String {
    let mut out = format!(
        "{:<24} {:<9} {:<8} {:<20} {:<30} FINGERPRINT (SHA-256)\n",
        "ALIAS", "KIND", "STATE", "EXPIRES", "SUBJECT"
    );
    for c in v
        .get("certificates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "{:<24} {:<9} {:<8} {:<20} {:<30} {}\n",
            s(c, "alias"),
            s(c, "kind"),
            s(c, "state"),
            c.get("not_after")
                .and_then(Value::as_u64)
                .map(time)
                .unwrap_or_default(),
            s(c, "subject"),
            s(c, "fingerprint"),
        ));
    }
    out
}
