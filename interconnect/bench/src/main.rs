//! fabric-bench: ping-pong latency (8 B to 1 MiB) and 64 KiB streaming bandwidth of the
//! vmpi fabric between two host processes, interleaved round by round with raw
//! baselines between two processes through the same kind of shared memory.
//!
//! ```text
//! cargo run --release --bin fabric-bench [-- --json] [--quick] [--iters N]
//!     [--rounds N] [--sizes 8,64,4K,1M] [--bw-msgs N] [--no-block] [--diag]
//! ```
//!
//! Diagnostics (not part of the recorded figures): `--diag` adds a `ring` latency pair,
//! the fabric's ring protocol alone (`ring::Channel`, no MPI layer) on a second channel
//! (`--ring-slots N` changes its ring size); `--rawx BITS` adds a `rawx` pair, the raw
//! pair plus chosen pieces of the ring's memory traffic (see `peer::Side::rawx_rtt`);
//! `--diag` also streams through the memcpy baseline's buffers with the fabric's own
//! copy routines (`shm::Region::write`/`read`) instead of memcpy (`volatile-copy`).
//! Both are interleaved with the others like the main pairs.
//!
//! The process started by the user is the launcher: it creates the fabric's files with
//! `host::ShmWorld::create` and the raw pair's file under /dev/shm, re-executes itself
//! twice (`--peer ping` and `--peer pong`, each pinned to its own core), waits, and
//! removes every file afterwards, also on failure and on Ctrl-C. The ping process
//! measures and prints the report (stdout); progress goes to stderr.

mod peer;
mod report;
mod stats;
mod sys;

use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Which pair of processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pair {
    /// Through the fabric.
    Fabric,
    /// The raw baseline (latency: one cache line; streaming: memcpy).
    Raw,
    /// Diagnostic (`--diag`): the fabric's ring protocol alone (`ring::Channel`
    /// `Tx::send` / `Rx::peek` + `Rx::take`), without the MPI layer.
    Ring,
    /// Diagnostic (`--rawx BITS`): the raw pair plus chosen pieces of the ring's work.
    RawX,
}

impl Pair {
    fn lat_name(self) -> &'static str {
        match self {
            Pair::Fabric => "fabric",
            Pair::Raw => "raw",
            Pair::Ring => "ring",
            Pair::RawX => "rawx",
        }
    }
    fn bw_name(self) -> &'static str {
        match self {
            Pair::Fabric => "fabric",
            Pair::Raw => "memcpy",
            Pair::Ring => "ring",
            Pair::RawX => "volatile-copy",
        }
    }
}

/// How a waiting side waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Pure spinning.
    Poll,
    /// Block at once (futex doorbells).
    Block,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Poll => "poll",
            Mode::Block => "block",
        }
    }
}

/// Command-line options (the launcher passes them on to both peers unchanged).
#[derive(Clone, Debug)]
pub struct Opts {
    json: bool,
    /// Round trips per round for sizes up to 4 KiB (fewer above).
    iters: usize,
    rounds: usize,
    sizes: Vec<usize>,
    /// 64 KiB messages per streaming measurement (`peer::BW_REPS` per round and pair).
    bw_msgs: usize,
    /// Also measure block mode (at 8 bytes).
    block: bool,
    /// Also measure the diagnostic `ring` pair (latency, poll mode).
    diag: bool,
    /// `--diag`: ring slots of the diagnostic channel (default: the fabric's).
    ring_slots: Option<u32>,
    /// `--rawx BITS`: measure the RawX pair (see `peer::rawx_rtt`).
    rawx: Option<u32>,
    /// CPUs of ping and pong (chosen by the launcher).
    cpus: Option<(usize, usize)>,
}

const DEFAULT_SIZES: &[usize] = &[
    8,
    16,
    64,
    256,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
];

const USAGE: &str = "usage: fabric-bench [--json] [--quick] [--iters N] [--rounds N] \
                     [--sizes 8,64,4K,1M] [--bw-msgs N] [--no-block] [--diag] [--ring-slots N] \
                     [--rawx BITS]";

impl Opts {
    fn max_size(&self) -> usize {
        self.sizes.iter().copied().max().unwrap_or(8)
    }

    /// Round trips per round for one phase: `iters` up to 4 KiB, then fewer in
    /// proportion to the size (at least `iters / 50`); block mode a fiftieth.
    fn iters_for(&self, mode: Mode, size: usize) -> usize {
        let n = (self.iters * 4096 / size.max(4096))
            .max(self.iters / 50)
            .max(5);
        match mode {
            Mode::Poll => n,
            Mode::Block => (n / 50).max(5),
        }
    }

    /// Sizes measured in block mode: 8 bytes (if asked for), else the smallest.
    fn block_sizes(&self) -> Vec<usize> {
        let z = if self.sizes.contains(&8) {
            8
        } else {
            self.sizes.iter().copied().min().unwrap_or(8)
        };
        vec![z]
    }
}

fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (n, m) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        _ => (s, 1),
    };
    n.parse::<usize>().ok()?.checked_mul(m)
}

