//! Helpers shared by vmpi integration tests: build the partition images, find
//! QEMU and uhyve, choose KVM or TCG (and say which), run a VM with a timeout
//! (killed on drop), and shared-memory files under /dev/shm removed on drop.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod system;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The partitions workspace.
pub fn partitions_dir() -> PathBuf {
    repo_root().join("partitions")
}

/// Builds every partition image once per process (`cargo build --release` in
/// partitions/) and returns the directory holding the ELF images. Prints each
/// image's size and the build time.
pub fn images() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = partitions_dir();
        let target = dir.join("target");
        let t = Instant::now();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--release", "--locked"])
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .output()
            .expect("run cargo for partitions/");
        assert!(
            out.status.success(),
            "building the partition images failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let imgs = target.join("x86_64-unknown-none").join("release");
        say(format_args!(
            "vmpi-tests: partition images built in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        for name in ["hello", "faulty", "pingpong", "doorbell"] {
            let len = std::fs::metadata(imgs.join(name))
                .map(|m| m.len())
                .unwrap_or(0);
            say(format_args!(
                "vmpi-tests: image {name}: {len} bytes ({:.1} KiB)",
                len as f64 / 1024.0
            ));
        }
        imgs
    })
}

/// Path of one partition image (built on first use).
pub fn image(name: &str) -> PathBuf {
    images().join(name)
}

/// The QEMU accelerator in use.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Accel {
    /// `/dev/kvm` (here: `kvm_pvm`).
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

/// KVM when /dev/kvm is usable, else TCG. Prints the choice once. `VMPI_ACCEL=tcg`
/// forces TCG.
pub fn accel() -> Accel {
    static A: OnceLock<Accel> = OnceLock::new();
    *A.get_or_init(|| {
        let forced_tcg = std::env::var("VMPI_ACCEL").is_ok_and(|v| v == "tcg");
        let kvm = !forced_tcg
            && std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok();
        if kvm {
            say(format_args!("vmpi-tests: accelerator KVM (/dev/kvm)"));
            Accel::Kvm
        } else {
            say(format_args!(
                "vmpi-tests: NO usable /dev/kvm: running VMs under TCG (software emulation)"
            ));
            Accel::Tcg
        }
    })
}

/// The QEMU binary.
pub fn qemu() -> PathBuf {
    which("qemu-system-x86_64").expect(
        "qemu-system-x86_64 not found: run scripts/test (installs it) or apt-get install qemu-system-x86",
    )
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The uhyve binary: on PATH or in ~/.cargo/bin, else installed now with
/// `cargo install uhyve --version 0.10.0 --locked` (once). `None`, after a loud
/// message, when it cannot be had.
pub fn uhyve() -> Option<PathBuf> {
    static U: OnceLock<Option<PathBuf>> = OnceLock::new();
    U.get_or_init(|| {
        let cargo_bin = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
            .map(|h| h.join("bin").join("uhyve"));
        let find = || which("uhyve").or_else(|| cargo_bin.clone().filter(|p| p.is_file()));
        if let Some(p) = find() {
            return Some(p);
        }
        say(format_args!(
            "vmpi-tests: uhyve missing: cargo install uhyve --version 0.10.0 --locked"
        ));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let ok = Command::new(cargo)
            .args(["install", "uhyve", "--version", "0.10.0", "--locked"])
            .env_remove("CARGO_TARGET_DIR")
            .current_dir(std::env::temp_dir())
            .status()
            .is_ok_and(|s| s.success());
        let found = if ok { find() } else { None };
        if found.is_none() {
            say(format_args!(
                "vmpi-tests: !!! uhyve could not be installed: uhyve cases are SKIPPED !!!"
            ));
        }
        found
    })
    .clone()
}

/// Which QEMU machine to boot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Machine {
    /// `-M microvm` without PCI (fastest).
    Microvm,
    /// `-M microvm,pcie=on` (ECAM at 0xe0000000): vmpi's default.
    MicrovmPcie,
    /// `-M q35 -bios qboot.rom` (port 0xCF8).
    Q35Qboot,
}

/// A QEMU command being put together.
pub struct Vm {
    cmd: Command,
    timeout: Duration,
}

impl Vm {
    /// A VM booting `kernel` on `machine` with `mem` MiB and `append` as command
    /// line, with isa-debug-exit, serial on stdout, no reboot.
    pub fn qemu(machine: Machine, kernel: &Path, mem_mib: u32, append: &str) -> Vm {
        Vm::qemu_with(machine, kernel, mem_mib, append, true)
    }

