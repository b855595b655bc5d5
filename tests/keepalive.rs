//! HTTP/1.1 keep-alive on the plain-HTTP side: one connection serves request after request
//! (pipelined ones in order), until the client, the request limit, the idle timeout or a
//! newcomer that needs the handshake slot ends it; an upgrade may come after plain requests.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use wshub::{Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request, Response};

/// `GET|HEAD /p/N` → `page N`; `POST /echo` → its body; `/big`, `/huge` → `BIG`, `HUGE`
/// bytes; `/nobody` →
/// 204 (with a body the server must not send); `/bye` → an answer that says
/// `Connection: close` itself; `/ws` upgrades and echoes text. Records every request as
/// "METHOD path body-length".
#[derive(Clone)]
struct Site {
    seen: Arc<Mutex<Vec<String>>>,
}

const BIG: usize = 16 * 1024;
const HUGE: usize = 4 << 20;

fn site() -> (Site, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let site = Site {
        seen: Arc::clone(&seen),
    };
    (site, seen)
}

impl Handler for Site {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, req: &Request<'_>) -> Reply<()> {
        self.seen.lock().unwrap().push(format!(
            "{} {} {}",
            req.method(),
            req.path(),
            req.body().len()
        ));
        let path = req.path();
        if let Some(n) = path.strip_prefix("/p/") {
            return Reply::Respond(Response::text(200, format!("page {n}")));
        }
        match path {
            "/ws" => Reply::accept(()),
            "/echo" => Reply::Respond(
                Response::new(200)
                    .header("Content-Type", "application/octet-stream")
                    .body(req.body().to_vec()),
            ),
            "/big" => Reply::Respond(Response::new(200).body(vec![b'x'; BIG])),
            "/huge" => Reply::Respond(Response::new(200).body(vec![b'y'; HUGE])),
            "/nobody" => Reply::Respond(Response::new(204).body("must not be sent")),
            "/bye" => Reply::Respond(Response::text(200, "bye").header("Connection", "close")),
            _ => Reply::Respond(Response::text(404, "no such page")),
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId, msg: Message) {
        if let Message::Text(t) = msg {
            ctx.send(id, &Frame::text(&t)).unwrap();
        }
    }
}

/// The exact answer to `GET /p/n` (`close`: the last on its connection).
fn page(n: usize, close: bool) -> Vec<u8> {
    let body = format!("page {n}");
    text_answer("200 OK", &body, close, true)
}

