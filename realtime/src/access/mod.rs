//! Who may connect, subscribe and publish: the topic [`Policy`] from configuration, and the
//! app's word through an [`Authorizer`], asked at the connect and subscribe points of every
//! transport (Socket.IO, `/ws`, SSE, long-poll) through one [`Access`].
//!
//! * Connect: when the host configures a connect callback, a client is asked about before it
//!   gets anything: a Socket.IO CONNECT (with its `auth` payload), a `/ws` upgrade, each SSE
//!   stream and each long-poll request. The answer is an [`Identity`] (who the client is, and
//!   rooms it joins at once, which it may then subscribe to without asking again), or a
//!   [`Refusal`].
//! * Subscribe: a topic the policy makes private is subscribed to only with the app's
//!   [`Grant`]; every other topic is public. Presence answers name the member
//!   ([`Grant::member`]), kept with the subscription.
//! * Publish: a client connection publishes only to topics the policy opens to clients; the app
//!   publishes through its own API whatever the policy says.
//!
//! * Presence: who is in each presence topic ([`presence`]), one [`presence::Presence`] for
//!   every transport, kept with the access rules they all share.
//!
//! The reserved topics (`sio:`, `ws:`) stay outside all of this: no transport but their owner
//! reaches them ([`crate::topics`]), and the app is never asked about them.
//!
//! The app is reached by the host (the gateway calls it over the pool that serves its pages);
//! this module only says when to ask and what the answers mean ([`answer`]).

pub mod answer;
mod policy;
pub mod presence;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use http::StatusCode;
use serde_json::Value;

use crate::hub::Hub;
use crate::seam::{Request, Response};
use crate::topics::TopicError;

pub use policy::{Pattern, PatternError, Policy, DEFAULT_PRIVATE, PRESENCE_PREFIX};
pub use presence::Presence;

/// The request headers the app authenticates a client by, passed on to the callbacks as the
/// client sent them (`Host` and the forwarding headers go by their own rules). Laravel Echo's
/// `auth.headers` may name them too ([`ClientInfo::with_credentials`]).
pub const CREDENTIAL_HEADERS: &[&str] =
    &["cookie", "authorization", "x-csrf-token", "x-xsrf-token"];

/// What the app is told about a client: the head of its request (the handshake's, for a
/// connection) and where it came from. The host picks what it passes on (credentials, `Host`,
/// forwarding headers).
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub headers: http::HeaderMap,
    /// The request's `:authority` (an HTTP/2 request carries no `Host`).
    pub authority: Option<String>,
    /// The client's address as the gateway saw it.
    pub peer: Option<SocketAddr>,
    /// The gateway's address the client connected to (its listener).
    pub local: Option<SocketAddr>,
    /// Whether the client connection is TLS.
    pub secure: bool,
}

impl ClientInfo {
    /// The client of `req`, for a question asked now (its headers share the request's
    /// buffer).
    pub fn from_request(req: &Request) -> ClientInfo {
        ClientInfo {
            headers: req.head.headers.clone(),
            authority: req.head.uri.authority().map(|a| a.as_str().to_string()),
            peer: req.peer,
            local: req.local,
            secure: req.secure,
        }
    }

    /// The client of `req`, kept for as long as its connection lasts: in buffers of its own
    /// ([`crate::seam::detached_headers`]).
    pub fn kept(req: &Request) -> ClientInfo {
        ClientInfo {
            headers: crate::seam::detached_headers(&req.head.headers),
            ..ClientInfo::from_request(req)
        }
    }

    /// The client with the credentials of `given` (its [`CREDENTIAL_HEADERS`]) in place of
    /// those of its handshake: what Laravel Echo's `auth: {headers}` does for one channel
    /// (laravel-echo-server sent them with the channel's authorization request, the
    /// handshake's cookie when they named none). Any other header of `given` is ignored: the
    /// client must not choose the address or host the app is told of.
    pub fn with_credentials(mut self, given: &http::HeaderMap) -> ClientInfo {
        for name in CREDENTIAL_HEADERS {
            if given.contains_key(*name) {
                self.headers.remove(*name);
                for value in given.get_all(*name) {
                    self.headers
                        .append(http::HeaderName::from_static(name), value.clone());
                }
            }
        }
        self
    }
}

