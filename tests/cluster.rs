//! `Cluster`: several loops on one port. Connections land on every loop and their ids say
//! which; sends, closes, publishes and broadcasts cross loops in order; stale ids, slow
//! consumers and full inboxes stay on the loop they concern; a `Handle` reaches every loop;
//! a shutdown or a panic on one loop stops them all.
//!
//! The kernel spreads connections over the loops (`SO_REUSEPORT`), so a test that needs a
//! client on a given loop connects until one lands there (`TestCluster::connect_on`).

mod common;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message as WsMessage;
use wshub::{
    CloseInfo, Cluster, Config, ConnId, Ctx, Frame, Handle, Handler, Message, Reply, Request,
    Response, SendError, SlowConsumer,
};

/// The timer token of a flood (`flood` command).
const FLOOD_TIMER: u64 = 1;
/// Broadcasts per flood tick, and the pause between ticks: paced (some 20 MB/s at 4 KiB)
/// so that a client that reads keeps up easily, whatever a slow one does.
const FLOOD_BATCH: usize = 10;
const FLOOD_PAUSE: Duration = Duration::from_millis(2);

/// A connection as its loop's `on_open` saw it.
#[derive(Clone, Copy, Debug)]
struct Opened {
    id: ConnId,
    /// `ctx.loop_index()`.
    at: usize,
    /// `ctx.loops()`.
    loops: usize,
}

/// A connection as its loop's `on_close` saw it.
#[derive(Clone, Debug)]
struct Closed {
    n: u32,
    at: usize,
    info: CloseInfo,
}

/// What the handlers of all loops share (and the test reads).
#[derive(Default)]
struct Shared {
    /// Client number → its connection; kept after the close, for stale ids.
    opened: Mutex<HashMap<u32, Opened>>,
    closed: Mutex<Vec<Closed>>,
    /// Failed `to` and `mix` sends: (target client, error).
    send_errors: Mutex<Vec<(u32, SendError)>>,
    /// The numbers a `burst` handed over.
    accepted: Mutex<Vec<u32>>,
    /// A loop is blocked in a `sleep` callback.
    sleeping: AtomicBool,
}

impl Shared {
    fn conn(&self, n: &str) -> (u32, ConnId) {
        let n: u32 = n.parse().expect("a client number");
        let opened = self.opened.lock().unwrap();
        (n, opened.get(&n).expect("a known client").id)
    }
}

/// A flood under way on one loop: `count` broadcasts of `size` bytes to all but `except`.
struct Flood {
    next: usize,
    count: usize,
    size: usize,
    except: ConnId,
}

/// One loop's handler. Clients connect to `/c/N` (their number, the connection's data) and
/// drive it with text commands: see `command`.
struct Hub {
    index: usize,
    shared: Arc<Shared>,
    flood: Option<Flood>,
}

impl Handler for Hub {
    type Data = u32;

    fn on_request(&mut self, _: &mut Ctx<'_, u32>, req: &Request<'_>) -> Reply<u32> {
        match req.path().strip_prefix("/c/").and_then(|n| n.parse().ok()) {
            Some(n) => Reply::accept(n),
            None => Reply::Respond(Response::text(404, "connect to /c/N")),
        }
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_, u32>, id: ConnId) {
        let n = *ctx.data(id).expect("an open connection has its data");
        let opened = Opened {
            id,
            at: ctx.loop_index(),
            loops: ctx.loops(),
        };
        self.shared.opened.lock().unwrap().insert(n, opened);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, u32>, id: ConnId, msg: Message) {
        let Message::Text(text) = msg else {
            panic!("only text commands")
        };
        self.command(ctx, id, &text);
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, u32>, _: ConnId, info: CloseInfo, n: u32) {
        let at = ctx.loop_index();
        self.shared
            .closed
            .lock()
            .unwrap()
            .push(Closed { n, at, info });
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, u32>, token: u64) {
        assert_eq!(token, FLOOD_TIMER);
        let Some(flood) = &mut self.flood else {
            return;
        };
        for _ in 0..FLOOD_BATCH {
            if flood.next == flood.count {
                break;
            }
            let frame = Frame::text(&flood_message(flood.next, flood.size));
            ctx.broadcast_except(&frame, flood.except);
            flood.next += 1;
        }
        if flood.next < flood.count {
            ctx.set_timer(FLOOD_PAUSE, FLOOD_TIMER);
        } else {
            self.flood = None;
        }
    }
}

