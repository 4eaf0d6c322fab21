//! Attaching to a region (header checks) and the monitor's meter, over an arbitrary
//! region image: a peer can write everything but the header after attach, and the
//! monitor reads the counters of channels it does not trust.
#![no_main]

use interconnect::layout::{self, Meter};
use interconnect::ring::Channel;
use interconnect::shm::Region;
use libfuzzer_sys::fuzz_target;

const LEN: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (ranks, image) = data.split_at(2);
    let r = Region::heap(LEN);
    if !image.is_empty() {
        let mut off = 0;
        while off < LEN {
            let n = image.len().min(LEN - off);
            r.write(off, &image[..n]);
            off += n;
        }
    }
    let Ok((g, _)) = layout::read_header(&r) else {
        return;
    };
    let mut m = Meter::default();
    for _ in 0..3 {
        let _ = m.read(&r, &g);
    }
    if let Ok(mut ch) = Channel::attach(r, u32::from(ranks[0] % 4), u32::from(ranks[1] % 4)) {
        let _ = ch.check();
        let mut buf = [0u8; 256];
        for _ in 0..16 {
            if !matches!(ch.rx.peek(), Ok(Some(_))) {
                break;
            }
            let _ = ch.rx.take(&mut buf);
        }
        let mut done = 0;
        let _ = ch.tx.send(1, 0, &[7u8; 300], &mut done);
    }
});
