//! The hello partition: greets, echoes its command line, exits with `status=`.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;

rt::entry!(main);

fn main() -> u8 {
    let args: Vec<_> = rt::args().collect();
    rt::log!(
        "hello from vmpi partition ({:?}), {} args",
        rt::platform(),
        args.len()
    );
    for (k, v) in &args {
        rt::log!("arg {k}={v}");
    }
    rt::arg("status").and_then(|s| s.parse().ok()).unwrap_or(0)
}
