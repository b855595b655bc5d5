//! The TLS baseline: benches/fanout/baseline.rs (tokio + tokio-tungstenite, single-threaded
//! runtime, a reader loop, an unbounded channel and a writer task per client, every text
//! message cloned into every client's channel, the sender's own included) with each
//! connection behind tokio-rustls: the same rustls (ring provider, TLS 1.2 and 1.3, ALPN
//! `http/1.1`, no resumption tickets) and the same certificate as the wshub server. No rooms:
//! the TLS bench does not use them.
//!
//! It runs in its own process (the bench binary re-executed with
//! `ADDR --tls-baseline-server CERT KEY`) so its CPU time and memory can be read from /proc.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_tungstenite::tungstenite::Message;

type Tx = mpsc::UnboundedSender<Message>;
type Registry = Rc<RefCell<HashMap<u64, Tx>>>;

/// Runs the TLS baseline server until the process is killed.
pub fn run(addr: &str, cert: &str, key: &str) -> Result<(), String> {
    let acceptor = TlsAcceptor::from(server_config(cert, key)?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build tokio runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, serve(addr, acceptor))
}

/// What `wshub::TlsConfig` builds, for one certificate.
fn server_config(cert: &str, key: &str) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read {cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("cannot read {key}: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("rustls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("rustls refused the certificate: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn serve(addr: &str, acceptor: TlsAcceptor) -> Result<(), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot bind {addr}: {e}"))?;
    eprintln!("listening on {addr} (TLS)");
    let registry: Registry = Rc::default();
    let mut next_id: u64 = 0;
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                next_id += 1;
                tokio::task::spawn_local(handle_client(
                    stream,
                    next_id,
                    registry.clone(),
                    acceptor.clone(),
                ));
            }
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn handle_client(stream: TcpStream, id: u64, registry: Registry, acceptor: TlsAcceptor) {
    let _ = stream.set_nodelay(true);
    let Ok(tls) = acceptor.accept(stream).await else {
        return;
    };
    let Ok(ws) = tokio_tungstenite::accept_async(tls).await else {
        return;
    };
    let (sink, mut source) = ws.split();
    let (tx, rx) = mpsc::unbounded_channel::<Message>();
    registry.borrow_mut().insert(id, tx);

    // Writer: ends when the registry drops this client's sender.
    tokio::task::spawn_local(crate::baseline::write_queued(sink, rx));

    // Reader: every text message to every client, in arrival order.
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
