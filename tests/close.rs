//! How connections end: a close started by either side (code and reason seen by the other
//! side, `on_close` exactly once), a peer that drops TCP (1006), and a protocol violation
//! (1002 both ways).

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use wshub::{CloseInfo, Config, ConnId, Ctx, Handler, Message, Reply, Request};

#[derive(Clone, Debug, PartialEq)]
enum Event {
    Open(ConnId),
    Text(ConnId, String),
    Closed(ConnId, CloseInfo),
}

type Log = Arc<Mutex<Vec<Event>>>;

/// Records everything; "kick" makes the server close with 4002 "kick".
#[derive(Clone)]
struct Recorder {
    log: Log,
}

fn recorder() -> (Recorder, Log) {
    let log = Log::default();
    (
        Recorder {
            log: Arc::clone(&log),
        },
        log,
    )
}

impl Handler for Recorder {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
        Reply::accept(())
    }

    fn on_open(&mut self, _: &mut Ctx<'_, ()>, id: ConnId) {
        self.log.lock().unwrap().push(Event::Open(id));
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId, msg: Message) {
        let Message::Text(t) = msg else {
            panic!("unexpected binary message");
        };
        self.log
            .lock()
            .unwrap()
            .push(Event::Text(id, t.to_string()));
        if t == "kick" {
            ctx.close(id, 4002, "kick").unwrap();
            // No data frames after the close frame.
            assert_eq!(
                ctx.send(id, &wshub::Frame::text("late")),
                Err(wshub::SendError::Closing)
            );
        }
    }

    fn on_close(&mut self, _: &mut Ctx<'_, ()>, id: ConnId, info: CloseInfo, _: ()) {
        self.log.lock().unwrap().push(Event::Closed(id, info));
    }
}

/// A long close timeout, so a connection that ends promptly cannot have timed out.
fn config() -> Config {
    Config::default().close_timeout(Duration::from_secs(10))
}

fn opened(log: &Log) -> ConnId {
    assert!(wait_until(IO_TIMEOUT, || !log.lock().unwrap().is_empty()));
    match log.lock().unwrap()[0] {
        Event::Open(id) => id,
        ref other => panic!("first event {other:?}"),
    }
}

fn wait_closed(log: &Log) {
    assert!(
        wait_until(IO_TIMEOUT, || log
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::Closed(..)))),
        "no on_close: {:?}",
        log.lock().unwrap()
    );
}

fn info(code: u16, reason: &str, clean: bool) -> CloseInfo {
    CloseInfo {
        code,
        reason: reason.to_owned(),
        clean,
    }
}

/// After the close handshake the server closes TCP first (RFC 6455 §7.1.1): the client's
/// next read ends with `ConnectionClosed` well before the close timeout.
fn expect_tcp_closed_promptly(ws: &mut Client) {
    set_timeouts(ws, Duration::from_secs(3));
    let t = Instant::now();
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed) => {}
        other => panic!(
            "after the close handshake: expected the server to close TCP, got {other:?} after {:?}",
            t.elapsed()
        ),
    }
}

#[test]
fn client_close_reaches_on_close_with_code_and_reason() {
    let (app, log) = recorder();
    let server = start(config(), clone_per_loop(app));
    let mut ws = connect(&server.url("/ws"));
    let id = opened(&log);
    ws.send(tungstenite::Message::text("hello")).unwrap();
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: "bye".into(),
    }))
    .unwrap();
    // The server answers with the same code (RFC 6455 §5.5.1).
    match ws.read().expect("close reply") {
        tungstenite::Message::Close(Some(f)) => {
            assert_eq!((u16::from(f.code), f.reason.as_str()), (4001, "bye"))
        }
        other => panic!("expected the close reply, got {other:?}"),
    }
    expect_tcp_closed_promptly(&mut ws);
    wait_closed(&log);
    server.stop().1.unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            Event::Open(id),
            Event::Text(id, "hello".into()),
            Event::Closed(id, info(4001, "bye", true)),
        ]
    );
}

