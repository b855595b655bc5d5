mod common;

use common::*;
use wshub::{Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request};

struct Echo;
impl Handler for Echo {
    type Data = ();
    fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
        Reply::accept(())
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId, msg: Message) {
        if let Message::Text(t) = msg {
            ctx.send(id, &Frame::text(&t)).unwrap();
        }
    }
}

#[test]
fn echo_roundtrip() {
    let server = start(Config::default(), Echo);
    let mut c = connect(&server.url("/"));
    c.send(tungstenite::Message::text("hi")).unwrap();
    assert_eq!(next_text(&mut c), "hi");
    c.close(None).unwrap();
    server.stop().1.unwrap();
}
