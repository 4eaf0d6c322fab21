//! Fault-injection partition: `fault=<kind>` makes the service misbehave so
//! the tests can check that the runtime reports the cause and exit status.
//!
//! Kinds: `null` (read address 0), `runtime` (read the runtime's data),
//! `runtime-code` (read the runtime's code),
//! `write-code` (write to its own code), `gp` (privileged instruction), `ud`
//! (`ud2`), `panic`, `stack` (unbounded recursion), `div` (divide by zero),
//! `oom` (allocate more than the heap holds), `bad-exit` (exit status 200),
//! `bad-log` (log from a runtime address), `setup-again` (the runtime's one-time
//! call), `bad-syscall` (unknown number), `none` (exit 0).
#![no_std]
#![no_main]

extern crate alloc;

use core::arch::asm;

rt::entry!(main);

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let buf = [n; 64];
    core::hint::black_box(&buf);
    recurse(n + 1) + buf[3]
}

fn main() -> u8 {
    let kind = rt::arg("fault").unwrap_or("none");
    rt::log!("faulty: about to fault: {kind}");
    match kind {
        // SAFETY: deliberately invalid; the runtime must catch the page fault.
        "null" => unsafe {
            core::hint::black_box(core::ptr::read_volatile(
                core::hint::black_box(0usize) as *const u64
            ));
        },
        // SAFETY: deliberately reads supervisor-only memory (the runtime's data).
        "runtime" => unsafe {
            let a = rt::debug_runtime_address();
            core::hint::black_box(core::ptr::read_volatile(a as *const u64));
        },
        // SAFETY: deliberately reads the runtime's (supervisor-only) code.
        "runtime-code" => unsafe {
            let a = rt::debug_runtime_code_address();
            core::hint::black_box(core::ptr::read_volatile(a as *const u8));
        },
        // SAFETY: deliberately writes to read-only code.
        "write-code" => unsafe {
            core::ptr::write_volatile(main as *const () as *mut u8, 0xcc);
        },
        // SAFETY: hlt at CPL 3 raises #GP; nothing else happens.
        "gp" => unsafe { asm!("hlt") },
        // SAFETY: ud2 raises #UD.
        "ud" => unsafe { asm!("ud2") },
        "panic" => panic!("deliberate panic (fault=panic)"),
        "stack" => {
            core::hint::black_box(recurse(0));
        }
        "div" => {
            let z = core::hint::black_box(0u64);
            let r: u64;
            // SAFETY: div by zero raises #DE (Rust's `/` would panic first).
            unsafe {
                asm!("div {z}", z = in(reg) z, inout("rax") 1u64 => r, inout("rdx") 0u64 => _)
            };
            core::hint::black_box(r);
        }
        "oom" => {
            let v: alloc::vec::Vec<u8> = alloc::vec![1; 1 << 31];
            core::hint::black_box(&v);
        }
        "bad-exit" => rt::exit(200),
        "setup-again" => {
            rt::syscall_raw(rt::abi::sys::SETUP, 0, 0);
        }
        "bad-syscall" => {
            rt::syscall_raw(99, 0, 0);
        }
        "bad-log" => rt::log_raw(rt::debug_runtime_address(), 8),
        "none" => return 0,
        other => {
            rt::log!("faulty: unknown fault kind {other}");
            return 2;
        }
    }
    rt::log!("faulty: still running after fault={kind}");
    1
}
