//! The control region between the launcher and the monitor partition: one
//! `/dev/shm/vmpi-PID-control` file, mapped by the launcher (host) and, as an
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
//!      4096      TABLE: monitor::RightsTable::encode(), at most 60 KiB
//!     65536      m2l slots: QUEUE x 64 B = control record (32 B) | monitor ns u64 | 0
//!     81920      l2m slots: QUEUE x 64 B = control record (32 B) | 0
//! ```
//!
//! Record `i` of a queue lives in slot `i mod QUEUE`; the writer fills the slot, then
//! publishes `head = i + 1` (release); the reader reads slots below `head`, then
//! publishes `tail`. A writer finding `head - tail == QUEUE` keeps its records for
//! later. Monitor → launcher records are [`monitor::control::Command`]s; launcher →
//! monitor records are [`monitor::control::LauncherEvent`]s; both decoded strictly.
//! The partition side is `partitions/monitor/src/main.rs` (module `region`), which
//! mirrors these constants.
//!
//! # Assumptions
//! - The monitor partition is not trusted with the launcher's memory: the launcher
//!   reads at most [`QUEUE`] records per poll, refuses a head that runs ahead of its
//!   tail by more than [`QUEUE`] (the monitor is then treated as broken) and decodes
//!   every record strictly.

use std::sync::atomic::Ordering::{Acquire, Release};

use interconnect::shm::Region;
use monitor::control::{CONTROL_LEN, Command, LauncherEvent};

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

/// The launcher's side of the control region.
pub struct ControlRegion {
    region: Region,
    m2l_tail: u64,
    l2m_head: u64,
}

/// A command read from the monitor, with the monitor's clock when it wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The command.
    pub command: Command,
    /// The monitor's clock (ns since its boot TSC epoch) when it published it.
    pub monitor_ns: u64,
}

/// What the launcher made of the monitor's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Garbage {
    /// The head ran ahead of the tail by more than [`QUEUE`].
    Head(u64),
    /// A record that does not decode as a command.
    Record(String),
}

impl ControlRegion {
    /// Initialises a fresh (zeroed) region: magic and the rights table.
    pub fn init(region: Region, table: &[u8]) -> std::io::Result<Self> {
        if table.len() > TABLE_MAX || region.len() < BYTES as usize {
            return Err(std::io::Error::other(format!(
                "control region: a rights table of {} bytes does not fit",
                table.len()
            )));
        }
        region.write(TABLE, table);
        region.store64(TABLE_LEN, table.len() as u64, Release);
        region.store64(0, MAGIC, Release);
        Ok(Self {
            region,
            m2l_tail: 0,
            l2m_head: 0,
        })
    }

    /// Whether the monitor said it is running (its ready word).
    pub fn monitor_ready(&self) -> Option<u64> {
        Some(self.region.load64(READY, Acquire)).filter(|&t| t != 0)
    }

    /// Takes every command the monitor published since the last call (at most
    /// [`QUEUE`]); garbage is reported and skipped, never acted upon.
    pub fn poll(&mut self) -> Vec<Result<Received, Garbage>> {
        let head = self.region.load64(M2L_HEAD, Acquire);
        let mut out = Vec::new();
        if head < self.m2l_tail || head - self.m2l_tail > QUEUE {
            // Resynchronise so that one bad head is reported once.
            out.push(Err(Garbage::Head(head)));
            self.m2l_tail = head;
            self.region.store64(M2L_TAIL, head, Release);
            return out;
        }
        while self.m2l_tail < head {
            let off = M2L_SLOTS + SLOT * (self.m2l_tail % QUEUE) as usize;
            let mut rec = [0u8; CONTROL_LEN];
            self.region.read(off, &mut rec);
            let monitor_ns = self.region.load64(off + CONTROL_LEN, Acquire);
            out.push(
                Command::decode(&rec)
                    .map(|command| Received {
                        command,
                        monitor_ns,
                    })
                    .map_err(|e| Garbage::Record(format!("{e:?}"))),
            );
            self.m2l_tail += 1;
        }
        self.region.store64(M2L_TAIL, self.m2l_tail, Release);
        out
    }

    /// Publishes an event to the monitor; `false` if its queue is full (keep it).
    pub fn report(&mut self, ev: LauncherEvent) -> bool {
        let tail = self.region.load64(L2M_TAIL, Acquire);
        if self.l2m_head.wrapping_sub(tail) >= QUEUE {
            return false;
        }
        let off = L2M_SLOTS + SLOT * (self.l2m_head % QUEUE) as usize;
        self.region.write(off, &ev.encode());
        self.l2m_head += 1;
        self.region.store64(L2M_HEAD, self.l2m_head, Release);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor::PartitionId;

    #[test]
    fn commands_flow_and_garbage_is_refused() {
        let r = Region::heap(BYTES as usize);
        let mut c = ControlRegion::init(r.clone(), b"table").unwrap();
        assert_eq!(r.load64(0, Acquire), MAGIC);
        assert_eq!(r.load64(TABLE_LEN, Acquire), 5);
        assert!(c.poll().is_empty());
        // The monitor's side, by hand.
        let id = PartitionId::from_u32(3);
        r.write(M2L_SLOTS, &Command::Kill(id).encode());
        r.store64(M2L_SLOTS + CONTROL_LEN, 77, Release);
        r.write(M2L_SLOTS + SLOT, &[0xAB; CONTROL_LEN]);
        r.store64(M2L_HEAD, 2, Release);
        let got = c.poll();
        assert_eq!(
            got[0],
            Ok(Received {
                command: Command::Kill(id),
                monitor_ns: 77
            })
        );
        assert!(matches!(got[1], Err(Garbage::Record(_))), "{got:?}");
        assert_eq!(r.load64(M2L_TAIL, Acquire), 2);
        r.store64(M2L_HEAD, 1 << 40, Release);
        assert_eq!(c.poll(), vec![Err(Garbage::Head(1 << 40))]);
        // Events to the monitor, bounded by its tail.
        let ev = LauncherEvent::Exited { id, status: 0 };
        for _ in 0..QUEUE {
            assert!(c.report(ev));
        }
        assert!(!c.report(ev), "a full queue keeps the event");
        r.store64(L2M_TAIL, 1, Release);
        assert!(c.report(ev));
        let mut rec = [0u8; CONTROL_LEN];
        r.read(L2M_SLOTS, &mut rec);
        assert_eq!(LauncherEvent::decode(&rec), Ok(ev));
    }
}
