//! Client-side plumbing shared by the well-behaved clients and the attackers:
//! sockets bound to a chosen loopback source address, upgrade requests and
//! responses, raw client frames (legal or not), a small PRNG, and the
//! server's descriptor count.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use mio::net::TcpStream;
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

/// A handshake response larger than this is treated as malformed.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// First-byte flags of a frame.
pub const FIN: u8 = 0x80;
pub const RSV1: u8 = 0x40;

/// Opens a non-blocking TCP connection from `source` (any port) to `server`.
/// `rcvbuf` sets a receive buffer before the connect, so the window the
/// server sees stays small (the slow readers).
pub fn connect(
    server: SocketAddr,
    source: Ipv4Addr,
    rcvbuf: Option<usize>,
) -> io::Result<TcpStream> {
    let stream_type = Type::from(libc::SOCK_STREAM | libc::SOCK_NONBLOCK);
    let socket = Socket::new(Domain::IPV4, stream_type, Some(Protocol::TCP))?;
    socket.set_tcp_nodelay(true)?;
    if let Some(n) = rcvbuf {
        socket.set_recv_buffer_size(n)?;
    }
    crate::sys::set_bind_address_no_port(&socket)?;
    socket.bind(&SockAddr::from(SocketAddr::new(IpAddr::V4(source), 0)))?;
    match socket.connect(&SockAddr::from(server)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// Makes the next close of `stream` send a TCP reset instead of a FIN.
pub fn reset_on_close(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// An upgrade request and the `Sec-WebSocket-Accept` it must be answered with.
pub struct Upgrade {
    pub request: Vec<u8>,
    pub accept: String,
}

/// A valid RFC 6455 upgrade request for `target` (path and query).
pub fn upgrade(target: &str, server: SocketAddr) -> Upgrade {
    let key = tungstenite::handshake::client::generate_key();
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    Upgrade {
        request: request.into_bytes(),
        accept,
    }
}

/// A complete response head.
pub struct Head {
    pub status: u16,
    pub head_len: usize,
    pub accept: Option<String>,
    /// The start of the body, if it arrived with the head (lossy, one line, short).
    pub body: String,
}

/// Parses the response head at the start of `buf`: `Ok(None)` while incomplete.
pub fn parse_response(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
            return Err("response head too large".to_string());
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed response: {e}")),
    };
    let accept = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned());
    let body: String = String::from_utf8_lossy(&buf[head_len..buf.len().min(head_len + 120)])
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    Ok(Some(Head {
        status: response.code.unwrap_or(0),
        head_len,
        accept,
        body,
    }))
}

/// Appends a frame: `first` is FIN/RSV/opcode as sent, the payload masked
/// with `mask` if given (a client must mask; the attackers sometimes don't).
pub fn frame(out: &mut Vec<u8>, first: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    frame_header(out, first, payload.len() as u64, mask);
    match mask {
        Some(m) => out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i & 3])),
        None => out.extend_from_slice(payload),
    }
}

/// Appends only a frame header declaring `len` payload bytes (minimal length encoding).
pub fn frame_header(out: &mut Vec<u8>, first: u8, len: u64, mask: Option<[u8; 4]>) {
    out.push(first);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if let Ok(len16) = u16::try_from(len) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&len16.to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(m) = mask {
        out.extend_from_slice(&m);
    }
}

/// A close frame's code and reason (`None`: no code).
pub fn close_parts(payload: &[u8]) -> (Option<u16>, String) {
    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned();
    (code, reason)
}

/// Writes as much of `out` as the socket takes (removing it from `out`).
/// `Ok(true)` when everything was written.
pub fn flush(stream: &mut TcpStream, out: &mut Vec<u8>) -> io::Result<bool> {
    let mut written = 0;
    // Bounded: every pass writes something or leaves.
    while written < out.len() {
        match stream.write(&out[written..]) {
            Ok(0) => {
                out.drain(..written);
                return Err(io::Error::new(io::ErrorKind::WriteZero, "socket closed"));
            }
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                out.drain(..written);
                return Err(e);
            }
        }
    }
    out.drain(..written);
    Ok(out.is_empty())
}

/// What one non-blocking read pass gave.
pub enum ReadResult {
    /// This many bytes (the socket may hold more if the pass hit its bound).
    Data(usize),
    /// Nothing to read now.
    WouldBlock,
    /// The peer closed its side.
    Eof,
    /// The read failed (a reset, usually).
    Failed(io::Error),
}

/// One read into `buf`.
pub fn read_once(stream: &mut TcpStream, buf: &mut [u8]) -> ReadResult {
    // Bounded: EINTR is the only reason to go round.
    for _ in 0..16 {
        return match stream.read(buf) {
            Ok(0) => ReadResult::Eof,
            Ok(n) => ReadResult::Data(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ReadResult::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => ReadResult::Failed(e),
        };
    }
    ReadResult::WouldBlock
}

/// Number of open descriptors of a process (entries of /proc/PID/fd).
pub fn fd_count(pid: u32) -> io::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// xorshift64*: cheap, seeded, good enough to pick behaviours and masks.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }

    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_le_bytes()
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}
