#![cfg(feature = "redis")]
//! The Redis broker (issue #15): topics across nodes through a real `redis-server`.
//!
//! Every node is an in-process server (or cluster) with its own `RedisBroker` on the same
//! Redis (a fresh one per test, `common::redis`) and prefix; the clients are tungstenite
//! clients on loopback. A publish is delivered on its own node at once and handed to
//! Redis; what arrives from Redis is delivered on the receiving node only. Subscriptions
//! reach Redis asynchronously (batched, within ~10 ms), so before publishing across nodes a
//! test waits until `PUBSUB NUMSUB` shows every node, and after the expected messages a
//! quiet period (a short read timeout) must see nothing more.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::redis::Redis;
use common::*;
use tungstenite::Message as WsMessage;
use wshub::{
    BrokerEvent, BrokerStats, Cluster, Config, ConnId, Ctx, Frame, Handle, Handler, Message,
    RedisBroker, RedisBrokerError, Reply, Request,
};

/// The topic most tests use, and its channel under the default prefix.
const ROOM: &str = "room";
const ROOM_CHANNEL: &str = "wshub:room";
/// How long a condition (a subscription reaching Redis, a counter) may take.
const WAIT: Duration = Duration::from_secs(5);
/// The most a callback that publishes 10,000 frames may take: some 20-50 ms in a debug
/// build, but a machine busy with other tests stretches it. A loop that waited for the
/// broker would not return at all with Redis dead; the echo after it must come in
/// `ECHO_BOUND`.
const FLOOD_BOUND: Duration = Duration::from_secs(2);
const ECHO_BOUND: Duration = Duration::from_millis(500);
/// How long a client must see nothing after its expected messages.
const QUIET: Duration = Duration::from_millis(300);

// ----- the application: one handler per loop, driven by its clients' text commands -----

/// What the handlers of one node share with the test.
#[derive(Default)]
struct Shared {
    /// Every `on_broker` call: (loop index, event), in the order they came.
    events: Mutex<Vec<(usize, BrokerEvent)>>,
}

/// One loop's handler. A client is told `hello L` (its loop) when it opens, then drives
/// the loop with the commands of `command`.
struct Node {
    shared: Arc<Shared>,
}

impl Handler for Node {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
        Reply::accept(())
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId) {
        let hello = format!("hello {}", ctx.loop_index());
        reply(ctx, id, &hello);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId, msg: Message) {
        let Message::Text(text) = msg else {
            panic!("only text commands")
        };
        command(ctx, id, &text);
    }

    fn on_broker(&mut self, ctx: &mut Ctx<'_, ()>, event: BrokerEvent) {
        let at = ctx.loop_index();
        self.shared.events.lock().unwrap().push((at, event));
    }
}

/// `verb args…`:
/// - `echo X`: X back.
/// - `sub T` / `unsub T`: this connection; `sub T: RESULT` back.
/// - `subn P N`: subscribes this connection to P0 … P(N-1); `subn N` back.
/// - `pub T X`: publishes X to T (nothing back).
/// - `flood T N`: publishes 0 … N-1 to T in this one callback; `flooded N` back.
fn command(ctx: &mut Ctx<'_, ()>, me: ConnId, text: &str) {
    let (verb, rest) = text.split_once(' ').unwrap_or((text, ""));
    match verb {
        "echo" => reply(ctx, me, rest),
        "sub" => {
            let result = ctx.subscribe(me, rest);
            reply(ctx, me, &format!("sub {rest}: {result:?}"));
        }
        "unsub" => {
            let result = ctx.unsubscribe(me, rest);
            reply(ctx, me, &format!("unsub {rest}: {result:?}"));
        }
        "subn" => {
            let (prefix, n) = rest.split_once(' ').expect("subn PREFIX N");
            let n: usize = n.parse().expect("a count");
            for i in 0..n {
                let topic = format!("{prefix}{i}");
                assert_eq!(
                    ctx.subscribe(me, &topic),
                    Ok(true),
                    "subscribing to {topic}"
                );
            }
            reply(ctx, me, &format!("subn {n}"));
        }
        "pub" => {
            let (topic, x) = rest.split_once(' ').expect("pub T X");
            ctx.publish(topic, &Frame::text(x));
        }
        "flood" => {
            let (topic, n) = rest.split_once(' ').expect("flood T N");
            let n: usize = n.parse().expect("a count");
            for i in 0..n {
                ctx.publish(topic, &Frame::text(&i.to_string()));
            }
            reply(ctx, me, &format!("flooded {n}"));
        }
        other => panic!("unknown command {other:?}"),
    }
}

fn reply(ctx: &mut Ctx<'_, ()>, me: ConnId, text: &str) {
    ctx.send(me, &Frame::text(text)).expect("reply");
}

/// Short close and shutdown timeouts: a test that leaves a client unread does not wait 5 s.
fn config() -> Config {
    Config::default()
        .close_timeout(Duration::from_secs(2))
        .shutdown_timeout(Duration::from_secs(2))
}

fn broker(url: &str) -> RedisBroker {
    match RedisBroker::new(url) {
        Ok(broker) => broker,
        Err(e) => panic!("RedisBroker::new({url:?}): {e}"),
    }
}

// ----- nodes -----

/// A node that is one `Server`.
struct TestNode {
    server: TestServer<Node>,
    shared: Arc<Shared>,
}

fn node(broker: RedisBroker) -> TestNode {
    let shared = Arc::new(Shared::default());
    let handler = Node {
        shared: Arc::clone(&shared),
    };
    TestNode {
        server: start(config().broker(broker), handler),
        shared,
    }
}

impl TestNode {
    fn client(&self) -> Peer {
        Peer::connect(&self.server.url("/"))
    }

    fn handle(&self) -> &Handle {
        &self.server.handle
    }

    fn stats(&self) -> BrokerStats {
        broker_stats(self.handle())
    }

    fn events(&self) -> Vec<(usize, BrokerEvent)> {
        self.shared.events.lock().unwrap().clone()
    }

    /// Graceful shutdown; `run()` must have returned `Ok`.
    fn stop(self) {
        let (_, result) = self.server.stop();
        result.expect("the server's run() failed");
    }
}

/// A node that is one `Cluster`, running on a background thread.
struct TestCluster {
    addr: SocketAddr,
    handle: Handle,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<std::io::Result<Vec<Node>>>>,
}

fn cluster(broker: RedisBroker, threads: usize) -> TestCluster {
    let shared = Arc::new(Shared::default());
    let cluster = Cluster::bind("127.0.0.1:0", config().broker(broker), threads, |_| Node {
        shared: Arc::clone(&shared),
    })
    .expect("bind the cluster");
    let addr = cluster.local_addr().expect("addr");
    let handle = cluster.handle();
    assert_eq!(handle.loops(), threads);
    let thread = thread::spawn(move || cluster.run());
    TestCluster {
        addr,
        handle,
        shared,
        thread: Some(thread),
    }
}

