//! The frame layer of RFC 6455 for frames from a client: headers, masking, the rules for
//! control frames and fragmentation, and the reassembly of data messages. It is fed bytes as
//! they were read and hands back events; it never touches a socket, and it knows nothing of
//! compression beyond the RSV1 bit it may allow (the session inflates, `crate::deflate`).
//!
//! Everything a peer can get wrong is an [`Failure`] with the close code RFC 6455 §7.4.1
//! asks for: 1002 for a broken protocol, 1007 for invalid UTF-8, 1009 for a message over the
//! size limit, which is checked against a frame's header before its payload is read.

use std::fmt;

use crate::frame::{OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};

/// Longest frame header: 2 bytes, an 8-byte length and a 4-byte mask.
const MAX_HEADER: usize = 14;

/// Longest control frame payload (§5.5).
const MAX_CONTROL: usize = 125;

/// What the decoder found in the bytes it was fed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A complete data message, its fragments joined. Text is not checked for UTF-8 yet if
    /// it is compressed (it is once inflated); uncompressed text was checked as it came.
    Message {
        text: bool,
        compressed: bool,
        payload: Vec<u8>,
    },
    /// A ping: its payload is owed back in a pong.
    Ping(Vec<u8>),
    /// A pong: a sign of life, nothing more.
    Pong,
    /// The peer's close frame, with its code and reason if it had a code.
    Close(Option<(u16, String)>),
}

/// Why a connection fails, with the close code to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
}

impl Failure {
    const fn protocol(reason: &'static str) -> Failure {
        Failure { code: 1002, reason }
    }
    pub(crate) const TOO_BIG: Failure = Failure {
        code: 1009,
        reason: "message too big",
    };
    pub(crate) const BAD_UTF8: Failure = Failure {
        code: 1007,
        reason: "invalid UTF-8 in text message",
    };
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.code)
    }
}

/// The frame whose payload is being read.
#[derive(Debug)]
struct Current {
    opcode: u8,
    fin: bool,
    mask: [u8; 4],
    /// Payload bytes still to come.
    remaining: u64,
    /// Payload bytes already read (the mask's phase).
    done: usize,
}

/// A data message being reassembled.
#[derive(Debug)]
struct Assembly {
    text: bool,
    compressed: bool,
    payload: Vec<u8>,
    /// How much of an uncompressed text payload is known to be valid UTF-8 (a character
    /// may be cut between frames), so invalid text fails at the frame that carries it.
    valid_to: usize,
}

/// The decoder of one connection. Small, and empty between frames: the session frees it
/// when it holds nothing (an idle connection keeps no decoder).
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    head: [u8; MAX_HEADER],
    head_len: u8,
    current: Option<Current>,
    /// The payload of the control frame being read.
    control: Vec<u8>,
    message: Option<Assembly>,
}

impl Decoder {
    /// Whether the decoder holds nothing (between frames and messages): it may be dropped.
    pub(crate) fn is_empty(&self) -> bool {
        self.head_len == 0 && self.current.is_none() && self.message.is_none()
    }

    /// Decodes from `input` until one event is complete (consumed bytes are cut off the
    /// front of `input`), or returns `Ok(None)` once it is all consumed.
    /// `max_message`: the most payload bytes a data message may have (compressed or not).
    /// `rsv1`: whether the first frame of a data message may set RSV1 (permessage-deflate
    /// was negotiated).
    pub(crate) fn decode(
        &mut self,
        input: &mut &[u8],
        max_message: usize,
        rsv1: bool,
    ) -> Result<Option<Decoded>, Failure> {
        loop {
            if self.current.is_none() && !self.read_header(input, max_message, rsv1)? {
                return Ok(None);
            }
            let Some(current) = &mut self.current else {
                continue;
            };
            let take = usize::try_from(current.remaining)
                .unwrap_or(usize::MAX)
                .min(input.len());
            let (bytes, rest) = input.split_at(take);
            *input = rest;
            let into = if current.opcode >= OP_CLOSE {
                &mut self.control
            } else {
                // A data frame's header is read only with an assembly under way.
                let Some(message) = &mut self.message else {
                    return Err(Failure::protocol("data frame without a message"));
                };
                &mut message.payload
            };
            let at = into.len();
            into.extend_from_slice(bytes);
            unmask(&mut into[at..], current.mask, current.done);
            current.remaining -= take as u64;
            current.done += take;
            if let Some(message) = &mut self.message {
                if message.text && !message.compressed && current.opcode < OP_CLOSE {
                    check_utf8(message, false)?;
                }
            }
            if current.remaining > 0 {
                return Ok(None);
            }
            let Some(done) = self.current.take() else {
                continue;
            };
            if let Some(event) = self.frame_done(&done)? {
                return Ok(Some(event));
            }
        }
    }

