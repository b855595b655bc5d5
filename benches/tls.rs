//! TLS benchmark: what `wss://` costs the wshub `broadcast` example (release build,
//! `--features tls`, a process of its own) in CPU per delivery and in memory per idle
//! connection, against the same server on `ws://` and against a tokio + tokio-tungstenite
//! + tokio-rustls broadcast server, in one invocation.
//!
//! ```text
//! cargo bench --features tls --bench tls                  # 3 runs per server and size, medians -> <target>/tls-bench.md
//! cargo bench --features tls --bench tls -- --quick       # CI: correctness only, < 20 s -> <target>/tls-bench-quick.md
//! WSHUB_BENCH_QUICK=1 cargo bench --features tls --bench tls
//! cargo test --features tls --all-targets                 # runs this binary without --bench: the quick pass
//! cargo bench --features tls --bench tls -- --repeats 5   # more runs (1..=9)
//! cargo bench --features tls --bench tls -- --no-memory   # only the CPU part (or --no-cpu)
//! cargo bench --features tls --bench tls -- --idle 5000   # the memory part with 5,000 connections
//! cargo bench --features tls --bench tls -- --raw-rss     # memory without malloc_trim through gdb
//! ```
//!
//! **CPU per delivery.** 1,000 clients connect (on loopback, one mio loop in this process;
//! for `wss://` each a rustls `ClientConnection` driven by hand, trusting only the bench's
//! self-signed certificate made with rcgen, no session resumption); one of them sends M text
//! messages of 100 bytes, then (a second run) of 4 KiB, at most 4 in flight (a message leaves
//! the window once all clients have it); the server sends each to every client, the sender
//! included. Four servers, each run in turn, 3 times (the table shows medians): wshub `ws`
//! (the example as is), wshub `wss` (`--tls-cert/--tls-key`), and the tokio baseline of
//! benches/fanout plain (`tokio ws`) and behind tokio-rustls (`tokio wss`,
//! benches/tls/baseline.rs). Every client checks every message (order, length, bytes): a
//! loss, duplicate, reordering, corruption or extra message fails the bench (exit 1).
//! Measured: the server's CPU time (its CPU-time clock) from the first send to the last
//! delivery, per delivery.
//!
//! **Memory per idle connection.** For wshub `ws`, wshub `wss` and tokio `wss`, a fresh
//! server: its RSS and (through gdb, after `malloc_trim(0)`, as benches/soak) its heap in
//! use with no connection, then with N idle connections whose TLS handshake and WebSocket
//! upgrade are done, settled. N is 10,000: RLIMIT_NOFILE (20,000 here) is per process, and
//! the clients live in this process and the server in its own, so each holds 10,000
//! sockets.
//!
//! Layout: `tls/client` (the connections), `tls/baseline` (the tokio TLS server),
//! `tls/example` (building the example with `--features tls`, the certificate); from the
//! other benches: fanout's `sys`, `wire`, `baseline`, `rooms` and `server` (pinning),
//! deflate's `launch`, soak's `heap` and `net`; shared with the deflate bench, `common/`
//! (`options`, `memory`: memory per connection, `report`: medians, the report's header and
//! file).

#[allow(dead_code)] // rooms are not used here
#[path = "fanout/baseline.rs"]
mod baseline;
#[path = "tls/baseline.rs"]
mod baseline_tls;
#[path = "tls/client.rs"]
mod client;
#[path = "tls/example.rs"]
mod example;
#[allow(dead_code)]
#[path = "soak/heap.rs"]
mod heap;
#[allow(dead_code)]
#[path = "deflate/launch.rs"]
mod launch;
#[path = "common/memory.rs"]
mod memory;
#[allow(dead_code)]
#[path = "soak/net.rs"]
mod net;
#[path = "common/options.rs"]
mod options;
#[path = "common/report.rs"]
mod report;
#[allow(dead_code)]
#[path = "fanout/rooms.rs"]
mod rooms;
#[allow(dead_code)] // `ServerProcess` is fanout's; here only `pin_prefix`
#[path = "fanout/server.rs"]
mod server;
#[allow(dead_code)]
#[path = "fanout/sys.rs"]
mod sys;
#[allow(dead_code)]
#[path = "fanout/wire.rs"]
mod wire;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{Plan, Pool, RunStats};
use example::Certs;
use launch::Server;
use memory::{PerConn, Reading, gdb_works};
use options::Options;
use report::{median, si};

