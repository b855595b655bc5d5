//! Where the inbound byte stream stands: inside a frame, or between messages.
//!
//! tungstenite's decoder reserves room for a whole frame in its input buffer and keeps that
//! capacity afterwards, so a connection that once sent a 1 MiB message would hold 1 MiB for
//! the rest of its life. The decoder does not say when it is empty; this tracker follows
//! the frame headers (RFC 6455 §5.2) of the same bytes to know it: between two messages, with
//! no partial frame, the decoder holds nothing and can be dropped (and made afresh, small,
//! when the peer next sends something).

/// Follows frame boundaries; lives beside the decoder, so an idle connection has neither.
#[derive(Debug, Default)]
pub(crate) struct Boundary {
    /// The header of the frame being read, while incomplete.
    header: [u8; 14],
    header_len: u8,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// A fragmented data message has started and not finished.
    fragmented: bool,
    /// Largest frame payload seen (by this decoder).
    largest: u64,
}

impl Boundary {
    /// Accounts for `bytes`, which the decoder is being fed.
    pub(crate) fn scan(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.remaining -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            let at = usize::from(self.header_len);
            self.header[at] = bytes[0];
            self.header_len += 1;
            bytes = &bytes[1..];
            if let Some(len) = self.header_complete() {
                let (fin, opcode) = (self.header[0] & 0x80 != 0, self.header[0] & 0x0f);
                if opcode < 0x8 {
                    // Data or continuation frame: a message ends with FIN.
                    self.fragmented = !fin;
                }
                self.remaining = len;
                self.largest = self.largest.max(len);
                self.header_len = 0;
            }
        }
    }

    /// Whether the stream is between messages: no partial header, payload or message.
    pub(crate) fn between_messages(&self) -> bool {
        self.header_len == 0 && self.remaining == 0 && !self.fragmented
    }

    /// Largest frame payload seen.
    pub(crate) fn largest(&self) -> u64 {
        self.largest
    }

    /// The payload length once the header is complete.
    fn header_complete(&self) -> Option<u64> {
        let h = &self.header[..usize::from(self.header_len)];
        if h.len() < 2 {
            return None;
        }
        let masked = h[1] & 0x80 != 0;
        let (extended, len_bytes) = match h[1] & 0x7f {
            126 => (2, 2),
            127 => (8, 8),
            short => {
                let need = 2 + if masked { 4 } else { 0 };
                return (h.len() == need).then_some(u64::from(short));
            }
        };
        let need = 2 + extended + if masked { 4 } else { 0 };
        if h.len() < need {
            return None;
        }
        Some(
            h[2..2 + len_bytes]
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(first: u8, len: usize) -> Vec<u8> {
        let mut f = vec![first];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]); // mask
        f.extend(std::iter::repeat_n(0u8, len));
        f
    }

    #[test]
    fn follows_frames_fed_in_any_pieces() {
        let mut stream = frame(0x82, 70_000); // binary, FIN
        stream.extend(frame(0x01, 3)); // text, not FIN
        stream.extend(frame(0x89, 0)); // ping inside the fragmented message
        stream.extend(frame(0x80, 200)); // continuation, FIN
        for piece in [1, 7, 1000] {
            let mut b = Boundary::default();
            let mut between = Vec::new();
            for chunk in stream.chunks(piece) {
                b.scan(chunk);
                between.push(b.between_messages());
            }
            assert!(b.between_messages(), "piece {piece}");
            assert_eq!(b.largest(), 70_000);
            // Not between messages while the first frame's payload was still arriving.
            assert!(!between[0]);
        }
        let mut b = Boundary::default();
        b.scan(&stream[..stream.len() - 1]);
        assert!(!b.between_messages());
    }
}
