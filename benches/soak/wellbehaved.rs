//! The well-behaved clients, on a thread and a mio loop of their own so the
//! attackers' work never delays their reading.
//!
//! `rooms × per_room` clients join rooms (`?room=soak-rN`) and
//! `broadcasters` join none. Each sends sequenced text messages at a fixed
//! rate with jitter: a room member's go to its room (itself included), a
//! broadcaster's to every connection. Every client checks that it gets every
//! message of its room's members and of every broadcaster exactly once, in
//! order per sender, with the exact bytes sent, and no other well-behaved
//! message; anything the attackers broadcast is counted and skipped. A close,
//! EOF or error on any of them is a failure: they must never be disconnected.
//!
//! While the storm is on, a new *probe* client connects every
//! `probe_every` (from its own source address), must be upgraded, gets its
//! own message back through its private room and closes cleanly: a refused or
//! failed probe is a well-behaved client refused.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::net::{self, ReadResult, Rng};
use crate::sys::Clock;
use crate::wire;

/// Tokens of probes start here (clients are 0..N).
const PROBE_TOKEN_BASE: usize = 1 << 20;
/// Longest a probe may take from connect to its close reply.
const PROBE_DEADLINE: Duration = Duration::from_secs(10);
/// Most probes in flight at once.
const MAX_PROBES: usize = 4;
/// Time allowed to open all clients before the storm.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Time allowed for the final close handshakes.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of the fixed message header: `WB sss qqqqqqqqq tttttttttttttttttttt `.
const HEADER_LEN: usize = 38;
const READ_BUF_LEN: usize = 64 * 1024;
/// Reads per readiness event before coming back later (the loop re-reads).
const MAX_READS_PER_EVENT: usize = 64;

pub struct WbConfig {
    pub server: SocketAddr,
    pub rooms: usize,
    pub per_room: usize,
    pub broadcasters: usize,
    /// Messages per second of each room member.
    pub room_rate: f64,
    /// Messages per second of each broadcaster.
    pub bcast_rate: f64,
    /// Largest extra payload beyond the header (room members; broadcasters use a quarter).
    pub max_extra: usize,
    pub probe_every: Duration,
    pub source: Ipv4Addr,
    pub probe_source: Ipv4Addr,
    pub seed: u64,
    /// The thread fails itself if it is still running after this long.
    pub max_life: Duration,
    pub clock: Clock,
}

/// What the main thread and this one share.
#[derive(Default)]
pub struct WbShared {
    /// Every client is open.
    pub ready: AtomicBool,
    /// Probes run while this is set.
    pub storm: AtomicBool,
    pub stop_sending: AtomicBool,
    /// Sending stopped and every message reached every recipient.
    pub drained: AtomicBool,
    pub quit: AtomicBool,
    pub failure: Mutex<Option<String>>,
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    pub probes_ok: AtomicU64,
}

impl WbShared {
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().map(|f| f.clone()).unwrap_or(None)
    }

    fn fail(&self, why: String) {
        if let Ok(mut f) = self.failure.lock() {
            f.get_or_insert(why);
        }
    }
}

