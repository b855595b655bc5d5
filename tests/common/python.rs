//! Python's `websockets` as a real permessage-deflate client (RFC 7692) for the tests, and
//! child processes run with a deadline.
//!
//! [`python`] makes an isolated environment once, under the target directory
//! (`$CARGO_TARGET_DIR/pyenv`, else `<manifest>/target/pyenv`): a venv with `websockets`
//! pinned to [`WEBSOCKETS`], or, where `python3 -m venv` is missing (Debian without
//! `python3-venv`), `pip install --target` and `PYTHONPATH`. Test threads and test
//! processes may ask at the same time: an exclusive `flock` on `pyenv.lock` lets one of them
//! build while the others wait, and a marker file written last (by rename) says the
//! environment is complete, so a build cut short is redone, never used. There is no skip:
//! without Python or PyPI the tests fail, saying why.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The pinned version of Python's `websockets`.
pub const WEBSOCKETS: &str = "17.4";

/// How long making the environment (venv, pip install) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(300);

/// A Python interpreter that can `import websockets`.
#[derive(Debug)]
pub struct Python {
    exe: PathBuf,
    /// Set when the package was installed with `pip install --target` (no venv).
    pythonpath: Option<PathBuf>,
}

impl Python {
    /// A command running this interpreter, with its environment set (unbuffered output, no
    /// bytecode files in the source tree).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("PYTHONHOME");
        match &self.pythonpath {
            Some(path) => cmd.env("PYTHONPATH", path),
            None => cmd.env_remove("PYTHONPATH"),
        };
        cmd
    }

    /// A command running the script `tests/deflate/<name>`.
    pub fn script(&self, name: &str) -> Command {
        let mut cmd = self.command();
        cmd.arg(script_path(name));
        cmd
    }
}

/// The path of `tests/deflate/<name>`.
pub fn script_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("deflate")
        .join(name)
}

/// The interpreter with `websockets` installed, made on first use (see the module docs).
/// Panics with the reason if it cannot be made.
pub fn python() -> &'static Python {
    static PYTHON: OnceLock<Result<Python, String>> = OnceLock::new();
    match PYTHON.get_or_init(setup) {
        Ok(python) => python,
        Err(e) => panic!("cannot make the Python environment for the deflate tests: {e}"),
    }
}

/// The target directory: `$CARGO_TARGET_DIR` (relative to the manifest if relative), else
/// `<manifest>/target`.
fn target_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => manifest.join(dir),
        _ => manifest.join("target"),
    }
}

/// What the marker file says: the pin, then how the environment was made.
fn marker_text(kind: &str) -> String {
    format!("websockets=={WEBSOCKETS}\n{kind}\n")
}

fn setup() -> Result<Python, String> {
    let target = target_dir();
    fs::create_dir_all(&target).map_err(|e| format!("create {}: {e}", target.display()))?;
    let env_dir = target.join("pyenv");
    let marker = env_dir.join("wshub-ready");
    if let Some(python) = ready(&env_dir, &marker) {
        return Ok(python);
    }
    let lock_path = target.join("pyenv.lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("open {}: {e}", lock_path.display()))?;
    // Blocks while another test process builds; the kernel drops the lock if it dies.
    // SAFETY: flock on a descriptor we own, which stays open until the end of this scope.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "flock {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        ));
    }
    // Another process may have finished while we waited.
    if let Some(python) = ready(&env_dir, &marker) {
        return Ok(python);
    }
    let result = build(&env_dir, &marker);
    drop(lock); // closing the descriptor releases the lock
    result
}

/// The environment if its marker says it is complete and matches the pin.
fn ready(env_dir: &Path, marker: &Path) -> Option<Python> {
    let text = fs::read_to_string(marker).ok()?;
    if text == marker_text("venv") {
        Some(Python {
            exe: env_dir.join("bin").join("python"),
            pythonpath: None,
        })
    } else if text == marker_text("target") {
        Some(Python {
            exe: PathBuf::from("python3"),
            pythonpath: Some(env_dir.join("site")),
        })
    } else {
        None
    }
}

