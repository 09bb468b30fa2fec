//! `jti` generation without locks.
//!
//! A [`JtiGenerator`] owns 16 random bytes chosen once (its *prefix*) and an [`AtomicU64`]
//! counter. Every call takes the next counter value with one `fetch_add` and combines it with
//! the prefix, so concurrent minting threads never wait on each other and never call the OS
//! random source on the hot path.
//!
//! **Uniqueness argument.**
//! - *Within one generator*: `fetch_add` hands every caller a distinct counter value, and both
//!   encodings are injective in the counter (the compact form appends it verbatim; the UUID form
//!   XORs it into the low half, a bijection for counters below 2^62). The counter only repeats
//!   after 2^64 calls (2^62 for the UUID form): 146 years at a billion `jti`s per second.
//! - *Across generators* (restarts, several processes): two generators can only collide if
//!   their random prefixes collide. For the compact form that needs all 128 prefix bits equal:
//!   with `g` generators ever created the chance is about `g² / 2^129`. The UUID form keeps
//!   122 random bits (6 are fixed by the UUID version and variant); a collision needs the 58
//!   high random bits equal *and* the low counter ranges to overlap, about
//!   `g² · n / 2^120` for `n` `jti`s per generator — negligible for any real deployment.
//!
//! The prefix must come from a cryptographically secure source ([`JtiGenerator::random`]
//! uses the OS through aws-lc-rs); [`JtiGenerator::new`] takes the bytes so tests are
//! deterministic.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Length of a compact `jti`: 22 base64url characters of prefix + 11 of counter.
pub const COMPACT_LEN: usize = 33;
/// Length of a UUID-formatted `jti` (`8-4-4-4-12` hex digits).
pub const UUID_LEN: usize = 36;

/// Hands out unique `jti` values from any number of threads without locking.
pub struct JtiGenerator {
    prefix: [u8; 16],
    /// `prefix` in base64url, computed once: the compact form only appends the counter.
    prefix_b64: String,
    counter: AtomicU64,
}

impl JtiGenerator {
    /// A generator whose prefix is `prefix`. The bytes must be secret and random; see
    /// [`JtiGenerator::random`].
    pub fn new(prefix: [u8; 16]) -> Self {
        Self {
            prefix,
            prefix_b64: URL_SAFE_NO_PAD.encode(prefix),
            counter: AtomicU64::new(0),
        }
    }

    /// A generator with a fresh prefix from the operating system's secure random source.
    pub fn random() -> Result<Self, crate::Error> {
        let mut prefix = [0u8; 16];
        aws_lc_rs::rand::fill(&mut prefix).map_err(|_| crate::Error::Crypto)?;
        Ok(Self::new(prefix))
    }

    /// The next compact `jti`: 33 base64url characters.
    pub fn next_compact(&self) -> String {
        let mut out = String::with_capacity(COMPACT_LEN);
        self.write_compact(&mut out);
        out
    }

    /// Appends the next compact `jti` to `out` (saves an allocation when building a claim set).
    pub fn write_compact(&self, out: &mut String) {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        out.push_str(&self.prefix_b64);
        // The prefix encoding has a fixed length, so prefix ‖ counter splits unambiguously.
        URL_SAFE_NO_PAD.encode_string(n.to_be_bytes(), out);
    }

    /// The next `jti` formatted as a version-4 UUID (lower-case hex), the shape MindSphere
    /// clients use for their own `jti`s.
    pub fn next_uuid(&self) -> String {
        let mut out = String::with_capacity(UUID_LEN);
        self.write_uuid(&mut out);
        out
    }

    /// Appends the next UUID-formatted `jti` to `out`.
    pub fn write_uuid(&self, out: &mut String) {
        // Two bits of the counter's low half are overwritten by the variant; masking keeps the
        // encoding injective (the counter would need 2^62 calls to get there).
        let n = self.counter.fetch_add(1, Ordering::Relaxed) & ((1 << 62) - 1);
        let mut bytes = self.prefix;
        let (hi, lo) = bytes.split_at_mut(8);
        for (b, c) in lo.iter_mut().zip(n.to_be_bytes()) {
            *b ^= c;
        }
        hi[6] = (hi[6] & 0x0f) | 0x40; // version 4
        lo[0] = (lo[0] & 0x3f) | 0x80; // RFC 9562 variant
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in bytes.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                out.push('-');
            }
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

impl fmt::Debug for JtiGenerator {
    // The prefix is not a key, but keeping it out of logs keeps future `jti`s unpredictable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JtiGenerator")
            .field("issued", &self.counter.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn compact_shape() {
        let g = JtiGenerator::new([7; 16]);
        let a = g.next_compact();
        let b = g.next_compact();
        assert_eq!(a.len(), COMPACT_LEN);
        assert_ne!(a, b);
        assert_eq!(a[..22], b[..22], "same prefix");
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        let counter = URL_SAFE_NO_PAD.decode(&b[22..]).unwrap();
        assert_eq!(counter, 1u64.to_be_bytes());
    }

    #[test]
    fn uuid_shape() {
        let g = JtiGenerator::new([0xff; 16]);
        let u = g.next_uuid();
        assert_eq!(u.len(), UUID_LEN);
        let groups: Vec<_> = u.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert_eq!(&u[14..15], "4", "version nibble: {u}");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "variant: {u}");
        assert!(
            u.bytes()
                .all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
    }

    #[test]
    fn different_prefixes_differ() {
        let a = JtiGenerator::new([1; 16]);
        let b = JtiGenerator::new([2; 16]);
        assert_ne!(a.next_compact(), b.next_compact());
        assert_ne!(a.next_uuid(), b.next_uuid());
    }

    #[test]
    fn random_generators_have_distinct_prefixes() {
        let a = JtiGenerator::random().unwrap();
        let b = JtiGenerator::random().unwrap();
        assert_ne!(a.next_compact()[..22], b.next_compact()[..22]);
    }

    #[test]
    fn debug_hides_prefix() {
        let g = JtiGenerator::new([0xab; 16]);
        let jti = g.next_compact();
        let debug = format!("{g:?}");
        assert!(!debug.contains(&jti[..22]), "{debug}");
        assert!(debug.contains("issued: 1"), "{debug}");
    }

    #[test]
    fn unique_across_threads() {
        const THREADS: usize = 4;
        const PER_THREAD: usize = 20_000;
        let g = JtiGenerator::new([9; 16]);
        let all: Vec<Vec<String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let g = &g;
                    s.spawn(move || {
                        (0..PER_THREAD)
                            .map(|i| {
                                if (i + t) % 2 == 0 {
                                    g.next_compact()
                                } else {
                                    g.next_uuid()
                                }
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let set: HashSet<&String> = all.iter().flatten().collect();
        assert_eq!(set.len(), THREADS * PER_THREAD);
    }

    proptest::proptest! {
        /// The UUID form is injective in the counter for a fixed prefix.
        #[test]
        fn uuid_injective(prefix: [u8; 16], a in 0u64..(1 << 62), b in 0u64..(1 << 62)) {
            proptest::prop_assume!(a != b);
            let ga = JtiGenerator::new(prefix);
            ga.counter.store(a, Ordering::Relaxed);
            let gb = JtiGenerator::new(prefix);
            gb.counter.store(b, Ordering::Relaxed);
            proptest::prop_assert_ne!(ga.next_uuid(), gb.next_uuid());
        }
    }
}
