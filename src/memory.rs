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
