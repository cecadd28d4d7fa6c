//! A task woken from another thread signals its runtime's driver only when that runtime is
//! parked (the tokio patch of vendor/tokio.patch.md).
//!
//! With a runtime per worker thread (`work_stealing: false`, the default) a publish on one
//! thread wakes the held long-polls, SSE streams and sockets of the other thread's runtime.
//! tokio's current-thread scheduler signalled the driver (an 8-byte `write` to its event fd)
//! for every such wake, even while the runtime was busy and would take the task from its
//! inject queue at its next look anyway: about one `write` system call per two deliveries on
//! the long-poll fan-out. A parked runtime must still be woken every time: the second and
//! third tests look for a lost wake-up.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The `write` family system calls this thread has made (`/proc/thread-self/io`, `syscw`).
fn writes_by_this_thread() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").expect("/proc/thread-self/io");
    io.lines()
        .find_map(|line| line.strip_prefix("syscw:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("syscw in /proc/thread-self/io")
}

#[test]
fn tasks_woken_from_another_thread_while_the_runtime_is_busy_cost_no_signal_each() {
    const TASKS: usize = 200;
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..TASKS).map(|_| oneshot::channel()).unzip();
    let busy = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));

    let worker = {
        let (busy, release, done) = (busy.clone(), release.clone(), done.clone());
        thread::spawn(move || {
            runtime().block_on(async move {
                let mut waiters = Vec::new();
                for rx in receivers {
                    let done = done.clone();
                    waiters.push(tokio::spawn(async move {
                        rx.await.expect("sent");
                        done.fetch_add(1, Ordering::SeqCst);
                    }));
                }
                // The waiters run first (the queue is first in, first out) and wait on their
                // channels; then this task keeps the runtime's only thread busy, never parked.
                let spinner = tokio::spawn(async move {
                    busy.store(true, Ordering::SeqCst);
                    while !release.load(Ordering::SeqCst) {
                        std::hint::spin_loop();
                    }
                });
                spinner.await.expect("spinner");
                for waiter in waiters {
                    waiter.await.expect("waiter");
                }
            })
        })
    };

    let deadline = Instant::now() + Duration::from_secs(10);
    while !busy.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the runtime never got busy");
        thread::yield_now();
    }
    let before = writes_by_this_thread();
    for tx in senders {
        tx.send(()).expect("the waiter is there");
    }
    let writes = writes_by_this_thread() - before;
    release.store(true, Ordering::SeqCst);
    worker.join().expect("runtime thread");

    assert_eq!(done.load(Ordering::SeqCst), TASKS, "every woken task ran");
    // Unpatched: one event-fd write per task woken (200).
    assert!(
        writes < 5,
        "{writes} write system calls to wake {TASKS} tasks of a busy runtime"
    );
}

#[test]
fn a_parked_runtime_is_woken_by_every_wake_from_another_thread() {
    const ROUNDS: usize = 300;
    let (to_worker, from_main) = mpsc::channel::<oneshot::Receiver<usize>>();
    let (to_main, answers) = mpsc::channel::<usize>();
    let worker = thread::spawn(move || {
        runtime().block_on(async move {
            // Park the runtime between rounds: nothing runs until a wake from outside.
            for rx in from_main {
                let n = rx.await.expect("sent");
                to_main.send(n).expect("main is there");
            }
        })
    });
    for round in 0..ROUNDS {
        let (tx, rx) = oneshot::channel();
        to_worker.send(rx).expect("worker is there");
        // Let the worker reach its park more often than not before the wake.
        if round % 3 != 0 {
            thread::sleep(Duration::from_micros(200));
        }
        tx.send(round).expect("waiter is there");
        let got = answers
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("round {round}: the parked runtime was never woken"));
        assert_eq!(got, round);
    }
    drop(to_worker);
    // The block_on future ends when the channel closes; a wake for it from this thread too.
    worker.join().expect("runtime thread");
}

#[test]
fn wakes_from_several_threads_at_once_are_none_of_them_lost() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 2_000;
    let rt = runtime();
    let handle = rt.handle().clone();
    let ran = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let worker = thread::spawn(move || rt.block_on(async move { stop_rx.await.ok() }));

    let wakers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (handle, ran) = (handle.clone(), ran.clone());
            thread::spawn(move || {
                for i in 0..PER_THREAD {
                    // Spawning from outside is a remote schedule too; every other one also
                    // wakes a waiting task of the runtime through a channel.
                    let ran = ran.clone();
                    if i % 2 == 0 {
                        handle.spawn(async move {
                            ran.fetch_add(1, Ordering::SeqCst);
                        });
                    } else {
                        let (tx, rx) = oneshot::channel::<()>();
                        handle.spawn(async move {
                            rx.await.expect("sent");
                            ran.fetch_add(1, Ordering::SeqCst);
                        });
                        thread::yield_now();
                        tx.send(()).expect("waiter is there");
                    }
                }
            })
        })
        .collect();
    for waker in wakers {
        waker.join().expect("waking thread");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while ran.load(Ordering::SeqCst) < THREADS * PER_THREAD {
        assert!(
            Instant::now() < deadline,
            "{} of {} tasks ran: a wake was lost",
            ran.load(Ordering::SeqCst),
            THREADS * PER_THREAD
        );
        thread::sleep(Duration::from_millis(1));
    }
    stop_tx.send(()).expect("runtime is there");
    worker.join().expect("runtime thread");
}
