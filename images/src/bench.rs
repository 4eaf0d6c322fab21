//! `vmpi bench`: OSU-style ping-pong latency and streaming bandwidth of the fabric
//! between two partitions, interleaved in one run with the same fabric between two
//! host processes, the raw cache-line baseline between two host processes, and
//! MPICH over shared memory.
//!
//! # How a run goes
//! 1. Builds the VM image (`partitions/fabric-bench-vm`) and the MPICH program
//!    (`images/bench/mpich_pingpong.c`, with `mpicc`, into `target/vmpi-bench/`).
//! 2. Phase *poll*: boots the system of `images/bench/bench.toml` through the
//!    launcher (`launch::up`, in a thread: its clean-up is the bench's) with
//!    `spin_us=` huge, pins ping's QEMU to core 0 and pong's to core 1, then for
//!    each round, each size, runs one measurement of every pair in turn (the order
//!    rotates per round): vm-vm (the partitions, told through the control page in
//!    the channel file's tail, see `partitions/fabric-bench-vm`), host-host (two
//!    processes on a fresh `ShmWorld`), raw (two processes bouncing one cache
//!    line, or copying through a buffer for larger sizes), mpich (`mpiexec -n 2
//!    -bind-to core`). While the host measures, the partitions sleep in `rt::wait`.
//! 3. Phase *block*: the same for vm-vm and host-host with the fabric's default
//!    spin before blocking on a doorbell (the guest's adaptive 20-100 µs, the host's
//!    50 µs). Each side answers at once, so the spin catches every message: this
//!    measures the mode when it need not block, not a wake-up. Raw and MPICH have
//!    no blocking mode.
//!
//! Every latency figure is one way: half of each timed round trip (TSC ticks at the
//! ping side, converted with the host's TSC frequency; under KVM the guest's TSC is
//! the host's). Percentiles come from every sample of every round.
//!
//! Everything runs as children of this process with `PR_SET_PDEATHSIG`; VMs, files
//! and sockets go when the launcher's run ends (normal end, error, Ctrl-C).

use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use interconnect::shm::Region;
use interconnect::{Config, Endpoint, Rank};
use vmpi::launch::{Report, UpOptions, shm_path, up};
use vmpi::manifest::{self, System};
use vmpi::qemu::Accel;
use vmpi::tsc::{self, rdtsc};
use vmpi::{images, qemu};

use crate::bench_report::{Key, Mode, Pair, Results};

/// The bench system (two `fabric-bench-vm` partitions, one channel).
const MANIFEST: &str = include_str!("../bench/bench.toml");
/// The MPICH ping-pong.
const MPICH_SRC: &str = "bench/mpich_pingpong.c";
/// `spin_us=` that never gives up spinning within a round.
pub(crate) const POLL_SPIN_US: u64 = 1_000_000_000;
/// The fabric's default spin before blocking.
const BLOCK_SPIN_US: u64 = 50;
use abi::bench as ctl;
use ctl::{ACK, TAG};

/// Messages per window of a bandwidth round (as OSU's `osu_bw`).
const WINDOW: usize = 64;
/// Largest number of latency samples per round (the VM's samples area).
pub(crate) const MAX_ITERS: usize = ctl::SAMPLES_LEN / 4;

/// `vmpi bench` options.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// A fast smoke run: sizes 8, 1K and 64K, few iterations, one round.
    #[arg(long)]
    pub quick: bool,
    /// Message sizes, comma-separated (units K, M allowed), e.g. `8,64,4K,1M`.
    /// Default: powers of 4 from 8 B, and 1 MiB.
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<String>,
    /// Timed round trips per latency measurement at 64 B and below (fewer for larger
    /// messages, at least 200). Default 50000 (2000 with --quick).
    #[arg(long)]
    pub iters: Option<usize>,
    /// Rounds: every pair is measured once per size per round, interleaved.
    /// Default 5 (1 with --quick).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Print one JSON array of records instead of the table: `pair` (vm-vm,
    /// host-host, raw, mpich), `mode` (poll, block), `size` (bytes), `p50_ns`,
    /// `p99_ns`, `p999_ns` (one-way latency) and `mb_per_s` (streaming; null for raw).
    #[arg(long)]
    pub json: bool,
    /// Write an SVG latency plot (p50 against size, log-log) here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Accelerator: auto = KVM if /dev/kvm is usable, else TCG.
    #[arg(long, default_value = "auto")]
    pub accel: String,
    /// Skip the MPICH baseline.
    #[arg(long)]
    pub no_mpich: bool,
    /// Use the partition image as built (default: `cargo build` it first).
    #[arg(long)]
    pub no_build: bool,
    /// Instead: the monitor partition's costs (`images/bench/monitor.toml`): 8 B
    /// ping-pong with the monitor metering vs stopped, and the pair's latency while a
    /// flooder sharing its receiver is convicted and killed, with the flooder's
    /// non-blocking sends allowed and forbidden. Uses --rounds (default 10) and
    /// --iters (default 20000); see images/src/bench_monitor.rs.
    #[arg(long)]
    pub monitor: bool,
    /// With --monitor: boots per flooder variant (one flood each). Default 3.
    #[arg(long)]
    pub floods: Option<usize>,
}