/// Who a client is, by the app's connect answer. Without a connect callback every client is
/// anonymous.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// `None`: anonymous.
    pub user_id: Option<Value>,
    pub user_info: Value,
    /// Rooms (topics) the app put the client in at once; subscribing to them needs no
    /// further word from the app.
    pub rooms: Vec<String>,
}

impl Identity {
    /// The client as a presence member, when the connect answer named it.
    pub fn member(&self) -> Option<Member> {
        self.user_id.as_ref().map(|id| Member {
            user_id: id.clone(),
            user_info: self.user_info.clone(),
        })
    }
}

/// The app's word on one subscription.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grant {
    /// The member a presence answer names (Laravel's `channel_data`).
    pub member: Option<Member>,
}

impl Grant {
    /// Who the subscriber is in a presence topic: the member the app's answer named, else the
    /// user the connect answer named (a room granted at connect, a `true` answer).
    pub fn member_for(&self, identity: &Identity) -> Option<Member> {
        self.member.clone().or_else(|| identity.member())
    }
}

/// A member of a presence topic, as the app named it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub user_id: Value,
    pub user_info: Value,
}

/// Why a client may not connect, subscribe or publish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The app said no (401 or 403), with its reason.
    #[error("{reason}")]
    Denied { status: u16, reason: String },
    /// The policy says no without asking anyone: 403.
    #[error("{0}")]
    Policy(String),
    /// The app could not be asked, did not answer in time, or answered something that is not
    /// an answer: 502, 503 or 504. The client is refused; the log says why.
    #[error("{reason}")]
    Failed { status: u16, reason: String },
}

impl Refusal {
    /// The answer of an HTTP transport that refuses a request for this reason.
    pub fn response(&self) -> Response {
        Response::text(self.status(), format!("{self}\n"))
    }

    pub fn denied(status: u16, reason: &str) -> Refusal {
        Refusal::Denied {
            status,
            reason: reason.to_string(),
        }
    }

    pub fn failed(status: u16, reason: impl Into<String>) -> Refusal {
        Refusal::Failed {
            status,
            reason: reason.into(),
        }
    }

    /// The HTTP status that answers it on the HTTP transports.
    pub fn status(&self) -> StatusCode {
        let code = match self {
            Refusal::Denied { status, .. } | Refusal::Failed { status, .. } => *status,
            Refusal::Policy(_) => 403,
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::FORBIDDEN)
    }
}

/// The app's side: the host's way of asking it.
#[async_trait::async_trait]
pub trait Authorizer: Send + Sync + 'static {
    /// Whether there is a connect callback at all; without one, [`Authorizer::connect`] is
    /// never called and clients are anonymous.
    fn checks_connect(&self) -> bool;

    /// May `client` connect? `auth`: a Socket.IO CONNECT's payload.
    async fn connect(&self, client: &ClientInfo, auth: Option<&Value>)
        -> Result<Identity, Refusal>;

    /// May `client`, known as `identity`, subscribe to `topic` from connection `socket_id`?
    async fn subscribe(
        &self,
        client: &ClientInfo,
        identity: &Identity,
        socket_id: &str,
        topic: &str,
    ) -> Result<Grant, Refusal>;
}

/// The policy and the app's word together: what every transport asks; and the members of the
/// presence topics, which every transport keeps up.
///
/// Clones share everything: the rules a reload puts in force ([`Access::replace`]) apply to
/// every transport's next decision.
#[derive(Clone, Default)]
pub struct Access {
    rules: Arc<ArcSwap<Rules>>,
    presence: Presence,
}

