//! The published encoding of a rights table, and its defensive decoder.
//!
//! The launcher writes the image into the control region it shares with the monitor
//! partition, which decodes it with [`RightsTable::decode`]: that never panics and
//! rejects anything that is not exactly a valid table. All integers are little-endian and
//! unaligned; every record has a fixed size:
//!
//! ```text
//! header    32 B  magic "VMPR", version u16 = 2, reserved u16 = 0,
//!                 partitions u16, groups u16, edges u16, reserved u16 = 0,
//!                 total_len u32, checksum u32 (FNV-1a of the records), reserved [u8; 8] = 0
//! partition 48 B  index u16, generation u16, policy u32 (1 stop, 2 restart),
//!                 restart limit u32 (0 for stop), flags u32 (bit 0 monitor), name [u8; 32]
//! group     48 B  index u16, reserved u16 + u32 = 0, members u64, name [u8; 32]
//! edge      48 B  id u16, from u16, to u16, flags u16 (bit 0 tag range, bit 1 isend ok),
//!                 tag_lo u32, tag_hi u32 (both 0 without range), msgs/s u64,
//!                 bytes/s u64, burst msgs u64, burst bytes u64
//! ```
//!
//! Records follow the header in that order. Names are NUL-padded; bytes after the first
//! NUL must be NUL. The decoded table passes the same validation as a built one.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::id::EdgeId;
use crate::rights::{
    Edge, EdgeRights, Group, MAX_EDGES, MAX_GROUPS, MAX_NAME, MAX_PARTITIONS, Partition, Policy,
    Quota, RightsError, RightsTable, TagRange,
};

/// First word of a rights image: "VMPR".
pub const RIGHTS_MAGIC: u32 = u32::from_le_bytes(*b"VMPR");
/// Version of the rights image format.
pub const RIGHTS_VERSION: u16 = 2;
/// Size of the header.
pub const HEADER_LEN: usize = 32;
/// Size of every record after the header.
pub const RECORD_LEN: usize = 48;
const FLAG_TAGS: u16 = 1;
const FLAG_NONBLOCKING: u16 = 2;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Header {
    magic: U32,
    version: U16,
    reserved2: U16,
    partitions: U16,
    groups: U16,
    edges: U16,
    reserved0: U16,
    total_len: U32,
    checksum: U32,
    reserved1: [u8; 8],
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct PartitionRec {
    index: U16,
    generation: U16,
    policy: U32,
    limit: U32,
    flags: U32,
    name: [u8; MAX_NAME],
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct GroupRec {
    index: U16,
    reserved0: U16,
    reserved1: U32,
    members: U64,
    name: [u8; MAX_NAME],
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct EdgeRec {
    id: U16,
    from: U16,
    to: U16,
    flags: U16,
    tag_lo: U32,
    tag_hi: U32,
    msgs_per_s: U64,
    bytes_per_s: U64,
    burst_msgs: U64,
    burst_bytes: U64,
}

const _: () = assert!(size_of::<Header>() == HEADER_LEN);
const _: () = assert!(size_of::<PartitionRec>() == RECORD_LEN);
const _: () = assert!(size_of::<GroupRec>() == RECORD_LEN);
const _: () = assert!(size_of::<EdgeRec>() == RECORD_LEN);

/// Why a rights image was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the header or its `total_len` announce.
    Short {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        got: usize,
    },
    /// Wrong magic word.
    BadMagic(u32),
    /// Unknown format version.
    BadVersion(u16),
    /// A record count beyond the table's limits, or `total_len` disagreeing with the counts.
    BadCount,
    /// The records do not match the checksum.
    BadChecksum,
    /// A reserved field, name padding or unused field is not zero, at this byte offset.
    NonZero {
        /// Offset of the record holding the field.
        offset: usize,
    },
    /// Unknown policy code at this byte offset.
    BadPolicy {
        /// Offset of the record.
        offset: usize,
    },
    /// Unknown partition or edge flags at this byte offset.
    BadFlags {
        /// Offset of the record.
        offset: usize,
    },
    /// The records decode but do not form a valid table.
    Invalid(RightsError),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Short { need, got } => write!(f, "rights image: need {need} bytes, got {got}"),
            Self::BadMagic(m) => write!(f, "rights image: bad magic {m:#010x}"),
            Self::BadVersion(v) => write!(f, "rights image: unknown version {v}"),
            Self::BadCount => write!(f, "rights image: record counts out of range"),
            Self::BadChecksum => write!(f, "rights image: checksum mismatch"),
            Self::NonZero { offset } => write!(f, "rights image: nonzero reserved at {offset}"),
            Self::BadPolicy { offset } => write!(f, "rights image: bad policy at {offset}"),
            Self::BadFlags { offset } => write!(f, "rights image: bad flags at {offset}"),
            Self::Invalid(e) => write!(f, "rights image: {e}"),
        }
    }
}