    /// Reads (the rest of) a frame header; false if `input` ran out first. Checks it as soon
    /// as its first two bytes are in, so a bad frame fails before its payload is read.
    fn read_header(
        &mut self,
        input: &mut &[u8],
        max_message: usize,
        rsv1: bool,
    ) -> Result<bool, Failure> {
        let have = usize::from(self.head_len);
        let need = if have < 2 {
            2
        } else {
            header_len(self.head[1])
        };
        let take = (need - have).min(input.len());
        self.head[have..have + take].copy_from_slice(&input[..take]);
        *input = &input[take..];
        self.head_len += take as u8;
        let have = usize::from(self.head_len);
        if have < 2 {
            return Ok(false);
        }
        if need == 2 {
            self.check_first_bytes(rsv1)?;
            // The rest of the header, now that its length is known.
            return self.read_header(input, max_message, rsv1);
        }
        if have < need {
            return Ok(false);
        }
        let (b0, b1) = (self.head[0], self.head[1]);
        let len = match b1 & 0x7F {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => {
                let mut eight = [0; 8];
                eight.copy_from_slice(&self.head[2..10]);
                let len = u64::from_be_bytes(eight);
                if len >> 63 != 0 {
                    return Err(Failure::protocol("frame length has its top bit set"));
                }
                len
            }
            short => u64::from(short),
        };
        let mut mask = [0; 4];
        mask.copy_from_slice(&self.head[need - 4..need]);
        self.head_len = 0;
        let opcode = b0 & 0x0F;
        let fin = b0 & 0x80 != 0;
        if opcode >= OP_CLOSE {
            if len > MAX_CONTROL as u64 {
                return Err(Failure::protocol("control frame longer than 125 bytes"));
            }
            self.control.clear();
        } else {
            self.start_data(opcode, b0 & 0x40 != 0, len, max_message)?;
        }
        self.current = Some(Current {
            opcode,
            fin,
            mask,
            remaining: len,
            done: 0,
        });
        Ok(true)
    }

    /// The rules a header's first two bytes can break (§5.2, §5.5, RFC 7692 §6).
    fn check_first_bytes(&self, rsv1: bool) -> Result<(), Failure> {
        let (b0, b1) = (self.head[0], self.head[1]);
        let opcode = b0 & 0x0F;
        let fin = b0 & 0x80 != 0;
        if !matches!(
            opcode,
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
        ) {
            return Err(Failure::protocol("reserved opcode"));
        }
        if b0 & 0x30 != 0 {
            return Err(Failure::protocol("reserved bit set (RSV2/RSV3)"));
        }
        if b0 & 0x40 != 0 && !(rsv1 && matches!(opcode, OP_TEXT | OP_BINARY)) {
            return Err(Failure::protocol(if rsv1 {
                "RSV1 set on a frame that is not the first of a data message"
            } else {
                "RSV1 set without a negotiated extension"
            }));
        }
        if b1 & 0x80 == 0 {
            return Err(Failure::protocol("unmasked frame from a client"));
        }
        if opcode >= OP_CLOSE && !fin {
            return Err(Failure::protocol("fragmented control frame"));
        }
        Ok(())
    }

    /// A data frame's header: starts a message or continues the one under way.
    fn start_data(
        &mut self,
        opcode: u8,
        compressed: bool,
        len: u64,
        max_message: usize,
    ) -> Result<(), Failure> {
        let so_far = match (&self.message, opcode) {
            (None, OP_CONTINUATION) => {
                return Err(Failure::protocol("continuation frame without a message"));
            }
            (Some(_), OP_TEXT | OP_BINARY) => {
                return Err(Failure::protocol("new message before the last one ended"));
            }
            (Some(message), _) => message.payload.len(),
            (None, _) => 0,
        };
        if len > (max_message - so_far) as u64 {
            return Err(Failure::TOO_BIG);
        }
        // The payload buffer grows with the bytes that arrive, not with what the header
        // claims: a peer that announces a large frame and sends nothing holds nothing.
        self.message.get_or_insert_with(|| Assembly {
            text: opcode == OP_TEXT,
            compressed,
            payload: Vec::new(),
            valid_to: 0,
        });
        Ok(())
    }

