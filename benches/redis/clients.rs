//! The clients: N WebSocket connections split over the nodes, driven by one thread (mio
//! readiness, tungstenite for the protocol on non-blocking sockets), that publish stamped
//! messages and check every delivery.
//!
//! Client `c` joins room `c % R` (`?room=r<c % R>`) on node `(c / R) % nodes`, so every
//! room has members on every node (as far as its size allows). The senders are the first
//! `S * R` clients: sender `s` is client `s`, in room `s % R`, the `s / R`-th member of it,
//! so a room's senders sit on different nodes. A message carries its sender, a per-sender
//! sequence number and its send time (fanout's 64-byte payload, `wire`); the receiving
//! client checks it was sent, to its room, and is the next of its sender (no loss, no
//! duplicate, no reordering), and records its latency as local (sender on the same node)
//! or cross-node. In the failure run ("lossy") a cross-node gap is recorded instead of
//! failing: the bench then checks when the lost messages were sent.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use crate::rooms;
use crate::sys::Clock;
use crate::wire::{self, Payload};

/// Reads of one connection per readiness event before it waits for the next turn.
const MAX_READS: usize = 4096;
/// How long to keep reading after the last expected delivery, to catch duplicates.
const LINGER: Duration = Duration::from_millis(100);
/// In the failure run, how long after the last send the run waits for deliveries (there is
/// no count to wait for: some were lost).
const LOSSY_LINGER: Duration = Duration::from_millis(500);
/// Longest poll: nothing to send for a while.
const MAX_POLL: Duration = Duration::from_millis(5);
/// Each client's read buffer.
const READ_BUFFER: usize = 8 * 1024;
/// Timeouts of the blocking connect and handshake of one client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Who is where.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub clients: usize,
    pub rooms: usize,
    pub senders_per_room: usize,
    pub nodes: usize,
}

impl Layout {
    pub fn check(&self) -> Result<(), String> {
        if self.rooms == 0 || self.clients % self.rooms != 0 {
            return Err(format!(
                "{} clients do not split into {} rooms",
                self.clients, self.rooms
            ));
        }
        if self.senders_per_room == 0 || self.senders_per_room > self.group() {
            return Err(format!(
                "{} senders per room of {} members",
                self.senders_per_room,
                self.group()
            ));
        }
        if self.nodes == 0 {
            return Err("no node".into());
        }
        Ok(())
    }

    pub fn room(&self, c: usize) -> usize {
        c % self.rooms
    }

    pub fn node(&self, c: usize) -> usize {
        (c / self.rooms) % self.nodes
    }

    /// Members of a room: the recipients of each of its messages.
    pub fn group(&self) -> usize {
        self.clients / self.rooms
    }

    pub fn senders(&self) -> usize {
        self.rooms * self.senders_per_room
    }

    /// The sender whose turn `i` (of `senders()`) is, in the fixed-rate round: each room's
    /// senders in a row, room after room, so that every node sends all the time (sender
    /// order would send node by node, in blocks).
    fn turn_of(&self, i: usize) -> usize {
        (i % self.senders_per_room) * self.rooms + i / self.senders_per_room
    }

    /// Sender `s`'s index among its room's senders.
    fn slot(&self, s: usize) -> usize {
        s / self.rooms
    }

    /// The topics node `n` has subscribers to.
    pub fn rooms_on(&self, n: usize) -> usize {
        if self.group() > n { self.rooms } else { 0 }
    }
}

/// How the senders send.
#[derive(Clone, Copy, Debug)]
pub enum Pacing {
    /// A fixed rate over all senders, round-robin (`Layout::turn_of`).
    Rate { per_sec: f64 },
    /// As fast as it goes: each sender has at most `window` messages not yet delivered to
    /// all its room.
    Window { window: u32 },
}

#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub pacing: Pacing,
    /// How long the senders send.
    pub duration: Duration,
    /// How long the deliveries may take after the last send.
    pub drain: Duration,
    /// The failure run: cross-node gaps are recorded, not fatal.
    pub lossy: bool,
}

/// One delivery, kept in the failure run.
#[derive(Clone, Copy)]
pub struct Delivery {
    pub recv_ns: u64,
    pub sent_ns: u64,
    pub from: u8,
    pub to: u8,
}

/// A cross-node delivery that never came (failure run).
#[derive(Clone, Copy)]
pub struct Lost {
    pub sent_ns: u64,
    pub from: u8,
    pub to: u8,
}

