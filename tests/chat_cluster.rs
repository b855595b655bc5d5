//! The chat example on two loops (`chat::bind`, a `wshub::Cluster`), in-process: the same
//! protocol as on one loop (`tests/chat.rs`) when the people talking are on different
//! loops. Real sockets and tungstenite clients; every read has a timeout (IO_TIMEOUT).
//!
//! Each client is put on the loop a test wants: a connection asks `GET /stats` first
//! (kept alive, it says which loop answered: the loop the connection is on), and is
//! upgraded to a WebSocket on the same connection if that is the loop wanted, else dropped
//! and tried again (`C::on_loop`).
//!
//! As in `tests/chat.rs`, "nothing else arrived" is checked with a fence: a message everyone
//! sees, which must be the very next thing each client reads.

mod common;

#[path = "../examples/chat/chat.rs"]
#[allow(dead_code)]
mod chat;
mod chat_client;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chat::{Chat, Options, close};
use chat_client::*;
use common::*;
use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use wshub::Handle;

/// The chat on a cluster, run on a thread of its own; shut down when dropped.
struct ChatCluster {
    addr: SocketAddr,
    handle: Handle,
    thread: Option<JoinHandle<std::io::Result<Vec<Chat>>>>,
}

impl Target for ChatCluster {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ChatCluster {
    fn drop(&mut self) {
        let _ = self.handle.shutdown();
        if let Some(thread) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() && !std::thread::panicking() {
                thread
                    .join()
                    .expect("no loop panicked")
                    .expect("the cluster ran");
            }
        }
    }
}

/// The chat on `loops` loops, on a free port of 127.0.0.1.
fn cluster_with(opts: Options, loops: usize) -> ChatCluster {
    let cluster = chat::bind("127.0.0.1:0", chat::config(), opts, loops).expect("bind");
    let addr = cluster.local_addr().expect("addr");
    let handle = cluster.handle();
    ChatCluster {
        addr,
        handle,
        thread: Some(std::thread::spawn(move || cluster.run())),
    }
}

/// As tests/chat.rs: no grace period, no pushed room counts, so that every exchange is
/// deterministic.
fn opts() -> Options {
    Options {
        offline_grace: Duration::ZERO,
        room_counts_interval: Duration::ZERO,
        ..Options::default()
    }
}

fn two_loops() -> ChatCluster {
    cluster_with(opts(), 2)
}

