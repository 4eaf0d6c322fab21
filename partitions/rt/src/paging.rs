//! The partition's address space: identity-mapped, 4 KiB pages for the image,
//! 2 MiB pages elsewhere. The service's code, data, stack, heap and shared
//! memory are user-accessible; the runtime's data, heap, page tables, stacks,
//! the LAPIC and PCI configuration space are not.
//!
//! Physical memory layout (all identity-mapped):
//!
//! | range | what | access |
//! |---|---|---|
//! | 0 - 2 MiB | firmware, boot info | unmapped after boot (null guard) |
//! | 2 MiB - image end | image: runtime code, shared code, rodata, data/bss, runtime data (`.rtdata`/`.rtbss`) | supervisor RX / user RX / R / RW / supervisor RW |
//! | 4 - 6 MiB | runtime heap | supervisor |
//! | 6 - 8 MiB | stack guard | unmapped |
//! | 8 - 10 MiB | service stack | user RW |
//! | 10 MiB - RAM end | service heap | user RW |
//! | 0xc000_0000 - 0xdfe0_0000 | ivshmem BAR2s | user RW |
//! | 0xdfe0_0000 - 0xe000_0000 | device register pages (BAR0 user, BAR1 supervisor) | 4 KiB |
//! | ECAM, LAPIC | configuration space, interrupt controller | supervisor, uncached |

use crate::boot::{ImageLayout, boot_pdpt, boot_pml4};
use crate::state::Global;

pub(crate) const P: u64 = 1;
pub(crate) const RW: u64 = 2;
pub(crate) const US: u64 = 4;
pub(crate) const PWT: u64 = 8;
pub(crate) const PCD: u64 = 0x10;
const PS: u64 = 0x80;
pub(crate) const NX: u64 = 1 << 63;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

const MIB2: u64 = 2 << 20;
/// Where the image is linked.
pub(crate) const IMAGE_BASE: u64 = 0x20_0000;
/// The runtime heap (2 MiB, supervisor).
pub(crate) const RT_HEAP: u64 = 0x40_0000;
/// Start of the unmapped guard below the service stack.
pub(crate) const STACK_GUARD: u64 = 0x60_0000;
/// Bottom of the service stack.
pub(crate) const USER_STACK: u64 = 0x80_0000;
/// Top of the service stack (exclusive) and start of the service heap.
pub(crate) const USER_HEAP: u64 = 0xa0_0000;
/// Least RAM a partition runs with: image, runtime heap, stack, 2 MiB of heap.
pub(crate) const MIN_RAM: u64 = USER_HEAP + MIB2;
/// Highest RAM address mapped (the first GiB).
pub(crate) const MAX_RAM: u64 = 1 << 30;

#[repr(C, align(4096))]
struct Table([u64; 512]);

const POOL: usize = 8;

struct Tables {
    pd0: Table,
    img: Table,
    pool: [Table; POOL],
    used: usize,
}

#[unsafe(link_section = ".rtbss")]
static T: Global<Tables> = Global::new(Tables {
    pd0: Table([0; 512]),
    img: Table([0; 512]),
    pool: [const { Table([0; 512]) }; POOL],
    used: 0,
});

#[unsafe(link_section = ".rtdata")]
static LAYOUT: Global<(u64, u64, u64)> = Global::new((0, 0, 0));

