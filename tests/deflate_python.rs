//! permessage-deflate (RFC 7692) round trips with a real client that compresses, Python's
//! `websockets` (venv made once, `common::python`; driven by `common::deflate::client`):
//! text and binary, below and above `min_size`, incompressible, fragmented, long runs with
//! context takeover on both sides, window sizes, clients that reset their context, a client
//! the handler refused; and the counters such a run leaves (`inflate_bytes_in` and `_out`,
//! `compressions`).

mod common;

use common::deflate::client::*;
use common::deflate::*;
use common::python::Running;
use common::*;
use serde_json::{Value, json};
use wshub::Compression;

/// Echo with the default client in shared mode: small messages come back plain, large
/// compressible ones compressed, incompressible ones plain (compressing would not make them
/// smaller); the server keeps no context (the repeated message compresses the same twice)
/// but inflates the client's context-taking stream.
#[test]
fn python_echo_shared_mode() {
    let server = start(config(Compression::shared()), clone_per_loop(App));
    let sends = echo_messages();
    let t = run_client(&plan(
        &server.url("/"),
        default_client(),
        echo_steps(&sends),
    ));
    assert_eq!(
        t.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_max_window_bits=15")
    );
    assert_eq!(
        t.agreed,
        vec![json!({
            "remote_no_context_takeover": true,
            "local_no_context_takeover": false,
            "remote_max_window_bits": 15,
            "local_max_window_bits": 15,
        })]
    );
    assert_echoed(&t, &sends);
    let mut compressed = 0;
    for (i, (got, send)) in t.received.iter().zip(&sends).enumerate() {
        let msg = send.message();
        assert_eq!(
            got.frames.len(),
            1,
            "message {i}: the server does not fragment"
        );
        let frame = got.frames[0];
        if msg.len() >= MIN_SIZE && send.compressible {
            compressed += 1;
            assert_eq!(
                (frame.opcode, frame.rsv1, frame.fin),
                (msg.opcode(), true, true),
                "message {i}"
            );
            assert!(frame.len < msg.len(), "message {i}: {frame:?}");
        } else {
            assert_eq!(frame, WireFrame::plain(&msg), "message {i}");
        }
    }
    // No context on the server's side: the same message, the same bytes.
    assert_eq!(t.received[REPEATED].frames, t.received[REPEATED + 1].frames);
    // The large compressible ones shrink a lot.
    assert!(
        t.received[BIG_TEXT].frames[0].len < 8 * 1024 / 4,
        "{:?}",
        t.received[BIG_TEXT]
    );
    // Shared mode compresses every echo of at least min_size once (each is a new frame),
    // and sends those that shrank compressed.
    let attempted = sends
        .iter()
        .filter(|s| s.message().len() >= MIN_SIZE)
        .count();
    assert!(wait_until(IO_TIMEOUT, || server
        .handle
        .stats()
        .open_connections
        == 0));
    let stats = server.handle.stats();
    assert_eq!(
        (stats.compressions, stats.compressed_out, stats.messages_out),
        (attempted as u64, compressed as u64, sends.len() as u64),
        "(compressions, compressed_out, messages_out) in {stats:?}"
    );
    server.stop().1.unwrap();
}

/// Echo with the default client in dedicated mode: every message of at least `min_size`
/// comes back compressed (even when that does not make it smaller: the compressor's
/// context must see it), and with context takeover a repeated message costs almost nothing.
#[test]
fn python_echo_dedicated_mode() {
    let server = start(config(Compression::dedicated(15)), clone_per_loop(App));
    let sends = echo_messages();
    let t = run_client(&plan(
        &server.url("/"),
        default_client(),
        echo_steps(&sends),
    ));
    assert_eq!(
        t.extensions.as_deref(),
        Some("permessage-deflate; client_max_window_bits=15")
    );
    assert_eq!(
        t.agreed,
        vec![json!({
            "remote_no_context_takeover": false,
            "local_no_context_takeover": false,
            "remote_max_window_bits": 15,
            "local_max_window_bits": 15,
        })]
    );
    assert_echoed(&t, &sends);
    for (i, (got, send)) in t.received.iter().zip(&sends).enumerate() {
        let msg = send.message();
        assert_eq!(
            got.frames.len(),
            1,
            "message {i}: the server does not fragment"
        );
        let frame = got.frames[0];
        if msg.len() >= MIN_SIZE {
            assert_eq!(
                (frame.opcode, frame.rsv1, frame.fin),
                (msg.opcode(), true, true),
                "message {i}"
            );
        } else {
            assert_eq!(frame, WireFrame::plain(&msg), "message {i}");
        }
    }
    // Context takeover: the second copy of 3000 random characters is a back-reference.
    let first = t.received[REPEATED].frames[0].len;
    let second = t.received[REPEATED + 1].frames[0].len;
    assert!(first > 2000 && second < 100, "{first} then {second}");
    // Each chat line after the first is mostly a reference to the one before.
    let run: Vec<usize> = t.received[RUN..RUN + 40]
        .iter()
        .map(|r| r.frames[0].len)
        .collect();
    assert!(run[1..].iter().all(|&len| len < 40), "{run:?}");
    server.stop().1.unwrap();
}