/// `GET /stats` on a kept-alive connection: the answer, which says which loop the
/// connection is on. Reads exactly the response, so the connection can go on.
fn stats_on(stream: &mut TcpStream, addr: SocketAddr) -> Value {
    write!(stream, "GET /stats HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("write");
    let (head, mut body) = read_head(stream);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .expect("Content-Length");
    let mut chunk = [0u8; 4096];
    while body.len() < length {
        let n = stream.read(&mut chunk).expect("read the body");
        assert!(n > 0, "EOF in the body");
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body.len(), length, "nothing after the response");
    serde_json::from_slice(&body).expect("JSON stats")
}

/// How many tries at most to land on a given loop: the kernel spreads connections by a hash
/// of their addresses, so each try is a coin toss with two loops (2^-64 to miss 64 times).
const PLACEMENT_TRIES: usize = 64;

impl C {
    /// Connects to `/ws?QUERY` on loop `at` (see the top of the file): a welcome (→ Ok)
    /// or an error (→ Err with the error and the close code).
    fn on_loop(server: &ChatCluster, at: usize, query: &str) -> Result<C, (Value, u16)> {
        for _ in 0..PLACEMENT_TRIES {
            let mut stream = raw_connect(server.addr);
            if stats_on(&mut stream, server.addr)["loop"] != at {
                continue;
            }
            let url = server.url(&format!("/ws?{query}"));
            let (ws, response) =
                tungstenite::client(url, MaybeTlsStream::Plain(stream)).expect("upgrade");
            assert_eq!(response.status(), 101);
            return C::welcomed(ws);
        }
        panic!("no connection landed on loop {at} in {PLACEMENT_TRIES} tries");
    }

    /// A new user named `name` on loop `at`, welcomed and put into the lobby.
    fn new_on(server: &ChatCluster, at: usize, name: &str) -> C {
        let mut c = C::on_loop(server, at, &format!("name={name}")).expect("welcome");
        c.expect_joined("lobby");
        c
    }

    /// Another tab of this user, on loop `at`.
    fn tab_on(&self, server: &ChatCluster, at: usize) -> C {
        let query = format!("name={}&token={}", self.name, self.token);
        C::on_loop(server, at, &query).expect("welcome")
    }

    /// The next message, but for `presence` events of this client's own user, which a tab
    /// on another loop than the one that handled its user's join or leave may get around
    /// its `joined` or `left` (its loop catches up a moment later; the page ignores them).
    fn recv_not_own_presence(&mut self) -> Value {
        loop {
            let v = self.recv();
            if v["type"] != "presence" || v["from"] != self.me() {
                return v;
            }
        }
    }
}

/// Everyone in `clients` reads `expected` next.
fn all_get(clients: &mut [&mut C], expected: &Value) {
    for c in clients.iter_mut() {
        assert_eq!(&c.recv(), expected, "{}", c.name);
    }
}

fn stats(server: &ChatCluster) -> Value {
    let (status, _, body) = http(server, "GET", "/stats", "", "");
    assert_eq!(status, 200);
    serde_json::from_str(&body).expect("JSON stats")
}

#[test]
fn clients_land_on_the_loop_asked_for() {
    let server = two_loops();
    let ann = C::new_on(&server, 0, "ann");
    let bob = C::new_on(&server, 1, "bob");
    assert!(wait_until(IO_TIMEOUT, || {
        stats(&server)["loops"] == json!([{ "connections": 1 }, { "connections": 1 }])
    }));
    drop((ann, bob));
}

#[test]
fn room_messages_and_history_cross_loops() {
    let server = two_loops();
    let mut ann = C::new_on(&server, 0, "ann");
    let mut bob = C::new_on(&server, 1, "bob");
    assert_eq!(ann.recv(), presence(&bob, "join", "lobby"));

    // A room message from each loop reaches the members on both.
    let hi = message(&ann, "lobby", "hi from loop 0");
    ann.say("lobby", "hi from loop 0");
    all_get(&mut [&mut ann, &mut bob], &hi);
    let hey = message(&bob, "lobby", "hey from loop 1");
    bob.say("lobby", "hey from loop 1");
    all_get(&mut [&mut ann, &mut bob], &hey);

    // bob makes #rust on loop 1 and talks there; ann, on loop 0, hears nothing of it...
    let state = bob.join("rust");
    assert_eq!(
        state,
        json!({ "type": "joined", "from": "server", "room": "rust",
                "members": [bob.me()], "history": [] })
    );
    bob.say("rust", "first");
    let first = message(&bob, "rust", "first");
    assert_eq!(bob.recv(), first);
    // ...until she joins: the history said on loop 1 comes with it, and bob hears her.
    let state = ann.join("rust");
    assert_eq!(
        state,
        json!({ "type": "joined", "from": "server", "room": "rust",
                "members": [ann.me(), bob.me()], "history": [first] })
    );
    assert_eq!(bob.recv(), presence(&ann, "join", "rust"));
    let both = message(&ann, "rust", "both of us");
    ann.say("rust", "both of us");
    all_get(&mut [&mut ann, &mut bob], &both);

    // A room list counts the members on both loops.
    ann.send(json!({ "type": "list_rooms" }));
    assert_eq!(
        ann.recv(),
        json!({ "type": "rooms", "from": "server", "rooms": [
            { "name": "lobby", "members": 2 }, { "name": "rust", "members": 2 } ] })
    );
    let fence = message(&bob, "lobby", "fence");
    bob.say("lobby", "fence");
    all_get(&mut [&mut ann, &mut bob], &fence);
}

#[test]
fn private_messages_reach_every_tab_on_both_loops() {
    let server = two_loops();
    let mut ann0 = C::new_on(&server, 0, "ann");
    let mut ann1 = ann0.tab_on(&server, 1);
    let mut bob = C::new_on(&server, 1, "bob");
    let bob_arrives = presence(&bob, "join", "lobby");
    all_get(&mut [&mut ann0, &mut ann1], &bob_arrives);

    // bob, on loop 1, to ann by name: both her tabs (one per loop) and his own.
    bob.send(json!({ "type": "dm", "to": "ann", "text": "psst" }));
    let dm = json!({ "type": "dm", "from": bob.me(), "to": ann0.me(), "text": "psst" });
    all_get(&mut [&mut ann0, &mut ann1, &mut bob], &dm);
    // ann's tab on loop 1 answers by id: bob, and both of her tabs.
    ann1.send(json!({ "type": "dm", "to": bob.id, "text": "hi bob" }));
    let dm = json!({ "type": "dm", "from": ann0.me(), "to": bob.me(), "text": "hi bob" });
    all_get(&mut [&mut bob, &mut ann0, &mut ann1], &dm);

    let fence = message(&bob, "lobby", "fence");
    bob.say("lobby", "fence");
    all_get(&mut [&mut ann0, &mut ann1, &mut bob], &fence);
}

#[test]
fn a_name_taken_on_one_loop_is_refused_on_the_other() {
    let server = two_loops();
    let mut ann0 = C::new_on(&server, 0, "Ann");
    for taken in ["Ann", "ann", "ANN"] {
        let (err, code) = C::on_loop(&server, 1, &format!("name={taken}"))
            .err()
            .expect(taken);
        assert_eq!(err["code"], "name_taken", "{taken}: {err}");
        assert_eq!(code, close::NAME_TAKEN);
    }
    // The same user, by its token, is welcome on loop 1: a tab.
    let mut ann1 = ann0.tab_on(&server, 1);
    assert_eq!(ann1.id, ann0.id);

    // Signing out on loop 0 closes the tab on loop 1 too, and frees the name at once, for
    // anyone on any loop.
    ann0.send(json!({ "type": "sign_out" }));
    assert_eq!(ann0.expect_close(), close::SIGNED_OUT);
    assert_eq!(ann1.expect_close(), close::SIGNED_OUT);
    let again = C::new_on(&server, 1, "ANN");
    assert_ne!(again.id, ann0.id);
}

#[test]
fn a_users_tabs_on_both_loops_share_its_rooms() {
    let server = two_loops();
    let mut ann0 = C::new_on(&server, 0, "ann");
    let mut ann1 = ann0.tab_on(&server, 1);
    let mut bob = C::new_on(&server, 0, "bob");
    let bob_arrives = presence(&bob, "join", "lobby");
    all_get(&mut [&mut ann0, &mut ann1], &bob_arrives);

    // ann joins #rust from loop 0: her tab on loop 1 is in it too (once loop 1 catches up,
    // within RESYNC_EVERY), with the room's state.
    let state = json!({ "type": "joined", "from": "server", "room": "rust",
                        "members": [ann0.me()], "history": [] });
    assert_eq!(ann0.join("rust"), state);
    assert_eq!(ann1.recv_not_own_presence(), state);
    let state = bob.join("rust");
    assert_eq!(state["members"], json!([ann0.me(), bob.me()]));
    let bob_in_rust = presence(&bob, "join", "rust");
    all_get(&mut [&mut ann0], &bob_in_rust);
    assert_eq!(ann1.recv_not_own_presence(), bob_in_rust);
    let said = message(&bob, "rust", "to both tabs");
    bob.say("rust", "to both tabs");
    all_get(&mut [&mut bob, &mut ann0, &mut ann1], &said);

    // ann leaves from loop 1: both tabs get `left`, bob her leave, and the room stops
    // reaching her on either loop.
    ann1.send(json!({ "type": "leave", "room": "rust" }));
    let left = json!({ "type": "left", "from": "server", "room": "rust" });
    assert_eq!(ann1.recv(), left);
    assert_eq!(ann0.recv_not_own_presence(), left);
    assert_eq!(bob.recv(), presence(&ann0, "leave", "rust"));
    bob.say("rust", "ann is gone");
    assert_eq!(bob.recv(), message(&bob, "rust", "ann is gone"));
    let fence = message(&bob, "lobby", "fence");
    bob.say("lobby", "fence");
    all_get(&mut [&mut ann0, &mut ann1, &mut bob], &fence);
}

#[test]
fn presence_and_the_grace_period_cross_loops() {
    let grace = Duration::from_millis(400);
    let server = cluster_with(
        Options {
            offline_grace: grace,
            ..opts()
        },
        2,
    );
    let mut ann = C::new_on(&server, 0, "ann");
    let mut bob = C::new_on(&server, 1, "bob");
    assert_eq!(ann.recv(), presence(&bob, "join", "lobby"));
    let mut cy = C::new_on(&server, 1, "cy");
    let cy_arrives = presence(&cy, "join", "lobby");
    all_get(&mut [&mut ann, &mut bob], &cy_arrives);
    cy.join("rust");
    ann.join("rust");
    assert_eq!(cy.recv(), presence(&ann, "join", "rust"));

    // cy reloads: its tab on loop 1 closes (a grace timer on loop 1) and it comes back on
    // loop 0 within the grace period. Nobody hears of it.
    let token = cy.token.clone();
    cy.close();
    let cy = C::on_loop(&server, 0, &format!("name=cy&token={token}")).expect("back");
    assert_eq!(cy.id, cy_arrives["from"]["id"]);
    // Closed again, on loop 0, after part of the grace period: the timer armed on loop 1
    // fires first and must not end the new grace period early.
    std::thread::sleep(grace / 2);
    let closed = Instant::now();
    cy.close();
    // cy goes offline once the grace period is over: the rooms it was in hear it leave, on
    // both loops.
    let leave_lobby = json!({ "type": "presence", "from": cy_arrives["from"], "event": "leave",
                              "room": "lobby" });
    let leave_rust = json!({ "type": "presence", "from": cy_arrives["from"], "event": "leave",
                             "room": "rust" });
    assert_eq!(ann.recv(), leave_lobby);
    let waited = closed.elapsed();
    assert!(
        waited >= grace - Duration::from_millis(20),
        "offline after {waited:?}, the grace period is {grace:?}"
    );
    assert_eq!(ann.recv(), leave_rust);
    assert_eq!(bob.recv(), leave_lobby);

    // bob (loop 1) closes: with no other tab, its grace period runs on loop 1 and ann
    // hears it leave.
    bob.close();
    let bob_leaves = ann.recv();
    assert_eq!(
        (&bob_leaves["type"], &bob_leaves["event"]),
        (&json!("presence"), &json!("leave"))
    );
    let fence = message(&ann, "lobby", "fence");
    ann.say("lobby", "fence");
    assert_eq!(ann.recv(), fence);
}

#[test]
fn pushes_reach_users_on_both_loops() {
    let server = two_loops();
    let mut ann0 = C::new_on(&server, 0, "ann");
    let mut ann1 = ann0.tab_on(&server, 1);
    let mut bob = C::new_on(&server, 1, "bob");
    let bob_arrives = presence(&bob, "join", "lobby");
    all_get(&mut [&mut ann0, &mut ann1], &bob_arrives);

    // Whichever loop answers the push, `delivered` counts the connections on both.
    let (status, answer) = push(&server, None, r#"{"room":"lobby","text":"to the room"}"#);
    assert_eq!(
        (status, answer["delivered"].as_u64()),
        (200, Some(3)),
        "{answer}"
    );
    let pushed = json!({ "type": "push", "from": "server", "scope": "room", "room": "lobby",
                         "text": "to the room" });
    all_get(&mut [&mut ann0, &mut ann1, &mut bob], &pushed);

    let (status, answer) = push(&server, None, r#"{"all":true,"text":"to everyone"}"#);
    assert_eq!(
        (status, answer["delivered"].as_u64()),
        (200, Some(3)),
        "{answer}"
    );
    let pushed = json!({ "type": "push", "from": "server", "scope": "all", "text": "to everyone" });
    all_get(&mut [&mut ann0, &mut ann1, &mut bob], &pushed);

    let (status, answer) = push(&server, None, r#"{"user":"ann","text":"to ann"}"#);
    assert_eq!(
        (status, answer["delivered"].as_u64()),
        (200, Some(2)),
        "{answer}"
    );
    let pushed = json!({ "type": "push", "from": "server", "scope": "user", "to": ann0.me(),
                         "text": "to ann" });
    all_get(&mut [&mut ann0, &mut ann1], &pushed);

    // The room push is in the history, for bob's next join from loop 1.
    let state = bob.join("lobby");
    let history: Vec<&str> = (state["history"].as_array().unwrap().iter())
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["to the room"]);
    let fence = message(&bob, "lobby", "fence");
    bob.say("lobby", "fence");
    all_get(&mut [&mut ann0, &mut ann1, &mut bob], &fence);
}

#[test]
fn stats_and_metrics_cover_both_loops() {
    let server = two_loops();
    let mut ann = C::new_on(&server, 0, "ann");
    let mut bob = C::new_on(&server, 1, "bob");
    assert_eq!(ann.recv(), presence(&bob, "join", "lobby"));
    ann.say("lobby", "one");
    ann.recv();
    bob.recv();
    bob.send(json!({ "type": "dm", "to": "ann", "text": "two" }));
    ann.recv();
    bob.recv();
    bob.expect_error(json!({ "type": "nope" }), "unknown_type");

    // The other loop's counters are as of its last turn: wait for it to have ended.
    let mut s = Value::Null;
    assert!(wait_until(IO_TIMEOUT, || {
        s = stats(&server);
        s["messages_in"] == 3
    }));
    assert_eq!(s["connections"], 2);
    assert_eq!(
        s["loops"],
        json!([{ "connections": 1 }, { "connections": 1 }])
    );
    assert_eq!(s["handshakes_accepted"], 2);
    // (welcome, joined) ×2, presence, message ×2, dm ×2, error
    assert_eq!(s["messages_out"], 10);
    assert_eq!(s["dropped_messages"], 0);
    // Each loop counts the topics it has subscribers to: signed-in, room:lobby and the
    // user's own, on each.
    assert_eq!(s["topics"], 6);
    assert_eq!(
        s["chat"],
        json!({ "users_online": 2, "users_present": 2, "users_known": 2, "users_created": 2,
                "rooms": 1, "room_messages": 1, "direct_messages": 1, "pushes": 0,
                "errors": 1, "abuse_closes": 0, "sign_outs": 0, "seq": 9 })
    );

    // /metrics: the same sums, and the connections per loop.
    let (status, _, body) = http(&server, "GET", "/metrics", "", "");
    assert_eq!(status, 200);
    let lines: Vec<&str> = body.lines().collect();
    for sample in [
        "wshub_open_connections 2",
        "wshub_loop_open_connections{loop=\"0\"} 1",
        "wshub_loop_open_connections{loop=\"1\"} 1",
        "wshub_messages_in_total 3",
        "wshub_messages_out_total 10",
        "chat_users_online 2",
        "chat_direct_messages_total 1",
    ] {
        assert!(lines.contains(&sample), "no {sample:?} in\n{body}");
    }
}

// ----- how fast -----

/// Relays `total` room messages through the chat: `senders` clients say them in the lobby
/// (each `total / senders`, as fast as the socket takes them), and every client (senders
/// and `receivers`) reads until it has all of them. Clients are spread evenly over the
/// loops. Returns the time from the first send to the last client done.
/// What a room message has (and `welcome`, `joined` and `presence` have not, with an empty
/// history).
const MESSAGE: &[u8] = br#""type":"message""#;

fn relay(
    server: &ChatCluster,
    loops: usize,
    senders: usize,
    receivers: usize,
    total: usize,
) -> Duration {
    let per_sender = total / senders;
    let clients: Vec<(bool, TcpStream, Vec<u8>)> = (0..senders + receivers)
        .map(|i| {
            // Placed like C::on_loop, then upgraded by hand: these read raw frames.
            let at = i % loops;
            let mut stream = loop {
                let mut s = raw_connect(server.addr);
                if stats_on(&mut s, server.addr)["loop"] == at {
                    break s;
                }
            };
            stream
                .write_all(upgrade_request(&format!("/ws?name=c{i}"), "").as_bytes())
                .expect("upgrade");
            let (head, rest) = read_head(&mut stream);
            assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
            (i < senders, stream, rest)
        })
        .collect();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(clients.len() + 1));
    let threads: Vec<_> = (clients.into_iter().enumerate())
        .map(|(i, (sends, mut stream, mut pending))| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let writer = sends.then(|| stream.try_clone().expect("clone"));
                barrier.wait();
                let start = Instant::now();
                let sender = writer.map(|mut w| {
                    std::thread::spawn(move || {
                        let mut batch = Vec::new();
                        for n in 0..per_sender {
                            let say = format!(
                                r#"{{"type":"say","room":"lobby","text":"message {n} from c{i}"}}"#
                            );
                            batch.extend_from_slice(&masked_frame(0x81, say.as_bytes()));
                            if batch.len() >= 16 * 1024 {
                                w.write_all(&batch).expect("send");
                                batch.clear();
                            }
                        }
                        w.write_all(&batch).expect("send");
                    })
                });
                let mut seen = 0;
                while seen < per_sender * senders {
                    let (_, payload) = read_frame(&mut stream, &mut pending);
                    if payload.windows(MESSAGE.len()).any(|w| w == MESSAGE) {
                        seen += 1;
                    }
                }
                if let Some(sender) = sender {
                    sender.join().expect("sender");
                }
                start.elapsed()
            })
        })
        .collect();
    barrier.wait();
    let times: Vec<_> = threads.into_iter().map(|t| t.join()).collect();
    assert!(
        times.iter().all(Result::is_ok),
        "a client missed messages: {}",
        stats(server)
    );
    times.into_iter().flatten().max().unwrap_or_default()
}

