//! The end-to-end harness: start the real `gateway` and `backend-stub` binaries on free ports,
//! wait until they answer (with a deadline), show their logs when a test fails, and kill them
//! when the test is over.
//!
//! The binaries are found next to the test executable (`target/<profile>/`), because
//! `CARGO_BIN_EXE_*` is only set for a package's own binaries. `tests/run.sh` builds them
//! before running the tests.

pub mod balancer;
pub mod fleet;
pub mod h2;
pub mod raw;
pub mod redis;
pub mod sessions;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a binary may take to start listening (a debug build on a busy 2-core machine).
const READY_DEADLINE: Duration = Duration::from_secs(20);

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// The outcome of a tests/js scenario run with node: the JSON object on its last line of
/// stdout, asserted to be a success (exit 0, no `error` field); `label` names the scenario in
/// the failure message, which carries node's stdout and stderr.
pub fn node_result(out: std::process::Output, label: &str) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|_| {
        panic!(
            "{label}: no JSON result\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success() && v.get("error").is_none(),
        "{label} failed: {v}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    v
}

/// `target/<profile>/<name>`, where this test executable's profile put it.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --workspace --bins` (tests/run.sh does)",
        path.display()
    );
    path
}

/// A port nothing listens on right now, and that this test process has not handed out before.
pub fn free_port() -> u16 {
    fresh_ports(1)[0]
}

/// `n` distinct free ports, none handed out before by this test process. The kernel may give
/// the same free port to two `bind(0)`s once the first is closed, and a test binary's tests run
/// in parallel: two servers configured on one port, the second fails to bind, and its test,
/// waiting for the port, finds the first's listener instead and goes on (a request then
/// refused once the other test ended: seen once in CI). Ports are never given twice: the
/// listeners of ports already given are held while more are bound, so the kernel cannot hand
/// them back in the same call.
fn fresh_ports(n: usize) -> Vec<u16> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let mut held = Vec::new();
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("a bound address").port();
        if given.insert(port) {
            ports.push(port);
        }
        held.push(listener);
    }
    ports
}

/// A fresh scratch directory under `target/e2e/`, removed when dropped (kept if the test fails).
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = workspace_root().join("target/e2e").join(format!(
            "{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A running binary. Its stdout and stderr go to a log file, printed if the test fails.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, program: &Path, args: &[&str], dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .env(
                "RUST_LOG",
                std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Exit status if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Wait until `addr` accepts TCP connections, or panic with the logs.
    pub fn wait_for_port(&mut self, addr: SocketAddr) {
        let start = Instant::now();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "{} exited with {status} before listening on {addr}; its log:\n{}",
                    self.name,
                    self.logs()
                );
            }
            if start.elapsed() > READY_DEADLINE {
                panic!(
                    "{} did not listen on {addr} within {READY_DEADLINE:?}; its log:\n{}",
                    self.name,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send a signal (e.g. `libc::SIGTERM` = 15) by number.
    pub fn signal(&self, sig: i32) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait up to `d` for the process to exit on its own.
    pub fn wait_exit(&mut self, d: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < d {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}) -----\n{}\n----- end of {} log -----",
                self.name,
                self.log.display(),
                self.logs(),
                self.name
            );
        }
    }
}

/// A backend-stub instance (the stand-in for the Ruby/PHP app).
pub struct Stub {
    pub id: String,
    pub addr: SocketAddr,
    pub proc: Proc,
    _dir: Option<Scratch>,
}

impl Stub {
    pub fn start(id: &str) -> Stub {
        Stub::start_with(id, &[])
    }

    pub fn start_with(id: &str, extra: &[&str]) -> Stub {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        Stub::start_on(id, addr, extra)
    }

    /// Start on a given address (to bring a killed backend back on the same port).
    pub fn start_on(id: &str, addr: SocketAddr, extra: &[&str]) -> Stub {
        let dir = Scratch::new(&format!("stub-{id}"));
        let a = addr.to_string();
        let mut args = vec!["--listen", &a, "--id", id];
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn(
            &format!("backend-stub {id}"),
            &binary("backend-stub"),
            &args,
            dir.path(),
        );
        proc.wait_for_port(addr);
        Stub {
            id: id.to_string(),
            addr,
            proc,
            _dir: Some(dir),
        }
    }

