//! A real `redis-server` (Debian's, installed by `tests/setup.sh`) for the cluster tests: on a
//! free loopback port, in a scratch directory, without persistence, killed when dropped, its
//! log printed when the test fails (through [`Proc`]).
//!
//! It lives here rather than in `realtime`'s own tests because the gateway's multi-node tests
//! will need the very same server next to the gateway binaries, and this crate already has the
//! process plumbing ([`Proc`], [`Scratch`], [`free_port`]) the other started binaries use.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{free_port, Proc, Scratch};

/// Debian's `redis-server` binary.
pub fn redis_server_binary() -> PathBuf {
    find_on_path("redis-server")
        .expect("redis-server is not installed: run tests/setup.sh (apt-get install redis-server)")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// One `redis-server` process (and the ones that replace it after [`RedisServer::restart`]).
pub struct RedisServer {
    pub port: u16,
    extra: Vec<String>,
    dir: Scratch,
    proc: Option<Proc>,
    /// Servers replaced by [`RedisServer::restart`]: kept so that their logs are printed too.
    retired: Vec<Proc>,
    starts: usize,
}

impl RedisServer {
    /// A server on a free port with the defaults (no password).
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A server with extra command-line options, e.g. `["--requirepass", "pw"]` or an ACL
    /// user `["--user", "alice", "on", ">pw", "~*", "&*", "+@all"]`.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        RedisServer::start_args(extra.iter().map(|s| s.to_string()).collect())
    }

    /// A server that speaks only TLS (`rediss://`) on its port, with `cert_pem`/`key_pem`, no
    /// client certificates asked for.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> RedisServer {
        let dir = Scratch::new("redis-tls");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, cert_pem).expect("write cert");
        std::fs::write(&key, key_pem).expect("write key");
        let port = free_port();
        let mut server = RedisServer {
            port,
            extra: vec![
                // Later options win: no plain port, TLS on ours.
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                cert.display().to_string(),
                "--tls-key-file".into(),
                key.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
            dir,
            proc: None,
            retired: Vec::new(),
            starts: 0,
        };
        server.launch();
        server
    }

    fn start_args(extra: Vec<String>) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            extra,
            dir: Scratch::new("redis"),
            proc: None,
            retired: Vec::new(),
            starts: 0,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        self.starts += 1;
        let port = self.port.to_string();
        let dir = self.dir.path().display().to_string();
        // No RDB snapshots and no AOF: a restart loses everything, like a crashed cache node.
        let mut args: Vec<&str> = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir,
            "--daemonize",
            "no",
            "--logfile",
            "",
        ];
        args.extend(self.extra.iter().map(String::as_str));
        let name = if self.starts == 1 {
            "redis-server".to_string()
        } else {
            format!("redis-server-{}", self.starts)
        };
        let mut proc = Proc::spawn(&name, &redis_server_binary(), &args, self.dir.path());
        proc.wait_for_port(self.addr());
        self.proc = Some(proc);
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server at once (SIGKILL: no goodbye to its clients beyond the kernel's RST).
    /// Its log stays and is printed if the test fails.
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.kill();
        }
    }

    /// Starts a new server on the same port (the old one killed first if it still runs). Its
    /// data is gone: nothing is persisted.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&self.addr(), Duration::from_millis(100)).is_ok()
        {
            assert!(
                Instant::now() < deadline,
                "old redis-server still listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.retired.extend(self.proc.take());
        self.launch();
    }

    /// Runs `redis-cli -p <port> ARGS...` and returns its stdout (for tests that inspect keys
    /// or kill clients).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(find_on_path("redis-cli").expect("redis-cli is installed"))
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(
            out.status.success(),
            "redis-cli {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `PUBLISH channel message` with the message's bytes as they are (`redis-cli -x`, which
    /// reads the last argument from stdin): what another program's client would publish.
    pub fn publish_raw(&self, channel: &str, message: &[u8]) {
        use std::io::Write;
        let mut child = Command::new(find_on_path("redis-cli").expect("redis-cli is installed"))
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-x", "PUBLISH", channel])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run redis-cli");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(message)
            .expect("write to redis-cli");
        let out = child.wait_with_output().expect("redis-cli ends");
        assert!(
            out.status.success(),
            "redis-cli -x PUBLISH {channel} failed"
        );
    }

    pub fn logs(&self) -> String {
        self.proc.as_ref().map(|p| p.logs()).unwrap_or_default()
    }
}
