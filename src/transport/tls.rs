//! TLS over a connection's socket, with rustls' unbuffered API driven by the loop.
//!
//! The buffered `rustls::ServerConnection` keeps a record buffer per connection that grows
//! to 4 KiB at the first read and is never freed, so every idle connection paid for it.
//! Here rustls owns no buffer of ours:
//!
//! - reading, ciphertext goes into one half of the loop's shared read buffer and is
//!   decrypted from there into the other half; only the bytes of a record not complete yet
//!   stay with the connection (`partial`, freed once empty);
//! - writing, plaintext is encrypted into a per-thread scratch buffer and handed to the
//!   socket at once; only what the socket does not take stays with the connection
//!   (`pending`, freed once empty). Nothing more is encrypted while some is left, so
//!   beyond the connection's queue (which counts only plaintext not encrypted yet) at most
//!   one write of ciphertext waits: backpressure stays exact to within two records.
//!
//! Handshake messages and alerts rustls owes the peer go to `pending` too and out at the
//! connection's next flush.

use std::cell::RefCell;
use std::io::{self, IoSlice, Read, Write};

use mio::net::TcpStream;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus,
};

/// Most plaintext encrypted in one write: two full records. One record per write cost a
/// system call per 16 KiB and made 4 KiB broadcasts as dear as tokio-rustls' (5.05 vs
/// 4.84 µs per delivery); two per write made them 3.28 vs 4.50 µs (benches/tls). More
/// would let a slow reader hold more ciphertext beyond its queue's limit.
const TLS_WRITE_CHUNK: usize = 32 * 1024;

/// Room for a record's header, tag and padding (TLS 1.2 GCM needs 29 bytes, TLS 1.3 22):
/// a first guess at the ciphertext's size, so encrypting rarely needs a second try.
const RECORD_OVERHEAD: usize = 64;

/// Calls to rustls that may follow a fatal error to get its alert out (it queues one).
const ALERT_STEPS: usize = 8;

/// rustls' state for one connection and the socket it runs over.
pub(crate) struct Tls {
    sock: TcpStream,
    conn: UnbufferedServerConnection,
    /// The start of a record (or of a handshake message spanning records) that has not
    /// arrived whole: rustls needs it again with the bytes that follow. Empty, without an
    /// allocation, on an idle connection.
    partial: Vec<u8>,
    /// Ciphertext the socket has not taken yet.
    pending: Pending,
    /// The SNI name of the handshake (the unbuffered API does not tell it: see
    /// `crate::tls::take_resolved_name`).
    server_name: Option<Box<str>>,
    /// The peer's `close_notify` came: no more plaintext.
    peer_closed: bool,
}

