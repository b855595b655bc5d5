//! Room members and rooms in Redis, for `cluster.rs` (a part of its `Redis`): entering and
//! leaving a room, what a room is now (members, history), counts, and the sweep of members
//! whose node stopped renewing them.

use std::collections::HashSet;
use std::time::Duration;

use super::super::rules::now_ms;
use super::keys::{ENTER, EXIT, EXPIRE, OTHERS, history_key, members_key, ms, split_entry};
use super::{Redis, RoomView};

impl Redis {
    /// A user is in `room` from this node until `ttl` from now (unless refreshed):
    /// `Some(true)` if it was not a member from any node, so its arrival is news.
    pub(in super::super) fn join_room(
        &mut self,
        room: &str,
        id: &str,
        name: &str,
        ttl: Duration,
    ) -> Option<bool> {
        let entry = self.entry(id, name);
        self.run("join a room", |c| {
            let now = now_ms();
            redis::pipe()
                .cmd("EVAL")
                .arg(format!("{OTHERS}{ENTER}"))
                .arg(1)
                .arg(members_key(room))
                .arg(entry)
                .arg(now)
                .arg(now + ms(ttl))
                .cmd("SADD")
                .arg("chat:rooms")
                .arg(room)
                .ignore()
                .query::<(i64,)>(c)
        })
        .map(|(n,)| n == 1)
    }

    /// A user left `room` from this node: `Some(true)` if it is no longer in it from any
    /// node (so this node announces it).
    pub(in super::super) fn leave_room(
        &mut self,
        room: &str,
        id: &str,
        name: &str,
    ) -> Option<bool> {
        let entry = self.entry(id, name);
        self.run("leave a room", |c| {
            redis::cmd("EVAL")
                .arg(format!("{OTHERS}{EXIT}"))
                .arg(1)
                .arg(members_key(room))
                .arg(entry)
                .arg(now_ms())
                .query::<i64>(c)
        })
        .map(|n| n == 1)
    }

    /// Whether a room exists on any node (has had members).
    pub(in super::super) fn room_exists(&mut self, room: &str) -> Option<bool> {
        self.run("look up a room", |c| {
            redis::cmd("SISMEMBER")
                .arg("chat:rooms")
                .arg(room)
                .query::<i64>(c)
        })
        .map(|n| n == 1)
    }

    /// A room's members on every node, `(id, name)`, and its last `history` messages.
    pub(in super::super) fn room(&mut self, room: &str, history: usize) -> Option<RoomView> {
        let (members, items) = self.run("read a room", |c| {
            redis::pipe()
                .cmd("ZRANGEBYSCORE")
                .arg(members_key(room))
                .arg(now_ms())
                .arg("+inf")
                .cmd("LRANGE")
                .arg(history_key(room))
                .arg(-(history.max(1) as i64))
                .arg(-1)
                .query::<(Vec<String>, Vec<String>)>(c)
        })?;
        let members = members.iter().filter_map(|m| split_entry(m)).collect();
        let items = if history == 0 {
            Vec::new()
        } else {
            items
                .iter()
                .filter_map(|s| serde_json::from_str(s).ok())
                .collect()
        };
        Some(RoomView {
            members,
            history: items,
        })
    }

    /// Members now of each room, on every node (a user with tabs on two nodes once).
    pub(in super::super) fn counts(&mut self, rooms: &[String]) -> Option<Vec<usize>> {
        let entries = self.run("count members", |c| {
            let now = now_ms();
            let mut p = redis::pipe();
            for room in rooms {
                p.cmd("ZRANGEBYSCORE")
                    .arg(members_key(room))
                    .arg(now)
                    .arg("+inf");
            }
            p.query::<Vec<Vec<String>>>(c)
        })?;
        Some(
            entries
                .iter()
                .map(|e| {
                    let ids: HashSet<&str> =
                        e.iter().filter_map(|m| m.split('\t').next()).collect();
                    ids.len()
                })
                .collect(),
        )
    }

    /// Every room of the cluster (at most `limit`, by name) with its members now.
    pub(in super::super) fn rooms(&mut self, limit: usize) -> Option<Vec<(String, usize)>> {
        let mut names: Vec<String> = self.run("list rooms", |c| {
            redis::cmd("SMEMBERS").arg("chat:rooms").query(c)
        })?;
        names.sort();
        names.truncate(limit);
        let counts = self.counts(&names)?;
        Some(names.into_iter().zip(counts).collect())
    }

    /// Removes expired room members (their node stopped refreshing them: it died or lost
    /// Redis) and returns those this call removed, `(room, id, name)`: this node announces
    /// them; a node sweeping at the same moment gets 0 from its ZREM and does not.
    pub(in super::super) fn sweep(&mut self) -> Option<Vec<(String, String, String)>> {
        let now = now_ms();
        let rooms: Vec<String> = self.run("list rooms", |c| {
            redis::cmd("SMEMBERS").arg("chat:rooms").query(c)
        })?;
        if rooms.is_empty() {
            return Some(Vec::new());
        }
        let expired: Vec<Vec<String>> = self.run("find expired members", |c| {
            let mut p = redis::pipe();
            for room in &rooms {
                p.cmd("ZRANGEBYSCORE")
                    .arg(members_key(room))
                    .arg("-inf")
                    .arg(now);
            }
            p.query(c)
        })?;
        let candidates: Vec<(&String, String)> = rooms
            .iter()
            .zip(expired)
            .flat_map(|(room, ms)| ms.into_iter().map(move |m| (room, m)))
            .collect();
        if candidates.is_empty() {
            return Some(Vec::new());
        }
        let removed: Vec<i64> = self.run("remove expired members", |c| {
            let mut p = redis::pipe();
            for (room, m) in &candidates {
                // Only if still expired: refreshed meanwhile, it stays.
                p.cmd("EVAL")
                    .arg(format!("{OTHERS}{EXPIRE}"))
                    .arg(1)
                    .arg(members_key(room))
                    .arg(m)
                    .arg(now);
            }
            p.query::<Vec<i64>>(c)
        })?;
        Some(
            candidates
                .iter()
                .zip(removed)
                .filter(|(_, n)| *n == 1)
                .filter_map(|((room, m), _)| {
                    split_entry(m).map(|(id, name)| ((*room).clone(), id, name))
                })
                .collect(),
        )
    }
}
