//! Limits (issue #4): message size (1009), connections (503 before the upgrade),
//! handshakes in progress (the oldest idle one is evicted with 408; more in
//! admission.rs), request head size (431), and the origin check (403).

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use wshub::{CloseInfo, Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request, Response};

/// `/page` is a plain page; everything else upgrades if the origin is allowed. Echoes
/// text and records `on_close`.
#[derive(Default, Clone)]
struct Gate {
    closes: Arc<Mutex<Vec<CloseInfo>>>,
}

impl Handler for Gate {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, req: &Request<'_>) -> Reply<()> {
        if req.path() == "/page" {
            return Reply::Respond(Response::text(200, "a page"));
        }
        if let Err(refusal) = req.check_origin(&["http://good.example"]) {
            return Reply::Respond(refusal);
        }
        Reply::accept(())
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId, msg: Message) {
        if let Message::Text(t) = msg {
            ctx.send(id, &Frame::text(&t)).unwrap();
        }
    }

    fn on_close(&mut self, _: &mut Ctx<'_, ()>, _: ConnId, info: CloseInfo, _: ()) {
        self.closes.lock().unwrap().push(info);
    }
}

fn expect_close_frame(ws: &mut RawWs) -> (u16, String) {
    loop {
        let (first, p) = ws.expect_frame().expect("a close frame, not EOF");
        match first & 0x0f {
            OP_CLOSE => return parse_close(&p),
            OP_PING | OP_PONG => {}
            other => panic!("expected a close frame, got opcode {other:#x}"),
        }
    }
}

#[test]
fn a_message_over_the_size_limit_closes_with_1009() {
    let gate = Gate::default();
    let server = start(
        Config::default().max_message_size(1024),
        clone_per_loop(gate.clone()),
    );

    // Exactly at the limit: fine.
    let mut ok = RawWs::connect(server.addr, "/");
    let limit_text = "a".repeat(1024);
    ok.send(OP_TEXT, limit_text.as_bytes()).unwrap();
    assert_eq!(
        ok.expect_frame(),
        Some((0x80 | OP_TEXT, limit_text.into_bytes()))
    );

    // One frame over the limit.
    let mut big = RawWs::connect(server.addr, "/");
    big.send(OP_TEXT, &[b'b'; 1025]).unwrap();
    assert_eq!(expect_close_frame(&mut big).0, 1009);

    // Fragments each under the limit, over it together.
    let mut fragmented = RawWs::connect(server.addr, "/");
    fragmented
        .stream
        .write_all(&masked_frame(OP_TEXT, &[b'c'; 600]))
        .unwrap();
    fragmented
        .stream
        .write_all(&masked_frame(0x80, &[b'c'; 600]))
        .unwrap();
    assert_eq!(expect_close_frame(&mut fragmented).0, 1009);

    // The others are unaffected.
    ok.send(OP_TEXT, b"still fine").unwrap();
    assert_eq!(
        ok.expect_frame(),
        Some((0x80 | OP_TEXT, b"still fine".to_vec()))
    );
    drop((big, fragmented));
    assert!(wait_until(Duration::from_secs(5), || {
        gate.closes.lock().unwrap().len() == 2
    }));
    let stats = server.handle.stats();
    assert_eq!(stats.protocol_errors, 2, "{stats:?}");
    for info in gate.closes.lock().unwrap().iter() {
        assert_eq!(info.code, 1009, "{info:?}");
    }
    drop(ok);
    server.stop().1.unwrap();
}

#[test]
fn an_upgrade_over_max_connections_gets_503_with_a_reason() {
    // One loop: an exact `max_connections`, which a cluster splits over its loops.
    let server = start(Config::default().max_connections(2), Gate::default());
    let a = connect(&server.url("/"));
    let mut b = connect(&server.url("/"));

    let response = raw_exchange(server.addr, upgrade_request("/", "").as_bytes());
    assert_eq!(status_line(&response), "HTTP/1.1 503 Service Unavailable");
    assert_eq!(body(&response), "too many connections");
    // Plain HTTP is still served.
    let page = raw_exchange(
        server.addr,
        b"GET /page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_line(&page), "HTTP/1.1 200 OK");
    assert_eq!(body(&page), "a page");
    // The open ones are unaffected, and a slot that frees up can be taken.
    b.send(tungstenite::Message::text("hi")).unwrap();
    assert_eq!(next_text(&mut b), "hi");
    close_client(a);
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().open_connections == 1
    }));
    let mut c = connect(&server.url("/"));
    c.send(tungstenite::Message::text("in")).unwrap();
    assert_eq!(next_text(&mut c), "in");
    let stats = server.handle.stats();
    assert_eq!(stats.rejected.unavailable, 1, "{stats:?}");
    assert_eq!(stats.handshakes_accepted, 3, "{stats:?}");
    close_client(b);
    close_client(c);
    server.stop().1.unwrap();
}

