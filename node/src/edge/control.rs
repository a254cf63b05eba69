//! One connection's control, shared by its task, its writer and the node: the close switch,
//! the answers delivered to it, and the owners its unanswered requests went to (so that a
//! node that loses one of those owners can tell the client to re-join, rather than leave a
//! request unanswered forever).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use shard::NodeName;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::lock::lock;

/// Why a connection is being closed by the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// WebSocket close code (1001 going away, 1008 policy, 1013 try again later).
    pub code: u16,
    /// Human-readable reason, at most 123 bytes on the wire.
    pub reason: String,
    /// Whether frames already queued are sent before the close frame (shutdown: yes, so the
    /// `reconnect` frame gets out; slow consumer: no, the queue is the problem).
    pub flush: bool,
}

/// Close code for a client that does not read fast enough.
pub const CLOSE_SLOW_CONSUMER: u16 = 1013;
/// Close code for a node going away.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a frame over the hard size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for a policy violation (no identity).
pub const CLOSE_POLICY: u16 = 1008;
/// Close code for a client that broke the WebSocket framing rules.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code for a text message that is not UTF-8.
pub const CLOSE_NOT_UTF8: u16 = 1007;

/// The node's side of one connection's lifecycle: set once, read by its writer task.
#[derive(Debug, Default)]
pub struct ConnControl {
    closed: CancellationToken,
    reason: Mutex<Option<CloseReason>>,
    /// Answers delivered to this connection: `joined`, `left`, errors from owners and its own
    /// messages' echoes. Each command it routes gets exactly one, so the connection knows
    /// when its commands in flight have all been answered (its route fence).
    answers: AtomicU64,
    /// Answers on their way for commands the node made for the connection (a re-join after
    /// its room's owner failed), not the connection: they do not count for its route fence.
    unrouted: AtomicU64,
    /// Woken on each answer while the connection waits for one.
    answered: Notify,
    /// Where its unanswered requests went.
    in_flight: Mutex<InFlight>,
}

/// Owners named one by one at most; past this many a connection counts as waiting on every
/// node (bounded whatever the client does).
const MAX_OWNERS: usize = 8;

/// The owners a connection routed requests to since it last had none unanswered.
#[derive(Debug, Default)]
struct InFlight {
    /// Requests routed so far (compared with the answers delivered).
    routed: u64,
    owners: Vec<NodeName>,
    /// More owners than [`MAX_OWNERS`].
    many: bool,
}

impl ConnControl {
    /// Ask the connection to close; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let mut slot = lock(&self.reason);
        if slot.is_none() {
            *slot = Some(reason);
        }
        drop(slot);
        self.closed.cancel();
    }

    /// Resolves once [`ConnControl::close`] was called.
    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }

    /// Whether a close was asked for.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// The reason given to [`ConnControl::close`].
    pub fn reason(&self) -> Option<CloseReason> {
        lock(&self.reason).clone()
    }

    /// One answer was delivered.
    pub fn answer(&self) {
        self.answers.fetch_add(1, Ordering::Release);
        self.answered.notify_waiters();
    }

    /// Answers delivered so far to the connection's own commands.
    pub fn answers(&self) -> u64 {
        let unrouted = self.unrouted.load(Ordering::Acquire);
        self.answers
            .load(Ordering::Acquire)
            .saturating_sub(unrouted)
    }

    /// The node routes a command for the connection (a re-join) whose answer is not one the
    /// connection's own commands wait for. Counted before it is routed, so its answer can
    /// never be taken for one of theirs; if the answer never comes, the route fence waits for
    /// one more than it needs and times out: the safe side.
    pub fn expect_unrouted(&self) {
        self.unrouted.fetch_add(1, Ordering::AcqRel);
    }

    /// The command announced with [`expect_unrouted`](Self::expect_unrouted) could not be
    /// routed: no answer will come for it.
    pub fn unrouted_failed(&self) {
        self.unrouted.fetch_sub(1, Ordering::AcqRel);
    }

    /// Waits until at least `count` answers were delivered.
    pub async fn answered(&self, count: u64) {
        loop {
            let next = self.answered.notified();
            tokio::pin!(next);
            next.as_mut().enable();
            if self.answers() >= count {
                return;
            }
            next.await;
        }
    }

    /// A request was routed to `owner`, the connection's `routed`th (counted as the route
    /// fence counts them). Once all before it are answered, the owners are forgotten.
    pub fn routed_to(&self, owner: &NodeName, routed: u64) {
        let answers = self.answers();
        let mut in_flight = lock(&self.in_flight);
        if answers >= in_flight.routed {
            in_flight.owners.clear();
            in_flight.many = false;
        }
        in_flight.routed = routed;
        if !in_flight.many && !in_flight.owners.contains(owner) {
            if in_flight.owners.len() < MAX_OWNERS {
                in_flight.owners.push(owner.clone());
            } else {
                in_flight.many = true;
                in_flight.owners.clear();
            }
        }
    }

    /// Whether a request of this connection routed to `node` may still be unanswered.
    pub fn awaits(&self, node: &NodeName) -> bool {
        let answers = self.answers();
        let in_flight = lock(&self.in_flight);
        answers < in_flight.routed && (in_flight.many || in_flight.owners.contains(node))
    }
}
