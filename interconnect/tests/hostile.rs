//! A hostile peer: corrupt every field it controls, one at a time. The victim must get
//! `Malformed` (or `Revoked`/`PeerDead` for the control words), count it where the
//! monitor reads it, and never panic, hang or touch memory out of bounds.

use core::mem::offset_of;
use interconnect::host::{self, HostPlatform};
use interconnect::layout::{self, Frag, Geometry, Meter, Slot};
use interconnect::ring::Channel;
use interconnect::shm::Region;
use interconnect::{Config, Deadline, Endpoint, Error};

type Ep = Endpoint<HostPlatform>;

fn geometry() -> Geometry {
    Geometry {
        slots: 4,
        data_len: 4096,
        max_msg: 1 << 16,
    }
}

fn world(n: u32) -> Vec<Ep> {
    world_with(n, geometry())
}

fn world_with(n: u32, g: Geometry) -> Vec<Ep> {
    let mut c = Config::new(n);
    c.geometry = g;
    host::threads(&c).unwrap()
}

/// Offset of field `field` of slot `i` of direction 0 (rank 0 → rank 1).
fn slot(i: usize, field: usize) -> usize {
    geometry().dir(0).slots + 64 * i + field
}

const SEQ: usize = offset_of!(Slot, seq);
const TAG: usize = offset_of!(Slot, tag);
const LEN: usize = offset_of!(Slot, len_kind);
const POS: usize = offset_of!(Slot, payload) + offset_of!(Frag, pos);
const CHUNK: usize = offset_of!(Slot, payload) + offset_of!(Frag, chunk);
const OFFSET: usize = offset_of!(Slot, payload) + offset_of!(Frag, offset);

/// Rank 0 sends `len` bytes, the corruption runs on the channel, rank 1 receives.
fn attack(len: usize, corrupt: impl FnOnce(&Region)) -> (Result<usize, Error>, Vec<Ep>) {
    let mut eps = world(3);
    let w = eps[0].world();
    if len > 0 {
        let msg: Vec<u8> = (0..len).map(|i| i as u8).collect();
        eps[0].send(&w, 1, 3, &msg, Deadline::NOW).unwrap();
    }
    let region = eps[0].channel(1).unwrap().region().clone();
    corrupt(&region);
    let mut buf = vec![0u8; 1 << 16];
    let r = eps[1]
        .recv(&w, 0, 3, &mut buf, Deadline::NOW)
        .map(|s| s.len);
    (r, eps)
}

fn malformed(len: usize, corrupt: impl FnOnce(&Region)) -> &'static str {
    let (r, mut eps) = attack(len, corrupt);
    let Err(Error::Malformed { rank: 0, what, .. }) = r else {
        panic!("expected Malformed, got {r:?}")
    };
    // Counted where the monitor reads it.
    let region = eps[0].channel(1).unwrap().region().clone();
    let counts = Meter::default().read(&region, &geometry());
    assert_eq!(counts[0].rx_malformed, 1);
    // The channel stays broken; other peers are unaffected.
    let w = eps[1].world();
    let mut buf = [0u8; 4];
    assert!(matches!(
        eps[1].recv(&w, 0, 3, &mut buf, Deadline::NOW),
        Err(Error::Malformed { .. })
    ));
    assert!(matches!(
        eps[1].send(&w, 0, 3, b"x", Deadline::NOW),
        Err(Error::Malformed { .. })
    ));
    eps[2].send(&w, 1, 4, b"ok", Deadline::NOW).unwrap();
    assert_eq!(
        eps[1].recv(&w, 2, 4, &mut buf, Deadline::NOW).unwrap().len,
        2
    );
    what
}

fn put32(r: &Region, off: usize, v: u32) {
    r.write(off, &v.to_le_bytes());
}

fn put64(r: &Region, off: usize, v: u64) {
    r.write(off, &v.to_le_bytes());
}

#[test]
fn sequence_numbers() {
    assert_eq!(malformed(0, |r| put32(r, slot(0, SEQ), 7)), "slot sequence");
    assert_eq!(
        malformed(8, |r| put32(r, slot(0, SEQ), 0x00ff_ffff)),
        "slot sequence"
    );
    assert_eq!(malformed(8, |r| put32(r, slot(0, SEQ), 5)), "slot sequence");
    // A stale sequence (the slot's previous lap, or another session's message) is just
    // "nothing yet".
    for stale in [0, 1 | 1 << 24] {
        let (r, _) = attack(8, |r| put32(r, slot(0, SEQ), stale));
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    }
}

