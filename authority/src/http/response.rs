//! Responses: a status, a few headers, a body held in memory (Latchkey's answers are small).

use std::fmt;

/// An HTTP response a handler returns.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    /// An empty response with this status.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Already-serialised JSON. Responses from an authority carry credentials, so caches must
    /// not keep them.
    pub fn raw_json(status: u16, body: Vec<u8>) -> Self {
        Self::new(status)
            .header("Content-Type", "application/json")
            .header("Cache-Control", "no-store")
            .body(body)
    }

    /// A plain-text body.
    pub fn text(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self::new(status)
            .header("Content-Type", content_type)
            .body(body.into())
    }

    /// Adds a header. Values with CR, LF or NUL are replaced by an empty value rather than
    /// allowed to split the response.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        let mut value = value.into();
        if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            value.clear();
        }
        self.headers.push((name, value));
        self
    }

    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }

    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Appends the serialised response to `out`. `head_only` omits the body (HEAD) but keeps its
    /// Content-Length; `close` adds `Connection: close`.
    pub fn write_to(&self, out: &mut Vec<u8>, date: &[u8], head_only: bool, close: bool) {
        out.extend_from_slice(b"HTTP/1.1 ");
        push_u64(out, u64::from(self.status));
        out.push(b' ');
        out.extend_from_slice(reason(self.status).as_bytes());
        out.extend_from_slice(b"\r\nDate: ");
        out.extend_from_slice(date);
        for (name, value) in &self.headers {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
        }
        // 1xx, 204 and 304 have no body and must not claim one.
        if !(self.status < 200 || self.status == 204 || self.status == 304) {
            out.extend_from_slice(b"\r\nContent-Length: ");
            push_u64(out, self.body.len() as u64);
        }
        if close {
            out.extend_from_slice(b"\r\nConnection: close");
        }
        out.extend_from_slice(b"\r\n\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
    }
}

impl fmt::Debug for Response {
    /// Status and size only: bodies carry tokens and secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Reason phrases for the statuses Latchkey sends; clients ignore them anyway.
fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_with_length_and_close() {
        let mut out = Vec::new();
        Response::text(200, "text/plain", "hi").write_to(&mut out, b"D", false, true);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nDate: D\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        );
        out.clear();
        Response::text(200, "text/plain", "hi").write_to(&mut out, b"D", true, false);
        assert!(out.ends_with(b"Content-Length: 2\r\n\r\n"));
    }

    #[test]
    fn header_values_cannot_split_the_response() {
        let r = Response::new(200).header("X", "a\r\nSet-Cookie: b");
        assert_eq!(r.header_value("x"), Some(""));
    }
}
