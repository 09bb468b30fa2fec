//! Just enough HTTP/1.1 for a load generator: requests written into a reused buffer, and an
//! incremental response parser that works on whatever bytes have arrived so far.
//!
//! Bodies are framed by `Content-Length`, `Transfer-Encoding: chunked`, or the end of the
//! connection; sizes are bounded so a misbehaving server cannot make the client allocate
//! without limit.

use std::fmt::Write as _;

/// Largest response head we accept.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest response body we accept.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// Whether the connection stays open after this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    KeepAlive,
    Close,
}

/// One request's method, path, extra headers and body.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Extra header lines, each `Name: value` without CRLF.
    pub headers: &'a [&'a str],
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

impl Request<'_> {
    /// Appends the request's bytes to `out`.
    pub fn write(&self, host: &str, connection: Connection, out: &mut Vec<u8>) {
        let mut head = String::with_capacity(256);
        // Writing to a String cannot fail.
        let _ = write!(
            head,
            "{} {} HTTP/1.1\r\nHost: {host}\r\n",
            self.method, self.path
        );
        for h in self.headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        if let Some(ct) = self.content_type {
            let _ = write!(head, "Content-Type: {ct}\r\n");
        }
        if !self.body.is_empty() || matches!(self.method, "POST" | "PUT") {
            let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
        }
        if connection == Connection::Close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(self.body);
    }
}

/// A complete response. The body is de-chunked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server said `Connection: close` (or the body ran to the end of the connection).
    pub closes: bool,
}

impl Response {
    /// The body as text, for error messages (lossy, bounded).
    pub fn text(&self) -> String {
        let end = self.body.len().min(512);
        String::from_utf8_lossy(&self.body[..end]).into_owned()
    }
}

/// Why a response could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not HTTP/1.x, or a malformed head or chunk.
    Malformed(&'static str),
    /// Head or body larger than the limits.
    TooLarge,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Malformed(what) => write!(f, "malformed response: {what}"),
            ParseError::TooLarge => f.write_str("response too large"),
        }
    }
}

/// How the body of the response being parsed is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// Parses one response at the front of `buf`. `Ok(Some((response, consumed)))` when
/// complete; `Ok(None)` when more bytes are needed; `eof` says the peer closed, which
/// completes a close-delimited body. `head_request` means no body whatever the headers say.
pub fn parse_response(
    buf: &[u8],
    eof: bool,
    head_request: bool,
) -> Result<Option<(Response, usize)>, ParseError> {
    let mut fields = [httparse::EMPTY_HEADER; 48];
    let mut r = httparse::Response::new(&mut fields);
    let head_len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD {
                Err(ParseError::TooLarge)
            } else if eof {
                Err(ParseError::Malformed("connection closed mid-head"))
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::TooLarge),
        Err(_) => return Err(ParseError::Malformed("bad head")),
    };
    let status = r.code.ok_or(ParseError::Malformed("no status"))?;
    let mut framing = Framing::UntilClose;
    let mut closes = r.version == Some(0);
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or(ParseError::Malformed("bad Content-Length"))?;
            if framing == Framing::Chunked {
                continue; // chunked wins (RFC 9112 §6.3)
            }
            framing = Framing::Length(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if ends_with_chunked(h.value) {
                framing = Framing::Chunked;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = h.value;
            if v.eq_ignore_ascii_case(b"close") {
                closes = true;
            } else if v.eq_ignore_ascii_case(b"keep-alive") {
                closes = false;
            }
        }
    }
    if head_request || status < 200 || status == 204 || status == 304 {
        framing = Framing::Length(0);
    }
    let rest = &buf[head_len..];
    match framing {
        Framing::Length(n) => {
            if n > MAX_BODY {
                return Err(ParseError::TooLarge);
            }
            if rest.len() < n {
                return if eof {
                    Err(ParseError::Malformed("connection closed mid-body"))
                } else {
                    Ok(None)
                };
            }
            let body = rest[..n].to_vec();
            Ok(Some((
                Response {
                    status,
                    body,
                    closes,
                },
                head_len + n,
            )))
        }
        Framing::UntilClose => {
            if rest.len() > MAX_BODY {
                return Err(ParseError::TooLarge);
            }
            if !eof {
                return Ok(None);
            }
            Ok(Some((
                Response {
                    status,
                    body: rest.to_vec(),
                    closes: true,
                },
                buf.len(),
            )))
        }
        Framing::Chunked => match dechunk(rest)? {
            Some((body, used)) => Ok(Some((
                Response {
                    status,
                    body,
                    closes,
                },
                head_len + used,
            ))),
            None if eof => Err(ParseError::Malformed("connection closed mid-chunk")),
            None => Ok(None),
        },
    }
}

