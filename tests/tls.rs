//! TLS in the loop (cargo feature `tls`): `wss://` through a rustls client, SNI, a certificate
//! reload with connections up, and what a TLS port does with clients that do not speak TLS
//! or speak it too slowly. Certificates are made by rcgen in the test.
#![cfg(feature = "tls")]

mod common;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::tls::{self, connect, connect_ws, localhost};
use common::*;
use wshub::{Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request, Response, TlsConfig};

/// What a request said about TLS: (is_tls, SNI name).
type Seen = (bool, Option<String>);

/// Echoes, and records what each request said about TLS.
#[derive(Default, Clone)]
struct Echo {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Handler for Echo {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, req: &Request<'_>) -> Reply<()> {
        self.seen
            .lock()
            .unwrap()
            .push((req.is_tls(), req.server_name().map(str::to_owned)));
        match req.path() {
            "/page" => Reply::Respond(Response::text(200, "over TLS")),
            _ => Reply::accept(()),
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId, msg: Message) {
        let frame = match &msg {
            Message::Text(t) => Frame::text(t),
            Message::Binary(b) => Frame::binary(b),
        };
        let _ = ctx.send(id, &frame);
    }
}

fn echo_round<S: Read + Write>(ws: &mut tungstenite::WebSocket<S>, text: &str) {
    ws.send(tungstenite::Message::text(text)).unwrap();
    match ws.read().unwrap() {
        tungstenite::Message::Text(t) => assert_eq!(t.as_str(), text),
        other => panic!("expected the echo, got {other:?}"),
    }
}

#[test]
fn wss_echo_and_https_with_request_telling_tls_and_sni() {
    let (tls, trusted) = localhost();
    let app = Echo::default();
    let seen = app.seen.clone();
    let server = start(Config::default().tls(tls), clone_per_loop(app));

    let mut ws = connect_ws(server.addr, "localhost", "/ws", &trusted);
    for i in 0..50 {
        echo_round(&mut ws, &format!("message {i}"));
    }
    // A large message, in many TLS records both ways.
    let big = "x".repeat(300_000);
    echo_round(&mut ws, &big);
    ws.close(None).unwrap();

    // Plain HTTPS on the same port.
    let mut s = connect(server.addr, "localhost", &trusted);
    s.write_all(b"GET /page HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("over TLS"), "{text}");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[
            (true, Some("localhost".into())),
            (true, Some("localhost".into()))
        ]
    );
}

/// A socket that writes a few bytes at a time, without Nagle's delay, so the server reads
/// every TLS record (the ClientHello included) in many pieces.
struct Trickle(std::net::TcpStream);

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Trickle {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(&buf[..buf.len().min(7)])?;
        std::thread::sleep(Duration::from_micros(300));
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[test]
fn tls_records_arriving_a_few_bytes_at_a_time_are_put_together() {
    // The server keeps only a partial record's bytes between reads: the handshake and
    // messages must come through whole however the records are cut.
    let (tls, trusted) = localhost();
    let app = Echo::default();
    let seen = app.seen.clone();
    let server = start(Config::default().tls(tls), clone_per_loop(app));

    let sock = std::net::TcpStream::connect(server.addr).unwrap();
    sock.set_nodelay(true).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let stream = tls::connect_over(Trickle(sock), "localhost", &trusted);
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let (mut ws, response) = tungstenite::client::client(url, stream).expect("wss handshake");
    assert_eq!(response.status(), 101);
    echo_round(&mut ws, "small");
    echo_round(&mut ws, &"y".repeat(3000));
    echo_round(&mut ws, "after");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[(true, Some("localhost".into()))]
    );
}

#[test]
fn sni_picks_the_certificate_and_unknown_names_get_the_default() {
    let (default, default_der) = tls::identity(&["localhost"]);
    let (chat, chat_der) = tls::identity(&["chat.test"]);
    let config = TlsConfig::new(default).with_name("Chat.Test", chat);
    let server = start(
        Config::default().tls(config),
        clone_per_loop(Echo::default()),
    );
    // Each client trusts only the certificate it expects: the handshake proves which one
    // the server sent.
    echo_round(
        &mut connect_ws(server.addr, "chat.test", "/", &chat_der),
        "chat",
    );
    echo_round(
        &mut connect_ws(server.addr, "localhost", "/", &default_der),
        "default",
    );
    let mut wrong = connect(server.addr, "chat.test", &default_der);
    assert!(
        wrong.write_all(b"GET / HTTP/1.1\r\n\r\n").is_err() || {
            let mut b = [0u8; 1];
            wrong.read(&mut b).is_err()
        },
        "a client trusting only the default must refuse what chat.test is served"
    );
}

