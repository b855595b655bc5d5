//! permessage-deflate (RFC 7692) negotiation, offer by offer, as the 101 (or the 400) says
//! it, in shared, dedicated and off configurations and with the extension refused by the
//! handler; and malformed offers, answered 400 with the reason unless compression is off or
//! the handler refused the extension.

mod common;

use std::io::Write;

use common::deflate::*;
use common::*;
use wshub::{Compression, Config};

/// The upgrade answer to `offers` (one `Sec-WebSocket-Extensions` line each): its status
/// line and its `Sec-WebSocket-Extensions` (which must not appear twice).
fn offer(server: &TestServer<App>, path: &str, offers: &[&str]) -> (String, Option<String>) {
    let extra: String = offers
        .iter()
        .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
        .collect();
    let mut s = raw_connect(server.addr);
    s.write_all(upgrade_request(path, &extra).as_bytes())
        .expect("write");
    let (head, _) = read_head(&mut s);
    let (status, _) = parse_head(&head);
    (status, extensions_of(&head))
}

/// Checks each `(offers, answer)`: `offers` is the `Sec-WebSocket-Extensions` lines of the
/// request, separated by `\n` (none if empty); `answer` the 101's header, if any.
fn check_offers(server: &TestServer<App>, path: &str, cases: &[(&str, Option<&str>)]) {
    for (offers, answer) in cases {
        let lines: Vec<&str> = offers.split('\n').filter(|l| !l.is_empty()).collect();
        let (status, ext) = offer(server, path, &lines);
        assert_eq!(
            (status.as_str(), ext.as_deref()),
            ("HTTP/1.1 101 Switching Protocols", *answer),
            "{offers:?} on {path}"
        );
    }
}

#[test]
fn negotiation_matrix() {
    const PMD: &str = "permessage-deflate";
    const SNCT: &str = "permessage-deflate; server_no_context_takeover";

    // Shared mode: always server_no_context_takeover, and its window is 15 for everyone.
    let shared = start(config(Compression::shared()), clone_per_loop(App));
    check_offers(
        &shared,
        "/",
        &[
            ("", None),
            // An empty value: no offer.
            (" ", None),
            (PMD, Some(SNCT)),
            // What browsers and websockets send.
            (
                "permessage-deflate; client_max_window_bits",
                Some("permessage-deflate; server_no_context_takeover; client_max_window_bits=15"),
            ),
            ("permessage-deflate; server_no_context_takeover", Some(SNCT)),
            (
                "permessage-deflate; client_no_context_takeover",
                Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            ),
            // One compression for everyone cannot shrink its window for one client.
            ("permessage-deflate; server_max_window_bits=10", None),
            (
                "permessage-deflate; server_max_window_bits=15",
                Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=15"),
            ),
            // zlib cannot make a 256-byte window.
            ("permessage-deflate; server_max_window_bits=8", None),
            // The first offer declined, the second accepted: in one line, and over two.
            (
                "permessage-deflate; server_max_window_bits=10, \
             permessage-deflate; client_max_window_bits=12",
                Some("permessage-deflate; server_no_context_takeover; client_max_window_bits=12"),
            ),
            (
                "permessage-deflate; server_max_window_bits=9\npermessage-deflate",
                Some(SNCT),
            ),
            // Unknown extensions are ignored.
            (
                "x-webkit-deflate-frame; no_context_takeover, permessage-deflate",
                Some(SNCT),
            ),
            ("x-unknown-extension", None),
            ("x-unknown-extension\npermessage-deflate", Some(SNCT)),
            // An unknown parameter declines its offer; a later plain offer is still taken.
            ("permessage-deflate; foo=bar", None),
            ("permessage-deflate; foo", None),
            ("permessage-deflate; foo, permessage-deflate", Some(SNCT)),
            // Repeated parameters decline too.
            (
                "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
                None,
            ),
            // Quoted values, case, spaces and tabs.
            (
                "PerMessage-Deflate ;\tClient_Max_Window_Bits = \"11\"",
                Some("permessage-deflate; server_no_context_takeover; client_max_window_bits=11"),
            ),
        ],
    );
    // Refused by the handler (`compress: false`): the offer is ignored.
    check_offers(
        &shared,
        "/plain",
        &[
            (PMD, None),
            ("permessage-deflate; client_max_window_bits", None),
        ],
    );

    // Dedicated mode: the client's limits are taken.
    let dedicated = start(config(Compression::dedicated(15)), clone_per_loop(App));
    check_offers(
        &dedicated,
        "/",
        &[
            ("", None),
            (PMD, Some(PMD)),
            (
                "permessage-deflate; client_max_window_bits",
                Some("permessage-deflate; client_max_window_bits=15"),
            ),
            (
                "permessage-deflate; server_max_window_bits=10",
                Some("permessage-deflate; server_max_window_bits=10"),
            ),
            ("permessage-deflate; server_max_window_bits=8", None),
            ("permessage-deflate; server_no_context_takeover", Some(SNCT)),
            (
                "permessage-deflate; client_no_context_takeover; client_max_window_bits=9",
                Some("permessage-deflate; client_no_context_takeover; client_max_window_bits=9"),
            ),
            (
                "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=12",
                Some("permessage-deflate; server_max_window_bits=12"),
            ),
        ],
    );
    check_offers(&dedicated, "/plain", &[(PMD, None)]);

    // Dedicated with a smaller window, a client window limit and no client context.
    let small = start(
        config(
            Compression::dedicated(11)
                .client_window_bits(10)
                .client_no_context_takeover(true),
        ),
        clone_per_loop(App),
    );
    check_offers(
        &small,
        "/",
        &[
            (PMD, Some("permessage-deflate; client_no_context_takeover")),
            (
                "permessage-deflate; client_max_window_bits",
                Some("permessage-deflate; client_no_context_takeover; client_max_window_bits=10"),
            ),
            (
                "permessage-deflate; server_max_window_bits=13; client_max_window_bits=12",
                Some(
                    "permessage-deflate; client_no_context_takeover; server_max_window_bits=11; \
                 client_max_window_bits=10",
                ),
            ),
            (
                "permessage-deflate; server_max_window_bits=9",
                Some("permessage-deflate; client_no_context_takeover; server_max_window_bits=9"),
            ),
        ],
    );

    // Compression off: no extension, whatever is offered.
    let off = start(Config::default(), clone_per_loop(App));
    check_offers(
        &off,
        "/",
        &[
            (PMD, None),
            ("permessage-deflate; client_max_window_bits", None),
        ],
    );

    for server in [shared, dedicated, small, off] {
        let stats = server.handle.stats();
        assert_eq!(stats.rejected.total(), 0, "{stats:?}");
        server.stop().1.unwrap();
    }
}

