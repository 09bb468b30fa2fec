//! The appliance packaging (`packaging/`, `scripts/package-deb.sh`) against the real binary:
//! the man pages it ships, and the unit's command line and settings file.

use std::path::PathBuf;
use std::process::Command;

use crate::util::latchkey_bin;
use crate::util::server::{Options, Server};

fn packaging(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(file)
}

/// `latchkey man` renders a page for the command and for each subcommand, from the same
/// definitions as `--help` (so `man latchkey-serve` lists the real flags).
#[test]
fn man_writes_a_page_per_command() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("man");
    let run = Command::new(latchkey_bin())
        .arg("man")
        .arg("--out-dir")
        .arg(&out)
        .output()
        .expect("run latchkey man");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let main = std::fs::read_to_string(out.join("latchkey.1")).expect("latchkey.1");
    assert!(
        main.starts_with(".ie") || main.contains(".TH latchkey 1"),
        "{main}"
    );
    assert!(main.contains("latchkey\\-serve(1)"), "{main}");
    let serve = std::fs::read_to_string(out.join("latchkey-serve.1")).expect("latchkey-serve.1");
    for flag in ["data\\-dir", "passphrase\\-file", "drain\\-timeout"] {
        assert!(serve.contains(flag), "{flag} missing from latchkey-serve.1");
    }
    assert!(
        !out.join("latchkey-man.1").exists(),
        "the hidden man command has no page"
    );
}

/// Every flag the unit's ExecStart passes is one `latchkey serve` has.
#[test]
fn unit_exec_start_uses_real_serve_flags() {
    let unit = std::fs::read_to_string(packaging("latchkey.service")).expect("unit");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert!(exec.starts_with("/usr/bin/latchkey serve "), "{exec}");
    let help = Command::new(latchkey_bin())
        .args(["serve", "--help"])
        .output()
        .expect("latchkey serve --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in exec.split_whitespace().filter(|w| w.starts_with("--")) {
        assert!(help.contains(&format!("{flag} ")), "serve has no {flag}");
    }
}

/// The packaged settings file is accepted as it ships (flags override its address here).
#[test]
fn packaged_settings_file_starts_a_server() {
    let config = packaging("latchkey.toml");
    let config = config.to_str().expect("utf-8 path");
    let server = Server::start(Options::plain(&["--config", config]));
    server.assert_serving();
}