impl TestCluster {
    /// A client on loop `at`: connects until one lands there (closing the others).
    fn client_on(&self, at: usize) -> Peer {
        for _ in 0..64 {
            let peer = Peer::connect(&format!("ws://{}/", self.addr));
            if peer.at == at {
                return peer;
            }
            peer.close();
        }
        panic!("64 connections and none on loop {at}");
    }

    fn stats(&self) -> BrokerStats {
        broker_stats(&self.handle)
    }

    fn events(&self) -> Vec<(usize, BrokerEvent)> {
        self.shared.events.lock().unwrap().clone()
    }

    /// Graceful shutdown of every loop; `run()` must have returned `Ok`.
    fn stop(mut self) {
        let _ = self.handle.shutdown();
        let thread = self.thread.take().expect("stopped twice");
        assert!(
            wait_until(Duration::from_secs(30), || thread.is_finished()),
            "the cluster did not stop within 30 s"
        );
        let handlers = thread
            .join()
            .expect("the cluster's thread panicked")
            .expect("the cluster's run() failed");
        assert_eq!(handlers.len(), self.handle.loops());
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.handle.shutdown();
        }
    }
}

fn broker_stats(handle: &Handle) -> BrokerStats {
    handle.broker_stats().expect("the node has a broker")
}

/// Waits until `what` holds for `stats()`; fails with the last counters otherwise.
fn wait_stats(
    name: &str,
    stats: impl Fn() -> BrokerStats,
    what: impl Fn(&BrokerStats) -> bool,
) -> BrokerStats {
    let ok = wait_until(WAIT, || what(&stats()));
    let last = stats();
    assert!(
        ok,
        "{name}: the broker's counters never got there: {last:?}"
    );
    last
}

/// Waits until every node's broker is connected both ways.
fn wait_connected(nodes: &[&TestNode]) {
    for (i, node) in nodes.iter().enumerate() {
        wait_stats(&format!("node {i}"), || node.stats(), |s| s.connected);
    }
}

// ----- clients -----

/// A tungstenite client, with the loop its connection is on.
struct Peer {
    ws: Client,
    at: usize,
}

impl Peer {
    fn connect(url: &str) -> Peer {
        let mut ws = connect(url);
        let hello = next_text(&mut ws);
        let at = hello
            .strip_prefix("hello ")
            .and_then(|at| at.parse().ok())
            .unwrap_or_else(|| panic!("expected `hello L`, got {hello:?}"));
        Peer { ws, at }
    }

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

    fn sub(&mut self, topic: &str) {
        assert_eq!(
            self.ask(&format!("sub {topic}")),
            format!("sub {topic}: Ok(true)")
        );
    }

    fn unsub(&mut self, topic: &str) {
        assert_eq!(
            self.ask(&format!("unsub {topic}")),
            format!("unsub {topic}: Ok(true)")
        );
    }

    fn publish(&mut self, topic: &str, text: &str) {
        self.say(&format!("pub {topic} {text}"));
    }

    /// Reads exactly `expected.len()` messages and compares them, in order, with
    /// `expected`.
    fn expect(&mut self, who: &str, expected: &[String]) {
        let got: Vec<String> = (0..expected.len()).map(|_| self.next()).collect();
        if let Some(i) = got.iter().zip(expected).position(|(g, e)| g != e) {
            panic!(
                "{who}: message {i} of {} is {:?}, not {:?}",
                expected.len(),
                got[i],
                expected[i]
            );
        }
    }

    /// The next text or binary message within `timeout`, if any.
    fn try_next(&mut self, timeout: Duration) -> Option<WsMessage> {
        let deadline = Instant::now() + timeout;
        let got = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break None;
            }
            set_timeouts(&self.ws, left);
            match self.ws.read() {
                Ok(m @ (WsMessage::Text(_) | WsMessage::Binary(_) | WsMessage::Close(_))) => {
                    break Some(m);
                }
                Ok(_) => {} // a ping or pong
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break None;
                }
                Err(e) => panic!("reading: {e}"),
            }
        };
        set_timeouts(&self.ws, IO_TIMEOUT);
        got
    }

    /// Nothing more arrives for `QUIET`.
    fn quiet(&mut self, who: &str) {
        quiet_all(&mut [(who, self)]);
    }

    fn close(self) {
        close_client(self.ws);
    }
}

/// Two nodes on `redis`, and a client on each subscribed to `ROOM`, once Redis has both
/// subscriptions.
fn two_nodes_in_a_room(redis: &Redis) -> (TestNode, TestNode, Peer, Peer) {
    let a = node(broker(&redis.url()));
    let b = node(broker(&redis.url()));
    wait_connected(&[&a, &b]);
    let mut a1 = a.client();
    let mut b1 = b.client();
    a1.sub(ROOM);
    b1.sub(ROOM);
    wait_numsub(redis, ROOM_CHANNEL, 2);
    (a, b, a1, b1)
}

/// Nothing more arrives at any of `peers` for `QUIET` (one wait for all: what was on its
/// way is in their sockets by then).
fn quiet_all(peers: &mut [(&str, &mut Peer)]) {
    thread::sleep(QUIET);
    for (who, peer) in peers {
        if let Some(m) = peer.try_next(Duration::from_millis(20)) {
            panic!("{who} got {m:?}, after everything it should have got");
        }
    }
}

/// Closes every client cleanly (so that a node's shutdown need not wait for them).
fn close_all(peers: impl IntoIterator<Item = Peer>) {
    for peer in peers {
        peer.close();
    }
}

/// `prefix0`, `prefix1`, … `prefix(n-1)`.
fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

// ----- Redis, as the tests look at it -----

/// Waits until Redis counts `n` subscribers of `channel`.
fn wait_numsub(redis: &Redis, channel: &str, n: usize) {
    let ok = wait_until(WAIT, || redis.subscribers(channel) == n);
    let now = redis.subscribers(channel);
    assert!(ok, "{channel}: {now} subscribers in Redis, not {n}");
}

/// Subscriber counts of many channels at once (`PUBSUB NUMSUB c1 c2 …`), in order.
fn numsub_many(redis: &Redis, channels: &[String]) -> Vec<usize> {
    let reply = redis.command(&format!("PUBSUB NUMSUB {}", channels.join(" ")));
    // *2n, then for each channel: $len, the name, :N.
    let counts: Vec<usize> = reply
        .lines()
        .filter_map(|line| line.strip_prefix(':'))
        .map(|n| n.trim().parse().expect("a count"))
        .collect();
    assert_eq!(counts.len(), channels.len(), "reply {reply:?}");
    counts
}

