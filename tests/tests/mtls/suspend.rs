//! A suspended agent that authenticates with its TLS client certificate gets no token either,
//! even on a connection that got one before; its bound token goes inactive; a resume restores.

use serde_json::{Value, json};

use super::{
    assert_bound, assert_refused, board, client, connect, form_encode, identity, issue, leaf_der,
    mtls_token, start,
};

#[test]
fn suspended_certificate_agent_is_refused_on_a_live_connection_until_resumed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = start(dir.path());
    let op = auth.operator_token();
    let (pem, key) = issue(&auth, dir.path(), "sus-cert", &["--cn", "sus-cert"]);
    board(
        &auth,
        &op,
        "sus-m",
        &json!({"token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_subject_dn": "CN=sus-cert"}),
    );
    let mut live = connect(&auth, client(&auth, Some(identity(&pem, &key)))).expect("handshake");
    let r = mtls_token(&mut live, "sus-m").expect("token");
    assert_bound(&auth, &op, &r, &leaf_der(&pem));
    let earlier = r.json()["access_token"].as_str().expect("token").to_owned();
    let active = |token: &str| -> Value {
        let i = auth.form(
            "/oauth/introspect",
            &format!("token={}", form_encode(token)),
            &[("Authorization", &format!("Bearer {op}"))],
        );
        assert_eq!(i.status, 200, "{}", i.text());
        i.json()["active"].clone()
    };

    let path = "/api/latchkey/v1/agents/sus-m";
    let r = auth.json("POST", &format!("{path}/suspend"), Some(&op), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_refused(
        &mtls_token(&mut live, "sus-m").expect("answer"),
        "suspended",
    );
    assert_eq!(active(&earlier), false);

    let r = auth.json("POST", &format!("{path}/resume"), Some(&op), None);
    assert_eq!(r.status, 200, "{}", r.text());
    // A token minted in the second of the suspension would be refused, so the endpoint asks
    // for a retry in that second; wait for an answer that is not 503.
    let mut r = mtls_token(&mut live, "sus-m").expect("answer");
    for _ in 0..10 {
        if r.status != 503 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        r = mtls_token(&mut live, "sus-m").expect("answer");
    }
    assert_bound(&auth, &op, &r, &leaf_der(&pem));
    assert_eq!(active(&earlier), false, "earlier tokens stay revoked");
}
