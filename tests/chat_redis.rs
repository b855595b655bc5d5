#![cfg(feature = "redis")]
//! The chat example as a cluster of nodes through a real Redis (`--redis`, issue #15):
//! several chats, each with its own state, on their own ports, sharing one `redis-server`
//! (a fresh one per test, `common::redis`), behave as one chat.
//!
//! Nodes run in-process (`chat::bind` with `Options::redis`), one `State` each, as separate
//! processes would; the node that must die without cleaning up is a real process (this test
//! binary run again as `node_process`, then killed with SIGKILL).
//!
//! Topics reach Redis asynchronously (the broker subscribes within ~10 ms), so before
//! anything crosses nodes a test waits until `PUBSUB NUMSUB` shows the subscribers it
//! needs (`subscribed`). "Nothing else arrived" is checked with a quiet period
//! (`C::recv_within`) or a fence message everyone must read next.

mod common;

#[path = "../examples/chat/chat.rs"]
#[allow(dead_code)]
mod chat;
mod chat_client;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chat::{Chat, Options, close};
use chat_client::*;
use common::redis::Redis;
use common::*;
use serde_json::{Value, json};
use wshub::Handle;

/// Presence TTL of the test nodes: a node refreshes and sweeps every 500 ms, so a dead
/// node's users leave within 2 s (1.5 s + one sweep).
const TTL: Duration = Duration::from_millis(1500);
/// The bound a test holds the cluster to for a dead node's users, with room for a busy
/// machine.
const LEAVE_BOUND: Duration = Duration::from_secs(5);
/// How long a client must see nothing after its expected messages.
const QUIET: Duration = Duration::from_millis(300);

/// One chat node, run on a thread of its own; shut down when dropped.
struct Node {
    addr: SocketAddr,
    handle: Handle,
    thread: Option<JoinHandle<std::io::Result<Vec<Chat>>>>,
}

