//! Backpressure (issue #4): per-connection queue bounds, the slow-consumer policies, what
//! `send` reports, `on_drain`, read-side backpressure, and that no peer can starve others.

mod common;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use wshub::{
    CloseInfo, Config, ConnId, Ctx, Delivery, Frame, Handler, Message, Reply, Request, SendError,
    SlowConsumer,
};

/// The heavy tests here each want the whole (2-core) machine: run them one at a time.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

// ----- broadcast with one slow consumer -----

const PAYLOAD: usize = 1024;
/// Wire length of a broadcast frame: 4-byte header (16-bit length) + payload.
const FRAME_WIRE: usize = PAYLOAD + 4;

/// The broadcast payload for sequence number `seq`: the number, then a pattern.
fn payload(seq: u64) -> Vec<u8> {
    let mut p: Vec<u8> = (0..PAYLOAD)
        .map(|i| (seq as u8).wrapping_add(i as u8))
        .collect();
    p[..8].copy_from_slice(&seq.to_le_bytes());
    p
}

/// Broadcasts a 1 KiB binary frame for every sequence number a client sends as text;
/// records deliveries, drains and closes. Connections are named by their path.
#[derive(Default, Clone)]
struct Fanout {
    delivered: Delivery,
    drains: Vec<(String, usize)>,
    closes: Vec<(String, CloseInfo)>,
    opened: usize,
}

impl Fanout {
    /// What the loops' handlers recorded, together. (A `Delivery` counts the connections
    /// of the loop that broadcast, so `delivered` is the whole server's on one loop only.)
    fn merged(loops: Vec<Fanout>) -> Fanout {
        let mut all = Fanout::default();
        for f in loops {
            all.delivered.queued += f.delivered.queued;
            all.delivered.dropped += f.delivered.dropped;
            all.delivered.closed += f.delivered.closed;
            all.drains.extend(f.drains);
            all.closes.extend(f.closes);
            all.opened += f.opened;
        }
        all
    }
}

impl Handler for Fanout {
    type Data = String;

    fn on_request(&mut self, _: &mut Ctx<'_, String>, req: &Request<'_>) -> Reply<String> {
        Reply::accept(req.path().to_owned())
    }

    fn on_open(&mut self, _: &mut Ctx<'_, String>, _: ConnId) {
        self.opened += 1;
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, String>, _: ConnId, msg: Message) {
        let Message::Text(text) = msg else {
            panic!("unexpected binary message");
        };
        let seq: u64 = text.parse().expect("a sequence number");
        let d = ctx.broadcast(&Frame::binary(&payload(seq)));
        self.delivered.queued += d.queued;
        self.delivered.dropped += d.dropped;
        self.delivered.closed += d.closed;
    }

    fn on_drain(&mut self, ctx: &mut Ctx<'_, String>, id: ConnId) {
        let name = ctx.data(id).cloned().unwrap_or_default();
        self.drains
            .push((name.clone(), ctx.buffered_amount(id).unwrap_or(usize::MAX)));
        if name == "/slow" {
            ctx.send(id, &Frame::text("drained")).unwrap();
        }
    }

    fn on_close(&mut self, _: &mut Ctx<'_, String>, _: ConnId, info: CloseInfo, name: String) {
        self.closes.push((name, info));
    }
}

/// Reads `n` broadcast frames, which must carry sequence numbers 0, 1, 2, ... in order,
/// publishing progress; gives the client back for more.
fn receive_sequence(
    mut ws: RawWs,
    n: u64,
    progress: &AtomicU64,
    abort: &AtomicBool,
) -> Result<RawWs, String> {
    let mut expected = 0u64;
    while expected < n {
        if abort.load(Ordering::Relaxed) {
            return Err(format!("aborted after {expected} messages"));
        }
        match ws.next_frame() {
            Ok(Some((first, p))) => {
                if first != 0x80 | OP_BINARY || p.len() != PAYLOAD {
                    return Err(format!(
                        "message {expected}: frame {first:#x} of {} bytes",
                        p.len()
                    ));
                }
                let seq = u64::from_le_bytes(p[..8].try_into().unwrap());
                if seq != expected {
                    return Err(format!("expected message {expected}, got {seq}"));
                }
                if p[PAYLOAD - 1] != (seq as u8).wrapping_add((PAYLOAD - 1) as u8) {
                    return Err(format!("message {seq}: corrupt payload"));
                }
                expected += 1;
                progress.store(expected, Ordering::Relaxed);
            }
            Ok(None) => return Err(format!("connection ended after {expected} messages")),
            Err(e) => return Err(format!("read failed after {expected} messages: {e}")),
        }
    }
    Ok(ws)
}

