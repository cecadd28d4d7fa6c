//! Assembling the pingora server from built [`Settings`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::access_log::AccessLog;
use crate::admin::Admin;
use crate::h2_guard::{H2Guard, H2Limits};
use crate::header_deadline::HeaderDeadline;
use crate::metrics::Metrics;
use crate::proxy::{Current, Gateway};
use crate::redirect::RedirectToHttps;
use crate::reload::{Reloader, Shared};
use crate::settings::{self, Endpoint, RealtimeKind, Settings};
use crate::tls::Certificates;
use crate::upstream::Pool;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Serve(#[from] crate::reload::ServeError),
    #[error(transparent)]
    AccessLog(#[from] crate::access_log::AccessLogError),
    #[error("temporary directory {}: {source}", .path.display())]
    TempDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cluster: {0}")]
    Cluster(#[from] realtime::cluster::BackplaneError),
    #[error("cluster: cannot start its runtime: {0}")]
    ClusterRuntime(std::io::Error),
}

/// Runs the health checks of the pools in force until shutdown: a reload sends the new list,
/// checks start for new pools and stop for pools no route uses any more (a kept pool's checks
/// go on undisturbed).
struct HealthChecks(tokio::sync::watch::Receiver<Vec<Arc<Pool>>>);

#[async_trait::async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut pools = self.0.clone();
        let mut running: Vec<(Arc<Pool>, tokio::task::JoinHandle<()>)> = Vec::new();
        loop {
            let wanted = pools.borrow_and_update().clone();
            running.retain(|(pool, task)| {
                let kept = wanted.iter().any(|w| Arc::ptr_eq(w, pool));
                if !kept {
                    task.abort();
                }
                kept
            });
            for pool in wanted {
                if !running.iter().any(|(p, _)| Arc::ptr_eq(p, &pool)) {
                    let task = tokio::spawn(pool.clone().check_forever(shutdown.clone()));
                    running.push((pool, task));
                }
            }
            tokio::select! {
                changed = pools.changed() => if changed.is_err() { break },
                _ = shutdown.changed() => break,
            }
        }
        futures_util::future::join_all(running.into_iter().map(|(_, task)| task)).await;
    }
}

/// Drops idle topics now and then, so a topic nobody uses stops holding memory; and when the
/// process drains (`SIGTERM`, or the old process of `gateway upgrade`), tells every realtime
/// client to come back ([`Realtime::drain`]).
struct HubSweeper(Arc<Realtime>);

/// Often enough that an idle topic is freed within a couple of minutes of its TTL.
const HUB_SWEEP_EVERY: Duration = Duration::from_secs(60);

#[async_trait::async_trait]
impl BackgroundService for HubSweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(HUB_SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let dropped = self.0.hub.sweep(std::time::Instant::now());
                    if dropped > 0 {
                        tracing::debug!(dropped, "idle topics dropped");
                    }
                }
                _ = shutdown.changed() => {
                    self.0.drain();
                    return;
                }
            }
        }
    }
}

/// This node's link to the fleet (`cluster:`), kept by a background service for the life of
/// the server.
pub struct Cluster {
    /// Runs the backplane's tasks (the Redis links, the publish writer, backfills, and the
    /// fan-out of what other nodes publish) and the socket.io adapter's: apart from pingora's
    /// services, whose runtimes come and go with them, and on one thread, as the pub/sub link
    /// is read by one task. Only kept: dropping it would stop them (see the `Drop` below).
    runtime: Option<tokio::runtime::Runtime>,
    pub backplane: realtime::cluster::Backplane,
    /// The Redis URL, password redacted.
    pub redis: String,
    /// This node in socket.io's Redis adapter protocol, once Socket.IO is mounted
    /// (`cluster.socketio_adapter`).
    adapter: std::sync::OnceLock<realtime::cluster::AdapterNode>,
    /// Forwarding to the node that owns a session (`cluster.internal_listen`).
    pub forwarding: Option<Forwarding>,
    /// Where Socket.IO sessions are kept for the other nodes (recovery on).
    pub sessions: Option<realtime::socketio::FleetSessions>,
}

