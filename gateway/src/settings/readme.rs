//! The README's "Configuration reference" against the settings: every default a row states (in
//! its default column, and inside its meaning where the row lists a block's keys) is the value
//! a file without that key gets. Values are compared as YAML, the way the README spells them.

use serde_yaml_ng::Value;

use super::*;

const README: &str = include_str!("../../../README.md");

/// Rows whose meaning spells out the defaults of the block's keys (`{max_age: 31536000, ...}`,
/// `` `queue` (256) ``). Elsewhere a `{...}` in the meaning is an example.
const MEANING_STATES_DEFAULTS: &[&str] = &[
    "tls.hsts",
    "upstreams.NAME.fastcgi",
    "upstreams.NAME.health_check",
    "routes[].static",
    "realtime.websocket.<path>",
    "realtime.socketio",
];

struct Row {
    keys: Vec<String>,
    defaults: Vec<String>,
    meaning: String,
}

fn unquote(s: &str) -> &str {
    s.trim().trim_matches('`')
}

/// The table's rows: `| `key` | default | meaning |`; `` `a.b` / `c` `` with `x / y` is two
/// keys of one block (`a.b`, `a.c`).
fn rows() -> Vec<Row> {
    let start = README
        .find("## Configuration reference")
        .expect("README has a Configuration reference");
    let section = &README[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    let mut rows = Vec::new();
    for line in section[..end].lines() {
        let Some(line) = line.strip_prefix("| `") else {
            continue;
        };
        let mut cells = line.splitn(3, " | ");
        let (Some(keys), Some(default), Some(meaning)) = (cells.next(), cells.next(), cells.next())
        else {
            panic!("a table row with fewer than three cells: {line}");
        };
        let mut keys: Vec<String> = format!("`{keys}")
            .split(" / ")
            .map(|k| unquote(k).to_string())
            .collect();
        let block = keys[0]
            .rsplit_once('.')
            .map_or(String::new(), |(b, _)| format!("{b}."));
        for k in keys.iter_mut().skip(1) {
            *k = format!("{block}{k}");
        }
        let defaults: Vec<String> = if keys.len() > 1 {
            default.split(" / ").map(|d| d.trim().to_string()).collect()
        } else {
            vec![default.trim().to_string()]
        };
        assert_eq!(keys.len(), defaults.len(), "row {keys:?}: {default}");
        rows.push(Row {
            keys,
            defaults,
            meaning: meaning.to_string(),
        });
    }
    rows
}

fn num(n: impl Into<serde_yaml_ng::Number>) -> Option<Value> {
    Some(Value::Number(n.into()))
}

fn ms(d: Duration) -> Option<Value> {
    num(u64::try_from(d.as_millis()).expect("fits"))
}

fn text(s: impl Into<String>) -> Option<Value> {
    Some(Value::String(s.into()))
}

fn texts<T: ToString>(items: &[T]) -> Option<Value> {
    Some(Value::Sequence(
        items.iter().map(|s| Value::String(s.to_string())).collect(),
    ))
}

fn flag(b: bool) -> Option<Value> {
    Some(Value::Bool(b))
}

/// The settings a file needs at the least, and the same with every optional block present
/// but empty (so the block's own defaults are there to read).
fn files() -> (Settings, Settings) {
    let dir = std::env::temp_dir();
    let build = |yaml: String| {
        Settings::build(
            crate::config::Config::parse(&yaml).expect("parses"),
            Path::new("/etc/gw"),
        )
        .expect("builds")
    };
    let bare = build(
        "listen: {http: 127.0.0.1:8080}\nupstreams: {app: {servers: [127.0.0.1:3000]}}\nroutes: [{path: /ws, realtime: websocket}, {path: /, upstream: app}]\n".into(),
    );
    let full = build(format!(
        r#"
listen: {{https: 127.0.0.1:8443, http: 127.0.0.1:8080}}
tls: {{hsts: {{}}}}
upstreams:
  app: {{servers: [127.0.0.1:3000], health_check: {{}}}}
  php: {{protocol: fastcgi, servers: [127.0.0.1:9000], fastcgi: {{root: {dir}}}}}
realtime: {{socketio: {{recovery: {{}}}}, auth: {{upstream: app}}, events: {{upstream: app}}}}
cluster: {{redis: "redis://127.0.0.1:6379/0", laravel: {{channels: [orders]}}}}
routes:
  - {{path: /ws, realtime: websocket}}
  - {{path: /, upstream: app, static: {{root: {dir}}}}}
"#,
        dir = dir.display()
    ));
    (bare, full)
}

fn app(s: &Settings) -> &App {
    match &s.routes[1].target {
        Target::App(a) => a,
        other => panic!("{other:?}"),
    }
}

fn ws(s: &Settings) -> &WebSocket {
    match &s.routes[0].target {
        Target::Realtime(Endpoint::Websocket(ws)) => ws,
        other => panic!("{other:?}"),
    }
}

/// What a file without `key` gets, spelled as YAML; `None` for a key without a default (it
/// is required, or nothing happens without it).
fn value(s: &Settings, key: &str) -> Option<Value> {
    let l = &s.limits;
    let app_pool = &s.upstreams["app"];
    let hc = app_pool.health_check.as_ref();
    let Protocol::FastCgi(fcgi) = &s.upstreams["php"].protocol else {
        panic!("php is a FastCGI pool")
    };
    let files = app(s).files.as_ref();
    let hub = &s.realtime.hub;
    let sio = &s.realtime.socketio;
    let main_ns = &sio.namespaces["/"];
    let comp = s.compression.as_ref();
    match key {
        "listen.https" | "listen.http" | "listen.admin" => None,
        "tls.state_dir" => text(s.tls.state_dir.display().to_string()),
        "tls.hsts.max_age" => num(s.tls.hsts.as_ref()?.max_age),
        "tls.hsts.include_subdomains" => flag(s.tls.hsts.as_ref()?.include_subdomains),
        "proxy.trusted_proxies" => texts(&s.proxy.trusted_proxies),
        "limits.max_header_bytes" => num(l.max_header_bytes as u64),
        "limits.max_body_bytes" => num(l.max_body_bytes),
        "limits.header_timeout_ms" => ms(l.header_timeout),
        "limits.keepalive_requests" => num(l.keepalive_requests),
        "limits.keepalive_timeout_s" => num(l.keepalive_timeout.map_or(0, |d| d.as_secs())),
        "limits.send_timeout_ms" => ms(l.send_timeout),
        "limits.client_body_buffer_bytes" => num(l.client_body_buffer_bytes as u64),
        "limits.client_body_timeout_ms" => ms(l.client_body_timeout),
        "limits.client_body_min_rate" => num(l.client_body_min_rate),
        "limits.response_buffer_bytes" => num(l.response_buffer_bytes as u64),
        "limits.response_temp_file_bytes" => num(l.response_temp_file_bytes),
        "limits.h2_max_concurrent_streams" => num(l.h2_max_concurrent_streams),
        "upstreams.NAME.servers" | "upstreams.NAME.fastcgi" => None,
        "upstreams.NAME.protocol" => text(match app_pool.protocol {
            Protocol::Http => "http",
            Protocol::FastCgi(_) => "fastcgi",
        }),
        "upstreams.NAME.fastcgi.index" => text(&fcgi.index),
        "upstreams.NAME.fastcgi.front_controller" => text(&fcgi.front_controller),
        "upstreams.NAME.balance" => text(match app_pool.balance {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::IpHash => "ip_hash",
        }),
        "upstreams.NAME.health_check.interval_ms" => ms(hc?.interval),
        "upstreams.NAME.health_check.timeout_ms" => ms(hc?.timeout),
        "upstreams.NAME.health_check.rise" => num(hc?.rise),
        "upstreams.NAME.health_check.fall" => num(hc?.fall),
        "upstreams.NAME.connect_timeout_ms" => ms(app_pool.connect_timeout),
        "upstreams.NAME.read_timeout_ms" => ms(app_pool.read_timeout),
        "routes[]" | "routes[].static" | "routes[].upstream" | "routes[].realtime" => None,
        "routes[].static.index" => texts(&files?.index),
        "routes[].static.precompressed" => flag(files?.precompressed),
        "routes[].websocket" => flag(app(s).websocket),
        "routes[].request_buffering" => flag(app(s).request_buffering),
        "routes[].response_buffering" => flag(app(s).response_buffering),
        "realtime.hub.history" => num(hub.history as u64),
        "realtime.hub.subscriber_queue" => num(hub.subscriber_queue as u64),
        "realtime.hub.max_topics" => num(hub.max_topics as u64),
        "realtime.hub.max_topic_length" => num(hub.max_topic_length as u64),
        "realtime.hub.new_topics_per_client_per_minute" => {
            num(hub.new_topics_per_client_per_minute)
        }
        "realtime.longpoll.wait_ms" => ms(s.realtime.longpoll.wait),
        "realtime.longpoll.max_message_bytes" => num(s.realtime.longpoll.max_message_bytes as u64),
        "realtime.sse.heartbeat_ms" => ms(s.realtime.sse.heartbeat),
        "realtime.sse.retry_ms" => ms(s.realtime.sse.retry),
        "realtime.websocket.<path>.allow_plain" => flag(ws(s).allow_plain),
        "realtime.websocket.<path>.max_message_bytes" => num(ws(s).max_message_bytes as u64),
        "realtime.websocket.<path>.ping_interval_ms" => ms(ws(s).ping_interval),
        "realtime.websocket.<path>.ping_timeout_ms" => ms(ws(s).ping_timeout),
        "realtime.websocket.<path>.queue" => num(ws(s).queue as u64),
        "realtime.websocket.<path>.max_subscriptions" => num(ws(s).max_subscriptions as u64),
        "realtime.socketio.ping_interval_ms" => ms(sio.ping_interval),
        "realtime.socketio.ping_timeout_ms" => ms(sio.ping_timeout),
        "realtime.socketio.max_payload_bytes" => num(sio.max_payload_bytes as u64),
        "realtime.socketio.connect_timeout_ms" => ms(sio.connect_timeout),
        "realtime.socketio.max_sessions" => num(sio.max_sessions as u64),
        "realtime.socketio.max_sessions_per_client" => num(sio.max_sessions_per_client as u64),
        "realtime.socketio.recovery.max_disconnection_ms" => {
            ms(sio.recovery.as_ref()?.max_disconnection)
        }
        "realtime.socketio.namespaces./.relay_rate.per_second" => {
            num(main_ns.relay_rate.per_second)
        }
        "realtime.socketio.namespaces./.relay_rate.burst" => num(main_ns.relay_rate.burst),
        "realtime.policy.private" => texts(
            &(s.realtime.policy.private.iter())
                .map(|p| p.as_str())
                .collect::<Vec<_>>(),
        ),
        "realtime.policy.client_publish" => texts(
            &(s.realtime.policy.client_publish.iter())
                .map(|p| p.as_str())
                .collect::<Vec<_>>(),
        ),
        "realtime.auth.upstream" => None,
        "realtime.auth.subscribe" => text(&s.realtime.auth.as_ref()?.subscribe),
        "realtime.auth.timeout_ms" => ms(s.realtime.auth.as_ref()?.timeout),
        "realtime.auth.cache_ms" => ms(s.realtime.auth.as_ref()?.cache),
        "realtime.events.upstream" => None,
        "realtime.events.path" => text(&s.realtime.events.as_ref()?.path),
        "realtime.events.timeout_ms" => ms(s.realtime.events.as_ref()?.timeout),
        "realtime.events.max_in_flight" => num(s.realtime.events.as_ref()?.max_in_flight as u64),
        "compression.enabled" => flag(comp.is_some()),
        "compression.algorithms" => {
            texts(&comp?.codings.iter().map(|c| c.token()).collect::<Vec<_>>())
        }
        "compression.gzip_level" => num(comp?.gzip_level),
        "compression.brotli_level" => num(comp?.brotli_level),
        "compression.min_length" => num(comp?.min_length),
        "cluster.redis" | "cluster.internal_listen" | "cluster.secret" | "pid_file" => None,
        "cluster.key_prefix" => text(&s.cluster.as_ref()?.key_prefix),
        "cluster.socketio_adapter" => flag(s.cluster.as_ref()?.socketio_adapter),
        "cluster.laravel.channels" => None,
        "cluster.laravel.prefix" => text(&s.cluster.as_ref()?.laravel.as_ref()?.prefix),
        "grace_period_s" => num(s.grace_period.as_secs()),
        "work_stealing" => flag(s.work_stealing),
        "access_log.path" => text(match &s.access_log.target {
            LogTarget::Off => "off".to_string(),
            LogTarget::Stdout => "stdout".to_string(),
            LogTarget::Stderr => "stderr".to_string(),
            LogTarget::File(p) => p.display().to_string(),
        }),
        "access_log.format" => text(match s.access_log.format {
            AccessLogFormat::Combined => "combined",
            AccessLogFormat::Json => "json",
        }),
        "access_log.queue_lines" => num(s.access_log.queue_lines as u64),
        other => {
            panic!("the README names {other}, which this test does not know: add it to `value`")
        }
    }
}

/// A default column that is a word, not a value: checked here by what it means. `false` when
/// the word is not one of these.
fn word(bare: &Settings, full: &Settings, key: &str, default: &str) -> bool {
    match (key, default) {
        ("tls.certificates[]", "none") => assert!(bare.tls.certificates.is_empty()),
        ("limits.max_connections", "none") => assert!(bare.limits.max_connections.is_none()),
        ("limits.per_client_connections", "none") => {
            assert!(bare.limits.per_client_connections.is_none())
        }
        ("limits.per_client_rate", "none") => assert!(bare.limits.per_client_rate.is_none()),
        ("limits.per_client_realtime_connects", "none") => {
            assert!(bare.limits.per_client_realtime_connects.is_none())
        }
        ("tls.hsts", "off") => assert!(bare.tls.hsts.is_none()),
        ("proxy.temp_dir", "`<state_dir>/tmp`") => {
            assert_eq!(bare.proxy.temp_dir, bare.tls.state_dir.join("tmp"))
        }
        ("upstreams.NAME.health_check", "none") => {
            assert!(bare.upstreams["app"].health_check.is_none())
        }
        ("internal_locations[]", "none") => assert!(bare.internal_locations.is_empty()),
        // On for the route when on globally (the router drops it when compression is off).
        ("routes[].compression", "global") => assert!(app(bare).compression),
        ("realtime.hub.max_open_topics", "half") => assert_eq!(
            bare.realtime.hub.max_open_topics,
            bare.realtime.hub.max_topics / 2
        ),
        ("realtime.publish.token", "none") => assert!(bare.realtime.publish.token.is_none()),
        ("realtime.auth.connect", "none") => {
            assert!(full
                .realtime
                .auth
                .as_ref()
                .is_some_and(|a| a.connect.is_none()))
        }
        // The row's meaning lists the defaults; they are checked from there.
        ("realtime.websocket.<path>", "see `gateway.yaml`")
        | ("realtime.socketio", "node's defaults") => {}
        ("compression.types", "text, JSON, JS, XML, SVG, ...") => {
            let types = &full.compression.as_ref().expect("on").types;
            for (main, sub) in [
                ("text", "html"),
                ("application", "json"),
                ("application", "javascript"),
                ("application", "xml"),
                ("image", "svg+xml"),
            ] {
                assert!(types.iter().any(|t| t.matches(main, sub)), "{main}/{sub}");
            }
        }
        ("cluster", "off") => assert!(bare.cluster.is_none()),
        ("cluster.laravel", "off") => {
            let only_redis = Settings::build(
                crate::config::Config::parse(
                    "listen: {http: 127.0.0.1:8080}\ncluster: {redis: \"redis://127.0.0.1:6379/0\"}\nroutes: [{path: /ws, realtime: websocket}]\n",
                )
                .expect("parses"),
                Path::new("/etc/gw"),
            )
            .expect("builds");
            assert!(only_redis.cluster.expect("on").laravel.is_none())
        }
        ("cluster.tls_ca", "none") => {
            assert!(full.cluster.as_ref().expect("on").tls_ca.is_none())
        }
        ("cluster.node_id", "`<hostname>:<pid>`") => {
            let id = &full.cluster.as_ref().expect("on").node_id;
            let (host, pid) = id.rsplit_once(':').expect("host:pid");
            assert!(!host.is_empty(), "{id}");
            assert_eq!(pid, std::process::id().to_string(), "{id}");
        }
        ("cluster.advertise", "`internal_listen`") => {
            let internal = Settings::build(
                crate::config::Config::parse(
                    "listen: {http: 127.0.0.1:8080}\nroutes: [{path: /ws, realtime: websocket}]\ncluster: {redis: \"redis://127.0.0.1:6379/0\", internal_listen: \"10.0.0.5:7070\", secret: fleet-secret-0123456789}\n",
                )
                .expect("parses"),
                Path::new("/etc/gw"),
            )
            .expect("builds")
            .cluster
            .and_then(|c| c.internal)
            .expect("forwarding on");
            assert_eq!(internal.advertise, internal.listen.to_string());
        }
        ("pid_file", "`<tls.state_dir>/gateway.pid`") => {
            assert_eq!(bare.pid_file, bare.tls.state_dir.join("gateway.pid"))
        }
        ("threads", "cores") => assert_eq!(
            bare.threads,
            std::thread::available_parallelism().map_or(2, |n| n.get())
        ),
        _ => return false,
    }
    true
}

/// `1e6` and `1000000` are the same number.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Sequence(x), Value::Sequence(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        _ => a == b,
    }
}

