//! The process's log: one `tracing` subscriber for the gateway's own lines and pingora's
//! (`log` records, bridged).

/// The log: lines on stderr, filtered by `RUST_LOG` (default below), and pingora's TLS
/// handshake failures counted and logged by their reason instead ([`crate::noise`]).
pub fn init() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // pingora's HTTP/1 server warns when a second response head is written; the gateway
        // does that on purpose for X-Accel-Redirect answers (the file's head is sent first,
        // the app's is then skipped: see `accel` and `proxy`), and it is that module's only
        // warning.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(
                "info,pingora=warn,pingora_core::protocols::http::v1::server=error",
            )
        })
        .add_directive(
            crate::noise::SILENCED
                .parse()
                .expect("a valid filter directive"),
        );
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter);
    let noise = crate::noise::HandshakeNoise.with_filter(
        tracing_subscriber::filter::filter_fn(crate::noise::wanted)
            .with_max_level_hint(crate::noise::MAX_LEVEL),
    );
    tracing_subscriber::registry()
        .with(output)
        .with(noise)
        .init();
}
