//! An operator who asks for more (`RUST_LOG=debug`) gets it: pingora's `debug!` lines come
//! through the `log` bridge, and the TLS-noise layer beside the output (which takes `log`
//! records too) must not claim them. A test binary of its own: the logger is global.

#[test]
fn rust_log_debug_lets_pingoras_debug_lines_through_without_tripping_the_noise_filter() {
    std::env::set_var("RUST_LOG", "debug");
    gateway::logging::init();
    assert_eq!(log::max_level(), log::LevelFilter::Debug);
    assert!(log::log_enabled!(target: "pingora_proxy::proxy_h1", log::Level::Debug));
    // Both reach the subscriber's filters; in a debug build a filter that accepts a line above
    // the level it promised panics here.
    log::debug!(target: "pingora_proxy::proxy_h1", "a pingora debug line");
    log::debug!(target: "pingora_core::services::listening", "a silenced module's debug line");
    tracing::debug!(target: "gateway::tls", "a gateway debug line");
}