fn text_answer(status: &str, body: &str, close: bool, with_body: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

fn echo_answer(body: &[u8], close: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
}

/// Reads exactly `want.len()` bytes and checks them: an answer must be complete, and
/// nothing may come before it.
fn expect_bytes(s: &mut TcpStream, want: &[u8], what: &str) {
    let mut got = vec![0u8; want.len()];
    if let Err(e) = s.read_exact(&mut got) {
        panic!("{what}: reading {} bytes: {e}", want.len());
    }
    assert!(
        got == want,
        "{what}: got {:?}, want {:?}",
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(want)
    );
}

/// Asserts the server closes the connection with nothing more said.
fn expect_eof(s: &mut TcpStream, what: &str) {
    let rest = read_to_close(s);
    assert!(
        rest.is_empty(),
        "{what}: more bytes before EOF: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

#[test]
fn a_thousand_requests_on_one_connection() {
    let (site, seen) = site();
    let server = start(
        Config::default().max_requests_per_connection(1000),
        clone_per_loop(site),
    );
    let mut s = raw_connect(server.addr);
    let began = Instant::now();
    for i in 1..=1000 {
        s.write_all(get(&format!("/p/{i}")).as_bytes()).unwrap();
        expect_bytes(&mut s, &page(i, i == 1000), &format!("request {i}"));
    }
    expect_eof(&mut s, "after the last request");
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "1,000 requests took {:?}",
        began.elapsed()
    );
    let handle = server.handle.clone();
    server.stop().1.unwrap();
    let want: Vec<String> = (1..=1000).map(|i| format!("GET /p/{i} 0")).collect();
    assert_eq!(*seen.lock().unwrap(), want);
    let stats = handle.stats();
    assert_eq!(stats.http_responses, 1000);
    assert_eq!(stats.keep_alive_closes, 0);
    assert_eq!(stats.handshake_timeouts, 0);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (site, seen) = site();
    let server = start(Config::default(), clone_per_loop(site));
    let binary: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut requests = Vec::new();
    requests.extend_from_slice(get("/p/1").as_bytes());
    requests.extend_from_slice(b"HEAD /p/2 HTTP/1.1\r\nHost: x\r\n\r\n");
    requests.extend_from_slice(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
    // A GET with a body: its bytes are the body, not the start of the next request.
    requests.extend_from_slice(b"GET /p/3 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nGET ");
    requests.extend_from_slice(
        format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            binary.len()
        )
        .as_bytes(),
    );
    requests.extend_from_slice(&binary);
    // A 204 whose handler set a body: none may go out, or it would be read as the next
    // answer.
    requests.extend_from_slice(get("/nobody").as_bytes());
    requests.extend_from_slice(b"GET /p/4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    // After a `Connection: close` request nothing more is served.
    requests.extend_from_slice(get("/p/5").as_bytes());

    let mut s = raw_connect(server.addr);
    s.write_all(&requests).unwrap();
    let mut want = Vec::new();
    want.extend(page(1, false));
    want.extend(text_answer("200 OK", "page 2", false, false));
    want.extend(echo_answer(b"abc", false));
    want.extend(page(3, false));
    want.extend(echo_answer(&binary, false));
    want.extend_from_slice(b"HTTP/1.1 204 No Content\r\n\r\n");
    want.extend(page(4, true));
    let got = read_to_close(&mut s);
    assert!(
        got == want,
        "got {:?}\nwant {:?}",
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
    drop(server);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            "GET /p/1 0",
            "HEAD /p/2 0",
            "POST /echo 3",
            "GET /p/3 4",
            "POST /echo 3000",
            "GET /nobody 0",
            "GET /p/4 0",
        ]
    );
}

#[test]
fn pipelined_requests_in_pieces_and_in_single_bytes() {
    let (site, _) = site();
    let server = start(Config::default(), clone_per_loop(site));
    let mut requests = Vec::new();
    let mut want = Vec::new();
    for i in 1..=20 {
        requests.extend_from_slice(get(&format!("/p/{i}")).as_bytes());
        want.extend(page(i, false));
    }
    let mut s = raw_connect(server.addr);
    // Pieces that cut requests anywhere, two answers' worth at a time.
    for chunk in requests.chunks(7) {
        s.write_all(chunk).unwrap();
    }
    expect_bytes(&mut s, &want, "20 requests in 7-byte pieces");
    for &b in get("/p/21").as_bytes() {
        s.write_all(&[b]).unwrap();
    }
    expect_bytes(&mut s, &page(21, false), "a request one byte at a time");
}

#[test]
fn connection_close_from_the_client_is_honoured() {
    let (site, _) = site();
    let server = start(Config::default(), clone_per_loop(site));
    let mut s = raw_connect(server.addr);
    s.write_all(get("/p/1").as_bytes()).unwrap();
    expect_bytes(&mut s, &page(1, false), "first");
    // Any case, among other tokens.
    s.write_all(b"GET /p/2 HTTP/1.1\r\nHost: x\r\nConnection: foo, CLOSE\r\n\r\n")
        .unwrap();
    expect_bytes(&mut s, &page(2, true), "with Connection: close");
    expect_eof(&mut s, "after Connection: close");

    // The application may end it too.
    let mut s = raw_connect(server.addr);
    s.write_all(get("/bye").as_bytes()).unwrap();
    expect_bytes(&mut s, &text_answer("200 OK", "bye", true, true), "/bye");
    expect_eof(&mut s, "after the application's Connection: close");
}

#[test]
fn http_1_0_closes_after_one_answer() {
    let (site, _) = site();
    let server = start(Config::default(), clone_per_loop(site));
    for request in [
        &b"GET /p/1 HTTP/1.0\r\n\r\nGET /p/2 HTTP/1.0\r\n\r\n"[..],
        b"GET /p/1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /p/2 HTTP/1.0\r\n\r\n",
    ] {
        let got = raw_exchange(server.addr, request);
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&page(1, true))
        );
    }
}

#[test]
fn the_request_limit_ends_the_connection() {
    let (site, _) = site();
    let server = start(
        Config::default().max_requests_per_connection(3),
        clone_per_loop(site),
    );
    let mut s = raw_connect(server.addr);
    for i in 1..=3 {
        s.write_all(get(&format!("/p/{i}")).as_bytes()).unwrap();
        expect_bytes(&mut s, &page(i, i == 3), &format!("request {i}"));
    }
    expect_eof(&mut s, "after the third answer");

    // Pipelined past the limit: the rest is not served.
    let mut s = raw_connect(server.addr);
    let five: String = (1..=5).map(|i| get(&format!("/p/{i}"))).collect();
    s.write_all(five.as_bytes()).unwrap();
    let want: Vec<u8> = (1..=3).flat_map(|i| page(i, i == 3)).collect();
    assert_eq!(
        String::from_utf8_lossy(&read_to_close(&mut s)),
        String::from_utf8_lossy(&want)
    );
}

