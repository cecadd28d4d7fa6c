//! Built-in namespace behaviours, so a gateway can serve Socket.IO apps
//! with no server code: chosen per namespace in configuration, built only
//! on the public library API.
//!
//! # Wire contract
//!
//! * `relay`: every event a client sends (other than `join`/`leave` when
//!   `client_rooms` is on) is broadcast, same name and arguments (binary
//!   included), to the other sockets of the sender's rooms, never back to
//!   the sender. Without client rooms, or while the sender has joined none,
//!   that is the whole namespace. If the client asked for an
//!   acknowledgement it gets `[{"seq":N}]`, N being the relayed message's
//!   sequence number in its hub topic (the namespace topic, or the single
//!   room); relayed to several rooms, `[{"seq":N,"rooms":{"a":N,"b":M}}]`
//!   with N the first room's (rooms in sorted order). A failed relay acks
//!   `[{"error":"…"}]` (in a fleet while Redis is unreachable: `"the cluster
//!   is unavailable: …"`); without an ack id the failure is only logged.
//!   In a fleet the ack is sent once Redis has numbered the relay.
//! * `history: N`: a socket that connects first gets the last N events of
//!   the namespace topic (what was relayed or published namespace-wide),
//!   then live ones; a client room joined with `join` likewise replays its
//!   last N. From the hub's history, so it is bounded by the hub's limits.
//! * `client_rooms`: `42["join","room"]` / `42["leave","room"]` (with an
//!   ack id to get the answer) make the socket join or leave `room`; the ack
//!   is `[{"ok":true,"room":"room"}]` or `[{"ok":false,"room":…,"error":"…"}]`.
//!   Refused: a non-string or empty name, one longer than
//!   [`MAX_ROOM_NAME_LEN`] bytes, one shaped like a socket id (it could be
//!   another socket's private room), and joins beyond [`MAX_CLIENT_ROOMS`].
//!   A room the policy makes private (`private-*`, `presence-*` by default,
//!   [`crate::access`]) is joined only with the app's word, asked with the
//!   room as Laravel's `channel_name` and the socket id as `socket_id`; the
//!   ack then comes once the app has answered (`error` is the app's reason
//!   when it refuses), and at most [`MAX_PENDING_JOINS`] such joins wait at
//!   once. A refused socket is not in the room: it gets none of its history
//!   and none of its live events.
//! * Relaying into a room is a client publishing to its topic, so "the
//!   sender's rooms" above are those the policy opens to clients
//!   (`realtime.policy.client_publish`): a room the sender only listens to
//!   (the app's `announcements`, a private room the app put it in) never
//!   gets a client's event. A sender in no such room relays to the whole
//!   namespace, which stays among the namespace's sockets (`relay` itself
//!   allows that).
//! * Anything published to a room's topic (the app's publish API, another
//!   transport) reaches the room's sockets as an event in any case.
//! * Relayed events are rate-limited per socket ([`RelayRate`], a token
//!   bucket): a socket that sends faster is disconnected (`41`, the client's
//!   `io server disconnect`), so one client cannot flood its peers' queues
//!   until the hub drops *them* as slow consumers. Node's socket.io has no
//!   limit of its own; this is what the usual middleware
//!   (`rate-limiter-flexible` per socket) does, minus the grace.
//! * A room a client joins that does not exist yet counts against its
//!   address's new-topic budget ([`crate::hub::Hub::admit_new_topic`]).
//! * A presence room (`presence-*`, [`crate::access::presence`]) joined with
//!   a member (the app's `channel_data`, else the connect answer's user)
//!   makes the socket one of the room's tabs: the join ack carries the member
//!   list, `[{"ok":true,"room":…,"members":[{"user_id":…,"user_info":…}]}]`,
//!   and the room hears `presence:joining` / `presence:leaving` with the
//!   member when a user's first tab arrives and its last one goes (`leave`,
//!   or the socket's end).
//! * `echo`: Laravel Echo's protocol, as laravel-echo-server spoke it (see
//!   the `echo` module).

