//! Model-based: random sequences of subscribe / unsubscribe / publish / publish-except /
//! send / broadcast / close, run against real sockets, and every client's whole received
//! stream (and every `Delivery` the server reported) compared with what a plain model
//! predicts. Some clients read nothing until the end through a tiny receive buffer, so
//! partial writes and turn leftovers are part of every run; commands arrive in batches, so
//! many land in one turn.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::scripted::Scripted;
use common::*;
use tungstenite::Message;
use wshub::Config;

/// Clients 1..=CLIENTS; 0 is the controller.
const CLIENTS: u32 = 8;
/// Of those, the first SLOW read through a tiny receive buffer.
const SLOW: u32 = 3;
const TOPICS: [&str; 4] = ["a", "b", "c", "d"];

/// xorshift64*: deterministic, so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the server should do, computed without it.
struct Model {
    subs: Vec<BTreeSet<&'static str>>,
    closed: Vec<bool>,
    /// Every client's expected stream (the controller's included: broadcasts and answers).
    streams: Vec<Vec<String>>,
}

impl Model {
    fn new() -> Model {
        let n = CLIENTS as usize + 1;
        Model {
            subs: vec![BTreeSet::new(); n],
            closed: vec![false; n],
            streams: vec![Vec::new(); n],
        }
    }

    fn open(&self, k: usize) -> bool {
        !self.closed[k]
    }

    /// Applies one command; returns the command line and the answer the controller expects.
    fn step(&mut self, rng: &mut Rng, seq: &mut u64) -> (String, String) {
        let k = 1 + rng.below(u64::from(CLIENTS)) as usize;
        let topic = TOPICS[rng.below(TOPICS.len() as u64) as usize];
        *seq += 1;
        // Mostly small messages; some past the drain watermark, some queued by reference.
        let pad = match rng.below(20) {
            0 => 20_000,
            1..=3 => 3_000,
            _ => rng.below(40) as usize,
        };
        let text = format!("m{seq}.{}", "x".repeat(pad));
        let queued =
            |n: usize| format!("Delivery {{ queued: {n}, dropped: 0, closed: 0, forwarded: 0 }}");
        match rng.below(100) {
            0..=24 => {
                let answer = if !self.open(k) {
                    "Err(Closing)".to_owned()
                } else {
                    format!("Ok({})", self.subs[k].insert(topic))
                };
                (format!("?sub {k} {topic}"), answer)
            }
            25..=34 => {
                // Allowed while closing too: a closing connection is subscribed until it
                // finishes.
                let answer = format!("Ok({})", self.subs[k].remove(topic));
                (format!("?unsub {k} {topic}"), answer)
            }
            35..=64 => {
                let mut n = 0;
                for c in 0..self.streams.len() {
                    if self.open(c) && self.subs[c].contains(topic) {
                        self.streams[c].push(text.clone());
                        n += 1;
                    }
                }
                (format!("?pub {topic} {text}"), queued(n))
            }
            65..=74 => {
                let mut n = 0;
                for c in 0..self.streams.len() {
                    if c != k && self.open(c) && self.subs[c].contains(topic) {
                        self.streams[c].push(text.clone());
                        n += 1;
                    }
                }
                (format!("?pubx {topic} {k} {text}"), queued(n))
            }
            75..=89 => {
                let answer = if self.open(k) {
                    self.streams[k].push(text.clone());
                    "Ok(())"
                } else {
                    "Err(Closing)"
                };
                (format!("?send {k} {text}"), answer.to_owned())
            }
            90..=96 => {
                let mut n = 0;
                for c in 0..self.streams.len() {
                    if self.open(c) {
                        self.streams[c].push(text.clone());
                        n += 1;
                    }
                }
                (format!("?all {text}"), queued(n))
            }
            _ => {
                // A closed client never answers our close frame (it reads nothing until the
                // end), so it stays Closing: later commands on it say so.
                let answer = if self.open(k) {
                    "Ok(())"
                } else {
                    "Err(Closing)"
                };
                self.closed[k] = true;
                (format!("?close {k}"), answer.to_owned())
            }
        }
    }
}

enum Peer {
    Ws(Box<Client>),
    Raw(RawWs),
}

