//! The soak's tables: samples over time, results, attacker outcomes.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::attackers::{AttackReport, Kind};
use crate::heap::Heap;
use crate::{Sample, Summary, Usage, mib};

pub fn sample_header() -> String {
    format!(
        "{:>7}  {:<11} {:>9} {:>9} {:>9} {:>7} {:>6} {:>8} {:>6} {:>8} {:>12} {:>7}",
        "t (s)",
        "phase",
        "attackers",
        "spawned",
        "RSS MiB",
        "fds",
        "CPU %",
        "bench %",
        "all %",
        "TCP MiB",
        "wb delivered",
        "probes"
    )
}

pub fn sample_row(s: &Sample) -> String {
    format!(
        "{:>7.1}  {:<11} {:>9} {:>9} {:>9.2} {:>7} {:>6.0} {:>8.0} {:>6.0} {:>8.0} {:>12} {:>7}",
        s.t,
        s.phase,
        s.attackers_open,
        s.spawned,
        mib(s.usage.rss),
        s.usage.fds,
        s.cpu_pct,
        s.bench_cpu_pct,
        s.machine_cpu_pct,
        mib(s.tcp_mem),
        s.delivered,
        s.probes_ok
    )
}

/// 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

fn quantiles(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "none".to_string();
    }
    format!(
        "{} / {} / {}",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    )
}

fn change(after: u64, base: u64) -> String {
    if base == 0 {
        return "n/a".to_string();
    }
    format!("{:+.1}%", (after as f64 / base as f64 - 1.0) * 100.0)
}

pub fn samples_table(samples: &[Sample]) -> String {
    let mut t = String::from(
        "| t (s) | phase | attackers open | spawned | server RSS (MiB) | server fds | server CPU % | \
         bench CPU % | machine CPU % | kernel TCP MiB | well-behaved deliveries | probes ok |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for s in samples {
        let _ = writeln!(
            t,
            "| {:.1} | {} | {} | {} | {:.2} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} |",
            s.t,
            s.phase,
            thousands(s.attackers_open as u64),
            thousands(s.spawned),
            mib(s.usage.rss),
            thousands(s.usage.fds as u64),
            s.cpu_pct,
            s.bench_cpu_pct,
            s.machine_cpu_pct,
            mib(s.tcp_mem),
            thousands(s.delivered),
            s.probes_ok
        );
    }
    t
}

fn usage_cell(u: &Usage) -> String {
    format!("{:.2} MiB, {} fds", mib(u.rss), thousands(u.fds as u64))
}