use std::collections::BTreeSet;
use std::future::ready;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::client_rooms::{
    check_room_name, enter_room, leave_room, left_every_room, room_for_one_more,
};
pub use super::client_rooms::{MAX_CLIENT_ROOMS, MAX_PENDING_JOINS, MAX_ROOM_NAME_LEN};
use super::echo;
use super::error::EmitError;
use super::event::{Args, Event};
use super::namespace::Namespace;
use super::server::SocketIo;
use super::state::{AckSender, Socket};
use crate::access::presence::members_json;
use crate::access::Grant;
use crate::hub::Position;

/// Events per second one socket may relay.
pub const DEFAULT_RELAY_PER_SECOND: u32 = 50;
/// Events one socket may relay in a burst before the rate applies.
pub const DEFAULT_RELAY_BURST: u32 = 100;

/// How fast one socket may relay: `per_second` sustained, `burst` at once.
///
/// Defaults: 50/s and a burst of 100. A chat client sends a few events a
/// second, a cursor-sharing or game client up to ~30; 100 at once stays far
/// below a receiver's queues (1024 messages in the hub and in Engine.IO), so
/// one sender cannot get the other sockets dropped as slow consumers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayRate {
    pub per_second: u32,
    pub burst: u32,
}

impl Default for RelayRate {
    fn default() -> Self {
        RelayRate {
            per_second: DEFAULT_RELAY_PER_SECOND,
            burst: DEFAULT_RELAY_BURST,
        }
    }
}

/// A token bucket of [`RelayRate`], one per socket.
#[derive(Debug)]
pub struct RelayBucket {
    rate: RelayRate,
    tokens: f64,
    at: Instant,
}

