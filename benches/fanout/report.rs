//! Results: per-run measurements, medians over repeats, the Markdown table,
//! the target checks and the SVG chart.

use std::fmt::Write as _;
use std::time::Duration;

use crate::server::ServerKind;

/// How the senders of a cell are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// As fast as possible; each sender has at most `window` messages that
    /// have not yet reached all N clients.
    Fast { window: u32 },
    /// Fixed offered rate, messages per second over all senders.
    Rate { per_sec: f64 },
}

impl Mode {
    pub fn label(&self) -> String {
        match *self {
            Mode::Fast { window } => format!("fast (window {window}/sender)"),
            Mode::Rate { per_sec } => format!("fixed rate {per_sec} msg/s"),
        }
    }

    pub fn is_fast(&self) -> bool {
        matches!(self, Mode::Fast { .. })
    }
}

/// One benchmark configuration, run against both servers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cell {
    /// Connected clients.
    pub n: usize,
    /// Senders among them.
    pub k: usize,
    /// Messages per sender.
    pub m: u32,
    pub mode: Mode,
}

impl Cell {
    pub fn deliveries(&self) -> u64 {
        self.n as u64 * self.k as u64 * u64::from(self.m)
    }

    pub fn describe(&self) -> String {
        format!(
            "N={} K={} M={} {}",
            self.n,
            self.k,
            self.m,
            self.mode.label()
        )
    }
}

/// Measurements of one run of one cell against one server.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub server: ServerKind,
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
}

impl RunResult {
    pub fn deliveries_per_sec(&self) -> f64 {
        self.deliveries as f64 / self.wall.as_secs_f64().max(1e-9)
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
            "{:<8} {}: {}/s, server {:.3} µs CPU/delivery, latency p50 {} p99 {} max {}, \
             server CPU {:.0}%, loadgen CPU {:.0}% busy {:.0}%, RSS/conn {}, connect {} \
             (loadgen busy {:.0}%, {} listen-queue overflows), other processes {} CPU{}",
            self.server.name(),
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
            match self.cell.mode {
                Mode::Rate { .. } =>
                    format!(", max send lag {}", millis(self.max_send_lag.as_secs_f64())),
                Mode::Fast { .. } => String::new(),
            }
        )
    }
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

/// A row of the table: one cell, both servers.
pub struct Row {
    pub cell: Cell,
    pub wshub: Option<Summary>,
    pub baseline: Option<Summary>,
}

pub fn rows(cells: &[Cell], results: &[RunResult]) -> Vec<Row> {
    let summary = |cell: &Cell, kind: ServerKind| {
        let runs: Vec<&RunResult> = results
            .iter()
            .filter(|r| r.server == kind && r.cell == *cell)
            .collect();
        Summary::of(&runs)
    };
    cells
        .iter()
        .map(|cell| Row {
            cell: *cell,
            wshub: summary(cell, ServerKind::Wshub),
            baseline: summary(cell, ServerKind::Baseline),
        })
        .collect()
}

/// The results table in Markdown.
pub fn markdown_table(rows: &[Row]) -> String {
    let mut t = String::new();
    t.push_str(
        "| N | K | M | mode | deliveries/s wshub | baseline | ratio \
         | server CPU µs/delivery wshub | baseline | ratio \
         | latency p50 / p99 / max wshub | baseline \
         | idle RSS/conn wshub | baseline | ratio \
         | connect N wshub | baseline \
         | server CPU / loadgen busy wshub | baseline |\n",
    );
    t.push_str("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---|---|\n");
    for row in rows {
        let (w, b) = (row.wshub.as_ref(), row.baseline.as_ref());
        let cell =
            |s: Option<&Summary>, f: &dyn Fn(&Summary) -> String| s.map_or("n/a".to_string(), f);
        let ratio = |f: &dyn Fn(&Summary) -> f64| match (w, b) {
            (Some(w), Some(b)) if f(b) > 0.0 => ratio_text(f(w) / f(b)),
            _ => "n/a".to_string(),
        };
        let lat = |s: &Summary| {
            format!(
                "{} / {} / {}",
                latency(s.p50_ns),
                latency(s.p99_ns),
                latency(s.max_ns)
            )
        };
        let share = |s: &Summary| {
            format!(
                "{:.0}% / {:.0}%",
                s.server_cpu_share * 100.0,
                s.loadgen_busy_share * 100.0
            )
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.cell.n,
            row.cell.k,
            row.cell.m,
            row.cell.mode.label(),
            cell(w, &|s| si(s.deliveries_per_sec)),
            cell(b, &|s| si(s.deliveries_per_sec)),
            ratio(&|s| s.deliveries_per_sec),
            cell(w, &|s| format!("{:.3}", s.cpu_us_per_delivery)),
            cell(b, &|s| format!("{:.3}", s.cpu_us_per_delivery)),
            ratio(&|s| s.cpu_us_per_delivery),
            cell(w, &lat),
            cell(b, &lat),
            cell(w, &|s| bytes(s.rss_per_conn)),
            cell(b, &|s| bytes(s.rss_per_conn)),
            ratio(&|s| s.rss_per_conn),
            cell(w, &|s| millis(s.connect_secs)),
            cell(b, &|s| millis(s.connect_secs)),
            cell(w, &share),
            cell(b, &share),
        );
    }
    t
}

