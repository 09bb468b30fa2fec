//! Secrets at rest.
//!
//! Two kinds of secret, two treatments:
//! - Secrets Latchkey only needs to *recognise* (registration access tokens, operator client
//!   secrets) are stored as a [`SecretHash`]: salted blake3 in a derive-key context for
//!   Latchkey's own, or the Usercube format `base64(SHA-256(secret))` for imported hashes. The
//!   variant tags which, so the verifier never guesses. Comparison is constant-time.
//! - Secrets Latchkey must *use* (agents' shared secrets for HS256, private signing keys) are
//!   sealed with ChaCha20-Poly1305 under a key derived from the [`MasterKey`], which lives in a
//!   separate file (`master.key`, mode 0600), optionally wrapped by a passphrase with
//!   PBKDF2-HMAC-SHA256. The associated data is the record's identity (table and row key), so a
//!   sealed blob moved to another row fails to open. A copy of the `.redb` file alone reveals no
//!   usable secret.

use std::fmt;
use std::io::Write;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::error::StoreError;

/// A secret value in memory: zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(Zeroizing::new(bytes.into()))
    }

    /// A fresh random secret of `len` bytes.
    pub fn random(len: usize) -> Result<Self, StoreError> {
        let mut v = Zeroizing::new(vec![0u8; len]);
        fill_random(&mut v)?;
        Ok(Secret(v))
    }

    /// The secret bytes. Named so every use is easy to find.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes, redacted)", self.0.len())
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s.as_bytes().to_vec())
    }
}

/// A stored hash of a secret that Latchkey only needs to recognise.
#[derive(Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum SecretHash {
    /// Latchkey's own: blake3 in the `HASH_CONTEXT` derive-key mode over `salt || secret`.
    Blake3 { salt: [u8; 16], hash: [u8; 32] },
    /// Imported Usercube `HashedSecret`: unsalted SHA-256, accepted as configured.
    UsercubeSha256 { hash: [u8; 32] },
}

/// Domain separation: a blake3 hash from another purpose never matches one of ours.
const HASH_CONTEXT: &str = "latchkey 2025 stored secret hash v1";
/// Prefix of Latchkey's own textual hash format; it says which scheme (and that it is salted).
pub const BLAKE3_PREFIX: &str = "lk1$blake3$";

impl SecretHash {
    /// Hashes a secret in Latchkey's own format with a fresh random salt.
    pub fn blake3(secret: &[u8]) -> Result<Self, StoreError> {
        let mut salt = [0u8; 16];
        fill_random(&mut salt)?;
        Ok(Self::blake3_with_salt(salt, secret))
    }

    fn blake3_with_salt(salt: [u8; 16], secret: &[u8]) -> Self {
        let hash = blake3_hash(&salt, secret);
        SecretHash::Blake3 { salt, hash }
    }

    /// The Usercube format, for `latchkey hash-secret --format usercube`.
    pub fn usercube(secret: &[u8]) -> Self {
        use sha2::Digest;
        SecretHash::UsercubeSha256 {
            hash: sha2::Sha256::digest(secret).into(),
        }
    }

    /// Whether `secret` hashes to this value. Constant-time in the hash comparison.
    pub fn verify(&self, secret: &[u8]) -> bool {
        match self {
            SecretHash::Blake3 { salt, hash } => bool::from(blake3_hash(salt, secret).ct_eq(hash)),
            SecretHash::UsercubeSha256 { hash } => {
                bool::from(Self::usercube(secret).raw().ct_eq(hash))
            }
        }
    }

    fn raw(&self) -> &[u8; 32] {
        match self {
            SecretHash::Blake3 { hash, .. } | SecretHash::UsercubeSha256 { hash } => hash,
        }
    }

