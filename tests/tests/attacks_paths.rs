//! Path attacks: the standing regression suite (issue 15) for the ways a URL or an app's
//! answer tries to reach a file it must not: traversal in every encoding on static files,
//! X-Accel-Redirect / X-Sendfile values that point outside the internal location, the
//! FastCGI `cgi.fix_pathinfo` hole, and direct requests for `/protected/...`.
//!
//! Requests go out as raw bytes over TLS (a client library would normalise `..` or re-encode
//! the path before sending it). Each test asserts the exact status, that no byte of the
//! secret ever comes back, that the app (backend-stub's `/__log`) or php-fpm never saw what
//! it must not, and then that a fresh, ordinary request is still served.

use std::time::Duration;

use e2e::raw::{app_forget, over_tls, Answer};
use e2e::{Gateway, PhpFpm, Scratch, Stub};
use futures_util::future::join_all;

const WAIT: Duration = Duration::from_secs(10);
/// The one file outside every root; it must never be served.
const SECRET: &str = "SECRET-OUTSIDE-THE-ROOT";
const PROTECTED: &str = "PROTECTED-REPORT: only through the app";
/// backend-stub `/accel`'s own body, which a front server must never pass on.
const APP_BODY: &str = "THE APP'S OWN BODY";

/// `public/` (static root, falls through to the app), `assets/` (static only, no app),
/// `files/` (the internal location `/protected/`), and `secret.txt` next to them.
struct Site {
    gw: Gateway,
    app: Stub,
    dir: Scratch,
}

fn site() -> Site {
    let dir = Scratch::new("attack-paths");
    let d = dir.path();
    for sub in ["public/sub", "public/assets", "files/sub"] {
        std::fs::create_dir_all(d.join(sub)).expect("dir");
    }
    std::fs::write(d.join("secret.txt"), SECRET).expect("write");
    std::fs::write(d.join("public/hello.txt"), "hello\n").expect("write");
    std::fs::write(d.join("public/sub/a.txt"), "sub a\n").expect("write");
    std::fs::write(d.join("public/a;b.txt"), "semicolon file\n").expect("write");
    std::fs::write(d.join("public/.env"), SECRET).expect("write");
    std::fs::write(d.join("public/assets/app.css"), "body{}\n").expect("write");
    std::os::unix::fs::symlink("../secret.txt", d.join("public/link.txt")).expect("symlink");
    std::fs::write(d.join("files/report.txt"), PROTECTED).expect("write");
    std::fs::write(d.join("files/sub/notes.txt"), "notes\n").expect("write");
    std::os::unix::fs::symlink("../secret.txt", d.join("files/escape.txt")).expect("symlink");
    let app = Stub::start("app");
    let gw = Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
upstreams: {{app: {{servers: ["{app}"]}}}}
internal_locations:
  - {{path: /protected/, root: {files}}}
routes:
  - {{path: /assets, static: {{root: {public}}}}}
  - {{path: /, static: {{root: {public}}}, upstream: app}}
"#,
        app = app.addr,
        files = d.join("files").display(),
        public = d.join("public").display(),
    ));
    Site { gw, app, dir }
}

async fn get(gw: &Gateway, target: &str) -> Answer {
    let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    over_tls(gw.https_addr(), req.as_bytes(), WAIT).await
}

/// Every target at once; returns `(target, status, body)`.
async fn get_all(gw: &Gateway, targets: &[&str]) -> Vec<(String, u16, String)> {
    join_all(targets.iter().map(|t| async move {
        let a = get(gw, t).await;
        let r = a.responses();
        assert_eq!(r.len(), 1, "{t}: {}", a.text());
        (t.to_string(), r[0].status, r[0].body_text())
    }))
    .await
}

fn leaks(body: &str) -> bool {
    body.contains(SECRET) || body.contains(PROTECTED) || body.contains("root:x:0:0")
}

async fn still_serves_files(s: &Site) {
    let a = get(&s.gw, "/hello.txt").await;
    assert_eq!(a.statuses(), [200], "{}", a.text());
    assert_eq!(a.responses()[0].body_text(), "hello\n");
}

