//! Boot benchmark: launch to the service's first instruction (its `main`, at
//! CPL 3, after the runtime's ring-0 set-up and its CPL-3 prologue) over 20
//! boots of the hello partition, with the breakdown QEMU start / firmware /
//! runtime set-up, and uhyve launch-to-exit. Needs KVM (the guest TSC is the
//! host TSC under KVM here, which the breakdown relies on).
//!
//! `cargo run --release -p vmpi-tests --bin boot-bench [-- BOOTS]`

use std::process::Command;
use std::time::Instant;
use vmpi::tsc::{rdtsc, tsc_khz};
use vmpi_tests::{Accel, Machine, Vm, accel, image, percentile, uhyve};

fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

struct Sample {
    total: f64,
    pre_entry: f64,
    runtime: f64,
    to_main: f64,
    exit: f64,
}

fn ms(ticks: u64, khz: u64) -> f64 {
    ticks as f64 / khz as f64
}

fn boot(machine: Machine, khz: u64, trace: bool) -> Option<(Sample, Option<f64>)> {
    let append = format!("tsc_khz={khz}");
    let mut vm = Vm::qemu(machine, &image("hello"), 64, &append);
    if trace {
        vm = vm.args(["-msg", "timestamp=on", "-trace", "kvm_vcpu_ioctl"]);
    }
    let wall0 = std::time::SystemTime::now();
    let spawn = rdtsc();
    let t0 = Instant::now();
    let out = vm.run();
    let exit = t0.elapsed().as_secs_f64() * 1e3;
    let line = out.stdout.lines().find(|l| l.starts_with("boot_tsc"))?;
    let (entry, user, first) = (
        field(line, "entry")?,
        field(line, "user")?,
        field(line, "first")?,
    );
    let s = Sample {
        total: ms(first.wrapping_sub(spawn), khz),
        pre_entry: ms(entry.wrapping_sub(spawn), khz),
        runtime: ms(user.wrapping_sub(entry), khz),
        to_main: ms(first.wrapping_sub(user), khz),
        exit,
    };
    // Firmware start: QEMU's first KVM_RUN (ioctl type 0xae80), wall clock.
    let fw = trace
        .then(|| {
            let l = out
                .stderr
                .lines()
                .find(|l| l.contains("kvm_vcpu_ioctl") && l.contains("0xae80"))?;
            let ts: f64 = l.split('@').nth(1)?.split(':').next()?.parse().ok()?;
            let w0 = wall0
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_secs_f64();
            let qemu_start = (ts - w0) * 1e3;
            Some(s.pre_entry - qemu_start)
        })
        .flatten();
    Some((s, fw))
}

fn stats(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    println!(
        "  {name:<34} median {:7.2} ms  p10 {:7.2}  p90 {:7.2}  min {:7.2}  max {:7.2}",
        percentile(&v, 50),
        percentile(&v, 10),
        percentile(&v, 90),
        v[0],
        v[v.len() - 1]
    );
}

fn main() {
    let boots: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    if accel() != Accel::Kvm {
        eprintln!("boot-bench: needs KVM (the breakdown uses the shared host/guest TSC)");
        std::process::exit(2);
    }
    let khz = tsc_khz();
    let img = image("hello");
    let size = std::fs::metadata(&img).map(|m| m.len()).unwrap_or(0);
    println!("boot-bench: {boots} boots each, hello image {size} bytes, host TSC {khz} kHz");
    let qemu_v = Command::new(vmpi_tests::qemu())
        .arg("--version")
        .output()
        .ok();
    if let Some(o) = qemu_v {
        println!(
            "  {}",
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
        );
    }
    for machine in [Machine::Microvm, Machine::MicrovmPcie, Machine::Q35Qboot] {
        let mut all = Vec::new();
        let mut fws = Vec::new();
        for i in 0..boots {
            // Untraced boots give the figures; a traced boot after each gives
            // the firmware share (tracing slows it slightly).
            match boot(machine, khz, false) {
                Some((s, _)) => all.push(s),
                None => eprintln!("boot {i}: no boot_tsc line"),
            }
            if let Some((_, Some(fw))) = boot(machine, khz, true) {
                fws.push(fw);
            }
        }
        if all.is_empty() {
            println!("{machine:?}: no successful boot");
            continue;
        }
        let med = |f: &dyn Fn(&Sample) -> f64| {
            let mut v: Vec<f64> = all.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            percentile(&v, 50)
        };
        let fw = if fws.is_empty() {
            f64::NAN
        } else {
            fws.sort_by(f64::total_cmp);
            percentile(&fws, 50)
        };
        println!("{machine:?} (KVM), {} boots:", all.len());
        stats(
            "launch -> service main at CPL 3",
            all.iter().map(|s| s.total).collect(),
        );
        stats("launch -> QEMU exit", all.iter().map(|s| s.exit).collect());
        println!("  breakdown (medians):");
        println!(
            "    QEMU start (spawn -> first KVM_RUN)   {:7.2} ms",
            med(&|s| s.pre_entry) - fw
        );
        println!("    firmware (first KVM_RUN -> PVH entry) {fw:7.2} ms");
        let rt0 = med(&|s| s.runtime);
        let rt3 = med(&|s| s.to_main);
        let rt = med(&|s| s.runtime + s.to_main);
        println!("    runtime, ring 0 (entry -> iretq)      {rt0:7.2} ms");
        println!("    runtime, CPL-3 prologue + SETUP call  {rt3:7.2} ms");
        println!("    runtime set-up (entry -> main)        {rt:7.2} ms");
    }
    match uhyve() {
        Some(u) => {
            let mut v = Vec::new();
            for _ in 0..boots {
                let t0 = Instant::now();
                let out = Vm::uhyve(&u, &img, 32, &["status=5"]).run();
                let e = t0.elapsed().as_secs_f64() * 1e3;
                if out.code == Some(5) {
                    v.push(e);
                }
            }
            println!("uhyve 0.10, {} boots:", v.len());
            if !v.is_empty() {
                stats("launch -> exit", v);
            }
        }
        None => println!("uhyve: SKIPPED (not installed)"),
    }
}