/// The connections Redis has, but the one asking (`CLIENT LIST`).
fn redis_clients(redis: &Redis) -> usize {
    let reply = redis.command("CLIENT LIST");
    let lines = reply.lines().filter(|l| l.contains("id=")).count();
    lines.checked_sub(1).expect("CLIENT LIST lists the asker")
}

/// `PUBLISH channel payload` with any bytes (RESP, not the inline protocol); returns how
/// many subscribers Redis handed it to.
fn publish_raw(redis: &Redis, channel: &str, payload: &[u8]) -> usize {
    let mut request = b"*3\r\n".to_vec();
    for arg in [b"PUBLISH".as_slice(), channel.as_bytes(), payload] {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"QUIT\r\n");
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, redis.port)).expect("connect redis");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.write_all(&request).expect("write");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply
        .lines()
        .find_map(|line| line.strip_prefix(':'))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected PUBLISH reply {reply:?}"))
}

/// A message as a node with id `sender` puts it on a channel: `w`, the id, the opcode, the
/// payload.
fn envelope(sender: u64, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut message = vec![b'w'];
    message.extend_from_slice(&sender.to_le_bytes());
    message.push(opcode);
    message.extend_from_slice(payload);
    message
}

/// A loopback port with nothing listening on it (for now).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

// ----- 1. two nodes, one publisher -----

#[test]
fn a_thousand_messages_reach_every_subscriber_on_both_nodes_once_in_order() {
    let redis = Redis::start();
    let a = node(broker(&redis.url()));
    let b = node(broker(&redis.url()));
    wait_connected(&[&a, &b]);
    // The publisher is a subscriber too: its own node must deliver to it once, not twice.
    let mut publisher = a.client();
    let mut a1 = a.client();
    let mut b1 = b.client();
    let mut b2 = b.client();
    for peer in [&mut publisher, &mut a1, &mut b1, &mut b2] {
        peer.sub(ROOM);
    }
    wait_numsub(&redis, ROOM_CHANNEL, 2);

    let expected = numbered("m", 1_000);
    for text in &expected {
        publisher.publish(ROOM, text);
    }
    publisher.expect("the publisher (on A)", &expected);
    a1.expect("A's subscriber", &expected);
    b1.expect("B's first subscriber", &expected);
    b2.expect("B's second subscriber", &expected);
    quiet_all(&mut [
        ("the publisher", &mut publisher),
        ("A's subscriber", &mut a1),
        ("B's first subscriber", &mut b1),
        ("B's second subscriber", &mut b2),
    ]);

    let sa = wait_stats("A", || a.stats(), |s| s.published == 1_000);
    let sb = wait_stats("B", || b.stats(), |s| s.received == 1_000);
    // A hears its own messages back from Redis and skips them: not received, not dropped.
    assert_eq!((sa.received, sa.receive_drops), (0, 0), "A: {sa:?}");
    assert_eq!(
        (sa.publish_failures, sa.queue_overflows),
        (0, 0),
        "A: {sa:?}"
    );
    assert_eq!((sb.published, sb.receive_drops), (0, 0), "B: {sb:?}");
    assert_eq!((sa.subscriptions, sb.subscriptions), (1, 1));
    close_all([publisher, a1, b1, b2]);
    a.stop();
    b.stop();
}

// ----- 2. three nodes, a publisher on each at once -----

#[test]
fn three_publishers_on_three_nodes_reach_every_subscriber_once_in_per_sender_order() {
    const EACH: usize = 300;
    let redis = Redis::start();
    let nodes: Vec<TestNode> = (0..3).map(|_| node(broker(&redis.url()))).collect();
    wait_connected(&nodes.iter().collect::<Vec<_>>());
    // On each node a publisher (subscribed too) and a subscriber.
    let mut publishers = Vec::new();
    let mut subscribers = Vec::new();
    for n in &nodes {
        let mut p = n.client();
        p.sub(ROOM);
        publishers.push(p);
        let mut s = n.client();
        s.sub(ROOM);
        subscribers.push(s);
    }
    wait_numsub(&redis, ROOM_CHANNEL, 3);

    let threads: Vec<JoinHandle<(Peer, Vec<String>)>> = publishers
        .into_iter()
        .enumerate()
        .map(|(k, mut p)| {
            thread::spawn(move || {
                for i in 0..EACH {
                    p.publish(ROOM, &format!("n{k}-{i}"));
                }
                let got = (0..3 * EACH).map(|_| p.next()).collect();
                (p, got)
            })
        })
        .collect();
    let mut received: Vec<(String, Vec<String>)> = Vec::new();
    for (k, s) in subscribers.iter_mut().enumerate() {
        let got = (0..3 * EACH).map(|_| s.next()).collect();
        received.push((format!("the subscriber on node {k}"), got));
    }
    let mut publishers = Vec::new();
    for (k, thread) in threads.into_iter().enumerate() {
        let (p, got) = thread.join().expect("a publisher's thread panicked");
        received.push((format!("the publisher on node {k}"), got));
        publishers.push(p);
    }

    for (who, got) in &received {
        for k in 0..3 {
            let prefix = format!("n{k}-");
            let from_k: Vec<String> = got
                .iter()
                .filter(|m| m.starts_with(&prefix))
                .cloned()
                .collect();
            assert!(
                from_k == numbered(&prefix, EACH),
                "{who}: node {k}'s messages are not all there once in order ({} of them)",
                from_k.len()
            );
        }
    }
    let names: Vec<String> = (0..6).map(|k| format!("client {k}")).collect();
    let mut all: Vec<(&str, &mut Peer)> = names
        .iter()
        .map(String::as_str)
        .zip(publishers.iter_mut().chain(subscribers.iter_mut()))
        .collect();
    quiet_all(&mut all);
    for (k, n) in nodes.iter().enumerate() {
        let s = wait_stats(
            &format!("node {k}"),
            || n.stats(),
            |s| s.published == EACH as u64 && s.received == 2 * EACH as u64,
        );
        assert_eq!(
            (s.publish_failures, s.queue_overflows, s.receive_drops),
            (0, 0, 0),
            "node {k}: {s:?}"
        );
    }
    close_all(publishers.into_iter().chain(subscribers));
    for n in nodes {
        n.stop();
    }
}

// ----- 3. Redis' subscriptions follow the local subscribers -----

