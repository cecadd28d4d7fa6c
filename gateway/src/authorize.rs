//! The realtime services' questions to the app ([`realtime::access::Authorizer`]): may this
//! client connect, may it subscribe to this private topic. They go over the pool that serves
//! the app's pages (`realtime.auth.upstream`, HTTP or FastCGI), through the same attempt loop,
//! retry rule and failure table as a client's request ([`crate::relay::ask`],
//! [`crate::fastcgi::ask`]), so the app sees them as requests of that client: its `Cookie`,
//! `Authorization`, `X-CSRF-TOKEN` / `X-XSRF-TOKEN` and `Host` as it sent them, and the
//! forwarding headers by [`crate::forwarding`]'s rules.
//!
//! What is asked and what the answers mean is `realtime::access::answer`; this module only
//! carries the questions. The app down, slow or broken is a refusal with a clear reason after
//! at most `realtime.auth.timeout_ms`, never a hang. Definite answers (2xx, 401, 403) may be
//! kept for `realtime.auth.cache_ms`, keyed by everything the app was told.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::connectors::http::v1::Connector;
use pingora::http::RequestHeader;
use realtime::access::{answer, Authorizer, ClientInfo, Grant, Identity, Refusal};
use serde_json::Value;

use crate::attempt::{Loop, Picked};
use crate::failure::{Fault, Place};
use crate::proxy::Current;
use crate::settings::{self, Cidr, Settings};
use crate::upstream::{Pool, Protocol};
use crate::{buffering, fastcgi, forwarding, relay};

/// The client's fields the app authenticates it by, passed as the client sent them (or as
/// Laravel Echo's `auth.headers` named them for a channel). `Host` and the forwarding headers
/// go by their own rules.
pub const CREDENTIALS: &[&str] = realtime::access::CREDENTIAL_HEADERS;

/// The largest answer read from the app: a member's `user_info` or a list of rooms, not a
/// page.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Bytes of a callback's body kept in memory; a bigger one (an event's arguments) is held in a
/// temporary file while it is sent, as a client's held body is.
const MEMORY_BYTES: usize = 64 * 1024;

/// Answers kept at most; past it, expired ones are dropped, and nothing new is kept while all
/// are fresh.
const MAX_CACHED: usize = 10_000;

/// The gateway's own requests to the app, as the client's: over the app's pool, through the
/// same attempt loop, retry rule and failure table as a client's request, with the client's
/// credentials and the forwarding headers ([`callback_request`]). The authorization callbacks
/// and the events to the app ([`crate::app_events`]) both go this way.
pub struct AppLink {
    pub pool: AppPool,
    pub connector: Arc<Connector>,
    pub temp_dir: Arc<PathBuf>,
    pub trusted: Vec<Cidr>,
    /// Where a log line says the request came from (`realtime.auth`).
    pub route: &'static str,
    /// What answered, in a fault's log line, over HTTP and over FastCGI.
    pub by: (&'static str, &'static str),
    /// The largest answer read.
    pub max_answer: usize,
}

/// The app's pool as the configuration in force has it, by its name: a reload that changes
/// `upstreams.<name>` (the app moved, a server was added) moves the callbacks with the pages.
/// The pool of the starting configuration until one is in force, and when a reloaded file no
/// longer has that name (the `realtime` section that names it applies after a restart).
#[derive(Clone)]
pub struct AppPool {
    at_start: Arc<Pool>,
    current: Arc<OnceLock<Arc<Current>>>,
}

impl AppPool {
    /// `current` is set once the configuration in force exists (it is built after the
    /// realtime services that hold this).
    pub fn new(at_start: Arc<Pool>, current: Arc<OnceLock<Arc<Current>>>) -> AppPool {
        AppPool { at_start, current }
    }

    /// The pool to send a request over now.
    pub fn get(&self) -> Arc<Pool> {
        self.current
            .get()
            .and_then(|c| c.load().router.pools.get(&self.at_start.name).cloned())
            .unwrap_or_else(|| self.at_start.clone())
    }