pub fn results_table(s: &Summary) -> String {
    let mut t = String::from("| measure | value |\n|---|---|\n");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(t, "| {k} | {v} |");
    };
    row(
        "verdict",
        if s.failures.is_empty() {
            "**PASS**".to_string()
        } else {
            format!("**FAIL** ({} problem(s), listed below)", s.failures.len())
        },
    );
    row(
        "storm",
        format!(
            "{:.0} s, up to {} attackers at once plus bursts (seed {:#x}){}",
            s.storm.as_secs_f64(),
            thousands(s.population as u64),
            s.seed,
            if s.warmup.is_zero() {
                String::new()
            } else {
                format!(", after a {:.0} s warm-up storm", s.warmup.as_secs_f64())
            }
        ),
    );
    row("leak check compares", s.rss_method.clone());
    row(
        "server with the well-behaved clients only",
        format!("{} (raw RSS)", usage_cell(&s.cold)),
    );
    let heap = |h: &Option<Heap>| {
        h.map_or(String::new(), |h| {
            format!(
                "; heap in use {:.2} MiB of {:.2} MiB from the system",
                mib(h.in_use),
                mib(h.system)
            )
        })
    };
    row(
        if s.warmup.is_zero() {
            "baseline (before the storm)"
        } else {
            "baseline (after the warm-up storm)"
        },
        format!(
            "{} (raw RSS {:.2} MiB{})",
            usage_cell(&s.baseline),
            mib(s.baseline_raw.rss),
            heap(&s.baseline_heap)
        ),
    );
    row(
        "server peak during the storm",
        format!("{} (raw RSS)", usage_cell(&s.peak)),
    );
    match (&s.after, &s.after_raw, s.settle) {
        (Some(after), Some(raw), when) => row(
            "server after the storm",
            format!(
                "{} (raw RSS {:.2} MiB{}): RSS {}, {}fds {} against the baseline, {}",
                usage_cell(after),
                mib(raw.rss),
                heap(&s.after_heap),
                change(after.rss, s.baseline.rss),
                match (&s.after_heap, &s.baseline_heap) {
                    (Some(a), Some(b)) => format!("heap in use {}, ", change(a.in_use, b.in_use)),
                    _ => String::new(),
                },
                change(after.fds as u64, s.baseline.fds as u64),
                match when {
                    Some(w) => format!("back {:.1} s after the attackers left", w.as_secs_f64()),
                    None => "**not back within the tolerance**".to_string(),
                }
            ),
        ),
        _ => row("server after the storm", "not reached".to_string()),
    }
    row(
        "server CPU during the storm",
        format!("{:.0}% of one core", s.storm_cpu_pct),
    );
    row(
        "SYNs dropped on full listen queues during the storm",
        format!(
            "{} (machine-wide TcpExt ListenOverflows)",
            s.listen_overflows
        ),
    );
    if let Some(wb) = &s.wb {
        row(
            "well-behaved clients",
            format!(
                "{} ({} in {} rooms, {} without a room), none refused or disconnected; {} of {} \
                 closed cleanly at the end",
                wb.clients,
                wb.clients - wb.broadcasters,
                wb.rooms,
                wb.broadcasters,
                wb.clean_closes,
                wb.clients
            ),
        );
        row("their messages sent", thousands(wb.messages_sent));
        row(
            "deliveries expected / received",
            format!(
                "{} / {} ({} lost, duplicated, reordered or corrupted)",
                thousands(wb.deliveries_expected),
                thousands(wb.deliveries),
                thousands(wb.deliveries_expected.saturating_sub(wb.deliveries))
            ),
        );
        row(
            "attacker broadcasts they received (skipped)",
            thousands(wb.foreign),
        );
        row(
            "delivery latency p50 / p99 / max during the storm",
            quantiles(&wb.storm_latency_us),
        );
        row(
            "delivery latency p50 / p99 / max, whole run",
            format!(
                "{} (includes the server's pauses while gdb trims its heap)",
                quantiles(&wb.latency_us)
            ),
        );
        let mut worst: Vec<(usize, u64)> = wb.worst_by_second.iter().copied().enumerate().collect();
        worst.sort_by_key(|w| std::cmp::Reverse(w.1));
        let worst: Vec<String> = worst
            .iter()
            .take(5)
            .filter(|(_, us)| *us > 0)
            .map(|(t, us)| format!("{} at t={t} s", ms(*us)))
            .collect();
        row(
            "worst latencies during the storm (by second sent)",
            worst.join(", "),
        );
        row(
            "probes (new well-behaved clients during the storm)",
            format!(
                "{} upgraded, echoed and closed cleanly; time to 101 p50 / p99 / max {}; \
                 connect to close reply max {}",
                wb.probes_ok,
                quantiles(&wb.probe_upgrade_us),
                if wb.probe_total_us.is_empty() {
                    "none".to_string()
                } else {
                    ms(wb.probe_total_us.max())
                }
            ),
        );
        row("pings answered", thousands(wb.pings_answered));
    }
    if let Some(a) = &s.attacks {
        row(
            "attackers spawned / peak open",
            format!(
                "{} / {} ({:.0} connections/s)",
                thousands(a.total_spawned()),
                thousands(a.peak_open as u64),
                a.total_spawned() as f64 / a.elapsed.as_secs_f64().max(0.001)
            ),
        );
        row(
            "bytes the attackers sent",
            format!("{:.1} MiB", mib(a.bytes_sent)),
        );
        row(
            "anomalies (outcomes a correct server should not give)",
            thousands(a.anomaly_count()),
        );
    }
    row("graceful shutdown (SIGTERM)", s.shutdown.clone());
    row("panics in the server's log", s.panics.len().to_string());
    t
}