/// A host side of one measurement (`vmpi bench-worker`, hidden).
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// `fabric` or `raw`.
    pub transport: String,
    /// `lat` or `bw`.
    pub kind: String,
    /// Shared-memory prefix (fabric) or file (raw).
    pub name: String,
    /// 0 (ping) or 1 (pong).
    pub rank: u32,
    /// Message size.
    pub size: usize,
    /// Latency: timed iterations; bandwidth: windows.
    pub count: usize,
    /// Latency: warm-up iterations; bandwidth: messages per window.
    pub extra: usize,
    /// Fabric: spin before blocking, in nanoseconds.
    pub spin_ns: u64,
}

/// The measurement plan.
#[derive(Debug, Clone)]
struct Plan {
    sizes: Vec<usize>,
    iters: usize,
    rounds: usize,
}

impl Plan {
    fn from(a: &BenchArgs) -> Result<Plan> {
        let sizes = if !a.sizes.is_empty() {
            let mut v = Vec::new();
            for s in &a.sizes {
                let n = manifest::parse_size(s)
                    .filter(|&n| (1..=16 << 20).contains(&n))
                    .ok_or_else(|| anyhow!("--sizes: `{s}` is not a size of 1 B to 16 MiB"))?;
                v.push(n as usize);
            }
            v
        } else if a.quick {
            vec![8, 1 << 10, 64 << 10]
        } else {
            let mut v: Vec<usize> = (0..9).map(|i| 8 << (2 * i)).collect();
            v.push(1 << 20);
            v
        };
        let iters = a.iters.unwrap_or(if a.quick { 2000 } else { 50_000 });
        if iters == 0 || iters > MAX_ITERS {
            bail!("--iters must be 1..={MAX_ITERS}");
        }
        let rounds = a.rounds.unwrap_or(if a.quick { 1 } else { 5 }).max(1);
        Ok(Plan {
            sizes,
            iters,
            rounds,
        })
    }

    /// Timed iterations for `size`: `iters` up to 64 B, then fewer, at least 200.
    fn iters(&self, size: usize) -> usize {
        (self.iters * 64 / size.max(64)).clamp(self.iters.min(200), self.iters)
    }

    fn warmup(&self, size: usize) -> usize {
        (self.iters(size) / 10).max(10)
    }

    /// Windows of [`WINDOW`] messages for a bandwidth round: about 32 MiB moved
    /// (8 MiB with `--quick`-sized iteration counts), 2..=100 windows.
    fn windows(&self, size: usize) -> usize {
        let bytes = if self.iters < 20_000 {
            8 << 20
        } else {
            32 << 20
        };
        (bytes / (WINDOW * size)).clamp(2, 100)
    }
}

/// Prints a progress line on standard error.
pub(crate) fn progress(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "[bench] {msg}");
}

/// Standard output moved to standard error while the bench runs (the launcher
/// reports on stdout); the final table or JSON goes to the saved descriptor.
pub(crate) struct StdoutToStderr {
    saved: i32,
}

