//! Broadcast fan-out benchmark: the wshub `broadcast` example against a
//! minimal hand-written mio server (the floor) and the typical tokio +
//! tokio-tungstenite server, same workload, same invocation.
//!
//! ```text
//! cargo bench --bench fanout                 # full grid -> BENCHMARKS.md, benches/fanout.svg
//! cargo bench --bench fanout -- --quick      # CI: correctness only -> target/bench-quick.md
//! WSHUB_BENCH_QUICK=1 cargo bench --bench fanout
//! cargo test --all-targets                   # runs this binary without --bench: the quick pass
//! cargo bench --bench fanout -- --floor-only     # one server: also --tokio-only (= --baseline-only)
//! cargo bench --bench fanout -- --wshub-only     # wshub and wshub-filter
//! cargo bench --bench fanout -- --no-wshub       # floor and tokio (e.g. while wshub does not build)
//! cargo bench --bench fanout -- --servers floor,wshub-filter   # any set of servers
//! cargo bench --bench fanout -- --workloads rooms # only some of fanout,rate,rooms
//! cargo bench --bench fanout -- --repeats 1       # one run per cell instead of 3
//! cargo bench --bench fanout -- --n 1000          # only the cells with N=1000
//! cargo bench --bench fanout -- --threads 1,2     # wshub with 1 and with 2 event loops
//! cargo bench --bench fanout -- --threads 1,2 --placement same,spread
//! cargo bench --bench fanout -- --help            # every option
//! ```
//!
//! Only a complete full run (`cargo bench`, every server and cell) rewrites
//! BENCHMARKS.md and benches/fanout.svg; everything else writes under the
//! target directory. `cargo bench` passes `--bench` to this binary and
//! `cargo test` does not, which is how a test run is told apart: it gets the
//! quick pass, so `cargo test --all-targets` neither takes minutes nor
//! touches tracked files.
//!
//! Workload: N clients connect; K of them send M text messages of 64 bytes
//! each (sender index, sequence number, send timestamp). The server sends
//! every message to all N clients, so a cell has N*K*M deliveries. In the
//! rooms workload the clients are split into rooms (`?room=NAME` on the
//! upgrade URL) and a message goes to its sender's room only. Every client
//! checks that it gets every message meant for it exactly once and in order
//! per sender, and nothing else; any loss, duplicate, reordering or stray
//! delivery fails the run (exit code 1).
//!
//! Threads: `--threads 1,2` runs the wshub server (the `broadcast` example with
//! `--threads N`, a `Cluster` of N loops on one port) with each number of event loops;
//! the floor, tokio and wshub-filter always have one thread (`broadcast_to`, the filter
//! walk, reaches only its own loop's connections, so rooms spanning loops need topics).
//! The machine is expected to have two CPUs, one for the server and one for the load
//! generator (which busy-polls, so it uses all of its CPU), so where a server with several
//! loops may run is chosen explicitly with `--placement` (several loops only; one loop
//! always runs on CPU 0). Quick mode runs wshub with 1 and 2 loops (`same`), so the checks
//! of every delivery cover frames crossing between loops (some 3 s more):
//!
//! - `same` (the default): every loop on CPU 0, the one CPU a single loop has, and the load
//!   generator alone on CPU 1. Same CPU budget as one loop, so server CPU per delivery
//!   against one loop is the cost of the loops handing frames to each other (crossing).
//! - `spread`: the server may run on CPUs 0 and 1 (`taskset -c 0,1`; the scheduler places
//!   the loops), the load generator stays on CPU 1 and shares it. Deliveries/s against one
//!   loop show what a second CPU gives, with the load generator as a competitor for it.
//!
//! With several loops the bench also asks the server for each loop's open connections
//! after connecting (SIGUSR1 to the example, which logs them) to show how evenly the
//! kernel's `SO_REUSEPORT` hash spread them, and it reads each loop thread's CPU time
//! (/proc/PID/task/TID/schedstat) and the server's writev calls (/proc/PID/io: deliveries
//! per write, how well frames are batched) over every run. The report gets a `threads`
//! column, a table of several loops against one (with the CPU split between the loops and
//! the deliveries per write), the connection balance, and two targets: several loops on
//! CPU 0 cost ≤ 1.1× one loop's server CPU per delivery in the fan-out cells at N=1,000
//! and 10,000, and ≤ 1.2× in the rooms workload (whose rooms have members on every loop,
//! so most publishes cross).
//!
//! Layout: `loadgen` (the mio client pool), `wire` (frame format), `rooms`
//! (the room query parameter), `floor` and `baseline` (the comparison
//! servers), `server` (process control), `sys` (OS measurements), `report`
//! (tables, targets, chart).

#[path = "fanout/baseline.rs"]
mod baseline;
#[path = "fanout/floor.rs"]
mod floor;
#[path = "fanout/loadgen.rs"]
mod loadgen;
#[path = "fanout/report.rs"]
mod report;
#[path = "fanout/rooms.rs"]
mod rooms;
#[path = "fanout/server.rs"]
mod server;
#[path = "fanout/sys.rs"]
mod sys;
#[path = "fanout/wire.rs"]
mod wire;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use loadgen::{ClientPool, MessagePlan, Pacing};
use report::{Cell, Mode, Placement, RunResult, Setup};
use server::{Launcher, ServerKind, ServerProcess};
use sys::Clock;