    /// Parses the textual form: `lk1$blake3$<salt b64>$<hash b64>`, or a bare 44-character
    /// base64 SHA-256 (the Usercube `HashedSecret`).
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        let bad = |why: &str| StoreError::Invalid(format!("not a secret hash: {why}"));
        if let Some(rest) = text.strip_prefix(BLAKE3_PREFIX) {
            let (salt, hash) = rest
                .split_once('$')
                .ok_or_else(|| bad("missing hash part"))?;
            let salt: [u8; 16] = decode_fixed(salt).ok_or_else(|| bad("bad salt"))?;
            let hash: [u8; 32] = decode_fixed(hash).ok_or_else(|| bad("bad hash"))?;
            return Ok(SecretHash::Blake3 { salt, hash });
        }
        let hash: [u8; 32] =
            decode_fixed(text).ok_or_else(|| bad("neither lk1$blake3$ nor base64 SHA-256"))?;
        Ok(SecretHash::UsercubeSha256 { hash })
    }

    /// The textual form [`SecretHash::parse`] reads.
    pub fn to_text(&self) -> String {
        match self {
            SecretHash::Blake3 { salt, hash } => {
                format!("{BLAKE3_PREFIX}{}${}", B64.encode(salt), B64.encode(hash))
            }
            SecretHash::UsercubeSha256 { hash } => B64.encode(hash),
        }
    }

    /// The scheme, for display.
    pub fn scheme(&self) -> &'static str {
        match self {
            SecretHash::Blake3 { .. } => "blake3",
            SecretHash::UsercubeSha256 { .. } => "usercube-sha256",
        }
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretHash({}, redacted)", self.scheme())
    }
}

fn blake3_hash(salt: &[u8; 16], secret: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(HASH_CONTEXT);
    h.update(salt);
    h.update(secret);
    *h.finalize().as_bytes()
}

fn decode_fixed<const N: usize>(text: &str) -> Option<[u8; N]> {
    B64.decode(text).ok()?.try_into().ok()
}

fn fill_random(buf: &mut [u8]) -> Result<(), StoreError> {
    aws_lc_rs::rand::fill(buf).map_err(|_| StoreError::Invalid("system RNG failed".into()))
}

/// Where a sealed value lives; the associated data of its AEAD. A blob sealed for one row does
/// not open in another.
#[derive(Debug, Clone, Copy)]
pub struct SealContext<'a> {
    pub table: &'static str,
    pub key: &'a str,
}

impl SealContext<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(24 + self.table.len() + self.key.len());
        v.extend_from_slice(b"latchkey-seal-v1\0");
        v.extend_from_slice(self.table.as_bytes());
        v.push(0);
        v.extend_from_slice(self.key.as_bytes());
        v
    }
}

/// Version byte of a sealed blob: `[1][nonce 12][ciphertext + tag 16]`.
const SEALED_VERSION: u8 = 1;
const TAG_LEN: usize = 16;

/// Passphrase wrapping: PBKDF2-HMAC-SHA256 (aws-lc-rs), OWASP's 2023 recommendation for it.
/// The count is stored in the key file, so it can be raised without breaking old files.
pub const PBKDF2_ITERATIONS: u32 = 600_000;

/// How to obtain the master key.
#[derive(Debug, Clone, Default)]
pub struct KeyFileOptions {
    /// Wrap (on creation) / unwrap (on open) the key with this passphrase.
    pub passphrase: Option<Secret>,
    /// PBKDF2 iterations for a newly wrapped key file (tests lower it; default
    /// [`PBKDF2_ITERATIONS`]).
    pub pbkdf2_iterations: Option<u32>,
}

/// The master key: 32 random bytes from `master.key`. Only derived keys touch data.
pub struct MasterKey {
    seal: LessSafeKey,
    id: [u8; 8],
    /// Authenticates requests between the nodes of a cluster (which share the master key).
    peer: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(id {})", hex(&self.id))
    }
}

const KEY_MAGIC: &[u8; 4] = b"LKMK";
const KEY_FILE_VERSION: u8 = 1;
const KIND_PLAIN: u8 = 0;
const KIND_PBKDF2: u8 = 1;

