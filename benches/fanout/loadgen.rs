//! The load generator: N WebSocket client connections driven by one mio
//! event loop on one thread.
//!
//! Phase 1 (`ClientPool::connect`) opens the connections with bounded
//! concurrency and performs the client handshakes. Phase 2
//! (`ClientPool::run_messages`) has K of the clients send M messages each and
//! checks that every client receives every message exactly once, in order
//! per sender, recording the delivery latency of each.
//!
//! Rooms: without them, every client must receive every sender's messages.
//! With R rooms, client c joins room c % R (`?room=` on its upgrade URL;
//! members interleaved, as clients joining in random order would be) and
//! must receive the messages of exactly the senders in its room.
//!
//! Efficiency matters: the generator must not be the bottleneck. It reads
//! into one large shared buffer, parses frames in place, and keeps per
//! connection only the bytes of a frame split across reads.
//!
//! During the connect and message phases it busy-polls (epoll with a zero
//! timeout): on a small VM, waking an idle CPU costs tens of microseconds and
//! would otherwise put the generator's wake-up latency into every number.
//! Its CPU time is therefore ~100% of the wall time; how busy it really was
//! is measured separately as the share of time outside empty polls.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::rooms;
use crate::sys::Clock;
use crate::wire::{self, Payload};

/// Size of the shared read buffer.
const READ_BUF_LEN: usize = 256 * 1024;
/// Upper bound of read calls per readiness event (never reached in practice:
/// flow control bounds what can be queued).
const MAX_READS_PER_EVENT: usize = 4096;
/// A handshake response larger than this is an error.
const MAX_HANDSHAKE_RESPONSE: usize = 16 * 1024;
/// Connections per loopback source address (127.0.0.1, 127.0.0.2, ...).
const CONNS_PER_SOURCE_ADDR: usize = 2500;
/// How long to keep reading after the last expected delivery, to catch
/// duplicates or stray extra messages.
const LINGER: Duration = Duration::from_millis(100);

/// How senders pace their messages.
#[derive(Clone, Copy, Debug)]
pub enum Pacing {
    /// As fast as possible, with flow control: each sender has at most
    /// `window` messages that have not yet reached all N clients.
    Window { window: u32 },
    /// A fixed offered rate, in messages per second over all senders
    /// (round-robin across senders).
    Rate { per_sec: f64 },
}

/// What one message phase should do.
#[derive(Clone, Copy, Debug)]
pub struct MessagePlan {
    pub senders: usize,
    pub messages_per_sender: u32,
    pub pacing: Pacing,
    pub timeout: Duration,
}

/// What one message phase measured.
pub struct MessageStats {
    pub deliveries: u64,
    /// From the first send to the last delivery.
    pub wall: Duration,
    /// Load generator CPU time over `wall` (~`wall`, as it busy-polls).
    pub loadgen_cpu: Duration,
    /// Load generator time over `wall` spent outside empty polls.
    pub loadgen_busy: Duration,
    /// CPU time over `wall` used by other processes than the server and
    /// the load generator (noise; /proc/stat resolution).
    pub foreign_cpu: Duration,
    /// Server CPU time over `wall` (from the probe passed in).
    pub server_cpu: Duration,
    /// Delivery latency in nanoseconds, over all deliveries.
    pub latency_ns: Histogram<u64>,
    /// Fixed-rate mode: how late the latest send was against its schedule.
    pub max_send_lag: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// TCP connect in progress, or the upgrade request not fully sent yet.
    Connecting,
    /// Upgrade request sent, waiting for `101 Switching Protocols`.
    AwaitingResponse,
    /// WebSocket open.
    Open,
}

struct Handshake {
    expected_accept: String,
    response: Vec<u8>,
}

struct Conn {
    stream: TcpStream,
    state: ConnState,
    handshake: Option<Box<Handshake>>,
    /// Bytes of an incomplete frame carried over to the next read.
    partial: Vec<u8>,
    /// Bytes not yet accepted by the socket.
    out: Vec<u8>,
}

