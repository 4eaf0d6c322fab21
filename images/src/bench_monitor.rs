//! `vmpi bench --monitor`: what the monitor partition costs the traffic it meters,
//! and what a flooder costs a well-behaved pair sharing its receiver.
//!
//! The system is `images/bench/monitor.toml`: the bench's ping-pong pair
//! (`fabric-bench-vm`, polling, pinned to cores 0 and 1, driven through the control
//! page exactly as `vmpi bench` does), a flooder (`scenario`) with a right to the
//! pair's receiver `pong`, and the monitor partition (`monitor-vm`, `period_ms = 1`,
//! `on_flood = "kill"`). Flooder and monitor are not pinned. It runs twice, booted
//! afresh: with the flooder's right at `nonblocking = true` (it floods with
//! non-blocking sends) and at `nonblocking = false` (blocking sends; the only way
//! left to it). The two alternate, `--floods` (3) boots each. Each boot:
//!
//! 1. The flooder's VM is stopped (SIGSTOP) while it still sleeps in its script
//!    (4 s from its boot).
//! 2. *Overhead*: `rounds` rounds of two 8 B latency measurements each, the monitor
//!    running (metering every millisecond) and stopped (its QEMU under SIGSTOP), the
//!    order alternating per round. Verdict: the median over rounds of the per-round
//!    p50 ratio.
//! 3. *Flood*: one long 8 B latency measurement with the flooder still stopped
//!    (baseline), then, once the flooder's sleep is over (at least
//!    [`FLOOD_AFTER`] after the launch), one during which the bench lets the flooder
//!    go (SIGCONT; its wake-up is pending, so it floods at once) about 20 ms in; the monitor convicts
//!    it and has the launcher kill it. The bench watches the flooder's QEMU and
//!    notes (host TSC) when it let it go and when its process was gone. Each sample's
//!    end is placed on the host TSC by counting back from the round's end (seen
//!    within 100 µs), so the samples split into before the flood, flood until the
//!    VM is gone, and after. A lost message would stall the ping-pong and fail the
//!    round, so every round that completes delivered all its messages.
//!
//! No figure is asserted on: the bench reports, BENCHMARKS.md judges.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use vmpi::launch::UpOptions;
use vmpi::manifest;
use vmpi::tsc::rdtsc;
use vmpi::{images, qemu};

use crate::bench::{
    Ask, BenchArgs, Got, MAX_ITERS, POLL_SPIN_US, Setup, Vms, progress, qemu_children,
};

/// The system (pair, flooder, monitor).
const MANIFEST: &str = include_str!("../bench/monitor.toml");
/// The flooder's script when non-blocking sends are forbidden to it.
const BLOCKING_FLOOD: &str = "send:to=1,tag=2,size=8,count=1000000000,ms=5000";
const NONBLOCKING_FLOOD: &str = "flood:to=1,tag=2,size=8,ms=5000";
/// Ranks in the manifest.
const FLOODER: u32 = 2;
const MONITOR: u32 = 3;
/// When the flooder's sleep (`sleep:ms=4000` in the manifest, from its boot) is
/// surely over, counted from the launch.
const FLOOD_AFTER: Duration = Duration::from_millis(4500);

