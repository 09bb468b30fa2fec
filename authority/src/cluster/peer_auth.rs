//! Authentication of requests between the nodes of a cluster. Every node holds the same
//! master key, so each derives the same peer key from it (`MasterKey::peer_auth_key`) and
//! signs what it sends with HMAC-SHA256: the request's time, a random nonce, the path and the
//! body; the answer is signed over the request's nonce and its own body, so an answer cannot be
//! swapped for another request's.
//!
//! A receiver refuses, before it parses anything: a body over [`MAX_BODY`], a header it cannot
//! recognise, a MAC that does not verify (compared in constant time by `hmac::verify`), a time
//! more than [`WINDOW`] seconds from its own clock, and a nonce it has already accepted within
//! that window. Remembered nonces are bounded by [`MAX_NONCES`]; when that many are live, new
//! requests are refused as busy rather than letting the table grow.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_lc_rs::hmac;

/// The request header carrying `v1 TIME NONCE MAC` and the answer header carrying `v1 MAC`.
pub const AUTH_HEADER: &str = "x-latchkey-peer-auth";
/// Largest peer request or answer body, in bytes.
pub const MAX_BODY: usize = 256 * 1024;
/// Seconds a request's time may differ from the receiver's clock (nodes run NTP).
pub const WINDOW: u64 = 10;
/// Most nonces remembered at once: far above the batches a node sends in [`WINDOW`] seconds.
pub const MAX_NONCES: usize = 200_000;

const REQUEST: &[u8] = b"latchkey peer request v1\0";
const ANSWER: &[u8] = b"latchkey peer answer v1\0";

/// A random request nonce.
pub type Nonce = [u8; 16];

/// Why a peer request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRefusal {
    /// No authentication header, or one that does not parse.
    Malformed,
    /// The body is larger than [`MAX_BODY`].
    Oversize,
    /// The MAC does not verify: not a node of this cluster.
    BadMac,
    /// The time is outside the window.
    Stale,
    /// The nonce was already accepted.
    Replayed,
    /// [`MAX_NONCES`] nonces are live; retry shortly.
    Busy,
}

impl std::fmt::Display for PeerRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PeerRefusal::Malformed => "peer authentication header missing or malformed",
            PeerRefusal::Oversize => "peer request body too large",
            PeerRefusal::BadMac => "peer authentication failed",
            PeerRefusal::Stale => "peer request time outside the accepted window",
            PeerRefusal::Replayed => "peer request already seen",
            PeerRefusal::Busy => "too many recent peer requests",
        })
    }
}

/// Signs and checks peer requests under the cluster's peer key.
pub struct PeerAuth {
    key: hmac::Key,
    /// Accepted nonces and when they may be forgotten.
    seen: Mutex<HashMap<Nonce, u64>>,
}

impl std::fmt::Debug for PeerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerAuth").finish_non_exhaustive()
    }
}

