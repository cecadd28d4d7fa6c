//! TLS as stunnel users expect it: modern protocols only, the right certificate per name, a
//! development certificate that just works, and plain HTTP sent to HTTPS.

use std::process::Command;

use e2e::{binary, client, tls_connector, Gateway, Scratch, Stub};

fn app_config(stub: &Stub, tls: &str) -> String {
    format!(
        r#"
listen: {{https: "{{https}}", http: "{{http}}", admin: "{{admin}}"}}
tls: {tls}
upstreams: {{app: {{servers: ["{}"]}}}}
routes: [{{path: /, upstream: app}}]
"#,
        stub.addr
    )
}

/// The certificate the gateway presents for `sni`.
async fn served_cert(gw: &Gateway, sni: &str) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(gw.https_addr())
        .await
        .expect("connect");
    let tls = tls_connector()
        .connect(
            rustls::pki_types::ServerName::try_from(sni.to_string()).expect("name"),
            tcp,
        )
        .await
        .expect("handshake");
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
}

fn write_cert(dir: &std::path::Path, name: &str) -> Vec<u8> {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
    std::fs::write(dir.join(format!("{name}.pem")), c.cert.pem()).expect("cert");
    std::fs::write(
        dir.join(format!("{name}.key")),
        c.signing_key.serialize_pem(),
    )
    .expect("key");
    c.cert.der().to_vec()
}

#[tokio::test]
async fn sni_selects_the_certificate_and_unknown_names_get_the_default() {
    let stub = Stub::start("a");
    let certs = Scratch::new("certs");
    let alpha = write_cert(certs.path(), "alpha.test");
    let beta = write_cert(certs.path(), "beta.test");
    let d = certs.path().display();
    let gw = Gateway::start(&app_config(
        &stub,
        &format!(
            "{{certificates: [{{cert: {d}/alpha.test.pem, key: {d}/alpha.test.key, server_names: [alpha.test]}}, \
              {{cert: {d}/beta.test.pem, key: {d}/beta.test.key, server_names: [beta.test, \"*.beta.test\"]}}]}}"
        ),
    ));
    assert_eq!(served_cert(&gw, "alpha.test").await, alpha);
    assert_eq!(served_cert(&gw, "beta.test").await, beta);
    assert_eq!(served_cert(&gw, "www.beta.test").await, beta);
    assert_eq!(
        served_cert(&gw, "unknown.example").await,
        alpha,
        "the first chain is the default"
    );
}

#[tokio::test]
async fn tls_1_1_is_refused_and_1_2_and_1_3_work() {
    let stub = Stub::start("a");
    let gw = Gateway::start(&app_config(&stub, "{state_dir: state}"));
    let s_client = |flag: &str| {
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &gw.https_addr().to_string(),
                flag,
                // OpenSSL 3 will not even offer TLS 1.1 at its default security level.
                "-cipher",
                "DEFAULT:@SECLEVEL=0",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl s_client");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = s_client("-tls1_1");
    assert!(!ok, "TLS 1.1 handshake succeeded:\n{out}");
    // rustls answers a ClientHello offering only TLS 1.1 with a handshake_failure alert.
    assert!(
        out.contains("alert protocol version") || out.contains("alert handshake failure"),
        "{out}"
    );
    assert!(out.contains("no peer certificate available"), "{out}");
    let (ok, out) = s_client("-tls1_2");
    assert!(ok && out.contains("New, TLSv1.2"), "{out}");
    let (ok, out) = s_client("-tls1_3");
    assert!(ok && out.contains("New, TLSv1.3"), "{out}");
}

#[tokio::test]
async fn http2_is_negotiated_for_ordinary_requests() {
    let stub = Stub::start("a");
    let gw = Gateway::start(&app_config(&stub, "{state_dir: state}"));
    let r = client().get(gw.https("/ping")).send().await.expect("get");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.text().await.expect("body"), "PONG. EOM.");
    let h1 = e2e::client_builder().http1_only().build().expect("client");
    let r = h1.get(gw.https("/ping")).send().await.expect("get");
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
}

