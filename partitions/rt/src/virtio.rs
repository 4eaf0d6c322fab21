//! virtio devices through the `virtio-drivers` crate, from the runtime (CPL 0).
//! Here: a virtio-blk smoke test (`virtio_blk_test=1`): read sector 0, write a
//! pattern to sector 1, read it back.

use crate::console::{self, kprint};
use crate::paging::{self, NX, PCD, PWT, RW};
use crate::pci::Cfg;
use crate::state::PciAddress;
use abi::exit;
use alloc::alloc::{alloc_zeroed, dealloc};
use core::alloc::Layout;
use core::ptr::NonNull;
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};

/// DMA through the runtime heap; physical = virtual (identity mapping).
struct RtHal;

// SAFETY: allocations are page-aligned, zeroed, exclusively owned until freed;
// the runtime's memory is identity-mapped, so virtual addresses are physical.
unsafe impl Hal for RtHal {
    #[unsafe(link_section = ".text.rt")]
    fn dma_alloc(pages: usize, _: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let l = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).expect("DMA layout");
        // SAFETY: non-zero size.
        let p = unsafe { alloc_zeroed(l) };
        let p = NonNull::new(p).expect("runtime heap exhausted (virtio DMA)");
        (p.as_ptr() as PhysAddr, p)
    }

    #[unsafe(link_section = ".text.rt")]
    unsafe fn dma_dealloc(_: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let l = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).expect("DMA layout");
        // SAFETY: allocated by dma_alloc with this layout.
        unsafe { dealloc(vaddr.as_ptr(), l) };
        0
    }

    #[unsafe(link_section = ".text.rt")]
    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("non-null MMIO address")
    }

    #[unsafe(link_section = ".text.rt")]
    unsafe fn share(buffer: NonNull<[u8]>, _: BufferDirection) -> PhysAddr {
        buffer.as_ptr().cast::<u8>() as PhysAddr
    }

    #[unsafe(link_section = ".text.rt")]
    unsafe fn unshare(_: PhysAddr, _: NonNull<[u8]>, _: BufferDirection) {}
}

struct Access(Cfg);

#[unsafe(link_section = ".text.rt")]
fn addr(d: DeviceFunction) -> PciAddress {
    PciAddress {
        bus: d.bus,
        device: d.device,
        function: d.function,
    }
}

impl ConfigurationAccess for Access {
    #[unsafe(link_section = ".text.rt")]
    fn read_word(&self, d: DeviceFunction, off: u8) -> u32 {
        self.0.read(addr(d), u16::from(off))
    }

    #[unsafe(link_section = ".text.rt")]
    fn write_word(&mut self, d: DeviceFunction, off: u8, data: u32) {
        self.0.write(addr(d), u16::from(off), data)
    }

    #[unsafe(link_section = ".text.rt")]
    unsafe fn unsafe_clone(&self) -> Self {
        Access(self.0)
    }
}

#[unsafe(link_section = ".text.rt")]
fn fail(what: &str) -> ! {
    kprint!("vmpi-rt: virtio-blk smoke test failed: {what}\n");
    console::exit(exit::DEVICE_ERROR)
}

/// Assigns the device's memory BARs from `window` (supervisor mappings).
#[unsafe(link_section = ".text.rt")]
fn assign_bars(cfg: Cfg, a: PciAddress, window: &mut u64) {
    let cmd = cfg.read(a, 4);
    cfg.write(a, 4, cmd & 0xffff & !0x7);
    let mut i = 0u16;
    while i < 6 {
        let off = 0x10 + 4 * i;
        let orig = cfg.read(a, off);
        if orig & 1 != 0 {
            i += 1;
            continue; // I/O BAR: unused by the modern transport
        }
        let is64 = orig & 0x6 == 0x4;
        cfg.write(a, off, u32::MAX);
        let mut mask = u64::from(cfg.read(a, off) & !0xf);
        if is64 {
            cfg.write(a, off + 4, u32::MAX);
            mask |= u64::from(cfg.read(a, off + 4)) << 32;
        } else if mask != 0 {
            mask |= 0xffff_ffff_0000_0000;
        }
        if mask != 0 {
            let size = (!mask).wrapping_add(1).max(4096);
            let base = window.div_ceil(size) * size;
            *window = base + size;
            cfg.write(a, off, base as u32);
            if is64 {
                cfg.write(a, off + 4, (base >> 32) as u32);
            }
            let mut p = base;
            while p < base + size {
                if paging::map_4k(p, RW | PCD | PWT | NX).is_none() {
                    fail("out of page tables for BARs");
                }
                p += 4096;
            }
        }
        i += if is64 { 2 } else { 1 };
    }
    paging::flush();
    cfg.write(a, 4, (cmd & 0xffff) | 0x6);
}

/// Runs the smoke test on the virtio-blk device at `a`.
#[unsafe(link_section = ".text.rt")]
pub(crate) fn blk_smoke_test(cfg: Cfg, a: PciAddress, window: &mut u64) {
    assign_bars(cfg, a, window);
    let mut root = PciRoot::new(Access(cfg));
    let df = DeviceFunction {
        bus: a.bus,
        device: a.device,
        function: a.function,
    };
    let transport = PciTransport::new::<RtHal, _>(&mut root, df)
        .unwrap_or_else(|_| fail("no virtio PCI transport"));
    let mut blk = VirtIOBlk::<RtHal, _>::new(transport).unwrap_or_else(|_| fail("device init"));
    let sectors = blk.capacity();
    let mut s0 = [0u8; 512];
    blk.read_blocks(0, &mut s0)
        .unwrap_or_else(|_| fail("read sector 0"));
    let mut pattern = [0u8; 512];
    for (i, b) in pattern.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7) ^ 0x5a;
    }
    pattern[..16].copy_from_slice(b"vmpi-virtio-blk!");
    blk.write_blocks(1, &pattern)
        .unwrap_or_else(|_| fail("write sector 1"));
    let mut back = [0u8; 512];
    blk.read_blocks(1, &mut back)
        .unwrap_or_else(|_| fail("read sector 1"));
    if back != pattern {
        fail("sector 1 read back differs from what was written");
    }
    let head = core::str::from_utf8(&s0[..16]).unwrap_or("<binary>");
    kprint!(
        "vmpi-rt: virtio-blk at {a}: {sectors} sectors, sector 0 starts \"{head}\", write/read-back of sector 1 ok\n"
    );
}
