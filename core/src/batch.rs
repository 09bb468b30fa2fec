//! Ed25519 batch verification with strict-verification pre-checks.
//!
//! The batch equation is the one dalek's `verify_batch` checks, a random linear combination
//! of all the verification equations,
//!
//! ```text
//! −(∑ zᵢ·sᵢ)·B + ∑ zᵢ·Rᵢ + ∑ⱼ (∑_{i signed by Aⱼ} zᵢ·kᵢ)·Aⱼ = 0,   kᵢ = H(Rᵢ‖Aⱼ‖Mᵢ)
//! ```
//!
//! computed here with the terms of each distinct key `Aⱼ` summed into one coefficient before
//! the multiscalar multiplication. dalek multiplies every `Aᵢ` separately (2n + 1 points); the
//! tokens a verifier checks are signed by one or two keys, so this is n + 2 points, about half
//! the point arithmetic. Each signature is decoded once (R decompressed, s, k); a failed
//! batch is bisected with fresh coefficients over those decoded values, and groups of
//! [`SINGLE_BELOW`] or fewer fall back to strict single verification, so each bad token is
//! reported on its own.
//!
//! The coefficients zᵢ are 128-bit, drawn from a BLAKE3 stream keyed with fresh system
//! randomness and fed every signature and kᵢ, so they are unpredictable to whoever chose the
//! signatures (and still bound to the batch, as dalek's transcript-derived ones are, should
//! the system generator ever fail).
//!
//! Like dalek's equation, this one does not reject small-order or non-canonical `R`, and it
//! tests the sum rather than each equation on its own. So before batching, every signature is
//! pre-checked with byte comparisons only:
//! - `R` is a canonical encoding (y < p, and no sign bit on the x = 0 points),
//! - `R` is not one of the eight small-order points,
//! - `s` < L,
//! - `A` (the key) was refused at import if weak or non-canonical ([`VerifyingKey::ed25519`]).
//!
//! **What is guaranteed.** A token accepted by the batch path has canonical, non-small-order
//! `R` and `A`, canonical `s`, and satisfies the Ed25519 group equation up to a torsion term
//! (with probability 1 − 2⁻¹²⁸ over the coefficients). The only signatures it can accept that
//! `verify_strict` refuses are ones whose `R` carries a torsion component, and producing those
//! requires the private key (R depends on H(R‖A‖M)). Such a signature is therefore never a
//! forgery; at worst the key holder minted a second encoding of a token it could mint anyway.
//! Every token Latchkey mints passes both paths.
//!
//! [`VerifyingKey::ed25519`]: crate::keys::VerifyingKey::ed25519

use std::collections::HashMap;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity as _, VartimeMultiscalarMul as _};
use sha2::{Digest as _, Sha512};

use ed25519_dalek::VerifyingKey;

use crate::ed25519::strict_encoding;

/// Groups this small are verified one by one instead of bisected further.
pub const SINGLE_BELOW: usize = 4;

/// One signature to check.
#[derive(Debug, Clone, Copy)]
pub struct BatchItem<'a> {
    /// The signed bytes.
    pub message: &'a [u8],
    /// The 64-byte signature.
    pub signature: &'a [u8; 64],
    /// The key (decompressed once, at import).
    pub key: &'a VerifyingKey,
}

/// Verifies every item; `result[i]` is true iff item `i` is valid (see the module docs for
/// the exact guarantee of the batch path).
pub fn verify_batch(items: &[BatchItem<'_>]) -> Vec<bool> {
    let mut ok = vec![false; items.len()];
    let mut keys = Keys::default();
    // Items that do not decode stay refused; the rest go to the equation with their index.
    let candidates: Vec<(usize, Decoded)> = items
        .iter()
        .enumerate()
        .filter_map(|(i, it)| Some((i, decode(it, &mut keys)?)))
        .collect();
    let batch = Batch {
        items,
        keys: &keys.points,
    };
    batch.bisect(&candidates, &mut ok);
    ok
}

/// One signature in the form the batch equation needs; made once per item.
struct Decoded {
    r: EdwardsPoint,
    s: Scalar,
    /// k = H(R‖A‖M) mod L.
    k: Scalar,
    /// Index of the item's key in [`Keys::points`].
    key: usize,
}

/// The distinct keys of a batch.
#[derive(Default)]
struct Keys {
    index: HashMap<[u8; 32], usize>,
    points: Vec<EdwardsPoint>,
}

/// Decodes an item that passes the byte-level rules; `None` means it is invalid.
fn decode(item: &BatchItem<'_>, keys: &mut Keys) -> Option<Decoded> {
    if !strict_encoding(item.signature) {
        return None;
    }
    let (r_bytes, s_bytes) = item.signature.split_at(32);
    let r = CompressedEdwardsY::from_slice(r_bytes).ok()?.decompress()?;
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes.try_into().ok()?))?;
    let a = item.key.as_bytes();
    let mut h = Sha512::new();
    h.update(r_bytes);
    h.update(a);
    h.update(item.message);
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    let key = *keys.index.entry(*a).or_insert_with(|| {
        keys.points.push(item.key.to_edwards());
        keys.points.len() - 1
    });
    Some(Decoded { r, s, k, key })
}

