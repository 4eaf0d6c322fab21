//! The scenario partition: a workload or an attack written in the manifest, no Rust.
//!
//! # Script
//! One command-line word `script=STEP;STEP;...` (no spaces: the command line is
//! space-separated). A step is `OP` or `OP:KEY=VALUE,KEY=VALUE,...`; ranks are world
//! ranks (manifest order, first is 0).
//!
//! | step | what it does | outcome |
//! |---|---|---|
//! | `send:to=R,tag=T,size=N,count=C[,ms=M]` | `C` blocking sends of `N` bytes (N ≥ 8), each with a deadline of `M` ms (default 10000) | `ok` or the first error (the step stops there) |
//! | `flood:to=R,tag=T,size=N[,ms=M]` | non-blocking sends (`Deadline::NOW`) as fast as it can for `M` ms (default 10000); `WouldBlock` is ignored | `ok` or the first other error |
//! | `recv:from=R\|any,count=C[,tag=T][,ms=M]` | receives (any tag) until `C` messages with tag `T` (default: any) arrived, or `M` ms (default 30000) passed; checks each payload | `ok` or the error that ended it |
//! | `expect:OUTCOME` | the previous step's outcome must be `OUTCOME` (`ok`, `PermissionDenied`, `Timeout`, `Revoked`, `PeerDead`, `WouldBlock`, ...) | |
//! | `sleep:ms=M` | a deadline wait | `ok` |
//! | `scan` | records how many ivshmem devices (channels) the runtime found on its PCI bus | `ok` |
//! | `fault[:gen=G]` | panics in the service (the runtime reports a fault); with `gen`, only in generation `G` (read from its side of its channels) | `ok` if it does not panic |
//! | `reattach:to=R` | re-attaches to `R` after the monitor reopened their channel for a new generation of `R` (`Endpoint::reattach`) | `ok` (with `R`'s `generation`) or the error |
//! | `control:to=R,record=heartbeat\|garbage\|impersonate` | sends one control record to the monitor partition `R` on its channel: a valid heartbeat (with its own generation), 32 bytes of garbage, or a heartbeat claiming to come from another partition | `ok` or the send's error |
//! | `corrupt:to=R` | writes a malformed message (slot kind 0) into the next slot of its ring to `R`, published with a valid sequence number, and rings `R` | `ok` |
//! | `unrevoke:to=R,ms=M` | for `M` ms, keeps rewriting the control word of its channel to `R` to "open" (as if the monitor had not revoked it) | `ok` (with the `writes`) |
//! | `forge:to=R,ms=M` | for `M` ms, keeps rewriting `R`'s rights in their channel's control block to "may send anything, non-blocking too", and spoiling the channel header's magic | `ok` (with the `writes`) |
//!
//! Message `i` (from 0) of a `send` or `flood` by rank `s` holds `i` (u32 LE), `s`
//! (u32 LE), then byte `k` = `i * 31 + k` (mod 256) up to its size. A receiver
//! checks that, per source, and keeps an FNV-1a checksum of the payloads (tests
//! recompute it).
//!
//! # Report
//! One line `scenario: {json}` with each step's outcome and count, what was received
//! per source (`count` matching the tag, `other`, `bad` payloads, `in_order`,
//! `checksum`), and `expects_failed`. Exit status 0 if every `expect` held, 1 if not,
//! 2 for a script that does not parse.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write;
use core::time::Duration;

use fabric::Guest;
use fabric::interconnect::layout;
use fabric::interconnect::{ANY_SOURCE, ANY_TAG, Deadline, Endpoint, Error, Platform};

rt::entry!(main);

const FNV0: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Payload of message `i` from rank `s`, `n` bytes.
fn payload(buf: &mut [u8], i: u32, s: u32) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = match k {
            0..4 => i.to_le_bytes()[k],
            4..8 => s.to_le_bytes()[k - 4],
            _ => (i.wrapping_mul(31) as u8).wrapping_add(k as u8),
        };
    }
}

struct Step<'a> {
    op: &'a str,
    kv: Vec<(&'a str, &'a str)>,
}

