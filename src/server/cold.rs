//! Bounded, single-flight execution of cold checksum computations.
//!
//! A cold checksum reads and hashes megabytes on a blocking thread. Left
//! alone, a burst of them (many new revisions at once, or a client sending
//! made-up ones) would each get a thread of tokio's blocking pool (up to
//! 512), share two cores, and all finish late, after the API server gave
//! up. Instead:
//!
//! - requests for the same key (commit, overlay) share one computation: a
//!   push followed by a controller applying 200 objects at the new revision
//!   computes once;
//! - at most `concurrency` computations run at once (the number of cores),
//!   and a computation keeps its slot until it ends, even if every request
//!   waiting for it has given up (it fills the cache for the retry);
//! - at most `max_queued` distinct computations wait for a slot; beyond
//!   that a request is refused at once ([`ColdError::Overloaded`]) instead
//!   of queueing until its deadline.
//!
//! Waiting is bounded by the caller's deadline (the future can be dropped at
//! any point).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{OnceCell, Semaphore};

/// Why no value was produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColdError {
    /// Too many distinct computations already wait for a slot.
    Overloaded { queued: usize },
    /// The computation panicked (a bug); the message says where.
    Failed(String),
}

pub struct ColdWork<K, V> {
    permits: Arc<Semaphore>,
    max_queued: usize,
    queued: AtomicUsize,
    in_flight: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K, V> ColdWork<K, V>
where
    K: Hash + Eq + Clone,
    V: Clone + Send + 'static,
{
    pub fn new(concurrency: usize, max_queued: usize) -> Self {
        ColdWork {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            max_queued,
            queued: AtomicUsize::new(0),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Computations waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The value for `key`: computed by `work` on a blocking thread, or
    /// shared with a computation of the same key already under way.
    pub async fn run<F>(&self, key: K, work: F) -> Result<V, ColdError>
    where
        F: FnOnce() -> V + Send + 'static,
    {
        let member = self.join(key);
        let value = member
            .cell
            .get_or_try_init(|| self.compute(work))
            .await
            .cloned();
        drop(member);
        value
    }

    fn join(&self, key: K) -> Member<'_, K, V> {
        let mut map = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let cell = Arc::clone(map.entry(key.clone()).or_default());
        Member {
            map: &self.in_flight,
            key,
            cell,
        }
    }

    async fn compute<F>(&self, work: F) -> Result<V, ColdError>
    where
        F: FnOnce() -> V + Send + 'static,
    {
        let permit = {
            let _slot = QueueSlot::take(&self.queued, self.max_queued)?;
            // The semaphore is never closed.
            Arc::clone(&self.permits)
                .acquire_owned()
                .await
                .map_err(|e| ColdError::Failed(e.to_string()))?
        };
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| ColdError::Failed(format!("checksum task failed: {e}")))
    }
}

/// One request's interest in a key; the last one out removes the entry
/// (whether the value was produced or every waiter gave up).
struct Member<'a, K: Hash + Eq, V> {
    map: &'a Mutex<HashMap<K, Arc<OnceCell<V>>>>,
    key: K,
    cell: Arc<OnceCell<V>>,
}

impl<K: Hash + Eq, V> Drop for Member<'_, K, V> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        // Joins happen under this lock, so the count is exact: the map's
        // reference and ours mean nobody else waits.
        let ours = map
            .get(&self.key)
            .is_some_and(|cell| Arc::ptr_eq(cell, &self.cell));
        if ours && (self.cell.initialized() || Arc::strong_count(&self.cell) == 2) {
            map.remove(&self.key);
        }
    }
}

/// A place in the queue for a slot, given back when dropped.
struct QueueSlot<'a>(&'a AtomicUsize);

impl<'a> QueueSlot<'a> {
    fn take(queued: &'a AtomicUsize, max: usize) -> Result<Self, ColdError> {
        queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map(|_| QueueSlot(queued))
            .map_err(|queued| ColdError::Overloaded { queued })
    }
}

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_for_one_key_share_one_computation() {
        let work = Arc::new(ColdWork::<u32, u32>::new(2, 8));
        let runs = Arc::new(AtomicU32::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let work = Arc::clone(&work);
            let runs = Arc::clone(&runs);
            tasks.spawn(async move {
                work.run(7, move || {
                    runs.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                    42
                })
                .await
            });
        }
        while let Some(result) = tasks.join_next().await {
            assert_eq!(result.unwrap(), Ok(42));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(work.in_flight.lock().unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrency_is_bounded_and_excess_is_refused_at_once() {
        let work = Arc::new(ColdWork::<u32, u32>::new(2, 3));
        let running = Arc::new(AtomicU32::new(0));
        let peak = Arc::new(AtomicU32::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for key in 0..5 {
            let work = Arc::clone(&work);
            let (running, peak) = (Arc::clone(&running), Arc::clone(&peak));
            tasks.spawn(async move {
                work.run(key, move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(200));
                    running.fetch_sub(1, Ordering::SeqCst);
                    key
                })
                .await
            });
        }
        // Two run, three wait: the queue is full.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while work.queued() < 3 {
            assert!(std::time::Instant::now() < deadline, "queue never filled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = std::time::Instant::now();
        assert_eq!(
            work.run(99, || 0).await,
            Err(ColdError::Overloaded { queued: 3 })
        );
        assert!(started.elapsed() < Duration::from_millis(100));
        // A key already under way is joined, not refused.
        assert_eq!(work.run(4, || 1000).await, Ok(4));
        while let Some(result) = tasks.join_next().await {
            assert!(result.unwrap().is_ok());
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert_eq!(work.queued(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_computation_keeps_its_slot_after_its_waiters_give_up() {
        let work = Arc::new(ColdWork::<u32, u32>::new(1, 8));
        let abandoned = tokio::time::timeout(
            Duration::from_millis(50),
            work.run(1, || {
                std::thread::sleep(Duration::from_millis(300));
                1
            }),
        )
        .await;
        assert!(abandoned.is_err());
        // The entry is gone (nobody waits), but the slot is still taken.
        assert!(work.in_flight.lock().unwrap().is_empty());
        let started = std::time::Instant::now();
        assert_eq!(work.run(2, || 2).await, Ok(2));
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "ran beside the abandoned computation after {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_panicking_computation_is_an_error_not_a_panic() {
        let work = ColdWork::<u32, u32>::new(1, 8);
        let result = work.run(1, || panic!("boom")).await;
        assert!(matches!(result, Err(ColdError::Failed(m)) if m.contains("panic")));
        assert_eq!(work.run(1, || 5).await, Ok(5));
    }
}
