//! `Handle` (issue #4): commands from other threads arrive in order; the command channel
//! is bounded (`HandleError::Full`, never blocking) and never stalls the loop; a stopped
//! server reports `Stopped`.

mod common;

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message as WsMessage;
use wshub::{Config, ConnId, Ctx, Frame, HandleError, Handler, Message, Reply, Request, Server};

/// Echoes text; records the ids of opened connections.
#[derive(Default, Clone)]
struct App {
    opened: Arc<Mutex<Vec<ConnId>>>,
}

impl Handler for App {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
        Reply::accept(())
    }

    fn on_open(&mut self, _: &mut Ctx<'_, ()>, id: ConnId) {
        self.opened.lock().unwrap().push(id);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId, msg: Message) {
        if let Message::Text(t) = msg {
            ctx.send(id, &Frame::text(&t)).unwrap();
        }
    }
}

/// Connects and returns the client with its id (as the server's `on_open` saw it).
fn connect_known(url: &str, app: &App) -> (Client, ConnId) {
    let before = app.opened.lock().unwrap().len();
    let ws = connect(url);
    assert!(wait_until(Duration::from_secs(5), || {
        app.opened.lock().unwrap().len() > before
    }));
    let id = app.opened.lock().unwrap()[before];
    (ws, id)
}

#[test]
fn sends_broadcasts_and_closes_from_another_thread_arrive_in_order() {
    let app = App::default();
    let server = start(Config::default(), clone_per_loop(app.clone()));
    let (mut a, a_id) = connect_known(&server.url("/"), &app);
    let (mut b, b_id) = connect_known(&server.url("/"), &app);

    let handle = server.handle.clone();
    thread::spawn(move || {
        handle.send(a_id, &Frame::text("to a")).unwrap();
        handle.broadcast(&Frame::text("to all")).unwrap();
        handle.send(b_id, &Frame::binary(b"to b")).unwrap();
        handle.close(a_id, 4000, "bye from a handle").unwrap();
        handle.send(a_id, &Frame::text("after the close")).unwrap();
    })
    .join()
    .unwrap();

    assert_eq!(next_data(&mut a), WsMessage::text("to a"));
    assert_eq!(next_data(&mut a), WsMessage::text("to all"));
    match next_data(&mut a) {
        WsMessage::Close(Some(f)) => {
            assert_eq!(
                (u16::from(f.code), f.reason.as_str()),
                (4000, "bye from a handle")
            )
        }
        other => panic!("expected the close frame, got {other:?}"),
    }
    assert!(matches!(
        a.read(),
        Err(tungstenite::Error::ConnectionClosed)
    ));
    assert_eq!(next_data(&mut b), WsMessage::text("to all"));
    assert_eq!(next_data(&mut b), WsMessage::binary(&b"to b"[..]));
    // Nothing else for b: the next message is its own echo.
    b.send(WsMessage::text("echo")).unwrap();
    assert_eq!(next_data(&mut b), WsMessage::text("echo"));
    // The send to a closing connection was refused, and counted.
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().dropped_messages == 1
    }));
    close_client(b);
    server.stop().1.unwrap();
}

