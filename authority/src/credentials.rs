//! Operator credentials files: `{"client_id", "client_secret"}` as the CLI's `--credentials`
//! and the load generator read them.
//!
//! The first run's `admin-client.json` lives in the data directory, so its secret is sealed
//! under the master key (`client_secret_sealed`) instead of written in clear: a copy of the
//! directory without `master.key` holds no admin credential. The CLI opens it with the
//! `master.key` beside it, so `--credentials DATA/admin-client.json` works unchanged on the
//! server's machine; `latchkey client secret` prints the secret for other clients (curl).
//! Files the operator writes for other clients may hold `client_secret` in clear.

use std::path::Path;

use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::store::{KEY_FILE, KeyFileOptions, MasterKey};

/// The member holding a sealed secret.
pub const SEALED_SECRET: &str = "client_secret_sealed";

/// An operator client's id and secret.
pub struct Credentials {
    pub client_id: String,
    pub client_secret: Zeroizing<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// The seal purpose: binds the secret to its client id, so a sealed secret pasted under
/// another id does not open.
fn purpose(client_id: &str) -> String {
    format!("credentials {client_id}")
}

fn cli(msg: String) -> Error {
    Error::Cli(msg)
}

/// Writes a new credentials file (mode 0600) with the secret sealed under `key`.
pub fn write_sealed(
    path: &Path,
    key: &MasterKey,
    client_id: &str,
    secret: &str,
    tenant: &str,
) -> Result<(), Error> {
    let body = json!({
        "client_id": client_id,
        "tenant": tenant,
        SEALED_SECRET: key.seal_text(&purpose(client_id), secret.as_bytes())?,
        "note": format!(
            "the secret is sealed under the {KEY_FILE} beside this file; \
             `latchkey client secret --credentials FILE` prints it"
        ),
    });
    crate::tls::write_private(path, format!("{body:#}\n").as_bytes())
}

/// Reads a credentials file. A sealed secret is opened with the `master.key` in the file's
/// directory (`options` unwraps a passphrase-protected one).
pub fn read(path: &Path, options: &KeyFileOptions) -> Result<Credentials, Error> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| cli(format!("{}: {e}", path.display())))?,
    );
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| cli(format!("{}: not a credentials file: {e}", path.display())))?;
    let member = |name: &str| v.get(name).and_then(Value::as_str);
    let client_id = member("client_id")
        .ok_or_else(|| cli(format!("{}: missing \"client_id\"", path.display())))?
        .to_owned();
    let client_secret = match (member("client_secret"), member(SEALED_SECRET)) {
        (Some(s), _) => Zeroizing::new(s.to_owned()),
        (None, Some(sealed)) => {
            let key_path = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .join(KEY_FILE);
            if !key_path.is_file() {
                return Err(cli(format!(
                    "{}: the secret is sealed and opens only with the {KEY_FILE} of its data \
                     directory, which is not beside it (run this on the server's machine)",
                    path.display()
                )));
            }
            let key = MasterKey::load(&key_path, options)?;
            let secret = key.open_text(&purpose(&client_id), sealed).map_err(|_| {
                cli(format!(
                    "{}: the sealed secret does not open with {}",
                    path.display(),
                    key_path.display()
                ))
            })?;
            Zeroizing::new(
                String::from_utf8(secret.expose().to_vec())
                    .map_err(|_| cli(format!("{}: sealed secret is not text", path.display())))?,
            )
        }
        (None, None) => {
            return Err(cli(format!(
                "{}: missing \"client_secret\" (or \"{SEALED_SECRET}\")",
                path.display()
            )));
        }
    };
    Ok(Credentials {
        client_id,
        client_secret,
    })
}

/// Seals the clear `client_secret` of a credentials file written by an earlier release, in
/// place. `Ok(false)` when there is no such file or it is already sealed.
pub fn seal_plain(path: &Path, key: &MasterKey) -> Result<bool, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => Zeroizing::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(cli(format!("{}: {e}", path.display()))),
    };
    let Ok(v) = serde_json::from_str::<Value>(&text) else {
        return Ok(false);
    };
    let (Some(id), Some(secret)) = (
        v.get("client_id").and_then(Value::as_str),
        v.get("client_secret").and_then(Value::as_str),
    ) else {
        return Ok(false);
    };
    let secret = Zeroizing::new(secret.to_owned());
    let tenant = v.get("tenant").and_then(Value::as_str).unwrap_or_default();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    write_sealed(&tmp, key, id, &secret, tenant)?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_in(dir: &Path) -> MasterKey {
        crate::store::open_master_key(dir, &KeyFileOptions::default()).unwrap()
    }

    #[test]
    fn sealed_credentials_open_only_beside_their_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = key_in(dir.path());
        let path = dir.path().join("admin-client.json");
        write_sealed(&path, &key, "admin", "s3cret-value", "main").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("s3cret-value"), "{text}");
        let c = read(&path, &KeyFileOptions::default()).unwrap();
        assert_eq!(
            (c.client_id.as_str(), &**c.client_secret),
            ("admin", "s3cret-value")
        );

        // A copy without the key file, or beside another directory's key, opens nothing.
        let copy = tempfile::tempdir().unwrap();
        let copied = copy.path().join("admin-client.json");
        std::fs::copy(&path, &copied).unwrap();
        let err = read(&copied, &KeyFileOptions::default()).unwrap_err();
        assert!(err.to_string().contains("sealed"), "{err}");
        key_in(copy.path());
        assert!(read(&copied, &KeyFileOptions::default()).is_err());

        // The sealed secret is bound to its client id.
        let swapped = text.replace("\"admin\"", "\"other\"");
        std::fs::write(&path, swapped).unwrap();
        assert!(read(&path, &KeyFileOptions::default()).is_err());
    }

    #[test]
    fn clear_credentials_of_earlier_releases_are_sealed_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let key = key_in(dir.path());
        let path = dir.path().join("admin-client.json");
        std::fs::write(
            &path,
            r#"{"client_id":"admin","client_secret":"old-clear","tenant":"main"}"#,
        )
        .unwrap();
        assert!(
            read(&path, &KeyFileOptions::default()).is_ok(),
            "clear still reads"
        );
        assert!(seal_plain(&path, &key).unwrap());
        assert!(
            !std::fs::read_to_string(&path)
                .unwrap()
                .contains("old-clear")
        );
        let c = read(&path, &KeyFileOptions::default()).unwrap();
        assert_eq!(&**c.client_secret, "old-clear");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!seal_plain(&path, &key).unwrap(), "already sealed");
        assert!(!seal_plain(&dir.path().join("none.json"), &key).unwrap());
    }
}
