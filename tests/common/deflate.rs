//! Shared support for the permessage-deflate (RFC 7692) tests (`tests/deflate_*.rs`): the
//! server's handler and configuration, the deterministic data the tests send, and helpers
//! for hex and for the `Sec-WebSocket-Extensions` of a 101. [`client`] drives Python's
//! `websockets`, the client that compresses.

pub mod client;

use std::time::Duration;

use wshub::{Compression, Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request};

use super::parse_head;

// ----- the server side -----

/// Per connection, from the request:
/// - path `/plain`: accepted with `compress: false`;
/// - path `/sum`: each message is answered with its summary (see [`summary`]) instead of
///   an echo, so raw-socket tests need not inflate what comes back;
/// - `?topic=T`: subscribed to T once open.
///
/// Messages are echoed (same type, same bytes), except the text `all:X`, which broadcasts X.
#[derive(Clone)]
pub struct App;

pub struct Conn {
    topic: Option<String>,
    summary: bool,
}

impl Handler for App {
    type Data = Conn;

    fn on_request(&mut self, _: &mut Ctx<'_, Conn>, req: &Request<'_>) -> Reply<Conn> {
        let data = Conn {
            topic: req.query_param("topic"),
            summary: req.path() == "/sum",
        };
        Reply::Accept {
            data,
            protocol: None,
            compress: req.path() != "/plain",
        }
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_, Conn>, id: ConnId) {
        if let Some(topic) = ctx.data(id).and_then(|c| c.topic.clone()) {
            ctx.subscribe(id, &topic).expect("subscribe");
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, Conn>, id: ConnId, msg: Message) {
        if ctx.data(id).is_some_and(|c| c.summary) {
            let _ = ctx.send(id, &Frame::text(&summary_of(&msg)));
            return;
        }
        let frame = match &msg {
            Message::Text(t) => {
                if let Some(text) = t.strip_prefix("all:") {
                    ctx.broadcast(&Frame::text(text));
                    return;
                }
                Frame::text(t)
            }
            Message::Binary(b) => Frame::binary(b),
        };
        let _ = ctx.send(id, &frame);
    }
}

fn summary_of(msg: &Message) -> String {
    match msg {
        Message::Text(t) => summary(true, t.as_bytes()),
        Message::Binary(b) => summary(false, b),
    }
}

/// `text|binary:<length>:<FNV-1a of the payload>`: what `/sum` answers.
pub fn summary(text: bool, payload: &[u8]) -> String {
    let hash = payload.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let kind = if text { "text" } else { "binary" };
    format!("{kind}:{}:{hash:08x}", payload.len())
}

pub fn config(compression: Compression) -> Config {
    Config::default()
        .compression(compression)
        .close_timeout(Duration::from_secs(5))
}

/// `Compression`'s default `min_size`.
pub const MIN_SIZE: usize = 128;

/// How long one Python client may run before the test fails.
pub const PY_DEADLINE: Duration = Duration::from_secs(30);

// ----- data -----

/// A deterministic generator (xorshift64*), so every run sends the same bytes.
pub struct Rng(pub u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 32) as u8).collect()
    }

    /// Text from a 64-letter alphabet: DEFLATE gets it to about 3/4 by Huffman coding
    /// alone, and no further unless it repeats.
    pub fn text(&mut self, n: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        (0..n)
            .map(|_| char::from(ALPHABET[(self.next() >> 58) as usize]))
            .collect()
    }
}

/// A chat-like JSON line, with non-ASCII text: compresses well, better still with the
/// previous lines as context.
pub fn chat_line(i: usize) -> String {
    format!(
        r#"{{"type":"message","seq":{i},"room":"lobby","from":"ada","text":"κόσμε 🌍 — line {i} of the stream, much like the one before it"}}"#
    )
}

pub fn compressible_text(len: usize) -> String {
    let mut text = String::new();
    let mut i = 0;
    while text.len() < len {
        text += &chat_line(i);
        text.push('\n');
        i += 1;
    }
    // Cut at a character boundary.
    let mut end = len;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

pub fn compressible_binary(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8) ^ ((i / 997) as u8))
        .collect()
}

// ----- hex and the 101 -----

pub fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The `Sec-WebSocket-Extensions` values of a response head (there must be at most one).
pub fn extensions_of(head: &str) -> Option<String> {
    let (_, headers) = parse_head(head);
    let mut values = headers
        .into_iter()
        .filter(|(name, _)| name == "sec-websocket-extensions")
        .map(|(_, value)| value);
    let first = values.next();
    assert_eq!(values.next(), None, "two extension headers in {head}");
    first
}
