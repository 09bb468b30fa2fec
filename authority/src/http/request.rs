//! The request head: recognised completely (syntax, framing, Host) before anything acts on it.
//!
//! httparse does the tokenising; this module adds the strictness httparse leaves to the caller,
//! because request smuggling lives in the gap between two parsers' leniencies: bare CR or LF,
//! NUL bytes, Content-Length together with Transfer-Encoding, duplicate or malformed
//! Content-Length, codings other than `chunked`, and missing or duplicate Host are refused.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use super::{HttpError, Limits};

/// Header fields httparse may return; `Limits::max_headers` is clamped to this so the field
/// array stays on the stack.
pub const MAX_HEADERS_CAP: usize = 128;

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (no Content-Length, no Transfer-Encoding).
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head. Owns its bytes; fields are ranges into them.
pub struct Head {
    buf: Vec<u8>,
    method: Range<usize>,
    path: Range<usize>,
    query: Option<Range<usize>>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub framing: Framing,
    /// The client allows the connection to stay open after this request.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
}

/// Result of looking at the start of the read buffer.
#[derive(Debug)]
pub enum Parsed {
    /// The head is not complete; bytes `..scanned` have been checked already.
    Partial { scanned: usize },
    /// A complete head that occupied `len` bytes of the buffer.
    Complete { head: Head, len: usize },
}

/// Leading empty lines before a request line are ignored (RFC 9112 §2.2); at most this many.
const MAX_LEADING_CRLF: usize = 4;

/// Parses a request head from the start of `buf`. `scanned` is the value a previous
/// `Parsed::Partial` returned for the same buffer (0 at first), so a head trickled in byte by
/// byte is scanned once, not once per byte.
pub fn parse_head(buf: &[u8], scanned: usize, limits: &Limits) -> Result<Parsed, HttpError> {
    // Leading CRLFs (some clients send one after a POST body) are skipped, within bounds.
    let mut start = 0;
    while start < MAX_LEADING_CRLF * 2 && buf[start..].starts_with(b"\r\n") {
        start += 2;
    }
    if buf.len() == start || buf[start..] == *b"\r" {
        return Ok(Parsed::Partial { scanned: 0 });
    }
    let body = &buf[start..];
    check_request_line_length(body, limits)?;

    // One pass over new bytes: refuse NUL and bare CR/LF, find the blank line that ends the head.
    let max = limits.max_header_bytes;
    let from = scanned.saturating_sub(start.min(scanned)).saturating_sub(3);
    let mut end = None;
    let limit = body.len().min(max);
    let mut i = from;
    while i < limit {
        match body[i] {
            0 => return Err(HttpError::Malformed("NUL byte in request head")),
            b'\r' => match body.get(i + 1) {
                Some(b'\n') => {}
                Some(_) => return Err(HttpError::Malformed("bare CR in request head")),
                None if i + 1 >= max => return Err(HttpError::HeadersTooLarge),
                None => return Ok(Parsed::Partial { scanned: start + i }),
            },
            b'\n' => {
                if i == 0 || body[i - 1] != b'\r' {
                    return Err(HttpError::Malformed("bare LF in request head"));
                }
                if i >= 3 && &body[i - 3..=i] == b"\r\n\r\n" {
                    end = Some(i + 1);
                    break;
                }
            }
            _ => {}
        }
        i += 1;
    }
    let Some(head_len) = end else {
        if body.len() >= max {
            return Err(HttpError::HeadersTooLarge);
        }
        return Ok(Parsed::Partial {
            scanned: start + limit,
        });
    };
    let head = parse_complete(&body[..head_len], limits)?;
    Ok(Parsed::Complete {
        head,
        len: start + head_len,
    })
}

