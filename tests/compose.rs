//! Compositions booted with `vmpi up` and the `demo` partition image:
//! - three partitions in two groups: messages flow inside a group, intact and in
//!   order; a send across groups is refused with `PermissionDenied`; nothing is left
//!   behind (no /dev/shm file, run folder, socket or QEMU);
//! - four partitions on a two-core host, two pairs exchanging 1,000 messages each
//!   way with spin-then-block: every message arrives (count and checksum, recomputed
//!   here); the latency seen is printed, not asserted.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use vmpi_tests::{images, repo_root, say};

/// The `vmpi` binary, built (once) into the target directory of this test, with
/// this test's profile.
fn vmpi_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable");
        // target/PROFILE/deps/compose-HASH
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/PROFILE")
            .to_path_buf();
        let target = profile_dir.parent().expect("target dir");
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.args(["build", "-p", "vmpi", "--bin", "vmpi"])
            .current_dir(repo_root())
            .env("CARGO_TARGET_DIR", target);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("run cargo build for vmpi");
        assert!(
            out.status.success(),
            "building vmpi failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        profile_dir.join("vmpi")
    })
}

/// A folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("vmpi-compose-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `vmpi up MANIFEST` (images built first) with its logs in `logs`; returns
/// the output and the pid of the `vmpi` process.
fn up(manifest: &str, logs: &Path) -> (Output, u32) {
    images();
    let manifest = repo_root().join("tests").join(manifest);
    let child = Command::new(vmpi_bin())
        .arg("up")
        .arg(&manifest)
        .args(["--timeout", "180", "--log-dir"])
        .arg(logs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vmpi up");
    let pid = child.id();
    (child.wait_with_output().expect("vmpi up"), pid)
}

fn text(o: &Output) -> String {
    format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn log(logs: &Path, name: &str) -> String {
    std::fs::read_to_string(logs.join(format!("{name}.log")))
        .unwrap_or_else(|e| panic!("no log of {name}: {e}"))
}

/// Nothing of run `pid` is left: no shm file, no run folder (doorbell and QMP
/// sockets), no process naming it.
fn assert_clean(pid: u32) {
    let prefix = format!("vmpi-{pid}-");
    let shm: Vec<_> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    assert!(shm.is_empty(), "left in /dev/shm: {shm:?}");
    let run_dir = std::env::temp_dir().join(format!("vmpi-{pid}"));
    assert!(!run_dir.exists(), "left {}", run_dir.display());
    let needle = run_dir.to_string_lossy().into_owned();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(p.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            assert!(!cmd.contains(&needle), "still running: {cmd}");
        }
    }
}

/// FNV-1a, 64 bits (the demo's checksum, recomputed independently).
fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}
const FNV0: u64 = 0xcbf2_9ce4_8422_2325;

/// Checksum of the demo's sequence check: message `i` is `i` (u32 LE) followed by
/// `i % 200` pattern bytes.
fn sequence_checksum(count: u32) -> u64 {
    (0..count).fold(FNV0, |h, i| {
        let mut m = i.to_le_bytes().to_vec();
        m.extend((0..i % 200).map(|k| (i as u8).wrapping_mul(31).wrapping_add(k as u8)));
        fnv(h, &m)
    })
}

/// Checksum of what rank `me` receives from `from` in the exchange: message `i` is
/// `i` (u32 LE) and `i * 2654435761 ^ from` (u32 LE).
fn exchange_checksum(from: u32, rounds: u32) -> u64 {
    (0..rounds).fold(FNV0, |h, i| {
        let mut m = i.to_le_bytes().to_vec();
        m.extend((i.wrapping_mul(2_654_435_761) ^ from).to_le_bytes());
        fnv(h, &m)
    })
}

fn assert_has(log: &str, needle: &str) {
    assert!(log.contains(needle), "expected `{needle}` in:\n{log}");
}

#[test]
fn three_partitions_two_groups() {
    let d = TempDir::new("three");
    let (o, pid) = up("compose.toml", &d.0);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    assert_has(&all, "every partition succeeded -> exit status 0");

    let (client, names, store) = (log(&d.0, "client"), log(&d.0, "names"), log(&d.0, "store"));
    // Inside group `naming`: 200 messages of 4..=203 bytes, intact and in order,
    // checked by names message by message and by checksum at both ends.
    let sum = format!("{:#018x}", sequence_checksum(200));
    assert_has(
        &names,
        &format!("names: 200 messages arrived intact and in order (checksum {sum})"),
    );
    assert_has(
        &client,
        &format!("client: naming: 200 messages arrived intact and in order (checksum {sum})"),
    );
    assert_has(&client, "client: naming: 6 lookups answered");
    // Inside group `storage`: non-blocking puts, gets of what was stored.
    assert_has(
        &client,
        "client: storage: 17 puts, 17 gets, values as stored",
    );
    // Across groups: names and store share no channel; each is refused.
    assert_has(
        &names,
        "names: send to rank 2 (no right) -> PermissionDenied",
    );
    assert_has(
        &store,
        "store: send to rank 1 (no right) -> PermissionDenied",
    );
    assert_has(
        &client,
        "client: send to rank 2 of `storage` (not a member) -> PermissionDenied",
    );
    assert_has(
        &client,
        "client: non-blocking send to names (not granted) -> PermissionDenied",
    );
    assert_has(&client, "client: all checks passed");
    for l in client.lines().filter(|l| l.contains("client:   ")) {
        say(format_args!("compose: {l}"));
    }
    assert_clean(pid);
}

#[test]
fn four_partitions_on_two_cores_exchange_every_message() {
    let d = TempDir::new("four");
    let (o, pid) = up("exchange.toml", &d.0);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(0), "{all}");
    assert_has(&all, "every partition succeeded -> exit status 0");
    for me in 0..4u32 {
        let peer = me ^ 1;
        let l = log(&d.0, &format!("e{me}"));
        let sum = format!("{:#018x}", exchange_checksum(peer, 1000));
        assert_has(
            &l,
            &format!(
                "exchange: rank {me}: received 1000/1000 messages from rank {peer} in order, checksum {sum}"
            ),
        );
        for line in l
            .lines()
            .filter(|l| l.contains("round trip") || l.contains("received"))
        {
            say(format_args!("exchange: {line}"));
        }
    }
    assert_clean(pid);
}

#[test]
fn bad_fabric_command_lines_end_with_a_status_and_a_reason() {
    let d = TempDir::new("bad");
    let (o, pid) = up("compose-bad.toml", &d.0);
    let all = text(&o);
    assert_ne!(o.status.code(), Some(0), "{all}");
    assert_has(&all, "garbled      status 90");
    assert_has(&all, "nodevice     status 91");
    assert_has(
        &log(&d.0, "garbled"),
        "fabric: bad ch=`x` (expected SLOT:PEER:SIDE:TX:RX:FLAGS:TAGS) (exit 90)",
    );
    assert_has(
        &log(&d.0, "nodevice"),
        "fabric: ch= slot 5 (peer 0): no ivshmem device in that slot (exit 91)",
    );
    assert_clean(pid);
}
