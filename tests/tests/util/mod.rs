//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::path::PathBuf;

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