impl Tls {
    pub(crate) fn new(sock: TcpStream, config: &crate::TlsConfig) -> io::Result<Tls> {
        let conn = UnbufferedServerConnection::new(config.server().clone())
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Tls {
            sock,
            conn,
            partial: Vec::new(),
            pending: Pending::default(),
            server_name: None,
            peer_closed: false,
        })
    }

    pub(crate) fn socket(&self) -> &TcpStream {
        &self.sock
    }

    pub(crate) fn socket_mut(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    pub(crate) fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// Whether ciphertext waits for the socket.
    pub(crate) fn wants_write(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Hands waiting ciphertext to the socket; `Ok(true)` when none is left.
    pub(crate) fn write_pending(&mut self) -> io::Result<bool> {
        self.pending.write_to(&mut self.sock)
    }

    /// Queues a `close_notify` (once the handshake is done; before, there is nothing to
    /// close cleanly) and hands it to the socket, best effort.
    pub(crate) fn close_notify(&mut self) {
        for _ in 0..ALERT_STEPS {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.partial);
            let done = match state {
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    let _ = append_with(&mut self.pending.bytes, RECORD_OVERHEAD, |out| {
                        traffic.queue_close_notify(out)
                    });
                    true
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    self.pending.encode(&mut data).is_err()
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    false
                }
                _ => true,
            };
            self.partial.drain(..discard.min(self.partial.len()));
            if done {
                break;
            }
        }
        let _ = self.write_pending();
    }

    /// Plaintext into `buf`; `Ok(0)` at the end of the stream (a `close_notify` or the TCP
    /// EOF); `WouldBlock` when nothing more is there. `buf` is the loop's shared read
    /// buffer: its second half takes ciphertext, decrypted into its first half (plaintext
    /// is never longer than its records, so it always fits).
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.peer_closed {
            return Ok(0);
        }
        let (plain, cipher) = buf.split_at_mut(buf.len() / 2);
        loop {
            let carried = self.partial.len();
            if carried >= cipher.len() {
                // A handshake message bigger than half the read buffer (32 KiB): no client
                // of ours sends one.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS message larger than the read buffer",
                ));
            }
            // Errors (`WouldBlock` first) leave `partial` as it was.
            let n = match self.sock.read(&mut cipher[carried..])? {
                // The TCP EOF without a close_notify: the end, as for plain TCP.
                0 => return Ok(0),
                n => n,
            };
            cipher[..carried].copy_from_slice(&self.partial);
            let produced = self.process(&mut cipher[..carried + n], plain)?;
            if produced > 0 || self.peer_closed {
                return Ok(produced);
            }
            // Only handshake records so far: take more from the socket.
        }
    }

    /// Runs rustls over `cipher` (carried bytes, then new ones), decrypting into `plain`;
    /// keeps what rustls has not consumed in `partial`. Returns the plaintext's length.
    fn process(&mut self, cipher: &mut [u8], plain: &mut [u8]) -> io::Result<usize> {
        let mut start = 0;
        let mut produced = 0;
        let outcome: Result<(), rustls::Error> = 'records: loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut cipher[start..]);
            let state = match state {
                Ok(state) => state,
                Err(e) => break Err(e),
            };
            let stop = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = match record {
                            Ok(record) => record,
                            Err(e) => break 'records Err(e),
                        };
                        discard += record.discard;
                        let end = produced + record.payload.len();
                        let Some(into) = plain.get_mut(produced..end) else {
                            // Not reachable: plaintext is shorter than the ciphertext read.
                            return Err(io::Error::other("TLS plaintext overflows the buffer"));
                        };
                        into.copy_from_slice(record.payload);
                        produced = end;
                    }
                    false
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    self.pending.encode(&mut data)?;
                    false
                }
                // Handshake records go out at the end of the turn's flush (the loop asks
                // `wants_write` after reading); rustls need not hold them meanwhile.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    false
                }
                // Every complete record is processed: the rest needs more bytes.
                ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => true,
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.peer_closed = true;
                    true
                }
                // Early data is off (rustls' default); a new state of a later rustls is
                // nothing this connection can go on with.
                _ => break Err(rustls::Error::General("unexpected TLS state".into())),
            };
            start += discard;
            if stop {
                break Ok(());
            }
        };
        if let Some(name) = crate::tls::take_resolved_name() {
            self.server_name = name;
        }
        let start = start.min(cipher.len());
        match outcome {
            Ok(()) => {
                let rest = &cipher[start..];
                // After a close_notify nothing more is read.
                self.partial = if rest.is_empty() || self.peer_closed {
                    Vec::new()
                } else {
                    rest.to_vec()
                };
                Ok(produced)
            }
            Err(e) => {
                // Garbage, plain HTTP or an old protocol version ends here: the alert rustls
                // queued goes out (best effort), then the connection fails.
                self.send_alert(&mut cipher[start..]);
                Err(io::Error::new(io::ErrorKind::InvalidData, e))
            }
        }
    }

    /// Encodes and sends what rustls queued after a fatal error (its alert). `rest` is the
    /// unconsumed input, as rustls must be given it again; it is called only while records
    /// are queued (rustls hands them out before it deframes more input, which would fail
    /// again).
    fn send_alert(&mut self, rest: &mut [u8]) {
        let mut start = 0;
        for _ in 0..ALERT_STEPS {
            if !self.conn.wants_write() {
                break;
            }
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut rest[start..]);
            let go_on = match state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    self.pending.encode(&mut data).is_ok()
                }
                // Plaintext decrypted before the error comes first: it is dropped.
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(Ok(_)) = traffic.next_record() {}
                    true
                }
                _ => false,
            };
            start = (start + discard).min(rest.len());
            if !go_on {
                break;
            }
        }
        let _ = self.write_pending();
    }

    /// Encrypts up to two records of `bufs` and hands them to the socket in one write.
    /// Waiting ciphertext goes first; while the socket refuses it nothing more is encrypted (`WouldBlock`: the
    /// rest stays counted in the connection's queue).
    pub(crate) fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if !self.write_pending()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let Scratch { plain, cipher } = &mut *scratch;
            // Several slices (several frames) are gathered into full records, not one each.
            let data: &[u8] = match bufs {
                [] => return Ok(0),
                [one, ..] if bufs.len() == 1 || one.len() >= TLS_WRITE_CHUNK => {
                    &one[..one.len().min(TLS_WRITE_CHUNK)]
                }
                _ => {
                    plain.clear();
                    for buf in bufs {
                        let room = TLS_WRITE_CHUNK - plain.len();
                        if room == 0 {
                            break;
                        }
                        plain.extend_from_slice(&buf[..buf.len().min(room)]);
                    }
                    plain
                }
            };
            let len = self.encrypt(data, cipher)?;
            let cipher = &cipher[..len];
            // `pending` is empty here unless rustls had handshake records to add first.
            if self.pending.is_empty() {
                let sent = write_some(&mut self.sock, cipher)?;
                self.pending.bytes.extend_from_slice(&cipher[sent..]);
            } else {
                self.pending.bytes.extend_from_slice(cipher);
                self.write_pending()?;
            }
            Ok(data.len())
        })
    }

    /// Encrypts `data` into the start of `out` (grown if need be, never shrunk: it is the
    /// thread's scratch, and zeroing it at every write would cost); returns the length.
    fn encrypt(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<usize> {
        for _ in 0..ALERT_STEPS {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.partial);
            let state = state.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let encrypted = match state {
                ConnectionState::WriteTraffic(mut traffic) => {
                    let records = data.len() / TLS_WRITE_CHUNK + 1;
                    let room = data.len() + records * RECORD_OVERHEAD;
                    if out.len() < room {
                        out.resize(room, 0);
                    }
                    match traffic.encrypt(data, out) {
                        Err(EncryptError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => {
                            // Not reached with RECORD_OVERHEAD's room; should rustls ask for
                            // more, it gets it.
                            out.resize(required_size, 0);
                            Some(traffic.encrypt(data, out).map_err(io::Error::other)?)
                        }
                        result => Some(result.map_err(io::Error::other)?),
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    self.pending.encode(&mut encode)?;
                    None
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                // Nothing is queued before the handshake is done (the first bytes we send
                // answer a request); should some be, they wait.
                ConnectionState::BlockedHandshake => return Err(io::ErrorKind::WouldBlock.into()),
                // A close_notify went both ways: nothing more can be sent.
                _ => return Err(io::ErrorKind::BrokenPipe.into()),
            };
            self.partial.drain(..discard.min(self.partial.len()));
            if let Some(len) = encrypted {
                return Ok(len);
            }
        }
        Err(io::Error::other(
            "TLS: handshake records without end before encrypting",
        ))
    }
}

/// Ciphertext the socket has not taken, from `sent` on.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    sent: usize,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.sent == self.bytes.len()
    }

    /// Writes until the socket refuses; `Ok(true)` when all is written (and the buffer is
    /// freed: an idle connection keeps none).
    fn write_to(&mut self, sock: &mut TcpStream) -> io::Result<bool> {
        if self.is_empty() {
            return Ok(true);
        }
        self.sent += write_some(sock, &self.bytes[self.sent..])?;
        if self.is_empty() {
            *self = Pending::default();
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Appends a handshake record (or alert) rustls has ready.
    fn encode(&mut self, data: &mut EncodeTlsData<'_, ServerConnectionData>) -> io::Result<()> {
        let needed = match data.encode(&mut []) {
            Ok(_) | Err(EncodeError::AlreadyEncoded) => return Ok(()),
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                required_size
            }
        };
        let len = self.bytes.len();
        self.bytes.resize(len + needed, 0);
        match data.encode(&mut self.bytes[len..]) {
            Ok(n) => {
                self.bytes.truncate(len + n);
                Ok(())
            }
            Err(e) => {
                self.bytes.truncate(len);
                Err(io::Error::other(e))
            }
        }
    }
}

/// Writes what the socket takes of `bytes` now: their length, or less when it refuses more.
fn write_some(sock: &mut TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < bytes.len() {
        match sock.write(&bytes[sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// Appends to `out` what `fill` writes, giving it `guess` bytes of room first and what it
/// asks for if that was too little.
fn append_with(
    out: &mut Vec<u8>,
    guess: usize,
    mut fill: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    let len = out.len();
    let mut room = guess;
    for _ in 0..2 {
        out.resize(len + room, 0);
        match fill(&mut out[len..]) {
            Ok(n) => {
                out.truncate(len + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                room = required_size;
            }
            Err(e) => {
                out.truncate(len);
                return Err(io::Error::other(e));
            }
        }
    }
    out.truncate(len);
    Err(io::Error::other("TLS: no room to encrypt"))
}

/// A write's plaintext (several slices made one) and its ciphertext before the socket
/// takes it: per thread, as each loop has its own, so connections keep none.
#[derive(Default)]
struct Scratch {
    plain: Vec<u8>,
    cipher: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}
