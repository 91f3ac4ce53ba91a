//! Giving memory back once a load has gone (issue 28, item 6). mimalloc puts a block freed
//! by another thread than the one that allocated it on its page's list of remote frees, and
//! only the owning thread collects that list, when it next allocates from the page. A
//! runtime thread that goes idle after a burst (sockets opened on one thread, closed and
//! freed on another) so kept tens of megabytes of empty pages that the purge never saw:
//! after 4 rounds of 5000 sockets, RSS stayed at 4.3 times its figure before the load
//! (BENCHMARKS.md, session 17). Each runtime thread therefore collects its own heap when it
//! parks, at most once a second.
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

// Links mimalloc into every binary of this crate, tests included, for `mi_collect` below
// (only the service's binary makes it the allocator).
use mimalloc as _;

unsafe extern "C" {
    /// mimalloc's own (in every build of it; the Rust bindings expose it only with their
    /// `extended` feature).
    fn mi_collect(force: bool);
}

/// Least time between two collections on one thread.
const EVERY: Duration = Duration::from_secs(1);

/// Set by the binary, whose global allocator is mimalloc; tests run on the system's.
static ENABLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Turns `on_park` on: call only where mimalloc is the global allocator.
pub fn enable() {
    ENABLED.store(true, Relaxed);
}

/// A runtime thread is about to park (it has nothing to do): collect its heap, if it has
/// not in the last second.
pub fn on_park() {
    if !ENABLED.load(Relaxed) {
        return;
    }
    LAST.with(|last| {
        let now = Instant::now();
        if last.get().is_some_and(|t| now.duration_since(t) < EVERY) {
            return;
        }
        last.set(Some(now));
        // SAFETY: takes a plain flag; collects the calling thread's own heap only.
        unsafe { mi_collect(false) };
    });
    trim_system_heap();
}

/// Least time between two trims of the C library's heap, process-wide.
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// SQLite (through sqlx's worker threads) allocates with the C library's `malloc`, not
/// mimalloc: page caches and statements, in per-thread arenas that glibc keeps once freed.
/// After a burst they held most of what the process kept over its figure before the load
/// (`bench/burst.sh`, anonymous memory: BENCHMARKS.md, session 18). Those threads are not
/// the runtime's and have no park hook, so a parking runtime thread trims every arena for
/// them, at most every `TRIM_EVERY`.
fn trim_system_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static LAST: parking_lot::Mutex<Option<Instant>> = parking_lot::Mutex::new(None);
        // Another thread trimming right now: nothing for this one to do.
        let Some(mut last) = LAST.try_lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < TRIM_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        // SAFETY: glibc's malloc_trim takes a size and touches only free memory.
        unsafe { libc::malloc_trim(0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_collects_at_most_once_a_second() {
        // Off until the binary turns it on: a park does nothing.
        std::thread::spawn(|| {
            on_park();
            assert!(LAST.with(Cell::get).is_none());
        })
        .join()
        .expect("thread");
        enable();
        std::thread::spawn(|| {
            on_park();
            let first = LAST.with(Cell::get).expect("collected on the first park");
            on_park();
            assert_eq!(
                LAST.with(Cell::get),
                Some(first),
                "collected again within 1 s"
            );
            // Once a second has passed, the next park collects again.
            LAST.with(|l| l.set(Some(first - EVERY)));
            on_park();
            assert!(LAST.with(Cell::get).is_some_and(|t| t > first - EVERY));
        })
        .join()
        .expect("thread");
    }
}
