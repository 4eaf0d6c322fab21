//! An honest sender and an adversary take turns on one channel while rank 1's
//! `Endpoint` receives, probes, posts and cancels receives, and sends back (so its
//! sender-side credit checks read peer-written counters too). The input is a script of
//! operations; every call must return (deadlines on a clock that jumps) without panic.
#![no_main]

use interconnect::fuzzing::FuzzPlatform;
use interconnect::layout::{self, Geometry, LINE};
use interconnect::ring::Channel;
use interconnect::shm::Region;
use interconnect::{ANY_SOURCE, ANY_TAG, Config, Deadline, Endpoint};
use libfuzzer_sys::fuzz_target;
use std::sync::atomic::Ordering::Relaxed;

struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn u8(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
}

const G: Geometry = Geometry {
    slots: 8,
    data_len: 4096,
    max_msg: 1 << 14,
};

fuzz_target!(|data: &[u8]| {
    let r = Region::heap(G.region_len());
    layout::init(&r, G, [0, 1]).expect("valid geometry");
    let mut honest = Channel::attach(r.clone(), 0, 1).expect("attach rank 0");
    let mut cfg = Config::new(2);
    cfg.geometry = G;
    cfg.unexpected_limit = 1 << 13;
    let ch = Channel::attach(r.clone(), 1, 0).expect("attach rank 1");
    let mut ep = Endpoint::new(&cfg, 1, vec![(0, ch)], FuzzPlatform::default()).expect("endpoint");
    let w = ep.world();
    let msg: Vec<u8> = (0..G.max_msg as usize + 64).map(|i| i as u8).collect();
    let mut buf = vec![0u8; G.max_msg as usize + 64];
    let mut reqs = Vec::new();
    // The honest sender's message in progress: (tag, length, bytes sent).
    let mut pending: Option<(u32, usize, usize)> = None;
    let (d0, d1) = (G.dir(0), G.dir(1));
    let mut s = Script(data);
    for _ in 0..200 {
        if s.0.is_empty() {
            break;
        }
        match s.u8() % 13 {
            // Honest rank 0: continue the message in progress, or start a new one
            // (which aborts an unfinished one).
            0 => {
                let (tag, len, mut done) = match pending.take() {
                    Some(p) if s.u8() & 1 == 0 => p,
                    _ => (
                        u32::from(s.u8() % 4),
                        usize::from(s.u16()) % (msg.len() + 1),
                        0,
                    ),
                };
                if let Err(interconnect::Error::WouldBlock { .. }) =
                    honest.tx.send(tag, 0, &msg[..len], &mut done)
                {
                    pending = Some((tag, len, done));
                }
            }
            // Adversary: a word of a slot of direction 0.
            1 => {
                let i = usize::from(s.u8()) % G.slots as usize;
                let off = d0.slots + LINE * i + 4 * usize::from(s.u8() % 8);
                r.store32(off, s.u32(), Relaxed);
            }
            // Adversary: bytes of direction 0's data area.
            2 => {
                let off = usize::from(s.u16()) % G.data_len as usize;
                let n = usize::from(s.u8() % 64).min(G.data_len as usize - off);
                let b: Vec<u8> = (0..n).map(|_| s.u8()).collect();
                r.write(d0.data + off, &b);
            }
            // Adversary: direction 0's data head.
            3 => r.store64(d0.data_head(), s.u64(), Relaxed),
            // Rank 1 receives (a specific or any source/tag, a buffer of any size).
            4 => {
                let n = usize::from(s.u16()) % buf.len();
                let (src, tag) = match s.u8() % 3 {
                    0 => (ANY_SOURCE, ANY_TAG),
                    1 => (0, u32::from(s.u8() % 4)),
                    _ => (ANY_SOURCE, u32::from(s.u8() % 4)),
                };
                let dl = ep.after_ms(3);
                let _ = ep.recv(&w, src, tag, &mut buf[..n], dl);
            }
            5 => {
                let max = usize::from(s.u16());
                if let Ok(q) = ep.irecv(&w, 0, u32::from(s.u8() % 4), max) {
                    reqs.push(q);
                }
            }
            6 if !reqs.is_empty() => {
                let q = reqs[usize::from(s.u8()) % reqs.len()];
                match s.u8() % 3 {
                    0 => drop(ep.test(&q)),
                    1 => drop(ep.cancel(&q)),
                    _ => {
                        let dl = ep.after_ms(2);
                        drop(ep.wait(&q, dl));
                    }
                }
            }
            7 => drop(ep.iprobe(&w, ANY_SOURCE, ANY_TAG)),
            // Rank 1 sends to rank 0 (blocking with a deadline, or not at all).
            8 => {
                let len = usize::from(s.u16()) % (msg.len() + 1);
                let dl = if s.u8() & 1 == 0 {
                    Deadline::NOW
                } else {
                    ep.after_ms(2)
                };
                let _ = ep.send(&w, 0, 1, &msg[..len], dl);
            }
            // Adversary: the counters rank 1's sender trusts least.
            9 => {
                let off = if s.u8() & 1 == 0 {
                    d1.consumed()
                } else {
                    d1.data_tail()
                };
                r.store64(off, s.u64(), Relaxed);
            }
            // Honest rank 0 drains what rank 1 sent.
            10 => {
                if let Ok(Some(_)) = honest.rx.peek() {
                    let _ = honest.rx.take(&mut buf);
                }
            }
            11 => {
                if let Ok(q) = ep.isend(&w, 0, 2, &msg[..usize::from(s.u8())]) {
                    reqs.push(q);
                }
            }
            // The monitor or launcher: revoke, or mark rank 0 dead.
            12 => match s.u8() {
                0 => layout::revoke(&r),
                1 => layout::mark_dead(&r, 0),
                _ => {}
            },
            _ => {}
        }
    }
});
