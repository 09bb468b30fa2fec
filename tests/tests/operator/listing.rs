//! `GET /api/agentmanagement/v3/agents` at fleet scale: paging with a cursor sees every agent
//! exactly once while others are being created, and the boarding-status, online-status and
//! name filters and the sorts answer what the agents are.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use latchkey_core::{Algorithm, SigningKey};
use serde_json::{Value, json};

use super::{AGENTS, Authority, assert_error};
use crate::util::https::form_encode;
use crate::util::server::Response;

const API: &str = "/api/agentmanagement/v3";

fn create(auth: &Authority, token: &str, id: &str, name: &str) {
    let body = json!({"entityId": id, "name": name, "securityProfile": "SHARED_SECRET"});
    let r = auth.json("POST", AGENTS, Some(token), Some(&body));
    assert_eq!(r.status, 201, "create {id}: {}", r.text());
}

fn list(auth: &Authority, token: &str, query: &str) -> Response {
    auth.json("GET", &format!("{AGENTS}?{query}"), Some(token), None)
}

fn ids(page: &Value) -> Vec<String> {
    page["content"]
        .as_array()
        .expect("content")
        .iter()
        .map(|a| a["id"].as_str().expect("id").to_owned())
        .collect()
}

/// Every page of `query` through the `Latchkey-Next-Cursor` header.
fn all_pages(auth: &Authority, token: &str, query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let q = match &cursor {
            Some(c) => format!("{query}&after={}", form_encode(c)),
            None => query.to_owned(),
        };
        let r = list(auth, token, &q);
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        out.extend(ids(&page));
        match r.header("latchkey-next-cursor") {
            Some(c) => {
                assert_eq!(page["last"], false, "{page}");
                cursor = Some(c.to_owned());
            }
            None => {
                assert_eq!(page["last"], true, "{page}");
                return out;
            }
        }
    }
    panic!("paging did not end");
}