/// Handshakes in flight at once while connecting: below the listen backlog of 128
/// that tokio's `TcpListener::bind` (the baseline) uses, so no SYN is dropped
/// (a dropped SYN costs a 1 s retransmission). wshub's backlog is 1024.
const CONNECT_CONCURRENCY: usize = 100;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one message phase (quick mode: `QUICK_RUN_TIMEOUT`): well
/// above the slowest run, wshub-filter's rooms cell (~18 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const QUICK_RUN_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between connecting and reading the idle RSS.
const SETTLE: Duration = Duration::from_millis(300);
/// Fan-out grid: messages in flight per run in fast mode (split over the
/// senders), and senders.
const WINDOWS: [u32; 2] = [32, 64];
const SENDERS: [usize; 2] = [1, 10];
/// Target deliveries per fast-mode run (N*K*M), the same for every server.
const FULL_DELIVERIES: u64 = 3_000_000;
const QUICK_DELIVERIES: u64 = 100_000;
/// The rooms workload of the full grid: 10,000 clients in 1,000 rooms of
/// 10, one sender per room, every message to its room only (sender
/// included). 32 messages in flight per sender (32,000 in all) let each
/// client have up to 32 frames on their way, as in the window-32 fan-out
/// cells, so both workloads batch alike and the figures compare the work
/// per message (finding the recipients, copying) rather than the write
/// syscalls; with 8 per sender the floor spent twice the CPU per delivery
/// (0.93 vs 0.42 µs), nearly all of it in the kernel's send path. M=300
/// makes 10*1,000*300 = 3.0M deliveries, as many as a fan-out cell: on the
/// reference VM 1.3 s for the floor (2.3M/s), about 2 s for wshub and tokio
/// (1.4-1.6M/s), and ~18 s for wshub-filter (170k/s: its walk over all
/// 10,000 connections per message is what the cell exposes).
const FULL_ROOMS: RoomsRun = RoomsRun {
    n: 10_000,
    rooms: 1_000,
    per_sender: 32,
    m: Some(300),
};
/// Quick mode: 100 clients in 10 rooms of 10, M from `QUICK_DELIVERIES`.
const QUICK_ROOMS: RoomsRun = RoomsRun {
    n: 100,
    rooms: 10,
    per_sender: 32,
    m: None,
};
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
/// `NOISY_RETRIES` times. Medians leave out runs that stayed noisy. Not in
/// quick mode, which checks correctness only and must stay short.
const NOISY_RETRIES: usize = 3;
const QUIET_WAIT: Duration = Duration::from_secs(20);
/// CPUs for the server and the load generator. A server with several loops placed
/// `spread` may use both (`SPREAD_CPUS`); the report's labels name them so.
const SERVER_CPU: usize = 0;
const LOADGEN_CPU: usize = 1;
const SPREAD_CPUS: &str = "0,1";

const USAGE: &str = "usage: cargo bench --bench fanout [-- OPTIONS]
Broadcast fan-out: wshub's broadcast example against a minimal mio server (the floor) and
tokio-tungstenite; every delivery is checked (no loss, duplicate or reordering). Server on
CPU 0, load generator on CPU 1 (taskset). Without options: every server and cell, 3
repeats, which rewrites BENCHMARKS.md and benches/fanout.svg; any other run writes
<target>/bench-partial.md (quick mode: <target>/bench-quick.md).
  --quick             correctness only, small cells (also WSHUB_BENCH_QUICK=1, and what
                      cargo test runs)
  --servers LIST      some of floor,wshub,wshub-filter,tokio (default: all)
  --floor-only, --tokio-only, --wshub-only, --no-wshub
                      shorthands for --servers
  --workloads LIST    some of fanout,rate,rooms (default: all)
  --n LIST            only the cells with these N (the grid has 100,1000,10000)
  --repeats R         runs of every cell, 1 to 9 (default 3; quick mode 1)
  --threads LIST      event loops of the wshub server (broadcast --threads N), such as
                      1,2 (default 1; quick mode 1,2); the floor, tokio and
                      wshub-filter always run one thread (broadcast_to reaches its own
                      loop only)
  --placement LIST    where a wshub server with several loops runs: same (all loops on
                      CPU 0, like one loop: the cost of crossing between loops) and/or
                      spread (CPUs 0 and 1, shared with the load generator on CPU 1:
                      scaling); default same. One loop always runs on CPU 0.
  -h, --help          this text";

/// A fixed-rate run: messages per second over all senders, and duration.
struct RateRun {
    per_sec: f64,
    secs: f64,
}

/// The rooms workload: N clients in `rooms` rooms, one sender per room.
struct RoomsRun {
    n: usize,
    rooms: usize,
    /// Messages in flight per sender.
    per_sender: u32,
    /// Messages per sender (None: from the mode's delivery target).
    m: Option<u32>,
}

