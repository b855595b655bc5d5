//! Broadcast fan-out benchmark: the wshub `broadcast` example against a
//! baseline tokio + tokio-tungstenite broadcast server, same workload, same
//! invocation.
//!
//! ```text
//! cargo bench --bench fanout                 # full grid -> BENCHMARKS.md, benches/fanout.svg
//! cargo bench --bench fanout -- --quick      # CI: correctness only -> target/bench-quick.md
//! WSHUB_BENCH_QUICK=1 cargo bench --bench fanout
//! cargo bench --bench fanout -- --baseline-only   # skip wshub (e.g. while it does not build)
//! cargo bench --bench fanout -- --wshub-only      # skip the baseline (e.g. for profiling)
//! cargo bench --bench fanout -- --repeats 1       # one run per cell instead of 3
//! cargo bench --bench fanout -- --n 1000          # only the cells with N=1000
//! ```
//!
//! Workload: N clients connect; K of them send M text messages of 64 bytes
//! each (sender index, sequence number, send timestamp). The server sends
//! every message to all N clients, so a cell has N*K*M deliveries. Every
//! client checks that it gets every message exactly once and in order per
//! sender; any loss, duplicate or reordering fails the run (exit code 1).
//!
//! Layout: `loadgen` (the mio client pool), `wire` (frame format),
//! `baseline` (the comparison server), `server` (process control),
//! `sys` (OS measurements), `report` (table, targets, chart).

#[path = "fanout/baseline.rs"]
mod baseline;
#[path = "fanout/loadgen.rs"]
mod loadgen;
#[path = "fanout/report.rs"]
mod report;
#[path = "fanout/server.rs"]
mod server;
#[path = "fanout/sys.rs"]
mod sys;
#[path = "fanout/wire.rs"]
mod wire;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use loadgen::{ClientPool, MessagePlan, Pacing};
use report::{Cell, Mode, RunResult};
use server::{Launcher, ServerKind, ServerProcess};
use sys::Clock;

/// Handshakes in flight at once while connecting: below the listen backlog of 128
/// that tokio's `TcpListener::bind` (the baseline) uses, so no SYN is dropped
/// (a dropped SYN costs a 1 s retransmission). wshub's backlog is 1024.
const CONNECT_CONCURRENCY: usize = 100;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one message phase (quick mode: `QUICK_RUN_TIMEOUT`).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const QUICK_RUN_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between connecting and reading the idle RSS.
const SETTLE: Duration = Duration::from_millis(300);
/// Messages in flight per run in fast mode, split over the senders.
const FAST_IN_FLIGHT: u32 = 64;
/// Target deliveries per fast-mode run (N*K*M), the same for both servers.
const FULL_DELIVERIES: u64 = 3_000_000;
const QUICK_DELIVERIES: u64 = 100_000;
/// Fixed-rate run (latency) of the full grid, at the largest N: one sender,
/// 5 messages/s (one every 200 ms) for 8 s. At N=10000 that is 50k
/// deliveries/s. Each delivery is then a write syscall of its own (nothing to
/// batch), which costs either server ~8-11 µs of CPU on the reference VM
/// (2-vCPU EPYC), so one message to 10,000 clients is a sweep of ~100 ms:
/// at 5/s the sweeps do not overlap and both servers stay near half a CPU,
/// so the latency is that of one broadcast sweep, not of a growing queue.
/// (At 100/s, one message every 10 ms, neither server keeps up at N=10000.)
const FULL_RATE: RateRun = RateRun {
    per_sec: 5.0,
    secs: 8.0,
};
/// Quick mode's fixed-rate run at N=100.
const QUICK_RATE: RateRun = RateRun {
    per_sec: 50.0,
    secs: 1.0,
};
/// A run during which other processes used more than `report::NOISY_SHARE`
/// of a CPU was disturbed (the machine may be shared): it is repeated, after
/// waiting up to `QUIET_WAIT` for the machine to calm down, at most
/// `NOISY_RETRIES` times. Medians leave out runs that stayed noisy.
const NOISY_RETRIES: usize = 3;
const QUIET_WAIT: Duration = Duration::from_secs(20);
/// CPUs for the server and the load generator.
const SERVER_CPU: usize = 0;
const LOADGEN_CPU: usize = 1;

/// A fixed-rate run: messages per second over all senders, and duration.
struct RateRun {
    per_sec: f64,
    secs: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--baseline-server") {
        let Some(addr) = args.get(i + 1) else {
            eprintln!("--baseline-server needs an address");
            std::process::exit(2);
        };
        if let Err(e) = baseline::run(addr) {
            eprintln!("baseline server: {e}");
            std::process::exit(1);
        }
        return;
    }
    let options = Options::parse(&args);
    match run(&options) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("\nfanout bench FAILED: {e}");
            std::process::exit(1);
        }
    }
}

