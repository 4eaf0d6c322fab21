//! `vmpi up`: creates the channel files, serves the doorbells, starts one VM per
//! partition (all at once), prefixes and keeps their serial logs, applies the
//! fault policy, and leaves nothing behind: every VM, socket and `/dev/shm` file
//! is gone when [`up`] returns, fails or is interrupted.
//!
//! # Files of one run (`PID` = vmpi's process id)
//! - `/dev/shm/vmpi-PID-C`: channel `C`'s shared memory (size from
//!   [`crate::manifest::channel_file_bytes`]);
//! - `$TMPDIR/vmpi-PID/chC-E.sock`: the doorbell socket of channel `C`, end `E`;
//!   `$TMPDIR/vmpi-PID/qmp-NAME.sock`: partition `NAME`'s QMP socket;
//! - `LOG_DIR/NAME.log`: partition `NAME`'s serial log (kept).
//!
//! Channels are created pending. Without a monitor partition, the launcher publishes
//! their rights itself at once, and `on_fault = "restart"` is carried out here (the
//! partition's channels reopened and published for its next generation first). With one
//! (`[monitor] partition`), the launcher decides nothing: the monitor publishes the
//! rights; the launcher maps every channel into the monitor too (ivshmem id 2) with a
//! control region
//! (`/dev/shm/vmpi-PID-control`, [`crate::control_region`]) holding the rights table,
//! polls that region every millisecond without ever blocking on it, carries out the
//! monitor's `Kill` (SIGKILL, then `layout::mark_dead` on the partition's channels)
//! and `Restart` commands, and reports every exit back (`LauncherEvent::Exited`).
//!
//! QEMUs run in their own process group (a terminal's Ctrl-C reaches vmpi only,
//! which then stops them) with `PR_SET_PDEATHSIG` = `SIGKILL` (if vmpi itself is
//! killed, they die too); a later run removes files left by a killed one.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::control_region::{ControlRegion, Garbage, Received};
use crate::doorbell::{ChannelSpec, DoorbellError, DoorbellServer, Event};
use crate::guest_args::{guest_args, monitor_slots};
use crate::images::ImageError;
use crate::manifest::{Channel, FaultPolicy, Hypervisor, System, human_bytes};
use crate::qemu::{Accel, HostError, VmPaths};

