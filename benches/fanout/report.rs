//! Results: per-run measurements, medians over repeats, the Markdown tables,
//! the target checks and the SVG chart.
//!
//! Every server's figures are shown beside the floor's and tokio's, with
//! the ratios to both: the floor says how much of a figure is overhead above
//! the unavoidable work, tokio how it compares with the typical Rust server.

use std::fmt::Write as _;
use std::time::Duration;

use crate::server::ServerKind;

/// How the senders of a cell are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// As fast as possible, with at most `window` messages in flight over
    /// all senders: each has at most `per_sender` messages that have not yet
    /// reached all their recipients.
    Fast { window: u32, per_sender: u32 },
    /// Fixed offered rate, messages per second over all senders.
    Rate { per_sec: f64 },
}

impl Mode {
    pub fn label(&self) -> String {
        match *self {
            Mode::Fast { window, per_sender } => {
                format!("fast, window {window} ({per_sender}/sender)")
            }
            Mode::Rate { per_sec } => format!("fixed rate {per_sec} msg/s"),
        }
    }

    pub fn is_fast(&self) -> bool {
        matches!(self, Mode::Fast { .. })
    }

    fn window(&self) -> Option<u32> {
        match *self {
            Mode::Fast { window, .. } => Some(window),
            Mode::Rate { .. } => None,
        }
    }
}

/// One benchmark configuration, run against every server.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cell {
    /// Connected clients.
    pub n: usize,
    /// Rooms the clients are split into (evenly); None: no rooms, every
    /// message goes to all N clients.
    pub rooms: Option<usize>,
    /// Senders among them (spread evenly over the rooms).
    pub k: usize,
    /// Messages per sender.
    pub m: u32,
    pub mode: Mode,
}

impl Cell {
    /// Recipients of every message: the sender's room, or all N clients.
    pub fn audience(&self) -> usize {
        self.n / self.rooms.unwrap_or(1).max(1)
    }

    pub fn deliveries(&self) -> u64 {
        self.audience() as u64 * self.k as u64 * u64::from(self.m)
    }

    pub fn describe(&self) -> String {
        let rooms = self.rooms.map_or(String::new(), |r| {
            format!(" ({r} rooms of {})", self.audience())
        });
        format!(
            "N={}{rooms} K={} M={} {}",
            self.n,
            self.k,
            self.m,
            self.mode.label()
        )
    }
}

/// Where a server's threads may run (`taskset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Placement {
    /// All on CPU 0; the load generator has CPU 1 to itself.
    Cpu0,
    /// On CPUs 0 and 1, as the scheduler sees fit; the load generator, pinned to CPU 1,
    /// shares it.
    Spread,
    /// Not pinned (a machine with one CPU, or no taskset).
    Unpinned,
}

/// How a server runs: its event loops (threads) and where they may run. The floor and
/// tokio always run one thread, placed like a wshub server with one loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Setup {
    pub threads: usize,
    pub placement: Placement,
}

impl Setup {
    /// The text of the `threads` column.
    pub fn label(&self) -> String {
        match self.placement {
            Placement::Cpu0 => format!("{} (CPU 0)", self.threads),
            Placement::Spread => format!("{} (CPUs 0+1)", self.threads),
            Placement::Unpinned => self.threads.to_string(),
        }
    }
}

/// Measurements of one run of one cell against one server.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub server: ServerKind,
    pub setup: Setup,
    /// Which repeat of the grid (0-based): with the server, N, rooms and setup it names
    /// the session (server process) the run was part of.
    pub repeat: usize,
    pub cell: Cell,
    pub deliveries: u64,
    pub wall: Duration,
    pub server_cpu: Duration,
    /// Load generator CPU time (~wall: it busy-polls).
    pub loadgen_cpu: Duration,
    /// Load generator time outside empty polls: how busy it really was.
    pub loadgen_busy: Duration,
    /// CPU time used by other processes during the run (noise).
    pub foreign_cpu: Duration,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// Idle server RSS growth per connection after connecting N clients.
    pub rss_per_conn: f64,
    pub connect_time: Duration,
    pub connect_loadgen_busy: Duration,
    pub connect_listen_overflows: u64,
    pub max_send_lag: Duration,
    /// Open connections on each of the server's loops after connecting (wshub with
    /// several loops; empty otherwise).
    pub loop_conns: Vec<usize>,
    /// CPU time of each of the server's loops over the run (wshub; empty otherwise).
    pub loop_cpu: Vec<Duration>,
    /// Write-type system calls of the server over the run (wshub, whose writev calls
    /// /proc/PID/io counts; None otherwise).
    pub server_writes: Option<u64>,
}

