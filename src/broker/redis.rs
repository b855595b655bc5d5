//! [`RedisBroker`]: topics across nodes through Redis pub/sub, with the `redis` crate's
//! synchronous API on two threads of its own, so that no loop ever waits for Redis.
//!
//! - **Publishing**: a frame published on this node waits in a bounded queue; the publishing
//!   thread takes whatever has queued up (up to [`BATCH`]) and sends it as one pipeline of
//!   `PUBLISH` commands on its own connection. A full queue refuses the frame, counted.
//! - **Subscribing**: the subscribing thread keeps Redis' subscriptions equal to the topics
//!   this node has subscribers to (`SUBSCRIBE`/`UNSUBSCRIBE` of every change since the last
//!   look, in one command each), reads messages and delivers them with
//!   [`Handle::deliver`], and pings Redis every second so a Redis that hangs is noticed.
//! - **Messages**: on channel `PREFIX + topic`, the payload is `MAGIC`, the sending node's
//!   id (8 bytes), then the frame's opcode and payload. A node skips its own messages: its
//!   subscribers had them at once.
//! - **Trouble**: a thread that loses its connection reconnects with backoff (50 ms,
//!   doubling, at most [`MAX_BACKOFF`]); frames published meanwhile are counted as failures.
//!   The subscribing thread tells the application [`BrokerEvent::Down`], and once it is
//!   connected and subscribed again, [`BrokerEvent::Up`] with `gap: true`.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::{Broker, BrokerEvent, BrokerStats};
use crate::{Frame, Handle, HandleError};

/// Most frames sent in one pipeline.
const BATCH: usize = 256;
/// Longest wait between two attempts to connect.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long the subscribing thread waits for a message before it looks at the topics again:
/// the most a new subscription waits to reach Redis.
const READ_TIMEOUT: Duration = Duration::from_millis(10);
/// How long a command's reply may take (a `SUBSCRIBE`'s, a `PING`'s, a pipeline's) before
/// the connection is taken for lost: a busy or distant Redis is not a dead one.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an idle subscribing connection pings Redis.
const PING_EVERY: Duration = Duration::from_secs(1);
/// How long delivering one message may wait for a loop's full inbox before it is dropped.
const DELIVER_PATIENCE: Duration = Duration::from_secs(1);
/// First byte of every message: a message of another kind on the channel is dropped.
const MAGIC: u8 = b'w';
/// Outgoing frames waiting for the publishing thread, by default.
const QUEUE: usize = 16 * 1024;

/// A [`Broker`] over Redis pub/sub (cargo feature `redis`): every node of a cluster
/// configured with the same Redis and prefix gets the frames the others publish to topics
/// it has subscribers to.
///
/// ```no_run
/// # use wshub::{Config, Ctx, Handler, Reply, Request, Server, RedisBroker};
/// # struct App;
/// # impl Handler for App { type Data = ();
/// #   fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> { Reply::accept(()) } }
/// let broker = RedisBroker::new("redis://127.0.0.1:6379/")?.with_prefix("chat:");
/// let config = Config::default().broker(broker);
/// Server::bind("0.0.0.0:9001", config, App)?.run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RedisBroker {
    link: Link,
    capacity: usize,
    shared: Arc<Shared>,
}

/// Where the threads connect and how they name things.
#[derive(Clone)]
struct Link {
    client: redis::Client,
    prefix: String,
    /// This node's id in every message it sends: random per broker.
    node: u64,
}

/// What the loops and the threads share.
#[derive(Default)]
struct Shared {
    /// The publishing thread's queue, made by `start`.
    queue: OnceLock<SyncSender<(Arc<str>, Frame)>>,
    /// The topics this node has subscribers to, and whether they changed since the
    /// subscribing thread last looked.
    wanted: Mutex<Wanted>,
    stop: AtomicBool,
    /// How many times the subscribing thread lost Redis. The publishing thread drops a
    /// connection made before the latest loss: it may be a dead socket to a Redis that
    /// restarted, which only its next pipeline would find out (losing that batch).
    losses: AtomicU64,
    counters: Counters,
}

