//! The clients: N raw WebSocket connections on one mio event loop, one thread.
//!
//! Each offers `permessage-deflate; client_max_window_bits` in its upgrade (or nothing, for
//! the plain runs), checks that the 101 agrees to it (or does not mention it), and reads
//! frames: a frame with RSV1 set is inflated with the connection's own decompressor
//! (zlib-rs, raw DEFLATE, `00 00 ff ff` put back), one without is taken as it is. Every
//! message is checked: its sequence number must be the next one this client expects, and
//! its bytes those that were sent. Anything lost, duplicated, reordered, corrupted or extra
//! fails the run with a message that says which client and which message.
//!
//! Senders compress what they send when the extension was agreed and the plan says so
//! (one compressor for the whole pool, which keeps its context from one message of a
//! connection to the next, as a browser does, and starts afresh for another connection).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use zlib_rs::{Deflate, DeflateFlush, Inflate, InflateFlush, Status};

use crate::message;

/// The shared read buffer.
const READ_BUF_LEN: usize = 256 * 1024;
/// What one message may inflate to (the benchmark's are 4 KiB).
const MAX_INFLATED: usize = 64 * 1024;
/// Frames from the server larger than this are an error.
const MAX_FRAME_PAYLOAD: u64 = 1 << 20;
const MAX_HANDSHAKE_RESPONSE: usize = 16 * 1024;
/// Source addresses 127.0.0.1..=SOURCE_ADDRS, round robin: the server admits at most
/// 4,096 connections per address by default.
const SOURCE_ADDRS: usize = 4;
/// Handshakes in flight at once while connecting (the server's backlog is 1,024).
const CONNECT_CONCURRENCY: usize = 100;
/// How long to keep reading after the last expected delivery, to catch extras.
const LINGER: Duration = Duration::from_millis(100);
/// The end of a sync flush, left off every compressed message (RFC 7692 §7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];
/// zlib's compression level of the senders.
const CLIENT_LEVEL: i32 = 6;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
const RSV1: u8 = 0x40;

/// What the clients ask for in their upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    /// Offer `permessage-deflate; client_max_window_bits`.
    pub deflate: bool,
    /// Add `client_no_context_takeover`: the client resets its compressor after every
    /// message, so the server needs no decompressor for it.
    pub client_no_context_takeover: bool,
    /// Join room `c<i>` (`?room=`), one room per client: a message a client sends comes
    /// back to it alone.
    pub own_rooms: bool,
}

/// The extension's parameters as the server's 101 stated them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    pub server_max_window_bits: Option<u8>,
    pub client_max_window_bits: u8,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// TCP connect in progress, or the upgrade request not all written yet.
    Connecting,
    /// Upgrade request sent, waiting for the 101.
    AwaitingResponse,
    Open,
}

struct Handshake {
    expected_accept: String,
    response: Vec<u8>,
}

struct Conn {
    stream: TcpStream,
    state: State,
    handshake: Option<Box<Handshake>>,
    /// Bytes of an incomplete frame carried over to the next read.
    partial: Vec<u8>,
    /// Bytes the socket has not taken yet.
    out: Vec<u8>,
    agreed: Option<Agreed>,
    /// Made at the first compressed message.
    inflate: Option<Box<Inflate>>,
    /// The sequence numbers this client must receive in the current run, in order; `start`
    /// is the next one.
    expect: Range<u32>,
}

/// What one run does: who sends which message, who must receive what.
pub struct Plan {
    /// `(client, seq)` in the order they are sent.
    pub sends: Vec<(usize, u32)>,
    /// How many clients must receive each message.
    pub recipients: u32,
    /// For each client, the sequence numbers it must receive, in order.
    pub expect: Vec<Range<u32>>,
    /// Messages sent but not yet received by all their recipients, at most.
    pub window: usize,
    /// Senders compress their messages (when the extension was agreed).
    pub compress: bool,
    pub timeout: Duration,
}

