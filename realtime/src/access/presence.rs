//! Who is in a presence topic (`presence-*`, Laravel's presence channels): one member per user,
//! however many connections ("tabs") the user has in the topic, with the news of a user's
//! arrival when the first of its tabs arrives and of its departure when the last one goes.
//!
//! A tab is a connection's hub subscriber ([`SubscriberId`]): a Socket.IO socket, an SSE
//! stream, a `/ws` pubsub.v1 connection. A user is told apart by its `user_id` as JSON (so `1`
//! and `"1"` are two users, as laravel-echo-server's `uniqBy` had them); the member is what the
//! app's `/broadcasting/auth` answer named in `channel_data` (or, without one, the connect
//! callback's identity), and a later tab's answer refreshes its `user_info`.
//!
//! [`Members`] is the bookkeeping, a pure structure. [`Presence`] is what the transports share:
//! the bookkeeping behind one lock, and the news published into the topic itself, so it reaches
//! every transport's subscribers of the topic in order with its other messages:
//!
//! | event | data | sent |
//! |---|---|---|
//! | [`JOINING`] | `{"user_id", "user_info"}` | when a user's first tab arrives, to everyone but that tab |
//! | [`LEAVING`] | `{"user_id", "user_info"}` | when a user's last tab goes |
//!
//! The member list itself ([`SUBSCRIBED`] on Socket.IO) goes only to the arriving tab, from the
//! same lock, so no arrival or departure can fall between the list and the news that follow it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::{Member, PRESENCE_PREFIX};
use crate::hub::{Hub, Payload, SubscriberId};
use crate::sync::lock;

/// A user's first tab arrived: the event published into the topic, data the member.
pub const JOINING: &str = "presence:joining";
/// A user's last tab went.
pub const LEAVING: &str = "presence:leaving";
/// The member list an arriving tab gets (laravel-echo-server's name for it).
pub const SUBSCRIBED: &str = "presence:subscribed";

/// Whether `topic` is a presence topic (Laravel's `PresenceChannel` names).
pub fn is_presence(topic: &str) -> bool {
    topic.starts_with(PRESENCE_PREFIX)
}

/// Whether `event` is one of the presence news ([`JOINING`], [`LEAVING`]).
pub fn is_presence_event(event: &str) -> bool {
    event == JOINING || event == LEAVING
}

impl Member {
    /// What tells users apart: the `user_id` as JSON text.
    pub fn key(&self) -> String {
        self.user_id.to_string()
    }

    /// The member as every transport shows it: `{"user_id": ..., "user_info": ...}`.
    pub fn to_json(&self) -> Value {
        json!({"user_id": self.user_id, "user_info": self.user_info})
    }
}

/// Whether `msg` is presence news that `tab` caused, which `tab` is not sent.
pub fn is_own_news(msg: &crate::hub::Message, tab: SubscriberId) -> bool {
    msg.is_from(tab) && is_presence_event(msg.event())
}

/// A list of members as JSON.
pub fn members_json(members: &[Member]) -> Value {
    Value::Array(members.iter().map(Member::to_json).collect())
}

/// What a tab's arrival or departure changed for its topic's members.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The user's first tab arrived.
    Joined(Member),
    /// The user's last tab went.
    Left(Member),
}

/// The members of every presence topic, by tab. `T` names a tab.
#[derive(Debug)]
pub struct Members<T> {
    topics: HashMap<String, Room<T>>,
}

impl<T> Default for Members<T> {
    fn default() -> Self {
        Members {
            topics: HashMap::new(),
        }
    }
}

#[derive(Debug, Clone)]
struct Room<T> {
    /// By [`Member::key`].
    users: HashMap<String, User>,
    /// Each tab's user.
    tabs: HashMap<T, String>,
    /// Arrivals so far: a user's place in the list.
    arrivals: u64,
}

