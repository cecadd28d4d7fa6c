//! Protected downloads, as a Rails or Laravel app does them behind nginx: the app checks who
//! may have a file and answers with `X-Accel-Redirect` (or `X-Sendfile`); the gateway serves
//! the file from an internal location, with ranges and validators, and the app's headers.
//! Everything over TLS, against the real binaries (backend-stub's `/accel` sets the headers
//! the query names and a body that must never reach the client; php-fpm for the example).

use std::time::Duration;

use e2e::{client, client_builder, eventually, workspace_root, Gateway, PhpFpm, Scratch, Stub};

/// What backend-stub's `/accel` sends as its own body.
const APP_BODY: &str = "THE APP'S OWN BODY: A FRONT SERVER MUST NEVER SEND THIS";
const SECRET: &str = "SECRET: outside every internal location";

/// `files/` is the internal location's root; `secret.txt` and `.env` sit next to it, and a
/// symlink inside points at the secret.
struct Site {
    gw: Gateway,
    app: Stub,
    dir: Scratch,
    report: Vec<u8>,
}

fn site() -> Site {
    let dir = Scratch::new("accel");
    let d = dir.path();
    std::fs::create_dir_all(d.join("files/sub")).expect("dir");
    // 20 KiB of numbered lines: every range is recognisable.
    let report: Vec<u8> = (0..400)
        .map(|i| format!("line {i:04} of the quarterly report, nothing secret here\n"))
        .collect::<String>()
        .into_bytes();
    std::fs::write(d.join("files/report.txt"), &report).expect("write");
    std::fs::write(d.join("files/sub/notes.md"), "# notes\n").expect("write");
    std::fs::write(d.join("files/.hidden"), SECRET).expect("write");
    std::fs::write(d.join("secret.txt"), SECRET).expect("write");
    std::os::unix::fs::symlink("../secret.txt", d.join("files/escape.txt")).expect("symlink");
    let app = Stub::start("app");
    let gw = Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
upstreams:
  app: {{servers: ["{app}"]}}
internal_locations:
  - {{path: /protected/, root: {root}}}
routes:
  - {{path: /, upstream: app}}
access_log: {{format: json}}
"#,
        app = app.addr,
        root = d.join("files").display(),
    ));
    Site {
        gw,
        app,
        dir,
        report,
    }
}

/// A query value for `/accel`, which decodes it once: every byte but letters and digits
/// escaped, so the header carries exactly `raw`.
fn q(raw: &str) -> String {
    raw.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn accel_url(site: &Site, header: &str, value: &str, extra: &[(&str, &str)]) -> String {
    let mut url = format!("/accel?{header}={}", q(value));
    for (k, v) in extra {
        url.push_str(&format!("&{k}={}", q(v)));
    }
    site.gw.https(&url)
}

const DOWNLOAD: &[(&str, &str)] = &[
    ("content-type", "text/csv; charset=utf-8"),
    (
        "content-disposition",
        "attachment; filename=\"q1-report.csv\"",
    ),
    ("x-content-type-options", "nosniff"),
];

#[tokio::test]
async fn the_app_hands_out_a_file_with_its_own_headers_and_not_its_body() {
    let s = site();
    let url = accel_url(&s, "x-accel-redirect", "/protected/report.txt", DOWNLOAD);
    // HTTP/2 (the default) and HTTP/1.1, twice on one connection: keep-alive survives.
    let h1 = client_builder().http1_only().build().expect("client");
    for (c, version) in [
        (client(), reqwest::Version::HTTP_2),
        (h1.clone(), reqwest::Version::HTTP_11),
        (h1, reqwest::Version::HTTP_11),
    ] {
        let r = c.get(&url).send().await.expect("get");
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), version);
        let h = r.headers().clone();
        assert_eq!(
            h["content-type"], "text/csv; charset=utf-8",
            "the app's type"
        );
        assert_eq!(
            h["content-disposition"],
            "attachment; filename=\"q1-report.csv\""
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "private, max-age=60");
        assert!(h["set-cookie"]
            .to_str()
            .unwrap_or("")
            .starts_with("download=granted"));
        assert_eq!(h["content-length"], s.report.len().to_string().as_str());
        assert_eq!(h["accept-ranges"], "bytes");
        assert!(h.get("etag").is_some() && h.get("last-modified").is_some());
        assert!(h.get("x-accel-redirect").is_none(), "the header leaked");
        let body = r.bytes().await.expect("body");
        assert_eq!(
            body.as_ref(),
            s.report.as_slice(),
            "the file, byte for byte"
        );
        assert!(!String::from_utf8_lossy(&body).contains(APP_BODY));
    }

    // HEAD: the same head, no body.
    let r = client().head(&url).send().await.expect("head");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        s.report.len().to_string().as_str()
    );
    assert_eq!(r.bytes().await.expect("body").len(), 0);

    // Without a Content-Type from the app, the file's name decides it.
    let r = client()
        .get(accel_url(
            &s,
            "x-accel-redirect",
            "/protected/sub/notes.md",
            &[],
        ))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body"), "# notes\n");
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.gw.proc.logs().contains("\"served_by\":\"accel\"")
        })
        .await,
        "the access log says who answered"
    );

    // The app is told how to ask (what Rack::Sendfile and Symfony read), and a client
    // cannot forge the mapping.
    let echo: serde_json::Value = client()
        .get(s.gw.https("/echo"))
        .header("x-accel-mapping", "/=/protected/")
        .header("x-sendfile-type", "X-Sendfile")
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(echo["headers"]["x-sendfile-type"], "X-Accel-Redirect");
    let mapping = echo["headers"]["x-accel-mapping"]
        .as_str()
        .expect("mapping");
    assert!(
        mapping.starts_with(&format!(
            "{}/=/protected/",
            s.dir.path().join("files").display()
        )),
        "{mapping}"
    );
    assert!(
        mapping.split(", ").all(|m| m != "/=/protected/"),
        "the client's mapping got through: {mapping}"
    );
}