impl Hub {
    /// `verb args…`; `N` is a client number, `T` a topic, `X` a text without spaces (but
    /// the last argument may have some).
    fn command(&mut self, ctx: &mut Ctx<'_, u32>, me: ConnId, text: &str) {
        let (verb, rest) = text.split_once(' ').unwrap_or((text, ""));
        let shared = Arc::clone(&self.shared);
        match verb {
            // echo X: X back.
            "echo" => reply(ctx, me, rest),
            // to N X: X to client N; a failure is recorded.
            "to" => {
                let [n, x] = args(rest);
                let (n, id) = shared.conn(n);
                if let Err(e) = ctx.send(id, &Frame::text(x)) {
                    shared.send_errors.lock().unwrap().push((n, e));
                }
            }
            // sendr N X: X to client N, and the result back.
            "sendr" => {
                let [n, x] = args(rest);
                let result = ctx.send(shared.conn(n).1, &Frame::text(x));
                reply(ctx, me, &format!("{result:?}"));
            }
            // close N CODE REASON: close client N, and the result back.
            "close" => {
                let [n, code, reason] = args(rest);
                let code = code.parse().expect("a close code");
                let result = ctx.close(shared.conn(n).1, code, reason);
                reply(ctx, me, &format!("{result:?}"));
            }
            // sub T / unsub T: this connection; the result back.
            "sub" => {
                let result = ctx.subscribe(me, rest);
                reply(ctx, me, &format!("{result:?}"));
            }
            "unsub" => {
                let result = ctx.unsubscribe(me, rest);
                reply(ctx, me, &format!("{result:?}"));
            }
            // pub T X: publish. pubr T X: publish, and the delivery back. pubx T X: publish
            // to all but this connection.
            "pub" => {
                let [topic, x] = args(rest);
                ctx.publish(topic, &Frame::text(x));
            }
            "pubr" => {
                let [topic, x] = args(rest);
                let d = ctx.publish(topic, &Frame::text(x));
                reply(
                    ctx,
                    me,
                    &format!("queued={} forwarded={}", d.queued, d.forwarded),
                );
            }
            "pubx" => {
                let [topic, x] = args(rest);
                ctx.publish_except(topic, me, &Frame::text(x));
            }
            // bc X / bcx X: broadcast to all / to all but this connection.
            "bc" => {
                ctx.broadcast(&Frame::text(rest));
            }
            "bcx" => {
                ctx.broadcast_except(&Frame::text(rest), me);
            }
            // mix N T I: send, publish, broadcast, send, in that order.
            "mix" => {
                let [n, topic, i] = args(rest);
                let (n, x) = shared.conn(n);
                let first = ctx.send(x, &Frame::text(&format!("send1 {i}")));
                ctx.publish(topic, &Frame::text(&format!("publish {i}")));
                ctx.broadcast(&Frame::text(&format!("broadcast {i}")));
                let second = ctx.send(x, &Frame::text(&format!("send2 {i}")));
                for e in [first, second].into_iter().filter_map(Result::err) {
                    shared.send_errors.lock().unwrap().push((n, e));
                }
            }
            // probe N: what this loop may do with client N's subscriptions and data.
            "probe" => {
                let [n] = args(rest);
                let id = shared.conn(n).1;
                let sub = ctx.subscribe(id, "probe");
                let unsub = ctx.unsubscribe(id, "probe");
                let data = ctx.data(id).copied();
                reply(ctx, me, &format!("{sub:?} {unsub:?} {data:?}"));
            }
            // sleep MS: block this loop's thread.
            "sleep" => {
                let ms = rest.parse().expect("milliseconds");
                shared.sleeping.store(true, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(ms));
                shared.sleeping.store(false, Ordering::SeqCst);
                reply(ctx, me, "slept");
            }
            // burst N COUNT: 0, 1, … COUNT-1 to client N in one callback; the outcome back.
            "burst" => {
                let [n, count] = args(rest);
                let x = shared.conn(n).1;
                let count: u32 = count.parse().expect("a count");
                let (mut full, mut other) = (0, 0);
                let mut accepted = Vec::new();
                for i in 0..count {
                    match ctx.send(x, &Frame::text(&i.to_string())) {
                        Ok(()) => accepted.push(i),
                        Err(SendError::InboxFull) => full += 1,
                        Err(_) => other += 1,
                    }
                }
                let ok = accepted.len();
                *shared.accepted.lock().unwrap() = accepted;
                reply(ctx, me, &format!("ok={ok} full={full} other={other}"));
            }
            // big N COUNT SIZE: COUNT flood messages of SIZE bytes to client N in one
            // callback.
            "big" => {
                let [n, count, size] = args(rest);
                let (n, x) = shared.conn(n);
                let size = size.parse().expect("a size");
                for i in 0..count.parse().expect("a count") {
                    if let Err(e) = ctx.send(x, &Frame::text(&flood_message(i, size))) {
                        shared.send_errors.lock().unwrap().push((n, e));
                    }
                }
            }
            // flood COUNT SIZE: paced broadcasts to all but this connection (`on_timer`).
            "flood" => {
                let [count, size] = args(rest);
                self.flood = Some(Flood {
                    next: 0,
                    count: count.parse().expect("a count"),
                    size: size.parse().expect("a size"),
                    except: me,
                });
                ctx.set_timer(Duration::ZERO, FLOOD_TIMER);
            }
            "shutdown" => ctx.shutdown(),
            "panic" => panic!("a handler that breaks its loop"),
            other => panic!("unknown command {other:?}"),
        }
    }
}

