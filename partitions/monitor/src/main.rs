//! The monitor partition: holds the rights table, meters every channel from its
//! producer counters, revokes, and has the launcher kill and restart partitions.
//!
//! # Command line (written by `images/src/guest_args.rs`)
//! - `watch=SLOT:LO:HI`, once per channel of the system: the PCI slot where this VM
//!   sees the channel between world ranks `LO < HI` (direction 0 is `LO → HI`);
//! - `control=SLOT`: the control region shared with the launcher (`ivshmem-plain`),
//!   laid out as [`monitor::region`] defines (shared with the launcher);
//! - `period_ms=N`: the metering period; `on_flood=kill|revoke|report`.
//!
//! # Publishing the rights
//! The launcher creates every channel pending (`layout::reopen`). Before anything
//! else, the monitor writes into each channel's control block the send rights of both
//! its ends from the rights table (`RightsTable::channel_rights`) and opens it
//! (`layout::publish`); a partition waits for that before it uses the channel, and
//! learns only the rights of its own channels. Every reopen publishes them again.
//!
//! # The loop
//! Every period: read every channel's producer counters
//! (`interconnect::layout::Meter`), feed them to [`monitor::Monitor::poll`], convict
//! the sender of any direction that moved without an edge
//! ([`monitor::Monitor::unauthorized`]), carry out
//! its actions (revoke: the channel's control word, then a doorbell to both ends;
//! kill/restart: a command record to the launcher; log: the verdict with its
//! evidence), convict the sender of any channel it revoked that an end opened again
//! (`Verdict::Unrevoked`), then take the launcher's exit reports. The loop makes no system call
//! but the deadline wait for the period; while a kill it asked for is pending it
//! waits 200 us at a time instead, so that the moment the launcher marks the VM's
//! channels dead is seen within a fraction of a millisecond (the figure for
//! BENCHMARKS.md). With `wait=spin` among
//! its manifest `args` it spins between samples instead of blocking.
//!
//! # Restarts
//! Before it asks for a restart, the monitor reopens every channel of the partition
//! with `layout::reopen` and the sides' current generations (from the supervisor's
//! table): peers still attached to the old incarnation get `PeerDead` until they
//! re-attach, and the monitor's own end of a reopened control channel re-attaches at
//! once, so the new incarnation's records reach it.
//!
//! # Control channels
//! A partition granted a right to the monitor partition sends it control records
//! (`monitor::control::FromPartition`, 32 bytes, any tag) on that channel: the
//! monitor receives them through an ordinary endpoint over its own `ch=` channels
//! (non-blocking, every round) and hands each to the supervisor as coming from the
//! channel's other end, whatever the record says. A record that does not decode, or
//! names another partition, convicts its sender as hostile (revoke, kill).
//!
//! A partition that ends with a status of its own (0..=99) simply ended; any other
//! exit is handed to the supervisor as a crash. The monitor ends (status 0) once
//! every other partition has ended for good.
//!
//! # Assumptions
//! - The launcher is trusted for the rights table and the command line; its exit
//!   records are still decoded strictly, and anything else in the region is bounded.
//! - Revoking is the control word of the whole channel (both directions).
//! - The byte meter is `layout::Meter`'s sum over the slots it saw (slots reused
//!   between two samples are missed), so it can only under-count bytes; messages are
//!   counted exactly.
#![no_std]
#![no_main]
// Unsafe in one place only: `channel_region`.
#![deny(unsafe_code)]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use core::time::Duration;

use interconnect::layout::{self, Counts, Geometry};
use interconnect::shm::Region;
use monitor::control::{CONTROL_LEN, Command, FromPartition, LauncherEvent};
use monitor::meter::{ChannelCounters, Counters, MeterConfig};
use monitor::region;
use monitor::rights::RightsTable;
use monitor::{Action, EdgeId, FloodAction, Monitor, PartitionId, SupervisorConfig, Verdict};
use rt::ShmRegion;

rt::entry!(main);