/// Launch errors.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// QEMU or uhyve missing.
    #[error(transparent)]
    Host(#[from] HostError),
    /// An image is missing.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Not enough room in /dev/shm.
    #[error("the channels need {need} of shared memory but /dev/shm has {free} free")]
    NoSpace {
        /// Bytes needed.
        need: String,
        /// Bytes free.
        free: String,
    },
    /// A file or folder of the run could not be made.
    #[error("{path}: {source}")]
    File {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The doorbell server failed.
    #[error(transparent)]
    Doorbell(#[from] DoorbellError),
    /// A VM could not be started.
    #[error("cannot start partition `{name}` ({program}): {source}")]
    Spawn {
        /// Partition.
        name: String,
        /// Program.
        program: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// How `up` runs.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The uhyve binary, if any partition needs it.
    pub uhyve: Option<PathBuf>,
    /// Accelerator.
    pub accel: Accel,
    /// Kernel image per partition (index = rank).
    pub images: Vec<PathBuf>,
    /// Where serial logs go (created).
    pub log_dir: PathBuf,
    /// Stop every VM after this long.
    pub timeout: Option<Duration>,
    /// TSC frequency handed to guests.
    pub tsc_khz: u64,
    /// Whether to copy serial output to stdout (it always goes to the log).
    pub echo: bool,
}

/// How a partition ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The guest reported status `v` (isa-debug-exit or uhyve's exit).
    Status(u8),
    /// vmpi stopped it (Ctrl-C, timeout, end of run).
    Stopped,
    /// QEMU ended without a guest status (code 0: triple fault; even: QEMU error).
    NoStatus(i32),
    /// Killed by a signal vmpi did not send.
    Signal(i32),
    /// Killed on the monitor partition's command.
    Killed,
}

impl Outcome {
    fn from_exit(status: ExitStatus, hv: Hypervisor) -> Self {
        match (status.code(), hv) {
            (Some(c), Hypervisor::Uhyve) => u8::try_from(c).map_or(Self::NoStatus(c), Self::Status),
            (Some(c), Hypervisor::Qemu) => {
                abi::from_qemu_exit_code(c).map_or(Self::NoStatus(c), Self::Status)
            }
            (None, _) => Self::Signal(status.signal().unwrap_or(0)),
        }
    }

    /// A fault (what `on_fault` acts on): a runtime-reported fault or no status.
    pub fn is_fault(self) -> bool {
        match self {
            Self::Status(v) => v > abi::exit::SERVICE_MAX,
            Self::Stopped | Self::Killed => false,
            Self::NoStatus(_) | Self::Signal(_) => true,
        }
    }

    /// Severity for "worst": success < stopped < service status < fault < no status.
    fn severity(self) -> u8 {
        match self {
            Self::Status(0) => 0,
            Self::Stopped => 1,
            Self::Status(v) if v <= abi::exit::SERVICE_MAX => 2,
            Self::Killed => 2,
            Self::Status(_) => 3,
            Self::NoStatus(_) | Self::Signal(_) => 4,
        }
    }

    /// `vmpi up`'s exit code when this is the worst outcome.
    pub fn exit_code(self, interrupted: bool) -> u8 {
        match self {
            Self::Status(v) => v,
            Self::Stopped if interrupted => 130,
            Self::Stopped => 124,
            Self::Killed => 137,
            Self::NoStatus(_) | Self::Signal(_) => 125,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status(v) => write!(f, "status {v} ({})", abi::exit::describe(*v)),
            Self::Stopped => f.write_str("stopped by vmpi"),
            Self::NoStatus(0) => f.write_str("no status (QEMU exit 0: triple fault or shutdown)"),
            Self::NoStatus(c) => write!(f, "no status (hypervisor exit code {c})"),
            Self::Signal(s) => write!(f, "killed by signal {s}"),
            Self::Killed => f.write_str("killed on the monitor's verdict"),
        }
    }
}

/// One partition's line of the summary.
#[derive(Debug, Clone)]
pub struct Row {
    /// Partition name.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Restarts done.
    pub restarts: u32,
    /// Serial log.
    pub log: PathBuf,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Report {
    /// One row per partition, by rank.
    pub rows: Vec<Row>,
    /// Ctrl-C / SIGTERM ended the run.
    pub interrupted: bool,
    /// The timeout ended the run.
    pub timed_out: bool,
}

impl Report {
    /// The worst row, if any.
    pub fn worst(&self) -> Option<&Row> {
        self.rows.iter().max_by_key(|r| r.outcome.severity())
    }

    /// `vmpi up`'s exit code: the worst outcome's.
    pub fn exit_code(&self) -> u8 {
        self.worst()
            .map_or(0, |r| r.outcome.exit_code(self.interrupted))
    }
}

/// Prints a vmpi line (serialised with the partitions' lines through stdout's lock).
fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "[vmpi] {msg}");
}

/// THE hook where the launcher initialises a channel's shared memory before any
/// partition maps it: `interconnect::layout::reopen` writes the header (magic,
/// geometry from the manifest's rings, world ranks of side 0 and 1), marks both sides
/// alive and leaves the channel pending until its rights are published (see
/// [`publish_rights`]). The layout itself is the interconnect's.
pub fn init_channel(file: &File, sys: &System, channel: &Channel) -> std::io::Result<()> {
    let len = usize::try_from(channel.file_bytes).map_err(std::io::Error::other)?;
    let region = interconnect::shm::host::map_file(file, len)?;
    let ranks = channel.ends.map(|r| r as interconnect::Rank);
    interconnect::layout::reopen(&region, channel.geometry(), ranks, [0; 2]).map_err(|e| {
        std::io::Error::other(format!("initialising channel {}: {e}", channel.index))
    })?;
    publish_rights(sys, &region, channel);
    Ok(())
}

/// Publishes a channel's rights (each end's send rights from the rights table, then
/// the channel opens) if the system has no monitor partition; with one, the monitor
/// publishes them and the launcher leaves the channel pending.
fn publish_rights(sys: &System, region: &interconnect::shm::Region, channel: &Channel) {
    if sys.monitor.partition.is_none() {
        let ends = channel.ends.map(|r| r as u16);
        interconnect::layout::publish(region, sys.rights.channel_rights(ends));
    }
}

/// A flag that SIGINT, SIGTERM and SIGHUP raise: the launcher and the benchmarks poll
/// it to stop and clean up instead of dying with VMs and files left behind.
pub fn stop_on_signals() -> std::io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}

