//! `gateway check`: every problem in a broken file, each with where it is; exit 2. The shipped
//! `gateway.yaml` passes.

use std::process::Command;

use e2e::{binary, workspace_root, Scratch};

fn check(dir: &std::path::Path, file: &str) -> (Option<i32>, String, String) {
    let out = Command::new(binary("gateway"))
        .args(["check", "--config", file])
        .current_dir(dir)
        .output()
        .expect("run gateway check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_shipped_configuration_passes() {
    let (code, out, err) = check(&workspace_root(), "gateway.yaml");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("ok"));
}

#[test]
fn the_php_example_configuration_passes() {
    let (code, out, err) = check(&workspace_root(), "examples/php/gateway.yaml");
    assert_eq!(code, Some(0), "{out}{err}");
}

#[test]
fn a_broken_file_reports_every_problem_with_its_path() {
    let dir = Scratch::new("check");
    std::fs::write(
        dir.path().join("bad.yaml"),
        r#"
listen: {https: "127.0.0.1:99999", admin: 127.0.0.1:9090}
upstreams:
  app: {servers: [], health_check: {interval_ms: 5}}
routes:
  - {path: /, upstream: app}
  - {path: /api, upstream: ap}
  - {path: /files, static: {root: does-not-exist}}
"#,
    )
    .expect("write");
    let (code, _, err) = check(dir.path(), "bad.yaml");
    assert_eq!(code, Some(2), "{err}");
    for want in [
        "listen.https: \"127.0.0.1:99999\" is not an address",
        "upstreams.app.servers: needs at least one server",
        "upstreams.app.health_check.interval_ms: must be at least 100",
        "routes[1].upstream: no upstream named \"ap\" (known: app)",
        "routes[2].static.root:",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(err.contains("5 problem(s)"), "{err}");
}

#[test]
fn unknown_fields_and_syntax_errors_name_their_place() {
    let dir = Scratch::new("check");
    std::fs::write(
        dir.path().join("typo.yaml"),
        "listen: {https: 127.0.0.1:8443}\nroutes:\n  - {path: /, upstrem: app}\n",
    )
    .expect("write");
    let (code, _, err) = check(dir.path(), "typo.yaml");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("routes[0]") && err.contains("unknown field `upstrem`"),
        "{err}"
    );

    let (code, _, err) = check(dir.path(), "missing.yaml");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot read missing.yaml"), "{err}");
}

#[test]
fn a_policy_that_leaves_a_transport_nothing_to_do_is_explained() {
    let dir = Scratch::new("check");
    std::fs::write(
        dir.path().join("closed.yaml"),
        r#"
listen: {https: 127.0.0.1:8443}
realtime:
  policy: {private: ["*"]}
routes:
  - {path: /events, realtime: sse}
  - {path: /p, realtime: longpoll}
"#,
    )
    .expect("write");
    let (code, _, err) = check(dir.path(), "closed.yaml");
    assert_eq!(code, Some(2), "{err}");
    for want in [
        "realtime.policy.private: every topic needs the app's word and realtime.auth is not set, so no client can subscribe to anything",
        "routes[1]: /p only publishes (POST /p?t=<topic>), and realtime.policy.client_publish names no topic clients may publish to",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn the_cluster_block_is_checked_without_connecting_and_never_shows_the_password() {
    let dir = Scratch::new("check");
    // Nothing listens on port 1: check does not connect, the file is fine.
    std::fs::write(
        dir.path().join("fleet.yaml"),
        "listen: {http: 127.0.0.1:8080}\nroutes: [{path: /s, realtime: longpoll}]\ncluster: {redis: \"rediss://alice:s3cret@127.0.0.1:1/2\", node_id: gw-1, internal_listen: \"10.0.0.5:7070\", secret: fleet-s3cret-0123456789}\n",
    )
    .expect("write");
    let (code, out, err) = check(dir.path(), "fleet.yaml");
    assert_eq!(code, Some(0), "{out}{err}");
    std::fs::write(
        dir.path().join("bad-fleet.yaml"),
        "listen: {http: 127.0.0.1:8080}\nroutes: [{path: /s, realtime: longpoll}]\ncluster: {redis: \"redis://:s3cret@127.0.0.1:6379/notadb\", node_id: \"\", tls_ca: nope.pem, internal_listen: \"127.0.0.1:8080\", secret: s3cret}\n",
    )
    .expect("write");
    let (code, out, err) = check(dir.path(), "bad-fleet.yaml");
    assert_eq!(code, Some(2), "{out}{err}");
    for want in [
        "cluster.tls_ca: cannot read ",
        "cluster.redis: invalid redis url redis://:***@127.0.0.1:6379/notadb: ",
        "cluster.node_id: must be 1 to 128 bytes long",
        "cluster.internal_listen: 127.0.0.1:8080 is already used by listen.http",
        "cluster.secret: must be 16 to 1024 characters long",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(!format!("{out}{err}").contains("s3cret"), "{err}");
}