impl StdoutToStderr {
    pub(crate) fn new() -> Result<Self> {
        let _ = std::io::stdout().flush();
        // SAFETY: dup/dup2 on the process's own standard descriptors; no memory.
        let saved = unsafe { libc::dup(1) };
        // SAFETY: as above.
        if saved < 0 || unsafe { libc::dup2(2, 1) } < 0 {
            bail!(
                "redirecting standard output: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(StdoutToStderr { saved })
    }

    pub(crate) fn write_final(&self, text: &str) -> Result<()> {
        let _ = std::io::stdout().flush();
        // SAFETY: `saved` is our duplicate of the original stdout, still open.
        let r = unsafe { libc::write(self.saved, text.as_ptr().cast(), text.len()) };
        let mut done = usize::try_from(r).unwrap_or(0);
        while done < text.len() {
            // SAFETY: as above; the pointer and length stay within `text`.
            let r =
                unsafe { libc::write(self.saved, text[done..].as_ptr().cast(), text.len() - done) };
            if r <= 0 {
                bail!("writing the results: {}", std::io::Error::last_os_error());
            }
            done += r as usize;
        }
        Ok(())
    }
}

impl Drop for StdoutToStderr {
    fn drop(&mut self) {
        let _ = std::io::stdout().flush();
        // SAFETY: restores the original stdout from our duplicate, then closes it.
        unsafe {
            libc::dup2(self.saved, 1);
            libc::close(self.saved);
        }
    }
}

/// Repository root (for `target/` and the C source).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Builds the MPICH ping-pong, installing Debian's MPICH first if we are root.
/// `Ok(None)`: MPICH is absent and cannot be installed (said loudly).
fn build_mpich() -> Result<Option<(PathBuf, PathBuf)>> {
    let install = "apt-get update && apt-get install -y mpich libmpich-dev";
    if qemu::which("mpicc").is_none() || qemu::which("mpiexec").is_none() {
        if !is_root() || qemu::which("apt-get").is_none() {
            let cmd = if is_root() {
                install.to_string()
            } else {
                format!("sudo sh -c '{install}'")
            };
            progress(&format!(
                "!!! MPICH is not installed: the mpich baseline is SKIPPED. Install it with: {cmd}"
            ));
            return Ok(None);
        }
        progress(&format!("MPICH is missing; running: {install}"));
        for args in [
            &["update"][..],
            &["install", "-y", "mpich", "libmpich-dev"][..],
        ] {
            let ok = Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                progress(&format!(
                    "!!! `apt-get {}` failed: the mpich baseline is SKIPPED",
                    args.join(" ")
                ));
                return Ok(None);
            }
        }
    }
    let (Some(mpicc), Some(mpiexec)) = (qemu::which("mpicc"), qemu::which("mpiexec")) else {
        progress("!!! mpicc/mpiexec still missing: the mpich baseline is SKIPPED");
        return Ok(None);
    };
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(MPICH_SRC);
    let dir = repo_root().join("target/vmpi-bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let bin = dir.join("mpich_pingpong");
    let fresh = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if fresh(&bin).is_none() || fresh(&bin) < fresh(&src) {
        progress(&format!("building {} with mpicc", bin.display()));
        let out = Command::new(&mpicc)
            .args(["-O2", "-Wall", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
            .context("running mpicc")?;
        if !out.status.success() {
            bail!(
                "mpicc {} failed:\n{}",
                src.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(Some((mpiexec, bin)))
}

/// A child process of the bench: PDEATHSIG, optionally pinned to `cpu`.
fn command(program: &Path, cpu: Option<usize>) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    // SAFETY: between fork and exec only prctl and sched_setaffinity run: both are
    // system calls on a stack-local set, async-signal-safe, touching no parent state.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if let Some(c) = cpu {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(c, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            Ok(())
        });
    }
    cmd
}

pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Pins every thread of `pid` to `cpu` (as `taskset -a -p`).
fn pin_process(pid: u32, cpu: usize) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: a zeroed cpu_set_t is valid; sched_setaffinity only reads it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

/// Our QEMU children, by the `rank=` on their command line.
pub(crate) fn qemu_children() -> Vec<(u32, Option<u32>)> {
    let me = std::process::id();
    let mut v = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return v;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some(after) = stat.rsplit_once(") ").map(|x| x.1) else {
            continue;
        };
        let ppid = after
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if ppid != Some(me) || !stat.contains("(qemu-system") {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        let rank = cmdline
            .split([' ', '\0'])
            .find_map(|w| w.strip_prefix("rank=")?.parse().ok());
        v.push((pid, rank));
    }
    v
}

/// Runs a child to completion, killing it if `stop` is set or `limit` passes.
fn finish(mut child: Child, stop: &AtomicBool, limit: Duration, what: &str) -> Result<String> {
    let mut out = child.stdout.take().context("child stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if stop.load(Ordering::SeqCst) || t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            if stop.load(Ordering::SeqCst) {
                bail!("interrupted");
            }
            bail!("{what} took longer than {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let text = reader.join().unwrap_or_default();
    if !status.success() {
        bail!("{what} failed: {status}");
    }
    Ok(text)
}

/// A measurement's result: round-trip samples in TSC ticks, or one bandwidth
/// round's total ticks.
pub(crate) enum Got {
    Samples(Vec<u32>),
    Ticks(u64),
}

fn parse_worker_output(text: &str) -> Result<Got> {
    if let Some(t) = text
        .lines()
        .find_map(|l| l.strip_prefix("bw_ticks "))
        .and_then(|v| v.trim().parse().ok())
    {
        return Ok(Got::Ticks(t));
    }
    let mut v = Vec::new();
    let mut on = false;
    for l in text.lines() {
        match l.trim() {
            "samples" => on = true,
            "end" => return Ok(Got::Samples(v)),
            s if on => v.push(
                s.parse::<u64>()
                    .map(|x| u32::try_from(x).unwrap_or(u32::MAX))
                    .with_context(|| format!("bad sample `{s}`"))?,
            ),
            _ => {}
        }
    }
    bail!(
        "no results in the output: {}",
        text.lines().last().unwrap_or("")
    )
}

/// What a round asks for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ask {
    pub(crate) bw: bool,
    pub(crate) size: usize,
    pub(crate) count: usize,
    pub(crate) extra: usize,
}

impl Ask {
    fn kind(&self) -> &'static str {
        if self.bw { "bw" } else { "lat" }
    }
}

/// The host-side pairs: two worker processes (this binary), pinned to cores 0 and 1.
fn host_pair(transport: &str, ask: Ask, spin_ns: u64, stop: &AtomicBool) -> Result<Got> {
    let pid = std::process::id();
    let exe = std::env::current_exe().context("finding the vmpi binary")?;
    // Files live as long as this value (ShmWorld or RawFile), removed on drop.
    let (_world, _raw, name): (
        Option<interconnect::host::ShmWorld>,
        Option<RawFile>,
        String,
    );
    if transport == "fabric" {
        let prefix = format!("vmpi-{pid}-hh");
        _world = Some(
            interconnect::host::ShmWorld::create(&prefix, &host_config())
                .map_err(|e| anyhow!("creating the host-host world: {e}"))?,
        );
        _raw = None;
        name = prefix;
    } else {
        let f = RawFile::create(pid, ask.size)?;
        name = f.path.display().to_string();
        _raw = Some(f);
        _world = None;
    }
    let n = cpus();
    let spawn = |rank: u32| -> Result<Child> {
        command(&exe, Some(rank as usize % n))
            .args([
                "bench-worker",
                transport,
                ask.kind(),
                &name,
                &rank.to_string(),
                &ask.size.to_string(),
                &ask.count.to_string(),
                &ask.extra.to_string(),
                &spin_ns.to_string(),
            ])
            .spawn()
            .context("starting a bench worker")
    };
    let pong = spawn(1)?;
    let ping = spawn(0)?;
    let limit = Duration::from_secs(120);
    let r = finish(ping, stop, limit, "the ping worker");
    let p = finish(pong, stop, limit, "the pong worker");
    let text = r?;
    p?;
    parse_worker_output(&text)
}

/// The host fabric's configuration: the same geometry as the bench channel.
fn host_config() -> Config {
    let mut cfg = Config::new(2);
    cfg.geometry = manifest::channel_geometry(2 << 20, 2 << 20);
    cfg
}

/// The raw baseline's file: `/dev/shm/vmpi-PID-raw` (removed on drop).
struct RawFile {
    path: PathBuf,
}

/// Raw layout: line 0 holds ping's and pong's sequence words and, up to
/// [`RAW_INLINE`] bytes, the payload; larger payloads go through a buffer per
/// direction from [`RAW_DATA`].
const RAW_INLINE: usize = 48;
const RAW_DATA: usize = 4096;

fn raw_len(size: usize) -> usize {
    RAW_DATA + 2 * size.next_multiple_of(4096)
}

impl RawFile {
    fn create(pid: u32, size: usize) -> Result<RawFile> {
        let path = PathBuf::from(format!("/dev/shm/vmpi-{pid}-raw"));
        let _ = std::fs::remove_file(&path);
        let f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let file = RawFile { path };
        f.set_len(raw_len(size) as u64)
            .with_context(|| format!("sizing {}", file.path.display()))?;
        Ok(file)
    }
}

impl Drop for RawFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A shared mapping of `len` bytes of `file`, every page faulted in up front
/// (`MAP_POPULATE`): a fresh worker process must not pay first-touch page faults
/// inside the timed loop (the partitions' mappings are warm after the first round).
fn map_populated(file: &File, len: usize) -> Result<Region> {
    use std::os::fd::AsRawFd;
    /// The mapping, unmapped when the last clone of the region goes.
    struct Mapping {
        addr: usize,
        len: usize,
    }
    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: addr/len are exactly a mapping made below, unmapped once.
            unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
        }
    }
    // SAFETY: a fresh shared mapping of an fd we own; the kernel picks the address.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        bail!("mmap: {}", std::io::Error::last_os_error());
    }
    let keep: Arc<dyn interconnect::shm::Backing> = Arc::new(Mapping {
        addr: ptr as usize,
        len,
    });
    // SAFETY: page-aligned (so 64-byte aligned), `len` bytes, valid until `keep`
    // (held by the region and its clones) is dropped; shared with other processes,
    // which is what Region is for.
    Ok(unsafe { Region::from_raw(ptr.cast(), len, Some(keep)) })
}