/// Sends sequence numbers 0..n as text on `out`, never more than `window` ahead of the
/// slowest reader in `progress`. Fails if no reader progresses for 15 s or after `limit`.
fn produce(
    mut out: TcpStream,
    n: u64,
    window: u64,
    progress: &[Arc<AtomicU64>],
    abort: &AtomicBool,
    limit: Duration,
) -> Result<(), String> {
    let started = Instant::now();
    let mut sent = 0u64;
    let mut last_min = 0u64;
    let mut last_progress = Instant::now();
    while sent < n {
        if abort.load(Ordering::Relaxed) {
            return Err(format!("a reader failed; {sent} sent"));
        }
        let min = progress
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .min()
            .unwrap();
        if min != last_min {
            last_min = min;
            last_progress = Instant::now();
        }
        if last_progress.elapsed() > Duration::from_secs(15) || started.elapsed() > limit {
            return Err(format!("stalled: {sent} sent, slowest reader at {min}"));
        }
        if sent - min >= window {
            thread::sleep(Duration::from_micros(200));
            continue;
        }
        let upto = (min + window).min(n);
        let mut batch = Vec::new();
        for seq in sent..upto {
            batch.extend_from_slice(&masked_frame(0x80 | OP_TEXT, seq.to_string().as_bytes()));
        }
        out.write_all(&batch)
            .map_err(|e| format!("producer: {e}"))?;
        sent = upto;
    }
    Ok(())
}

struct FanoutRun {
    server: TestServer<Fanout>,
    slow: RawWs,
    fast: Vec<RawWs>,
}

/// `fast` clients (the first also produces) get `n` broadcasts while `slow` never reads.
fn fanout_with_slow_consumer(config: Config, fast: usize, n: u64, window: u64) -> FanoutRun {
    let server = start(config, clone_per_loop(Fanout::default()));
    // The slow client connects in the middle of the table, with a small receive buffer so the
    // kernel holds little for it.
    let mut clients: Vec<RawWs> = (0..fast / 2)
        .map(|_| RawWs::connect(server.addr, "/fast"))
        .collect();
    let slow = RawWs::upgrade(connect_with_rcvbuf(server.addr, 8 * 1024), "/slow");
    clients.extend((fast / 2..fast).map(|_| RawWs::connect(server.addr, "/fast")));
    assert!(wait_until(Duration::from_secs(10), || {
        server.handle.stats().open_connections == fast + 1
    }));
    server.assert_every_loop_accepted(); // (21 clients or more)

    let producer_out = clients[0].stream.try_clone().unwrap();
    let abort = Arc::new(AtomicBool::new(false));
    let progress: Vec<Arc<AtomicU64>> = (0..fast).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let readers: Vec<_> = clients
        .into_iter()
        .zip(&progress)
        .map(|(ws, p)| {
            let (p, abort) = (Arc::clone(p), Arc::clone(&abort));
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let r = receive_sequence(ws, n, &p, &abort);
                    if r.is_err() {
                        abort.store(true, Ordering::Relaxed);
                    }
                    r
                })
                .unwrap()
        })
        .collect();
    let produced = produce(
        producer_out,
        n,
        window,
        &progress,
        &abort,
        Duration::from_secs(60),
    );
    if produced.is_err() {
        abort.store(true, Ordering::Relaxed);
    }
    let mut fast_clients = Vec::new();
    let mut failures = Vec::new();
    for (i, r) in readers.into_iter().enumerate() {
        match r.join().expect("reader panicked") {
            Ok(ws) => fast_clients.push(ws),
            Err(e) => failures.push(format!("client {i}: {e}")),
        }
    }
    produced.unwrap();
    // Stats are published at the end of a loop turn: wait for the last broadcast's.
    wait_until(Duration::from_secs(5), || {
        server.handle.stats().messages_in == n
    });
    assert!(
        failures.is_empty(),
        "{} of {fast} fast clients failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    FanoutRun {
        server,
        slow,
        fast: fast_clients,
    }
}

