//! The fleet's Socket.IO sessions in Redis ([`SessionStore`]): what lets a client whose node
//! died resume on another node ([`crate::socketio::SessionRecord`]).
//!
//! A session is the hash `P:sio-session:<pid>` with `inc` (the incarnation that wrote it) and
//! `state` (the record's JSON). Writes run in order on one task ([`RedisSessions::start`]),
//! each one Lua script, conditional on the incarnation: a node whose socket was taken over by
//! another node (the client came back there) no longer writes over the new record, extends it
//! or deletes it. While a socket is connected, its node refreshes the record's TTL every third
//! of it (all of them in a few scripts per period), so a killed node's sessions stay
//! recoverable for at least two thirds of `max_disconnection_duration`, and at most all of it.
//! A write Redis did not take (the link was down) is tried again at the next refresh.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use redis::Value;
use tokio::sync::mpsc;

use super::backplane::Backplane;
use super::script::Lua;
use crate::socketio::{SessionRecord, SessionStore};

/// Writes the record unless another incarnation holds it (ARGV: incarnation, state, TTL in
/// ms, `1` to take over). 1 when written.
const SAVE: &str = concat!(
    "local cur = redis.call('HGET', KEYS[1], 'inc') ",
    "if cur and cur ~= ARGV[1] and ARGV[4] ~= '1' then return 0 end ",
    "redis.call('HSET', KEYS[1], 'inc', ARGV[1], 'state', ARGV[2]) ",
    "redis.call('PEXPIRE', KEYS[1], ARGV[3]) return 1"
);
/// Sets the record's TTL if the incarnation still holds it (ARGV: incarnation, TTL in ms).
const RELEASE: &str = concat!(
    "if redis.call('HGET', KEYS[1], 'inc') == ARGV[1] then ",
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
);
/// Deletes the record if the incarnation still holds it (ARGV: incarnation).
const REMOVE: &str = concat!(
    "if redis.call('HGET', KEYS[1], 'inc') == ARGV[1] then ",
    "return redis.call('DEL', KEYS[1]) end return 0"
);
/// Extends each record (KEYS) its incarnation (ARGV[i + 1]) still holds to the TTL (ARGV[1]);
/// returns how many.
const REFRESH: &str = concat!(
    "local n = 0 for i, k in ipairs(KEYS) do ",
    "if redis.call('HGET', k, 'inc') == ARGV[i + 1] then ",
    "redis.call('PEXPIRE', k, ARGV[1]) n = n + 1 end end return n"
);
/// The incarnation and state.
const LOAD: &str = "return redis.call('HMGET', KEYS[1], 'inc', 'state')";

/// Records refreshed per script run.
const REFRESH_BATCH: usize = 256;

enum Op {
    Save {
        pid: String,
        record: SessionRecord,
        takeover: bool,
    },
    Release {
        pid: String,
        incarnation: u64,
    },
    Remove {
        pid: String,
        incarnation: u64,
    },
}

/// A connected socket's record, as last handed over.
struct Live {
    record: SessionRecord,
    takeover: bool,
    /// Redis has it (else it is written again at the next refresh).
    written: bool,
}

struct Scripts {
    save: Lua,
    release: Lua,
    remove: Lua,
    refresh: Lua,
    load: Lua,
}

/// The [`SessionStore`] of a node of the fleet.
pub struct RedisSessions {
    ops: mpsc::UnboundedSender<Op>,
    backplane: Backplane,
    scripts: Arc<Scripts>,
}

impl RedisSessions {
    /// Starts the writer on the current tokio runtime (the backplane's). `ttl`: how long a
    /// session is kept after its socket disconnected (`max_disconnection_duration`).
    pub fn start(backplane: Backplane, ttl: Duration) -> RedisSessions {
        let scripts = Arc::new(Scripts {
            save: Lua::new(SAVE),
            release: Lua::new(RELEASE),
            remove: Lua::new(REMOVE),
            refresh: Lua::new(REFRESH),
            load: Lua::new(LOAD),
        });
        let (ops, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            backplane: backplane.clone(),
            scripts: scripts.clone(),
            ttl: ttl.max(Duration::from_millis(3)),
            live: HashMap::new(),
            failing: false,
        };
        tokio::spawn(writer.run(rx));
        RedisSessions {
            ops,
            backplane,
            scripts,
        }
    }
}

impl SessionStore for RedisSessions {
    fn save(&self, pid: &str, record: SessionRecord, takeover: bool) {
        let _ = self.ops.send(Op::Save {
            pid: pid.to_string(),
            record,
            takeover,
        });
    }

    fn release(&self, pid: &str, incarnation: u64) {
        let _ = self.ops.send(Op::Release {
            pid: pid.to_string(),
            incarnation,
        });
    }

    fn remove(&self, pid: &str, incarnation: u64) {
        let _ = self.ops.send(Op::Remove {
            pid: pid.to_string(),
            incarnation,
        });
    }