/// Exit statuses.
mod status {
    /// Bad command line or missing device.
    pub const SETUP: u8 = 90;
    /// The control region holds no valid rights table.
    pub const TABLE: u8 = 91;
}

/// How often a pending kill is checked.
const KILL_POLL: Duration = Duration::from_micros(200);
/// How long to watch for a pending kill before going back to the periodic wait.
const KILL_WATCH_NS: u64 = 500_000_000;

/// One channel as the monitor sees it.
struct Watched {
    ends: [u16; 2],
    region: Region,
    geometry: Geometry,
    meter: layout::Meter,
    counts: [Counts; 2],
    /// Malformed messages each direction's receiver has reported so far.
    malformed: [u64; 2],
    /// Directions without an edge already judged for sending (until a reopen).
    unauthorized: [bool; 2],
    /// The edge this monitor revoked the channel for (until a reopen): the channel
    /// must stay revoked.
    revoked: Option<EdgeId>,
    bell: Option<rt::Doorbell>,
}

/// The producer counters of the last read, per edge.
struct Sampled<'a> {
    chans: &'a [Watched],
    edges: &'a BTreeMap<u16, (usize, usize)>,
}

impl ChannelCounters for Sampled<'_> {
    fn produced(&self, edge: EdgeId) -> Counters {
        match self.edges.get(&edge.0) {
            Some(&(c, d)) => {
                let k = self.chans[c].counts[d];
                Counters {
                    msgs: k.messages,
                    bytes: k.data_bytes,
                }
            }
            None => Counters::default(),
        }
    }
}

/// The one place that turns a PCI BAR into a [`Region`].
#[allow(unsafe_code)]
fn channel_region(shm: &ShmRegion) -> Region {
    // SAFETY: the runtime mapped this BAR (`len` bytes) into the service for the
    // partition's whole life and never unmaps it; other VMs and the launcher write it
    // concurrently, which is what `Region` is for (atomics and volatile copies only,
    // no references into it).
    unsafe { Region::from_raw(shm.as_ptr(), shm.len(), None) }
}

fn now() -> u64 {
    rt::time::now().as_nanos()
}

fn find(slot: u8) -> Option<&'static ShmRegion> {
    rt::shm_regions()
        .iter()
        .find(|r| r.pci().bus == 0 && r.pci().device == slot && r.pci().function == 0)
}

fn parse_watch(v: &str) -> Option<(u8, u16, u16)> {
    let mut f = v.split(':');
    let slot = f.next()?.parse().ok()?;
    let lo = f.next()?.parse().ok()?;
    let hi = f.next()?.parse().ok()?;
    (f.next().is_none() && lo < hi).then_some((slot, lo, hi))
}

/// The launcher's side of the queues, seen from the monitor.
struct Control {
    shm: &'static ShmRegion,
    m2l_head: u64,
    l2m_tail: u64,
    pending: Vec<Command>,
}

impl Control {
    /// Publishes what it can of the pending commands.
    fn flush(&mut self) {
        while let Some(&cmd) = self.pending.first() {
            let tail = self.shm.load_u64(region::M2L_TAIL).unwrap_or(0);
            if self.m2l_head.wrapping_sub(tail) >= region::QUEUE {
                return;
            }
            let off = region::slot(region::M2L_SLOTS, self.m2l_head);
            let _ = self.shm.write_bytes(off, &cmd.encode());
            let _ = self.shm.store_u64(off + CONTROL_LEN, now());
            self.m2l_head += 1;
            let _ = self.shm.store_u64(region::M2L_HEAD, self.m2l_head);
            self.pending.remove(0);
        }
    }

    /// The launcher's records since the last call (at most a queue's worth).
    fn take(&mut self) -> Vec<[u8; CONTROL_LEN]> {
        let head = self.shm.load_u64(region::L2M_HEAD).unwrap_or(0);
        let mut out = Vec::new();
        let n = head.saturating_sub(self.l2m_tail).min(region::QUEUE);
        for _ in 0..n {
            let off = region::slot(region::L2M_SLOTS, self.l2m_tail);
            let mut rec = [0u8; CONTROL_LEN];
            let _ = self.shm.read_bytes(off, &mut rec);
            out.push(rec);
            self.l2m_tail += 1;
        }
        let _ = self.shm.store_u64(region::L2M_TAIL, self.l2m_tail);
        out
    }
}