impl RunResult {
    pub fn deliveries_per_sec(&self) -> f64 {
        self.deliveries as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Deliveries per write call of the server: how many frames it batches into one
    /// write (NaN if not measured).
    pub fn deliveries_per_write(&self) -> f64 {
        self.server_writes
            .map_or(f64::NAN, |w| self.deliveries as f64 / w.max(1) as f64)
    }

    pub fn cpu_us_per_delivery(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / (self.deliveries.max(1) as f64)
    }

    pub fn server_cpu_share(&self) -> f64 {
        self.server_cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }

    pub fn loadgen_cpu_share(&self) -> f64 {
        self.loadgen_cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }

    /// Share of a CPU other processes used; `None` if the run was too short to tell.
    pub fn foreign_cpu_share(&self) -> Option<f64> {
        crate::sys::proc_stat_share(self.foreign_cpu, self.wall)
    }

    pub fn loadgen_busy_share(&self) -> f64 {
        self.loadgen_busy.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }

    /// One line for the progress log.
    pub fn summary_line(&self) -> String {
        format!(
            "{:<12} threads {} {}: {}/s, server {:.3} µs CPU/delivery, latency p50 {} p99 {} \
             max {}, server CPU {:.0}%, loadgen CPU {:.0}% busy {:.0}%, RSS/conn {}, connect {} \
             (loadgen busy {:.0}%, {} listen-queue overflows), other processes {} CPU{}{}{}",
            self.server.name(),
            self.setup.label(),
            self.cell.describe(),
            si(self.deliveries_per_sec()),
            self.cpu_us_per_delivery(),
            latency(self.p50_ns as f64),
            latency(self.p99_ns as f64),
            latency(self.max_ns as f64),
            self.server_cpu_share() * 100.0,
            self.loadgen_cpu_share() * 100.0,
            self.loadgen_busy_share() * 100.0,
            bytes(self.rss_per_conn),
            millis(self.connect_time.as_secs_f64()),
            self.connect_loadgen_busy.as_secs_f64() / self.connect_time.as_secs_f64().max(1e-9)
                * 100.0,
            self.connect_listen_overflows,
            self.foreign_cpu_share()
                .map_or("n/a".to_string(), |s| format!("{:.0}%", s * 100.0)),
            if self.server_writes.is_some() {
                format!(", {:.1} deliveries/write", self.deliveries_per_write())
            } else {
                String::new()
            },
            match self.cell.mode {
                Mode::Rate { .. } =>
                    format!(", max send lag {}", millis(self.max_send_lag.as_secs_f64())),
                Mode::Fast { .. } => String::new(),
            },
            if self.loop_cpu.len() > 1 {
                format!(
                    ", connections per loop {}, CPU per loop {}",
                    join(&self.loop_conns, " / "),
                    shares_text(&self.loop_cpu_shares())
                )
            } else {
                String::new()
            }
        )
    }

    /// Each loop's share of the CPU time of all loops over the run.
    pub fn loop_cpu_shares(&self) -> Vec<f64> {
        shares(self.loop_cpu.iter().map(Duration::as_secs_f64))
    }
}

/// Each value's share of their sum.
fn shares(values: impl Iterator<Item = f64> + Clone) -> Vec<f64> {
    let total: f64 = values.clone().sum();
    values.map(|v| v / total.max(1e-12)).collect()
}

/// Shares as whole percentages: "51% / 49%".
fn shares_text(shares: &[f64]) -> String {
    let text: Vec<String> = shares
        .iter()
        .map(|s| format!("{:.0}%", s * 100.0))
        .collect();
    text.join(" / ")
}

fn join<T: ToString>(values: &[T], sep: &str) -> String {
    let text: Vec<String> = values.iter().map(T::to_string).collect();
    text.join(sep)
}

/// A run during which other processes used more than this share of a CPU
/// counts as disturbed.
pub const NOISY_SHARE: f64 = 0.25;

/// Medians over the repeats of one (cell, server).
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub deliveries_per_sec: f64,
    pub cpu_us_per_delivery: f64,
    pub p50_ns: f64,
    pub p99_ns: f64,
    pub max_ns: f64,
    pub rss_per_conn: f64,
    pub connect_secs: f64,
    pub server_cpu_share: f64,
    pub loadgen_busy_share: f64,
    /// NaN if not measured.
    pub deliveries_per_write: f64,
}

impl Summary {
    /// Medians over `runs`. Message-phase numbers leave out disturbed runs
    /// (unless all were); the per-session numbers (idle RSS, connect time)
    /// come from every session, so they agree across the cells of one N.
    pub fn of(runs: &[&RunResult]) -> Option<Summary> {
        if runs.is_empty() {
            return None;
        }
        let all = runs;
        let quiet: Vec<&RunResult> = runs
            .iter()
            .copied()
            .filter(|r| r.foreign_cpu_share().is_none_or(|s| s <= NOISY_SHARE))
            .collect();
        let runs = if quiet.is_empty() { runs } else { &quiet[..] };
        let med = |f: &dyn Fn(&RunResult) -> f64| median(runs.iter().map(|r| f(r)).collect());
        let med_all = |f: &dyn Fn(&RunResult) -> f64| median(all.iter().map(|r| f(r)).collect());
        Some(Summary {
            deliveries_per_sec: med(&|r| r.deliveries_per_sec()),
            cpu_us_per_delivery: med(&|r| r.cpu_us_per_delivery()),
            p50_ns: med(&|r| r.p50_ns as f64),
            p99_ns: med(&|r| r.p99_ns as f64),
            max_ns: med(&|r| r.max_ns as f64),
            rss_per_conn: med_all(&|r| r.rss_per_conn),
            connect_secs: med_all(&|r| r.connect_time.as_secs_f64()),
            server_cpu_share: med(&|r| r.server_cpu_share()),
            loadgen_busy_share: med(&|r| r.loadgen_busy_share()),
            deliveries_per_write: med(&|r| r.deliveries_per_write()),
        })
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// A row of the tables: one cell and one setup of the wshub servers, the medians of every
/// server that ran it. The floor and tokio have one thread: in a row of wshub with several
/// loops their figures are those of their one setup, for the ratios.
pub struct Row {
    pub cell: Cell,
    pub setup: Setup,
    pub summaries: Vec<(ServerKind, Summary)>,
}

impl Row {
    pub fn get(&self, kind: ServerKind) -> Option<Summary> {
        self.summaries
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, s)| *s)
    }

