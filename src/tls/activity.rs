//! Per-connection idle and stall detection, in place of per-request timers.
//!
//! hyper's HTTP/1.1 `header_read_timeout` arms (resets) a timer for every
//! request on a keep-alive connection; on a warm review that cost about 12 %
//! of throughput. Here each request touches a few atomics and reads the
//! clock when it starts and when it finishes, and one ticker per connection
//! looks at them a few times per timeout period. The protection is the same,
//! at a per-connection cost:
//!
//! - idle: a connection with no request in flight for longer than its idle
//!   limit is closed. For HTTP/1.1 the limit is the header-read timeout,
//!   which covers both a keep-alive connection nobody uses and a client that
//!   trickles a request's headers (slowloris): headers are read while no
//!   request is in flight, because hyper calls the service only once they
//!   are complete. HTTP/2 connections have their own, longer idle limit.
//! - stalled: a request (an HTTP/1.1 request or one HTTP/2 stream) in flight
//!   for longer than the stall timeout closes its connection. That covers a
//!   client that trickles a request body, which the handler waits for. Each
//!   request is timed from its own start: other requests finishing on the
//!   same connection (a `/healthz` every few seconds beside a stalled
//!   upload) do not hide it.
//!
//! Requests in flight are counted per *epoch* (a quarter of the stall
//! timeout) in which they started, in a ring of [`RING`] counters: a
//! non-empty counter more than [`YOUNG_EPOCHS`] epochs old is a stall. A
//! close is detected between the limit and about 1.5 × the limit.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::Request;

use super::limits::{Charge, Charged, PeerSlot};

/// Counters in the ring of start epochs.
const RING: usize = 8;
/// Epochs (the current one and this many before it) whose requests are not
/// stalled yet: four epochs are the stall timeout.
const YOUNG_EPOCHS: u64 = 4;

/// What one connection has been doing, shared by its requests and its
/// ticker.
#[derive(Debug)]
pub(crate) struct Activity {
    opened: Instant,
    /// Length of an epoch in milliseconds (a quarter of the stall timeout).
    epoch_ms: u64,
    in_flight: AtomicU32,
    /// Milliseconds after `opened` of the last change that ends or starts
    /// an idle period: a request finished, or one started on an idle
    /// connection.
    mark_ms: AtomicU64,
    /// Requests in flight by the epoch they started in, modulo [`RING`].
    started: [AtomicU32; RING],
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// No request in flight for longer than the idle limit.
    Idle,
    /// A request in flight for longer than the stall limit.
    Stalled,
}

impl Expired {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Expired::Idle => "no request in flight within the idle limit",
            Expired::Stalled => "a request was in flight for longer than the stall timeout",
        }
    }
}

