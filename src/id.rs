//! Connection ids that never point at the wrong connection.

use std::fmt;

/// Identifies one connection for its whole life.
///
/// A `ConnId` is a slot in the server's connection table plus a generation number that
/// the server draws afresh for every accepted connection. When a connection closes its slot
/// is reused, but the new connection gets a new generation, so an id kept by the
/// application after its connection closed is *stale*: every operation on it reports
/// [`SendError::Gone`](crate::SendError::Gone) instead of reaching the newcomer.
///
/// Ids are cheap to copy, compare and hash; use them as map keys.
///
/// In logs an id displays as `#N`, the number of the connection: the server's Nth accepted
/// TCP connection (counting plain HTTP requests too), unique among them until the count
/// wraps after 2³² connections. In a [`Cluster`](crate::Cluster) of `n` loops, loop `i`
/// numbers its connections `i + n`, `i + 2n`, …: still unique across the loops, and `N % n`
/// is the loop ([`Handle::loop_of`](crate::Handle::loop_of)). `{:?}` adds the slot:
/// `ConnId(#N, slot S)`.
///
/// ```
/// # fn demo(ctx: &mut wshub::Ctx<'_, ()>, id: wshub::ConnId) {
/// use wshub::{Frame, SendError};
/// match ctx.send(id, &Frame::text("hello")) {
///     Ok(()) => {}
///     Err(SendError::Gone) => { /* closed meanwhile: forget the id */ }
///     Err(other) => log::warn!("not sent to {id}: {other}"),
/// }
/// # }
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId {
    key: u32,
    generation: u32,
}

impl ConnId {
    pub(crate) fn new(key: usize, generation: u32) -> ConnId {
        // The table never holds more than `Config::max_connections` + handshakes (u32 is ample);
        // the server refuses to insert past u32::MAX.
        ConnId {
            key: key as u32,
            generation,
        }
    }

    /// The slot in the connection table.
    pub(crate) fn key(self) -> usize {
        self.key as usize
    }

    pub(crate) fn generation(self) -> u32 {
        self.generation
    }

    /// The id as one number, unique among all connections this server has accepted
    /// (until the generation counter wraps after 2³² connections). Handy for logs and wire
    /// protocols.
    pub fn as_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.key)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId(#{}, slot {})", self.generation, self.key)
    }
}

/// `#N`: the connection's number (see [`ConnId`]), e.g. `connection #17: read failed`.
impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::ConnId;

    #[test]
    fn displays_the_connection_number_and_debugs_the_slot_too() {
        let id = ConnId::new(3, 17);
        assert_eq!(id.to_string(), "#17");
        assert_eq!(format!("{id:?}"), "ConnId(#17, slot 3)");
        assert_eq!(id.as_u64(), (17 << 32) | 3);
    }
}
