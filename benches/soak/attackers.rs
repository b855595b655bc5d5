//! The attackers: thousands of short- and long-lived connections doing random
//! legal and illegal things at once, on one thread and one mio loop.
//!
//! A population of up to `population` attackers is kept up by spawning
//! `spawn_per_sec` of them (kinds by weight, variants uniformly); on top of
//! that come bursts: a *reconnect storm* (50–200 connections from one
//! address at once, each upgrading and leaving at once, some cleanly, some
//! not) every `storm_every`, and a *silent swarm* (more silent sockets from
//! one address than its handshake limit) every `swarm_every`.
//!
//! Every attacker ends with an *outcome*: what the server did (an HTTP
//! status, a close code, EOF, a reset) or that we ended it. Outcomes are
//! counted per kind; an outcome that a correct server should not produce for
//! that kind and variant (e.g. a malformed frame that is not answered with
//! 1002) is also counted as an anomaly, with examples.
//!
//! Attackers that send messages do so into attacker rooms (`?room=xN`), so
//! their traffic reaches other attackers only; the ones that broadcast (to
//! everyone, the well-behaved clients included) share a small global budget.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::net::{self, FIN, RSV1, ReadResult, Rng};
use crate::wire;

/// Flooded rooms `x0`..`x3`: floods go there, slow readers listen there.
const FLOOD_ROOMS: usize = 4;
/// Quiet rooms `q0`..`q15`: where the other attackers' stray messages would go.
const QUIET_ROOMS: usize = 16;
/// How often every attacker's timers are looked at.
const SCAN_EVERY: Duration = Duration::from_millis(5);
/// Reads per pass before coming back at the next scan.
const MAX_READS: usize = 64;
const READ_BUF_LEN: usize = 64 * 1024;
/// A reader that has this much unparsed input is cut off.
const MAX_INBUF: usize = 2 << 20;
/// A writer with this much unsent output makes no more.
const OUT_HIGH: usize = 32 * 1024;
/// How long a non-reader is read from at the end of its life, to see what the server did.
const DRAIN: Duration = Duration::from_secs(2);
/// The oversized attacker's legal messages: one below the server's queue limit
/// (256 KiB), and one above it but below the message size limit (1 MiB).
const LARGE_LEGAL: (u64, u64) = (100 * 1024, 240 * 1024);
const HUGE_LEGAL: usize = 900 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Kind {
    SlowReader,
    Flooder,
    Reset,
    HalfOpen,
    Garbage,
    Malformed,
    Slowloris,
    Silent,
    Oversized,
    Reconnect,
    PlainHttp,
    Legal,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::SlowReader,
        Kind::Flooder,
        Kind::Reset,
        Kind::HalfOpen,
        Kind::Garbage,
        Kind::Malformed,
        Kind::Slowloris,
        Kind::Silent,
        Kind::Oversized,
        Kind::Reconnect,
        Kind::PlainHttp,
        Kind::Legal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::SlowReader => "slow-reader",
            Kind::Flooder => "flooder",
            Kind::Reset => "reset",
            Kind::HalfOpen => "half-open",
            Kind::Garbage => "garbage",
            Kind::Malformed => "malformed",
            Kind::Slowloris => "slowloris",
            Kind::Silent => "silent",
            Kind::Oversized => "oversized",
            Kind::Reconnect => "reconnect",
            Kind::PlainHttp => "plain-http",
            Kind::Legal => "legal",
        }
    }

    /// What the kind does, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::SlowReader => {
                "2 KiB receive buffer, joins a flooded room (or none: broadcasts), never reads; \
                 read at the end of its life to see how the server ended it"
            }
            Kind::Flooder => {
                "sends messages of 16 B-2 KiB into a flooded room as fast as a shared budget \
                 allows, reading (or: pipelined after the request and never reading; or: \
                 small broadcasts to everyone from a tiny budget)"
            }
            Kind::Reset => {
                "TCP reset mid-request, mid-frame (header declared, part of the payload sent), \
                 after a message plus part of the next, or right after the request"
            }
            Kind::HalfOpen => {
                "shuts its write side down (FIN) after the request, after a message, or \
                 mid-request, and waits for the server to close"
            }
            Kind::Garbage => {
                "random bytes instead of a request, after a request line, or after the upgrade"
            }
            Kind::Malformed => {
                "one of 16 malformed frames after the upgrade (unmasked, RSV1, reserved opcodes, \
                 long or fragmented control frames, bad continuations, invalid UTF-8, bad close \
                 codes and payloads, 64-bit length with the top bit set)"
            }
            Kind::Slowloris => {
                "the upgrade request a few bytes at a time, or endless header lines, slower \
                 than the handshake timeout"
            }
            Kind::Silent => {
                "connects and sends nothing (reading, or not), or upgrades then stays silent \
                 and ignores pings, or connects and closes at once"
            }
            Kind::Oversized => {
                "frame declaring > 1 MiB, fragments adding up to > 1 MiB, a 10 KiB header, a \
                 100 kB body, 100 headers; or a legal message of 100-240 KiB or of 900 KiB \
                 echoed back in a private room"
            }
            Kind::Reconnect => {
                "bursts of 50-200 connections from one address, each upgrading and leaving at \
                 once: clean close, FIN, reset, or one message then FIN"
            }
            Kind::PlainHttp => {
                "plain HTTP (GET, HEAD, POST, OPTIONS, HTTP/1.0, Expect) and flawed upgrades \
                 (version 8, no key, two keys, two Hosts, no Host, POST, absolute-form target)"
            }
            Kind::Legal => {
                "upgrades, sends 1-20 messages (some fragmented) with pings, checks the echoes \
                 of its private room, closes cleanly (or in an attacker room, or one broadcast)"
            }
        }
    }

    /// Relative weight among individual spawns (reconnects come in bursts).
    fn weight(self) -> u64 {
        match self {
            Kind::SlowReader => 8,
            Kind::Flooder => 7,
            Kind::Reset => 8,
            Kind::HalfOpen => 6,
            Kind::Garbage => 6,
            Kind::Malformed => 8,
            Kind::Slowloris => 10,
            Kind::Silent => 12,
            Kind::Oversized => 4,
            Kind::Reconnect => 0,
            Kind::PlainHttp => 8,
            Kind::Legal => 10,
        }
    }

    fn variants(self) -> usize {
        match self {
            Kind::SlowReader => 2,
            Kind::Flooder => 3,
            Kind::Reset => 4,
            Kind::HalfOpen => 3,
            Kind::Garbage => 3,
            Kind::Malformed => MALFORMED.len(),
            Kind::Slowloris => 2,
            Kind::Silent => 4,
            Kind::Oversized => 7,
            Kind::Reconnect => 4,
            Kind::PlainHttp => PLAIN.len(),
            Kind::Legal => 3,
        }
    }
}