    /// What this instance received (its `/__log`), as JSON values.
    pub async fn received(&self) -> Vec<serde_json::Value> {
        let url = format!("http://{}/__log", self.addr);
        reqwest::get(&url)
            .await
            .expect("stub /__log")
            .json()
            .await
            .expect("stub /__log json")
    }

    /// Paths this instance received.
    pub async fn paths(&self) -> Vec<String> {
        self.received()
            .await
            .iter()
            .filter_map(|r| r["path"].as_str().map(String::from))
            .collect()
    }
}

/// A backend-stub on a Unix socket, as Puma is with `bind "unix:///run/app/puma.sock"`.
pub struct UnixStub {
    pub id: String,
    pub socket: PathBuf,
    pub proc: Proc,
}

impl UnixStub {
    /// Listen on `socket` (given as Puma prints it, `unix://` + the absolute path) and wait
    /// until it accepts connections.
    pub fn start(id: &str, socket: &Path) -> UnixStub {
        let dir = socket.parent().expect("a socket path has a folder");
        let listen = format!("unix://{}", socket.display());
        let mut proc = Proc::spawn(
            &format!("backend-stub {id} (unix)"),
            &binary("backend-stub"),
            &["--listen", &listen, "--id", id],
            dir,
        );
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Some(status) = proc.exited() {
                panic!(
                    "{} exited with {status}; its log:\n{}",
                    proc.name,
                    proc.logs()
                );
            }
            if start.elapsed() > READY_DEADLINE {
                panic!(
                    "{} did not listen on {} within {READY_DEADLINE:?}; its log:\n{}",
                    proc.name,
                    socket.display(),
                    proc.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        UnixStub {
            id: id.to_string(),
            socket: socket.to_path_buf(),
            proc,
        }
    }
}

/// The ports a gateway under test listens on.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub https: u16,
    pub http: u16,
    pub admin: u16,
}

impl Ports {
    /// Three distinct free ports ([`fresh_ports`]: held bound together while chosen, because
    /// one at a time the kernel may hand the same ephemeral port out twice, and a gateway then
    /// refuses its own configuration: "listen.admin ... is already used by listen.https").
    pub fn new() -> Ports {
        let p = fresh_ports(3);
        Ports {
            https: p[0],
            http: p[1],
            admin: p[2],
        }
    }

    /// The ones a filled-in configuration listens on. A test waits for all of them: pingora
    /// starts each listener's service in turn, and on a loaded machine the redirect listener
    /// came up after the HTTPS one had been seen (a slowloris test's connects were refused).
    pub fn listening(&self, yaml: &str) -> Vec<u16> {
        [self.https, self.http, self.admin]
            .into_iter()
            .filter(|port| yaml.contains(&format!("127.0.0.1:{port}")))
            .collect()
    }
}

impl Default for Ports {
    fn default() -> Self {
        Ports::new()
    }
}

/// A running gateway with the configuration a test wrote.
pub struct Gateway {
    pub ports: Ports,
    pub dir: Scratch,
    pub proc: Proc,
}

impl Gateway {
    /// Write `yaml` (after replacing `{https}`, `{http}`, `{admin}` with free ports and
    /// `{public}` with the workspace's `public/`) and start the gateway on it.
    pub fn start(yaml: &str) -> Gateway {
        let ports = Ports::new();
        let dir = Scratch::new("gateway");
        let yaml = fill(yaml, &ports);
        std::fs::write(dir.path().join("gateway.yaml"), &yaml).expect("write config");
        let mut proc = Proc::spawn(
            "gateway",
            &binary("gateway"),
            &["run", "--config", "gateway.yaml"],
            dir.path(),
        );
        for port in ports.listening(&yaml) {
            proc.wait_for_port(([127, 0, 0, 1], port).into());
        }
        Gateway { ports, dir, proc }
    }