impl Activity {
    /// `stall` sets the epoch length; [`expired`](Self::expired) must be
    /// given the same value.
    pub(crate) fn new(stall: Duration) -> Arc<Self> {
        let epoch_ms = u64::try_from((stall / 4).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Arc::new(Activity {
            opened: Instant::now(),
            epoch_ms,
            in_flight: AtomicU32::new(0),
            mark_ms: AtomicU64::new(0),
            started: std::array::from_fn(|_| AtomicU32::new(0)),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn counter(&self, epoch: u64) -> &AtomicU32 {
        // The remainder is below RING, so the index is in bounds.
        &self.started[(epoch % RING as u64) as usize]
    }

    /// A request was dispatched to the service; the returned guard marks it
    /// finished when dropped (completed or cancelled).
    fn start(self: &Arc<Self>) -> Finish {
        let now = self.now_ms();
        let epoch = now / self.epoch_ms;
        self.counter(epoch).fetch_add(1, Ordering::AcqRel);
        if self.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            self.mark_ms.store(now, Ordering::Release);
        }
        Finish {
            activity: Arc::clone(self),
            epoch,
        }
    }

    /// Whether the connection should be closed now. `idle` is `None` for
    /// connections that may stay idle indefinitely.
    pub(crate) fn expired(&self, idle: Option<Duration>) -> Option<Expired> {
        let now = self.now_ms();
        let head = (now / self.epoch_ms) % RING as u64;
        // A counter's age in epochs is its distance behind the current one.
        let stalled = (0..RING as u64).any(|slot| {
            let age = (head + RING as u64 - slot) % RING as u64;
            age > YOUNG_EPOCHS && self.counter(slot).load(Ordering::Acquire) > 0
        });
        if stalled {
            return Some(Expired::Stalled);
        }
        let in_flight = self.in_flight.load(Ordering::Acquire);
        let mark = self.mark_ms.load(Ordering::Acquire);
        let quiet = Duration::from_millis(now.saturating_sub(mark));
        match (in_flight, idle) {
            (0, Some(limit)) if quiet > limit => Some(Expired::Idle),
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
struct Finish {
    activity: Arc<Activity>,
    /// The epoch the request started in.
    epoch: u64,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let activity = &self.activity;
        activity.counter(self.epoch).fetch_sub(1, Ordering::AcqRel);
        // Mark before decrementing, so a ticker that sees zero in flight
        // also sees this finish time.
        activity.mark_ms.store(activity.now_ms(), Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A hyper service that records its requests in an [`Activity`] and
/// charges their body bytes to the connection's peer (see `limits`).
#[derive(Debug, Clone)]
pub(crate) struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    peer: Arc<PeerSlot>,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>, peer: Arc<PeerSlot>) -> Self {
        Tracked {
            inner,
            activity,
            peer,
        }
    }
}

impl<S, B> hyper::service::Service<Request<B>> for Tracked<S>
where
    S: hyper::service::Service<Request<Charged<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<B>) -> Self::Future {
        let finish = self.activity.start();
        let charge = self.peer.charge();
        let req = req.map(|body| Charged::new(body, Arc::clone(&charge)));
        TrackedFuture {
            inner: self.inner.call(req),
            _finish: finish,
            _charge: charge,
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's future, holding the request's [`Finish`] guard and
    /// its body bytes' [`Charge`]: both end with the request, however it
    /// ends.
    pub(crate) struct TrackedFuture<F> {
        #[pin]
        inner: F,
        _finish: Finish,
        _charge: Arc<Charge>,
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
    fn idle_connection_expires_and_busy_one_does_not() {
        let idle = Some(Duration::from_millis(50));
        let activity = Activity::new(Duration::from_secs(60));
        assert_eq!(activity.expired(idle), None);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(activity.expired(idle), Some(Expired::Idle));
        // Without an idle limit a connection may idle.
        assert_eq!(activity.expired(None), None);

        // A request in flight is not idle, however long the connection was.
        let guard = activity.start();
        assert_eq!(activity.expired(idle), None);
        drop(guard);
        // Finishing restarts the idle clock.
        assert_eq!(activity.expired(idle), None);
    }

    #[test]
    fn each_request_is_timed_from_its_own_start() {
        // Epochs of 100 ms: a request is stalled after 400 to 500 ms (and
        // seen as young again, wrongly, after 800 ms: the ticker looks more
        // often than that).
        let activity = Activity::new(Duration::from_millis(400));
        std::thread::sleep(Duration::from_millis(50));
        let first = activity.start();
        assert_eq!(activity.expired(None), None);
        // Requests that start and finish meanwhile are no progress for the
        // first one.
        let until = Instant::now() + Duration::from_millis(550);
        while Instant::now() < until {
            drop(activity.start());
            std::thread::sleep(Duration::from_millis(5));
        }
        let second = activity.start();
        assert_eq!(activity.expired(None), Some(Expired::Stalled));
        drop(first);
        // The second request is young.
        assert_eq!(activity.expired(None), None);
        std::thread::sleep(Duration::from_millis(550));
        assert_eq!(activity.expired(None), Some(Expired::Stalled));
        drop(second);
        assert_eq!(activity.expired(None), None);
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
