//! Shared memory as the service sees it: each ivshmem device's BAR2, mapped
//! user-accessible at CPL 3, and its doorbell (ivshmem-doorbell only).
//!
//! The runtime never reads shared memory itself. The fabric takes a region's
//! [`ShmRegion::base`] and [`ShmRegion::len`] and does its own volatile/atomic
//! accesses; the small checked accessors here serve tests and simple services.

use crate::state::{DoorbellInfo, PciAddress, ShmInfo, USER};
use core::sync::atomic::{AtomicU64, Ordering};

/// One mapped shared-memory region.
pub type ShmRegion = ShmInfo;

/// The mapped ivshmem regions, in PCI order (bus 0 device number).
pub fn shm_regions() -> &'static [ShmRegion] {
    // SAFETY: written once before the service started; read-only since.
    let u: &'static crate::state::UserInfo = unsafe { USER.get() };
    &u.shm[..u.nshm]
}

impl ShmInfo {
    /// The device's PCI address.
    pub fn pci(&self) -> PciAddress {
        self.pci
    }

    /// Virtual address of the first byte (identity-mapped, user-accessible).
    pub fn base(&self) -> usize {
        self.base
    }

    /// Length in bytes (a power of two).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapped region has at least 4 KiB.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte as a raw pointer (for the fabric's volatile accesses).
    pub fn as_ptr(&self) -> *mut u8 {
        self.base as *mut u8
    }

    /// The doorbell, for an ivshmem-doorbell device.
    pub fn doorbell(&self) -> Option<Doorbell> {
        self.doorbell.map(Doorbell)
    }

    fn word(&self, offset: usize) -> Option<&AtomicU64> {
        if !offset.is_multiple_of(8) || offset.checked_add(8)? > self.len {
            return None;
        }
        // SAFETY: the 8 aligned bytes lie inside the mapped region, which lives
        // as long as the partition; AtomicU64 tolerates concurrent writers (the
        // peer VM), and no `&mut` to this memory exists anywhere.
        Some(unsafe { AtomicU64::from_ptr((self.base + offset) as *mut u64) })
    }

    /// Atomically loads the u64 at `offset` (acquire). `None` if out of range
    /// or misaligned.
    pub fn load_u64(&self, offset: usize) -> Option<u64> {
        Some(self.word(offset)?.load(Ordering::Acquire))
    }

    /// Atomically stores `v` at `offset` (release). `None` if out of range or
    /// misaligned.
    pub fn store_u64(&self, offset: usize, v: u64) -> Option<()> {
        self.word(offset)?.store(v, Ordering::Release);
        Some(())
    }

    /// Copies `dst.len()` bytes out of the region (volatile, byte by byte).
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> Option<()> {
        if offset.checked_add(dst.len())? > self.len {
            return None;
        }
        for (i, d) in dst.iter_mut().enumerate() {
            // SAFETY: in range (checked); volatile byte reads of memory the peer
            // may write concurrently.
            *d = unsafe { ((self.base + offset + i) as *const u8).read_volatile() };
        }
        Some(())
    }

    /// Copies `src` into the region (volatile, byte by byte).
    pub fn write_bytes(&self, offset: usize, src: &[u8]) -> Option<()> {
        if offset.checked_add(src.len())? > self.len {
            return None;
        }
        for (i, s) in src.iter().enumerate() {
            // SAFETY: as in `read_bytes`.
            unsafe { ((self.base + offset + i) as *mut u8).write_volatile(*s) };
        }
        Some(())
    }
}

/// An ivshmem-doorbell device's interrupt side.
#[derive(Clone, Copy, Debug)]
pub struct Doorbell(DoorbellInfo);

impl Doorbell {
    /// This partition's peer id on the device (IVPosition).
    pub fn own_id(&self) -> u16 {
        self.0.own_id
    }

    /// MSI-X vectors wired to interrupts (vector numbers `0..vectors()`).
    pub fn vectors(&self) -> u8 {
        self.0.vectors
    }

    /// Bit of vector `v` in [`crate::Wake::doorbells`].
    pub fn wake_bit(&self, v: u8) -> u32 {
        1 << (self.0.wake_bit + v)
    }

    /// Rings `vector` of `peer` (a register write at CPL 3, no system call).
    pub fn notify(&self, peer: u16, vector: u16) {
        let reg = (self.0.regs + 12) as *mut u32;
        // SAFETY: the register page (BAR0) is mapped user-accessible, uncached;
        // offset 12 is the doorbell register.
        unsafe { reg.write_volatile(u32::from(peer) << 16 | u32::from(vector)) }
    }
}