    /// Stop the gateway and start it again with the same configuration and ports (as a
    /// deploy would): in-memory state, such as the hub's history, is gone.
    pub fn restart(&mut self) {
        self.proc.kill();
        let yaml = std::fs::read_to_string(self.dir.path().join("gateway.yaml")).expect("config");
        self.proc = Proc::spawn(
            "gateway (restarted)",
            &binary("gateway"),
            &["run", "--config", "gateway.yaml"],
            self.dir.path(),
        );
        for port in self.ports.listening(&yaml) {
            self.proc.wait_for_port(([127, 0, 0, 1], port).into());
        }
    }

    pub fn https(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.ports.https)
    }
    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.http)
    }
    pub fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.admin)
    }
    pub fn https_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.ports.https).into()
    }
    /// How many servers of `upstream` the health checks count as up, from `/healthz`.
    pub async fn healthy_servers(&self, upstream: &str) -> u64 {
        let h: serde_json::Value = reqwest::get(self.admin("/healthz"))
            .await
            .expect("healthz")
            .json()
            .await
            .expect("json");
        h["upstreams"][upstream]["healthy"].as_u64().unwrap_or(0)
    }
}

/// Replace the `{https}` / `{http}` / `{admin}` / `{public}` placeholders.
pub fn fill(yaml: &str, ports: &Ports) -> String {
    yaml.replace("{https}", &format!("127.0.0.1:{}", ports.https))
        .replace("{http}", &format!("127.0.0.1:{}", ports.http))
        .replace("{admin}", &format!("127.0.0.1:{}", ports.admin))
        .replace(
            "{public}",
            &workspace_root().join("public").display().to_string(),
        )
}

/// An HTTPS client that trusts the gateway's development certificate.
pub fn client() -> reqwest::Client {
    client_builder().build().expect("reqwest client")
}

pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
}

/// Poll `check` every 100 ms until it is true or `deadline` passes.
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Raw bytes over TLS, for requests no well-behaved client would send. Returns everything
/// the gateway answered until it closed the connection or `wait` passed.
pub async fn raw_tls(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = tls_connect(addr).await;
    tls.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A raw TLS connection (SNI `localhost`, no ALPN: HTTP/1.1), for exchanges a client library
/// would hide: slow or partial requests, reads at the test's own pace.
pub async fn tls_connect(addr: SocketAddr) -> TlsClient {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tls_connector()
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .expect("tls handshake")
        .into()
}

/// A test's TLS connection to the gateway, which pushes out what its writes left behind
/// before each read.
///
/// tokio-rustls' `poll_write` takes the plaintext and answers `Ok` even when the socket would
/// block: the encrypted record then waits in rustls for the next write or a flush. A test that
/// writes a request and then only reads (as most here do) would wait forever for the answer
/// to bytes that never left it; on one keep-alive connection this happened to the 1-byte body
/// of a POST sent right after a 2 MB answer (the gateway got the head, never the body, and
/// answered 504 when the app gave up). A real HTTP client flushes each request; this one
/// flushes at its next read, best effort: a flush that cannot finish yet (a server that has
/// stopped reading an upload) does not hold the read back, and the write wake-up it registers
/// brings the read back to try again.
pub struct TlsClient(tokio_rustls::client::TlsStream<tokio::net::TcpStream>);

impl From<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> for TlsClient {
    fn from(tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> TlsClient {
        TlsClient(tls)
    }
}

impl std::ops::Deref for TlsClient {
    type Target = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for TlsClient {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl tokio::io::AsyncRead for TlsClient {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        // Whatever the flush says (done, not yet, failed), the read goes ahead: it reports
        // what the server sent or did, which is what the test asks about.
        let _ = tokio::io::AsyncWrite::poll_flush(std::pin::Pin::new(&mut self.0), cx);
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsClient {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A client that asks for `path` and then reads only the first 64 KiB of the answer: returns
/// the connection (still open, unread) and the answer's head.
pub async fn slow_reader(addr: SocketAddr, path: &str) -> (TlsClient, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut slow = tls_connect(addr).await;
    slow.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while got.len() < 64 * 1024 {
        let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf))
            .await
            .expect("the answer starts")
            .expect("read");
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string();
    (slow, head)
}

/// A TLS connector that accepts any certificate (the tests check identity themselves).
pub fn tls_connector() -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(insecure_tls())
}

/// A rustls client configuration that accepts any server certificate.
pub fn insecure_tls() -> std::sync::Arc<rustls::ClientConfig> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAny))
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A WebSocket client over TLS to the gateway (certificate not checked).
pub async fn websocket(
    url: &str,
    protocols: Option<&str>,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request()?;
    if let Some(p) = protocols {
        req.headers_mut().insert(
            "sec-websocket-protocol",
            p.parse().expect("protocol header value"),
        );
    }
    tokio_tungstenite::connect_async_tls_with_config(
        req,
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(insecure_tls())),
    )
    .await
}

/// Debian's php-fpm binary (`/usr/sbin/php-fpm8.2` and the like, or `php-fpm` on `PATH`).
pub fn php_fpm_binary() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/sbin")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("php-fpm"))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    if let Some(p) = found.pop() {
        return p;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("php-fpm"))
                .find(|p| p.is_file())
        })
        .expect("php-fpm is not installed: run tests/setup.sh (apt-get install php-fpm)")
}

