//! Trusting certificates the way keytool users exchange them: DER, PEM and PKCS#12 files told
//! by content, JKS refused with the conversion command, openssl-default self-signed agents
//! (CA:TRUE) pinned by fingerprint under both RFC 8705 methods, and pinned certificates that
//! anchor nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::{Value, json};

use super::{API, board, cli, fails, hex, ok, start};
use crate::util::https::Authority;

fn openssl(args: &[&str]) -> String {
    String::from_utf8_lossy(&crate::util::openssl_in(None, args).stdout).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

/// `openssl req -x509` with openssl's defaults (the `v3_ca` section: CA:TRUE): `dir/name.pem`
/// and `dir/name.key`.
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    self_signed_with(dir, name, &[])
}

/// [`self_signed`] with extra `openssl req` arguments.
fn self_signed_with(dir: &Path, name: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let (pem, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let subject = format!("/CN={name}");
    let mut args = vec![
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &subject,
        "-keyout",
        path(&key),
        "-out",
        path(&pem),
    ];
    args.extend_from_slice(extra);
    openssl(&args);
    (pem, key)
}

/// A token request with curl presenting `cert`/`key`; the response body, or `None` when the
/// handshake was refused.
fn curl_token(auth: &Authority, cert: &Path, key: &Path, id: &str) -> Option<Value> {
    let o = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(auth.ca_path())
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .args([
            "-d",
            &format!("grant_type=client_credentials&client_id={id}"),
        ])
        .arg(format!("{}{API}/oauth/token", auth.base_url()))
        .output()
        .expect("curl");
    if !o.status.success() {
        return None;
    }
    serde_json::from_slice(&o.stdout).ok()
}

fn der_of(pem: &Path) -> Vec<u8> {
    let out = pem.with_extension("der");
    openssl(&[
        "x509",
        "-in",
        path(pem),
        "-outform",
        "DER",
        "-out",
        path(&out),
    ]);
    std::fs::read(out).expect("der")
}

#[test]
fn der_pem_and_pkcs12_imports_pin_openssl_default_self_signed_agents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    let out = dir.path();

    // openssl's defaults make a CA:TRUE certificate: what operators exchange.
    let (a_pem, a_key) = self_signed(out, "agent-der");
    assert!(openssl(&["x509", "-in", path(&a_pem), "-noout", "-text"]).contains("CA:TRUE"));
    // DER, as `keytool -exportcert` writes by default.
    let a_der = der_of(&a_pem);
    let a_der_file = out.join("agent-der.cer");
    std::fs::write(&a_der_file, &a_der).expect("write");
    let v: Value = serde_json::from_str(&ok(&cli(
        &auth,
        &["trust", "agent-der", "--file", path(&a_der_file), "--json"],
    )))
    .expect("json");
    assert_eq!(v["fingerprint"], hex(&a_der));
    assert_eq!(v["kind"], "trusted");

    // PKCS#12 with its password from a file; the extension says nothing.
    let (b_pem, b_key) = self_signed(out, "agent-p12");
    let b_p12 = out.join("agent-p12.bin");
    openssl(&[
        "pkcs12",
        "-export",
        "-in",
        path(&b_pem),
        "-inkey",
        path(&b_key),
        "-out",
        path(&b_p12),
        "-passout",
        "pass:s3cret",
        "-name",
        "agent-p12",
    ]);
    let pw = out.join("pw");
    std::fs::write(&pw, "s3cret\n").expect("write");
    ok(&cli(
        &auth,
        &[
            "trust",
            "agent-p12",
            "--file",
            path(&b_p12),
            "--password-file",
            path(&pw),
        ],
    ));
    let wrong = out.join("wrong");
    std::fs::write(&wrong, "nope\n").expect("write");
    fails(
        &cli(
            &auth,
            &[
                "trust",
                "p12-again",
                "--file",
                path(&b_p12),
                "--password-file",
                path(&wrong),
            ],
        ),
        "wrong password",
    );
    // PEM.
    let (c_pem, c_key) = self_signed(out, "agent-pem");
    ok(&cli(&auth, &["trust", "agent-pem", "--file", path(&c_pem)]));

    // A JKS keystore (magic 0xFEEDFEED, version 2, no entries) is refused with the command
    // that converts it.
    let jks = out.join("agents.jks");
    std::fs::write(&jks, [0xFE, 0xED, 0xFE, 0xED, 0, 0, 0, 2, 0, 0, 0, 0]).expect("write");
    fails(
        &cli(&auth, &["trust", "jks", "--file", path(&jks)]),
        &format!(
            "keytool -importkeystore -srckeystore {0} -destkeystore {0}.p12 -deststoretype \
             pkcs12",
            jks.display()
        ),
    );
    // The HTTP API takes the same bytes and refuses the same way.
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let r = auth.json(
        "POST",
        "/api/latchkey/v1/certificates",
        Some(&op),
        Some(&json!({"alias": "jks", "file": b64(&std::fs::read(&jks).expect("jks"))})),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["error_description"]
            .as_str()
            .expect("desc")
            .contains("-importkeystore")
    );

    // PEM text over HTTP, as before; a CA on purpose with "ca": true; pem and file together
    // are refused.
    let (h_pem, _) = self_signed(out, "agent-http");
    let h_text = std::fs::read_to_string(&h_pem).expect("pem");
    let r = auth.json(
        "POST",
        "/api/latchkey/v1/certificates",
        Some(&op),
        Some(&json!({"alias": "agent-http", "pem": h_text, "ca": true})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["kind"], "trusted-ca");
    let r = auth.json(
        "POST",
        "/api/latchkey/v1/certificates",
        Some(&op),
        Some(&json!({"alias": "both", "pem": h_text, "file": b64(h_text.as_bytes())})),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("exactly one of pem and file"),
        "{}",
        r.text()
    );

    // Each pinned certificate authenticates with curl: tls_client_auth by subject DN and by
    // SAN-less subject, self_signed_tls_client_auth by x5c.
    board(
        &auth,
        &op,
        "agent-der",
        &json!({"token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_subject_dn": "CN=agent-der"}),
    );
    let t = curl_token(&auth, &a_pem, &a_key, "agent-der").expect("handshake");
    assert!(t["access_token"].is_string(), "{t}");
    board(
        &auth,
        &op,
        "agent-p12",
        &json!({"token_endpoint_auth_method": "self_signed_tls_client_auth",
                "jwks": {"keys": [{"kty": "EC", "x5c": [b64(&der_of(&b_pem))]}]}}),
    );
    let t = curl_token(&auth, &b_pem, &b_key, "agent-p12").expect("handshake");
    assert!(t["access_token"].is_string(), "{t}");
    // tls_client_auth by SAN, on a CA:TRUE self-signed certificate imported as PEM.
    let (d_pem, d_key) = self_signed_with(
        out,
        "agent-san",
        &["-addext", "subjectAltName=DNS:agent-san.example"],
    );
    ok(&cli(&auth, &["trust", "agent-san", "--file", path(&d_pem)]));
    board(
        &auth,
        &op,
        "agent-san",
        &json!({"token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_san_dns": "agent-san.example"}),
    );
    let t = curl_token(&auth, &d_pem, &d_key, "agent-san").expect("handshake");
    assert!(t["access_token"].is_string(), "{t}");
    // The PEM one under the other method, too: the method does not decide the trust.
    board(
        &auth,
        &op,
        "agent-pem",
        &json!({"token_endpoint_auth_method": "self_signed_tls_client_auth",
                "jwks": {"keys": [{"kty": "EC", "x5c": [b64(&der_of(&c_pem))]}]}}),
    );
    let t = curl_token(&auth, &c_pem, &c_key, "agent-pem").expect("handshake");
    assert!(t["access_token"].is_string(), "{t}");

    // A pinned certificate anchors nothing: a leaf its (CA:TRUE) key signed for another
    // subject is refused at the handshake, and the refusal is logged with the peer and why.
    board(
        &auth,
        &op,
        "victim",
        &json!({"token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_subject_dn": "CN=victim"}),
    );
    let (v_key, v_csr, v_pem) = (out.join("v.key"), out.join("v.csr"), out.join("v.pem"));
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=victim",
        "-keyout",
        path(&v_key),
        "-out",
        path(&v_csr),
    ]);
    let ext = out.join("v.ext");
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .expect("write");
    openssl(&[
        "x509",
        "-req",
        "-in",
        path(&v_csr),
        "-CA",
        path(&a_pem),
        "-CAkey",
        path(&a_key),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        path(&ext),
        "-out",
        path(&v_pem),
    ]);
    // Also with the pinned certificate sent as the intermediate.
    let v_chain = out.join("v-chain.pem");
    std::fs::write(
        &v_chain,
        [
            std::fs::read(&v_pem).expect("v"),
            std::fs::read(&a_pem).expect("a"),
        ]
        .concat(),
    )
    .expect("write");
    for chain in [&v_pem, &v_chain] {
        match curl_token(&auth, chain, &v_key, "victim") {
            None => {}
            Some(body) => assert_eq!(body["error"], "invalid_client", "{body}"),
        }
    }
    let log = auth.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("TLS handshake refused"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("127.0.0.1:"), "{line}");
    assert!(line.contains("UnknownIssuer"), "{line}");
}