/// Malformed frames: name, and the close codes a correct server answers with.
const MALFORMED: [(&str, &[&str]); 16] = [
    ("unmasked text", &["close 1002"]),
    ("RSV1 without extension", &["close 1002"]),
    ("reserved data opcode 0x3", &["close 1002"]),
    ("reserved control opcode 0xB", &["close 1002"]),
    ("ping with 126-byte payload", &["close 1002"]),
    ("fragmented ping", &["close 1002"]),
    ("continuation without start", &["close 1002"]),
    (
        "new text frame inside a fragmented message",
        &["close 1002"],
    ),
    ("text with invalid UTF-8", &["close 1007"]),
    ("fragmented text with invalid UTF-8", &["close 1007"]),
    ("close with 1-byte payload", &["close 1002"]),
    ("close with code 1005", &["close 1002"]),
    ("close with code 999", &["close 1002"]),
    ("close with code 5000", &["close 1002"]),
    (
        "close with invalid UTF-8 reason",
        &["close 1007", "close 1002"],
    ),
    (
        "64-bit length with top bit set",
        &["close 1002", "close 1009"],
    ),
];

/// Plain HTTP requests and flawed upgrades: name, request (`{host}` is
/// replaced), accepted outcomes.
const PLAIN: [(&str, &str, &[&str]); 13] = [
    (
        "GET without upgrade",
        "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n",
        &["HTTP 4"],
    ),
    (
        "HEAD",
        "HEAD / HTTP/1.1\r\nHost: {host}\r\n\r\n",
        &["HTTP 4"],
    ),
    (
        "POST with a body",
        "POST /x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 11\r\n\r\nhello world",
        &["HTTP 4"],
    ),
    (
        "OPTIONS *",
        "OPTIONS * HTTP/1.1\r\nHost: {host}\r\n\r\n",
        &["HTTP 4"],
    ),
    ("HTTP/1.0 GET", "GET / HTTP/1.0\r\n\r\n", &["HTTP 4"]),
    (
        "upgrade with version 8",
        "GET /?room=x1 HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
        &["HTTP 426"],
    ),
    (
        "upgrade without key",
        "GET /?room=x1 HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        &["HTTP 400"],
    ),
    (
        "upgrade with two Host headers",
        "GET /?room=x1 HTTP/1.1\r\nHost: {host}\r\nHost: other.example\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        &["HTTP 400"],
    ),
    (
        "upgrade without Host",
        "GET /?room=x1 HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        &["HTTP 400"],
    ),
    (
        "upgrade with absolute-form target",
        "GET http://{host}/?room=x1 HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        &["upgraded"],
    ),
    (
        "upgrade with POST",
        "POST /?room=x1 HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Content-Length: 0\r\n\r\n",
        &["HTTP 405"],
    ),
    (
        "upgrade with two different keys",
        "GET /?room=x1 HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        &["HTTP 400"],
    ),
    (
        "POST with Expect: 100-continue",
        "POST /x HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
        &["HTTP 4", "HTTP 1"],
    ),
];

pub struct AttackConfig {
    pub server: SocketAddr,
    pub duration: Duration,
    /// Most attackers at once (bursts come on top, up to a few hundred).
    pub population: usize,
    pub spawn_per_sec: f64,
    /// Global budget of flood messages into attacker rooms, per second.
    pub room_flood_per_sec: f64,
    /// Global budget of attacker broadcasts (they reach every connection), per second.
    pub bcast_per_sec: f64,
    pub storm_every: Duration,
    pub swarm_every: Duration,
    /// Sockets in a silent swarm (above the server's 128 handshakes per address).
    pub swarm_size: usize,
    pub seed: u64,
}

/// Live figures for the main thread's samples.
#[derive(Default)]
pub struct AttackShared {
    pub open: AtomicUsize,
    pub spawned: AtomicU64,
    pub abort: AtomicBool,
}

#[derive(Default)]
pub struct AttackReport {
    pub spawned: BTreeMap<Kind, u64>,
    pub outcomes: BTreeMap<(Kind, String), u64>,
    /// (kind, "variant: outcome (expected ...)") → count.
    pub anomalies: BTreeMap<(Kind, String), u64>,
    pub peak_open: usize,
    pub bytes_sent: u64,
    pub bytes_by_kind: BTreeMap<Kind, u64>,
    pub elapsed: Duration,
}

impl AttackReport {
    pub fn anomaly_count(&self) -> u64 {
        self.anomalies.values().sum()
    }

    pub fn total_spawned(&self) -> u64 {
        self.spawned.values().sum()
    }
}

/// A token bucket shared by the attackers of one sort.
struct Bucket {
    rate: f64,
    tokens: f64,
    cap: f64,
}

impl Bucket {
    fn new(rate: f64) -> Bucket {
        Bucket {
            rate,
            tokens: 0.0,
            cap: (rate * 0.2).max(1.0),
        }
    }

    fn refill(&mut self, dt: Duration) {
        self.tokens = (self.tokens + self.rate * dt.as_secs_f64()).min(self.cap);
    }

