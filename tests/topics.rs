//! Topics: subscribe / unsubscribe / publish semantics, stale ids, `Handle::publish`,
//! subscriptions ending before `on_close`, order across mixed sends with partial writes,
//! slow consumers in a topic under both policies, and a connection in 1,000 topics. The
//! model-based test is in `topics_model.rs`.

mod common;

use std::time::Duration;

use common::scripted::Scripted;
use common::*;
use tungstenite::Message;
use wshub::{Config, Frame, SlowConsumer};

fn client(server: &TestServer<Scripted>, n: u32) -> Client {
    connect(&server.url(&format!("/?n={n}")))
}

/// Sends one command (or several lines) and, for `?` commands, returns the answer.
fn ask(ctl: &mut Client, command: &str) -> String {
    ctl.send(Message::text(command)).expect("send command");
    let answer = next_text(ctl);
    answer
        .strip_prefix("= ")
        .unwrap_or_else(|| panic!("not an answer: {answer}"))
        .to_owned()
}

fn tell(ctl: &mut Client, command: &str) {
    ctl.send(Message::text(command)).expect("send command");
}

const NONE: &str = "Delivery { queued: 0, dropped: 0, closed: 0, forwarded: 0 }";

fn queued(n: usize) -> String {
    format!("Delivery {{ queued: {n}, dropped: 0, closed: 0, forwarded: 0 }}")
}

#[test]
fn subscribe_unsubscribe_publish_and_stale_ids() {
    let server = start(Config::default(), Scripted::default());
    let closed = server.handle.stats(); // (before anything: no topics)
    assert_eq!(closed.topics, 0);
    let mut ctl = client(&server, 0);
    let mut a = client(&server, 1);
    let mut b = client(&server, 2);
    let mut c = client(&server, 3);

    assert_eq!(ask(&mut ctl, "?sub 1 room"), "Ok(true)");
    assert_eq!(
        ask(&mut ctl, "?sub 1 room"),
        "Ok(false)",
        "double subscribe"
    );
    assert_eq!(ask(&mut ctl, "?unsub 1 nope"), "Ok(false)", "unknown topic");
    assert_eq!(ask(&mut ctl, "?pub empty x"), NONE, "nobody subscribed");
    assert_eq!(ask(&mut ctl, "?sub 2 room"), "Ok(true)");
    assert_eq!(ask(&mut ctl, "?sub 2 other"), "Ok(true)");
    assert_eq!(ask(&mut ctl, "?count room"), "2");
    assert_eq!(ask(&mut ctl, "?topics 2"), "other,room");
    assert_eq!(ask(&mut ctl, "?topics 3"), "");

    assert_eq!(ask(&mut ctl, "?pub room one"), queued(2));
    assert_eq!(ask(&mut ctl, "?pubx room 1 two"), queued(1));
    assert_eq!(ask(&mut ctl, "?unsub 1 room"), "Ok(true)");
    assert_eq!(ask(&mut ctl, "?pub room three"), queued(1));
    assert_eq!(ask(&mut ctl, "?send 1 four"), "Ok(())");
    assert_eq!(next_text(&mut a), "one");
    assert_eq!(next_text(&mut a), "four", "a left the room before three");
    assert_eq!(next_text(&mut b), "one");
    assert_eq!(next_text(&mut b), "two");
    assert_eq!(next_text(&mut b), "three");

    // From another thread.
    server
        .handle
        .publish("other", &Frame::text("via handle"))
        .unwrap();
    assert_eq!(next_text(&mut b), "via handle");

    // A closed connection: its subscriptions are gone before on_close, which publishes to
    // `watch`; its id is stale afterwards.
    assert_eq!(ask(&mut ctl, "?sub 3 watch"), "Ok(true)");
    assert_eq!(ask(&mut ctl, "?sub 3 room"), "Ok(true)");
    assert_eq!(ask(&mut ctl, "?sub 2 watch"), "Ok(true)");
    tell(&mut ctl, "close 3");
    match c.read().expect("close frame") {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert_eq!(next_text(&mut b), "closed 3");
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().open_connections == 3
    }));
    assert_eq!(ask(&mut ctl, "?count watch"), "1");
    assert_eq!(ask(&mut ctl, "?count room"), "1");
    assert_eq!(ask(&mut ctl, "?sub 3 room"), "Err(Gone)", "stale id");
    assert_eq!(ask(&mut ctl, "?unsub 3 room"), "Err(Gone)", "stale id");
    assert_eq!(ask(&mut ctl, "?topics 3"), "");
    // A new connection that may reuse the slot is not reached through the old id.
    let mut d = client(&server, 4);
    assert_eq!(ask(&mut ctl, "?send 3 stale"), "Err(Gone)");
    assert_eq!(ask(&mut ctl, "?sub 4 room"), "Ok(true)");
    assert_eq!(ask(&mut ctl, "?pub room five"), queued(2));
    assert_eq!(next_text(&mut d), "five");
    assert_eq!(next_text(&mut b), "five");
    // Topics: room, other, watch.
    assert!(wait_until(Duration::from_secs(5), || server
        .handle
        .stats()
        .topics
        == 3));

    let (app, result) = server.stop();
    result.unwrap();
    let closed = app[0].closed.lock().unwrap().clone();
    assert!(closed.iter().all(|&(_, left)| left == 0), "{closed:?}");
    assert_eq!(closed.len(), 5);
}

