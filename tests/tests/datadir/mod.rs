//! The data directory as an operator sees it: a master key wrapped by a passphrase, and
//! everything else useless without that key file.

use std::io::{BufRead as _, BufReader, Read as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;

use crate::util::https::Authority;
use crate::util::{admin_secret, latchkey_bin};

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

/// The files of `dir` (not recursive), with their contents.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read");
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn latchkey(args: &[&str], paths: &[&Path]) -> std::process::Output {
    Command::new(latchkey_bin())
        .args(args)
        .args(paths)
        .env_remove("LATCHKEY_PASSPHRASE")
        .output()
        .expect("run latchkey")
}

fn basic_login(auth: &Authority, id: &str, secret: &str) -> u16 {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    auth.form(
        "/oauth/token",
        "grant_type=client_credentials",
        &[("Authorization", &format!("Basic {basic}"))],
    )
    .status
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn a_copy_of_the_data_directory_without_its_key_file_neither_signs_nor_logs_in() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let auth = Authority::start(&data, None);
    let secret = admin_secret(&data);
    assert_eq!(basic_login(&auth, "admin", &secret), 200, "control");
    for f in [
        "master.key",
        "latchkey.redb",
        "ca.key.sealed",
        "server.key.sealed",
        "admin-client.json",
    ] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }

    // Everything but the key file, as a backup or a stolen volume would hold it.
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).expect("mkdir");
    for (path, bytes) in files(&data) {
        let name = path.file_name().expect("name");
        if name != "master.key" {
            std::fs::write(copy.join(name), bytes).expect("copy");
        }
    }
    let copied = files(&copy);
    assert!(copied.len() >= 6, "{copied:?}");
    for (path, bytes) in &copied {
        assert!(
            !contains(bytes, b"PRIVATE KEY"),
            "{} holds a PEM key",
            path.display()
        );
        assert!(
            !contains(bytes, secret.as_bytes()),
            "{} holds the admin secret",
            path.display()
        );
        assert!(
            rustls::pki_types::PrivateKeyDer::from_pem_slice(bytes).is_err(),
            "{} is a private key",
            path.display()
        );
    }

    // No login with anything the copy's credentials file holds.
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy.join("admin-client.json")).expect("creds"))
            .expect("json");
    let values: Vec<&str> = creds
        .as_object()
        .expect("object")
        .values()
        .filter_map(serde_json::Value::as_str)
        .collect();
    assert!(values.len() >= 3, "{creds}");
    for v in values {
        assert_eq!(basic_login(&auth, "admin", v), 401, "{v:?} logs in");
    }
    let server = auth.base_url();
    let remote = latchkey(
        &["client", "list", "--server", &server, "--credentials"],
        &[
            &copy.join("admin-client.json"),
            Path::new("--ca"),
            &auth.ca_path(),
        ],
    );
    assert!(!remote.status.success(), "the copy's credentials logged in");
    let err = String::from_utf8_lossy(&remote.stderr);
    assert!(err.contains("sealed"), "{err}");
    let secret_out = latchkey(
        &["client", "secret", "--credentials"],
        &[&copy.join("admin-client.json")],
    );
    assert!(!secret_out.status.success());
    // The original, beside its key file, still works.
    let ok = latchkey(
        &["client", "list", "--server", &server, "--credentials"],
        &[
            &data.join("admin-client.json"),
            Path::new("--ca"),
            &auth.ca_path(),
        ],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    auth.stop();

    // Nor does the CLI sign with the copy.
    let issue = latchkey(
        &["cert", "issue", "x", "--out"],
        &[&dir.path().join("x"), Path::new("--data-dir"), &copy],
    );
    assert!(!issue.status.success());
    assert!(!dir.path().join("x.pem").exists());
}

