//! Samples → percentiles, ratios and the two output formats.

use crate::peer::{BW_SIZE, RAW_INLINE};
use crate::stats::median_in_steps;
use crate::{Mode, Opts, Pair};
use std::fmt::Write;

/// One latency record (one-way nanoseconds = round trip / 2).
pub struct Latency {
    pub pair: Pair,
    pub mode: Mode,
    pub size: usize,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub samples: usize,
    /// Per-round fabric/raw p50 ratios (on the fabric record only).
    pub round_ratios: Vec<f64>,
}

/// One bandwidth record.
pub struct Bandwidth {
    pub pair: Pair,
    pub size: usize,
    /// Median over rounds, 10^6 bytes per second.
    pub mb_per_s: f64,
    pub rounds: Vec<f64>,
}

struct Series {
    pair: Pair,
    mode: Mode,
    size: usize,
    all: Vec<u64>,
    /// Per-round p50 in TSC ticks.
    round_p50: Vec<f64>,
}

/// Everything ping measured.
pub struct Results {
    tick: f64,
    resolution: u64,
    lat: Vec<Series>,
    bw: Vec<(Pair, Vec<f64>)>,
    rounds: usize,
    iters: usize,
    bw_msgs: usize,
    load: String,
}

/// Element at permille `pm` of sorted samples.
fn pct(sorted: &[u64], pm: usize) -> u64 {
    sorted[(sorted.len() - 1) * pm / 1000]
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[(v.len() - 1) / 2]
    }
}

fn size_name(z: usize) -> String {
    if z >= 1 << 20 && z.is_multiple_of(1 << 20) {
        format!("{} MiB", z >> 20)
    } else if z >= 1 << 10 && z.is_multiple_of(1 << 10) {
        format!("{} KiB", z >> 10)
    } else {
        format!("{z} B")
    }
}

impl Results {
    pub fn new(tick: f64, resolution: u64, o: &Opts) -> Results {
        Results {
            tick,
            resolution,
            lat: Vec::new(),
            bw: Vec::new(),
            rounds: o.rounds,
            iters: o.iters,
            bw_msgs: o.bw_msgs,
            load: std::fs::read_to_string("/proc/loadavg")
                .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
        }
    }

    pub fn add_latency(&mut self, pair: Pair, mode: Mode, size: usize, mut v: Vec<u64>) {
        v.sort_unstable();
        let p50 = median_in_steps(&v, self.resolution);
        let i = match self
            .lat
            .iter()
            .position(|s| (s.pair, s.mode, s.size) == (pair, mode, size))
        {
            Some(i) => i,
            None => {
                self.lat.push(Series {
                    pair,
                    mode,
                    size,
                    all: Vec::new(),
                    round_p50: Vec::new(),
                });
                self.lat.len() - 1
            }
        };
        self.lat[i].all.extend(v);
        self.lat[i].round_p50.push(p50);
    }

    pub fn add_stream(&mut self, pair: Pair, n: usize, secs: f64) {
        let mbs = (n * BW_SIZE) as f64 / secs / 1e6;
        match self.bw.iter_mut().find(|(p, _)| *p == pair) {
            Some((_, v)) => v.push(mbs),
            None => self.bw.push((pair, vec![mbs])),
        }
    }

    /// One-way nanoseconds of a round trip of `ticks`.
    fn ns(&self, ticks: f64) -> f64 {
        ticks / self.tick / 2.0
    }

    /// A short progress note: the latest 8-byte poll ratio and streaming figures.
    pub fn round_summary(&self) -> String {
        let last = |pair| {
            self.lat
                .iter()
                .find(|s| s.pair == pair && s.mode == Mode::Poll)
                .and_then(|s| s.round_p50.last().map(|&p| (s.size, p)))
        };
        let mut out = String::new();
        if let (Some((z, f)), Some((_, r))) = (last(Pair::Fabric), last(Pair::Raw)) {
            let _ = write!(
                out,
                ": {} one-way p50 fabric {:.0} ns, raw {:.0} ns",
                size_name(z),
                self.ns(f),
                self.ns(r)
            );
        }
        for (p, v) in &self.bw {
            if let Some(x) = v.last() {
                let _ = write!(out, "; {} {:.0} MB/s", p.bw_name(), x);
            }
        }
        out
    }