#[test]
fn a_slow_consumer_is_closed_while_199_others_get_all_20000_broadcasts_in_order() {
    let _heavy = heavy();
    const FAST: usize = 199;
    const N: u64 = 20_000;
    const LIMIT: usize = 512 * 1024;
    let config = Config::default()
        .max_backpressure(LIMIT)
        // The slow consumer's close frame must still be there when it finally reads.
        .close_timeout(Duration::from_secs(120))
        .ping_interval(Duration::from_secs(600));
    let started = Instant::now();
    // A window of 128 messages (~130 KiB) keeps every fast reader well under the limit.
    let FanoutRun {
        server,
        mut slow,
        fast,
    } = fanout_with_slow_consumer(config, FAST, N, 128);
    let took = started.elapsed();

    let stats = settled_stats(&server.handle);
    assert_eq!(stats.slow_consumer_closes, 1, "{stats:?}");
    assert_eq!(stats.dropped_messages, 0, "{stats:?}");
    assert_eq!(stats.messages_in, N, "{stats:?}");
    assert!(
        stats.peak_queued_bytes <= LIMIT + FRAME_WIRE,
        "a connection's queue reached {} bytes, over the bound of {} + one frame",
        stats.peak_queued_bytes,
        LIMIT
    );

    // The slow client now reads: a gapless prefix of whole frames, then the 1008 close.
    let mut next = 0u64;
    let close = loop {
        let (first, p) = slow
            .expect_frame()
            .unwrap_or_else(|| panic!("EOF after {next} messages, before a close frame"));
        match first & 0x0f {
            OP_BINARY => {
                assert_eq!(p.len(), PAYLOAD);
                assert_eq!(u64::from_le_bytes(p[..8].try_into().unwrap()), next);
                next += 1;
            }
            OP_CLOSE => break parse_close(&p),
            other => panic!("unexpected opcode {other:#x} after {next} messages"),
        }
    };
    assert_eq!(close, (1008, "slow consumer".to_owned()));
    assert!(
        next < N,
        "the slow consumer got everything: it was never slow"
    );
    slow.send(OP_CLOSE, &close_payload(1008, "")).unwrap();
    assert!(
        slow.expect_frame().is_none(),
        "server did not end the TCP connection"
    );

    drop(fast);
    let loops = server.loops;
    let (fanouts, result) = server.stop();
    result.unwrap();
    let fanout = Fanout::merged(fanouts);
    assert_eq!(fanout.opened, FAST + 1);
    if loops == 1 {
        assert_eq!(fanout.delivered.closed, 1);
        assert_eq!(fanout.delivered.dropped, 0);
        // Every fast client got every broadcast; the slow one some before it was closed.
        assert!(fanout.delivered.queued >= FAST * N as usize + next as usize);
    }
    let slow_closes: Vec<&CloseInfo> = fanout
        .closes
        .iter()
        .filter(|(name, _)| name == "/slow")
        .map(|(_, info)| info)
        .collect();
    assert_eq!(
        slow_closes,
        [&CloseInfo {
            code: 1008,
            reason: "slow consumer".to_owned(),
            clean: true
        }]
    );
    assert_eq!(
        fanout.closes.len(),
        FAST + 1,
        "on_close once per connection"
    );
    eprintln!("slow consumer fan-out: {N} x {FAST} delivered in {took:?}");
}