/// A php-fpm master with its own configuration, on a Unix socket in a scratch directory.
/// Never a system service: it runs in the foreground and is stopped when dropped.
pub struct PhpFpm {
    pub socket: PathBuf,
    pub dir: Scratch,
    proc: Option<Proc>,
}

impl PhpFpm {
    /// Start with `pool_extra` appended to the `[www]` pool section (e.g. `php_admin_value`s).
    pub fn start(pool_extra: &str) -> PhpFpm {
        use std::os::unix::fs::MetadataExt;
        let dir = Scratch::new("php-fpm");
        let socket = dir.path().join("php-fpm.sock");
        let root = std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        let conf = format!(
            "[global]\n\
             error_log = /proc/self/fd/2\n\
             daemonize = no\n\
             pid = {dir}/php-fpm.pid\n\
             \n\
             [www]\n\
             {user}\
             listen = {socket}\n\
             pm = static\n\
             pm.max_children = 4\n\
             access.log = {dir}/access.log\n\
             access.format = \"%m %{{REQUEST_URI}}e %s\"\n\
             catch_workers_output = yes\n\
             {pool_extra}\n",
            dir = dir.path().display(),
            socket = socket.display(),
            user = if root {
                "user = root\ngroup = root\n"
            } else {
                ""
            },
        );
        let conf_path = dir.path().join("php-fpm.conf");
        std::fs::write(&conf_path, conf).expect("write php-fpm.conf");
        let conf_arg = conf_path.display().to_string();
        let prefix = dir.path().display().to_string();
        let mut args = vec!["-F", "-y", conf_arg.as_str(), "-p", prefix.as_str()];
        if root {
            args.push("-R");
        }
        let mut proc = Proc::spawn("php-fpm", &php_fpm_binary(), &args, dir.path());
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Some(status) = proc.exited() {
                panic!("php-fpm exited with {status}; its log:\n{}", proc.logs());
            }
            if start.elapsed() > READY_DEADLINE {
                panic!(
                    "php-fpm did not listen on {} within {READY_DEADLINE:?}; its log:\n{}",
                    socket.display(),
                    proc.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        PhpFpm {
            socket,
            dir,
            proc: Some(proc),
        }
    }

    /// `unix:/path/to/php-fpm.sock`, for `upstreams.NAME.servers`.
    pub fn server(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// Requests php-fpm has answered (its access log: `METHOD REQUEST_URI STATUS` lines).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        self.proc.as_ref().map(|p| p.logs()).unwrap_or_default()
    }

    /// Stop the master and its workers (SIGTERM; SIGKILL if it takes more than 5 s). Killing
    /// only the master would leave its workers accepting on the socket. The log stays
    /// available (and is printed if the test fails).
    pub fn stop(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            if p.exited().is_none() {
                p.signal(15);
                if p.wait_exit(Duration::from_secs(5)).is_none() {
                    p.kill();
                }
            }
        }
    }
}

impl Drop for PhpFpm {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::Ports;

    #[test]
    fn the_ports_of_one_gateway_are_distinct() {
        for _ in 0..2000 {
            let p = Ports::new();
            assert!(
                p.https != p.http && p.http != p.admin && p.https != p.admin,
                "{} {} {}",
                p.https,
                p.http,
                p.admin
            );
        }
    }
}