/// The last holder of the cluster may be a service dropped on its own runtime's thread at
/// exit (the admin listener's), where dropping another runtime the usual way (waiting for its
/// blocking threads) panics: the cluster's runtime is let go without waiting.
impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// This node's part in forwarding: its tag in sids, the fleet's addresses, and the task that
/// keeps this node's own address in Redis until shutdown.
pub struct Forwarding {
    pub tag: String,
    /// Where the other nodes reach this one.
    pub advertise: String,
    pub directory: Arc<realtime::cluster::directory::Directory>,
    pub secret: settings::Secret,
    stop: tokio::sync::watch::Sender<bool>,
    advertising: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Cluster {
    /// Makes the Socket.IO server one of the servers of socket.io's Redis adapter protocol on
    /// this node's Redis (for the namespaces it has now): emitters and Node servers with
    /// `@socket.io/redis-adapter` share its namespaces.
    fn speak_socketio_adapter(&self, io: &realtime::socketio::SocketIo, c: &settings::Cluster) {
        // The runtime is only taken when the cluster is dropped.
        let Some(runtime) = &self.runtime else {
            return;
        };
        let _in = runtime.enter();
        let config = realtime::cluster::AdapterConfig::new(&c.key_prefix, &c.node_id);
        if let Some(node) = realtime::cluster::AdapterNode::start(io, &self.backplane, config) {
            tracing::info!(uid = %node.uid(), key_prefix = %c.key_prefix, "cluster: socket.io's redis adapter protocol spoken");
            let _ = self.adapter.set(node);
        }
    }

    /// What `/healthz` says of the cluster: `ok`, or `degraded` and why.
    pub fn health(&self) -> serde_json::Value {
        use realtime::cluster::Link;
        let (status, reason) = match self.backplane.link() {
            Link::Up => ("ok", None),
            Link::Connecting => ("degraded", Some("connecting to redis".to_string())),
            Link::Down { reason } => ("degraded", Some(format!("redis unreachable: {reason}"))),
        };
        let stats = self.backplane.stats();
        let mut v = serde_json::json!({
            "status": status,
            "node_id": self.backplane.node_id(),
            "redis": self.redis,
            "connects": stats.connects.load(std::sync::atomic::Ordering::Relaxed),
            "backfills": stats.backfills.load(std::sync::atomic::Ordering::Relaxed),
        });
        if let Some(reason) = reason {
            v["reason"] = serde_json::Value::String(reason);
        }
        if let Some(f) = &self.forwarding {
            v["internal"] = serde_json::json!({
                "tag": f.tag,
                "advertise": f.advertise,
                "advertised": f.directory.advertised(),
            });
        }
        v
    }
}

/// Keeps the cluster's runtime for as long as the server runs, and closes the link to Redis
/// on shutdown.
struct ClusterService(Arc<Cluster>);

#[async_trait::async_trait]
impl BackgroundService for ClusterService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.changed().await;
        if let Some(f) = &self.0.forwarding {
            // The address is withdrawn while the link is still there to do it.
            f.stop.send_replace(true);
            let advertising = f
                .advertising
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(task) = advertising {
                let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
            }
        }
        self.0.backplane.shutdown();
    }
}

