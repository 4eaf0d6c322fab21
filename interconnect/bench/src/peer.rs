//! The two benchmark processes ("ping" measures, "pong" echoes) and the phases they run
//! in lock step: raw and fabric ping-pong per size (poll, then block), raw memcpy and
//! fabric streaming. Both sides derive the same schedule from the same options.

use crate::report::{Bandwidth, Latency, Results};
use crate::sys::{self, Raw};
use crate::{Mode, Opts, Pair};
use interconnect::host::HostPlatform;
use interconnect::ring::{Channel, Small};
use interconnect::{Comm, Config, Deadline, Endpoint, Platform, Rank};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::fence;
use std::time::Instant;

// ---- raw pair layout (one /dev/shm file) --------------------------------------------

/// The ping-pong line: ping's sequence word and inline payload in the first half,
/// pong's in the second: both directions share one cache line, as in the fabric.
const PING_SEQ: usize = 0;
const PING_INLINE: usize = 8;
const PONG_SEQ: usize = 32;
const PONG_INLINE: usize = 40;
/// Payloads up to this size ride in the ping-pong line itself.
pub const RAW_INLINE: usize = 24;
/// "About to block, wake me" flags (block mode), one line each, written by the waiter.
const PING_WAITING: usize = 64;
const PONG_WAITING: usize = 128;
/// Set by pong once it is attached to both pairs.
const READY: usize = 192;
/// Streaming: messages filled by the sender, and emptied by the receiver.
const BW_FULL: usize = 256;
const BW_EMPTY: usize = 320;
/// Payload buffers (page-aligned): ping → pong, pong → ping, then the two streaming
/// buffers.
const BUFS: usize = 4096;
/// Streaming message size.
pub const BW_SIZE: usize = 64 << 10;

fn page(n: usize) -> usize {
    n.next_multiple_of(4096)
}

/// Length of the raw file for messages up to `max` bytes.
pub fn raw_len(max: usize) -> usize {
    BUFS + 2 * page(max) + 2 * BW_SIZE
}

/// The fabric's configuration: two ranks, the default channel geometry.
pub fn fabric_config() -> Config {
    Config::new(2)
}

/// The diagnostic ring channel's configuration (`--ring-slots`).
pub fn ring_config(o: &Opts) -> Config {
    let mut c = fabric_config();
    if let Some(n) = o.ring_slots {
        c.geometry.slots = n;
    }
    c
}

/// The files of one run.
pub struct Files {
    /// Raw pair.
    pub raw: PathBuf,
    /// Fabric doorbells (`host::ShmWorld` naming).
    pub bells: PathBuf,
    /// Fabric channel 0-1 (`host::ShmWorld` naming).
    pub chan: PathBuf,
}

impl Files {
    /// The file names under /dev/shm for `prefix`.
    pub fn new(prefix: &str) -> Files {
        let p = |n: &str| PathBuf::from(format!("/dev/shm/{prefix}-{n}"));
        Files {
            raw: p("raw"),
            bells: p("bells"),
            chan: p("0-1"),
        }
    }
}

// ---- the fabric endpoint with a switchable spin time --------------------------------

/// `HostPlatform` whose spin-before-block time can be changed between phases (poll:
/// spin forever; block: block at once).
pub struct BenchPlatform {
    host: HostPlatform,
    spin: Cell<u64>,
}

impl Platform for BenchPlatform {
    fn now(&self) -> u64 {
        self.host.now()
    }
    fn bell(&self) -> u32 {
        self.host.bell()
    }
    fn wait(&self, seen: u32, until: u64) {
        self.host.wait(seen, until)
    }
    fn ring(&self, peer: Rank) {
        self.host.ring(peer)
    }
    fn spin_ns(&self) -> u64 {
        self.spin.get()
    }
}

