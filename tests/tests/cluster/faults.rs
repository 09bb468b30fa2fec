//! Faults under a two-node cluster with the default settings: the etcd leader killed, an
//! authority killed and restarted, compaction past a stopped node, etcd's space quota full, and
//! one node cut off from etcd. Each asserts what must eventually hold (within a bounded wait),
//! never how fast.

use super::support::{
    CONVERGE, agent, board_secret, create_with_iat, decided_token, id_owned_by, metric, token_once,
    wait_agent, wait_token,
};
use crate::onboarding::{API, create};
use crate::util::cluster::{Cluster, ClusterOptions, eventually, show};
use crate::util::etcd::EtcdOptions;
use crate::util::https::Authority;
use crate::util::server::Response;

/// The default assertion leeway: how long after a node is lost its clients' assertions may be
/// refused (the floor of a client whose owner is gone).
const LEEWAY: std::time::Duration = std::time::Duration::from_secs(60);

/// The etcd endpoints a node's requests avoid.
const AVOIDED: &str = "latchkey_cluster_etcd_endpoints{state=\"avoided\"}";

/// Asserts the node's "not now" answer: 503 with Retry-After and an OAuth-style body.
fn assert_clean_503(r: &Response, what: &str) {
    assert_eq!(r.status, 503, "{what}: {}", show(r));
    assert!(
        r.header("retry-after")
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "{what}: Retry-After: {:?}",
        r.headers
    );
    let body = r.json();
    assert!(body["error"].is_string(), "{what}: {body}");
    assert!(body["error_description"].is_string(), "{what}: {body}");
}

/// Creates agents `PREFIX-N` on `auth` until one is created: a clean 503 (the cluster not
/// taking writes yet) is retried under a new name, since a 503 may or may not have written.
fn create_eventually(auth: &Authority, op: &str, prefix: &str) -> String {
    let mut n = 0;
    eventually(&format!("a write ({prefix}) taken"), CONVERGE, || {
        n += 1;
        let id = format!("{prefix}-{n}");
        let r = create(auth, op, &id, &format!("agent {id}"), "SHARED_SECRET");
        match r.status {
            201 => Some(id),
            503 => {
                assert_clean_503(&r, &format!("create {id}"));
                None
            }
            _ => panic!("create {id}: {}", show(&r)),
        }
    })
}

fn offboard(auth: &Authority, op: &str, id: &str) {
    let r = auth.json(
        "POST",
        &format!("{API}/agents/{id}/boarding/offboard"),
        Some(op),
        None,
    );
    assert_eq!(r.status, 200, "offboard {id}: {}", show(&r));
}

fn delete(auth: &Authority, op: &str, id: &str) {
    let etag = agent(auth, op, id).json()["eTag"]
        .as_str()
        .expect("eTag")
        .to_owned();
    let r = auth.json_with(
        "DELETE",
        &format!("{API}/agents/{id}"),
        Some(op),
        None,
        &[("If-Match", &etag)],
    );
    assert_eq!(r.status, 204, "delete {id}: {}", show(&r));
}