impl<'a> Step<'a> {
    fn parse(s: &'a str) -> Result<Self, String> {
        let (op, rest) = s.split_once(':').unwrap_or((s, ""));
        let mut kv = Vec::new();
        if !rest.is_empty() && op != "expect" {
            for f in rest.split(',') {
                match f.split_once('=') {
                    Some(p) => kv.push(p),
                    None if f == "nb" => kv.push((f, "")),
                    None => return Err(format!("step `{s}`: `{f}` is not KEY=VALUE")),
                }
            }
        } else if op == "expect" {
            kv.push(("outcome", rest));
        }
        Ok(Step { op, kv })
    }

    fn get(&self, k: &str) -> Option<&'a str> {
        self.kv.iter().find(|p| p.0 == k).map(|p| p.1)
    }

    fn num(&self, k: &str, default: Option<u64>) -> Result<u64, String> {
        match self.get(k) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("step `{}`: bad {k}=`{v}`", self.op)),
            None => default.ok_or_else(|| format!("step `{}`: {k}= missing", self.op)),
        }
    }
}

#[derive(Default)]
struct Source {
    count: u64,
    other: u64,
    bad: u64,
    next: u32,
    in_order: bool,
    checksum: u64,
}

/// The variant name of an error (`PermissionDenied`, `Timeout`, ...).
fn name(e: &Error) -> String {
    let d = format!("{e:?}");
    d.split([' ', '{', '(']).next().unwrap_or("").to_string()
}

fn main() -> u8 {
    let Some(script) = rt::arg("script") else {
        rt::log!("scenario: no script= on the command line");
        return 2;
    };
    let steps: Result<Vec<Step>, String> = script
        .split(';')
        .filter(|s| !s.is_empty())
        .map(Step::parse)
        .collect();
    let steps = match steps {
        Ok(s) => s,
        Err(e) => {
            rt::log!("scenario: {e}");
            return 2;
        }
    };
    let mut ep = fabric::endpoint_or_exit();
    let me = ep.rank();
    let mut out = String::new();
    let mut last = String::from("ok");
    let mut failed = 0u32;
    let mut sources: BTreeMap<u32, Source> = BTreeMap::new();
    let mut sent: BTreeMap<u32, u64> = BTreeMap::new();
    let _ = write!(
        out,
        "{{\"name\":\"{}\",\"rank\":{me},\"steps\":[",
        rt::arg("name").unwrap_or("")
    );
    for (n, step) in steps.iter().enumerate() {
        let r = run(&mut ep, step, &mut sources, &mut sent);
        let (done, outcome, extra) = match r {
            Ok(x) => x,
            Err(e) => {
                rt::log!("scenario: {e}");
                return 2;
            }
        };
        if step.op == "expect" {
            let want = step.get("outcome").unwrap_or("");
            let held = want == last;
            if !held {
                failed += 1;
            }
            rt::log!(
                "scenario: expect {want}: {}",
                if held { "held" } else { "FAILED" }
            );
            let _ = write!(
                out,
                "{}{{\"op\":\"expect\",\"want\":\"{want}\",\"got\":\"{last}\",\"held\":{held}}}",
                if n > 0 { "," } else { "" }
            );
            continue;
        }
        rt::log!("scenario: {} -> {done} {outcome}", step.op);
        let _ = write!(
            out,
            "{}{{\"op\":\"{}\",\"done\":{done},\"outcome\":\"{outcome}\"{extra}}}",
            if n > 0 { "," } else { "" },
            step.op
        );
        last = outcome;
    }
    out.push_str("],\"received\":[");
    for (k, (src, s)) in sources.iter().enumerate() {
        let _ = write!(
            out,
            "{}{{\"from\":{src},\"count\":{},\"other\":{},\"bad\":{},\"in_order\":{},\"checksum\":\"{:#018x}\"}}",
            if k > 0 { "," } else { "" },
            s.count,
            s.other,
            s.bad,
            s.in_order,
            s.checksum
        );
    }
    let _ = write!(out, "],\"expects_failed\":{failed}}}");
    // One line, longer than `rt::log!`'s 512-byte buffer.
    rt::log_str(&format!("scenario: {out}"));
    u8::from(failed > 0)
}

type Ran = Result<(u64, String, String), String>;

/// This incarnation's generation: the generation word of its side of its channels.
fn generation(ep: &Endpoint<Guest>) -> u32 {
    (0..ep.size())
        .filter_map(|r| ep.channel(r))
        .map(|ch| {
            let off = layout::generation_off(ch.side());
            ch.region()
                .load32(off, core::sync::atomic::Ordering::Acquire)
        })
        .max()
        .unwrap_or(0)
}