impl<T> Default for Room<T> {
    fn default() -> Self {
        Room {
            users: HashMap::new(),
            tabs: HashMap::new(),
            arrivals: 0,
        }
    }
}

#[derive(Debug, Clone)]
struct User {
    member: Member,
    tabs: usize,
    arrived: u64,
}

impl<T: Hash + Eq + Clone> Room<T> {
    fn enter(&mut self, tab: T, member: Member) -> Vec<Change> {
        let key = member.key();
        let mut changes = Vec::new();
        match self.tabs.get(&tab) {
            Some(k) if *k == key => {
                if let Some(user) = self.users.get_mut(&key) {
                    user.member = member;
                }
                return changes;
            }
            // The tab was another user's (a connection cannot change users in practice, but
            // the bookkeeping stays exact if it does): that user loses the tab first.
            Some(_) => changes.extend(self.exit(&tab)),
            None => {}
        }
        self.tabs.insert(tab, key.clone());
        match self.users.get_mut(&key) {
            Some(user) => {
                user.tabs += 1;
                user.member = member;
            }
            None => {
                self.arrivals += 1;
                self.users.insert(
                    key,
                    User {
                        member: member.clone(),
                        tabs: 1,
                        arrived: self.arrivals,
                    },
                );
                changes.push(Change::Joined(member));
            }
        }
        changes
    }

    fn exit(&mut self, tab: &T) -> Option<Change> {
        let key = self.tabs.remove(tab)?;
        let user = self.users.get_mut(&key)?;
        user.tabs -= 1;
        if user.tabs > 0 {
            return None;
        }
        self.users.remove(&key).map(|u| Change::Left(u.member))
    }

    fn list(&self) -> Vec<Member> {
        let mut users: Vec<&User> = self.users.values().collect();
        users.sort_by_key(|u| u.arrived);
        users.into_iter().map(|u| u.member.clone()).collect()
    }
}

impl<T: Hash + Eq + Clone> Members<T> {
    /// `tab` is in `topic` as `member`: what that changed (a [`Change::Joined`] when it is the
    /// user's first tab there; nothing for a tab already in as that user).
    pub fn enter(&mut self, topic: &str, tab: T, member: Member) -> Vec<Change> {
        self.topics
            .entry(topic.to_string())
            .or_default()
            .enter(tab, member)
    }

    /// `tab` left `topic`: a [`Change::Left`] when it was its user's last tab there.
    pub fn exit(&mut self, topic: &str, tab: &T) -> Option<Change> {
        let room = self.topics.get_mut(topic)?;
        let change = room.exit(tab);
        if room.tabs.is_empty() {
            self.topics.remove(topic);
        }
        change
    }

    /// The members of `topic`, in the order they arrived.
    pub fn list(&self, topic: &str) -> Vec<Member> {
        self.topics.get(topic).map(Room::list).unwrap_or_default()
    }

    /// The members of `topic` as they will be once `tab` is in as `member`.
    pub fn list_with(&self, topic: &str, tab: T, member: Member) -> Vec<Member> {
        let mut room = self.topics.get(topic).cloned().unwrap_or_default();
        room.enter(tab, member);
        room.list()
    }

    /// Users and tabs in `topic`.
    pub fn count(&self, topic: &str) -> (usize, usize) {
        self.topics
            .get(topic)
            .map_or((0, 0), |r| (r.users.len(), r.tabs.len()))
    }
}

/// The members of every presence topic, shared by the transports (cheap to clone; every clone
/// is the same). Each change is published into its topic under the lock, so the news of one
/// topic goes out in the order it happened.
#[derive(Clone, Default)]
pub struct Presence {
    members: Arc<Mutex<Members<SubscriberId>>>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence").finish_non_exhaustive()
    }
}

