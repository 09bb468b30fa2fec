//! Strict base64url (RFC 7515 §2): URL-safe alphabet, no padding, no whitespace, canonical
//! trailing bits.
//!
//! Decoding is our own table-driven loop rather than base64 0.22's `URL_SAFE_NO_PAD` engine:
//! every token verification decodes all three segments, and the generic engine cost about
//! twice the instructions per character. The engine is still the reference: a proptest below
//! checks that both accept exactly the same inputs and produce the same bytes. Encoding and
//! standard (PEM) base64 stay with the crate.

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
    let mut out = vec![0u8; decoded_len(input.len()).ok_or(InvalidBase64)?];
    let n = decode_into(input, &mut out)?;
    out.truncate(n);
    Ok(out)
}

/// Decodes strict base64url into `out`, returning the number of bytes written. Fails if `out`
/// is too small (the callers size it for the largest signature they accept). On failure `out`
/// may hold partial output.
pub fn decode_into(input: &[u8], out: &mut [u8]) -> Result<usize, InvalidBase64> {
    let n = decoded_len(input.len()).ok_or(InvalidBase64)?;
    let out = out.get_mut(..n).ok_or(InvalidBase64)?;
    let (quads, tail) = input.as_chunks::<4>();
    let (triples, rest) = out.as_chunks_mut::<3>();
    // Each table holds a character's sextet already shifted into place, or `INVALID` (bit
    // 31, outside the 24 data bits). OR-ing every word into `bad` lets one test at the end
    // catch any invalid character, keeping the loop free of branches.
    let mut bad = 0u32;
    for (q, t) in quads.iter().zip(triples.iter_mut()) {
        let w = DECODE[0][usize::from(q[0])]
            | DECODE[1][usize::from(q[1])]
            | DECODE[2][usize::from(q[2])]
            | DECODE[3][usize::from(q[3])];
        bad |= w;
        let [_, x, y, z] = w.to_be_bytes();
        *t = [x, y, z];
    }
    match (tail, rest) {
        ([], []) => {}
        ([a, b], [x]) => {
            let w = DECODE[0][usize::from(*a)] | DECODE[1][usize::from(*b)];
            // Two characters carry 12 bits for 8: the low 4 must be zero (canonical).
            if w & 0x00_ffff != 0 {
                return Err(InvalidBase64);
            }
            bad |= w;
            *x = w.to_be_bytes()[1];
        }
        ([a, b, c], [x, y]) => {
            let w = DECODE[0][usize::from(*a)]
                | DECODE[1][usize::from(*b)]
                | DECODE[2][usize::from(*c)];
            // Three characters carry 18 bits for 16: the low 2 must be zero.
            if w & 0x00_00ff != 0 {
                return Err(InvalidBase64);
            }
            bad |= w;
            let [_, hi, lo, _] = w.to_be_bytes();
            *x = hi;
            *y = lo;
        }
        // `decoded_len` refused a single leftover character, so nothing else can occur.
        _ => return Err(InvalidBase64),
    }
    if bad & INVALID != 0 {
        return Err(InvalidBase64);
    }
    Ok(n)
}

/// Bytes encoded by `len` unpadded characters; `None` for a length no encoding has.
const fn decoded_len(len: usize) -> Option<usize> {
    match len % 4 {
        1 => None,
        r => Some(len / 4 * 3 + r.saturating_sub(1)),
    }
}

/// For each position in a 4-character group, each byte's sextet shifted into place in the
/// 24-bit group; bytes outside the URL-safe alphabet (padding, `+`, `/`, whitespace,
/// non-ASCII) are `INVALID`.
static DECODE: [[u32; 256]; 4] = {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut tables = [[INVALID; 256]; 4];
    let mut pos = 0;
    while pos < 4 {
        let mut i = 0;
        while i < alphabet.len() {
            tables[pos][alphabet[i] as usize] = (i as u32) << (18 - 6 * pos);
            i += 1;
        }
        pos += 1;
    }
    tables
};
const INVALID: u32 = 1 << 31;

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
    use proptest::prelude::*;

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
    fn every_single_invalid_byte_is_refused_in_every_position() {
        let good = b"Zm9vYmFyYmF6";
        for pos in 0..good.len() {
            for byte in 0..=255u8 {
                if DECODE[0][usize::from(byte)] != INVALID {
                    continue;
                }
                let mut bad = good.to_vec();
                bad[pos] = byte;
                assert_eq!(decode(&bad), Err(InvalidBase64), "{byte:#x} at {pos}");
            }
        }
    }

    proptest! {
        /// Our decoder and base64's strict engine agree on every input: same acceptance,
        /// same bytes. Characters come mostly from the alphabet so long valid runs occur.
        #[test]
        fn decoder_matches_reference_engine(
            input in proptest::collection::vec(
                prop_oneof![
                    8 => proptest::sample::select(
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".to_vec()
                    ),
                    1 => any::<u8>(),
                ],
                0..64,
            )
        ) {
            let reference = URL_SAFE_NO_PAD.decode(&input).ok();
            prop_assert_eq!(decode(&input).ok(), reference);
        }

        #[test]
        fn round_trips_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let encoded = encode(&bytes);
            prop_assert_eq!(decode(encoded.as_bytes()), Ok(bytes.clone()));
            let mut out = vec![0u8; bytes.len()];
            prop_assert_eq!(decode_into(encoded.as_bytes(), &mut out), Ok(bytes.len()));
            prop_assert_eq!(out, bytes);
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