impl Target for Node {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn one_seq_counter(&self) -> bool {
        false
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.handle.shutdown();
        if let Some(thread) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// As tests/chat.rs (no grace period, no pushed room counts: deterministic exchanges),
/// on the Redis at `url`, with a short presence TTL.
fn opts(url: &str, node: &str) -> Options {
    Options {
        offline_grace: Duration::ZERO,
        room_counts_interval: Duration::ZERO,
        redis: Some(url.to_owned()),
        node: Some(node.to_owned()),
        presence_ttl: TTL,
        // Tests send in bursts.
        burst: 1000.0,
        per_second: 1000.0,
        ..Options::default()
    }
}

fn node_with(opts: Options) -> Node {
    node_on_loops(opts, 1)
}

/// A node of `loops` loops (threads): a node is a `chat::bind` cluster of its own.
fn node_on_loops(opts: Options, loops: usize) -> Node {
    let clustered = opts.redis.is_some();
    let node = node_unchecked(opts, loops);
    // The broker is connected (and so the node's first topics can be subscribed).
    assert!(
        !clustered
            || wait_until(IO_TIMEOUT, || {
                node.stats()["node"]["broker"]["connected"] == true
            }),
        "node {} never connected to Redis",
        node.addr
    );
    node
}

/// A node, whether or not its Redis is there.
fn node_unchecked(opts: Options, loops: usize) -> Node {
    let cluster = chat::bind("127.0.0.1:0", chat::config(), opts, loops).expect("bind");
    let addr = cluster.local_addr().expect("addr");
    let handle = cluster.handle();
    Node {
        addr,
        handle,
        thread: Some(std::thread::spawn(move || cluster.run())),
    }
}

fn node(redis: &Redis, name: &str) -> Node {
    node_with(opts(&redis.url(), name))
}

impl Node {
    fn stats(&self) -> Value {
        let (status, _, body) = http(self, "GET", "/stats", "", "");
        assert_eq!(status, 200);
        serde_json::from_str(&body).expect("JSON stats")
    }
}

/// Waits until `channel` (a topic under the chat's prefix) has `n` subscribing nodes.
fn subscribed(redis: &Redis, topic: &str, n: usize) {
    let channel = format!("chat:{topic}");
    assert!(
        wait_until(IO_TIMEOUT, || redis.subscribers(&channel) == n),
        "{channel} never had {n} subscribers (has {})",
        redis.subscribers(&channel)
    );
}

/// A new user named `name` on `node`, in the lobby, once `lobby_nodes` nodes (this one
/// included) are subscribed to the lobby in Redis: from then on, what the lobby hears
/// reaches it from every node.
fn user(node: &impl Target, redis: &Redis, name: &str, lobby_nodes: usize) -> C {
    let c = C::new(node, name);
    subscribed(redis, "room:lobby", lobby_nodes);
    c
}

/// Everyone in `clients` reads `expected` next.
fn all_get(clients: &mut [&mut C], expected: &Value) {
    for c in clients.iter_mut() {
        assert_eq!(&c.recv(), expected, "{}", c.name);
    }
}

/// Nobody in `clients` gets anything more for `QUIET`.
fn all_quiet(clients: &mut [&mut C]) {
    for c in clients.iter_mut() {
        assert_eq!(c.recv_within(QUIET), None, "{} got more", c.name);
    }
}

#[test]
fn rooms_span_three_nodes_complete_and_in_order() {
    let redis = Redis::start();
    // Node b runs on two loops: its clients land on either.
    let b = node_on_loops(opts(&redis.url(), "b"), 2);
    let nodes = [node(&redis, "a"), b, node(&redis, "c")];
    let mut ann = user(&nodes[0], &redis, "ann", 1);
    let mut bob = user(&nodes[1], &redis, "bob", 2);
    // bob's arrival crossed to ann's node; he sees her as a member from his node.
    assert_eq!(ann.recv(), presence(&bob, "join", "lobby"));
    let mut cy = user(&nodes[2], &redis, "cy", 3);
    all_get(&mut [&mut ann, &mut bob], &presence(&cy, "join", "lobby"));

    // Members are the cluster's, from any node.
    let state = cy.join("lobby");
    assert_eq!(state["members"], json!([ann.me(), bob.me(), cy.me()]));

    // 30 messages from each of two nodes: everyone gets every one, in each sender's order
    // (not in `seq` order: each node stamps its own, see `one_seq_counter`).
    for i in 0..30 {
        ann.say("lobby", &format!("a{i}"));
        bob.say("lobby", &format!("b{i}"));
    }
    for c in [&mut ann, &mut bob, &mut cy] {
        let mut from_ann = Vec::new();
        let mut from_bob = Vec::new();
        for _ in 0..60 {
            let v = c.recv();
            assert_eq!(v["type"], "message", "{}: {v}", c.name);
            let text = v["text"].as_str().expect("text").to_owned();
            if v["from"]["name"] == "ann" {
                from_ann.push(text);
            } else {
                assert_eq!(v["from"]["name"], "bob", "{v}");
                from_bob.push(text);
            }
        }
        let expect = |p: &str| (0..30).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
        assert_eq!(from_ann, expect("a"), "{}", c.name);
        assert_eq!(from_bob, expect("b"), "{}", c.name);
    }
    // The room list is the cluster's.
    bob.join("rust");
    cy.send(json!({ "type": "list_rooms" }));
    assert_eq!(
        cy.recv(),
        json!({ "type": "rooms", "from": "server", "rooms": [
            { "name": "lobby", "members": 3 }, { "name": "rust", "members": 1 } ] })
    );
    let fence = message(&cy, "lobby", "fence");
    cy.say("lobby", "fence");
    all_get(&mut [&mut ann, &mut bob, &mut cy], &fence);
    all_quiet(&mut [&mut ann, &mut bob, &mut cy]);
}

#[test]
fn a_dm_reaches_the_users_tabs_on_two_nodes() {
    let redis = Redis::start();
    let b = node_on_loops(opts(&redis.url(), "b"), 2);
    let nodes = [node(&redis, "a"), b, node(&redis, "c")];
    let mut ann_a = user(&nodes[0], &redis, "ann", 1);
    // The same user on node b, by its token: same id, same name; her arrival is no news
    // (she is in the lobby already), so nobody hears a `presence`.
    let mut ann_b = ann_a.tab(&nodes[1]);
    assert_eq!(
        (ann_b.id.as_str(), ann_b.name.as_str()),
        (ann_a.id.as_str(), "ann")
    );
    ann_b.expect_joined("lobby");
    subscribed(&redis, &format!("user:{}", ann_a.id), 2);
    subscribed(&redis, "room:lobby", 2);
    let mut bob = user(&nodes[2], &redis, "bob", 3);
    all_get(
        &mut [&mut ann_a, &mut ann_b],
        &presence(&bob, "join", "lobby"),
    );

    // bob, on node c, to "ANN" by name: both her tabs and his own echo.
    bob.send(json!({ "type": "dm", "to": "ANN", "text": "psst" }));
    let dm = json!({ "type": "dm", "from": bob.me(), "to": ann_a.me(), "text": "psst" });
    all_get(&mut [&mut ann_a, &mut ann_b, &mut bob], &dm);
    // ann answers from node b by id: bob, and both of her tabs.
    ann_b.send(json!({ "type": "dm", "to": bob.id, "text": "hi bob" }));
    let dm = json!({ "type": "dm", "from": ann_a.me(), "to": bob.me(), "text": "hi bob" });
    all_get(&mut [&mut bob, &mut ann_a, &mut ann_b], &dm);
    // Nobody by that name on any node.
    bob.expect_error(
        json!({ "type": "dm", "to": "zed", "text": "?" }),
        "unknown_user",
    );
    all_quiet(&mut [&mut ann_a, &mut ann_b, &mut bob]);

    // Her tab on node a closes: she is still in the lobby from node b, so that is no news.
    let ann = ann_a.me();
    ann_a.close();
    all_quiet(&mut [&mut ann_b, &mut bob]);
    assert_eq!(bob.join("lobby")["members"], json!([ann, bob.me()]));
    // Her last tab closes: now she leaves, announced once.
    ann_b.close();
    assert_eq!(
        bob.recv(),
        json!({ "type": "presence", "from": ann, "event": "leave", "room": "lobby" })
    );
    assert_eq!(bob.recv_within(QUIET), None);
    // Gone from every node, though her name stays hers for up to `presence_ttl`: a DM to
    // her is refused at once, not sent to nobody. On a node that never had her: nobody by
    // that name or id; on node a, which had her, by id: she is offline. (Within `TTL` of
    // her leave: her name is still in Redis.)
    for to in [json!("ann"), ann["id"].clone()] {
        bob.expect_error(
            json!({ "type": "dm", "to": to, "text": "?" }),
            "unknown_user",
        );
    }
    let mut cleo = C::new(&nodes[0], "cleo");
    cleo.expect_error(
        json!({ "type": "dm", "to": ann["id"], "text": "?" }),
        "user_offline",
    );
}

#[test]
fn a_name_taken_on_one_node_is_refused_on_another_and_free_after_sign_out() {
    let redis = Redis::start();
    let nodes = [node(&redis, "a"), node(&redis, "b")];
    let mut ann_a = C::new(&nodes[0], "Ann");
    for taken in ["Ann", "ann", "ANN"] {
        let (err, code) = C::try_connect(&nodes[1], &format!("name={taken}"))
            .err()
            .expect(taken);
        // The error the single-node chat gives.
        assert_eq!(
            err,
            json!({ "type": "error", "from": "server", "code": "name_taken",
                    "message": format!("{taken:?} is taken: pick another name") })
        );
        assert_eq!(code, close::NAME_TAKEN);
    }
    // Her tab on node b is welcome.
    let mut ann_b = ann_a.tab(&nodes[1]);
    ann_b.expect_joined("lobby");

    // Signing out on node a frees the name at once in Redis (someone else takes it on
    // node a), and closes her tab on node b at node b's next refresh (a third of the TTL).
    ann_a.send(json!({ "type": "sign_out" }));
    assert_eq!(ann_a.expect_close(), close::SIGNED_OUT);
    let started = Instant::now();
    let mut again = C::new(&nodes[0], "ANN");
    assert_ne!(again.id, ann_a.id);
    // (Still in the lobby on node b until then, her tab may hear the new ANN arrive.)
    let code = loop {
        match next_data(&mut ann_b.ws) {
            tungstenite::Message::Close(Some(frame)) => break u16::from(frame.code),
            tungstenite::Message::Text(text) => {
                let v = strip(serde_json::from_str(&text).expect("JSON"));
                assert_eq!(v, presence(&again, "join", "lobby"));
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, close::SIGNED_OUT);
    assert!(
        started.elapsed() < TTL,
        "closed after {:?}",
        started.elapsed()
    );
    // She left the lobby when her last node let her go: announced once, by node b.
    assert_eq!(again.recv(), presence(&ann_a, "leave", "lobby"));
    // Her token is no longer valid on either node: with it, "Ann" is a new user, and the
    // name is the new ANN's.
    for node in &nodes {
        let (err, code) = C::try_connect(node, &format!("name=Ann&token={}", ann_a.token))
            .err()
            .expect("ANN is present");
        assert_eq!(
            (err["code"].as_str(), code),
            (Some("name_taken"), close::NAME_TAKEN)
        );
    }
    // The new ANN signs out in turn: the name is free on node b at once.
    again.send(json!({ "type": "sign_out" }));
    assert_eq!(again.expect_close(), close::SIGNED_OUT);
    let mut third = C::new(&nodes[1], "ann");
    assert_ne!(third.id, again.id);
    assert_eq!(third.recv_within(QUIET), None);
}

#[test]
fn history_comes_with_a_join_on_another_node() {
    let redis = Redis::start();
    let a = node_with(Options {
        history: 2,
        ..opts(&redis.url(), "a")
    });
    let b = node_with(Options {
        history: 2,
        ..opts(&redis.url(), "b")
    });
    let mut ann = user(&a, &redis, "ann", 1);
    ann.join("rust");
    for text in ["one", "two", "three"] {
        ann.say("rust", text);
        assert_eq!(ann.recv(), message(&ann, "rust", text));
    }
    let mut bob = user(&b, &redis, "bob", 2);
    assert_eq!(ann.recv(), presence(&bob, "join", "lobby"));
    subscribed(&redis, "room:rust", 1);
    // The writer thread appends shortly after the message went out.
    assert!(wait_until(IO_TIMEOUT, || redis
        .command("LLEN chat:history:rust")
        .contains(":2")));
    let state = bob.join("rust");
    assert_eq!(
        state,
        json!({ "type": "joined", "from": "server", "room": "rust",
                "members": [ann.me(), bob.me()],
                "history": [message(&ann, "rust", "two"), message(&ann, "rust", "three")] })
    );
    assert_eq!(ann.recv(), presence(&bob, "join", "rust"));
    subscribed(&redis, "room:rust", 2);
    // Leaving crosses too.
    bob.send(json!({ "type": "leave", "room": "rust" }));
    assert_eq!(bob.recv()["type"], "left");
    assert_eq!(ann.recv(), presence(&bob, "leave", "rust"));
    all_quiet(&mut [&mut ann, &mut bob]);
}

#[test]
fn a_push_on_any_node_reaches_users_on_every_node() {
    let redis = Redis::start();
    let nodes = [node(&redis, "a"), node(&redis, "b"), node(&redis, "c")];
    let mut ann = user(&nodes[0], &redis, "ann", 1);
    let mut bob = user(&nodes[1], &redis, "bob", 2);
    subscribed(&redis, "signed-in", 2);
    subscribed(&redis, &format!("user:{}", ann.id), 1);
    assert_eq!(ann.recv(), presence(&bob, "join", "lobby"));
    bob.join("ops");
    subscribed(&redis, "room:ops", 1);

    // To everyone, from node c, which has no users at all.
    let (status, answer) = push(&nodes[2], None, r#"{"all": true, "text": "hello all"}"#);
    assert_eq!((status, &answer["ok"]), (200, &json!(true)), "{answer}");
    let all = json!({ "type": "push", "from": "server", "scope": "all", "text": "hello all" });
    all_get(&mut [&mut ann, &mut bob], &all);
    // To a room that only node b has members of, from node a.
    let (status, answer) = push(&nodes[0], None, r#"{"room": "ops", "text": "deploy"}"#);
    assert_eq!(status, 200, "{answer}");
    let ops = json!({ "type": "push", "from": "server", "scope": "room", "room": "ops",
                      "text": "deploy" });
    assert_eq!(bob.recv(), ops);
    // To a user of node a by name, from node b.
    let (status, answer) = push(&nodes[1], None, r#"{"user": "ANN", "text": "for you"}"#);
    assert_eq!(status, 200, "{answer}");
    let you = json!({ "type": "push", "from": "server", "scope": "user", "to": ann.me(),
                      "text": "for you" });
    assert_eq!(ann.recv(), you);
    // Unknown everywhere.
    let (status, _) = push(&nodes[2], None, r#"{"room": "nowhere", "text": "?"}"#);
    assert_eq!(status, 404);
    all_quiet(&mut [&mut ann, &mut bob]);

    // /stats and /metrics show the node and its broker.
    let s = nodes[2].stats();
    assert_eq!(s["node"]["name"], "c");
    assert_eq!(s["node"]["broker"]["connected"], true);
    assert!(s["node"]["broker"]["published"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["node"]["state"]["failures"], 0, "{s}");
    let s = nodes[0].stats();
    assert!(s["node"]["broker"]["received"].as_u64() >= Some(2), "{s}");
    let (status, _, metrics) = http(&nodes[0], "GET", "/metrics", "", "");
    assert_eq!(status, 200);
    for line in ["chat_node_info{node=\"a\"} 1", "wshub_broker_connected 1"] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    assert!(
        metrics.contains("\nwshub_broker_received_total "),
        "{metrics}"
    );
}

// ----- a node that dies -----

/// A chat node in a process of its own: this test binary run again, as `node_process`;
/// killed (SIGKILL) when dropped, if not before.
struct NodeProcess {
    child: Child,
    addr: SocketAddr,
}

impl NodeProcess {
    fn start(redis: &Redis) -> NodeProcess {
        let exe = std::env::current_exe().expect("the test binary");
        let mut child = Command::new(exe)
            .args(["node_process", "--exact", "--ignored", "--nocapture"])
            .env("CHAT_TEST_NODE_REDIS", redis.url())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn a node process");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().expect("the node's address").expect("read");
            if let Some(addr) = line.strip_prefix("NODE ") {
                break addr.parse().expect("an address");
            }
        };
        NodeProcess { child, addr }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl Target for NodeProcess {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn one_seq_counter(&self) -> bool {
        false
    }
}

/// Not a test: the body of `NodeProcess` (does nothing when run as a test).
#[test]
#[ignore = "run by NodeProcess"]
fn node_process() {
    let Ok(url) = std::env::var("CHAT_TEST_NODE_REDIS") else {
        return;
    };
    let cluster = chat::bind("127.0.0.1:0", chat::config(), opts(&url, "doomed"), 1).expect("bind");
    println!("NODE {}", cluster.local_addr().expect("addr"));
    let _ = cluster.run();
}

#[test]
fn a_dead_nodes_users_leave_their_rooms_announced_once() {
    let redis = Redis::start();
    let nodes = [node(&redis, "a"), node(&redis, "b")];
    let mut ann = user(&nodes[0], &redis, "ann", 1);
    let mut bob = user(&nodes[1], &redis, "bob", 2);
    assert_eq!(ann.recv(), presence(&bob, "join", "lobby"));
    let mut doomed = NodeProcess::start(&redis);
    let zed = C::new(&doomed, "zed");
    all_get(&mut [&mut ann, &mut bob], &presence(&zed, "join", "lobby"));

    doomed.kill9();
    let killed = Instant::now();
    // Each of the other nodes hears of zed leaving exactly once (one sweep removed it).
    all_get(&mut [&mut ann, &mut bob], &presence(&zed, "leave", "lobby"));
    let took = killed.elapsed();
    assert!(took < LEAVE_BOUND, "the leave took {took:?}");
    assert!(
        took >= TTL / 2,
        "the leave came before zed could expire: {took:?}"
    );
    // Two more sweeps on each node: nothing more; the name is free.
    std::thread::sleep(TTL * 2 / 3);
    all_quiet(&mut [&mut ann, &mut bob]);
    let state = bob.join("lobby");
    assert_eq!(state["members"], json!([ann.me(), bob.me()]));
    let zed2 = C::new(&nodes[0], "zed");
    assert_ne!(zed2.id, zed.id);
    eprintln!("a dead node's user left {took:?} after the kill");
}

// ----- Redis hanging -----

#[test]
fn a_hung_redis_costs_a_loop_one_short_timeout_at_a_time() {
    let redis = Redis::start();
    let a = node(&redis, "a");
    let mut ann = user(&a, &redis, "ann", 1);
    let info = redis.command("INFO server");
    let pid: i32 = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("redis-server's pid");
    // Hung, not dead: connections stay open, nothing answers (SIGSTOP; SIGCONT below).
    // SAFETY: kill(2) on the redis-server this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Saying things never waits for Redis.
        let t = Instant::now();
        for i in 0..10 {
            ann.say("lobby", &format!("{i}"));
            assert_eq!(ann.recv()["type"], "message");
        }
        assert!(
            t.elapsed() < Duration::from_millis(150),
            "{:?}",
            t.elapsed()
        );
        // A join waits for Redis once (its 200 ms timeout), then falls back to the node's
        // own state; the next ones do not try for a second.
        let t = Instant::now();
        let state = ann.join("x");
        let first = t.elapsed();
        assert_eq!(state["members"], json!([ann.me()]));
        let t = Instant::now();
        for room in ["y", "z"] {
            ann.join(room);
        }
        let next = t.elapsed();
        assert!(
            first < Duration::from_millis(400) && next < Duration::from_millis(150),
            "first join {first:?}, the next two {next:?}"
        );
        assert!(a.stats()["node"]["state"]["failures"].as_u64() >= Some(1));
        eprintln!("a hung Redis: first join {first:?}, the next two {next:?}");
    }));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

// ----- Redis restarting -----

#[test]
fn a_node_started_before_redis_serves_alone_then_joins() {
    // A port where no Redis is, yet.
    let mut first = Redis::start();
    let port = first.port;
    first.kill9();
    let url = format!("redis://127.0.0.1:{port}/");
    let a = node_unchecked(opts(&url, "a"), 1);
    // Its users are welcome, and chat, on their own.
    let mut ann = C::new(&a, "ann");
    let hi = message(&ann, "lobby", "anyone?");
    ann.say("lobby", "anyone?");
    assert_eq!(ann.recv(), hi);

    let redis = Redis::start_on(port);
    let b = node(&redis, "b");
    assert!(wait_until(
        IO_TIMEOUT,
        || a.stats()["node"]["broker"]["connected"] == true
    ));
    // Node a put ann into Redis when it got through: her name is taken on node b, her
    // token is hers there, and she is in the lobby for node b's users.
    let (err, _) = C::try_connect(&b, "name=ANN").err().expect("taken");
    assert_eq!(err["code"], "name_taken");
    let mut ann_b = ann.tab(&b);
    assert_eq!(ann_b.id, ann.id);
    assert_eq!(ann_b.recv()["members"], json!([ann.me()]));
    subscribed(&redis, "room:lobby", 2);
    let mut bob = user(&b, &redis, "bob", 2);
    all_get(
        &mut [&mut ann, &mut ann_b],
        &presence(&bob, "join", "lobby"),
    );
    let hey = message(&bob, "lobby", "hey");
    bob.say("lobby", "hey");
    all_get(&mut [&mut bob, &mut ann, &mut ann_b], &hey);
    // ann's page gets no resync: nothing was missed, there was nobody to miss.
    all_quiet(&mut [&mut ann, &mut ann_b, &mut bob]);
}

#[test]
fn a_redis_restart_leaves_local_chat_going_and_pages_resync() {
    let mut redis = Redis::start();
    let port = redis.port;
    let nodes = [node(&redis, "a"), node(&redis, "b")];
    let mut ann = user(&nodes[0], &redis, "ann", 1);
    let mut cy = user(&nodes[0], &redis, "cy", 1);
    assert_eq!(ann.recv(), presence(&cy, "join", "lobby"));
    let mut bob = user(&nodes[1], &redis, "bob", 2);
    all_get(&mut [&mut ann, &mut cy], &presence(&bob, "join", "lobby"));
    let hi = message(&ann, "lobby", "before");
    ann.say("lobby", "before");
    all_get(&mut [&mut ann, &mut cy, &mut bob], &hi);

    redis.kill9();
    assert!(wait_until(
        IO_TIMEOUT,
        || nodes[0].stats()["node"]["redis_up"] == false
    ));
    // Node a's users go on talking among themselves, without waiting for Redis.
    let started = Instant::now();
    for i in 0..5 {
        let m = message(&ann, "lobby", &format!("during {i}"));
        ann.say("lobby", &format!("during {i}"));
        all_get(&mut [&mut ann, &mut cy], &m);
    }
    cy.join("local");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "chatting without Redis took {:?}",
        started.elapsed()
    );
    // ...and bob, on node b, hears none of it.
    assert_eq!(bob.recv_within(QUIET), None);

    let redis = Redis::start_on(port);
    // Back: every page is told, and gets its rooms again, with the cluster's members.
    for c in [&mut ann, &mut cy, &mut bob] {
        let v = c.recv();
        assert_eq!(v["type"], "resync", "{}: {v}", c.name);
        let rooms: Vec<String> = serde_json::from_value(v["rooms"].clone()).expect("rooms");
        for room in &rooms {
            let state = c.recv();
            assert_eq!(
                (&state["type"], &state["room"]),
                (&json!("joined"), &json!(room))
            );
            let me = c.me();
            assert!(
                state["members"].as_array().is_some_and(|m| m.contains(&me)),
                "{}: {state}",
                c.name
            );
        }
        let expected = if c.name == "cy" {
            vec!["lobby", "local"]
        } else {
            vec!["lobby"]
        };
        assert_eq!(rooms, expected, "{}", c.name);
    }
    // Across nodes again, once each broker has both its connections back: it says Up when
    // it has resubscribed, and its publishing connection follows, at once if its retry is
    // not waiting out a backoff; within a second if it is (a frame published meanwhile
    // does not reach the other nodes: see the chat's README).
    subscribed(&redis, "room:lobby", 2);
    for node in &nodes {
        assert!(wait_until(
            IO_TIMEOUT,
            || node.stats()["node"]["broker"]["connected"] == true
        ));
    }
    let after = message(&bob, "lobby", "after");
    bob.say("lobby", "after");
    all_get(&mut [&mut bob, &mut ann, &mut cy], &after);
    for node in &nodes {
        let s = &node.stats()["node"];
        assert_eq!(s["broker"]["reconnects"], 1, "{s}");
        assert_eq!(s["redis_up"], true, "{s}");
        // Node a tried nothing while Redis was down: it knew from the broker.
        assert!(s["state"]["failures"].as_u64() <= Some(1), "{s}");
    }
    all_quiet(&mut [&mut ann, &mut cy, &mut bob]);
}

// ----- what Redis costs -----

/// The median of `samples` (sorted in place).
fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Round trips as a client sees them, on a node with Redis and on one without: `join` of a
/// new room (its `joined`), `leave` (its `left`), and `say` (its echo). Run:
/// `cargo test --release --features redis --test chat_redis -- --ignored --nocapture costs`.
#[test]
#[ignore = "a measurement"]
fn costs() {
    let redis = Redis::start();
    let clustered = node(&redis, "a");
    let alone = node_with(Options {
        redis: None,
        node: None,
        ..opts(&redis.url(), "-")
    });
    for (what, target) in [("with Redis", &clustered), ("without", &alone)] {
        let mut c = C::new(target, "ann");
        let (mut joins, mut leaves, mut says) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..300 {
            let room = format!("r{i}");
            let t = Instant::now();
            c.join(&room);
            joins.push(t.elapsed());
            let t = Instant::now();
            c.say(&room, "hi");
            assert_eq!(c.recv()["type"], "message");
            says.push(t.elapsed());
            let t = Instant::now();
            c.send(json!({ "type": "leave", "room": room }));
            assert_eq!(c.recv()["type"], "left");
            leaves.push(t.elapsed());
        }
        eprintln!(
            "{what}: join {:?}, leave {:?}, say {:?} (medians of 300, as a client sees them)",
            median(&mut joins),
            median(&mut leaves),
            median(&mut says)
        );
        c.close();
    }

    // Loop 0's refresh and sweep with 500 users in 3 rooms each, on one node.
    let crowded = node_with(Options {
        max_users_per_addr: 1000,
        ..opts(&redis.url(), "crowd")
    });
    let mut users: Vec<C> = (0..500)
        .map(|i| C::try_connect(&crowded, &format!("name=u{i}")).expect("welcome"))
        .collect();
    for c in &mut users {
        for room in ["x", "y"] {
            c.send(json!({ "type": "join", "room": room }));
        }
    }
    std::thread::sleep(TTL);
    // Meanwhile a user of that node says things in a room of its own: the keeper's work
    // is on its own thread, so the loop answers as fast as ever.
    let mut probe = C::new(&crowded, "probe");
    probe.join("probe");
    let (mut ticks, mut says) = (Vec::new(), Vec::new());
    let until = Instant::now() + TTL * 5 / 3;
    while Instant::now() < until {
        let t = Instant::now();
        probe.say("probe", "tick?");
        while probe.recv()["room"] != "probe" {}
        says.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(2));
    }
    for _ in 0..5 {
        std::thread::sleep(TTL / 3);
        let tick = crowded.stats()["node"]["tick_us"]
            .as_u64()
            .expect("tick_us");
        ticks.push(Duration::from_micros(tick));
    }
    eprintln!(
        "keeper's refresh + sweep, 500 users in 3 rooms: {:?} (median of 5 ticks); \
         meanwhile say: median {:?}, max {:?} of {}",
        median(&mut ticks),
        median(&mut says),
        says.iter().max().copied().unwrap_or_default(),
        says.len()
    );
    drop(users);
}