/// Creates the shared-memory file `path` of `len` bytes (recorded in `run` for the
/// clean-up), then runs `setup` on it; any failure names the file.
fn shm_file<T>(
    run: &mut Run,
    path: PathBuf,
    len: u64,
    setup: impl FnOnce(&File) -> std::io::Result<T>,
) -> Result<(File, T), LaunchError> {
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|source| LaunchError::File {
            path: path.clone(),
            source,
        })?;
    run.shm.push(path.clone());
    let done = file.set_len(len).and_then(|()| setup(&file));
    done.map(|t| (file, t))
        .map_err(|source| LaunchError::File { path, source })
}

/// Removes `/dev/shm/vmpi-PID-*` files and `$TMPDIR/vmpi-PID` folders of vmpi runs
/// whose process is gone (killed before it could clean up). Returns what it removed.
pub fn sweep_stale() -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let alive = |pid: i32| {
        // SAFETY: kill with signal 0 only checks for the process.
        unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() != libc::ESRCH }
    };
    for dir in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("vmpi-") else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
            let Some(pid) = pid.filter(|&p| p > 0) else {
                continue;
            };
            if !alive(pid) {
                let p = e.path();
                let ok = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                if ok.is_ok() {
                    removed.push(p);
                }
            }
        }
    }
    removed
}

/// Host nice value of the monitor partition's QEMU (see `spawn`).
pub const MONITOR_NICE: i32 = -10;

/// Path of the monitor's control region in run `pid`.
pub fn control_path(pid: u32) -> PathBuf {
    PathBuf::from(format!("/dev/shm/vmpi-{pid}-control"))
}

/// The word [`LauncherEvent::Exited`](monitor::control::LauncherEvent) carries: the
/// guest status (0..=255), `0x100 | code` for a hypervisor exit without guest status,
/// `0x200 | signal` for a signal (a monitor kill is `0x200 | 9`).
pub fn exit_word(o: Outcome) -> u32 {
    match o {
        Outcome::Status(v) => u32::from(v),
        Outcome::Stopped => 0x200 | libc::SIGTERM as u32,
        Outcome::NoStatus(c) => 0x100 | (c as u32 & 0xff),
        Outcome::Signal(s) => 0x200 | (s as u32 & 0xff),
        Outcome::Killed => 0x200 | libc::SIGKILL as u32,
    }
}

/// Path of channel `c`'s shared-memory file in run `pid`.
pub fn shm_path(pid: u32, c: usize) -> PathBuf {
    PathBuf::from(format!("/dev/shm/vmpi-{pid}-{c}"))
}

struct Vm {
    rank: usize,
    child: Option<Child>,
    qmp: PathBuf,
    started: Instant,
    channels: usize,
    connected: usize,
    up: bool,
    restarts: u32,
    outcome: Option<Outcome>,
    readers: Vec<JoinHandle<()>>,
}

/// Everything a run owns; dropping it kills every VM and removes every file.
struct Run {
    run_dir: PathBuf,
    shm: Vec<PathBuf>,
    server: Option<DoorbellServer>,
    vms: Vec<Vm>,
}

