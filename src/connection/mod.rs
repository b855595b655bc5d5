//! One TCP connection: its phase (a state machine), its socket and its outbox. Every phase
//! transition is a method here.
//!
//! ```text
//!   (HTTP answer, keep-alive: the next request)
//!                ┌──┐
//!                ▼  │
//!  accept ──► Handshaking ──(101)──► Open ──(server sends close)──► Closing
//!                 │                   │                               │
//!                 │(HTTP answer,      │(peer's close, protocol error) │(peer's close)
//!                 │ closing)          │                               │
//!                 ▼                   ▼                               ▼
//!             Lingering ◄─────────────┴───────────────────────────────┘
//!   (flush the last bytes, shut down our side, wait for the peer's EOF) ──► removed
//! ```
//! An answered plain HTTP request either ends the connection (Lingering, `Connection::answered`)
//! or starts the next request with a fresh buffer (`Connection::keep_alive`), which holds
//! the bytes already read after the answered one (pipelining). Between two requests the
//! connection is Handshaking with an empty buffer (`Handshake::between_requests`).
//!
//! Timeouts and I/O errors remove a connection from any phase. `on_close` runs when a
//! connection leaves Open/Closing, exactly once.

mod decoder;
pub(crate) mod outbox;
mod session;

pub(crate) use outbox::{Flush, Kind, Outbox};

use crate::transport::Transport;

/// A connection's place in the loop's table of source addresses (`server::admission`),
/// kept by the connection so its address is counted out when it goes.
pub(crate) type AddrSlot = u32;
pub(crate) use session::{Fed, FeedContext, Session};

/// Where a connection is in its life. See the module docs for the transitions.
pub(crate) enum Phase<D> {
    /// Reading an HTTP request (the first, or on a kept-alive connection the next).
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
        /// Our side is shut down: everything was written.
        write_shut: bool,
    },
}

/// The request bytes read so far.
pub(crate) struct Handshake {
    pub(crate) buf: Vec<u8>,
    pub(crate) scan: crate::http::Scan,
    /// When the request must be complete (ticks): set at accept, shorter when the
    /// handshake slots are filling up. Between two requests of a kept-alive connection:
    /// when it closes for idleness (`server::timeouts` also waits for the last answer to be
    /// written); reset to a handshake deadline when the next request starts arriving.
    pub(crate) deadline: u64,
    /// Requests already answered on this connection (keep-alive).
    pub(crate) served: usize,
}

impl Handshake {
    /// A kept-alive connection waiting for its next request: nothing of it has arrived.
    pub(crate) fn between_requests(&self) -> bool {
        self.served > 0 && self.buf.is_empty()
    }
}

/// Where a connection's send queue stands against the drain watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pressure {
    /// Nobody waits for the queue to drain.
    Calm,
    /// The queue went over the watermark (or a message was dropped for it): `on_drain` is
    /// due when it falls back.
    Pressured,
    /// As `Pressured`, and the peer is not being read either: its queue passed
    /// `max_backpressure` while it kept sending (read-side backpressure).
    ReadsPaused,
}

pub(crate) struct Connection<D> {
    /// The byte stream: plain TCP, or TLS over it.
    pub(crate) transport: Transport,
    pub(crate) generation: u32,
    /// The source address's entry in the admission table.
    pub(crate) addr: AddrSlot,
    pub(crate) phase: Phase<D>,
    pub(crate) outbox: Outbox,
    /// Tick of the last byte read (keepalive measures silence from here).
    pub(crate) last_read: u64,
    /// Tick of the last write progress, or of the queue becoming non-empty (write-stall).
    pub(crate) last_write: u64,
    /// The earliest deadline this connection has in the timer heap (u64::MAX: none).
    pub(crate) timer_at: u64,
    /// Listed in the loop's dirty list, to be flushed at the end of this turn.
    pub(crate) dirty: bool,
    /// Registered for writable events (only while the outbox is not empty).
    pub(crate) write_interest: bool,
    /// The socket refused bytes at the last write: no use writing before it reports
    /// writable again.
    pub(crate) blocked: bool,
    pub(crate) pressure: Pressure,
}

impl<D> Connection<D> {
    pub(crate) fn new(
        transport: Transport,
        generation: u32,
        addr: AddrSlot,
        now: u64,
        deadline: u64,
    ) -> Connection<D> {
        Connection {
            transport,
            generation,
            addr,
            phase: Phase::Handshaking(Box::new(Handshake {
                buf: Vec::new(),
                scan: Default::default(),
                deadline,
                served: 0,
            })),
            outbox: Outbox::default(),
            last_read: now,
            last_write: now,
            timer_at: u64::MAX,
            dirty: false,
            write_interest: false,
            blocked: false,
            pressure: Pressure::Calm,
        }
    }

