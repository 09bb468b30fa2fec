//! Reading an edge-triggered socket without the read that only says `WouldBlock`.
//!
//! With mio (epoll in edge-triggered mode) a connection must read until the socket is empty
//! before it waits for the next event. The usual proof of "empty" is one more `read` that
//! fails with `WouldBlock`, which makes a keep-alive request cost three system calls instead
//! of two. On Linux a stream read that returns fewer bytes than were asked for has already
//! taken everything queued, and bytes that arrive later raise a new event, so the extra read
//! can be skipped (tokio's `PollEvented` does the same).
//!
//! The one exception is a peer that has half-closed: its EOF is queued behind the data and
//! no new event will announce it, so after an event that reported read-closed the caller
//! reads until EOF as before.

use std::io::{self, Read};

/// A reader over a socket that records whether a read showed the socket drained.
#[derive(Debug)]
pub struct DrainTracker<'a, R> {
    inner: &'a mut R,
    trust_short_reads: bool,
    drained: bool,
}

impl<'a, R: Read> DrainTracker<'a, R> {
    /// `read_closed`: the last readiness event said the peer closed its side (or errored);
    /// then a short read proves nothing.
    pub fn new(inner: &'a mut R, read_closed: bool) -> Self {
        Self {
            inner,
            trust_short_reads: !read_closed,
            drained: false,
        }
    }

    /// The last read returned data but less than asked for: nothing more is queued now.
    pub fn drained(&self) -> bool {
        self.drained
    }
}

impl<R: Read> Read for DrainTracker<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = self.inner.read(buf);
        self.drained = match result {
            Ok(n) => self.trust_short_reads && n > 0 && n < buf.len(),
            Err(_) => false,
        };
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out scripted read results.
    struct Script(Vec<io::Result<usize>>);

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let r = self.0.remove(0);
            if let Ok(n) = r {
                buf[..n].fill(b'x');
            }
            r
        }
    }

    fn check(read_closed: bool, result: io::Result<usize>, buf_len: usize, drained: bool) {
        let result_len = result.as_ref().ok().copied();
        let mut script = Script(vec![result]);
        let mut t = DrainTracker::new(&mut script, read_closed);
        let got = t.read(&mut vec![0; buf_len]);
        assert_eq!(
            got.ok(),
            result_len,
            "the tracker passes the result through"
        );
        assert_eq!(
            t.drained(),
            drained,
            "read_closed={read_closed} buf={buf_len}"
        );
    }

    #[test]
    fn only_a_short_read_of_an_open_socket_proves_it_drained() {
        check(false, Ok(10), 100, true);
        // A full buffer may have left more behind.
        check(false, Ok(100), 100, false);
        // EOF and errors are the caller's to handle, not "drained".
        check(false, Ok(0), 100, false);
        check(false, Err(io::ErrorKind::WouldBlock.into()), 100, false);
        // After a half-close the queued EOF needs a read of its own.
        check(true, Ok(10), 100, false);
    }

    #[test]
    fn the_verdict_follows_the_latest_read() {
        let mut script = Script(vec![Ok(10), Ok(100)]);
        let mut t = DrainTracker::new(&mut script, false);
        let mut buf = [0; 100];
        assert_eq!(t.read(&mut buf).unwrap(), 10);
        assert!(t.drained());
        assert_eq!(t.read(&mut buf).unwrap(), 100);
        assert!(!t.drained());
    }
}
