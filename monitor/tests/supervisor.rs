//! Liveness and restart: policies, generational ids, hostile control records, and the
//! monitor tying meter and supervisor together.

use std::collections::{HashMap, HashSet};

use monitor::control::{FaultKind, FromPartition, Hostile, LauncherEvent};
use monitor::meter::{ChannelCounters, Counters, MeterConfig};
use monitor::rights::{EdgeRights, Policy, Quota, RightsBuilder, RightsTable};
use monitor::verdict::Verdict;
use monitor::{Action, EdgeId, FloodAction, Monitor, PartitionId, Supervisor, SupervisorConfig};
use proptest::prelude::*;

const QUOTA: Quota = Quota {
    msgs_per_s: 10_000,
    bytes_per_s: 1 << 30,
    burst_msgs: 100,
    burst_bytes: 1 << 30,
};
const OPEN: EdgeRights = EdgeRights {
    tags: None,
    nonblocking: true,
    quota: QUOTA,
};
const MS: u64 = 1_000_000;
const HEARTBEAT: SupervisorConfig = SupervisorConfig {
    heartbeat_timeout_ns: Some(100 * MS),
    on_flood: FloodAction::Kill,
};

/// client(0, stop) <-> fs(1, restart 2) <-> net(2, stop); edges:
/// e0 client->fs, e1 fs->client, e2 fs->net, e3 net->fs.
fn table() -> RightsTable {
    RightsBuilder::new()
        .partition("client", Policy::Stop)
        .partition("fs", Policy::Restart { limit: 2 })
        .partition("net", Policy::Stop)
        .allow("client", "fs", OPEN)
        .allow("fs", "client", OPEN)
        .allow("fs", "net", OPEN)
        .allow("net", "fs", OPEN)
        .build()
        .unwrap()
}

fn id(index: u16, generation: u16) -> PartitionId {
    PartitionId::new(index, generation)
}

fn fault(s: &mut Supervisor, who: PartitionId, at_ns: u64) -> Vec<Action> {
    let record = FromPartition::Fault {
        id: who,
        fault: FaultKind::Panic,
        detail: 0,
    }
    .encode();
    s.on_partition(who.index, &record, at_ns)
}

#[test]
fn stop_policy_revokes_kills_and_stays_dead() {
    let mut s = Supervisor::new(table(), SupervisorConfig::default(), 0);
    let a = fault(&mut s, id(0, 0), 5);
    let verdict = Verdict::Fault {
        id: id(0, 0),
        fault: FaultKind::Panic,
        detail: 0,
        at_ns: 5,
    };
    assert_eq!(
        a,
        [
            Action::Log(verdict),
            Action::Revoke(EdgeId(0)),
            Action::Revoke(EdgeId(1)),
            Action::Kill(id(0, 0)),
            Action::Stopped {
                id: id(0, 0),
                restarts: 0
            },
        ]
    );
    assert!(!s.is_current(id(0, 0)));
    assert_eq!(s.current(0), None);
    assert!(
        fault(&mut s, id(0, 0), 6).is_empty(),
        "a dead partition is not judged again"
    );
}

#[test]
fn restart_policy_bumps_the_generation_up_to_its_limit() {
    let mut s = Supervisor::new(table(), SupervisorConfig::default(), 0);
    let a = fault(&mut s, id(1, 0), 10);
    assert_eq!(
        &a[1..],
        [
            Action::Revoke(EdgeId(0)),
            Action::Revoke(EdgeId(1)),
            Action::Revoke(EdgeId(2)),
            Action::Revoke(EdgeId(3)),
            Action::Kill(id(1, 0)),
            Action::Restart(id(1, 1)),
            Action::Reopen(EdgeId(0)),
            Action::Reopen(EdgeId(1)),
            Action::Reopen(EdgeId(2)),
            Action::Reopen(EdgeId(3)),
        ]
    );
    assert!(s.is_current(id(1, 1)) && !s.is_current(id(1, 0)));
    assert_eq!(
        a[6].command(),
        Some(monitor::control::Command::Restart(id(1, 1)))
    );
    // The old incarnation's word is ignored; the new one's counts.
    assert!(fault(&mut s, id(1, 0), 11).is_empty());
    assert!(fault(&mut s, id(1, 1), 12).contains(&Action::Restart(id(1, 2))));
    let last = fault(&mut s, id(1, 2), 13);
    assert_eq!(
        last.last(),
        Some(&Action::Stopped {
            id: id(1, 2),
            restarts: 2
        })
    );
    assert!(!last.iter().any(|a| matches!(a, Action::Restart(_))));
    assert_eq!(s.current(1), None);
    assert_eq!(s.restarts(1), Some(2));
}

