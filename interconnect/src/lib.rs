//! vmpi's interconnect: MPI-style message passing over shared-memory rings.
//!
//! A *channel* is one shared-memory region joining two ranks: one single-producer,
//! single-consumer ring of cache-line slots per direction, a data area per direction
//! for messages above 16 bytes, a control word the monitor owns (open / revoked),
//! liveness words, and counters the monitor meters. The format is defined once, in
//! [`layout`] (with a diagram); the protocol is in [`ring`]; every `unsafe` that touches
//! shared memory is in [`shm`].
//!
//! On top, [`Endpoint`] is one rank's MPI-style interface: communicators ([`Comm`]:
//! world, one per configured group, [`Endpoint::split`]), tags with [`ANY_SOURCE`] /
//! [`ANY_TAG`], `send`/`recv`/`isend`/`irecv`/`wait`/`test`/`waitall`/`sendrecv`/
//! `probe`/`iprobe`/`cancel`, and simple linear collectives. Every blocking call takes a
//! [`Deadline`]; errors are [`Error`] values with context and a stable `u32` code.
//!
//! # Quick start (threads in one process, `std` feature)
//! ```
//! # #[cfg(feature = "std")] {
//! use interconnect::{host, Config, Deadline};
//! let mut eps = host::threads(&Config::new(2)).unwrap();
//! let mut b = eps.pop().unwrap();
//! let mut a = eps.pop().unwrap();
//! let t = std::thread::spawn(move || {
//!     let w = b.world();
//!     let mut buf = [0u8; 8];
//!     let st = b.recv(&w, 0, 7, &mut buf, b.after_ms(5_000)).unwrap();
//!     assert_eq!((st.source, st.tag, st.len, &buf), (0, 7, 5, b"hello\0\0\0"));
//! });
//! let w = a.world();
//! a.send(&w, 1, 7, b"hello", Deadline::NEVER).unwrap();
//! t.join().unwrap();
//! # }
//! ```
//!
//! # API at a glance
//! - Build: [`Config`] (size, [`layout::Geometry`], channel pairs, [`Rights`], named
//!   groups) → endpoints via a transport (below). [`Endpoint::rank`], [`Endpoint::size`].
//! - Communicators: [`Endpoint::world`], [`Endpoint::group`] (configured groups),
//!   [`Endpoint::split`] (colour/key, collective). A [`Comm`] is a cheap clone.
//! - Point to point (ranks are communicator ranks): [`Endpoint::send`] /
//!   [`Endpoint::recv`] (blocking, with a [`Deadline`]; [`Deadline::NOW`] = try once),
//!   [`Endpoint::isend`] / [`Endpoint::irecv`] → [`Request`], then [`Endpoint::wait`],
//!   [`Endpoint::test`], [`Endpoint::waitall`], [`Endpoint::cancel`];
//!   [`Endpoint::sendrecv`], [`Endpoint::probe`], [`Endpoint::iprobe`]. Messages are
//!   non-overtaking per (source, tag, communicator). [`Endpoint::align`] puts a channel
//!   back in step after one-way traffic, so that a request and its reply share a line.
//! - Collectives (linear, through the root): [`Endpoint::barrier`], [`Endpoint::bcast`],
//!   [`Endpoint::gather`], [`Endpoint::scatter`], [`Endpoint::reduce`],
//!   [`Endpoint::allreduce`] ([`Op`] on `u64`).
//! - Monitor hooks on a channel region: [`layout::Meter`] (messages, data bytes,
//!   malformed counters), [`layout::revoke`], [`layout::mark_dead`], [`layout::publish`],
//!   [`layout::reopen`] (a new generation of a side: its peer gets `PeerDead` until
//!   [`Endpoint::reattach`]).
//! - Low level: [`ring::Channel`] = [`ring::Tx`] + [`ring::Rx`] over a [`shm::Region`],
//!   non-blocking, no matching (what the loom test and a raw benchmark use).
//!
//! Sizes: messages of up to 16 bytes travel inline in one 32-byte slot (one cache line
//! crossing); larger ones go through the data area in chunks of at most
//! `min(data_len / 4, 64 KiB)`, streamed while the receiver copies earlier chunks out,
//! up to `max_msg` (default 16 MiB); a whole one of 4 KiB or more reuses the last one's
//! lines once they were consumed. A non-blocking send is all or nothing.
//!
//! # Transports
//! - **Raw memory** (any target, the guest): the launcher calls [`layout::reopen`] on
//!   each channel region and the monitor (or the launcher) [`layout::publish`]es its
//!   rights; each side wraps it with [`shm::Region::from_raw`], waits for
//!   [`layout::read_rights`], [`ring::Channel::attach`]es it, and hands its channels to
//!   [`Endpoint::new`] with a [`Platform`] (clock + doorbells).
//! - **Threads** (`std`): [`host::threads`] builds every endpoint of a world over heap
//!   regions; move each endpoint into its thread.
//! - **Host processes** (`std`): the launcher calls [`host::ShmWorld::create`]`(prefix,
//!   &cfg)` (one file per channel, `/dev/shm/{prefix}-{a}-{b}`, plus
//!   `{prefix}-bells` for futex doorbells; removed when the value is dropped); each
//!   process calls [`host::ShmWorld::attach`]`(prefix, &cfg, rank)` with the same
//!   config. The channel files are what a VM maps through ivshmem.
//!   [`host::deadline_ms`] gives deadlines on the host clock.
//!
//! # Fuzzing
//! [`fuzzing::rx_over_bytes`] runs the complete receive path (ring validation, matching,
//! unexpected queue, posted receives) over an arbitrary byte buffer posing as the
//! peer-written half of a channel region ([`fuzzing::GEOMETRY`]). It must never panic
//! or hang, whatever the bytes.
//!
//! # Assumptions
//! - The launcher (trusted) initialises each channel region with [`layout::reopen`]
//!   and it is published ([`layout::publish`]) before either side attaches; each side attaches once. The header is read once at
//!   attach and never trusted again; everything else a peer can write is validated on
//!   every read.
//! - Shared memory is accessed only through atomics, volatile copies and (copies of
//!   512 bytes and more, x86-64) `rep movsb` in inline assembly, which the compiler
//!   cannot see into either. A hostile peer racing with those reads yields garbage
//!   bytes in *its own* messages, not undefined behaviour in practice (the stance of
//!   `vm-memory`); honest peers never race (release/acquire on the slot sequence word).
//! - Wake-ups: a waiter spins [`Platform::spin_ns`], then sets a wake flag in the
//!   channel, re-polls and blocks; a sender reads the flag after a full barrier (the
//!   `xchg` that publishes the slot). On the credit path the receiver only pays that
//!   barrier when the sender can be blocked (ring full, or a fragment freed in the
//!   middle of a message); a sleeping waiter re-checks at least every 20 ms, so a lost
//!   wake-up (not expected, but not model-checked) costs time, never a hang.
//! - Polling reads one word of the next slot per iteration (a second read per poll
//!   measurably slowed cross-core hand-over: the poller steals the line back).
//! - Every loop over peer-controlled data is bounded (slots per call, 4096 messages per
//!   progress step, `slots` steps per meter read).
//! - An endpoint is used by one thread at a time (`&mut self`); it is `Send`.
//! - The platform clock is monotonic, in nanoseconds; [`Deadline`]s are absolute
//!   values of that clock.
//! - x86-64 cache lines are 64 bytes; both sides of a channel share endianness
//!   (little-endian).
//! - Collectives are linear through the root, travel on a context of their own, go
//!   through the same rights checks as user sends, and trust the members' inputs.
//! - A receive that fails after it matched a message (deadline, cancel) consumes that
//!   message: the rest of it is dropped.
//!
//! # Tests
//! `cargo test -p interconnect` (unit, API, corruption of every peer-written field,
//! proptest properties, ranks as separate processes over `/dev/shm`);
//! `interconnect/loom.sh` model-checks the ring's memory ordering with loom
//! (`--cfg loom`, its own target directory).
#![no_std]
#![deny(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod coll;
#[cfg(all(feature = "std", not(loom)))]
pub mod host;
pub mod layout;
mod mpi;
pub mod ring;
pub mod shm;

