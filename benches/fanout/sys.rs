//! Operating-system helpers: limits, CPU pinning, CPU time and memory of
//! processes, and facts about the machine for the report.

use std::io;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Monotonic nanoseconds since the bench started; shared by sender and
/// receiver (they are the same process), so latencies need no clock sync.
#[derive(Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            start: Instant::now(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; children inherit it.
/// Returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a properly initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Pins the calling process (the load generator) to one CPU.
pub fn pin_self_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays in bounds for cpu < 1024.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// CPU time (user + system) used so far by this process.
pub fn self_cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct; RUSAGE_SELF is always valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
}

/// CPU time (user + system) used so far by another process.
///
/// Uses the process's CPU-time clock (nanosecond precision); falls back to
/// utime + stime from /proc/PID/stat (clock-tick precision).
pub fn process_cpu_time(pid: u32) -> io::Result<Duration> {
    let pid_t = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    let mut clock: libc::clockid_t = 0;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: both calls write only into the locals passed to them.
    let ok = unsafe {
        libc::clock_getcpuclockid(pid_t, &mut clock) == 0
            && libc::clock_gettime(clock, &mut ts) == 0
    };
    if ok {
        return Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
    }
    proc_stat_cpu_time(pid)
}

/// Write-type system calls (write, writev, send…) process `pid` has made, all its threads
/// together: `syscw` of /proc/PID/io.
pub fn process_write_syscalls(pid: u32) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("syscw:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no syscw in /proc/PID/io"))
}

/// CPU time of each thread of process `pid` whose name is `prefix` followed by a number
/// (such as `wshub-loop-0`), in the order of that number: its run time from
/// /proc/PID/task/TID/schedstat (nanoseconds), or user + system time from its stat (clock
/// ticks) if the kernel has no schedstat.
pub fn thread_cpu_times(pid: u32, prefix: &str) -> io::Result<Vec<Duration>> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        let Some(index) = comm
            .trim()
            .strip_prefix(prefix)
            .and_then(|i| i.parse::<usize>().ok())
        else {
            continue;
        };
        let schedstat = std::fs::read_to_string(dir.join("schedstat")).ok();
        let run_ns = schedstat
            .as_deref()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        if let Some(ns) = run_ns {
            threads.push((index, Duration::from_nanos(ns)));
        } else if let Ok(stat) = std::fs::read_to_string(dir.join("stat")) {
            threads.push((index, stat_cpu_time(&stat)?));
        }
    }
    threads.sort_unstable_by_key(|&(index, _)| index);
    Ok(threads.into_iter().map(|(_, cpu)| cpu).collect())
}

fn proc_stat_cpu_time(pid: u32) -> io::Result<Duration> {
    stat_cpu_time(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)
}

/// utime + stime of a /proc/…/stat line.
fn stat_cpu_time(stat: &str) -> io::Result<Duration> {
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the file, i.e. 11 and 12 after ')'.
    let parse = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("malformed utime/stime in /proc/PID/stat"))
    };
    let ticks = parse(11)? + parse(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// CPU time all CPUs of the machine spent busy (not idle or iowait), from
/// /proc/stat; with the server's and our own CPU time subtracted it shows
/// whether something else was running during a measurement.
pub fn machine_busy_time() -> io::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .next()
        .filter(|l| l.starts_with("cpu "))
        .ok_or_else(|| io::Error::other("no cpu line in /proc/stat"))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(busy * 1_000_000_000 / hz))
}

/// `cpu / wall` for CPU time read from /proc/stat, or `None` when the
/// interval is too short for its clock-tick (10 ms per CPU) resolution.
pub fn proc_stat_share(cpu: Duration, wall: Duration) -> Option<f64> {
    (wall >= Duration::from_millis(250)).then(|| cpu.as_secs_f64() / wall.as_secs_f64())
}

/// Waits until the machine's CPUs are busy for less than `max_share` of one
/// CPU over half a second (the servers are idle meanwhile), at most `limit`.
/// Returns whether it got quiet.
pub fn wait_for_quiet(max_share: f64, limit: Duration) -> bool {
    let window = Duration::from_millis(500);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let before = machine_busy_time().unwrap_or_default();
        std::thread::sleep(window);
        let busy = machine_busy_time()
            .unwrap_or_default()
            .saturating_sub(before);
        if proc_stat_share(busy, window).is_some_and(|share| share <= max_share) {
            return true;
        }
    }
    false
}

/// The kernel's count of connections dropped because a listen queue was
/// full (TcpExt ListenOverflows, machine-wide). A dropped SYN costs the
/// client a 1 s retransmission timeout.
pub fn listen_overflows() -> u64 {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Resident set size of a process, in bytes (VmRSS from /proc/PID/status).
pub fn process_rss_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::other("no VmRSS in /proc/PID/status"))
}

/// Number of logical CPUs and the CPU model name, from /proc/cpuinfo.
pub fn cpu_info() -> (usize, String) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = info.lines().filter(|l| l.starts_with("processor")).count();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    let cores = if cores == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cores
    };
    (cores, model)
}

/// `git rev-parse --short HEAD`, with "-dirty" when the work tree has changes.
pub fn git_commit(repo: &Path) -> String {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(repo)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let Some(commit) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown (no commit yet)".to_string();
    };
    let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    }
}

/// Current UTC time as "YYYY-MM-DD HH:MM UTC".
pub fn utc_now_string() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Lets the kernel pick the source port at connect time, per 4-tuple, so
/// many connections from one source address don't exhaust ephemeral ports.
pub fn set_bind_address_no_port(socket: &socket2::Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: valid fd, pointer and length of a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
