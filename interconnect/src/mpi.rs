//! The MPI-style layer: one rank's [`Endpoint`], communicators, matching, requests.

use crate::ring::{Channel, Envelope, Small};
use crate::{Deadline, Error, Platform, Rank};
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

/// Receive from any member of the communicator.
pub const ANY_SOURCE: Rank = u32::MAX;
/// Receive any tag (not usable as a send tag).
pub const ANY_TAG: u32 = u32::MAX;
/// `split` colour for "not in any new communicator".
pub const UNDEFINED: u32 = u32::MAX;

/// Context ids at or above this carry collective traffic of context `ctx - COLL`.
pub(crate) const COLL: u32 = 1 << 31;

/// Rights of one rank towards one peer (checked at the sender, before any memory is
/// touched).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rights {
    /// May send to the peer.
    pub send: bool,
    /// May receive from the peer.
    pub recv: bool,
    /// Tags allowed to send (inclusive range).
    pub tags: (u32, u32),
    /// May use non-blocking sends (`isend`, or `send` with [`Deadline::NOW`]).
    pub nonblocking: bool,
}

impl Default for Rights {
    fn default() -> Self {
        Rights {
            send: true,
            recv: true,
            tags: (0, ANY_TAG - 1),
            nonblocking: true,
        }
    }
}

/// World configuration: size, channel geometry, which pairs get a channel, rights,
/// named groups.
#[derive(Clone, Debug)]
pub struct Config {
    /// Number of ranks.
    pub size: u32,
    /// Geometry of every channel.
    pub geometry: crate::layout::Geometry,
    /// Pairs joined by a channel; empty means every pair.
    pub pairs: Vec<(Rank, Rank)>,
    /// Rights of `from` towards `to`, keyed `(from, to)`; unlisted pairs get
    /// [`Rights::default`].
    pub rights: Vec<((Rank, Rank), Rights)>,
    /// Named groups: each becomes a communicator (ranks in the listed order).
    pub groups: Vec<(String, Vec<Rank>)>,
    /// Bytes of unexpected (not yet matched) messages buffered per peer; beyond this a
    /// peer's messages stay in its ring (so it runs out of credit). One message is
    /// always accepted.
    pub unexpected_limit: usize,
}

impl Config {
    /// `size` ranks, default geometry, every pair connected, all rights, no groups.
    pub fn new(size: u32) -> Self {
        Config {
            size,
            geometry: Default::default(),
            pairs: Vec::new(),
            rights: Vec::new(),
            groups: Vec::new(),
            unexpected_limit: 4 << 20,
        }
    }

    /// Checks everything; errors name the offending value.
    pub fn validate(&self) -> Result<(), Error> {
        if self.size == 0 || self.size > 1 << 16 {
            return Err(Error::config("world size (1..=65536)", self.size));
        }
        self.geometry.validate()?;
        let rank = |r: Rank| {
            if r < self.size {
                Ok(())
            } else {
                Err(Error::config("rank (out of range)", r))
            }
        };
        for &(a, b) in &self.pairs {
            rank(a)?;
            rank(b)?;
            if a == b {
                return Err(Error::config("channel pair (a rank with itself)", a));
            }
        }
        for &((a, b), _) in &self.rights {
            rank(a)?;
            rank(b)?;
        }
        for (name, members) in &self.groups {
            if members.is_empty() {
                return Err(Error::config("group (empty)", name));
            }
            for (i, &m) in members.iter().enumerate() {
                rank(m)?;
                if members[..i].contains(&m) {
                    return Err(Error::config("group member (duplicate)", m));
                }
            }
        }
        Ok(())
    }

    /// The channel pairs `(low, high)`, sorted and deduplicated.
    pub fn channel_pairs(&self) -> Vec<(Rank, Rank)> {
        let mut v: Vec<(Rank, Rank)> = if self.pairs.is_empty() {
            (0..self.size)
                .flat_map(|a| (a + 1..self.size).map(move |b| (a, b)))
                .collect()
        } else {
            self.pairs
                .iter()
                .map(|&(a, b)| (a.min(b), a.max(b)))
                .collect()
        };
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Rights of `from` towards `to`.
    pub fn rights(&self, from: Rank, to: Rank) -> Rights {
        self.rights
            .iter()
            .find(|(k, _)| *k == (from, to))
            .map(|(_, r)| *r)
            .unwrap_or_default()
    }
}

/// A communicator: a context id and its members (world ranks, in communicator order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comm {
    pub(crate) ctx: u32,
    pub(crate) ranks: Arc<[Rank]>,
    pub(crate) rank: Rank,
}

impl Comm {
    /// This rank's rank in the communicator.
    pub fn rank(&self) -> Rank {
        self.rank
    }
    /// Number of members.
    pub fn size(&self) -> u32 {
        self.ranks.len() as u32
    }
    /// World rank of member `r`.
    pub fn world_rank(&self, r: Rank) -> Option<Rank> {
        self.ranks.get(r as usize).copied()
    }
    /// Context id (distinct per communicator).
    pub fn ctx(&self) -> u32 {
        self.ctx
    }
}

/// What a completed receive (or probe) found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// Source rank in the communicator.
    pub source: Rank,
    /// Tag.
    pub tag: u32,
    /// Message length in bytes.
    pub len: usize,
}

/// A completed request: its status and, for receives, the data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// For a receive: source, tag, length. For a send: destination, tag, length.
    pub status: Status,
    /// The received bytes (empty for sends).
    pub data: Vec<u8>,
}

/// Handle of a non-blocking operation (valid until `wait`/`test` completes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    id: u32,
    generation: u32,
}

