//! [`Handle`]: the server, reachable from other threads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use mio::Waker;

use crate::{ConnId, Frame, HandleError, Stats};

/// A command from another thread.
pub(crate) enum Command {
    Send(ConnId, Frame),
    Broadcast(Frame),
    Publish(Box<str>, Frame),
    Close(ConnId, u16, String),
    #[cfg(feature = "tls")]
    SetTls(crate::TlsConfig),
    Shutdown,
}

/// Sends commands to a running server from any thread: `Clone + Send + Sync`.
///
/// Commands travel through a bounded channel (see
/// [`Config::handle_capacity`](crate::Config::handle_capacity)) and wake the server's poll
/// through a [`mio::Waker`](https://docs.rs/mio/1/mio/struct.Waker.html): each arrives in
/// the server's loop as one more event. A full channel reports [`HandleError::Full`] at
/// once: a handle never blocks, and never makes the server's loop wait. Frames go through
/// the same backpressure policy as sends from callbacks; since the caller cannot be told
/// per recipient, refused ones are counted in [`Stats::dropped_messages`].
///
/// ```no_run
/// # use wshub::{Config, Ctx, Handler, Reply, Request, Server, Frame};
/// # struct App;
/// # impl Handler for App { type Data = ();
/// #   fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> { Reply::accept(()) } }
/// let mut server = Server::bind("127.0.0.1:9001", Config::default(), App)?;
/// let handle = server.handle();
/// std::thread::spawn(move || {
///     let _ = handle.broadcast(&Frame::text("tick"));
///     let _ = handle.shutdown();
/// });
/// server.run()?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct Handle {
    tx: SyncSender<Command>,
    waker: Arc<Waker>,
    stats: Arc<Mutex<Stats>>,
    /// Set when `run()` / `poll_once` has finished for good: commands would never be read.
    stopped: Arc<AtomicBool>,
}

/// The server's end of its handles.
pub(crate) struct Commands {
    pub(crate) rx: Receiver<Command>,
    pub(crate) stats: Arc<Mutex<Stats>>,
    pub(crate) stopped: Arc<AtomicBool>,
    /// Kept so `Server::handle` can make more handles.
    pub(crate) handle: Handle,
}

pub(crate) fn channel(capacity: usize, waker: Waker) -> Commands {
    let (tx, rx) = sync_channel(capacity);
    let stats = Arc::new(Mutex::new(Stats::default()));
    let stopped = Arc::new(AtomicBool::new(false));
    let handle = Handle {
        tx,
        waker: Arc::new(waker),
        stats: Arc::clone(&stats),
        stopped: Arc::clone(&stopped),
    };
    Commands {
        rx,
        stats,
        stopped,
        handle,
    }
}

impl Handle {
    /// Queues `frame` for one connection, as [`Ctx::send`](crate::Ctx::send).
    pub fn send(&self, id: ConnId, frame: &Frame) -> Result<(), HandleError> {
        self.command(Command::Send(id, frame.clone()))
    }

    /// Queues `frame` for every open connection, as [`Ctx::broadcast`](crate::Ctx::broadcast).
    pub fn broadcast(&self, frame: &Frame) -> Result<(), HandleError> {
        self.command(Command::Broadcast(frame.clone()))
    }

    /// Queues `frame` for every subscriber of `topic`, as
    /// [`Ctx::publish`](crate::Ctx::publish).
    pub fn publish(&self, topic: &str, frame: &Frame) -> Result<(), HandleError> {
        self.command(Command::Publish(topic.into(), frame.clone()))
    }

    /// Starts the close handshake with a connection, as [`Ctx::close`](crate::Ctx::close).
    pub fn close(&self, id: ConnId, code: u16, reason: &str) -> Result<(), HandleError> {
        if !crate::frame::sendable_close_code(code) {
            return Err(HandleError::InvalidCloseCode);
        }
        self.command(Command::Close(id, code, reason.to_owned()))
    }

    /// Starts a graceful shutdown: the server stops accepting, sends close 1001 to every
    /// connection, waits up to [`Config::shutdown_timeout`](crate::Config::shutdown_timeout)
    /// for their replies, and then [`Server::run`](crate::Server::run) returns.
    ///
    /// On Ctrl-C and SIGTERM, with the `signal-hook` crate: a thread sleeps until a signal
    /// comes and passes it on as a shutdown (signal handlers themselves may do almost
    /// nothing, so the handle is called from the thread, not from the handler).
    ///
    /// ```no_run
    /// # use wshub::{Config, Ctx, Handler, Reply, Request, Server};
    /// # struct App;
    /// # impl Handler for App { type Data = ();
    /// #   fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> { Reply::accept(()) } }
    /// use signal_hook::consts::{SIGINT, SIGTERM};
    ///
    /// let mut server = Server::bind("127.0.0.1:9001", Config::default(), App)?;
    /// let handle = server.handle();
    /// let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    /// std::thread::spawn(move || {
    ///     for _ in signals.forever() {
    ///         let _ = handle.shutdown();
    ///     }
    /// });
    /// server.run()?; // returns once every connection is closed
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn shutdown(&self) -> Result<(), HandleError> {
        self.command(Command::Shutdown)
    }

    /// Replaces the certificates of a TLS server: connections accepted from the next loop
    /// turn on get `tls`; open connections keep theirs and stay up. (A certificate renewal:
    /// load the new files, then call this; the chat does it on SIGHUP.) On a plain server it
    /// does nothing. Cargo feature `tls`.
    #[cfg(feature = "tls")]
    pub fn set_tls(&self, tls: crate::TlsConfig) -> Result<(), HandleError> {
        self.command(Command::SetTls(tls))
    }

    /// The server's counters as of its last loop turn.
    pub fn stats(&self) -> Stats {
        match self.stats.lock() {
            Ok(stats) => *stats,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    fn command(&self, command: Command) -> Result<(), HandleError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(HandleError::Stopped);
        }
        match self.tx.try_send(command) {
            Ok(()) => self.waker.wake().map_err(|_| HandleError::Stopped),
            Err(TrySendError::Full(_)) => Err(HandleError::Full),
            Err(TrySendError::Disconnected(_)) => Err(HandleError::Stopped),
        }
    }
}
