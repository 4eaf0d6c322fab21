//! Flood control: a token bucket per edge, fed with the producer counters.
//!
//! The monitor polls each edge's cumulative producer counters (messages, bytes) at times
//! of its choosing and passes them in; there is no clock in here.
//!
//! The detector convicts only on proof. Messages counted between two samples
//! `t[j-1] < t[k]` were sent inside `(t[j-1], t[k]]`; if more were sent there than
//! `burst + rate * (t[k] - t[j-1])`, no sending schedule fits the quota, so the sender is
//! a flooder. A sender within quota is therefore never convicted, however coarsely or
//! irregularly it is sampled, and a sender above quota is convicted at the first sample
//! that proves it. The bucket keeps the minimum of that slack over all `j` (tokens are
//! capped at the burst *before* the refill of the current interval is added).

use alloc::vec::Vec;

use crate::id::{EdgeId, PartitionId};
use crate::rights::Quota;
use crate::verdict::{Resource, Verdict};

const NS_PER_S: u128 = 1_000_000_000;
/// Allowance for the time it takes the monitor to read the counters, in the
/// impossible-jump check.
pub const JUMP_SLACK_NS: u64 = 1_000_000;

/// Cumulative producer counters of one edge, as the sender's ring reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages produced since the channel was opened.
    pub msgs: u64,
    /// Payload bytes produced since the channel was opened.
    pub bytes: u64,
}

/// Where the monitor reads the producer counters (implemented by the interconnect).
pub trait ChannelCounters {
    /// Current counters of `edge`'s sender.
    fn produced(&self, edge: EdgeId) -> Counters;
}

/// Physical ceilings: a counter rising faster than this was forged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeterConfig {
    /// Most messages per second any ring can carry.
    pub max_msgs_per_s: u64,
    /// Most bytes per second any ring can carry.
    pub max_bytes_per_s: u64,
}

impl Default for MeterConfig {
    /// 2^30 messages/s and 2^40 bytes/s: far beyond shared memory.
    fn default() -> Self {
        Self {
            max_msgs_per_s: 1 << 30,
            max_bytes_per_s: 1 << 40,
        }
    }
}

/// One token bucket; `level` is in units of 1e-9 message (or byte).
#[derive(Clone, Debug)]
struct Bucket {
    rate: u64,
    burst: u64,
    ceiling: u64,
    level: i128,
    count: u64,
    window_start_ns: u64,
    window: u64,
}

enum Outcome {
    Fine,
    Tamper { previous: u64 },
    Over,
}

impl Bucket {
    fn new(rate: u64, burst: u64, ceiling: u64, count: u64, now_ns: u64) -> Self {
        let level = burst as i128 * NS_PER_S as i128;
        Self {
            rate,
            burst,
            ceiling,
            level,
            count,
            window_start_ns: now_ns,
            window: 0,
        }
    }

    /// Takes a sample at `now_ns`; the previous one was at `last_ns <= now_ns`.
    fn sample(&mut self, last_ns: u64, now_ns: u64, count: u64) -> Outcome {
        let dt = now_ns - last_ns;
        let previous = self.count;
        let Some(sent) = count.checked_sub(previous) else {
            return Outcome::Tamper { previous };
        };
        let span = dt as u128 + JUMP_SLACK_NS as u128;
        let possible = (self.ceiling as u128).saturating_mul(span) / NS_PER_S;
        if sent as u128 > possible {
            return Outcome::Tamper { previous };
        }
        self.count = count;
        let cap = self.burst as i128 * NS_PER_S as i128;
        if self.level >= cap {
            self.level = cap;
            self.window_start_ns = last_ns;
            self.window = 0;
        }
        let refill = (self.rate as i128).saturating_mul(dt as i128);
        self.level = self.level.saturating_add(refill) - sent as i128 * NS_PER_S as i128;
        self.window += sent;
        if self.level < 0 {
            Outcome::Over
        } else {
            Outcome::Fine
        }
    }

