//! The WebSocket upgrade: checking a request against RFC 6455 §4.2.1 and the 101 answer.

use std::fmt;

use bytes::Bytes;

use super::{Request, Response, trim_ows};

/// Why a request the application accepted is not a valid WebSocket handshake
/// (RFC 6455 §4.2.1), each with its HTTP answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HandshakeError {
    Method,
    HttpVersion,
    NoUpgrade,
    NoConnectionUpgrade,
    Version,
    Key,
}

impl HandshakeError {
    pub(crate) fn response(self) -> Response {
        let response = Response::text(self.status(), self.to_string());
        match self {
            HandshakeError::Method => response.header("Allow", "GET"),
            HandshakeError::Version => response.header("Sec-WebSocket-Version", "13"),
            _ => response,
        }
    }

    fn status(self) -> u16 {
        match self {
            HandshakeError::Method => 405,
            HandshakeError::Version => 426,
            _ => 400,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandshakeError::Method => "websocket handshake must use GET",
            HandshakeError::HttpVersion => "websocket handshake needs HTTP/1.1",
            HandshakeError::NoUpgrade => "missing 'Upgrade: websocket' header",
            HandshakeError::NoConnectionUpgrade => "'Connection' header lacks the 'upgrade' token",
            HandshakeError::Version => "unsupported Sec-WebSocket-Version: only 13 is supported",
            HandshakeError::Key => "missing or invalid Sec-WebSocket-Key",
        })
    }
}

/// Checks the handshake and returns the `Sec-WebSocket-Accept` value.
pub(crate) fn validate_upgrade(req: &Request<'_>) -> Result<String, HandshakeError> {
    if req.method != "GET" {
        return Err(HandshakeError::Method);
    }
    if req.minor_version < 1 {
        return Err(HandshakeError::HttpVersion);
    }
    if !req.is_websocket() {
        return Err(HandshakeError::NoUpgrade);
    }
    if !req
        .header_tokens("connection")
        .any(|t| t.eq_ignore_ascii_case("upgrade"))
    {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    if req.header("sec-websocket-version").map(trim_ows) != Some("13") {
        return Err(HandshakeError::Version);
    }
    let key = req
        .header("sec-websocket-key")
        .map(trim_ows)
        .ok_or(HandshakeError::Key)?;
    if !is_base64_of_16_bytes(key) {
        return Err(HandshakeError::Key);
    }
    Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// The 101 answer.
pub(crate) fn switching_protocols(
    accept_key: &str,
    protocol: Option<&str>,
    extensions: Option<&str>,
) -> Bytes {
    let mut head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\n"
    );
    if let Some(p) = protocol {
        head.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    if let Some(e) = extensions {
        head.push_str(&format!("Sec-WebSocket-Extensions: {e}\r\n"));
    }
    head.push_str("\r\n");
    Bytes::from(head)
}

/// A 16-byte value in base64 is 22 significant characters and `==`; the last significant
/// character carries only 2 bits, so its low 4 bits must be zero.
fn is_base64_of_16_bytes(key: &str) -> bool {
    fn value(c: u8) -> Option<u8> {
        match c {
            b'A'..=b'Z' => Some(c - b'A'),
            b'a'..=b'z' => Some(c - b'a' + 26),
            b'0'..=b'9' => Some(c - b'0' + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let k = key.as_bytes();
    k.len() == 24
        && &k[22..] == b"=="
        && k[..22].iter().all(|&c| value(c).is_some())
        && value(k[21]).is_some_and(|v| v & 0x0F == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_must_be_base64_of_16_bytes() {
        assert!(is_base64_of_16_bytes("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_base64_of_16_bytes("dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!is_base64_of_16_bytes("dGhlIHNhbXBsZSBub25jZR=="));
        assert!(!is_base64_of_16_bytes("dGhlIHNhbXBsZSBub25j*Q=="));
    }
}
