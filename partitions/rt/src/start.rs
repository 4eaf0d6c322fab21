//! `rt_start`: from entry (PVH or uhyve) to the service's first instruction.
//!
//! Ring 0 is emulated and slow under `kvm_pvm` (about 10 µs per loop
//! iteration): the path below does as little as it can and prints nothing
//! unless something is wrong.

use crate::arch::rdtsc;
use crate::boot::{KIND_PVH, KIND_UHYVE};
use crate::console::{self, kprint};
use crate::paging;
use crate::state::{K, Platform, USER};
use abi::{exit, key};

const PVH_MAGIC: u32 = 0x336e_c578;

#[repr(C)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[repr(C)]
struct MemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// Copies the command line at a physical address into the user info in one
/// bulk copy (`rep movs`: a per-byte loop costs about 10 µs a byte in
/// emulated ring 0). The service-side prologue finds its end and parses it.
///
/// # Safety
/// `[p, p + MAX_CMDLINE + 1)` must be readable through the boot identity map.
#[unsafe(link_section = ".text.rt")]
unsafe fn copy_cmdline(p: *const u8) {
    // SAFETY: boot, single-threaded; the caller vouches for the source.
    unsafe {
        let user = USER.get();
        core::ptr::copy_nonoverlapping(p, user.cmdline.as_mut_ptr(), user.cmdline.len());
        user.cmdline_len = usize::MAX; // "find the NUL"
    }
}

/// Entry from the boot assembly, in long mode on the runtime stack.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.rt")]
extern "C" fn rt_start(kind: u32, info: u64) -> ! {
    let t0 = rdtsc();
    // SAFETY: boot, single-threaded, interrupts off.
    let (k, user) = unsafe { (K.get(), USER.get()) };
    user.entry_tsc = t0;
    let mut ram_end = 0;
    match kind {
        KIND_PVH => {
            k.platform = Platform::Qemu;
            // SAFETY: PVH hands a physical pointer to hvm_start_info in the first GiB.
            let si = unsafe { &*(info as *const StartInfo) };
            if info == 0 || info >= paging::MAX_RAM || si.magic != PVH_MAGIC {
                kprint!("vmpi-rt: no PVH start info (ebx {info:#x})\n");
                console::exit(exit::BAD_BOOT_INFO)
            }
            if si.version >= 1 && si.memmap_paddr != 0 && si.memmap_paddr < paging::MAX_RAM {
                for i in 0..si.memmap_entries.min(128) as usize {
                    // SAFETY: the memory map lies in low memory, identity-mapped.
                    let e = unsafe { &*(si.memmap_paddr as *const MemmapEntry).add(i) };
                    if e.kind == 1 && e.addr <= paging::IMAGE_BASE {
                        ram_end = e.addr.saturating_add(e.size);
                    }
                }
            }
            if si.cmdline_paddr != 0 && si.cmdline_paddr < paging::MAX_RAM - 4096 {
                // SAFETY: identity-mapped first GiB.
                unsafe { copy_cmdline(si.cmdline_paddr as *const u8) };
            }
        }
        KIND_UHYVE => {
            k.platform = Platform::Uhyve;
            ram_end = crate::uhyve::boot(info);
        }
        _ => console::exit(exit::BAD_BOOT_INFO),
    }
    user.platform = k.platform;
    let ram_end = ram_end.min(paging::MAX_RAM) & !((2 << 20) - 1);
    if ram_end < paging::MIN_RAM {
        kprint!(
            "vmpi-rt: too little memory: {} KiB usable, need at least {} KiB\n",
            ram_end >> 10,
            paging::MIN_RAM >> 10
        );
        console::exit(exit::TOO_LITTLE_MEMORY)
    }
    k.ram_end = ram_end;

    // SAFETY: boot; the image layout comes from the linker script.
    unsafe {
        crate::trap::init();
        paging::init(&crate::boot::layout(), ram_end);
        crate::heap::init_runtime();
    }
    if k.platform == Platform::Qemu {
        // Mask both 8259 PICs: legacy interrupts (the PIT after calibration)
        // must never arrive at the exception vectors inside `WAIT`.
        // SAFETY: the PIC interrupt-mask registers; absent PICs ignore writes.
        unsafe {
            crate::arch::outb(0x21, 0xff);
            crate::arch::outb(0xa1, 0xff);
        }
        if paging::map_2m(
            crate::apic::LAPIC_BASE,
            paging::RW | paging::PCD | paging::PWT | paging::NX,
        )
        .is_some()
        {
            paging::flush();
            crate::apic::init();
        }
    }

    user.heap_start = paging::USER_HEAP as usize;
    user.heap_len = (ram_end - paging::USER_HEAP) as usize;
    user.user_tsc = rdtsc();
    // The rest of the set-up depends on the command line, which the runtime's
    // CPL-3 prologue parses (natively fast) and hands back through `SETUP`.
    // SAFETY: the service's code and stack are mapped user-accessible; the
    // stack top minus 8 gives the ABI's entry alignment.
    unsafe {
        crate::trap::enter_user(
            crate::user::user_entry as *const () as u64,
            paging::USER_HEAP - 8,
        )
    }
}