impl RelayBucket {
    pub fn new(rate: RelayRate, now: Instant) -> RelayBucket {
        RelayBucket {
            rate,
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    /// Takes one token; false when the socket is over its rate.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(self.rate.per_second))
            .min(f64::from(self.rate.burst));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What a namespace does on its own. All off by default (the namespace then
/// accepts connections and delivers what the app publishes to its rooms).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamespaceBehaviour {
    /// Broadcast client events to the other sockets.
    pub relay: bool,
    /// Events replayed to a socket when it connects (or joins a room).
    pub history: usize,
    /// Let clients `join`/`leave` rooms.
    pub client_rooms: bool,
    /// How fast one socket may relay (see [`RelayRate`]); whispers too.
    pub relay_rate: RelayRate,
    /// Speak Laravel Echo's protocol (laravel-echo-server's): `subscribe` /
    /// `unsubscribe` channels with the app's word, `client event` whispers,
    /// presence lists, and every room's messages delivered as `(event,
    /// channel, data)`.
    pub echo: bool,
}

/// Registers namespace `path` with `behaviour` (replacing the connect
/// handler of an existing one).
pub fn install_behaviour(io: &SocketIo, path: &str, behaviour: NamespaceBehaviour) -> Namespace {
    let ns = io.namespace(path, move |socket| {
        attach(&socket, behaviour);
        ready(Ok(()))
    });
    ns.set_connect_history(behaviour.history);
    ns.set_echo(behaviour.echo);
    ns
}

/// Installs `behaviour`'s handlers on one socket (for apps that mix it
/// with their own connect logic).
pub fn attach(socket: &Socket, behaviour: NamespaceBehaviour) {
    if behaviour.client_rooms {
        let history = behaviour.history;
        let pending = Arc::new(AtomicUsize::new(0));
        socket.on("join", move |socket, event, ack| {
            client_join(socket, &event, history, ack, &pending);
        });
        socket.on("leave", |socket, event, ack| {
            let answer = match room_arg(&event) {
                Ok(room) => {
                    leave_room(socket, room);
                    json!({"ok": true, "room": room})
                }
                Err(error) => refusal(&event, error),
            };
            reply(ack, answer);
        });
    }
    if behaviour.echo {
        let rate = behaviour.relay_rate;
        let bucket = Mutex::new(RelayBucket::new(rate, Instant::now()));
        echo::attach(socket, move |socket, ack| {
            over_rate(socket, &bucket, rate, ack)
        });
    }
    if behaviour.client_rooms || behaviour.echo {
        socket.on_disconnect(|socket, _| left_every_room(socket));
    }
    if behaviour.relay {
        let client_rooms = behaviour.client_rooms;
        let rate = behaviour.relay_rate;
        let bucket = Mutex::new(RelayBucket::new(rate, Instant::now()));
        socket.on_fallback(move |socket, event, mut ack| {
            if over_rate(socket, &bucket, rate, &mut ack) {
                return;
            }
            relay(socket, event, ack, client_rooms)
        });
    }
}

/// Takes one of the socket's relay tokens. A socket over its rate is
/// disconnected (the sender goes, not its peers: it is the one over its
/// budget), and told why if it asked for an ack; true then.
fn over_rate(
    socket: &Socket,
    bucket: &Mutex<RelayBucket>,
    rate: RelayRate,
    ack: &mut Option<AckSender>,
) -> bool {
    if crate::sync::lock(bucket).take(Instant::now()) {
        return false;
    }
    tracing::warn!(
        socket = %socket.id(),
        nsp = %socket.nsp(),
        client = ?socket.handshake().client,
        per_second = rate.per_second,
        burst = rate.burst,
        "socket.io relay rate exceeded: socket disconnected"
    );
    reply(
        ack.take(),
        json!({"error": format!("relay rate exceeded ({} events/s, burst {}): disconnected", rate.per_second, rate.burst)}),
    );
    socket.disconnect();
    true
}

fn reply(ack: Option<AckSender>, answer: Value) {
    if let Some(ack) = ack {
        let _ = ack.send(Args::from(vec![answer]));
    }
}

fn room_arg(event: &Event) -> Result<&str, &'static str> {
    match event.args.values.first() {
        Some(Value::String(room)) => check_room_name(room).map(|()| room.as_str()),
        _ => Err("room name must be a string"),
    }
}

fn refusal(event: &Event, error: &str) -> Value {
    let mut map = Map::new();
    map.insert("ok".into(), Value::Bool(false));
    if let Some(room @ Value::String(_)) = event.args.values.first() {
        map.insert("room".into(), room.clone());
    }
    map.insert("error".into(), Value::from(error));
    Value::Object(map)
}

/// A client's `join`: the room's name and the socket's room count first,
/// then the policy; a private room waits for the app's word in a task of its
/// own (the socket's other events go on meanwhile) and is acked once the app
/// has answered.
fn client_join(
    socket: &Socket,
    event: &Event,
    history: usize,
    ack: Option<AckSender>,
    pending: &Arc<AtomicUsize>,
) {
    let room = match room_arg(event) {
        Ok(room) => room,
        Err(error) => return reply(ack, refusal(event, error)),
    };
    if !room_for_one_more(socket, room) {
        return reply(ack, refusal(event, "too many rooms"));
    }
    if let Some(answer) = socket.may_join_now(room) {
        return match answer {
            Ok(grant) => join(socket, room, history, grant, ack),
            Err(refused) => reply(ack, refusal_of(room, &refused.to_string())),
        };
    }
    if pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_JOINS {
        pending.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(socket = %socket.id(), room = %room, "socket.io join refused: too many joins waiting for the app");
        return reply(ack, refusal_of(room, "too many joins waiting for the app"));
    }
    let asked = socket.ask_to_join(room);
    let (socket, room, pending) = (socket.clone(), room.to_owned(), Arc::clone(pending));
    tokio::spawn(async move {
        let answer = asked.await;
        pending.fetch_sub(1, Ordering::AcqRel);
        match answer {
            Ok(grant) => join(&socket, &room, history, grant, ack),
            Err(refused) => reply(ack, refusal_of(&room, &refused.to_string())),
        }
    });
}

fn refusal_of(room: &str, error: &str) -> Value {
    json!({"ok": false, "room": room, "error": error})
}

/// Joins a room the socket may join (with `grant`, the app's word on it), and
/// acks it: in a presence room with the member list, sent before any news of
/// the room's members can reach the socket.
fn join(socket: &Socket, room: &str, history: usize, grant: Grant, ack: Option<AckSender>) {
    let mut ack = ack;
    let entered = enter_room(socket, room, history, grant, |members| {
        let mut answer = json!({"ok": true, "room": room});
        if let Some(members) = members {
            answer["members"] = members_json(members);
        }
        reply(ack.take(), answer);
        Ok(())
    });
    if let Err(e) = entered {
        reply(ack.take(), refusal_of(room, &e.reason));
    }
}

fn relay(socket: &Socket, event: Event, ack: Option<AckSender>, client_rooms: bool) {
    // Into a room, a relay is a client publishing to the room's topic: only
    // rooms the policy opens to clients count. A sender in none of those
    // relays to the whole namespace, which stays among the namespace's
    // sockets (its `relay` setting allows that).
    let rooms: BTreeSet<String> = if client_rooms {
        let mut rooms = socket.rooms();
        rooms.remove(socket.id());
        rooms.retain(|room| socket.access().publish(room).is_ok());
        rooms
    } else {
        BTreeSet::new()
    };
    let mut sending = socket
        .broadcast()
        .to_rooms(rooms.iter().cloned())
        .emit(&event.name, event.args);
    // On a single node the relay is done already; in a fleet the ack waits for Redis (the
    // relay is sent, in order, either way).
    match futures_util::FutureExt::now_or_never(&mut sending) {
        Some(result) => relayed(socket, ack, &rooms, result),
        None => {
            let socket = socket.clone();
            tokio::spawn(async move {
                let result = sending.await;
                relayed(&socket, ack, &rooms, result);
            });
        }
    }
}

/// Acks a relay with its position, or with why it was not relayed (without an ack id, the
/// refusal is logged: Socket.IO has no other way to tell the sender).
fn relayed(
    socket: &Socket,
    ack: Option<AckSender>,
    rooms: &BTreeSet<String>,
    result: Result<Vec<Position>, EmitError>,
) {
    if let (None, Err(e)) = (&ack, &result) {
        tracing::warn!(socket = %socket.id(), nsp = %socket.nsp(), error = %e, "socket.io relay not sent");
    }
    let answer = match result {
        Ok(positions) => {
            let seq = positions.first().map_or(0, |p| p.seq);
            if rooms.len() > 1 {
                let per_room: Map<String, Value> = rooms
                    .iter()
                    .zip(&positions)
                    .map(|(room, p)| (room.clone(), Value::from(p.seq)))
                    .collect();
                json!({"seq": seq, "rooms": per_room})
            } else {
                json!({"seq": seq})
            }
        }
        Err(e) => json!({"error": e.to_string()}),
    };
    reply(ack, answer);
}

#[cfg(test)]
mod relay_rate_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let rate = RelayRate {
            per_second: 10,
            burst: 3,
        };
        let t0 = Instant::now();
        let mut b = RelayBucket::new(rate, t0);
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0), "the burst is spent");
        assert!(
            b.take(t0 + Duration::from_millis(100)),
            "10/s: one per 100 ms"
        );
        assert!(!b.take(t0 + Duration::from_millis(150)));
        // A long pause refills the burst, not more.
        let later = t0 + Duration::from_secs(60);
        assert!(b.take(later) && b.take(later) && b.take(later));
        assert!(!b.take(later));
    }
}
