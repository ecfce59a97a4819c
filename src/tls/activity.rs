//! Per-connection idle and stall detection, in place of per-request timers.
//!
//! hyper's HTTP/1.1 `header_read_timeout` arms (resets) a timer for every
//! request on a keep-alive connection; on a warm review that cost about 12 %
//! of throughput. Here each request only touches two atomics (and reads the
//! clock when the connection goes from idle to busy and when a request
//! finishes), and one ticker per connection looks at them a few times per
//! timeout period. The protection is the same, at a per-connection cost:
//!
//! - idle: an HTTP/1.1 connection with no request in flight for longer than
//!   the header-read timeout is closed. That covers both a keep-alive
//!   connection nobody uses and a client that trickles a request's headers
//!   (slowloris): headers are read while no request is in flight, because
//!   hyper calls the service only once they are complete.
//! - stalled: a connection (HTTP/1.1 or HTTP/2) with requests in flight and
//!   none finished for longer than the stall timeout is closed. That covers
//!   a client that trickles a request body, which the handler waits for.
//!
//! A close is detected between the limit and 1.25 × the limit.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// What one connection has been doing, shared by its requests and its
/// ticker.
#[derive(Debug)]
pub(crate) struct Activity {
    opened: Instant,
    in_flight: AtomicU32,
    /// Milliseconds after `opened` of the last change that counts as
    /// progress: a request finished, or one started on an idle connection.
    mark_ms: AtomicU64,
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// No request in flight for longer than the idle limit.
    Idle,
    /// Requests in flight and none finished for longer than the stall limit.
    Stalled,
}

impl Expired {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Expired::Idle => "no complete request within the header-read timeout",
            Expired::Stalled => "requests in flight made no progress within the stall timeout",
        }
    }
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Activity {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            mark_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request was dispatched to the service; the returned guard marks it
    /// finished when dropped (completed or cancelled).
    fn start(self: &Arc<Self>) -> Finish {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            self.mark_ms.store(self.now_ms(), Ordering::Release);
        }
        Finish(Arc::clone(self))
    }

    /// Whether the connection should be closed now. `idle` is `None` for
    /// connections that may stay idle (HTTP/2: the API server keeps them
    /// open; its keep-alive pings find dead peers).
    pub(crate) fn expired(&self, idle: Option<Duration>, stall: Duration) -> Option<Expired> {
        let in_flight = self.in_flight.load(Ordering::Acquire);
        let mark = self.mark_ms.load(Ordering::Acquire);
        let quiet = Duration::from_millis(self.now_ms().saturating_sub(mark));
        match (in_flight, idle) {
            (0, Some(limit)) if quiet > limit => Some(Expired::Idle),
            (0, _) => None,
            (_, _) if quiet > stall => Some(Expired::Stalled),
            _ => None,
        }
    }

    /// How often [`expired`](Self::expired) should be asked.
    pub(crate) fn check_period(idle: Option<Duration>, stall: Duration) -> Duration {
        let shortest = idle.map_or(stall, |idle| idle.min(stall));
        (shortest / 4).max(Duration::from_millis(10))
    }
}

/// Marks one request finished when dropped.
#[derive(Debug)]
struct Finish(Arc<Activity>);

impl Drop for Finish {
    fn drop(&mut self) {
        // Mark before decrementing, so a ticker that sees zero in flight
        // also sees this finish time.
        self.0.mark_ms.store(self.0.now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A hyper service that records its requests in an [`Activity`].
#[derive(Debug, Clone)]
pub(crate) struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Tracked { inner, activity }
    }
}

impl<S, R> hyper::service::Service<R> for Tracked<S>
where
    S: hyper::service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: R) -> Self::Future {
        let finish = self.activity.start();
        TrackedFuture {
            inner: self.inner.call(req),
            _finish: finish,
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's future, holding the request's [`Finish`] guard.
    pub(crate) struct TrackedFuture<F> {
        #[pin]
        inner: F,
        _finish: Finish,
    }
}

impl<F: Future> Future for TrackedFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_http1_connection_expires_and_busy_one_does_not() {
        let idle = Some(Duration::from_millis(50));
        let stall = Duration::from_secs(60);
        let activity = Activity::new();
        assert_eq!(activity.expired(idle, stall), None);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(activity.expired(idle, stall), Some(Expired::Idle));
        // HTTP/2 may idle.
        assert_eq!(activity.expired(None, stall), None);

        // A request in flight is not idle, however long the connection was.
        let guard = activity.start();
        assert_eq!(activity.expired(idle, stall), None);
        drop(guard);
        // Finishing is progress: the idle clock starts again.
        assert_eq!(activity.expired(idle, stall), None);
    }

    #[test]
    fn requests_in_flight_without_progress_are_a_stall() {
        let stall = Duration::from_millis(50);
        let activity = Activity::new();
        std::thread::sleep(Duration::from_millis(80));
        let first = activity.start();
        // Starting on an idle connection is progress.
        assert_eq!(activity.expired(None, stall), None);
        std::thread::sleep(Duration::from_millis(80));
        // A second request does not hide the first one's stall.
        let second = activity.start();
        assert_eq!(activity.expired(None, stall), Some(Expired::Stalled));
        drop(second);
        assert_eq!(activity.expired(None, stall), None);
        drop(first);
        assert_eq!(activity.in_flight.load(Ordering::Acquire), 0);
    }

    #[test]
    fn check_period_is_a_quarter_of_the_shortest_limit() {
        let s = Duration::from_secs;
        assert_eq!(Activity::check_period(Some(s(10)), s(60)), s(10) / 4);
        assert_eq!(Activity::check_period(None, s(60)), s(15));
        assert_eq!(
            Activity::check_period(Some(Duration::ZERO), s(60)),
            Duration::from_millis(10)
        );
    }
}