/// `..` in every spelling nginx decodes: plain, `%2e`, mixed case, `.%2e`, through an
/// encoded `/` (`%2f`) or `\` (`%5c`), raw backslashes, overlong UTF-8 dots and slashes
/// (`%c0%ae`, `%e0%80%ae`, `%c0%af`), after a `;` parameter, behind a NUL. Decoded once, then
/// judged: a path that climbs above the root is a 400 (nginx: 400), and a backslash, a NUL
/// or bytes that are not UTF-8 are a 400 before any file is looked at. The app never sees
/// them either (they are not pretty URLs of any app).
#[tokio::test]
async fn traversal_in_any_encoding_never_leaves_the_static_root() {
    let s = site();
    let cases: &[(&str, &str)] = &[
        ("/../secret.txt", "bad path"),
        ("/%2e%2e/secret.txt", "bad path"),
        ("/%2E%2E/secret.txt", "bad path"),
        ("/.%2e/secret.txt", "bad path"),
        ("/sub/../../secret.txt", "bad path"),
        ("/sub/%2e%2e/%2e%2e/secret.txt", "bad path"),
        ("/hello.txt;/../../secret.txt", "bad path"),
        ("/assets/../../secret.txt", "bad path"),
        ("/..%2fsecret.txt", "path climbs above the root"),
        ("/sub%2f..%2f..%2fsecret.txt", "path climbs above the root"),
        ("/sub%2F..%2F..%2Fsecret.txt", "path climbs above the root"),
        ("/assets/..%2f..%2fsecret.txt", "path climbs above the root"),
        ("/..%5csecret.txt", "backslash in path"),
        ("/sub%5c..%5c..%5csecret.txt", "backslash in path"),
        ("/\\..\\secret.txt", "backslash in path"),
        ("/sub\\..\\..\\secret.txt", "backslash in path"),
        ("/%c0%ae%c0%ae/secret.txt", "path is not valid UTF-8"),
        ("/%c0%ae%c0%ae%c0%afsecret.txt", "path is not valid UTF-8"),
        ("/%e0%80%ae%e0%80%ae/secret.txt", "path is not valid UTF-8"),
        ("/%c0%2e%c0%2e/secret.txt", "path is not valid UTF-8"),
        ("/hello.txt%00", "NUL byte in path"),
        ("/hello.txt%00.png", "NUL byte in path"),
        ("/%00/../secret.txt", "NUL byte in path"),
    ];
    let targets: Vec<&str> = cases.iter().map(|(t, _)| *t).collect();
    for ((target, status, body), (_, reason)) in get_all(&s.gw, &targets).await.iter().zip(cases) {
        assert_eq!(*status, 400, "{target}: {body}");
        assert_eq!(body, &format!("400 Bad Request: {reason}\n"), "{target}");
    }
    let paths = s.app.paths().await;
    assert!(paths.is_empty(), "the app saw {paths:?}");
    still_serves_files(&s).await;
}

/// What decodes to a harmless name is just a name: `%252e%252e` (double encoding: decoded
/// once it is the literal text `%2e%2e`), `..;` (a Tomcat path parameter, a plain segment
/// here), `;x=y` parameters, a hidden `.env` (also as `%2eenv`), a symlink out of the root.
/// None is a file under the root, so each falls through to the app like any unknown URL
/// (nginx `try_files`), with the path exactly as sent; no secret comes back. On the
/// static-only route the same is a plain 404.
#[tokio::test]
async fn double_encoding_path_parameters_and_symlinks_are_just_names() {
    let s = site();
    let to_app = [
        "/%252e%252e/secret.txt",
        "/%252e%252e%252fsecret.txt",
        "/sub/%252e%252e/%252e%252e/secret.txt",
        "/..;/secret.txt",
        "/sub/..;/..;/secret.txt",
        "/sub;x=y/a.txt",
        "/.env",
        "/%2eenv",
        "/sub/../.env",
        "/link.txt",
    ];
    for (target, status, body) in get_all(&s.gw, &to_app).await {
        assert_eq!(status, 404, "{target}: {body}");
        assert!(!leaks(&body), "{target}: {body}");
        assert_eq!(
            body,
            format!("not found: {target}\n"),
            "{target}: the app's 404"
        );
    }
    let mut paths = s.app.paths().await;
    paths.sort();
    let mut want: Vec<String> = to_app.iter().map(|t| t.to_string()).collect();
    want.sort();
    assert_eq!(paths, want, "the app gets each path once, as sent");

    app_forget(&s.app).await;
    let static_only = [
        "/assets/%252e%252e/%252e%252e/secret.txt",
        "/assets/..;/..;/secret.txt",
        "/assets/.env",
    ];
    for (target, status, body) in get_all(&s.gw, &static_only).await {
        assert_eq!(status, 404, "{target}: {body}");
        assert_eq!(body, "404 Not Found: no such file\n", "{target}");
    }
    assert!(s.app.paths().await.is_empty());

    // A `;` that is part of a real file name is just a character (nginx: the same).
    for target in ["/a;b.txt", "/a%3bb.txt"] {
        let a = get(&s.gw, target).await;
        assert_eq!(a.statuses(), [200], "{target}: {}", a.text());
        assert_eq!(a.responses()[0].body_text(), "semicolon file\n");
    }
    still_serves_files(&s).await;
}

