//! Client-assertion replay across the nodes of a cluster: one assertion sent to two nodes gets
//! at most one token; an owner that cannot be reached is 503, never an unchecked token; a
//! client whose owner is gone moves with a floor.
//!
//! Two nodes on one 3-member etcd, the second with a copy of the first's master key (it takes
//! the cluster's CA from etcd, so each verifies the other's certificate against it), both with
//! default settings.

use std::path::Path;
use std::time::Duration;

use super::support::{board_secret, hs, id_owned_by, metric, token_with as token};
use crate::onboarding::{node_claims, sign};
use crate::util::cluster::eventually;
use crate::util::etcd::{EtcdCluster, etcd_or_skip};
use crate::util::https::Authority;

/// A client assertion of the SHARED_SECRET agent `id` with the given `jti`.
fn assertion(id: &str, secret: &str, jti: &str) -> String {
    let mut claims = node_claims(id, "main");
    claims["jti"] = jti.into();
    sign(&hs(secret), None, &claims)
}

/// A series of a node's metrics page, which must be there.
fn gauge(node: &Authority, series: &str) -> f64 {
    metric(node, series).unwrap_or_else(|| panic!("{series} not in /metrics"))
}

/// Waits until `ok` holds, up to `within`.
fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    eventually(what, within, || ok().then_some(()));
}

/// What a second node of the cluster needs from the first: the master key.
fn copy_identity(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    std::fs::copy(from.join("master.key"), to.join("master.key")).expect("copy master.key");
}

/// Two nodes of a new cluster that see each other, and a SHARED_SECRET agent for each node to
/// own (boarded on the first, a token got from both): `(first, second, agents)` with agents
/// `[(id, secret) owned by the first, (id, secret) owned by the second]`.
fn two_nodes(dir: &Path, etcd: &EtcdCluster) -> (Authority, Authority, [(String, String); 2]) {
    let store = format!("etcd://{}", etcd.endpoints());
    let args = ["--store", store.as_str()];
    let (a_dir, b_dir) = (dir.join("a"), dir.join("b"));
    let a = Authority::start_with(&a_dir, None, &args);
    copy_identity(&a_dir, &b_dir);
    let b = Authority::start_with(&b_dir, None, &args);
    for n in [&a, &b] {
        wait_for("both nodes live", Duration::from_secs(20), || {
            gauge(n, "latchkey_cluster_nodes") == 2.0
        });
    }
    let op = a.operator_token();
    let agents = [&a_dir, &b_dir].map(|owner_dir| {
        let id = id_owned_by(&[&a_dir, &b_dir], owner_dir, "replay");
        let secret = board_secret(&a, &op, &id);
        (id, secret)
    });
    // Each node's mirror follows the first's writes; neither refuses anything at the start
    // of a new cluster.
    let mut n = 0;
    for (id, secret) in &agents {
        for node in [&a, &b] {
            wait_for("the agent gets a token", Duration::from_secs(10), || {
                n += 1;
                token(node, &assertion(id, secret, &format!("warm-{n}"))).status == 200
            });
        }
    }
    (a, b, agents)
}

#[test]
fn one_assertion_sent_to_two_nodes_gets_one_token() {
    let Some(bin) = etcd_or_skip("one_assertion_sent_to_two_nodes_gets_one_token") else {
        return;
    };
    let etcd = EtcdCluster::start(&bin);
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b, agents) = two_nodes(dir.path(), &etcd);
    let forwarded = |n: &Authority| gauge(n, "latchkey_cluster_replay_forwarded_total");
    let before = [forwarded(&a), forwarded(&b)];
    for (owner, other, (id, secret)) in [(&a, &b, &agents[0]), (&b, &a, &agents[1])] {
        // First to the node that does not own the agent: forwarded, accepted; then refused at
        // the owner and again at the first node.
        let j1 = assertion(id, secret, "j-1");
        let r = token(other, &j1);
        assert_eq!(r.status, 200, "{}", r.text());
        for node in [owner, other] {
            let r = token(node, &j1);
            assert_eq!(r.status, 401, "{}", r.text());
            assert_eq!(r.json()["error"], "invalid_client");
        }
        // First to the owner: accepted there; refused when forwarded.
        let j2 = assertion(id, secret, "j-2");
        let r = token(owner, &j2);
        assert_eq!(r.status, 200, "{}", r.text());
        let r = token(other, &j2);
        assert_eq!(r.status, 401, "{}", r.text());
    }
    // Every check of a node that does not own the agent went to the owner (3 per agent), and
    // the second node, which took its agent over from the first, also had the first check
    // what it accepted (2 handoffs).
    assert_eq!(forwarded(&a) - before[0], 3.0);
    assert_eq!(forwarded(&b) - before[1], 3.0 + 2.0);
    for n in [&a, &b] {
        assert_eq!(gauge(n, "latchkey_cluster_replay_failed_total"), 0.0);
    }
}

