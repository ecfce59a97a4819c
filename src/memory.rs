//! Giving freed heap memory back to the operating system.
//!
//! glibc's malloc keeps the pages of freed chunks in its arenas (one per
//! thread that allocated, up to eight per core) and returns them only from
//! the top of an arena. A long-running server whose caches turn over slowly
//! therefore holds more and more pages that no object uses: in the soaks
//! resident anonymous memory creeps while the live heap stays small
//! (docs/reliability.md, "Memory"). `malloc_trim(0)` walks
//! every arena and releases whole free pages wherever they are, so the
//! server calls it on a timer. Other C libraries (musl) have nothing to
//! trim and the timer is not started.

use std::future::Future;
use std::time::{Duration, Instant};

/// Whether this build can trim (linked against glibc).
const CAN_TRIM: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// Releases the allocator's free pages to the OS. Returns whether any
/// memory was released; always `false` where the C library cannot trim.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes a plain integer, touches only the
        // allocator's own state under its arena locks, and is documented
        // as safe to call from any thread at any time.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Calls [`trim`] every `every` until `shutdown` completes. Does nothing
/// when `every` is zero or the C library cannot trim.
///
/// The call runs on the runtime's own thread: it takes a few hundred
/// microseconds on heaps of this size (docs/reliability.md, "Memory"), and
/// a blocking thread would bring a malloc arena of its own.
pub fn spawn_trimmer(every: Duration, shutdown: impl Future<Output = ()> + Send + 'static) {
    if every.is_zero() || !CAN_TRIM {
        return;
    }
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = ticks.tick() => {
                    let started = Instant::now();
                    let released = trim();
                    tracing::debug!(
                        released,
                        micros = started.elapsed().as_micros() as u64,
                        "malloc_trim"
                    );
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Freed pages in the middle of the heap are given back: allocate many
    /// small blocks, free all but a few spread through them (so the top of
    /// the heap cannot shrink on its own), and trim.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn trim_releases_free_pages_in_the_middle_of_the_heap() {
        let mut blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![i as u8; 1000]).collect();
        let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(997).map(std::mem::take).collect();
        drop(blocks);
        // Something was free and page-sized, so something was released.
        assert!(trim(), "malloc_trim released nothing");
        assert!(kept.iter().all(|b| b.len() == 1000));
    }
}
