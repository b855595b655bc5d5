//! The chat example's protocol, end to end: the chat from `examples/chat/chat.rs` on a test
//! server (one loop; `tests/chat_cluster.rs` runs it on two), real tungstenite clients
//! (`chat_client::C`) and raw HTTP on loopback. Every read has a timeout
//! (common::IO_TIMEOUT), so a missing message fails a test instead of hanging it.
//!
//! "Nothing else arrived" is checked with a fence: after the step under test, a message
//! everyone can see is sent, and it must be the very next thing each client reads.

mod common;

#[path = "../examples/chat/chat.rs"]
#[allow(dead_code)]
mod chat;
mod chat_client;

use std::time::Duration;

use chat::{Chat, Options, close};
use chat_client::*;
use common::*;
use serde_json::{Value, json};
use tungstenite::Message;

type Server = TestServer<Chat>;

/// Test options: no grace period, no pushed room counts (they arrive on a timer), so every
/// exchange is deterministic. Tests that need those turn them on.
fn opts() -> Options {
    Options {
        offline_grace: Duration::ZERO,
        room_counts_interval: Duration::ZERO,
        ..Options::default()
    }
}

fn chat(opts: Options) -> Server {
    start(chat::config(), Chat::new(opts))
}

// ----- joining -----

#[test]
fn welcome_then_lobby_state() {
    let server = chat(opts());
    let mut ann = C::try_connect(&server, "name=ann").unwrap();
    assert_eq!(ann.id.len(), 16, "id is 8 random bytes in hex");
    assert_eq!(ann.token.len(), 32, "token is 16 random bytes in hex");
    assert!(
        ann.id
            .chars()
            .chain(ann.token.chars())
            .all(|c| c.is_ascii_hexdigit())
    );
    // Into the lobby, right after the welcome.
    let state = json!({ "type": "joined", "from": "server", "room": "lobby",
                        "members": [ann.me()], "history": [] });
    assert_eq!(ann.recv(), state);
    // Asking again gives the state again (a page does, for every room in its welcome).
    assert_eq!(ann.join("lobby"), state);
    // A fresh connection sees the whole welcome.
    let mut raw = connect(&server.url("/ws?name=bob"));
    let welcome: Value = serde_json::from_str(&next_text(&mut raw)).unwrap();
    let welcome = strip(welcome);
    let instance = welcome["instance"].as_str().unwrap();
    assert_eq!(instance.len(), 8);
    assert_eq!(
        welcome,
        json!({
            "type": "welcome", "from": "server",
            "you": { "id": welcome["you"]["id"], "name": "bob" },
            "token": welcome["token"],
            "rooms": [],
            "instance": instance,
            "loop": 0,
            "limits": { "history": 50, "text_chars": 1000, "name_chars": 32,
                        "rooms_per_user": 10, "burst": 20.0, "per_second": 5.0 },
        })
    );
    // ann sees bob arrive in the lobby.
    let bob_ref = welcome["you"].clone();
    assert_eq!(
        ann.recv(),
        json!({ "type": "presence", "from": bob_ref, "event": "join", "room": "lobby" })
    );
}

#[test]
fn names_are_percent_decoded_and_trimmed() {
    let server = chat(opts());
    let c = C::new(&server, "J%C3%BCrgen+M%C3%BCller+");
    assert_eq!(c.name, "Jürgen Müller");
    let c2 = C::new(&server, "%3Cb%3Ebold%3C%2Fb%3E");
    assert_eq!(
        c2.name, "<b>bold</b>",
        "names are text, any printable character"
    );
}

#[test]
fn names_are_unique_among_present_users_case_insensitively() {
    let server = chat(opts());
    let ann = C::new(&server, "Ann");
    for taken in ["Ann", "ann", "ANN", "%20ann%20"] {
        let (err, code) = C::try_connect(&server, &format!("name={taken}"))
            .err()
            .expect(taken);
        assert_eq!(err["type"], "error");
        assert_eq!(err["code"], "name_taken", "{taken}");
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .ends_with("is taken: pick another name"),
            "{err}"
        );
        assert_eq!(code, close::NAME_TAKEN);
    }
    // Gone (no grace here), the name is free again, for a different user.
    let ann_id = ann.id.clone();
    ann.close();
    let again = wait_for_name(&server, "ANN");
    assert_ne!(again.id, ann_id);
}

/// Connects as `name` once the previous holder is gone (its on_close runs after the close
/// handshake, so a reconnect may briefly still find the name taken).
fn wait_for_name(server: &Server, name: &str) -> C {
    let mut result = None;
    assert!(wait_until(IO_TIMEOUT, || {
        match C::try_connect(server, &format!("name={name}")) {
            Ok(c) => {
                result = Some(c);
                true
            }
            Err((e, _)) => {
                assert_eq!(e["code"], "name_taken");
                false
            }
        }
    }));
    result.unwrap()
}

#[test]
fn invalid_names_are_refused_with_4001() {
    let server = chat(opts());
    let long = format!("name={}", "x".repeat(33));
    for query in [
        "",
        "name=",
        "name=+++",
        "name=a%07b",
        "name=tab%09in",
        "name=%ZZ",
        "name=%FF",
        "nom=ann",
        long.as_str(),
    ] {
        let (err, code) = C::try_connect(&server, query).err().expect(query);
        assert_eq!(err["code"], "invalid_name", "{query}: {err}");
        assert_eq!(code, close::INVALID_NAME, "{query}");
    }
    // 32 characters (of several bytes each) is fine.
    let name = "é".repeat(32);
    assert_eq!(C::new(&server, &name).name, name);
}

#[test]
fn a_token_brings_back_the_same_identity() {
    let server = chat(opts());
    let ann = C::new(&server, "ann");
    let (id, token) = (ann.id.clone(), ann.token.clone());
    ann.close();
    let mut back = None;
    assert!(wait_until(IO_TIMEOUT, || {
        match C::try_connect(&server, &format!("name=annie&token={token}")) {
            Ok(c) => {
                back = Some(c);
                true
            }
            Err(_) => false,
        }
    }));
    let back = back.unwrap();
    assert_eq!(
        (back.id.as_str(), back.name.as_str(), back.token.as_str()),
        (id.as_str(), "annie", token.as_str())
    );
    // An unknown token is ignored: a new identity.
    let stranger =
        C::try_connect(&server, "name=zed&token=00000000000000000000000000000000").unwrap();
    assert_ne!(stranger.token, "00000000000000000000000000000000");
}

#[test]
fn a_user_has_a_bounded_number_of_connections() {
    let server = chat(Options {
        max_connections_per_user: 2,
        ..opts()
    });
    let ann = C::new(&server, "ann");
    let _tab = ann.tab(&server);
    let (err, code) = C::try_connect(&server, &format!("name=ann&token={}", ann.token))
        .err()
        .unwrap();
    assert_eq!(err["code"], "too_many_connections");
    assert_eq!(code, close::TOO_MANY_CONNECTIONS);
}

// ----- rooms -----

