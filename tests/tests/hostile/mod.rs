//! Hostile input: each gets its status, the connection closes where it must, nothing hangs,
//! and a well-behaved client is served afterwards.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::util::server::{Options, Server, read_response, read_until_closed};

/// Small limits so each case needs only a few bytes.
const SMALL: &[&str] = &[
    "--max-request-line",
    "64",
    "--max-header-bytes",
    "256",
    "--max-headers",
    "4",
    "--max-body",
    "100",
];

/// Sends `input`, expects one `status` answer with `Connection: close`, then EOF, then checks
/// that the server still serves a fresh client.
fn check_refused(input: &[u8], status: u16) {
    let s = Server::plain(SMALL);
    let mut c = s.tcp();
    // The server may close before reading everything; a failed write is fine, the answer counts.
    let _ = c.write_all(input);
    let mut buf = Vec::new();
    let r = read_response(&mut c, &mut buf, false)
        .unwrap_or_else(|e| panic!("no answer ({e}); stderr:\n{}", s.stderr()));
    assert_eq!(r.status, status, "{}", r.text());
    assert!(r.closes(), "a refused request must close the connection");
    assert_eq!(r.json()["error"], "invalid_request");
    assert!(r.json()["error_description"].is_string());
    buf.extend(read_until_closed(&mut c));
    assert!(
        buf.is_empty(),
        "bytes after the refusal: {:?}",
        String::from_utf8_lossy(&buf)
    );
    s.assert_serving();
}

#[test]
fn request_line_too_long_is_414() {
    check_refused(
        format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(100)).as_bytes(),
        414,
    );
}

#[test]
fn request_line_too_long_without_newline_is_414() {
    check_refused("A".repeat(200).as_bytes(), 414);
}

#[test]
fn header_section_too_large_is_431() {
    check_refused(
        format!(
            "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
            "v".repeat(300)
        )
        .as_bytes(),
        431,
    );
}

#[test]
fn too_many_header_fields_is_431() {
    check_refused(
        b"GET / HTTP/1.1\r\nHost: t\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n",
        431,
    );
}

#[test]
fn content_length_over_the_body_limit_is_413() {
    check_refused(
        b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 101\r\n\r\n",
        413,
    );
}

#[test]
fn chunked_body_over_the_body_limit_is_413() {
    let mut input =
        b"POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        input.extend_from_slice(b"40\r\n");
        input.extend_from_slice(&[b'x'; 64]);
        input.extend_from_slice(b"\r\n");
    }
    check_refused(&input, 413);
}

#[test]
fn content_length_with_transfer_encoding_is_400() {
    check_refused(
        b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    );
}

#[test]
fn duplicate_content_length_is_400() {
    check_refused(
        b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        400,
    );
}

#[test]
fn content_length_list_is_400() {
    check_refused(
        b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc",
        400,
    );
}

#[test]
fn malformed_content_length_is_400() {
    check_refused(
        b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 3a\r\n\r\nabc",
        400,
    );
    check_refused(
        b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
        400,
    );
}

#[test]
fn unknown_transfer_coding_is_501() {
    check_refused(
        b"POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
    );
    check_refused(
        b"POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        501,
    );
}

