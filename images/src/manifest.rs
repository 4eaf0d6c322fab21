//! The manifest: one TOML file per system (`images/*.toml`), parsed with
//! `deny_unknown_fields` and resolved into a [`System`]: ranks, groups
//! (communicators), channels with their per-direction rights, and the monitor's
//! policy. Every error names the file, the line and the key.
//!
//! The format is documented field by field in `docs/manifest.md`.
//!
//! # Assumptions
//! - Ranks follow the order of `[[partition]]` tables (first is rank 0).
//! - One channel per unordered pair of partitions; each direction of it exists only
//!   if a `[[right]]` grants it. A pair with no right gets no channel at all.
//! - Channels appear to a partition as PCI devices in slots 1, 2, ... in channel
//!   order; at most [`MAX_CHANNELS_PER_PARTITION`] fit on its bus.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub use abi::{MAX_RING_BYTES, MIN_RING_BYTES, RING_SLOTS};
/// Smallest channel file: ivshmem maps the file as a PCI BAR, and the runtime maps
/// BARs with 2 MiB pages.
pub const MIN_CHANNEL_BYTES: u64 = 2 << 20;
/// Guest-physical room for a partition's channels: the PCI host bridge's 32-bit
/// window 0xc000_0000..0xe000_0000 less its last 2 MiB, where the runtime puts the
/// devices' register pages (`partitions/rt/src/pci.rs`).
pub const CHANNEL_WINDOW_BYTES: u64 = (512 - 2) << 20;
/// Channels per partition: the runtime maps at most `abi::MAX_SHM` shared-memory
/// regions (PCI slots 1..=30 would allow 30: slot 0 is the host bridge, 31 q35's LPC).
pub const MAX_CHANNELS_PER_PARTITION: usize = abi::MAX_SHM;
/// Smallest partition memory.
pub const MIN_MEMORY_BYTES: u64 = 4 << 20;
/// Largest partition memory.
pub const MAX_MEMORY_BYTES: u64 = 64 << 30;

/// A manifest that cannot be read or is not a valid system.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("{file}: cannot read manifest: {source}")]
    Read {
        /// The manifest path.
        file: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A key is missing, unknown or has a bad value.
    #[error("{file}:{line}: key `{key}`: {message}")]
    At {
        /// The manifest path.
        file: String,
        /// 1-based line.
        line: usize,
        /// The offending key (dotted path where useful).
        key: String,
        /// What is wrong and, where possible, what to do.
        message: String,
    },
}

// ---------------------------------------------------------------------------
// The raw form, exactly as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    system: Spanned<RawSystem>,
    #[serde(default)]
    partition: Vec<Spanned<RawPartition>>,
    #[serde(default)]
    group: Vec<Spanned<RawGroup>>,
    #[serde(default)]
    right: Vec<Spanned<RawRight>>,
    monitor: Option<Spanned<RawMonitor>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSystem {
    name: Spanned<String>,
    #[serde(default)]
    machine: Option<Spanned<Machine>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartition {
    name: Spanned<String>,
    service: Option<Spanned<String>>,
    image: Option<Spanned<String>>,
    memory: Spanned<RawSize>,
    hypervisor: Option<Spanned<Hypervisor>>,
    #[serde(default)]
    args: Vec<Spanned<String>>,
    on_fault: Option<Spanned<FaultAction>>,
    max_restarts: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Spanned<String>,
    members: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRight {
    from: Spanned<String>,
    to: Spanned<String>,
    direction: Option<Spanned<Direction>>,
    ring: Spanned<RawSize>,
    #[serde(default)]
    nonblocking: bool,
    tags: Option<Spanned<Vec<Spanned<i64>>>>,
    quota: Spanned<RawQuota>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuota {
    messages_per_sec: Spanned<i64>,
    bytes_per_sec: Spanned<i64>,
    burst: Spanned<i64>,
    burst_bytes: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMonitor {
    partition: Option<Spanned<String>>,
    on_flood: Option<Spanned<FloodVerdict>>,
    period_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(i64),
    Text(String),
}

// ---------------------------------------------------------------------------
// The resolved system.

/// Which QEMU machine partitions run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// `-M microvm,pcie=on` (default, fastest boot).
    Microvm,
    /// `-M q35` with qboot.
    Q35,
}

/// Which hypervisor runs a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hypervisor {
    /// QEMU (KVM or TCG); the only one with channels.
    Qemu,
    /// uhyve: no PCI, so no channels.
    Uhyve,
}

/// Which directions of a pair a right grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// `from` may send to `to` (the default: least privilege).
    OneWay,
    /// Both may send to each other, with the same ring, quota and flags.
    Both,
}

/// What happens when a partition faults (exits abnormally).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultAction {
    /// Leave it stopped; its peers see `PeerDead`.
    Stop,
    /// Start it again, at most `max_restarts` times.
    Restart,
}