/// Makes the environment from scratch (under the lock) and writes its marker last.
fn build(env_dir: &Path, marker: &Path) -> Result<Python, String> {
    if env_dir.exists() {
        // Left over from a build cut short, or made for another pin.
        fs::remove_dir_all(env_dir).map_err(|e| format!("remove {}: {e}", env_dir.display()))?;
    }
    let requirement = format!("websockets=={WEBSOCKETS}");
    let pip_args = [
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
    ];
    let mut venv = Command::new("python3");
    venv.args(["-m", "venv"]).arg(env_dir);
    let venv_out = run(venv, b"", SETUP_TIMEOUT)
        .map_err(|e| format!("python3 -m venv: {e} (is python3 installed?)"))?;
    let (python, kind, install) = if venv_out.status.success() {
        let python = Python {
            exe: env_dir.join("bin").join("python"),
            pythonpath: None,
        };
        let mut install = python.command();
        install.args(pip_args).arg(&requirement);
        (python, "venv", install)
    } else {
        // No venv module (Debian's python3-venv): install into a plain directory instead.
        let _ = fs::remove_dir_all(env_dir);
        let site = env_dir.join("site");
        let python = Python {
            exe: PathBuf::from("python3"),
            pythonpath: Some(site.clone()),
        };
        let mut install = Command::new("python3");
        install
            .args(pip_args)
            .arg("--target")
            .arg(&site)
            .arg(&requirement);
        (python, "target", install)
    };
    let out = run(install, b"", SETUP_TIMEOUT).map_err(|e| format!("pip install: {e}"))?;
    if !out.status.success() {
        let why = if kind == "target" {
            format!(
                "python3 -m venv failed ({}), and so did pip install --target",
                venv_out.stderr.trim()
            )
        } else {
            "pip install in the venv failed".to_owned()
        };
        return Err(format!(
            "{why}: {}\n{}\n{}",
            out.status,
            out.stdout.trim(),
            out.stderr.trim()
        ));
    }
    // It must import, and be the version pinned.
    let mut check = python.command();
    check.args(["-c", "import websockets; print(websockets.__version__)"]);
    let out = run(check, b"", SETUP_TIMEOUT).map_err(|e| format!("import websockets: {e}"))?;
    if !out.status.success() || out.stdout.trim() != WEBSOCKETS {
        return Err(format!(
            "import websockets after installing: {} {:?} {}",
            out.status,
            out.stdout.trim(),
            out.stderr.trim()
        ));
    }
    let tmp = env_dir.join("wshub-ready.tmp");
    fs::write(&tmp, marker_text(kind)).map_err(|e| format!("write marker: {e}"))?;
    fs::rename(&tmp, marker).map_err(|e| format!("rename marker: {e}"))?;
    Ok(python)
}

/// What a finished child process printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` with `stdin` as its input; kills it and fails if it runs past `timeout`.
pub fn run(cmd: Command, stdin: &[u8], timeout: Duration) -> Result<Output, String> {
    let running = Running::spawn(cmd, stdin)?;
    running.finish(timeout)
}

/// A child process whose stdout is read line by line as it comes. Killed when dropped, so
/// a failing test leaves no process behind.
pub struct Running {
    child: Child,
    lines: Receiver<String>,
    /// Lines already taken with `next_line`, for `finish`'s complete output.
    taken: Vec<String>,
    stdout_reader: Option<JoinHandle<()>>,
    stderr_reader: Option<JoinHandle<String>>,
}

impl Running {
    /// Starts `cmd`, writes `stdin` to it and closes its input.
    pub fn spawn(mut cmd: Command, stdin: &[u8]) -> Result<Running, String> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
        let mut input = child.stdin.take().expect("piped stdin");
        let stdin = stdin.to_vec();
        // A thread, so a child that prints before reading all its input cannot deadlock us.
        std::thread::spawn(move || {
            let _ = input.write_all(&stdin);
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        let stdout_reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut stderr = child.stderr.take().expect("piped stderr");
        let stderr_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Ok(Running {
            child,
            lines,
            taken: Vec::new(),
            stdout_reader: Some(stdout_reader),
            stderr_reader: Some(stderr_reader),
        })
    }

    /// The next line of output; `None` if the process closed its output first. Panics after
    /// `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                self.taken.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!(
                "no output within {timeout:?} from {:?}; so far: {:?}",
                self.child, self.taken
            ),
        }
    }

    /// Waits for the process to exit (killing it after `timeout`); its whole output.
    pub fn finish(mut self, timeout: Duration) -> Result<Output, String> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let stderr = self.collect_stderr();
                    return Err(format!(
                        "killed after {timeout:?}; stdout so far: {:?}; stderr: {stderr}",
                        self.collect_stdout()
                    ));
                }
                Err(e) => return Err(format!("wait: {e}")),
            }
        };
        let stdout = self.collect_stdout();
        let stderr = self.collect_stderr();
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    /// Every line of output, those taken with `next_line` first. The process has exited or
    /// been killed, so the reader reaches the end (unless a grandchild holds the pipe).
    fn collect_stdout(&mut self) -> String {
        if let Some(reader) = self.stdout_reader.take() {
            let _ = reader.join();
        }
        let mut lines = std::mem::take(&mut self.taken);
        lines.extend(self.lines.try_iter());
        let mut text = lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        text
    }

    fn collect_stderr(&mut self) -> String {
        self.stderr_reader
            .take()
            .map(|reader| reader.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
