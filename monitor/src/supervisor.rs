//! Liveness and restart: generational ids, fault reports, failure policies, and the
//! decisions that carry them out.
//!
//! The supervisor never blocks and never acts on a partition's word alone about another
//! partition: it decides from verdicts, from records read off a partition's own control
//! channel (whose owner is known by the channel, not by the record), and from the
//! launcher. Its output is a list of [`Action`]s for the monitor's executor.

use alloc::vec;
use alloc::vec::Vec;

use crate::control::{Command, FromPartition, Hostile, LauncherEvent};
use crate::id::{EdgeId, PartitionId};
use crate::meter::{ChannelCounters, Counters, Meter, MeterConfig};
use crate::rights::{Policy, RightsTable};
use crate::verdict::Verdict;

/// A decision for the monitor's executor, carried out in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write the verdict to the log.
    Log(Verdict),
    /// Set the edge's control word to revoked and ring both ends, so that calls blocked
    /// on it return `Revoked`/`PeerDead`.
    Revoke(EdgeId),
    /// Ask the launcher to kill this incarnation's VM ([`Command::Kill`]).
    Kill(PartitionId),
    /// Ask the launcher to start this new incarnation ([`Command::Restart`]), after the
    /// kill (its channels reopened first, see [`Action::Reopen`]).
    Restart(PartitionId),
    /// Reset the edge's ring, reopen its control word with each side's current
    /// generation (a peer attached to an older one gets `PeerDead` until it
    /// re-attaches), then call [`Monitor::reopened`].
    Reopen(EdgeId),
    /// The partition stays dead (policy stop, or its restart limit was reached).
    Stopped {
        /// Its last incarnation.
        id: PartitionId,
        /// How many restarts it had.
        restarts: u32,
    },
}

impl Action {
    /// The record to send to the launcher, for the actions the launcher carries out.
    pub fn command(&self) -> Option<Command> {
        match *self {
            Self::Kill(id) => Some(Command::Kill(id)),
            Self::Restart(id) => Some(Command::Restart(id)),
            _ => None,
        }
    }
}

/// What the monitor does to a sender convicted of flooding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FloodAction {
    /// Revoke all its channels and kill it; then its failure policy applies.
    #[default]
    Kill,
    /// Revoke the flooded edge only.
    Revoke,
    /// Only log the verdict (and keep metering).
    Report,
}

/// How the supervisor judges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// A live partition silent for longer than this is convicted as hung (`None`: never).
    pub heartbeat_timeout_ns: Option<u64>,
    /// What to do with a flooder.
    pub on_flood: FloodAction,
}

#[derive(Clone, Debug)]
struct Slot {
    id: PartitionId,
    policy: Policy,
    restarts: u32,
    alive: bool,
    last_heartbeat_ns: u64,
}

/// The monitor's record of every partition's current incarnation.
#[derive(Clone, Debug)]
pub struct Supervisor {
    table: RightsTable,
    slots: Vec<Slot>,
    config: SupervisorConfig,
}

impl Supervisor {
    /// Supervises the partitions of `table`, all alive at `now_ns`.
    pub fn new(table: RightsTable, config: SupervisorConfig, now_ns: u64) -> Self {
        let slots = table
            .partitions()
            .iter()
            .map(|p| Slot {
                id: p.id(),
                policy: p.policy,
                restarts: 0,
                alive: true,
                last_heartbeat_ns: now_ns,
            })
            .collect();
        Self {
            table,
            slots,
            config,
        }
    }

    /// The rights table, with current generations.
    pub fn table(&self) -> &RightsTable {
        &self.table
    }

    fn slot(&self, index: u16) -> Option<&Slot> {
        self.slots.iter().find(|s| s.id.index == index)
    }