/// What the monitor does to a partition that exceeds a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FloodVerdict {
    /// Kill the flooder's VM and revoke its channels.
    Kill,
    /// Revoke the flooding edge's channel only.
    Revoke,
    /// Only report.
    Report,
}

impl FloodVerdict {
    /// The manifest's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Revoke => "revoke",
            Self::Report => "report",
        }
    }
}

/// Where a partition's kernel image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A crate in the partitions workspace; built by `vmpi build`.
    Service(String),
    /// An explicit ELF path (resolved against the manifest's folder).
    Path(PathBuf),
}

/// A partition's fault policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPolicy {
    /// Stay down.
    Stop,
    /// Restart up to `max` times.
    Restart {
        /// Restart limit.
        max: u32,
    },
}

/// One partition (one VM), with its rank.
#[derive(Debug, Clone)]
pub struct Partition {
    /// Unique name.
    pub name: String,
    /// World rank (position in the manifest).
    pub rank: usize,
    /// Kernel image.
    pub image: ImageSource,
    /// Manifest line of the `service`/`image` key.
    pub image_line: usize,
    /// Guest memory in bytes.
    pub memory: u64,
    /// Hypervisor.
    pub hypervisor: Hypervisor,
    /// Extra guest command-line arguments (`key=value`).
    pub args: Vec<String>,
    /// Fault policy.
    pub on_fault: FaultPolicy,
    /// Line of its `[[partition]]` table.
    pub line: usize,
}

/// A group: becomes a communicator in every member.
#[derive(Debug, Clone)]
pub struct Group {
    /// Unique name.
    pub name: String,
    /// Members' world ranks, in group-rank order.
    pub members: Vec<usize>,
}

/// A token-bucket quota on one direction of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Sustained messages per second.
    pub messages_per_sec: u64,
    /// Sustained bytes per second.
    pub bytes_per_sec: u64,
    /// Messages that may be sent at once above the rate (bucket depth).
    pub burst: u64,
    /// Bytes that may be sent at once above the rate (bucket depth).
    pub burst_bytes: u64,
}

/// The right to send in one direction of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// Sender's world rank.
    pub from: usize,
    /// Receiver's world rank.
    pub to: usize,
    /// Ring size in bytes (a power of two).
    pub ring_bytes: u64,
    /// Meter.
    pub quota: Quota,
    /// Inclusive tag range the sender may use (`None`: any tag).
    pub tags: Option<(u32, u32)>,
    /// Whether non-blocking sends are allowed.
    pub nonblocking: bool,
    /// Manifest line of the `[[right]]`.
    pub line: usize,
}

/// A channel: one shared-memory file joining two partitions.
#[derive(Debug, Clone)]
pub struct Channel {
    /// Index in the system (names the file `/dev/shm/vmpi-<pid>-<index>`).
    pub index: usize,
    /// World ranks of its two ends, lower first. The lower end has ivshmem id 0,
    /// the higher id 1 (the monitor, later, id 2).
    pub ends: [usize; 2],
    /// `[lower→higher, higher→lower]` rights; at least one is present.
    pub dirs: [Option<Edge>; 2],
    /// PCI slot of this channel in each end's VM.
    pub slots: [u8; 2],
    /// Size of the shared-memory file in bytes (a power of two, at least 2 MiB).
    pub file_bytes: u64,
}

impl Channel {
    /// The interconnect geometry of its rings.
    pub fn geometry(&self) -> interconnect::layout::Geometry {
        let ring = |e: &Option<Edge>| e.as_ref().map_or(0, |e| e.ring_bytes);
        channel_geometry(ring(&self.dirs[0]), ring(&self.dirs[1]))
    }

