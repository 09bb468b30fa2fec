//! Mutual TLS end to end: the `latchkey cert` commands against a running server,
//! RFC 8705 registration and certificate-authenticated token requests with rustls, curl and
//! openssl as clients, certificate-bound tokens, every rejection, a relay CA chain, revocation
//! on a live keep-alive connection, and renewal without downtime.

use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};

use crate::util::https::{Authority, form_encode};
use crate::util::latchkey_bin;
use crate::util::server::{CLIENT_TIMEOUT, Response, complete_handshake, read_response};

mod import;
mod suspend;

const API: &str = "/api/agentmanagement/v3";

// ---------------------------------------------------------------------------------------------
// Helpers

/// A server asking for (not requiring) client certificates, so operators and ordinary agents
/// keep working on the same port.
fn start(dir: &Path) -> Authority {
    let config = dir.join("latchkey.toml");
    std::fs::write(&config, "client-auth = \"optional\"\n").expect("config");
    Authority::start(&dir.join("data"), Some(&config))
}

/// `latchkey cert ...` against the running server as the first-run admin.
fn cli(auth: &Authority, args: &[&str]) -> Output {
    Command::new(latchkey_bin())
        .arg("cert")
        .args(args)
        .arg("--server")
        .arg(auth.base_url())
        .arg("--credentials")
        .arg(auth.data_dir.join("admin-client.json"))
        .arg("--ca")
        .arg(auth.ca_path())
        .output()
        .expect("run latchkey cert")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure, got {:?}", o.stdout);
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
}

fn list(auth: &Authority) -> Vec<Value> {
    let v: Value = serde_json::from_str(&ok(&cli(auth, &["list", "--json"]))).expect("json");
    v["certificates"].as_array().expect("certificates").clone()
}

fn entry(auth: &Authority, alias: &str) -> Value {
    list(auth)
        .into_iter()
        .find(|c| c["alias"] == alias)
        .unwrap_or_else(|| panic!("{alias} not listed"))
}

fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

fn leaf_der(pem_file: &Path) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(pem_file)
        .expect("pem")
        .next()
        .expect("one cert")
        .expect("cert")
}

fn x5t(der: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha256(der))
}

fn hex(der: &[u8]) -> String {
    sha256(der).iter().map(|b| format!("{b:02x}")).collect()
}