/// N client connections on one poll instance.
pub struct ClientPool {
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
    read_buf: Box<[u8]>,
    rng: XorShift,
    server: SocketAddr,
    /// The number of rooms the clients joined (None: no rooms, all hear all).
    rooms: Option<usize>,
    /// Time spent in polls that returned no events.
    idle: Duration,
}

/// What the connect phase measured.
pub struct ConnectStats {
    /// From the first connect to the last completed handshake.
    pub duration: Duration,
    /// Load generator time spent outside empty polls.
    pub loadgen_busy: Duration,
    /// Connection attempts the kernel dropped because the server's listen
    /// queue was full (machine-wide counter, so only approximately ours).
    pub listen_overflows: u64,
}

impl ClientPool {
    /// Opens `n` WebSocket connections to `server`, spread evenly over
    /// `rooms` rooms if given, at most `concurrency` handshakes at a time.
    /// Returns the pool and the time it took.
    pub fn connect(
        server: SocketAddr,
        n: usize,
        rooms: Option<usize>,
        concurrency: usize,
        timeout: Duration,
    ) -> Result<(ClientPool, ConnectStats), String> {
        if let Some(r) = rooms {
            if r == 0 || n % r != 0 {
                return Err(format!(
                    "{n} clients do not split into {r} rooms of equal size"
                ));
            }
        }
        let poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
        let mut pool = ClientPool {
            poll,
            events: Events::with_capacity(4096),
            conns: Vec::with_capacity(n),
            read_buf: vec![0u8; READ_BUF_LEN].into_boxed_slice(),
            rng: XorShift(0x9E37_79B9_7F4A_7C15),
            server,
            rooms,
            idle: Duration::ZERO,
        };
        let source_addrs = n.div_ceil(CONNS_PER_SOURCE_ADDR).clamp(1, 250);
        let overflows_before = crate::sys::listen_overflows();
        let start = Instant::now();
        let deadline = start + timeout;
        let mut open = 0;
        let mut in_progress = 0;
        while open < n {
            if Instant::now() > deadline {
                return Err(format!(
                    "connect phase timed out after {timeout:?}: {open} of {n} connections open, \
                     {in_progress} handshakes in progress"
                ));
            }
            while pool.conns.len() < n && in_progress < concurrency {
                let i = pool.conns.len();
                let source = Ipv4Addr::new(127, 0, 0, 1 + (i % source_addrs) as u8);
                pool.start_connect(source)
                    .map_err(|e| format!("connection {i} from {source}: {e}"))?;
                in_progress += 1;
            }
            pool.poll_now()?;
            let ready: Vec<usize> = pool.events.iter().map(|e| e.token().0).collect();
            for i in ready {
                if pool
                    .drive_handshake(i)
                    .map_err(|e| format!("connection {i}: {e}"))?
                {
                    open += 1;
                    in_progress -= 1;
                }
            }
        }
        let duration = start.elapsed();
        let loadgen_busy = duration.saturating_sub(pool.idle);
        Ok((
            pool,
            ConnectStats {
                duration,
                loadgen_busy,
                listen_overflows: crate::sys::listen_overflows().saturating_sub(overflows_before),
            },
        ))
    }

