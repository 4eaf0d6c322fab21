//! The contract between a vmpi partition and whoever launched it.
//!
//! This crate has no dependencies and builds for the host as well as for
//! `x86_64-unknown-none`, so the host launcher can interpret exit statuses.
//!
//! # Exit statuses
//!
//! A partition ends by writing a status `v` (0..=127) to QEMU's `isa-debug-exit`
//! device (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`); QEMU then exits with
//! process status `2*v + 1` ([`from_qemu_exit_code`] undoes that). Under uhyve the
//! status goes through the exit hypercall and is uhyve's process status as it is.
//! A QEMU status of 0 means the guest did not report a status: QEMU was started
//! without `isa-debug-exit` (the runtime then prints the status it could not
//! report and powers the VM off through ACPI), or a triple fault with `-no-reboot`.
//!
//! | `v` | meaning |
//! |---|---|
//! | 0..=99 | the service's own status (`rt::exit`, or the return value of its `main`) |
//! | 100 | [`exit::SERVICE_PANIC`]: the service panicked |
//! | 101 | [`exit::SERVICE_PAGE_FAULT`] |
//! | 102 | [`exit::SERVICE_GP_FAULT`]: general protection fault |
//! | 103 | [`exit::SERVICE_INVALID_OPCODE`] (also `ud2`/`abort`) |
//! | 104 | [`exit::SERVICE_EXCEPTION`]: any other CPU exception in the service |
//! | 105 | [`exit::SERVICE_BAD_SYSCALL`]: unknown call or bad argument |
//! | 106 | [`exit::SERVICE_STACK_OVERFLOW`]: a page fault in the stack guard |
//! | 110 | [`exit::RUNTIME_FAULT`]: a CPU exception in the runtime (CPL 0) |
//! | 111 | [`exit::RUNTIME_PANIC`]: the runtime panicked |
//! | 112 | [`exit::BAD_COMMAND_LINE`]: malformed `-append` |
//! | 113 | [`exit::TOO_LITTLE_MEMORY`] |
//! | 114 | [`exit::MISSING_DEVICE`]: a device the command line requires is absent |
//! | 115 | [`exit::BAD_PCI_LAYOUT`]: unexpected PCI layout (BAR, window, capability) |
//! | 116 | [`exit::BAD_BOOT_INFO`]: the loader handed over nothing usable |
//! | 117 | [`exit::DOUBLE_FAULT`] |
//! | 118 | [`exit::DEVICE_ERROR`]: a device misbehaved (virtio-blk smoke test) |
//!
//! # System calls
//!
//! The service at CPL 3 enters the runtime with `int3` (the `syscall` instruction
//! does not reach CPL 0 under `kvm_pvm`; `int3` through a DPL-3 gate works there,
//! under hardware KVM and under TCG). `rax` holds the number ([`sys`]), `rdi`,
//! `rsi`, `rdx` the arguments, `rax` the result. Every ring-0 instruction is
//! emulated under `kvm_pvm` (about 1 µs each): a system call through the full trap
//! frame costs 55-90 µs there, so keep them off any data path. [`sys::WAIT`], on
//! the wake-up path, saves nothing.
//!
//! # Command line
//!
//! `-append` is space-separated `key=value` pairs. Every pair is handed to the
//! service; the runtime itself consumes the keys in [`key`].
#![no_std]
#![deny(missing_docs)]
/// The control page of `vmpi bench` (`images/src/bench.rs`) and its VM side
/// (`partitions/fabric-bench-vm`), defined once for both.
///
/// The channel file is a power of two larger than the interconnect's region; the
/// bench uses its tail, which the fabric never touches (checked at start): the last
/// [`bench::CTL_LEN`] bytes are the control page, the [`bench::SAMPLES_LEN`] bytes below it the
/// samples of the last latency round. The host (`vmpi bench`) maps the same file.
/// Offsets within the control page (u64 words):
///
/// | offset | who writes | what |
/// |---|---|---|
/// | 0 | host | round number `k`, written last (release): "run round k" |
/// | 8 | host | kind: 0 quit, 1 latency, 2 bandwidth |
/// | 16 | host | message size in bytes |
/// | 24 | host | latency: timed iterations; bandwidth: windows |
/// | 32 | host | latency: warm-up iterations; bandwidth: messages per window |
/// | 64 + 8r | rank r | [`bench::READY`] once its endpoint is up |
/// | 128 + 8r | rank r | `k` once round `k` is done |
/// | 192 + 8r | rank r | status of the round: 0, or the interconnect error code |
/// | 256 | rank 0 | latency: samples written; bandwidth: TSC ticks of all windows |
///
/// Samples: one `u32` per timed iteration, little-endian, the round trip in TSC
/// ticks (`rdtsc` at CPL 3), at the start of the samples area.
pub mod bench {
    /// Bytes of the control page (the last page of the channel file).
    pub const CTL_LEN: usize = 4096;
    /// Bytes of the samples area below it (`u32` per sample).
    pub const SAMPLES_LEN: usize = 1 << 20;
    /// Ready marker.
    pub const READY: u64 = 0x7662_656e_6368_5259;
    /// Offset of the round number.
    pub const CMD: usize = 0;
    /// Offset of the round's kind.
    pub const KIND: usize = 8;
    /// Offset of the message size.
    pub const SIZE: usize = 16;
    /// Offset of the iteration (or window) count.
    pub const COUNT: usize = 24;
    /// Offset of the warm-up count (or messages per window).
    pub const EXTRA: usize = 32;
    /// Offset of rank 0's ready word (rank r: `+ 8 r`).
    pub const READY_AT: usize = 64;
    /// Offset of rank 0's "round done" word.
    pub const DONE_AT: usize = 128;
    /// Offset of rank 0's status word.
    pub const STATUS_AT: usize = 192;
    /// Offset of rank 0's result.
    pub const RESULT: usize = 256;
    /// Kind: stop.
    pub const QUIT: u64 = 0;
    /// Kind: a latency round.
    pub const LATENCY: u64 = 1;
    /// Kind: a bandwidth round.
    pub const BANDWIDTH: u64 = 2;
    /// Tag of the measured messages (host and VM rounds alike).
    pub const TAG: u32 = 7;
    /// Tag of the acknowledgements.
    pub const ACK: u32 = 8;
}

