//! Model check of the ring's memory ordering with loom. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p interconnect --release --test loom`
//! (see `interconnect/loom.sh`); without `--cfg loom` this file is empty.
#![cfg(loom)]

use interconnect::Error;
use interconnect::layout::{self, Geometry};
use interconnect::ring::Channel;
use interconnect::shm::Region;

fn pair(slots: u32) -> (Channel, Channel) {
    let g = Geometry {
        slots,
        data_len: 4096,
        max_msg: 4096,
    };
    let r = Region::heap(g.region_len());
    layout::init(&r, g, [0, 1]).unwrap();
    (
        Channel::attach(r.clone(), 0, 1).unwrap(),
        Channel::attach(r, 1, 0).unwrap(),
    )
}

fn send(ch: &mut Channel, tag: u32, data: &[u8]) {
    let mut done = 0;
    loop {
        match ch.tx.send(tag, 0, data, &mut done) {
            Ok(()) => return,
            Err(Error::WouldBlock { .. }) => loom::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    }
}

fn recv(ch: &mut Channel, buf: &mut [u8]) -> (u32, usize) {
    let tag = loop {
        if let Some(e) = ch.rx.peek().unwrap() {
            break e.tag;
        }
        loom::thread::yield_now();
    };
    loop {
        if let Some(n) = ch.rx.take(buf).unwrap() {
            return (tag, n);
        }
        loom::thread::yield_now();
    }
}

/// Three inline messages through two slots: payloads are seen complete (release/acquire
/// on seq), credit is respected across the wrap-around.
#[test]
fn inline_messages_wrap_around() {
    loom::model(|| {
        let (mut a, mut b) = pair(2);
        let t = loom::thread::spawn(move || {
            for i in 0..3u8 {
                send(&mut a, u32::from(i), &[i + 1; 4]);
            }
        });
        let mut buf = [0u8; 16];
        for i in 0..3u8 {
            let (tag, n) = recv(&mut b, &mut buf);
            assert_eq!((tag, n), (u32::from(i), 4));
            assert_eq!(&buf[..4], &[i + 1; 4]);
        }
        t.join().unwrap();
    });
}

/// A fragmented message through the data area, then an inline one: the data bytes are
/// visible once the fragment's slot is.
#[test]
fn fragment_then_inline() {
    loom::model(|| {
        let (mut a, mut b) = pair(2);
        let t = loom::thread::spawn(move || {
            send(&mut a, 1, &[7u8; 24]);
            send(&mut a, 2, &[9u8; 3]);
        });
        let mut buf = [0u8; 32];
        assert_eq!(recv(&mut b, &mut buf), (1, 24));
        assert_eq!(&buf[..24], &[7u8; 24]);
        assert_eq!(recv(&mut b, &mut buf), (2, 3));
        assert_eq!(&buf[..3], &[9u8; 3]);
        t.join().unwrap();
    });
}