#[derive(Default)]
struct Wanted {
    topics: HashSet<Box<str>>,
    changed: bool,
}

#[derive(Default)]
struct Counters {
    publisher_up: AtomicBool,
    subscriber_up: AtomicBool,
    published: AtomicU64,
    publish_failures: AtomicU64,
    queue_overflows: AtomicU64,
    received: AtomicU64,
    receive_drops: AtomicU64,
    reconnects: AtomicU64,
    subscriptions: AtomicUsize,
}

/// Why a [`RedisBroker`] could not be made.
#[derive(Debug)]
pub enum RedisBrokerError {
    /// The URL is not a Redis URL (`redis://[user:password@]host[:port][/db]`).
    InvalidUrl(String),
}

impl fmt::Display for RedisBrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisBrokerError::InvalidUrl(why) => write!(f, "not a usable Redis URL: {why}"),
        }
    }
}

impl std::error::Error for RedisBrokerError {}

impl RedisBroker {
    /// A broker for the Redis at `url` (e.g. `redis://127.0.0.1:6379/`), with the channel
    /// prefix `wshub:`. Nothing connects until the server starts it, and a Redis that is not
    /// there yet is retried: the node serves its own users meanwhile.
    pub fn new(url: &str) -> Result<RedisBroker, RedisBrokerError> {
        let client =
            redis::Client::open(url).map_err(|e| RedisBrokerError::InvalidUrl(e.to_string()))?;
        Ok(RedisBroker {
            link: Link {
                client,
                prefix: "wshub:".to_owned(),
                node: node_id(),
            },
            capacity: QUEUE,
            shared: Arc::default(),
        })
    }

    /// The prefix of every channel name (topic `room` is channel `PREFIX room`): nodes of
    /// one application share it, and other applications on the same Redis use another.
    pub fn with_prefix(mut self, prefix: &str) -> RedisBroker {
        self.link.prefix = prefix.to_owned();
        self
    }

    /// How many published frames may wait for Redis before more are refused (counted in
    /// [`BrokerStats::queue_overflows`]). Default 16,384.
    pub fn with_queue_capacity(mut self, frames: usize) -> RedisBroker {
        self.capacity = frames.max(1);
        self
    }

    /// This node's id, as other nodes see it in messages.
    pub fn node_id(&self) -> u64 {
        self.link.node
    }
}

impl Broker for RedisBroker {
    fn start(&self, node: Handle) {
        let (tx, rx) = sync_channel(self.capacity);
        if self.shared.queue.set(tx).is_err() {
            log::error!("a RedisBroker serves one server: started twice, ignored");
            return;
        }
        let (link, shared) = (self.link.clone(), Arc::clone(&self.shared));
        spawn("wshub-redis-pub", move || publishing(&link, &shared, &rx));
        let (link, shared) = (self.link.clone(), Arc::clone(&self.shared));
        spawn("wshub-redis-sub", move || {
            subscribing(&link, &shared, &node)
        });
    }

    fn publish(&self, topic: &str, frame: &Frame) {
        let counters = &self.shared.counters;
        let queued = self
            .shared
            .queue
            .get()
            .is_some_and(|queue| queue.try_send((topic.into(), frame.clone())).is_ok());
        if !queued {
            let refused = counters.queue_overflows.fetch_add(1, Ordering::Relaxed);
            // The first, then one in 10,000: a stuck Redis must not flood the log.
            if refused % 10_000 == 0 {
                log::warn!(
                    "Redis broker: publishing queue full, frame not sent to other nodes ({} so far)",
                    refused + 1
                );
            }
        }
    }

    fn subscribe(&self, topic: &str) {
        let mut wanted = self.shared.wanted();
        wanted.topics.insert(topic.into());
        wanted.changed = true;
    }

    fn unsubscribe(&self, topic: &str) {
        let mut wanted = self.shared.wanted();
        wanted.topics.remove(topic);
        wanted.changed = true;
    }

    fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
    }

    fn stats(&self) -> BrokerStats {
        let c = &self.shared.counters;
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        BrokerStats {
            connected: c.publisher_up.load(Ordering::Relaxed)
                && c.subscriber_up.load(Ordering::Relaxed),
            published: count(&c.published),
            publish_failures: count(&c.publish_failures),
            queue_overflows: count(&c.queue_overflows),
            received: count(&c.received),
            receive_drops: count(&c.receive_drops),
            reconnects: count(&c.reconnects),
            subscriptions: c.subscriptions.load(Ordering::Relaxed),
        }
    }
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn wanted(&self) -> std::sync::MutexGuard<'_, Wanted> {
        self.wanted.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Link {
    /// A connection whose reads and writes time out after [`REPLY_TIMEOUT`], so that a Redis
    /// that hangs (or a network that drops packets) is noticed rather than waited for.
    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let conn = self.client.get_connection_with_timeout(MAX_BACKOFF)?;
        conn.set_read_timeout(Some(REPLY_TIMEOUT))?;
        conn.set_write_timeout(Some(REPLY_TIMEOUT))?;
        Ok(conn)
    }

    fn channel(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }
}

/// The publishing thread: batches from the queue, one pipeline each.
fn publishing(link: &Link, shared: &Shared, queue: &Receiver<(Arc<str>, Frame)>) {
    let counters = &shared.counters;
    let mut publisher = Publisher {
        link,
        shared,
        conn: None,
        backoff: Backoff::default(),
    };
    let mut batch = Vec::with_capacity(BATCH);
    let mut message = Vec::new();
    while !shared.stopping() {
        publisher.check();
        // Disconnected, look again soon: Redis may be back.
        let wait = if publisher.conn.is_some() { 100 } else { 10 };
        match queue.recv_timeout(Duration::from_millis(wait)) {
            Ok(item) => batch.push(item),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(item) => batch.push(item),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let n = batch.len() as u64;
        publisher.check();
        let Some((c, _)) = publisher.conn.as_mut() else {
            counters.publish_failures.fetch_add(n, Ordering::Relaxed);
            batch.clear();
            continue;
        };
        let mut pipe = redis::pipe();
        for (topic, frame) in batch.drain(..) {
            message.clear();
            message.push(MAGIC);
            message.extend_from_slice(&link.node.to_le_bytes());
            message.extend_from_slice(&frame.to_message());
            pipe.cmd("PUBLISH")
                .arg(link.channel(&topic))
                .arg(&message[..])
                .ignore();
        }
        match pipe.exec(c) {
            Ok(()) => {
                counters.published.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                counters.publish_failures.fetch_add(n, Ordering::Relaxed);
                publisher.lost(&format!("publishing failed: {e}"));
            }
        }
    }
}

/// The publishing thread's connection, and when to try again without one.
struct Publisher<'a> {
    link: &'a Link,
    shared: &'a Shared,
    /// The connection, with the subscribing thread's loss count when it was made.
    conn: Option<(redis::Connection, u64)>,
    backoff: Backoff,
}

impl Publisher<'_> {
    /// Drops a connection older than Redis' latest loss, and connects when due: on the
    /// backoff's schedule, or at once while the subscribing thread is connected (Redis
    /// answers, and frames published after `Up` must not wait out a backoff step).
    fn check(&mut self) {
        let counters = &self.shared.counters;
        let losses = self.shared.losses.load(Ordering::Acquire);
        if self.conn.as_ref().is_some_and(|(_, at)| *at != losses) {
            log::info!("Redis broker: Redis was lost meanwhile; new publishing connection");
            self.conn = None;
            counters.publisher_up.store(false, Ordering::Relaxed);
            self.backoff.reset();
        }
        let redis_answers = counters.subscriber_up.load(Ordering::Relaxed);
        if self.conn.is_some() || !(self.backoff.due() || redis_answers) {
            return;
        }
        match self.link.connect() {
            Ok(c) => {
                if self.backoff.failed_before() {
                    log::info!("Redis broker: publishing connection back");
                }
                self.conn = Some((c, losses));
                self.backoff.reset();
                counters.publisher_up.store(true, Ordering::Relaxed);
            }
            Err(e) => self.backoff.failed(&format!("publishing connection: {e}")),
        }
    }

    fn lost(&mut self, what: &str) {
        self.conn = None;
        self.shared
            .counters
            .publisher_up
            .store(false, Ordering::Relaxed);
        self.backoff.failed(what);
    }
}

