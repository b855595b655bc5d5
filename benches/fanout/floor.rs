//! The floor: a minimal broadcast server written by hand on mio, single
//! threaded, with none of a library's generality. It does only what any
//! fan-out server must do: accept, answer the upgrade, read and unmask the
//! clients' text frames, copy every outgoing frame into each recipient's
//! buffer, and write. No protocol checks, no limits, no backpressure policy,
//! no per-message bookkeeping; a client that misbehaves is simply dropped.
//! Its CPU per delivery is what the kernel and the unavoidable copies cost,
//! so a library server's figure divided by this one is its own overhead.
//!
//! Per event-loop turn (one `poll` return): every text message read in the
//! turn is encoded once as a server frame and appended to one contiguous
//! `Vec<u8>` per recipient; at the end of the turn each recipient's buffer
//! is written with one `write`. What the socket does not take stays in front
//! of the buffer until the socket reports writable again. That is the fewest
//! write syscalls a server can make without delaying messages to a later turn.
//!
//! Rooms, as in wshub's `broadcast` example: a client that upgraded with
//! `?room=NAME` is in room NAME and its messages go to every member of NAME,
//! itself included; a client in no room sends to every open client.
//!
//! It runs in its own process (the bench binary re-executed with
//! `--floor-server ADDR`) so its CPU time and RSS can be read from /proc.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::rooms;

const LISTENER: Token = Token(usize::MAX);
/// One read buffer shared by all connections.
const READ_BUF_LEN: usize = 64 * 1024;
/// A request head longer than this gets the connection dropped.
const MAX_HEAD: usize = 8 * 1024;
/// A client frame longer than this gets the connection dropped; it also
/// bounds what a connection buffers while waiting for the rest of a frame.
const MAX_FRAME: u64 = 1 << 20;
/// After a failed accept (e.g. EMFILE), retry after this long instead of
/// waiting for the next connection attempt to wake the listener.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

const OPCODE_TEXT: u8 = 0x1;
const OPCODE_CLOSE: u8 = 0x8;

/// Runs the floor server until the process is killed.
pub fn run(addr: &str) -> Result<(), String> {
    let addr = addr
        .parse()
        .map_err(|e| format!("bad address {addr}: {e}"))?;
    let mut listener = TcpListener::bind(addr).map_err(|e| format!("cannot bind {addr}: {e}"))?;
    let poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| format!("cannot register listener: {e}"))?;
    eprintln!("listening on {addr}");
    let mut server = Floor {
        poll,
        listener,
        clients: Slab::new(),
        everyone: Vec::new(),
        room_ids: HashMap::new(),
        rooms: Vec::new(),
        dirty: Vec::new(),
        read_buf: vec![0; READ_BUF_LEN].into_boxed_slice(),
        frame: Vec::new(),
        accept_failed: false,
    };
    server.serve()
}

struct Client {
    stream: TcpStream,
    /// Whether the upgrade is done; before that `inbuf` holds the request head.
    open: bool,
    /// Where this client's messages go (meaningful once open).
    audience: Audience,
    /// Position in `Floor::everyone` (once open).
    everyone_index: usize,
    /// The request head while handshaking, then the bytes of a partial frame.
    inbuf: Vec<u8>,
    /// Bytes to write: frames of this turn behind what the socket did not take.
    out: Vec<u8>,
    /// Listed in `Floor::dirty` for this turn's writes.
    dirty: bool,
}

/// Who receives a client's messages.
#[derive(Clone, Copy)]
enum Audience {
    Everyone,
    Room(usize),
}

struct Floor {
    poll: Poll,
    listener: TcpListener,
    clients: Slab<Client>,
    /// Keys of every open client.
    everyone: Vec<usize>,
    /// Room name -> index into `rooms`.
    room_ids: HashMap<String, usize>,
    /// Keys of each room's members.
    rooms: Vec<Vec<usize>>,
    /// Clients to write at the end of this turn.
    dirty: Vec<usize>,
    read_buf: Box<[u8]>,
    /// Scratch: the server frame being fanned out.
    frame: Vec<u8>,
    accept_failed: bool,
}

/// What reading a client's bytes led to.
enum Outcome {
    /// Keep the connection; these many bytes were consumed.
    Consumed(usize),
    /// Drop the connection (EOF, error, close frame, or garbage).
    Drop,
}

