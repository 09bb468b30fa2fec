//! Token verification against fixed keys of every algorithm family.
//!
//! Arbitrary input (first byte even): verification never panics, and the batch entry point
//! agrees with single verification. Structured input (first byte odd): a token minted from
//! fuzzer-chosen claims verifies, and changing any one byte of it makes verification fail.
#![no_main]

use std::sync::{Arc, LazyLock};

use latchkey_core::jws;
use latchkey_core::revocation::RevocationSet;
use latchkey_core::{
    Algorithm, Audience, Claims, KeyRing, SigningKey, TokenType, Validation, Verifier,
};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_800_000_000;
const ALGS: [Algorithm; 5] = [
    Algorithm::EdDSA,
    Algorithm::ES256,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::HS256,
];

struct Setup {
    ring: Arc<KeyRing>,
    verifier: Verifier,
    assertion: Validation,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let key = |alg, der: &[u8], kid: &str| {
        SigningKey::from_pkcs8_der(alg, der)
            .expect("fixed fuzz key")
            .with_kid(kid)
    };
    let rsa = include_bytes!("../keys/rsa3072.pk8");
    let ring = Arc::new(KeyRing::new());
    for k in [
        key(
            Algorithm::EdDSA,
            include_bytes!("../keys/ed25519.pk8"),
            "ed",
        ),
        key(Algorithm::ES256, include_bytes!("../keys/p256.pk8"), "es"),
        key(Algorithm::RS256, rsa, "rs256"),
        key(Algorithm::RS384, rsa, "rs384"),
        SigningKey::hmac(Algorithm::HS256, &[0x5a; 32])
            .expect("32-byte secret")
            .with_kid("hs"),
    ] {
        ring.rotate(k).expect("fresh ring");
    }
    let verifier = Verifier::new(
        ring.clone(),
        Arc::new(RevocationSet::new()),
        Validation::new(TokenType::AccessToken),
    );
    Setup {
        ring,
        verifier,
        assertion: Validation::new(TokenType::ClientAssertion),
    }
});

fuzz_target!(|data: &[u8]| {
    let s = &*SETUP;
    match data.split_first() {
        Some((mode, rest)) if mode % 2 == 1 => mint_then_tamper(s, rest),
        Some((_, rest)) => arbitrary(s, rest),
        None => {}
    }
});

fn arbitrary(s: &Setup, data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let single = s.verifier.verify(token, NOW);
    let batch = s.verifier.verify_batch(&[token, token], NOW);
    assert_eq!(batch.len(), 2);
    for b in &batch {
        assert_eq!(
            b.is_ok(),
            single.is_ok(),
            "batch and single verification disagree"
        );
    }
    // The one-call assertion path, with every key (the key decides the algorithm).
    let snapshot = s.ring.snapshot();
    for key in snapshot.keys() {
        let _ = jws::verify(token, key, &s.assertion, NOW);
    }
}

fn mint_then_tamper(s: &Setup, data: &[u8]) {
    let [which, pos_hi, pos_lo, value, sub @ ..] = data else {
        return;
    };
    let alg = ALGS[usize::from(*which) % ALGS.len()];
    let claims = Claims {
        iss: Some("https://latchkey.test".into()),
        sub: Some(String::from_utf8_lossy(sub).into_owned()),
        aud: Some(Audience::One("api".into())),
        exp: Some(NOW + 300),
        iat: Some(NOW),
        jti: Some("fuzz".into()),
        ..Claims::default()
    };
    let token = s
        .ring
        .mint(alg, TokenType::AccessToken, &claims)
        .expect("minting with a ring key");
    if token.len() > latchkey_core::b64::MAX_TOKEN_LEN {
        return; // too large to verify by design
    }
    let verified = s.verifier.verify(&token, NOW).expect("own token verifies");
    assert_eq!(verified.claims(), &claims);

    let mut bytes = token.clone().into_bytes();
    let pos = usize::from(u16::from_be_bytes([*pos_hi, *pos_lo])) % bytes.len();
    let new = value & 0x7f; // stays ASCII, so stays UTF-8
    if bytes[pos] == new {
        return;
    }
    bytes[pos] = new;
    let tampered = String::from_utf8(bytes).expect("ASCII");
    assert!(
        s.verifier.verify(&tampered, NOW).is_err(),
        "a one-byte change still verified: {tampered}"
    );
    // More tokens than `batch::SINGLE_BELOW`, so EdDSA ones meet the batch equation (with
    // the key's terms summed): it must refuse exactly the tampered one.
    let batch = [&token, &token, &token, &tampered, &token, &token].map(String::as_str);
    for (i, r) in s.verifier.verify_batch(&batch, NOW).iter().enumerate() {
        assert_eq!(r.is_ok(), i != 3, "batch verdict {i} wrong for {tampered}");
    }
}
