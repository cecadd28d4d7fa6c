use super::*;

/// The settings of a small valid file: everything else at its default.
pub(crate) fn minimal() -> Settings {
    build_yaml(MINIMAL).expect("a minimal file builds")
}

const MINIMAL: &str = "listen: {http: 127.0.0.1:8080}\nupstreams: {app: {servers: [127.0.0.1:3000]}}\nroutes: [{path: /, upstream: app}]\n";

fn build_yaml(yaml: &str) -> Result<Settings, Vec<Problem>> {
    Settings::build(Config::parse(yaml).expect("parses"), Path::new("/etc/gw"))
}

/// Every problem `yaml` has, as `gateway check` prints them (none when it builds).
fn problems(yaml: &str) -> Vec<String> {
    match build_yaml(yaml) {
        Ok(_) => Vec::new(),
        Err(p) => p.iter().map(|p| p.to_string()).collect(),
    }
}

#[test]
fn h2_max_concurrent_streams_defaults_to_32_and_zero_is_refused() {
    assert_eq!(minimal().limits.h2_max_concurrent_streams, 32);
    let p = problems(
        "listen: {http: 127.0.0.1:8080}\nlimits: {h2_max_concurrent_streams: 0}\nupstreams: {app: {servers: [127.0.0.1:3000]}}\nroutes: [{path: /, upstream: app}]\n",
    );
    assert_eq!(p, ["limits.h2_max_concurrent_streams: must be at least 1"]);
}

#[test]
fn minimal_config_is_valid() {
    let p = problems(MINIMAL);
    assert!(p.is_empty(), "{p:?}");
}

#[test]
fn realtime_abuse_limits_have_defaults_and_are_checked_where_they_are() {
    let c =
        build_yaml("listen: {http: 127.0.0.1:8080}\nroutes: [{path: /ws, realtime: websocket}]\n")
            .expect("builds");
    assert_eq!(c.realtime.hub.max_topics, 100_000);
    assert_eq!(c.realtime.hub.max_open_topics, 50_000);
    assert_eq!(c.realtime.hub.max_topic_length, 255);
    assert_eq!(c.realtime.hub.new_topics_per_client_per_minute, 600);
    assert_eq!(c.realtime.longpoll.max_message_bytes, 65_536);
    assert_eq!(c.realtime.socketio.max_sessions, 50_000);
    assert_eq!(c.realtime.socketio.max_sessions_per_client, 256);
    let ns = &c.realtime.socketio.namespaces["/"];
    assert_eq!((ns.relay_rate.per_second, ns.relay_rate.burst), (50, 100));
    assert!(
        !ns.echo,
        "Laravel Echo's protocol is asked for, not assumed"
    );
    let echo = build_yaml(
        "listen: {http: 127.0.0.1:8080}\nrealtime: {socketio: {namespaces: {\"/\": {echo: true}}}}\nroutes: [{path: /socket.io/, realtime: socketio}]\n",
    )
    .expect("builds");
    assert!(echo.realtime.socketio.namespaces["/"].echo);
    let p = problems(
        r#"
listen: {http: 127.0.0.1:8080}
realtime:
  hub: {max_topics: 1000, max_open_topics: 1000, max_topic_length: 3}
  longpoll: {max_message_bytes: 1}
  websocket: {/ws: {max_subscriptions: 0}}
  socketio: {namespaces: {"/": {relay: true, relay_rate: {per_second: 0}}}}
routes: [{path: /ws, realtime: websocket}]
"#,
    );
    let want = [
        "realtime.hub.max_open_topics: must be at least 1 and less than realtime.hub.max_topics (1000): the rest is kept for Socket.IO's own rooms",
        "realtime.hub.max_topic_length: must be at least 16",
        "realtime.longpoll.max_message_bytes: must be at least 16",
        "realtime.websocket./ws.max_subscriptions: must be at least 1",
        "realtime.socketio.namespaces./.relay_rate: per_second and burst must be at least 1",
    ];
    for w in want {
        assert!(p.iter().any(|x| x == w), "missing {w:?} in {p:#?}");
    }
    assert_eq!(p.len(), want.len(), "{p:#?}");
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let p = problems(
        r#"
listen: {https: "nope", http: 127.0.0.1:8080, admin: 127.0.0.1:8080}
proxy: {trusted_proxies: ["10.0.0.0/99"]}
upstreams:
  app: {servers: ["127.0.0.1"], health_check: {path: "ping", rise: 0}}
routes:
  - {path: /, upstream: app}
  - {path: /x, upstream: app}
  - {path: /y, upstream: ap}
  - {path: z}
"#,
    );
    let want = [
        "listen.https: \"nope\" is not an address like 127.0.0.1:8443",
        "listen.admin: 127.0.0.1:8080 is already used by listen.http",
        "proxy.trusted_proxies[0]: \"10.0.0.0/99\" is not an address or CIDR block",
        "upstreams.app.servers[0]: \"127.0.0.1\" is not an address like 127.0.0.1:3000 or unix:/run/app/puma.sock",
        "upstreams.app.health_check.path: \"ping\" must start with /",
        "upstreams.app.health_check.rise: must be at least 1",
        "routes[2].upstream: no upstream named \"ap\" (known: app)",
        "routes[3].path: \"z\" must start with /",
        "routes[3]: needs a target: `upstream`, `static` or `realtime`",
    ];
    for w in want {
        assert!(p.iter().any(|x| x == w), "missing {w:?} in {p:#?}");
    }
    assert_eq!(p.len(), want.len(), "{p:#?}");
}