#[test]
fn a_certificate_reload_keeps_open_connections_and_serves_newcomers_the_new_one() {
    let (old, old_der) = localhost();
    let server = start(Config::default().tls(old), clone_per_loop(Echo::default()));
    let mut before = connect_ws(server.addr, "localhost", "/", &old_der);
    echo_round(&mut before, "before");

    let (new, new_der) = localhost();
    server.handle.set_tls(new).unwrap();
    // The command is taken at the server's next turn.
    let mut after = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while after.is_none() && Instant::now() < deadline {
        let stream = connect(server.addr, "localhost", &new_der);
        let url = format!("wss://localhost:{}/", server.addr.port());
        after = tungstenite::client::client(url, stream)
            .ok()
            .map(|(ws, _)| ws);
    }
    let mut after = after.expect("a newcomer gets the new certificate");
    echo_round(&mut after, "after");
    // The connection from before the reload is still up, on its old certificate.
    echo_round(&mut before, "still here");
}

#[test]
fn plain_http_garbage_and_tls_1_0_on_a_tls_port_close_fast_and_disturb_nobody() {
    let (tls, trusted) = localhost();
    let server = start(Config::default().tls(tls), clone_per_loop(Echo::default()));
    let mut bystander = connect_ws(server.addr, "localhost", "/", &trusted);

    // A TLS 1.0 ClientHello (record version 3.1, client version 3.1), which rustls refuses.
    // Record: handshake, 3.1, 45 bytes; handshake: ClientHello, 41 bytes.
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x00, 0x2d, 0x01, 0x00, 0x00, 0x29, 0x03, 0x01,
    ];
    hello.extend_from_slice(&[0u8; 32]); // random
    hello.extend_from_slice(&[0x00, 0x00, 0x02, 0x00, 0x2f, 0x01, 0x00]); // suites, compression
    let plain_http = upgrade_request("/", "").into_bytes();
    let garbage = vec![0xAB; 600];
    for (what, bytes) in [
        ("plain HTTP", plain_http),
        ("garbage", garbage),
        ("TLS 1.0", hello),
    ] {
        let t = Instant::now();
        let mut s = raw_connect(server.addr);
        s.write_all(&bytes).unwrap();
        let answer = read_to_close(&mut s);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{what}: closed after {:?}",
            t.elapsed()
        );
        // Nothing an HTTP client could take for an answer; at most a TLS alert record.
        assert!(
            answer.is_empty() || answer[0] == 0x15,
            "{what}: answered {answer:02x?}"
        );
        echo_round(&mut bystander, what);
    }
}

#[test]
fn a_slow_tls_handshake_is_cut_at_the_handshake_timeout() {
    let (tls, trusted) = localhost();
    let config = Config::default()
        .tls(tls)
        .handshake_timeout(Duration::from_millis(500));
    let server = start(config, clone_per_loop(Echo::default()));
    let t = Instant::now();
    let mut slow = raw_connect(server.addr);
    // The first bytes of a ClientHello, then nothing.
    slow.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let mut bystander = connect_ws(server.addr, "localhost", "/", &trusted);
    let _ = read_to_close(&mut slow);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    echo_round(&mut bystander, "unaffected");
    assert_eq!(server.handle.stats().handshake_timeouts, 1);
}

/// Everything anyone sends goes to everyone.
#[derive(Clone)]
struct Hub;

impl Handler for Hub {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
        Reply::accept(())
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, _: ConnId, msg: Message) {
        if let Message::Text(text) = msg {
            ctx.broadcast(&Frame::text(&text));
        }
    }
}

#[test]
fn a_broadcast_reaches_every_tls_client_complete_and_in_order() {
    let (tls, trusted) = localhost();
    let server = start(Config::default().tls(tls), clone_per_loop(Hub));
    let mut clients: Vec<_> = (0..20)
        .map(|_| connect_ws(server.addr, "localhost", "/", &trusted))
        .collect();
    // Small frames share the turn buffer, 20 KiB ones go by reference: both are encrypted
    // per connection.
    let texts: Vec<String> = (0..60)
        .map(|i| {
            let len = if i % 10 == 9 { 20_000 } else { 10 + i };
            format!("{i}:{}", "m".repeat(len))
        })
        .collect();
    for text in &texts {
        clients[0]
            .send(tungstenite::Message::text(text.as_str()))
            .unwrap();
    }
    for (c, ws) in clients.iter_mut().enumerate() {
        for text in &texts {
            match ws.read().unwrap() {
                tungstenite::Message::Text(got) => {
                    assert_eq!(got.as_str(), text, "client {c}")
                }
                other => panic!("client {c}: expected text, got {other:?}"),
            }
        }
    }
    server.assert_every_loop_accepted(); // (20 clients)
}

