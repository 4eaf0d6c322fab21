//! PCI configuration access (port 0xCF8 or ECAM), bus-0 enumeration, and the
//! ivshmem devices: BARs sized and assigned in the host bridge window, BAR2
//! mapped into the service's address space, MSI-X wired to the LAPIC.
//!
//! Assumptions: devices sit on bus 0 (QEMU's root bus on `microvm,pcie=on`,
//! `q35` and `pc`); the 32-bit window 0xc000_0000..0xe000_0000 routes to PCI.
//! Whatever firmware assigned is overwritten.

use crate::arch::{inl, outl};
use crate::console::kprint;
use crate::paging::{self, NX, PCD, PWT, RW, US};
use crate::state::{DOORBELL_VECTOR_BASE, DoorbellInfo, MAX_DOORBELL_DEVS, PciAddress, ShmInfo};
use crate::state::{USER, VECTORS_PER_DEV};
use abi::exit;

const IVSHMEM_VENDOR: u16 = 0x1af4;
const IVSHMEM_DEVICE: u16 = 0x1110;
/// Where BAR2s go.
const WINDOW: u64 = 0xc000_0000;
/// Where register pages (BAR0, BAR1) go: the window's last 2 MiB.
const REGS: u64 = 0xdfe0_0000;
const REGS_END: u64 = 0xe000_0000;
/// Default ECAM of `microvm,pcie=on`.
pub(crate) const MICROVM_ECAM: u64 = 0xe000_0000;

/// How configuration space is reached.
#[derive(Clone, Copy)]
pub(crate) enum Cfg {
    /// Ports 0xCF8/0xCFC.
    Port,
    /// Memory-mapped at this base (bus 0 and 1 mapped).
    Ecam(u64),
}

/// A configuration dword: the value to write to port 0xCF8, or its ECAM address.
enum Dword {
    Port(u32),
    Ecam(*mut u32),
}

impl Cfg {
    /// Where the dword at `off` of `a`'s configuration space is.
    #[unsafe(link_section = ".text.rt")]
    fn locate(self, a: PciAddress, off: u16) -> Dword {
        let (b, d, f) = (u32::from(a.bus), u32::from(a.device), u32::from(a.function));
        match self {
            Cfg::Port => {
                Dword::Port(0x8000_0000 | b << 16 | d << 11 | f << 8 | u32::from(off & 0xfc))
            }
            Cfg::Ecam(base) => Dword::Ecam(
                (base + u64::from(b << 20 | d << 15 | f << 12 | u32::from(off & 0xffc)))
                    as *mut u32,
            ),
        }
    }

    #[unsafe(link_section = ".text.rt")]
    pub(crate) fn read(self, a: PciAddress, off: u16) -> u32 {
        match self.locate(a, off) {
            // SAFETY: configuration mechanism #1; the address selects one dword.
            Dword::Port(addr) => unsafe {
                outl(0xcf8, addr);
                inl(0xcfc)
            },
            // SAFETY: ECAM is mapped supervisor/uncached for buses 0-1.
            Dword::Ecam(p) => unsafe { p.read_volatile() },
        }
    }

    #[unsafe(link_section = ".text.rt")]
    pub(crate) fn write(self, a: PciAddress, off: u16, v: u32) {
        match self.locate(a, off) {
            // SAFETY: as in `read`.
            Dword::Port(addr) => unsafe {
                outl(0xcf8, addr);
                outl(0xcfc, v)
            },
            // SAFETY: as in `read`.
            Dword::Ecam(p) => unsafe { p.write_volatile(v) },
        }
    }
}

/// Finds the configuration mechanism: `ecam` from the command line, else port
/// 0xCF8 when it answers, else the microvm ECAM. `None`: no PCI bus at all.
#[unsafe(link_section = ".text.rt")]
pub(crate) fn probe(ecam: Option<u64>) -> Option<Cfg> {
    if let Some(base) = ecam {
        paging::map_2m(base, RW | PCD | PWT | NX)?;
        return Some(Cfg::Ecam(base));
    }
    // SAFETY: the classic presence check of mechanism #1.
    let port = unsafe {
        outl(0xcf8, 0x8000_0000);
        inl(0xcf8) == 0x8000_0000
    };
    if port {
        return Some(Cfg::Port);
    }
    paging::map_2m(MICROVM_ECAM, RW | PCD | PWT | NX)?;
    paging::flush();
    let c = Cfg::Ecam(MICROVM_ECAM);
    let id = c.read(PciAddress::default(), 0);
    if id == 0 || id == u32::MAX {
        None
    } else {
        Some(c)
    }
}

