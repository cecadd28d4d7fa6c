//! Assembling the pingora server from a validated [`Config`].

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

use crate::admin::Admin;
use crate::config::{Config, RealtimeKind};
use crate::h2_guard::{H2Guard, H2Limits};
use crate::header_deadline::HeaderDeadline;
use crate::proxy::Gateway;
use crate::redirect::RedirectToHttps;
use crate::router::Router;
use crate::tls::SniResolver;
use crate::upstream::Pool;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Routes(#[from] crate::router::BuildError),
    #[error(transparent)]
    Internal(#[from] crate::accel::BuildError),
    #[error("temporary directory {}: {source}", .path.display())]
    TempDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Runs every pool's health checks until shutdown.
struct HealthChecks(Vec<Arc<Pool>>);

#[async_trait::async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, shutdown: ShutdownWatch) {
        let tasks = self
            .0
            .iter()
            .map(|p| tokio::spawn(p.clone().check_forever(shutdown.clone())));
        futures_util::future::join_all(tasks).await;
    }
}

/// Drops idle topics now and then, so a topic nobody uses stops holding memory.
struct HubSweeper(realtime::hub::Hub);

/// Often enough that an idle topic is freed within a couple of minutes of its TTL.
const HUB_SWEEP_EVERY: Duration = Duration::from_secs(60);

#[async_trait::async_trait]
impl BackgroundService for HubSweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(HUB_SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let dropped = self.0.sweep(std::time::Instant::now());
                    if dropped > 0 {
                        tracing::debug!(dropped, "idle topics dropped");
                    }
                }
                _ = shutdown.changed() => {
                    self.0.shutdown();
                    return;
                }
            }
        }
    }
}

/// The realtime services, one instance per kind however many routes mount it, all on one hub.
struct Realtime {
    hub: realtime::hub::Hub,
    /// Keyed by kind, and by route path for the kinds configured per endpoint (WebSocket).
    services: std::sync::Mutex<BTreeMap<(RealtimeKind, String), Arc<dyn realtime::seam::Service>>>,
    /// The Socket.IO server, once a route mounts it: the admin listener's `/emit` talks to it.
    socketio: std::sync::OnceLock<realtime::socketio::SocketIo>,
    config: crate::config::Realtime,
}

impl Realtime {
    fn new(config: &crate::config::Realtime) -> Realtime {
        let hub = realtime::hub::Hub::new(realtime::hub::HubConfig {
            history_len: config.hub.history,
            queue_capacity: config.hub.subscriber_queue,
            max_topics: config.hub.max_topics,
            max_open_topics: config.hub.open_topics(),
            max_topic_len: config.hub.max_topic_length,
            new_topics_per_client_per_minute: config.hub.new_topics_per_client_per_minute,
            ..realtime::hub::HubConfig::default()
        });
        Realtime {
            hub,
            services: std::sync::Mutex::new(BTreeMap::new()),
            socketio: std::sync::OnceLock::new(),
            config: config.clone(),
        }
    }

    fn service(&self, kind: RealtimeKind, path: &str) -> Arc<dyn realtime::seam::Service> {
        let mut services = self
            .services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = match kind {
            RealtimeKind::Websocket => path.to_string(),
            _ => String::new(),
        };
        services
            .entry((kind, key))
            .or_insert_with(|| match kind {
                RealtimeKind::SeamTest => Arc::new(realtime::diag::SeamTest::default()),
                RealtimeKind::Longpoll => Arc::new(realtime::longpoll::LongPoll::new(
                    self.hub.clone(),
                    realtime::longpoll::LongPollConfig {
                        wait: Duration::from_millis(self.config.longpoll.wait_ms),
                        max_message: self.config.longpoll.max_message_bytes,
                    },
                )),
                RealtimeKind::Websocket => {
                    let ws = self.config.websocket.get(path).cloned().unwrap_or_default();
                    Arc::new(realtime::websocket::WsEndpoint::new(
                        self.hub.clone(),
                        &format!("ws:{path}"),
                        realtime::websocket::WsConfig {
                            protocols: ws.protocols,
                            allow_plain: ws.allow_plain,
                            allowed_origins: ws.allowed_origins,
                            max_message: ws.max_message_bytes,
                            ping_interval: Duration::from_millis(ws.ping_interval_ms),
                            ping_timeout: Duration::from_millis(ws.ping_timeout_ms),
                            queue: ws.queue,
                            max_subscriptions: ws.max_subscriptions,
                        },
                    ))
                }
                RealtimeKind::Socketio => {
                    let service = crate::socketio::build(self.hub.clone(), &self.config.socketio);
                    let _ = self.socketio.set(service.io().clone());
                    Arc::new(service)
                }
                RealtimeKind::Sse => Arc::new(realtime::sse::Sse::new(
                    self.hub.clone(),
                    realtime::sse::SseConfig {
                        heartbeat: Duration::from_millis(self.config.sse.heartbeat_ms),
                        retry: Duration::from_millis(self.config.sse.retry_ms),
                    },
                )),
            })
            .clone()
    }
}