#[tokio::test]
async fn the_development_certificate_is_created_once_and_reused() {
    let stub = Stub::start("a");
    let state = Scratch::new("devcert");
    let cfg = app_config(&stub, &format!("{{state_dir: {}}}", state.path().display()));
    let first = {
        let gw = Gateway::start(&cfg);
        served_cert(&gw, "localhost").await
    };
    let on_disk = std::fs::read_to_string(state.path().join("dev-cert.pem")).expect("kept");
    assert!(on_disk.contains("BEGIN CERTIFICATE"));
    let gw = Gateway::start(&cfg);
    assert_eq!(
        served_cert(&gw, "localhost").await,
        first,
        "a restart must reuse the certificate"
    );
}

#[tokio::test]
async fn a_missing_certificate_is_a_clear_error_not_a_panic() {
    let dir = Scratch::new("badcert");
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").expect("write");
    std::fs::write(
        dir.path().join("gateway.yaml"),
        "listen: {https: 127.0.0.1:1}\ntls: {certificates: [{cert: missing.pem, key: missing.key}, {cert: junk.pem, key: junk.pem}]}\nupstreams: {app: {servers: [127.0.0.1:2]}}\nroutes: [{path: /, upstream: app}]\n",
    )
    .expect("write");
    for cmd in ["run", "check"] {
        let out = Command::new(binary("gateway"))
            .args([cmd, "--config", "gateway.yaml"])
            .current_dir(dir.path())
            .output()
            .expect("run gateway");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        assert!(
            err.contains("tls.certificates[0]: cannot read"),
            "{cmd}: {err}"
        );
        assert!(
            err.contains("tls.certificates[1]") && err.contains("no PEM certificate"),
            "{cmd}: {err}"
        );
        assert!(!err.contains("panicked"), "{cmd}: {err}");
    }
}

#[tokio::test]
async fn plain_http_is_redirected_to_https_with_path_and_query() {
    let stub = Stub::start("a");
    let gw = Gateway::start(&app_config(&stub, "{state_dir: state}"));
    let c = client();
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let r = c
            .request(method.clone(), gw.http("/a/b?c=d&e=%20f"))
            .header("host", format!("localhost:{}", gw.ports.http))
            .send()
            .await
            .expect("http");
        assert_eq!(r.status(), 308, "{method}");
        assert_eq!(
            r.headers()["location"],
            format!("https://localhost:{}/a/b?c=d&e=%20f", gw.ports.https).as_str()
        );
    }
    assert!(
        stub.paths().await.is_empty(),
        "plain HTTP must never reach the app"
    );
}

/// HSTS on every answer over TLS, as nginx's `add_header ... always`: the app's pages and the
/// realtime services' answers alike (an SSE stream, a long-poll, an Engine.IO handshake).
#[tokio::test]
async fn hsts_is_sent_when_configured() {
    let stub = Stub::start("a");
    let gw = Gateway::start(
        &app_config(
            &stub,
            "{state_dir: state, hsts: {max_age: 600, include_subdomains: true}}",
        )
        .replace(
            "routes: [{path: /, upstream: app}]",
            "routes:\n  - {path: /events, realtime: sse}\n  - {path: /s, realtime: longpoll}\n  \
             - {path: /socket.io/, realtime: socketio}\n  - {path: /, upstream: app}",
        ),
    );
    for path in [
        "/ping",
        "/events?topic=news",
        "/s?t=news&since=0",
        "/socket.io/?EIO=4&transport=polling",
    ] {
        let r = client().get(gw.https(path)).send().await.expect("get");
        assert_eq!(
            r.headers()
                .get("strict-transport-security")
                .map(|v| v.to_str().unwrap_or("")),
            Some("max-age=600; includeSubDomains"),
            "{path}: {} {:?}",
            r.status(),
            r.headers()
        );
    }
}
