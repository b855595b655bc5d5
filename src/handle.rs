//! [`Handle`]: the server, reachable from other threads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use mio::Waker;

use crate::broker::{Broker, BrokerEvent, BrokerStats};
use crate::topic_loops::TopicLoops;
use crate::{ConnId, Frame, HandleError, Stats};

/// A command from another thread: a [`Handle`], or another loop of a
/// [`Cluster`](crate::Cluster). A loop acts on it for its own connections only; nothing that
/// arrives in an inbox is forwarded again.
pub(crate) enum Command {
    Send(ConnId, Frame),
    Broadcast(Frame),
    Publish(Arc<str>, Frame),
    Close(ConnId, u16, String),
    #[cfg(feature = "tls")]
    SetTls(crate::TlsConfig),
    Broker(BrokerEvent),
    Shutdown,
}

/// Sends commands to a running server from any thread: `Clone + Send + Sync`.
///
/// Commands travel through a bounded channel per loop (see
/// [`Config::handle_capacity`](crate::Config::handle_capacity)) and wake the loop's poll
/// through a [`mio::Waker`](https://docs.rs/mio/1/mio/struct.Waker.html), once per burst: a
/// loop that has not yet started reading its inbox since the last wake-up is not woken
/// again. A full channel reports [`HandleError::Full`] at once: a handle never blocks, and
/// never makes the server's loop wait. Frames go through the same backpressure policy as
/// sends from callbacks; since the caller cannot be told per recipient, refused ones are
/// counted in [`Stats::dropped_messages`].
///
/// A handle of a [`Cluster`](crate::Cluster) addresses all its loops: `send` and `close`
/// go to the loop the connection is on, `broadcast` and `shutdown` to every loop, `publish`
/// to the loops that have subscribers to the topic, and [`stats`](Handle::stats) sums
/// them.
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
    /// Every loop's inbox, in loop order (one for a [`Server`](crate::Server)).
    loops: Arc<[Arc<Inbox>]>,
    /// Which loops have subscribers to which topic (none with one loop and no broker).
    topic_loops: Option<Arc<TopicLoops>>,
    /// The other nodes ([`Config::broker`](crate::Config::broker)).
    broker: Option<Arc<dyn Broker>>,
}

/// A loop's end of the channel, as the senders share it.
pub(crate) struct Inbox {
    tx: SyncSender<Command>,
    waker: Waker,
    /// A wake-up is on its way and the loop has not started reading the inbox since:
    /// senders need not wake it again (one eventfd write per burst, not per command).
    woken: AtomicBool,
    /// The loop's counters as of its last turn.
    stats: Mutex<Stats>,
    /// Set when the loop has finished for good: commands would never be read.
    stopped: AtomicBool,
}

/// A loop's own end of its inbox.
pub(crate) struct Commands {
    rx: Receiver<Command>,
    inbox: Arc<Inbox>,
    /// Kept so `Server::handle` can make more handles.
    pub(crate) handle: Handle,
}

pub(crate) fn channel(capacity: usize, waker: Waker) -> Commands {
    let (tx, rx) = sync_channel(capacity);
    let inbox = Arc::new(Inbox {
        tx,
        waker,
        woken: AtomicBool::new(false),
        stats: Mutex::new(Stats::default()),
        stopped: AtomicBool::new(false),
    });
    Commands {
        rx,
        handle: Handle {
            loops: Arc::new([Arc::clone(&inbox)]),
            topic_loops: None,
            broker: None,
        },
        inbox,
    }
}

impl Commands {
    /// Called before the loop reads its inbox: a command sent from now on wakes it again.
    pub(crate) fn rearm(&self) {
        // AcqRel: the sender's swap that set the flag released its command; reading the
        // flag here acquires it, so the `try_recv`s that follow see that command.
        self.inbox.woken.swap(false, Ordering::AcqRel);
    }

    pub(crate) fn try_recv(&self) -> Option<Command> {
        self.rx.try_recv().ok()
    }