#[test]
fn redis_subscriptions_follow_the_first_and_last_local_subscriber() {
    let redis = Redis::start();
    let a = node(broker(&redis.url()));
    let channel = "wshub:t";
    let subscriptions = |n: usize| {
        wait_stats("A", || a.stats(), |s| s.subscriptions == n);
    };
    // A fence: a new subscription that Redis shows means every change before it reached
    // Redis too (the broker applies them in order, whatever it batches).
    let mut fences = 0;
    let mut fence = |peer: &mut Peer| {
        fences += 1;
        let topic = format!("fence{fences}");
        peer.sub(&topic);
        wait_numsub(&redis, &format!("wshub:{topic}"), 1);
    };

    let mut c1 = a.client();
    let mut c2 = a.client();
    assert_eq!(redis.subscribers(channel), 0);
    c1.sub("t");
    wait_numsub(&redis, channel, 1);
    c2.sub("t");
    fence(&mut c1);
    assert_eq!(redis.subscribers(channel), 1, "two local subscribers");
    c1.unsub("t");
    fence(&mut c1);
    assert_eq!(redis.subscribers(channel), 1, "one local subscriber left");
    subscriptions(3); // t, fence1, fence2
    // The last one leaves by disconnecting.
    c2.close();
    wait_numsub(&redis, channel, 0);
    subscriptions(2);

    // … or by unsubscribing.
    let mut c3 = a.client();
    c3.sub("u");
    wait_numsub(&redis, "wshub:u", 1);
    c3.unsub("u");
    wait_numsub(&redis, "wshub:u", 0);

    // 200 topics in one callback: all reach Redis.
    let mut c4 = a.client();
    assert_eq!(c4.ask("subn many- 200"), "subn 200");
    let channels = numbered("wshub:many-", 200);
    let all = |n: usize| {
        let ok = wait_until(WAIT, || {
            numsub_many(&redis, &channels).iter().all(|&c| c == n)
        });
        let counts = numsub_many(&redis, &channels);
        let other = counts.iter().filter(|&&c| c != n).count();
        assert!(
            ok,
            "{other} of the 200 channels do not have {n} subscribers"
        );
    };
    all(1);
    subscriptions(202);
    c4.close();
    all(0);
    subscriptions(2);
    assert_eq!(redis.subscribers(channel), 0);
    c1.close();
    c3.close();
    subscriptions(0);
    a.stop();
}

#[test]
fn a_cluster_node_subscribes_a_channel_once_for_all_its_loops() {
    let redis = Redis::start();
    let c = cluster(broker(&redis.url()), 2);
    let channel = "wshub:t";
    let mut fences = 0;
    let mut fence = |peer: &mut Peer| {
        fences += 1;
        let topic = format!("fence{fences}");
        peer.sub(&topic);
        wait_numsub(&redis, &format!("wshub:{topic}"), 1);
    };
    let mut x0 = c.client_on(0);
    let mut x1 = c.client_on(1);

    // Loop 0 first, loop 1 too; loop 0 leaves (unsubscribes), then loop 1 (disconnects).
    x0.sub("t");
    wait_numsub(&redis, channel, 1);
    x1.sub("t");
    fence(&mut x1);
    assert_eq!(redis.subscribers(channel), 1, "subscribers on both loops");
    wait_stats("C", || c.stats(), |s| s.subscriptions == 2);
    x0.unsub("t");
    fence(&mut x0);
    assert_eq!(
        redis.subscribers(channel),
        1,
        "loop 1 still has a subscriber"
    );
    x1.close();
    wait_numsub(&redis, channel, 0);

    // The other way round: loop 1 first and last.
    let mut x1 = c.client_on(1);
    x1.sub("t");
    wait_numsub(&redis, channel, 1);
    x0.sub("t");
    x1.unsub("t");
    fence(&mut x1);
    assert_eq!(
        redis.subscribers(channel),
        1,
        "loop 0 still has a subscriber"
    );
    x0.unsub("t");
    wait_numsub(&redis, channel, 0);
    // Only the fences are left (fence2 on loop 0, fence3 on loop 1).
    wait_stats("C", || c.stats(), |s| s.subscriptions == 2);
    x0.close();
    x1.close();
    wait_stats("C", || c.stats(), |s| s.subscriptions == 0);
    c.stop();
}

// ----- 4. a cluster node and a plain node -----

#[test]
fn a_cluster_node_and_a_plain_node_exchange_messages_once_per_loop() {
    const N: usize = 200;
    let redis = Redis::start();
    let c = cluster(broker(&redis.url()), 2);
    let p = node(broker(&redis.url()));
    wait_connected(&[&p]);
    wait_stats("C", || c.stats(), |s| s.connected);
    let mut x0 = c.client_on(0);
    let mut x1 = c.client_on(1);
    let mut p1 = p.client();
    for peer in [&mut x0, &mut x1, &mut p1] {
        peer.sub(ROOM);
    }
    wait_numsub(&redis, ROOM_CHANNEL, 2);

    // From the plain node: every subscriber on both loops of the cluster, once each.
    let from_p = numbered("p-", N);
    for text in &from_p {
        p1.publish(ROOM, text);
    }
    p1.expect("the plain node's publisher", &from_p);
    x0.expect("the cluster's loop 0", &from_p);
    x1.expect("the cluster's loop 1", &from_p);

    // From loop 0 of the cluster: its loop 1 once (not again through Redis), the plain
    // node once.
    let from_x = numbered("x-", N);
    for text in &from_x {
        x0.publish(ROOM, text);
    }
    x0.expect("the cluster's publisher on loop 0", &from_x);
    x1.expect("the cluster's loop 1", &from_x);
    p1.expect("the plain node", &from_x);
    quiet_all(&mut [("x0", &mut x0), ("x1", &mut x1), ("p1", &mut p1)]);

    let sc = wait_stats(
        "C",
        || c.stats(),
        |s| s.published == N as u64 && s.received == N as u64,
    );
    let sp = wait_stats(
        "P",
        || p.stats(),
        |s| s.published == N as u64 && s.received == N as u64,
    );
    assert_eq!((sc.receive_drops, sp.receive_drops), (0, 0));
    // Each loop of the cluster saw the broker come up once.
    let mut events = c.events();
    events.sort_by_key(|&(at, _)| at);
    assert_eq!(
        events,
        [
            (0, BrokerEvent::Up { gap: false }),
            (1, BrokerEvent::Up { gap: false })
        ]
    );
    close_all([x0, x1]);
    c.stop();
    // The stopped cluster's connections to Redis go; the plain node's stay.
    assert!(
        wait_until(WAIT, || redis_clients(&redis) == 2),
        "{} connections in Redis after the cluster stopped, not 2 (the plain node's)",
        redis_clients(&redis)
    );
    wait_numsub(&redis, ROOM_CHANNEL, 1);
    p1.close();
    p.stop();
}

