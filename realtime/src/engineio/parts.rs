//! Several futures of one task, each polled with a waker of its own and only when woken
//! ([`Parts`]): the session's task (`task`) and the WebSocket's reads and writes
//! (`websocket`) are built from them.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

use crate::sync::lock;

/// A waker slot for one waiter that waits with the same waker every time (a part of a task):
/// it registers once and is woken by reference, keeping the waker, where an `AtomicWaker`
/// gave its waker up at every wake-up and was registered again at every wait (two atomic
/// swaps each time, on a line of the connection's that a quiet room finds cold otherwise).
#[derive(Debug, Default)]
pub(super) struct KeptWaker(Mutex<Option<Waker>>);

impl KeptWaker {
    /// Makes `waker` the one woken; `mine` is the waiter's own copy of what it registered last,
    /// so that waiting again with the same waker touches nothing shared. For one waiter only.
    pub(super) fn register(&self, mine: &mut Option<Waker>, waker: &Waker) {
        if mine.as_ref().is_some_and(|w| w.will_wake(waker)) {
            return;
        }
        *lock(&self.0) = Some(waker.clone());
        *mine = Some(waker.clone());
    }

    /// Wakes the waker registered, if any, and keeps it.
    pub(super) fn wake(&self) {
        if let Some(waker) = lock(&self.0).as_ref() {
            waker.wake_by_ref();
        }
    }
}

/// Polls the future in `slot` unless it has ended; drops it when it ends.
pub(super) fn poll_slot<F: Future<Output = ()>>(
    mut slot: Pin<&mut Option<F>>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let Some(future) = slot.as_mut().as_pin_mut() else {
        return Poll::Ready(());
    };
    let polled = future.poll(cx);
    if polled.is_ready() {
        slot.set(None);
    }
    polled
}

/// How many times one poll of [`Parts`] goes round the parts woken meanwhile before it lets the
/// scheduler run other tasks (and renew tokio's budget, whose end wakes the part at once).
const ROUNDS: usize = 4;

/// Up to 8 parts of one task, each polled with a waker of its own, and only when woken.
///
/// A part that wakes another while the task polls (the layer above queues a message, which
/// wakes the WebSocket's writer) does not wake the task: the woken part is polled within the
/// same poll, after the parts before it. With one waker for all, each delivery woke the task a
/// second time to find nothing more to do, and every part was polled at every wake-up.
pub(super) struct Parts<const N: usize> {
    shared: Arc<Shared>,
    wakers: [Waker; N],
    done: u8,
    lead_done: bool,
}

struct Shared {
    /// The parts woken since they were last polled, one bit each.
    due: AtomicU8,
    /// Whether the task is polling its parts now: a part woken then is polled before the poll
    /// ends, so the task is not woken.
    polling: AtomicBool,
    task: AtomicWaker,
}

/// The waker of one part.
struct PartWaker {
    shared: Arc<Shared>,
    bit: u8,
}

impl Wake for PartWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.shared.due.fetch_or(self.bit, SeqCst);
        // Either the poll sees the bit after it stops polling, or this sees that it stopped
        // (both sequentially consistent): a wake is never lost.
        if !self.shared.polling.load(SeqCst) {
            self.shared.task.wake();
        }
    }
}

impl<const N: usize> Parts<N> {
    const ALL: u8 = if N >= 8 { u8::MAX } else { (1u8 << N) - 1 };