impl Presence {
    /// Tab `tab` arrives in presence topic `topic` as `member` (`None`: a subscriber the app
    /// named no member for, who hears the topic without being in its list). `arrive` runs
    /// first, under the lock, with the member list as it will be: it subscribes the tab and
    /// hands it the list, so nothing published about the topic's members can fall between the
    /// two. When it fails nothing changes; when it succeeds the tab is a member, and the
    /// user's first tab is announced ([`JOINING`]) to everyone else in the topic.
    pub fn enter<E>(
        &self,
        hub: &Hub,
        topic: &str,
        tab: SubscriberId,
        member: Option<&Member>,
        arrive: impl FnOnce(&[Member]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut members = lock(&self.members);
        let list = match member {
            Some(m) => members.list_with(topic, tab, m.clone()),
            None => members.list(topic),
        };
        arrive(&list)?;
        if let Some(m) = member {
            for change in members.enter(topic, tab, m.clone()) {
                announce(hub, topic, &change, tab);
            }
        }
        Ok(())
    }

    /// Tab `tab` left `topic` (unsubscribed, or its connection ended); its user's last tab is
    /// announced ([`LEAVING`]). Nothing for a tab that was not a member.
    pub fn exit(&self, hub: &Hub, topic: &str, tab: SubscriberId) {
        let mut members = lock(&self.members);
        if let Some(change) = members.exit(topic, &tab) {
            announce(hub, topic, &change, tab);
        }
    }

    /// The members of `topic`, in the order they arrived.
    pub fn list(&self, topic: &str) -> Vec<Member> {
        lock(&self.members).list(topic)
    }

    /// Users and tabs in `topic`.
    pub fn count(&self, topic: &str) -> (usize, usize) {
        lock(&self.members).count(topic)
    }

    /// A tab that stays a member until the value is dropped (an SSE stream, a pubsub.v1
    /// subscription): the exit cannot be forgotten on any of the ways a connection ends.
    pub fn stay(&self, hub: &Hub, topic: &str, tab: SubscriberId) -> Stay {
        Stay {
            presence: self.clone(),
            hub: hub.clone(),
            topic: topic.to_string(),
            tab,
        }
    }
}

/// Publishes `change` into `topic` with `tab` (the tab that caused it) as its origin, which
/// the transports leave out (an arriving tab has the list already, a departing one is going:
/// [`is_own_news`]). Published under the members' lock, so one
/// topic's news keeps its order; a publish that fails (in a fleet while Redis is away) is
/// logged, and the members stay as they are.
fn announce(hub: &Hub, topic: &str, change: &Change, tab: SubscriberId) {
    let (event, member) = match change {
        Change::Joined(m) => (JOINING, m),
        Change::Left(m) => (LEAVING, m),
    };
    let sending = hub.send(topic, Payload::new(event, member.to_json()), Some(tab));
    if let Some(Err(e)) = futures_util::FutureExt::now_or_never(sending) {
        tracing::warn!(topic = %topic, event, error = %e, "presence news not published");
    }
}

/// See [`Presence::stay`].
pub struct Stay {
    presence: Presence,
    hub: Hub,
    topic: String,
    tab: SubscriberId,
}

impl std::fmt::Debug for Stay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stay")
            .field("topic", &self.topic)
            .field("tab", &self.tab)
            .finish()
    }
}

