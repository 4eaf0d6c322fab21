//! Point-to-point basics over the thread transport.

use interconnect::layout;
use interconnect::ring::Channel;
use interconnect::shm::Region;
use interconnect::{ANY_SOURCE, ANY_TAG, Config, Deadline, Endpoint, Error, Platform, Rank, host};
use std::cell::RefCell;
use std::rc::Rc;
use std::thread;

type Ep = Endpoint<host::HostPlatform>;

fn dl(ep: &Ep) -> Deadline {
    ep.after_ms(10_000)
}

/// Ranks 0 and 1 of a world of two over the thread transport.
fn pair() -> (Ep, Ep) {
    let mut eps = host::threads(&Config::new(2)).unwrap();
    let b = eps.pop().unwrap();
    (eps.pop().unwrap(), b)
}

#[test]
fn ping_pong_small_and_large() {
    let (mut a, mut b) = pair();
    let sizes = [0usize, 1, 8, 40, 41, 64, 1000, 65536, 300_000, 1 << 20];
    let t = thread::spawn(move || {
        let w = b.world();
        let mut buf = vec![0u8; 1 << 20];
        for &n in &sizes {
            let st = b.recv(&w, 0, 3, &mut buf, dl(&b)).unwrap();
            assert_eq!(st.len, n);
            b.send(&w, 0, 4, &buf[..n], dl(&b)).unwrap();
        }
    });
    let w = a.world();
    let mut buf = vec![0u8; 1 << 20];
    for &n in &sizes {
        let msg: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
        a.send(&w, 1, 3, &msg, dl(&a)).unwrap();
        let st = a.recv(&w, 1, 4, &mut buf, dl(&a)).unwrap();
        assert_eq!((st.source, st.tag, st.len), (1, 4, n));
        assert_eq!(&buf[..n], &msg[..]);
    }
    t.join().unwrap();
}

#[test]
fn wildcards_and_order() {
    let mut eps = host::threads(&Config::new(3)).unwrap();
    let mut c = eps.pop().unwrap();
    let mut b = eps.pop().unwrap();
    let mut a = eps.pop().unwrap();
    let w = a.world();
    for i in 0..10u8 {
        b.send(&w, 0, u32::from(i % 2), &[1, i], Deadline::NOW)
            .unwrap();
        c.send(&w, 0, 5, &[2, i], Deadline::NOW).unwrap();
    }
    // Tag 1 from rank 1, in order, skipping the others.
    let mut buf = [0u8; 2];
    for i in (1..10u8).step_by(2) {
        let st = a.recv(&w, 1, 1, &mut buf, dl(&a)).unwrap();
        assert_eq!((st.source, st.tag, buf), (1, 1, [1, i]));
    }
    let mut seen = vec![];
    for _ in 0..15 {
        let st = a.recv(&w, ANY_SOURCE, ANY_TAG, &mut buf, dl(&a)).unwrap();
        assert_eq!(st.source as u8, buf[0]);
        seen.push(buf);
    }
    for src in [1u8, 2] {
        let from: Vec<u8> = seen.iter().filter(|b| b[0] == src).map(|b| b[1]).collect();
        let mut sorted = from.clone();
        sorted.sort();
        assert_eq!(from, sorted, "per-source order");
    }
    assert_eq!(a.iprobe(&w, ANY_SOURCE, ANY_TAG).unwrap(), None);
    assert!(matches!(
        a.recv(&w, 1, 0, &mut buf, Deadline::NOW),
        Err(Error::Timeout { .. })
    ));
}

#[test]
fn permission_denied_without_channel_or_outside_comm() {
    let mut cfg = Config::new(3);
    cfg.pairs = vec![(0, 1)];
    let mut eps = host::threads(&cfg).unwrap();
    let a = &mut eps[0];
    let w = a.world();
    assert_eq!(
        a.send(&w, 2, 0, b"x", Deadline::NOW),
        Err(Error::PermissionDenied { rank: 2, tag: 0 })
    );
    assert_eq!(
        a.send(&w, 9, 0, b"x", Deadline::NOW),
        Err(Error::PermissionDenied { rank: 9, tag: 0 })
    );
    assert_eq!(
        a.send(&w, 1, ANY_TAG, b"x", Deadline::NOW),
        Err(Error::PermissionDenied {
            rank: 1,
            tag: ANY_TAG
        })
    );
}

