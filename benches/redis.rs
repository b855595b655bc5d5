//! Redis broker benchmark (GitHub issue 15): wshub nodes carrying topics between them
//! through Redis pub/sub (`RedisBroker`), against one node without a broker.
//!
//! ```text
//! cargo bench --features redis --bench redis                # full run (~2.5 min) -> <target>/redis-bench.md
//! cargo bench --features redis --bench redis -- --quick     # CI: correctness, a few seconds -> <target>/redis-bench-quick.md
//! cargo bench --features redis --bench redis -- --repeats 3 # runs per configuration (default 2; 1..=9)
//! cargo bench --features redis --bench redis -- --no-pin    # let the scheduler place the threads
//! cargo bench --features redis --bench redis -- --only failure  # some parts: rooms, one-room, throughput, failure
//! cargo test --features redis --all-targets                 # runs this binary without --bench: the quick pass
//! ```
//!
//! **Setup.** The nodes are wshub `Server`s in this process, one thread each, with the
//! rooms handler of examples/broadcast.rs (`?room=NAME` subscribes to NAME, a text message
//! is published to the sender's room, the sender included) and, with 2 or 3 nodes, a
//! `RedisBroker` on a `redis-server` started for the run (tests/common/redis.rs: loopback,
//! no persistence). The clients are one thread of this process (mio, tungstenite on
//! non-blocking sockets), split over the nodes so that every room has members on every
//! node. Each message carries its sender, a per-sender sequence number and its send time
//! (monotonic clock of this process); every member of the room checks that it gets every
//! message of every sender of its room exactly once and in order, and records the latency,
//! as local (the sender is on the same node) or cross-node. A missing, duplicated,
//! reordered or misrouted delivery fails the bench (exit 1). With 2 CPUs, the nodes (their
//! loops and their brokers' threads) are pinned to CPU 0, the clients and redis-server to
//! CPU 1 (`--no-pin`: not pinned).
//!
//! **Runs.** (1) Latency at a fixed 1,000 publishes/s to 100 rooms (900 clients, 3 senders
//! per room) on 1 node without a broker, then 2 and 3 nodes over Redis: p50, p99, p99.9 and
//! max, local and cross-node; (2) the same on one room of all 900 clients (50 publishes/s,
//! 45,000 deliveries/s); (3) throughput: the room workload as fast as it goes (each sender
//! at most 8 messages not yet delivered to its whole room) for a few seconds, 1 node vs 2
//! nodes, with the CPU of each part; (4) failure: 2 nodes at 1,000 publishes/s, Redis
//! killed with SIGKILL, restarted on the same port 2 s later: local deliveries must go on,
//! cross-node delivery must resume within 2 s of Redis being back, losses only during the
//! outage, each node's `on_broker` must see `Down` then `Up { gap: true }`, the nodes must
//! shut down cleanly and leave no thread or descriptor behind (RSS reported; the failure run
//! is repeated too, and every other run's RSS change is shown, for the noise).
//! Configurations are interleaved across repeats, so a change of load hits them alike.
//! Latency targets are reported, not asserted. With the room latencies, "Redis alone"
//! measures one PUBLISH-to-subscriber hop without wshub at the same rate: the floor.
//!
//! Layout: `redis/node` (the nodes), `redis/clients` (the clients and the checks),
//! `redis/failure` (run 4), `redis/floor` (Redis alone), `redis/host` (CPU by thread and
//! steal, threads, descriptors, RSS, heap in use), `redis/tables` (the report); from
//! elsewhere: tests/common/redis.rs (redis-server), fanout's `sys`, `wire` (the payload) and
//! `rooms`, `common/options` and `common/report`.