    /// Which end (0 or 1) `rank` is, if it is one.
    pub fn end_of(&self, rank: usize) -> Option<usize> {
        self.ends.iter().position(|&r| r == rank)
    }
}

/// The monitor's policy.
#[derive(Debug, Clone)]
pub struct MonitorPolicy {
    /// The monitor partition's rank, if the system has one.
    pub partition: Option<usize>,
    /// Verdict on a flooder.
    pub on_flood: FloodVerdict,
    /// Metering period in milliseconds.
    pub period_ms: u64,
}

/// A validated, resolved system.
#[derive(Debug, Clone)]
pub struct System {
    /// The monitor's rights table built from it (`monitor::rights`, the one place
    /// where rights are checked); its wire encoding is what partitions receive.
    pub rights: monitor::rights::RightsTable,
    /// Manifest path as given.
    pub file: PathBuf,
    /// System name.
    pub name: String,
    /// QEMU machine.
    pub machine: Machine,
    /// Partitions, indexed by rank.
    pub partitions: Vec<Partition>,
    /// Groups in manifest order (group id = index).
    pub groups: Vec<Group>,
    /// Channels in order of their first right.
    pub channels: Vec<Channel>,
    /// Monitor policy (defaults if no `[monitor]`).
    pub monitor: MonitorPolicy,
}

impl System {
    /// Channels of partition `rank`, in PCI-slot order.
    pub fn channels_of(&self, rank: usize) -> impl Iterator<Item = &Channel> {
        self.channels
            .iter()
            .filter(move |c| c.end_of(rank).is_some())
    }

    /// Groups `rank` belongs to.
    pub fn groups_of(&self, rank: usize) -> impl Iterator<Item = &Group> {
        self.groups
            .iter()
            .filter(move |g| g.members.contains(&rank))
    }
}

// ---------------------------------------------------------------------------
// Parsing and validation.

/// Reads and resolves the manifest at `path`.
pub fn load(path: &Path) -> Result<System, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        file: path.display().to_string(),
        source,
    })?;
    parse(path, &text)
}

/// Resolves manifest `text`; `path` names it in errors and anchors relative image
/// paths.
pub fn parse(path: &Path, text: &str) -> Result<System, ManifestError> {
    let cx = Cx {
        file: path.display().to_string(),
        text,
    };
    let raw: RawManifest = toml::from_str(text).map_err(|e| cx.toml_error(&e))?;
    let sys = resolve(path, &cx, raw)?;
    for p in &sys.partitions {
        crate::guest_args::check_fits(&sys, p.rank).map_err(|message| ManifestError::At {
            file: cx.file.clone(),
            line: p.line,
            key: "partition.args".into(),
            message,
        })?;
    }
    Ok(sys)
}

struct Cx<'a> {
    file: String,
    text: &'a str,
}