#[test]
fn a_side_attached_before_a_reopen_never_reaches_the_new_session() {
    let g = geometry();
    let r = Region::heap(g.region_len());
    layout::init(&r, g, [0, 1]).unwrap();
    let mut stale = Channel::attach(r.clone(), 0, 1).unwrap();
    // Side 1 restarts: the channel is reopened with its new generation.
    layout::reopen(&r, g, [0, 1], [0, 1]).unwrap();
    let mut fresh = Channel::attach(r.clone(), 1, 0).unwrap();
    // The old side passed its liveness check just before; it publishes now.
    let mut done = 0;
    stale.tx.send(1, 0, b"stale", &mut done).unwrap();
    assert_eq!(fresh.rx.peek().unwrap(), None);
    // The new session's side 1 sends; the old side 0 does not take it either.
    fresh.tx.send(2, 0, b"new", &mut 0).unwrap();
    assert_eq!(stale.rx.peek().unwrap(), None);
    // Side 0 re-attached to the new session: both ways work, the stale slot is
    // overwritten by the new session's first message.
    let mut again = Channel::attach(r, 0, 1).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(again.rx.take(&mut buf).unwrap(), Some(3));
    again.tx.send(3, 0, b"again", &mut 0).unwrap();
    assert_eq!(fresh.rx.take(&mut buf).unwrap(), Some(5));
    assert_eq!(&buf[..5], b"again");
}

#[test]
fn kinds_and_lengths() {
    assert_eq!(malformed(8, |r| put32(r, slot(0, LEN), 8)), "slot kind");
    assert_eq!(
        malformed(8, |r| put32(r, slot(0, LEN), 17 | 1 << 30)),
        "inline length"
    );
    assert_eq!(
        malformed(100, |r| put32(r, slot(0, LEN), 16 | 2 << 30)),
        "message length"
    );
    assert_eq!(
        malformed(100, |r| put32(r, slot(0, LEN), ((1 << 30) - 1) | (2 << 30))),
        "message length"
    );
    assert_eq!(
        malformed(100, |r| put32(r, slot(0, LEN), 50 | 2 << 30)),
        "fragment position"
    );
}

#[test]
fn fragment_descriptors() {
    let bad_pos = |v: u64| malformed(100, move |r| put64(r, slot(0, POS), v));
    assert_eq!(bad_pos(8), "fragment position");
    assert_eq!(bad_pos(4096), "fragment position");
    assert_eq!(bad_pos(u64::MAX - 63), "fragment position");
    assert_eq!(bad_pos(4096 - 64), "fragment position");
    assert_eq!(
        malformed(100, |r| put32(r, slot(0, CHUNK), 0)),
        "fragment position"
    );
    assert_eq!(
        malformed(100, |r| put32(r, slot(0, CHUNK), u32::MAX)),
        "fragment position"
    );
    assert_eq!(
        malformed(100, |r| put32(r, slot(0, OFFSET), 64)),
        "fragment position"
    );
    assert_eq!(
        malformed(3000, |r| put32(r, slot(0, OFFSET), 1024)),
        "fragment offset"
    );
    // The advisory data head is not trusted: a lie there changes nothing.
    let head = geometry().dir(0).data_head();
    assert_eq!(attack(100, |r| put64(r, head, 0)).0, Ok(100));
}

#[test]
fn fragments_out_of_sequence() {
    // 3000 bytes go as three chunks of at most 1024 (data area 4096).
    assert_eq!(
        malformed(3000, |r| put32(r, slot(1, TAG), 99)),
        "fragment out of sequence"
    );
    assert_eq!(
        malformed(3000, |r| put32(r, slot(1, OFFSET), 0)),
        "fragment out of sequence"
    );
    assert_eq!(
        malformed(3000, |r| put32(r, slot(1, LEN), 3001 | 2 << 30)),
        "fragment out of sequence"
    );
    assert_eq!(
        malformed(3000, |r| put32(r, slot(1, LEN), 9 | 1 << 30)),
        "fragment out of sequence"
    );
}

#[test]
fn receiver_controlled_counters_seen_by_sender() {
    for (field, value, len) in [("consumed", 1000u64, 8), ("data_tail", 1 << 40, 1000)] {
        let g = Geometry {
            slots: 64,
            ..geometry()
        };
        let mut eps = world_with(2, g);
        let w = eps[0].world();
        let region = eps[0].channel(1).unwrap().region().clone();
        let d = g.dir(0);
        let off = if field == "consumed" {
            d.consumed()
        } else {
            d.data_tail()
        };
        put64(&region, off, value);
        let mut r = Ok(());
        for _ in 0..100 {
            r = eps[0].send(&w, 1, 1, &vec![0u8; len], Deadline::NOW);
            if r.is_err() {
                break;
            }
        }
        assert!(
            matches!(r, Err(Error::Malformed { rank: 1, .. })),
            "{field}: {r:?}"
        );
        assert_eq!(Meter::default().read(&region, &g)[0].tx_malformed, 1);
    }
}

