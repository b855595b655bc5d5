//! The baseline: the typical broadcast server written with tokio and
//! tokio-tungstenite (default configuration), on a single-threaded runtime.
//!
//! Per client: a reader loop, an unbounded mpsc channel, and a writer task
//! draining that channel into the WebSocket sink. A shared registry holds
//! every client's sender; each incoming text message is cloned into every
//! recipient's channel, the sender's own included. This is the design of
//! tokio-tungstenite's own `examples/server.rs`; the writer loop below
//! (feed what is queued, then flush) is what its `rx.forward(sink)` does.
//!
//! Rooms, as in wshub's `broadcast` example: a client that upgraded with
//! `?room=NAME` is in room NAME and its messages go to every member of NAME,
//! itself included (the registry keeps a map room -> members' senders); a
//! client in no room sends to every client.
//!
//! It runs in its own process (the bench binary re-executed with
//! `--baseline-server ADDR`) so its CPU time and RSS can be read from /proc.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

use crate::rooms;

type Tx = mpsc::UnboundedSender<Message>;
type Registry = Rc<RefCell<Clients>>;

/// Every client's sender, and each room's members.
#[derive(Default)]
struct Clients {
    all: HashMap<u64, Tx>,
    rooms: HashMap<String, HashMap<u64, Tx>>,
}

/// Runs the baseline server until the process is killed.
pub fn run(addr: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build tokio runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, serve(addr))
}

async fn serve(addr: &str) -> Result<(), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot bind {addr}: {e}"))?;
    eprintln!("listening on {addr}");
    let registry: Registry = Rc::default();
    let mut next_id: u64 = 0;
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                next_id += 1;
                tokio::task::spawn_local(handle_client(stream, next_id, registry.clone()));
            }
            Err(e) => {
                // E.g. EMFILE: back off briefly instead of spinning.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn handle_client(stream: TcpStream, id: u64, registry: Registry) {
    // Small frames must not wait for Nagle's algorithm (wshub disables it too).
    let _ = stream.set_nodelay(true);
    let mut room = None;
    // The signature is tungstenite's `Callback`, error type included.
    #[allow(clippy::result_large_err)]
    let read_room = |request: &Request, response: Response| {
        room = request
            .uri()
            .path_and_query()
            .and_then(|target| rooms::room_of(target.as_str()));
        Ok(response)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, read_room).await else {
        return;
    };
    let (sink, mut source) = ws.split();
    let (tx, rx) = mpsc::unbounded_channel::<Message>();
    {
        let mut clients = registry.borrow_mut();
        if let Some(room) = &room {
            let members = clients.rooms.entry(room.clone()).or_default();
            members.insert(id, tx.clone());
        }
        clients.all.insert(id, tx);
    }

    // Writer: ends when the registry drops this client's sender.
    tokio::task::spawn_local(write_queued(sink, rx));

    // Reader: every text message to the room (or all clients), in arrival order.
    while let Some(Ok(msg)) = source.next().await {
        match msg {
            Message::Text(_) => {
                let clients = registry.borrow();
                let recipients = match &room {
                    Some(room) => clients.rooms.get(room),
                    None => Some(&clients.all),
                };
                for client in recipients.into_iter().flat_map(HashMap::values) {
                    let _ = client.send(msg.clone());
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    let mut clients = registry.borrow_mut();
    clients.all.remove(&id);
    if let Some(room) = &room {
        if let Some(members) = clients.rooms.get_mut(room) {
            members.remove(&id);
            if members.is_empty() {
                clients.rooms.remove(room);
            }
        }
    }
}

/// A client's writer: feeds what its channel holds into `sink`, then flushes; ends when the
/// channel's sender is dropped or the connection fails. (benches/tls/baseline.rs uses it too.)
pub async fn write_queued<S>(mut sink: S, mut rx: mpsc::UnboundedReceiver<Message>)
where
    S: Sink<Message> + Unpin,
{
    while let Some(msg) = rx.recv().await {
        if sink.feed(msg).await.is_err() {
            return;
        }
        while let Ok(msg) = rx.try_recv() {
            if sink.feed(msg).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}