/// The CPU part's sizes.
struct CpuSize {
    clients: usize,
    /// (message bytes, messages) per message size.
    sizes: [(usize, usize); 2],
}

const FULL_CPU: CpuSize = CpuSize {
    clients: 1_000,
    sizes: [(100, 600), (4096, 200)],
};
const QUICK_CPU: CpuSize = CpuSize {
    clients: 100,
    sizes: [(100, 50), (4096, 20)],
};
/// Messages in flight.
const WINDOW: usize = 4;
const FULL_REPEATS: usize = 3;
/// Idle connections of the memory part: the clients' 10,000 sockets in this process and the
/// server's 10,000 in its own fit RLIMIT_NOFILE (per process).
const FULL_IDLE: usize = 10_000;
const QUICK_IDLE: usize = 100;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(90);
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const QUICK_RUN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before reading the server's memory.
const SETTLE: Duration = Duration::from_millis(500);
const QUICK_SETTLE: Duration = Duration::from_millis(100);
/// CPUs for the server and this process.
const SERVER_CPU: usize = 0;
const LOADGEN_CPU: usize = 1;
/// The target: at most this many heap bytes per idle TLS connection.
const MEMORY_TARGET: f64 = 8.0 * 1024.0;

/// The servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    WshubWs,
    WshubWss,
    TokioWs,
    TokioWss,
}

impl Kind {
    const CPU: [Kind; 4] = [Kind::WshubWs, Kind::WshubWss, Kind::TokioWs, Kind::TokioWss];
    const MEMORY: [Kind; 3] = [Kind::WshubWs, Kind::WshubWss, Kind::TokioWss];

