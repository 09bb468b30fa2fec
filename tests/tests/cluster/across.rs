//! Two authorities on one etcd cluster act as one authority: what one node writes the other
//! serves, one-shot credentials and eTags are spent once cluster-wide, and a revocation made
//! on one node is refused on the other. Default settings throughout (the freshness bound F
//! included).

use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde_json::json;

use super::support::{
    CONVERGE, access_token, active, agent, assert_clean_4xx, board_secret, create_with_iat,
    token_once, wait_agent, wait_refused, wait_token,
};
use crate::onboarding::{API, register};
use crate::util::cluster::{Cluster, ClusterOptions, eventually, show};
use crate::util::server::Response;

fn two_nodes(test: &str) -> Option<Cluster> {
    Cluster::start(test, ClusterOptions::default())
}

/// Runs `a` and `b` at the same moment on two threads; both answers.
fn race(a: impl FnOnce() -> Response + Send, b: impl FnOnce() -> Response + Send) -> [Response; 2] {
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        let ta = s.spawn(|| {
            start.wait();
            a()
        });
        let tb = s.spawn(|| {
            start.wait();
            b()
        });
        [ta.join().expect("thread a"), tb.join().expect("thread b")]
    })
}

#[test]
fn agent_created_on_one_node_registers_on_the_other_and_gets_tokens_from_both() {
    let Some(c) = two_nodes("agent_created_on_one_node_registers_on_the_other") else {
        return;
    };
    let op1 = c.operator_token(0);
    // The operator token node 2 mints is accepted by node 1, and the other way round.
    let op2 = c.operator_token(1);
    let iat = create_with_iat(c.node(0), &op1, "across-1");
    let created = wait_agent(&c, 1, &op2, "across-1");
    assert_eq!(created["name"], "agent across-1");

    let r = register(c.node(1), &iat, &json!({}));
    assert_eq!(r.status, 201, "register on node 2: {}", show(&r));
    let reg = r.json();
    assert_eq!(reg["client_id"], "across-1");
    let secret = reg["client_secret"].as_str().expect("client_secret");
    // Node 2 answered after its own mirror applied the registration: it serves at once.
    let r = token_once(c.node(1), "across-1", secret);
    assert_eq!(r.status, 200, "token on node 2: {}", show(&r));
    let from_two = access_token(&r);
    let from_one = access_token(&wait_token(&c, 0, "across-1", secret));
    // Both nodes sign with the cluster's keys: each token is active on either node.
    for i in 0..2 {
        assert!(
            active(&c, i, &op1, &from_one),
            "node 1's token on node {}",
            i + 1
        );
        assert!(
            active(&c, i, &op2, &from_two),
            "node 2's token on node {}",
            i + 1
        );
    }
    let r = agent(c.node(0), &op2, "across-1");
    assert_eq!(r.status, 200, "{}", show(&r));
    // The IAT is spent cluster-wide: node 1 refuses it too.
    let r = register(c.node(0), &iat, &json!({}));
    assert_clean_4xx(&r, "the spent IAT on node 1");
}

#[test]
fn one_iat_raced_at_two_nodes_registers_exactly_once() {
    let Some(c) = two_nodes("one_iat_raced_at_two_nodes_registers_exactly_once") else {
        return;
    };
    let op = c.operator_token(0);
    for n in 0..4 {
        let id = format!("iat-race-{n}");
        let iat = create_with_iat(c.node(0), &op, &id);
        wait_agent(&c, 1, &op, &id);
        let answers = race(
            || register(c.node(0), &iat, &json!({})),
            || register(c.node(1), &iat, &json!({})),
        );
        let won: Vec<usize> = (0..2).filter(|&i| answers[i].status == 201).collect();
        assert_eq!(
            won.len(),
            1,
            "{id}: exactly one registration wins; node 1: {}; node 2: {}",
            show(&answers[0]),
            show(&answers[1])
        );
        let (winner, loser) = (won[0], 1 - won[0]);
        assert_clean_4xx(
            &answers[loser],
            &format!("{id}: the losing registration on node {}", loser + 1),
        );
        // The winner's secret is the agent's: both nodes give it tokens.
        let secret = answers[winner].json()["client_secret"]
            .as_str()
            .expect("client_secret")
            .to_owned();
        let r = token_once(c.node(winner), &id, &secret);
        assert_eq!(r.status, 200, "{id} on the winning node: {}", show(&r));
        wait_token(&c, loser, &id, &secret);
    }
}

