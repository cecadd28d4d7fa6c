//! Live reload (`SIGHUP`, or `gateway reload`): the file is read and checked whole; if it does
//! not pass, nothing changes and every problem is logged with its place. If it passes, the
//! new routes, pools, health checks, certificates, limits and headers take effect for the next
//! request, and every open connection goes on with what it started with:
//!
//! * requests take the configuration in force when they start ([`crate::proxy::Current`]),
//!   so an upload, a download or an app WebSocket tunnel that began before the reload ends on
//!   the old routes and servers (a removed server is drained this way: nothing new is sent to
//!   it, what is in flight finishes);
//! * a pool whose `upstreams.<name>` section did not change is kept as it is, with its health
//!   state and its kept-alive connections;
//! * the realtime services are the same objects before and after (they are built once per
//!   kind and found again by the new routes), so Socket.IO sessions on every transport, `/ws`,
//!   SSE streams and held long-polls never notice;
//! * certificates are read from disk again and served to the next handshake
//!   ([`crate::tls::Certificates`]): a certbot or acme.sh deploy hook is `gateway reload`.
//!
//! What only a restart applies (listen addresses, threads, the cluster, the realtime services'
//! settings, the access log, listener-level limits) is named in the log and in the outcome,
//! never silently ignored ([`restart_needed`]).
//!
//! The outcome of the last reload is kept in [`Status`]: the admin listener shows it at
//! `GET /reload`, and it is written next to the pid file, where `gateway reload` reads it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::access_log::AccessLog;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::{Current, Serving};
use crate::router::Router;
use crate::settings::{self, Endpoint, Settings};
use crate::tls::Certificates;
use crate::upstream::Pool;

/// Why a configuration that passed its check could still not be put in force.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Routes(#[from] crate::router::BuildError),
    #[error(transparent)]
    Internal(#[from] crate::accel::BuildError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// The realtime service a route mounts (built once per kind, found again on every reload).
pub type RealtimeServices =
    dyn Fn(&Endpoint, &str) -> Arc<dyn realtime::seam::Service> + Send + Sync;

/// What outlives one configuration: shared by every generation of [`Serving`].
pub struct Shared {
    /// Where connections that left pingora for a while come back ([`crate::handoff::Reentry`]).
    pub reentry: Arc<crate::handoff::Reentry>,
    pub metrics: Arc<Metrics>,
    pub access_log: Option<Arc<AccessLog>>,
    pub temp_dir: Arc<PathBuf>,
    pub connector: Arc<pingora::connectors::http::v1::Connector>,
    /// Who may subscribe and publish (`realtime.policy`, `realtime.auth`): shared with every
    /// transport, its rules replaced by a reload that changes them.
    pub access: realtime::access::Access,
    /// The configuration in force, as the app's callbacks find its pools.
    pub in_force: Arc<std::sync::OnceLock<Arc<Current>>>,
    pub realtime: Box<RealtimeServices>,
    /// Per-client counts and buckets: they outlive a reload.
    pub client_limits: Arc<crate::client_limits::ClientLimits>,
}

impl Shared {
    /// Everything a configuration serves with, from its settings and pools: at start and on
    /// every reload, the one place a [`Serving`] is made.
    pub fn serving(
        &self,
        settings: &Settings,
        pools: BTreeMap<String, Arc<Pool>>,
    ) -> Result<Serving, ServeError> {
        let internal = crate::accel::Internal::from_config(&settings.internal_locations)?
            .hiding(settings.realtime.events.as_ref().map(|e| e.path.as_str()));
        let router = Router::build(settings, pools, &|endpoint, path| {
            (self.realtime)(endpoint, path)
        })?;
        let routes = self
            .metrics
            .routes(settings, router.pools.values().cloned().collect());
        Ok(Serving {
            router,
            routes,
            limits: settings.limits.clone(),
            trusted: settings.proxy.trusted_proxies.clone(),
            hsts: settings.tls.hsts.as_ref().map(settings::Hsts::header_value),
            internal,
            temp_dir: self.temp_dir.clone(),
            connector: self.connector.clone(),
            metrics: self.metrics.clone(),
            access_log: self.access_log.clone(),
            client_limits: self.client_limits.clone(),
            reentry: self.reentry.clone(),
        })
    }
}

/// The outcome of the last reload, as `GET /reload` and `gateway reload` show it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// How many reloads were tried since the start (0: none yet).
    pub generation: u64,
    /// `true` when the last reload put its file in force.
    pub ok: bool,
    /// Seconds since the Unix epoch when the last reload ended.
    pub at: u64,
    /// Why the file was refused, each problem with its place.
    pub problems: Vec<String>,
    /// The sections that changed and now apply to new requests.
    pub applied: Vec<String>,
    /// Changed settings that keep their old value until a restart.
    pub restart_needed: Vec<String>,
}