    /// `kind`'s figure divided by `base`'s.
    fn ratio(&self, kind: ServerKind, base: ServerKind, f: fn(&Summary) -> f64) -> Option<f64> {
        let (v, b) = (f(&self.get(kind)?), f(&self.get(base)?));
        (b > 0.0).then(|| v / b)
    }
}

/// A row per cell and setup: the one-thread setup first, then the others of the run.
pub fn rows(cells: &[Cell], results: &[RunResult]) -> Vec<Row> {
    let mut setups: Vec<Setup> = Vec::new();
    for r in results {
        if !setups.contains(&r.setup) {
            setups.push(r.setup);
        }
    }
    setups.sort();
    let mut rows = Vec::new();
    for cell in cells {
        for &setup in &setups {
            let summaries: Vec<(ServerKind, Summary)> = ServerKind::ALL
                .into_iter()
                .filter_map(|kind| {
                    let runs: Vec<&RunResult> = results
                        .iter()
                        .filter(|r| r.server == kind && r.cell == *cell)
                        .filter(|r| r.setup == setup || (!kind.is_wshub() && r.setup.threads == 1))
                        .collect();
                    Some((kind, Summary::of(&runs)?))
                })
                .collect();
            let wshub = summaries.iter().any(|(kind, _)| kind.is_wshub());
            if (setup.threads == 1 && !summaries.is_empty()) || wshub {
                rows.push(Row {
                    cell: *cell,
                    setup,
                    summaries,
                });
            }
        }
    }
    rows
}

/// A figure of the tables: how to read it from a summary and print it.
#[derive(Clone, Copy)]
struct Figure {
    title: &'static str,
    value: fn(&Summary) -> f64,
    fmt: fn(f64) -> String,
}

const CPU: Figure = Figure {
    title: "server CPU µs/delivery",
    value: |s| s.cpu_us_per_delivery,
    fmt: |v| format!("{v:.3}"),
};
const RATE: Figure = Figure {
    title: "deliveries/s",
    value: |s| s.deliveries_per_sec,
    fmt: si,
};
const RSS: Figure = Figure {
    title: "idle RSS/conn",
    value: |s| s.rss_per_conn,
    fmt: bytes,
};
const CONNECT: Figure = Figure {
    title: "connect N",
    value: |s| s.connect_secs,
    fmt: millis,
};

fn latencies(s: &Summary) -> String {
    format!(
        "{} / {} / {}",
        latency(s.p50_ns),
        latency(s.p99_ns),
        latency(s.max_ns)
    )
}

fn load(s: &Summary) -> String {
    format!(
        "{:.0}% / {:.0}%",
        s.server_cpu_share * 100.0,
        s.loadgen_busy_share * 100.0
    )
}

/// The servers that have a summary in any of `rows`, in column order.
fn servers_in(rows: &[&Row]) -> Vec<ServerKind> {
    ServerKind::ALL
        .into_iter()
        .filter(|&kind| rows.iter().any(|r| r.get(kind).is_some()))
        .collect()
}

/// The ratios a server's figure is shown with: to the floor and to tokio
/// (neither for those two themselves, and only when they ran).
fn ratio_bases(kind: ServerKind, servers: &[ServerKind]) -> Vec<ServerKind> {
    [ServerKind::Floor, ServerKind::Baseline]
        .into_iter()
        .filter(|&base| {
            servers.contains(&base)
                && kind != ServerKind::Floor
                && (kind != ServerKind::Baseline || base == ServerKind::Floor)
        })
        .collect()
}

/// The header rows of a Markdown table: numbers right-aligned, the columns
/// `is_text` picks by header (mode, latencies, shares) left-aligned.
fn table_header(t: &mut String, headers: &[String], is_text: &dyn Fn(&str) -> bool) {
    let _ = writeln!(t, "| {} |", headers.join(" | "));
    let aligns: Vec<&str> = headers
        .iter()
        .map(|h| if is_text(h) { "---" } else { "---:" })
        .collect();
    let _ = writeln!(t, "|{}|", aligns.join("|"));
}

/// A table of one figure: a row per cell, a column per server, each server
/// followed by its ratios to the floor and to tokio.
fn figure_table(
    rows: &[&Row],
    lead: &[&str],
    lead_of: fn(&Row) -> Vec<String>,
    fig: Figure,
) -> String {
    let servers = servers_in(rows);
    let mut headers: Vec<String> = lead.iter().map(|h| h.to_string()).collect();
    for &kind in &servers {
        headers.push(kind.name().to_string());
        for base in ratio_bases(kind, &servers) {
            headers.push(format!("{kind} / {base}"));
        }
    }
    let mut t = String::new();
    table_header(&mut t, &headers, &|h| h == "mode" || h == "threads");
    for row in rows {
        let mut cells = lead_of(row);
        for &kind in &servers {
            cells.push(
                row.get(kind)
                    .map_or("n/a".into(), |s| (fig.fmt)((fig.value)(&s))),
            );
            for base in ratio_bases(kind, &servers) {
                cells.push(
                    row.ratio(kind, base, fig.value)
                        .map_or("n/a".into(), ratio_text),
                );
            }
        }
        let _ = writeln!(t, "| {} |", cells.join(" | "));
    }
    t
}

