//! Connection ids: an id kept after its connection closed is refused (`Gone`), even once its
//! slot in the table belongs to a new connection, and never reaches the newcomer.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use wshub::{Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request, SendError};

/// What the handler found when it tried the first connection's id.
#[derive(Clone, Debug, PartialEq)]
struct Probe {
    send: Result<(), SendError>,
    data: Option<String>,
    close: Result<(), SendError>,
    /// The prober's own data, for contrast.
    own_data: Option<String>,
}

#[derive(Default)]
struct Log {
    opened: Vec<ConnId>,
    closed: Vec<(ConnId, String)>,
    probes: Vec<Probe>,
}

/// Data: the name from `?name=`. On "probe", tries every operation on the first id it ever
/// opened, then answers "probed".
#[derive(Clone)]
struct Ids {
    log: Arc<Mutex<Log>>,
}

impl Handler for Ids {
    type Data = String;

    fn on_request(&mut self, _: &mut Ctx<'_, String>, req: &Request<'_>) -> Reply<String> {
        let name = req.query().and_then(|q| q.strip_prefix("name="));
        Reply::accept(name.unwrap_or_default().to_owned())
    }

    fn on_open(&mut self, _: &mut Ctx<'_, String>, id: ConnId) {
        self.log.lock().unwrap().opened.push(id);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, String>, id: ConnId, msg: Message) {
        assert_eq!(msg, Message::Text("probe".into()));
        let stale = self.log.lock().unwrap().opened[0];
        let probe = Probe {
            send: ctx.send(stale, &Frame::text("for the first connection only")),
            data: ctx.data(stale).cloned(),
            close: ctx.close(stale, 4000, "for the first connection only"),
            own_data: ctx.data(id).cloned(),
        };
        self.log.lock().unwrap().probes.push(probe);
        ctx.send(id, &Frame::text("probed")).unwrap();
    }

    fn on_close(&mut self, _: &mut Ctx<'_, String>, id: ConnId, _: wshub::CloseInfo, name: String) {
        self.log.lock().unwrap().closed.push((id, name));
    }
}

/// (slot, generation) from `as_u64`: the generation in the high half, the slot in the low.
fn parts(id: ConnId) -> (u32, u32) {
    let n = id.as_u64();
    (n as u32, (n >> 32) as u32)
}

#[test]
fn stale_id_is_refused_after_its_slot_is_reused() {
    let log = Arc::new(Mutex::new(Log::default()));
    // One loop: slots are reused within a loop, and another loop's stale id is handed over (`Ok`).
    let server = start(
        Config::default(),
        Ids {
            log: Arc::clone(&log),
        },
    );
    let opened = |n: usize| wait_until(IO_TIMEOUT, || log.lock().unwrap().opened.len() == n);

    // A opens and closes; wait until its slot is free (its socket left the table).
    let a = connect(&server.url("/ws?name=a"));
    assert!(opened(1));
    let old = log.lock().unwrap().opened[0];
    close_client(a);
    assert!(wait_until(IO_TIMEOUT, || server
        .handle
        .stats()
        .tcp_connections
        == 0
        && log.lock().unwrap().closed.len() == 1));

    // B gets A's slot, with a new generation.
    let mut b = connect(&server.url("/ws?name=b"));
    assert!(opened(2));
    let new = log.lock().unwrap().opened[1];
    let ((old_key, old_gen), (new_key, new_gen)) = (parts(old), parts(new));
    assert_eq!(
        new_key, old_key,
        "B should reuse A's slot: {old} then {new}"
    );
    assert_ne!(new_gen, old_gen, "{old} then {new}");
    assert_ne!(new, old);
    assert_ne!(new.as_u64(), old.as_u64());

    // From a callback: every operation on A's id reports Gone, and B got nothing from them
    // (its next message is the answer queued after them).
    b.send(tungstenite::Message::text("probe")).unwrap();
    assert_eq!(next_text(&mut b), "probed");
    let gone = Probe {
        send: Err(SendError::Gone),
        data: None,
        close: Err(SendError::Gone),
        own_data: Some("b".to_owned()),
    };
    assert_eq!(log.lock().unwrap().probes, vec![gone.clone()]);

    // From another thread: a close and a send through the handle; the send is counted as
    // dropped, and neither reaches B.
    server.handle.close(old, 4000, "for A only").unwrap();
    server.handle.send(old, &Frame::text("for A only")).unwrap();
    assert!(wait_until(IO_TIMEOUT, || server
        .handle
        .stats()
        .dropped_messages
        == 1));
    b.send(tungstenite::Message::text("probe")).unwrap();
    assert_eq!(next_text(&mut b), "probed");
    close_client(b);

    server.stop().1.unwrap();
    let log = log.lock().unwrap();
    assert_eq!(log.probes, vec![gone.clone(), gone]);
    assert_eq!(
        log.closed,
        vec![(old, "a".to_owned()), (new, "b".to_owned())]
    );
    assert_eq!(log.opened, vec![old, new]);
}