/// A value as the README would write it (`[br, gzip]`, not a block list).
fn show(v: &Value) -> String {
    match v {
        Value::Sequence(items) => {
            format!(
                "[{}]",
                items.iter().map(show).collect::<Vec<_>>().join(", ")
            )
        }
        other => serde_yaml_ng::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

fn check(s: &Settings, key: &str, stated: &str, wrong: &mut Vec<String>) {
    let stated_value: Value = match serde_yaml_ng::from_str(unquote(stated)) {
        Ok(v) => v,
        Err(e) => panic!("{key}: the README's default {stated:?} is not a value: {e}"),
    };
    match value(s, key) {
        Some(actual) if same(&actual, &stated_value) => {}
        actual => wrong.push(format!(
            "{key}: the README says {stated}, a file without it gets {}",
            actual.map_or("no value".to_string(), |v| show(&v))
        )),
    }
}

/// The leaves of a `{...}` block in a row's meaning, with their keys under `at`.
fn leaves(at: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                let k = match k {
                    Value::String(k) => k.clone(),
                    other => panic!("{at}: key {other:?}"),
                };
                leaves(&format!("{at}.{k}"), v, out);
            }
        }
        // `{path, ...}`: a key named without a default.
        Value::Null => {}
        leaf => out.push((at.to_string(), leaf.clone())),
    }
}