    fn take(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Ctx {
    rng: Rng,
    now: Instant,
    flood: Bucket,
    bcast: Bucket,
    serial: u64,
    server: SocketAddr,
}

/// One attacker.
struct Attacker {
    kind: Kind,
    variant: usize,
    serial: u64,
    born: Instant,
    stream: TcpStream,
    /// Bytes the socket took from us.
    sent_bytes: u64,
    /// Next scripted action.
    wake: Option<Instant>,
    /// End of life: we conclude (or drain first, for non-readers).
    end: Instant,
    out: Vec<u8>,
    /// Bytes a slowloris has still to trickle.
    pending: Vec<u8>,
    inbuf: Vec<u8>,
    /// Expected `Sec-WebSocket-Accept` (empty: we sent no valid upgrade).
    accept: String,
    http_done: bool,
    upgraded: bool,
    /// Reads what arrives (non-readers read only when draining at the end).
    reading: bool,
    draining: bool,
    /// Read again at the next scan (the last pass hit its bound).
    reread: bool,
    /// Answers pings and close frames, as a polite client does.
    polite: bool,
    /// Waiting for the server to react to something we sent.
    awaiting: bool,
    /// Sent close 1000, waiting for the reply.
    closing_clean: bool,
    /// Shut our write side once `out` is flushed.
    shutdown_after_flush: bool,
    half_closed: bool,
    /// Room for messages (None: broadcast).
    room: Option<usize>,
    step: u32,
    echo_expect: u32,
    echo_got: u32,
    /// Size of the message we expect back (the oversized attacker's legal ones).
    echo_len: usize,
    /// Leave with a reset rather than a FIN.
    rst: bool,
    done: Option<String>,
}

fn short_reason(body: &str) -> String {
    let cut = body.split(':').next().unwrap_or("").trim();
    cut.chars().take(40).collect()
}

fn text_payload(prefix: &str, len: usize) -> Vec<u8> {
    let mut p = prefix.as_bytes().to_vec();
    p.extend((p.len()..len.max(p.len())).map(|i| b'a' + (i % 26) as u8));
    p
}

impl Attacker {
    fn label_eof(&self) -> String {
        if !self.http_done {
            "EOF before response".to_string()
        } else {
            "EOF after upgrade".to_string()
        }
    }

    fn finish(&mut self, label: impl Into<String>) {
        if self.done.is_none() {
            self.done = Some(label.into());
        }
    }

    fn queue_frame(&mut self, first: u8, payload: &[u8], ctx: &mut Ctx) {
        let mask = ctx.rng.mask();
        net::frame(&mut self.out, first, payload, Some(mask));
    }

    fn queue_message(&mut self, payload: &[u8], ctx: &mut Ctx) {
        self.queue_frame(FIN | wire::OPCODE_TEXT, payload, ctx);
    }

    fn start_clean_close(&mut self, ctx: &mut Ctx) {
        self.queue_frame(FIN | wire::OPCODE_CLOSE, &[0x03, 0xE8], ctx);
        self.closing_clean = true;
        self.awaiting = true;
        self.reading = true;
        self.end = ctx.now + Duration::from_secs(5);
        self.wake = None;
        self.flush();
    }

    fn flush(&mut self) {
        if self.done.is_some() {
            return;
        }
        if !self.out.is_empty() {
            let before = self.out.len();
            match net::flush(&mut self.stream, &mut self.out) {
                Ok(_) => self.sent_bytes += (before - self.out.len()) as u64,
                Err(e) => {
                    let label = if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                        format!("connect failed: {e}")
                    } else if !self.http_done {
                        "write failed before response (reset)".to_string()
                    } else {
                        "write failed after upgrade (reset)".to_string()
                    };
                    // A reset while we wrote: what did the server say before it?
                    if self.reading || self.draining {
                        self.read_pass(&mut vec![0; 4096]);
                    }
                    self.finish(label);
                    return;
                }
            }
        }
        if self.out.is_empty() && self.shutdown_after_flush && !self.half_closed {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
            self.half_closed = true;
        }
    }

    /// Reads what is there and reacts; sets `reread` if the pass hit its bound.
    fn read_pass(&mut self, buf: &mut [u8]) -> Vec<Reaction> {
        let mut reactions = Vec::new();
        for _ in 0..MAX_READS {
            match net::read_once(&mut self.stream, buf) {
                ReadResult::Data(n) => {
                    self.inbuf.extend_from_slice(&buf[..n]);
                    self.process(&mut reactions);
                    if self.done.is_some() {
                        return reactions;
                    }
                    if self.inbuf.len() > MAX_INBUF {
                        self.finish("server sent more than 2 MiB we could not parse");
                        return reactions;
                    }
                }
                ReadResult::WouldBlock => return reactions,
                ReadResult::Eof => {
                    let label = self.label_eof();
                    self.finish(label);
                    return reactions;
                }
                ReadResult::Failed(e) => {
                    let label = match (e.raw_os_error(), self.http_done) {
                        (Some(libc::ECONNRESET), false) => "reset before response".to_string(),
                        (Some(libc::ECONNRESET), true) => "reset after upgrade".to_string(),
                        (Some(libc::ECONNREFUSED), _) => format!("connect failed: {e}"),
                        _ => format!("read failed: {e}"),
                    };
                    self.finish(label);
                    return reactions;
                }
            }
        }
        self.reread = true;
        reactions
    }

    /// Parses what was read: the response head, then frames.
    fn process(&mut self, reactions: &mut Vec<Reaction>) {
        if !self.http_done {
            let head = match net::parse_response(&self.inbuf) {
                Ok(Some(head)) => head,
                Ok(None) => return,
                Err(e) => {
                    self.finish(format!("bad response: {e}"));
                    return;
                }
            };
            if head.status == 100 {
                // `100 Continue`: the real answer follows.
                self.inbuf.drain(..head.head_len);
                return self.process(reactions);
            }
            self.http_done = true;
            if head.status != 101 {
                let reason = short_reason(&head.body);
                self.finish(if reason.is_empty() {
                    format!("HTTP {}", head.status)
                } else {
                    format!("HTTP {} {reason}", head.status)
                });
                return;
            }
            if !self.accept.is_empty() && head.accept.as_deref() != Some(self.accept.as_str()) {
                self.finish("101 with a wrong Sec-WebSocket-Accept");
                return;
            }
            self.inbuf.drain(..head.head_len);
            self.upgraded = true;
            reactions.push(Reaction::Upgraded);
        }
        let data = std::mem::take(&mut self.inbuf);
        let mut used = 0;
        loop {
            let frame = match wire::parse_server_frame(&data[used..]) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    self.finish(format!("bad frame from server: {e}"));
                    break;
                }
            };
            used += frame.len;
            match frame.opcode {
                wire::OPCODE_TEXT | wire::OPCODE_BINARY | wire::OPCODE_CONTINUATION => {
                    reactions.push(Reaction::Data(frame.payload.to_vec()));
                }
                wire::OPCODE_PING if self.polite => {
                    reactions.push(Reaction::Pong(frame.payload.to_vec()));
                }
                wire::OPCODE_PING | wire::OPCODE_PONG => {}
                wire::OPCODE_CLOSE => {
                    let (code, reason) = net::close_parts(frame.payload);
                    let code = code.map_or("without code".to_string(), |c| c.to_string());
                    if self.closing_clean {
                        self.finish(format!("clean close {code}"));
                    } else {
                        if self.polite {
                            reactions.push(Reaction::CloseReply(frame.payload.to_vec()));
                        }
                        let reason = short_reason(&reason);
                        self.finish(format!("close {code} {reason}").trim_end().to_string());
                    }
                    break;
                }
                other => {
                    self.finish(format!("unknown opcode {other:#x} from server"));
                    break;
                }
            }
        }
        self.inbuf = data;
        self.inbuf.drain(..used);
    }
}

/// What reading asks the script to do.
enum Reaction {
    Upgraded,
    Data(Vec<u8>),
    Pong(Vec<u8>),
    CloseReply(Vec<u8>),
}