fn reply(ctx: &mut Ctx<'_, u32>, me: ConnId, text: &str) {
    ctx.send(me, &Frame::text(text)).expect("reply");
}

/// The first `K - 1` space-separated words of `rest`, then the rest of it.
fn args<const K: usize>(rest: &str) -> [&str; K] {
    let mut parts = rest.splitn(K, ' ');
    std::array::from_fn(|_| parts.next().expect("too few arguments"))
}

/// Flood message `i`: its number, padded to `size` bytes.
fn flood_message(i: usize, size: usize) -> String {
    format!("{i:06}{}", "x".repeat(size - 6))
}

/// A cluster on 127.0.0.1, running on a background thread.
struct TestCluster {
    addr: SocketAddr,
    handle: Handle,
    shared: Arc<Shared>,
    next_client: u32,
    thread: Option<JoinHandle<io::Result<Vec<Hub>>>>,
}

/// Short close and shutdown timeouts: a test that leaves a client unread does not wait 5 s.
fn base_config() -> Config {
    Config::default()
        .close_timeout(Duration::from_secs(2))
        .shutdown_timeout(Duration::from_secs(2))
}

fn start_cluster(config: Config, threads: usize) -> TestCluster {
    let shared = Arc::new(Shared::default());
    let cluster = Cluster::bind("127.0.0.1:0", config, threads, |index| Hub {
        index,
        shared: Arc::clone(&shared),
        flood: None,
    })
    .expect("bind");
    assert_eq!(cluster.loops(), threads);
    let addr = cluster.local_addr().expect("addr");
    let handle = cluster.handle();
    let thread = thread::spawn(move || cluster.run());
    TestCluster {
        addr,
        handle,
        shared,
        next_client: 0,
        thread: Some(thread),
    }
}

/// A tungstenite client with its number and its connection.
struct Peer {
    ws: Client,
    n: u32,
    id: ConnId,
    at: usize,
}

impl Peer {
    fn say(&mut self, text: &str) {
        self.ws.send(WsMessage::text(text)).expect("send");
    }

    fn next(&mut self) -> String {
        next_text(&mut self.ws)
    }

    fn ask(&mut self, text: &str) -> String {
        self.say(text);
        self.next()
    }

    /// Asks for an echo of `marker` and checks it is the next message: nothing else came
    /// before it.
    fn nothing_more(&mut self) {
        let marker = format!("marker-{}", self.n);
        assert_eq!(
            self.ask(&format!("echo {marker}")),
            marker,
            "client {} got something it should not have",
            self.n
        );
    }

    /// Expects the server's close frame, answers it, and waits for the end of TCP.
    fn expect_close(mut self) -> (u16, String) {
        let got = match next_data(&mut self.ws) {
            WsMessage::Close(Some(f)) => (u16::from(f.code), f.reason.as_str().to_owned()),
            other => panic!("client {}: expected a close frame, got {other:?}", self.n),
        };
        // tungstenite answers the close frame, then sees the server end TCP.
        match self.ws.read() {
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => got,
            Ok(m) => panic!("client {}: {m:?} after the close frame", self.n),
            Err(e) => panic!("client {}: ending the close handshake: {e}", self.n),
        }
    }
}

impl TestCluster {
    fn url(&self, n: u32) -> String {
        format!("ws://{}/c/{n}", self.addr)
    }

    fn fresh_number(&mut self) -> u32 {
        self.next_client += 1;
        self.next_client
    }

    /// Client `n`'s connection, once its `on_open` has run.
    fn opened(&self, n: u32) -> Opened {
        let known = || self.shared.opened.lock().unwrap().get(&n).copied();
        assert!(
            wait_until(IO_TIMEOUT, || known().is_some()),
            "no on_open for client {n}"
        );
        known().unwrap()
    }

    fn connect(&mut self) -> Peer {
        let n = self.fresh_number();
        let ws = connect(&self.url(n));
        let opened = self.opened(n);
        Peer {
            ws,
            n,
            id: opened.id,
            at: opened.at,
        }
    }

    /// A client on loop `at`: connects until one lands there (closing the others).
    fn connect_on(&mut self, at: usize) -> Peer {
        for _ in 0..64 {
            let peer = self.connect();
            if peer.at == at {
                return peer;
            }
            close_client(peer.ws);
        }
        panic!("64 connections and none on loop {at}");
    }

    /// A raw client on loop `at` with a receive buffer of `rcvbuf` bytes.
    fn raw_on(&mut self, at: usize, rcvbuf: usize) -> (RawWs, u32, ConnId) {
        for _ in 0..64 {
            let n = self.fresh_number();
            let ws = RawWs::upgrade(connect_with_rcvbuf(self.addr, rcvbuf), &format!("/c/{n}"));
            let opened = self.opened(n);
            if opened.at == at {
                return (ws, n, opened.id);
            }
            drop(ws);
            self.closed(n);
        }
        panic!("64 connections and none on loop {at}");
    }

