//! The channel format: the one place that defines what lies where in a channel region.
//!
//! ```text
//!  offset 0 ┌───────────────────────────────────────────────┐
//!           │ Header  (64 B) magic, version, geometry,      │ written once by the
//!           │                world ranks of side 0 and 1    │ launcher (trusted)
//!       64  ├───────────────────────────────────────────────┤
//!           │ Control (64 B) control word (PENDING/OPEN/    │ owned by the monitor
//!           │                REVOKED), liveness, generation │ and the launcher
//!           │                and send rights of side 0, 1   │
//!      128  ├───────────────────────────────────────────────┤
//!           │ direction 0 (side 0 → side 1), 3 lines:       │
//!           │   Producer line: data_head, malformed         │ written by the sender
//!           │   Consumer line: consumed, data_tail, malformed│ written by the receiver
//!           │   Wake line: rx_waiting, tx_waiting           │ each flag by its waiter
//!      320  ├───────────────────────────────────────────────┤
//!           │ direction 1 (side 1 → side 0), same 3 lines   │
//!      512  ├───────────────────────────────────────────────┤
//!           │ slot line i (i < slots), 64 B each:           │
//!           │   [ slot i of direction 0 | slot i of dir. 1 ]│ 32 B + 32 B
//!           ├───────────────────────────────────────────────┤
//!           │ data area of direction 0 (data_len bytes)     │ byte ring, big messages
//!           │ data area of direction 1 (data_len bytes)     │
//!           └───────────────────────────────────────────────┘
//!
//!  Slot (32 B):  0 seq u32 │ 4 tag u32 │ 8 ctx u32 │ 12 len_kind u32 │ 16 payload [u8; 16]
//!   len_kind = total length (bits 0..30) | kind << 30
//!   kind INLINE: the whole message (len <= 16) in payload
//!   kind FRAG:   payload = Frag { pos u64, chunk u32, offset u32 }: `chunk` bytes of the
//!                message at `offset`, stored in the data area at byte position `pos`
//!   kind ABORT:  the sender gave up on the fragmented message in progress
//! ```
//!
//! Side 0 is the lower world rank. Message `i` of a direction (counting from 0) lives in
//! slot `i mod slots` with `seq = session << 24 | (i + 1) mod 2^24` ([`session`]: both
//! sides' generations, so a reopened channel starts a new one); the first 8-byte word
//! (`seq` and `tag`) is written last, in one store with release ordering;
//! the receiver accepts it only if `seq` is exactly that. Slot `i` of both directions
//! share one cache line: in a request/reply exchange the reply is written into the line
//! the request arrived on, so a round trip moves one line back and forth, like the raw
//! baseline (separate lines per direction measured about twice as slow). That holds
//! while both directions have carried as many messages modulo `slots` (as on a fresh
//! channel); after a one-way stream each hop moves two lines, about 7 ns more here
//! (`ring::Channel::skew`; `Endpoint::align` restores it).
//!
//! The slot sequence numbers are the producer's published message count: the monitor
//! meters them (see [`Meter`]) and a sender that under-reports delivers nothing.
//! The bytes are metered from the slots too (inline length, fragment chunk): the
//! receiver accepts exactly what a slot declares. Data-area positions are monotone byte
//! counters (`pos mod data_len` is the offset); a fragment is contiguous and 64-byte
//! aligned. `data_head` in the producer line is advisory (the sender's own view).
//!
//! A channel is created [`PENDING`]; its publisher (the monitor partition, or the
//! launcher of a system without one) writes each side's send rights into the control
//! block and then opens it ([`publish`]); a side reads its rights once the channel is
//! no longer pending ([`read_rights`]: open, or already revoked). Both sides can write
//! the control block too (ivshmem maps the whole region): a side lying there deceives
//! only the checks at the senders, never the hypervisor mapping or the monitor's
//! meter; so a guest takes a send right only where its trusted command line gives the
//! direction a ring (`partitions/fabric`, `tests/forged.toml`).