// ----- 5. Handle::publish and Handle::deliver -----

#[test]
fn handle_publish_crosses_nodes_and_handle_deliver_does_not() {
    let redis = Redis::start();
    let (a, b, mut a1, mut b1) = two_nodes_in_a_room(&redis);

    let texts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // From A's handle: publish, deliver, publish, broadcast.
    let ha = a.handle();
    ha.publish(ROOM, &Frame::text("published 1"))
        .expect("publish");
    ha.deliver(ROOM, &Frame::text("delivered 2"))
        .expect("deliver");
    ha.publish(ROOM, &Frame::text("published 3"))
        .expect("publish");
    ha.broadcast(&Frame::text("broadcast 4"))
        .expect("broadcast");
    a1.expect(
        "A's subscriber",
        &texts(&["published 1", "delivered 2", "published 3", "broadcast 4"]),
    );
    b1.expect("B's subscriber", &texts(&["published 1", "published 3"]));
    quiet_all(&mut [("A's subscriber", &mut a1), ("B's subscriber", &mut b1)]);

    // From B's handle: deliver, publish.
    let hb = b.handle();
    hb.deliver(ROOM, &Frame::text("delivered on B 5"))
        .expect("deliver");
    hb.publish(ROOM, &Frame::text("published on B 6"))
        .expect("publish");
    b1.expect(
        "B's subscriber",
        &texts(&["delivered on B 5", "published on B 6"]),
    );
    a1.expect("A's subscriber", &texts(&["published on B 6"]));
    quiet_all(&mut [("A's subscriber", &mut a1), ("B's subscriber", &mut b1)]);
    let sa = wait_stats("A", || a.stats(), |s| s.published == 2 && s.received == 1);
    let sb = wait_stats("B", || b.stats(), |s| s.published == 1 && s.received == 2);
    assert_eq!((sa.receive_drops, sb.receive_drops), (0, 0));
    close_all([a1, b1]);
    a.stop();
    b.stop();
}

// ----- 6. Redis killed and restarted -----

#[test]
fn redis_killed_and_restarted_local_delivery_goes_on_and_cross_node_delivery_resumes() {
    let mut redis = Redis::start();
    let port = redis.port;
    let a = node(broker(&redis.url()));
    let b = node(broker(&redis.url()));
    wait_connected(&[&a, &b]);
    let mut a1 = a.client(); // publishes, and is subscribed
    let mut a2 = a.client();
    let mut b1 = b.client();
    for peer in [&mut a1, &mut a2, &mut b1] {
        peer.sub(ROOM);
    }
    wait_numsub(&redis, ROOM_CHANNEL, 2);
    let before = vec!["before".to_owned()];
    a1.publish(ROOM, "before");
    for (who, peer) in [("a1", &mut a1), ("a2", &mut a2), ("b1", &mut b1)] {
        peer.expect(who, &before);
    }

    // Mid-conversation, Redis dies.
    redis.kill9();
    let killed = Instant::now();
    let down = [(0, BrokerEvent::Up { gap: false }), (0, BrokerEvent::Down)];
    assert!(
        wait_until(WAIT, || a.events() == down && b.events() == down),
        "no Down on both nodes: A {:?}, B {:?}",
        a.events(),
        b.events()
    );
    // Local delivery goes on.
    let during = numbered("down-", 20);
    for text in &during {
        a1.publish(ROOM, text);
    }
    a1.expect("a1", &during);
    a2.expect("a2", &during);
    let sa = wait_stats(
        "A",
        || a.stats(),
        |s| s.publish_failures > 0 && !s.connected,
    );
    assert_eq!(sa.published, 1, "A: {sa:?}");
    assert!(!b.stats().connected);
    b1.quiet("b1, while Redis is down");
    // Down long enough for the reconnect backoff to reach its longest.
    thread::sleep(Duration::from_millis(2_000).saturating_sub(killed.elapsed()));

    // Restarted on the same port: cross-node delivery comes back. A message every 50 ms
    // until B has one.
    let restart = Instant::now();
    let redis = Redis::start_on(port);
    let started = restart.elapsed();
    let mut sent = 0;
    let first = loop {
        assert!(
            restart.elapsed() < Duration::from_secs(10),
            "no cross-node message 10 s after the restart"
        );
        a1.publish(ROOM, &format!("up-{sent}"));
        sent += 1;
        if let Some(m) = b1.try_next(Duration::from_millis(50)) {
            break m;
        }
    };
    let recovery = restart.elapsed();
    eprintln!(
        "Redis restart → first cross-node message: {recovery:?} \
         (redis-server took {started:?} to answer; {sent} messages sent every 50 ms)"
    );
    let WsMessage::Text(first) = first else {
        panic!("b1 got {first:?}")
    };
    let k: usize = first
        .strip_prefix("up-")
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("b1 got {first:?}"));
    assert!(
        recovery < Duration::from_secs(3),
        "cross-node delivery took {recovery:?} to resume after the restart"
    );
    // From the first one on, B gets everything, in order; A got everything.
    a1.publish(ROOM, "after");
    let mut rest: Vec<String> = (k + 1..sent).map(|i| format!("up-{i}")).collect();
    rest.push("after".to_owned());
    b1.expect("b1 after the restart", &rest);
    let mut all: Vec<String> = numbered("up-", sent);
    all.push("after".to_owned());
    a1.expect("a1", &all);
    a2.expect("a2", &all);
    quiet_all(&mut [("a1", &mut a1), ("a2", &mut a2), ("b1", &mut b1)]);

    let up = [
        (0, BrokerEvent::Up { gap: false }),
        (0, BrokerEvent::Down),
        (0, BrokerEvent::Up { gap: true }),
    ];
    assert_eq!(a.events(), up, "A's on_broker");
    assert_eq!(b.events(), up, "B's on_broker");
    let sa = wait_stats("A", || a.stats(), |s| s.connected);
    let sb = wait_stats("B", || b.stats(), |s| s.connected);
    assert_eq!((sa.reconnects, sb.reconnects), (1, 1), "A {sa:?}, B {sb:?}");
    assert_eq!(sb.received as usize, 2 + rest.len(), "B: {sb:?}");
    assert_eq!(redis.subscribers(ROOM_CHANNEL), 2);
    close_all([a1, a2, b1]);
    a.stop();
    b.stop();
}