#[test]
fn refusals_the_server_makes_close_the_connection() {
    let (site, _) = site();
    let server = start(Config::default().max_body_bytes(10), clone_per_loop(site));
    // A good request, then one that cannot be served: the refusal closes.
    let mut s = raw_connect(server.addr);
    s.write_all(get("/p/1").as_bytes()).unwrap();
    expect_bytes(&mut s, &page(1, false), "first");
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n")
        .unwrap();
    expect_bytes(
        &mut s,
        &text_answer(
            "413 Content Too Large",
            "request body too large",
            true,
            true,
        ),
        "413",
    );
    expect_eof(&mut s, "after 413");

    // An invalid upgrade refused by the server (426) closes too, while the application's
    // own 404 does not.
    let mut s = raw_connect(server.addr);
    s.write_all(get("/missing").as_bytes()).unwrap();
    expect_bytes(
        &mut s,
        &text_answer("404 Not Found", "no such page", false, true),
        "404",
    );
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    )
    .unwrap();
    let rest = read_to_close(&mut s);
    assert!(
        rest.starts_with(b"HTTP/1.1 426 Upgrade Required\r\n"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    assert!(String::from_utf8_lossy(&rest).contains("Connection: close\r\n"));
}

#[test]
fn an_idle_kept_alive_connection_closes_at_its_timeout() {
    let (site, _) = site();
    let config = Config::default()
        .keep_alive_timeout(Duration::from_millis(300))
        .handshake_timeout(Duration::from_secs(2));
    let server = start(config, clone_per_loop(site));
    let mut s = raw_connect(server.addr);
    s.write_all(get("/p/1").as_bytes()).unwrap();
    expect_bytes(&mut s, &page(1, false), "first");
    let answered = Instant::now();
    expect_eof(&mut s, "idle");
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_millis(250) && idle < Duration::from_millis(1500),
        "closed after {idle:?} idle"
    );
    assert!(wait_until(Duration::from_secs(2), || {
        server.handle.stats().keep_alive_closes == 1
    }));

    // A request that has started arriving has the handshake timeout, not the idle one.
    let mut s = raw_connect(server.addr);
    s.write_all(get("/p/1").as_bytes()).unwrap();
    expect_bytes(&mut s, &page(1, false), "first");
    s.write_all(b"GET /p/2 HT").unwrap();
    std::thread::sleep(Duration::from_millis(700));
    s.write_all(b"TP/1.1\r\nHost: x\r\n\r\n").unwrap();
    expect_bytes(&mut s, &page(2, false), "second, sent slowly");
    // ... and it is cut off at the handshake timeout if it never completes.
    s.write_all(b"GET /p/3 HT").unwrap();
    let started = Instant::now();
    expect_eof(&mut s, "incomplete request");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "closed after {waited:?}"
    );
    // (Counters are published at the end of the loop turn that closed the socket.)
    assert!(wait_until(Duration::from_secs(2), || {
        server.handle.stats().handshake_timeouts == 1
    }));
    let stats = server.handle.stats();
    assert_eq!(stats.keep_alive_closes, 1);
    assert_eq!(stats.rejected.total(), 0, "no 408 for an idle connection");
}

#[test]
fn an_upgrade_after_plain_requests_on_the_same_connection() {
    let (site, _) = site();
    let server = start(Config::default(), clone_per_loop(site));
    let mut s = raw_connect(server.addr);
    s.write_all(get("/p/1").as_bytes()).unwrap();
    expect_bytes(&mut s, &page(1, false), "first");
    s.write_all(b"HEAD /p/2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    expect_bytes(
        &mut s,
        &text_answer("200 OK", "page 2", false, false),
        "HEAD",
    );
    let mut ws = RawWs::upgrade(s, "/ws");
    ws.send(0x1, b"hello after two requests").unwrap();
    assert_eq!(
        ws.expect_frame(),
        Some((0x81, b"hello after two requests".to_vec()))
    );

    // All in one write: two requests, the upgrade and a first frame.
    let mut s = raw_connect(server.addr);
    let mut bytes = (get("/p/1") + &get("/p/2") + &upgrade_request("/ws", "")).into_bytes();
    bytes.extend(masked_frame(0x81, b"pipelined"));
    s.write_all(&bytes).unwrap();
    expect_bytes(&mut s, &page(1, false), "first");
    expect_bytes(&mut s, &page(2, false), "second");
    let (head, mut pending) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(
        read_frame(&mut s, &mut pending),
        (0x81, b"pipelined".to_vec())
    );
    assert!(wait_until(Duration::from_secs(2), || {
        let stats = server.handle.stats();
        (stats.handshakes_accepted, stats.open_connections) == (2, 2)
    }));
}

