//! Flood control: token buckets fed with producer counters, sampled at arbitrary times.

use std::cell::RefCell;
use std::collections::HashMap;

use monitor::meter::{ChannelCounters, Counters, Meter, MeterConfig};
use monitor::rights::Quota;
use monitor::verdict::{Resource, Verdict};
use monitor::{EdgeId, PartitionId};
use proptest::prelude::*;

const NS: u64 = 1_000_000_000;
const E: EdgeId = EdgeId(7);
const FROM: PartitionId = PartitionId::new(3, 1);
const LOOSE: u64 = 1 << 50;

fn msgs_quota(rate: u64, burst: u64) -> Quota {
    Quota {
        msgs_per_s: rate,
        burst_msgs: burst,
        bytes_per_s: LOOSE,
        burst_bytes: LOOSE,
    }
}

fn meter(quota: Quota, t0: u64) -> Meter {
    let mut m = Meter::new(MeterConfig::default());
    m.open(E, FROM, quota, t0, Counters::default());
    m
}

fn msgs(n: u64) -> Counters {
    Counters { msgs: n, bytes: n }
}

/// A schedule of message arrivals that a continuous token bucket admits: for every
/// closed interval of length `d`, at most `burst + rate * d` messages.
fn conforming(rate: u64, burst: u64, wishes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let cap = burst as u128 * NS as u128;
    let (mut level, mut t, mut out) = (cap, 0u64, Vec::new());
    for &(gap, n) in wishes {
        t += gap;
        level = (level + rate as u128 * gap as u128).min(cap);
        let n = n.min((level / NS as u128) as u64);
        level -= n as u128 * NS as u128;
        out.push((t, n));
    }
    out
}

proptest! {
    /// A sender within quota is never flagged, whatever the sampling times.
    #[test]
    fn within_quota_is_never_flagged(
        rate in 1u64..1_000_000,
        burst in 1u64..2_000,
        wishes in proptest::collection::vec((0u64..3 * NS / 1000, 0u64..3_000), 1..200),
        samples in proptest::collection::vec(0u64..5 * NS / 1000, 1..200),
    ) {
        let arrivals = conforming(rate, burst, &wishes);
        let mut m = meter(msgs_quota(rate, burst), 0);
        let mut now = 0;
        for gap in samples {
            now += gap;
            let sent: u64 = arrivals.iter().filter(|(t, _)| *t <= now).map(|(_, n)| n).sum();
            prop_assert_eq!(m.sample(E, now, msgs(sent)), None);
        }
    }

    /// A sender at twice its quota is flagged at the first sample proving that it sent
    /// more than `burst + rate * elapsed`, and never before its burst could be exhausted.
    #[test]
    fn twice_the_quota_is_flagged_once_the_burst_is_exhausted(
        rate in 1_000u64..1_000_000,
        burst in 1u64..2_000,
        t0 in 0u64..NS,
        samples in proptest::collection::vec(1u64..NS / 100, 1..300),
    ) {
        let mut m = meter(msgs_quota(rate, burst), t0);
        let sent_by = |t: u64| ((2 * rate as u128 * (t - t0) as u128) / NS as u128) as u64;
        let proven = |t: u64| {
            sent_by(t) as u128 * NS as u128 > burst as u128 * NS as u128 + (rate as u128 * (t - t0) as u128)
        };
        let mut now = t0;
        let mut verdict = None;
        for gap in samples {
            now += gap;
            if let Some(v) = m.sample(E, now, msgs(sent_by(now))) {
                verdict = Some(v);
                break;
            }
            prop_assert!(!proven(now), "not flagged at {} though proven", now);
        }
        if let Some(v) = verdict {
            let Verdict::Flood { edge, from, resource, observed_per_s, sent, quota_per_s, burst: b, window_start_ns, at_ns } = v
            else { panic!("{v:?}") };
            prop_assert_eq!((edge, from, resource, quota_per_s, b), (E, FROM, Resource::Messages, rate, burst));
            prop_assert_eq!(at_ns, now);
            prop_assert!(at_ns - t0 >= (burst - 1) * NS / rate, "flagged too early: {}", v);
            prop_assert!(window_start_ns >= t0 && window_start_ns < at_ns);
            prop_assert!(sent > burst);
            prop_assert!(observed_per_s > rate);
            prop_assert!(!m.is_open(E));
        }
    }
}

#[test]
fn a_flooder_is_convicted_at_the_first_poll_after_its_burst() {
    // 10,000 msg/s, burst 100; the flooder sends 10 M msg/s; the monitor polls each ms.
    let mut m = meter(msgs_quota(10_000, 100), 0);
    let ms = NS / 1000;
    // Crossing: 10e6 t > 100 + 1e4 t  =>  t > 10.01 us. First poll after: 1 ms.
    let v = m
        .sample(E, ms, msgs(10_000))
        .expect("flagged at the first poll");
    assert_eq!(v.at_ns(), ms);
    assert!(
        matches!(
            v,
            Verdict::Flood {
                observed_per_s: 10_000_000,
                sent: 10_000,
                ..
            }
        ),
        "{v}"
    );
    assert!(
        v.to_string()
            .contains("10000000/s against quota 10000/s burst 100"),
        "{v}"
    );
}

