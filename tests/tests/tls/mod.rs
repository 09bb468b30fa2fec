//! HTTPS: versions, ALPN, resumption, the first-run data directory, and hostile TLS clients.

use std::io::Write;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use std::time::{Duration, Instant};

use crate::util::server::{Server, read_response, read_some, read_until_closed, tls_client};

#[test]
fn first_run_creates_certificates_and_serves_https() {
    let s = Server::tls(&[]);
    let dir = s.data_dir();
    for key in [
        "ca.key.sealed",
        "server.key.sealed",
        "master.key",
        "latchkey.redb",
    ] {
        let mode = std::fs::metadata(dir.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    for plain in ["ca.key", "server.key"] {
        assert!(!dir.join(plain).exists(), "{plain} in clear");
    }
    assert!(
        s.wait_stderr(&dir.join("ca.pem").display().to_string()),
        "CA path not printed"
    );
    assert!(
        s.ready_line
            .starts_with("latchkey listening on https://127.0.0.1:")
    );
    let r = s.get("/healthz");
    assert_eq!(r.status, 200);
}

#[test]
fn tls_1_2_and_1_3_are_both_negotiated_with_alpn() {
    let s = Server::tls(&[]);
    for (version, expect) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let mut c = s.tls_connect(tls_client(&s.ca_path(), Some(version), None));
        assert_eq!(c.conn.protocol_version(), Some(expect));
        assert_eq!(c.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(
            read_response(&mut c, &mut Vec::new(), false)
                .unwrap()
                .status,
            200
        );
    }
    // A client offering no ALPN still gets HTTP/1.1.
    let mut c = s.tls_connect(tls_client(&s.ca_path(), None, Some(vec![])));
    assert_eq!(c.conn.alpn_protocol(), None);
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut c, &mut Vec::new(), false)
            .unwrap()
            .status,
        200
    );
}

#[test]
fn sessions_resume() {
    let s = Server::tls(&[]);
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        // One client config = one session cache, as a real client keeps it.
        let config = tls_client(&s.ca_path(), Some(version), None);
        for round in 0..2 {
            let mut c = s.tls_connect(config.clone());
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            assert_eq!(
                read_response(&mut c, &mut Vec::new(), false)
                    .unwrap()
                    .status,
                200
            );
            let kind = c.conn.handshake_kind();
            if round == 1 {
                assert_eq!(kind, Some(rustls::HandshakeKind::Resumed), "{version:?}");
            }
        }
    }
    s.wait_metric("latchkey_tls_handshakes_total{kind=\"resumed\"}", 2.0);
}

#[test]
fn pipelining_and_keep_alive_over_tls() {
    let s = Server::tls(&[]);
    let mut c = s.connect();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\nHEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut c, &mut buf, false).unwrap().status, 200);
    assert_eq!(read_response(&mut c, &mut buf, false).unwrap().status, 404);
    let head = read_response(&mut c, &mut buf, true).unwrap();
    assert_eq!((head.status, head.body.len()), (200, 0));
}

#[test]
fn tls_garbage_is_dropped_and_others_are_served() {
    let s = Server::tls(&[]);
    for garbage in [
        &b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3][..],
        &[0u8; 64][..],
    ] {
        let mut c = s.tcp();
        let _ = c.write_all(garbage);
        // At most a TLS alert comes back, never an HTTP answer; then the connection closes.
        let got = read_until_closed(&mut c);
        assert!(
            !got.starts_with(b"HTTP"),
            "answered plaintext on the TLS port"
        );
        s.assert_serving();
    }
    s.wait_metric("latchkey_tls_handshake_failures_total", 3.0);
}

#[test]
fn handshakes_that_stop_halfway_time_out_while_others_are_served() {
    let s = Server::tls(&["--handshake-timeout", "500ms"]);
    // A real ClientHello, then silence: the server's flight is never answered.
    let config = tls_client(&s.ca_path(), None, None);
    let mut client =
        rustls::ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
    let mut raw = s.tcp();
    client.write_tls(&mut raw).unwrap();
    // Meanwhile, other clients are served.
    s.assert_serving();
    let started = Instant::now();
    read_until_closed(&mut raw);
    assert!(started.elapsed() < Duration::from_secs(5));
    s.wait_metric(
        "latchkey_connections_closed_total{reason=\"handshake_timeout\"}",
        1.0,
    );
    // A connection that sends nothing at all is closed too.
    let mut silent = s.tcp();
    read_until_closed(&mut silent);
    s.assert_serving();
}

