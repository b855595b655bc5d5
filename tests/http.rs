//! Plain HTTP on the WebSocket port: pages and request bodies reach the handler, and
//! requests the server cannot serve get a specific status, a reason, and a closed socket.
//! (Requests here say `Connection: close` where the test reads to EOF; keep-alive has its
//! own tests in keepalive.rs.)

mod common;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use wshub::{Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request, Response};

const PAGE: &str =
    "<!doctype html><h1>wshub</h1><script>new WebSocket('ws://'+location.host+'/ws')</script>";

/// A request as the handler saw it: method, path, query, body.
type Seen = (String, String, Option<String>, Vec<u8>);

/// `/ws` upgrades (and echoes text), `GET /` is a page, `POST /echo` answers with its body.
#[derive(Clone)]
struct Site {
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn site() -> (Site, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    (
        Site {
            seen: Arc::clone(&seen),
        },
        seen,
    )
}

impl Handler for Site {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, req: &Request<'_>) -> Reply<()> {
        self.seen.lock().unwrap().push((
            req.method().to_owned(),
            req.path().to_owned(),
            req.query().map(str::to_owned),
            req.body().to_vec(),
        ));
        match (req.method(), req.path()) {
            (_, "/ws") => Reply::accept(()),
            ("GET", "/") => Reply::Respond(Response::html(PAGE)),
            ("POST", "/echo") => Reply::Respond(
                Response::new(200)
                    .header("Content-Type", "application/octet-stream")
                    .body(req.body().to_vec()),
            ),
            _ => Reply::Respond(Response::text(404, "no such page")),
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId, msg: Message) {
        if let Message::Text(t) = msg {
            ctx.send(id, &Frame::text(&t)).unwrap();
        }
    }
}

fn page_headers() -> Vec<(String, String)> {
    headers(&[
        ("connection", "close"),
        ("content-length", &PAGE.len().to_string()),
        ("content-type", "text/html; charset=utf-8"),
    ])
}

fn assert_page(response: &[u8]) {
    let (status, got_headers, body) = parse_response(response);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(got_headers, page_headers());
    assert_eq!(String::from_utf8_lossy(&body), PAGE);
}

fn seen(method: &str, path: &str, query: Option<&str>, body: &[u8]) -> Seen {
    (
        method.to_owned(),
        path.to_owned(),
        query.map(str::to_owned),
        body.to_vec(),
    )
}

#[test]
fn page_and_socket_share_one_port() {
    let (site, log) = site();
    let server = start(Config::default(), clone_per_loop(site));
    let mut ws = connect(&server.url("/ws"));
    ws.send(tungstenite::Message::text("before")).unwrap();
    assert_eq!(next_text(&mut ws), "before");

    // A page request that is half sent while the socket keeps working.
    let mut slow = raw_connect(server.addr);
    slow.write_all(b"GET /?from=slow HTTP/1.1\r\nHo").unwrap();
    ws.send(tungstenite::Message::text("during")).unwrap();
    assert_eq!(next_text(&mut ws), "during");

    // Whole page requests, one after another, while both are open.
    for _ in 0..3 {
        assert_page(&raw_exchange(
            server.addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ));
    }
    slow.write_all(b"st: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_page(&read_to_close(&mut slow));

    ws.send(tungstenite::Message::text("after")).unwrap();
    assert_eq!(next_text(&mut ws), "after");
    close_client(ws);

    let handle = server.handle.clone();
    server.stop().1.unwrap();
    let get = seen("GET", "/", None, b"");
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            seen("GET", "/ws", None, b""),
            get.clone(),
            get.clone(),
            get,
            seen("GET", "/", Some("from=slow"), b""),
        ]
    );
    let stats = handle.stats();
    assert_eq!(stats.handshakes_accepted, 1);
    assert_eq!(stats.http_responses, 4);
    assert_eq!(stats.rejected.total(), 0);
    assert_eq!((stats.messages_in, stats.messages_out), (3, 3));
    assert_eq!(
        stats.bytes_in,
        ("before".len() + "during".len() + "after".len()) as u64
    );
}

