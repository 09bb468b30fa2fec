//! Secrets the CLI is given: the master-key passphrase, and the secret-file flags of the other
//! commands.
//!
//! Never a plain flag: a flag's value shows in `ps`. The passphrase comes from
//! `--passphrase-file FILE` (its first line; `-` reads standard input; e.g. a 0600 file or a
//! systemd credential) or from `LATCHKEY_PASSPHRASE`. The binary moves `LATCHKEY_PASSPHRASE`
//! out of its environment before anything else runs ([`take_env`]), so no child process
//! inherits it. `/proc/PID/environ` still shows the environment the process was started with
//! (the kernel reads it from the initial stack, which removing a variable does not rewrite):
//! prefer the file where other local users matter.

use std::ffi::OsString;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use zeroize::Zeroizing;

use crate::error::Error;
use crate::store::{KeyFileOptions, Secret};

/// Environment variable holding the master-key passphrase.
pub const ENV: &str = "LATCHKEY_PASSPHRASE";

/// `LATCHKEY_PASSPHRASE` as [`take_env`] found it.
static TAKEN: OnceLock<Option<Secret>> = OnceLock::new();

/// Moves `LATCHKEY_PASSPHRASE` from the environment into this process's memory, where
/// [`from_env`] finds it. Removes the variable only while the process has a single thread
/// (`main` calls this first); returns whether it did.
pub fn take_env() -> bool {
    let value = std::env::var_os(ENV);
    let kept = value
        .as_ref()
        .map(|v| Secret::new(v.as_encoded_bytes().to_vec()))
        .filter(|s| !s.expose().is_empty());
    let _ = TAKEN.set(kept);
    if value.is_none() || !single_threaded() {
        return false;
    }
    remove_env()
}

#[allow(unsafe_code)]
fn remove_env() -> bool {
    // SAFETY: `remove_var` is unsound only if another thread reads or writes the environment
    // at the same time. The caller just counted one thread in this process (`single_threaded`),
    // so there is no other thread, and none can start while this one is here.
    unsafe { std::env::remove_var(ENV) };
    true
}

/// Whether this process has exactly one thread (Linux: `/proc/self/task`). Unknown is "no".
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

/// `--passphrase-file`, with `LATCHKEY_PASSPHRASE` as the alternative.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PassphraseArgs {
    /// File whose first line is the passphrase that wraps the master key (`-`: standard
    /// input). Set on first run, needed on every later start. Alternatively set
    /// LATCHKEY_PASSPHRASE (never a flag: flags show in `ps`).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

impl PassphraseArgs {
    /// Key file options for opening the store: the file wins over the environment.
    pub fn key_options(&self) -> Result<KeyFileOptions, Error> {
        key_options(self.passphrase_file.as_deref())
    }
}

/// Key file options from a passphrase file, else `LATCHKEY_PASSPHRASE`.
pub fn key_options(passphrase_file: Option<&Path>) -> Result<KeyFileOptions, Error> {
    let passphrase = match passphrase_file {
        Some(path) => Some(Secret::from(
            read_secret_file(path, "passphrase file")?.as_str(),
        )),
        None => from_env(),
    };
    Ok(KeyFileOptions {
        passphrase,
        pbkdf2_iterations: None,
    })
}

/// The passphrase from `LATCHKEY_PASSPHRASE` (as [`take_env`] kept it), if set and not empty.
pub fn from_env() -> Option<Secret> {
    match TAKEN.get() {
        Some(kept) => kept.clone(),
        None => std::env::var_os(ENV)
            .filter(|p| !p.is_empty())
            .map(|p: OsString| Secret::new(p.into_encoded_bytes())),
    }
}

/// The first line of `path` (`-`: standard input), which must not be empty: how every
/// `--...-file` flag reads its secret.
pub fn read_secret_file(path: &Path, what: &str) -> Result<Zeroizing<String>, Error> {
    let mut text = Zeroizing::new(String::new());
    let read = if path == Path::new("-") {
        std::io::stdin().lock().read_to_string(&mut text)
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text))
    };
    read.map_err(|e| Error::Cli(format!("{what} {}: {e}", path.display())))?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(Error::Cli(format!("{what} {} is empty", path.display())));
    }
    Ok(Zeroizing::new(line.to_owned()))
}

/// A secret given by value (a flag or its environment variable) or by `file`.
pub fn value_or_file(
    value: Option<&str>,
    file: Option<&Path>,
    what: &str,
) -> Result<Option<Zeroizing<String>>, Error> {
    match (value, file) {
        (Some(v), _) => Ok(Some(Zeroizing::new(v.to_owned()))),
        (None, Some(f)) => read_secret_file(f, what).map(Some),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_give_their_first_line_and_refuse_empty_ones() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "s3cret\nignored\n").unwrap();
        assert_eq!(read_secret_file(&f, "x").unwrap().as_str(), "s3cret");
        std::fs::write(&f, "\n").unwrap();
        assert!(
            read_secret_file(&f, "x")
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        assert!(read_secret_file(&dir.path().join("none"), "x").is_err());
        std::fs::write(&f, "from-file").unwrap();
        assert_eq!(
            value_or_file(Some("flag"), Some(&f), "x")
                .unwrap()
                .unwrap()
                .as_str(),
            "flag"
        );
        assert_eq!(
            value_or_file(None, Some(&f), "x")
                .unwrap()
                .unwrap()
                .as_str(),
            "from-file"
        );
        assert!(value_or_file(None, None, "x").unwrap().is_none());
    }

    #[test]
    fn a_test_process_has_threads_so_the_environment_is_left_alone() {
        // The test harness runs tests on threads: removing a variable here would be unsound.
        let handle =
            std::thread::spawn(|| std::thread::park_timeout(std::time::Duration::from_secs(5)));
        assert!(!single_threaded());
        handle.thread().unpark();
        let _ = handle.join();
    }
}
