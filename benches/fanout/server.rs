//! Starting, probing and stopping the server processes under test.

use std::fmt;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sys;

/// How long a freshly started server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The servers compared by the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// The hand-written mio server that does only the unavoidable work,
    /// run from this bench binary (see floor.rs).
    Floor,
    /// `target/release/examples/broadcast` from this crate (rooms by topics).
    Wshub,
    /// The same example with `--filter`: rooms by a `broadcast_to(filter)`
    /// walk over all connections. Only in the rooms workload; without rooms
    /// it would be the same server as `Wshub`.
    WshubFilter,
    /// tokio + tokio-tungstenite, run from this bench binary (see baseline.rs).
    Baseline,
}

impl ServerKind {
    /// Every server, in the order of the report's columns.
    pub const ALL: [ServerKind; 4] = [
        ServerKind::Floor,
        ServerKind::Wshub,
        ServerKind::WshubFilter,
        ServerKind::Baseline,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Floor => "floor",
            ServerKind::Wshub => "wshub",
            ServerKind::WshubFilter => "wshub-filter",
            ServerKind::Baseline => "tokio",
        }
    }

    /// Parses a name as printed by [`ServerKind::name`] (`baseline` is
    /// accepted for `tokio`, its name in earlier reports).
    pub fn from_name(name: &str) -> Option<ServerKind> {
        match name {
            "baseline" | "tokio-tungstenite" => Some(ServerKind::Baseline),
            _ => ServerKind::ALL.into_iter().find(|k| k.name() == name),
        }
    }

    /// Whether the server runs the broadcast example of this crate.
    pub fn is_wshub(self) -> bool {
        matches!(self, ServerKind::Wshub | ServerKind::WshubFilter)
    }

    /// Whether this server takes part in cells with (`true`) or without rooms.
    pub fn runs(self, rooms: bool) -> bool {
        rooms || self != ServerKind::WshubFilter
    }
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the server executables are and how to pin them.
pub struct Launcher {
    /// The wshub broadcast example, if it is part of this run.
    pub wshub_exe: Option<PathBuf>,
    /// This bench binary; re-executed with `--baseline-server ADDR` or
    /// `--floor-server ADDR`.
    pub bench_exe: PathBuf,
    /// Prefix such as `taskset -c 0`, if pinning is possible.
    pub pin_prefix: Option<Vec<String>>,
    /// Directory for the servers' stderr logs.
    pub log_dir: PathBuf,
}

/// Builds the release `broadcast` example (a no-op when it is up to date)
/// and returns its path.
pub fn build_wshub_example(manifest_dir: &Path) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    eprintln!("building the wshub broadcast example: {cargo} build --release --example broadcast");
    // The JSON messages on stdout name the executable, wherever the target
    // directory is (CARGO_TARGET_DIR; and under `cargo test` this binary is
    // a debug build, so its own location does not tell the release directory).
    let output = Command::new(&cargo)
        .args(["build", "--release", "--example", "broadcast"])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(manifest_dir)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("could not run `{cargo} build --release --example broadcast`: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`{cargo} build --release --example broadcast` failed ({}); \
             pass --no-wshub to benchmark only the floor and tokio servers",
            output.status
        ));
    }
    let exe = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "broadcast")
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| release_dir(manifest_dir).join("examples").join("broadcast"));
    if !exe.is_file() {
        return Err(format!(
            "built the broadcast example but {} does not exist",
            exe.display()
        ));
    }
    Ok(exe)
}

/// The `release` profile directory, if cargo's messages did not name the
/// example: under `cargo bench` this binary lives in `<target>/release/deps/`.
fn release_dir(manifest_dir: &Path) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
        .filter(|dir| dir.file_name().is_some_and(|n| n == "release"))
        .unwrap_or_else(|| manifest_dir.join("target").join("release"))
}

/// `taskset -c CPU` if the taskset binary exists and the machine has 2+ CPUs.
pub fn pin_prefix(cpu: usize, cores: usize) -> Option<Vec<String>> {
    pin_prefix_list(&cpu.to_string(), cores)
}