    /// As [`Vm::qemu`], with or without the isa-debug-exit device.
    pub fn qemu_with(
        machine: Machine,
        kernel: &Path,
        mem_mib: u32,
        append: &str,
        debug_exit: bool,
    ) -> Vm {
        let mut cmd = Command::new(qemu());
        match machine {
            Machine::Microvm => cmd.args(["-M", "microvm,auto-kernel-cmdline=off"]),
            Machine::MicrovmPcie => cmd.args(["-M", "microvm,pcie=on,auto-kernel-cmdline=off"]),
            Machine::Q35Qboot => cmd.args(["-M", "q35", "-bios", "qboot.rom"]),
        };
        match accel() {
            Accel::Kvm => cmd.args(["-enable-kvm", "-cpu", "host,-arch-capabilities"]),
            Accel::Tcg => cmd.args(["-accel", "tcg"]),
        };
        cmd.args([
            "-m",
            &format!("{mem_mib}M"),
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
        ]);
        cmd.args(["-display", "none", "-serial", "stdio", "-no-reboot"]);
        if debug_exit {
            cmd.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        }
        cmd.arg("-kernel").arg(kernel).args(["-append", append]);
        Vm {
            cmd,
            timeout: Duration::from_secs(60),
        }
    }

    /// A uhyve VM booting `kernel` with `mem` MiB and the given arguments.
    pub fn uhyve(uhyve: &Path, kernel: &Path, mem_mib: u32, args: &[&str]) -> Vm {
        let mut cmd = Command::new(uhyve);
        cmd.args(["-m", &format!("{mem_mib}MiB"), "--no-aslr"])
            .arg(kernel);
        if !args.is_empty() {
            cmd.arg("--").args(args);
        }
        Vm {
            cmd,
            timeout: Duration::from_secs(60),
        }
    }

    /// Adds an ivshmem-plain device backed by `shm`.
    pub fn shm(mut self, id: &str, shm: &ShmFile) -> Vm {
        self.cmd.args([
            "-object",
            &format!(
                "memory-backend-file,id={id},size={},mem-path={},share=on",
                shm.size,
                shm.path.display()
            ),
            "-device",
            &format!("ivshmem-plain,memdev={id}"),
        ]);
        self
    }

    /// Adds raw arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(mut self, a: I) -> Vm {
        self.cmd.args(a);
        self
    }

    /// Sets the time limit (default 60 s).
    pub fn timeout(mut self, t: Duration) -> Vm {
        self.timeout = t;
        self
    }

    /// Starts the VM.
    pub fn spawn(mut self) -> Running {
        self.cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.cmd.spawn().expect("start the hypervisor");
        let mut out = child.stdout.take().expect("stdout piped");
        let mut err = child.stderr.take().expect("stderr piped");
        let reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = out.read_to_end(&mut s);
            let mut e = Vec::new();
            let _ = err.read_to_end(&mut e);
            (s, e)
        });
        Running {
            child: Some(child),
            reader: Some(reader),
            timeout: self.timeout,
            started: Instant::now(),
        }
    }

    /// Runs the VM to its end (or the time limit).
    pub fn run(self) -> Outcome {
        self.spawn().wait()
    }
}

type Reader = std::thread::JoinHandle<(Vec<u8>, Vec<u8>)>;

/// A running VM; killed when dropped.
pub struct Running {
    child: Option<Child>,
    reader: Option<Reader>,
    timeout: Duration,
    started: Instant,
}

/// How a VM ended.
#[derive(Debug)]
pub struct Outcome {
    /// The hypervisor's exit code (`None`: killed by a signal or the time limit).
    pub code: Option<i32>,
    /// Whether the time limit killed it.
    pub timed_out: bool,
    /// Serial console output (stdout).
    pub stdout: String,
    /// The hypervisor's own messages (stderr).
    pub stderr: String,
    /// Launch to exit.
    pub elapsed: Duration,
}

impl Outcome {
    /// The partition's status under QEMU (isa-debug-exit: code = 2*v+1).
    pub fn qemu_status(&self) -> Option<u8> {
        self.code.and_then(abi::from_qemu_exit_code)
    }
}