#[path = "redis/clients.rs"]
mod clients;
#[path = "redis/failure.rs"]
mod failure;
#[path = "redis/floor.rs"]
mod floor;
#[path = "redis/host.rs"]
mod host;
#[path = "redis/node.rs"]
mod node;
#[allow(dead_code)] // --no-cpu, --no-memory: not this bench's
#[path = "common/options.rs"]
mod options;
#[allow(dead_code)] // `command`, `subscribers`: the tests'
#[path = "../tests/common/redis.rs"]
mod redis_server;
#[allow(dead_code)] // `si`: not used here
#[path = "common/report.rs"]
mod report;
#[allow(dead_code)] // `room_of`: the servers' side
#[path = "fanout/rooms.rs"]
mod rooms;
#[allow(dead_code)]
#[path = "fanout/sys.rs"]
mod sys;
#[path = "redis/tables.rs"]
mod tables;
#[allow(dead_code)]
#[path = "fanout/wire.rs"]
mod wire;

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use wshub::BrokerStats;

use clients::{Layout, Pacing, Plan, Pool, RunStats};
use failure::Timing;
use host::{CpuSnapshot, CpuUse};
use options::Options;
use report::median;
use sys::Clock;
use tables::{
    failure_report, failure_summary, latency_table, ms, rss_changes, targets, thousands,
    throughput_table,
};

const USAGE: &str = "usage: cargo bench --features redis --bench redis -- [OPTIONS]
Nodes over Redis pub/sub vs one node: latency at a fixed rate, throughput, a Redis crash.
  --quick        correctness only, a few seconds (also WSHUB_BENCH_QUICK=1, or without --bench)
  --repeats N    runs per configuration and failure runs, 1..=9 (default 2; 1 with --quick)
  --no-pin       do not pin (default with 2+ CPUs: nodes on CPU 0, clients and redis-server on 1)
  --only PARTS   some of: rooms (with Redis alone), one-room, throughput, failure (comma-separated)
  --raw-rss      RSS without malloc_trim(0) first
  -h, --help     this text
Report: <target>/redis-bench.md (redis-bench-quick.md with --quick). Exit 1 on any lost,
duplicated or reordered delivery or a failed check of the failure run.";

const FULL_REPEATS: usize = 2;
const NODE_CPU: usize = 0;
const CLIENT_CPU: usize = 1;
/// The anchor: Sockudo's p99 at 1,000 publishes/s over 3 nodes.
const P99_TARGET_MS: f64 = 4.0;
/// Each sender's messages not yet delivered to all its room, in the throughput run.
const WINDOW: u32 = 8;
/// How long deliveries may take after the last send.
const DRAIN: Duration = Duration::from_secs(10);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the brokers' threads may take to end after their node stopped.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(3);

/// One workload's sizes.
#[derive(Clone, Copy)]
struct Workload {
    clients: usize,
    rooms: usize,
    senders_per_room: usize,
    /// Publishes per second (fixed-rate runs).
    rate: f64,
    duration: Duration,
}

struct Sizes {
    rooms: Workload,
    one_room: Workload,
    throughput: Duration,
    failure: Timing,
    warmup: Duration,
}

const FULL: Sizes = Sizes {
    rooms: Workload {
        clients: 900,
        rooms: 100,
        senders_per_room: 3,
        rate: 1000.0,
        duration: Duration::from_secs(8),
    },
    one_room: Workload {
        clients: 900,
        rooms: 1,
        senders_per_room: 3,
        rate: 50.0,
        duration: Duration::from_secs(4),
    },
    throughput: Duration::from_secs(4),
    failure: Timing {
        before_kill: Duration::from_secs(3),
        outage: Duration::from_secs(2),
        after: Duration::from_secs(4),
    },
    warmup: Duration::from_millis(500),
};

const QUICK: Sizes = Sizes {
    rooms: Workload {
        clients: 180,
        rooms: 20,
        senders_per_room: 3,
        rate: 200.0,
        duration: Duration::from_millis(300),
    },
    one_room: Workload {
        clients: 90,
        rooms: 1,
        senders_per_room: 3,
        rate: 50.0,
        duration: Duration::from_millis(300),
    },
    throughput: Duration::from_millis(300),
    failure: Timing {
        before_kill: Duration::from_millis(300),
        outage: Duration::from_millis(500),
        after: Duration::from_millis(1500),
    },
    warmup: Duration::from_millis(100),
};