struct Batch<'a, 'i> {
    items: &'a [BatchItem<'i>],
    keys: &'a [EdwardsPoint],
}

impl Batch<'_, '_> {
    /// Settles `group` (item index, decoded signature): the equation for all of them, or each
    /// half again, down to single verification.
    fn bisect(&self, group: &[(usize, Decoded)], ok: &mut [bool]) {
        if group.len() <= SINGLE_BELOW {
            for &(i, _) in group {
                let it = &self.items[i];
                ok[i] = crate::ed25519::verify_dalek_strict(it.key, it.message, it.signature);
            }
            return;
        }
        if self.equation_holds(group) {
            for &(i, _) in group {
                ok[i] = true;
            }
            return;
        }
        let (left, right) = group.split_at(group.len() / 2);
        self.bisect(left, ok);
        self.bisect(right, ok);
    }

    /// The batch equation over `group`, with fresh coefficients.
    fn equation_holds(&self, group: &[(usize, Decoded)]) -> bool {
        let zs = self.coefficients(group);
        let mut b_coefficient = Scalar::ZERO;
        let mut key_coefficients: Vec<Option<Scalar>> = vec![None; self.keys.len()];
        for ((_, d), z) in group.iter().zip(&zs) {
            b_coefficient += z * d.s;
            *key_coefficients[d.key].get_or_insert(Scalar::ZERO) += z * d.k;
        }
        // Both sides as vectors of one length: dalek asserts the iterators' sizes agree.
        let mut scalars = Vec::with_capacity(1 + zs.len() + self.keys.len());
        let mut points = Vec::with_capacity(scalars.capacity());
        scalars.push(-b_coefficient);
        points.push(ED25519_BASEPOINT_POINT);
        scalars.extend_from_slice(&zs);
        points.extend(group.iter().map(|(_, d)| d.r));
        for (c, a) in key_coefficients.iter().zip(self.keys) {
            if let Some(c) = c {
                scalars.push(*c);
                points.push(*a);
            }
        }
        EdwardsPoint::vartime_multiscalar_mul(scalars, points).is_identity()
    }