#[test]
fn concurrent_handshakes_are_capped() {
    let s = Server::tls(&["--max-tls-handshakes", "1", "--handshake-timeout", "3s"]);
    // Holds the only handshake slot: a ClientHello, the server's answer read, then silence.
    let config = tls_client(&s.ca_path(), None, None);
    let mut client =
        rustls::ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
    let mut holder = s.tcp();
    client.write_tls(&mut holder).unwrap();
    let mut server_flight = [0u8; 1];
    assert_eq!(read_some(&mut holder, &mut server_flight).unwrap(), 1);

    // A whole ClientHello finds no slot and is closed. (Part of one takes no slot: silent
    // sockets are not handshakes.)
    let config = tls_client(&s.ca_path(), None, None);
    let mut second =
        rustls::ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
    let mut refused = s.tcp();
    second.write_tls(&mut refused).unwrap();
    assert!(read_until_closed(&mut refused).is_empty());
    drop(holder);
    // Once the slot frees up, clients are served again.
    s.served_soon();
    s.wait_metric(
        "latchkey_connections_closed_total{reason=\"handshake_limit\"}",
        1.0,
    );
}

/// A CA the test owns, handed to the server with `--client-ca` (the server's own CA key is
/// sealed in its data directory).
struct ClientCa {
    dir: tempfile::TempDir,
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl ClientCa {
    fn new() -> ClientCa {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test client CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("client-ca.pem"), cert.pem()).unwrap();
        ClientCa { dir, cert, key }
    }

    /// `latchkey serve` flags: client authentication `mode`, trusting this CA.
    fn server(&self, mode: &str) -> Server {
        let path = self.dir.path().join("client-ca.pem");
        Server::tls(&["--client-auth", mode, "--client-ca", path.to_str().unwrap()])
    }

    /// A client certificate for `agent`.
    fn identity(
        &self,
    ) -> (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let issuer = rcgen::Issuer::from_ca_cert_der(self.cert.der(), &self.key).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["agent".to_owned()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (vec![cert.der().clone()], key)
    }
}

fn mtls_client(s: &Server, identity: Option<&ClientCa>) -> Arc<rustls::ClientConfig> {
    let base = tls_client(&s.ca_path(), None, None);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_file(s.ca_path()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(ca) => {
            let (chain, key) = ca.identity();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = base.alpn_protocols.clone();
    Arc::new(config)
}

/// Handshake and one request; `Err` if the server refuses.
fn try_request(s: &Server, config: Arc<rustls::ClientConfig>) -> std::io::Result<u16> {
    let conn = rustls::ClientConnection::new(config, "localhost".try_into().unwrap())
        .map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(conn, s.tcp());
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")?;
    Ok(read_response(&mut stream, &mut Vec::new(), false)?.status)
}

#[test]
fn mutual_tls_required_refuses_clients_without_a_trusted_certificate() {
    let ca = ClientCa::new();
    let s = ca.server("required");
    assert_eq!(try_request(&s, mtls_client(&s, Some(&ca))).unwrap(), 200);
    assert!(try_request(&s, mtls_client(&s, None)).is_err());
    // A certificate from a CA the server does not trust is refused too.
    assert!(try_request(&s, mtls_client(&s, Some(&ClientCa::new()))).is_err());
    // The refusal cost nothing but that connection.
    assert_eq!(try_request(&s, mtls_client(&s, Some(&ca))).unwrap(), 200);
}

#[test]
fn mutual_tls_optional_accepts_both() {
    let ca = ClientCa::new();
    let s = ca.server("optional");
    assert_eq!(try_request(&s, mtls_client(&s, Some(&ca))).unwrap(), 200);
    assert_eq!(try_request(&s, mtls_client(&s, None)).unwrap(), 200);
}

mod reload;
