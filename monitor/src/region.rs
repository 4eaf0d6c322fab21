//! The layout of the control region between the launcher and the monitor partition,
//! defined once for both sides (the launcher's `images/src/control_region.rs` and the
//! monitor partition's `partitions/monitor`).
//!
//! One `/dev/shm/vmpi-PID-control` file, mapped by the launcher (host) and, as an
//! `ivshmem-plain` device, by the monitor partition. Neither side ever blocks on the
//! other: each polls the other's queue head.
//!
//! ```text
//! offset  0      magic u64 "VMPICTL1"      written once by the launcher
//!         8      table_len u32              length of the rights table at TABLE
//!        64      m2l head u64               records the monitor published
//!       128      m2l tail u64               records the launcher consumed
//!       192      l2m head u64               records the launcher published
//!       256      l2m tail u64               records the monitor consumed
//!       320      ready u64                  the monitor's clock (ns) once it runs
//!      4096      TABLE: RightsTable::encode(), at most 60 KiB
//!     65536      m2l slots: QUEUE x 64 B = control record (32 B) | monitor ns u64 | 0
//!     81920      l2m slots: QUEUE x 64 B = control record (32 B) | 0
//! ```
//!
//! Record `i` of a queue lives in slot `i mod QUEUE` ([`slot`]); the writer fills the
//! slot, then publishes `head = i + 1` (release); the reader reads slots below `head`,
//! then publishes `tail`. A writer finding `head - tail == QUEUE` keeps its records for
//! later. Monitor → launcher records are [`crate::control::Command`]s; launcher →
//! monitor records are [`crate::control::LauncherEvent`]s; both decoded strictly.

/// Size of the control file (one 2 MiB page in the guest).
pub const BYTES: u64 = 2 << 20;
/// First word: "VMPICTL1".
pub const MAGIC: u64 = u64::from_le_bytes(*b"VMPICTL1");
/// Offset of the rights table length.
pub const TABLE_LEN: usize = 8;
/// Offset of the monitor → launcher head.
pub const M2L_HEAD: usize = 64;
/// Offset of the monitor → launcher tail.
pub const M2L_TAIL: usize = 128;
/// Offset of the launcher → monitor head.
pub const L2M_HEAD: usize = 192;
/// Offset of the launcher → monitor tail.
pub const L2M_TAIL: usize = 256;
/// Offset of the monitor's ready word (its clock when it started polling).
pub const READY: usize = 320;
/// Offset of the rights table.
pub const TABLE: usize = 4096;
/// Largest rights table.
pub const TABLE_MAX: usize = 60 << 10;
/// Offset of the monitor → launcher slots.
pub const M2L_SLOTS: usize = 65536;
/// Offset of the launcher → monitor slots.
pub const L2M_SLOTS: usize = 81920;
/// Records per queue.
pub const QUEUE: u64 = 256;
/// Bytes per slot.
pub const SLOT: usize = 64;

/// Offset of record `i`'s slot in the queue whose slots start at `slots`.
pub const fn slot(slots: usize, i: u64) -> usize {
    slots + SLOT * (i % QUEUE) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::CONTROL_LEN;

    #[test]
    fn blocks_do_not_overlap_and_fit() {
        let words = [TABLE_LEN, M2L_HEAD, M2L_TAIL, L2M_HEAD, L2M_TAIL, READY];
        assert!(words.windows(2).all(|w| w[0] < w[1]) && READY + 8 <= TABLE);
        const { assert!(TABLE + TABLE_MAX <= M2L_SLOTS) };
        assert_eq!(slot(M2L_SLOTS, QUEUE), M2L_SLOTS, "slots wrap");
        assert!(slot(M2L_SLOTS, QUEUE - 1) + SLOT <= L2M_SLOTS);
        assert!(slot(L2M_SLOTS, QUEUE - 1) + SLOT <= BYTES as usize);
        // A monitor → launcher slot holds a record and the monitor's clock.
        const { assert!(CONTROL_LEN + 8 <= SLOT) };
    }
}