impl Floor {
    fn serve(&mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.accept_failed.then_some(ACCEPT_RETRY);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll failed: {e}"));
            }
            if self.accept_failed {
                self.accept_all();
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    Token(key) => {
                        if event.is_writable() {
                            self.mark_dirty(key);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read_client(key);
                        }
                    }
                }
            }
            self.write_dirty();
        }
    }

    fn accept_all(&mut self) {
        self.accept_failed = false;
        loop {
            match self.listener.accept() {
                Ok((mut stream, _peer)) => {
                    // Small frames must not wait for Nagle's algorithm (like the others).
                    let _ = stream.set_nodelay(true);
                    let entry = self.clients.vacant_entry();
                    let registered = self.poll.registry().register(
                        &mut stream,
                        Token(entry.key()),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    if registered.is_ok() {
                        entry.insert(Client {
                            stream,
                            open: false,
                            audience: Audience::Everyone,
                            everyone_index: 0,
                            inbuf: Vec::new(),
                            out: Vec::new(),
                            dirty: false,
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    self.accept_failed = true;
                    return;
                }
            }
        }
    }

    fn mark_dirty(&mut self, key: usize) {
        if let Some(client) = self.clients.get_mut(key) {
            if !client.dirty && !client.out.is_empty() {
                client.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Reads everything available from one client and handles it.
    fn read_client(&mut self, key: usize) {
        loop {
            let Some(client) = self.clients.get_mut(key) else {
                return;
            };
            let n = match client.stream.read(&mut self.read_buf) {
                Ok(0) => return self.drop_client(key),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.drop_client(key),
            };
            // The buffered bytes are taken out so that handling them may
            // append to any client's output, this one's included.
            let mut data = std::mem::take(&mut client.inbuf);
            let open = client.open;
            data.extend_from_slice(&self.read_buf[..n]);
            let outcome = if open {
                self.handle_frames(key, &data)
            } else {
                self.handle_head(key, &data)
            };
            match outcome {
                Outcome::Consumed(used) => {
                    data.drain(..used);
                    if let Some(client) = self.clients.get_mut(key) {
                        client.inbuf = data;
                    }
                }
                Outcome::Drop => return self.drop_client(key),
            }
            // A short read drained the socket; edge-triggered epoll reports
            // again when more arrives, so the read that would only return
            // WouldBlock is skipped.
            if n < self.read_buf.len() {
                return;
            }
        }
    }

    /// The upgrade request: waits for the whole head, answers 101, joins the
    /// room, then handles any frames that came right behind the head.
    fn handle_head(&mut self, key: usize, data: &[u8]) -> Outcome {
        let Some(head_len) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
            return if data.len() > MAX_HEAD {
                Outcome::Drop
            } else {
                Outcome::Consumed(0)
            };
        };
        let head_len = head_len + 4;
        let Ok(head) = std::str::from_utf8(&data[..head_len]) else {
            return Outcome::Drop;
        };
        let mut lines = head.split("\r\n");
        let target = lines
            .next()
            .and_then(|request_line| request_line.split(' ').nth(1))
            .unwrap_or("/");
        let key_header = lines.find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim())
        });
        let Some(ws_key) = key_header else {
            return Outcome::Drop;
        };
        let accept = tungstenite::handshake::derive_accept_key(ws_key.as_bytes());
        let audience = match rooms::room_of(target) {
            Some(name) => Audience::Room(self.room_id(name)),
            None => Audience::Everyone,
        };
        let Some(client) = self.clients.get_mut(key) else {
            return Outcome::Drop;
        };
        client.out.extend_from_slice(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .as_bytes(),
        );
        client.open = true;
        client.audience = audience;
        client.everyone_index = self.everyone.len();
        self.everyone.push(key);
        if let Audience::Room(room) = audience {
            self.rooms[room].push(key);
        }
        self.mark_dirty(key);
        match self.handle_frames(key, &data[head_len..]) {
            Outcome::Consumed(used) => Outcome::Consumed(head_len + used),
            Outcome::Drop => Outcome::Drop,
        }
    }

    fn room_id(&mut self, name: String) -> usize {
        let next = self.rooms.len();
        let id = *self.room_ids.entry(name).or_insert(next);
        if id == next {
            self.rooms.push(Vec::new());
        }
        id
    }

    /// Handles the complete frames at the start of `data`.
    fn handle_frames(&mut self, key: usize, data: &[u8]) -> Outcome {
        let Some(audience) = self.clients.get(key).map(|c| c.audience) else {
            return Outcome::Drop;
        };
        let mut used = 0;
        loop {
            let frame = match parse_client_frame(&data[used..]) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Outcome::Consumed(used),
                Err(()) => return Outcome::Drop,
            };
            let payload = &data[used + frame.header_len..used + frame.len];
            used += frame.len;
            match frame.opcode {
                OPCODE_TEXT => {
                    encode_server_frame(&mut self.frame, payload, frame.mask);
                    self.fan_out(audience);
                }
                OPCODE_CLOSE => return Outcome::Drop,
                // Pings, pongs, binary and continuation frames: not this
                // benchmark's traffic, ignored.
                _ => {}
            }
        }
    }

    /// Appends the frame in `self.frame` to every recipient's buffer.
    fn fan_out(&mut self, audience: Audience) {
        let recipients = match audience {
            Audience::Everyone => &self.everyone,
            Audience::Room(room) => &self.rooms[room],
        };
        for &key in recipients {
            // Every key in `everyone` and `rooms` is an open client.
            let client = &mut self.clients[key];
            client.out.extend_from_slice(&self.frame);
            if !client.dirty {
                client.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// One write per client that has something to send this turn.
    fn write_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            let Some(client) = self.clients.get_mut(key) else {
                continue;
            };
            client.dirty = false;
            if client.out.is_empty() {
                continue;
            }
            let written = loop {
                match client.stream.write(&client.out) {
                    Ok(n) => break Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(0),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            match written {
                Ok(n) if n == client.out.len() => client.out.clear(),
                // The rest waits for the writable event: a short write or
                // WouldBlock leaves the socket flagged as out of space, so
                // the kernel wakes epoll once the client has read enough.
                Ok(n) => {
                    client.out.drain(..n);
                }
                Err(_) => self.drop_client(key),
            }
        }
        // Reuse the list's allocation next turn.
        dirty.clear();
        self.dirty = dirty;
    }

    fn drop_client(&mut self, key: usize) {
        let Some(client) = self.clients.try_remove(key) else {
            return;
        };
        if !client.open {
            return;
        }
        self.everyone.swap_remove(client.everyone_index);
        if let Some(&moved) = self.everyone.get(client.everyone_index) {
            self.clients[moved].everyone_index = client.everyone_index;
        }
        if let Audience::Room(room) = client.audience {
            let members = &mut self.rooms[room];
            if let Some(at) = members.iter().position(|&k| k == key) {
                members.swap_remove(at);
            }
        }
        // Dropping the stream closes the socket, which also leaves the poll.
    }
}

/// Where a complete client frame lies at the start of a buffer.
struct ClientFrame {
    opcode: u8,
    mask: [u8; 4],
    header_len: usize,
    /// Header plus payload.
    len: usize,
}

/// Parses the frame header at the start of `buf`: `Ok(None)` until the
/// whole frame is there, `Err` for a frame too large to buffer.
fn parse_client_frame(buf: &[u8]) -> Result<Option<ClientFrame>, ()> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let (len_bytes, payload_len) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (2, u64::from(u16::from_be_bytes([b[0], b[1]]))),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut len = [0u8; 8];
                len.copy_from_slice(b);
                (8, u64::from_be_bytes(len))
            }
            None => return Ok(None),
        },
        short => (0, u64::from(short)),
    };
    if payload_len > MAX_FRAME {
        return Err(());
    }
    let mut mask = [0u8; 4];
    let mut header_len = 2 + len_bytes;
    if b1 & 0x80 != 0 {
        let Some(key) = buf.get(header_len..header_len + 4) else {
            return Ok(None);
        };
        mask.copy_from_slice(key);
        header_len += 4;
    }
    let len = header_len + payload_len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(ClientFrame {
        opcode: b0 & 0x0f,
        mask,
        header_len,
        len,
    }))
}

/// Writes into `out` the unmasked server text frame for a masked payload.
fn encode_server_frame(out: &mut Vec<u8>, masked: &[u8], mask: [u8; 4]) {
    out.clear();
    out.push(0x80 | OPCODE_TEXT);
    let len = masked.len();
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(len16) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len16.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend(masked.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}
