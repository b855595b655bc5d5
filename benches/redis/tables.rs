//! The report's tables and lines, from the runs' results.

use std::fmt::Write as _;
use std::time::Duration;

use wshub::{BrokerEvent, BrokerStats};

use crate::failure::{self, FailureResult};
use crate::host::CpuUse;
use crate::{Config, P99_TARGET_MS, WINDOW, Workload, clients};

/// Milliseconds of a latency in ns.
pub fn ms(ns: u64) -> String {
    let ms = ns as f64 / 1e6;
    if ms < 10.0 {
        format!("{ms:.3}")
    } else {
        format!("{ms:.1}")
    }
}

/// 1234567 -> "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn nodes_label(nodes: usize) -> String {
    match nodes {
        1 => "1 (no broker)".into(),
        n => format!("{n} over Redis"),
    }
}

pub fn latency_table(configs: &[Config], w: &Workload, warmup: Duration, title: &str) -> String {
    let mut out = String::new();
    let group = w.clients / w.rooms;
    let _ = writeln!(
        out,
        "## {title}: latency at {} publishes/s\n\n{} clients in {} room{} of {group}, split \
         over the nodes (client c in room c % {}, on node (c / {}) % nodes); {} senders per \
         room (its first members, so on different nodes); {} deliveries/s offered; {:.1} s \
         per run after a {:.1} s warm-up; {} run(s) per configuration, latencies pooled. \
         Latency: the send timestamp to the receiving client's read (ms).\n",
        w.rate,
        w.clients,
        w.rooms,
        if w.rooms == 1 { "" } else { "s" },
        w.rooms,
        w.rooms,
        w.senders_per_room,
        thousands((w.rate * group as f64) as u64),
        w.duration.as_secs_f64(),
        warmup.as_secs_f64(),
        configs.first().map_or(0, |c| c.runs.len()),
    );
    out += "| nodes | deliveries | deliveries/s | kind | p50 | p95 | p99 | p99.9 | max | p99 per \
            run | send lag max | load (1 min) | other processes (steal) |\n";
    out += "|---|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---|---:|\n";
    for config in configs {
        let deliveries: u64 = config.runs.iter().map(|r| r.stats.deliveries()).sum();
        let per_sec =
            config.median_of(|r| r.stats.deliveries() as f64 / r.stats.wall.as_secs_f64());
        for (remote, kind) in [(0, "local"), (1, "cross-node")] {
            let h = config.latency(remote);
            if h.is_empty() {
                continue;
            }
            let per_run: Vec<String> = config
                .runs
                .iter()
                .map(|r| ms(r.stats.latency[remote].value_at_quantile(0.99)))
                .collect();
            let lag = config
                .runs
                .iter()
                .map(|r| r.stats.max_send_lag)
                .max()
                .unwrap_or_default();
            let loads: Vec<&str> = config
                .runs
                .iter()
                .map(|r| r.load.split(' ').next().unwrap_or(""))
                .collect();
            let foreign = format!(
                "{:.0}% ({:.1}%)",
                config.median_of(|r| r.cpu.pct(r.cpu.foreign)),
                config.median_of(|r| r.cpu.pct(r.cpu.steal))
            );
            let _ = writeln!(
                out,
                "| {} | {} | {} | {kind} ({}) | {} | {} | {} | {} | {} | {} | {:.1} ms | {} | {} |",
                nodes_label(config.nodes),
                thousands(deliveries),
                thousands(per_sec as u64),
                thousands(h.len()),
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.95)),
                ms(h.value_at_quantile(0.99)),
                ms(h.value_at_quantile(0.999)),
                ms(h.max()),
                per_run.join(", "),
                lag.as_secs_f64() * 1e3,
                loads.join(", "),
                foreign,
            );
        }
    }
    let cpu: Vec<String> = configs
        .iter()
        .map(|c| {
            let pct = |f: fn(&CpuUse) -> Duration| c.median_of(|r| r.cpu.pct(f(&r.cpu)));
            format!(
                "{} node{}: loops {:.1}%, broker threads {:.1}%, redis-server {:.1}%, clients \
                 {:.1}%, ksoftirqd {:.1}%",
                c.nodes,
                if c.nodes == 1 { "" } else { "s" },
                pct(|u| u.loops),
                pct(|u| u.broker),
                pct(|u| u.redis),
                pct(|u| u.clients),
                pct(|u| u.ksoftirqd)
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "\nCPU at this rate (% of one CPU, medians): {}.",
        cpu.join("; ")
    );
    if let Some(single) = configs.iter().find(|c| c.nodes == 1) {
        let base = single.latency(0);
        let (b50, b99) = (base.value_at_quantile(0.5), base.value_at_quantile(0.99));
        out += "\nAdded latency, cross-node against 1 node without a broker: ";
        let added: Vec<String> = configs
            .iter()
            .filter(|c| c.nodes > 1)
            .map(|c| {
                let h = c.latency(1);
                format!(
                    "{} nodes p50 {:+.3} ms, p99 {:+.3} ms",
                    c.nodes,
                    (h.value_at_quantile(0.5) as f64 - b50 as f64) / 1e6,
                    (h.value_at_quantile(0.99) as f64 - b99 as f64) / 1e6
                )
            })
            .collect();
        let _ = writeln!(out, "{}.", added.join("; "));
    }
    if w.rooms == 1 {
        out += "\nWith one room the latency is that of the fan-out itself: every message makes \
                a burst of deliveries that the loops write and the one client thread reads in \
                turn, so the order of the recipients, not the Redis hop, sets the percentiles \
                (and, pinned, all the nodes' loops share one CPU).\n";
    }
    out += "\n";
    out
}

pub fn throughput_table(configs: &[Config], w: &Workload, duration: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Throughput: {} clients, {} rooms, as fast as it goes\n\nEach of the {} senders \
         keeps at most {WINDOW} messages not yet delivered to its whole room; it sends for \
         {:.1} s, then the deliveries drain. Rates: medians over the runs, from the first \
         send to the last delivery. CPU: % of one CPU over the run (node loops; the brokers' \
         publishing and subscribing threads; the clients' thread; redis-server; the \
         kernel's ksoftirqd threads, loopback TCP deferred by the kernel; softirq work done \
         in a thread's own context counts as that thread's). Node µs \
         per delivery: loops and broker threads.\n",
        w.clients,
        w.rooms,
        w.rooms * w.senders_per_room,
        duration.as_secs_f64()
    );
    out += "| nodes | publishes/s | deliveries/s | vs 1 node | cross-node | p50 | p99 | loops | \
            broker threads | clients | redis-server | ksoftirqd | other processes (steal) | node \
            µs/delivery | \
            load (1 min) |\n";
    out += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
    let base = configs
        .first()
        .map(|c| c.median_of(|r| r.stats.deliveries() as f64 / r.stats.wall.as_secs_f64()))
        .unwrap_or(f64::NAN);
    for config in configs {
        let deliveries =
            config.median_of(|r| r.stats.deliveries() as f64 / r.stats.wall.as_secs_f64());
        let publishes = config.median_of(|r| r.stats.sent as f64 / r.stats.wall.as_secs_f64());
        let cross = config.median_of(|r| {
            r.stats.delivered[1] as f64 * 100.0 / r.stats.deliveries().max(1) as f64
        });
        let mut all = clients::histogram();
        for run in &config.runs {
            let _ = all.add(run.stats.all_latency());
        }
        let node_us = config.median_of(|r| {
            (r.cpu.loops + r.cpu.broker).as_secs_f64() * 1e6 / r.stats.deliveries().max(1) as f64
        });
        let loads: Vec<&str> = config
            .runs
            .iter()
            .map(|r| r.load.split(' ').next().unwrap_or(""))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2}x | {cross:.0}% | {} | {} | {:.0}% | {:.0}% | {:.0}% | {:.0}% | \
             {:.0}% | {:.0}% ({:.1}%) | {node_us:.2} | {} |",
            nodes_label(config.nodes),
            thousands(publishes as u64),
            thousands(deliveries as u64),
            deliveries / base,
            ms(all.value_at_quantile(0.5)),
            ms(all.value_at_quantile(0.99)),
            config.median_of(|r| r.cpu.pct(r.cpu.loops)),
            config.median_of(|r| r.cpu.pct(r.cpu.broker)),
            config.median_of(|r| r.cpu.pct(r.cpu.clients)),
            config.median_of(|r| r.cpu.pct(r.cpu.redis)),
            config.median_of(|r| r.cpu.pct(r.cpu.ksoftirqd)),
            config.median_of(|r| r.cpu.pct(r.cpu.foreign)),
            config.median_of(|r| r.cpu.pct(r.cpu.steal)),
            loads.join(", "),
        );
    }
    let overflows: u64 = configs
        .iter()
        .flat_map(|c| &c.runs)
        .flat_map(|r| &r.brokers)
        .map(|b| b.queue_overflows + b.publish_failures + b.receive_drops)
        .sum();
    let _ = writeln!(
        out,
        "\nBroker queue overflows, publish failures and receive drops over all runs: \
         {overflows}.\n"
    );
    out
}

