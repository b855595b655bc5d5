//! TLS for the tests (cargo feature `tls`): certificates made on the spot with rcgen, and a
//! blocking rustls client that trusts them, over which tungstenite's client speaks `wss`.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use wshub::{Identity, TlsConfig};

/// A self-signed certificate for `names`, as the server's identity, and its DER for a
/// client to trust.
pub fn identity(names: &[&str]) -> (Identity, CertificateDer<'static>) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let made = rcgen::generate_simple_self_signed(names).expect("rcgen");
    let identity = Identity::from_pem(
        made.cert.pem().as_bytes(),
        made.signing_key.serialize_pem().as_bytes(),
    )
    .expect("identity from rcgen's PEM");
    (identity, made.cert.der().clone())
}

/// A server configuration with one certificate for `localhost`, and the certificate.
pub fn localhost() -> (TlsConfig, CertificateDer<'static>) {
    let (identity, der) = identity(&["localhost"]);
    (TlsConfig::new(identity), der)
}

/// A TLS stream to `addr` that trusts only `trusted` and asks for `name` (SNI).
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

pub fn connect(addr: SocketAddr, name: &str, trusted: &CertificateDer<'static>) -> TlsStream {
    let sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    connect_over(sock, name, trusted)
}

/// A TLS client over `sock` (any byte stream) that trusts only `trusted` and asks for
/// `name` (SNI).
pub fn connect_over<S: std::io::Read + std::io::Write>(
    sock: S,
    name: &str,
    trusted: &CertificateDer<'static>,
) -> StreamOwned<ClientConnection, S> {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.clone()).expect("trust anchor");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let conn = ClientConnection::new(
        Arc::new(config),
        ServerName::try_from(name.to_owned()).expect("server name"),
    )
    .expect("client connection");
    StreamOwned::new(conn, sock)
}

/// A `wss` client: TLS (trusting `trusted`, SNI `name`), then the WebSocket handshake.
pub fn connect_ws(
    addr: SocketAddr,
    name: &str,
    path: &str,
    trusted: &CertificateDer<'static>,
) -> tungstenite::WebSocket<TlsStream> {
    let stream = connect(addr, name, trusted);
    let url = format!("wss://{name}:{}{path}", addr.port());
    let (ws, response) = tungstenite::client::client(url, stream).expect("wss handshake");
    assert_eq!(response.status(), 101);
    ws
}