/// Command-line options; unknown arguments (such as cargo's `--bench`) are ignored.
struct Options {
    quick: bool,
    /// The servers to compare (`--baseline-only`, `--wshub-only` select one).
    servers: Vec<ServerKind>,
    repeats: usize,
    /// `--n 100,1000`: run only the cells with these N (for investigating).
    only_n: Option<Vec<usize>>,
    /// The arguments as given, for the report's command line.
    args: Vec<String>,
}

impl Options {
    fn parse(args: &[String]) -> Options {
        let env_quick = std::env::var("WSHUB_BENCH_QUICK").is_ok_and(|v| v == "1");
        let quick = env_quick || args.iter().any(|a| a == "--quick");
        let repeats = args
            .iter()
            .position(|a| a == "--repeats")
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 1 } else { 3 })
            .clamp(1, 9);
        let only_n = args
            .iter()
            .position(|a| a == "--n")
            .and_then(|i| args.get(i + 1))
            .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
        Options {
            quick,
            servers: if args.iter().any(|a| a == "--baseline-only") {
                vec![ServerKind::Baseline]
            } else if args.iter().any(|a| a == "--wshub-only") {
                vec![ServerKind::Wshub]
            } else {
                vec![ServerKind::Wshub, ServerKind::Baseline]
            },
            repeats,
            only_n,
            args: args.iter().filter(|a| *a != "--bench").cloned().collect(),
        }
    }

    fn command_line(&self) -> String {
        let env = if std::env::var("WSHUB_BENCH_QUICK").is_ok_and(|v| v == "1") {
            "WSHUB_BENCH_QUICK=1 "
        } else {
            ""
        };
        let args = if self.args.is_empty() {
            String::new()
        } else {
            format!(" -- {}", self.args.join(" "))
        };
        format!("{env}cargo bench --bench fanout{args}")
    }
}

/// The cells of the grid, grouped so that cells with the same N share one
/// server process and one set of connections.
fn grid(quick: bool) -> Vec<Cell> {
    let (ns, deliveries, rate): (&[usize], u64, RateRun) = if quick {
        (&[100], QUICK_DELIVERIES, QUICK_RATE)
    } else {
        (&[100, 1000, 10_000], FULL_DELIVERIES, FULL_RATE)
    };
    let rate_n = *ns.last().expect("grid has at least one N");
    let mut cells = Vec::new();
    for &n in ns {
        for k in [1, 10] {
            let m = (deliveries / (n as u64 * k as u64)).max(1) as u32;
            cells.push(Cell {
                n,
                k,
                m,
                mode: Mode::Fast {
                    window: (FAST_IN_FLIGHT / k as u32).max(1),
                },
            });
        }
        if n == rate_n {
            cells.push(Cell {
                n,
                k: 1,
                m: (rate.per_sec * rate.secs) as u32,
                mode: Mode::Rate {
                    per_sec: rate.per_sec,
                },
            });
        }
    }
    cells
}

