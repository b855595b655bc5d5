//! Outgoing messages, encoded once.
//!
//! Frames from a server are never masked (RFC 6455 §5.1), so the bytes of one encoded frame
//! are valid for every recipient. A [`Frame`] holds those bytes in a shared [`Bytes`]:
//! broadcasting it to ten thousand connections queues ten thousand reference-counted views
//! of one buffer, with no per-recipient encoding, allocation or copy.

use std::borrow::Cow;
use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};

use crate::deflate::Compressor;

/// A text or binary message, encoded once as a complete server-to-client WebSocket frame.
///
/// Cloning a `Frame` is cheap (a reference count), so build it once and send it to as many
/// connections as you like.
///
/// ```
/// use wshub::Frame;
/// let hello = Frame::text("hello");
/// assert_eq!(hello.payload_len(), 5);
/// assert_eq!(hello.wire_len(), 7); // 2-byte header + payload
/// ```
#[derive(Clone, Debug)]
pub struct Frame {
    wire: Bytes,
    payload_len: usize,
    /// The frame compressed for permessage-deflate peers (shared mode), made the first time
    /// one of them needs it, then reused for every other: with the window size it was made
    /// for, and `None` if compressing did not make it smaller.
    deflated: OnceLock<(u8, Option<Bytes>)>,
}

impl PartialEq for Frame {
    fn eq(&self, other: &Frame) -> bool {
        self.wire == other.wire
    }
}

impl Eq for Frame {}

/// Opcodes of RFC 6455 §5.2, for the encoder here and the decoder
/// (`connection::decoder`).
pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;
const FIN: u8 = 0x80;
/// RFC 7692 §6: set on the first frame of a compressed message.
const RSV1: u8 = 0x40;

impl Frame {
    /// A text message.
    pub fn text(text: &str) -> Frame {
        Frame::encode(OP_TEXT, text.as_bytes())
    }

    /// A binary message.
    pub fn binary(data: &[u8]) -> Frame {
        Frame::encode(OP_BINARY, data)
    }

    /// Length of the message's payload in bytes.
    pub fn payload_len(&self) -> usize {
        self.payload_len
    }

    /// Length of the whole frame on the wire (header + payload): what it counts against a
    /// connection's [`max_backpressure`](crate::Config::max_backpressure).
    pub fn wire_len(&self) -> usize {
        self.wire.len()
    }

    /// A keepalive ping with an empty payload. Sent without tungstenite's codec, so an idle
    /// connection does not need one until the pong comes back.
    pub(crate) const PING: &'static [u8] = &[FIN | OP_PING, 0];

    pub(crate) fn wire(&self) -> &Bytes {
        &self.wire
    }

    /// The payload (what follows the header).
    pub(crate) fn payload(&self) -> &[u8] {
        &self.wire[self.wire.len() - self.payload_len..]
    }

