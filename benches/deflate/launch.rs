//! The server under test: the release `broadcast` example, started with the arguments of a
//! run (`--deflate ...`) on a free loopback port, killed by its PID when dropped.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `broadcast` example.
pub struct Server {
    pub addr: SocketAddr,
    /// Its stderr (and what gdb makes it print there).
    pub log_path: PathBuf,
    child: Child,
}

impl Server {
    /// Starts `exe ADDR args...` (behind `pin`, e.g. `taskset -c 0`), with its stderr in
    /// `log_path`, and waits until it accepts.
    pub fn start(
        exe: &Path,
        args: &[String],
        pin: Option<&[String]>,
        log_path: PathBuf,
    ) -> Result<Server, String> {
        let addr = free_loopback_addr()?;
        let mut argv: Vec<String> = pin.map(<[String]>::to_vec).unwrap_or_default();
        argv.push(exe.display().to_string());
        argv.push(addr.to_string());
        argv.extend(args.iter().cloned());
        let log = File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start `{}`: {e}", argv.join(" ")))?;
        let mut server = Server {
            addr,
            log_path,
            child,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            server.check_alive()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "`{}` did not accept connections within {READY_TIMEOUT:?}{}",
                    argv.join(" "),
                    server.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error (with the log's tail) if the server has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "the server (pid {}) exited: {status}{}",
                self.pid(),
                self.log_tail()
            )),
            Err(e) => Err(format!("cannot query the server's status: {e}")),
        }
    }

    pub fn cpu_time(&self) -> Result<Duration, String> {
        crate::sys::process_cpu_time(self.pid())
            .map_err(|e| format!("cannot read the server's CPU time: {e}"))
    }

    pub fn rss_bytes(&self) -> Result<u64, String> {
        crate::sys::process_rss_bytes(self.pid())
            .map_err(|e| format!("cannot read the server's RSS: {e}"))
    }

    /// `error`, with whether the server still runs and where its log is.
    pub fn explain(&mut self, error: String) -> String {
        match self.check_alive() {
            Ok(()) => format!(
                "{error}\n(the server, pid {}, was still running; its log: {})",
                self.pid(),
                self.log_path.display()
            ),
            Err(exited) => format!("{error}\n{exited}"),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(15)..];
        format!(
            "\n--- last lines of {} ---\n{}",
            self.log_path.display(),
            tail.join("\n")
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Our own child, by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that is free right now.
fn free_loopback_addr() -> Result<SocketAddr, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("cannot find a free loopback port: {e}"))
}
