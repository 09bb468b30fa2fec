//! Compact JWS parsing never panics, and whatever it accepts is canonical base64url:
//! every segment re-encodes to exactly the bytes that came in.
#![no_main]

use latchkey_core::{UnverifiedToken, b64, dangerous};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Strict base64url round trip on the raw input.
    if let Ok(bytes) = b64::decode(data) {
        assert_eq!(b64::encode(&bytes).as_bytes(), data);
    }
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = UnverifiedToken::parse(token) else {
        return;
    };
    let segments: Vec<&str> = token.split('.').collect();
    assert_eq!(segments.len(), 3);
    for segment in segments {
        let bytes = b64::decode(segment.as_bytes()).expect("parse accepted the segment");
        assert_eq!(b64::encode(&bytes), segment);
    }
    // Claims parsing (strict JSON, NumericDates) must not panic either.
    let _ = dangerous::insecure_claims(&parsed);
    let _ = (
        parsed.header().alg(),
        parsed.header().kid(),
        parsed.header().typ(),
    );
});