/// What one run measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunStats {
    pub deliveries: u64,
    /// Of those, how many came compressed (RSV1).
    pub compressed: u64,
    /// From the first send to the last delivery.
    pub wall: Duration,
    /// Everything the clients read in that time (frame headers and payloads).
    pub wire_bytes: u64,
    /// The payloads of the data frames as they came (compressed or not).
    pub payload_bytes: u64,
    /// The same once inflated: what the messages are.
    pub message_bytes: u64,
    /// CPU time of the server over `wall` (from the probe given to `run`).
    pub server_cpu: Duration,
    /// CPU time of this process over `wall`.
    pub loadgen_cpu: Duration,
    /// CPU time other processes used over `wall` (/proc/stat resolution).
    pub foreign_cpu: Duration,
}

/// Messages in flight: their bytes and how many recipients have yet to get them.
struct Tracker {
    inflight: HashMap<u32, (Vec<u8>, u32)>,
    stats: RunStats,
    total: u64,
}

/// N client connections on one poll instance.
pub struct Pool {
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
    read_buf: Box<[u8]>,
    inflated: Box<[u8]>,
    server: SocketAddr,
    offer: Offer,
    /// The senders' compressor: its window bits and the client whose context it holds.
    deflate: Option<(Deflate, u8, usize)>,
    mask: XorShift,
}

