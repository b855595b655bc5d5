//! Graceful shutdown (issue #4): stop accepting, close 1001 to every connection, wait up
//! to `shutdown_timeout`, then `run()` returns; `Ctx::shutdown`; `poll_once` stepping.

mod common;

use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::protocol::frame::coding::CloseCode;
use wshub::{CloseInfo, Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request, Server};

/// Echoes text; "shutdown" shuts the server down from the callback. Records `on_close`.
#[derive(Default, Clone)]
struct App {
    closes: Arc<Mutex<Vec<(String, CloseInfo)>>>,
}

impl Handler for App {
    type Data = String;

    fn on_request(&mut self, _: &mut Ctx<'_, String>, req: &Request<'_>) -> Reply<String> {
        Reply::accept(req.path().to_owned())
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, String>, id: ConnId, msg: Message) {
        if let Message::Text(t) = msg {
            if t.as_str() == "shutdown" {
                ctx.shutdown();
            } else {
                ctx.send(id, &Frame::text(&t)).unwrap();
            }
        }
    }

    fn on_close(&mut self, _: &mut Ctx<'_, String>, _: ConnId, info: CloseInfo, path: String) {
        self.closes.lock().unwrap().push((path, info));
    }
}

/// A tungstenite client on its own thread that reads until the connection ends (answering
/// the server's close frame, as tungstenite does) and returns the close frame it got.
fn answering_client(url: String) -> thread::JoinHandle<Option<(u16, String)>> {
    let mut ws = connect(&url);
    thread::spawn(move || {
        let mut close = None;
        loop {
            match ws.read() {
                Ok(tungstenite::Message::Close(frame)) => {
                    close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => return close,
                Err(e) => panic!("client: {e}"),
            }
        }
    })
}

fn going_away() -> Option<(u16, String)> {
    Some((
        u16::from(CloseCode::Away),
        "server shutting down".to_owned(),
    ))
}

#[test]
fn shutdown_closes_every_client_with_1001_and_run_returns_promptly() {
    let app = App::default();
    let server = start(Config::default(), clone_per_loop(app.clone()));
    let clients: Vec<_> = (0..5).map(|_| answering_client(server.url("/a"))).collect();
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().open_connections == 5
    }));
    let t = Instant::now();
    let (_, result) = server.stop();
    let took = t.elapsed();
    result.unwrap();
    // Everyone answered at once: no waiting for the 5 s shutdown timeout.
    assert!(
        took < Duration::from_secs(2),
        "run() took {took:?} to return"
    );
    for c in clients {
        assert_eq!(c.join().unwrap(), going_away());
    }
    let closes = app.closes.lock().unwrap().clone();
    assert_eq!(closes.len(), 5);
    for (_, info) in closes {
        assert_eq!(
            info,
            CloseInfo {
                code: 1001,
                reason: "server shutting down".to_owned(),
                clean: true
            }
        );
    }
}

#[test]
fn a_client_that_never_answers_does_not_hold_run_past_the_shutdown_timeout() {
    let app = App::default();
    let config = Config::default().shutdown_timeout(Duration::from_millis(500));
    let mut server = start(config, clone_per_loop(app.clone()));
    let answering = answering_client(server.url("/answering"));
    let mut silent = RawWs::connect(server.addr, "/silent");
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().open_connections == 2
    }));

    let t = Instant::now();
    server.handle.shutdown().unwrap();
    // While it waits for the silent one, nothing new is accepted.
    thread::sleep(Duration::from_millis(100));
    assert!(
        TcpStream::connect(server.addr).is_err(),
        "still accepting while shutting down"
    );
    let (_, result) = server.join();
    let took = t.elapsed();
    result.unwrap();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(2000),
        "run() returned after {took:?}, shutdown timeout 500 ms"
    );
    assert_eq!(answering.join().unwrap(), going_away());
    // The silent client was sent the close frame too, then dropped.
    let (first, payload) = silent.expect_frame().expect("a close frame");
    assert_eq!(first, 0x80 | OP_CLOSE);
    assert_eq!(
        Some(parse_close(&payload)),
        going_away(),
        "the silent client's close frame"
    );
    assert_eq!(silent.expect_frame(), None);

    let mut closes = app.closes.lock().unwrap().clone();
    closes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(closes.len(), 2, "{closes:?}");
    assert_eq!(closes[0].0, "/answering");
    assert!(closes[0].1.clean, "{closes:?}");
    assert_eq!(closes[1].0, "/silent");
    assert!(!closes[1].1.clean, "{closes:?}");
}

#[test]
fn ctx_shutdown_from_a_callback_stops_the_server() {
    let app = App::default();
    let mut server = start(Config::default(), clone_per_loop(app.clone()));
    let other = answering_client(server.url("/other"));
    let mut ws = connect(&server.url("/asker"));
    ws.send(tungstenite::Message::text("shutdown")).unwrap();
    match next_data(&mut ws) {
        tungstenite::Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Away),
        other => panic!("expected close 1001, got {other:?}"),
    }
    // tungstenite answers the close on the next read, then sees the end.
    assert!(matches!(
        ws.read(),
        Err(tungstenite::Error::ConnectionClosed)
    ));
    let t = Instant::now();
    let (_, result) = server.join();
    result.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(other.join().unwrap(), going_away());
    assert_eq!(app.closes.lock().unwrap().len(), 2);
}

#[test]
fn poll_once_drives_the_server_step_by_step_until_it_stops() {
    let app = App::default();
    let mut server = Server::bind("127.0.0.1:0", Config::default(), app.clone()).unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.handle();

    // Nothing happens: a turn waits no longer than asked.
    let t = Instant::now();
    assert!(server.poll_once(Some(Duration::from_millis(50))).unwrap());
    assert!(t.elapsed() < Duration::from_secs(1));

    let client = thread::spawn(move || {
        let mut ws = connect(&format!("ws://{addr}/stepped"));
        ws.send(tungstenite::Message::text("step")).unwrap();
        let echoed = next_text(&mut ws);
        close_client(ws);
        echoed
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client.is_finished() {
        assert!(Instant::now() < deadline, "client not served");
        assert!(server.poll_once(Some(Duration::from_millis(10))).unwrap());
    }
    assert_eq!(client.join().unwrap(), "step");
    assert_eq!(server.stats().handshakes_accepted, 1);

    handle.shutdown().unwrap();
    let mut turns = 0;
    while server.poll_once(Some(Duration::from_millis(10))).unwrap() {
        turns += 1;
        assert!(turns < 1000, "never stopped");
    }
    // Stopped for good: no listener, and further turns say so at once.
    assert_eq!(server.local_addr(), None);
    let t = Instant::now();
    assert!(!server.poll_once(Some(Duration::from_secs(5))).unwrap());
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(
        app.closes.lock().unwrap().clone(),
        [(
            "/stepped".to_owned(),
            // close_client sends a close frame without a code.
            CloseInfo {
                code: 1005,
                reason: String::new(),
                clean: true
            }
        )]
    );
}