pub struct WbReport {
    pub clients: usize,
    pub rooms: usize,
    pub broadcasters: usize,
    pub messages_sent: u64,
    pub deliveries_expected: u64,
    pub deliveries: u64,
    /// Messages from attackers (their broadcasts) received and skipped.
    pub foreign: u64,
    /// Delivery latency, µs.
    pub latency_us: Histogram<u64>,
    /// Delivery latency of what arrived while the storm was on, µs (the whole run's
    /// figure also has the pauses of the server while gdb trims its heap).
    pub storm_latency_us: Histogram<u64>,
    /// Worst storm-time delivery latency (µs) of the messages sent in each second
    /// (index: whole seconds on the shared clock).
    pub worst_by_second: Vec<u64>,
    pub probes_ok: u64,
    /// Probe time from connect to `101`, µs.
    pub probe_upgrade_us: Histogram<u64>,
    /// Probe time from connect to its close reply, µs.
    pub probe_total_us: Histogram<u64>,
    pub pings_answered: u64,
    pub clean_closes: usize,
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum State {
    Handshaking,
    Open,
    /// Sent our close frame at the end.
    Closing,
    /// Got the server's close reply.
    Closed,
}

struct Client {
    stream: TcpStream,
    room: Option<usize>,
    state: State,
    accept: String,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    next_send: Instant,
    interval: Duration,
    max_extra: usize,
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum ProbeState {
    Handshaking,
    AwaitEcho,
    AwaitClose,
}

struct Probe {
    serial: u64,
    stream: TcpStream,
    state: ProbeState,
    accept: String,
    started: Instant,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    message: Vec<u8>,
}

/// Everything the loop owns besides the clients.
struct Book {
    n: usize,
    /// `expected[c * n + s]`: next sequence number client c must get from sender s.
    expected: Vec<u32>,
    sent: Vec<u32>,
    rooms: Vec<Option<usize>>,
    delivered: u64,
    foreign: u64,
    pings: u64,
    latency_us: Histogram<u64>,
    storm_latency_us: Histogram<u64>,
    worst_by_second: Vec<u64>,
}

impl Book {
    fn hears(&self, c: usize, s: usize) -> bool {
        match (self.rooms[c], self.rooms[s]) {
            (_, None) => true,
            (Some(a), Some(b)) => a == b,
            (None, Some(_)) => false,
        }
    }

    fn all_delivered(&self) -> bool {
        (0..self.n).all(|c| {
            (0..self.n).all(|s| !self.hears(c, s) || self.expected[c * self.n + s] == self.sent[s])
        })
    }

    fn expected_total(&self) -> u64 {
        let mut total = 0;
        for c in 0..self.n {
            for s in 0..self.n {
                if self.hears(c, s) {
                    total += u64::from(self.sent[s]);
                }
            }
        }
        total
    }

