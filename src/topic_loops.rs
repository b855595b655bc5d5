//! Which loops of a cluster have subscribers to which topic, so that a publish is handed
//! only to the loops that can deliver it.
//!
//! A loop changes its bit for a topic only when its local subscriber count goes 0 → 1 or
//! 1 → 0, under the write lock, before `subscribe` returns; a publish reads the mask under
//! the read lock. So a subscription is seen by every publish that happens after it, on any
//! loop or handle: none is missed for being on another loop. Subscribing to a topic that a
//! loop already has costs no lock at all.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use crate::broker::Broker;

/// The most loops a cluster can have: one bit each in a `u64`.
pub(crate) const MAX_LOOPS: usize = 64;

#[derive(Default)]
pub(crate) struct TopicLoops {
    topics: RwLock<HashMap<Box<str>, u64>>,
    /// Told when the node (any loop) gets its first subscriber to a topic or loses its last,
    /// under the lock, so it sees those changes in the order they happened.
    broker: Option<Arc<dyn Broker>>,
}

impl TopicLoops {
    pub(crate) fn new(broker: Option<Arc<dyn Broker>>) -> TopicLoops {
        TopicLoops {
            topics: RwLock::default(),
            broker,
        }
    }

    /// `loop_index` has its first local subscriber to `topic`.
    pub(crate) fn add(&self, topic: &str, loop_index: usize) {
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        match topics.get_mut(topic) {
            Some(mask) => *mask |= 1 << loop_index,
            None => {
                topics.insert(topic.into(), 1 << loop_index);
                if let Some(broker) = &self.broker {
                    broker.subscribe(topic);
                }
            }
        }
    }

    /// `loop_index` lost its last local subscriber to `topic`.
    pub(crate) fn remove(&self, topic: &str, loop_index: usize) {
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(mask) = topics.get_mut(topic) {
            *mask &= !(1 << loop_index);
            if *mask == 0 {
                topics.remove(topic);
                if let Some(broker) = &self.broker {
                    broker.unsubscribe(topic);
                }
            }
        }
    }

    /// The loops with subscribers to `topic`, one bit each.
    pub(crate) fn loops(&self, topic: &str) -> u64 {
        let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
        topics.get(topic).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::TopicLoops;

    #[test]
    fn a_topic_is_known_while_some_loop_has_it() {
        let topic_loops = TopicLoops::default();
        assert_eq!(topic_loops.loops("t"), 0);
        topic_loops.add("t", 0);
        topic_loops.add("t", 3);
        assert_eq!(topic_loops.loops("t"), 0b1001);
        topic_loops.remove("t", 0);
        assert_eq!(topic_loops.loops("t"), 0b1000);
        topic_loops.remove("t", 3);
        assert_eq!(topic_loops.loops("t"), 0);
        assert!(topic_loops.topics.read().unwrap().is_empty());
    }
}