/// Picks a kind by weight.
fn pick_kind(rng: &mut Rng) -> Kind {
    let total: u64 = Kind::ALL.iter().map(|k| k.weight()).sum();
    let mut x = rng.range(0, total - 1);
    for k in Kind::ALL {
        if x < k.weight() {
            return k;
        }
        x -= k.weight();
    }
    Kind::Legal
}

/// Source address of general attackers: 127.0.0.10 ..= 127.0.0.59.
fn general_source(rng: &mut Rng) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 10 + rng.below(50) as u8)
}

/// Builds the attacker (connects; the script starts when the socket is ready).
fn spawn(kind: Kind, variant: usize, source: Ipv4Addr, ctx: &mut Ctx) -> Result<Attacker, String> {
    let rcvbuf = (kind == Kind::SlowReader).then_some(2048);
    let stream = net::connect(ctx.server, source, rcvbuf).map_err(|e| format!("{e}"))?;
    ctx.serial += 1;
    let now = ctx.now;
    // Only the kinds that flood or listen to floods join the flooded rooms; half of
    // them the first, which so gets half the flood: enough to fill a slow reader's
    // queue (behind the ~2 MB the kernel buffers on loopback) within seconds.
    let flooded =
        matches!(kind, Kind::SlowReader | Kind::Flooder) || (kind, variant) == (Kind::Legal, 1);
    let room = Some(if flooded {
        if ctx.rng.chance(0.5) {
            0
        } else {
            1 + ctx.rng.below(FLOOD_ROOMS - 1)
        }
    } else {
        FLOOD_ROOMS + ctx.rng.below(QUIET_ROOMS)
    });
    let mut a = Attacker {
        kind,
        variant,
        serial: ctx.serial,
        born: now,
        stream,
        sent_bytes: 0,
        wake: None,
        end: now + Duration::from_secs(15),
        out: Vec::new(),
        pending: Vec::new(),
        inbuf: Vec::new(),
        accept: String::new(),
        http_done: false,
        upgraded: false,
        reading: true,
        draining: false,
        reread: false,
        polite: false,
        awaiting: false,
        closing_clean: false,
        shutdown_after_flush: false,
        half_closed: false,
        room,
        step: 0,
        echo_expect: 0,
        echo_got: 0,
        echo_len: 0,
        rst: false,
        done: None,
    };
    let rng = &mut ctx.rng;
    let target = |room: Option<usize>, fallback: &str| match room {
        Some(r) if r < FLOOD_ROOMS => format!("/?room=x{r}"),
        Some(r) => format!("/?room=q{}", r - FLOOD_ROOMS),
        None => fallback.to_string(),
    };
    let upgrade = |a: &mut Attacker, target: &str| {
        let up = net::upgrade(target, ctx.server);
        a.accept = up.accept;
        a.out.extend_from_slice(&up.request);
    };
    match kind {
        Kind::SlowReader => {
            if variant == 1 {
                a.room = None;
            }
            {
                let t = target(a.room, "/slow");
                upgrade(&mut a, &t)
            };
            a.reading = false;
            a.end = now + rng.millis(3_000, 20_000);
        }
        Kind::Flooder => {
            if variant == 2 {
                a.room = None;
            }
            {
                let t = target(a.room, "/flood");
                upgrade(&mut a, &t)
            };
            a.end = now + rng.millis(2_000, 15_000);
            if variant == 1 {
                // Frames pipelined right behind the request; never reads.
                a.reading = false;
                a.wake = Some(now);
                a.end = now + rng.millis(3_000, 20_000);
            }
        }
        Kind::Reset => {
            {
                let t = target(a.room, "/reset");
                upgrade(&mut a, &t)
            };
            a.end = now + Duration::from_secs(10);
            match variant {
                0 => {
                    let cut = rng.range(1, a.out.len() as u64 - 1) as usize;
                    a.out.truncate(cut);
                    a.wake = Some(now + rng.millis(0, 300));
                }
                2 => {
                    a.reading = false;
                    a.wake = Some(now + rng.millis(0, 50));
                }
                _ => {}
            }
        }
        Kind::HalfOpen => {
            {
                let t = target(a.room, "/half");
                upgrade(&mut a, &t)
            };
            a.awaiting = true;
            a.end = now + Duration::from_secs(20);
            match variant {
                0 => a.shutdown_after_flush = true,
                2 => {
                    let cut = rng.range(1, a.out.len() as u64 - 1) as usize;
                    a.out.truncate(cut);
                    a.shutdown_after_flush = true;
                }
                _ => {}
            }
        }
        Kind::Garbage => {
            a.end = now + Duration::from_secs(15);
            match variant {
                0 => {
                    let n = rng.range(1, 2048) as usize;
                    let mut junk = rng.bytes(n);
                    // Never a letter first: not the start of a method by chance.
                    junk[0] |= 0x80;
                    a.out = junk;
                    a.awaiting = true;
                }
                1 => {
                    a.out = b"GET / HTTP/1.1\r\n".to_vec();
                    let n = rng.range(1, 512) as usize;
                    let mut junk = rng.bytes(n);
                    junk[0] = 0x01;
                    a.out.extend(junk);
                    a.out.extend_from_slice(b"\r\n\r\n");
                    a.awaiting = true;
                }
                _ => {
                    let t = target(a.room, "/garbage");
                    upgrade(&mut a, &t)
                }
            }
        }
        Kind::Malformed => {
            {
                let t = target(a.room, "/malformed");
                upgrade(&mut a, &t)
            };
            a.end = now + Duration::from_secs(15);
        }
        Kind::Slowloris => {
            let up = net::upgrade(&target(a.room, "/slowloris"), ctx.server);
            a.accept = up.accept;
            a.pending = if variant == 0 {
                up.request
            } else {
                format!("GET /?room=x1 HTTP/1.1\r\nHost: {}\r\n", ctx.server).into_bytes()
            };
            a.wake = Some(now);
            a.awaiting = true;
            a.end = now + Duration::from_secs(25);
        }
        Kind::Silent => match variant {
            0 => {
                a.awaiting = true;
                a.end = now + Duration::from_secs(25);
            }
            1 => {
                a.reading = false;
                a.end = now + rng.millis(3_000, 20_000);
            }
            2 => {
                {
                    let t = target(a.room, "/silent");
                    upgrade(&mut a, &t)
                };
                a.end = now + rng.millis(10_000, 90_000);
            }
            _ => a.end = now,
        },
        Kind::Oversized => {
            a.end = now + Duration::from_secs(20);
            a.awaiting = true;
            match variant {
                2 => {
                    a.out = format!(
                        "GET /?room=x1 HTTP/1.1\r\nHost: {}\r\nX-Big: {}\r\n\r\n",
                        ctx.server,
                        "a".repeat(10_000)
                    )
                    .into_bytes();
                }
                3 => {
                    a.out = format!(
                        "POST /upload HTTP/1.1\r\nHost: {}\r\nContent-Length: 100000\r\n\r\n",
                        ctx.server
                    )
                    .into_bytes();
                }
                4 => {
                    let mut req = format!("GET /?room=x1 HTTP/1.1\r\nHost: {}\r\n", ctx.server);
                    for i in 0..100 {
                        req.push_str(&format!("X-H{i}: v\r\n"));
                    }
                    req.push_str("\r\n");
                    a.out = req.into_bytes();
                }
                5 | 6 => {
                    a.room = None;
                    {
                        let t = format!("/?room=o{}", a.serial);
                        upgrade(&mut a, &t)
                    };
                    a.polite = true;
                }
                _ => {
                    let t = target(a.room, "/oversized");
                    upgrade(&mut a, &t)
                }
            }
        }
        Kind::Reconnect => {
            {
                let t = target(a.room, "/reconnect");
                upgrade(&mut a, &t)
            };
            a.end = now + Duration::from_secs(10);
            a.polite = true;
        }
        Kind::PlainHttp => {
            let host = ctx.server.to_string();
            a.out = PLAIN[variant].1.replace("{host}", &host).into_bytes();
            a.awaiting = true;
            a.end = now + Duration::from_secs(10);
        }
        Kind::Legal => {
            a.polite = true;
            a.end = now + Duration::from_secs(20);
            match variant {
                0 => {
                    a.room = None;
                    {
                        let t = format!("/?room=l{}", a.serial);
                        upgrade(&mut a, &t)
                    };
                }
                1 => {
                    let t = target(a.room, "/legal");
                    upgrade(&mut a, &t)
                }
                _ => {
                    a.room = None;
                    upgrade(&mut a, "/legal");
                }
            }
        }
    }
    Ok(a)
}

