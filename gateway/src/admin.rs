//! The admin listener: health for load balancers and deploy scripts, Prometheus metrics
//! (`GET /metrics`), the outcome of the last configuration reload (`GET /reload`), and the app's publish API (`POST /publish`, `POST /emit`,
//! `GET /topics/<topic>`, and node's server-side socket API: `GET /sockets`, `GET /rooms`,
//! `POST /sockets/join|leave|disconnect`). Bind it to loopback, or set a token.
//!
//! On loopback the publish API has no token, so it must not answer the web pages in the
//! operator's browser, which can reach 127.0.0.1 too. Before any endpoint (see [`refusal`]):
//! a `Host` that is not an address or `localhost` is a page on a rebinding domain (421); an
//! `Origin` other than the listener's own is a cross-site page (403); a POST that is not
//! `Content-Type: application/json` is what a page can send without a CORS preflight (415).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};

/// Why the admin listener refuses a request before looking at its path.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refusal {
    /// Not a name this listener has (`listen.admin` is always an address): a browser sends
    /// such a `Host` after DNS rebinding, when `evil.example` resolves to 127.0.0.1 and the
    /// page is same-origin with itself. 421 Misdirected Request (RFC 9110 §15.5.20: this
    /// server does not answer for that authority) rather than 403: nothing about the request
    /// is forbidden, it reached the wrong server.
    #[error("Host {0:?} is not this listener: use its address or localhost")]
    Host(String),
    /// A page from another origin (or `null`, a sandboxed or file page).
    #[error("requests from web pages are not accepted (Origin {0:?})")]
    Origin(String),
    /// `text/plain`, form and multipart bodies are what a page may POST cross-site without a
    /// preflight; JSON needs one, and the preflight is refused.
    #[error("the body must be Content-Type: application/json (got {0:?})")]
    ContentType(String),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Host(_) => 421,
            Refusal::Origin(_) => 403,
            Refusal::ContentType(_) => 415,
        }
    }
}

/// `host[:port]` names this listener: an IP literal (IPv6 in brackets) or `localhost`.
fn own_host(host: &str) -> bool {
    let Some(name) = crate::forwarding::authority_host(host) else {
        return false;
    };
    match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            name.parse::<std::net::Ipv4Addr>().is_ok() || name.eq_ignore_ascii_case("localhost")
        }
    }
}

/// The checks every admin request passes before its endpoint runs (see the module doc).
pub fn refusal(req: &pingora::http::RequestHeader) -> Option<Refusal> {
    let text = |name: &str| {
        req.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
    };
    // HTTP/1.0 clients may leave Host out; browsers never do.
    let host = text("host").or_else(|| req.uri.authority().map(|a| a.to_string()));
    if let Some(host) = &host {
        if !own_host(host) {
            return Some(Refusal::Host(host.clone()));
        }
    }
    if let Some(origin) = text("origin") {
        let own = host
            .as_ref()
            .is_some_and(|h| origin.eq_ignore_ascii_case(&format!("http://{h}")));
        if !own {
            return Some(Refusal::Origin(origin));
        }
    }
    if req.method != http::Method::GET && req.method != http::Method::HEAD {
        let content_type = text("content-type").unwrap_or_default();
        let media = content_type.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/json") {
            return Some(Refusal::ContentType(content_type));
        }
    }
    None
}

pub struct Admin {
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The configuration in force: its pools' health is reported.
    pub current: Arc<crate::proxy::Current>,
    /// The outcome of the last reload (`GET /reload`).
    pub reloader: Arc<crate::reload::Reloader>,
    pub hub: realtime::hub::Hub,
    /// `None` on a single node.
    pub cluster: Option<Arc<crate::server::Cluster>>,
    pub publish: Arc<dyn realtime::seam::Service>,
    /// How the publish API's request bodies are read (the front door's limits).
    pub body: crate::buffering::BodyLimits,
}

impl Admin {
    /// The publish API, a realtime service on this listener.
    async fn publish(&self, session: &mut Session) -> Result<()> {
        let served =
            crate::seam::serve(session, self.publish.clone(), None, &self.body, None, false)
                .await?;
        if let crate::seam::Served::Left(handover) = served {
            // The publish API answers no upgrade; should it ever, it runs like any other.
            let limits = &self.current.load().limits;
            handover.start(limits.send_timeout, None);
        }
        Ok(())
    }

    fn health(&self) -> serde_json::Value {
        let serving = self.current.load();
        let upstreams: serde_json::Map<String, serde_json::Value> = serving
            .router
            .pools
            .iter()
            .map(|(name, p)| {
                let servers: Vec<_> = p
                    .servers
                    .iter()
                    .map(|s| serde_json::json!({"address": s.addr.to_string(), "healthy": s.is_healthy()}))
                    .collect();
                (
                    name.clone(),
                    serde_json::json!({"healthy": p.healthy_count(), "servers": servers}),
                )
            })
            .collect();
        let hub = self.hub.stats().snapshot();
        // The answer stays 200 when the cluster is degraded: the node still serves HTTP and its
        // own connections, and a balancer that took every node out while Redis is down would
        // turn a realtime outage into a full one. `status` says it for monitoring.
        let cluster = match &self.cluster {
            Some(c) => c.health(),
            None => serde_json::json!({"status": "off"}),
        };
        let status = if cluster["status"] == "degraded" {
            "degraded"
        } else {
            "ok"
        };
        serde_json::json!({
            "status": status,
            "cluster": cluster,
            "upstreams": upstreams,
            "hub": {
                "topics": hub.topics,
                "subscribers": hub.subscribers,
                "published": hub.published,
                "delivered": hub.delivered,
                "slow_consumer_disconnects": hub.slow_consumer_disconnects,
                "live_resets": hub.live_resets,
            },
        })
    }
}