#[test]
fn two_users_in_two_rooms_hear_only_their_rooms() {
    let server = chat(opts());
    let mut ann = C::new(&server, "ann");
    let mut bob = C::new(&server, "bob");
    assert_eq!(ann.recv(), presence(&bob, "join", "lobby"));

    assert_eq!(
        ann.join("Rust"),
        json!({ "type": "joined", "from": "server", "room": "rust", "members": [ann.me()], "history": [] }),
        "room names are case-insensitive: lower-cased"
    );
    assert_eq!(
        bob.join("go"),
        json!({ "type": "joined", "from": "server", "room": "go", "members": [bob.me()], "history": [] })
    );
    ann.say("rust", "borrowck says hi");
    assert_eq!(ann.recv(), message(&ann, "rust", "borrowck says hi"));
    bob.say("go", "gopher here");
    assert_eq!(bob.recv(), message(&bob, "go", "gopher here"));
    // Both in the lobby: both hear it, in the order sent, and nothing before it.
    ann.say("lobby", "one");
    bob.say("lobby", "two");
    for c in [&mut ann, &mut bob] {
        let first = c.recv();
        let second = c.recv();
        let texts = [first["text"].clone(), second["text"].clone()];
        assert!(
            texts == ["one", "two"] || texts == ["two", "one"],
            "{texts:?}"
        );
        assert_eq!(first["room"], "lobby");
        assert_eq!(second["room"], "lobby");
    }
    // ann cannot talk into go without joining it.
    ann.expect_error(
        json!({ "type": "say", "room": "go", "text": "hi" }),
        "not_in_room",
    );
    // Joining it: bob sees ann arrive, ann gets the state with bob's message.
    let state = ann.join("go");
    assert_eq!(
        state,
        json!({ "type": "joined", "from": "server", "room": "go",
                "members": [ann.me(), bob.me()],
                "history": [message(&bob, "go", "gopher here")] })
    );
    assert_eq!(bob.recv(), presence(&ann, "join", "go"));
    ann.say("go", "hello gophers");
    assert_eq!(ann.recv(), message(&ann, "go", "hello gophers"));
    assert_eq!(bob.recv(), message(&ann, "go", "hello gophers"));
}

#[test]
fn leaving_a_room_tells_the_members_and_stops_delivery() {
    let server = chat(opts());
    let mut ann = C::new(&server, "ann");
    let mut bob = C::new(&server, "bob");
    assert_eq!(ann.recv(), presence(&bob, "join", "lobby"));
    ann.join("rust");
    bob.join("rust");
    assert_eq!(ann.recv(), presence(&bob, "join", "rust"));

    bob.send(json!({ "type": "leave", "room": "rust" }));
    assert_eq!(
        bob.recv(),
        json!({ "type": "left", "from": "server", "room": "rust" })
    );
    assert_eq!(ann.recv(), presence(&bob, "leave", "rust"));
    ann.say("rust", "anyone?");
    assert_eq!(ann.recv(), message(&ann, "rust", "anyone?"));
    // Fence: bob's next message is the lobby one, not the rust one.
    ann.say("lobby", "fence");
    assert_eq!(bob.recv(), message(&ann, "lobby", "fence"));
    assert_eq!(ann.recv(), message(&ann, "lobby", "fence"));
    bob.expect_error(json!({ "type": "leave", "room": "rust" }), "not_in_room");
    bob.expect_error(
        json!({ "type": "leave", "room": "nowhere" }),
        "unknown_room",
    );

    // Disconnecting (no grace period here) leaves every room.
    let bob_ref = bob.me();
    bob.close();
    assert_eq!(
        ann.recv(),
        json!({ "type": "presence", "from": bob_ref, "event": "leave", "room": "lobby" })
    );
}

#[test]
fn list_rooms_gives_every_room_with_its_member_count() {
    let server = chat(opts());
    let mut ann = C::new(&server, "ann");
    let mut bob = C::new(&server, "bob");
    ann.recv();
    ann.join("rust");
    ann.join("zig");
    bob.join("rust");
    ann.recv(); // bob joined rust
    ann.send(json!({ "type": "leave", "room": "zig" }));
    ann.recv(); // left
    bob.send(json!({ "type": "list_rooms" }));
    assert_eq!(
        bob.recv(),
        json!({ "type": "rooms", "from": "server", "rooms": [
            { "name": "lobby", "members": 2 },
            { "name": "rust", "members": 2 },
            { "name": "zig", "members": 0 },
        ]})
    );
}

#[test]
fn room_counts_are_pushed_coalesced() {
    let server = chat(Options {
        room_counts_interval: Duration::from_millis(50),
        ..opts()
    });
    let mut ann = C::new(&server, "ann");
    let mut bob = C::new(&server, "bob");
    bob.join("rust");
    // ann gets presence (bob in lobby) and, on the timer, room_counts with what changed;
    // the first may still be from before bob. Read until the counts show bob everywhere.
    let mut counts = std::collections::BTreeMap::new();
    let mut pushes = 0;
    while counts.get("lobby") != Some(&2) || counts.get("rust") != Some(&1) {
        let v = ann.recv();
        if v["type"] == "room_counts" {
            pushes += 1;
            assert_eq!(v["from"], "server");
            for r in v["rooms"].as_array().unwrap() {
                counts.insert(
                    r["name"].as_str().unwrap().to_owned(),
                    r["members"].as_u64().unwrap(),
                );
            }
        } else {
            assert_eq!(v, presence(&bob, "join", "lobby"));
        }
    }
    assert!(pushes <= 3, "coalesced: {pushes} room_counts for 3 changes");
}

#[test]
fn history_is_sent_on_joining_bounded_to_n() {
    let server = chat(Options {
        history: 3,
        ..opts()
    });
    let mut ann = C::new(&server, "ann");
    for i in 1..=5 {
        ann.say("lobby", &format!("m{i}"));
        assert_eq!(ann.recv()["text"], format!("m{i}"));
    }
    let mut bob = C::new(&server, "bob");
    let state = bob.join("lobby");
    let history = state["history"].as_array().unwrap();
    assert_eq!(
        history,
        &[
            message(&ann, "lobby", "m3"),
            message(&ann, "lobby", "m4"),
            message(&ann, "lobby", "m5")
        ]
    );
    // Items keep their original seq (and ts), increasing, below the joined frame's seq.
    let full = {
        bob.send(json!({ "type": "join", "room": "lobby" }));
        bob.recv_full()
    };
    let seqs: Vec<u64> = full["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]) && seqs[2] < full["seq"].as_u64().unwrap(),
        "{seqs:?}"
    );
}

#[test]
fn a_reconnecting_user_sees_what_it_missed() {
    let server = chat(opts());
    let mut ann = C::new(&server, "ann");
    let mut bob = C::new(&server, "bob");
    ann.recv();
    ann.join("rust");
    bob.join("rust");
    ann.recv();
    let token = bob.token.clone();
    bob.close();
    assert_eq!(ann.recv()["event"], "leave");
    assert_eq!(ann.recv()["event"], "leave");
    ann.say("rust", "while you were out");
    ann.recv();
    let mut bob = C::try_connect(&server, &format!("name=bob&token={token}")).unwrap();
    // Offline past the grace period: back in the lobby only; the page rejoins rust.
    bob.expect_joined("lobby");
    let state = bob.join("rust");
    assert_eq!(
        state["history"],
        json!([message(&ann, "rust", "while you were out")])
    );
}