fn cell_lead(row: &Row) -> Vec<String> {
    vec![
        row.cell.n.to_string(),
        row.cell.k.to_string(),
        row.cell.m.to_string(),
        row.cell.mode.label(),
        row.setup.label(),
    ]
}

const CELL_LEAD: [&str; 5] = ["N", "K", "M", "mode", "threads"];

/// Latency and load of every server, a row per cell.
fn detail_table(rows: &[&Row]) -> String {
    let servers = servers_in(rows);
    let mut headers: Vec<String> = CELL_LEAD.iter().map(|h| h.to_string()).collect();
    for title in ["latency p50 / p99 / max", "server CPU / loadgen busy"] {
        for (i, kind) in servers.iter().enumerate() {
            headers.push(if i == 0 {
                format!("{title}: {kind}")
            } else {
                kind.to_string()
            });
        }
    }
    let mut t = String::new();
    table_header(&mut t, &headers, &|h| !["N", "K", "M"].contains(&h));
    for row in rows {
        let mut cells = cell_lead(row);
        for f in [latencies as fn(&Summary) -> String, load] {
            for &kind in &servers {
                cells.push(row.get(kind).map_or("n/a".into(), |s| f(&s)));
            }
        }
        let _ = writeln!(t, "| {} |", cells.join(" | "));
    }
    t
}

/// The rooms workload of one cell: a row per server and setup, a column per figure.
/// `rows` are the cell's rows, the one-thread setup first.
fn rooms_table(rows: &[&Row]) -> String {
    let Some(single) = rows.iter().find(|r| r.setup.threads == 1).or(rows.first()) else {
        return String::new();
    };
    let bases = [ServerKind::Floor, ServerKind::Baseline];
    let mut headers = vec!["server".to_string(), "threads".to_string()];
    for fig in [RATE, CPU, RSS] {
        headers.push(fig.title.to_string());
        headers.extend(bases.iter().map(|b| format!("/ {b}")));
    }
    headers.extend([
        "latency p50 / p99 / max".to_string(),
        "server CPU / loadgen busy".to_string(),
        CONNECT.title.to_string(),
    ]);
    let mut t = String::new();
    table_header(&mut t, &headers, &|h| {
        h == "server" || h == "threads" || h.starts_with("latency") || h.starts_with("server CPU /")
    });
    // Each server in each of its setups: the floor and tokio once, in the one-thread row.
    let mut lines: Vec<(&Row, ServerKind, Summary)> = Vec::new();
    for kind in ServerKind::ALL {
        for row in rows {
            if kind.is_wshub() || row.setup == single.setup {
                lines.extend(row.get(kind).map(|s| (*row, kind, s)));
            }
        }
    }
    for (row, kind, s) in &lines {
        let mut cells = vec![kind.to_string(), row.setup.label()];
        for fig in [RATE, CPU, RSS] {
            cells.push((fig.fmt)((fig.value)(s)));
            for &base in &bases {
                let ratio = (*kind != base)
                    .then(|| row.ratio(*kind, base, fig.value))
                    .flatten();
                cells.push(ratio.map_or("–".into(), ratio_text));
            }
        }
        cells.extend([latencies(s), load(s), (CONNECT.fmt)(s.connect_secs)]);
        let _ = writeln!(t, "| {} |", cells.join(" | "));
    }
    if let Some(r) = single.ratio(ServerKind::WshubFilter, ServerKind::Wshub, CPU.value) {
        let _ = writeln!(
            t,
            "\nServer CPU per delivery, wshub-filter / wshub: {} (how many times cheaper \
             topics are than the `broadcast_to` walk).",
            ratio_text(r)
        );
    }
    t
}

/// All result tables in Markdown: the fan-out cells by figure, idle memory
/// and connect time per N, then the rooms workload.
pub fn markdown_tables(rows: &[Row]) -> String {
    let fanout: Vec<&Row> = rows.iter().filter(|r| r.cell.rooms.is_none()).collect();
    let mut t = String::new();
    if !fanout.is_empty() {
        t.push_str("### Fan-out: server CPU µs per delivery (lower is better)\n\n");
        t.push_str(&figure_table(&fanout, &CELL_LEAD, cell_lead, CPU));
        t.push_str("\n### Fan-out: deliveries per second (higher is better)\n\n");
        t.push_str(&figure_table(&fanout, &CELL_LEAD, cell_lead, RATE));
        t.push_str("\n### Fan-out: latency, and who was busy\n\n");
        t.push_str(&detail_table(&fanout));
        // Idle RSS and connect time are per session: one row per N and setup.
        let mut per_n: Vec<&Row> = Vec::new();
        for row in &fanout {
            if !per_n
                .iter()
                .any(|r| r.cell.n == row.cell.n && r.setup == row.setup)
            {
                per_n.push(row);
            }
        }
        let n_lead: fn(&Row) -> Vec<String> = |r| vec![r.cell.n.to_string(), r.setup.label()];
        t.push_str("\n### Fan-out: idle server memory per connection\n\n");
        t.push_str(&figure_table(&per_n, &["N", "threads"], n_lead, RSS));
        t.push_str("\n### Fan-out: time to connect N clients\n\n");
        t.push_str(&figure_table(&per_n, &["N", "threads"], n_lead, CONNECT));
    }
    let mut rooms_cells: Vec<Cell> = Vec::new();
    for row in rows.iter().filter(|r| r.cell.rooms.is_some()) {
        if !rooms_cells.contains(&row.cell) {
            rooms_cells.push(row.cell);
        }
    }
    for cell in rooms_cells {
        let _ = writeln!(t, "\n### Rooms: {}\n", cell.describe());
        let of_cell: Vec<&Row> = rows.iter().filter(|r| r.cell == cell).collect();
        t.push_str(&rooms_table(&of_cell));
    }
    t
}

