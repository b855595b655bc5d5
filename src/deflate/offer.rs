//! Server-side negotiation of the permessage-deflate extension (RFC 7692).
//!
//! The client lists what it can do in `Sec-WebSocket-Extensions`; we must either accept exactly one
//! permessage-deflate offer, with parameters both sides can honour, or ignore them all. A header
//! that breaks the RFC 6455 §9.1 grammar is an error (400), while a well-formed offer we cannot
//! honour is merely declined (RFC 7692 §5: the server "MUST decline" such offers, not fail).

use std::fmt;

/// What the server is willing to do (derived from the server's configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Policy {
    /// The server resets its compressor after every message (shared mode: one compression
    /// serves every recipient), so it always answers `server_no_context_takeover`.
    pub(crate) server_no_context_takeover: bool,
    /// The LZ77 window the server compresses with, 9..=15. In shared mode an offer whose
    /// `server_max_window_bits` is below this is declined (the same compressed bytes go to every
    /// recipient, so the window cannot shrink for one client); in dedicated mode the server
    /// compresses with min(offered, this).
    pub(crate) server_window_bits: u8,
    /// The largest window the server lets the client compress with, 9..=15 (bounds the server's
    /// inflate memory). Only enforceable when the client offered `client_max_window_bits`.
    pub(crate) client_window_bits: u8,
    /// Ask the client to reset its compressor after every message (answered even when not
    /// offered, which RFC 7692 §7.1.1.2 allows).
    pub(crate) client_no_context_takeover: bool,
}

/// The parameters both sides agreed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Agreed {
    /// The server resets its compressor after every message.
    pub(crate) server_no_context_takeover: bool,
    /// The client resets its compressor after every message.
    pub(crate) client_no_context_takeover: bool,
    /// The window the server compresses with (9..=15).
    pub(crate) server_window_bits: u8,
    /// The window the client may use (8..=15; 15 when the client did not offer
    /// `client_max_window_bits`).
    pub(crate) client_window_bits: u8,
    /// The client offered `server_max_window_bits`, so the response must answer it
    /// (RFC 7692 §7.1.2.1); without the offer the response must not mention it.
    pub(crate) answer_server_window: bool,
    /// The client offered `client_max_window_bits`, so the response may limit it
    /// (RFC 7692 §7.1.2.2); without the offer the client may not understand a limit.
    pub(crate) answer_client_window: bool,
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` response header value, e.g.
    /// `permessage-deflate; server_no_context_takeover; client_max_window_bits=10`.
    pub(crate) fn response(&self) -> String {
        let mut value = String::from("permessage-deflate");
        if self.server_no_context_takeover {
            value += "; server_no_context_takeover";
        }
        if self.client_no_context_takeover {
            value += "; client_no_context_takeover";
        }
        if self.answer_server_window {
            value += &format!("; server_max_window_bits={}", self.server_window_bits);
        }
        if self.answer_client_window {
            value += &format!("; client_max_window_bits={}", self.client_window_bits);
        }
        value
    }
}

/// The request header is not valid syntax (RFC 6455 §9.1 grammar): the server answers 400 with
/// this error's Display text as the reason, so every message is plain printable ASCII.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OfferError {
    /// A byte outside ASCII (including invalid UTF-8): no token or quoted-string allows it.
    NotAscii,
    /// A list element starts with `;` instead of an extension name.
    EmptyExtensionName,
    /// A `;` is not followed by a parameter name.
    EmptyParamName,
    /// An `=` is not followed by a value.
    EmptyParamValue,
    /// A quoted value has no closing `"`.
    UnterminatedQuote,
    /// A quoted value is not a token once unquoted (RFC 6455 §9.1 requires that it is).
    QuotedValueNotToken,
    /// A character that the grammar does not allow where it appears.
    UnexpectedChar(char),
}