#[test]
fn a_tls_client_that_stops_reading_is_a_slow_consumer_with_a_bounded_queue() {
    const LIMIT: usize = 64 * 1024;
    let (tls, trusted) = localhost();
    let config = Config::default()
        .tls(tls)
        .max_backpressure(LIMIT)
        .close_timeout(Duration::from_millis(300));
    let server = start(config, clone_per_loop(Hub));
    // Connects, upgrades, then never reads again.
    let _stalled = connect_ws(server.addr, "localhost", "/", &trusted);
    let mut talker = connect_ws(server.addr, "localhost", "/", &trusted);
    let text = "s".repeat(8 * 1024);
    // 8 MiB through the hub: far more than socket buffers and the queue limit hold.
    for i in 0..1024 {
        talker
            .send(tungstenite::Message::text(format!("{i:04}{text}")))
            .unwrap();
        match talker.read().unwrap() {
            tungstenite::Message::Text(got) => assert!(got.starts_with(&format!("{i:04}"))),
            other => panic!("expected the broadcast back, got {other:?}"),
        }
    }
    let stats = server.handle.stats();
    assert_eq!(stats.slow_consumer_closes, 1, "{stats:?}");
    assert!(
        stats.peak_queued_bytes <= LIMIT + text.len() + 16,
        "a queue reached {} bytes",
        stats.peak_queued_bytes
    );
}

#[test]
fn https_keep_alive_then_an_upgrade_on_the_same_tls_connection() {
    let (tls, trusted) = localhost();
    let app = Echo::default();
    let seen = app.seen.clone();
    let server = start(Config::default().tls(tls), clone_per_loop(app));
    let mut s = connect(server.addr, "localhost", &trusted);
    // Two plain requests, each answered on the same connection...
    for _ in 0..2 {
        s.write_all(b"GET /page HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"over TLS") {
            let mut chunk = [0u8; 512];
            let n = s
                .read(&mut chunk)
                .expect("the answer, on a kept-alive connection");
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&chunk[..n]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 200"));
    }
    // ...then the upgrade.
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let (mut ws, _) = tungstenite::client::client(url, s).expect("upgrade after two requests");
    echo_round(&mut ws, "after keep-alive");
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[test]
fn one_server_on_a_tls_port_and_a_plain_port_broadcasts_to_both_kinds_in_order() {
    let (tls, trusted) = localhost();
    let mut server = wshub::Server::bind("127.0.0.1:0", Config::default().tls(tls), Hub)
        .expect("bind the TLS port");
    let tls_addr = server.local_addr().expect("TLS address");
    let plain = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the plain port");
    let plain_addr = server
        .add_plain_listener(plain)
        .expect("add the plain port");
    let handle = server.handle();
    let thread = std::thread::spawn(move || server.run());

    let mut secure: Vec<_> = (0..10)
        .map(|_| connect_ws(tls_addr, "localhost", "/", &trusted))
        .collect();
    let mut clear: Vec<_> = (0..10)
        .map(|_| common::connect(&format!("ws://{plain_addr}/")))
        .collect();
    // A plain request on the TLS port is not answered in plain text: it is closed.
    let mut probe = std::net::TcpStream::connect(tls_addr).unwrap();
    probe.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    probe
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = probe.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/1.1"),
        "plain HTTP answered on the TLS port"
    );

    // Half the messages come from a plain client, half from a TLS one; every client gets
    // all of them, in order.
    let texts: Vec<String> = (0..60)
        .map(|i| format!("{i}:{}", "x".repeat(i * 50)))
        .collect();
    let expect_all = |clients_tls: &mut [tungstenite::WebSocket<tls::TlsStream>],
                      clients_plain: &mut [Client],
                      wanted: &[String]| {
        for (c, ws) in clients_tls.iter_mut().enumerate() {
            for text in wanted {
                match ws.read().unwrap() {
                    tungstenite::Message::Text(got) => assert_eq!(got.as_str(), text, "wss {c}"),
                    other => panic!("wss client {c}: expected text, got {other:?}"),
                }
            }
        }
        for (c, ws) in clients_plain.iter_mut().enumerate() {
            for text in wanted {
                assert_eq!(&next_text(ws), text, "ws client {c}");
            }
        }
    };
    for text in &texts[..30] {
        clear[0]
            .send(tungstenite::Message::text(text.as_str()))
            .unwrap();
    }
    expect_all(&mut secure, &mut clear, &texts[..30]);
    for text in &texts[30..] {
        secure[0]
            .send(tungstenite::Message::text(text.as_str()))
            .unwrap();
    }
    expect_all(&mut secure, &mut clear, &texts[30..]);

    let stats = handle.stats();
    assert_eq!(stats.open_connections, 20);
    handle.shutdown().unwrap();
    thread.join().unwrap().unwrap();
}