#[test]
fn the_grace_period_hides_a_reload_from_the_others() {
    let server = chat(Options {
        offline_grace: Duration::from_millis(1500),
        ..opts()
    });
    let mut ann = C::new(&server, "ann");
    let mut bob = C::new(&server, "bob");
    ann.recv();
    bob.join("rust");
    let token = bob.token.clone();
    let bob_ref = bob.me();
    bob.close();
    // A reload: back within the grace period, still in rust, same name; nobody saw a leave.
    let mut bob = C::try_connect(&server, &format!("name=whatever&token={token}")).unwrap();
    assert_eq!(bob.me(), bob_ref);
    ann.say("lobby", "fence");
    assert_eq!(ann.recv(), message(&ann, "lobby", "fence"));
    assert_eq!(bob.recv(), message(&ann, "lobby", "fence"));
    // The name stays taken while bob is present.
    let (err, _) = C::try_connect(&server, "name=bob").err().unwrap();
    assert_eq!(err["code"], "name_taken");
    // Gone for good: the others see bob leave once the grace period is over.
    bob.close();
    let start = std::time::Instant::now();
    assert_eq!(
        ann.recv(),
        json!({ "type": "presence", "from": bob_ref, "event": "leave", "room": "lobby" })
    );
    assert!(
        start.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        start.elapsed()
    );
}

// ----- private messages -----

#[test]
fn private_messages_reach_every_tab_of_both_users() {
    let server = chat(opts());
    let mut ann1 = C::new(&server, "ann");
    let mut ann2 = ann1.tab(&server);
    let mut bob = C::new(&server, "bob");
    assert_eq!(ann1.recv(), presence(&bob, "join", "lobby"));
    assert_eq!(ann2.recv(), presence(&bob, "join", "lobby"));

    // By name, case-insensitively.
    bob.send(json!({ "type": "dm", "to": "ANN", "text": "psst" }));
    let dm = json!({ "type": "dm", "from": bob.me(), "to": ann1.me(), "text": "psst" });
    assert_eq!(ann1.recv(), dm);
    assert_eq!(ann2.recv(), dm);
    assert_eq!(bob.recv(), dm, "echoed to the sender");
    // By id, from one tab: the other tab gets the echo.
    ann1.send(json!({ "type": "dm", "to": bob.id, "text": "hi bob" }));
    let dm = json!({ "type": "dm", "from": ann1.me(), "to": bob.me(), "text": "hi bob" });
    assert_eq!(bob.recv(), dm);
    assert_eq!(ann1.recv(), dm);
    assert_eq!(ann2.recv(), dm);

    // Errors: nobody by that name or id; a user who is gone.
    bob.expect_error(
        json!({ "type": "dm", "to": "carol", "text": "?" }),
        "unknown_user",
    );
    bob.expect_error(
        json!({ "type": "dm", "to": "0123456789abcdef", "text": "?" }),
        "unknown_user",
    );
    let carol = C::new(&server, "carol");
    let carol_id = carol.id.clone();
    for c in [&mut ann1, &mut ann2, &mut bob] {
        assert_eq!(c.recv()["event"], "join");
    }
    carol.close();
    for c in [&mut ann1, &mut ann2, &mut bob] {
        assert_eq!(c.recv()["event"], "leave");
    }
    bob.expect_error(
        json!({ "type": "dm", "to": carol_id, "text": "?" }),
        "user_offline",
    );
}

#[test]
fn a_users_tabs_share_its_rooms() {
    let server = chat(opts());
    let mut tab1 = C::new(&server, "ann");
    let mut tab2 = tab1.tab(&server);
    // tab2 joins: both tabs get the room's state.
    let state = tab2.join("rust");
    assert_eq!(tab1.recv(), state);
    tab1.say("rust", "from tab 1");
    assert_eq!(tab1.recv(), message(&tab1, "rust", "from tab 1"));
    assert_eq!(tab2.recv(), message(&tab1, "rust", "from tab 1"));
    // A third tab is told about both rooms in its welcome.
    let mut raw = connect(&server.url(&format!("/ws?token={}", tab1.token)));
    let welcome: Value = serde_json::from_str(&next_text(&mut raw)).unwrap();
    assert_eq!(welcome["rooms"], json!(["lobby", "rust"]));
    assert_eq!(
        welcome["you"],
        tab1.me(),
        "a tab needs no name, the token says who"
    );
    // Closing one tab changes nothing for the others.
    tab2.close();
    tab1.say("rust", "still here");
    assert_eq!(tab1.recv(), message(&tab1, "rust", "still here"));
}

// ----- signing out -----

#[test]
fn sign_out_releases_the_user_at_once() {
    // A long grace period: closing the last tab would keep the name for 30 s; signing out
    // must not.
    let server = chat(Options {
        offline_grace: Duration::from_secs(30),
        ..opts()
    });
    let mut ann1 = C::new(&server, "ann");
    let mut ann2 = ann1.tab(&server);
    let mut bob = C::new(&server, "bob");
    assert_eq!(ann1.recv(), presence(&bob, "join", "lobby"));
    assert_eq!(ann2.recv(), presence(&bob, "join", "lobby"));
    let state = ann1.join("rust");
    assert_eq!(ann2.recv(), state);
    bob.join("rust");
    assert_eq!(ann1.recv(), presence(&bob, "join", "rust"));
    assert_eq!(ann2.recv(), presence(&bob, "join", "rust"));
    let (old_ref, old_id, old_token) = (ann1.me(), ann1.id.clone(), ann1.token.clone());

    // Extra fields are ignored, as for every message.
    ann1.send(json!({ "type": "sign_out", "reason": "bye" }));
    // Every tab of ann is closed with 4000, and gets nothing before the close.
    assert_eq!(ann1.expect_close(), close::SIGNED_OUT);
    assert_eq!(ann2.expect_close(), close::SIGNED_OUT);
    // The others see ann leave each of her rooms (her rooms are in name order), at once.
    let leave = |room: &str| json!({ "type": "presence", "from": old_ref.clone(), "event": "leave", "room": room });
    assert_eq!(bob.recv(), leave("lobby"));
    assert_eq!(bob.recv(), leave("rust"));
    // Nobody by that name or id is here now.
    bob.expect_error(
        json!({ "type": "dm", "to": old_id, "text": "?" }),
        "unknown_user",
    );
    bob.expect_error(
        json!({ "type": "dm", "to": "ann", "text": "?" }),
        "unknown_user",
    );

    // The name is free at once (no waiting): a new user, with a new id and token.
    let mut again = C::try_connect(&server, "name=ANN").expect("the name is free at once");
    assert_ne!(again.id, old_id);
    assert_ne!(again.token, old_token);
    assert_eq!(
        again.recv(),
        json!({ "type": "joined", "from": "server", "room": "lobby",
                "members": [again.me(), bob.me()], "history": [] })
    );
    assert_eq!(bob.recv(), presence(&again, "join", "lobby"));
    // The old token is no longer valid: it does not bring ann's identity back, it is
    // ignored like any unknown token (a new user, here under another name).
    let stranger = C::try_connect(&server, &format!("name=annie&token={old_token}"))
        .expect("welcome as a new user");
    assert_ne!(stranger.id, old_id);
    assert_ne!(stranger.token, old_token);
    assert_eq!(bob.recv()["event"], "join");
    // Fence: nothing else reached bob in between.
    again.say("lobby", "fence");
    assert_eq!(bob.recv(), message(&again, "lobby", "fence"));

    let (_, _, body) = http(&server, "GET", "/stats", "", "");
    let stats: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["chat"]["sign_outs"], 1);
    assert_eq!(
        stats["chat"]["users_known"], 3,
        "bob, the new ann and annie: the old ann is forgotten"
    );
}

