//! The clients: many WebSocket connections, `ws://` or `wss://`, on one mio loop in this
//! process (one thread: the bench pins it to a CPU of its own). For `wss://` each is a rustls
//! `ClientConnection` driven by hand over a non-blocking socket (read_tls, process, read
//! plaintext; write plaintext, write_tls), trusting only the bench's self-signed
//! certificate, with session resumption off so every handshake is a full one.
//!
//! Every client checks every message: the next one in order, complete, byte for byte what
//! was sent. A loss, duplicate, reordering, corruption, extra message, close or error fails
//! the run.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::{net, sys, wire};

/// Handshakes (TCP, TLS, upgrade) under way at once while connecting.
const CONNECTING_AT_ONCE: usize = 200;
/// Source addresses 127.0.0.1..=SOURCE_ADDRS, round robin: the server admits at most 4,096
/// connections and 128 handshakes per address by default.
const SOURCE_ADDRS: usize = 8;
/// After the last expected message, how long to watch for extra ones.
const DRAIN: Duration = Duration::from_millis(200);

/// A client configuration that trusts `cert` only.
pub fn tls_config(cert: CertificateDer<'static>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots
        .add(cert)
        .map_err(|e| format!("cannot trust the bench certificate: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("rustls client config: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every connection a full handshake, as the first visit of a browser.
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What a run sends and expects.
pub struct Plan {
    /// The payloads, in order (client 0 sends them; every client must get all of them).
    pub messages: Vec<Vec<u8>>,
    /// Messages in flight: one leaves the window once every client has it.
    pub window: usize,
    pub timeout: Duration,
}

/// What a run measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunStats {
    pub deliveries: u64,
    /// From the first send to the last delivery.
    pub wall: Duration,
    pub server_cpu: Duration,
    /// This process (the clients).
    pub loadgen_cpu: Duration,
    /// The machine's busy time minus the server's and ours.
    pub foreign_cpu: Duration,
    /// Bytes the clients read from their sockets (TLS records or frames).
    pub wire_bytes: u64,
}

/// What a connection does with message number `seq` (its payload).
type OnText<'a> = dyn FnMut(usize, &[u8]) -> Result<(), String> + 'a;

enum Phase {
    /// Upgrade request sent; the 101 must carry this `Sec-WebSocket-Accept`.
    Upgrading {
        accept: String,
    },
    Open,
}

struct Conn {
    sock: TcpStream,
    tls: Option<ClientConnection>,
    phase: Phase,
    /// Plain only: bytes to write, from `out_at`.
    out: Vec<u8>,
    out_at: usize,
    /// Plaintext received, not yet parsed, from `in_at`.
    inbuf: Vec<u8>,
    in_at: usize,
    /// The sequence number of the next message this client must get.
    next: usize,
    eof: bool,
}

fn would_block(e: &io::Error) -> bool {
    // A socket still connecting refuses reads and writes with ENOTCONN or EAGAIN.
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
    )
}

impl Conn {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            // Before the handshake is done rustls keeps the plaintext for later.
            Some(tls) => tls.writer().write_all(bytes)?,
            None => self.out.extend_from_slice(bytes),
        }
        self.write_out()
    }

    /// Writes what waits until the socket refuses.
    fn write_out(&mut self) -> io::Result<()> {
        match &mut self.tls {
            Some(tls) => {
                while tls.wants_write() {
                    match tls.write_tls(&mut self.sock) {
                        Ok(_) => {}
                        Err(e) if would_block(&e) => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            None => {
                while self.out_at < self.out.len() {
                    match self.sock.write(&self.out[self.out_at..]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => self.out_at += n,
                        Err(e) if would_block(&e) => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                if self.out_at == self.out.len() {
                    self.out.clear();
                    self.out_at = 0;
                }
            }
        }
        Ok(())
    }

    /// Reads what the socket has into `inbuf` (as plaintext); returns the bytes read from
    /// the socket. Then writes what is owed (TLS handshake messages).
    fn read_in(&mut self, scratch: &mut [u8]) -> io::Result<u64> {
        let mut wire = 0u64;
        match &mut self.tls {
            Some(tls) => loop {
                match tls.read_tls(&mut self.sock) {
                    Ok(0) => self.eof = true,
                    Ok(n) => wire += n as u64,
                    Err(e) if would_block(&e) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
                let state = tls
                    .process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let mut left = state.plaintext_bytes_to_read();
                while left > 0 {
                    let n = tls.reader().read(scratch)?;
                    if n == 0 {
                        break;
                    }
                    self.inbuf.extend_from_slice(&scratch[..n]);
                    left = left.saturating_sub(n);
                }
                if state.peer_has_closed() {
                    self.eof = true;
                }
                if self.eof {
                    break;
                }
            },
            None => loop {
                match self.sock.read(scratch) {
                    Ok(0) => {
                        self.eof = true;
                        break;
                    }
                    Ok(n) => {
                        wire += n as u64;
                        self.inbuf.extend_from_slice(&scratch[..n]);
                    }
                    Err(e) if would_block(&e) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            },
        }
        self.write_out()?;
        Ok(wire)
    }

    /// Parses the frames received: text to `on_text`, pings answered; anything else fails.
    fn frames(&mut self, on_text: &mut OnText<'_>) -> Result<(), String> {
        let mut pongs = Vec::new();
        while let Some(frame) = wire::parse_server_frame(&self.inbuf[self.in_at..])? {
            if !frame.fin {
                return Err("a fragmented message (the server sends whole frames)".into());
            }
            match frame.opcode {
                wire::OPCODE_TEXT => {
                    on_text(self.next, frame.payload)?;
                    self.next += 1;
                }
                wire::OPCODE_PING => {
                    wire::encode_client_frame(
                        &mut pongs,
                        wire::OPCODE_PONG,
                        frame.payload,
                        [1, 2, 3, 4],
                    );
                }
                wire::OPCODE_PONG => {}
                wire::OPCODE_CLOSE => {
                    let (code, reason) = net::close_parts(frame.payload);
                    return Err(format!("the server closed: {code:?} {reason:?}"));
                }
                op => return Err(format!("unexpected frame, opcode {op:#x}")),
            }
            self.in_at += frame.len;
        }
        if self.in_at == self.inbuf.len() {
            self.inbuf.clear();
            self.in_at = 0;
        } else if self.in_at > 64 * 1024 {
            self.inbuf.drain(..self.in_at);
            self.in_at = 0;
        }
        if !pongs.is_empty() {
            self.send(&pongs)
                .map_err(|e| format!("cannot answer a ping: {e}"))?;
        }
        Ok(())
    }
}

/// Connected clients.
pub struct Pool {
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
    scratch: Vec<u8>,
    wire_bytes: u64,
}

impl Pool {
    /// Opens `n` WebSocket connections to `addr` (`wss://` with `tls`), at most
    /// [`CONNECTING_AT_ONCE`] handshakes at a time, and returns once all are open.
    pub fn connect(
        addr: SocketAddr,
        tls: Option<&Arc<ClientConfig>>,
        n: usize,
        timeout: Duration,
    ) -> Result<Pool, String> {
        let mut pool = Pool {
            poll: Poll::new().map_err(|e| format!("cannot create a poll: {e}"))?,
            events: Events::with_capacity(1024),
            conns: Vec::with_capacity(n),
            scratch: vec![0; 64 * 1024],
            wire_bytes: 0,
        };
        let deadline = Instant::now() + timeout;
        let mut open = 0;
        while open < n {
            while pool.conns.len() < n && pool.conns.len() - open < CONNECTING_AT_ONCE {
                let i = pool.conns.len();
                let conn = pool
                    .open_one(addr, tls, i)
                    .map_err(|e| format!("client {i}: cannot connect: {e}"))?;
                pool.conns.push(conn);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "only {open} of {n} connections open after {timeout:?}"
                ));
            }
            pool.poll_once(Duration::from_millis(100), &mut |i, conn| {
                if let Phase::Upgrading { accept } = &conn.phase {
                    let Some(head) = net::parse_response(&conn.inbuf)? else {
                        return Ok(());
                    };
                    if head.status != 101 || head.accept.as_deref() != Some(accept) {
                        return Err(format!(
                            "client {i}: upgrade answered {} (accept {:?}): {}",
                            head.status, head.accept, head.body
                        ));
                    }
                    conn.inbuf.drain(..head.head_len);
                    conn.phase = Phase::Open;
                    open += 1;
                }
                conn.frames(&mut |_, _| Err(format!("client {i}: a message before any was sent")))
            })?;
        }
        Ok(pool)
    }

    fn open_one(
        &mut self,
        addr: SocketAddr,
        tls: Option<&Arc<ClientConfig>>,
        i: usize,
    ) -> Result<Conn, String> {
        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % SOURCE_ADDRS) as u8);
        let mut sock = net::connect(addr, source, None).map_err(|e| e.to_string())?;
        self.poll
            .registry()
            .register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| format!("cannot register: {e}"))?;
        let tls = match tls {
            Some(config) => {
                let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
                Some(ClientConnection::new(Arc::clone(config), name).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        let upgrade = net::upgrade("/tls-bench", addr);
        let mut conn = Conn {
            sock,
            tls,
            phase: Phase::Upgrading {
                accept: upgrade.accept,
            },
            out: Vec::new(),
            out_at: 0,
            inbuf: Vec::new(),
            in_at: 0,
            next: 0,
            eof: false,
        };
        conn.send(&upgrade.request).map_err(|e| e.to_string())?;
        Ok(conn)
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// One poll: every connection with an event reads and writes, then `each` looks at it.
    fn poll_once(
        &mut self,
        timeout: Duration,
        each: &mut dyn FnMut(usize, &mut Conn) -> Result<(), String>,
    ) -> Result<(), String> {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(format!("poll failed: {e}")),
        }
        for event in self.events.iter() {
            let i = event.token().0;
            let conn = &mut self.conns[i];
            let wire = conn
                .read_in(&mut self.scratch)
                .map_err(|e| format!("client {i}: {e}"))?;
            self.wire_bytes += wire;
            each(i, conn)?;
            if conn.eof {
                return Err(format!("client {i}: the server closed the connection"));
            }
        }
        Ok(())
    }

    /// Client 0 sends `plan.messages` in order, at most `plan.window` in flight; every
    /// client must get every one, in order, intact.
    pub fn run(
        &mut self,
        plan: &Plan,
        server_cpu: &mut dyn FnMut() -> Result<Duration, String>,
    ) -> Result<RunStats, String> {
        let m = plan.messages.len();
        let clients = self.conns.len();
        let frames: Vec<Vec<u8>> = plan
            .messages
            .iter()
            .enumerate()
            .map(|(seq, payload)| {
                let mut out = Vec::with_capacity(payload.len() + 14);
                let mask = (seq as u32).wrapping_mul(0x9e37_79b9).to_be_bytes();
                wire::encode_client_frame(&mut out, wire::OPCODE_TEXT, payload, mask);
                out
            })
            .collect();
        // Each run numbers its messages from 0.
        for conn in &mut self.conns {
            conn.next = 0;
        }
        let mut counts = vec![0usize; m];
        let mut done = 0; // messages every client has
        let mut sent = 0;
        let mut deliveries = 0u64;
        let total = (m * clients) as u64;

        let wire_before = self.wire_bytes;
        let cpu_before = server_cpu()?;
        let self_before = sys::self_cpu_time();
        let machine_before = sys::machine_busy_time().unwrap_or_default();
        let start = Instant::now();
        let deadline = start + plan.timeout;
        while deliveries < total {
            while sent < m && sent < done + plan.window {
                self.conns[0]
                    .send(&frames[sent])
                    .map_err(|e| format!("client 0 cannot send: {e}"))?;
                sent += 1;
            }
            if Instant::now() > deadline {
                return Err(self.stalled(plan, deliveries, total));
            }
            let messages = &plan.messages;
            self.poll_once(Duration::from_millis(50), &mut |i, conn| {
                conn.frames(&mut |seq, payload| {
                    check(i, seq, payload, messages)?;
                    counts[seq] += 1;
                    deliveries += 1;
                    Ok(())
                })
            })?;
            while done < m && counts[done] == clients {
                done += 1;
            }
        }
        let wall = start.elapsed();
        let server = server_cpu()?.saturating_sub(cpu_before);
        let ours = sys::self_cpu_time().saturating_sub(self_before);
        let machine = sys::machine_busy_time()
            .unwrap_or_default()
            .saturating_sub(machine_before);
        let wire_bytes = self.wire_bytes - wire_before;
        // Nothing more may come.
        let drain_end = Instant::now() + DRAIN;
        while Instant::now() < drain_end {
            let messages = &plan.messages;
            self.poll_once(Duration::from_millis(20), &mut |i, conn| {
                conn.frames(&mut |seq, payload| check(i, seq, payload, messages))
            })?;
        }
        Ok(RunStats {
            deliveries,
            wall,
            server_cpu: server,
            loadgen_cpu: ours,
            foreign_cpu: machine.saturating_sub(server + ours),
            wire_bytes,
        })
    }

    /// Checks that every connection is still open and got nothing unexpected (pings are
    /// answered): for idle connections, after the memory was read.
    pub fn check_idle(&mut self) -> Result<(), String> {
        self.poll_once(Duration::from_millis(10), &mut |i, conn| {
            conn.frames(&mut |_, _| Err(format!("client {i}: a message nobody sent")))
        })
    }

    fn stalled(&self, plan: &Plan, deliveries: u64, total: u64) -> String {
        let behind: Vec<(usize, usize)> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.next < plan.messages.len())
            .map(|(i, c)| (i, c.next))
            .collect();
        format!(
            "timed out after {:?}: {deliveries} of {total} deliveries; {} clients lack \
             messages (first few, as (client, next expected): {:?})",
            plan.timeout,
            behind.len(),
            &behind[..behind.len().min(8)]
        )
    }
}

/// Client `i` got `payload` as its message number `seq`: it must be exactly message `seq`.
fn check(i: usize, seq: usize, payload: &[u8], messages: &[Vec<u8>]) -> Result<(), String> {
    let Some(expected) = messages.get(seq) else {
        return Err(format!(
            "client {i}: an extra message after all {} ({} bytes, starts {:?})",
            messages.len(),
            payload.len(),
            String::from_utf8_lossy(&payload[..payload.len().min(16)])
        ));
    };
    if payload != expected.as_slice() {
        let got = std::str::from_utf8(&payload[..payload.len().min(10)])
            .ok()
            .and_then(|s| s.parse::<usize>().ok());
        return Err(format!(
            "client {i}: message {seq} wrong: got {} bytes, seq field {got:?}, expected {} \
             bytes (a loss, reordering, duplicate or corruption)",
            payload.len(),
            expected.len()
        ));
    }
    Ok(())
}

/// Message `seq` of `len` bytes: its number (10 digits), a space, then letters that depend on
/// the number.
pub fn message(seq: usize, len: usize) -> Vec<u8> {
    let mut out = format!("{seq:010} ").into_bytes();
    out.extend((0..len.saturating_sub(11)).map(|k| b'a' + ((seq * 7 + k) % 26) as u8));
    out.truncate(len);
    out
}