    pub(crate) fn publish_stats(&self, stats: Stats) {
        match self.inbox.stats.lock() {
            Ok(mut shared) => *shared = stats,
            Err(poisoned) => *poisoned.into_inner() = stats,
        }
    }

    pub(crate) fn stop(&self) {
        self.inbox.stopped.store(true, Ordering::Release);
    }

    pub(crate) fn inbox(&self) -> &Arc<Inbox> {
        &self.inbox
    }
}

impl Inbox {
    /// Queues `command` and wakes the loop if no wake-up is on its way yet.
    pub(crate) fn command(&self, command: Command) -> Result<(), HandleError> {
        if self.queue(command)? {
            self.wake()?;
        }
        Ok(())
    }

    /// Queues `command` without waking the loop; `Ok(true)` when the caller owes it the
    /// wake-up ([`Inbox::wake`]): no other is on its way. Another loop queues this way
    /// during its turn and wakes once at the end of it, so this loop finds the whole turn's
    /// commands at once (waking at the first let the scheduler switch to this loop for one
    /// frame, and halved the frames per write of a broadcast across loops).
    pub(crate) fn queue(&self, command: Command) -> Result<bool, HandleError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(HandleError::Stopped);
        }
        match self.tx.try_send(command) {
            Ok(()) => Ok(!self.woken.swap(true, Ordering::AcqRel)),
            Err(TrySendError::Full(_)) => Err(HandleError::Full),
            Err(TrySendError::Disconnected(_)) => Err(HandleError::Stopped),
        }
    }

    pub(crate) fn wake(&self) -> Result<(), HandleError> {
        self.waker.wake().map_err(|_| HandleError::Stopped)
    }

    fn stats(&self) -> Stats {
        match self.stats.lock() {
            Ok(stats) => *stats,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }
}

impl Handle {
    /// Queues `frame` for one connection, as [`Ctx::send`](crate::Ctx::send).
    pub fn send(&self, id: ConnId, frame: &Frame) -> Result<(), HandleError> {
        self.inbox(self.loop_of(id))
            .command(Command::Send(id, frame.clone()))
    }

    /// Queues `frame` for every open connection, as [`Ctx::broadcast`](crate::Ctx::broadcast).
    /// With several loops, an error means at least one loop refused it (its connections
    /// miss the frame); the others have it.
    pub fn broadcast(&self, frame: &Frame) -> Result<(), HandleError> {
        self.to_loops(u64::MAX, || Command::Broadcast(frame.clone()))
    }

    /// Queues `frame` for every subscriber of `topic`, as
    /// [`Ctx::publish`](crate::Ctx::publish).
    /// With several loops it goes only to the loops that have subscribers to `topic`, and
    /// an error means at least one of them refused it.
    /// With a [`Broker`], the frame also goes to the other nodes.
    pub fn publish(&self, topic: &str, frame: &Frame) -> Result<(), HandleError> {
        if let Some(broker) = &self.broker {
            broker.publish(topic, frame);
        }
        self.deliver(topic, frame)
    }

    /// Queues `frame` for every subscriber of `topic` on this node only, not handing it to
    /// the [`Broker`]: how a broker delivers what another node published.
    pub fn deliver(&self, topic: &str, frame: &Frame) -> Result<(), HandleError> {
        let topic: Arc<str> = topic.into();
        self.to_loops(self.loops_with(&topic), || {
            Command::Publish(Arc::clone(&topic), frame.clone())
        })
    }

    /// Starts the close handshake with a connection, as [`Ctx::close`](crate::Ctx::close).
    pub fn close(&self, id: ConnId, code: u16, reason: &str) -> Result<(), HandleError> {
        if !crate::frame::sendable_close_code(code) {
            return Err(HandleError::InvalidCloseCode);
        }
        self.inbox(self.loop_of(id))
            .command(Command::Close(id, code, reason.to_owned()))
    }

