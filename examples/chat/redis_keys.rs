//! The chat's keys in Redis, their values, and the Lua scripts that change them atomically
//! (used by `cluster.rs`):
//!
//! | key | what | lifetime |
//! | --- | --- | --- |
//! | `chat:name:LOWER` | `ID\tNAME`: who holds a name | `presence_ttl`, refreshed |
//! | `chat:user:ID` | the user's name (a DM by id from another node) | `presence_ttl`, refreshed |
//! | `chat:present:ID` | sorted set of the nodes the user has tabs on, score = expiry (ms) | `presence_ttl`, refreshed |
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

use super::super::rules::now_ms;

/// How long a sign-out is remembered for the user's tabs on other nodes.
pub(super) const GONE_TTL: Duration = Duration::from_secs(60);

/// Takes a name for a user: free, or already this user's (its id before the tab), and
/// (re)sets its TTL, and marks the user present on this node (ARGV[6]) until ARGV[5]. 1 if
/// taken now, 0 if another user holds it, or if this user signed out (a node's refresh
/// racing the sign-out on another node must not take the name back).
pub(super) const CLAIM: &str = "if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local v = redis.call('GET', KEYS[1])
if v == false or string.sub(v, 1, #ARGV[3] + 1) == ARGV[3] .. '\t' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[2])
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[6])
  redis.call('PEXPIRE', KEYS[4], ARGV[2])
  return 1
end
return 0";

/// A user by id (KEYS[1], `chat:user:ID`) or by name (KEYS[2], `chat:name:LOWER`) who is
/// present on another node than ARGV[3] (an unexpired entry, score >= ARGV[2], in its
/// `chat:present:ID`): `ID\tNAME`, or false. The name and `chat:user:ID` outlive the user's
/// last tab by up to `presence_ttl` (the node that saw it go cannot know of tabs elsewhere),
/// so they alone do not say the user is there. (`chat:present:ID` is known only once the id
/// is: the script builds it, fine on a single Redis.)
pub(super) const FIND: &str = "local id, name
local n = redis.call('GET', KEYS[1])
if n then
  id, name = ARGV[1], n
else
  local v = redis.call('GET', KEYS[2])
  if not v then return false end
  id, name = string.match(v, '^([^\t]*)\t(.*)$')
  if not id then return false end
end
for _, node in ipairs(redis.call('ZRANGEBYSCORE', 'chat:present:' .. id, ARGV[2], '+inf')) do
  if node ~= ARGV[3] then return id .. '\t' .. name end
end
return false";

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
    node: &str,
) -> &'p mut redis::Pipeline {
    match sha {
        Some(sha) => p.cmd("EVALSHA").arg(sha),
        None => p.cmd("EVAL").arg(CLAIM),
    }
    .arg(4)
    .arg(name_key(name))
    .arg(format!("chat:user:{id}"))
    .arg(format!("chat:gone:{id}"))
    .arg(present_key(id))
    .arg(member(id, name))
    .arg(ms(ttl))
    .arg(id)
    .arg(name)
    .arg(now_ms() + ms(ttl))
    .arg(node)
}

/// The nodes a user has tabs on (see `CLAIM`, `FIND`).
pub(super) fn present_key(id: &str) -> String {
    format!("chat:present:{id}")
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
