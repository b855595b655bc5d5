//! The chat's keys in Redis, their values, and the Lua scripts that change them atomically
//! (used by `cluster.rs`):
//!
//! | key | what | lifetime |
//! | --- | --- | --- |
//! | `chat:name:LOWER` | `ID\tNAME`: who holds a name | `presence_ttl`, refreshed |
//! | `chat:user:ID` | the user's name (a DM by id from another node) | `presence_ttl`, refreshed |
//! | `chat:session:TOKEN` | `ID\tNAME`: a tab with the token on any node is that user | `session_ttl` |
//! | `chat:gone:ID` | the user signed out: its tabs on other nodes close | 60 s |
//! | `chat:members:ROOM` | sorted set of `ID\tNAME\tNODE`, score = expiry (ms) | refreshed |
//! | `chat:history:ROOM` | the last `history` messages (JSON) | kept |
//! | `chat:rooms` | every room that had a member (for the sweep) | kept |
//! | `chat:instance` | the cluster's `instance` (see `welcome`) | kept |
//!
//! Names never hold a tab or a control character (`rules::check_name`), nor do ids and
//! node names, so `\t` separates.

use std::time::Duration;

/// How long a sign-out is remembered for the user's tabs on other nodes.
pub(super) const GONE_TTL: Duration = Duration::from_secs(60);

/// Takes a name for a user: free, or already this user's (its id before the tab), and
/// (re)sets its TTL. 1 if taken now, 0 if another user holds it, or if this user signed out
/// (a node's refresh racing the sign-out on another node must not take the name back).
pub(super) const CLAIM: &str = "if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local v = redis.call('GET', KEYS[1])
if v == false or string.sub(v, 1, #ARGV[3] + 1) == ARGV[3] .. '\t' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[2])
  return 1
end
return 0";

/// Frees a name if this user still holds it.
pub(super) const RELEASE: &str = "local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. '\t' then
  return redis.call('DEL', KEYS[1])
end
return 0";

// Room members are entries `ID\tNAME\tNODE`, one per node the user is in the room from (a
// user with tabs on two nodes has two), scored with their expiry. A user is in a room while
// it has an unexpired entry; its arrival and departure are news only when its first entry
// comes and its last one goes, which these scripts tell atomically.

/// Whether another unexpired entry (score >= ARGV[2]) of the same user as ARGV[1] is left.
pub(super) const OTHERS: &str = "local function others(key, entry, now)
  local id = string.match(entry, '^[^\t]*\t')
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, now, '+inf')) do
    if m ~= entry and string.sub(m, 1, #id) == id then return true end
  end
  return false
end
";

/// Adds or renews an entry (ARGV[1], expiry ARGV[3]): 1 if the user was not in the room.
pub(super) const ENTER: &str = "local new = redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
if new == 1 and not others(KEYS[1], ARGV[1], ARGV[2]) then return 1 end
return 0";

/// Removes an entry: 1 if it was the user's last one.
pub(super) const EXIT: &str = "if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if others(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
return 1";

/// Removes an entry if its expiry is past (its node stopped renewing it): 1 if this call
/// removed it and it was the user's last one.
pub(super) const EXPIRE: &str = "local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) > tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
if others(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
return 1";

/// `CLAIM` for one user, by its hash `sha` if it is loaded, else by its text.
pub(super) fn claim<'p>(
    p: &'p mut redis::Pipeline,
    sha: Option<&str>,
    id: &str,
    name: &str,
    ttl: Duration,
) -> &'p mut redis::Pipeline {
    match sha {
        Some(sha) => p.cmd("EVALSHA").arg(sha),
        None => p.cmd("EVAL").arg(CLAIM),
    }
    .arg(3)
    .arg(name_key(name))
    .arg(format!("chat:user:{id}"))
    .arg(format!("chat:gone:{id}"))
    .arg(member(id, name))
    .arg(ms(ttl))
    .arg(id)
    .arg(name)
}

pub(super) fn session<'p>(
    p: &'p mut redis::Pipeline,
    token: &str,
    id: &str,
    name: &str,
    ttl: Duration,
) -> &'p mut redis::Pipeline {
    p.cmd("SET")
        .arg(format!("chat:session:{token}"))
        .arg(member(id, name))
        .arg("PX")
        .arg(ms(ttl))
}

pub(super) fn name_key(name: &str) -> String {
    format!("chat:name:{}", name.to_lowercase())
}

pub(super) fn members_key(room: &str) -> String {
    format!("chat:members:{room}")
}

pub(super) fn history_key(room: &str) -> String {
    format!("chat:history:{room}")
}

fn member(id: &str, name: &str) -> String {
    format!("{id}\t{name}")
}

/// A room member entry `ID\tNAME\tNODE` → `(ID, NAME)`.
pub(super) fn split_entry(v: &str) -> Option<(String, String)> {
    let mut parts = v.splitn(3, '\t');
    Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
}

/// `ID\tNAME` → `(ID, NAME)`.
pub(super) fn split(v: &str) -> Option<(String, String)> {
    v.split_once('\t')
        .map(|(id, name)| (id.to_owned(), name.to_owned()))
}

pub(super) fn ms(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}
