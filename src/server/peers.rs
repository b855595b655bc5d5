//! A loop's view of the other loops of its cluster: where a connection lives, and how a
//! send, publish, broadcast or close that concerns another loop gets there.

use std::cell::Cell;
use std::sync::Arc;

use crate::handle::Command;
use crate::{ConnId, Frame, Handle, HandleError, SendError, Stats};

pub(crate) struct Peers {
    /// This loop's index.
    me: usize,
    /// Every loop, this one included.
    handle: Handle,
    /// Loops given commands this turn that are owed a wake-up (a bit per loop), sent by
    /// [`Peers::wake`] when the turn ends.
    owed: Cell<u64>,
}

impl Peers {
    pub(crate) fn new(me: usize, handle: Handle) -> Peers {
        Peers {
            me,
            handle,
            owed: Cell::new(0),
        }
    }

    pub(crate) fn me(&self) -> usize {
        self.me
    }

    pub(crate) fn count(&self) -> usize {
        self.handle.loops()
    }

    /// The loop `id` is on, if that is not this one.
    pub(crate) fn remote(&self, id: ConnId) -> Option<usize> {
        let at = self.handle.loop_of(id);
        (at != self.me).then_some(at)
    }

    /// Hands a command for one connection to its loop. `Ok` means handed over: that loop
    /// applies the backpressure policy, and counts a frame for a connection that is gone.
    pub(crate) fn to_loop(
        &self,
        at: usize,
        command: Command,
        stats: &mut Stats,
    ) -> Result<(), SendError> {
        match self.handle.inbox(at).queue(command) {
            Ok(owed) => {
                if owed {
                    self.owed.set(self.owed.get() | 1 << at);
                }
                Ok(())
            }
            Err(HandleError::Full) => {
                stats.inbox_overflows += 1;
                Err(SendError::InboxFull)
            }
            Err(HandleError::Stopped | HandleError::InvalidCloseCode) => Err(SendError::Gone),
        }
    }

    /// Hands `frame` to every other loop with subscribers to `topic`, and to the broker;
    /// returns how many loops took it.
    pub(crate) fn publish(&self, topic: &str, frame: &Frame, stats: &mut Stats) -> usize {
        if let Some(broker) = self.handle.broker() {
            broker.publish(topic, frame);
        }
        let mask = self.handle.loops_with(topic) & !(1 << self.me);
        if mask == 0 {
            return 0;
        }
        let topic: Arc<str> = topic.into();
        self.to_others(mask, stats, || {
            Command::Publish(Arc::clone(&topic), frame.clone())
        })
    }

    /// Hands `frame` to every other loop, for all their connections; returns how many took it.
    pub(crate) fn broadcast(&self, frame: &Frame, stats: &mut Stats) -> usize {
        self.to_others(!(1 << self.me), stats, || Command::Broadcast(frame.clone()))
    }

    /// Asks every other loop to shut down too.
    pub(crate) fn shutdown(&self, stats: &mut Stats) {
        self.to_others(!(1 << self.me), stats, || Command::Shutdown);
    }

    /// This loop's first subscriber to `topic`: publishes elsewhere now reach it.
    pub(crate) fn subscribed(&self, topic: &str) {
        if let Some(topic_loops) = self.handle.topic_loops() {
            topic_loops.add(topic, self.me);
        }
    }

    /// This loop's last subscriber to `topic` left.
    pub(crate) fn unsubscribed(&self, topic: &str) {
        if let Some(topic_loops) = self.handle.topic_loops() {
            topic_loops.remove(topic, self.me);
        }
    }

    /// Wakes the loops given commands since the last call: once per loop per turn.
    pub(crate) fn wake(&self) {
        let mut owed = self.owed.replace(0);
        while owed != 0 {
            let at = owed.trailing_zeros() as usize;
            owed &= owed - 1;
            // A loop that has stopped reads no more commands; nothing to wake.
            let _ = self.handle.inbox(at).wake();
        }
    }

    fn to_others(&self, mask: u64, stats: &mut Stats, command: impl Fn() -> Command) -> usize {
        let mut handed = 0;
        for at in (0..self.count()).filter(|&at| mask & (1 << at) != 0) {
            if self.to_loop(at, command(), stats).is_ok() {
                handed += 1;
            }
        }
        handed
    }
}