pub fn failure_report(f: &FailureResult, trimmed: bool) -> String {
    let mut out = String::new();
    let t = &f.timing;
    let secs = |ns: u64| failure::secs(ns, f.kill_ns);
    let _ = writeln!(
        out,
        "### Failure, run 1 in detail\n\n2 nodes, {} \
         clients, {} rooms, {} publishes/s; the kill {:.1} s into the run, the restart {:.1} s \
         after the kill, then {:.1} s more. Times from the kill (s). Redis was gone {:+.3} s, \
         restarted (spawned) {:+.3} s, answering {:+.3} s.\n",
        f.layout.clients,
        f.layout.rooms,
        f.rate,
        t.before_kill.as_secs_f64(),
        t.outage.as_secs_f64(),
        t.after.as_secs_f64(),
        secs(f.killed_ns),
        secs(f.restart_begin_ns),
        secs(f.restart_ns),
    );
    out += "| node | local deliveries during the outage | cross-node during the outage | \
            first cross-node delivery after the restart | on_broker saw | broker_stats before \
            the kill -> at the end |\n|---|---:|---:|---|---|---|\n";
    for (n, node) in f.nodes.iter().enumerate() {
        let events: Vec<String> = node
            .events
            .iter()
            .map(|(at, e)| format!("{e:?} {:+.3}", secs(*at)))
            .collect();
        let resumed = node.resumed_ns.map_or("never".into(), |at| {
            format!(
                "{:+.3} s ({:.3} s after Redis answered)",
                secs(at),
                failure::secs(at, f.restart_ns)
            )
        });
        let _ = writeln!(
            out,
            "| {n} | {} | {} | {resumed} | {} | {} -> {} |",
            thousands(node.in_outage[0]),
            thousands(node.in_outage[1]),
            events.join(", "),
            broker_counters(&node.stats_before),
            broker_counters(&node.stats_after),
        );
    }
    out += "\nCross-node deliveries lost (the gap), by direction:\n\n";
    for d in &f.directions {
        let span = d.span.map_or("none".into(), |(a, b)| {
            format!("messages sent {:+.3} s to {:+.3} s", secs(a), secs(b))
        });
        let resumed = d
            .resumed_sent_ns
            .map_or("never".into(), |r| format!("{:+.3} s", secs(r)));
        let after_up = match (d.sender_up_ns, d.lost_after_up_for) {
            (Some(up), Some(last)) => format!(
                "; {} of them sent after node {}'s on_broker got Up {{ gap: true }} ({:+.3} s), \
                 the last {:.3} s after it",
                thousands(d.lost_after_up),
                d.from,
                secs(up),
                last as f64 / 1e9
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "- node {} -> node {}: {} lost ({span}); first delivered message sent after the \
             kill: sent {resumed}{after_up}",
            d.from,
            d.to,
            thousands(d.lost),
        );
    }

    let _ = writeln!(
        out,
        "\nDeliveries: {} local, {} cross-node of {} published; latency local p50 {} / p99 {} \
         ms, cross-node p50 {} / p99 {} ms (whole run).\n",
        thousands(f.delivered[0]),
        thousands(f.delivered[1]),
        thousands(f.sent),
        ms(f.latency[0].p50),
        ms(f.latency[0].p99),
        ms(f.latency[1].p50),
        ms(f.latency[1].p99),
    );
    let [before, during] = &f.local_latency;
    let _ = writeln!(
        out,
        "Local latency before the kill: p50 {} / p99 {} / max {} ms ({} deliveries); during \
         the outage: p50 {} / p99 {} / max {} ms ({} deliveries).\n",
        ms(before.p50),
        ms(before.p99),
        ms(before.max),
        thousands(before.count),
        ms(during.p50),
        ms(during.p99),
        ms(during.max),
        thousands(during.count),
    );
    out += "Deliveries per 250 ms (from the kill, s): ";
    let cells: Vec<String> = f
        .timeline
        .iter()
        .map(|(at, local, cross)| format!("{:+.2}: {local}+{cross}", *at as f64 / 1e3))
        .collect();
    let _ = writeln!(out, "{} (local+cross-node).\n", cells.join(", "));
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    let shutdowns: Vec<String> = f
        .nodes
        .iter()
        .enumerate()
        .map(|(n, node)| match &node.shutdown {
            Ok(took) => format!("node {n} in {:.0} ms", took.as_secs_f64() * 1e3),
            Err(e) => format!("node {n}: {e}"),
        })
        .collect();
    let _ = writeln!(
        out,
        "Shutdown: {}; {} of {} clients closed. Threads {} before the nodes, {} while they \
         ran, {} after; descriptors {} / {} / {}. Process RSS{} / heap in use: {:.1} / {:.2} \
         MiB before the nodes, {:.1} / {:.2} MiB steady before the kill, {:.1} / {:.2} MiB \
         after the recovery, {:.1} / {:.2} MiB after the stop. Load (1, 5, 15 min): {} at \
         the start, {} at the end; other processes used {:.0}% of a CPU, the hypervisor stole \
         {:.1}%.\n",
        shutdowns.join(", "),
        f.closed,
        f.layout.clients,
        f.threads[0],
        f.threads[1],
        f.threads[2],
        f.descriptors[0],
        f.descriptors[1],
        f.descriptors[2],
        if trimmed { " (after malloc_trim)" } else { "" },
        mb(f.rss[0]),
        mb(f.heap[0]),
        mb(f.rss[1]),
        mb(f.heap[1]),
        mb(f.rss[2]),
        mb(f.heap[2]),
        mb(f.rss[3]),
        mb(f.heap[3]),
        f.load[0],
        f.load[1],
        f.cpu.pct(f.cpu.foreign),
        f.cpu.pct(f.cpu.steal),
    );
    if f.failures.is_empty() {
        out += "Checks: all passed.\n\n";
    } else {
        let _ = writeln!(out, "Checks FAILED: {}.\n", f.failures.join("; "));
    }
    out
}

/// How each run changed the process's RSS, from before its nodes started to after they
/// stopped: the noise the failure run's figures compare with.
pub fn rss_changes(parts: &[(&str, &[Config])]) -> String {
    let mib = |v: [u64; 2]| (v[1] as f64 - v[0] as f64) / (1024.0 * 1024.0);
    let cells: Vec<String> = parts
        .iter()
        .flat_map(|(name, configs)| {
            configs.iter().map(move |c| {
                let runs: Vec<String> = c
                    .runs
                    .iter()
                    .map(|r| format!("{:+.1}/{:+.2}", mib(r.rss), mib(r.heap)))
                    .collect();
                format!("{name}, {} node(s): {}", c.nodes, runs.join(", "))
            })
        })
        .collect();
    if cells.is_empty() {
        return String::new();
    }
    format!(
        "Process RSS / heap in use change across each other run, from before its nodes \
         started to after they stopped (MiB; the run's latency histograms stay): {}.\n\n",
        cells.join("; ")
    )
}

fn broker_counters(b: &BrokerStats) -> String {
    format!(
        "published {}, failures {}, overflows {}, received {}, drops {}, reconnects {}",
        b.published,
        b.publish_failures,
        b.queue_overflows,
        b.received,
        b.receive_drops,
        b.reconnects
    )
}

pub fn targets(rooms: &[Config], throughput: &[Config], failures: &[FailureResult]) -> String {
    let mut out = String::from("## Targets\n\n");
    if !rooms.is_empty() || !throughput.is_empty() {
        out += "- Every delivery arrived exactly once and in per-sender order in every latency \
                and throughput run (checked; the bench fails otherwise).\n";
    }
    for c in rooms.iter().filter(|c| c.nodes > 1) {
        let h = c.latency(1);
        let p95 = h.value_at_quantile(0.95) as f64 / 1e6;
        let p99 = h.value_at_quantile(0.99) as f64 / 1e6;
        let _ = writeln!(
            out,
            "- {} nodes, cross-node latency at the fixed rate: p95 {p95:.3} ms, p99 {p99:.3} \
             ms; target p99 ≤ {P99_TARGET_MS} ms (Sockudo: p95 1 ms, p99 4 ms at 1,000 \
             publishes/s, 3 nodes, 900 subscribers): {} (reported, not asserted).",
            c.nodes,
            if p99 <= P99_TARGET_MS {
                "met"
            } else {
                "MISSED"
            }
        );
    }
    if let [one, two, ..] = throughput {
        let rate =
            |c: &Config| c.median_of(|r| r.stats.deliveries() as f64 / r.stats.wall.as_secs_f64());
        let _ = writeln!(
            out,
            "- Throughput, 2 nodes vs 1: {:.2}x the deliveries/s (both on the same CPU when \
             pinned: this is the broker's cost, not a scale-out).",
            rate(two) / rate(one)
        );
    }
    if failures.is_empty() {
        return out;
    }
    let resumed: Vec<String> = failures.iter().map(resume_times).collect();
    let _ = writeln!(
        out,
        "- Redis crash: local delivery went on, cross-node delivery resumed after Redis \
         answered again: {} (target ≤ {:?}); {}.",
        resumed.join("; "),
        failure::RESUME_TARGET,
        if failures.iter().all(|f| f.failures.is_empty()) {
            "all checks passed"
        } else {
            "CHECKS FAILED"
        }
    );
    out
}

/// "node 0 0.779 s, node 1 0.682 s": when each node got cross-node deliveries again, from
/// Redis answering.
fn resume_times(f: &FailureResult) -> String {
    let nodes: Vec<String> = f
        .nodes
        .iter()
        .enumerate()
        .map(|(n, node)| {
            node.resumed_ns.map_or(format!("node {n} never"), |at| {
                format!("node {n} {:.3} s", failure::secs(at, f.restart_ns))
            })
        })
        .collect();
    nodes.join(", ")
}

/// One line per failure run.
pub fn failure_summary(runs: &[FailureResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Failure: Redis killed (SIGKILL) and restarted on the same port\n\n{} run(s); the \
         first in detail below. Resumed: the first cross-node delivery to each node's clients, \
         from Redis answering again. Lost: cross-node deliveries (a message lost to k \
         receivers counts k); after Up: of those, the ones sent after the sending node's \
         on_broker got Up {{ gap: true }}. RSS after malloc_trim, before the nodes started and \
         after they stopped.\n",
        runs.len()
    );
    out += "| run | resumed | local deliveries during the outage | lost | lost after Up | \
            on_broker | threads | descriptors | RSS (MiB) | heap in use (MiB) | other processes \
            (steal) | checks |\n";
    out += "|---|---|---:|---:|---:|---|---|---|---|---|---:|---|\n";
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    for (i, f) in runs.iter().enumerate() {
        let local: u64 = f.nodes.iter().map(|n| n.in_outage[0]).sum();
        let lost: u64 = f.directions.iter().map(|d| d.lost).sum();
        let after_up: u64 = f.directions.iter().map(|d| d.lost_after_up).sum();
        let events_ok = f.nodes.iter().all(|n| {
            let down = n
                .events
                .iter()
                .position(|&(at, e)| e == BrokerEvent::Down && at >= f.kill_ns);
            down.is_some_and(|d| {
                n.events[d..]
                    .iter()
                    .any(|&(_, e)| e == (BrokerEvent::Up { gap: true }))
            })
        });
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} -> {} | {} -> {} | {:.1} -> {:.1} | {:.2} -> \
             {:.2} | {:.0}% ({:.1}%) | {} |",
            i + 1,
            resume_times(f),
            thousands(local),
            thousands(lost),
            thousands(after_up),
            if events_ok {
                "Down, then Up { gap: true } on both"
            } else {
                "MISSING events"
            },
            f.threads[0],
            f.threads[2],
            f.descriptors[0],
            f.descriptors[2],
            mib(f.rss[0]),
            mib(f.rss[3]),
            mib(f.heap[0]),
            mib(f.heap[3]),
            f.cpu.pct(f.cpu.foreign),
            f.cpu.pct(f.cpu.steal),
            if f.failures.is_empty() {
                "passed".to_string()
            } else {
                format!("FAILED: {}", f.failures.join("; "))
            }
        );
    }
    out += "\n";
    out
}
