//! Topics: topic → subscribers and connection → topics, both kept in step.
//!
//! Subscribing and unsubscribing are O(1) (amortised): a topic keeps its subscribers in a
//! vector, and for each subscriber where it stands there and where the topic stands in the
//! subscriber's own list, so either can be removed by swapping with the last element. A
//! publish walks the topic's vector and nothing else. A topic without subscribers is freed;
//! a connection without subscriptions has no entry here at all.

use std::collections::HashMap;
use std::sync::Arc;

use slab::Slab;

use crate::ConnId;

#[derive(Default)]
pub(crate) struct Topics {
    /// Topic name → key in `topics`.
    names: HashMap<Arc<str>, usize>,
    topics: Slab<Topic>,
    /// Connection → keys of the topics it is subscribed to.
    of_conn: HashMap<ConnId, Vec<usize>>,
}

struct Topic {
    name: Arc<str>,
    subscribers: Vec<ConnId>,
    /// Subscriber → (its index in `subscribers`, this topic's index in its `of_conn` list).
    places: HashMap<ConnId, (usize, usize)>,
}

impl Topics {
    /// Adds `id` to `topic`; false if it was already there.
    pub(crate) fn subscribe(&mut self, id: ConnId, topic: &str) -> bool {
        let key = match self.names.get(topic) {
            Some(&key) => key,
            None => {
                let name: Arc<str> = Arc::from(topic);
                let key = self.topics.insert(Topic {
                    name: Arc::clone(&name),
                    subscribers: Vec::new(),
                    places: HashMap::new(),
                });
                self.names.insert(name, key);
                key
            }
        };
        let entry = &mut self.topics[key];
        if entry.places.contains_key(&id) {
            return false;
        }
        let own = self.of_conn.entry(id).or_default();
        entry
            .places
            .insert(id, (entry.subscribers.len(), own.len()));
        entry.subscribers.push(id);
        own.push(key);
        true
    }

    /// Removes `id` from `topic`; false if it was not there.
    pub(crate) fn unsubscribe(&mut self, id: ConnId, topic: &str) -> bool {
        match self.names.get(topic) {
            Some(&key) => self.remove(id, key, &mut |_| {}),
            None => false,
        }
    }

    /// Removes every subscription of `id` (it is closing); `emptied` is called with each
    /// topic that lost its last subscriber.
    pub(crate) fn unsubscribe_all(&mut self, id: ConnId, mut emptied: impl FnMut(&str)) {
        while let Some(&key) = self.of_conn.get(&id).and_then(|own| own.last()) {
            self.remove(id, key, &mut emptied);
        }
    }

    fn remove(&mut self, id: ConnId, key: usize, emptied: &mut dyn FnMut(&str)) -> bool {
        let Some(topic) = self.topics.get_mut(key) else {
            return false;
        };
        let Some((at, own_at)) = topic.places.remove(&id) else {
            return false;
        };
        topic.subscribers.swap_remove(at);
        if let Some(&moved) = topic.subscribers.get(at) {
            if let Some(place) = topic.places.get_mut(&moved) {
                place.0 = at;
            }
        }
        // A topic that was large once does not keep its peak memory.
        if topic.subscribers.len() < topic.subscribers.capacity() / 4 {
            topic.subscribers.shrink_to(topic.subscribers.len() * 2);
            topic.places.shrink_to(topic.places.len() * 2);
        }
        if topic.subscribers.is_empty() {
            let topic = self.topics.remove(key);
            self.names.remove(&topic.name);
            emptied(&topic.name);
        }
        // The same swap in the connection's own list; the topic that moves there learns its
        // new index.
        if let Some(own) = self.of_conn.get_mut(&id) {
            own.swap_remove(own_at);
            if let Some(&moved) = own.get(own_at) {
                if let Some(place) = self
                    .topics
                    .get_mut(moved)
                    .and_then(|t| t.places.get_mut(&id))
                {
                    place.1 = own_at;
                }
            }
            if own.is_empty() {
                self.of_conn.remove(&id);
            }
        }
        true
    }

    /// The subscribers of `topic` (empty for an unknown topic), in no particular order.
    pub(crate) fn subscribers(&self, topic: &str) -> &[ConnId] {
        self.names
            .get(topic)
            .map_or(&[], |&key| &self.topics[key].subscribers)
    }

    /// The topics `id` is subscribed to, in no particular order.
    pub(crate) fn of(&self, id: ConnId) -> impl Iterator<Item = &str> + '_ {
        self.of_conn
            .get(&id)
            .into_iter()
            .flatten()
            .map(|&key| &*self.topics[key].name)
    }

    /// How many topics have subscribers.
    pub(crate) fn len(&self) -> usize {
        self.topics.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted<'a>(it: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
        let mut v: Vec<_> = it.collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn both_directions_stay_in_step_through_swaps() {
        let mut topics = Topics::default();
        let ids: Vec<ConnId> = (0..4).map(|k| ConnId::new(k, 1)).collect();
        for &id in &ids {
            assert!(topics.subscribe(id, "a"));
            assert!(topics.subscribe(id, "b"));
        }
        assert!(!topics.subscribe(ids[0], "a"));
        assert!(topics.subscribe(ids[2], "c"));
        // Remove from the middle, so the last ones move.
        assert!(topics.unsubscribe(ids[1], "a"));
        assert!(!topics.unsubscribe(ids[1], "a"));
        assert!(!topics.unsubscribe(ids[1], "nope"));
        let mut a = topics.subscribers("a").to_vec();
        a.sort();
        assert_eq!(a, vec![ids[0], ids[2], ids[3]]);
        assert_eq!(sorted(topics.of(ids[2])), vec!["a", "b", "c"]);
        let mut emptied = Vec::new();
        topics.unsubscribe_all(ids[2], |t| emptied.push(t.to_owned()));
        assert_eq!(emptied, vec!["c"]);
        assert_eq!(sorted(topics.of(ids[2])), Vec::<&str>::new());
        assert!(topics.subscribers("c").is_empty());
        assert_eq!(topics.len(), 2);
        for &id in &ids {
            topics.unsubscribe_all(id, |_| {});
        }
        assert_eq!(topics.len(), 0);
        assert!(topics.names.is_empty() && topics.of_conn.is_empty());
    }

    #[test]
    fn a_stale_id_is_another_subscriber() {
        let mut topics = Topics::default();
        let old = ConnId::new(3, 1);
        let new = ConnId::new(3, 2);
        topics.subscribe(old, "t");
        topics.subscribe(new, "t");
        topics.unsubscribe_all(old, |_| {});
        assert_eq!(topics.subscribers("t"), &[new]);
    }
}