/// `vmpi bench-worker`: one side of a host-host or raw measurement. Rank 0 prints
/// its samples (or `bw_ticks`).
pub fn worker(w: &WorkerArgs) -> Result<u8> {
    let lat = match w.kind.as_str() {
        "lat" => true,
        "bw" => false,
        k => bail!("worker kind must be lat or bw, not {k}"),
    };
    let out = match w.transport.as_str() {
        "fabric" => fabric_worker(w, lat)?,
        "raw" if lat => raw_worker(w)?,
        t => bail!("worker transport must be fabric or raw (raw: latency only), not {t}"),
    };
    if w.rank == 0 {
        let mut s = String::new();
        match out {
            Got::Samples(v) => {
                s.push_str("samples\n");
                for x in v {
                    s.push_str(&format!("{x}\n"));
                }
                s.push_str("end\n");
            }
            Got::Ticks(t) => s.push_str(&format!("bw_ticks {t}\n")),
        }
        std::io::stdout().lock().write_all(s.as_bytes())?;
    }
    Ok(0)
}

fn fabric_worker(w: &WorkerArgs, lat: bool) -> Result<Got> {
    let cfg = host_config();
    let rank: Rank = w.rank;
    if rank > 1 {
        bail!("rank must be 0 or 1");
    }
    let peer = 1 - rank;
    let open = |name: &str, len: usize| -> Result<Region> {
        let p = format!("/dev/shm/{}-{name}", w.name);
        let f = File::options()
            .read(true)
            .write(true)
            .open(&p)
            .with_context(|| format!("opening {p}"))?;
        map_populated(&f, len).with_context(|| format!("mapping {p}"))
    };
    let bells = open("bells", 2 * interconnect::layout::LINE)?;
    let region = open("0-1", cfg.geometry.region_len())?;
    let ch = interconnect::ring::Channel::attach(region, rank, peer)
        .map_err(|e| anyhow!("attaching: {e}"))?;
    let mut platform = interconnect::host::HostPlatform::new(bells, rank)
        .map_err(|e| anyhow!("doorbells: {e}"))?;
    platform.set_spin_ns(w.spin_ns);
    let mut ep = Endpoint::new(&cfg, rank, vec![(peer, ch)], platform)
        .map_err(|e| anyhow!("endpoint: {e}"))?;
    let world = ep.world();
    let out = vec![0x5au8; w.size];
    let mut inb = vec![0u8; w.size];
    let dl = ep.after_ms(120_000);
    let e = |e: interconnect::Error| anyhow!("fabric: {e}");
    if lat {
        let mut rtt = Vec::with_capacity(w.count);
        for i in 0..w.extra + w.count {
            if rank == 0 {
                let t0 = rdtsc();
                ep.send(&world, peer, TAG, &out, dl).map_err(e)?;
                ep.recv(&world, peer, TAG, &mut inb, dl).map_err(e)?;
                let t1 = rdtsc();
                if i >= w.extra {
                    rtt.push(u32::try_from(t1.wrapping_sub(t0)).unwrap_or(u32::MAX));
                }
            } else {
                ep.recv(&world, peer, TAG, &mut inb, dl).map_err(e)?;
                ep.send(&world, peer, TAG, &out, dl).map_err(e)?;
            }
        }
        Ok(Got::Samples(rtt))
    } else {
        let mut ack = [0u8; 4];
        // One exchange first, so that the clock starts with both sides running.
        if rank == 0 {
            ep.send(&world, peer, ACK, &ack, dl).map_err(e)?;
            ep.recv(&world, peer, ACK, &mut ack, dl).map_err(e)?;
        } else {
            ep.recv(&world, peer, ACK, &mut ack, dl).map_err(e)?;
            ep.send(&world, peer, ACK, &ack, dl).map_err(e)?;
        }
        let t0 = rdtsc();
        for _ in 0..w.count {
            if rank == 0 {
                for _ in 0..w.extra {
                    ep.send(&world, peer, TAG, &out, dl).map_err(e)?;
                }
                ep.recv(&world, peer, ACK, &mut ack, dl).map_err(e)?;
            } else {
                for _ in 0..w.extra {
                    ep.recv(&world, peer, TAG, &mut inb, dl).map_err(e)?;
                }
                ep.send(&world, peer, ACK, &ack, dl).map_err(e)?;
            }
        }
        Ok(Got::Ticks(rdtsc().wrapping_sub(t0)))
    }
}