#[test]
fn a_signed_out_tab_is_nobody() {
    // What a tab sends after its user signed out (before its close completes) reaches no
    // room and gets no answer: the user is gone, and the server carries on.
    let server = chat(opts());
    let mut ann1 = C::new(&server, "ann");
    let mut ann2 = ann1.tab(&server);
    let mut bob = C::new(&server, "bob");
    ann1.recv();
    ann2.recv();
    // Sign out, then at once something more, before the close arrives.
    ann2.send(json!({ "type": "sign_out" }));
    ann2.say("lobby", "after signing out");
    assert_eq!(ann2.expect_close(), close::SIGNED_OUT);
    assert_eq!(ann1.expect_close(), close::SIGNED_OUT);
    assert_eq!(bob.recv()["event"], "leave");
    bob.say("lobby", "fence");
    assert_eq!(bob.recv(), message(&bob, "lobby", "fence"));
}

// ----- errors -----

#[test]
fn every_bad_request_gets_a_specific_error_and_the_connection_stays() {
    let server = chat(Options {
        max_errors: 1000,
        burst: 1000.0,
        max_rooms_per_user: 3,
        ..opts()
    });
    let mut ann = C::new(&server, "ann");
    let cases: Vec<(&str, &str)> = vec![
        ("hello", "bad_json"),
        ("{\"type\":", "bad_json"),
        ("[1,2]", "bad_json"),
        ("\"say\"", "bad_json"),
        ("{}", "missing_field"),
        ("{\"type\":null}", "missing_field"),
        ("{\"type\":7}", "bad_field"),
        ("{\"type\":\"shout\"}", "unknown_type"),
        ("{\"type\":\"say\",\"text\":\"hi\"}", "missing_field"),
        ("{\"type\":\"say\",\"room\":\"lobby\"}", "missing_field"),
        (
            "{\"type\":\"say\",\"room\":\"lobby\",\"text\":42}",
            "bad_field",
        ),
        (
            "{\"type\":\"say\",\"room\":\"lobby\",\"text\":\"\"}",
            "empty_text",
        ),
        (
            "{\"type\":\"say\",\"room\":\"lobby\",\"text\":\" \\n\\t \"}",
            "empty_text",
        ),
        (
            "{\"type\":\"say\",\"room\":\"no spaces\",\"text\":\"x\"}",
            "invalid_room",
        ),
        (
            "{\"type\":\"say\",\"room\":\"\",\"text\":\"x\"}",
            "invalid_room",
        ),
        ("{\"type\":\"join\",\"room\":\"<script>\"}", "invalid_room"),
        (
            "{\"type\":\"say\",\"room\":\"nowhere\",\"text\":\"x\"}",
            "unknown_room",
        ),
        ("{\"type\":\"dm\",\"text\":\"x\"}", "missing_field"),
        (
            "{\"type\":\"dm\",\"to\":\"nobody\",\"text\":\"x\"}",
            "unknown_user",
        ),
        ("{\"type\":\"leave\"}", "missing_field"),
    ];
    for (raw, code) in &cases {
        ann.ws.send(Message::text(*raw)).unwrap();
        ann.expect_error_reply(code, raw);
    }
    let long = "é".repeat(1001);
    ann.expect_error(
        json!({ "type": "say", "room": "lobby", "text": long }),
        "text_too_long",
    );
    let room_name = "r".repeat(33);
    ann.expect_error(json!({ "type": "join", "room": room_name }), "invalid_room");
    // Exactly the limit is fine.
    ann.say("lobby", &"é".repeat(1000));
    assert_eq!(ann.recv()["type"], "message");
    ann.ws.send(Message::binary(vec![1, 2, 3])).unwrap();
    ann.expect_error_reply("binary_not_supported", "binary");
    // Rooms per user (lobby + 2).
    ann.join("a");
    ann.join("b");
    ann.expect_error(json!({ "type": "join", "room": "c" }), "room_limit");
    // Still connected and working.
    ann.say("lobby", "still here");
    assert_eq!(ann.recv(), message(&ann, "lobby", "still here"));
}

#[test]
fn a_full_server_is_an_error_and_rooms_have_no_member_cap() {
    let server = chat(Options {
        max_rooms: 3,
        ..opts()
    });
    // No member cap: strangers cannot lock a room by filling it.
    let crowd: Vec<C> = (0..20).map(|i| C::new(&server, &format!("u{i}"))).collect();
    let mut ann = C::new(&server, "ann");
    let mut bob = C::new(&server, "bob");
    assert_eq!(ann.recv(), presence(&bob, "join", "lobby"));
    ann.join("x");
    bob.join("y");
    // Three rooms, none empty: no fourth.
    bob.expect_error(json!({ "type": "join", "room": "z" }), "too_many_rooms");
    // Once one is empty, a new room takes its place.
    ann.send(json!({ "type": "leave", "room": "x" }));
    assert_eq!(ann.recv()["type"], "left");
    let state = bob.join("z");
    assert_eq!(state["members"], json!([bob.me()]));
    bob.send(json!({ "type": "list_rooms" }));
    let rooms = bob.recv()["rooms"].clone();
    assert_eq!(
        rooms,
        json!([{ "name": "lobby", "members": 22 }, { "name": "y", "members": 1 }, { "name": "z", "members": 1 }])
    );
    drop(crowd);
}

#[test]
fn users_per_address_are_bounded() {
    let server = chat(Options {
        max_users_per_addr: 2,
        ..opts()
    });
    let ann = C::new(&server, "ann");
    let bob = C::new(&server, "bob");
    // A third user from 127.0.0.1 is refused; a tab of a present user is not a new user.
    let refused = C::try_connect(&server, "name=cleo").err().expect("refused");
    assert_eq!(refused.0["code"], "too_many_users");
    assert_eq!(refused.1, close::TOO_MANY_USERS);
    let tab = ann.tab(&server);
    // Once one is gone, another may come.
    bob.close();
    let mut cleo = wait_for_name(&server, "cleo");
    cleo.expect_joined("lobby");
    drop((ann, tab));
}

