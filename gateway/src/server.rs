//! Assembling the pingora server from a validated [`Config`].

use std::sync::Arc;
use std::time::Duration;

use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::config::{Config, RealtimeKind};
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

fn realtime_service(kind: RealtimeKind) -> Arc<dyn realtime::seam::Service> {
    match kind {
        RealtimeKind::SeamTest => Arc::new(realtime::diag::SeamTest::default()),
    }
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

    let router = Router::build(config, &realtime_service)?;
    let pools: Vec<Arc<Pool>> = router.pools.values().cloned().collect();
    let admin_pools = router.pools.clone();
    let hsts = config.tls.hsts.as_ref().map(|h| {
        let mut v = format!("max-age={}", h.max_age);
        if h.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        v
    });
    let gateway = Gateway {
        router,
        limits: config.limits.clone(),
        trusted: config.trusted_proxies(),
        hsts,
    };
    let mut options = HttpServerOptions::default();
    // pingora counts reuses, not requests: a limit of N reuses serves N + 1 requests.
    options.keepalive_request_limit = Some(config.limits.keepalive_requests.saturating_sub(1));
    let mut http = pingora::proxy::http_proxy(&server.configuration, gateway);
    http.server_options = Some(options);
    let mut proxy = Service::new(
        "gateway".to_string(),
        HeaderDeadline {
            inner: Arc::new(http),
            timeout: Duration::from_millis(config.limits.header_timeout_ms),
        },
    );

    if let Some(addr) = &config.listen.https {
        let resolver = SniResolver::from_config(config)?;
        let mut tls = TlsSettings::intermediate("", "")
            .expect("TlsSettings::intermediate only stores its arguments");
        tls.set_cert_resolver(Arc::new(resolver));
        tls.enable_h2();
        proxy.add_tls_with_settings(addr, None, tls);
        if let Some(http) = &config.listen.http {
            let port = addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(443);
            let mut redirect = Service::new(
                "http-redirect".to_string(),
                pingora::apps::http_app::HttpServer::new_app(RedirectToHttps { https_port: port }),
            );
            redirect.add_tcp(http);
            server.add_service(redirect);
        }
    } else if let Some(http) = &config.listen.http {
        proxy.add_tcp(http);
    }
    server.add_service(proxy);

    if let Some(addr) = &config.listen.admin {
        let mut admin = Service::new(
            "admin".to_string(),
            pingora::apps::http_app::HttpServer::new_app(Admin { pools: admin_pools }),
        );
        admin.add_tcp(addr);
        server.add_service(admin);
    }
    server.add_service(background_service("health checks", HealthChecks(pools)));
    Ok(server)
}