/// The policy and the app to ask: what a reload may change.
#[derive(Default)]
struct Rules {
    policy: Arc<Policy>,
    app: Option<Arc<dyn Authorizer>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rules = self.rules.load();
        f.debug_struct("Access")
            .field("policy", &rules.policy)
            .field("app", &rules.app.is_some())
            .finish()
    }
}

impl Access {
    pub fn new(policy: Policy, app: Option<Arc<dyn Authorizer>>) -> Access {
        Access {
            rules: Arc::new(ArcSwap::from_pointee(Rules {
                policy: Arc::new(policy),
                app,
            })),
            presence: Presence::default(),
        }
    }

    /// Puts a new policy and app in force for every decision from now on (a configuration
    /// reload). A subscription already granted stays; the presence members stay.
    pub fn replace(&self, policy: Policy, app: Option<Arc<dyn Authorizer>>) {
        self.rules.store(Arc::new(Rules {
            policy: Arc::new(policy),
            app,
        }));
    }

    /// [`Policy::open`] and no app: everything as it was before there was a policy.
    pub fn open() -> Access {
        Access::new(Policy::open(), None)
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.rules.load().policy.clone()
    }

    /// Who is in each presence topic.
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    /// Whether clients are asked about on connect.
    pub fn checks_connect(&self) -> bool {
        self.rules
            .load()
            .app
            .as_ref()
            .is_some_and(|a| a.checks_connect())
    }

    /// The connect callback's answer for `client` (anonymous without one). Build `client`
    /// only when [`Access::checks_connect`] says it is needed.
    pub async fn connect(
        &self,
        client: &ClientInfo,
        auth: Option<&Value>,
        transport: &'static str,
    ) -> Result<Identity, Refusal> {
        let app = self.rules.load().app.clone();
        let Some(app) = app.filter(|a| a.checks_connect()) else {
            return Ok(Identity::default());
        };
        let answer = app.connect(client, auth).await;
        if let Err(refusal) = &answer {
            log(
                refusal,
                transport,
                "connect",
                None,
                client.peer.map(|p| p.ip()),
            );
        }
        answer
    }

    /// The connect callback for one HTTP request (an SSE stream, a long-poll, a `/ws`
    /// upgrade): its [`ClientInfo`] is built only when there is a callback to ask.
    pub async fn connect_request(
        &self,
        req: &Request,
        transport: &'static str,
    ) -> Result<Identity, Refusal> {
        if !self.checks_connect() {
            return Ok(Identity::default());
        }
        self.connect(&ClientInfo::from_request(req), None, transport)
            .await
    }

    /// An HTTP transport's client (an SSE stream, a long-poll) through the connect callback,
    /// with the connection id Laravel's callback gets as `socket_id`.
    pub async fn admit_request(
        &self,
        req: &Request,
        transport: &'static str,
    ) -> Result<Admitted, Refusal> {
        let identity = self.connect_request(req, transport).await?;
        Ok(Admitted {
            identity,
            socket_id: request_id(),
            client_ip: req.client_ip(),
            transport,
        })
    }

    /// What can be said about `who` subscribing to `topic` without asking the app: yes for a
    /// public topic or a room the app granted at connect, no for a reserved topic or a private
    /// one with no app to ask (logged). `None`: only the app can say.
    pub fn decide_now(&self, who: &Who<'_>, topic: &str) -> Option<Result<Grant, Refusal>> {
        let rules = self.rules.load();
        let refusal = if crate::topics::is_reserved(topic) {
            Refusal::Policy(format!(
                "topic {:?} belongs to another transport",
                shown(topic)
            ))
        } else if !rules.policy.needs_app(topic) || who.identity.rooms.iter().any(|r| r == topic) {
            return Some(Ok(Grant::default()));
        } else if rules.app.is_none() {
            Refusal::Policy(format!(
                "topic {:?} needs the app's authorization, and none is configured",
                shown(topic)
            ))
        } else {
            return None;
        };
        log(
            &refusal,
            who.transport,
            "subscribe",
            Some(topic),
            who.client_ip,
        );
        Some(Err(refusal))
    }