    /// `on_close` of client `n`, once it has run.
    fn closed(&self, n: u32) -> Closed {
        let find = || {
            let closed = self.shared.closed.lock().unwrap();
            closed.iter().find(|c| c.n == n).cloned()
        };
        assert!(
            wait_until(IO_TIMEOUT, || find().is_some()),
            "no on_close for client {n}"
        );
        find().unwrap()
    }

    /// Waits until loop `at`'s published counters pass `cond`; fails with them otherwise.
    fn wait_stats(&self, at: usize, cond: impl Fn(&wshub::Stats) -> bool) -> wshub::Stats {
        let ok = wait_until(IO_TIMEOUT, || cond(&self.handle.loop_stats()[at]));
        let stats = self.handle.loop_stats()[at];
        assert!(ok, "loop {at}'s counters never got there: {stats:?}");
        stats
    }

    /// Graceful shutdown; `run()`'s result.
    fn stop(mut self) -> io::Result<Vec<Hub>> {
        let _ = self.handle.shutdown();
        self.join(Duration::from_secs(10))
    }

    /// Waits (at most `timeout`) for `run()` to return.
    fn join(&mut self, timeout: Duration) -> io::Result<Vec<Hub>> {
        let thread = self.thread.take().expect("joined twice");
        assert!(
            wait_until(timeout, || thread.is_finished()),
            "the cluster did not stop within {timeout:?}"
        );
        thread.join().expect("Cluster::run itself panicked")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.handle.shutdown();
        }
    }
}

/// Closes every client cleanly, then stops the cluster; checks `run()` went well and
/// returned every loop's handler, in loop order.
fn finish(cluster: TestCluster, peers: impl IntoIterator<Item = Peer>) {
    let loops = cluster.handle.loops();
    for peer in peers {
        close_client(peer.ws);
    }
    let handlers = cluster.stop().expect("run() failed");
    let order: Vec<usize> = handlers.iter().map(|h| h.index).collect();
    assert_eq!(order, (0..loops).collect::<Vec<_>>());
}

#[test]
fn connections_land_on_every_loop_and_their_ids_say_which() {
    let mut cluster = start_cluster(base_config(), 2);
    assert_eq!(cluster.handle.loops(), 2);
    let peers: Vec<Peer> = (0..32).map(|_| cluster.connect()).collect();

    let mut per_loop = [0; 2];
    let mut numbers = HashSet::new();
    for peer in &peers {
        let opened = cluster.opened(peer.n);
        assert_eq!(opened.loops, 2, "ctx.loops() of client {}", peer.n);
        assert_eq!(
            cluster.handle.loop_of(peer.id),
            opened.at,
            "handle.loop_of and ctx.loop_index disagree on {:?}",
            peer.id
        );
        let shown = peer.id.to_string();
        let number: u32 = shown
            .strip_prefix('#')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{shown:?} is not #N"));
        assert_eq!(
            number as usize % 2,
            opened.at,
            "{shown} on loop {}",
            opened.at
        );
        assert!(numbers.insert(number), "{shown} given twice");
        per_loop[opened.at] += 1;
    }
    assert!(
        per_loop.iter().all(|&n| n > 0),
        "32 connections all on one loop: {per_loop:?}"
    );
    // Each loop counts its own (as of its last turn: the last on_open may be a turn ahead).
    for (at, &count) in per_loop.iter().enumerate() {
        cluster.wait_stats(at, |s| s.open_connections == count);
    }
    assert_eq!(cluster.handle.stats().open_connections, 32);
    finish(cluster, peers);
}

#[test]
fn a_thousand_sends_cross_loops_in_order() {
    let mut cluster = start_cluster(base_config(), 2);
    let mut from = cluster.connect_on(0);
    let mut to = cluster.connect_on(1);
    for i in 0..1_000 {
        from.ws
            .write(WsMessage::text(format!("to {} {i}", to.n)))
            .expect("write");
    }
    from.ws.flush().expect("flush");
    for i in 0..1_000 {
        assert_eq!(to.next(), i.to_string(), "message {i}");
    }
    assert_eq!(*cluster.shared.send_errors.lock().unwrap(), []);
    to.nothing_more();
    from.nothing_more();
    finish(cluster, [from, to]);
}

#[test]
fn sends_publishes_and_broadcasts_of_one_callback_arrive_in_the_order_queued() {
    let mut cluster = start_cluster(base_config(), 2);
    let mut from = cluster.connect_on(0);
    let mut x = cluster.connect_on(1);
    assert_eq!(x.ask("sub mixed"), "Ok(true)");
    for i in 0..50 {
        from.say(&format!("mix {} mixed {i}", x.n));
    }
    for i in 0..50 {
        for what in ["send1", "publish", "broadcast", "send2"] {
            assert_eq!(x.next(), format!("{what} {i}"));
        }
    }
    // The sender (on the other loop, not subscribed) gets the broadcasts only.
    for i in 0..50 {
        assert_eq!(from.next(), format!("broadcast {i}"));
    }
    assert_eq!(*cluster.shared.send_errors.lock().unwrap(), []);
    x.nothing_more();
    from.nothing_more();
    finish(cluster, [from, x]);
}