fn map(p: &Path) -> Result<interconnect::shm::Region, String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .map_err(|e| format!("{}: {e}", p.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len() as usize;
    interconnect::shm::host::map_file(&f, len).map_err(|e| format!("{}: {e}", p.display()))
}

/// Attaches rank `rank` to the files `host::ShmWorld::create` made (what
/// `ShmWorld::attach` does, with [`BenchPlatform`] instead of `HostPlatform`).
fn attach(files: &Files, rank: Rank) -> Result<Endpoint<BenchPlatform>, String> {
    let peer = 1 - rank;
    let ch = Channel::attach(map(&files.chan)?, rank, peer).map_err(|e| e.to_string())?;
    let host = HostPlatform::new(map(&files.bells)?, rank).map_err(|e| e.to_string())?;
    let p = BenchPlatform {
        host,
        spin: Cell::new(u64::MAX),
    };
    Endpoint::new(&fabric_config(), rank, vec![(peer, ch)], p).map_err(|e| e.to_string())
}

// ---- one side -------------------------------------------------------------------------

const TAG_LAT: u32 = 1;
const TAG_BW: u32 = 2;
const TAG_ACK: u32 = 3;
/// Streaming measurements (of each pair) per round.
pub const BW_REPS: usize = 4;
/// Block mode: ping's idle time before each round trip, nanoseconds.
pub const IDLE_NS: u64 = 300_000;

struct Side {
    ping: bool,
    raw: Raw,
    ep: Endpoint<BenchPlatform>,
    world: Comm,
    /// `--diag`: a second channel used through the ring API alone.
    ring: Option<Channel>,
    /// `--rawx` bits.
    rawx: u32,
    /// `--diag`: the raw file as an `interconnect::shm::Region` (the fabric's copies).
    region: Option<interconnect::shm::Region>,
    /// Round trips done on the raw pair (both sides count alike).
    seq: u32,
    /// Streaming messages done on the raw pair.
    bw: u64,
    src: Vec<u8>,
    buf: Vec<u8>,
    max: usize,
    /// TSC ticks per nanosecond (ping only; 1.0 on pong).
    tick: f64,
}

fn pattern(buf: &mut [u8], seed: u32) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(31).wrapping_add(seed) as u8;
    }
}

impl Side {
    fn bufs(&self) -> (usize, usize) {
        let a = BUFS;
        (a, a + page(self.max))
    }

    /// Poll: both sides spin. Block: pong blocks at once (`spin_ns` = 0), ping still
    /// polls for the reply, so each round trip measures exactly one wake-up.
    fn set_mode(&self, mode: Mode) {
        let spin = match mode {
            Mode::Block if !self.ping => 0,
            _ => u64::MAX,
        };
        self.ep.platform().spin.set(spin);
    }

    /// Waits until the u32 at `word` is `want`; in block mode, after 64 spins, announces
    /// itself in `waiting` and sleeps on the word (the fabric's spin-then-block, raw).
    fn raw_wait(&self, word: usize, want: u32, block: bool, waiting: usize) {
        let w = self.raw.w32(word);
        let mut n = 0u32;
        loop {
            if w.load(Acquire) == want {
                return;
            }
            n += 1;
            if block && n >= 64 {
                let flag = self.raw.w32(waiting);
                flag.store(1, SeqCst);
                let v = w.load(SeqCst);
                if v != want {
                    sys::futex_wait(w, v);
                }
                flag.store(0, Relaxed);
            } else {
                std::hint::spin_loop();
            }
        }
    }

    fn raw_post(&self, word: usize, v: u32, block: bool, peer_waiting: usize) {
        let w = self.raw.w32(word);
        w.store(v, Release);
        if block {
            fence(SeqCst);
            if self.raw.w32(peer_waiting).load(Relaxed) != 0 {
                sys::futex_wake(w);
            }
        }
    }