#[test]
fn a_restart_does_not_reopen_edges_to_dead_peers() {
    let mut s = Supervisor::new(table(), SupervisorConfig::default(), 0);
    fault(&mut s, id(0, 0), 1);
    let a = fault(&mut s, id(1, 0), 2);
    let reopened: Vec<_> = a
        .iter()
        .filter(|a| matches!(a, Action::Reopen(_)))
        .collect();
    assert_eq!(
        reopened,
        [&Action::Reopen(EdgeId(2)), &Action::Reopen(EdgeId(3))]
    );
}

#[test]
fn a_restart_gives_the_table_the_new_generation() {
    let mut s = Supervisor::new(table(), SupervisorConfig::default(), 0);
    fault(&mut s, id(1, 0), 1);
    assert_eq!(s.table().partition(1).unwrap().id(), id(1, 1));
}

#[test]
fn hostile_control_records_convict_the_channel_owner() {
    let cases: [(Vec<u8>, Hostile); 4] = [
        (vec![0xAB; 32], Hostile::BadMagic),
        (vec![0; 7], Hostile::WrongLength),
        (
            FromPartition::Heartbeat { id: id(2, 0) }.encode().to_vec(),
            Hostile::Impersonation,
        ),
        (
            FromPartition::Heartbeat { id: id(0, 1) }.encode().to_vec(),
            Hostile::Impersonation,
        ),
    ];
    for (bytes, reason) in cases {
        let mut s = Supervisor::new(table(), SupervisorConfig::default(), 0);
        let a = s.on_partition(0, &bytes, 7);
        assert_eq!(
            a[0],
            Action::Log(Verdict::Hostile {
                from: id(0, 0),
                reason,
                at_ns: 7
            })
        );
        assert!(a.contains(&Action::Kill(id(0, 0))));
        assert!(!s.is_current(id(0, 0)));
    }
}

#[test]
fn accusations_are_logged_not_acted_upon() {
    let mut s = Supervisor::new(table(), SupervisorConfig::default(), 0);
    let report = |peer, edge| {
        FromPartition::Malformed {
            id: id(1, 0),
            peer,
            edge: EdgeId(edge),
            offset: 64,
        }
        .encode()
    };
    let a = s.on_partition(1, &report(id(0, 0), 0), 3);
    assert!(
        matches!(a[..], [Action::Log(Verdict::Reported { .. })]),
        "{a:?}"
    );
    assert!(s.is_current(id(0, 0)) && s.is_current(id(1, 0)));
    // Naming an edge that does not carry messages from that peer to the accuser is a lie.
    let a = s.on_partition(1, &report(id(0, 0), 1), 4);
    assert!(a.contains(&Action::Kill(id(1, 0))), "{a:?}");
    assert!(s.is_current(id(0, 0)));
}