#[test]
fn names_with_invisible_characters_are_refused() {
    let server = chat(opts());
    let _ann = C::new(&server, "ann");
    // A zero-width space beside "ann", a name of only one, a right-to-left override, a line
    // separator, a soft hyphen: none of them is a name anyone could tell apart.
    for name in [
        "ann%E2%80%8B",
        "%E2%80%8B",
        "%E2%80%AEnna",
        "a%E2%80%A8b",
        "an%C2%ADn",
    ] {
        let (error, code) = C::try_connect(&server, &format!("name={name}"))
            .err()
            .unwrap_or_else(|| panic!("{name} accepted"));
        assert_eq!(error["code"], "invalid_name", "{name}");
        assert_eq!(code, close::INVALID_NAME, "{name}");
    }
    // Letters and marks of any script are fine.
    let _ = C::new(&server, "J%C3%BCrgen");
    let _ = C::new(&server, "%E6%9D%8E");
}

#[test]
fn push_refuses_other_sites_and_bodies_that_are_not_json() {
    let server = chat(Options {
        push_token: None,
        ..opts()
    });
    let body = r#"{"all": true, "text": "hi"}"#;
    // What a page of another site could send without a preflight: refused.
    let (status, _, answer) = http(
        &server,
        "POST",
        "/push",
        "Content-Type: text/plain\r\n",
        body,
    );
    assert_eq!(status, 415, "{answer}");
    assert!(answer.contains("unsupported_media_type"), "{answer}");
    let (status, _, answer) = http(
        &server,
        "POST",
        "/push",
        "Origin: http://evil.example\r\nContent-Type: application/json\r\n",
        body,
    );
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("cross_origin"), "{answer}");
    // From the chat's own page, or from a program (no Origin): accepted.
    let own = format!(
        "Origin: http://{}\r\nContent-Type: application/json; charset=utf-8\r\n",
        server.addr
    );
    let (status, _, answer) = http(&server, "POST", "/push", &own, body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(push(&server, None, body).0, 200);
}

#[test]
fn the_auth_scheme_is_case_insensitive() {
    let server = chat(Options {
        push_token: Some("s3cret".into()),
        ..opts()
    });
    let body = r#"{"all": true, "text": "hi"}"#;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let headers =
            format!("Authorization: {scheme} s3cret\r\nContent-Type: application/json\r\n");
        let (status, _, answer) = http(&server, "POST", "/push", &headers, body);
        assert_eq!(status, 200, "{scheme}: {answer}");
    }
    let headers = "Authorization: Basic s3cret\r\nContent-Type: application/json\r\n";
    assert_eq!(http(&server, "POST", "/push", headers, body).0, 401);
}

/// `room_counts` a listener gets in 1.5 s while another user joins and leaves rooms as fast
/// as it may, with the given budget; and the most rooms one of them listed.
fn room_counts_under_churn(budget: usize) -> (usize, usize) {
    let server = chat(Options {
        room_counts_interval: Duration::from_millis(50),
        room_counts_budget: budget,
        max_rooms_per_user: 200,
        burst: 10_000.0,
        per_second: 10_000.0,
        ..opts()
    });
    let mut listener = C::new(&server, "ann");
    let others: Vec<C> = (0..9).map(|i| C::new(&server, &format!("l{i}"))).collect();
    let mut churn = C::new(&server, "churn");
    // 150 new rooms at once, then joins and leaves all along.
    for i in 0..150 {
        churn.send(json!({ "type": "join", "room": format!("r{i}") }));
    }
    set_timeouts(&listener.ws, Duration::from_millis(20));
    let started = std::time::Instant::now();
    let (mut messages, mut most_rooms) = (0, 0);
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(1_500) {
        let kind = if i % 2 == 0 { "leave" } else { "join" };
        churn.send(json!({ "type": kind, "room": format!("r{}", (i / 2) % 150) }));
        i += 1;
        while let Ok(Message::Text(text)) = listener.ws.read() {
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["type"] == "room_counts" {
                messages += 1;
                most_rooms = most_rooms.max(v["rooms"].as_array().unwrap().len());
            }
        }
    }
    drop(others);
    (messages, most_rooms)
}

#[test]
fn room_counts_stay_within_their_budget_whatever_the_churn() {
    // Eleven listeners and a budget of 22 deliveries/s: one room_counts per 0.5 s at most,
    // though the interval asks for 50 ms; at most 100 rooms per message.
    let (bounded, most_rooms) = room_counts_under_churn(22);
    assert!((1..=4).contains(&bounded), "{bounded} room_counts in 1.5 s");
    assert_eq!(most_rooms, chat::ROOM_COUNTS_ROOMS);
    // The same churn with no real budget: one per 50 ms.
    let (unbounded, _) = room_counts_under_churn(1_000_000);
    assert!(unbounded >= 10, "{unbounded} room_counts in 1.5 s");
}

#[test]
fn too_many_errors_close_with_4008() {
    let server = chat(Options {
        max_errors: 3,
        ..opts()
    });
    let mut ann = C::new(&server, "ann");
    for _ in 0..4 {
        ann.ws.send(Message::text("nonsense")).unwrap();
    }
    for _ in 0..4 {
        ann.expect_error_reply("bad_json", "nonsense");
    }
    assert_eq!(ann.expect_close(), close::TOO_MANY_ERRORS);
    // Stats count it.
    let (_, _, body) = http(&server, "GET", "/stats", "", "");
    let stats: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["chat"]["abuse_closes"], 1);
}

#[test]
fn flooding_closes_with_4029() {
    // No refill: exactly `burst` messages pass.
    let server = chat(Options {
        burst: 5.0,
        per_second: 0.0,
        max_errors: 3,
        ..opts()
    });
    let mut ann = C::new(&server, "ann");
    for i in 0..9 {
        ann.say("lobby", &format!("{i}"));
    }
    for i in 0..5 {
        assert_eq!(ann.recv(), message(&ann, "lobby", &format!("{i}")));
    }
    for _ in 0..4 {
        ann.expect_error_reply("rate_limited", "flood");
    }
    assert_eq!(ann.expect_close(), close::FLOODING);
}

// ----- HTTP -----

