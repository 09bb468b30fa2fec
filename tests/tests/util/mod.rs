//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[cfg(feature = "etcd")]
pub mod cluster;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod https;
pub mod server;

/// Path of the `latchkey` binary under test. `scripts/test.sh` builds it before `cargo test`;
/// `LATCHKEY_BIN` overrides (for testing an installed release).
pub fn latchkey_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LATCHKEY_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug").join("latchkey");
    assert!(
        bin.exists(),
        "{} is missing: run `scripts/test.sh` (it builds the binary first) or `cargo build -p latchkey-authority`",
        bin.display()
    );
    bin
}

/// Runs `openssl` with `args` (in `dir` when given); panics with its stderr if it fails.
pub fn openssl_in(dir: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new("openssl");
    cmd.args(args);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd.output().expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The first-run admin client's secret, as an operator gets it: `latchkey client secret` opens
/// the sealed `admin-client.json` with the `master.key` beside it.
pub fn admin_secret(data_dir: &Path) -> String {
    let out = Command::new(latchkey_bin())
        .args(["client", "secret", "--credentials"])
        .arg(data_dir.join("admin-client.json"))
        .output()
        .expect("run latchkey client secret");
    assert!(
        out.status.success(),
        "latchkey client secret: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim_end()
        .to_owned()
}