impl MasterKey {
    /// Creates a new random key file at `path` (refusing to overwrite one) and returns the key.
    pub fn create(path: &Path, options: &KeyFileOptions) -> Result<Self, StoreError> {
        let mut raw = Zeroizing::new([0u8; 32]);
        fill_random(&mut raw[..])?;
        let mut file_bytes = Zeroizing::new(KEY_MAGIC.to_vec());
        file_bytes.push(KEY_FILE_VERSION);
        match &options.passphrase {
            None => {
                file_bytes.push(KIND_PLAIN);
                file_bytes.extend_from_slice(&raw[..]);
            }
            Some(pass) => {
                let iterations = options
                    .pbkdf2_iterations
                    .unwrap_or(PBKDF2_ITERATIONS)
                    .max(1);
                let mut salt = [0u8; 16];
                fill_random(&mut salt)?;
                let wrap = wrapping_key(pass, &salt, iterations)?;
                let mut nonce = [0u8; NONCE_LEN];
                fill_random(&mut nonce)?;
                let mut ct = Zeroizing::new(raw.to_vec());
                wrap.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(b"latchkey master key"),
                    &mut *ct,
                )
                .map_err(|_| StoreError::Invalid("sealing the master key failed".into()))?;
                file_bytes.push(KIND_PBKDF2);
                file_bytes.extend_from_slice(&iterations.to_be_bytes());
                file_bytes.extend_from_slice(&salt);
                file_bytes.extend_from_slice(&nonce);
                file_bytes.extend_from_slice(&ct);
            }
        }
        write_private_file(path, &file_bytes)?;
        Self::from_raw(&raw)
    }

    /// Reads an existing key file.
    pub fn load(path: &Path, options: &KeyFileOptions) -> Result<Self, StoreError> {
        let bytes = Zeroizing::new(match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::MissingKeyFile(path.to_path_buf()));
            }
            Err(e) => return Err(StoreError::io("read master key file")(e)),
        });
        let bad = |reason: &str| StoreError::BadKeyFile {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let rest = bytes
            .strip_prefix(&KEY_MAGIC[..])
            .ok_or_else(|| bad("not a latchkey master key file"))?;
        let (&version, rest) = rest.split_first().ok_or_else(|| bad("truncated"))?;
        if version != KEY_FILE_VERSION {
            return Err(bad(&format!("unknown key file version {version}")));
        }
        let (&kind, rest) = rest.split_first().ok_or_else(|| bad("truncated"))?;
        match kind {
            KIND_PLAIN => {
                let raw: [u8; 32] = rest.try_into().map_err(|_| bad("wrong length"))?;
                let raw = Zeroizing::new(raw);
                if options.passphrase.is_some() {
                    return Err(bad(
                        "a passphrase was given but the key file is not wrapped",
                    ));
                }
                Self::from_raw(&raw)
            }
            KIND_PBKDF2 => {
                if rest.len() != 4 + 16 + NONCE_LEN + 32 + TAG_LEN {
                    return Err(bad("wrong length"));
                }
                let pass = options
                    .passphrase
                    .as_ref()
                    .ok_or(StoreError::WrongPassphrase)?;
                let (iter, rest) = rest.split_at(4);
                let (salt, rest) = rest.split_at(16);
                let (nonce, ct) = rest.split_at(NONCE_LEN);
                let iterations = u32::from_be_bytes(iter.try_into().map_err(|_| bad("length"))?);
                // Bound the work a tampered file can ask of us.
                if iterations == 0 || iterations > 100_000_000 {
                    return Err(bad("implausible PBKDF2 iteration count"));
                }
                let wrap = wrapping_key(pass, salt, iterations)?;
                let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| bad("length"))?;
                let mut buf = Zeroizing::new(ct.to_vec());
                let raw = wrap
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(b"latchkey master key"),
                        &mut buf,
                    )
                    .map_err(|_| StoreError::WrongPassphrase)?;
                let raw: [u8; 32] = (&*raw).try_into().map_err(|_| bad("length"))?;
                Self::from_raw(&Zeroizing::new(raw))
            }
            _ => Err(bad(&format!("unknown key kind {kind}"))),
        }
    }

    fn from_raw(raw: &Zeroizing<[u8; 32]>) -> Result<Self, StoreError> {
        let seal_key = Zeroizing::new(blake3::derive_key(
            "latchkey 2025 master key: seal v1",
            &raw[..],
        ));
        let id_full = blake3::derive_key("latchkey 2025 master key: id v1", &raw[..]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&id_full[..8]);
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &seal_key[..])
            .map_err(|_| StoreError::Invalid("AEAD key setup failed".into()))?;
        let peer = Zeroizing::new(blake3::derive_key(
            "latchkey 2026 master key: cluster peer auth v1",
            &raw[..],
        ));
        Ok(MasterKey {
            seal: LessSafeKey::new(unbound),
            id,
            peer,
        })
    }

    /// A public fingerprint of the key, stored in the database so a wrong key file is caught at
    /// open rather than as a pile of failed unseals.
    pub fn id(&self) -> [u8; 8] {
        self.id
    }

    /// The key the nodes of a cluster authenticate their requests to each other with.
    pub fn peer_auth_key(&self) -> &[u8; 32] {
        &self.peer
    }

    /// Seals `plaintext` for the row named by `ctx`, with a fresh random nonce.
    pub fn seal(&self, ctx: SealContext<'_>, plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.push(SEALED_VERSION);
        out.extend_from_slice(&nonce);
        let mut body = Zeroizing::new(plaintext.to_vec());
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(ctx.aad()),
                &mut *body,
            )
            .map_err(|_| StoreError::Invalid("sealing failed".into()))?;
        // `body` is ciphertext now; nothing secret is left in it.
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens a blob sealed for the row named by `ctx`.
    pub fn unseal(&self, ctx: SealContext<'_>, sealed: &[u8]) -> Result<Secret, StoreError> {
        let corrupt = |reason: &str| StoreError::Corrupt {
            table: ctx.table,
            reason: format!("sealed value of {:?}: {reason}", ctx.key),
        };
        let (&version, rest) = sealed.split_first().ok_or_else(|| corrupt("empty"))?;
        if version != SEALED_VERSION {
            return Err(corrupt(&format!("unknown sealing version {version}")));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(corrupt("truncated"));
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| corrupt("nonce"))?;
        let mut buf = Zeroizing::new(ct.to_vec());
        let plain = self
            .seal
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(ctx.aad()),
                &mut buf,
            )
            .map_err(|_| corrupt("authentication failed (wrong key, or moved from another row)"))?;
        Ok(Secret::new(plain.to_vec()))
    }
}

