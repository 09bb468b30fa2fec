//! The master-key passphrase, shared by every command that opens a data directory.
//!
//! Never a plain flag: a flag's value shows in `ps`. It comes from `LATCHKEY_PASSPHRASE` or
//! from the first line of a file (`--passphrase-file`, e.g. a 0600 file or a systemd
//! credential).

use std::path::PathBuf;

use crate::error::Error;
use crate::store::{KeyFileOptions, Secret};

/// Environment variable holding the master-key passphrase.
pub const ENV: &str = "LATCHKEY_PASSPHRASE";

/// `--passphrase-file`, with `LATCHKEY_PASSPHRASE` as the alternative.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PassphraseArgs {
    /// File whose first line is the passphrase that wraps the master key (set on first run,
    /// needed on every later start). Alternatively set LATCHKEY_PASSPHRASE.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

impl PassphraseArgs {
    /// Key file options for opening the store: the file wins over the environment.
    pub fn key_options(&self) -> Result<KeyFileOptions, Error> {
        let passphrase = match &self.passphrase_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::Config(format!("passphrase file {}: {e}", path.display()))
                })?;
                let line = text.lines().next().unwrap_or("");
                if line.is_empty() {
                    return Err(Error::Config(format!(
                        "passphrase file {} is empty",
                        path.display()
                    )));
                }
                Some(Secret::from(line))
            }
            None => from_env(),
        };
        Ok(KeyFileOptions {
            passphrase,
            pbkdf2_iterations: None,
        })
    }
}

/// The passphrase from `LATCHKEY_PASSPHRASE`, if set and not empty.
pub fn from_env() -> Option<Secret> {
    std::env::var(ENV)
        .ok()
        .filter(|p| !p.is_empty())
        .map(|p| Secret::from(p.as_str()))
}
