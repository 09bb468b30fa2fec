//! The TLS side of a connection: when a ClientHello is whole enough to spend a handshake
//! slot on, and what a finished (or failed) handshake records.

use std::io;
use std::time::Instant;

use super::{Connection, Phase, Socket};
use crate::http::handler::TlsInfo;
use crate::http::metrics::{CloseReason, Metrics};

/// A TLS record header: content type, version, 16-bit length.
const TLS_RECORD_HEADER: usize = 5;
/// Content type of TLS handshake records.
const TLS_HANDSHAKE: u8 = 22;
/// Largest TLS plaintext record a ClientHello can arrive in (2^14 + header).
const TLS_MAX_RECORD: usize = TLS_RECORD_HEADER + 16 * 1024;

impl<S: Socket> Connection<S> {
    pub(super) fn finish_handshake(&mut self, metrics: &Metrics, now: Instant) {
        self.handshake_slot = None;
        if let Some(tls) = &self.tls {
            metrics.tls_handshake_done(tls.handshake_kind());
            self.tls_info = Some(TlsInfo {
                version: tls.protocol_version(),
                alpn: tls.alpn_protocol().map(<[u8]>::to_vec),
                client_certificates: tls.peer_certificates().map(<[_]>::to_vec),
            });
        }
        if let Phase::Handshake { .. } = self.phase {
            self.phase = Phase::Idle;
        }
        self.idle_since = now;
    }

    pub(super) fn tls_failure(&self, metrics: &Metrics) -> CloseReason {
        if self.handshake_slot.is_some() {
            metrics.tls_handshake_failed();
            CloseReason::HandshakeFailed
        } else {
            CloseReason::Io
        }
    }
}

/// Whether the socket holds a whole first TLS record (the ClientHello, which clients send in
/// one record), or EOF (true: the read that follows reports it). Peeks, so nothing is
/// consumed. Anything that is not a handshake record is let through for rustls to refuse.
pub(super) fn client_hello_ready(socket: &impl Socket) -> io::Result<bool> {
    let mut buf = [0u8; TLS_MAX_RECORD];
    let n = socket.peek(&mut buf)?;
    Ok(hello_record_complete(&buf[..n]))
}

/// `peeked` is all the socket holds: is the first record whole (or the socket at EOF)?
fn hello_record_complete(peeked: &[u8]) -> bool {
    if peeked.is_empty() {
        return true;
    }
    if peeked[0] != TLS_HANDSHAKE {
        return true;
    }
    let Some(header) = peeked.get(..TLS_RECORD_HEADER) else {
        return false;
    };
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    // A length no record may have is refused by rustls at once; waiting for it would only
    // turn a malformed hello into a silent one.
    len > TLS_MAX_RECORD - TLS_RECORD_HEADER || peeked.len() >= TLS_RECORD_HEADER + len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_hello_counts_once_its_first_record_is_whole() {
        assert!(!hello_record_complete(&[22, 3, 1]), "partial header");
        assert!(
            !hello_record_complete(&[22, 3, 1, 0, 4, 1, 2, 3]),
            "partial record"
        );
        assert!(hello_record_complete(&[22, 3, 1, 0, 4, 1, 2, 3, 4]));
        assert!(
            hello_record_complete(&[22, 3, 1, 0, 1, 9, 22, 3]),
            "more behind it"
        );
        assert!(hello_record_complete(&[]), "EOF: let the read report it");
        assert!(
            hello_record_complete(b"GET / HTTP/1.1"),
            "not TLS: rustls refuses it"
        );
        // A length past the largest record is let through for rustls to refuse.
        assert!(hello_record_complete(&[22, 3, 1, 0xff, 0xff, 1, 2, 3]));
        assert!(
            !hello_record_complete(&[22, 3, 1, 0x40, 0x00, 1, 2, 3]),
            "2^14 is legal"
        );
    }
}
