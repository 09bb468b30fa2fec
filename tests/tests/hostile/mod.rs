//! Hostile input: each gets its status, the connection closes where it must, nothing hangs,
//! and a well-behaved client is served afterwards.

use std::io::{Read, Write};
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

/// Sends one GET on `c` and returns its status.
fn get_status(c: &mut (impl Read + Write), buf: &mut Vec<u8>) -> u16 {
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    read_response(c, buf, false).unwrap().status
}

#[test]
fn at_the_connection_cap_the_oldest_idle_connection_makes_room() {
    // One loop: room is made from the loop's own idle connections.
    let s = Server::plain(&["--max-connections", "3", "--threads", "1"]);
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..3 {
        let mut c = s.tcp();
        assert_eq!(get_status(&mut c, &mut Vec::new()), 200);
        held.push(c);
    }
    // A fourth client is served, not refused: the connection idle the longest goes.
    let mut fourth = s.tcp();
    assert_eq!(get_status(&mut fourth, &mut Vec::new()), 200);
    assert!(
        read_until_closed(&mut held[0]).is_empty(),
        "the oldest idle connection was closed without a word"
    );
    assert_eq!(get_status(&mut held[2], &mut Vec::new()), 200);
    drop(held);
    drop(fourth);
    s.wait_metric("latchkey_connections_closed_total{reason=\"evicted\"}", 1.0);
}

#[test]
fn at_the_connection_cap_busy_connections_are_kept_and_the_new_one_closed() {
    let s = Server::plain(&["--max-connections", "3", "--threads", "1"]);
    // Each holds half a request: busy, never closed to make room.
    let mut busy: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut c = s.tcp();
            c.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = s.tcp();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(
        read_until_closed(&mut extra).is_empty(),
        "fourth connection was served"
    );
    for c in &mut busy {
        c.write_all(b"Host: t\r\n\r\n").unwrap();
        let r = read_response(c, &mut Vec::new(), false).unwrap();
        assert_eq!(r.status, 200, "a busy connection was closed to make room");
    }
    drop(busy);
    s.served_soon();
    s.wait_metric(
        "latchkey_connections_closed_total{reason=\"connection_limit\"}",
        1.0,
    );
}

#[test]
fn connections_per_source_address_are_capped() {
    let s = Server::plain(&["--max-connections-per-source", "2"]);
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..2 {
        let mut c = s.tcp();
        assert_eq!(get_status(&mut c, &mut Vec::new()), 200);
        held.push(c);
    }
    let mut third = s.tcp();
    let _ = third.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(
        read_until_closed(&mut third).is_empty(),
        "third connection from one address was served"
    );
    assert_eq!(get_status(&mut held[1], &mut Vec::new()), 200);
    drop(held);
    // The server sees the closes a moment later; until then a new connection may still be
    // over the cap, so read the counter once a connection is served again.
    let body = (0..50)
        .find_map(|_| {
            s.served_soon();
            s.try_get("/metrics").ok()
        })
        .expect("/metrics served once the held connections closed")
        .text();
    let series = "latchkey_connections_closed_total{reason=\"source_limit\"} ";
    let m: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(m >= 1.0, "{m}");
    assert!(s.wait_stderr("connections per source address reached"));
}

#[test]
fn with_few_file_descriptors_new_clients_are_served_by_closing_idle_ones() {
    // Soft and hard limit 128: nothing to raise. max-connections is lowered to fit, and each
    // new client takes the place of the connection idle the longest instead of failing accept.
    // Silent connections get long timeouts so only eviction can free room.
    let s = Server::start(Options {
        fd_limit: Some(128),
        ..Options::plain(&[
            "--threads",
            "1",
            "--hello-timeout",
            "1h",
            "--request-head-timeout",
            "1h",
        ])
    });
    assert!(s.wait_stderr("max-connections lowered to fit the file-descriptor limit"));
    let mut keep = s.tcp();
    assert_eq!(get_status(&mut keep, &mut Vec::new()), 200);
    let flood: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(s.addr).ok())
        .collect();
    assert!(flood.len() > 128, "could not open enough connections");
    // A new client is served while the flood holds on.
    for _ in 0..5 {
        let r = s.try_get("/healthz");
        assert_eq!(
            r.as_ref().map(|r| r.status).ok(),
            Some(200),
            "{r:?}; stderr:\n{}",
            s.stderr()
        );
    }
    let evicted = s.metric("latchkey_connections_closed_total{reason=\"evicted\"}");
    assert!(evicted >= 1.0, "{evicted}");
    assert!(
        s.stderr()
            .matches("closing the oldest idle connections")
            .count()
            <= 2,
        "the eviction log line is rate-limited"
    );
    drop(flood);
}

#[test]
fn a_low_soft_file_descriptor_limit_is_raised_at_start() {
    // Soft limit 128, hard limit untouched: the server raises its soft limit and holds far
    // more connections than 128 without closing any of them.
    let s = Server::start(Options {
        fd_soft_limit: Some(128),
        ..Options::plain(&["--threads", "1"])
    });
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..300 {
        let mut c = s.tcp();
        assert_eq!(get_status(&mut c, &mut Vec::new()), 200);
        held.push(c);
    }
    for c in held.iter_mut().step_by(50) {
        assert_eq!(get_status(c, &mut Vec::new()), 200);
    }
    assert_eq!(
        s.metric("latchkey_connections_closed_total{reason=\"evicted\"}"),
        0.0
    );
    assert_eq!(s.metric("latchkey_accept_errors_total"), 0.0);
}