/// The subscribing thread: (re)connects, subscribes to every wanted topic, then reads.
fn subscribing(link: &Link, shared: &Shared, node: &Handle) {
    let counters = &shared.counters;
    let mut backoff = Backoff::default();
    let mut was_up = false;
    while !shared.stopping() && !node.is_stopped() {
        if !backoff.due() {
            thread::sleep(Duration::from_millis(10));
            continue;
        }
        let mut conn = match link.connect() {
            Ok(conn) => conn,
            Err(e) => {
                backoff.failed(&format!("subscribing connection: {e}"));
                continue;
            }
        };
        let result = serve(link, shared, node, &mut conn, &mut was_up, &mut backoff);
        let was_connected = counters.subscriber_up.swap(false, Ordering::Relaxed);
        counters.subscriptions.store(0, Ordering::Relaxed);
        if let Err(e) = result {
            // Down once per loss: an attempt that never came up is no news.
            if was_connected {
                shared.losses.fetch_add(1, Ordering::AcqRel);
                let _ = node.broker_event(BrokerEvent::Down);
            }
            backoff.failed(&format!("subscribing connection lost: {e}"));
        }
    }
}

/// Serves one subscribing connection until it fails (`Err`) or the broker stops (`Ok`).
fn serve(
    link: &Link,
    shared: &Shared,
    node: &Handle,
    conn: &mut redis::Connection,
    was_up: &mut bool,
    backoff: &mut Backoff,
) -> redis::RedisResult<()> {
    let counters = &shared.counters;
    let mut pubsub = conn.as_pubsub();
    let mut subscribed = HashSet::new();
    shared.wanted().changed = true;
    if let Some(changes) = take_changes(shared, &subscribed) {
        apply_changes(link, shared, &mut pubsub, &mut subscribed, changes)?;
    }
    counters.subscriber_up.store(true, Ordering::Relaxed);
    if *was_up {
        counters.reconnects.fetch_add(1, Ordering::Relaxed);
        log::info!(
            "Redis broker: back, {} topics subscribed again",
            subscribed.len()
        );
    }
    let _ = node.broker_event(BrokerEvent::Up { gap: *was_up });
    *was_up = true;
    backoff.reset();
    let mut pinged = Instant::now();
    let mut short_wait = false;
    loop {
        if shared.stopping() || node.is_stopped() {
            return Ok(());
        }
        // The wait for messages is short, so the topics are looked at often; a command's
        // reply gets REPLY_TIMEOUT. (Switched only when needed: a setsockopt each.)
        let ping_due = pinged.elapsed() >= PING_EVERY;
        let changes = take_changes(shared, &subscribed);
        if short_wait && (ping_due || changes.is_some()) {
            pubsub.set_read_timeout(Some(REPLY_TIMEOUT))?;
            short_wait = false;
        }
        if let Some(changes) = changes {
            apply_changes(link, shared, &mut pubsub, &mut subscribed, changes)?;
        }
        if ping_due {
            pubsub.ping::<redis::Value>()?;
            pinged = Instant::now();
        }
        if !short_wait {
            pubsub.set_read_timeout(Some(READ_TIMEOUT))?;
            short_wait = true;
        }
        match pubsub.get_message() {
            Ok(msg) => deliver(link, shared, node, &msg),
            Err(e) if e.is_timeout() => {}
            Err(e) => return Err(e),
        }
    }
}