    pub fn latency(&mut self) -> Vec<Latency> {
        let mut out = Vec::new();
        for s in &mut self.lat {
            s.all.sort_unstable();
        }
        for s in &self.lat {
            if s.all.is_empty() {
                continue;
            }
            let round_ratios = if s.pair == Pair::Fabric {
                self.lat
                    .iter()
                    .find(|r| (r.pair, r.mode, r.size) == (Pair::Raw, s.mode, s.size))
                    .map(|r| {
                        s.round_p50
                            .iter()
                            .zip(&r.round_p50)
                            .map(|(&f, &r)| f / r.max(1.0))
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            out.push(Latency {
                pair: s.pair,
                mode: s.mode,
                size: s.size,
                p50: self.ns(median_in_steps(&s.all, self.resolution)),
                p99: self.ns(pct(&s.all, 990) as f64),
                p999: self.ns(pct(&s.all, 999) as f64),
                samples: s.all.len(),
                round_ratios,
            });
        }
        out
    }

    pub fn bandwidth(&self) -> Vec<Bandwidth> {
        self.bw
            .iter()
            .map(|(p, v)| Bandwidth {
                pair: *p,
                size: BW_SIZE,
                mb_per_s: median(v),
                rounds: v.clone(),
            })
            .collect()
    }

    /// The human-readable report.
    pub fn human(&self, lat: &[Latency], bw: &[Bandwidth], secs: f64) -> String {
        let mut o = String::new();
        let w = &mut o;
        let _ = writeln!(
            w,
            "fabric-bench: {} interleaved rounds (raw and fabric alternate, order swapped \
             every round), {} round trips per round up to 4 KiB (fewer above), {:.2} TSC \
             ticks/ns, TSC resolution {:.1} ns (round trips are quantised to it; p50 is interpolated \
             within that step, p99 and p99.9 are not), load \
             average {}, {:.1} s",
            self.rounds,
            self.iters,
            self.tick,
            self.resolution as f64 / self.tick,
            self.load,
            secs
        );
        let _ = writeln!(
            w,
            "  fabric: interconnect Endpoint::send/recv between ranks 0 and 1 of a \
             host::ShmWorld (default geometry), one process per rank"
        );
        let _ = writeln!(
            w,
            "  raw:    two processes and one /dev/shm file, no fabric: both directions' \
             sequence words share one 64-byte line; payloads up to {RAW_INLINE} B ride in \
             that line, larger ones are memcpy'd into a /dev/shm buffer before the \
             sequence store and memcpy'd out after it"
        );
        let _ = writeln!(
            w,
            "  block:  ping idles {} us before each round trip (untimed) so pong is asleep, \
             and polls for the reply (one wake-up per round trip): pong's fabric endpoint \
             with spin_ns = 0 (its polls, then the wake flag and the futex doorbell); raw \
             pong with 64 polls, then a wake flag and a futex on the sequence word\n",
            crate::peer::IDLE_NS / 1000
        );
        let _ = writeln!(
            w,
            "one-way latency (round trip / 2), ns      fabric p50    p99   p99.9 |   raw \
             p50    p99   p99.9 | fabric/raw p50: median of rounds (min-max)"
        );
        for f in lat.iter().filter(|l| l.pair == Pair::Fabric) {
            let r = lat
                .iter()
                .find(|r| (r.pair, r.mode, r.size) == (Pair::Raw, f.mode, f.size));
            let (rp50, rp99, rp999) = r.map_or((0.0, 0.0, 0.0), |r| (r.p50, r.p99, r.p999));
            let (lo, hi) = f
                .round_ratios
                .iter()
                .fold((f64::MAX, 0f64), |(a, b), &x| (a.min(x), b.max(x)));
            let _ = writeln!(
                w,
                "  {:5} {:>8}  ({:6} samples)      {:9.0} {:6.0} {:7.0} | {:9.0} {:6.0} {:7.0} | \
                 {:5.2}x ({:.2}-{:.2})",
                f.mode.name(),
                size_name(f.size),
                f.samples,
                f.p50,
                f.p99,
                f.p999,
                rp50,
                rp99,
                rp999,
                median(&f.round_ratios),
                lo,
                hi
            );
        }
        for g in lat
            .iter()
            .filter(|l| matches!(l.pair, Pair::Ring | Pair::RawX))
        {
            let r = lat
                .iter()
                .find(|r| (r.pair, r.mode, r.size) == (Pair::Raw, g.mode, g.size));
            let rp50 = r.map_or(0.0, |r| r.p50);
            let _ = writeln!(
                w,
                "  {:5} {:>8}  ({:6} samples)      {:9.0} {:6.0} {:7.0} | (diagnostic) \
                 /raw p50 {:5.2}x",
                g.pair.lat_name(),
                size_name(g.size),
                g.samples,
                g.p50,
                g.p99,
                g.p999,
                g.p50 / rp50.max(f64::MIN_POSITIVE),
            );
        }
        let _ = writeln!(
            w,
            "\nstreaming {} KiB messages ping -> pong, {} messages per measurement, {} \
             measurements per pair and round, median (MB = 10^6 bytes)",
            BW_SIZE >> 10,
            self.bw_msgs,
            crate::peer::BW_REPS
        );
        let _ = writeln!(
            w,
            "  fabric: Endpoint::send in a loop, receiver Endpoint::recv into a 64 KiB \
             buffer, one 8-byte ack at the end"
        );
        let _ = writeln!(
            w,
            "  memcpy: plain memcpy into one of two 64 KiB /dev/shm buffers (double \
             buffering), a full/empty counter pair as the only handshake, receiver \
             memcpy's out into a private 64 KiB buffer"
        );
        let base = bw.iter().find(|b| b.pair == Pair::Raw);
        for b in bw {
            let (lo, hi) = b
                .rounds
                .iter()
                .fold((f64::MAX, 0f64), |(a, c), &x| (a.min(x), c.max(x)));
            let _ = write!(
                w,
                "  {:6} {:8.0} MB/s ({:.0}-{:.0})",
                b.pair.bw_name(),
                b.mb_per_s,
                lo,
                hi
            );
            if let (Pair::Fabric, Some(m)) = (b.pair, base) {
                // Measurement i of both pairs ran back to back: ratio per pair of runs.
                let r: Vec<f64> = b.rounds.iter().zip(&m.rounds).map(|(f, m)| f / m).collect();
                let (lo, hi) = r
                    .iter()
                    .fold((f64::MAX, 0f64), |(a, c), &x| (a.min(x), c.max(x)));
                let _ = write!(
                    w,
                    "  = {:.0}% of memcpy (median of {} back-to-back pairs; {:.0}-{:.0}%)",
                    100.0 * median(&r),
                    r.len(),
                    100.0 * lo,
                    100.0 * hi
                );
            }
            let _ = writeln!(w);
        }
        o
    }
}

/// The `--json` output: one array, latency records then bandwidth records.
pub fn json(lat: &[Latency], bw: &[Bandwidth]) -> String {
    let mut recs: Vec<String> = lat
        .iter()
        .map(|l| {
            format!(
                "{{\"pair\":\"{}\",\"mode\":\"{}\",\"size\":{},\"p50_ns\":{:.1},\
                 \"p99_ns\":{:.1},\"p999_ns\":{:.1}}}",
                l.pair.lat_name(),
                l.mode.name(),
                l.size,
                l.p50,
                l.p99,
                l.p999
            )
        })
        .collect();
    recs.extend(bw.iter().map(|b| {
        format!(
            "{{\"pair\":\"{}\",\"size\":{},\"mb_per_s\":{:.1}}}",
            b.pair.bw_name(),
            b.size,
            b.mb_per_s
        )
    }));
    format!("[\n  {}\n]", recs.join(",\n  "))
}