impl Drop for Run {
    fn drop(&mut self) {
        for vm in &mut self.vms {
            if let Some(mut c) = vm.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            for r in vm.readers.drain(..) {
                let _ = r.join();
            }
        }
        if let Some(mut s) = self.server.take() {
            s.stop();
        }
        for p in &self.shm {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

fn free_shm_bytes() -> Option<u64> {
    // SAFETY: statvfs is plain old data; all-zero is valid, and the call only
    // writes into it. The path is a NUL-terminated literal.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c"/dev/shm".as_ptr(), &mut s) == 0).then(|| s.f_bavail * s.f_frsize)
    }
}

/// Runs `sys` until every partition has ended, `stop` is set (signal handler) or
/// the timeout passes. Every VM, socket and `/dev/shm` file is gone on return.
pub fn up(sys: &System, opts: &UpOptions, stop: &Arc<AtomicBool>) -> Result<Report, LaunchError> {
    let pid = std::process::id();
    for p in sweep_stale() {
        say(&format!("removed {} left by a killed run", p.display()));
    }
    let need: u64 = sys.channels.iter().map(|c| c.file_bytes).sum();
    if let Some(free) = free_shm_bytes().filter(|&f| f < need) {
        return Err(LaunchError::NoSpace {
            need: human_bytes(need),
            free: human_bytes(free),
        });
    }
    std::fs::create_dir_all(&opts.log_dir).map_err(|source| LaunchError::File {
        path: opts.log_dir.clone(),
        source,
    })?;
    let run_dir = std::env::temp_dir().join(format!("vmpi-{pid}"));
    let mut run = Run {
        run_dir: run_dir.clone(),
        shm: Vec::new(),
        server: None,
        vms: Vec::new(),
    };
    std::fs::create_dir(&run_dir).map_err(|source| LaunchError::File {
        path: run_dir.clone(),
        source,
    })?;

    // Channels: one file each, then one doorbell socket per end (and one for the
    // monitor partition on every channel it is not an end of).
    let sock = |c: usize, e: usize| run_dir.join(format!("ch{c}-{e}.sock"));
    let watcher = sys.monitor.partition;
    let mut regions = Vec::new();
    let mut specs = Vec::new();
    for c in &sys.channels {
        let path = shm_path(pid, c.index);
        // Mapped for the monitor's kills and the launcher's own restarts.
        let (file, region) = shm_file(&mut run, path, c.file_bytes, |file| {
            init_channel(file, sys, c)?;
            let len = usize::try_from(c.file_bytes).unwrap_or(usize::MAX);
            interconnect::shm::host::map_file(file, len)
        })?;
        regions.push(region);
        let mut sockets = vec![sock(c.index, 0), sock(c.index, 1)];
        if watcher.is_some_and(|m| c.end_of(m).is_none()) {
            sockets.push(sock(c.index, 2));
        }
        specs.push(ChannelSpec { shm: file, sockets });
    }
    // The monitor's control region: the rights table, commands and exit reports.
    let mut control = None;
    if watcher.is_some() {
        let bytes = crate::control_region::BYTES;
        let (_, mapped) = shm_file(&mut run, control_path(pid), bytes, |file| {
            interconnect::shm::host::map_file(file, bytes as usize)
                .and_then(|r| ControlRegion::init(r, &sys.rights.encode()))
        })?;
        control = Some(mapped);
    }
    if watcher.is_some() {
        // This thread carries out the monitor's kills: it runs at the monitor's
        // priority (Linux nice values are per thread; partitions get 0 back).
        // SAFETY: setpriority on the calling thread has no memory-safety conditions.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, MONITOR_NICE) };
    }
    let mut reports: Vec<monitor::control::LauncherEvent> = Vec::new();
    let mut monitor_said_ready = false;
    let (tx, events) = mpsc::channel();
    if !specs.is_empty() {
        run.server = Some(DoorbellServer::start(specs, tx)?);
    }

    // All VMs at once: nothing waits for anything.
    let t0 = Instant::now();
    for p in &sys.partitions {
        let vm = Vm {
            rank: p.rank,
            child: None,
            qmp: run_dir.join(format!("qmp-{}.sock", p.name)),
            started: t0,
            channels: match monitor_slots(sys).filter(|_| watcher == Some(p.rank)) {
                Some(m) => m.watch.len(),
                None => sys.channels_of(p.rank).count(),
            },
            connected: 0,
            up: false,
            restarts: 0,
            outcome: None,
            readers: Vec::new(),
        };
        run.vms.push(vm);
        let last = run.vms.len() - 1;
        spawn(sys, opts, &run_dir, &mut run.vms[last], false)?;
    }
    let mut all_up = false;
    say(&format!(
        "started {} partition(s) under {}; logs in {}",
        sys.partitions.len(),
        opts.accel.name(),
        opts.log_dir.display()
    ));
    mark_up(sys, &mut run.vms, t0, &mut all_up);

    let mut interrupted = false;
    let mut timed_out = false;
    loop {
        if stop.load(Ordering::SeqCst) {
            interrupted = true;
            say("interrupted: stopping every partition");
            break;
        }
        if opts.timeout.is_some_and(|t| t0.elapsed() >= t) {
            timed_out = true;
            say("timeout: stopping every partition");
            break;
        }
        // Wait a little for doorbell news, then take all there is.
        let tick = if control.is_some() { 1 } else { 10 };
        let first = events.recv_timeout(Duration::from_millis(tick)).ok();
        for ev in first.into_iter().chain(events.try_iter()) {
            match ev {
                Event::Connected { channel, peer } => {
                    let ends = sys.channels[channel].ends;
                    if let Some(rank) = ends.get(peer).copied().or(watcher) {
                        run.vms[rank].connected += 1;
                    }
                }
                Event::Disconnected { channel, peer } => {
                    let ends = sys.channels[channel].ends;
                    if let Some(rank) = ends.get(peer).copied().or(watcher) {
                        run.vms[rank].connected = run.vms[rank].connected.saturating_sub(1);
                    }
                }
                Event::Refused { channel, peer } => {
                    say(&format!(
                        "refused a second client on channel {channel} end {peer}"
                    ));
                }
            }
        }
        mark_up(sys, &mut run.vms, t0, &mut all_up);
        if let Some(ctl) = control.as_mut() {
            if !monitor_said_ready && let Some(t) = ctl.monitor_ready() {
                monitor_said_ready = true;
                say(&format!("monitor: metering since its clock {t} ns"));
            }
            for got in ctl.poll() {
                match got {
                    Ok(r) => {
                        carry_out(sys, opts, &run_dir, &mut run.vms, &regions, r, &mut reports)?
                    }
                    Err(Garbage::Head(h)) => say(&format!(
                        "monitor: control queue head {h} is impossible; ignored"
                    )),
                    Err(Garbage::Record(e)) => {
                        say(&format!("monitor: refused a control record ({e})"))
                    }
                }
            }
        }
        for i in 0..run.vms.len() {
            let Some(child) = run.vms[i].child.as_mut() else {
                continue;
            };
            let Ok(Some(status)) = child.try_wait() else {
                continue;
            };
            let p = &sys.partitions[run.vms[i].rank];
            let others_run = run
                .vms
                .iter()
                .enumerate()
                .any(|(j, v)| j != i && v.child.is_some());
            let vm = &mut run.vms[i];
            vm.child = None;
            for r in vm.readers.drain(..) {
                let _ = r.join();
            }
            let outcome = Outcome::from_exit(status, p.hypervisor);
            vm.outcome = Some(outcome);
            say(&format!(
                "{} ended: {outcome} after {} ms",
                p.name,
                vm.started.elapsed().as_millis()
            ));
            if watcher == Some(vm.rank) && others_run {
                say("the monitor partition ended first: no more metering or verdicts in this run");
            }
            if watcher.is_some() && watcher != Some(vm.rank) {
                reports.push(monitor::control::LauncherEvent::Exited {
                    id: monitor::PartitionId::new(vm.rank as u16, vm.restarts as u16),
                    status: exit_word(outcome),
                });
            }
            if let FaultPolicy::Restart { max } = p.on_fault
                && watcher.is_none()
                && outcome.is_fault()
                && vm.restarts < max
            {
                vm.restarts += 1;
                say(&format!(
                    "{}: on_fault = restart ({}/{max})",
                    p.name, vm.restarts
                ));
                let rank = vm.rank;
                reopen_for(sys, &run.vms, &regions, rank);
                spawn(sys, opts, &run_dir, &mut run.vms[i], true)?;
            }
        }
        if let Some(ctl) = control.as_mut() {
            let sent = reports.iter().take_while(|ev| ctl.report(**ev)).count();
            reports.drain(..sent);
        }
        if run.vms.iter().all(|v| v.child.is_none()) {
            break;
        }
    }
    stop_all(&mut run.vms);
    let rows = run
        .vms
        .iter()
        .map(|vm| {
            let name = sys.partitions[vm.rank].name.clone();
            Row {
                log: opts.log_dir.join(format!("{name}.log")),
                name,
                outcome: vm.outcome.unwrap_or(Outcome::Stopped),
                restarts: vm.restarts,
            }
        })
        .collect();
    drop(run);
    Ok(Report {
        rows,
        interrupted,
        timed_out,
    })
}

/// Reopens the channels of a partition the launcher restarts on its own (no monitor
/// partition) for its next incarnation: its side gets its restart count as generation,
/// so a peer still attached to the previous incarnation gets `PeerDead` until it
/// re-attaches (`Endpoint::reattach`).
fn reopen_for(sys: &System, vms: &[Vm], regions: &[interconnect::shm::Region], rank: usize) {
    let generation = |r: usize| vms.iter().find(|v| v.rank == r).map_or(0, |v| v.restarts);
    for c in sys.channels_of(rank) {
        let Some(region) = regions.get(c.index) else {
            continue;
        };
        let ranks = c.ends.map(|r| r as interconnect::Rank);
        let gens = c.ends.map(generation);
        match interconnect::layout::reopen(region, c.geometry(), ranks, gens) {
            Ok(()) => publish_rights(sys, region, c),
            Err(e) => say(&format!("reopen: channel {}: {e}", c.index)),
        }
    }
}

/// Carries out one command of the monitor partition. A kill is SIGKILL (the guest is
/// hostile: no QMP round trip), the reaping of the VM, then its channels' alive words
/// set to dead; the exit is reported back like any other.
fn carry_out(
    sys: &System,
    opts: &UpOptions,
    run_dir: &Path,
    vms: &mut [Vm],
    regions: &[interconnect::shm::Region],
    r: Received,
    reports: &mut Vec<monitor::control::LauncherEvent>,
) -> Result<(), LaunchError> {
    use monitor::control::Command as Cmd;
    let seen = Instant::now();
    let (Cmd::Kill(id) | Cmd::Restart(id)) = r.command;
    let rank = usize::from(id.index);
    let Some(vm) = vms
        .get_mut(rank)
        .filter(|_| Some(rank) != sys.monitor.partition)
    else {
        say(&format!(
            "monitor: {:?} names no partition it may command; ignored",
            r.command
        ));
        return Ok(());
    };
    let name = &sys.partitions[rank].name;
    match r.command {
        Cmd::Kill(_) => {
            if u32::from(id.generation) != vm.restarts {
                say(&format!(
                    "monitor: kill {name} generation {} is stale; ignored",
                    id.generation
                ));
                return Ok(());
            }
            let Some(mut child) = vm.child.take() else {
                return Ok(()); // already gone; its exit was reported
            };
            let _ = child.kill();
            let _ = child.wait();
            let gone = seen.elapsed();
            for c in sys.channels_of(rank) {
                if let (Some(side), Some(region)) = (c.end_of(rank), regions.get(c.index)) {
                    interconnect::layout::mark_dead(region, side);
                }
            }
            for h in vm.readers.drain(..) {
                let _ = h.join();
            }
            vm.outcome = Some(Outcome::Killed);
            say(&format!(
                "kill: {name} (generation {}) on the monitor's command (monitor clock {} ns): \
                 VM gone {} us after the launcher read it; channels marked dead",
                id.generation,
                r.monitor_ns,
                gone.as_micros()
            ));
            reports.push(monitor::control::LauncherEvent::Exited {
                id,
                status: exit_word(Outcome::Killed),
            });
        }
        Cmd::Restart(_) => {
            if vm.child.is_some() || u32::from(id.generation) != vm.restarts + 1 {
                say(&format!(
                    "monitor: restart {name} generation {} refused (running or not next)",
                    id.generation
                ));
                return Ok(());
            }
            vm.restarts += 1;
            say(&format!(
                "restart: {name} as generation {} on the monitor's command",
                id.generation
            ));
            spawn(sys, opts, run_dir, vm, true)?;
        }
    }
    Ok(())
}

fn mark_up(sys: &System, vms: &mut [Vm], t0: Instant, said: &mut bool) {
    for vm in vms.iter_mut() {
        if !vm.up && vm.child.is_some() && vm.connected >= vm.channels {
            vm.up = true;
            let p = &sys.partitions[vm.rank];
            say(&format!(
                "up: {} (rank {}, {} channel(s)) at {} ms",
                p.name,
                vm.rank,
                vm.channels,
                vm.started.elapsed().as_millis()
            ));
        }
    }
    if !*said && vms.iter().all(|v| v.up) {
        *said = true;
        say(&format!(
            "all {} partition(s) up in {} ms",
            vms.len(),
            t0.elapsed().as_millis()
        ));
    }
}

fn spawn(
    sys: &System,
    opts: &UpOptions,
    run_dir: &Path,
    vm: &mut Vm,
    restart: bool,
) -> Result<(), LaunchError> {
    let p = &sys.partitions[vm.rank];
    let args = guest_args(sys, vm.rank, opts.tsc_khz);
    let (program, mut argv) = match p.hypervisor {
        Hypervisor::Qemu => {
            let paths = VmPaths {
                image: opts.images[vm.rank].clone(),
                qmp: vm.qmp.clone(),
                doorbells: sys
                    .channels_of(vm.rank)
                    .map(|c| {
                        run_dir.join(format!(
                            "ch{}-{}.sock",
                            c.index,
                            c.end_of(vm.rank).unwrap_or(0)
                        ))
                    })
                    .collect(),
            };
            (
                opts.qemu.clone(),
                crate::qemu::qemu_args(sys, vm.rank, opts.accel, &paths, &args.join(" ")),
            )
        }
        Hypervisor::Uhyve => {
            let uhyve = opts
                .uhyve
                .clone()
                .ok_or_else(|| HostError::NoUhyve(p.name.clone()))?;
            (
                uhyve,
                crate::qemu::uhyve_args(sys, vm.rank, &opts.images[vm.rank], &args),
            )
        }
    };
    if let Some(m) = monitor_slots(sys).filter(|_| sys.monitor.partition == Some(vm.rank)) {
        let pid = std::process::id();
        argv.extend(crate::qemu::monitor_devices(
            sys,
            &m,
            run_dir,
            &control_path(pid),
        ));
    }
    let log_path = opts.log_dir.join(format!("{}.log", p.name));
    let mut log = File::options()
        .create(true)
        .append(restart)
        .write(true)
        .truncate(!restart)
        .open(&log_path)
        .map_err(|source| LaunchError::File {
            path: log_path.clone(),
            source,
        })?;
    let _ = writeln!(log, "# {} {}", program.display(), shell_words(&argv));
    let mut cmd = Command::new(&program);
    cmd.args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // The monitor partition runs at a higher host priority (nice MONITOR_NICE, every
    // QEMU thread inherits it): partitions spinning on every host core must not
    // starve the one that meters them. Without privilege the call fails and the
    // monitor runs at the default priority.
    let nice = match sys.monitor.partition {
        Some(m) if m == vm.rank => MONITOR_NICE,
        Some(_) => 0, // back from the launcher's own MONITOR_NICE
        None => i32::MIN,
    };
    // SAFETY: the closure runs between fork and exec and only calls prctl and
    // setpriority, which are async-signal-safe and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if nice != i32::MIN {
                libc::setpriority(libc::PRIO_PROCESS, 0, nice);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| LaunchError::Spawn {
        name: p.name.clone(),
        program: program.display().to_string(),
        source,
    })?;
    let log = Arc::new(std::sync::Mutex::new(log));
    let echo = opts.echo;
    if let Some(out) = child.stdout.take() {
        vm.readers.push(prefix_lines(
            out,
            format!("[{}] ", p.name),
            log.clone(),
            echo,
        ));
    }
    if let Some(err) = child.stderr.take() {
        vm.readers
            .push(prefix_lines(err, format!("[{} qemu] ", p.name), log, true));
    }
    vm.child = Some(child);
    vm.started = Instant::now();
    vm.connected = 0;
    vm.up = false;
    Ok(())
}

fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Copies `src` line by line to the log and (if `echo`) to stdout with `prefix`.
fn prefix_lines(
    src: impl Read + Send + 'static,
    prefix: String,
    log: Arc<std::sync::Mutex<File>>,
    echo: bool,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(src);
        let mut buf = Vec::new();
        while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']);
            if let Ok(mut f) = log.lock() {
                let _ = writeln!(f, "{prefix}{line}");
            }
            if echo {
                let _ = writeln!(std::io::stdout().lock(), "{prefix}{line}");
            }
            buf.clear();
        }
    })
}