#[derive(Clone, Debug)]
struct Matcher {
    /// World rank of the source, `None` for any member.
    src: Option<Rank>,
    /// The source as given (communicator rank).
    local: Rank,
    tag: Option<u32>,
    ctx: u32,
    /// Members, only for `ANY_SOURCE` (no reference counting on the fast path).
    members: Option<Arc<[Rank]>>,
}

impl Matcher {
    fn hit(&self, w: Rank, env: &Envelope) -> bool {
        env.ctx == self.ctx
            && self.tag.is_none_or(|t| t == env.tag)
            && match (self.src, &self.members) {
                (Some(s), _) => s == w,
                (None, Some(m)) => m.contains(&w),
                (None, None) => false,
            }
    }
    #[inline]
    fn status(&self, w: Rank, env: &Envelope) -> Status {
        let source = match &self.members {
            Some(m) if self.src.is_none() => m.iter().position(|&x| x == w).unwrap_or(0) as Rank,
            _ => self.local,
        };
        Status {
            source,
            tag: env.tag,
            len: env.len,
        }
    }
}

enum Target {
    None,
    Req(usize),
    Unexp(u64),
    Cur,
    Discard,
}

struct Link {
    peer: Rank,
    ch: Channel,
    rights: Rights,
    sendq: VecDeque<usize>,
    target: Target,
    unexp_bytes: usize,
    failed: Option<Error>,
}

struct Unexp {
    id: u64,
    src: Rank,
    env: Envelope,
    data: Vec<u8>,
    complete: bool,
    claimed: Option<usize>,
}

enum Kind {
    Send {
        peer: Rank,
        tag: u32,
        ctx: u32,
        data: Vec<u8>,
        done: usize,
    },
    Recv {
        m: Matcher,
        max: usize,
        data: Vec<u8>,
    },
}

struct Req {
    generation: u32,
    kind: Kind,
    result: Option<Result<Status, Error>>,
}

/// The blocking call in progress: its matcher, and its buffer (`None` for a probe).
struct Cur<'a> {
    m: Matcher,
    buf: Option<&'a mut [u8]>,
    taken: bool,
    done: Option<Result<Status, Error>>,
}

/// One rank's view of the fabric (see the crate docs).
pub struct Endpoint<P: Platform> {
    rank: Rank,
    size: u32,
    links: Vec<Option<Link>>,
    p: P,
    world: Comm,
    groups: Vec<(String, Comm)>,
    unexp: VecDeque<Unexp>,
    unexp_id: u64,
    reqs: Vec<Option<Req>>,
    gens: Vec<u32>,
    posted: VecDeque<usize>,
    pub(crate) next_ctx: u32,
    limit: usize,
    rr: usize,
}

struct Waiter {
    armed: bool,
    /// The link a blocking send waits on for credit.
    sending: Option<Rank>,
    spin_end: u64,
    seen: u32,
    n: u32,
}

impl<P: Platform> Endpoint<P> {
    /// Builds rank `rank`'s endpoint from its attached channels `(peer, channel)`.
    /// Rights and groups come from `cfg`.
    pub fn new(
        cfg: &Config,
        rank: Rank,
        channels: Vec<(Rank, Channel)>,
        platform: P,
    ) -> Result<Self, Error> {
        cfg.validate()?;
        if rank >= cfg.size {
            return Err(Error::config("rank (out of range)", rank));
        }
        let mut links: Vec<Option<Link>> = (0..cfg.size).map(|_| None).collect();
        for (peer, ch) in channels {
            if peer >= cfg.size || peer == rank {
                return Err(Error::config("channel peer rank", peer));
            }
            let mut rights = cfg.rights(rank, peer);
            rights.recv = cfg.rights(peer, rank).send && rights.recv;
            links[peer as usize] = Some(Link {
                peer,
                ch,
                rights,
                sendq: VecDeque::new(),
                target: Target::None,
                unexp_bytes: 0,
                failed: None,
            });
        }
        let comm = |ctx, ranks: Vec<Rank>| {
            let r = ranks
                .iter()
                .position(|&w| w == rank)
                .unwrap_or(u32::MAX as usize) as Rank;
            Comm {
                ctx,
                ranks: ranks.into(),
                rank: r,
            }
        };
        let world = comm(0, (0..cfg.size).collect());
        let groups = cfg
            .groups
            .iter()
            .enumerate()
            .map(|(i, (n, m))| (n.clone(), comm(1 + i as u32, m.clone())))
            .collect();
        Ok(Endpoint {
            rank,
            size: cfg.size,
            links,
            p: platform,
            world,
            groups,
            unexp: VecDeque::new(),
            unexp_id: 0,
            reqs: Vec::new(),
            gens: Vec::new(),
            posted: VecDeque::new(),
            next_ctx: 1 + cfg.groups.len() as u32,
            limit: cfg.unexpected_limit,
            rr: 0,
        })
    }

    /// World rank.
    pub fn rank(&self) -> Rank {
        self.rank
    }
    /// World size.
    pub fn size(&self) -> u32 {
        self.size
    }
    /// The world communicator.
    pub fn world(&self) -> Comm {
        self.world.clone()
    }
    /// The communicator of a configured group; `None` if this rank is not a member.
    pub fn group(&self, name: &str) -> Result<Option<Comm>, Error> {
        match self.groups.iter().find(|(n, _)| n == name) {
            Some((_, c)) if c.rank == u32::MAX => Ok(None),
            Some((_, c)) => Ok(Some(c.clone())),
            None => Err(Error::config("group (unknown)", name)),
        }
    }
    /// The platform (clock, doorbells).
    pub fn platform(&self) -> &P {
        &self.p
    }
    /// The platform, mutably (e.g. to tune spinning).
    pub fn platform_mut(&mut self) -> &mut P {
        &mut self.p
    }
    /// A deadline `ms` milliseconds from now.
    pub fn after_ms(&self, ms: u64) -> Deadline {
        Deadline(self.p.now().saturating_add(ms.saturating_mul(1_000_000)))
    }
    /// The channel to world rank `peer`, if any (for the monitor's meter and tests).
    pub fn channel(&self, peer: Rank) -> Option<&Channel> {
        self.links.get(peer as usize)?.as_ref().map(|l| &l.ch)
    }

