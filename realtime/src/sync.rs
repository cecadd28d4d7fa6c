//! Poison-tolerant locks, one helper for the whole crate (and, for tests, a waker that counts).
//!
//! Every critical section in this crate leaves its state consistent before anything that can
//! panic (a service callback at worst), so a lock whose holder panicked still guards valid
//! state: taking it anyway keeps one panicking task from wedging every other connection.

use std::sync::{
    Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError,
};

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
