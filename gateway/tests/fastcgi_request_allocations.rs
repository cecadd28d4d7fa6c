//! A PHP request's FastCGI records are made with a handful of allocations, not one or two per
//! parameter: the parameters are encoded into one byte stream as they are gathered. A test
//! binary of its own: it counts the process's allocations with a global allocator.

mod support;

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use gateway::fastcgi::{build_params, params, RequestInfo};
use pingora::http::RequestHeader;
use support::counting_alloc::ALLOCATIONS;

/// What a browser sends for a page of a Laravel app, after the gateway's forwarding headers.
fn browser_request() -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/dashboard?tab=2", None).unwrap();
    for (name, value) in [
        ("host", "app.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-US,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "XSRF-TOKEN=abc"),
        ("cookie", "laravel_session=def"),
        ("x-forwarded-for", "203.0.113.5"),
        ("x-forwarded-proto", "https"),
        ("x-real-ip", "203.0.113.5"),
        ("x-request-id", "0123456789abcdef"),
    ] {
        req.append_header(name, value).unwrap();
    }
    req
}

#[test]
fn a_php_requests_parameters_take_a_handful_of_allocations_not_one_per_parameter() {
    let req = browser_request();
    let root = PathBuf::from("/srv/app/public");
    let script = root.join("index.php");
    let info = RequestInfo {
        req: &req,
        script: ("/index.php", &script),
        document_root: &root,
        tls: true,
        peer: Some("127.0.0.1:50123".parse().unwrap()),
        server: Some("127.0.0.1:443".parse().unwrap()),
        content_length: None,
    };
    // Once first: anything made once per process (lazy statics) is not the request's.
    let mut out = Vec::with_capacity(8192);
    params(&mut out, &build_params(&info));
    let warm = out.clone();

    out.clear();
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    params(&mut out, &build_params(&info));
    let made = ALLOCATIONS.load(Ordering::SeqCst) - before;

    assert_eq!(out, warm, "the same request makes the same records");
    // 30 parameters (20 of nginx's fastcgi_params and one per header name); a String and a
    // Vec each, and a list of them, before.
    assert!(made <= 2, "{made} allocations for one request's parameters");
}
