//! Shared test support: a server on a background thread, and real clients on loopback.
//!
//! One or several loops: `start(config, clone_per_loop(app))` (or `each_loop(|i| ...)`)
//! runs the test's server on `WSHUB_TEST_LOOPS` loops (default 1: a plain `Server`; 2 or
//! more: a `Cluster` on one port, connections spread by the kernel), so the same test runs
//! both ways (`WSHUB_TEST_LOOPS=2 cargo test --tests`). `start(config, app)` with a bare
//! handler is always one `Server`: for tests that assume one loop, each saying why.
#![allow(dead_code)] // each test file uses a different part of this

pub mod deflate;
pub mod python;
pub mod redis;
pub mod scripted;
#[cfg(feature = "tls")]
pub mod tls;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};
use wshub::{Cluster, Config, Handle, Handler, Server};

/// How long any single blocking client operation may take before a test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How many loops `start` runs a server on when given [`each_loop`]: `WSHUB_TEST_LOOPS`
/// (default 1). With more than one, the server is a [`Cluster`] on one port.
pub fn test_loops() -> usize {
    match std::env::var("WSHUB_TEST_LOOPS") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("WSHUB_TEST_LOOPS={v:?} is not a number of loops")),
        _ => 1,
    }
}

/// What `start` runs: one handler (a plain `Server`, one loop, whatever
/// `WSHUB_TEST_LOOPS` says), or [`each_loop`]'s factory (`test_loops()` loops).
pub trait Handlers: Send + 'static {
    type Handler: Handler + Send + 'static;
    /// The handlers in loop order: one for a `Server`, more for a `Cluster`.
    fn make(self) -> Vec<Self::Handler>;
}

/// One handler: a plain `Server` on one loop, for tests that assume one loop (and for
/// handlers that cannot be made per loop).
impl<H> Handlers for H
where
    H: Handler + Send + 'static,
{
    type Handler = H;
    fn make(self) -> Vec<H> {
        vec![self]
    }
}

/// A handler per loop, made by a factory: see [`each_loop`].
pub struct EachLoop<F>(F);

/// Runs the server on `test_loops()` loops (`WSHUB_TEST_LOOPS`, default 1), each loop's
/// handler made by `factory(loop_index)`: e.g. `each_loop(move |_| app.clone())` when the
/// handlers share what the test reads through an `Arc`. On one loop it is a plain `Server`.
pub fn each_loop<F, H>(factory: F) -> EachLoop<F>
where
    F: FnMut(usize) -> H + Send + 'static,
{
    EachLoop(factory)
}

/// Runs the server on `test_loops()` loops, each with a clone of `handler` (so state kept
/// behind an `Arc` is shared by the loops, and the test reads it as on one loop).
pub fn clone_per_loop<H>(handler: H) -> EachLoop<impl FnMut(usize) -> H + Send + 'static>
where
    H: Clone + Send + 'static,
{
    each_loop(move |_| handler.clone())
}

impl<F, H> Handlers for EachLoop<F>
where
    F: FnMut(usize) -> H + Send + 'static,
    H: Handler + Send + 'static,
{
    type Handler = H;
    fn make(mut self) -> Vec<H> {
        (0..test_loops()).map(&mut self.0).collect()
    }
}

/// A server running on its own thread (or threads), bound to 127.0.0.1 on a free port.
pub struct TestServer<H> {
    pub addr: SocketAddr,
    pub handle: Handle,
    /// How many loops it runs (1 unless started with [`each_loop`] and `WSHUB_TEST_LOOPS`).
    pub loops: usize,
    thread: Option<JoinHandle<(Vec<H>, std::io::Result<()>)>>,
}