#[test]
fn heartbeats_and_hangs() {
    let mut s = Supervisor::new(table(), HEARTBEAT, 0);
    let beat = |who: PartitionId| FromPartition::Heartbeat { id: who }.encode();
    assert!(s.tick(100 * MS).is_empty());
    assert!(s.on_partition(0, &beat(id(0, 0)), 90 * MS).is_empty());
    assert!(s.on_partition(2, &beat(id(2, 0)), 90 * MS).is_empty());
    let a = s.tick(101 * MS);
    let hung = Verdict::Hung {
        id: id(1, 0),
        last_heartbeat_ns: 0,
        at_ns: 101 * MS,
    };
    assert_eq!(a[0], Action::Log(hung));
    assert!(a.contains(&Action::Restart(id(1, 1))));
    // The new incarnation's clock starts at its restart.
    assert!(s.tick(150 * MS).is_empty());
    let a = s.tick(191 * MS);
    let hung: Vec<u16> = a
        .iter()
        .filter_map(|a| match a {
            Action::Log(Verdict::Hung { id, .. }) => Some(id.index),
            _ => None,
        })
        .collect();
    assert_eq!(hung, [0, 2]);
}

#[test]
fn launcher_exits() {
    let mut s = Supervisor::new(table(), SupervisorConfig::default(), 0);
    let exited = |who, status| LauncherEvent::Exited { id: who, status }.encode();
    let a = s.on_launcher(&exited(id(2, 0), 139), 9).unwrap();
    assert_eq!(
        a[0],
        Action::Log(Verdict::Crashed {
            id: id(2, 0),
            status: 139,
            at_ns: 9
        })
    );
    assert_eq!(s.current(2), None);
    // The exit that follows a kill the monitor asked for changes nothing.
    assert_eq!(s.on_launcher(&exited(id(2, 0), 137), 10), Ok(vec![]));
    assert_eq!(s.on_launcher(&[1, 2, 3], 11), Err(Hostile::WrongLength));
}

proptest! {
    /// Generations never collide: every incarnation ever started has a fresh id, only
    /// the latest one of each partition is current, and stale ids stay stale.
    #[test]
    fn generations_never_collide(faults in proptest::collection::vec((0u16..3, any::<bool>()), 0..200)) {
        let t = RightsBuilder::new()
            .partition("a", Policy::Restart { limit: 50 })
            .partition("b", Policy::Restart { limit: 65_535 })
            .partition("c", Policy::Stop)
            .allow("a", "b", OPEN)
            .build()
            .unwrap();
        let mut s = Supervisor::new(t, SupervisorConfig::default(), 0);
        let mut seen: HashSet<PartitionId> = (0..3).map(|i| id(i, 0)).collect();
        let mut stale = Vec::new();
        for (n, (index, use_stale)) in faults.into_iter().enumerate() {
            let target = match (use_stale, stale.last(), s.current(index)) {
                (true, Some(&old), _) => old,
                (_, _, Some(cur)) => cur,
                _ => continue,
            };
            for a in fault(&mut s, target, n as u64) {
                if let Action::Restart(new) = a {
                    prop_assert!(seen.insert(new), "{} reused", new);
                    prop_assert_eq!(new.index, target.index);
                    stale.push(target);
                }
            }
            for old in &stale {
                prop_assert!(!s.is_current(*old));
            }
        }
        prop_assert!(s.restarts(0).unwrap() <= 50);
        prop_assert!(s.restarts(2) == Some(0));
    }
}

struct Rings(HashMap<EdgeId, Counters>);

impl ChannelCounters for Rings {
    fn produced(&self, edge: EdgeId) -> Counters {
        self.0.get(&edge).copied().unwrap_or_default()
    }
}

