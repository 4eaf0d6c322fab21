//! The runtime's global state (supervisor-only, in `.rtdata`) and what the
//! runtime hands to the service (user-readable, in `.bss`).

use core::cell::UnsafeCell;

/// A cell for single-CPU global state. Every access happens either at CPL 0
/// with interrupts off (the runtime) or at CPL 3 (the service), never both at
/// once on the same field, so plain exclusive access is sound.
#[repr(transparent)]
pub(crate) struct Global<T>(UnsafeCell<T>);

// SAFETY: one CPU; see the type's docs for the access discipline.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    /// Wraps a value.
    pub(crate) const fn new(v: T) -> Self {
        Self(UnsafeCell::new(v))
    }

    /// Exclusive access.
    ///
    /// # Safety
    /// No other reference to the value may be live (see the type's docs).
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn get(&self) -> &mut T {
        // SAFETY: forwarded to the caller.
        unsafe { &mut *self.0.get() }
    }

    /// A raw pointer to the value.
    pub(crate) fn ptr(&self) -> *mut T {
        self.0.get()
    }
}

/// Which loader started the partition.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Platform {
    /// Not known yet (before entry finished).
    Unknown = 0,
    /// QEMU through PVH (`-kernel`).
    Qemu = 1,
    /// uhyve.
    Uhyve = 2,
}

/// Most doorbell devices the runtime wires to interrupts.
pub(crate) const MAX_DOORBELL_DEVS: usize = 3;
/// Interrupt vectors per doorbell device.
pub(crate) const VECTORS_PER_DEV: usize = 4;
/// First IDT vector of the doorbells.
pub(crate) const DOORBELL_VECTOR_BASE: u8 = 33;
/// LAPIC timer vector.
pub(crate) const TIMER_VECTOR: u8 = 32;
/// Spurious-interrupt vector.
pub(crate) const SPURIOUS_VECTOR: u8 = 47;

/// The bit of [`Kernel::pending`] a doorbell stub sets with its vector's: a doorbell
/// interrupt is in service. Its end of interrupt waits for the next wait or yield
/// (`apic::ack`), off the path of the wake-up.
pub(crate) const IN_SERVICE: u32 = 1 << 31;

/// Runtime state.
pub(crate) struct Kernel {
    pub platform: Platform,
    pub tsc_khz: u64,
    pub ram_end: u64,
    pub lapic: bool,
    /// Doorbell vectors that rang and were not yet reported (bit per vector), and
    /// [`IN_SERVICE`]. Written by the doorbell stubs (`trap.rs`) in one instruction.
    pub pending: u32,
    /// The prologue's `SETUP` call happened.
    pub setup_done: bool,
}

#[unsafe(link_section = ".rtdata")]
pub(crate) static K: Global<Kernel> = Global::new(Kernel {
    platform: Platform::Unknown,
    tsc_khz: 0,
    ram_end: 0,
    lapic: false,
    pending: 0,
    setup_done: false,
});

/// A PCI function address.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PciAddress {
    /// Bus number.
    pub bus: u8,
    /// Device number (0..32).
    pub device: u8,
    /// Function number (0..8).
    pub function: u8,
}

impl core::fmt::Display for PciAddress {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// The doorbell side of an `ivshmem-doorbell` device.
#[derive(Clone, Copy, Debug, Default)]
pub struct DoorbellInfo {
    /// Virtual address of the device's register page (BAR0), user-mapped.
    pub(crate) regs: usize,
    /// This partition's peer id on the device (the IVPosition register).
    pub own_id: u16,
    /// MSI-X vectors wired to interrupts (at most 4).
    pub vectors: u8,
    /// Bit index in [`crate::wait`]'s result of this device's vector 0.
    pub wake_bit: u8,
}

/// Shared memory handed to the service: one ivshmem device's BAR2.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShmInfo {
    pub(crate) pci: PciAddress,
    pub(crate) base: usize,
    pub(crate) len: usize,
    pub(crate) doorbell: Option<DoorbellInfo>,
}

/// What the runtime hands to the service, in user-readable memory.
pub(crate) struct UserInfo {
    pub cmdline: [u8; abi::MAX_CMDLINE + 1],
    pub cmdline_len: usize,
    /// (key start, key end, value start, value end) in `cmdline`.
    pub args: [(u16, u16, u16, u16); abi::MAX_ARGS],
    pub nargs: usize,
    pub tsc_khz: u64,
    pub shm: [ShmInfo; abi::MAX_SHM],
    pub nshm: usize,
    pub heap_start: usize,
    pub heap_len: usize,
    pub platform: Platform,
    /// TSC at runtime entry (for boot-time breakdowns).
    pub entry_tsc: u64,
    /// TSC just before entering CPL 3.
    pub user_tsc: u64,
}

pub(crate) static USER: Global<UserInfo> = Global::new(UserInfo {
    cmdline: [0; abi::MAX_CMDLINE + 1],
    cmdline_len: 0,
    args: [(0, 0, 0, 0); abi::MAX_ARGS],
    nargs: 0,
    tsc_khz: 0,
    shm: [ShmInfo {
        pci: PciAddress {
            bus: 0,
            device: 0,
            function: 0,
        },
        base: 0,
        len: 0,
        doorbell: None,
    }; abi::MAX_SHM],
    nshm: 0,
    heap_start: 0,
    heap_len: 0,
    platform: Platform::Unknown,
    entry_tsc: 0,
    user_tsc: 0,
});