impl core::error::Error for DecodeError {}

/// FNV-1a, 32 bits.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, &b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

fn encode_name(name: &str) -> [u8; MAX_NAME] {
    let mut out = [0; MAX_NAME];
    let n = name.len().min(MAX_NAME);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

fn decode_name(raw: &[u8; MAX_NAME], offset: usize) -> Result<String, DecodeError> {
    let len = raw.iter().position(|&b| b == 0).unwrap_or(MAX_NAME);
    if raw[len..].iter().any(|&b| b != 0) {
        return Err(DecodeError::NonZero { offset });
    }
    Ok(String::from_utf8_lossy(&raw[..len]).into_owned())
}

impl RightsTable {
    /// Size of [`RightsTable::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + RECORD_LEN * (self.partitions.len() + self.groups.len() + self.edges.len())
    }

    /// Encodes the table (or view) into its published image.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.encoded_len() - HEADER_LEN);
        for p in &self.partitions {
            let (policy, limit) = match p.policy {
                Policy::Stop => (1, 0),
                Policy::Restart { limit } => (2, limit),
            };
            let rec = PartitionRec {
                index: p.index.into(),
                generation: p.generation.into(),
                policy: U32::new(policy),
                limit: limit.into(),
                flags: U32::new(p.monitor as u32),
                name: encode_name(&p.name),
            };
            body.extend_from_slice(rec.as_bytes());
        }
        for g in &self.groups {
            let rec = GroupRec {
                index: g.index.into(),
                reserved0: U16::ZERO,
                reserved1: U32::ZERO,
                members: g.members.into(),
                name: encode_name(&g.name),
            };
            body.extend_from_slice(rec.as_bytes());
        }
        for e in &self.edges {
            let (r, q) = (e.rights, e.rights.quota);
            let tags = r.tags.unwrap_or(TagRange { lo: 0, hi: 0 });
            let flags = if r.tags.is_some() { FLAG_TAGS } else { 0 }
                | if r.nonblocking { FLAG_NONBLOCKING } else { 0 };
            let rec = EdgeRec {
                id: e.id.0.into(),
                from: e.from.into(),
                to: e.to.into(),
                flags: flags.into(),
                tag_lo: tags.lo.into(),
                tag_hi: tags.hi.into(),
                msgs_per_s: q.msgs_per_s.into(),
                bytes_per_s: q.bytes_per_s.into(),
                burst_msgs: q.burst_msgs.into(),
                burst_bytes: q.burst_bytes.into(),
            };
            body.extend_from_slice(rec.as_bytes());
        }
        let header = Header {
            magic: RIGHTS_MAGIC.into(),
            version: RIGHTS_VERSION.into(),
            reserved2: U16::ZERO,
            partitions: (self.partitions.len() as u16).into(),
            groups: (self.groups.len() as u16).into(),
            edges: (self.edges.len() as u16).into(),
            reserved0: U16::ZERO,
            total_len: (self.encoded_len() as u32).into(),
            checksum: fnv1a(&body).into(),
            reserved1: [0; 8],
        };
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes a published image. Bytes after `total_len` are ignored (the shared region
    /// may be larger). Never panics: anything but a valid table is an error.
    pub fn decode(bytes: &[u8]) -> Result<RightsTable, DecodeError> {
        let short = |need| DecodeError::Short {
            need,
            got: bytes.len(),
        };
        let (h, _) = Header::read_from_prefix(bytes).map_err(|_| short(HEADER_LEN))?;
        if h.magic.get() != RIGHTS_MAGIC {
            return Err(DecodeError::BadMagic(h.magic.get()));
        }
        if h.version.get() != RIGHTS_VERSION {
            return Err(DecodeError::BadVersion(h.version.get()));
        }
        if h.reserved0.get() != 0 || h.reserved2.get() != 0 || h.reserved1 != [0; 8] {
            return Err(DecodeError::NonZero { offset: 0 });
        }
        let (np, ng, ne) = (
            h.partitions.get() as usize,
            h.groups.get() as usize,
            h.edges.get() as usize,
        );
        let total = HEADER_LEN + RECORD_LEN * (np + ng + ne);
        if np > MAX_PARTITIONS || ng > MAX_GROUPS || ne > MAX_EDGES {
            return Err(DecodeError::BadCount);
        }
        if h.total_len.get() as usize != total {
            return Err(DecodeError::BadCount);
        }
        let body = bytes.get(HEADER_LEN..total).ok_or(short(total))?;
        if fnv1a(body) != h.checksum.get() {
            return Err(DecodeError::BadChecksum);
        }
        let mut records = body.chunks_exact(RECORD_LEN).enumerate();
        let mut next = || {
            records
                .next()
                .map(|(i, r)| (HEADER_LEN + i * RECORD_LEN, r))
        };
        let mut table = RightsTable::default();
        for (offset, raw) in (0..np).filter_map(|_| next()) {
            let rec = PartitionRec::read_from_bytes(raw).map_err(|_| short(total))?;
            let policy = match (rec.policy.get(), rec.limit.get()) {
                (1, 0) => Policy::Stop,
                (2, limit) => Policy::Restart { limit },
                _ => return Err(DecodeError::BadPolicy { offset }),
            };
            if rec.flags.get() > 1 {
                return Err(DecodeError::BadFlags { offset });
            }
            table.partitions.push(Partition {
                index: rec.index.get(),
                name: decode_name(&rec.name, offset)?,
                generation: rec.generation.get(),
                policy,
                monitor: rec.flags.get() == 1,
            });
        }
        for (offset, raw) in (0..ng).filter_map(|_| next()) {
            let rec = GroupRec::read_from_bytes(raw).map_err(|_| short(total))?;
            if rec.reserved0.get() != 0 || rec.reserved1.get() != 0 {
                return Err(DecodeError::NonZero { offset });
            }
            let name = decode_name(&rec.name, offset)?;
            table.groups.push(Group {
                index: rec.index.get(),
                name,
                members: rec.members.get(),
            });
        }
        for (offset, raw) in (0..ne).filter_map(|_| next()) {
            let rec = EdgeRec::read_from_bytes(raw).map_err(|_| short(total))?;
            let flags = rec.flags.get();
            if flags & !(FLAG_TAGS | FLAG_NONBLOCKING) != 0 {
                return Err(DecodeError::BadFlags { offset });
            }
            let tags = TagRange {
                lo: rec.tag_lo.get(),
                hi: rec.tag_hi.get(),
            };
            if flags & FLAG_TAGS == 0 && (tags.lo != 0 || tags.hi != 0) {
                return Err(DecodeError::NonZero { offset });
            }
            let quota = Quota {
                msgs_per_s: rec.msgs_per_s.get(),
                bytes_per_s: rec.bytes_per_s.get(),
                burst_msgs: rec.burst_msgs.get(),
                burst_bytes: rec.burst_bytes.get(),
            };
            let rights = EdgeRights {
                tags: Some(tags).filter(|_| flags & FLAG_TAGS != 0),
                nonblocking: flags & FLAG_NONBLOCKING != 0,
                quota,
            };
            let (id, from, to) = (EdgeId(rec.id.get()), rec.from.get(), rec.to.get());
            table.edges.push(Edge {
                id,
                from,
                to,
                rights,
            });
        }
        table.validate().map_err(DecodeError::Invalid)?;
        Ok(table)
    }
}