/// What one run measured.
pub struct RunStats {
    /// Messages published.
    pub sent: u64,
    /// Deliveries [local, cross-node].
    pub delivered: [u64; 2],
    /// From the first send to the last delivery.
    pub wall: Duration,
    /// Latency in ns [local, cross-node].
    pub latency: [Histogram<u64>; 2],
    /// Fixed rate: the latest a send was against its schedule.
    pub max_send_lag: Duration,
    /// On the bench clock.
    pub first_send_ns: u64,
    pub last_delivery_ns: u64,
    /// Failure run: every delivery, and the cross-node deliveries lost.
    pub log: Vec<Delivery>,
    pub lost: Vec<Lost>,
}

impl RunStats {
    pub fn deliveries(&self) -> u64 {
        self.delivered[0] + self.delivered[1]
    }

    pub fn all_latency(&self) -> Histogram<u64> {
        let mut all = self.latency[0].clone();
        let _ = all.add(&self.latency[1]);
        all
    }
}

/// A latency distribution's figures (ns), kept instead of its histogram (a quarter of a
/// MiB: the failure run keeps none, so that its heap figures show the nodes' only).
#[derive(Clone, Copy, Default)]
pub struct Summary {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        Summary {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        }
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds")
}

struct Client {
    ws: WebSocket<std::net::TcpStream>,
    /// The server closed it (after its close frame).
    closed: bool,
}

/// The clients, connected.
pub struct Pool {
    layout: Layout,
    poll: Poll,
    events: Events,
    clients: Vec<Client>,
    /// Clients that hit `MAX_READS` with bytes left: read again next turn.
    carry: Vec<usize>,
    clock: Clock,
}