/// Sends a POST to `/echo` in pieces (with `pause` between them) and checks the echoed body.
fn post_echo(server: &TestServer<Site>, body: &[u8], pieces: &[usize], pause: Duration) {
    let mut s = raw_connect(server.addr);
    // Fail in 3 s rather than at the server's 10 s handshake timeout.
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut bytes = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    let mut at = 0;
    for &piece in pieces.iter().chain([&bytes.len()]) {
        s.write_all(&bytes[at..piece]).unwrap();
        at = piece;
        std::thread::sleep(pause);
    }
    let response = read_to_close(&mut s);
    let (status, got_headers, got_body) = parse_response(&response);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        got_headers,
        headers(&[
            ("connection", "close"),
            ("content-length", &body.len().to_string()),
            ("content-type", "application/octet-stream"),
        ])
    );
    assert!(got_body == body, "echoed body differs");
}

/// 3000 bytes that are not UTF-8.
fn binary_body() -> Vec<u8> {
    (0..3000u32).map(|i| (i * 7 % 256) as u8).collect()
}

#[test]
fn post_body_reaches_the_handler_exactly() {
    let (site, log) = site();
    let server = start(Config::default(), clone_per_loop(site));
    let body = binary_body();
    post_echo(&server, &body, &[], Duration::ZERO);
    post_echo(&server, b"", &[], Duration::ZERO);
    drop(server);
    assert!(
        *log.lock().unwrap()
            == vec![
                seen("POST", "/echo", None, &body),
                seen("POST", "/echo", None, b"")
            ],
        "the handler saw other requests or bodies"
    );
}

#[test]
fn post_body_arriving_after_the_head_reaches_the_handler() {
    let (site, log) = site();
    let server = start(Config::default(), clone_per_loop(site));
    let body = binary_body();
    let head_len =
        "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3000\r\n\r\n".len();
    // Head alone, then the body in two parts.
    post_echo(
        &server,
        &body,
        &[head_len, head_len + 1000],
        Duration::from_millis(30),
    );
    // Head with the start of the body, then the rest.
    post_echo(&server, &body, &[head_len + 10], Duration::from_millis(30));
    drop(server);
    let want = seen("POST", "/echo", None, &body);
    assert!(
        *log.lock().unwrap() == vec![want.clone(), want],
        "the handler saw other requests or bodies"
    );
}