/// Revoking a certificate ends the tokens bound to it (`cnf.x5t#S256`): introspection says
/// inactive at once, by alias or by fingerprint, and still after a restart.
#[test]
fn revoking_a_certificate_ends_the_tokens_bound_to_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    let out = dir.path();
    let (pem, key) = self_signed(out, "bound-x");
    ok(&cli(&auth, &["trust", "bound-x", "--file", path(&pem)]));
    board(
        &auth,
        &op,
        "bound-x",
        &json!({"token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_subject_dn": "CN=bound-x"}),
    );
    let (other_pem, other_key) = self_signed(out, "bound-y");
    ok(&cli(
        &auth,
        &["trust", "bound-y", "--file", path(&other_pem)],
    ));
    board(
        &auth,
        &op,
        "bound-y",
        &json!({"token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_subject_dn": "CN=bound-y"}),
    );
    let token = |pem: &Path, key: &Path, id: &str| {
        curl_token(&auth, pem, key, id).expect("handshake")["access_token"]
            .as_str()
            .expect("token")
            .to_owned()
    };
    let (x, y) = (
        token(&pem, &key, "bound-x"),
        token(&other_pem, &other_key, "bound-y"),
    );
    let active = |auth: &Authority, t: &str| {
        let r = auth.form(
            "/oauth/introspect",
            &format!("token={t}"),
            &[("Authorization", &format!("Bearer {op}"))],
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["active"].as_bool().expect("active")
    };
    assert!(active(&auth, &x) && active(&auth, &y));
    ok(&cli(&auth, &["revoke", "bound-x"]));
    assert!(!active(&auth, &x), "bound token outlived its certificate");
    assert!(active(&auth, &y), "another certificate's token ended too");
    // By fingerprint, too.
    ok(&cli(&auth, &["revoke", &hex(&der_of(&other_pem))]));
    assert!(!active(&auth, &y));

    let data = auth.data_dir.clone();
    auth.stop();
    let again = super::start(dir.path());
    assert_eq!(again.data_dir, data);
    let op2 = again.operator_token();
    for t in [&x, &y] {
        let r = again.form(
            "/oauth/introspect",
            &format!("token={t}"),
            &[("Authorization", &format!("Bearer {op2}"))],
        );
        assert_eq!(r.json()["active"], false, "{}", r.text());
    }
}