#[test]
fn etcd_leader_killed_tokens_keep_flowing_and_writes_resume() {
    let Some(mut c) = Cluster::start(
        "etcd_leader_killed_tokens_keep_flowing_and_writes_resume",
        ClusterOptions::default(),
    ) else {
        return;
    };
    let op = c.operator_token(0);
    // One agent whose assertions each node checks: an election must not make either node look
    // gone to the other (its agents would then wait out a floor).
    let dirs = [c.data_dir(0), c.data_dir(1)];
    let agents: Vec<(String, String)> = (0..2)
        .map(|owner| {
            let id = id_owned_by(&dirs, c.data_dir(owner), "lk");
            let secret = board_secret(c.node(0), &op, &id);
            wait_token(&c, 1, &id, &secret);
            (id, secret)
        })
        .collect();

    let leader = c.etcd.leader();
    c.etcd.kill9(leader);
    // Tokens: every answer is a token or a clean 503 (a node that cannot prove it is current
    // during the election), and both nodes serve again.
    let mut served = [0u32; 2];
    let mut unavailable = [0u32; 2];
    c.eventually(
        "tokens from both nodes after the leader died",
        CONVERGE,
        || {
            for i in 0..2 {
                let (id, secret) = &agents[i];
                let r = token_once(c.node(i), id, secret);
                match r.status {
                    200 => served[i] += 1,
                    503 => {
                        assert_clean_503(&r, &format!("token on node {}", i + 1));
                        unavailable[i] += 1;
                    }
                    _ => panic!("token on node {}: {}\n{}", i + 1, show(&r), c.logs()),
                }
            }
            (served[0] > 0 && served[1] > 0).then_some(())
        },
    );
    eprintln!("after the leader kill: tokens {served:?}, 503s {unavailable:?}");
    // Each node's requests avoid the dead member once it failed its checks; from then on,
    // every token request is answered although one etcd endpoint of three refuses connections.
    for i in 0..2 {
        c.eventually(
            &format!("node {} avoiding the dead member", i + 1),
            CONVERGE,
            || (metric(c.node(i), AVOIDED) == Some(1.0)).then_some(()),
        );
    }
    for (id, secret) in &agents {
        for i in 0..2 {
            c.eventually(&format!("{id} served on node {}", i + 1), CONVERGE, || {
                (token_once(c.node(i), id, secret).status == 200).then_some(())
            });
            for _ in 0..20 {
                let r = token_once(c.node(i), id, secret);
                assert_eq!(
                    r.status,
                    200,
                    "{id} on node {} with one etcd member dead: {}\n{}",
                    i + 1,
                    show(&r),
                    c.logs()
                );
            }
        }
    }
    // Writes resume on both nodes under the new leader, and each reaches the other node.
    let one = create_eventually(c.node(0), &op, "lk-after-1");
    let two = create_eventually(c.node(1), &op, "lk-after-2");
    wait_agent(&c, 1, &op, &one);
    wait_agent(&c, 0, &op, &two);

    // The old leader comes back as a follower, and requests use it again; the cluster keeps
    // taking writes.
    c.etcd.restart(leader);
    for i in 0..2 {
        c.eventually(
            &format!("node {} using the restarted member", i + 1),
            CONVERGE,
            || (metric(c.node(i), AVOIDED) == Some(0.0)).then_some(()),
        );
    }
    let three = create_eventually(c.node(1), &op, "lk-back");
    wait_agent(&c, 0, &op, &three);
    // Every agent gets tokens from every node, well within the default leeway: no client
    // moved with a floor.
    for (id, secret) in &agents {
        for i in 0..2 {
            let r = c.eventually(&format!("{id} on node {}", i + 1), CONVERGE, || {
                let r = token_once(c.node(i), id, secret);
                match r.status {
                    503 => None,
                    _ => Some(r),
                }
            });
            assert_eq!(r.status, 200, "{id} on node {}: {}", i + 1, show(&r));
        }
    }
}

#[test]
fn killed_node_restarts_and_sees_what_was_written_meanwhile() {
    let Some(mut c) = Cluster::start(
        "killed_node_restarts_and_sees_what_was_written_meanwhile",
        ClusterOptions::default(),
    ) else {
        return;
    };
    let op = c.operator_token(0);
    // Agents whose assertions node 1 checks: node 2 may be down past its lease, after which
    // its own agents wait out a floor (the partition test covers that).
    let dirs = [c.data_dir(0), c.data_dir(1)];
    let keep_id = id_owned_by(&dirs, c.data_dir(0), "kn-keep");
    let gone_id = id_owned_by(&dirs, c.data_dir(0), "kn-gone");
    let new_id = id_owned_by(&dirs, c.data_dir(0), "kn-new");
    let keep = board_secret(c.node(0), &op, &keep_id);
    let gone = board_secret(c.node(0), &op, &gone_id);
    create_with_iat(c.node(0), &op, "kn-del");
    wait_token(&c, 1, &keep_id, &keep);
    wait_token(&c, 1, &gone_id, &gone);
    wait_agent(&c, 1, &op, "kn-del");

    c.kill9(1);
    offboard(c.node(0), &op, &gone_id);
    delete(c.node(0), &op, "kn-del");
    let new = board_secret(c.node(0), &op, &new_id);

    c.start_node(1);
    // The node listens only once it caught up: no stale answer, not even the first one (a
    // clean 503 while it does not know the cluster's live nodes yet decides nothing).
    let r = decided_token(&c, 1, &gone_id, &gone);
    assert_eq!(
        r.status,
        401,
        "offboarded while node 2 was down: {}",
        show(&r)
    );
    let r = decided_token(&c, 1, &new_id, &new);
    assert_eq!(r.status, 200, "boarded while node 2 was down: {}", show(&r));
    let r = agent(c.node(1), &op, "kn-del");
    assert_eq!(r.status, 404, "deleted while node 2 was down: {}", show(&r));
    let r = decided_token(&c, 1, &keep_id, &keep);
    assert_eq!(r.status, 200, "{}", show(&r));
    // Nothing was compacted: it caught up through the watch, no full reload.
    let log = c.node(1).stderr();
    assert!(
        !log.contains("compacted"),
        "a restart without compaction reloaded:\n{log}"
    );
    // And it takes writes again.
    let id = create_eventually(c.node(1), &op, "kn-after");
    wait_agent(&c, 0, &op, &id);
}