impl Attacker {
    /// Readiness: write what is queued, read what came, react.
    fn on_event(&mut self, ctx: &mut Ctx, buf: &mut [u8]) {
        self.flush();
        if self.done.is_some() || !self.reading {
            return;
        }
        let reactions = self.read_pass(buf);
        self.react(reactions, ctx);
        self.flush();
    }

    fn react(&mut self, reactions: Vec<Reaction>, ctx: &mut Ctx) {
        for r in reactions {
            match r {
                Reaction::Upgraded => self.on_upgraded(ctx),
                Reaction::Data(payload) => self.on_data(&payload, ctx),
                Reaction::Pong(payload) => self.queue_frame(FIN | wire::OPCODE_PONG, &payload, ctx),
                Reaction::CloseReply(payload) => {
                    let code = payload.get(..2).unwrap_or(&[0x03, 0xE8]).to_vec();
                    self.queue_frame(FIN | wire::OPCODE_CLOSE, &code, ctx);
                }
            }
        }
    }

    /// Scheduled work: the script's next step, the end of life.
    fn tick(&mut self, ctx: &mut Ctx, buf: &mut [u8]) {
        if self.done.is_some() {
            return;
        }
        if self.reread && self.reading {
            self.reread = false;
            let reactions = self.read_pass(buf);
            self.react(reactions, ctx);
        }
        if self.done.is_none() && self.wake.is_some_and(|w| ctx.now >= w) {
            self.wake = None;
            self.act(ctx);
        }
        if self.done.is_none() && ctx.now >= self.end {
            self.end_of_life(ctx, buf);
        }
        self.flush();
    }

    fn end_of_life(&mut self, ctx: &mut Ctx, buf: &mut [u8]) {
        if self.closing_clean {
            self.finish("no reply to our close within 5 s");
        } else if !self.reading {
            // A non-reader: read what the server left, to see how it ended it.
            self.reading = true;
            self.draining = true;
            self.end = ctx.now + DRAIN;
            let reactions = self.read_pass(buf);
            // Only to see what happened: no more sending.
            drop(reactions);
        } else if self.draining {
            self.finish("open at end of life");
        } else if self.awaiting {
            let secs = ctx.now.duration_since(self.born).as_secs();
            self.finish(format!("no answer within {secs} s"));
        } else if self.upgraded && ctx.rng.chance(0.3) {
            self.start_clean_close(ctx);
        } else {
            self.rst = ctx.rng.chance(0.5);
            self.finish("ended by us");
        }
    }

    fn on_upgraded(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        match self.kind {
            Kind::Flooder => self.wake = Some(now),
            Kind::Reset => {
                if self.variant == 3 {
                    let msg = text_payload("X reset ", ctx.rng.range(10, 500) as usize);
                    if ctx.flood.take() {
                        self.queue_message(&msg, ctx);
                    }
                }
                if self.variant == 1 || self.variant == 3 {
                    let declared = ctx.rng.range(100, 60_000);
                    let sent = ctx.rng.range(0, declared - 1) as usize;
                    let mask = ctx.rng.mask();
                    net::frame_header(&mut self.out, FIN | wire::OPCODE_TEXT, declared, Some(mask));
                    self.out.extend(std::iter::repeat_n(b'r', sent));
                    self.wake = Some(now + ctx.rng.millis(0, 200));
                }
            }
            Kind::HalfOpen if self.variant == 1 => {
                if ctx.flood.take() {
                    let msg = text_payload("X half ", 64);
                    self.queue_message(&msg, ctx);
                }
                self.shutdown_after_flush = true;
            }
            Kind::Garbage => {
                let n = ctx.rng.range(1, 4096) as usize;
                let junk = ctx.rng.bytes(n);
                self.out.extend(junk);
            }
            Kind::Malformed => {
                self.queue_malformed(ctx);
                self.awaiting = true;
                self.end = now + Duration::from_secs(15);
            }
            Kind::Oversized => match self.variant {
                0 => {
                    let declared = ctx.rng.range((1 << 20) + 1, 64 << 20);
                    let mask = ctx.rng.mask();
                    net::frame_header(&mut self.out, FIN | wire::OPCODE_TEXT, declared, Some(mask));
                    self.out.extend(std::iter::repeat_n(b'o', 100));
                }
                1 => self.wake = Some(now),
                5 | 6 => {
                    self.echo_len = if self.variant == 5 {
                        ctx.rng.range(LARGE_LEGAL.0, LARGE_LEGAL.1) as usize
                    } else {
                        HUGE_LEGAL
                    };
                    let msg = text_payload(&format!("O{}:", self.serial), self.echo_len);
                    self.queue_message(&msg, ctx);
                    self.echo_expect = 1;
                }
                _ => {}
            },
            Kind::Reconnect => match self.variant {
                0 => self.start_clean_close(ctx),
                1 => self.finish("ended by us"),
                2 => {
                    self.rst = true;
                    self.finish("reset by us");
                }
                _ => {
                    if ctx.flood.take() {
                        let msg = text_payload("X reconnect ", 32);
                        self.queue_message(&msg, ctx);
                    }
                    self.wake = Some(now + Duration::from_millis(20));
                }
            },
            Kind::PlainHttp => self.finish("upgraded"),
            Kind::Legal => self.legal_start(ctx),
            _ => {}
        }
    }