/// `cert issue --usage`: key usage and EKU follow the usage, for generated keys and CSRs;
/// a server certificate needs a SAN.
#[test]
fn issued_certificates_carry_the_key_usages_their_usage_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let out = dir.path();
    let text = |alias: &str, extra: &[&str]| {
        let prefix = out.join(alias);
        let mut args = vec!["issue", alias, "--out", path(&prefix)];
        args.extend_from_slice(extra);
        ok(&cli(&auth, &args));
        openssl(&[
            "x509",
            "-in",
            path(&prefix.with_extension("pem")),
            "-noout",
            "-text",
        ])
    };
    let client = text("u-client", &[]);
    assert!(client.contains("TLS Web Client Authentication"), "{client}");
    assert!(client.contains("Digital Signature"), "{client}");
    assert!(!client.contains("Server Authentication"), "{client}");

    let server = text("u-server", &["--usage", "server", "--san", "relay.example"]);
    assert!(server.contains("TLS Web Server Authentication"), "{server}");
    assert!(!server.contains("Client Authentication"), "{server}");
    assert!(server.contains("DNS:relay.example"), "{server}");
    assert!(server.contains("CA:FALSE"), "{server}");

    let both = text(
        "u-both",
        &[
            "--usage", "server", "--usage", "client", "--san", "10.0.0.7",
        ],
    );
    assert!(
        both.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{both}"
    );

    // Generated keys are EC: key agreement, not key encipherment.
    let enc = text("u-enc", &["--usage", "encryption"]);
    assert!(
        enc.contains("Key Agreement, Data Encipherment")
            || enc.contains("Data Encipherment, Key Agreement"),
        "{enc}"
    );
    assert!(!enc.contains("Extended Key Usage"), "{enc}");

    // An RSA CSR from openssl: key encipherment, for encryption and for TLS servers.
    let (key, csr) = (out.join("rsa.key"), out.join("rsa.csr"));
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=rsa-agent",
        "-keyout",
        path(&key),
        "-out",
        path(&csr),
    ]);
    let rsa_enc = text("u-rsa-enc", &["--csr", path(&csr), "--usage", "encryption"]);
    assert!(
        rsa_enc.contains("Key Encipherment, Data Encipherment"),
        "{rsa_enc}"
    );
    assert!(!rsa_enc.contains("Extended Key Usage"), "{rsa_enc}");
    let rsa_srv = text(
        "u-rsa-srv",
        &[
            "--csr",
            path(&csr),
            "--usage",
            "server",
            "--san",
            "rsa.example",
        ],
    );
    assert!(
        rsa_srv.contains("Digital Signature, Key Encipherment"),
        "{rsa_srv}"
    );

    // No SAN, no server certificate; an unknown usage is refused by name.
    fails(
        &cli(
            &auth,
            &[
                "issue",
                "u-nosan",
                "--usage",
                "server",
                "--out",
                path(&out.join("n")),
            ],
        ),
        "subject alternative name",
    );
    fails(
        &cli(&auth, &["issue", "u-bad", "--usage", "signing"]),
        "signing",
    );
    let r = auth.json(
        "POST",
        "/api/latchkey/v1/certificates/issue",
        Some(&auth.operator_token()),
        Some(
            &json!({"alias": "u-api", "csr": std::fs::read_to_string(&csr).expect("csr"),
                     "usage": ["server"]}),
        ),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_request");
}