/// The kinds of cells, selectable with `--workloads`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    /// Fast fan-out to all N clients.
    Fanout,
    /// The fixed-rate latency cell.
    Rate,
    /// Fast, to rooms.
    Rooms,
}

impl Workload {
    const ALL: [Workload; 3] = [Workload::Fanout, Workload::Rate, Workload::Rooms];

    fn name(self) -> &'static str {
        match self {
            Workload::Fanout => "fanout",
            Workload::Rate => "rate",
            Workload::Rooms => "rooms",
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Re-executed as one of the comparison servers.
    type Serve = fn(&str) -> Result<(), String>;
    for (flag, serve) in [
        ("--baseline-server", baseline::run as Serve),
        ("--floor-server", floor::run),
    ] {
        if let Some(i) = args.iter().position(|a| a == flag) {
            let Some(addr) = args.get(i + 1) else {
                eprintln!("{flag} needs an address");
                std::process::exit(2);
            };
            if let Err(e) = serve(addr) {
                eprintln!("{flag}: {e}");
                std::process::exit(1);
            }
            return;
        }
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return;
    }
    let options = match Options::parse(&args) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("fanout bench: {e}");
            std::process::exit(2);
        }
    };
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
    /// Run by `cargo bench` (which passes `--bench`), not by `cargo test`.
    bench: bool,
    quick: bool,
    /// The servers to compare (`--servers`, `--floor-only` etc. select some).
    servers: Vec<ServerKind>,
    workloads: Vec<Workload>,
    repeats: usize,
    /// `--n 100,1000`: run only the cells with these N (for investigating).
    only_n: Option<Vec<usize>>,
    /// `--threads`: the wshub servers' numbers of loops, ascending.
    threads: Vec<usize>,
    /// `--placement`: where a wshub server with several loops runs.
    placements: Vec<Placement>,
    /// The arguments as given, for the report's command line.
    args: Vec<String>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let value_of = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .map(|i| {
                    args.get(i + 1)
                        .cloned()
                        .ok_or(format!("{flag} needs a value"))
                })
                .transpose()
        };
        let has = |flag: &str| args.iter().any(|a| a == flag);
        let bench = has("--bench");
        let env_quick = std::env::var("WSHUB_BENCH_QUICK").is_ok_and(|v| v == "1");
        let quick = env_quick || has("--quick") || !bench;
        let repeats = match value_of("--repeats")? {
            Some(v) => v
                .parse::<usize>()
                .map_err(|e| format!("--repeats {v}: {e}"))?
                .clamp(1, 9),
            None if quick => 1,
            None => 3,
        };
        let only_n = value_of("--n")?
            .map(|v| {
                v.split(',')
                    .map(|n| n.trim().parse().map_err(|e| format!("--n {v}: {e}")))
                    .collect::<Result<Vec<usize>, String>>()
            })
            .transpose()?;
        let mut threads = match value_of("--threads")? {
            Some(v) => v
                .split(',')
                .map(|t| match t.trim().parse::<usize>() {
                    Ok(t @ 1..=64) => Ok(t),
                    _ => Err(format!("--threads {v}: 1 to 64 loops each, not {t:?}")),
                })
                .collect::<Result<Vec<usize>, String>>()?,
            // Quick mode checks the deliveries across two loops too (some 3 s more).
            None if quick => vec![1, 2],
            None => vec![1],
        };
        threads.sort_unstable();
        threads.dedup();
        let mut placements = match value_of("--placement")? {
            Some(v) => v
                .split(',')
                .map(|p| match p.trim() {
                    "same" => Ok(Placement::Cpu0),
                    "spread" => Ok(Placement::Spread),
                    _ => Err(format!("--placement {v}: same or spread, not {p:?}")),
                })
                .collect::<Result<Vec<Placement>, String>>()?,
            None => vec![Placement::Cpu0],
        };
        placements.sort_unstable();
        placements.dedup();
        let servers = if let Some(list) = value_of("--servers")? {
            list.split(',')
                .map(|name| {
                    ServerKind::from_name(name.trim())
                        .ok_or(format!("--servers: unknown server {name:?}"))
                })
                .collect::<Result<Vec<_>, _>>()?
        } else if has("--floor-only") {
            vec![ServerKind::Floor]
        } else if has("--baseline-only") || has("--tokio-only") {
            vec![ServerKind::Baseline]
        } else if has("--wshub-only") {
            vec![ServerKind::Wshub, ServerKind::WshubFilter]
        } else if has("--no-wshub") {
            vec![ServerKind::Floor, ServerKind::Baseline]
        } else {
            ServerKind::ALL.to_vec()
        };
        let workloads = match value_of("--workloads")? {
            Some(list) => list
                .split(',')
                .map(|name| {
                    Workload::ALL
                        .into_iter()
                        .find(|w| w.name() == name.trim())
                        .ok_or(format!("--workloads: unknown workload {name:?}"))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => Workload::ALL.to_vec(),
        };
        Ok(Options {
            bench,
            quick,
            // In the order of the report's columns, each once.
            servers: ServerKind::ALL
                .into_iter()
                .filter(|k| servers.contains(k))
                .collect(),
            workloads,
            repeats,
            only_n,
            threads,
            placements,
            args: args.iter().filter(|a| *a != "--bench").cloned().collect(),
        })
    }

    /// Whether this run measures everything the committed report shows (one loop
    /// included: the comparison with the floor and tokio is made with one).
    fn complete(&self) -> bool {
        !self.quick
            && self.only_n.is_none()
            && self.threads.contains(&1)
            && self.servers.len() == ServerKind::ALL.len()
            && Workload::ALL.iter().all(|w| self.workloads.contains(w))
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
        if self.bench {
            format!("{env}cargo bench --bench fanout{args}")
        } else {
            format!("{env}the bench binary without --bench, as cargo test runs it{args}")
        }
    }
}

