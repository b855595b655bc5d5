//! Regressions found by a review of the whole library: each test failed before its fix.
mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use common::*;
use wshub::{Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request, Response, Server};

#[derive(Clone)]
struct Echo;
impl Handler for Echo {
    type Data = ();
    fn on_request(&mut self, _: &mut Ctx<'_, ()>, req: &Request<'_>) -> Reply<()> {
        if req.path() == "/big" {
            return Reply::Respond(Response::new(200).body(vec![b'x'; 8 << 20]));
        }
        Reply::accept(())
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId, msg: Message) {
        let f = match &msg {
            Message::Text(t) => Frame::text(t),
            Message::Binary(b) => Frame::binary(b),
        };
        assert_eq!(ctx.send(id, &f), Ok(()));
    }
}

/// RFC 6455 §5.5.1: after sending a Close frame the endpoint MUST NOT send more data frames.
/// A message and a close frame arriving in one read: the echo goes out AFTER the close reply.
#[test]
fn no_data_frame_after_the_close_reply() {
    let server = start(Config::default(), clone_per_loop(Echo));
    let mut ws = RawWs::connect(server.addr, "/");
    let mut bytes = masked_frame(0x81, b"hello");
    bytes.extend(masked_frame(0x88, &close_payload(1000, "bye")));
    ws.stream.write_all(&bytes).unwrap();
    let mut opcodes = Vec::new();
    while let Some((first, _)) = ws.expect_frame() {
        opcodes.push(first & 0x0f);
    }
    assert_eq!(
        opcodes,
        vec![OP_TEXT, OP_CLOSE],
        "frames received in this order"
    );
}

#[derive(Clone)]
struct BigHello;
impl Handler for BigHello {
    type Data = ();
    fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
        Reply::accept(())
    }
    fn on_open(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId) {
        // One frame above max_backpressure, into a queue that holds only the 101:
        // Config docs: "A frame sent into an empty queue is always taken".
        assert_eq!(ctx.send(id, &Frame::binary(&vec![7; 300 * 1024])), Ok(()));
    }
}

/// The 101 does not count as data: a frame larger than the limit sent from on_open is
/// taken, and the client gets the 101 first (once, the slow-consumer policy dropped it).
#[test]
fn a_large_first_frame_from_on_open_keeps_the_101() {
    let server = start(Config::default(), clone_per_loop(BigHello));
    let mut s = raw_connect(server.addr);
    s.write_all(upgrade_request("/", "").as_bytes()).unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).unwrap();
    assert!(
        first.starts_with(b"HTTP/1.1 101"),
        "got {:02x?} instead of a 101",
        first
    );
}

struct ZeroTimer {
    fired: u32,
}
impl Handler for ZeroTimer {
    type Data = ();
    fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
        Reply::accept(())
    }
    fn on_timer(&mut self, ctx: &mut Ctx<'_, ()>, _: u64) {
        self.fired += 1;
        // A "run again on the next turn" task. Bounded here only so the test ends.
        if self.fired < 100_000 {
            ctx.set_timer(Duration::ZERO, 1);
        }
    }
}

/// Ctx::set_timer: "on the next loop turn at the earliest". A timer re-armed with no delay
/// from on_timer must not fire again in the same turn (poll_once would never return).
#[test]
fn a_zero_delay_timer_rearmed_in_on_timer_waits_for_the_next_turn() {
    let mut server =
        Server::bind("127.0.0.1:0", Config::default(), ZeroTimer { fired: 0 }).unwrap();
    server.set_timer(Duration::ZERO, 1);
    for _ in 0..100 {
        server.poll_once(Some(Duration::from_millis(5))).unwrap();
        if server.handler().fired > 0 {
            break;
        }
    }
    assert_eq!(server.handler().fired, 1, "fired within one poll_once");
}

/// A client that sends its request and half-closes (nc -N, some HTTP/1.0 clients) still
/// gets the whole response.
#[test]
fn a_half_closed_client_gets_the_whole_response() {
    let server = start(Config::default(), clone_per_loop(Echo));
    let mut s = connect_with_rcvbuf(server.addr, 4096);
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let got = read_to_close(&mut s);
    let (_, _, body) = parse_response(&got);
    assert_eq!(body.len(), 8 << 20, "body bytes received");
}

