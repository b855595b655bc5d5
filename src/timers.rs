//! Deadlines without scanning connections.
//!
//! One min-heap holds (deadline, key) entries. A connection has at most a few entries: its
//! deadline moves *later* with activity (a message received pushes keepalive back) without
//! touching the heap; when an entry comes due the server recomputes the connection's real
//! deadline and either acts or files a new entry. Only a deadline that moves *earlier*
//! (e.g. a close started) adds an entry at once. The poll timeout is the nearest deadline,
//! so a server with many idle connections sleeps.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use slab::Slab;

use crate::ConnId;

/// Identifies an application timer set with [`Ctx::set_timer`](crate::Ctx::set_timer), for
/// [`Ctx::cancel_timer`](crate::Ctx::cancel_timer). Stale ids (fired or cancelled timers)
/// are harmless.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerId {
    key: u32,
    generation: u32,
}

/// What a heap entry is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TimerKey {
    /// Recompute this connection's deadline.
    Conn(ConnId),
    /// An application timer.
    App(TimerId),
    /// Try accepting again after a resource error (EMFILE and kin).
    ResumeAccept,
}

/// Times are milliseconds since the server started ("ticks").
#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(u64, TimerKey)>>,
    /// Live application timers: generation and token.
    app: Slab<(u32, u64)>,
    next_generation: u32,
}

impl Timers {
    pub(crate) fn schedule(&mut self, at: u64, key: TimerKey) {
        self.heap.push(Reverse((at, key)));
    }

    /// The nearest deadline, if any.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes the next entry due at `now`. Cancelled application timers are skipped.
    pub(crate) fn pop_due(&mut self, now: u64) -> Option<(u64, TimerKey)> {
        loop {
            let Reverse((at, key)) = *self.heap.peek()?;
            if at > now {
                return None;
            }
            self.heap.pop();
            match key {
                TimerKey::App(id) if !self.is_live(id) => continue,
                _ => return Some((at, key)),
            }
        }
    }

    pub(crate) fn set_app(&mut self, at: u64, token: u64) -> TimerId {
        self.next_generation = self.next_generation.wrapping_add(1);
        let key = self.app.insert((self.next_generation, token));
        let id = TimerId {
            key: key as u32,
            generation: self.next_generation,
        };
        self.schedule(at, TimerKey::App(id));
        id
    }

    /// Removes a live application timer and returns its token.
    pub(crate) fn take_app(&mut self, id: TimerId) -> Option<u64> {
        if !self.is_live(id) {
            return None;
        }
        Some(self.app.remove(id.key as usize).1)
    }

    fn is_live(&self, id: TimerId) -> bool {
        self.app
            .get(id.key as usize)
            .is_some_and(|(generation, _)| *generation == id.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_entries_come_in_deadline_order_and_cancelled_ones_never() {
        let mut timers = Timers::default();
        let late = timers.set_app(30, 3);
        let cancelled = timers.set_app(10, 1);
        timers.schedule(20, TimerKey::ResumeAccept);
        assert_eq!(timers.take_app(cancelled), Some(1));
        assert_eq!(timers.next_deadline(), Some(10));
        assert_eq!(timers.pop_due(25), Some((20, TimerKey::ResumeAccept)));
        assert_eq!(timers.pop_due(25), None);
        assert_eq!(timers.pop_due(30), Some((30, TimerKey::App(late))));
        assert_eq!(timers.take_app(late), Some(3));
        assert_eq!(timers.take_app(late), None);
    }
}
