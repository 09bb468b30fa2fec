//! A Usercube-style signing certificate (.pfx made with openssl) imported as a token signing
//! key: the JWKS carries its chain, tokens verify with the certificate's public key, `keys
//! export` gives the certificate back, and scheduled rotation leaves the key in place.

use super::*;

fn openssl(args: &[&str]) -> Output {
    crate::util::openssl_in(None, args)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The DER of the first certificate in a PEM file.
fn der_of(pem: &Path, out: &Path) -> Vec<u8> {
    openssl(&[
        "x509",
        "-in",
        path(pem),
        "-outform",
        "DER",
        "-out",
        path(out),
    ]);
    std::fs::read(out).expect("read der")
}

fn key_view<'a>(list: &'a Value, kid: &str) -> &'a Value {
    list["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("{kid} not in {list}"))
}

fn active_kid(list: &Value, alg: &str) -> String {
    list["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["alg"] == alg && k["state"] == "active")
        .and_then(|k| k["kid"].as_str())
        .unwrap_or_else(|| panic!("no active {alg} key in {list}"))
        .to_owned()
}

#[test]
fn imported_pfx_publishes_its_certificate_and_stays_pinned() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    // Scheduled rotation every 2 s, at once: generated keys turn over many times during the
    // test, the imported one must not.
    let cfg = config(
        d,
        "[keys]\nrotation-interval = \"2s\"\npre-publication = \"0s\"\nmaintenance-interval = \"200ms\"\n",
    );
    let auth = Authority::start(&d.join("data"), Some(&cfg));

    // As a Usercube server's signing certificate is made.
    let (key_pem, cert_pem, pfx) = (d.join("k.pem"), d.join("c.pem"), d.join("signing.pfx"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        path(&key_pem),
        "-out",
        path(&cert_pem),
        "-subj",
        "/CN=usercube-signing",
        "-days",
        "30",
    ]);
    openssl(&[
        "pkcs12",
        "-export",
        "-inkey",
        path(&key_pem),
        "-in",
        path(&cert_pem),
        "-out",
        path(&pfx),
        "-passout",
        "pass:pfx-pass",
    ]);
    let cert_der = der_of(&cert_pem, &d.join("c.der"));
    let sha1 = String::from_utf8(
        openssl(&[
            "x509",
            "-in",
            path(&cert_pem),
            "-noout",
            "-fingerprint",
            "-sha1",
        ])
        .stdout,
    )
    .expect("utf-8");
    let thumbprint = sha1
        .trim()
        .rsplit('=')
        .next()
        .expect("fingerprint")
        .replace(':', "")
        .to_uppercase();

    let v = cli_json(
        &auth,
        &[
            "keys",
            "import",
            "--file",
            path(&pfx),
            "--password",
            "pfx-pass",
            "--kid-from-thumbprint",
        ],
    );
    assert_eq!(
        (v["kid"].as_str(), v["alg"].as_str(), v["pinned"].as_bool()),
        (Some(thumbprint.as_str()), Some("RS256"), Some(true)),
        "{v}"
    );

    // The JWKS: x5c is the certificate, x5t#S256 its SHA-256.
    let jwks = auth
        .json("GET", "/.well-known/jwks.json", None, None)
        .json();
    let jwk = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == thumbprint.as_str())
        .unwrap_or_else(|| panic!("{jwks}"))
        .clone();
    let std_b64 = base64::engine::general_purpose::STANDARD;
    let x5c: Vec<Vec<u8>> = jwk["x5c"]
        .as_array()
        .expect("x5c")
        .iter()
        .map(|c| std_b64.decode(c.as_str().expect("str")).expect("base64"))
        .collect();
    assert_eq!(x5c, vec![cert_der.clone()]);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &cert_der);
    assert_eq!(
        jwk["x5t#S256"],
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    );

    // A token the authority mints with it verifies with the certificate's public key
    // (openssl, from the x5c certificate).
    let token = auth.operator_token();
    assert_eq!(header(&token)["kid"], thumbprint.as_str());
    std::fs::write(d.join("x5c.der"), &x5c[0]).expect("write");
    let pubkey = openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        path(&d.join("x5c.der")),
        "-noout",
        "-pubkey",
    ])
    .stdout;
    std::fs::write(d.join("pub.pem"), pubkey).expect("write");
    let (signed, sig) = token.rsplit_once('.').expect("jws");
    std::fs::write(d.join("signed"), signed).expect("write");
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .expect("sig");
    std::fs::write(d.join("sig"), &sig).expect("write");
    let verify = |data: &Path| {
        Command::new("openssl")
            .args([
                "dgst",
                "-sha256",
                "-verify",
                path(&d.join("pub.pem")),
                "-signature",
            ])
            .arg(d.join("sig"))
            .arg(data)
            .output()
            .expect("openssl")
            .status
            .success()
    };
    assert!(
        verify(&d.join("signed")),
        "the token verifies with the certificate"
    );
    std::fs::write(d.join("tampered"), format!("{signed}x")).expect("write");
    assert!(!verify(&d.join("tampered")), "and only the token");

    // `keys export` gives back the certificate of the .pfx.
    let exported = d.join("exported.pem");
    let mut args: Vec<String> = ["keys", "export", &thumbprint, "--out", path(&exported)]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(remote(&auth));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cli(&refs);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(der_of(&exported, &d.join("exported.der")), cert_der);
    // A generated key has no certificate: its public key comes out.
    let list = cli_json(&auth, &["keys", "list"]);
    let es = active_kid(&list, "ES256");
    let mut args: Vec<String> = ["keys", "export", &es]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(remote(&auth));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cli(&refs);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("-----BEGIN PUBLIC KEY-----"));

    // Scheduled rotation turns the generated ES256 key over; the imported key stays.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = cli_json(&auth, &["keys", "list"]);
        if active_kid(&now, "ES256") != es {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "scheduled rotation never ran: {now}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // One more full interval after that, for good measure of "never".
    let es2 = active_kid(&cli_json(&auth, &["keys", "list"]), "ES256");
    loop {
        let now = cli_json(&auth, &["keys", "list"]);
        if active_kid(&now, "ES256") != es2 {
            assert_eq!(active_kid(&now, "RS256"), thumbprint, "{now}");
            assert_eq!(key_view(&now, &thumbprint)["state"], "active");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "scheduled rotation stopped: {now}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(header(&auth.operator_token())["kid"], thumbprint.as_str());

    // An explicit rotation does replace it.
    let fresh = cli_json(&auth, &["keys", "rotate", "--alg", "RS256", "--now"]);
    assert_ne!(fresh["kid"], thumbprint.as_str());
    let list = cli_json(&auth, &["keys", "list"]);
    assert_eq!(key_view(&list, &thumbprint)["state"], "retiring");
}