/// A query value for backend-stub's `/accel` (decoded once there): everything but letters
/// and digits escaped, so the app's header carries exactly `raw`.
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

/// The app answers with `header: value` (backend-stub `/accel`).
async fn app_names(s: &Site, header: &str, value: &str) -> Answer {
    get(&s.gw, &format!("/accel?{header}={}", q(value))).await
}

/// The app (compromised, or tricked into echoing user input into the header) names a file
/// outside the internal location: by `..` in any encoding, overlong UTF-8, `..;`, a
/// backslash, an encoded slash, a control character, a symlink out of the root, the
/// location's name in another case. Each is a 404 with the gateway's own body: never the
/// secret, never the app's body (nginx refuses such values as "unsafe URI" with a 404 too).
/// A `?query` after the path is ignored and cannot steer the file.
#[tokio::test]
async fn x_accel_redirect_cannot_escape_the_internal_location() {
    let s = site();
    let values = [
        "/protected/../secret.txt",
        "/protected/%2e%2e/secret.txt",
        "/protected/.%2e/secret.txt",
        "/protected/%2e%2e%2fsecret.txt",
        "/protected/sub%2f..%2f..%2fsecret.txt",
        "/protected/%5c..%5csecret.txt",
        "/protected/..\\secret.txt",
        "/protected/%c0%ae%c0%ae/secret.txt",
        "/protected/%c0%ae%c0%ae%c0%afsecret.txt",
        "/protected/%252e%252e%252fsecret.txt",
        "/protected/..;/secret.txt",
        "/protected//../secret.txt",
        "//protected/../secret.txt",
        "/protected/sub/../../secret.txt",
        "/protected/report.txt/../../secret.txt",
        "/protected/report.txt#/../../secret.txt",
        "/protected/report.txt%0a",
        "/protected/%00",
        "/protected/escape.txt",
        "/PROTECTED/report.txt",
        "/secret.txt",
    ];
    let answers = join_all(values.iter().map(|v| app_names(&s, "x-accel-redirect", v))).await;
    for (value, a) in values.iter().zip(&answers) {
        let r = a.responses();
        assert_eq!(
            a.statuses(),
            [404],
            "X-Accel-Redirect: {value}: {}",
            a.text()
        );
        assert_eq!(r[0].body_text(), "404 Not Found: no such file\n", "{value}");
        assert!(
            !a.text().contains(APP_BODY),
            "{value}: the app's body leaked"
        );
    }

    let a = app_names(
        &s,
        "x-accel-redirect",
        "/protected/report.txt?../../secret.txt",
    )
    .await;
    assert_eq!(a.statuses(), [200], "{}", a.text());
    assert_eq!(
        a.responses()[0].body_text(),
        PROTECTED,
        "the query is ignored"
    );
    let a = app_names(&s, "x-accel-redirect", "/protected/report.txt").await;
    assert_eq!(
        a.responses()[0].body_text(),
        PROTECTED,
        "a fresh, honest redirect"
    );
}

