//! permessage-deflate (RFC 7692) with mixed peers on one shared-mode server: tungstenite
//! without the extension, Python's `websockets` with it (keeping its context or not) and
//! without it receive the same broadcasts and publishes, and the counters show each message
//! compressed once however many peers take it compressed.

mod common;

use common::deflate::client::*;
use common::deflate::*;
use common::python::Running;
use common::*;
use serde_json::json;
use wshub::Compression;

/// One shared-mode server, five peers at once: two tungstenite clients (no extension), two
/// Python clients with it (one keeping its context, one not) and one Python client without
/// it. Broadcasts and publishes of every kind reach each peer complete and in order, plain
/// or compressed as it negotiated; each message is compressed once however many peers take
/// it compressed.
#[test]
fn mixed_peers_receive_every_broadcast_and_publish_in_order() {
    let server = start(config(Compression::shared()), clone_per_loop(App));
    let mut rng = Rng(0x5eed_0003);

    // (message, to everyone (or only to the "news" topic), compressible)
    let big_via_ctx = Msg::Text(compressible_text(1500));
    let plan_msgs: Vec<(Msg, bool, bool)> = vec![
        (big_via_ctx.clone(), true, true),
        (Msg::text("small broadcast"), true, false),
        (Msg::Text(compressible_text(1024)), true, true),
        (Msg::Binary(compressible_binary(2048)), false, true),
        (Msg::Binary(rng.bytes(512)), true, false),
        (Msg::text("small news"), false, false),
        (Msg::Text(compressible_text(5 * 1024)), true, true),
        (Msg::text("z".repeat(MIN_SIZE - 1)), true, true),
        (Msg::text("z".repeat(MIN_SIZE)), true, true),
        (Msg::Text(compressible_text(700)), false, true),
    ];
    // (name, subscribed to news, deflate)
    let peers = [
        ("tungstenite news", true, false),
        ("tungstenite", false, false),
        ("python deflate news", true, true),
        ("python deflate, no context", false, true),
        ("python plain news", true, false),
    ];
    let expected = |news: bool| -> Vec<Msg> {
        plan_msgs
            .iter()
            .filter(|(_, all, _)| *all || news)
            .map(|(m, _, _)| m.clone())
            .collect()
    };

    let mut t_news = connect(&server.url("/?topic=news"));
    let mut t_all = connect(&server.url("/"));
    let python_options = [
        (peers[2], json!({ "compression": true }), "/?topic=news"),
        (
            peers[3],
            json!({ "deflate": { "client_no_context_takeover": true } }),
            "/",
        ),
        (peers[4], json!({ "compression": false }), "/?topic=news"),
    ];
    let mut pythons: Vec<Running> = python_options
        .iter()
        .map(|((_, news, _), options, path)| {
            let steps = vec![
                json!({ "recv": expected(*news).len() }),
                json!({ "close": true }),
            ];
            spawn_client(&plan(&server.url(path), options.clone(), steps))
        })
        .collect();
    for p in &mut pythons {
        wait_open(p);
    }
    assert!(wait_until(IO_TIMEOUT, || server
        .handle
        .stats()
        .open_connections
        == 5));

    // The first through a callback (`all:` from a tungstenite client), the rest through
    // the handle, in order.
    let Msg::Text(text) = &big_via_ctx else {
        unreachable!()
    };
    t_all
        .send(tungstenite::Message::text(format!("all:{text}")))
        .unwrap();
    let mut got_all = vec![next_data(&mut t_all)];
    for (msg, all, _) in &plan_msgs[1..] {
        if *all {
            server.handle.broadcast(&msg.frame()).unwrap();
        } else {
            server.handle.publish("news", &msg.frame()).unwrap();
        }
    }

    let to_msg = |m: tungstenite::Message| match m {
        tungstenite::Message::Text(t) => Msg::Text(t.to_string()),
        tungstenite::Message::Binary(b) => Msg::Binary(b.to_vec()),
        other => panic!("unexpected {other:?}"),
    };
    let want_news = expected(true);
    let want_all = expected(false);
    let got_news: Vec<Msg> = (0..want_news.len())
        .map(|_| to_msg(next_data(&mut t_news)))
        .collect();
    got_all.extend((1..want_all.len()).map(|_| next_data(&mut t_all)));
    let got_all: Vec<Msg> = got_all.into_iter().map(to_msg).collect();
    assert_eq!(got_news, want_news, "{}", peers[0].0);
    assert_eq!(got_all, want_all, "{}", peers[1].0);

    let mut transcripts = Vec::new();
    for (p, ((name, news, deflate), _, _)) in pythons.into_iter().zip(&python_options) {
        let t = transcript(p.finish(PY_DEADLINE).unwrap());
        let got: Vec<Msg> = t.received.iter().map(|r| r.msg.clone()).collect();
        assert_eq!(got, expected(*news), "{name}");
        assert_eq!(t.closed, Some((1000, String::new())), "{name}");
        assert_eq!(t.extensions.is_some(), *deflate, "{name}");
        transcripts.push(t);
    }
    // The deflate peers: compressed exactly when at least min_size and compressible, and
    // the same compressed bytes (lengths) for both.
    let deflate_msgs: Vec<&(Msg, bool, bool)> =
        plan_msgs.iter().filter(|(_, all, _)| *all).collect();
    let news_frames: Vec<WireFrame> = transcripts[0]
        .received
        .iter()
        .map(|r| r.frames[0])
        .collect();
    let all_frames: Vec<WireFrame> = transcripts[1]
        .received
        .iter()
        .map(|r| r.frames[0])
        .collect();
    for (i, ((msg, _, compressible), frame)) in deflate_msgs.iter().zip(&all_frames).enumerate() {
        if msg.len() >= MIN_SIZE && *compressible {
            assert!(
                frame.rsv1 && frame.len < msg.len(),
                "message {i}: {frame:?}"
            );
        } else {
            assert_eq!(*frame, WireFrame::plain(msg), "message {i}");
        }
    }
    let news_only: Vec<WireFrame> = news_frames
        .iter()
        .zip(plan_msgs.iter())
        .filter(|(_, (_, all, _))| *all)
        .map(|(f, _)| *f)
        .collect();
    assert_eq!(
        news_only, all_frames,
        "both deflate peers got the same bytes"
    );
    assert!(transcripts[2].received.iter().all(|r| r.frames.is_empty()));

    close_client(t_news);
    close_client(t_all);
    assert!(wait_until(IO_TIMEOUT, || server
        .handle
        .stats()
        .open_connections
        == 0));
    let stats = server.handle.stats();
    // Recipients per message: 5 for a broadcast, 3 for news.
    let recipients = |all: bool| if all { 5 } else { 3 };
    let deflate_recipients = |all: bool| if all { 2 } else { 1 };
    let at_least_min = |m: &Msg| m.len() >= MIN_SIZE;
    let compressions = plan_msgs.iter().filter(|(m, _, _)| at_least_min(m)).count();
    let compressed_out: usize = plan_msgs
        .iter()
        .filter(|(m, _, c)| at_least_min(m) && *c)
        .map(|(_, all, _)| deflate_recipients(*all))
        .sum();
    let messages_out: usize = plan_msgs.iter().map(|(_, all, _)| recipients(*all)).sum();
    let compress_bytes_in: usize = plan_msgs
        .iter()
        .filter(|(m, _, _)| at_least_min(m))
        .map(|(m, _, _)| m.len())
        .sum();
    let compress_bytes_out: usize = news_frames.iter().filter(|f| f.rsv1).map(|f| f.len).sum();
    assert_eq!(
        (stats.compressed_out, stats.messages_out),
        (compressed_out as u64, messages_out as u64),
        "(compressed_out, messages_out) in {stats:?}"
    );
    // Once per message on one loop; with several, once per loop that has deflate peers
    // (the two may have landed on different loops).
    let per_message = |total: u64, once: usize| {
        (once as u64..=(once * server.loops) as u64).contains(&total)
            && (server.loops > 1 || total == once as u64)
    };
    assert!(
        per_message(stats.compressions, compressions)
            && per_message(stats.compress_bytes_in, compress_bytes_in)
            && per_message(stats.compress_bytes_out, compress_bytes_out),
        "(compressions, compress_bytes_in, compress_bytes_out) = {:?} on {} loop(s): {stats:?}",
        (compressions, compress_bytes_in, compress_bytes_out),
        server.loops
    );
    assert_eq!((compressions, compressed_out), (7, 10), "the plan itself");
    server.stop().1.unwrap();
}