use crate::shm::Region;
use crate::{Error, Rank, Rights};
use core::mem::{offset_of, size_of};
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `b"VMPICHN1"` little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"VMPICHN1");
/// Format version.
pub const VERSION: u32 = 1;
/// Cache-line size: every block and slot is one or more lines.
pub const LINE: usize = 64;
/// Largest message carried inline in one slot.
pub const INLINE_MAX: usize = 16;
/// Bytes of one slot (two slots per cache line).
pub const SLOT: usize = 32;
/// Control word: rights not published yet (a zeroed control block).
pub const PENDING: u32 = 0;
/// Control word: channel open.
pub const OPEN: u32 = 1;
/// Control word: channel revoked by the monitor (any value but OPEN reads as revoked).
pub const REVOKED: u32 = 2;
/// Rights flag: the side may send.
pub const MAY_SEND: u32 = 1;
/// Rights flag: the side may send without blocking.
pub const MAY_ISEND: u32 = 2;
/// Liveness word: side alive.
pub const ALIVE: u32 = 1;
/// Liveness word: side dead (set by the launcher or monitor).
pub const DEAD: u32 = 2;
/// Slot kind: whole message inline.
pub const KIND_INLINE: u32 = 1;
/// Slot kind: one fragment in the data area.
pub const KIND_FRAG: u32 = 2;
/// Slot kind: abort the fragmented message in progress.
pub const KIND_ABORT: u32 = 3;

/// Region header (launcher-written, read once by each side at attach).
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`VERSION`].
    pub version: u32,
    /// Slots per direction (power of two).
    pub slots: u32,
    /// Data-area bytes per direction (power of two).
    pub data_len: u32,
    /// Largest message either side accepts.
    pub max_msg: u32,
    /// World ranks of side 0 and side 1.
    pub ranks: [u32; 2],
    /// Reserved, zero.
    pub reserved: [u32; 8],
}

/// Control block (monitor-owned).
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default)]
pub struct Control {
    /// [`OPEN`] or [`REVOKED`].
    pub control: u32,
    /// Liveness of side 0 and 1 ([`ALIVE`] / [`DEAD`]).
    pub alive: [u32; 2],
    /// Generation (incarnation) of side 0 and 1, set at [`reopen`]; an endpoint
    /// attached to an older generation of its peer gets `PeerDead`.
    pub generation: [u32; 2],
    /// Send rights of side 0 and 1: flags ([`MAY_SEND`], [`MAY_ISEND`]), lowest and
    /// highest tag allowed.
    pub rights: [[u32; 3]; 2],
    /// Reserved, zero.
    pub reserved: [u32; 5],
}

/// Producer line of one direction (written by the sender).
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default)]
pub struct ProducerLine {
    /// Bytes ever reserved in the data area (monotone position; advisory).
    pub data_head: u64,
    /// Malformed values the sender saw from the receiver.
    pub malformed: u64,
    /// Reserved.
    pub reserved: [u64; 6],
}

/// Consumer line of one direction (written by the receiver).
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default)]
pub struct ConsumerLine {
    /// Messages consumed (slots freed).
    pub consumed: u64,
    /// Data-area position consumed up to.
    pub data_tail: u64,
    /// Malformed messages the receiver rejected.
    pub malformed: u64,
    /// Reserved.
    pub reserved: [u64; 5],
}

/// Wake line of one direction: "I am about to block, ring me".
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default)]
pub struct WakeLine {
    /// The receiver waits for a message.
    pub rx_waiting: u32,
    /// The sender waits for credit.
    pub tx_waiting: u32,
    /// Reserved.
    pub reserved: [u32; 14],
}

/// One ring slot (half a cache line).
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default)]
pub struct Slot {
    /// (Message index + 1) mod 2^32; written last (release).
    pub seq: u32,
    /// MPI tag.
    pub tag: u32,
    /// Communicator context id.
    pub ctx: u32,
    /// Total message length | kind ([`KIND_INLINE`], [`KIND_FRAG`], [`KIND_ABORT`]) << 30.
    pub len_kind: u32,
    /// Inline bytes, or a [`Frag`].
    pub payload: [u8; INLINE_MAX],
}

/// Fragment descriptor in a FRAG slot's payload.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default)]
pub struct Frag {
    /// Data-area position of the chunk.
    pub pos: u64,
    /// Chunk length.
    pub chunk: u32,
    /// Offset of the chunk within the message.
    pub offset: u32,
}