/// Exit statuses (the value written to `isa-debug-exit`, see the crate docs).
pub mod exit {
    /// The service finished successfully.
    pub const SUCCESS: u8 = 0;
    /// Largest status a service may choose itself.
    pub const SERVICE_MAX: u8 = 99;
    /// The service panicked.
    pub const SERVICE_PANIC: u8 = 100;
    /// The service touched memory it may not (page fault at CPL 3).
    pub const SERVICE_PAGE_FAULT: u8 = 101;
    /// General protection fault at CPL 3.
    pub const SERVICE_GP_FAULT: u8 = 102;
    /// Invalid opcode at CPL 3 (`ud2`, `core::intrinsics::abort`).
    pub const SERVICE_INVALID_OPCODE: u8 = 103;
    /// Any other CPU exception at CPL 3 (divide error, alignment check, ...).
    pub const SERVICE_EXCEPTION: u8 = 104;
    /// Unknown system call number or a bad argument to one.
    pub const SERVICE_BAD_SYSCALL: u8 = 105;
    /// The service ran off the end of its stack (page fault in the guard).
    pub const SERVICE_STACK_OVERFLOW: u8 = 106;
    /// A CPU exception in the runtime itself (CPL 0).
    pub const RUNTIME_FAULT: u8 = 110;
    /// The runtime panicked.
    pub const RUNTIME_PANIC: u8 = 111;
    /// The command line is malformed.
    pub const BAD_COMMAND_LINE: u8 = 112;
    /// The partition was given too little memory.
    pub const TOO_LITTLE_MEMORY: u8 = 113;
    /// A device the command line requires (see [`crate::key`]) is absent.
    pub const MISSING_DEVICE: u8 = 114;
    /// The PCI bus looks unlike anything the runtime handles.
    pub const BAD_PCI_LAYOUT: u8 = 115;
    /// The boot loader handed over no usable boot information.
    pub const BAD_BOOT_INFO: u8 = 116;
    /// Double fault (a fault while handling a fault).
    pub const DOUBLE_FAULT: u8 = 117;
    /// A device answered wrongly (e.g. the virtio-blk smoke test failed).
    pub const DEVICE_ERROR: u8 = 118;

