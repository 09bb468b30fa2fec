//! The data directory as an operator sees it: a master key wrapped by a passphrase.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::latchkey_bin;

/// Starts `latchkey serve` on `data`; `Ok` once it printed its ready line (it is then stopped),
/// `Err(stderr)` if it exited instead.
fn serve(data: &Path, env_passphrase: Option<&str>, file: Option<&Path>) -> Result<(), String> {
    let mut cmd = Command::new(latchkey_bin());
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "1",
        "--data-dir",
    ])
    .arg(data)
    .env_remove("LATCHKEY_PASSPHRASE")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(p) = env_passphrase {
        cmd.env("LATCHKEY_PASSPHRASE", p);
    }
    if let Some(f) = file {
        cmd.arg("--passphrase-file").arg(f);
    }
    let mut child = cmd.spawn().expect("spawn latchkey");
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
    let ready = line.starts_with("latchkey listening on https://");
    if ready {
        let _ = child.kill();
    }
    let _ = child.wait();
    let mut err = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    if ready { Ok(()) } else { Err(err) }
}

#[test]
fn a_passphrase_wrapped_master_key_opens_only_with_its_passphrase() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    serve(&data, Some("correct horse battery"), None).expect("first run creates a wrapped key");

    let no_pass = serve(&data, None, None).expect_err("no passphrase");
    assert!(no_pass.contains("passphrase"), "{no_pass}");

    let file = dir.path().join("pass");
    std::fs::write(&file, "wrong horse\n").expect("write");
    let wrong = serve(&data, None, Some(&file)).expect_err("wrong passphrase");
    assert!(wrong.contains("passphrase"), "{wrong}");

    std::fs::write(&file, "correct horse battery\n").expect("write");
    serve(&data, None, Some(&file)).expect("the file's passphrase opens it");
    serve(&data, Some("correct horse battery"), None).expect("so does the environment");

    // The offline CLI (`--data-dir` on a stopped server) reads the environment too.
    let out = Command::new(latchkey_bin())
        .args(["keys", "list", "--data-dir"])
        .arg(&data)
        .env("LATCHKEY_PASSPHRASE", "correct horse battery")
        .output()
        .expect("keys list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