const _: () = {
    assert!(size_of::<Header>() == LINE && size_of::<Control>() == LINE);
    assert!(size_of::<ProducerLine>() == LINE && size_of::<ConsumerLine>() == LINE);
    assert!(size_of::<WakeLine>() == LINE && size_of::<Slot>() == SLOT);
    assert!(size_of::<Frag>() <= INLINE_MAX);
};

/// Offset of the control word.
pub const CONTROL: usize = LINE + offset_of!(Control, control);
/// Offset of side `s`'s liveness word.
pub const fn alive_off(side: usize) -> usize {
    LINE + offset_of!(Control, alive) + 4 * side
}
/// Offset of side `s`'s generation word.
pub const fn generation_off(side: usize) -> usize {
    LINE + offset_of!(Control, generation) + 4 * side
}
/// Offset of side `s`'s rights: three words at `RIGHTS + 12 * s` (flags
/// [`MAY_SEND`] | [`MAY_ISEND`], lowest tag, highest tag).
pub const RIGHTS: usize = LINE + offset_of!(Control, rights);
const DIRS: usize = 2 * LINE;
const SLOTS: usize = DIRS + 6 * LINE;
/// Offset of a slot's first 8-byte word within the slot: `seq | tag << 32`, written
/// last in one store (publishing the slot).
pub const SEQ: usize = offset_of!(Slot, seq);
const _: () = assert!(SEQ == 0 && offset_of!(Slot, tag) == 4);
/// Offset of a slot's ctx; `len_kind` follows it in the same 8-byte word.
pub const CTX: usize = offset_of!(Slot, ctx);
const _: () = assert!(CTX.is_multiple_of(8) && offset_of!(Slot, len_kind) == CTX + 4);
const _: () = assert!(PAYLOAD.is_multiple_of(8) && offset_of!(Frag, chunk) == 8);
/// Offset of the payload within a slot.
pub const PAYLOAD: usize = offset_of!(Slot, payload);

/// Size of one channel's rings (both directions get the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Slots per direction: a power of two, 2..=65536.
    pub slots: u32,
    /// Data-area bytes per direction: a power of two, 4 KiB..=1 GiB.
    pub data_len: u32,
    /// Largest message accepted: 1..2^30.
    pub max_msg: u32,
}

impl Default for Geometry {
    fn default() -> Self {
        Geometry {
            slots: 256,
            data_len: 512 << 10,
            max_msg: 16 << 20,
        }
    }
}

impl Geometry {
    /// Checks the geometry; the error names the offending value.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what, value: u32| Err(Error::config(what, value));
        if !self.slots.is_power_of_two() || !(2..=65536).contains(&self.slots) {
            return bad("ring slots (power of two, 2..=65536)", self.slots);
        }
        if !self.data_len.is_power_of_two() || !(4096..=1 << 30).contains(&self.data_len) {
            return bad("data area bytes (power of two, 4096..=2^30)", self.data_len);
        }
        if !(1..1 << 30).contains(&self.max_msg) {
            return bad("max message bytes (1..2^30)", self.max_msg);
        }
        Ok(())
    }

    /// [`Geometry::validate`], and `region` is large enough for it.
    pub fn check_fits(&self, region: &Region) -> Result<(), Error> {
        self.validate()?;
        if region.len() < self.region_len() {
            return Err(Error::config("channel region bytes", region.len() as u64));
        }
        Ok(())
    }

    /// Bytes of the whole channel region.
    pub fn region_len(&self) -> usize {
        SLOTS + LINE * self.slots as usize + 2 * self.data_len as usize
    }

    /// Offsets of direction `d` (0: side 0 → side 1).
    pub fn dir(&self, d: usize) -> Dir {
        let lines = DIRS + 3 * LINE * d;
        Dir {
            prod: lines,
            cons: lines + LINE,
            wake: lines + 2 * LINE,
            slots: SLOTS + SLOT * d,
            data: SLOTS + LINE * self.slots as usize + d * self.data_len as usize,
        }
    }
}

