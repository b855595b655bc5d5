//! The failure run: two nodes over Redis at a fixed rate; a thread of its own kills Redis
//! (SIGKILL), waits, and starts it again on the same port, while the clients go on. Then:
//! local deliveries must never stop or miss anything; cross-node deliveries may be lost
//! only for messages sent during the outage (from the kill to the first cross-node delivery
//! after the restart, with a margin); each direction must resume within 2 s of Redis
//! answering again; each node's `on_broker` must have seen `Down` and then
//! `Up { gap: true }`; both nodes must shut down cleanly, their threads and sockets gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wshub::{BrokerEvent, BrokerStats};

use crate::Env;
use crate::clients::{self, Layout, Pacing, Plan, Pool, Summary};
use crate::host::{self, CpuSnapshot, CpuUse};
use crate::node::{self, Node};
use crate::redis_server::Redis;

/// The target: cross-node delivery back within this long after Redis is.
pub const RESUME_TARGET: Duration = Duration::from_secs(2);
/// Lost messages may have been sent this long before the kill (in flight) or after the
/// direction resumed (published out of send order).
const MARGIN_NS: u64 = 100_000_000;
/// How long the nodes may take to shut down, and their threads to end.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Buckets of the delivery timeline.
const BUCKET_NS: u64 = 250_000_000;

#[derive(Clone, Copy)]
pub struct Timing {
    /// Running normally before the kill.
    pub before_kill: Duration,
    /// From the kill to the restart.
    pub outage: Duration,
    /// Running after the restart.
    pub after: Duration,
}

/// When things happened, on the bench clock (ns).
#[derive(Default)]
struct Marks {
    kill: AtomicU64,
    killed: AtomicU64,
    restart_begin: AtomicU64,
    restart: AtomicU64,
}

pub struct NodeOutcome {
    pub events: Vec<(u64, BrokerEvent)>,
    pub stats_before: BrokerStats,
    pub stats_after: BrokerStats,
    /// Deliveries to this node's clients between the kill and the restart [local, cross].
    pub in_outage: [u64; 2],
    /// The first cross-node delivery to this node's clients after the restart.
    pub resumed_ns: Option<u64>,
    pub shutdown: Result<Duration, String>,
}

/// Cross-node deliveries lost in one direction.
pub struct DirectionLoss {
    pub from: u8,
    pub to: u8,
    pub lost: u64,
    /// Send times of the first and last lost message.
    pub span: Option<(u64, u64)>,
    /// Send time of the first message of this direction delivered after the kill.
    pub resumed_sent_ns: Option<u64>,
    /// When the sending node's `on_broker` saw `Up { gap: true }`.
    pub sender_up_ns: Option<u64>,
    /// Of `lost`, those sent after that: the node said it was back, but its frames were
    /// still lost.
    pub lost_after_up: u64,
    /// The last of those, sent this long after the `Up`.
    pub lost_after_up_for: Option<u64>,
}

pub struct FailureResult {
    pub layout: Layout,
    pub rate: f64,
    pub timing: Timing,
    pub kill_ns: u64,
    pub killed_ns: u64,
    pub restart_begin_ns: u64,
    pub restart_ns: u64,
    pub sent: u64,
    /// Deliveries [local, cross-node], and their latency.
    pub delivered: [u64; 2],
    pub latency: [Summary; 2],
    pub nodes: Vec<NodeOutcome>,
    pub directions: Vec<DirectionLoss>,
    /// (ms from the kill, local, cross-node) deliveries per bucket.
    pub timeline: Vec<(i64, u64, u64)>,
    /// Latency of local deliveries received before the kill and during the outage.
    pub local_latency: [Summary; 2],
    /// Threads: before the nodes, while they ran, after they stopped.
    pub threads: [usize; 3],
    pub descriptors: [usize; 3],
    /// RSS: before the nodes, steady before the kill, after the recovery, after the stop.
    pub rss: [u64; 4],
    /// Heap in use, at the same moments.
    pub heap: [u64; 4],
    pub closed: usize,
    pub cpu: CpuUse,
    pub load: [String; 2],
    /// Hard checks that failed.
    pub failures: Vec<String>,
}