/// What every run needs.
pub struct Env {
    pub clock: Clock,
    /// Where the nodes' threads go.
    pub node_cpu: Option<usize>,
    /// RSS after malloc_trim(0).
    pub trim: bool,
    pub warmup: Duration,
    /// Descriptors open when the bench started.
    pub descriptors: usize,
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return std::process::ExitCode::SUCCESS;
    }
    let parsed = Options::parse(&args, FULL_REPEATS, |args| {
        let parts = match args.iter().position(|a| a == "--only") {
            Some(i) => {
                let list = args.get(i + 1).ok_or("--only needs a list")?;
                let parts: Vec<String> = list.split(',').map(str::to_owned).collect();
                if let Some(bad) = parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
                    return Err(format!("--only: no part {bad:?}"));
                }
                parts
            }
            None => PARTS.iter().map(|p| p.to_string()).collect(),
        };
        Ok(Own {
            no_pin: args.iter().any(|a| a == "--no-pin"),
            parts,
        })
    });
    let (options, own) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("redis bench: {e}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    // RUST_LOG=info shows the brokers' reconnects.
    let _ = simple_logger::SimpleLogger::new()
        .with_level(log::LevelFilter::Off)
        .env()
        .init();
    match run(&options, &own) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nredis bench FAILED: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The parts of the bench, as `--only` names them.
const PARTS: [&str; 4] = ["rooms", "one-room", "throughput", "failure"];

/// This bench's own options.
struct Own {
    no_pin: bool,
    parts: Vec<String>,
}

fn run(options: &Options, own: &Own) -> Result<(), String> {
    let part = |name: &str| own.parts.iter().any(|p| p == name);
    let started = Instant::now();
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (cores, cpu_model) = sys::cpu_info();
    sys::raise_nofile_limit().map_err(|e| format!("cannot raise RLIMIT_NOFILE: {e}"))?;
    let pinned = !own.no_pin && cores >= 2 && sys::pin_self_to_cpu(CLIENT_CPU).is_ok();
    let sizes = if options.quick { &QUICK } else { &FULL };
    let env = Env {
        clock: Clock::new(),
        node_cpu: pinned.then_some(NODE_CPU),
        trim: !options.raw_rss,
        warmup: sizes.warmup,
        descriptors: host::descriptors(),
    };
    let placement = if pinned {
        format!(
            "nodes (their loops and their brokers' threads) pinned to CPU {NODE_CPU}; the \
             clients (one thread) and redis-server to CPU {CLIENT_CPU} (sched_setaffinity)"
        )
    } else {
        "nothing pinned: the scheduler places the nodes, the clients and redis-server".into()
    };
    let load_start = host::loadavg();
    eprintln!(
        "redis bench: {} mode, {} repeat(s), {cores} CPUs ({cpu_model}); {placement}; \
         load average {load_start}",
        if options.quick { "quick" } else { "full" },
        options.repeats
    );

    let mut body = String::new();
    let _ = writeln!(
        body,
        "Placement: {placement}. Load average (1, 5, 15 min) at the start: {load_start}.\n"
    );

    let mut rooms = Vec::new();
    if part("rooms") {
        rooms = latency_part(&env, &sizes.rooms, options.repeats, "rooms")?;
        body += &latency_table(&rooms, &sizes.rooms, env.warmup, "Rooms");
        body += &floor_part(&env, &sizes.rooms, options.repeats)?;
    }
    let mut one_room = Vec::new();
    if part("one-room") {
        one_room = latency_part(&env, &sizes.one_room, options.repeats, "one room")?;
        body += &latency_table(&one_room, &sizes.one_room, env.warmup, "One room");
    }
    let mut throughput = Vec::new();
    if part("throughput") {
        throughput = throughput_part(&env, &sizes.rooms, sizes.throughput, options.repeats)?;
        body += &throughput_table(&throughput, &sizes.rooms, sizes.throughput);
    }
    let mut failures = Vec::new();
    if part("failure") {
        for rep in 0..options.repeats {
            eprintln!(
                "failure: 2 nodes, Redis killed and restarted, run {} of {}",
                rep + 1,
                options.repeats
            );
            let layout = layout(&sizes.rooms, 2);
            failures.push(failure::run(&env, layout, sizes.rooms.rate, sizes.failure)?);
        }
        body += &failure_summary(&failures);
        if let Some(first) = failures.first() {
            body += &failure_report(first, env.trim);
        }
    }
    body += &rss_changes(&[
        ("rooms", &rooms),
        ("one room", &one_room),
        ("throughput", &throughput),
    ]);
    body += &targets(&rooms, &throughput, &failures);
    let elapsed = started.elapsed();
    let _ = writeln!(
        body,
        "\nLoad average at the end: {}. Every run's own load and the other processes' CPU \
         share are in its table.",
        host::loadavg()
    );
    println!("\n{body}");

    let all_runs = rooms
        .iter()
        .chain(&one_room)
        .chain(&throughput)
        .flat_map(|c| &c.runs)
        .map(|r| (r.cpu.wall, r.cpu.foreign))
        .chain(failures.iter().map(|f| (f.cpu.wall, f.cpu.foreign)));
    let header = report::Header {
        title: "Redis broker",
        quick: options.quick,
        manifest_dir,
        cores,
        cpu_model: &cpu_model,
        pinned,
        command: options.command_line("cargo bench --features redis --bench redis"),
        elapsed,
        noise: report::noise_summary(all_runs),
    };
    let path = header.write(&report::target_dir(manifest_dir), "redis-bench", &body)?;
    eprintln!("wrote {} ({:.1} s)", path.display(), elapsed.as_secs_f64());
    let failed: Vec<String> = failures
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.failures.is_empty())
        .map(|(i, f)| format!("run {}: {}", i + 1, f.failures.join("; ")))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("the failure run's checks: {}", failed.join(" / ")))
    }
}