    /// The pool's name (`upstreams.<name>`).
    pub fn name(&self) -> &str {
        &self.at_start.name
    }
}

/// The topic policy, and the app's word through the pool `realtime.auth.upstream` names: what
/// [`realtime::access::Access`] decides with, at start and after each reload.
pub fn rules(
    settings: &Settings,
    pools: &BTreeMap<String, Arc<Pool>>,
    current: &Arc<OnceLock<Arc<Current>>>,
    temp_dir: &Arc<PathBuf>,
    connector: &Arc<Connector>,
) -> (realtime::access::Policy, Option<Arc<dyn Authorizer>>) {
    let app = settings.realtime.auth.as_ref().and_then(|auth| {
        let pool = AppPool::new(pools.get(&auth.upstream)?.clone(), current.clone());
        let app: Arc<dyn Authorizer> = Arc::new(AppAuthorizer::new(
            auth,
            pool,
            settings.proxy.trusted_proxies.clone(),
            temp_dir.clone(),
            connector.clone(),
        ));
        Some(app)
    });
    (settings.realtime.policy.clone(), app)
}

impl AppLink {
    /// The request for `path` as [`callback_request`] builds it.
    pub fn request(
        &self,
        path: &str,
        client: &ClientInfo,
        content_type: &'static str,
    ) -> pingora::Result<RequestHeader> {
        callback_request(path, client, &self.trusted, content_type)
    }

    /// One request over the pool, by its protocol; a fault is logged as every path to the
    /// app logs it.
    pub async fn send(
        &self,
        req: RequestHeader,
        client: &ClientInfo,
        body: Bytes,
    ) -> Result<(u16, Bytes), Fault> {
        let pool = self.pool.get();
        let mut picked = Picked::default();
        let uri = req.uri.clone();
        let request_id = req.headers.get("x-request-id").cloned();
        let attempts = Loop {
            pool: &pool,
            client: client.peer.map(|p| p.ip()),
            route: self.route,
            picked: &mut picked,
        };
        let outcome = match &pool.protocol {
            Protocol::Http => {
                let mut held = buffering::Body::new(MEMORY_BYTES, self.temp_dir.clone());
                match held.push(body).await {
                    Ok(()) => {
                        relay::ask(&self.connector, attempts, req, Some(&held), self.max_answer)
                            .await
                    }
                    Err(e) => Err(Fault::Internal(format!("holding the callback's body: {e}"))),
                }
            }
            Protocol::FastCgi(backend) => {
                let question = fastcgi::Question {
                    backend,
                    req: &req,
                    body: &body,
                    tls: client.secure,
                    peer: client.peer,
                    server: client.local,
                };
                fastcgi::ask(attempts, question, self.max_answer).await
            }
        };
        match outcome {
            Ok((head, answer)) => Ok((head.status.as_u16(), answer)),
            Err(fault) => {
                let by = match pool.protocol {
                    Protocol::Http => self.by.0,
                    Protocol::FastCgi(_) => self.by.1,
                };
                let server = (picked.server)
                    .and_then(|i| pool.servers.get(i))
                    .map(|s| &s.addr);
                let place = Place {
                    client: client.peer.map(|p| p.ip()),
                    route: self.route,
                    by,
                    upstream: pool.name.as_str(),
                    server,
                    request_id: request_id.as_ref(),
                };
                fault.log(&place, &uri);
                Err(fault)
            }
        }
    }
}

pub struct AppAuthorizer {
    link: AppLink,
    connect: Option<String>,
    subscribe: String,
    timeout: Duration,
    cache: Option<AnswerCache>,
}

impl AppAuthorizer {
    pub fn new(
        auth: &settings::Auth,
        pool: AppPool,
        trusted: Vec<Cidr>,
        temp_dir: Arc<PathBuf>,
        connector: Arc<Connector>,
    ) -> AppAuthorizer {
        AppAuthorizer {
            link: AppLink {
                pool,
                connector,
                temp_dir,
                trusted,
                route: "realtime.auth",
                by: ("auth", "auth fastcgi"),
                max_answer: MAX_ANSWER_BYTES,
            },
            connect: auth.connect.clone(),
            subscribe: auth.subscribe.clone(),
            timeout: auth.timeout,
            cache: (!auth.cache.is_zero()).then(|| AnswerCache::new(auth.cache)),
        }
    }

