//! What this process and its redis-server use: CPU by role (the nodes' loops, the brokers'
//! threads, the clients), threads, descriptors, RSS and heap, and the machine's load.

use std::time::{Duration, Instant};

use crate::sys;

/// CPU time so far, by role.
#[derive(Clone, Copy)]
pub struct CpuSnapshot {
    at: Instant,
    /// Threads `node-N`: the servers' loops.
    loops: Duration,
    /// Threads `wshub-redis-pub` and `wshub-redis-sub`.
    broker: Duration,
    /// The main thread: the clients.
    clients: Duration,
    /// This whole process (exited threads included).
    process: Duration,
    /// The redis-server children.
    redis: Duration,
    /// The kernel's softirq threads (loopback TCP deferred by the kernel).
    ksoftirqd: Duration,
    /// All CPUs of the machine, busy; of which stolen by the hypervisor.
    machine: Duration,
    steal: Duration,
}

/// CPU used between two snapshots, by role.
#[derive(Clone, Copy, Default)]
pub struct CpuUse {
    pub wall: Duration,
    pub loops: Duration,
    pub broker: Duration,
    pub clients: Duration,
    pub redis: Duration,
    /// The kernel's softirq threads: network work deferred from interrupts, on this
    /// machine mostly our own loopback TCP. (Softirq work done in a thread's own context
    /// counts as that thread's CPU: the kernel does not account interrupt time apart.)
    pub ksoftirqd: Duration,
    /// Other processes (machine busy time less this process, redis-server, ksoftirqd and
    /// steal).
    pub foreign: Duration,
    /// Time the hypervisor gave this machine's CPUs to others.
    pub steal: Duration,
}

impl CpuSnapshot {
    pub fn take() -> CpuSnapshot {
        let (mut loops, mut broker, mut clients) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let me = std::process::id();
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                let dir = task.path();
                let tid: u32 = task.file_name().to_string_lossy().parse().unwrap_or(0);
                let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
                let ran = std::fs::read_to_string(dir.join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                    .map_or(Duration::ZERO, Duration::from_nanos);
                let comm = comm.trim();
                if tid == me {
                    clients += ran;
                } else if comm.starts_with("node-") {
                    loops += ran;
                } else if comm.starts_with("wshub-redis") {
                    broker += ran;
                }
            }
        }
        let redis = redis_pids()
            .into_iter()
            .filter_map(|pid| sys::process_cpu_time(pid).ok())
            .sum();
        let ksoftirqd = pids_named(|comm| comm.starts_with("ksoftirqd/"), None)
            .into_iter()
            .filter_map(|pid| sys::process_cpu_time(pid).ok())
            .sum();
        CpuSnapshot {
            at: Instant::now(),
            loops,
            broker,
            clients,
            process: sys::self_cpu_time(),
            redis,
            ksoftirqd,
            machine: sys::machine_busy_time().unwrap_or_default(),
            steal: steal_time(),
        }
    }

    /// What was used since `before`. (A redis-server killed meanwhile takes its CPU time
    /// with it: then `redis` counts only the new one.)
    pub fn since(&self, before: &CpuSnapshot) -> CpuUse {
        let process = self.process.saturating_sub(before.process);
        let redis = self.redis.saturating_sub(before.redis);
        let ksoftirqd = self.ksoftirqd.saturating_sub(before.ksoftirqd);
        let steal = self.steal.saturating_sub(before.steal);
        CpuUse {
            wall: self.at.duration_since(before.at),
            loops: self.loops.saturating_sub(before.loops),
            broker: self.broker.saturating_sub(before.broker),
            clients: self.clients.saturating_sub(before.clients),
            redis,
            foreign: self
                .machine
                .saturating_sub(before.machine)
                .saturating_sub(process + redis + ksoftirqd + steal),
            ksoftirqd,
            steal,
        }
    }
}

impl CpuUse {
    /// `part` as a percentage of one CPU over the wall time.
    pub fn pct(&self, part: Duration) -> f64 {
        part.as_secs_f64() * 100.0 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// The machine's steal time so far (the 8th field of /proc/stat's cpu line).
fn steal_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(8)?.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// The redis-server processes this process started.
pub fn redis_pids() -> Vec<u32> {
    pids_named(|comm| comm == "redis-server", Some(std::process::id()))
}

/// Processes whose name passes `name`, children of `parent` if given.
fn pids_named(name: impl Fn(&str) -> bool, parent: Option<u32>) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                return false;
            };
            let comm = &stat[open + 1..close];
            let ppid = stat[close + 1..]
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok());
            name(comm) && parent.is_none_or(|parent| ppid == Some(parent))
        })
        .collect()
}

/// Threads of this process.
pub fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Open descriptors of this process.
pub fn descriptors() -> usize {
    // The directory's own descriptor is open while it is read.
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count().saturating_sub(1))
}

/// This process's RSS in bytes, after giving freed heap back to the system if `trim`.
pub fn rss(trim: bool) -> u64 {
    if trim {
        // SAFETY: malloc_trim only releases free memory of the allocator.
        unsafe {
            libc::malloc_trim(0);
        }
    }
    sys::process_rss_bytes(std::process::id()).unwrap_or(0)
}

/// Bytes the allocator has handed out and not got back (glibc's mallinfo2 over all arenas:
/// in use in the heaps plus mmapped chunks): unlike the RSS, no fragmentation, no cached
/// thread stacks, no pages kept for later. A leak grows it run after run.
pub fn heap_in_use() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let info = unsafe { libc::mallinfo2() };
    (info.uordblks + info.hblkhd) as u64
}

/// The 1-, 5- and 15-minute load averages, as /proc/loadavg has them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Waits up to `timeout` for `probe` to be at most `baseline`; returns its last value.
pub fn settle_to(baseline: usize, timeout: Duration, probe: fn() -> usize) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let now = probe();
        if now <= baseline || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