    /// A frame's payload is complete: what it means.
    fn frame_done(&mut self, frame: &Current) -> Result<Option<Decoded>, Failure> {
        match frame.opcode {
            OP_PING => Ok(Some(Decoded::Ping(std::mem::take(&mut self.control)))),
            OP_PONG => Ok(Some(Decoded::Pong)),
            OP_CLOSE => parse_close(&self.control).map(|close| Some(Decoded::Close(close))),
            _ if !frame.fin => Ok(None),
            _ => {
                let Some(mut message) = self.message.take() else {
                    return Ok(None);
                };
                if message.text && !message.compressed {
                    check_utf8(&mut message, true)?;
                }
                Ok(Some(Decoded::Message {
                    text: message.text,
                    compressed: message.compressed,
                    payload: message.payload,
                }))
            }
        }
    }
}

/// The header's length, given its second byte (RFC 6455 §5.2; a client's frames are masked).
fn header_len(b1: u8) -> usize {
    let extended = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + extended + 4
}

/// Checks the UTF-8 of a text message as far as it has come; at its end (`complete`) a
/// character cut short is invalid too.
fn check_utf8(message: &mut Assembly, complete: bool) -> Result<(), Failure> {
    match std::str::from_utf8(&message.payload[message.valid_to..]) {
        Ok(_) => message.valid_to = message.payload.len(),
        Err(e) if e.error_len().is_some() || complete => return Err(Failure::BAD_UTF8),
        Err(e) => message.valid_to += e.valid_up_to(),
    }
    Ok(())
}