fn check_request_line_length(buf: &[u8], limits: &Limits) -> Result<(), HttpError> {
    let window = &buf[..buf.len().min(limits.max_request_line + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(lf) if lf.saturating_sub(1) > limits.max_request_line => Err(HttpError::UriTooLong),
        Some(_) => Ok(()),
        None if buf.len() > limits.max_request_line + 1 => Err(HttpError::UriTooLong),
        None => Ok(()),
    }
}

/// Tokenises a complete head (ending in CRLF CRLF, free of NUL and bare CR/LF) and checks it.
fn parse_complete(bytes: &[u8], limits: &Limits) -> Result<Head, HttpError> {
    let max_headers = limits.max_headers.min(MAX_HEADERS_CAP);
    // Each header field is one CRLF-terminated line after the request line.
    let lines = bytes.iter().filter(|&&b| b == b'\n').count();
    if lines.saturating_sub(2) > max_headers {
        return Err(HttpError::TooManyHeaders);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
    let mut req = httparse::Request::new(&mut fields[..max_headers]);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) if n == bytes.len() => {}
        Ok(_) => return Err(HttpError::Malformed("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(HttpError::VersionNotSupported),
        Err(httparse::Error::HeaderName) => {
            return Err(HttpError::Malformed(
                "invalid header name (whitespace or obs-fold?)",
            ));
        }
        Err(httparse::Error::HeaderValue) => {
            return Err(HttpError::Malformed("invalid header value"));
        }
        Err(_) => return Err(HttpError::Malformed("invalid request line")),
    }
    let base = bytes.as_ptr() as usize;
    let range = |s: &[u8]| {
        let at = s.as_ptr() as usize - base;
        at..at + s.len()
    };
    // httparse fills every field on Complete; the fallbacks are unreachable but keep us panic-free.
    let method = req.method.map(|m| range(m.as_bytes())).unwrap_or(0..0);
    let target = req.path.unwrap_or("");
    let minor_version = req.version.unwrap_or(1);
    let method_str = req.method.unwrap_or("");
    if !(target.starts_with('/') || (target == "*" && method_str == "OPTIONS")) {
        return Err(HttpError::Malformed("request target must be origin-form"));
    }
    let target_range = range(target.as_bytes());
    let (path, query) = match target.find('?') {
        Some(q) => (
            target_range.start..target_range.start + q,
            Some(target_range.start + q + 1..target_range.end),
        ),
        None => (target_range, None),
    };

    let mut headers = Vec::with_capacity(req.headers.len());
    let mut hosts = 0;
    let mut content_length = None;
    let mut transfer_encoding = None;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        headers.push((range(h.name.as_bytes()), range(h.value)));
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(HttpError::Malformed("duplicate Content-Length"));
            }
            content_length = Some(parse_content_length(h.value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if transfer_encoding.is_some() {
                return Err(HttpError::Malformed("duplicate Transfer-Encoding"));
            }
            transfer_encoding = Some(h.value);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            if h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(HttpError::ExpectationFailed);
            }
        }
    }
    if hosts > 1 || (hosts == 0 && minor_version == 1) {
        return Err(HttpError::Malformed("exactly one Host header is required"));
    }
    let framing = match (content_length, transfer_encoding) {
        (Some(_), Some(_)) => {
            return Err(HttpError::Malformed(
                "Content-Length with Transfer-Encoding",
            ));
        }
        (Some(n), None) => {
            if n > limits.max_body as u64 {
                return Err(HttpError::BodyTooLarge);
            }
            if n == 0 {
                Framing::None
            } else {
                Framing::Length(n)
            }
        }
        (None, Some(te)) => {
            if minor_version == 0 {
                return Err(HttpError::Malformed("Transfer-Encoding in HTTP/1.0"));
            }
            if !te.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(HttpError::UnsupportedTransferCoding);
            }
            Framing::Chunked
        }
        (None, None) => Framing::None,
    };
    let keep_alive = !close && (minor_version == 1 || keep_alive_token);
    Ok(Head {
        buf: bytes.to_vec(),
        method,
        path,
        query,
        headers,
        minor_version,
        framing,
        keep_alive,
        expect_continue: expect_continue && framing != Framing::None,
    })
}

/// `1*DIGIT`, nothing else: no sign, no list, no whitespace inside, at most 19 digits so it fits.
fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::Malformed("invalid Content-Length"));
    }
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

impl Head {
    pub fn method(&self) -> &str {
        self.str_at(&self.method)
    }

    pub fn path(&self) -> &str {
        self.str_at(&self.path)
    }

    pub fn query(&self) -> Option<&str> {
        self.query.as_ref().map(|r| self.str_at(r))
    }

    /// Header fields in arrival order: name as sent, raw value.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (self.str_at(n), &self.buf[v.clone()]))
    }

    /// The first field with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    fn str_at(&self, r: &Range<usize>) -> &str {
        // httparse only yields method, path and header names made of visible ASCII tokens.
        std::str::from_utf8(&self.buf[r.clone()]).unwrap_or("")
    }
}

impl fmt::Debug for Head {
    /// Method and path only: header values carry credentials (Authorization, cookies).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Head")
            .field("method", &self.method())
            .field("path", &self.path())
            .field("framing", &self.framing)
            .finish_non_exhaustive()
    }
}

/// What a handler sees: a complete request (head, de-chunked body, route parameters).
pub struct Request<'a> {
    head: &'a Head,
    body: &'a [u8],
    params: Vec<(&'a str, Cow<'a, str>)>,
}

impl<'a> Request<'a> {
    pub fn new(head: &'a Head, body: &'a [u8], params: Vec<(&'a str, Cow<'a, str>)>) -> Self {
        Self { head, body, params }
    }

    pub fn method(&self) -> &'a str {
        self.head.method()
    }

    /// The path, still percent-encoded, without the query.
    pub fn path(&self) -> &'a str {
        self.head.path()
    }

    /// The raw query string after `?`, if any.
    pub fn query(&self) -> Option<&'a str> {
        self.head.query()
    }

    /// The first header field with this name (case-insensitive), if its value is UTF-8.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.head
            .header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All header fields with this name, raw.
    pub fn header_all<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        self.head
            .headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// A `{name}` segment of the matched route pattern, percent-decoded by the router.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_ref())
    }

    pub fn minor_version(&self) -> u8 {
        self.head.minor_version
    }
}

