//! Ping-pong partition: two partitions share one ivshmem region; `role=ping`
//! and `role=pong` first exchange a greeting each way, then bounce one cache
//! line `iters=` times. Ping reports round-trip percentiles in TSC cycles.
//!
//! Region layout: ping's line at 0, pong's line at 64, pong's ready word at 128,
//! ping's greeting at 256, pong's greeting at 512 (each: length word, bytes).
//! Every word the peer wrote is checked before use; a silent peer ends the
//! service with status 3 after `timeout_ms=` (default 20000).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;
use core::time::Duration;
use rt::ShmRegion;
use rt::time::{Instant, now};

rt::entry!(main);

const PING: usize = 0;
const PONG: usize = 64;
const READY: usize = 128;
const READY_MAGIC: u64 = 0x7669_6d70_6952_4459;
const PING_MSG: usize = 256;
const PONG_MSG: usize = 512;
const MAX_MSG: usize = 200;

fn spin_until(shm: &ShmRegion, off: usize, want: u64, deadline: Instant) -> Result<(), u8> {
    let mut n = 0u32;
    loop {
        if shm.load_u64(off) == Some(want) {
            return Ok(());
        }
        n = n.wrapping_add(1);
        if n.is_multiple_of(4096) && now() > deadline {
            rt::log!("pingpong: peer silent (waiting for {want} at offset {off})");
            return Err(3);
        }
        core::hint::spin_loop();
    }
}

fn send_msg(shm: &ShmRegion, off: usize, msg: &str) {
    let _ = shm.write_bytes(off + 8, msg.as_bytes());
    let _ = shm.store_u64(off, msg.len() as u64);
}

fn recv_msg(shm: &ShmRegion, off: usize, deadline: Instant) -> Result<Vec<u8>, u8> {
    loop {
        let len = shm.load_u64(off).unwrap_or(0);
        if len != 0 {
            // An allegation from the peer: bound it before use.
            if len > MAX_MSG as u64 {
                rt::log!("pingpong: peer's message length {len} exceeds {MAX_MSG}");
                return Err(4);
            }
            let mut b = alloc::vec![0u8; len as usize];
            shm.read_bytes(off + 8, &mut b).ok_or(4u8)?;
            return Ok(b);
        }
        if now() > deadline {
            rt::log!("pingpong: no message from peer");
            return Err(3);
        }
        core::hint::spin_loop();
    }
}

fn run() -> Result<(), u8> {
    let Some(shm) = rt::shm_regions().first() else {
        rt::log!("pingpong: no shared memory region");
        return Err(2);
    };
    let iters: u64 = rt::arg("iters")
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let timeout: u64 = rt::arg("timeout_ms")
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let deadline = || now().after(Duration::from_millis(timeout));
    let role = rt::arg("role").unwrap_or("");
    rt::log!(
        "pingpong: {role} on {} ({} KiB at {:#x})",
        shm.pci(),
        shm.len() / 1024,
        shm.base()
    );
    match role {
        "pong" => {
            send_msg(shm, PONG_MSG, "greetings from pong");
            shm.store_u64(READY, READY_MAGIC).ok_or(2u8)?;
            let m = recv_msg(shm, PING_MSG, deadline())?;
            rt::log!(
                "pingpong: pong received \"{}\"",
                core::str::from_utf8(&m).unwrap_or("<not UTF-8>")
            );
            for i in 1..=iters {
                spin_until(shm, PING, i, deadline())?;
                shm.store_u64(PONG, i).ok_or(2u8)?;
            }
            rt::log!("pingpong: pong done after {iters} round trips");
        }
        "ping" => {
            spin_until(shm, READY, READY_MAGIC, deadline())?;
            send_msg(shm, PING_MSG, "greetings from ping");
            let m = recv_msg(shm, PONG_MSG, deadline())?;
            rt::log!(
                "pingpong: ping received \"{}\"",
                core::str::from_utf8(&m).unwrap_or("<not UTF-8>")
            );
            let mut rtt: Vec<u32> = Vec::with_capacity(iters as usize);
            let dl = deadline();
            for i in 1..=iters {
                let t0 = rt::time::tsc();
                shm.store_u64(PING, i).ok_or(2u8)?;
                spin_until(shm, PONG, i, dl)?;
                let t1 = rt::time::tsc();
                rtt.push(u32::try_from(t1.wrapping_sub(t0)).unwrap_or(u32::MAX));
            }
            rtt.sort_unstable();
            let pct = |p: usize| {
                rtt.get((rtt.len().max(1) - 1) * p / 1000)
                    .copied()
                    .unwrap_or(0)
            };
            rt::log!(
                "pingpong: rtt_cycles n={} p50={} p90={} p99={} p999={} max={} tsc_khz={}",
                rtt.len(),
                pct(500),
                pct(900),
                pct(990),
                pct(999),
                pct(1000),
                rt::time::tsc_khz()
            );
        }
        other => {
            rt::log!("pingpong: role must be ping or pong, not \"{other}\"");
            return Err(2);
        }
    }
    Ok(())
}

fn main() -> u8 {
    match run() {
        Ok(()) => 0,
        Err(s) => s,
    }
}