    /// The window's rate, per second (`u64::MAX` for an empty window).
    fn observed_per_s(&self, now_ns: u64) -> u64 {
        let span = (now_ns - self.window_start_ns) as u128;
        let rate = (self.window as u128 * NS_PER_S)
            .checked_div(span)
            .unwrap_or(u128::MAX);
        rate.min(u64::MAX as u128) as u64
    }
}

#[derive(Clone, Debug)]
struct EdgeMeter {
    from: PartitionId,
    last_ns: u64,
    msgs: Bucket,
    bytes: Bucket,
}

/// The meters of all open edges, indexed by edge id: every operation is O(1), a poll
/// is O(edges).
#[derive(Clone, Debug, Default)]
pub struct Meter {
    config: MeterConfig,
    edges: Vec<Option<EdgeMeter>>,
}

impl Meter {
    /// A meter with no open edge.
    pub fn new(config: MeterConfig) -> Self {
        Self {
            config,
            edges: Vec::new(),
        }
    }

    /// Starts metering `edge`, sent on by `from`, from `base` at `now_ns` with a full
    /// bucket. Replaces any meter the edge had.
    pub fn open(
        &mut self,
        edge: EdgeId,
        from: PartitionId,
        quota: Quota,
        now_ns: u64,
        base: Counters,
    ) {
        let (i, c) = (edge.0 as usize, self.config);
        if self.edges.len() <= i {
            self.edges.resize(i + 1, None);
        }
        let (q, n) = (quota, now_ns);
        self.edges[i] = Some(EdgeMeter {
            from,
            last_ns: now_ns,
            msgs: Bucket::new(q.msgs_per_s, q.burst_msgs, c.max_msgs_per_s, base.msgs, n),
            bytes: Bucket::new(
                q.bytes_per_s,
                q.burst_bytes,
                c.max_bytes_per_s,
                base.bytes,
                n,
            ),
        });
    }

    /// Stops metering `edge` (it was revoked).
    pub fn close(&mut self, edge: EdgeId) {
        if let Some(slot) = self.edges.get_mut(edge.0 as usize) {
            *slot = None;
        }
    }

    /// Whether `edge` is metered.
    pub fn is_open(&self, edge: EdgeId) -> bool {
        matches!(self.edges.get(edge.0 as usize), Some(Some(_)))
    }

    /// Feeds one sample of `edge`'s counters. A verdict closes the edge's meter, so each
    /// offence is judged once. Samples of unmetered edges are ignored. A clock going
    /// backwards is taken as no time passing.
    pub fn sample(&mut self, edge: EdgeId, now_ns: u64, counters: Counters) -> Option<Verdict> {
        let slot = self.edges.get_mut(edge.0 as usize)?;
        let m = slot.as_mut()?;
        let now = now_ns.max(m.last_ns);
        let buckets = [
            (Resource::Messages, &mut m.msgs, counters.msgs),
            (Resource::Bytes, &mut m.bytes, counters.bytes),
        ];
        let mut verdict = None;
        for (resource, bucket, count) in buckets {
            let (from, at_ns) = (m.from, now);
            verdict = match bucket.sample(m.last_ns, now, count) {
                Outcome::Fine => continue,
                Outcome::Tamper { previous } => Some(Verdict::Tamper {
                    edge,
                    from,
                    resource,
                    previous,
                    observed: count,
                    at_ns,
                }),
                Outcome::Over => Some(Verdict::Flood {
                    edge,
                    from,
                    resource,
                    observed_per_s: bucket.observed_per_s(now),
                    sent: bucket.window,
                    quota_per_s: bucket.rate,
                    burst: bucket.burst,
                    window_start_ns: bucket.window_start_ns,
                    at_ns,
                }),
            };
            break;
        }
        m.last_ns = now;
        if verdict.is_some() {
            *slot = None;
        }
        verdict
    }

    /// Samples every open edge from `source` (allocates only for verdicts).
    pub fn poll(&mut self, now_ns: u64, source: &impl ChannelCounters) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        for i in 0..self.edges.len() {
            let edge = EdgeId(i as u16);
            if self.edges[i].is_some() {
                verdicts.extend(self.sample(edge, now_ns, source.produced(edge)));
            }
        }
        verdicts
    }
}