/// The realtime services, one instance per kind however many routes mount it, all on one hub.
struct Realtime {
    hub: realtime::hub::Hub,
    /// `None` on a single node.
    cluster: Option<Arc<Cluster>>,
    /// Keyed by kind, and by route path for the kinds configured per endpoint (WebSocket).
    services: std::sync::Mutex<BTreeMap<(RealtimeKind, String), Arc<dyn realtime::seam::Service>>>,
    /// The Socket.IO server, once a route mounts it: the admin listener's `/emit` talks to it.
    socketio: std::sync::OnceLock<realtime::socketio::SocketIo>,
    /// Its Engine.IO service, closed first when the process drains; in a fleet, what the
    /// internal listener serves to the other nodes (the public routes forward around it).
    socketio_service: std::sync::OnceLock<Arc<crate::socketio::SocketIoService>>,
    settings: settings::Realtime,
    /// Who may connect, subscribe and publish, on every transport.
    access: realtime::access::Access,
    /// Where client events go in the app (`realtime.events`).
    events: Option<realtime::app_events::AppEvents>,
}

impl Realtime {
    fn new(
        settings: &settings::Realtime,
        cluster: Option<&settings::Cluster>,
        access: realtime::access::Access,
        events: Option<realtime::app_events::AppEvents>,
    ) -> Result<Realtime, StartError> {
        let h = &settings.hub;
        let config = realtime::hub::HubConfig {
            history_len: h.history,
            queue_capacity: h.subscriber_queue,
            max_topics: h.max_topics,
            max_open_topics: h.max_open_topics,
            max_topic_len: h.max_topic_length,
            new_topics_per_client_per_minute: h.new_topics_per_client_per_minute,
            ..realtime::hub::HubConfig::default()
        };
        let (hub, cluster) = match cluster {
            None => (realtime::hub::Hub::new(config), None),
            Some(c) => {
                let sessions_ttl = settings
                    .socketio
                    .recovery
                    .as_ref()
                    .map(|r| r.max_disconnection);
                let (hub, cluster) = join_cluster(config, c, sessions_ttl)?;
                (hub, Some(Arc::new(cluster)))
            }
        };
        Ok(Realtime {
            hub,
            cluster,
            services: std::sync::Mutex::new(BTreeMap::new()),
            socketio: std::sync::OnceLock::new(),
            socketio_service: std::sync::OnceLock::new(),
            settings: settings.clone(),
            access,
            events,
        })
    }

    /// Tell every realtime client to come back, now: Engine.IO sessions are closed (a held
    /// poll gets `close`, a WebSocket 1001; new handshakes get 503), so Socket.IO clients
    /// reconnect; then every hub subscriber: `/ws` closes with 1001, SSE streams end (the
    /// browser reconnects after the `retry:` it was given), held long-polls are answered.
    /// Where they reconnect (the new process of an upgrade, another node) they resume from
    /// the history: kept in Redis with `cluster:`, lost with the process without it.
    fn drain(&self) {
        if let Some(service) = self.socketio_service.get() {
            service.shutdown();
        }
        self.hub.shutdown();
    }