/// `GET /api/latchkey/v1/certificates/crl`: without credentials, DER signed by the CA, listing
/// the revoked certificates the CA issued (by alias or by fingerprint) and nothing else.
#[test]
fn the_crl_lists_revoked_certificates_the_ca_issued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let out = dir.path();
    let serial = |pem: &Path| {
        openssl(&["x509", "-in", path(pem), "-noout", "-serial"])
            .trim()
            .trim_start_matches("serial=")
            .to_uppercase()
    };
    let fetch = |name: &str| {
        let file = out.join(name);
        let o = Command::new("curl")
            .args(["-sS", "-D", "-", "--cacert"])
            .arg(auth.ca_path())
            .arg("-o")
            .arg(&file)
            .arg(format!(
                "{}/api/latchkey/v1/certificates/crl",
                auth.base_url()
            ))
            .output()
            .expect("curl");
        let head = String::from_utf8_lossy(&o.stdout).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(
            head.contains("content-type: application/pkix-crl"),
            "{head}"
        );
        let text = openssl(&[
            "crl",
            "-inform",
            "DER",
            "-in",
            path(&file),
            "-noout",
            "-text",
        ]);
        // Signed by the CA: openssl checks the signature against it.
        let check = Command::new("openssl")
            .args([
                "crl",
                "-inform",
                "DER",
                "-in",
                path(&file),
                "-noout",
                "-CAfile",
            ])
            .arg(auth.ca_path())
            .output()
            .expect("openssl");
        assert!(
            String::from_utf8_lossy(&check.stderr).contains("verify OK"),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        text
    };
    let (a, _) = super::issue(&auth, out, "crl-a", &[]);
    let (b, _) = super::issue(&auth, out, "crl-b", &[]);
    let (c, _) = super::issue(&auth, out, "crl-c", &[]);
    let empty = fetch("empty.crl");
    assert!(empty.contains("No Revoked Certificates"), "{empty}");

    ok(&cli(&auth, &["revoke", "crl-a"]));
    ok(&cli(&auth, &["revoke", &hex(&der_of(&b))]));
    // A revoked certificate the CA did not issue is not the CA's to list.
    let (other, _) = self_signed(out, "crl-other");
    ok(&cli(&auth, &["trust", "crl-other", "--file", path(&other)]));
    ok(&cli(&auth, &["revoke", "crl-other"]));
    let text = fetch("after.crl");
    for (pem, listed) in [(&a, true), (&b, true), (&c, false), (&other, false)] {
        assert_eq!(
            text.contains(&format!("Serial Number: {}", serial(pem))),
            listed,
            "{}: {text}",
            pem.display()
        );
    }
}