impl Pool {
    /// Opens `n` connections to `server` with `offer` and completes their handshakes.
    pub fn connect(
        server: SocketAddr,
        n: usize,
        offer: Offer,
        timeout: Duration,
    ) -> Result<Pool, String> {
        let mut pool = Pool {
            poll: Poll::new().map_err(|e| format!("cannot create poll: {e}"))?,
            events: Events::with_capacity(4096),
            conns: Vec::with_capacity(n),
            read_buf: vec![0u8; READ_BUF_LEN].into_boxed_slice(),
            inflated: vec![0u8; MAX_INFLATED].into_boxed_slice(),
            server,
            offer,
            deflate: None,
            mask: XorShift(0x2545_F491_4F6C_DD1D),
        };
        let deadline = Instant::now() + timeout;
        let (mut open, mut in_progress) = (0, 0);
        while open < n {
            if Instant::now() > deadline {
                return Err(format!(
                    "connecting timed out after {timeout:?}: {open} of {n} connections open"
                ));
            }
            while pool.conns.len() < n && in_progress < CONNECT_CONCURRENCY {
                let i = pool.conns.len();
                pool.start_connect()
                    .map_err(|e| format!("client {i}: connect failed: {e}"))?;
                in_progress += 1;
            }
            pool.poll
                .poll(&mut pool.events, Some(Duration::from_millis(10)))
                .map_err(|e| format!("poll failed: {e}"))?;
            let ready: Vec<usize> = pool.events.iter().map(|e| e.token().0).collect();
            for i in ready {
                if pool
                    .drive_handshake(i)
                    .map_err(|e| format!("client {i}: {e}"))?
                {
                    open += 1;
                    in_progress -= 1;
                }
            }
        }
        Ok(pool)
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// What the server agreed to with client `i`.
    pub fn agreed(&self, i: usize) -> Option<Agreed> {
        self.conns[i].agreed
    }

    fn start_connect(&mut self) -> io::Result<()> {
        let i = self.conns.len();
        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % SOURCE_ADDRS) as u8);
        let socket = Socket::new(
            Domain::IPV4,
            Type::from(libc::SOCK_STREAM | libc::SOCK_NONBLOCK),
            Some(Protocol::TCP),
        )?;
        socket.set_tcp_nodelay(true)?;
        crate::sys::set_bind_address_no_port(&socket)?;
        socket.bind(&SockAddr::from(SocketAddr::new(IpAddr::V4(source), 0)))?;
        match socket.connect(&SockAddr::from(self.server)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let mut stream = TcpStream::from_std(socket.into());
        self.poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let key = tungstenite::handshake::client::generate_key();
        let expected_accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let target = if self.offer.own_rooms {
            format!("/?room=c{i}")
        } else {
            "/".to_string()
        };
        let extensions = match self.offer {
            Offer { deflate: false, .. } => String::new(),
            Offer {
                client_no_context_takeover: false,
                ..
            } => "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                .to_string(),
            Offer { .. } => "Sec-WebSocket-Extensions: permessage-deflate; \
                             client_max_window_bits; client_no_context_takeover\r\n"
                .to_string(),
        };
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extensions}\r\n",
            self.server
        );
        self.conns.push(Conn {
            stream,
            state: State::Connecting,
            handshake: Some(Box::new(Handshake {
                expected_accept,
                response: Vec::new(),
            })),
            partial: Vec::new(),
            out: request.into_bytes(),
            agreed: None,
            inflate: None,
            expect: 0..0,
        });
        self.send_request(i).map_err(io::Error::other)
    }

    fn send_request(&mut self, i: usize) -> Result<(), String> {
        let conn = &mut self.conns[i];
        flush(conn).map_err(|e| format!("connect failed: {e}"))?;
        if conn.out.is_empty() {
            conn.state = State::AwaitingResponse;
        }
        Ok(())
    }

    /// Advances client `i`'s handshake; `Ok(true)` when it just opened.
    fn drive_handshake(&mut self, i: usize) -> Result<bool, String> {
        if self.conns[i].state == State::Connecting {
            self.send_request(i)?;
        }
        let conn = &mut self.conns[i];
        if conn.state != State::AwaitingResponse {
            return Ok(false);
        }
        let Some(hs) = conn.handshake.as_mut() else {
            return Err("handshake state missing".to_string());
        };
        loop {
            match conn.stream.read(&mut self.read_buf) {
                Ok(0) => return Err("server closed the connection during the handshake".into()),
                Ok(n) => hs.response.extend_from_slice(&self.read_buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading the handshake response: {e}")),
            }
        }
        let Some((header_len, agreed)) =
            parse_upgrade_response(&hs.response, &hs.expected_accept, self.offer)?
        else {
            return Ok(false);
        };
        conn.partial = hs.response.split_off(header_len);
        if !conn.partial.is_empty() {
            return Err("the server sent frames before any message was sent".to_string());
        }
        conn.handshake = None;
        conn.agreed = agreed;
        conn.state = State::Open;
        Ok(true)
    }

    /// Runs `plan`. `server_cpu` reads the server's CPU time: right before the first send
    /// and right after the last delivery.
    pub fn run(
        &mut self,
        plan: &Plan,
        server_cpu: &mut dyn FnMut() -> Result<Duration, String>,
    ) -> Result<RunStats, String> {
        if plan.expect.len() != self.conns.len() {
            return Err("the plan does not cover every client".to_string());
        }
        for (conn, expect) in self.conns.iter_mut().zip(&plan.expect) {
            conn.expect = expect.clone();
        }
        let total: u64 = plan
            .expect
            .iter()
            .map(|r| u64::from(r.end.saturating_sub(r.start)))
            .sum();
        if total != plan.sends.len() as u64 * u64::from(plan.recipients) {
            return Err(format!(
                "the plan expects {total} deliveries but sends {} messages to {} clients each",
                plan.sends.len(),
                plan.recipients
            ));
        }
        let mut tracker = Tracker {
            inflight: HashMap::with_capacity(plan.window.max(1) * 2),
            stats: RunStats::default(),
            total,
        };
        let mut next_send = 0;

        let cpu_before = server_cpu()?;
        let self_before = crate::sys::self_cpu_time();
        let machine_before = crate::sys::machine_busy_time().unwrap_or_default();
        let start = Instant::now();
        let deadline = start + plan.timeout;
        while tracker.stats.deliveries < tracker.total {
            if Instant::now() > deadline {
                return Err(self.missing_report(&tracker, plan, next_send));
            }
            while next_send < plan.sends.len() && tracker.inflight.len() < plan.window.max(1) {
                let (client, seq) = plan.sends[next_send];
                self.send(client, seq, plan, &mut tracker)?;
                next_send += 1;
            }
            self.poll_and_read(&mut tracker, Some(Duration::from_millis(10)))?;
        }
        let mut stats = tracker.stats;
        stats.wall = start.elapsed();
        stats.server_cpu = server_cpu()?.saturating_sub(cpu_before);
        stats.loadgen_cpu = crate::sys::self_cpu_time().saturating_sub(self_before);
        stats.foreign_cpu = crate::sys::machine_busy_time()
            .unwrap_or_default()
            .saturating_sub(machine_before)
            .saturating_sub(stats.server_cpu + stats.loadgen_cpu);
        // Anything that comes now is a duplicate or a message nobody sent.
        let linger_end = Instant::now() + LINGER;
        while Instant::now() < linger_end {
            self.poll_and_read(&mut tracker, Some(Duration::from_millis(10)))?;
        }
        if let Some(i) = self.conns.iter().position(|c| !c.out.is_empty()) {
            return Err(format!("client {i}: could not write all it had to send"));
        }
        Ok(stats)
    }

    /// Client `client` sends message `seq`, compressed if the plan says so and it agreed.
    fn send(
        &mut self,
        client: usize,
        seq: u32,
        plan: &Plan,
        tracker: &mut Tracker,
    ) -> Result<(), String> {
        let text = message::message(seq);
        let mut frame = Vec::with_capacity(text.len() + 16);
        match self.conns[client].agreed {
            Some(agreed) if plan.compress => {
                let compressed = self.compress(client, agreed, &text)?;
                encode_client_frame(&mut frame, RSV1 | OP_TEXT, &compressed, self.mask.mask());
            }
            _ => encode_client_frame(&mut frame, OP_TEXT, &text, self.mask.mask()),
        }
        if tracker
            .inflight
            .insert(seq, (text, plan.recipients))
            .is_some()
        {
            return Err(format!("the plan sends message {seq} twice"));
        }
        let conn = &mut self.conns[client];
        conn.out.extend_from_slice(&frame);
        flush(conn).map_err(|e| format!("client {client}: write failed: {e}"))
    }

    /// Compresses one message of `client` with the pool's compressor: with the context of
    /// its earlier messages unless it agreed to reset after each.
    fn compress(&mut self, client: usize, agreed: Agreed, text: &[u8]) -> Result<Vec<u8>, String> {
        let bits = agreed.client_max_window_bits.max(9);
        if !matches!(&self.deflate, Some((_, b, _)) if *b == bits) {
            self.deflate = Some((Deflate::new(CLIENT_LEVEL, false, bits), bits, client));
        }
        let (deflate, _, owner) = self.deflate.as_mut().expect("made above");
        if *owner != client {
            deflate.reset();
            *owner = client;
        }
        let mut out = vec![0u8; text.len() + text.len() / 16 + 64];
        let (in_before, out_before) = (deflate.total_in(), deflate.total_out());
        let status = deflate
            .compress(text, &mut out, DeflateFlush::SyncFlush)
            .map_err(|e| format!("client {client}: deflate failed: {e:?}"))?;
        let read = (deflate.total_in() - in_before) as usize;
        let wrote = (deflate.total_out() - out_before) as usize;
        if read != text.len() || wrote == out.len() || status == Status::StreamEnd {
            return Err(format!(
                "client {client}: deflate did not finish in one call ({read} of {} bytes in, \
                 {wrote} out, {status:?})",
                text.len()
            ));
        }
        out.truncate(wrote);
        if !out.ends_with(&TAIL) {
            return Err(format!(
                "client {client}: a sync flush that does not end in 00 00 ff ff"
            ));
        }
        out.truncate(wrote - TAIL.len());
        if agreed.client_no_context_takeover {
            deflate.reset();
        }
        Ok(out)
    }

    fn poll_and_read(
        &mut self,
        tracker: &mut Tracker,
        timeout: Option<Duration>,
    ) -> Result<(), String> {
        self.poll
            .poll(&mut self.events, timeout)
            .map_err(|e| format!("poll failed: {e}"))?;
        for event in self.events.iter() {
            let i = event.token().0;
            let conn = &mut self.conns[i];
            if event.is_writable() && !conn.out.is_empty() {
                flush(conn).map_err(|e| format!("client {i}: write failed: {e}"))?;
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                read_frames(
                    i,
                    conn,
                    &mut self.read_buf,
                    &mut self.inflated,
                    tracker,
                    &mut self.mask,
                )?;
            }
        }
        Ok(())
    }

    /// The error of a run that hit its deadline.
    fn missing_report(&self, tracker: &Tracker, plan: &Plan, sent: usize) -> String {
        let behind: Vec<String> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.expect.start < c.expect.end)
            .take(5)
            .map(|(i, c)| format!("client {i} still waits for message {}", c.expect.start))
            .collect();
        format!(
            "missing deliveries: the run did not finish within {:?}: {} of {} deliveries, \
             {sent} of {} messages sent; e.g. {}",
            plan.timeout,
            tracker.stats.deliveries,
            tracker.total,
            plan.sends.len(),
            behind.join("; ")
        )
    }
}