#[test]
fn idle_kept_alive_connections_do_not_lock_newcomers_out() {
    let (site, _) = site();
    // One loop: an exact `max_handshakes`, which a cluster splits over its loops.
    let server = start(Config::default().max_handshakes(3), site);
    // A fresh connection that has sent nothing yet, older than the others: once it sends
    // its request it is served, as the idle kept-alive connections go first.
    let mut fresh = raw_connect(server.addr);
    // Two connections that stay open between requests: with `fresh`, all slots are taken.
    let mut a = raw_connect(server.addr);
    a.write_all(get("/p/1").as_bytes()).unwrap();
    expect_bytes(&mut a, &page(1, false), "a");
    let mut b = raw_connect(server.addr);
    b.write_all(get("/p/2").as_bytes()).unwrap();
    expect_bytes(&mut b, &page(2, false), "b");
    let mut newcomers = Vec::new();
    for (i, idle) in [(3, &mut a), (4, &mut b)] {
        let mut c = raw_connect(server.addr);
        c.write_all(get(&format!("/p/{i}")).as_bytes()).unwrap();
        expect_bytes(&mut c, &page(i, false), "newcomer");
        // The kept-alive connection idle the longest went, quietly.
        expect_eof(idle, "the connection idle the longest");
        newcomers.push(c);
    }
    fresh.write_all(get("/p/5").as_bytes()).unwrap();
    expect_bytes(&mut fresh, &page(5, false), "the fresh connection");
    // The newcomers are kept alive too.
    for (i, c) in newcomers.iter_mut().enumerate() {
        c.write_all(get("/p/6").as_bytes()).unwrap();
        expect_bytes(c, &page(6, false), &format!("newcomer {i} again"));
    }
    assert!(wait_until(Duration::from_secs(2), || {
        server.handle.stats().http_responses == 7
    }));
    let stats = server.handle.stats();
    assert_eq!(stats.handshake_evictions, 2);
    assert_eq!(stats.rejected.total(), 0, "no 408 for idle connections");
}

#[test]
fn a_client_that_pipelines_without_reading_is_paused_not_buffered() {
    let (site, seen) = site();
    let server = start(
        Config::default().max_requests_per_connection(10_000),
        clone_per_loop(site),
    );
    let n = 600;
    // A small receive buffer, so the kernel holds little of what the client does not read.
    let mut s = connect_with_rcvbuf(server.addr, 16 * 1024);
    let requests: String = (0..n).map(|_| get("/big")).collect();
    s.write_all(requests.as_bytes()).unwrap();
    // The server answers until the queue passes max_backpressure (256 KiB), then stops
    // reading and parsing until the client reads.
    assert!(wait_until(Duration::from_secs(5), || seen
        .lock()
        .unwrap()
        .len()
        >= 10));
    std::thread::sleep(Duration::from_millis(200));
    let answered = seen.lock().unwrap().len();
    assert!(answered < n, "all {n} answered while none was read");
    let head = "HTTP/1.1 200 OK\r\nContent-Length: 16384\r\n\r\n";
    let mut one = head.as_bytes().to_vec();
    one.extend(vec![b'x'; BIG]);
    for i in 0..n {
        expect_bytes(&mut s, &one, &format!("answer {i}"));
    }
    assert_eq!(seen.lock().unwrap().len(), n);
    let stats = server.handle.stats();
    assert!(
        stats.peak_queued_bytes < 1024 * 1024,
        "queued {} bytes for one client",
        stats.peak_queued_bytes
    );
}

#[test]
fn a_slow_download_is_not_cut_by_the_keep_alive_timeout() {
    let (site, _) = site();
    // The download takes about 2.6 s; the kernel's buffers hold far less than the 1 s
    // the idle clock gives the client to read them after the server's last write.
    let server = start(
        Config::default().keep_alive_timeout(Duration::from_secs(1)),
        clone_per_loop(site),
    );
    let mut s = connect_with_rcvbuf(server.addr, 16 * 1024);
    s.write_all(get("/huge").as_bytes()).unwrap();
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {HUGE}\r\n\r\n");
    let mut got = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let began = Instant::now();
    while got.len() < head.len() + HUGE {
        let n = s.read(&mut chunk).expect("the download was cut");
        assert!(n > 0, "EOF after {} bytes", got.len());
        got.extend_from_slice(&chunk[..n]);
        std::thread::sleep(Duration::from_millis(10)); // ~1.6 MB/s
    }
    assert!(
        began.elapsed() > Duration::from_millis(1500),
        "the download was not slow: {:?}",
        began.elapsed()
    );
    assert!(got.starts_with(head.as_bytes()));
    assert!(got[head.len()..].iter().all(|&b| b == b'y'));
    // Still kept alive after it.
    s.write_all(get("/p/1").as_bytes()).unwrap();
    expect_bytes(&mut s, &page(1, false), "after the download");
    expect_eof(&mut s, "idle after the download");
    assert!(wait_until(Duration::from_secs(2), || {
        server.handle.stats().keep_alive_closes == 1
    }));
}