pub fn run(env: &Env, layout: Layout, rate: f64, timing: Timing) -> Result<FailureResult, String> {
    let clock = env.clock;
    // The previous runs' broker threads and their sockets end on their own, soon after
    // their node: wait for them, so they are not taken for this run's.
    let threads0 = host::settle_to(1, SETTLE_TIMEOUT, host::threads);
    let fds0 = host::settle_to(env.descriptors, SETTLE_TIMEOUT, host::descriptors);
    let rss0 = host::rss(env.trim);
    let heap0 = host::heap_in_use();
    let load0 = host::loadavg();
    let redis = Redis::start();
    let port = redis.port;
    let mut nodes = node::start_nodes(
        layout.nodes,
        Some(&redis.url()),
        "fail:",
        env.node_cpu,
        clock,
    )?;
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let mut pool = Pool::connect(layout, &addrs, clock)?;
    let rooms: Vec<usize> = (0..layout.nodes).map(|n| layout.rooms_on(n)).collect();
    node::wait_subscribed(&nodes, &rooms, Duration::from_secs(10))?;
    pool.run(&Plan {
        pacing: Pacing::Rate { per_sec: rate },
        duration: env.warmup,
        drain: Duration::from_secs(5),
        lossy: false,
    })
    .map_err(|e| format!("warm-up: {e}"))?;
    let threads_running = host::threads();
    let fds_running = host::descriptors();
    let rss_steady = host::rss(env.trim);
    let heap_steady = host::heap_in_use();
    let stats_before: Vec<BrokerStats> = nodes.iter().map(stats_of).collect();

    let marks = Arc::new(Marks::default());
    let t0 = Instant::now();
    let chaos = {
        let marks = Arc::clone(&marks);
        let mut redis = redis;
        std::thread::Builder::new()
            .name("chaos".into())
            .spawn(move || {
                sleep_until(t0 + timing.before_kill);
                marks.kill.store(clock.now_ns(), Ordering::Release);
                let kill = Instant::now();
                redis.kill9();
                marks.killed.store(clock.now_ns(), Ordering::Release);
                log::info!("bench: Redis killed");
                sleep_until(kill + timing.outage);
                marks.restart_begin.store(clock.now_ns(), Ordering::Release);
                let redis = Redis::start_on(port);
                marks.restart.store(clock.now_ns(), Ordering::Release);
                log::info!("bench: Redis answering again");
                redis
            })
            .map_err(|e| format!("cannot spawn the chaos thread: {e}"))?
    };
    let cpu0 = CpuSnapshot::take();
    let result = pool.run(&Plan {
        pacing: Pacing::Rate { per_sec: rate },
        duration: timing.before_kill + timing.outage + timing.after,
        drain: Duration::from_secs(3),
        lossy: true,
    });
    let cpu = CpuSnapshot::take().since(&cpu0);
    // Joined before any error returns: it holds the Redis to kill on drop.
    let redis = chaos
        .join()
        .map_err(|_| format!("could not restart Redis on port {port}"))?;
    let mut stats = result?;
    let load1 = host::loadavg();
    let get = |mark: &AtomicU64| mark.load(Ordering::Acquire);
    let (kill_ns, killed_ns) = (get(&marks.kill), get(&marks.killed));
    let (restart_begin_ns, restart_ns) = (get(&marks.restart_begin), get(&marks.restart));
    let stats_after: Vec<BrokerStats> = nodes.iter().map(stats_of).collect();
    let events: Vec<_> = nodes.iter().map(Node::events).collect();

    // What the delivery log says; then the log goes, so the RSS after the stop shows the
    // nodes' memory, not the bench's.
    let log = std::mem::take(&mut stats.log);
    let lost = std::mem::take(&mut stats.lost);
    let mut outcomes = Vec::new();
    for (n, (events, (before, after))) in events
        .into_iter()
        .zip(stats_before.into_iter().zip(stats_after))
        .enumerate()
    {
        let to = n as u8;
        let mut in_outage = [0u64; 2];
        for d in log
            .iter()
            .filter(|d| d.to == to && (kill_ns..restart_ns).contains(&d.recv_ns))
        {
            in_outage[usize::from(d.from != to)] += 1;
        }
        let resumed_ns = log
            .iter()
            .filter(|d| d.to == to && d.from != to && d.recv_ns >= restart_begin_ns)
            .map(|d| d.recv_ns)
            .min();
        outcomes.push(NodeOutcome {
            events,
            stats_before: before,
            stats_after: after,
            in_outage,
            resumed_ns,
            shutdown: Err("not stopped yet".into()),
        });
    }
    let mut directions = Vec::new();
    for from in 0..layout.nodes as u8 {
        for to in (0..layout.nodes as u8).filter(|&to| to != from) {
            let lost: Vec<u64> = lost
                .iter()
                .filter(|l| l.from == from && l.to == to)
                .map(|l| l.sent_ns)
                .collect();
            let span = lost.iter().min().copied().zip(lost.iter().max().copied());
            let resumed_sent_ns = log
                .iter()
                .filter(|d| d.from == from && d.to == to && d.sent_ns >= killed_ns)
                .map(|d| d.sent_ns)
                .min();
            let sender_up_ns = outcomes[usize::from(from)]
                .events
                .iter()
                .find(|&&(at, e)| e == (BrokerEvent::Up { gap: true }) && at >= kill_ns)
                .map(|&(at, _)| at);
            let after_up: Vec<u64> = sender_up_ns.map_or(Vec::new(), |up| {
                lost.iter()
                    .filter(|&&sent| sent > up)
                    .map(|&sent| sent - up)
                    .collect()
            });
            directions.push(DirectionLoss {
                from,
                to,
                lost: lost.len() as u64,
                span,
                resumed_sent_ns,
                sender_up_ns,
                lost_after_up: after_up.len() as u64,
                lost_after_up_for: after_up.iter().max().copied(),
            });
        }
    }
    let timeline = timeline(&log, kill_ns, stats.first_send_ns, stats.last_delivery_ns);
    let mut local_latency = [clients::histogram(), clients::histogram()];
    for d in log.iter().filter(|d| d.from == d.to) {
        let window = if d.recv_ns < kill_ns {
            0
        } else if d.recv_ns < restart_ns {
            1
        } else {
            continue;
        };
        local_latency[window].saturating_record(d.recv_ns.saturating_sub(d.sent_ns).max(1));
    }
    drop(log);
    drop(lost);
    let (sent, delivered) = (stats.sent, stats.delivered);
    let latency = stats.latency.each_ref().map(Summary::of);
    let local_latency = local_latency.map(|h| Summary::of(&h));
    drop(stats);
    let rss_recovered = host::rss(env.trim);
    let heap_recovered = host::heap_in_use();

    let stop = Instant::now();
    for node in &nodes {
        node.shutdown();
    }
    let closed = pool.close_all(SHUTDOWN_TIMEOUT)?;
    for (node, outcome) in nodes.iter_mut().zip(&mut outcomes) {
        outcome.shutdown = node.join(stop, SHUTDOWN_TIMEOUT);
    }
    drop(pool);
    drop(nodes);
    let threads_end = host::settle_to(threads0, SETTLE_TIMEOUT, host::threads);
    let fds_end = host::settle_to(fds0, SETTLE_TIMEOUT, host::descriptors);
    let rss_end = host::rss(env.trim);
    let heap_end = host::heap_in_use();
    drop(redis);

    let mut failures = Vec::new();
    for (n, node) in outcomes.iter().enumerate() {
        if node.in_outage[0] == 0 {
            failures.push(format!("node {n}: no local delivery during the outage"));
        }
        match node.resumed_ns {
            None => failures.push(format!(
                "node {n}: cross-node delivery never resumed after the restart"
            )),
            Some(at) if at.saturating_sub(restart_ns) > RESUME_TARGET.as_nanos() as u64 => failures
                .push(format!(
                    "node {n}: cross-node delivery resumed {:.2} s after Redis was back \
                     (target {RESUME_TARGET:?})",
                    (at - restart_ns) as f64 / 1e9
                )),
            Some(_) => {}
        }
        let events = &node.events;
        let down = events
            .iter()
            .position(|&(at, e)| e == BrokerEvent::Down && at >= kill_ns);
        let up = down.and_then(|i| {
            events[i..]
                .iter()
                .find(|&&(at, e)| e == (BrokerEvent::Up { gap: true }) && at >= restart_begin_ns)
        });
        if down.is_none() || up.is_none() {
            failures.push(format!(
                "node {n}: on_broker did not see Down then Up {{ gap: true }}: {events:?}"
            ));
        }
        if node.stats_after.reconnects <= node.stats_before.reconnects {
            failures.push(format!("node {n}: broker_stats counted no reconnect"));
        }
        if let Err(e) = &node.shutdown {
            failures.push(e.clone());
        }
    }
    for d in &directions {
        let Some((first, last)) = d.span else {
            continue;
        };
        let window_end = d.resumed_sent_ns.map_or(u64::MAX, |r| r + MARGIN_NS);
        if first + MARGIN_NS < kill_ns || last > window_end {
            failures.push(format!(
                "node {} -> node {}: {} cross-node deliveries lost outside the outage (sent \
                 {:+.3} s to {:+.3} s from the kill; resumed with a message sent at {})",
                d.from,
                d.to,
                d.lost,
                secs(first, kill_ns),
                secs(last, kill_ns),
                d.resumed_sent_ns
                    .map_or("never".into(), |r| format!("{:+.3} s", secs(r, kill_ns)))
            ));
        }
    }
    if closed != layout.clients {
        failures.push(format!(
            "only {closed} of {} clients saw their connection closed at the shutdown",
            layout.clients
        ));
    }
    if threads_end > threads0 {
        failures.push(format!(
            "{threads_end} threads left after the nodes stopped (before: {threads0}, running: \
             {threads_running})"
        ));
    }
    if fds_end > fds0 {
        failures.push(format!(
            "{fds_end} descriptors open after the nodes stopped (before: {fds0})"
        ));
    }
    Ok(FailureResult {
        layout,
        rate,
        timing,
        kill_ns,
        killed_ns,
        restart_begin_ns,
        restart_ns,
        sent,
        delivered,
        latency,
        nodes: outcomes,
        directions,
        timeline,
        local_latency,
        threads: [threads0, threads_running, threads_end],
        descriptors: [fds0, fds_running, fds_end],
        rss: [rss0, rss_steady, rss_recovered, rss_end],
        heap: [heap0, heap_steady, heap_recovered, heap_end],
        closed,
        cpu,
        load: [load0, load1],
        failures,
    })
}