/// A node that publishes nothing while Redis is away has a publishing connection that
/// died with Redis; its first frame after `Up` must not be lost on it.
#[test]
fn the_first_frame_after_redis_is_back_crosses_even_from_a_node_silent_meanwhile() {
    let mut redis = Redis::start();
    let port = redis.port;
    let (a, b, mut a1, mut b1) = two_nodes_in_a_room(&redis);
    a1.publish(ROOM, "before");
    b1.expect("b1", &["before".to_owned()]);

    redis.kill9();
    let down = [(0, BrokerEvent::Up { gap: false }), (0, BrokerEvent::Down)];
    assert!(
        wait_until(WAIT, || a.events() == down && b.events() == down),
        "no Down on both nodes: A {:?}, B {:?}",
        a.events(),
        b.events()
    );
    thread::sleep(Duration::from_millis(300));
    let redis = Redis::start_on(port);
    let up = [
        (0, BrokerEvent::Up { gap: false }),
        (0, BrokerEvent::Down),
        (0, BrokerEvent::Up { gap: true }),
    ];
    assert!(
        wait_until(WAIT, || a.events() == up && b.events() == up),
        "no Up on both nodes: A {:?}, B {:?}",
        a.events(),
        b.events()
    );
    // At once, with nothing sent on A since Redis died.
    a1.publish(ROOM, "first after");
    b1.expect("b1 after the restart", &["first after".to_owned()]);
    a1.expect("a1", &["before".to_owned(), "first after".to_owned()]);
    quiet_all(&mut [("a1", &mut a1), ("b1", &mut b1)]);
    let sa = a.stats();
    assert_eq!((sa.published, sa.publish_failures), (2, 0), "A: {sa:?}");
    assert_eq!(redis.subscribers(ROOM_CHANNEL), 2);
    close_all([a1, b1]);
    a.stop();
    b.stop();
}

// ----- 7. Redis not there at start -----

#[test]
fn a_node_serves_without_redis_and_connects_when_it_comes() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let a = node(broker(&url));
    let b = node(broker(&url));
    let mut a1 = a.client();
    let mut b1 = b.client();
    a1.sub(ROOM);
    b1.sub(ROOM);
    let local = numbered("local-", 10);
    for text in &local {
        a1.publish(ROOM, text);
    }
    a1.expect("a1, without Redis", &local);
    let sa = wait_stats("A", || a.stats(), |s| s.publish_failures == 10);
    assert!(!sa.connected && sa.published == 0, "A: {sa:?}");
    b1.quiet("b1, without Redis");
    // Failing to connect at all is not a Down: nothing was up.
    assert!(
        a.events().is_empty() && b.events().is_empty(),
        "A {:?}, B {:?}",
        a.events(),
        b.events()
    );

    let redis = Redis::start_on(port);
    let up = [(0, BrokerEvent::Up { gap: false })];
    assert!(
        wait_until(WAIT, || a.events() == up && b.events() == up),
        "no Up{{gap: false}} on both nodes: A {:?}, B {:?}",
        a.events(),
        b.events()
    );
    wait_connected(&[&a, &b]);
    wait_numsub(&redis, ROOM_CHANNEL, 2);
    let cross = numbered("cross-", 10);
    for text in &cross {
        a1.publish(ROOM, text);
    }
    a1.expect("a1", &cross);
    b1.expect("b1", &cross);
    quiet_all(&mut [("a1", &mut a1), ("b1", &mut b1)]);
    let sa = a.stats();
    let sb = wait_stats("B", || b.stats(), |s| s.received == 10);
    assert_eq!((sa.reconnects, sb.reconnects), (0, 0));
    assert_eq!(a.events(), up);
    close_all([a1, b1]);
    a.stop();
    b.stop();
}

// ----- 8. a full publishing queue never blocks a loop -----

#[test]
fn a_full_queue_with_redis_dead_refuses_frames_without_blocking_the_loop() {
    const FRAMES: u64 = 10_000;
    let mut redis = Redis::start();
    let a = node(broker(&redis.url()).with_queue_capacity(4));
    wait_connected(&[&a]);
    let mut a1 = a.client();
    a1.sub(ROOM); // so that the subscribing connection sees Redis go
    wait_numsub(&redis, ROOM_CHANNEL, 1);
    redis.kill9();
    assert!(
        wait_until(WAIT, || a.events().contains(&(0, BrokerEvent::Down))),
        "no Down: {:?}",
        a.events()
    );

    let asked = Instant::now();
    assert_eq!(a1.ask(&format!("flood burst {FRAMES}")), "flooded 10000");
    let flood = asked.elapsed();
    let asked = Instant::now();
    assert_eq!(a1.ask("echo still here"), "still here");
    let echo = asked.elapsed();
    eprintln!(
        "10,000 publishes in one callback with Redis dead: {flood:?}, then an echo in {echo:?}"
    );
    assert!(flood < FLOOD_BOUND, "the flood took {flood:?}");
    assert!(echo < ECHO_BOUND, "the echo took {echo:?}");

    // Every frame is accounted for once: refused at the queue, or failed to send.
    let s = wait_stats(
        "A",
        || a.stats(),
        |s| s.published + s.publish_failures + s.queue_overflows == FRAMES,
    );
    assert_eq!(s.published, 0, "{s:?}");
    assert!(s.queue_overflows > 0, "{s:?}");
    assert!(s.publish_failures >= 4, "the queue took 4 at least: {s:?}");
    thread::sleep(QUIET);
    assert_eq!(a.stats(), s, "the counters moved after settling");
    a1.quiet("a1");
    a1.close();
    a.stop();
}

#[test]
fn a_burst_over_a_small_queue_publishes_what_fits_and_counts_the_rest() {
    const FRAMES: u64 = 10_000;
    let redis = Redis::start();
    let a = node(broker(&redis.url()).with_queue_capacity(4));
    let b = node(broker(&redis.url()));
    wait_connected(&[&a, &b]);
    let mut a1 = a.client();
    let mut b1 = b.client();
    b1.sub("burst");
    wait_numsub(&redis, "wshub:burst", 1);

    let asked = Instant::now();
    assert_eq!(a1.ask(&format!("flood burst {FRAMES}")), "flooded 10000");
    let flood = asked.elapsed();
    let asked = Instant::now();
    assert_eq!(a1.ask("echo still here"), "still here");
    let echo = asked.elapsed();
    eprintln!(
        "10,000 publishes in one callback over a queue of 4: {flood:?}, then an echo in {echo:?}"
    );
    assert!(flood < FLOOD_BOUND, "the flood took {flood:?}");
    assert!(echo < ECHO_BOUND, "the echo took {echo:?}");

    let sa = wait_stats(
        "A",
        || a.stats(),
        |s| s.published + s.publish_failures + s.queue_overflows == FRAMES,
    );
    assert_eq!(sa.publish_failures, 0, "{sa:?}");
    assert!(sa.queue_overflows > 0 && sa.published > 0, "{sa:?}");
    // B gets exactly what A handed to Redis: a subsequence of 0 … 9,999, in order.
    let got: Vec<u64> = (0..sa.published)
        .map(|_| b1.next().parse().expect("a number"))
        .collect();
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
    assert!(got.iter().all(|&i| i < FRAMES), "{got:?}");
    b1.quiet("b1");
    let sb = wait_stats("B", || b.stats(), |s| s.received == sa.published);
    assert_eq!(sb.receive_drops, 0);
    assert_eq!(a.stats(), sa, "A's counters moved after settling");
    close_all([a1, b1]);
    a.stop();
    b.stop();
}

