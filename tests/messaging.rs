//! Messages both ways: text and binary echo of every size class, 1 MiB messages, and
//! fragmented messages that reach the handler reassembled.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use tungstenite::protocol::frame::Frame as RawFrame;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use wshub::{Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request};

/// Echoes every message as it came, and records it.
#[derive(Clone)]
struct Echo {
    got: Arc<Mutex<Vec<Message>>>,
}

fn echo() -> (Echo, Arc<Mutex<Vec<Message>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    (
        Echo {
            got: Arc::clone(&got),
        },
        got,
    )
}

impl Handler for Echo {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
        Reply::accept(())
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId, msg: Message) {
        let frame = match &msg {
            Message::Text(t) => Frame::text(t),
            Message::Binary(b) => Frame::binary(b),
        };
        self.got.lock().unwrap().push(msg);
        ctx.send(id, &frame).unwrap();
    }
}

fn text(s: &str) -> Message {
    Message::Text(s.into())
}

fn binary(b: &[u8]) -> Message {
    Message::Binary(b.to_vec().into())
}

/// The client-side message for a server-side one.
fn to_client(m: &Message) -> tungstenite::Message {
    match m {
        Message::Text(t) => tungstenite::Message::text(t.as_str()),
        Message::Binary(b) => tungstenite::Message::binary(b.clone()),
    }
}

/// Compares without printing megabytes on failure.
fn assert_same(got: &tungstenite::Message, want: &tungstenite::Message, what: &str) {
    assert!(
        got == want,
        "{what}: got {} bytes ({}), want {} bytes ({})",
        got.len(),
        if got.is_text() { "text" } else { "other" },
        want.len(),
        if want.is_text() { "text" } else { "other" },
    );
}

#[test]
fn text_and_binary_echo_in_order() {
    let (app, got) = echo();
    let server = start(Config::default(), clone_per_loop(app));
    let mut ws = connect(&server.url("/ws"));
    let all_bytes: Vec<u8> = (0..=255).collect();
    let sent = vec![
        text("hi"),
        text(""),
        text("héllo wörld ✓ 🦀"),
        binary(&[]),
        binary(&all_bytes),
        text(&"x".repeat(126)),     // 16-bit length
        binary(&vec![7u8; 70_000]), // 64-bit length
        text("last"),
    ];
    for m in &sent {
        ws.send(to_client(m)).unwrap();
    }
    for (i, m) in sent.iter().enumerate() {
        assert_same(&next_data(&mut ws), &to_client(m), &format!("message {i}"));
    }
    close_client(ws);

    let handle = server.handle.clone();
    server.stop().1.unwrap();
    assert!(
        *got.lock().unwrap() == sent,
        "the handler got other messages"
    );
    let stats = handle.stats();
    let bytes: usize = sent.iter().map(Message::len).sum();
    assert_eq!(stats.messages_in, sent.len() as u64);
    assert_eq!(stats.messages_out, sent.len() as u64);
    assert_eq!(stats.bytes_in, bytes as u64);
    assert_eq!(stats.handshakes_accepted, 1);
    assert_eq!(stats.protocol_errors, 0);
}

#[test]
fn one_mib_messages_echo() {
    let (app, got) = echo();
    let config = Config::default().max_message_size(2 * 1024 * 1024);
    let server = start(config, clone_per_loop(app));
    let mut ws = connect(&server.url("/ws"));
    const MIB: usize = 1024 * 1024;
    let big_binary: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    let big_text: String = (0..MIB).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let sent = vec![binary(&big_binary), text(&big_text)];
    for m in &sent {
        ws.send(to_client(m)).unwrap();
    }
    for (i, m) in sent.iter().enumerate() {
        assert_same(&next_data(&mut ws), &to_client(m), &format!("message {i}"));
    }
    close_client(ws);
    drop(server);
    let lens: Vec<usize> = got.lock().unwrap().iter().map(Message::len).collect();
    assert_eq!(lens, vec![MIB, MIB]);
    assert!(
        *got.lock().unwrap() == sent,
        "the handler got other messages"
    );
}

#[test]
fn fragmented_messages_arrive_reassembled() {
    let (app, got) = echo();
    let server = start(Config::default(), clone_per_loop(app));
    let mut ws = connect(&server.url("/ws"));
    let frag = |data: &[u8], op: Data, fin: bool| {
        tungstenite::Message::Frame(RawFrame::message(data.to_vec(), OpCode::Data(op), fin))
    };
    // A text message in three fragments with a ping between them (control frames may be
    // interleaved), the "✓" split across fragments; then a binary message in two.
    let check = "✓".as_bytes();
    ws.write(frag(b"Hello, ", Data::Text, false)).unwrap();
    ws.write(tungstenite::Message::Ping(b"p".to_vec().into()))
        .unwrap();
    ws.write(frag(
        &[b"world ", &check[..1]].concat(),
        Data::Continue,
        false,
    ))
    .unwrap();
    ws.write(frag(&check[1..], Data::Continue, true)).unwrap();
    ws.write(frag(&[1, 2], Data::Binary, false)).unwrap();
    ws.write(frag(&[3], Data::Continue, true)).unwrap();
    ws.flush().unwrap();

    let mut received = Vec::new();
    for _ in 0..3 {
        received.push(ws.read().expect("read"));
    }
    assert_eq!(
        received,
        vec![
            tungstenite::Message::Pong(b"p".to_vec().into()),
            tungstenite::Message::text("Hello, world ✓"),
            tungstenite::Message::binary(vec![1, 2, 3]),
        ]
    );
    close_client(ws);
    drop(server);
    assert_eq!(
        *got.lock().unwrap(),
        vec![text("Hello, world ✓"), binary(&[1, 2, 3])]
    );
}