#[test]
fn drop_message_skips_only_the_slow_consumer_and_counts_what_it_missed() {
    let _heavy = heavy();
    const FAST: usize = 20;
    const N: u64 = 20_000;
    const LIMIT: usize = 256 * 1024;
    let config = Config::default()
        .max_backpressure(LIMIT)
        .drain_watermark(64 * 1024)
        .slow_consumer(SlowConsumer::DropMessage)
        .ping_interval(Duration::from_secs(600))
        .write_stall_timeout(Duration::from_secs(600));
    let FanoutRun {
        server,
        mut slow,
        mut fast,
    } = fanout_with_slow_consumer(config, FAST, N, 128);

    let stats = settled_stats(&server.handle);
    assert_eq!(stats.slow_consumer_closes, 0, "{stats:?}");
    assert!(stats.peak_queued_bytes <= LIMIT + FRAME_WIRE, "{stats:?}");

    // It reads now: exactly what was queued for it, in order, then `on_drain`'s message
    // (which follows whatever was still queued when the queue fell to the watermark).
    // What was queued for it: everything beyond the fast clients' share, which includes
    // any "drained" message from an earlier pressure episode.
    let queued_for_slow = stats.messages_out - FAST as u64 * N;
    let mut last = None;
    let mut drained_texts = 0;
    let mut binaries = 0;
    while binaries + drained_texts < queued_for_slow {
        let (first, p) = slow
            .expect_frame()
            .unwrap_or_else(|| panic!("EOF after {binaries} messages"));
        if (first, p.as_slice()) == (0x80 | OP_TEXT, b"drained") {
            drained_texts += 1; // an earlier pressure episode
            continue;
        }
        assert_eq!(first, 0x80 | OP_BINARY, "message {binaries}");
        let seq = u64::from_le_bytes(p[..8].try_into().unwrap());
        assert!(last.is_none_or(|l| seq > l), "{seq} after {last:?}");
        last = Some(seq);
        binaries += 1;
    }
    assert!(binaries < N, "the slow client was never slow: {stats:?}");
    assert_eq!(stats.dropped_messages, N - binaries, "{stats:?}");
    assert_eq!(
        slow.expect_frame(),
        Some((0x80 | OP_TEXT, b"drained".to_vec()))
    );
    drained_texts += 1;

    // Everyone, the slow client included, is still connected and gets the next broadcast.
    server.handle.broadcast(&Frame::text("final")).unwrap();
    for ws in fast.iter_mut().chain([&mut slow]) {
        assert_eq!(ws.expect_frame(), Some((0x80 | OP_TEXT, b"final".to_vec())));
    }
    drop((fast, slow));
    let loops = server.loops;
    let (fanouts, result) = server.stop();
    result.unwrap();
    let fanout = Fanout::merged(fanouts);
    if loops == 1 {
        assert_eq!(fanout.delivered.dropped as u64, N - binaries);
        assert_eq!(fanout.delivered.closed, 0);
    }
    let slow_drains = fanout.drains.iter().filter(|(n, _)| n == "/slow").count();
    assert_eq!(slow_drains as u64, drained_texts, "{:?}", fanout.drains);
    for (name, buffered) in &fanout.drains {
        assert!(*buffered <= 64 * 1024, "{name} drained at {buffered} bytes");
    }
}

// ----- what `send` reports -----

/// On "fill": sends 4 KiB frames to the sender (which does not read) until two sends have
/// failed, recording every result and the queue length right after the first failure.
#[derive(Default, Clone)]
struct Filler {
    results: Vec<Result<(), SendError>>,
    after_failure: Option<usize>,
}

impl Handler for Filler {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
        Reply::accept(())
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId, _: Message) {
        let frame = Frame::binary(&[7; 4096]);
        while self.results.iter().filter(|r| r.is_err()).count() < 2 {
            let r = ctx.send(id, &frame);
            if r.is_err() && self.after_failure.is_none() {
                self.after_failure = ctx.buffered_amount(id);
            }
            self.results.push(r);
            assert!(self.results.len() < 100_000, "sends never failed");
        }
    }
}

/// Room for four 4 KiB frames (4 x 4100 bytes on the wire) in the server's queue.
const FILL_LIMIT: usize = 4 * 4100;

