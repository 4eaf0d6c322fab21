//! The control region between the launcher and the monitor partition: one
//! `/dev/shm/vmpi-PID-control` file, mapped by the launcher (host) and, as an
//! `ivshmem-plain` device, by the monitor partition. Neither side ever blocks on the
//! other: each polls the other's queue head.
//!
//! The layout (offsets, queue and slot sizes) is [`monitor::region`], shared with the
//! monitor partition. Monitor → launcher records are [`monitor::control::Command`]s;
//! launcher → monitor records are [`monitor::control::LauncherEvent`]s; both decoded
//! strictly.
//!
//! # Assumptions
//! - The monitor partition is not trusted with the launcher's memory: the launcher
//!   reads at most [`QUEUE`] records per poll, refuses a head that runs ahead of its
//!   tail by more than [`QUEUE`] (the monitor is then treated as broken) and decodes
//!   every record strictly.

use std::sync::atomic::Ordering::{Acquire, Release};

use interconnect::shm::Region;
use monitor::control::{CONTROL_LEN, Command, LauncherEvent};

pub use monitor::region::*;

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
            let off = slot(M2L_SLOTS, self.m2l_tail);
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
        let off = slot(L2M_SLOTS, self.l2m_head);
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