impl Running {
    /// The hypervisor's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits for the end or the time limit (then kills).
    pub fn wait(mut self) -> Outcome {
        let mut child = self.child.take().expect("child present");
        let mut timed_out = false;
        let code = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s.code(),
                Ok(None) if self.started.elapsed() > self.timeout => {
                    timed_out = true;
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(_) => break None,
            }
        };
        let elapsed = self.started.elapsed();
        let (o, e) = self
            .reader
            .take()
            .expect("reader present")
            .join()
            .unwrap_or_default();
        Outcome {
            code,
            timed_out,
            stdout: String::from_utf8_lossy(&o).into_owned(),
            stderr: String::from_utf8_lossy(&e).into_owned(),
            elapsed,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A shared-memory file under /dev/shm, zero-filled, removed on drop.
pub struct ShmFile {
    /// Its path.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

impl ShmFile {
    /// Creates `/dev/shm/vmpi-test-<pid>-<name>` of `size` bytes.
    pub fn new(name: &str, size: u64) -> ShmFile {
        let path = PathBuf::from(format!("/dev/shm/vmpi-test-{}-{name}", std::process::id()));
        let f = std::fs::File::create(&path).expect("create shared-memory file");
        f.set_len(size).expect("size shared-memory file");
        ShmFile { path, size }
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Percentile `p` (0..=100) of sorted samples.
pub fn percentile<T: Copy>(sorted: &[T], p: usize) -> T {
    sorted[(sorted.len() - 1) * p / 100]
}

/// A minimal ivshmem server (QEMU's `docs/specs/ivshmem-spec` protocol) for
/// `ivshmem-doorbell` devices: hands each connecting VM its id, the shared
/// memory fd and one eventfd per vector for itself and every peer. Stops and
/// removes its socket on drop.
pub struct IvshmemServer {
    /// The Unix socket QEMU connects to (`-chardev socket,path=...`).
    pub socket: PathBuf,
    /// The shared memory.
    pub shm: ShmFile,
    vectors: u32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn send_msg(sock: &std::os::unix::net::UnixStream, v: i64, fd: Option<i32>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut data = v.to_le_bytes();
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // Room for one SCM_RIGHTS fd (CMSG_SPACE(4) <= 24 on x86_64 Linux).
    let mut cbuf = [0u64; 4];
    // SAFETY: an all-zero msghdr is a valid "no name, no control" header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
        // SAFETY: the control buffer is large enough for one cmsg with one fd,
        // and CMSG_FIRSTHDR/CMSG_DATA point inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            libc::CMSG_DATA(c).cast::<i32>().write_unaligned(fd);
        }
    }
    // SAFETY: msg points at live buffers for the duration of the call.
    let r = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl IvshmemServer {
    /// Starts a server for `vectors` vectors over a new shared-memory file.
    pub fn start(name: &str, size: u64, vectors: u32) -> IvshmemServer {
        use std::os::fd::AsRawFd;
        let shm = ShmFile::new(name, size);
        let socket =
            std::env::temp_dir().join(format!("vmpi-ivshmem-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let listener =
            std::os::unix::net::UnixListener::bind(&socket).expect("bind ivshmem socket");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let shm_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&shm.path)
            .expect("open shared memory");
        let thread = std::thread::spawn(move || {
            // Each peer: its connection and one eventfd per vector.
            let mut peers: Vec<(i64, std::os::unix::net::UnixStream, Vec<i32>)> = Vec::new();
            let mut next_id = 0i64;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let _ = s.set_nonblocking(false);
                let id = next_id;
                next_id += 1;
                let fds: Vec<i32> = (0..vectors)
                    // SAFETY: eventfd has no memory preconditions.
                    .map(|_| unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })
                    .collect();
                let mut ok = send_msg(&s, 0, None).is_ok()
                    && send_msg(&s, id, None).is_ok()
                    && send_msg(&s, -1, Some(shm_file.as_raw_fd())).is_ok();
                for (pid, _, pfds) in &peers {
                    for &fd in pfds {
                        ok &= send_msg(&s, *pid, Some(fd)).is_ok();
                    }
                }
                for &fd in &fds {
                    ok &= send_msg(&s, id, Some(fd)).is_ok();
                }
                for (_, ps, _) in &peers {
                    for &fd in &fds {
                        let _ = send_msg(ps, id, Some(fd));
                    }
                }
                if ok {
                    peers.push((id, s, fds));
                }
            }
            for (_, _, fds) in peers {
                for fd in fds {
                    // SAFETY: closing eventfds this thread created.
                    unsafe { libc::close(fd) };
                }
            }
        });
        IvshmemServer {
            socket,
            shm,
            vectors,
            stop,
            thread: Some(thread),
        }
    }

    /// QEMU arguments adding an `ivshmem-doorbell` device connected to this server.
    pub fn qemu_args(&self, id: &str) -> Vec<String> {
        vec![
            "-chardev".into(),
            format!("socket,path={},id={id}", self.socket.display()),
            "-device".into(),
            format!("ivshmem-doorbell,chardev={id},vectors={}", self.vectors),
        ]
    }
}

impl Drop for IvshmemServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Prints a line on the real stderr, past the test harness's output capture,
/// so choices such as "running under TCG" are always visible.
pub fn say(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{args}");
}
