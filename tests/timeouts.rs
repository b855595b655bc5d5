//! Timers (issue #4): handshake timeout (slowloris), keepalive pings and the pong timeout,
//! the close-handshake timeout, the write-stall timeout, and application timers.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use wshub::{CloseInfo, Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request, TimerId};

/// Echoes text; "close me" makes the server start a close handshake (4001 "bye"); opening
/// `/big` queues 16 MiB, `/medium` 4 MiB (1 MiB frames). Records every `on_close`.
#[derive(Default, Clone)]
struct App {
    closes: Arc<Mutex<Vec<(String, CloseInfo)>>>,
}

impl Handler for App {
    type Data = String;

    fn on_request(&mut self, _: &mut Ctx<'_, String>, req: &Request<'_>) -> Reply<String> {
        Reply::accept(req.path().to_owned())
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_, String>, id: ConnId) {
        let frames = match ctx.data(id).map(String::as_str) {
            Some("/big") => 16,
            Some("/medium") => 4,
            _ => 0,
        };
        for i in 0..frames {
            ctx.send(id, &Frame::binary(&vec![i as u8; 1 << 20]))
                .unwrap();
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, String>, id: ConnId, msg: Message) {
        if let Message::Text(t) = msg {
            if t.as_str() == "close me" {
                ctx.close(id, 4001, "bye").unwrap();
            } else {
                ctx.send(id, &Frame::text(&t)).unwrap();
            }
        }
    }

    fn on_close(&mut self, _: &mut Ctx<'_, String>, _: ConnId, info: CloseInfo, path: String) {
        self.closes.lock().unwrap().push((path, info));
    }
}

/// Reads until EOF (or reset); returns when that happened, or panics after `within`.
fn wait_for_eof(s: &mut TcpStream, within: Duration) -> Instant {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Instant::now(),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Instant::now(),
            Err(e) => panic!("connection still open after {within:?}: {e}"),
        }
    }
}

fn between(d: Duration, lo_ms: u64, hi_ms: u64) -> bool {
    d >= Duration::from_millis(lo_ms) && d < Duration::from_millis(hi_ms)
}