    /// 128-bit coefficients from a BLAKE3 stream keyed with fresh randomness and fed every
    /// signature of the group and its k.
    fn coefficients(&self, group: &[(usize, Decoded)]) -> Vec<Scalar> {
        let mut seed = [0u8; 32];
        // If the system generator failed, the stream is still bound to the batch (as dalek's
        // transcript-derived coefficients are), just no longer secret.
        let _ = aws_lc_rs::rand::fill(&mut seed);
        let mut h = blake3::Hasher::new_keyed(&seed);
        for (i, d) in group {
            h.update(self.items[*i].signature);
            h.update(d.k.as_bytes());
        }
        let mut stream = h.finalize_xof();
        group
            .iter()
            .map(|_| {
                let mut z = [0u8; 16];
                stream.fill(&mut z);
                Scalar::from(u128::from_le_bytes(z))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ed25519::{L, SMALL_ORDER_Y};
    use ed25519_dalek::{Signature, Signer as _, Verifier as _};

    fn add_l_to_s(sig: &mut [u8; 64]) {
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(sig[32 + i]) + u16::from(L[i]) + carry;
            sig[32 + i] = v as u8;
            carry = v >> 8;
        }
    }

    /// A signature with R = identity that passes the cofactorless equation: s = k·a with
    /// k = H(R‖A‖M). Only the key holder can make one; `verify_strict` refuses it, plain
    /// cofactorless verification (and aws-lc on its own) accepts it.
    fn identity_r_signature(key: &ed25519_dalek::SigningKey, msg: &[u8]) -> [u8; 64] {
        use curve25519_dalek::Scalar;
        use sha2::{Digest as _, Sha512};
        let h = Sha512::digest(key.to_bytes());
        let mut a = [0u8; 32];
        a.copy_from_slice(&h[..32]);
        a[0] &= 248;
        a[31] &= 127;
        a[31] |= 64;
        let a = Scalar::from_bytes_mod_order(a);
        let r = SMALL_ORDER_Y[1];
        let mut hasher = Sha512::new();
        hasher.update(r);
        hasher.update(key.verifying_key().as_bytes());
        hasher.update(msg);
        let k = Scalar::from_bytes_mod_order_wide(&hasher.finalize().into());
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r);
        sig[32..].copy_from_slice((k * a).as_bytes());
        sig
    }

    /// Both single-verification backends must accept exactly what dalek's `verify_strict`
    /// accepts, including the signatures a cofactorless check alone lets in.
    #[test]
    fn single_backends_are_verify_strict() {
        use crate::alg::Algorithm;
        use crate::ed25519::{
            verify_aws_lc_strict as ed25519_aws_lc_strict,
            verify_dalek_strict as ed25519_dalek_strict,
        };
        use aws_lc_rs::signature::{ED25519, ParsedPublicKey};
        let (keys, msgs, sigs) = items_for(6);
        for ((key, msg), sig) in keys.iter().zip(&msgs).zip(&sigs) {
            let ours =
                crate::keys::VerifyingKey::ed25519(key.verifying_key().as_bytes()).expect("key");
            let dalek = key.verifying_key();
            let lc = ParsedPublicKey::new(&ED25519, dalek.as_bytes()).expect("aws-lc key");
            let crafted = identity_r_signature(key, msg);
            assert!(
                dalek.verify(msg, &Signature::from_bytes(&crafted)).is_ok(),
                "the crafted signature must pass the cofactorless equation"
            );
            let mut cases = vec![*sig, crafted];
            let mut plus_l = *sig;
            add_l_to_s(&mut plus_l);
            cases.push(plus_l);
            for y in SMALL_ORDER_Y {
                let mut small = *sig;
                small[..32].copy_from_slice(&y);
                cases.push(small);
            }
            for bit in [0usize, 7, 100, 255, 256, 300, 511] {
                let mut flipped = *sig;
                flipped[bit / 8] ^= 1 << (bit % 8);
                cases.push(flipped);
            }
            for (n, case) in cases.iter().enumerate() {
                let strict = dalek
                    .verify_strict(msg, &Signature::from_bytes(case))
                    .is_ok();
                assert_eq!(strict, n == 0, "case {n}");
                assert_eq!(
                    ed25519_dalek_strict(&dalek, msg, case),
                    strict,
                    "dalek, case {n}"
                );
                assert_eq!(
                    ed25519_aws_lc_strict(&lc, msg, case),
                    strict,
                    "aws-lc, case {n}"
                );
                // And whichever backend this process picked.
                let picked = ours.verify(Algorithm::EdDSA, msg, case).is_ok();
                assert_eq!(picked, strict, "picked backend, case {n}");
            }
        }
    }

    fn items_for(n: usize) -> (Vec<ed25519_dalek::SigningKey>, Vec<Vec<u8>>, Vec<[u8; 64]>) {
        let keys: Vec<_> = (0..n)
            .map(|i| ed25519_dalek::SigningKey::from_bytes(&[i as u8 + 1; 32]))
            .collect();
        let msgs: Vec<Vec<u8>> = (0..n).map(|i| format!("token {i}").into_bytes()).collect();
        let sigs = keys
            .iter()
            .zip(&msgs)
            .map(|(k, m)| k.sign(m).to_bytes())
            .collect();
        (keys, msgs, sigs)
    }

    #[test]
    fn batch_finds_each_bad_signature() {
        let (keys, msgs, mut sigs) = items_for(70);
        sigs[3][10] ^= 1; // bad R
        sigs[40][40] ^= 1; // bad s
        sigs[69] = [0; 64]; // small-order R (identity... y = 0)
        let vks: Vec<VerifyingKey> = keys.iter().map(|k| k.verifying_key()).collect();
        let items: Vec<BatchItem<'_>> = (0..70)
            .map(|i| BatchItem {
                message: &msgs[i],
                signature: &sigs[i],
                key: &vks[i],
            })
            .collect();
        let ok = verify_batch(&items);
        for (i, good) in ok.iter().enumerate() {
            assert_eq!(*good, ![3, 40, 69].contains(&i), "item {i}");
        }
    }

    #[test]
    fn batch_rejects_non_canonical_s() {
        let (keys, msgs, mut sigs) = items_for(8);
        // s + L is the same scalar mod L but non-canonical; strict and batch must refuse.
        add_l_to_s(&mut sigs[5]);
        let vks: Vec<VerifyingKey> = keys.iter().map(|k| k.verifying_key()).collect();
        let items: Vec<BatchItem<'_>> = (0..8)
            .map(|i| BatchItem {
                message: &msgs[i],
                signature: &sigs[i],
                key: &vks[i],
            })
            .collect();
        let ok = verify_batch(&items);
        assert_eq!(ok, (0..8).map(|i| i != 5).collect::<Vec<_>>());
    }

    /// Tokens as a verifier sees them: many signatures under one or two keys, so the key terms
    /// are aggregated.
    fn same_key_items(n: usize, keys: usize) -> (Vec<VerifyingKey>, Vec<Vec<u8>>, Vec<[u8; 64]>) {
        let signers: Vec<_> = (0..keys)
            .map(|i| ed25519_dalek::SigningKey::from_bytes(&[i as u8 + 40; 32]))
            .collect();
        let msgs: Vec<Vec<u8>> = (0..n)
            .map(|i| format!("access token {i}").into_bytes())
            .collect();
        let sigs = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| signers[i % keys].sign(m).to_bytes())
            .collect();
        (
            signers.iter().map(|k| k.verifying_key()).collect(),
            msgs,
            sigs,
        )
    }

