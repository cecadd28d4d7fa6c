//! The admin listener: health for load balancers and deploy scripts. Bind it to loopback.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::upstream::Pool;

pub struct Admin {
    pub pools: BTreeMap<String, Arc<Pool>>,
}

fn json(status: u16, value: serde_json::Value) -> Response<Vec<u8>> {
    let body = value.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/healthz" => {
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
                json(
                    200,
                    serde_json::json!({"status": "ok", "upstreams": upstreams}),
                )
            }
            _ => json(
                404,
                serde_json::json!({"error": format!("no such endpoint: {path}")}),
            ),
        }
    }
}
