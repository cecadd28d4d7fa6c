//! `backend-stub`: a small HTTP server standing in for the Ruby/PHP app
//! behind the gateway, so gateway tests can run against a real process.
//!
//! Usage: `backend-stub --listen ADDR --id NAME [--workers N] [--quiet]
//! [--publish-url URL]`, where ADDR is `host:port` or a Unix socket,
//! `unix:/path` (or Puma's spelling, `unix:///path`).
//! Once bound it prints `backend-stub NAME listening on ADDR` (the actual
//! address, so `--listen 127.0.0.1:0` works) as its only stdout line.

mod app;
mod auth;
mod events;
mod publish;
mod reqlog;
#[cfg(test)]
mod tests;

use std::future::IntoFuture;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use clap::Parser;
use tokio::sync::watch;
use tokio::time::{timeout_at, Instant};

#[derive(Debug, Parser)]
#[command(about = "HTTP backend stub for gateway tests")]
struct Cli {
    /// Address to listen on, e.g. 127.0.0.1:9001 (port 0 picks a free one),
    /// or a Unix socket: unix:/run/app.sock (also unix:///run/app.sock).
    #[arg(long)]
    listen: String,
    /// Backend name, sent as `X-Backend-Id` and reported by `/echo`.
    #[arg(long)]
    id: String,
    /// Handle at most N requests at once (like Puma threads or php-fpm
    /// children); `/ping` and `/__log` are exempt. Default: unlimited.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    workers: Option<u32>,
    /// Do not log a line per request (for benchmarks).
    #[arg(long)]
    quiet: bool,
    /// On SIGTERM/SIGINT, how long in-flight requests and WebSockets may
    /// take to finish before the process exits anyway.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    shutdown_grace_ms: u64,
    /// The gateway's publish API, which `POST /publish-demo` calls
    /// (plain http:// only).
    #[arg(long, default_value = app::DEFAULT_PUBLISH_URL, value_name = "URL")]
    publish_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    publish::parse_url(&cli.publish_url).map_err(|e| anyhow::anyhow!("--publish-url: {e}"))?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let config = app::Config {
        id: cli.id.clone(),
        workers: cli.workers.map(|n| n as usize),
        quiet: cli.quiet,
        publish_url: cli.publish_url.clone(),
    };
    let router = app::router(config, shutdown_rx.clone())?;

    let mut stop_rx = shutdown_rx;
    let stopped = async move {
        let _ = stop_rx.wait_for(|stopping| *stopping).await;
    };
    let unix = unix_path(&cli.listen);
    let (mut server, local) = match unix {
        Some(path) => {
            // A socket file left by a previous run would make bind fail; anything else at
            // that path is not ours to remove.
            if std::fs::symlink_metadata(path)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            {
                let _ = std::fs::remove_file(path);
            }
            let listener = tokio::net::UnixListener::bind(path)
                .with_context(|| format!("cannot listen on {}", cli.listen))?;
            // No peer address on a Unix socket: `/echo` reports `peer: null`.
            let server =
                axum::serve(listener, router.into_make_service()).with_graceful_shutdown(stopped);
            (tokio::spawn(server.into_future()), format!("unix:{path}"))
        }
        None => {
            let listener = tokio::net::TcpListener::bind(&cli.listen)
                .await
                .with_context(|| format!("cannot listen on {}", cli.listen))?;
            let local = listener.local_addr()?;
            // Streamed ticks are small writes; Nagle would hold them back.
            let listener = listener.tap_io(|tcp| {
                if let Err(err) = tcp.set_nodelay(true) {
                    tracing::debug!("cannot set TCP_NODELAY: {err}");
                }
            });
            let server = axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(stopped);
            (tokio::spawn(server.into_future()), local.to_string())
        }
    };
    // Like Puma, leave no socket file behind on a clean exit.
    struct RemoveSocket<'a>(Option<&'a str>);
    impl Drop for RemoveSocket<'_> {
        fn drop(&mut self) {
            if let Some(p) = self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let _remove_socket = RemoveSocket(unix);

    // The readiness line a harness waits for: only after bind succeeded.
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "backend-stub {} listening on {local}", cli.id)?;
        stdout.flush()?;
    }

    tokio::select! {
        result = &mut server => {
            // axum's serve only returns after a shutdown signal; treat an
            // early end as a failure.
            result.context("server task failed")?.context("server failed")?;
            anyhow::bail!("server stopped unexpectedly");
        }
        signal = shutdown_signal() => signal?,
    }

    tracing::info!("shutting down");
    let deadline = Instant::now() + Duration::from_millis(cli.shutdown_grace_ms);
    let _ = shutdown_tx.send(true);
    // Stop accepting, let in-flight requests finish, close idle keep-alives.
    if timeout_at(deadline, &mut server).await.is_err() {
        tracing::warn!("in-flight requests still running at the grace deadline; exiting");
        return Ok(());
    }
    // WebSocket sessions outlive their HTTP connection; each holds a
    // receiver and drops it after sending its Close frame.
    if timeout_at(deadline, shutdown_tx.closed()).await.is_err() {
        tracing::warn!("websockets still open at the grace deadline; exiting");
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// The socket path of `unix:/path` or `unix:///path`.
fn unix_path(listen: &str) -> Option<&str> {
    let rest = listen.strip_prefix("unix:")?;
    Some(rest.strip_prefix("//").unwrap_or(rest))
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
