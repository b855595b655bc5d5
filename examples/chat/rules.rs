//! What a valid name, room and text are, how a refusal is described, and small helpers.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use super::MAX_NAME_CHARS;

/// A request the chat refuses: the `code` and `message` of an `error`.
#[derive(Debug)]
pub(super) struct Fail {
    pub(super) code: &'static str,
    pub(super) message: String,
}

pub(super) fn fail(code: &'static str, message: impl Into<String>) -> Fail {
    Fail {
        code,
        message: message.into(),
    }
}

pub(super) fn str_field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, Fail> {
    match obj.get(name) {
        None | Some(Value::Null) => {
            Err(fail("missing_field", format!("field '{name}' is required")))
        }
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(fail(
            "bad_field",
            format!("field '{name}' must be a string"),
        )),
    }
}

/// The `room` field, validated and lower-cased.
pub(super) fn room_field(obj: &Map<String, Value>) -> Result<String, Fail> {
    let room = str_field(obj, "room")?;
    let valid = (1..=MAX_NAME_CHARS).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(fail(
            "invalid_room",
            "room names are 1 to 32 letters, digits, '-' or '_'",
        ));
    }
    Ok(room.to_ascii_lowercase())
}

pub(super) fn check_text(text: &str, max_chars: usize) -> Result<(), Fail> {
    if text.trim().is_empty() {
        return Err(fail("empty_text", "text is empty"));
    }
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(fail(
            "text_too_long",
            format!("text is {chars} characters; at most {max_chars}"),
        ));
    }
    Ok(())
}

/// A user name: trimmed, 1 to 32 characters, none of them invisible: no control (Cc),
/// format (Cf: zero-width and bidi controls such as U+200B or U+202E) or line and paragraph
/// separator (Zl, Zp) characters, so `ann\u{200b}` cannot pose as `ann`, nor a name be
/// nothing visible.
pub(super) fn check_name(name: Option<&str>) -> Result<String, Fail> {
    let Some(name) = name.map(str::trim).filter(|n| !n.is_empty()) else {
        return Err(fail(
            "invalid_name",
            "a name is required: connect to /ws?name=YOUR_NAME",
        ));
    };
    let invisible = |c: char| {
        matches!(
            c.general_category(),
            GeneralCategory::Control
                | GeneralCategory::Format
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        )
    };
    if name.chars().count() > MAX_NAME_CHARS || name.chars().any(invisible) {
        return Err(fail(
            "invalid_name",
            "names are 1 to 32 characters, without invisible, control or direction characters",
        ));
    }
    Ok(name.to_owned())
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Microseconds since the Unix epoch (2^53, where JavaScript numbers stop being exact, is
/// in the year 2255).
pub(super) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `n` random bytes from the operating system (`getrandom(2)` on Linux), as hex.
pub(super) fn random_hex(n: usize) -> Result<String, getrandom::Error> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().fold(String::with_capacity(2 * n), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}
