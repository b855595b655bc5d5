//! One TCP connection: its phase (a state machine), its socket, its outbox, and the read
//! path through tungstenite's frame decoder.
//!
//! ```text
//!  accept ──► Handshaking ──(101)──► Open ──(server sends close)──► Closing
//!                 │                   │                               │
//!                 │(HTTP answer)      │(peer's close, protocol error) │(peer's close)
//!                 ▼                   ▼                               ▼
//!             Lingering ◄─────────────┴───────────────────────────────┘
//!   (flush the last bytes, shut down our side, wait for the peer's EOF) ──► removed
//! ```
//! Timeouts and I/O errors remove a connection from any phase. `on_close` runs when a
//! connection leaves Open/Closing, exactly once.

use std::io::{self, Read, Write};

use mio::net::TcpStream;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

use crate::boundary::Boundary;
use crate::handler::Message;
use crate::outbox::Outbox;

/// Where a connection is in its life. See the module docs for the transitions.
pub(crate) enum Phase<D> {
    /// Reading the HTTP request.
    Handshaking(Box<Handshake>),
    /// A WebSocket: messages flow both ways.
    Open(Session<D>),
    /// The server sent a close frame and waits for the peer's.
    Closing {
        session: Session<D>,
        since: u64,
        code: u16,
        reason: String,
    },
    /// Nothing more to say: the last bytes (an HTTP answer, a close frame) go out, then our
    /// side shuts down and the peer's EOF (or a timeout) ends it.
    Lingering {
        since: u64,
        /// The peer has shut down its side (EOF): once our bytes are out, we are done.
        peer_closed: bool,
    },
}

/// The request bytes read so far.
pub(crate) struct Handshake {
    pub(crate) buf: Vec<u8>,
    pub(crate) scan: crate::http::Scan,
    pub(crate) since: u64,
}

/// An open WebSocket.
pub(crate) struct Session<D> {
    /// tungstenite's decoder and control-frame state machine, created when the peer first
    /// sends something: an idle connection holds no decode buffer.
    codec: Option<Box<Codec>>,
    pub(crate) data: D,
    /// When the server sent a keepalive ping that has not been answered by anything yet.
    pub(crate) ping_sent: Option<u64>,
}

/// tungstenite's decoder with the tracker that tells when it holds nothing.
struct Codec {
    ws: WebSocketContext,
    boundary: Boundary,
}

/// What feeding bytes to a session produced, besides messages.
#[derive(Debug)]
pub(crate) enum Fed {
    /// All bytes consumed; wait for more.
    More,
    /// The peer's close frame arrived (the reply, if one is due, is in the control output).
    PeerClosed(Option<CloseFrame>),
    /// The peer broke the protocol; a close frame with this code is in the control output.
    Failed { code: u16, reason: String },
}

pub(crate) struct Connection<D> {
    pub(crate) sock: TcpStream,
    pub(crate) generation: u32,
    pub(crate) phase: Phase<D>,
    pub(crate) outbox: Outbox,
    /// Tick of the last byte read (keepalive measures silence from here).
    pub(crate) last_read: u64,
    /// Tick of the last write progress, or of the queue becoming non-empty (write-stall).
    pub(crate) last_write: u64,
    /// The earliest deadline this connection has in the timer heap (u64::MAX: none).
    pub(crate) timer_at: u64,
    /// Listed in the hub's dirty list, to be flushed at the end of this batch.
    pub(crate) dirty: bool,
    /// Registered for writable events (only while the outbox is not empty).
    pub(crate) write_interest: bool,
    /// The socket refused bytes at the last write: no use writing before it reports
    /// writable again.
    pub(crate) blocked: bool,
    /// Not reading: its own queue is over the limit (read-side backpressure).
    pub(crate) read_paused: bool,
    /// The queue went over the drain watermark; `on_drain` is due when it falls back.
    pub(crate) pressured: bool,
    /// Our side of the TCP connection is shut down (Lingering, all flushed).
    pub(crate) write_shut: bool,
}

impl<D> Connection<D> {
    pub(crate) fn new(sock: TcpStream, generation: u32, now: u64) -> Connection<D> {
        Connection {
            sock,
            generation,
            phase: Phase::Handshaking(Box::new(Handshake {
                buf: Vec::new(),
                scan: Default::default(),
                since: now,
            })),
            outbox: Outbox::default(),
            last_read: now,
            last_write: now,
            timer_at: u64::MAX,
            dirty: false,
            write_interest: false,
            blocked: false,
            read_paused: false,
            pressured: false,
            write_shut: false,
        }
    }

