//! Broadcast: to everyone (200 clients, every message exactly once, one global order), to
//! the members of a room (`broadcast_to`), and to everyone but the sender
//! (`broadcast_except`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use wshub::{Config, ConnId, Ctx, Delivery, Frame, Handler, Message, Reply, Request};

/// Per connection: its room, from `?room=`. Messages:
/// `room:<r>:<text>` goes to room r, `others:<text>` to all but the sender, anything else
/// to everyone. Records each command with its delivery.
#[derive(Clone)]
struct Rooms {
    deliveries: Deliveries,
}

/// Each broadcast command (`all`, `others`, `room:<r>`) with how it went.
type Deliveries = Arc<Mutex<Vec<(String, Delivery)>>>;

fn rooms() -> (Rooms, Deliveries) {
    let deliveries = Arc::new(Mutex::new(Vec::new()));
    (
        Rooms {
            deliveries: Arc::clone(&deliveries),
        },
        deliveries,
    )
}

impl Handler for Rooms {
    type Data = String;

    fn on_request(&mut self, _: &mut Ctx<'_, String>, req: &Request<'_>) -> Reply<String> {
        let room = req
            .query()
            .and_then(|q| q.strip_prefix("room="))
            .unwrap_or_default();
        Reply::accept(room.to_owned())
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, String>, id: ConnId, msg: Message) {
        let Message::Text(t) = msg else {
            panic!("unexpected binary message");
        };
        let (command, delivery) = if let Some(rest) = t.strip_prefix("room:") {
            let (room, text) = rest.split_once(':').expect("room:<r>:<text>");
            let frame = Frame::text(text);
            let d = ctx.broadcast_to(&frame, |_, r| r == room);
            (format!("room:{room}"), d)
        } else if let Some(text) = t.strip_prefix("others:") {
            (
                "others".to_owned(),
                ctx.broadcast_except(&Frame::text(text), id),
            )
        } else {
            ("all".to_owned(), ctx.broadcast(&Frame::text(&t)))
        };
        self.deliveries.lock().unwrap().push((command, delivery));
    }
}

fn queued(n: usize) -> Delivery {
    Delivery {
        queued: n,
        ..Delivery::default()
    }
}

