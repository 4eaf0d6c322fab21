//! The rights table: which partition may send to which, with which tags, how fast,
//! and what the monitor does when a partition fails.
//!
//! Built from the manifest with [`RightsBuilder`]. Each partition learns only its own
//! rights: the monitor partition publishes [`RightsTable::channel_rights`] in the
//! control block of each channel, which only its two ends map, and their fabric checks
//! every send against them; [`RightsTable::check_send`] is the same check on the full
//! table. [`crate::wire`] encodes the table for the monitor partition.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::id::{EdgeId, PartitionId};

/// Most partitions in one system (group membership is a 64-bit mask).
pub const MAX_PARTITIONS: usize = 64;
/// Most groups in one system.
pub const MAX_GROUPS: usize = 64;
/// Most directed edges: every ordered pair of distinct partitions.
pub const MAX_EDGES: usize = MAX_PARTITIONS * (MAX_PARTITIONS - 1);
/// Longest partition or group name, in bytes.
pub const MAX_NAME: usize = 32;
/// Highest restart limit: each restart uses a generation and generations never wrap.
pub const MAX_RESTART_LIMIT: u32 = u16::MAX as u32;

/// Rate limits of one edge: a token bucket for messages and one for bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Sustained messages per second.
    pub msgs_per_s: u64,
    /// Sustained payload bytes per second.
    pub bytes_per_s: u64,
    /// Messages that may be sent at once above the sustained rate.
    pub burst_msgs: u64,
    /// Bytes that may be sent at once above the sustained rate.
    pub burst_bytes: u64,
}

/// An inclusive range of message tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagRange {
    /// Lowest allowed tag.
    pub lo: u32,
    /// Highest allowed tag (inclusive).
    pub hi: u32,
}

/// What one directed edge allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeRights {
    /// Allowed tags; `None` allows every tag.
    pub tags: Option<TagRange>,
    /// Whether non-blocking sends (`isend`) are allowed on this edge.
    pub nonblocking: bool,
    /// Rate limits, metered by the monitor.
    pub quota: Quota,
}

/// A granted directed edge: `from` may send to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    /// Number of the edge in the full table (the same in every view).
    pub id: EdgeId,
    /// Sending partition's index.
    pub from: u16,
    /// Receiving partition's index.
    pub to: u16,
    /// What the edge allows.
    pub rights: EdgeRights,
}

/// What the monitor does with a partition that faulted or was convicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Kill it and leave it dead.
    Stop,
    /// Kill it and start a new incarnation, at most `limit` times in all.
    Restart {
        /// Most restarts (1..=[`MAX_RESTART_LIMIT`]).
        limit: u32,
    },
}

/// A partition of the system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Index (rank in the world), stable across restarts.
    pub index: u16,
    /// Name from the manifest.
    pub name: String,
    /// Current incarnation.
    pub generation: u16,
    /// Failure policy.
    pub policy: Policy,
    /// Whether this is the monitor partition (never convicted, cannot be restarted).
    pub monitor: bool,
}

impl Partition {
    /// The partition's current generational id.
    pub fn id(&self) -> PartitionId {
        PartitionId::new(self.index, self.generation)
    }
}

/// A named set of partitions (the base of a communicator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// Index of the group.
    pub index: u16,
    /// Name from the manifest.
    pub name: String,
    /// Members: bit `i` set for partition index `i`.
    pub members: u64,
}

/// Why a send was refused; the interconnect turns any of these into `PermissionDenied`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Denied {
    /// No edge from the sender to the destination.
    NoEdge = 1,
    /// The edge exists but the tag is outside its range.
    TagOutOfRange = 2,
    /// The edge exists but forbids non-blocking sends.
    NonBlockingForbidden = 3,
}

