//! The console (16550 UART at 0x3f8 under QEMU, the uhyve serial hypercall under
//! uhyve) and the exit path (`isa-debug-exit` or the uhyve exit hypercall).
//! CPL 0 only; the service reaches both through system calls.

use crate::arch::{inb, outb, outl};
use crate::state::{K, Platform};
use core::fmt;

const COM1: u16 = 0x3f8;
const UHYVE_EXIT: u16 = 0x1010;
const UHYVE_SERIAL_BUF: u16 = 0x1030;
const DEBUG_EXIT: u16 = 0xf4;

/// Writes bytes to the console.
#[unsafe(link_section = ".text.rt")]
pub(crate) fn write(bytes: &[u8]) {
    // SAFETY: CPL 0 (callers are runtime code); the platform is set at entry.
    let platform = unsafe { K.get() }.platform;
    match platform {
        Platform::Uhyve => {
            #[repr(C)]
            struct Buf {
                len: u64,
                buf: u64,
            }
            let b = Buf {
                len: bytes.len() as u64,
                buf: bytes.as_ptr() as u64,
            };
            // SAFETY: uhyve's serial hypercall reads `len` bytes at guest-physical
            // `buf` (identity-mapped) and the descriptor in rdi; both stay alive.
            unsafe {
                core::arch::asm!("out dx, eax", in("dx") UHYVE_SERIAL_BUF, in("eax") 0u32,
                    in("rdi") &raw const b as u64, options(nostack, preserves_flags));
            }
        }
        _ => {
            for &c in bytes {
                // SAFETY: COM1 is the console UART; waiting for THR empty, then writing.
                unsafe {
                    let mut spins = 0u32;
                    while inb(COM1 + 5) & 0x20 == 0 && spins < 100_000 {
                        spins += 1;
                    }
                    outb(COM1, c);
                }
            }
        }
    }
}

/// `fmt::Write` onto the console.
pub(crate) struct Console;

impl fmt::Write for Console {
    #[unsafe(link_section = ".text.rt")]
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write(s.as_bytes());
        Ok(())
    }
}

/// Prints to the console from the runtime (CPL 0). Formatting is slow in
/// emulated ring 0: use on error paths only.
macro_rules! kprint {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::console::Console, format_args!($($arg)*));
    }};
}
pub(crate) use kprint;

/// Ends the partition with status `v` (see `abi::exit`). Never returns.
#[unsafe(link_section = ".text.rt")]
pub(crate) fn exit(v: u8) -> ! {
    // SAFETY: CPL 0.
    let platform = unsafe { K.get() }.platform;
    if platform == Platform::Uhyve {
        // SAFETY: the uhyve exit hypercall; uhyve ends the VM.
        unsafe {
            core::arch::asm!("out dx, eax", in("dx") UHYVE_EXIT, in("eax") 0u32,
                in("rdi") u64::from(v), options(nostack));
        }
    } else {
        // SAFETY: isa-debug-exit at 0xf4 makes QEMU exit with 2*v+1.
        unsafe { outl(DEBUG_EXIT, u32::from(v)) };
    }
    // Still here: no isa-debug-exit device. Say so, then power off so that the
    // hypervisor ends (with status 0: "the guest did not report").
    kprint!(
        "vmpi-rt: exit status {v} could not be reported (no isa-debug-exit at 0xf4); powering off\n"
    );
    if platform == Platform::Qemu {
        // microvm: ACPI GED sleep control register (SLP_TYP=S5, SLP_EN).
        let ged = 0xfea0_0000;
        if crate::paging::map_2m(
            ged,
            crate::paging::RW | crate::paging::PCD | crate::paging::NX,
        )
        .is_some()
        {
            crate::paging::flush();
            // SAFETY: the GED register page of microvm, just mapped; elsewhere
            // unassigned memory ignores the write.
            unsafe { ((ged + 0x200) as *mut u8).write_volatile(0x34) };
            settle();
        }
        // SAFETY: q35/pc ACPI PM1a control (S5) and the keyboard controller
        // reset (with -no-reboot QEMU then exits); ignored where absent.
        unsafe {
            core::arch::asm!("out dx, ax", in("dx") 0x604u16, in("ax") 0x2000u16, options(nomem, nostack));
            outb(0x64, 0xfe);
        }
        settle();
    }
    loop {
        // SAFETY: halting with interrupts off.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) };
    }
}

/// Gives the hypervisor's main loop time (about 0.1 s) to act on a shutdown
/// or reset request before trying the next way out.
#[unsafe(link_section = ".text.rt")]
fn settle() {
    let t0 = crate::arch::rdtsc();
    while crate::arch::rdtsc().wrapping_sub(t0) < 1 << 28 {
        core::hint::spin_loop();
    }
}
