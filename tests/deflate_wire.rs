//! What a permessage-deflate (RFC 7692) peer can get wrong, on raw sockets: a compression
//! bomb (1009, others unharmed), data that does not inflate (1007), RSV1 where it is not
//! allowed (1002); and the byte sequences of RFC 7692 §7.2.3 and others captured from real
//! peers, including a BFINAL=1 message followed by another (a regression). Compressed
//! payloads come from CPython's zlib (`tests/deflate/raw_deflate.py`); the server answers
//! on `/sum` with summaries, so nothing here needs to inflate.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::deflate::*;
use common::python::python;
use common::*;
use serde_json::{Value, json};
use wshub::{Compression, Config, Frame};

// ----- raw clients and the frames they send -----

/// Raw DEFLATE made by CPython's zlib (`raw_deflate.py`): one compressor with context
/// across `messages`, each ended by a sync flush with its tail left off.
fn raw_deflate(messages: Value) -> Vec<Vec<u8>> {
    let spec = serde_json::to_vec(&json!({ "wbits": 15, "level": 9, "messages": messages }))
        .expect("spec");
    let output = common::python::run(python().script("raw_deflate.py"), &spec, PY_DEADLINE)
        .expect("raw_deflate.py ran");
    assert!(
        output.status.success(),
        "raw_deflate.py: {}\n{}",
        output.status,
        output.stderr
    );
    let value: Value = serde_json::from_str(output.stdout.trim()).expect("JSON");
    value["payloads"]
        .as_array()
        .expect("payloads")
        .iter()
        .map(|p| unhex(p.as_str().expect("hex")))
        .collect()
}

/// A raw client upgraded on `path` with `offer` as its `Sec-WebSocket-Extensions` (none if
/// empty); the 101 must answer `answer`.
fn raw_client(server: &TestServer<App>, path: &str, offer: &str, answer: Option<&str>) -> RawWs {
    let extra = if offer.is_empty() {
        String::new()
    } else {
        format!("Sec-WebSocket-Extensions: {offer}\r\n")
    };
    let (ws, head) = RawWs::connect_with(server.addr, path, &extra);
    assert_eq!(extensions_of(&head).as_deref(), answer, "{head}");
    ws
}

/// A raw client that negotiated permessage-deflate (the browsers' offer) on `path`.
fn raw_deflate_client(server: &TestServer<App>, path: &str, answer: &str) -> RawWs {
    raw_client(
        server,
        path,
        "permessage-deflate; client_max_window_bits",
        Some(answer),
    )
}

const SHARED_ANSWER: &str =
    "permessage-deflate; server_no_context_takeover; client_max_window_bits=15";

/// The server fails the connection: its close frame with `code` and `reason` comes next
/// (nothing before it); after our reply the server closes TCP.
fn expect_failed(ws: &mut RawWs, code: u16, reason: &str) {
    assert_eq!(
        ws.expect_frame(),
        Some((0x80 | OP_CLOSE, close_payload(code, reason))),
        "expected close {code} {reason:?}"
    );
    ws.send(OP_CLOSE, &close_payload(code, "")).unwrap();
    assert_eq!(ws.expect_frame(), None, "after the close handshake");
}

/// Closes a raw client cleanly: our close, its echo (nothing before it), then EOF. (A raw
/// client left open would hold `stop()` for the shutdown timeout, not answering the 1001.)
fn close_raw(mut ws: RawWs) {
    ws.send(OP_CLOSE, &close_payload(1000, "bye")).unwrap();
    assert_eq!(
        ws.expect_frame(),
        Some((0x80 | OP_CLOSE, close_payload(1000, "bye"))),
        "the echo of our close"
    );
    assert_eq!(ws.expect_frame(), None, "after the close handshake");
}

/// The answer of `/sum` to a message, as the frame it comes in (plain: it is short).
fn summary_frame(text: bool, payload: &[u8]) -> Option<(u8, Vec<u8>)> {
    Some((0x80 | OP_TEXT, summary(text, payload).into_bytes()))
}

/// A server frame, readable in a failure message.
fn shown(frame: Option<(u8, Vec<u8>)>) -> String {
    match frame {
        None => "EOF".to_owned(),
        Some((first, payload)) if first & 0x0F == OP_CLOSE => {
            let (code, reason) = parse_close(&payload);
            format!("close {code} {reason:?} (first byte {first:#04x})")
        }
        Some((first, payload)) => format!("{first:#04x} {:?}", String::from_utf8_lossy(&payload)),
    }
}

/// Writes `bytes` (whole frames) to a raw client's socket.
fn put(ws: &mut RawWs, bytes: &[u8]) {
    ws.stream.write_all(bytes).expect("write frames");
}