#[test]
fn if_match_raced_at_two_nodes_updates_exactly_once() {
    let Some(c) = two_nodes("if_match_raced_at_two_nodes_updates_exactly_once") else {
        return;
    };
    let op = c.operator_token(0);
    create_with_iat(c.node(0), &op, "etag-race");
    for round in 0..4 {
        let etag = agent(c.node(0), &op, "etag-race").json()["eTag"]
            .as_str()
            .expect("eTag")
            .to_owned();
        // Both nodes start from the same version.
        eventually("node 2 at node 1's eTag", CONVERGE, || {
            (wait_agent(&c, 1, &op, "etag-race")["eTag"] == etag.as_str()).then_some(())
        });
        let put = |i: usize| {
            let body = json!({"name": format!("round {round} node {}", i + 1), "securityProfile": "SHARED_SECRET"});
            c.node(i).json_with(
                "PUT",
                &format!("{API}/agents/etag-race"),
                Some(&op),
                Some(&body),
                &[("If-Match", &etag)],
            )
        };
        let answers = race(|| put(0), || put(1));
        let won: Vec<usize> = (0..2).filter(|&i| answers[i].status == 200).collect();
        assert_eq!(
            won.len(),
            1,
            "round {round}: exactly one If-Match {etag} wins; node 1: {}; node 2: {}",
            show(&answers[0]),
            show(&answers[1])
        );
        let (winner, loser) = (won[0], 1 - won[0]);
        let r = &answers[loser];
        assert_eq!(
            r.status,
            412,
            "round {round}, node {}: {}",
            loser + 1,
            show(r)
        );
        assert_eq!(r.json()["error"], "precondition_failed", "{}", show(r));
        // Both nodes end with the winner's write.
        let name = format!("round {round} node {}", winner + 1);
        for i in 0..2 {
            eventually(
                &format!("node {} showing {name:?}", i + 1),
                CONVERGE,
                || {
                    (agent(c.node(i), &op, "etag-race").json()["name"] == name.as_str())
                        .then_some(())
                },
            );
        }
    }
}

#[test]
fn offboarding_on_one_node_is_refused_on_the_other() {
    let Some(c) = two_nodes("offboarding_on_one_node_is_refused_on_the_other") else {
        return;
    };
    let op = c.operator_token(0);
    let secret = board_secret(c.node(0), &op, "off-1");
    let before = access_token(&wait_token(&c, 1, "off-1", &secret));
    assert!(active(&c, 1, &op, &before));

    let r = c.node(0).json(
        "POST",
        &format!("{API}/agents/off-1/boarding/offboard"),
        Some(&op),
        None,
    );
    assert_eq!(r.status, 200, "offboard on node 1: {}", show(&r));
    // Node 1 refuses at once (its answer came after its mirror applied the offboarding).
    let r = token_once(c.node(0), "off-1", &secret);
    assert_eq!(r.status, 401, "node 1 after its offboarding: {}", show(&r));
    // Node 2 refuses once the change reached it, and keeps refusing.
    let r = wait_refused(&c, 1, "off-1", &secret);
    assert_eq!(r.json()["error"], "invalid_client", "{}", show(&r));
    for _ in 0..3 {
        let r = token_once(c.node(1), "off-1", &secret);
        assert_eq!(r.status, 401, "node 2 again: {}", show(&r));
    }
    // The access token node 2 issued before is revoked on both nodes.
    for i in 0..2 {
        eventually(
            &format!("node {} revoking the old token", i + 1),
            CONVERGE,
            || (!active(&c, i, &op, &before)).then_some(()),
        );
    }
}

