//! A connection's byte stream: plain TCP, or TLS over it (cargo feature `tls`). Both are
//! read into and written from like a socket, non-blocking, and the loop treats them alike;
//! only this file knows which is which.
//!
//! TLS is rustls driven by the loop (its `mio` example's shape): a read takes what the
//! socket has into rustls and processes it, then yields plaintext; a write first hands
//! rustls' pending records to the socket and only then encrypts more, so rustls never holds
//! more than about one write of ciphertext the socket has not taken. What rustls owes the
//! peer on its own (handshake messages, alerts, `close_notify`) goes out at the connection's
//! next flush.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;

/// The stream a connection reads and writes.
pub(crate) enum Transport {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<Tls>),
}

/// rustls' state and the socket it runs over.
#[cfg(feature = "tls")]
pub(crate) struct Tls {
    sock: TcpStream,
    conn: rustls::ServerConnection,
}

/// Most plaintext rustls takes in one write: one full record. What rustls holds beyond the
/// connection's queue (which counts only what rustls has not taken) is at most this much
/// ciphertext, so backpressure stays exact to within one record.
#[cfg(feature = "tls")]
const TLS_WRITE_CHUNK: usize = 16 * 1024;

impl Transport {
    /// A TLS stream over `sock` with `config`'s certificates.
    #[cfg(feature = "tls")]
    pub(crate) fn tls(sock: TcpStream, config: &crate::TlsConfig) -> io::Result<Transport> {
        let conn = rustls::ServerConnection::new(config.server().clone())
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Transport::Tls(Box::new(Tls { sock, conn })))
    }

    pub(crate) fn socket(&self) -> &TcpStream {
        match self {
            Transport::Plain(sock) => sock,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => &tls.sock,
        }
    }

    pub(crate) fn socket_mut(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(sock) => sock,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => &mut tls.sock,
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
            Transport::Tls(tls) => tls.conn.server_name(),
        }
    }

    /// Whether bytes below the application's (TLS records) wait to be written: the
    /// connection must be flushed even with an empty queue.
    pub(crate) fn wants_write(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.conn.wants_write(),
        }
    }

    /// Writes what waits below the application's bytes; `Ok(true)` when nothing is left.
    pub(crate) fn flush_pending(&mut self) -> io::Result<bool> {
        match self {
            Transport::Plain(_) => Ok(true),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.write_records(),
        }
    }

    /// Ends our side: for TLS a `close_notify` first (best effort), then the TCP FIN.
    pub(crate) fn shutdown_write(&mut self) {
        #[cfg(feature = "tls")]
        if let Transport::Tls(tls) = self {
            tls.conn.send_close_notify();
            let _ = tls.write_records();
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

#[cfg(feature = "tls")]
impl Tls {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                // Nothing decrypted yet: take more from the socket.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed TCP without a close_notify: the end, as for plain TCP.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => return Ok(0),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            if let Err(e) = self.conn.process_new_packets() {
                // Send the alert rustls queued (best effort), then fail the connection:
                // garbage, plain HTTP or an old protocol version ends here.
                let _ = self.write_records();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // Records rustls holds go first; while the socket refuses them, nothing more is
        // encrypted (the rest stays counted in the connection's queue).
        if !self.write_records()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut taken = 0;
        for buf in bufs {
            let room = TLS_WRITE_CHUNK - taken;
            if room == 0 {
                break;
            }
            let part = &buf[..buf.len().min(room)];
            taken += self.conn.writer().write(part)?;
            if part.len() < buf.len() {
                break;
            }
        }
        // The socket takes what it will now; the rest goes at the next flush.
        self.write_records()?;
        Ok(taken)
    }

    /// Hands rustls' pending records to the socket until it refuses; `Ok(true)` when none
    /// are left.
    fn write_records(&mut self) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}