/// X-Sendfile names a file by its absolute path, taken literally: `..` and `.` segments, a
/// backslash, a symlink out of the root, percent escapes (never decoded), another case of
/// the root, `/etc/passwd`: each a 404, nothing leaks. A doubled `/` is only a separator.
#[tokio::test]
async fn x_sendfile_cannot_escape_the_internal_root() {
    let s = site();
    let root = s.dir.path().join("files").display().to_string();
    let values = [
        "/etc/passwd".to_string(),
        format!("{root}/../secret.txt"),
        format!("{root}/./report.txt"),
        format!("{root}/sub/../../secret.txt"),
        format!("{root}/../files/report.txt"),
        format!("{root}\\..\\secret.txt"),
        format!("{root}/%2e%2e/secret.txt"),
        format!("{root}/..;/secret.txt"),
        format!("{root}/escape.txt"),
        format!("{root}/report.txt?x"),
        root.to_uppercase() + "/report.txt",
        "files/report.txt".to_string(),
    ];
    let answers = join_all(values.iter().map(|v| app_names(&s, "x-sendfile", v))).await;
    for (value, a) in values.iter().zip(&answers) {
        let r = a.responses();
        assert_eq!(a.statuses(), [404], "X-Sendfile: {value}: {}", a.text());
        assert_eq!(r[0].body_text(), "404 Not Found: no such file\n", "{value}");
        assert!(!a.text().contains(APP_BODY), "{value}");
    }
    let a = app_names(&s, "x-sendfile", &format!("{root}//report.txt")).await;
    assert_eq!(a.statuses(), [200], "{}", a.text());
    assert_eq!(a.responses()[0].body_text(), PROTECTED);
}

/// From outside, the internal location does not exist, however it is spelled: encoded
/// letters, an encoded or raw separator, dot segments, doubled slashes, a backslash. Each
/// is the gateway's 404, the app never hears of it, and the file never comes back. A `;`
/// makes it another path (as in nginx), which goes to the app like any other URL; the app
/// has no such page (404) and the gateway serves no file for it.
#[tokio::test]
async fn the_protected_location_is_404_from_outside_in_any_spelling() {
    let s = site();
    let hidden = [
        "/protected/report.txt",
        "/protected/",
        "/protected",
        "/protected/sub/notes.txt",
        "/%70rotected/report.txt",
        "/prot%65cted/report.txt",
        "/protected%2freport.txt",
        "/protected%2Freport.txt",
        "/%2fprotected/report.txt",
        "/protected/./report.txt",
        "/protected/sub/../report.txt",
        "/x/../protected/report.txt",
        "/x/%2e%2e/protected/report.txt",
        "/x/..%2fprotected/report.txt",
        "//protected//report.txt",
        "/./protected/report.txt",
        "/protected\\report.txt",
        "/protected%5creport.txt",
        "/protected/report.txt?download=1",
    ];
    for (target, status, body) in get_all(&s.gw, &hidden).await {
        assert_eq!(status, 404, "{target}: {body}");
        assert_eq!(body, "404 Not Found: no route for this path\n", "{target}");
    }
    let paths = s.app.paths().await;
    assert!(paths.is_empty(), "the app saw {paths:?}");

    for (target, status, body) in
        get_all(&s.gw, &["/protected;/report.txt", "/PROTECTED/report.txt"]).await
    {
        assert_eq!(status, 404, "{target}: {body}");
        assert!(!leaks(&body), "{target}: {body}");
    }
    still_serves_files(&s).await;
}

/// The script "uploaded" as an image: run, it prints `EXECUTED` (built at run time, so the
/// word never appears in the source a static answer would show).
const EVIL: &str = "<?php echo strrev('DETUCEXE'); ?>\n";

