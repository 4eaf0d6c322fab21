//! Finding the hypervisors, choosing the accelerator and writing QEMU's command line.
//!
//! # Assumptions
//! - Debian's `qemu-system-x86` 7.2 (see PLATFORM.md): `microvm,pcie=on` boots a PVH
//!   ELF given with `-kernel`; under `kvm_pvm` the CPU must be
//!   `host,-arch-capabilities`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::manifest::{Machine, System};

/// The QEMU binary vmpi runs.
pub const QEMU: &str = "qemu-system-x86_64";
/// Debian's qboot, the fast firmware for `-M q35`.
pub const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// Host set-up errors.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No QEMU and it cannot be installed from here.
    #[error("{QEMU} is not installed; run: {0}")]
    NoQemu(String),
    /// `VMPI_QEMU` names a missing file.
    #[error("VMPI_QEMU={0} does not exist")]
    BadQemuOverride(String),
    /// The automatic install failed.
    #[error(
        "installing qemu-system-x86 failed ({0}); run: apt-get update && apt-get install -y qemu-system-x86"
    )]
    InstallFailed(String),
    /// No uhyve for a uhyve partition.
    #[error(
        "partition `{0}` runs under uhyve, which is not installed; run: cargo install uhyve --version 0.10.0 --locked"
    )]
    NoUhyve(String),
    /// q35 without qboot.
    #[error("machine = \"q35\" needs {QBOOT} (Debian package qemu-system-data)")]
    NoQboot,
}

/// The accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// `/dev/kvm` (hardware or `kvm_pvm`).
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl Accel {
    /// KVM if `/dev/kvm` can be opened read-write, else TCG.
    pub fn detect() -> Self {
        Self::detect_at(Path::new("/dev/kvm"))
    }

    /// KVM if `dev` can be opened read-write, else TCG.
    pub fn detect_at(dev: &Path) -> Self {
        let ok = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev)
            .is_ok();
        if ok { Self::Kvm } else { Self::Tcg }
    }

    /// QEMU arguments selecting it.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Self::Kvm => &["-enable-kvm", "-cpu", "host,-arch-capabilities"],
            Self::Tcg => &["-accel", "tcg"],
        }
    }

    /// Name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kvm => "KVM",
            Self::Tcg => "TCG (software emulation)",
        }
    }
}

/// Finds `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The uhyve binary: on `PATH`, else where `cargo install` puts it.
pub fn find_uhyve() -> Option<PathBuf> {
    which("uhyve").or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
        Some(home.join("bin/uhyve")).filter(|p| p.is_file())
    })
}

/// What to tell a user without QEMU (`root`: running as root).
pub fn install_advice(root: bool) -> String {
    let cmd = "apt-get update && apt-get install -y qemu-system-x86";
    if root {
        cmd.to_string()
    } else {
        format!("sudo sh -c '{cmd}'")
    }
}

/// What to do about QEMU.
#[derive(Debug, PartialEq, Eq)]
pub enum QemuPlan {
    /// It is there.
    Use(PathBuf),
    /// Install it with apt-get (root, apt-get present).
    Install,
    /// Tell the user to run this.
    Advise(String),
}

/// Decides from what was found on `PATH`, whether we are root and whether apt-get
/// exists.
pub fn qemu_plan(found: Option<PathBuf>, root: bool, apt: bool) -> QemuPlan {
    match found {
        Some(q) => QemuPlan::Use(q),
        None if root && apt => QemuPlan::Install,
        None => QemuPlan::Advise(install_advice(root)),
    }
}

/// The QEMU binary: `VMPI_QEMU` if set, else from `PATH`; if missing and we are
/// root with apt-get, installs `qemu-system-x86` (apt's progress on the terminal).
pub fn find_or_install_qemu() -> Result<PathBuf, HostError> {
    if let Some(q) = std::env::var_os("VMPI_QEMU") {
        let q = PathBuf::from(q);
        return if q.is_file() {
            Ok(q)
        } else {
            Err(HostError::BadQemuOverride(q.display().to_string()))
        };
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    match qemu_plan(which(QEMU), root, which("apt-get").is_some()) {
        QemuPlan::Use(q) => return Ok(q),
        QemuPlan::Advise(cmd) => return Err(HostError::NoQemu(cmd)),
        QemuPlan::Install => {}
    }
    eprintln!("vmpi: {QEMU} is missing; installing qemu-system-x86 with apt-get");
    for args in [&["update"][..], &["install", "-y", "qemu-system-x86"][..]] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| HostError::InstallFailed(e.to_string()))?;
        if !status.success() {
            return Err(HostError::InstallFailed(format!(
                "apt-get {}: {status}",
                args.join(" ")
            )));
        }
    }
    which(QEMU).ok_or_else(|| HostError::InstallFailed(format!("{QEMU} still not on PATH")))
}

