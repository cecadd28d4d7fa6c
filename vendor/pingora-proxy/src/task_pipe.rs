// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! A bounded queue between the two halves of one HTTP/1 to HTTP/1 proxy exchange.
//!
//! `proxy_1to1` runs its downstream and upstream halves with `try_join!`, so both are polled by
//! the one task that serves the request. A `tokio::sync::mpsc` channel per direction cost every
//! request two allocations per channel (the shared channel and its first block of slots) and
//! their atomics. This queue lives in the caller's future instead; each half borrows its end.
//! The ends keep the channel's semantics that the halves rely on:
//!
//! - bounded capacity, with [PipeSender::reserve] / [PipeSender::try_reserve] returning a
//!   [PipePermit] that guarantees a slot (the downstream half reserves before it reads a body
//!   chunk, so neither half can block on a full queue while the other does);
//! - dropping the sender ends the stream: [PipeReceiver::recv] returns `None` once the queue is
//!   empty;
//! - dropping the receiver closes the queue: queued values are dropped, sends and reserves fail
//!   and [PipeSender::is_closed] turns true;
//! - `recv` and `reserve` are cancel safe (`tokio::select!` drops them freely): a value or a slot
//!   is only taken when the future completes.
//!
//! A `Mutex` (never contended: the halves are never polled at the same time) makes the borrowed
//! state `Sync`, which the request's future needs to be `Send`.

use std::fmt;
use std::future::poll_fn;
use std::sync::{Mutex, MutexGuard};
use std::task::{Poll, Waker};

/// The queue; [TaskPipe::split] hands out its two ends.
pub(crate) struct TaskPipe<T, const N: usize> {
    state: Mutex<State<T, N>>,
}

struct State<T, const N: usize> {
    /// A ring of `len` values starting at `head`.
    slots: [Option<T>; N],
    head: usize,
    len: usize,
    /// Slots promised to permits not yet used.
    reserved: usize,
    tx_dropped: bool,
    rx_dropped: bool,
    /// The receiver waiting for a value.
    rx_waker: Option<Waker>,
    /// The sender waiting for a slot.
    tx_waker: Option<Waker>,
}

impl<T, const N: usize> State<T, N> {
    fn has_room(&self) -> bool {
        self.len + self.reserved < N
    }

    fn push(&mut self, value: T) {
        debug_assert!(self.len < N);
        let tail = (self.head + self.len) % N;
        self.slots[tail] = Some(value);
        self.len += 1;
    }

    fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let value = self.slots[self.head].take();
        self.head = (self.head + 1) % N;
        self.len -= 1;
        value
    }
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(w) = waker.take() {
        w.wake();
    }
}

fn register(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

impl<T, const N: usize> TaskPipe<T, N> {
    pub(crate) fn new() -> Self {
        assert!(N > 0, "a task pipe needs room for one value");
        TaskPipe {
            state: Mutex::new(State {
                slots: std::array::from_fn(|_| None),
                head: 0,
                len: 0,
                reserved: 0,
                tx_dropped: false,
                rx_dropped: false,
                rx_waker: None,
                tx_waker: None,
            }),
        }
    }

    /// The sending and the receiving end. Call it once per pipe: each end marks the pipe
    /// closed for good when dropped.
    pub(crate) fn split(&self) -> (PipeSender<'_, T, N>, PipeReceiver<'_, T, N>) {
        (PipeSender { pipe: self }, PipeReceiver { pipe: self })
    }

    fn lock(&self) -> MutexGuard<'_, State<T, N>> {
        // No code panics while holding the lock; should one ever, the state is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The receiver was dropped: the value can never be received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PipeClosed;

impl fmt::Display for PipeClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("task pipe closed")
    }
}

impl std::error::Error for PipeClosed {}

/// Why [PipeSender::try_reserve] gave no permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TryReserveError {
    /// Every slot is taken; [PipeSender::reserve] waits for one.
    Full,
    /// The receiver was dropped.
    Closed,
}

impl fmt::Display for TryReserveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryReserveError::Full => f.write_str("task pipe full"),
            TryReserveError::Closed => f.write_str("task pipe closed"),
        }
    }
}

impl std::error::Error for TryReserveError {}

pub(crate) struct PipeSender<'a, T, const N: usize> {
    pipe: &'a TaskPipe<T, N>,
}

impl<'a, T, const N: usize> PipeSender<'a, T, N> {
    /// Waits for a slot, then queues `value`.
    pub(crate) async fn send(&self, value: T) -> Result<(), PipeClosed> {
        self.reserve().await?.send(value);
        Ok(())
    }

