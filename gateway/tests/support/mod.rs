//! What the gateway's own test binaries share.

/// The realtime crate's counting allocator, one file for both crates' memory tests.
#[path = "../../../realtime/tests/support/counting_alloc.rs"]
pub mod counting_alloc;