#[test]
fn odd_server_names_are_problems_not_panics() {
    let p = problems(
        "listen: {https: 127.0.0.1:8443}\ntls: {certificates: [{cert: /nonexistent.pem, key: /nonexistent.key, server_names: [\"é.example\"]}]}\nroutes: []\n",
    );
    assert!(
        p.iter()
            .any(|x| x == "tls.certificates[0].server_names[0]: \"é.example\" is not a host name"),
        "{p:#?}"
    );
}

#[test]
fn fastcgi_pools_are_validated() {
    let root = std::env::temp_dir();
    let ok = problems(&format!(
        "listen: {{http: 127.0.0.1:8080}}\nupstreams: {{php: {{protocol: fastcgi, servers: [unix:/run/php/php-fpm.sock, 127.0.0.1:9000], fastcgi: {{root: {}}}}}}}\nroutes: [{{path: /, upstream: php}}]\n",
        root.display()
    ));
    assert!(ok.is_empty(), "{ok:?}");
    let p = problems(&format!(
        r#"
listen: {{http: 127.0.0.1:8080}}
upstreams:
  php: {{protocol: fastcgi, servers: ["unix:", "nope"], health_check: {{path: /ping}}}}
  php2: {{protocol: fastcgi, servers: [127.0.0.1:9000], fastcgi: {{root: /no/such/dir, index: a/b.php, front_controller: index.php}}}}
  app: {{servers: ["unix:/tmp/puma.sock"], fastcgi: {{root: {root}}}}}
routes:
  - {{path: /, upstream: php2, static: {{root: {root}, index: [index.php]}}}}
"#,
        root = root.display()
    ));
    let want = [
        "upstreams.php.servers[0]: \"unix:\": a Unix socket needs a path, like unix:/run/php/php-fpm.sock",
        "upstreams.php.servers[1]: \"nope\" is not an address like 127.0.0.1:9000 or unix:/run/php/php-fpm.sock",
        "upstreams.php.fastcgi: required with `protocol: fastcgi`: {root: /path/to/app/public}",
        "upstreams.php.health_check.path: \"/ping\": a FastCGI pool is checked by connecting; remove `path`",
        "upstreams.php2.fastcgi.root: /no/such/dir is not a directory",
        "upstreams.php2.fastcgi.index: \"a/b.php\" must be a plain file name ending in .php",
        "upstreams.php2.fastcgi.front_controller: \"index.php\" must be a path like /index.php",
        "upstreams.app.fastcgi: only used with `protocol: fastcgi`",
        "routes[0].static.index[0]: \"index.php\" would be served as source code: PHP index files belong in upstreams.php2.fastcgi.index",
    ];
    for w in want {
        assert!(p.iter().any(|x| x == w), "missing {w:?} in {p:#?}");
    }
    assert_eq!(p.len(), want.len(), "{p:#?}");
}

#[test]
fn http_pools_take_unix_sockets_in_both_spellings() {
    let long = format!("unix:/{}", "x".repeat(120));
    let p = problems(&format!(
        r#"
listen: {{http: 127.0.0.1:8080}}
upstreams:
  puma: {{servers: ["unix:/run/app/puma.sock", "unix:///run/app/puma2.sock", 127.0.0.1:3000], health_check: {{path: /up}}}}
  bad: {{servers: ["unix:", "unix://", "puma.sock", "{long}"]}}
routes: [{{path: /, upstream: puma}}]
"#
    ));
    let want = [
        "upstreams.bad.servers[0]: \"unix:\": a Unix socket needs a path, like unix:/run/app/puma.sock",
        "upstreams.bad.servers[1]: \"unix://\": a Unix socket needs a path, like unix:/run/app/puma.sock",
        "upstreams.bad.servers[2]: \"puma.sock\" is not an address like 127.0.0.1:3000 or unix:/run/app/puma.sock",
    ];
    for w in want {
        assert!(p.iter().any(|x| x == w), "missing {w:?} in {p:#?}");
    }
    assert!(
        p.iter().any(|x| x.starts_with("upstreams.bad.servers[3]")
            && x.ends_with("the path is 121 bytes long; a Unix socket address holds at most 107")),
        "{p:#?}"
    );
    assert_eq!(p.len(), 4, "{p:#?}");
}

