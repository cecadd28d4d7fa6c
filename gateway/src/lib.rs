//! The gateway: one process in place of stunnel -> HAProxy -> nginx (+ a Node Socket.IO server)
//! in front of a Ruby or PHP app.
//!
//! A request flows one way: a listener ([`tls`] terminates HTTPS; [`redirect`] sends plain
//! HTTP there) -> [`proxy`] applies the limits and asks the [`router`] -> the route's target:
//! [`static_files`], a realtime service through the [`seam`], the app's WebSocket [`tunnel`],
//! or an [`upstream`] pool with [`forwarding`] headers (HTTP, or [`fastcgi`] for php-fpm), with
//! the request body held whole first and the answer read ahead of slow clients ([`buffering`],
//! [`relay`]); `X-Accel-Redirect` answers are served from internal locations by [`accel`], and
//! answers from files and the app are compressed on the way out ([`compression`]). [`config`]
//! describes all of it and [`admin`] reports on it.

pub mod accel;
pub mod addr;
pub mod admin;
pub mod attempt;
pub mod buffering;
pub mod compression;
pub mod config;
pub mod failure;
pub mod fastcgi;
pub mod finish;
pub mod forwarding;
pub mod h2_guard;
pub mod header_deadline;
pub mod probe;
pub mod proxy;
pub mod redirect;
pub mod relay;
pub mod router;
pub mod seam;
pub mod server;
pub mod socketio;
pub mod static_files;
pub mod tls;
pub mod tunnel;
pub mod upstream;