    pub(crate) fn session(&self) -> Option<&Session<D>> {
        match &self.phase {
            Phase::Open(s) | Phase::Closing { session: s, .. } => Some(s),
            _ => None,
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

    pub(crate) fn is_handshaking(&self) -> bool {
        matches!(self.phase, Phase::Handshaking(_))
    }

    /// Still handshaking, and nothing at all has arrived yet (a kept-alive connection
    /// between requests is not silent: see `is_between_requests`).
    pub(crate) fn is_silent(&self) -> bool {
        matches!(&self.phase, Phase::Handshaking(h) if h.buf.is_empty() && h.served == 0)
    }

    /// A kept-alive connection waiting for its next request.
    pub(crate) fn is_between_requests(&self) -> bool {
        matches!(&self.phase, Phase::Handshaking(h) if h.between_requests())
    }

    /// Handshaking → Open. Returns false (and changes nothing) in any other phase.
    pub(crate) fn open(&mut self, session: Session<D>, now: u64) -> bool {
        if !self.is_handshaking() {
            return false;
        }
        self.phase = Phase::Open(session);
        self.last_read = now;
        true
    }

    /// Handshaking → Lingering: an HTTP answer is queued and is the last thing said.
    /// Returns false (and changes nothing) in any other phase.
    pub(crate) fn answered(&mut self, now: u64) -> bool {
        if !self.is_handshaking() {
            return false;
        }
        self.phase = lingering(now);
        true
    }

    /// Handshaking → Lingering without an answer: nothing is owed for the request in
    /// progress (none has started on a kept-alive connection, or the peer has gone), but
    /// what is queued still goes out. Returns false (and changes nothing) in any other phase.
    pub(crate) fn hang_up(&mut self, now: u64) -> bool {
        self.answered(now)
    }

    /// Handshaking → Handshaking: an HTTP answer is queued and the connection stays open
    /// for the next request, which starts with `pipelined` (the bytes read after the
    /// answered request, possibly none) and a fresh scan. `deadline`: when that request must
    /// be complete if it has started, else when the idle connection closes. Returns false
    /// (and changes nothing) in any other phase.
    pub(crate) fn keep_alive(&mut self, pipelined: Vec<u8>, deadline: u64) -> bool {
        let Phase::Handshaking(handshake) = &mut self.phase else {
            return false;
        };
        handshake.buf = pipelined;
        handshake.scan = Default::default();
        handshake.deadline = deadline;
        handshake.served += 1;
        true
    }

    /// Open → Closing: the close frame goes into `codec_out`. Returns false (and changes nothing) in any other phase.
    pub(crate) fn start_close(
        &mut self,
        now: u64,
        code: u16,
        reason: &str,
        codec_out: &mut Vec<u8>,
    ) -> bool {
        if !self.is_open() {
            return false;
        }
        // Open is replaced at once: the Lingering value never outlives this call.
        let Phase::Open(mut session) = std::mem::replace(&mut self.phase, lingering(now)) else {
            return false;
        };
        session.close(code, reason, codec_out);
        self.phase = Phase::Closing {
            session,
            since: now,
            code,
            reason: crate::frame::truncate(reason, 123).to_owned(),
        };
        true
    }

    /// Open/Closing → Lingering: the WebSocket is over. Returns the application's data, or
    /// `None` (and changes nothing) in any other phase.
    pub(crate) fn finish(&mut self, now: u64) -> Option<D> {
        self.session()?;
        match std::mem::replace(&mut self.phase, lingering(now)) {
            Phase::Open(session) | Phase::Closing { session, .. } => Some(session.data),
            _ => None,
        }
    }

    /// The peer shut down its side: once our bytes are out, the connection is done.
    pub(crate) fn peer_closed(&mut self) {
        if let Phase::Lingering { peer_closed, .. } = &mut self.phase {
            *peer_closed = true;
        }
    }

    /// Lingering with everything written: our side is shut down. Returns whether it was
    /// shut just now (and the caller should send the FIN).
    pub(crate) fn shut_write(&mut self) -> bool {
        match &mut self.phase {
            Phase::Lingering { write_shut, .. } if !*write_shut => {
                *write_shut = true;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn is_write_shut(&self) -> bool {
        matches!(
            self.phase,
            Phase::Lingering {
                write_shut: true,
                ..
            }
        )
    }

    pub(crate) fn is_peer_closed(&self) -> bool {
        matches!(
            self.phase,
            Phase::Lingering {
                peer_closed: true,
                ..
            }
        )
    }
}

fn lingering<D>(now: u64) -> Phase<D> {
    Phase::Lingering {
        since: now,
        peer_closed: false,
        write_shut: false,
    }
}