#[test]
fn relative_unix_sockets_are_resolved_against_the_file() {
    let dir = std::env::temp_dir().join(format!("config-uds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("gateway.yaml");
    std::fs::write(
        &file,
        "listen: {http: 127.0.0.1:8080}\nupstreams: {app: {servers: [\"unix://tmp/puma.sock\", \"unix:///run/puma.sock\", \"unix:.run/x.sock\"]}}\nroutes: [{path: /, upstream: app}]\n",
    )
    .expect("write");
    let c = Settings::load(&file).expect("loads");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        c.upstreams["app"].servers,
        [
            Addr::Unix(dir.join("tmp/puma.sock")),
            Addr::Unix(PathBuf::from("/run/puma.sock")),
            Addr::Unix(dir.join(".run/x.sock")),
        ]
    );
}

#[test]
fn internal_locations_are_validated() {
    let base = std::env::temp_dir().join(format!("config-internal-{}", std::process::id()));
    for d in ["public/files", "private", "php/public"] {
        std::fs::create_dir_all(base.join(d)).expect("dir");
    }
    let b = base.display();
    let ok = problems(&format!(
        "listen: {{http: 127.0.0.1:8080}}\ninternal_locations: [{{path: /protected/, root: {b}/private}}]\nroutes: [{{path: /, static: {{root: {b}/public}}}}]\n"
    ));
    assert!(ok.is_empty(), "{ok:?}");
    let p = problems(&format!(
        r#"
listen: {{http: 127.0.0.1:8080}}
upstreams:
  php: {{protocol: fastcgi, servers: [127.0.0.1:9000], fastcgi: {{root: {b}/php/public}}}}
internal_locations:
  - {{path: /protected, root: {b}/private}}
  - {{path: /, root: {b}/private}}
  - {{path: /a/../b/, root: {b}/private}}
  - {{path: /files/, root: {b}/public/files}}
  - {{path: /files/more/, root: {b}/php/public}}
  - {{path: /gone/, root: {b}/nope}}
routes:
  - {{path: /gone/x, upstream: php}}
  - {{path: /, static: {{root: {b}/public}}}}
"#
    ));
    let _ = std::fs::remove_dir_all(&base);
    let want = [
        "internal_locations[0].path: \"/protected\" must be a prefix like /protected/ (starting and ending with /, and not / alone)".to_string(),
        "internal_locations[1].path: \"/\" must be a prefix like /protected/ (starting and ending with /, and not / alone)".to_string(),
        "internal_locations[2].path: \"/a/../b/\" must be a plain path: no . or .. segments, //, %, ?, #, spaces or backslashes".to_string(),
        format!("internal_locations[3].root: {b}/public/files is inside routes[1].static.root ({b}/public), where its files are public; move it out"),
        "internal_locations[4].path: \"/files/more/\" overlaps internal_locations[3].path \"/files/\"".to_string(),
        format!("internal_locations[4].root: {b}/php/public is inside upstreams.php.fastcgi.root ({b}/php/public), where its files are public; move it out"),
        format!("internal_locations[5].root: {b}/nope is not a directory"),
        "routes[0].path: \"/gone/x\" is inside internal_locations[5].path \"/gone/\", which requests from outside never reach".to_string(),
    ];
    for w in &want {
        assert!(p.iter().any(|x| x == w), "missing {w:?} in {p:#?}");
    }
    // `/` as a location also swallows every route.
    let extra: Vec<_> = p.iter().filter(|x| !want.contains(x)).collect();
    assert!(
        extra
            .iter()
            .all(|x| x.contains("internal_locations[1].path \"/\"")
                || x.contains("overlaps internal_locations[1]")
                || x.contains("overlaps internal_locations[0]")),
        "{extra:#?}"
    );
}

#[test]
fn compression_is_on_by_default_and_validated() {
    let c = minimal();
    let on = c.compression.as_ref().expect("on by default");
    assert_eq!(on.codings, [Coding::Brotli, Coding::Gzip]);
    assert_eq!(on.min_length, defaults::COMPRESSION_MIN_LENGTH);
    assert!(on.types.iter().any(|t| t.to_string() == "text/*"));
    assert!(matches!(&c.routes[0].target, Target::App(a) if a.compression));

    let p = problems(
        r#"
listen: {http: 127.0.0.1:8080}
compression:
  algorithms: [br, zstd, gzip, br]
  gzip_level: 0
  brotli_level: 12
  types: [text/html, "*/*", text/event-stream, "application/json; charset=utf-8"]
upstreams: {app: {servers: [127.0.0.1:3000]}}
routes:
  - {path: /events, realtime: sse, compression: false}
  - {path: /, upstream: app, compression: false}
"#,
    );
    let want = [
        "compression.algorithms[1]: unknown algorithm \"zstd\" (known: br, gzip)",
        "compression.algorithms[3]: \"br\" is listed twice",
        "compression.gzip_level: 0 is not a gzip level (1-9)",
        "compression.brotli_level: 12 is not a brotli level (1-11)",
        "compression.types[1]: \"*/*\" is not a media type like text/html or text/* (no parameters, no */*)",
        "compression.types[2]: text/event-stream is never compressed: each event must reach the client as it is sent",
        "compression.types[3]: \"application/json; charset=utf-8\" is not a media type like text/html or text/* (no parameters, no */*)",
        "routes[0].compression: realtime answers are never compressed; remove it",
    ];
    for w in want {
        assert!(p.iter().any(|x| x == w), "missing {w:?} in {p:#?}");
    }
    assert_eq!(p.len(), want.len(), "{p:#?}");
    let p = problems(
        "listen: {http: 127.0.0.1:8080}\ncompression: {algorithms: [], types: []}\nupstreams: {app: {servers: [127.0.0.1:3000]}}\nroutes: [{path: /, upstream: app}]\n",
    );
    assert_eq!(p.len(), 2, "{p:#?}");
    // Turned off, empty lists are fine.
    let p = problems(
        "listen: {http: 127.0.0.1:8080}\ncompression: {enabled: false, algorithms: [], types: []}\nupstreams: {app: {servers: [127.0.0.1:3000]}}\nroutes: [{path: /, upstream: app}]\n",
    );
    assert!(p.is_empty(), "{p:#?}");
}

#[test]
fn buffering_options_are_validated() {
    let root = std::env::temp_dir();
    let c = minimal();
    let Target::App(app) = &c.routes[0].target else {
        panic!("an app route")
    };
    assert!(app.request_buffering, "on by default");
    assert!(!app.response_buffering, "off by default");
    assert_eq!(c.proxy.temp_dir, PathBuf::from(".state/tmp"));
    let p = problems(&format!(
        r#"
listen: {{http: 127.0.0.1:8080}}
limits: {{client_body_buffer_bytes: 10, client_body_timeout_ms: 0, response_buffer_bytes: 0, send_timeout_ms: 0}}
upstreams:
  app: {{servers: [127.0.0.1:3000]}}
  php: {{protocol: fastcgi, servers: [127.0.0.1:9000], fastcgi: {{root: {root}}}}}
routes:
  - {{path: /a, upstream: app, request_buffering: false, response_buffering: true}}
  - {{path: /p, upstream: php, response_buffering: true}}
  - {{path: /s, realtime: sse, request_buffering: true}}
  - {{path: /, upstream: app, request_buffering: false}}
"#,
        root = root.display()
    ));
    let want = [
        "limits.client_body_buffer_bytes: must be at least 1024",
        "limits.client_body_timeout_ms: must be greater than 0",
        "limits.response_buffer_bytes: must be at least 1024",
        "limits.send_timeout_ms: must be greater than 0",
        "routes[0].response_buffering: needs `request_buffering: true` (an answer is only buffered for a request the gateway holds whole)",
        "routes[2]: `request_buffering` and `response_buffering` only apply to `upstream` routes",
    ];
    for w in want {
        assert!(p.iter().any(|x| x == w), "missing {w:?} in {p:#?}");
    }
    assert_eq!(p.len(), want.len(), "{p:#?}");
}

#[test]
fn strings_become_typed_values_once() {
    let c = build_yaml(
        r#"
listen: {https: "[::1]:8443", http: 127.0.0.1:8080, admin: 127.0.0.1:9090}
proxy: {trusted_proxies: [10.0.0.0/8, "::1"]}
limits: {keepalive_timeout_s: 0, header_timeout_ms: 1500}
compression: {algorithms: [gzip], types: [Text/HTML, "application/*"]}
upstreams:
  app: {servers: [127.0.0.1:3000, "unix:///run/app/puma.sock", "unix:run/puma.sock"], balance: ip_hash, health_check: {path: /up, interval_ms: 500}}
routes:
  - {path: /ws, realtime: websocket}
  - {path: /, upstream: app, host: WWW.Example.com}
"#,
    )
    .expect("builds");
    assert_eq!(
        c.listen.https,
        Some(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 8443)))
    );
    assert_eq!(c.listen.admin.map(|a| a.port()), Some(9090));
    let trusted = &c.proxy.trusted_proxies;
    assert!(trusted[0].contains("10.9.8.7".parse().unwrap()));
    assert!(trusted[1].contains("::1".parse().unwrap()));
    assert_eq!(c.limits.keepalive_timeout, None, "0 turns keep-alive off");
    assert_eq!(c.limits.header_timeout, Duration::from_millis(1500));
    let comp = c.compression.as_ref().expect("on");
    assert_eq!(comp.codings, [Coding::Gzip]);
    assert!(comp.types[0].matches("text", "html"));
    assert!(comp.types[1].matches("application", "json"));
    let app = &c.upstreams["app"];
    assert_eq!(
        app.servers,
        [
            Addr::Tcp(SocketAddr::from(([127, 0, 0, 1], 3000))),
            Addr::Unix(PathBuf::from("/run/app/puma.sock")),
            Addr::Unix(PathBuf::from("/etc/gw/run/puma.sock")),
        ]
    );
    assert_eq!(app.balance, Balance::IpHash);
    let hc = app.health_check.as_ref().expect("checked");
    assert_eq!(hc.interval, Duration::from_millis(500));
    assert_eq!(hc.timeout, defaults::HEALTH_TIMEOUT);
    assert_eq!(c.routes[1].host.as_deref(), Some("www.example.com"));
    match &c.routes[0].target {
        Target::Realtime(Endpoint::Websocket(ws)) => {
            assert_eq!(ws.protocols, defaults::WS_PROTOCOLS);
            assert_eq!(ws.ping_interval, defaults::WS_PING_INTERVAL);
        }
        other => panic!("{other:?}"),
    }
}