    fn name(self) -> &'static str {
        match self {
            Kind::WshubWs => "wshub ws",
            Kind::WshubWss => "wshub wss",
            Kind::TokioWs => "tokio ws",
            Kind::TokioWss => "tokio wss",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Kind::WshubWs => "wshub-ws",
            Kind::WshubWss => "wshub-wss",
            Kind::TokioWs => "tokio-ws",
            Kind::TokioWss => "tokio-wss",
        }
    }

    fn tls(self) -> bool {
        matches!(self, Kind::WshubWss | Kind::TokioWss)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Re-executed as a baseline server: `ADDR --baseline-server` or
    // `ADDR --tls-baseline-server CERT KEY` (deflate's launcher puts the address first).
    if let Some(i) = args.iter().position(|a| a == "--tls-baseline-server") {
        let (Some(addr), Some(cert), Some(key)) = (args.first(), args.get(i + 1), args.get(i + 2))
        else {
            eprintln!("usage: tls ADDR --tls-baseline-server CERT KEY");
            std::process::exit(2);
        };
        if let Err(e) = baseline_tls::run(addr, cert, key) {
            eprintln!("tokio TLS baseline: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.iter().any(|a| a == "--baseline-server") {
        if let Err(e) = baseline::run(&args[0]) {
            eprintln!("tokio baseline: {e}");
            std::process::exit(1);
        }
        return;
    }
    let parsed = Options::parse(&args, FULL_REPEATS, |args| {
        Ok(options::value(args, "--idle")?.map(|n| n.max(1)))
    });
    let (options, idle) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("tls bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&options, idle) {
        eprintln!("\ntls bench FAILED: {e}");
        std::process::exit(1);
    }
}

/// What every run needs.
struct Env {
    wshub_exe: PathBuf,
    bench_exe: PathBuf,
    pin: Option<Vec<String>>,
    log_dir: PathBuf,
    certs: Certs,
    client_tls: Arc<rustls::ClientConfig>,
    quick: bool,
    run_timeout: Duration,
    settle: Duration,
    trim: bool,
}

impl Env {
    fn start(&self, kind: Kind, tag: &str) -> Result<Server, String> {
        let log = self.log_dir.join(format!("{tag}.log"));
        let files = || {
            [
                self.certs.cert_pem.display().to_string(),
                self.certs.key_pem.display().to_string(),
            ]
        };
        let (exe, args): (&Path, Vec<String>) = match kind {
            Kind::WshubWs => (&self.wshub_exe, Vec::new()),
            Kind::WshubWss => {
                let [cert, key] = files();
                (
                    &self.wshub_exe,
                    vec!["--tls-cert".into(), cert, "--tls-key".into(), key],
                )
            }
            Kind::TokioWs => (&self.bench_exe, vec!["--baseline-server".into()]),
            Kind::TokioWss => {
                let [cert, key] = files();
                (
                    &self.bench_exe,
                    vec!["--tls-baseline-server".into(), cert, key],
                )
            }
        };
        Server::start(exe, &args, self.pin.as_deref(), log)
    }

    fn client_tls(&self, kind: Kind) -> Option<&Arc<rustls::ClientConfig>> {
        kind.tls().then_some(&self.client_tls)
    }
}

/// `idle`: the connections of the memory part if `--idle` says.
fn run(options: &Options, idle: Option<usize>) -> Result<(), String> {
    let started = Instant::now();
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (cores, cpu_model) = sys::cpu_info();
    let hard = hard_nofile();
    let nofile =
        sys::raise_nofile_limit().map_err(|e| format!("cannot raise RLIMIT_NOFILE: {e}"))?;
    let wanted = idle.unwrap_or(if options.quick { QUICK_IDLE } else { FULL_IDLE });
    // The limit is per process: this process holds the clients' sockets, the server its
    // own; each needs the connections plus a margin.
    let idle = wanted.min(nofile.saturating_sub(256) as usize);
    if options.memory && idle < wanted {
        eprintln!(
            "RLIMIT_NOFILE is {nofile} per process: {idle} idle connections instead of {wanted}"
        );
    }
    let target_dir = report::target_dir(manifest_dir);
    let wshub_exe = example::build_broadcast(manifest_dir, &target_dir)?;
    let bench_exe =
        std::env::current_exe().map_err(|e| format!("cannot find this bench binary: {e}"))?;
    let log_dir = target_dir.join("tls-bench-logs");
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| format!("cannot create {}: {e}", log_dir.display()))?;
    let certs = Certs::generate()?;
    let client_tls = client::tls_config(certs.der.clone())?;
    let pin = server::pin_prefix(SERVER_CPU, cores);
    let pinned = pin.is_some() && sys::pin_self_to_cpu(LOADGEN_CPU).is_ok();
    let trim = options.memory && !options.quick && !options.raw_rss && gdb_works();
    let env = Env {
        wshub_exe,
        bench_exe,
        pin,
        log_dir,
        certs,
        client_tls,
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
        "tls bench: {} mode, {} repeat(s), {cores} CPUs ({cpu_model}), RLIMIT_NOFILE {nofile} \
         (hard {hard}, per process), {}, memory {}",
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

    let size = if options.quick { &QUICK_CPU } else { &FULL_CPU };
    let mut body = String::new();
    if !cpu.is_empty() {
        body += &cpu_table(&cpu, size);
    }
    if !memory.is_empty() {
        body += &memory_table(&memory, idle, trim, nofile);
    }
    body += &targets(&cpu, size, &memory, options.quick);
    println!("\n{body}");
    if options.cpu {
        eprintln!("every client got every message exactly once, in order, intact");
    }
    let header = report::Header {
        title: "TLS",
        quick: options.quick,
        manifest_dir,
        cores,
        cpu_model: &cpu_model,
        pinned,
        command: options.command_line("cargo bench --features tls --bench tls"),
        elapsed,
        noise: report::noise_summary(cpu.iter().map(|r| (r.stats.wall, r.stats.foreign_cpu))),
    };
    let path = header.write(&target_dir, "tls-bench", &body)?;
    eprintln!("wrote {} ({:.1} s)", path.display(), elapsed.as_secs_f64());
    Ok(())
}

/// One run of the CPU part.
struct CpuRun {
    kind: Kind,
    len: usize,
    stats: RunStats,
}

impl CpuRun {
    fn cpu_per_delivery_us(&self) -> f64 {
        self.stats.server_cpu.as_secs_f64() * 1e6 / self.stats.deliveries as f64
    }

    fn wire_per_delivery(&self) -> f64 {
        self.stats.wire_bytes as f64 / self.stats.deliveries as f64
    }

    fn deliveries_per_sec(&self) -> f64 {
        self.stats.deliveries as f64 / self.stats.wall.as_secs_f64()
    }

    fn share(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() / self.stats.wall.as_secs_f64()
    }
}

fn cpu_part(env: &Env, repeats: usize) -> Result<Vec<CpuRun>, String> {
    let size = if env.quick { &QUICK_CPU } else { &FULL_CPU };
    let mut runs = Vec::new();
    for repeat in 0..repeats {
        // Rotate which server goes first, to spread slow drifts.
        let mut order = Kind::CPU;
        order.rotate_left(repeat % Kind::CPU.len());
        for kind in order {
            let tag = format!("cpu-{}-r{}", kind.tag(), repeat + 1);
            let context = |e: String| format!("[CPU {} run {}] {e}", kind.name(), repeat + 1);
            for stats in cpu_run(env, kind, size, &tag).map_err(context)? {
                let run = CpuRun {
                    kind,
                    len: stats.0,
                    stats: stats.1,
                };
                eprintln!(
                    "CPU {:<9} {:>4} B run {}: {} deliveries in {:.2} s, server {:.2} \
                     µs/delivery (busy {:.0}%), {:.0} wire B/delivery, clients busy {:.0}%, \
                     others {:.0}%",
                    kind.name(),
                    run.len,
                    repeat + 1,
                    run.stats.deliveries,
                    run.stats.wall.as_secs_f64(),
                    run.cpu_per_delivery_us(),
                    run.share(run.stats.server_cpu) * 100.0,
                    run.wire_per_delivery(),
                    run.share(run.stats.loadgen_cpu) * 100.0,
                    run.share(run.stats.foreign_cpu) * 100.0,
                );
                runs.push(run);
            }
        }
    }
    Ok(runs)
}

/// One server, both message sizes on the same connections.
fn cpu_run(
    env: &Env,
    kind: Kind,
    size: &CpuSize,
    tag: &str,
) -> Result<Vec<(usize, RunStats)>, String> {
    let mut server = env.start(kind, tag)?;
    let mut pool = Pool::connect(
        server.addr,
        env.client_tls(kind),
        size.clients,
        CONNECT_TIMEOUT,
    )
    .map_err(|e| server.explain(e))?;
    let mut out = Vec::new();
    for (len, messages) in size.sizes {
        let plan = Plan {
            messages: (0..messages).map(|seq| client::message(seq, len)).collect(),
            window: WINDOW,
            timeout: env.run_timeout,
        };
        let stats = pool
            .run(&plan, &mut || server.cpu_time())
            .map_err(|e| server.explain(format!("{len}-byte messages: {e}")))?;
        let expected = (messages * size.clients) as u64;
        if stats.deliveries != expected {
            return Err(format!(
                "counted {} deliveries, expected {expected}",
                stats.deliveries
            ));
        }
        out.push((len, stats));
    }
    server.check_alive()?;
    // The server first, then the clients.
    drop(server);
    drop(pool);
    Ok(out)
}

/// One memory case's figures.
struct MemResult {
    kind: Kind,
    connect: Duration,
    mem: PerConn,
}

fn memory_part(env: &Env, n: usize) -> Result<Vec<MemResult>, String> {
    let mut results = Vec::new();
    for kind in Kind::MEMORY {
        let tag = format!("memory-{}", kind.tag());
        let result =
            memory_run(env, kind, n, &tag).map_err(|e| format!("[memory: {}] {e}", kind.name()))?;
        eprintln!(
            "memory {:<9} {n} idle connections (connected in {:.1} s): RSS {:>7.0} B/conn{}",
            kind.name(),
            result.connect.as_secs_f64(),
            result.mem.rss_per_conn(),
            result
                .mem
                .heap_per_conn()
                .map_or(String::new(), |h| format!(", heap in use {h:>7.0} B/conn"))
        );
        results.push(result);
    }
    Ok(results)
}

fn memory_run(env: &Env, kind: Kind, n: usize, tag: &str) -> Result<MemResult, String> {
    let mut server = env.start(kind, tag)?;
    let before = Reading::take(&server, env.settle, env.trim)?;
    let connect_start = Instant::now();
    let mut pool = Pool::connect(server.addr, env.client_tls(kind), n, CONNECT_TIMEOUT)
        .map_err(|e| server.explain(e))?;
    let connect = connect_start.elapsed();
    let after = Reading::take(&server, env.settle, env.trim)?;
    pool.check_idle().map_err(|e| server.explain(e))?;
    server.check_alive()?;
    let result = MemResult {
        kind,
        connect,
        mem: PerConn {
            n: pool.len(),
            before,
            after,
        },
    };
    drop(server);
    drop(pool);
    Ok(result)
}

/// The hard RLIMIT_NOFILE (for the report).
fn hard_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_max
    } else {
        0
    }
}

