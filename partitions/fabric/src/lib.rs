//! The interconnect inside a partition: turns the launcher's command line into an
//! [`interconnect::Endpoint`] over the partition's ivshmem channels, with the
//! runtime's doorbells and deadline waits as the [`interconnect::Platform`].
//!
//! ```ignore
//! let mut ep = fabric::endpoint_or_exit();     // logs and exits on a bad set-up
//! let w = ep.world();
//! ep.send(&w, 1, 7, b"hello", ep.after_ms(1_000))?;
//! ```
//!
//! The same API and the same [`interconnect::Error`] values as on the host: a pair
//! without a channel, a direction without a right, a tag outside the granted range,
//! a non-blocking send where only blocking ones are granted all give
//! `PermissionDenied` before any memory is touched.
//!
//! # Command line (see `images/src/guest_args.rs`, the one definition)
//! `rank=R size=N [groups=NAME@ID:R,R,...;...] ch=SLOT:PEER:SIDE:TX:RX ...`
//! - Each `ch=` names the PCI slot (bus 0) of an ivshmem-doorbell device whose
//!   memory the launcher initialised with `interconnect::layout::reopen`. The side
//!   and the rings' sizes give the channel's geometry (`abi::ring_geometry`, as the
//!   launcher computes it); the header, which the peer can rewrite, is not read.
//! - Groups become communicators with context id `1 + ID`, so that every member
//!   agrees on it even though each partition only hears of its own groups.
//!
//! # Rights
//! Not from the command line (beyond `TX`/`RX` 0: no right that way): the monitor
//! partition (or, in a system without one, the launcher) publishes each end's send
//! rights (may send, non-blocking, tag range) in the channel's control block and
//! then opens it (`interconnect::layout::publish`).
//! [`endpoint`] waits until no channel of the partition is pending, at most
//! [`PUBLISH_WAIT_MS`] in all, reads its rights there (`layout::read_rights`), and
//! otherwise ends the partition with [`exit::UNPUBLISHED`] instead of hanging. A
//! partition maps only its own channels, so it learns only its own rights.
//!
//! # Waiting
//! The fabric spins for [`Platform::spin_ns`](interconnect::Platform::spin_ns) at
//! CPL 3, then advertises that it waits and blocks in the runtime ([`rt::wait`])
//! until a doorbell (MSI-X) or the deadline; a peer rings only an advertised
//! waiter. `rt::wait` latches doorbells that arrive before it is called, so a ring
//! between "advertise" and "block" is not lost. With more partitions than host
//! cores this is what lets every partition make progress.
//!
//! The spin time adapts like KVM's halt polling: a block that a doorbell ended
//! within [`SPIN_GROW_NS`] doubles it (spinning longer would have caught the
//! message without the wake-up, about 70 µs here through emulated ring 0, which that
//! figure includes), a longer block or a timeout halves it, within
//! [`SPIN_MIN_NS`]..=[`SPIN_MAX_NS`]. Without this, two partitions that once both
//! blocked stay in lock-step, each waking the other, at a wake-up per message instead
//! of under a microsecond. The longest spin is about what a wake-up costs (spinning
//! longer than a block costs gains little), and no longer: with more partitions than
//! host cores, a spin holds a core that the partition it waits for may need. A
//! doorbell that ends a block after the longest spin resets it to the shortest:
//! spinning longer cannot help there (the peer shares this vCPU's host core and runs
//! only once this one blocks). `spin_us=N` on the command line fixes the spin time
//! instead.
//!
//! # Assumptions
//! - One partition, one endpoint: [`endpoint`] is called once.
//! - The launcher is trusted for the command line, the monitor (or the launcher)
//!   for the published rights; the peer is not (the interconnect validates
//!   everything it writes). Each channel's side and geometry come from the command
//!   line, not from the channel's header, which the peer can rewrite. The peer can
//!   also write the rights in the control block before this partition reads them. A
//!   send right there on a direction the command line gives no ring is ignored (it
//!   would lure this partition into a send the monitor convicts); what is left to a
//!   liar is to narrow this partition's sends to itself, or to widen their tags or
//!   allow non-blocking ones towards itself: never the hypervisor mapping or the
//!   meter.
//! - A partition exits with 0..=99 only (the runtime reserves the rest), so set-up
//!   failures use [`exit`]'s codes in the service range.
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::Cell;
use core::time::Duration;