/// Creates, boards and returns the client secret of agent `id`.
fn board(auth: &Authority, token: &str, id: &str, name: &str) -> String {
    create(auth, token, id, name);
    let r = auth.json(
        "GET",
        &format!("{AGENTS}/{id}/boarding/configuration"),
        Some(token),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let iat = r.json()["content"]["iat"].as_str().expect("iat").to_owned();
    let r = auth.json(
        "POST",
        &format!("{API}/register"),
        Some(&iat),
        Some(&json!({})),
    );
    assert_eq!(r.status, 201, "register {id}: {}", r.text());
    r.json()["client_secret"]
        .as_str()
        .expect("client_secret")
        .to_owned()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// An access token for a shared-secret agent (retrying the 503 a fresh start may answer).
fn agent_token(auth: &Authority, id: &str, secret: &str) {
    let key = SigningKey::hmac(Algorithm::HS256, secret.as_bytes()).expect("hmac");
    for n in 0..10 {
        let t = now();
        let claims = json!({
            "iss": id, "sub": id, "aud": ["southgate"], "iat": t, "nbf": t, "exp": t + 3600,
            "jti": format!("listing-{id}-{n}-{t}"), "schemas": ["urn:siemens:mindsphere:v1"],
            "ten": "main"
        });
        let header = json!({"alg": "HS256", "typ": "JWT"});
        let mut jwt = format!(
            "{}.{}",
            latchkey_core::b64::encode(header.to_string().as_bytes()),
            latchkey_core::b64::encode(claims.to_string().as_bytes())
        );
        let mut sig = String::new();
        key.sign_into(jwt.as_bytes(), &mut sig).expect("sign");
        jwt.push('.');
        jwt.push_str(&sig);
        let body = format!(
            "grant_type=client_credentials&client_assertion_type={}&client_assertion={jwt}",
            form_encode("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        );
        let r = auth.form(&format!("{API}/oauth/token"), &body, &[]);
        if r.status == 503 {
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        assert_eq!(r.status, 200, "token for {id}: {}", r.text());
        return;
    }
    panic!("token endpoint kept answering 503");
}

/// Paging with the cursor while another thread creates agents: every agent that existed
/// before paging began is listed exactly once, no agent twice, in the list's order; agents
/// created meanwhile appear at most once. Offset paging (`page=N`) gives no such promise.
#[test]
fn cursor_paging_lists_every_agent_exactly_once_under_concurrent_creates() {
    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start(&dir.path().join("data"), None);
    let token = auth.operator_token();
    let before: Vec<String> = (0..80).map(|i| format!("pg-{i:03}")).collect();
    for (i, id) in before.iter().enumerate() {
        create(&auth, &token, id, &format!("name {:03}", (i * 37) % 80));
    }
    for (query, descending) in [("size=7", false), ("size=6&sort=name,desc", true)] {
        let stop = AtomicBool::new(false);
        let created = std::thread::scope(|s| {
            let creator = s.spawn(|| {
                let mut made = Vec::new();
                // Ids and names that sort both before and after the pages already read.
                for i in 0..400 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!(
                        "{}-{query_tag}-{i:03}",
                        if i % 2 == 0 { "aa" } else { "zz" },
                        query_tag = if descending { "d" } else { "a" }
                    );
                    create(&auth, &token, &id, &format!("new {id}"));
                    made.push(id);
                }
                made
            });
            let seen = all_pages(&auth, &token, query);
            stop.store(true, Ordering::Relaxed);
            let made = creator.join().expect("creator");
            (seen, made)
        });
        let (seen, made) = created;
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "{query}: an agent listed twice");
        for id in &before {
            assert!(unique.contains(id), "{query}: {id} never listed");
        }
        let known: HashSet<&String> = before.iter().chain(&made).collect();
        // Agents created by the other query's round exist too.
        assert!(
            seen.iter()
                .all(|id| known.contains(id) || id.starts_with("aa-") || id.starts_with("zz-")),
            "{query}: unknown agent listed"
        );
        if !descending {
            let mut sorted = seen.clone();
            sorted.sort();
            assert_eq!(seen, sorted, "{query}: out of order");
        }
    }
}

/// Boarding-status and online-status filters, name filters and sorts, with exact totals; bad
/// filter values and foreign cursors are refused.
#[test]
fn filters_by_boarding_and_online_status_and_name_and_sorts() {
    let dir = tempfile::tempdir().expect("dir");
    let auth = Authority::start(&dir.path().join("data"), None);
    let token = auth.operator_token();
    let online = board(&auth, &token, "f-1", "delta");
    board(&auth, &token, "f-2", "charlie");
    board(&auth, &token, "f-3", "bravo");
    let r = auth.json(
        "POST",
        &format!("{AGENTS}/f-3/boarding/offboard"),
        Some(&token),
        Some(&json!({})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    create(&auth, &token, "f-4", "alpha");
    agent_token(&auth, "f-1", &online);

    let filtered = |filter: &str, extra: &str| {
        let r = list(
            &auth,
            &token,
            &format!("filter={}{extra}", form_encode(filter)),
        );
        assert_eq!(r.status, 200, "{filter}: {}", r.text());
        let page = r.json();
        let got = ids(&page);
        assert_eq!(page["totalElements"], got.len() as u64, "{filter}: {page}");
        got
    };
    assert_eq!(
        filtered(r#"{"boardingStatus":"ONBOARDED"}"#, ""),
        ["f-1", "f-2"]
    );
    assert_eq!(
        filtered(r#"{"boardingStatus":{"eq":"ONBOARDING"}}"#, ""),
        ["f-4"]
    );
    assert_eq!(
        filtered(r#"{"boardingStatus":"NOT_ONBOARDED"}"#, ""),
        ["f-3"]
    );
    assert_eq!(filtered(r#"{"onlineStatus":"ONLINE"}"#, ""), ["f-1"]);
    assert_eq!(
        filtered(r#"{"onlineStatus":"OFFLINE"}"#, ""),
        ["f-2", "f-3", "f-4"]
    );
    assert_eq!(
        filtered(
            r#"{"onlineStatus":"OFFLINE","boardingStatus":"ONBOARDED"}"#,
            ""
        ),
        ["f-2"]
    );
    assert!(
        filtered(
            r#"{"onlineStatus":"ONLINE","boardingStatus":"ONBOARDING"}"#,
            ""
        )
        .is_empty()
    );
    assert_eq!(filtered(r#"{"name":"charlie"}"#, ""), ["f-2"]);
    assert_eq!(
        filtered(r#"{"name":{"startsWith":"b"}}"#, "&sort=name"),
        ["f-3"]
    );
    assert_eq!(
        filtered(r#"{"name":{"contains":"a"}}"#, "&sort=name,desc"),
        ["f-1", "f-2", "f-3", "f-4"]
    );
    assert_eq!(filtered(r#"{"name":{"endsWith":"o"}}"#, ""), ["f-3"]);
    assert_eq!(
        filtered(r#"{"id":{"startsWith":"f-"}}"#, "&sort=id,desc"),
        ["f-4", "f-3", "f-2", "f-1"]
    );

    let r = list(&auth, &token, "sort=name&size=3");
    let page = r.json();
    assert_eq!(ids(&page), ["f-4", "f-3", "f-2"]);
    assert_eq!(
        (page["totalElements"].as_u64(), page["totalPages"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(page["sort"][0]["property"], "name");
    let cursor = r.header("latchkey-next-cursor").expect("cursor").to_owned();
    let r = list(&auth, &token, &format!("sort=name&size=3&after={cursor}"));
    assert_eq!(ids(&r.json()), ["f-1"]);
    assert!(r.header("latchkey-next-cursor").is_none());
    // A cursor names a position in one order only.
    assert_error(
        &list(&auth, &token, &format!("sort=eTag&after={cursor}")),
        400,
        "invalid_request",
    );
    assert_error(&list(&auth, &token, "after=%%%"), 400, "invalid_request");
    assert_eq!(ids(&list(&auth, &token, "page=1&size=3").json()), ["f-4"]);
    for bad in [
        r#"{"boardingStatus":"SLEEPING"}"#,
        r#"{"onlineStatus":{"contains":"ON"}}"#,
        r#"{"onlineStatus":1}"#,
    ] {
        assert_error(
            &list(&auth, &token, &format!("filter={}", form_encode(bad))),
            400,
            "invalid_request",
        );
    }
    // The index follows deletes and renames.
    let etag = auth
        .json("GET", &format!("{AGENTS}/f-4"), Some(&token), None)
        .json()["eTag"]
        .as_str()
        .expect("eTag")
        .to_owned();
    let r = auth.json_with(
        "PUT",
        &format!("{AGENTS}/f-4"),
        Some(&token),
        Some(&json!({"name": "echo", "securityProfile": "SHARED_SECRET"})),
        &[("If-Match", &etag)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(filtered(r#"{"name":"echo"}"#, ""), ["f-4"]);
    assert!(filtered(r#"{"name":"alpha"}"#, "").is_empty());
    let etag = r.json()["eTag"].as_str().expect("eTag").to_owned();
    let r = auth.json_with(
        "DELETE",
        &format!("{AGENTS}/f-4"),
        Some(&token),
        None,
        &[("If-Match", &etag)],
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        ids(&list(&auth, &token, "sort=name").json()),
        ["f-3", "f-2", "f-1"]
    );
}

/// The index is rebuilt from the store at start.
#[test]
fn listing_survives_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let auth = Authority::start(&data, None);
    let token = auth.operator_token();
    for i in 0..12 {
        create(&auth, &token, &format!("rs-{i:02}"), &format!("n{i:02}"));
    }
    auth.stop();
    let auth = Authority::start(&data, None);
    let token = auth.operator_token();
    let seen = all_pages(&auth, &token, "size=5&sort=name,desc");
    let want: Vec<String> = (0..12).rev().map(|i| format!("rs-{i:02}")).collect();
    assert_eq!(seen, want);
    // Ties (one profile, one eTag) fall back to the id, through the cursor too.
    let mut asc = want.clone();
    asc.reverse();
    assert_eq!(all_pages(&auth, &token, "size=5&sort=securityProfile"), asc);
    assert_eq!(all_pages(&auth, &token, "size=4&sort=eTag,desc"), want);
}