    fn run(vks: &[VerifyingKey], msgs: &[Vec<u8>], sigs: &[[u8; 64]]) -> Vec<bool> {
        let items: Vec<BatchItem<'_>> = (0..msgs.len())
            .map(|i| BatchItem {
                message: &msgs[i],
                signature: &sigs[i],
                key: &vks[i % vks.len()],
            })
            .collect();
        verify_batch(&items)
    }

    #[test]
    fn aggregated_keys_accept_good_batches_and_find_bad_items() {
        for keys in [1, 2, 3] {
            let (vks, msgs, sigs) = same_key_items(96, keys);
            assert!(run(&vks, &msgs, &sigs).iter().all(|&g| g), "{keys} key(s)");
            // A signature over another message, and one of another key of the batch.
            let mut bad = sigs.clone();
            bad[7] = bad[8];
            if keys > 1 {
                bad[50] = ed25519_dalek::SigningKey::from_bytes(&[200; 32])
                    .sign(&msgs[50])
                    .to_bytes();
            }
            let ok = run(&vks, &msgs, &bad);
            for (i, good) in ok.iter().enumerate() {
                let expect_bad = i == 7 || (keys > 1 && i == 50);
                assert_eq!(*good, !expect_bad, "{keys} key(s), item {i}");
            }
        }
    }

    /// Errors that cancel in the plain sum must not cancel in the batch: with s₁ + δ and
    /// s₂ − δ under one key, ∑ sᵢ is unchanged, and only the random coefficients catch it.
    #[test]
    fn cancelling_errors_under_one_key_are_caught() {
        let (vks, msgs, mut sigs) = same_key_items(64, 1);
        let delta = Scalar::from(12345u64);
        let shift = |sig: &mut [u8; 64], by: Scalar| {
            let s = Scalar::from_canonical_bytes(sig[32..].try_into().unwrap()).unwrap();
            sig[32..].copy_from_slice((s + by).as_bytes());
        };
        shift(&mut sigs[10], delta);
        shift(&mut sigs[20], -delta);
        let ok = run(&vks, &msgs, &sigs);
        for (i, good) in ok.iter().enumerate() {
            assert_eq!(*good, i != 10 && i != 20, "item {i}");
        }
    }

    /// The batch path agrees with dalek's own batch equation and with `verify_strict` on
    /// everything both accept or refuse.
    #[test]
    fn agrees_with_dalek_batch_and_strict() {
        let (keys, msgs, sigs) = items_for(24);
        let vks: Vec<VerifyingKey> = keys.iter().map(|k| k.verifying_key()).collect();
        let dsigs: Vec<Signature> = sigs.iter().map(Signature::from_bytes).collect();
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        assert!(ed25519_dalek::verify_batch(&refs, &dsigs, &vks).is_ok());
        let ok = run(&vks, &msgs, &sigs);
        assert!(ok.iter().all(|&g| g));
        for (i, sig) in sigs.iter().enumerate() {
            assert!(
                vks[i]
                    .verify_strict(&msgs[i], &Signature::from_bytes(sig))
                    .is_ok()
            );
        }
    }

    #[test]
    fn empty_batch() {
        assert!(verify_batch(&[]).is_empty());
    }
}