#[test]
fn a_close_crosses_loops_with_its_code_and_reason() {
    let mut cluster = start_cluster(base_config(), 2);
    let mut closer = cluster.connect_on(1);
    let target = cluster.connect_on(0);
    let target_n = target.n;
    assert_eq!(
        closer.ask(&format!("close {target_n} 4000 cross-loop goodbye")),
        "Ok(())"
    );
    assert_eq!(
        target.expect_close(),
        (4000, "cross-loop goodbye".to_owned())
    );
    let closed = cluster.closed(target_n);
    assert_eq!(closed.at, 0);
    assert_eq!(
        closed.info,
        CloseInfo {
            code: 4000,
            reason: "cross-loop goodbye".to_owned(),
            clean: true
        }
    );
    closer.nothing_more();
    finish(cluster, [closer]);
}

#[test]
fn publishes_reach_subscribers_on_every_loop_and_only_loops_that_have_some() {
    let mut cluster = start_cluster(base_config(), 2);
    // The publisher's loop is "home" (1), the other "away" (0).
    let mut publisher = cluster.connect_on(1);
    let mut home = cluster.connect_on(1);
    let mut away0 = cluster.connect_on(0);
    let mut away1 = cluster.connect_on(0);

    for peer in [&mut publisher, &mut home, &mut away0, &mut away1] {
        assert_eq!(peer.ask("sub news"), "Ok(true)");
    }
    for i in 0..500 {
        publisher
            .ws
            .write(WsMessage::text(format!("pub news {i}")))
            .expect("write");
    }
    publisher.ws.flush().expect("flush");
    for peer in [&mut publisher, &mut home, &mut away0, &mut away1] {
        for i in 0..500 {
            assert_eq!(
                peer.next(),
                i.to_string(),
                "client {} on loop {}",
                peer.n,
                peer.at
            );
        }
    }
    // publish_except: everyone but the publisher.
    publisher.say("pubx news not for the publisher");
    for peer in [&mut home, &mut away0, &mut away1] {
        assert_eq!(peer.next(), "not for the publisher");
    }
    publisher.nothing_more();

    // Delivery::forwarded: the other loops that were handed the frame.
    let mut pubr = |text: &str| publisher.ask(&format!("pubr solo {text}"));
    assert_eq!(home.ask("sub solo"), "Ok(true)");
    assert_eq!(
        pubr("s1"),
        "queued=1 forwarded=0",
        "subscribers at home only"
    );
    assert_eq!(away0.ask("sub solo"), "Ok(true)");
    assert_eq!(pubr("s2"), "queued=1 forwarded=1");
    assert_eq!(away0.next(), "s2");
    assert_eq!(away1.ask("sub solo"), "Ok(true)");
    assert_eq!(
        pubr("s3"),
        "queued=1 forwarded=1",
        "one loop, however many there"
    );
    assert_eq!(away0.next(), "s3");
    assert_eq!(away1.next(), "s3");
    assert_eq!(away0.ask("unsub solo"), "Ok(true)");
    assert_eq!(
        pubr("s4"),
        "queued=1 forwarded=1",
        "one subscriber left away"
    );
    assert_eq!(away1.next(), "s4");
    // The last one away leaves by closing.
    close_client(away1.ws);
    assert_eq!(
        pubr("s5"),
        "queued=1 forwarded=0",
        "no subscriber away any more"
    );
    // And by unsubscribing.
    assert_eq!(away0.ask("sub solo"), "Ok(true)");
    assert_eq!(pubr("s6"), "queued=1 forwarded=1");
    assert_eq!(away0.next(), "s6");
    assert_eq!(away0.ask("unsub solo"), "Ok(true)");
    assert_eq!(pubr("s7"), "queued=1 forwarded=0");
    away0.nothing_more();
    for s in ["s1", "s2", "s3", "s4", "s5", "s6", "s7"] {
        assert_eq!(home.next(), s);
    }
    home.nothing_more();
    publisher.nothing_more();
    finish(cluster, [publisher, home, away0]);
}