#[test]
fn control_and_liveness_words() {
    let (r, mut eps) = attack(8, |r| put32(r, layout::CONTROL, 0x5eed));
    assert_eq!(r, Err(Error::Revoked { rank: 0 }));
    let w = eps[0].world();
    assert_eq!(
        eps[0].send(&w, 1, 1, b"x", Deadline::NOW),
        Err(Error::Revoked { rank: 1 })
    );
    let (r, _) = attack(8, |r| layout::mark_dead(r, 0));
    assert_eq!(r, Err(Error::PeerDead { rank: 0 }));
}

#[test]
fn header_is_checked_at_attach() {
    let g = geometry();
    let fresh = || {
        let r = Region::heap(g.region_len());
        layout::init(&r, g, [0, 1]).unwrap();
        r
    };
    let cases: [(usize, u32, &str); 4] = [
        (0, 0xbad, "channel magic"),
        (8, 2, "channel version"),
        (12, 3, "ring slots"),
        (16, 100, "data area"),
    ];
    for (off, v, what) in cases {
        let r = fresh();
        put32(&r, off, v);
        let Err(Error::InvalidConfig { what: w, value }) = Channel::attach(r, 1, 0) else {
            panic!("{what}")
        };
        assert!(w.starts_with(what), "{w} / {what}");
        assert!(!value.is_empty());
    }
    let r = fresh();
    assert!(matches!(
        Channel::attach(r, 1, 2),
        Err(Error::InvalidConfig {
            what: "channel ranks",
            ..
        })
    ));
    // A region shorter than its header claims.
    let short = Region::heap(g.region_len());
    layout::init(&short, g, [0, 1]).unwrap();
    put32(&short, 12, 1 << 16);
    assert!(matches!(
        Channel::attach(short, 1, 0),
        Err(Error::InvalidConfig { .. })
    ));
}

#[test]
fn header_changes_after_attach_are_ignored() {
    let mut eps = world(2);
    let w = eps[0].world();
    let region = eps[0].channel(1).unwrap().region().clone();
    put32(&region, 12, 1 << 16); // slots
    put32(&region, 16, 1 << 30); // data_len
    eps[0].send(&w, 1, 1, &[5u8; 3000], Deadline::NOW).unwrap();
    let mut buf = vec![0u8; 3000];
    assert_eq!(
        eps[1].recv(&w, 0, 1, &mut buf, Deadline::NOW).unwrap().len,
        3000
    );
    assert!(buf.iter().all(|&b| b == 5));
}

#[test]
fn unmatched_flood_is_bounded_by_credit() {
    let mut c = Config::new(2);
    c.geometry = geometry();
    c.unexpected_limit = 64 * 100;
    let mut eps = host::threads(&c).unwrap();
    let w = eps[0].world();
    // Rank 0 floods empty messages nobody asks for; rank 1 waits for another tag.
    let mut sent = 0;
    let mut buf = [0u8; 1];
    for _ in 0..1000 {
        while eps[0].send(&w, 1, 1, &[], Deadline::NOW).is_ok() {
            sent += 1;
        }
        let r = eps[1].recv(&w, 0, 2, &mut buf, Deadline::NOW);
        assert!(matches!(r, Err(Error::Timeout { .. })));
    }
    // The receiver buffered at most its budget; the rest stayed in the ring, so the
    // flooder ran out of credit.
    assert!(sent <= 100 + geometry().slots as usize, "{sent}");
    assert_eq!(
        eps[0].send(&w, 1, 1, &[], Deadline::NOW),
        Err(Error::WouldBlock { rank: 1 })
    );
}

#[test]
fn meter_survives_hostile_counters() {
    let g = geometry();
    let mut eps = world(2);
    let w = eps[0].world();
    for _ in 0..3 {
        eps[0].send(&w, 1, 1, b"m", Deadline::NOW).unwrap();
    }
    let region = eps[0].channel(1).unwrap().region().clone();
    let mut m = Meter::default();
    assert_eq!(m.read(&region, &g)[0].messages, 3);
    eps[0].send(&w, 1, 1, &[1u8; 100], Deadline::NOW).unwrap();
    let c = m.read(&region, &g)[0];
    assert_eq!((c.messages, c.data_bytes), (4, 103));
    // A receiver claiming absurd progress, a sender rewriting a consumed slot: the
    // meter neither panics nor goes backwards.
    for v in [u64::MAX, 1 << 40, 2] {
        put64(&region, g.dir(0).consumed(), v);
        put32(&region, slot(0, SEQ), u32::MAX);
        assert!(m.read(&region, &g)[0].messages >= 4);
    }
}
