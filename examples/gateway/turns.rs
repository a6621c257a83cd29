//! Workers that share a CPU take turns of the scheduler's slice, not of
//! its tick.
//!
//! Linux gives each runnable thread a slice of CPU time (1.5 ms on two
//! CPUs, by default), but sees that the running thread has used its slice
//! up only when something makes it account for that thread's time: the
//! timer tick (every 4 ms at `CONFIG_HZ=250`), a wake-up on the same CPU,
//! or a read of the thread's own CPU clock. A worker under load never
//! sleeps, so when the kernel puts two workers on one CPU, each runs until
//! the tick and the other's connections wait the whole 4 ms: a p99 of 4.7
//! to 6.2 ms where HAProxy's two threads, on one CPU the same way, kept
//! 2.6 to 2.9 ms (BENCHMARKS.md). HAProxy reads its threads' CPU clocks
//! once per turn of its event loop, for its own accounting; a worker here
//! reads its clock every [`EVERY`] requests, which lets the kernel switch
//! at the end of the slice. It costs one system call per [`EVERY`]
//! requests (about 0.2 µs), and nothing on an idle worker.
//!
//! Elsewhere than Linux this does nothing.

/// Requests between two reads of a worker's CPU clock: about half a
/// millisecond of a busy worker's time, a third of its slice.
pub const EVERY: u32 = 16;

thread_local! {
    /// Requests this thread has started since it last read its clock.
    static STARTED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Counts a request started on the calling thread, and every [`EVERY`]
/// requests reads the thread's CPU clock.
pub fn request_started() {
    STARTED.with(|started| {
        let count = started.get() + 1;
        if count < EVERY {
            started.set(count);
            return;
        }
        started.set(0);
        #[cfg(target_os = "linux")]
        {
            let _ = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        }
    });
}