fn run(options: &Options) -> Result<(), String> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (cores, cpu_model) = sys::cpu_info();

    let nofile =
        sys::raise_nofile_limit().map_err(|e| format!("cannot raise RLIMIT_NOFILE: {e}"))?;
    let mut cells = grid(options.quick);
    if let Some(only_n) = &options.only_n {
        cells.retain(|c| only_n.contains(&c.n));
    }
    let max_n = cells.iter().map(|c| c.n).max().unwrap_or(0);
    if nofile < max_n as u64 + 256 {
        return Err(format!(
            "RLIMIT_NOFILE is {nofile}, too low for {max_n} connections; raise the hard limit"
        ));
    }

    let wshub_exe = if options.servers.contains(&ServerKind::Wshub) {
        Some(server::build_wshub_example(manifest_dir)?)
    } else {
        None
    };
    let target_dir = wshub_target_dir(manifest_dir);
    let log_dir = target_dir.join("fanout-bench-logs");
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| format!("cannot create {}: {e}", log_dir.display()))?;
    let launcher = Launcher {
        wshub_exe,
        bench_exe: std::env::current_exe()
            .map_err(|e| format!("cannot find own executable: {e}"))?,
        pin_prefix: server::pin_prefix(SERVER_CPU, cores),
        log_dir,
    };
    let pinned = launcher.pin_prefix.is_some() && sys::pin_self_to_cpu(LOADGEN_CPU).is_ok();
    eprintln!(
        "fanout bench: {} mode, {} repeat(s), {cores} CPUs ({cpu_model}), RLIMIT_NOFILE {nofile}, {}",
        if options.quick { "quick" } else { "full" },
        options.repeats,
        if pinned {
            format!("server on CPU {SERVER_CPU}, load generator on CPU {LOADGEN_CPU}")
        } else {
            "not pinned".to_string()
        }
    );

    let mut ns: Vec<usize> = cells.iter().map(|c| c.n).collect();
    ns.dedup();

    let env = SessionEnv {
        launcher,
        clock: Clock::new(),
        run_timeout: if options.quick {
            QUICK_RUN_TIMEOUT
        } else {
            RUN_TIMEOUT
        },
    };
    let started = Instant::now();
    let mut results = Vec::new();
    for repeat in 0..options.repeats {
        for &n in &ns {
            let session_cells: Vec<Cell> = cells.iter().filter(|c| c.n == n).copied().collect();
            // Alternate which server goes first, to spread slow drifts evenly.
            let mut order = options.servers.clone();
            if repeat % 2 == 1 {
                order.reverse();
            }
            for &kind in &order {
                results.extend(run_session(&env, kind, n, &session_cells, repeat)?);
            }
        }
    }
    let elapsed = started.elapsed();
    drop(env);

    let rows = report::rows(&cells, &results);
    let table = report::markdown_table(&rows);
    println!("\n{table}");
    eprintln!(
        "all {} runs delivered every message exactly once, in order ({:.1} s)",
        results.len(),
        elapsed.as_secs_f64()
    );

    let facts = ReportFacts {
        command: options.command_line(),
        cores,
        cpu_model,
        pinned,
        repeats: options.repeats,
        commit: sys::git_commit(manifest_dir),
        date: sys::utc_now_string(),
        elapsed,
        noise: noise_summary(&results),
    };
    if options.quick {
        let path = target_dir.join("bench-quick.md");
        write_file(&path, &quick_markdown(&facts, &table))?;
        eprintln!("wrote {}", path.display());
    } else {
        let checks = report::check_targets(&rows);
        let targets = report::targets_markdown(&checks);
        println!("{targets}");
        // Only the complete comparison replaces the committed report.
        let complete = options.only_n.is_none() && options.servers.len() == 2;
        let (md_path, svg_path, svg_link) = if complete {
            let svg = manifest_dir.join("benches").join("fanout.svg");
            (
                manifest_dir.join("BENCHMARKS.md"),
                svg,
                "benches/fanout.svg",
            )
        } else {
            let svg = target_dir.join("fanout-partial.svg");
            (
                target_dir.join("bench-partial.md"),
                svg,
                "fanout-partial.svg",
            )
        };
        write_file(&svg_path, &report::svg_chart(&rows))?;
        write_file(&md_path, &full_markdown(&facts, &table, &targets, svg_link))?;
        eprintln!("wrote {} and {}", md_path.display(), svg_path.display());
    }
    Ok(())
}

/// What every session needs besides its own parameters.
struct SessionEnv {
    launcher: Launcher,
    clock: Clock,
    run_timeout: Duration,
}