use interconnect::layout::{self, Geometry};
use interconnect::ring::Channel;
use interconnect::shm::Region;
use interconnect::{Config, Endpoint, Platform, Rank, Rights};
use rt::Doorbell;

pub use interconnect;

/// Exit statuses of a set-up failure (the service range: the runtime reserves 100+).
pub mod exit {
    /// The fabric keys on the command line are missing or malformed.
    pub const BAD_ARGS: u8 = 90;
    /// A `ch=` names a PCI slot with no ivshmem-doorbell device.
    pub const MISSING_CHANNEL: u8 = 91;
    /// A channel region or the configuration was refused by the interconnect.
    pub const SETUP: u8 = 92;
    /// A channel stayed pending for [`super::PUBLISH_WAIT_MS`]: nobody published its
    /// rights (no monitor partition running?).
    pub const UNPUBLISHED: u8 = 93;
}

/// How long [`endpoint`] waits, in all, for its channels' rights to be published.
pub const PUBLISH_WAIT_MS: u64 = 5_000;

pub use rt::abi::ChannelArg;

/// The fabric keys of a command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Args {
    /// This partition's world rank.
    pub rank: Rank,
    /// World size.
    pub size: u32,
    /// Groups this partition is in: `(name, id, members as world ranks)`.
    pub groups: Vec<(String, u32, Vec<Rank>)>,
    /// Its channels, in command-line order.
    pub channels: Vec<ChannelArg>,
}

impl Args {
    /// Parses the fabric keys out of `key=value` pairs (others are ignored).
    pub fn parse<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Args, String> {
        let (mut rank, mut size) = (None, None);
        let mut groups = Vec::new();
        let mut channels: Vec<ChannelArg> = Vec::new();
        for (k, v) in pairs {
            match k {
                "rank" => rank = Some(v.parse().map_err(|_| format!("bad rank=`{v}`"))?),
                "size" => size = Some(v.parse().map_err(|_| format!("bad size=`{v}`"))?),
                "groups" => groups = parse_groups(v)?,
                "ch" => channels.push(v.parse().map_err(|e| format!("bad ch=`{v}`: {e}"))?),
                _ => {}
            }
        }
        let rank: Rank = rank.ok_or("no rank= on the command line")?;
        let size: u32 = size.ok_or("no size= on the command line")?;
        if rank >= size {
            return Err(format!("rank={rank} not below size={size}"));
        }
        for c in &channels {
            if c.peer >= size || c.peer == rank {
                return Err(format!("ch= peer {} invalid for rank {rank}", c.peer));
            }
            if u8::from(c.peer < rank) != c.side {
                return Err(format!("ch= side {} wrong for peer {}", c.side, c.peer));
            }
        }
        for (i, c) in channels.iter().enumerate() {
            if channels[..i]
                .iter()
                .any(|o| o.slot == c.slot || o.peer == c.peer)
            {
                return Err(format!("ch= slot {} or peer {} repeated", c.slot, c.peer));
            }
        }
        Ok(Args {
            rank,
            size,
            groups,
            channels,
        })
    }

    /// The interconnect configuration: `rights[i]` (as published) towards the peer of
    /// `channels[i]`, one group per known group id (ids this partition is not in become
    /// placeholders it is not a member of, so context ids agree across partitions).
    ///
    /// A direction the command line gives no ring (`tx`/`rx` 0: the manifest grants
    /// nothing that way) stays closed whatever the control block says: the peer can
    /// write there too, and a forged send right would lure this partition into a
    /// send the monitor convicts (`tests/forged.toml`).
    pub fn config(&self, geometry: Geometry, rights: &[Rights]) -> Config {
        let mut cfg = Config::new(self.size);
        cfg.geometry = geometry;
        for (c, &published) in self.channels.iter().zip(rights) {
            let mine = Rights {
                send: published.send && c.tx > 0,
                recv: published.recv && c.rx > 0,
                ..published
            };
            cfg.pairs.push((self.rank, c.peer));
            cfg.rights.push(((self.rank, c.peer), mine));
            // What the peer may send us (the endpoint checks it on receive).
            let theirs = Rights {
                send: mine.recv,
                recv: mine.send,
                ..Rights::default()
            };
            cfg.rights.push(((c.peer, self.rank), theirs));
        }
        let ids = self.groups.iter().map(|g| g.1 + 1).max().unwrap_or(0);
        let other = if self.rank == 0 && self.size > 1 {
            1
        } else {
            0
        };
        for id in 0..ids {
            match self.groups.iter().find(|g| g.1 == id) {
                Some((name, _, members)) => cfg.groups.push((name.clone(), members.clone())),
                None => cfg.groups.push((format!("#{id}"), alloc::vec![other])),
            }
        }
        cfg
    }
}