/// A kill asked for, watched until the launcher marks the VM's channels dead.
struct PendingKill {
    id: PartitionId,
    /// `(channel, side)` whose alive word turns dead when the VM is gone.
    probe: Option<(usize, usize)>,
    /// The last sample before the one that convicted (the crossing lies after it).
    crossed_after_ns: u64,
    convicted_ns: u64,
    revoked_ns: u64,
    commanded_ns: u64,
}

struct State {
    monitor: Monitor,
    /// The monitor's own channels (control channels of the partitions that have one).
    endpoint: Option<interconnect::Endpoint<fabric::Guest>>,
    chans: Vec<Watched>,
    /// edge id → (channel, direction).
    edges: BTreeMap<u16, (usize, usize)>,
    control: Control,
    /// Partitions that ended for good (the monitor itself counts as ended).
    ended: Vec<bool>,
    /// Restarts and reopens waiting for the exit of the incarnation killed first.
    deferred: Vec<(PartitionId, Action)>,
    kills: Vec<PendingKill>,
    last_poll_ns: u64,
}

fn main() -> u8 {
    let Some(ctl) = rt::arg("control")
        .and_then(|s| s.parse().ok())
        .and_then(find)
    else {
        rt::log!("monitor: no control= region");
        return status::SETUP;
    };
    if ctl.load_u64(0) != Some(region::MAGIC) {
        rt::log!("monitor: the control region has no magic");
        return status::SETUP;
    }
    let len = ctl.load_u64(region::TABLE_LEN).unwrap_or(0) as usize;
    let mut bytes = vec![0u8; len.min(region::TABLE_MAX)];
    let _ = ctl.read_bytes(region::TABLE, &mut bytes);
    let table = match RightsTable::decode(&bytes) {
        Ok(t) => t,
        Err(e) => {
            rt::log!("monitor: rights table refused: {e:?}");
            return status::TABLE;
        }
    };
    let period_ms: u64 = rt::arg("period_ms")
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
        .max(1);
    let on_flood = match rt::arg("on_flood") {
        Some("kill") => FloodAction::Kill,
        Some("revoke") => FloodAction::Revoke,
        _ => FloodAction::Report,
    };
    let mut chans = Vec::new();
    for (k, v) in rt::args() {
        if k != "watch" {
            continue;
        }
        let Some((slot, lo, hi)) = parse_watch(v) else {
            rt::log!("monitor: bad watch=`{v}`");
            return status::SETUP;
        };
        let Some(shm) = find(slot) else {
            rt::log!("monitor: watch={v}: no device in slot {slot}");
            return status::SETUP;
        };
        let region = channel_region(shm);
        let geometry = match layout::read_header(&region) {
            Ok((g, ranks)) if ranks == [u32::from(lo), u32::from(hi)] => g,
            _ => {
                rt::log!("monitor: watch={v}: channel header refused");
                return status::SETUP;
            }
        };
        chans.push(Watched {
            ends: [lo, hi],
            region,
            geometry,
            meter: layout::Meter::default(),
            counts: [Counts::default(); 2],
            malformed: [0; 2],
            unauthorized: [false; 2],
            revoked: None,
            bell: shm.doorbell(),
        });
    }
    // Publish each channel's rights: its ends may use it from now on.
    for c in &chans {
        layout::publish(&c.region, table.channel_rights(c.ends));
    }
    let mut edges = BTreeMap::new();
    for e in table.edges() {
        let (lo, hi, d) = if e.from < e.to {
            (e.from, e.to, 0)
        } else {
            (e.to, e.from, 1)
        };
        match chans.iter().position(|c| c.ends == [lo, hi]) {
            Some(c) => {
                edges.insert(e.id.0, (c, d));
            }
            None => rt::log!(
                "monitor: edge {} ({} -> {}) has no channel",
                e.id.0,
                e.from,
                e.to
            ),
        }
    }
    let ended = table.partitions().iter().map(|p| p.monitor).collect();
    let t0 = now();
    let config = SupervisorConfig {
        heartbeat_timeout_ns: None,
        on_flood,
    };
    let monitor = Monitor::new(table, MeterConfig::default(), config, t0);
    // Its own channels, if any: the partitions' control channels.
    let endpoint = if rt::args().any(|(k, _)| k == "ch") {
        Some(fabric::endpoint_or_exit())
    } else {
        None
    };
    let mut s = State {
        monitor,
        endpoint,
        chans,
        edges,
        control: Control {
            shm: ctl,
            m2l_head: 0,
            l2m_tail: 0,
            pending: Vec::new(),
        },
        ended,
        deferred: Vec::new(),
        kills: Vec::new(),
        last_poll_ns: t0,
    };
    // Meter from what the rings hold now (partitions boot alongside the monitor).
    s.read_counters();
    for (&e, _) in s.edges.iter() {
        let base = Sampled {
            chans: &s.chans,
            edges: &s.edges,
        }
        .produced(EdgeId(e));
        s.monitor.reopened(EdgeId(e), t0, base);
    }
    let _ = ctl.store_u64(region::READY, t0.max(1));
    rt::log!(
        "monitor: published the rights of {} channel(s); metering {} edge(s) every {period_ms} ms, on_flood={on_flood:?}",
        s.chans.len(),
        s.edges.len()
    );
    // `wait=spin` (partition args): spin at CPL 3 between samples instead of blocking
    // in the runtime (a host core for a tighter period).
    let spin = rt::arg("wait") == Some("spin");
    let (mut prev_t, mut max_gap, mut samples) = (t0, 0u64, 0u64);
    loop {
        let t = now();
        s.read_counters();
        let actions = s.monitor.poll(
            t,
            &Sampled {
                chans: &s.chans,
                edges: &s.edges,
            },
        );
        s.execute(actions, None);
        s.reopened_by_an_end(t);
        s.unauthorized_sends(t);
        s.malformed_reports(t);
        s.control_records(t);
        s.last_poll_ns = t;
        for rec in s.control.take() {
            s.on_launcher(&rec);
        }
        s.control.flush();
        s.watch_kills();
        if s.ended.iter().all(|&e| e) && s.kills.is_empty() {
            rt::log!(
                "monitor: every partition has ended; stopping ({samples} samples, longest gap {} us)",
                max_gap / 1000
            );
            return 0;
        }
        let gap = t.saturating_sub(prev_t);
        prev_t = t;
        if gap > max_gap {
            max_gap = gap;
        }
        samples += 1;
        let next = rt::time::now().after(Duration::from_millis(period_ms));
        if spin {
            while rt::time::now() < next {
                core::hint::spin_loop();
            }
        } else if s.kills.is_empty() {
            let _ = rt::wait(Some(next));
        } else {
            // Watching a kill: short waits, so that the launcher and the dying VM get
            // the host cores.
            let _ = rt::wait(Some(rt::time::now().after(KILL_POLL)));
        }
    }
}