/// Read buffer of each client connection, below pingora's 64 KiB default. It is allocated
/// zeroed when the connection is accepted and lives as long as the connection, so with 10,000
/// idle WebSockets the default alone is 640 MiB resident. 16 KiB still holds a whole TLS record
/// (rustls reads records in 4 KiB steps, so each record costs one syscall, not four), and request
/// headers are read into pingora's own buffer anyway. nginx reads headers into 1 KiB
/// (`client_header_buffer_size`) and TLS through 16 KiB.
const LISTENER_READ_BUFFER: usize = 16 * 1024;

fn listener_buffers() -> L4BufferSettings {
    L4BufferSettings::default().read(LISTENER_READ_BUFFER)
}

/// Build the whole server. Certificates are loaded (or generated) here, so a bad one is an
/// error before anything listens.
pub fn build(config: &Config) -> Result<Server, StartError> {
    let conf = ServerConf {
        threads: config.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
        grace_period_seconds: Some(config.grace_period_s),
        graceful_shutdown_timeout_seconds: Some(config.grace_period_s),
        // The app is local: a handful of idle keep-alive connections per server is plenty.
        upstream_keepalive_pool_size: 256,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let rt = Realtime::new(&config.realtime);
    let router = Router::build(config, &|kind, path| rt.service(kind, path))?;
    let pools: Vec<Arc<Pool>> = router.pools.values().cloned().collect();
    let admin_pools = router.pools.clone();
    let hsts = config.tls.hsts.as_ref().and_then(|h| {
        let mut v = format!("max-age={}", h.max_age);
        if h.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        // Digits and a token: always a valid header value.
        http::HeaderValue::try_from(v).ok()
    });
    let temp = config.temp_dir();
    let temp_dir = crate::buffering::prepare_dir(&temp)
        .map_err(|source| StartError::TempDir { path: temp, source })?;
    let connector = pingora::connectors::http::v1::Connector::new(Some(
        pingora::connectors::ConnectorOptions::from_server_conf(&server.configuration),
    ));
    let gateway = Gateway {
        router,
        limits: config.limits.clone(),
        trusted: config.trusted_proxies(),
        hsts,
        internal: crate::accel::Internal::from_config(&config.internal_locations)?,
        temp_dir: Arc::new(temp_dir),
        connector,
    };
    let mut options = HttpServerOptions::default();
    // pingora counts reuses, not requests: a limit of N reuses serves N + 1 requests.
    options.keepalive_request_limit = Some(config.limits.keepalive_requests.saturating_sub(1));
    let mut http = pingora::proxy::http_proxy(&server.configuration, gateway);
    http.server_options = Some(options);
    // Every listener gets the header deadline: a slowloris holds a connection as well on the
    // redirect or admin listener as on the front door.
    let header_timeout = Duration::from_millis(config.limits.header_timeout_ms);
    let mut proxy = Service::new(
        "gateway".to_string(),
        HeaderDeadline {
            // HTTP/2 connections are accepted by `H2Guard` (preface and idle deadlines); the
            // header deadline passes them through untouched and wraps HTTP/1 ones.
            // The header deadline is re-armed per request by `Gateway::logging`
            // (`header_deadline::request_done`), not by a `PerRequest` wrapper.
            inner: Arc::new(H2Guard {
                inner: Arc::new(http),
                limits: H2Limits::from_limits(&config.limits),
            }),
            timeout: header_timeout,
        },
    );

    if let Some(addr) = &config.listen.https {
        let resolver = SniResolver::from_config(config)?;
        let mut tls = TlsSettings::intermediate("", "")
            .expect("TlsSettings::intermediate only stores its arguments");
        tls.set_cert_resolver(Arc::new(resolver));
        tls.enable_h2();
        proxy.add_listener(
            ListenerConfig::tcp(addr)
                .tls(tls)
                .l4_buffer(listener_buffers()),
        );
        if let Some(http) = &config.listen.http {
            let port = addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(443);
            let mut redirect = Service::new(
                "http-redirect".to_string(),
                HeaderDeadline::new(
                    pingora::apps::http_app::HttpServer::new_app(RedirectToHttps {
                        https_port: port,
                    }),
                    header_timeout,
                ),
            );
            redirect.add_tcp(http);
            server.add_service(redirect);
        }
    } else if let Some(http) = &config.listen.http {
        proxy.add_listener(ListenerConfig::tcp(http).l4_buffer(listener_buffers()));
    }
    server.add_service(proxy);

    if let Some(addr) = &config.listen.admin {
        let admin = Admin {
            pools: admin_pools,
            hub: rt.hub.clone(),
            body: crate::buffering::BodyLimits {
                max_bytes: config.limits.max_body_bytes,
                memory: config.limits.client_body_buffer_bytes,
                timeout: Duration::from_millis(config.limits.client_body_timeout_ms),
                min_rate: config.limits.client_body_min_rate,
            },
            publish: Arc::new({
                let api = realtime::publish::PublishApi::new(
                    rt.hub.clone(),
                    config.realtime.publish.token.clone(),
                );
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
        admin.add_tcp(addr);
        server.add_service(admin);
    }
    server.add_service(background_service(
        "hub sweeper",
        HubSweeper(rt.hub.clone()),
    ));
    server.add_service(background_service("health checks", HealthChecks(pools)));
    Ok(server)
}
