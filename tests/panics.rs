//! A panic in a handler callback costs the connection it concerned (1011, or 500 for a
//! request), is counted, and every other connection carries on; with `catch_panics(false)`
//! it unwinds out of `run`.

mod common;

use std::time::Duration;

use common::*;
use tungstenite::Message as WsMessage;
use wshub::{CloseInfo, Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request, Server};

/// Echoes text; panics on "boom", on a request for /boom, and in `on_close` of a connection
/// that asked for "boom on close".
#[derive(Default, Clone)]
struct Fragile;

impl Handler for Fragile {
    type Data = bool;

    fn on_request(&mut self, _: &mut Ctx<'_, bool>, req: &Request<'_>) -> Reply<bool> {
        assert!(req.path() != "/boom", "a request that breaks the handler");
        Reply::accept(false)
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, bool>, id: ConnId, msg: Message) {
        let Message::Text(text) = msg else { return };
        match text.as_str() {
            "boom" => panic!("a message that breaks the handler"),
            "boom on close" => {
                if let Some(flag) = ctx.data_mut(id) {
                    *flag = true;
                }
                let _ = ctx.close(id, 1000, "as asked");
            }
            _ => {
                let _ = ctx.broadcast(&Frame::text(&text));
            }
        }
    }

    fn on_close(&mut self, _: &mut Ctx<'_, bool>, _: ConnId, _: CloseInfo, boom: bool) {
        assert!(!boom, "a close that breaks the handler");
    }
}

#[test]
fn a_panic_costs_only_the_connection_it_concerned() {
    let server = start(Config::default(), clone_per_loop(Fragile));
    let mut victim = connect(&server.url("/"));
    let mut bystander = connect(&server.url("/"));
    victim.send(WsMessage::text("boom")).unwrap();
    match victim.read().expect("close frame") {
        WsMessage::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1011),
        other => panic!("expected a close frame, got {other:?}"),
    }
    let _ = victim.flush(); // our close reply
    // The loop carries on for everyone else.
    bystander.send(WsMessage::text("still here")).unwrap();
    assert_eq!(next_text(&mut bystander), "still here");
    // A request that panics is answered 500.
    let response = raw_exchange(server.addr, upgrade_request("/boom", "").as_bytes());
    assert_eq!(status_line(&response), "HTTP/1.1 500 Internal Server Error");
    // A panic in on_close is counted and harms nobody.
    let mut third = connect(&server.url("/"));
    third.send(WsMessage::text("boom on close")).unwrap();
    assert!(matches!(third.read(), Ok(WsMessage::Close(_))));
    let _ = third.flush();
    assert!(wait_until(Duration::from_secs(5), || {
        server.handle.stats().handler_panics == 3
    }));
    bystander.send(WsMessage::text("and now")).unwrap();
    assert_eq!(next_text(&mut bystander), "and now");
    close_client(bystander);
    server.stop().1.unwrap();
}

#[test]
fn without_catch_panics_a_panic_unwinds_out_of_run() {
    let mut server = Server::bind(
        "127.0.0.1:0",
        Config::default().catch_panics(false),
        Fragile,
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let thread = std::thread::spawn(move || server.run());
    let response = raw_exchange(addr, upgrade_request("/boom", "").as_bytes());
    // The server went away mid-request: no answer.
    assert_eq!(response, b"");
    assert!(thread.join().is_err(), "run() should have unwound");
}
