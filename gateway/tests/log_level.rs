//! The log's cost on the request path: with the default filter, pingora's `debug!` and
//! `trace!` lines (several per request) must stop at the `log` crate's level check, not be
//! formatted and handed to the subscriber. A test binary of its own: the logger is global.

#[test]
fn pingoras_debug_lines_are_not_even_formatted_at_the_default_level() {
    std::env::remove_var("RUST_LOG");
    gateway::logging::init();
    assert_eq!(log::max_level(), log::LevelFilter::Info);
    assert!(!log::log_enabled!(target: "pingora_proxy::proxy_h1", log::Level::Debug));
}
