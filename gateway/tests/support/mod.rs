//! What the gateway's own test binaries share.

pub mod counting_alloc;
