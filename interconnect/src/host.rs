//! Host transports (`std`): threads in one process, and processes sharing files under
//! `/dev/shm`. Both carry the exact channel layout a VM maps through ivshmem. Doorbells
//! are futex words (one cache line per rank) in a shared "bells" region.

use crate::layout::{self, LINE};
use crate::ring::Channel;
use crate::shm::{Region, host as sys};
use crate::{Config, Deadline, Endpoint, Error, Platform, Rank};
use std::format;
use std::path::PathBuf;
use std::string::String;
use std::time::Instant;
use std::vec::Vec;

/// Clock = `Instant`, doorbells = futex words in a shared region.
pub struct HostPlatform {
    bells: Region,
    me: Rank,
    spin_ns: u64,
}

/// The host clock: nanoseconds since the first use in this process (shared by every
/// [`HostPlatform`] of the process, so deadlines can be passed between threads).
pub fn now() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A deadline `ms` milliseconds from now on the host clock.
pub fn deadline_ms(ms: u64) -> Deadline {
    Deadline(now().saturating_add(ms.saturating_mul(1_000_000)))
}

impl HostPlatform {
    /// Platform of rank `me` over a bells region of `LINE` bytes per rank.
    pub fn new(bells: Region, me: Rank) -> Result<Self, Error> {
        if (me as usize + 1) * LINE > bells.len() {
            return Err(Error::config("rank (no doorbell)", me));
        }
        Ok(HostPlatform {
            bells,
            me,
            spin_ns: 50_000,
        })
    }

    /// Sets how long to spin before blocking (nanoseconds).
    pub fn set_spin_ns(&mut self, ns: u64) {
        self.spin_ns = ns;
    }
}

impl Platform for HostPlatform {
    fn now(&self) -> u64 {
        now()
    }
    fn bell(&self) -> u32 {
        self.bells.load32(
            self.me as usize * LINE,
            core::sync::atomic::Ordering::SeqCst,
        )
    }
    fn wait(&self, seen: u32, until: u64) {
        let now = self.now();
        if until > now {
            sys::futex_wait(&self.bells, self.me as usize * LINE, seen, until - now);
        }
    }
    fn ring(&self, peer: Rank) {
        let off = peer as usize * LINE;
        if off + LINE <= self.bells.len() {
            self.bells.add32(off, 1);
            sys::futex_wake(&self.bells, off);
        }
    }
    fn spin_ns(&self) -> u64 {
        self.spin_ns
    }
}

/// Every endpoint of a world whose channels are heap regions (threads in one process).
/// Element `i` is rank `i`; move each into its own thread.
pub fn threads(cfg: &Config) -> Result<Vec<Endpoint<HostPlatform>>, Error> {
    cfg.validate()?;
    let bells = Region::heap(cfg.size as usize * LINE);
    let mut chans: Vec<Vec<(Rank, Channel)>> = (0..cfg.size).map(|_| Vec::new()).collect();
    for (a, b) in cfg.channel_pairs() {
        let r = Region::heap(cfg.geometry.region_len());
        layout::init(&r, cfg.geometry, [a, b])?;
        chans[a as usize].push((b, Channel::attach(r.clone(), a, b)?));
        chans[b as usize].push((a, Channel::attach(r, b, a)?));
    }
    chans
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            Endpoint::new(
                cfg,
                i as Rank,
                c,
                HostPlatform::new(bells.clone(), i as Rank)?,
            )
        })
        .collect()
}

/// A world of host processes sharing files under `/dev/shm` (one per channel, named
/// `{prefix}-{a}-{b}`, plus `{prefix}-bells`). The creator (the launcher) removes the
/// files when this value is dropped.
pub struct ShmWorld {
    prefix: String,
    files: Vec<PathBuf>,
    regions: Vec<((Rank, Rank), Region)>,
    bells: Region,
}

fn path(prefix: &str, name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/{prefix}-{name}"))
}

fn map(p: &PathBuf, len: usize, create: bool) -> Result<Region, Error> {
    let io = |e: std::io::Error| Error::InvalidConfig {
        what: "shared-memory file",
        value: format!("{}: {e}", p.display()),
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create)
        .open(p)
        .map_err(io)?;
    if create {
        f.set_len(len as u64).map_err(io)?;
    } else if (f.metadata().map_err(io)?.len() as usize) < len {
        return Err(Error::config("shared-memory file length", p.display()));
    }
    sys::map_file(&f, len).map_err(io)
}

impl ShmWorld {
    /// Creates and initialises every file of the world (fails if one exists).
    pub fn create(prefix: &str, cfg: &Config) -> Result<ShmWorld, Error> {
        cfg.validate()?;
        if prefix.is_empty() || prefix.contains('/') {
            return Err(Error::config("shared-memory prefix", prefix));
        }
        let mut w = ShmWorld {
            prefix: prefix.into(),
            files: Vec::new(),
            regions: Vec::new(),
            bells: Region::heap(0),
        };
        let bp = path(prefix, "bells");
        w.bells = map(&bp, cfg.size as usize * LINE, true)?;
        w.files.push(bp);
        for (a, b) in cfg.channel_pairs() {
            let p = path(prefix, &format!("{a}-{b}"));
            let r = map(&p, cfg.geometry.region_len(), true)?;
            w.files.push(p);
            layout::init(&r, cfg.geometry, [a, b])?;
            w.regions.push(((a, b), r));
        }
        Ok(w)
    }

    /// Attaches rank `rank` (in any process) to the files of world `prefix`.
    pub fn attach(prefix: &str, cfg: &Config, rank: Rank) -> Result<Endpoint<HostPlatform>, Error> {
        cfg.validate()?;
        if rank >= cfg.size {
            return Err(Error::config("rank (out of range)", rank));
        }
        let bells = map(&path(prefix, "bells"), cfg.size as usize * LINE, false)?;
        let mut chans = Vec::new();
        for (a, b) in cfg
            .channel_pairs()
            .into_iter()
            .filter(|&(a, b)| a == rank || b == rank)
        {
            let r = map(
                &path(prefix, &format!("{a}-{b}")),
                cfg.geometry.region_len(),
                false,
            )?;
            let peer = if a == rank { b } else { a };
            chans.push((peer, Channel::attach(r, rank, peer)?));
        }
        Endpoint::new(cfg, rank, chans, HostPlatform::new(bells, rank)?)
    }

    /// The prefix of the files.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The region of channel `(a, b)` (for the monitor's meter, revocation, tests).
    pub fn region(&self, a: Rank, b: Rank) -> Option<&Region> {
        let k = (a.min(b), a.max(b));
        self.regions.iter().find(|(p, _)| *p == k).map(|(_, r)| r)
    }

    /// Marks `rank` dead in all its channels and rings its peers.
    pub fn mark_dead(&self, rank: Rank) {
        for ((a, b), r) in &self.regions {
            if *a == rank || *b == rank {
                layout::mark_dead(r, usize::from(*b == rank));
                self.ring(if *a == rank { *b } else { *a });
            }
        }
    }

    /// Revokes channel `(a, b)` and rings both sides.
    pub fn revoke(&self, a: Rank, b: Rank) {
        if let Some(r) = self.region(a, b) {
            layout::revoke(r);
            self.ring(a);
            self.ring(b);
        }
    }

    fn ring(&self, r: Rank) {
        if let Ok(p) = HostPlatform::new(self.bells.clone(), r) {
            p.ring(r);
        }
    }
}

impl Drop for ShmWorld {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}