// ----- 9. what is not a wshub message is dropped -----

#[test]
fn messages_that_are_not_wshub_frames_are_dropped_and_counted() {
    let redis = Redis::start();
    let broker = broker(&redis.url());
    let me = broker.node_id();
    let other = me.wrapping_add(1);
    let a = node(broker);
    wait_connected(&[&a]);
    let mut a1 = a.client();
    a1.sub(ROOM);
    wait_numsub(&redis, ROOM_CHANNEL, 1);

    // Redis hands each to the node's one subscribing connection.
    assert_eq!(redis.command("PUBLISH wshub:room hello"), ":1\r\n");
    let garbage: [Vec<u8>; 7] = [
        Vec::new(),
        b"w1234567".to_vec(),                    // too short for an id
        envelope(other, 0x1, b"")[..9].to_vec(), // no opcode
        envelope(other, 0x9, b"ping"),           // a control opcode
        envelope(other, 0x1, &[0xff, 0xfe]),     // text that is not UTF-8
        envelope(other, 0x0, b"continuation"),   // not a message opcode
        [b"x".as_slice(), &envelope(other, 0x1, b"wrong magic")[1..]].concat(),
    ];
    for payload in &garbage {
        assert_eq!(publish_raw(&redis, ROOM_CHANNEL, payload), 1);
    }
    // The node's own id: skipped as its own message, not delivered, not a drop.
    assert_eq!(
        publish_raw(&redis, ROOM_CHANNEL, &envelope(me, 0x1, b"mine")),
        1
    );
    // Well-formed messages from another node are delivered.
    assert_eq!(
        publish_raw(&redis, ROOM_CHANNEL, &envelope(other, 0x1, b"forged")),
        1
    );
    assert_eq!(
        publish_raw(&redis, ROOM_CHANNEL, &envelope(other, 0x2, &[0, 1, 2])),
        1
    );

    assert_eq!(a1.next(), "forged");
    match next_data(&mut a1.ws) {
        WsMessage::Binary(b) => assert_eq!(&b[..], [0, 1, 2]),
        other => panic!("expected the binary message, got {other:?}"),
    }
    a1.quiet("a1");
    let s = wait_stats("A", || a.stats(), |s| s.receive_drops == 8);
    assert_eq!(s.received, 2, "{s:?}");
    // The node is unaffected: still subscribed, still serving.
    assert!(s.connected);
    assert_eq!(a.events(), [(0, BrokerEvent::Up { gap: false })]);
    assert_eq!(a1.ask("echo alive"), "alive");
    a1.publish(ROOM, "local");
    assert_eq!(a1.next(), "local");
    assert_eq!(
        publish_raw(&redis, ROOM_CHANNEL, &envelope(other, 0x1, b"again")),
        1
    );
    assert_eq!(a1.next(), "again");
    a1.quiet("a1");
    a1.close();
    a.stop();
}

// ----- 10. prefixes keep applications apart -----

#[test]
fn nodes_with_different_prefixes_do_not_see_each_others_messages() {
    let redis = Redis::start();
    let a = node(broker(&redis.url()).with_prefix("app1:"));
    let b = node(broker(&redis.url()).with_prefix("app2:"));
    let c = node(broker(&redis.url()).with_prefix("app1:"));
    wait_connected(&[&a, &b, &c]);
    let mut a1 = a.client();
    let mut b1 = b.client();
    let mut c1 = c.client();
    for peer in [&mut a1, &mut b1, &mut c1] {
        peer.sub(ROOM);
    }
    wait_numsub(&redis, "app1:room", 2);
    wait_numsub(&redis, "app2:room", 1);
    assert_eq!(redis.subscribers(ROOM_CHANNEL), 0);

    a1.publish(ROOM, "from app1");
    b1.publish(ROOM, "from app2");
    let one = |s: &str| vec![s.to_owned()];
    a1.expect("a1", &one("from app1"));
    c1.expect("c1 (same prefix)", &one("from app1"));
    b1.expect("b1 (its own)", &one("from app2"));
    quiet_all(&mut [("a1", &mut a1), ("b1", &mut b1), ("c1", &mut c1)]);
    wait_stats("C", || c.stats(), |s| s.received == 1);
    for (name, n) in [("A", &a), ("B", &b)] {
        let s = n.stats();
        assert_eq!((s.received, s.receive_drops), (0, 0), "{name}: {s:?}");
    }
    close_all([a1, b1, c1]);
    a.stop();
    b.stop();
    c.stop();
}

// ----- 11. a bad URL -----

#[test]
fn a_url_that_is_not_a_redis_url_is_refused() {
    match RedisBroker::new("not a url") {
        Err(e @ RedisBrokerError::InvalidUrl(_)) => {
            let shown = e.to_string();
            assert!(
                shown.starts_with("not a usable Redis URL: "),
                "Display: {shown:?}"
            );
            assert!(
                shown.len() > "not a usable Redis URL: ".len(),
                "no reason given"
            );
        }
        Ok(_) => panic!("RedisBroker::new(\"not a url\") succeeded"),
    }
    assert!(matches!(
        RedisBroker::new("http://127.0.0.1:6379/"),
        Err(RedisBrokerError::InvalidUrl(_))
    ));
}

// ----- 12. a stopped node leaves Redis -----