#[test]
fn the_page_and_the_routes() {
    let server = chat(opts());
    let (status, head, body) = http(&server, "GET", "/", "", "");
    assert_eq!(status, 200);
    assert!(
        head.contains("Content-Type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(
        head.contains("Content-Security-Policy: default-src 'none'"),
        "{head}"
    );
    assert_eq!(body, chat::PAGE);
    assert!(body.contains("<title>wshub chat</title>"));
    let (status, _, body) = http(&server, "GET", "/nope", "", "");
    assert_eq!(status, 404);
    assert!(
        body.contains("GET /, /ws, POST /push, GET /stats and GET /metrics"),
        "{body}"
    );
    let (status, head, _) = http(&server, "POST", "/", "", "x");
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET"));
    let (status, head, _) = http(&server, "GET", "/push", "", "");
    assert_eq!(status, 405);
    assert!(head.contains("Allow: POST"));
    let (status, head, _) = http(&server, "POST", "/metrics", "", "");
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET"));
    // /ws without an upgrade: the library's handshake check answers.
    let (status, _, _) = http(&server, "GET", "/ws?name=x", "", "");
    assert_eq!(status, 400);
}

#[test]
fn sockets_from_other_sites_are_refused() {
    let server = chat(opts());
    let host = server.addr.to_string();
    let evil = raw_exchange(
        server.addr,
        upgrade_request("/ws?name=x", "Origin: http://evil.example\r\n").as_bytes(),
    );
    assert_eq!(status_line(&evil), "HTTP/1.1 403 Forbidden");
    // The page's own origin (same host) is fine. (upgrade_request says Host: localhost.)
    let ok = {
        let request = upgrade_request("/ws?name=x", "Origin: http://localhost\r\n");
        let mut s = std::net::TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        std::io::Write::write_all(&mut s, request.as_bytes()).unwrap();
        let mut buf = [0u8; 12];
        std::io::Read::read_exact(&mut s, &mut buf).unwrap();
        buf
    };
    assert_eq!(&ok, b"HTTP/1.1 101", "{host}");
}

#[test]
fn push_to_a_room_a_user_and_everyone() {
    let server = chat(Options {
        push_token: Some("s3cret".into()),
        ..opts()
    });
    let mut ann1 = C::new(&server, "ann");
    let mut ann2 = ann1.tab(&server);
    let mut bob = C::new(&server, "bob");
    ann1.recv();
    ann2.recv();
    bob.join("rust");

    // To a room: its members' connections, and its history.
    let (status, answer) = push(
        &server,
        Some("s3cret"),
        r#"{"room":"lobby","text":"deploy done","from":"ci"}"#,
    );
    assert_eq!(status, 200, "{answer}");
    let seq = answer["seq"].as_u64().unwrap();
    assert_eq!(answer, json!({ "ok": true, "delivered": 3, "seq": seq }));
    let expected = json!({ "type": "push", "from": "server", "sender": "ci", "scope": "room", "room": "lobby", "text": "deploy done" });
    for c in [&mut ann1, &mut ann2, &mut bob] {
        let v = c.recv_full();
        assert_eq!(v["seq"], seq);
        assert_eq!(strip(v), expected);
    }
    let (_, answer) = push(
        &server,
        Some("s3cret"),
        r#"{"room":"rust","text":"rust only"}"#,
    );
    assert_eq!(answer["delivered"], 1);
    assert_eq!(
        bob.recv(),
        json!({ "type": "push", "from": "server", "scope": "room", "room": "rust", "text": "rust only" })
    );
    let state = ann1.join("rust");
    assert_eq!(
        state["history"],
        json!([{ "type": "push", "from": "server", "scope": "room", "room": "rust", "text": "rust only" }])
    );
    ann2.recv(); // the state, on ann's other tab
    bob.recv(); // ann joined rust

    // To a user, by name or id: every tab of that user only.
    let (_, answer) = push(
        &server,
        Some("s3cret"),
        r#"{"user":"ANN","text":"for ann"}"#,
    );
    assert_eq!(answer["delivered"], 2);
    let for_ann = json!({ "type": "push", "from": "server", "scope": "user", "to": ann1.me(), "text": "for ann" });
    assert_eq!(ann1.recv(), for_ann);
    assert_eq!(ann2.recv(), for_ann);
    let (_, answer) = push(
        &server,
        Some("s3cret"),
        &json!({ "user": bob.id, "text": "for bob" }).to_string(),
    );
    assert_eq!(answer["delivered"], 1);
    assert_eq!(bob.recv()["text"], "for bob");

    // To everyone.
    let (_, answer) = push(
        &server,
        Some("s3cret"),
        r#"{"all":true,"text":"maintenance at 5"}"#,
    );
    assert_eq!(answer["delivered"], 3);
    for c in [&mut ann1, &mut ann2, &mut bob] {
        assert_eq!(
            c.recv(),
            json!({ "type": "push", "from": "server", "scope": "all", "text": "maintenance at 5" })
        );
    }

    // Refusals.
    let (status, head, body) = http(&server, "POST", "/push", "", r#"{"all":true,"text":"x"}"#);
    assert_eq!(status, 401);
    assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "unauthorized"
    );
    let (status, answer) = push(&server, Some("wrong"), r#"{"all":true,"text":"x"}"#);
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let long = json!({ "all": true, "text": "x".repeat(1001) }).to_string();
    for (body, status, code) in [
        ("", 400, "bad_json"),
        ("not json", 400, "bad_json"),
        ("[]", 400, "bad_json"),
        (r#"{"room":"lobby"}"#, 400, "missing_field"),
        (r#"{"room":"lobby","text":5}"#, 400, "bad_field"),
        (r#"{"room":"lobby","text":"  "}"#, 400, "empty_text"),
        (long.as_str(), 400, "text_too_long"),
        (r#"{"text":"x"}"#, 400, "bad_target"),
        (
            r#"{"room":"lobby","all":true,"text":"x"}"#,
            400,
            "bad_target",
        ),
        (r#"{"all":false,"text":"x"}"#, 400, "bad_field"),
        (r#"{"all":true,"text":"x","from":""}"#, 400, "bad_field"),
        (r#"{"all":true,"text":"x","from":7}"#, 400, "bad_field"),
        (r#"{"room":"bad room","text":"x"}"#, 400, "invalid_room"),
        (r#"{"room":"nowhere","text":"x"}"#, 404, "unknown_room"),
        (r#"{"user":"nobody","text":"x"}"#, 404, "unknown_user"),
    ] {
        let (got, answer) = push(&server, Some("s3cret"), body);
        assert_eq!(
            (got, answer["error"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
        assert_eq!(answer["ok"], false);
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // None of the refusals reached anyone: the next thing everyone reads is this.
    push(&server, Some("s3cret"), r#"{"all":true,"text":"fence"}"#);
    for c in [&mut ann1, &mut ann2, &mut bob] {
        assert_eq!(c.recv()["text"], "fence");
    }
}

#[test]
fn push_without_a_configured_token_needs_none() {
    let server = chat(opts());
    let mut ann = C::new(&server, "ann");
    let (status, answer) = push(&server, None, r#"{"room":"lobby","text":"hi"}"#);
    assert_eq!((status, answer["delivered"].as_u64()), (200, Some(1)));
    assert_eq!(ann.recv()["text"], "hi");
}

/// ann and bob in the lobby, a room message, a DM, an error, and bob in #rust too.
fn some_traffic(server: &Server) -> (C, C) {
    let mut ann = C::new(server, "ann");
    let mut bob = C::new(server, "bob");
    ann.recv();
    ann.say("lobby", "one");
    ann.recv();
    bob.recv();
    ann.send(json!({ "type": "dm", "to": "bob", "text": "two" }));
    ann.recv();
    bob.recv();
    ann.expect_error(json!({ "type": "nope" }), "unknown_type");
    bob.join("rust");
    (ann, bob)
}

#[test]
fn stats_report_the_server_and_the_chat() {
    let server = chat(opts());
    let _clients = some_traffic(&server);
    http(&server, "GET", "/missing", "", "");
    let (status, head, body) = http(&server, "GET", "/stats", "", "");
    assert_eq!(status, 200);
    assert!(head.contains("Content-Type: application/json"));
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["connections"], 2);
    // One loop, which answered.
    assert_eq!(s["loops"], json!([{ "connections": 2 }]));
    assert_eq!(s["loop"], 0);
    assert_eq!(s["handshakes_accepted"], 2);
    assert_eq!(s["messages_in"], 4, "say, dm, nope, join");
    // (welcome, joined) ×2, presence, message ×2, dm ×2, error, joined
    assert_eq!(s["messages_out"], 11);
    assert_eq!(s["dropped_messages"], 0);
    assert_eq!(s["slow_consumer_closes"], 0);
    assert_eq!(
        s["timeouts"],
        json!({ "handshake": 0, "pong": 0, "close": 0, "write_stall": 0 })
    );
    assert_eq!(s["rejections"]["not_found"], 1);
    assert_eq!(s["rejections"]["total"], 1);
    // signed-in, user:ann, user:bob, room:lobby, room:rust
    assert_eq!(s["topics"], 5);
    assert_eq!(
        s["chat"],
        json!({ "users_online": 2, "users_present": 2, "users_known": 2, "users_created": 2,
                "rooms": 2, "room_messages": 1, "direct_messages": 1, "pushes": 0,
                "errors": 1, "abuse_closes": 0, "sign_outs": 0, "seq": s["chat"]["seq"] })
    );
    // The 11 above, less one sent twice, plus the presence events that nobody was there to
    // receive (ann into the lobby, bob into rust).
    assert_eq!(s["chat"]["seq"], 11);
}

// ----- metrics -----

/// One sample of `GET /metrics`: its name and label, whether it is a counter (else a
/// gauge), and where `/stats` has the same number (a JSON pointer).
struct Metric {
    name: &'static str,
    label: Option<(&'static str, &'static str)>,
    counter: bool,
    stats: &'static str,
}

const fn counter(name: &'static str, stats: &'static str) -> Metric {
    Metric {
        name,
        label: None,
        counter: true,
        stats,
    }
}

const fn gauge(name: &'static str, stats: &'static str) -> Metric {
    Metric {
        name,
        label: None,
        counter: false,
        stats,
    }
}

const fn labelled(
    name: &'static str,
    label: (&'static str, &'static str),
    stats: &'static str,
) -> Metric {
    Metric {
        name,
        label: Some(label),
        counter: true,
        stats,
    }
}

const fn labelled_gauge(
    name: &'static str,
    label: (&'static str, &'static str),
    stats: &'static str,
) -> Metric {
    Metric {
        name,
        label: Some(label),
        counter: false,
        stats,
    }
}

/// Every sample `GET /metrics` has (on one loop).
const METRICS: &[Metric] = &[
    gauge("wshub_open_connections", "/connections"),
    labelled_gauge(
        "wshub_loop_open_connections",
        ("loop", "0"),
        "/loops/0/connections",
    ),
    gauge("wshub_tcp_connections", "/tcp_connections"),
    gauge("wshub_topics", "/topics"),
    counter("wshub_handshakes_accepted_total", "/handshakes_accepted"),
    counter("wshub_http_responses_total", "/http_responses"),
    labelled(
        "wshub_http_rejections_total",
        ("status", "400"),
        "/rejections/bad_request",
    ),
    labelled(
        "wshub_http_rejections_total",
        ("status", "403"),
        "/rejections/forbidden",
    ),
    labelled(
        "wshub_http_rejections_total",
        ("status", "404"),
        "/rejections/not_found",
    ),
    labelled(
        "wshub_http_rejections_total",
        ("status", "405"),
        "/rejections/method_not_allowed",
    ),
    labelled(
        "wshub_http_rejections_total",
        ("status", "408"),
        "/rejections/request_timeout",
    ),
    labelled(
        "wshub_http_rejections_total",
        ("status", "413"),
        "/rejections/content_too_large",
    ),
    labelled(
        "wshub_http_rejections_total",
        ("status", "426"),
        "/rejections/upgrade_required",
    ),
    labelled(
        "wshub_http_rejections_total",
        ("status", "431"),
        "/rejections/header_too_large",
    ),
    labelled(
        "wshub_http_rejections_total",
        ("status", "503"),
        "/rejections/unavailable",
    ),
    labelled(
        "wshub_http_rejections_total",
        ("status", "other"),
        "/rejections/other",
    ),
    counter("wshub_messages_in_total", "/messages_in"),
    counter("wshub_bytes_in_total", "/bytes_in"),
    counter("wshub_messages_out_total", "/messages_out"),
    counter("wshub_bytes_out_total", "/bytes_out"),
    counter("wshub_compressed_out_total", "/compressed_out"),
    counter("wshub_compressions_total", "/compressions"),
    counter("wshub_compress_bytes_in_total", "/compress_bytes_in"),
    counter("wshub_compress_bytes_out_total", "/compress_bytes_out"),
    counter("wshub_inflate_bytes_in_total", "/inflate_bytes_in"),
    counter("wshub_inflate_bytes_out_total", "/inflate_bytes_out"),
    gauge("wshub_queued_bytes", "/queued_bytes"),
    gauge("wshub_peak_queued_bytes", "/peak_queued_bytes"),
    counter("wshub_dropped_messages_total", "/dropped_messages"),
    counter("wshub_slow_consumer_closes_total", "/slow_consumer_closes"),
    labelled(
        "wshub_timeouts_total",
        ("kind", "handshake"),
        "/timeouts/handshake",
    ),
    labelled("wshub_timeouts_total", ("kind", "pong"), "/timeouts/pong"),
    labelled("wshub_timeouts_total", ("kind", "close"), "/timeouts/close"),
    labelled(
        "wshub_timeouts_total",
        ("kind", "write_stall"),
        "/timeouts/write_stall",
    ),
    counter("wshub_handshake_evictions_total", "/handshake_evictions"),
    counter("wshub_protocol_errors_total", "/protocol_errors"),
    counter("wshub_accept_pauses_total", "/accept_pauses"),
    counter("wshub_inbox_overflows_total", "/inbox_overflows"),
    gauge("chat_users_online", "/chat/users_online"),
    gauge("chat_users_present", "/chat/users_present"),
    gauge("chat_users_known", "/chat/users_known"),
    gauge("chat_rooms", "/chat/rooms"),
    counter("chat_users_created_total", "/chat/users_created"),
    counter("chat_room_messages_total", "/chat/room_messages"),
    counter("chat_direct_messages_total", "/chat/direct_messages"),
    counter("chat_pushes_total", "/chat/pushes"),
    counter("chat_errors_total", "/chat/errors"),
    counter("chat_abuse_closes_total", "/chat/abuse_closes"),
    counter("chat_sign_outs_total", "/chat/sign_outs"),
    counter("chat_server_messages_total", "/chat/seq"),
];

fn stats_json(server: &Server) -> Value {
    let (status, _, body) = http(server, "GET", "/stats", "", "");
    assert_eq!(status, 200);
    serde_json::from_str(&body).expect("JSON stats")
}

#[test]
fn metrics_are_the_stats_in_the_prometheus_text_format() {
    let server = chat(opts());
    let (mut ann, mut bob) = some_traffic(&server);
    push(&server, None, r#"{"room":"lobby","text":"three"}"#);
    ann.recv();
    bob.recv();
    http(&server, "GET", "/missing", "", "");
    let mut cy = C::new(&server, "cy");
    ann.recv();
    bob.recv();
    cy.send(json!({ "type": "sign_out" }));
    assert_eq!(cy.expect_close(), close::SIGNED_OUT);
    drop(cy);
    ann.recv();
    bob.recv();
    // Quiet: cy's connection is gone, nobody sends anything from here on.
    assert!(wait_until(
        IO_TIMEOUT,
        || stats_json(&server)["connections"] == 2
    ));

    // /stats, /metrics, /stats: every number of the scrape lies between the two snapshots,
    // and everything that does not move when the server is quiet is equal in all three.
    let before = stats_json(&server);
    let (status, head, body) = http(&server, "GET", "/metrics", "", "");
    let after = stats_json(&server);
    assert_eq!(status, 200);
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    // The parser skips lines it does not understand, so the shape is checked here: each
    // family is a HELP line, a TYPE line of the same name, then its samples, nothing else.
    let mut family = None;
    for pair in body.lines().collect::<Vec<_>>().windows(2) {
        use prometheus_parse::LineInfo;
        match (LineInfo::parse(pair[0]), LineInfo::parse(pair[1])) {
            (LineInfo::Doc { metric_name, .. }, LineInfo::Type { metric_name: t, .. }) => {
                assert_eq!(metric_name, t, "HELP and TYPE of one family");
                family = Some(t);
            }
            (LineInfo::Doc { .. }, other) => panic!("a HELP line without its TYPE: {other:?}"),
            (_, LineInfo::Sample { metric_name, .. }) => {
                assert_eq!(Some(metric_name), family.as_deref(), "{}", pair[1]);
            }
            (_, LineInfo::Doc { .. } | LineInfo::Type { .. }) => {}
            (_, other) => panic!("not a line of the format: {:?} ({other:?})", pair[1]),
        }
    }
    assert!(
        body.starts_with("# HELP ") && body.ends_with('\n'),
        "{body}"
    );
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("a valid exposition");
    let mut seen = std::collections::BTreeSet::new();
    for sample in &scrape.samples {
        let label = sample.labels.iter().next();
        assert!(sample.labels.len() <= 1, "{sample:?}");
        let Metric {
            name,
            label: want_label,
            counter,
            stats: pointer,
        } = *METRICS
            .iter()
            .find(|m| {
                m.name == sample.metric
                    && m.label.map(|(k, v)| (k.to_owned(), v.to_owned()))
                        == label.map(|(k, v)| (k.clone(), v.clone()))
            })
            .unwrap_or_else(|| panic!("an unexpected metric: {sample:?}"));
        assert!(
            seen.insert((name, want_label)),
            "{name} {want_label:?} twice"
        );
        let value = match (&sample.value, counter) {
            (prometheus_parse::Value::Counter(v), true)
            | (prometheus_parse::Value::Gauge(v), false) => *v,
            (other, _) => panic!("{name}: {other:?}, expected a counter: {counter}"),
        };
        assert!(
            scrape.docs.get(name).is_some_and(|d| !d.is_empty()),
            "{name} has no HELP"
        );
        if name == "wshub_tcp_connections" {
            // The one number a quiet server does not hold still: it counts the scrape's own
            // connection, and the earlier requests' while the server still lingers on them.
            assert!(value >= 3.0, "two sockets and the scrape: {value}");
            continue;
        }
        let (lo, hi) = (before.pointer(pointer), after.pointer(pointer));
        let (lo, hi) = (
            lo.and_then(Value::as_f64).expect(pointer),
            hi.and_then(Value::as_f64).expect(pointer),
        );
        assert!(
            lo.min(hi) <= value && value <= lo.max(hi),
            "{name} {want_label:?} = {value}, /stats says {lo} then {hi}"
        );
    }
    assert_eq!(seen.len(), METRICS.len(), "every metric is in the scrape");

    // The scenario's numbers, the same in /stats (before and after) and in /metrics.
    let metric = |name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no {name}"))
    };
    for (name, label, pointer, expected) in [
        ("wshub_open_connections", None, "/connections", 2.0),
        (
            "wshub_handshakes_accepted_total",
            None,
            "/handshakes_accepted",
            3.0,
        ),
        // say, dm, nope, join, sign_out
        ("wshub_messages_in_total", None, "/messages_in", 5.0),
        // signed-in, user:ann, user:bob, room:lobby, room:rust
        ("wshub_topics", None, "/topics", 5.0),
        (
            "wshub_http_rejections_total",
            Some(("status", "404")),
            "/rejections/not_found",
            1.0,
        ),
        ("chat_users_online", None, "/chat/users_online", 2.0),
        ("chat_users_present", None, "/chat/users_present", 2.0),
        ("chat_users_known", None, "/chat/users_known", 2.0),
        ("chat_users_created_total", None, "/chat/users_created", 3.0),
        ("chat_rooms", None, "/chat/rooms", 2.0),
        ("chat_room_messages_total", None, "/chat/room_messages", 1.0),
        (
            "chat_direct_messages_total",
            None,
            "/chat/direct_messages",
            1.0,
        ),
        ("chat_pushes_total", None, "/chat/pushes", 1.0),
        ("chat_errors_total", None, "/chat/errors", 1.0),
        ("chat_sign_outs_total", None, "/chat/sign_outs", 1.0),
    ] {
        assert_eq!(metric(name, label), expected, "{name}");
        assert_eq!(before.pointer(pointer), after.pointer(pointer), "{pointer}");
        assert_eq!(
            before.pointer(pointer).and_then(Value::as_f64),
            Some(expected),
            "{pointer}"
        );
    }
    // Messages out and the seq do not move either while nobody talks.
    for pointer in ["/messages_out", "/chat/seq", "/queued_bytes"] {
        assert_eq!(before.pointer(pointer), after.pointer(pointer), "{pointer}");
    }
    // The rejections by status add up to /stats' total.
    let rejected: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "wshub_http_rejections_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => f64::NAN,
        })
        .sum();
    assert_eq!(Some(rejected), before["rejections"]["total"].as_f64());
}

#[test]
fn slow_consumers_are_closed_with_1008() {
    // A client that never reads, and pushes that pile up: the library closes it once its
    // queue passes max_backpressure, and the others are unaffected.
    let server = chat(opts());
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // A tiny receive window, so the server's queue fills rather than the kernel's buffers.
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&server.addr.into()).unwrap();
    let stream: std::net::TcpStream = sock.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let (_sleeper, _) = tungstenite::client(server.url("/ws?name=sleeper"), stream).unwrap();
    let mut ann = C::new(&server, "ann");
    let body = json!({ "room": "lobby", "text": "😀".repeat(1000) }).to_string();
    let mut closed = false;
    for i in 1..=3000 {
        push(&server, None, &body);
        assert_eq!(ann.recv()["type"], "push", "ann keeps up");
        if i % 20 == 0 {
            let (_, _, stats) = http(&server, "GET", "/stats", "", "");
            let stats: Value = serde_json::from_str(&stats).unwrap();
            if stats["slow_consumer_closes"] == 1 {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the sleeper was never closed");
    ann.say("lobby", "ann is fine");
    loop {
        let v = ann.recv();
        if v["type"] == "message" {
            assert_eq!(v["text"], "ann is fine");
            break;
        }
        // The sleeper leaving (once its close times out).
        assert_eq!(v["type"], "presence", "{v}");
    }
}