/// An invalid rights table; every variant names the offending value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RightsError {
    /// A name is empty, too long or has characters other than `a-z 0-9 _ -`.
    BadName {
        /// The name (lossily decoded).
        name: String,
    },
    /// Two partitions or groups share a name.
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A name refers to no partition (or group, where groups are allowed).
    UnknownName {
        /// The name.
        name: String,
        /// Where it appeared, e.g. "edge source".
        role: &'static str,
    },
    /// An index refers to no partition of the table.
    UnknownIndex {
        /// The index.
        index: u16,
        /// Where it appeared.
        role: &'static str,
    },
    /// More partitions, groups or edges than the table holds.
    TooMany {
        /// "partitions", "groups" or "edges".
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// An edge from a partition to itself.
    SelfEdge {
        /// The partition.
        name: String,
    },
    /// The same directed pair granted twice (directly or through groups).
    DuplicateEdge {
        /// Sender.
        from: String,
        /// Receiver.
        to: String,
    },
    /// A grant between groups that yields no pair of distinct partitions.
    EmptyGrant {
        /// Sender name.
        from: String,
        /// Receiver name.
        to: String,
    },
    /// A group with a bad index, no members or an unknown member.
    BadGroup {
        /// The group.
        name: String,
        /// Why.
        why: &'static str,
    },
    /// A quota field is zero.
    ZeroQuota {
        /// Sender.
        from: String,
        /// Receiver.
        to: String,
        /// The zero field.
        field: &'static str,
    },
    /// A tag range with `lo > hi`.
    EmptyTagRange {
        /// Sender.
        from: String,
        /// Receiver.
        to: String,
        /// Lowest tag.
        lo: u32,
        /// Highest tag.
        hi: u32,
    },
    /// A failure policy the monitor cannot carry out.
    BadPolicy {
        /// The partition.
        name: String,
        /// Why.
        why: &'static str,
    },
    /// Two edges share an id, or an id is out of range.
    BadEdge {
        /// The edge.
        id: EdgeId,
        /// Why.
        why: &'static str,
    },
}

impl fmt::Display for RightsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use RightsError::*;
        match self {
            BadName { name } => write!(
                f,
                "bad name {name:?}: want 1..={MAX_NAME} of a-z 0-9 _ -, starting with a letter"
            ),
            DuplicateName { name } => write!(f, "name {name:?} is used twice"),
            UnknownName { name, role } => write!(f, "{role} {name:?} names no known partition"),
            UnknownIndex { index, role } => write!(f, "{role} {index} is no known partition"),
            TooMany { what, max } => write!(f, "too many {what} (at most {max})"),
            SelfEdge { name } => write!(f, "edge from {name:?} to itself"),
            DuplicateEdge { from, to } => write!(f, "edge {from} -> {to} granted twice"),
            EmptyGrant { from, to } => write!(f, "grant {from} -> {to} yields no edge"),
            BadGroup { name, why } => write!(f, "group {name:?}: {why}"),
            ZeroQuota { from, to, field } => write!(f, "edge {from} -> {to}: {field} is zero"),
            EmptyTagRange { from, to, lo, hi } => {
                write!(f, "edge {from} -> {to}: empty tag range {lo}..={hi}")
            }
            BadPolicy { name, why } => write!(f, "policy of {name:?}: {why}"),
            BadEdge { id, why } => write!(f, "edge {id}: {why}"),
        }
    }
}

impl core::error::Error for RightsError {}

/// Collects the manifest's partitions, groups and grants by name; [`RightsBuilder::build`]
/// resolves and validates them. Partition indices follow the order of declaration.
#[derive(Clone, Debug, Default)]
pub struct RightsBuilder {
    partitions: Vec<(String, Policy)>,
    groups: Vec<(String, Vec<String>)>,
    grants: Vec<(String, String, EdgeRights)>,
    no_nonblocking: Vec<String>,
    monitor: Option<String>,
}