/// Magic of a sealed file: `"LKSF" | version 1 | sealed blob` (the blob as [`MasterKey::seal`]
/// makes it, under the `files` context named by the file's purpose).
const FILE_MAGIC: &[u8; 4] = b"LKSF";
const FILE_VERSION: u8 = 1;
/// The seal context table of everything sealed outside the database.
const FILES: &str = "files";

impl MasterKey {
    /// Writes `plaintext` sealed to `path` (mode 0600), replacing the file atomically.
    /// `purpose` ("ca.key", "server.key") is the associated data: a sealed CA key renamed to
    /// the server key's name does not open.
    pub fn seal_file(
        &self,
        purpose: &str,
        path: &Path,
        plaintext: &[u8],
    ) -> Result<(), StoreError> {
        let ctx = SealContext {
            table: FILES,
            key: purpose,
        };
        let mut bytes = FILE_MAGIC.to_vec();
        bytes.push(FILE_VERSION);
        bytes.extend_from_slice(&self.seal(ctx, plaintext)?);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        // A leftover from an interrupted write holds only ciphertext.
        let _ = std::fs::remove_file(&tmp);
        write_private_file(&tmp, &bytes)?;
        std::fs::rename(&tmp, path).map_err(StoreError::io("rename sealed file"))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }

    /// Opens a file written by [`MasterKey::seal_file`] for the same `purpose`.
    pub fn open_file(&self, purpose: &str, path: &Path) -> Result<Secret, StoreError> {
        let bytes = std::fs::read(path).map_err(StoreError::io("read sealed file"))?;
        let bad = |reason: &str| StoreError::BadSealedFile {
            path: path.to_path_buf(),
            reason: reason.to_owned(),
        };
        let rest = bytes
            .strip_prefix(&FILE_MAGIC[..])
            .ok_or_else(|| bad("not a latchkey sealed file"))?;
        match rest.split_first() {
            Some((&FILE_VERSION, blob)) => self
                .unseal(
                    SealContext {
                        table: FILES,
                        key: purpose,
                    },
                    blob,
                )
                .map_err(|_| bad("does not open with this master key (another data directory's?)")),
            Some((v, _)) => Err(bad(&format!("unknown sealed file version {v}"))),
            None => Err(bad("truncated")),
        }
    }