#[test]
fn connections_that_never_send_a_request_are_closed_at_the_head_timeout() {
    let s = Server::plain(&["--request-head-timeout", "300ms", "--idle-timeout", "1h"]);
    let mut silent = s.tcp();
    assert!(read_until_closed(&mut silent).is_empty());
    s.assert_serving();
}

#[test]
fn silent_sockets_take_no_tls_handshake_slot() {
    // Default limits: 256 handshake slots. Sockets that never send a ClientHello must not
    // take them, or a few hundred idle connections lock every real client out.
    let s = Server::tls(&[]);
    let silent: Vec<TcpStream> = (0..300).map(|_| s.tcp()).collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let r = s
            .try_get("/healthz")
            .unwrap_or_else(|e| panic!("TLS client locked out: {e}; stderr:\n{}", s.stderr()));
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        s.metric("latchkey_connections_closed_total{reason=\"handshake_limit\"}"),
        0.0
    );
    drop(silent);
}

#[test]
fn silent_tls_sockets_are_closed_at_the_hello_timeout() {
    let s = Server::tls(&["--hello-timeout", "300ms"]);
    let mut silent = s.tcp();
    assert!(read_until_closed(&mut silent).is_empty());
    // Half a ClientHello record is still silence: no slot, same deadline.
    let mut partial = s.tcp();
    partial.write_all(&[22, 3, 1, 2, 0, 1, 0]).unwrap();
    assert!(read_until_closed(&mut partial).is_empty());
    s.wait_metric(
        "latchkey_connections_closed_total{reason=\"hello_timeout\"}",
        2.0,
    );
    s.assert_serving();
}

#[test]
fn silent_tls_sockets_are_evicted_oldest_first_when_connections_run_out() {
    // Hello timeout long, connection cap small: only eviction can make room.
    let s = Server::tls(&[
        "--max-connections",
        "50",
        "--threads",
        "1",
        "--hello-timeout",
        "1h",
        "--handshake-timeout",
        "1h",
    ]);
    let mut silent: Vec<TcpStream> = (0..100).map(|_| s.tcp()).collect();
    for _ in 0..3 {
        let r = s
            .try_get("/healthz")
            .unwrap_or_else(|e| panic!("TLS client locked out: {e}; stderr:\n{}", s.stderr()));
        assert_eq!(r.status, 200);
    }
    // The first silent sockets were the ones closed.
    assert!(read_until_closed(&mut silent[0]).is_empty());
    let evicted = s.metric("latchkey_connections_closed_total{reason=\"evicted\"}");
    assert!(evicted >= 50.0, "{evicted}");
}

#[test]
fn a_front_loaded_slow_body_is_cut_off_at_the_body_timeout() {
    // Almost the whole body at once, then nothing: the rate allowance the early bytes earn
    // (about 17 minutes at the default rate) must not outlast --body-timeout.
    let s = Server::plain(&["--body-timeout", "500ms"]);
    let mut c = s.tcp();
    let len = 1024 * 1024;
    let mut input =
        format!("GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n").into_bytes();
    input.resize(input.len() + len - 1, b'x');
    c.write_all(&input).unwrap();
    let r = read_response(&mut c, &mut Vec::new(), false)
        .unwrap_or_else(|e| panic!("no answer: {e}; stderr:\n{}", s.stderr()));
    assert_eq!(r.status, 408);
    assert!(r.closes());
    assert_eq!(r.json()["error"], "invalid_request");
    drop(c);
    s.wait_metric(
        "latchkey_connections_closed_total{reason=\"body_timeout\"}",
        1.0,
    );
    assert_eq!(s.metric("latchkey_body_buffer_bytes"), 0.0);
    s.assert_serving();
}

#[test]
fn a_full_body_budget_answers_503_and_refills() {
    // The budget holds one 600 kB body in progress, not two.
    let s = Server::plain(&["--max-body-buffer", "1048576"]);
    let head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 600000\r\n\r\n";
    let mut first = s.tcp();
    first.write_all(head).unwrap();
    first.write_all(&[b'x'; 1000]).unwrap();
    s.wait_metric("latchkey_body_buffer_bytes", 600000.0);

    let mut second = s.tcp();
    second.write_all(head).unwrap();
    let _ = second.write_all(&[b'x'; 1000]);
    let r = read_response(&mut second, &mut Vec::new(), false).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    assert!(r.json()["error_description"].is_string());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.closes());
    read_until_closed(&mut second);
    drop(second);

    // Requests whose body arrives with the head need no budget: served meanwhile.
    let mut small = s.tcp();
    small
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    assert_eq!(
        read_response(&mut small, &mut Vec::new(), false)
            .unwrap()
            .status,
        200
    );

    // The first body finishes, its share returns, and the next large body is admitted.
    first.write_all(&vec![b'x'; 600000 - 1000]).unwrap();
    assert_eq!(
        read_response(&mut first, &mut Vec::new(), false)
            .unwrap()
            .status,
        200
    );
    let mut third = s.tcp();
    third.write_all(head).unwrap();
    third.write_all(&[b'x'; 1000]).unwrap();
    third.write_all(&vec![b'x'; 600000 - 1000]).unwrap();
    assert_eq!(
        read_response(&mut third, &mut Vec::new(), false)
            .unwrap()
            .status,
        200
    );
    s.wait_metric(
        "latchkey_connections_closed_total{reason=\"body_budget\"}",
        1.0,
    );
    assert!(s.wait_stderr("request body budget spent"));
}
