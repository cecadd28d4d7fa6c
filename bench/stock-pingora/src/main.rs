//! The control for bench/http.sh: the smallest reverse proxy pingora 0.9.1 allows, so each
//! gateway figure can be read as "gateway vs stock pingora vs nginx" in one run.
//!
//! One `ProxyHttp` with one upstream peer (no balancing, no health checks, no filters), TLS by
//! pingora's rustls listener with the same certificate as the other targets, jemalloc as the
//! gateway uses, and the thread count given. Whatever the gateway costs above this is ours;
//! what this costs above nginx is pingora's.
//!
//! A Cargo project of its own (its own workspace and Cargo.lock): it builds against the
//! pingora crates exactly as published, while the main workspace patches some of them
//! (vendor/*.patch.md), so the control stays stock.
//!
//! `stock-pingora --listen 127.0.0.1:18448 --upstream 127.0.0.1:18080 --cert c.pem --key k.pem --threads 2`

use async_trait::async_trait;
use clap::Parser;
use pingora::prelude::{HttpPeer, ProxyHttp, Result, Session};
use pingora::proxy::http_proxy_service;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

/// The gateway's allocator (see gateway/src/main.rs), so the allocator is not a difference.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
struct Args {
    /// TLS listen address.
    #[arg(long)]
    listen: String,
    /// The app, plain HTTP/1.1 (`host:port`).
    #[arg(long)]
    upstream: String,
    #[arg(long)]
    cert: String,
    #[arg(long)]
    key: String,
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

struct Stock {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Stock {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args = Args::parse();
    let conf = ServerConf {
        threads: args.threads,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Stock {
            upstream: args.upstream,
        },
    );
    if let Err(e) = proxy.add_tls(&args.listen, &args.cert, &args.key) {
        eprintln!(
            "stock-pingora: cannot listen with TLS on {}: {e}",
            args.listen
        );
        std::process::exit(2);
    }
    server.add_service(proxy);
    server.run_forever();
}
