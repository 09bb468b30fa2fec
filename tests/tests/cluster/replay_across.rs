//! A client assertion is single-use across the cluster: the same assertion sent to two nodes,
//! one after the other or at the same moment, yields at most one access token.

use std::sync::Barrier;

use super::support::{assertion, board_secret, token_with, wait_token};
use crate::util::cluster::{Cluster, ClusterOptions, show};

#[test]
fn one_client_assertion_yields_at_most_one_token_across_nodes() {
    let Some(c) = Cluster::start(
        "one_client_assertion_yields_at_most_one_token_across_nodes",
        ClusterOptions::default(),
    ) else {
        return;
    };
    let op = c.operator_token(0);
    let secret = board_secret(c.node(0), &op, "replay-1");
    wait_token(&c, 1, "replay-1", &secret);

    // One after the other, each node first.
    for first in 0..2 {
        let a = assertion("replay-1", &secret);
        let r = token_with(c.node(first), &a);
        assert_eq!(r.status, 200, "node {}: {}", first + 1, show(&r));
        let again = token_with(c.node(1 - first), &a);
        assert_ne!(
            again.status,
            200,
            "an assertion node {} accepted got a second token from node {}",
            first + 1,
            2 - first
        );
        assert!(
            (400..500).contains(&again.status) || again.status == 503,
            "a clean refusal: {}",
            show(&again)
        );
        assert!(again.json()["error"].is_string(), "{}", show(&again));
    }

    // At the same moment.
    let mut tokens = 0;
    for round in 0..10 {
        let a = assertion("replay-1", &secret);
        let start = Barrier::new(2);
        let answers: Vec<_> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..2)
                .map(|i| {
                    let (a, start, node) = (&a, &start, c.node(i));
                    s.spawn(move || {
                        start.wait();
                        token_with(node, a)
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("thread"))
                .collect()
        });
        let ok = answers.iter().filter(|r| r.status == 200).count();
        assert!(
            ok <= 1,
            "round {round}: one assertion, {ok} tokens; node 1: {}; node 2: {}",
            show(&answers[0]),
            show(&answers[1])
        );
        tokens += ok;
    }
    // Refusing everything would pass the bound above: the agent is served.
    assert!(tokens > 0, "no raced assertion got a token at all");
}
