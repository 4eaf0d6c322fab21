//! Property tests: ordering, wrap-around, credits, fragmentation, wildcard matching,
//! and random corruption.

use interconnect::host::{self, HostPlatform};
use interconnect::layout::Geometry;
use interconnect::{ANY_SOURCE, ANY_TAG, Config, Deadline, Endpoint, Error, Request};
use proptest::prelude::*;

type Ep = Endpoint<HostPlatform>;

fn world(n: u32, g: Geometry) -> Vec<Ep> {
    let mut c = Config::new(n);
    c.geometry = g;
    host::threads(&c).unwrap()
}

fn geometry() -> impl Strategy<Value = Geometry> {
    (1u32..5, 12u32..15).prop_map(|(s, d)| Geometry {
        slots: 1 << s,
        data_len: 1 << d,
        max_msg: 1 << 18,
    })
}

fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (k * 31 + i * 7) as u8).collect()
}

fn lengths() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(
        prop_oneof![4 => 0usize..64, 2 => 64usize..5000, 1 => 5000usize..100_000],
        1..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// isends queue behind each other, fragments interleave with the receiver's
    /// progress, the ring wraps many times: every message arrives intact and in order.
    #[test]
    fn order_wraparound_fragmentation(g in geometry(), lens in lengths(), tags in prop::collection::vec(0u32..3, 40)) {
        let mut eps = world(2, g);
        let w = eps[0].world();
        let sends: Vec<Request> = lens.iter().enumerate()
            .map(|(i, &n)| eps[0].isend(&w, 1, tags[i], &payload(i, n)).unwrap())
            .collect();
        let recvs: Vec<Request> = lens.iter().map(|_| eps[1].irecv(&w, 0, ANY_TAG, 1 << 18).unwrap()).collect();
        let (mut sdone, mut rdone) = (vec![false; sends.len()], vec![None; recvs.len()]);
        for _ in 0..100_000 {
            for (i, r) in sends.iter().enumerate() {
                if !sdone[i] { sdone[i] = eps[0].test(r).unwrap().is_some(); }
            }
            for (i, r) in recvs.iter().enumerate() {
                if rdone[i].is_none() { rdone[i] = eps[1].test(r).unwrap(); }
            }
            if sdone.iter().all(|&d| d) && rdone.iter().all(|d| d.is_some()) { break; }
        }
        for (i, c) in rdone.iter().enumerate() {
            let c = c.as_ref().expect("completed");
            prop_assert_eq!(c.status.tag, tags[i]);
            prop_assert_eq!(&c.data, &payload(i, lens[i]));
        }
    }

    /// Credits: with nobody receiving, non-blocking sends succeed until the ring or the
    /// data area is full, then return WouldBlock; one receive gives credit back.
    #[test]
    fn credits(g in geometry(), len in 0usize..3000) {
        let mut eps = world(2, g);
        let w = eps[0].world();
        let mut sent = 0usize;
        let err = loop {
            match eps[0].send(&w, 1, 1, &payload(sent, len), Deadline::NOW) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            prop_assert!(sent <= g.slots as usize, "more messages than slots");
        };
        prop_assert_eq!(err, Error::WouldBlock { rank: 1 });
        // All or nothing: a message that needs more slots than the ring has never goes.
        let max_chunk = (g.data_len as usize / 4).min(64 << 10);
        let k = if len <= 16 { 1 } else { len.div_ceil(max_chunk) };
        prop_assert_eq!(sent >= 1, k <= g.slots as usize);
        prop_assert!(sent * k <= g.slots as usize);
        let mut buf = vec![0u8; len];
        for i in 0..sent {
            eps[1].recv(&w, 0, 1, &mut buf, Deadline::NOW).unwrap();
            prop_assert_eq!(&buf, &payload(i, len));
        }
        let empty = matches!(eps[1].recv(&w, 0, 1, &mut buf, Deadline::NOW), Err(Error::Timeout { .. }));
        prop_assert!(empty);
        if sent > 0 {
            eps[0].send(&w, 1, 1, &payload(sent, len), Deadline::NOW).unwrap();
        }
    }

    /// Wildcards: whatever (source, tag) pattern is asked, the message returned is the
    /// earliest unreceived matching one of its source; a receive fails only when
    /// nothing matches. iprobe agrees with the receive that follows.
    #[test]
    fn wildcard_matching(
        msgs in prop::collection::vec((1u32..3, 0u32..3), 1..30),
        pats in prop::collection::vec((prop::option::of(1u32..3), prop::option::of(0u32..3)), 1..40),
    ) {
        let mut eps = world(3, Geometry { slots: 64, ..Geometry::default() });
        let w = eps[0].world();
        for (i, &(src, tag)) in msgs.iter().enumerate() {
            eps[src as usize].send(&w, 0, tag, &(i as u32).to_le_bytes(), Deadline::NOW).unwrap();
        }
        let mut left: Vec<(usize, u32, u32)> = msgs.iter().enumerate().map(|(i, &(s, t))| (i, s, t)).collect();
        for (ps, pt) in pats {
            let (src, tag) = (ps.unwrap_or(ANY_SOURCE), pt.unwrap_or(ANY_TAG));
            let hit = |&&(_, s, t): &&(usize, u32, u32)| ps.is_none_or(|p| p == s) && pt.is_none_or(|p| p == t);
            let probe = eps[0].iprobe(&w, src, tag).unwrap();
            let mut buf = [0u8; 4];
            match eps[0].recv(&w, src, tag, &mut buf, Deadline::NOW) {
                Ok(st) => {
                    let i = u32::from_le_bytes(buf) as usize;
                    let pos = left.iter().position(|m| m.0 == i).expect("not received twice");
                    let m = left[pos];
                    prop_assert!(hit(&&m));
                    prop_assert_eq!((st.source, st.tag), (m.1, m.2));
                    let first = left.iter().filter(|x| x.1 == m.1).find(hit).unwrap();
                    prop_assert_eq!(first.0, i, "non-overtaking");
                    if ps.is_some() {
                        prop_assert_eq!(probe.map(|p| (p.source, p.tag)), Some((st.source, st.tag)));
                    } else {
                        prop_assert!(probe.is_some());
                    }
                    left.remove(pos);
                }
                Err(Error::Timeout { .. }) => {
                    prop_assert!(!left.iter().any(|m| hit(&m)), "a matching message was missed");
                    prop_assert_eq!(probe, None);
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }

    /// The volatile copies into and out of shared memory, at every alignment.
    #[test]
    fn region_copies_round_trip(off in 0usize..200, data in prop::collection::vec(any::<u8>(), 0..600), skew in 0usize..16) {
        let r = interconnect::shm::Region::heap(1024);
        r.write(off, &data);
        let mut back = vec![0u8; data.len() + skew];
        r.read(off, &mut back[skew..]);
        prop_assert_eq!(&back[skew..], &data[..]);
        let mut before = [0u8; 1];
        if off > 0 {
            r.read(off - 1, &mut before);
            prop_assert_eq!(before[0], 0);
        }
    }

    /// Random bytes anywhere a peer can write: the receive path terminates without
    /// panicking.
    #[test]
    fn random_peer_bytes(bytes in prop::collection::vec(any::<u8>(), 0..3000)) {
        interconnect::fuzzing::rx_over_bytes(&bytes);
    }

    /// Valid traffic, then random byte flips in the peer's half: every receive ends in
    /// data, Malformed, Cancelled, Truncated or Timeout, never a panic or a hang.
    #[test]
    fn random_flips_after_traffic(lens in lengths(), flips in prop::collection::vec((any::<u16>(), any::<u8>()), 1..20)) {
        let g = Geometry { slots: 16, data_len: 1 << 14, max_msg: 1 << 18 };
        let mut eps = world(2, g);
        let w = eps[0].world();
        for (i, &n) in lens.iter().enumerate() {
            if eps[0].send(&w, 1, 1, &payload(i, n), Deadline::NOW).is_err() { break; }
        }
        let region = eps[0].channel(1).unwrap().region().clone();
        let d = g.dir(0);
        let span = d.data + g.data_len as usize - d.prod;
        for (off, v) in flips {
            let off = d.prod + off as usize % span;
            if (d.cons..d.cons + 64).contains(&off) { continue; } // the receiver's own line
            region.write(off, &[v]);
        }
        let mut buf = vec![0u8; 1 << 18];
        for _ in 0..lens.len() + 1 {
            match eps[1].recv(&w, 0, ANY_TAG, &mut buf, Deadline::NOW) {
                Ok(_) | Err(Error::Truncated { .. } | Error::Cancelled { .. }) => {}
                Err(Error::Malformed { .. } | Error::Timeout { .. }) => break,
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }
}