fn layout(w: &Workload, nodes: usize) -> Layout {
    Layout {
        clients: w.clients,
        rooms: w.rooms,
        senders_per_room: w.senders_per_room,
        nodes,
    }
}

/// One run of one configuration.
struct Run {
    stats: RunStats,
    cpu: CpuUse,
    brokers: Vec<BrokerStats>,
    load: String,
    /// Process RSS and heap in use before the nodes started and after they stopped.
    rss: [u64; 2],
    heap: [u64; 2],
}

/// Every run of one configuration (a number of nodes).
struct Config {
    nodes: usize,
    runs: Vec<Run>,
}

impl Config {
    fn latency(&self, remote: usize) -> Histogram<u64> {
        let mut all = clients::histogram();
        for run in &self.runs {
            let _ = all.add(&run.stats.latency[remote]);
        }
        all
    }

    fn median_of(&self, f: impl Fn(&Run) -> f64) -> f64 {
        median(self.runs.iter().map(f).collect())
    }
}

/// Starts the nodes (and Redis, for 2+), connects the clients, warms up, measures, stops.
fn measure(env: &Env, layout: Layout, pacing: Pacing, duration: Duration) -> Result<Run, String> {
    // The previous run's broker threads end on their own, soon after their node.
    let threads0 = host::settle_to(1, SETTLE_TIMEOUT, host::threads);
    let rss0 = host::rss(env.trim);
    let heap0 = host::heap_in_use();
    let redis = (layout.nodes > 1).then(redis_server::Redis::start);
    let url = redis.as_ref().map(|r| r.url());
    let mut nodes = node::start_nodes(
        layout.nodes,
        url.as_deref(),
        "bench:",
        env.node_cpu,
        env.clock,
    )?;
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let mut pool = Pool::connect(layout, &addrs, env.clock)?;
    if redis.is_some() {
        let rooms: Vec<usize> = (0..layout.nodes).map(|n| layout.rooms_on(n)).collect();
        node::wait_subscribed(&nodes, &rooms, Duration::from_secs(10))?;
    }
    let plan = |duration| Plan {
        pacing,
        duration,
        drain: DRAIN,
        lossy: false,
    };
    pool.run(&plan(env.warmup))
        .map_err(|e| format!("warm-up: {e}"))?;
    let load = host::loadavg();
    let cpu0 = CpuSnapshot::take();
    let stats = pool.run(&plan(duration))?;
    let cpu = CpuSnapshot::take().since(&cpu0);
    let brokers = nodes.iter().filter_map(|n| n.broker_stats()).collect();
    let stop = Instant::now();
    for node in &nodes {
        node.shutdown();
    }
    let closed = pool.close_all(SHUTDOWN_TIMEOUT)?;
    for node in &mut nodes {
        node.join(stop, SHUTDOWN_TIMEOUT)?;
    }
    drop(nodes);
    if closed != layout.clients {
        return Err(format!(
            "{} nodes: only {closed} of {} clients were closed at the shutdown",
            layout.nodes, layout.clients
        ));
    }
    drop(pool);
    let threads = host::settle_to(threads0, SETTLE_TIMEOUT, host::threads);
    if threads > threads0 {
        return Err(format!(
            "{} nodes: {threads} threads left {SETTLE_TIMEOUT:?} after the nodes stopped \
             ({threads0} before they started)",
            layout.nodes
        ));
    }
    Ok(Run {
        stats,
        cpu,
        brokers,
        load,
        rss: [rss0, host::rss(env.trim)],
        heap: [heap0, host::heap_in_use()],
    })
}