#[test]
fn a_connection_in_1000_topics() {
    let server = start(Config::default(), Scripted::default());
    let mut ctl = client(&server, 0);
    let mut a = client(&server, 1);
    let lines = |f: &dyn Fn(usize) -> String| (0..1000).map(f).collect::<Vec<_>>().join("\n");
    tell(&mut ctl, &lines(&|i| format!("sub 1 t{i}")));
    assert_eq!(ask(&mut ctl, "?topics 1").split(',').count(), 1000);
    // Stats are published at the end of the turn that answered.
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().topics == 1000
    }));
    tell(&mut ctl, &lines(&|i| format!("pub t{i} m{i}")));
    for i in 0..1000 {
        assert_eq!(next_text(&mut a), format!("m{i}"));
    }
    tell(
        &mut ctl,
        &lines(&|i| format!("unsub 1 t{}", 2 * i % 1000 + i / 500)),
    );
    assert_eq!(ask(&mut ctl, "?count t0"), "0");
    assert_eq!(ask(&mut ctl, "?topics 1"), "");
    tell(&mut ctl, &lines(&|i| format!("sub 1 t{i}")));
    tell(&mut ctl, &lines(&|i| format!("unsub 1 t{}", 2 * i)));
    tell(&mut ctl, &lines(&|i| format!("pub t{i} n{i}")));
    for i in (1..1000).step_by(2) {
        assert_eq!(next_text(&mut a), format!("n{i}"));
    }
    close_client(a);
    assert!(wait_until(Duration::from_secs(5), || {
        let stats = server.handle.stats();
        stats.open_connections == 1 && stats.topics == 0
    }));
    server.stop().1.unwrap();
}

/// One slow reader (small receive buffer, not reading) and one fast reader in a topic; the
/// fast one gets everything in order whatever happens to the slow one.
/// Returns what the slow one read (message numbers, then `end` or `close CODE`), the stats,
/// and how many messages were published.
fn slow_consumer_in_a_topic(policy: SlowConsumer) -> (Vec<String>, wshub::Stats, usize) {
    let config = Config::default().slow_consumer(policy);
    let server = start(config, Scripted::default());
    let mut ctl = client(&server, 0);
    let mut fast = client(&server, 1);
    let mut slow = RawWs::upgrade(connect_with_rcvbuf(server.addr, 4096), "/?n=2");
    tell(&mut ctl, "sub 1 t\nsub 2 t");
    assert_eq!(ask(&mut ctl, "?count t"), "2");
    let pad = "x".repeat(2000);
    // Until the policy has struck, and one batch more (bounded: the kernel buffers a few
    // MB at most for a peer that reads nothing).
    let mut batches = 0;
    let mut after = 0;
    for batch in 0..200 {
        batches += 1;
        let lines: Vec<String> = (0..50)
            .map(|i| format!("pub t {} {pad}", batch * 50 + i))
            .collect();
        tell(&mut ctl, &lines.join("\n"));
        // The fast reader keeps up, so only the slow one falls behind.
        for i in 0..50 {
            let text = next_text(&mut fast);
            assert_eq!(
                text.split(' ').next(),
                Some((batch * 50 + i).to_string().as_str())
            );
        }
        let stats = server.handle.stats();
        if stats.slow_consumer_closes + stats.dropped_messages > 0 {
            after += 1;
            if after == 2 {
                break;
            }
        }
    }
    // What the slow one got, in order, until its close or until nothing more comes; under
    // DropMessage it then reads "end", published once its queue has drained.
    let mut got = Vec::new();
    slow.stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut ended = false;
    loop {
        let frame = match slow.next_frame() {
            Ok(Some((first, payload))) => (first, payload.to_vec()),
            Ok(None) => break,
            Err(_) if !ended => {
                // Drained: say the last word, and wait for it.
                slow.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                tell(&mut ctl, "pub t end");
                assert_eq!(next_text(&mut fast), "end");
                ended = true;
                continue;
            }
            Err(e) => panic!("reading: {e}"),
        };
        match frame.0 & 0x0f {
            0x1 => {
                let text = String::from_utf8(frame.1).unwrap();
                let word = text.split(' ').next().unwrap().to_owned();
                got.push(word.clone());
                if word == "end" {
                    break;
                }
            }
            0x8 => {
                got.push(format!("close {}", parse_close(&frame.1).0));
                break;
            }
            _ => {}
        }
    }
    let stats = server.handle.stats();
    server.stop().1.unwrap();
    (got, stats, batches * 50)
}

