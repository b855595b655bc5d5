//! [`Cluster`]: one loop per core, each an ordinary [`Server`] on its own thread, and the
//! ways a send, publish, broadcast or close crosses from one loop to another.
//!
//! - Spreading connections: every loop has its own listener on the same port
//!   (`SO_REUSEPORT`), so the kernel hands each new connection to one loop, by a hash of its
//!   addresses, and no loop accepts for another.
//! - Naming a loop: loop `i` of `n` numbers its connections `i + n`, `i + 2n`, … (the
//!   [`ConnId`](crate::ConnId) generation), so an id says where the connection lives.
//! - Crossing: each loop's inbox is the channel its [`Handle`] uses ([`crate::handle`]);
//!   another loop hands it a command with the frame, whose bytes are shared, not copied.
//!   A publish goes only to loops that have subscribers to the topic (`topic_loops.rs`); a
//!   loop's way to the others is `server/peers.rs`. Nothing
//!   received through an inbox is forwarded again, so each loop gets a frame once.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;

use crate::server::{first_addr, listen};
use crate::topic_loops::{MAX_LOOPS, TopicLoops};
use crate::{Config, Handle, Handler, Server};

/// A server on several threads: one ordinary loop per thread, each with its own poll,
/// connections, timers, topics and [`Handler`], on one port.
///
/// The kernel spreads new connections over the loops (`SO_REUSEPORT`). A callback's
/// [`Ctx`](crate::Ctx) reaches the whole server: [`send`](crate::Ctx::send) and
/// [`close`](crate::Ctx::close) to a connection on another loop,
/// [`publish`](crate::Ctx::publish) to subscribers on every loop (handed only to loops that
/// have some), [`broadcast`](crate::Ctx::broadcast) to every connection. Each loop's
/// handler sees only its own connections' events and data; state the handlers share (a
/// registry of names, say) is the application's, behind a lock or in one owner.
///
/// A cluster of one loop is exactly a [`Server`] on one thread.
///
/// Limits: [`Config::max_connections`] and [`Config::max_handshakes`] are the whole
/// server's, shared equally by the loops; the per-address limits and
/// [`Config::handle_capacity`] apply to each loop.
///
/// ```no_run
/// use wshub::{Cluster, Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request};
///
/// struct Room;
/// impl Handler for Room {
///     type Data = ();
///     fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
///         Reply::accept(())
///     }
///     fn on_open(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId) {
///         let _ = ctx.subscribe(id, "lobby");
///     }
///     fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, _: ConnId, msg: Message) {
///         if let Message::Text(text) = msg {
///             // Reaches the lobby's members on every loop.
///             ctx.publish("lobby", &Frame::text(&text));
///         }
///     }
/// }
///
/// let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
/// let cluster = Cluster::bind("127.0.0.1:9001", Config::default(), threads, |_| Room)?;
/// let handle = cluster.handle(); // for other threads: shutdown, stats, publish…
/// cluster.run()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Cluster<H: Handler> {
    loops: Vec<Server<H>>,
    handle: Handle,
}

impl<H> Cluster<H>
where
    H: Handler + Send + 'static,
    H::Data: Send,
{
    /// Binds `addr` once per loop (`threads` of them, at most 64) and makes each loop's
    /// handler with `factory(loop_index)`. Port 0 picks one free port for all of them.
    pub fn bind(
        addr: impl ToSocketAddrs,
        config: Config,
        threads: usize,
        mut factory: impl FnMut(usize) -> H,
    ) -> io::Result<Cluster<H>> {
        if !(1..=MAX_LOOPS).contains(&threads) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a cluster has 1 to {MAX_LOOPS} loops, not {threads}"),
            ));
        }
        let mut addr = first_addr(addr)?;
        let per_loop = config.per_loop(threads);
        let mut loops = Vec::with_capacity(threads);
        for index in 0..threads {
            let listener = listen(addr, config.backlog, threads > 1)?;
            // Port 0: the others join the port the first one got.
            addr = listener.local_addr()?;
            loops.push(Server::loop_on(listener, per_loop.clone(), factory(index))?);
        }
        let broker = config.broker.map(|b| b.0);
        let handle = if threads == 1 && broker.is_none() {
            loops[0].handle()
        } else {
            let inboxes = loops.iter().map(Server::inbox).collect();
            let topic_loops = TopicLoops::new(broker.clone());
            let handle = Handle::new(inboxes, Some(Arc::new(topic_loops)), broker.clone());
            for (index, server) in loops.iter_mut().enumerate() {
                server.join_cluster(index, handle.clone());
            }
            handle
        };
        if let Some(broker) = &broker {
            broker.start(handle.clone());
        }
        Ok(Cluster { loops, handle })
    }

    /// The address every loop listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.loops[0].local_addr()
    }

    /// Loop `index` before [`run`](Cluster::run): to arm a timer on it
    /// ([`Server::set_timer`]) or reach its handler.
    pub fn loop_mut(&mut self, index: usize) -> Option<&mut Server<H>> {
        self.loops.get_mut(index)
    }

    /// How many loops the cluster has.
    pub fn loops(&self) -> usize {
        self.loops.len()
    }

    /// A handle that addresses every loop (see [`Handle`]).
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Runs the loops until a graceful shutdown of the whole cluster completes, and returns
    /// the handlers in loop order: loop 0 on the calling thread (so a cluster of one is a
    /// [`Server`] run where it was called, and no thread sits waiting), the others on
    /// threads named `wshub-loop-N`. If a loop fails (its poll errs) or panics, the others
    /// are shut down and the first error is returned.
    pub fn run(self) -> io::Result<Vec<H>> {
        let mut loops = self.loops.into_iter();
        let Some(mut first) = loops.next() else {
            return Ok(Vec::new());
        };
        let mut threads = Vec::with_capacity(loops.len());
        for (index, mut server) in loops.enumerate() {
            let stop_all = StopAllOnExit(self.handle.clone());
            let thread = thread::Builder::new()
                .name(format!("wshub-loop-{}", index + 1))
                .spawn(move || {
                    let result = server.run();
                    drop(stop_all);
                    result.map(|()| server.into_handler())
                });
            match thread {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    let _ = self.handle.shutdown();
                    for thread in threads {
                        let _ = thread.join();
                    }
                    return Err(e);
                }
            }
        }
        let first_result = {
            let _stop_all = StopAllOnExit(self.handle.clone());
            panic::catch_unwind(AssertUnwindSafe(|| first.run()))
        };
        let mut handlers = Vec::with_capacity(threads.len() + 1);
        let mut failure = match first_result {
            Ok(Ok(())) => {
                handlers.push(first.into_handler());
                None
            }
            Ok(Err(e)) => Some(e),
            Err(_) => Some(io::Error::other("loop 0 panicked")),
        };
        for thread in threads {
            match thread.join() {
                Ok(Ok(handler)) => handlers.push(handler),
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(_) => {
                    failure = failure.or(Some(io::Error::other("a loop's thread panicked")));
                }
            }
        }
        if let Some(broker) = self.handle.broker() {
            broker.stop();
        }
        failure.map_or(Ok(handlers), Err)
    }
}

/// Shuts the whole cluster down when a loop's thread ends, whether its loop returned or
/// panicked: one loop gone must not leave the others serving a partial server forever.
/// (After a graceful shutdown the others are stopping already, and this is a no-op.)
struct StopAllOnExit(Handle);

impl Drop for StopAllOnExit {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}
