//! What a TLS port serves: certificates (one by default, more by SNI name), loaded from PEM,
//! in a [`TlsConfig`] for [`Config::tls`](crate::Config::tls). Cargo feature `tls`.
//!
//! rustls with the ring provider; TLS 1.2 and 1.3; ALPN `http/1.1` (the upgrade to a
//! WebSocket is an HTTP/1.1 request). The connection itself is driven by the loop
//! (`crate::transport`).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A certificate chain and its private key, for one name or as the default.
#[derive(Clone, Debug)]
pub struct Identity {
    key: Arc<CertifiedKey>,
}

/// Why certificates could not be loaded.
#[derive(Debug)]
pub enum TlsError {
    /// A file could not be read.
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        error: std::io::Error,
    },
    /// The PEM held no certificate, or it or the key could not be parsed.
    Pem(String),
    /// rustls refused the key or the configuration (e.g. the key does not match the
    /// certificate).
    Rustls(rustls::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Io { path, error } => write!(f, "cannot read {path}: {error}"),
            TlsError::Pem(what) => write!(f, "bad PEM: {what}"),
            TlsError::Rustls(e) => write!(f, "TLS configuration refused: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

impl Identity {
    /// A certificate chain (leaf first) and a private key (PKCS#8, PKCS#1 or SEC1), as PEM.
    pub fn from_pem(chain: &[u8], key: &[u8]) -> Result<Identity, TlsError> {
        let certs = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem(format!("certificate chain: {e}")))?;
        if certs.is_empty() {
            return Err(TlsError::Pem("no certificate in the chain".to_owned()));
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| TlsError::Pem(format!("private key: {e}")))?;
        let key = CertifiedKey::from_der(certs, key, &provider()).map_err(TlsError::Rustls)?;
        Ok(Identity { key: Arc::new(key) })
    }

    /// [`from_pem`](Identity::from_pem), from two files.
    pub fn from_pem_files(
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Identity, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|error| TlsError::Io {
                path: path.display().to_string(),
                error,
            })
        };
        Identity::from_pem(&read(chain.as_ref())?, &read(key.as_ref())?)
    }
}

/// The certificates a TLS port serves. Cheap to clone (shared).
///
/// ```no_run
/// use wshub::{Config, Identity, TlsConfig};
/// # fn main() -> Result<(), wshub::TlsError> {
/// let tls = TlsConfig::new(Identity::from_pem_files("cert.pem", "key.pem")?)
///     .with_name("chat.example.org", Identity::from_pem_files("chat.pem", "chat-key.pem")?);
/// let config = Config::default().tls(tls);
/// # let _ = config; Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    server: Arc<rustls::ServerConfig>,
    names: Names,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("names", &self.names.by_name.keys())
            .finish_non_exhaustive()
    }
}

/// Picks the certificate by the SNI name the client sent, else the default.
#[derive(Clone, Debug)]
struct Names {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Names {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls' unbuffered connection does not tell its SNI name: keep it for the
        // connection whose handshake runs now, on this thread (`take_resolved_name`).
        RESOLVED_NAME.with(|seen| seen.replace(Some(hello.server_name().map(Box::from))));
        let named = hello
            .server_name()
            .and_then(|name| self.by_name.get(&name.to_ascii_lowercase()));
        Some(Arc::clone(named.unwrap_or(&self.default)))
    }
}

thread_local! {
    /// The SNI name of the last ClientHello this thread's loop resolved a certificate for.
    static RESOLVED_NAME: std::cell::RefCell<Option<Option<Box<str>>>> =
        const { std::cell::RefCell::new(None) };
}

/// The SNI name (or its absence) of a ClientHello handled since the last call, if one was.
/// rustls resolves the certificate of every handshake synchronously inside the call that
/// processes the ClientHello, so asked right after each such call this is that
/// connection's name (what `ServerConnection::server_name` would say).
pub(crate) fn take_resolved_name() -> Option<Option<Box<str>>> {
    RESOLVED_NAME.with(|seen| seen.take())
}

impl TlsConfig {
    /// Serves `default` to every client (and to those whose SNI name has no certificate of
    /// its own).
    pub fn new(default: Identity) -> TlsConfig {
        TlsConfig::build(Names {
            default: default.key,
            by_name: HashMap::new(),
        })
    }

    /// Serves `identity` to clients that ask for `name` (SNI; case-insensitive).
    pub fn with_name(self, name: &str, identity: Identity) -> TlsConfig {
        let mut names = self.names;
        names
            .by_name
            .insert(name.to_ascii_lowercase(), identity.key);
        TlsConfig::build(names)
    }

    fn build(names: Names) -> TlsConfig {
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            // ring's provider supports both default versions: not reachable.
            .unwrap_or_else(|e| unreachable!("ring supports TLS 1.2 and 1.3: {e}"))
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(names.clone()));
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsConfig {
            server: Arc::new(server),
            names,
        }
    }

    pub(crate) fn server(&self) -> &Arc<rustls::ServerConfig> {
        &self.server
    }
}
