//! A real load balancer in front of a fleet: Debian's nginx (installed by `tests/setup.sh`),
//! unprivileged, on a free loopback port, in a scratch directory, killed when dropped.
//!
//! It balances every request round-robin over the gateways, with no affinity of any kind (no
//! `ip_hash`, no cookie, no `sticky`): what a plain cloud balancer or a default nginx
//! `upstream` does. WebSocket upgrades are passed (`Upgrade` and `Connection` set again, as
//! nginx needs), and a gateway that refuses connections is skipped for the next one
//! (nginx's `proxy_next_upstream error`), as when a node is killed. Its access log names the
//! gateway that served each request.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::{free_port, Proc, Scratch};

/// Debian's nginx binary.
pub fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("nginx is not installed: run tests/setup.sh (apt-get install nginx)")
}

/// One nginx process balancing over some gateways.
pub struct Balancer {
    pub port: u16,
    dir: Scratch,
    _proc: Proc,
}

/// The configuration: `servers` are `(address, weight)`; nginx's `weight` is the share of
/// requests each gets, round-robin (nginx's smooth weighted round-robin).
pub fn nginx_conf(dir: &std::path::Path, port: u16, servers: &[(SocketAddr, u32)]) -> String {
    let d = dir.display();
    let upstream: String = servers
        .iter()
        .map(|(addr, weight)| {
            format!("        server {addr} weight={weight} max_fails=1 fail_timeout=10s;\n")
        })
        .collect();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 4096; }}
http {{
    log_format fleet '$request_method $request_uri $status $upstream_addr';
    access_log {d}/access.log fleet;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream fleet {{
{upstream}    }}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://fleet;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 2s;
            proxy_read_timeout 120s;
            proxy_send_timeout 120s;
            proxy_buffering off;
            proxy_next_upstream error timeout;
        }}
    }}
}}
"#
    )
}

impl Balancer {
    /// nginx balancing round-robin over `servers` (plain HTTP listeners), weighted.
    pub fn round_robin(servers: &[(SocketAddr, u32)]) -> Balancer {
        let dir = Scratch::new("nginx");
        let port = free_port();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, nginx_conf(dir.path(), port, servers)).expect("write nginx.conf");
        let prefix = format!("{}/", dir.path().display());
        let conf = conf.display().to_string();
        let mut proc = Proc::spawn(
            "nginx",
            &nginx_binary(),
            // `-e`: its error log from the start, not /var/log/nginx (not writable here).
            &["-p", &prefix, "-c", &conf, "-e", "stderr"],
            dir.path(),
        );
        proc.wait_for_port(([127, 0, 0, 1], port).into());
        Balancer {
            port,
            dir,
            _proc: proc,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The access log: one `METHOD URI STATUS UPSTREAM` line per request.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}