/// Starts a server: `handlers` is one handler (one loop) or [`each_loop`] (as many loops
/// as `WSHUB_TEST_LOOPS` says).
pub fn start<S: Handlers>(config: Config, handlers: S) -> TestServer<S::Handler>
where
    <S::Handler as Handler>::Data: Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut handlers = handlers.make();
        let loops = handlers.len();
        if loops == 1 {
            let handler = handlers.pop().expect("one handler");
            let mut server = Server::bind("127.0.0.1:0", config, handler).expect("bind");
            tx.send((server.local_addr().expect("addr"), server.handle(), loops))
                .expect("report addr");
            let result = server.run();
            // Hand the handler back so tests can inspect what it recorded.
            (vec![server.into_handler()], result)
        } else {
            let mut handlers = handlers.into_iter();
            let cluster = Cluster::bind("127.0.0.1:0", config, loops, |_| {
                handlers.next().expect("a handler per loop")
            })
            .expect("bind");
            tx.send((cluster.local_addr().expect("addr"), cluster.handle(), loops))
                .expect("report addr");
            match cluster.run() {
                Ok(handlers) => (handlers, Ok(())),
                Err(e) => (Vec::new(), Err(e)),
            }
        }
    });
    let (addr, handle, loops) = rx.recv_timeout(IO_TIMEOUT).expect("server did not start");
    TestServer {
        addr,
        handle,
        loops,
        thread: Some(thread),
    }
}

impl<H> TestServer<H> {
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Fails unless every loop accepted some upgrade: for tests with enough clients that
    /// the kernel's spread must have reached every loop (200 clients on 2 loops all on one:
    /// odds of 2^-199), so that a run on several loops exercises crossing them.
    pub fn assert_every_loop_accepted(&self) {
        let per_loop = self.handle.loop_stats();
        assert!(
            per_loop.iter().all(|s| s.handshakes_accepted > 0),
            "upgrades per loop: {:?}",
            per_loop
                .iter()
                .map(|s| s.handshakes_accepted)
                .collect::<Vec<_>>()
        );
    }

    /// Graceful shutdown; returns the handlers in loop order (none if `run()` failed on
    /// several loops) and `run()`'s result.
    pub fn stop(mut self) -> (Vec<H>, std::io::Result<()>) {
        let _ = self.handle.shutdown();
        self.join()
    }

    /// Waits for `run()` to return (after a shutdown requested elsewhere).
    pub fn join(&mut self) -> (Vec<H>, std::io::Result<()>) {
        let thread = self.thread.take().expect("joined twice");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !thread.is_finished() {
            assert!(
                Instant::now() < deadline,
                "server thread did not stop within 30 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        thread.join().expect("server thread panicked")
    }
}

impl<H> Drop for TestServer<H> {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.handle.shutdown();
        }
    }
}

pub type Client = WebSocket<MaybeTlsStream<TcpStream>>;

/// A tungstenite client connected to `url`, with read/write timeouts so a test cannot hang.
pub fn connect(url: &str) -> Client {
    let (ws, response) = tungstenite::connect(url).unwrap_or_else(|e| panic!("connect {url}: {e}"));
    assert_eq!(response.status(), 101);
    set_timeouts(&ws, IO_TIMEOUT);
    ws
}

pub fn set_timeouts(ws: &Client, timeout: Duration) {
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(timeout)).expect("timeout");
        s.set_write_timeout(Some(timeout)).expect("timeout");
    }
}

/// The next text or binary message (pings and pongs are skipped).
pub fn next_data(ws: &mut Client) -> Message {
    loop {
        let m = ws.read().expect("read");
        if matches!(m, Message::Text(_) | Message::Binary(_) | Message::Close(_)) {
            return m;
        }
    }
}

pub fn next_text(ws: &mut Client) -> String {
    match next_data(ws) {
        Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Sends raw bytes on a fresh TCP connection and reads until the server closes it.
/// Returns everything received. Fails the test if the server does not close within
/// `IO_TIMEOUT`.
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(request).expect("write");
    read_to_close(&mut s)
}

pub fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!(
                "server did not close the connection: {e} (got {:?})",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// The status line of an HTTP response.
pub fn status_line(response: &[u8]) -> String {
    let text = String::from_utf8_lossy(response);
    text.lines().next().unwrap_or_default().to_owned()
}

/// The body of an HTTP response.
pub fn body(response: &[u8]) -> String {
    let text = String::from_utf8_lossy(response);
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// A valid upgrade request for `path`.
pub fn upgrade_request(path: &str, extra_headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    )
}

/// Polls `cond` every 5 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

// ----- raw sockets: hand-written requests and frames, for tests where bytes matter -----

/// A plain TCP connection to the server: nodelay, `IO_TIMEOUT` read and write timeouts.
pub fn raw_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s
}

/// Reads until the end of an HTTP head. Returns the head without its blank line, and the
/// bytes read past it (the start of the WebSocket stream).
pub fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec()).expect("head is UTF-8");
            return (head, buf[end + 4..].to_vec());
        }
        assert!(
            buf.len() < 64 * 1024,
            "no end of head in {} bytes",
            buf.len()
        );
        match s.read(&mut chunk) {
            Ok(0) => panic!(
                "EOF before the end of the head: {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!(
                "reading head: {e} (got {:?})",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
}

/// Splits a head into its first line and its headers (names lower-cased, values trimmed),
/// in the order received.
pub fn parse_head(head: &str) -> (String, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("not a header line: {line:?}"));
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    (first, headers)
}

