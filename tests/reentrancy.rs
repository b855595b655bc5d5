//! Re-entrancy (issue #4): closing connections from inside `on_open`, `on_message` and
//! `on_close` of other connections and during a broadcast is safe (no panic, `on_close`
//! exactly once per opened connection, others unaffected); stale ids reach nobody.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message as WsMessage;
use wshub::{
    CloseInfo, Config, ConnId, Ctx, Delivery, Frame, Handler, Message, Reply, Request, SendError,
};

/// Everything the handler saw, shared with the test.
#[derive(Default)]
struct Log {
    ids: HashMap<String, ConnId>,
    opened: Vec<ConnId>,
    closes: Vec<(ConnId, String, CloseInfo)>,
    /// Results of the operations the callbacks tried, by label.
    results: Vec<(String, Result<(), SendError>)>,
    delivered: Delivery,
}

/// Connections are named by their path. See each callback for what names trigger.
#[derive(Default, Clone)]
struct Chaos {
    log: Arc<Mutex<Log>>,
}

impl Handler for Chaos {
    type Data = String;

    fn on_request(&mut self, _: &mut Ctx<'_, String>, req: &Request<'_>) -> Reply<String> {
        Reply::accept(req.path()[1..].to_owned())
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_, String>, id: ConnId) {
        let mut log = self.log.lock().unwrap();
        let name = ctx.data(id).unwrap().clone();
        log.ids.insert(name.clone(), id);
        log.opened.push(id);
        if name == "selfclose" {
            // Closes itself before its 101 has even been written.
            let r = ctx.close(id, 4001, "closed in on_open");
            log.results.push(("selfclose: close".into(), r));
            let r = ctx.send(id, &Frame::text("too late"));
            log.results.push(("selfclose: send".into(), r));
            let r = ctx.close(id, 4001, "again");
            log.results.push(("selfclose: close again".into(), r));
        } else if let Some(victim) = name.strip_prefix("kill-") {
            let victim = log.ids[victim];
            let r = ctx.close(victim, 4002, "closed by on_open of another");
            log.results.push((format!("{name}: close {victim}"), r));
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, String>, id: ConnId, msg: Message) {
        let Message::Text(text) = msg else { return };
        let mut log = self.log.lock().unwrap();
        if let Some(victim) = text.strip_prefix("close-and-broadcast ") {
            // Close another connection, then broadcast: the closing one is skipped.
            let victim_id = log.ids[victim];
            let r = ctx.close(victim_id, 4003, "closed by on_message of another");
            log.results.push((format!("close {victim}"), r));
            let d = ctx.broadcast(&Frame::text(&format!("after closing {victim}")));
            log.results.push((
                format!("broadcast after closing {victim}: {} queued", d.queued),
                Ok(()),
            ));
            log.delivered.queued += d.queued;
            let r = ctx.close(victim_id, 4003, "again");
            log.results.push((format!("close {victim} again"), r));
        } else if text.as_str() == "close-self" {
            let r = ctx.close(id, 4005, "closed itself in on_message");
            log.results.push(("close self".into(), r));
            let r = ctx.send(id, &Frame::text("too late"));
            log.results.push(("send to self after close".into(), r));
        } else if let Some(seq) = text.strip_prefix("tick ") {
            let seq: u64 = seq.parse().unwrap();
            let mut payload = vec![0u8; 8 * 1024];
            payload[..8].copy_from_slice(&seq.to_le_bytes());
            let d = ctx.broadcast(&Frame::binary(&payload));
            log.delivered.queued += d.queued;
            log.delivered.closed += d.closed;
            log.delivered.dropped += d.dropped;
        } else {
            ctx.send(id, &Frame::text(&text)).unwrap();
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, String>, id: ConnId, info: CloseInfo, name: String) {
        let mut log = self.log.lock().unwrap();
        log.closes.push((id, name.clone(), info));
        // The id is stale already.
        let r = ctx.send(id, &Frame::text("gone?"));
        log.results
            .push((format!("on_close {name}: send to itself"), r));
        let r = ctx.close(id, 1000, "");
        log.results
            .push((format!("on_close {name}: close itself"), r));
        if name == "a" {
            let c = log.ids["c"];
            let r = ctx.close(c, 4004, "closed by on_close of another");
            log.results.push(("on_close a: close c".into(), r));
            ctx.broadcast(&Frame::text("a left"));
        }
        if name.starts_with("slow") {
            // Notify the rest, and poke another slow one that is closing too.
            ctx.broadcast(&Frame::text(&format!("{name} left")));
            let other = if name == "slow1" { "slow3" } else { "slow1" };
            let other = log.ids[other];
            let r = ctx.close(other, 1000, "");
            log.results
                .push((format!("on_close {name}: close {other}"), r));
        }
    }
}

/// The data messages (and the close frame) a client gets, until the connection ends.
fn read_until_closed(ws: &mut Client) -> Vec<WsMessage> {
    let mut got = Vec::new();
    loop {
        match ws.read() {
            Ok(m @ (WsMessage::Text(_) | WsMessage::Binary(_) | WsMessage::Close(_))) => {
                got.push(m)
            }
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => return got,
            Err(e) => panic!("read: {e} (after {got:?})"),
        }
    }
}

fn close_frame(code: u16, reason: &str) -> WsMessage {
    WsMessage::Close(Some(tungstenite::protocol::CloseFrame {
        code: code.into(),
        reason: reason.into(),
    }))
}

fn result_of(log: &Log, label: &str) -> Result<(), SendError> {
    log.results
        .iter()
        .find(|(l, _)| l == label)
        .unwrap_or_else(|| panic!("no result {label:?} in {:?}", log.results))
        .1
}

#[test]
fn closing_other_connections_from_callbacks_is_safe() {
    let chaos = Chaos::default();
    let server = start(Config::default(), clone_per_loop(chaos.clone()));
    let mut clients: HashMap<&str, Client> = ["a", "b", "c", "d", "e"]
        .into_iter()
        .map(|name| (name, connect(&server.url(&format!("/{name}")))))
        .collect();
    assert!(wait_until(Duration::from_secs(5), || {
        chaos.log.lock().unwrap().opened.len() == 5
    }));

    // on_open closes its own connection.
    let mut selfclose = connect(&server.url("/selfclose"));
    assert_eq!(
        read_until_closed(&mut selfclose),
        [close_frame(4001, "closed in on_open")]
    );
    // on_open of "kill-b" closes b.
    let mut killer = connect(&server.url("/kill-b"));
    assert_eq!(
        read_until_closed(clients.get_mut("b").unwrap()),
        [close_frame(4002, "closed by on_open of another")]
    );
    // on_message of d closes a, then broadcasts; on_close of a closes c, then broadcasts.
    clients
        .get_mut("d")
        .unwrap()
        .send(WsMessage::text("close-and-broadcast a"))
        .unwrap();
    assert_eq!(
        read_until_closed(clients.get_mut("a").unwrap()),
        [close_frame(4003, "closed by on_message of another")]
    );
    assert_eq!(
        read_until_closed(clients.get_mut("c").unwrap()),
        [
            WsMessage::text("after closing a"),
            close_frame(4004, "closed by on_close of another")
        ]
    );
    for ws in [clients.get_mut("d").unwrap(), &mut killer] {
        assert_eq!(next_data(ws), WsMessage::text("after closing a"));
        assert_eq!(next_data(ws), WsMessage::text("a left"));
    }
    // e got both broadcasts; then its on_message closes its own connection.
    let e = clients.get_mut("e").unwrap();
    assert_eq!(next_data(e), WsMessage::text("after closing a"));
    assert_eq!(next_data(e), WsMessage::text("a left"));
    e.send(WsMessage::text("close-self")).unwrap();
    assert_eq!(
        read_until_closed(e),
        [close_frame(4005, "closed itself in on_message")]
    );

    // The two left are unaffected.
    for ws in [clients.get_mut("d").unwrap(), &mut killer] {
        ws.send(WsMessage::text("still here")).unwrap();
        assert_eq!(next_data(ws), WsMessage::text("still here"));
    }
    close_client(clients.remove("d").unwrap());
    close_client(killer);
    let handle = server.handle.clone();
    server.stop().1.unwrap();

    let log = chaos.log.lock().unwrap();
    assert_eq!(log.opened.len(), 7);
    for id in &log.opened {
        let n = log.closes.iter().filter(|(c, _, _)| c == id).count();
        assert_eq!(n, 1, "on_close ran {n} times for {id}: {:?}", log.closes);
    }
    let info = |name: &str| {
        log.closes
            .iter()
            .find(|(_, n, _)| n == name)
            .map(|(_, _, i)| i.clone())
            .unwrap()
    };
    let clean = |code: u16, reason: &str| CloseInfo {
        code,
        reason: reason.to_owned(),
        clean: true,
    };
    assert_eq!(info("selfclose"), clean(4001, "closed in on_open"));
    assert_eq!(info("b"), clean(4002, "closed by on_open of another"));
    assert_eq!(info("a"), clean(4003, "closed by on_message of another"));
    assert_eq!(info("c"), clean(4004, "closed by on_close of another"));
    assert_eq!(info("e"), clean(4005, "closed itself in on_message"));
    assert_eq!(result_of(&log, "selfclose: close"), Ok(()));
    assert_eq!(result_of(&log, "selfclose: send"), Err(SendError::Closing));
    assert_eq!(
        result_of(&log, "selfclose: close again"),
        Err(SendError::Closing)
    );
    assert_eq!(result_of(&log, "close a"), Ok(()));
    // A close for another loop's connection is handed over (that loop ignores the second).
    let a_is_local = handle.loop_of(log.ids["a"]) == handle.loop_of(log.ids["d"]);
    let again = if a_is_local {
        Err(SendError::Closing)
    } else {
        Ok(())
    };
    assert_eq!(result_of(&log, "close a again"), again);
    // Sent to c, d, e and kill-b: not to a (closing) nor b (closing or gone). A `Delivery`
    // counts only the broadcasting loop's connections.
    assert_eq!(result_of(&log, "on_close a: close c"), Ok(()));
    assert_eq!(result_of(&log, "close self"), Ok(()));
    assert_eq!(
        result_of(&log, "send to self after close"),
        Err(SendError::Closing)
    );
    let local = |name: &str| handle.loop_of(log.ids[name]) == handle.loop_of(log.ids["d"]);
    let recipients = ["c", "d", "e", "kill-b"].into_iter().filter(|n| local(n));
    assert_eq!(log.delivered.queued, recipients.count());
    for (label, r) in &log.results {
        if label.starts_with("on_close") && label.ends_with("itself") {
            assert!(r.is_err(), "{label}: {r:?}");
        }
    }
}

/// What a send and a close reported.
type Outcomes = (Result<(), SendError>, Result<(), SendError>);

/// Records what sending to and closing the id that `on_close` gets report.
#[derive(Default, Clone)]
struct Stale {
    results: Arc<Mutex<Vec<Outcomes>>>,
}

impl Handler for Stale {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
        Reply::accept(())
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId, _: CloseInfo, _: ()) {
        let sent = ctx.send(id, &Frame::text("gone?"));
        let closed = ctx.close(id, 1000, "");
        self.results.lock().unwrap().push((sent, closed));
    }
}

#[test]
fn the_id_on_close_gets_is_already_stale() {
    let stale = Stale::default();
    let server = start(Config::default(), clone_per_loop(stale.clone()));
    close_client(connect(&server.url("/")));
    assert!(wait_until(Duration::from_secs(5), || {
        !stale.results.lock().unwrap().is_empty()
    }));
    // Handler::on_close: "`id` is already stale: sending to it reports `Gone`."
    assert_eq!(
        *stale.results.lock().unwrap(),
        [(Err(SendError::Gone), Err(SendError::Gone))]
    );
    server.stop().1.unwrap();
}

#[test]
fn slow_consumers_closed_in_the_middle_of_broadcasts_are_safe() {
    const N: u64 = 400;
    let chaos = Chaos::default();
    let config = Config::default()
        .max_backpressure(64 * 1024)
        .close_timeout(Duration::from_millis(300));
    let server = start(config, clone_per_loop(chaos.clone()));
    let loops = server.loops;
    // Table order: reader, slow, reader, slow, reader, slow.
    let mut readers = Vec::new();
    let mut slow = Vec::new();
    for i in 0..6 {
        if i % 2 == 0 {
            readers.push(RawWs::connect(server.addr, &format!("/reader{i}")));
        } else {
            let s = connect_with_rcvbuf(server.addr, 4 * 1024);
            slow.push(RawWs::upgrade(s, &format!("/slow{i}")));
        }
    }
    let mut producer: TcpStream = readers[0].stream.try_clone().unwrap();
    let progress: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let threads: Vec<_> = readers
        .into_iter()
        .zip(&progress)
        .map(|(mut ws, p)| {
            let p = Arc::clone(p);
            thread::spawn(move || {
                let mut next = 0;
                let mut left = Vec::new();
                while next < N || left.len() < 3 {
                    let (first, payload) = ws
                        .expect_frame()
                        .unwrap_or_else(|| panic!("EOF after {next} frames"));
                    match first & 0x0f {
                        OP_BINARY => {
                            let seq = u64::from_le_bytes(payload[..8].try_into().unwrap());
                            assert_eq!(seq, next);
                            next += 1;
                            p.store(next, Ordering::Relaxed);
                        }
                        OP_TEXT => left.push(String::from_utf8(payload).unwrap()),
                        other => panic!("opcode {other:#x}: {:?}", parse_close(&payload)),
                    }
                }
                left.sort();
                (ws, left)
            })
        })
        .collect();
    // Ticks, at most 4 ahead of the slowest reader (4 frames fit in a reader's queue even
    // when they are all broadcast before a flush).
    let started = Instant::now();
    let mut sent = 0;
    while sent < N {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "stalled at {sent}"
        );
        let min = progress
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .min()
            .unwrap();
        if sent >= min + 4 {
            thread::sleep(Duration::from_micros(200));
            continue;
        }
        producer
            .write_all(&masked_frame(
                0x80 | OP_TEXT,
                format!("tick {sent}").as_bytes(),
            ))
            .unwrap();
        sent += 1;
    }
    let mut readers = Vec::new();
    for t in threads {
        let (ws, left) = t.join().unwrap();
        assert_eq!(left, ["slow1 left", "slow3 left", "slow5 left"]);
        readers.push(ws);
    }
    let handle = server.handle.clone();
    drop((readers, slow));
    server.stop().1.unwrap();