    /// A short name for a status, for logs and error messages.
    pub fn describe(v: u8) -> &'static str {
        match v {
            SUCCESS => "success",
            1..=SERVICE_MAX => "service status",
            SERVICE_PANIC => "service panicked",
            SERVICE_PAGE_FAULT => "service page fault",
            SERVICE_GP_FAULT => "service general protection fault",
            SERVICE_INVALID_OPCODE => "service invalid opcode",
            SERVICE_EXCEPTION => "service CPU exception",
            SERVICE_BAD_SYSCALL => "service made a bad system call",
            SERVICE_STACK_OVERFLOW => "service stack overflow",
            RUNTIME_FAULT => "runtime CPU exception",
            RUNTIME_PANIC => "runtime panicked",
            BAD_COMMAND_LINE => "malformed command line",
            TOO_LITTLE_MEMORY => "too little memory",
            MISSING_DEVICE => "missing device",
            BAD_PCI_LAYOUT => "unexpected PCI layout",
            BAD_BOOT_INFO => "no usable boot information",
            DOUBLE_FAULT => "double fault",
            DEVICE_ERROR => "device error",
            _ => "unknown status",
        }
    }
}

/// Turns QEMU's process exit code into the partition's status `v`.
///
/// Returns `None` when the code cannot come from `isa-debug-exit` (even codes:
/// QEMU ended without the guest reporting, e.g. a triple fault or a kill).
pub fn from_qemu_exit_code(code: i32) -> Option<u8> {
    if (1..=255).contains(&code) && code % 2 == 1 {
        Some(((code - 1) / 2) as u8)
    } else {
        None
    }
}

/// System call numbers (in `rax`, entered with `int3` from CPL 3).
pub mod sys {
    /// Write `rsi` bytes of UTF-8 at `rdi` to the console as one log line.
    pub const LOG: u64 = 1;
    /// End the partition with status `rdi` (0..=99).
    pub const EXIT: u64 = 2;
    /// Give up the CPU briefly (lets pending interrupts in); returns 0.
    pub const YIELD: u64 = 3;
    /// Block until a doorbell interrupt or until the TSC reaches `rdi` (`u64::MAX` =
    /// no deadline). Returns the doorbell bits that rang (bit `n` for the `n`-th
    /// doorbell vector), or 0 when the deadline passed. Unlike the others it follows
    /// the C calling convention (the caller-saved registers may change): its entry
    /// and exit save and restore nothing, because every ring-0 instruction is
    /// emulated under `kvm_pvm` (about 1 µs each) and this one is on the wake-up path.
    pub const WAIT: u64 = 4;
    /// Report a panic: message at `rdi`, length `rsi`; ends the partition with
    /// [`crate::exit::SERVICE_PANIC`].
    pub const PANIC: u64 = 5;
    /// The runtime's own CPL-3 prologue hands over its parse of the command
    /// line (`rdi` = pointer to the runtime's `Setup`); accepted once, before
    /// the service's `main`. Not for services.
    pub const SETUP: u64 = 6;
}

/// Command-line keys the runtime consumes (all pairs still reach the service).
pub mod key {
    /// TSC frequency in kHz (u64, decimal). Calibrated against the PIT if absent.
    pub const TSC_KHZ: &str = "tsc_khz";
    /// Physical address of the PCI ECAM window (hex with `0x`, or decimal), for
    /// machines without ACPI MCFG or port 0xCF8. Default: probe 0xCF8, then
    /// 0xe0000000 (`microvm,pcie=on`).
    pub const PCI_ECAM: &str = "pci_ecam";
    /// The number of ivshmem devices the service needs; fewer found ends the
    /// partition with [`crate::exit::MISSING_DEVICE`]. Default 0.
    pub const NEED_SHM: &str = "need_shm";
    /// `1` to require at least one ivshmem-doorbell device (with MSI-X).
    pub const NEED_DOORBELL: &str = "need_doorbell";
    /// `1` to run the virtio-blk smoke test on the first virtio-blk device.
    pub const VIRTIO_BLK_TEST: &str = "virtio_blk_test";
}

/// Most `key=value` pairs the command line may hold.
pub const MAX_ARGS: usize = 32;
/// Longest command line the runtime accepts, in bytes.
pub const MAX_CMDLINE: usize = 2048;
/// Most ivshmem regions the runtime maps.
pub const MAX_SHM: usize = 8;