/// A complete HTTP response: status line, headers (sorted by name), body.
pub fn parse_response(response: &[u8]) -> (String, Vec<(String, String)>, Vec<u8>) {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no complete head in {:?}",
                String::from_utf8_lossy(response)
            )
        });
    let head = std::str::from_utf8(&response[..end]).expect("head is UTF-8");
    let (status, mut headers) = parse_head(head);
    headers.sort();
    (status, headers, response[end + 4..].to_vec())
}

/// Owned `(name, value)` pairs, sorted, to compare with `parse_response`'s headers.
pub fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

/// A client-to-server frame, masked as RFC 6455 requires. `first` is the FIN bit and
/// opcode, e.g. `0x81` for a final text frame.
pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![first];
    let len = payload.len();
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads one server-to-client frame, which must be unmasked, and returns its first byte
/// (FIN + opcode) and payload. `pending` holds bytes already read past the last frame.
pub fn read_frame(s: &mut TcpStream, pending: &mut Vec<u8>) -> (u8, Vec<u8>) {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if pending.len() >= 2 {
            assert_eq!(pending[1] & 0x80, 0, "a server frame must not be masked");
            let (len, start) = match pending[1] & 0x7f {
                126 if pending.len() >= 4 => {
                    (usize::from(u16::from_be_bytes([pending[2], pending[3]])), 4)
                }
                127 if pending.len() >= 10 => (
                    u64::from_be_bytes(pending[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => (usize::MAX, 0),
                n => (usize::from(n), 2),
            };
            if len != usize::MAX && pending.len() >= start + len {
                let first = pending[0];
                let payload = pending[start..start + len].to_vec();
                pending.drain(..start + len);
                return (first, payload);
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => panic!("EOF inside a frame ({} bytes pending)", pending.len()),
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("reading a frame: {e} ({} bytes pending)", pending.len()),
        }
    }
}

/// Closes a client cleanly: sends a close frame, then reads until the server closes TCP.
pub fn close_client(mut ws: Client) {
    let _ = ws.close(None);
    for _ in 0..10_000 {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return;
            }
            Err(e) => panic!("closing: {e}"),
        }
    }
    panic!("no end of the connection after 10,000 messages");
}

// ----- raw WebSocket peers that misbehave on purpose (backpressure, timeouts, limits) -----

/// Frame opcodes, RFC 6455 §5.2.
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The payload of a close frame.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A close frame payload's code and reason (1005 if it has none).
pub fn parse_close(payload: &[u8]) -> (u16, String) {
    if payload.len() < 2 {
        return (1005, String::new());
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    (code, String::from_utf8_lossy(&payload[2..]).into_owned())
}

/// The frame header at the start of `buf`: (first byte, header length, payload length).
pub fn frame_header(buf: &[u8]) -> Option<(u8, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let mask = if buf[1] & 0x80 != 0 { 4 } else { 0 };
    let (head, len) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (4, usize::from(u16::from_be_bytes([buf[2], buf[3]]))),
        127 if buf.len() >= 10 => (
            10,
            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
        ),
        126 | 127 => return None,
        n => (2, usize::from(n)),
    };
    Some((buf[0], head + mask, len))
}

/// A TCP connection whose receive buffer is set to `rcvbuf` bytes before connecting (so the
/// kernel buffers little for a peer that does not read). Timeouts as `raw_connect`.
pub fn connect_with_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
    socket.connect(&addr.into()).expect("connect");
    let s: TcpStream = socket.into();
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s
}

