//! Static files as nginx serves them, with `try_files` falling through to the app.

use e2e::{client, client_builder, raw_tls, Gateway, Scratch, Stub};
use std::time::Duration;

struct Site {
    gw: Gateway,
    app: Stub,
    _root: Scratch,
}

fn site() -> Site {
    let app = Stub::start("app");
    let root = Scratch::new("public");
    let r = root.path();
    std::fs::write(r.join("index.html"), "<h1>home</h1>\n").expect("write");
    std::fs::write(r.join("app.js"), "console.log('hi');\n".repeat(100)).expect("write");
    std::fs::create_dir_all(r.join("docs")).expect("dir");
    std::fs::write(r.join("docs/index.html"), "docs\n").expect("write");
    std::fs::write(r.join("data.bin"), (0..=255u8).collect::<Vec<u8>>()).expect("write");
    std::fs::write(r.join("style.css"), "body{}\n").expect("write");
    std::fs::write(r.join("style.css.gz"), b"\x1f\x8bGZ").expect("write");
    std::fs::write(r.join("style.css.br"), b"BR").expect("write");
    std::fs::write(r.join(".env"), "SECRET=1\n").expect("write");
    // A secret next to the root that a symlink inside it points at.
    let outside = Scratch::new("outside");
    std::fs::write(outside.path().join("secret.txt"), "top secret\n").expect("write");
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), r.join("link.txt"))
        .expect("symlink");
    std::mem::forget(outside);
    let gw = Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
upstreams: {{app: {{servers: ["{}"]}}}}
routes:
  - path: /
    static: {{root: {}, cache_control: "public, max-age=60"}}
    upstream: app
"#,
        app.addr,
        r.display()
    ));
    Site {
        gw,
        app,
        _root: root,
    }
}

#[tokio::test]
async fn files_are_served_with_type_validators_and_cache_control() {
    let s = site();
    let c = client();
    let r = c.get(s.gw.https("/app.js")).send().await.expect("get");
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(h["cache-control"], "public, max-age=60");
    assert_eq!(h["accept-ranges"], "bytes");
    assert!(h.contains_key("etag") && h.contains_key("last-modified"));
    assert_eq!(r.bytes().await.expect("body").len(), 1900);

    let r = c.get(s.gw.https("/")).send().await.expect("get");
    assert_eq!(r.text().await.expect("body"), "<h1>home</h1>\n");
    let r = c.get(s.gw.https("/docs/")).send().await.expect("get");
    assert_eq!(r.text().await.expect("body"), "docs\n");
    let r = c.get(s.gw.https("/docs?x=1")).send().await.expect("get");
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "/docs/?x=1");
    assert!(
        s.app.paths().await.is_empty(),
        "the app saw a static request"
    );
}

#[tokio::test]
async fn conditional_requests_get_304() {
    let s = site();
    let c = client();
    let r = c.get(s.gw.https("/app.js")).send().await.expect("get");
    let etag = r.headers()["etag"].clone();
    let modified = r.headers()["last-modified"].clone();
    let r = c
        .get(s.gw.https("/app.js"))
        .header("if-none-match", etag)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 304);
    assert!(r.bytes().await.expect("body").is_empty());
    let r = c
        .get(s.gw.https("/app.js"))
        .header("if-modified-since", modified)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 304);
    let r = c
        .get(s.gw.https("/app.js"))
        .header("if-none-match", "\"other\"")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn ranges_and_head() {
    let s = site();
    let c = client();
    let r = c
        .get(s.gw.https("/data.bin"))
        .header("range", "bytes=10-19")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 10-19/256");
    assert_eq!(
        r.bytes().await.expect("body").to_vec(),
        (10..20u8).collect::<Vec<u8>>()
    );
    let r = c
        .get(s.gw.https("/data.bin"))
        .header("range", "bytes=-6")
        .send()
        .await
        .expect("get");
    assert_eq!(r.headers()["content-range"], "bytes 250-255/256");
    let r = c
        .get(s.gw.https("/data.bin"))
        .header("range", "bytes=300-")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */256");

    let r = c.head(s.gw.https("/data.bin")).send().await.expect("head");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "256");
    assert!(r.bytes().await.expect("body").is_empty());
}

#[tokio::test]
async fn precompressed_siblings_are_negotiated() {
    let s = site();
    // No automatic decompression: we want to see exactly what was sent.
    let c = client_builder().build().expect("client");
    let get = |enc: &'static str| {
        let c = c.clone();
        let url = s.gw.https("/style.css");
        async move {
            c.get(url)
                .header("accept-encoding", enc)
                .send()
                .await
                .expect("get")
        }
    };
    let r = get("gzip, br").await;
    assert_eq!(r.headers()["content-encoding"], "br");
    assert_eq!(r.headers()["content-type"], "text/css; charset=utf-8");
    assert_eq!(r.headers()["vary"], "Accept-Encoding");
    assert_eq!(r.bytes().await.expect("body").as_ref(), b"BR");
    let r = get("gzip").await;
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let r = get("br;q=0, identity").await;
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(r.headers()["vary"], "Accept-Encoding");
    assert_eq!(r.bytes().await.expect("body").as_ref(), b"body{}\n");
}

#[tokio::test]
async fn missing_files_and_other_methods_fall_through_to_the_app() {
    let s = site();
    let c = client();
    let r = c.get(s.gw.https("/users/42")).send().await.expect("get");
    assert_eq!(r.headers()["x-backend-id"], "app");
    let r = c
        .post(s.gw.https("/"))
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(r.headers()["x-backend-id"], "app", "a POST goes to the app");
    let paths = s.app.paths().await;
    assert_eq!(paths, ["/users/42", "/"]);
}

/// Attack shape: raw bytes -> status -> the backend never saw it -> a fresh request works.
#[tokio::test]
async fn traversal_never_serves_a_file_outside_the_root() {
    let s = site();
    for (path, expect) in [
        ("/../../../../etc/passwd", "400"),
        ("/%2e%2e/%2e%2e/etc/passwd", "400"),
        ("/docs/..%2f..%2f..%2fetc/passwd", "400"),
        ("/%00index.html", "400"),
        ("/docs%5c..%5c..%5cetc%5cpasswd", "400"),
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let out = raw_tls(s.gw.https_addr(), req.as_bytes(), Duration::from_secs(5)).await;
        assert!(
            out.starts_with(&format!("HTTP/1.1 {expect}")),
            "{path}: {out}"
        );
        assert!(!out.contains("root:"), "{path} leaked /etc/passwd");
    }
    // A symlink out of the root and a dotfile are not served: they fall through to the app.
    let c = client();
    for path in ["/link.txt", "/.env"] {
        let r = c.get(s.gw.https(path)).send().await.expect("get");
        assert_eq!(r.headers()["x-backend-id"], "app", "{path}");
        let body = r.text().await.expect("body");
        assert!(
            !body.contains("top secret") && !body.contains("SECRET"),
            "{path}"
        );
    }
    let seen = s.app.paths().await;
    assert!(
        seen.iter().all(|p| p == "/link.txt" || p == "/.env"),
        "the app saw a traversal attempt: {seen:?}"
    );
    let r = c.get(s.gw.https("/app.js")).send().await.expect("get");
    assert_eq!(r.status(), 200, "a fresh request still works");
}
