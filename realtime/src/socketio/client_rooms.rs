//! Rooms a client chooses (the generic `join`, Echo's `subscribe`): the
//! limits on their names and number, and entering and leaving them, which in
//! a presence room (`presence-*`) also makes the socket one of the room's
//! tabs ([`crate::access::presence`]). Built on the public socket API only,
//! below the behaviours that use it.

use super::rooms::looks_like_id;
use super::state::Socket;
use crate::access::presence;
use crate::access::{Grant, Member};

/// Rooms a client may be in through `join` or Echo's `subscribe`: enough for any chat UI, small
/// enough that one client cannot make the hub track thousands of topics.
pub const MAX_CLIENT_ROOMS: usize = 64;

/// Longest room name a client may choose, in bytes: room names end up in
/// topic names, logs and every relayed message's routing.
pub const MAX_ROOM_NAME_LEN: usize = 128;

/// Joins of private rooms one socket may have waiting for the app's answer
/// at once: each is a round trip to the app, so one client cannot queue
/// thousands of them.
pub const MAX_PENDING_JOINS: usize = 8;

/// Whether a client may name `room`: not empty, not longer than
/// [`MAX_ROOM_NAME_LEN`], not shaped like a socket id (another socket's
/// private room) nor reserved.
pub(super) fn check_room_name(room: &str) -> Result<(), &'static str> {
    if room.is_empty() {
        Err("empty room name")
    } else if room.len() > MAX_ROOM_NAME_LEN {
        Err("room name too long")
    } else if looks_like_id(room) || crate::topics::is_reserved(room) {
        Err("reserved room name")
    } else {
        Ok(())
    }
}

/// Whether `socket` may be in one more room (its own room does not count).
pub(super) fn room_for_one_more(socket: &Socket, room: &str) -> bool {
    let rooms = socket.rooms();
    rooms.contains(room) || rooms.len() <= MAX_CLIENT_ROOMS
}

/// Why a socket that may join a room is not in it: its address's new-topic
/// budget, or the socket is gone. `status` is the HTTP status the other
/// transports would answer.
#[derive(Debug)]
pub(super) struct NotJoined {
    pub(super) status: u16,
    pub(super) reason: String,
}

impl NotJoined {
    pub(super) fn gone(reason: String) -> NotJoined {
        NotJoined {
            status: 503,
            reason,
        }
    }
}

/// Puts `socket` in `room`, which it may join (`grant`: the app's word on
/// it), first replaying up to `history` of its messages. A room nobody is in
/// yet is a new hub topic: it counts against the client address's new-topic
/// budget, as on every other transport. In a presence room the socket is one
/// of the room's tabs, as the member the grant (or the connect answer) names;
/// `welcome` then gets the member list (with the socket's member in it),
/// called right after the join under the presence lock, so nothing about the
/// room's members reaches the socket before it; elsewhere it gets `None`.
pub(super) fn enter_room(
    socket: &Socket,
    room: &str,
    history: usize,
    grant: Grant,
    welcome: impl FnOnce(Option<&[Member]>) -> Result<(), NotJoined>,
) -> Result<(), NotJoined> {
    let ns = socket.namespace();
    let topic = ns.room_topic(room);
    let client = socket.handshake().client;
    if let Err(e) = ns.hub().admit_new_topic(client, &topic) {
        tracing::warn!(socket = %socket.id(), room = %room, error = %e, "socket.io join refused");
        return Err(NotJoined {
            status: e.status().as_u16(),
            reason: e.to_string(),
        });
    }
    let join = || {
        socket
            .join_with_history(room, history)
            .map(|_| ())
            .map_err(|e| NotJoined::gone(e.to_string()))
    };
    if presence::is_presence(room) {
        let member = grant.member_for(socket.user());
        socket.access().presence().enter(
            ns.hub(),
            &topic,
            socket.subscriber_id(),
            member.as_ref(),
            |members| {
                join()?;
                welcome(Some(members))
            },
        )?;
    } else {
        join()?;
        welcome(None)?;
    }
    socket.keep_grant(room, grant);
    Ok(())
}

/// Takes `socket` out of `room` (and of its members, in a presence room);
/// whether it was in it.
pub(super) fn leave_room(socket: &Socket, room: &str) -> bool {
    exit_presence(socket, room);
    socket.leave(room)
}

/// The socket is gone: it leaves the members of every presence room it was in.
pub(super) fn left_every_room(socket: &Socket) {
    for room in socket.rooms() {
        exit_presence(socket, &room);
    }
}

/// The socket is no longer one of `room`'s tabs (nothing outside presence rooms).
fn exit_presence(socket: &Socket, room: &str) {
    if presence::is_presence(room) {
        let ns = socket.namespace();
        let topic = ns.room_topic(room);
        socket
            .access()
            .presence()
            .exit(ns.hub(), &topic, socket.subscriber_id());
    }
}