    fn slot_mut(&mut self, index: u16) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.id.index == index)
    }

    /// The live incarnation of partition `index`, if any.
    pub fn current(&self, index: u16) -> Option<PartitionId> {
        self.slot(index).filter(|s| s.alive).map(|s| s.id)
    }

    /// Whether `id` is a live incarnation. A peer holding an id for which this is false
    /// gets `PeerDead`.
    pub fn is_current(&self, id: PartitionId) -> bool {
        self.current(id.index) == Some(id)
    }

    /// Restarts partition `index` has had.
    pub fn restarts(&self, index: u16) -> Option<u32> {
        self.slot(index).map(|s| s.restarts)
    }

    fn edges_of(&self, index: u16) -> impl Iterator<Item = (EdgeId, u16)> + '_ {
        self.table.edges().iter().filter_map(move |e| match () {
            _ if e.from == index => Some((e.id, e.to)),
            _ if e.to == index => Some((e.id, e.from)),
            _ => None,
        })
    }

    /// Carries out a verdict: revoke the culprit's channels, kill it, then restart it or
    /// leave it dead as its policy says. Verdicts about a stale or dead incarnation do
    /// nothing; a verdict without culprit, or against the monitor, is only logged.
    pub fn convict(&mut self, verdict: Verdict) -> Vec<Action> {
        let Some(id) = verdict.culprit() else {
            return vec![Action::Log(verdict)];
        };
        if !self.is_current(id) {
            return Vec::new();
        }
        if self.table.partition(id.index).is_some_and(|p| p.monitor) {
            return vec![Action::Log(verdict)]; // the monitor does not convict itself
        }
        if let Verdict::Flood { edge, .. } = verdict {
            match self.config.on_flood {
                FloodAction::Kill => {}
                FloodAction::Revoke => return vec![Action::Log(verdict), Action::Revoke(edge)],
                FloodAction::Report => return vec![Action::Log(verdict)],
            }
        }
        let mut actions = vec![Action::Log(verdict)];
        actions.extend(self.edges_of(id.index).map(|(e, _)| Action::Revoke(e)));
        actions.push(Action::Kill(id));
        let Some(slot) = self.slot_mut(id.index) else {
            return actions;
        };
        let next = match slot.policy {
            Policy::Restart { limit } if slot.restarts < limit => id.next(),
            _ => None,
        };
        let Some(new) = next else {
            slot.alive = false;
            actions.push(Action::Stopped {
                id,
                restarts: slot.restarts,
            });
            return actions;
        };
        slot.restarts += 1;
        slot.id = new;
        slot.last_heartbeat_ns = verdict.at_ns();
        self.table.set_generation(new);
        actions.push(Action::Restart(new));
        let peers: Vec<(EdgeId, u16)> = self.edges_of(id.index).collect();
        for (edge, peer) in peers {
            if self.current(peer).is_some() {
                actions.push(Action::Reopen(edge));
            }
        }
        actions
    }

    /// Handles a record read from the control channel of partition `owner`. Anything
    /// invalid, or claiming to come from another partition, convicts the owner as hostile.
    pub fn on_partition(&mut self, owner: u16, bytes: &[u8], now_ns: u64) -> Vec<Action> {
        let Some(me) = self.current(owner) else {
            return Vec::new();
        };
        let hostile = |reason| Verdict::Hostile {
            from: me,
            reason,
            at_ns: now_ns,
        };
        let msg = match FromPartition::decode(bytes) {
            Ok(msg) => msg,
            Err(reason) => return self.convict(hostile(reason)),
        };
        let (FromPartition::Heartbeat { id }
        | FromPartition::Fault { id, .. }
        | FromPartition::Malformed { id, .. }) = msg;
        if id.index != owner || id.generation > me.generation {
            return self.convict(hostile(Hostile::Impersonation));
        }
        if id.generation < me.generation {
            return Vec::new(); // left over from a previous incarnation
        }
        match msg {
            FromPartition::Heartbeat { .. } => {
                if let Some(slot) = self.slot_mut(owner) {
                    slot.last_heartbeat_ns = now_ns;
                }
                Vec::new()
            }
            FromPartition::Fault { fault, detail, .. } => self.convict(Verdict::Fault {
                id,
                fault,
                detail,
                at_ns: now_ns,
            }),
            FromPartition::Malformed {
                peer, edge, offset, ..
            } => match self.table.edge_by_id(edge) {
                Some(e) if e.from == peer.index && e.to == owner => {
                    let at_ns = now_ns;
                    vec![Action::Log(Verdict::Reported {
                        by: id,
                        peer,
                        edge,
                        offset,
                        at_ns,
                    })]
                }
                _ => self.convict(hostile(Hostile::BadEdge)),
            },
        }
    }

    /// Handles a record from the launcher. A VM that exited while current crashed.
    pub fn on_launcher(&mut self, bytes: &[u8], now_ns: u64) -> Result<Vec<Action>, Hostile> {
        let LauncherEvent::Exited { id, status } = LauncherEvent::decode(bytes)?;
        if !self.is_current(id) {
            return Ok(Vec::new()); // the kill the monitor asked for, or a stale report
        }
        Ok(self.convict(Verdict::Crashed {
            id,
            status,
            at_ns: now_ns,
        }))
    }

    /// Convicts every live partition whose last heartbeat is older than the timeout.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Action> {
        let Some(timeout) = self.config.heartbeat_timeout_ns else {
            return Vec::new();
        };
        let hung: Vec<Verdict> = self
            .slots
            .iter()
            .filter(|s| s.alive && now_ns.saturating_sub(s.last_heartbeat_ns) > timeout)
            .map(|s| Verdict::Hung {
                id: s.id,
                last_heartbeat_ns: s.last_heartbeat_ns,
                at_ns: now_ns,
            })
            .collect();
        hung.into_iter().flat_map(|v| self.convict(v)).collect()
    }
}

