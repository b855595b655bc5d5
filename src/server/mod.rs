//! The event loop: one `mio::Poll`, the listener, the connection table and the topics.
//!
//! A loop turn ([`Server::poll_once`]): poll → accept (`accept.rs`) / read every ready
//! socket until `WouldBlock`, callbacks running as messages complete (`inbound.rs`) → run
//! commands from handles → fire due timers (`timeouts.rs`) → *settle* (`outbound.rs`): flush
//! every connection that has new bytes (one vectored write each: writes are corked per
//! turn), then make the `on_drain` / `on_close` calls and resume paused reads that the flush
//! made due, until nothing is left → step a shutdown under way (`shutdown.rs`) → seal the
//! turn buffer.

mod accept;
mod admission;
mod core;
mod inbound;
mod outbound;
mod peers;
mod shutdown;
mod timeouts;
mod turn;

use std::io;
use std::mem;
use std::net::{SocketAddr, ToSocketAddrs};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

pub(crate) use self::core::Core;
pub use self::core::Delivery;
use self::peers::Peers;
use crate::handle::{self, Command, Commands, Inbox};
use crate::timers::TimerId;
use crate::topic_loops::TopicLoops;
use crate::{CloseInfo, Config, ConnId, Ctx, Handle, Handler, Message, SendError, Stats};

const WAKER: Token = Token(usize::MAX - 2);
/// Listener `i` is registered as `Token(FIRST_LISTENER - i)`.
const FIRST_LISTENER: usize = usize::MAX - 3;
const MAX_LISTENERS: usize = 16;
/// Connection keys stay below every token above.
const RESERVED: usize = FIRST_LISTENER - MAX_LISTENERS;
/// Every socket is read into this one buffer; the bytes are then handed to the connection's
/// decoder, so no connection needs a large buffer of its own.
const READ_BUFFER: usize = 64 * 1024;
/// Reads of one connection per turn (of up to 64 KiB each) before the others get their
/// turn; the rest is read next turn. Without a budget a peer that floods could hold the loop.
const READS_PER_TURN: usize = 16;

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
    /// The listening sockets: the one the server was made with, then any added with
    /// [`add_plain_listener`](Server::add_plain_listener). Empty once shutting down.
    listeners: Vec<Listener>,
    core: Core<H::Data>,
    handler: H,
    read_buf: Box<[u8]>,
    /// Messages decoded from one read, delivered once the decoder is released.
    messages: Vec<Message>,
    /// Connections whose reads were paused and may resume.
    resume: Vec<ConnId>,
    /// Connections that used their read budget with bytes left: read on next turn.
    carry: Vec<ConnId>,
    /// The server's end of its handles.
    commands: Commands,
    accept: accept::Accept,
    life: Life,
    /// Work was left for the next turn: poll without sleeping.
    more_work: bool,
    next_generation: u32,
    /// This server started the configured broker (it is not a loop of a cluster), and stops
    /// it when it stops.
    owns_broker: bool,
}

struct Listener {
    socket: TcpListener,
    /// Plain TCP even on a server with [`Config::tls`].
    plain: bool,
}