/// `Duration::MAX` to "turn keepalive off" must not overflow the deadline arithmetic.
#[test]
fn ping_interval_max_does_not_overflow() {
    let mut server = Server::bind(
        "127.0.0.1:0",
        Config::default().ping_interval(Duration::MAX),
        Echo,
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        let _ws = tungstenite::connect(format!("ws://{addr}/")).map(|_| ());
        std::thread::sleep(Duration::from_millis(300));
    });
    for _ in 0..50 {
        server.poll_once(Some(Duration::from_millis(10))).unwrap();
    }
    t.join().unwrap();
}

/// close_timeout does not bound the download of an HTTP answer: a client reading 8 MiB at
/// ~2 MiB/s gets it all though close_timeout is 1 s.
#[test]
fn a_slow_but_steady_http_download_is_not_cut_by_close_timeout() {
    let server = start(
        Config::default().close_timeout(Duration::from_secs(1)),
        clone_per_loop(Echo),
    );
    let mut s = connect_with_rcvbuf(server.addr, 16 * 1024);
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
        std::thread::sleep(Duration::from_millis(8)); // ~2 MiB/s
    }
    let (_, _, body) = parse_response(&got);
    assert_eq!(body.len(), 8 << 20, "body bytes received");
}

struct Sink;
impl Handler for Sink {
    type Data = ();
    fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
        Reply::accept(())
    }
}

fn rss_kib() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A connection that once sent a large message does not keep a decoder buffer of that size
/// (the handler drops messages at once).
#[test]
fn a_connection_that_sent_one_large_message_does_not_keep_its_decode_buffer() {
    // Process RSS, so in a process of its own: the other tests of this binary run beside it
    // and allocate too (a 2-loop pass once added 32 MiB to round two here).
    const NAME: &str = "a_connection_that_sent_one_large_message_does_not_keep_its_decode_buffer";
    if std::env::var_os("WSHUB_TEST_ALONE").is_none() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--test-threads=1", "--nocapture"])
            .env("WSHUB_TEST_ALONE", "1")
            .status()
            .unwrap();
        assert!(status.success(), "{NAME} alone: {status}");
        return;
    }
    // One loop: on several loop threads, each has its own malloc arena, so whether round
    // two reuses round one's memory depends on where connections land.
    let server = start(Config::default(), Sink);
    let mut socks = Vec::new();
    for _ in 0..100 {
        socks.push(RawWs::connect(server.addr, "/"));
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kib();
    let frame = masked_frame(0x82, &vec![1u8; 1000 * 1024]);
    for ws in &mut socks {
        ws.stream.write_all(&frame).unwrap();
    }
    drop(frame);
    assert!(wait_until(IO_TIMEOUT, || server.handle.stats().messages_in == 100));
    std::thread::sleep(Duration::from_millis(200));
    let after = rss_kib();
    eprintln!("RSS before {before} KiB, after one round {after} KiB");
    // Second round on new connections: if the first round's buffers were freed, the
    // allocator reuses them and RSS stays flat; if they are pinned, RSS grows again.
    let mut more = Vec::new();
    for _ in 0..100 {
        more.push(RawWs::connect(server.addr, "/"));
    }
    let frame = masked_frame(0x82, &vec![1u8; 1000 * 1024]);
    for ws in &mut more {
        ws.stream.write_all(&frame).unwrap();
    }
    drop(frame);
    assert!(wait_until(IO_TIMEOUT, || server.handle.stats().messages_in == 200));
    std::thread::sleep(Duration::from_millis(200));
    let after2 = rss_kib();
    eprintln!("after a second round on new connections: {after2} KiB");
    // Pinned buffers would add ~100 MB per round; freed ones are reused.
    assert!(
        after2 < after + 30 * 1024,
        "the second round added {} KiB: decode buffers are kept",
        after2.saturating_sub(after)
    );
}