pub use coll::Op;
pub use mpi::{
    ANY_SOURCE, ANY_TAG, Comm, Completion, Config, Endpoint, Request, Rights, Status, UNDEFINED,
};

use alloc::string::String;

/// A rank (index in the world or in a communicator).
pub type Rank = u32;

/// An absolute point in time of the [`Platform`] clock, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(pub u64);

impl Deadline {
    /// Never time out.
    pub const NEVER: Deadline = Deadline(u64::MAX);
    /// Do not wait at all: try once (a non-blocking call).
    pub const NOW: Deadline = Deadline(0);
}

/// What the fabric needs from its environment: a clock and doorbells.
///
/// Host: `Instant` and futexes ([`host::HostPlatform`]). Guest: rdtsc with a handed-in
/// frequency, and the runtime's "block until doorbell or deadline" call.
pub trait Platform {
    /// Monotonic time in nanoseconds.
    fn now(&self) -> u64;
    /// This rank's doorbell counter (changes whenever someone rings it).
    fn bell(&self) -> u32;
    /// Blocks until [`Platform::bell`] differs from `seen` or the clock passes `until`;
    /// may return early.
    fn wait(&self, seen: u32, until: u64);
    /// Rings the doorbell of world rank `peer`.
    fn ring(&self, peer: Rank);
    /// How long to spin before blocking, in nanoseconds.
    fn spin_ns(&self) -> u64 {
        50_000
    }
}