    /// Ask the app at `path`: its status and body, from the cache when it has them.
    /// `keyed_body`: what of the body decides the answer (the cache key's part of it).
    async fn ask(
        &self,
        path: &str,
        client: &ClientInfo,
        content_type: &'static str,
        body: Bytes,
        keyed_body: &[u8],
    ) -> Result<(u16, Bytes), Refusal> {
        let req = (self.link.request(path, client, content_type))
            .map_err(|e| Refusal::failed(500, format!("authorization failed: {e}")))?;
        let key = self.cache.as_ref().map(|_| cache_key(&req, keyed_body));
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            if let Some(hit) = cache.get(key, Instant::now()) {
                return Ok(hit);
            }
        }
        let asked = tokio::time::timeout(self.timeout, self.link.send(req, client, body)).await;
        let (status, answer) = match asked {
            Ok(Ok(answer)) => answer,
            Ok(Err(fault)) => {
                return Err(Refusal::failed(
                    fault.status(),
                    format!("authorization failed: {}", fault.public_reason()),
                ))
            }
            Err(_) => {
                tracing::warn!(
                    upstream = self.link.pool.name(),
                    path,
                    timeout_ms = self.timeout.as_millis() as u64,
                    "the app did not answer an authorization callback in time"
                );
                return Err(Refusal::failed(
                    504,
                    format!(
                        "authorization failed: the app did not answer within {} ms",
                        self.timeout.as_millis()
                    ),
                ));
            }
        };
        if let (Some(cache), Some(key)) = (&self.cache, key) {
            if matches!(status, 200..=299 | 401 | 403) {
                cache.put(key, Instant::now(), status, answer.clone());
            }
        }
        Ok((status, answer))
    }
}

#[async_trait::async_trait]
impl Authorizer for AppAuthorizer {
    fn checks_connect(&self) -> bool {
        self.connect.is_some()
    }

    async fn connect(
        &self,
        client: &ClientInfo,
        auth: Option<&Value>,
    ) -> Result<Identity, Refusal> {
        let Some(path) = &self.connect else {
            return Ok(Identity::default());
        };
        // The Socket.IO CONNECT's payload, `{}` for the other transports.
        let body = match auth {
            Some(v) => Bytes::from(v.to_string()),
            None => Bytes::from_static(b"{}"),
        };
        let (status, answer) = self
            .ask(path, client, "application/json", body.clone(), &body)
            .await?;
        answer::connect_answer(status, &answer)
    }

    async fn subscribe(
        &self,
        client: &ClientInfo,
        _identity: &Identity,
        socket_id: &str,
        topic: &str,
    ) -> Result<Grant, Refusal> {
        let body = Bytes::from(answer::subscribe_form(topic, socket_id));
        // The socket id differs per connection but not the answer (Laravel's is the user's
        // membership): the same session asking about the same channel is one question.
        let (status, answer) = self
            .ask(
                &self.subscribe,
                client,
                "application/x-www-form-urlencoded",
                body,
                topic.as_bytes(),
            )
            .await?;
        answer::subscribe_answer(status, &answer)
    }
}