impl State {
    fn read_counters(&mut self) {
        for c in &mut self.chans {
            c.counts = c.meter.read(&c.region, &c.geometry);
        }
    }

    /// A direction without an edge whose producer counter moved convicts its sender
    /// (once per direction until the channel is reopened).
    /// A channel revoked here that reads open again was rewritten by one of its
    /// ends (the fabric never writes the control word): convicts the revoked edge's
    /// sender ([`Verdict::Unrevoked`]), which revokes the channel again and kills it.
    fn reopened_by_an_end(&mut self, t: u64) {
        for c in 0..self.chans.len() {
            let ch = &self.chans[c];
            if let Some(edge) = ch.revoked
                && ch.region.load32(layout::CONTROL, Ordering::Acquire) == layout::OPEN
            {
                let actions = self.monitor.unrevoked(edge, t);
                self.chans[c].revoked = None;
                self.execute(actions, None);
            }
        }
    }

    fn unauthorized_sends(&mut self, t: u64) {
        let mut actions = Vec::new();
        for ch in &mut self.chans {
            for d in 0..2 {
                let (from, to, n) = (ch.ends[d], ch.ends[1 - d], ch.counts[d].messages);
                if n > 0 && !ch.unauthorized[d] {
                    let a = self.monitor.unauthorized(from, to, n, t);
                    ch.unauthorized[d] = !a.is_empty();
                    actions.extend(a);
                }
            }
        }
        self.execute(actions, None);
    }

