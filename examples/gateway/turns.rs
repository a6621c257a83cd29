//! Workers that share a CPU take turns of the scheduler's slice, not of
//! its tick.
//!
//! Linux's scheduler (EEVDF, since 6.6) gives each runnable thread a slice
//! of CPU time (on two CPUs 1.4 ms since 6.15, 1.5 ms before), but sees
//! that the running thread has used its slice up only when something makes
//! it account for that thread's time: the timer tick (every 4 ms at
//! `CONFIG_HZ=250`), a wake-up on the same CPU, or a read of the thread's
//! own CPU clock, among others. A worker under load never sleeps, so when
//! the kernel puts two workers on one CPU, each ran until the tick and the
//! other's connections waited the whole 4 ms: a p99 of 4.7 to 6.2 ms where
//! HAProxy's two threads, on one CPU the same way, kept 2.6 to 2.9 ms
//! (BENCHMARKS.md). HAProxy reads its threads' CPU clocks on each pass of
//! its event loop, for its own accounting.
//!
//! Here a worker looks every [`LOOK_EVERY`] requests at which CPU it is
//! on, and whether another worker was seen on the same one in the last
//! [`FRESH_MS`] milliseconds; while so, it reads its own CPU clock every
//! [`EVERY`] requests, which lets the kernel switch to the other at the
//! end of the slice. Not on a CPU of its own: there it would only hand
//! the CPU to the load generator or a backend sooner, and a worker that
//! did so every time served fewer requests at a higher p99
//! (BENCHMARKS.md). A worker notices a change within its next
//! [`LOOK_EVERY`] requests. Each look or read costs at most one system
//! call (glibc, which rustix calls here, finds the CPU without one: in
//! the area the kernel keeps for restartable sequences, or the vDSO); an
//! idle worker makes none. Before Linux 6.6 the scheduler checked slices
//! only at the tick, and the read changes nothing.
//!
//! Elsewhere than Linux this does nothing.

use std::cell::Cell;
use std::sync::atomic::AtomicU64;
#[cfg(target_os = "linux")]
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Instant;

/// Requests between two reads of a worker's CPU clock while it shares a
/// CPU: about a quarter of a millisecond of its CPU time (some 15 µs a
/// request here, the kernel's part included), a sixth of its slice.
pub const EVERY: u32 = 16;

/// Requests between two looks at which CPU a worker is on.
pub const LOOK_EVERY: u32 = 64;

/// How long a sighting of a worker counts: a worker that has gone quiet
/// since shares nothing. Longer than a worker waits for a shared CPU (a
/// tick at most) and than its [`LOOK_EVERY`] requests take under load.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub const FRESH_MS: u32 = 20;

/// Where and when each worker was last seen, by index, as
/// [`sighting`] packs them; [`NONE`] before its first look.
static SEEN: OnceLock<Box<[AtomicU64]>> = OnceLock::new();

const NONE: u64 = u64::MAX;

/// Milliseconds since the first call, wrapping.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn now_ms() -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u32
}

/// A worker seen on `cpu` at `ms`, in one word.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn sighting(cpu: u32, ms: u32) -> u64 {
    (u64::from(ms) << 32) | u64::from(cpu)
}

/// What a worker thread keeps between requests.
struct Worker {
    started: Cell<u32>,
    /// Whether another worker was on its CPU at its last look.
    sharing: Cell<bool>,
}

thread_local! {
    static WORKER: Worker = const {
        Worker {
            started: Cell::new(0),
            sharing: Cell::new(false),
        }
    };
}

/// Makes room for `workers` workers; called once, before they start (a
/// later call changes nothing).
pub fn init(workers: usize) {
    let _ = SEEN.set((0..workers).map(|_| AtomicU64::new(NONE)).collect());
}

/// Counts a request started on the calling worker; see the module.
pub fn request_started() {
    WORKER.with(|worker| {
        let started = worker.started.get().wrapping_add(1);
        worker.started.set(started);
        if started % LOOK_EVERY == 0 {
            worker.sharing.set(shares_a_cpu(crate::worker::index()));
        }
        if started % EVERY == 0 && worker.sharing.get() {
            read_cpu_clock();
        }
    });
}

/// Whether another worker was seen in the last [`FRESH_MS`] on the CPU
/// the worker `index` is on now, which it records.
#[cfg(target_os = "linux")]
fn shares_a_cpu(index: Option<usize>) -> bool {
    let (Some(index), Some(seen)) = (index, SEEN.get()) else {
        return false;
    };
    // CPU numbers fit in 32 bits (the kernel's own limit is 8,192).
    let cpu = rustix::thread::sched_getcpu() as u32;
    let now = now_ms();
    if let Some(mine) = seen.get(index) {
        mine.store(sighting(cpu, now), Ordering::Relaxed);
    }
    seen.iter().enumerate().any(|(other, at)| {
        let at = at.load(Ordering::Relaxed);
        other != index
            && at != NONE
            && at as u32 == cpu
            && now.wrapping_sub((at >> 32) as u32) <= FRESH_MS
    })
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
    fn a_worker_shares_a_cpu_only_with_a_worker_seen_there_lately() {
        // Kept where it is, so that the CPU it looks up is this one.
        let cpu = rustix::thread::sched_getcpu();
        let mut here = rustix::thread::CpuSet::new();
        here.set(cpu);
        rustix::thread::sched_setaffinity(None, &here).unwrap();
        let cpu = cpu as u32;
        init(3);
        let seen = SEEN.get().unwrap();
        let seen_at = |worker: usize, cpu: u32, ms_ago: u32| {
            let at = sighting(cpu, now_ms().wrapping_sub(ms_ago));
            seen[worker].store(at, Ordering::Relaxed);
        };

        assert!(!shares_a_cpu(Some(0)), "no other worker seen yet");
        assert_eq!(
            seen[0].load(Ordering::Relaxed) as u32,
            cpu,
            "its own sighting"
        );
        seen_at(2, cpu + 1, 0);
        assert!(!shares_a_cpu(Some(0)), "the other on another CPU");
        seen_at(1, cpu, FRESH_MS * 5);
        assert!(!shares_a_cpu(Some(0)), "the other gone quiet since");
        assert!(!shares_a_cpu(None), "not a worker");

        // A worker looks again only every LOOK_EVERY requests.
        crate::worker::enter(0);
        seen_at(1, cpu, 0);
        let sharing = || WORKER.with(|worker| worker.sharing.get());
        for _ in 1..LOOK_EVERY {
            request_started();
        }
        assert!(!sharing(), "not looked yet");
        request_started();
        assert!(sharing(), "worker 1 seen on its CPU just now");
        seen[1].store(NONE, Ordering::Relaxed);
        for _ in 0..LOOK_EVERY {
            request_started();
        }
        assert!(!sharing(), "worker 1 gone from its CPU");
    }
}