    fn service(&self, endpoint: &Endpoint, path: &str) -> Arc<dyn realtime::seam::Service> {
        let mut services = self
            .services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = match endpoint {
            Endpoint::Websocket(_) => path.to_string(),
            _ => String::new(),
        };
        services
            .entry((endpoint.kind(), key))
            .or_insert_with(|| match endpoint {
                Endpoint::SeamTest => Arc::new(realtime::diag::SeamTest::default()),
                Endpoint::ProtocolSuites => protocol_suites(),
                Endpoint::Longpoll => Arc::new(realtime::longpoll::LongPoll::new(
                    self.hub.clone(),
                    realtime::longpoll::LongPollConfig {
                        wait: self.settings.longpoll.wait,
                        max_message: self.settings.longpoll.max_message_bytes,
                    },
                    self.access.clone(),
                )),
                Endpoint::Websocket(ws) => Arc::new(realtime::websocket::WsEndpoint::new(
                    self.hub.clone(),
                    &format!("ws:{path}"),
                    realtime::websocket::WsConfig {
                        protocols: ws.protocols.clone(),
                        allow_plain: ws.allow_plain,
                        allowed_origins: ws.allowed_origins.clone(),
                        max_message: ws.max_message_bytes,
                        ping_interval: ws.ping_interval,
                        ping_timeout: ws.ping_timeout,
                        queue: ws.queue,
                        max_subscriptions: ws.max_subscriptions,
                        events: self.event_route(&ws.events),
                    },
                    self.access.clone(),
                )),
                Endpoint::Socketio => {
                    let forwarding = self.cluster.as_ref().and_then(|c| c.forwarding.as_ref());
                    let service = Arc::new(crate::socketio::build(
                        self.hub.clone(),
                        &self.settings.socketio,
                        self.access.clone(),
                        |names| self.event_route(names),
                        crate::socketio::InFleet {
                            sid_tag: forwarding.map(|f| f.tag.clone()),
                            sessions: self.cluster.as_ref().and_then(|c| c.sessions.clone()),
                        },
                    ));
                    let _ = self.socketio.set(service.io().clone());
                    let _ = self.socketio_service.set(service.clone());
                    match forwarding {
                        None => service,
                        Some(f) => {
                            let sio = &self.settings.socketio;
                            Arc::new(crate::fleet_forward::Forwarder::new(
                                service,
                                f.tag.clone(),
                                f.directory.clone(),
                                f.secret.clone(),
                                sio.ping_interval + sio.ping_timeout,
                            ))
                        }
                    }
                }
                Endpoint::Sse => Arc::new(realtime::sse::Sse::new(
                    self.hub.clone(),
                    realtime::sse::SseConfig {
                        heartbeat: self.settings.sse.heartbeat,
                        retry: self.settings.sse.retry,
                    },
                    self.access.clone(),
                )),
            })
            .clone()
    }
}

impl Realtime {
    /// The route to the app of a namespace's or endpoint's events, when it names any.
    fn event_route(
        &self,
        names: &realtime::app_events::EventNames,
    ) -> Option<realtime::app_events::EventRoute> {
        let app = self.events.clone().filter(|_| !names.is_none())?;
        Some(realtime::app_events::EventRoute {
            names: names.clone(),
            app,
        })
    }
}

/// A hub that is a node of the fleet `c` describes. Redis need not be reachable: the node
/// starts, says `degraded` on `/healthz`, and connects with backoff.
/// `sessions_ttl`: Socket.IO's `max_disconnection_duration` when recovery is on (its sessions
/// are then kept in Redis for the other nodes).
fn join_cluster(
    config: realtime::hub::HubConfig,
    c: &settings::Cluster,
    sessions_ttl: Option<Duration>,
) -> Result<(realtime::hub::Hub, Cluster), StartError> {
    let mut bp = realtime::cluster::BackplaneConfig::new(c.redis.expose(), c.node_id.as_str());
    bp.key_prefix = c.key_prefix.clone();
    bp.tls_root_pem = c.tls_ca.clone();
    // Redis keeps what the local hub keeps: a client resumes as far back on any node.
    bp.history_len = config.history_len;
    bp.history_max_bytes = config.history_max_bytes;
    bp.history_ttl = config.idle_topic_ttl;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("cluster")
        .enable_all()
        .build()
        .map_err(StartError::ClusterRuntime)?;
    let (hub, backplane) = {
        let _in = runtime.enter();
        realtime::cluster::node::start(config, bp)?
    };
    if let Some(laravel) = &c.laravel {
        realtime::cluster::laravel_node::start(&backplane, &c.key_prefix, laravel.clone());
        tracing::info!(channels = ?laravel.channels, prefix = %laravel.prefix, "cluster: Laravel's redis broadcasts delivered");
    }
    tracing::info!(node = %c.node_id, redis = %c.redis, "cluster: this node shares its realtime through redis");
    let sessions = sessions_ttl.map(|ttl| {
        let _in = runtime.enter();
        let store = realtime::cluster::sessions::RedisSessions::start(backplane.clone(), ttl);
        realtime::socketio::FleetSessions(Arc::new(store))
    });
    let forwarding = c.internal.as_ref().map(|internal| {
        let tag = realtime::engineio::node_tag(&c.node_id);
        let directory = Arc::new(realtime::cluster::directory::Directory::new(
            backplane.clone(),
        ));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let record = realtime::cluster::directory::NodeRecord {
            node: c.node_id.clone(),
            address: internal.advertise.clone(),
        };
        let advertising = runtime.spawn({
            let (directory, tag) = (directory.clone(), tag.clone());
            async move {
                let stop = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                directory.advertise(&tag, record, stop).await;
            }
        });
        tracing::info!(tag = %tag, listen = %internal.listen, advertise = %internal.advertise, "cluster: Engine.IO requests for this node's sessions are forwarded here by the other nodes");
        Forwarding {
            tag,
            advertise: internal.advertise.clone(),
            directory,
            secret: internal.secret.clone(),
            stop,
            advertising: std::sync::Mutex::new(Some(advertising)),
        }
    });
    Ok((
        hub,
        Cluster {
            runtime: Some(runtime),
            backplane,
            redis: c.redis.to_string(),
            adapter: std::sync::OnceLock::new(),
            forwarding,
            sessions,
        },
    ))
}