/// wshub's summaries in `setup` and with one thread, for the same cell.
fn with_single(rows: &[Row], row: &Row, kind: ServerKind) -> Option<(Summary, Summary)> {
    let single = rows
        .iter()
        .find(|r| r.cell == row.cell && r.setup.threads == 1)?;
    Some((row.get(kind)?, single.get(kind)?))
}

/// wshub with several loops against one loop: a row per cell and setup (one loop included, as the reference), with the CPU split between the loops;
/// then the connections each loop had after connecting. Empty when every server ran one
/// loop.
pub fn threads_markdown(rows: &[Row], results: &[RunResult]) -> String {
    if rows.iter().all(|r| r.setup.threads == 1) {
        return String::new();
    }
    let mut t = String::from(
        "### Several loops: wshub `--threads` against one loop\n\n\
         Ratios are to wshub with one loop in the same cell (lower CPU and higher \
         deliveries/s are better). Deliveries / write: deliveries over the server's writev \
         calls (/proc/PID/io syscw), how many frames a write carries on average. CPU per \
         loop: each loop's share of the loops' CPU time over the run (median per \
         loop).\n\n",
    );
    let headers: Vec<String> = [
        "N",
        "K",
        "M",
        "mode",
        "threads",
        "server CPU µs/delivery",
        "/ 1 loop",
        "deliveries/s",
        "/ 1 loop",
        "deliveries / write",
        "server CPU / loadgen busy",
        "CPU per loop",
    ]
    .map(String::from)
    .to_vec();
    table_header(&mut t, &headers, &|h| {
        [
            "mode",
            "threads",
            "server CPU / loadgen busy",
            "CPU per loop",
        ]
        .contains(&h)
    });
    // Only the cells wshub ran with several loops.
    let multi = |row: &Row| {
        rows.iter()
            .any(|r| r.cell == row.cell && r.setup.threads > 1)
    };
    for row in rows.iter().filter(|r| multi(r)) {
        let Some((s, single)) = with_single(rows, row, ServerKind::Wshub) else {
            continue;
        };
        let (cpu, rate) = if row.setup.threads == 1 {
            ("–".to_string(), "–".to_string())
        } else {
            (
                ratio_text(s.cpu_us_per_delivery / single.cpu_us_per_delivery),
                ratio_text(s.deliveries_per_sec / single.deliveries_per_sec),
            )
        };
        // Each loop's median share, over the runs that could read them all.
        let splits: Vec<Vec<f64>> = results
            .iter()
            .filter(|r| r.server == ServerKind::Wshub && r.cell == row.cell)
            .filter(|r| r.setup == row.setup && r.loop_cpu.len() == row.setup.threads)
            .map(RunResult::loop_cpu_shares)
            .collect();
        let split = if row.setup.threads > 1 && !splits.is_empty() {
            let medians: Vec<f64> = (0..row.setup.threads)
                .map(|i| median(splits.iter().map(|split| split[i]).collect()))
                .collect();
            shares_text(&medians)
        } else {
            "–".to_string()
        };
        let mut cells = cell_lead(row);
        cells.extend([
            (CPU.fmt)(s.cpu_us_per_delivery),
            cpu,
            (RATE.fmt)(s.deliveries_per_sec),
            rate,
            if s.deliveries_per_write.is_finite() {
                format!("{:.1}", s.deliveries_per_write)
            } else {
                "–".to_string()
            },
            load(&s),
            split,
        ]);
        let _ = writeln!(t, "| {} |", cells.join(" | "));
    }
    // Scaling: what a second CPU gives, in the largest broadcast cells.
    let spread: Vec<String> = rows
        .iter()
        .filter(|r| r.setup.placement == Placement::Spread && r.cell.rooms.is_none())
        .filter(|r| r.cell.mode.is_fast())
        .filter(|r| Some(r.cell.n) == rows.iter().map(|r| r.cell.n).max())
        .filter_map(|r| {
            let (s, single) = with_single(rows, r, ServerKind::Wshub)?;
            Some(format!(
                "K={} W={}: {}×",
                r.cell.k,
                r.cell.mode.window().unwrap_or(0),
                ratio_text(s.deliveries_per_sec / single.deliveries_per_sec)
            ))
        })
        .collect();
    if !spread.is_empty() {
        let _ = writeln!(
            t,
            "\nScaling, wshub deliveries/s on CPUs 0+1 (the load generator sharing CPU 1) / \
             one loop on CPU 0, fan-out at the largest N: {}.",
            spread.join(", ")
        );
    }
    t.push_str(&balance_table(results));
    t
}

