//! Partition-vs-host ping-pong: one cache line bounced between two partitions'
//! services at CPL 3 (two QEMU/KVM VMs sharing an ivshmem region) and between
//! two host processes sharing a /dev/shm file, interleaved round by round in one
//! run, same loop, same layout, each side pinned to its own core.
//!
//! `cargo run --release -p vmpi-tests --bin pingpong-bench [-- ROUNDS ITERS]`

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use vmpi::tsc::{rdtsc, tsc_khz};
use vmpi_tests::{Machine, ShmFile, Vm, accel, image, percentile};

const PING: usize = 0;
const PONG: usize = 64;
const READY: usize = 128;
const SIZE: u64 = 2 << 20;

fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// One side of the host pair (a child process of this benchmark).
fn host_side(role: &str, path: &str, iters: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open shm");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: maps the whole file shared; it stays mapped until the process ends.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SIZE as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED, "mmap");
    // SAFETY: aligned words inside the mapping, only accessed atomically.
    let word = |off: usize| unsafe { AtomicU64::from_ptr(base.cast::<u8>().add(off).cast()) };
    match role {
        "pong" => {
            word(READY).store(1, Ordering::Release);
            for i in 1..=iters {
                while word(PING).load(Ordering::Acquire) != i {
                    std::hint::spin_loop();
                }
                word(PONG).store(i, Ordering::Release);
            }
        }
        _ => {
            while word(READY).load(Ordering::Acquire) != 1 {
                std::hint::spin_loop();
            }
            let mut rtt = Vec::with_capacity(iters as usize);
            for i in 1..=iters {
                let t0 = rdtsc();
                word(PING).store(i, Ordering::Release);
                while word(PONG).load(Ordering::Acquire) != i {
                    std::hint::spin_loop();
                }
                rtt.push(rdtsc() - t0);
            }
            rtt.sort_unstable();
            println!("p50={} p99={}", percentile(&rtt, 50), percentile(&rtt, 99));
        }
    }
}

fn host_round(iters: u64, n: usize) -> Option<u64> {
    let shm = ShmFile::new(&format!("pp-host-{n}"), SIZE);
    let me = std::env::current_exe().ok()?;
    let path = shm.path.to_str()?.to_string();
    let spawn = |cpu: &str, role: &str| {
        Command::new("taskset")
            .args(["-c", cpu])
            .arg(&me)
            .args(["--host-side", role, &path, &iters.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .ok()
    };
    let mut pong = spawn("1", "pong")?;
    let ping = spawn("0", "ping")?.wait_with_output().ok()?;
    let _ = pong.wait();
    field(&String::from_utf8_lossy(&ping.stdout), "p50")
}

fn vm_round(iters: u64, n: usize, khz: u64) -> Option<u64> {
    let shm = ShmFile::new(&format!("pp-vm-{n}"), SIZE);
    let args = |role: &str| format!("tsc_khz={khz} need_shm=1 role={role} iters={iters}");
    let vm = |role: &str| {
        Vm::qemu(Machine::MicrovmPcie, &image("pingpong"), 64, &args(role))
            .shm("s0", &shm)
            .timeout(Duration::from_secs(120))
    };
    // Pin each VM's process (its vCPU thread with it) to its own core.
    let pin = |r: &vmpi_tests::Running, cpu: &str| {
        if let Some(pid) = r.pid() {
            let _ = Command::new("taskset")
                .args(["-a", "-p", "-c", cpu, &pid.to_string()])
                .stdout(std::process::Stdio::null())
                .status();
        }
    };
    let pong = vm("pong").spawn();
    pin(&pong, "1");
    let ping = vm("ping").spawn();
    pin(&ping, "0");
    let ping = ping.wait();
    let _ = pong.wait();
    let line = ping.stdout.lines().find(|l| l.contains("rtt_cycles"))?;
    field(line, "p50")
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.get(1).map(String::as_str) == Some("--host-side") {
        host_side(&a[2], &a[3], a[4].parse().expect("iters"));
        return;
    }
    let rounds: usize = a.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let iters: u64 = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let acc = accel();
    let khz = tsc_khz();
    println!(
        "pingpong-bench: {rounds} interleaved rounds of {iters} round trips, {acc:?}, TSC {khz} kHz"
    );
    let mut vms = Vec::new();
    let mut hosts = Vec::new();
    for n in 0..rounds {
        let v = vm_round(iters, n, khz);
        let h = host_round(iters, n);
        match (v, h) {
            (Some(v), Some(h)) => {
                println!(
                    "  round {n}: partitions p50 {v:6} cycles, host processes p50 {h:6} cycles, ratio {:.3}",
                    v as f64 / h as f64
                );
                vms.push(v);
                hosts.push(h);
            }
            _ => println!("  round {n}: failed (partitions {v:?}, host {h:?})"),
        }
    }
    if vms.is_empty() {
        std::process::exit(1);
    }
    let mut ratios: Vec<f64> = vms
        .iter()
        .zip(&hosts)
        .map(|(v, h)| *v as f64 / *h as f64)
        .collect();
    ratios.sort_by(f64::total_cmp);
    vms.sort_unstable();
    hosts.sort_unstable();
    let (v, h) = (percentile(&vms, 50), percentile(&hosts, 50));
    println!(
        "median round-trip p50: partitions {v} cycles ({:.0} ns one way), host {h} cycles ({:.0} ns one way)",
        v as f64 / khz as f64 * 1e6 / 2.0,
        h as f64 / khz as f64 * 1e6 / 2.0
    );
    println!(
        "ratio partitions/host: median {:.3} (min {:.3}, max {:.3})",
        percentile(&ratios, 50),
        ratios[0],
        ratios[ratios.len() - 1]
    );
}