/// The raw baseline: ping stores its sequence number (after the payload) in line
/// 0, pong spins on it and answers in the same line; larger payloads are copied
/// into a buffer per direction before the sequence word and out after it.
fn raw_worker(w: &WorkerArgs) -> Result<Got> {
    let f = File::options()
        .read(true)
        .write(true)
        .open(&w.name)
        .with_context(|| format!("opening {}", w.name))?;
    let len = raw_len(w.size);
    let r = map_populated(&f, len).context("mapping the raw file")?;
    let inline = w.size <= RAW_INLINE;
    let cap = w.size.next_multiple_of(4096);
    let (mine, theirs) = if w.rank == 0 { (0, 8) } else { (8, 0) };
    let (tx_data, rx_data) = if w.rank == 0 {
        (RAW_DATA, RAW_DATA + cap)
    } else {
        (RAW_DATA + cap, RAW_DATA)
    };
    let out = vec![0x5au8; w.size];
    let mut inb = vec![0u8; w.size];
    let send = |seq: u64, inb: &mut [u8]| {
        let _ = inb;
        if inline {
            r.write(16, &out);
        } else {
            r.write(tx_data, &out);
        }
        r.store64(mine, seq, Ordering::Release);
    };
    let recv = |seq: u64, inb: &mut [u8]| {
        while r.load64(theirs, Ordering::Acquire) != seq {
            std::hint::spin_loop();
        }
        if inline {
            r.read(16, inb);
        } else {
            r.read(rx_data, inb);
        }
    };
    let mut rtt = Vec::with_capacity(w.count);
    for i in 0..(w.extra + w.count) as u64 {
        let seq = i + 1;
        if w.rank == 0 {
            let t0 = rdtsc();
            send(seq, &mut inb);
            recv(seq, &mut inb);
            let t1 = rdtsc();
            if i >= w.extra as u64 {
                rtt.push(u32::try_from(t1.wrapping_sub(t0)).unwrap_or(u32::MAX));
            }
        } else {
            recv(seq, &mut inb);
            send(seq, &mut inb);
        }
    }
    Ok(Got::Samples(rtt))
}

/// The partitions of one phase: the launcher running in a thread, and the
/// channel file mapped for the control page.
pub(crate) struct Vms {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Report, vmpi::launch::LaunchError>>>,
    ctl: Option<Region>,
    base: usize,
    round: u64,
    /// How often [`Vms::measure`] looks for the end of a round.
    pub(crate) poll: Duration,
    /// Host TSC when [`Vms::measure`] saw the last round done.
    pub(crate) done_tsc: u64,
}