/// The monitor's logic: a [`Supervisor`] and a [`Meter`] kept in step (revoked edges stop
/// being metered; reopened ones start again).
#[derive(Clone, Debug)]
pub struct Monitor {
    supervisor: Supervisor,
    meter: Meter,
}

impl Monitor {
    /// Monitors `table` from `now_ns`, every edge metered from counters at zero.
    pub fn new(
        table: RightsTable,
        meter: MeterConfig,
        config: SupervisorConfig,
        now_ns: u64,
    ) -> Self {
        let mut m = Meter::new(meter);
        for e in table.edges() {
            if let Some(from) = table.partition(e.from) {
                m.open(e.id, from.id(), e.rights.quota, now_ns, Counters::default());
            }
        }
        let supervisor = Supervisor::new(table, config, now_ns);
        Self {
            supervisor,
            meter: m,
        }
    }

    /// The supervisor.
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// The meter.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// One round of the monitor's loop: meter every edge, convict flooders and hung
    /// partitions.
    pub fn poll(&mut self, now_ns: u64, counters: &impl ChannelCounters) -> Vec<Action> {
        let mut actions = Vec::new();
        for verdict in self.meter.poll(now_ns, counters) {
            let decided = self.supervisor.convict(verdict);
            // A flooder left alone (FloodAction::Report) is metered afresh from here.
            if let Verdict::Flood { edge, from, .. } = verdict
                && !decided.contains(&Action::Revoke(edge))
                && self.supervisor.is_current(from)
                && let Some(e) = self.supervisor.table().edge_by_id(edge)
            {
                let base = counters.produced(edge);
                self.meter.open(edge, from, e.rights.quota, now_ns, base);
            }
            actions.extend(decided);
        }
        actions.extend(self.supervisor.tick(now_ns));
        self.follow(actions)
    }

    /// See [`Supervisor::on_partition`].
    pub fn on_partition(&mut self, owner: u16, bytes: &[u8], now_ns: u64) -> Vec<Action> {
        let actions = self.supervisor.on_partition(owner, bytes, now_ns);
        self.follow(actions)
    }

    /// The executor read `messages` published on the channel direction `from → to`,
    /// which no edge grants: the sender is convicted ([`Verdict::Unauthorized`]; no
    /// verdict if nothing was published, or the direction is an edge after all). The
    /// executor reports each direction once until its ring is reopened.
    pub fn unauthorized(&mut self, from: u16, to: u16, messages: u64, now_ns: u64) -> Vec<Action> {
        let sup = &mut self.supervisor;
        let Some(id) = sup.current(from) else {
            return Vec::new();
        };
        if messages == 0 || sup.table().edge(from, to).is_some() {
            return Vec::new();
        }
        let actions = sup.convict(Verdict::Unauthorized {
            from: id,
            to,
            messages,
            at_ns: now_ns,
        });
        self.follow(actions)
    }

    /// The executor found `edge`'s channel open again after it revoked it for a flood
    /// (see [`Verdict::Unrevoked`]): convicts the edge's sender, whatever `on_flood`.
    pub fn unrevoked(&mut self, edge: EdgeId, now_ns: u64) -> Vec<Action> {
        let sup = &mut self.supervisor;
        let Some(from) = sup.table().edge_by_id(edge).map(|e| e.from) else {
            return Vec::new();
        };
        let Some(id) = sup.current(from) else {
            return Vec::new();
        };
        let actions = sup.convict(Verdict::Unrevoked {
            edge,
            from: id,
            at_ns: now_ns,
        });
        self.follow(actions)
    }

    /// See [`Supervisor::on_launcher`].
    pub fn on_launcher(&mut self, bytes: &[u8], now_ns: u64) -> Result<Vec<Action>, Hostile> {
        let actions = self.supervisor.on_launcher(bytes, now_ns)?;
        Ok(self.follow(actions))
    }

    /// The executor reset and reopened `edge` ([`Action::Reopen`]); metering restarts
    /// from `base`, the counters of the fresh ring.
    pub fn reopened(&mut self, edge: EdgeId, now_ns: u64, base: Counters) {
        let table = self.supervisor.table();
        let Some(e) = table.edge_by_id(edge) else {
            return;
        };
        if let Some(from) = self.supervisor.current(e.from) {
            self.meter.open(edge, from, e.rights.quota, now_ns, base);
        }
    }

    fn follow(&mut self, actions: Vec<Action>) -> Vec<Action> {
        for action in &actions {
            if let Action::Revoke(edge) = action {
                self.meter.close(*edge);
            }
        }
        actions
    }
}