#[test]
fn monitor_convicts_a_flooder_and_spares_the_others() {
    let mut m = Monitor::new(
        table(),
        MeterConfig::default(),
        SupervisorConfig::default(),
        0,
    );
    let mut rings = Rings(HashMap::new());
    // net floods fs at 10 M msg/s against 10,000/s; client -> fs behaves (5,000/s).
    for step in 1..=5u64 {
        let now = step * MS;
        rings.0.insert(
            EdgeId(3),
            Counters {
                msgs: step * 10_000,
                bytes: 0,
            },
        );
        rings.0.insert(
            EdgeId(0),
            Counters {
                msgs: step * 5,
                bytes: 0,
            },
        );
        let a = m.poll(now, &rings);
        if step > 1 {
            assert!(a.is_empty(), "{a:?}");
            continue;
        }
        // Convicted at the first poll after it crossed its burst (10 us in).
        assert!(matches!(
            a[0],
            Action::Log(Verdict::Flood {
                edge: EdgeId(3),
                at_ns: MS,
                ..
            })
        ));
        assert_eq!(
            &a[1..],
            [
                Action::Revoke(EdgeId(2)),
                Action::Revoke(EdgeId(3)),
                Action::Kill(id(2, 0)),
                Action::Stopped {
                    id: id(2, 0),
                    restarts: 0
                }
            ]
        );
        assert!(!m.meter().is_open(EdgeId(2)) && !m.meter().is_open(EdgeId(3)));
        assert!(m.meter().is_open(EdgeId(0)));
    }
}

#[test]
fn monitor_meters_a_reopened_edge_from_its_fresh_base() {
    let mut m = Monitor::new(
        table(),
        MeterConfig::default(),
        SupervisorConfig::default(),
        0,
    );
    let record = FromPartition::Fault {
        id: id(1, 0),
        fault: FaultKind::Other,
        detail: 0,
    }
    .encode();
    let a = m.on_partition(1, &record, MS);
    assert!(a.contains(&Action::Reopen(EdgeId(1))));
    assert!(!m.meter().is_open(EdgeId(1)));
    m.reopened(EdgeId(1), 2 * MS, Counters::default());
    assert!(m.meter().is_open(EdgeId(1)));
    // The new incarnation is metered afresh: within quota it is left alone ...
    let rings = Rings(HashMap::from([(
        EdgeId(1),
        Counters {
            msgs: 100,
            bytes: 0,
        },
    )]));
    assert!(m.poll(3 * MS, &rings).is_empty());
    // ... over it, the verdict names the new incarnation.
    let rings = Rings(HashMap::from([(
        EdgeId(1),
        Counters {
            msgs: 1_000,
            bytes: 0,
        },
    )]));
    let a = m.poll(4 * MS, &rings);
    assert_eq!(a[0].command(), None);
    assert!(
        matches!(a[0], Action::Log(Verdict::Flood { from, .. }) if from == id(1, 1)),
        "{a:?}"
    );
    assert!(a.contains(&Action::Restart(id(1, 2))));
    assert_eq!(m.on_launcher(&[0; 32], 5 * MS), Err(Hostile::BadMagic));
}

#[test]
fn milder_flood_actions() {
    let flood = |now| {
        Rings(HashMap::from([(
            EdgeId(3),
            Counters {
                msgs: now / 1000,
                bytes: 0,
            },
        )]))
    };
    // Revoke: only the flooded edge goes; net lives on.
    let config = SupervisorConfig {
        on_flood: FloodAction::Revoke,
        ..SupervisorConfig::default()
    };
    let mut m = Monitor::new(table(), MeterConfig::default(), config, 0);
    let a = m.poll(MS, &flood(MS));
    assert!(
        matches!(
            a[..],
            [
                Action::Log(Verdict::Flood { .. }),
                Action::Revoke(EdgeId(3))
            ]
        ),
        "{a:?}"
    );
    assert!(m.supervisor().is_current(id(2, 0)));
    assert!(!m.meter().is_open(EdgeId(3)) && m.meter().is_open(EdgeId(2)));
    // The revoked channel found open again: its flooder is killed after all.
    let a = m.unrevoked(EdgeId(3), 2 * MS);
    assert!(
        matches!(
            a[..],
            [
                Action::Log(Verdict::Unrevoked {
                    edge: EdgeId(3),
                    from: PartitionId { index: 2, .. },
                    ..
                }),
                ..,
                Action::Kill(PartitionId { index: 2, .. }),
                Action::Stopped { .. }
            ]
        ),
        "{a:?}"
    );
    assert!(!m.supervisor().is_current(id(2, 0)));
    assert!(m.unrevoked(EdgeId(3), 3 * MS).is_empty(), "judged once");
    // Report: logged, metered afresh from the counters seen, and reported again later.
    let config = SupervisorConfig {
        on_flood: FloodAction::Report,
        ..SupervisorConfig::default()
    };
    let mut m = Monitor::new(table(), MeterConfig::default(), config, 0);
    assert!(matches!(
        m.poll(MS, &flood(MS))[..],
        [Action::Log(Verdict::Flood { .. })]
    ));
    assert!(m.meter().is_open(EdgeId(3)));
    assert!(m.poll(MS + 1000, &flood(MS)).is_empty(), "nothing new sent");
    let a = m.poll(2 * MS, &flood(2 * MS));
    assert!(
        matches!(
            a[..],
            [Action::Log(Verdict::Flood {
                window_start_ns: 1_001_000,
                ..
            })]
        ),
        "{a:?}"
    );
}

