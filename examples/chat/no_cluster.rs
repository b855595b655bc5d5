//! Without the cargo feature `redis`: the chat has no Redis state layer. [`Redis`] has the
//! same methods as the real one in `cluster.rs` but no value, so `State::cluster` is
//! always `None` and none of these bodies can run; `--redis` is refused before that.

use std::time::Duration;

use serde_json::Value;

/// A user of this node as the refresh sees it.
#[allow(dead_code)] // only made, never read, without Redis
pub(super) struct Present<'a> {
    pub(super) id: &'a str,
    pub(super) name: &'a str,
    pub(super) token: &'a str,
    pub(super) rooms: Vec<&'a str>,
}

#[allow(dead_code)] // never made without Redis
pub(super) struct RoomView {
    pub(super) members: Vec<(String, String)>,
    pub(super) history: Vec<Value>,
}

#[derive(Default, Clone, Copy)]
pub(super) struct Counters {
    pub(super) round_trips: u64,
    pub(super) failures: u64,
    pub(super) skipped: u64,
    pub(super) history_drops: u64,
}

impl Counters {
    pub(super) fn plus(self, _: Counters) -> Counters {
        self
    }
}

/// Never made: there is no Redis without the feature.
pub(super) enum Redis {}

#[allow(clippy::unused_self, clippy::needless_pass_by_ref_mut)]
impl Redis {
    pub(super) fn new(_: &str, _: String, _: usize) -> Result<Redis, String> {
        Err("--redis needs the chat built with the cargo feature redis \
             (cargo run --features redis --example chat -- --redis URL)"
            .to_owned())
    }
    pub(super) fn sibling(&self) -> Redis {
        match *self {}
    }
    pub(super) fn follow(&mut self, _: bool) {
        match *self {}
    }
    pub(super) fn node(&self) -> &str {
        match *self {}
    }
    pub(super) fn counters(&self) -> Counters {
        match *self {}
    }
    pub(super) fn is_up(&self) -> bool {
        match *self {}
    }
    pub(super) fn set_down(&mut self, _: bool) {
        match *self {}
    }
    pub(super) fn instance(&mut self, _: &str) -> Option<String> {
        match *self {}
    }
    pub(super) fn claim_name(&mut self, _: &str, _: &str, _: Duration) -> Option<bool> {
        match *self {}
    }
    pub(super) fn release_name(&mut self, _: &str, _: &str) {
        match *self {}
    }
    pub(super) fn went_offline(&mut self, _: &str) {
        match *self {}
    }
    pub(super) fn find_session(&mut self, _: &str) -> Option<Option<(String, String)>> {
        match *self {}
    }
    pub(super) fn save_session(&mut self, _: &str, _: &str, _: &str, _: Duration) {
        match *self {}
    }
    pub(super) fn sign_out(&mut self, _: &str, _: &str, _: &str) {
        match *self {}
    }
    pub(super) fn find_user(&mut self, _: &str) -> Option<Option<(String, String)>> {
        match *self {}
    }
    pub(super) fn join_room(&mut self, _: &str, _: &str, _: &str, _: Duration) -> Option<bool> {
        match *self {}
    }
    pub(super) fn leave_room(&mut self, _: &str, _: &str, _: &str) -> Option<bool> {
        match *self {}
    }
    pub(super) fn room_exists(&mut self, _: &str) -> Option<bool> {
        match *self {}
    }
    pub(super) fn room(&mut self, _: &str, _: usize) -> Option<RoomView> {
        match *self {}
    }
    pub(super) fn counts(&mut self, _: &[String]) -> Option<Vec<usize>> {
        match *self {}
    }
    pub(super) fn rooms(&mut self, _: usize) -> Option<Vec<(String, usize)>> {
        match *self {}
    }
    pub(super) fn append_history(&mut self, _: &str, _: String) {
        match *self {}
    }
    pub(super) fn gone(&mut self, _: &[&str]) -> Option<Vec<bool>> {
        match *self {}
    }
    pub(super) fn refresh(&mut self, _: &[Present<'_>], _: Duration, _: Duration, _: bool) {
        match *self {}
    }
    pub(super) fn sweep(&mut self) -> Option<Vec<(String, String, String)>> {
        match *self {}
    }
}

pub(super) fn with_broker(_: &str, config: wshub::Config) -> Result<wshub::Config, String> {
    Ok(config)
}