    /// Diagnostic raw round trip of 8 bytes in the fabric's slot format (`--rawx`):
    /// slots of 32 bytes, ping's in the first half of a line and pong's in the second,
    /// `seq` written last. Bits of `x` add pieces of the ring's work: 1 = the 12-byte
    /// header (tag, ctx, len) written byte by byte (volatile, as `Region::write` does at
    /// an offset that is not 8-aligned); 2 = the receiver reads the whole slot (four
    /// volatile u64 loads); 4 = the receiver stores a consumed count in a line of its
    /// own; 8 = slots rotate through 256 lines.
    fn rawx_rtt(&mut self, x: u32) {
        self.seq = self.seq.wrapping_add(1);
        let s = self.seq;
        let line = if x & 8 != 0 {
            BUFS + 64 * (s as usize % 256)
        } else {
            0
        };
        let (mine, theirs) = if self.ping {
            (line, line + 32)
        } else {
            (line + 32, line)
        };
        let consumed = if self.ping {
            PING_WAITING
        } else {
            PONG_WAITING
        } + 8;
        let write = |me: &Self| {
            if x & 1 != 0 {
                for i in 0..12 {
                    me.raw.w32(mine + 4 + (i & !3)); // bounds check, like Region::write
                    // SAFETY: in bounds of the mapping (checked above); a plain byte store.
                    unsafe { me.raw.ptr(mine + 4 + i).write_volatile(i as u8) };
                }
            }
            me.raw.w64(mine + 16).store(u64::from(s), Relaxed);
            me.raw.w32(mine).store(s, Release);
        };
        let read = |me: &Self| {
            let w = me.raw.w32(theirs);
            while w.load(Acquire) != s {
                std::hint::spin_loop();
            }
            if x & 2 != 0 {
                let mut b = [0u64; 4];
                for (i, v) in b.iter_mut().enumerate() {
                    // SAFETY: in bounds and 8-aligned (the slot is 32-byte aligned).
                    *v = unsafe { me.raw.ptr(theirs + 8 * i).cast::<u64>().read_volatile() };
                }
                std::hint::black_box(b);
            }
            if x & 4 != 0 {
                me.raw.w64(consumed).store(u64::from(s), Release);
            }
        };
        if self.ping {
            write(self);
            read(self);
        } else {
            read(self);
            write(self);
        }
    }

    /// One raw round trip of `size` bytes each way.
    fn raw_rtt(&mut self, size: usize, block: bool) {
        self.seq = self.seq.wrapping_add(1);
        let s = self.seq;
        let (a, b) = self.bufs();
        let inline = size <= RAW_INLINE;
        if self.ping {
            let dst = if inline { PING_INLINE } else { a };
            self.raw.copy_in(dst, &self.src[..size]);
            self.raw_post(PING_SEQ, s, block, PONG_WAITING);
            self.raw_wait(PONG_SEQ, s, false, PING_WAITING);
            let src = if inline { PONG_INLINE } else { b };
            self.raw.copy_out(src, &mut self.buf[..size]);
        } else {
            self.raw_wait(PING_SEQ, s, block, PONG_WAITING);
            let src = if inline { PING_INLINE } else { a };
            self.raw.copy_out(src, &mut self.buf[..size]);
            let dst = if inline { PONG_INLINE } else { b };
            self.raw.copy_in(dst, &self.buf[..size]);
            self.raw_post(PONG_SEQ, s, block, PING_WAITING);
        }
    }

