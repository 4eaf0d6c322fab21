//! `vmpi bench --quick --json` end to end: it boots the bench partitions (building
//! the image), runs every pair and prints one JSON array whose records name every
//! pair. No timing is asserted: speed lives in BENCHMARKS.md.

use serde_json::Value;
use std::process::Command;

#[test]
fn quick_json_run_reports_every_pair() {
    let out = Command::new(env!("CARGO_BIN_EXE_vmpi"))
        .args(["bench", "--quick", "--json"])
        .output()
        .expect("running vmpi bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vmpi bench failed:\n{stderr}");
    let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}:\n{stdout}"));
    let Value::Array(records) = json else {
        panic!("not a JSON array:\n{stdout}");
    };
    let mpich = !stderr.contains("mpich baseline is SKIPPED");
    let mut want = vec![
        ("vm-vm", "poll"),
        ("vm-vm", "block"),
        ("host-host", "poll"),
        ("host-host", "block"),
        ("raw", "poll"),
    ];
    if mpich {
        want.push(("mpich", "poll"));
    } else {
        eprintln!("note: MPICH is not installed here; its pair is not required");
    }
    let field = |r: &Value, k: &str| -> Option<String> {
        r.get(k).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    for r in &records {
        assert!(r.is_object(), "record is not an object: {r}");
        for k in ["pair", "mode"] {
            assert!(
                r.get(k).is_some_and(Value::is_string),
                "{k} is not a string: {r}"
            );
        }
        for k in ["size", "p50_ns", "p99_ns", "p999_ns"] {
            assert!(
                r.get(k).is_some_and(Value::is_number),
                "{k} is not a number: {r}"
            );
        }
    }
    for (pair, mode) in want {
        for size in ["8", "1024", "65536"] {
            let found = records.iter().any(|r| {
                field(r, "pair").as_deref() == Some(pair)
                    && field(r, "mode").as_deref() == Some(mode)
                    && field(r, "size").as_deref() == Some(size)
            });
            assert!(found, "no {pair} {mode} record of {size} B in:\n{stdout}");
        }
    }
    let left: Vec<_> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("vmpi-{}-", out_pid(&stderr))))
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

/// The bench's pid is not known from outside; its files are named by the QEMU
/// pins line's parent. Fall back to a name no file has.
fn out_pid(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("[bench] pid "))
        .unwrap_or("none")
        .trim()
        .to_string()
}
