//! The Lua scripts that are the only writers and readers of a topic's keys
//! ([`super::keys`]). Each runs atomically in Redis: that is what gives the fleet one
//! (epoch, seq) per topic. They are sent with `EVALSHA`, and with `EVAL` when Redis answers
//! `NOSCRIPT` (after a restart or `SCRIPT FLUSH`), which also caches them again.

use redis::Script;

/// **Publish.** `KEYS = [meta, log]`,
/// `ARGV = [channel, candidate_epoch, body, max_len, max_bytes, ttl_ms]`.
///
/// 1. `topic_epoch` (see [`NEW_EPOCH`]): the topic's epoch; if it has none (new, expired, or
///    Redis lost its data), a new one and an empty log.
/// 2. `seq = HINCRBY meta seq 1`.
/// 3. Frame = `"hub1 " .. epoch .. ":" .. seq .. "\n" .. body`; `RPUSH log frame`.
/// 4. Trims the log from the front while it holds more than `max_len` frames or more than
///    `max_bytes` bytes (the hub's `history_len` and `history_max_bytes`; a frame larger than
///    `max_bytes` is dropped at once, as in the local hub).
/// 5. `PEXPIRE`s both keys to `ttl_ms` when it is positive (an idle topic's history goes, and its
///    next publish starts a new epoch).
/// 6. `PUBLISH channel frame`.
///
/// Returns `[epoch, seq]`.
pub const PUBLISH: &str = concat!(
    include_str!("new_epoch.lua"),
    include_str!("publish.lua"),
    "return publish_frame()\n"
);

/// **Publish once for the fleet.** `KEYS = [meta, log, claim]`, `ARGV` as [`PUBLISH`]'s then
/// `claim_ttl_ms`.
///
/// For a message every node receives and only one may publish (a Laravel broadcast, which
/// reaches each node's subscription): `SET claim 1 NX PX claim_ttl_ms` first; the node that
/// sets it runs [`PUBLISH`]'s steps in the same atomic step and gets `[epoch, seq]`, the others
/// get nil and publish nothing. Claim and publish being one step keeps the order: a node
/// handles its messages in order, so a message is published (by whichever node) before any
/// node can publish the one after it. The claim key shares the topic's hash tag
/// ([`super::keys::Keys::claim`]), so the script stays in one Redis Cluster slot.
pub const PUBLISH_ONCE: &str = concat!(
    include_str!("new_epoch.lua"),
    include_str!("publish.lua"),
    "if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[7]) then return false end\n",
    "return publish_frame()\n"
);

/// **Read.** `KEYS = [meta, log]`,
/// `ARGV = [candidate_epoch, since_epoch, since_seq, mode, ttl_ms]`, `mode` = `resume` or
/// `backfill`; `since_epoch` empty: just the head.
///
/// Creates the topic like the publish script when it has no epoch (so a joining client always
/// gets a position that the next publish continues), then returns `[epoch, seq, frames]`:
/// - `since` of the current epoch and covered by the log: the frames after it;
/// - `resume` mode and `since` not covered (older than the log, another epoch, or ahead of
///   `seq`): no frames (the client gets a reset; nothing is sent for nothing);
/// - `backfill` mode and not covered: every frame the log holds (the node declares a reset up
///   to just before the first and delivers the rest).
pub const READ: &str = concat!(
    include_str!("new_epoch.lua"),
    r#"
local epoch, made = topic_epoch(ARGV[1])
if made then
  local ttl = tonumber(ARGV[5])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq'))
if ARGV[2] == '' then return {epoch, seq, {}} end
local len = redis.call('LLEN', KEYS[2])
local first = seq - len + 1
local start = nil
if ARGV[2] == epoch then
  local want = tonumber(ARGV[3]) + 1
  if want > seq then return {epoch, seq, {}} end
  if want >= first then start = want - first end
end
if start == nil then
  if ARGV[4] ~= 'backfill' then return {epoch, seq, {}} end
  start = 0
end
return {epoch, seq, redis.call('LRANGE', KEYS[2], start, -1)}
"#
);

/// What both scripts start with: `topic_epoch`, the topic's epoch, made when it has none (and
/// its log emptied), by `new_epoch`: the Redis server's clock in milliseconds (11 hex
/// digits, 44 bits) followed by the last 5 hex digits (20 bits) of the caller's random
/// candidate. One clock for the whole fleet, so a later incarnation of a topic always has a
/// greater epoch (the [`Cursor`](super::cursor::Cursor) relies on it to drop late frames of an
/// older one); the random part keeps two incarnations made in one millisecond apart, and epochs
/// unguessable enough for the hub's purpose (telling incarnations apart, not secrecy). Redis
/// allows `TIME` before writes in scripts since 5.0 (effects replication).
pub const NEW_EPOCH: &str = include_str!("new_epoch.lua");

/// A script and its SHA1, computed once.
pub struct Lua {
    pub(crate) source: &'static str,
    pub(crate) sha: String,
}

impl Lua {
    /// `source` with its hash.
    pub fn new(source: &'static str) -> Self {
        Lua {
            source,
            sha: Script::new(source).get_hash().to_string(),
        }
    }
}