    let stats = handle.stats();
    assert_eq!(stats.slow_consumer_closes, 3, "{stats:?}");
    let log = chaos.log.lock().unwrap();
    if loops == 1 {
        // (A `Delivery` counts the broadcasting loop's connections only.)
        assert_eq!(log.delivered.closed, 3);
    }
    assert_eq!(log.opened.len(), 6);
    for id in &log.opened {
        let n = log.closes.iter().filter(|(c, _, _)| c == id).count();
        assert_eq!(n, 1, "on_close ran {n} times for {id}: {:?}", log.closes);
    }
    for (_, name, info) in &log.closes {
        if name.starts_with("slow") {
            assert_eq!(
                (info.code, info.reason.as_str(), info.clean),
                (1008, "slow consumer", false),
                "{name}"
            );
        }
    }
}

/// Remembers ids; "old" makes the server use the first connection's id.
#[derive(Default, Clone)]
struct Ids {
    opened: Arc<Mutex<Vec<ConnId>>>,
}

impl Handler for Ids {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
        Reply::accept(())
    }

    fn on_open(&mut self, _: &mut Ctx<'_, ()>, id: ConnId) {
        self.opened.lock().unwrap().push(id);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId, msg: Message) {
        let Message::Text(t) = msg else { return };
        let reply = if t.as_str() == "old" {
            let old = self.opened.lock().unwrap()[0];
            let sent = ctx.send(old, &Frame::text("for the old connection"));
            let closed = ctx.close(old, 1000, "");
            format!(
                "{sent:?} {closed:?} {:?} {:?}",
                ctx.data(old),
                ctx.buffered_amount(old)
            )
        } else {
            t.to_string()
        };
        ctx.send(id, &Frame::text(&reply)).unwrap();
    }
}