/// `min_size(0)`: in dedicated mode even empty messages go compressed, after other messages
/// too (a single `00` byte: an empty stored block whose `00 00 ff ff` is left off); shared
/// mode compresses them but sends the plain frames, which are smaller.
#[test]
fn python_empty_messages_compressed_with_min_size_zero() {
    for (compression, ext) in [
        (
            Compression::shared().min_size(0),
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=15",
        ),
        (
            Compression::dedicated(15).min_size(0),
            "permessage-deflate; client_max_window_bits=15",
        ),
    ] {
        let shared = ext.contains("server_no_context_takeover");
        let server = start(config(compression), clone_per_loop(App));
        let sends = vec![
            Send::whole(Msg::text(""), false),
            Send::whole(Msg::text("Hello"), true),
            Send::whole(Msg::text(""), false),
            Send::whole(Msg::Binary(Vec::new()), false),
            Send::whole(Msg::Binary(b"Hello".to_vec()), true),
            Send::whole(Msg::text("a"), false),
        ];
        let t = run_client(&plan(
            &server.url("/"),
            default_client(),
            echo_steps(&sends),
        ));
        assert_eq!(t.extensions.as_deref(), Some(ext));
        assert_echoed(&t, &sends);
        let got: Vec<WireFrame> = t.received.iter().map(|r| r.frames[0]).collect();
        let compressed = |opcode, len| WireFrame {
            opcode,
            rsv1: true,
            fin: true,
            len,
        };
        // Shared mode sends the plain frame when compressing would not make it smaller:
        // "Hello" compresses to 7 bytes, an empty message to 1.
        let want = if shared {
            vec![
                WireFrame::plain(&Msg::text("")),
                WireFrame::plain(&Msg::text("Hello")),
                WireFrame::plain(&Msg::text("")),
                WireFrame::plain(&Msg::Binary(Vec::new())),
                WireFrame::plain(&Msg::Binary(b"Hello".to_vec())),
                WireFrame::plain(&Msg::text("a")),
            ]
        } else {
            vec![
                compressed(1, 1),
                compressed(1, 7),
                compressed(1, 1),
                compressed(2, 1),
                // "Hello" again: a reference to the first.
                compressed(2, 5),
                compressed(1, 3),
            ]
        };
        assert_eq!(got, want, "{ext}");
        server.stop().1.unwrap();
    }
}