impl RightsBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares a partition; its index is the number of partitions declared before it.
    pub fn partition(&mut self, name: &str, policy: Policy) -> &mut Self {
        self.partitions.push((name.to_string(), policy));
        self
    }

    /// Declares a group of partitions.
    pub fn group(&mut self, name: &str, members: &[&str]) -> &mut Self {
        let members = members.iter().map(|m| m.to_string()).collect();
        self.groups.push((name.to_string(), members));
        self
    }

    /// Grants `from` the right to send to `to`; each may name a partition or a group (a
    /// group grants every ordered pair of distinct partitions).
    pub fn allow(&mut self, from: &str, to: &str, rights: EdgeRights) -> &mut Self {
        self.grants.push((from.to_string(), to.to_string(), rights));
        self
    }

    /// Marks `partition` as the monitor partition (its policy must be stop).
    pub fn monitor(&mut self, partition: &str) -> &mut Self {
        self.monitor = Some(partition.to_string());
        self
    }

    /// Forbids non-blocking sends on every edge from `partition`.
    pub fn forbid_nonblocking(&mut self, partition: &str) -> &mut Self {
        self.no_nonblocking.push(partition.to_string());
        self
    }

    /// Resolves names and validates the table.
    pub fn build(&self) -> Result<RightsTable, RightsError> {
        let mut table = RightsTable::default();
        if self.partitions.len() > MAX_PARTITIONS {
            return Err(RightsError::TooMany {
                what: "partitions",
                max: MAX_PARTITIONS,
            });
        }
        for (index, (name, policy)) in self.partitions.iter().enumerate() {
            let (name, policy) = (name.clone(), *policy);
            table.partitions.push(Partition {
                index: index as u16,
                name,
                generation: 0,
                monitor: false,
                policy,
            });
        }
        for (index, (name, members)) in self.groups.iter().enumerate() {
            let mut mask = 0;
            for member in members {
                mask |= 1 << table.lookup(member, "group member")?;
            }
            table.groups.push(Group {
                index: index as u16,
                name: name.clone(),
                members: mask,
            });
        }
        table.check_names()?;
        for (from, to, rights) in &self.grants {
            let senders = table.resolve(from, "edge source")?;
            let receivers = table.resolve(to, "edge destination")?;
            if from == to && senders.count_ones() == 1 {
                return Err(RightsError::SelfEdge { name: from.clone() });
            }
            let before = table.edges.len();
            for f in bits(senders) {
                for t in bits(receivers).filter(|&t| t != f) {
                    if table.edge(f, t).is_some() {
                        let (from, to) = (table.name(f), table.name(t));
                        return Err(RightsError::DuplicateEdge { from, to });
                    }
                    let id = EdgeId(table.edges.len() as u16);
                    table.edges.push(Edge {
                        id,
                        from: f,
                        to: t,
                        rights: *rights,
                    });
                }
            }
            if table.edges.len() == before {
                return Err(RightsError::EmptyGrant {
                    from: from.clone(),
                    to: to.clone(),
                });
            }
        }
        if let Some(name) = &self.monitor {
            let index = table.lookup(name, "monitor partition")?;
            table.partitions[index as usize].monitor = true;
        }
        for name in &self.no_nonblocking {
            let index = table.lookup(name, "forbid-nonblocking partition")?;
            for edge in table.edges.iter_mut().filter(|e| e.from == index) {
                edge.rights.nonblocking = false;
            }
        }
        table.validate()?;
        Ok(table)
    }
}

/// Indices of the set bits of a mask.
fn bits(mask: u64) -> impl Iterator<Item = u16> {
    (0..64u16).filter(move |i| mask & (1 << i) != 0)
}

/// Whether `name` is a valid partition or group name.
pub(crate) fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-".contains(c))
}

/// The rights of a whole system. (A partition learns its own channels' rights from
/// their control blocks: `interconnect::layout::publish`, [`RightsTable::channel_rights`].)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RightsTable {
    pub(crate) partitions: Vec<Partition>,
    pub(crate) groups: Vec<Group>,
    pub(crate) edges: Vec<Edge>,
}

impl RightsTable {
    /// The known partitions, by increasing index.
    pub fn partitions(&self) -> &[Partition] {
        &self.partitions
    }

