//! Boot tests: real partitions under QEMU (KVM or TCG, printed) and uhyve.

use abi::exit;
use std::time::Duration;
use vmpi_tests::{Machine, ShmFile, Vm, image, uhyve};

const TSC: &str = "tsc_khz=2000000";

fn hello(machine: Machine) {
    let out = Vm::qemu(
        machine,
        &image("hello"),
        64,
        &format!("{TSC} name=world status=7"),
    )
    .run();
    assert!(!out.timed_out, "{machine:?}: timed out\n{}", out.stdout);
    assert!(
        out.stdout
            .contains("hello from vmpi partition (Qemu), 3 args"),
        "{machine:?} output:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("arg name=world"), "{}", out.stdout);
    assert_eq!(
        out.qemu_status(),
        Some(7),
        "{machine:?}: code {:?}\n{}",
        out.code,
        out.stdout
    );
}

#[test]
fn hello_microvm_pcie() {
    hello(Machine::MicrovmPcie);
}

#[test]
fn hello_microvm() {
    hello(Machine::Microvm);
}

#[test]
fn hello_q35_qboot() {
    hello(Machine::Q35Qboot);
}

#[test]
fn hello_without_tsc_khz_calibrates() {
    let out = Vm::qemu(Machine::MicrovmPcie, &image("hello"), 64, "status=3").run();
    assert_eq!(out.qemu_status(), Some(3), "{:?}\n{}", out.code, out.stdout);
    // The guest calibrated against the PIT; the guest TSC is the host's here
    // (KVM and TCG alike), so the figure must be near the host's own.
    let khz: u64 = out
        .stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("tsc_khz=")?.parse().ok())
        .expect("tsc_khz in the boot_tsc line");
    let host = vmpi::tsc::tsc_khz();
    assert!(
        khz > host * 3 / 4 && khz < host * 5 / 4,
        "calibrated {khz} kHz, host TSC {host} kHz\n{}",
        out.stdout
    );
}

