//! The event loop: one `mio::Poll`, the listener, and the connection table.
//!
//! A loop turn: poll → accept / read every ready socket until `WouldBlock` (callbacks run
//! as messages complete) → run commands from handles → fire due timers → *settle*: flush
//! every connection that has new bytes (one vectored write each: writes are corked per
//! turn), then make the `on_drain` / `on_close` calls and resume paused reads that the
//! flush made due, until nothing is left.

use std::io::{self, Read, Write};
use std::mem;
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use bytes::Bytes;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::connection::{Connection, Fed, Handshake, Phase, Session};
use crate::handle::{self, Command, Inbox};
use crate::http::{self, Limits, Progress};
use crate::hub::{Hub, millis};
use crate::outbox::{Flush, Kind};
use crate::timers::{TimerId, TimerKey};
use crate::{
    CloseInfo, Config, ConnId, Ctx, Frame, Handle, Handler, Message, Reply, Request, Response,
    SendError, Stats,
};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// Every socket is read into this one buffer; the bytes are then handed to the connection's
/// decoder, so no connection needs a large buffer of its own.
const READ_BUFFER: usize = 64 * 1024;
/// Reads of one connection per turn (of up to 64 KiB each) before the others get their
/// turn; the rest is read next turn. Without a budget a peer that floods could hold the loop.
const READS_PER_TURN: usize = 16;
/// After this many rounds of follow-up work in one turn, the rest waits for the next turn
/// (polled without sleeping), so sockets are never starved.
const SETTLE_ROUNDS: usize = 64;
/// Accept backoff after a resource error (EMFILE, ENFILE, ENOBUFS, ENOMEM): 10 ms doubling
/// to 1 s.
const ACCEPT_BACKOFF_MIN_MS: u64 = 10;
const ACCEPT_BACKOFF_MAX_MS: u64 = 1_000;

/// A WebSocket (and plain HTTP) server on one thread.
///
/// Build it with [`Server::bind`] or [`Server::from_listener`], then either [`run`](Server::run)
/// it (blocks until shutdown) or drive it from your own loop with
/// [`poll_once`](Server::poll_once). [`handle`](Server::handle) gives a [`Handle`] for other
/// threads.
///
/// ```no_run
/// use wshub::{Config, Ctx, Frame, Handler, Message, ConnId, Reply, Request, Server};
///
/// struct Broadcast;
/// impl Handler for Broadcast {
///     type Data = ();
///     fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
///         Reply::accept(())
///     }
///     fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, _: ConnId, msg: Message) {
///         if let Message::Text(text) = msg {
///             ctx.broadcast(&Frame::text(&text));
///         }
///     }
/// }
///
/// Server::bind("127.0.0.1:9001", Config::default(), Broadcast)?.run()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Server<H: Handler> {
    poll: Poll,
    events: Events,
    listener: Option<TcpListener>,
    hub: Hub<H::Data>,
    handler: H,
    read_buf: Box<[u8]>,
    /// Messages decoded from one read, delivered once the decoder is released.
    messages: Vec<Message>,
    /// What the decoder wants to send for one read, queued after those messages.
    held: Vec<u8>,
    /// Connections whose reads were paused and may resume.
    resume: Vec<ConnId>,
    /// Connections that used their read budget with bytes left: read on next turn.
    carry: Vec<ConnId>,
    inbox: Inbox,
    accept: Accept,
    state: State,
    /// Work was left for the next turn: poll without sleeping.
    backlog: bool,
    next_generation: u32,
}

/// Whether accepting is paused after a resource error.
#[derive(Default)]
struct Accept {
    paused: bool,
    /// In an episode of failures: logged once at its start and once at its end.
    failing: bool,
    backoff_ms: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// Shutting down: no accepting, close frames sent, waiting until `deadline` (ticks).
    Draining {
        deadline: u64,
    },
    Stopped,
}

impl<H: Handler> Server<H> {
    /// Binds `addr` (e.g. `"127.0.0.1:8080"`, or port 0 for any free port) with
    /// `SO_REUSEADDR` and [`Config::backlog`].
    pub fn bind(addr: impl ToSocketAddrs, config: Config, handler: H) -> io::Result<Server<H>> {
        let addr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind"))?;
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(i32::try_from(config.backlog).unwrap_or(i32::MAX))?;
        Server::from_listener(socket.into(), config, handler)
    }