/// Windows: the server compresses within the window the client asked for
/// (`server_max_window_bits=10`: a client inflating with a 1 KiB window fails on any
/// reference further back), and inflates with the full window a client uses when that
/// client did not offer `client_max_window_bits`, whatever `client_window_bits` says.
#[test]
fn python_window_bits_are_honoured_both_ways() {
    // A message that repeats 1500 random characters 2000 characters later: only a window
    // of more than 3500 bytes can refer back to the first copy.
    let mut rng = Rng(0x5eed_0002);
    let block = rng.text(1500);
    let long_repeat = format!("{block}{}{block}", rng.text(2000));
    let sends: Vec<Send> = (0..3)
        .map(|_| Send::whole(Msg::Text(long_repeat.clone()), true))
        .collect();

    // Window 15 on both sides: the repeat is found.
    let wide = start(config(Compression::dedicated(15)), clone_per_loop(App));
    let t_wide = run_client(&plan(
        &wide.url("/"),
        json!({ "deflate": { "server_max_window_bits": 15, "client_max_window_bits": true } }),
        echo_steps(&sends[..1]),
    ));
    assert_eq!(
        t_wide.extensions.as_deref(),
        Some("permessage-deflate; server_max_window_bits=15; client_max_window_bits=15")
    );
    assert_echoed(&t_wide, &sends[..1]);

    // Window 10 asked by the client, and the server limits the client to 10.
    let narrow = start(
        config(Compression::dedicated(15).client_window_bits(10)),
        clone_per_loop(App),
    );
    let t_narrow = run_client(&plan(
        &narrow.url("/"),
        json!({ "deflate": { "server_max_window_bits": 10, "client_max_window_bits": true } }),
        echo_steps(&sends),
    ));
    assert_eq!(
        t_narrow.extensions.as_deref(),
        Some("permessage-deflate; server_max_window_bits=10; client_max_window_bits=10")
    );
    assert_eq!(
        t_narrow.agreed,
        vec![json!({
            "remote_no_context_takeover": false,
            "local_no_context_takeover": false,
            "remote_max_window_bits": 10,
            "local_max_window_bits": 10,
        })]
    );
    assert_echoed(&t_narrow, &sends);
    let wide_len = t_wide.received[0].frames[0].len;
    let narrow_lens: Vec<usize> = t_narrow.received.iter().map(|r| r.frames[0].len).collect();
    // Within 1 KiB neither the repeat nor the previous message can be referred to.
    assert!(
        narrow_lens.iter().all(|&len| len > wide_len + 800),
        "window 15: {wide_len}, window 10: {narrow_lens:?}"
    );
    // The client compressed within 10 bits too (what it sent never shrinks either).
    let sent: Vec<usize> = t_narrow.sent.iter().map(|f| f[0].len).collect();
    assert!(sent.iter().all(|&len| len > wide_len + 800), "{sent:?}");

    // A client that does not offer client_max_window_bits compresses with 32 KiB whatever
    // the server would like (client_window_bits(9)): the server must inflate with 15.
    let limited = start(
        config(Compression::dedicated(12).client_window_bits(9)),
        clone_per_loop(App),
    );
    let t = run_client(&plan(
        &limited.url("/"),
        json!({ "deflate": { "client_max_window_bits": null } }),
        echo_steps(&sends),
    ));
    assert_eq!(t.extensions.as_deref(), Some("permessage-deflate"));
    assert_echoed(&t, &sends);
    // Its second and third copies refer to the first, 5000 bytes back.
    let sent: Vec<usize> = t.sent.iter().map(|f| f[0].len).collect();
    assert!(sent[1] < 100 && sent[2] < 100, "{sent:?}");
    for server in [wide, narrow, limited] {
        server.stop().1.unwrap();
    }
}

/// Dedicated mode with a client that asks for `server_no_context_takeover`: that
/// connection's compressor forgets every message (the client's decoder starts afresh for
/// each, so a reference to an earlier message would fail there), and a repeated message
/// compresses the same each time.
#[test]
fn python_server_no_context_takeover_in_dedicated_mode() {
    let server = start(config(Compression::dedicated(15)), clone_per_loop(App));
    let mut rng = Rng(0x5eed_0004);
    let text = rng.text(3000);
    let sends: Vec<Send> = (0..4)
        .map(|_| Send::whole(Msg::Text(text.clone()), true))
        .collect();
    let t = run_client(&plan(
        &server.url("/"),
        json!({ "deflate": { "server_no_context_takeover": true } }),
        echo_steps(&sends),
    ));
    assert_eq!(
        t.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_max_window_bits=15")
    );
    assert_eq!(t.agreed[0]["remote_no_context_takeover"], json!(true));
    assert_echoed(&t, &sends);
    let lens: Vec<usize> = t.received.iter().map(|r| r.frames[0].len).collect();
    assert!(
        lens.iter().all(|&len| len == lens[0] && len > 2000),
        "{lens:?}"
    );
    // The client keeps its context: its copies after the first are references.
    let sent: Vec<usize> = t.sent.iter().map(|f| f[0].len).collect();
    assert!(
        sent[0] > 2000 && sent[1..].iter().all(|&len| len < 100),
        "{sent:?}"
    );
    server.stop().1.unwrap();
}