/// Errors. [`Error::code`] gives the stable number used across the guest boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Error {
    /// No right to do this: a rank outside the communicator, a pair without a channel,
    /// a direction, tag or non-blocking send the rights do not allow.
    PermissionDenied {
        /// The rank asked for (in the communicator used).
        rank: Rank,
        /// The tag asked for.
        tag: u32,
    } = 1,
    /// The deadline passed.
    Timeout {
        /// The peer waited for ([`ANY_SOURCE`] if several).
        rank: Rank,
    } = 2,
    /// No credit (ring or data area full) and the call may not wait.
    WouldBlock {
        /// The peer (world rank).
        rank: Rank,
    } = 3,
    /// The peer was marked dead.
    PeerDead {
        /// The peer (world rank).
        rank: Rank,
    } = 4,
    /// The monitor revoked the channel.
    Revoked {
        /// The peer (world rank).
        rank: Rank,
    } = 5,
    /// The message was longer than the receive buffer (the buffer holds its start).
    Truncated {
        /// Source (in the communicator used).
        rank: Rank,
        /// Tag.
        tag: u32,
        /// Message length.
        len: usize,
        /// Buffer capacity.
        capacity: usize,
    } = 6,
    /// The peer wrote something invalid into shared memory; the channel is now broken.
    Malformed {
        /// The peer (world rank).
        rank: Rank,
        /// Which field.
        what: &'static str,
        /// The value read.
        value: u64,
    } = 7,
    /// The call was cancelled (locally, or the sender aborted the message).
    Cancelled {
        /// The peer (world rank), or [`ANY_SOURCE`].
        rank: Rank,
        /// Tag.
        tag: u32,
    } = 8,
    /// Bad configuration: names the offending setting and value.
    InvalidConfig {
        /// Which setting.
        what: &'static str,
        /// The offending value.
        value: String,
    } = 9,
    /// Bad argument to a call.
    InvalidArgument {
        /// Which argument.
        what: &'static str,
        /// The offending value.
        value: u64,
    } = 10,
}

impl Error {
    /// Stable numeric code (1..=10), as in the `#[repr(u32)]` discriminants.
    pub fn code(&self) -> u32 {
        match self {
            Error::PermissionDenied { .. } => 1,
            Error::Timeout { .. } => 2,
            Error::WouldBlock { .. } => 3,
            Error::PeerDead { .. } => 4,
            Error::Revoked { .. } => 5,
            Error::Truncated { .. } => 6,
            Error::Malformed { .. } => 7,
            Error::Cancelled { .. } => 8,
            Error::InvalidConfig { .. } => 9,
            Error::InvalidArgument { .. } => 10,
        }
    }

    pub(crate) fn malformed(rank: Rank, what: &'static str, value: u64) -> Error {
        Error::Malformed { rank, what, value }
    }

    pub(crate) fn arg(what: &'static str, value: u64) -> Error {
        Error::InvalidArgument { what, value }
    }