    /// What is still missing, for the error message.
    fn missing_report(&self) -> String {
        let mut pairs = 0;
        let mut messages = 0u64;
        let mut examples = Vec::new();
        for c in 0..self.n {
            for s in 0..self.n {
                let got = self.expected[c * self.n + s];
                if self.hears(c, s) && got != self.sent[s] {
                    pairs += 1;
                    messages += u64::from(self.sent[s].saturating_sub(got));
                    if examples.len() < 5 {
                        examples.push(format!(
                            "client {c} has {got} of sender {s}'s {}",
                            self.sent[s]
                        ));
                    }
                }
            }
        }
        format!(
            "{messages} deliveries missing over {pairs} (receiver, sender) pairs, e.g. {}",
            examples.join("; ")
        )
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn filler(s: usize, seq: u32, j: usize) -> u8 {
    b'a' + ((s * 7 + seq as usize * 13 + j * 3) % 26) as u8
}

fn message_len(s: usize, seq: u32, max_extra: usize) -> usize {
    HEADER_LEN + (splitmix(((s as u64) << 32) | u64::from(seq)) % (max_extra as u64 + 1)) as usize
}

/// The payload of sender `s`'s message `seq`: header, then filler that
/// depends on (s, seq), so the receiver can check every byte.
fn encode_message(s: usize, seq: u32, sent_ns: u64, max_extra: usize) -> Vec<u8> {
    let len = message_len(s, seq, max_extra);
    let mut m = format!("WB {s:03} {seq:09} {sent_ns:020} ").into_bytes();
    debug_assert_eq!(m.len(), HEADER_LEN);
    m.extend((HEADER_LEN..len).map(|j| filler(s, seq, j)));
    m
}

fn digits(b: &[u8]) -> Option<u64> {
    b.iter().try_fold(0u64, |acc, &d| {
        let d = d.wrapping_sub(b'0');
        (d < 10).then(|| acc * 10 + u64::from(d))
    })
}

/// Runs the clients until told to quit; `Err` on the first failure (also
/// stored in `shared.failure`).
pub fn run(cfg: WbConfig, shared: &WbShared) -> Result<WbReport, String> {
    let result = run_inner(&cfg, shared);
    if let Err(e) = &result {
        shared.fail(e.clone());
    }
    result
}

struct Loop<'a> {
    cfg: &'a WbConfig,
    shared: &'a WbShared,
    poll: Poll,
    clients: Vec<Client>,
    probes: HashMap<usize, Probe>,
    probe_serial: u64,
    probes_ok: u64,
    probe_upgrade_us: Histogram<u64>,
    probe_total_us: Histogram<u64>,
    book: Book,
    rng: Rng,
    read_buf: Vec<u8>,
    /// Clients whose last read pass hit its bound: read again.
    reread: Vec<usize>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn run_inner(cfg: &WbConfig, shared: &WbShared) -> Result<WbReport, String> {
    let started = Instant::now();
    let hard_end = started + cfg.max_life;
    let poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
    let n = cfg.rooms * cfg.per_room + cfg.broadcasters;
    let mut rooms = Vec::with_capacity(n);
    for c in 0..n {
        rooms.push((c < cfg.rooms * cfg.per_room).then_some(c % cfg.rooms.max(1)));
    }
    let mut lp = Loop {
        cfg,
        shared,
        poll,
        clients: Vec::with_capacity(n),
        probes: HashMap::new(),
        probe_serial: 0,
        probes_ok: 0,
        probe_upgrade_us: histogram(),
        probe_total_us: histogram(),
        book: Book {
            n,
            expected: vec![0; n * n],
            sent: vec![0; n],
            rooms: rooms.clone(),
            delivered: 0,
            foreign: 0,
            pings: 0,
            latency_us: histogram(),
            storm_latency_us: histogram(),
            worst_by_second: Vec::new(),
        },
        rng: Rng::new(cfg.seed),
        read_buf: vec![0; READ_BUF_LEN],
        reread: Vec::new(),
    };
    let mut events = Events::with_capacity(1024);

    // Connect every client at once (50 handshakes from one address: far below its limit).
    for (c, room) in rooms.iter().enumerate() {
        let target = match room {
            Some(r) => format!("/?room=soak-r{r}"),
            None => "/soak-all".to_string(),
        };
        let up = net::upgrade(&target, cfg.server);
        let mut stream = net::connect(cfg.server, cfg.source, None)
            .map_err(|e| format!("well-behaved client {c}: connect failed: {e}"))?;
        lp.poll
            .registry()
            .register(
                &mut stream,
                Token(c),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("register: {e}"))?;
        let (rate, max_extra) = if room.is_some() {
            (cfg.room_rate, cfg.max_extra)
        } else {
            (cfg.bcast_rate, cfg.max_extra / 4)
        };
        lp.clients.push(Client {
            stream,
            room: *room,
            state: State::Handshaking,
            accept: up.accept,
            inbuf: Vec::new(),
            out: up.request,
            next_send: Instant::now(),
            interval: Duration::from_secs_f64(1.0 / rate.max(0.001)),
            max_extra,
        });
    }
    let connect_deadline = Instant::now() + CONNECT_TIMEOUT;
    while lp.clients.iter().any(|c| c.state != State::Open) {
        if Instant::now() > connect_deadline {
            let open = lp.clients.iter().filter(|c| c.state == State::Open).count();
            return Err(format!(
                "only {open} of {n} well-behaved clients were upgraded within {CONNECT_TIMEOUT:?}"
            ));
        }
        lp.poll_once(&mut events, Duration::from_millis(10))?;
    }
    let now = Instant::now();
    for c in 0..n {
        let spread = lp.rng.millis(0, lp.clients[c].interval.as_millis() as u64);
        lp.clients[c].next_send = now + spread;
    }
    shared.ready.store(true, Ordering::SeqCst);

    let mut next_probe = Instant::now();
    // Bounded by `hard_end`.
    loop {
        let now = Instant::now();
        if now > hard_end {
            return Err(format!(
                "the well-behaved clients' thread ran past its bound of {:?}",
                cfg.max_life
            ));
        }
        if let Some(f) = shared.failure() {
            return Err(f);
        }
        if shared.quit.load(Ordering::SeqCst) {
            break;
        }
        let sending = !shared.stop_sending.load(Ordering::SeqCst);
        let mut next_due = now + Duration::from_millis(10);
        if sending {
            for c in 0..n {
                if lp.clients[c].next_send <= now {
                    lp.send_message(c)?;
                    let client = &mut lp.clients[c];
                    let jitter = lp.rng.range(50, 150) as f64 / 100.0;
                    client.next_send += client.interval.mul_f64(jitter);
                    if client.next_send < now {
                        // Fell behind (a stall): don't burst to catch up.
                        client.next_send = now + client.interval;
                    }
                }
                next_due = next_due.min(lp.clients[c].next_send);
            }
        } else if !shared.drained.load(Ordering::SeqCst) && lp.book.all_delivered() {
            shared.drained.store(true, Ordering::SeqCst);
        }
        if shared.storm.load(Ordering::SeqCst) && now >= next_probe && lp.probes.len() < MAX_PROBES
        {
            lp.start_probe()?;
            next_probe = now + cfg.probe_every;
        }
        lp.check_probes(now)?;
        let timeout = next_due.saturating_duration_since(Instant::now());
        lp.poll_once(&mut events, timeout.min(Duration::from_millis(10)))?;
        shared.delivered.store(lp.book.delivered, Ordering::Relaxed);
        shared.sent.store(
            lp.book.sent.iter().map(|&s| u64::from(s)).sum(),
            Ordering::Relaxed,
        );
        shared.probes_ok.store(lp.probes_ok, Ordering::Relaxed);
    }

    // The end: every client closes cleanly (close 1000, wait for the reply).
    if !lp.book.all_delivered() {
        return Err(format!(
            "well-behaved clients told to quit with deliveries outstanding: {}",
            lp.book.missing_report()
        ));
    }
    for c in 0..n {
        let mask = lp.rng.mask();
        let client = &mut lp.clients[c];
        net::frame(
            &mut client.out,
            net::FIN | wire::OPCODE_CLOSE,
            &[0x03, 0xE8, b'b', b'y', b'e'],
            Some(mask),
        );
        client.state = State::Closing;
        net::flush(&mut client.stream, &mut client.out)
            .map_err(|e| format!("well-behaved client {c}: write failed at close: {e}"))?;
    }
    let close_deadline = Instant::now() + CLOSE_TIMEOUT;
    while lp.clients.iter().any(|c| c.state != State::Closed) && Instant::now() < close_deadline {
        lp.poll_once(&mut events, Duration::from_millis(10))?;
    }
    let clean_closes = lp
        .clients
        .iter()
        .filter(|c| c.state == State::Closed)
        .count();
    Ok(WbReport {
        clients: n,
        rooms: cfg.rooms,
        broadcasters: cfg.broadcasters,
        messages_sent: lp.book.sent.iter().map(|&s| u64::from(s)).sum(),
        deliveries_expected: lp.book.expected_total(),
        deliveries: lp.book.delivered,
        foreign: lp.book.foreign,
        latency_us: lp.book.latency_us,
        storm_latency_us: lp.book.storm_latency_us,
        worst_by_second: lp.book.worst_by_second,
        probes_ok: lp.probes_ok,
        probe_upgrade_us: lp.probe_upgrade_us,
        probe_total_us: lp.probe_total_us,
        pings_answered: lp.book.pings,
        clean_closes,
    })
}

impl Loop<'_> {
    fn poll_once(&mut self, events: &mut Events, timeout: Duration) -> Result<(), String> {
        match self.poll.poll(events, Some(timeout)) {
            Ok(()) => {}
            // A signal (e.g. SIGCHLD of a child the main thread ran): poll again next time.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => events.clear(),
            Err(e) => return Err(format!("poll failed: {e}")),
        }
        let mut ready: Vec<(usize, bool)> = events
            .iter()
            .map(|e| (e.token().0, e.is_writable()))
            .collect();
        ready.extend(
            std::mem::take(&mut self.reread)
                .into_iter()
                .map(|c| (c, false)),
        );
        for (token, writable) in ready {
            if token >= PROBE_TOKEN_BASE {
                self.probe_event(token)?;
            } else if token < self.clients.len() {
                self.client_event(token, writable)?;
            }
        }
        Ok(())
    }

    fn send_message(&mut self, c: usize) -> Result<(), String> {
        let seq = self.book.sent[c];
        let max_extra = self.clients[c].max_extra;
        let payload = encode_message(c, seq, self.cfg.clock.now_ns(), max_extra);
        self.book.sent[c] += 1;
        let mask = self.rng.mask();
        let client = &mut self.clients[c];
        net::frame(
            &mut client.out,
            net::FIN | wire::OPCODE_TEXT,
            &payload,
            Some(mask),
        );
        net::flush(&mut client.stream, &mut client.out)
            .map_err(|e| format!("well-behaved client {c}: write failed: {e}"))?;
        Ok(())
    }

    fn client_event(&mut self, c: usize, writable: bool) -> Result<(), String> {
        let who = |c: usize, room: Option<usize>| match room {
            Some(r) => format!("well-behaved client {c} (room soak-r{r})"),
            None => format!("well-behaved client {c} (no room)"),
        };
        let room = self.clients[c].room;
        {
            let client = &mut self.clients[c];
            if (writable || client.state == State::Handshaking) && !client.out.is_empty() {
                net::flush(&mut client.stream, &mut client.out)
                    .map_err(|e| format!("{}: write failed: {e}", who(c, room)))?;
            }
        }
        for pass in 0..MAX_READS_PER_EVENT {
            let client = &mut self.clients[c];
            match net::read_once(&mut client.stream, &mut self.read_buf) {
                ReadResult::Data(k) => client.inbuf.extend_from_slice(&self.read_buf[..k]),
                ReadResult::WouldBlock => break,
                ReadResult::Eof => {
                    if client.state == State::Closed {
                        break;
                    }
                    return Err(format!(
                        "{}: the server closed the connection (EOF) after {} deliveries to it",
                        who(c, room),
                        self.received_by(c)
                    ));
                }
                ReadResult::Failed(e) => {
                    return Err(format!("{}: read failed: {e}", who(c, room)));
                }
            }
            self.process_client(c)
                .map_err(|e| format!("{}: {e}", who(c, room)))?;
            if pass + 1 == MAX_READS_PER_EVENT {
                self.reread.push(c);
            }
        }
        Ok(())
    }

    fn received_by(&self, c: usize) -> u64 {
        let n = self.book.n;
        self.book.expected[c * n..(c + 1) * n]
            .iter()
            .map(|&e| u64::from(e))
            .sum()
    }

    fn process_client(&mut self, c: usize) -> Result<(), String> {
        let client = &mut self.clients[c];
        if client.state == State::Handshaking {
            let Some(head) = net::parse_response(&client.inbuf)? else {
                return Ok(());
            };
            if head.status != 101 {
                return Err(format!(
                    "upgrade refused: HTTP {} {}",
                    head.status, head.body
                ));
            }
            if head.accept.as_deref() != Some(client.accept.as_str()) {
                return Err(format!("wrong Sec-WebSocket-Accept {:?}", head.accept));
            }
            client.inbuf.drain(..head.head_len);
            client.state = State::Open;
        }
        let data = std::mem::take(&mut client.inbuf);
        let mut used = 0;
        let mut result = Ok(());
        while let Some(frame) = wire::parse_server_frame(&data[used..])? {
            used += frame.len;
            if !frame.fin || frame.opcode == wire::OPCODE_CONTINUATION {
                result = Err("unexpected fragmented message from the server".to_string());
                break;
            }
            match frame.opcode {
                wire::OPCODE_TEXT | wire::OPCODE_BINARY => {
                    if let Err(e) = self.on_message(c, frame.payload) {
                        result = Err(e);
                        break;
                    }
                }
                wire::OPCODE_PING => {
                    let mask = self.rng.mask();
                    let client = &mut self.clients[c];
                    net::frame(
                        &mut client.out,
                        net::FIN | wire::OPCODE_PONG,
                        frame.payload,
                        Some(mask),
                    );
                    self.book.pings += 1;
                    net::flush(&mut client.stream, &mut client.out)
                        .map_err(|e| format!("write failed: {e}"))?;
                }
                wire::OPCODE_PONG => {}
                wire::OPCODE_CLOSE => {
                    let (code, reason) = net::close_parts(frame.payload);
                    let client = &mut self.clients[c];
                    if client.state == State::Closing {
                        client.state = State::Closed;
                        continue;
                    }
                    result = Err(format!(
                        "the server sent Close (code {code:?}, reason {reason:?})"
                    ));
                    break;
                }
                other => {
                    result = Err(format!("unknown opcode {other:#x} from the server"));
                    break;
                }
            }
        }
        let client = &mut self.clients[c];
        client.inbuf = data;
        client.inbuf.drain(..used);
        result
    }

    fn on_message(&mut self, c: usize, payload: &[u8]) -> Result<(), String> {
        if !payload.starts_with(b"WB ") {
            self.book.foreign += 1;
            return Ok(());
        }
        let bad = || {
            format!(
                "corrupted well-behaved message ({} bytes): {:?}",
                payload.len(),
                String::from_utf8_lossy(&payload[..payload.len().min(60)])
            )
        };
        if payload.len() < HEADER_LEN {
            return Err(bad());
        }
        let s = digits(&payload[3..6]).ok_or_else(bad)? as usize;
        let seq = digits(&payload[7..16]).ok_or_else(bad)? as u32;
        let sent_ns = digits(&payload[17..37]).ok_or_else(bad)?;
        let n = self.book.n;
        if s >= n || seq >= self.book.sent[s] {
            return Err(format!(
                "got message (sender {s}, seq {seq}) that was never sent (duplicate or corrupted)"
            ));
        }
        if !self.book.hears(c, s) {
            return Err(format!(
                "got message (sender {s}, seq {seq}) of room {:?}, not meant for this client",
                self.book.rooms[s].map(|r| format!("soak-r{r}"))
            ));
        }
        let max_extra = self.clients[s].max_extra;
        let len = message_len(s, seq, max_extra);
        if payload.len() != len
            || payload[HEADER_LEN..]
                .iter()
                .enumerate()
                .any(|(i, &b)| b != filler(s, seq, HEADER_LEN + i))
        {
            return Err(format!(
                "message (sender {s}, seq {seq}) arrived corrupted: {} bytes, expected {len}",
                payload.len()
            ));
        }
        let expected = &mut self.book.expected[c * n + s];
        if seq != *expected {
            return Err(if seq < *expected {
                format!(
                    "duplicate or reordered delivery: got seq {seq} from sender {s}, expected {}",
                    *expected
                )
            } else {
                format!(
                    "lost delivery: got seq {seq} from sender {s}, but seqs {}..{seq} never arrived",
                    *expected
                )
            });
        }
        *expected += 1;
        self.book.delivered += 1;
        let latency = self.cfg.clock.now_ns().saturating_sub(sent_ns) / 1000;
        self.book.latency_us.saturating_record(latency.max(1));
        if !self.shared.storm.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.book.storm_latency_us.saturating_record(latency.max(1));
        let second = (sent_ns / 1_000_000_000) as usize;
        if second < 100_000 {
            let worst = &mut self.book.worst_by_second;
            if worst.len() <= second {
                worst.resize(second + 1, 0);
            }
            worst[second] = worst[second].max(latency);
        }
        Ok(())
    }

    fn start_probe(&mut self) -> Result<(), String> {
        self.probe_serial += 1;
        let serial = self.probe_serial;
        let up = net::upgrade(&format!("/?room=probe-{serial}"), self.cfg.server);
        let mut stream = net::connect(self.cfg.server, self.cfg.probe_source, None)
            .map_err(|e| format!("probe client {serial}: connect failed: {e}"))?;
        let token = PROBE_TOKEN_BASE + serial as usize;
        self.poll
            .registry()
            .register(
                &mut stream,
                Token(token),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("register: {e}"))?;
        let mut message = format!("probe {serial} ").into_bytes();
        message.extend(std::iter::repeat_n(b'p', self.rng.below(200)));
        self.probes.insert(
            token,
            Probe {
                serial,
                stream,
                state: ProbeState::Handshaking,
                accept: up.accept,
                started: Instant::now(),
                inbuf: Vec::new(),
                out: up.request,
                message,
            },
        );
        self.probe_event(token)
    }

    fn check_probes(&mut self, now: Instant) -> Result<(), String> {
        for probe in self.probes.values() {
            if now.duration_since(probe.started) > PROBE_DEADLINE {
                return Err(format!(
                    "probe client {} (a new well-behaved client during the storm) did not \
                     finish within {PROBE_DEADLINE:?}: stuck in {:?}",
                    probe.serial, probe.state
                ));
            }
        }
        Ok(())
    }

    fn probe_event(&mut self, token: usize) -> Result<(), String> {
        let Some(probe) = self.probes.get_mut(&token) else {
            return Ok(());
        };
        let serial = probe.serial;
        let fail = |what: String| {
            format!("probe client {serial} (a new well-behaved client during the storm): {what}")
        };
        if !probe.out.is_empty() {
            net::flush(&mut probe.stream, &mut probe.out)
                .map_err(|e| fail(format!("write failed: {e}")))?;
        }
        let mut finished = false;
        for _ in 0..MAX_READS_PER_EVENT {
            match net::read_once(&mut probe.stream, &mut self.read_buf) {
                ReadResult::Data(k) => probe.inbuf.extend_from_slice(&self.read_buf[..k]),
                ReadResult::WouldBlock => break,
                ReadResult::Eof => {
                    return Err(fail(format!(
                        "the server closed the connection in state {:?}",
                        probe.state
                    )));
                }
                ReadResult::Failed(e) => {
                    return Err(fail(format!("read failed in state {:?}: {e}", probe.state)));
                }
            }
            if probe.state == ProbeState::Handshaking {
                let Some(head) = net::parse_response(&probe.inbuf).map_err(&fail)? else {
                    continue;
                };
                if head.status != 101 {
                    return Err(fail(format!("refused: HTTP {} {}", head.status, head.body)));
                }
                if head.accept.as_deref() != Some(probe.accept.as_str()) {
                    return Err(fail("wrong Sec-WebSocket-Accept".to_string()));
                }
                probe.inbuf.drain(..head.head_len);
                let elapsed = probe.started.elapsed().as_micros() as u64;
                self.probe_upgrade_us.saturating_record(elapsed.max(1));
                probe.state = ProbeState::AwaitEcho;
                let mask = self.rng.mask();
                net::frame(
                    &mut probe.out,
                    net::FIN | wire::OPCODE_TEXT,
                    &probe.message,
                    Some(mask),
                );
                net::flush(&mut probe.stream, &mut probe.out)
                    .map_err(|e| fail(format!("write failed: {e}")))?;
            }
            let mut used = 0;
            while let Some(frame) = wire::parse_server_frame(&probe.inbuf[used..]).map_err(&fail)? {
                used += frame.len;
                match (probe.state, frame.opcode) {
                    (ProbeState::AwaitEcho, wire::OPCODE_TEXT)
                        if frame.payload == probe.message =>
                    {
                        probe.state = ProbeState::AwaitClose;
                        let mask = self.rng.mask();
                        net::frame(
                            &mut probe.out,
                            net::FIN | wire::OPCODE_CLOSE,
                            &[0x03, 0xE8],
                            Some(mask),
                        );
                        net::flush(&mut probe.stream, &mut probe.out)
                            .map_err(|e| fail(format!("write failed: {e}")))?;
                    }
                    (_, wire::OPCODE_TEXT | wire::OPCODE_BINARY) => {
                        // A broadcast from someone else: probes are clients too.
                    }
                    (_, wire::OPCODE_PING) => {
                        let mask = self.rng.mask();
                        net::frame(
                            &mut probe.out,
                            net::FIN | wire::OPCODE_PONG,
                            frame.payload,
                            Some(mask),
                        );
                    }
                    (ProbeState::AwaitClose, wire::OPCODE_CLOSE) => {
                        let (code, _) = net::close_parts(frame.payload);
                        if code != Some(1000) {
                            return Err(fail(format!("close reply with code {code:?}")));
                        }
                        finished = true;
                        break;
                    }
                    (state, wire::OPCODE_CLOSE) => {
                        let (code, reason) = net::close_parts(frame.payload);
                        return Err(fail(format!(
                            "the server sent Close ({code:?}, {reason:?}) in state {state:?}"
                        )));
                    }
                    _ => {}
                }
            }
            probe.inbuf.drain(..used);
            if finished {
                break;
            }
        }
        if finished {
            let probe = self.probes.remove(&token).expect("probe present");
            self.probes_ok += 1;
            let elapsed = probe.started.elapsed().as_micros() as u64;
            self.probe_total_us.saturating_record(elapsed.max(1));
            // Dropping the stream closes it (the server waits for our TCP close).
        }
        Ok(())
    }
}
