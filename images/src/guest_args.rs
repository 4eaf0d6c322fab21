//! The guest command line: every key the launcher passes to a partition through
//! QEMU's `-append` (PVH `hvm_start_info` command line). This module is the one
//! definition of the fabric keys; the guest runtime parses the same strings.
//!
//! The command line is space-separated `key=value` words; no value contains a space.
//! Keys, in this order:
//!
//! | key | value | example |
//! |---|---|---|
//! | `vmpi` | version of this key set ([`VERSION`]) | `vmpi=1` |
//! | `name` | the partition's name | `name=A` |
//! | `rank` | its world rank (0-based, manifest order) | `rank=0` |
//! | `size` | number of partitions in the system (world size) | `size=3` |
//! | `groups` | only if it is in a group: `;`-separated `NAME:R,R,...` with the members' world ranks in group-rank order (the group's id is its position in the manifest, given as `NAME@ID`) | `groups=g1@0:0,1;g2@1:0,2` |
//! | `ch` | once per channel, in PCI-slot order: see [`ChannelArg`] | `ch=1:1:0:65536:65536:n:*` |
//! | `tsc_khz` | host TSC frequency in kHz (runtime key) | `tsc_khz=2995200` |
//! | ... | the partition's own `args` from the manifest, last | `greeting=hi` |
//!
//! # Channel memory layout assumed by the sizes
//! A channel file is `[header: CHANNEL_HEADER_BYTES][ring lower→higher][ring higher→lower]`,
//! rounded up to a power of two (at least 2 MiB); a ring not granted has 0 bytes.
//! The interconnect crate owns what lies inside the header and the rings.

use std::fmt;
use std::str::FromStr;

use crate::manifest::{Channel, System};

/// Version of the key set; bump it when a key changes meaning.
pub const VERSION: u32 = 1;

/// One `ch=` value: `SLOT:PEER:SIDE:TX:RX:FLAGS:TAGS`.
///
/// - `SLOT`: PCI slot (device number on bus 0) of the channel's ivshmem-doorbell device.
/// - `PEER`: the peer's world rank.
/// - `SIDE`: `0` if this partition is the lower rank of the pair, else `1`; it is also
///   this partition's ivshmem peer id on the channel's doorbell (the peer has the
///   other; the monitor, later, has 2).
/// - `TX`: bytes of the ring this partition sends on (0: it may not send).
/// - `RX`: bytes of the ring it receives on (0: the peer may not send).
/// - `FLAGS`: `n` if non-blocking sends are allowed on TX, `-` if not.
/// - `TAGS`: the inclusive tag range it may send with, `FIRST-LAST`, or `*` for any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelArg {
    /// PCI slot.
    pub slot: u8,
    /// Peer's world rank.
    pub peer: usize,
    /// 0 = lower end, 1 = higher end (also the ivshmem peer id).
    pub side: u8,
    /// Send ring bytes (0 = no right to send).
    pub tx: u64,
    /// Receive ring bytes (0 = the peer has no right to send).
    pub rx: u64,
    /// Non-blocking sends allowed.
    pub nonblocking: bool,
    /// Tag range for sends.
    pub tags: Option<(u32, u32)>,
}

impl ChannelArg {
    /// The view of `channel` from partition `rank` (which must be one of its ends).
    pub fn of(channel: &Channel, rank: usize) -> Option<Self> {
        let side = channel.end_of(rank)?;
        let tx = channel.dirs[side].as_ref();
        let rx = channel.dirs[1 - side].as_ref();
        Some(Self {
            slot: channel.slots[side],
            peer: channel.ends[1 - side],
            side: side as u8,
            tx: tx.map_or(0, |e| e.ring_bytes),
            rx: rx.map_or(0, |e| e.ring_bytes),
            nonblocking: tx.is_some_and(|e| e.nonblocking),
            tags: tx.and_then(|e| e.tags),
        })
    }
}

impl fmt::Display for ChannelArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = if self.nonblocking { "n" } else { "-" };
        write!(
            f,
            "{}:{}:{}:{}:{}:{flags}:",
            self.slot, self.peer, self.side, self.tx, self.rx
        )?;
        match self.tags {
            Some((lo, hi)) => write!(f, "{lo}-{hi}"),
            None => f.write_str("*"),
        }
    }
}

/// A `ch=` value that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad channel argument `{0}`: expected SLOT:PEER:SIDE:TX:RX:FLAGS:TAGS")]
pub struct BadChannelArg(pub String);

impl FromStr for ChannelArg {
    type Err = BadChannelArg;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadChannelArg(s.to_string());
        let f: Vec<&str> = s.split(':').collect();
        let [slot, peer, side, tx, rx, flags, tags] = f.as_slice() else {
            return Err(bad());
        };
        let tags = match *tags {
            "*" => None,
            t => {
                let (lo, hi) = t.split_once('-').ok_or_else(bad)?;
                Some((
                    lo.parse().map_err(|_| bad())?,
                    hi.parse().map_err(|_| bad())?,
                ))
            }
        };
        Ok(Self {
            slot: slot.parse().map_err(|_| bad())?,
            peer: peer.parse().map_err(|_| bad())?,
            side: match *side {
                "0" => 0,
                "1" => 1,
                _ => return Err(bad()),
            },
            tx: tx.parse().map_err(|_| bad())?,
            rx: rx.parse().map_err(|_| bad())?,
            nonblocking: match *flags {
                "n" => true,
                "-" => false,
                _ => return Err(bad()),
            },
            tags,
        })
    }
}

/// The `groups=` value for `rank`, if it is in any group.
pub fn groups_value(sys: &System, rank: usize) -> Option<String> {
    let parts: Vec<String> = sys
        .groups
        .iter()
        .enumerate()
        .filter(|(_, g)| g.members.contains(&rank))
        .map(|(id, g)| {
            let m: Vec<String> = g.members.iter().map(|r| r.to_string()).collect();
            format!("{}@{id}:{}", g.name, m.join(","))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(";"))
}

/// Every word of partition `rank`'s command line.
pub fn guest_args(sys: &System, rank: usize, tsc_khz: u64) -> Vec<String> {
    let p = &sys.partitions[rank];
    let mut v = vec![
        format!("vmpi={VERSION}"),
        format!("name={}", p.name),
        format!("rank={rank}"),
        format!("size={}", sys.partitions.len()),
    ];
    if let Some(g) = groups_value(sys, rank) {
        v.push(format!("groups={g}"));
    }
    for c in sys.channels_of(rank) {
        if let Some(arg) = ChannelArg::of(c, rank) {
            v.push(format!("ch={arg}"));
        }
    }
    v.push(format!("tsc_khz={tsc_khz}"));
    v.extend(p.args.iter().cloned());
    v
}