/// `cert rename` (keytool -changealias): the fingerprint and the trust stay, the old alias is
/// free, the rename is audited; the HTTP API refuses a taken alias.
#[test]
fn rename_keeps_the_certificate_and_its_trust() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    let out = dir.path();
    let (pem, key) = self_signed(out, "ren-x");
    ok(&cli(&auth, &["trust", "ren-x", "--file", path(&pem)]));
    let (issued, issued_key) = super::issue(&auth, out, "ren-issued", &["--cn", "ren-issued"]);
    let before = super::entry(&auth, "ren-x");
    ok(&cli(&auth, &["rename", "ren-x", "edge-7"]));
    let after = super::entry(&auth, "edge-7");
    assert_eq!(after["fingerprint"], before["fingerprint"]);
    assert_eq!(after["kind"], "trusted");
    assert!(super::list(&auth).iter().all(|c| c["alias"] != "ren-x"));
    // Still trusted under its new name.
    board(
        &auth,
        &op,
        "ren-x",
        &json!({"token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_subject_dn": "CN=ren-x"}),
    );
    assert!(curl_token(&auth, &pem, &key, "ren-x").expect("handshake")["access_token"].is_string());
    // The old alias is free again; the new one is taken.
    ok(&cli(&auth, &["rename", "ren-issued", "ren-x"]));
    fails(&cli(&auth, &["rename", "ren-x", "edge-7"]), "exists");
    fails(&cli(&auth, &["rename", "nothing", "x"]), "no certificate");
    let r = auth.json(
        "POST",
        "/api/latchkey/v1/certificates/edge-7/rename",
        Some(&op),
        Some(&json!({"new_alias": "ren-x"})),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    // An issued certificate keeps working (its sealed key moved with it) and revocation by
    // the new alias bites.
    assert_eq!(
        super::entry(&auth, "ren-x")["fingerprint"],
        hex(&der_of(&issued))
    );
    board(
        &auth,
        &op,
        "ren-issued",
        &json!({"token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_subject_dn": "CN=ren-issued"}),
    );
    assert!(
        curl_token(&auth, &issued, &issued_key, "ren-issued").expect("handshake")["access_token"]
            .is_string()
    );
    ok(&cli(&auth, &["revoke", "edge-7"]));
    assert!(curl_token(&auth, &pem, &key, "ren-x").is_none());
    // Audited.
    let audit = Command::new(crate::util::latchkey_bin())
        .args(["audit", "--server"])
        .arg(auth.base_url())
        .arg("--credentials")
        .arg(auth.data_dir.join("admin-client.json"))
        .arg("--ca")
        .arg(auth.ca_path())
        .arg("--json")
        .output()
        .expect("audit");
    let text = ok(&audit);
    assert!(
        text.contains("cert.rename") && text.contains("ren-x -> edge-7"),
        "{text}"
    );
}

/// `/metrics` shows when the first certificate of each kind expires, as Unix seconds, and
/// follows imports, issues and revocations.
#[test]
fn certificate_expiry_appears_in_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let out = dir.path();
    let gauge = |kind: &str| -> Option<u64> {
        let text = auth.request("GET", "/metrics", &[], b"").text();
        let prefix = format!("latchkey_certificate_earliest_expiry_seconds{{kind=\"{kind}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map(|v| v.parse().expect("seconds"))
    };
    let not_after = |pem: &Path| {
        let end = openssl(&["x509", "-in", path(pem), "-noout", "-enddate"]);
        let end = end.trim().trim_start_matches("notAfter=");
        let o = Command::new("date")
            .args(["-u", "-d", end, "+%s"])
            .output()
            .expect("date");
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse::<u64>()
            .expect("seconds")
    };
    assert_eq!(gauge("ca"), Some(not_after(&auth.ca_path())));
    assert_eq!(
        gauge("server"),
        Some(not_after(&auth.data_dir.join("server.pem")))
    );
    assert_eq!(gauge("trusted"), None);
    assert_eq!(gauge("issued"), None);

    let (short, _) = super::issue(&auth, out, "exp-short", &["--days", "3"]);
    let (_long, _) = super::issue(&auth, out, "exp-long", &["--days", "30"]);
    assert_eq!(gauge("issued"), Some(not_after(&short)));
    let (pem, _) = self_signed(out, "exp-trusted");
    ok(&cli(&auth, &["trust", "exp-trusted", "--file", path(&pem)]));
    assert_eq!(gauge("trusted"), Some(not_after(&pem)));
    // A revoked certificate no longer counts.
    ok(&cli(&auth, &["revoke", "exp-short"]));
    assert!(gauge("issued").expect("issued") > not_after(&short));
}