/// A layout error: message, device.
type LayoutErr = (&'static str, PciAddress);

struct Alloc {
    window: u64,
    regs: u64,
    doorbells: usize,
}

/// Scans bus 0, sets up every ivshmem device and records it in the user info.
/// Exits with [`exit::BAD_PCI_LAYOUT`] on anything unexpected. With
/// `virtio_blk` set, runs the virtio-blk smoke test on the first such device
/// ([`exit::MISSING_DEVICE`] when there is none).
#[unsafe(link_section = ".text.rt")]
pub(crate) fn scan(cfg: Cfg, virtio_blk: bool) {
    let mut al = Alloc {
        window: WINDOW,
        regs: REGS,
        doorbells: 0,
    };
    let mut blk = None;
    for device in 0..32u8 {
        let a0 = PciAddress {
            bus: 0,
            device,
            function: 0,
        };
        let id0 = cfg.read(a0, 0);
        if id0 & 0xffff == 0xffff || id0 & 0xffff == 0 {
            continue;
        }
        let multi = cfg.read(a0, 0xc) & (0x80 << 16) != 0;
        for function in 0..if multi { 8 } else { 1 } {
            let a = PciAddress {
                bus: 0,
                device,
                function,
            };
            let id = cfg.read(a, 0);
            if id & 0xffff == 0xffff {
                continue;
            }
            if id & 0xffff == u32::from(IVSHMEM_VENDOR)
                && matches!(id >> 16, 0x1001 | 0x1042)
                && blk.is_none()
            {
                blk = Some(a);
            }
            if id & 0xffff == u32::from(IVSHMEM_VENDOR) && id >> 16 == u32::from(IVSHMEM_DEVICE) {
                // SAFETY: CPL 0, boot.
                let user = unsafe { USER.get() };
                if user.nshm == abi::MAX_SHM {
                    kprint!(
                        "vmpi-rt: ivshmem at {a} ignored (more than {})\n",
                        abi::MAX_SHM
                    );
                    continue;
                }
                match ivshmem(cfg, a, &mut al) {
                    Ok(info) => {
                        user.shm[user.nshm] = info;
                        user.nshm += 1;
                    }
                    Err((msg, at)) => {
                        kprint!("vmpi-rt: unexpected PCI layout at {at}: {msg}\n");
                        crate::console::exit(exit::BAD_PCI_LAYOUT)
                    }
                }
            }
        }
    }
    paging::flush();
    if virtio_blk {
        match blk {
            Some(a) => crate::virtio::blk_smoke_test(cfg, a, &mut al.window),
            None => {
                kprint!("vmpi-rt: missing device: virtio_blk_test=1 but no virtio-blk device\n");
                crate::console::exit(exit::MISSING_DEVICE)
            }
        }
    }
}

/// Sizes a 32-bit memory BAR at `off`, leaving it all-ones.
#[unsafe(link_section = ".text.rt")]
fn size32(cfg: Cfg, a: PciAddress, off: u16) -> Result<u64, LayoutErr> {
    cfg.write(a, off, u32::MAX);
    let v = cfg.read(a, off);
    if v & 1 != 0 {
        return Err(("I/O BAR where a memory BAR was expected", a));
    }
    if v & 0x6 != 0 {
        return Err(("64-bit BAR where a 32-bit one was expected", a));
    }
    let mask = v & !0xf;
    if mask == 0 {
        return Err(("BAR not implemented", a));
    }
    Ok(u64::from(!mask) + 1)
}

#[unsafe(link_section = ".text.rt")]
fn ivshmem(cfg: Cfg, a: PciAddress, al: &mut Alloc) -> Result<ShmInfo, LayoutErr> {
    let cmd = cfg.read(a, 4);
    // Decoding off while sizing, or QEMU maps the BAR at the all-ones address.
    cfg.write(a, 4, cmd & 0xffff & !0x7);

    let size0 = size32(cfg, a, 0x10)?;
    if size0 > 4096 {
        return Err(("register BAR0 larger than 4 KiB", a));
    }
    let lo = cfg.read(a, 0x18);
    if lo & 0x7 != 0x4 {
        return Err(("BAR2 is not a 64-bit memory BAR", a));
    }
    cfg.write(a, 0x18, u32::MAX);
    cfg.write(a, 0x1c, u32::MAX);
    let mask = (u64::from(cfg.read(a, 0x1c)) << 32 | u64::from(cfg.read(a, 0x18))) & !0xf;
    if mask == 0 {
        return Err(("BAR2 not implemented", a));
    }
    let size2 = (!mask).wrapping_add(1);
    if !size2.is_power_of_two() || size2 < 4096 {
        return Err(("BAR2 size is not a power of two of at least 4 KiB", a));
    }

    // MSI-X capability (ivshmem-doorbell only).
    let mut msix = None;
    if cfg.read(a, 4) & (0x10 << 16) != 0 {
        let mut p = (cfg.read(a, 0x34) & 0xfc) as u16;
        let mut n = 0;
        while p != 0 && n < 48 {
            let h = cfg.read(a, p);
            if h & 0xff == 0x11 {
                msix = Some(p);
                break;
            }
            p = ((h >> 8) & 0xfc) as u16;
            n += 1;
        }
    }

    // Assign: BAR2 naturally aligned (at least 2 MiB) in the window.
    let align = size2.max(2 << 20);
    let base2 = al.window.div_ceil(align) * align;
    if base2 + size2 > REGS {
        return Err(("shared memory does not fit the PCI window", a));
    }
    al.window = base2 + size2;
    if al.regs + 0x2000 > REGS_END {
        return Err(("out of register pages", a));
    }
    let bar0 = al.regs;
    let bar1 = al.regs + 0x1000;
    al.regs += 0x2000;
    cfg.write(a, 0x10, bar0 as u32);
    cfg.write(a, 0x18, base2 as u32 | (lo & 0xf));
    cfg.write(a, 0x1c, (base2 >> 32) as u32);

    let oom = ("out of page tables", a);
    paging::map_4k(bar0, RW | US | PCD | PWT | NX).ok_or(oom)?;
    if size2 >= 2 << 20 {
        let mut p = base2;
        while p < base2 + size2 {
            paging::map_2m(p, RW | US | NX).ok_or(oom)?;
            p += 2 << 20;
        }
    } else {
        let mut p = base2;
        while p < base2 + size2 {
            paging::map_4k(p, RW | US | NX).ok_or(oom)?;
            p += 4096;
        }
    }

    let mut doorbell = None;
    if let Some(cap) = msix {
        let ctrl = cfg.read(a, cap);
        let table = cfg.read(a, cap + 4);
        if table & 7 != 1 {
            return Err(("MSI-X table not in BAR1", a));
        }
        let size1 = size32(cfg, a, 0x14)?;
        if size1 > 4096 {
            return Err(("MSI-X BAR1 larger than 4 KiB", a));
        }
        cfg.write(a, 0x14, bar1 as u32);
        paging::map_4k(bar1, RW | PCD | PWT | NX).ok_or(oom)?;
        paging::flush();
        cfg.write(a, 4, (cmd & 0xffff) | 0x6);
        let entries = ((ctrl >> 16) & 0x7ff) + 1;
        let dev = al.doorbells;
        if dev < MAX_DOORBELL_DEVS {
            al.doorbells += 1;
            let n = entries.min(VECTORS_PER_DEV as u32) as u8;
            let toff = u64::from(table & !7);
            if toff + 16 * u64::from(n) > size1 {
                return Err(("MSI-X table outside BAR1", a));
            }
            for e in 0..n {
                let vector = DOORBELL_VECTOR_BASE + (dev * VECTORS_PER_DEV) as u8 + e;
                let ent = (bar1 + toff + 16 * u64::from(e)) as *mut u32;
                // SAFETY: the MSI-X table entry lies inside BAR1, mapped above.
                unsafe {
                    ent.write_volatile(0xfee0_0000);
                    ent.add(1).write_volatile(0);
                    ent.add(2).write_volatile(u32::from(vector));
                    ent.add(3).write_volatile(0);
                }
            }
            // Enable MSI-X, function unmasked.
            cfg.write(a, cap, (ctrl & !(1 << 30)) | (1 << 31));
            // SAFETY: BAR0 is mapped; IVPosition is the register at offset 8.
            let own = unsafe { ((bar0 + 8) as *const u32).read_volatile() };
            doorbell = Some(DoorbellInfo {
                regs: bar0 as usize,
                own_id: own as u16,
                vectors: n,
                wake_bit: (dev * VECTORS_PER_DEV) as u8,
            });
        } else {
            kprint!("vmpi-rt: doorbell of {a} not wired (more than {MAX_DOORBELL_DEVS})\n");
        }
    } else {
        cfg.write(a, 4, (cmd & 0xffff) | 0x2);
    }
    Ok(ShmInfo {
        pci: a,
        base: base2 as usize,
        len: size2 as usize,
        doorbell,
    })
}
