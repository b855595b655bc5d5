//! permessage-deflate benchmark: what compression costs the wshub `broadcast` example
//! (release build, a process of its own) in CPU per delivery and in memory per connection,
//! against the same server sending plain frames, in one invocation.
//!
//! ```text
//! cargo bench --bench deflate                  # 3 runs per mode, medians -> <target>/deflate-bench.md
//! cargo bench --bench deflate -- --quick       # CI: correctness only, < 20 s -> <target>/deflate-bench-quick.md
//! WSHUB_BENCH_QUICK=1 cargo bench --bench deflate
//! cargo test --all-targets                     # runs this binary without --bench: the quick pass
//! cargo bench --bench deflate -- --repeats 5   # more runs per mode (1..=9)
//! cargo bench --bench deflate -- --no-memory   # only the CPU part (or --no-cpu: only memory)
//! cargo bench --bench deflate -- --raw-rss     # memory without malloc_trim through gdb
//! ```
//!
//! **CPU per delivery.** 1,000 clients connect (on loopback, one mio loop in this process);
//! one of them sends M messages of 4 KiB of JSON-like text (repeated keys, varied values,
//! a different message each time: benches/deflate/message.rs), at most 4 in flight (a
//! message leaves the window once all 1,000 clients have it); the server sends each to
//! every client, the sender included. M is 500, but 100 for `dedicated`, whose ~100× cost
//! per delivery (a compression each) is steady and would otherwise take minutes. Three servers, each run in turn, 3 times (the table
//! shows medians): `plain` (no `--deflate`, clients offer nothing), `shared` and
//! `dedicated` (`--deflate shared|dedicated`, clients offer `permessage-deflate;
//! client_max_window_bits` and check that the 101 agrees). With deflate the sender
//! compresses what it sends (keeping its context, as browsers do), and every client
//! inflates every message with its own zlib-rs decompressor (reset after each message when
//! the server promised `server_no_context_takeover`, which checks the promise). Every client
//! checks every message: its sequence number must be the next one and its bytes those sent;
//! a loss, duplicate, reordering, corruption or extra message fails the benchmark (exit 1).
//! Measured: the server's CPU time (its CPU-time clock) from the first send to the last
//! delivery, per delivery; the bytes the clients read (frames, headers included) per
//! delivery; the messages' size over their payload on the wire (compression ratio).
//!
//! **Memory per connection.** For each case a fresh server, its RSS (and, with gdb, the
//! bytes its allocator has handed out, after `malloc_trim(0)` as in benches/soak) with no
//! connection and then with 5,000 connections that did what the case says, settled:
//! plain; shared with deflate agreed; dedicated (window bits 9, 12, 15) after every
//! connection received one compressed message (so its compressor exists); and, in shared
//! mode with every client in a room of its own, each client having sent one compressed
//! message that came back to it, once keeping its context (the server keeps a decompressor
//! per connection) and once with `client_no_context_takeover` (the loop's one serves all).
//! 5,000 because the client and the server sockets share the machine's 20,000 descriptors.
//!
//! Layout: `client` (the connections: handshake, frames, inflate, checks), `message` (the
//! 4 KiB messages), `launch` (the server process); from the other benches, fanout's `sys`
//! (CPU time, RSS, pinning) and `server` (building the example) and soak's `heap` (gdb);
//! shared with the tls bench, `common/` (`options`, `memory`: memory per connection,
//! `report`: medians, the report's header and file).

#[path = "deflate/client.rs"]
mod client;
#[allow(dead_code)] // its `system` figure is not shown
#[path = "soak/heap.rs"]
mod heap;
#[path = "deflate/launch.rs"]
mod launch;
#[path = "common/memory.rs"]
mod memory;
#[path = "deflate/message.rs"]
mod message;
#[path = "common/options.rs"]
mod options;
#[path = "common/report.rs"]
mod report;
#[allow(dead_code)]
#[path = "fanout/server.rs"]
mod server;
#[allow(dead_code)]
#[path = "fanout/sys.rs"]
mod sys;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use client::{Agreed, Offer, Plan, Pool, RunStats};
use launch::Server;
use memory::{PerConn, Reading, gdb_works};
use options::Options;
use report::{median, si};