#[test]
fn compaction_past_a_stopped_node_makes_it_reload_on_restart() {
    let Some(mut c) = Cluster::start(
        "compaction_past_a_stopped_node_makes_it_reload_on_restart",
        ClusterOptions::default(),
    ) else {
        return;
    };
    let op = c.operator_token(0);
    // Agents whose assertions node 1 checks: node 2 may be down past its lease, after which
    // its own agents wait out a floor (the partition test covers that).
    let dirs = [c.data_dir(0), c.data_dir(1)];
    let keep_id = id_owned_by(&dirs, c.data_dir(0), "cp-keep");
    let gone_id = id_owned_by(&dirs, c.data_dir(0), "cp-gone");
    let new_id = id_owned_by(&dirs, c.data_dir(0), "cp-new");
    let keep = board_secret(c.node(0), &op, &keep_id);
    let gone = board_secret(c.node(0), &op, &gone_id);
    create_with_iat(c.node(0), &op, "cp-del");
    wait_token(&c, 1, &keep_id, &keep);
    wait_token(&c, 1, &gone_id, &gone);
    wait_agent(&c, 1, &op, "cp-del");

    c.stop(1);
    offboard(c.node(0), &op, &gone_id);
    delete(c.node(0), &op, "cp-del");
    let new = board_secret(c.node(0), &op, &new_id);
    // Everything node 2 would need to replay is gone from etcd's history.
    let revision = c.etcd.revision(0);
    c.etcd.compact(0, revision);

    c.start_node(1);
    let log = c.node(1).stderr();
    assert!(
        log.contains("compacted") && log.to_lowercase().contains("reload"),
        "node 2 does not say it reloaded after the compaction:\n{log}"
    );
    let r = decided_token(&c, 1, &gone_id, &gone);
    assert_eq!(
        r.status,
        401,
        "offboarded while node 2 was down: {}",
        show(&r)
    );
    let r = agent(c.node(1), &op, "cp-del");
    assert_eq!(r.status, 404, "deleted while node 2 was down: {}", show(&r));
    let r = decided_token(&c, 1, &new_id, &new);
    assert_eq!(r.status, 200, "boarded while node 2 was down: {}", show(&r));
    let r = decided_token(&c, 1, &keep_id, &keep);
    assert_eq!(r.status, 200, "{}", show(&r));
    let id = create_eventually(c.node(1), &op, "cp-after");
    wait_agent(&c, 0, &op, &id);
}

/// etcd's space quota in the NOSPACE test: room for two nodes' bootstrap and a few agents.
const SMALL_QUOTA: u64 = 8 << 20;

