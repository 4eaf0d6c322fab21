//! Collectives over point-to-point messages: simple linear algorithms through the
//! root, on a context of their own (`ctx | COLL`) so they never match user traffic.
//! Every member must call the same collectives in the same order.

use crate::mpi::{COLL, Comm, Endpoint, UNDEFINED};
use crate::{Deadline, Error, Platform, Rank};
use alloc::vec;
use alloc::vec::Vec;

/// Reduction operator on `u64` elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Wrapping sum.
    Sum,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
}

impl Op {
    fn apply(self, a: u64, b: u64) -> u64 {
        match self {
            Op::Sum => a.wrapping_add(b),
            Op::Min => a.min(b),
            Op::Max => a.max(b),
        }
    }
}

const T_BCAST: u32 = 2;
const T_GATHER: u32 = 3;
const T_SCATTER: u32 = 4;

/// A little-endian u64 from an 8-byte chunk.
fn word(ch: &[u8]) -> u64 {
    u64::from_le_bytes(ch.try_into().unwrap_or_default())
}

fn coll(c: &Comm) -> Comm {
    Comm {
        ctx: c.ctx | COLL,
        ..c.clone()
    }
}

fn root_ok(c: &Comm, root: Rank) -> Result<(), Error> {
    if root < c.size() {
        Ok(())
    } else {
        Err(Error::arg("root rank", root.into()))
    }
}

impl<P: Platform> Endpoint<P> {
    fn recv_vec(&mut self, c: &Comm, src: Rank, tag: u32, dl: Deadline) -> Result<Vec<u8>, Error> {
        let st = self.probe(c, src, tag, dl)?;
        let mut v = vec![0; st.len];
        self.recv(c, src, tag, &mut v, dl)?;
        Ok(v)
    }

    /// Blocks until every member has entered the barrier.
    pub fn barrier(&mut self, comm: &Comm, dl: Deadline) -> Result<(), Error> {
        self.gather(comm, 0, &[], dl)?;
        let mut v = Vec::new();
        self.bcast(comm, 0, &mut v, dl)?;
        Ok(())
    }

    /// Broadcasts `data` from `root`; on the others `data` is replaced.
    pub fn bcast(
        &mut self,
        comm: &Comm,
        root: Rank,
        data: &mut Vec<u8>,
        dl: Deadline,
    ) -> Result<(), Error> {
        root_ok(comm, root)?;
        let c = coll(comm);
        if c.rank() == root {
            for r in (0..c.size()).filter(|&r| r != root) {
                self.send(&c, r, T_BCAST, data, dl)?;
            }
        } else {
            *data = self.recv_vec(&c, root, T_BCAST, dl)?;
        }
        Ok(())
    }

    /// Gathers every member's `data` at `root` (in rank order); others get an empty vec.
    pub fn gather(
        &mut self,
        comm: &Comm,
        root: Rank,
        data: &[u8],
        dl: Deadline,
    ) -> Result<Vec<Vec<u8>>, Error> {
        root_ok(comm, root)?;
        let c = coll(comm);
        if c.rank() != root {
            self.send(&c, root, T_GATHER, data, dl)?;
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(c.size() as usize);
        for r in 0..c.size() {
            out.push(if r == root {
                data.to_vec()
            } else {
                self.recv_vec(&c, r, T_GATHER, dl)?
            });
        }
        Ok(out)
    }

    /// Sends `parts[i]` from `root` to member `i`; returns this member's part.
    pub fn scatter(
        &mut self,
        comm: &Comm,
        root: Rank,
        parts: &[Vec<u8>],
        dl: Deadline,
    ) -> Result<Vec<u8>, Error> {
        root_ok(comm, root)?;
        let c = coll(comm);
        if c.rank() != root {
            return self.recv_vec(&c, root, T_SCATTER, dl);
        }
        if parts.len() != c.size() as usize {
            return Err(Error::arg("scatter parts", parts.len() as u64));
        }
        for r in (0..c.size()).filter(|&r| r != root) {
            self.send(&c, r, T_SCATTER, &parts[r as usize], dl)?;
        }
        Ok(parts[root as usize].clone())
    }

    /// Element-wise reduction of `data` at `root` (the result replaces `data` there).
    pub fn reduce(
        &mut self,
        comm: &Comm,
        root: Rank,
        data: &mut [u64],
        op: Op,
        dl: Deadline,
    ) -> Result<(), Error> {
        let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        let all = self.gather(comm, root, &bytes, dl)?;
        for (r, v) in all.iter().enumerate() {
            if v.len() != bytes.len() {
                return Err(Error::arg("reduce length from rank", r as u64));
            }
            if r as Rank == comm.rank() {
                continue;
            }
            for (x, ch) in data.iter_mut().zip(v.chunks_exact(8)) {
                *x = op.apply(*x, word(ch));
            }
        }
        Ok(())
    }

    /// Reduction whose result every member gets.
    pub fn allreduce(
        &mut self,
        comm: &Comm,
        data: &mut [u64],
        op: Op,
        dl: Deadline,
    ) -> Result<(), Error> {
        self.reduce(comm, 0, data, op, dl)?;
        let mut b: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.bcast(comm, 0, &mut b, dl)?;
        if b.len() != data.len() * 8 {
            return Err(Error::arg("allreduce length", b.len() as u64));
        }
        for (x, ch) in data.iter_mut().zip(b.chunks_exact(8)) {
            *x = word(ch);
        }
        Ok(())
    }

    /// Splits `comm` by `colour` (members with equal colour form one communicator,
    /// ordered by `key`, then old rank); [`UNDEFINED`] gets `None`. Collective.
    pub fn split(
        &mut self,
        comm: &Comm,
        colour: u32,
        key: u32,
        dl: Deadline,
    ) -> Result<Option<Comm>, Error> {
        let mine = [u64::from(colour), u64::from(key), u64::from(self.next_ctx)];
        let n = comm.size() as usize;
        let mut table = vec![0u64; 3 * n];
        table[3 * comm.rank() as usize..][..3].copy_from_slice(&mine);
        // Each member fills its own row; a sum over zeros everywhere else is a gather.
        self.allreduce(comm, &mut table, Op::Sum, dl)?;
        let rows: Vec<(u32, u32, u32)> = table
            .chunks_exact(3)
            .map(|r| (r[0] as u32, r[1] as u32, r[2] as u32))
            .collect();
        let base = rows.iter().map(|r| r.2).max().unwrap_or(self.next_ctx);
        let mut colours: Vec<u32> = rows
            .iter()
            .map(|r| r.0)
            .filter(|&c| c != UNDEFINED)
            .collect();
        colours.sort_unstable();
        colours.dedup();
        let next = base as u64 + colours.len() as u64;
        if next >= u64::from(COLL) {
            return Err(Error::arg("communicator contexts exhausted", next));
        }
        self.next_ctx = next as u32;
        if colour == UNDEFINED {
            return Ok(None);
        }
        let ctx = base + colours.iter().position(|&c| c == colour).unwrap_or(0) as u32;
        let mut members: Vec<(u32, Rank)> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.0 == colour)
            .map(|(i, r)| (r.1, i as Rank))
            .collect();
        members.sort_unstable();
        let ranks = members
            .iter()
            .filter_map(|&(_, i)| comm.world_rank(i))
            .collect();
        Ok(Some(self.make_comm(ctx, ranks)))
    }
}