#[test]
fn an_unreachable_owner_is_503_and_its_clients_move_with_a_floor() {
    let Some(bin) = etcd_or_skip("an_unreachable_owner_is_503_and_its_clients_move_with_a_floor")
    else {
        return;
    };
    let etcd = EtcdCluster::start(&bin);
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b, agents) = two_nodes(dir.path(), &etcd);
    let (id, secret) = &agents[1];
    // An assertion the owner accepted just before it died.
    let used = assertion(id, secret, "before-kill");
    assert_eq!(token(&b, &used).status, 200);
    b.kill();

    // Until its lease expires the owner is still in the live set: unreachable, so 503.
    let r = token(&a, &assertion(id, secret, "while-dead"));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    assert!(r.header("retry-after").is_some());
    assert!(gauge(&a, "latchkey_cluster_replay_failed_total") >= 1.0);

    // Then the client moves to the first node, which cannot know what the dead one accepted:
    // the assertion accepted there is never accepted again, and fresh ones wait for the floor.
    let mut n = 0;
    let mut moved = None;
    wait_for(
        "the client moves to the live node",
        Duration::from_secs(30),
        || {
            n += 1;
            let r = token(&a, &assertion(id, secret, &format!("after-{n}")));
            assert_ne!(
                r.status,
                200,
                "nothing is accepted before the floor: {}",
                r.text()
            );
            let text = r.text();
            let done = text.contains("nodes changed");
            if done {
                moved = Some(r);
            }
            done
        },
    );
    let r = moved.expect("the refusal after the move");
    assert_eq!(r.status, 503, "{}", r.text());
    let wait: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=62).contains(&wait), "{wait}");
    let r = token(&a, &used);
    assert_ne!(r.status, 200, "{}", r.text());
}

#[test]
fn a_copied_node_id_does_not_join_as_a_second_owner() {
    let Some(bin) = etcd_or_skip("a_copied_node_id_does_not_join_as_a_second_owner") else {
        return;
    };
    let etcd = EtcdCluster::start(&bin);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("etcd://{}", etcd.endpoints());
    let args = ["--store", store.as_str()];
    let (a_dir, c_dir) = (dir.path().join("a"), dir.path().join("c"));
    let a = Authority::start_with(&a_dir, None, &args);
    wait_for("the first node is live", Duration::from_secs(20), || {
        gauge(&a, "latchkey_cluster_nodes") == 1.0
    });
    // The whole identity, node id included, as a careless copy of a data directory would.
    copy_identity(&a_dir, &c_dir);
    std::fs::copy(a_dir.join("node-id"), c_dir.join("node-id")).expect("copy node-id");
    let c = Authority::start_with(&c_dir, None, &args);
    assert!(
        c.wait_stderr("is already live in the cluster"),
        "{}",
        c.stderr()
    );
    assert_eq!(gauge(&a, "latchkey_cluster_nodes"), 1.0);
    assert_eq!(gauge(&c, "latchkey_cluster_nodes"), 0.0);
}

#[test]
fn a_node_restarted_within_its_lease_keeps_its_agents() {
    let Some(bin) = etcd_or_skip("a_node_restarted_within_its_lease_keeps_its_agents") else {
        return;
    };
    let etcd = EtcdCluster::start(&bin);
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, mut b, agents) = two_nodes(dir.path(), &etcd);
    let store = format!("etcd://{}", etcd.endpoints());
    let (id, secret) = &agents[1];
    let b_dir = b.data_dir.clone();
    let mut n = 0;
    for how in ["kill -9", "SIGTERM"] {
        let used = assertion(id, secret, &format!("before-{how}"));
        assert_eq!(token(&b, &used).status, 200);
        match how {
            "kill -9" => b.kill(),
            _ => b.stop(),
        }
        b = Authority::start_with(&b_dir, None, &["--store", store.as_str()]);
        assert!(
            b.wait_stderr("took over this node's registration"),
            "{how}: {}",
            b.stderr()
        );
        // The agent never moved: no floor, only 503s while the node comes back.
        wait_for(
            "tokens through either node",
            Duration::from_secs(10),
            || {
                n += 1;
                let r = token(&a, &assertion(id, secret, &format!("after-{n}")));
                assert!(!r.text().contains("nodes changed"), "{how}: {}", r.text());
                r.status == 200
            },
        );
        let r = token(&b, &assertion(id, secret, &format!("owner-{n}")));
        assert_eq!(r.status, 200, "{how}: {}", r.text());
        // What it accepted before the restart is still refused, by its replay log.
        for node in [&a, &b] {
            let r = token(node, &used);
            assert_eq!(r.status, 401, "{how}: {}", r.text());
        }
    }
}