impl fmt::Display for OfferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("malformed Sec-WebSocket-Extensions: ")?;
        match self {
            Self::NotAscii => f.write_str("non-ASCII byte"),
            Self::EmptyExtensionName => f.write_str("empty extension name"),
            Self::EmptyParamName => f.write_str("empty parameter name"),
            Self::EmptyParamValue => f.write_str("empty parameter value"),
            Self::UnterminatedQuote => f.write_str("unterminated quoted string"),
            Self::QuotedValueNotToken => f.write_str("quoted parameter value is not a token"),
            // Debug formatting escapes control characters, keeping the reason phrase printable.
            Self::UnexpectedChar(c) => write!(f, "unexpected character {c:?}"),
        }
    }
}

impl std::error::Error for OfferError {}

/// Chooses the first permessage-deflate offer that `policy` can accept.
///
/// `values`: every `Sec-WebSocket-Extensions` header value of the request, in order (several
/// header lines form one list). Every value is checked for syntax, even after an offer has been
/// accepted, so that a request is rejected or not regardless of where the mistake is.
/// `Ok(None)`: no acceptable permessage-deflate offer (none offered, or all declined).
pub(crate) fn negotiate<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
    policy: &Policy,
) -> Result<Option<Agreed>, OfferError> {
    let mut agreed = None;
    for value in values {
        for offer in parse(value)? {
            if agreed.is_none() && offer.name.eq_ignore_ascii_case("permessage-deflate") {
                agreed = accept(&offer.params, policy);
            }
        }
    }
    Ok(agreed)
}

/// Applies RFC 7692 §7 to one permessage-deflate offer; `None` declines it.
fn accept(params: &[Param<'_>], policy: &Policy) -> Option<Agreed> {
    let (mut server_reset, mut client_reset) = (false, false);
    let (mut server_bits, mut client_bits) = (None, None);
    for param in params {
        let name = param.name.to_ascii_lowercase();
        match (name.as_str(), param.value.as_deref()) {
            ("server_no_context_takeover", None) if !server_reset => server_reset = true,
            ("client_no_context_takeover", None) if !client_reset => client_reset = true,
            ("server_max_window_bits", Some(bits)) if server_bits.is_none() => {
                server_bits = Some(window_bits(bits)?);
            }
            // Without a value the client merely announces that it can honour a limit.
            ("client_max_window_bits", bits) if client_bits.is_none() => {
                client_bits = Some(bits.map_or(Some(15), window_bits)?);
            }
            // An unknown name, a repeated one, or a value where the RFC forbids or requires one.
            _ => return None,
        }
    }
    let offered_server_bits = server_bits.unwrap_or(15);
    // zlib cannot produce a raw deflate stream with a 256-byte window.
    if offered_server_bits == 8 {
        return None;
    }
    // Shared mode compresses once for everyone, so it cannot shrink its window for one client.
    if policy.server_no_context_takeover && offered_server_bits < policy.server_window_bits {
        return None;
    }
    Some(Agreed {
        server_no_context_takeover: server_reset || policy.server_no_context_takeover,
        client_no_context_takeover: client_reset || policy.client_no_context_takeover,
        server_window_bits: offered_server_bits.min(policy.server_window_bits),
        client_window_bits: client_bits.map_or(15, |bits| bits.min(policy.client_window_bits)),
        answer_server_window: server_bits.is_some(),
        answer_client_window: client_bits.is_some(),
    })
}

/// A window size as RFC 7692 §7.1.2 spells it: a decimal 8..=15, without sign or leading zero.
fn window_bits(value: &str) -> Option<u8> {
    (8..=15).find(|bits: &u8| bits.to_string() == value)
}

/// One list element of the header: an extension name and its parameters.
struct Offer<'a> {
    name: &'a str,
    params: Vec<Param<'a>>,
}

/// One `name[=value]` parameter; a quoted value is stored unquoted (RFC 6455 §9.1 gives
/// `a=1` and `a="1"` the same meaning).
struct Param<'a> {
    name: &'a str,
    value: Option<String>,
}

