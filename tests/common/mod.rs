//! Shared test support: a server on a background thread, and real clients on loopback.
#![allow(dead_code)] // each test file uses a different part of this

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};
use wshub::{Config, Handle, Handler, Server};

/// How long any single blocking client operation may take before a test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A server running `run()` on its own thread, bound to 127.0.0.1 on a free port.
pub struct TestServer<H> {
    pub addr: SocketAddr,
    pub handle: Handle,
    thread: Option<JoinHandle<(H, std::io::Result<()>)>>,
}

pub fn start<H>(config: Config, handler: H) -> TestServer<H>
where
    H: Handler + Send + 'static,
    H::Data: Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut server = Server::bind("127.0.0.1:0", config, handler).expect("bind");
        tx.send((server.local_addr().expect("addr"), server.handle()))
            .expect("report addr");
        let result = server.run();
        // Hand the handler back so tests can inspect what it recorded.
        (server.into_handler(), result)
    });
    let (addr, handle) = rx.recv_timeout(IO_TIMEOUT).expect("server did not start");
    TestServer {
        addr,
        handle,
        thread: Some(thread),
    }
}

impl<H> TestServer<H> {
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Graceful shutdown; returns the handler and `run()`'s result.
    pub fn stop(mut self) -> (H, std::io::Result<()>) {
        let _ = self.handle.shutdown();
        self.join()
    }

    /// Waits for `run()` to return (after a shutdown requested elsewhere).
    pub fn join(&mut self) -> (H, std::io::Result<()>) {
        let thread = self.thread.take().expect("joined twice");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !thread.is_finished() {
            assert!(
                Instant::now() < deadline,
                "server thread did not stop within 30 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        thread.join().expect("server thread panicked")
    }
}

impl<H> Drop for TestServer<H> {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.handle.shutdown();
        }
    }
}

pub type Client = WebSocket<MaybeTlsStream<TcpStream>>;

/// A tungstenite client connected to `url`, with read/write timeouts so a test cannot hang.
pub fn connect(url: &str) -> Client {
    let (ws, response) = tungstenite::connect(url).unwrap_or_else(|e| panic!("connect {url}: {e}"));
    assert_eq!(response.status(), 101);
    set_timeouts(&ws, IO_TIMEOUT);
    ws
}

pub fn set_timeouts(ws: &Client, timeout: Duration) {
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(timeout)).expect("timeout");
        s.set_write_timeout(Some(timeout)).expect("timeout");
    }
}

/// The next text or binary message (pings and pongs are skipped).
pub fn next_data(ws: &mut Client) -> Message {
    loop {
        let m = ws.read().expect("read");
        if matches!(m, Message::Text(_) | Message::Binary(_) | Message::Close(_)) {
            return m;
        }
    }
}

pub fn next_text(ws: &mut Client) -> String {
    match next_data(ws) {
        Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Sends raw bytes on a fresh TCP connection and reads until the server closes it.
/// Returns everything received. Fails the test if the server does not close within
/// `IO_TIMEOUT`.
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(request).expect("write");
    read_to_close(&mut s)
}

pub fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!(
                "server did not close the connection: {e} (got {:?})",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// The status line of an HTTP response.
pub fn status_line(response: &[u8]) -> String {
    let text = String::from_utf8_lossy(response);
    text.lines().next().unwrap_or_default().to_owned()
}

/// The body of an HTTP response.
pub fn body(response: &[u8]) -> String {
    let text = String::from_utf8_lossy(response);
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// A valid upgrade request for `path`.
pub fn upgrade_request(path: &str, extra_headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    )
}

/// Polls `cond` every 5 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}
