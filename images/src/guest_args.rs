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
//! | `ch` | once per channel, in PCI-slot order: see [`ChannelArg`] | `ch=1:1:0:65536:65536` |
//! | `need_shm` | runtime key (`abi::key`), only with channels: how many ivshmem devices must be found | `need_shm=2` |
//! | `need_doorbell` | runtime key, only with channels: `1` = doorbells (MSI-X) required | `need_doorbell=1` |
//! | `pci_ecam` | runtime key, only on `machine = "q35"`: its ECAM address | `pci_ecam=0xb0000000` |
//! | `watch` | monitor partition only, once per channel of the system: `SLOT:LO:HI` (see [`monitor_slots`]) | `watch=3:1:2` |
//! | `control` | monitor partition only: PCI slot of the control region | `control=5` |
//! | `period_ms`, `on_flood` | monitor partition only: from `[monitor]` | `period_ms=1 on_flood=kill` |
//! | `tsc_khz` | host TSC frequency in kHz (runtime key) | `tsc_khz=2995200` |
//! | ... | the partition's own `args` from the manifest, last | `greeting=hi` |
//!
//! # Channel memory
//! The launcher initialises every channel file with `interconnect::layout::reopen`
//! (header with magic, geometry and the two world ranks; both sides alive) and leaves
//! it pending; the monitor partition, or the launcher itself when there is none,
//! publishes each end's send rights in its control block and opens it
//! (`interconnect::layout::publish`). The guest reads its rights from the control
//! block; `TX`/`RX` in `ch=` say how large the manifest made each direction's ring
//! (0: no right that way, whatever the control block says), and from them the guest
//! computes the geometry (`abi::ring_geometry`) rather than trust the header, which
//! its peer can rewrite.

use crate::manifest::{Channel, System};

/// Physical address of q35's PCI ECAM window, passed as `pci_ecam` on q35.
pub const Q35_ECAM: u64 = 0xb000_0000;

/// Version of the key set; bump it when a key changes meaning.
pub const VERSION: u32 = 1;

pub use abi::ChannelArg;

/// The `ch=` word of `channel` as partition `rank` (one of its ends) sees it.
pub fn channel_arg(channel: &Channel, rank: usize) -> Option<ChannelArg> {
    let side = channel.end_of(rank)?;
    let tx = channel.dirs[side].as_ref();
    let rx = channel.dirs[1 - side].as_ref();
    Some(ChannelArg {
        slot: channel.slots[side],
        peer: u32::try_from(channel.ends[1 - side]).ok()?,
        side: side as u8,
        tx: tx.map_or(0, |e| e.ring_bytes),
        rx: rx.map_or(0, |e| e.ring_bytes),
    })
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

/// Where the monitor partition sees the channels and the control region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorSlots {
    /// `(channel index, PCI slot)` for every channel of the system: the monitor's own
    /// channels in their slots (ivshmem id 0 or 1), the others after them (id 2).
    pub watch: Vec<(usize, u8)>,
    /// PCI slot of the control region (`ivshmem-plain`), after every channel.
    pub control: u8,
}

/// The monitor partition's slots, if the system has a monitor partition.
///
/// Its command line then carries, after its own `ch=` words:
/// - `watch=SLOT:LO:HI` per channel (the two ends' world ranks, lower first), which the
///   monitor meters and revokes (edge `LO → HI` is direction 0);
/// - `control=SLOT`: the control region shared with the launcher
///   (`crate::control_region`);
/// - `period_ms=N` and `on_flood=kill|revoke|report` from `[monitor]`.
pub fn monitor_slots(sys: &System) -> Option<MonitorSlots> {
    let m = sys.monitor.partition?;
    let mut next = 1 + sys.channels_of(m).count() as u8;
    let watch: Vec<(usize, u8)> = sys
        .channels
        .iter()
        .map(|c| match c.end_of(m) {
            Some(side) => (c.index, c.slots[side]),
            None => {
                next += 1;
                (c.index, next - 1)
            }
        })
        .collect();
    Some(MonitorSlots {
        watch,
        control: next,
    })
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
        if let Some(arg) = channel_arg(c, rank) {
            v.push(format!("ch={arg}"));
        }
    }
    let mut channels = sys.channels_of(rank).count();
    if let Some(m) = monitor_slots(sys).filter(|_| sys.monitor.partition == Some(rank)) {
        for &(c, slot) in &m.watch {
            let [lo, hi] = sys.channels[c].ends;
            v.push(format!("watch={slot}:{lo}:{hi}"));
        }
        v.push(format!("control={}", m.control));
        v.push(format!("period_ms={}", sys.monitor.period_ms));
        v.push(format!("on_flood={}", sys.monitor.on_flood.name()));
        channels = m.watch.len() + 1;
    }
    if channels > 0 {
        v.push(format!("{}={channels}", abi::key::NEED_SHM));
        v.push(format!("{}=1", abi::key::NEED_DOORBELL));
    }
    if sys.machine == crate::manifest::Machine::Q35 {
        // q35's ECAM (ACPI MCFG is not read by the runtime).
        v.push(format!("{}={Q35_ECAM:#x}", abi::key::PCI_ECAM));
    }
    v.push(format!("{}={tsc_khz}", abi::key::TSC_KHZ));
    v.extend(p.args.iter().cloned());
    v
}

