//! The VM side of `vmpi bench` (`images/src/bench.rs`): two partitions joined by
//! one channel run the fabric's ping-pong and streaming rounds when the host says
//! so, and idle in `rt::wait` in between, so that the host can interleave its own
//! rounds (the same fabric between host processes, the raw cache-line baseline,
//! MPICH) on the same two cores.
//!
//! # The control block
//! `abi::bench` defines it, for both sides: the tail of the channel file, which the
//! fabric never touches (checked at start). The host (`vmpi bench`) maps the same file.
//!
//! Waiting mode comes from the command line: the host launches the partitions with
//! a huge `spin_us=` for polling and the fabric's default for spin-then-block.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;
use fabric::interconnect::{Endpoint, Error, Platform};
use rt::ShmRegion;
use rt::abi::bench::*;

rt::entry!(main);

/// Largest message the bench sends (the host asks for at most this).
const MAX_SIZE: u64 = 16 << 20;
/// A round that takes longer than this is broken.
const ROUND_MS: u64 = 120_000;

struct Ctl<'a> {
    shm: &'a ShmRegion,
    base: usize,
}

impl Ctl<'_> {
    fn get(&self, off: usize) -> u64 {
        self.shm.load_u64(self.base + off).unwrap_or(0)
    }
    fn set(&self, off: usize, v: u64) {
        let _ = self.shm.store_u64(self.base + off, v);
    }
}

/// One latency round: ping-pong `warm + iters` times; rank 0 records each timed
/// round trip in TSC ticks.
fn latency<P: Platform>(
    ep: &mut Endpoint<P>,
    size: usize,
    iters: usize,
    warm: usize,
) -> Result<Vec<u32>, Error> {
    let w = ep.world();
    let me = ep.rank();
    let peer = 1 - me;
    let out = vec![0x5au8; size];
    let mut inb = vec![0u8; size];
    let dl = ep.after_ms(ROUND_MS);
    // As on the fresh channels of the host pairs: streaming rounds leave the two
    // directions' counts apart, and then every hop moves two slot lines.
    ep.align(&w, peer, ACK, dl)?;
    let mut rtt = Vec::with_capacity(if me == 0 { iters } else { 0 });
    for i in 0..warm + iters {
        if me == 0 {
            let t0 = rt::time::tsc();
            ep.send(&w, peer, TAG, &out, dl)?;
            ep.recv(&w, peer, TAG, &mut inb, dl)?;
            let t1 = rt::time::tsc();
            if i >= warm {
                rtt.push(u32::try_from(t1.wrapping_sub(t0)).unwrap_or(u32::MAX));
            }
        } else {
            ep.recv(&w, peer, TAG, &mut inb, dl)?;
            ep.send(&w, peer, TAG, &out, dl)?;
        }
    }
    Ok(rtt)
}

/// One bandwidth round: `windows` times, rank 0 streams `per` messages and rank 1
/// answers with an acknowledgement, after one untimed exchange. Rank 0 returns the
/// TSC ticks it took.
fn bandwidth<P: Platform>(
    ep: &mut Endpoint<P>,
    size: usize,
    windows: usize,
    per: usize,
) -> Result<u64, Error> {
    let w = ep.world();
    let me = ep.rank();
    let peer = 1 - me;
    let out = vec![0x5au8; size];
    let mut inb = vec![0u8; size];
    let mut ack = [0u8; 4];
    let dl = ep.after_ms(ROUND_MS);
    // One exchange first, so that the clock starts with both sides in the round.
    if me == 0 {
        ep.send(&w, peer, ACK, &ack, dl)?;
        ep.recv(&w, peer, ACK, &mut ack, dl)?;
    } else {
        ep.recv(&w, peer, ACK, &mut ack, dl)?;
        ep.send(&w, peer, ACK, &ack, dl)?;
    }
    let t0 = rt::time::tsc();
    for _ in 0..windows {
        if me == 0 {
            for _ in 0..per {
                ep.send(&w, peer, TAG, &out, dl)?;
            }
            ep.recv(&w, peer, ACK, &mut ack, dl)?;
        } else {
            for _ in 0..per {
                ep.recv(&w, peer, TAG, &mut inb, dl)?;
            }
            ep.send(&w, peer, ACK, &ack, dl)?;
        }
    }
    Ok(rt::time::tsc().wrapping_sub(t0))
}

