//! A handler driven by text commands, so a test (or a model-based test) can make the server
//! subscribe, publish, send, broadcast and close in an order it chooses, from one controller
//! connection, and then compare what every client received.
//!
//! Clients connect with `?n=K` (a number of the test's choosing) and are addressed by it.
//! A message is one command per line (several lines: several commands in one callback):
//!
//! | command | does |
//! |---|---|
//! | `sub K T` / `unsub K T` | subscribe / unsubscribe client K to / from topic T |
//! | `pub T TEXT` | publish TEXT to T |
//! | `pubx T K TEXT` | publish TEXT to T, except client K |
//! | `send K TEXT` | send TEXT to client K |
//! | `all TEXT` | broadcast TEXT |
//! | `close K` | close client K with 1000 |
//!
//! A command prefixed with `?` answers the controller with a text `= RESULT` (the `Delivery`
//! or `Result` as `{:?}`); `?count T` answers the subscriber count and `?topics K` the sorted
//! topics of client K. `on_close` publishes `closed K` to the topic `watch` and records how
//! many topics the closed connection still had (always 0).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wshub::{CloseInfo, ConnId, Ctx, Frame, Handler, Message, Reply, Request};

#[derive(Default, Clone)]
pub struct Scripted {
    ids: HashMap<u32, ConnId>,
    /// Per closed client: how many topics `Ctx::topics` still listed in `on_close`.
    pub closed: Arc<Mutex<Vec<(u32, usize)>>>,
}

impl Scripted {
    fn id(&self, k: &str) -> ConnId {
        let k: u32 = k.parse().expect("client number");
        *self.ids.get(&k).expect("no such client")
    }

    fn run(&mut self, ctx: &mut Ctx<'_, u32>, line: &str) -> String {
        let mut words = line.splitn(2, ' ');
        let verb = words.next().unwrap_or_default();
        let rest = words.next().unwrap_or_default();
        let arg2 = |rest: &str| -> (String, String) {
            let (a, b) = rest.split_once(' ').unwrap_or((rest, ""));
            (a.to_owned(), b.to_owned())
        };
        match verb {
            "sub" => {
                let (k, topic) = arg2(rest);
                format!("{:?}", ctx.subscribe(self.id(&k), &topic))
            }
            "unsub" => {
                let (k, topic) = arg2(rest);
                format!("{:?}", ctx.unsubscribe(self.id(&k), &topic))
            }
            "pub" => {
                let (topic, text) = arg2(rest);
                format!("{:?}", ctx.publish(&topic, &Frame::text(&text)))
            }
            "pubx" => {
                let (topic, rest) = arg2(rest);
                let (k, text) = arg2(&rest);
                let except = self.id(&k);
                format!(
                    "{:?}",
                    ctx.publish_except(&topic, except, &Frame::text(&text))
                )
            }
            "send" => {
                let (k, text) = arg2(rest);
                format!("{:?}", ctx.send(self.id(&k), &Frame::text(&text)))
            }
            "all" => format!("{:?}", ctx.broadcast(&Frame::text(rest))),
            "close" => format!("{:?}", ctx.close(self.id(rest), 1000, "bye")),
            "count" => ctx.subscriber_count(rest).to_string(),
            "topics" => {
                let mut topics: Vec<&str> = ctx.topics(self.id(rest)).collect();
                topics.sort_unstable();
                topics.join(",")
            }
            other => panic!("unknown command {other:?}"),
        }
    }
}

impl Handler for Scripted {
    type Data = u32;

    fn on_request(&mut self, _: &mut Ctx<'_, u32>, req: &Request<'_>) -> Reply<u32> {
        let n = req
            .query_param("n")
            .and_then(|n| n.parse().ok())
            .expect("?n=K");
        Reply::accept(n)
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_, u32>, id: ConnId) {
        let n = *ctx.data(id).expect("open connection has data");
        self.ids.insert(n, id);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, u32>, from: ConnId, msg: Message) {
        let Message::Text(text) = msg else {
            panic!("commands are text");
        };
        for line in text.lines() {
            let (reply, line) = match line.strip_prefix('?') {
                Some(line) => (true, line),
                None => (false, line),
            };
            let result = self.run(ctx, line);
            if reply {
                let _ = ctx.send(from, &Frame::text(&format!("= {result}")));
            }
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, u32>, id: ConnId, _: CloseInfo, n: u32) {
        let left = ctx.topics(id).count();
        self.closed.lock().unwrap().push((n, left));
        ctx.publish("watch", &Frame::text(&format!("closed {n}")));
    }
}