    /// Waits for a slot and keeps it for the permit.
    pub(crate) async fn reserve(&self) -> Result<PipePermit<'a, T, N>, PipeClosed> {
        poll_fn(|cx| {
            let mut state = self.pipe.lock();
            if state.rx_dropped {
                return Poll::Ready(Err(PipeClosed));
            }
            if state.has_room() {
                state.reserved += 1;
                // The one sender waits no more: no wake-up for it when a slot frees.
                state.tx_waker = None;
                return Poll::Ready(Ok(PipePermit { pipe: self.pipe }));
            }
            register(&mut state.tx_waker, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// A permit if a slot is free now.
    pub(crate) fn try_reserve(&self) -> Result<PipePermit<'a, T, N>, TryReserveError> {
        let mut state = self.pipe.lock();
        if state.rx_dropped {
            return Err(TryReserveError::Closed);
        }
        if !state.has_room() {
            return Err(TryReserveError::Full);
        }
        state.reserved += 1;
        Ok(PipePermit { pipe: self.pipe })
    }

    /// Whether the receiver was dropped.
    pub(crate) fn is_closed(&self) -> bool {
        self.pipe.lock().rx_dropped
    }
}

impl<T, const N: usize> Drop for PipeSender<'_, T, N> {
    fn drop(&mut self) {
        let mut state = self.pipe.lock();
        state.tx_dropped = true;
        wake(&mut state.rx_waker);
    }
}

impl<T, const N: usize> fmt::Debug for PipeSender<'_, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipeSender").finish_non_exhaustive()
    }
}

/// One slot of the pipe, held for the next value; given back if dropped unused.
pub(crate) struct PipePermit<'a, T, const N: usize> {
    pipe: &'a TaskPipe<T, N>,
}

impl<T, const N: usize> PipePermit<'_, T, N> {
    /// Queues `value` in the reserved slot. If the receiver is gone, the value is dropped.
    pub(crate) fn send(self, value: T) {
        let mut state = self.pipe.lock();
        state.reserved -= 1;
        if !state.rx_dropped {
            state.push(value);
            wake(&mut state.rx_waker);
        }
        drop(state);
        // The slot is used: nothing to give back.
        std::mem::forget(self);
    }
}

impl<T, const N: usize> Drop for PipePermit<'_, T, N> {
    fn drop(&mut self) {
        let mut state = self.pipe.lock();
        state.reserved -= 1;
        wake(&mut state.tx_waker);
    }
}

impl<T, const N: usize> fmt::Debug for PipePermit<'_, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipePermit").finish_non_exhaustive()
    }
}

pub(crate) struct PipeReceiver<'a, T, const N: usize> {
    pipe: &'a TaskPipe<T, N>,
}

impl<T, const N: usize> PipeReceiver<'_, T, N> {
    /// The next value; `None` once the sender is dropped and the queue is empty.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| {
            let mut state = self.pipe.lock();
            if let Some(value) = state.pop() {
                // The one receiver waits no more: no wake-up for it on the next send.
                state.rx_waker = None;
                wake(&mut state.tx_waker);
                return Poll::Ready(Some(value));
            }
            if state.tx_dropped {
                return Poll::Ready(None);
            }
            register(&mut state.rx_waker, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// The next value if one is queued now.
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        let mut state = self.pipe.lock();
        let value = state.pop();
        if value.is_some() {
            wake(&mut state.tx_waker);
        }
        value
    }

    /// How many values are queued now.
    pub(crate) fn len(&self) -> usize {
        self.pipe.lock().len
    }
}

