//! What the cluster tests do with agents, through the onboarding helpers: create on one node,
//! register, get tokens from any node, and wait for a change to reach another node.

use std::path::Path;
use std::time::Duration;

use latchkey_core::{Algorithm, SigningKey};
use serde_json::{Value, json};

use crate::onboarding::{API, configuration, create, node_claims, register, sign, token_form};
use crate::util::cluster::{Cluster, eventually, show};
use crate::util::https::Authority;
use crate::util::server::Response;

/// The longest a test waits for a change made on one node to show on another, or for a
/// node to notice a fault. Generous: the machine is shared and slow; the tests assert that
/// it happens, never how fast.
pub const CONVERGE: Duration = Duration::from_secs(30);

/// An HS256 key from a shared secret (`client_secret_jwt`).
pub fn hs(secret: &str) -> SigningKey {
    SigningKey::hmac(Algorithm::HS256, secret.as_bytes()).expect("hmac key")
}

/// A fresh client assertion of the SHARED_SECRET agent `id`.
pub fn assertion(id: &str, secret: &str) -> String {
    sign(&hs(secret), None, &node_claims(id, "main"))
}

/// One series of a node's metrics page (exact name with labels), if it is there.
pub fn metric(node: &Authority, series: &str) -> Option<f64> {
    let page = node.json("GET", "/metrics", None, None).text();
    page.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// One token request with `assertion`, no retry.
pub fn token_with(auth: &Authority, assertion: &str) -> Response {
    auth.form(&format!("{API}/oauth/token"), &token_form(assertion), &[])
}

/// One token request of agent `id` with a fresh assertion, no retry.
pub fn token_once(auth: &Authority, id: &str, secret: &str) -> Response {
    token_with(auth, &assertion(id, secret))
}

/// Creates the SHARED_SECRET agent `id` on `on`; its initial access token.
pub fn create_with_iat(auth: &Authority, op: &str, id: &str) -> String {
    let r = create(auth, op, id, &format!("agent {id}"), "SHARED_SECRET");
    assert_eq!(r.status, 201, "create {id}: {}", show(&r));
    configuration(auth, op, id)["content"]["iat"]
        .as_str()
        .expect("iat")
        .to_owned()
}

/// Creates and registers the SHARED_SECRET agent `id` on one node; its client secret.
pub fn board_secret(auth: &Authority, op: &str, id: &str) -> String {
    let iat = create_with_iat(auth, op, id);
    let r = register(auth, &iat, &json!({}));
    assert_eq!(r.status, 201, "register {id}: {}", show(&r));
    r.json()["client_secret"]
        .as_str()
        .expect("client_secret")
        .to_owned()
}

/// `GET /agents/{id}` on a node.
pub fn agent(auth: &Authority, op: &str, id: &str) -> Response {
    auth.json("GET", &format!("{API}/agents/{id}"), Some(op), None)
}

/// Whether `r` is a node's clean "not now" (503 with Retry-After and an OAuth-style body): a
/// node that cannot prove it is current within F says so, which a waiting loop waits out.
pub fn not_now(r: &Response) -> bool {
    r.status == 503
        && r.header("retry-after").is_some()
        && serde_json::from_slice::<Value>(&r.body).is_ok_and(|b| b["error"].is_string())
}

/// Waits until node `i` shows agent `id` (a read on another node than the writer's may lag
/// behind the write it did not make); its JSON.
pub fn wait_agent(c: &Cluster, i: usize, op: &str, id: &str) -> Value {
    eventually(
        &format!("agent {id} visible on node {}", i + 1),
        CONVERGE,
        || {
            let r = agent(c.node(i), op, id);
            match r.status {
                200 => Some(r.json()),
                404 => None,
                _ if not_now(&r) => None,
                _ => panic!("GET agent {id} on node {}: {}", i + 1, show(&r)),
            }
        },
    )
}

/// Waits until node `i` gives agent `id` a token: 401 (not registered there yet) is waited
/// out, anything else but 200 fails.
pub fn wait_token(c: &Cluster, i: usize, id: &str, secret: &str) -> Response {
    eventually(
        &format!("a token for {id} from node {}", i + 1),
        CONVERGE,
        || {
            let r = token_once(c.node(i), id, secret);
            match r.status {
                200 => Some(r),
                401 => None,
                _ if not_now(&r) => None,
                _ => panic!("token for {id} on node {}: {}", i + 1, show(&r)),
            }
        },
    )
}

/// The first answer of node `i` to a token request of agent `id` that is not a clean 503
/// (a node that just started may not know the cluster's live nodes yet): what it decided.
/// Never a retry past a decision, so a stale 200 or 401 is what the caller sees.
pub fn decided_token(c: &Cluster, i: usize, id: &str, secret: &str) -> Response {
    eventually(
        &format!("node {} deciding on a token for {id}", i + 1),
        CONVERGE,
        || {
            let r = token_once(c.node(i), id, secret);
            (!not_now(&r)).then_some(r)
        },
    )
}

/// Waits until node `i` refuses agent `id` a token (401 `invalid_client`); a 200 meanwhile
/// is the change not there yet, anything else fails.
pub fn wait_refused(c: &Cluster, i: usize, id: &str, secret: &str) -> Response {
    eventually(&format!("node {} refusing {id}", i + 1), CONVERGE, || {
        let r = token_once(c.node(i), id, secret);
        match r.status {
            401 => Some(r),
            200 => None,
            _ if not_now(&r) => None,
            _ => panic!("token for {id} on node {}: {}", i + 1, show(&r)),
        }
    })
}

/// `active` of `token` as node `i` introspects it.
pub fn active(c: &Cluster, i: usize, op: &str, token: &str) -> bool {
    let r = c.node(i).form(
        "/oauth/introspect",
        &format!("token={}", crate::util::https::form_encode(token)),
        &[("Authorization", &format!("Bearer {op}"))],
    );
    assert_eq!(r.status, 200, "introspect on node {}: {}", i + 1, show(&r));
    r.json()["active"].as_bool().expect("active")
}

/// The access token of a 200 token answer.
pub fn access_token(r: &Response) -> String {
    r.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// Asserts a clean refusal: a 4xx with an OAuth-style body.
pub fn assert_clean_4xx(r: &Response, what: &str) {
    assert!(
        (400..500).contains(&r.status),
        "{what}: expected a 4xx, got {}",
        show(r)
    );
    let body = r.json();
    assert!(body["error"].is_string(), "{what}: {body}");
    assert!(body["error_description"].is_string(), "{what}: {body}");
}

/// The node id in a node's data directory (created on its first cluster start).
pub fn node_id(data: &Path) -> String {
    std::fs::read_to_string(data.join("node-id"))
        .expect("node-id")
        .trim()
        .to_owned()
}

/// The owner of `client` among `nodes`: the rendezvous hash every node computes.
pub fn owner<'a>(nodes: &[&'a str], client: &str) -> &'a str {
    let weight = |node: &str| {
        let mut h = blake3::Hasher::new_derive_key("latchkey 2026 cluster replay owner v1");
        h.update(&(node.len() as u64).to_le_bytes());
        h.update(node.as_bytes());
        h.update(client.as_bytes());
        let mut w = [0u8; 8];
        w.copy_from_slice(&h.finalize().as_bytes()[..8]);
        u64::from_le_bytes(w)
    };
    nodes
        .iter()
        .copied()
        .max_by(|a, b| weight(a).cmp(&weight(b)).then_with(|| b.cmp(a)))
        .expect("a node")
}

/// An agent id starting with `prefix` that the node of `owner_dir` owns among the nodes of
/// `dirs`.
pub fn id_owned_by(dirs: &[&Path], owner_dir: &Path, prefix: &str) -> String {
    let ids: Vec<String> = dirs.iter().map(|d| node_id(d)).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let want = node_id(owner_dir);
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|c| owner(&refs, c) == want)
        .expect("an id")
}