/// The CPU part: clients, and messages (fewer for dedicated mode).
const FULL_CPU: CpuSize = CpuSize {
    clients: 1_000,
    messages: 500,
    dedicated_messages: 100,
};
const QUICK_CPU: CpuSize = CpuSize {
    clients: 100,
    messages: 40,
    dedicated_messages: 20,
};
/// Messages in flight.
const WINDOW: usize = 4;
const FULL_REPEATS: usize = 3;
/// Connections of the memory part (the machine's 20,000 descriptors hold 2×5,000 easily,
/// 2×10,000 not at all).
const FULL_IDLE: usize = 5_000;
const QUICK_IDLE: usize = 100;
/// Messages in flight when every client of the memory part sends one.
const ECHO_WINDOW: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
const RUN_TIMEOUT: Duration = Duration::from_secs(180);
const QUICK_RUN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before reading the server's memory.
const SETTLE: Duration = Duration::from_millis(500);
const QUICK_SETTLE: Duration = Duration::from_millis(100);
/// CPUs for the server and this process.
const SERVER_CPU: usize = 0;
const LOADGEN_CPU: usize = 1;
/// The targets.
const SHARED_CPU_TARGET: f64 = 1.5;
const SHARED_MEMORY_TARGET: f64 = 1024.0;

struct CpuSize {
    clients: usize,
    messages: u32,
    dedicated_messages: u32,
}

impl CpuSize {
    fn messages(&self, mode: Mode) -> u32 {
        match mode {
            Mode::Dedicated(_) => self.dedicated_messages,
            _ => self.messages,
        }
    }
}

/// How the server compresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Plain,
    Shared,
    Dedicated(u8),
}

impl Mode {
    fn args(self) -> Vec<String> {
        match self {
            Mode::Plain => Vec::new(),
            Mode::Shared => vec!["--deflate".into(), "shared".into()],
            Mode::Dedicated(bits) => vec!["--deflate".into(), format!("dedicated:{bits}")],
        }
    }

    fn name(self) -> String {
        match self {
            Mode::Plain => "plain".into(),
            Mode::Shared => "shared".into(),
            Mode::Dedicated(bits) => format!("dedicated:{bits}"),
        }
    }

    /// What a client of this mode offers (no room of its own).
    fn offer(self) -> Offer {
        Offer {
            deflate: self != Mode::Plain,
            client_no_context_takeover: false,
            own_rooms: false,
        }
    }

