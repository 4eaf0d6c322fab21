//! `vmpi check`'s picture of a resolved system, as text.

use std::fmt::Write;
use std::path::Path;

use crate::guest_args::guest_args;
use crate::manifest::{Edge, FaultPolicy, Hypervisor, ImageSource, Machine, System, human_bytes};

fn quota(e: &Edge) -> String {
    let q = &e.quota;
    let mut s = format!(
        "ring {}, {} msg/s, {}/s, burst {} msg / {}",
        human_bytes(e.ring_bytes),
        q.messages_per_sec,
        human_bytes(q.bytes_per_sec),
        q.burst,
        human_bytes(q.burst_bytes)
    );
    if let Some((lo, hi)) = e.tags {
        let _ = write!(s, ", tags {lo}..={hi}");
    }
    s.push_str(if e.nonblocking {
        ", non-blocking allowed"
    } else {
        ", blocking only"
    });
    s
}

/// The resolved system: ranks, images, groups, channels with quotas, monitor
/// policy and each partition's guest command line (`tsc_khz` as given).
pub fn describe(sys: &System, partitions: &Path, tsc_khz: u64) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "system `{}` ({}): {} partition(s), {} group(s), {} channel(s), machine {}",
        sys.name,
        sys.file.display(),
        sys.partitions.len(),
        sys.groups.len(),
        sys.channels.len(),
        match sys.machine {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
        }
    );
    let _ = writeln!(o, "\npartitions (rank = world rank):");
    for p in &sys.partitions {
        let img = crate::images::image_path(sys, p.rank, partitions);
        let src = match &p.image {
            ImageSource::Service(s) => format!("service `{s}`"),
            ImageSource::Path(_) => "image".to_string(),
        };
        let built = if img.is_file() {
            ""
        } else {
            " (not built: run `vmpi build`)"
        };
        let fault = match p.on_fault {
            FaultPolicy::Stop => "on fault: stop".to_string(),
            FaultPolicy::Restart { max } => format!("on fault: restart (at most {max})"),
        };
        let hv = match p.hypervisor {
            Hypervisor::Qemu => "qemu",
            Hypervisor::Uhyve => "uhyve",
        };
        let _ = writeln!(
            o,
            "  {:>3}  {:<12} {hv:<5} {:>8}  {src} -> {}{built}; {fault}",
            p.rank,
            p.name,
            human_bytes(p.memory),
            img.display()
        );
    }
    let _ = writeln!(o, "\ngroups (communicators; group rank = position):");
    let _ = writeln!(o, "  world: all {} partition(s)", sys.partitions.len());
    for (id, g) in sys.groups.iter().enumerate() {
        let members: Vec<String> = g
            .members
            .iter()
            .enumerate()
            .map(|(i, &r)| format!("{}={}", sys.partitions[r].name, i))
            .collect();
        let _ = writeln!(o, "  {} (id {id}): {}", g.name, members.join(" "));
    }
    let publisher = match sys.monitor.partition {
        Some(r) => format!("the monitor `{}`", sys.partitions[r].name),
        None => "vmpi up".to_string(),
    };
    let _ = writeln!(
        o,
        "\nchannels (one /dev/shm file each; a pair not listed has none; {publisher} \
         publishes each end's rights in the channel):"
    );
    if sys.channels.is_empty() {
        let _ = writeln!(o, "  none");
    }
    for c in &sys.channels {
        let [a, b] = c.ends.map(|r| &sys.partitions[r].name);
        let _ = writeln!(
            o,
            "  ch{}  {a} <-> {b}  {}  PCI slot {} in {a}, {} in {b}",
            c.index,
            human_bytes(c.file_bytes),
            c.slots[0],
            c.slots[1]
        );
        for e in c.dirs.iter().flatten() {
            let _ = writeln!(
                o,
                "        {} -> {}: {}",
                sys.partitions[e.from].name,
                sys.partitions[e.to].name,
                quota(e)
            );
        }
    }
    let m = &sys.monitor;
    let _ = writeln!(
        o,
        "\nmonitor: {}; on flood: {}; metering period {} ms",
        m.partition
            .map_or("none (nobody meters)".to_string(), |r| format!(
                "partition `{}`",
                sys.partitions[r].name
            )),
        m.on_flood.name(),
        m.period_ms
    );
    let _ = writeln!(o, "\nguest command lines:");
    for p in &sys.partitions {
        let _ = writeln!(
            o,
            "  {}: {}",
            p.name,
            guest_args(sys, p.rank, tsc_khz).join(" ")
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_description() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/five.toml");
        let sys = crate::manifest::load(&path).unwrap();
        let d = describe(&sys, Path::new("/nowhere"), 1000);
        assert!(
            d.contains("5 partition(s), 2 group(s), 4 channel(s)"),
            "{d}"
        );
        assert!(d.contains("storage (id 1): client=0 store=1"), "{d}");
        assert!(
            d.contains("ch1  client <-> store  2 MiB  PCI slot 2 in client, 1 in store"),
            "{d}"
        );
        assert!(
            d.contains("store -> client: ring 256 KiB, 20000 msg/s, 16 MiB/s, burst 256 msg / 16 MiB, non-blocking allowed"),
            "{d}"
        );
        assert!(d.contains("names -> log: ring 16 KiB, 1000 msg/s, 256 KiB/s, burst 32 msg / 256 KiB, tags 0..=15, blocking only"), "{d}");
        assert!(
            d.contains("/nowhere/target/x86_64-unknown-none/release/hello (not built"),
            "{d}"
        );
        assert!(d.contains("on fault: restart (at most 3)"), "{d}");
        assert!(
            d.contains("the monitor `monitor` publishes each end's rights in the channel"),
            "{d}"
        );
        assert!(
            d.contains("monitor: partition `monitor`; on flood: kill"),
            "{d}"
        );
    }
}