    /// Brings the channel to `peer` in `comm` back in step, as on a fresh channel: a
    /// request and its reply then share one slot line, so a round trip moves one cache
    /// line instead of two. One-sided traffic (a stream) leaves the two directions'
    /// message counts apart ([`Channel::skew`]), which costs each hop of a later
    /// ping-pong about 7 ns on the benchmark machine (BENCHMARKS.md). Both sides call it
    /// with nothing in flight between them: the higher rank sends up to `slots - 1`
    /// empty messages with `tag`, which the lower one receives.
    pub fn align(&mut self, comm: &Comm, peer: Rank, tag: u32, dl: Deadline) -> Result<(), Error> {
        let denied = Error::PermissionDenied { rank: peer, tag };
        let w = comm.world_rank(peer).ok_or(denied.clone())?;
        let n = self.channel(w).ok_or(denied)?.skew();
        for _ in 0..n {
            if self.rank > w {
                self.send(comm, peer, tag, &[], dl)?;
            } else {
                self.recv(comm, peer, tag, &mut [], dl)?;
            }
        }
        Ok(())
    }

    /// Re-attaches to world rank `peer` once the monitor reopened its channel for a new
    /// generation: everything still tied to the old one fails with `PeerDead` (its
    /// unexpected messages are dropped), then the link talks to the new incarnation.
    /// Returns the peer's generation; does nothing while it is the one attached to, and
    /// fails with `Revoked`/`PeerDead` while the channel is not reopened yet.
    pub fn reattach(&mut self, peer: Rank) -> Result<u32, Error> {
        let Some(Some(l)) = self.links.get(peer as usize) else {
            return Err(Error::PermissionDenied { rank: peer, tag: 0 });
        };
        // Side and geometry as before: a reopen never changes them, the peer may have
        // rewritten the header.
        let ch = Channel::open(l.ch.region().clone(), l.ch.side(), peer, l.ch.geometry())?;
        ch.check()?;
        let generation = ch.peer_generation();
        if generation == l.ch.peer_generation() {
            return Ok(generation);
        }
        self.fail_link(peer, &Error::PeerDead { rank: peer });
        self.unexp.retain(|u| u.src != peer || u.claimed.is_some());
        if let Some(l) = self.links[peer as usize].as_mut() {
            (l.failed, l.unexp_bytes, l.target, l.ch) = (None, 0, Target::None, ch);
        }
        Ok(generation)
    }

    // ---- routing and rights -------------------------------------------------------

    /// World rank of `dest` in `comm` after the rights checks, touching no shared memory.
    fn route(&self, comm: &Comm, dest: Rank, tag: u32, nonblocking: bool) -> Result<Rank, Error> {
        let denied = || Error::PermissionDenied { rank: dest, tag };
        let w = comm.world_rank(dest).ok_or_else(denied)?;
        let l = self
            .links
            .get(w as usize)
            .and_then(|l| l.as_ref())
            .ok_or_else(denied)?;
        let r = &l.rights;
        if !r.send || tag < r.tags.0 || tag > r.tags.1 || (nonblocking && !r.nonblocking) {
            return Err(denied());
        }
        if let Some(e) = &l.failed {
            return Err(e.clone());
        }
        Ok(w)
    }

    fn matcher(&self, comm: &Comm, src: Rank, tag: u32) -> Result<Matcher, Error> {
        let src_local = src;
        let src = if src == ANY_SOURCE {
            None
        } else {
            let denied = || Error::PermissionDenied { rank: src, tag };
            let w = comm.world_rank(src).ok_or_else(denied)?;
            let l = self
                .links
                .get(w as usize)
                .and_then(|l| l.as_ref())
                .ok_or_else(denied)?;
            if !l.rights.recv {
                return Err(denied());
            }
            if let Some(e) = &l.failed {
                return Err(e.clone());
            }
            Some(w)
        };
        let tag = (tag != ANY_TAG).then_some(tag);
        Ok(Matcher {
            src,
            local: src_local,
            tag,
            ctx: comm.ctx,
            members: if src.is_none() {
                Some(comm.ranks.clone())
            } else {
                None
            },
        })
    }

    // ---- waiting --------------------------------------------------------------------

    fn waiter(&self) -> Waiter {
        Waiter {
            armed: false,
            sending: None,
            spin_end: 0,
            seen: 0,
            n: 0,
        }
    }

    /// Sets or clears the "ring me" flags on one link or all: for a message always, for
    /// credit only on a link we wait to send on (a blocking send's, or one with queued
    /// sends), so that a peer's `sender_blocked` means what it says.
    fn arm(&self, watch: Option<Rank>, on: bool, sending: Option<Rank>) {
        for l in self.links.iter().flatten() {
            if watch.is_none_or(|w| w == l.peer) {
                l.ch.rx.set_waiting(on);
                l.ch.tx
                    .set_waiting(on && (sending == Some(l.peer) || !l.sendq.is_empty()));
            }
        }
        // The flags before the re-poll (pairs with the peer's barrier after publishing),
        // and our consumed counts before the senders' flags: a sender blocked for
        // credit between two checkpoints (`Rx::advance`) is rung now, before we sleep.
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        if on {
            for l in self.links.iter().flatten() {
                if l.ch.rx.sender_blocked() {
                    self.p.ring(l.peer);
                }
            }
        }
    }