#[test]
fn server_close_reaches_the_client_with_code_and_reason() {
    let (app, log) = recorder();
    let server = start(config(), clone_per_loop(app));
    let mut ws = connect(&server.url("/ws"));
    let id = opened(&log);
    ws.send(tungstenite::Message::text("kick")).unwrap();
    match ws.read().expect("close frame") {
        tungstenite::Message::Close(Some(f)) => {
            assert_eq!((u16::from(f.code), f.reason.as_str()), (4002, "kick"))
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    // tungstenite queued its reply; send it.
    ws.flush().expect("send the close reply");
    wait_closed(&log);
    expect_tcp_closed_promptly(&mut ws);
    server.stop().1.unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            Event::Open(id),
            Event::Text(id, "kick".into()),
            Event::Closed(id, info(4002, "kick", true)),
        ]
    );
}

#[test]
fn tcp_dropped_without_close_frame_is_1006_unclean() {
    let (app, log) = recorder();
    let server = start(config(), clone_per_loop(app));
    let mut ws = connect(&server.url("/ws"));
    let id = opened(&log);
    ws.send(tungstenite::Message::text("hi")).unwrap();
    assert!(wait_until(IO_TIMEOUT, || log.lock().unwrap().len() == 2));
    drop(ws); // FIN, no close frame
    wait_closed(&log);
    server.stop().1.unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(log[..2], [Event::Open(id), Event::Text(id, "hi".into())]);
    match &log[2] {
        Event::Closed(closed, info) => {
            assert_eq!(*closed, id);
            assert_eq!((info.code, info.clean), (1006, false), "{info:?}");
        }
        other => panic!("expected on_close, got {other:?}"),
    }
}

#[test]
fn unmasked_client_frame_fails_the_connection_with_1002() {
    let (app, log) = recorder();
    let server = start(config(), clone_per_loop(app));
    let mut s = raw_connect(server.addr);
    s.write_all(upgrade_request("/ws", "").as_bytes()).unwrap();
    let (head, mut pending) = read_head(&mut s);
    assert_eq!(parse_head(&head).0, "HTTP/1.1 101 Switching Protocols");
    let id = opened(&log);

    s.write_all(&[0x81, 0x02, b'h', b'i']).unwrap(); // a text frame without a mask
    let (first, payload) = read_frame(&mut s, &mut pending);
    assert_eq!(first, 0x88, "expected a close frame, got {payload:?}");
    assert!(payload.len() >= 2, "close frame without a code");
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    let reason = String::from_utf8(payload[2..].to_vec()).expect("reason is UTF-8");
    assert_eq!(code, 1002, "reason {reason:?}");
    assert!(!reason.is_empty() && reason.len() <= 123);
    // Then the server closes the socket, with nothing more sent.
    assert!(
        pending.is_empty(),
        "bytes after the close frame: {pending:?}"
    );
    assert_eq!(read_to_close(&mut s), b"");

    wait_closed(&log);
    let handle = server.handle.clone();
    server.stop().1.unwrap();
    // The frame was not delivered; on_close reports what was sent.
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            Event::Open(id),
            Event::Closed(id, info(1002, &reason, false))
        ]
    );
    let stats = handle.stats();
    assert_eq!(stats.protocol_errors, 1);
    assert_eq!(stats.messages_in, 0);
}

#[test]
fn shutdown_closes_clients_with_1001_and_returns_promptly() {
    let (app, log) = recorder();
    let server = start(
        config().shutdown_timeout(Duration::from_secs(4)),
        clone_per_loop(app),
    );
    let mut ws = connect(&server.url("/ws"));
    let id = opened(&log);
    // A well-behaved client: answers the close frame, then waits for the server's FIN.
    let client = std::thread::spawn(move || {
        let close = ws.read();
        let _ = ws.flush();
        let end = ws.read();
        (
            close.map_err(|e| e.to_string()),
            end.map_err(|e| e.to_string()),
        )
    });
    let t = Instant::now();
    server.stop().1.unwrap();
    let took = t.elapsed();
    let (close, end) = client.join().unwrap();
    let reason = match close {
        Ok(tungstenite::Message::Close(Some(f))) => {
            assert_eq!(u16::from(f.code), 1001);
            f.reason.to_string()
        }
        other => panic!("expected a close frame, got {other:?}"),
    };
    assert_eq!(end, Err(tungstenite::Error::ConnectionClosed.to_string()));
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            Event::Open(id),
            Event::Closed(id, info(1001, &reason, true))
        ]
    );
    // The close handshake finished at once, so nothing was left to wait for.
    assert!(
        took < Duration::from_secs(2),
        "run() took {took:?} to return (shutdown_timeout 4 s)"
    );
}