impl Drop for Stay {
    fn drop(&mut self) {
        self.presence.exit(&self.hub, &self.topic, self.tab);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(id: i64, name: &str) -> Member {
        Member {
            user_id: json!(id),
            user_info: json!({ "name": name }),
        }
    }

    #[test]
    fn a_user_joins_with_its_first_tab_and_leaves_with_its_last() {
        let mut m = Members::<u32>::default();
        let ann = member(1, "Ann");
        assert_eq!(
            m.enter("presence-room", 1, ann.clone()),
            [Change::Joined(ann.clone())]
        );
        // A second tab of Ann's, and the first again: nobody new.
        assert_eq!(m.enter("presence-room", 2, ann.clone()), []);
        assert_eq!(m.enter("presence-room", 1, ann.clone()), []);
        assert_eq!(m.count("presence-room"), (1, 2));
        assert_eq!(m.exit("presence-room", &1), None);
        assert_eq!(m.exit("presence-room", &1), None, "gone already");
        assert_eq!(m.exit("presence-room", &2), Some(Change::Left(ann.clone())));
        assert_eq!(m.count("presence-room"), (0, 0));
        assert!(m.topics.is_empty(), "an empty topic is forgotten");
        assert_eq!(m.exit("presence-other", &9), None);
    }

    #[test]
    fn the_list_keeps_arrival_order_and_the_latest_info() {
        let mut m = Members::<u32>::default();
        m.enter("p", 1, member(2, "Bob"));
        m.enter("p", 2, member(1, "Ann"));
        m.enter("p", 3, member(2, "Bobby"));
        assert_eq!(m.list("p"), [member(2, "Bobby"), member(1, "Ann")]);
        // What an arriving tab is shown: the list with itself in it, nothing changed yet.
        assert_eq!(
            m.list_with("p", 4, member(3, "Cy")),
            [member(2, "Bobby"), member(1, "Ann"), member(3, "Cy")]
        );
        assert_eq!(m.list_with("q", 4, member(3, "Cy")), [member(3, "Cy")]);
        assert_eq!(m.count("p"), (2, 3));
        // 1 and "1" are two users.
        let text = Member {
            user_id: json!("1"),
            user_info: Value::Null,
        };
        assert_eq!(m.enter("p", 5, text.clone()), [Change::Joined(text)]);
        assert_eq!(m.count("p"), (3, 4));
    }

    #[test]
    fn a_tab_that_changes_users_leaves_as_one_and_joins_as_the_other() {
        let mut m = Members::<u32>::default();
        m.enter("p", 1, member(1, "Ann"));
        assert_eq!(
            m.enter("p", 1, member(2, "Bob")),
            [
                Change::Left(member(1, "Ann")),
                Change::Joined(member(2, "Bob"))
            ]
        );
        assert_eq!(m.list("p"), [member(2, "Bob")]);
    }

    #[test]
    fn topics_are_apart() {
        let mut m = Members::<u32>::default();
        m.enter("a", 1, member(1, "Ann"));
        assert_eq!(m.enter("b", 1, member(1, "Ann")).len(), 1);
        assert_eq!(m.exit("a", &1), Some(Change::Left(member(1, "Ann"))));
        assert_eq!(m.list("b"), [member(1, "Ann")]);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Enter { tab: u8, user: u8 },
        Exit { tab: u8 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..6, 0u8..3).prop_map(|(tab, user)| Step::Enter { tab, user }),
            (0u8..6).prop_map(|tab| Step::Exit { tab }),
        ]
    }