/// One server process: start it, connect N clients, run the cells, stop it.
fn run_session(
    env: &SessionEnv,
    kind: ServerKind,
    n: usize,
    cells: &[Cell],
    repeat: usize,
) -> Result<Vec<RunResult>, String> {
    let context = |what: &str| format!("[{kind} N={n} repeat {}] {what}", repeat + 1);
    let mut server = ServerProcess::start(kind, &env.launcher, &format!("n{n}-r{}", repeat + 1))
        .map_err(|e| context(&e))?;
    let rss_before = server.rss_bytes()?;
    let (mut pool, connect) =
        match ClientPool::connect(server.addr, n, CONNECT_CONCURRENCY, CONNECT_TIMEOUT) {
            Ok(ok) => ok,
            Err(e) => return Err(context(&with_server_state(e, &mut server))),
        };
    std::thread::sleep(SETTLE);
    let rss_after = server.rss_bytes()?;
    let rss_per_conn = (rss_after as f64 - rss_before as f64) / pool.len() as f64;

    let mut results = Vec::new();
    for cell in cells {
        let plan = MessagePlan {
            senders: cell.k,
            messages_per_sender: cell.m,
            pacing: match cell.mode {
                Mode::Fast { window } => Pacing::Window { window },
                Mode::Rate { per_sec } => Pacing::Rate { per_sec },
            },
            timeout: env.run_timeout,
        };
        let mut attempt = 0;
        let stats = loop {
            let outcome = pool.run_messages(&plan, &env.clock, &mut || server.cpu_time());
            let stats = match outcome {
                Ok(stats) => stats,
                Err(e) => {
                    let what =
                        format!("{}: {}", cell.describe(), with_server_state(e, &mut server));
                    return Err(context(&what));
                }
            };
            let noise = sys::proc_stat_share(stats.foreign_cpu, stats.wall).unwrap_or(0.0);
            if noise <= report::NOISY_SHARE || attempt == NOISY_RETRIES {
                break stats;
            }
            attempt += 1;
            eprintln!(
                "{kind} {}: other processes used {:.0}% of a CPU during the run; repeating it",
                cell.describe(),
                noise * 100.0
            );
            if !sys::wait_for_quiet(report::NOISY_SHARE, QUIET_WAIT) {
                eprintln!("(the machine stayed busy for {QUIET_WAIT:?}; repeating anyway)");
            }
        };
        if stats.deliveries != cell.deliveries() {
            return Err(context(&format!(
                "{}: counted {} deliveries, expected {}",
                cell.describe(),
                stats.deliveries,
                cell.deliveries()
            )));
        }
        let hist = &stats.latency_ns;
        let result = RunResult {
            server: kind,
            cell: *cell,
            deliveries: stats.deliveries,
            wall: stats.wall,
            server_cpu: stats.server_cpu,
            loadgen_cpu: stats.loadgen_cpu,
            loadgen_busy: stats.loadgen_busy,
            foreign_cpu: stats.foreign_cpu,
            p50_ns: hist.value_at_quantile(0.50),
            p99_ns: hist.value_at_quantile(0.99),
            max_ns: hist.max(),
            rss_per_conn,
            connect_time: connect.duration,
            connect_loadgen_busy: connect.loadgen_busy,
            connect_listen_overflows: connect.listen_overflows,
            max_send_lag: stats.max_send_lag,
        };
        eprintln!("{}", result.summary_line());
        results.push(result);
    }
    server.check_alive().map_err(|e| context(&e))?;
    // Stop the server first, then close the clients.
    drop(server);
    drop(pool);
    Ok(results)
}

/// Adds whether the server is still running (and its log) to an error.
fn with_server_state(error: String, server: &mut ServerProcess) -> String {
    match server.check_alive() {
        Ok(()) => format!(
            "{error}\n(the {} server, pid {}, was still running; its log: {})",
            server.kind,
            server.pid(),
            server.log_path.display()
        ),
        Err(exited) => format!("{error}\n{exited}"),
    }
}

/// `<target dir>`: where the release binaries live.
fn wshub_target_dir(manifest_dir: &Path) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .filter(|dir| dir.join("release").is_dir())
        .unwrap_or_else(|| manifest_dir.join("target"))
}