/// Each of these used to be parsed a second time at run time, where a value that did not
/// parse was skipped (`filter_map`) or replaced (a port of 443): the build refuses them all,
/// each with its place.
#[test]
fn what_does_not_parse_is_reported_not_dropped() {
    let p = build_yaml(
        r#"
listen: {https: "localhost:8443", http: 127.0.0.1:80800}
proxy: {trusted_proxies: [10.0.0.0/8, 10.0.0.0/33, "10.0.0.0 / x"]}
compression: {algorithms: [gzip, deflate], types: [text/html, "text"]}
upstreams: {app: {servers: [127.0.0.1:3000, "app:3000"]}}
routes: [{path: /, upstream: app}]
"#,
    )
    .expect_err("refused");
    let p: Vec<String> = p.iter().map(|p| p.to_string()).collect();
    let want = [
        "listen.https: \"localhost:8443\" is not an address like 127.0.0.1:8443",
        "listen.http: \"127.0.0.1:80800\" is not an address like 127.0.0.1:8443",
        "proxy.trusted_proxies[1]: \"10.0.0.0/33\" is not an address or CIDR block",
        "proxy.trusted_proxies[2]: \"10.0.0.0 / x\" is not an address or CIDR block",
        "compression.algorithms[1]: unknown algorithm \"deflate\" (known: br, gzip)",
        "compression.types[1]: \"text\" is not a media type like text/html or text/*",
        "upstreams.app.servers[1]: \"app:3000\" is not an address like 127.0.0.1:3000 or unix:/run/app/puma.sock",
    ];
    for w in want {
        assert!(p.iter().any(|x| x == w), "missing {w:?} in {p:#?}");
    }
    assert_eq!(p.len(), want.len(), "{p:#?}");
}