/// Paths one partition's QEMU needs.
#[derive(Debug, Clone)]
pub struct VmPaths {
    /// Kernel image.
    pub image: PathBuf,
    /// QMP socket.
    pub qmp: PathBuf,
    /// Doorbell socket per channel of the partition, in PCI-slot order.
    pub doorbells: Vec<PathBuf>,
}

/// QEMU's arguments (without the binary) for partition `rank`.
pub fn qemu_args(
    sys: &System,
    rank: usize,
    accel: Accel,
    paths: &VmPaths,
    append: &str,
) -> Vec<String> {
    let p = &sys.partitions[rank];
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    match sys.machine {
        Machine::Microvm => push(&["-M", "microvm,pcie=on"]),
        Machine::Q35 => push(&["-M", "q35", "-bios", QBOOT]),
    }
    push(accel.args());
    let mem = format!("{}M", p.memory.div_ceil(1 << 20));
    push(&[
        "-m",
        &mem,
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
    ]);
    // A triple fault ends QEMU (status 0: "no guest status") instead of rebooting.
    push(&["-no-reboot", "-serial", "stdio"]);
    push(&["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    let qmp = format!("unix:{},server=on,wait=off", paths.qmp.display());
    push(&["-qmp", &qmp]);
    for (c, sock) in sys.channels_of(rank).zip(&paths.doorbells) {
        let side = c.end_of(rank).unwrap_or(0);
        let id = format!("ch{}", c.index);
        push(&[
            "-chardev",
            &format!("socket,path={},id={id}", sock.display()),
        ]);
        push(&[
            "-device",
            &format!(
                "ivshmem-doorbell,chardev={id},vectors={},addr={}",
                crate::doorbell::VECTORS,
                c.slots[side]
            ),
        ]);
    }
    push(&[
        "-kernel",
        &paths.image.display().to_string(),
        "-append",
        append,
    ]);
    a
}

/// The monitor partition's extra QEMU arguments: an `ivshmem-doorbell` device (as
/// ivshmem peer id 2, socket `chC-2.sock` in `run_dir`) for every channel it is not
/// an end of, and the control region as an `ivshmem-plain` device.
pub fn monitor_devices(
    sys: &System,
    slots: &crate::guest_args::MonitorSlots,
    run_dir: &Path,
    control: &Path,
) -> Vec<String> {
    let mut a = Vec::new();
    let m = sys.monitor.partition;
    for &(c, slot) in &slots.watch {
        if m.is_some_and(|m| sys.channels[c].end_of(m).is_some()) {
            continue; // its own channel: already a device
        }
        let sock = run_dir.join(format!("ch{c}-2.sock"));
        a.push("-chardev".to_string());
        a.push(format!("socket,path={},id=watch{c}", sock.display()));
        a.push("-device".to_string());
        a.push(format!(
            "ivshmem-doorbell,chardev=watch{c},vectors={},addr={slot}",
            crate::doorbell::VECTORS
        ));
    }
    a.push("-object".to_string());
    a.push(format!(
        "memory-backend-file,id=control,size={},mem-path={},share=on",
        crate::control_region::BYTES,
        control.display()
    ));
    a.push("-device".to_string());
    a.push(format!(
        "ivshmem-plain,memdev=control,addr={}",
        slots.control
    ));
    a
}

/// uhyve's arguments (without the binary) for partition `rank` (no channels).
pub fn uhyve_args(sys: &System, rank: usize, image: &Path, args: &[String]) -> Vec<String> {
    let p = &sys.partitions[rank];
    let mut a = vec![
        "-m".to_string(),
        format!("{}MiB", p.memory.div_ceil(1 << 20)),
        "--no-aslr".into(),
        image.display().to_string(),
    ];
    if !args.is_empty() {
        a.push("--".into());
        a.extend(args.iter().cloned());
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_client_command_line() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/five.toml");
        let sys = crate::manifest::load(&path).unwrap();
        let paths = VmPaths {
            image: "/i/hello".into(),
            qmp: "/r/qmp-client.sock".into(),
            doorbells: vec!["/r/ch0-0.sock".into(), "/r/ch1-0.sock".into()],
        };
        let a = qemu_args(&sys, 0, Accel::Kvm, &paths, "k=v").join(" ");
        assert_eq!(
            a,
            "-M microvm,pcie=on -enable-kvm -cpu host,-arch-capabilities -m 32M -smp 1 \
             -nodefaults -no-user-config -display none -no-reboot -serial stdio \
             -device isa-debug-exit,iobase=0xf4,iosize=0x04 -qmp unix:/r/qmp-client.sock,server=on,wait=off \
             -chardev socket,path=/r/ch0-0.sock,id=ch0 -device ivshmem-doorbell,chardev=ch0,vectors=2,addr=1 \
             -chardev socket,path=/r/ch1-0.sock,id=ch1 -device ivshmem-doorbell,chardev=ch1,vectors=2,addr=2 \
             -kernel /i/hello -append k=v"
        );
        let t = qemu_args(&sys, 4, Accel::Tcg, &paths, "").join(" ");
        assert!(t.contains("-accel tcg") && !t.contains("ivshmem"), "{t}");
    }

    #[test]
    fn monitor_maps_every_channel_and_the_control_region() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/five.toml");
        let sys = crate::manifest::load(&path).unwrap();
        let slots = crate::guest_args::monitor_slots(&sys).unwrap();
        let a = monitor_devices(&sys, &slots, Path::new("/r"), Path::new("/dev/shm/c")).join(" ");
        assert_eq!(
            a,
            "-chardev socket,path=/r/ch0-2.sock,id=watch0 -device ivshmem-doorbell,chardev=watch0,vectors=2,addr=1 \
             -chardev socket,path=/r/ch1-2.sock,id=watch1 -device ivshmem-doorbell,chardev=watch1,vectors=2,addr=2 \
             -chardev socket,path=/r/ch2-2.sock,id=watch2 -device ivshmem-doorbell,chardev=watch2,vectors=2,addr=3 \
             -chardev socket,path=/r/ch3-2.sock,id=watch3 -device ivshmem-doorbell,chardev=watch3,vectors=2,addr=4 \
             -object memory-backend-file,id=control,size=2097152,mem-path=/dev/shm/c,share=on \
             -device ivshmem-plain,memdev=control,addr=5"
        );
    }

    #[test]
    fn uhyve_command_line() {
        let text = "[system]\nname = \"u\"\n[[partition]]\nname = \"a\"\nservice = \"s\"\nmemory = \"32M\"\nhypervisor = \"uhyve\"\n";
        let sys = crate::manifest::parse(Path::new("u.toml"), text).unwrap();
        let a = uhyve_args(&sys, 0, Path::new("/i/s"), &["rank=0".into()]).join(" ");
        assert_eq!(a, "-m 32MiB --no-aslr /i/s -- rank=0");
    }

    #[test]
    fn no_kvm_device_means_tcg() {
        assert_eq!(Accel::detect_at(Path::new("/nonexistent/kvm")), Accel::Tcg);
        assert_eq!(Accel::Tcg.args(), ["-accel", "tcg"]);
    }

    #[test]
    fn missing_qemu_is_installed_or_explained() {
        let q = PathBuf::from("/usr/bin/qemu-system-x86_64");
        assert_eq!(qemu_plan(Some(q.clone()), false, false), QemuPlan::Use(q));
        assert_eq!(qemu_plan(None, true, true), QemuPlan::Install);
        let QemuPlan::Advise(cmd) = qemu_plan(None, false, true) else {
            panic!()
        };
        assert_eq!(
            HostError::NoQemu(cmd).to_string(),
            "qemu-system-x86_64 is not installed; run: \
             sudo sh -c 'apt-get update && apt-get install -y qemu-system-x86'"
        );
        assert_eq!(
            qemu_plan(None, true, false),
            QemuPlan::Advise("apt-get update && apt-get install -y qemu-system-x86".into())
        );
    }

    #[test]
    fn advice_says_what_to_run() {
        assert_eq!(
            install_advice(true),
            "apt-get update && apt-get install -y qemu-system-x86"
        );
        assert!(install_advice(false).starts_with("sudo "));
    }
}
