//! `vmpi bench --quick --json` end to end: it boots the bench partitions (building
//! the image), runs every pair and prints one JSON array whose records name every
//! pair. No timing is asserted: speed lives in BENCHMARKS.md.

use std::process::Command;

/// A small JSON value (enough to check the bench's output is valid JSON).
#[derive(Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected `{}` at byte {}", c as char, self.i))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        let rest = &self.s[self.i..];
        match rest.first() {
            Some(b'[') => {
                self.i += 1;
                let mut v = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(v));
                }
                loop {
                    v.push(self.value()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(v));
                        }
                        _ => return Err(format!("bad array at byte {}", self.i)),
                    }
                }
            }
            Some(b'{') => {
                self.i += 1;
                let mut v = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(v));
                }
                loop {
                    let Json::Str(k) = self.value()? else {
                        return Err(format!("object key expected at byte {}", self.i));
                    };
                    self.eat(b':')?;
                    v.push((k, self.value()?));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(v));
                        }
                        _ => return Err(format!("bad object at byte {}", self.i)),
                    }
                }
            }
            Some(b'"') => {
                self.i += 1;
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i] != b'"' {
                    if self.s[self.i] == b'\\' {
                        self.i += 1;
                    }
                    self.i += 1;
                }
                let t = String::from_utf8_lossy(&self.s[start..self.i.min(self.s.len())]);
                self.eat(b'"')?;
                Ok(Json::Str(t.into_owned()))
            }
            _ if rest.starts_with(b"null") => {
                self.i += 4;
                Ok(Json::Null)
            }
            _ if rest.starts_with(b"true") => {
                self.i += 4;
                Ok(Json::Bool(true))
            }
            _ if rest.starts_with(b"false") => {
                self.i += 5;
                Ok(Json::Bool(false))
            }
            _ => {
                let n = rest
                    .iter()
                    .take_while(|c| c.is_ascii_digit() || b"+-.eE".contains(c))
                    .count();
                let t = std::str::from_utf8(&rest[..n]).map_err(|e| e.to_string())?;
                let v = t
                    .parse::<f64>()
                    .map_err(|_| format!("bad value at byte {}", self.i))?;
                self.i += n;
                Ok(Json::Num(v))
            }
        }
    }
}

fn parse(text: &str) -> Result<Json, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let v = p.value()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("trailing bytes at {}", p.i));
    }
    Ok(v)
}

#[test]
fn the_json_checker_rejects_what_is_not_json() {
    assert!(parse("[{\"a\": 1.5, \"b\": null}]").is_ok());
    assert!(parse("[{\"a\": 1,}]").is_err());
    assert!(parse("[1] x").is_err());
    assert!(parse("{\"a\" 1}").is_err());
}

#[test]
fn quick_json_run_reports_every_pair() {
    let out = Command::new(env!("CARGO_BIN_EXE_vmpi"))
        .args(["bench", "--quick", "--json"])
        .output()
        .expect("running vmpi bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vmpi bench failed:\n{stderr}");
    let Json::Arr(records) = parse(&stdout).unwrap_or_else(|e| panic!("{e}:\n{stdout}")) else {
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
    let field = |r: &[(String, Json)], k: &str| -> Option<String> {
        r.iter().find(|(n, _)| n == k).map(|(_, v)| match v {
            Json::Str(s) => s.clone(),
            Json::Num(n) => n.to_string(),
            other => format!("{other:?}"),
        })
    };
    for r in &records {
        let Json::Obj(r) = r else {
            panic!("record is not an object: {r:?}");
        };
        for k in ["pair", "mode", "size", "p50_ns", "p99_ns", "p999_ns"] {
            assert!(field(r, k).is_some(), "record without {k}: {r:?}");
        }
        for k in ["size", "p50_ns", "p99_ns", "p999_ns"] {
            assert!(
                matches!(r.iter().find(|(n, _)| n == k), Some((_, Json::Num(_)))),
                "{k} is not a number: {r:?}"
            );
        }
    }
    for (pair, mode) in want {
        for size in ["8", "1024", "65536"] {
            let found = records.iter().any(|r| {
                let Json::Obj(r) = r else { return false };
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
