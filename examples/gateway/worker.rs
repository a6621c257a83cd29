//! Which worker the calling thread is: each worker keeps its own idle
//! connections and counters (`proxy`) and looks at which CPU it is on
//! (`turns`), by this one index.

use std::cell::Cell;

thread_local! {
    /// 1 + the worker's index; 0 on a thread that is not a worker.
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as worker `index` (from 0).
pub fn enter(index: usize) {
    SLOT.with(|slot| slot.set(index + 1));
}

/// The calling thread's worker index; `None` off the workers.
pub fn index() -> Option<usize> {
    slot().checked_sub(1)
}

/// The calling thread's place in a table with one entry for the threads
/// that are not workers (0) and then one per worker (1 + its index).
pub fn slot() -> usize {
    SLOT.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_is_no_worker_until_it_enters() {
        std::thread::spawn(|| {
            assert_eq!((index(), slot()), (None, 0));
            enter(2);
            assert_eq!((index(), slot()), (Some(2), 3));
        })
        .join()
        .unwrap();
    }
}