    pub(crate) fn config(what: &'static str, value: impl core::fmt::Display) -> Error {
        Error::InvalidConfig {
            what,
            value: alloc::format!("{value}"),
        }
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::PermissionDenied { rank, tag } => {
                write!(f, "permission denied: rank {rank}, tag {tag}")
            }
            Error::Timeout { rank } => write!(f, "timed out waiting for rank {rank}"),
            Error::WouldBlock { rank } => write!(f, "no credit towards rank {rank}"),
            Error::PeerDead { rank } => write!(f, "rank {rank} is dead"),
            Error::Revoked { rank } => write!(f, "channel to rank {rank} revoked"),
            Error::Truncated {
                rank,
                tag,
                len,
                capacity,
            } => {
                write!(
                    f,
                    "message from rank {rank} tag {tag}: {len} bytes, buffer {capacity}"
                )
            }
            Error::Malformed { rank, what, value } => {
                write!(f, "malformed {what} ({value:#x}) from rank {rank}")
            }
            Error::Cancelled { rank, tag } => write!(f, "cancelled (rank {rank}, tag {tag})"),
            Error::InvalidConfig { what, value } => write!(f, "invalid {what}: {value}"),
            Error::InvalidArgument { what, value } => write!(f, "invalid {what}: {value}"),
        }
    }
}

impl core::error::Error for Error {}

/// Fuzzing entry points (test support: the fuzz crate and `tests/props.rs` enable the
/// `fuzzing` feature). Everything here uses the public API only.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    use crate::layout::{self, Geometry};
    use crate::ring::Channel;
    use crate::shm::Region;
    use crate::{ANY_SOURCE, ANY_TAG, Config, Endpoint, Error};
    use alloc::vec;

    /// A platform for fuzzing: a clock that jumps 1 ms per reading (so every deadline
    /// passes quickly), no doorbells, no spinning.
    #[derive(Default)]
    pub struct FuzzPlatform(core::cell::Cell<u64>);

    impl crate::Platform for FuzzPlatform {
        fn now(&self) -> u64 {
            self.0.set(self.0.get() + 1_000_000);
            self.0.get()
        }
        fn bell(&self) -> u32 {
            0
        }
        fn wait(&self, _: u32, _: u64) {}
        fn ring(&self, _: crate::Rank) {}
        fn spin_ns(&self) -> u64 {
            0
        }
    }

    /// Geometry used by [`rx_over_bytes`]: small, so the fuzzer reaches wrap-around.
    pub const GEOMETRY: Geometry = Geometry {
        slots: 8,
        data_len: 4096,
        max_msg: 1 << 16,
    };

    /// Builds a valid channel between ranks 0 and 1, overwrites direction 0 (rank 0 →
    /// rank 1: producer line, slots, data area) with `bytes` (repeated/truncated), then
    /// lets rank 1 receive until the ring is empty or an error. Returns the number of
    /// messages received. Must never panic or loop forever, whatever `bytes` holds.
    pub fn rx_over_bytes(bytes: &[u8]) -> usize {
        let g = GEOMETRY;
        let r = Region::heap(g.region_len());
        layout::init(&r, g, [0, 1]).expect("valid geometry");
        let d = g.dir(0);
        if !bytes.is_empty() {
            let mut off = d.prod;
            let end = d.data + g.data_len as usize;
            while off < end {
                let n = bytes.len().min(end - off);
                r.write(off, &bytes[..n]);
                off += n;
            }
            // The consumer line belongs to the receiver: restore it.
            r.write(d.cons, &[0u8; layout::LINE]);
        }
        receive(r)
    }

    /// Receives on rank 1 of a 2-rank world over `region` until empty or error.
    fn receive(region: Region) -> usize {
        let Ok(ch) = Channel::attach(region, 1, 0) else {
            return 0;
        };
        let cfg = Config::new(2);
        let Ok(mut ep) = Endpoint::new(&cfg, 1, vec![(0, ch)], FuzzPlatform::default()) else {
            return 0;
        };
        let world = ep.world();
        let mut buf = vec![0u8; 4096];
        let mut n = 0;
        let r = ep.irecv(&world, 0, 5, 100);
        for _ in 0..64 {
            let dl = ep.after_ms(5);
            match ep.recv(&world, ANY_SOURCE, ANY_TAG, &mut buf, dl) {
                Ok(_) | Err(Error::Truncated { .. }) | Err(Error::Cancelled { .. }) => n += 1,
                Err(_) => break,
            }
        }
        if let Ok(r) = r {
            let _ = ep.test(&r);
        }
        n
    }
}
