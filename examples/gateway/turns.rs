//! Workers that share a CPU take turns of the scheduler's slice, not of
//! its tick.
//!
//! Linux gives each runnable thread a slice of CPU time (1.5 ms on two
//! CPUs, by default), but sees that the running thread has used its slice
//! up only when something makes it account for that thread's time: the
//! timer tick (every 4 ms at `CONFIG_HZ=250`), a wake-up on the same CPU,
//! or a read of the thread's own CPU clock, among others. A worker under
//! load never sleeps, so when the kernel puts two workers on one CPU, each
//! ran until the tick and the other's connections waited the whole 4 ms:
//! a p99 of 4.7 to 6.2 ms where HAProxy's two threads, on one CPU the same
//! way, kept 2.6 to 2.9 ms (BENCHMARKS.md). HAProxy reads its threads' CPU
//! clocks once per turn of its event loop, for its own accounting.
//!
//! Here a worker looks every [`LOOK_EVERY`] requests at which CPU it is
//! on, and whether another worker was last seen on the same one; while
//! so, it reads its own CPU clock every [`EVERY`] requests, which lets the
//! kernel switch to the other at the end of the slice. Not on a CPU of its
//! own: there it would only hand the CPU to the load generator or a
//! backend sooner, and a worker that did so every time served fewer
//! requests at a higher p99 (BENCHMARKS.md). Each costs one system call;
//! an idle worker makes none.
//!
//! Elsewhere than Linux this does nothing.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Requests between two reads of a worker's CPU clock while it shares a
/// CPU: about half a millisecond of a busy worker's time, a third of its
/// slice.
pub const EVERY: u32 = 16;

/// Requests between two looks at which CPU a worker is on.
pub const LOOK_EVERY: u32 = 64;

/// The CPU each worker was last seen on, by index; [`NONE`] before its
/// first look.
static SEEN: OnceLock<Box<[AtomicUsize]>> = OnceLock::new();

const NONE: usize = usize::MAX;

/// What a worker thread keeps between requests.
struct Worker {
    /// `None` on a thread that is not a worker.
    index: Cell<Option<usize>>,
    started: Cell<u32>,
    /// Whether another worker was on its CPU at its last look.
    sharing: Cell<bool>,
}

thread_local! {
    static WORKER: Worker = const {
        Worker {
            index: Cell::new(None),
            started: Cell::new(0),
            sharing: Cell::new(false),
        }
    };
}

/// Makes room for `workers` workers; called once, before they start.
pub fn init(workers: usize) {
    let _ = SEEN.set((0..workers).map(|_| AtomicUsize::new(NONE)).collect());
}

/// Marks the calling thread as worker `index`.
pub fn enter_worker(index: usize) {
    WORKER.with(|worker| worker.index.set(Some(index)));
}

/// Counts a request started on the calling worker; see the module.
pub fn request_started() {
    WORKER.with(|worker| {
        let started = worker.started.get().wrapping_add(1);
        worker.started.set(started);
        if started % LOOK_EVERY == 0 {
            worker.sharing.set(shares_a_cpu(worker.index.get()));
        }
        if started % EVERY == 0 && worker.sharing.get() {
            read_cpu_clock();
        }
    });
}

/// Whether another worker was last seen on the CPU the worker `index` is
/// on now, which it records.
#[cfg(target_os = "linux")]
fn shares_a_cpu(index: Option<usize>) -> bool {
    let (Some(index), Some(seen)) = (index, SEEN.get()) else {
        return false;
    };
    let cpu = rustix::thread::sched_getcpu();
    if let Some(mine) = seen.get(index) {
        mine.store(cpu, Ordering::Relaxed);
    }
    seen.iter()
        .enumerate()
        .any(|(other, at)| other != index && at.load(Ordering::Relaxed) == cpu)
}

#[cfg(not(target_os = "linux"))]
fn shares_a_cpu(_index: Option<usize>) -> bool {
    false
}

/// Reads the calling thread's CPU clock, for what that does (above).
fn read_cpu_clock() {
    #[cfg(target_os = "linux")]
    {
        let _ = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_worker_shares_a_cpu_only_with_a_worker_last_seen_there() {
        // Kept where it is, so that the CPU it looks up is this one.
        let cpu = rustix::thread::sched_getcpu();
        let mut here = rustix::thread::CpuSet::new();
        here.set(cpu);
        rustix::thread::sched_setaffinity(None, &here).unwrap();
        init(3);
        let seen = SEEN.get().unwrap();

        assert!(!shares_a_cpu(Some(0)), "no other worker seen yet");
        assert_eq!(seen[0].load(Ordering::Relaxed), cpu, "its own sighting");
        seen[2].store(cpu + 1, Ordering::Relaxed);
        assert!(!shares_a_cpu(Some(0)), "the other on another CPU");
        assert!(!shares_a_cpu(None), "not a worker");

        // A worker looks again only every LOOK_EVERY requests.
        enter_worker(0);
        seen[1].store(cpu, Ordering::Relaxed);
        let sharing = || WORKER.with(|worker| worker.sharing.get());
        for _ in 1..LOOK_EVERY {
            request_started();
        }
        assert!(!sharing(), "not looked yet");
        request_started();
        assert!(sharing(), "worker 1 last seen on its CPU");
        seen[1].store(NONE, Ordering::Relaxed);
        for _ in 0..LOOK_EVERY {
            request_started();
        }
        assert!(!sharing(), "worker 1 gone from its CPU");
    }
}