    fn legal_start(&mut self, ctx: &mut Ctx) {
        match self.variant {
            0 => {
                let n = ctx.rng.range(1, 20) as u32;
                for i in 0..n {
                    let len = ctx.rng.range(1, 4096) as usize;
                    let msg = text_payload(&format!("L{}:{i}:", self.serial), len);
                    if ctx.rng.chance(0.2) && msg.len() > 8 {
                        // Legal fragments: echoed as one message.
                        let cut = msg.len() / 2;
                        self.queue_frame(wire::OPCODE_TEXT, &msg[..cut], ctx);
                        self.queue_frame(FIN | wire::OPCODE_CONTINUATION, &msg[cut..], ctx);
                    } else {
                        self.queue_message(&msg, ctx);
                    }
                    if ctx.rng.chance(0.3) {
                        self.queue_frame(FIN | wire::OPCODE_PING, b"ping", ctx);
                    }
                    if ctx.rng.chance(0.1) {
                        // Binary: the broadcast example ignores it.
                        self.queue_frame(FIN | wire::OPCODE_BINARY, &[1, 2, 3], ctx);
                    }
                }
                self.echo_expect = n;
            }
            1 => {
                for i in 0..ctx.rng.range(1, 5) {
                    if ctx.flood.take() {
                        let msg = text_payload(&format!("X legal {i} "), 100);
                        self.queue_message(&msg, ctx);
                    }
                }
                self.wake = Some(ctx.now + ctx.rng.millis(200, 3_000));
            }
            _ => {
                if ctx.bcast.take() {
                    let msg = text_payload("X hello everyone ", 64);
                    self.queue_message(&msg, ctx);
                }
                self.wake = Some(ctx.now + ctx.rng.millis(100, 1_000));
            }
        }
    }

    fn on_data(&mut self, payload: &[u8], ctx: &mut Ctx) {
        let prefix = match (self.kind, self.variant) {
            (Kind::Legal, 0) => format!("L{}:{}:", self.serial, self.echo_got),
            (Kind::Oversized, 5 | 6) => format!("O{}:", self.serial),
            _ => return,
        };
        let ours = match self.kind {
            Kind::Legal => format!("L{}:", self.serial),
            _ => prefix.clone(),
        };
        if !payload.starts_with(ours.as_bytes()) {
            return; // someone's broadcast
        }
        if !payload.starts_with(prefix.as_bytes())
            || (self.kind == Kind::Oversized && payload.len() != self.echo_len)
        {
            self.finish(format!("echo mismatch (got {} bytes)", payload.len()));
            return;
        }
        self.echo_got += 1;
        if self.echo_got == self.echo_expect {
            self.start_clean_close(ctx);
        }
    }

    /// The scripted step at `wake`.
    fn act(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        match self.kind {
            Kind::Flooder => {
                let broadcast = self.room.is_none();
                let mut sent = 0;
                while self.out.len() < OUT_HIGH && sent < 64 {
                    let bucket = if broadcast {
                        &mut ctx.bcast
                    } else {
                        &mut ctx.flood
                    };
                    if !bucket.take() {
                        break;
                    }
                    let len = if broadcast {
                        ctx.rng.range(16, 512)
                    } else {
                        ctx.rng.range(16, 2048)
                    };
                    let msg = text_payload("X flood ", len as usize);
                    self.queue_message(&msg, ctx);
                    sent += 1;
                }
                self.wake = Some(now + Duration::from_millis(5));
            }
            Kind::Reset => {
                self.rst = true;
                self.finish("reset by us");
            }
            Kind::Slowloris => {
                if self.variant == 0 {
                    let n = (ctx.rng.range(1, 3) as usize).min(self.pending.len());
                    self.out.extend(self.pending.drain(..n));
                    if !self.pending.is_empty() {
                        self.wake = Some(now + ctx.rng.millis(300, 1_500));
                    }
                } else {
                    if !self.pending.is_empty() {
                        self.out.append(&mut self.pending);
                    }
                    self.step += 1;
                    self.out
                        .extend(format!("X-Pad-{}: {}\r\n", self.step, self.serial).bytes());
                    self.wake = Some(now + ctx.rng.millis(200, 800));
                }
            }
            // Text fragments of 64 KiB: 17 of them pass 1 MiB.
            Kind::Oversized if self.variant == 1 && self.step < 17 => {
                if self.out.len() < OUT_HIGH {
                    let first = if self.step == 0 {
                        wire::OPCODE_TEXT
                    } else {
                        wire::OPCODE_CONTINUATION
                    };
                    let chunk = vec![b'f'; 64 * 1024];
                    self.queue_frame(first, &chunk, ctx);
                    self.step += 1;
                }
                self.wake = Some(now + Duration::from_millis(5));
            }
            Kind::Reconnect => {
                if self.out.is_empty() {
                    self.finish("ended by us");
                } else {
                    self.wake = Some(now + Duration::from_millis(20));
                }
            }
            Kind::Legal => self.start_clean_close(ctx),
            _ => {}
        }
    }