/// Topics to subscribe to and to unsubscribe from, if the wanted ones changed since the
/// last look.
type Changes = (Vec<Box<str>>, Vec<Box<str>>);

fn take_changes(shared: &Shared, subscribed: &HashSet<Box<str>>) -> Option<Changes> {
    let mut wanted = shared.wanted();
    if !wanted.changed {
        return None;
    }
    wanted.changed = false;
    let add = wanted.topics.difference(subscribed).cloned().collect();
    let remove = subscribed.difference(&wanted.topics).cloned().collect();
    Some((add, remove))
}

/// Makes Redis' subscriptions follow `changes`: one `SUBSCRIBE` for all the new topics and
/// one `UNSUBSCRIBE` for all the gone ones.
fn apply_changes(
    link: &Link,
    shared: &Shared,
    pubsub: &mut redis::PubSub<'_>,
    subscribed: &mut HashSet<Box<str>>,
    (add, remove): Changes,
) -> redis::RedisResult<()> {
    let channels =
        |topics: &[Box<str>]| -> Vec<String> { topics.iter().map(|t| link.channel(t)).collect() };
    // An empty UNSUBSCRIBE would drop every subscription.
    if !add.is_empty() {
        pubsub.subscribe(channels(&add))?;
        subscribed.extend(add);
    }
    if !remove.is_empty() {
        pubsub.unsubscribe(channels(&remove))?;
        for topic in &remove {
            subscribed.remove(topic);
        }
    }
    shared
        .counters
        .subscriptions
        .store(subscribed.len(), Ordering::Relaxed);
    Ok(())
}

/// Hands a message from another node to this node's loops.
fn deliver(link: &Link, shared: &Shared, node: &Handle, msg: &redis::Msg) {
    let counters = &shared.counters;
    let topic = msg.get_channel_name().strip_prefix(link.prefix.as_str());
    let payload = msg.get_payload_bytes();
    let parsed = match (topic, payload.split_first()) {
        (Some(topic), Some((&MAGIC, rest))) if rest.len() >= 8 => {
            let (sender, message) = rest.split_at(8);
            if sender == link.node.to_le_bytes() {
                return; // our own: delivered here when it was published
            }
            Frame::from_message(message).map(|frame| (topic, frame))
        }
        _ => None,
    };
    let Some((topic, frame)) = parsed else {
        counters.receive_drops.fetch_add(1, Ordering::Relaxed);
        log::debug!(
            "Redis broker: a message on {} that is not a wshub frame",
            msg.get_channel_name()
        );
        return;
    };
    let deadline = Instant::now() + DELIVER_PATIENCE;
    loop {
        match node.deliver(topic, &frame) {
            Ok(()) => {
                counters.received.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // A busy loop: this thread may wait for it (Redis buffers meanwhile); a loop
            // never waits for this thread.
            Err(HandleError::Full) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(1));
            }
            Err(_) => {
                counters.receive_drops.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// When to try connecting again: 50 ms after the first failure, doubling, at most
/// [`MAX_BACKOFF`].
#[derive(Default)]
struct Backoff {
    wait: Duration,
    next: Option<Instant>,
}

impl Backoff {
    fn due(&self) -> bool {
        self.next.is_none_or(|at| Instant::now() >= at)
    }

    fn failed_before(&self) -> bool {
        self.next.is_some()
    }

    fn failed(&mut self, what: &str) {
        if self.next.is_none() {
            log::warn!("Redis broker: {what}; retrying");
        }
        self.wait = (self.wait * 2).clamp(Duration::from_millis(50), MAX_BACKOFF);
        self.next = Some(Instant::now() + self.wait);
    }

    fn reset(&mut self) {
        *self = Backoff::default();
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = thread::Builder::new().name(name.to_owned()).spawn(f) {
        log::error!("Redis broker: cannot start thread {name}: {e}");
    }
}

/// A random id for this node: std's per-process random hash keys, mixed with the time.
fn node_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}
