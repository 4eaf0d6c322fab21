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

/// Reads a NUL-terminated string at a physical address into the user info.
///
/// # Safety
/// `p` must be readable through the boot identity map (first GiB).
#[unsafe(link_section = ".text.rt")]
unsafe fn copy_cmdline(p: *const u8, max: usize) {
    // SAFETY: boot, single-threaded.
    let user = unsafe { USER.get() };
    let mut n = 0;
    while n < max {
        // SAFETY: the caller vouches for the string.
        let c = unsafe { p.add(n).read() };
        if c == 0 {
            break;
        }
        if n == abi::MAX_CMDLINE {
            kprint!(
                "vmpi-rt: command line longer than {} bytes\n",
                abi::MAX_CMDLINE
            );
            console::exit(exit::BAD_COMMAND_LINE)
        }
        user.cmdline[n] = c;
        n += 1;
    }
    user.cmdline_len = n;
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
                unsafe { copy_cmdline(si.cmdline_paddr as *const u8, abi::MAX_CMDLINE + 1) };
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

    let settings = crate::cmdline::parse();

    // SAFETY: boot; the image layout comes from the linker script.
    unsafe {
        crate::trap::init();
        paging::init(&crate::boot::layout(), ram_end);
        crate::heap::init_runtime();
    }

    k.tsc_khz = match settings.tsc_khz {
        Some(v) => v,
        None if k.tsc_khz != 0 => k.tsc_khz,
        None => crate::time::calibrate(),
    };
    user.tsc_khz = k.tsc_khz;

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
        if let Some(cfg) = crate::pci::probe(settings.ecam) {
            crate::pci::scan(cfg, settings.virtio_blk);
        }
    }
    if k.platform != Platform::Qemu && settings.virtio_blk {
        kprint!("vmpi-rt: missing device: virtio_blk_test=1 but no PCI bus\n");
        console::exit(exit::MISSING_DEVICE)
    }
    if user.nshm < settings.need_shm {
        kprint!(
            "vmpi-rt: missing device: {} ivshmem device(s) required ({}={}), {} found\n",
            settings.need_shm,
            key::NEED_SHM,
            settings.need_shm,
            user.nshm
        );
        console::exit(exit::MISSING_DEVICE)
    }
    if settings.need_doorbell && !user.shm[..user.nshm].iter().any(|s| s.doorbell.is_some()) {
        kprint!("vmpi-rt: missing device: an ivshmem-doorbell device with MSI-X is required\n");
        console::exit(exit::MISSING_DEVICE)
    }

    user.heap_start = paging::USER_HEAP as usize;
    user.heap_len = (ram_end - paging::USER_HEAP) as usize;
    user.user_tsc = rdtsc();
    // SAFETY: the service's code and stack are mapped user-accessible; the
    // stack top minus 8 gives the ABI's entry alignment.
    unsafe {
        crate::trap::enter_user(
            crate::user::user_entry as *const () as u64,
            paging::USER_HEAP - 8,
        )
    }
}