#[test]
fn slowloris_connections_are_closed_after_the_handshake_timeout() {
    let config = Config::default().handshake_timeout(Duration::from_millis(300));
    let app = App::default();
    let server = start(config, clone_per_loop(app.clone()));
    // A well-behaved client that upgraded is not subject to the handshake timeout.
    let mut upgraded = connect(&server.url("/"));

    // Half a request, then silence.
    let t0 = Instant::now();
    let mut half = raw_connect(server.addr);
    half.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: web")
        .unwrap();
    // A request trickling in a byte every 50 ms: progress does not extend the deadline.
    let mut trickle = raw_connect(server.addr);
    let mut trickle_writer = trickle.try_clone().unwrap();
    let writer = thread::spawn(move || {
        for b in upgrade_request("/", "").bytes() {
            if trickle_writer.write_all(&[b]).is_err() {
                return; // closed by the server
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("the whole trickled request was accepted");
    });
    let half_closed = wait_for_eof(&mut half, Duration::from_secs(5)) - t0;
    let trickle_closed = wait_for_eof(&mut trickle, Duration::from_secs(5)) - t0;
    writer.join().unwrap();
    assert!(between(half_closed, 280, 3000), "{half_closed:?}");
    assert!(between(trickle_closed, 280, 3000), "{trickle_closed:?}");
    assert!(wait_until(Duration::from_secs(2), || {
        server.handle.stats().handshake_timeouts == 2
    }));

    upgraded
        .send(tungstenite::Message::text("still here"))
        .unwrap();
    assert_eq!(next_text(&mut upgraded), "still here");
    close_client(upgraded);
    server.stop().1.unwrap();
    // Connections that never upgraded are no WebSockets: no on_close for them.
    assert_eq!(app.closes.lock().unwrap().len(), 1);
}

#[test]
fn a_silent_peer_gets_a_ping_and_is_dropped_after_the_pong_timeout() {
    let config = Config::default()
        .ping_interval(Duration::from_millis(200))
        .pong_timeout(Duration::from_millis(300));
    let app = App::default();
    let server = start(config, clone_per_loop(app.clone()));
    // Times are measured from before the connection exists, so lower bounds are strict
    // however late this thread gets to read.
    let t0 = Instant::now();
    let mut silent = RawWs::connect(server.addr, "/silent");
    let (first, payload) = silent.expect_frame().expect("a ping, not EOF");
    let pinged = t0.elapsed();
    assert_eq!(first, 0x80 | OP_PING, "expected a ping, got {first:#x}");
    assert!(payload.len() <= 125);
    assert!(between(pinged, 198, 2000), "ping after {pinged:?}");
    // No answer: dropped (no close handshake with a dead peer) after the pong timeout.
    assert_eq!(silent.expect_frame(), None, "expected EOF");
    let dropped = t0.elapsed();
    assert!(between(dropped, 498, 3000), "dropped after {dropped:?}");
    assert!(wait_until(Duration::from_secs(2), || {
        server.handle.stats().pong_timeouts == 1
    }));
    let closes = app.closes.lock().unwrap().clone();
    assert_eq!(closes.len(), 1);
    assert_eq!((closes[0].1.code, closes[0].1.clean), (1006, false));
    server.stop().1.unwrap();
}

#[test]
fn peers_that_answer_pings_or_send_anything_stay_connected() {
    let config = Config::default()
        .ping_interval(Duration::from_millis(200))
        .pong_timeout(Duration::from_millis(300));
    let app = App::default();
    let server = start(config, clone_per_loop(app.clone()));

    // A tungstenite client that keeps reading answers every ping itself.
    let mut reader = connect(&server.url("/reader"));
    set_timeouts(&reader, Duration::from_millis(50));
    // A raw client that never answers pings but sends a message every 250 ms: any data
    // counts as a sign of life.
    let mut chatty = RawWs::connect(server.addr, "/chatty");
    chatty
        .stream
        .set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();

    let started = Instant::now();
    let mut reader_pings = 0;
    let mut chatty_echoes = 0;
    let mut chatty_pings = 0;
    let mut next_chat = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        match reader.read() {
            Ok(tungstenite::Message::Ping(_)) => reader_pings += 1,
            Ok(other) => panic!("reader got {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("reader: {e}"),
        }
        if Instant::now() >= next_chat {
            chatty.send(OP_TEXT, b"chat").unwrap();
            next_chat += Duration::from_millis(250);
        }
        loop {
            match chatty.next_frame() {
                Ok(Some((first, p))) if first == 0x80 | OP_TEXT && p == b"chat" => {
                    chatty_echoes += 1
                }
                Ok(Some((first, _))) if first == 0x80 | OP_PING => chatty_pings += 1,
                Ok(other) => panic!("chatty got {other:?}"),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break;
                }
                Err(e) => panic!("chatty: {e}"),
            }
        }
    }
    assert!(reader_pings >= 3, "only {reader_pings} pings in 1.5 s");
    assert!(chatty_echoes >= 4, "{chatty_echoes} echoes");
    assert!(chatty_pings >= 1, "chatty was never pinged");

    // Both still work.
    set_timeouts(&reader, IO_TIMEOUT);
    reader.send(tungstenite::Message::text("hello")).unwrap();
    assert_eq!(next_text(&mut reader), "hello");
    chatty.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    chatty.send(OP_TEXT, b"last").unwrap();
    loop {
        let (first, p) = chatty.expect_frame().expect("dropped");
        if first == 0x80 | OP_TEXT && p == b"last" {
            break;
        }
    }
    let stats = server.handle.stats();
    assert_eq!(stats.pong_timeouts, 0, "{stats:?}");
    assert_eq!(stats.open_connections, 2, "{stats:?}");
    assert!(app.closes.lock().unwrap().is_empty());
    close_client(reader);
    drop(chatty); // it would not answer the shutdown's close frame
    server.stop().1.unwrap();
}

#[test]
fn a_peer_that_never_answers_the_close_frame_is_dropped_after_the_close_timeout() {
    let config = Config::default().close_timeout(Duration::from_millis(300));
    let app = App::default();
    let server = start(config, clone_per_loop(app.clone()));
    let mut ws = RawWs::connect(server.addr, "/");
    let asked = Instant::now(); // before the server starts closing
    ws.send(OP_TEXT, b"close me").unwrap();
    let (first, payload) = ws.expect_frame().expect("a close frame");
    assert_eq!(first, 0x80 | OP_CLOSE);
    assert_eq!(parse_close(&payload), (4001, "bye".to_owned()));
    // No reply: after the close timeout the server drops the connection.
    assert_eq!(ws.expect_frame(), None);
    assert!(between(asked.elapsed(), 298, 3000), "{:?}", asked.elapsed());
    assert!(wait_until(Duration::from_secs(2), || {
        server.handle.stats().close_timeouts == 1
    }));
    let closes = app.closes.lock().unwrap().clone();
    assert_eq!(
        closes,
        [(
            "/".to_owned(),
            CloseInfo {
                code: 4001,
                reason: "bye".to_owned(),
                clean: false
            }
        )]
    );
    server.stop().1.unwrap();
}

#[test]
fn a_peer_that_stops_reading_is_closed_after_the_write_stall_timeout() {
    let config = Config::default()
        .max_backpressure(64 << 20)
        .write_stall_timeout(Duration::from_millis(400));
    let app = App::default();
    let server = start(config, clone_per_loop(app.clone()));
    // Reads nothing: most of 16 MiB stay queued and the socket takes no byte.
    let t0 = Instant::now(); // before the server's last write, whenever that was
    let mut stalled = RawWs::upgrade(connect_with_rcvbuf(server.addr, 16 * 1024), "/big");
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().write_stall_timeouts == 1
    }));
    assert!(
        t0.elapsed() >= Duration::from_millis(395),
        "{:?}",
        t0.elapsed()
    );
    let closes = app.closes.lock().unwrap().clone();
    assert_eq!(
        closes,
        [(
            "/big".to_owned(),
            CloseInfo {
                code: 1006,
                reason: "write stalled".to_owned(),
                clean: false
            }
        )]
    );
    let stats = server.handle.stats();
    assert_eq!(
        (stats.open_connections, stats.queued_bytes),
        (0, 0),
        "{stats:?}"
    );
    // The stalled peer finds its connection gone once it reads.
    stalled
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut chunk = vec![0u8; 256 * 1024];
    let mut drained = 0usize;
    loop {
        match stalled.stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("stalled connection not closed: {e}"),
        }
    }
    assert!(drained < 16 << 20, "the stalled peer got everything");
    server.stop().1.unwrap();
}