/// Reads all that client `i`'s socket has and handles the complete frames.
fn read_frames(
    i: usize,
    conn: &mut Conn,
    read_buf: &mut [u8],
    inflated: &mut [u8],
    tracker: &mut Tracker,
    mask: &mut XorShift,
) -> Result<(), String> {
    loop {
        let n = match conn.stream.read(read_buf) {
            Ok(0) => {
                return Err(format!(
                    "client {i}: the server closed the connection (EOF) while it waited for \
                     message {}",
                    conn.expect.start
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("client {i}: read failed: {e}")),
        };
        tracker.stats.wire_bytes += n as u64;
        if conn.partial.is_empty() {
            let used = handle_frames(i, conn, &read_buf[..n], inflated, tracker, mask)?;
            conn.partial.extend_from_slice(&read_buf[used..n]);
        } else {
            conn.partial.extend_from_slice(&read_buf[..n]);
            let data = std::mem::take(&mut conn.partial);
            let used = handle_frames(i, conn, &data, inflated, tracker, mask)?;
            conn.partial = data;
            conn.partial.drain(..used);
        }
        if n < read_buf.len() {
            // Drained: edge-triggered epoll reports again when more comes.
            break;
        }
    }
    if !conn.out.is_empty() {
        flush(conn).map_err(|e| format!("client {i}: write failed: {e}"))?;
    }
    Ok(())
}

/// Handles the complete frames at the start of `data`; returns the bytes used.
fn handle_frames(
    i: usize,
    conn: &mut Conn,
    data: &[u8],
    inflated: &mut [u8],
    tracker: &mut Tracker,
    mask: &mut XorShift,
) -> Result<usize, String> {
    let mut used = 0;
    while let Some(frame) =
        parse_server_frame(&data[used..]).map_err(|e| format!("client {i}: {e}"))?
    {
        used += frame.len;
        let compressed = frame.b0 & RSV1 != 0;
        let opcode = frame.b0 & 0x0F;
        if compressed && (conn.agreed.is_none() || opcode != OP_TEXT && opcode != OP_BINARY) {
            return Err(format!(
                "client {i}: RSV1 set on a frame (opcode {opcode:#x}) without permessage-deflate \
                 agreed for it"
            ));
        }
        match opcode {
            OP_TEXT => {}
            OP_PING => {
                encode_client_frame(&mut conn.out, OP_PONG, frame.payload, mask.mask());
                continue;
            }
            OP_PONG => continue,
            OP_CLOSE => {
                let code = frame.payload.get(..2).map_or("none".to_string(), |c| {
                    u16::from_be_bytes([c[0], c[1]]).to_string()
                });
                let reason = String::from_utf8_lossy(frame.payload.get(2..).unwrap_or_default());
                return Err(format!(
                    "client {i}: the server sent Close (code {code}, reason {reason:?}) while \
                     it waited for message {}",
                    conn.expect.start
                ));
            }
            OP_BINARY | OP_CONTINUATION => {
                return Err(format!(
                    "client {i}: unexpected frame with opcode {opcode:#x}"
                ));
            }
            other => return Err(format!("client {i}: unknown opcode {other:#x}")),
        }
        if !frame.fin {
            return Err(format!("client {i}: unexpected fragmented message"));
        }
        tracker.stats.payload_bytes += frame.payload.len() as u64;
        let text: &[u8] = if compressed {
            let agreed = conn.agreed.expect("checked above");
            let inflate = conn
                .inflate
                .get_or_insert_with(|| Box::new(Inflate::new(false, 15)));
            let len = inflate_message(inflate, frame.payload, inflated).map_err(|e| {
                format!(
                    "client {i}: message {} (a {}-byte compressed frame): {e}",
                    conn.expect.start,
                    frame.payload.len()
                )
            })?;
            if agreed.server_no_context_takeover {
                // The server promised each message stands alone: check that it does.
                inflate.reset(false);
            }
            tracker.stats.compressed += 1;
            &inflated[..len]
        } else {
            frame.payload
        };
        tracker.stats.message_bytes += text.len() as u64;
        deliver(i, conn, text, tracker)?;
    }
    Ok(used)
}

/// Checks one message client `i` received and counts it.
fn deliver(i: usize, conn: &mut Conn, text: &[u8], tracker: &mut Tracker) -> Result<(), String> {
    let Some(seq) = message::seq_of(text) else {
        return Err(format!(
            "client {i}: received something that is not a benchmark message ({} bytes: {:?})",
            text.len(),
            String::from_utf8_lossy(&text[..text.len().min(60)])
        ));
    };
    let expected = conn.expect.start;
    if conn.expect.is_empty() {
        return Err(format!(
            "client {i}: received message {seq}, but it expected nothing more (duplicate or \
             stray delivery)"
        ));
    }
    if seq != expected {
        return Err(if seq < expected {
            format!(
                "client {i}: duplicate or out-of-order delivery: got {seq}, expected {expected}"
            )
        } else {
            format!("client {i}: missing delivery: got message {seq} but {expected} never came")
        });
    }
    let Some((sent, remaining)) = tracker.inflight.get_mut(&seq) else {
        return Err(format!(
            "client {i}: received message {seq}, which is not in flight"
        ));
    };
    if text != sent.as_slice() {
        let at = text
            .iter()
            .zip(sent.iter())
            .position(|(a, b)| a != b)
            .unwrap_or(text.len().min(sent.len()));
        return Err(format!(
            "client {i}: message {seq} arrived corrupted: {} bytes instead of {}, first \
             difference at byte {at}",
            text.len(),
            sent.len()
        ));
    }
    *remaining -= 1;
    if *remaining == 0 {
        tracker.inflight.remove(&seq);
    }
    conn.expect.start += 1;
    tracker.stats.deliveries += 1;
    Ok(())
}

/// Inflates one compressed message (the payload, then the tail the sender left off) into
/// `out`; returns its length.
fn inflate_message(inflate: &mut Inflate, payload: &[u8], out: &mut [u8]) -> Result<usize, String> {
    let mut written = 0;
    for chunk in [payload, &TAIL[..]] {
        let mut input = chunk;
        while !input.is_empty() {
            let (in_before, out_before) = (inflate.total_in(), inflate.total_out());
            let status = inflate
                .decompress(input, &mut out[written..], InflateFlush::SyncFlush)
                .map_err(|e| format!("invalid compressed data: {e:?}"))?;
            let read = (inflate.total_in() - in_before) as usize;
            let wrote = (inflate.total_out() - out_before) as usize;
            input = &input[read..];
            written += wrote;
            if written == out.len() {
                return Err(format!("inflates to {MAX_INFLATED} bytes or more"));
            }
            if status == Status::StreamEnd && !input.is_empty() {
                return Err("a final DEFLATE block before the end of the message".to_string());
            }
            if read == 0 && wrote == 0 && !input.is_empty() {
                return Err(format!("inflate made no progress ({status:?})"));
            }
        }
    }
    Ok(written)
}

/// Writes as much of `conn.out` as the socket takes.
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

/// Appends a masked client frame: `b0` is FIN-less (FIN is added), RSV1 and opcode.
fn encode_client_frame(out: &mut Vec<u8>, b0: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | b0);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if let Ok(len16) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&len16.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// One complete frame from the server.
struct ServerFrame<'a> {
    fin: bool,
    /// The first byte: FIN, RSV1-3, opcode.
    b0: u8,
    payload: &'a [u8],
    /// Header and payload.
    len: usize,
}

/// The frame at the start of `buf`; `Ok(None)` when more bytes are needed.
fn parse_server_frame(buf: &[u8]) -> Result<Option<ServerFrame<'_>>, String> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x30 != 0 {
        return Err(format!("RSV2 or RSV3 set (first byte {b0:#04x})"));
    }
    if b1 & 0x80 != 0 {
        return Err("a masked frame from the server".to_string());
    }
    let (header_len, payload_len) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (4, u64::from(u16::from_be_bytes([b[0], b[1]]))),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut len = [0u8; 8];
                len.copy_from_slice(b);
                (10, u64::from_be_bytes(len))
            }
            None => return Ok(None),
        },
        short => (2, u64::from(short)),
    };
    if payload_len > MAX_FRAME_PAYLOAD {
        return Err(format!(
            "a frame of {payload_len} bytes, more than any message sent"
        ));
    }
    let total = header_len + payload_len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(ServerFrame {
        fin: b0 & 0x80 != 0,
        b0,
        payload: &buf[header_len..total],
        len: total,
    }))
}