#[test]
fn malformed_offers_are_400_with_the_reason_unless_compression_is_off() {
    let shared = start(config(Compression::shared()), clone_per_loop(App));
    let off = start(Config::default(), clone_per_loop(App));
    let request = |offers: &[&str], path: &str| {
        let extra: String = offers
            .iter()
            .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
            .collect();
        upgrade_request(path, &extra).into_bytes()
    };
    let prefix = "malformed Sec-WebSocket-Extensions: ";
    for (offers, reason) in [
        (&["permessage-deflate;"][..], "empty parameter name"),
        (
            &["permessage-deflate; client_max_window_bits=\"10"][..],
            "unterminated quoted string",
        ),
        (
            &["permessage-deflate client_max_window_bits"][..],
            "unexpected character 'c'",
        ),
        // A mistake on a later line fails the request even after an acceptable offer.
        (
            &["permessage-deflate", "x; a="][..],
            "empty parameter value",
        ),
    ] {
        let response = raw_exchange(shared.addr, &request(offers, "/"));
        let (status, headers, body) = parse_response(&response);
        assert_eq!(status, "HTTP/1.1 400 Bad Request", "{offers:?}");
        assert!(
            headers.contains(&("content-type".into(), "text/plain; charset=utf-8".into())),
            "{headers:?}"
        );
        assert_eq!(
            String::from_utf8(body).unwrap(),
            format!("{prefix}{reason}")
        );
        // Compression off: the header is not even read.
        let (status, ext) = offer(&off, "/", offers);
        assert_eq!(
            (status.as_str(), ext),
            ("HTTP/1.1 101 Switching Protocols", None)
        );
    }
    // Refused by the handler: not read either.
    let (status, ext) = offer(&shared, "/plain", &["permessage-deflate;"]);
    assert_eq!(
        (status.as_str(), ext),
        ("HTTP/1.1 101 Switching Protocols", None)
    );
    assert!(wait_until(IO_TIMEOUT, || shared
        .handle
        .stats()
        .rejected
        .bad_request
        == 4));
    assert_eq!(shared.handle.stats().rejected.total(), 4);
    shared.stop().1.unwrap();
    off.stop().1.unwrap();
}