/// A WebSocket client written by hand: the upgrade request, masked frames out, and a
/// buffered frame reader that reports EOF instead of failing, for peers that misbehave.
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl RawWs {
    /// Connects and upgrades on `path`.
    pub fn connect(addr: SocketAddr, path: &str) -> RawWs {
        RawWs::upgrade(raw_connect(addr), path)
    }

    /// Upgrades an already connected stream; panics unless the answer is 101.
    pub fn upgrade(mut stream: TcpStream, path: &str) -> RawWs {
        stream
            .write_all(upgrade_request(path, "").as_bytes())
            .expect("write request");
        let (head, rest) = read_head(&mut stream);
        assert!(head.starts_with("HTTP/1.1 101 "), "not upgraded: {head}");
        let mut buf = vec![0u8; 128 * 1024];
        buf[..rest.len()].copy_from_slice(&rest);
        RawWs {
            stream,
            buf,
            start: 0,
            end: rest.len(),
        }
    }

    /// Connects and upgrades on `path` with `extra_headers` (complete lines, each ending in
    /// `\r\n`, e.g. a `Sec-WebSocket-Extensions` offer); panics unless the answer is 101.
    /// Returns the 101's head too.
    pub fn connect_with(addr: SocketAddr, path: &str, extra_headers: &str) -> (RawWs, String) {
        let mut stream = raw_connect(addr);
        stream
            .write_all(upgrade_request(path, extra_headers).as_bytes())
            .expect("write request");
        let (head, rest) = read_head(&mut stream);
        assert!(head.starts_with("HTTP/1.1 101 "), "not upgraded: {head}");
        let mut buf = vec![0u8; 128 * 1024];
        buf[..rest.len()].copy_from_slice(&rest);
        let ws = RawWs {
            stream,
            buf,
            start: 0,
            end: rest.len(),
        };
        (ws, head)
    }

    /// Bytes read past the 101 and not yet taken as frames: what a test that goes on to
    /// read `stream` directly must count first.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Sends one masked frame with FIN set.
    pub fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(&masked_frame(0x80 | opcode, payload))
    }

    /// The next frame as (first byte, payload); `None` at EOF or reset. Read timeouts come
    /// back as errors (`WouldBlock`), after which reading may resume.
    pub fn next_frame(&mut self) -> std::io::Result<Option<(u8, &[u8])>> {
        let (first, head, len) = loop {
            if let Some(h) = frame_header(&self.buf[self.start..self.end]) {
                if self.end - self.start >= h.1 + h.2 {
                    break h;
                }
                if h.1 + h.2 > self.buf.len() {
                    self.buf.resize(h.1 + h.2, 0);
                }
            }
            if !self.fill()? {
                return Ok(None);
            }
        };
        let payload = self.start + head;
        self.start = payload + len;
        Ok(Some((first, &self.buf[payload..payload + len])))
    }

    /// Like `next_frame`, but owned, and panics on a read error (e.g. a timeout).
    pub fn expect_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        match self.next_frame() {
            Ok(f) => f.map(|(first, p)| (first, p.to_vec())),
            Err(e) => panic!("reading a frame: {e}"),
        }
    }

    /// Reads more bytes; false at EOF or reset.
    fn fill(&mut self) -> std::io::Result<bool> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let len = self.buf.len();
                self.buf.resize(len * 2, 0);
            }
        }
        match self.stream.read(&mut self.buf[self.end..]) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.end += n;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// CPU time (user + system) process `pid` has used so far, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name (which may contain spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Clock ticks per second, the unit of `cpu_ticks`.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// A TCP connection from `source` (an address of 127.0.0.0/8), as a client behind another
/// address would make. Timeouts as `raw_connect`.
pub fn connect_from(addr: SocketAddr, source: std::net::Ipv4Addr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let from = SocketAddr::from((source, 0));
    socket.bind(&from.into()).expect("bind the source address");
    socket.connect(&addr.into()).expect("connect");
    let s: TcpStream = socket.into();
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s
}