/// Checks a 101 response: `Ok(Some((header_len, agreed)))` once complete.
fn parse_upgrade_response(
    buf: &[u8],
    expected_accept: &str,
    offer: Offer,
) -> Result<Option<(usize, Option<Agreed>)>, String> {
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
    let header = |name: &str| {
        response
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
            .collect::<Vec<_>>()
    };
    let accept = header("sec-websocket-accept");
    if accept != [expected_accept] {
        return Err(format!(
            "wrong Sec-WebSocket-Accept: got {accept:?}, expected {expected_accept:?}"
        ));
    }
    let extensions = header("sec-websocket-extensions");
    let agreed = match (offer.deflate, extensions.as_slice()) {
        (false, []) => None,
        (false, _) => {
            return Err(format!(
                "the server answered extensions {extensions:?} that were not offered"
            ));
        }
        (true, [one]) => Some(parse_agreed(one, offer)?),
        (true, _) => {
            return Err(format!(
                "permessage-deflate was offered but the 101 says Sec-WebSocket-Extensions \
                 {extensions:?}"
            ));
        }
    };
    Ok(Some((len, agreed)))
}

/// `permessage-deflate; server_no_context_takeover; client_max_window_bits=15`, say.
fn parse_agreed(value: &str, offer: Offer) -> Result<Agreed, String> {
    let bad = |why: &str| format!("bad Sec-WebSocket-Extensions {value:?} in the 101: {why}");
    let mut parts = value.split(';').map(str::trim);
    if parts.next() != Some("permessage-deflate") {
        return Err(bad("not permessage-deflate"));
    }
    let mut agreed = Agreed {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: None,
        client_max_window_bits: 15,
    };
    let bits = |v: &str| {
        v.parse::<u8>()
            .ok()
            .filter(|b| (8..=15).contains(b))
            .ok_or_else(|| bad("window bits out of 8..=15"))
    };
    for param in parts {
        match param.split_once('=') {
            None if param == "server_no_context_takeover" => {
                agreed.server_no_context_takeover = true;
            }
            None if param == "client_no_context_takeover" => {
                agreed.client_no_context_takeover = true;
            }
            Some(("server_max_window_bits", v)) => agreed.server_max_window_bits = Some(bits(v)?),
            Some(("client_max_window_bits", v)) => agreed.client_max_window_bits = bits(v)?,
            _ => return Err(bad(&format!("unknown parameter {param:?}"))),
        }
    }
    if offer.client_no_context_takeover && !agreed.client_no_context_takeover {
        // Allowed by the RFC, but then the server does not do what this run measures.
        return Err(bad("client_no_context_takeover was offered but not agreed"));
    }
    Ok(agreed)
}

/// A cheap generator for frame masks.
struct XorShift(u64);

impl XorShift {
    fn mask(&mut self) -> [u8; 4] {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 as u32).to_le_bytes()
    }
}
