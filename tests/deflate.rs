//! permessage-deflate (RFC 7692) end to end:
//! - the negotiation, offer by offer, as the 101 (or the 400) says it, in shared, dedicated
//!   and off configurations;
//! - round trips with a real client that compresses, Python's `websockets` (venv made once,
//!   `common::python`): text and binary, below and above `min_size`, incompressible,
//!   fragmented, long runs with context takeover on both sides, window sizes, and a client
//!   that resets its context;
//! - mixed peers on one server (tungstenite without the extension, Python with and without
//!   it) receiving the same broadcasts and publishes, with the counters that show each
//!   message compressed once in shared mode;
//! - what a peer can get wrong, on raw sockets: a compression bomb (1009, others unharmed),
//!   data that does not inflate (1007), RSV1 where it is not allowed (1002), and the byte
//!   sequences of RFC 7692 §7.2.3.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::python::{Running, python};
use common::*;
use serde_json::{Value, json};
use wshub::{Compression, Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request};

// ----- the server side -----

/// Per connection, from the request:
/// - path `/plain`: accepted with `compress: false`;
/// - path `/sum`: each message is answered with its summary (see [`summary`]) instead of
///   an echo, so raw-socket tests need not inflate what comes back;
/// - `?topic=T`: subscribed to T once open.
///
/// Messages are echoed (same type, same bytes), except the text `all:X`, which broadcasts X.
struct App;

struct Conn {
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
fn summary(text: bool, payload: &[u8]) -> String {
    let hash = payload.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let kind = if text { "text" } else { "binary" };
    format!("{kind}:{}:{hash:08x}", payload.len())
}

fn config(compression: Compression) -> Config {
    Config::default()
        .compression(compression)
        .close_timeout(Duration::from_secs(5))
}

/// `Compression`'s default `min_size`.
const MIN_SIZE: usize = 128;

/// How long one Python client may run before the test fails.
const PY_DEADLINE: Duration = Duration::from_secs(30);

// ----- data -----

/// A deterministic generator (xorshift64*), so every run sends the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 32) as u8).collect()
    }

    /// Text from a 64-letter alphabet: DEFLATE gets it to about 3/4 by Huffman coding
    /// alone, and no further unless it repeats.
    fn text(&mut self, n: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        (0..n)
            .map(|_| char::from(ALPHABET[(self.next() >> 58) as usize]))
            .collect()
    }
}

/// A chat-like JSON line, with non-ASCII text: compresses well, better still with the
/// previous lines as context.
fn chat_line(i: usize) -> String {
    format!(
        r#"{{"type":"message","seq":{i},"room":"lobby","from":"ada","text":"κόσμε 🌍 — line {i} of the stream, much like the one before it"}}"#
    )
}

fn compressible_text(len: usize) -> String {
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

fn compressible_binary(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8) ^ ((i / 997) as u8))
        .collect()
}

// ----- messages and what the Python client reports -----

#[derive(Clone, Debug, PartialEq, Eq)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
}

impl Msg {
    fn text(s: impl Into<String>) -> Msg {
        Msg::Text(s.into())
    }

    fn len(&self) -> usize {
        match self {
            Msg::Text(t) => t.len(),
            Msg::Binary(b) => b.len(),
        }
    }

    fn opcode(&self) -> u8 {
        match self {
            Msg::Text(_) => 1,
            Msg::Binary(_) => 2,
        }
    }

    fn frame(&self) -> Frame {
        match self {
            Msg::Text(t) => Frame::text(t),
            Msg::Binary(b) => Frame::binary(b),
        }
    }
}

/// A message as the client sends it: whole, or in fragments (each its own frame).
#[derive(Clone, Debug)]
struct Send {
    parts: Vec<Msg>,
    /// Whether DEFLATE makes the whole message smaller (so shared mode sends it
    /// compressed once it is at least `min_size`).
    compressible: bool,
}

impl Send {
    fn whole(msg: Msg, compressible: bool) -> Send {
        Send {
            parts: vec![msg],
            compressible,
        }
    }

    fn fragments(parts: Vec<Msg>) -> Send {
        assert!(parts.len() > 1);
        Send {
            parts,
            compressible: true,
        }
    }