impl Vms {
    pub(crate) fn start(sys: &System, opts: &UpOptions, interrupted: &AtomicBool) -> Result<Vms> {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, o, st) = (sys.clone(), opts.clone(), stop.clone());
        let thread = std::thread::spawn(move || up(&s, &o, &st));
        let mut vms = Vms {
            stop,
            thread: Some(thread),
            ctl: None,
            base: 0,
            round: 0,
            poll: Duration::from_micros(500),
            done_tsc: 0,
        };
        let path = shm_path(std::process::id(), 0);
        let t0 = Instant::now();
        let limit = Duration::from_secs(60);
        // The channel file, then both partitions ready.
        loop {
            vms.check(interrupted)?;
            if t0.elapsed() > limit {
                bail!(
                    "the partitions did not come up within {} s",
                    limit.as_secs()
                );
            }
            if vms.ctl.is_none()
                && let Ok(f) = File::options().read(true).write(true).open(&path)
            {
                let len = f.metadata()?.len() as usize;
                let g = sys.channels[0].geometry();
                let base = len
                    .checked_sub(ctl::CTL_LEN)
                    .filter(|&b| b >= g.region_len() + ctl::SAMPLES_LEN)
                    .ok_or_else(|| {
                        anyhow!("channel file of {len} bytes has no room for the bench")
                    })?;
                vms.ctl = Some(interconnect::shm::host::map_file(&f, len)?);
                vms.base = base;
            }
            if let Some(r) = &vms.ctl
                && (0..2).all(|i| {
                    r.load64(vms.base + ctl::READY_AT + 8 * i, Ordering::Acquire) == ctl::READY
                })
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Warm-up, discarded: every slot line and the whole data area of both
        // directions written once, so that no first-touch fault (emulated under
        // kvm_pvm) lands in a timed round.
        for (size, count) in [(8, 2 * 256), (1 << 20, 4)] {
            vms.measure(
                Ask {
                    bw: false,
                    size,
                    count,
                    extra: 0,
                },
                interrupted,
            )
            .context("warm-up round")?;
        }
        let kids = qemu_children();
        let n = cpus();
        // The pair only: other partitions (monitor, flooder) float.
        for (pid, rank) in &kids {
            if rank.unwrap_or(0) < 2 {
                pin_process(*pid, rank.unwrap_or(0) as usize % n);
            }
        }
        progress(&format!(
            "partitions up in {} ms; QEMU pinned: {}",
            t0.elapsed().as_millis(),
            kids.iter()
                .map(|(p, r)| match r.unwrap_or(0) {
                    r @ 0..2 => format!("rank {r} pid {p} -> cpu {}", r as usize % n),
                    r => format!("rank {r} pid {p} not pinned"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(vms)
    }

    /// Errors if Ctrl-C came or the launcher ended early.
    pub(crate) fn check(&mut self, interrupted: &AtomicBool) -> Result<()> {
        if interrupted.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            let r = self.thread.take().map(|t| t.join());
            return Err(match r {
                Some(Ok(Ok(rep))) => anyhow!(
                    "the partitions ended early: {}",
                    rep.rows
                        .iter()
                        .map(|r| format!("{} {} (log {})", r.name, r.outcome, r.log.display()))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                Some(Ok(Err(e))) => anyhow!(e).context("launching the partitions"),
                _ => anyhow!("the launcher thread failed"),
            });
        }
        Ok(())
    }

    fn post(&mut self, kind: u64, ask: Ask) -> Result<()> {
        let r = self.ctl.as_ref().context("no control page")?;
        let b = self.base;
        r.store64(b + ctl::KIND, kind, Ordering::SeqCst);
        r.store64(b + ctl::SIZE, ask.size as u64, Ordering::SeqCst);
        r.store64(b + ctl::COUNT, ask.count as u64, Ordering::SeqCst);
        r.store64(b + ctl::EXTRA, ask.extra as u64, Ordering::SeqCst);
        self.round += 1;
        r.store64(b + ctl::CMD, self.round, Ordering::SeqCst);
        Ok(())
    }

    pub(crate) fn measure(&mut self, ask: Ask, interrupted: &AtomicBool) -> Result<Got> {
        self.post(if ask.bw { ctl::BANDWIDTH } else { ctl::LATENCY }, ask)?;
        let k = self.round;
        let t0 = Instant::now();
        loop {
            self.check(interrupted)?;
            let r = self.ctl.as_ref().context("no control page")?;
            if (0..2).all(|i| r.load64(self.base + ctl::DONE_AT + 8 * i, Ordering::Acquire) == k) {
                self.done_tsc = rdtsc();
                break;
            }
            if t0.elapsed() > Duration::from_secs(150) {
                bail!("the partitions did not finish round {k} within 150 s");
            }
            std::thread::sleep(self.poll);
        }
        let r = self.ctl.as_ref().context("no control page")?;
        for i in 0..2 {
            let s = r.load64(self.base + ctl::STATUS_AT + 8 * i, Ordering::Acquire);
            if s != 0 {
                bail!(
                    "partition rank {i} failed round {k} with interconnect error code {s} (see its log)"
                );
            }
        }
        let res = r.load64(self.base + ctl::RESULT, Ordering::Acquire);
        if ask.bw {
            return Ok(Got::Ticks(res));
        }
        let n = (res as usize).min(MAX_ITERS);
        let mut bytes = vec![0u8; n * 4];
        r.read(self.base - ctl::SAMPLES_LEN, &mut bytes);
        Ok(Got::Samples(
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ))
    }

    /// Tells the partitions to exit and waits for the launcher (stops them after 10 s).
    /// Every partition but those named in `may_fail` must have ended with status 0.
    pub(crate) fn finish(mut self, may_fail: &[&str]) -> Result<()> {
        let _ = self.post(
            ctl::QUIT,
            Ask {
                bw: false,
                size: 0,
                count: 0,
                extra: 0,
            },
        );
        let t0 = Instant::now();
        while self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            if t0.elapsed() > Duration::from_secs(10) {
                self.stop.store(true, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Ok(rep))) => {
                for r in &rep.rows {
                    if r.outcome != vmpi::launch::Outcome::Status(0)
                        && !may_fail.contains(&r.name.as_str())
                    {
                        bail!(
                            "partition {} ended with {} (log {})",
                            r.name,
                            r.outcome,
                            r.log.display()
                        );
                    }
                }
                Ok(())
            }
            Some(Ok(Err(e))) => Err(anyhow!(e)),
            _ => Err(anyhow!("the launcher thread failed")),
        }
    }
}

impl Drop for Vms {
    fn drop(&mut self) {
        // Stop the launcher (it kills every VM and removes every file) and wait.
        self.ctl = None;
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn mpich_round(mpi: &(PathBuf, PathBuf), ask: Ask, stop: &AtomicBool) -> Result<Got> {
    let child = command(&mpi.0, None)
        .args(["-n", "2", "-bind-to", "core"])
        .arg(&mpi.1)
        .args([
            ask.kind(),
            &ask.size.to_string(),
            &ask.count.to_string(),
            &ask.extra.to_string(),
        ])
        .spawn()
        .context("starting mpiexec")?;
    let text = finish(child, stop, Duration::from_secs(120), "mpiexec")?;
    parse_worker_output(&text)
}

/// What every benchmark run starts with.
pub(crate) struct Setup {
    /// Raised by Ctrl-C (and SIGTERM, SIGHUP): stop and clean up.
    pub(crate) interrupted: Arc<AtomicBool>,
    /// Standard output, kept for the final report (progress goes to stderr).
    pub(crate) out: StdoutToStderr,
    /// The host's TSC frequency.
    pub(crate) khz: u64,
    /// The accelerator the VMs run under.
    pub(crate) accel: Accel,
}

impl Setup {
    /// Installs the signal handlers, sweeps files of killed runs, reads the TSC
    /// frequency and chooses the accelerator (`auto`, `kvm` or `tcg`).
    pub(crate) fn new(accel: &str) -> Result<Setup> {
        let interrupted = vmpi::launch::stop_on_signals().context("installing signal handlers")?;
        let out = StdoutToStderr::new()?;
        progress(&format!("pid {}", std::process::id()));
        for p in vmpi::launch::sweep_stale() {
            progress(&format!("removed {} left by a killed run", p.display()));
        }
        let accel = match accel {
            "kvm" => Accel::Kvm,
            "tcg" => Accel::Tcg,
            "auto" => Accel::detect(),
            o => bail!("--accel must be auto, kvm or tcg, not {o}"),
        };
        Ok(Setup {
            interrupted,
            out,
            khz: tsc::tsc_khz(),
            accel,
        })
    }
}

/// `vmpi bench`.
pub fn run(a: BenchArgs) -> Result<u8> {
    if a.monitor {
        return crate::bench_monitor::run(&a);
    }
    let plan = Plan::from(&a)?;
    let Setup {
        interrupted,
        out,
        khz,
        accel,
    } = Setup::new(&a.accel)?;
    let mpich = if a.no_mpich {
        progress("--no-mpich: the mpich baseline is skipped");
        None
    } else {
        build_mpich()?
    };

    let manifest_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/bench.toml");
    let parts = images::partitions_dir(&manifest_path);
    let system = |spin_us: u64| -> Result<System> {
        let text = MANIFEST.replace(
            "memory = \"64M\"\n",
            &format!("memory = \"64M\"\nargs = [\"spin_us={spin_us}\"]\n"),
        );
        Ok(manifest::parse(&manifest_path, &text)?)
    };
    let poll_sys = system(POLL_SPIN_US)?;
    let block_sys = system(BLOCK_SPIN_US)?;
    if !a.no_build {
        images::build(&poll_sys, &parts)?;
    }
    let opts = UpOptions {
        qemu: qemu::find_or_install_qemu()?,
        uhyve: None,
        accel,
        images: images::require_images(&poll_sys, &parts)?,
        log_dir: PathBuf::from("target/vmpi-logs").join(&poll_sys.name),
        timeout: None,
        tsc_khz: khz,
        echo: false,
    };
    progress(&format!(
        "{} size(s) {:?}, {} round(s), up to {} round trips per latency measurement, {} on {} cpu(s), TSC {khz} kHz, partitions' logs in {}",
        plan.sizes.len(),
        plan.sizes,
        plan.rounds,
        plan.iters,
        accel.name(),
        cpus(),
        opts.log_dir.display()
    ));

    let t_start = Instant::now();
    let mut res = Results::new(khz, crate::stats::clock_step(rdtsc));
    res.accel = accel.name().to_string();
    res.mpich = mpich.is_some();
    for mode in [Mode::Poll, Mode::Block] {
        let (sys, spin_us) = match mode {
            Mode::Poll => (&poll_sys, POLL_SPIN_US),
            Mode::Block => (&block_sys, BLOCK_SPIN_US),
        };
        progress(&format!("phase {}: booting the partitions", mode.name()));
        let mut vms = Vms::start(sys, &opts, &interrupted)?;
        let mut pairs = vec![Pair::VmVm, Pair::HostHost];
        if mode == Mode::Poll {
            pairs.push(Pair::Raw);
            if mpich.is_some() {
                pairs.push(Pair::Mpich);
            }
        }
        for round in 0..plan.rounds {
            for &size in &plan.sizes {
                let lat = Ask {
                    bw: false,
                    size,
                    count: plan.iters(size),
                    extra: plan.warmup(size),
                };
                let bw = Ask {
                    bw: true,
                    size,
                    count: plan.windows(size),
                    extra: WINDOW,
                };
                let mut order = pairs.clone();
                order.rotate_left(round % pairs.len());
                for &pair in &order {
                    for ask in [lat, bw] {
                        if ask.bw && pair == Pair::Raw {
                            continue;
                        }
                        let got = match pair {
                            Pair::VmVm => vms.measure(ask, &interrupted),
                            Pair::HostHost => {
                                host_pair("fabric", ask, spin_us * 1000, &interrupted)
                            }
                            Pair::Raw => host_pair("raw", ask, 0, &interrupted),
                            Pair::Mpich => {
                                mpich_round(mpich.as_ref().context("no mpich")?, ask, &interrupted)
                            }
                        }
                        .with_context(|| {
                            format!("{} {} {} B {}", pair.name(), mode.name(), size, ask.kind())
                        })?;
                        let key = Key { pair, mode, size };
                        match got {
                            Got::Samples(s) => res.add_samples(key, &s),
                            Got::Ticks(t) => {
                                res.add_bw(key, (ask.count * ask.extra * size) as u64, t)
                            }
                        }
                    }
                    vms.check(&interrupted)?;
                }
                progress(&format!(
                    "round {}/{} {} {size} B: {}",
                    round + 1,
                    plan.rounds,
                    mode.name(),
                    res.brief(mode, size)
                ));
            }
        }
        vms.finish(&[])?;
    }
    res.seconds = t_start.elapsed().as_secs_f64();
    res.load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    if let Some(p) = &a.svg {
        std::fs::write(p, res.svg()).with_context(|| format!("writing {}", p.display()))?;
        progress(&format!("wrote {}", p.display()));
    }
    let text = if a.json { res.json() } else { res.table() };
    out.write_final(&text)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> BenchArgs {
        BenchArgs {
            quick: false,
            sizes: vec![],
            iters: None,
            rounds: None,
            json: false,
            svg: None,
            accel: "auto".into(),
            no_mpich: false,
            no_build: false,
            monitor: false,
            floods: None,
        }
    }

    #[test]
    fn default_plan_spans_8_bytes_to_1_mib() {
        let p = Plan::from(&args()).unwrap();
        assert_eq!(p.sizes.first(), Some(&8));
        assert_eq!(p.sizes.last(), Some(&(1 << 20)));
        assert_eq!(p.iters(8), 50_000);
        assert_eq!(p.iters(1 << 20), 200);
        assert!(p.windows(8) <= 100 && p.windows(1 << 20) >= 2);
    }

    #[test]
    fn sizes_and_iters_are_checked() {
        let mut a = args();
        a.sizes = vec!["8".into(), "4K".into()];
        assert_eq!(Plan::from(&a).unwrap().sizes, vec![8, 4096]);
        a.sizes = vec!["0".into()];
        assert!(Plan::from(&a).is_err());
        a.sizes = vec![];
        a.iters = Some(MAX_ITERS + 1);
        assert!(Plan::from(&a).is_err());
    }

    #[test]
    fn worker_output_parses() {
        let Got::Samples(s) = parse_worker_output("x\nsamples\n3\n5\nend\n").unwrap() else {
            panic!("samples expected");
        };
        assert_eq!(s, vec![3, 5]);
        let Got::Ticks(t) = parse_worker_output("bw_ticks 42\n").unwrap() else {
            panic!("ticks expected");
        };
        assert_eq!(t, 42);
        assert!(parse_worker_output("samples\n1\n").is_err());
    }

    #[test]
    fn the_bench_manifest_leaves_room_for_the_control_block() {
        let sys = manifest::parse(Path::new("bench.toml"), MANIFEST).unwrap();
        let c = &sys.channels[0];
        assert!(
            c.geometry().region_len() + ctl::SAMPLES_LEN + ctl::CTL_LEN <= c.file_bytes as usize
        );
    }
}
