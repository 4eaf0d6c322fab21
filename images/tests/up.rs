//! `vmpi up` end to end with real QEMUs: statuses, restarts, channels, Ctrl-C and
//! clean-up, and bad input. The guest is a tiny PVH ELF written here (a few
//! hand-assembled 32-bit instructions), so these tests need no partition build.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vmpi_tests::system::assert_clean;

/// A folder for one test, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("vmpi-itest-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// 32-bit code: print `msg` on COM1, then exit with `status` or halt forever.
fn code(msg: &str, status: Option<u8>) -> Vec<u8> {
    let mut c = vec![0x66, 0xBA, 0xF8, 0x03]; // mov dx, 0x3f8
    for b in msg.bytes() {
        c.extend([0xB0, b, 0xEE]); // mov al, b; out dx, al
    }
    if let Some(v) = status {
        c.extend([0xB0, v, 0xE6, 0xF4]); // mov al, v; out 0xf4, al (isa-debug-exit)
    }
    c.extend([0xF4, 0xEB, 0xFD]); // hlt; jmp hlt
    c
}

/// A minimal ELF64 with one PT_LOAD at 1 MiB and a PVH note (XEN_ELFNOTE_PHYS32_ENTRY).
fn pvh_elf(code: &[u8]) -> Vec<u8> {
    const BASE: u64 = 0x10_0000;
    let note_off = 64 + 2 * 56;
    let code_off = note_off + 24;
    let total = (code_off + code.len()) as u64;
    let entry = BASE + code_off as u64;
    let mut e = Vec::new();
    e.extend([0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    e.extend([0u8; 8]);
    e.extend(2u16.to_le_bytes()); // ET_EXEC
    e.extend(62u16.to_le_bytes()); // EM_X86_64
    e.extend(1u32.to_le_bytes());
    e.extend(entry.to_le_bytes());
    e.extend(64u64.to_le_bytes()); // phoff
    e.extend(0u64.to_le_bytes()); // shoff
    e.extend(0u32.to_le_bytes());
    e.extend(64u16.to_le_bytes());
    e.extend(56u16.to_le_bytes());
    e.extend(2u16.to_le_bytes());
    e.extend([0u8; 6]);
    let phdr =
        |e: &mut Vec<u8>, ty: u32, flags: u32, off: u64, addr: u64, size: u64, align: u64| {
            e.extend(ty.to_le_bytes());
            e.extend(flags.to_le_bytes());
            e.extend(off.to_le_bytes());
            e.extend(addr.to_le_bytes());
            e.extend(addr.to_le_bytes());
            e.extend(size.to_le_bytes());
            e.extend(size.to_le_bytes());
            e.extend(align.to_le_bytes());
        };
    phdr(&mut e, 1, 5, 0, BASE, total, 0x1000); // PT_LOAD R+X
    phdr(&mut e, 4, 4, note_off as u64, BASE + note_off as u64, 24, 4); // PT_NOTE
    e.extend(4u32.to_le_bytes()); // namesz
    e.extend(8u32.to_le_bytes()); // descsz
    e.extend(18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    e.extend(*b"Xen\0");
    e.extend(entry.to_le_bytes());
    assert_eq!(e.len(), code_off);
    e.extend(code);
    e
}

fn vmpi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmpi"))
}

/// Runs `vmpi ARGS` with `env` added: its output, and its process id (for
/// `assert_clean`).
fn run_env(args: &[&str], env: &[(&str, &str)]) -> (Output, u32) {
    let child = vmpi()
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    (child.wait_with_output().unwrap(), pid)
}

fn run(args: &[&str]) -> Output {
    run_env(args, &[]).0
}

/// `vmpi up MANIFEST --log-dir LOGS EXTRA...`: its output and process id.
fn up(manifest: &Path, logs: &Path, extra: &[&str]) -> (Output, u32) {
    let mut args = vec![
        "up",
        manifest.to_str().unwrap(),
        "--log-dir",
        logs.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run_env(&args, &[])
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const QUOTA: &str = "quota = { messages_per_sec = 100, bytes_per_sec = 6400, burst = 8 }";

fn partition(name: &str, image: &Path, extra: &str) -> String {
    format!(
        "[[partition]]\nname = \"{name}\"\nimage = \"{}\"\nmemory = \"16M\"\n{extra}\n",
        image.display()
    )
}

#[test]
fn statuses_and_worst_exit_status() {
    let d = Dir::new("status");
    let ok = d.file("ok.elf", &pvh_elf(&code("ok\n", Some(0))));
    let three = d.file("three.elf", &pvh_elf(&code("three\n", Some(3))));
    let m = format!(
        "[system]\nname = \"st\"\n{}{}",
        partition("good", &ok, ""),
        partition("bad", &three, "")
    );
    let manifest = d.file("st.toml", m.as_bytes());
    let logs = d.0.join("logs");
    let (o, _) = up(&manifest, &logs, &["--accel", "tcg"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{out}\n{err}");
    assert!(out.contains("[good] ok"), "{out}");
    assert!(out.contains("[bad] three"), "{out}");
    assert!(
        out.contains("worst: bad status 3 (service status) -> exit status 3"),
        "{out}"
    );
    let log = std::fs::read_to_string(logs.join("bad.log")).unwrap();
    assert!(log.contains("[bad] three"), "{log}");
    assert!(
        log.starts_with("# "),
        "the log starts with the command line: {log}"
    );
}

#[test]
fn fault_restarts_up_to_the_limit() {
    let d = Dir::new("restart");
    let fault = d.file("f.elf", &pvh_elf(&code("boom\n", Some(101))));
    let m = format!(
        "[system]\nname = \"rs\"\n{}",
        partition("f", &fault, "on_fault = \"restart\"\nmax_restarts = 2")
    );
    let manifest = d.file("rs.toml", m.as_bytes());
    let logs = d.0.join("logs");
    let (o, _) = up(&manifest, &logs, &["-q"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(101), "{out}\n{err}");
    assert!(out.contains("f: on_fault = restart (2/2)"), "{out}");
    assert!(!out.contains("(3/2)"), "{out}");
    assert!(
        out.contains("status 101 (service page fault), 2 restart(s)"),
        "{out}"
    );
    let log = std::fs::read_to_string(logs.join("f.log")).unwrap();
    assert_eq!(log.matches("[f] boom").count(), 3, "{log}");
}

#[test]
fn a_restarted_partition_gets_its_channels_back() {
    let d = Dir::new("restart-ch");
    let fault = d.file("f.elf", &pvh_elf(&code("boom\n", Some(101))));
    let ok = d.file("ok.elf", &pvh_elf(&code("ok\n", Some(0))));
    let m = format!(
        "[system]\nname = \"rc\"\n{}{}[[right]]\nfrom = \"f\"\nto = \"g\"\ndirection = \"both\"\nring = \"64K\"\n{QUOTA}\n",
        partition("f", &fault, "on_fault = \"restart\"\nmax_restarts = 2"),
        partition("g", &ok, ""),
    );
    let manifest = d.file("rc.toml", m.as_bytes());
    let logs = d.0.join("logs");
    let (o, _) = up(&manifest, &logs, &["-q"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(101), "{out}\n{err}");
    // Each incarnation's QEMU completed the doorbell handshake (a refused one
    // would end with a QEMU error, not the guest's status 101).
    assert_eq!(out.matches("f ended: status 101").count(), 3, "{out}");
    assert!(!out.contains("refused"), "{out}");
    let log = std::fs::read_to_string(logs.join("f.log")).unwrap();
    assert_eq!(log.matches("[f] boom").count(), 3, "{log}");
}

/// Reads `child`'s stdout until a line contains `needle`; returns the lines read.
fn read_until(child: &mut Child, needle: &str) -> Vec<String> {
    let out = child.stdout.as_mut().unwrap();
    let mut r = BufReader::new(out);
    let mut lines = Vec::new();
    let t = Instant::now();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap() == 0 {
            panic!("vmpi ended before `{needle}`: {lines:#?}");
        }
        lines.push(l.clone());
        if l.contains(needle) {
            return lines;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no `{needle}`: {lines:#?}"
        );
    }
}

#[test]
fn ctrl_c_stops_every_vm_and_removes_every_file() {
    let d = Dir::new("sigint");
    let idle = d.file("idle.elf", &pvh_elf(&code("idle\n", None)));
    let mut m = String::from("[system]\nname = \"ci\"\n");
    for n in ["a", "b", "c"] {
        m.push_str(&partition(n, &idle, ""));
    }
    m.push_str(&format!(
        "[[right]]\nfrom = \"a\"\nto = \"b\"\ndirection = \"both\"\nring = \"64K\"\n{QUOTA}\n"
    ));
    m.push_str(&format!(
        "[[right]]\nfrom = \"c\"\nto = \"a\"\nring = \"4M\"\n{QUOTA}\n"
    ));
    let manifest = d.file("ci.toml", m.as_bytes());
    let logs = d.0.join("logs");
    let mut child = vmpi()
        .args([
            "up",
            manifest.to_str().unwrap(),
            "--log-dir",
            logs.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let lines = read_until(&mut child, "all 3 partition(s) up");
    // While it runs: one file per channel, sized from the rings.
    let ch0 = std::fs::metadata(format!("/dev/shm/vmpi-{pid}-0")).unwrap();
    let ch1 = std::fs::metadata(format!("/dev/shm/vmpi-{pid}-1")).unwrap();
    assert_eq!((ch0.len(), ch1.len()), (2 << 20, 16 << 20), "{lines:?}");
    // The launcher initialised the interconnect's header: magic, then the ranks.
    let head = std::fs::read(format!("/dev/shm/vmpi-{pid}-1")).unwrap();
    assert_eq!(&head[..8], b"VMPICHN1");
    let word = |o: usize| u32::from_le_bytes(head[o..o + 4].try_into().unwrap());
    // version, slots, data area (the 4 MiB ring), then world ranks of sides 0 and 1.
    assert_eq!((word(8), word(12), word(16)), (1, 256, 4 << 20));
    assert_eq!((word(24), word(28)), (0, 2), "ranks of a and c");
    assert!(
        !Path::new(&format!("/dev/shm/vmpi-{pid}-2")).exists(),
        "b and c were granted nothing"
    );
    // SAFETY: sending SIGINT to our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
    let o = child.wait_with_output().unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(130), "{out}\n{err}");
    assert!(
        out.contains("interrupted: stopping every partition"),
        "{out}"
    );
    assert!(out.contains("a            stopped by vmpi"), "{out}");
    assert_clean(pid);
}

#[test]
fn timeout_stops_the_system() {
    let d = Dir::new("timeout");
    let idle = d.file("idle.elf", &pvh_elf(&code("idle\n", None)));
    let m = format!("[system]\nname = \"to\"\n{}", partition("x", &idle, ""));
    let manifest = d.file("to.toml", m.as_bytes());
    let logs = d.0.join("logs");
    let (o, pid) = up(&manifest, &logs, &["--timeout", "1"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(124), "{out}\n{err}");
    assert!(out.contains("timeout: stopping every partition"), "{out}");
    assert_clean(pid);
}

/// Runs `vmpi ARGS` expecting failure with exactly one error line containing `want`,
/// and checks it left nothing behind.
fn fails(args: &[&str], env: &[(&str, &str)], want: &str) {
    let (o, pid) = run_env(args, env);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert_eq!(err.lines().count(), 1, "one message: {err}");
    assert!(
        err.starts_with("vmpi: error: ") && err.contains(want),
        "want `{want}` in: {err}"
    );
    assert_clean(pid);
}

#[test]
fn bad_input_gives_one_message_and_leaves_nothing() {
    let d = Dir::new("bad");
    let ok = d.file("ok.elf", &pvh_elf(&code("", Some(0))));
    let good = format!("[system]\nname = \"b\"\n{}", partition("a", &ok, ""));
    let m = |name: &str, text: &str| d.file(name, text.as_bytes()).to_string_lossy().into_owned();

    let unknown = m("unknown.toml", &format!("{good}colour = \"red\"\n"));
    fails(
        &["check", &unknown],
        &[],
        &format!("{unknown}:8: key `colour`: unknown key"),
    );
    fails(&["up", &unknown], &[], "key `colour`: unknown key");

    let dup = m("dup.toml", &format!("{good}{}", partition("a", &ok, "")));
    fails(
        &["up", &dup],
        &[],
        &format!("{dup}:9: key `partition.name`: duplicate partition name `a`"),
    );

    let missing = m(
        "missing.toml",
        &format!("{good}[[right]]\nfrom = \"a\"\nto = \"zz\"\nring = \"4K\"\n{QUOTA}\n"),
    );
    fails(
        &["graph", &missing],
        &[],
        &format!("{missing}:10: key `right.to`: no partition named `zz`"),
    );

    let two = format!("{good}{}", partition("b", &ok, ""));
    let big = m(
        "big.toml",
        &format!("{two}[[right]]\nfrom = \"a\"\nto = \"b\"\nring = \"1G\"\n{QUOTA}\n"),
    );
    fails(
        &["up", &big],
        &[],
        &format!("{big}:16: key `right.ring`: ring of 1 GiB does not fit in memory"),
    );

    let no_image = m(
        "noimg.toml",
        "[system]\nname = \"n\"\n[[partition]]\nname = \"a\"\nimage = \"gone.elf\"\nmemory = \"8M\"\n",
    );
    fails(
        &["up", &no_image],
        &[],
        "noimg.toml:5: key `partition.image`: image",
    );

    let no_service = m(
        "nosvc.toml",
        "[system]\nname = \"n\"\n[[partition]]\nname = \"a\"\nservice = \"no-such-service\"\nmemory = \"8M\"\n",
    );
    fails(
        &["up", &no_service],
        &[],
        "nosvc.toml:5: key `partition.service`: image",
    );
    fails(
        &["up", &no_service],
        &[],
        "for service `no-such-service` is missing: run `vmpi build",
    );

    // `vmpi build` of a service the partitions workspace lacks: cargo says why, then vmpi.
    let o = run(&["build", &no_service]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("building service `no-such-service`"), "{err}");
    assert!(
        err.trim_end().ends_with(
            "vmpi: error: building service `no-such-service` failed (cargo's messages are above)"
        ),
        "{err}"
    );

    let good = m("good.toml", &good);
    fails(
        &["up", &good],
        &[("VMPI_QEMU", "/nonexistent/qemu")],
        "VMPI_QEMU=/nonexistent/qemu does not exist",
    );
}

#[test]
fn check_and_graph_on_the_checked_in_manifests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for m in ["hello.toml", "demo.toml"] {
        let o = run(&["check", root.join(m).to_str().unwrap()]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{out}\n{err}");
        assert!(out.contains("is valid"), "{out}");
        let o = run(&["graph", root.join(m).to_str().unwrap()]);
        assert!(o.status.success());
        assert!(String::from_utf8_lossy(&o.stdout).contains("</svg>"));
    }
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["check", "build", "up", "graph"] {
        let o = run(&[sub, "--help"]);
        let (out, _) = text(&o);
        assert!(
            o.status.success() && out.contains("Usage: vmpi"),
            "{sub}: {out}"
        );
    }
}

/// The real partition images (built here through `vmpi build`): images/hello.toml
/// prints and succeeds; the five partitions of tests/data/five.toml come up with
/// their doorbell devices in the slots the command line names (the runtime stops
/// with MISSING_DEVICE otherwise) and succeed.
#[test]
fn real_hello_images_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let demo = root.join("tests/data/five.toml");
    let o = run(&["build", demo.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(err.contains("[1/1] building service `hello`"), "{err}");

    let d = Dir::new("real");
    let logs = d.0.join("logs");
    let hello = root.join("hello.toml");
    let (o, _) = up(&hello, &logs, &[]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("[hello] arg rank=0"), "{out}");
    assert!(
        out.contains("every partition succeeded -> exit status 0"),
        "{out}"
    );

    let (o, pid) = up(&demo, &logs, &["-q", "--timeout", "120"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("all 5 partition(s) up"), "{out}");
    let client = std::fs::read_to_string(logs.join("client.log")).unwrap();
    assert!(
        client.contains("[client] arg ch=2:2:0:262144:262144"),
        "{client}"
    );
    assert_clean(pid);
}