#[test]
fn plain_keys_and_admin_secret_of_an_earlier_release_are_sealed_on_start() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    Authority::start(&data, None).stop();
    let secret = admin_secret(&data);

    // What an earlier release left: a CA and server key in clear, the admin secret in clear.
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "Legacy CA");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = p.self_signed(&ca_key).expect("CA");
    let issuer = rcgen::Issuer::from_ca_cert_der(ca.der(), &ca_key).expect("issuer");
    let server_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let server = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("params")
        .signed_by(&server_key, &issuer)
        .expect("server");
    for f in ["ca.key.sealed", "server.key.sealed"] {
        std::fs::remove_file(data.join(f)).expect("remove");
    }
    std::fs::write(data.join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(data.join("ca.key"), ca_key.serialize_pem()).expect("write");
    std::fs::write(
        data.join("server.pem"),
        format!("{}{}", server.pem(), ca.pem()),
    )
    .expect("write");
    std::fs::write(data.join("server.key"), server_key.serialize_pem()).expect("write");
    std::fs::write(
        data.join("admin-client.json"),
        serde_json::json!({"client_id": "admin", "client_secret": secret, "tenant": "main"})
            .to_string(),
    )
    .expect("write");

    // The upgraded server serves with the same certificate (clients trust the legacy CA) ...
    let auth = Authority::start(&data, None);
    assert_eq!(basic_login(&auth, "admin", &secret), 200);
    // ... and nothing in the directory is in clear any more.
    assert!(!data.join("ca.key").exists() && !data.join("server.key").exists());
    for (path, bytes) in files(&data) {
        assert!(!contains(&bytes, b"PRIVATE KEY"), "{}", path.display());
        assert!(!contains(&bytes, secret.as_bytes()), "{}", path.display());
    }
    for f in ["ca.key.sealed", "server.key.sealed", "admin-client.json"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    assert_eq!(admin_secret(&data), secret);
    // The sealed CA key still signs: an issued certificate chains to the legacy CA.
    let out = dir.path().join("agent");
    let issued = latchkey(
        &[
            "cert",
            "issue",
            "agent",
            "--server",
            &auth.base_url(),
            "--credentials",
        ],
        &[&data.join("admin-client.json"), Path::new("--out"), &out],
    );
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(out.with_extension("pem"))
        .expect("pem")
        .collect::<Result<_, _>>()
        .expect("certs");
    assert_eq!(chain.last().expect("CA").as_ref(), ca.der().as_ref());
    auth.stop();
}

/// `backup --out` is private, and `check` takes the passphrase from a file, standard input or
/// the environment, never from its command line.
#[test]
fn backups_are_private_and_check_refuses_a_passphrase_on_the_command_line() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "correct horse battery\n").expect("write");
    serve(&data, None, Some(&pass)).expect("first run");

    let backup = dir.path().join("backup.redb");
    let out = latchkey(
        &["backup", "--data-dir"],
        &[&data, Path::new("--out"), &backup],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&backup), 0o600);

    let check = |args: &[&str], env: Option<&str>, stdin: &str| {
        use std::io::Write as _;
        let mut cmd = Command::new(latchkey_bin());
        cmd.args(["check", "--data-dir"])
            .arg(&data)
            .args(args)
            .env_remove("LATCHKEY_PASSPHRASE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(p) = env {
            cmd.env("LATCHKEY_PASSPHRASE", p);
        }
        let mut child = cmd.spawn().expect("spawn");
        let _ = child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes());
        child.wait_with_output().expect("wait")
    };
    let refused = check(&["--passphrase", "correct horse battery"], None, "");
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--passphrase-file"), "{err}");
    assert!(refused.stdout.is_empty(), "nothing was checked");

    for (args, env, stdin) in [
        (
            &["--passphrase-file", pass.to_str().expect("utf-8")][..],
            None,
            "",
        ),
        (
            &["--passphrase-file", "-"][..],
            None,
            "correct horse battery\n",
        ),
        (&[][..], Some("correct horse battery"), ""),
    ] {
        let ok = check(args, env, stdin);
        assert!(
            ok.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&ok.stdout),
            String::from_utf8_lossy(&ok.stderr)
        );
    }
    let wrong = check(&["--passphrase-file", "-"], None, "wrong\n");
    assert_eq!(wrong.status.code(), Some(2));
}