#[test]
fn blocked_receiver_and_sender_are_woken() {
    let mut cfg = Config::new(2);
    cfg.geometry.slots = 2;
    let mut eps = host::threads(&cfg).unwrap();
    let mut b = eps.pop().unwrap();
    let mut a = eps.pop().unwrap();
    let t = thread::spawn(move || {
        let w = b.world();
        let mut buf = [0u8; 4];
        // Receiver blocks (past its spin) until the sender's first message.
        b.recv(&w, 0, 1, &mut buf, dl(&b)).unwrap();
        // Then lets the sender block on credit before draining.
        thread::sleep(std::time::Duration::from_millis(50));
        for i in 1..20u32 {
            b.recv(&w, 0, 1, &mut buf, dl(&b)).unwrap();
            assert_eq!(buf, i.to_le_bytes());
        }
    });
    thread::sleep(std::time::Duration::from_millis(50));
    let w = a.world();
    for i in 0..20u32 {
        a.send(&w, 1, 1, &i.to_le_bytes(), dl(&a)).unwrap();
    }
    t.join().unwrap();
}

/// Records doorbells instead of ringing them; never spins; runs `.1` whenever it
/// would block.
struct Recorder(Rc<RefCell<Vec<Rank>>>, Box<dyn Fn()>);

impl Platform for Recorder {
    fn now(&self) -> u64 {
        host::now()
    }
    fn bell(&self) -> u32 {
        0
    }
    fn wait(&self, _seen: u32, until: u64) {
        (self.1)();
        thread::sleep(std::time::Duration::from_nanos(
            until.saturating_sub(host::now()),
        ));
    }
    fn ring(&self, peer: Rank) {
        self.0.borrow_mut().push(peer);
    }
    fn spin_ns(&self) -> u64 {
        0
    }
}

#[test]
fn a_sender_blocked_for_credit_is_rung_at_a_checkpoint_or_before_the_receiver_sleeps() {
    // Rank 1 receives from 0 over an 8-slot ring (a checkpoint every 2 messages) and
    // also has a channel to 2, which stays silent.
    let mut cfg = Config::new(3);
    cfg.geometry.slots = 8;
    let attach = |a: Rank, b: Rank| {
        let r = Region::heap(cfg.geometry.region_len());
        layout::init(&r, cfg.geometry, [a, b]).unwrap();
        (
            Channel::attach(r.clone(), a, b).unwrap(),
            Channel::attach(r, b, a).unwrap(),
        )
    };
    let (mut zero, one_zero) = attach(0, 1);
    let (one_two, _two) = attach(1, 2);
    let rung = Rc::new(RefCell::new(Vec::new()));
    let mut b = Endpoint::new(
        &cfg,
        1,
        vec![(0, one_zero), (2, one_two)],
        Recorder(rung.clone(), Box::new(|| ())),
    )
    .unwrap();
    let w = b.world();
    // Rank 0 fills the ring and announces that it waits for credit.
    for i in 0..8u32 {
        let mut done = 0;
        zero.tx
            .send(1, w.ctx(), &i.to_le_bytes(), &mut done)
            .unwrap();
    }
    zero.tx.set_waiting(true);
    let mut buf = [0u8; 4];
    let soon = host::deadline_ms(1000);
    b.recv(&w, 0, 1, &mut buf, soon).unwrap();
    assert!(
        rung.borrow().is_empty(),
        "1 message: no checkpoint, no barrier"
    );
    b.recv(&w, 0, 1, &mut buf, soon).unwrap();
    assert_eq!(*rung.borrow(), [0], "2 messages: a checkpoint");
    b.recv(&w, 0, 1, &mut buf, soon).unwrap();
    assert_eq!(*rung.borrow(), [0]);
    // Before it sleeps waiting for rank 2, rank 1 looks at every sender's flag.
    assert_eq!(
        b.recv(&w, 2, 1, &mut buf, host::deadline_ms(5)),
        Err(Error::Timeout { rank: 2 })
    );
    assert_eq!(rung.borrow()[1], 0);
}

#[test]
fn a_receiver_waiting_for_a_message_does_not_say_it_waits_for_credit() {
    // Rank 1 blocks receiving from 0: its peer must see "wake me for a message", never
    // "blocked for credit" (each waiting side would otherwise ring the other when it
    // arms, a doorbell storm between two idle peers).
    let cfg = Config::new(2);
    let r = Region::heap(cfg.geometry.region_len());
    layout::init(&r, cfg.geometry, [0, 1]).unwrap();
    let zero = Rc::new(Channel::attach(r.clone(), 0, 1).unwrap());
    let seen = Rc::new(RefCell::new(Vec::new()));
    let (z, v) = (zero.clone(), seen.clone());
    let probe = Box::new(move || v.borrow_mut().push(z.rx.sender_blocked()));
    let rung = Rc::new(RefCell::new(Vec::new()));
    let one = Channel::attach(r, 1, 0).unwrap();
    let mut b = Endpoint::new(&cfg, 1, vec![(0, one)], Recorder(rung.clone(), probe)).unwrap();
    let w = b.world();
    assert_eq!(
        b.recv(&w, 0, 1, &mut [0u8; 4], host::deadline_ms(5)),
        Err(Error::Timeout { rank: 0 })
    );
    assert!(!seen.borrow().is_empty(), "rank 1 blocked");
    assert!(seen.borrow().iter().all(|&credit| !credit));
    assert!(rung.borrow().is_empty());
}

