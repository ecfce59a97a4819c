//! Limits shared by all connections of a listener: connections per peer
//! address, and the budget of request body bytes being received.
//!
//! Request bodies are buffered whole before a review is parsed (up to
//! 8 MiB each). Without a global bound, many connections or HTTP/2 streams
//! each holding an almost complete body grow the process without limit.
//! Every request therefore gets a [`Charge`]: each body frame reserves its
//! length from the listener's budget, and from its peer address's share of
//! it, before the frame reaches the handler. A frame that does not fit
//! fails the body with [`BodyBudgetExceeded`] at once (the handler answers
//! 503); nothing waits for budget. The reservation is released when the
//! request's service future completes or is dropped, whichever way the
//! request ends.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, SizeHint};

/// Why a request body was refused: the budget of body bytes being received
/// (all clients, or this client's share) is in use. The handler that reads
/// the body can find this error in its rejection's source chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyBudgetExceeded {
    /// The limit that was reached, in bytes.
    pub limit: usize,
    /// Whether it was the peer address's share rather than the whole budget.
    pub per_peer: bool,
}

impl fmt::Display for BodyBudgetExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whose = if self.per_peer {
            "this client address's share of the request body budget"
        } else {
            "the request body budget"
        };
        write!(
            f,
            "{whose} ({} bytes) is in use by requests still being received; retry later",
            self.limit
        )
    }
}

impl std::error::Error for BodyBudgetExceeded {}

/// State shared by the connections of one listener.
#[derive(Debug)]
pub(crate) struct Shared {
    budget: usize,
    budget_per_peer: usize,
    max_per_peer: usize,
    /// Body bytes reserved, all peers.
    used: AtomicUsize,
    peers: Mutex<HashMap<IpAddr, Arc<Peer>>>,
}

/// One peer address: its connections and its body bytes reserved.
#[derive(Debug, Default)]
pub(crate) struct Peer {
    /// Changed under the `peers` lock only.
    connections: AtomicUsize,
    bytes: AtomicUsize,
}

impl Shared {
    pub(crate) fn new(budget: usize, budget_per_peer: usize, max_per_peer: usize) -> Arc<Self> {
        Arc::new(Shared {
            budget,
            budget_per_peer: budget_per_peer.min(budget),
            max_per_peer: max_per_peer.max(1),
            used: AtomicUsize::new(0),
            peers: Mutex::new(HashMap::new()),
        })
    }

    /// A connection slot for `ip`, or `None` when that address already has
    /// the most connections allowed.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let peer = peers.entry(ip).or_default();
        if peer.connections.load(Ordering::Relaxed) >= self.max_per_peer {
            return None;
        }
        peer.connections.fetch_add(1, Ordering::Relaxed);
        Some(PeerSlot {
            shared: Arc::clone(self),
            ip,
            peer: Arc::clone(peer),
        })
    }

    /// Body bytes reserved now, all peers.
    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// One connection's place in its peer's count; released when dropped.
#[derive(Debug)]
pub(crate) struct PeerSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
    peer: Arc<Peer>,
}

impl PeerSlot {
    /// A new, empty charge for one request on this connection.
    pub(crate) fn charge(&self) -> Arc<Charge> {
        Arc::new(Charge {
            shared: Arc::clone(&self.shared),
            peer: Arc::clone(&self.peer),
            held: AtomicUsize::new(0),
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut peers = self
            .shared
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.peer.connections.fetch_sub(1, Ordering::Relaxed) == 1 {
            peers.remove(&self.ip);
        }
    }
}

/// The body bytes one request holds; all released when dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    held: AtomicUsize,
}

impl Charge {
    fn reserve(&self, n: usize) -> Result<(), BodyBudgetExceeded> {
        if n == 0 {
            return Ok(());
        }
        let shared = &self.shared;
        if shared.used.fetch_add(n, Ordering::AcqRel).saturating_add(n) > shared.budget {
            shared.used.fetch_sub(n, Ordering::AcqRel);
            return Err(BodyBudgetExceeded {
                limit: shared.budget,
                per_peer: false,
            });
        }
        let peer_limit = shared.budget_per_peer;
        if self
            .peer
            .bytes
            .fetch_add(n, Ordering::AcqRel)
            .saturating_add(n)
            > peer_limit
        {
            self.peer.bytes.fetch_sub(n, Ordering::AcqRel);
            shared.used.fetch_sub(n, Ordering::AcqRel);
            return Err(BodyBudgetExceeded {
                limit: peer_limit,
                per_peer: true,
            });
        }
        self.held.fetch_add(n, Ordering::AcqRel);
        Ok(())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let held = *self.held.get_mut();
        if held > 0 {
            self.peer.bytes.fetch_sub(held, Ordering::AcqRel);
            self.shared.used.fetch_sub(held, Ordering::AcqRel);
        }
    }
}

pin_project_lite::pin_project! {
    /// A request body whose data frames are charged to a [`Charge`] before
    /// they are handed on.
    pub(crate) struct Charged<B> {
        #[pin]
        inner: B,
        charge: Arc<Charge>,
        refused: bool,
    }
}

impl<B> Charged<B> {
    pub(crate) fn new(inner: B, charge: Arc<Charge>) -> Self {
        Charged {
            inner,
            charge,
            refused: false,
        }
    }
}

impl<B> Body for Charged<B>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.refused {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, hyper::body::Buf::remaining);
                match this.charge.reserve(len) {
                    Ok(()) => Poll::Ready(Some(Ok(frame))),
                    Err(e) => {
                        *this.refused = true;
                        Poll::Ready(Some(Err(Box::new(e))))
                    }
                }
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.refused || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn connections_per_peer_are_capped_and_released() {
        let shared = Shared::new(100, 100, 2);
        let a1 = shared.admit(A).unwrap();
        let _a2 = shared.admit(A).unwrap();
        assert!(shared.admit(A).is_none());
        let _b1 = shared.admit(B).unwrap();
        drop(a1);
        let _a3 = shared.admit(A).unwrap();
        assert!(shared.admit(A).is_none());
    }

    #[test]
    fn peer_entries_are_removed_with_their_last_connection() {
        let shared = Shared::new(100, 100, 2);
        drop(shared.admit(A).unwrap());
        assert!(shared.peers.lock().unwrap().is_empty());
    }

    #[test]
    fn bytes_are_charged_against_the_budget_and_the_peer_share() {
        let shared = Shared::new(100, 60, 10);
        let a = shared.admit(A).unwrap();
        let b = shared.admit(B).unwrap();
        let a1 = a.charge();
        a1.reserve(50).unwrap();
        // A's share is 60.
        let e = a.charge().reserve(20).unwrap_err();
        assert_eq!(
            e,
            BodyBudgetExceeded {
                limit: 60,
                per_peer: true
            }
        );
        assert_eq!(shared.used(), 50);
        let b1 = b.charge();
        b1.reserve(40).unwrap();
        // The whole budget is 100.
        let e = b.charge().reserve(20).unwrap_err();
        assert!(!e.per_peer, "{e}");
        assert!(e.to_string().contains("100 bytes"), "{e}");
        drop(a1);
        assert_eq!(shared.used(), 40);
        b.charge().reserve(20).unwrap();
        // That charge was dropped at once: its bytes are back.
        assert_eq!(shared.used(), 40);
        drop(b1);
        assert_eq!(shared.used(), 0);
    }
}
