//! `dataSourceConfiguration`: the agent's own token and operators read and write it; eTags
//! guard writes, a size bound and the MindSphere shape are enforced, tenants are isolated.

use serde_json::json;

use super::{API, assert_error, board, node_claims, sign, token};
use crate::util::https::Authority;

#[test]
fn datasource_configuration_etags_bounds_and_tenants() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = std::process::Command::new(crate::util::latchkey_bin())
        .args(["hash-secret", "--client-secret", "acme-secret"])
        .output()
        .expect("hash-secret");
    let acme = String::from_utf8_lossy(&acme.stdout).trim().to_owned();
    let config = dir.path().join("latchkey.toml");
    std::fs::write(
        &config,
        format!(
            "[tokens]\nleeway = \"1s\"\n[agents]\ndatasource-config-max-bytes = 4096\n\
             [[tenants]]\nid = \"acme\"\n\
             [[clients]]\nidentifier = \"acme-admin\"\nhashed_secret = \"{acme}\"\n\
             profile = \"Administrator\"\ntenant = \"acme\"\n"
        ),
    )
    .expect("config");
    let auth = Authority::start(&dir.path().join("data"), Some(&config));
    let op = auth.operator_token();
    let reg = board(&auth, &op, "dsc-1", "SHARED_SECRET", &json!({}));
    let secret = reg["client_secret"].as_str().expect("secret").to_owned();
    let key = latchkey_core::SigningKey::hmac(latchkey_core::Algorithm::HS256, secret.as_bytes())
        .expect("hmac");
    let r = token(&auth, || sign(&key, None, &node_claims("dsc-1", "main")));
    assert_eq!(r.status, 200, "{}", r.text());
    let agent = r.json()["access_token"].as_str().expect("token").to_owned();
    let uri = format!("{API}/agents/dsc-1/dataSourceConfiguration");
    let config = json!({"configurationId": "cfg-1", "dataSources": [{"name": "PLC", "dataPoints": [
        {"id": "dp1", "name": "Voltage", "type": "DOUBLE", "unit": "V"}]}]});
    let put = |bearer: &str, etag: &str, body: &serde_json::Value| {
        auth.json_with("PUT", &uri, Some(bearer), Some(body), &[("If-Match", etag)])
    };

    assert_error(
        &auth.json("GET", &uri, Some(&agent), None),
        404,
        "not_found",
        "no dataSourceConfiguration",
    );
    let r = put(&agent, "0", &config);
    assert_eq!(r.status, 200, "{}", r.text());
    let stored = r.json();
    assert_eq!(stored["eTag"], "1");
    assert_eq!(stored["configurationId"], "cfg-1");
    assert_eq!(stored["dataSources"], config["dataSources"]);
    // Stale eTag: 412; missing If-Match: 400.
    assert_error(
        &put(&agent, "0", &config),
        412,
        "precondition_failed",
        "eTag",
    );
    assert_error(
        &auth.json("PUT", &uri, Some(&agent), Some(&config)),
        400,
        "invalid_request",
        "If-Match",
    );
    // The operator reads exactly what was stored and writes with the current eTag.
    let r = auth.json("GET", &uri, Some(&op), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), stored);
    assert_eq!(put(&op, "1", &config).json()["eTag"], "2");
    assert_eq!(
        auth.json("GET", &uri, Some(&agent), None).json()["eTag"],
        "2"
    );
    // Shape and size.
    assert_error(
        &put(
            &agent,
            "2",
            &json!({"configurationId": "x", "dataSources": [{"name": "s", "dataPoints": [{"id": "a", "name": "n", "type": "NOPE"}]}]}),
        ),
        400,
        "invalid_request",
        "type",
    );
    let big = json!({"configurationId": "c", "dataSources": [{"name": "x".repeat(5000), "dataPoints": []}]});
    assert_error(&put(&agent, "2", &big), 413, "invalid_request", "4096");
    // Another agent's token and another tenant's operator do not reach it.
    let other = board(&auth, &op, "dsc-2", "SHARED_SECRET", &json!({}));
    let key2 = latchkey_core::SigningKey::hmac(
        latchkey_core::Algorithm::HS256,
        other["client_secret"].as_str().expect("secret").as_bytes(),
    )
    .expect("hmac");
    let r = token(&auth, || sign(&key2, None, &node_claims("dsc-2", "main")));
    let agent2 = r.json()["access_token"].as_str().expect("token").to_owned();
    assert_eq!(auth.json("GET", &uri, Some(&agent2), None).status, 403);
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "acme-admin:acme-secret",
    );
    let r = auth.form(
        "/oauth/token",
        "grant_type=client_credentials",
        &[("Authorization", &format!("Basic {basic}"))],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let acme_op = r.json()["access_token"].as_str().expect("token").to_owned();
    assert_error(
        &auth.json("GET", &uri, Some(&acme_op), None),
        404,
        "not_found",
        "dsc-1",
    );
    assert_error(&put(&acme_op, "2", &config), 404, "not_found", "dsc-1");
    assert_eq!(auth.json("GET", &uri, None, None).status, 401);
    auth.stop();
}