/// One `ch=` word of the command line: a channel as one partition sees it, written
/// by the launcher (`images/src/guest_args.rs`) and read by the guest's fabric glue
/// (`partitions/fabric`). Its text form is `SLOT:PEER:SIDE:TX:RX`:
///
/// - `SLOT`: PCI slot (device number on bus 0) of the channel's ivshmem-doorbell device.
/// - `PEER`: the peer's world rank.
/// - `SIDE`: `0` if this partition is the lower rank of the pair, else `1`; it is also
///   this partition's ivshmem peer id on the channel's doorbell (the peer has the
///   other, the monitor partition 2).
/// - `TX`: bytes of the ring this partition sends on (0: the manifest grants no right
///   that way).
/// - `RX`: bytes of the ring it receives on (0: the peer has no right to send).
///
/// The rights themselves (may send, non-blocking, tag range) are not on the command
/// line: the monitor partition (or, without one, the launcher) publishes them in the
/// channel's control block (`interconnect::layout::publish`), where the fabric reads
/// them. The peer can write there too, so the fabric grants nothing on a direction
/// whose `TX`/`RX` is 0, whatever the control block says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelArg {
    /// PCI slot.
    pub slot: u8,
    /// The peer's world rank.
    pub peer: u32,
    /// 0 = lower end, 1 = higher end (also the ivshmem peer id).
    pub side: u8,
    /// Bytes of the ring this partition sends on (0: no right to send).
    pub tx: u64,
    /// Bytes of the ring it receives on (0: the peer may not send).
    pub rx: u64,
}

impl ChannelArg {
    /// The channel's ring slots and data-area bytes: [`ring_geometry`] of its two
    /// directions' rings.
    pub fn geometry(&self) -> (u32, u32) {
        match self.side {
            0 => ring_geometry(self.tx, self.rx),
            _ => ring_geometry(self.rx, self.tx),
        }
    }
}

/// Ring slots per direction for rings of 16 KiB and more; smaller rings get one slot
/// per 64 bytes.
pub const RING_SLOTS: u32 = 256;
/// Smallest ring (per direction).
pub const MIN_RING_BYTES: u64 = 4096;
/// Largest ring (per direction).
pub const MAX_RING_BYTES: u64 = 64 << 20;

/// A channel's ring slots and data-area bytes when its directions have rings of
/// `lo_hi` and `hi_lo` bytes (0: not granted): both directions get the larger ring
/// (the format is symmetric). The launcher writes this into the channel's header; a
/// guest computes it from its `ch=` word instead, as the peer can rewrite the header.
pub fn ring_geometry(lo_hi: u64, hi_lo: u64) -> (u32, u32) {
    let ring = lo_hi.max(hi_lo).clamp(MIN_RING_BYTES, MAX_RING_BYTES);
    let slots = u32::try_from(ring / 64)
        .unwrap_or(RING_SLOTS)
        .clamp(2, RING_SLOTS);
    (slots, u32::try_from(ring).unwrap_or(u32::MAX))
}

/// A `ch=` value that does not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadChannelArg;

impl core::fmt::Display for BadChannelArg {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("expected SLOT:PEER:SIDE:TX:RX")
    }
}

impl core::str::FromStr for ChannelArg {
    type Err = BadChannelArg;

    fn from_str(s: &str) -> Result<Self, BadChannelArg> {
        fn num<T: core::str::FromStr>(s: &str) -> Result<T, BadChannelArg> {
            s.parse().map_err(|_| BadChannelArg)
        }
        let mut f = s.split(':');
        let mut next = || f.next().ok_or(BadChannelArg);
        let (slot, peer, side, tx, rx) = (next()?, next()?, next()?, next()?, next()?);
        if f.next().is_some() {
            return Err(BadChannelArg);
        }
        Ok(ChannelArg {
            slot: num(slot)?,
            peer: num(peer)?,
            side: match side {
                "0" => 0,
                "1" => 1,
                _ => return Err(BadChannelArg),
            },
            tx: num(tx)?,
            rx: num(rx)?,
        })
    }
}

impl core::fmt::Display for ChannelArg {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let ChannelArg {
            slot,
            peer,
            side,
            tx,
            rx,
        } = self;
        write!(f, "{slot}:{peer}:{side}:{tx}:{rx}")
    }
}
