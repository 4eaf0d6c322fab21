//! Inputs the fuzzers (interconnect/fuzz) found to panic, as plain tests (a test here
//! may be `#[ignore]`d while its bug is open, so that the workspace's tests stay green;
//! `cargo test -p fabric-bench --test fuzz_regressions -- --include-ignored`).

use interconnect::layout::{self, Geometry, Meter};
use interconnect::shm::Region;
use std::sync::atomic::Ordering::SeqCst;

/// Found by `region_parse` in its first seconds: the monitor's meter adds 1 to the
/// receiver-written `consumed` counter (layout.rs, `Meter::read`, `(n + 1) as u32`),
/// which overflows when a hostile receiver writes `u64::MAX`: a panic with overflow
/// checks (debug and test builds, the fuzzer), a wrapped count (0) in release builds.
/// Fixed in f954c46.
#[test]
fn meter_survives_a_hostile_consumed_counter() {
    let g = Geometry {
        slots: 8,
        data_len: 4096,
        max_msg: 1 << 16,
    };
    let r = Region::heap(g.region_len());
    layout::init(&r, g, [0, 1]).unwrap();
    r.store64(g.dir(0).consumed(), u64::MAX, SeqCst);
    let mut m = Meter::default();
    let c = m.read(&r, &g);
    // Whatever the meter reports, it must not panic, nor report fewer messages than a
    // later read (counts are monotone).
    let again = m.read(&r, &g);
    assert!(again[0].messages >= c[0].messages);
}