/// A rustls client presenting `chain` and `key` (or no certificate), trusting the server's CA.
fn client(
    auth: &Authority,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(auth.ca_path()).expect("CA") {
        roots.add(c.expect("CA cert")).expect("add");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn identity(
    cert_pem: &Path,
    key_pem: &Path,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = CertificateDer::pem_file_iter(cert_pem)
        .expect("cert pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    (chain, PrivateKeyDer::from_pem_file(key_pem).expect("key"))
}

type Stream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A connection kept alive across requests. Errors (handshake refused) come back as `Err`.
fn connect(auth: &Authority, config: Arc<rustls::ClientConfig>) -> std::io::Result<Stream> {
    let conn =
        rustls::ClientConnection::new(config, ServerName::try_from("localhost").expect("name"))
            .map_err(std::io::Error::other)?;
    let sock = TcpStream::connect(auth.addr)?;
    sock.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let mut s = rustls::StreamOwned::new(conn, sock);
    complete_handshake(&mut s.conn, &mut s.sock)?;
    Ok(s)
}

/// `POST /oauth/token` with RFC 8705 authentication on `s` (kept alive).
fn mtls_token(s: &mut Stream, client_id: &str) -> std::io::Result<Response> {
    let body = format!(
        "grant_type=client_credentials&client_id={}",
        form_encode(client_id)
    );
    let req = format!(
        "POST {API}/oauth/token HTTP/1.1\r\nHost: localhost\r\nContent-Type: \
         application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    s.flush()?;
    read_response(s, &mut Vec::new(), false)
}

/// A fresh connection with `config` and one token request; `Err` when the handshake or the
/// connection is refused.
fn token_once(
    auth: &Authority,
    config: Arc<rustls::ClientConfig>,
    id: &str,
) -> std::io::Result<Response> {
    let mut s = connect(auth, config)?;
    mtls_token(&mut s, id)
}

fn assert_refused(r: &Response, needle: &str) {
    assert_eq!(r.status, 401, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"], "invalid_client", "{body}");
    let desc = body["error_description"].as_str().expect("description");
    assert!(desc.contains(needle), "{needle:?} not in {desc:?}");
}

/// Refused at the handshake (or the connection closed), or at the request with 401.
fn refused(r: std::io::Result<Response>) {
    if let Ok(r) = r {
        assert_refused(&r, "client certificate refused");
    }
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("b64"),
    )
    .expect("claims")
}

/// Creates an agent and registers it with RFC 8705 metadata; returns the registration.
fn board(auth: &Authority, op: &str, id: &str, metadata: &Value) -> Value {
    let r = auth.json(
        "POST",
        &format!("{API}/agents"),
        Some(op),
        Some(&json!({"entityId": id, "name": id, "securityProfile": "SHARED_SECRET"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = auth.json(
        "GET",
        &format!("{API}/agents/{id}/boarding/configuration"),
        Some(op),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let iat = r.json()["content"]["iat"].as_str().expect("iat").to_owned();
    let r = auth.json(
        "POST",
        &format!("{API}/register"),
        Some(&iat),
        Some(metadata),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

/// Issues `alias` through the CLI into `dir/alias.{pem,key}`.
fn issue(auth: &Authority, dir: &Path, alias: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let prefix = dir.join(alias);
    let mut args = vec!["issue", alias, "--out", prefix.to_str().expect("utf-8")];
    args.extend_from_slice(extra);
    ok(&cli(auth, &args));
    (prefix.with_extension("pem"), prefix.with_extension("key"))
}

/// The token is bound to the certificate: `cnf.x5t#S256`, in the JWT and in introspection.
fn assert_bound(auth: &Authority, op: &str, r: &Response, cert: &[u8]) {
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["access_token"].as_str().expect("token").to_owned();
    assert_eq!(claims(&token)["cnf"]["x5t#S256"], x5t(cert));
    let i = auth.form(
        "/oauth/introspect",
        &format!("token={}", form_encode(&token)),
        &[("Authorization", &format!("Bearer {op}"))],
    );
    assert_eq!(i.status, 200, "{}", i.text());
    assert_eq!(i.json()["active"], true);
    assert_eq!(i.json()["cnf"]["x5t#S256"], x5t(cert));
}

fn rcgen_ca(cn: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    (p.self_signed(&key).expect("CA"), key)
}

fn rcgen_leaf(cn: &str) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::new(vec![format!("{cn}.example")]).expect("params");
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn issued_certificates_authenticate_agents_and_revocation_bites_on_a_live_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    let out = dir.path();

    // The CA agents trust, from the CLI.
    let ca_out = out.join("exported-ca.pem");
    ok(&cli(
        &auth,
        &["export-ca", "--out", ca_out.to_str().expect("utf-8")],
    ));
    assert_eq!(
        std::fs::read(&ca_out).expect("exported"),
        std::fs::read(auth.ca_path()).expect("ca")
    );

    // Issue: the key is made by the CLI, the CA signs the CSR; PKCS#12 on request.
    let (a_pem, a_key) = issue(
        &auth,
        out,
        "agent-1",
        &["--cn", "agent-1", "--p12-password", "pw"],
    );
    let (b_pem, b_key) = issue(&auth, out, "agent-2", &[]);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&a_key).expect("key").permissions().mode() & 0o777,
        0o600
    );
    let a_der = leaf_der(&a_pem);
    let listed = entry(&auth, "agent-1");
    assert_eq!(listed["fingerprint"], hex(&a_der));
    assert_eq!(listed["state"], "valid");
    assert_eq!(listed["subject"], "CN=agent-1");
    assert_eq!(listed["kind"], "agent");
    let text = ok(&cli(&auth, &["list"]));
    assert!(
        text.contains("agent-1") && text.contains(&hex(&a_der)),
        "{text}"
    );

    // openssl reads the PKCS#12 with the password, and refuses a wrong one; so does latchkey.
    let p12 = out.join("agent-1.p12");
    assert_eq!(
        std::fs::metadata(&p12).expect("p12").permissions().mode() & 0o777,
        0o600,
        "the keystore holds the private key"
    );
    let openssl = |pass: &str| {
        Command::new("openssl")
            .args([
                "pkcs12",
                "-in",
                p12.to_str().expect("utf-8"),
                "-nokeys",
                "-passin",
            ])
            .arg(format!("pass:{pass}"))
            .output()
            .expect("openssl")
    };
    assert!(openssl("pw").status.success(), "{:?}", openssl("pw"));
    assert!(!openssl("nope").status.success());
    fails(
        &cli(
            &auth,
            &[
                "trust",
                "p12",
                "--file",
                p12.to_str().expect("utf-8"),
                "--password",
                "nope",
            ],
        ),
        "wrong password",
    );

    // Duplicate aliases are refused.
    fails(
        &cli(
            &auth,
            &[
                "issue",
                "agent-1",
                "--out",
                out.join("dup").to_str().expect("utf-8"),
            ],
        ),
        "exists",
    );

    // Register with tls_client_auth (subject DN): no secret comes back.
    let reg = board(
        &auth,
        &op,
        "m1",
        &json!({"token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_subject_dn": "CN=agent-1"}),
    );
    assert_eq!(reg["token_endpoint_auth_method"], "tls_client_auth");
    assert!(reg.get("client_secret").is_none(), "{reg}");

    // A token with no secret at all, bound to the certificate.
    let a = client(&auth, Some(identity(&a_pem, &a_key)));
    let mut live = connect(&auth, a.clone()).expect("handshake");
    let r = mtls_token(&mut live, "m1").expect("token");
    assert_bound(&auth, &op, &r, &a_der);

    // curl, the simplest real client, does the same.
    let curl = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(auth.ca_path())
        .arg("--cert")
        .arg(&a_pem)
        .arg("--key")
        .arg(&a_key)
        .args(["-d", "grant_type=client_credentials&client_id=m1"])
        .arg(format!("{}{API}/oauth/token", auth.base_url()))
        .output()
        .expect("curl");
    let body: Value = serde_json::from_slice(&curl.stdout).expect("curl JSON");
    assert_eq!(
        claims(body["access_token"].as_str().expect("token"))["cnf"]["x5t#S256"],
        x5t(&a_der)
    );

    // Rejections: no certificate; client B's certificate with client A's id.
    let r = token_once(&auth, client(&auth, None), "m1").expect("plain TLS works");
    assert_eq!(r.status, 401, "{}", r.text());
    let b = client(&auth, Some(identity(&b_pem, &b_key)));
    assert_refused(
        &token_once(&auth, b.clone(), "m1").expect("B connects"),
        "does not match",
    );
    // And a certificate for an unknown client id.
    assert_refused(
        &token_once(&auth, b, "nobody").expect("B connects"),
        "unknown client",
    );

    // Operators keep working on the same port without a certificate (optional mode).
    let r = auth.json("GET", "/api/latchkey/v1/certificates", Some(&op), None);
    assert_eq!(r.status, 200, "{}", r.text());

    // Revoke agent-1: the live keep-alive connection fails at its next request...
    let r = mtls_token(&mut live, "m1").expect("still alive");
    assert_eq!(r.status, 200, "{}", r.text());
    ok(&cli(&auth, &["revoke", "agent-1"]));
    assert_eq!(entry(&auth, "agent-1")["state"], "revoked");
    refused(mtls_token(&mut live, "m1"));
    // ...and new handshakes with it fail at once, without a restart.
    assert!(
        token_once(&auth, client(&auth, Some(identity(&a_pem, &a_key))), "m1").is_err(),
        "a full handshake with a revoked certificate succeeded"
    );
    // A resumed session skips certificate verification; the per-request check refuses it.
    refused(token_once(&auth, a.clone(), "m1"));
    // openssl s_client sees the handshake refused too. Under TLS 1.3 the client certificate is
    // checked after the client has sent its Finished, so the refusal arrives as an alert after
    // s_client thinks it is connected: `-ign_eof` makes it keep reading (instead of exiting at
    // the end of its empty stdin) until the server's alert and close; `timeout` bounds it.
    let s_client = Command::new("timeout")
        .args(["20", "openssl", "s_client", "-ign_eof", "-connect"])
        .arg(auth.addr.to_string())
        .arg("-CAfile")
        .arg(auth.ca_path())
        .arg("-cert")
        .arg(&a_pem)
        .arg("-key")
        .arg(&a_key)
        .args(["-servername", "localhost"])
        .stdin(std::process::Stdio::piped())
        .output()
        .expect("openssl s_client");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&s_client.stdout),
        String::from_utf8_lossy(&s_client.stderr)
    );
    assert!(all.contains("alert"), "{all}");

    // "Forget API key": offboarding removes the registration; agent-2 still has its certificate
    // but m2's credentials are gone.
    board(
        &auth,
        &op,
        "m2",
        &json!({"token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_san_dns": "agent-2"}),
    );
    let b = client(&auth, Some(identity(&b_pem, &b_key)));
    // The CLI issued agent-2 without --san: the SAN rule does not match it.
    assert_refused(
        &token_once(&auth, b.clone(), "m2").expect("connects"),
        "does not match",
    );
    let r = auth.json(
        "POST",
        &format!("{API}/agents/m2/boarding/offboard"),
        Some(&op),
        None,
    );
    assert!(r.status < 300, "{}", r.text());
    assert_refused(
        &token_once(&auth, b, "m2").expect("connects"),
        "unknown client",
    );
}

#[test]
fn relay_ca_chains_self_signed_agents_bad_imports_and_renewal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    let out = dir.path();

    // A relay CA, trusted under an alias; an edge agent certificate it issued.
    let (relay, relay_key) = rcgen_ca("relay-7 CA");
    let relay_pem = write(out, "relay.pem", &relay.pem());
    ok(&cli(
        &auth,
        &[
            "trust",
            "relay-7",
            "--as-ca",
            "--file",
            relay_pem.to_str().expect("utf-8"),
        ],
    ));
    let edge_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let issuer = rcgen::Issuer::from_ca_cert_der(relay.der(), &relay_key).expect("issuer");
    let edge = rcgen_leaf("edge-7")
        .signed_by(&edge_key, &issuer)
        .expect("edge");
    let edge_id = || {
        (
            vec![edge.der().clone(), relay.der().clone()],
            PrivateKeyDer::from(rustls::pki_types::PrivatePkcs8KeyDer::from(
                edge_key.serialize_der(),
            )),
        )
    };
    board(
        &auth,
        &op,
        "edge-7",
        &json!({"token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_san_dns": "edge-7.example"}),
    );
    let edge_client = client(&auth, Some(edge_id()));
    let mut live = connect(&auth, edge_client.clone()).expect("handshake");
    let r = mtls_token(&mut live, "edge-7").expect("token");
    assert_bound(&auth, &op, &r, edge.der());

    // Bad imports give clear errors.
    let edge_pem = write(out, "edge.pem", &edge.pem());
    fails(
        &cli(
            &auth,
            &["trust", "edge", "--file", edge_pem.to_str().expect("utf-8")],
        ),
        "trust that CA instead",
    );
    fails(
        &cli(
            &auth,
            &[
                "trust",
                "relay-7",
                "--file",
                relay_pem.to_str().expect("utf-8"),
            ],
        ),
        "exists",
    );
    let junk = write(
        out,
        "junk.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    fails(
        &cli(
            &auth,
            &["trust", "junk", "--file", junk.to_str().expect("utf-8")],
        ),
        "malformed",
    );
    let mut old = rcgen_leaf("old");
    old.not_before = rcgen::date_time_ymd(2001, 1, 1);
    old.not_after = rcgen::date_time_ymd(2002, 1, 1);
    let old_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let expired = write(
        out,
        "expired.pem",
        &old.self_signed(&old_key).expect("old").pem(),
    );
    fails(
        &cli(
            &auth,
            &["trust", "old", "--file", expired.to_str().expect("utf-8")],
        ),
        "expired",
    );

    // Revoking the relay CA refuses its agents: on the live connection and at the handshake.
    ok(&cli(&auth, &["revoke", "relay-7"]));
    refused(mtls_token(&mut live, "edge-7"));
    assert!(
        token_once(&auth, client(&auth, Some(edge_id())), "edge-7").is_err(),
        "relay chain still accepted"
    );
    refused(token_once(&auth, edge_client, "edge-7"));

    // self_signed_tls_client_auth: the certificate in the JWKS (x5c), trusted by alias.
    let ss_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let ss = rcgen_leaf("solo")
        .self_signed(&ss_key)
        .expect("self-signed");
    let ss_pem = write(out, "solo.pem", &ss.pem());
    ok(&cli(
        &auth,
        &["trust", "solo", "--file", ss_pem.to_str().expect("utf-8")],
    ));
    let x5c = base64::engine::general_purpose::STANDARD.encode(ss.der());
    board(
        &auth,
        &op,
        "solo",
        &json!({"token_endpoint_auth_method": "self_signed_tls_client_auth",
                "jwks": {"keys": [{"kty": "EC", "x5c": [x5c]}]}}),
    );
    let solo = client(
        &auth,
        Some((
            vec![ss.der().clone()],
            PrivateKeyDer::from(rustls::pki_types::PrivatePkcs8KeyDer::from(
                ss_key.serialize_der(),
            )),
        )),
    );
    let r = token_once(&auth, solo.clone(), "solo").expect("token");
    assert_bound(&auth, &op, &r, ss.der());
    // A trusted self-signed key cannot mint certificates for a `tls_client_auth` subject.
    board(
        &auth,
        &op,
        "victim",
        &json!({"token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_subject_dn": "CN=victim"}),
    );
    let forged_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let forged = rcgen_leaf("victim")
        .signed_by(
            &forged_key,
            &rcgen::Issuer::from_ca_cert_der(ss.der(), &ss_key).expect("issuer"),
        )
        .expect("forged");
    let forger = client(
        &auth,
        Some((
            vec![forged.der().clone()],
            PrivateKeyDer::from(rustls::pki_types::PrivatePkcs8KeyDer::from(
                forged_key.serialize_der(),
            )),
        )),
    );
    if let Ok(r) = token_once(&auth, forger, "victim") {
        assert_refused(&r, "client certificate refused");
    }

    // Renewal without downtime: a new certificate (same subject, new key) under a new alias;
    // both work until the old one is revoked.
    board(
        &auth,
        &op,
        "ren",
        &json!({"token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_subject_dn": "CN=ren"}),
    );
    let (old_pem, old_key) = issue(&auth, out, "ren", &["--days", "30"]);
    let old_client = client(&auth, Some(identity(&old_pem, &old_key)));
    let mut old_live = connect(&auth, old_client.clone()).expect("handshake");
    assert_eq!(mtls_token(&mut old_live, "ren").expect("token").status, 200);
    let new_prefix = out.join("ren-new");
    ok(&cli(
        &auth,
        &[
            "renew",
            "ren",
            "--new-alias",
            "ren-2",
            "--out",
            new_prefix.to_str().expect("utf-8"),
        ],
    ));
    let (new_pem, new_key) = (
        new_prefix.with_extension("pem"),
        new_prefix.with_extension("key"),
    );
    assert_eq!(entry(&auth, "ren-2")["subject"], "CN=ren");
    let new_client = client(&auth, Some(identity(&new_pem, &new_key)));
    assert_eq!(
        mtls_token(&mut old_live, "ren")
            .expect("old still works")
            .status,
        200
    );
    assert_bound(
        &auth,
        &op,
        &token_once(&auth, new_client.clone(), "ren").expect("new"),
        &leaf_der(&new_pem),
    );
    ok(&cli(&auth, &["revoke", &hex(&leaf_der(&old_pem))]));
    refused(token_once(&auth, old_client, "ren"));
    assert!(
        token_once(
            &auth,
            client(&auth, Some(identity(&old_pem, &old_key))),
            "ren"
        )
        .is_err(),
        "old certificate still accepted"
    );
    assert_eq!(
        token_once(&auth, new_client, "ren").expect("new").status,
        200
    );
}

/// A form POST on `s` (kept alive) with optional extra headers.
fn post_form(s: &mut Stream, path: &str, body: &str, headers: &[(&str, &str)]) -> Response {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: \
         application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write");
    s.write_all(body.as_bytes()).expect("write body");
    s.flush().expect("flush");
    read_response(s, &mut Vec::new(), false).expect("response")
}

fn token_of(r: &Response) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["access_token"].as_str().expect("token").to_owned()
}

#[test]
fn certificate_bound_tokens_need_their_certificate_at_introspection_and_revocation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    let (a_pem, a_key) = issue(&auth, dir.path(), "bound-a", &["--cn", "bound-a"]);
    let (b_pem, b_key) = issue(&auth, dir.path(), "bound-b", &["--cn", "bound-b"]);
    board(
        &auth,
        &op,
        "bound1",
        &json!({"token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_subject_dn": "CN=bound-a"}),
    );
    let mut with_a = connect(&auth, client(&auth, Some(identity(&a_pem, &a_key)))).expect("A");
    let token = token_of(&mtls_token(&mut with_a, "bound1").expect("token"));
    let bearer = format!("Bearer {token}");
    let ask = format!("token={}", form_encode(&token));
    let active = |auth: &Authority| {
        let r = auth.form(
            "/oauth/introspect",
            &ask,
            &[("Authorization", &format!("Bearer {op}"))],
        );
        r.json()["active"].as_bool().expect("active")
    };

    // Without the certificate (plain TLS) or with another one, the token is not a credential.
    let stolen = [
        auth.form("/oauth/introspect", &ask, &[("Authorization", &bearer)]),
        auth.form("/oauth/revoke", &ask, &[("Authorization", &bearer)]),
    ];
    let mut with_b = connect(&auth, client(&auth, Some(identity(&b_pem, &b_key)))).expect("B");
    let wrong = [
        post_form(
            &mut with_b,
            "/oauth/introspect",
            &ask,
            &[("Authorization", &bearer)],
        ),
        post_form(
            &mut with_b,
            "/oauth/revoke",
            &ask,
            &[("Authorization", &bearer)],
        ),
    ];
    for r in stolen.iter().chain(&wrong) {
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.json()["error"], "invalid_token", "{}", r.text());
    }
    assert!(active(&auth), "the refused revocation did nothing");

    // With it, both work: the agent sees its own token, then revokes it.
    let r = post_form(
        &mut with_a,
        "/oauth/introspect",
        &ask,
        &[("Authorization", &bearer)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["active"], true, "{}", r.text());
    let r = post_form(
        &mut with_a,
        "/oauth/revoke",
        &ask,
        &[("Authorization", &bearer)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!active(&auth));
}

#[test]
fn agents_and_operator_clients_with_the_same_id_do_not_own_each_others_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    // An operator client `twin` (ReadOnly: tokens:introspect, no tokens:revoke) and an agent
    // `twin` of the same tenant.
    let r = auth.json(
        "POST",
        "/api/latchkey/v1/clients",
        Some(&op),
        Some(&json!({"client_id": "twin", "profile": "ReadOnly"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let secret = r.json()["client_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let twin_basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("twin:{secret}"))
    );
    let operator_token = {
        let r = auth.form(
            "/oauth/token",
            "grant_type=client_credentials",
            &[("Authorization", &twin_basic)],
        );
        token_of(&r)
    };
    let (pem, key) = issue(&auth, dir.path(), "twin", &["--cn", "twin"]);
    board(
        &auth,
        &op,
        "twin",
        &json!({"token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_subject_dn": "CN=twin"}),
    );
    let mut agent = connect(&auth, client(&auth, Some(identity(&pem, &key)))).expect("agent");
    let agent_token = token_of(&mtls_token(&mut agent, "twin").expect("token"));
    let agent_bearer = format!("Bearer {agent_token}");
    let active = |token: &str| {
        let r = auth.form(
            "/oauth/introspect",
            &format!("token={}", form_encode(token)),
            &[("Authorization", &format!("Bearer {op}"))],
        );
        r.json()["active"].as_bool().expect("active")
    };

    // The agent cannot read or revoke the operator client's token.
    let ask = format!("token={}", form_encode(&operator_token));
    let r = post_form(
        &mut agent,
        "/oauth/introspect",
        &ask,
        &[("Authorization", &agent_bearer)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"active": false}));
    let r = post_form(
        &mut agent,
        "/oauth/revoke",
        &ask,
        &[("Authorization", &agent_bearer)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        active(&operator_token),
        "the agent revoked an operator token"
    );

    // The operator client, without tokens:revoke, cannot revoke the agent's token as its own.
    let ask = format!("token={}", form_encode(&agent_token));
    let r = auth.form("/oauth/revoke", &ask, &[("Authorization", &twin_basic)]);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "insufficient_scope");
    let r = auth.form(
        "/oauth/revoke",
        &ask,
        &[("Authorization", &format!("Bearer {operator_token}"))],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        active(&agent_token),
        "an operator client revoked an agent's token"
    );
    // Each still revokes its own.
    let r = post_form(
        &mut agent,
        "/oauth/revoke",
        &ask,
        &[("Authorization", &agent_bearer)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!active(&agent_token));
    let ask = format!("token={}", form_encode(&operator_token));
    let r = auth.form("/oauth/revoke", &ask, &[("Authorization", &twin_basic)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!active(&operator_token));
}

/// An ECDSA key and a CSR for `subject` (openssl's `/type=value` form) made by openssl, signed
/// by the authority through `latchkey cert issue --csr`.
fn openssl_issued(auth: &Authority, dir: &Path, alias: &str, subject: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{alias}.key"));
    let csr = dir.join(format!("{alias}.csr"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-subj", subject, "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .output()
        .expect("openssl req");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let prefix = dir.join(alias);
    ok(&cli(
        auth,
        &[
            "issue",
            alias,
            "--csr",
            csr.to_str().expect("utf-8"),
            "--out",
            prefix.to_str().expect("utf-8"),
        ],
    ));
    (prefix.with_extension("pem"), key)
}

/// Regression: `tls_client_auth_subject_dn` was compared as unescaped text, so a certificate
/// whose one CN reads `a, O=b` authenticated as the agent registered for `CN=a,O=b`.
#[test]
fn subject_dn_rules_compare_rdns_so_a_comma_in_a_value_impersonates_nobody() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    let out = dir.path();
    let (real_pem, real_key) = openssl_issued(&auth, out, "real", "/O=b/CN=a");
    let (forged_pem, forged_key) = openssl_issued(&auth, out, "forged", "/CN=a, O=b");
    assert_eq!(entry(&auth, "real")["subject"], "CN=a,O=b");
    assert_eq!(entry(&auth, "forged")["subject"], "CN=a\\, O\\=b");

    board(
        &auth,
        &op,
        "victim",
        &json!({"token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_subject_dn": "CN=a,O=b"}),
    );
    let forger = client(&auth, Some(identity(&forged_pem, &forged_key)));
    let r = token_once(&auth, forger.clone(), "victim").expect("answered");
    assert_refused(&r, "does not match");
    let real = client(&auth, Some(identity(&real_pem, &real_key)));
    assert_bound(
        &auth,
        &op,
        &token_once(&auth, real.clone(), "victim").expect("token"),
        &leaf_der(&real_pem),
    );

    // Escaped as RFC 4514 says, the forged certificate's own name is its own rule.
    board(
        &auth,
        &op,
        "comma",
        &json!({"token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_subject_dn": "CN=a\\, O=b"}),
    );
    assert_bound(
        &auth,
        &op,
        &token_once(&auth, forger, "comma").expect("token"),
        &leaf_der(&forged_pem),
    );
    assert_refused(
        &token_once(&auth, real, "comma").expect("answered"),
        "does not match",
    );
}

mod required;