/// Where the status of the last reload is written for `gateway reload`: beside the pid file.
pub fn status_file(pid_file: &Path) -> PathBuf {
    pid_file.with_extension("reload.json")
}

/// Re-reads the configuration file and swaps what can change; one per server.
pub struct Reloader {
    path: PathBuf,
    current: Arc<Current>,
    certificates: Option<Arc<Certificates>>,
    shared: Shared,
    /// The pools whose health checks should run (see [`crate::server`]'s `HealthChecks`).
    health: tokio::sync::watch::Sender<Vec<Arc<Pool>>>,
    /// The settings in force and the outcome of the last reload; one reload at a time.
    state: Mutex<(Settings, Status)>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        in_force: Settings,
        current: Arc<Current>,
        certificates: Option<Arc<Certificates>>,
        shared: Shared,
        health: tokio::sync::watch::Sender<Vec<Arc<Pool>>>,
    ) -> Reloader {
        Reloader {
            path,
            current,
            certificates,
            shared,
            health,
            state: Mutex::new((in_force, Status::default())),
        }
    }

    /// The outcome of the last reload.
    pub fn status(&self) -> Status {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }

    /// Read the file again and put it in force if it passes; log and return the outcome.
    pub fn reload(&self) -> Status {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let generation = state.1.generation + 1;
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let status = match self.put_in_force(&state.0) {
            Ok((settings, applied, restart_needed)) => {
                self.shared.metrics.reloads_ok.inc();
                for what in &restart_needed {
                    tracing::warn!(setting = %what, "reload: changed, but only a restart applies it");
                }
                tracing::info!(
                    file = %self.path.display(),
                    applied = %applied.join(", "),
                    "configuration reloaded"
                );
                state.0 = settings;
                Status {
                    generation,
                    ok: true,
                    at,
                    problems: Vec::new(),
                    applied,
                    restart_needed,
                }
            }
            Err(problems) => {
                self.shared.metrics.reloads_failed.inc();
                for problem in &problems {
                    tracing::error!(file = %self.path.display(), %problem, "reload refused; the configuration in force keeps serving");
                }
                Status {
                    generation,
                    ok: false,
                    at,
                    problems,
                    applied: Vec::new(),
                    restart_needed: Vec::new(),
                }
            }
        };
        state.1 = status.clone();
        self.write_status(&state.0.pid_file, &status);
        status
    }

    /// Build everything the new file needs before anything changes, then swap it in.
    #[allow(clippy::type_complexity)]
    fn put_in_force(
        &self,
        old: &Settings,
    ) -> Result<(Settings, Vec<String>, Vec<String>), Vec<String>> {
        let new = Settings::load(&self.path).map_err(|e| problems_of(&e))?;
        let pools = keep_unchanged(old, &new, &self.current.load().router.pools);
        let serving = self
            .shared
            .serving(&new, pools)
            .map_err(|e| vec![e.to_string()])?;
        let certificates = match (&self.certificates, new.listen.https) {
            (Some(_), Some(_)) => {
                Some(crate::tls::SniResolver::new(&new.tls).map_err(|e| vec![e.to_string()])?)
            }
            _ => None,
        };
        // Nothing below fails: the new configuration goes in whole.
        let applied = applied(&old.source, &new.source);
        let restart_needed = restart_needed(&old.source, &new.source);
        if let (Some(in_force), Some(resolver)) = (&self.certificates, certificates) {
            in_force.set(resolver);
        }
        let pools: Vec<Arc<Pool>> = serving.router.pools.values().cloned().collect();
        let (a, b) = (&old.source, &new.source);
        let access_changed = a.realtime.policy != b.realtime.policy
            || a.realtime.auth != b.realtime.auth
            || a.proxy.trusted_proxies != b.proxy.trusted_proxies;
        if access_changed {
            let (policy, app) = crate::authorize::rules(
                &new,
                &serving.router.pools,
                &self.shared.in_force,
                &self.shared.temp_dir,
                &self.shared.connector,
            );
            self.shared.access.replace(policy, app);
        }
        self.current.store(Arc::new(serving));
        self.health.send_replace(pools);
        Ok((new, applied, restart_needed))
    }

    /// Write this process's id to the pid file, and a fresh status (no reload yet) beside it,
    /// so `gateway reload` finds this process and waits for this process's next outcome.
    pub fn announce(&self) -> std::io::Result<()> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let pid_file = &state.0.pid_file;
        self.write_status(pid_file, &state.1);
        write_atomically(pid_file, format!("{}\n", std::process::id()).as_bytes())
    }

    fn write_status(&self, pid_file: &Path, status: &Status) {
        let path = status_file(pid_file);
        let written = serde_json::to_vec(status)
            .map_err(std::io::Error::other)
            .and_then(|json| write_atomically(&path, &json));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the reload status for `gateway reload`");
        }
    }
}