    /// Polls without blocking; the time of an empty poll counts as idle.
    fn poll_now(&mut self) -> Result<(), String> {
        let before = Instant::now();
        self.poll
            .poll(&mut self.events, Some(Duration::ZERO))
            .map_err(|e| format!("poll failed: {e}"))?;
        if self.events.is_empty() {
            self.idle += before.elapsed();
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    fn start_connect(&mut self, source: Ipv4Addr) -> io::Result<()> {
        // Every syscall here counts: connect time is measured. Hence
        // SOCK_NONBLOCK at creation, and no separate connect-status query:
        // writing the request fails if the connect failed.
        let stream_type = Type::from(libc::SOCK_STREAM | libc::SOCK_NONBLOCK);
        let socket = Socket::new(Domain::IPV4, stream_type, Some(Protocol::TCP))?;
        socket.set_tcp_nodelay(true)?;
        crate::sys::set_bind_address_no_port(&socket)?;
        socket.bind(&SockAddr::from(SocketAddr::new(IpAddr::V4(source), 0)))?;
        match socket.connect(&SockAddr::from(self.server)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let mut stream = TcpStream::from_std(socket.into());
        let token = Token(self.conns.len());
        self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let key = tungstenite::handshake::client::generate_key();
        let expected_accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let target = rooms::upgrade_target(self.rooms.map(|r| token.0 % r));
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            self.server
        );
        self.conns.push(Conn {
            stream,
            state: ConnState::Connecting,
            handshake: Some(Box::new(Handshake {
                expected_accept,
                response: Vec::new(),
            })),
            partial: Vec::new(),
            out: request.into_bytes(),
        });
        // On loopback the TCP handshake has often completed already.
        let i = self.conns.len() - 1;
        self.send_request(i).map_err(io::Error::other)
    }

    /// Writes (the rest of) the upgrade request once the TCP connect is done.
    fn send_request(&mut self, i: usize) -> Result<(), String> {
        let conn = &mut self.conns[i];
        // While the connect is in progress, a write returns WouldBlock.
        flush(conn).map_err(|e| format!("connect failed: {e}"))?;
        if conn.out.is_empty() {
            conn.state = ConnState::AwaitingResponse;
        }
        Ok(())
    }

    /// Advances connection `i`'s handshake; `Ok(true)` when it just opened.
    fn drive_handshake(&mut self, i: usize) -> Result<bool, String> {
        if self.conns[i].state == ConnState::Connecting {
            self.send_request(i)?;
        }
        let conn = &mut self.conns[i];
        if conn.state != ConnState::AwaitingResponse {
            return Ok(false);
        }
        let Some(hs) = conn.handshake.as_mut() else {
            return Err("handshake state missing".to_string());
        };
        for _ in 0..MAX_READS_PER_EVENT {
            match conn.stream.read(&mut self.read_buf) {
                Ok(0) => return Err("server closed the connection during the handshake".into()),
                Ok(n) => {
                    hs.response.extend_from_slice(&self.read_buf[..n]);
                    if n < self.read_buf.len() {
                        break; // drained; see read_frames
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading handshake response: {e}")),
            }
        }
        let Some(header_len) = parse_upgrade_response(&hs.response, &hs.expected_accept)? else {
            return Ok(false);
        };
        // Anything after the response header is already WebSocket frames.
        conn.partial = hs.response.split_off(header_len);
        conn.handshake = None;
        conn.state = ConnState::Open;
        Ok(true)
    }

    /// Runs one message phase. `server_cpu` reads the server's CPU time; it
    /// is called right before the first send and right after the last delivery.
    pub fn run_messages(
        &mut self,
        plan: &MessagePlan,
        clock: &Clock,
        server_cpu: &mut dyn FnMut() -> Result<Duration, String>,
    ) -> Result<MessageStats, String> {
        let layout = Layout::new(self.conns.len(), plan.senders, self.rooms)?;
        let window = match plan.pacing {
            Pacing::Window { window } => window.max(1),
            // Fixed rate: the window only bounds memory; a full window means
            // the server fell behind and the send waits.
            Pacing::Rate { .. } => plan.messages_per_sender.clamp(1, 1 << 14),
        };
        let mut tracker = Tracker::new(layout, plan.messages_per_sender, window);
        let mut schedule = Schedule::new(plan, layout.k);

        let cpu_before = server_cpu()?;
        let gen_before = crate::sys::self_cpu_time();
        let idle_before = self.idle;
        let machine_before = crate::sys::machine_busy_time().unwrap_or_default();
        let start = Instant::now();
        schedule.start = start;
        let deadline = start + plan.timeout;

        while !tracker.done() {
            let now = Instant::now();
            if now > deadline {
                return Err(tracker.missing_report(plan.timeout));
            }
            self.send_due(&mut tracker, &mut schedule, clock, now)?;
            self.poll_and_handle(&mut tracker, clock)?;
        }
        let wall = start.elapsed();
        let server_cpu_used = server_cpu()?.saturating_sub(cpu_before);
        let loadgen_cpu = crate::sys::self_cpu_time().saturating_sub(gen_before);
        let loadgen_busy = wall.saturating_sub(self.idle - idle_before);
        let foreign_cpu = crate::sys::machine_busy_time()
            .unwrap_or_default()
            .saturating_sub(machine_before)
            .saturating_sub(server_cpu_used + loadgen_cpu);

        // Anything arriving now is a duplicate or a message nobody sent.
        let linger_end = Instant::now() + LINGER;
        while Instant::now() < linger_end {
            self.poll_and_handle(&mut tracker, clock)?;
        }

        Ok(MessageStats {
            deliveries: tracker.received,
            wall,
            loadgen_cpu,
            loadgen_busy,
            foreign_cpu,
            server_cpu: server_cpu_used,
            latency_ns: tracker.latency_ns,
            max_send_lag: schedule.max_lag,
        })
    }

    /// Sends whatever the pacing allows now.
    fn send_due(
        &mut self,
        tracker: &mut Tracker,
        schedule: &mut Schedule,
        clock: &Clock,
        now: Instant,
    ) -> Result<(), String> {
        match schedule.pacing {
            Pacing::Window { .. } => {
                let ready = std::mem::take(&mut tracker.ready_senders);
                for &s in &ready {
                    tracker.sender_queued[s] = false;
                    let mut burst = 0;
                    while tracker.can_send(s) {
                        self.queue_message(tracker, s, clock);
                        burst += 1;
                    }
                    if burst > 0 {
                        self.flush_sender(tracker, s)?;
                    }
                }
                tracker.ready_senders = ready;
                tracker.ready_senders.clear();
            }
            Pacing::Rate { .. } => {
                // Bounded: at most all remaining messages.
                while let Some(due) = schedule.next_due() {
                    if due > now {
                        break;
                    }
                    let s = (schedule.next % tracker.layout.k as u64) as usize;
                    if !tracker.can_send(s) {
                        break; // server behind: wait for deliveries
                    }
                    schedule.max_lag = schedule.max_lag.max(now.saturating_duration_since(due));
                    self.queue_message(tracker, s, clock);
                    self.flush_sender(tracker, s)?;
                    schedule.next += 1;
                }
            }
        }
        Ok(())
    }

    /// Appends sender `s`'s next message to its output buffer.
    fn queue_message(&mut self, tracker: &mut Tracker, s: usize, clock: &Clock) {
        let seq = tracker.sent[s];
        let payload = wire::encode_payload(Payload {
            sender: s as u32,
            seq,
            sent_ns: clock.now_ns(),
        });
        tracker.on_send(s);
        let mask = self.rng.mask();
        let conn = &mut self.conns[tracker.layout.sender_client(s)];
        wire::encode_client_frame(&mut conn.out, wire::OPCODE_TEXT, &payload, mask);
    }

    fn flush_sender(&mut self, tracker: &Tracker, s: usize) -> Result<(), String> {
        let c = tracker.layout.sender_client(s);
        flush(&mut self.conns[c]).map_err(|e| format!("sender {s} (client {c}): write failed: {e}"))
    }

    /// Polls once (without blocking) and handles all events.
    fn poll_and_handle(&mut self, tracker: &mut Tracker, clock: &Clock) -> Result<(), String> {
        self.poll_now()?;
        for event in self.events.iter() {
            let i = event.token().0;
            let conn = &mut self.conns[i];
            if event.is_writable() && !conn.out.is_empty() {
                flush(conn).map_err(|e| format!("client {i}: write failed: {e}"))?;
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                read_frames(i, conn, &mut self.read_buf, tracker, clock, &mut self.rng)?;
            }
        }
        Ok(())
    }
}

/// Reads everything available on client `i` and processes complete frames.
fn read_frames(
    i: usize,
    conn: &mut Conn,
    read_buf: &mut [u8],
    tracker: &mut Tracker,
    clock: &Clock,
    rng: &mut XorShift,
) -> Result<(), String> {
    for _ in 0..MAX_READS_PER_EVENT {
        let n = match conn.stream.read(read_buf) {
            Ok(0) => {
                return Err(format!(
                    "client {i}: server closed the connection (EOF) after {} deliveries to it",
                    tracker.received_by(i)
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("client {i}: read failed: {e}")),
        };
        let now_ns = clock.now_ns();
        if conn.partial.is_empty() {
            let used = process_frames(i, &read_buf[..n], tracker, now_ns, &mut conn.out, rng)?;
            conn.partial.extend_from_slice(&read_buf[used..n]);
        } else {
            conn.partial.extend_from_slice(&read_buf[..n]);
            let data = std::mem::take(&mut conn.partial);
            let used = process_frames(i, &data, tracker, now_ns, &mut conn.out, rng)?;
            conn.partial = data;
            conn.partial.drain(..used);
        }
        // A short read drained the socket. Epoll (edge-triggered, as mio
        // registers it) reports again when more data arrives, so the extra
        // read that would only return WouldBlock can be skipped.
        if n < read_buf.len() {
            break;
        }
    }
    if !conn.out.is_empty() {
        flush(conn).map_err(|e| format!("client {i}: write failed: {e}"))?;
    }
    Ok(())
}

/// Handles the complete frames at the start of `data`; returns bytes used.
fn process_frames(
    i: usize,
    data: &[u8],
    tracker: &mut Tracker,
    now_ns: u64,
    out: &mut Vec<u8>,
    rng: &mut XorShift,
) -> Result<usize, String> {
    let mut used = 0;
    while let Some(frame) =
        wire::parse_server_frame(&data[used..]).map_err(|e| format!("client {i}: {e}"))?
    {
        used += frame.len;
        if !frame.fin || frame.opcode == wire::OPCODE_CONTINUATION {
            return Err(format!(
                "client {i}: unexpected fragmented message from server"
            ));
        }
        match frame.opcode {
            wire::OPCODE_TEXT => tracker
                .on_message(i, frame.payload, now_ns)
                .map_err(|e| format!("client {i}: {e}"))?,
            wire::OPCODE_PING => {
                wire::encode_client_frame(out, wire::OPCODE_PONG, frame.payload, rng.mask())
            }
            wire::OPCODE_PONG => {}
            wire::OPCODE_CLOSE => {
                let code = frame
                    .payload
                    .get(..2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]).to_string())
                    .unwrap_or_else(|| "none".to_string());
                let reason = String::from_utf8_lossy(frame.payload.get(2..).unwrap_or_default());
                return Err(format!(
                    "client {i}: server sent Close (code {code}, reason {reason:?}) after {} \
                     deliveries to this client",
                    tracker.received_by(i)
                ));
            }
            wire::OPCODE_BINARY => {
                return Err(format!("client {i}: unexpected binary message from server"));
            }
            other => return Err(format!("client {i}: unknown opcode {other:#x} from server")),
        }
    }
    Ok(used)
}

/// Writes as much of `conn.out` as the socket accepts.
fn flush(conn: &mut Conn) -> io::Result<()> {
    let mut written = 0;
    while written < conn.out.len() {
        match conn.stream.write(&conn.out[written..]) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "socket closed")),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    conn.out.drain(..written);
    Ok(())
}

/// Checks a `101 Switching Protocols` response; `Ok(Some(header_len))` when complete.
fn parse_upgrade_response(buf: &[u8], expected_accept: &str) -> Result<Option<usize>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HANDSHAKE_RESPONSE => {
            return Err("handshake response header is too large".to_string());
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed handshake response: {e}")),
    };
    if response.code != Some(101) {
        return Err(format!(
            "upgrade refused: HTTP {} {}",
            response.code.unwrap_or(0),
            response.reason.unwrap_or("")
        ));
    }
    let accept = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|h| h.value);
    if accept != Some(expected_accept.as_bytes()) {
        return Err(format!(
            "wrong Sec-WebSocket-Accept: got {:?}, expected {expected_accept:?}",
            accept.map(String::from_utf8_lossy)
        ));
    }
    Ok(Some(len))
}

/// When the fixed-rate pacing wants the next message out.
struct Schedule {
    pacing: Pacing,
    start: Instant,
    /// Index of the next message overall (sender = next % K, seq = next / K).
    next: u64,
    total: u64,
    max_lag: Duration,
}

impl Schedule {
    fn new(plan: &MessagePlan, k: usize) -> Self {
        Schedule {
            pacing: plan.pacing,
            start: Instant::now(),
            next: 0,
            total: k as u64 * u64::from(plan.messages_per_sender),
            max_lag: Duration::ZERO,
        }
    }