/// The `SETUP` call: the CPL-3 prologue's parse of the command line. Applies
/// the runtime's settings (TSC frequency, PCI, required devices). Accepted once,
/// before the service's `main`; exits on a reported parse error.
#[unsafe(link_section = ".text.rt")]
pub(crate) fn setup(s: &Setup, err: Option<&[u8]>) {
    // SAFETY: CPL 0 inside a system call, interrupts off.
    let (k, user) = unsafe { (K.get(), USER.get()) };
    if let Some(msg) = err {
        console::write(b"vmpi-rt: ");
        console::write(msg);
        console::write(b"\n");
        console::exit(exit::BAD_COMMAND_LINE)
    }
    k.tsc_khz = match s.tsc_khz {
        0 if k.tsc_khz != 0 => k.tsc_khz,
        0 => crate::time::calibrate(),
        v => v,
    };
    user.tsc_khz = k.tsc_khz;
    if k.platform == Platform::Qemu {
        let ecam = if s.ecam == 0 { None } else { Some(s.ecam) };
        if let Some(cfg) = crate::pci::probe(ecam) {
            crate::pci::scan(cfg, s.virtio_blk != 0);
        } else if s.virtio_blk != 0 {
            kprint!("vmpi-rt: missing device: virtio_blk_test=1 but no PCI bus\n");
            console::exit(exit::MISSING_DEVICE)
        }
    } else if s.virtio_blk != 0 {
        kprint!("vmpi-rt: missing device: virtio_blk_test=1 but no PCI bus\n");
        console::exit(exit::MISSING_DEVICE)
    }
    if (user.nshm as u64) < s.need_shm {
        kprint!(
            "vmpi-rt: missing device: {} ivshmem device(s) required ({}={}), {} found\n",
            s.need_shm,
            key::NEED_SHM,
            s.need_shm,
            user.nshm
        );
        console::exit(exit::MISSING_DEVICE)
    }
    if s.need_doorbell != 0 && !user.shm[..user.nshm].iter().any(|s| s.doorbell.is_some()) {
        kprint!("vmpi-rt: missing device: an ivshmem-doorbell device with MSI-X is required\n");
        console::exit(exit::MISSING_DEVICE)
    }
}

/// What the CPL-3 prologue hands to [`setup`] (in the service's memory).
#[repr(C)]
#[derive(Default)]
pub(crate) struct Setup {
    /// TSC kHz; 0: calibrate (or uhyve's figure).
    pub tsc_khz: u64,
    /// ECAM base; 0: probe.
    pub ecam: u64,
    pub need_shm: u64,
    pub need_doorbell: u64,
    pub virtio_blk: u64,
    /// A parse error (UTF-8 message), or null.
    pub err_ptr: u64,
    pub err_len: u64,
}