impl Peer {
    /// The next text message, or `None` at a close frame.
    fn next(&mut self) -> Option<String> {
        match self {
            Peer::Ws(ws) => match next_data(ws) {
                Message::Text(t) => Some(t.to_string()),
                Message::Close(_) => None,
                other => panic!("unexpected {other:?}"),
            },
            Peer::Raw(raw) => loop {
                let (first, payload) = raw.expect_frame().expect("frame before EOF");
                match first & 0x0f {
                    0x1 => return Some(String::from_utf8(payload).expect("UTF-8")),
                    0x8 => return None,
                    _ => {}
                }
            },
        }
    }
}

fn run(seed: u64, commands: usize) {
    // Nothing may be dropped or closed for being slow: the model has no such policy. A closed
    // client stays Closing (it reads nothing until the end) however long the run takes.
    let config = Config::default()
        .max_backpressure(256 << 20)
        .close_timeout(Duration::from_secs(120));
    let server = start(config, Scripted::default());
    let mut ctl = connect(&server.url("/?n=0"));
    let mut peers: Vec<Peer> = (1..=CLIENTS)
        .map(|k| {
            let path = format!("/?n={k}");
            if k <= SLOW {
                Peer::Raw(RawWs::upgrade(
                    connect_with_rcvbuf(server.addr, 4096),
                    &path,
                ))
            } else {
                Peer::Ws(Box::new(connect(&server.url(&path))))
            }
        })
        .collect();
    // Every client is open (on_open ran) before the first command names it.
    assert!(wait_until(IO_TIMEOUT, || {
        server.handle.stats().open_connections == CLIENTS as usize + 1
    }));
    let mut rng = Rng(seed);
    let mut model = Model::new();
    let mut seq = 0;
    let mut answers = Vec::new();
    let mut sent = 0;
    while sent < commands {
        let batch = (1 + rng.below(12) as usize).min(commands - sent);
        let mut lines = Vec::new();
        for _ in 0..batch {
            let (line, answer) = model.step(&mut rng, &mut seq);
            // The answer follows whatever the command queued for the controller itself.
            if let Some(text) = line.strip_prefix("?all ") {
                let text = text.to_owned();
                let last = model.streams[0].pop();
                debug_assert_eq!(last.as_deref(), Some(text.as_str()));
                answers.push(text);
            }
            answers.push(format!("= {answer}"));
            lines.push(line);
        }
        sent += batch;
        ctl.send(Message::text(lines.join("\n"))).expect("send");
    }
    ctl.send(Message::text("?all end")).expect("send");
    for k in 1..=CLIENTS as usize {
        if model.open(k) {
            model.streams[k].push("end".to_owned());
        }
    }
    let open = (0..=CLIENTS as usize).filter(|&k| model.open(k)).count();
    answers.push("end".to_owned());
    answers.push(format!(
        "= Delivery {{ queued: {open}, dropped: 0, closed: 0, forwarded: 0 }}"
    ));

    for (i, want) in answers.iter().enumerate() {
        let got = next_text(&mut ctl);
        assert!(
            &got == want,
            "seed {seed}: controller message {i}: expected {:.60}, got {:.60}",
            want,
            got
        );
    }
    // Queues grew past the drain watermark, where the socket is asked to take bytes at
    // once: the slow readers' sockets refused, so leftovers outlived their turns.
    let peak = server.handle.stats().peak_queued_bytes;
    assert!(
        peak > 64 * 1024,
        "seed {seed}: no queue built up (peak {peak} B)"
    );
    for (index, peer) in peers.iter_mut().enumerate() {
        let k = index + 1;
        for (i, want) in model.streams[k].iter().enumerate() {
            let got = peer.next();
            assert!(
                got.as_ref() == Some(want),
                "seed {seed}: client {k} message {i}: expected {:.40}, got {:?}",
                want,
                got.map(|g| g.chars().take(40).collect::<String>())
            );
        }
        if model.closed[k] {
            assert_eq!(
                peer.next(),
                None,
                "seed {seed}: client {k}: close frame last"
            );
        }
    }
    // Gone without a close handshake: the server drops them at once, so stopping is quick.
    drop(peers);
    drop(ctl);
    assert!(wait_until(IO_TIMEOUT, || {
        server.handle.stats().tcp_connections == 0
    }));
    server.stop().1.unwrap();
}

#[test]
fn random_operations_match_the_model() {
    for seed in [1, 2, 3, 0x5eed_cafe] {
        run(seed, 1500);
    }
}