pub fn outcomes_table(a: &AttackReport) -> String {
    let mut t =
        String::from("| kind | spawned | MiB sent | outcome | count |\n|---|---:|---:|---|---:|\n");
    for kind in Kind::ALL {
        let spawned = a.spawned.get(&kind).copied().unwrap_or(0);
        let sent = format!(
            "{:.1}",
            mib(a.bytes_by_kind.get(&kind).copied().unwrap_or(0))
        );
        let mut rows: Vec<(&String, &u64)> = a
            .outcomes
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|((_, label), n)| (label, n))
            .collect();
        rows.sort_by(|x, y| y.1.cmp(x.1).then(x.0.cmp(y.0)));
        let mut first = true;
        for (label, n) in rows {
            let (name, sp, mb) = if first {
                (kind.name().to_string(), thousands(spawned), sent.clone())
            } else {
                (String::new(), String::new(), String::new())
            };
            first = false;
            let _ = writeln!(
                t,
                "| {name} | {sp} | {mb} | {} | {} |",
                label.replace('|', "/"),
                thousands(*n)
            );
        }
        if first && spawned > 0 {
            let _ = writeln!(
                t,
                "| {} | {} | {sent} | (none concluded) | 0 |",
                kind.name(),
                thousands(spawned)
            );
        }
    }
    t
}

pub fn anomalies_table(a: &AttackReport) -> String {
    if a.anomalies.is_empty() {
        return "None: every attacker got an outcome a correct server gives its kind.\n"
            .to_string();
    }
    let mut t = String::from("| kind | what | count |\n|---|---|---:|\n");
    for ((kind, what), n) in &a.anomalies {
        let _ = writeln!(
            t,
            "| {} | {} | {} |",
            kind.name(),
            what.replace('|', "/"),
            thousands(*n)
        );
    }
    t
}

fn failures_text(s: &Summary) -> String {
    if s.failures.is_empty() {
        return "None.\n".to_string();
    }
    s.failures.iter().map(|f| format!("- {f}\n")).collect()
}

/// What is printed at the end of a run.
pub fn results_text(s: &Summary) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "## Samples\n\n{}", samples_table(&s.samples));
    let _ = writeln!(t, "## Results\n\n{}", results_table(s));
    if let Some(a) = &s.attacks {
        let _ = writeln!(t, "## Attacker outcomes\n\n{}", outcomes_table(a));
        let _ = writeln!(t, "## Anomalies\n\n{}", anomalies_table(a));
    }
    let _ = write!(t, "## Failures\n\n{}", failures_text(s));
    t
}

pub fn markdown(s: &Summary) -> String {
    let mut t = format!(
        "# wshub chaos soak ({} mode)\n\n\
         - date: {}\n- commit: {}\n- machine: {}\n- command: `{}`\n- took: {:.0} s\n\
         - server log: {}\n\n\
         The `broadcast` example under a storm of attackers, while 50 well-behaved clients \
         (40 in 10 rooms of 4, 10 without a room) send sequenced messages and must receive \
         every message of their room and every broadcast exactly once and in order, and a new \
         probe client must get through every second or two. See benches/soak.rs.\n\n",
        s.mode,
        s.date,
        s.commit,
        s.machine,
        s.command,
        s.elapsed.as_secs_f64(),
        s.log.display()
    );
    t.push_str(&results_text(s));
    t.push_str("\n## The attackers\n\n| kind | what it does |\n|---|---|\n");
    for kind in Kind::ALL {
        let _ = writeln!(t, "| {} | {} |", kind.name(), kind.describe());
    }
    t
}
