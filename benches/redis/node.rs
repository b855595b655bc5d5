//! The nodes under test: wshub servers in this process, each on a thread of its own (pinned
//! if asked, before the server is built, so the broker's two threads, which the server
//! starts, inherit the CPU), with the rooms handler of examples/broadcast.rs: `?room=NAME`
//! subscribes the connection to topic NAME, and a text message is published to the
//! sender's room, the sender included. With a Redis URL the node has a `RedisBroker`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wshub::{
    BrokerEvent, BrokerStats, Config, ConnId, Ctx, Frame, Handle, Handler, Message, RedisBroker,
    Reply, Request, Server,
};

use crate::sys::{self, Clock};

/// What a node's `on_broker` saw, with the bench clock's time.
pub type Events = Arc<Mutex<Vec<(u64, BrokerEvent)>>>;

/// How long a node may take to bind and start.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's room, if it asked for one.
type Room = Option<Arc<str>>;

/// The rooms handler of examples/broadcast.rs (topics; no `--filter`), plus a record of
/// the broker's events.
struct Rooms {
    events: Events,
    clock: Clock,
}

impl Handler for Rooms {
    type Data = Room;

    fn on_request(&mut self, _: &mut Ctx<'_, Room>, req: &Request<'_>) -> Reply<Room> {
        Reply::accept(req.query_param("room").map(Arc::from))
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_, Room>, id: ConnId) {
        if let Some(room) = ctx.data(id).cloned().flatten() {
            let _ = ctx.subscribe(id, &room);
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, Room>, from: ConnId, msg: Message) {
        let Message::Text(text) = msg else {
            return;
        };
        let frame = Frame::text(&text);
        match ctx.data(from).cloned().flatten() {
            Some(room) => {
                ctx.publish(&room, &frame);
            }
            None => {
                ctx.broadcast(&frame);
            }
        }
    }

    fn on_broker(&mut self, _: &mut Ctx<'_, Room>, event: BrokerEvent) {
        let at = self.clock.now_ns();
        lock(&self.events).push((at, event));
    }
}

/// One running node.
pub struct Node {
    pub index: usize,
    pub addr: SocketAddr,
    pub handle: Handle,
    events: Events,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Node {
    /// Starts node `index` on a free loopback port: with a `RedisBroker` on `redis` (URL and
    /// channel prefix) if given, its thread pinned to `cpu` if given.
    pub fn start(
        index: usize,
        redis: Option<(&str, &str)>,
        cpu: Option<usize>,
        clock: Clock,
    ) -> Result<Node, String> {
        let broker = match redis {
            Some((url, prefix)) => Some(
                RedisBroker::new(url)
                    .map_err(|e| format!("node {index}: {e}"))?
                    .with_prefix(prefix),
            ),
            None => None,
        };
        let events = Events::default();
        let (tx, rx) = mpsc::channel();
        let handler = Rooms {
            events: Arc::clone(&events),
            clock,
        };
        let thread = std::thread::Builder::new()
            .name(format!("node-{index}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    if let Err(e) = sys::pin_self_to_cpu(cpu) {
                        let _ = tx.send(Err(format!("cannot pin to CPU {cpu}: {e}")));
                        return Ok(());
                    }
                }
                let mut config = Config::default().max_connections(20_000);
                if let Some(broker) = broker {
                    config = config.broker(broker);
                }
                match Server::bind("127.0.0.1:0", config, handler) {
                    Ok(mut server) => {
                        let _ = tx.send(Ok((server.local_addr(), server.handle())));
                        server.run()
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("cannot bind: {e}")));
                        Ok(())
                    }
                }
            })
            .map_err(|e| format!("node {index}: cannot spawn its thread: {e}"))?;
        let (addr, handle) = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok((Some(addr), handle))) => (addr, handle),
            Ok(Ok((None, _))) => return Err(format!("node {index}: no local address")),
            Ok(Err(e)) => return Err(format!("node {index}: {e}")),
            Err(e) => return Err(format!("node {index} did not start: {e}")),
        };
        Ok(Node {
            index,
            addr,
            handle,
            events,
            thread: Some(thread),
        })
    }

    pub fn broker_stats(&self) -> Option<BrokerStats> {
        self.handle.broker_stats()
    }

    /// Everything `on_broker` saw so far.
    pub fn events(&self) -> Vec<(u64, BrokerEvent)> {
        lock(&self.events).clone()
    }

    /// Starts the graceful shutdown (the clients answer the close frames meanwhile).
    pub fn shutdown(&self) {
        let _ = self.handle.shutdown();
    }

    /// Waits up to `timeout` for `run` to return; how long it took from `since`.
    pub fn join(&mut self, since: Instant, timeout: Duration) -> Result<Duration, String> {
        let deadline = since + timeout;
        let Some(thread) = self.thread.take() else {
            return Err(format!("node {} joined twice", self.index));
        };
        while !thread.is_finished() {
            if Instant::now() > deadline {
                self.thread = Some(thread);
                return Err(format!(
                    "node {} did not stop within {timeout:?} of its shutdown",
                    self.index
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = since.elapsed();
        match thread.join() {
            Ok(Ok(())) => Ok(took),
            Ok(Err(e)) => Err(format!("node {}: Server::run failed: {e}", self.index)),
            Err(_) => Err(format!("node {}: its thread panicked", self.index)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts `n` nodes; all with a broker on `redis` (URL) if given.
pub fn start_nodes(
    n: usize,
    redis: Option<&str>,
    prefix: &str,
    cpu: Option<usize>,
    clock: Clock,
) -> Result<Vec<Node>, String> {
    (0..n)
        .map(|i| Node::start(i, redis.map(|url| (url, prefix)), cpu, clock))
        .collect()
}

/// Waits until every node's broker is connected and subscribed to `rooms[i]` topics (what
/// its clients joined), at most `timeout`.
pub fn wait_subscribed(nodes: &[Node], rooms: &[usize], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let pending: Vec<String> = nodes
            .iter()
            .zip(rooms)
            .filter_map(|(node, &want)| {
                let stats = node.broker_stats()?;
                (!stats.connected || stats.subscriptions != want).then(|| {
                    format!(
                        "node {}: connected {}, {} of {want} topics subscribed",
                        node.index, stats.connected, stats.subscriptions
                    )
                })
            })
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "brokers not ready within {timeout:?}: {}",
                pending.join("; ")
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