    /// The known groups.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The known edges.
    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// The partition with this index.
    pub fn partition(&self, index: u16) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.index == index)
    }

    /// The edge from `from` to `to`.
    pub fn edge(&self, from: u16, to: u16) -> Option<&Edge> {
        self.edges.iter().find(|e| e.from == from && e.to == to)
    }

    /// The edge with this id.
    pub fn edge_by_id(&self, id: EdgeId) -> Option<&Edge> {
        self.edges.iter().find(|e| e.id == id)
    }

    /// Index of the partition named `name`.
    pub fn index_of(&self, name: &str) -> Option<u16> {
        self.partitions
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.index)
    }

    /// The rights check: may `from` send `tag` to `to`, blocking or not? Returns the edge
    /// to send on.
    pub fn check_send(
        &self,
        from: u16,
        to: u16,
        tag: u32,
        nonblocking: bool,
    ) -> Result<EdgeId, Denied> {
        let edge = self.edge(from, to).ok_or(Denied::NoEdge)?;
        if edge.rights.tags.is_some_and(|r| tag < r.lo || tag > r.hi) {
            return Err(Denied::TagOutOfRange);
        }
        if nonblocking && !edge.rights.nonblocking {
            return Err(Denied::NonBlockingForbidden);
        }
        Ok(edge.id)
    }

    /// The send rights of both ends of the channel between partitions `ends` (side 0
    /// first), as its control block publishes them (`interconnect::layout::publish`):
    /// an end with no edge to the other may not send.
    pub fn channel_rights(&self, ends: [u16; 2]) -> [interconnect::Rights; 2] {
        let side = |from: u16, to: u16| {
            let e = self.edge(from, to);
            interconnect::Rights {
                send: e.is_some(),
                recv: self.edge(to, from).is_some(),
                tags: match e.and_then(|e| e.rights.tags) {
                    Some(t) => (t.lo, t.hi),
                    None => (0, interconnect::ANY_TAG - 1),
                },
                nonblocking: e.is_some_and(|e| e.rights.nonblocking),
            }
        };
        [side(ends[0], ends[1]), side(ends[1], ends[0])]
    }

    /// Records a new incarnation of a partition (done by the supervisor on restart).
    pub(crate) fn set_generation(&mut self, id: PartitionId) {
        if let Some(p) = self.partitions.iter_mut().find(|p| p.index == id.index) {
            p.generation = id.generation;
        }
    }

    fn name(&self, index: u16) -> String {
        self.partition(index)
            .map_or_else(|| alloc::format!("#{index}"), |p| p.name.clone())
    }

    fn lookup(&self, name: &str, role: &'static str) -> Result<u16, RightsError> {
        let name = name.to_string();
        self.index_of(&name)
            .ok_or(RightsError::UnknownName { name, role })
    }

    /// A partition's bit, or a group's members.
    fn resolve(&self, name: &str, role: &'static str) -> Result<u64, RightsError> {
        if let Some(group) = self.groups.iter().find(|g| g.name == name) {
            return Ok(group.members);
        }
        Ok(1 << self.lookup(name, role)?)
    }

    /// Names are valid and unique across partitions and groups.
    fn check_names(&self) -> Result<(), RightsError> {
        use RightsError::*;
        let mut names: Vec<&str> = Vec::new();
        let named = self.partitions.iter().map(|p| &p.name);
        for name in named.chain(self.groups.iter().map(|g| &g.name)) {
            if !valid_name(name) {
                return Err(BadName { name: name.clone() });
            }
            if names.contains(&name.as_str()) {
                return Err(DuplicateName { name: name.clone() });
            }
            names.push(name);
        }
        Ok(())
    }

    /// Checks every invariant; used by the builder and by the decoder.
    pub(crate) fn validate(&self) -> Result<(), RightsError> {
        use RightsError::*;
        let limits = [
            ("partitions", self.partitions.len(), MAX_PARTITIONS),
            ("groups", self.groups.len(), MAX_GROUPS),
            ("edges", self.edges.len(), MAX_EDGES),
        ];
        if let Some(&(what, _, max)) = limits.iter().find(|(_, n, max)| n > max) {
            return Err(TooMany { what, max });
        }
        let mut known: u64 = 0;
        for (i, p) in self.partitions.iter().enumerate() {
            let sorted = i == 0 || self.partitions[i - 1].index < p.index;
            if p.index as usize >= MAX_PARTITIONS || !sorted {
                return Err(UnknownIndex {
                    index: p.index,
                    role: "partition",
                });
            }
            known |= 1 << p.index;
            let why = match p.policy {
                Policy::Restart { .. } if p.monitor => "the monitor cannot restart itself",
                Policy::Restart { limit: 0 } => "restart limit 0: say stop",
                Policy::Restart { limit } if limit > MAX_RESTART_LIMIT => "limit beyond 65535",
                _ if self.partitions[..i].iter().any(|o| o.monitor) && p.monitor => {
                    "a second monitor"
                }
                _ => continue,
            };
            return Err(BadPolicy {
                name: p.name.clone(),
                why,
            });
        }
        self.check_names()?;
        for (i, g) in self.groups.iter().enumerate() {
            let reused = self.groups[..i].iter().any(|o| o.index == g.index);
            let why = match () {
                _ if g.index as usize >= MAX_GROUPS || reused => "index out of range or reused",
                _ if g.members == 0 => "no members",
                _ if g.members & !known != 0 => "unknown member index",
                _ => continue,
            };
            return Err(BadGroup {
                name: g.name.clone(),
                why,
            });
        }
        for (i, e) in self.edges.iter().enumerate() {
            for (index, role) in [(e.from, "edge source"), (e.to, "edge destination")] {
                if self.partition(index).is_none() {
                    return Err(UnknownIndex { index, role });
                }
            }
            let (from, to) = (self.name(e.from), self.name(e.to));
            if e.from == e.to {
                return Err(SelfEdge { name: from });
            }
            let earlier = &self.edges[..i];
            if earlier.iter().any(|o| o.from == e.from && o.to == e.to) {
                return Err(DuplicateEdge { from, to });
            }
            let why = match () {
                _ if earlier.iter().any(|o| o.id == e.id) => "id used twice",
                _ if e.id.0 as usize >= MAX_EDGES => "id out of range",
                _ => "",
            };
            if !why.is_empty() {
                return Err(BadEdge { id: e.id, why });
            }
            let q = e.rights.quota;
            let fields = [
                ("msgs_per_s", q.msgs_per_s),
                ("bytes_per_s", q.bytes_per_s),
                ("burst_msgs", q.burst_msgs),
                ("burst_bytes", q.burst_bytes),
            ];
            if let Some(&(field, _)) = fields.iter().find(|(_, v)| *v == 0) {
                return Err(ZeroQuota { from, to, field });
            }
            if let Some(TagRange { lo, hi }) = e.rights.tags.filter(|t| t.lo > t.hi) {
                return Err(EmptyTagRange { from, to, lo, hi });
            }
        }
        Ok(())
    }
}