    /// One step of waiting: spin, then block until a doorbell or the deadline. Checks
    /// liveness and revocation of the watched link(s) whenever it looks at the clock.
    fn pause(&mut self, w: &mut Waiter, dl: Deadline, watch: Option<Rank>) -> Result<(), Error> {
        w.n += 1;
        if !w.armed && !w.n.is_multiple_of(64) {
            core::hint::spin_loop();
            return Ok(());
        }
        let now = self.p.now();
        if w.spin_end == 0 {
            w.spin_end = now.saturating_add(self.p.spin_ns());
        }
        if let Some(peer) = watch
            && let Some(Err(e)) = self.links[peer as usize].as_ref().map(|l| l.ch.check())
        {
            self.arm(watch, false, None);
            return Err(e);
        }
        if now >= dl.0 {
            self.arm(watch, false, None);
            return Err(Error::Timeout {
                rank: watch.unwrap_or(ANY_SOURCE),
            });
        }
        if !w.armed {
            if now < w.spin_end {
                core::hint::spin_loop();
                return Ok(());
            }
            w.seen = self.p.bell();
            self.arm(watch, true, w.sending);
            w.armed = true;
            return Ok(());
        }
        // Armed, and the attempt after arming found nothing: block (bounded, so that
        // liveness and revocation are re-checked even without a doorbell).
        self.p
            .wait(w.seen, dl.0.min(now.saturating_add(20_000_000)));
        w.seen = self.p.bell();
        Ok(())
    }

    fn done_waiting(&self, w: &Waiter, watch: Option<Rank>) {
        if w.armed {
            self.arm(watch, false, None);
        }
    }

    // ---- requests -------------------------------------------------------------------

    fn new_req(&mut self, kind: Kind, result: Option<Result<Status, Error>>) -> Request {
        let id = match self.reqs.iter().position(|r| r.is_none()) {
            Some(i) => i,
            None => {
                self.reqs.push(None);
                self.gens.push(0);
                self.reqs.len() - 1
            }
        };
        self.gens[id] = self.gens[id].wrapping_add(1);
        let generation = self.gens[id];
        self.reqs[id] = Some(Req {
            generation,
            kind,
            result,
        });
        Request {
            id: id as u32,
            generation,
        }
    }

    fn req_index(&self, r: &Request) -> Result<usize, Error> {
        match self.reqs.get(r.id as usize) {
            Some(Some(q)) if q.generation == r.generation => Ok(r.id as usize),
            _ => Err(Error::arg("request (unknown or completed)", r.id.into())),
        }
    }

    /// Completes request `i` if it has a result: frees it and returns the completion.
    fn finish(&mut self, i: usize) -> Option<Result<Completion, Error>> {
        self.reqs[i].as_ref()?.result.as_ref()?;
        let q = self.reqs[i].take()?;
        let res = q.result?;
        Some(res.map(|status| match q.kind {
            Kind::Recv { mut data, .. } => {
                data.truncate(status.len);
                Completion { status, data }
            }
            Kind::Send { .. } => Completion {
                status,
                data: Vec::new(),
            },
        }))
    }

    // ---- progress -------------------------------------------------------------------

    /// Fails everything tied to link `w` with `e`.
    fn fail_link(&mut self, w: Rank, e: &Error) {
        let Some(l) = self.links[w as usize].as_mut() else {
            return;
        };
        l.failed = Some(e.clone());
        let t = core::mem::replace(&mut l.target, Target::None);
        let sendq = core::mem::take(&mut l.sendq);
        for i in sendq {
            if let Some(q) = self.reqs[i].as_mut() {
                q.result = Some(Err(e.clone()));
            }
        }
        if let Target::Req(i) = t
            && let Some(q) = self.reqs[i].as_mut()
        {
            q.result = Some(Err(e.clone()));
        }
        let reqs = &mut self.reqs;
        self.unexp.retain(|u| {
            let keep = u.src != w || u.complete;
            if let (false, Some(Some(q))) = (keep, u.claimed.map(|i| reqs[i].as_mut())) {
                q.result = Some(Err(e.clone()));
            }
            keep
        });
        let reqs = &mut self.reqs;
        self.posted.retain(|&i| match reqs[i].as_mut() {
            Some(q) => match &q.kind {
                Kind::Recv { m, .. } if m.src == Some(w) => {
                    q.result = Some(Err(e.clone()));
                    false
                }
                _ => true,
            },
            None => false,
        });
    }

    /// Pushes queued sends on link `w`.
    fn progress_sends(&mut self, w: Rank) -> Result<(), Error> {
        let Some(l) = self.links[w as usize].as_mut() else {
            return Ok(());
        };
        let mut rang = false;
        while let Some(&i) = l.sendq.front() {
            let Some(Req {
                kind:
                    Kind::Send {
                        tag,
                        ctx,
                        data,
                        done,
                        ..
                    },
                result,
                ..
            }) = self.reqs[i].as_mut()
            else {
                l.sendq.pop_front();
                continue;
            };
            let before = *done;
            let r = l.ch.tx.send(*tag, *ctx, data, done);
            rang |= *done != before || r.is_ok();
            match r {
                Ok(()) => {
                    *result = Some(Ok(Status {
                        source: w,
                        tag: *tag,
                        len: data.len(),
                    }));
                    l.sendq.pop_front();
                }
                Err(Error::WouldBlock { .. }) => break,
                Err(e) => return Err(e),
            }
        }
        if rang && l.ch.tx.peer_waiting() {
            self.p.ring(w);
        }
        Ok(())
    }