/// The `cgi.fix_pathinfo` hole: behind the classic nginx `location ~ \.php$` with
/// `fastcgi_split_path_info`, `/uploads/evil.jpg/x.php` makes php-fpm run `evil.jpg`. Here
/// php-fpm is configured to run `.jpg` too (`security.limit_extensions = .php .jpg`), so the
/// gateway's own script selection is the only guard, and `cgi.fix_pathinfo = 1`. A path is
/// never split into script and `PATH_INFO`: a `.php` path runs exactly that file if it
/// exists and is a 404 without php-fpm otherwise; no spelling runs the image, `.php` source
/// is never served, and `/direct.php/extra` is a pretty URL for the front controller, not
/// `direct.php` with a `PATH_INFO`.
#[tokio::test]
async fn an_uploaded_image_never_runs_as_php() {
    let fpm = PhpFpm::start(
        "security.limit_extensions = .php .jpg\nphp_admin_value[cgi.fix_pathinfo] = 1\n",
    );
    let root = Scratch::new("attack-php");
    let r = root.path();
    std::fs::write(
        r.join("index.php"),
        "<?php echo 'front controller: ' . parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH) . ' path_info=' . ($_SERVER['PATH_INFO'] ?? '');",
    )
    .expect("write");
    std::fs::write(r.join("direct.php"), "<?php echo 'direct script ran';").expect("write");
    std::fs::create_dir_all(r.join("uploads")).expect("dir");
    std::fs::write(r.join("uploads/evil.jpg"), EVIL).expect("write");
    let gw = Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
upstreams:
  php:
    protocol: fastcgi
    servers: ["{server}"]
    fastcgi: {{root: {root}}}
routes:
  - path: /
    static: {{root: {root}}}
    upstream: php
"#,
        server = fpm.server(),
        root = r.display(),
    ));

    let not_found = [
        "/uploads/evil.jpg/x.php",
        "/uploads/evil.jpg/index.php",
        "/uploads/evil.jpg/.php",
        "/uploads/evil.jpg%2fx.php",
        "/uploads/evil.jpg%2Fx.php",
        "/uploads/evil.jpg.php",
        "/uploads/evil.jpg;.php",
        "/uploads/evil.jpg%20.php",
        "/uploads/evil.jpg%0a.php",
        "/uploads/evil.jpg/x.PHP",
        "/uploads/evil.jpg%2f.%2fx.php",
        "/%75ploads/evil.jpg/x.php",
        "/direct.php/x.php",
        "/uploads/evil.php",
    ];
    let bad = [
        "/uploads/evil.jpg%00.php",
        "/uploads/evil.jpg%00/x.php",
        "/uploads/evil.jpg%5cx.php",
        "/uploads/evil.jpg\\x.php",
        "/uploads/evil.jpg/..%2f..%2f..%2fx.php",
        "/uploads/../uploads/evil.jpg/x.php",
    ];
    for (target, status, body) in get_all(&gw, &not_found).await {
        assert_eq!(status, 404, "{target}: {body}");
        assert!(!body.contains("EXECUTED"), "{target} ran the image: {body}");
    }
    for (target, status, body) in get_all(&gw, &bad).await {
        assert_eq!(status, 400, "{target}: {body}");
        assert!(!body.contains("EXECUTED"), "{target} ran the image: {body}");
    }

    // The image itself is a file, sent as it is, not run.
    for target in [
        "/uploads/evil.jpg",
        "/uploads/evil.jpg?x.php",
        "/index.php/../uploads/evil.jpg",
    ] {
        let a = get(&gw, target).await;
        assert_eq!(a.statuses(), [200], "{target}: {}", a.text());
        assert_eq!(a.responses()[0].body_text(), EVIL, "{target}");
    }
    // Paths under the image are pretty URLs of the front controller, never PATH_INFO.
    for target in [
        "/uploads/evil.jpg/",
        "/uploads/evil.jpg/x",
        "/direct.php/extra",
    ] {
        let a = get(&gw, target).await;
        assert_eq!(a.statuses(), [200], "{target}: {}", a.text());
        let path = target.split('?').next().unwrap_or(target);
        assert_eq!(
            a.responses()[0].body_text(),
            format!("front controller: {path} path_info="),
            "{target}"
        );
    }
    // PHP source is never a static file, whatever the case of the extension.
    for target in ["/direct.php", "/direct.ph%70", "/DIRECT.PHP", "/direct.Php"] {
        let a = get(&gw, target).await;
        let body = a
            .responses()
            .first()
            .map(|r| r.body_text())
            .unwrap_or_default();
        assert!(
            !body.contains("<?php"),
            "{target} served the source: {body}"
        );
    }

    let log = fpm.access_log();
    assert!(
        !log.contains("evil.jpg/x.php"),
        "php-fpm was asked for the image path:\n{log}"
    );
    // The fresh, ordinary request: the direct script runs.
    let a = get(&gw, "/direct.php").await;
    assert_eq!(a.statuses(), [200], "{}", a.text());
    assert_eq!(a.responses()[0].body_text(), "direct script ran");
}
