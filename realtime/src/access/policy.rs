//! The topic policy: which topics anyone may subscribe to, which need the app's word, and which
//! a client connection may publish to. One policy for every transport, so a topic is as open
//! on SSE as it is on Socket.IO.
//!
//! Names are matched with patterns in which `*` stands for any run of characters (none
//! included) and everything else for itself: `private-*`, `presence-chat.*`, `orders`. The
//! defaults follow Laravel's naming ([`DEFAULT_PRIVATE`]): `private-*` and `presence-*` need
//! the app's word, every other name is public to subscribe, and no client publishes anywhere
//! ([`Policy::default`]); the app publishes through its own API whatever the policy says.
//!
//! The topics a transport keeps for itself (`sio:`, `ws:`, see [`crate::topics`]) are outside
//! the policy: no pattern can open them, so a pattern naming one is refused when it is built.

use crate::topics;

/// Laravel's private and presence channels (`Broadcast::channel` in `routes/channels.php`,
/// `PrivateChannel` and `PresenceChannel` in events): what an unchanged Laravel app expects to
/// be authorized through `/broadcasting/auth`.
pub const DEFAULT_PRIVATE: &[&str] = &["private-*", "presence-*"];

/// Laravel's presence channels: the app's answer for them names a member
/// ([`super::Member`]).
pub const PRESENCE_PREFIX: &str = "presence-";

/// Why a pattern cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("a pattern must not be empty")]
    Empty,
    #[error("{pattern:?} names topics starting with {prefix:?}, which belong to their transport and are never open to a client")]
    Reserved {
        pattern: String,
        prefix: &'static str,
    },
}