    /// `plaintext` sealed for `purpose` as base64 text (a sealed member of a JSON file).
    pub fn seal_text(&self, purpose: &str, plaintext: &[u8]) -> Result<String, StoreError> {
        let ctx = SealContext {
            table: FILES,
            key: purpose,
        };
        Ok(B64.encode(self.seal(ctx, plaintext)?))
    }

    /// Opens text made by [`MasterKey::seal_text`] for the same `purpose`.
    pub fn open_text(&self, purpose: &str, text: &str) -> Result<Secret, StoreError> {
        let ctx = SealContext {
            table: FILES,
            key: purpose,
        };
        let blob = B64.decode(text).map_err(|_| StoreError::Corrupt {
            table: FILES,
            reason: format!("sealed {purpose:?}: not base64"),
        })?;
        self.unseal(ctx, &blob)
    }
}

fn wrapping_key(pass: &Secret, salt: &[u8], iterations: u32) -> Result<LessSafeKey, StoreError> {
    let mut k = Zeroizing::new([0u8; 32]);
    let iterations = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    aws_lc_rs::pbkdf2::derive(
        aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        pass.expose(),
        &mut k[..],
    );
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &k[..])
        .map_err(|_| StoreError::Invalid("AEAD key setup failed".into()))?;
    Ok(LessSafeKey::new(unbound))
}

