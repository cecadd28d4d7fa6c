//! The admin listener: health for load balancers and deploy scripts, and the app's publish
//! API (`POST /publish`, `POST /emit`, `GET /topics/<topic>`). Bind it to loopback, or set a token.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};

use crate::upstream::Pool;

pub struct Admin {
    pub pools: BTreeMap<String, Arc<Pool>>,
    pub hub: realtime::hub::Hub,
    pub publish: Arc<dyn realtime::seam::Service>,
    /// How the publish API's request bodies are read (the front door's limits).
    pub body: crate::buffering::BodyLimits,
}

impl Admin {
    fn health(&self) -> serde_json::Value {
        let upstreams: serde_json::Map<String, serde_json::Value> = self
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
        serde_json::json!({
            "status": "ok",
            "upstreams": upstreams,
            "hub": {
                "topics": hub.topics,
                "subscribers": hub.subscribers,
                "published": hub.published,
                "delivered": hub.delivered,
                "slow_consumer_disconnects": hub.slow_consumer_disconnects,
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

#[async_trait]
impl ProxyHttp for Admin {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/healthz" => json(session, 200, self.health()).await?,
            "/publish" | "/emit" => {
                crate::seam::serve(session, self.publish.clone(), &self.body).await?
            }
            p if p.starts_with("/topics/") => {
                crate::seam::serve(session, self.publish.clone(), &self.body).await?
            }
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