/// Offsets of one direction's blocks within the region.
#[derive(Clone, Copy, Debug)]
pub struct Dir {
    /// Producer line.
    pub prod: usize,
    /// Consumer line.
    pub cons: usize,
    /// Wake line.
    pub wake: usize,
    /// This direction's slot 0 (slot `i` is at `slots + 64 * i`).
    pub slots: usize,
    /// Data area.
    pub data: usize,
}

impl Dir {
    /// `data_head` in the producer line.
    pub fn data_head(&self) -> usize {
        self.prod + offset_of!(ProducerLine, data_head)
    }
    /// Sender's malformed counter.
    pub fn tx_malformed(&self) -> usize {
        self.prod + offset_of!(ProducerLine, malformed)
    }
    /// `consumed` in the consumer line.
    pub fn consumed(&self) -> usize {
        self.cons + offset_of!(ConsumerLine, consumed)
    }
    /// `data_tail` in the consumer line.
    pub fn data_tail(&self) -> usize {
        self.cons + offset_of!(ConsumerLine, data_tail)
    }
    /// Receiver's malformed counter.
    pub fn rx_malformed(&self) -> usize {
        self.cons + offset_of!(ConsumerLine, malformed)
    }
    /// Receiver's waiting flag.
    pub fn rx_waiting(&self) -> usize {
        self.wake + offset_of!(WakeLine, rx_waiting)
    }
    /// Sender's waiting flag.
    pub fn tx_waiting(&self) -> usize {
        self.wake + offset_of!(WakeLine, tx_waiting)
    }
}

/// Initialises a channel region open with every right, as generation 0 (host
/// transports and tests: their endpoints take their rights from the `Config`). `ranks`
/// are the world ranks of side 0 and side 1 (side 0 must be the lower).
pub fn init(region: &Region, g: Geometry, ranks: [Rank; 2]) -> Result<(), Error> {
    reopen(region, g, ranks, [0; 2]).map(|()| publish(region, [Rights::default(); 2]))
}

/// Launcher or monitor: (re-)initialises a channel region for the given generations of
/// its sides: zeroes it, writes the header, marks both sides alive and leaves it
/// [`PENDING`] until [`publish`] (a restarted partition's side gets its new generation;
/// the surviving peer's endpoint then gets `PeerDead` until it re-attaches).
pub fn reopen(region: &Region, g: Geometry, ranks: [Rank; 2], gens: [u32; 2]) -> Result<(), Error> {
    g.validate()?;
    if ranks[0] >= ranks[1] {
        return Err(Error::config(
            "channel side 0 rank (must be < side 1)",
            ranks[0],
        ));
    }
    if region.len() < g.region_len() {
        return Err(Error::config("channel region bytes", region.len() as u64));
    }
    // Everything but the data areas (only read after the sender wrote them).
    let zero = [0u8; 4096];
    let end = g.dir(0).data;
    let mut off = 0;
    while off < end {
        let n = zero.len().min(end - off);
        region.write(off, &zero[..n]);
        off += n;
    }
    let h = Header {
        magic: MAGIC,
        version: VERSION,
        slots: g.slots,
        data_len: g.data_len,
        max_msg: g.max_msg,
        ranks,
        reserved: [0; 8],
    };
    region.write(0, h.as_bytes());
    region.store32(alive_off(0), ALIVE, Relaxed);
    region.store32(alive_off(1), ALIVE, Relaxed);
    region.store32(generation_off(0), gens[0], Relaxed);
    region.store32(generation_off(1), gens[1], Relaxed);
    Ok(())
}

/// Publisher (the monitor, or the launcher of a system without one): writes each side's
/// send rights (`recv` is not stored: a side may receive what its peer may send), then
/// opens the channel (release: a side that sees it open sees the rights).
pub fn publish(region: &Region, rights: [Rights; 2]) {
    for (s, r) in rights.iter().enumerate() {
        let f = (u32::from(r.send) * MAY_SEND) | (u32::from(r.nonblocking) * MAY_ISEND);
        // Three words a side: `Control::rights`.
        region.write(RIGHTS + 12 * s, [f, r.tags.0, r.tags.1].as_bytes());
    }
    region.store32(CONTROL, OPEN, Release);
}