/// One target and whether it holds.
pub struct TargetCheck {
    pub text: String,
    pub holds: Option<bool>,
    pub evidence: String,
}

/// Checks the project's performance targets against the table.
pub fn check_targets(rows: &[Row]) -> Vec<TargetCheck> {
    let both = |r: &Row| -> Option<(Summary, Summary)> { Some((r.wshub?, r.baseline?)) };
    let mut checks = Vec::new();

    // 1. CPU per delivery at N = 1000 and 10000 <= 0.2x baseline.
    let cpu_rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.cell.mode.is_fast() && (r.cell.n == 1000 || r.cell.n == 10_000))
        .collect();
    let mut evidence = Vec::new();
    let mut holds = Some(!cpu_rows.is_empty());
    for r in &cpu_rows {
        match both(r) {
            Some((w, b)) => {
                let ratio = w.cpu_us_per_delivery / b.cpu_us_per_delivery;
                evidence.push(format!("N={} K={}: {ratio:.2}x", r.cell.n, r.cell.k));
                holds = holds.map(|h| h && ratio <= 0.2);
            }
            None => holds = None,
        }
    }
    checks.push(TargetCheck {
        text: "server CPU per delivery at N=1000 and N=10000 ≤ 0.2× baseline".into(),
        holds,
        evidence: evidence.join(", "),
    });

    // 2. Idle RSS per connection at N = 10000 <= 1 KiB.
    let rss = rows
        .iter()
        .find(|r| r.cell.n == 10_000)
        .and_then(|r| r.wshub);
    checks.push(TargetCheck {
        text: "idle server RSS ≤ 1 KiB per connection at N=10000".into(),
        holds: rss.map(|s| s.rss_per_conn <= 1024.0),
        evidence: rss.map_or("n/a".into(), |s| {
            format!("{} per connection", bytes(s.rss_per_conn))
        }),
    });

    // 3. p99 latency in the fixed-rate run at N = 10000 no worse than baseline.
    let rate = rows
        .iter()
        .find(|r| r.cell.n == 10_000 && !r.cell.mode.is_fast())
        .and_then(both);
    checks.push(TargetCheck {
        text: "p99 latency in the fixed-rate run at N=10000 no worse than baseline".into(),
        holds: rate.map(|(w, b)| w.p99_ns <= b.p99_ns),
        evidence: rate.map_or("n/a".into(), |(w, b)| {
            format!(
                "wshub {} vs baseline {}",
                latency(w.p99_ns),
                latency(b.p99_ns)
            )
        }),
    });

    // 4. 10,000 connections established in < 1 s.
    let connect = rows
        .iter()
        .find(|r| r.cell.n == 10_000)
        .and_then(|r| r.wshub);
    checks.push(TargetCheck {
        text: "10,000 connections established in < 1 s (wshub)".into(),
        holds: connect.map(|s| s.connect_secs < 1.0),
        evidence: connect.map_or("n/a".into(), |s| millis(s.connect_secs)),
    });
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

/// A two-panel SVG: deliveries/s vs N and server CPU µs/delivery vs N
/// (fast mode only), wshub vs baseline, one line per (server, K).
pub fn svg_chart(rows: &[Row]) -> String {
    const W: f64 = 960.0;
    const H: f64 = 420.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let fast: Vec<&Row> = rows.iter().filter(|r| r.cell.mode.is_fast()).collect();
    let mut ks: Vec<usize> = fast.iter().map(|r| r.cell.k).collect();
    ks.sort_unstable();
    ks.dedup();
    let series = |metric: fn(&Summary) -> f64| -> Vec<Series> {
        let mut out = Vec::new();
        for kind in [ServerKind::Wshub, ServerKind::Baseline] {
            for (ki, &k) in ks.iter().enumerate() {
                let points: Vec<(f64, f64)> = fast
                    .iter()
                    .filter(|r| r.cell.k == k)
                    .filter_map(|r| {
                        let s = if kind == ServerKind::Wshub {
                            r.wshub
                        } else {
                            r.baseline
                        };
                        s.map(|s| (r.cell.n as f64, metric(&s)))
                    })
                    .collect();
                if !points.is_empty() {
                    out.push(Series {
                        label: format!("{kind} K={k}"),
                        color: if kind == ServerKind::Wshub {
                            "#1f77b4"
                        } else {
                            "#ff7f0e"
                        },
                        dashed: ki > 0,
                        points,
                    });
                }
            }
        }
        out
    };
    panel(
        &mut svg,
        60.0,
        "deliveries per second (higher is better)",
        &series(|s| s.deliveries_per_sec),
        si,
    );
    panel(
        &mut svg,
        540.0,
        "server CPU µs per delivery (lower is better)",
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
fn panel(svg: &mut String, x0: f64, title: &str, series: &[Series], fmt_y: fn(f64) -> String) {
    let (pw, ph, y0) = (380.0, 280.0, 50.0);
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
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">connected clients N (log scale)</text>",
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
