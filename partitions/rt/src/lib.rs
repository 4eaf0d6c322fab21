//! vmpi partition runtime: boots a unikernel VM (QEMU through PVH, or uhyve) and
//! runs one service at CPL 3.
//!
//! A service crate is ordinary `#![no_std]` Rust with `alloc`, usually
//! `#![forbid(unsafe_code)]`:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! #![forbid(unsafe_code)]
//! rt::entry!(main);
//! fn main() -> u8 {
//!     rt::log!("hello from {}", rt::arg("name").unwrap_or("nobody"));
//!     0
//! }
//! ```
//!
//! What the service gets: [`args`]/[`arg`] (the command line), [`log!`] and the
//! `log` crate, [`exit`], [`yield_now`], [`time`] (TSC-based, no system call),
//! [`wait`] (block until a doorbell or a deadline), [`shm_regions`] (the ivshmem
//! regions mapped into its address space) with their [`Doorbell`]s.
//!
//! # Assumptions
//! - One CPU. The runtime (CPL 0) runs only at boot, on traps and interrupts.
//! - Ring 0 may be emulated and slow (`kvm_pvm`): the runtime does little there
//!   and the service's data path never enters it.
//! - The runtime never reads shared memory: only the service (and the fabric in
//!   it) touches it, treating every byte a peer wrote as untrusted.
//! - Exit statuses, system calls and command-line keys: crate `vmpi-abi`.
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

mod apic;
mod arch;
mod boot;
mod cmdline;
mod console;
mod heap;
mod paging;
mod pci;
mod shm;
mod start;
mod state;
pub mod time;
mod trap;
mod uhyve;
mod user;
mod virtio;

pub use abi;
pub use arch::cpl;
pub use shm::{Doorbell, ShmRegion, shm_regions};
pub use state::{PciAddress, Platform};
pub use user::{
    LineBuf, Wake, arg, args, debug_runtime_address, debug_runtime_code_address, exit, log_fmt,
    log_raw, log_str, syscall_raw, wait, yield_now,
};

/// Which loader started this partition.
pub fn platform() -> Platform {
    // SAFETY: written once before the service started; read-only since.
    unsafe { state::USER.get() }.platform
}

/// Logs one formatted line on the console (through a system call at CPL 3).
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => { $crate::log_fmt(format_args!($($arg)*)) };
}

/// Names the service's `main` (`fn() -> u8`, the exit status 0..=99).
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub fn __vmpi_service_main() -> u8 {
            let f: fn() -> u8 = $main;
            f()
        }
    };
}
