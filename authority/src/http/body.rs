//! Request bodies: Content-Length and chunked, decoded incrementally into one buffer.
//!
//! The chunked decoder is strict where leniency lets two parsers disagree about where a request
//! ends: a chunk size is 1–16 hex digits, optionally followed by `;extension`, then CRLF; bare
//! CR or LF, whitespace, signs, `0x` prefixes and overlong lines are refused.

use super::request::Framing;
use super::{HttpError, Limits};

/// Longest chunk-size line (size + extensions) or trailer line.
const MAX_CHUNK_LINE: usize = 1024;

/// Decodes one request body.
#[derive(Debug)]
pub enum BodyDecoder {
    Length { remaining: u64 },
    Chunked(Chunked),
}

/// State of a chunked body.
#[derive(Debug)]
pub struct Chunked {
    state: ChunkState,
    /// Bytes of the current size or trailer line, for `MAX_CHUNK_LINE`.
    line: usize,
    /// Bytes of trailer section, bounded like a head.
    trailer_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits; `digits` so far, `value` so far.
    Size {
        value: u64,
        digits: u8,
    },
    /// After `;`: extension bytes up to CR.
    Extension {
        value: u64,
    },
    /// Saw CR after the size line; expecting LF.
    SizeLf {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    /// After data: expecting CR then LF.
    DataCr,
    DataLf,
    /// In the trailer section; `empty` if the current line has no bytes yet.
    Trailer {
        empty: bool,
    },
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// Progress of one `decode` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Input bytes consumed.
    pub consumed: usize,
    /// The body is complete.
    pub done: bool,
}

impl BodyDecoder {
    /// A decoder for this framing, or `None` if the request has no body.
    pub fn new(framing: Framing) -> Option<Self> {
        match framing {
            Framing::None => None,
            Framing::Length(n) => Some(Self::Length { remaining: n }),
            Framing::Chunked => Some(Self::Chunked(Chunked {
                state: ChunkState::Size {
                    value: 0,
                    digits: 0,
                },
                line: 0,
                trailer_bytes: 0,
            })),
        }
    }

    /// Consumes body bytes from `input`, appending decoded data to `out`, never letting `out`
    /// exceed `limits.max_body`.
    pub fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limits: &Limits,
    ) -> Result<Progress, HttpError> {
        match self {
            Self::Length { remaining } => {
                let take = usize::try_from(*remaining)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                out.extend_from_slice(&input[..take]);
                *remaining -= take as u64;
                Ok(Progress {
                    consumed: take,
                    done: *remaining == 0,
                })
            }
            Self::Chunked(c) => c.decode(input, out, limits),
        }
    }
}

