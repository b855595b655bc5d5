//! Admission: idle sockets cannot lock newcomers out. Over `max_handshakes` the oldest idle
//! handshake is evicted (408) rather than the newcomer refused; per-address limits on
//! handshakes and connections answer 503 with a reason the client reliably reads; a
//! newcomer's handshake deadline shrinks as the slots fill.

mod common;

use std::io::Write;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;
use wshub::{Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request, Response};

/// Upgrades `/ws`, answers other paths as plain HTTP, echoes text.
#[derive(Clone)]
struct Gate;

impl Handler for Gate {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, req: &Request<'_>) -> Reply<()> {
        match req.path() {
            "/ws" => Reply::accept(()),
            _ => Reply::Respond(Response::text(200, "a page")),
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId, msg: Message) {
        if let Message::Text(t) = msg {
            let _ = ctx.send(id, &Frame::text(&t));
        }
    }
}

/// A client that upgrades and echoes one message, within `limit`.
fn normal_client_gets_in(server: &TestServer<Gate>, limit: Duration) {
    let started = Instant::now();
    let mut ws = connect(&server.url("/ws"));
    ws.send(tungstenite::Message::text("hi")).unwrap();
    assert_eq!(next_text(&mut ws), "hi");
    assert!(started.elapsed() < limit, "took {:?}", started.elapsed());
    close_client(ws);
}

/// `n` sockets that connect and say nothing, from 127.0.0.2, 127.0.0.3, ….
fn silent_sockets(server: &TestServer<Gate>, n: usize) -> Vec<std::net::TcpStream> {
    (0..n)
        .map(|i| connect_from(server.addr, Ipv4Addr::new(127, 0, 0, 2 + (i % 200) as u8)))
        .collect()
}

#[test]
fn silent_sockets_over_max_handshakes_are_evicted_not_newcomers() {
    // One loop: exact eviction counts of a `max_handshakes` that a cluster splits over its loops.
    let server = start(Config::default().max_handshakes(20), Gate);
    let mut silent = silent_sockets(&server, 100);
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().handshake_evictions == 80
    }));
    // The oldest went first, each told why.
    let response = read_to_close(&mut silent[0]);
    assert_eq!(status_line(&response), "HTTP/1.1 408 Request Timeout");
    for _ in 0..20 {
        normal_client_gets_in(&server, Duration::from_secs(1));
    }
    // The first newcomer took the slot of one more silent socket; the others found the one
    // it freed by upgrading.
    let stats = server.handle.stats();
    assert_eq!(stats.handshake_evictions, 81, "{stats:?}");
    assert_eq!(stats.rejected.unavailable, 0, "{stats:?}");
    assert_eq!(stats.handshakes_accepted, 20, "{stats:?}");
    server.stop().1.unwrap();
}

#[test]
fn slowloris_and_silent_sockets_together_still_let_clients_in() {
    let server = start(Config::default().max_handshakes(30), clone_per_loop(Gate));
    let mut sockets = Vec::new();
    for i in 0..60u8 {
        let mut s = connect_from(server.addr, Ipv4Addr::new(127, 0, 1, 1 + i));
        if i % 2 == 0 {
            // A request that never ends.
            s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
        }
        sockets.push(s);
    }
    for _ in 0..10 {
        normal_client_gets_in(&server, Duration::from_secs(1));
    }
    assert!(server.handle.stats().handshake_evictions >= 30);
    drop(sockets);
    server.stop().1.unwrap();
}

#[test]
fn over_the_per_address_handshake_limit_the_client_reads_its_503() {
    // One loop: per-address limits apply to each loop, and these sockets land on either.
    let server = start(Config::default().max_handshakes_per_addr(3), Gate);
    let _idle: Vec<_> = (0..3).map(|_| raw_connect(server.addr)).collect();
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().tcp_connections == 3
    }));
    // Sending the request at once, as a browser does: the answer must arrive whole, not as
    // a reset, every time.
    for _ in 0..20 {
        let response = raw_exchange(server.addr, upgrade_request("/ws", "").as_bytes());
        assert_eq!(status_line(&response), "HTTP/1.1 503 Service Unavailable");
        assert_eq!(body(&response), "too many handshakes from your address");
    }
    // Another address is not affected.
    let mut other = connect_from(server.addr, Ipv4Addr::new(127, 0, 0, 9));
    other
        .write_all(b"GET /page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let response = read_to_close(&mut other);
    assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
    assert_eq!(server.handle.stats().rejected.unavailable, 20);
    server.stop().1.unwrap();
}

#[test]
fn over_the_per_address_connection_limit_a_newcomer_gets_503_until_one_leaves() {
    // One loop: per-address limits apply to each loop, and these sockets land on either.
    let server = start(Config::default().max_connections_per_addr(2), Gate);
    let a = connect(&server.url("/ws"));
    let mut b = connect(&server.url("/ws"));
    let response = raw_exchange(server.addr, upgrade_request("/ws", "").as_bytes());
    assert_eq!(status_line(&response), "HTTP/1.1 503 Service Unavailable");
    assert_eq!(body(&response), "too many connections from your address");
    b.send(tungstenite::Message::text("still here")).unwrap();
    assert_eq!(next_text(&mut b), "still here");
    close_client(a);
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().tcp_connections == 1
    }));
    normal_client_gets_in(&server, Duration::from_secs(1));
    close_client(b);
    server.stop().1.unwrap();
}

#[test]
fn the_handshake_deadline_shrinks_as_the_slots_fill() {
    let config = Config::default()
        .max_handshakes(10)
        .handshake_timeout(Duration::from_secs(10));
    // One loop: deadlines from the fill of a `max_handshakes` that a cluster splits over its loops.
    let server = start(config, Gate);
    let mut first = raw_connect(server.addr);
    let mut rest: Vec<_> = (0..8).map(|_| raw_connect(server.addr)).collect();
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().tcp_connections == 9
    }));
    // The tenth takes the last slot: its deadline is a tenth of the timeout.
    let started = Instant::now();
    let mut last = raw_connect(server.addr);
    let _ = read_to_close(&mut last);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // The first, admitted with the slots nearly empty, still has its full time.
    first
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        std::io::Read::read(&mut first, &mut byte).is_err(),
        "closed early"
    );
    rest.clear();
    server.stop().1.unwrap();
}