/// Builds the final address space and switches to it.
///
/// # Safety
/// CPL 0, once, at boot, after everything needed from low memory was copied.
#[unsafe(link_section = ".text.rt")]
pub(crate) unsafe fn init(l: &ImageLayout, ram_end: u64) {
    // SAFETY: boot, single-threaded; the tables are the runtime's own.
    unsafe {
        *LAYOUT.get() = (l.text, l.rt, ram_end);
        let t = T.get();
        let mut a = l.start;
        while a < l.end {
            let flags = if a < l.text {
                P
            } else if a < l.rodata {
                P | US
            } else if a < l.data {
                P | US | NX
            } else if a < l.rt {
                P | RW | US | NX
            } else {
                P | RW | NX
            };
            t.img.0[((a - IMAGE_BASE) >> 12) as usize] = a | flags;
            a += 4096;
        }
        let pd0 = &mut t.pd0.0;
        pd0[1] = t.img.0.as_ptr() as u64 | P | RW | US;
        pd0[2] = RT_HEAP | P | RW | PS | NX;
        let mut i = (USER_STACK / MIB2) as usize;
        while (i as u64 + 1) * MIB2 <= ram_end {
            pd0[i] = (i as u64 * MIB2) | P | RW | US | PS | NX;
            i += 1;
        }
        let pdpt = core::slice::from_raw_parts_mut((&raw mut boot_pdpt).cast::<u64>(), 512);
        pdpt[0] = pd0.as_ptr() as u64 | P | RW | US;
        let pml4 = core::slice::from_raw_parts_mut((&raw mut boot_pml4).cast::<u64>(), 512);
        pml4[0] |= US;
        crate::arch::load_cr3(pml4.as_ptr() as u64);
    }
}

/// The page directory for the GiB holding `va`, created on demand.
#[unsafe(link_section = ".text.rt")]
fn pd_for(va: u64) -> Option<&'static mut [u64; 512]> {
    // SAFETY: CPL 0, interrupts off; the tables are the runtime's own.
    unsafe {
        let pdpt = core::slice::from_raw_parts_mut((&raw mut boot_pdpt).cast::<u64>(), 512);
        let i = (va >> 30) as usize;
        if i >= 512 {
            return None;
        }
        if pdpt[i] & P == 0 {
            let t = T.get();
            if t.used == POOL {
                return None;
            }
            let tab = &mut t.pool[t.used].0;
            t.used += 1;
            pdpt[i] = tab.as_ptr() as u64 | P | RW | US;
        }
        Some(&mut *((pdpt[i] & ADDR) as *mut [u64; 512]))
    }
}

/// Maps the 2 MiB page at `va` (identity) with `flags`. `None` when out of tables.
#[unsafe(link_section = ".text.rt")]
pub(crate) fn map_2m(va: u64, flags: u64) -> Option<()> {
    let pd = pd_for(va)?;
    pd[((va >> 21) & 511) as usize] = (va & !(MIB2 - 1)) | flags | P | PS;
    Some(())
}

/// Maps the 4 KiB page at `va` (identity) with `flags`. `None` when out of
/// tables or when a 2 MiB page already covers `va`.
#[unsafe(link_section = ".text.rt")]
pub(crate) fn map_4k(va: u64, flags: u64) -> Option<()> {
    let pd = pd_for(va)?;
    let e = &mut pd[((va >> 21) & 511) as usize];
    if *e & P != 0 && *e & PS != 0 {
        return None;
    }
    if *e & P == 0 {
        // SAFETY: CPL 0, interrupts off.
        let t = unsafe { T.get() };
        if t.used == POOL {
            return None;
        }
        let tab = &mut t.pool[t.used].0;
        t.used += 1;
        *e = tab.as_ptr() as u64 | P | RW | US;
    }
    // SAFETY: the entry points at one of the runtime's page tables.
    let pt = unsafe { &mut *((*e & ADDR) as *mut [u64; 512]) };
    pt[((va >> 12) & 511) as usize] = (va & !0xfff) | flags | P;
    Some(())
}

/// Flushes the TLB after mappings changed.
#[unsafe(link_section = ".text.rt")]
pub(crate) fn flush() {
    // SAFETY: reloading the same CR3.
    unsafe { crate::arch::load_cr3((&raw const boot_pml4) as u64) }
}

/// Whether `[ptr, ptr+len)` lies in memory mapped for the service (its part of
/// the image, its stack or its heap).
#[unsafe(link_section = ".text.rt")]
pub(crate) fn user_readable(ptr: u64, len: u64) -> bool {
    // SAFETY: written once at boot.
    let (text, rt, ram_end) = unsafe { *LAYOUT.get() };
    let Some(end) = ptr.checked_add(len) else {
        return false;
    };
    (ptr >= text && end <= rt) || (ptr >= USER_STACK && end <= ram_end)
}