    /// A receiver's malformed counter (in its consumer line, so it is the receiver's
    /// word) that rose is its report against the sender: handed to the supervisor as
    /// that receiver's `Malformed` record, which logs it (an accusation is not acted
    /// upon).
    fn malformed_reports(&mut self, t: u64) {
        let mut reports = Vec::new();
        for (&edge, &(c, d)) in &self.edges {
            let ch = &mut self.chans[c];
            let now_count = ch.counts[d].rx_malformed;
            if now_count > ch.malformed[d] {
                ch.malformed[d] = now_count;
                let (from, to) = (ch.ends[d], ch.ends[1 - d]);
                reports.push((edge, from, to, now_count));
            }
        }
        for (edge, from, to, count) in reports {
            let sup = self.monitor.supervisor();
            let (Some(id), Some(peer)) = (sup.current(to), sup.current(from)) else {
                continue;
            };
            rt::log!("malformed: {id} counts {count} malformed message(s) from {peer}");
            let rec = FromPartition::Malformed {
                id,
                peer,
                edge: EdgeId(edge),
                offset: 0,
            }
            .encode();
            let actions = self.monitor.on_partition(to, &rec, t);
            self.execute(actions, None);
        }
    }

    /// Takes the records waiting on the partitions' control channels (at most 64 a
    /// round), each judged as coming from the channel's other end.
    fn control_records(&mut self, t: u64) {
        let Some(ep) = self.endpoint.as_mut() else {
            return;
        };
        let w = ep.world();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        for _ in 0..64 {
            match ep.recv(
                &w,
                interconnect::ANY_SOURCE,
                interconnect::ANY_TAG,
                &mut buf,
                interconnect::Deadline::NOW,
            ) {
                Ok(st) => got.push((st.source, buf[..st.len.min(buf.len())].to_vec())),
                // Longer than any record: hostile too (its length says so).
                Err(interconnect::Error::Truncated { rank, len, .. }) => {
                    got.push((rank, vec![0u8; len.min(buf.len() + 1)]))
                }
                Err(_) => break,
            }
        }
        for (from, rec) in got {
            let Ok(owner) = u16::try_from(from) else {
                continue;
            };
            if let Ok(FromPartition::Heartbeat { id }) = FromPartition::decode(&rec) {
                rt::log!("heartbeat: {id} on the control channel of {owner}");
            }
            let actions = self.monitor.on_partition(owner, &rec, t);
            self.execute(actions, None);
        }
    }

    fn edge_name(&self, edge: EdgeId) -> (u16, u16) {
        self.monitor
            .supervisor()
            .table()
            .edge_by_id(edge)
            .map_or((u16::MAX, u16::MAX), |e| (e.from, e.to))
    }