fn parse_groups(v: &str) -> Result<Vec<(String, u32, Vec<Rank>)>, String> {
    let mut out: Vec<(String, u32, Vec<Rank>)> = Vec::new();
    for part in v.split(';') {
        let bad = || format!("bad groups= entry `{part}` (expected NAME@ID:R,R,...)");
        let (name_id, ranks) = part.split_once(':').ok_or_else(bad)?;
        let (name, id) = name_id.split_once('@').ok_or_else(bad)?;
        let id: u32 = id.parse().map_err(|_| bad())?;
        if name.is_empty() || id > 1024 || out.iter().any(|g| g.0 == name || g.1 == id) {
            return Err(bad());
        }
        let members = ranks
            .split(',')
            .map(|r| r.parse::<Rank>().map_err(|_| bad()))
            .collect::<Result<Vec<_>, _>>()?;
        out.push((name.to_string(), id, members));
    }
    Ok(out)
}

/// Shortest adaptive spin before blocking.
pub const SPIN_MIN_NS: u64 = 20_000;
/// Longest adaptive spin before blocking. Four partitions on two cores
/// (`tests/compose.rs`), in the runs where the pairs must share cores: round-trip p50
/// 0.8 ms with 2 ms, 0.25-0.3 ms with 200 µs, 0.22-0.31 ms with 100 µs.
pub const SPIN_MAX_NS: u64 = 100_000;
/// A block that a doorbell ended within this (wake-up included) grows the spin.
pub const SPIN_GROW_NS: u64 = 2 * SPIN_MAX_NS;
/// Initial adaptive spin.
pub const SPIN_START_NS: u64 = 50_000;

/// The guest [`Platform`]: the TSC clock, and doorbells on each channel's
/// ivshmem-doorbell device.
pub struct Guest {
    /// `(peer world rank, its doorbell device, its ivshmem id on that device)`.
    bells: Vec<(Rank, Doorbell, u16)>,
    /// Counts `rt::wait` returns that saw a doorbell.
    rung: Cell<u32>,
    /// Blocking waits so far.
    blocks: Cell<u32>,
    /// Current spin time.
    spin: Cell<u64>,
    /// Whether the spin time adapts (no `spin_us=`).
    adaptive: bool,
}

impl Guest {
    /// How many blocking waits a doorbell ended so far.
    pub fn wakeups(&self) -> u32 {
        self.rung.get()
    }

    /// How many times this partition blocked in the runtime so far.
    pub fn blocks(&self) -> u32 {
        self.blocks.get()
    }

    /// The current spin time before blocking, in nanoseconds.
    pub fn spin(&self) -> u64 {
        self.spin.get()
    }
}

impl Platform for Guest {
    fn now(&self) -> u64 {
        rt::time::now().as_nanos()
    }

    fn bell(&self) -> u32 {
        self.rung.get()
    }

    fn wait(&self, seen: u32, until: u64) {
        if self.rung.get() != seen {
            return;
        }
        let now = rt::time::now();
        let left = until.saturating_sub(now.as_nanos());
        if left == 0 {
            return;
        }
        // Returns early on any doorbell (latched if it rang before this call).
        let w = rt::wait(Some(now.after(Duration::from_nanos(left))));
        self.blocks.set(self.blocks.get().wrapping_add(1));
        let blocked = rt::time::now().duration_since(now).as_nanos();
        if !w.timed_out() {
            self.rung.set(self.rung.get().wrapping_add(1));
        }
        if self.adaptive {
            let s = self.spin.get();
            let s = if !w.timed_out() && blocked <= u128::from(SPIN_GROW_NS) {
                if s >= SPIN_MAX_NS {
                    // The longest spin did not catch it either: the peer cannot run
                    // while this vCPU spins (they share a host core). Start over low.
                    SPIN_MIN_NS
                } else {
                    s.saturating_mul(2).min(SPIN_MAX_NS)
                }
            } else {
                (s / 2).max(SPIN_MIN_NS)
            };
            self.spin.set(s);
        }
    }