/// The median of `f` over the runs of `kind` with `len`-byte messages.
fn median_of(runs: &[CpuRun], kind: Kind, len: usize, f: impl Fn(&CpuRun) -> f64) -> f64 {
    median(
        runs.iter()
            .filter(|r| r.kind == kind && r.len == len)
            .map(f)
            .collect(),
    )
}

fn cpu_table(runs: &[CpuRun], size: &CpuSize) -> String {
    let count = runs
        .iter()
        .filter(|r| r.kind == Kind::WshubWs && r.len == size.sizes[0].0)
        .count();
    let mut t = format!(
        "## CPU per delivery\n\n\
         {} clients; one of them sends M text messages, at most {WINDOW} in flight, and the \
         server sends each to every client: {} × M deliveries per run. Medians of {count} \
         run(s) per server and size.\n\n\
         | message | server | M | server CPU µs/delivery | × wshub ws | wire B/delivery | \
         deliveries/s | server CPU busy | clients' CPU busy | others' CPU |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        size.clients, size.clients,
    );
    for (len, messages) in size.sizes {
        let ws = median_of(runs, Kind::WshubWs, len, CpuRun::cpu_per_delivery_us);
        for kind in Kind::CPU {
            let cpu = median_of(runs, kind, len, CpuRun::cpu_per_delivery_us);
            let _ = writeln!(
                t,
                "| {len} B | {} | {messages} | {cpu:.2} | {:.2}× | {:.0} | {} | {:.0}% | {:.0}% \
                 | {:.0}% |",
                kind.name(),
                cpu / ws,
                median_of(runs, kind, len, CpuRun::wire_per_delivery),
                si(median_of(runs, kind, len, CpuRun::deliveries_per_sec)),
                median_of(runs, kind, len, |r| r.share(r.stats.server_cpu)) * 100.0,
                median_of(runs, kind, len, |r| r.share(r.stats.loadgen_cpu)) * 100.0,
                median_of(runs, kind, len, |r| r.share(r.stats.foreign_cpu)) * 100.0,
            );
        }
    }
    t += "\n- server CPU µs/delivery: the server process's CPU time (user + system) from the \
          first send to the last delivery, over the deliveries.\n\
          - wire B/delivery: what the clients read from their sockets (TLS records or frames) \
          over the deliveries.\n\
          - clients' CPU busy: this process (one thread: every client decrypts and checks every \
          delivery) over wall time; near 100% the clients were the bottleneck, and a server \
          that waits for them wakes up for less work at a time.\n\
          - others' CPU: what other processes used meanwhile (/proc/stat), in share of one CPU.\n\n";
    t
}