fn stats_of(node: &Node) -> BrokerStats {
    node.broker_stats().unwrap_or_default()
}

fn sleep_until(at: Instant) {
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
}

/// `ns - from` in seconds, signed.
pub fn secs(ns: u64, from: u64) -> f64 {
    (ns as f64 - from as f64) / 1e9
}

/// Deliveries per bucket from a second before the kill (or the first send) to the last.
fn timeline(
    log: &[crate::clients::Delivery],
    kill_ns: u64,
    first_ns: u64,
    last_ns: u64,
) -> Vec<(i64, u64, u64)> {
    let start = kill_ns.saturating_sub(1_000_000_000).max(first_ns);
    // Buckets aligned on the kill.
    let first = -(((kill_ns - start) / BUCKET_NS) as i64);
    let last = ((last_ns.saturating_sub(kill_ns)) / BUCKET_NS) as i64;
    let mut buckets: Vec<(i64, u64, u64)> = (first..=last)
        .map(|b| (b * (BUCKET_NS / 1_000_000) as i64, 0, 0))
        .collect();
    for d in log {
        let offset = d.recv_ns as i64 - kill_ns as i64;
        let b = offset.div_euclid(BUCKET_NS as i64) - first;
        if let Some(bucket) = usize::try_from(b).ok().and_then(|b| buckets.get_mut(b)) {
            if d.from == d.to {
                bucket.1 += 1;
            } else {
                bucket.2 += 1;
            }
        }
    }
    buckets
}