#[test]
fn the_write_stall_timeout_is_the_documented_one_not_twice_it() {
    // The kernel may take more bytes at the stall check (its send buffer grew) while the
    // peer reads nothing: that is not progress. Judged by what the peer acknowledged, the
    // connection goes at the timeout plus a short grace (a tenth of it), not at twice it.
    let config = Config::default()
        .max_backpressure(64 << 20)
        .write_stall_timeout(Duration::from_secs(1));
    let app = App::default();
    let server = start(config, clone_per_loop(app.clone()));
    let t0 = Instant::now();
    let _stalled = RawWs::upgrade(connect_with_rcvbuf(server.addr, 16 * 1024), "/big");
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().write_stall_timeouts == 1
    }));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(995) && took < Duration::from_millis(1_600),
        "closed after {took:?}"
    );
    server.stop().1.unwrap();
}

#[test]
fn a_slow_reader_that_keeps_reading_is_not_cut_off_by_the_write_stall_timeout() {
    let config = Config::default()
        .max_backpressure(64 << 20)
        .write_stall_timeout(Duration::from_millis(500));
    let app = App::default();
    let server = start(config, clone_per_loop(app.clone()));
    // Reads 4 MiB through a small receive buffer, whatever is there every 10 ms (about
    // 1.5 MB/s): some 3 s, six stall timeouts, and never a pause of more than 10 ms. The
    // server hands the kernel a few MiB at once and may not see the socket writable again
    // for a while; what counts is that the peer keeps taking bytes.
    let mut slow = RawWs::upgrade(connect_with_rcvbuf(server.addr, 16 * 1024), "/medium");
    let opened = Instant::now();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut received = slow.buffered().to_vec();
    while received.len() < 4 * ((1 << 20) + 10) {
        let n = match slow.stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) => panic!("slow reader: {e}"),
        };
        assert!(
            n > 0,
            "a reader that never paused more than 10 ms was cut off after {} bytes and \
             {:?}: {:?}, {:?}",
            received.len(),
            opened.elapsed(),
            app.closes.lock().unwrap(),
            server.handle.stats()
        );
        received.extend_from_slice(&chunk[..n]);
        thread::sleep(Duration::from_millis(10));
    }
    // Every frame arrived whole and in order (headers: 10 bytes each).
    assert_eq!(received.len(), 4 * ((1 << 20) + 10));
    for i in 0..4 {
        let frame = &received[i * ((1 << 20) + 10)..][..(1 << 20) + 10];
        assert_eq!(frame_header(frame), Some((0x80 | OP_BINARY, 10, 1 << 20)));
        assert!(frame[10..].iter().all(|&b| b == i as u8));
    }
    assert_eq!(server.handle.stats().write_stall_timeouts, 0);
    drop(slow);
    server.stop().1.unwrap();
}

