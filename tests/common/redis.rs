//! A real `redis-server` for the tests (and benches) of the Redis broker.
//!
//! [`Redis::start`] runs Debian's `redis-server` on a free loopback port with no
//! persistence, in a directory of its own under the target directory, and the value kills
//! it (by its PID) when dropped. If `redis-server` is missing it is installed once with
//! `apt-get` (idempotent: an exclusive `flock` lets one test process install while the
//! others wait, and the binary is looked for again after the lock). There is no skip:
//! without it the tests fail, saying why.

use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long installing redis-server may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a started server may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `redis-server`, killed on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Redis {
    /// A new server on a free port. (Another process may take the port between the pick and
    /// redis-server's bind: then another port is tried.)
    pub fn start() -> Redis {
        let mut last = String::new();
        for _ in 0..5 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            match Redis::try_start_on(port) {
                Ok(redis) => return redis,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start on 5 free ports; the last said: {last}");
    }

    /// A new server on `port` (e.g. the port of one that was killed: a restart).
    pub fn start_on(port: u16) -> Redis {
        Redis::try_start_on(port).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start_on(port: u16) -> Result<Redis, String> {
        let exe = redis_server();
        let dir = target_dir().join("redis").join(format!("{port}"));
        fs::create_dir_all(&dir).expect("redis directory");
        let log = fs::File::create(dir.join("redis.log")).expect("redis log");
        let child = Command::new(exe)
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let mut redis = Redis {
            child: Some(child),
            port,
            dir,
        };
        redis.wait_until_up()?;
        Ok(redis)
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server at once (SIGKILL), as a crash would, and waits for it to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends one command (inline protocol) and returns the raw reply, e.g.
    /// `command("PUBSUB NUMSUB wshub:room")`.
    pub fn command(&self, line: &str) -> String {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).expect("connect redis");
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        std::io::Write::write_all(&mut s, format!("{line}\r\nQUIT\r\n").as_bytes()).expect("write");
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply.trim_end_matches("+OK\r\n").to_owned()
    }

    /// How many subscribers Redis has for `channel`.
    pub fn subscribers(&self, channel: &str) -> usize {
        let reply = self.command(&format!("PUBSUB NUMSUB {channel}"));
        // *2 $len channel :N
        reply
            .lines()
            .find_map(|line| line.strip_prefix(':'))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected PUBSUB NUMSUB reply {reply:?}"))
    }

    fn wait_until_up(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) {
                s.set_read_timeout(Some(Duration::from_secs(1))).ok();
                let mut buf = [0u8; 16];
                if std::io::Write::write_all(&mut s, b"PING\r\n").is_ok()
                    && s.read(&mut buf)
                        .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
                {
                    return Ok(());
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log = fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                self.child = None;
                return Err(format!(
                    "redis-server exited ({status}) on port {}: {log}",
                    self.port
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "redis-server did not answer on port {} within {START_TIMEOUT:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The `redis-server` binary, installed with apt-get on first use if missing.
fn redis_server() -> &'static Path {
    static EXE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match EXE.get_or_init(find_or_install) {
        Ok(exe) => exe,
        Err(e) => panic!("no redis-server for the Redis broker tests: {e}"),
    }
}

fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("redis-server"))
        .find(|exe| exe.is_file())
}

fn find_or_install() -> Result<PathBuf, String> {
    if let Some(exe) = find() {
        return Ok(exe);
    }
    let dir = target_dir();
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let lock = fs::File::create(dir.join("redis-install.lock")).map_err(|e| e.to_string())?;
    // SAFETY: flock on a descriptor this function owns; released when `lock` drops.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!("flock: {}", std::io::Error::last_os_error()));
    }
    if let Some(exe) = find() {
        return Ok(exe);
    }
    let run = |args: &[&str]| -> Result<(), String> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let mut cmd = if root {
            Command::new(args[0])
        } else {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", args[0]]);
            sudo
        };
        cmd.args(&args[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut child = cmd.spawn().map_err(|e| format!("{args:?}: {e}"))?;
        let deadline = Instant::now() + INSTALL_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("{args:?} failed: {status}"))
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("{args:?} took over {INSTALL_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    eprintln!("redis-server is missing: installing it with apt-get");
    let install = ["apt-get", "install", "-y", "-q", "redis-server"];
    if run(&install).is_err() {
        run(&["apt-get", "update", "-q"])?;
        run(&install)?;
    }
    find().ok_or_else(|| "apt-get install redis-server left no redis-server".to_owned())
}

/// `$CARGO_TARGET_DIR` (relative to the manifest if relative), else `<manifest>/target`.
fn target_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => manifest.join(dir),
        None => manifest.join("target"),
    }
}