fn write_file(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

struct ReportFacts {
    command: String,
    cores: usize,
    cpu_model: String,
    pinned: bool,
    repeats: usize,
    commit: String,
    date: String,
    elapsed: Duration,
    noise: String,
}

/// How much other processes ran during the measured runs.
fn noise_summary(results: &[RunResult]) -> String {
    let mut shares: Vec<f64> = results
        .iter()
        .filter_map(|r| r.foreign_cpu_share())
        .map(|share| share * 100.0)
        .collect();
    shares.sort_by(f64::total_cmp);
    let (Some(median), Some(max)) = (shares.get(shares.len() / 2), shares.last()) else {
        return "not measured (all runs shorter than /proc/stat can resolve)".to_string();
    };
    format!(
        "other processes used a median {median:.0}% (max {max:.0}%) of one CPU during the \
         runs long enough to tell; a run above {:.0}% was repeated (up to {NOISY_RETRIES} times) \
         and left out of the medians if it stayed that noisy",
        report::NOISY_SHARE * 100.0
    )
}

fn machine_line(f: &ReportFacts) -> String {
    format!(
        "{} logical CPUs, {}; {}",
        f.cores,
        f.cpu_model,
        if f.pinned {
            "server pinned to CPU 0 (taskset), load generator to CPU 1"
        } else {
            "processes not pinned"
        }
    )
}

fn quick_markdown(f: &ReportFacts, table: &str) -> String {
    format!(
        "# wshub fan-out benchmark (quick, correctness only)\n\n\
         - date: {}\n- commit: {}\n- machine: {}\n- command: `{}`\n- duration: {:.1} s\n\
         - noise: {}\n\n\
         Quick mode checks that every delivery arrives exactly once and in order; \
         its numbers are too short to compare.\n\n{table}",
        f.date,
        f.commit,
        machine_line(f),
        f.command,
        f.elapsed.as_secs_f64(),
        f.noise
    )
}

fn full_markdown(f: &ReportFacts, table: &str, targets: &str, svg_link: &str) -> String {
    format!(
        "# wshub fan-out benchmark\n\n\
         - date: {date}\n\
         - commit: {commit}\n\
         - machine: {machine}\n\
         - command: `{command}` (took {secs:.0} s)\n\
         - each cell ran {repeats} time(s) per server; the table shows medians\n\
         - noise: {noise}\n\n\
         ![deliveries per second and server CPU per delivery vs N]({svg_link})\n\n\
         ## Workload\n\n\
         N WebSocket clients connect to the server; K of them send M text messages of \
         64 bytes each (sender index, sequence number and send timestamp in fixed-width \
         ASCII). The server broadcasts every message to all N clients, the sender included, \
         so a cell has N×K×M deliveries; M is chosen so that this is about {full} for every \
         fast cell, the same for both servers. Every client checks that it receives every \
         message exactly once and in order per sender; any loss, duplicate or reordering \
         fails the benchmark.\n\n\
         - **fast**: as fast as possible with flow control: each sender has at most W \
         messages that have not yet reached all N clients ({in_flight} in flight per run, \
         split over the K senders).\n\
         - **fixed rate**: one sender sends {rate} messages/s (one every {interval} ms) for \
         {rate_secs} s at N=10000, the latency cell. Unlike fast mode, every delivery is a \
         write syscall of its own here (nothing queues up to batch), which costs either \
         server ~8–11 µs on this machine, so one message to 10,000 clients is a sweep of \
         ~100 ms. At this rate the sweeps do not overlap and neither server saturates, so \
         the latency is that of one broadcast sweep, not of a growing queue (at 100 msg/s \
         neither server keeps up at N=10000).\n\n\
         The load generator is this bench binary: one thread, one mio event loop, hand-written \
         client handshakes and frame parsing, connections spread over source addresses \
         127.0.0.x, at most {concurrency} handshakes in flight (below the baseline's listen \
         backlog of 128). It busy-polls (epoll with zero timeout) so that its own wake-up \
         latency stays out of the numbers; its CPU time is therefore always ~100%, and the \
         table shows instead how busy it was (time outside empty polls).\n\n\
         ## Servers\n\n\
         - **wshub**: `target/release/examples/broadcast` of this crate (single-threaded, mio).\n\
         - **baseline**: the typical tokio + tokio-tungstenite 0.30 broadcast server with \
         tungstenite's default configuration, on a current-thread runtime: per client an \
         unbounded mpsc channel drained by a writer task (feed all queued, then flush), a \
         registry of senders, each text message cloned into every client's channel \
         (`benches/fanout/baseline.rs`; TCP_NODELAY set like wshub).\n\n\
         ## Columns\n\n\
         - deliveries/s: N×K×M divided by the wall time from the first send to the last delivery.\n\
         - server CPU µs/delivery: the server process's user+system CPU time over that \
         interval (its CPU-time clock), divided by N×K×M.\n\
         - latency: receive time minus the send timestamp in the message, over all \
         deliveries at all clients (hdrhistogram). In fast mode it includes queueing behind \
         the flow-control window.\n\
         - idle RSS/conn: (server VmRSS after connecting N clients and settling {settle} ms \
         − VmRSS before connecting) / N.\n\
         - connect N: time to open N connections and finish all handshakes.\n\
         - server CPU / loadgen busy: the server's CPU time over the wall time, and the share \
         of the wall time the load generator spent outside empty polls; whichever is near \
         100% was the bottleneck.\n\
         - ratio: wshub / baseline.\n\n\
         ## Results\n\n{table}\n\
         ## Targets\n\n{targets}",
        date = f.date,
        commit = f.commit,
        machine = machine_line(f),
        command = f.command,
        secs = f.elapsed.as_secs_f64(),
        repeats = f.repeats,
        noise = f.noise,
        full = report::si(FULL_DELIVERIES as f64),
        in_flight = FAST_IN_FLIGHT,
        rate = FULL_RATE.per_sec,
        interval = 1000.0 / FULL_RATE.per_sec,
        rate_secs = FULL_RATE.secs,
        concurrency = CONNECT_CONCURRENCY,
        settle = SETTLE.as_millis(),
    )
}