#[test]
fn a_connection_over_max_handshakes_takes_the_oldest_idle_ones_slot() {
    // One loop: an exact `max_handshakes`, which a cluster splits over its loops.
    let server = start(Config::default().max_handshakes(2), Gate::default());
    // Two connections that have not sent their request yet.
    let mut oldest = raw_connect(server.addr);
    let younger = raw_connect(server.addr);
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().tcp_connections == 2
    }));
    // A third is admitted; the oldest idle one is told why it goes.
    let mut third = connect(&server.url("/"));
    let response = read_to_close(&mut oldest);
    assert_eq!(status_line(&response), "HTTP/1.1 408 Request Timeout");
    third.send(tungstenite::Message::text("in")).unwrap();
    assert_eq!(next_text(&mut third), "in");
    // The younger one finishes its handshake normally.
    let upgraded = RawWs::upgrade(younger, "/");
    // Stats are published at the end of the turn that wrote the 101.
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().handshakes_accepted == 2
    }));
    let stats = server.handle.stats();
    assert_eq!(stats.handshake_evictions, 1, "{stats:?}");
    assert_eq!(stats.rejected.request_timeout, 1, "{stats:?}");
    assert_eq!(stats.handshakes_accepted, 2, "{stats:?}");
    drop(upgraded);
    close_client(third);
    server.stop().1.unwrap();
}

#[test]
fn a_request_head_over_max_request_bytes_gets_431() {
    let server = start(
        Config::default().max_request_bytes(1024),
        clone_per_loop(Gate::default()),
    );
    // A complete head, too large.
    let big_header = format!("X-Filler: {}\r\n", "f".repeat(1100));
    let response = raw_exchange(server.addr, upgrade_request("/", &big_header).as_bytes());
    assert_eq!(
        status_line(&response),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(body(&response), "request header too large");
    // A head that never ends: refused as soon as it passes the limit.
    let endless = format!("GET / HTTP/1.1\r\nX-Filler: {}", "f".repeat(2000));
    let response = raw_exchange(server.addr, endless.as_bytes());
    assert_eq!(
        status_line(&response),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // Just under the limit: upgraded.
    let request = upgrade_request("/", "");
    let filler = format!("X-Filler: {}\r\n", "f".repeat(1024 - request.len() - 12));
    let fitting = upgrade_request("/", &filler);
    assert_eq!(fitting.len(), 1024);
    let mut s = raw_connect(server.addr);
    s.write_all(fitting.as_bytes()).unwrap();
    let (head, _) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    drop(s);
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().handshakes_accepted == 1
    }));
    let stats = server.handle.stats();
    assert_eq!(stats.rejected.header_too_large, 2, "{stats:?}");
    server.stop().1.unwrap();
}

#[test]
fn an_unknown_origin_gets_403() {
    let server = start(Config::default(), clone_per_loop(Gate::default()));
    let response = raw_exchange(
        server.addr,
        upgrade_request("/", "Origin: http://evil.example\r\n").as_bytes(),
    );
    assert_eq!(status_line(&response), "HTTP/1.1 403 Forbidden");
    assert_eq!(body(&response), "origin not allowed");
    // The allowed origin (any case) and requests without an Origin upgrade.
    for extra in [
        "Origin: http://good.example\r\n",
        "Origin: HTTP://GOOD.example\r\n",
        "",
    ] {
        let mut s = raw_connect(server.addr);
        s.write_all(upgrade_request("/", extra).as_bytes()).unwrap();
        let (head, _) = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 101 "), "{extra:?}: {head}");
    }
    // Stats are published at the end of a loop turn, maybe after the client read its 101.
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().handshakes_accepted == 3
    }));
    let stats = server.handle.stats();
    assert_eq!(stats.rejected.forbidden, 1, "{stats:?}");
    server.stop().1.unwrap();
}