/// How the kernel spread the connections over the loops: per session (server process)
/// with several loops, the open connections of each loop once all N had connected.
fn balance_table(results: &[RunResult]) -> String {
    // One entry per session: its runs all carry the same counts.
    let mut sessions: Vec<&RunResult> = Vec::new();
    for r in results.iter().filter(|r| r.loop_conns.len() > 1) {
        let same = |s: &&RunResult| {
            s.server == r.server
                && s.setup == r.setup
                && s.repeat == r.repeat
                && s.cell.n == r.cell.n
                && s.cell.rooms == r.cell.rooms
        };
        if !sessions.iter().any(same) {
            sessions.push(r);
        }
    }
    if sessions.is_empty() {
        return String::new();
    }
    let mut t = String::from(
        "\n### Several loops: connections per loop (SO_REUSEPORT)\n\n\
         The load generator opens the N connections in a burst (100 handshakes in flight); \
         the kernel picks each one's loop by a hash of its addresses. Per session (server \
         process): every loop's open connections once all N were open; then the smallest \
         and largest share of N any loop had over these sessions.\n\n",
    );
    let headers: Vec<String> = [
        "N",
        "rooms",
        "threads",
        "sessions",
        "connections per loop, per session",
        "smallest share",
        "largest share",
    ]
    .map(String::from)
    .to_vec();
    table_header(&mut t, &headers, &|h| {
        ["rooms", "threads", "connections per loop, per session"].contains(&h)
    });
    let mut groups: Vec<&RunResult> = Vec::new();
    for r in &sessions {
        if !groups.iter().any(|g| {
            g.server == r.server
                && g.setup == r.setup
                && g.cell.n == r.cell.n
                && g.cell.rooms == r.cell.rooms
        }) {
            groups.push(r);
        }
    }
    for g in groups {
        let of_group: Vec<&&RunResult> = sessions
            .iter()
            .filter(|r| {
                r.server == g.server
                    && r.setup == g.setup
                    && r.cell.n == g.cell.n
                    && r.cell.rooms == g.cell.rooms
            })
            .collect();
        let all_shares: Vec<f64> = of_group
            .iter()
            .flat_map(|r| shares(r.loop_conns.iter().map(|&c| c as f64)))
            .collect();
        let lists: Vec<String> = of_group.iter().map(|r| join(&r.loop_conns, "/")).collect();
        let (min, max) = all_shares
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), &s| {
                (lo.min(s), hi.max(s))
            });
        let cells = [
            g.cell.n.to_string(),
            g.cell.rooms.map_or("–".into(), |r| r.to_string()),
            g.setup.label(),
            of_group.len().to_string(),
            lists.join(", "),
            format!("{:.1}%", min * 100.0),
            format!("{:.1}%", max * 100.0),
        ];
        let _ = writeln!(t, "| {} |", cells.join(" | "));
    }
    t
}

/// One target and whether it holds.
pub struct TargetCheck {
    pub text: String,
    pub holds: Option<bool>,
    pub evidence: String,
}

/// Checks the project's performance targets against the tables.
pub fn check_targets(all_rows: &[Row]) -> Vec<TargetCheck> {
    use ServerKind::{Baseline, Floor, Wshub, WshubFilter};
    let mut checks = Vec::new();
    // The single-thread comparison: every server with one thread.
    let rows: Vec<&Row> = all_rows.iter().filter(|r| r.setup.threads == 1).collect();

    // 1. CPU per delivery in the fan-out cells at N = 1000 and 10000 <= 1.0x floor.
    let cpu_rows: Vec<&Row> = rows
        .iter()
        .copied()
        .filter(|r| r.cell.rooms.is_none() && r.cell.mode.is_fast())
        .filter(|r| r.cell.n == 1000 || r.cell.n == 10_000)
        .collect();
    let mut evidence = Vec::new();
    let mut holds = (!cpu_rows.is_empty()).then_some(true);
    for r in &cpu_rows {
        let window = r.cell.mode.window().unwrap_or(0);
        match r.ratio(Wshub, Floor, CPU.value) {
            Some(ratio) => {
                evidence.push(format!(
                    "N={} K={} W={window}: {}×",
                    r.cell.n,
                    r.cell.k,
                    ratio_text(ratio)
                ));
                holds = holds.map(|h| h && ratio <= 1.0);
            }
            None => holds = None,
        }
    }
    checks.push(TargetCheck {
        text: "server CPU per 64-byte delivery ≤ 1.0× floor at N=1,000 and 10,000, K=1 and 10, \
               window 32 and 64"
            .into(),
        holds,
        evidence: evidence.join(", "),
    });

    // 2. Rooms: CPU per delivery <= 1.2x floor, and topics >= 3x cheaper than the filter walk.
    let rooms = rows.iter().find(|r| r.cell.rooms.is_some());
    let vs_floor = rooms.and_then(|r| r.ratio(Wshub, Floor, CPU.value));
    checks.push(TargetCheck {
        text: "rooms workload: server CPU per delivery ≤ 1.2× floor".into(),
        holds: vs_floor.map(|r| r <= 1.2),
        evidence: vs_floor.map_or("n/a".into(), |r| format!("{}×", ratio_text(r))),
    });
    let vs_filter = rooms.and_then(|r| r.ratio(WshubFilter, Wshub, CPU.value));
    checks.push(TargetCheck {
        text: "rooms workload: wshub topics ≥ 3× cheaper than wshub-filter (server CPU per \
               delivery)"
            .into(),
        holds: vs_filter.map(|r| r >= 3.0),
        evidence: vs_filter.map_or("n/a".into(), |r| {
            format!("wshub-filter / wshub = {}", ratio_text(r))
        }),
    });

    // 3. Idle RSS per connection at N = 10000 <= 400 B.
    let rss = rows
        .iter()
        .find(|r| r.cell.n == 10_000 && r.cell.rooms.is_none())
        .and_then(|r| r.get(Wshub));
    checks.push(TargetCheck {
        text: "idle server RSS ≤ 400 B per connection at N=10,000".into(),
        holds: rss.map(|s| s.rss_per_conn <= 400.0),
        evidence: rss.map_or("n/a".into(), |s| {
            format!("{} per connection", bytes(s.rss_per_conn))
        }),
    });

    // 4. p99 latency in the fixed-rate run at N = 10000 no worse than tokio.
    let rate = rows
        .iter()
        .find(|r| r.cell.n == 10_000 && !r.cell.mode.is_fast())
        .and_then(|r| Some((r.get(Wshub)?, r.get(Baseline)?)));
    checks.push(TargetCheck {
        text: "p99 latency in the fixed-rate run at N=10,000 no worse than tokio".into(),
        holds: rate.map(|(w, b)| w.p99_ns <= b.p99_ns),
        evidence: rate.map_or("n/a".into(), |(w, b)| {
            format!("wshub {} vs tokio {}", latency(w.p99_ns), latency(b.p99_ns))
        }),
    });

    // 5. 10,000 connections established in < 1 s.
    let connect = rows
        .iter()
        .find(|r| r.cell.n == 10_000 && r.cell.rooms.is_none())
        .and_then(|r| r.get(Wshub));
    checks.push(TargetCheck {
        text: "10,000 connections established in < 1 s (wshub)".into(),
        holds: connect.map(|s| s.connect_secs < 1.0),
        evidence: connect.map_or("n/a".into(), |s| millis(s.connect_secs)),
    });
    checks.extend(check_threads(all_rows));
    checks
}

