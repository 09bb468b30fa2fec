//! HTTP/1.1 behaviour over plain TCP: keep-alive, pipelining, bodies, HEAD, closing, limits
//! that are not hostile input, graceful shutdown.

use std::io::Write;
use std::time::Duration;

use crate::util::server::{Server, read_response, read_until_closed};

#[test]
fn healthz_and_json_errors() {
    let s = Server::plain(&[]);
    let r = s.get("/healthz");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"status": "ok"}));
    assert!(r.header("date").is_some());

    let r = s.get("/no/such/path");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_found");

    let mut c = s.tcp();
    c.write_all(b"DELETE /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut c, &mut Vec::new(), false).unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    assert_eq!(r.json()["error"], "method_not_allowed");
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let s = Server::plain(&[]);
    let mut c = s.tcp();
    let mut buf = Vec::new();
    for _ in 0..20 {
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let r = read_response(&mut c, &mut buf, false).unwrap();
        assert_eq!(r.status, 200);
        assert!(!r.closes());
    }
}

#[test]
fn pipelined_answers_come_back_in_order() {
    let s = Server::plain(&[]);
    let mut c = s.tcp();
    let paths = [
        "/healthz", "/nope", "/metrics", "/healthz", "/x/y", "/metrics",
    ];
    let mut all = Vec::new();
    for _ in 0..5 {
        for p in paths {
            all.extend_from_slice(format!("GET {p} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        }
    }
    // One write: the server sees all thirty requests at once.
    c.write_all(&all).unwrap();
    let mut buf = Vec::new();
    for _ in 0..5 {
        for p in paths {
            let r = read_response(&mut c, &mut buf, false).unwrap();
            let expect = match p {
                "/healthz" | "/metrics" => 200,
                _ => 404,
            };
            assert_eq!(r.status, expect, "{p}");
            if p == "/metrics" {
                assert!(r.text().contains("latchkey_http_requests_total"));
            }
        }
    }
}

#[test]
fn content_length_and_chunked_bodies_are_consumed_exactly() {
    let s = Server::plain(&[]);
    let mut c = s.tcp();
    // Bodies on a GET are legal and ignored by the route; what matters is that the next request
    // on the connection starts exactly after each body.
    c.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
          GET /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n\
          GET /nope HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut c, &mut buf, false).unwrap().status, 200);
    assert_eq!(read_response(&mut c, &mut buf, false).unwrap().status, 200);
    assert_eq!(read_response(&mut c, &mut buf, false).unwrap().status, 404);
}

#[test]
fn chunked_body_split_across_writes() {
    let s = Server::plain(&[]);
    let mut c = s.tcp();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab")
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.write_all(b"c\r\n0\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.write_all(b"\r\n").unwrap();
    assert_eq!(
        read_response(&mut c, &mut Vec::new(), false)
            .unwrap()
            .status,
        200
    );
}

#[test]
fn head_has_length_but_no_body() {
    let s = Server::plain(&[]);
    let mut c = s.tcp();
    c.write_all(
        b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    let head = read_response(&mut c, &mut buf, true).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("15"));
    assert!(head.body.is_empty());
    // If HEAD had sent a body, this would parse it as the next status line and fail.
    let get = read_response(&mut c, &mut buf, false).unwrap();
    assert_eq!(get.body, br#"{"status":"ok"}"#);
}

#[test]
fn connection_close_is_honoured() {
    let s = Server::plain(&[]);
    let mut c = s.tcp();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut c, &mut buf, false).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.closes());
    // The pipelined second request is not answered: the connection ends after the first.
    buf.extend(read_until_closed(&mut c));
    assert!(
        buf.is_empty(),
        "unexpected bytes after close: {:?}",
        String::from_utf8_lossy(&buf)
    );

    let mut c = s.tcp();
    c.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    assert!(read_response(&mut c, &mut buf, false).unwrap().closes());
    assert!(read_until_closed(&mut c).is_empty());
}

#[test]
fn expect_100_continue() {
    let s = Server::plain(&[]);
    let mut c = s.tcp();
    c.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    let interim = read_response(&mut c, &mut buf, false).unwrap();
    assert_eq!(interim.status, 100);
    c.write_all(b"body").unwrap();
    assert_eq!(read_response(&mut c, &mut buf, false).unwrap().status, 200);
}

#[test]
fn max_requests_per_connection_closes_after_the_last() {
    let s = Server::plain(&["--max-requests-per-connection", "3"]);
    let mut c = s.tcp();
    let mut buf = Vec::new();
    for i in 1..=3 {
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let r = read_response(&mut c, &mut buf, false).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.closes(), i == 3, "request {i}");
    }
    assert!(read_until_closed(&mut c).is_empty());
    s.assert_serving();
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let s = Server::plain(&["--idle-timeout", "300ms"]);
    let mut c = s.tcp();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut c, &mut Vec::new(), false)
            .unwrap()
            .status,
        200
    );
    // The server closes without an answer; read_until_closed fails the test if it does not.
    assert!(read_until_closed(&mut c).is_empty());
    drop(c);
    s.wait_metric(
        "latchkey_connections_closed_total{reason=\"idle_timeout\"}",
        1.0,
    );
}