/// Where the server is in its life.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Life {
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
        let listener = listen(first_addr(addr)?, config.backlog, false)?;
        Server::from_listener(listener, config, handler)
    }

    /// Serves on a listener the embedder created (e.g. one inherited from a supervisor);
    /// it is switched to non-blocking mode.
    pub fn from_listener(
        listener: std::net::TcpListener,
        config: Config,
        handler: H,
    ) -> io::Result<Server<H>> {
        let mut server = Server::loop_on(listener, config, handler)?;
        if let Some(broker) = server.core.shared.config.broker.clone() {
            let handle = Handle::new(
                vec![server.inbox()],
                Some(Arc::new(TopicLoops::new(Some(Arc::clone(&broker.0))))),
                Some(Arc::clone(&broker.0)),
            );
            server.join_cluster(0, handle.clone());
            broker.0.start(handle);
            server.owns_broker = true;
        }
        Ok(server)
    }

    /// A server on `listener` that is not started as a node of its own: a loop of a
    /// cluster, which starts the broker once for all its loops.
    pub(crate) fn loop_on(
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
            .register(&mut listener, Token(FIRST_LISTENER), Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let commands = handle::channel(config.handle_capacity, waker);
        Ok(Server {
            events: Events::with_capacity(config.events_capacity),
            poll,
            listeners: vec![Listener {
                socket: listener,
                plain: false,
            }],
            core: Core::new(config),
            handler,
            read_buf: vec![0; READ_BUFFER].into_boxed_slice(),
            messages: Vec::new(),
            resume: Vec::new(),
            carry: Vec::new(),
            commands,
            accept: accept::Accept::default(),
            life: Life::Running,
            more_work: false,
            next_generation: 0,
            owns_broker: false,
        })
    }

    /// This loop's inbox, for the handle of a cluster.
    pub(crate) fn inbox(&self) -> Arc<Inbox> {
        Arc::clone(self.commands.inbox())
    }

    /// Makes this server loop `index` of a cluster whose loops `handle` reaches.
    pub(crate) fn join_cluster(&mut self, index: usize, handle: Handle) {
        self.core.peers = Some(Peers::new(index, handle.clone()));
        self.commands.handle = handle;
        // Generations step by the number of loops from here (see `next_generation`).
        self.next_generation = index as u32;
    }

    /// The generation of the next connection. In a cluster of `n` loops, loop `i` draws
    /// `i + n`, `i + 2n`, …, so that a [`ConnId`] says which loop it is on
    /// (`generation % n`) and its number is unique across the loops.
    fn next_generation(&mut self) -> u32 {
        let (me, n) = self
            .core
            .peers
            .as_ref()
            .map_or((0, 1), |p| (p.me() as u32, p.count() as u32));
        self.next_generation = self.next_generation.checked_add(n).unwrap_or(me);
        self.next_generation
    }

    /// The address the server listens on (`None` once it stopped listening for shutdown).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listeners.first()?.socket.local_addr().ok()
    }

    /// Also serves on `listener`, in plain TCP even if the server has [`Config::tls`]: e.g.
    /// `http://` and `ws://` on one port beside `https://` and `wss://` on another, one
    /// server, one set of connections and topics (a broadcast reaches both kinds;
    /// [`Request::is_tls`](crate::Request::is_tls) tells them apart). Returns the address it
    /// listens on. At most 16 listeners per server.
    pub fn add_plain_listener(
        &mut self,
        listener: std::net::TcpListener,
    ) -> io::Result<SocketAddr> {
        if self.listeners.len() >= MAX_LISTENERS || self.life != Life::Running {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no more listeners: at most 16, and none once shutting down",
            ));
        }
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let mut socket = TcpListener::from_std(listener);
        let token = Token(FIRST_LISTENER - self.listeners.len());
        self.poll
            .registry()
            .register(&mut socket, token, Interest::READABLE)?;
        self.listeners.push(Listener {
            socket,
            plain: true,
        });
        Ok(addr)
    }

    /// A handle for other threads: send, broadcast, close, shut down, read stats.
    pub fn handle(&self) -> Handle {
        self.commands.handle.clone()
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
        self.core.stats()
    }

    /// Sets an application timer before or between turns (e.g. a periodic task armed at
    /// start-up); it calls [`Handler::on_timer`] like one set with [`Ctx::set_timer`](crate::Ctx::set_timer).
    pub fn set_timer(&mut self, delay: Duration, token: u64) -> TimerId {
        self.core.shared.tick();
        self.core.set_timer(delay, token)
    }

    /// Runs until a graceful shutdown ([`Handle::shutdown`] or [`Ctx::shutdown`](crate::Ctx::shutdown)) completes.
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
        if self.life == Life::Stopped {
            return Ok(false);
        }
        // Commands handed to other loops between turns (before `run`, or from `loop_mut`).
        self.wake_peers();
        self.core.shared.tick();
        let timeout = self.poll_timeout(timeout);
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        self.core.shared.tick();
        self.more_work = false;

        for id in mem::take(&mut self.carry) {
            self.read_ready(id.key());
        }
        let events = mem::replace(&mut self.events, Events::with_capacity(0));
        for event in events.iter() {
            match event.token() {
                WAKER => {}
                Token(t) if t > RESERVED => self.accept_all(FIRST_LISTENER - t),
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
        self.core.seal_turn();
        self.wake_peers();
        self.publish_stats();
        Ok(self.life != Life::Stopped)
    }

    /// Wakes the other loops this turn handed commands to: after this loop's own flush,
    /// with the whole turn's commands in their inboxes.
    fn wake_peers(&self) {
        if let Some(peers) = &self.core.peers {
            peers.wake();
        }
    }

    fn poll_timeout(&self, requested: Option<Duration>) -> Option<Duration> {
        if self.more_work {
            return Some(Duration::ZERO);
        }
        let now = self.core.shared.now;
        let mut next = self.core.shared.timers.next_deadline();
        if let Life::Draining { deadline } = self.life {
            next = Some(next.map_or(deadline, |n| n.min(deadline)));
        }
        let until_deadline = next.map(|at| Duration::from_millis(at.saturating_sub(now)));
        match (requested, until_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn run_commands(&mut self) {
        // Bounded per turn, so another thread cannot starve the sockets.
        self.commands.rearm();
        for _ in 0..self.core.shared.config.handle_capacity {
            let Some(command) = self.commands.try_recv() else {
                return;
            };
            match command {
                Command::Send(id, frame) => match self.core.send(id, &frame) {
                    Err(SendError::Gone | SendError::Closing) => {
                        self.core.shared.stats.dropped_messages += 1
                    }
                    // Already counted by the policy (an invalid close code cannot come
                    // from a send).
                    Ok(())
                    | Err(
                        SendError::Dropped
                        | SendError::SlowConsumerClosed
                        | SendError::InvalidCloseCode
                        | SendError::InboxFull
                        | SendError::OtherLoop,
                    ) => {}
                },
                // Only for this loop's connections: whoever sent it reached the others.
                Command::Broadcast(frame) => {
                    self.core.broadcast(&frame, |_, _| true);
                }
                Command::Publish(topic, frame) => {
                    self.core.publish_here(&topic, &frame, None);
                }
                Command::Close(id, code, reason) => {
                    let _ = self.core.close(id, code, &reason);
                }
                #[cfg(feature = "tls")]
                Command::SetTls(tls) => {
                    let config = &mut self.core.shared.config;
                    if config.tls.is_some() {
                        config.tls = Some(tls);
                        log::info!("TLS certificates replaced");
                    } else {
                        log::warn!("set_tls on a plain server: ignored");
                    }
                }
                Command::Broker(event) => {
                    self.callback(|handler, ctx| handler.on_broker(ctx, event));
                }
                Command::Shutdown => self.core.shared.shutdown_requested = true,
            }
        }
        self.more_work = true;
    }

    /// Runs a handler callback with a `Ctx`. With [`Config::catch_panics`] (the default) a
    /// panic in it is caught, logged and counted, and `None` returned: the caller closes the
    /// connection concerned with 1011 (or answers 500), and the loop carries on.
    fn callback<R>(&mut self, f: impl FnOnce(&mut H, &mut Ctx<'_, H::Data>) -> R) -> Option<R> {
        let Server { handler, core, .. } = self;
        if !core.shared.config.catch_panics {
            return Some(f(handler, &mut Ctx::new(core)));
        }
        match panic::catch_unwind(AssertUnwindSafe(|| f(handler, &mut Ctx::new(core)))) {
            Ok(result) => Some(result),
            Err(payload) => {
                core.shared.stats.handler_panics += 1;
                let what = payload
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(no message)");
                log::error!("a handler callback panicked: {what}");
                None
            }
        }
    }

    /// Removes a connection from the table; `on_close` gets `info` if it was still a
    /// WebSocket (Open or Closing).
    fn remove(&mut self, id: ConnId, info: CloseInfo) {
        self.core.finish(id, info);
        let Some((conn, shared)) = self.core.split(id) else {
            return;
        };
        if conn.is_handshaking() {
            shared.admission.end_handshake(conn.addr);
        }
        shared.admission.socket_gone(conn.addr);
        shared.stall_probes.remove(&id);
        shared.stats.queued_bytes -= conn.outbox.queued();
        let mut conn = self.core.conns.remove(id.key());
        let _ = self.poll.registry().deregister(conn.transport.socket_mut());
    }

    fn publish_stats(&self) {
        self.commands.publish_stats(self.core.stats());
    }
}

/// The first address `addr` resolves to.
pub(crate) fn first_addr(addr: impl ToSocketAddrs) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind"))
}

/// A listening socket on `addr` with `SO_REUSEADDR`, and `SO_REUSEPORT` for the loops of a
/// cluster (each has its own listener on the same port; the kernel spreads connections over
/// them).
pub(crate) fn listen(
    addr: SocketAddr,
    backlog: u32,
    reuse_port: bool,
) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// A connection that ended without a close handshake (RFC 6455 §7.1.5: code 1006).
fn abnormal(reason: &str) -> CloseInfo {
    CloseInfo {
        code: 1006,
        reason: reason.to_owned(),
        clean: false,
    }
}