#[tokio::test]
async fn downloads_resume_with_ranges_and_revalidate_with_the_etag() {
    let s = site();
    let url = accel_url(&s, "x-accel-redirect", "/protected/report.txt", DOWNLOAD);
    let c = client();
    let len = s.report.len();

    let r = c
        .get(&url)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 1000-1999/{len}").as_str()
    );
    assert_eq!(r.headers()["content-disposition"], DOWNLOAD[1].1);
    let etag = r.headers()["etag"].to_str().expect("etag").to_string();
    assert_eq!(
        r.bytes().await.expect("body").as_ref(),
        &s.report[1000..2000]
    );

    // Resuming the rest, only if the file is still the same one.
    let r = c
        .get(&url)
        .header("range", "bytes=20000-")
        .header("if-range", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.expect("body").as_ref(), &s.report[20000..]);
    let r = c
        .get(&url)
        .header("range", "bytes=20000-")
        .header("if-range", "\"an-older-version\"")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200, "a changed file is sent whole");
    assert_eq!(r.bytes().await.expect("body").len(), len);

    let r = c
        .get(&url)
        .header("range", format!("bytes={}-", len + 10))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{len}").as_str()
    );

    // A cached copy is confirmed without a body, with the app's caching headers.
    let r = c
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert_eq!(r.headers()["cache-control"], "private, max-age=60");
    assert!(r.headers().get("content-disposition").is_none());
    assert_eq!(r.bytes().await.expect("body").len(), 0);
}

#[tokio::test]
async fn x_sendfile_is_served_only_inside_an_internal_root() {
    let s = site();
    let c = client();
    let inside = s.dir.path().join("files/report.txt");
    let r = c
        .get(accel_url(
            &s,
            "x-sendfile",
            inside.to_str().expect("utf-8"),
            DOWNLOAD,
        ))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-disposition"], DOWNLOAD[1].1);
    assert_eq!(r.bytes().await.expect("body").as_ref(), s.report.as_slice());

    let outside = [
        s.dir.path().join("secret.txt").display().to_string(),
        format!("{}/files/../secret.txt", s.dir.path().display()),
        s.dir.path().join("files/escape.txt").display().to_string(),
        "/etc/passwd".to_string(),
        "files/report.txt".to_string(),
    ];
    for path in &outside {
        let r = c
            .get(accel_url(&s, "x-sendfile", path, DOWNLOAD))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 404, "X-Sendfile: {path}");
        let body = r.text().await.expect("body");
        assert!(!body.contains("SECRET") && !body.contains("root:") && !body.contains(APP_BODY));
    }
    let logs = s.gw.proc.logs();
    assert!(
        logs.contains("header=\"x-sendfile\"")
            && logs.contains("reason=\"not inside the root of any internal location\""),
        "{logs}"
    );
}