#[test]
fn sigterm_finishes_the_request_in_flight_and_exits_zero() {
    let mut s = Server::plain(&[]);
    let mut idle = s.tcp();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut idle, &mut Vec::new(), false)
            .unwrap()
            .status,
        200
    );

    // A request whose body is half sent when the signal arrives.
    let mut busy = s.tcp();
    busy.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.signal("TERM");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        s.wait_exit(Duration::ZERO).is_none(),
        "exited with a request in flight"
    );
    busy.write_all(b"world").unwrap();
    let r = read_response(&mut busy, &mut Vec::new(), false).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.closes());
    // The idle keep-alive connection is closed, not left hanging.
    assert!(read_until_closed(&mut idle).is_empty());
    let status = s
        .wait_exit(Duration::from_secs(10))
        .expect("server exits after draining");
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{}",
        s.stderr()
    );
    // New connections are refused once the server is gone.
    assert!(std::net::TcpStream::connect(s.addr).is_err());
}

#[test]
fn settings_file_is_read_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("settings.toml");
    std::fs::write(
        &file,
        "max-requests-per-connection = 1\nidle-timeout = \"5s\"\n",
    )
    .unwrap();
    let s = Server::plain(&["--config", file.to_str().unwrap()]);
    let mut c = s.tcp();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert!(
        read_response(&mut c, &mut Vec::new(), false)
            .unwrap()
            .closes()
    );

    let s = Server::plain(&[
        "--config",
        file.to_str().unwrap(),
        "--max-requests-per-connection",
        "5",
    ]);
    let mut c = s.tcp();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert!(
        !read_response(&mut c, &mut Vec::new(), false)
            .unwrap()
            .closes()
    );
}

#[test]
fn metrics_count_requests_by_route_and_status() {
    let s = Server::plain(&[]);
    for _ in 0..3 {
        s.get("/healthz");
    }
    s.get("/nope");
    assert_eq!(
        s.metric("latchkey_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"}"),
        3.0
    );
    assert_eq!(
        s.metric("latchkey_http_requests_total{method=\"\",route=\"unmatched\",status=\"404\"}"),
        1.0
    );
    let text = s.get("/metrics").text();
    for series in [
        // Latency by route: the raw path of an unrouted request is never a label.
        "latchkey_http_request_duration_seconds_count{method=\"GET\",route=\"/healthz\"} 3\n",
        "latchkey_http_request_duration_seconds_count{method=\"\",route=\"unmatched\"} 1\n",
        "latchkey_tokens_minted_total",
        "latchkey_tokens_verified_total",
        "latchkey_open_connections",
        "latchkey_tls_handshake_failures_total",
        "latchkey_store_commit_batch_size_count",
    ] {
        assert!(text.contains(series), "missing {series}");
    }
    assert!(!text.contains("nope"), "{text}");
    // Regression: the store never fed this histogram. First run commits signing keys,
    // profiles and the admin client, so it has counted something by now.
    assert!(
        s.metric("latchkey_store_commit_batch_size_count") >= 1.0,
        "{text}"
    );
}

