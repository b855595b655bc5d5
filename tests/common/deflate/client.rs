//! Python's `websockets` as the permessage-deflate client of the round-trip tests, running
//! `tests/deflate/client.py`: the messages it sends ([`Msg`], [`Send`]), its plan (options
//! and steps, as JSON on its stdin), and its transcript (what it sent and received, with
//! each frame as it was on the wire), parsed and checked.

use serde_json::{Value, json};
use wshub::Frame;

use super::super::python::{Output, Running, python};
use super::{MIN_SIZE, PY_DEADLINE, Rng, chat_line, compressible_binary, compressible_text, unhex};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    Text(String),
    Binary(Vec<u8>),
}

impl Msg {
    pub fn text(s: impl Into<String>) -> Msg {
        Msg::Text(s.into())
    }

    pub fn len(&self) -> usize {
        match self {
            Msg::Text(t) => t.len(),
            Msg::Binary(b) => b.len(),
        }
    }

    pub fn opcode(&self) -> u8 {
        match self {
            Msg::Text(_) => 1,
            Msg::Binary(_) => 2,
        }
    }

    pub fn frame(&self) -> Frame {
        match self {
            Msg::Text(t) => Frame::text(t),
            Msg::Binary(b) => Frame::binary(b),
        }
    }
}

/// A message as the client sends it: whole, or in fragments (each its own frame).
#[derive(Clone, Debug)]
pub struct Send {
    pub parts: Vec<Msg>,
    /// Whether DEFLATE makes the whole message smaller (so shared mode sends it
    /// compressed once it is at least `min_size`).
    pub compressible: bool,
}

impl Send {
    pub fn whole(msg: Msg, compressible: bool) -> Send {
        Send {
            parts: vec![msg],
            compressible,
        }
    }

    pub fn fragments(parts: Vec<Msg>) -> Send {
        assert!(parts.len() > 1);
        Send {
            parts,
            compressible: true,
        }
    }

    /// The one message the server receives (and echoes).
    pub fn message(&self) -> Msg {
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
pub struct WireFrame {
    pub opcode: u8,
    pub rsv1: bool,
    pub fin: bool,
    pub len: usize,
}

impl WireFrame {
    pub fn plain(msg: &Msg) -> WireFrame {
        WireFrame {
            opcode: msg.opcode(),
            rsv1: false,
            fin: true,
            len: msg.len(),
        }
    }
}

#[derive(Debug)]
pub struct Received {
    pub msg: Msg,
    pub frames: Vec<WireFrame>,
}

/// Everything one run of `client.py` printed, parsed.
#[derive(Debug, Default)]
pub struct Transcript {
    /// The 101's `Sec-WebSocket-Extensions`.
    pub extensions: Option<String>,
    /// What `websockets` agreed to, per extension.
    pub agreed: Vec<Value>,
    /// Per message sent: its frames as sent.
    pub sent: Vec<Vec<WireFrame>>,
    pub received: Vec<Received>,
    pub closed: Option<(u64, String)>,
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

/// Parses the output of a run that must have succeeded (exit 0, no `error` event).
pub fn transcript(output: Output) -> Transcript {
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
pub fn plan(url: &str, options: Value, steps: Vec<Value>) -> Vec<u8> {
    let mut plan = options;
    plan["url"] = json!(url);
    plan["steps"] = json!(steps);
    serde_json::to_vec(&plan).expect("plan")
}

pub fn spawn_client(plan: &[u8]) -> Running {
    Running::spawn(python().script("client.py"), plan).expect("start client.py")
}

pub fn run_client(plan: &[u8]) -> Transcript {
    transcript(
        spawn_client(plan)
            .finish(PY_DEADLINE)
            .expect("client.py ran"),
    )
}

/// Waits for the `open` line of a client started with `spawn_client`.
pub fn wait_open(client: &mut Running) {
    let line = client
        .next_line(PY_DEADLINE)
        .expect("client.py ended before opening");
    assert!(line.contains(r#""event": "open""#), "first line: {line}");
}

/// The default client (`websockets` with its default permessage-deflate offer,
/// `permessage-deflate; client_max_window_bits`).
pub fn default_client() -> Value {
    json!({ "compression": true })
}

/// Sends every message, then receives as many, then closes: the client's compressor and
/// the server's keep their context across the whole run.
pub fn echo_steps(sends: &[Send]) -> Vec<Value> {
    let mut steps: Vec<Value> = sends.iter().map(Send::step).collect();
    steps.push(json!({ "recv": sends.len() }));
    steps.push(json!({ "close": true }));
    steps
}

/// Asserts the round trip is exact: every echo, in order, nothing more; each message sent
/// compressed by the client as it should be (RSV1 on the first frame only; a fragmented
/// message is one frame per part, then `websockets` ends it with an empty continuation);
/// and a clean close.
pub fn assert_echoed(t: &Transcript, sends: &[Send]) {
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
pub fn echo_messages() -> Vec<Send> {
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
pub const BIG_TEXT: usize = 6;
/// Index of the repeated random text in `echo_messages`.
pub const REPEATED: usize = 8;
/// Index of the first of the 40 chat lines in `echo_messages`.
pub const RUN: usize = 13;