#[test]
fn a_stale_id_reaches_nobody_when_its_slot_is_reused() {
    let ids = Ids::default();
    // One loop: slots are reused within a loop, and another loop's stale id is handed over (`Ok`).
    let server = start(Config::default(), ids.clone());
    let first = connect(&server.url("/"));
    close_client(first);
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().tcp_connections == 0
    }));
    let mut second = connect(&server.url("/"));
    assert!(wait_until(Duration::from_secs(5), || {
        ids.opened.lock().unwrap().len() == 2
    }));
    let (old, new) = {
        let opened = ids.opened.lock().unwrap();
        (opened[0], opened[1])
    };
    assert_ne!(old, new);
    assert_eq!(
        old.as_u64() & 0xffff_ffff,
        new.as_u64() & 0xffff_ffff,
        "the slot was not reused ({old} then {new}): the test proves nothing"
    );

    // Through a handle: accepted by the channel, dropped by the server, counted.
    server
        .handle
        .send(old, &Frame::text("via a handle"))
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().dropped_messages == 1
    }));
    // From a callback: every operation on the old id says Gone.
    second.send(WsMessage::text("old")).unwrap();
    assert_eq!(next_text(&mut second), "Err(Gone) Err(Gone) None None");
    // Nothing meant for the old connection came before this echo.
    second.send(WsMessage::text("anything else?")).unwrap();
    assert_eq!(next_text(&mut second), "anything else?");
    close_client(second);
    server.stop().1.unwrap();
}