/// What one keep-alive client saw.
#[derive(Debug, Default)]
struct ClientLog {
    /// Requests written before SIGTERM was sent that got no complete answer.
    failed_before_signal: Vec<String>,
    /// Requests written after it that got no complete answer.
    failed_after_signal: Vec<String>,
    answered: usize,
    /// The last answer said `Connection: close`.
    told_to_close: bool,
}

/// `clients` keep-alive clients send back-to-back requests until an answer says
/// `Connection: close` or the connection ends; SIGTERM arrives while they are busy.
fn sigterm_under_load(s: &mut Server, clients: usize) -> Vec<ClientLog> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::Instant;

    // Set just before the signal is sent: a request written while it is clear was sent
    // before the signal.
    let signalled = Arc::new(AtomicBool::new(false));
    let started = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let mut c = s.connect();
            let signalled = signalled.clone();
            let started = started.clone();
            std::thread::spawn(move || {
                let mut log = ClientLog::default();
                let mut buf = Vec::new();
                started.wait();
                let end = Instant::now() + Duration::from_secs(30);
                while Instant::now() < end {
                    let before = !signalled.load(Ordering::SeqCst);
                    let failed = if before {
                        &mut log.failed_before_signal
                    } else {
                        &mut log.failed_after_signal
                    };
                    if let Err(e) = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n") {
                        failed.push(format!("write: {e}"));
                        break;
                    }
                    match read_response(&mut c, &mut buf, false) {
                        Ok(r) if r.status == 200 && r.text().contains("ok") => {
                            log.answered += 1;
                            if r.closes() {
                                log.told_to_close = true;
                                break;
                            }
                        }
                        Ok(r) => {
                            failed.push(format!("status {} {}", r.status, r.text()));
                            break;
                        }
                        Err(e) => {
                            failed.push(format!("read: {e}"));
                            break;
                        }
                    }
                }
                log
            })
        })
        .collect();
    started.wait();
    std::thread::sleep(Duration::from_millis(300));
    signalled.store(true, Ordering::SeqCst);
    s.signal("TERM");
    let logs: Vec<ClientLog> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let status = s
        .wait_exit(Duration::from_secs(15))
        .expect("server exits after draining");
    assert!(status.success(), "exit status {status:?}");
    logs
}

/// Every request sent before the signal is answered; so is every request a busy client sent
/// after it until an answer told it `Connection: close`: none is cut off.
fn check_drain(mut s: Server) {
    let logs = sigterm_under_load(&mut s, 32);
    let before: Vec<&String> = logs.iter().flat_map(|l| &l.failed_before_signal).collect();
    assert!(
        before.is_empty(),
        "{} requests sent before SIGTERM failed: {before:?}; stderr:\n{}",
        before.len(),
        s.stderr()
    );
    let after: Vec<&String> = logs.iter().flat_map(|l| &l.failed_after_signal).collect();
    assert!(
        after.is_empty(),
        "{} requests of busy clients were cut off during the drain: {after:?}",
        after.len()
    );
    assert!(logs.iter().all(|l| l.answered > 0 && l.told_to_close));
}

#[test]
fn sigterm_with_busy_keep_alive_clients_answers_every_request_sent_before_it() {
    check_drain(Server::plain(&[]));
}

#[test]
fn sigterm_with_busy_tls_keep_alive_clients_answers_every_request_sent_before_it() {
    check_drain(Server::tls(&[]));
}
