//! The complete receive path (ring validation, fragment reassembly, matching) over an
//! arbitrary image of the peer-written half of a channel region.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = interconnect::fuzzing::rx_over_bytes(data);
});