    proptest! {
        /// Whatever the tabs do, each user's news alternates joined, left, joined... starting
        /// with joined; the list is exactly the users with a tab in; and once every tab has
        /// gone, every user that joined has left as many times.
        #[test]
        fn news_alternates_per_user_and_the_list_is_the_users_with_tabs(
            steps in proptest::collection::vec(step(), 0..60),
        ) {
            let mut m = Members::<u8>::default();
            let mut tab_user: HashMap<u8, u8> = HashMap::new();
            let mut inside: HashMap<String, bool> = HashMap::new();
            let apply = |changes: Vec<Change>, inside: &mut HashMap<String, bool>| {
                for c in changes {
                    let (key, joined) = match &c {
                        Change::Joined(m) => (m.key(), true),
                        Change::Left(m) => (m.key(), false),
                    };
                    let was = inside.insert(key, joined).unwrap_or(false);
                    prop_assert_ne!(was, joined, "{:?} twice in a row", c);
                }
                Ok(())
            };
            for s in &steps {
                let changes = match *s {
                    Step::Enter { tab, user } => {
                        tab_user.insert(tab, user);
                        m.enter("p", tab, member(i64::from(user), "u"))
                    }
                    Step::Exit { tab } => {
                        tab_user.remove(&tab);
                        m.exit("p", &tab).into_iter().collect()
                    }
                };
                apply(changes, &mut inside)?;
                let mut want: Vec<String> = tab_user.values().map(|u| json!(u).to_string()).collect();
                want.sort();
                want.dedup();
                let mut got: Vec<String> = m.list("p").iter().map(Member::key).collect();
                got.sort();
                prop_assert_eq!(&got, &want);
                prop_assert_eq!(m.count("p"), (want.len(), tab_user.len()));
            }
            let tabs: Vec<u8> = tab_user.keys().copied().collect();
            for tab in tabs {
                let changes = m.exit("p", &tab).into_iter().collect();
                apply(changes, &mut inside)?;
            }
            prop_assert!(inside.values().all(|i| !i), "everyone has left: {:?}", inside);
            prop_assert_eq!(m.count("p"), (0, 0));
        }

        /// Two users arriving in three tabs, the tabs arriving all before any leaves, in any
        /// interleaving: exactly one join and one leave per user.
        #[test]
        fn three_tabs_of_two_users_make_one_join_and_one_leave_each(
            arrive in Just(vec![(0u8, 0u8), (1, 0), (2, 1)]).prop_shuffle(),
            depart in Just(vec![0u8, 1, 2]).prop_shuffle(),
        ) {
            let mut m = Members::<u8>::default();
            let mut news = Vec::new();
            for (tab, user) in &arrive {
                news.extend(m.enter("p", *tab, member(i64::from(*user), "u")));
            }
            prop_assert_eq!(m.list("p").len(), 2);
            for tab in &depart {
                news.extend(m.exit("p", tab));
            }
            for user in [0, 1] {
                let who = member(user, "u");
                let joins = news.iter().filter(|c| **c == Change::Joined(who.clone())).count();
                let leaves = news.iter().filter(|c| **c == Change::Left(who.clone())).count();
                prop_assert_eq!((joins, leaves), (1, 1), "user {}: {:?}", user, news);
            }
        }
    }

    #[test]
    fn presence_news_goes_into_the_topic_without_the_tab_that_caused_it() {
        let hub = Hub::default();
        let presence = Presence::default();
        let watcher = hub.subscribe().expect("subscriber");
        watcher.join("presence-room", None).expect("join");
        let tab = hub.subscribe().expect("tab");
        let ann = member(1, "Ann");
        let mut shown = Vec::new();
        presence
            .enter(&hub, "presence-room", tab.id(), Some(&ann), |list| {
                tab.join("presence-room", None).map(|_| ())?;
                shown = list.to_vec();
                Ok::<(), crate::hub::HubError>(())
            })
            .expect("entered");
        assert_eq!(shown, std::slice::from_ref(&ann));
        let news = watcher.try_recv().expect("open").expect("joining");
        assert_eq!(
            (news.event(), news.data()),
            (
                JOINING,
                &json!({"user_id": 1, "user_info": {"name": "Ann"}})
            )
        );
        // The tab's own copy names it as the origin: its transport leaves it out.
        let own = tab.try_recv().expect("open").expect("own copy");
        assert!(own.is_from(tab.id()));
        // A failed arrival changes nothing.
        let failed: Result<(), &str> = presence.enter(
            &hub,
            "presence-room",
            SubscriberId::from_raw(0),
            Some(&member(2, "Bob")),
            |_| Err("closed"),
        );
        assert_eq!(failed, Err("closed"));
        assert_eq!(presence.count("presence-room"), (1, 1));
        // A member staying until dropped.
        let stay = presence.stay(&hub, "presence-room", tab.id());
        drop(stay);
        let news = watcher.try_recv().expect("open").expect("leaving");
        assert_eq!(news.event(), LEAVING);
        assert_eq!(presence.list("presence-room"), []);
        assert!(is_presence("presence-room") && !is_presence("private-room"));
    }
}