/// Clients that reset their context after every message share the loop's decompressor:
/// two of them at once, interleaved, each reading exactly its own echoes.
#[test]
fn python_clients_without_context_share_the_loop_decompressor() {
    let server = start(config(Compression::shared()), clone_per_loop(App));
    let options = json!({ "deflate": { "client_no_context_takeover": true } });
    let sends_for = |seed: u64| -> Vec<Send> {
        let mut rng = Rng(seed);
        let text = rng.text(2000);
        let mut sends = vec![
            Send::whole(Msg::Text(text.clone()), true),
            Send::whole(Msg::Text(text), true),
            Send::fragments(vec![
                Msg::Binary(compressible_binary(3000)),
                Msg::Binary(rng.bytes(500)),
            ]),
        ];
        sends.extend(
            (0..30).map(|i| Send::whole(Msg::Text(format!("{seed}: {}", chat_line(i))), true)),
        );
        sends
    };
    let (a, b) = (sends_for(1), sends_for(2));
    let mut clients: Vec<Running> = [&a, &b]
        .iter()
        .map(|sends| spawn_client(&plan(&server.url("/"), options.clone(), echo_steps(sends))))
        .collect();
    let tb = transcript(clients.pop().unwrap().finish(PY_DEADLINE).unwrap());
    let ta = transcript(clients.pop().unwrap().finish(PY_DEADLINE).unwrap());
    for (t, sends) in [(&ta, &a), (&tb, &b)] {
        assert_eq!(
            t.extensions.as_deref(),
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 client_max_window_bits=15"
            )
        );
        assert_echoed(t, sends);
        // The client really reset: the same message compressed the same twice.
        assert_eq!(t.sent[0], t.sent[1]);
    }
    server.stop().1.unwrap();
}

/// The handler refused the extension (`compress: false`): the Python client, which offered
/// it, gets no `Sec-WebSocket-Extensions` and plain frames, and sends plain frames.
#[test]
fn python_client_refused_by_the_handler_talks_plain() {
    let server = start(config(Compression::dedicated(15)), clone_per_loop(App));
    let sends = echo_messages();
    let t = run_client(&plan(
        &server.url("/plain"),
        default_client(),
        echo_steps(&sends),
    ));
    assert_eq!(t.extensions, None);
    assert_eq!(t.agreed, Vec::<Value>::new());
    assert_echoed(&t, &sends);
    // (Frames are only recorded by the extension; a compressed frame would have been a
    // protocol error in the client.)
    assert!(t.received.iter().all(|r| r.frames.is_empty()));
    let stats = server.handle.stats();
    assert_eq!(
        (
            stats.compressions,
            stats.compressed_out,
            stats.inflate_bytes_in
        ),
        (0, 0, 0),
        "{stats:?}"
    );
    server.stop().1.unwrap();
}

// ----- stats -----

/// `inflate_bytes_in` is exactly the compressed payload the client sent (all fragments of
/// every message), `inflate_bytes_out` what it inflated to; and in dedicated mode every
/// echo of at least `min_size` is a compression of its own.
#[test]
fn inflate_stats_match_what_the_client_sent() {
    let server = start(config(Compression::dedicated(15)), clone_per_loop(App));
    let sends = echo_messages();
    let t = run_client(&plan(
        &server.url("/"),
        default_client(),
        echo_steps(&sends),
    ));
    assert_echoed(&t, &sends);
    assert!(wait_until(IO_TIMEOUT, || server
        .handle
        .stats()
        .open_connections
        == 0));
    let stats = server.handle.stats();
    let sent_compressed: usize = t.sent.iter().flatten().map(|f| f.len).sum();
    let plain: usize = sends.iter().map(|s| s.message().len()).sum();
    let echoes_compressed: Vec<&WireFrame> = t
        .received
        .iter()
        .map(|r| &r.frames[0])
        .filter(|f| f.rsv1)
        .collect();
    let at_least_min = sends
        .iter()
        .filter(|s| s.message().len() >= MIN_SIZE)
        .count();
    let compress_in: usize = sends
        .iter()
        .map(|s| s.message().len())
        .filter(|&len| len >= MIN_SIZE)
        .sum();
    let compress_out: usize = echoes_compressed.iter().map(|f| f.len).sum();
    assert_eq!(
        (
            stats.messages_in,
            stats.bytes_in,
            stats.inflate_bytes_in,
            stats.inflate_bytes_out,
        ),
        (
            sends.len() as u64,
            plain as u64,
            sent_compressed as u64,
            plain as u64
        ),
        "(messages_in, bytes_in, inflate_bytes_in, inflate_bytes_out) in {stats:?}"
    );
    assert_eq!(
        (
            stats.messages_out,
            stats.compressions,
            stats.compressed_out,
            stats.compress_bytes_in,
            stats.compress_bytes_out,
        ),
        (
            sends.len() as u64,
            at_least_min as u64,
            echoes_compressed.len() as u64,
            compress_in as u64,
            compress_out as u64,
        ),
        "(messages_out, compressions, compressed_out, compress_bytes_in, compress_bytes_out) \
         in {stats:?}"
    );
    assert_eq!(echoes_compressed.len(), at_least_min);
    server.stop().1.unwrap();
}