    /// Pulls messages off link `w`'s ring into posted receives, the current call, or
    /// the unexpected queue, until the ring is empty or the unexpected budget is used.
    fn progress_link(&mut self, w: Rank, mut cur: Option<&mut Cur<'_>>) -> Result<(), Error> {
        let mut consumed = false;
        let r = self.pull(w, &mut cur, &mut consumed);
        if let Some(l) = self.links[w as usize].as_mut()
            && consumed
            && l.ch.rx.peer_waiting()
        {
            self.p.ring(w);
        }
        if let Err(e) = &r {
            if let Some(c) = cur
                && matches!(
                    self.links[w as usize].as_ref().map(|l| &l.target),
                    Some(Target::Cur)
                )
            {
                c.done = Some(Err(e.clone()));
            }
            self.fail_link(w, e);
        }
        r
    }

    fn pull(
        &mut self,
        w: Rank,
        cur: &mut Option<&mut Cur<'_>>,
        consumed: &mut bool,
    ) -> Result<(), Error> {
        let Some(l) = self.links[w as usize].as_mut() else {
            return Ok(());
        };
        if let Some(e) = &l.failed {
            return Err(e.clone());
        }
        l.ch.check()?;
        for _ in 0..4096 {
            if let Target::None = l.target {
                if cur.as_ref().is_some_and(|c| c.done.is_some()) {
                    return Ok(());
                }
                let Some(env) = l.ch.rx.peek()? else {
                    return Ok(());
                };
                let reqs = &mut self.reqs;
                let posted = self.posted.iter().position(|&i| match reqs[i].as_ref() {
                    Some(Req {
                        kind: Kind::Recv { m, .. },
                        ..
                    }) => m.hit(w, &env),
                    _ => false,
                });
                if let Some(p) = posted {
                    let i = self.posted.remove(p).unwrap_or(0);
                    if let Some(Req {
                        kind: Kind::Recv { data, max, .. },
                        ..
                    }) = reqs[i].as_mut()
                    {
                        data.resize(env.len.min(*max), 0);
                    }
                    l.target = Target::Req(i);
                } else if let Some(c) = cur.as_mut().filter(|c| !c.taken && c.m.hit(w, &env)) {
                    if c.buf.is_none() {
                        c.done = Some(Ok(c.m.status(w, &env)));
                        return Ok(());
                    }
                    c.taken = true;
                    l.target = Target::Cur;
                } else if l.unexp_bytes == 0 || l.unexp_bytes + cost(&env) <= self.limit {
                    self.unexp_id += 1;
                    l.unexp_bytes += cost(&env);
                    let data = vec![0; env.len];
                    self.unexp.push_back(Unexp {
                        id: self.unexp_id,
                        src: w,
                        env,
                        data,
                        complete: false,
                        claimed: None,
                    });
                    l.target = Target::Unexp(self.unexp_id);
                } else {
                    return Ok(());
                }
            }
            let mut none: [u8; 0] = [];
            let (dst, max): (&mut [u8], usize) = match &l.target {
                Target::Req(i) => match self.reqs[*i].as_mut() {
                    Some(Req {
                        kind: Kind::Recv { data, max, .. },
                        ..
                    }) => (data, *max),
                    _ => (&mut none, 0),
                },
                Target::Unexp(id) => match self.unexp.iter_mut().rev().find(|u| u.id == *id) {
                    Some(u) => (&mut u.data, usize::MAX),
                    None => (&mut none, 0),
                },
                Target::Cur => match cur.as_mut().and_then(|c| c.buf.as_deref_mut()) {
                    Some(b) => {
                        let n = b.len();
                        (b, n)
                    }
                    None => (&mut none, 0),
                },
                Target::Discard | Target::None => (&mut none, 0),
            };
            let env = l.ch.rx.peek()?.unwrap_or(Envelope {
                tag: 0,
                ctx: 0,
                len: 0,
            });
            let res = match l.ch.rx.take(dst) {
                Ok(None) => return Ok(()),
                Ok(Some(len)) => {
                    *consumed = true;
                    Ok(len)
                }
                Err(e @ Error::Cancelled { .. }) => {
                    *consumed = true;
                    Err(e)
                }
                Err(e) => return Err(e),
            };
            let target = core::mem::replace(&mut l.target, Target::None);
            let status = |m: &Matcher| {
                let st = m.status(w, &env);
                match res {
                    Ok(len) if len > max => Err(Error::Truncated {
                        rank: st.source,
                        tag: env.tag,
                        len,
                        capacity: max,
                    }),
                    Ok(_) => Ok(st),
                    Err(ref e) => Err(e.clone()),
                }
            };
            match target {
                Target::Req(i) => {
                    if let Some(Req {
                        kind: Kind::Recv { m, .. },
                        result,
                        ..
                    }) = self.reqs[i].as_mut()
                    {
                        *result = Some(status(m));
                    }
                }
                Target::Unexp(id) => {
                    let pos = self.unexp.iter().rposition(|u| u.id == id);
                    match (pos, res) {
                        (Some(p), Err(_)) => {
                            l.unexp_bytes = l.unexp_bytes.saturating_sub(cost(&env));
                            if let Some(u) = self.unexp.remove(p)
                                && let Some(Some(Req { result, .. })) =
                                    u.claimed.map(|i| self.reqs[i].as_mut())
                            {
                                *result = Some(Err(Error::Cancelled {
                                    rank: w,
                                    tag: env.tag,
                                }));
                            }
                        }
                        (Some(p), Ok(_)) => {
                            if let Some(i) = self.unexp[p].claimed {
                                l.unexp_bytes = l.unexp_bytes.saturating_sub(cost(&env));
                                let u = self.unexp.remove(p);
                                deliver(&mut self.reqs[i], u);
                            } else {
                                self.unexp[p].complete = true;
                            }
                        }
                        _ => {}
                    }
                }
                Target::Cur => {
                    if let Some(c) = cur.as_mut() {
                        c.done = Some(status(&c.m));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Progress on every link, fairly (round robin start).
    fn progress_all(&mut self, mut cur: Option<&mut Cur<'_>>) {
        let n = self.links.len();
        self.rr = (self.rr + 1) % n.max(1);
        for k in 0..n {
            let w = ((self.rr + k) % n) as Rank;
            if self.links[w as usize]
                .as_ref()
                .is_none_or(|l| l.failed.is_some())
            {
                continue;
            }
            let r = self
                .progress_sends(w)
                .and_then(|_| self.progress_link(w, cur.as_deref_mut()));
            if let Err(e) = r {
                self.fail_link(w, &e);
            }
            if cur.as_ref().is_some_and(|c| c.done.is_some()) {
                return;
            }
        }
    }

    /// Searches the unexpected queue for the current call. A probe only looks.
    fn match_unexp(&mut self, c: &mut Cur<'_>) -> bool {
        let Some(p) = self
            .unexp
            .iter()
            .position(|u| u.claimed.is_none() && c.m.hit(u.src, &u.env))
        else {
            return false;
        };
        let u = &self.unexp[p];
        let st = c.m.status(u.src, &u.env);
        let Some(buf) = c.buf.as_deref_mut() else {
            c.done = Some(Ok(st));
            return true;
        };
        if !u.complete {
            return false;
        }
        let Some(u) = self.unexp.remove(p) else {
            return false;
        };
        if let Some(l) = self.links[u.src as usize].as_mut() {
            l.unexp_bytes = l.unexp_bytes.saturating_sub(cost(&u.env));
        }
        let n = u.data.len().min(buf.len());
        buf[..n].copy_from_slice(&u.data[..n]);
        c.done = Some(if u.data.len() > buf.len() {
            Err(Error::Truncated {
                rank: st.source,
                tag: st.tag,
                len: st.len,
                capacity: buf.len(),
            })
        } else {
            Ok(st)
        });
        true
    }

    /// For a wildcard receive: an error if every member's channel has failed.
    fn all_failed(&self, m: &Matcher) -> Option<Error> {
        let mut err = None;
        for &w in m.members.as_deref().unwrap_or(&[]) {
            if let Some(l) = self.links.get(w as usize).and_then(|l| l.as_ref()) {
                err = Some(l.failed.clone()?);
            }
        }
        err
    }

    /// The fast path of a receive from one source when nothing else is pending: spin
    /// on that ring alone, take a matching one-slot message straight into `buf`. `None`
    /// sends the caller down the general path; an error fails the link.
    fn recv_fast(
        &mut self,
        m: &Matcher,
        buf: &mut [u8],
        dl: Deadline,
    ) -> Result<Option<Status>, Error> {
        let Some(w) = m.src else { return Ok(None) };
        if !self.unexp.is_empty() || !self.posted.is_empty() {
            return Ok(None);
        }
        let Some(Some(l)) = self.links.get_mut(w as usize) else {
            return Ok(None);
        };
        if !matches!(l.target, Target::None) || l.failed.is_some() || !l.sendq.is_empty() {
            return Ok(None);
        }
        l.ch.check()?;
        // Spin at most `spin_ns` (and 1 ms: then the general path, which also watches
        // liveness), looking at the clock every 64 polls only.
        let mut end = None;
        for i in 0u64.. {
            let env = match l.ch.rx.take_small(buf, m.ctx, m.tag) {
                Small::Took(env) => env,
                Small::Empty if dl == Deadline::NOW => return Ok(None),
                Small::Empty => {
                    if i % 64 == 63 {
                        let now = self.p.now();
                        let spin = self.p.spin_ns().min(1_000_000);
                        if now >= *end.get_or_insert(now.saturating_add(spin).min(dl.0)) {
                            return Ok(None);
                        }
                    }
                    core::hint::spin_loop();
                    continue;
                }
                // One fragment (or a slot to validate): the ring's general path.
                Small::Other => match l.ch.rx.peek()? {
                    Some(env) if env.len <= buf.len() && l.ch.rx.whole() && m.hit(w, &env) => {
                        if l.ch.rx.take(buf)?.is_none() {
                            return Ok(None);
                        }
                        env
                    }
                    _ => return Ok(None),
                },
            };
            if l.ch.rx.peer_waiting() {
                self.p.ring(w);
            }
            return Ok(Some(m.status(w, &env)));
        }
        Ok(None)
    }

    /// Runs a blocking receive or probe to completion or deadline.
    fn run(&mut self, c: &mut Cur<'_>, dl: Deadline) -> Result<Status, Error> {
        // Queued sends keep moving while we wait (else two sendrecvs could deadlock).
        let queued = self.links.iter().flatten().any(|l| !l.sendq.is_empty());
        let watch = if queued { None } else { c.m.src };
        let mut w = self.waiter();
        let res = loop {
            if !c.taken && !self.unexp.is_empty() && self.match_unexp(c) {
                break c.done.take();
            }
            match watch {
                Some(src) => {
                    if let Err(e) = self.progress_link(src, Some(c))
                        && c.done.is_none()
                    {
                        break Some(Err(e));
                    }
                    if queued {
                        for p in 0..self.links.len() as Rank {
                            if let Err(e) = self.progress_sends(p) {
                                self.fail_link(p, &e);
                            }
                        }
                    }
                }
                None => self.progress_all(Some(c)),
            }
            if c.done.is_some() {
                break c.done.take();
            }
            if let Some(e) = self.all_failed(&c.m) {
                break Some(Err(e));
            }
            if let Err(e) = self.pause(&mut w, dl, watch) {
                break Some(Err(e));
            }
        };
        self.done_waiting(&w, watch);
        // A message matched to this call but not finished (deadline) is discarded.
        for l in self.links.iter_mut().flatten() {
            if let Target::Cur = l.target {
                l.target = Target::Discard;
            }
        }
        res.unwrap_or(Err(Error::Timeout { rank: ANY_SOURCE }))
    }

    // ---- point to point -------------------------------------------------------------

    /// Blocking send of `data` to `dest` in `comm`. With [`Deadline::NOW`] it is a
    /// non-blocking attempt (`WouldBlock` when out of credit).
    pub fn send(
        &mut self,
        comm: &Comm,
        dest: Rank,
        tag: u32,
        data: &[u8],
        dl: Deadline,
    ) -> Result<(), Error> {
        let w = self.route(comm, dest, tag, dl == Deadline::NOW)?;
        self.send_ctx(w, tag, comm.ctx, data, dl)
    }

    pub(crate) fn send_ctx(
        &mut self,
        w: Rank,
        tag: u32,
        ctx: u32,
        data: &[u8],
        dl: Deadline,
    ) -> Result<(), Error> {
        let mut done = 0;
        let mut wt = Waiter {
            sending: Some(w),
            ..self.waiter()
        };
        let res = loop {
            let l = self.links[w as usize]
                .as_mut()
                .ok_or(Error::PermissionDenied { rank: w, tag })?;
            if let Some(e) = &l.failed {
                break Err(e.clone());
            }
            if let Err(e) = l.ch.check() {
                break Err(e);
            }
            if dl == Deadline::NOW && !(l.sendq.is_empty() && l.ch.tx.fits(data.len())?) {
                break Err(Error::WouldBlock { rank: w });
            }
            if l.sendq.is_empty() {
                let before = done;
                let r = l.ch.tx.send(tag, ctx, data, &mut done);
                if (r.is_ok() || done != before) && l.ch.tx.peer_waiting() {
                    self.p.ring(w);
                }
                match r {
                    Ok(()) => break Ok(()),
                    Err(Error::WouldBlock { .. }) if dl == Deadline::NOW => {
                        break Err(Error::WouldBlock { rank: w });
                    }
                    Err(Error::WouldBlock { .. }) => {}
                    Err(e) => break Err(e),
                }
            }
            // While waiting for credit, keep receiving (avoids send-send deadlock).
            self.progress_all(None);
            if let Err(e) = self.pause(&mut wt, dl, Some(w)) {
                break Err(e);
            }
        };
        self.done_waiting(&wt, Some(w));
        if res.is_err()
            && done > 0
            && let Some(l) = self.links[w as usize].as_mut()
        {
            let _ = l.ch.tx.abort();
        }
        res
    }

    /// Blocking receive into `buf` from `src` (or [`ANY_SOURCE`]) with `tag` (or
    /// [`ANY_TAG`]). A longer message fills `buf` and returns `Truncated`.
    pub fn recv(
        &mut self,
        comm: &Comm,
        src: Rank,
        tag: u32,
        buf: &mut [u8],
        dl: Deadline,
    ) -> Result<Status, Error> {
        let m = self.matcher(comm, src, tag)?;
        match self.recv_fast(&m, buf, dl) {
            Ok(Some(st)) => return Ok(st),
            Err(e) => {
                self.fail_link(m.src.unwrap_or(0), &e);
                return Err(e);
            }
            Ok(None) => {}
        }
        self.run(
            &mut Cur {
                m,
                buf: Some(buf),
                taken: false,
                done: None,
            },
            dl,
        )
    }

    /// Waits until a matching message is available; returns its status without
    /// receiving it.
    pub fn probe(
        &mut self,
        comm: &Comm,
        src: Rank,
        tag: u32,
        dl: Deadline,
    ) -> Result<Status, Error> {
        let m = self.matcher(comm, src, tag)?;
        self.run(
            &mut Cur {
                m,
                buf: None,
                taken: false,
                done: None,
            },
            dl,
        )
    }

    /// Non-blocking probe: `Ok(None)` if no matching message is available now.
    pub fn iprobe(&mut self, comm: &Comm, src: Rank, tag: u32) -> Result<Option<Status>, Error> {
        match self.probe(comm, src, tag, Deadline::NOW) {
            Err(Error::Timeout { .. }) => Ok(None),
            r => r.map(Some),
        }
    }

    /// Starts a send; the data is copied if it cannot go out at once.
    pub fn isend(
        &mut self,
        comm: &Comm,
        dest: Rank,
        tag: u32,
        data: &[u8],
    ) -> Result<Request, Error> {
        let w = self.route(comm, dest, tag, true)?;
        self.isend_ctx(w, tag, comm.ctx, data, dest)
    }

    pub(crate) fn isend_ctx(
        &mut self,
        w: Rank,
        tag: u32,
        ctx: u32,
        data: &[u8],
        dest: Rank,
    ) -> Result<Request, Error> {
        let st = Status {
            source: dest,
            tag,
            len: data.len(),
        };
        let l = self.links[w as usize]
            .as_mut()
            .ok_or(Error::PermissionDenied { rank: dest, tag })?;
        l.ch.check()?;
        let mut done = 0;
        if l.sendq.is_empty() {
            let r = l.ch.tx.send(tag, ctx, data, &mut done);
            if (r.is_ok() || done > 0) && l.ch.tx.peer_waiting() {
                self.p.ring(w);
            }
            match r {
                Ok(()) => {
                    return Ok(self.new_req(
                        Kind::Send {
                            peer: w,
                            tag,
                            ctx,
                            data: Vec::new(),
                            done,
                        },
                        Some(Ok(st)),
                    ));
                }
                Err(Error::WouldBlock { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let req = self.new_req(
            Kind::Send {
                peer: w,
                tag,
                ctx,
                data: data.to_vec(),
                done,
            },
            None,
        );
        if let Some(l) = self.links[w as usize].as_mut() {
            l.sendq.push_back(req.id as usize);
        }
        Ok(req)
    }

    /// Posts a receive of at most `max` bytes; the data comes with the completion.
    pub fn irecv(
        &mut self,
        comm: &Comm,
        src: Rank,
        tag: u32,
        max: usize,
    ) -> Result<Request, Error> {
        let m = self.matcher(comm, src, tag)?;
        let found = self
            .unexp
            .iter()
            .position(|u| u.claimed.is_none() && m.hit(u.src, &u.env));
        let req = self.new_req(
            Kind::Recv {
                m,
                max,
                data: Vec::new(),
            },
            None,
        );
        let i = req.id as usize;
        match found {
            Some(p) if self.unexp[p].complete => {
                let u = self.unexp.remove(p);
                if let Some(l) = u.as_ref().and_then(|u| self.links[u.src as usize].as_mut()) {
                    l.unexp_bytes = l
                        .unexp_bytes
                        .saturating_sub(u.as_ref().map_or(0, |u| cost(&u.env)));
                }
                deliver(&mut self.reqs[i], u);
            }
            Some(p) => self.unexp[p].claimed = Some(i),
            None => self.posted.push_back(i),
        }
        Ok(req)
    }

    /// Completes a request if it is done: `Ok(None)` if still pending.
    pub fn test(&mut self, req: &Request) -> Result<Option<Completion>, Error> {
        let i = self.req_index(req)?;
        if self.reqs[i].as_ref().is_some_and(|q| q.result.is_none()) {
            self.progress_all(None);
        }
        self.finish(i).transpose()
    }

    /// Waits for a request until the deadline (on `Timeout` it stays pending).
    pub fn wait(&mut self, req: &Request, dl: Deadline) -> Result<Completion, Error> {
        let i = self.req_index(req)?;
        let mut w = self.waiter();
        let res = loop {
            if let Some(r) = self.finish(i) {
                break r;
            }
            self.progress_all(None);
            if let Some(r) = self.finish(i) {
                break r;
            }
            if let Err(e) = self.pause(&mut w, dl, None) {
                break Err(e);
            }
        };
        self.done_waiting(&w, None);
        res
    }

    /// Waits for all requests (same deadline); the first error is returned.
    pub fn waitall(&mut self, reqs: &[Request], dl: Deadline) -> Result<Vec<Completion>, Error> {
        reqs.iter().map(|r| self.wait(r, dl)).collect()
    }

    /// Cancels a pending request: its `wait` then returns `Cancelled`. A receive that
    /// already started taking a message drops the rest of it; a send half out is
    /// aborted (the receiver gets `Cancelled`).
    pub fn cancel(&mut self, req: &Request) -> Result<(), Error> {
        let i = self.req_index(req)?;
        let Some(q) = self.reqs[i].as_mut() else {
            return Ok(());
        };
        if q.result.is_some() {
            return Ok(());
        }
        let (rank, tag) = match &q.kind {
            Kind::Send { peer, tag, .. } => (*peer, *tag),
            Kind::Recv { m, .. } => (m.src.unwrap_or(ANY_SOURCE), m.tag.unwrap_or(ANY_TAG)),
        };
        q.result = Some(Err(Error::Cancelled { rank, tag }));
        self.posted.retain(|&p| p != i);
        for u in self.unexp.iter_mut() {
            if u.claimed == Some(i) {
                u.claimed = None;
            }
        }
        for l in self.links.iter_mut().flatten() {
            if matches!(l.target, Target::Req(t) if t == i) {
                l.target = Target::Discard;
            }
            if let Some(p) = l.sendq.iter().position(|&s| s == i) {
                l.sendq.remove(p);
                if p == 0 && l.ch.tx.inflight() {
                    let _ = l.ch.tx.abort();
                }
            }
        }
        Ok(())
    }

    /// Sends to `dest` and receives from `src` at once (no deadlock between pairs).
    #[allow(clippy::too_many_arguments)]
    pub fn sendrecv(
        &mut self,
        comm: &Comm,
        dest: Rank,
        stag: u32,
        data: &[u8],
        src: Rank,
        rtag: u32,
        buf: &mut [u8],
        dl: Deadline,
    ) -> Result<Status, Error> {
        let w = self.route(comm, dest, stag, false)?;
        let s = self.isend_ctx(w, stag, comm.ctx, data, dest)?;
        let st = self.recv(comm, src, rtag, buf, dl);
        let sent = self.wait(&s, dl);
        if sent.is_err() {
            let _ = self.cancel(&s);
            let _ = self.finish(s.id as usize);
        }
        let st = st?;
        sent.map(|_| st)
    }

    /// A communicator over the same members with a fresh context (collective traffic
    /// and user traffic of different communicators never match each other).
    pub(crate) fn make_comm(&self, ctx: u32, ranks: Vec<Rank>) -> Comm {
        let rank = ranks.iter().position(|&w| w == self.rank).unwrap_or(0) as Rank;
        Comm {
            ctx,
            ranks: ranks.into(),
            rank,
        }
    }
}

/// What a buffered unexpected message counts against its peer's budget: empty
/// messages cost something too, so a flood of them stays bounded.
fn cost(env: &Envelope) -> usize {
    env.len + 64
}

fn deliver(slot: &mut Option<Req>, u: Option<Unexp>) {
    let (
        Some(Req {
            kind: Kind::Recv { m, max, data },
            result,
            ..
        }),
        Some(u),
    ) = (slot.as_mut(), u)
    else {
        return;
    };
    let st = m.status(u.src, &u.env);
    *data = u.data;
    *result = Some(if data.len() > *max {
        data.truncate(*max);
        Err(Error::Truncated {
            rank: st.source,
            tag: st.tag,
            len: st.len,
            capacity: *max,
        })
    } else {
        Ok(st)
    });
}