#[test]
fn broadcast_reaches_200_clients_once_each_in_one_order() {
    const CLIENTS: usize = 200;
    const SENDERS: usize = 4;
    const PER_SENDER: usize = 10;
    const TOTAL: usize = SENDERS * PER_SENDER;
    let started = Instant::now();
    let (app, deliveries) = rooms();
    let server = start(Config::default(), clone_per_loop(app));
    let loops = server.loops;
    // A client has a 101 only once the server opened it: every broadcast after this
    // point must reach all of them.
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| connect(&server.url("/ws"))).collect();
    server.assert_every_loop_accepted();

    // Several senders at once, each on its own thread.
    std::thread::scope(|scope| {
        for (s, ws) in clients[..SENDERS].iter_mut().enumerate() {
            scope.spawn(move || {
                for k in 0..PER_SENDER {
                    ws.send(tungstenite::Message::text(format!("s{s}-{k}")))
                        .unwrap();
                }
            });
        }
    });

    // Every client gets all TOTAL messages (bounded: each read times out after IO_TIMEOUT).
    let sequences: Vec<Vec<String>> = clients
        .iter_mut()
        .map(|ws| (0..TOTAL).map(|_| next_text(ws)).collect())
        .collect();
    for (c, seq) in sequences.iter().enumerate() {
        for s in 0..SENDERS {
            let from_s: Vec<&str> = seq
                .iter()
                .filter(|m| m.starts_with(&format!("s{s}-")))
                .map(String::as_str)
                .collect();
            let want: Vec<String> = (0..PER_SENDER).map(|k| format!("s{s}-{k}")).collect();
            assert_eq!(from_s, want, "client {c}: messages of sender {s}");
        }
        // One loop serialises: all clients see the same interleaving. (Several loops each
        // serialise their own senders' broadcasts, and interleave other loops' as they come.)
        if loops == 1 {
            assert_eq!(
                seq, &sequences[0],
                "client {c}: order differs from client 0"
            );
        }
    }

    // Nothing more is on its way: a marker broadcast now is everyone's next message.
    server.handle.broadcast(&Frame::text("end")).unwrap();
    for (c, ws) in clients.iter_mut().enumerate() {
        assert_eq!(next_text(ws), "end", "client {c}: extra message");
    }
    drop(clients);

    let handle = server.handle.clone();
    server.stop().1.unwrap();
    let deliveries = deliveries.lock().unwrap();
    if loops == 1 {
        assert_eq!(
            *deliveries,
            vec![("all".to_owned(), queued(CLIENTS)); TOTAL]
        );
    } else {
        // A `Delivery` counts the broadcasting loop's connections, and the loops it handed
        // the frame to.
        assert_eq!(deliveries.len(), TOTAL);
        for (command, d) in deliveries.iter() {
            assert_eq!(command, "all");
            assert_eq!(
                (d.forwarded, d.dropped, d.closed),
                (loops - 1, 0, 0),
                "{d:?}"
            );
            assert!(d.queued <= CLIENTS, "{d:?}");
        }
    }
    let stats = handle.stats();
    assert_eq!(stats.handshakes_accepted, CLIENTS as u64);
    assert_eq!(stats.messages_in, TOTAL as u64);
    assert_eq!(stats.messages_out, ((TOTAL + 1) * CLIENTS) as u64);
    assert_eq!(stats.dropped_messages, 0);
    assert_eq!(stats.slow_consumer_closes, 0);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn broadcast_to_a_room_and_to_all_but_the_sender() {
    let (app, deliveries) = rooms();
    // One loop: `broadcast_to` reaches the connections of the loop that calls it.
    let server = start(Config::default(), app);
    let join = |room: &str| connect(&server.url(&format!("/ws?room={room}")));
    let mut a: Vec<Client> = (0..3).map(|_| join("a")).collect();
    let mut b: Vec<Client> = (0..2).map(|_| join("b")).collect();
    let mut lobby = connect(&server.url("/ws"));

    let send = |ws: &mut Client, text: &str| ws.send(tungstenite::Message::text(text)).unwrap();

    // Room messages; once the senders have theirs (they are members), the server has
    // handled both. A room nobody is in gets nothing.
    send(&mut a[0], "room:a:hello a");
    send(&mut b[0], "room:b:hello b");
    send(&mut lobby, "room:nobody:lost");
    assert_eq!(next_text(&mut a[0]), "hello a");
    assert_eq!(next_text(&mut b[0]), "hello b");
    send(&mut lobby, "sentinel 1");
    // Members got their room's message and then the sentinel; non-members (the lobby
    // client, the other room) got the sentinel first.
    for ws in &mut a[1..] {
        assert_eq!(next_text(ws), "hello a");
    }
    for ws in &mut b[1..] {
        assert_eq!(next_text(ws), "hello b");
    }
    for ws in a.iter_mut().chain(b.iter_mut()).chain([&mut lobby]) {
        assert_eq!(next_text(ws), "sentinel 1");
    }

    // All but the sender.
    send(&mut a[1], "others:not for a1");
    assert_eq!(next_text(&mut lobby), "not for a1");
    send(&mut lobby, "sentinel 2");
    for (i, ws) in a.iter_mut().chain(b.iter_mut()).enumerate() {
        if i != 1 {
            assert_eq!(next_text(ws), "not for a1", "client {i}");
        }
        assert_eq!(next_text(ws), "sentinel 2", "client {i}");
    }
    assert_eq!(next_text(&mut lobby), "sentinel 2");

    for ws in a.into_iter().chain(b).chain([lobby]) {
        close_client(ws);
    }
    drop(server);
    let mut got = deliveries.lock().unwrap().clone();
    // The first three came from different sockets: their order is not defined.
    got[..3].sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        got,
        vec![
            ("room:a".to_owned(), queued(3)),
            ("room:b".to_owned(), queued(2)),
            ("room:nobody".to_owned(), queued(0)),
            ("all".to_owned(), queued(6)),
            ("others".to_owned(), queued(5)),
            ("all".to_owned(), queued(6)),
        ]
    );
}
