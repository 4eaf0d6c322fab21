//! vmpi's monitor: the rights table, the meters, the verdicts and the supervision of
//! partitions, as pure logic (`no_std` + `alloc`, no clock, no shared memory, no I/O).
//!
//! The monitor partition runs a loop around [`Monitor`]: it polls the producer counters
//! of every ring ([`meter::ChannelCounters`]) with the current time, reads each
//! partition's control channel and the launcher's, and carries out the [`Action`]s it
//! gets back (write control words, ring doorbells, send [`control::Command`]s to the
//! launcher, log [`Verdict`]s).
//!
//! | module | what |
//! |---|---|
//! | [`rights`] | the rights table, its builder and validation, each channel's published rights, the send check |
//! | [`wire`] | the binary image of a table (launcher to monitor) and its defensive decoder |
//! | [`meter`] | token buckets per edge fed by producer counters; flood and tamper detection |
//! | [`control`] | fixed-size control records between partitions, launcher and monitor |
//! | [`region`] | the layout of the control region between the launcher and the monitor partition |
//! | [`supervisor`] | generational ids, failure policies, the decisions; [`Monitor`] ties it up |
//! | [`verdict`] | verdicts with their evidence |
//!
//! ```
//! use monitor::rights::{EdgeRights, Policy, Quota, RightsBuilder};
//! let quota = Quota { msgs_per_s: 10_000, bytes_per_s: 1 << 20, burst_msgs: 100, burst_bytes: 1 << 16 };
//! let rights = EdgeRights { tags: None, nonblocking: true, quota };
//! let table = RightsBuilder::new()
//!     .partition("client", Policy::Stop)
//!     .partition("fs", Policy::Restart { limit: 3 })
//!     .allow("client", "fs", rights)
//!     .allow("fs", "client", rights)
//!     .build()
//!     .unwrap();
//! assert_eq!(monitor::rights::RightsTable::decode(&table.encode()), Ok(table));
//! ```
//!
//! # Assumptions
//!
//! - The monitor's clock (`now_ns` everywhere) is monotonic; a time going backwards is
//!   taken as no time passing. The monitor polls often enough for its deadlines: a
//!   flooder is convicted at the first poll after it exceeds its burst, so polling every
//!   millisecond revokes it within about a millisecond of crossing.
//! - Producer counters are cumulative, 64-bit (they never wrap in practice) and written
//!   by the sender: they are allegations. A counter going backwards, or rising faster
//!   than [`meter::MeterConfig`]'s physical ceilings allow, convicts the sender of
//!   tampering. A sender that under-reports delivers nothing, since the receiver reads
//!   up to the counter. A counter that moves at all on a channel direction no edge
//!   grants convicts its sender ([`Monitor::unauthorized`]).
//! - Each channel's control block carries the send rights of both its ends
//!   ([`RightsTable::channel_rights`]), published by the monitor partition at start and
//!   on every reopen: a partition, which maps only its own channels, learns only its
//!   own rights.
//! - Every channel's counters start at zero when the monitor starts and when a reopened
//!   ring is reset; the executor tells [`Monitor::reopened`] the base it sees.
//! - The owner of a control channel is known from the channel, never from the record.
//!   A record that does not decode, or names another partition, convicts the owner.
//!   An accusation against a peer is logged, never acted upon.
//! - The launcher is trusted to carry out kills and restarts and to report exits, but
//!   its records are still decoded strictly.
//! - Generations start at 0 and never wrap: a restart that would need generation 65536
//!   stops the partition instead, so two incarnations never share an id.
//! - At most 64 partitions and 64 groups; names are `a-z 0-9 _ -`, at most 32 bytes.
//!   A group here is a set of partitions (who may be granted what); the order of its
//!   members (group ranks of a communicator) comes from the manifest, not from here.
//! - One partition may be marked as the monitor: it is never convicted and its policy
//!   must be stop (it cannot restart itself; the launcher handles its death).
//! - A verdict carries out the failure policy: revoke every edge of the culprit, kill
//!   it, then restart it as the next generation or leave it dead. Floods can be dealt
//!   with more mildly ([`FloodAction`]); tampering and hostile records cannot. A channel
//!   revoked for a flood that an end opens again convicts the flood's sender
//!   ([`Monitor::unrevoked`]): only the two ends can write there.
//! - Little-endian, fixed-size records for everything that crosses a partition boundary.
#![no_std]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod control;
pub mod id;
pub mod meter;
pub mod region;
pub mod rights;
pub mod supervisor;
pub mod verdict;
pub mod wire;

pub use id::{EdgeId, PartitionId};
pub use rights::{RightsBuilder, RightsTable};
pub use supervisor::{Action, FloodAction, Monitor, Supervisor, SupervisorConfig};
pub use verdict::Verdict;
