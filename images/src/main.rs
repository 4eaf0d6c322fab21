//! The `vmpi` command: check, build, launch and draw a vmpi system.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use vmpi::launch::{UpOptions, up};
use vmpi::manifest::{self, Hypervisor, Machine};
use vmpi::qemu::{self, Accel, HostError};
use vmpi::{describe, graph, images, tsc};

mod bench;
mod bench_monitor;
mod bench_report;
#[path = "../../interconnect/bench/src/stats.rs"]
mod stats;

/// Compose, launch and draw vmpi systems: unikernel partitions under QEMU/KVM that
/// talk only through MPI-style shared-memory channels granted by a manifest.
#[derive(Parser)]
#[command(name = "vmpi", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate a manifest and print the resolved system: ranks, groups, channels,
    /// quotas and each partition's guest command line.
    Check {
        /// The manifest (e.g. images/demo.toml).
        manifest: PathBuf,
    },
    /// Build the partition images the manifest needs (cargo, in partitions/).
    Build {
        /// The manifest.
        manifest: PathBuf,
    },
    /// Launch the system: channel files, doorbells, one VM per partition; runs until
    /// every partition has ended, the timeout passes or Ctrl-C; then removes every
    /// VM, socket and /dev/shm file. Exits with the worst partition status.
    Up {
        /// The manifest.
        manifest: PathBuf,
        /// Accelerator: auto = KVM if /dev/kvm is usable (and VMPI_ACCEL is not
        /// `tcg`), else TCG.
        #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
        accel: AccelArg,
        /// Stop every partition after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// Folder for the serial logs (NAME.log each; kept after the run).
        /// Default: target/vmpi-logs/SYSTEM.
        #[arg(long)]
        log_dir: Option<PathBuf>,
        /// Do not copy partitions' serial output to the terminal (logs only).
        #[arg(long, short)]
        quiet: bool,
        /// Build the images first (as `vmpi build`).
        #[arg(long)]
        build: bool,
    },
    /// Benchmark the fabric (OSU-style ping-pong latency and streaming bandwidth,
    /// 8 B to 1 MiB) between two partitions, interleaved in one run with the same
    /// fabric between host processes, the raw cache-line baseline and MPICH; poll and
    /// spin-then-block. Prints a table (or --json records); --svg draws the latencies.
    Bench(bench::BenchArgs),
    /// One side of a host measurement of `vmpi bench` (internal).
    #[command(hide = true)]
    BenchWorker(bench::WorkerArgs),
    /// Draw the system as SVG: partitions, groups, channels and quotas.
    Graph {
        /// The manifest.
        manifest: PathBuf,
        /// Write the SVG here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("vmpi: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes to stdout; a closed stdout (a pipe whose reader quit, a terminal gone)
/// must not abort a run that still has VMs and files to clean up.
fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

macro_rules! outln {
    ($($arg:tt)*) => { out(&format!("{}\n", format_args!($($arg)*))) };
}

fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Cmd::Check { manifest } => {
            let sys = manifest::load(&manifest)?;
            let parts = images::partitions_dir(&manifest);
            out(&describe::describe(&sys, &parts, tsc::tsc_khz()));
            outln!("\nok: {} is valid", manifest.display());
            Ok(0)
        }
        Cmd::Build { manifest } => {
            let sys = manifest::load(&manifest)?;
            images::build(&sys, &images::partitions_dir(&manifest))?;
            Ok(0)
        }
        Cmd::Bench(a) => bench::run(a),
        Cmd::BenchWorker(w) => bench::worker(&w),
        Cmd::Graph { manifest, output } => {
            let sys = manifest::load(&manifest)?;
            let svg = graph::svg(&sys);
            match output {
                Some(path) => {
                    std::fs::write(&path, svg)
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!("vmpi: wrote {}", path.display());
                }
                None => out(&svg),
            }
            Ok(0)
        }
        Cmd::Up {
            manifest,
            accel,
            timeout,
            log_dir,
            quiet,
            build,
        } => {
            let sys = manifest::load(&manifest)?;
            let parts = images::partitions_dir(&manifest);
            if build {
                images::build(&sys, &parts)?;
            }
            let images = images::require_images(&sys, &parts)?;
            let qemu = qemu::find_or_install_qemu()?;
            if sys.machine == Machine::Q35 && !Path::new(qemu::QBOOT).is_file() {
                return Err(HostError::NoQboot.into());
            }
            let uhyve = sys
                .partitions
                .iter()
                .find(|p| p.hypervisor == Hypervisor::Uhyve);
            let uhyve = match uhyve {
                Some(p) => {
                    Some(qemu::find_uhyve().ok_or_else(|| HostError::NoUhyve(p.name.clone()))?)
                }
                None => None,
            };
            let accel = match accel {
                AccelArg::Kvm => Accel::Kvm,
                AccelArg::Tcg => Accel::Tcg,
                AccelArg::Auto if std::env::var("VMPI_ACCEL").is_ok_and(|v| v == "tcg") => {
                    outln!("[vmpi] VMPI_ACCEL=tcg: using TCG (software emulation)");
                    Accel::Tcg
                }
                AccelArg::Auto => {
                    let a = Accel::detect();
                    if a == Accel::Tcg {
                        outln!(
                            "[vmpi] no usable /dev/kvm: falling back to TCG (software emulation, slower)"
                        );
                    }
                    a
                }
            };
            let stop = vmpi::launch::stop_on_signals().context("installing signal handlers")?;
            let opts = UpOptions {
                qemu,
                uhyve,
                accel,
                images,
                log_dir: log_dir
                    .unwrap_or_else(|| PathBuf::from("target/vmpi-logs").join(&sys.name)),
                timeout: timeout.map(Duration::from_secs_f64),
                tsc_khz: tsc::tsc_khz(),
                echo: !quiet,
            };
            let report = up(&sys, &opts, &stop)?;
            outln!("[vmpi] summary of `{}`:", sys.name);
            for r in &report.rows {
                let restarts = if r.restarts > 0 {
                    format!(", {} restart(s)", r.restarts)
                } else {
                    String::new()
                };
                outln!(
                    "[vmpi]   {:<12} {}{restarts}  (log {})",
                    r.name,
                    r.outcome,
                    r.log.display()
                );
            }
            let code = report.exit_code();
            match report.worst() {
                Some(w) if code != 0 => {
                    outln!(
                        "[vmpi] worst: {} {} -> exit status {code}",
                        w.name,
                        w.outcome
                    );
                }
                _ => outln!("[vmpi] every partition succeeded -> exit status 0"),
            }
            Ok(code)
        }
    }
}