    pub(super) fn new() -> Parts<N> {
        let shared = Arc::new(Shared {
            due: AtomicU8::new(Self::ALL),
            polling: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        let wakers = std::array::from_fn(|i| {
            Waker::from(Arc::new(PartWaker {
                shared: Arc::clone(&shared),
                bit: 1 << i,
            }))
        });
        Parts {
            shared,
            wakers,
            done: 0,
            lead_done: false,
        }
    }

    /// Polls `lead` with the task's own waker (once a poll, until it is ready), then, in order,
    /// each part (`poll_part(index, cx)`) woken since it was last polled (every part at the
    /// first call), again while parts are woken meanwhile; ready once `lead` and every part
    /// have been ready once (one that was is not polled again).
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        mut lead: impl FnMut(&mut Context<'_>) -> Poll<()>,
        mut poll_part: impl FnMut(usize, &mut Context<'_>) -> Poll<()>,
    ) -> Poll<()> {
        self.shared.task.register(cx.waker());
        for round in 0..ROUNDS {
            self.shared.polling.store(true, SeqCst);
            if round == 0 && !self.lead_done && lead(cx).is_ready() {
                self.lead_done = true;
            }
            for (i, waker) in self.wakers.iter().enumerate() {
                let bit = 1u8 << i;
                let due = self.shared.due.fetch_and(!bit, SeqCst) & bit != 0;
                if due && self.done & bit == 0 {
                    let mut part_cx = Context::from_waker(waker);
                    if poll_part(i, &mut part_cx).is_ready() {
                        self.done |= bit;
                    }
                }
            }
            self.shared.polling.store(false, SeqCst);
            if self.done == Self::ALL && self.lead_done {
                return Poll::Ready(());
            }
            if self.shared.due.load(SeqCst) & !self.done == 0 {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::CountingWaker as Count;

    #[test]
    fn a_part_woken_by_another_is_polled_in_the_same_poll_without_waking_the_task() {
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u8>();
        let mut tx = Some(tx);
        let mut got = Vec::new();
        let mut parts = Parts::<2>::new();
        let mut polls = [0; 2];
        // Part 0 waits for a message, part 1 sends it after part 0 has gone to sleep.
        let mut step = |part: usize, cx: &mut Context<'_>| {
            polls[part] += 1;
            match part {
                0 => loop {
                    match rx.poll_recv(cx) {
                        Poll::Ready(Some(v)) => got.push(v),
                        Poll::Ready(None) => return Poll::Ready(()),
                        Poll::Pending => return Poll::Pending,
                    }
                },
                _ => {
                    if let Some(tx) = tx.take() {
                        tx.send(7).expect("receiver alive");
                    }
                    Poll::Ready(())
                }
            }
        };
        assert_eq!(
            parts.poll(&mut cx, |_| Poll::Ready(()), &mut step),
            Poll::Ready(())
        );
        assert_eq!(got, [7]);
        assert_eq!(
            polls,
            [2, 1],
            "part 0: first, then woken by the message (and the close)"
        );
        assert_eq!(count.0.load(SeqCst), 0, "the task was not woken");
    }

    #[test]
    fn a_part_woken_while_the_task_sleeps_wakes_it_once_and_alone_is_polled() {
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let mut parts = Parts::<3>::new();
        let polls = std::cell::RefCell::new([0; 3]);
        let part_wakers: std::cell::RefCell<Vec<Option<Waker>>> = Default::default();
        part_wakers.borrow_mut().resize(3, None);
        let step = |part: usize, cx: &mut Context<'_>| {
            polls.borrow_mut()[part] += 1;
            part_wakers.borrow_mut()[part] = Some(cx.waker().clone());
            Poll::Pending
        };
        assert_eq!(
            parts.poll(&mut cx, |_| Poll::Ready(()), step),
            Poll::Pending
        );
        assert_eq!(*polls.borrow(), [1, 1, 1]);
        let wake_1 = part_wakers.borrow()[1].clone().expect("registered");
        wake_1.wake_by_ref();
        wake_1.wake_by_ref();
        assert_eq!(count.0.load(SeqCst), 1);
        assert_eq!(
            parts.poll(&mut cx, |_| Poll::Ready(()), step),
            Poll::Pending
        );
        assert_eq!(*polls.borrow(), [1, 2, 1]);
    }

    #[test]
    fn what_the_lead_queues_is_written_by_the_part_it_wakes_in_the_same_poll() {
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u8>();
        let got = std::cell::RefCell::new(Vec::new());
        let mut parts = Parts::<1>::new();
        let mut part = |_: usize, cx: &mut Context<'_>| {
            while let Poll::Ready(Some(v)) = rx.poll_recv(cx) {
                got.borrow_mut().push(v);
            }
            Poll::Pending
        };
        let mut sends = 0;
        let mut lead = |_: &mut Context<'_>| {
            // The first poll only registers the part; the second is a delivery.
            if sends == 1 {
                tx.send(7).expect("receiver alive");
            }
            sends += 1;
            Poll::Pending
        };
        assert_eq!(parts.poll(&mut cx, &mut lead, &mut part), Poll::Pending);
        assert_eq!(parts.poll(&mut cx, &mut lead, &mut part), Poll::Pending);
        assert_eq!(*got.borrow(), [7]);
        assert_eq!(count.0.load(SeqCst), 0, "the task was not woken again");
    }

    #[test]
    fn a_part_that_keeps_waking_itself_yields_to_the_scheduler() {
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let mut parts = Parts::<1>::new();
        let mut polls = 0;
        let mut step = |_: usize, cx: &mut Context<'_>| {
            polls += 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        };
        assert_eq!(
            parts.poll(&mut cx, |_| Poll::Ready(()), &mut step),
            Poll::Pending
        );
        assert_eq!(polls, ROUNDS);
        assert_eq!(count.0.load(SeqCst), 1);
    }

    #[test]
    fn a_kept_waker_is_registered_once_and_woken_every_time() {
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        let kept = KeptWaker::default();
        let mut mine = None;
        kept.register(&mut mine, &waker);
        let registered = Arc::strong_count(&count);
        for round in 1..=3 {
            kept.wake();
            assert_eq!(count.0.load(SeqCst), round);
            kept.register(&mut mine, &waker);
            assert_eq!(Arc::strong_count(&count), registered, "not cloned again");
        }
    }
}
