//! The MPI-style API: requests, cancellation, deadlines, truncation, rights,
//! communicators, configuration errors, error codes.

use interconnect::host;
use interconnect::layout::{self, Geometry};
use interconnect::{ANY_SOURCE, ANY_TAG, Config, Deadline, Endpoint, Error, Op, Rights, UNDEFINED};
use std::thread;

fn world(n: u32) -> Vec<Endpoint<host::HostPlatform>> {
    host::threads(&Config::new(n)).unwrap()
}

fn soon() -> Deadline {
    host::deadline_ms(20_000)
}

#[test]
fn isend_irecv_wait_test_waitall() {
    let mut eps = world(2);
    let w = eps[0].world();
    let r1 = eps[1].irecv(&w, 0, 1, 100).unwrap();
    let r2 = eps[1].irecv(&w, ANY_SOURCE, ANY_TAG, 100).unwrap();
    assert_eq!(eps[1].test(&r1).unwrap(), None);
    let s1 = eps[0].isend(&w, 1, 2, b"second").unwrap();
    let s2 = eps[0].isend(&w, 1, 1, b"first").unwrap();
    let sent = eps[0].waitall(&[s1, s2], Deadline::NOW).unwrap();
    assert_eq!(sent.len(), 2);
    // r1 wants tag 1; r2 (posted later) takes whatever comes first.
    let got = eps[1].waitall(&[r1, r2], soon()).unwrap();
    assert_eq!((got[0].status.tag, &got[0].data[..]), (1, &b"first"[..]));
    assert_eq!((got[1].status.tag, &got[1].data[..]), (2, &b"second"[..]));
    // Completed requests are gone.
    assert!(matches!(
        eps[1].wait(&r1, Deadline::NOW),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn irecv_claims_unexpected_message_in_order() {
    let mut eps = world(2);
    let w = eps[0].world();
    eps[0].send(&w, 1, 5, &[1; 100], Deadline::NOW).unwrap();
    eps[0].send(&w, 1, 5, &[2; 100], Deadline::NOW).unwrap();
    assert_eq!(eps[1].iprobe(&w, 0, 5).unwrap().map(|s| s.len), Some(100));
    let a = eps[1].irecv(&w, 0, 5, 100).unwrap();
    let b = eps[1].irecv(&w, 0, 5, 100).unwrap();
    assert_eq!(eps[1].wait(&b, Deadline::NOW).unwrap().data, vec![2; 100]);
    assert_eq!(eps[1].wait(&a, Deadline::NOW).unwrap().data, vec![1; 100]);
}

#[test]
fn truncation_and_timeouts() {
    let mut eps = world(2);
    let w = eps[0].world();
    eps[0].send(&w, 1, 1, &[9; 50], Deadline::NOW).unwrap();
    let mut small = [0u8; 10];
    let r = eps[1].recv(&w, 0, 1, &mut small, Deadline::NOW);
    assert_eq!(
        r,
        Err(Error::Truncated {
            rank: 0,
            tag: 1,
            len: 50,
            capacity: 10
        })
    );
    assert_eq!(small, [9; 10]);
    let r = eps[1].recv(&w, 0, 1, &mut small, host::deadline_ms(5));
    assert_eq!(r, Err(Error::Timeout { rank: 0 }));
    assert_eq!(
        eps[1].probe(&w, ANY_SOURCE, 1, host::deadline_ms(5)),
        Err(Error::Timeout { rank: ANY_SOURCE })
    );
    // A blocking send waits for credit until its deadline.
    let mut cfg = Config::new(2);
    cfg.geometry = Geometry {
        slots: 2,
        ..Geometry::default()
    };
    let mut eps = host::threads(&cfg).unwrap();
    for _ in 0..2 {
        eps[0].send(&w, 1, 1, b"x", Deadline::NOW).unwrap();
    }
    assert_eq!(
        eps[0].send(&w, 1, 1, b"x", Deadline::NOW),
        Err(Error::WouldBlock { rank: 1 })
    );
    let dl = host::deadline_ms(5);
    assert_eq!(
        eps[0].send(&w, 1, 1, b"x", dl),
        Err(Error::Timeout { rank: 1 })
    );
}

#[test]
fn cancel_pending_receive_and_half_sent_message() {
    let mut eps = world(2);
    let w = eps[0].world();
    let r = eps[1].irecv(&w, 0, 1, 10).unwrap();
    eps[1].cancel(&r).unwrap();
    assert_eq!(
        eps[1].wait(&r, Deadline::NOW),
        Err(Error::Cancelled { rank: 0, tag: 1 })
    );
    // A message larger than the data area goes out in pieces; cancelling the send
    // midway makes the receiver's receive fail with Cancelled, and the next message
    // arrives intact.
    let big = vec![3u8; 2 << 20];
    let s = eps[0].isend(&w, 1, 2, &big).unwrap();
    let mut buf = vec![0u8; 2 << 20];
    let rr = eps[1].irecv(&w, 0, 2, 2 << 20).unwrap();
    assert_eq!(eps[1].test(&rr).unwrap(), None);
    eps[0].cancel(&s).unwrap();
    assert!(matches!(
        eps[0].wait(&s, Deadline::NOW),
        Err(Error::Cancelled { .. })
    ));
    eps[0].send(&w, 1, 2, b"after", Deadline::NOW).unwrap();
    assert!(matches!(
        eps[1].wait(&rr, Deadline::NOW),
        Err(Error::Cancelled { rank: 0, .. })
    ));
    let st = eps[1].recv(&w, 0, 2, &mut buf, Deadline::NOW).unwrap();
    assert_eq!(&buf[..st.len], b"after");
}

#[test]
fn sendrecv_exchanges_without_deadlock() {
    let mut eps = world(2);
    let mut b = eps.pop().unwrap();
    let mut a = eps.pop().unwrap();
    let big = vec![1u8; 1 << 20];
    let big2 = big.clone();
    let t = thread::spawn(move || {
        let w = b.world();
        let mut buf = vec![0u8; 1 << 20];
        let st = b.sendrecv(&w, 0, 1, &big2, 0, 1, &mut buf, soon()).unwrap();
        assert_eq!(st.len, 1 << 20);
    });
    let w = a.world();
    let mut buf = vec![0u8; 1 << 20];
    let st = a.sendrecv(&w, 1, 1, &big, 1, 1, &mut buf, soon()).unwrap();
    assert_eq!((st.source, st.len), (1, 1 << 20));
    t.join().unwrap();
}

#[test]
fn rights_are_checked_before_memory() {
    let mut cfg = Config::new(3);
    let only_tags = Rights {
        tags: (10, 20),
        nonblocking: false,
        ..Rights::default()
    };
    cfg.rights = vec![
        ((0, 1), only_tags),
        (
            (0, 2),
            Rights {
                send: false,
                ..Rights::default()
            },
        ),
    ];
    let mut eps = host::threads(&cfg).unwrap();
    let w = eps[0].world();
    let denied = |rank, tag| Err(Error::PermissionDenied { rank, tag });
    assert_eq!(eps[0].send(&w, 1, 5, b"x", soon()), denied(1, 5));
    assert_eq!(eps[0].send(&w, 1, 15, b"x", Deadline::NOW), denied(1, 15));
    assert_eq!(eps[0].isend(&w, 1, 15, b"x").map(|_| ()), denied(1, 15));
    assert_eq!(eps[0].send(&w, 2, 15, b"x", soon()), denied(2, 15));
    eps[0].send(&w, 1, 15, b"x", soon()).unwrap();
    // Nothing was written to the channel by the refused sends: one message in it.
    let region = eps[0].channel(1).unwrap().region().clone();
    let counts = layout::Meter::default().read(&region, &cfg.geometry);
    assert_eq!(counts[0].messages, 1);
    // Rank 2 may not receive what rank 0 may not send.
    let w2 = eps[2].world();
    let mut buf = [0u8; 1];
    assert_eq!(
        eps[2].recv(&w2, 0, 1, &mut buf, Deadline::NOW),
        Err(Error::PermissionDenied { rank: 0, tag: 1 })
    );
}

#[test]
fn revocation_and_death_through_shm_world() {
    let cfg = Config::new(2);
    let prefix = format!("vmpi-test-api-{}", std::process::id());
    let world = host::ShmWorld::create(&prefix, &cfg).unwrap();
    let mut a = host::ShmWorld::attach(&prefix, &cfg, 0).unwrap();
    let mut b = host::ShmWorld::attach(&prefix, &cfg, 1).unwrap();
    let w = a.world();
    a.send(&w, 1, 1, b"hi", Deadline::NOW).unwrap();
    let mut buf = [0u8; 2];
    b.recv(&w, 0, 1, &mut buf, Deadline::NOW).unwrap();
    let counts = layout::Meter::default().read(world.region(0, 1).unwrap(), &cfg.geometry);
    assert_eq!((counts[0].messages, counts[1].messages), (1, 0));
    world.revoke(0, 1);
    assert_eq!(
        a.send(&w, 1, 1, b"hi", Deadline::NOW),
        Err(Error::Revoked { rank: 1 })
    );
    assert_eq!(
        b.recv(&w, 0, 1, &mut buf, host::deadline_ms(1000)),
        Err(Error::Revoked { rank: 0 })
    );
    assert!(shm_exists(&prefix));
    drop(world);
    assert!(!shm_exists(&prefix));
}

fn shm_exists(prefix: &str) -> bool {
    std::path::Path::new(&format!("/dev/shm/{prefix}-0-1")).exists()
}

#[test]
fn communicators_groups_and_split() {
    let mut cfg = Config::new(4);
    cfg.groups = vec![("evens".into(), vec![2, 0])];
    let eps = host::threads(&cfg).unwrap();
    let handles: Vec<_> = eps
        .into_iter()
        .map(|mut ep| {
            thread::spawn(move || {
                let w = ep.world();
                let me = w.rank();
                let evens = ep.group("evens").unwrap();
                assert!(matches!(ep.group("nope"), Err(Error::InvalidConfig { value, .. }) if value == "nope"));
                if let Some(g) = &evens {
                    // Group order is the configured order: world 2 is rank 0.
                    assert_eq!(g.rank(), if me == 2 { 0 } else { 1 });
                    let mut v = vec![me as u8];
                    ep.bcast(g, 0, &mut v, soon()).unwrap();
                    assert_eq!(v, vec![2]);
                    // Same tag in world and group never mix.
                    let peer = 1 - g.rank();
                    ep.send(g, peer, 7, b"g", soon()).unwrap();
                }
                let colour = if me == 3 { UNDEFINED } else { me % 2 };
                let sub = ep.split(&w, colour, 10 - me, soon()).unwrap();
                assert_eq!(sub.is_none(), me == 3);
                if let Some(s) = &sub {
                    // Keys reverse the order.
                    let expect: Vec<u32> = if me % 2 == 0 { vec![2, 0] } else { vec![1] };
                    assert_eq!(s.size() as usize, expect.len());
                    assert_eq!(s.world_rank(s.rank()), Some(me));
                    assert_eq!(s.world_rank(0), Some(expect[0]));
                    let mut x = [u64::from(me) + 1];
                    ep.allreduce(s, &mut x, Op::Sum, soon()).unwrap();
                    assert_eq!(x[0], expect.iter().map(|&r| u64::from(r) + 1).sum::<u64>());
                }
                let parts: Vec<Vec<u8>> = (0..4).map(|i| vec![i as u8; i]).collect();
                let mine = ep.scatter(&w, 1, &parts, soon()).unwrap();
                assert_eq!(mine, vec![me as u8; me as usize]);
                let all = ep.gather(&w, 3, &mine, soon()).unwrap();
                assert_eq!(all.len(), if me == 3 { 4 } else { 0 });
                let mut m = [u64::from(me)];
                ep.reduce(&w, 2, &mut m, Op::Min, soon()).unwrap();
                if me == 2 {
                    assert_eq!(m[0], 0);
                }
                if let Some(g) = &evens {
                    let mut buf = [0u8; 1];
                    assert!(matches!(ep.recv(&w, ANY_SOURCE, 7, &mut buf, Deadline::NOW), Err(Error::Timeout { .. })));
                    ep.recv(g, ANY_SOURCE, 7, &mut buf, soon()).unwrap();
                }
                ep.barrier(&w, soon()).unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn bad_configuration_names_the_value() {
    let value = |c: &Config| match c.validate() {
        Err(Error::InvalidConfig { value, .. }) => value,
        r => panic!("{r:?}"),
    };
    assert_eq!(value(&Config::new(0)), "0");
    let mut c = Config::new(2);
    c.pairs = vec![(0, 5)];
    assert_eq!(value(&c), "5");
    let mut c = Config::new(2);
    c.groups = vec![("g".into(), vec![0, 9])];
    assert_eq!(value(&c), "9");
    let mut c = Config::new(2);
    c.geometry.slots = 0;
    assert_eq!(value(&c), "0");
    let mut c = Config::new(2);
    c.geometry.data_len = 1000;
    assert_eq!(value(&c), "1000");
    let c = Config::new(2);
    assert!(
        matches!(host::ShmWorld::attach("vmpi-test-none", &c, 7), Err(Error::InvalidConfig { value, .. }) if value == "7")
    );
    assert!(matches!(
        host::ShmWorld::attach("vmpi-test-none", &c, 1),
        Err(Error::InvalidConfig {
            what: "shared-memory file",
            ..
        })
    ));
}

#[test]
fn error_codes_are_stable() {
    let codes = [
        Error::PermissionDenied { rank: 0, tag: 0 }.code(),
        Error::Timeout { rank: 0 }.code(),
        Error::WouldBlock { rank: 0 }.code(),
        Error::PeerDead { rank: 0 }.code(),
        Error::Revoked { rank: 0 }.code(),
        Error::Truncated {
            rank: 0,
            tag: 0,
            len: 0,
            capacity: 0,
        }
        .code(),
        Error::Malformed {
            rank: 0,
            what: "",
            value: 0,
        }
        .code(),
        Error::Cancelled { rank: 0, tag: 0 }.code(),
        Error::InvalidConfig {
            what: "",
            value: String::new(),
        }
        .code(),
        Error::InvalidArgument { what: "", value: 0 }.code(),
    ];
    assert_eq!(codes, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert_eq!(
        Error::Timeout { rank: 3 }.to_string(),
        "timed out waiting for rank 3"
    );
}

#[test]
fn wildcard_receive_fails_when_every_peer_is_dead() {
    let mut eps = world(3);
    let w = eps[0].world();
    for peer in [1, 2] {
        let region = eps[0].channel(peer).unwrap().region().clone();
        layout::mark_dead(&region, 1); // the peer is side 1 (the higher rank)
    }
    let mut buf = [0u8; 1];
    let r = eps[0].recv(&w, ANY_SOURCE, ANY_TAG, &mut buf, soon());
    assert!(matches!(r, Err(Error::PeerDead { .. })), "{r:?}");
    let r = eps[0]
        .irecv(&w, 1, ANY_TAG, 1)
        .and_then(|q| eps[0].wait(&q, soon()));
    assert_eq!(r, Err(Error::PeerDead { rank: 1 }));
}

#[test]
fn a_stale_generation_is_dead_until_reattached() {
    let cfg = Config::new(2);
    let mut eps = host::threads(&cfg).unwrap();
    let w = eps[0].world();
    let mut buf = [0u8; 16];
    eps[0].send(&w, 1, 1, b"before", soon()).unwrap();
    assert_eq!(eps[1].recv(&w, 0, 1, &mut buf, soon()).unwrap().len, 6);
    // Rank 0 waits on the first incarnation of rank 1, which crashes.
    let old = eps[0].irecv(&w, 1, 7, 16).unwrap();
    let region = eps[0].channel(1).unwrap().region().clone();
    layout::mark_dead(&region, 1);
    assert_eq!(
        eps[0].reattach(1),
        Err(Error::PeerDead { rank: 1 }),
        "not reopened yet"
    );
    // The monitor reopens the channel for generation 1, which attaches and sends at once.
    layout::reopen(&region, cfg.geometry, [0, 1], [0, 1]).unwrap();
    layout::publish(&region, [Default::default(); 2]);
    let ch = interconnect::ring::Channel::attach(region, 1, 0).unwrap();
    let bells = interconnect::shm::Region::heap(2 * layout::LINE);
    let platform = host::HostPlatform::new(bells, 1).unwrap();
    let mut new = Endpoint::new(&cfg, 1, vec![(0, ch)], platform).unwrap();
    new.send(&w, 0, 7, b"from gen 1", Deadline::NOW).unwrap();
    // Generation 1 then spoils the header (magic, ring slots): rank 0 re-attaches with
    // the side and geometry it had, not with what the header now says.
    let hdr = eps[0].channel(1).unwrap().region().clone();
    hdr.store32(0, 0xbad, core::sync::atomic::Ordering::Relaxed);
    hdr.store32(12, 4, core::sync::atomic::Ordering::Relaxed);
    assert!(interconnect::ring::Channel::attach(hdr, 0, 1).is_err());
    // Neither the request made against generation 0 nor a new receive gets it.
    assert_eq!(eps[0].wait(&old, soon()), Err(Error::PeerDead { rank: 1 }));
    let r = eps[0].recv(&w, 1, 7, &mut buf, soon());
    assert_eq!(r, Err(Error::PeerDead { rank: 1 }));
    assert_eq!(eps[0].channel(1).unwrap().peer_generation(), 0);
    // After re-attaching, rank 0 talks to generation 1, both ways.
    assert_eq!(eps[0].reattach(1), Ok(1));
    assert_eq!(eps[0].reattach(1), Ok(1), "a second call changes nothing");
    let st = eps[0].recv(&w, 1, 7, &mut buf, soon()).unwrap();
    assert_eq!(&buf[..st.len], b"from gen 1");
    eps[0].send(&w, 1, 2, b"hello 1", Deadline::NOW).unwrap();
    let st = new.recv(&w, 0, 2, &mut buf, Deadline::NOW).unwrap();
    assert_eq!(&buf[..st.len], b"hello 1");
}
