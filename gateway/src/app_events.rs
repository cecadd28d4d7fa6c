//! Events to the app ([`realtime::app_events`]): each client event a namespace or `/ws`
//! endpoint sends to the app is posted over `realtime.events.upstream` (HTTP or FastCGI) as the
//! authorization callbacks are ([`crate::authorize::AppLink`]): the client's credentials,
//! `Host` and forwarding headers, an `X-Request-Id`, the same attempt loop and failure table,
//! and a fault's log line with route `realtime.events`. What is sent and what the answer
//! means, the bound on each connection and the timeout are the realtime crate's; this module
//! only carries the request. Clients never reach the route themselves
//! ([`crate::accel::Internal::hiding`]): the app believes the user an event names.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use pingora::connectors::http::v1::Connector;
use realtime::access::ClientInfo;
use realtime::app_events::{AppEvents, EventPoster, Failure};

use crate::authorize::{AppLink, AppPool};
use crate::settings::{self, Cidr};
use crate::upstream::Pool;

/// The largest answer read from the app: it may carry as much as a client may send in one
/// Socket.IO message (node's `maxHttpBufferSize`, 1 MB).
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Posts events to the app at `path`.
pub struct AppEventPoster {
    link: AppLink,
    path: String,
}

#[async_trait::async_trait]
impl EventPoster for AppEventPoster {
    async fn post(&self, client: &ClientInfo, body: Bytes) -> Result<(u16, Bytes), Failure> {
        let req = (self.link.request(&self.path, client, "application/json"))
            .map_err(|e| Failure::failed(500, format!("the event could not be sent: {e}")))?;
        self.link.send(req, client, body).await.map_err(|fault| {
            Failure::failed(
                fault.status(),
                format!("the app could not be asked: {}", fault.public_reason()),
            )
        })
    }
}

/// The app's events route `realtime.events` describes, over its pool; `None` without the
/// setting (or, which `gateway check` refuses, with a pool that does not exist).
pub fn build(
    settings: Option<&settings::Events>,
    pools: &BTreeMap<String, Arc<Pool>>,
    current: &Arc<std::sync::OnceLock<Arc<crate::proxy::Current>>>,
    trusted: Vec<Cidr>,
    temp_dir: Arc<PathBuf>,
    connector: Arc<Connector>,
) -> Option<AppEvents> {
    let s = settings?;
    let pool = AppPool::new(pools.get(&s.upstream)?.clone(), current.clone());
    let poster = AppEventPoster {
        link: AppLink {
            pool,
            connector,
            temp_dir,
            trusted,
            route: "realtime.events",
            by: ("events", "events fastcgi"),
            max_answer: MAX_ANSWER_BYTES,
        },
        path: s.path.clone(),
    };
    Some(AppEvents::new(
        Arc::new(poster),
        s.path.clone(),
        s.timeout,
        s.max_in_flight,
    ))
}
