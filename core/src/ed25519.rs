//! The Ed25519 strictness rules every verification path shares.
//!
//! dalek's `verify_strict` refuses small-order and non-canonical `R` and `A` and `s` ≥ L. The
//! rules that need only bytes live here, once: the single-verification backends and the batch
//! path (`batch`) check a signature with [`strict_encoding`], and `VerifyingKey::ed25519`
//! vets a key with [`is_canonical_point`] at import. With them, any backend that tests the
//! cofactorless equation by comparing `R`'s bytes accepts exactly what `verify_strict`
//! accepts (differential test in `batch`).

use aws_lc_rs::signature as lc;

/// Which library checks single Ed25519 signatures in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ed25519Backend {
    /// ed25519-dalek `verify_strict`, on its AVX-512 IFMA backend.
    Dalek,
    /// aws-lc-rs after `ed25519::strict_encoding` (the byte-level `verify_strict` rules).
    AwsLc,
}

/// The faster of the two on this CPU: dalek when it was built with its IFMA backend (see
/// `.cargo/config.toml`) and the CPU has AVX-512 IFMA, aws-lc-rs otherwise.
pub fn ed25519_backend() -> Ed25519Backend {
    static CHOICE: std::sync::OnceLock<Ed25519Backend> = std::sync::OnceLock::new();
    *CHOICE.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", curve25519_dalek_backend = "avx512"))]
        if std::arch::is_x86_feature_detected!("avx512ifma")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            return Ed25519Backend::Dalek;
        }
        Ed25519Backend::AwsLc
    })
}

/// `verify_strict` without its cost: dalek's `verify_strict` decompresses R (a field
/// exponentiation, ~30 % of the call) only to test it for small order. The byte-level rules
/// in [`strict_encoding`] decide the same thing, and the plain `verify` then
/// checks the same cofactorless equation (R compared by its bytes, s < L) that
/// `verify_strict` checks; A was vetted at import.
pub(crate) fn verify_dalek_strict(
    key: &ed25519_dalek::VerifyingKey,
    message: &[u8],
    sig: &[u8; 64],
) -> bool {
    use ed25519_dalek::Verifier as _;
    strict_encoding(sig)
        && key
            .verify(message, &ed25519_dalek::Signature::from_bytes(sig))
            .is_ok()
}

/// aws-lc checks the cofactorless equation [s]B = R + [k]A by comparing R's bytes with the
/// canonical encoding of the computed point; with the encoding rules checked first and A
/// vetted at import, that is `verify_strict`.
pub(crate) fn verify_aws_lc_strict(
    key: &lc::ParsedPublicKey,
    message: &[u8],
    sig: &[u8; 64],
) -> bool {
    strict_encoding(sig) && key.verify_sig(message, sig).is_ok()
}

/// y-coordinates (little-endian, sign bit clear) of the small-order points: 0 (order 4),
/// 1 (identity), p − 1 (order 2) and ±y₈ (order 8). From libsodium's blocklist; the tests
/// check each against dalek's own `is_weak`.
pub(crate) const SMALL_ORDER_Y: [[u8; 32]; 5] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
];

/// The field prime p = 2²⁵⁵ − 19, little-endian.
pub(crate) const P: [u8; 32] = [
    0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
];

fn y_of(point: &[u8; 32]) -> [u8; 32] {
    let mut y = *point;
    y[31] &= 0x7f;
    y
}

/// The group order L = 2²⁵² + 27742317777372353535851937790883648493, little-endian.
pub(crate) const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// The rules of `verify_strict` that only need the signature's bytes: `R` canonical and not
/// of small order, `s` < L. With these (and the key's rules, checked at import) any backend
/// that tests the cofactorless equation by comparing `R`'s bytes agrees with `verify_strict`.
pub(crate) fn strict_encoding(signature: &[u8; 64]) -> bool {
    let (r, s) = signature.split_at(32);
    let (Ok(r), Ok(s)) = (<&[u8; 32]>::try_from(r), <&[u8; 32]>::try_from(s)) else {
        return false;
    };
    is_canonical_point(r) && !is_small_order(r) && less_than(s, &L)
}

/// Little-endian comparison a < b.
fn less_than(a: &[u8; 32], b: &[u8; 32]) -> bool {
    for i in (0..32).rev() {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
    }
    false
}

/// True if `point` is the canonical encoding of its point: y < p, and the sign bit is clear
/// when x = 0 (y = ±1).
pub(crate) fn is_canonical_point(point: &[u8; 32]) -> bool {
    let y = y_of(point);
    if !less_than(&y, &P) {
        return false;
    }
    let sign = point[31] & 0x80 != 0;
    !(sign && (y == SMALL_ORDER_Y[1] || y == SMALL_ORDER_Y[2]))
}

/// True if `point` encodes (canonically or not) a point of small order.
pub(crate) fn is_small_order(point: &[u8; 32]) -> bool {
    let y = y_of(point);
    SMALL_ORDER_Y.contains(&y)
        // y ≥ p reduces mod p; only p and p + 1 (≡ 0, 1) fit in 255 bits among small-order ys.
        || y == P
        || y == {
            let mut p1 = P;
            p1[0] += 1;
            p1
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::VerifyingKey;

    #[test]
    fn small_order_table_matches_dalek() {
        for y in SMALL_ORDER_Y {
            for sign in [0u8, 0x80] {
                let mut enc = y;
                enc[31] |= sign;
                assert!(is_small_order(&enc));
                if let Ok(key) = VerifyingKey::from_bytes(&enc) {
                    assert!(key.is_weak(), "{enc:02x?} decompresses but is not weak");
                }
            }
        }
        // Order-8 points decompress, so the table really contains curve points.
        assert!(VerifyingKey::from_bytes(&SMALL_ORDER_Y[3]).is_ok_and(|k| k.is_weak()));
        assert!(VerifyingKey::from_bytes(&SMALL_ORDER_Y[4]).is_ok_and(|k| k.is_weak()));
    }

    #[test]
    fn canonical_encoding_rules() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let a = key.verifying_key().to_bytes();
        assert!(is_canonical_point(&a));
        assert!(!is_small_order(&a));
        assert!(!is_canonical_point(&P));
        let mut high = [0xffu8; 32];
        high[31] = 0x7f;
        assert!(!is_canonical_point(&high));
        let mut neg_identity = SMALL_ORDER_Y[1];
        neg_identity[31] |= 0x80;
        assert!(!is_canonical_point(&neg_identity));
    }
}
