//! Laravel's `redis` broadcaster on the fleet ([`super::laravel`]'s I/O shell): each broadcast
//! on a configured channel is published once, by whichever node claims it first
//! ([`Backplane::submit_once`]), to the hub topic of the Socket.IO room of the main namespace
//! named by the channel ([`crate::socketio::room_topic`]: the channel's own name for every
//! channel Laravel makes). So every node delivers it once, in order and kept in history, to
//! that room's Socket.IO sockets as laravel-echo-server did (event = the Laravel event,
//! arguments `(channel, data)`, which Laravel Echo's socket.io connector reads), except the
//! socket in `socket` (`toOthers()`), and to the topic's subscribers on every other transport.
//!
//! Channels are subscribed with Laravel's Redis key prefix in front (`prefix`: Laravel's
//! `database.redis.options.prefix`, which its broadcaster puts before every channel name):
//! `SUBSCRIBE` for a name, `PSUBSCRIBE` for a prefix (`private-*`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::backplane::{Backplane, BackplaneError, Listener, Subscriptions};
use super::keys::{glob_escape, Keys};
use super::laravel::{self, ChannelSpec, Occurrences};
use crate::hub::MessageId;
use crate::socketio::room_topic;
use crate::sync::lock;

/// How long a node remembers a broadcast to tell its copies apart, and how long the claim of
/// each copy stays in Redis: far longer than any two nodes' receipt of one message can differ.
pub const CLAIM_WINDOW: Duration = Duration::from_secs(30);

/// `cluster.laravel`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaravelConfig {
    /// Channels (names, or prefixes ending in `*`), as Laravel names them.
    pub channels: Vec<String>,
    /// Laravel's Redis key prefix, in front of every channel it publishes on.
    pub prefix: String,
}

struct Bridge {
    backplane: Backplane,
    keys: Keys,
    config: LaravelConfig,
    occurrences: Mutex<Occurrences>,
}

/// Subscribes `backplane` to `config`'s channels and publishes their broadcasts to the hub,
/// once for the fleet.
pub fn start(backplane: &Backplane, key_prefix: &str, config: LaravelConfig) {
    let subscriptions = subscriptions(&config);
    let bridge = Bridge {
        backplane: backplane.clone(),
        keys: Keys::new(key_prefix),
        config,
        occurrences: Mutex::new(Occurrences::new(CLAIM_WINDOW)),
    };
    backplane.listen(subscriptions, Arc::new(bridge));
}

/// The Redis subscriptions of `config`'s channels.
pub fn subscriptions(config: &LaravelConfig) -> Subscriptions {
    let mut s = Subscriptions::default();
    for spec in &config.channels {
        match laravel::channel_spec(spec) {
            Some(ChannelSpec::Exact(name)) => s.channels.push(format!("{}{name}", config.prefix)),
            Some(ChannelSpec::Prefix(stem)) => s.patterns.push(format!(
                "{}*",
                glob_escape(&format!("{}{stem}", config.prefix))
            )),
            None => {
                tracing::warn!(channel = %spec, "laravel: channel ignored (a name, or a prefix ending in *)")
            }
        }
    }
    s
}

impl Listener for Bridge {
    fn on_message(&self, channel: &[u8], message: &[u8]) {
        let b = match laravel::decode(channel, message, &self.config.prefix) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(channel = %String::from_utf8_lossy(channel), error = %e, "laravel: message ignored");
                return;
            }
        };
        // A pattern's stem was escaped, so this only refuses a channel without the prefix.
        if !laravel::listens_to(&self.config.channels, &b.channel) {
            return;
        }
        let topic = room_topic("/", &b.channel);
        let digest = laravel::digest(channel, message);
        let copy = lock(&self.occurrences).next(&digest, Instant::now());
        let claim = self.keys.claim(&topic, &digest, copy);
        let sent = self.backplane.submit_once(
            claim,
            CLAIM_WINDOW,
            &topic,
            MessageId::generate(),
            Arc::new(b.to_payload()),
        );
        match sent {
            Ok(pending) => {
                let (channel, event) = (b.channel, b.event);
                tokio::spawn(async move {
                    match pending.await {
                        Ok(_) | Err(BackplaneError::PublishedElsewhere) => {}
                        Err(e) => not_delivered(&channel, &event, &e),
                    }
                });
            }
            Err(e) => not_delivered(&b.channel, &b.event, &e),
        }
    }
}

/// Says that a broadcast was lost (Redis unreachable, or the script failed): never silently.
fn not_delivered(channel: &str, event: &str, e: &BackplaneError) {
    tracing::warn!(channel = %channel, event = %event, error = %e, "laravel: broadcast not delivered");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_subscribed_with_laravels_prefix() {
        let config = LaravelConfig {
            channels: vec!["orders".into(), "private-*".into(), "*".into()],
            prefix: "app[1]_".into(),
        };
        let s = subscriptions(&config);
        assert_eq!(s.channels, vec!["app[1]_orders".to_string()]);
        assert_eq!(
            s.patterns,
            vec![
                "app\\[1\\]_private-*".to_string(),
                "app\\[1\\]_*".to_string()
            ]
        );
    }
}
