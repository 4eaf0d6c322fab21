//! The hello partition: greets, reports its boot timestamps, echoes its command
//! line, sleeps `sleep_ms=` (a deadline wait) and exits with `status=` (default 0).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;
use core::time::Duration;

rt::entry!(main);

fn main() -> u8 {
    let first = rt::time::tsc();
    let args: Vec<_> = rt::args().collect();
    rt::log!(
        "hello from vmpi partition ({:?}), {} args",
        rt::platform(),
        args.len()
    );
    let (entry, user) = rt::time::boot_tsc();
    let khz = rt::time::tsc_khz();
    rt::log!("boot_tsc entry={entry} user={user} first={first} tsc_khz={khz}");
    for (k, v) in &args {
        rt::log!("arg {k}={v}");
    }
    if let Some(ms) = rt::arg("sleep_ms").and_then(|s| s.parse().ok()) {
        let t0 = rt::time::now();
        let w = rt::wait(Some(t0.after(Duration::from_millis(ms))));
        rt::log!(
            "slept {} us (timed out: {})",
            t0.elapsed().as_micros(),
            w.timed_out()
        );
    }
    rt::arg("status").and_then(|s| s.parse().ok()).unwrap_or(0)
}
