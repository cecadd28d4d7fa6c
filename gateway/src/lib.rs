//! The gateway: one process in place of stunnel -> HAProxy -> nginx (+ a Node Socket.IO server)
//! in front of a Ruby or PHP app.
//!
//! A request flows one way: a listener ([`tls`] terminates HTTPS; [`redirect`] sends plain
//! HTTP there) -> [`proxy`] applies the limits, asks the [`router`] and dispatches to the
//! route's target: [`static_files`], a realtime service through the [`seam`] (whose
//! WebSockets and HTTP/1 event streams then leave pingora: [`handoff`]), or an
//! [`upstream`] pool by its protocol ([`upstream::Protocol`]): HTTP through pingora's proxy
//! path, the [`relay`] (request bodies held whole and answers read ahead of slow clients,
//! [`buffering`]) or the WebSocket [`tunnel`]; FastCGI to php-fpm through [`fastcgi`]. An app
//! that answers with `X-Accel-Redirect` gets a file served from an internal location
//! ([`accel`]).
//!
//! What every path shares is written once: [`attempt`] is the one upstream attempt loop and
//! retry rule, [`failure`] the one table from a fault to a status, a public reason and a log
//! line, [`finish`] what every answer passes through on its way out (the app's fields that
//! stay behind, HSTS over TLS, [`compression`], framing), [`forwarding`] what the app learns
//! about the client, and [`addr`] how a server is reached. The realtime services' questions to
//! the app ([`authorize`]: may this client connect, may it subscribe) take the same way to it. [`config`] is the file that
//! describes all of it, built once into the typed [`settings`] every other module takes, and
//! [`admin`] reports on it. Every request ends in `proxy::Gateway::logging`, the one place
//! it is counted ([`metrics`]) and logged ([`access_log`]; an upgraded session's frames are
//! read by [`ws_frames`]); [`noise`] keeps abandoned TLS handshakes out of the error log.

pub mod accel;
pub mod access_log;
pub mod addr;
pub mod admin;
pub mod app_events;
pub mod attempt;
pub mod authorize;
pub mod buffering;
pub mod client_limits;
pub mod compression;
pub mod config;
pub mod draining;
pub mod failure;
pub mod fastcgi;
pub mod finish;
pub mod fleet_forward;
pub mod forwarding;
pub mod h2_guard;
pub mod handoff;
pub mod header_deadline;
pub mod logging;
pub mod metrics;
pub mod noise;
pub mod notify;
pub mod probe;
pub mod proxy;
pub mod redirect;
pub mod relay;
pub mod reload;
pub mod router;
pub mod seam;
pub mod server;
pub mod settings;
pub mod socketio;
pub mod static_files;
pub mod tls;
pub mod tunnel;
pub mod upgrade;
pub mod upstream;
pub mod ws_frames;