#[test]
fn unservable_requests_get_specific_statuses_and_the_socket_closes() {
    let (site, log) = site();
    let config = Config::default()
        .max_request_bytes(1024)
        .max_body_bytes(4096);
    let server = start(config, clone_per_loop(site));

    // A GET whose head (request line, headers, blank line) is exactly `len` bytes.
    let head_of = |len: usize| {
        let fixed = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: \r\n\r\n".len();
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(len - fixed)
        )
    };
    let too_many_headers = format!(
        "GET / HTTP/1.1\r\n{}\r\n",
        (0..70).map(|i| format!("X-{i}: v\r\n")).collect::<String>()
    );
    // The head at exactly the limit is served.
    assert_page(&raw_exchange(server.addr, head_of(1024).as_bytes()));

    // (what, request, status line, body)
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "malformed request line",
            "GET /a b c HTTP/1.1\r\n\r\n".to_owned(),
            "HTTP/1.1 400 Bad Request",
            "malformed request: invalid HTTP version",
        ),
        (
            "header without colon",
            "GET / HTTP/1.1\r\nHost localhost\r\n\r\n".to_owned(),
            "HTTP/1.1 400 Bad Request",
            "malformed request: invalid header name",
        ),
        (
            "invalid Content-Length",
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n".to_owned(),
            "HTTP/1.1 400 Bad Request",
            "invalid Content-Length",
        ),
        (
            "head one byte over the limit",
            head_of(1025),
            "HTTP/1.1 431 Request Header Fields Too Large",
            "request header too large",
        ),
        (
            "head far over the limit, still unfinished",
            format!("GET / HTTP/1.1\r\nX-Pad: {}", "p".repeat(3000)),
            "HTTP/1.1 431 Request Header Fields Too Large",
            "request header too large",
        ),
        (
            "70 headers",
            too_many_headers,
            "HTTP/1.1 431 Request Header Fields Too Large",
            "too many request headers",
        ),
        (
            "body over max_body_bytes",
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4097\r\n\r\n".to_owned(),
            "HTTP/1.1 413 Content Too Large",
            "request body too large",
        ),
        (
            "chunked body",
            "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_owned(),
            "HTTP/1.1 501 Not Implemented",
            "chunked request bodies are not supported",
        ),
        (
            "unknown path",
            "GET /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned(),
            "HTTP/1.1 404 Not Found",
            "no such page",
        ),
        (
            "no Host",
            "GET / HTTP/1.1\r\n\r\n".to_owned(),
            "HTTP/1.1 400 Bad Request",
            "missing Host header",
        ),
        (
            "two Hosts",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_owned(),
            "HTTP/1.1 400 Bad Request",
            "more than one Host header",
        ),
        (
            "two different keys",
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n\r\n"
                .to_owned(),
            "HTTP/1.1 400 Bad Request",
            "more than one Sec-WebSocket-Key header",
        ),
        (
            "a target that is neither /path nor http://host/path",
            "GET ws HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
            "HTTP/1.1 400 Bad Request",
            "invalid request target: expected /path or http://host/path",
        ),
    ];
    for (what, req, status, body) in &cases {
        // raw_exchange reads to EOF: it fails unless the server closes the socket.
        let response = raw_exchange(server.addr, req.as_bytes());
        let (got_status, got_headers, got_body) = parse_response(&response);
        assert_eq!(&got_status, status, "{what}");
        assert_eq!(
            got_headers,
            headers(&[
                ("connection", "close"),
                ("content-length", &body.len().to_string()),
                ("content-type", "text/plain; charset=utf-8"),
            ]),
            "{what}"
        );
        assert_eq!(String::from_utf8_lossy(&got_body), *body, "{what}");
    }

    // A body at exactly the limit is accepted.
    let body = vec![b'x'; 4096];
    let mut req =
        b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 4096\r\n\r\n"
            .to_vec();
    req.extend_from_slice(&body);
    let (status, _, got_body) = parse_response(&raw_exchange(server.addr, &req));
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(got_body == body);

    let handle = server.handle.clone();
    server.stop().1.unwrap();
    // Only the servable requests reached the handler.
    let paths: Vec<(String, String, usize)> = log
        .lock()
        .unwrap()
        .iter()
        .map(|(m, p, _, b)| (m.clone(), p.clone(), b.len()))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("GET".to_owned(), "/".to_owned(), 0),
            ("GET".to_owned(), "/missing".to_owned(), 0),
            ("POST".to_owned(), "/echo".to_owned(), 4096),
        ]
    );
    let stats = handle.stats();
    assert_eq!(stats.http_responses, 15);
    assert_eq!(stats.rejected.bad_request, 7);
    assert_eq!(stats.rejected.header_too_large, 3);
    assert_eq!(stats.rejected.content_too_large, 1);
    assert_eq!(stats.rejected.not_found, 1);
    assert_eq!(stats.rejected.other, 1); // 501
    assert_eq!(stats.rejected.total(), 13);
    assert_eq!(stats.handshakes_accepted, 0);
}

#[test]
fn expect_100_continue_gets_an_interim_answer_before_the_body() {
    let (site, log) = site();
    let server = start(Config::default(), clone_per_loop(site));
    let body = binary_body();
    let mut s = raw_connect(server.addr);
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nExpect: 100-continue\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // Like curl: the body follows only once the server said to go on.
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(&body).unwrap();
    let response = read_to_close(&mut s);
    assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
    assert!(response.ends_with(&body), "the body was not echoed whole");
    drop(server);
    assert!(*log.lock().unwrap() == vec![seen("POST", "/echo", None, &body)]);
}

#[test]
fn head_gets_the_head_of_the_answer_without_its_body() {
    let (site, _) = site();
    let server = start(Config::default(), clone_per_loop(site));
    // The site answers both with the same 404 and its reason.
    let get = raw_exchange(
        server.addr,
        b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let head = raw_exchange(
        server.addr,
        b"HEAD /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let get_head = &get[..get.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4];
    assert!(!body(&get).is_empty());
    assert_eq!(
        head, get_head,
        "HEAD is GET's head, Content-Length included, and nothing more"
    );
}
