//! Strict base64url (RFC 7515 §2): URL-safe alphabet, no padding, no whitespace, canonical
//! trailing bits. base64 0.22's `URL_SAFE_NO_PAD` engine rejects padding and non-zero trailing
//! bits; the tests below pin that down so an upgrade that relaxes it fails loudly.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// Largest compact token we look at; checked before any decoding. Latchkey's own tokens are
/// well under 2 KiB, agents' RS512 assertions with 4096-bit keys under 4 KiB.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Input was not strict base64url (or did not fit the output buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidBase64;

/// Decodes strict base64url into a new vector.
pub fn decode(input: &[u8]) -> Result<Vec<u8>, InvalidBase64> {
    URL_SAFE_NO_PAD.decode(input).map_err(|_| InvalidBase64)
}

/// Decodes strict base64url into `out`, returning the number of bytes written. Fails if `out`
/// is too small (the callers size it for the largest signature they accept).
pub fn decode_into(input: &[u8], out: &mut [u8]) -> Result<usize, InvalidBase64> {
    URL_SAFE_NO_PAD
        .decode_slice(input, out)
        .map_err(|_| InvalidBase64)
}

/// Appends the base64url encoding of `input` to `out`.
pub fn encode_into(input: &[u8], out: &mut String) {
    URL_SAFE_NO_PAD.encode_string(input, out);
}

/// Encodes into a new string.
pub fn encode(input: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(input)
}

/// Length of the unpadded encoding of `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// Standard (padded) base64 for PEM bodies.
pub(crate) fn encode_standard(input: &[u8]) -> String {
    STANDARD.encode(input)
}

/// Standard base64 for PEM bodies; whitespace must already be stripped.
pub(crate) fn decode_standard(input: &[u8]) -> Result<Vec<u8>, InvalidBase64> {
    STANDARD.decode(input).map_err(|_| InvalidBase64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Option<&[u8]>) {
        assert_eq!(
            decode(input.as_bytes()).ok().as_deref(),
            expect,
            "{input:?}"
        );
    }

    #[test]
    fn accepts_canonical_unpadded() {
        check("", Some(b""));
        check("Zg", Some(b"f"));
        check("Zm8", Some(b"fo"));
        check("Zm9v", Some(b"foo"));
        check("-_8", Some(&[0xfb, 0xff]));
    }

    #[test]
    fn rejects_padding_standard_alphabet_and_whitespace() {
        check("Zg==", None);
        check("Zm8=", None);
        check("+_8", None);
        check("-/8", None);
        check("Zm 9v", None);
        check("Zm9v\n", None);
        check(" Zm9v", None);
    }

    #[test]
    fn rejects_non_canonical_trailing_bits() {
        // "Zg" is 'f'; "Zh" carries the same byte with non-zero trailing bits.
        check("Zh", None);
        // 3 chars encode 2 bytes with 2 spare bits: "Zm8" canonical, "Zm9" not.
        check("Zm9", None);
        check("Zm-", None);
    }

    #[test]
    fn rejects_impossible_length() {
        // One leftover character cannot encode a byte.
        check("Z", None);
        check("Zm9vZ", None);
    }

    #[test]
    fn encoded_len_matches_encoder() {
        for n in 0..100 {
            assert_eq!(encode(&vec![7u8; n]).len(), encoded_len(n));
        }
    }

    #[test]
    fn decode_into_refuses_small_buffer() {
        let mut out = [0u8; 2];
        assert!(decode_into(b"Zm9v", &mut out).is_err());
        let mut out = [0u8; 3];
        assert_eq!(decode_into(b"Zm9v", &mut out), Ok(3));
    }
}