/// Writes `bytes` to a new file with mode 0600, fsyncs it and its directory.
fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = StoreError::io;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create master key file"))?;
    f.write_all(bytes).map_err(io("write master key file"))?;
    f.sync_all().map_err(io("sync master key file"))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let dir: PathBuf = if dir.as_os_str().is_empty() {
        ".".into()
    } else {
        dir.into()
    };
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("sync data directory"))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(key: &str) -> SealContext<'_> {
        SealContext {
            table: "registrations",
            key,
        }
    }

    #[test]
    fn usercube_sample_hash_verifies() {
        // The sample from the Usercube docs: base64(SHA-256("secret")).
        let h = SecretHash::parse("K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=").unwrap();
        assert_eq!(h.scheme(), "usercube-sha256");
        assert!(h.verify(b"secret"));
        assert!(!h.verify(b"secreT"));
        assert_eq!(
            SecretHash::usercube(b"secret").to_text(),
            "K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols="
        );
    }

    #[test]
    fn blake3_hash_is_salted_tagged_and_round_trips() {
        let a = SecretHash::blake3(b"s3cret").unwrap();
        let b = SecretHash::blake3(b"s3cret").unwrap();
        assert_ne!(a, b, "fresh salt each time");
        assert!(a.verify(b"s3cret") && b.verify(b"s3cret"));
        assert!(!a.verify(b"s3cret "));
        let text = a.to_text();
        assert!(text.starts_with(BLAKE3_PREFIX));
        assert_eq!(SecretHash::parse(&text).unwrap(), a);
        assert!(SecretHash::parse("lk1$blake3$nope").is_err());
        assert!(SecretHash::parse("short").is_err());
    }

    #[test]
    fn debug_never_shows_secrets() {
        let s = Secret::from("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        let h = SecretHash::blake3(b"hunter2").unwrap();
        assert!(!format!("{h:?}").contains(&h.to_text()));
    }

    #[test]
    fn sealed_blob_opens_only_in_its_own_row() {
        let dir = tempfile::tempdir().unwrap();
        let key =
            MasterKey::create(&dir.path().join("master.key"), &KeyFileOptions::default()).unwrap();
        let sealed = key.seal(ctx("agent-1"), b"shared secret").unwrap();
        assert_eq!(
            key.unseal(ctx("agent-1"), &sealed).unwrap().expose(),
            b"shared secret"
        );
        assert!(matches!(
            key.unseal(ctx("agent-2"), &sealed),
            Err(StoreError::Corrupt { .. })
        ));
        let other = SealContext {
            table: "signing_keys",
            key: "agent-1",
        };
        assert!(key.unseal(other, &sealed).is_err());
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(key.unseal(ctx("agent-1"), &flipped).is_err());
        assert!(key.unseal(ctx("agent-1"), &sealed[..10]).is_err());
    }

    #[test]
    fn key_file_is_private_reloads_and_is_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let key = MasterKey::create(&path, &KeyFileOptions::default()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = MasterKey::load(&path, &KeyFileOptions::default()).unwrap();
        assert_eq!(key.id(), again.id());
        let sealed = key.seal(ctx("a"), b"x").unwrap();
        assert_eq!(again.unseal(ctx("a"), &sealed).unwrap().expose(), b"x");
        assert!(MasterKey::create(&path, &KeyFileOptions::default()).is_err());
        assert!(matches!(
            MasterKey::load(&dir.path().join("nope"), &KeyFileOptions::default()),
            Err(StoreError::MissingKeyFile(_))
        ));
    }

    #[test]
    fn passphrase_wrapped_key_needs_the_right_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let opts = |p: Option<&str>| KeyFileOptions {
            passphrase: p.map(Secret::from),
            pbkdf2_iterations: Some(1_000),
        };
        let key = MasterKey::create(&path, &opts(Some("correct horse"))).unwrap();
        let raw = std::fs::read(&path).unwrap();
        assert!(raw.len() > 40);
        assert_eq!(
            MasterKey::load(&path, &opts(Some("correct horse")))
                .unwrap()
                .id(),
            key.id()
        );
        assert!(matches!(
            MasterKey::load(&path, &opts(Some("wrong"))),
            Err(StoreError::WrongPassphrase)
        ));
        assert!(matches!(
            MasterKey::load(&path, &opts(None)),
            Err(StoreError::WrongPassphrase)
        ));
    }

    #[test]
    fn sealed_files_are_private_open_only_for_their_purpose_and_hold_no_plaintext() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key =
            MasterKey::create(&dir.path().join("master.key"), &KeyFileOptions::default()).unwrap();
        let path = dir.path().join("ca.key.sealed");
        let pem = b"-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n";
        key.seal_file("ca.key", &path, pem).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(7).any(|w| w == b"PRIVATE"), "no plaintext");
        assert_eq!(key.open_file("ca.key", &path).unwrap().expose(), pem);
        assert!(
            key.open_file("server.key", &path).is_err(),
            "purpose is bound"
        );
        // Replacing is atomic and leaves no temporary file behind.
        key.seal_file("ca.key", &path, b"new").unwrap();
        assert_eq!(key.open_file("ca.key", &path).unwrap().expose(), b"new");
        assert!(!dir.path().join("ca.key.sealed.tmp").exists());
        let other =
            MasterKey::create(&dir.path().join("other.key"), &KeyFileOptions::default()).unwrap();
        assert!(matches!(
            other.open_file("ca.key", &path),
            Err(StoreError::BadSealedFile { .. })
        ));
        let text = key.seal_text("admin", b"s3cret").unwrap();
        assert_eq!(key.open_text("admin", &text).unwrap().expose(), b"s3cret");
        assert!(key.open_text("other", &text).is_err());
        assert!(other.open_text("admin", &text).is_err());
    }

    #[test]
    fn garbage_key_files_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        for (i, bytes) in [
            &b""[..],
            b"LKMK",
            b"LKMK\x01\x00short",
            b"LKMK\x09\x00",
            b"XXXX\x01\x00",
        ]
        .iter()
        .enumerate()
        {
            let path = dir.path().join(format!("k{i}"));
            std::fs::write(&path, bytes).unwrap();
            let err = MasterKey::load(&path, &KeyFileOptions::default()).unwrap_err();
            assert!(matches!(err, StoreError::BadKeyFile { .. }), "{i}: {err:?}");
        }
    }
}