#[tokio::test]
async fn traversal_in_the_header_is_refused_and_nothing_leaks() {
    let s = site();
    let c = client();
    let attempts = [
        ("/protected/../secret.txt", "a . or .. segment"),
        ("/protected/%2e%2e/secret.txt", "a . or .. segment"),
        ("/protected/%2E%2E/secret.txt", "a . or .. segment"),
        ("/protected/./../secret.txt", "a . or .. segment"),
        (
            "/protected/..%2fsecret.txt",
            "an encoded slash or backslash",
        ),
        (
            "/protected%2F..%2Fsecret.txt",
            "an encoded slash or backslash",
        ),
        (
            "/protected/..%5Csecret.txt",
            "an encoded slash or backslash",
        ),
        ("/protected/report.txt%00.png", "a NUL byte"),
        ("/protected/%zz", "malformed percent-encoding"),
        ("/protected/", "names the location itself, not a file in it"),
        ("/elsewhere/secret.txt", "not under any internal location"),
        ("@files", "named locations (@name) are not supported"),
        ("protected/report.txt", "not an absolute path"),
    ];
    for (value, reason) in attempts {
        let r = c
            .get(accel_url(&s, "x-accel-redirect", value, DOWNLOAD))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 404, "X-Accel-Redirect: {value}");
        assert!(r.headers().get("content-disposition").is_none());
        let body = r.text().await.expect("body");
        assert_eq!(body, "404 Not Found: no such file\n", "{value}");
        let logs = s.gw.proc.logs();
        assert!(
            logs.contains(&format!("reason=\"{reason}\"")),
            "no log line for {value} ({reason}):\n{logs}"
        );
    }
    // Values that pass the header check but name nothing servable inside the root.
    for value in [
        "/protected/%252e%252e/secret.txt", // a file literally named "%2e%2e/secret.txt"
        "/protected/escape.txt",            // a symlink out of the root
        "/protected/.hidden",
        "/protected/sub",
        "/protected/missing.txt",
    ] {
        let r = c
            .get(accel_url(&s, "x-accel-redirect", value, DOWNLOAD))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 404, "X-Accel-Redirect: {value}");
        let body = r.text().await.expect("body");
        assert!(
            !body.contains("SECRET") && !body.contains(APP_BODY),
            "{value}"
        );
    }
    assert!(s
        .gw
        .proc
        .logs()
        .contains("the app's file redirect names nothing to serve"));

    // The gateway is none the worse: a fresh request is served whole.
    let r = c
        .get(accel_url(
            &s,
            "x-accel-redirect",
            "/protected/report.txt",
            DOWNLOAD,
        ))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body").as_ref(), s.report.as_slice());
}

#[tokio::test]
async fn an_internal_location_is_404_from_outside_even_where_a_route_matches() {
    let s = site();
    let c = client();
    let h1 = client_builder().http1_only().build().expect("client");
    for path in [
        "/protected/report.txt",
        "/protected/",
        "/protected",
        "/prot%65cted/report.txt",
        "/protected%2Freport.txt",
        "/x/../protected/report.txt",
        "/x/%2e%2e/protected/report.txt",
        "//protected/report.txt",
    ] {
        for client in [&c, &h1] {
            let r = client.get(s.gw.https(path)).send().await.expect("get");
            assert_eq!(r.status(), 404, "{path}");
            assert!(
                r.headers().get("x-backend-id").is_none(),
                "{path} reached the app"
            );
            let body = r.text().await.expect("body");
            assert!(!body.contains("line 0000"), "{path} served the file");
        }
    }
    // The route `/` sends everything else to the app, which never heard of those requests.
    assert_eq!(
        c.get(s.gw.https("/ping"))
            .send()
            .await
            .expect("get")
            .status(),
        200
    );
    let paths = s.app.paths().await;
    assert!(
        paths.iter().all(|p| !p.contains("protected")),
        "the app saw {paths:?}"
    );
    assert!(s
        .gw
        .proc
        .logs()
        .contains("request from outside for an internal location"));
}