/// A static route's index names and `cache_control` used to be checked only when the server
/// started, so `gateway check` passed a file `gateway run` refused.
#[test]
fn static_index_names_and_cache_control_are_checked_with_the_file() {
    let root = std::env::temp_dir();
    let p = problems(&format!(
        r#"
listen: {{http: 127.0.0.1:8080}}
routes:
  - {{path: /a, static: {{root: {root}, index: [index.html, ../secret, "a/b", ""], cache_control: "bad\nvalue"}}}}
  - {{path: /, static: {{root: {root}, cache_control: "public, max-age=60"}}}}
"#,
        root = root.display()
    ));
    let want = [
        "routes[0].static.index[1]: \"../secret\" must be a plain file name",
        "routes[0].static.index[2]: \"a/b\" must be a plain file name",
        "routes[0].static.index[3]: \"\" must be a plain file name",
        "routes[0].static.cache_control: \"bad\\nvalue\" is not a valid header value",
    ];
    for w in want {
        assert!(p.iter().any(|x| x == w), "missing {w:?} in {p:#?}");
    }
    assert_eq!(p.len(), want.len(), "{p:#?}");
}

#[test]
fn relative_paths_are_resolved_against_the_file_and_defaults_are_not() {
    let dir = std::env::temp_dir().join(format!("settings-paths-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("public")).expect("dir");
    let built = Settings::build(
        Config::parse(
            "listen: {https: 127.0.0.1:8443}\nrealtime: {socketio: {client_dir: dist}}\nproxy: {temp_dir: spill}\nroutes: [{path: /, static: {root: public}}]\n",
        )
        .expect("parses"),
        &dir,
    );
    let _ = std::fs::remove_dir_all(&dir);
    let c = built.expect("builds");
    // The default state directory stays relative to the working directory, as it always was.
    assert_eq!(c.tls.state_dir, PathBuf::from(defaults::STATE_DIR));
    assert_eq!(c.proxy.temp_dir, dir.join("spill"));
    assert_eq!(c.realtime.socketio.client_dir, Some(dir.join("dist")));
    match &c.routes[0].target {
        Target::App(App {
            files: Some(files), ..
        }) => {
            assert_eq!(files.root, dir.join("public"));
            assert_eq!(files.index, defaults::STATIC_INDEX);
            assert_eq!(files.precompressed, defaults::STATIC_PRECOMPRESSED);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_topic_policy_follows_laravel_by_default_and_its_patterns_are_checked() {
    let c = minimal();
    let policy = &c.realtime.policy;
    let private: Vec<&str> = policy.private.iter().map(|p| p.as_str()).collect();
    assert_eq!(private, ["private-*", "presence-*"]);
    assert!(policy.client_publish.is_empty());
    assert!(c.realtime.auth.is_none());
    let p = problems(
        r#"
listen: {http: 127.0.0.1:8080}
realtime:
  policy: {private: ["", "sio:*"], client_publish: ["chat-*", "ws:/ws:chat"]}
routes: [{path: /events, realtime: sse}]
"#,
    );
    assert_eq!(
        p,
        [
            "realtime.policy.private[0]: a pattern must not be empty",
            "realtime.policy.private[1]: \"sio:*\" names topics starting with \"sio:\", which belong to their transport and are never open to a client",
            "realtime.policy.client_publish[1]: \"ws:/ws:chat\" names topics starting with \"ws:\", which belong to their transport and are never open to a client",
        ]
    );
}

#[test]
fn the_auth_callbacks_have_defaults_and_are_checked() {
    let c = build_yaml(
        "listen: {http: 127.0.0.1:8080}\nupstreams: {app: {servers: [127.0.0.1:3000]}}\nrealtime: {auth: {upstream: app}}\nroutes: [{path: /, upstream: app}]\n",
    )
    .expect("builds");
    let auth = c.realtime.auth.expect("auth");
    assert_eq!(auth.subscribe, "/broadcasting/auth");
    assert_eq!(auth.connect, None);
    assert_eq!(auth.timeout, Duration::from_millis(5000));
    assert_eq!(auth.cache, Duration::ZERO);
    let p = problems(
        r#"
listen: {http: 127.0.0.1:8080}
upstreams: {app: {servers: [127.0.0.1:3000]}}
realtime: {auth: {upstream: ap, connect: "realtime/auth", subscribe: "/a?b=c", timeout_ms: 0}}
routes: [{path: /, upstream: app}]
"#,
    );
    assert_eq!(
        p,
        [
            "realtime.auth.upstream: no upstream named \"ap\" (known: app)",
            "realtime.auth.subscribe: \"/a?b=c\" must be a path starting with / (no query)",
            "realtime.auth.connect: \"realtime/auth\" must be a path starting with / (no query)",
            "realtime.auth.timeout_ms: must be at least 1: a client must never wait for the app forever",
        ]
    );
}

#[test]
fn events_to_the_app_have_defaults_and_are_checked_with_their_places() {
    let c = build_yaml(
        r#"
listen: {http: 127.0.0.1:8080}
upstreams: {app: {servers: [127.0.0.1:3000]}}
realtime:
  events: {upstream: app}
  socketio: {namespaces: {"/": {relay: true, client_rooms: true, events: [say, typing]}, "/rpc": {events: ["*"]}}}
  websocket: {/ws: {events: [say]}}
routes: [{path: /ws, realtime: websocket}, {path: /, upstream: app}]
"#,
    )
    .expect("builds");
    let events = c.realtime.events.expect("events");
    assert_eq!(events.path, "/realtime/events");
    assert_eq!(events.timeout, Duration::from_millis(5000));
    assert_eq!(events.max_in_flight, 8);
    let ns = &c.realtime.socketio.namespaces;
    assert!(ns["/"].events.matches("say") && !ns["/"].events.matches("join"));
    assert_eq!(ns["/rpc"].events, realtime::app_events::EventNames::All);
    let Target::Realtime(Endpoint::Websocket(ws)) = &c.routes[0].target else {
        panic!("{:?}", c.routes[0].target)
    };
    assert!(ws.events.matches("say"));
    // Without `events` nothing changes.
    let bare = minimal();
    assert!(bare.realtime.events.is_none());
    assert!(bare.realtime.socketio.namespaces["/"].events.is_none());

    let p = problems(
        r#"
listen: {http: 127.0.0.1:8080}
upstreams: {app: {servers: [127.0.0.1:3000]}}
realtime:
  events: {upstream: ap, path: "events", timeout_ms: 0, max_in_flight: 0}
  socketio:
    namespaces:
      "/": {relay: true, events: ["*"]}
      "/rooms": {client_rooms: true, echo: true, events: [join, "", connect, subscribe, "client event", ok]}
  websocket: {/ws: {protocols: [beej-chat-protocol], events: [say]}}
routes: [{path: /ws, realtime: websocket}, {path: /, upstream: app}]
"#,
    );
    assert_eq!(
        p,
        [
            "realtime.websocket./ws.events: events come as pubsub.v1 `event` messages, and this endpoint does not offer pubsub.v1",
            "realtime.socketio.namespaces./.events: \"*\" sends every event to the app, so `relay` would get none: name the events for the app, or turn relay off",
            "realtime.socketio.namespaces./rooms.events[0]: \"join\" is handled by the namespace itself (client_rooms, echo)",
            "realtime.socketio.namespaces./rooms.events[1]: an event name is not empty",
            "realtime.socketio.namespaces./rooms.events[2]: \"connect\" is reserved by Socket.IO: no client sends it",
            "realtime.socketio.namespaces./rooms.events[3]: \"subscribe\" is handled by the namespace itself (client_rooms, echo)",
            "realtime.socketio.namespaces./rooms.events[4]: \"client event\" is handled by the namespace itself (client_rooms, echo)",
            "realtime.events.upstream: no upstream named \"ap\" (known: app)",
            "realtime.events.path: \"events\" must be a path starting with / (no query)",
            "realtime.events.timeout_ms: must be at least 1: a client must never wait for the app forever",
            "realtime.events.max_in_flight: must be at least 1: with 0 no event would ever reach the app",
        ]
    );
    // The events' route is hidden from clients: not the whole site, nor a route's place.
    let p = problems(
        r#"
listen: {http: 127.0.0.1:8080}
upstreams: {app: {servers: [127.0.0.1:3000]}}
realtime: {events: {upstream: app, path: /}}
routes: [{path: /, upstream: app}]
"#,
    );
    assert_eq!(
        p,
        ["realtime.events.path: clients never reach this path or anything under it, and \"/\" is the whole site: name the app's route for the events"]
    );
    let p = problems(
        r#"
listen: {http: 127.0.0.1:8080}
upstreams: {app: {servers: [127.0.0.1:3000]}}
realtime: {events: {upstream: app, path: /rt}}
routes: [{path: /rt/ws, realtime: websocket}, {path: /rtx, upstream: app}, {path: /, upstream: app}]
"#,
    );
    assert_eq!(
        p,
        ["routes[0]: /rt/ws is under realtime.events.path (/rt), which clients never reach"]
    );
    // Events named with nowhere to send them.
    let p = problems(
        r#"
listen: {http: 127.0.0.1:8080}
realtime:
  socketio: {namespaces: {"/": {events: [say]}}}
  websocket: {/ws: {events: ["*"]}}
routes: [{path: /ws, realtime: websocket}]
"#,
    );
    assert_eq!(
        p,
        [
            "realtime.socketio.namespaces./.events: names events for the app, and realtime.events (where they go) is not set",
            "realtime.websocket./ws.events: names events for the app, and realtime.events (where they go) is not set",
        ]
    );
}

#[test]
fn check_explains_a_policy_that_leaves_a_transport_nothing_to_do() {
    // Everything private and nobody to ask: no subscription can ever succeed.
    let p = problems(
        r#"
listen: {http: 127.0.0.1:8080}
realtime: {policy: {private: ["*"], client_publish: ["chat-*"]}}
routes: [{path: /events, realtime: sse}, {path: /socket.io/, realtime: socketio}]
"#,
    );
    assert_eq!(
        p,
        ["realtime.policy.private: every topic needs the app's word and realtime.auth is not set, so no client can subscribe to anything (SSE, long-poll, pubsub.v1, Socket.IO rooms on /events, /socket.io/): set realtime.auth, or make some topics public"]
    );
    // A long-poll route that only publishes, while clients may publish nowhere.
    let p = problems(
        "listen: {http: 127.0.0.1:8080}\nroutes: [{path: /s, realtime: longpoll}, {path: /p, realtime: longpoll}]\n",
    );
    assert_eq!(
        p,
        ["routes[1]: /p only publishes (POST /p?t=<topic>), and realtime.policy.client_publish names no topic clients may publish to, so every request is refused: add the topics to client_publish, or remove the route"]
    );
    // Either is fine with the other half configured.
    assert!(problems(
        "listen: {http: 127.0.0.1:8080}\nupstreams: {app: {servers: [127.0.0.1:3000]}}\nrealtime: {policy: {private: ['*'], client_publish: [news]}, auth: {upstream: app}}\nroutes: [{path: /events, realtime: sse}, {path: /p, realtime: longpoll}]\n",
    )
    .is_empty());
}

#[test]
fn the_cluster_block_is_off_by_default_and_checked_with_its_place() {
    assert!(minimal().cluster.is_none());
    let on = build_yaml(&format!(
        "{MINIMAL}cluster: {{redis: \"rediss://alice:s3cret@redis.internal:6380/2\", node_id: gw-1, internal_listen: \"10.0.0.5:7070\", secret: fleet-secret-0123456789}}\n"
    ))
    .expect("builds");
    let c = on.cluster.expect("on");
    assert_eq!(c.node_id, "gw-1");
    assert_eq!(c.key_prefix, "socket.io");
    let internal = c.internal.as_ref().expect("forwarding on");
    assert_eq!(internal.listen, "10.0.0.5:7070".parse().expect("addr"));
    // Other nodes reach it where it listens.
    assert_eq!(internal.advertise, "10.0.0.5:7070");
    assert_eq!(internal.secret.expose(), "fleet-secret-0123456789");
    assert!(!format!("{c:?}").contains("fleet-secret"));
    assert_eq!(
        c.redis.expose(),
        "rediss://alice:s3cret@redis.internal:6380/2"
    );
    // Printed, the password is gone.
    assert_eq!(
        c.redis.to_string(),
        "rediss://alice:***@redis.internal:6380/2"
    );
    assert!(!format!("{c:?}").contains("s3cret"));

    let p = problems(&format!(
        "{MINIMAL}cluster: {{redis: \"http://:s3cret@127.0.0.1:6379\", node_id: \"two words\", key_prefix: \"\", internal_listen: \"127.0.0.1:8080\"}}\n"
    ));
    assert_eq!(
        p,
        [
            "cluster.redis: invalid redis url http://:***@127.0.0.1:6379: only redis:// and rediss:// are supported",
            "cluster.node_id: \"two words\" has white space or control characters",
            "cluster.key_prefix: must be 1 to 128 bytes long",
            "cluster.internal_listen: 127.0.0.1:8080 is already used by listen.http",
            "cluster.secret: required with cluster.internal_listen: the same on every node, it is how a node knows a forwarded request comes from the fleet",
        ]
    );
    let p = problems(&format!(
        "{MINIMAL}cluster: {{redis: \"redis://:s3cret@127.0.0.1:99999/x\", tls_ca: missing-ca.pem, internal_listen: nowhere}}\n"
    ));
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(
        p[0].starts_with("cluster.tls_ca: cannot read /etc/gw/missing-ca.pem"),
        "{p:?}"
    );
    assert!(
        p[1].starts_with("cluster.redis: invalid redis url redis://:***@127.0.0.1:99999/x: "),
        "{p:?}"
    );
    assert_eq!(
        p[2],
        "cluster.internal_listen: \"nowhere\" is not an address like 10.0.0.5:7070"
    );
    assert!(p.iter().all(|p| !p.contains("s3cret")), "{p:?}");
}

#[test]
fn the_internal_listener_needs_a_secret_and_an_address_other_nodes_can_reach() {
    let cluster =
        |keys: &str| format!("{MINIMAL}cluster: {{redis: \"redis://127.0.0.1:6379/0\", {keys}}}\n");
    let c = build_yaml(&cluster(
        "internal_listen: \"0.0.0.0:7070\", advertise: \"gw-1.internal:7070\", secret: fleet-secret-0123456789",
    ))
    .expect("builds")
    .cluster
    .expect("on");
    let internal = c.internal.expect("forwarding on");
    assert_eq!(internal.advertise, "gw-1.internal:7070");
    assert!(build_yaml(&cluster(
        "internal_listen: \"10.0.0.5:7070\", advertise: \"[fd00::5]:7070\", secret: fleet-secret-0123456789"
    ))
    .is_ok());
    // Without internal_listen nothing is forwarded.
    assert!(build_yaml(&cluster(""))
        .expect("builds")
        .cluster
        .expect("on")
        .internal
        .is_none());

    assert_eq!(
        problems(&cluster(
            "internal_listen: \"0.0.0.0:7070\", secret: \"short\""
        )),
        [
            "cluster.secret: must be 16 to 1024 characters long",
            "cluster.advertise: required when cluster.internal_listen is 0.0.0.0:7070: the address other nodes reach this one at",
        ]
    );
    assert_eq!(
        problems(&cluster(
            "internal_listen: \"10.0.0.5:7070\", advertise: \"http://gw-1/\", secret: \"with spaces in the secret\""
        )),
        [
            "cluster.secret: must be printable ASCII without spaces (it is sent in a header)",
            "cluster.advertise: \"http://gw-1/\" is not host:port, like 10.0.0.5:7070 or gw-1.internal:7070",
        ]
    );
    assert_eq!(
        problems(&cluster(
            "advertise: \"10.0.0.5:7070\", secret: fleet-secret-0123456789"
        )),
        [
            "cluster.advertise: is only used with cluster.internal_listen",
            "cluster.secret: is only used with cluster.internal_listen",
        ]
    );
    // The secret never shows in what `gateway check` prints.
    let p = problems(&cluster(
        "internal_listen: \"10.0.0.5:7070\", advertise: \"x:0\", secret: fleet-secret-0123456789",
    ));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(!p[0].contains("fleet-secret"), "{p:?}");
}

#[test]
fn the_cluster_speaks_socketio_adapter_by_default_and_laravel_when_told() {
    let c = build_yaml(&format!(
        "{MINIMAL}cluster: {{redis: \"redis://127.0.0.1:6379\"}}\n"
    ))
    .expect("builds")
    .cluster
    .expect("on");
    assert!(c.socketio_adapter);
    assert!(c.laravel.is_none());
    let c = build_yaml(&format!(
        "{MINIMAL}cluster: {{redis: \"redis://127.0.0.1:6379\", socketio_adapter: false, laravel: {{channels: [orders, \"private-*\"], prefix: \"\"}}}}\n"
    ))
    .expect("builds")
    .cluster
    .expect("on");
    assert!(!c.socketio_adapter);
    assert_eq!(
        c.laravel,
        Some(realtime::cluster::LaravelConfig {
            channels: vec!["orders".into(), "private-*".into()],
            prefix: String::new(),
        })
    );
    let c = build_yaml(&format!(
        "{MINIMAL}cluster: {{redis: \"redis://127.0.0.1:6379\", laravel: {{channels: [orders]}}}}\n"
    ))
    .expect("builds")
    .cluster
    .expect("on");
    assert_eq!(c.laravel.expect("on").prefix, "laravel_database_");

    let p = problems(&format!(
        "{MINIMAL}cluster: {{redis: \"redis://127.0.0.1:6379\", laravel: {{channels: [ok, \"a*b\", \"\", \"two words\"], prefix: \"my app_\"}}}}\n"
    ));
    assert_eq!(
        p,
        [
            "cluster.laravel.channels[1]: \"a*b\" is neither a channel name nor a prefix ending in * (a * may only end it)",
            "cluster.laravel.channels[2]: \"\" is neither a channel name nor a prefix ending in * (a * may only end it)",
            "cluster.laravel.channels[3]: \"two words\" must be 1 to 128 bytes without white space",
            "cluster.laravel.prefix: \"my app_\" must be at most 128 bytes without white space",
        ]
    );
    let p = problems(&format!(
        "{MINIMAL}cluster: {{redis: \"redis://127.0.0.1:6379\", laravel: {{channels: []}}}}\n"
    ));
    assert_eq!(
        p,
        ["cluster.laravel.channels: list at least one channel (a name, or a prefix ending in *: private-*)"]
    );
    // Unknown keys are refused, as everywhere.
    let e = Config::parse(&format!(
        "{MINIMAL}cluster: {{redis: \"redis://127.0.0.1:6379\", laravel: {{channels: [a], key_prefix: x}}}}\n"
    ))
    .expect_err("refused");
    assert!(
        e.contains("cluster.laravel: unknown field `key_prefix`"),
        "{e}"
    );
}

#[test]
fn client_limits_are_checked_with_their_place() {
    let with = |limits: &str| problems(&format!("{MINIMAL}limits: {limits}\n"));
    assert_eq!(
        with("{per_client_rate: {per_second: 0}}"),
        ["limits.per_client_rate.per_second: must be a number greater than 0"]
    );
    assert_eq!(
        with("{per_client_realtime_connects: {per_second: 1, burst: 0}}"),
        ["limits.per_client_realtime_connects.burst: must be at least 1 (a bucket of 0 admits nothing)"]
    );
    assert_eq!(
        with("{max_connections: 0, per_client_connections: 0}"),
        [
            "limits.max_connections: must be at least 1 (leave it out for no cap)",
            "limits.per_client_connections: must be at least 1 (leave it out for no limit)"
        ]
    );
    let s = build_yaml(&format!(
        "{MINIMAL}limits: {{per_client_rate: {{per_second: 2.5}}}}\n"
    ))
    .expect("valid");
    assert_eq!(
        s.limits.per_client_rate,
        Some(Rate {
            per_second: 2.5,
            burst: 3
        }),
        "the burst is one second's worth, rounded up"
    );
}

/// The protocol suites' server is a diagnostic: a shipped build says how to get it rather
/// than serving something else on its route.
#[test]
#[cfg(not(feature = "conformance"))]
fn protocol_suites_need_a_conformance_build() {
    let p = problems(
        "listen: {http: 127.0.0.1:3000}\nroutes: [{path: /, realtime: protocol-suites}]\n",
    );
    assert_eq!(
        p,
        ["routes[0].realtime: `protocol-suites` needs a gateway built with `--features conformance`"]
    );
}