fn memory_table(results: &[MemResult], n: usize, trim: bool, nofile: u64) -> String {
    let ws = results
        .iter()
        .find(|r| r.kind == Kind::WshubWs)
        .map(|r| r.mem.per_conn());
    let mut t = format!(
        "## Memory per idle connection\n\n\
         A fresh server per case: its memory with no connection, then with {n} idle \
         connections (TLS handshake and upgrade done), settled; the difference over {n}. \
         RLIMIT_NOFILE is {nofile} per process: the clients' sockets are in the bench process, \
         the server's in its own. {}\n\n\
         | server | connections | connect time | RSS B/conn | heap in use B/conn | over wshub ws |\n\
         |---|---:|---:|---:|---:|---:|\n",
        if trim {
            "Both read after `malloc_trim(0)` in the server (gdb); heap in use is what \
             `malloc_stats` counts as handed out, the steadier figure."
        } else {
            "Raw RSS (quick mode, no gdb, or --raw-rss): noisy."
        }
    );
    for r in results {
        let over = ws.map_or(String::new(), |w| format!("{:+.0}", r.mem.per_conn() - w));
        let _ = writeln!(
            t,
            "| {} | {} | {:.1} s | {:.0} | {} | {over} |",
            r.kind.name(),
            r.mem.n,
            r.connect.as_secs_f64(),
            r.mem.rss_per_conn(),
            r.mem
                .heap_per_conn()
                .map_or("–".to_string(), |h| format!("{h:.0}"))
        );
    }
    t += "\n- wshub wss over ws: mostly rustls' `UnbufferedServerConnection` (boxed in the \
          connection's transport) with the traffic keys and key schedule of the record layer. \
          The transport keeps no record buffer when idle: ciphertext is decrypted from the \
          loop's shared read buffer, and only a partial record or ciphertext the socket did \
          not take is held per connection, freed once empty.\n\
          - tokio wss: tokio-tungstenite's default read buffer (128 KiB per connection) \
          dominates.\n\n";
    t
}