    fn load(&self, pid: &str) -> BoxFuture<'static, Option<SessionRecord>> {
        let (backplane, scripts) = (self.backplane.clone(), self.scripts.clone());
        let key = backplane.keys().sio_session(pid);
        async move {
            match backplane.script(&scripts.load, &[key], &[]).await {
                Ok(Value::Array(items)) => match items.as_slice() {
                    [Value::BulkString(inc), Value::BulkString(state)] => {
                        let inc = std::str::from_utf8(inc).ok()?.parse().ok()?;
                        SessionRecord::decode(state, inc)
                    }
                    _ => None,
                },
                Ok(_) => None,
                Err(e) => {
                    tracing::info!(error = %e, "cluster: a Socket.IO session cannot be read from redis; the client gets a new one");
                    None
                }
            }
        }
        .boxed()
    }
}

/// The one task that writes, in the order the writes were made.
struct Writer {
    backplane: Backplane,
    scripts: Arc<Scripts>,
    ttl: Duration,
    /// The records of this node's connected sockets, by pid.
    live: HashMap<String, Live>,
    /// The last write failed (said once, not per write).
    failing: bool,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op>) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                op = rx.recv() => match op {
                    Some(op) => self.apply(op).await,
                    None => return,
                },
                _ = tick.tick() => self.refresh().await,
            }
        }
    }

    fn ttl_ms(&self) -> Vec<u8> {
        self.ttl.as_millis().to_string().into_bytes()
    }

    /// Runs one script; `None` when Redis did not take it.
    async fn run_script(&mut self, lua: &Lua, keys: &[String], args: &[Vec<u8>]) -> Option<Value> {
        match self.backplane.script(lua, keys, args).await {
            Ok(v) => {
                self.failing = false;
                Some(v)
            }
            Err(e) => {
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(error = %e, "cluster: Socket.IO sessions cannot be written to redis; they are written again once it answers");
                }
                None
            }
        }
    }

    async fn apply(&mut self, op: Op) {
        match op {
            Op::Save {
                pid,
                record,
                takeover,
            } => {
                let written = self.save(&pid, &record, takeover).await;
                match written {
                    // Another node's incarnation holds it now: this one is over.
                    Some(false) => {
                        self.live.remove(&pid);
                    }
                    Some(true) | None => {
                        let takeover = takeover && written.is_none();
                        self.live.insert(
                            pid,
                            Live {
                                record,
                                takeover,
                                written: written.is_some(),
                            },
                        );
                    }
                }
            }
            Op::Release { pid, incarnation } => {
                self.forget(&pid, incarnation);
                let key = self.backplane.keys().sio_session(&pid);
                let args = [incarnation.to_string().into_bytes(), self.ttl_ms()];
                let lua = self.scripts.clone();
                self.run_script(&lua.release, &[key], &args).await;
            }
            Op::Remove { pid, incarnation } => {
                self.forget(&pid, incarnation);
                let key = self.backplane.keys().sio_session(&pid);
                let args = [incarnation.to_string().into_bytes()];
                let lua = self.scripts.clone();
                self.run_script(&lua.remove, &[key], &args).await;
            }
        }
    }

    /// Stops refreshing `pid` if `incarnation` is the one refreshed.
    fn forget(&mut self, pid: &str, incarnation: u64) {
        if self
            .live
            .get(pid)
            .is_some_and(|l| l.record.incarnation == incarnation)
        {
            self.live.remove(pid);
        }
    }

    /// `Some(written)`, or `None` when Redis did not answer.
    async fn save(&mut self, pid: &str, record: &SessionRecord, takeover: bool) -> Option<bool> {
        let key = self.backplane.keys().sio_session(pid);
        let args = [
            record.incarnation.to_string().into_bytes(),
            record.encode_state().into_bytes(),
            self.ttl_ms(),
            if takeover {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            },
        ];
        let lua = self.scripts.clone();
        let answer = self.run_script(&lua.save, &[key], &args).await?;
        Some(matches!(answer, Value::Int(1)))
    }

    /// Extends the records of the connected sockets, and writes those Redis did not take.
    async fn refresh(&mut self) {
        let unwritten: Vec<(String, SessionRecord, bool)> = self
            .live
            .iter()
            .filter(|(_, l)| !l.written)
            .map(|(pid, l)| (pid.clone(), l.record.clone(), l.takeover))
            .collect();
        for (pid, record, takeover) in unwritten {
            match self.save(&pid, &record, takeover).await {
                Some(true) => {
                    if let Some(l) = self.live.get_mut(&pid) {
                        l.written = true;
                        l.takeover = false;
                    }
                }
                Some(false) => {
                    self.live.remove(&pid);
                }
                None => return,
            }
        }
        let written: Vec<(String, u64)> = self
            .live
            .iter()
            .filter(|(_, l)| l.written)
            .map(|(pid, l)| (self.backplane.keys().sio_session(pid), l.record.incarnation))
            .collect();
        let lua = self.scripts.clone();
        for batch in written.chunks(REFRESH_BATCH) {
            let keys: Vec<String> = batch.iter().map(|(k, _)| k.clone()).collect();
            let mut args = vec![self.ttl_ms()];
            args.extend(batch.iter().map(|(_, inc)| inc.to_string().into_bytes()));
            if self.run_script(&lua.refresh, &keys, &args).await.is_none() {
                return;
            }
        }
    }
}