    /// Checks what the server agreed to with a client that made `offer`.
    fn check_agreed(self, offer: Offer, agreed: Option<Agreed>) -> Result<(), String> {
        let ok = match (self, agreed) {
            (Mode::Plain, None) => true,
            (Mode::Shared, Some(a)) => a.server_no_context_takeover,
            (Mode::Dedicated(_), Some(a)) => !a.server_no_context_takeover,
            _ => false,
        };
        let client_reset = agreed.is_some_and(|a| a.client_no_context_takeover);
        if ok && client_reset == offer.client_no_context_takeover {
            Ok(())
        } else {
            Err(format!(
                "the {} server agreed to {agreed:?} for the offer {offer:?}",
                self.name()
            ))
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match Options::parse(&args, FULL_REPEATS, |_| Ok(())) {
        Ok((options, ())) => options,
        Err(e) => {
            eprintln!("deflate bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&options) {
        eprintln!("\ndeflate bench FAILED: {e}");
        std::process::exit(1);
    }
}

/// What every run needs.
struct Env {
    exe: PathBuf,
    pin: Option<Vec<String>>,
    log_dir: PathBuf,
    quick: bool,
    run_timeout: Duration,
    settle: Duration,
    /// Trim the server's heap through gdb before reading its memory.
    trim: bool,
}

impl Env {
    fn start(&self, mode: Mode, tag: &str) -> Result<Server, String> {
        let log = self.log_dir.join(format!("{tag}.log"));
        Server::start(&self.exe, &mode.args(), self.pin.as_deref(), log)
    }
}

fn run(options: &Options) -> Result<(), String> {
    let started = Instant::now();
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (cores, cpu_model) = sys::cpu_info();
    let nofile =
        sys::raise_nofile_limit().map_err(|e| format!("cannot raise RLIMIT_NOFILE: {e}"))?;
    let idle = if options.quick { QUICK_IDLE } else { FULL_IDLE };
    // This process's sockets and the server's; the server inherits the raised limit.
    if options.memory && nofile < idle as u64 + 256 {
        return Err(format!(
            "RLIMIT_NOFILE is {nofile}, too low for {idle} connections; raise the hard limit"
        ));
    }
    let exe = server::build_wshub_example(manifest_dir)?;
    let target_dir = report::target_dir(manifest_dir);
    let log_dir = target_dir.join("deflate-bench-logs");
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| format!("cannot create {}: {e}", log_dir.display()))?;
    let pin = server::pin_prefix(SERVER_CPU, cores);
    let pinned = pin.is_some() && sys::pin_self_to_cpu(LOADGEN_CPU).is_ok();
    let trim = options.memory && !options.quick && !options.raw_rss && gdb_works();
    let env = Env {
        exe,
        pin,
        log_dir,
        quick: options.quick,
        run_timeout: if options.quick {
            QUICK_RUN_TIMEOUT
        } else {
            RUN_TIMEOUT
        },
        settle: if options.quick { QUICK_SETTLE } else { SETTLE },
        trim,
    };
    eprintln!(
        "deflate bench: {} mode, {} repeat(s), {cores} CPUs ({cpu_model}), RLIMIT_NOFILE \
         {nofile}, {}, memory {}",
        if options.quick { "quick" } else { "full" },
        options.repeats,
        if pinned {
            format!("server on CPU {SERVER_CPU}, clients on CPU {LOADGEN_CPU}")
        } else {
            "not pinned".to_string()
        },
        if trim {
            "after malloc_trim (gdb)"
        } else {
            "as raw RSS"
        }
    );

    let cpu = if options.cpu {
        cpu_part(&env, options.repeats)?
    } else {
        Vec::new()
    };
    let memory = if options.memory {
        memory_part(&env, idle)?
    } else {
        Vec::new()
    };
    let elapsed = started.elapsed();

    let size = if options.quick { QUICK_CPU } else { FULL_CPU };
    let mut body = String::new();
    if !cpu.is_empty() {
        body += &cpu_table(&cpu, &size);
    }
    if !memory.is_empty() {
        body += &memory_table(&memory, idle, trim);
    }
    body += &targets(&cpu, &memory, options.quick);
    println!("\n{body}");
    eprintln!(
        "every client got every message exactly once, in order, intact ({:.1} s)",
        elapsed.as_secs_f64()
    );
    let header = report::Header {
        title: "permessage-deflate",
        quick: options.quick,
        manifest_dir,
        cores,
        cpu_model: &cpu_model,
        pinned,
        command: options.command_line("cargo bench --bench deflate"),
        elapsed,
        noise: report::noise_summary(cpu.iter().map(|r| (r.stats.wall, r.stats.foreign_cpu))),
    };
    let path = header.write(&target_dir, "deflate-bench", &body)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// One run of the CPU part.
struct CpuRun {
    mode: Mode,
    stats: RunStats,
}

impl CpuRun {
    fn cpu_per_delivery_us(&self) -> f64 {
        self.stats.server_cpu.as_secs_f64() * 1e6 / self.stats.deliveries as f64
    }

    fn wire_per_delivery(&self) -> f64 {
        self.stats.wire_bytes as f64 / self.stats.deliveries as f64
    }

    fn ratio(&self) -> f64 {
        self.stats.message_bytes as f64 / self.stats.payload_bytes as f64
    }

    fn deliveries_per_sec(&self) -> f64 {
        self.stats.deliveries as f64 / self.stats.wall.as_secs_f64()
    }

    fn share(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() / self.stats.wall.as_secs_f64()
    }
}

const CPU_MODES: [Mode; 3] = [Mode::Plain, Mode::Shared, Mode::Dedicated(15)];

fn cpu_part(env: &Env, repeats: usize) -> Result<Vec<CpuRun>, String> {
    let size = if env.quick { QUICK_CPU } else { FULL_CPU };
    let mut runs = Vec::new();
    for repeat in 0..repeats {
        // Rotate which mode goes first, to spread slow drifts.
        let mut order = CPU_MODES;
        order.rotate_left(repeat % CPU_MODES.len());
        for mode in order {
            let tag = format!("cpu-{}-r{}", mode.name().replace(':', ""), repeat + 1);
            let context = |e: String| format!("[CPU {} run {}] {e}", mode.name(), repeat + 1);
            let stats = cpu_run(env, mode, &size, &tag).map_err(context)?;
            let run = CpuRun { mode, stats };
            eprintln!(
                "CPU {:<12} run {}: {} deliveries in {:.2} s, server {:.2} µs/delivery \
                 (busy {:.0}%), {:.0} wire bytes/delivery, ratio {:.2}, clients busy {:.0}%, \
                 others {:.0}%",
                mode.name(),
                repeat + 1,
                stats.deliveries,
                stats.wall.as_secs_f64(),
                run.cpu_per_delivery_us(),
                run.share(stats.server_cpu) * 100.0,
                run.wire_per_delivery(),
                run.ratio(),
                run.share(stats.loadgen_cpu) * 100.0,
                run.share(stats.foreign_cpu) * 100.0,
            );
            runs.push(run);
        }
    }
    Ok(runs)
}

fn cpu_run(env: &Env, mode: Mode, size: &CpuSize, tag: &str) -> Result<RunStats, String> {
    let mut server = env.start(mode, tag)?;
    let offer = mode.offer();
    let mut pool = Pool::connect(server.addr, size.clients, offer, CONNECT_TIMEOUT)
        .map_err(|e| server.explain(e))?;
    for i in 0..pool.len() {
        mode.check_agreed(offer, pool.agreed(i))
            .map_err(|e| format!("client {i}: {e}"))?;
    }
    let messages = size.messages(mode);
    let plan = Plan {
        sends: (0..messages).map(|seq| (0, seq)).collect(),
        recipients: size.clients as u32,
        expect: vec![0..messages; size.clients],
        window: WINDOW,
        compress: true,
        timeout: env.run_timeout,
    };
    let stats = pool
        .run(&plan, &mut || server.cpu_time())
        .map_err(|e| server.explain(e))?;
    let expected = u64::from(messages) * size.clients as u64;
    if stats.deliveries != expected {
        return Err(format!(
            "counted {} deliveries, expected {expected}",
            stats.deliveries
        ));
    }
    let compressed_expected = if mode == Mode::Plain { 0 } else { expected };
    if stats.compressed != compressed_expected {
        return Err(format!(
            "{} of {expected} deliveries came compressed, expected {compressed_expected}",
            stats.compressed
        ));
    }
    server.check_alive()?;
    // The server first, then the clients.
    drop(server);
    drop(pool);
    Ok(stats)
}

/// What the clients of a memory case do once connected.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Nothing.
    Idle,
    /// Client 0 sends one plain message; the server sends it to every client.
    BroadcastOne,
    /// Every client sends one compressed message, which comes back to it alone.
    EchoEach,
}

struct MemCase {
    label: &'static str,
    mode: Mode,
    offer: Offer,
    action: Action,
}

const NO_ROOMS: Offer = Offer {
    deflate: true,
    client_no_context_takeover: false,
    own_rooms: false,
};
const OWN_ROOMS: Offer = Offer {
    own_rooms: true,
    ..NO_ROOMS
};

const MEMORY_CASES: [MemCase; 8] = [
    MemCase {
        label: "plain, idle",
        mode: Mode::Plain,
        offer: Offer {
            deflate: false,
            ..NO_ROOMS
        },
        action: Action::Idle,
    },
    MemCase {
        label: "shared, deflate agreed, idle",
        mode: Mode::Shared,
        offer: NO_ROOMS,
        action: Action::Idle,
    },
    MemCase {
        label: "dedicated:9, after 1 compressed message",
        mode: Mode::Dedicated(9),
        offer: NO_ROOMS,
        action: Action::BroadcastOne,
    },
    MemCase {
        label: "dedicated:12, after 1 compressed message",
        mode: Mode::Dedicated(12),
        offer: NO_ROOMS,
        action: Action::BroadcastOne,
    },
    MemCase {
        label: "dedicated:15, after 1 compressed message",
        mode: Mode::Dedicated(15),
        offer: NO_ROOMS,
        action: Action::BroadcastOne,
    },
    MemCase {
        label: "shared, own room each, idle",
        mode: Mode::Shared,
        offer: OWN_ROOMS,
        action: Action::Idle,
    },
    MemCase {
        label: "shared, own room each, each sent 1 compressed (client context takeover)",
        mode: Mode::Shared,
        offer: OWN_ROOMS,
        action: Action::EchoEach,
    },
    MemCase {
        label: "shared, own room each, each sent 1 compressed (client_no_context_takeover)",
        mode: Mode::Shared,
        offer: Offer {
            client_no_context_takeover: true,
            ..OWN_ROOMS
        },
        action: Action::EchoEach,
    },
];

/// One memory case's figures.
struct MemResult {
    label: &'static str,
    mem: PerConn,
}

fn memory_part(env: &Env, n: usize) -> Result<Vec<MemResult>, String> {
    let mut results = Vec::new();
    for (k, case) in MEMORY_CASES.iter().enumerate() {
        let tag = format!("memory-{}", k + 1);
        let result =
            memory_run(env, case, n, &tag).map_err(|e| format!("[memory: {}] {e}", case.label))?;
        eprintln!(
            "memory {:<75} RSS {:>8.0} B/conn{}",
            case.label,
            result.mem.rss_per_conn(),
            result
                .mem
                .heap_per_conn()
                .map_or(String::new(), |h| format!(", heap in use {h:>8.0} B/conn"))
        );
        results.push(result);
    }
    Ok(results)
}

fn memory_run(env: &Env, case: &MemCase, n: usize, tag: &str) -> Result<MemResult, String> {
    let mut server = env.start(case.mode, tag)?;
    let before = Reading::take(&server, env.settle, env.trim)?;
    let mut pool = Pool::connect(server.addr, n, case.offer, CONNECT_TIMEOUT)
        .map_err(|e| server.explain(e))?;
    for i in 0..pool.len() {
        case.mode
            .check_agreed(case.offer, pool.agreed(i))
            .map_err(|e| format!("client {i}: {e}"))?;
    }
    let plan = match case.action {
        Action::Idle => None,
        Action::BroadcastOne => Some(Plan {
            sends: vec![(0, 0)],
            recipients: n as u32,
            expect: vec![0..1; n],
            window: 1,
            compress: false,
            timeout: env.run_timeout,
        }),
        Action::EchoEach => Some(Plan {
            sends: (0..n).map(|i| (i, i as u32)).collect(),
            recipients: 1,
            expect: (0..n as u32).map(|i| i..i + 1).collect(),
            window: ECHO_WINDOW,
            compress: true,
            timeout: env.run_timeout,
        }),
    };
    if let Some(plan) = plan {
        let stats = pool
            .run(&plan, &mut || server.cpu_time())
            .map_err(|e| server.explain(e))?;
        let expected = plan.sends.len() as u64 * u64::from(plan.recipients);
        if stats.deliveries != expected || stats.compressed != expected {
            return Err(format!(
                "{} deliveries ({} compressed), expected {expected}, all compressed",
                stats.deliveries, stats.compressed
            ));
        }
    }
    let after = Reading::take(&server, env.settle, env.trim)?;
    server.check_alive()?;
    drop(server);
    drop(pool);
    Ok(MemResult {
        label: case.label,
        mem: PerConn { n, before, after },
    })
}

/// The median of `f` over the runs of `mode`.
fn median_of(runs: &[CpuRun], mode: Mode, f: impl Fn(&CpuRun) -> f64) -> f64 {
    median(runs.iter().filter(|r| r.mode == mode).map(f).collect())
}

fn cpu_table(runs: &[CpuRun], size: &CpuSize) -> String {
    let plain = median_of(runs, Mode::Plain, CpuRun::cpu_per_delivery_us);
    let count = runs.iter().filter(|r| r.mode == Mode::Plain).count();
    let mut t = format!(
        "## CPU per delivery\n\n\
         {} clients; one of them sends M messages of {} bytes (JSON-like text, each different), \
         at most {WINDOW} in flight, and the server sends each to every client: {} × M \
         deliveries per run. Medians of {count} run(s) per server.\n\n\
         | server | M | server CPU µs/delivery | × plain | wire bytes/delivery | compression \
         ratio | deliveries/s | server CPU busy | clients' CPU busy | others' CPU |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        size.clients,
        message::MESSAGE_LEN,
        size.clients,
    );
    for mode in CPU_MODES {
        let cpu = median_of(runs, mode, CpuRun::cpu_per_delivery_us);
        let _ = writeln!(
            t,
            "| {} | {} | {:.2} | {:.2}× | {:.0} | {:.2} | {} | {:.0}% | {:.0}% | {:.0}% |",
            mode.name(),
            size.messages(mode),
            cpu,
            cpu / plain,
            median_of(runs, mode, CpuRun::wire_per_delivery),
            median_of(runs, mode, CpuRun::ratio),
            si(median_of(runs, mode, CpuRun::deliveries_per_sec)),
            median_of(runs, mode, |r| r.share(r.stats.server_cpu)) * 100.0,
            median_of(runs, mode, |r| r.share(r.stats.loadgen_cpu)) * 100.0,
            median_of(runs, mode, |r| r.share(r.stats.foreign_cpu)) * 100.0,
        );
    }
    t += "\n- server CPU µs/delivery: the server process's CPU time (user + system) from the \
          first send to the last delivery, over the deliveries.\n\
          - wire bytes/delivery: all the clients read in that time (frame headers included), \
          over the deliveries.\n\
          - compression ratio: the messages' bytes over their payloads on the wire.\n\
          - server / clients' CPU busy: CPU time over wall time; the clients (one thread that \
          inflates and checks every delivery) near 100% were the bottleneck. A server that \
          waits for its clients wakes up for less work at a time, which costs it a little more \
          per delivery.\n\
          - others' CPU: what other processes used meanwhile (/proc/stat), in share of one CPU: \
          above a few % the figures of that run are disturbed.\n\n";
    t
}

fn memory_table(results: &[MemResult], n: usize, trim: bool) -> String {
    let plain = results
        .iter()
        .find(|r| r.label.starts_with("plain"))
        .map(|r| r.mem.per_conn());
    let mut t = format!(
        "## Memory per connection\n\n\
         A fresh server per case: its memory with no connection, then with {n} connections \
         that did what the case says, settled; the difference over {n}. {}\n\n\
         | case | RSS B/conn | heap in use B/conn | over plain |\n|---|---:|---:|---:|\n",
        if trim {
            "Both read after `malloc_trim(0)` in the server (gdb); heap in use is what \
             `malloc_stats` counts as handed out, the steadier figure, which \"over plain\" \
             compares."
        } else {
            "Raw RSS (no gdb, or --raw-rss): glibc keeps memory the server freed, so this is \
             noisy; \"over plain\" compares RSS."
        }
    );
    for r in results {
        let over = plain.map_or(String::new(), |p| format!("{:+.0}", r.mem.per_conn() - p));
        let _ = writeln!(
            t,
            "| {} | {:.0} | {} | {over} |",
            r.label,
            r.mem.rss_per_conn(),
            r.mem
                .heap_per_conn()
                .map_or("–".to_string(), |h| format!("{h:.0}"))
        );
    }
    t += "\n- dedicated: every connection received one compressed message, so each holds its \
          compressor. The hash table (64 Ki entries in zlib-rs, 128 KiB) does not depend on \
          the window; the symbol buffers (memLevel = BITS − 7: 112 KiB at 15 bits, 2 KiB at 9) \
          and the 2 × 2^BITS window with its 2 × 2^BITS chain links do.\n\
          - own room each: every client in a room (topic) of its own, so the message it sends \
          comes back to it alone; compare these three with each other (a topic per client \
          costs a few hundred bytes). Keeping its context, a client makes the server keep a \
          decompressor for it (a 2^15-byte window unless `client_window_bits` says less); \
          with `client_no_context_takeover` the loop's one serves everybody.\n\n";
    t
}

fn targets(cpu: &[CpuRun], memory: &[MemResult], quick: bool) -> String {
    let mut t = String::from("## Targets\n\n");
    if quick {
        t += "(quick mode: too short to judge; shown for the record)\n\n";
    }
    if !cpu.is_empty() {
        let plain = median_of(cpu, Mode::Plain, CpuRun::cpu_per_delivery_us);
        for mode in [Mode::Shared, Mode::Dedicated(15)] {
            let ratio = median_of(cpu, mode, CpuRun::cpu_per_delivery_us) / plain;
            let verdict = match mode {
                Mode::Shared if ratio <= SHARED_CPU_TARGET => " (target ≤ 1.5×: met)",
                Mode::Shared => " (target ≤ 1.5×: MISSED)",
                _ => " (no target)",
            };
            let _ = writeln!(
                t,
                "- server CPU per delivery, {} / plain: {ratio:.2}×{verdict}",
                mode.name()
            );
        }
    }
    let find = |prefix: &str| memory.iter().find(|r| r.label.starts_with(prefix));
    if let (Some(plain), Some(shared)) = (find("plain"), find("shared, deflate agreed")) {
        let extra = shared.mem.per_conn() - plain.mem.per_conn();
        let verdict = if extra <= SHARED_MEMORY_TARGET {
            "met"
        } else {
            "MISSED"
        };
        let _ = writeln!(
            t,
            "- memory per idle connection, shared over plain: {extra:+.0} B (target ≤ 1 KiB: \
             {verdict})"
        );
    }
    if let (Some(keep), Some(reset)) = (
        memory
            .iter()
            .find(|r| r.label.ends_with("(client context takeover)")),
        memory
            .iter()
            .find(|r| r.label.ends_with("(client_no_context_takeover)")),
    ) {
        let _ = writeln!(
            t,
            "- a decompressor per connection (client context takeover) over \
             client_no_context_takeover: {:+.0} B per connection",
            keep.mem.per_conn() - reset.mem.per_conn()
        );
    }
    t
}
