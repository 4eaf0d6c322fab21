//! The control protocol: fixed-size records between the partitions, the launcher and
//! the monitor.
//!
//! Every record is 32 bytes, little-endian, unaligned:
//!
//! ```text
//! magic u32 "VMC1" | kind u32 | subject u32 (PartitionId::to_u32) | code u32 | aux u32
//! | reserved u32 = 0 | arg u64
//! ```
//!
//! | kind | direction | subject | code | aux | arg |
//! |---|---|---|---|---|---|
//! | 1 heartbeat | partition → monitor | sender | 0 | 0 | 0 |
//! | 2 fault | partition runtime → monitor | sender | [`FaultKind`] | 0 | detail (e.g. address) |
//! | 3 malformed | partition → monitor | sender | peer id | edge id | offset in the ring |
//! | 16 exited | launcher → monitor | partition | exit status | 0 | 0 |
//! | 32 kill | monitor → launcher | partition | 0 | 0 | 0 |
//! | 33 restart | monitor → launcher | new incarnation | 0 | 0 | 0 |
//!
//! The decoders are strict: any record that is not exactly one of these, for the
//! direction it came from, is [`Hostile`] and its content is not used.

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::id::{EdgeId, PartitionId};
use crate::rights::{MAX_EDGES, MAX_PARTITIONS};

/// First word of every control record: "VMC1".
pub const CONTROL_MAGIC: u32 = u32::from_le_bytes(*b"VMC1");
/// Size of a control record.
pub const CONTROL_LEN: usize = 32;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Default)]
#[repr(C)]
struct Record {
    magic: U32,
    kind: U32,
    subject: U32,
    code: U32,
    aux: U32,
    reserved: U32,
    arg: U64,
}

const _: () = assert!(size_of::<Record>() == CONTROL_LEN);

/// Record kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// A partition is alive.
    Heartbeat = 1,
    /// A partition's runtime caught a fault in its service.
    Fault = 2,
    /// A partition received a malformed message from a peer.
    Malformed = 3,
    /// The launcher saw a partition's VM exit.
    Exited = 16,
    /// The monitor asks the launcher to kill a VM.
    Kill = 32,
    /// The monitor asks the launcher to start a new incarnation.
    Restart = 33,
}

/// What a partition's runtime caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum FaultKind {
    /// The service panicked.
    Panic = 1,
    /// Page fault.
    PageFault = 2,
    /// General protection fault.
    GeneralProtection = 3,
    /// Invalid opcode.
    InvalidOpcode = 4,
    /// Division by zero.
    DivideError = 5,
    /// Stack overflow (guard page hit).
    StackOverflow = 6,
    /// Any other exception or an unexpected exit of the service.
    Other = 7,
}

impl FaultKind {
    /// The fault with this code.
    pub fn from_u32(code: u32) -> Option<Self> {
        use FaultKind::*;
        [
            Panic,
            PageFault,
            GeneralProtection,
            InvalidOpcode,
            DivideError,
            StackOverflow,
            Other,
        ]
        .into_iter()
        .find(|f| *f as u32 == code)
    }
}

/// Why a control record was refused. The sender is then treated as hostile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Hostile {
    /// The record is not [`CONTROL_LEN`] bytes.
    WrongLength = 1,
    /// The first word is not [`CONTROL_MAGIC`].
    BadMagic = 2,
    /// Unknown kind.
    UnknownKind = 3,
    /// A kind that may not come from this sender.
    WrongDirection = 4,
    /// A reserved or unused field is not zero.
    NonZero = 5,
    /// Unknown fault code.
    UnknownFault = 6,
    /// A partition index out of range.
    BadPartition = 7,
    /// An edge id out of range, or an edge that is not the sender's.
    BadEdge = 8,
    /// The record names another partition as its sender.
    Impersonation = 9,
}

/// A record a partition sends to the monitor on its control channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FromPartition {
    /// "I am alive."
    Heartbeat {
        /// Sender (as the sender believes itself to be).
        id: PartitionId,
    },
    /// The runtime caught a fault in the service.
    Fault {
        /// Sender.
        id: PartitionId,
        /// What was caught.
        fault: FaultKind,
        /// Detail, e.g. the faulting address.
        detail: u64,
    },
    /// A peer sent a malformed message (an allegation, not proof).
    Malformed {
        /// Sender (the receiver of the malformed message).
        id: PartitionId,
        /// The accused peer.
        peer: PartitionId,
        /// The edge it came on.
        edge: EdgeId,
        /// Offset in the ring.
        offset: u64,
    },
}

/// A record the launcher sends to the monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LauncherEvent {
    /// A partition's VM exited (crashed, or killed on the monitor's request).
    Exited {
        /// The incarnation that exited.
        id: PartitionId,
        /// Its exit status.
        status: u32,
    },
}

/// A record the monitor sends to the launcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Kill this incarnation's VM.
    Kill(PartitionId),
    /// Start this new incarnation (its predecessor was killed first).
    Restart(PartitionId),
}