    /// One round trip through the bare ring protocol (`--diag`).
    fn ring_rtt(&mut self, size: usize) -> Result<(), String> {
        let Some(ch) = self.ring.as_mut() else {
            return Err("no ring channel".into());
        };
        let send = |ch: &mut Channel, data: &[u8]| -> Result<(), String> {
            let mut done = 0;
            loop {
                match ch.tx.send(TAG_LAT, 0, data, &mut done) {
                    Ok(()) => return Ok(()),
                    Err(interconnect::Error::WouldBlock { .. }) => std::hint::spin_loop(),
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        let recv = |ch: &mut Channel, buf: &mut [u8]| -> Result<usize, String> {
            loop {
                match ch.rx.take_small(buf, 0, Some(TAG_LAT)) {
                    Small::Took(env) => return Ok(env.len),
                    Small::Empty => {
                        std::hint::spin_loop();
                        continue;
                    }
                    Small::Other => {}
                }
                if ch.rx.peek().map_err(|e| e.to_string())?.is_some()
                    && let Some(n) = ch.rx.take(buf).map_err(|e| e.to_string())?
                {
                    return Ok(n);
                }
                std::hint::spin_loop();
            }
        };
        if self.ping {
            send(ch, &self.src[..size])?;
            let n = recv(ch, &mut self.buf[..size])?;
            if n != size {
                return Err("ring echo of the wrong length".into());
            }
        } else {
            recv(ch, &mut self.buf[..size])?;
            send(ch, &self.buf[..size])?;
        }
        Ok(())
    }

    /// One fabric round trip of `size` bytes each way.
    fn fabric_rtt(&mut self, size: usize, dl: Deadline) -> Result<(), String> {
        let w = &self.world;
        let e = |e: interconnect::Error| e.to_string();
        if self.ping {
            self.ep
                .send(w, 1, TAG_LAT, &self.src[..size], dl)
                .map_err(e)?;
            let st = self.ep.recv(w, 1, TAG_LAT, &mut self.buf[..size], dl);
            if st.map_err(e)?.len != size {
                return Err("fabric echo of the wrong length".into());
            }
        } else {
            self.ep
                .recv(w, 0, TAG_LAT, &mut self.buf[..size], dl)
                .map_err(e)?;
            self.ep
                .send(w, 0, TAG_LAT, &self.buf[..size], dl)
                .map_err(e)?;
        }
        Ok(())
    }

    /// `warm` unrecorded then `iters` recorded round trips; ping returns the round-trip
    /// times in TSC ticks.
    fn latency(
        &mut self,
        pair: Pair,
        mode: Mode,
        size: usize,
        warm: usize,
        iters: usize,
        seed: u32,
    ) -> Result<Vec<u64>, String> {
        self.set_mode(mode);
        let block = mode == Mode::Block;
        if self.ping {
            pattern(&mut self.src[..size], seed);
        }
        let dl = self.ep.after_ms(300_000);
        if pair == Pair::Fabric {
            // Streaming rounds leave the two directions' counts apart; a fresh channel
            // (and so a ping-pong program's) starts in step.
            let peer = u32::from(self.ping);
            self.ep
                .align(&self.world, peer, TAG_ACK, dl)
                .map_err(|e| e.to_string())?;
        }
        let mut rtt = Vec::with_capacity(if self.ping { iters } else { 0 });
        // Block mode: ping stays idle long enough (outside the timed section) for pong
        // to have gone to sleep in both pairs, so every message must wake it. (The
        // fabric's `Endpoint::recv` polls 4096 times before it looks at `spin_ns`:
        // tens of microseconds.)
        let idle = if block {
            (IDLE_NS as f64 * self.tick) as u64
        } else {
            0
        };
        for i in 0..warm + iters {
            if idle > 0 && self.ping {
                let t = sys::tsc();
                while sys::tsc().wrapping_sub(t) < idle {
                    std::hint::spin_loop();
                }
            }
            let t0 = sys::tsc();
            match pair {
                Pair::Raw => self.raw_rtt(size, block),
                Pair::Fabric => self.fabric_rtt(size, dl)?,
                Pair::Ring => self.ring_rtt(size)?,
                Pair::RawX => self.rawx_rtt(self.rawx),
            }
            let t1 = sys::tsc();
            if self.ping && i >= warm {
                rtt.push(t1.wrapping_sub(t0));
            }
        }
        if self.ping && pair != Pair::RawX && self.buf[..size] != self.src[..size] {
            return Err(format!("{pair:?} echo of {size} bytes came back corrupted"));
        }
        Ok(rtt)
    }

    /// Streams `n` messages of [`BW_SIZE`] bytes from ping to pong; ping returns the
    /// seconds from the first byte sent to the last byte received.
    fn stream(&mut self, pair: Pair, n: usize, seed: u32) -> Result<f64, String> {
        self.set_mode(Mode::Poll);
        let t0 = Instant::now();
        let base = BUFS + 2 * page(self.max);
        let slot = |k: u64| base + (k % 2) as usize * BW_SIZE;
        let e = |e: interconnect::Error| e.to_string();
        let dl = self.ep.after_ms(300_000);
        let w = self.world.clone();
        if self.ping {
            pattern(&mut self.src[..BW_SIZE], seed);
        }
        match (pair, self.ping) {
            (Pair::Raw | Pair::RawX, true) => {
                let (full, empty) = (self.raw.w64(BW_FULL), self.raw.w64(BW_EMPTY));
                for k in self.bw..self.bw + n as u64 {
                    while k - empty.load(Acquire) >= 2 {
                        std::hint::spin_loop();
                    }
                    match (&self.region, pair) {
                        (Some(r), Pair::RawX) => r.write(slot(k), &self.src[..BW_SIZE]),
                        _ => self.raw.copy_in(slot(k), &self.src[..BW_SIZE]),
                    }
                    full.store(k + 1, Release);
                }
                while empty.load(Acquire) != self.bw + n as u64 {
                    std::hint::spin_loop();
                }
            }
            (Pair::Raw | Pair::RawX, false) => {
                let (full, empty) = (self.raw.w64(BW_FULL), self.raw.w64(BW_EMPTY));
                for k in self.bw..self.bw + n as u64 {
                    while full.load(Acquire) <= k {
                        std::hint::spin_loop();
                    }
                    match (&self.region, pair) {
                        (Some(r), Pair::RawX) => r.read(slot(k), &mut self.buf[..BW_SIZE]),
                        _ => self.raw.copy_out(slot(k), &mut self.buf[..BW_SIZE]),
                    }
                    empty.store(k + 1, Release);
                }
            }
            (Pair::Fabric, true) => {
                for _ in 0..n {
                    self.ep
                        .send(&w, 1, TAG_BW, &self.src[..BW_SIZE], dl)
                        .map_err(e)?;
                }
                let mut ack = [0u8; 8];
                self.ep.recv(&w, 1, TAG_ACK, &mut ack, dl).map_err(e)?;
                if ack != [1; 8] {
                    return Err("fabric stream: receiver saw corrupted data".into());
                }
            }
            (Pair::Ring, _) => return Err("no streaming on the ring pair".into()),
            (Pair::Fabric, false) => {
                for _ in 0..n {
                    self.ep
                        .recv(&w, 0, TAG_BW, &mut self.buf[..BW_SIZE], dl)
                        .map_err(e)?;
                }
                let mut expect = vec![0u8; BW_SIZE];
                pattern(&mut expect, seed);
                let ok = if n == 0 || self.buf[..BW_SIZE] == expect[..] {
                    1
                } else {
                    0
                };
                self.ep.send(&w, 0, TAG_ACK, &[ok; 8], dl).map_err(e)?;
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        if matches!(pair, Pair::Raw | Pair::RawX) {
            self.bw += n as u64;
            if !self.ping && n > 0 {
                let mut expect = vec![0u8; BW_SIZE];
                pattern(&mut expect, seed);
                if self.buf[..BW_SIZE] != expect[..] {
                    return Err("raw stream: receiver saw corrupted data".into());
                }
            }
        }
        Ok(secs)
    }
}

/// Runs one side ("ping" or "pong") of the whole schedule. Ping prints the results.
pub fn run(role: &str, prefix: &str, o: &Opts) -> Result<(), String> {
    sys::die_with_parent();
    let ping = match role {
        "ping" => true,
        "pong" => false,
        _ => return Err(format!("unknown role {role}")),
    };
    let cpu = o.cpus.map(|(a, b)| if ping { a } else { b });
    if let Some(c) = cpu {
        sys::pin(c).map_err(|e| format!("pinning to CPU {c}: {e}"))?;
    }
    let files = Files::new(prefix);
    let raw = Raw::map(&files.raw).map_err(|e| format!("{}: {e}", files.raw.display()))?;
    let max = o.max_size().max(BW_SIZE);
    if raw_len(o.max_size()) > raw.len_bytes() {
        return Err("raw file too small".into());
    }
    let ep = attach(&files, if ping { 0 } else { 1 })?;
    let world = ep.world();
    let ring = match o.diag {
        true => {
            let f = Files::new(&format!("{prefix}r"));
            let (me, peer) = if ping { (0, 1) } else { (1, 0) };
            Some(Channel::attach(map(&f.chan)?, me, peer).map_err(|e| e.to_string())?)
        }
        false => None,
    };
    let tick = if ping { sys::tsc_per_ns() } else { 1.0 };
    let mut s = Side {
        ping,
        raw,
        ep,
        world,
        ring,
        rawx: o.rawx.unwrap_or(0),
        region: if o.diag { Some(map(&files.raw)?) } else { None },
        seq: 0,
        bw: 0,
        src: vec![0; max],
        buf: vec![0; max],
        max: o.max_size(),
        tick,
    };
    let resolution = if ping {
        crate::stats::clock_step(sys::tsc)
    } else {
        0
    };
    // Handshake: pong attached to both pairs.
    if ping {
        let t = Instant::now();
        while s.raw.w32(READY).load(Acquire) != 1 {
            if t.elapsed().as_secs() > 30 {
                return Err("the pong process never became ready".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    } else {
        s.raw.w32(READY).store(1, Release);
    }

    let mut res = Results::new(tick, resolution, o);
    let t_start = Instant::now();
    let mut seed = 0u32;
    for round in 0..o.rounds {
        // Alternate which pair goes first, so neither always follows the other.
        let mut order = vec![Pair::Raw, Pair::Fabric];
        if round % 2 == 1 {
            order.reverse();
        }
        let mut lat_order = order.clone();
        if o.diag {
            lat_order.insert(1, Pair::Ring);
        }
        if o.rawx.is_some() {
            lat_order.insert(1, Pair::RawX);
        }
        let mut phases: Vec<(Mode, usize)> = o.sizes.iter().map(|&z| (Mode::Poll, z)).collect();
        if o.block {
            phases.extend(o.block_sizes().into_iter().map(|z| (Mode::Block, z)));
        }
        for (mode, size) in phases {
            let iters = o.iters_for(mode, size);
            let warm = (iters / 10).max(10);
            for &pair in &lat_order {
                if matches!(pair, Pair::Ring | Pair::RawX) && mode == Mode::Block {
                    continue;
                }
                seed = seed.wrapping_add(1);
                let v = s.latency(pair, mode, size, warm, iters, seed)?;
                if ping {
                    res.add_latency(pair, mode, size, v);
                }
            }
        }
        // Streaming: BW_REPS back-to-back (memcpy, fabric) pairs per round, the order
        // swapped each time; each pair of figures gives one ratio.
        for rep in 0..BW_REPS {
            let mut o2 = order.clone();
            if o.diag {
                o2.insert(1, Pair::RawX);
            }
            if rep % 2 == 1 {
                o2.reverse();
            }
            for &pair in &o2 {
                seed = seed.wrapping_add(1);
                let secs = s.stream(pair, o.bw_msgs, seed)?;
                if ping {
                    res.add_stream(pair, o.bw_msgs, secs);
                }
            }
        }
        if ping {
            eprintln!(
                "fabric-bench: round {}/{} done ({:.1} s){}",
                round + 1,
                o.rounds,
                t_start.elapsed().as_secs_f64(),
                res.round_summary()
            );
        }
    }
    if ping {
        let lat: Vec<Latency> = res.latency();
        let bw: Vec<Bandwidth> = res.bandwidth();
        if o.json {
            println!("{}", crate::report::json(&lat, &bw));
        } else {
            print!("{}", res.human(&lat, &bw, t_start.elapsed().as_secs_f64()));
        }
    }
    Ok(())
}