/// Not a test: the figure behind the chat's one lock (README.md, "Threads"). Run with
/// `cargo test --release --test chat_cluster -- --ignored --nocapture relay`.
#[test]
#[ignore]
fn relay_10000_room_messages_on_1_and_2_loops() {
    for loops in [1, 2] {
        let mut times = Vec::new();
        for _ in 0..9 {
            let opts = Options {
                burst: 1e9,
                per_second: 1e9,
                ..opts()
            };
            let cluster = chat::bind(
                "127.0.0.1:0",
                chat::config().max_backpressure(64 << 20),
                opts,
                loops,
            )
            .expect("bind");
            let server = ChatCluster {
                addr: cluster.local_addr().expect("addr"),
                handle: cluster.handle(),
                thread: None,
            };
            let run = std::thread::spawn(move || cluster.run());
            times.push(relay(&server, loops, 4, 4, 10_000));
            let s = stats(&server);
            assert_eq!(s["inbox_overflows"], 0, "{s}");
            assert_eq!(s["slow_consumer_closes"], 0);
            drop(server);
            run.join().expect("run").expect("ran");
        }
        times.sort();
        println!(
            "{loops} loop(s): 10,000 room messages to 8 members: median {:?} (runs: {times:?})",
            times[times.len() / 2]
        );
    }
}