#[test]
fn broadcasts_reach_every_client_on_every_loop() {
    let mut cluster = start_cluster(base_config(), 2);
    let mut peers: Vec<Peer> = (0..2)
        .flat_map(|_| [0, 1])
        .map(|at| cluster.connect_on(at))
        .collect();
    // From loop 0, to all; from loop 1, to all but the sender.
    let sender0 = peers.iter().position(|p| p.at == 0).unwrap();
    let sender1 = peers.iter().position(|p| p.at == 1).unwrap();
    peers[sender0].say("bc to everyone");
    for peer in &mut peers {
        assert_eq!(
            peer.next(),
            "to everyone",
            "client {} on loop {}",
            peer.n,
            peer.at
        );
    }
    peers[sender1].say("bcx to everyone else");
    for (i, peer) in peers.iter_mut().enumerate() {
        if i != sender1 {
            assert_eq!(peer.next(), "to everyone else", "client {}", peer.n);
        }
        peer.nothing_more();
    }
    finish(cluster, peers);
}

#[test]
fn a_stale_id_from_another_loop_reaches_nobody_and_is_counted_there() {
    let mut cluster = start_cluster(base_config(), 2);
    let mut user = cluster.connect_on(1);
    let gone = cluster.connect_on(0);
    let gone_n = gone.n;
    close_client(gone.ws);
    cluster.closed(gone_n);
    // The slot may be taken again by a newcomer on the same loop.
    let mut live = cluster.connect_on(0);
    let before = cluster.handle.loop_stats()[0].dropped_messages;

    // Handed over (loop 1 cannot know), then dropped by loop 0, and counted there.
    assert_eq!(user.ask(&format!("sendr {gone_n} to a ghost")), "Ok(())");
    cluster.wait_stats(0, |s| s.dropped_messages == before + 1);
    assert_eq!(cluster.handle.loop_stats()[1].dropped_messages, 0);
    user.say("bc end");
    assert_eq!(live.next(), "end");
    assert_eq!(user.next(), "end");

    // Subscriptions and data belong to the connection's own loop.
    assert_eq!(
        user.ask(&format!("probe {}", live.n)),
        "Err(OtherLoop) Err(OtherLoop) None"
    );
    // (The same probe on its own loop works.)
    assert_eq!(
        user.ask(&format!("probe {}", user.n)),
        format!("Ok(true) Ok(true) Some({})", user.n)
    );
    live.nothing_more();
    user.nothing_more();
    finish(cluster, [user, live]);
}

#[test]
fn a_slow_consumer_on_one_loop_does_not_slow_the_other() {
    const COUNT: usize = 2_000;
    // 8 MB: more than the kernel buffers for a peer that does not read (the server's send
    // buffer grows to 4 MB on loopback).
    const SIZE: usize = 4 * 1024;
    let config = base_config()
        .max_backpressure(32 * 1024)
        .slow_consumer(SlowConsumer::DropMessage);
    let mut cluster = start_cluster(config, 2);
    // Never reads.
    let (slow, _, _) = cluster.raw_on(0, 4 * 1024);
    let mut trigger = cluster.connect_on(0);
    let readers: Vec<_> = [cluster.connect_on(1), cluster.connect_on(1)]
        .into_iter()
        .map(|mut peer| {
            thread::spawn(move || {
                let start = Instant::now();
                for i in 0..COUNT {
                    assert_eq!(peer.next(), flood_message(i, SIZE), "client {}", peer.n);
                }
                (peer, start.elapsed())
            })
        })
        .collect();
    trigger.say(&format!("flood {COUNT} {SIZE}"));
    let mut fast = Vec::new();
    for reader in readers {
        let (peer, took) = reader.join().expect("a fast client missed messages");
        assert!(
            took < Duration::from_secs(5),
            "client {} on loop 1 took {took:?} for {COUNT} messages",
            peer.n
        );
        fast.push(peer);
    }
    // Loop 0 queued or dropped each message for the slow client (the trigger gets none);
    // loop 1 queued every one for both of its clients and dropped none.
    let stats0 = cluster.wait_stats(0, |s| s.messages_out + s.dropped_messages == COUNT as u64);
    assert!(
        stats0.dropped_messages > 0,
        "the slow client took everything: {stats0:?}"
    );
    let stats1 = cluster.wait_stats(1, |s| s.messages_out == 2 * COUNT as u64);
    assert_eq!(stats1.dropped_messages, 0, "{stats1:?}");
    drop(slow);
    for peer in &mut fast {
        peer.nothing_more();
    }
    trigger.nothing_more();
    fast.push(trigger);
    finish(cluster, fast);
}

#[test]
fn a_burst_from_another_loop_is_not_held_against_a_client_that_reads() {
    // The limit is below the default drain watermark (64 KiB), which is then clamped to it.
    let config = base_config().max_backpressure(32 * 1024);
    let mut cluster = start_cluster(config, 2);
    let mut sender = cluster.connect_on(0);
    let mut reader = cluster.connect_on(1);
    // 40 KiB for an idle client that reads, handed over to its loop in one go: its socket
    // takes all of it at once.
    sender.say(&format!("big {} 10 4096", reader.n));
    for i in 0..10 {
        match next_data(&mut reader.ws) {
            WsMessage::Text(t) => assert_eq!(t.as_str(), flood_message(i, 4096), "message {i}"),
            other => panic!(
                "message {i}: {other:?}; loop 1: {:?}",
                cluster.handle.loop_stats()[1]
            ),
        }
    }
    assert_eq!(*cluster.shared.send_errors.lock().unwrap(), []);
    reader.nothing_more();
    sender.nothing_more();
    finish(cluster, [sender, reader]);
}

