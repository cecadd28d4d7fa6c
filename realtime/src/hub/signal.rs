//! A one-waiter wake-up for the subscribers of one connection ([`super::Hub::subscribe_waking`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use crate::sync::lock;

/// Raised by the hub when a queue of the connection's subscribers becomes non-empty or one of
/// them closes; waited on by the one task that drains them.
///
/// Lighter than a `tokio::sync::Notify` for the one thing it does: the waiter's waker stays
/// registered between wake-ups (compared, not cloned, at each wait) and is woken by
/// reference, where a `Notify` put each wait in its waiter list under its lock, with a clone
/// of the waker, and the hub's push took it out under the lock again. In a quiet room every
/// connection's wake-up is out of the processor's caches, so each of those steps was a miss.
#[derive(Debug, Default)]
pub struct Signal {
    raised: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Signal {
    /// Raises the signal: the waiter is woken, or sees it at its next look. Raising it again
    /// before the waiter looked does nothing more.
    pub fn raise(&self) {
        if self.raised.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(waker) = lock(&self.waker).as_ref() {
            waker.wake_by_ref();
        }
    }

    /// Ready (and lowered) once raised since the last time it was; else `cx` is woken at the
    /// next raise. For one waiter: a second one takes the first one's place.
    pub fn poll_raised(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.raised.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        {
            let mut slot = lock(&self.waker);
            match &mut *slot {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
        }
        // A raise between the first look and the registration found no waker (or the old
        // one): it is seen here. One after it finds the waker registered.
        if self.raised.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Waits until raised (and lowers it).
    pub async fn raised(&self) {
        std::future::poll_fn(|cx| self.poll_raised(cx)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sync::CountingWaker as Count;

    #[test]
    fn a_raise_wakes_the_waiter_once_and_its_waker_stays_registered_without_a_clone_per_wait() {
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let signal = Signal::default();
        // Raised before anyone waits: seen at the first look, once.
        signal.raise();
        assert_eq!(signal.poll_raised(&mut cx), Poll::Ready(()));
        assert_eq!(signal.poll_raised(&mut cx), Poll::Pending);
        let registered = Arc::strong_count(&count);
        for round in 1..=3 {
            signal.raise();
            signal.raise();
            assert_eq!(
                count.0.load(Ordering::SeqCst),
                round,
                "one wake-up per raise seen"
            );
            assert_eq!(signal.poll_raised(&mut cx), Poll::Ready(()));
            assert_eq!(signal.poll_raised(&mut cx), Poll::Pending);
            assert_eq!(
                Arc::strong_count(&count),
                registered,
                "the same waker is kept, not cloned again"
            );
        }
    }

    #[tokio::test]
    async fn a_raise_from_another_task_ends_the_wait() {
        let signal = Arc::new(Signal::default());
        let raiser = Arc::clone(&signal);
        let raise = tokio::spawn(async move {
            tokio::task::yield_now().await;
            raiser.raise();
        });
        signal.raised().await;
        raise.await.expect("no panic");
    }
}