    pub(crate) fn session_mut(&mut self) -> Option<&mut Session<D>> {
        match &mut self.phase {
            Phase::Open(s) | Phase::Closing { session: s, .. } => Some(s),
            _ => None,
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open(_))
    }
}

impl<D> Session<D> {
    /// `pipelined` are bytes that came right after the HTTP request: the start of the stream.
    pub(crate) fn new(data: D, pipelined: Vec<u8>, config: &WebSocketConfig) -> Session<D> {
        let codec = (!pipelined.is_empty()).then(|| {
            let mut boundary = Boundary::default();
            boundary.scan(&pipelined);
            Box::new(Codec {
                ws: WebSocketContext::from_partially_read(pipelined, Role::Server, Some(*config)),
                boundary,
            })
        });
        Session {
            codec,
            data,
            ping_sent: None,
        }
    }

    fn codec(&mut self, config: &WebSocketConfig) -> &mut Codec {
        self.codec.get_or_insert_with(|| {
            Box::new(Codec {
                ws: WebSocketContext::new(Role::Server, Some(*config)),
                boundary: Boundary::default(),
            })
        })
    }

    /// Decodes `input`, appending complete messages to `inbox` and every byte tungstenite
    /// wants to send (pongs, close replies) to `control`.
    pub(crate) fn feed(
        &mut self,
        config: &WebSocketConfig,
        input: &[u8],
        control: &mut Vec<u8>,
        inbox: &mut Vec<Message>,
    ) -> Fed {
        let Codec {
            ws: codec,
            boundary,
        } = self.codec(config);
        boundary.scan(input);
        let mut io = Io {
            input,
            output: control,
        };
        loop {
            match codec.read(&mut io) {
                Ok(tungstenite::Message::Text(text)) => inbox.push(Message::Text(text)),
                Ok(tungstenite::Message::Binary(data)) => inbox.push(Message::Binary(data)),
                // tungstenite queues the pong itself; any frame already counts as a sign of life.
                Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => {}
                Ok(tungstenite::Message::Frame(_)) => {}
                Ok(tungstenite::Message::Close(frame)) => {
                    // Moves the queued close reply (if any) into `control`. The codec then
                    // reports the connection closed, which is exactly what we know already.
                    let _ = codec.flush(&mut io);
                    return Fed::PeerClosed(frame);
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.shed_large_codec(config);
                    return Fed::More;
                }
                Err(e) => {
                    let (code, reason) = failure(&e);
                    let frame = CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.clone().into(),
                    };
                    // Best effort: if the codec is past the point of sending, nothing goes out.
                    let _ = codec.close(&mut io, Some(frame));
                    return Fed::Failed { code, reason };
                }
            }
        }
    }

    /// Drops a decoder whose buffer grew past its configured size for a large frame, once it
    /// holds nothing (between messages, nothing to send, no close under way): the next
    /// frame gets a fresh, small one. A frame of up to `read_buffer_size` costs nothing.
    fn shed_large_codec(&mut self, config: &WebSocketConfig) {
        let shed = self.codec.as_ref().is_some_and(|c| {
            c.boundary.largest() > config.read_buffer_size as u64
                && c.boundary.between_messages()
                && c.ws.can_write()
        });
        if shed {
            self.codec = None;
        }
    }

    /// Queues a close frame (through the codec, so it knows a reply is expected).
    pub(crate) fn close(
        &mut self,
        config: &WebSocketConfig,
        code: u16,
        reason: &str,
        control: &mut Vec<u8>,
    ) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: truncate(reason, 123).to_owned().into(),
        };
        let mut io = Io {
            input: &[],
            output: control,
        };
        let _ = self.codec(config).ws.close(&mut io, Some(frame));
    }
}

/// The close code and reason for a decoding error (RFC 6455 §7.4.1).
fn failure(e: &tungstenite::Error) -> (u16, String) {
    match e {
        tungstenite::Error::Capacity(_) => (1009, "message too big".to_owned()),
        tungstenite::Error::Utf8(_) => (1007, "invalid UTF-8 in text message".to_owned()),
        tungstenite::Error::Protocol(p) => (1002, truncate(&p.to_string(), 123).to_owned()),
        other => (1011, truncate(&other.to_string(), 123).to_owned()),
    }
}

/// The longest prefix of `s` within `max` bytes that ends on a character boundary
/// (a close reason has room for 123 bytes).
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Connects tungstenite's codec to the bytes the server read (input) and to a buffer that
/// collects what it wants to send (output), so the codec never touches the socket.
struct Io<'a> {
    input: &'a [u8],
    output: &'a mut Vec<u8>,
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            // Not EOF: the codec must stop and wait for the next read from the socket.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.input.read(buf)?;
        Ok(n)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
