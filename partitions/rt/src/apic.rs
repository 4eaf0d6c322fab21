//! Local APIC: software enable, one-shot timer for deadlines, end of interrupt,
//! and the blocking wait behind the `WAIT` system call.

use crate::arch::rdtsc;
use crate::state::{IN_SERVICE, K, SPURIOUS_VECTOR, TIMER_VECTOR};
use core::arch::asm;

/// Physical (and virtual) address of the xAPIC registers.
pub(crate) const LAPIC_BASE: u64 = 0xfee0_0000;

#[unsafe(link_section = ".text.rt")]
fn reg(off: u64) -> *mut u32 {
    // Through a register: an absolute 32-bit operand would be sign-extended.
    (LAPIC_BASE + off) as *mut u32
}

#[unsafe(link_section = ".text.rt")]
fn write(off: u64, v: u32) {
    // SAFETY: the LAPIC page is mapped supervisor-only and uncached at boot
    // (before `K.lapic` is set, which guards every caller).
    unsafe { reg(off).write_volatile(v) }
}

/// Software-enables the LAPIC and masks its timer. Needs the LAPIC page mapped.
#[unsafe(link_section = ".text.rt")]
pub(crate) fn init() {
    write(0xf0, 0x100 | u32::from(SPURIOUS_VECTOR));
    write(0x3e0, 0b0011); // timer divide by 16
    write(0x320, u32::from(TIMER_VECTOR)); // one-shot, stopped (initial count 0)
    write(0x350, 1 << 16); // LINT0 (ExtINT from the PIC) masked
    write(0x360, 1 << 16); // LINT1 masked
    // SAFETY: CPL 0, interrupts off.
    unsafe { K.get() }.lapic = true;
}

/// Signals end of interrupt.
#[unsafe(link_section = ".text.rt")]
pub(crate) fn eoi() {
    // SAFETY: CPL 0, interrupts off.
    if unsafe { K.get() }.lapic {
        write(0xb0, 0);
    }
}

/// Ends the doorbell interrupt in service, if any (its stub leaves that to here, off
/// the wake-up's path). Before every window that lets interrupts in: until then the
/// LAPIC holds back the doorbells and the timer (one priority class).
#[unsafe(link_section = ".text.rt")]
pub(crate) fn ack() {
    // SAFETY: CPL 0, interrupts off.
    let k = unsafe { K.get() };
    if k.pending & IN_SERVICE != 0 {
        k.pending &= !IN_SERVICE;
        eoi();
    }
}

/// Blocks until a doorbell rang or the TSC reaches `deadline` (`u64::MAX`: no
/// deadline). Returns the doorbell bit mask, 0 on deadline.
///
/// Every instruction here and in the stubs is emulated under `kvm_pvm` (about 1 µs
/// each), so the path after `hlt` is kept short: the doorbell stub only sets a bit,
/// the end of interrupt waits for the next call, and the timer is left to run out.
#[unsafe(link_section = ".text.rt")]
pub(crate) fn wait(deadline: u64) -> u32 {
    // SAFETY: CPL 0 with interrupts off except inside `sti; hlt`, where only the
    // interrupt handlers run; they touch `pending` alone.
    let k = unsafe { K.get() };
    loop {
        let p = k.pending & !IN_SERVICE;
        if p != 0 {
            k.pending &= IN_SERVICE;
            return p;
        }
        let now = rdtsc();
        if now >= deadline {
            return 0;
        }
        if !k.lapic {
            // No interrupt controller (uhyve): poll the clock.
            core::hint::spin_loop();
            continue;
        }
        ack();
        // A new initial count restarts the one-shot timer (0 stops it); one left
        // running from an earlier call at worst wakes a later one early, which loops.
        let count = if deadline != u64::MAX && k.tsc_khz != 0 {
            let ns = u128::from(deadline - now) * 1_000_000 / u128::from(k.tsc_khz);
            (ns / 16).clamp(1, u128::from(u32::MAX)) as u32
        } else {
            0
        };
        write(0x380, count);
        // SAFETY: `sti; hlt` sleeps until the next interrupt; sti's shadow makes
        // the pair atomic, so no interrupt is lost in between.
        unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }
}