/// RSV1 | FIN | opcode.
fn compressed_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    masked_frame(0xC0 | opcode, payload)
}

// ----- the tests -----

/// A message that inflates past `max_message_size` fails with 1009 as soon as the limit is
/// passed (at 64 KiB + 1 of the 64 MiB of zeros a 64 KiB frame claims), and nothing else
/// is disturbed; exactly `max_message_size` inflated is fine.
#[test]
fn compression_bomb_is_1009_and_other_clients_are_undisturbed() {
    const MAX: usize = 64 * 1024;
    let server = start(
        config(Compression::shared()).max_message_size(MAX),
        clone_per_loop(App),
    );
    let mut bystander = connect(&server.url("/"));
    let mut ok = raw_deflate_client(&server, "/sum", SHARED_ANSWER);
    let mut over = raw_deflate_client(&server, "/sum", SHARED_ANSWER);
    let mut bomb = raw_deflate_client(&server, "/sum", SHARED_ANSWER);

    // Exactly at the limit once inflated, then another message in the same context.
    let ok_payloads = raw_deflate(json!([{ "zeros": MAX }, { "text": "still here" }]));
    put(&mut ok, &compressed_frame(OP_BINARY, &ok_payloads[0]));
    assert_eq!(ok.expect_frame(), summary_frame(false, &[0; MAX]));
    put(&mut ok, &compressed_frame(OP_TEXT, &ok_payloads[1]));
    assert_eq!(ok.expect_frame(), summary_frame(true, b"still here"));

    // One byte over.
    let over_payload = raw_deflate(json!([{ "zeros": MAX + 1 }])).remove(0);
    put(&mut over, &compressed_frame(OP_BINARY, &over_payload));
    expect_failed(&mut over, 1009, "message too big");

    // 64 MiB of zeros in one frame of about 64 KiB (under the limit itself).
    let bomb_payload = raw_deflate(json!([{ "zeros": 64 << 20 }])).remove(0);
    assert!(
        bomb_payload.len() < MAX && bomb_payload.len() > 60_000,
        "{}",
        bomb_payload.len()
    );
    let sent = Instant::now();
    put(&mut bomb, &compressed_frame(OP_BINARY, &bomb_payload));
    expect_failed(&mut bomb, 1009, "message too big");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );

    // Everyone else is fine.
    server
        .handle
        .broadcast(&Frame::text("still there"))
        .unwrap();
    assert_eq!(next_text(&mut bystander), "still there");
    assert_eq!(
        ok.expect_frame(),
        Some((0x80 | OP_TEXT, b"still there".to_vec()))
    );
    ok.send(OP_TEXT, b"plain works too").unwrap();
    assert_eq!(ok.expect_frame(), summary_frame(true, b"plain works too"));
    bystander
        .send(tungstenite::Message::text("and here"))
        .unwrap();
    assert_eq!(next_text(&mut bystander), "and here");

    // (The counters are published at the end of a turn, after its writes.)
    assert!(wait_until(IO_TIMEOUT, || server
        .handle
        .stats()
        .protocol_errors
        == 2));
    let stats = server.handle.stats();
    assert_eq!(stats.protocol_errors, 2, "{stats:?}");
    assert_eq!(
        (stats.inflate_bytes_in, stats.inflate_bytes_out),
        (
            (ok_payloads[0].len() + ok_payloads[1].len()) as u64,
            (MAX + "still here".len()) as u64
        ),
        "only what inflated counts: {stats:?}"
    );
    close_client(bystander);
    close_raw(ok);
    server.stop().1.unwrap();
}