impl PeerAuth {
    pub fn new(key: &[u8; 32]) -> PeerAuth {
        PeerAuth {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The header value for a request of `body` to `path` at `now`, and its nonce (to check
    /// the answer with).
    pub fn sign_request(&self, path: &str, body: &[u8], now: u64) -> (String, Nonce) {
        let mut nonce = [0u8; 16];
        // A failed random source leaves zeros, which the receiver's replay check refuses
        // on the second use: a refusal, never a forgery.
        let _ = aws_lc_rs::rand::fill(&mut nonce);
        let tag = hmac::sign(&self.key, &request_input(now, &nonce, path, body));
        let header = format!("v1 {now} {} {}", hex(&nonce), hex(tag.as_ref()));
        (header, nonce)
    }

    /// Checks a request: everything in the module docs, in that order. On success the nonce
    /// is spent and returned (the answer is signed over it).
    pub fn verify_request(
        &self,
        header: Option<&str>,
        path: &str,
        body: &[u8],
        now: u64,
    ) -> Result<Nonce, PeerRefusal> {
        if body.len() > MAX_BODY {
            return Err(PeerRefusal::Oversize);
        }
        let (time, nonce, mac) = parse_request_header(header.ok_or(PeerRefusal::Malformed)?)?;
        hmac::verify(&self.key, &request_input(time, &nonce, path, body), &mac)
            .map_err(|_| PeerRefusal::BadMac)?;
        if time.abs_diff(now) > WINDOW {
            return Err(PeerRefusal::Stale);
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains_key(&nonce) {
            return Err(PeerRefusal::Replayed);
        }
        if seen.len() >= MAX_NONCES {
            // Anything older than the window is refused as stale anyway.
            seen.retain(|_, until| *until >= now);
            if seen.len() >= MAX_NONCES {
                return Err(PeerRefusal::Busy);
            }
        }
        seen.insert(nonce, time.saturating_add(WINDOW));
        Ok(nonce)
    }

    /// The answer header for `body` answering the request with `nonce`.
    pub fn sign_answer(&self, nonce: &Nonce, body: &[u8]) -> String {
        let tag = hmac::sign(&self.key, &answer_input(nonce, body));
        format!("v1 {}", hex(tag.as_ref()))
    }

    /// Whether `header` authenticates `body` as the answer to the request with `nonce`.
    pub fn verify_answer(&self, nonce: &Nonce, header: Option<&str>, body: &[u8]) -> bool {
        let Some(mac) = header
            .and_then(|h| h.strip_prefix("v1 "))
            .and_then(unhex::<32>)
        else {
            return false;
        };
        hmac::verify(&self.key, &answer_input(nonce, body), &mac).is_ok()
    }
}

fn request_input(time: u64, nonce: &Nonce, path: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(REQUEST.len() + 40 + path.len() + body.len());
    m.extend_from_slice(REQUEST);
    m.extend_from_slice(&time.to_be_bytes());
    m.extend_from_slice(nonce);
    m.extend_from_slice(&(path.len() as u64).to_be_bytes());
    m.extend_from_slice(path.as_bytes());
    m.extend_from_slice(body);
    m
}

fn answer_input(nonce: &Nonce, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(ANSWER.len() + 16 + body.len());
    m.extend_from_slice(ANSWER);
    m.extend_from_slice(nonce);
    m.extend_from_slice(body);
    m
}

fn parse_request_header(h: &str) -> Result<(u64, Nonce, [u8; 32]), PeerRefusal> {
    let mut parts = h.split(' ');
    let (Some("v1"), Some(time), Some(nonce), Some(mac), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(PeerRefusal::Malformed);
    };
    let time = (time.len() <= 20)
        .then(|| time.parse::<u64>().ok())
        .flatten()
        .ok_or(PeerRefusal::Malformed)?;
    let nonce = unhex::<16>(nonce).ok_or(PeerRefusal::Malformed)?;
    let mac = unhex::<32>(mac).ok_or(PeerRefusal::Malformed)?;
    Ok((time, nonce, mac))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/internal/v1/replay";

    fn pair() -> (PeerAuth, PeerAuth) {
        (PeerAuth::new(&[7; 32]), PeerAuth::new(&[7; 32]))
    }

    #[test]
    fn a_signed_request_verifies_once_and_its_answer_verifies() {
        let (a, b) = pair();
        let (h, nonce) = a.sign_request(PATH, b"{}", 1_000);
        assert_eq!(b.verify_request(Some(&h), PATH, b"{}", 1_003), Ok(nonce));
        assert_eq!(
            b.verify_request(Some(&h), PATH, b"{}", 1_003),
            Err(PeerRefusal::Replayed)
        );
        let answer = b.sign_answer(&nonce, b"[1]");
        assert!(a.verify_answer(&nonce, Some(&answer), b"[1]"));
        assert!(
            !a.verify_answer(&nonce, Some(&answer), b"[2]"),
            "body changed"
        );
        assert!(
            !a.verify_answer(&[0; 16], Some(&answer), b"[1]"),
            "another request"
        );
        assert!(!a.verify_answer(&nonce, None, b"[1]"));
    }

    #[test]
    fn another_key_a_changed_body_or_path_are_refused() {
        let (a, _) = pair();
        let other = PeerAuth::new(&[8; 32]);
        let (h, _) = a.sign_request(PATH, b"{}", 1_000);
        assert_eq!(
            other.verify_request(Some(&h), PATH, b"{}", 1_000),
            Err(PeerRefusal::BadMac)
        );
        let (h, _) = a.sign_request(PATH, b"{}", 1_000);
        assert_eq!(
            a.verify_request(Some(&h), PATH, b"{ }", 1_000),
            Err(PeerRefusal::BadMac)
        );
        assert_eq!(
            a.verify_request(Some(&h), "/internal/v1/other", b"{}", 1_000),
            Err(PeerRefusal::BadMac)
        );
        // The answer under another key does not verify either.
        let (_, nonce) = a.sign_request(PATH, b"{}", 1_000);
        let forged = other.sign_answer(&nonce, b"[]");
        assert!(!a.verify_answer(&nonce, Some(&forged), b"[]"));
    }

    #[test]
    fn stale_or_future_times_are_refused() {
        let (a, b) = pair();
        let (old, _) = a.sign_request(PATH, b"", 1_000);
        assert_eq!(
            b.verify_request(Some(&old), PATH, b"", 1_000 + WINDOW + 1),
            Err(PeerRefusal::Stale)
        );
        let (future, _) = a.sign_request(PATH, b"", 1_000 + WINDOW + 1);
        assert_eq!(
            b.verify_request(Some(&future), PATH, b"", 1_000),
            Err(PeerRefusal::Stale)
        );
        let (edge, _) = a.sign_request(PATH, b"", 1_000);
        assert!(
            b.verify_request(Some(&edge), PATH, b"", 1_000 + WINDOW)
                .is_ok()
        );
    }

    #[test]
    fn oversize_and_malformed_are_refused_before_the_mac() {
        let (a, b) = pair();
        let big = vec![b'x'; MAX_BODY + 1];
        let (h, _) = a.sign_request(PATH, &big, 1_000);
        assert_eq!(
            b.verify_request(Some(&h), PATH, &big, 1_000),
            Err(PeerRefusal::Oversize)
        );
        for bad in [
            "",
            "v1",
            "v2 1000 00000000000000000000000000000000 00",
            "v1 x 00000000000000000000000000000000 00",
            "v1 1000 zz 00",
            "v1 1000 00000000000000000000000000000000 0000 extra",
        ] {
            assert_eq!(
                b.verify_request(Some(bad), PATH, b"", 1_000),
                Err(PeerRefusal::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            b.verify_request(None, PATH, b"", 1_000),
            Err(PeerRefusal::Malformed)
        );
    }

    #[test]
    fn replay_memory_is_bounded_and_forgets_what_the_window_refuses() {
        let (a, b) = pair();
        {
            let mut seen = b.seen.lock().unwrap();
            for i in 0..MAX_NONCES {
                let mut n = [0u8; 16];
                n[..8].copy_from_slice(&(i as u64).to_le_bytes());
                seen.insert(n, 1_000 + WINDOW);
            }
        }
        let (h, _) = a.sign_request(PATH, b"", 1_000);
        assert_eq!(
            b.verify_request(Some(&h), PATH, b"", 1_000),
            Err(PeerRefusal::Busy)
        );
        // Once those expire they are dropped and the table has room again.
        let later = 1_000 + WINDOW + 1;
        let (h, _) = a.sign_request(PATH, b"", later);
        assert!(b.verify_request(Some(&h), PATH, b"", later).is_ok());
        assert_eq!(b.seen.lock().unwrap().len(), 1);
    }
}