#[test]
fn a_full_inbox_refuses_at_once_and_never_blocks_the_sending_loop() {
    let mut cluster = start_cluster(base_config().handle_capacity(8), 2);
    let mut sender = cluster.connect_on(0);
    let mut echo = cluster.connect_on(0);
    let mut receiver = cluster.connect_on(1);
    let mut sleeper = cluster.connect_on(1);

    assert_eq!(receiver.ask("sub t"), "Ok(true)");
    sleeper.say("sleep 1500");
    let shared = Arc::clone(&cluster.shared);
    assert!(wait_until(IO_TIMEOUT, || shared
        .sleeping
        .load(Ordering::SeqCst)));
    let outcome = sender.ask(&format!("burst {} 200", receiver.n));
    let counts: Vec<usize> = outcome
        .split(' ')
        .map(|kv| kv.split_once('=').unwrap().1.parse().unwrap())
        .collect();
    let [ok, full, other] = counts[..] else {
        panic!("{outcome:?}")
    };
    assert_eq!(other, 0, "{outcome}");
    assert_eq!(ok + full, 200, "{outcome}");
    assert!((1..=8).contains(&ok), "an inbox of 8 took {ok}: {outcome}");
    // A publish to that loop's subscriber is refused too, and not counted as forwarded.
    assert_eq!(sender.ask("pubr t lost"), "queued=0 forwarded=0");
    // Loop 0 answers at once meanwhile.
    for i in 0..5 {
        let start = Instant::now();
        assert_eq!(echo.ask(&format!("echo ping {i}")), format!("ping {i}"));
        let took = start.elapsed();
        assert!(
            took < Duration::from_millis(200),
            "an echo on loop 0 took {took:?}"
        );
    }
    assert!(
        shared.sleeping.load(Ordering::SeqCst),
        "loop 1 woke up before the echoes were done: the test proves nothing"
    );
    cluster.wait_stats(0, |s| s.inbox_overflows == full as u64 + 1);

    // Loop 1 wakes up and delivers what it accepted, in order.
    assert_eq!(sleeper.next(), "slept");
    let accepted = shared.accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), ok);
    assert!(accepted.windows(2).all(|w| w[0] < w[1]), "{accepted:?}");
    for i in &accepted {
        assert_eq!(receiver.next(), i.to_string());
    }
    receiver.nothing_more();
    assert_eq!(cluster.handle.loop_stats()[1].inbox_overflows, 0);
    for peer in [&mut sender, &mut echo, &mut sleeper] {
        peer.nothing_more();
    }
    finish(cluster, [sender, echo, receiver, sleeper]);
}

#[test]
fn a_handle_reaches_every_loop_from_another_thread() {
    let mut cluster = start_cluster(base_config(), 2);
    let mut sub0 = cluster.connect_on(0);
    let mut plain0 = cluster.connect_on(0);
    let mut sub1 = cluster.connect_on(1);
    let mut plain1 = cluster.connect_on(1);
    assert_eq!(sub0.ask("sub t"), "Ok(true)");
    assert_eq!(sub1.ask("sub t"), "Ok(true)");

    let handle = cluster.handle.clone();
    let (plain0_id, sub1_id, plain1_id) = (plain0.id, sub1.id, plain1.id);
    thread::spawn(move || {
        handle.publish("t", &Frame::text("published")).unwrap();
        handle.publish("nobody", &Frame::text("lost")).unwrap();
        handle.send(plain0_id, &Frame::text("to plain0")).unwrap();
        handle.send(sub1_id, &Frame::text("to sub1")).unwrap();
        handle.broadcast(&Frame::text("to all")).unwrap();
        handle.close(plain1_id, 4001, "closed by a handle").unwrap();
    })
    .join()
    .unwrap();

    assert_eq!(sub0.next(), "published");
    assert_eq!(sub0.next(), "to all");
    assert_eq!(plain0.next(), "to plain0");
    assert_eq!(plain0.next(), "to all");
    assert_eq!(sub1.next(), "published");
    assert_eq!(sub1.next(), "to sub1");
    assert_eq!(sub1.next(), "to all");
    let plain1_n = plain1.n;
    assert_eq!(plain1.next(), "to all");
    assert_eq!(
        plain1.expect_close(),
        (4001, "closed by a handle".to_owned())
    );
    assert_eq!(cluster.closed(plain1_n).at, 1);
    for peer in [&mut sub0, &mut plain0, &mut sub1] {
        peer.nothing_more();
    }

    // Messages in: 2 subscriptions, 3 echoes (2 on loop 0, 1 on loop 1).
    cluster.wait_stats(0, |s| s.messages_in == 3 && s.open_connections == 2);
    cluster.wait_stats(1, |s| s.messages_in == 2 && s.open_connections == 1);
    let total = cluster.handle.stats();
    let per_loop = cluster.handle.loop_stats();
    assert_eq!(
        (total.open_connections, total.messages_in),
        (
            per_loop.iter().map(|s| s.open_connections).sum(),
            per_loop.iter().map(|s| s.messages_in).sum()
        )
    );
    assert_eq!((total.open_connections, total.messages_in), (3, 5));
    finish(cluster, [sub0, plain0, sub1]);
}

