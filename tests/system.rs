//! Running whole systems with `vmpi up` from integration tests: the `vmpi` binary
//! (built once, with the test's profile), a temporary log folder, the run's output
//! and logs, and the check that nothing of a run is left behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use crate::{images, repo_root};

/// The `vmpi` binary, built (once) into the target directory of the calling test,
/// with that test's profile.
pub fn vmpi_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable");
        // target/PROFILE/deps/TEST-HASH
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
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh, empty folder named after `tag` and this process.
    pub fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("vmpi-test-{tag}-{}", std::process::id()));
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

/// Runs `vmpi up tests/MANIFEST` (images built first) with its logs in `logs`;
/// returns the output and the pid of the `vmpi` process.
pub fn up(manifest: &str, logs: &Path) -> (Output, u32) {
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

/// A run's standard output and error, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The serial log of partition `name`.
pub fn log(logs: &Path, name: &str) -> String {
    std::fs::read_to_string(logs.join(format!("{name}.log")))
        .unwrap_or_else(|e| panic!("no log of {name}: {e}"))
}

/// Nothing of run `pid` is left: no shm file, no run folder (doorbell and QMP
/// sockets), no process naming it.
pub fn assert_clean(pid: u32) {
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

/// FNV-1a, 64 bits (the services' checksum, recomputed independently).
pub fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// FNV-1a's starting value.
pub const FNV0: u64 = 0xcbf2_9ce4_8422_2325;