#[tokio::test]
async fn the_php_example_hands_out_its_report_through_php_fpm() {
    let example = workspace_root().join("examples/php");
    let report = std::fs::read(example.join("protected/report.txt")).expect("report.txt");
    assert!(report.len() >= 4096, "the example's report is a real file");
    let fpm = PhpFpm::start("");
    let gw = Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
upstreams:
  php:
    protocol: fastcgi
    servers: ["{server}"]
    fastcgi: {{root: {root}/public}}
internal_locations:
  - {{path: /protected/, root: {root}/protected}}
routes:
  - path: /
    static: {{root: {root}/public}}
    upstream: php
"#,
        server = fpm.server(),
        root = example.display(),
    ));
    let c = client();
    let r = c
        .get(gw.https("/download/report.txt"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"report.txt\""
    );
    let etag = r.headers()["etag"].to_str().expect("etag").to_string();
    let body = r.bytes().await.expect("body");
    assert_eq!(body.as_ref(), report.as_slice());
    assert!(!String::from_utf8_lossy(&body).contains("ignored X-Accel-Redirect"));

    let r = c
        .get(gw.https("/download/report.txt"))
        .header("range", "bytes=0-99")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.expect("body").as_ref(), &report[..100]);
    let r = c
        .get(gw.https("/download/report.txt"))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 304);

    // PHP names a file that is not there: the gateway's 404, and PHP is asked every time.
    let r = c
        .get(gw.https("/download/nothing.txt"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    // From outside, the location does not exist, and PHP never runs for it.
    let r = c
        .get(gw.https("/protected/report.txt"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    let log = fpm.access_log();
    assert!(log.contains("GET /download/report.txt 200"), "{log}");
    assert!(log.contains("GET /download/nothing.txt 200"), "{log}");
    assert!(!log.contains("/protected/"), "{log}");
}

#[tokio::test]
async fn an_upload_answered_with_a_file_gets_the_file() {
    // A POST's body is held and relayed by the gateway itself: the app's X-Accel-Redirect
    // answer is honoured on that path too, and the app's mapping headers reach it.
    let s = site();
    let url = accel_url(&s, "x-accel-redirect", "/protected/report.txt", DOWNLOAD);
    for c in [
        client(),
        client_builder().http1_only().build().expect("client"),
    ] {
        let r = c
            .post(&url)
            .body("export=q1&format=csv")
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-disposition"],
            "attachment; filename=\"q1-report.csv\""
        );
        assert!(
            r.headers().get("x-accel-redirect").is_none(),
            "the header leaked"
        );
        let body = r.bytes().await.expect("body");
        assert_eq!(
            body.as_ref(),
            s.report.as_slice(),
            "the file, byte for byte"
        );
    }
    // Traversal is refused on this path as on the other.
    let bad = accel_url(&s, "x-accel-redirect", "/protected/../secret.txt", &[]);
    let r = client().post(&bad).body("x=1").send().await.expect("post");
    assert_eq!(r.status(), 404);
    let body = r.text().await.expect("body");
    assert!(
        !body.contains("SECRET") && !body.contains(APP_BODY),
        "{body}"
    );
}

/// Every answer passes the same finisher: a file the app names is compressed on the way out
/// like a static file (nginx's gzip filter runs after an internal redirect too), and its 304
/// carries the same `Vary` and weak ETag as the compressed 200 it stands for.
#[tokio::test]
async fn a_named_file_is_compressed_like_a_static_file() {
    use std::io::Read;
    let s = site();
    let url = accel_url(&s, "x-accel-redirect", "/protected/report.txt", &[]);
    let h1 = client_builder().http1_only().build().expect("client");
    let r = h1
        .get(&url)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-encoding"], "gzip");
    assert_eq!(h["vary"], "Accept-Encoding");
    assert!(h.get("content-length").is_none(), "{h:?}");
    let etag = h["etag"].to_str().expect("etag").to_string();
    assert!(etag.starts_with("W/\""), "{etag}");
    let body = r.bytes().await.expect("body");
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(body.as_ref())
        .read_to_end(&mut plain)
        .expect("gzip");
    assert_eq!(plain, s.report, "the file, byte for byte once decoded");

    let r = h1
        .get(&url)
        .header("accept-encoding", "gzip")
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("conditional get");
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["vary"], "Accept-Encoding");
    assert_eq!(r.headers()["etag"], etag.as_str());

    // Without Accept-Encoding: the identity file, told what varies.
    let r = h1.get(&url).send().await.expect("get");
    assert_eq!(r.headers()["vary"], "Accept-Encoding");
    assert_eq!(
        r.headers()["content-length"],
        s.report.len().to_string().as_str()
    );
}