/// Asks a QEMU to quit through QMP. Never blocks for more than about a second.
pub fn qmp_quit(sock: &Path) -> std::io::Result<()> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.set_write_timeout(Some(Duration::from_millis(500)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?; // greeting
    s.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
    line.clear();
    r.read_line(&mut line)?;
    s.write_all(b"{\"execute\":\"quit\"}\n")?;
    Ok(())
}

/// Stops every running VM: QMP `quit`, then `SIGKILL` for any still running after
/// a second.
fn stop_all(vms: &mut [Vm]) {
    for vm in vms.iter_mut().filter(|v| v.child.is_some()) {
        if qmp_quit(&vm.qmp).is_err()
            && let Some(c) = vm.child.as_mut()
        {
            let _ = c.kill();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    for vm in vms.iter_mut() {
        let Some(mut c) = vm.child.take() else {
            continue;
        };
        while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = c.kill();
        let _ = c.wait();
        for r in vm.readers.drain(..) {
            let _ = r.join();
        }
        vm.outcome = Some(Outcome::Stopped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn outcomes_from_exit_statuses() {
        let q = |c| Outcome::from_exit(exited(c), Hypervisor::Qemu);
        assert_eq!(q(1), Outcome::Status(0));
        assert_eq!(q(7), Outcome::Status(3));
        assert_eq!(q(0), Outcome::NoStatus(0));
        assert_eq!(q(2), Outcome::NoStatus(2));
        assert_eq!(
            Outcome::from_exit(exited(5), Hypervisor::Uhyve),
            Outcome::Status(5)
        );
        assert_eq!(
            Outcome::from_exit(ExitStatus::from_raw(9), Hypervisor::Qemu),
            Outcome::Signal(9)
        );
        assert!(Outcome::Status(101).is_fault() && Outcome::NoStatus(0).is_fault());
        assert!(!Outcome::Status(99).is_fault() && !Outcome::Stopped.is_fault());
    }

    #[test]
    fn worst_outcome_decides_the_exit_code() {
        let row = |o| Row {
            name: String::new(),
            outcome: o,
            restarts: 0,
            log: PathBuf::new(),
        };
        let report = |rows: Vec<Outcome>, interrupted| Report {
            rows: rows.into_iter().map(row).collect(),
            interrupted,
            timed_out: false,
        };
        assert_eq!(
            report(vec![Outcome::Status(0), Outcome::Status(0)], false).exit_code(),
            0
        );
        assert_eq!(
            report(vec![Outcome::Status(3), Outcome::Status(0)], false).exit_code(),
            3
        );
        assert_eq!(
            report(vec![Outcome::Status(3), Outcome::Status(101)], false).exit_code(),
            101
        );
        assert_eq!(
            report(vec![Outcome::Status(101), Outcome::Signal(9)], false).exit_code(),
            125
        );
        assert_eq!(
            report(vec![Outcome::Stopped, Outcome::Status(0)], true).exit_code(),
            130
        );
        assert_eq!(report(vec![Outcome::Stopped], false).exit_code(), 124);
        assert_eq!(
            report(vec![Outcome::Stopped, Outcome::Status(2)], true).exit_code(),
            2
        );
    }

    #[test]
    fn monitor_commands_for_stale_or_forbidden_ids_are_ignored() {
        use monitor::PartitionId;
        use monitor::control::{Command as Cmd, LauncherEvent};
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/five.toml");
        let sys = crate::manifest::load(&path).unwrap();
        assert_eq!(sys.monitor.partition, Some(4));
        let opts = UpOptions {
            qemu: "/nonexistent/qemu".into(),
            uhyve: None,
            accel: Accel::Tcg,
            images: vec![PathBuf::new(); 5],
            log_dir: std::env::temp_dir(),
            timeout: None,
            tsc_khz: 1,
            echo: false,
        };
        let mut vms: Vec<Vm> = (0..5)
            .map(|rank| Vm {
                rank,
                child: None,
                qmp: PathBuf::new(),
                started: Instant::now(),
                channels: 0,
                connected: 0,
                up: false,
                restarts: 0,
                outcome: None,
                readers: Vec::new(),
            })
            .collect();
        // Rank 0 runs as generation 1 (restarted once).
        vms[0].child = Some(Command::new("sleep").arg("30").spawn().unwrap());
        vms[0].restarts = 1;
        vms[4].child = Some(Command::new("sleep").arg("30").spawn().unwrap());
        let mut reports = Vec::new();
        let mut send = |vms: &mut Vec<Vm>, command| {
            let r = Received {
                command,
                monitor_ns: 0,
            };
            carry_out(
                &sys,
                &opts,
                Path::new("/nonexistent"),
                vms,
                &[],
                r,
                &mut reports,
            )
            .unwrap();
        };
        // A kill naming the old incarnation does not touch the new one.
        send(&mut vms, Cmd::Kill(PartitionId::new(0, 0)));
        assert!(vms[0].child.as_mut().unwrap().try_wait().unwrap().is_none());
        // Nor does a restart while it runs, nor a kill of the monitor itself.
        send(&mut vms, Cmd::Restart(PartitionId::new(0, 2)));
        send(&mut vms, Cmd::Kill(PartitionId::new(4, 0)));
        assert!(vms[4].child.as_mut().unwrap().try_wait().unwrap().is_none());
        // A kill naming the current incarnation kills it and is reported back.
        send(&mut vms, Cmd::Kill(PartitionId::new(0, 1)));
        assert!(vms[0].child.is_none());
        assert_eq!(vms[0].outcome, Some(Outcome::Killed));
        // A restart that skips a generation is refused (no spawn is attempted).
        send(&mut vms, Cmd::Restart(PartitionId::new(0, 3)));
        assert!(vms[0].child.is_none() && vms[0].restarts == 1);
        let mut c = vms[4].child.take().unwrap();
        let _ = c.kill();
        let _ = c.wait();
        assert_eq!(
            reports,
            vec![LauncherEvent::Exited {
                id: PartitionId::new(0, 1),
                status: 0x209
            }]
        );
    }

    #[test]
    fn stale_files_of_dead_runs_are_swept() {
        // A pid that existed and is gone: our own finished child.
        let mut c = Command::new("true").spawn().unwrap();
        let dead = c.id();
        c.wait().unwrap();
        let stale = shm_path(dead, 0);
        let live = shm_path(std::process::id(), 999);
        std::fs::write(&stale, b"x").unwrap();
        std::fs::write(&live, b"x").unwrap();
        let removed = sweep_stale();
        let live_kept = live.exists();
        let _ = std::fs::remove_file(&live);
        let _ = std::fs::remove_file(&stale);
        assert!(removed.contains(&stale), "{removed:?}");
        assert!(live_kept, "a live run's file is kept");
    }
}