/// Sets timers when a connection opens (see the test), and records what fires.
#[derive(Default, Clone)]
struct Timers {
    fired: Arc<Mutex<Vec<(u64, Duration)>>>,
    cancels: Arc<Mutex<Vec<bool>>>,
    state: Arc<Mutex<TimerState>>,
}

#[derive(Default)]
struct TimerState {
    opened: Option<Instant>,
    first: Option<TimerId>,
    fourth: Option<TimerId>,
}

impl Handler for Timers {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
        Reply::accept(())
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_, ()>, _: ConnId) {
        let ms = Duration::from_millis;
        let mut state = self.state.lock().unwrap();
        state.opened = Some(Instant::now());
        ctx.set_timer(ms(240), 3);
        state.first = Some(ctx.set_timer(ms(80), 1));
        ctx.set_timer(ms(160), 2);
        let doomed = ctx.set_timer(ms(200), 99);
        state.fourth = Some(ctx.set_timer(ms(320), 4));
        ctx.set_timer(ms(400), 5);
        let mut cancels = self.cancels.lock().unwrap();
        cancels.push(ctx.cancel_timer(doomed));
        cancels.push(ctx.cancel_timer(doomed));
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, ()>, token: u64) {
        let mut state = self.state.lock().unwrap();
        let at = state.opened.unwrap().elapsed();
        self.fired.lock().unwrap().push((token, at));
        match token {
            // A timer set from a timer, due before the next one.
            1 => {
                ctx.set_timer(Duration::from_millis(40), 6);
            }
            // Cancels a pending one; cancelling a fired one reports false.
            2 => {
                let mut cancels = self.cancels.lock().unwrap();
                cancels.push(ctx.cancel_timer(state.fourth.take().unwrap()));
                cancels.push(ctx.cancel_timer(state.first.take().unwrap()));
            }
            _ => {}
        }
    }
}

#[test]
fn app_timers_fire_in_deadline_order_and_cancelled_ones_never_fire() {
    let timers = Timers::default();
    let server = start(Config::default(), clone_per_loop(timers.clone()));
    let ws = connect(&server.url("/"));
    assert!(wait_until(Duration::from_secs(5), || {
        timers.fired.lock().unwrap().len() >= 5
    }));
    // Nothing else may come: the cancelled ones were due at 200 and 320 ms.
    thread::sleep(Duration::from_millis(400));
    let fired = timers.fired.lock().unwrap().clone();
    let tokens: Vec<u64> = fired.iter().map(|(t, _)| *t).collect();
    // The cancelled ones (99, 4) never fired; 6, set when 1 fired, came after it.
    let mut without_6 = tokens.clone();
    without_6.retain(|&t| t != 6);
    assert_eq!(without_6, [1, 2, 3, 5], "{fired:?}");
    let at = |token: u64| fired.iter().find(|(t, _)| *t == token).unwrap().1;
    assert!(tokens.iter().position(|&t| t == 6) > tokens.iter().position(|&t| t == 1));
    // Each fired no earlier than its deadline (6's: 40 ms after 1 fired), in deadline
    // order, and not absurdly late.
    let ms = Duration::from_millis;
    let deadline = |token: u64| match token {
        1 => ms(80),
        2 => ms(160),
        3 => ms(240),
        5 => ms(400),
        6 => at(1) + ms(40),
        other => panic!("unexpected timer {other}"),
    };
    for (token, when) in &fired {
        let due = deadline(*token);
        assert!(
            *when + ms(2) >= due && *when < due + ms(1000),
            "timer {token} due at {due:?} fired at {when:?}"
        );
    }
    for pair in tokens.windows(2) {
        assert!(
            deadline(pair[0]) <= deadline(pair[1]) + ms(2),
            "timer {} (due {:?}) fired before {} (due {:?})",
            pair[1],
            deadline(pair[1]),
            pair[0],
            deadline(pair[0])
        );
    }
    assert_eq!(*timers.cancels.lock().unwrap(), [true, false, true, false]);
    close_client(ws);
    server.stop().1.unwrap();
}
