//! What the chat's tests share: a client of the chat's protocol ([`C`]) and plain HTTP to
//! the chat, for a chat on one loop (`tests/chat.rs`) or several (`tests/chat_cluster.rs`).
#![allow(dead_code)] // each test file uses a different part of this

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tungstenite::Message;

use crate::common::*;

/// A running chat: where it listens.
pub trait Target {
    fn addr(&self) -> SocketAddr;

    fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr(), path)
    }

    /// Whether one counter stamps every `seq` a client of this server gets, so they must
    /// increase. Not so for a node of a Redis cluster: each node stamps its own, and one
    /// from another node may arrive after a later local one.
    fn one_seq_counter(&self) -> bool {
        true
    }
}

impl<H> Target for TestServer<H> {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A client: the socket, and the last `seq` it saw (every server message has a higher one).
pub struct C {
    pub ws: Client,
    pub seq: u64,
    pub id: String,
    pub name: String,
    pub token: String,
    /// Whether each message must have a higher `seq` than the last (true, the default).
    /// Across nodes of a cluster, two messages sent at the same moment on different nodes
    /// may arrive in the other order than their `seq`s (each node stamps its own).
    increasing_seq: bool,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Removes `ts` and `seq` (after checking them) from a message and its history items.
pub fn strip(mut v: Value) -> Value {
    if let Some(obj) = v.as_object_mut() {
        let ts = obj.remove("ts").and_then(|t| t.as_u64()).expect("ts");
        assert!(ts.abs_diff(now_ms()) < 60_000, "ts {ts} is not now");
        obj.remove("seq").and_then(|s| s.as_u64()).expect("seq");
        if let Some(Value::Array(items)) = obj.get_mut("history") {
            for item in items.iter_mut() {
                *item = strip(item.take());
            }
        }
    }
    v
}

impl C {
    /// Connects to `/ws?QUERY` and expects either a welcome (→ Ok) or an error (→ Err
    /// with the error and the close code).
    pub fn try_connect(server: &impl Target, query: &str) -> Result<C, (Value, u16)> {
        let mut c = C::welcomed(connect(&server.url(&format!("/ws?{query}"))))?;
        c.increasing_seq = server.one_seq_counter();
        Ok(c)
    }

    /// The client of a socket just opened: a welcome (→ Ok) or an error (→ Err with the
    /// error and the close code).
    pub fn welcomed(ws: Client) -> Result<C, (Value, u16)> {
        let mut c = C {
            ws,
            seq: 0,
            id: String::new(),
            name: String::new(),
            token: String::new(),
            increasing_seq: true,
        };
        let first = c.recv_full();
        if first["type"] == "error" {
            let code = c.expect_close();
            return Err((strip(first), code));
        }
        assert_eq!(first["type"], "welcome", "{first}");
        c.id = first["you"]["id"].as_str().unwrap().to_owned();
        c.name = first["you"]["name"].as_str().unwrap().to_owned();
        c.token = first["token"].as_str().unwrap().to_owned();
        Ok(c)
    }

    /// A new user named `name`, welcomed and put into the lobby.
    pub fn new(server: &impl Target, name: &str) -> C {
        let mut c = C::try_connect(server, &format!("name={name}")).expect("welcome");
        c.expect_joined("lobby");
        c
    }

    /// The next message is the `joined` state of `room`; returns it.
    pub fn expect_joined(&mut self, room: &str) -> Value {
        let v = self.recv();
        assert_eq!(
            (v["type"].as_str(), v["room"].as_str()),
            (Some("joined"), Some(room)),
            "{v}"
        );
        v
    }

    /// Another connection (tab) of this user.
    pub fn tab(&self, server: &impl Target) -> C {
        C::try_connect(server, &format!("name={}&token={}", self.name, self.token))
            .expect("welcome")
    }

    pub fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).expect("send");
    }

    pub fn recv_full(&mut self) -> Value {
        let text = next_text(&mut self.ws);
        let v: Value = serde_json::from_str(&text).expect("server sent JSON");
        let seq = v["seq"].as_u64().expect("every message has a seq");
        if self.increasing_seq {
            assert!(seq > self.seq, "seq went from {} to {seq}: {v}", self.seq);
        }
        self.seq = seq;
        v
    }

    /// The next message without `ts` and `seq`.
    pub fn recv(&mut self) -> Value {
        strip(self.recv_full())
    }

    /// The next message must be a close frame; returns its code.
    pub fn expect_close(&mut self) -> u16 {
        match next_data(&mut self.ws) {
            Message::Close(Some(frame)) => u16::from(frame.code),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    pub fn me(&self) -> Value {
        json!({ "id": self.id, "name": self.name })
    }

    /// Joins (or re-reads) a room; returns the `joined` state.
    pub fn join(&mut self, room: &str) -> Value {
        self.send(json!({ "type": "join", "room": room }));
        let v = self.recv();
        assert_eq!(v["type"], "joined", "{v}");
        v
    }

    pub fn say(&mut self, room: &str, text: &str) {
        self.send(json!({ "type": "say", "room": room, "text": text }));
    }

    /// Sends `request` and expects an error with `code`.
    pub fn expect_error(&mut self, request: Value, code: &str) {
        self.send(request.clone());
        self.expect_error_reply(code, &request.to_string());
    }

    pub fn expect_error_reply(&mut self, code: &str, what: &str) {
        let v = self.recv();
        assert_eq!(v["type"], "error", "{what}: {v}");
        assert_eq!(v["code"], code, "{what}: {v}");
        assert_eq!(v["from"], "server");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }

    pub fn close(mut self) {
        let _ = self.ws.close(None);
        // Read until the server's close reply (or the end), so the close is finished.
        while let Ok(m) = self.ws.read() {
            if m.is_close() {
                break;
            }
        }
    }
}

pub fn message(from: &C, room: &str, text: &str) -> Value {
    json!({ "type": "message", "from": from.me(), "room": room, "text": text })
}

pub fn presence(from: &C, event: &str, room: &str) -> Value {
    json!({ "type": "presence", "from": from.me(), "event": event, "room": room })
}

/// A plain HTTP exchange on a connection of its own: (status, head, body).
pub fn http(
    server: &impl Target,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n\
         {headers}\r\n{body}",
        server.addr(),
        body.len()
    );
    let response = raw_exchange(server.addr(), request.as_bytes());
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, head.to_owned(), body.to_owned())
}

pub fn push(server: &impl Target, token: Option<&str>, body: &str) -> (u16, Value) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let headers = format!("{auth}Content-Type: application/json\r\n");
    let (status, _, body) = http(server, "POST", "/push", &headers, body);
    (status, serde_json::from_str(&body).expect("JSON answer"))
}

impl C {
    /// The next message (without `ts` and `seq`) if one comes within `wait`, else `None`:
    /// "nothing more arrived". A read timeout leaves the socket usable.
    pub fn recv_within(&mut self, wait: std::time::Duration) -> Option<Value> {
        set_timeouts(&self.ws, wait);
        let got = loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    let v: Value = serde_json::from_str(&text).expect("server sent JSON");
                    let seq = v["seq"].as_u64().expect("every message has a seq");
                    if self.increasing_seq {
                        assert!(seq > self.seq, "seq went from {} to {seq}: {v}", self.seq);
                    }
                    self.seq = seq;
                    break Some(strip(v));
                }
                Ok(Message::Close(frame)) => panic!("closed: {frame:?}"),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break None;
                }
                Err(e) => panic!("read: {e}"),
            }
        };
        set_timeouts(&self.ws, IO_TIMEOUT);
        got
    }
}