#[test]
fn align_puts_a_skewed_channel_back_in_step_both_ways() {
    let (mut a, mut b) = pair();
    let w = a.world();
    let slots = layout::Geometry::default().slots as u64;
    let skew = |e: &Ep, peer| e.channel(peer).unwrap().skew();
    assert_eq!(
        (skew(&a, 1), skew(&b, 0)),
        (0, 0),
        "a fresh channel is in step"
    );
    // Rank 0 streams 5 (rank 1, the higher, then sends 5 fillers), then rank 1 streams
    // 7 (rank 1 sends slots - 7 fillers: the counts only need to agree modulo slots).
    for (from_a, n, want) in [(true, 5, 5), (false, 7, slots - 7)] {
        for i in 0..n {
            let (tx, rx, to, from) = if from_a {
                (&mut a, &mut b, 1, 0)
            } else {
                (&mut b, &mut a, 0, 1)
            };
            tx.send(&w, to, 1, &[i], dl(tx)).unwrap();
            rx.recv(&w, from, 1, &mut [0], dl(rx)).unwrap();
        }
        assert_eq!((skew(&a, 1), skew(&b, 0)), (want, want));
        let t = thread::spawn(move || {
            b.align(&b.world(), 0, 9, dl(&b)).unwrap();
            b
        });
        a.align(&w, 1, 9, dl(&a)).unwrap();
        b = t.join().unwrap();
        assert_eq!((skew(&a, 1), skew(&b, 0)), (0, 0));
        // The fillers are gone: the next message is the next one sent, whatever the tag.
        b.send(&w, 0, 2, b"after", Deadline::NOW).unwrap();
        let mut buf = [0u8; 8];
        let st = a.recv(&w, 1, ANY_TAG, &mut buf, dl(&a)).unwrap();
        assert_eq!((st.tag, &buf[..st.len]), (2, &b"after"[..]));
        a.send(&w, 1, 2, b"x", Deadline::NOW).unwrap();
        b.recv(&w, 0, 2, &mut buf, dl(&b)).unwrap();
    }
    // In step already: nothing is sent.
    a.align(&w, 1, 9, Deadline::NOW).unwrap();
    b.align(&w, 0, 9, Deadline::NOW).unwrap();
    assert_eq!(a.iprobe(&w, 1, ANY_TAG).unwrap(), None);
    assert_eq!(
        a.align(&w, 7, 9, Deadline::NOW),
        Err(Error::PermissionDenied { rank: 7, tag: 9 })
    );
}

#[test]
fn a_large_message_reuses_the_data_lines_of_the_last_once_consumed() {
    let (mut a, mut b) = pair();
    let w = a.world();
    let dl = u64::from(layout::Geometry::default().data_len);
    // Where rank 0's data head is: each message's data ends there.
    let head = |a: &Ep| {
        let ch = a.channel(1).unwrap();
        let off = ch.geometry().dir(ch.side()).data_head();
        ch.region()
            .load64(off, std::sync::atomic::Ordering::Acquire)
    };
    let mut buf = vec![0u8; 16 << 10];
    let mut send = |a: &mut Ep, n: usize, seed: u8, drain: bool| {
        let msg: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(seed)).collect();
        a.send(&w, 1, 1, &msg, Deadline::NOW).unwrap();
        if drain {
            let st = b.recv(&w, 0, 1, &mut buf, Deadline::NOW).unwrap();
            assert_eq!(&buf[..st.len], &msg[..]);
        }
        head(a)
    };
    assert_eq!(send(&mut a, 8 << 10, 3, true), 8 << 10);
    // Consumed, and no larger: one lap on, on the same lines (5000 B: 5056 rounded).
    assert_eq!(send(&mut a, 8 << 10, 5, true), (8 << 10) + dl);
    let h = send(&mut a, 5000, 7, true);
    assert_eq!(h, 2 * dl + 5056);
    // Larger than the last, below 4 KiB, or the last not consumed yet: next in line.
    assert_eq!(send(&mut a, 6000, 9, true), h + 6016);
    let h = send(&mut a, 1000, 11, true);
    assert_eq!(send(&mut a, 4096, 13, false), h + 4096);
    assert_eq!(send(&mut a, 4096, 15, false), h + 2 * 4096);
    for seed in [13, 15] {
        let st = b.recv(&w, 0, 1, &mut buf, Deadline::NOW).unwrap();
        let want: Vec<u8> = (0..4096).map(|i| (i as u8).wrapping_mul(seed)).collect();
        assert_eq!(&buf[..st.len], &want[..]);
    }
}