fn record(kind: Kind, subject: PartitionId, code: u32, aux: u32, arg: u64) -> [u8; CONTROL_LEN] {
    let rec = Record {
        magic: CONTROL_MAGIC.into(),
        kind: (kind as u32).into(),
        subject: subject.to_u32().into(),
        code: code.into(),
        aux: aux.into(),
        reserved: U32::ZERO,
        arg: arg.into(),
    };
    let mut out = [0; CONTROL_LEN];
    out.copy_from_slice(rec.as_bytes());
    out
}

/// Checks what every record shares and returns kind, subject, code, aux, arg.
fn parse(bytes: &[u8]) -> Result<(Kind, PartitionId, u32, u32, u64), Hostile> {
    let rec = Record::read_from_bytes(bytes).map_err(|_| Hostile::WrongLength)?;
    if rec.magic.get() != CONTROL_MAGIC {
        return Err(Hostile::BadMagic);
    }
    if rec.reserved.get() != 0 {
        return Err(Hostile::NonZero);
    }
    let kind = match rec.kind.get() {
        1 => Kind::Heartbeat,
        2 => Kind::Fault,
        3 => Kind::Malformed,
        16 => Kind::Exited,
        32 => Kind::Kill,
        33 => Kind::Restart,
        _ => return Err(Hostile::UnknownKind),
    };
    let subject = PartitionId::from_u32(rec.subject.get());
    if subject.index as usize >= MAX_PARTITIONS {
        return Err(Hostile::BadPartition);
    }
    Ok((kind, subject, rec.code.get(), rec.aux.get(), rec.arg.get()))
}

/// `Ok` if every listed field is zero.
fn zero(fields: &[u64]) -> Result<(), Hostile> {
    if fields.iter().all(|&f| f == 0) {
        Ok(())
    } else {
        Err(Hostile::NonZero)
    }
}

impl FromPartition {
    /// Encodes the record.
    pub fn encode(&self) -> [u8; CONTROL_LEN] {
        match *self {
            Self::Heartbeat { id } => record(Kind::Heartbeat, id, 0, 0, 0),
            Self::Fault { id, fault, detail } => record(Kind::Fault, id, fault as u32, 0, detail),
            Self::Malformed {
                id,
                peer,
                edge,
                offset,
            } => record(Kind::Malformed, id, peer.to_u32(), edge.0 as u32, offset),
        }
    }

    /// Decodes a record read from a partition's control channel.
    pub fn decode(bytes: &[u8]) -> Result<Self, Hostile> {
        let (kind, id, code, aux, arg) = parse(bytes)?;
        match kind {
            Kind::Heartbeat => {
                zero(&[code as u64, aux as u64, arg]).map(|_| Self::Heartbeat { id })
            }
            Kind::Fault => {
                zero(&[aux as u64])?;
                let fault = FaultKind::from_u32(code).ok_or(Hostile::UnknownFault)?;
                Ok(Self::Fault {
                    id,
                    fault,
                    detail: arg,
                })
            }
            Kind::Malformed => {
                let peer = PartitionId::from_u32(code);
                if peer.index as usize >= MAX_PARTITIONS || peer.index == id.index {
                    return Err(Hostile::BadPartition);
                }
                if aux as usize >= MAX_EDGES {
                    return Err(Hostile::BadEdge);
                }
                Ok(Self::Malformed {
                    id,
                    peer,
                    edge: EdgeId(aux as u16),
                    offset: arg,
                })
            }
            _ => Err(Hostile::WrongDirection),
        }
    }
}

impl LauncherEvent {
    /// Encodes the record.
    pub fn encode(&self) -> [u8; CONTROL_LEN] {
        let Self::Exited { id, status } = *self;
        record(Kind::Exited, id, status, 0, 0)
    }

    /// Decodes a record from the launcher.
    pub fn decode(bytes: &[u8]) -> Result<Self, Hostile> {
        match parse(bytes)? {
            (Kind::Exited, id, status, aux, arg) => {
                zero(&[aux as u64, arg]).map(|_| Self::Exited { id, status })
            }
            _ => Err(Hostile::WrongDirection),
        }
    }
}

impl Command {
    /// Encodes the record.
    pub fn encode(&self) -> [u8; CONTROL_LEN] {
        match *self {
            Self::Kill(id) => record(Kind::Kill, id, 0, 0, 0),
            Self::Restart(id) => record(Kind::Restart, id, 0, 0, 0),
        }
    }

    /// Decodes a record from the monitor (used by the launcher).
    pub fn decode(bytes: &[u8]) -> Result<Self, Hostile> {
        let (kind, id, code, aux, arg) = parse(bytes)?;
        zero(&[code as u64, aux as u64, arg])?;
        match kind {
            Kind::Kill => Ok(Self::Kill(id)),
            Kind::Restart => Ok(Self::Restart(id)),
            _ => Err(Hostile::WrongDirection),
        }
    }
}