#[test]
fn a_full_handle_channel_reports_full_at_once_while_the_loop_is_not_running() {
    let app = App::default();
    let mut server = Server::bind(
        "127.0.0.1:0",
        Config::default().handle_capacity(4),
        app.clone(),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let client = thread::spawn(move || {
        let mut ws = connect(&format!("ws://{addr}/"));
        let mut got = Vec::new();
        loop {
            let text = next_text(&mut ws);
            if text == "end" {
                break;
            }
            got.push(text);
        }
        close_client(ws);
        got
    });
    // Drive the server by hand until the client is in.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stats().open_connections == 0 {
        assert!(Instant::now() < deadline, "client did not connect");
        server.poll_once(Some(Duration::from_millis(10))).unwrap();
    }

    // The loop is not running now: a handle on another thread fills the channel, and
    // every further command is refused at once.
    let handle = server.handle();
    let results = thread::spawn(move || {
        (0..10)
            .map(|i| {
                let t = Instant::now();
                let r = handle.broadcast(&Frame::text(&format!("b{i}")));
                (r, t.elapsed())
            })
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    let outcomes: Vec<_> = results.iter().map(|(r, _)| *r).collect();
    let mut expected = vec![Ok(()); 4];
    expected.extend([Err(HandleError::Full); 6]);
    assert_eq!(outcomes, expected);
    for (_, took) in &results {
        assert!(
            *took < Duration::from_millis(200),
            "a handle call took {took:?}"
        );
    }

    // One turn takes the queued commands; then there is room again.
    server.poll_once(Some(Duration::ZERO)).unwrap();
    let handle = server.handle();
    assert_eq!(handle.broadcast(&Frame::text("end")), Ok(()));
    while !client.is_finished() {
        assert!(Instant::now() < deadline, "client did not finish");
        server.poll_once(Some(Duration::from_millis(10))).unwrap();
    }
    assert_eq!(client.join().unwrap(), ["b0", "b1", "b2", "b3"]);
}

#[test]
fn a_handle_flooding_commands_does_not_stall_the_loop() {
    let app = App::default();
    let server = start(
        Config::default().handle_capacity(64),
        clone_per_loop(app.clone()),
    );
    // An id that went stale: commands for it are counted and dropped.
    let (gone, gone_id) = connect_known(&server.url("/"), &app);
    close_client(gone);
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().tcp_connections == 0
    }));

    let handle = server.handle.clone();
    let flooder = thread::spawn(move || {
        let frame = Frame::text("lost");
        let started = Instant::now();
        let (mut ok, mut full) = (0u64, 0u64);
        while started.elapsed() < Duration::from_millis(1500) {
            match handle.send(gone_id, &frame) {
                Ok(()) => ok += 1,
                Err(HandleError::Full) => full += 1,
                Err(e) => panic!("unexpected: {e}"),
            }
        }
        (ok, full)
    });
    let (mut ws, _) = connect_known(&server.url("/"), &app);
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let t = Instant::now();
        ws.send(WsMessage::text(format!("{i}"))).unwrap();
        assert_eq!(next_text(&mut ws), format!("{i}"));
        slowest = slowest.max(t.elapsed());
        thread::sleep(Duration::from_millis(20));
    }
    let (ok, full) = flooder.join().unwrap();
    assert!(
        slowest < Duration::from_millis(500),
        "an echo took {slowest:?} during a handle flood"
    );
    assert!(ok > 1000, "only {ok} commands were taken ({full} refused)");
    close_client(ws);
    let handle = server.handle.clone();
    server.stop().1.unwrap();
    // Every command that was taken was for a gone connection: all counted as dropped.
    assert_eq!(handle.stats().dropped_messages, ok);
}

#[test]
fn a_handle_reports_stopped_once_the_server_is_gone() {
    let app = App::default();
    let server = start(Config::default(), clone_per_loop(app.clone()));
    let (ws, id) = connect_known(&server.url("/"), &app);
    let handle = server.handle.clone();
    close_client(ws);
    let stats = {
        let (_, result) = server.stop();
        result.unwrap();
        handle.stats()
    };
    assert_eq!(
        handle.send(id, &Frame::text("x")),
        Err(HandleError::Stopped)
    );
    assert_eq!(
        handle.broadcast(&Frame::text("x")),
        Err(HandleError::Stopped)
    );
    assert_eq!(handle.close(id, 1000, ""), Err(HandleError::Stopped));
    assert_eq!(handle.shutdown(), Err(HandleError::Stopped));
    // The last counters stay readable.
    assert_eq!(stats.handshakes_accepted, 1);
    assert_eq!(handle.stats(), stats);
}

#[test]
fn a_handle_reports_stopped_once_poll_once_has_returned_false() {
    let mut server = Server::bind("127.0.0.1:0", Config::default(), App::default()).unwrap();
    let handle = server.handle();
    handle.shutdown().unwrap();
    let mut turns = 0;
    while server.poll_once(Some(Duration::from_millis(10))).unwrap() {
        turns += 1;
        assert!(turns < 100, "never stopped");
    }
    // The server value still exists (the embedder has not dropped it yet), but it has
    // stopped: nothing sent now would ever be delivered.
    assert_eq!(
        handle.broadcast(&Frame::text("into the void")),
        Err(HandleError::Stopped)
    );
    drop(server);
}