    /// Carries out the supervisor's actions. `exited`: the incarnation whose exit
    /// caused them (already gone, so what waits for its death can go at once).
    /// Revokes and kill commands go first, logs after: serial output goes through
    /// emulated ring 0 here and costs milliseconds per line.
    fn execute(&mut self, actions: Vec<Action>, exited: Option<PartitionId>) {
        let mut revoked: Vec<(EdgeId, u64)> = Vec::new();
        for a in &actions {
            if let Action::Revoke(edge) = *a
                && let Some(&(c, _)) = self.edges.get(&edge.0)
            {
                let ch = &mut self.chans[c];
                ch.revoked.get_or_insert(edge);
                layout::revoke(&ch.region);
                if let Some(b) = &ch.bell {
                    for id in 0..2u16 {
                        if id != b.own_id() {
                            b.notify(id, 0);
                        }
                    }
                }
                revoked.push((edge, now()));
            }
        }
        for a in &actions {
            if let Action::Kill(id) = *a
                && exited != Some(id)
            {
                self.control.pending.push(Command::Kill(id));
            }
        }
        self.control.flush();
        let commanded_ns = now();
        let mut killed = exited;
        let mut flood: Option<u64> = None;
        let mut later = Vec::new();
        for a in actions {
            match a {
                Action::Log(v) => {
                    if let Verdict::Flood { edge, at_ns, .. } = v {
                        let (from, to) = self.edge_name(edge);
                        flood = Some(at_ns);
                        rt::log!(
                            "verdict: {v} (edge {from} -> {to}; within quota at the sample before, {} ns)",
                            self.last_poll_ns
                        );
                    } else {
                        rt::log!("verdict: {v}");
                    }
                }
                Action::Revoke(edge) => {
                    let (from, to) = self.edge_name(edge);
                    let at = revoked.iter().find(|r| r.0 == edge).map_or(0, |r| r.1);
                    rt::log!("revoke: edge {} ({from} -> {to}) at {at} ns", edge.0);
                }
                Action::Kill(id) => {
                    killed = Some(id);
                    if exited == Some(id) {
                        continue; // already gone
                    }
                    rt::log!("kill: asked the launcher to kill {id} at {commanded_ns} ns");
                    let probe = self.chans.iter().enumerate().find_map(|(c, ch)| {
                        ch.ends
                            .iter()
                            .position(|&r| r == id.index)
                            .map(|side| (c, side))
                    });
                    self.kills.push(PendingKill {
                        id,
                        probe,
                        crossed_after_ns: self.last_poll_ns,
                        convicted_ns: flood.unwrap_or(commanded_ns),
                        revoked_ns: revoked.first().map_or(commanded_ns, |r| r.1),
                        commanded_ns,
                    });
                }
                Action::Restart(_) | Action::Reopen(_) => match killed {
                    Some(k) if exited != Some(k) => self.deferred.push((k, a)),
                    _ => later.push(a),
                },
                Action::Stopped { id, restarts } => {
                    rt::log!("stopped: {id} stays dead after {restarts} restart(s)");
                    if let Some(e) = self.ended.get_mut(usize::from(id.index)) {
                        *e = true;
                    }
                }
            }
        }
        self.reopen_then_restart(later);
    }

    /// Reopens (re-initialises) channels, then asks for restarts: a new incarnation
    /// never finds a revoked ring.
    fn reopen_then_restart(&mut self, actions: Vec<Action>) {
        let mut done: Vec<usize> = Vec::new();
        for a in &actions {
            let Action::Reopen(edge) = *a else { continue };
            let Some(&(c, _)) = self.edges.get(&edge.0) else {
                continue;
            };
            if !done.contains(&c) {
                done.push(c);
                let table = self.monitor.supervisor().table();
                let ch = &mut self.chans[c];
                let ranks = [u32::from(ch.ends[0]), u32::from(ch.ends[1])];
                let gens = ch
                    .ends
                    .map(|i| table.partition(i).map_or(0, |p| u32::from(p.generation)));
                let (lo, hi) = (ch.ends[0], ch.ends[1]);
                match layout::reopen(&ch.region, ch.geometry, ranks, gens) {
                    Ok(()) => {
                        layout::publish(&ch.region, table.channel_rights(ch.ends));
                        rt::log!("reopen: channel {lo}-{hi} as generations {gens:?}")
                    }
                    Err(e) => rt::log!("reopen: channel {lo}-{hi}: {e}"),
                }
                ch.meter = layout::Meter::default();
                ch.counts = [Counts::default(); 2];
                ch.malformed = [0; 2];
                ch.unauthorized = [false; 2];
                ch.revoked = None;
                // The monitor's own end of a control channel follows the new generation.
                if let Some(ep) = self.endpoint.as_mut()
                    && let Some(me) = ch.ends.iter().position(|&r| u32::from(r) == ep.rank())
                {
                    let peer = u32::from(ch.ends[1 - me]);
                    match ep.reattach(peer) {
                        Ok(g) => rt::log!("reattach: control channel of {peer} generation {g}"),
                        Err(e) => rt::log!("reattach: control channel of {peer}: {e}"),
                    }
                }
            }
            self.monitor.reopened(edge, now(), Counters::default());
        }
        for a in actions {
            if let Action::Restart(id) = a {
                rt::log!("restart: asked the launcher to start {id}");
                self.control.pending.push(Command::Restart(id));
                if let Some(e) = self.ended.get_mut(usize::from(id.index)) {
                    *e = false;
                }
            }
        }
        self.control.flush();
    }