/// Every client gets 1001 and answers it; `run()` returns both handlers in loop order, and
/// every loop's `on_close` saw a clean 1001.
fn expect_cluster_shutdown(mut cluster: TestCluster, peers: Vec<Peer>) {
    let numbers: Vec<(u32, usize)> = peers.iter().map(|p| (p.n, p.at)).collect();
    for peer in peers {
        assert_eq!(
            peer.expect_close(),
            (1001, "server shutting down".to_owned())
        );
    }
    let handlers = cluster.join(Duration::from_secs(10)).expect("run() failed");
    let order: Vec<usize> = handlers.iter().map(|h| h.index).collect();
    assert_eq!(order, [0, 1]);
    for (n, at) in numbers {
        let closed = cluster.closed(n);
        assert_eq!(closed.at, at);
        assert_eq!(
            closed.info,
            CloseInfo {
                code: 1001,
                reason: "server shutting down".to_owned(),
                clean: true
            },
            "client {n}"
        );
    }
}

#[test]
fn a_handle_shutdown_closes_every_connection_on_every_loop() {
    let mut cluster = start_cluster(base_config(), 2);
    let peers: Vec<Peer> = [0, 1, 0, 1]
        .into_iter()
        .map(|at| cluster.connect_on(at))
        .collect();
    cluster.handle.shutdown().unwrap();
    expect_cluster_shutdown(cluster, peers);
}

#[test]
fn a_shutdown_from_one_loops_callback_stops_the_whole_cluster() {
    let mut cluster = start_cluster(base_config(), 2);
    let mut peers: Vec<Peer> = [1, 0, 1, 0]
        .into_iter()
        .map(|at| cluster.connect_on(at))
        .collect();
    peers[0].say("shutdown");
    expect_cluster_shutdown(cluster, peers);
}

#[test]
fn a_panic_on_one_loop_stops_the_cluster_and_run_fails() {
    let mut cluster = start_cluster(base_config().catch_panics(false), 2);
    let mut victim = cluster.connect_on(1);
    let bystander = cluster.connect_on(0);
    victim.say("panic");
    // The other loop shuts down gracefully.
    assert_eq!(
        bystander.expect_close(),
        (1001, "server shutting down".to_owned())
    );
    let result = cluster.join(Duration::from_secs(10));
    let e = result.err().expect("run() should fail when a loop panics");
    assert!(e.to_string().contains("panicked"), "{e}");
    // The panicking loop's sockets are gone, without a close frame.
    assert!(
        victim.ws.read().is_err(),
        "the panicked loop's client is still served"
    );
}

#[test]
fn a_cluster_has_one_to_sixty_four_loops() {
    for threads in [0, 65] {
        match Cluster::bind("127.0.0.1:0", Config::default(), threads, |index| Hub {
            index,
            shared: Arc::default(),
            flood: None,
        }) {
            Ok(_) => panic!("a cluster of {threads} loops"),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{threads}: {e}"),
        }
    }
    // The most there may be (bound, never run).
    let cluster = Cluster::bind("127.0.0.1:0", Config::default(), 64, |index| Hub {
        index,
        shared: Arc::default(),
        flood: None,
    })
    .expect("a cluster of 64 loops");
    assert_eq!((cluster.loops(), cluster.handle().loops()), (64, 64));
}

#[test]
fn a_cluster_of_one_loop_is_a_plain_server() {
    let mut cluster = start_cluster(base_config(), 1);
    assert_eq!(cluster.handle.loops(), 1);
    let mut a = cluster.connect();
    let mut b = cluster.connect();
    for peer in [&a, &b] {
        let opened = cluster.opened(peer.n);
        assert_eq!((opened.at, opened.loops), (0, 1));
        assert_eq!(cluster.handle.loop_of(peer.id), 0);
    }
    assert_eq!(a.ask("echo hello"), "hello");
    assert_eq!(b.ask("sub t"), "Ok(true)");
    assert_eq!(a.ask("pubr t news"), "queued=1 forwarded=0");
    assert_eq!(b.next(), "news");
    a.say("bcx hi");
    assert_eq!(b.next(), "hi");
    a.nothing_more();
    b.nothing_more();
    assert!(wait_until(IO_TIMEOUT, || {
        cluster.handle.loop_stats() == [cluster.handle.stats()]
    }));
    finish(cluster, [a, b]);
}