#[test]
fn the_monitor_is_never_convicted() {
    let t = RightsBuilder::new()
        .partition("mon", Policy::Stop)
        .partition("fs", Policy::Stop)
        .monitor("mon")
        .allow("mon", "fs", OPEN)
        .build()
        .unwrap();
    let mut s = Supervisor::new(t, SupervisorConfig::default(), 0);
    let a = fault(&mut s, id(0, 0), 1);
    assert!(
        matches!(a[..], [Action::Log(Verdict::Fault { .. })]),
        "{a:?}"
    );
    assert!(s.is_current(id(0, 0)));
    assert!(fault(&mut s, id(1, 0), 2).contains(&Action::Kill(id(1, 0))));
}

#[test]
fn a_send_on_a_direction_without_an_edge_convicts_the_sender() {
    // Only client -> fs: the channel's other direction carries no right.
    let table = RightsBuilder::new()
        .partition("client", Policy::Stop)
        .partition("fs", Policy::Restart { limit: 1 })
        .allow("client", "fs", OPEN)
        .build()
        .unwrap();
    let mut m = Monitor::new(table, MeterConfig::default(), HEARTBEAT, 0);
    assert_eq!(m.unauthorized(1, 0, 0, 5), [], "nothing published");
    assert_eq!(
        m.unauthorized(0, 1, 9, 5),
        [],
        "an edge: the meter's business"
    );
    let verdict = Verdict::Unauthorized {
        from: id(1, 0),
        to: 0,
        messages: 1,
        at_ns: 7,
    };
    assert_eq!(verdict.culprit(), Some(id(1, 0)));
    assert_eq!(
        m.unauthorized(1, 0, 1, 7),
        [
            Action::Log(verdict),
            Action::Revoke(EdgeId(0)),
            Action::Kill(id(1, 0)),
            Action::Restart(id(1, 1)),
            Action::Reopen(EdgeId(0)),
        ]
    );
    assert!(
        !m.meter().is_open(EdgeId(0)),
        "revoked, so no longer metered"
    );
}

#[test]
fn channel_rights_are_what_each_end_may_send() {
    let tags = EdgeRights {
        tags: Some(monitor::rights::TagRange { lo: 3, hi: 9 }),
        nonblocking: false,
        quota: QUOTA,
    };
    let table = RightsBuilder::new()
        .partition("client", Policy::Stop)
        .partition("fs", Policy::Stop)
        .partition("net", Policy::Stop)
        .allow("client", "fs", tags)
        .allow("fs", "net", OPEN)
        .build()
        .unwrap();
    let r = |send, recv, tags, nonblocking| interconnect::Rights {
        send,
        recv,
        tags,
        nonblocking,
    };
    let any = (0, interconnect::ANY_TAG - 1);
    assert_eq!(
        table.channel_rights([0, 1]),
        [r(true, false, (3, 9), false), r(false, true, any, false)]
    );
    assert_eq!(
        table.channel_rights([1, 2]),
        [r(true, false, any, true), r(false, true, any, false)]
    );
    assert_eq!(
        table.channel_rights([0, 2]),
        [r(false, false, any, false); 2]
    );
}