fn run() -> Result<(), u8> {
    let mut ep = fabric::endpoint_or_exit();
    let me = ep.rank();
    // The pair is ranks 0 and 1; other partitions (`vmpi bench --monitor`'s
    // flooder and monitor) may share the world.
    if ep.size() < 2 || me > 1 {
        rt::log!("fabric-bench-vm: must be rank 0 or 1 of a world of two or more");
        return Err(2);
    }
    let peer = 1 - me;
    let region_len = ep
        .channel(peer)
        .and_then(|c| fabric::interconnect::layout::read_header(c.region()).ok())
        .map(|(g, _)| g.region_len());
    // The channel to the peer is the first ivshmem device (the manifest's first right).
    let (Some(region_len), Some(shm)) = (region_len, rt::shm_regions().first()) else {
        rt::log!("fabric-bench-vm: no channel to rank {peer}");
        return Err(2);
    };
    let Some(base) = shm
        .len()
        .checked_sub(CTL_LEN)
        .filter(|&b| b >= region_len + SAMPLES_LEN)
    else {
        rt::log!(
            "fabric-bench-vm: channel file of {} bytes leaves no room past the fabric's {region_len}",
            shm.len()
        );
        return Err(2);
    };
    let ctl = Ctl { shm, base };
    let spin = ep.platform().spin_ns();
    rt::log!(
        "fabric-bench-vm: rank {me} ready ({} KiB channel, spin {} us, tsc {} kHz)",
        shm.len() / 1024,
        spin / 1000,
        rt::time::tsc_khz()
    );
    ctl.set(READY_AT + 8 * me as usize, READY);
    let mut last = ctl.get(CMD);
    loop {
        let k = ctl.get(CMD);
        if k == last {
            // Idle: halted in the runtime, off the host's cores.
            rt::wait(Some(rt::time::now().after(Duration::from_millis(10))));
            continue;
        }
        last = k;
        let size = ctl.get(SIZE).min(MAX_SIZE) as usize;
        let count = ctl.get(COUNT) as usize;
        let extra = ctl.get(EXTRA) as usize;
        let status = match ctl.get(KIND) {
            QUIT => {
                rt::log!("fabric-bench-vm: rank {me} done after {} rounds", k - 1);
                return Ok(());
            }
            LATENCY => {
                let iters = count.min(SAMPLES_LEN / 4);
                match latency(&mut ep, size, iters, extra) {
                    Ok(rtt) => {
                        let mut bytes = Vec::with_capacity(rtt.len() * 4);
                        for s in &rtt {
                            bytes.extend_from_slice(&s.to_le_bytes());
                        }
                        let _ = shm.write_bytes(base - SAMPLES_LEN, &bytes);
                        if me == 0 {
                            ctl.set(RESULT, rtt.len() as u64);
                        }
                        0
                    }
                    Err(e) => {
                        rt::log!("fabric-bench-vm: latency round {k} (size {size}): {e}");
                        u64::from(e.code())
                    }
                }
            }
            BANDWIDTH => match bandwidth(&mut ep, size, count, extra) {
                Ok(ticks) => {
                    if me == 0 {
                        ctl.set(RESULT, ticks);
                    }
                    0
                }
                Err(e) => {
                    rt::log!("fabric-bench-vm: bandwidth round {k} (size {size}): {e}");
                    u64::from(e.code())
                }
            },
            other => {
                rt::log!("fabric-bench-vm: unknown round kind {other}");
                99
            }
        };
        ctl.set(STATUS_AT + 8 * me as usize, status);
        ctl.set(DONE_AT + 8 * me as usize, k);
    }
}

fn main() -> u8 {
    match run() {
        Ok(()) => 0,
        Err(s) => s,
    }
}