#[test]
fn token_revoked_on_one_node_is_refused_on_the_other() {
    let Some(c) = two_nodes("token_revoked_on_one_node_is_refused_on_the_other") else {
        return;
    };
    let op = c.operator_token(0);
    let secret = board_secret(c.node(0), &op, "rev-1");
    let agent_token = access_token(&wait_token(&c, 1, "rev-1", &secret));
    // An operator token minted by node 2, used on both nodes, then revoked on node 1.
    let victim = c.operator_token(1);
    for i in 0..2 {
        let r = agent(c.node(i), &victim, "rev-1");
        assert_eq!(r.status, 200, "node {}: {}", i + 1, show(&r));
    }
    for token in [&agent_token, &victim] {
        let r = c.node(0).form(
            "/oauth/revoke",
            &format!("token={token}"),
            &[("Authorization", &format!("Bearer {op}"))],
        );
        assert_eq!(r.status, 200, "revoke on node 1: {}", show(&r));
    }
    assert!(!active(&c, 0, &op, &agent_token), "node 1 at once");
    let r = agent(c.node(0), &victim, "rev-1");
    assert_eq!(r.status, 401, "node 1 at once: {}", show(&r));
    // Node 2 refuses both once the revocations reached it (each is reported on its own).
    let deadline = Instant::now() + CONVERGE;
    let (mut operator_refused, mut agent_revoked) = (false, false);
    while !(operator_refused && agent_revoked) && Instant::now() < deadline {
        let r = agent(c.node(1), &victim, "rev-1");
        match r.status {
            401 => operator_refused = true,
            200 => {}
            _ => panic!("node 2: {}", show(&r)),
        }
        agent_revoked = !active(&c, 1, &op, &agent_token);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        agent_revoked && operator_refused,
        "after {CONVERGE:?} node 2 still treats as valid what node 1 revoked: \
         the agent's access token active in introspection: {}; \
         the operator token accepted: {}",
        !agent_revoked,
        !operator_refused
    );
    // Only those tokens: the agent still gets new ones on both nodes.
    for i in 0..2 {
        let r = token_once(c.node(i), "rev-1", &secret);
        assert_eq!(r.status, 200, "node {}: {}", i + 1, show(&r));
    }
}

#[test]
fn a_node_loads_rows_larger_than_a_default_grpc_message_in_full() {
    let Some(mut c) = two_nodes("a_node_loads_rows_larger_than_a_default_grpc_message_in_full")
    else {
        return;
    };
    let op = c.operator_token(0);
    // 150 agents with data source configurations of about 63 KB (the default limit is 64 KiB):
    // about 9.5 MB of rows, so at least one page of a full load exceeds gRPC's usual 4 MiB.
    let blob = "x".repeat(63_000);
    let mut last = String::new();
    for i in 0..150 {
        let id = format!("big-{i}");
        let r = crate::onboarding::create(c.node(0), &op, &id, &id, "SHARED_SECRET");
        assert_eq!(r.status, 201, "create {id}: {}", show(&r));
        let body = json!({"configurationId": format!("cfg-{i}"), "dataSources": [
            {"name": "s", "dataPoints": [], "customData": {"blob": blob}}]});
        let r = c.node(0).json_with(
            "PUT",
            &format!("{API}/agents/{id}/dataSourceConfiguration"),
            Some(&op),
            Some(&body),
            &[("If-Match", "0")],
        );
        assert_eq!(r.status, 200, "configure {id}: {}", show(&r));
        last = id;
    }
    // Node 2 forgets its mirror and loads the whole cluster again.
    c.stop(1);
    std::fs::remove_file(c.data_dir(1).join("cluster-mirror.redb")).expect("remove mirror");
    c.start_node(1);
    let op2 = c.operator_token(1);
    let r = c.node(1).json(
        "GET",
        &format!("{API}/agents/{last}/dataSourceConfiguration"),
        Some(&op2),
        None,
    );
    assert_eq!(r.status, 200, "{}", show(&r));
    assert_eq!(
        r.json()["dataSources"][0]["customData"]["blob"]
            .as_str()
            .map(str::len),
        Some(63_000)
    );
}
