//! Resource and I/O errors (issue #4): running out of file descriptors pauses accepting
//! with backoff (logged once per episode, no spinning) and recovers; an I/O error closes
//! only its own connection.
//!
//! The descriptor test runs the server in a child process with a low `RLIMIT_NOFILE`: this
//! test binary re-executes itself, and `fd_limited_server_child` acts as the server when
//! `WSHUB_FD_CHILD` is set (and passes at once otherwise).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use wshub::{CloseInfo, Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request, Server};

const CHILD_ENV: &str = "WSHUB_FD_CHILD";
const FD_LIMIT: u64 = 64;

/// Echoes text; "stats" answers with the counters that matter here.
struct ChildApp;

impl Handler for ChildApp {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
        Reply::accept(())
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId, msg: Message) {
        let Message::Text(t) = msg else { return };
        let reply = if t.as_str() == "stats" {
            let s = ctx.stats();
            format!(
                "accept_pauses={} open={}",
                s.accept_pauses, s.open_connections
            )
        } else {
            t.to_string()
        };
        ctx.send(id, &Frame::text(&reply)).unwrap();
    }
}

/// Log records go to stderr, one line each, for the parent to count.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let _ = writeln!(std::io::stderr(), "{} {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

#[test]
fn fd_limited_server_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return; // only meaningful as the child of the test below
    }
    let limit = libc::rlimit {
        rlim_cur: FD_LIMIT as libc::rlim_t,
        rlim_max: FD_LIMIT as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct we pass; no other preconditions.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    log::set_logger(&LOGGER).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    let mut server = Server::bind("127.0.0.1:0", Config::default(), ChildApp).unwrap();
    let handle = server.handle();
    println!("ADDR {}", server.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    // Stops when the parent closes our stdin (or dies), or after a minute in any case.
    let stdin_handle = handle.clone();
    thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = stdin_handle.shutdown();
    });
    thread::spawn(move || {
        thread::sleep(Duration::from_secs(60));
        let _ = handle.shutdown();
    });
    server.run().unwrap();
}

/// Kills the child (by its pid) if the test fails before it exits.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn echo(ws: &mut Client, text: &str) {
    ws.send(tungstenite::Message::text(text)).unwrap();
    assert_eq!(next_text(ws), text);
}

#[test]
fn running_out_of_descriptors_pauses_accepting_without_spinning_and_recovers() {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "fd_limited_server_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("re-execute the test binary");
    let mut child = ChildGuard(child);
    let pid = child.0.id();
    let (addr_tx, addr_rx) = mpsc::channel();
    let stdout = child.0.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest may have printed the test's name on the same line.
            if let Some((_, addr)) = line.split_once("ADDR ") {
                let _ = addr_tx.send(addr.trim().parse::<SocketAddr>().unwrap());
            }
        }
    });
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.0.stderr.take().unwrap();
    let log_writer = Arc::clone(&log);
    let log_thread = thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = log_writer.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the child server did not start");
    let url = format!("ws://{addr}/");

    let mut control = connect(&url);
    echo(&mut control, "before");

    // More connections than the child has descriptors for: each sends its upgrade request,
    // none reads. The kernel completes them all; the server accepts until EMFILE.
    let flood: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = raw_connect(addr);
            s.write_all(upgrade_request("/", "").as_bytes()).unwrap();
            s
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || open_fds(pid) as u64
            >= FD_LIMIT - 1),
        "the child never reached its descriptor limit: {} open",
        open_fds(pid)
    );
    thread::sleep(Duration::from_millis(300));

    // Held at the limit with connections waiting in the backlog: no spinning.
    let tps = ticks_per_second();
    let before = cpu_ticks(pid);
    let window = Instant::now();
    thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - before;
    let window = window.elapsed();
    let cpu = Duration::from_millis(used * 1000 / tps);
    assert!(
        cpu < window / 5,
        "the server used {cpu:?} of CPU in {window:?} while it could not accept"
    );
    // Connections it has still work.
    let t = Instant::now();
    echo(&mut control, "during");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // Free the descriptors: the server accepts again (after its backoff, at most 1 s).
    drop(flood);
    let t = Instant::now();
    let mut fresh = connect(&url);
    echo(&mut fresh, "after");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?} to accept again",
        t.elapsed()
    );
    fresh.send(tungstenite::Message::text("stats")).unwrap();
    let stats = next_text(&mut fresh);
    assert!(
        stats.starts_with("accept_pauses=1 "),
        "one episode of accept failures expected: {stats}"
    );
    close_client(fresh);
    close_client(control);

    // Closing its stdin shuts the child down.
    drop(child.0.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the child did not shut down");
        thread::sleep(Duration::from_millis(20));
    };
    log_thread.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert!(status.success(), "child failed: {status}\n{log}");
    // Logged once per episode: when it started and when it ended.
    assert_eq!(log.matches("accept failed").count(), 1, "{log}");
    assert_eq!(
        log.matches("accepting connections again").count(),
        1,
        "{log}"
    );
}

// ----- I/O errors -----

/// On "fill", queues 8 MiB for the sender. Echoes anything else; records `on_close`.
#[derive(Default, Clone)]
struct Filler {
    closes: Arc<Mutex<Vec<(ConnId, CloseInfo)>>>,
    opened: Arc<Mutex<Vec<ConnId>>>,
}

impl Handler for Filler {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
        Reply::accept(())
    }

    fn on_open(&mut self, _: &mut Ctx<'_, ()>, id: ConnId) {
        self.opened.lock().unwrap().push(id);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId, msg: Message) {
        let Message::Text(t) = msg else { return };
        if t.as_str() == "fill" {
            for _ in 0..8 {
                ctx.send(id, &Frame::binary(&[1; 1 << 20])).unwrap();
            }
        } else {
            ctx.send(id, &Frame::text(&t)).unwrap();
        }
    }

    fn on_close(&mut self, _: &mut Ctx<'_, ()>, id: ConnId, info: CloseInfo, _: ()) {
        self.closes.lock().unwrap().push((id, info));
    }
}

/// Drops the connection with a TCP reset instead of a FIN.
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

#[test]
fn an_io_error_closes_only_its_own_connection() {
    let filler = Filler::default();
    let server = start(
        Config::default().max_backpressure(64 << 20),
        clone_per_loop(filler.clone()),
    );
    let mut bystander = connect(&server.url("/"));

    // Reset with megabytes still queued for it (a write or read error, whichever first).
    let mut victim = RawWs::upgrade(connect_with_rcvbuf(server.addr, 16 * 1024), "/");
    victim.send(OP_TEXT, b"fill").unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().queued_bytes > 1 << 20
    }));
    // And one reset in the middle of its handshake: not a WebSocket yet, so no on_close.
    let mut half = raw_connect(server.addr);
    half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().tcp_connections == 3
    }));
    reset(victim.stream);
    reset(half);

    assert!(
        wait_until(Duration::from_secs(5), || {
            let s = server.handle.stats();
            s.tcp_connections == 1 && s.open_connections == 1
        }),
        "{:?}",
        server.handle.stats()
    );
    let stats = server.handle.stats();
    assert_eq!(stats.queued_bytes, 0, "{stats:?}");
    for i in 0..3 {
        echo(&mut bystander, &format!("still here {i}"));
    }
    let closes = filler.closes.lock().unwrap().clone();
    assert_eq!(closes.len(), 1, "{closes:?}");
    assert_eq!(closes[0].0, filler.opened.lock().unwrap()[1]);
    assert_eq!((closes[0].1.code, closes[0].1.clean), (1006, false));
    close_client(bystander);
    server.stop().1.unwrap();
}
