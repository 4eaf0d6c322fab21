//! Thin wrappers around the x86 instructions the runtime needs.

use core::arch::asm;

/// Writes a byte to an I/O port.
///
/// # Safety
/// The port write must not break an invariant of the machine (CPL 0 only).
#[inline(always)]
pub(crate) unsafe fn outb(port: u16, v: u8) {
    // SAFETY: the caller vouches for the port.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// As for [`outb`].
#[inline(always)]
pub(crate) unsafe fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: the caller vouches for the port.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Writes a 32-bit word to an I/O port.
///
/// # Safety
/// As for [`outb`].
#[inline(always)]
pub(crate) unsafe fn outl(port: u16, v: u32) {
    // SAFETY: the caller vouches for the port.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a 32-bit word from an I/O port.
///
/// # Safety
/// As for [`outb`].
#[inline(always)]
pub(crate) unsafe fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: the caller vouches for the port.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// The time stamp counter.
#[inline(always)]
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: rdtsc only reads the counter (CR4.TSD is clear, so CPL 3 may too).
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The current privilege level (0 for the runtime, 3 for the service).
#[inline(always)]
pub fn cpl() -> u16 {
    let cs: u16;
    // SAFETY: reading CS has no side effect.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) }
    cs & 3
}

/// Reads CR2 (the faulting address of the last page fault).
///
/// # Safety
/// CPL 0 only.
#[inline(always)]
pub(crate) unsafe fn cr2() -> u64 {
    let v: u64;
    // SAFETY: the caller runs at CPL 0.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Loads CR3, flushing the TLB.
///
/// # Safety
/// `pml4` must be a valid top-level table mapping the running code and stack.
#[inline(always)]
pub(crate) unsafe fn load_cr3(pml4: u64) {
    // SAFETY: the caller vouches for the table.
    unsafe { asm!("mov cr3, {}", in(reg) pml4, options(nostack, preserves_flags)) }
}
