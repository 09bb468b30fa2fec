//! JWK and JWK Set parsing and import never panic; an imported key exports to a JWK that
//! imports back to the same key with the same RFC 7638 thumbprint.
#![no_main]

use latchkey_core::{AlgorithmSet, Jwk, JwkSet, KeyPolicy, VerifyingKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = JwkSet::from_json(data);
    let Ok(jwk) = Jwk::from_json(data) else {
        return;
    };
    let _ = jwk.thumbprint();
    // Serialization round trip of the parsed document (`d` is never serialized).
    let json = serde_json::to_vec(&jwk).expect("a parsed JWK serializes");
    let again = Jwk::from_json(&json).expect("our own JSON parses");
    assert_eq!(
        again,
        Jwk {
            d: None,
            ..jwk.clone()
        }
    );

    let policy = KeyPolicy::default();
    let Ok(key) = jwk.to_verifying_key(AlgorithmSet::RSA_PKCS1, &policy) else {
        return;
    };
    let exported = if key.is_secret() {
        Jwk::from_secret_key(&key)
    } else {
        Jwk::from_public_key(&key)
    }
    .expect("an imported key exports");
    let reimported = exported
        .to_verifying_key(AlgorithmSet::RSA_PKCS1, &policy)
        .expect("an exported key imports");
    assert!(reimported == key, "JWK round trip changed the key");
    assert_eq!(reimported.thumbprint(), key.thumbprint());
    assert_eq!(
        VerifyingKey::thumbprint(&key),
        exported.thumbprint().expect("complete JWK")
    );
});
