//! A hub on the backplane: the [`Backplane`] is the hub's [`Fleet`] (publishes, follows, history
//! reads), and the hub is the backplane's [`Sink`] (every delivery of a followed topic goes to
//! [`Hub::fleet_deliver`]). [`start`] makes both.
//!
//! A message carries the id of the node that published it; only that node can turn the
//! sender's subscriber id in it back into a [`SubscriberId`] (a Socket.IO relay skips its
//! sender that way), and only other nodes' messages are `remote`.

use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};

use super::backplane::{Backplane, BackplaneConfig, BackplaneError, Delivery, Sink};
use super::frame::Body;
use super::history::Resume;
use crate::hub::{
    Fleet, FleetDelivery, FleetMessage, FleetResume, Hub, HubConfig, HubError, MessageId, Payload,
    Position, SubscriberId, WeakHub,
};

/// A hub that is a node of the fleet on `config`'s Redis, and its backplane (for health and
/// shutdown). Must be called within a tokio runtime, which runs the backplane's tasks.
pub fn start(hub: HubConfig, config: BackplaneConfig) -> Result<(Hub, Backplane), BackplaneError> {
    let mut started = None;
    let hub = Hub::in_fleet(hub, |weak| {
        let node: Arc<str> = Arc::from(config.node_id.as_str());
        let backplane = Backplane::start(config, Arc::new(HubSink { hub: weak, node }))?;
        started = Some(backplane.clone());
        Ok::<Arc<dyn Fleet>, BackplaneError>(Arc::new(BackplaneFleet(backplane)))
    })?;
    let backplane = started.ok_or(BackplaneError::ShutDown)?;
    Ok((hub, backplane))
}

/// What the hub answers for a backplane error.
pub fn hub_error(e: BackplaneError) -> HubError {
    match e {
        BackplaneError::Unavailable { reason } => HubError::FleetUnavailable { reason },
        e @ BackplaneError::Busy => HubError::FleetUnavailable {
            reason: e.to_string(),
        },
        BackplaneError::ShutDown => HubError::ShutDown,
        e => HubError::FleetFailed {
            reason: e.to_string(),
        },
    }
}

/// A frame's message as the hub takes it, on node `node`.
fn fleet_message(node: &str, position: Position, body: &Body) -> FleetMessage {
    let own = *body.node == *node;
    FleetMessage {
        position,
        id: body.id,
        payload: Arc::clone(&body.payload),
        origin: body.origin.filter(|_| own).map(SubscriberId::from_raw),
        remote: !own,
    }
}

struct HubSink {
    hub: WeakHub,
    node: Arc<str>,
}

impl Sink for HubSink {
    fn deliver(&self, topic: &str, delivery: Delivery) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        let delivery = match delivery {
            Delivery::Start { at, clean } => FleetDelivery::Start { at, clean },
            Delivery::Message { position, body } => {
                FleetDelivery::Message(fleet_message(&self.node, position, &body))
            }
            Delivery::Reset { to } => FleetDelivery::Reset { to },
        };
        hub.fleet_deliver(topic, delivery);
    }
}

struct BackplaneFleet(Backplane);

impl Fleet for BackplaneFleet {
    fn publish(
        &self,
        topic: &str,
        id: MessageId,
        payload: Arc<Payload>,
        origin: Option<SubscriberId>,
    ) -> Result<BoxFuture<'static, Result<Position, HubError>>, HubError> {
        let pending = self
            .0
            .submit(topic, id, payload, origin.map(SubscriberId::raw))
            .map_err(hub_error)?;
        Ok(pending.map(|r| r.map_err(hub_error)).boxed())
    }

    fn follow(&self, topic: &str, create: &mut dyn FnMut(Option<Position>)) {
        self.0.follow(topic, create);
    }

    fn unfollow(&self, topic: &str, gone: &dyn Fn() -> bool) {
        self.0.unfollow(topic, gone);
    }

    fn locate(&self, topic: &str) -> Option<BoxFuture<'static, Result<(), HubError>>> {
        if self.0.located(topic) {
            return None;
        }
        let (backplane, topic) = (self.0.clone(), topic.to_string());
        Some(async move { backplane.locate(&topic).await.map_err(hub_error) }.boxed())
    }

    fn resume(
        &self,
        topic: &str,
        since: Position,
    ) -> BoxFuture<'static, Result<FleetResume, HubError>> {
        let (backplane, topic) = (self.0.clone(), topic.to_string());
        async move {
            let node = backplane.node_id().to_string();
            Ok(
                match backplane.resume(&topic, since).await.map_err(hub_error)? {
                    Resume::Replay { frames, head } => FleetResume::Replay {
                        messages: frames
                            .iter()
                            .map(|(p, body)| fleet_message(&node, *p, body))
                            .collect(),
                        head,
                    },
                    Resume::Reset { current } => FleetResume::Reset { current },
                },
            )
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Epoch;
    use serde_json::json;

    #[test]
    fn only_the_publishing_node_knows_the_sender() {
        let body = Body {
            node: Arc::from("a:1"),
            id: MessageId::from_raw(7),
            payload: Arc::new(Payload::new("e", json!(1))),
            origin: Some(42),
        };
        let p = Position::new(Epoch::from_raw(1), 3);
        let mine = fleet_message("a:1", p, &body);
        assert_eq!(mine.origin, Some(SubscriberId::from_raw(42)));
        assert!(!mine.remote);
        let theirs = fleet_message("b:2", p, &body);
        assert_eq!(theirs.origin, None);
        assert!(theirs.remote);
        assert_eq!((theirs.position, theirs.id), (p, MessageId::from_raw(7)));
    }

    #[test]
    fn backplane_errors_are_hub_errors_with_their_reason() {
        let e = hub_error(BackplaneError::Unavailable {
            reason: "Connection refused".into(),
        });
        assert_eq!(
            e.to_string(),
            "the cluster is unavailable: Connection refused"
        );
        assert!(e.is_unavailable());
        assert!(matches!(
            hub_error(BackplaneError::Busy),
            HubError::FleetUnavailable { .. }
        ));
        assert!(matches!(
            hub_error(BackplaneError::Command("timed out".into())),
            HubError::FleetFailed { .. }
        ));
        assert_eq!(hub_error(BackplaneError::ShutDown), HubError::ShutDown);
    }
}