    /// May `who` subscribe to `topic`? Asks the app only for a private topic it has not
    /// granted already; `client` is built only then (it copies the request's headers).
    pub async fn subscribe(
        &self,
        who: &Who<'_>,
        client: impl FnOnce() -> ClientInfo + Send,
        topic: &str,
    ) -> Result<Grant, Refusal> {
        if let Some(answer) = self.decide_now(who, topic) {
            return answer;
        }
        let Some(app) = self.rules.load().app.clone() else {
            return Err(Refusal::Policy("no app to ask".into()));
        };
        let answer = app
            .subscribe(&client(), who.identity, who.socket_id, topic)
            .await;
        if let Err(refusal) = &answer {
            log(
                refusal,
                who.transport,
                "subscribe",
                Some(topic),
                who.client_ip,
            );
        }
        answer
    }

    /// May a client connection publish to `topic`?
    pub fn publish(&self, topic: &str) -> Result<(), Refusal> {
        if self.rules.load().policy.client_may_publish(topic) {
            return Ok(());
        }
        Err(Refusal::Policy(format!(
            "clients may not publish to {:?}: only the app does (see realtime.policy.client_publish)",
            shown(topic)
        )))
    }
}

/// Who asks to subscribe: the connection's identity and id, for the app and the log.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub identity: &'a Identity,
    /// The connection's id, sent as Laravel's `socket_id`.
    pub socket_id: &'a str,
    /// The address per-client limits count against.
    pub client_ip: Option<std::net::IpAddr>,
    /// For the log: `socketio`, `websocket`, `sse`, `longpoll`.
    pub transport: &'static str,
}

/// A client the connect callback let in, owning what [`Who`] borrows.
pub struct Admitted {
    pub identity: Identity,
    pub socket_id: String,
    pub client_ip: Option<std::net::IpAddr>,
    pub transport: &'static str,
}

impl Admitted {
    pub fn who(&self) -> Who<'_> {
        Who {
            identity: &self.identity,
            socket_id: &self.socket_id,
            client_ip: self.client_ip,
            transport: self.transport,
        }
    }
}

/// A topic as logs and refusals show it: the name is the client's and may be long.
fn shown(topic: &str) -> String {
    topic.chars().take(64).collect()
}

/// One log line per refusal: the app's own "no" is ordinary (info), the app failing to answer
/// is a problem with the app (warn).
fn log(
    refusal: &Refusal,
    transport: &'static str,
    what: &'static str,
    topic: Option<&str>,
    peer: Option<std::net::IpAddr>,
) {
    let topic = topic.map(shown);
    match refusal {
        Refusal::Failed { status, reason } => {
            tracing::warn!(transport, what, topic = ?topic, client = ?peer, status, error = %reason, "realtime authorization failed")
        }
        _ => {
            tracing::info!(transport, what, topic = ?topic, client = ?peer, status = refusal.status().as_u16(), reason = %refusal, "realtime authorization refused")
        }
    }
}

/// Why a subscription or a publish from a client is refused: the topic's name or budget
/// ([`crate::topics`]), or the policy and the app.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error(transparent)]
    Access(#[from] Refusal),
}

impl Refused {
    pub fn status(&self) -> StatusCode {
        match self {
            Refused::Topic(e) => e.status(),
            Refused::Access(r) => r.status(),
        }
    }

    /// The answer of an HTTP transport that refuses a request for this reason.
    pub fn response(&self) -> Response {
        Response::text(self.status(), format!("{self}\n"))
    }
}

/// An id for a connection that has none of its own (an SSE stream, a long-poll), sent to the
/// app as Laravel's `socket_id`: 16 random hex digits.
pub fn request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A client connection's subscription to a hub topic, on any transport but Socket.IO (whose
/// rooms have their own names): the name is checked first (reserved, too long), then the
/// policy and the app, then the client's budget of new topics, so a refused client creates
/// nothing and the app is never asked about a name the hub would refuse.
pub async fn admit_subscription(
    hub: &Hub,
    access: &Access,
    who: &Who<'_>,
    client: impl FnOnce() -> ClientInfo + Send,
    topic: &str,
) -> Result<Grant, Refused> {
    checked_name(hub, who.client_ip, topic)?;
    let grant = access.subscribe(who, client, topic).await?;
    hub.admit_client_topic(who.client_ip, topic)?;
    Ok(grant)
}