    fn queue_malformed(&mut self, ctx: &mut Ctx) {
        let key = ctx.rng.mask();
        let mask = Some(key);
        let out = &mut self.out;
        match self.variant {
            0 => net::frame(out, FIN | wire::OPCODE_TEXT, b"unmasked", None),
            1 => net::frame(out, FIN | RSV1 | wire::OPCODE_TEXT, b"rsv1", mask),
            2 => net::frame(out, FIN | 0x3, b"op3", mask),
            3 => net::frame(out, FIN | 0xB, b"opB", mask),
            4 => net::frame(out, FIN | wire::OPCODE_PING, &[b'p'; 126], mask),
            5 => net::frame(out, wire::OPCODE_PING, b"frag", mask),
            6 => net::frame(out, FIN | wire::OPCODE_CONTINUATION, b"cont", mask),
            7 => {
                net::frame(out, wire::OPCODE_TEXT, b"ab", mask);
                net::frame(out, FIN | wire::OPCODE_TEXT, b"cd", mask);
            }
            8 => net::frame(
                out,
                FIN | wire::OPCODE_TEXT,
                &[b'o', 0xff, 0xfe, b'k'],
                mask,
            ),
            9 => {
                net::frame(out, wire::OPCODE_TEXT, &[b'a', 0xce], mask);
                net::frame(out, FIN | wire::OPCODE_CONTINUATION, &[0xff, b'b'], mask);
            }
            10 => net::frame(out, FIN | wire::OPCODE_CLOSE, &[0x03], mask),
            11 => net::frame(out, FIN | wire::OPCODE_CLOSE, &1005u16.to_be_bytes(), mask),
            12 => net::frame(out, FIN | wire::OPCODE_CLOSE, &999u16.to_be_bytes(), mask),
            13 => net::frame(out, FIN | wire::OPCODE_CLOSE, &5000u16.to_be_bytes(), mask),
            14 => net::frame(
                out,
                FIN | wire::OPCODE_CLOSE,
                &[0x03, 0xE8, 0xff, 0xfe],
                mask,
            ),
            _ => {
                out.push(FIN | wire::OPCODE_BINARY);
                out.push(0x80 | 127);
                out.extend_from_slice(&(0x8000_0000_0000_0010u64).to_be_bytes());
                out.extend_from_slice(&key);
                out.extend_from_slice(&[0u8; 16]);
            }
        }
    }
}

/// What a correct server's outcome for this kind and variant starts with
/// (besides the ones always accepted); empty: anything goes.
fn expected(kind: Kind, variant: usize) -> &'static [&'static str] {
    match (kind, variant) {
        (Kind::Flooder, 0 | 2) => &["ended by us", "clean close 1000"],
        (Kind::Reset, _) => &["reset by us"],
        (Kind::HalfOpen, _) => &["EOF", "close ", "HTTP ", "reset", "write failed"],
        (Kind::Garbage, 0 | 1) => &["HTTP 400"],
        (Kind::Malformed, v) => MALFORMED[v].1,
        // The handshake timeout closes without an answer; bytes that arrived after the
        // server's last read turn that close into a reset.
        (Kind::Slowloris, _) | (Kind::Silent, 0) => {
            &["HTTP 408", "EOF before response", "reset before response"]
        }
        (Kind::Silent, 3) => &["ended by us"],
        (Kind::Oversized, 0 | 1) => &["close 1009"],
        (Kind::Oversized, 2 | 4) => &["HTTP 431"],
        (Kind::Oversized, 3) => &["HTTP 413"],
        (Kind::Oversized, 5) => &["clean close 1000"],
        // Larger than max_backpressure: taken only into an empty queue, so a reader that
        // had anything else queued at that moment is closed as a slow consumer (policy).
        (Kind::Oversized, 6) => &["clean close 1000", "close 1008 slow consumer"],
        (Kind::Reconnect, _) => &["ended by us", "clean close 1000", "reset by us"],
        (Kind::PlainHttp, v) => PLAIN[v].2,
        (Kind::Legal, _) => &["clean close 1000"],
        _ => &[],
    }
}

/// Outcomes a correct server may give any attacker: refused by the
/// per-address limits (with the 503 read), or still going when the storm ended.
const ALWAYS_OK: [&str; 2] = ["HTTP 503 too many", "storm over"];

fn variant_name(kind: Kind, variant: usize) -> String {
    match kind {
        Kind::Malformed => MALFORMED[variant].0.to_string(),
        Kind::PlainHttp => PLAIN[variant].0.to_string(),
        _ => format!("variant {variant}"),
    }
}

fn record(report: &mut AttackReport, kind: Kind, variant: usize, label: String) {
    let allowed = expected(kind, variant);
    let ok = allowed.is_empty()
        || allowed.iter().any(|p| label.starts_with(p))
        || ALWAYS_OK.iter().any(|p| label.starts_with(p));
    if !ok {
        let what = format!(
            "{}: got \"{label}\", expected {}",
            variant_name(kind, variant),
            allowed.join(" or ")
        );
        *report.anomalies.entry((kind, what)).or_default() += 1;
    }
    *report.outcomes.entry((kind, label)).or_default() += 1;
}