/// The targets of wshub with several loops on CPU 0 against one loop (only when the run
/// had such rows): crossing between loops costs ≤ 1.1× the CPU per delivery in the fan-out
/// cells at N=1,000 and 10,000, ≤ 1.2× in the rooms workload (a room's members on every
/// loop).
fn check_threads(rows: &[Row]) -> Vec<TargetCheck> {
    let same_cpu = |r: &&Row| r.setup.threads > 1 && r.setup.placement != Placement::Spread;
    let mut checks = Vec::new();
    type Cells = fn(&Cell) -> bool;
    let targets: [(&str, f64, Cells); 2] = [
        ("fan-out cells at N=1,000 and 10,000", 1.1, |c| {
            c.rooms.is_none() && c.mode.is_fast() && (c.n == 1000 || c.n == 10_000)
        }),
        ("rooms workload (cross-loop publish)", 1.2, |c| {
            c.rooms.is_some()
        }),
    ];
    for (what, limit, cells) in targets {
        let of_target: Vec<&Row> = rows
            .iter()
            .filter(same_cpu)
            .filter(|r| cells(&r.cell))
            .collect();
        let mut threads: Vec<usize> = of_target.iter().map(|r| r.setup.threads).collect();
        threads.sort_unstable();
        threads.dedup();
        if of_target.is_empty() {
            continue;
        }
        let mut evidence = Vec::new();
        let mut holds = Some(true);
        for r in &of_target {
            match with_single(rows, r, ServerKind::Wshub) {
                Some((s, single)) => {
                    let ratio = s.cpu_us_per_delivery / single.cpu_us_per_delivery;
                    let window = r.cell.mode.window().unwrap_or(0);
                    evidence.push(format!(
                        "threads {} N={} K={} W={window}: {}×",
                        r.setup.label(),
                        r.cell.n,
                        r.cell.k,
                        ratio_text(ratio)
                    ));
                    holds = holds.map(|h| h && ratio <= limit);
                }
                None => holds = None,
            }
        }
        checks.push(TargetCheck {
            text: format!(
                "several loops on one CPU ({} loops, all on the server's CPU): server CPU per \
                 delivery ≤ {limit}× one loop, {what}",
                join(&threads, ", ")
            ),
            holds,
            evidence: evidence.join(", "),
        });
    }
    checks
}

