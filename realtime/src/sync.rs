//! Poison-tolerant locks, one helper for the whole crate; two small things to wait on that a
//! connection keeps inline ([`SetOnce`], [`Changes`]); for tests, a waker that counts.
//!
//! Every critical section in this crate leaves its state consistent before anything that can
//! panic (a service callback at worst), so a lock whose holder panicked still guards valid
//! state: taking it anyway keeps one panicking task from wedging every other connection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{
    Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError,
};

use tokio::sync::Notify;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// [`lock`] without waiting: `None` while someone else holds the lock.
pub(crate) fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// A value set once (the first set wins) that any number of tasks can wait for: what a
/// connection's close is. tokio's watch channel did it with an allocation of its own (the
/// value behind a lock, a version and eight `Notify`s: about 360 bytes per connection, and a
/// 152-byte future per waiter); this is a lock, a flag and one `Notify`, inline in the state
/// that holds it.
#[derive(Debug)]
pub(crate) struct SetOnce<T> {
    value: Mutex<Option<T>>,
    /// Whether `value` is set: read without the lock (set under it, so whoever sees it sees
    /// the value).
    set: AtomicBool,
    notify: Notify,
}

impl<T> Default for SetOnce<T> {
    fn default() -> SetOnce<T> {
        SetOnce {
            value: Mutex::new(None),
            set: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }
}

impl<T: Clone> SetOnce<T> {
    /// Sets the value unless one is set already; whether it did. Wakes every waiter.
    pub(crate) fn set(&self, value: T) -> bool {
        let mut slot = lock(&self.value);
        if slot.is_some() {
            return false;
        }
        *slot = Some(value);
        self.set.store(true, Ordering::Release);
        drop(slot);
        self.notify.notify_waiters();
        true
    }

    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    pub(crate) fn get(&self) -> Option<T> {
        if !self.is_set() {
            return None;
        }
        lock(&self.value).clone()
    }

    /// Resolves with the value once it is set.
    pub(crate) async fn wait(&self) -> T {
        loop {
            // Waiting before looking: a value set in between wakes it (`notify_waiters` wakes
            // every `Notified` made before it, polled or not).
            let notified = self.notify.notified();
            if let Some(value) = self.get() {
                return value;
            }
            notified.await;
        }
    }
}

/// A count of changes that any number of tasks can wait on, each from the count it saw last:
/// tokio's watch channel without its value and without an allocation of its own (see
/// [`SetOnce`]).
#[derive(Debug, Default)]
pub(crate) struct Changes {
    version: AtomicU64,
    notify: Notify,
}

impl Changes {
    /// One change more; wakes every waiter.
    pub(crate) fn bump(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// The count now: what a waiter has seen once it looked at what changed.
    pub(crate) fn now(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    /// Whether there were changes since `seen`.
    pub(crate) fn since(&self, seen: u64) -> bool {
        self.now() != seen
    }

    /// Resolves at the first change after `seen`, which it moves to the count now.
    pub(crate) async fn changed(&self, seen: &mut u64) {
        loop {
            let notified = self.notify.notified();
            let now = self.now();
            if now != *seen {
                *seen = now;
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poisoned<T: Send>(m: &Mutex<T>) {
        std::thread::scope(|s| {
            let _ = s
                .spawn(|| {
                    let _guard = m.lock();
                    panic!("poisons the lock");
                })
                .join();
        });
        assert!(m.is_poisoned());
    }

    #[test]
    fn a_poisoned_lock_is_taken_anyway() {
        let m = Mutex::new(1);
        poisoned(&m);
        *lock(&m) += 1;
        assert_eq!(try_lock(&m).map(|g| *g), Some(2));
        let l = RwLock::new(1);
        std::thread::scope(|s| {
            let _ = s
                .spawn(|| {
                    let _guard = l.write();
                    panic!("poisons the lock");
                })
                .join();
        });
        *write(&l) += 1;
        assert_eq!(*read(&l), 2);
    }

    #[tokio::test]
    async fn a_value_set_once_reaches_every_waiter_and_the_first_set_wins() {
        let once = std::sync::Arc::new(SetOnce::<u32>::default());
        assert_eq!(once.get(), None);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let once = once.clone();
                tokio::spawn(async move { once.wait().await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(once.set(7));
        assert!(!once.set(8));
        for waiter in waiters {
            assert_eq!(waiter.await.expect("waiter"), 7);
        }
        assert!(once.is_set());
        assert_eq!(once.get(), Some(7));
        // A waiter that comes later finds it at once.
        assert_eq!(once.wait().await, 7);
    }

    #[tokio::test]
    async fn a_change_wakes_each_waiter_once_from_what_it_saw() {
        let changes = std::sync::Arc::new(Changes::default());
        let mut seen = changes.now();
        assert!(!changes.since(seen));
        let waiter = {
            let changes = changes.clone();
            tokio::spawn(async move {
                let mut seen = seen;
                changes.changed(&mut seen).await;
                seen
            })
        };
        tokio::task::yield_now().await;
        changes.bump();
        assert_eq!(waiter.await.expect("waiter"), changes.now());
        assert!(changes.since(seen));
        // Two changes while nobody waited: one wake-up, at once.
        changes.bump();
        changes.changed(&mut seen).await;
        assert_eq!(seen, changes.now());
        assert!(!changes.since(seen));
    }

    #[test]
    fn try_lock_does_not_wait() {
        let m = Mutex::new(());
        let held = lock(&m);
        assert!(try_lock(&m).is_none());
        drop(held);
        assert!(try_lock(&m).is_some());
    }
}

/// A task waker that counts its wake-ups, for the tests of hand-written futures and wake-ups.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct CountingWaker(pub(crate) std::sync::atomic::AtomicUsize);

#[cfg(test)]
impl std::task::Wake for CountingWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}