    /// Due time of the next fixed-rate message (None in window mode or when all are sent).
    fn next_due(&self) -> Option<Instant> {
        match self.pacing {
            Pacing::Rate { per_sec } if self.next < self.total => {
                Some(self.start + Duration::from_secs_f64(self.next as f64 / per_sec))
            }
            _ => None,
        }
    }
}

/// Who sends to whom: without rooms one group of all N clients that hears
/// all K senders; with R rooms, client c is in room c % R and sender s in
/// room s % R, and each room's K/R senders are spread over its members.
#[derive(Clone, Copy)]
struct Layout {
    n: usize,
    k: usize,
    /// Rooms, or 1 without rooms.
    groups: usize,
}

impl Layout {
    fn new(n: usize, k: usize, rooms: Option<usize>) -> Result<Layout, String> {
        let groups = rooms.unwrap_or(1);
        if groups == 0 || n % groups != 0 {
            return Err(format!(
                "{n} clients do not split into {groups} rooms of equal size"
            ));
        }
        if k == 0 || k > n || k % groups != 0 {
            return Err(format!(
                "{k} senders do not split evenly over {groups} room(s) of {} clients",
                n / groups
            ));
        }
        Ok(Layout { n, k, groups })
    }

    /// Clients per room (N without rooms): the recipients of every message.
    fn group_size(&self) -> usize {
        self.n / self.groups
    }