/// Why `gateway reload` could not get an outcome from the running gateway.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no running gateway found: cannot read its pid file {}: {source}", .path.display())]
    PidFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the pid file {} does not hold a process id", .0.display())]
    BadPid(PathBuf),
    #[error("cannot signal process {pid} (from {}): {source}", .path.display())]
    Signal {
        pid: i32,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sent SIGHUP to process {0}, but it wrote no outcome within {1:?}: see its log")]
    NoAnswer(i32, std::time::Duration),
}

/// The pid in `pid_file`: the running gateway's.
pub fn running_pid(pid_file: &Path) -> Result<i32, RequestError> {
    let text = std::fs::read_to_string(pid_file).map_err(|source| RequestError::PidFile {
        path: pid_file.to_path_buf(),
        source,
    })?;
    text.trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or_else(|| RequestError::BadPid(pid_file.to_path_buf()))
}

/// Send `sig` to `pid` (read from `pid_file`, named in the error).
pub fn signal(pid: i32, sig: i32, pid_file: &Path) -> Result<(), RequestError> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(RequestError::Signal {
            pid,
            path: pid_file.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// `gateway reload`: signal the gateway whose pid file is `pid_file` and wait for the outcome
/// of that reload (the status it writes beside the pid file).
pub fn request(pid_file: &Path, wait: std::time::Duration) -> Result<Status, RequestError> {
    let pid = running_pid(pid_file)?;
    let status_path = status_file(pid_file);
    let read =
        || -> Option<Status> { serde_json::from_slice(&std::fs::read(&status_path).ok()?).ok() };
    let before = read().map_or(0, |s| s.generation);
    signal(pid, libc::SIGHUP, pid_file)?;
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        if let Some(status) = read().filter(|s| s.generation > before) {
            return Ok(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(RequestError::NoAnswer(pid, wait))
}

/// Reload on every `SIGHUP`, on a thread of its own (a reload reads files and builds routes;
/// no runtime worker waits for it). Registered before the server starts serving, so a
/// `SIGHUP` never takes the default action (exit).
pub fn on_sighup(reloader: Arc<Reloader>) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
    std::thread::Builder::new()
        .name("reload".to_string())
        .spawn(move || {
            for _ in signals.forever() {
                reloader.reload();
            }
        })?;
    Ok(())
}

/// Write `bytes` to `path` through a temporary file, so a reader sees the old or the new
/// content, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// A refused file's problems, one line each with its place.
fn problems_of(e: &settings::ConfigError) -> Vec<String> {
    match e {
        settings::ConfigError::Invalid { path, problems } => problems
            .iter()
            .map(|p| format!("{}: {p}", path.display()))
            .collect(),
        other => vec![other.to_string()],
    }
}

/// The new file's pools: the pool in force for each `upstreams.<name>` section that did not
/// change (its health, its kept-alive connections and its balancing position go on), a new one
/// for each added or changed section.
fn keep_unchanged(
    old: &Settings,
    new: &Settings,
    in_force: &BTreeMap<String, Arc<Pool>>,
) -> BTreeMap<String, Arc<Pool>> {
    new.upstreams
        .iter()
        .map(|(name, upstream)| {
            let same = old.source.upstreams.get(name) == new.source.upstreams.get(name);
            let pool = match in_force.get(name) {
                Some(pool) if same => pool.clone(),
                _ => Arc::new(Pool::from_config(name, upstream)),
            };
            (name.clone(), pool)
        })
        .collect()
}

/// The sections of the file a reload puts in force for new requests, as they changed.
pub fn applied(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut section = |name: &str, changed: bool| {
        if changed {
            out.push(name.to_string());
        }
    };
    section("routes", old.routes != new.routes);
    section(
        "tls.certificates",
        old.tls.certificates != new.tls.certificates,
    );
    section("tls.hsts", old.tls.hsts != new.tls.hsts);
    section(
        "proxy.trusted_proxies",
        old.proxy.trusted_proxies != new.proxy.trusted_proxies,
    );
    section("limits", old.limits != new.limits);
    section("compression", old.compression != new.compression);
    section(
        "realtime.policy",
        old.realtime.policy != new.realtime.policy,
    );
    section("realtime.auth", old.realtime.auth != new.realtime.auth);
    section(
        "internal_locations",
        old.internal_locations != new.internal_locations,
    );
    let names: std::collections::BTreeSet<&String> =
        old.upstreams.keys().chain(new.upstreams.keys()).collect();
    for name in names {
        match (old.upstreams.get(name), new.upstreams.get(name)) {
            (None, Some(_)) => out.push(format!("upstreams.{name} (added)")),
            (Some(_), None) => out.push(format!("upstreams.{name} (removed)")),
            (Some(a), Some(b)) if a != b => out.push(format!("upstreams.{name}")),
            _ => {}
        }
    }
    out
}

/// The settings that changed but keep their old value until a restart: what the listeners,
/// the runtimes and the realtime services were built with.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut restart = |name: &str, changed: bool| {
        if changed {
            out.push(name.to_string());
        }
    };
    restart("listen", old.listen != new.listen);
    restart("threads", old.threads != new.threads);
    restart("work_stealing", old.work_stealing != new.work_stealing);
    restart("grace_period_s", old.grace_period_s != new.grace_period_s);
    restart("pid_file", old.pid_file != new.pid_file);
    restart("tls.state_dir", old.tls.state_dir != new.tls.state_dir);
    restart("proxy.temp_dir", old.proxy.temp_dir != new.proxy.temp_dir);
    restart("cluster", old.cluster != new.cluster);
    // Each realtime service keeps the settings it was built with (that is what keeps its
    // sessions); who may subscribe and publish is decided per request, and reloads.
    let but_access = |r: &crate::config::Realtime| crate::config::Realtime {
        policy: Default::default(),
        auth: None,
        ..r.clone()
    };
    restart(
        "realtime",
        but_access(&old.realtime) != but_access(&new.realtime),
    );
    restart("access_log", old.access_log != new.access_log);
    let (a, b) = (&old.limits, &new.limits);
    // Read when a connection is accepted (the header deadline, HTTP/2 settings, pingora's
    // keep-alive request count): the rest of `limits` applies per request.
    restart(
        "limits.header_timeout_ms",
        a.header_timeout_ms != b.header_timeout_ms,
    );
    restart(
        "limits.keepalive_requests",
        a.keepalive_requests != b.keepalive_requests,
    );
    restart(
        "limits.h2_max_concurrent_streams",
        a.h2_max_concurrent_streams != b.h2_max_concurrent_streams,
    );
    restart(
        "limits.keepalive_timeout_s (HTTP/2 connections; HTTP/1 applies it now)",
        a.keepalive_timeout_s != b.keepalive_timeout_s,
    );
    restart(
        "limits.max_header_bytes (HTTP/2 connections; HTTP/1 applies it now)",
        a.max_header_bytes != b.max_header_bytes,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Config {
        Config::parse(yaml).expect("parses")
    }

    const BASE: &str = "listen: {https: 127.0.0.1:8443}\nupstreams: {app: {servers: [127.0.0.1:3000]}}\nroutes: [{path: /, upstream: app}]\n";

    #[test]
    fn a_new_route_and_server_apply_now_and_need_no_restart() {
        let new = parse(
            "listen: {https: 127.0.0.1:8443}\nupstreams: {app: {servers: [127.0.0.1:3000, 127.0.0.1:3001]}, api: {servers: [127.0.0.1:4000]}}\nroutes: [{path: /api, upstream: api}, {path: /, upstream: app}]\n",
        );
        let old = parse(BASE);
        assert_eq!(
            applied(&old, &new),
            ["routes", "upstreams.api (added)", "upstreams.app"]
        );
        assert!(restart_needed(&old, &new).is_empty());
    }

    #[test]
    fn listen_threads_and_realtime_changes_are_named_for_a_restart() {
        let old = parse(BASE);
        let new = parse(
            "listen: {https: 127.0.0.1:9443}\nthreads: 3\nwork_stealing: false\nrealtime: {sse: {heartbeat_ms: 5000}}\nlimits: {header_timeout_ms: 1000, max_body_bytes: 5}\nupstreams: {app: {servers: [127.0.0.1:3000]}}\nroutes: [{path: /, upstream: app}]\n",
        );
        assert_eq!(
            restart_needed(&old, &new),
            [
                "listen",
                "threads",
                "work_stealing",
                "realtime",
                "limits.header_timeout_ms"
            ]
        );
        assert_eq!(applied(&old, &new), ["limits"]);
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let old = parse(BASE);
        assert!(applied(&old, &old.clone()).is_empty());
        assert!(restart_needed(&old, &old.clone()).is_empty());
    }
}