impl fmt::Display for RightsTable {
    /// The table as `vmpi check` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "rights table")?;
        writeln!(f, "partitions:")?;
        for p in &self.partitions {
            let policy = match p.policy {
                Policy::Stop => String::from("stop"),
                Policy::Restart { limit } => alloc::format!("restart (limit {limit})"),
            };
            let role = if p.monitor { " (monitor)" } else { "" };
            writeln!(
                f,
                "  {:>2} {:<16} gen {:<3} on failure: {policy}{role}",
                p.index, p.name, p.generation
            )?;
        }
        writeln!(f, "groups:")?;
        for g in &self.groups {
            let members: Vec<String> = bits(g.members).map(|i| self.name(i)).collect();
            writeln!(f, "  {:<16} = {{{}}}", g.name, members.join(", "))?;
        }
        writeln!(f, "edges:")?;
        for e in &self.edges {
            let (r, q) = (e.rights, e.rights.quota);
            let pair = alloc::format!("{} -> {}", self.name(e.from), self.name(e.to));
            write!(f, "  {:>5} {pair:<28} ", e.id)?;
            match r.tags {
                Some(t) => write!(f, "tags {}..={}", t.lo, t.hi)?,
                None => write!(f, "any tag")?,
            }
            let nb = if r.nonblocking {
                "isend ok"
            } else {
                "blocking only"
            };
            writeln!(
                f,
                ", {nb}, {} msg/s (burst {}), {} B/s (burst {})",
                q.msgs_per_s, q.burst_msgs, q.bytes_per_s, q.burst_bytes
            )?;
        }
        Ok(())
    }
}