/// The cells of the grid, grouped so that cells with the same N and rooms
/// share one server process and one set of connections.
fn grid(quick: bool, workloads: &[Workload]) -> Vec<Cell> {
    let (ns, deliveries, rate, rooms): (&[usize], u64, RateRun, RoomsRun) = if quick {
        (&[100], QUICK_DELIVERIES, QUICK_RATE, QUICK_ROOMS)
    } else {
        (&[100, 1000, 10_000], FULL_DELIVERIES, FULL_RATE, FULL_ROOMS)
    };
    let rate_n = *ns.last().expect("grid has at least one N");
    let mut cells = Vec::new();
    for &n in ns {
        if workloads.contains(&Workload::Fanout) {
            for k in SENDERS {
                let m = (deliveries / (n as u64 * k as u64)).max(1) as u32;
                for window in WINDOWS {
                    cells.push(Cell {
                        n,
                        rooms: None,
                        k,
                        m,
                        mode: Mode::Fast {
                            window,
                            per_sender: (window / k as u32).max(1),
                        },
                    });
                }
            }
        }
        if n == rate_n && workloads.contains(&Workload::Rate) {
            cells.push(Cell {
                n,
                rooms: None,
                k: 1,
                m: (rate.per_sec * rate.secs) as u32,
                mode: Mode::Rate {
                    per_sec: rate.per_sec,
                },
            });
        }
    }
    if workloads.contains(&Workload::Rooms) {
        // One sender per room.
        let k = rooms.rooms;
        let audience = (rooms.n / rooms.rooms) as u64;
        cells.push(Cell {
            n: rooms.n,
            rooms: Some(rooms.rooms),
            k,
            m: rooms
                .m
                .unwrap_or((deliveries / (audience * k as u64)).max(1) as u32),
            mode: Mode::Fast {
                window: rooms.per_sender * k as u32,
                per_sender: rooms.per_sender,
            },
        });
    }
    cells
}

