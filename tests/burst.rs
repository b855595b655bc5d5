//! Writes are corked per loop turn, so one callback can queue more than
//! `max_backpressure` for a connection whose socket would take it all at once. Such a burst
//! must reach a healthy reader whole, not get it closed as a slow consumer.

mod common;

use common::*;
use wshub::{Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request};

const FRAMES: usize = 600;
const FRAME_BYTES: usize = 1024;

/// On any message, sends `FRAMES` numbered 1 KiB frames to the sender in one callback and
/// records whether every send was accepted.
#[derive(Clone)]
struct Burst {
    refused: usize,
}

impl Handler for Burst {
    type Data = ();
    fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
        Reply::accept(())
    }
    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId, _: Message) {
        for i in 0..FRAMES {
            let mut text = format!("{i:06}");
            text.extend(std::iter::repeat_n('x', FRAME_BYTES - text.len()));
            if ctx.send(id, &Frame::text(&text)).is_err() {
                self.refused += 1;
            }
        }
    }
}

#[test]
fn a_burst_over_the_limit_reaches_a_reading_client_whole() {
    // 600 KiB in one callback against a 256 KiB limit: the loopback socket takes it.
    let server = start(
        Config::default().max_backpressure(256 * 1024),
        clone_per_loop(Burst { refused: 0 }),
    );
    let mut client = connect(&server.url("/"));
    client.send(tungstenite::Message::text("go")).unwrap();
    for i in 0..FRAMES {
        let text = next_text(&mut client);
        assert_eq!(text.len(), FRAME_BYTES);
        assert_eq!(&text[..6], format!("{i:06}"), "frame {i} out of order");
    }
    close_client(client);
    let stats = server.handle.stats();
    assert_eq!(stats.slow_consumer_closes, 0);
    assert!(
        stats.peak_queued_bytes <= 256 * 1024 + FRAME_BYTES + 4,
        "{stats:?}"
    );
    let (handlers, result) = server.stop();
    result.unwrap();
    assert!(handlers.iter().all(|h| h.refused == 0));
}