/// Fills a non-reading client's queue; returns the handler and the number of 4 KiB frames
/// the client then received before the close frame (Close) or the pong (DropMessage).
fn fill_once(policy: SlowConsumer) -> (Filler, usize) {
    let config = Config::default()
        .max_backpressure(FILL_LIMIT)
        .slow_consumer(policy)
        .close_timeout(Duration::from_secs(5));
    let server = start(config, clone_per_loop(Filler::default()));
    let mut ws = RawWs::upgrade(connect_with_rcvbuf(server.addr, 16 * 1024), "/");
    ws.send(OP_TEXT, b"fill").unwrap();
    // Not reading until the callback is over (the server may write during it).
    assert!(wait_until(Duration::from_secs(10), || {
        let s = server.handle.stats();
        s.slow_consumer_closes == 1 || s.dropped_messages == 2
    }));
    if policy == SlowConsumer::DropMessage {
        // Still open after the drops: it answers a ping, after everything it accepted.
        ws.send(OP_PING, b"still there?").unwrap();
    }
    let mut frames = 0;
    loop {
        let (first, p) = ws.expect_frame().expect("EOF before the last frame");
        match first & 0x0f {
            OP_BINARY => {
                assert_eq!((first, p.len()), (0x80 | OP_BINARY, 4096));
                frames += 1;
            }
            OP_CLOSE if policy == SlowConsumer::Close => {
                assert_eq!(parse_close(&p), (1008, "slow consumer".to_owned()));
                ws.send(OP_CLOSE, &close_payload(1008, "")).unwrap();
                assert!(
                    ws.expect_frame().is_none(),
                    "TCP not closed after the handshake"
                );
                break;
            }
            OP_PONG if policy == SlowConsumer::DropMessage => {
                assert_eq!(p, b"still there?");
                break;
            }
            other => panic!("unexpected opcode {other:#x} after {frames} frames"),
        }
    }
    drop(ws);
    let (fillers, result) = server.stop();
    result.unwrap();
    // The loop the client landed on filled it; the others saw no message.
    let mut filler = fillers.into_iter().filter(|f| !f.results.is_empty());
    (filler.next().expect("a loop filled"), frames)
}

/// The results are some `Ok`s (at least the four that fit the queue; more if the socket
/// took some), then the two given errors. Returns the number of `Ok`s.
fn assert_oks_then(results: &[Result<(), SendError>], errors: [SendError; 2]) -> usize {
    let oks = results.len() - 2;
    assert!(oks >= 4, "{results:?}");
    assert!(results[..oks].iter().all(Result::is_ok), "{results:?}");
    assert_eq!(results[oks..], [Err(errors[0]), Err(errors[1])]);
    oks
}

#[test]
fn send_reports_slow_consumer_closed_then_closing_under_the_close_policy() {
    let (filler, received) = fill_once(SlowConsumer::Close);
    let oks = assert_oks_then(
        &filler.results,
        [SendError::SlowConsumerClosed, SendError::Closing],
    );
    // The unsent backlog was freed at once: what is left is at most a partly written frame
    // and the close frame.
    let left = filler
        .after_failure
        .expect("buffered_amount after the failure");
    assert!(
        left < 4100 + 32,
        "{left} bytes still queued after the close"
    );
    // The client got whole frames only, no more than were accepted.
    assert!(received <= oks, "{received} received, {oks} accepted");
}

#[test]
fn send_reports_dropped_under_the_drop_message_policy() {
    let (filler, received) = fill_once(SlowConsumer::DropMessage);
    let oks = assert_oks_then(&filler.results, [SendError::Dropped, SendError::Dropped]);
    // Dropped only when the queue was full even after the socket took what it could.
    let queued = filler
        .after_failure
        .expect("buffered_amount after the failure");
    assert!(
        queued > FILL_LIMIT - 4100 && queued <= FILL_LIMIT,
        "dropped with {queued} bytes queued"
    );
    // Every accepted frame arrived; nothing was lost but the dropped ones.
    assert_eq!(received, oks);
}

// ----- peers that write but do not read -----

/// Echoes text; counts refused echoes.
#[derive(Default, Clone)]
struct Echo {
    refused: u64,
}

impl Handler for Echo {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
        Reply::accept(())
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId, msg: Message) {
        if let Message::Text(t) = msg {
            if ctx.send(id, &Frame::text(&t)).is_err() {
                self.refused += 1;
            }
        }
    }
}