/// Parses the options; returns them and the peer role/prefix if this is a peer.
fn parse(args: &[String]) -> Result<(Opts, Option<(String, String)>), String> {
    let mut o = Opts {
        json: false,
        iters: 20_000,
        rounds: 10,
        sizes: DEFAULT_SIZES.to_vec(),
        bw_msgs: 2048,
        block: true,
        diag: false,
        ring_slots: None,
        rawx: None,
        cpus: None,
    };
    let mut quick = false;
    let (mut iters, mut rounds, mut bw) = (None, None, None);
    let mut peer = None;
    let mut it = args.iter();
    let num = |v: Option<&String>, what: &str| -> Result<usize, String> {
        v.and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .ok_or(format!("{what} needs a positive number\n{USAGE}"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => o.json = true,
            "--quick" => quick = true,
            "--no-block" => o.block = false,
            "--diag" => o.diag = true,
            "--rawx" => o.rawx = Some(num(it.next(), "--rawx")? as u32),
            "--ring-slots" => o.ring_slots = Some(num(it.next(), "--ring-slots")? as u32),
            "--iters" => iters = Some(num(it.next(), "--iters")?),
            "--rounds" => rounds = Some(num(it.next(), "--rounds")?),
            "--bw-msgs" => bw = Some(num(it.next(), "--bw-msgs")?),
            "--sizes" => {
                let v = it.next().ok_or(format!("--sizes needs a list\n{USAGE}"))?;
                o.sizes = v
                    .split(',')
                    .map(|s| parse_size(s).filter(|&z| (1..=16 << 20).contains(&z)))
                    .collect::<Option<Vec<_>>>()
                    .ok_or(format!(
                        "--sizes: sizes are 1 B to 16M, like 8,64,4K,1M: {v}"
                    ))?;
            }
            "--peer" => {
                let role = it.next().ok_or("--peer needs a role")?.clone();
                let prefix = it.next().ok_or("--peer needs a prefix")?.clone();
                peer = Some((role, prefix));
            }
            "--cpus" => {
                let v = it.next().ok_or("--cpus needs a,b")?;
                let (a, b) = v.split_once(',').ok_or("--cpus needs a,b")?;
                o.cpus = Some((
                    a.parse().map_err(|_| "--cpus")?,
                    b.parse().map_err(|_| "--cpus")?,
                ));
            }
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {a}\n{USAGE}")),
        }
    }
    if quick {
        o.iters = 200;
        o.rounds = 2;
        o.bw_msgs = 32;
    }
    o.iters = iters.unwrap_or(o.iters);
    o.rounds = rounds.unwrap_or(o.rounds);
    o.bw_msgs = bw.unwrap_or(o.bw_msgs);
    o.sizes.sort_unstable();
    o.sizes.dedup();
    Ok((o, peer))
}

/// Removes a file when dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Kills (by pid) and reaps a child when dropped, unless it already exited.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn launch(o: &Opts, args: &[String]) -> Result<(), String> {
    let cpus = sys::allowed_cpus();
    let pin = match cpus.as_slice() {
        [a, b, ..] => Some((*a, *b)),
        _ => {
            eprintln!("fabric-bench: fewer than two CPUs allowed: the peers run unpinned");
            None
        }
    };
    let prefix = format!("fabric-bench-{}", std::process::id());
    let files = peer::Files::new(&prefix);
    let ring = peer::Files::new(&format!("{prefix}r"));
    sys::cleanup_on_signals(&[
        files.raw.clone(),
        files.bells.clone(),
        files.chan.clone(),
        ring.bells.clone(),
        ring.chan.clone(),
    ]);
    // The fabric's files (removed when `world` drops); a second channel for `--diag`.
    let world = interconnect::host::ShmWorld::create(&prefix, &peer::fabric_config())
        .map_err(|e| format!("creating the fabric's files: {e}"))?;
    let ring_world = match o.diag {
        true => Some(
            interconnect::host::ShmWorld::create(&format!("{prefix}r"), &peer::ring_config(o))
                .map_err(|e| format!("creating the ring's files: {e}"))?,
        ),
        false => None,
    };
    let _raw = RemoveOnDrop(files.raw.clone());
    sys::create_file(&files.raw, peer::raw_len(o.max_size()) as u64)
        .map_err(|e| format!("{}: {e}", files.raw.display()))?;

    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let spawn = |role: &str, out: Stdio| {
        let mut c = Command::new(&exe);
        c.args(args).args(["--peer", role, &prefix]);
        if let Some((a, b)) = pin {
            c.args(["--cpus", &format!("{a},{b}")]);
        }
        c.stdin(Stdio::null()).stdout(out).spawn().map(Peer)
    };
    let mut pong = spawn("pong", Stdio::null()).map_err(|e| format!("spawning pong: {e}"))?;
    sys::set_child(0, pong.0.id());
    let mut ping = spawn("ping", Stdio::inherit()).map_err(|e| format!("spawning ping: {e}"))?;
    sys::set_child(1, ping.0.id());
    if let Some((a, b)) = pin {
        eprintln!("fabric-bench: ping on CPU {a}, pong on CPU {b}, files /dev/shm/{prefix}-*");
    }

    let t0 = Instant::now();
    let limit = Duration::from_secs(1800);
    let res = loop {
        let a = ping.0.try_wait().map_err(|e| e.to_string())?;
        let b = pong.0.try_wait().map_err(|e| e.to_string())?;
        match (a, b) {
            (Some(s), _) if !s.success() => break Err(format!("the ping process failed: {s}")),
            (_, Some(s)) if !s.success() => break Err(format!("the pong process failed: {s}")),
            (Some(_), Some(_)) => break Ok(()),
            (Some(_), None) if t0.elapsed() > limit + Duration::from_secs(10) => {
                break Err("the pong process did not finish".into());
            }
            _ if t0.elapsed() > limit => break Err(format!("timed out after {limit:?}")),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    drop(ping);
    drop(pong);
    sys::set_child(0, 0);
    sys::set_child(1, 0);
    drop(world);
    drop(ring_world);
    res
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (o, peer) = match parse(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let r = match peer {
        Some((role, prefix)) => peer::run(&role, &prefix, &o),
        None => launch(&o, &args),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fabric-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