/// The request the app gets for a callback: `POST path`, the client's credentials, its `Host`
/// (or `:authority`), the forwarding headers as [`forwarding::request`] rewrites them for any
/// request of this client, an `X-Request-Id`, and `Accept: application/json` (so Laravel answers a refusal with
/// 401/403 and a JSON reason rather than a redirect to its login page).
pub fn callback_request(
    path: &str,
    client: &ClientInfo,
    trusted: &[Cidr],
    content_type: &'static str,
) -> pingora::Result<RequestHeader> {
    let mut req = RequestHeader::build("POST", path.as_bytes(), None)?;
    let host = client.headers.get(http::header::HOST).cloned().or_else(|| {
        client
            .authority
            .as_deref()
            .and_then(|a| http::HeaderValue::from_str(a).ok())
    });
    if let Some(host) = host {
        req.insert_header(http::header::HOST, host)?;
    }
    for (name, value) in client.headers.iter() {
        let name_str = name.as_str();
        if CREDENTIALS.contains(&name_str) || forwarding::is_forwarding(name_str) {
            req.append_header(name.clone(), value.clone())?;
        }
    }
    req.insert_header(http::header::CONTENT_TYPE, content_type)?;
    req.insert_header(http::header::ACCEPT, "application/json")?;
    let who = forwarding::Client {
        ip: client.peer.map(|p| p.ip()),
        tls: client.secure,
        port: client.local.map(|l| l.port()),
        trusted,
    };
    forwarding::request(&mut req, &who, false);
    // As on every request to the app: one id for its log and the gateway's.
    req.insert_header(
        "x-request-id",
        forwarding::request_id(&who, &client.headers),
    )?;
    Ok(req)
}

/// SHA-256 of the request line's path, every header the app gets (credentials and the
/// client's address among them) but the request's own id, and the part of the body that
/// decides the answer.
fn cache_key(req: &RequestHeader, keyed_body: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut part = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    };
    part(req.uri.path().as_bytes());
    for (name, value) in req.headers.iter() {
        if name == "x-request-id" {
            continue;
        }
        part(name.as_str().as_bytes());
        part(value.as_bytes());
    }
    part(keyed_body);
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// The app's definite answers, for `realtime.auth.cache_ms`.
struct AnswerCache {
    ttl: Duration,
    answers: Mutex<HashMap<[u8; 32], (Instant, u16, Bytes)>>,
}

impl AnswerCache {
    fn new(ttl: Duration) -> AnswerCache {
        AnswerCache {
            ttl,
            answers: Mutex::default(),
        }
    }

    fn get(&self, key: &[u8; 32], now: Instant) -> Option<(u16, Bytes)> {
        let answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        let (at, status, body) = answers.get(key)?;
        (now.saturating_duration_since(*at) < self.ttl).then(|| (*status, body.clone()))
    }