impl Pool {
    /// Connects every client of `layout` to its node (`addrs[node]`), one blocking handshake
    /// after another, then makes them non-blocking.
    pub fn connect(layout: Layout, addrs: &[SocketAddr], clock: Clock) -> Result<Pool, String> {
        layout.check()?;
        let poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
        let mut clients = Vec::with_capacity(layout.clients);
        // tungstenite's default, 128 KiB a connection, would be 110 MiB for 900 clients:
        // noise for the failure run's RSS. A few messages are in flight per connection.
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
        for c in 0..layout.clients {
            let addr = addrs[layout.node(c)];
            let fail = |e: String| format!("client {c} to node {} ({addr}): {e}", layout.node(c));
            let stream = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
                .map_err(|e| fail(e.to_string()))?;
            stream.set_nodelay(true).map_err(|e| fail(e.to_string()))?;
            stream
                .set_read_timeout(Some(CONNECT_TIMEOUT))
                .map_err(|e| fail(e.to_string()))?;
            let url = format!("ws://{addr}{}", rooms::upgrade_target(Some(layout.room(c))));
            let (ws, _) =
                tungstenite::client::client_with_config(url.as_str(), stream, Some(config))
                    .map_err(|e| fail(format!("handshake: {e}")))?;
            let stream = ws.get_ref();
            stream
                .set_read_timeout(None)
                .and_then(|()| stream.set_nonblocking(true))
                .map_err(|e| fail(e.to_string()))?;
            poll.registry()
                .register(
                    &mut SourceFd(&stream.as_raw_fd()),
                    Token(c),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map_err(|e| fail(format!("register: {e}")))?;
            clients.push(Client { ws, closed: false });
        }
        Ok(Pool {
            layout,
            poll,
            events: Events::with_capacity(4096),
            clients,
            carry: Vec::new(),
            clock,
        })
    }

    /// Runs one phase: sends as `plan` says, checks every delivery. (In the failure run the
    /// deliveries are logged for the caller to place against the kill and the restart.)
    pub fn run(&mut self, plan: &Plan) -> Result<RunStats, String> {
        let layout = self.layout;
        let k = layout.senders();
        let mut tracker = Tracker::new(layout, plan.lossy);
        let start = Instant::now();
        let send_end = start + plan.duration;
        let total = match plan.pacing {
            Pacing::Rate { per_sec } => (per_sec * plan.duration.as_secs_f64()) as u64,
            Pacing::Window { .. } => u64::MAX,
        };
        let mut next = 0u64; // fixed rate: the next message overall
        let mut max_lag = Duration::ZERO;
        let mut ready: Vec<usize> = (0..k).collect(); // window: senders that may send
        let mut last_send = start;
        let mut sending = true;
        loop {
            let now = Instant::now();
            let sent_before = tracker.sent;
            if sending {
                match plan.pacing {
                    Pacing::Rate { per_sec } => {
                        while next < total {
                            let due = start + Duration::from_secs_f64(next as f64 / per_sec);
                            if due > now {
                                break;
                            }
                            max_lag = max_lag.max(now.saturating_duration_since(due));
                            self.send(&mut tracker, layout.turn_of((next % k as u64) as usize))?;
                            next += 1;
                        }
                        sending = next < total;
                    }
                    Pacing::Window { window } => {
                        if now < send_end {
                            for s in std::mem::take(&mut ready) {
                                while tracker.outstanding(s) < window {
                                    self.send(&mut tracker, s)?;
                                }
                            }
                        } else {
                            sending = false;
                        }
                    }
                }
                if tracker.sent > sent_before {
                    last_send = now;
                }
            }
            if !sending {
                let done = if plan.lossy {
                    now >= last_send + LOSSY_LINGER
                } else {
                    tracker.received() == tracker.expected_total()
                };
                if done {
                    break;
                }
                if now > last_send + plan.drain {
                    if plan.lossy {
                        break;
                    }
                    return Err(tracker.missing_report(plan.drain));
                }
            }
            let timeout = match plan.pacing {
                Pacing::Rate { per_sec } if sending => {
                    let due = start + Duration::from_secs_f64(next as f64 / per_sec);
                    due.saturating_duration_since(Instant::now()).min(MAX_POLL)
                }
                Pacing::Window { .. } if sending => send_end
                    .saturating_duration_since(Instant::now())
                    .min(MAX_POLL),
                _ => MAX_POLL,
            };
            self.turn(&mut tracker, timeout, &mut ready)?;
        }
        let wall = Duration::from_nanos(
            tracker
                .last_delivery_ns
                .saturating_sub(tracker.first_send_ns),
        );
        if !plan.lossy {
            // Anything arriving now is a duplicate.
            let end = Instant::now() + LINGER;
            while Instant::now() < end {
                self.turn(&mut tracker, Duration::from_millis(1), &mut ready)?;
            }
        }
        tracker.finish()?;
        Ok(RunStats {
            sent: tracker.sent,
            delivered: tracker.delivered,
            wall,
            latency: tracker.latency,
            max_send_lag: max_lag,
            first_send_ns: tracker.first_send_ns,
            last_delivery_ns: tracker.last_delivery_ns,
            log: tracker.log,
            lost: tracker.lost,
        })
    }

    /// Sends sender `s`'s next message.
    fn send(&mut self, tracker: &mut Tracker, s: usize) -> Result<(), String> {
        let sent_ns = self.clock.now_ns();
        let seq = tracker.on_send(s, sent_ns);
        let payload = wire::encode_payload(Payload {
            sender: s as u32,
            seq,
            sent_ns,
        });
        // The payload is ASCII.
        let text = String::from_utf8_lossy(&payload).into_owned();
        match self.clients[s].ws.send(Message::text(text)) {
            Ok(()) => Ok(()),
            // Queued in the client; written when the socket is writable.
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(format!("sender {s}: send failed: {e}")),
        }
    }

    /// Waits up to `timeout` for readiness and handles it.
    fn turn(
        &mut self,
        tracker: &mut Tracker,
        timeout: Duration,
        ready: &mut Vec<usize>,
    ) -> Result<(), String> {
        let timeout = if self.carry.is_empty() {
            timeout
        } else {
            Duration::ZERO
        };
        self.poll
            .poll(&mut self.events, Some(timeout))
            .map_err(|e| format!("poll: {e}"))?;
        let mut work: Vec<(usize, bool, bool)> = self
            .events
            .iter()
            .map(|e| {
                let readable = e.is_readable() || e.is_read_closed() || e.is_error();
                (e.token().0, readable, e.is_writable())
            })
            .collect();
        work.extend(
            std::mem::take(&mut self.carry)
                .into_iter()
                .map(|c| (c, true, false)),
        );
        for (c, readable, writable) in work {
            if writable {
                self.flush(c)?;
            }
            if readable {
                self.read(c, Some(&mut *tracker), ready)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, c: usize) -> Result<(), String> {
        let client = &mut self.clients[c];
        if client.closed {
            return Ok(());
        }
        match client.ws.flush() {
            Ok(()) => Ok(()),
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => Ok(()),
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => Ok(()),
            Err(e) => Err(format!("client {c}: write failed: {e}")),
        }
    }

    /// Reads what client `c` has; with no tracker, only the close handshake is expected.
    fn read(
        &mut self,
        c: usize,
        mut tracker: Option<&mut Tracker>,
        ready: &mut Vec<usize>,
    ) -> Result<(), String> {
        let client = &mut self.clients[c];
        if client.closed {
            return Ok(());
        }
        for _ in 0..MAX_READS {
            match client.ws.read() {
                Ok(Message::Text(text)) => {
                    let now = self.clock.now_ns();
                    let Some(tracker) = tracker.as_deref_mut() else {
                        return Err(format!("client {c}: a message after the run"));
                    };
                    if let Some(s) = tracker
                        .on_message(c, text.as_bytes(), now)
                        .map_err(|e| format!("client {c}: {e}"))?
                    {
                        ready.push(s);
                    }
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Binary(_)) => return Err(format!("client {c}: a binary message")),
                Ok(Message::Close(frame)) => {
                    if tracker.is_some() {
                        return Err(format!("client {c}: the server closed it: {frame:?}"));
                    }
                    // tungstenite queued the reply; it goes with the next read or flush.
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                    return Ok(());
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)
                    if tracker.is_none() =>
                {
                    client.closed = true;
                    return Ok(());
                }
                Err(e) => return Err(format!("client {c}: read failed: {e}")),
            }
        }
        self.carry.push(c);
        Ok(())
    }

    /// After the nodes were told to shut down: answers their close frames until every
    /// connection is closed, at most `timeout`. Returns how many closed.
    pub fn close_all(&mut self, timeout: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        let mut ready = Vec::new();
        // Edge-triggered readiness already reported may have been consumed: look at all.
        self.carry = (0..self.clients.len()).collect();
        while self.clients.iter().any(|c| !c.closed) && Instant::now() < deadline {
            let timeout = if self.carry.is_empty() {
                MAX_POLL
            } else {
                Duration::ZERO
            };
            self.poll
                .poll(&mut self.events, Some(timeout))
                .map_err(|e| format!("poll: {e}"))?;
            let mut work: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
            work.append(&mut self.carry);
            for c in work {
                self.read(c, None, &mut ready)?;
                self.flush(c)?;
            }
        }
        Ok(self.clients.iter().filter(|c| c.closed).count())
    }
}

/// Sends and deliveries of one run.
struct Tracker {
    layout: Layout,
    lossy: bool,
    /// `expected[c * S + slot]`: the next sequence number client c must get from its room's
    /// sender in `slot`.
    expected: Vec<u32>,
    /// Send time of every message, by sender and sequence number.
    sent_ns: Vec<Vec<u64>>,
    /// Recipients yet to get each message, by sender and sequence number.
    remaining: Vec<Vec<u32>>,
    /// Leading messages of each sender that every recipient has.
    complete: Vec<u32>,
    sent: u64,
    delivered: [u64; 2],
    latency: [Histogram<u64>; 2],
    first_send_ns: u64,
    last_delivery_ns: u64,
    log: Vec<Delivery>,
    lost: Vec<Lost>,
}

impl Tracker {
    fn new(layout: Layout, lossy: bool) -> Tracker {
        let k = layout.senders();
        Tracker {
            layout,
            lossy,
            expected: vec![0; layout.clients * layout.senders_per_room],
            sent_ns: vec![Vec::new(); k],
            remaining: vec![Vec::new(); k],
            complete: vec![0; k],
            sent: 0,
            delivered: [0; 2],
            latency: [histogram(), histogram()],
            first_send_ns: 0,
            last_delivery_ns: 0,
            log: Vec::new(),
            lost: Vec::new(),
        }
    }

    fn on_send(&mut self, s: usize, sent_ns: u64) -> u32 {
        let seq = self.sent_ns[s].len() as u32;
        self.sent_ns[s].push(sent_ns);
        self.remaining[s].push(self.layout.group() as u32);
        if self.sent == 0 {
            self.first_send_ns = sent_ns;
        }
        self.sent += 1;
        seq
    }

    fn outstanding(&self, s: usize) -> u32 {
        self.sent_ns[s].len() as u32 - self.complete[s]
    }

    fn received(&self) -> u64 {
        self.delivered[0] + self.delivered[1]
    }

    fn expected_total(&self) -> u64 {
        self.sent * self.layout.group() as u64
    }

    /// Checks and records one message client `c` received; returns its sender if that
    /// message is now complete (every recipient has it).
    fn on_message(
        &mut self,
        c: usize,
        payload: &[u8],
        now_ns: u64,
    ) -> Result<Option<usize>, String> {
        let layout = self.layout;
        let Payload {
            sender,
            seq,
            sent_ns,
        } = wire::decode_payload(payload).ok_or_else(|| {
            format!(
                "not a bench payload ({} bytes): {:?}",
                payload.len(),
                String::from_utf8_lossy(&payload[..payload.len().min(80)])
            )
        })?;
        let s = sender as usize;
        let stamped = self.sent_ns.get(s).and_then(|sent| sent.get(seq as usize));
        if stamped != Some(&sent_ns) {
            return Err(format!(
                "sender {sender} seq {seq}: never sent (or corrupted)"
            ));
        }
        if layout.room(s) != layout.room(c) {
            return Err(format!(
                "sender {sender} seq {seq} is for room r{}, this client is in r{}",
                layout.room(s),
                layout.room(c)
            ));
        }
        let (from, to) = (layout.node(s), layout.node(c));
        let remote = usize::from(from != to);
        let index = c * layout.senders_per_room + layout.slot(s);
        let expected = self.expected[index];
        if seq < expected {
            return Err(format!(
                "duplicate or reordered: seq {seq} from sender {sender} (node {from}) after \
                 seq {}",
                expected - 1
            ));
        }
        if seq > expected {
            if !(self.lossy && remote == 1) {
                return Err(format!(
                    "missing: seq {seq} from sender {sender} (node {from}, to node {to}) \
                     arrived but seqs {expected}..{seq} never did"
                ));
            }
            for q in expected..seq {
                self.lost.push(Lost {
                    sent_ns: self.sent_ns[s][q as usize],
                    from: from as u8,
                    to: to as u8,
                });
            }
        }
        self.expected[index] = seq + 1;
        self.delivered[remote] += 1;
        self.latency[remote].saturating_record(now_ns.saturating_sub(sent_ns).max(1));
        self.last_delivery_ns = self.last_delivery_ns.max(now_ns);
        if self.lossy {
            self.log.push(Delivery {
                recv_ns: now_ns,
                sent_ns,
                from: from as u8,
                to: to as u8,
            });
        }
        let remaining = &mut self.remaining[s];
        remaining[seq as usize] -= 1;
        let before = self.complete[s];
        while let Some(0) = remaining.get(self.complete[s] as usize) {
            self.complete[s] += 1;
        }
        Ok((self.complete[s] > before).then_some(s))
    }

    /// The (client, sender, got, sent) pairs that miss messages.
    fn incomplete(&self) -> Vec<(usize, usize, usize, usize)> {
        let layout = self.layout;
        let mut pairs = Vec::new();
        for c in 0..layout.clients {
            for slot in 0..layout.senders_per_room {
                let s = slot * layout.rooms + layout.room(c);
                let got = self.expected[c * layout.senders_per_room + slot] as usize;
                let sent = self.sent_ns[s].len();
                if got < sent {
                    pairs.push((c, s, got, sent));
                }
            }
        }
        pairs
    }

    fn describe(&self, pairs: &[(usize, usize, usize, usize)]) -> String {
        let examples: Vec<String> = pairs
            .iter()
            .take(5)
            .map(|&(c, s, got, sent)| {
                format!(
                    "client {c} (node {}) got {got} of sender {s}'s {sent} (node {})",
                    self.layout.node(c),
                    self.layout.node(s)
                )
            })
            .collect();
        format!(
            "{} (client, sender) pairs incomplete, e.g. {}",
            pairs.len(),
            examples.join("; ")
        )
    }

    /// After the run: every (client, sender) pair must have everything (in the failure run,
    /// a cross-node tail that never came is recorded as lost).
    fn finish(&mut self) -> Result<(), String> {
        let mut missing = Vec::new();
        for (c, s, got, sent) in self.incomplete() {
            let (from, to) = (self.layout.node(s), self.layout.node(c));
            if self.lossy && from != to {
                for q in got..sent {
                    self.lost.push(Lost {
                        sent_ns: self.sent_ns[s][q],
                        from: from as u8,
                        to: to as u8,
                    });
                }
            } else {
                missing.push((c, s, got, sent));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("missing deliveries: {}", self.describe(&missing)))
        }
    }

    fn missing_report(&self, drain: Duration) -> String {
        format!(
            "missing deliveries: {} of {} arrived within {drain:?} of the last send; {}",
            self.received(),
            self.expected_total(),
            self.describe(&self.incomplete())
        )
    }
}