async fn json(session: &mut Session, status: u16, value: serde_json::Value) -> Result<()> {
    let body = Bytes::from(value.to_string());
    let mut head = ResponseHeader::build(status, Some(3))?;
    head.insert_header("content-type", "application/json")?;
    head.insert_header("content-length", body.len().to_string())?;
    head.insert_header("cache-control", "no-store")?;
    session.write_response_header(Box::new(head), false).await?;
    session.write_response_body(Some(body), true).await
}

/// `GET /metrics`: everything, in the Prometheus text format.
async fn metrics(session: &mut Session, metrics: &crate::metrics::Metrics) -> Result<()> {
    let body = Bytes::from(metrics.encode());
    let mut head = ResponseHeader::build(200, Some(3))?;
    head.insert_header("content-type", crate::metrics::CONTENT_TYPE)?;
    head.insert_header("content-length", body.len().to_string())?;
    head.insert_header("cache-control", "no-store")?;
    session.write_response_header(Box::new(head), false).await?;
    session.write_response_body(Some(body), true).await
}

#[async_trait]
impl ProxyHttp for Admin {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<()> {
        crate::header_deadline::head_parsed(session);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        if let Some(te) = crate::forwarding::unsupported_transfer_coding(session.req_header()) {
            session.set_keepalive(None);
            let why = format!("transfer coding not supported: {te}");
            json(session, 501, serde_json::json!({ "error": why })).await?;
            return Ok(true);
        }
        if let Some(refused) = refusal(session.req_header()) {
            let req = session.req_header();
            tracing::warn!(client = ?session.client_addr(), method = %req.method, path = %req.uri, status = refused.status(), reason = %refused, "admin request refused");
            // Its body is not read: the connection is not reused.
            session.set_keepalive(None);
            json(
                session,
                refused.status(),
                serde_json::json!({ "error": refused.to_string() }),
            )
            .await?;
            return Ok(true);
        }
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/healthz" => json(session, 200, self.health()).await?,
            "/metrics" => metrics(session, &self.metrics).await?,
            "/reload" => {
                let status =
                    serde_json::to_value(self.reloader.status()).unwrap_or(serde_json::Value::Null);
                json(session, 200, status).await?
            }
            "/publish"
            | "/emit"
            | "/sockets"
            | "/sockets/join"
            | "/sockets/leave"
            | "/sockets/disconnect"
            | "/rooms" => self.publish(session).await?,
            p if p.starts_with("/topics/") => self.publish(session).await?,
            _ => {
                json(
                    session,
                    404,
                    serde_json::json!({"error": format!("no such endpoint: {path}")}),
                )
                .await?
            }
        }
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Error::e_explain(
            ErrorType::InternalError,
            "the admin listener proxies nothing",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::RequestHeader;

    fn req(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/publish", None).expect("req");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    #[test]
    fn only_addresses_and_localhost_are_this_listeners_hosts() {
        for ok in [
            "127.0.0.1:9090",
            "127.0.0.1",
            "localhost",
            "LocalHost:9090",
            "[::1]:9090",
            "[::1]",
            "10.1.2.3:9090",
        ] {
            assert!(own_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:9090",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "[::1]x",
            "[evil]:9090",
            "127.0.0.1:port",
            "",
        ] {
            assert!(!own_host(bad), "{bad}");
        }
    }

    #[test]
    fn a_browser_page_is_refused_and_the_app_is_not() {
        let json = ("content-type", "application/json");
        let host = ("host", "127.0.0.1:9090");
        assert_eq!(refusal(&req("POST", &[host, json])), None);
        assert_eq!(
            refusal(&req(
                "POST",
                &[host, ("content-type", "Application/JSON; charset=utf-8")]
            )),
            None
        );
        assert_eq!(refusal(&req("GET", &[host])), None);
        assert_eq!(refusal(&req("POST", &[json])), None);
        assert_eq!(
            refusal(&req("POST", &[host, ("content-type", "text/plain")])).map(|r| r.status()),
            Some(415)
        );
        assert_eq!(
            refusal(&req("POST", &[host])).map(|r| r.status()),
            Some(415)
        );
        assert_eq!(
            refusal(&req("POST", &[("host", "evil.example:9090"), json])).map(|r| r.status()),
            Some(421)
        );
        assert_eq!(
            refusal(&req("GET", &[host, ("origin", "https://evil.example")])).map(|r| r.status()),
            Some(403)
        );
        assert_eq!(
            refusal(&req("POST", &[host, json, ("origin", "null")])).map(|r| r.status()),
            Some(403)
        );
        assert_eq!(
            refusal(&req(
                "POST",
                &[host, json, ("origin", "http://127.0.0.1:9090")]
            )),
            None
        );
    }
}