/// The defaults a row's meaning states: `{key: value, ...}` blocks (alone or after `name: `)
/// and `` `key` (value) ``.
fn stated_in_meaning(row_key: &str, meaning: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = meaning;
    while let Some(open) = rest.find('`') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('`') else { break };
        let code = &after[..close];
        rest = &after[close + 1..];
        if code.starts_with('{') || code.contains(": {") {
            let block: Value = serde_yaml_ng::from_str(code)
                .unwrap_or_else(|e| panic!("{row_key}: `{code}` is not YAML: {e}"));
            let mut found = Vec::new();
            leaves(row_key, &block, &mut found);
            for (k, v) in found {
                out.push((k, show(&v)));
            }
        } else if let Some(paren) = rest.strip_prefix(" (") {
            // `max_sessions` (50000, 503 above): the number or flag before any comment;
            // `client_dir` (absent: ...) states no value.
            let value: String = paren
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.')
                .collect();
            if value.starts_with(|c: char| c.is_ascii_digit())
                || value == "true"
                || value == "false"
            {
                out.push((format!("{row_key}.{code}"), value));
            }
        }
    }
    out
}

#[test]
fn the_readme_configuration_table_states_the_defaults_the_settings_get() {
    let (bare, full) = files();
    let rows = rows();
    assert!(rows.len() > 50, "only {} rows found", rows.len());
    let mut wrong = Vec::new();
    let mut checked = 0;
    for row in &rows {
        for (key, default) in row.keys.iter().zip(&row.defaults) {
            checked += 1;
            if default == "-" {
                if let Some(v) = value(&full, key) {
                    wrong.push(format!(
                        "{key}: the README says it has no default, it has {v:?}"
                    ));
                }
            } else if !word(&bare, &full, key, default) {
                check(&full, key, default, &mut wrong);
            }
        }
        if MEANING_STATES_DEFAULTS.contains(&row.keys[0].as_str()) {
            let stated = stated_in_meaning(&row.keys[0], &row.meaning);
            assert!(
                !stated.is_empty(),
                "{}: no defaults found in its meaning",
                row.keys[0]
            );
            for (key, default) in stated {
                checked += 1;
                check(&full, &key, &default, &mut wrong);
            }
        }
    }
    assert!(checked > 70, "only {checked} defaults checked");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_table_reader_reads_what_the_rows_say() {
    let meaning = "`ping_interval_ms` (25000), `relay` (true), `max_payload_bytes` (1e6), `max_sessions` (50000, 503 above), `allowed_origins`, `recovery: {max_disconnection_ms}`, `client_dir` (absent: built in), `namespaces: {\"/\": {relay, relay_rate: {per_second: 50, burst: 100}}}`.";
    let stated = stated_in_meaning("realtime.socketio", meaning);
    let want = [
        ("realtime.socketio.ping_interval_ms", "25000"),
        ("realtime.socketio.relay", "true"),
        ("realtime.socketio.max_payload_bytes", "1e6"),
        ("realtime.socketio.max_sessions", "50000"),
        ("realtime.socketio.namespaces./.relay_rate.per_second", "50"),
        ("realtime.socketio.namespaces./.relay_rate.burst", "100"),
    ];
    let stated: Vec<(&str, &str)> = stated
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(stated, want);
    let mut wrong = Vec::new();
    let (_, full) = files();
    check(
        &full,
        "realtime.socketio.max_payload_bytes",
        "1e6",
        &mut wrong,
    );
    check(&full, "realtime.socketio.max_sessions", "7", &mut wrong);
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    assert!(
        wrong[0].starts_with("realtime.socketio.max_sessions: the README says 7"),
        "{wrong:?}"
    );
}