    /// The one message the server receives (and echoes).
    fn message(&self) -> Msg {
        match &self.parts[0] {
            Msg::Text(_) => Msg::Text(
                self.parts
                    .iter()
                    .map(|p| match p {
                        Msg::Text(t) => t.as_str(),
                        Msg::Binary(_) => panic!("mixed fragments"),
                    })
                    .collect(),
            ),
            Msg::Binary(_) => Msg::Binary(
                self.parts
                    .iter()
                    .flat_map(|p| match p {
                        Msg::Binary(b) => b.iter().copied(),
                        Msg::Text(_) => panic!("mixed fragments"),
                    })
                    .collect(),
            ),
        }
    }

    fn step(&self) -> Value {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let value = match (&self.parts[..], &self.parts[0]) {
            ([Msg::Text(t)], _) => json!({ "text": t }),
            ([Msg::Binary(b)], _) => json!({ "binary": hex(b) }),
            (parts, Msg::Text(_)) => json!({
                "text_fragments": parts.iter().map(|p| match p {
                    Msg::Text(t) => t.clone(),
                    Msg::Binary(_) => panic!("mixed fragments"),
                }).collect::<Vec<_>>()
            }),
            (parts, Msg::Binary(_)) => json!({
                "binary_fragments": parts.iter().map(|p| match p {
                    Msg::Binary(b) => hex(b),
                    Msg::Text(_) => panic!("mixed fragments"),
                }).collect::<Vec<_>>()
            }),
        };
        json!({ "send": value })
    }
}

/// One frame as the client saw it on the wire (before inflating) or put it there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct WireFrame {
    opcode: u8,
    rsv1: bool,
    fin: bool,
    len: usize,
}

impl WireFrame {
    fn plain(msg: &Msg) -> WireFrame {
        WireFrame {
            opcode: msg.opcode(),
            rsv1: false,
            fin: true,
            len: msg.len(),
        }
    }
}

#[derive(Debug)]
struct Received {
    msg: Msg,
    frames: Vec<WireFrame>,
}

/// Everything one run of `client.py` printed, parsed.
#[derive(Debug, Default)]
struct Transcript {
    /// The 101's `Sec-WebSocket-Extensions`.
    extensions: Option<String>,
    /// What `websockets` agreed to, per extension.
    agreed: Vec<Value>,
    /// Per message sent: its frames as sent.
    sent: Vec<Vec<WireFrame>>,
    received: Vec<Received>,
    closed: Option<(u64, String)>,
}

fn frames(value: &Value) -> Vec<WireFrame> {
    value
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| WireFrame {
            opcode: f["opcode"].as_u64().expect("opcode") as u8,
            rsv1: f["rsv1"].as_bool().expect("rsv1"),
            fin: f["fin"].as_bool().expect("fin"),
            len: f["len"].as_u64().expect("len") as usize,
        })
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Parses the output of a run that must have succeeded (exit 0, no `error` event).
fn transcript(output: common::python::Output) -> Transcript {
    assert!(
        output.status.success(),
        "client.py failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        output.stdout,
        output.stderr
    );
    let mut t = Transcript::default();
    let mut opened = false;
    for line in output.stdout.lines() {
        let event: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        match event["event"].as_str().expect("event") {
            "open" => {
                assert!(!opened, "two open events");
                opened = true;
                t.extensions = event["extensions"].as_str().map(str::to_owned);
                t.agreed = event["agreed"].as_array().expect("agreed").clone();
            }
            "sent" => t.sent.push(frames(&event["frames"])),
            "message" => {
                let msg = match (event.get("text"), event.get("binary")) {
                    (Some(text), None) => Msg::Text(text.as_str().expect("text").to_owned()),
                    (None, Some(hex)) => Msg::Binary(unhex(hex.as_str().expect("hex"))),
                    _ => panic!("bad message event: {line}"),
                };
                t.received.push(Received {
                    msg,
                    frames: frames(&event["frames"]),
                });
            }
            "closed" => {
                t.closed = Some((
                    event["code"].as_u64().expect("code"),
                    event["reason"].as_str().unwrap_or_default().to_owned(),
                ))
            }
            other => panic!(
                "unexpected event {other}: {line}\nstderr: {}",
                output.stderr
            ),
        }
    }
    assert!(opened, "no open event: {}", output.stdout);
    t
}