#[test]
fn bytes_are_metered_too() {
    let quota = Quota {
        msgs_per_s: LOOSE,
        burst_msgs: LOOSE,
        bytes_per_s: 1000,
        burst_bytes: 500,
    };
    let mut m = meter(quota, 0);
    assert_eq!(
        m.sample(
            E,
            NS,
            Counters {
                msgs: 1,
                bytes: 1500
            }
        ),
        None
    );
    let v = m
        .sample(
            E,
            NS + 1,
            Counters {
                msgs: 2,
                bytes: 1502,
            },
        )
        .unwrap();
    assert!(
        matches!(
            v,
            Verdict::Flood {
                resource: Resource::Bytes,
                burst: 500,
                ..
            }
        ),
        "{v}"
    );
}

#[test]
fn the_burst_refills_but_only_up_to_its_size() {
    let mut m = meter(msgs_quota(100, 10), 0);
    assert_eq!(m.sample(E, 0, msgs(10)), None); // the whole burst at once
    assert_eq!(m.sample(E, NS, msgs(110)), None); // one second of quota
    assert_eq!(m.sample(E, 100 * NS, msgs(110)), None); // idle for 99 s
    assert_eq!(m.sample(E, 100 * NS, msgs(120)), None); // refilled to 10 only: 10 fit
    let v = m.sample(E, 100 * NS, msgs(121));
    assert!(matches!(v, Some(Verdict::Flood { .. })), "{v:?}");
}

#[test]
fn counters_going_backwards_or_jumping_are_tampering() {
    let mut m = meter(msgs_quota(LOOSE, LOOSE), 0);
    assert_eq!(m.sample(E, 10, msgs(5)), None);
    let v = m.sample(E, 20, msgs(4)).unwrap();
    let want = Verdict::Tamper {
        edge: E,
        from: FROM,
        resource: Resource::Messages,
        previous: 5,
        observed: 4,
        at_ns: 20,
    };
    assert_eq!(v, want);
    assert!(!m.is_open(E));
    assert_eq!(
        m.sample(E, 30, msgs(3)),
        None,
        "a closed edge is judged once"
    );

    // 2^30 msg/s at most: 1 s (+ 1 ms slack) allows 2^30 + 2^30/1000 messages.
    let mut m = meter(msgs_quota(LOOSE, LOOSE), 0);
    assert_eq!(m.sample(E, NS, msgs(1 << 30)), None);
    let v = m
        .sample(
            E,
            NS,
            Counters {
                msgs: 1 << 30,
                bytes: u64::MAX,
            },
        )
        .unwrap();
    assert!(
        matches!(
            v,
            Verdict::Tamper {
                resource: Resource::Bytes,
                ..
            }
        ),
        "{v}"
    );
}

#[test]
fn a_clock_going_backwards_gives_no_tokens() {
    let mut m = meter(msgs_quota(1000, 10), 5 * NS);
    assert_eq!(m.sample(E, 5 * NS, msgs(10)), None);
    // Backwards to 0: no time passed, no refill.
    assert!(
        matches!(m.sample(E, 0, msgs(11)), Some(Verdict::Flood { at_ns, .. }) if at_ns == 5 * NS)
    );
}

struct Rings(RefCell<HashMap<EdgeId, Counters>>);

impl ChannelCounters for Rings {
    fn produced(&self, edge: EdgeId) -> Counters {
        self.0.borrow().get(&edge).copied().unwrap_or_default()
    }
}

#[test]
fn poll_judges_each_edge_on_its_own() {
    let mut m = Meter::new(MeterConfig::default());
    let good = PartitionId::new(0, 0);
    m.open(
        EdgeId(0),
        good,
        msgs_quota(1000, 10),
        0,
        Counters::default(),
    );
    m.open(
        EdgeId(1),
        FROM,
        msgs_quota(1000, 10),
        0,
        Counters::default(),
    );
    let rings = Rings(RefCell::new(HashMap::new()));
    for step in 1..=100u64 {
        rings.0.borrow_mut().insert(EdgeId(0), msgs(step)); // 1000/s
        rings.0.borrow_mut().insert(EdgeId(1), msgs(step * 3)); // 3000/s
        let verdicts = m.poll(step * NS / 1000, &rings);
        if step < 6 {
            assert!(verdicts.is_empty(), "step {step}: {verdicts:?}");
        } else if step == 6 {
            // 18 > 10 + 6 at the sixth ms.
            assert_eq!(verdicts.len(), 1);
            assert_eq!(verdicts[0].culprit(), Some(FROM));
        } else {
            assert!(verdicts.is_empty());
        }
    }
    assert!(m.is_open(EdgeId(0)) && !m.is_open(EdgeId(1)));
}

#[test]
fn extreme_values_do_not_overflow() {
    let huge = Quota {
        msgs_per_s: u64::MAX,
        bytes_per_s: u64::MAX,
        burst_msgs: u64::MAX,
        burst_bytes: u64::MAX,
    };
    let config = MeterConfig {
        max_msgs_per_s: u64::MAX,
        max_bytes_per_s: u64::MAX,
    };
    let mut m = Meter::new(config);
    m.open(E, FROM, huge, 0, Counters::default());
    assert_eq!(
        m.sample(
            E,
            u64::MAX,
            Counters {
                msgs: u64::MAX,
                bytes: u64::MAX
            }
        ),
        None
    );
    let mut m = Meter::new(config);
    m.open(E, FROM, msgs_quota(1, 1), 0, Counters::default());
    let v = m
        .sample(
            E,
            0,
            Counters {
                msgs: u64::MAX / 2000,
                bytes: 0,
            },
        )
        .unwrap();
    assert!(
        matches!(
            v,
            Verdict::Flood {
                observed_per_s: u64::MAX,
                ..
            }
        ),
        "{v}"
    );
}