/// Side `side`'s rights as published (`None` while [`PENDING`]; a revoked channel keeps
/// them, its calls fail with `Revoked`): its own send rights, and `recv` if its peer
/// may send.
pub fn read_rights(region: &Region, side: usize) -> Option<Rights> {
    if region.load32(CONTROL, Acquire) == PENDING {
        return None;
    }
    let mut w = [[0u32; 3]; 2];
    region.read(RIGHTS, w.as_mut_bytes());
    let ([f, lo, hi], peer) = (w[side & 1], w[1 - (side & 1)][0]);
    Some(Rights {
        send: f & MAY_SEND != 0,
        recv: peer & MAY_SEND != 0,
        tags: (lo, hi),
        nonblocking: f & MAY_ISEND != 0,
    })
}

/// Reads and checks the header: the geometry and ranks a side will use from then on
/// (never re-read: the peer could change it).
pub fn read_header(region: &Region) -> Result<(Geometry, [Rank; 2]), Error> {
    let mut b = [0u8; LINE];
    if region.len() < LINE {
        return Err(Error::config("channel region bytes", region.len() as u64));
    }
    region.read(0, &mut b);
    let h = Header::read_from_bytes(&b).map_err(|_| Error::config("header", 0))?;
    if h.magic != MAGIC {
        return Err(Error::config(
            "channel magic",
            alloc::format!("{:#x}", h.magic),
        ));
    }
    if h.version != VERSION {
        return Err(Error::config("channel version", h.version));
    }
    let g = Geometry {
        slots: h.slots,
        data_len: h.data_len,
        max_msg: h.max_msg,
    };
    g.check_fits(region)?;
    Ok((g, h.ranks))
}

/// Monitor: revokes a channel (both sides then get `Revoked`).
pub fn revoke(region: &Region) {
    region.store32(CONTROL, REVOKED, SeqCst);
}

/// The channel's session: the sum of its sides' generations, mod 256, so it changes at
/// every [`reopen`] that gives a side a new generation. It is the top byte of every
/// slot's sequence word ([`seq_word`]): a side still attached to an earlier session
/// (it passed its liveness check just before the reopen) never has a slot accepted by
/// the new session, nor accepts one of it.
pub fn session(region: &Region) -> u32 {
    let g = |s| region.load32(generation_off(s), Acquire);
    g(0).wrapping_add(g(1)) & 0xff
}

/// The sequence word of the `n`-th message (from 1) of a direction in session `s`.
pub const fn seq_word(s: u32, n: u64) -> u32 {
    s << 24 | (n as u32 & 0x00ff_ffff)
}

/// Launcher/monitor: marks side `side` (0 or 1) dead; its peer then gets `PeerDead`.
pub fn mark_dead(region: &Region, side: usize) {
    region.store32(alive_off(side & 1), DEAD, SeqCst);
}

/// What the monitor reads about one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Messages the sender published (from the slot sequence numbers).
    pub messages: u64,
    /// Message bytes the sender published (inline lengths and fragment chunks, summed
    /// over the slots the meter saw; slots overwritten before a read are not counted).
    pub data_bytes: u64,
    /// Malformed messages the receiver rejected.
    pub rx_malformed: u64,
    /// Malformed credit values the sender saw.
    pub tx_malformed: u64,
}

/// The monitor's meter of one channel: follows the slot sequence numbers.
#[derive(Clone, Debug, Default)]
pub struct Meter {
    last: [u64; 2],
    bytes: [u64; 2],
}