pub fn targets_markdown(checks: &[TargetCheck]) -> String {
    let mut t = String::from("| target | holds | measured |\n|---|---|---|\n");
    for c in checks {
        let holds = match c.holds {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        let _ = writeln!(t, "| {} | {holds} | {} |", c.text, c.evidence);
    }
    t
}

/// A two-panel SVG: deliveries/s vs N and server CPU µs/delivery vs N, for
/// the fast fan-out cells at the largest window; one line per (server, K).
pub fn svg_chart(rows: &[Row]) -> String {
    const W: f64 = 960.0;
    const H: f64 = 450.0;
    let fast: Vec<&Row> = rows
        .iter()
        .filter(|r| r.setup.threads == 1)
        .filter(|r| r.cell.rooms.is_none() && r.cell.mode.is_fast())
        .collect();
    let window = fast.iter().filter_map(|r| r.cell.mode.window()).max();
    let fast: Vec<&Row> = fast
        .into_iter()
        .filter(|r| r.cell.mode.window() == window)
        .collect();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let mut ks: Vec<usize> = fast.iter().map(|r| r.cell.k).collect();
    ks.sort_unstable();
    ks.dedup();
    let series = |metric: fn(&Summary) -> f64| -> Vec<Series> {
        let mut out = Vec::new();
        for (kind, color) in [
            (ServerKind::Floor, "#2ca02c"),
            (ServerKind::Wshub, "#1f77b4"),
            (ServerKind::Baseline, "#ff7f0e"),
        ] {
            for (ki, &k) in ks.iter().enumerate() {
                let points: Vec<(f64, f64)> = fast
                    .iter()
                    .filter(|r| r.cell.k == k)
                    .filter_map(|r| Some((r.cell.n as f64, metric(&r.get(kind)?))))
                    .collect();
                if !points.is_empty() {
                    out.push(Series {
                        label: format!("{kind} K={k}"),
                        color,
                        dashed: ki > 0,
                        points,
                    });
                }
            }
        }
        out
    };
    let x_label = format!(
        "connected clients N (log scale){}",
        window.map_or(String::new(), |w| format!("; window {w}"))
    );
    panel(
        &mut svg,
        60.0,
        "deliveries per second (higher is better)",
        &x_label,
        &series(|s| s.deliveries_per_sec),
        si,
    );
    panel(
        &mut svg,
        540.0,
        "server CPU µs per delivery (lower is better)",
        &x_label,
        &series(|s| s.cpu_us_per_delivery),
        |v| format!("{v:.2}"),
    );
    svg.push_str("</svg>\n");
    svg
}

struct Series {
    label: String,
    color: &'static str,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// Draws one chart panel at horizontal offset `x0`: log-scale N on x,
/// linear y from 0.
fn panel(
    svg: &mut String,
    x0: f64,
    title: &str,
    x_label: &str,
    series: &[Series],
    fmt_y: fn(f64) -> String,
) {
    let (pw, ph, y0) = (380.0, 280.0, 50.0);
    if series.is_empty() {
        // E.g. a run of the rooms workload only: no axes to scale.
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{title}: no fan-out cells in this run</text>",
            x0 + pw / 2.0,
            y0 + ph / 2.0
        );
        return;
    }
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .collect();
    let (xmin, xmax) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min).max(1.0),
        xs.iter().copied().fold(0.0, f64::max).max(10.0),
    );
    let (lxmin, lxmax) = (
        xmin.log10().floor(),
        xmax.log10().ceil().max(xmin.log10().floor() + 1.0),
    );
    let ymax = nice_ceiling(ys.iter().copied().fold(0.0, f64::max));
    let px = |x: f64| x0 + (x.log10() - lxmin) / (lxmax - lxmin) * pw;
    let py = |y: f64| y0 + ph - y / ymax * ph;

    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"30\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">{title}</text>",
        x0 + pw / 2.0
    );
    let _ = writeln!(
        svg,
        "<rect x=\"{x0}\" y=\"{y0}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#333\"/>"
    );
    // Y grid and labels.
    for i in 0..=5 {
        let v = ymax * f64::from(i) / 5.0;
        let y = py(v);
        let _ = writeln!(
            svg,
            "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x0 + pw,
            x0 - 6.0,
            y + 4.0,
            fmt_y(v)
        );
    }
    // X decades.
    let mut e = lxmin;
    while e <= lxmax {
        let x = px(10f64.powf(e));
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{y0}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            y0 + ph,
            y0 + ph + 16.0,
            10f64.powf(e) as u64
        );
        e += 1.0;
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{x_label}</text>",
        x0 + pw / 2.0,
        y0 + ph + 34.0
    );
    // Series.
    for s in series {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let dash = if s.dashed {
            " stroke-dasharray=\"6,4\""
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{dash}/>",
            path.join(" "),
            s.color
        );
        for &(x, y) in &s.points {
            let _ = writeln!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{}\"/>",
                px(x),
                py(y),
                s.color
            );
        }
    }
    // Legend.
    for (i, s) in series.iter().enumerate() {
        let y = y0 + ph + 56.0 + (i / 2) as f64 * 16.0;
        let x = x0 + (i % 2) as f64 * 190.0;
        let dash = if s.dashed {
            " stroke-dasharray=\"6,4\""
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{}\" stroke-width=\"2\"{dash}/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            x + 28.0,
            s.color,
            x + 34.0,
            y + 4.0,
            s.label
        );
    }
}

/// Rounds up to 1, 2 or 5 times a power of ten.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

/// A ratio with 2 decimals, or 2 significant digits when small (0.0024).
fn ratio_text(r: f64) -> String {
    if r >= 0.1 || r <= 0.0 {
        format!("{r:.2}")
    } else {
        let decimals = (-r.log10()).ceil() as usize + 1;
        format!("{r:.decimals$}")
    }
}

/// 1234567.0 -> "1.23M".
pub fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Nanoseconds, formatted as µs or ms.
pub fn latency(ns: f64) -> String {
    if ns < 1e6 {
        format!("{:.0} µs", ns / 1e3)
    } else {
        format!("{:.1} ms", ns / 1e6)
    }
}

pub fn millis(secs: f64) -> String {
    format!("{:.0} ms", secs * 1e3)
}

pub fn bytes(b: f64) -> String {
    if b.abs() >= 10.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}