/// A close frame's payload: nothing, or a code and a UTF-8 reason (§5.5.1, §7.4).
fn parse_close(payload: &[u8]) -> Result<Option<(u16, String)>, Failure> {
    match payload {
        [] => Ok(None),
        [_] => Err(Failure::protocol("close frame with a one-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !crate::frame::sendable_close_code(code) {
                return Err(Failure::protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| Failure {
                code: 1007,
                reason: "invalid UTF-8 in close reason",
            })?;
            Ok(Some((code, reason.to_owned())))
        }
    }
}

/// Unmasks `bytes`, the payload bytes from offset `done` on (§5.3): eight at a time.
fn unmask(bytes: &mut [u8], mask: [u8; 4], done: usize) {
    let mut key = [0u8; 8];
    for (i, k) in key.iter_mut().enumerate() {
        *k = mask[(done + i) % 4];
    }
    let word = u64::from_ne_bytes(key);
    let mut chunks = bytes.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut eight = [0; 8];
        eight.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(eight) ^ word).to_ne_bytes());
    }
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key) {
        *byte ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with a fixed key.
    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Feeds `bytes` in pieces of `step` and collects the events (or the failure).
    fn run(bytes: &[u8], step: usize, rsv1: bool) -> Result<Vec<Decoded>, Failure> {
        let mut decoder = Decoder::default();
        let mut events = Vec::new();
        for piece in bytes.chunks(step) {
            let mut input = piece;
            while let Some(event) = decoder.decode(&mut input, 1 << 20, rsv1)? {
                events.push(event);
            }
            assert!(input.is_empty());
        }
        assert!(decoder.is_empty() || events.is_empty() || !bytes.is_empty());
        Ok(events)
    }

    fn text(s: &str) -> Decoded {
        Decoded::Message {
            text: true,
            compressed: false,
            payload: s.as_bytes().to_vec(),
        }
    }

    #[test]
    fn fragments_and_interleaved_control_frames_in_any_read_sizes() {
        let mut bytes = frame(0x01, b"hel");
        bytes.extend(frame(0x89, b"p"));
        bytes.extend(frame(0x80, b"lo"));
        bytes.extend(frame(0x82, &[7; 70_000]));
        bytes.extend(frame(0x88, &[3, 232, b'b', b'y', b'e']));
        for step in [1, 2, 3, 7, 13, 1000, usize::MAX] {
            let events = run(&bytes, step.min(bytes.len()), false).unwrap();
            assert_eq!(
                events,
                vec![
                    Decoded::Ping(b"p".to_vec()),
                    text("hello"),
                    Decoded::Message {
                        text: false,
                        compressed: false,
                        payload: vec![7; 70_000]
                    },
                    Decoded::Close(Some((1000, "bye".into()))),
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn protocol_violations_fail_with_their_codes() {
        let cases: &[(Vec<u8>, u16)] = &[
            (frame(0x83, b""), 1002),                                // reserved opcode
            (frame(0xA1, b""), 1002),                                // RSV2
            (frame(0xC1, b"x"), 1002),                               // RSV1 not negotiated
            (frame(0x80, b"x"), 1002),                               // continuation first
            (frame(0x09, b""), 1002),                                // fragmented ping
            (frame(0x89, &[0; 126]), 1002),                          // long ping
            (frame(0x88, &[3]), 1002),                               // one-byte close
            (frame(0x88, &[3, 237]), 1002),                          // close code 1005
            (frame(0x88, &[3, 232, 0xFF]), 1007),                    // bad reason
            (frame(0x81, &[0xCE, 0xBA, 0xE1]), 1007),                // cut character at the end
            (frame(0x01, &[0xFF]), 1007),                            // invalid at once
            ([frame(0x01, b"a"), frame(0x81, b"b")].concat(), 1002), // new message mid-way
            (vec![0x81, 0x00], 1002),                                // unmasked
        ];
        for (bytes, code) in cases {
            let failure = run(bytes, 1, false).unwrap_err();
            assert_eq!(failure.code, *code, "{bytes:?}: {failure}");
        }
    }

    #[test]
    fn invalid_utf8_fails_at_the_fragment_that_carries_it() {
        // The bad byte is in the first fragment: no need to wait for the rest.
        let bytes = frame(0x01, &[b'a', 0xC0, b'b']);
        assert_eq!(run(&bytes, 100, false).unwrap_err(), Failure::BAD_UTF8);
        // A character split across fragments is fine.
        let bytes = [frame(0x01, &[0xCE]), frame(0x80, &[0xBA])].concat();
        assert_eq!(run(&bytes, 1, false).unwrap(), vec![text("κ")]);
    }

    #[test]
    fn sizes_are_checked_against_the_header() {
        let mut decoder = Decoder::default();
        // A header claiming more than the limit fails before any payload arrives.
        let bytes = frame(0x82, &[0; 200]);
        let mut input = &bytes[..8];
        assert_eq!(
            decoder.decode(&mut input, 100, false),
            Err(Failure::TOO_BIG)
        );
        // Fragments add up.
        let mut decoder = Decoder::default();
        let bytes = [frame(0x02, &[0; 60]), frame(0x80, &[0; 60])].concat();
        let mut input = &bytes[..];
        assert_eq!(
            decoder.decode(&mut input, 100, false),
            Err(Failure::TOO_BIG)
        );
    }

    #[test]
    fn rsv1_marks_the_first_frame_of_a_compressed_message() {
        let bytes = [frame(0x41, b"ab"), frame(0x80, b"c")].concat();
        assert_eq!(
            run(&bytes, 1, true).unwrap(),
            vec![Decoded::Message {
                text: true,
                compressed: true,
                payload: b"abc".to_vec()
            }]
        );
        // Not on a continuation, nor on a control frame.
        let bytes = [frame(0x01, b"ab"), frame(0xC0, b"c")].concat();
        assert_eq!(run(&bytes, 1, true).unwrap_err().code, 1002);
        assert_eq!(run(&frame(0xC9, b""), 1, true).unwrap_err().code, 1002);
    }

    #[test]
    fn unmask_matches_the_bytewise_definition() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for done in 0..4 {
            for len in 0..20 {
                let mut fast: Vec<u8> = (0..len as u8).collect();
                let slow: Vec<u8> = fast
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[(done + i) % 4])
                    .collect();
                unmask(&mut fast, mask, done);
                assert_eq!(fast, slow);
            }
        }
    }
}