/// Round trips through a well-behaved client while another floods; returns the slowest.
/// The server's counters once they stop changing: each loop publishes its own at the end
/// of its turn, so a read right after the clients got their frames may miss that turn's
/// (seen on 2 loops).
fn settled_stats(handle: &wshub::Handle) -> wshub::Stats {
    let mut last = handle.stats();
    for _ in 0..100 {
        thread::sleep(Duration::from_millis(50));
        let now = handle.stats();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the counters never settled: {last:?}");
}

fn echo_round_trips(url: &str, count: usize) -> RoundTrips {
    let mut ws = connect(url);
    set_timeouts(&ws, Duration::from_secs(4));
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let t = Instant::now();
        let text = format!("ping {i}");
        ws.send(tungstenite::Message::text(text.clone()))
            .expect("send echo request");
        let got = match ws.read() {
            Ok(m) => m,
            Err(e) => panic!("echo {i} not answered within 4 s: {e}"),
        };
        assert_eq!(got, tungstenite::Message::text(text));
        times.push(t.elapsed());
        thread::sleep(Duration::from_millis(50));
    }
    close_client(ws);
    times.sort_unstable();
    RoundTrips {
        median: times[count / 2],
        slowest: times[count - 1],
    }
}

/// How long echoes took, sorted out.
#[derive(Debug)]
struct RoundTrips {
    median: Duration,
    slowest: Duration,
}

const FLOOD_MESSAGE: usize = 16 * 1024;

/// A client that sends echo requests as fast as it can for `for_how_long` and never
/// reads. Returns the bytes it managed to write.
fn flood(mut ws: RawWs, for_how_long: Duration) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        // 16 KiB messages, pre-encoded: sending costs the client a copy, receiving costs the
        // server unmasking, validation and an echo, so the client keeps its socket full.
        let text = "x".repeat(FLOOD_MESSAGE);
        let chunk: Vec<u8> = (0..64)
            .flat_map(|_| masked_frame(0x80 | OP_TEXT, text.as_bytes()))
            .collect();
        ws.stream
            .set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let started = Instant::now();
        let mut written = 0u64;
        while started.elapsed() < for_how_long {
            let at = (written % chunk.len() as u64) as usize;
            match ws.stream.write(&chunk[at..]) {
                Ok(n) => written += n as u64,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break, // closed by the server
            }
        }
        written
    })
}

fn flooding_writer(policy: SlowConsumer) -> (Echo, wshub::Stats, u64) {
    let _heavy = heavy();
    const LIMIT: usize = 64 * 1024;
    let config = Config::default()
        .max_backpressure(LIMIT)
        .slow_consumer(policy)
        .close_timeout(Duration::from_millis(500));
    let server = start(config, clone_per_loop(Echo::default()));
    let flooder = flood(
        RawWs::upgrade(connect_with_rcvbuf(server.addr, 16 * 1024), "/"),
        Duration::from_secs(4),
    );
    thread::sleep(Duration::from_millis(300));
    let echoes = echo_round_trips(&server.url("/"), 20);
    let written = flooder.join().unwrap();
    // A server that kept reading the flooder would answer the echoes only when the flood
    // ends (4 s after it began, 3.7 s after the first echo): no echo may wait that long.
    // Optimised, the loop reads the flooder's megabyte per turn in about a millisecond, so
    // echoes come back at once; unoptimised (plain `cargo test`), std's debug checks on
    // every word it unmasks make that turn some 300 ms, and so each echo.
    let usual = if cfg!(debug_assertions) {
        Duration::from_millis(800)
    } else {
        Duration::from_millis(100)
    };
    assert!(
        echoes.median < usual && echoes.slowest < Duration::from_millis(2_000),
        "echoes took {echoes:?} while another client flooded: the server kept reading \
         the flooder ({written} bytes in 4 s) and did not get to the others"
    );
    eprintln!("echoes while flooded: {echoes:?}");
    let handle = server.handle.clone();
    let (echoes, result) = server.stop();
    result.unwrap();
    let echo = Echo {
        refused: echoes.iter().map(|e| e.refused).sum(),
    };
    // The final counters, published by the last loop turn.
    let stats = handle.stats();
    assert!(
        stats.peak_queued_bytes <= LIMIT + FLOOD_MESSAGE + 4,
        "a connection's queue reached {} bytes: {stats:?}",
        stats.peak_queued_bytes
    );
    assert_eq!(stats.queued_bytes, 0, "{stats:?}");
    (echo, stats, written)
}