impl Meter {
    /// Reads both directions' counters (bounded work: at most `slots` reads each).
    pub fn read(&mut self, region: &Region, g: &Geometry) -> [Counts; 2] {
        let mut out = [Counts::default(); 2];
        let session = session(region);
        for (d, c) in out.iter_mut().enumerate() {
            let dir = g.dir(d);
            let mask = u64::from(g.slots) - 1;
            // The receiver's count (messages it accepted) is a lower bound when it is
            // plausible; either side may be hostile, so no arithmetic here can overflow.
            let mut n = self.last[d];
            let k = region.load64(dir.consumed(), Acquire);
            if k > n && k - n < 1 << 32 {
                n = k;
            }
            for _ in 0..g.slots {
                let off = dir.slots + LINE * (n & mask) as usize;
                if region.load64(off + SEQ, Acquire) as u32 != seq_word(session, n.wrapping_add(1))
                {
                    break;
                }
                let len_kind = (region.load64(off + CTX, Relaxed) >> 32) as u32;
                let b = match len_kind >> 30 {
                    KIND_INLINE => (len_kind & ((1 << 30) - 1)).min(INLINE_MAX as u32),
                    KIND_FRAG => region.load32(off + PAYLOAD + 8, Relaxed),
                    _ => 0,
                };
                self.bytes[d] = self.bytes[d].saturating_add(b.into());
                n = n.saturating_add(1);
            }
            self.last[d] = n;
            c.messages = n;
            c.data_bytes = self.bytes[d];
            c.rx_malformed = region.load64(dir.rx_malformed(), Relaxed);
            c.tx_malformed = region.load64(dir.tx_malformed(), Relaxed);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ANY_TAG;

    #[test]
    fn blocks_are_aligned_disjoint_and_inside_the_region() {
        for g in [
            Geometry::default(),
            Geometry {
                slots: 2,
                data_len: 4096,
                max_msg: 1,
            },
        ] {
            let (d0, d1) = (g.dir(0), g.dir(1));
            let mut blocks = [
                (0, LINE),
                (LINE, LINE),
                (d0.prod, LINE),
                (d0.cons, LINE),
                (d0.wake, LINE),
                (d1.prod, LINE),
                (d1.cons, LINE),
                (d1.wake, LINE),
                (SLOTS, LINE * g.slots as usize),
                (d0.data, g.data_len as usize),
                (d1.data, g.data_len as usize),
            ];
            blocks.sort();
            for w in blocks.windows(2) {
                assert_eq!(w[0].0 + w[0].1, w[1].0, "blocks tile the region");
            }
            assert!(blocks.iter().all(|b| b.0 % LINE == 0));
            let last = blocks[blocks.len() - 1];
            assert_eq!(last.0 + last.1, g.region_len());
            // Slot i of direction 1 is the second half of slot i's line.
            assert_eq!(d1.slots, d0.slots + SLOT);
        }
    }

    #[test]
    fn rights_are_read_only_once_published() {
        let g = Geometry::default();
        let r = Region::heap(g.region_len());
        reopen(&r, g, [3, 5], [0; 2]).unwrap();
        assert_eq!(r.load32(CONTROL, Relaxed), PENDING);
        assert_eq!(read_rights(&r, 0), None, "pending");
        let lo = Rights {
            send: true,
            recv: true,
            tags: (7, 9),
            nonblocking: false,
        };
        let hi = Rights {
            send: false,
            nonblocking: true,
            ..Rights::default()
        };
        publish(&r, [lo, hi]);
        // Side 0 receives nothing (side 1 may not send); side 1 receives from side 0.
        assert_eq!(read_rights(&r, 0), Some(Rights { recv: false, ..lo }));
        assert_eq!(read_rights(&r, 1), Some(Rights { recv: true, ..hi }));
        let mut c = [0u8; LINE];
        r.read(LINE, &mut c);
        let c = Control::read_from_bytes(&c).unwrap();
        assert_eq!(c.rights, [[MAY_SEND, 7, 9], [MAY_ISEND, 0, ANY_TAG - 1]]);
        revoke(&r);
        assert_eq!(
            read_rights(&r, 1),
            Some(Rights { recv: true, ..hi }),
            "kept"
        );
        // Re-initialised for a new generation: pending again until published.
        reopen(&r, g, [3, 5], [0, 1]).unwrap();
        assert_eq!(read_rights(&r, 1), None);
    }

    #[test]
    fn geometry_errors_name_the_value() {
        let g = Geometry {
            slots: 0,
            ..Geometry::default()
        };
        assert_eq!(
            g.validate(),
            Err(Error::config("ring slots (power of two, 2..=65536)", 0))
        );
        let g = Geometry {
            max_msg: 0,
            ..Geometry::default()
        };
        assert!(matches!(g.validate(), Err(Error::InvalidConfig { value, .. }) if value == "0"));
    }
}