/// The hub's check of a name (reserved, too long), logged as the hub logs its own refusals.
fn checked_name(
    hub: &Hub,
    client_ip: Option<std::net::IpAddr>,
    topic: &str,
) -> Result<(), TopicError> {
    hub.check_topic_name(topic).inspect_err(|e| {
        tracing::warn!(client = ?client_ip, topic = %shown(topic), error = %e, "realtime topic refused");
    })
}

/// A publish from a client connection, by the same order as [`admit_subscription`].
pub fn admit_publish(
    hub: &Hub,
    access: &Access,
    client_ip: Option<std::net::IpAddr>,
    topic: &str,
) -> Result<(), Refused> {
    checked_name(hub, client_ip, topic)?;
    access.publish(topic)?;
    hub.admit_client_topic(client_ip, topic)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An app that allows `private-ok` only, and counts the questions.
    #[derive(Default)]
    struct App {
        asked: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Authorizer for App {
        fn checks_connect(&self) -> bool {
            true
        }
        async fn connect(&self, _: &ClientInfo, auth: Option<&Value>) -> Result<Identity, Refusal> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            match auth.and_then(|a| a.get("token")).and_then(Value::as_str) {
                Some("ann") => Ok(Identity {
                    user_id: Some(Value::from("ann")),
                    rooms: vec!["private-ann".into()],
                    ..Identity::default()
                }),
                _ => Err(Refusal::denied(401, "who are you")),
            }
        }
        async fn subscribe(
            &self,
            _: &ClientInfo,
            _: &Identity,
            _: &str,
            topic: &str,
        ) -> Result<Grant, Refusal> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            if topic == "private-ok" {
                Ok(Grant::default())
            } else {
                Err(Refusal::denied(403, "not yours"))
            }
        }
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn public_topics_and_granted_rooms_never_ask_the_app() {
        let app = Arc::new(App::default());
        let access = Access::new(Policy::default(), Some(app.clone()));
        let client = ClientInfo::default();
        let ann = run(access.connect(&client, Some(&serde_json::json!({"token": "ann"})), "test"))
            .expect("admitted");
        assert_eq!(app.asked.load(Ordering::Relaxed), 1);
        let who = Who {
            identity: &ann,
            socket_id: "s1",
            client_ip: None,
            transport: "test",
        };
        let info = || ClientInfo::default();
        for topic in ["news", "private-ann"] {
            assert_eq!(
                run(access.subscribe(&who, info, topic)),
                Ok(Grant::default())
            );
        }
        assert_eq!(app.asked.load(Ordering::Relaxed), 1);
        assert_eq!(
            run(access.subscribe(&who, info, "private-ok")),
            Ok(Grant::default())
        );
        assert_eq!(
            run(access.subscribe(&who, info, "private-bob")),
            Err(Refusal::denied(403, "not yours"))
        );
        assert_eq!(app.asked.load(Ordering::Relaxed), 3);
        // Reserved topics are refused before anyone is asked.
        let e = run(access.subscribe(&who, info, "sio:/")).unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert_eq!(app.asked.load(Ordering::Relaxed), 3);
        assert_eq!(
            run(access.connect(&client, None, "test")),
            Err(Refusal::denied(401, "who are you"))
        );
    }

    #[test]
    fn without_an_app_private_topics_are_refused_and_everyone_is_anonymous() {
        let access = Access::new(Policy::default(), None);
        let client = ClientInfo::default();
        assert!(!access.checks_connect());
        let anon = run(access.connect(&client, None, "test")).expect("anonymous");
        assert_eq!(anon, Identity::default());
        let who = Who {
            identity: &anon,
            socket_id: "s",
            client_ip: None,
            transport: "test",
        };
        let info = || ClientInfo::default();
        assert!(run(access.subscribe(&who, info, "news")).is_ok());
        let e = run(access.subscribe(&who, info, "private-x")).unwrap_err();
        assert!(matches!(e, Refusal::Policy(_)), "{e:?}");
        assert!(
            e.to_string().contains("needs the app's authorization"),
            "{e}"
        );
    }

    #[test]
    fn echo_headers_replace_only_the_credentials() {
        let mut headers = http::HeaderMap::new();
        headers.insert("cookie", "user=ann".parse().expect("value"));
        headers.insert("authorization", "Bearer ann".parse().expect("value"));
        headers.insert("host", "shop.example".parse().expect("value"));
        let client = ClientInfo {
            headers,
            ..ClientInfo::default()
        };
        let mut given = http::HeaderMap::new();
        given.insert("authorization", "Bearer bob".parse().expect("value"));
        given.insert("x-csrf-token", "t".parse().expect("value"));
        given.insert("host", "evil.example".parse().expect("value"));
        given.insert("x-forwarded-for", "6.6.6.6".parse().expect("value"));
        let h = client.with_credentials(&given).headers;
        assert_eq!(h["authorization"], "Bearer bob");
        assert_eq!(h["x-csrf-token"], "t");
        assert_eq!(h["cookie"], "user=ann", "not named: the handshake's");
        assert_eq!(h["host"], "shop.example");
        assert!(!h.contains_key("x-forwarded-for"));
    }

    #[test]
    fn a_presence_member_is_the_apps_answer_else_the_connect_identity() {
        let ann = Identity {
            user_id: Some(Value::from(1)),
            user_info: serde_json::json!({"name": "Ann"}),
            rooms: vec![],
        };
        let named = Member {
            user_id: Value::from(1),
            user_info: serde_json::json!({"name": "Ann B."}),
        };
        let grant = Grant {
            member: Some(named.clone()),
        };
        assert_eq!(grant.member_for(&ann), Some(named));
        assert_eq!(
            Grant::default().member_for(&ann).map(|m| m.user_info),
            Some(serde_json::json!({"name": "Ann"}))
        );
        assert_eq!(Grant::default().member_for(&Identity::default()), None);
    }

    #[test]
    fn clients_publish_only_where_the_policy_says() {
        let access = Access::new(
            Policy {
                private: vec![],
                client_publish: vec![Pattern::new("chat-*").expect("pattern")],
            },
            None,
        );
        assert_eq!(access.publish("chat-1"), Ok(()));
        let e = access.publish("news").unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert!(e.to_string().contains("only the app does"), "{e}");
        assert!(Access::default().publish("chat-1").is_err());
        assert!(Access::open().publish("anything").is_ok());
    }

    #[test]
    fn a_refused_subscription_creates_no_topic_and_costs_no_budget() {
        let hub = Hub::new(crate::hub::HubConfig {
            new_topics_per_client_per_minute: 1,
            ..crate::hub::HubConfig::default()
        });
        let access = Access::new(Policy::default(), None);
        let anon = Identity::default();
        let ip = Some("10.0.0.1".parse().expect("ip"));
        let who = Who {
            identity: &anon,
            socket_id: "s",
            client_ip: ip,
            transport: "test",
        };
        let info = || ClientInfo::default();
        let refused = run(admit_subscription(&hub, &access, &who, info, "private-x"));
        assert!(matches!(refused, Err(Refused::Access(_))), "{refused:?}");
        // The one new topic of the budget is still there.
        assert!(run(admit_subscription(&hub, &access, &who, info, "news")).is_ok());
        let reserved = run(admit_subscription(&hub, &access, &who, info, "ws:/ws:chat"));
        assert!(matches!(reserved, Err(Refused::Topic(_))), "{reserved:?}");
        assert_eq!(
            admit_publish(&hub, &access, ip, "news").map_err(|e| e.status()),
            Err(StatusCode::FORBIDDEN)
        );
    }
}
