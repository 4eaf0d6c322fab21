//! Generational partition ids and edge ids.

use core::fmt;

/// A partition as one incarnation: its index in the rights table and its generation.
///
/// A restart gives the partition the same index and the next generation, so an id held
/// by a peer from before the restart no longer matches (`Supervisor::is_current`) and
/// turns into `PeerDead`, never into a message for or from the new incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    /// Index in the rights table (stable across restarts).
    pub index: u16,
    /// Incarnation number, starting at 0 and increased by one on every restart.
    pub generation: u16,
}

impl PartitionId {
    /// The id of incarnation `generation` of partition `index`.
    pub const fn new(index: u16, generation: u16) -> Self {
        Self { index, generation }
    }

    /// Packs the id into one word: index in the low half, generation in the high half.
    pub const fn to_u32(self) -> u32 {
        self.index as u32 | (self.generation as u32) << 16
    }

    /// Unpacks an id packed by [`PartitionId::to_u32`].
    pub const fn from_u32(word: u32) -> Self {
        Self {
            index: word as u16,
            generation: (word >> 16) as u16,
        }
    }

    /// The id of the next incarnation, or `None` once the generations are used up
    /// (generations never wrap, so they never collide).
    pub fn next(self) -> Option<Self> {
        Some(Self {
            index: self.index,
            generation: self.generation.checked_add(1)?,
        })
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}.g{}", self.index, self.generation)
    }
}

/// A directed rights edge (one direction of a channel), numbered by the rights table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgeId(pub u16);

impl fmt::Display for EdgeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}
