//! Helpers shared by the test binaries of this crate.

pub mod counting_alloc;