#[test]
fn a_flooding_writer_under_drop_message_neither_grows_memory_nor_starves_others() {
    let (echo, stats, written) = flooding_writer(SlowConsumer::DropMessage);
    assert!(written > 64 << 20, "the flood was only {written} bytes");
    assert!(echo.refused > 0, "the flooder's echoes were never refused");
    assert_eq!(stats.dropped_messages, echo.refused);
    assert_eq!(stats.slow_consumer_closes, 0);
}

#[test]
fn a_flooding_writer_under_close_is_closed_without_starving_others() {
    let (echo, stats, _) = flooding_writer(SlowConsumer::Close);
    assert_eq!(stats.slow_consumer_closes, 1, "{stats:?}");
    assert_eq!(echo.refused, 1, "only the echo that overflowed was refused");
}

#[test]
fn a_ping_flood_pauses_reading_and_every_ping_still_gets_its_pong() {
    let _heavy = heavy();
    const LIMIT: usize = 64 * 1024;
    let config = Config::default()
        .max_backpressure(LIMIT)
        .drain_watermark(16 * 1024);
    let server = start(config, clone_per_loop(Echo::default()));
    let mut ws = RawWs::upgrade(connect_with_rcvbuf(server.addr, 16 * 1024), "/");
    let mut out = ws.stream.try_clone().unwrap();
    out.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();

    // Pings of 125 bytes numbered from 0, 500 per write, until the server stops taking them
    // (it stops reading while its pongs for us are over the limit). Pongs are control
    // frames: never dropped.
    const PER_CHUNK: u64 = 500;
    let chunk = |first: u64| -> Vec<u8> {
        (first..first + PER_CHUNK)
            .flat_map(|seq| {
                let mut p = seq.to_be_bytes().to_vec();
                p.resize(125, b'p');
                masked_frame(0x80 | OP_PING, &p)
            })
            .collect()
    };
    let started = Instant::now();
    let mut pings = 0u64;
    let (pending, done) = loop {
        assert!(
            started.elapsed() < Duration::from_secs(10) && pings < 2_000_000,
            "the server kept reading pings it could not answer: {pings} taken"
        );
        let bytes = chunk(pings);
        let mut done = 0;
        let blocked = loop {
            match out.write(&bytes[done..]) {
                Ok(n) => done += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break true;
                }
                Err(e) => panic!("ping flood: {e}"),
            }
            if done == bytes.len() {
                break false;
            }
        };
        if blocked {
            break (bytes, done);
        }
        pings += PER_CHUNK;
    };
    // Blocked: the server is not reading us. Its queue for us is bounded...
    let stats = server.handle.stats();
    assert!(
        stats.peak_queued_bytes <= LIMIT + 64 * 1024 + 1024,
        "queue reached {} bytes",
        stats.peak_queued_bytes
    );
    // ...and it still serves others promptly.
    let echoes = echo_round_trips(&server.url("/"), 3);
    assert!(
        echoes.slowest < Duration::from_secs(1),
        "echoes took {echoes:?}"
    );

    // Now read: every ping gets its pong, in order, while the rest of the chunk goes out.
    let total = pings + PER_CHUNK;
    let writer = thread::spawn(move || {
        out.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        out.write_all(&pending[done..])
            .expect("finish the last chunk");
    });
    for seq in 0..total {
        let (first, p) = ws
            .expect_frame()
            .unwrap_or_else(|| panic!("EOF after {seq} pongs"));
        assert_eq!(first, 0x80 | OP_PONG, "frame {seq}");
        assert_eq!(u64::from_be_bytes(p[..8].try_into().unwrap()), seq);
        assert_eq!(p.len(), 125);
    }
    writer.join().unwrap();
    drop(ws);
    let (_, result) = server.stop();
    result.unwrap();
}

// ----- on_drain -----

/// On open, queues 128 frames of 64 KiB; on drain, says so.
#[derive(Default, Clone)]
struct Burst {
    drains: Arc<Mutex<Vec<usize>>>,
}