/// `taskset -c LIST` (such as `0,1`) if the taskset binary exists, the machine has 2+
/// CPUs and the list is valid here.
pub fn pin_prefix_list(cpus: &str, cores: usize) -> Option<Vec<String>> {
    if cores < 2 {
        return None;
    }
    let ok = Command::new("taskset")
        .args(["-c", cpus, "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| vec!["taskset".to_string(), "-c".to_string(), cpus.to_string()])
}

/// A running server process. Killed (SIGKILL to its PID) when dropped.
pub struct ServerProcess {
    pub kind: ServerKind,
    pub addr: SocketAddr,
    pub log_path: PathBuf,
    child: Child,
}

impl ServerProcess {
    /// Starts a server on a free loopback port with `threads` event loops (wshub:
    /// `--threads`; the other servers have one), pinned with `pin` (None: not pinned), and
    /// waits until it accepts. The server's stdout goes to its log too: wshub's example logs
    /// there, and [`loop_connections`](Self::loop_connections) reads it.
    pub fn start_with(
        kind: ServerKind,
        launcher: &Launcher,
        tag: &str,
        threads: usize,
        pin: Option<&[String]>,
    ) -> Result<Self, String> {
        if threads > 1 && !kind.is_wshub() {
            return Err(format!("the {kind} server has one thread"));
        }
        Self::spawn(kind, launcher, tag, threads, pin, true)
    }

    fn spawn(
        kind: ServerKind,
        launcher: &Launcher,
        tag: &str,
        threads: usize,
        pin: Option<&[String]>,
        stdout_to_log: bool,
    ) -> Result<Self, String> {
        let addr = free_loopback_addr()?;
        let mut argv: Vec<String> = pin.map(<[String]>::to_vec).unwrap_or_default();
        match kind {
            ServerKind::Wshub | ServerKind::WshubFilter => {
                let exe = launcher
                    .wshub_exe
                    .as_ref()
                    .ok_or("the wshub server is not part of this run")?;
                argv.extend([exe.display().to_string(), addr.to_string()]);
                if kind == ServerKind::WshubFilter {
                    argv.push("--filter".to_string());
                }
                if threads > 1 {
                    argv.extend(["--threads".to_string(), threads.to_string()]);
                }
            }
            ServerKind::Floor => argv.extend([
                launcher.bench_exe.display().to_string(),
                "--floor-server".to_string(),
                addr.to_string(),
            ]),
            ServerKind::Baseline => argv.extend([
                launcher.bench_exe.display().to_string(),
                "--baseline-server".to_string(),
                addr.to_string(),
            ]),
        }
        let log_path = launcher.log_dir.join(format!("{kind}-{tag}.log"));
        let log = File::create(&log_path)
            .map_err(|e| format!("cannot create server log {}: {e}", log_path.display()))?;
        let stdout = if stdout_to_log {
            log.try_clone()
                .map_err(|e| format!("cannot share server log {}: {e}", log_path.display()))?
                .into()
        } else {
            Stdio::null()
        };
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {kind} server ({}): {e}", argv.join(" ")))?;
        let mut server = ServerProcess {
            kind,
            addr,
            log_path,
            child,
        };
        server.wait_ready()?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls the port with plain TCP connects until the server accepts one.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            self.check_alive()?;
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "{} server did not accept connections on {} within {READY_TIMEOUT:?}{}",
            self.kind,
            self.addr,
            self.log_tail()
        ))
    }

    /// Errors out (with the log's tail) if the process has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} server (pid {}) exited: {status}{}",
                self.kind,
                self.pid(),
                self.log_tail()
            )),
            Err(e) => Err(format!("cannot query {} server status: {e}", self.kind)),
        }
    }

    pub fn cpu_time(&self) -> Result<Duration, String> {
        sys::process_cpu_time(self.pid())
            .map_err(|e| format!("cannot read CPU time of {} server: {e}", self.kind))
    }

    /// Write-type system calls the server has made so far (None where /proc does not
    /// tell).
    pub fn write_syscalls(&self) -> Option<u64> {
        sys::process_write_syscalls(self.pid()).ok()
    }

    /// CPU time of each of wshub's event loops (threads `wshub-loop-N`), in loop order;
    /// /proc clock-tick resolution.
    pub fn loop_cpu_times(&self) -> Result<Vec<Duration>, String> {
        sys::thread_cpu_times(self.pid(), "wshub-loop-")
            .map_err(|e| format!("cannot read loop CPU times of {} server: {e}", self.kind))
    }

    /// Open connections on each of wshub's loops, in loop order: asks the broadcast
    /// example with SIGUSR1 (started with [`start_with`](Self::start_with), which logs its
    /// stdout) and reads the line it logs. Only for the wshub servers: SIGUSR1 kills the
    /// others.
    pub fn loop_connections(&mut self) -> Result<Vec<usize>, String> {
        const MARK: &str = "open connections per loop:";
        if !self.kind.is_wshub() {
            return Err(format!(
                "the {} server does not report its loops",
                self.kind
            ));
        }
        let answers = |log: &str| log.lines().filter(|l| l.contains(MARK)).count();
        let before = answers(&std::fs::read_to_string(&self.log_path).unwrap_or_default());
        let pid = libc::pid_t::try_from(self.pid()).map_err(|e| e.to_string())?;
        // SAFETY: kill has no memory-safety preconditions; the PID is our own child,
        // which has not been waited for (so it cannot have been reused).
        if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
            return Err(format!(
                "cannot signal the {} server: {}",
                self.kind,
                std::io::Error::last_os_error()
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            self.check_alive()?;
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            if answers(&log) > before {
                let line = log.lines().rfind(|l| l.contains(MARK)).unwrap_or_default();
                let counts = line.split_once(MARK).map_or("", |(_, rest)| rest);
                let counts = counts.split('(').next().unwrap_or_default();
                return counts
                    .split_whitespace()
                    .map(|n| n.parse().map_err(|e| format!("{line:?}: {e}")))
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "the {} server did not log its loops' connections within 5 s{}",
            self.kind,
            self.log_tail()
        ))
    }

    pub fn rss_bytes(&self) -> Result<u64, String> {
        sys::process_rss_bytes(self.pid())
            .map_err(|e| format!("cannot read RSS of {} server: {e}", self.kind))
    }

    /// The last lines of the server's stderr, formatted for an error message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(15)..];
        if tail.is_empty() {
            format!(" (server log {} is empty)", self.log_path.display())
        } else {
            format!(
                "\n--- last lines of {} ---\n{}",
                self.log_path.display(),
                tail.join("\n")
            )
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Our own child, addressed by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that is free right now (bound, read, released).
fn free_loopback_addr() -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot bind a probe socket on 127.0.0.1: {e}"))?;
    listener
        .local_addr()
        .map_err(|e| format!("cannot read probe socket address: {e}"))
}
