//! The unit tests of the queue between the two halves of pingora's HTTP/1 proxy exchange
//! (vendor/pingora-proxy/src/task_pipe.rs, vendor/pingora-proxy.patch.md), run here because the
//! vendored pingora-proxy is not a workspace member (its own tests and examples pull in a long
//! list of dev-dependencies). The module uses nothing but `std`, so it builds as it is.

#[path = "../../vendor/pingora-proxy/src/task_pipe.rs"]
#[allow(dead_code)]
mod task_pipe;