/// Checks that partition `rank`'s command line fits the runtime's limits
/// (`abi::MAX_ARGS` words, `abi::MAX_CMDLINE` bytes), with the longest TSC value.
pub fn check_fits(sys: &System, rank: usize) -> Result<(), String> {
    let args = guest_args(sys, rank, u64::MAX);
    if let Some(m) = monitor_slots(sys).filter(|_| sys.monitor.partition == Some(rank))
        && m.watch.len() + 1 > abi::MAX_SHM
    {
        return Err(format!(
            "the monitor `{}` maps every channel and the control region ({} devices); the runtime maps at most {}",
            sys.partitions[rank].name,
            m.watch.len() + 1,
            abi::MAX_SHM
        ));
    }
    let bytes = args.iter().map(|a| a.len() + 1).sum::<usize>();
    if args.len() > abi::MAX_ARGS {
        return Err(format!(
            "partition `{}` would get {} command-line words; the runtime takes at most {}",
            sys.partitions[rank].name,
            args.len(),
            abi::MAX_ARGS
        ));
    }
    if bytes > abi::MAX_CMDLINE {
        return Err(format!(
            "partition `{}` would get a command line of {bytes} bytes; the runtime takes at most {}",
            sys.partitions[rank].name,
            abi::MAX_CMDLINE
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn channel_arg_round_trips() {
        for s in ["1:2:0:65536:0", "3:0:1:0:4096"] {
            let a: ChannelArg = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        for bad in ["", "1:2:0:1", "1:2:2:1:1", "1:2:0:1:x", "1:2:0:1:1:n:*"] {
            assert!(bad.parse::<ChannelArg>().is_err(), "{bad}");
        }
    }

    #[test]
    fn demo_command_lines() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/five.toml");
        let sys = crate::manifest::load(&path).unwrap();
        let client = guest_args(&sys, 0, 2_000_000).join(" ");
        assert_eq!(
            client,
            "vmpi=1 name=client rank=0 size=5 groups=naming@0:0,1;storage@1:0,2 \
             ch=1:1:0:65536:65536 ch=2:2:0:262144:262144 need_shm=2 need_doorbell=1 \
             tsc_khz=2000000"
        );
        let log = guest_args(&sys, 3, 1).join(" ");
        assert_eq!(
            log,
            "vmpi=1 name=log rank=3 size=5 ch=1:1:1:0:16384 ch=2:2:1:0:16384 \
             need_shm=2 need_doorbell=1 tsc_khz=1"
        );
        let names = guest_args(&sys, 1, 1).join(" ");
        assert!(names.contains(" ch=2:3:0:16384:0 "), "{names}");
        let monitor = guest_args(&sys, 4, 1).join(" ");
        // The monitor sees every channel (ids 0/1 on its own, 2 on the others, none
        // here) and the control region after them.
        assert_eq!(
            monitor,
            "vmpi=1 name=monitor rank=4 size=5 watch=1:0:1 watch=2:0:2 watch=3:1:3 \
             watch=4:2:3 control=5 period_ms=100 on_flood=kill need_shm=5 need_doorbell=1 \
             tsc_khz=1"
        );
    }

    #[test]
    fn too_many_args_is_rejected() {
        let mut text = String::from(
            "[system]\nname = \"x\"\n[[partition]]\nname = \"a\"\nservice = \"s\"\nmemory = \"8M\"\nargs = [",
        );
        for i in 0..40 {
            text.push_str(&format!("\"k{i}=v\","));
        }
        text.push_str("]\n");
        let e = crate::manifest::parse(Path::new("x.toml"), &text)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "x.toml:4: key `partition.args`: partition `a` would get 45 command-line words; the runtime takes at most 32"
        );
    }
}
