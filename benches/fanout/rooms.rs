//! Rooms on the wire: the `?room=NAME` query parameter of the upgrade URL.
//!
//! The servers read it the way wshub's `Request::query_param("room")` (which
//! the `broadcast` example uses) reads it: the first `room=` pair of the
//! query, percent-decoded with `+` as a space; no room when there is no such
//! pair or it is not valid percent-encoded UTF-8. Reading it identically in
//! every server keeps them doing the same work for the same clients.

/// The request target (path and query) a client in room `index` asks for,
/// or `/fanout` for a client in no room.
pub fn upgrade_target(room: Option<usize>) -> String {
    match room {
        Some(index) => format!("/?room=r{index}"),
        None => "/fanout".to_string(),
    }
}

/// The room named in a request target such as `/?room=lobby`, if any.
pub fn room_of(target: &str) -> Option<String> {
    let (_, query) = target.split_once('?')?;
    let value = query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| *key == "room")?
        .1;
    percent_decode(value)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = hex_digit(*bytes.get(i + 1)?)?;
                let lo = hex_digit(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}
