//! Many nodes, one realtime: the fleet's shared state in Redis.
//!
//! work in progress
pub mod cursor;

#[cfg(test)]
mod cursor_tests;
