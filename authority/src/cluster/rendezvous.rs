//! Rendezvous (highest-random-weight) hashing: the owner of a client id is the live node with
//! the highest `weight(node, client)`. Every node computes the same owner from the same live
//! set without coordination, load spreads evenly, and when a node joins or leaves only the
//! clients it wins or held move (about 1/n of them), never a reshuffle of the rest.

/// The weight of `node` for `client`: the first 8 bytes of an unkeyed BLAKE3 over both,
/// length-prefixed so ("ab", "c") and ("a", "bc") differ. Unkeyed on purpose: every node must
/// agree, and a client id cannot pick its owner any more than it could pick a hash output.
pub fn weight(node: &str, client: &str) -> u64 {
    let mut h = blake3::Hasher::new_derive_key("latchkey 2026 cluster replay owner v1");
    h.update(&(node.len() as u64).to_le_bytes());
    h.update(node.as_bytes());
    h.update(client.as_bytes());
    let out = h.finalize();
    let mut w = [0u8; 8];
    w.copy_from_slice(&out.as_bytes()[..8]);
    u64::from_le_bytes(w)
}

/// The node of `nodes` that owns `client` (`None` when there is none). Ties, which need a
/// 64-bit collision, go to the smaller node id so the answer never depends on order.
pub fn owner<'a, I>(nodes: I, client: &str) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    nodes
        .into_iter()
        .map(|n| (weight(n, client), n))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i:02}")).collect()
    }

    fn owner_of<'a>(nodes: &'a [String], client: &str) -> &'a str {
        owner(nodes.iter().map(String::as_str), client).expect("a node")
    }

    #[test]
    fn the_owner_is_stable_and_independent_of_order() {
        let nodes = ids(5);
        let mut reversed = nodes.clone();
        reversed.reverse();
        for c in 0..500 {
            let client = format!("agent-{c}");
            let a = owner_of(&nodes, &client);
            assert_eq!(a, owner_of(&nodes, &client));
            assert_eq!(a, owner_of(&reversed, &client));
        }
        assert_ne!(weight("ab", "c"), weight("a", "bc"));
        assert_eq!(owner(std::iter::empty(), "x"), None);
    }

    #[test]
    fn clients_spread_evenly() {
        let nodes = ids(4);
        let mut counts = [0usize; 4];
        let total = 20_000;
        for c in 0..total {
            let o = owner_of(&nodes, &format!("agent-{c}"));
            counts[nodes.iter().position(|n| n == o).expect("member")] += 1;
        }
        // 5 000 expected each; a binomial standard deviation is about 61.
        for n in counts {
            assert!((4_700..=5_300).contains(&n), "{counts:?}");
        }
    }

    #[test]
    fn a_join_or_leave_moves_only_the_clients_that_node_wins_or_held() {
        let before = ids(4);
        let mut after = before.clone();
        after.push("node-new".into());
        let total = 10_000;
        let mut moved = 0;
        for c in 0..total {
            let client = format!("agent-{c}");
            let (a, b) = (owner_of(&before, &client), owner_of(&after, &client));
            if a != b {
                // Only to the new node, never between old ones.
                assert_eq!(b, "node-new");
                moved += 1;
            }
            // Leaving again restores the old owner exactly.
            assert_eq!(owner_of(&before, &client), a);
        }
        // About 1/5 move (2 000, sd 40).
        assert!((1_800..=2_200).contains(&moved), "{moved}");

        let mut fewer = before.clone();
        fewer.remove(1);
        for c in 0..total {
            let client = format!("agent-{c}");
            let a = owner_of(&before, &client);
            if a != "node-01" {
                assert_eq!(owner_of(&fewer, &client), a, "only node-01's clients move");
            }
        }
    }
}