impl fmt::Debug for Request<'_> {
    /// Never the body or header values: they carry secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method())
            .field("path", &self.path())
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> Result<Parsed, HttpError> {
        parse_head(input, 0, &Limits::default())
    }

    fn complete(input: &[u8]) -> Head {
        match parse(input) {
            Ok(Parsed::Complete { head, len }) => {
                assert_eq!(len, input.len());
                head
            }
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    fn check_err(input: &[u8], expect: HttpError) {
        assert_eq!(
            parse(input).err(),
            Some(expect),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }

    #[test]
    fn simple_get() {
        let h = complete(b"GET /a/b?x=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n");
        assert_eq!(
            (h.method(), h.path(), h.query()),
            ("GET", "/a/b", Some("x=1"))
        );
        assert_eq!(h.header("x-a"), Some(&b"1"[..]));
        assert_eq!(h.framing, Framing::None);
        assert!(h.keep_alive);
    }

    #[test]
    fn partial_heads_resume_scanning() {
        let full = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let mut scanned = 0;
        for end in 1..full.len() {
            match parse_head(&full[..end], scanned, &Limits::default()) {
                Ok(Parsed::Partial { scanned: s }) => scanned = s,
                other => panic!("at {end}: {other:?}"),
            }
        }
        assert!(matches!(
            parse_head(full, scanned, &Limits::default()),
            Ok(Parsed::Complete { len, .. }) if len == full.len()
        ));
    }

    #[test]
    fn framing_and_connection() {
        let h = complete(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(12));
        let h = complete(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        let h = complete(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
        assert!(!h.keep_alive);
        let h = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!h.keep_alive);
        let h = complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(h.keep_alive);
        let h = complete(b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(h.path(), "/");
    }

    #[test]
    fn hostile_heads_are_refused() {
        use HttpError::*;
        let m = |s| Malformed(s);
        check_err(
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            m("Content-Length with Transfer-Encoding"),
        );
        check_err(
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            m("duplicate Content-Length"),
        );
        check_err(
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 1\r\n\r\n",
            m("invalid Content-Length"),
        );
        check_err(
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\n",
            m("invalid Content-Length"),
        );
        check_err(
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n",
            m("invalid Content-Length"),
        );
        check_err(
            b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
            UnsupportedTransferCoding,
        );
        check_err(
            b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            UnsupportedTransferCoding,
        );
        check_err(
            b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
            m("invalid header name (whitespace or obs-fold?)"),
        );
        check_err(
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n  folded\r\n\r\n",
            m("invalid header name (whitespace or obs-fold?)"),
        );
        check_err(
            b"GET / HTTP/1.1\r\n\r\n",
            m("exactly one Host header is required"),
        );
        check_err(
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            m("exactly one Host header is required"),
        );
        check_err(
            b"GET / HTTP/1.1\nHost: h\r\n\r\n",
            m("bare LF in request head"),
        );
        check_err(
            b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n",
            m("bare CR in request head"),
        );
        check_err(
            b"GET /\0 HTTP/1.1\r\nHost: h\r\n\r\n",
            m("NUL byte in request head"),
        );
        check_err(
            b"GET / HTTP/1.1\r\nHost: h\r\nExpect: magic\r\n\r\n",
            ExpectationFailed,
        );
        check_err(
            b"GET http://x/ HTTP/1.1\r\nHost: h\r\n\r\n",
            m("request target must be origin-form"),
        );
        check_err(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", VersionNotSupported);
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            max_request_line: 32,
            max_header_bytes: 128,
            max_headers: 3,
            max_body: 10,
            ..Limits::default()
        };
        let p = |b: &[u8]| parse_head(b, 0, &limits).err();
        let long_target = format!("GET /{} HTTP/1.1\r\n", "a".repeat(40));
        assert_eq!(p(long_target.as_bytes()), Some(HttpError::UriTooLong));
        // Too long even before the line ends.
        assert_eq!(p(&[b'a'; 40]), Some(HttpError::UriTooLong));
        let big = format!("GET / HTTP/1.1\r\nHost: h\r\nX: {}\r\n", "v".repeat(120));
        assert_eq!(p(big.as_bytes()), Some(HttpError::HeadersTooLarge));
        assert_eq!(
            p(b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 1\r\nC: 1\r\n\r\n"),
            Some(HttpError::TooManyHeaders)
        );
        assert_eq!(
            p(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n"),
            Some(HttpError::BodyTooLarge)
        );
    }

    #[test]
    fn debug_hides_header_values() {
        let h = complete(b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer sekrit\r\n\r\n");
        assert!(!format!("{h:?}").contains("sekrit"));
        let r = Request::new(&h, b"password=sekrit", vec![]);
        assert!(!format!("{r:?}").contains("sekrit"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(input in proptest::collection::vec(proptest::num::u8::ANY, 0..600), scanned in 0usize..700) {
            let limits = Limits { max_request_line: 64, max_header_bytes: 256, max_headers: 4, ..Limits::default() };
            let _ = parse_head(&input, scanned.min(input.len()), &limits);
        }

        #[test]
        fn never_panics_on_near_valid(tail in "[ -~\r\n:\t]{0,200}") {
            let input = format!("GET / HTTP/1.1\r\nHost: h\r\n{tail}");
            let _ = parse_head(input.as_bytes(), 0, &Limits::default());
        }
    }
}
