//! `latchkey hash-secret`: prints the hash of an operator client secret, to paste into the
//! `[[clients]]` section of the settings file (Usercube's `New-OpenIDSecret`).
//!
//! The default format is Latchkey's own (`lk1$blake3$<salt>$<hash>`: salted, and the prefix
//! says so); `--format usercube` prints Usercube's unsalted base64 SHA-256, which Latchkey
//! also accepts as configured.

use crate::error::Error;
use crate::store::SecretHash;

#[derive(Debug, clap::Args)]
pub struct HashSecretArgs {
    /// The secret to hash. Prefer LATCHKEY_CLIENT_SECRET or --client-secret-file: flags show
    /// in `ps`.
    #[arg(
        long,
        env = "LATCHKEY_CLIENT_SECRET",
        hide_env_values = true,
        allow_hyphen_values = true,
        required_unless_present = "client_secret_file"
    )]
    pub client_secret: Option<String>,
    /// File whose first line is the secret to hash (`-`: standard input).
    #[arg(long, value_name = "FILE", conflicts_with = "client_secret")]
    pub client_secret_file: Option<std::path::PathBuf>,
    /// Hash format.
    #[arg(long, value_enum, default_value = "latchkey")]
    pub format: HashFormat,
}

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HashFormat {
    /// Salted blake3 with the `lk1$blake3$` prefix.
    Latchkey,
    /// base64(SHA-256(secret)), unsalted, as Usercube's `HashedSecret`.
    Usercube,
}

pub fn run(args: &HashSecretArgs) -> Result<(), Error> {
    let secret = super::passphrase::value_or_file(
        args.client_secret.as_deref(),
        args.client_secret_file.as_deref(),
        "client secret file",
    )?
    .ok_or_else(|| {
        Error::Cli("give the secret in LATCHKEY_CLIENT_SECRET or --client-secret-file".into())
    })?;
    println!("{}", hash(&secret, args.format)?.to_text());
    Ok(())
}

pub fn hash(secret: &str, format: HashFormat) -> Result<SecretHash, Error> {
    if secret.is_empty() {
        return Err(Error::Config("the secret must not be empty".into()));
    }
    Ok(match format {
        HashFormat::Latchkey => SecretHash::blake3(secret.as_bytes())?,
        HashFormat::Usercube => SecretHash::usercube(secret.as_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usercube_sample_and_own_format() {
        let u = hash("secret", HashFormat::Usercube).unwrap();
        assert_eq!(u.to_text(), "K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=");
        let l = hash("secret", HashFormat::Latchkey).unwrap();
        assert!(l.to_text().starts_with(crate::store::BLAKE3_PREFIX));
        assert!(SecretHash::parse(&l.to_text()).unwrap().verify(b"secret"));
        assert_ne!(
            l.to_text(),
            hash("secret", HashFormat::Latchkey).unwrap().to_text(),
            "salted"
        );
        assert!(hash("", HashFormat::Usercube).is_err());
    }
}