/// Runs the storm for `cfg.duration`, then closes every attacker.
pub fn run(cfg: &AttackConfig, shared: &AttackShared) -> Result<AttackReport, String> {
    let start = Instant::now();
    let storm_end = start + cfg.duration;
    let mut poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
    let mut events = Events::with_capacity(4096);
    let mut slab: Slab<Attacker> = Slab::with_capacity(cfg.population + 1024);
    let mut ctx = Ctx {
        rng: Rng::new(cfg.seed),
        now: start,
        flood: Bucket::new(cfg.room_flood_per_sec),
        bcast: Bucket::new(cfg.bcast_per_sec),
        serial: 0,
        server: cfg.server,
    };
    let mut report = AttackReport::default();
    let mut buf = vec![0u8; READ_BUF_LEN];
    let mut last = start;
    let mut spawn_budget = 0.0f64;
    let mut next_storm = start + cfg.storm_every / 2;
    let mut next_swarm = start + cfg.swarm_every / 3;
    let mut swarm_addr = 0u8;
    let mut storm_addr = 0u8;
    let mut next_scan = start;
    let mut finished: Vec<usize> = Vec::new();

    // Bounded by `storm_end` (and the abort flag).
    loop {
        let now = Instant::now();
        if now >= storm_end || shared.abort.load(Ordering::Relaxed) {
            break;
        }
        ctx.now = now;
        let dt = now - last;
        last = now;
        ctx.flood.refill(dt);
        ctx.bcast.refill(dt);

        // Spawning: individual attackers up to the population, then bursts.
        spawn_budget = (spawn_budget + cfg.spawn_per_sec * dt.as_secs_f64()).min(50.0);
        let mut births: Vec<(Kind, usize, Ipv4Addr)> = Vec::new();
        while spawn_budget >= 1.0 && slab.len() + births.len() < cfg.population {
            spawn_budget -= 1.0;
            let kind = pick_kind(&mut ctx.rng);
            let variant = ctx.rng.below(kind.variants());
            births.push((kind, variant, general_source(&mut ctx.rng)));
        }
        if now >= next_storm {
            next_storm = now + cfg.storm_every;
            storm_addr = (storm_addr + 1) % 4;
            let source = Ipv4Addr::new(127, 0, 0, 200 + storm_addr);
            for _ in 0..ctx.rng.range(50, 200) {
                let variant = ctx.rng.below(Kind::Reconnect.variants());
                births.push((Kind::Reconnect, variant, source));
            }
        }
        if now >= next_swarm {
            next_swarm = now + cfg.swarm_every;
            swarm_addr = (swarm_addr + 1) % 4;
            let source = Ipv4Addr::new(127, 0, 0, 210 + swarm_addr);
            for _ in 0..cfg.swarm_size {
                births.push((Kind::Silent, 0, source));
            }
        }
        for (kind, variant, source) in births {
            *report.spawned.entry(kind).or_default() += 1;
            shared.spawned.fetch_add(1, Ordering::Relaxed);
            match spawn(kind, variant, source, &mut ctx) {
                Ok(mut a) => {
                    let entry = slab.vacant_entry();
                    let token = Token(entry.key());
                    if let Err(e) = poll.registry().register(
                        &mut a.stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        return Err(format!("cannot register an attacker socket: {e}"));
                    }
                    a.flush();
                    entry.insert(a);
                }
                Err(e) => record(&mut report, kind, variant, format!("connect failed: {e}")),
            }
        }
        report.peak_open = report.peak_open.max(slab.len());

        let timeout = next_scan
            .saturating_duration_since(Instant::now())
            .min(SCAN_EVERY);
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => events.clear(),
            Err(e) => return Err(format!("poll failed: {e}")),
        }
        ctx.now = Instant::now();
        for event in events.iter() {
            let k = event.token().0;
            if let Some(a) = slab.get_mut(k) {
                a.on_event(&mut ctx, &mut buf);
                if a.done.is_some() {
                    finished.push(k);
                }
            }
        }
        if ctx.now >= next_scan {
            next_scan = ctx.now + SCAN_EVERY;
            for (k, a) in slab.iter_mut() {
                a.tick(&mut ctx, &mut buf);
                if a.done.is_some() {
                    finished.push(k);
                }
            }
        }
        finished.sort_unstable();
        finished.dedup();
        for k in finished.drain(..) {
            let a = slab.remove(k);
            conclude(a, &mut report);
        }
        shared.open.store(slab.len(), Ordering::Relaxed);
    }

    // The storm is over: see what the non-readers were left with, then leave
    // (half with a FIN, half with a reset).
    ctx.now = Instant::now();
    let keys: Vec<usize> = slab.iter().map(|(k, _)| k).collect();
    for k in keys {
        let mut a = slab.remove(k);
        if a.done.is_none() {
            if !a.reading {
                a.reading = true;
                let _ = a.read_pass(&mut buf);
            }
            if a.done.is_none() {
                let state = if a.upgraded {
                    "open"
                } else if a.http_done {
                    "answered"
                } else {
                    "handshaking"
                };
                a.done = Some(format!("storm over: {state}"));
                a.rst = ctx.rng.chance(0.5);
            }
        }
        conclude(a, &mut report);
    }
    shared.open.store(0, Ordering::Relaxed);
    report.elapsed = start.elapsed();
    Ok(report)
}

fn conclude(a: Attacker, report: &mut AttackReport) {
    report.bytes_sent += a.sent_bytes;
    *report.bytes_by_kind.entry(a.kind).or_default() += a.sent_bytes;
    if a.rst {
        net::reset_on_close(&a.stream);
    }
    let label = a.done.clone().unwrap_or_else(|| "?".to_string());
    record(report, a.kind, a.variant, label);
    // Dropping the stream closes it.
}

/// Opens `n` idle WebSocket connections at once (upgraded, in quiet rooms, at
/// most `MAX_PREFILL_HANDSHAKES` handshakes in flight), holds them for `hold`,
/// then closes them. Run at the end of the warm-up with `n` above what the
/// storm can have open at once, so that what the server sizes by its number
/// of connections (its connection table, above all, which keeps its capacity)
/// is as large in the baseline as the storm can make it. Returns how many were
/// upgraded and how many were not.
pub fn prefill(
    server: SocketAddr,
    n: usize,
    hold: Duration,
    timeout: Duration,
) -> Result<(usize, usize), String> {
    const MAX_PREFILL_HANDSHAKES: usize = 256;
    let deadline = Instant::now() + timeout;
    let mut poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
    let mut events = Events::with_capacity(1024);
    /// A socket, what it has still to send, what it got, whether it was upgraded.
    type Idle = (TcpStream, Vec<u8>, Vec<u8>, Option<bool>);
    let mut conns: Vec<Idle> = Vec::with_capacity(n);
    let mut buf = vec![0u8; 16 * 1024];
    let (mut pending, mut upgraded, mut failed) = (0usize, 0usize, 0usize);
    // Bounded by `deadline`.
    while upgraded + failed < n {
        if Instant::now() > deadline {
            return Err(format!(
                "prefill: only {upgraded} of {n} connections upgraded within {timeout:?}"
            ));
        }
        while conns.len() < n && pending < MAX_PREFILL_HANDSHAKES {
            let i = conns.len();
            let source = Ipv4Addr::new(127, 0, 0, 10 + (i % 50) as u8);
            let mut stream = net::connect(server, source, None)
                .map_err(|e| format!("prefill: connect from {source}: {e}"))?;
            poll.registry()
                .register(
                    &mut stream,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map_err(|e| format!("prefill: register: {e}"))?;
            let up = net::upgrade(&format!("/?room=q{}", i % QUIET_ROOMS), server);
            conns.push((stream, up.request, Vec::new(), None));
            pending += 1;
        }
        match poll.poll(&mut events, Some(Duration::from_millis(10))) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("prefill: poll failed: {e}")),
        }
        for event in events.iter() {
            let Some((stream, out, inbuf, done)) = conns.get_mut(event.token().0) else {
                continue;
            };
            if done.is_some() {
                continue;
            }
            let mut ok = net::flush(stream, out).is_ok();
            // Bounded: a short response, a few reads at most.
            for _ in 0..4 {
                match net::read_once(stream, &mut buf) {
                    ReadResult::Data(k) => inbuf.extend_from_slice(&buf[..k]),
                    ReadResult::WouldBlock => break,
                    ReadResult::Eof | ReadResult::Failed(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            let verdict = match net::parse_response(inbuf) {
                Ok(Some(head)) => Some(head.status == 101),
                Ok(None) if ok => None,
                _ => Some(false),
            };
            if let Some(v) = verdict {
                *done = Some(v);
                pending -= 1;
                if v {
                    upgraded += 1;
                } else {
                    failed += 1;
                }
            }
        }
    }
    std::thread::sleep(hold);
    drop(conns);
    Ok((upgraded, failed))
}