fn targets(cpu: &[CpuRun], size: &CpuSize, memory: &[MemResult], quick: bool) -> String {
    let mut t = String::from("## Ratios and targets\n\n");
    if quick {
        t += "(quick mode: too short to judge; shown for the record)\n\n";
    }
    if !cpu.is_empty() {
        for (len, _) in size.sizes {
            let us = |kind| median_of(cpu, kind, len, CpuRun::cpu_per_delivery_us);
            let wss_tokio = us(Kind::WshubWss) / us(Kind::TokioWss);
            let _ = writeln!(
                t,
                "- {len} B: wshub wss / wshub ws {:.2}×; wshub wss / tokio wss {wss_tokio:.2}× \
                 (target < 1: {}); tokio wss / tokio ws {:.2}×",
                us(Kind::WshubWss) / us(Kind::WshubWs),
                if wss_tokio < 1.0 { "met" } else { "MISSED" },
                us(Kind::TokioWss) / us(Kind::TokioWs),
            );
        }
    }
    let find = |kind| memory.iter().find(|r| r.kind == kind);
    if let Some(wss) = find(Kind::WshubWss) {
        let per = wss.mem.per_conn();
        let _ = writeln!(
            t,
            "- memory per idle wshub wss connection: {per:.0} B (target ≤ 8 KiB: {}){}",
            if per <= MEMORY_TARGET {
                "met"
            } else {
                "MISSED"
            },
            find(Kind::WshubWs).map_or(String::new(), |ws| format!(
                "; of which TLS (over ws): {:+.0} B",
                per - ws.mem.per_conn()
            ))
        );
    }
    t
}