    /// The frame as a compressed message, made with `compressor` (which forgets each
    /// message, so the bytes serve every peer whose window is at least `window_bits`), or
    /// `None` when compressing does not make it smaller. Made once and kept in the frame;
    /// a frame kept for another window size is compressed anew and not kept.
    pub(crate) fn deflated(
        &self,
        compressor: &mut Compressor,
        window_bits: u8,
    ) -> Option<Cow<'_, Bytes>> {
        let make = |compressor: &mut Compressor| {
            let wire = self.compress_with(compressor);
            (wire.len() < self.wire.len()).then_some(wire)
        };
        let (bits, cached) = self
            .deflated
            .get_or_init(|| (window_bits, make(compressor)));
        if *bits == window_bits {
            cached.as_ref().map(Cow::Borrowed)
        } else {
            make(compressor).map(Cow::Owned)
        }
    }

    /// The frame as a compressed message, made with `compressor` now (a compressor that
    /// keeps context must send what it made, even if it is not smaller).
    pub(crate) fn compress_with(&self, compressor: &mut Compressor) -> Bytes {
        let mut payload = Vec::with_capacity(self.payload_len / 2 + 16);
        compressor.compress(self.payload(), &mut payload);
        encode(FIN | RSV1 | (self.wire[0] & 0x0F), &payload)
    }

    /// Whether this frame already holds its compressed form (for [`Stats`](crate::Stats):
    /// only a new compression counts).
    pub(crate) fn is_deflated(&self) -> bool {
        self.deflated.get().is_some()
    }

    #[cfg(feature = "redis")]
    /// The opcode and payload in one buffer, as a [`Broker`](crate::Broker) carries a frame
    /// between nodes: the opcode byte, then the payload.
    pub(crate) fn to_message(&self) -> Vec<u8> {
        let mut message = Vec::with_capacity(1 + self.payload_len);
        message.push(self.wire[0] & 0x0F);
        message.extend_from_slice(self.payload());
        message
    }

    #[cfg(feature = "redis")]
    /// A frame from [`to_message`](Frame::to_message)'s form (received from another node,
    /// so checked: a text or binary opcode, and UTF-8 for text).
    pub(crate) fn from_message(message: &[u8]) -> Option<Frame> {
        let (&opcode, payload) = message.split_first()?;
        match opcode {
            OP_TEXT => std::str::from_utf8(payload).ok().map(Frame::text),
            OP_BINARY => Some(Frame::binary(payload)),
            _ => None,
        }
    }

    fn encode(opcode: u8, payload: &[u8]) -> Frame {
        Frame {
            wire: encode(FIN | opcode, payload),
            payload_len: payload.len(),
            deflated: OnceLock::new(),
        }
    }
}

/// The payload length of a whole frame (`wire`), from its header.
pub(crate) fn payload_len(wire: &[u8]) -> usize {
    let header = match wire.get(1).map(|b| b & 0x7F) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    wire.len().saturating_sub(header)
}

/// A whole server frame: `first` is its first byte (FIN, RSV bits, opcode).
pub(crate) fn encode(first: u8, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(payload.len() + 10);
    put_frame(&mut buf, first, payload);
    buf.freeze()
}

/// Appends a whole server frame to `out`.
pub(crate) fn put_frame(out: &mut impl BufMut, first: u8, payload: &[u8]) {
    let len = payload.len();
    out.put_u8(first);
    // Payload length, RFC 6455 §5.2: 7 bits, or 126 + 16 bits, or 127 + 64 bits.
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
    out.put_slice(payload);
}

/// Appends a pong carrying `payload` (a ping's) to `out`.
pub(crate) fn put_pong(out: &mut Vec<u8>, payload: &[u8]) {
    put_frame(out, FIN | OP_PONG, payload);
}

/// Appends a close frame to `out`: with `code` and `reason` (cut to the 123 bytes a control
/// frame has room for), or empty.
pub(crate) fn put_close(out: &mut Vec<u8>, close: Option<(u16, &str)>) {
    let mut payload = Vec::with_capacity(125);
    if let Some((code, reason)) = close {
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(truncate(reason, 123).as_bytes());
    }
    put_frame(out, FIN | OP_CLOSE, &payload);
}

/// The longest prefix of `s` within `max` bytes that ends on a character boundary.
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

/// Whether `code` may be sent in a close frame (RFC 6455 §7.4.1–7.4.2): the defined codes
/// 1000–1003 and 1007–1014, and 3000–4999 for libraries and applications. 1004–1006 and
/// 1015 are reserved or only for reports, everything else is unassigned.
pub(crate) fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths_follow_rfc_6455() {
        let small = Frame::binary(&[7; 125]);
        assert_eq!(&small.wire()[..2], &[0x82, 125]);
        let medium = Frame::text(&"a".repeat(126));
        assert_eq!(&medium.wire()[..4], &[0x81, 126, 0, 126]);
        let large = Frame::binary(&vec![0; 70_000]);
        assert_eq!(
            &large.wire()[..10],
            &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
        assert_eq!(large.wire_len(), 70_010);
    }
}