    fn senders_per_group(&self) -> usize {
        self.k / self.groups
    }

    fn client_group(&self, c: usize) -> usize {
        c % self.groups
    }

    fn sender_group(&self, s: usize) -> usize {
        s % self.groups
    }

    /// Sender `s`'s index among the senders of its room.
    fn sender_slot(&self, s: usize) -> usize {
        s / self.groups
    }

    /// The client that sends as sender `s`: senders are spread evenly over
    /// their room's members (without rooms: client s*N/K).
    fn sender_client(&self, s: usize) -> usize {
        let member = self.sender_slot(s) * self.group_size() / self.senders_per_group();
        self.sender_group(s) + member * self.groups
    }
}

/// Bookkeeping of sends and deliveries; detects loss, duplication, reordering
/// and messages delivered outside their room.
struct Tracker {
    layout: Layout,
    m: u32,
    window: u32,
    /// `expected[r * senders_per_group + slot]`: next sequence number client r
    /// must get from the sender in slot `slot` of its room.
    expected: Vec<u32>,
    /// `remaining[s * window + seq % window]`: clients yet to receive (s, seq).
    remaining: Vec<u32>,
    /// Messages sent by each sender.
    sent: Vec<u32>,
    /// Messages of each sender delivered to all its recipients (they complete in order).
    complete: Vec<u32>,
    /// Senders whose window opened; `sender_queued` avoids listing one twice.
    ready_senders: Vec<usize>,
    sender_queued: Vec<bool>,
    received: u64,
    total: u64,
    latency_ns: Histogram<u64>,
}

impl Tracker {
    fn new(layout: Layout, m: u32, window: u32) -> Self {
        let k = layout.k;
        Tracker {
            layout,
            m,
            window,
            expected: vec![0; layout.n * layout.senders_per_group()],
            remaining: vec![0; k * window as usize],
            sent: vec![0; k],
            complete: vec![0; k],
            ready_senders: (0..k).collect(),
            sender_queued: vec![true; k],
            received: 0,
            total: layout.group_size() as u64 * k as u64 * u64::from(m),
            latency_ns: Histogram::new_with_bounds(1, 600_000_000_000, 3)
                .expect("valid histogram bounds"),
        }
    }

