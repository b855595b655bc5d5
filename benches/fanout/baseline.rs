//! The baseline: the typical broadcast server written with tokio and
//! tokio-tungstenite (default configuration), on a single-threaded runtime.
//!
//! Per client: a reader loop, an unbounded mpsc channel, and a writer task
//! draining that channel into the WebSocket sink. A shared registry holds
//! every client's sender; each incoming text message is cloned into every
//! client's channel, the sender's own included. This is the design of
//! tokio-tungstenite's own `examples/server.rs`; the writer loop below
//! (feed what is queued, then flush) is what its `rx.forward(sink)` does.
//!
//! It runs in its own process (the bench binary re-executed with
//! `--baseline-server ADDR`) so its CPU time and RSS can be read from /proc.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

type Registry = Rc<RefCell<HashMap<u64, mpsc::UnboundedSender<Message>>>>;

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
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    registry.borrow_mut().insert(id, tx);

    // Writer: ends when the registry drops this client's sender.
    tokio::task::spawn_local(async move {
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
    });

    // Reader: broadcast every text message to all clients, in arrival order.
    while let Some(Ok(msg)) = source.next().await {
        match msg {
            Message::Text(_) => {
                for client in registry.borrow().values() {
                    let _ = client.send(msg.clone());
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    registry.borrow_mut().remove(&id);
}
