//! The HTTP upgrade: the 101 answer, requests that trickle in or carry frames with them,
//! refusals of invalid upgrades (status, reason, closed socket), and subprotocols.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use wshub::{Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request, Response};

/// RFC 6455 §1.3: the accept value for the sample key `dGhlIHNhbXBsZSBub25jZQ==`.
const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A request as the handler saw it.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    method: String,
    path: String,
    protocols: Vec<String>,
}

fn seen(method: &str, path: &str, protocols: &[&str]) -> Seen {
    Seen {
        method: method.to_owned(),
        path: path.to_owned(),
        protocols: protocols.iter().map(|p| p.to_string()).collect(),
    }
}

/// Accepts `/ws`; `/chat` picks subprotocol "chat", `/mqtt` picks "mqtt"; 404 otherwise.
/// Echoes messages.
#[derive(Clone)]
struct App {
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn app() -> (App, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    (
        App {
            seen: Arc::clone(&seen),
        },
        seen,
    )
}

impl Handler for App {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, req: &Request<'_>) -> Reply<()> {
        self.seen.lock().unwrap().push(Seen {
            method: req.method().to_owned(),
            path: req.path().to_owned(),
            protocols: req.protocols().map(str::to_owned).collect(),
        });
        let pick = |p: &str| Reply::Accept {
            data: (),
            protocol: Some(p.to_owned()),
            compress: true,
        };
        match req.path() {
            "/ws" => Reply::accept(()),
            "/chat" => pick("chat"),
            "/mqtt" => pick("mqtt"),
            _ => Reply::Respond(Response::text(404, "no such page")),
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId, msg: Message) {
        let frame = match &msg {
            Message::Text(t) => Frame::text(t),
            Message::Binary(b) => Frame::binary(b),
        };
        ctx.send(id, &frame).unwrap();
    }
}

/// A request from a first line and header lines.
fn request(first_line: &str, header_lines: &[&str]) -> String {
    let mut r = format!("{first_line}\r\n");
    for h in header_lines {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

const HOST: &str = "Host: localhost";
const UPGRADE: &str = "Upgrade: websocket";
const CONNECTION: &str = "Connection: Upgrade";
const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
const VERSION: &str = "Sec-WebSocket-Version: 13";

/// The 101 head for the sample key, headers sorted, optionally with a subprotocol.
fn expected_101(protocol: Option<&str>) -> Vec<(String, String)> {
    let mut h = vec![
        ("connection", "Upgrade"),
        ("sec-websocket-accept", SAMPLE_ACCEPT),
        ("upgrade", "websocket"),
    ];
    if let Some(p) = protocol {
        h.push(("sec-websocket-protocol", p));
    }
    headers(&h)
}

/// Sends `req` on a fresh socket and checks the complete 101 head; returns the socket and
/// the bytes that followed the head.
fn upgrade_raw(
    server: &TestServer<App>,
    req: impl AsRef<[u8]>,
    protocol: Option<&str>,
) -> (std::net::TcpStream, Vec<u8>) {
    let mut s = raw_connect(server.addr);
    s.write_all(req.as_ref()).unwrap();
    let (head, rest) = read_head(&mut s);
    let (status, mut got) = parse_head(&head);
    got.sort();
    assert_eq!(status, "HTTP/1.1 101 Switching Protocols", "head: {head:?}");
    assert_eq!(got, expected_101(protocol), "head: {head:?}");
    (s, rest)
}

/// Checks that the socket echoes a text frame, then closes it cleanly (close 1000 answered
/// with close 1000, then EOF from the server).
fn echo_then_close(s: &mut std::net::TcpStream, mut pending: Vec<u8>, text: &str) {
    s.write_all(&masked_frame(0x81, text.as_bytes())).unwrap();
    assert_eq!(
        read_frame(s, &mut pending),
        (0x81, text.as_bytes().to_vec())
    );
    s.write_all(&masked_frame(0x88, &1000u16.to_be_bytes()))
        .unwrap();
    assert_eq!(read_frame(s, &mut pending), (0x88, vec![0x03, 0xE8]));
    assert!(
        pending.is_empty(),
        "bytes after the close frame: {pending:?}"
    );
    assert_eq!(read_to_close(s), b"", "bytes after the close frame");
}

#[test]
fn upgrade_answers_101_with_the_rfc_sample_accept_key() {
    let (app, log) = app();
    let server = start(Config::default(), clone_per_loop(app));
    let (mut s, rest) = upgrade_raw(&server, upgrade_request("/ws", ""), None);
    assert!(rest.is_empty(), "bytes after the 101: {rest:?}");
    echo_then_close(&mut s, rest, "hello");

    // A real client too.
    let ws = connect(&server.url("/ws"));
    close_client(ws);

    let handle = server.handle.clone();
    server.stop().1.unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        vec![seen("GET", "/ws", &[]), seen("GET", "/ws", &[])]
    );
    let stats = handle.stats();
    assert_eq!(stats.handshakes_accepted, 2);
    assert_eq!(stats.http_responses, 0);
    assert_eq!(stats.rejected.total(), 0);
    assert_eq!((stats.messages_in, stats.messages_out), (1, 1));
}

#[test]
fn handshake_and_frame_arriving_one_byte_at_a_time() {
    let (app, log) = app();
    let server = start(Config::default(), clone_per_loop(app));
    let mut s = raw_connect(server.addr);
    for byte in upgrade_request("/ws", "").bytes() {
        s.write_all(&[byte]).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let (head, mut pending) = read_head(&mut s);
    let (status, mut got) = parse_head(&head);
    got.sort();
    assert_eq!(status, "HTTP/1.1 101 Switching Protocols");
    assert_eq!(got, expected_101(None));
    assert!(pending.is_empty());

    for byte in masked_frame(0x81, "byte by byte ✓".as_bytes()) {
        s.write_all(&[byte]).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        read_frame(&mut s, &mut pending),
        (0x81, "byte by byte ✓".as_bytes().to_vec())
    );
    echo_then_close(&mut s, pending, "and done");
    drop(server);
    // One request, parsed once, although it came in ~170 reads.
    assert_eq!(*log.lock().unwrap(), vec![seen("GET", "/ws", &[])]);
}

#[test]
fn frames_pipelined_with_the_request_are_decoded() {
    let (app, _) = app();
    let server = start(Config::default(), clone_per_loop(app));

    // Request and two whole frames in one write.
    let mut bytes = upgrade_request("/ws", "").into_bytes();
    bytes.extend(masked_frame(0x81, b"first"));
    bytes.extend(masked_frame(0x82, &[0, 1, 2, 255]));
    let (mut s, mut pending) = upgrade_raw(&server, &bytes, None);
    assert_eq!(read_frame(&mut s, &mut pending), (0x81, b"first".to_vec()));
    assert_eq!(read_frame(&mut s, &mut pending), (0x82, vec![0, 1, 2, 255]));
    echo_then_close(&mut s, pending, "third");

    // Request and the first bytes of a frame in one write, the rest of the frame later.
    let frame = masked_frame(0x81, b"split frame");
    let mut s = raw_connect(server.addr);
    let mut first = upgrade_request("/ws", "").into_bytes();
    first.extend_from_slice(&frame[..4]);
    s.write_all(&first).unwrap();
    let (head, mut pending) = read_head(&mut s);
    assert_eq!(parse_head(&head).0, "HTTP/1.1 101 Switching Protocols");
    std::thread::sleep(Duration::from_millis(20));
    s.write_all(&frame[4..]).unwrap();
    assert_eq!(
        read_frame(&mut s, &mut pending),
        (0x81, b"split frame".to_vec())
    );
    echo_then_close(&mut s, pending, "done");
}

#[test]
fn connection_header_is_a_case_insensitive_token_list() {
    let (app, _) = app();
    let server = start(Config::default(), clone_per_loop(app));
    let variants = [
        ["Connection: keep-alive, Upgrade", UPGRADE],
        ["Connection: keep-alive,upgrade", UPGRADE],
        ["Connection: UPGRADE", "Upgrade: WebSocket"],
    ];
    for [connection, upgrade] in variants {
        let req = request(
            "GET /ws HTTP/1.1",
            &[HOST, upgrade, connection, KEY, VERSION],
        );
        let (mut s, pending) = upgrade_raw(&server, &req, None);
        echo_then_close(&mut s, pending, connection);
    }
}

/// What, the request, the status line, the body, an extra header.
type Refusal = (
    &'static str,
    String,
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
);

#[test]
fn invalid_upgrades_get_specific_statuses_and_the_socket_closes() {
    let (app, log) = app();
    let server = start(Config::default(), clone_per_loop(app));
    let get = "GET /ws HTTP/1.1";
    let cases: Vec<Refusal> = vec![
        (
            "missing key",
            request(get, &[HOST, UPGRADE, CONNECTION, VERSION]),
            "HTTP/1.1 400 Bad Request",
            "missing or invalid Sec-WebSocket-Key",
            None,
        ),
        (
            "key of 5 bytes",
            request(
                get,
                &[
                    HOST,
                    UPGRADE,
                    CONNECTION,
                    "Sec-WebSocket-Key: c2hvcnQ=",
                    VERSION,
                ],
            ),
            "HTTP/1.1 400 Bad Request",
            "missing or invalid Sec-WebSocket-Key",
            None,
        ),
        (
            "key not base64",
            request(
                get,
                &[
                    HOST,
                    UPGRADE,
                    CONNECTION,
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j*Q==",
                    VERSION,
                ],
            ),
            "HTTP/1.1 400 Bad Request",
            "missing or invalid Sec-WebSocket-Key",
            None,
        ),
        (
            "missing Upgrade",
            request(get, &[HOST, CONNECTION, KEY, VERSION]),
            "HTTP/1.1 400 Bad Request",
            "missing 'Upgrade: websocket' header",
            None,
        ),
        (
            "Connection without upgrade",
            request(
                get,
                &[HOST, UPGRADE, "Connection: keep-alive", KEY, VERSION],
            ),
            "HTTP/1.1 400 Bad Request",
            "'Connection' header lacks the 'upgrade' token",
            None,
        ),
        (
            "HTTP/1.0",
            request(
                "GET /ws HTTP/1.0",
                &[HOST, UPGRADE, CONNECTION, KEY, VERSION],
            ),
            "HTTP/1.1 400 Bad Request",
            "websocket handshake needs HTTP/1.1",
            None,
        ),
        (
            "POST",
            request(
                "POST /ws HTTP/1.1",
                &[HOST, UPGRADE, CONNECTION, KEY, VERSION],
            ),
            "HTTP/1.1 405 Method Not Allowed",
            "websocket handshake must use GET",
            Some(("allow", "GET")),
        ),
        (
            "version 8",
            request(
                get,
                &[HOST, UPGRADE, CONNECTION, KEY, "Sec-WebSocket-Version: 8"],
            ),
            "HTTP/1.1 426 Upgrade Required",
            "unsupported Sec-WebSocket-Version: only 13 is supported",
            Some(("sec-websocket-version", "13")),
        ),
        (
            "missing version",
            request(get, &[HOST, UPGRADE, CONNECTION, KEY]),
            "HTTP/1.1 426 Upgrade Required",
            "unsupported Sec-WebSocket-Version: only 13 is supported",
            Some(("sec-websocket-version", "13")),
        ),
        (
            "unknown path",
            upgrade_request("/nope", ""),
            "HTTP/1.1 404 Not Found",
            "no such page",
            None,
        ),
    ];
    for (what, req, status, body, extra) in &cases {
        // raw_exchange reads to EOF: it fails unless the server closes the socket.
        let response = raw_exchange(server.addr, req.as_bytes());
        let (got_status, got_headers, got_body) = parse_response(&response);
        let length = body.len().to_string();
        let mut want = vec![
            ("connection", "close"),
            ("content-length", length.as_str()),
            ("content-type", "text/plain; charset=utf-8"),
        ];
        want.extend(extra.iter().copied());
        assert_eq!(&got_status, status, "{what}");
        assert_eq!(got_headers, headers(&want), "{what}");
        assert_eq!(String::from_utf8_lossy(&got_body), *body, "{what}");
    }

    let handle = server.handle.clone();
    server.stop().1.unwrap();
    // Every request reached the handler (it accepted all but /nope): the server checked
    // the handshake after the handler accepted it.
    let mut want = vec![seen("GET", "/ws", &[]); 6];
    want.extend([
        seen("POST", "/ws", &[]),
        seen("GET", "/ws", &[]),
        seen("GET", "/ws", &[]),
        seen("GET", "/nope", &[]),
    ]);
    assert_eq!(*log.lock().unwrap(), want);
    let stats = handle.stats();
    assert_eq!(stats.handshakes_accepted, 0);
    assert_eq!(stats.http_responses, 10);
    assert_eq!(stats.rejected.bad_request, 6);
    assert_eq!(stats.rejected.method_not_allowed, 1);
    assert_eq!(stats.rejected.upgrade_required, 2);
    assert_eq!(stats.rejected.not_found, 1);
    assert_eq!(stats.rejected.total(), 10);
    assert_eq!(stats.open_connections, 0);
}

#[test]
fn subprotocol_is_confirmed_only_if_the_client_offered_it() {
    let (app, log) = app();
    let server = start(Config::default(), clone_per_loop(app));
    let offer = "Sec-WebSocket-Protocol: a, chat\r\n";

    // The handler picks "chat", which was offered: confirmed.
    let (mut s, pending) = upgrade_raw(&server, upgrade_request("/chat", offer), Some("chat"));
    echo_then_close(&mut s, pending, "chat works");

    // The handler picks "mqtt", which was not offered: the upgrade goes ahead unconfirmed.
    let (mut s, pending) = upgrade_raw(&server, upgrade_request("/mqtt", offer), None);
    echo_then_close(&mut s, pending, "no protocol");

    // tungstenite's client offering the same.
    let uri: tungstenite::http::Uri = server.url("/chat").parse().unwrap();
    let builder = tungstenite::ClientRequestBuilder::new(uri)
        .with_sub_protocol("a")
        .with_sub_protocol("chat");
    let (ws, response) = tungstenite::connect(builder).expect("connect with subprotocols");
    assert_eq!(response.status(), 101);
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "chat"
    );
    close_client(ws);

    drop(server);
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            seen("GET", "/chat", &["a", "chat"]),
            seen("GET", "/mqtt", &["a", "chat"]),
            seen("GET", "/chat", &["a", "chat"]),
        ]
    );
}