/// The plan for `client.py`: `options` (compression, deflate parameters) plus url and steps.
fn plan(url: &str, options: Value, steps: Vec<Value>) -> Vec<u8> {
    let mut plan = options;
    plan["url"] = json!(url);
    plan["steps"] = json!(steps);
    serde_json::to_vec(&plan).expect("plan")
}

fn spawn_client(plan: &[u8]) -> Running {
    Running::spawn(python().script("client.py"), plan).expect("start client.py")
}

fn run_client(plan: &[u8]) -> Transcript {
    transcript(
        spawn_client(plan)
            .finish(PY_DEADLINE)
            .expect("client.py ran"),
    )
}

/// Waits for the `open` line of a client started with `spawn_client`.
fn wait_open(client: &mut Running) {
    let line = client
        .next_line(PY_DEADLINE)
        .expect("client.py ended before opening");
    assert!(line.contains(r#""event": "open""#), "first line: {line}");
}

/// The default client (`websockets` with its default permessage-deflate offer,
/// `permessage-deflate; client_max_window_bits`).
fn default_client() -> Value {
    json!({ "compression": true })
}

/// Sends every message, then receives as many, then closes: the client's compressor and
/// the server's keep their context across the whole run.
fn echo_steps(sends: &[Send]) -> Vec<Value> {
    let mut steps: Vec<Value> = sends.iter().map(Send::step).collect();
    steps.push(json!({ "recv": sends.len() }));
    steps.push(json!({ "close": true }));
    steps
}

/// Asserts the round trip is exact: every echo, in order, nothing more; each message sent
/// compressed by the client as it should be (RSV1 on the first frame only; a fragmented
/// message is one frame per part, then `websockets` ends it with an empty continuation);
/// and a clean close.
fn assert_echoed(t: &Transcript, sends: &[Send]) {
    let got: Vec<&Msg> = t.received.iter().map(|r| &r.msg).collect();
    let want: Vec<Msg> = sends.iter().map(Send::message).collect();
    assert_eq!(got, want.iter().collect::<Vec<_>>(), "echoes");
    assert_eq!(t.sent.len(), sends.len(), "sent events");
    if !t.agreed.is_empty() {
        for (i, (frames, send)) in t.sent.iter().zip(sends).enumerate() {
            let count = match send.parts.len() {
                1 => 1,
                n => n + 1,
            };
            assert_eq!(frames.len(), count, "message {i}: frames");
            for (k, frame) in frames.iter().enumerate() {
                let opcode = if k == 0 { send.parts[0].opcode() } else { 0 };
                assert_eq!(
                    (frame.opcode, frame.rsv1, frame.fin),
                    (opcode, k == 0, k + 1 == frames.len()),
                    "message {i} frame {k}"
                );
            }
        }
    }
    assert_eq!(t.closed, Some((1000, String::new())), "close");
}

/// The messages of the echo tests: small (sent plain), large and compressible, large and
/// incompressible, one repeated (context takeover), fragmented (compressed across
/// continuation frames, one fragment empty), a run of 40 similar lines, and two large ones
/// (100 KiB random, 200 KiB text).
fn echo_messages() -> Vec<Send> {
    let mut rng = Rng(0x5eed_0001);
    let random_text = rng.text(3000);
    let mut sends = vec![
        Send::whole(Msg::text("hi"), false),
        Send::whole(Msg::Binary(vec![0, 1, 2, 255]), false),
        Send::whole(Msg::text(""), false),
        Send::whole(Msg::Binary(Vec::new()), false),
        Send::whole(Msg::text("x".repeat(MIN_SIZE - 1)), true),
        Send::whole(Msg::text("y".repeat(MIN_SIZE)), true),
        Send::whole(Msg::Text(compressible_text(8 * 1024)), true),
        Send::whole(Msg::Binary(compressible_binary(6 * 1024)), true),
        Send::whole(Msg::Text(random_text.clone()), true),
        Send::whole(Msg::Text(random_text), true),
        Send::whole(Msg::Binary(rng.bytes(4096)), false),
        Send::fragments(vec![
            Msg::text("first part, "),
            Msg::text("κόσμε "),
            Msg::text(""),
            Msg::Text(compressible_text(3000)),
        ]),
        Send::fragments(vec![
            Msg::Binary(rng.bytes(100)),
            Msg::Binary(compressible_binary(2000)),
            Msg::Binary(Vec::new()),
        ]),
    ];
    sends.extend((0..40).map(|i| Send::whole(Msg::Text(chat_line(i)), true)));
    // Large: several passes of the compressor's and the decompressor's buffer loops.
    sends.push(Send::whole(Msg::Binary(rng.bytes(100 * 1024)), false));
    sends.push(Send::whole(Msg::Text(compressible_text(200 * 1024)), true));
    sends
}

/// Index of the 8 KiB compressible text in `echo_messages`.
const BIG_TEXT: usize = 6;
/// Index of the repeated random text in `echo_messages`.
const REPEATED: usize = 8;
/// Index of the first of the 40 chat lines in `echo_messages`.
const RUN: usize = 13;

// ----- 1. negotiation -----

/// The upgrade answer to `offers` (one `Sec-WebSocket-Extensions` line each): its status
/// line and its `Sec-WebSocket-Extensions` (which must not appear twice).
fn offer(server: &TestServer<App>, path: &str, offers: &[&str]) -> (String, Option<String>) {
    let extra: String = offers
        .iter()
        .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
        .collect();
    let mut s = raw_connect(server.addr);
    s.write_all(upgrade_request(path, &extra).as_bytes())
        .expect("write");
    let (head, _) = read_head(&mut s);
    let (status, _) = parse_head(&head);
    (status, extensions_of(&head))
}

/// Checks each `(offers, answer)`: `offers` is the `Sec-WebSocket-Extensions` lines of the
/// request, separated by `\n` (none if empty); `answer` the 101's header, if any.
fn check_offers(server: &TestServer<App>, path: &str, cases: &[(&str, Option<&str>)]) {
    for (offers, answer) in cases {
        let lines: Vec<&str> = offers.split('\n').filter(|l| !l.is_empty()).collect();
        let (status, ext) = offer(server, path, &lines);
        assert_eq!(
            (status.as_str(), ext.as_deref()),
            ("HTTP/1.1 101 Switching Protocols", *answer),
            "{offers:?} on {path}"
        );
    }
}

#[test]
fn negotiation_matrix() {
    const PMD: &str = "permessage-deflate";
    const SNCT: &str = "permessage-deflate; server_no_context_takeover";

    // Shared mode: always server_no_context_takeover, and its window is 15 for everyone.
    let shared = start(config(Compression::shared()), App);
    check_offers(
        &shared,
        "/",
        &[
            ("", None),
            // An empty value: no offer.
            (" ", None),
            (PMD, Some(SNCT)),
            // What browsers and websockets send.
            (
                "permessage-deflate; client_max_window_bits",
                Some("permessage-deflate; server_no_context_takeover; client_max_window_bits=15"),
            ),
            ("permessage-deflate; server_no_context_takeover", Some(SNCT)),
            (
                "permessage-deflate; client_no_context_takeover",
                Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            ),
            // One compression for everyone cannot shrink its window for one client.
            ("permessage-deflate; server_max_window_bits=10", None),
            (
                "permessage-deflate; server_max_window_bits=15",
                Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=15"),
            ),
            // zlib cannot make a 256-byte window.
            ("permessage-deflate; server_max_window_bits=8", None),
            // The first offer declined, the second accepted: in one line, and over two.
            (
                "permessage-deflate; server_max_window_bits=10, \
             permessage-deflate; client_max_window_bits=12",
                Some("permessage-deflate; server_no_context_takeover; client_max_window_bits=12"),
            ),
            (
                "permessage-deflate; server_max_window_bits=9\npermessage-deflate",
                Some(SNCT),
            ),
            // Unknown extensions are ignored.
            (
                "x-webkit-deflate-frame; no_context_takeover, permessage-deflate",
                Some(SNCT),
            ),
            ("x-unknown-extension", None),
            ("x-unknown-extension\npermessage-deflate", Some(SNCT)),
            // An unknown parameter declines its offer; a later plain offer is still taken.
            ("permessage-deflate; foo=bar", None),
            ("permessage-deflate; foo", None),
            ("permessage-deflate; foo, permessage-deflate", Some(SNCT)),
            // Repeated parameters decline too.
            (
                "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
                None,
            ),
            // Quoted values, case, spaces and tabs.
            (
                "PerMessage-Deflate ;\tClient_Max_Window_Bits = \"11\"",
                Some("permessage-deflate; server_no_context_takeover; client_max_window_bits=11"),
            ),
        ],
    );
    // Refused by the handler (`compress: false`): the offer is ignored.
    check_offers(
        &shared,
        "/plain",
        &[
            (PMD, None),
            ("permessage-deflate; client_max_window_bits", None),
        ],
    );

    // Dedicated mode: the client's limits are taken.
    let dedicated = start(config(Compression::dedicated(15)), App);
    check_offers(
        &dedicated,
        "/",
        &[
            ("", None),
            (PMD, Some(PMD)),
            (
                "permessage-deflate; client_max_window_bits",
                Some("permessage-deflate; client_max_window_bits=15"),
            ),
            (
                "permessage-deflate; server_max_window_bits=10",
                Some("permessage-deflate; server_max_window_bits=10"),
            ),
            ("permessage-deflate; server_max_window_bits=8", None),
            ("permessage-deflate; server_no_context_takeover", Some(SNCT)),
            (
                "permessage-deflate; client_no_context_takeover; client_max_window_bits=9",
                Some("permessage-deflate; client_no_context_takeover; client_max_window_bits=9"),
            ),
            (
                "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=12",
                Some("permessage-deflate; server_max_window_bits=12"),
            ),
        ],
    );
    check_offers(&dedicated, "/plain", &[(PMD, None)]);

    // Dedicated with a smaller window, a client window limit and no client context.
    let small = start(
        config(
            Compression::dedicated(11)
                .client_window_bits(10)
                .client_no_context_takeover(true),
        ),
        App,
    );
    check_offers(
        &small,
        "/",
        &[
            (PMD, Some("permessage-deflate; client_no_context_takeover")),
            (
                "permessage-deflate; client_max_window_bits",
                Some("permessage-deflate; client_no_context_takeover; client_max_window_bits=10"),
            ),
            (
                "permessage-deflate; server_max_window_bits=13; client_max_window_bits=12",
                Some(
                    "permessage-deflate; client_no_context_takeover; server_max_window_bits=11; \
                 client_max_window_bits=10",
                ),
            ),
            (
                "permessage-deflate; server_max_window_bits=9",
                Some("permessage-deflate; client_no_context_takeover; server_max_window_bits=9"),
            ),
        ],
    );

    // Compression off: no extension, whatever is offered.
    let off = start(Config::default(), App);
    check_offers(
        &off,
        "/",
        &[
            (PMD, None),
            ("permessage-deflate; client_max_window_bits", None),
        ],
    );

    for server in [shared, dedicated, small, off] {
        let stats = server.handle.stats();
        assert_eq!(stats.rejected.total(), 0, "{stats:?}");
        server.stop().1.unwrap();
    }
}

#[test]
fn malformed_offers_are_400_with_the_reason_unless_compression_is_off() {
    let shared = start(config(Compression::shared()), App);
    let off = start(Config::default(), App);
    let request = |offers: &[&str], path: &str| {
        let extra: String = offers
            .iter()
            .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
            .collect();
        upgrade_request(path, &extra).into_bytes()
    };
    let prefix = "malformed Sec-WebSocket-Extensions: ";
    for (offers, reason) in [
        (&["permessage-deflate;"][..], "empty parameter name"),
        (
            &["permessage-deflate; client_max_window_bits=\"10"][..],
            "unterminated quoted string",
        ),
        (
            &["permessage-deflate client_max_window_bits"][..],
            "unexpected character 'c'",
        ),
        // A mistake on a later line fails the request even after an acceptable offer.
        (
            &["permessage-deflate", "x; a="][..],
            "empty parameter value",
        ),
    ] {
        let response = raw_exchange(shared.addr, &request(offers, "/"));
        let (status, headers, body) = parse_response(&response);
        assert_eq!(status, "HTTP/1.1 400 Bad Request", "{offers:?}");
        assert!(
            headers.contains(&("content-type".into(), "text/plain; charset=utf-8".into())),
            "{headers:?}"
        );
        assert_eq!(
            String::from_utf8(body).unwrap(),
            format!("{prefix}{reason}")
        );
        // Compression off: the header is not even read.
        let (status, ext) = offer(&off, "/", offers);
        assert_eq!(
            (status.as_str(), ext),
            ("HTTP/1.1 101 Switching Protocols", None)
        );
    }
    // Refused by the handler: not read either.
    let (status, ext) = offer(&shared, "/plain", &["permessage-deflate;"]);
    assert_eq!(
        (status.as_str(), ext),
        ("HTTP/1.1 101 Switching Protocols", None)
    );
    assert!(wait_until(IO_TIMEOUT, || shared
        .handle
        .stats()
        .rejected
        .bad_request
        == 4));
    assert_eq!(shared.handle.stats().rejected.total(), 4);
    shared.stop().1.unwrap();
    off.stop().1.unwrap();
}

// ----- 2. round trips with Python's websockets -----

/// Echo with the default client in shared mode: small messages come back plain, large
/// compressible ones compressed, incompressible ones plain (compressing would not make them
/// smaller); the server keeps no context (the repeated message compresses the same twice)
/// but inflates the client's context-taking stream.
#[test]
fn python_echo_shared_mode() {
    let server = start(config(Compression::shared()), App);
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
    let server = start(config(Compression::dedicated(15)), App);
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
        let server = start(config(compression), App);
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
    let wide = start(config(Compression::dedicated(15)), App);
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
        App,
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
        App,
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
    let server = start(config(Compression::dedicated(15)), App);
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
    let server = start(config(Compression::shared()), App);
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
    let server = start(config(Compression::dedicated(15)), App);
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

// ----- 3. mixed peers -----

/// One shared-mode server, five peers at once: two tungstenite clients (no extension), two
/// Python clients with it (one keeping its context, one not) and one Python client without
/// it. Broadcasts and publishes of every kind reach each peer complete and in order, plain
/// or compressed as it negotiated; each message is compressed once however many peers take
/// it compressed.
#[test]
fn mixed_peers_receive_every_broadcast_and_publish_in_order() {
    let server = start(config(Compression::shared()), App);
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
        (
            stats.compressions,
            stats.compressed_out,
            stats.messages_out,
            stats.compress_bytes_in,
            stats.compress_bytes_out
        ),
        (
            compressions as u64,
            compressed_out as u64,
            messages_out as u64,
            compress_bytes_in as u64,
            compress_bytes_out as u64
        ),
        "(compressions, compressed_out, messages_out, compress_bytes_in, compress_bytes_out) \
         in {stats:?}"
    );
    assert_eq!((compressions, compressed_out), (7, 10), "the plan itself");
    server.stop().1.unwrap();
}

// ----- 4. what a peer can get wrong -----

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

/// The `Sec-WebSocket-Extensions` values of a response head (there must be at most one).
fn extensions_of(head: &str) -> Option<String> {
    let (_, headers) = parse_head(head);
    let mut values = headers
        .into_iter()
        .filter(|(name, _)| name == "sec-websocket-extensions")
        .map(|(_, value)| value);
    let first = values.next();
    assert_eq!(values.next(), None, "two extension headers in {head}");
    first
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

/// A message that inflates past `max_message_size` fails with 1009 as soon as the limit is
/// passed (at 64 KiB + 1 of the 64 MiB of zeros a 64 KiB frame claims), and nothing else
/// is disturbed; exactly `max_message_size` inflated is fine.
#[test]
fn compression_bomb_is_1009_and_other_clients_are_undisturbed() {
    const MAX: usize = 64 * 1024;
    let server = start(config(Compression::shared()).max_message_size(MAX), App);
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
    let server = start(config(Compression::dedicated(15)), App);
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
    let shared = start(config(Compression::shared()), App);
    let off = start(Config::default(), App);
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
    let server = start(config(Compression::shared()), App);
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
    let server = start(config(Compression::shared()), App);
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

// ----- 5. stats -----

/// `inflate_bytes_in` is exactly the compressed payload the client sent (all fragments of
/// every message), `inflate_bytes_out` what it inflated to; and in dedicated mode every
/// echo of at least `min_size` is a compression of its own.
#[test]
fn inflate_stats_match_what_the_client_sent() {
    let server = start(config(Compression::dedicated(15)), App);
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