const NODE_COUNTS: [usize; 3] = [1, 2, 3];

fn latency_part(
    env: &Env,
    w: &Workload,
    repeats: usize,
    what: &str,
) -> Result<Vec<Config>, String> {
    let mut configs: Vec<Config> = NODE_COUNTS
        .iter()
        .map(|&nodes| Config {
            nodes,
            runs: Vec::new(),
        })
        .collect();
    for rep in 0..repeats {
        for config in &mut configs {
            eprintln!(
                "latency, {what} ({} clients, {} rooms): {} node(s), run {} of {repeats}",
                w.clients,
                w.rooms,
                config.nodes,
                rep + 1
            );
            let pacing = Pacing::Rate { per_sec: w.rate };
            let run = measure(env, layout(w, config.nodes), pacing, w.duration)
                .map_err(|e| format!("{what}, {} node(s): {e}", config.nodes))?;
            config.runs.push(run);
        }
    }
    Ok(configs)
}

/// Redis alone at the rooms' rate: the floor of the cross-node latency.
fn floor_part(env: &Env, w: &Workload, repeats: usize) -> Result<String, String> {
    let mut all = clients::histogram();
    for rep in 0..repeats {
        eprintln!("Redis alone, run {} of {repeats}", rep + 1);
        let redis = redis_server::Redis::start();
        let h = floor::run(&redis.url(), w.rate, w.duration, env.node_cpu, env.clock)?;
        let _ = all.add(&h);
    }
    Ok(format!(
        "Redis alone, the floor of a cross-node hop (no wshub: one thread PUBLISHes the same \
         payload at {} messages/s, one at a time, another reads them from a subscribed \
         connection, both where the nodes' threads are; {} messages): p50 {} / p95 {} / p99 \
         {} / p99.9 {} / max {} ms.\n\n",
        w.rate,
        thousands(all.len()),
        ms(all.value_at_quantile(0.5)),
        ms(all.value_at_quantile(0.95)),
        ms(all.value_at_quantile(0.99)),
        ms(all.value_at_quantile(0.999)),
        ms(all.max()),
    ))
}

fn throughput_part(
    env: &Env,
    w: &Workload,
    duration: Duration,
    repeats: usize,
) -> Result<Vec<Config>, String> {
    let mut configs: Vec<Config> = [1, 2]
        .iter()
        .map(|&nodes| Config {
            nodes,
            runs: Vec::new(),
        })
        .collect();
    for rep in 0..repeats {
        for config in &mut configs {
            eprintln!(
                "throughput: {} node(s), run {} of {repeats}",
                config.nodes,
                rep + 1
            );
            let pacing = Pacing::Window { window: WINDOW };
            let run = measure(env, layout(w, config.nodes), pacing, duration)
                .map_err(|e| format!("throughput, {} node(s): {e}", config.nodes))?;
            config.runs.push(run);
        }
    }
    Ok(configs)
}
