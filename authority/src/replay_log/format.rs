//! The byte format of a segment (see the module docs of `replay_log`): its header, framed
//! records and their checks. Pure functions over bytes.

use latchkey_core::replay::Fingerprint;

pub(super) const MAGIC: &[u8; 4] = b"LKRL";
pub(super) const VERSION: u8 = 1;
pub(super) const ENTRY: u8 = 1;
pub(super) const OPEN: u8 = 2;
pub(super) const CHECKPOINT: u8 = 3;
pub(super) const CLOSE: u8 = 4;
/// Bytes of one entry record: length, kind, 24 payload bytes, check.
pub const ENTRY_BYTES: u64 = 30;
/// Longest sealed key a header may claim (a 32-byte key seals to 61 bytes).
const MAX_SEALED: usize = 256;

pub(super) fn check(bytes: &[u8]) -> [u8; 4] {
    let h = blake3::hash(bytes);
    let mut c = [0u8; 4];
    c.copy_from_slice(&h.as_bytes()[..4]);
    c
}

pub(super) fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(payload.len() + 6);
    // Payloads are at most 32 bytes (the kinds above).
    r.push(payload.len() as u8);
    r.push(kind);
    r.extend_from_slice(payload);
    let c = check(&r);
    r.extend_from_slice(&c);
    r
}

/// An entry record, framed as [`record`] frames it, without allocating (the token path).
pub(super) fn entry_record(
    fingerprint: Fingerprint,
    remember_until: u64,
) -> [u8; ENTRY_BYTES as usize] {
    let mut r = [0u8; ENTRY_BYTES as usize];
    r[0] = 24;
    r[1] = ENTRY;
    r[2..18].copy_from_slice(&fingerprint.0);
    r[18..26].copy_from_slice(&remember_until.to_le_bytes());
    let c = check(&r[..26]);
    r[26..].copy_from_slice(&c);
    r
}

pub(super) fn header(sealed_key: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(sealed_key.len() + 11);
    h.extend_from_slice(MAGIC);
    h.push(VERSION);
    // Sealed keys are short (MAX_SEALED).
    h.extend_from_slice(&(sealed_key.len() as u16).to_le_bytes());
    h.extend_from_slice(sealed_key);
    let c = check(&h);
    h.extend_from_slice(&c);
    h
}

pub(super) fn open_payload(boot_id: [u8; 16], now: u64, floor: u64) -> [u8; 32] {
    let mut p = [0u8; 32];
    p[..16].copy_from_slice(&boot_id);
    p[16..24].copy_from_slice(&now.to_le_bytes());
    p[24..].copy_from_slice(&floor.to_le_bytes());
    p
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// `(sealed key, rest)` if the header checks out.
pub(super) fn parse_header(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    if bytes.len() < 7 || &bytes[..4] != MAGIC || bytes[4] != VERSION {
        return None;
    }
    let len = usize::from(u16::from_le_bytes([bytes[5], bytes[6]]));
    if len > MAX_SEALED || bytes.len() < 7 + len + 4 {
        return None;
    }
    let body = &bytes[..7 + len];
    if bytes[7 + len..7 + len + 4] != check(body) {
        return None;
    }
    Some((&bytes[7..7 + len], &bytes[7 + len + 4..]))
}

/// `(kind, payload, rest)` if the next record is whole and checks out.
pub(super) fn parse_record(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let len = usize::from(*bytes.first()?);
    let end = 2 + len;
    if bytes.len() < end + 4 || bytes[end..end + 4] != check(&bytes[..end]) {
        return None;
    }
    Some((bytes[1], &bytes[2..end], &bytes[end + 4..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;

    fn fp(n: u8) -> Fingerprint {
        Fingerprint([n; 16])
    }

    #[test]
    fn record_framing_round_trips() {
        let mut payload = [0u8; 24];
        payload[..16].copy_from_slice(&fp(3).0);
        payload[16..].copy_from_slice(&T0.to_le_bytes());
        assert_eq!(entry_record(fp(3), T0)[..], record(ENTRY, &payload)[..]);
        let r = record(CHECKPOINT, &T0.to_le_bytes());
        let (kind, payload, rest) = parse_record(&r).unwrap();
        assert_eq!(
            (kind, payload, rest),
            (CHECKPOINT, &T0.to_le_bytes()[..], &[][..])
        );
        for cut in 0..r.len() {
            assert!(parse_record(&r[..cut]).is_none(), "cut at {cut}");
        }
        let h = header(b"sealed");
        assert_eq!(parse_header(&h), Some((&b"sealed"[..], &[][..])));
        assert!(parse_header(&h[..h.len() - 1]).is_none());
    }
}
