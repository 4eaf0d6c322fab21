//! Doorbell partition: two partitions on one `ivshmem-doorbell` device wake
//! each other through MSI-X, and `rt::wait` honours deadlines.
//!
//! Both first check that a wait with no doorbell ends at its deadline, then
//! announce themselves in the shared memory (word 8*id at offset 256). Peer 0
//! blocks until a doorbell; peer 1, once it sees peer 0, rings peer 0's vector 0
//! and blocks; peer 0, woken, rings back `rounds=` times. Logs the round trip.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::time::Duration;
use rt::time::now;

rt::entry!(main);

const PRESENT: usize = 256;
const MAGIC: u64 = 0x646f_6f72_6265_6c6c;

fn run() -> Result<(), u8> {
    let Some(shm) = rt::shm_regions().iter().find(|r| r.doorbell().is_some()) else {
        rt::log!("doorbell: no ivshmem-doorbell device");
        return Err(2);
    };
    let db = shm.doorbell().ok_or(2u8)?;
    let me = db.own_id();
    let peer = if me == 0 { 1 } else { 0 };
    let rounds: u32 = rt::arg("rounds").and_then(|s| s.parse().ok()).unwrap_or(10);
    rt::log!(
        "doorbell: peer id {me}, {} vectors, region {} KiB",
        db.vectors(),
        shm.len() / 1024
    );

    let t0 = now();
    let w = rt::wait(Some(t0.after(Duration::from_millis(20))));
    let waited = t0.elapsed();
    if !w.timed_out() || waited < Duration::from_millis(20) {
        rt::log!("doorbell: deadline wait returned {w:?} after {waited:?}");
        return Err(5);
    }
    rt::log!(
        "doorbell: deadline wait timed out after {} us",
        waited.as_micros()
    );

    if me > 1 {
        rt::log!("doorbell: peer id {me} unexpected (two peers only)");
        return Err(2);
    }
    shm.store_u64(PRESENT + 8 * usize::from(me), MAGIC)
        .ok_or(2u8)?;
    let deadline = now().after(Duration::from_secs(30));
    while shm.load_u64(PRESENT + 8 * usize::from(peer)) != Some(MAGIC) {
        if now() > deadline {
            rt::log!("doorbell: peer {peer} never appeared");
            return Err(3);
        }
        core::hint::spin_loop();
    }
    let mut total = Duration::ZERO;
    for r in 0..rounds {
        let t = now();
        if me == 1 {
            db.notify(peer, 0);
        }
        let w = rt::wait(Some(now().after(Duration::from_secs(10))));
        if w.timed_out() {
            rt::log!("doorbell: no doorbell from peer {peer} in round {r}");
            return Err(3);
        }
        if w.doorbells() & db.wake_bit(0) == 0 {
            rt::log!("doorbell: woken by unexpected mask {:#x}", w.doorbells());
            return Err(4);
        }
        if me == 0 {
            db.notify(peer, 0);
        } else {
            total += t.elapsed();
        }
    }
    if me == 1 {
        rt::log!(
            "doorbell: {rounds} doorbell round trips, mean {} us",
            total.as_micros() / u128::from(rounds.max(1))
        );
    }
    rt::log!("doorbell: peer {me} woken by peer {peer} {rounds} times");
    Ok(())
}

fn main() -> u8 {
    match run() {
        Ok(()) => 0,
        Err(s) => s,
    }
}
