//! `--pin-workers`: each worker thread kept on one CPU, as nginx's
//! `worker_cpu_affinity` and HAProxy's `cpu-map` do. Linux only; elsewhere
//! the flag warns and the workers run where the system puts them.

/// The CPUs a thread could run on before it was pinned, for the threads
/// it starts later (its runtime's blocking pool, which resolves backend
/// host names) to go back to: pinned, they would compete with the worker
/// for its one CPU.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub struct Unpinned(#[cfg(target_os = "linux")] rustix::thread::CpuSet);

#[cfg(target_os = "linux")]
mod imp {
    use super::Unpinned;
    use rustix::thread::{gettid, sched_getaffinity, sched_setaffinity, CpuSet};

    /// The CPUs this process may run on, in order; none (and a warning)
    /// if the kernel will not say.
    pub fn allowed() -> Vec<usize> {
        match sched_getaffinity(None) {
            Ok(set) => (0..CpuSet::MAX_CPU)
                .filter(|&cpu| set.is_set(cpu))
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "--pin-workers: cannot read the CPUs allowed; workers left unpinned");
                Vec::new()
            }
        }
    }

    /// Keeps the calling thread, worker `index`, on `cpu`; a failure is
    /// logged and leaves it unpinned.
    pub fn pin(index: usize, cpu: usize) -> Option<Unpinned> {
        let before = sched_getaffinity(None);
        let mut set = CpuSet::new();
        set.set(cpu);
        match before.and_then(|before| sched_setaffinity(None, &set).map(|()| before)) {
            Ok(before) => {
                let thread = gettid().as_raw_nonzero().get();
                tracing::info!(worker = index, cpu, thread, "worker pinned");
                Some(Unpinned(before))
            }
            Err(error) => {
                tracing::warn!(worker = index, cpu, %error, "worker left unpinned");
                None
            }
        }
    }

    impl Unpinned {
        /// Lets the calling thread run on the CPUs its pinned parent could
        /// before.
        pub fn restore(&self) {
            if let Err(error) = sched_setaffinity(None, &self.0) {
                tracing::warn!(%error, "a worker's helper thread left on the worker's CPU");
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::Unpinned;

    /// None: pinning is Linux only here.
    pub fn allowed() -> Vec<usize> {
        tracing::warn!("--pin-workers pins threads on Linux only; workers left unpinned");
        Vec::new()
    }

    /// Never called without CPUs from [`allowed`].
    pub fn pin(_index: usize, _cpu: usize) -> Option<Unpinned> {
        None
    }

    impl Unpinned {
        /// Nothing was pinned.
        pub fn restore(&self) {}
    }
}

pub use imp::{allowed, pin};
