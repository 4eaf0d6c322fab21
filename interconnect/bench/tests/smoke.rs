//! The benchmark binary runs, prints the documented JSON shape and leaves nothing
//! behind. No timing assertions: speed lives in the benchmark's own output.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fabric-bench");

/// Files of the run whose launcher has pid `pid`.
fn leftovers(pid: u32) -> Vec<String> {
    let prefix = format!("fabric-bench-{pid}-");
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn keys(o: &serde_json::Map<String, Value>) -> Vec<&str> {
    let mut k: Vec<&str> = o.keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

#[test]
fn quick_json_has_the_documented_records() {
    let child = Command::new(BIN)
        .args(["--quick", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fabric-bench");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "fabric-bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        leftovers(pid).is_empty(),
        "left in /dev/shm: {:?}",
        leftovers(pid)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON value");
    let recs = v.as_array().expect("a JSON array");
    let (mut lat, mut bw) = (Vec::new(), Vec::new());
    for r in recs {
        let o = r.as_object().expect("records are objects");
        let num = |k: &str| {
            o[k].as_f64()
                .unwrap_or_else(|| panic!("{k} is a number: {r}"))
        };
        let s = |k: &str| {
            o[k].as_str()
                .unwrap_or_else(|| panic!("{k} is a string: {r}"))
        };
        if o.contains_key("mode") {
            assert_eq!(
                keys(o),
                ["mode", "p50_ns", "p999_ns", "p99_ns", "pair", "size"],
                "{r}"
            );
            assert!(["fabric", "raw"].contains(&s("pair")), "{r}");
            assert!(["poll", "block"].contains(&s("mode")), "{r}");
            assert!(num("p50_ns") > 0.0 && num("p50_ns") <= num("p99_ns"), "{r}");
            assert!(num("p99_ns") <= num("p999_ns"), "{r}");
            lat.push((
                s("pair").to_owned(),
                s("mode").to_owned(),
                num("size") as u64,
            ));
        } else {
            assert_eq!(keys(o), ["mb_per_s", "pair", "size"], "{r}");
            assert!(["fabric", "memcpy"].contains(&s("pair")), "{r}");
            assert!(num("mb_per_s") > 0.0, "{r}");
            bw.push(s("pair").to_owned());
        }
    }
    // 8 B to 1 MiB in poll mode, each size for both pairs.
    for size in [8, 1 << 20] {
        for pair in ["fabric", "raw"] {
            assert!(
                lat.contains(&(pair.into(), "poll".into(), size)),
                "no {pair} poll record for {size} B"
            );
        }
    }
    bw.sort();
    assert_eq!(bw, ["fabric", "memcpy"]);
}

#[test]
fn interrupted_run_removes_its_files() {
    let mut child = Command::new(BIN)
        .args(["--rounds", "1000", "--sizes", "8"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run fabric-bench");
    let pid = child.id();
    let t = Instant::now();
    while leftovers(pid).len() < 3 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "files never appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
    let st = child.wait().unwrap();
    assert!(!st.success());
    assert!(
        leftovers(pid).is_empty(),
        "left in /dev/shm: {:?}",
        leftovers(pid)
    );
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}