    fn put(&self, key: [u8; 32], now: Instant, status: u16, body: Bytes) {
        let mut answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        if answers.len() >= MAX_CACHED && !answers.contains_key(&key) {
            let ttl = self.ttl;
            answers.retain(|_, (at, _, _)| now.saturating_duration_since(*at) < ttl);
            if answers.len() >= MAX_CACHED {
                return;
            }
        }
        answers.insert(key, (now, status, body));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(headers: &[(&str, &str)]) -> ClientInfo {
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                http::HeaderValue::from_str(v).expect("value"),
            );
        }
        ClientInfo {
            headers: map,
            authority: None,
            peer: Some("203.0.113.9:50000".parse().expect("addr")),
            local: Some("127.0.0.1:8443".parse().expect("addr")),
            secure: true,
        }
    }

    fn get<'a>(r: &'a RequestHeader, k: &str) -> Vec<&'a str> {
        r.headers
            .get_all(k)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    #[test]
    fn the_app_gets_the_clients_credentials_and_host_and_our_forwarding_headers() {
        let c = client(&[
            ("host", "shop.example"),
            ("cookie", "laravel_session=abc"),
            ("cookie", "XSRF-TOKEN=x1"),
            ("authorization", "Bearer t"),
            ("x-csrf-token", "c1"),
            ("x-xsrf-token", "x1"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("user-agent", "curl"),
            ("sec-websocket-key", "k"),
            ("origin", "https://shop.example"),
        ]);
        let req = callback_request(
            "/broadcasting/auth",
            &c,
            &[],
            "application/x-www-form-urlencoded",
        )
        .expect("request");
        assert_eq!(req.method, http::Method::POST);
        assert_eq!(req.uri.path(), "/broadcasting/auth");
        assert_eq!(get(&req, "host"), ["shop.example"]);
        assert_eq!(
            get(&req, "cookie"),
            ["laravel_session=abc", "XSRF-TOKEN=x1"]
        );
        assert_eq!(get(&req, "authorization"), ["Bearer t"]);
        assert_eq!(get(&req, "x-csrf-token"), ["c1"]);
        assert_eq!(get(&req, "x-xsrf-token"), ["x1"]);
        // A client's claims about itself are replaced by the gateway's.
        assert_eq!(get(&req, "x-forwarded-for"), ["203.0.113.9"]);
        assert_eq!(get(&req, "x-real-ip"), ["203.0.113.9"]);
        assert_eq!(get(&req, "x-forwarded-proto"), ["https"]);
        assert_eq!(get(&req, "x-forwarded-port"), ["8443"]);
        assert_eq!(get(&req, "x-forwarded-host"), ["shop.example"]);
        assert_eq!(
            get(&req, "content-type"),
            ["application/x-www-form-urlencoded"]
        );
        assert_eq!(get(&req, "accept"), ["application/json"]);
        // Nothing else of the handshake.
        for absent in ["user-agent", "sec-websocket-key", "origin"] {
            assert!(get(&req, absent).is_empty(), "{absent}");
        }
    }

    #[test]
    fn a_trusted_proxys_forwarding_headers_are_kept_and_http2_gets_a_host() {
        let trusted = [Cidr::parse("203.0.113.0/24").expect("cidr")];
        let mut c = client(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-proto", "https"),
        ]);
        c.authority = Some("shop.example:8443".into());
        let req =
            callback_request("/realtime/auth", &c, &trusted, "application/json").expect("request");
        assert_eq!(get(&req, "host"), ["shop.example:8443"]);
        assert_eq!(get(&req, "x-forwarded-for"), ["198.51.100.7, 203.0.113.9"]);
        assert_eq!(get(&req, "x-real-ip"), ["198.51.100.7"]);
    }

    #[test]
    fn the_cache_key_is_everything_the_app_was_told() {
        let ann = client(&[("host", "h"), ("cookie", "s=ann")]);
        let bob = client(&[("host", "h"), ("cookie", "s=bob")]);
        let req =
            |c: &ClientInfo| callback_request("/b", c, &[], "application/json").expect("request");
        assert_eq!(
            cache_key(&req(&ann), b"private-1"),
            cache_key(&req(&ann), b"private-1")
        );
        assert_ne!(
            cache_key(&req(&ann), b"private-1"),
            cache_key(&req(&bob), b"private-1")
        );
        assert_ne!(
            cache_key(&req(&ann), b"private-1"),
            cache_key(&req(&ann), b"private-2")
        );
        let mut elsewhere = ann.clone();
        elsewhere.peer = Some("198.51.100.1:1".parse().expect("addr"));
        assert_ne!(
            cache_key(&req(&ann), b"x"),
            cache_key(&req(&elsewhere), b"x")
        );
        // Length-prefixed: moving bytes from one part to the next changes the key.
        assert_ne!(cache_key(&req(&ann), b""), cache_key(&req(&ann), b"\0"));
    }

    #[test]
    fn cached_answers_expire() {
        let cache = AnswerCache::new(Duration::from_secs(60));
        let t0 = Instant::now();
        cache.put([1; 32], t0, 200, Bytes::from_static(b"true"));
        assert_eq!(
            cache.get(&[1; 32], t0 + Duration::from_secs(59)),
            Some((200, Bytes::from_static(b"true")))
        );
        assert_eq!(cache.get(&[1; 32], t0 + Duration::from_secs(60)), None);
        assert_eq!(cache.get(&[2; 32], t0), None);
        // Full of fresh answers: a new one is not kept; once they expire, it is.
        for i in 0..MAX_CACHED {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_be_bytes());
            cache.put(key, t0, 403, Bytes::new());
        }
        cache.put([9; 32], t0, 200, Bytes::new());
        assert_eq!(cache.get(&[9; 32], t0), None);
        let later = t0 + Duration::from_secs(61);
        cache.put([9; 32], later, 200, Bytes::new());
        assert_eq!(cache.get(&[9; 32], later), Some((200, Bytes::new())));
    }
}