impl Handler for Burst {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
        Reply::accept(())
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId) {
        for seq in 0..128u8 {
            ctx.send(id, &Frame::binary(&[seq; 64 * 1024])).unwrap();
        }
    }

    fn on_drain(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId) {
        self.drains
            .lock()
            .unwrap()
            .push(ctx.buffered_amount(id).unwrap());
        ctx.send(id, &Frame::text("drained")).unwrap();
    }
}

#[test]
fn on_drain_fires_once_a_reader_that_stopped_catches_up() {
    let burst = Burst::default();
    let drains = Arc::clone(&burst.drains);
    let config = Config::default()
        .max_backpressure(16 << 20)
        .drain_watermark(64 * 1024);
    let server = start(config, clone_per_loop(burst));
    let mut ws = RawWs::upgrade(connect_with_rcvbuf(server.addr, 16 * 1024), "/");
    // Not reading: most of the 8 MiB pile up in the server's queue (the kernel takes a few
    // MiB), far over the watermark.
    assert!(
        wait_until(Duration::from_secs(5), || server
            .handle
            .stats()
            .queued_bytes
            > 2 << 20),
        "{:?}",
        server.handle.stats()
    );
    thread::sleep(Duration::from_millis(200));
    assert!(drains.lock().unwrap().is_empty(), "drained while not read");
    for seq in 0..128u8 {
        let (first, p) = ws.expect_frame().expect("a frame");
        assert_eq!((first, p.len(), p[0]), (0x80 | OP_BINARY, 64 * 1024, seq));
    }
    assert_eq!(
        ws.expect_frame(),
        Some((0x80 | OP_TEXT, b"drained".to_vec()))
    );
    let drains = drains.lock().unwrap().clone();
    assert_eq!(drains.len(), 1, "on_drain calls: {drains:?}");
    assert!(drains[0] <= 64 * 1024, "drained at {} bytes", drains[0]);
    drop(ws);
    server.stop().1.unwrap();
}

/// Streams `TOTAL` frames of 16 KiB to each connection, pausing while its queue is over
/// the watermark and resuming in `on_drain`: the producer pattern `on_drain` exists for.
#[derive(Clone)]
struct Stream;

const TOTAL: u32 = 2_000;
const WATERMARK: usize = 64 * 1024;

impl Stream {
    fn pump(ctx: &mut Ctx<'_, u32>, id: ConnId) {
        while ctx.buffered_amount(id).is_some_and(|b| b <= WATERMARK) {
            let sent = *ctx.data(id).unwrap();
            if sent == TOTAL {
                return;
            }
            let mut p = vec![0u8; 16 * 1024];
            p[..4].copy_from_slice(&sent.to_be_bytes());
            ctx.send(id, &Frame::binary(&p)).expect("send");
            *ctx.data_mut(id).unwrap() += 1;
        }
    }
}

impl Handler for Stream {
    type Data = u32;

    fn on_request(&mut self, _: &mut Ctx<'_, u32>, _: &Request<'_>) -> Reply<u32> {
        Reply::accept(0)
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_, u32>, id: ConnId) {
        Stream::pump(ctx, id);
    }

    fn on_drain(&mut self, ctx: &mut Ctx<'_, u32>, id: ConnId) {
        Stream::pump(ctx, id);
    }
}

#[test]
fn a_producer_paused_over_the_watermark_is_resumed_by_on_drain() {
    let config = Config::default()
        .max_backpressure(1 << 20)
        .drain_watermark(WATERMARK);
    let server = start(config, clone_per_loop(Stream));
    let mut ws = RawWs::connect(server.addr, "/");
    ws.stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    for seq in 0..TOTAL {
        let (first, p) = match ws.next_frame() {
            Ok(Some((first, p))) => (first, p),
            Ok(None) => panic!("EOF after {seq} frames"),
            Err(e) => panic!(
                "the stream stalled after {seq} of {TOTAL} frames ({e}): the producer paused \
                 when buffered_amount went over the watermark ({WATERMARK}), the queue then \
                 drained ({} bytes queued now) but on_drain never came; {:?}",
                server.handle.stats().queued_bytes,
                server.handle.stats()
            ),
        };
        assert_eq!(first, 0x80 | OP_BINARY);
        assert_eq!(u32::from_be_bytes(p[..4].try_into().unwrap()), seq);
    }
    drop(ws);
    server.stop().1.unwrap();
}