/// Parses one header value: `extension *( ";" param )` elements separated by commas, with
/// optional spaces or tabs around every separator. Empty elements (`a, , b`) are skipped as
/// RFC 7230 §7 asks; a value holding no element at all yields no offers rather than an error.
fn parse(value: &[u8]) -> Result<Vec<Offer<'_>>, OfferError> {
    let text = std::str::from_utf8(value)
        .ok()
        .filter(|text| text.is_ascii())
        .ok_or(OfferError::NotAscii)?;
    let mut input = Input(text);
    let mut offers = Vec::new();
    loop {
        if input.eat(',') {
            continue;
        }
        if input.0.is_empty() {
            return Ok(offers);
        }
        let name = input.token(OfferError::EmptyExtensionName)?;
        let mut params = Vec::new();
        while input.eat(';') {
            let name = input.token(OfferError::EmptyParamName)?;
            let value = if input.eat('=') {
                Some(input.value()?)
            } else {
                None
            };
            params.push(Param { name, value });
        }
        offers.push(Offer { name, params });
        // The element ends at the next comma (handled at the top of the loop) or at the end.
        if let Some(c) = input.0.chars().next().filter(|&c| c != ',') {
            return Err(OfferError::UnexpectedChar(c));
        }
    }
}

/// The not yet parsed rest of an (all-ASCII) header value.
struct Input<'a>(&'a str);

impl<'a> Input<'a> {
    /// Consumes the separator `c` with the spaces and tabs around it (only the spaces when
    /// `c` does not come next): the grammar allows them around every separator.
    fn eat(&mut self, c: char) -> bool {
        self.0 = self.0.trim_start_matches([' ', '\t']);
        let Some(rest) = self.0.strip_prefix(c) else {
            return false;
        };
        self.0 = rest.trim_start_matches([' ', '\t']);
        true
    }

    /// Consumes a token; `missing` is the error when a separator (or the end) comes first, so
    /// that the message names what is missing rather than the character that follows.
    fn token(&mut self, missing: OfferError) -> Result<&'a str, OfferError> {
        let end = self.0.find(|c| !is_tchar(c)).unwrap_or(self.0.len());
        let (token, rest) = self.0.split_at(end);
        self.0 = rest;
        if !token.is_empty() {
            return Ok(token);
        }
        match rest.chars().next() {
            Some(c) if !matches!(c, ',' | ';' | '=') => Err(OfferError::UnexpectedChar(c)),
            _ => Err(missing),
        }
    }

    /// Consumes a parameter value: a token or a quoted-string whose content is a token.
    fn value(&mut self) -> Result<String, OfferError> {
        // Not `eat`: spaces inside the quotes belong to the value.
        let Some(quoted) = self.0.strip_prefix('"') else {
            return self.token(OfferError::EmptyParamValue).map(str::to_owned);
        };
        let mut unquoted = String::new();
        let mut chars = quoted.char_indices();
        while let Some((at, c)) = chars.next() {
            match c {
                '"' => {
                    self.0 = &quoted[at + 1..];
                    if unquoted.is_empty() || !unquoted.chars().all(is_tchar) {
                        return Err(OfferError::QuotedValueNotToken);
                    }
                    return Ok(unquoted);
                }
                // A quoted-pair: the backslash escapes the next character.
                '\\' => match chars.next() {
                    Some((_, escaped)) => unquoted.push(escaped),
                    None => break,
                },
                _ => unquoted.push(c),
            }
        }
        Err(OfferError::UnterminatedQuote)
    }
}