impl Chunked {
    fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limits: &Limits,
    ) -> Result<Progress, HttpError> {
        use ChunkState::*;
        let bad = |what| Err(HttpError::Malformed(what));
        let mut i = 0;
        while i < input.len() && self.state != Done {
            let b = input[i];
            self.state = match self.state {
                Size { value, digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if digits == 16 {
                            return bad("chunk size too long");
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        Size {
                            value: value << 4 | u64::from(d),
                            digits: digits + 1,
                        }
                    }
                    _ if digits == 0 => return bad("chunk size is not hex"),
                    b';' => Extension { value },
                    b'\r' => SizeLf { value },
                    _ => return bad("invalid byte after chunk size"),
                },
                Extension { value } => match b {
                    b'\r' => SizeLf { value },
                    b'\t' | b' '..=b'~' | 0x80..=0xff => Extension { value },
                    _ => return bad("invalid byte in chunk extension"),
                },
                SizeLf { value } => {
                    if b != b'\n' {
                        return bad("bare CR in chunk size line");
                    }
                    self.line = 0;
                    if value == 0 {
                        Trailer { empty: true }
                    } else {
                        if out.len() as u64 + value > limits.max_body as u64 {
                            return Err(HttpError::BodyTooLarge);
                        }
                        Data { remaining: value }
                    }
                }
                Data { remaining } => {
                    let avail = (input.len() - i) as u64;
                    let take = remaining.min(avail) as usize;
                    out.extend_from_slice(&input[i..i + take]);
                    i += take;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        DataCr
                    } else {
                        Data { remaining: left }
                    };
                    continue;
                }
                DataCr if b == b'\r' => DataLf,
                DataCr => return bad("chunk data not followed by CRLF"),
                DataLf if b == b'\n' => Size {
                    value: 0,
                    digits: 0,
                },
                DataLf => return bad("chunk data not followed by CRLF"),
                Trailer { empty } => match b {
                    b'\r' => TrailerLf { empty },
                    b'\n' => return bad("bare LF in trailer"),
                    0 => return bad("NUL in trailer"),
                    _ => Trailer { empty: false },
                },
                TrailerLf { empty } => {
                    if b != b'\n' {
                        return bad("bare CR in trailer");
                    }
                    self.line = 0;
                    if empty { Done } else { Trailer { empty: true } }
                }
                Done => Done,
            };
            i += 1;
            if matches!(self.state, Size { .. } | Extension { .. } | SizeLf { .. }) {
                self.line += 1;
                if self.line > MAX_CHUNK_LINE {
                    return bad("chunk size line too long");
                }
            }
            if matches!(self.state, Trailer { .. } | TrailerLf { .. }) {
                self.trailer_bytes += 1;
                if self.trailer_bytes > limits.max_header_bytes {
                    return Err(HttpError::HeadersTooLarge);
                }
            }
        }
        Ok(Progress {
            consumed: i,
            done: self.state == Done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` in pieces of `step` bytes.
    fn chunked(input: &[u8], step: usize, limits: &Limits) -> Result<(Vec<u8>, usize), HttpError> {
        let mut d = BodyDecoder::new(Framing::Chunked).expect("chunked has a body");
        let mut out = Vec::new();
        let mut at = 0;
        while at < input.len() {
            let end = (at + step).min(input.len());
            let p = d.decode(&input[at..end], &mut out, limits)?;
            at += p.consumed;
            if p.done {
                return Ok((out, at));
            }
            if p.consumed == 0 && end == input.len() {
                break;
            }
        }
        Err(HttpError::Malformed("incomplete"))
    }

    fn check(input: &[u8], expect: Result<&[u8], HttpError>) {
        for step in [1, 2, 7, input.len().max(1)] {
            let got = chunked(input, step, &Limits::default()).map(|(b, _)| b);
            assert_eq!(
                got.as_deref().map_err(Clone::clone),
                expect.clone(),
                "step {step}"
            );
        }
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        check(
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            Ok(b"hello world"),
        );
        check(b"A;name=val\r\n0123456789\r\n0\r\n\r\n", Ok(b"0123456789"));
        check(b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n", Ok(b"abc"));
        check(b"0\r\n\r\n", Ok(b""));
    }

    #[test]
    fn stops_at_the_end_of_the_body() {
        let (body, used) = chunked(
            b"1\r\na\r\n0\r\n\r\nGET / HTTP/1.1",
            100,
            &Limits::default(),
        )
        .expect("valid");
        assert_eq!((body.as_slice(), used), (&b"a"[..], 11));
    }

    #[test]
    fn malformed_chunk_sizes_are_refused() {
        let m = |s| Err(HttpError::Malformed(s));
        check(b"\r\n", m("chunk size is not hex"));
        check(b"g\r\n", m("chunk size is not hex"));
        check(b"-1\r\n", m("chunk size is not hex"));
        check(
            b"0x5\r\nhello\r\n0\r\n\r\n",
            m("invalid byte after chunk size"),
        );
        check(
            b"5 \r\nhello\r\n0\r\n\r\n",
            m("invalid byte after chunk size"),
        );
        check(b"5\nhello\r\n0\r\n\r\n", m("invalid byte after chunk size"));
        check(b"5\r\rhello", m("bare CR in chunk size line"));
        check(b"11111111111111111\r\n", m("chunk size too long"));
        check(
            b"5\r\nhelloXX0\r\n\r\n",
            m("chunk data not followed by CRLF"),
        );
        check(b"0\r\nX: 1\n\r\n", m("bare LF in trailer"));
    }

    #[test]
    fn body_limit_applies_to_decoded_size() {
        let limits = Limits {
            max_body: 8,
            ..Limits::default()
        };
        let got = chunked(b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n", 3, &limits);
        assert_eq!(got.err(), Some(HttpError::BodyTooLarge));
        let got = chunked(b"FFFFFFFFFFFFFFFF\r\n", 3, &limits);
        assert_eq!(got.err(), Some(HttpError::BodyTooLarge));
    }

    #[test]
    fn content_length_takes_exactly_n() {
        let mut d = BodyDecoder::new(Framing::Length(3)).expect("has a body");
        let mut out = Vec::new();
        let p = d
            .decode(b"abcdef", &mut out, &Limits::default())
            .expect("ok");
        assert_eq!(
            (p, out.as_slice()),
            (
                Progress {
                    consumed: 3,
                    done: true
                },
                &b"abc"[..]
            )
        );
    }

    proptest::proptest! {
        #[test]
        fn chunked_never_panics(input in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = chunked(&input, 5, &Limits { max_body: 64, ..Limits::default() });
        }

        #[test]
        fn chunked_round_trips(chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 1..40), 0..6), step in 1usize..50) {
            let mut wire = Vec::new();
            for c in &chunks {
                wire.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                wire.extend_from_slice(c);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let (body, used) = chunked(&wire, step, &Limits::default()).expect("valid chunked body");
            proptest::prop_assert_eq!(body, chunks.concat());
            proptest::prop_assert_eq!(used, wire.len());
        }
    }
}
