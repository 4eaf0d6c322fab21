//! Verdicts: what the monitor concluded, with the evidence, for its log.

use core::fmt;

use crate::control::{FaultKind, Hostile};
use crate::id::{EdgeId, PartitionId};

/// Which token bucket of an edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// The message count.
    Messages,
    /// The payload byte count.
    Bytes,
}

/// A conclusion of the monitor about a partition, with its evidence. Every verdict but
/// [`Verdict::Reported`] convicts its [`Verdict::culprit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A sender exceeded its quota by more than its burst.
    Flood {
        /// The metered edge.
        edge: EdgeId,
        /// Its sender.
        from: PartitionId,
        /// The exhausted bucket.
        resource: Resource,
        /// Sent per second over the window `[window_start_ns, at_ns]`.
        observed_per_s: u64,
        /// Sent in that window.
        sent: u64,
        /// Quota per second.
        quota_per_s: u64,
        /// Burst allowance.
        burst: u64,
        /// Start of the offending window.
        window_start_ns: u64,
        /// Time of the sample that convicted.
        at_ns: u64,
    },
    /// A producer counter went backwards or jumped beyond what a ring can carry.
    Tamper {
        /// The metered edge.
        edge: EdgeId,
        /// Its sender.
        from: PartitionId,
        /// The counter.
        resource: Resource,
        /// Its previous value.
        previous: u64,
        /// Its new value.
        observed: u64,
        /// Time of the sample.
        at_ns: u64,
    },
    /// A producer counter moved on a channel direction whose sender has no right to
    /// send (its published rights said so).
    Unauthorized {
        /// The sender.
        from: PartitionId,
        /// The partition at the other end.
        to: u16,
        /// Messages it published there.
        messages: u64,
        /// Time of the sample.
        at_ns: u64,
    },
    /// A channel the monitor revoked for a flood was opened again (its control word
    /// rewritten; only the channel's two ends can, and the fabric never does): its
    /// convicted sender is killed.
    Unrevoked {
        /// The revoked edge.
        edge: EdgeId,
        /// Its sender, convicted of the flood.
        from: PartitionId,
        /// Time of the sample.
        at_ns: u64,
    },
    /// A partition wrote a record to its control channel that is not a valid one.
    Hostile {
        /// The partition.
        from: PartitionId,
        /// What was wrong.
        reason: Hostile,
        /// When it was read.
        at_ns: u64,
    },
    /// A partition's runtime reported a fault.
    Fault {
        /// The partition.
        id: PartitionId,
        /// The fault.
        fault: FaultKind,
        /// Its detail.
        detail: u64,
        /// When it was reported.
        at_ns: u64,
    },
    /// No heartbeat for longer than the configured timeout.
    Hung {
        /// The partition.
        id: PartitionId,
        /// Last heartbeat (or start).
        last_heartbeat_ns: u64,
        /// When it was noticed.
        at_ns: u64,
    },
    /// A partition's VM exited without the monitor asking.
    Crashed {
        /// The partition.
        id: PartitionId,
        /// Exit status from the launcher.
        status: u32,
        /// When it was reported.
        at_ns: u64,
    },
    /// A partition accuses a peer of a malformed message: logged, never acted upon.
    Reported {
        /// The accuser.
        by: PartitionId,
        /// The accused.
        peer: PartitionId,
        /// The edge.
        edge: EdgeId,
        /// Offset in the ring.
        offset: u64,
        /// When it was reported.
        at_ns: u64,
    },
}

impl Verdict {
    /// The convicted partition, if the verdict convicts one.
    pub fn culprit(&self) -> Option<PartitionId> {
        match *self {
            Self::Flood { from, .. }
            | Self::Tamper { from, .. }
            | Self::Unauthorized { from, .. }
            | Self::Unrevoked { from, .. }
            | Self::Hostile { from, .. } => Some(from),
            Self::Fault { id, .. } | Self::Hung { id, .. } | Self::Crashed { id, .. } => Some(id),
            Self::Reported { .. } => None,
        }
    }
}

impl Verdict {
    /// When the verdict was reached.
    pub fn at_ns(&self) -> u64 {
        match *self {
            Self::Flood { at_ns, .. }
            | Self::Tamper { at_ns, .. }
            | Self::Unauthorized { at_ns, .. }
            | Self::Unrevoked { at_ns, .. }
            | Self::Hostile { at_ns, .. }
            | Self::Fault { at_ns, .. }
            | Self::Hung { at_ns, .. }
            | Self::Crashed { at_ns, .. }
            | Self::Reported { at_ns, .. } => at_ns,
        }
    }
}

impl fmt::Display for Verdict {
    /// The flood evidence as a sentence; other verdicts as their fields.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Flood {
                edge,
                from,
                resource,
                observed_per_s,
                sent,
                quota_per_s,
                burst,
                window_start_ns: start,
                at_ns,
            } => write!(
                f,
                "flood: {from} on {edge}: {sent} {resource:?} in [{start}, {at_ns}] ns \
                 = {observed_per_s}/s against quota {quota_per_s}/s burst {burst}"
            ),
            _ => write!(f, "{self:?}"),
        }
    }
}