    fn done(&self) -> bool {
        self.received == self.total
    }

    fn can_send(&self, s: usize) -> bool {
        self.sent[s] < self.m && self.sent[s] - self.complete[s] < self.window
    }

    fn on_send(&mut self, s: usize) {
        let slot = s * self.window as usize + (self.sent[s] % self.window) as usize;
        self.remaining[slot] = self.layout.group_size() as u32;
        self.sent[s] += 1;
    }

    /// Client r's expected-sequence counters, one per sender of its room.
    fn expected_of(&self, r: usize) -> &[u32] {
        let per = self.layout.senders_per_group();
        &self.expected[r * per..(r + 1) * per]
    }

    fn received_by(&self, r: usize) -> u64 {
        self.expected_of(r).iter().map(|&e| u64::from(e)).sum()
    }

    /// Checks and records one text message received by client `r`.
    fn on_message(&mut self, r: usize, payload: &[u8], now_ns: u64) -> Result<(), String> {
        let Payload {
            sender,
            seq,
            sent_ns,
        } = wire::decode_payload(payload).ok_or_else(|| {
            format!(
                "received a message that is not a benchmark payload ({} bytes: {:?})",
                payload.len(),
                String::from_utf8_lossy(&payload[..payload.len().min(80)])
            )
        })?;
        let s = sender as usize;
        if s >= self.layout.k || seq >= self.sent[s] {
            return Err(format!(
                "received message (sender {sender}, seq {seq}) that was never sent \
                 (duplicate or corrupted delivery)"
            ));
        }
        let (room, sender_room) = (self.layout.client_group(r), self.layout.sender_group(s));
        if room != sender_room {
            return Err(format!(
                "received message (sender {sender}, seq {seq}) of room r{sender_room}, \
                 but this client is in room r{room}"
            ));
        }
        let index = r * self.layout.senders_per_group() + self.layout.sender_slot(s);
        let expected = &mut self.expected[index];
        if seq != *expected {
            return Err(if seq < *expected {
                format!(
                    "duplicate or out-of-order delivery: got seq {seq} from sender {sender}, \
                     expected {expected}"
                )
            } else {
                let gap = if seq - *expected == 1 {
                    format!("seq {expected}")
                } else {
                    format!("seqs {expected}..={}", seq - 1)
                };
                format!(
                    "missing delivery: got seq {seq} from sender {sender} but {gap} never arrived"
                )
            });
        }
        *expected += 1;
        self.received += 1;
        self.latency_ns
            .saturating_record(now_ns.saturating_sub(sent_ns).max(1));

        let slot = s * self.window as usize + (seq % self.window) as usize;
        self.remaining[slot] -= 1;
        if self.remaining[slot] == 0 {
            // Every recipient got (s, seq); per-sender order means all earlier ones too.
            debug_assert_eq!(seq, self.complete[s]);
            self.complete[s] += 1;
            if !self.sender_queued[s] {
                self.sender_queued[s] = true;
                self.ready_senders.push(s);
            }
        }
        Ok(())
    }

    /// Error text for a run that hit its deadline.
    fn missing_report(&self, timeout: Duration) -> String {
        let layout = &self.layout;
        let mut incomplete = 0;
        let mut examples = Vec::new();
        for r in 0..layout.n {
            for (slot, &got) in self.expected_of(r).iter().enumerate() {
                if got < self.m {
                    incomplete += 1;
                    let s = layout.client_group(r) + slot * layout.groups;
                    if examples.len() < 5 {
                        examples.push(format!(
                            "client {r} got {got}/{} from sender {s} (sender sent {})",
                            self.m, self.sent[s]
                        ));
                    }
                }
            }
        }
        format!(
            "missing deliveries: run did not complete within {timeout:?}; {} of {} deliveries \
             arrived; {incomplete} (client, sender) pairs incomplete, e.g. {}",
            self.received,
            self.total,
            examples.join("; ")
        )
    }
}

/// Cheap PRNG for frame masks.
struct XorShift(u64);

impl XorShift {
    fn mask(&mut self) -> [u8; 4] {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 as u32).to_le_bytes()
    }
}