#[test]
fn a_stopped_node_closes_its_redis_connections() {
    let redis = Redis::start();
    assert_eq!(redis_clients(&redis), 0);
    let a = node(broker(&redis.url()));
    let b = node(broker(&redis.url()));
    wait_connected(&[&a, &b]);
    // Two connections each: publishing and subscribing.
    assert!(
        wait_until(WAIT, || redis_clients(&redis) == 4),
        "{} connections in Redis, not 4",
        redis_clients(&redis)
    );
    let mut a1 = a.client();
    let mut b1 = b.client();
    a1.sub(ROOM);
    b1.sub(ROOM);
    wait_numsub(&redis, ROOM_CHANNEL, 2);

    // A's client is still connected when A shuts down (a thread reads it, so that it
    // answers the server's close frame).
    let reader = thread::spawn(move || {
        for _ in 0..100 {
            if a1.ws.read().is_err() {
                return;
            }
        }
        panic!("a1: no end after 100 messages");
    });
    let stopping = Instant::now();
    a.stop();
    let stopped = Instant::now();
    let gone = |n: usize| wait_until(Duration::from_secs(3), || redis_clients(&redis) == n);
    assert!(
        gone(2),
        "A's connections still there 3 s after it stopped: {}",
        redis_clients(&redis)
    );
    eprintln!(
        "A's Redis connections gone {:?} after it stopped ({:?} after its shutdown began)",
        stopped.elapsed(),
        stopping.elapsed()
    );
    assert_eq!(redis.subscribers(ROOM_CHANNEL), 1);
    reader.join().expect("a1's reader");

    b1.close();
    b.stop();
    let stopped = Instant::now();
    assert!(
        gone(0),
        "B's connections still there 3 s after it stopped: {}",
        redis_clients(&redis)
    );
    eprintln!(
        "B's Redis connections gone {:?} after it stopped",
        stopped.elapsed()
    );
    assert_eq!(redis.subscribers(ROOM_CHANNEL), 0);
}

// ----- a Redis that is slow for a moment is not a lost connection -----

/// Redis runs one command at a time: a slow one (a long script, a big `KEYS`, a fork on a
/// busy machine) holds every reply back for its duration, and a Redis on another host is a
/// network round trip away. Neither is a lost connection: the node must not report `Down`,
/// drop its subscriptions and reconnect (a gap) because a reply took more than a few
/// milliseconds.
#[test]
fn a_redis_busy_for_a_few_hundred_milliseconds_is_not_a_lost_connection() {
    let redis = Redis::start();
    let (a, b, mut a1, mut b1) = two_nodes_in_a_room(&redis);

    // A script that keeps Redis busy for some 300 ms (20 million Lua steps).
    let port = redis.port;
    let busy = thread::spawn(move || {
        let script = "local i = 0 while i < 20000000 do i = i + 1 end return i";
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect redis");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let started = Instant::now();
        s.write_all(format!("EVAL \"{script}\" 0\r\nQUIT\r\n").as_bytes())
            .expect("write");
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert!(reply.starts_with(":20000000"), "EVAL: {reply:?}");
        started.elapsed()
    });
    thread::sleep(Duration::from_millis(50));
    // Meanwhile, a new topic on A: its SUBSCRIBE waits for the script.
    a1.sub("other");
    let busy = busy.join().expect("the script's thread");
    eprintln!("Redis was busy for {busy:?}");
    wait_numsub(&redis, "wshub:other", 1);

    a1.publish(ROOM, "after");
    a1.expect("a1", &["after".to_owned()]);
    b1.expect("b1", &["after".to_owned()]);
    quiet_all(&mut [("a1", &mut a1), ("b1", &mut b1)]);
    let up = [(0, BrokerEvent::Up { gap: false })];
    assert_eq!(
        a.events(),
        up,
        "A's on_broker, after Redis was busy for {busy:?}"
    );
    assert_eq!(
        b.events(),
        up,
        "B's on_broker, after Redis was busy for {busy:?}"
    );
    assert_eq!(a.stats().reconnects, 0);
    close_all([a1, b1]);
    a.stop();
    b.stop();
}

/// A Redis on another host: every reply a round trip away. Through a relay that holds each
/// chunk 8 ms each way (a 16 ms round trip, as across a region), the node subscribes, stays
/// up through its pings, and carries messages both ways.
#[test]
fn a_redis_sixteen_milliseconds_away_keeps_its_subscriptions() {
    let redis = Redis::start();
    let relay = DelayRelay::start(redis.port, Duration::from_millis(8));
    let a = node(broker(&format!("redis://127.0.0.1:{}/", relay.port)));
    let b = node(broker(&redis.url()));
    wait_connected(&[&a, &b]);
    let mut a1 = a.client();
    let mut b1 = b.client();
    a1.sub(ROOM);
    b1.sub(ROOM);
    wait_numsub(&redis, ROOM_CHANNEL, 2);
    // Two pings' worth of time.
    thread::sleep(Duration::from_millis(2_500));
    let up = [(0, BrokerEvent::Up { gap: false })];
    assert_eq!(
        a.events(),
        up,
        "A's on_broker, 16 ms from Redis: {:?}",
        a.stats()
    );
    let sa = a.stats();
    assert!(
        sa.connected && sa.subscriptions == 1 && sa.reconnects == 0,
        "{sa:?}"
    );
    assert_eq!(redis.subscribers(ROOM_CHANNEL), 2);

    a1.publish(ROOM, "from A");
    b1.publish(ROOM, "from B");
    let (from_a, from_b) = ("from A".to_owned(), "from B".to_owned());
    a1.expect("a1", &[from_a.clone(), from_b.clone()]);
    b1.expect("b1", &[from_b, from_a]);
    quiet_all(&mut [("a1", &mut a1), ("b1", &mut b1)]);
    close_all([a1, b1]);
    a.stop();
    b.stop();
}

/// A TCP relay on loopback to `127.0.0.1:to` that holds every chunk `delay` before passing
/// it on, each way: a Redis some distance away. Stopped (its threads joined) when dropped.
struct DelayRelay {
    port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DelayRelay {
    fn start(to: u16, delay: Duration) -> DelayRelay {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the relay");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut pumps = Vec::new();
            // At most 64 connections (the nodes' reconnects included).
            while !stopped.load(Ordering::Relaxed) && pumps.len() < 128 {
                let down = match listener.accept() {
                    Ok((down, _)) => down,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    Err(e) => panic!("relay accept: {e}"),
                };
                down.set_nonblocking(false).expect("blocking");
                let Ok(up) = TcpStream::connect((Ipv4Addr::LOCALHOST, to)) else {
                    continue;
                };
                let pairs = [
                    (
                        down.try_clone().expect("clone"),
                        up.try_clone().expect("clone"),
                    ),
                    (up, down),
                ];
                for (mut from, mut into) in pairs {
                    let stopped = Arc::clone(&stopped);
                    pumps.push(thread::spawn(move || {
                        from.set_read_timeout(Some(Duration::from_millis(50))).ok();
                        let mut buf = vec![0u8; 64 * 1024];
                        while !stopped.load(Ordering::Relaxed) {
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    thread::sleep(delay);
                                    if into.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = into.shutdown(std::net::Shutdown::Both);
                    }));
                }
            }
            for pump in pumps {
                let _ = pump.join();
            }
        });
        DelayRelay {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