    /// Starts a graceful shutdown: the server stops accepting, sends close 1001 to every
    /// connection, waits up to [`Config::shutdown_timeout`](crate::Config::shutdown_timeout)
    /// for their replies, and then [`Server::run`](crate::Server::run) returns. A
    /// [`Cluster`](crate::Cluster) does this on every loop.
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
        self.to_loops(u64::MAX, || Command::Shutdown)
    }

    /// Replaces the certificates of a TLS server: connections accepted from the next loop
    /// turn on get `tls`; open connections keep theirs and stay up. (A certificate renewal:
    /// load the new files, then call this; the chat does it on SIGHUP.) On a plain server it
    /// does nothing. Cargo feature `tls`.
    #[cfg(feature = "tls")]
    pub fn set_tls(&self, tls: crate::TlsConfig) -> Result<(), HandleError> {
        self.to_loops(u64::MAX, || Command::SetTls(tls.clone()))
    }

    /// The server's counters as of its last loop turn: for a [`Cluster`](crate::Cluster),
    /// the sum over its loops.
    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for inbox in self.loops.iter() {
            total += inbox.stats();
        }
        total
    }

    /// Each loop's counters as of its last turn, in loop order (one entry for a
    /// [`Server`](crate::Server)).
    pub fn loop_stats(&self) -> Vec<Stats> {
        self.loops.iter().map(|inbox| inbox.stats()).collect()
    }

    /// How many loops the server runs: 1 for a [`Server`](crate::Server).
    pub fn loops(&self) -> usize {
        self.loops.len()
    }

    /// The loop a connection is on (0 for a [`Server`](crate::Server)).
    pub fn loop_of(&self, id: ConnId) -> usize {
        id.generation() as usize % self.loops.len()
    }

    /// Tells the application on every loop what the [`Broker`] is going through
    /// ([`Handler::on_broker`](crate::Handler::on_broker)).
    pub fn broker_event(&self, event: BrokerEvent) -> Result<(), HandleError> {
        self.to_loops(u64::MAX, || Command::Broker(event))
    }

    /// The [`Broker`]'s counters, if the server has one.
    pub fn broker_stats(&self) -> Option<BrokerStats> {
        self.broker.as_ref().map(|broker| broker.stats())
    }

    pub(crate) fn new(
        loops: Vec<Arc<Inbox>>,
        topic_loops: Option<Arc<TopicLoops>>,
        broker: Option<Arc<dyn Broker>>,
    ) -> Handle {
        Handle {
            loops: loops.into(),
            topic_loops,
            broker,
        }
    }

    pub(crate) fn broker(&self) -> Option<&Arc<dyn Broker>> {
        self.broker.as_ref()
    }

    /// Whether every loop has stopped for good.
    #[cfg(feature = "redis")]
    pub(crate) fn is_stopped(&self) -> bool {
        self.loops
            .iter()
            .all(|inbox| inbox.stopped.load(Ordering::Acquire))
    }

    pub(crate) fn inbox(&self, index: usize) -> &Inbox {
        &self.loops[index]
    }

    pub(crate) fn topic_loops(&self) -> Option<&TopicLoops> {
        self.topic_loops.as_deref()
    }

    /// The loops that have subscribers to `topic` (every loop when that is not tracked).
    pub(crate) fn loops_with(&self, topic: &str) -> u64 {
        match &self.topic_loops {
            Some(topic_loops) => topic_loops.loops(topic),
            None => u64::MAX,
        }
    }

    /// Sends one command to every loop in `mask`; the first error, if any, after trying
    /// them all.
    fn to_loops(&self, mask: u64, command: impl Fn() -> Command) -> Result<(), HandleError> {
        let mut result = Ok(());
        for (index, inbox) in self.loops.iter().enumerate() {
            if mask & (1 << index) != 0 {
                if let Err(e) = inbox.command(command()) {
                    result = result.and(Err(e));
                }
            }
        }
        result
    }
}