/// A topic name pattern: `*` is any run of characters, everything else itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    pub fn new(pattern: &str) -> Result<Pattern, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::Empty);
        }
        // A pattern whose fixed start is a reserved prefix could only ever match reserved
        // topics: say so rather than silently match nothing.
        let fixed = pattern.split('*').next().unwrap_or("");
        if let Some(prefix) = topics::RESERVED_PREFIXES
            .iter()
            .copied()
            .find(|p| fixed.starts_with(p))
        {
            return Err(PatternError::Reserved {
                pattern: pattern.to_string(),
                prefix,
            });
        }
        Ok(Pattern(pattern.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it matches every name (`*`, `**`).
    pub fn matches_everything(&self) -> bool {
        self.0.bytes().all(|b| b == b'*')
    }

    /// Whether `name` matches: the text before the first `*` starts it, the text after the
    /// last `*` ends it, and the pieces between appear in order without overlapping.
    pub fn matches(&self, name: &str) -> bool {
        let mut pieces = self.0.split('*');
        let first = pieces.next().unwrap_or("");
        let Some(mut rest) = name.strip_prefix(first) else {
            return false;
        };
        let pieces: Vec<&str> = pieces.collect();
        let Some((last, middle)) = pieces.split_last() else {
            // No `*` at all: the whole name.
            return rest.is_empty();
        };
        for piece in middle.iter().filter(|p| !p.is_empty()) {
            match rest.find(piece) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

/// Who may subscribe and who may publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Subscribing to a topic matching one of these needs the app's word.
    pub private: Vec<Pattern>,
    /// A client connection may publish to a topic matching one of these (`POST /p`, a
    /// `pubsub.v1` publish, a Socket.IO relay into a room).
    pub client_publish: Vec<Pattern>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            private: DEFAULT_PRIVATE
                .iter()
                .filter_map(|p| Pattern::new(p).ok())
                .collect(),
            client_publish: Vec::new(),
        }
    }
}

impl Policy {
    /// Nothing private and clients publish anywhere: the behaviour before there was a policy,
    /// for embedders that decide access themselves.
    pub fn open() -> Policy {
        Policy {
            private: Vec::new(),
            client_publish: Pattern::new("*").into_iter().collect(),
        }
    }

    /// Whether subscribing to `topic` needs the app's word.
    pub fn needs_app(&self, topic: &str) -> bool {
        self.private.iter().any(|p| p.matches(topic))
    }

    /// Whether a client connection may publish to `topic`. Reserved topics never.
    pub fn client_may_publish(&self, topic: &str) -> bool {
        !topics::is_reserved(topic) && self.client_publish.iter().any(|p| p.matches(topic))
    }

    /// Whether every topic needs the app's word.
    pub fn everything_private(&self) -> bool {
        self.private.iter().any(Pattern::matches_everything)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::new(s).expect("pattern")
    }

    #[test]
    fn stars_match_any_run_of_characters() {
        assert!(p("private-*").matches("private-user.42"));
        assert!(p("private-*").matches("private-"));
        assert!(!p("private-*").matches("privat-user"));
        assert!(!p("private-*").matches("a-private-user"));
        assert!(p("orders").matches("orders"));
        assert!(!p("orders").matches("orders2"));
        assert!(!p("orders").matches("order"));
        assert!(p("*").matches(""));
        assert!(p("*").matches("anything at all"));
        assert!(p("*.updates").matches("team.7.updates"));
        assert!(!p("*.updates").matches("team.7.updates.x"));
        assert!(p("team.*.chat").matches("team.7.chat"));
        assert!(p("team.*.chat").matches("team..chat"));
        assert!(!p("team.*.chat").matches("team.chat"));
        assert!(p("a*b*c").matches("abc"));
        assert!(p("a*b*c").matches("a-b-b-c"));
        assert!(!p("a*b*c").matches("acb"));
        // The pieces must not overlap: "ab" is one `a` and one `b`, not two `ab`s.
        assert!(!p("ab*ab").matches("ab"));
        assert!(p("ab*ab").matches("abab"));
        assert!(p("**").matches("x"));
        assert!(p("x**y").matches("xy"));
        // Multi-byte names are compared as text.
        assert!(p("chat-*").matches("chat-été"));
        assert!(p("*é").matches("café"));
    }

    #[test]
    fn patterns_that_name_reserved_topics_or_nothing_are_refused() {
        assert_eq!(Pattern::new(""), Err(PatternError::Empty));
        assert!(matches!(
            Pattern::new("sio:*"),
            Err(PatternError::Reserved { prefix: "sio:", .. })
        ));
        assert!(matches!(
            Pattern::new("ws:/ws:chat"),
            Err(PatternError::Reserved { prefix: "ws:", .. })
        ));
        // Only the fixed start counts: `*` may also match reserved names, which the policy
        // then never opens anyway.
        assert!(Pattern::new("*sio:").is_ok());
        assert!(p("*").matches_everything());
        assert!(!p("*a").matches_everything());
    }

    #[test]
    fn the_defaults_follow_laravel_naming() {
        let d = Policy::default();
        assert!(d.needs_app("private-user.1"));
        assert!(d.needs_app("presence-room.1"));
        assert!(!d.needs_app("orders"));
        assert!(!d.needs_app("privateer"));
        assert!(!d.client_may_publish("orders"));
        assert!(!d.client_may_publish("private-user.1"));
        assert!(!d.everything_private());
    }

    #[test]
    fn clients_publish_only_where_a_pattern_allows_and_never_to_reserved_topics() {
        let policy = Policy {
            private: vec![p("*")],
            client_publish: vec![p("chat-*"), p("*")],
        };
        assert!(policy.client_may_publish("chat-1"));
        assert!(policy.client_may_publish("news"));
        assert!(!policy.client_may_publish("sio:/"));
        assert!(!policy.client_may_publish("ws:/ws:chat"));
        assert!(policy.everything_private());
        let open = Policy::open();
        assert!(!open.needs_app("private-x"));
        assert!(open.client_may_publish("private-x"));
        assert!(!open.client_may_publish("sio:/chat"));
    }
}