/// RFC 7230 §3.2.6 `tchar`: the characters a token may contain.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARED: Policy = Policy {
        server_no_context_takeover: true,
        server_window_bits: 15,
        client_window_bits: 15,
        client_no_context_takeover: false,
    };
    const DEDICATED: Policy = Policy {
        server_no_context_takeover: false,
        ..SHARED
    };

    fn agree(lines: &[&str], policy: Policy) -> Option<Agreed> {
        negotiate(lines.iter().map(|line| line.as_bytes()), &policy).expect("valid syntax")
    }

    /// The response header, or "declined" when no offer was acceptable.
    fn answer(lines: &[&str], policy: Policy) -> String {
        agree(lines, policy).map_or_else(|| "declined".to_owned(), |agreed| agreed.response())
    }

    fn error(line: &str) -> OfferError {
        negotiate([line.as_bytes()], &DEDICATED).expect_err("invalid syntax")
    }

    #[test]
    fn real_client_offers() {
        // Chromium and Python websockets send the first, Firefox the second, Autobahn the third.
        let chrome = ["permessage-deflate; client_max_window_bits"];
        let expected = "permessage-deflate; server_no_context_takeover; client_max_window_bits=15";
        assert_eq!(answer(&chrome, SHARED), expected);
        assert_eq!(
            answer(&chrome, DEDICATED),
            "permessage-deflate; client_max_window_bits=15"
        );
        let firefox = ["permessage-deflate"];
        assert_eq!(
            answer(&firefox, SHARED),
            "permessage-deflate; server_no_context_takeover"
        );
        let autobahn = ["permessage-deflate; client_no_context_takeover; client_max_window_bits"];
        let expected = "permessage-deflate; client_no_context_takeover; client_max_window_bits=15";
        assert_eq!(answer(&autobahn, DEDICATED), expected);
    }

    #[test]
    fn dedicated_mode_echoes_each_parameter_alone() {
        for offer in [
            "permessage-deflate",
            "permessage-deflate; server_no_context_takeover",
            "permessage-deflate; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=12",
            "permessage-deflate; client_max_window_bits=10",
            "permessage-deflate; client_max_window_bits=8",
        ] {
            assert_eq!(answer(&[offer], DEDICATED), offer);
        }
        let expected = Agreed {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_window_bits: 12,
            client_window_bits: 15,
            answer_server_window: true,
            answer_client_window: false,
        };
        let offer = ["permessage-deflate; server_max_window_bits=12"];
        assert_eq!(agree(&offer, DEDICATED), Some(expected));
    }

    #[test]
    fn declined_offers() {
        for offer in [
            "permessage-deflate; mux",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits=10; client_max_window_bits=10",
            "permessage-deflate; client_max_window_bits; Client_Max_Window_Bits",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"true\"",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; server_max_window_bits=+9",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=ten",
            "x-webkit-deflate-frame",
            "",
            " , ,",
        ] {
            assert_eq!(answer(&[offer], DEDICATED), "declined", "{offer}");
        }
        assert_eq!(answer(&[], DEDICATED), "declined");
    }

    #[test]
    fn first_acceptable_offer_wins() {
        let offers = [
            "permessage-deflate; x=1, permessage-deflate; client_max_window_bits=9, \
                       permessage-deflate",
        ];
        assert_eq!(
            answer(&offers, DEDICATED),
            "permessage-deflate; client_max_window_bits=9"
        );
        let lines = [
            "x-custom",
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate",
        ];
        assert_eq!(answer(&lines, DEDICATED), "permessage-deflate");
        let unknown_first =
            ["x-webkit-deflate-frame; no_context_takeover; a=\"b\", permessage-deflate"];
        assert_eq!(answer(&unknown_first, DEDICATED), "permessage-deflate");
    }

    #[test]
    fn shared_mode_cannot_shrink_its_window() {
        let offer = ["permessage-deflate; server_max_window_bits=10"];
        assert_eq!(answer(&offer, SHARED), "declined");
        let policy = Policy {
            server_window_bits: 10,
            ..SHARED
        };
        let expected = "permessage-deflate; server_no_context_takeover; server_max_window_bits=10";
        assert_eq!(answer(&offer, policy), expected);
        let larger = ["permessage-deflate; server_max_window_bits=12"];
        assert_eq!(answer(&larger, policy), expected);
    }

    #[test]
    fn dedicated_mode_takes_the_smaller_window() {
        let policy = Policy {
            server_window_bits: 12,
            client_window_bits: 10,
            ..DEDICATED
        };
        for (offer, server, client) in [
            ("permessage-deflate", 12, 15),
            ("permessage-deflate; server_max_window_bits=9", 9, 15),
            ("permessage-deflate; server_max_window_bits=15", 12, 15),
            ("permessage-deflate; client_max_window_bits", 12, 10),
            ("permessage-deflate; client_max_window_bits=9", 12, 9),
        ] {
            let agreed = agree(&[offer], policy).expect("accepted");
            assert_eq!(
                (agreed.server_window_bits, agreed.client_window_bits),
                (server, client)
            );
        }
        let offer = ["permessage-deflate; server_max_window_bits=15; client_max_window_bits=12"];
        let expected = "permessage-deflate; server_max_window_bits=12; client_max_window_bits=10";
        assert_eq!(answer(&offer, policy), expected);
    }

    #[test]
    fn policy_requests_client_no_context_takeover() {
        let policy = Policy {
            client_no_context_takeover: true,
            ..SHARED
        };
        let expected = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        assert_eq!(answer(&["permessage-deflate"], policy), expected);
    }

    #[test]
    fn quoted_values_are_unquoted() {
        let expected = "permessage-deflate; client_max_window_bits=10";
        for offer in [
            r#"permessage-deflate; client_max_window_bits="10""#,
            r#"permessage-deflate; client_max_window_bits="1\0""#,
        ] {
            assert_eq!(answer(&[offer], DEDICATED), expected);
        }
    }

    #[test]
    fn case_and_spaces_do_not_matter() {
        let offer = ["PerMessage-Deflate;Client_Max_Window_Bits=10;SERVER_NO_CONTEXT_TAKEOVER"];
        let expected = "permessage-deflate; server_no_context_takeover; client_max_window_bits=10";
        assert_eq!(answer(&offer, DEDICATED), expected);
        let spaced = [" \tpermessage-deflate \t; \tclient_max_window_bits \t= \t10 \t, \t"];
        assert_eq!(
            answer(&spaced, DEDICATED),
            "permessage-deflate; client_max_window_bits=10"
        );
    }

    #[test]
    fn malformed_syntax() {
        use OfferError::*;
        for (line, expected) in [
            ("; a", EmptyExtensionName),
            ("a, ;b", EmptyExtensionName),
            ("permessage-deflate;", EmptyParamName),
            ("permessage-deflate; ; a", EmptyParamName),
            ("permessage-deflate; =10", EmptyParamName),
            ("permessage-deflate; a=", EmptyParamValue),
            ("permessage-deflate; a=;b", EmptyParamValue),
            (
                r#"permessage-deflate; client_max_window_bits="1 0""#,
                QuotedValueNotToken,
            ),
            (
                r#"permessage-deflate; client_max_window_bits="""#,
                QuotedValueNotToken,
            ),
            (r#"x; a="b,c", permessage-deflate"#, QuotedValueNotToken),
            (
                r#"permessage-deflate; client_max_window_bits=" 10""#,
                QuotedValueNotToken,
            ),
            (
                r#"permessage-deflate; client_max_window_bits="10"#,
                UnterminatedQuote,
            ),
            (r#"permessage-deflate; a="10\"#, UnterminatedQuote),
            (
                "permessage-deflate client_max_window_bits",
                UnexpectedChar('c'),
            ),
            ("permessage-deflate; a=1 0", UnexpectedChar('0')),
            ("permessage@deflate", UnexpectedChar('@')),
            ("\"permessage-deflate\"", UnexpectedChar('"')),
            ("permessage-deflate; a=b=c", UnexpectedChar('=')),
            ("permessage-deflate\r\n", UnexpectedChar('\r')),
            ("permessage-deflate, a b", UnexpectedChar('b')),
            ("permessage-déflate", NotAscii),
        ] {
            assert_eq!(error(line), expected, "{line:?}");
        }
        let invalid_utf8: &[u8] = b"permessage-deflate; a=\xff";
        assert_eq!(negotiate([invalid_utf8], &DEDICATED), Err(NotAscii));
        // A later mistake fails the request even though an earlier offer was acceptable.
        let lines: [&[u8]; 2] = [b"permessage-deflate", b"permessage-deflate;"];
        assert_eq!(negotiate(lines, &DEDICATED), Err(EmptyParamName));
    }

    #[test]
    fn error_messages_are_printable_reasons() {
        let prefix = "malformed Sec-WebSocket-Extensions: ";
        assert_eq!(
            error("; a").to_string(),
            format!("{prefix}empty extension name")
        );
        let message = error("a\u{1}").to_string();
        assert_eq!(message, format!("{prefix}unexpected character '\\u{{1}}'"));
        assert!(message.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
    }
}
