//! What the fuzzers in `tests/fuzz/` found, replayed over real sockets against a server.
//!
//! - The `http` target's RFC-grammar check: header values were trimmed with `str::trim`,
//!   which removes *Unicode* whitespace (U+00A0 NO-BREAK SPACE, U+0085 NEXT LINE, U+3000 …),
//!   where HTTP's optional whitespace is only SP and HTAB (RFC 9110 §5.6.3). So
//!   `Content-Length: 5<U+00A0>` framed a 5-byte body (RFC 9110 §8.6 allows digits only:
//!   a stricter proxy in front rejects or re-frames it, the classic request-smuggling
//!   desync), and `Sec-WebSocket-Version: 13<U+0085>` or a key followed by U+00A0 passed
//!   the RFC 6455 §4.2.1 checks. The inputs, minimised by libFuzzer:
//!   `tests/fuzz/corpus/http/regression-*`.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use wshub::{Config, Ctx, Handler, Reply, Request, Response};

/// The bodies of the requests the application got.
type Bodies = Arc<Mutex<Vec<Vec<u8>>>>;

/// `/ws` upgrades; any other request is answered 200 with its body, and recorded.
#[derive(Clone)]
struct Site {
    bodies: Bodies,
}

impl Handler for Site {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, req: &Request<'_>) -> Reply<()> {
        if req.path() == "/ws" {
            return Reply::accept(());
        }
        self.bodies.lock().unwrap().push(req.body().to_vec());
        Reply::Respond(Response::new(200).body(req.body().to_vec()))
    }
}

fn site() -> (TestServer<Site>, Bodies) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let server = start(
        Config::default(),
        clone_per_loop(Site {
            bodies: Arc::clone(&bodies),
        }),
    );
    (server, bodies)
}

fn post(content_length: &[u8]) -> Vec<u8> {
    let mut request =
        b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: ".to_vec();
    request.extend_from_slice(content_length);
    request.extend_from_slice(b"\r\n\r\nhello");
    request
}

#[test]
fn content_length_is_digits_with_only_sp_or_htab_around() {
    let (server, bodies) = site();
    // Unicode whitespace that `str::trim` removes but HTTP does not know: 400, and the
    // application never sees a request framed by it.
    for value in [
        &b"5\xc2\xa0"[..], // U+00A0 NO-BREAK SPACE
        b"5\xc2\x85",      // U+0085 NEXT LINE
        b"\xe3\x80\x805",  // U+3000 IDEOGRAPHIC SPACE
        b"5\xe2\x80\x83",  // U+2003 EM SPACE
    ] {
        let response = raw_exchange(server.addr, &post(value));
        assert_eq!(
            status_line(&response),
            "HTTP/1.1 400 Bad Request",
            "Content-Length: {:?}",
            String::from_utf8_lossy(value)
        );
    }
    assert_eq!(*bodies.lock().unwrap(), Vec::<Vec<u8>>::new());
    // SP and HTAB around the digits are optional whitespace: fine.
    let response = raw_exchange(server.addr, &post(b" \t5 \t"));
    assert_eq!(status_line(&response), "HTTP/1.1 200 OK");
    assert_eq!(*bodies.lock().unwrap(), vec![b"hello".to_vec()]);
}

#[test]
fn websocket_version_and_key_allow_only_sp_or_htab_around() {
    let (server, _) = site();
    let request = |version: &[u8], key: &[u8]| {
        let mut r = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                      Sec-WebSocket-Version: "
            .to_vec();
        r.extend_from_slice(version);
        r.extend_from_slice(b"\r\nSec-WebSocket-Key: ");
        r.extend_from_slice(key);
        r.extend_from_slice(b"\r\n\r\n");
        r
    };
    let key = b"dGhlIHNhbXBsZSBub25jZQ==";
    let status = |version: &[u8], key: &[u8]| {
        let mut s = raw_connect(server.addr);
        std::io::Write::write_all(&mut s, &request(version, key)).unwrap();
        let (head, _) = read_head(&mut s);
        head.lines().next().unwrap_or_default().to_owned()
    };
    assert_eq!(
        status(b"13\xc2\x85", key),
        "HTTP/1.1 426 Upgrade Required",
        "version 13 + U+0085"
    );
    assert_eq!(
        status(b"\xc2\xa013", key),
        "HTTP/1.1 426 Upgrade Required",
        "U+00A0 + version 13"
    );
    let mut nbsp_key = key.to_vec();
    nbsp_key.extend_from_slice(b"\xc2\xa0");
    assert_eq!(
        status(b"13", &nbsp_key),
        "HTTP/1.1 400 Bad Request",
        "key + U+00A0"
    );
    // Optional whitespace (SP, HTAB) is not part of the value.
    assert_eq!(
        status(b" 13\t", b"\tdGhlIHNhbXBsZSBub25jZQ== "),
        "HTTP/1.1 101 Switching Protocols"
    );
}