/// Read buffer of each client connection: none (pingora's default is 64 KiB). pingora's buffer
/// is allocated zeroed when a connection is accepted and lives as long as the connection, so
/// it is resident memory for every idle WebSocket, SSE stream and held long-poll: 16 KiB each
/// at the 16 KiB this was before, 640 MiB per 10,000 at the default. Without it nothing is
/// lost that another buffer does not already do: request heads are read into pingora's own
/// head buffer, bodies into its body buffer, and TLS records into rustls' own (which reads
/// from the socket in 4 KiB steps: a 16 KiB record of an upload takes four `read`s instead of
/// one, a cost only large request bodies over TLS pay). nginx reads headers into 1 KiB
/// (`client_header_buffer_size`) and allocates its buffers per request, not per connection.
const LISTENER_READ_BUFFER: usize = 0;

fn listener_buffers() -> L4BufferSettings {
    L4BufferSettings::default().read(LISTENER_READ_BUFFER)
}

/// Build the whole server, and the reloader that puts a new `config_path` in force on SIGHUP.
/// Certificates arrive loaded; the development certificate is loaded (or generated) here, so
/// a bad one is an error before anything listens.
///
/// `upgrade`: take the listening sockets over from the running gateway (`gateway upgrade`):
/// pingora's graceful upgrade, through [`Settings::upgrade_sock`].
pub fn build(
    settings: &Settings,
    config_path: &std::path::Path,
    upgrade: bool,
) -> Result<Built, StartError> {
    crate::addr::keep_connections_per_thread(!settings.work_stealing);
    let conf = ServerConf {
        threads: settings.threads,
        work_stealing: settings.work_stealing,
        upgrade_sock: settings.upgrade_sock().display().to_string(),
        grace_period_seconds: Some(settings.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(settings.grace_period.as_secs()),
        // The app is local: a handful of idle keep-alive connections per server is plenty.
        upstream_keepalive_pool_size: 256,
        ..ServerConf::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let temp = settings.proxy.temp_dir.clone();
    let temp_dir = Arc::new(
        crate::buffering::prepare_dir(&temp)
            .map_err(|source| StartError::TempDir { path: temp, source })?,
    );
    let connector = || {
        pingora::connectors::http::v1::Connector::new(Some(
            pingora::connectors::ConnectorOptions::from_server_conf(&server.configuration),
        ))
    };
    let all_pools = Pool::all(&settings.upstreams);
    // The configuration in force, once it exists: the app's callbacks follow its pools.
    let in_force = Arc::new(std::sync::OnceLock::new());
    // Requests to the app: the pages' and the gateway's own callbacks.
    let upstream_connector = Arc::new(connector());
    let (policy, app) = crate::authorize::rules(
        settings,
        &all_pools,
        &in_force,
        &temp_dir,
        &upstream_connector,
    );
    let access = realtime::access::Access::new(policy, app);
    let events = crate::app_events::build(
        settings.realtime.events.as_ref(),
        &all_pools,
        &in_force,
        settings.proxy.trusted_proxies.clone(),
        temp_dir.clone(),
        upstream_connector.clone(),
    );
    let rt = Arc::new(Realtime::new(
        &settings.realtime,
        settings.cluster.as_ref(),
        access.clone(),
        events,
    )?);
    let limits = &settings.limits;
    let metrics = Arc::new(Metrics::new(rt.hub.clone()));
    let access_log = AccessLog::start(&settings.access_log, metrics.access_log_dropped.clone())?;
    // Where a held long-poll's connection comes back once answered: the front door's app,
    // offered by it on its first connection.
    let reentry = Arc::new(crate::handoff::Reentry::default());
    let shared = Shared {
        reentry: reentry.clone(),
        metrics: metrics.clone(),
        access_log,
        temp_dir,
        connector: upstream_connector,
        access,
        in_force: in_force.clone(),
        client_limits: Arc::default(),
        realtime: Box::new({
            let rt = rt.clone();
            move |endpoint, path| rt.service(endpoint, path)
        }),
    };
    let serving = shared.serving(settings, all_pools)?;
    // The routes have mounted their realtime services: the metrics read Socket.IO's counters.
    metrics.set_socketio(rt.socketio.get().cloned());
    if let (Some(cluster), Some(c), Some(io)) =
        (&rt.cluster, settings.cluster.as_ref(), rt.socketio.get())
    {
        if c.socketio_adapter {
            cluster.speak_socketio_adapter(io, c);
        }
    }
    let (health, health_rx) =
        tokio::sync::watch::channel(serving.router.pools.values().cloned().collect());
    let current = Arc::new(Current::from_pointee(serving));
    let _ = in_force.set(current.clone());
    let certificates = match settings.listen.https {
        Some(_) => Some(Arc::new(Certificates::new(&settings.tls)?)),
        None => None,
    };
    let reloader = Arc::new(Reloader::new(
        config_path.to_path_buf(),
        settings.clone(),
        current.clone(),
        certificates.clone(),
        shared,
        health,
    ));
    let draining = crate::draining::Draining::default();
    let gateway = Gateway {
        current: current.clone(),
        draining: draining.clone(),
    };
    let mut options = HttpServerOptions::default();
    // pingora counts reuses, not requests: a limit of N reuses serves N + 1 requests.
    options.keepalive_request_limit = Some(limits.keepalive_requests.saturating_sub(1));
    let mut http = pingora::proxy::http_proxy(&server.configuration, gateway);
    http.server_options = Some(options);
    // Every listener gets the header deadline: a slowloris holds a connection as well on the
    // redirect or admin listener as on the front door.
    let header_timeout = limits.header_timeout;
    let mut proxy = Service::new(
        "gateway".to_string(),
        crate::draining::Lingering {
            draining: draining.clone(),
            inner: Arc::new(HeaderDeadline {
                // HTTP/2 connections are accepted by `H2Guard` (preface and idle deadlines); the
                // header deadline passes them through untouched and wraps HTTP/1 ones.
                // The header deadline is re-armed per request by `Gateway::logging`
                // (`header_deadline::request_done`), not by a `PerRequest` wrapper.
                inner: Arc::new(H2Guard {
                    inner: Arc::new(http),
                    reentry: reentry.clone(),
                    limits: H2Limits::from_limits(limits),
                    metrics: metrics.clone(),
                }),
                timeout: header_timeout,
            }),
        },
    );

    let listen = &settings.listen;
    if let (Some(addr), Some(certificates)) = (listen.https, certificates) {
        let mut tls = TlsSettings::intermediate("", "")
            .expect("TlsSettings::intermediate only stores its arguments");
        tls.set_cert_resolver(certificates);
        tls.enable_h2();
        proxy.add_listener(
            ListenerConfig::tcp(addr.to_string())
                .tls(tls)
                .l4_buffer(listener_buffers()),
        );
        if let Some(http) = listen.http {
            let mut redirect = Service::new(
                "http-redirect".to_string(),
                HeaderDeadline::new(
                    pingora::apps::http_app::HttpServer::new_app(RedirectToHttps {
                        https_port: addr.port(),
                    }),
                    header_timeout,
                ),
            );
            redirect.add_tcp(&http.to_string());
            server.add_service(redirect);
        }
    } else if let Some(http) = listen.http {
        proxy.add_listener(ListenerConfig::tcp(http.to_string()).l4_buffer(listener_buffers()));
    }
    server.add_service(proxy);

    if let Some(addr) = listen.admin {
        let admin = Admin {
            metrics,
            current,
            reloader: reloader.clone(),
            hub: rt.hub.clone(),
            cluster: rt.cluster.clone(),
            body: crate::buffering::BodyLimits::from_limits(limits),
            publish: Arc::new({
                let api = realtime::publish::PublishApi::new(
                    rt.hub.clone(),
                    settings.realtime.publish.token.clone(),
                )
                .with_presence(rt.access.presence().clone());
                match rt.socketio.get() {
                    Some(io) => api.with_socketio(io.clone()),
                    None => api,
                }
            }),
        };
        let mut admin = Service::new(
            "admin".to_string(),
            HeaderDeadline::new(
                pingora::proxy::http_proxy(&server.configuration, admin),
                header_timeout,
            ),
        );
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
    }
    if let Some(internal) = settings.cluster.as_ref().and_then(|c| c.internal.as_ref()) {
        let service = rt.socketio_service.get().cloned();
        let app = crate::fleet_forward::Internal {
            service: service.map(|s| s as Arc<dyn realtime::seam::Service>),
            secret: internal.secret.clone(),
            body: crate::buffering::BodyLimits::from_limits(limits),
            send_timeout: limits.send_timeout,
        };
        let mut listener = Service::new(
            "fleet internal".to_string(),
            HeaderDeadline::new(
                pingora::proxy::http_proxy(&server.configuration, app),
                header_timeout,
            ),
        );
        listener.add_tcp(&internal.listen.to_string());
        server.add_service(listener);
    }
    server.add_service(background_service("hub sweeper", HubSweeper(rt.clone())));
    server.add_service(background_service("health checks", HealthChecks(health_rx)));
    if let Some(cluster) = rt.cluster.clone() {
        server.add_service(background_service("cluster", ClusterService(cluster)));
    }
    Ok(Built {
        server,
        reloader,
        drain: Drain { rt, draining },
    })
}

/// The server, and the handles the process needs beside it.
pub struct Built {
    pub server: Server,
    /// Puts a new configuration file in force (`SIGHUP`).
    pub reloader: Arc<Reloader>,
    /// Tells the realtime clients to come back (the old process of an upgrade).
    pub drain: Drain,
}

/// Tells every realtime client to come back elsewhere ([`Realtime::drain`]): the process is
/// handing its sockets to a new one.
pub struct Drain {
    rt: Arc<Realtime>,
    draining: crate::draining::Draining,
}

impl Drain {
    pub fn now(&self) {
        self.draining.begin();
        self.rt.drain();
    }
}

/// The official protocol suites' server (`realtime: protocol-suites`).
#[cfg(feature = "conformance")]
fn protocol_suites() -> Arc<dyn realtime::seam::Service> {
    Arc::new(realtime::diag::ProtocolSuites::new())
}

/// Never mounted: the settings refuse `protocol-suites` in a gateway built without the
/// `conformance` feature. Answers like an unknown path of the diagnostic service.
#[cfg(not(feature = "conformance"))]
fn protocol_suites() -> Arc<dyn realtime::seam::Service> {
    Arc::new(realtime::diag::SeamTest::default())
}
