//! Writes the seed corpus (`corpus/<target>/`) from valid traffic:
//! `cargo run --example gen_corpus` in `interconnect/fuzz`.

use interconnect::fuzzing::GEOMETRY;
use interconnect::layout::{self, Geometry};
use interconnect::ring::Channel;
use interconnect::shm::Region;
use std::path::Path;

fn save(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

/// A region after an honest rank 0 sent `msgs` (tag, length) to rank 1.
fn traffic(g: Geometry, msgs: &[(u32, usize)]) -> Region {
    let r = Region::heap(g.region_len());
    layout::init(&r, g, [0, 1]).expect("geometry");
    let mut ch = Channel::attach(r.clone(), 0, 1).expect("attach");
    for &(tag, len) in msgs {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        let mut done = 0;
        let _ = ch.tx.send(tag, 0, &data, &mut done);
    }
    r
}

fn bytes(r: &Region, from: usize, to: usize) -> Vec<u8> {
    let mut b = vec![0u8; to - from];
    r.read(from, &mut b);
    b
}

fn main() {
    // rx_over_bytes: direction 0 from its producer line through the slots (the data
    // area is filled by repetition), after valid traffic.
    let g = GEOMETRY;
    let d = g.dir(0);
    let scripts: &[&[(u32, usize)]] = &[
        &[],
        &[(5, 0)],
        &[(5, 8)],
        &[(1, 16)],
        &[(2, 17)],
        &[(5, 64)],
        &[(3, 1000)],
        &[(5, 1024), (5, 1024), (5, 1024)],
        &[(1, 8), (2, 100), (3, 16), (5, 4)],
        &[(7, 1); 8],
        &[(7, 1); 9],
        &[(9, 3000), (9, 3000)],
        &[(4, 5000)],
        &[(1, 2048), (2, 8), (1, 2048)],
    ];
    for (i, s) in scripts.iter().enumerate() {
        let r = traffic(g, s);
        // Slots end where the data area begins; keep 64 data bytes.
        save(
            "rx_over_bytes",
            &format!("seed-{i:02}"),
            &bytes(&r, d.prod, d.data + 64),
        );
        save(
            "rx_over_bytes",
            &format!("short-{i:02}"),
            &bytes(&r, d.prod, d.data - 256),
        );
    }

    // region_parse: two rank bytes, then a region image (repeated to 64 KiB).
    let small = Geometry {
        slots: 2,
        data_len: 4096,
        max_msg: 1 << 12,
    };
    for (i, (geo, s)) in [
        (small, &[][..]),
        (small, &[(1, 8), (1, 300)][..]),
        (g, &[(5, 16), (5, 2000)][..]),
        (g, &[(7, 1); 8][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let r = traffic(geo, s);
        for (j, ranks) in [[1u8, 0], [0, 1], [2, 1]].iter().enumerate() {
            let mut v = ranks.to_vec();
            v.extend(bytes(&r, 0, geo.dir(0).data + 64));
            save("region_parse", &format!("seed-{i}-{j}"), &v);
        }
    }

    // rx_stream: scripts of operations (see the target for the encoding).
    let ops: &[(&str, &[u8])] = &[
        ("small", &[0, 1, 1, 8, 0, 4, 255, 0, 0]),
        ("big", &[0, 1, 2, 0, 16, 4, 255, 63, 1, 2]),
        (
            "frag-continue",
            &[0, 1, 3, 0, 32, 4, 0, 8, 0, 0, 0, 0, 4, 0, 16, 0],
        ),
        ("irecv-test", &[5, 100, 0, 1, 0, 1, 1, 50, 0, 6, 0, 0]),
        (
            "cancel",
            &[5, 100, 0, 1, 6, 0, 1, 0, 1, 1, 50, 0, 4, 0, 1, 0],
        ),
        (
            "corrupt-slot",
            &[0, 1, 1, 8, 0, 1, 0, 3, 9, 9, 9, 9, 4, 0, 1, 0],
        ),
        (
            "data-head",
            &[0, 1, 2, 0, 8, 3, 0, 0, 1, 0, 0, 0, 0, 0, 4, 0, 16, 0],
        ),
        ("send-back", &[8, 100, 0, 1, 10, 8, 0, 32, 1, 10, 11, 40]),
        ("credit", &[9, 0, 255, 255, 0, 0, 0, 0, 0, 0, 8, 0, 16, 1]),
        ("revoke", &[0, 1, 1, 8, 0, 12, 0, 4, 0, 1, 0]),
        ("dead", &[0, 1, 1, 8, 0, 12, 1, 7, 8, 5, 0, 1]),
    ];
    for (name, s) in ops {
        save("rx_stream", name, s);
    }
}
