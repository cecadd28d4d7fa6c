//! Names in Redis: the hub's keys and channels under the fleet's key prefix.
//!
//! Layout, for prefix `P` (default `socket.io`, shared with socket.io's adapter channels, which
//! use `P#`, `P-request#` and `P-response#` and so never collide with `P:hub:`):
//!
//! | name | kind | holds |
//! |---|---|---|
//! | `{P:hub:<topic>}:meta` | hash | `epoch` (16 hex digits), `seq` (last assigned), `bytes` (size of the log) |
//! | `{P:hub:<topic>}:log` | list | the last frames (see [`super::frame`]), oldest first, ending at `seq` |
//! | `P:hub:<topic>` | channel | every frame as it is appended |
//! | `P:node:<tag>` | string | where the node whose sids carry `tag` takes forwarded requests ([`super::directory`]) |
//! | `P:sio-session:<pid>` | hash | a Socket.IO session another node may recover ([`super::sessions`]) |
//!
//! Nodes `PSUBSCRIBE P:hub:*` (the prefix glob-escaped). The key names open with a brace so
//! that both keys of a topic hash to one Redis Cluster slot (the publish script touches both):
//! the hash tag runs from that brace to the first `}`, is never empty (`:hub:` is in it), and
//! whatever the topic or prefix contain, the two names agree up to their suffix, so their tags
//! are equal.

/// Default key prefix (what `@socket.io/redis-adapter` uses).
pub const DEFAULT_PREFIX: &str = "socket.io";

/// The names of one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    channel_prefix: String,
}

impl Keys {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
            channel_prefix: format!("{prefix}:hub:"),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The topic's metadata hash.
    pub fn meta(&self, topic: &str) -> String {
        format!("{{{}{topic}}}:meta", self.channel_prefix)
    }

    /// The topic's history list.
    pub fn log(&self, topic: &str) -> String {
        format!("{{{}{topic}}}:log", self.channel_prefix)
    }

    /// The key that says "published already" for the `occurrence`-th copy of message `digest`
    /// on `topic` ([`super::script::PUBLISH_ONCE`]): in the topic's hash tag, so the script's
    /// three keys share one Redis Cluster slot.
    pub fn claim(&self, topic: &str, digest: &str, occurrence: u64) -> String {
        format!(
            "{{{}{topic}}}:once:{digest}:{occurrence}",
            self.channel_prefix
        )
    }

    /// The channel the topic's frames are published on.
    pub fn channel(&self, topic: &str) -> String {
        format!("{}{topic}", self.channel_prefix)
    }

    /// Where the node tagged `tag` ([`crate::engineio::node_tag`]) is reached.
    pub fn node(&self, tag: &str) -> String {
        format!("{}:node:{tag}", self.prefix)
    }

    /// The record of the Socket.IO session with private id `pid`.
    pub fn sio_session(&self, pid: &str) -> String {
        format!("{}:sio-session:{pid}", self.prefix)
    }

    /// The pattern that matches every topic's channel (glob characters of the prefix escaped).
    pub fn pattern(&self) -> String {
        let mut p = glob_escape(&self.channel_prefix);
        p.push('*');
        p
    }

    /// The topic a channel belongs to, if it is one of ours.
    pub fn topic_of<'a>(&self, channel: &'a [u8]) -> Option<&'a str> {
        let rest = channel.strip_prefix(self.channel_prefix.as_bytes())?;
        std::str::from_utf8(rest).ok()
    }
}

/// Escapes Redis glob metacharacters (`* ? [ ] \`) so that `s` matches only itself.
pub fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = Keys::new(DEFAULT_PREFIX);
        assert_eq!(k.meta("sio:/chat:r1"), "{socket.io:hub:sio:/chat:r1}:meta");
        assert_eq!(k.log("sio:/chat:r1"), "{socket.io:hub:sio:/chat:r1}:log");
        assert_eq!(k.channel("orders"), "socket.io:hub:orders");
        assert_eq!(
            k.claim("orders", "ab12", 2),
            "{socket.io:hub:orders}:once:ab12:2"
        );
        assert_eq!(k.pattern(), "socket.io:hub:*");
        assert_eq!(k.topic_of(b"socket.io:hub:orders"), Some("orders"));
        assert_eq!(k.topic_of(b"socket.io#/#"), None);
        assert_eq!(k.topic_of(b"socket.io:hub:\xff"), None);
        assert_eq!(k.node("MyeAGyE3"), "socket.io:node:MyeAGyE3");
        assert_eq!(k.sio_session("p1"), "socket.io:sio-session:p1");
    }

    #[test]
    fn the_pattern_matches_only_the_prefix_itself() {
        let k = Keys::new("a*b[1]?\\");
        assert_eq!(k.pattern(), "a\\*b\\[1\\]\\?\\\\:hub:*");
    }

    /// Redis Cluster hashes the text between the first `{` and the next `}`: both keys of a
    /// topic must give the same tag whatever the topic holds.
    #[test]
    fn both_keys_of_a_topic_share_their_hash_tag() {
        fn tag(key: &str) -> &str {
            let Some(open) = key.find('{') else {
                return key;
            };
            match key[open + 1..].find('}') {
                Some(0) | None => key,
                Some(len) => &key[open + 1..open + 1 + len],
            }
        }
        for prefix in ["p", "", "{", "a}b"] {
            let k = Keys::new(prefix);
            for topic in ["plain", "a{b", "a}b", "{x}", "", "}{", "}"] {
                let (meta, log) = (k.meta(topic), k.log(topic));
                assert_eq!(tag(&meta), tag(&log), "{meta:?} {log:?}");
                assert_eq!(tag(&meta), tag(&k.claim(topic, "d", 1)), "{meta:?}");
                assert_ne!(tag(&meta), meta, "a tag at all: {meta:?}");
            }
        }
    }
}
