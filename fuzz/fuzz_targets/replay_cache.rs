//! The replay cache against a model: a key live in the model is always refused as a replay;
//! a key the cache accepts was not live; nothing panics whatever the times.
#![no_main]

use std::collections::HashMap;

use latchkey_core::replay::{ReplayCache, ReplayConfig, ReplayError};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let cache = ReplayCache::new(
        ReplayConfig {
            capacity: 64,
            max_lifetime: 200,
            leeway: 3,
            floor: Some(NOW),
            ..ReplayConfig::default()
        },
        [7; 32],
    );
    let mut model: HashMap<(u8, u8), u64> = HashMap::new();
    let mut now = NOW;
    for op in data.chunks_exact(4) {
        let (issuer, jti) = (op[0] % 4, op[1] % 64);
        now += u64::from(op[2] % 8);
        // Mostly sensible lifetimes, sometimes out of range or before the floor.
        let exp = (now + u64::from(op[3])).saturating_sub(40);
        let iat = (op[3] % 16 != 0).then_some(now - u64::from(op[3] % 3));
        let got = cache.check_and_insert(&issuer.to_string(), &jti.to_string(), iat, exp, now);
        let live = model.get(&(issuer, jti)).is_some_and(|&until| until >= now);
        match got {
            Ok(()) => {
                assert!(!live, "replay accepted");
                model.insert((issuer, jti), exp + 3);
            }
            Err(ReplayError::Replayed) => {} // live, or a fingerprint false positive
            Err(ReplayError::BeforeFloor) => assert!(iat.is_none_or(|i| i < NOW)),
            Err(ReplayError::ExpiryOutOfRange) => {
                assert!(exp + 3 < now || exp.saturating_sub(now) > 200)
            }
            Err(ReplayError::Full) => assert!(!live, "a live key must be reported as a replay"),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
});
