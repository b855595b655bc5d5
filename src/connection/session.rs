//! An open WebSocket's read side: tungstenite's frame decoder, fed the bytes the server
//! read, yielding messages and the control frames it owes the peer (pongs, close replies).
//! It never touches the socket.

use std::io::{self, Read, Write};

use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

use super::boundary::Boundary;
use crate::handler::Message;

/// An open WebSocket.
pub(crate) struct Session<D> {
    /// tungstenite's decoder and control-frame state machine, created when the peer first
    /// sends something: an idle connection holds no decode buffer.
    codec: Option<Box<Codec>>,
    pub(crate) data: D,
    /// When the server sent a keepalive ping that has not been answered by anything yet.
    pub(crate) ping_sent: Option<u64>,
}

/// tungstenite's decoder with the tracker that tells when it holds nothing.
struct Codec {
    ws: WebSocketContext,
    boundary: Boundary,
}

/// What feeding bytes to a session produced, besides messages.
#[derive(Debug)]
pub(crate) enum Fed {
    /// All bytes consumed; wait for more.
    More,
    /// The peer's close frame arrived (the reply, if one is due, is in `codec_out`).
    PeerClosed(Option<CloseFrame>),
    /// The peer broke the protocol; a close frame with this code is in `codec_out`.
    Failed { code: u16, reason: String },
}

impl<D> Session<D> {
    /// `pipelined` are bytes that came right after the HTTP request: the start of the stream.
    pub(crate) fn new(data: D, pipelined: Vec<u8>, config: &WebSocketConfig) -> Session<D> {
        let codec = (!pipelined.is_empty()).then(|| {
            let mut boundary = Boundary::default();
            boundary.scan(&pipelined);
            Box::new(Codec {
                ws: WebSocketContext::from_partially_read(pipelined, Role::Server, Some(*config)),
                boundary,
            })
        });
        Session {
            codec,
            data,
            ping_sent: None,
        }
    }

    fn codec(&mut self, config: &WebSocketConfig) -> &mut Codec {
        self.codec.get_or_insert_with(|| {
            Box::new(Codec {
                ws: WebSocketContext::new(Role::Server, Some(*config)),
                boundary: Boundary::default(),
            })
        })
    }

    /// Decodes `input`, appending complete messages to `messages` and every byte tungstenite
    /// wants to send (pongs, close replies) to `codec_out`.
    pub(crate) fn feed(
        &mut self,
        config: &WebSocketConfig,
        input: &[u8],
        codec_out: &mut Vec<u8>,
        messages: &mut Vec<Message>,
    ) -> Fed {
        let Codec {
            ws: codec,
            boundary,
        } = self.codec(config);
        boundary.scan(input);
        let mut io = Io {
            input,
            output: codec_out,
        };
        loop {
            match codec.read(&mut io) {
                Ok(tungstenite::Message::Text(text)) => messages.push(Message::Text(text)),
                Ok(tungstenite::Message::Binary(data)) => messages.push(Message::Binary(data)),
                // tungstenite queues the pong itself; any frame already counts as a sign of life.
                Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => {}
                Ok(tungstenite::Message::Frame(_)) => {}
                Ok(tungstenite::Message::Close(frame)) => {
                    // Moves the queued close reply (if any) into `codec_out`. The codec then
                    // reports the connection closed, which is exactly what we know already.
                    let _ = codec.flush(&mut io);
                    return Fed::PeerClosed(frame);
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.shed_large_codec(config);
                    return Fed::More;
                }
                Err(e) => {
                    let (code, reason) = failure(&e);
                    let frame = CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.clone().into(),
                    };
                    // Best effort: if the codec is past the point of sending, nothing goes out.
                    let _ = codec.close(&mut io, Some(frame));
                    return Fed::Failed { code, reason };
                }
            }
        }
    }

    /// Drops a decoder whose buffer grew past its configured size for a large frame, once it
    /// holds nothing (between messages, nothing to send, no close under way): the next
    /// frame gets a fresh, small one. A frame of up to `read_buffer_size` costs nothing.
    fn shed_large_codec(&mut self, config: &WebSocketConfig) {
        let shed = self.codec.as_ref().is_some_and(|c| {
            c.boundary.largest() > config.read_buffer_size as u64
                && c.boundary.between_messages()
                && c.ws.can_write()
        });
        if shed {
            self.codec = None;
        }
    }

    /// Queues a close frame (through the codec, so it knows a reply is expected).
    pub(crate) fn close(
        &mut self,
        config: &WebSocketConfig,
        code: u16,
        reason: &str,
        codec_out: &mut Vec<u8>,
    ) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: truncate(reason, 123).to_owned().into(),
        };
        let mut io = Io {
            input: &[],
            output: codec_out,
        };
        let _ = self.codec(config).ws.close(&mut io, Some(frame));
    }
}

/// The close code and reason for a decoding error (RFC 6455 §7.4.1).
fn failure(e: &tungstenite::Error) -> (u16, String) {
    match e {
        tungstenite::Error::Capacity(_) => (1009, "message too big".to_owned()),
        tungstenite::Error::Utf8(_) => (1007, "invalid UTF-8 in text message".to_owned()),
        tungstenite::Error::Protocol(p) => (1002, truncate(&p.to_string(), 123).to_owned()),
        other => (1011, truncate(&other.to_string(), 123).to_owned()),
    }
}

/// The longest prefix of `s` within `max` bytes that ends on a character boundary
/// (a close reason has room for 123 bytes).
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Connects tungstenite's codec to the bytes the server read (input) and to a buffer that
/// collects what it wants to send (output), so the codec never touches the socket.
struct Io<'a> {
    input: &'a [u8],
    output: &'a mut Vec<u8>,
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            // Not EOF: the codec must stop and wait for the next read from the socket.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.input.read(buf)?;
        Ok(n)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