fn run(options: &Options) -> Result<(), String> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (cores, cpu_model) = sys::cpu_info();

    let nofile =
        sys::raise_nofile_limit().map_err(|e| format!("cannot raise RLIMIT_NOFILE: {e}"))?;
    let mut cells = grid(options.quick, &options.workloads);
    if let Some(only_n) = &options.only_n {
        cells.retain(|c| only_n.contains(&c.n));
    }
    if cells.is_empty() {
        return Err("no cells selected (check --n and --workloads)".to_string());
    }
    let max_n = cells.iter().map(|c| c.n).max().unwrap_or(0);
    if nofile < max_n as u64 + 256 {
        return Err(format!(
            "RLIMIT_NOFILE is {nofile}, too low for {max_n} connections; raise the hard limit"
        ));
    }

    let wshub_exe = if options.servers.iter().any(|k| k.is_wshub()) {
        Some(server::build_wshub_example(manifest_dir)?)
    } else {
        None
    };
    let target_dir = target_dir(manifest_dir);
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
    let spread_pin = server::pin_prefix_list(SPREAD_CPUS, cores);
    let setups = setups(options, launcher.pin_prefix.is_some(), spread_pin.is_some());
    let servers: Vec<&str> = options.servers.iter().map(|k| k.name()).collect();
    let setup_labels: Vec<String> = setups.iter().map(Setup::label).collect();
    eprintln!(
        "fanout bench: {} mode{}, servers {}, wshub threads {}, {} repeat(s), {cores} CPUs \
         ({cpu_model}), RLIMIT_NOFILE {nofile}, {}",
        if options.quick { "quick" } else { "full" },
        if options.bench {
            ""
        } else {
            " (no --bench argument: run by cargo test)"
        },
        servers.join(", "),
        setup_labels.join(", "),
        options.repeats,
        if pinned {
            format!("server on CPU {SERVER_CPU}, load generator on CPU {LOADGEN_CPU}")
        } else {
            "not pinned".to_string()
        }
    );

    // Sessions: cells with the same N and rooms share connections.
    let mut sessions: Vec<(usize, Option<usize>)> = Vec::new();
    for c in &cells {
        if !sessions.contains(&(c.n, c.rooms)) {
            sessions.push((c.n, c.rooms));
        }
    }

    let env = SessionEnv {
        launcher,
        spread_pin,
        clock: Clock::new(),
        run_timeout: if options.quick {
            QUICK_RUN_TIMEOUT
        } else {
            RUN_TIMEOUT
        },
        noisy_retries: if options.quick { 0 } else { NOISY_RETRIES },
    };
    let started = Instant::now();
    let mut results = Vec::new();
    for repeat in 0..options.repeats {
        for &(n, rooms) in &sessions {
            let session_cells: Vec<Cell> = cells
                .iter()
                .filter(|c| c.n == n && c.rooms == rooms)
                .copied()
                .collect();
            // Every server once, the wshub ones in each setup; rotate which goes first,
            // to spread slow drifts evenly.
            let mut order: Vec<(ServerKind, Setup)> = Vec::new();
            for kind in options.servers.iter().copied() {
                if !kind.runs(rooms.is_some()) {
                    continue;
                }
                if kind == ServerKind::Wshub {
                    order.extend(setups.iter().map(|&setup| (kind, setup)));
                } else {
                    order.push((kind, setups_single(&setups)));
                }
            }
            if !order.is_empty() {
                let first = repeat % order.len();
                order.rotate_left(first);
            }
            for &(kind, setup) in &order {
                results.extend(run_session(&env, kind, setup, &session_cells, repeat)?);
            }
        }
    }
    let elapsed = started.elapsed();
    drop(env);

    let rows = report::rows(&cells, &results);
    let table = report::markdown_tables(&rows);
    let threads = report::threads_markdown(&rows, &results);
    let table = if threads.is_empty() {
        table
    } else {
        format!("{table}\n{threads}")
    };
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
        several_loops: setups.iter().any(|s| s.threads > 1),
        repeats: options.repeats,
        commit: sys::git_commit(manifest_dir),
        date: sys::utc_now_string(),
        elapsed,
        noise: noise_summary(&results, options.quick),
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
        let (md_path, svg_path, svg_link) = if options.complete() {
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

/// The setups of the wshub server: `--threads` × `--placement` (one loop: on CPU 0
/// only), each once; all unpinned when the server cannot be pinned.
fn setups(options: &Options, pinned: bool, can_spread: bool) -> Vec<Setup> {
    let mut setups = Vec::new();
    for &threads in &options.threads {
        for &placement in &options.placements {
            let placement = match placement {
                _ if !pinned => Placement::Unpinned,
                _ if threads == 1 => Placement::Cpu0,
                Placement::Spread if !can_spread => {
                    eprintln!("cannot run a server on CPUs {SPREAD_CPUS}: no spread placement");
                    Placement::Cpu0
                }
                placement => placement,
            };
            let setup = Setup { threads, placement };
            if !setups.contains(&setup) {
                setups.push(setup);
            }
        }
    }
    setups
}

/// The setup of the one-thread servers (the floor, tokio and wshub-filter): one loop's.
fn setups_single(setups: &[Setup]) -> Setup {
    let placement = match setups.first().map(|s| s.placement) {
        Some(Placement::Unpinned) => Placement::Unpinned,
        _ => Placement::Cpu0,
    };
    Setup {
        threads: 1,
        placement,
    }
}

/// What every session needs besides its own parameters.
struct SessionEnv {
    launcher: Launcher,
    /// `taskset -c 0,1` for the spread placement, if possible.
    spread_pin: Option<Vec<String>>,
    clock: Clock,
    run_timeout: Duration,
    /// How often a disturbed run is repeated (0 in quick mode).
    noisy_retries: usize,
}

/// One server process: start it, connect N clients (into rooms, if the
/// cells have them), run the cells, stop it. All `cells` share N and rooms.
fn run_session(
    env: &SessionEnv,
    kind: ServerKind,
    setup: Setup,
    cells: &[Cell],
    repeat: usize,
) -> Result<Vec<RunResult>, String> {
    let Some(first) = cells.first() else {
        return Ok(Vec::new());
    };
    let (n, rooms) = (first.n, first.rooms);
    let rooms_tag = rooms.map_or(String::new(), |r| format!(" rooms={r}"));
    let context = |what: &str| {
        format!(
            "[{kind} threads {} N={n}{rooms_tag} repeat {}] {what}",
            setup.label(),
            repeat + 1
        )
    };
    let log_tag = format!(
        "n{n}{}-t{}{}-r{}",
        rooms.map_or(String::new(), |r| format!("-rooms{r}")),
        setup.threads,
        if setup.placement == Placement::Spread {
            "-spread"
        } else {
            ""
        },
        repeat + 1
    );
    let pin = match setup.placement {
        Placement::Cpu0 => env.launcher.pin_prefix.as_deref(),
        Placement::Spread => env.spread_pin.as_deref(),
        Placement::Unpinned => None,
    };
    let mut server = ServerProcess::start_with(kind, &env.launcher, &log_tag, setup.threads, pin)
        .map_err(|e| context(&e))?;
    let rss_before = server.rss_bytes()?;
    let (mut pool, connect) =
        match ClientPool::connect(server.addr, n, rooms, CONNECT_CONCURRENCY, CONNECT_TIMEOUT) {
            Ok(ok) => ok,
            Err(e) => return Err(context(&with_server_state(e, &mut server))),
        };
    std::thread::sleep(SETTLE);
    let rss_after = server.rss_bytes()?;
    let rss_per_conn = (rss_after as f64 - rss_before as f64) / pool.len() as f64;
    // How the kernel spread the connections over the loops.
    let loop_conns = if setup.threads > 1 {
        let counts = server.loop_connections().map_err(|e| context(&e))?;
        let total: usize = counts.iter().sum();
        if total != n {
            eprintln!(
                "{}",
                context(&format!("the loops report {total} open connections"))
            );
        }
        counts
    } else {
        Vec::new()
    };

    let mut results = Vec::new();
    for cell in cells {
        let plan = MessagePlan {
            senders: cell.k,
            messages_per_sender: cell.m,
            pacing: match cell.mode {
                Mode::Fast { per_sender, .. } => Pacing::Window { window: per_sender },
                Mode::Rate { per_sec } => Pacing::Rate { per_sec },
            },
            timeout: env.run_timeout,
        };
        let mut attempt = 0;
        let (stats, loop_cpu, writes) = loop {
            // wshub: each loop's CPU time and the server's write calls, read with the
            // server's CPU time at the start and the end. (wshub writes with writev, which
            // /proc/PID/io counts; the floor's and tokio's `send` calls it does not.)
            let mut loop_times: Vec<Vec<Duration>> = Vec::new();
            let mut write_calls: Vec<Option<u64>> = Vec::new();
            let outcome = pool.run_messages(&plan, &env.clock, &mut || {
                if kind.is_wshub() {
                    loop_times.push(server.loop_cpu_times().unwrap_or_default());
                    write_calls.push(server.write_syscalls());
                }
                server.cpu_time()
            });
            let writes = match write_calls[..] {
                [Some(before), Some(after)] => Some(after.saturating_sub(before)),
                _ => None,
            };
            let loop_cpu: Vec<Duration> = match &loop_times[..] {
                [before, after] if before.len() == after.len() => after
                    .iter()
                    .zip(before)
                    .map(|(a, b)| a.saturating_sub(*b))
                    .collect(),
                _ => Vec::new(),
            };
            let stats = match outcome {
                Ok(stats) => stats,
                Err(e) => {
                    let what =
                        format!("{}: {}", cell.describe(), with_server_state(e, &mut server));
                    return Err(context(&what));
                }
            };
            let noise = sys::proc_stat_share(stats.foreign_cpu, stats.wall).unwrap_or(0.0);
            // Quick mode checks correctness only: a disturbed run is as good as any.
            if noise <= report::NOISY_SHARE || attempt == env.noisy_retries {
                break (stats, loop_cpu, writes);
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
            setup,
            repeat,
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
            loop_conns: loop_conns.clone(),
            loop_cpu,
            server_writes: writes,
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

/// Adds whether the server is still running (and its log) to an error. A wshub server
/// logs its counters first (SIGUSR1: frames dropped, inboxes full).
fn with_server_state(error: String, server: &mut ServerProcess) -> String {
    let counters = server.kind.is_wshub() && server.loop_connections().is_ok();
    match server.check_alive() {
        Ok(()) => format!(
            "{error}\n(the {} server, pid {}, was still running; its log: {}){}",
            server.kind,
            server.pid(),
            server.log_path.display(),
            if counters {
                server.log_tail()
            } else {
                String::new()
            }
        ),
        Err(exited) => format!("{error}\n{exited}"),
    }
}

/// The target directory this binary was built in (`<target>/<profile>/deps/`
/// under both `cargo bench` and `cargo test`, honouring CARGO_TARGET_DIR):
/// where logs and every report but the committed one go.
fn target_dir(manifest_dir: &Path) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let deps = exe.parent()?;
            (deps.file_name()? == "deps").then_some(())?;
            Some(deps.parent()?.parent()?.to_path_buf())
        })
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
    /// Whether wshub ran with several loops too.
    several_loops: bool,
    repeats: usize,
    commit: String,
    date: String,
    elapsed: Duration,
    noise: String,
}

/// How much other processes ran during the measured runs.
fn noise_summary(results: &[RunResult], quick: bool) -> String {
    let mut shares: Vec<f64> = results
        .iter()
        .filter_map(|r| r.foreign_cpu_share())
        .map(|share| share * 100.0)
        .collect();
    shares.sort_by(f64::total_cmp);
    let (Some(median), Some(max)) = (shares.get(shares.len() / 2), shares.last()) else {
        return "not measured (all runs shorter than /proc/stat can resolve)".to_string();
    };
    let handling = if quick {
        "quick mode does not repeat disturbed runs".to_string()
    } else {
        format!(
            "a run above {:.0}% was repeated (up to {NOISY_RETRIES} times) and left out of the \
             medians if it stayed that noisy",
            report::NOISY_SHARE * 100.0
        )
    };
    format!(
        "other processes used a median {median:.0}% (max {max:.0}%) of one CPU during the \
         runs long enough to tell; {handling}"
    )
}

fn machine_line(f: &ReportFacts) -> String {
    format!(
        "{} logical CPUs, {}; {}",
        f.cores,
        f.cpu_model,
        match (f.pinned, f.several_loops) {
            (true, false) => "server pinned to CPU 0 (taskset), load generator to CPU 1",
            (true, true) => {
                "server pinned to CPU 0 (taskset), load generator to CPU 1; a wshub server \
                 with several loops runs either all of them on CPU 0 (threads \"N (CPU 0)\") \
                 or on CPUs 0 and 1, sharing CPU 1 with the load generator (\"N (CPUs 0+1)\")"
            }
            (false, _) => "processes not pinned",
        }
    )
}

fn quick_markdown(f: &ReportFacts, table: &str) -> String {
    format!(
        "# wshub fan-out benchmark (quick, correctness only)\n\n\
         - date: {}\n- commit: {}\n- machine: {}\n- command: `{}`\n- duration: {:.1} s\n\
         - noise: {}\n\n\
         Quick mode checks that every delivery arrives exactly once, in order, and only \
         in its sender's room; its numbers are too short to compare.\n\n{table}",
        f.date,
        f.commit,
        machine_line(f),
        f.command,
        f.elapsed.as_secs_f64(),
        f.noise
    )
}

/// The report's section on wshub with several loops, when it ran so.
const SEVERAL_LOOPS_TEXT: &str = "## Several loops\n\n\
    wshub also ran as a `Cluster` of several loops (`broadcast --threads N`, one thread \
    per loop, every loop listening on the port with `SO_REUSEPORT`). The machine has two \
    CPUs, one for the server and one for the load generator (which busy-polls: all of \
    its CPU), so the placement is explicit:\n\n\
    - **N (CPU 0)**: every loop pinned to CPU 0, the one CPU a single loop has, and the load \
    generator alone on CPU 1. The same CPU budget as one loop: server CPU per delivery \
    against one loop is what crossing between loops costs (target ≤ 1.1× in the fan-out \
    cells at N=1,000 and 10,000). In the rooms workload a room's 10 members are spread \
    over the loops by the kernel, so most publishes cross (target ≤ 1.2×).\n\
    - **N (CPUs 0+1)**: the server may run on both CPUs (`taskset -c 0,1`, the scheduler \
    places the loops); the load generator stays pinned to CPU 1 and shares it with \
    whatever loop runs there. Deliveries/s against one loop show what a second CPU gives \
    here, with the load generator as its competitor: on a 2-CPU machine this is not a \
    clean scaling measurement.\n\n\
    With several loops the example's inboxes hold 65,536 commands (`Config::handle_capacity`; \
    the default 4,096 dropped cross-loop publishes of the rooms workload, up to 32,000 \
    messages in flight, when other processes slowed a loop). After connecting, the bench \
    asks the server for each loop's open connections (SIGUSR1), to show how evenly the \
    kernel's hash spread them, and it reads each loop thread's CPU time \
    (/proc/PID/task/TID/schedstat) and the server's writev calls (/proc/PID/io) over \
    every run.\n\n";

fn full_markdown(f: &ReportFacts, table: &str, targets: &str, svg_link: &str) -> String {
    let windows: Vec<String> = WINDOWS.iter().map(|w| w.to_string()).collect();
    format!(
        "# wshub fan-out benchmark\n\n\
         - date: {date}\n\
         - commit: {commit}\n\
         - machine: {machine}\n\
         - command: `{command}` (took {secs:.0} s)\n\
         - each cell ran {repeats} time(s) per server; the tables show medians\n\
         - noise: {noise}\n\n\
         ![deliveries per second and server CPU per delivery vs N]({svg_link})\n\n\
         ## Workload\n\n\
         N WebSocket clients connect to the server; K of them send M text messages of \
         64 bytes each (sender index, sequence number and send timestamp in fixed-width \
         ASCII). Every client checks that it receives every message meant for it exactly \
         once and in order per sender, and no other; any loss, duplicate, reordering or \
         stray delivery fails the benchmark.\n\n\
         - **fan-out, fast**: the server broadcasts every message to all N clients, the \
         sender included, so a cell has N×K×M deliveries; M is chosen so that this is \
         about {full} for every cell. As fast as possible with flow control: at most W \
         messages in flight (W = {windows}), split over the K senders; a sender's \
         message stops counting once it has reached all N clients.\n\
         - **fan-out, fixed rate**: one sender sends {rate} messages/s (one every \
         {interval} ms) for {rate_secs} s at N=10000, the latency cell. Unlike fast mode, \
         every delivery is a write syscall of its own here (nothing queues up to batch), \
         which costs a server ~8–11 µs on this machine, so one message to 10,000 clients \
         is a sweep of ~100 ms. At this rate the sweeps do not overlap and no server \
         saturates, so the latency is that of one broadcast sweep, not of a growing queue \
         (at 100 msg/s no server keeps up at N=10000).\n\
         - **rooms**: N={rooms_n} clients in {rooms} rooms of {room_size} (`GET \
         /?room=NAME`; client c is in room c mod {rooms}, so a room's members are spread \
         over the connection table as clients joining in random order would be), one \
         sender per room, M={rooms_m}: every message goes to the {room_size} members of \
         its room, the sender included ({rooms_deliveries} deliveries, as in a fan-out \
         cell). Each sender has at most {per_sender} messages in flight ({rooms_window} in \
         all), so a client has up to {per_sender} frames on their way, as in the \
         window-{per_sender} fan-out cells: both workloads batch frames into writes alike, \
         and the figures compare the work per message (finding the recipients, copying) \
         rather than write syscalls (with 8 per sender the floor spent twice the CPU per \
         delivery, nearly all in the kernel's send path).\n\n\
         The load generator is this bench binary: one thread, one mio event loop, \
         hand-written client handshakes and frame parsing, connections spread over source \
         addresses 127.0.0.x, at most {concurrency} handshakes in flight (below tokio's \
         listen backlog of 128). It busy-polls (epoll with zero timeout) so that its own \
         wake-up latency stays out of the numbers; its CPU time is therefore always ~100%, \
         and the tables show instead how busy it was (time outside empty polls).\n\n\
         ## Servers\n\n\
         - **floor**: the least a broadcast server on mio has to do, written by hand for \
         this benchmark (`benches/fanout/floor.rs`): single-threaded, minimal handshake, \
         minimal frame parsing (unmask, text frames only, no protocol checks, no limits); \
         per event-loop turn every message is copied, encoded once, into one contiguous \
         buffer per recipient, and each recipient's buffer is written with one write at the \
         end of the turn. What wshub costs above it is overhead.\n\
         - **wshub**: `target/release/examples/broadcast` of this crate (one mio loop; \
         with several, `--threads N`: a `Cluster` of N loops, see the `threads` column); \
         rooms are topics (`?room=NAME` subscribes, messages are published to it).\n\
         - **wshub-filter**: the same example with `--filter`: rooms by \
         `broadcast_to(filter)`, a walk over all connections per message (rooms workload \
         only).\n\
         - **tokio**: the typical tokio + tokio-tungstenite 0.30 broadcast server with \
         tungstenite's default configuration, on a current-thread runtime: per client an \
         unbounded mpsc channel drained by a writer task (feed all queued, then flush), a \
         registry of senders (and a map room → members' senders), each text message cloned \
         into every recipient's channel (`benches/fanout/baseline.rs`).\n\n\
         All set TCP_NODELAY and honour `?room=NAME` the same way (the first `room` \
         parameter, percent-decoded; a client without one sends to everyone).\n\n\
         ## Columns\n\n\
         - deliveries/s: deliveries divided by the wall time from the first send to the \
         last delivery.\n\
         - server CPU µs/delivery: the server process's user+system CPU time over that \
         interval (its CPU-time clock), divided by the deliveries.\n\
         - X / floor, X / tokio: server X's figure divided by the floor's or tokio's.\n\
         - latency: receive time minus the send timestamp in the message, over all \
         deliveries at all clients (hdrhistogram). In fast mode it includes queueing behind \
         the flow-control window.\n\
         - idle RSS/conn: (server VmRSS after connecting N clients and settling {settle} ms \
         − VmRSS before connecting) / N.\n\
         - connect N: time to open N connections and finish all handshakes.\n\
         - server CPU / loadgen busy: the server's CPU time over the wall time, and the share \
         of the wall time the load generator spent outside empty polls; whichever is near \
         100% was the bottleneck.\n\
         - threads: wshub's event loops and the CPUs they may run on. The floor, tokio and \
         wshub-filter always run one thread on CPU 0; in the rows of wshub with several \
         loops their figures are repeated, for the ratios.\n\n{several}\
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
        windows = windows.join(" and "),
        rate = FULL_RATE.per_sec,
        interval = 1000.0 / FULL_RATE.per_sec,
        rate_secs = FULL_RATE.secs,
        rooms_n = FULL_ROOMS.n,
        rooms = FULL_ROOMS.rooms,
        room_size = FULL_ROOMS.n / FULL_ROOMS.rooms,
        rooms_m = FULL_ROOMS.m.unwrap_or(0),
        rooms_deliveries =
            report::si((FULL_ROOMS.n as u64 * u64::from(FULL_ROOMS.m.unwrap_or(0))) as f64),
        per_sender = FULL_ROOMS.per_sender,
        rooms_window = FULL_ROOMS.per_sender as usize * FULL_ROOMS.rooms,
        concurrency = CONNECT_CONCURRENCY,
        settle = SETTLE.as_millis(),
        several = if f.several_loops {
            SEVERAL_LOOPS_TEXT
        } else {
            ""
        },
    )
}