#[test]
fn a_slow_consumer_in_a_topic_is_closed_and_the_others_get_everything() {
    let (got, stats, published) = slow_consumer_in_a_topic(SlowConsumer::Close);
    assert_eq!(stats.slow_consumer_closes, 1);
    assert_eq!(
        got.last().map(String::as_str),
        Some("close 1008"),
        "{got:?}"
    );
    let numbers: Vec<usize> = got[..got.len() - 1]
        .iter()
        .map(|w| w.parse().unwrap())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "a gap: {numbers:?}"
    );
    assert!(numbers.len() < published);
}

#[test]
fn a_slow_consumer_in_a_topic_skips_messages_in_order_under_drop() {
    let (got, stats, published) = slow_consumer_in_a_topic(SlowConsumer::DropMessage);
    assert_eq!(stats.slow_consumer_closes, 0);
    assert!(stats.dropped_messages > 0);
    assert_eq!(got.last().map(String::as_str), Some("end"), "{got:?}");
    let numbers: Vec<usize> = got[..got.len() - 1]
        .iter()
        .map(|w| w.parse().unwrap())
        .collect();
    assert!(numbers.windows(2).all(|w| w[1] > w[0]), "out of order");
    assert_eq!(
        numbers.len() as u64 + stats.dropped_messages,
        published as u64
    );
}

#[test]
fn order_holds_across_send_publish_and_broadcast_with_partial_writes() {
    let config = Config::default().max_backpressure(64 << 20);
    let server = start(config, Scripted::default());
    let mut ctl = client(&server, 0);
    // Does not read until the end, with a tiny receive buffer: most of what is queued for it
    // outlives the turn it was queued in, often cut in the middle of a frame.
    let mut slow = RawWs::upgrade(connect_with_rcvbuf(server.addr, 4096), "/?n=1");
    let mut fast = client(&server, 2);
    tell(&mut ctl, "sub 1 t\nsub 2 t");
    assert_eq!(ask(&mut ctl, "?count t"), "2");
    let mut expected_slow = Vec::new();
    let mut expected_fast = Vec::new();
    let mut seq = 0;
    for batch in 0..30 {
        let mut lines = Vec::new();
        for i in 0..20 {
            seq += 1;
            // Mostly small frames, some large enough to pass the watermark and some over
            // the size that is queued by reference rather than copied.
            let pad = match (batch + i) % 7 {
                0 => 20_000,
                3 => 3_000,
                _ => i * 10,
            };
            let text = format!("{seq}:{}", "p".repeat(pad));
            match seq % 3 {
                0 => {
                    lines.push(format!("send 1 {text}"));
                    expected_slow.push(text);
                }
                1 => {
                    lines.push(format!("pub t {text}"));
                    expected_slow.push(text.clone());
                    expected_fast.push(text);
                }
                _ => {
                    lines.push(format!("all {text}"));
                    expected_slow.push(text.clone());
                    expected_fast.push(text);
                }
            }
        }
        tell(&mut ctl, &lines.join("\n"));
    }
    tell(&mut ctl, "send 1 end\nsend 2 end");
    for want in expected_fast.iter().chain(Some(&"end".to_owned())) {
        assert_eq!(&next_text(&mut fast), want);
    }
    for want in expected_slow.iter().chain(Some(&"end".to_owned())) {
        let (first, payload) = slow.expect_frame().expect("frame");
        assert_eq!(first, 0x81);
        assert!(
            payload == want.as_bytes(),
            "expected {:.20}…, got {:.20}…",
            want,
            String::from_utf8_lossy(&payload)
        );
    }
    // The controller got the broadcasts too; nothing else is left queued anywhere.
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().queued_bytes == 0
    }));
    server.stop().1.unwrap();
}