fn run(
    ep: &mut Endpoint<Guest>,
    step: &Step<'_>,
    sources: &mut BTreeMap<u32, Source>,
    sent: &mut BTreeMap<u32, u64>,
) -> Ran {
    let w = ep.world();
    let me = ep.rank();
    match step.op {
        "expect" => Ok((0, String::new(), String::new())),
        "sleep" => {
            let ms = step.num("ms", None)?;
            let t = rt::time::now();
            let _ = rt::wait(Some(t.after(Duration::from_millis(ms))));
            // A doorbell can end a wait early: wait out the rest.
            while t.elapsed() < Duration::from_millis(ms) {
                let _ = rt::wait(Some(t.after(Duration::from_millis(ms))));
            }
            Ok((ms, "ok".into(), String::new()))
        }
        "scan" => {
            let regions = rt::shm_regions();
            let slots: Vec<String> = regions.iter().map(|r| r.pci().device.to_string()).collect();
            Ok((
                regions.len() as u64,
                "ok".into(),
                format!(",\"devices\":[{}]", slots.join(",")),
            ))
        }
        "fault" => match step.get("gen") {
            Some(g) if g.parse() != Ok(generation(ep)) => Ok((0, "ok".into(), String::new())),
            _ => panic!("scenario: fault step"),
        },
        "reattach" => {
            let to = step.num("to", None)? as u32;
            Ok(match ep.reattach(to) {
                Ok(g) => (1, "ok".into(), format!(",\"generation\":{g}")),
                Err(e) => (0, name(&e), String::new()),
            })
        }
        "control" => {
            let to = step.num("to", None)? as u32;
            let own = monitor::PartitionId::new(me as u16, generation(ep) as u16);
            let other = monitor::PartitionId::new((me as u16).wrapping_add(1), 0);
            let rec = match step.get("record") {
                Some("heartbeat") => {
                    monitor::control::FromPartition::Heartbeat { id: own }.encode()
                }
                Some("impersonate") => {
                    monitor::control::FromPartition::Heartbeat { id: other }.encode()
                }
                Some("garbage") => [0xAB; monitor::control::CONTROL_LEN],
                r => return Err(format!("control: bad record=`{}`", r.unwrap_or(""))),
            };
            Ok(match ep.send(&w, to, 0, &rec, ep.after_ms(5_000)) {
                Ok(()) => (1, "ok".into(), String::new()),
                Err(e) => (0, name(&e), String::new()),
            })
        }
        "unrevoke" | "forge" => {
            let to = step.num("to", None)? as u32;
            let Some(ch) = ep.channel(to) else {
                return Ok((0, "PermissionDenied".into(), String::new()));
            };
            let r = ch.region();
            // The words to keep rewriting: the peer's rights, or the control word.
            let forge = step.op == "forge";
            let (off, words): (usize, &[u32]) = if forge {
                let all = &[layout::MAY_SEND | layout::MAY_ISEND, 0, ANY_TAG - 1];
                (layout::RIGHTS + 12 * (1 - ch.side()), all)
            } else {
                (layout::CONTROL, &[layout::OPEN])
            };
            let until = rt::time::now().after(Duration::from_millis(step.num("ms", None)?));
            let mut writes = 0u64;
            while rt::time::now() < until {
                for (k, w) in words.iter().enumerate() {
                    r.store32(off + 4 * k, *w, core::sync::atomic::Ordering::Release);
                }
                if forge {
                    // The header's magic too: a guest must not need the header.
                    r.store32(0, 0xbad, core::sync::atomic::Ordering::Release);
                }
                writes += 1;
            }
            Ok((1, "ok".into(), format!(",\"writes\":{writes}")))
        }
        "corrupt" => {
            let to = step.num("to", None)? as u32;
            let Some(ch) = ep.channel(to) else {
                return Ok((0, "PermissionDenied".into(), String::new()));
            };
            let r = ch.region();
            let g = layout::read_header(r)
                .map_err(|e| format!("corrupt: channel header: {e:?}"))?
                .0;
            // The next slot of the direction this partition sends on.
            let n = sent.get(&to).copied().unwrap_or(0);
            let off = g.dir(ch.side()).slots + layout::LINE * (n % u64::from(g.slots)) as usize;
            let mut body = [0u8; layout::SLOT - 4];
            body[..4].copy_from_slice(&1u32.to_le_bytes()); // tag 1, length 0, kind 0
            r.write(off + 4, &body);
            let seq = layout::seq_word(layout::session(r), n + 1);
            r.store32(off, seq, core::sync::atomic::Ordering::Release);
            ep.platform().ring(to);
            Ok((1, "ok".into(), format!(",\"slot\":{n}")))
        }
        "send" | "flood" => {
            let to = step.num("to", None)? as u32;
            let tag = step.num("tag", Some(0))? as u32;
            let size = step.num("size", Some(8))?.max(8) as usize;
            let flood = step.op == "flood";
            let count = if flood {
                u64::MAX
            } else {
                step.num("count", None)?
            };
            let ms = step.num("ms", Some(10_000))?;
            let mut buf = vec![0u8; size];
            let t0 = rt::time::now();
            let stop = t0.after(Duration::from_millis(ms));
            let mut i: u32 = 0;
            let mut would_block = 0u64;
            let outcome = loop {
                if u64::from(i) >= count {
                    break "ok".to_string();
                }
                if flood && rt::time::now() >= stop {
                    break "ok".to_string();
                }
                payload(&mut buf, i, me);
                let dl = if flood {
                    Deadline::NOW
                } else {
                    ep.after_ms(ms)
                };
                match ep.send(&w, to, tag, &buf, dl) {
                    Ok(()) => i += 1,
                    Err(Error::WouldBlock { .. }) if flood => would_block += 1,
                    Err(e) => break name(&e),
                }
            };
            let us = t0.elapsed().as_micros();
            *sent.entry(to).or_default() += u64::from(i);
            Ok((
                u64::from(i),
                outcome,
                format!(",\"would_block\":{would_block},\"us\":{us}"),
            ))
        }
        "recv" => {
            let from = match step.get("from") {
                Some("any") | None => ANY_SOURCE,
                Some(v) => v.parse().map_err(|_| format!("recv: bad from=`{v}`"))?,
            };
            let tag = match step.get("tag") {
                Some(v) => v.parse().map_err(|_| format!("recv: bad tag=`{v}`"))?,
                None => ANY_TAG,
            };
            let count = step.num("count", None)?;
            let ms = step.num("ms", Some(30_000))?;
            let dl = ep.after_ms(ms);
            let mut buf = vec![0u8; 1 << 16];
            let mut want = vec![0u8; 1 << 16];
            let mut got = 0u64;
            let mut link_errors = 0u64;
            let mut last_link_error = String::new();
            let outcome = loop {
                if got >= count {
                    break "ok".to_string();
                }
                match ep.recv(&w, from, ANY_TAG, &mut buf, dl) {
                    Ok(st) => {
                        let s = sources.entry(st.source).or_insert_with(|| Source {
                            in_order: true,
                            checksum: FNV0,
                            ..Source::default()
                        });
                        if tag != ANY_TAG && st.tag != tag {
                            s.other += 1;
                            continue;
                        }
                        let m = &buf[..st.len.min(buf.len())];
                        let i = m
                            .get(..4)
                            .map_or(u32::MAX, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                        payload(&mut want[..m.len()], i, st.source);
                        if m.len() < 8 || m != &want[..m.len()] {
                            s.bad += 1;
                        }
                        if i != s.next {
                            s.in_order = false;
                        }
                        s.next = i.wrapping_add(1);
                        s.checksum = fnv(s.checksum, m);
                        s.count += 1;
                        got += 1;
                    }
                    // One peer's channel failing is its problem; keep serving the others.
                    Err(
                        e @ (Error::Revoked { .. }
                        | Error::PeerDead { .. }
                        | Error::Malformed { .. }),
                    ) if from == ANY_SOURCE => {
                        link_errors += 1;
                        last_link_error = name(&e);
                        if link_errors > 1000 {
                            break last_link_error.clone();
                        }
                    }
                    Err(e) => break name(&e),
                }
            };
            Ok((
                got,
                outcome,
                format!(",\"link_errors\":{link_errors},\"link_error\":\"{last_link_error}\""),
            ))
        }
        op => Err(format!("unknown step `{op}`")),
    }
}