/// Compressed data that is not DEFLATE is 1007; so is a compressed text that inflates to
/// invalid UTF-8.
#[test]
fn invalid_compressed_data_is_1007() {
    let server = start(config(Compression::dedicated(15)), clone_per_loop(App));
    let answer = "permessage-deflate; client_max_window_bits=15";

    // BFINAL=1 with the reserved block type 11.
    let mut ws = raw_deflate_client(&server, "/sum", answer);
    put(&mut ws, &compressed_frame(OP_BINARY, &[0xFF, 0xFF, 0xFF]));
    expect_failed(&mut ws, 1007, "invalid compressed data");

    // A valid message first, then garbage in the same context.
    let mut ws = raw_deflate_client(&server, "/sum", answer);
    let hello = raw_deflate(json!([{ "text": "Hello" }])).remove(0);
    put(&mut ws, &compressed_frame(OP_TEXT, &hello));
    assert_eq!(ws.expect_frame(), summary_frame(true, b"Hello"));
    // A stored block whose NLEN is not the complement of LEN.
    put(
        &mut ws,
        &compressed_frame(OP_TEXT, &[0x00, 0x05, 0x00, 0x00, 0x00, b'x']),
    );
    expect_failed(&mut ws, 1007, "invalid compressed data");

    // Valid DEFLATE, invalid UTF-8 inside.
    let mut ws = raw_deflate_client(&server, "/sum", answer);
    let bad_utf8 = raw_deflate(json!([{ "hex": "48c080" }])).remove(0);
    put(&mut ws, &compressed_frame(OP_TEXT, &bad_utf8));
    expect_failed(&mut ws, 1007, "invalid UTF-8 in text message");
    // As binary it is fine.
    let mut ws = raw_deflate_client(&server, "/sum", answer);
    put(&mut ws, &compressed_frame(OP_BINARY, &bad_utf8));
    assert_eq!(ws.expect_frame(), summary_frame(false, &[0x48, 0xC0, 0x80]));
    close_raw(ws);

    assert!(wait_until(IO_TIMEOUT, || server
        .handle
        .stats()
        .protocol_errors
        == 3));
    assert_eq!(server.handle.stats().protocol_errors, 3);
    server.stop().1.unwrap();
}

/// RSV1 is only allowed on the first frame of a data message, and only on a connection that
/// negotiated permessage-deflate: anything else is 1002.
#[test]
fn rsv1_where_it_is_not_allowed_is_1002() {
    let shared = start(config(Compression::shared()), clone_per_loop(App));
    let off = start(Config::default(), clone_per_loop(App));
    let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]; // RFC 7692 §7.2.3.1
    let without = "RSV1 set without a negotiated extension";
    let misplaced = "RSV1 set on a frame that is not the first of a data message";

    // Not negotiated: compression off, offer declined, refused by the handler, not offered.
    for (server, path, offer) in [
        (&off, "/sum", "permessage-deflate"),
        (
            &shared,
            "/sum",
            "permessage-deflate; server_max_window_bits=10",
        ),
        (&shared, "/plain", "permessage-deflate"),
        (&shared, "/sum", ""),
    ] {
        let mut ws = raw_client(server, path, offer, None);
        put(&mut ws, &compressed_frame(OP_TEXT, &hello));
        expect_failed(&mut ws, 1002, without);
    }

    // Negotiated: fine on a first frame, not on a continuation.
    let mut ws = raw_deflate_client(&shared, "/sum", SHARED_ANSWER);
    put(&mut ws, &masked_frame(0x40 | OP_TEXT, &hello[..3]));
    put(&mut ws, &masked_frame(0x80, &hello[3..]));
    assert_eq!(ws.expect_frame(), summary_frame(true, b"Hello"));
    put(&mut ws, &masked_frame(0x40 | OP_TEXT, &hello[..3]));
    put(&mut ws, &masked_frame(0x80 | 0x40, &hello[3..]));
    expect_failed(&mut ws, 1002, misplaced);

    // Nor on a control frame.
    let mut ws = raw_deflate_client(&shared, "/sum", SHARED_ANSWER);
    put(&mut ws, &masked_frame(0xC0 | OP_PING, b""));
    expect_failed(&mut ws, 1002, misplaced);

    assert!(wait_until(IO_TIMEOUT, || shared
        .handle
        .stats()
        .protocol_errors
        == 5));
    assert!(wait_until(IO_TIMEOUT, || off
        .handle
        .stats()
        .protocol_errors
        == 1));
    assert_eq!(shared.handle.stats().protocol_errors, 5);
    assert_eq!(off.handle.stats().protocol_errors, 1);
    shared.stop().1.unwrap();
    off.stop().1.unwrap();
}