fn signal(pid: u32, sig: i32) -> Result<()> {
    // SAFETY: kill(2) on a QEMU process this process started (a child found by
    // `qemu_children`, which only lists our own children); no memory is involved.
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    if r != 0 {
        bail!(
            "signal {sig} to pid {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Whether `pid` is gone (reaped, or a zombie).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .is_some_and(|(_, after)| after.starts_with('Z')),
        Err(_) => true,
    }
}

fn child_of_rank(rank: u32) -> Result<u32> {
    qemu_children()
        .into_iter()
        .find(|(_, r)| *r == Some(rank))
        .map(|(p, _)| p)
        .with_context(|| format!("no QEMU of rank {rank} among this process's children"))
}

/// One-way latency in ns of a round trip of `ticks`.
fn ns(ticks: u64, khz: u64) -> f64 {
    ticks as f64 * 1e6 / khz as f64 / 2.0
}

#[derive(Default, Clone)]
struct Stats {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

fn stats(samples: &[u32], khz: u64) -> Stats {
    if samples.is_empty() {
        return Stats::default();
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    let at = |q: f64| {
        ns(
            u64::from(v[((v.len() - 1) as f64 * q).round() as usize]),
            khz,
        )
    };
    Stats {
        n: v.len(),
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
    }
}

fn row(out: &mut String, what: &str, s: &Stats) {
    let _ = writeln!(
        out,
        "  {what:<44} {:>9} {:>9.0} {:>9.0} {:>11.0}",
        s.n, s.p50, s.p99, s.max
    );
}

fn samples(g: Got) -> Result<Vec<u32>> {
    match g {
        Got::Samples(s) => Ok(s),
        Got::Ticks(_) => bail!("a latency round returned a bandwidth result"),
    }
}

fn manifest_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/monitor.toml")
}

/// The system, the pair polling; the flooder's right as written
/// (`nonblocking = true`, flooding with non-blocking sends) or not allowed
/// non-blocking sends (flooding with blocking ones).
fn system(nonblocking: bool) -> Result<manifest::System> {
    let mut text = MANIFEST.replace(
        "memory = \"64M\"\n",
        &format!("memory = \"64M\"\nargs = [\"spin_us={POLL_SPIN_US}\"]\n"),
    );
    if !nonblocking {
        text = text
            .replace("nonblocking = true", "nonblocking = false")
            .replace(NONBLOCKING_FLOOD, BLOCKING_FLOOD);
    }
    Ok(manifest::parse(&manifest_path(), &text)?)
}

/// `vmpi bench --monitor`.
pub fn run(a: &BenchArgs) -> Result<u8> {
    let rounds = a.rounds.unwrap_or(10).max(1);
    let iters = a.iters.unwrap_or(20_000).clamp(1, MAX_ITERS);
    let Setup {
        interrupted,
        out,
        khz,
        accel,
    } = Setup::new(&a.accel)?;
    let manifest_path = manifest_path();
    let parts = images::partitions_dir(&manifest_path);
    let systems = [(true, system(true)?), (false, system(false)?)];
    if !a.no_build {
        images::build(&systems[0].1, &parts)?;
    }
    let load0 = loadavg();
    let t_start = std::time::Instant::now();
    let mut report = String::new();
    let _ = writeln!(
        report,
        "vmpi bench --monitor: {} on {} cpu(s), TSC {khz} kHz, 8 B one-way latency in ns (half the round trip)",
        accel.name(),
        crate::bench::cpus()
    );
    let _ = writeln!(
        report,
        "4 VMs on the host's cores: ping (cpu 0) and pong (cpu 1) polling, monitor (period 1 ms) and flooder not pinned"
    );
    let floods = a.floods.unwrap_or(3).max(1);
    // p99 ratios per boot: (nonblocking, until the kill / baseline, until the kill /
    // the same round before the flood).
    let mut summary: Vec<(bool, f64, f64)> = Vec::new();
    for (nonblocking, sys) in (0..floods).flat_map(|_| systems.iter()) {
        let opts = UpOptions {
            qemu: qemu::find_or_install_qemu()?,
            uhyve: None,
            accel,
            images: images::require_images(sys, &parts)?,
            log_dir: PathBuf::from("target/vmpi-logs")
                .join(format!("{}-nb-{}", sys.name, nonblocking)),
            timeout: None,
            tsc_khz: khz,
            echo: false,
        };
        progress(&format!(
            "flooder nonblocking = {nonblocking}: booting (logs in {})",
            opts.log_dir.display()
        ));
        let launched = std::time::Instant::now();
        let mut vms = Vms::start(sys, &opts, &interrupted)?;
        vms.poll = Duration::from_micros(100);
        let flooder = child_of_rank(FLOODER)?;
        let monitor = child_of_rank(MONITOR)?;
        signal(flooder, libc::SIGSTOP)?;
        if gone(flooder) {
            bail!("the flooder ended before the bench could stop it (boot took over 4 s?)");
        }
        let _ = writeln!(
            report,
            "\nflooder nonblocking = {nonblocking} (boot {} of {})",
            summary.len() + 1,
            2 * floods
        );

        // Overhead: monitor metering vs stopped, alternating.
        let ask = Ask {
            bw: false,
            size: 8,
            count: iters,
            extra: (iters / 10).max(10),
        };
        let (mut on, mut off) = (Vec::new(), Vec::new());
        let mut ratios = Vec::new();
        for round in 0..rounds {
            let mut p50 = [0.0; 2];
            for k in 0..2 {
                let metering = (k + round) % 2 == 0;
                if !metering {
                    signal(monitor, libc::SIGSTOP)?;
                }
                let r = vms.measure(ask, &interrupted);
                if !metering {
                    signal(monitor, libc::SIGCONT)?;
                }
                let s = samples(r.context("overhead round")?)?;
                p50[usize::from(!metering)] = stats(&s, khz).p50;
                if metering { &mut on } else { &mut off }.extend_from_slice(&s);
            }
            ratios.push(p50[0] / p50[1]);
            progress(&format!(
                "round {}/{rounds}: p50 metering {:.0} ns, monitor stopped {:.0} ns",
                round + 1,
                p50[0],
                p50[1]
            ));
            vms.check(&interrupted)?;
        }
        ratios.sort_by(f64::total_cmp);
        let (son, soff) = (stats(&on, khz), stats(&off, khz));
        let _ = writeln!(
            report,
            "  overhead, {rounds} rounds x {iters} round trips each way, interleaved:\n  {:<44} {:>9} {:>9} {:>9} {:>11}",
            "", "samples", "p50", "p99", "max"
        );
        row(&mut report, "monitor metering (every 1 ms)", &son);
        row(&mut report, "monitor stopped (SIGSTOP)", &soff);
        let _ = writeln!(
            report,
            "  ratio metering/stopped: p50 pooled {:.3}x, median of per-round p50 ratios {:.3}x (min {:.3}, max {:.3}); p99 pooled {:.2}x",
            son.p50 / soff.p50,
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1],
            son.p99 / soff.p99
        );

        // Flood: baseline round, then the round the flooder floods in.
        let long = Ask {
            bw: false,
            size: 8,
            count: MAX_ITERS,
            extra: 1000,
        };
        let base = samples(vms.measure(long, &interrupted).context("baseline round")?)?;
        if let Some(rest) = FLOOD_AFTER.checked_sub(launched.elapsed()) {
            std::thread::sleep(rest);
        }
        if gone(flooder) {
            bail!("the flooder is gone before it was let go");
        }
        let gone_at = Arc::new(AtomicU64::new(0));
        let watch_stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (g, st) = (gone_at.clone(), watch_stop.clone());
            std::thread::spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    if gone(flooder) {
                        g.store(rdtsc(), Ordering::SeqCst);
                        return;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        };
        let released = Arc::new(AtomicU64::new(0));
        let releaser = {
            let r = released.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                r.store(rdtsc(), Ordering::SeqCst);
                signal(flooder, libc::SIGCONT)
            })
        };
        let flood = vms.measure(long, &interrupted);
        let done = vms.done_tsc;
        let rel = releaser
            .join()
            .map_err(|_| anyhow::anyhow!("releaser panicked"))?;
        let flood = samples(flood.context("flood round")?)?;
        rel?;
        // Wait (up to 3 s) for the verdict if it has not come yet.
        let t0 = std::time::Instant::now();
        while gone_at.load(Ordering::SeqCst) == 0 && t0.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(5));
        }
        watch_stop.store(true, Ordering::SeqCst);
        let _ = watcher.join();
        let after = samples(vms.measure(long, &interrupted).context("round after")?)?;
        let (rel, gone_tsc) = (
            released.load(Ordering::SeqCst),
            gone_at.load(Ordering::SeqCst),
        );
        // Each sample's end on the host TSC, counted back from the round's end.
        let mut end = done;
        let mut ends = vec![0u64; flood.len()];
        for (i, s) in flood.iter().enumerate().rev() {
            ends[i] = end;
            end = end.saturating_sub(u64::from(*s));
        }
        let round_start = end;
        let (mut before, mut during, mut later) = (Vec::new(), Vec::new(), Vec::new());
        for (s, e) in flood.iter().zip(&ends) {
            if *e < rel {
                before.push(*s);
            } else if gone_tsc == 0 || *e <= gone_tsc {
                during.push(*s);
            } else {
                later.push(*s);
            }
        }
        let ms = |t: u64| (t as f64 - round_start as f64) / khz as f64;
        let _ = writeln!(
            report,
            "  flood round ({} round trips; flooder let go at {:.1} ms into it, its QEMU exited (zombie) at {}, the round ended at {:.1} ms):",
            flood.len(),
            ms(rel),
            if gone_tsc == 0 {
                "never (not convicted within 3 s of the round's end)".to_string()
            } else {
                format!("{:.1} ms", ms(gone_tsc))
            },
            ms(done)
        );
        let _ = writeln!(
            report,
            "  {:<44} {:>9} {:>9} {:>9} {:>11}",
            "", "samples", "p50", "p99", "max"
        );
        row(
            &mut report,
            "baseline round (flooder stopped)",
            &stats(&base, khz),
        );
        row(
            &mut report,
            "flood round: before the flood",
            &stats(&before, khz),
        );
        row(
            &mut report,
            "flood round: flood, until its QEMU exited",
            &stats(&during, khz),
        );
        row(&mut report, "flood round: after", &stats(&later, khz));
        row(&mut report, "flood round: overall", &stats(&flood, khz));
        row(&mut report, "round after the kill", &stats(&after, khz));
        let (sb, sd, sf) = (stats(&base, khz), stats(&during, khz), stats(&flood, khz));
        let sbefore = stats(&before, khz);
        summary.push((*nonblocking, sd.p99 / sb.p99, sd.p99 / sbefore.p99));
        let _ = writeln!(
            report,
            "  p99 ratio to the baseline: until the kill {:.2}x, flood round overall {:.2}x; until the kill / before it in the same round {:.2}x",
            sd.p99 / sb.p99,
            sf.p99 / sb.p99,
            sd.p99 / sbefore.p99
        );
        let _ = writeln!(
            report,
            "  messages: every one of the {} timed round trips ({} messages each way, with warm-ups more) completed",
            2 * rounds * iters + 3 * MAX_ITERS,
            2 * rounds * iters + 3 * MAX_ITERS
        );
        vms.finish(&["flooder"])?;
        let log = std::fs::read_to_string(opts.log_dir.join("monitor.log")).unwrap_or_default();
        let verdicts: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("verdict:") || l.contains("kill:") || l.contains("revoke:"))
            .collect();
        if verdicts.is_empty() {
            let _ = writeln!(report, "  monitor: no verdict logged");
        }
        for l in verdicts {
            let _ = writeln!(report, "  monitor: {}", l.trim());
        }
        let flog = std::fs::read_to_string(opts.log_dir.join("flooder.log")).unwrap_or_default();
        for l in flog
            .lines()
            .filter(|l| l.contains("\"op\"") || l.contains("step"))
        {
            let _ = writeln!(report, "  flooder: {}", l.trim());
        }
    }
    let _ = writeln!(
        report,
        "\np99 from the flood until the flooder's QEMU exited, per boot (NaN/inf: no samples placed there):"
    );
    for nb in [true, false] {
        let line = |f: fn(&(bool, f64, f64)) -> f64| {
            summary
                .iter()
                .filter(|x| x.0 == nb)
                .map(|x| format!("{:.2}", f(x)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            report,
            "  nonblocking = {nb}: / baseline round: {}; / same round before the flood: {}",
            line(|x| x.1),
            line(|x| x.2)
        );
    }
    let _ = writeln!(
        report,
        "\n{:.0} s; load average at the start {load0}, at the end {}",
        t_start.elapsed().as_secs_f64(),
        loadavg()
    );
    out.write_final(&report)?;
    Ok(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_variants_put_the_pair_on_channel_0_and_differ_in_the_flooders_right() {
        for nb in [true, false] {
            let sys = system(nb).unwrap();
            let c = &sys.channels[0];
            assert_eq!(c.ends, [0, 1]);
            let flood = sys
                .channels
                .iter()
                .flat_map(|c| c.dirs.iter().flatten())
                .find(|e| e.from == FLOODER as usize)
                .unwrap();
            assert_eq!(flood.nonblocking, nb);
            assert_eq!(sys.monitor.partition, Some(MONITOR as usize));
            let script = if nb {
                NONBLOCKING_FLOOD
            } else {
                BLOCKING_FLOOD
            };
            assert!(
                sys.partitions[FLOODER as usize]
                    .args
                    .iter()
                    .any(|a| a.contains(script)),
                "{:?}",
                sys.partitions[FLOODER as usize].args
            );
        }
    }
}