#[test]
fn malformed_chunk_size_is_400() {
    check_refused(b"POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400);
    check_refused(b"POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400);
}

#[test]
fn whitespace_before_colon_is_400() {
    check_refused(b"GET /healthz HTTP/1.1\r\nHost : t\r\n\r\n", 400);
}

#[test]
fn obs_fold_is_400() {
    check_refused(
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n 2\r\n\r\n",
        400,
    );
}

#[test]
fn missing_host_is_400() {
    check_refused(b"GET /healthz HTTP/1.1\r\nX-A: 1\r\n\r\n", 400);
}

#[test]
fn duplicate_host_is_400() {
    check_refused(b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400);
}

#[test]
fn bare_lf_is_400() {
    check_refused(b"GET /healthz HTTP/1.1\nHost: t\n\n", 400);
}

#[test]
fn bare_cr_is_400() {
    check_refused(b"GET /healthz HTTP/1.1\r\nHost: t\rX: y\r\n\r\n", 400);
}

#[test]
fn nul_byte_is_400() {
    check_refused(
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n",
        400,
    );
    check_refused(b"GET /heal\0thz HTTP/1.1\r\nHost: t\r\n\r\n", 400);
}

#[test]
fn slowloris_head_gets_408_even_when_trickled() {
    let s = Server::plain(&["--request-head-timeout", "500ms"]);
    let mut c = s.tcp();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    // Keep trickling header bytes: the deadline counts from the first byte, not the last.
    let mut writer = c.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..30 {
            if writer.write_all(b"X").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let started = Instant::now();
    let r = read_response(&mut c, &mut Vec::new(), false).unwrap();
    assert_eq!(r.status, 408);
    assert!(r.closes());
    assert!(started.elapsed() < Duration::from_secs(5));
    read_until_closed(&mut c);
    trickle.join().unwrap();
    drop(c);
    s.wait_metric(
        "latchkey_connections_closed_total{reason=\"head_timeout\"}",
        1.0,
    );
    s.assert_serving();
}

#[test]
fn body_slower_than_the_minimum_rate_gets_408() {
    let s = Server::plain(&[
        "--request-head-timeout",
        "300ms",
        "--min-body-rate",
        "1000",
        "--max-body",
        "1000000",
    ]);
    let mut c = s.tcp();
    c.write_all(b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n0123456789")
        .unwrap();
    let r = read_response(&mut c, &mut Vec::new(), false).unwrap();
    assert_eq!(r.status, 408);
    assert!(r.closes());
    read_until_closed(&mut c);
    drop(c);
    s.wait_metric(
        "latchkey_connections_closed_total{reason=\"body_timeout\"}",
        1.0,
    );
    s.assert_serving();
}

#[test]
fn clients_that_do_not_read_are_cut_off() {
    let s = Server::plain(&["--write-timeout", "500ms"]);
    let mut c = s.tcp();
    let mut writer = c.try_clone().unwrap();
    // Far more answer bytes than loopback socket buffers hold, and never read.
    let flood = std::thread::spawn(move || {
        let one = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
        let many: Vec<u8> = one.iter().copied().cycle().take(one.len() * 8000).collect();
        let _ = writer.write_all(&many);
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.metric("latchkey_connections_closed_total{reason=\"write_timeout\"}") < 1.0 {
        assert!(Instant::now() < deadline, "slow reader was never cut off");
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = read_until_closed(&mut c);
    let answers = got.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
    assert!(
        answers < 8000,
        "all answers arrived; the reader was not slow enough"
    );
    flood.join().unwrap();
    s.assert_serving();
}

#[test]
fn connections_over_the_cap_are_closed_at_accept() {
    let s = Server::plain(&["--max-connections", "3"]);
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..3 {
        let mut c = s.tcp();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(
            read_response(&mut c, &mut Vec::new(), false)
                .unwrap()
                .status,
            200
        );
        held.push(c);
    }
    let mut extra = s.tcp();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(
        read_until_closed(&mut extra).is_empty(),
        "fourth connection was served"
    );
    // The held connections still work.
    let mut first = held.remove(0);
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut first, &mut Vec::new(), false)
            .unwrap()
            .status,
        200
    );
    drop(first);
    s.served_soon();
}

#[test]
fn running_out_of_file_descriptors_pauses_accepting_but_keeps_serving() {
    let s = Server::start(Options {
        fd_limit: Some(64),
        ..Options::plain(&["--threads", "1"])
    });
    let mut keep = s.tcp();
    let mut buf = Vec::new();
    keep.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut keep, &mut buf, false).unwrap().status,
        200
    );

    let flood: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(s.addr).ok())
        .collect();
    assert!(flood.len() > 64, "could not open enough connections");
    std::thread::sleep(Duration::from_millis(500));

    // The established connection is still served while accept fails.
    keep.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let metrics = read_response(&mut keep, &mut buf, false).unwrap().text();
    let errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("latchkey_accept_errors_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(
        errors >= 1.0,
        "accept never failed; the fd limit did not bite"
    );
    assert!(s.wait_stderr("accept failed"));
    assert_eq!(
        s.stderr().matches("accept failed").count(),
        1,
        "logged once, not per attempt"
    );

    drop(flood);
    s.served_soon();
}

#[test]
fn connections_that_never_send_a_request_are_closed_at_the_head_timeout() {
    let s = Server::plain(&["--request-head-timeout", "300ms", "--idle-timeout", "1h"]);
    let mut silent = s.tcp();
    assert!(read_until_closed(&mut silent).is_empty());
    s.assert_serving();
}