impl Cx<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn err(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ManifestError {
        ManifestError::At {
            file: self.file.clone(),
            line: self.line(span.start),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// Turns a TOML/serde error into file:line: key `k`: message.
    fn toml_error(&self, e: &toml::de::Error) -> ManifestError {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().to_string();
        let key = quoted_after(&message, "unknown field `")
            .or_else(|| quoted_after(&message, "missing field `"))
            .or_else(|| self.key_at(span.start))
            .unwrap_or_else(|| "?".to_string());
        let message = if message.starts_with("unknown field") {
            format!(
                "unknown key ({})",
                message.replacen("unknown field", "field", 1)
            )
        } else {
            message
        };
        self.err(span, &key, message)
    }

    /// The key written on the line holding `offset` (`key = ...` or `[table]`).
    fn key_at(&self, offset: usize) -> Option<String> {
        let start = self.text[..offset.min(self.text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let line = self.text[start..].lines().next()?.trim();
        if let Some((k, _)) = line.split_once('=') {
            let k = k.trim().trim_matches('"');
            if !k.is_empty() && !k.starts_with('[') {
                return Some(k.to_string());
            }
        }
        let header = line.trim_start_matches('[').split(']').next()?.trim();
        (!header.is_empty()).then(|| header.to_string())
    }
}

fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    Some(rest[..rest.find('`')?].to_string())
}

/// The monitor's name rule (`monitor::rights`): 1 to 32 of `a-z 0-9 _ -`, starting
/// with a letter.
fn valid_name(name: &str) -> bool {
    name.len() <= monitor::rights::MAX_NAME
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn size(cx: &Cx<'_>, key: &str, raw: &Spanned<RawSize>) -> Result<u64, ManifestError> {
    let bad = |m: String| cx.err(raw.span(), key, m);
    match raw.get_ref() {
        RawSize::Bytes(n) => u64::try_from(*n).map_err(|_| bad(format!("size {n} is negative"))),
        RawSize::Text(s) => parse_size(s).ok_or_else(|| {
            bad(format!(
                "`{s}` is not a size: write bytes as an integer or a number with K, M, G \
                 (or KiB, MiB, GiB), e.g. \"64K\""
            ))
        }),
    }
}

/// Parses "64K", "64KiB", "2M", "1G", "4096" (binary units).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" | "k" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// Formats bytes with a binary unit ("64 KiB").
pub fn human_bytes(n: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} B")
}

fn positive(cx: &Cx<'_>, key: &str, v: &Spanned<i64>) -> Result<u64, ManifestError> {
    match u64::try_from(*v.get_ref()) {
        Ok(0) => Err(cx.err(
            v.span(),
            key,
            "a quota of zero forbids the edge: remove the `[[right]]` instead",
        )),
        Ok(n) => Ok(n),
        Err(_) => Err(cx.err(v.span(), key, format!("{} is negative", v.get_ref()))),
    }
}

/// The interconnect's geometry for a channel whose directions have rings of
/// `ring_lo_hi` and `ring_hi_lo` bytes (0: not granted). The interconnect's format
/// is symmetric, so both directions get the larger ring as their data area; rights,
/// not memory, keep an ungranted direction unused.
pub fn channel_geometry(ring_lo_hi: u64, ring_hi_lo: u64) -> interconnect::layout::Geometry {
    let (slots, data_len) = abi::ring_geometry(ring_lo_hi, ring_hi_lo);
    interconnect::layout::Geometry {
        slots,
        data_len,
        ..interconnect::layout::Geometry::default()
    }
}

/// Size of a channel file: the interconnect's region for [`channel_geometry`],
/// rounded up to a power of two (a PCI BAR) of at least 2 MiB.
pub fn channel_file_bytes(ring_lo_hi: u64, ring_hi_lo: u64) -> u64 {
    let region = channel_geometry(ring_lo_hi, ring_hi_lo).region_len() as u64;
    region.next_power_of_two().max(MIN_CHANNEL_BYTES)
}

fn resolve(path: &Path, cx: &Cx<'_>, raw: RawManifest) -> Result<System, ManifestError> {
    let sys = raw.system.get_ref();
    if !valid_name(sys.name.get_ref()) {
        return Err(cx.err(
            sys.name.span(),
            "system.name",
            name_rule(sys.name.get_ref()),
        ));
    }
    let machine = sys
        .machine
        .as_ref()
        .map_or(Machine::Microvm, |m| *m.get_ref());
    if raw.partition.is_empty() {
        return Err(cx.err(
            raw.system.span(),
            "partition",
            "the system has no `[[partition]]`: add at least one",
        ));
    }

    // Partitions.
    let mut by_name: HashMap<String, (usize, usize)> = HashMap::new();
    let mut partitions = Vec::new();
    let base = path.parent().unwrap_or(Path::new("."));
    for (rank, sp) in raw.partition.iter().enumerate() {
        let p = sp.get_ref();
        let name = p.name.get_ref();
        if !valid_name(name) {
            return Err(cx.err(p.name.span(), "partition.name", name_rule(name)));
        }
        let line = cx.line(p.name.span().start);
        if let Some((_, first)) = by_name.insert(name.clone(), (rank, line)) {
            return Err(cx.err(
                p.name.span(),
                "partition.name",
                format!("duplicate partition name `{name}` (first defined on line {first})"),
            ));
        }
        let (image, image_line) = match (&p.service, &p.image) {
            (Some(s), None) => {
                if !valid_name(s.get_ref()) {
                    return Err(cx.err(s.span(), "partition.service", name_rule(s.get_ref())));
                }
                (
                    ImageSource::Service(s.get_ref().clone()),
                    cx.line(s.span().start),
                )
            }
            (None, Some(i)) => {
                let pth = base.join(i.get_ref());
                if !pth.is_file() {
                    return Err(cx.err(
                        i.span(),
                        "partition.image",
                        format!("image {} does not exist", pth.display()),
                    ));
                }
                (ImageSource::Path(pth), cx.line(i.span().start))
            }
            (Some(_), Some(i)) => {
                return Err(cx.err(
                    i.span(),
                    "partition.image",
                    "give either `service` or `image`, not both",
                ));
            }
            (None, None) => {
                return Err(cx.err(
                    sp.span(),
                    "partition.service",
                    format!("partition `{name}` needs `service = \"crate\"` or `image = \"path\"`"),
                ));
            }
        };
        let memory = size(cx, "partition.memory", &p.memory)?;
        if !(MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&memory) {
            return Err(cx.err(
                p.memory.span(),
                "partition.memory",
                format!(
                    "{} is outside {}..={}",
                    human_bytes(memory),
                    human_bytes(MIN_MEMORY_BYTES),
                    human_bytes(MAX_MEMORY_BYTES)
                ),
            ));
        }
        for a in &p.args {
            let s = a.get_ref();
            let ok = s.split_once('=').is_some_and(|(k, _)| !k.is_empty())
                && !s.chars().any(|c| c.is_whitespace() || c == '"');
            if !ok {
                return Err(cx.err(
                    a.span(),
                    "partition.args",
                    format!("`{s}` is not `key=value` without spaces or quotes"),
                ));
            }
        }
        let action = p.on_fault.as_ref().map(|f| *f.get_ref());
        let on_fault = match (action, &p.max_restarts) {
            (None | Some(FaultAction::Stop), None) => FaultPolicy::Stop,
            (Some(FaultAction::Restart), None) => {
                let span = p.on_fault.as_ref().map_or(sp.span(), |f| f.span());
                return Err(cx.err(
                    span,
                    "partition.on_fault",
                    "`restart` needs `max_restarts` (at least 1)",
                ));
            }
            (None | Some(FaultAction::Stop), Some(m)) => {
                return Err(cx.err(
                    m.span(),
                    "partition.max_restarts",
                    "`max_restarts` only applies with `on_fault = \"restart\"`",
                ));
            }
            (Some(FaultAction::Restart), Some(m)) if *m.get_ref() == 0 => {
                return Err(cx.err(
                    m.span(),
                    "partition.max_restarts",
                    "restart with a limit of 0 never restarts: use `on_fault = \"stop\"`",
                ));
            }
            (Some(FaultAction::Restart), Some(m)) => FaultPolicy::Restart { max: *m.get_ref() },
        };
        partitions.push(Partition {
            name: name.clone(),
            rank,
            image,
            image_line,
            memory,
            hypervisor: p
                .hypervisor
                .as_ref()
                .map_or(Hypervisor::Qemu, |h| *h.get_ref()),
            args: p.args.iter().map(|a| a.get_ref().clone()).collect(),
            on_fault,
            line,
        });
    }
    let lookup = |s: &Spanned<String>, key: &str| -> Result<usize, ManifestError> {
        by_name.get(s.get_ref()).map(|&(r, _)| r).ok_or_else(|| {
            cx.err(
                s.span(),
                key,
                format!("no partition named `{}`", s.get_ref()),
            )
        })
    };

    // Groups.
    let mut groups: Vec<Group> = Vec::new();
    let mut group_lines: HashMap<String, usize> = HashMap::new();
    for sg in &raw.group {
        let g = sg.get_ref();
        let name = g.name.get_ref();
        if !valid_name(name) {
            return Err(cx.err(g.name.span(), "group.name", name_rule(name)));
        }
        if name == "world" {
            return Err(cx.err(
                g.name.span(),
                "group.name",
                "`world` is the implicit group of all partitions; choose another name",
            ));
        }
        if let Some(first) = group_lines.insert(name.clone(), cx.line(g.name.span().start)) {
            return Err(cx.err(
                g.name.span(),
                "group.name",
                format!("duplicate group name `{name}` (first defined on line {first})"),
            ));
        }
        if g.members.get_ref().is_empty() {
            return Err(cx.err(g.members.span(), "group.members", "a group needs members"));
        }
        let mut members = Vec::new();
        for m in g.members.get_ref() {
            let r = lookup(m, "group.members")?;
            if members.contains(&r) {
                return Err(cx.err(
                    m.span(),
                    "group.members",
                    format!("`{}` is listed twice", m.get_ref()),
                ));
            }
            members.push(r);
        }
        groups.push(Group {
            name: name.clone(),
            members,
        });
    }

    // Rights → channels.
    let mut channels: Vec<Channel> = Vec::new();
    let mut pair_index: HashMap<(usize, usize), usize> = HashMap::new();
    for sr in &raw.right {
        let r = sr.get_ref();
        let from = lookup(&r.from, "right.from")?;
        let to = lookup(&r.to, "right.to")?;
        if from == to {
            return Err(cx.err(
                r.to.span(),
                "right.to",
                format!(
                    "a partition needs no channel to itself (`{}`)",
                    r.to.get_ref()
                ),
            ));
        }
        for (rank, s, key) in [(from, &r.from, "right.from"), (to, &r.to, "right.to")] {
            if partitions[rank].hypervisor == Hypervisor::Uhyve {
                return Err(cx.err(
                    s.span(),
                    key,
                    format!(
                        "partition `{}` runs under uhyve, which has no shared memory: \
                         it can have no channels (use hypervisor = \"qemu\")",
                        s.get_ref()
                    ),
                ));
            }
        }
        let ring_bytes = size(cx, "right.ring", &r.ring)?;
        let ring_problem = if ring_bytes > MAX_RING_BYTES {
            Some(format!(
                "ring of {} does not fit in memory: a ring is at most {} (a partition maps all \
                 its channels into a {} window)",
                human_bytes(ring_bytes),
                human_bytes(MAX_RING_BYTES),
                human_bytes(CHANNEL_WINDOW_BYTES)
            ))
        } else if ring_bytes < MIN_RING_BYTES {
            Some(format!(
                "ring of {} is too small: at least {}",
                human_bytes(ring_bytes),
                human_bytes(MIN_RING_BYTES)
            ))
        } else if !ring_bytes.is_power_of_two() {
            Some(format!(
                "ring of {} must be a power of two",
                human_bytes(ring_bytes)
            ))
        } else {
            None
        };
        if let Some(m) = ring_problem {
            return Err(cx.err(r.ring.span(), "right.ring", m));
        }
        let q = r.quota.get_ref();
        let messages_per_sec = positive(cx, "right.quota.messages_per_sec", &q.messages_per_sec)?;
        let bytes_per_sec = positive(cx, "right.quota.bytes_per_sec", &q.bytes_per_sec)?;
        let burst = positive(cx, "right.quota.burst", &q.burst)?;
        let burst_bytes = match &q.burst_bytes {
            Some(b) => positive(cx, "right.quota.burst_bytes", b)?,
            None => bytes_per_sec,
        };
        let quota = Quota {
            messages_per_sec,
            bytes_per_sec,
            burst,
            burst_bytes,
        };
        let tags = match &r.tags {
            None => None,
            Some(t) => match t.get_ref().as_slice() {
                [lo, hi]
                    if (0..=i64::from(u32::MAX)).contains(lo.get_ref())
                        && (*lo.get_ref()..=i64::from(u32::MAX)).contains(hi.get_ref()) =>
                {
                    let to_u32 = |v: &Spanned<i64>| u32::try_from(*v.get_ref()).unwrap_or(0);
                    Some((to_u32(lo), to_u32(hi)))
                }
                _ => {
                    return Err(cx.err(
                        t.span(),
                        "right.tags",
                        "tags must be `[first, last]` with 0 <= first <= last <= 4294967295",
                    ));
                }
            },
        };
        let line = cx.line(sr.span().start);
        let both = r
            .direction
            .as_ref()
            .is_some_and(|d| *d.get_ref() == Direction::Both);
        let mut directed = vec![(from, to)];
        if both {
            directed.push((to, from));
        }
        let ends = [from.min(to), from.max(to)];
        let ci = *pair_index.entry((ends[0], ends[1])).or_insert_with(|| {
            channels.push(Channel {
                index: channels.len(),
                ends,
                dirs: [None, None],
                slots: [0, 0],
                file_bytes: 0,
            });
            channels.len() - 1
        });
        for (f, t) in directed {
            let d = usize::from(f != ends[0]);
            if let Some(prev) = &channels[ci].dirs[d] {
                return Err(cx.err(
                    sr.span(),
                    "right",
                    format!(
                        "`{}` -> `{}` is already granted on line {}",
                        partitions[f].name, partitions[t].name, prev.line
                    ),
                ));
            }
            channels[ci].dirs[d] = Some(Edge {
                from: f,
                to: t,
                ring_bytes,
                quota,
                tags,
                nonblocking: r.nonblocking,
                line,
            });
        }
        // Sizes and the channel window, checked as each right adds to them.
        let ring = |e: &Option<Edge>| e.as_ref().map_or(0, |e| e.ring_bytes);
        let file_bytes =
            channel_file_bytes(ring(&channels[ci].dirs[0]), ring(&channels[ci].dirs[1]));
        channels[ci].file_bytes = file_bytes;
        for &end in &ends {
            let used: u64 = channels
                .iter()
                .filter(|c| c.end_of(end).is_some())
                .map(|c| c.file_bytes)
                .sum();
            let count = channels.iter().filter(|c| c.end_of(end).is_some()).count();
            if used > CHANNEL_WINDOW_BYTES {
                return Err(cx.err(
                    r.ring.span(),
                    "right.ring",
                    format!(
                        "ring of {} does not fit in memory: partition `{}`'s channels would need \
                         {} of its {} shared-memory window",
                        human_bytes(ring_bytes),
                        partitions[end].name,
                        human_bytes(used),
                        human_bytes(CHANNEL_WINDOW_BYTES)
                    ),
                ));
            }
            if count > MAX_CHANNELS_PER_PARTITION {
                return Err(cx.err(
                    sr.span(),
                    "right",
                    format!(
                        "partition `{}` would have {count} channels; its runtime maps at \
                         most {MAX_CHANNELS_PER_PARTITION}",
                        partitions[end].name
                    ),
                ));
            }
        }
    }
    // PCI slots: 1, 2, ... per partition in channel order.
    let mut next_slot = vec![1u8; partitions.len()];
    for c in &mut channels {
        for (i, &end) in c.ends.iter().enumerate() {
            c.slots[i] = next_slot[end];
            next_slot[end] += 1;
        }
    }

    // Monitor.
    let mut monitor = MonitorPolicy {
        partition: None,
        on_flood: FloodVerdict::Report,
        period_ms: 100,
    };
    if let Some(sm) = &raw.monitor {
        let m = sm.get_ref();
        if let Some(p) = &m.partition {
            let r = lookup(p, "monitor.partition")?;
            if partitions[r].hypervisor == Hypervisor::Uhyve {
                return Err(cx.err(
                    p.span(),
                    "monitor.partition",
                    "the monitor maps every channel: it cannot run under uhyve",
                ));
            }
            if let FaultPolicy::Restart { .. } = partitions[r].on_fault {
                return Err(cx.err(
                    p.span(),
                    "monitor.partition",
                    format!(
                        "the monitor `{}` cannot be restarted (on line {} it has \
                         on_fault = \"restart\"): nobody would meter channels meanwhile",
                        p.get_ref(),
                        partitions[r].line
                    ),
                ));
            }
            monitor.partition = Some(r);
        }
        if let Some(v) = &m.on_flood {
            if monitor.partition.is_none() && *v.get_ref() != FloodVerdict::Report {
                return Err(cx.err(
                    v.span(),
                    "monitor.on_flood",
                    "no partition meters the channels: set `monitor.partition` to give a verdict",
                ));
            }
            monitor.on_flood = *v.get_ref();
        }
        if let Some(p) = &m.period_ms {
            monitor.period_ms = match u64::try_from(*p.get_ref()) {
                Ok(n @ 1..=60_000) => n,
                _ => {
                    return Err(cx.err(
                        p.span(),
                        "monitor.period_ms",
                        "the metering period must be 1..=60000 ms",
                    ));
                }
            };
        }
    }

    let rights = rights_table(&partitions, &groups, &channels, &monitor).map_err(|e| {
        let (line, key) = rights_error_site(&e, &partitions, &channels);
        ManifestError::At {
            file: cx.file.clone(),
            line: line.unwrap_or_else(|| cx.line(raw.system.span().start)),
            key: key.into(),
            message: format!("the monitor's rights table rejects it: {e}"),
        }
    })?;

    Ok(System {
        rights,
        file: path.to_path_buf(),
        name: sys.name.get_ref().clone(),
        machine,
        partitions,
        groups,
        channels,
        monitor,
    })
}

/// Builds the monitor's rights table: partitions (rank = index) with their fault
/// policy, groups, one edge per granted direction, the monitor partition.
fn rights_table(
    partitions: &[Partition],
    groups: &[Group],
    channels: &[Channel],
    policy: &MonitorPolicy,
) -> Result<monitor::rights::RightsTable, monitor::rights::RightsError> {
    use monitor::rights::{EdgeRights, Policy, Quota as MQuota, RightsBuilder, TagRange};
    let mut b = RightsBuilder::new();
    for p in partitions {
        let pol = match p.on_fault {
            FaultPolicy::Stop => Policy::Stop,
            FaultPolicy::Restart { max } => Policy::Restart { limit: max },
        };
        b.partition(&p.name, pol);
    }
    for g in groups {
        let members: Vec<&str> = g
            .members
            .iter()
            .map(|&r| partitions[r].name.as_str())
            .collect();
        b.group(&g.name, &members);
    }
    let mut edges: Vec<&Edge> = channels
        .iter()
        .flat_map(|c| c.dirs.iter().flatten())
        .collect();
    edges.sort_by_key(|e| (e.line, e.from));
    for e in edges {
        let q = e.quota;
        let rights = EdgeRights {
            tags: e.tags.map(|(lo, hi)| TagRange { lo, hi }),
            nonblocking: e.nonblocking,
            quota: MQuota {
                msgs_per_s: q.messages_per_sec,
                bytes_per_s: q.bytes_per_sec,
                burst_msgs: q.burst,
                burst_bytes: q.burst_bytes,
            },
        };
        b.allow(&partitions[e.from].name, &partitions[e.to].name, rights);
    }
    if let Some(m) = policy.partition {
        b.monitor(&partitions[m].name);
    }
    b.build()
}

/// The manifest line and key a rights-table error is about, where it can tell.
fn rights_error_site(
    e: &monitor::rights::RightsError,
    partitions: &[Partition],
    channels: &[Channel],
) -> (Option<usize>, &'static str) {
    use monitor::rights::RightsError as E;
    let line_of_partition = |n: &str| partitions.iter().find(|p| p.name == n).map(|p| p.line);
    let line_of_edge = |f: &str, t: &str| {
        channels
            .iter()
            .flat_map(|c| c.dirs.iter().flatten())
            .find_map(|e| {
                (partitions[e.from].name == f && partitions[e.to].name == t).then_some(e.line)
            })
    };
    match e {
        E::BadName { name } | E::DuplicateName { name } => {
            (line_of_partition(name), "partition.name")
        }
        E::BadPolicy { name, .. } => (line_of_partition(name), "partition.on_fault"),
        E::SelfEdge { name } => (line_of_partition(name), "right"),
        E::DuplicateEdge { from, to }
        | E::EmptyGrant { from, to }
        | E::ZeroQuota { from, to, .. }
        | E::EmptyTagRange { from, to, .. } => (line_of_edge(from, to), "right"),
        E::BadGroup { .. } => (None, "group"),
        E::TooMany {
            what: "partitions", ..
        } => (None, "partition"),
        _ => (None, "right"),
    }
}

fn name_rule(name: &str) -> String {
    format!("`{name}` is not a valid name: use 1 to 32 of a-z 0-9 _ -, starting with a letter")
}

#[cfg(test)]
mod tests;
