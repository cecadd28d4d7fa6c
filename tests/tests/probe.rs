//! `gateway probe`: "It worked." against the demo setup, and a readable first failure (with a
//! non-zero exit) when the app is down, when TLS fails, and when the WebSocket path is wrong.

use std::process::Command;

use e2e::{binary, Gateway, Stub};

fn demo(a: &Stub, b: &Stub) -> Gateway {
    Gateway::start(&format!(
        r#"
listen: {{https: "{{https}}"}}
tls: {{state_dir: state}}
upstreams: {{app: {{servers: ["{}", "{}"]}}}}
realtime:
  socketio:
    namespaces: {{"/": {{relay: true}}}}
routes:
  - {{path: /socket.io/, realtime: socketio}}
  - {{path: /cable, upstream: app}}
  - {{path: /, upstream: app}}
"#,
        a.addr, b.addr,
    ))
}

fn probe(gw: &Gateway, extra: &[&str]) -> (bool, String) {
    let url = format!("https://localhost:{}", gw.ports.https);
    let out = Command::new(binary("gateway"))
        .arg("probe")
        .arg(&url)
        .args(extra)
        .output()
        .expect("run gateway probe");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn the_probe_passes_against_the_demo_setup() {
    let (a, b) = (Stub::start("a"), Stub::start("b"));
    let gw = demo(&a, &b);
    let (ok, out) = probe(&gw, &["--insecure"]);
    assert!(ok, "{out}");
    assert!(out.trim_end().ends_with("It worked."), "{out}");
    assert!(out.contains("alive after 5 s idle"), "{out}");
    assert!(out.contains("upgraded to WebSocket"), "{out}");
}

#[test]
fn the_probe_explains_the_first_failure() {
    let (mut a, mut b) = (Stub::start("a"), Stub::start("b"));
    let gw = demo(&a, &b);

    let (ok, out) = probe(&gw, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("TLS handshake failed"), "{out}");

    let (ok, out) = probe(&gw, &["--insecure", "--ws-path", "/nope"]);
    assert!(!ok, "{out}");
    assert!(out.contains("WebSocket upgrade on /nope failed"), "{out}");

    a.proc.kill();
    b.proc.kill();
    let (ok, out) = probe(&gw, &["--insecure"]);
    assert!(!ok, "{out}");
    assert!(out.contains("the app behind it is down"), "{out}");
    assert!(!out.contains("It worked."), "{out}");
}