#[test]
fn hello_uhyve() {
    let Some(u) = uhyve() else {
        vmpi_tests::say(format_args!("hello_uhyve: SKIPPED: uhyve unavailable"));
        return;
    };
    let out = Vm::uhyve(
        &u,
        &image("hello"),
        32,
        &["name=world", "status=7", "sleep_ms=5"],
    )
    .run();
    assert!(
        out.stdout
            .contains("hello from vmpi partition (Uhyve), 3 args"),
        "uhyve output:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("arg name=world"), "{}", out.stdout);
    assert!(out.stdout.contains("(timed out: true)"), "{}", out.stdout);
    // uhyve exits with the status as it is.
    assert_eq!(out.code, Some(7), "{}\n{}", out.stdout, out.stderr);
}

fn faulty(fault: &str) -> vmpi_tests::Outcome {
    Vm::qemu(
        Machine::Microvm,
        &image("faulty"),
        64,
        &format!("{TSC} fault={fault}"),
    )
    .run()
}

#[test]
fn service_faults_are_reported() {
    let cases: &[(&str, u8, &str)] = &[
        (
            "null",
            exit::SERVICE_PAGE_FAULT,
            "service page fault: read at address 0x0 (page not mapped",
        ),
        ("runtime", exit::SERVICE_PAGE_FAULT, "(protection violation"),
        (
            "runtime-code",
            exit::SERVICE_PAGE_FAULT,
            "read at address 0x200000 (protection violation",
        ),
        (
            "write-code",
            exit::SERVICE_PAGE_FAULT,
            "service page fault: write at address",
        ),
        (
            "gp",
            exit::SERVICE_GP_FAULT,
            "service general protection fault (vector 13",
        ),
        (
            "ud",
            exit::SERVICE_INVALID_OPCODE,
            "service invalid opcode (vector 6",
        ),
        (
            "panic",
            exit::SERVICE_PANIC,
            "deliberate panic (fault=panic)",
        ),
        (
            "stack",
            exit::SERVICE_STACK_OVERFLOW,
            "service stack overflow",
        ),
        (
            "div",
            exit::SERVICE_EXCEPTION,
            "service divide error (vector 0",
        ),
        (
            "oom",
            exit::SERVICE_PANIC,
            "memory allocation of 2147483648 bytes failed",
        ),
        (
            "bad-exit",
            exit::SERVICE_BAD_SYSCALL,
            "exit status above 99",
        ),
        (
            "bad-log",
            exit::SERVICE_BAD_SYSCALL,
            "buffer outside the service's memory",
        ),
        (
            "setup-again",
            exit::SERVICE_BAD_SYSCALL,
            "SETUP is the runtime prologue's, once",
        ),
        (
            "bad-syscall",
            exit::SERVICE_BAD_SYSCALL,
            "bad system call 99 at rip",
        ),
        ("none", exit::SUCCESS, "about to fault: none"),
    ];
    for &(fault, status, text) in cases {
        let out = faulty(fault);
        assert!(
            out.stdout.contains(text),
            "fault={fault}: want {text:?} in:\n{}",
            out.stdout
        );
        assert!(
            !out.stdout.contains("still running"),
            "fault={fault}:\n{}",
            out.stdout
        );
        assert_eq!(
            out.qemu_status(),
            Some(status),
            "fault={fault}: code {:?}\n{}",
            out.code,
            out.stdout
        );
    }
}

#[test]
fn malformed_command_line_is_refused() {
    for (append, text) in [
        ("tsc_khz=2000000 novalue", "no '=' in: \"novalue\""),
        ("=x", "empty key"),
        ("tsc_khz=fast", "tsc_khz needs a number"),
        ("need_shm=99", "more shared-memory devices"),
    ] {
        let out = Vm::qemu(Machine::Microvm, &image("hello"), 64, append).run();
        assert!(
            out.stdout.contains(text),
            "{append}: want {text:?} in:\n{}",
            out.stdout
        );
        assert_eq!(
            out.qemu_status(),
            Some(exit::BAD_COMMAND_LINE),
            "{append}: {:?}",
            out.code
        );
    }
    let long = format!("k={}", "x".repeat(3000));
    let out = Vm::qemu(Machine::Microvm, &image("hello"), 64, &long).run();
    assert!(
        out.stdout.contains("command line longer than"),
        "{}",
        out.stdout
    );
    assert_eq!(out.qemu_status(), Some(exit::BAD_COMMAND_LINE));
}

#[test]
fn too_little_memory_is_refused() {
    let out = Vm::qemu(Machine::Microvm, &image("hello"), 8, TSC).run();
    assert!(out.stdout.contains("too little memory"), "{}", out.stdout);
    assert_eq!(
        out.qemu_status(),
        Some(exit::TOO_LITTLE_MEMORY),
        "{:?}",
        out.code
    );
}

#[test]
fn missing_device_is_refused() {
    for machine in [Machine::Microvm, Machine::MicrovmPcie] {
        let out = Vm::qemu(machine, &image("hello"), 64, &format!("{TSC} need_shm=1")).run();
        assert!(
            out.stdout.contains("missing device"),
            "{machine:?}: {}",
            out.stdout
        );
        assert_eq!(
            out.qemu_status(),
            Some(exit::MISSING_DEVICE),
            "{machine:?}: {:?}",
            out.code
        );
    }
}

#[test]
fn ivshmem_is_found_and_mapped() {
    // microvm: ECAM at 0xe0000000 probed; q35: port 0xCF8, then ECAM named on the command line.
    let cases = [
        (Machine::MicrovmPcie, 2u64 << 20, ""),
        (Machine::Q35Qboot, 64 << 10, ""),
        (Machine::Q35Qboot, 4 << 20, "pci_ecam=0xb0000000"),
    ];
    for (machine, shm_size, extra) in cases {
        let shm = ShmFile::new(&format!("map-{machine:?}-{shm_size}"), shm_size);
        let append = format!("{TSC} need_shm=1 role=none {extra}");
        let out = Vm::qemu(machine, &image("pingpong"), 64, &append)
            .shm("s0", &shm)
            .run();
        let want = format!("({} KiB at 0x", shm_size >> 10);
        assert!(
            out.stdout.contains(&want),
            "{machine:?}: want {want:?} in:\n{}",
            out.stdout
        );
        assert!(
            out.stdout.contains("role must be ping or pong"),
            "{}",
            out.stdout
        );
        assert_eq!(
            out.qemu_status(),
            Some(2),
            "{machine:?}: {:?}\n{}",
            out.code,
            out.stdout
        );
    }
}

#[test]
fn two_partitions_exchange_data_both_ways() {
    let shm = ShmFile::new("pingpong", 2 << 20);
    let args = |role: &str| format!("{TSC} need_shm=1 role={role} iters=500 timeout_ms=60000");
    let t = Duration::from_secs(120);
    let pong = Vm::qemu(Machine::MicrovmPcie, &image("pingpong"), 64, &args("pong"))
        .shm("s0", &shm)
        .timeout(t)
        .spawn();
    let ping = Vm::qemu(Machine::MicrovmPcie, &image("pingpong"), 64, &args("ping"))
        .shm("s0", &shm)
        .timeout(t)
        .spawn();
    let ping = ping.wait();
    let pong = pong.wait();
    assert!(
        ping.stdout
            .contains("ping received \"greetings from pong\""),
        "ping:\n{}",
        ping.stdout
    );
    assert!(
        pong.stdout
            .contains("pong received \"greetings from ping\""),
        "pong:\n{}",
        pong.stdout
    );
    assert!(
        ping.stdout.contains("rtt_cycles n=500"),
        "ping:\n{}",
        ping.stdout
    );
    assert!(
        pong.stdout.contains("pong done after 500 round trips"),
        "pong:\n{}",
        pong.stdout
    );
    assert_eq!(
        ping.qemu_status(),
        Some(0),
        "ping {:?}\n{}",
        ping.code,
        ping.stdout
    );
    assert_eq!(
        pong.qemu_status(),
        Some(0),
        "pong {:?}\n{}",
        pong.code,
        pong.stdout
    );
}

#[test]
fn qemu_exit_codes_round_trip() {
    for v in 0..=127u8 {
        assert_eq!(abi::from_qemu_exit_code(2 * i32::from(v) + 1), Some(v));
    }
    assert_eq!(abi::from_qemu_exit_code(0), None);
    assert_eq!(abi::from_qemu_exit_code(2), None);
    assert_eq!(abi::from_qemu_exit_code(-1), None);
    assert_eq!(
        exit::describe(exit::SERVICE_PAGE_FAULT),
        "service page fault"
    );
}

#[test]
fn doorbells_wake_a_waiting_service() {
    let server = vmpi_tests::IvshmemServer::start("doorbell", 1 << 20, 2);
    let t = Duration::from_secs(90);
    let vm = || {
        Vm::qemu(
            Machine::MicrovmPcie,
            &image("doorbell"),
            64,
            &format!("{TSC} need_doorbell=1 rounds=5"),
        )
        .args(server.qemu_args("db"))
        .timeout(t)
    };
    // Ids follow connection order: start peer 0 first and let it connect.
    let a = vm().spawn();
    std::thread::sleep(Duration::from_millis(300));
    let b = vm().spawn();
    let (a, b) = (a.wait(), b.wait());
    eprintln!(
        "first partition:\n{}second partition:\n{}",
        a.stdout, b.stdout
    );
    for (name, out) in [("first", &a), ("second", &b)] {
        assert!(
            out.stdout.contains("deadline wait timed out"),
            "{name}:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.stdout.contains("woken by peer"),
            "{name}:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        assert_eq!(
            out.qemu_status(),
            Some(0),
            "{name}: {:?}\n{}",
            out.code,
            out.stdout
        );
    }
    assert!(a.stdout.contains("peer id 0"), "{}", a.stdout);
    assert!(b.stdout.contains("doorbell round trips"), "{}", b.stdout);
}

#[test]
fn missing_doorbell_is_refused() {
    let shm = ShmFile::new("nodoorbell", 1 << 20);
    let out = Vm::qemu(
        Machine::MicrovmPcie,
        &image("doorbell"),
        64,
        &format!("{TSC} need_doorbell=1"),
    )
    .shm("s0", &shm)
    .run();
    assert!(
        out.stdout
            .contains("ivshmem-doorbell device with MSI-X is required"),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.qemu_status(),
        Some(exit::MISSING_DEVICE),
        "{:?}",
        out.code
    );
}

#[test]
fn virtio_blk_smoke_test() {
    let disk = ShmFile::new("disk", 1 << 20);
    std::fs::write(&disk.path, {
        let mut d = vec![0u8; 1 << 20];
        d[..16].copy_from_slice(b"vmpi-disk-sector");
        d
    })
    .expect("write disk image");
    let drive = format!("file={},if=none,id=d0,format=raw", disk.path.display());
    let out = Vm::qemu(
        Machine::MicrovmPcie,
        &image("hello"),
        64,
        &format!("{TSC} virtio_blk_test=1"),
    )
    .args(["-drive", &drive, "-device", "virtio-blk-pci,drive=d0"])
    .run();
    assert!(
        out.stdout.contains(
            "2048 sectors, sector 0 starts \"vmpi-disk-sector\", write/read-back of sector 1 ok"
        ),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(out.qemu_status(), Some(0), "{:?}", out.code);
    let d = std::fs::read(&disk.path).expect("read disk image");
    assert_eq!(
        &d[512..528],
        b"vmpi-virtio-blk!",
        "sector 1 on the host after the guest wrote it"
    );
    // Asked for, but absent: a clear refusal.
    let out = Vm::qemu(
        Machine::MicrovmPcie,
        &image("hello"),
        64,
        &format!("{TSC} virtio_blk_test=1"),
    )
    .run();
    assert!(
        out.stdout.contains("no virtio-blk device"),
        "{}",
        out.stdout
    );
    assert_eq!(out.qemu_status(), Some(exit::MISSING_DEVICE));
}

#[test]
fn without_debug_exit_the_partition_says_so_and_powers_off() {
    for machine in [Machine::Microvm, Machine::Q35Qboot] {
        let out = Vm::qemu_with(
            machine,
            &image("hello"),
            64,
            &format!("{TSC} status=3"),
            false,
        )
        .timeout(Duration::from_secs(30))
        .run();
        assert!(
            out.stdout
                .contains("exit status 3 could not be reported (no isa-debug-exit at 0xf4)"),
            "{machine:?}: {}",
            out.stdout
        );
        assert!(!out.timed_out, "{machine:?}: the VM did not power off");
        assert_eq!(out.code, Some(0), "{machine:?}");
    }
}

#[test]
fn unexpected_pci_layout_is_refused() {
    // 1 GiB of shared memory cannot fit microvm's 512 MiB PCI window.
    let shm = ShmFile::new("toobig", 1 << 30);
    let out = Vm::qemu(Machine::MicrovmPcie, &image("hello"), 64, TSC)
        .shm("s0", &shm)
        .run();
    assert!(
        out.stdout
            .contains("unexpected PCI layout at 00:01.0: shared memory does not fit"),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.qemu_status(),
        Some(exit::BAD_PCI_LAYOUT),
        "{:?}",
        out.code
    );
}

#[test]
fn deadline_wait_after_calibration() {
    // No tsc_khz: the runtime calibrates with the PIT, then the service blocks
    // until a deadline (LAPIC timer) with legacy interrupts masked.
    for machine in [Machine::Microvm, Machine::Q35Qboot] {
        let out = Vm::qemu(machine, &image("hello"), 64, "sleep_ms=30").run();
        assert!(
            out.stdout.contains("(timed out: true)"),
            "{machine:?}: {}",
            out.stdout
        );
        assert_eq!(
            out.qemu_status(),
            Some(0),
            "{machine:?}: {:?}\n{}",
            out.code,
            out.stdout
        );
    }
}

#[test]
fn service_faults_are_reported_under_uhyve() {
    let Some(u) = uhyve() else {
        vmpi_tests::say(format_args!(
            "service_faults_are_reported_under_uhyve: SKIPPED: uhyve unavailable"
        ));
        return;
    };
    for (fault, status, text) in [
        (
            "null",
            exit::SERVICE_PAGE_FAULT,
            "service page fault: read at address 0x0",
        ),
        ("panic", exit::SERVICE_PANIC, "deliberate panic"),
    ] {
        let arg = format!("fault={fault}");
        let out = Vm::uhyve(&u, &image("faulty"), 32, &[&arg]).run();
        assert!(
            out.stdout.contains(text),
            "fault={fault}: {}\n{}",
            out.stdout,
            out.stderr
        );
        assert_eq!(out.code, Some(i32::from(status)), "fault={fault}");
    }
}
