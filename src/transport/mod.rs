//! A connection's byte stream: plain TCP, or TLS over it (cargo feature `tls`). Both are
//! read into and written from like a socket, non-blocking, and the loop treats them alike;
//! only this file knows which is which.
//!
//! TLS (`tls.rs`) is rustls' unbuffered API driven by the loop; what it owes the peer on
//! its own (handshake messages, alerts, `close_notify`) goes out at the connection's next
//! flush.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;

#[cfg(feature = "tls")]
mod tls;
#[cfg(feature = "tls")]
use tls::Tls;

/// The stream a connection reads and writes.
pub(crate) enum Transport {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<Tls>),
}

impl Transport {
    /// A TLS stream over `sock` with `config`'s certificates.
    #[cfg(feature = "tls")]
    pub(crate) fn tls(sock: TcpStream, config: &crate::TlsConfig) -> io::Result<Transport> {
        Ok(Transport::Tls(Box::new(Tls::new(sock, config)?)))
    }

    pub(crate) fn socket(&self) -> &TcpStream {
        match self {
            Transport::Plain(sock) => sock,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.socket(),
        }
    }

    pub(crate) fn socket_mut(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(sock) => sock,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.socket_mut(),
        }
    }

    /// Whether this is a TLS stream.
    pub(crate) fn is_tls(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            #[cfg(feature = "tls")]
            Transport::Tls(_) => true,
        }
    }

    /// The SNI name the client asked for (TLS only).
    pub(crate) fn server_name(&self) -> Option<&str> {
        match self {
            Transport::Plain(_) => None,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.server_name(),
        }
    }

    /// Whether bytes below the application's (TLS records) wait to be written: the
    /// connection must be flushed even with an empty queue.
    pub(crate) fn wants_write(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.wants_write(),
        }
    }

    /// Writes what waits below the application's bytes; `Ok(true)` when nothing is left.
    pub(crate) fn flush_pending(&mut self) -> io::Result<bool> {
        match self {
            Transport::Plain(_) => Ok(true),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.write_pending(),
        }
    }

    /// Ends our side: for TLS a `close_notify` first (best effort), then the TCP FIN.
    pub(crate) fn shutdown_write(&mut self) {
        #[cfg(feature = "tls")]
        if let Transport::Tls(tls) = self {
            tls.close_notify();
        }
        let _ = self.socket().shutdown(Shutdown::Write);
    }

    /// Writes a last answer straight to a socket about to be dropped (a refusal at accept,
    /// an evicted handshake) if the stream can carry it: a TLS stream cannot before its
    /// handshake, so it is just closed.
    pub(crate) fn write_last_words(&mut self, bytes: &[u8]) {
        match self {
            Transport::Plain(sock) => {
                let _ = sock.write_all(bytes);
            }
            #[cfg(feature = "tls")]
            Transport::Tls(_) => {}
        }
    }
}

impl Read for Transport {
    /// Plaintext; `Ok(0)` at the end of the stream (for TLS, a `close_notify` or the TCP
    /// EOF); `WouldBlock` when nothing more is there.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(sock) => sock.read(buf),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Plain(sock) => sock.write_vectored(bufs),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