    /// Serves on a listener the embedder created (e.g. one inherited from a supervisor);
    /// it is switched to non-blocking mode.
    pub fn from_listener(
        listener: std::net::TcpListener,
        config: Config,
        handler: H,
    ) -> io::Result<Server<H>> {
        listener.set_nonblocking(true)?;
        Server::with_listener(TcpListener::from_std(listener), config, handler)
    }

    fn with_listener(
        mut listener: TcpListener,
        config: Config,
        handler: H,
    ) -> io::Result<Server<H>> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let inbox = handle::channel(config.handle_capacity, waker);
        Ok(Server {
            events: Events::with_capacity(config.events_capacity),
            poll,
            listener: Some(listener),
            hub: Hub::new(config),
            handler,
            read_buf: vec![0; READ_BUFFER].into_boxed_slice(),
            messages: Vec::new(),
            held: Vec::new(),
            resume: Vec::new(),
            carry: Vec::new(),
            inbox,
            accept: Accept {
                backoff_ms: ACCEPT_BACKOFF_MIN_MS,
                ..Accept::default()
            },
            state: State::Running,
            backlog: false,
            next_generation: 0,
        })
    }

    /// The address the server listens on (`None` once it stopped listening for shutdown).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// A handle for other threads: send, broadcast, close, shut down, read stats.
    pub fn handle(&self) -> Handle {
        self.inbox.handle.clone()
    }

    /// The application's handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The application's handler, to change between turns.
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// Consumes the server (closing every socket without further callbacks) and returns
    /// the handler, e.g. to inspect its state after [`run`](Server::run) returned.
    pub fn into_handler(self) -> H {
        self.handler
    }

    /// The server's counters now.
    pub fn stats(&self) -> Stats {
        self.hub.stats()
    }

    /// Sets an application timer before or between turns (e.g. a periodic task armed at
    /// start-up); it calls [`Handler::on_timer`] like one set with [`Ctx::set_timer`].
    pub fn set_timer(&mut self, delay: Duration, token: u64) -> TimerId {
        self.hub.env.tick();
        self.hub.set_timer(delay, token)
    }

    /// Runs until a graceful shutdown ([`Handle::shutdown`] or [`Ctx::shutdown`]) completes.
    pub fn run(&mut self) -> io::Result<()> {
        while self.poll_once(None)? {}
        Ok(())
    }

    /// One turn of the loop: waits up to `timeout` (`None`: until something happens or the
    /// next deadline) for events, handles them, and returns whether the server is still
    /// running (`false` once a shutdown has completed).
    ///
    /// Errors are those of the OS poll itself; errors on one connection only close that
    /// connection.
    pub fn poll_once(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        if self.state == State::Stopped {
            return Ok(false);
        }
        self.hub.env.tick();
        let timeout = self.poll_timeout(timeout);
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        self.hub.env.tick();
        self.backlog = false;

        for id in mem::take(&mut self.carry) {
            self.read_ready(id.key());
        }
        let events = mem::replace(&mut self.events, Events::with_capacity(0));
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept_all(),
                WAKER => {}
                Token(key) => {
                    if event.is_writable() {
                        self.on_writable(key);
                    }
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.read_ready(key);
                    }
                }
            }
        }
        self.events = events;
        self.run_commands();
        self.run_timers();
        self.settle();
        self.step_shutdown();
        self.publish_stats();
        Ok(self.state != State::Stopped)
    }

    fn poll_timeout(&self, requested: Option<Duration>) -> Option<Duration> {
        if self.backlog {
            return Some(Duration::ZERO);
        }
        let now = self.hub.env.now;
        let mut next = self.hub.env.timers.next_deadline();
        if let State::Draining { deadline } = self.state {
            next = Some(next.map_or(deadline, |n| n.min(deadline)));
        }
        let until_deadline = next.map(|at| Duration::from_millis(at.saturating_sub(now)));
        match (requested, until_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ----- accepting -----

    fn accept_all(&mut self) {
        while !self.accept.paused {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((sock, _)) => {
                    if self.accept.failing {
                        self.accept.failing = false;
                        log::info!("accepting connections again");
                    }
                    self.accept.backoff_ms = ACCEPT_BACKOFF_MIN_MS;
                    self.admit(sock);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // EMFILE and kin: the pending connection stays in the backlog, so
                    // retrying at once would spin. Pause, and log once per episode.
                    if !self.accept.failing {
                        self.accept.failing = true;
                        self.hub.env.stats.accept_pauses += 1;
                        log::error!("accept failed: {e}; pausing accepts with backoff");
                    }
                    self.accept.paused = true;
                    let at = self.hub.env.now + self.accept.backoff_ms;
                    self.accept.backoff_ms =
                        (self.accept.backoff_ms * 2).min(ACCEPT_BACKOFF_MAX_MS);
                    self.hub.env.timers.schedule(at, TimerKey::ResumeAccept);
                }
            }
        }
    }

    fn admit(&mut self, mut sock: TcpStream) {
        let env = &mut self.hub.env;
        let key = self.hub.conns.vacant_key();
        if env.handshaking >= env.config.max_handshakes || key >= WAKER.0 || key > u32::MAX as usize
        {
            // Too many sockets still handshaking: answer at once rather than hold memory
            // for it. Best effort: the socket is fresh, so this small write fits.
            let _ = sock.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 19\r\n\
                  Connection: close\r\n\r\ntoo many handshakes",
            );
            env.stats.http_responses += 1;
            env.stats.rejected.count(503);
            return;
        }
        // Latency over packet count: frames are already corked into one write per turn.
        let _ = sock.set_nodelay(true);
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut sock, Token(key), Interest::READABLE)
        {
            log::warn!("could not register a new connection: {e}");
            return;
        }
        self.next_generation = self.next_generation.wrapping_add(1);
        let id = ConnId::new(key, self.next_generation);
        let mut conn = Connection::new(sock, self.next_generation, env.now);
        env.handshaking += 1;
        env.schedule(&mut conn, id);
        self.hub.conns.insert(conn);
    }

    // ----- reading -----

    /// Reads a ready socket until `WouldBlock` (mio's readiness is edge-triggered: stopping
    /// early would strand bytes until the peer sends more).
    fn read_ready(&mut self, key: usize) {
        let Some(id) = self.hub.id_of(key) else {
            return;
        };
        let mut buf = mem::take(&mut self.read_buf);
        for reads in 0.. {
            if reads == READS_PER_TURN {
                // Edge-triggered: no new event will come for what is left, so note it.
                self.carry.push(id);
                self.backlog = true;
                break;
            }
            let limit = self.hub.env.config.max_backpressure;
            let now = self.hub.env.now;
            let Some(conn) = self.hub.get_mut(id) else {
                break;
            };
            if conn.read_paused
                || matches!(
                    conn.phase,
                    Phase::Lingering {
                        peer_closed: true,
                        ..
                    }
                )
            {
                break;
            }
            if conn.is_open() && conn.outbox.queued() > limit {
                // Read-side backpressure: this peer is not reading what it asks for.
                conn.read_paused = true;
                break;
            }
            let n = match conn.sock.read(&mut buf) {
                Ok(0) => {
                    self.on_eof(id);
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("connection {id}: read failed: {e}");
                    self.remove(id, abnormal("read failed"));
                    break;
                }
            };
            conn.last_read = now;
            match conn.phase {
                Phase::Handshaking(_) => self.on_request_bytes(id, &buf[..n]),
                Phase::Open(_) | Phase::Closing { .. } => self.on_frame_bytes(id, &buf[..n]),
                Phase::Lingering { .. } => {} // nothing more is read: discard
            }
        }
        self.read_buf = buf;
    }

    fn on_eof(&mut self, id: ConnId) {
        // A peer may send its last request or close frame and shut down its side at once:
        // what we owe it is still written before the socket goes, if need be over several
        // writable events (the connection lingers, reading nothing more).
        self.flush_conn(id);
        let Some((conn, env)) = self.hub.split(id) else {
            return;
        };
        if conn.outbox.is_empty() || matches!(conn.phase, Phase::Handshaking(_)) {
            self.remove(id, abnormal("connection closed without a close frame"));
            return;
        }
        env.finish(
            conn,
            id,
            abnormal("connection closed without a close frame"),
        );
        if let Phase::Lingering { peer_closed, .. } = &mut conn.phase {
            *peer_closed = true;
        }
    }

    fn on_request_bytes(&mut self, id: ConnId, bytes: &[u8]) {
        let env = &self.hub.env;
        let limits = Limits {
            max_head: env.config.max_request_bytes,
            max_body: env.config.max_body_bytes,
        };
        let Some(conn) = self.hub.get_mut(id) else {
            return;
        };
        let Phase::Handshaking(handshake) = &mut conn.phase else {
            return;
        };
        handshake.buf.extend_from_slice(bytes);
        let len = match http::progress(&handshake.buf, &mut handshake.scan, &limits) {
            Progress::Incomplete => {
                if handshake.scan.take_continue() {
                    if let Some((conn, env)) = self.hub.split(id) {
                        env.push(conn, id, Kind::Owed, Bytes::from_static(http::CONTINUE));
                    }
                }
                return;
            }
            Progress::Complete { len } => len,
            Progress::Invalid(response) => {
                self.leave_handshake(id);
                self.respond(id, &response);
                return;
            }
        };
        let Some(handshake) = self.leave_handshake(id) else {
            return;
        };
        let peer = self.hub.get(id).and_then(|c| c.sock.peer_addr().ok());
        let Some(req) = http::parse(&handshake.buf[..len], peer) else {
            self.respond(id, &Response::text(400, "malformed request"));
            return;
        };
        let reply = if self.state == State::Running {
            self.handler.on_request(&mut Ctx::new(&mut self.hub), &req)
        } else {
            Reply::Respond(Response::text(503, "server shutting down"))
        };
        let refusal = match reply {
            Reply::Respond(response) if req.method() == "HEAD" => {
                // What a GET would get, without the body (RFC 9110 §9.3.2).
                self.respond_with(id, &response, false);
                return;
            }
            Reply::Respond(response) => response,
            Reply::Accept { data, protocol } => match self.check_upgrade(&req, protocol) {
                Ok((accept_key, protocol)) => {
                    let pipelined = handshake.buf[len..].to_vec();
                    self.open(id, &accept_key, protocol.as_deref(), data, pipelined);
                    return;
                }
                Err(refusal) => refusal,
            },
        };
        self.respond(id, &refusal);
    }

    /// The accept key and confirmed subprotocol, or the answer to refuse with.
    fn check_upgrade(
        &self,
        req: &Request<'_>,
        protocol: Option<String>,
    ) -> Result<(String, Option<String>), Response> {
        let accept_key = http::validate_upgrade(req).map_err(|e| e.response())?;
        if self.hub.open_count() >= self.hub.env.config.max_connections {
            return Err(Response::text(503, "too many connections"));
        }
        let protocol = protocol.filter(|p| {
            let offered = req.protocols().any(|o| o == p);
            if !offered {
                log::warn!("handler chose subprotocol {p:?}, which the client did not offer; not confirming it");
            }
            offered
        });
        Ok((accept_key, protocol))
    }

    /// Handshaking → (temporarily) Lingering; returns the request bytes.
    fn leave_handshake(&mut self, id: ConnId) -> Option<Box<Handshake>> {
        let (conn, env) = self.hub.split(id)?;
        let since = env.now;
        match mem::replace(
            &mut conn.phase,
            Phase::Lingering {
                since,
                peer_closed: false,
            },
        ) {
            Phase::Handshaking(handshake) => {
                env.handshaking -= 1;
                Some(handshake)
            }
            other => {
                conn.phase = other;
                None
            }
        }
    }

    /// Queues a plain HTTP answer; the connection lingers and closes once it is written.
    fn respond(&mut self, id: ConnId, response: &Response) {
        self.respond_with(id, response, true);
    }

    /// `with_body: false` answers a HEAD request: the head names the body's length, but
    /// the body stays home.
    fn respond_with(&mut self, id: ConnId, response: &Response, with_body: bool) {
        let Some((conn, env)) = self.hub.split(id) else {
            return;
        };
        let (head, body) = response.encode();
        env.stats.http_responses += 1;
        if response.status() >= 400 {
            env.stats.rejected.count(response.status());
        }
        env.push(conn, id, Kind::Owed, head);
        if with_body && !body.is_empty() {
            env.push(conn, id, Kind::Owed, body);
        }
        env.schedule(conn, id);
    }

    fn open(
        &mut self,
        id: ConnId,
        accept_key: &str,
        protocol: Option<&str>,
        data: H::Data,
        pipelined: Vec<u8>,
    ) {
        let Some((conn, env)) = self.hub.split(id) else {
            return;
        };
        env.push(
            conn,
            id,
            Kind::Owed,
            http::switching_protocols(accept_key, protocol),
        );
        env.stats.handshakes_accepted += 1;
        env.stats.open_connections += 1;
        let has_pipelined = !pipelined.is_empty();
        conn.phase = Phase::Open(Session::new(data, pipelined, &env.ws_config));
        conn.last_read = env.now;
        env.schedule(conn, id);
        self.handler.on_open(&mut Ctx::new(&mut self.hub), id);
        if has_pipelined {
            // Frames that came in the same read as the request: decode them now.
            self.on_frame_bytes(id, &[]);
        }
    }

    fn on_frame_bytes(&mut self, id: ConnId, bytes: &[u8]) {
        let Some((conn, env)) = self.hub.split(id) else {
            return;
        };
        // Whether this read may carry the answer to a close we sent.
        let answering = matches!(conn.phase, Phase::Closing { .. });
        let Some(session) = conn.session_mut() else {
            return;
        };
        session.ping_sent = None;
        // What the codec wants to send goes out before the messages of this read are handled
        // when it is only pongs ("as soon as practical", RFC 6455 §5.5.2). When it ends
        // with a close frame (the reply to the peer's close, or ours after a protocol error)
        // it waits: a reply a callback sends to a message decoded before the close must go
        // out first, as nothing may follow a close frame (§5.5.1).
        let mut inbox = mem::take(&mut self.messages);
        let mut held = mem::take(&mut self.held);
        let fed = session.feed(&env.ws_config, bytes, &mut held, &mut inbox);
        let closing = !matches!(fed, Fed::More);
        if !closing && !held.is_empty() {
            env.push(conn, id, Kind::Owed, Bytes::copy_from_slice(&held));
            held.clear();
        }
        for msg in inbox.drain(..) {
            // A callback may have closed this connection: the rest is not delivered.
            if !self.hub.get(id).is_some_and(|c| c.is_open()) {
                continue;
            }
            self.hub.env.stats.messages_in += 1;
            self.hub.env.stats.bytes_in += msg.len() as u64;
            self.handler
                .on_message(&mut Ctx::new(&mut self.hub), id, msg);
        }
        self.messages = inbox;
        let Some((conn, env)) = self.hub.split(id) else {
            held.clear();
            self.held = held;
            return;
        };
        if !held.is_empty() {
            env.push(conn, id, Kind::Owed, Bytes::copy_from_slice(&held));
            held.clear();
        }
        self.held = held;
        match fed {
            Fed::More => {}
            Fed::PeerClosed(frame) => {
                let info = match (&conn.phase, frame) {
                    // The peer answered our close.
                    (Phase::Closing { code, reason, .. }, _) if answering => CloseInfo {
                        code: *code,
                        reason: reason.clone(),
                        clean: true,
                    },
                    (_, Some(f)) => CloseInfo {
                        code: f.code.into(),
                        reason: f.reason.to_string(),
                        clean: true,
                    },
                    (_, None) => CloseInfo {
                        code: 1005,
                        reason: String::new(),
                        clean: true,
                    },
                };
                env.finish(conn, id, info);
            }
            Fed::Failed { code, reason } => {
                log::debug!("connection {id}: failed with {code}: {reason}");
                env.stats.protocol_errors += 1;
                env.finish(
                    conn,
                    id,
                    CloseInfo {
                        code,
                        reason,
                        clean: false,
                    },
                );
            }
        }
    }

    // ----- commands, timers -----

    fn run_commands(&mut self) {
        // Bounded per turn, so another thread cannot starve the sockets.
        for _ in 0..self.hub.env.config.handle_capacity {
            let Ok(command) = self.inbox.rx.try_recv() else {
                return;
            };
            match command {
                Command::Send(id, frame) => match self.hub.send(id, &frame) {
                    Err(SendError::Gone | SendError::Closing) => {
                        self.hub.env.stats.dropped_messages += 1
                    }
                    // Already counted by the policy (an invalid close code cannot come
                    // from a send).
                    Ok(())
                    | Err(
                        SendError::Dropped
                        | SendError::SlowConsumerClosed
                        | SendError::InvalidCloseCode,
                    ) => {}
                },
                Command::Broadcast(frame) => {
                    self.hub.broadcast(&frame, |_, _| true);
                }
                Command::Close(id, code, reason) => {
                    let _ = self.hub.close(id, code, &reason);
                }
                Command::Shutdown => self.hub.env.shutdown_requested = true,
            }
        }
        self.backlog = true;
    }

    fn run_timers(&mut self) {
        let now = self.hub.env.now;
        while let Some((at, key)) = self.hub.env.timers.pop_due(now) {
            match key {
                TimerKey::App(timer) => {
                    if let Some(token) = self.hub.env.timers.take_app(timer) {
                        self.handler.on_timer(&mut Ctx::new(&mut self.hub), token);
                    }
                }
                TimerKey::ResumeAccept => {
                    self.accept.paused = false;
                    self.accept_all();
                }
                TimerKey::Conn(id) => self.conn_timer(id, at),
            }
        }
    }

    fn conn_timer(&mut self, id: ConnId, at: u64) {
        let Some((conn, env)) = self.hub.split(id) else {
            return;
        };
        if at == conn.timer_at {
            conn.timer_at = u64::MAX;
        }
        let now = env.now;
        if env.deadline(conn) > now {
            env.schedule(conn, id);
            return;
        }
        let stall = millis(env.config.write_stall_timeout);
        let expired = match &mut conn.phase {
            Phase::Handshaking(_) => {
                env.stats.handshake_timeouts += 1;
                abnormal("handshake timeout")
            }
            Phase::Open(_)
                if !conn.outbox.is_empty() && now >= conn.last_write.saturating_add(stall) =>
            {
                // The kernel may have been draining its own (large) buffer all along without
                // making the socket writable again: a write now tells whether the peer reads.
                match env.write(conn) {
                    Ok(_) if conn.last_write == now => {
                        env.schedule(conn, id);
                        if !conn.dirty {
                            // Writable interest and watermarks are settled by the flush.
                            conn.dirty = true;
                            env.dirty.push(id);
                        }
                        return;
                    }
                    Ok(_) => {
                        env.stats.write_stall_timeouts += 1;
                        abnormal("write stalled")
                    }
                    Err(_) => abnormal("write failed"),
                }
            }
            Phase::Open(session) if session.ping_sent.is_some() => {
                env.stats.pong_timeouts += 1;
                abnormal("keepalive timeout")
            }
            Phase::Open(session) => {
                session.ping_sent = Some(now);
                env.push(conn, id, Kind::Owed, Frame::ping());
                env.schedule(conn, id);
                return;
            }
            Phase::Closing { code, reason, .. } => {
                env.stats.close_timeouts += 1;
                CloseInfo {
                    code: *code,
                    reason: mem::take(reason),
                    clean: false,
                }
            }
            Phase::Lingering { .. } => abnormal("linger timeout"),
        };
        self.remove(id, expired);
    }

    // ----- writing and follow-up work -----

    /// The socket has room again: flush it at the end of this turn.
    fn on_writable(&mut self, key: usize) {
        let Hub { conns, env } = &mut self.hub;
        if let Some(conn) = conns.get_mut(key) {
            conn.blocked = false;
            if !conn.dirty {
                conn.dirty = true;
                env.dirty.push(ConnId::new(key, conn.generation));
            }
        }
    }

    /// Flushes, then makes the calls and resumes the reads that flushing made due, until
    /// nothing is left (or `SETTLE_ROUNDS`, then the next turn goes on without sleeping).
    fn settle(&mut self) {
        for _ in 0..SETTLE_ROUNDS {
            let mut dirty = mem::take(&mut self.hub.env.dirty);
            for id in dirty.drain(..) {
                self.flush_conn(id);
            }
            if self.hub.env.dirty.is_empty() {
                self.hub.env.dirty = dirty; // keep the allocation
            }
            for id in mem::take(&mut self.hub.env.drained) {
                if self.hub.get(id).is_some_and(|c| c.is_open()) {
                    self.handler.on_drain(&mut Ctx::new(&mut self.hub), id);
                }
            }
            for id in mem::take(&mut self.resume) {
                self.read_ready(id.key());
            }
            while let Some((id, data, info)) = self.hub.env.closed.pop_front() {
                self.handler
                    .on_close(&mut Ctx::new(&mut self.hub), id, info, data);
            }
            let env = &self.hub.env;
            if env.dirty.is_empty() && env.drained.is_empty() && self.resume.is_empty() {
                return;
            }
        }
        self.backlog = true;
    }

    /// Writes what the connection has queued: one vectored write (more only if the socket
    /// keeps taking bytes), then updates interest, watermarks and deadlines.
    fn flush_conn(&mut self, id: ConnId) {
        let Some((conn, env)) = self.hub.split(id) else {
            return;
        };
        conn.dirty = false;
        if conn.blocked && conn.write_interest {
            // Still full: the writable event will bring it back here.
            return;
        }
        let flush = match env.write(conn) {
            Ok(flush) => flush,
            Err(e) => {
                log::debug!("connection {id}: write failed: {e}");
                self.remove(id, abnormal("write failed"));
                return;
            }
        };
        let blocked = flush == Flush::Blocked;
        if blocked != conn.write_interest {
            let interest = if blocked {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) =
                self.poll
                    .registry()
                    .reregister(&mut conn.sock, Token(id.key()), interest)
            {
                log::warn!("connection {id}: reregister failed: {e}");
                self.remove(id, abnormal("reregister failed"));
                return;
            }
            conn.write_interest = blocked;
        }
        let queued = conn.outbox.queued();
        let watermark = env.config.watermark();
        if conn.pressured && queued <= watermark {
            conn.pressured = false;
            env.drained.push(id);
        }
        if conn.read_paused && queued <= watermark {
            conn.read_paused = false;
            self.resume.push(id);
        }
        if !blocked && !conn.write_shut && matches!(conn.phase, Phase::Lingering { .. }) {
            // All said: FIN after the last byte, then wait for the peer's EOF, so our final
            // bytes are not lost to a reset.
            let _ = conn.sock.shutdown(Shutdown::Write);
            conn.write_shut = true;
        }
        if !blocked
            && matches!(
                conn.phase,
                Phase::Lingering {
                    peer_closed: true,
                    ..
                }
            )
        {
            // Both sides are done.
            self.remove(id, abnormal("connection closed"));
            return;
        }
        env.schedule(conn, id);
    }

    /// Removes a connection from the table; `on_close` gets `info` if it was still a
    /// WebSocket (Open or Closing).
    fn remove(&mut self, id: ConnId, info: CloseInfo) {
        let Some((conn, env)) = self.hub.split(id) else {
            return;
        };
        env.finish(conn, id, info);
        if matches!(conn.phase, Phase::Handshaking(_)) {
            env.handshaking -= 1;
        }
        env.stats.queued_bytes -= conn.outbox.queued();
        let mut conn = self.hub.conns.remove(id.key());
        let _ = self.poll.registry().deregister(&mut conn.sock);
    }

    // ----- shutdown -----

    fn step_shutdown(&mut self) {
        if self.state == State::Running && self.hub.env.shutdown_requested {
            self.begin_shutdown();
        }
        let State::Draining { deadline } = self.state else {
            return;
        };
        // Connections that said all they had to say need not wait for the peer's EOF.
        for id in self.hub.ids(|c| c.write_shut) {
            self.remove(id, abnormal("server shutting down"));
        }
        if self.hub.env.now >= deadline {
            for id in self.hub.ids(|_| true) {
                self.remove(id, abnormal("shutdown deadline passed"));
            }
            self.settle();
        }
        if self.hub.conns.is_empty() {
            self.state = State::Stopped;
            self.inbox
                .stopped
                .store(true, std::sync::atomic::Ordering::Release);
            log::info!("shut down");
        }
    }

    /// Stops accepting and starts the close handshake with every connection.
    fn begin_shutdown(&mut self) {
        log::info!(
            "shutting down: closing {} connections",
            self.hub.open_count()
        );
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        for id in self.hub.ids(|_| true) {
            match self.hub.get(id).map(|c| &c.phase) {
                Some(Phase::Open(_)) => {
                    let _ = self.hub.close(id, 1001, "server shutting down");
                }
                Some(Phase::Handshaking(_)) => self.remove(id, abnormal("server shutting down")),
                _ => {}
            }
        }
        let deadline = self.hub.env.after(self.hub.env.config.shutdown_timeout);
        self.state = State::Draining { deadline };
        self.settle();
    }

    fn publish_stats(&self) {
        let stats = self.hub.stats();
        match self.inbox.stats.lock() {
            Ok(mut shared) => *shared = stats,
            Err(poisoned) => *poisoned.into_inner() = stats,
        }
    }
}

/// A connection that ended without a close handshake (RFC 6455 §7.1.5: code 1006).
fn abnormal(reason: &str) -> CloseInfo {
    CloseInfo {
        code: 1006,
        reason: reason.to_owned(),
        clean: false,
    }
}
