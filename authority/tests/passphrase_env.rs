//! `LATCHKEY_PASSPHRASE` is gone from the environment once the binary has read it: a child
//! process does not inherit it, and the passphrase still opens the key.
//!
//! Runs itself again as the process under test, because `take_env` acts only while the
//! process has a single thread, which a test harness never has.

use std::process::Command;

const CHILD: &str = "--take-env-child";

fn main() {
    if std::env::args().any(|a| a == CHILD) {
        child();
        return;
    }
    let out = Command::new(std::env::current_exe().expect("own path"))
        .arg(CHILD)
        .env("LATCHKEY_PASSPHRASE", "correct horse battery")
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "removed: true",
            "own environment: unset",
            "inherited: unset",
            "kept: true"
        ]
    );
    println!("passphrase_env: ok");
}

/// Prints what each observer sees after `take_env`.
fn child() {
    let removed = latchkey_authority::cmd::passphrase::take_env();
    println!("removed: {removed}");
    let own = std::env::var("LATCHKEY_PASSPHRASE").unwrap_or_else(|_| "unset".into());
    println!("own environment: {own}");
    let inherited = Command::new("sh")
        .args(["-c", "printf %s \"${LATCHKEY_PASSPHRASE-unset}\""])
        .output()
        .expect("sh");
    println!("inherited: {}", String::from_utf8_lossy(&inherited.stdout));
    let kept = latchkey_authority::cmd::passphrase::from_env()
        .is_some_and(|s| s.expose() == b"correct horse battery");
    println!("kept: {kept}");
}