/// The examples of RFC 7692 §7.2.3, one after another on one connection that keeps its
/// context (the server has a decompressor of its own for it): each is "Hello".
#[test]
fn rfc7692_examples_inflate_in_sequence() {
    let server = start(config(Compression::shared()), clone_per_loop(App));
    let examples: &[(&str, &[u8])] = &[
        // §7.2.3.1: one compressed block.
        ("one block", &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]),
        // §7.2.3.2: the same, referring to the previous message.
        ("shared window", &[0xf2, 0x00, 0x11, 0x00, 0x00]),
        // §7.2.3.3: a stored block.
        (
            "stored",
            &[
                0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
            ],
        ),
        // §7.2.3.5: two blocks, "He" then "llo", the first ended by a sync flush.
        (
            "two blocks",
            &[
                0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
            ],
        ),
        (
            "one block again",
            &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
        ),
    ];
    let mut ws = raw_deflate_client(&server, "/sum", SHARED_ANSWER);
    for (name, payload) in examples {
        put(&mut ws, &compressed_frame(OP_TEXT, payload));
        assert_eq!(ws.expect_frame(), summary_frame(true, b"Hello"), "{name}");
    }
    // "Hello" compressed in a first fragment (ended by a sync flush, as a non-final
    // fragment keeps it), then a last fragment holding only an empty stored block's header:
    // what websockets sends to end a fragmented message.
    put(
        &mut ws,
        &masked_frame(
            0x40 | OP_TEXT,
            &[
                0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00, 0x00, 0xff, 0xff,
            ],
        ),
    );
    put(&mut ws, &masked_frame(0x80, &[0x00]));
    assert_eq!(
        ws.expect_frame(),
        summary_frame(true, b"Hello"),
        "empty fragment"
    );
    // Captured from pywebsocket, as quoted in Jetty's permessage-deflate tests: "Hello World!"
    // compressed across three frames, then "tora" three times with context takeover.
    put(
        &mut ws,
        &masked_frame(0x40 | OP_TEXT, &unhex("f248cdc9c95700000000ffff")),
    );
    put(
        &mut ws,
        &masked_frame(0x00, &unhex("0acf2fca4901000000ffff")),
    );
    put(&mut ws, &masked_frame(0x80, &unhex("520400")));
    assert_eq!(
        ws.expect_frame(),
        summary_frame(true, b"Hello World!"),
        "3 frames"
    );
    for (i, hex) in ["2ac92f4a0400", "2a01620000", "02610000"]
        .iter()
        .enumerate()
    {
        put(&mut ws, &compressed_frame(OP_TEXT, &unhex(hex)));
        assert_eq!(ws.expect_frame(), summary_frame(true, b"tora"), "tora {i}");
    }
    // A ping between the fragments of a compressed message is answered at once.
    put(&mut ws, &masked_frame(0x40 | OP_TEXT, &[0xf2, 0x48, 0xcd]));
    put(&mut ws, &masked_frame(0x80 | OP_PING, b"mid"));
    assert_eq!(ws.expect_frame(), Some((0x80 | OP_PONG, b"mid".to_vec())));
    put(&mut ws, &masked_frame(0x80, &[0xc9, 0xc9, 0x07, 0x00]));
    assert_eq!(
        ws.expect_frame(),
        summary_frame(true, b"Hello"),
        "after the ping"
    );
    close_raw(ws);
    server.stop().1.unwrap();
}

/// Regression: RFC 7692 §7.2.3.4 lets a sender end a message's DEFLATE stream with a
/// BFINAL=1 block followed by one `00` byte (the header of an empty stored block, which the
/// `00 00 ff ff` the receiver appends completes). The decompressor used to stop at the end
/// of the final block, leave the `00` unread and feed the appended tail to a fresh stream,
/// where it was a stored-block header cut short: a connection with its own decompressor
/// (no `client_no_context_takeover`: browsers, `websockets`) then failed its next, valid
/// message with 1007. Peers without context share the loop's decompressor, reset after
/// every message (checked first below).
#[test]
fn a_message_after_a_bfinal_message_inflates() {
    let server = start(config(Compression::shared()), clone_per_loop(App));
    // §7.2.3.4: "Hello" in a final block, then the empty stored block's header byte.
    let bfinal = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
    // §7.2.3.1, which refers to nothing before it: valid in any context.
    let one_block = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];

    // Without context (the loop's decompressor, reset after each message): fine.
    let mut ws = raw_client(
        &server,
        "/sum",
        "permessage-deflate; client_no_context_takeover",
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
    );
    for payload in [&bfinal[..], &one_block, &bfinal, &one_block] {
        put(&mut ws, &compressed_frame(OP_TEXT, payload));
        assert_eq!(
            ws.expect_frame(),
            summary_frame(true, b"Hello"),
            "{payload:02x?}"
        );
    }
    close_raw(ws);

    // With context (its own decompressor): the BFINAL message inflates...
    let mut ws = raw_deflate_client(&server, "/sum", SHARED_ANSWER);
    put(&mut ws, &compressed_frame(OP_TEXT, &bfinal));
    assert_eq!(
        ws.expect_frame(),
        summary_frame(true, b"Hello"),
        "BFINAL example"
    );
    // ...and so does the next message, valid on its own.
    put(&mut ws, &compressed_frame(OP_TEXT, &one_block));
    assert_eq!(
        shown(ws.expect_frame()),
        shown(summary_frame(true, b"Hello")),
        "the message after a BFINAL=1 message (RFC 7692 §7.2.3.4)"
    );
    close_raw(ws);
    server.stop().1.unwrap();
}