#[test]
fn full_etcd_quota_refuses_writes_cleanly_and_tokens_are_still_served() {
    let Some(c) = Cluster::start(
        "full_etcd_quota_refuses_writes_cleanly_and_tokens_are_still_served",
        ClusterOptions {
            etcd: EtcdOptions {
                quota_backend_bytes: Some(SMALL_QUOTA),
            },
            ..ClusterOptions::default()
        },
    ) else {
        return;
    };
    let op = c.operator_token(0);
    let secret = board_secret(c.node(0), &op, "ns-1");
    wait_token(&c, 1, "ns-1", &secret);

    // Fill etcd beside Latchkey's prefix until it raises NOSPACE.
    let chunk = vec![b'x'; 512 << 10];
    let mut n = 0;
    while c
        .etcd
        .try_put(0, &format!("/lk-test/fill/{n}"), &chunk)
        .is_ok()
    {
        n += 1;
        assert!(
            n < 4 * SMALL_QUOTA as usize / chunk.len(),
            "no NOSPACE after {n} puts"
        );
    }
    eventually("etcd's NOSPACE alarm", CONVERGE, || {
        c.etcd
            .alarms(0)
            .iter()
            .any(|a| a == "NOSPACE")
            .then_some(())
    });

    for i in 0..2 {
        let id = format!("ns-refused-{}", i + 1);
        let r = create(c.node(i), &op, &id, &id, "SHARED_SECRET");
        assert_clean_503(&r, &format!("a write on node {} with etcd full", i + 1));
        let desc = r.json()["error_description"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        assert!(
            desc.contains("space") || desc.contains("quota"),
            "the refusal does not say etcd is out of space: {}",
            show(&r)
        );
        let r = agent(c.node(i), &op, &id);
        assert_eq!(r.status, 404, "a refused write was made: {}", show(&r));
    }
    // The token path does not write: both nodes keep serving, reads too.
    for _ in 0..5 {
        for i in 0..2 {
            let r = token_once(c.node(i), "ns-1", &secret);
            assert_eq!(
                r.status,
                200,
                "token on node {} with etcd full: {}",
                i + 1,
                show(&r)
            );
        }
    }
    for i in 0..2 {
        let r = agent(c.node(i), &op, "ns-1");
        assert_eq!(r.status, 200, "read on node {}: {}", i + 1, show(&r));
    }
}

#[test]
fn partitioned_node_stops_serving_tokens_and_serves_again_after_heal() {
    let Some(c) = Cluster::start(
        "partitioned_node_stops_serving_tokens_and_serves_again_after_heal",
        ClusterOptions {
            proxied: vec![1],
            ..ClusterOptions::default()
        },
    ) else {
        return;
    };
    let op = c.operator_token(0);
    // Agents whose client assertions node 1 checks (node 2 forwards them there), and one that
    // node 2 checks: cut off past its lease, node 2 loses it to node 1, which cannot know what
    // node 2 accepted and so refuses assertions issued before the move plus the leeway.
    let dirs = [c.data_dir(0), c.data_dir(1)];
    let keep_id = id_owned_by(&dirs, c.data_dir(0), "pt-keep");
    let gone_id = id_owned_by(&dirs, c.data_dir(0), "pt-gone");
    let moved_id = id_owned_by(&dirs, c.data_dir(1), "pt-moved");
    let keep = board_secret(c.node(0), &op, &keep_id);
    let gone = board_secret(c.node(0), &op, &gone_id);
    let moved = board_secret(c.node(0), &op, &moved_id);
    wait_token(&c, 1, &keep_id, &keep);
    wait_token(&c, 1, &gone_id, &gone);
    wait_token(&c, 1, &moved_id, &moved);

    c.cut(1);
    // Node 2 cannot prove it is current: it stops answering tokens (a token meanwhile is it
    // still within its bound), with a clean 503.
    let r = eventually("node 2 refusing tokens while cut off", CONVERGE, || {
        let r = token_once(c.node(1), &keep_id, &keep);
        match r.status {
            200 => None,
            503 => Some(r),
            _ => panic!("node 2 cut off: {}\n{}", show(&r), c.logs()),
        }
    });
    assert_clean_503(&r, "node 2 cut off");
    // Node 1 is not affected, and revokes meanwhile.
    let r = token_once(c.node(0), &keep_id, &keep);
    assert_eq!(r.status, 200, "node 1 during the partition: {}", show(&r));
    offboard(c.node(0), &op, &gone_id);
    // Node 2 serves nothing stale while cut off: the offboarded agent is not given a token.
    let r = token_once(c.node(1), &gone_id, &gone);
    assert_clean_503(&r, "the offboarded agent on node 2 while cut off");
    let r = create(c.node(1), &op, "pt-write", "pt-write", "SHARED_SECRET");
    assert_clean_503(&r, "a write on node 2 while cut off");

    c.heal(1);
    c.eventually("node 2 serving tokens after the heal", CONVERGE, || {
        let r = token_once(c.node(1), &keep_id, &keep);
        match r.status {
            200 => Some(()),
            503 => None,
            _ => panic!("node 2 after the heal: {}\n{}", show(&r), c.logs()),
        }
    });
    // Serving again means current again: the offboarding made meanwhile is applied.
    let r = decided_token(&c, 1, &gone_id, &gone);
    assert_eq!(
        r.status,
        401,
        "node 2 after the heal, offboarded agent: {}",
        show(&r)
    );
    let id = create_eventually(c.node(1), &op, "pt-after");
    wait_agent(&c, 0, &op, &id);
    // The agent node 2 checks is served again too: at once if the cut was shorter than the
    // lease, else once the floor (at most the default leeway of 60 s after the move) passed;
    // meanwhile only clean 503s.
    c.eventually(
        "node 2's own agent served after the heal",
        LEEWAY + CONVERGE,
        || {
            let r = token_once(c.node(1), &moved_id, &moved);
            match r.status {
                200 => Some(()),
                _ => {
                    assert_clean_503(&r, "node 2's own agent after the heal");
                    None
                }
            }
        },
    );
}