    fn on_launcher(&mut self, rec: &[u8; CONTROL_LEN]) {
        let t = now();
        let ev = match LauncherEvent::decode(rec) {
            Ok(ev) => ev,
            Err(e) => {
                rt::log!("monitor: refused a launcher record ({e:?})");
                return;
            }
        };
        let LauncherEvent::Exited { id, status } = ev;
        let index = usize::from(id.index);
        let actions = if status <= u32::from(abi::exit::SERVICE_MAX) {
            rt::log!("exit: {id} ended with its own status {status}");
            if let Some(e) = self.ended.get_mut(index) {
                *e = true;
            }
            Vec::new()
        } else {
            rt::log!("exit: {id} ended with {status:#x}");
            match self.monitor.on_launcher(rec, t) {
                Ok(a) => a,
                Err(e) => {
                    rt::log!("monitor: refused a launcher record ({e:?})");
                    Vec::new()
                }
            }
        };
        self.execute(actions, Some(id));
        // What waited for this incarnation's death.
        let (now_due, keep): (Vec<_>, Vec<_>) =
            self.deferred.drain(..).partition(|(k, _)| *k == id);
        self.deferred = keep;
        self.reopen_then_restart(now_due.into_iter().map(|(_, a)| a).collect());
        if status > u32::from(abi::exit::SERVICE_MAX)
            && let Some(e) = self.ended.get_mut(index)
        {
            // Ended for good unless the supervisor restarted it.
            *e = self.monitor.supervisor().current(id.index).is_none();
        }
    }

    /// Spins on the alive word of each partition it asked to kill; logs the latency
    /// once the launcher marked it dead (the VM is gone by then).
    fn watch_kills(&mut self) {
        let t = now();
        let chans = &self.chans;
        self.kills.retain(|k| {
            let dead = k.probe.is_none_or(|(c, side)| {
                chans[c].region.load32(
                    layout::alive_off(side),
                    core::sync::atomic::Ordering::Acquire,
                ) == layout::DEAD
            });
            if dead {
                let after = |x: u64| x.saturating_sub(k.crossed_after_ns) / 1000;
                rt::log!(
                    "killed: {} gone at {t} ns; after the sample before the verdict ({} ns; for a \
                     flood, the last one within quota): \
                     convicted {} us, revoked {} us, kill asked {} us, VM gone {} us",
                    k.id,
                    k.crossed_after_ns,
                    after(k.convicted_ns),
                    after(k.revoked_ns),
                    after(k.commanded_ns),
                    after(t)
                );
                return false;
            }
            if t.saturating_sub(k.revoked_ns) > KILL_WATCH_NS {
                rt::log!(
                    "kill: {} not seen dead after {} ms",
                    k.id,
                    KILL_WATCH_NS / 1_000_000
                );
                return false;
            }
            true
        });
    }
}