    fn ring(&self, peer: Rank) {
        if let Some((_, db, id)) = self.bells.iter().find(|b| b.0 == peer) {
            db.notify(*id, 0);
        }
    }

    fn spin_ns(&self) -> u64 {
        self.spin.get()
    }
}

/// A set-up failure: what to log and which [`exit`] status to end with.
#[derive(Debug)]
pub struct SetupError {
    /// One line for the log.
    pub message: String,
    /// The exit status.
    pub status: u8,
}

/// Builds this partition's endpoint from the command line and its ivshmem devices,
/// with the rights published in their control blocks (waiting for them, see the crate
/// docs). `spin_us=` on the command line fixes the spin time before blocking (default:
/// adaptive, see the crate docs).
pub fn endpoint() -> Result<Endpoint<Guest>, SetupError> {
    let args = Args::parse(rt::args()).map_err(|message| SetupError {
        message,
        status: exit::BAD_ARGS,
    })?;
    let spin_ns = match rt::arg("spin_us") {
        None => None,
        Some(v) => Some(
            v.parse::<u64>()
                .ok()
                .and_then(|us| us.checked_mul(1_000))
                .ok_or_else(|| SetupError {
                    message: format!("bad spin_us=`{v}`"),
                    status: exit::BAD_ARGS,
                })?,
        ),
    };
    let setup = |what: &str, e: interconnect::Error| SetupError {
        message: format!("{what}: {e}"),
        status: exit::SETUP,
    };
    let mut channels = Vec::new();
    let mut rights = Vec::new();
    let mut bells = Vec::new();
    let mut geometry = Geometry::default();
    let until = rt::time::now().after(Duration::from_millis(PUBLISH_WAIT_MS));
    for c in &args.channels {
        let fail = |what: &str, status| SetupError {
            message: format!("ch= slot {} (peer {}): {what}", c.slot, c.peer),
            status,
        };
        let missing = |what: &str| fail(what, exit::MISSING_CHANNEL);
        let shm = rt::shm_regions()
            .iter()
            .find(|r| r.pci().bus == 0 && r.pci().device == c.slot && r.pci().function == 0)
            .ok_or_else(|| missing("no ivshmem device in that slot"))?;
        let db = shm
            .doorbell()
            .ok_or_else(|| missing("the device has no doorbell"))?;
        if db.own_id() != u16::from(c.side) {
            return Err(missing("doorbell id does not match the side"));
        }
        // SAFETY: the runtime mapped this BAR (2 MiB-aligned, `len` bytes) into the
        // service for the partition's whole life and never unmaps it; the peer VM
        // writes it concurrently, which is what `Region` is for (atomics and
        // volatile copies only, no references into it).
        let region = unsafe { Region::from_raw(shm.as_ptr(), shm.len(), None) };
        rights.push(loop {
            if let Some(r) = layout::read_rights(&region, usize::from(c.side)) {
                break r;
            }
            if rt::time::now() >= until {
                return Err(fail(
                    &format!(
                        "still pending after {PUBLISH_WAIT_MS} ms: nobody published its rights"
                    ),
                    exit::UNPUBLISHED,
                ));
            }
            let _ = rt::wait(Some(rt::time::now().after(Duration::from_millis(1))));
        });
        // Side and geometry from the command line, not the header (the peer can
        // rewrite that).
        let (slots, data_len) = c.geometry();
        geometry = Geometry {
            slots,
            data_len,
            ..Geometry::default()
        };
        let ch = Channel::open(region, usize::from(c.side), c.peer, geometry)
            .map_err(|e| setup(&format!("channel to rank {}", c.peer), e))?;
        channels.push((c.peer, ch));
        bells.push((c.peer, db, u16::from(1 - c.side)));
    }
    let cfg = args.config(geometry, &rights);
    let guest = Guest {
        bells,
        rung: Cell::new(0),
        blocks: Cell::new(0),
        spin: Cell::new(spin_ns.unwrap_or(SPIN_START_NS)),
        adaptive: spin_ns.is_none(),
    };
    Endpoint::new(&cfg, args.rank, channels, guest).map_err(|e| setup("configuration", e))
}

/// [`endpoint`], or log the reason and exit with its status.
pub fn endpoint_or_exit() -> Endpoint<Guest> {
    match endpoint() {
        Ok(ep) => ep,
        Err(e) => {
            rt::log!("fabric: {} (exit {})", e.message, e.status);
            rt::exit(e.status)
        }
    }
}