fn ends_with_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|b| *b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Decodes a complete chunked body (trailers skipped) or says more bytes are needed.
fn dechunk(mut rest: &[u8]) -> Result<Option<(Vec<u8>, usize)>, ParseError> {
    let start = rest.len();
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find_crlf(rest) else {
            return if rest.len() > 1024 {
                Err(ParseError::Malformed("chunk size line too long"))
            } else {
                Ok(None)
            };
        };
        let line = &rest[..line_end];
        let size_hex = line
            .split(|b| *b == b';')
            .next()
            .unwrap_or(line)
            .trim_ascii();
        let size = std::str::from_utf8(size_hex)
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 8)
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or(ParseError::Malformed("bad chunk size"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let Some(end) = find_crlf(rest) else {
                    return Ok(None);
                };
                rest = &rest[end + 2..];
                if end == 0 {
                    return Ok(Some((body, start - rest.len())));
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(ParseError::TooLarge);
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        if &rest[size..size + 2] != b"\r\n" {
            return Err(ParseError::Malformed("chunk not followed by CRLF"));
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// Percent-encodes a form value (RFC 3986 unreserved characters pass through).
pub fn form_encode(value: &str, out: &mut String) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Finds `needle` in `haystack` (bodies are small; a linear scan is enough).
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, eof: bool) -> Result<Option<(Response, usize)>, ParseError> {
        parse_response(raw.as_bytes(), eof, false)
    }

    fn complete(raw: &str) -> (u16, String, usize, bool) {
        let (r, n) = parse(raw, false).expect("parses").expect("complete");
        (r.status, String::from_utf8(r.body).unwrap(), n, r.closes)
    }

    #[test]
    fn content_length_bodies() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 204";
        assert_eq!(complete(raw), (200, "hello".into(), 43, false));
        // Every strict prefix is incomplete, never an error.
        for cut in 0..43 {
            assert_eq!(parse(&raw[..cut], false), Ok(None), "cut at {cut}");
        }
        let raw = "HTTP/1.1 401 Unauthorized\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(complete(raw), (401, String::new(), raw.len(), true));
        assert!(
            complete(
                "HTTP/1.0 200 OK
Content-Length: 0

"
            )
            .3
        );
    }

    #[test]
    fn chunked_bodies() {
        let raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n\
                   4;ext=1\r\nabcd\r\n2\r\nef\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let (status, body, used, _) = complete(raw);
        assert_eq!((status, body.as_str()), (200, "abcdef"));
        assert_eq!(&raw[used..], "NEXT");
        for cut in 0..used {
            assert_eq!(parse(&raw[..cut], false), Ok(None), "cut at {cut}");
        }
        let bad = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(
            parse(bad, false),
            Err(ParseError::Malformed("bad chunk size"))
        );
        let bad = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n";
        assert!(matches!(parse(bad, false), Err(ParseError::Malformed(_))));
    }

    #[test]
    fn close_delimited_and_eof() {
        let raw = "HTTP/1.1 200 OK\r\n\r\npartial";
        assert_eq!(parse(raw, false), Ok(None));
        assert_eq!(complete_eof(raw), (200, "partial".into()));
        assert!(matches!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab", true),
            Err(ParseError::Malformed("connection closed mid-body"))
        ));
        assert!(matches!(
            parse("HTTP/1.1 2", true),
            Err(ParseError::Malformed(_))
        ));
    }

    fn complete_eof(raw: &str) -> (u16, String) {
        let (r, _) = parse(raw, true).unwrap().unwrap();
        (r.status, String::from_utf8(r.body).unwrap())
    }

    #[test]
    fn bodiless_statuses_and_head() {
        let raw = "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(complete(raw).2, raw.len());
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        let (r, n) = parse_response(raw.as_bytes(), false, true)
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.body.len(), n), (200, 0, raw.len()));
    }

    #[test]
    fn limits_and_garbage() {
        assert_eq!(
            parse("SSH-2.0-OpenSSH\r\n\r\n", false),
            Err(ParseError::Malformed("bad head"))
        );
        let huge = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(parse(&huge, false), Err(ParseError::TooLarge));
        let long_head = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(parse(&long_head, false), Err(ParseError::TooLarge));
        let bad_len = "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(
            parse(bad_len, false),
            Err(ParseError::Malformed("bad Content-Length"))
        );
    }

    #[test]
    fn requests_are_well_formed() {
        let mut out = Vec::new();
        Request {
            method: "POST",
            path: "/oauth/token",
            headers: &["Authorization: Basic YTpi"],
            content_type: Some("application/x-www-form-urlencoded"),
            body: b"grant_type=client_credentials",
        }
        .write("127.0.0.1:8443", Connection::Close, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "POST /oauth/token HTTP/1.1\r\nHost: 127.0.0.1:8443\r\nAuthorization: Basic YTpi\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 29\r\n\
             Connection: close\r\n\r\ngrant_type=client_credentials"
        );
        let mut out = Vec::new();
        Request {
            method: "GET",
            path: "/x",
            headers: &[],
            content_type: None,
            body: b"",
        }
        .write("h", Connection::KeepAlive, &mut out);
        assert_eq!(out, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n");
    }

    #[test]
    fn form_encoding() {
        let mut s = String::new();
        form_encode("urn:ietf:params a+b/c~d", &mut s);
        assert_eq!(s, "urn%3Aietf%3Aparams%20a%2Bb%2Fc~d");
        assert!(contains(br#"{"active":true}"#, br#""active":true"#));
        assert!(!contains(b"", b"x"));
    }
}