impl<T, const N: usize> Drop for PipeReceiver<'_, T, N> {
    fn drop(&mut self) {
        let mut state = self.pipe.lock();
        state.rx_dropped = true;
        let queued = std::mem::replace(&mut state.slots, std::array::from_fn(|_| None));
        state.head = 0;
        state.len = 0;
        let waker = state.tx_waker.take();
        // The values and the waker go after the lock is released: dropping a value may run
        // arbitrary code.
        drop(state);
        drop(queued);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T, const N: usize> fmt::Debug for PipeReceiver<'_, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipeReceiver").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    //! Plain `std` on purpose (no runtime, no `futures`): the module is self-contained, so these
    //! tests also run outside this crate's build (tests/tests/task_pipe.rs in the project that
    //! carries this patch).

    use super::*;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Wake};

    /// Polls once: `Some(output)` if the future is ready at once.
    trait NowOrNever: Future + Sized {
        fn now_or_never(self) -> Option<Self::Output> {
            let mut cx = Context::from_waker(Waker::noop());
            match std::pin::pin!(self).poll(&mut cx) {
                Poll::Ready(out) => Some(out),
                Poll::Pending => None,
            }
        }
    }

    impl<F: Future> NowOrNever for F {}

    /// Counts its wake-ups.
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting_waker() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        (counter.clone(), Waker::from(counter))
    }

    #[test]
    fn values_come_out_in_order_across_the_ring() {
        let pipe = TaskPipe::<u32, 3>::new();
        let (tx, mut rx) = pipe.split();
        for round in 0..5u32 {
            for i in 0..3 {
                tx.try_reserve().unwrap().send(round * 10 + i);
            }
            assert_eq!(tx.try_reserve().unwrap_err(), TryReserveError::Full);
            assert_eq!(rx.len(), 3);
            assert_eq!(rx.try_recv(), Some(round * 10));
            assert_eq!(rx.recv().now_or_never(), Some(Some(round * 10 + 1)));
            assert_eq!(rx.try_recv(), Some(round * 10 + 2));
            assert_eq!(rx.try_recv(), None);
        }
    }

    #[test]
    fn a_permit_holds_a_slot_until_used_or_dropped() {
        let pipe = TaskPipe::<u32, 2>::new();
        let (tx, mut rx) = pipe.split();
        let first = tx.try_reserve().unwrap();
        let second = tx.try_reserve().unwrap();
        assert_eq!(tx.try_reserve().unwrap_err(), TryReserveError::Full);
        assert!(
            tx.reserve().now_or_never().is_none(),
            "no slot: reserve waits"
        );
        drop(first);
        second.send(7);
        let third = tx.try_reserve().unwrap();
        assert_eq!(tx.try_reserve().unwrap_err(), TryReserveError::Full);
        third.send(8);
        assert_eq!(rx.try_recv(), Some(7));
        assert_eq!(rx.try_recv(), Some(8));
    }

    #[test]
    fn a_waiting_receiver_is_woken_by_a_send_and_by_the_sender_going() {
        let pipe = TaskPipe::<u32, 2>::new();
        let (tx, mut rx) = pipe.split();
        let (count, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        {
            let mut recv = std::pin::pin!(rx.recv());
            assert!(recv.as_mut().poll(&mut cx).is_pending());
            tx.try_reserve().unwrap().send(1);
            assert_eq!(count.0.load(Ordering::SeqCst), 1);
            assert_eq!(recv.as_mut().poll(&mut cx), Poll::Ready(Some(1)));
        }
        {
            let mut recv = std::pin::pin!(rx.recv());
            assert!(recv.as_mut().poll(&mut cx).is_pending());
            drop(tx);
            assert_eq!(count.0.load(Ordering::SeqCst), 2);
            assert_eq!(recv.as_mut().poll(&mut cx), Poll::Ready(None));
        }
    }

    #[test]
    fn queued_values_are_received_before_the_end() {
        let pipe = TaskPipe::<u32, 4>::new();
        let (tx, mut rx) = pipe.split();
        tx.try_reserve().unwrap().send(1);
        tx.try_reserve().unwrap().send(2);
        drop(tx);
        assert_eq!(rx.recv().now_or_never(), Some(Some(1)));
        assert_eq!(rx.recv().now_or_never(), Some(Some(2)));
        assert_eq!(rx.recv().now_or_never(), Some(None));
        assert_eq!(
            rx.recv().now_or_never(),
            Some(None),
            "the end stays the end"
        );
    }

    #[test]
    fn a_waiting_sender_is_woken_by_a_receive_and_by_the_receiver_going() {
        let pipe = TaskPipe::<u32, 1>::new();
        let (tx, mut rx) = pipe.split();
        let (count, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        tx.try_reserve().unwrap().send(1);
        {
            let mut reserve = std::pin::pin!(tx.reserve());
            assert!(reserve.as_mut().poll(&mut cx).is_pending());
            assert_eq!(rx.try_recv(), Some(1));
            assert_eq!(count.0.load(Ordering::SeqCst), 1);
            match reserve.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(permit)) => permit.send(2),
                other => panic!("expected a permit, got {other:?}"),
            }
        }
        let mut reserve = std::pin::pin!(tx.reserve());
        assert!(reserve.as_mut().poll(&mut cx).is_pending());
        drop(rx);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert!(matches!(
            reserve.as_mut().poll(&mut cx),
            Poll::Ready(Err(PipeClosed))
        ));
    }

    #[test]
    fn dropping_the_receiver_closes_the_pipe_and_drops_what_was_queued() {
        let pipe = TaskPipe::<Arc<()>, 4>::new();
        let (tx, rx) = pipe.split();
        let value = Arc::new(());
        tx.try_reserve().unwrap().send(value.clone());
        let late = tx.try_reserve().unwrap();
        assert_eq!(Arc::strong_count(&value), 2);
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(Arc::strong_count(&value), 1, "the queued value was dropped");
        late.send(value.clone());
        assert_eq!(
            Arc::strong_count(&value),
            1,
            "a permit's value is dropped too"
        );
        assert_eq!(tx.try_reserve().unwrap_err(), TryReserveError::Closed);
        assert_eq!(tx.send(value).now_or_never(), Some(Err(PipeClosed)));
    }

    #[test]
    fn a_cancelled_reserve_or_recv_takes_nothing() {
        let pipe = TaskPipe::<u32, 1>::new();
        let (tx, mut rx) = pipe.split();
        assert!(rx.recv().now_or_never().is_none());
        tx.try_reserve().unwrap().send(5);
        assert!(tx.reserve().now_or_never().is_none());
        assert_eq!(rx.try_recv(), Some(5));
        assert!(
            tx.try_reserve().is_ok(),
            "the cancelled reserve kept no slot"
        );
    }
}
