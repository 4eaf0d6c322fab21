//! `vmpi bench`'s results: percentiles, the table, the JSON records, the SVG plot.

use crate::stats::median_in_steps;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One plotted line: pair, mode, (size, p50) points.
type Series = (Pair, Mode, Vec<(f64, f64)>);

/// Who talks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pair {
    /// Two partitions, the fabric over an ivshmem channel.
    VmVm,
    /// Two host processes, the fabric over /dev/shm files.
    HostHost,
    /// Two host processes bouncing one cache line (or copying through a buffer).
    Raw,
    /// MPICH over shared memory.
    Mpich,
}

impl Pair {
    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Pair::VmVm => "vm-vm",
            Pair::HostHost => "host-host",
            Pair::Raw => "raw",
            Pair::Mpich => "mpich",
        }
    }
}

/// How the receiver waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// Spins for ever.
    Poll,
    /// Spins 50 µs, then blocks until a doorbell.
    Block,
}

impl Mode {
    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Poll => "poll",
            Mode::Block => "block",
        }
    }
}

/// One series point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// Pair.
    pub pair: Pair,
    /// Mode.
    pub mode: Mode,
    /// Message size in bytes.
    pub size: usize,
}

#[derive(Default, Clone)]
struct Cell {
    /// Round trips in TSC ticks.
    rtt: Vec<u32>,
    /// Median round trip of each round (ticks), in round order.
    round_p50: Vec<f64>,
    /// Bandwidth: bytes and ticks, summed over rounds.
    bytes: u64,
    ticks: u64,
}

/// Everything measured in one run.
pub struct Results {
    khz: u64,
    /// The TSC's step in ticks (see `stats`).
    step: u64,
    cells: BTreeMap<Key, Cell>,
    /// Accelerator name.
    pub accel: String,
    /// Whether MPICH ran.
    pub mpich: bool,
    /// Wall time of the measurements.
    pub seconds: f64,
    /// Load average at the end.
    pub load: String,
}

/// One-way latency percentiles in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pct {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
}

/// Nearest-rank percentile (`per_mille` of 1000) of sorted values.
pub fn percentile(sorted: &[u32], per_mille: usize) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() * per_mille).div_ceil(1000).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

impl Results {
    /// Empty results; `khz` converts TSC ticks, which advance in steps of `step`.
    pub fn new(khz: u64, step: u64) -> Results {
        Results {
            khz: khz.max(1),
            step,
            cells: BTreeMap::new(),
            accel: String::new(),
            mpich: false,
            seconds: 0.0,
            load: String::new(),
        }
    }

    /// Adds one round's round-trip samples (TSC ticks).
    pub fn add_samples(&mut self, k: Key, rtt: &[u32]) {
        let c = self.cells.entry(k).or_default();
        c.rtt.extend_from_slice(rtt);
        let mut v = rtt.to_vec();
        v.sort_unstable();
        c.round_p50.push(median_in_steps(&v, self.step));
    }

    /// Ratios of `a`'s p50 to `b`'s, round by round (each pair of figures taken
    /// seconds apart), sorted.
    pub fn round_ratios(&self, a: Key, b: Key) -> Vec<f64> {
        let (Some(x), Some(y)) = (self.cells.get(&a), self.cells.get(&b)) else {
            return Vec::new();
        };
        let mut v: Vec<f64> = x
            .round_p50
            .iter()
            .zip(&y.round_p50)
            .filter(|(_, q)| **q > 0.0)
            .map(|(p, q)| p / q)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }

    /// Adds one bandwidth round.
    pub fn add_bw(&mut self, k: Key, bytes: u64, ticks: u64) {
        let c = self.cells.entry(k).or_default();
        c.bytes += bytes;
        c.ticks += ticks;
    }

    fn one_way_ns(&self, ticks: f64) -> f64 {
        ticks * 1e6 / self.khz as f64 / 2.0
    }

    /// One-way latency percentiles of `k`, if measured.
    pub fn pct(&self, k: Key) -> Option<Pct> {
        let c = self.cells.get(&k)?;
        if c.rtt.is_empty() {
            return None;
        }
        let mut v = c.rtt.clone();
        v.sort_unstable();
        Some(Pct {
            p50: self.one_way_ns(median_in_steps(&v, self.step)),
            p99: self.one_way_ns(percentile(&v, 990).into()),
            p999: self.one_way_ns(percentile(&v, 999).into()),
        })
    }

    /// Streaming bandwidth of `k` in MB/s (10^6 bytes), if measured.
    pub fn mb_per_s(&self, k: Key) -> Option<f64> {
        let c = self.cells.get(&k)?;
        (c.ticks > 0).then(|| c.bytes as f64 / (c.ticks as f64 / (self.khz as f64 * 1e3)) / 1e6)
    }

    fn sizes(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.cells.keys().map(|k| k.size).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn series(&self) -> Vec<(Pair, Mode)> {
        let mut v: Vec<(Pair, Mode)> = self.cells.keys().map(|k| (k.pair, k.mode)).collect();
        v.sort_unstable_by_key(|&(p, m)| (m, p));
        v.dedup();
        v
    }

    /// One progress line: this round's p50 of every pair measured at `size` in `mode`.
    pub fn brief(&self, mode: Mode, size: usize) -> String {
        self.series()
            .into_iter()
            .filter(|&(_, m)| m == mode)
            .filter_map(|(pair, _)| {
                let c = self.cells.get(&Key { pair, mode, size })?;
                let last = *c.round_p50.last()?;
                Some(format!(
                    "{} p50 {:.0} ns",
                    pair.name(),
                    self.one_way_ns(last)
                ))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The JSON array of records.
    pub fn json(&self) -> String {
        let recs: Vec<String> = self
            .cells
            .keys()
            .filter_map(|&k| {
                let p = self.pct(k)?;
                let bw = self
                    .mb_per_s(k)
                    .map_or("null".to_string(), |b| format!("{b:.1}"));
                Some(format!(
                    "{{\"pair\": \"{}\", \"mode\": \"{}\", \"size\": {}, \"p50_ns\": {:.1}, \"p99_ns\": {:.1}, \"p999_ns\": {:.1}, \"mb_per_s\": {bw}}}",
                    k.pair.name(),
                    k.mode.name(),
                    k.size,
                    p.p50,
                    p.p99,
                    p.p999
                ))
            })
            .collect();
        format!("[\n  {}\n]\n", recs.join(",\n  "))
    }

    fn ratio(&self, a: Key, b: Key) -> Option<f64> {
        Some(self.pct(a)?.p50 / self.pct(b)?.p50)
    }

    /// The human-readable table with ratios and the verdict on the targets.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "vmpi bench: one-way latency in ns (half of each round trip), p50 / p99 / p99.9; {}, TSC {} kHz in steps of {:.1} ns (p50 interpolated within its step), {:.0} s, load {}",
            self.accel,
            self.khz,
            self.one_way_ns(self.step as f64) * 2.0,
            self.seconds,
            self.load
        );
        let series = self.series();
        let _ = write!(s, "\n{:>8}", "size");
        for (p, m) in &series {
            let _ = write!(s, " | {:>24}", format!("{} {}", p.name(), m.name()));
        }
        let _ = writeln!(s, " | {:>7} | {:>7}", "vm/raw", "vm/mpi");
        for size in self.sizes() {
            let _ = write!(s, "{:>8}", human(size));
            for &(pair, mode) in &series {
                let cell = self
                    .pct(Key { pair, mode, size })
                    .map_or("-".to_string(), |p| {
                        format!("{:.0} / {:.0} / {:.0}", p.p50, p.p99, p.p999)
                    });
                let _ = write!(s, " | {cell:>24}");
            }
            let vm = Key {
                pair: Pair::VmVm,
                mode: Mode::Poll,
                size,
            };
            let r = |pair| {
                self.ratio(vm, Key { pair, ..vm })
                    .map_or("-".to_string(), |r| format!("{r:.2}x"))
            };
            let _ = writeln!(s, " | {:>7} | {:>7}", r(Pair::Raw), r(Pair::Mpich));
        }
        let _ = writeln!(s, "\nstreaming bandwidth in MB/s (windows of 64 messages):");
        let _ = write!(s, "{:>8}", "size");
        let bw_series: Vec<_> = series
            .iter()
            .copied()
            .filter(|&(p, m)| {
                self.sizes().iter().any(|&size| {
                    self.mb_per_s(Key {
                        pair: p,
                        mode: m,
                        size,
                    })
                    .is_some()
                })
            })
            .collect();
        for (p, m) in &bw_series {
            let _ = write!(s, " | {:>16}", format!("{} {}", p.name(), m.name()));
        }
        let _ = writeln!(s);
        for size in self.sizes() {
            let _ = write!(s, "{:>8}", human(size));
            for &(pair, mode) in &bw_series {
                let b = self
                    .mb_per_s(Key { pair, mode, size })
                    .map_or("-".to_string(), |b| format!("{b:.0}"));
                let _ = write!(s, " | {b:>16}");
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "\n{}", self.verdict());
        s
    }

    /// The targets at the smallest size measured (8 B in a default run).
    pub fn verdict(&self) -> String {
        let Some(&size) = self.sizes().first() else {
            return "no results".into();
        };
        let vm = Key {
            pair: Pair::VmVm,
            mode: Mode::Poll,
            size,
        };
        let mut s = String::new();
        let line = |s: &mut String, name: &str, pair: Pair, limit: f64| match self
            .ratio(vm, Key { pair, ..vm })
        {
            Some(pooled) => {
                // The verdict takes the median of the per-round ratios: the machine's
                // speed level shifts over time, so figures seconds apart compare best.
                let rr = self.round_ratios(vm, Key { pair, ..vm });
                let med = rr
                    .get(rr.len().saturating_sub(1) / 2)
                    .copied()
                    .unwrap_or(pooled);
                let lo = rr.first().copied().unwrap_or(pooled);
                let hi = rr.last().copied().unwrap_or(pooled);
                let _ = writeln!(
                    s,
                    "target: vm-vm {size} B p50 (poll) at most {limit}x {name}: {med:.3}x (median of {} per-round ratios, range {lo:.2}-{hi:.2}; all samples pooled {pooled:.3}x) -> {}",
                    rr.len(),
                    if med <= limit { "MET" } else { "MISSED" }
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "target: vm-vm {size} B p50 (poll) vs {name}: not measured"
                );
            }
        };
        line(&mut s, "raw", Pair::Raw, 1.2);
        line(&mut s, "mpich", Pair::Mpich, 0.5);
        s
    }

    /// A log-log SVG of p50 one-way latency against message size, one line per
    /// (pair, mode).
    pub fn svg(&self) -> String {
        let (w, h) = (760.0, 480.0);
        let (l, r, t, b) = (70.0, 180.0, 40.0, 50.0);
        let sizes = self.sizes();
        let pts: Vec<Series> = self
            .series()
            .into_iter()
            .map(|(p, m)| {
                let v = sizes
                    .iter()
                    .filter_map(|&size| {
                        let q = self.pct(Key {
                            pair: p,
                            mode: m,
                            size,
                        })?;
                        Some((size as f64, q.p50.max(1.0)))
                    })
                    .collect();
                (p, m, v)
            })
            .collect();
        let all: Vec<(f64, f64)> = pts.iter().flat_map(|x| x.2.iter().copied()).collect();
        let lx = |x: f64| x.max(1.0).log10();
        let (x0, x1) = (
            all.iter().map(|p| lx(p.0)).fold(f64::MAX, f64::min).floor(),
            all.iter().map(|p| lx(p.0)).fold(f64::MIN, f64::max).ceil(),
        );
        let (y0, y1) = (
            all.iter().map(|p| lx(p.1)).fold(f64::MAX, f64::min).floor(),
            all.iter().map(|p| lx(p.1)).fold(f64::MIN, f64::max).ceil(),
        );
        let (x1, y1) = (x1.max(x0 + 1.0), y1.max(y0 + 1.0));
        let px = |x: f64| l + (lx(x) - x0) / (x1 - x0) * (w - l - r);
        let py = |y: f64| h - b - (lx(y) - y0) / (y1 - y0) * (h - t - b);
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{l}\" y=\"22\" font-size=\"15\">vmpi bench: one-way latency p50 (ns) vs message size (bytes), log-log</text>\n"
        );
        let mut d = x0;
        while d <= x1 + 1e-9 {
            let x = px(10f64.powf(d));
            let _ = writeln!(
                s,
                "<line x1=\"{x:.1}\" y1=\"{t}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">1e{d:.0}</text>",
                h - b,
                h - b + 18.0
            );
            d += 1.0;
        }
        let mut d = y0;
        while d <= y1 + 1e-9 {
            let y = py(10f64.powf(d));
            let _ = writeln!(
                s,
                "<line x1=\"{l}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">1e{d:.0}</text>",
                w - r,
                l - 6.0,
                y + 4.0
            );
            d += 1.0;
        }
        let colors = [
            "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
        ];
        for (i, (p, m, v)) in pts.iter().enumerate() {
            let c = colors[i % colors.len()];
            let dash = if *m == Mode::Block {
                " stroke-dasharray=\"6 4\""
            } else {
                ""
            };
            let path: Vec<String> = v
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
                path.join(" ")
            );
            for &(x, y) in v {
                let _ = writeln!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"/>",
                    px(x),
                    py(y)
                );
            }
            let ly = t + 20.0 + 20.0 * i as f64;
            let _ = writeln!(
                s,
                "<line x1=\"{:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{c}\" stroke-width=\"2\"{dash}/><text x=\"{:.1}\" y=\"{:.1}\">{} {}</text>",
                w - r + 15.0,
                w - r + 45.0,
                w - r + 52.0,
                ly + 4.0,
                p.name(),
                m.name()
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn human(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{}M", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{}K", n >> 10)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&v, 500), 500);
        assert_eq!(percentile(&v, 990), 990);
        assert_eq!(percentile(&v, 999), 999);
        assert_eq!(percentile(&[7], 999), 7);
        assert_eq!(percentile(&[], 500), 0);
    }

    #[test]
    fn records_ratios_and_verdict() {
        let mut r = Results::new(1_000_000, 1); // 1 tick = 1 ns
        let vm = Key {
            pair: Pair::VmVm,
            mode: Mode::Poll,
            size: 8,
        };
        r.add_samples(vm, &[200, 200, 200]);
        r.add_samples(
            Key {
                pair: Pair::Raw,
                ..vm
            },
            &[200, 200],
        );
        r.add_samples(
            Key {
                pair: Pair::Mpich,
                ..vm
            },
            &[1000],
        );
        r.add_bw(vm, 1_000_000, 1_000_000);
        assert_eq!(r.pct(vm).unwrap().p50, 100.0);
        assert_eq!(r.mb_per_s(vm), Some(1000.0));
        let j = r.json();
        assert!(j.starts_with('[') && j.trim_end().ends_with(']'), "{j}");
        assert!(
            j.contains("\"pair\": \"mpich\"") && j.contains("\"mb_per_s\": 1000.0"),
            "{j}"
        );
        let v = r.verdict();
        assert!(
            v.contains(": 1.000x (median of 1") && v.contains(": 0.200x (median of 1"),
            "{v}"
        );
        assert_eq!(v.matches("-> MET").count(), 2, "{v}");
        // Two more rounds where vm-vm is 10x raw: the median ratio misses.
        for _ in 0..2 {
            r.add_samples(vm, &[2000]);
            r.add_samples(
                Key {
                    pair: Pair::Raw,
                    ..vm
                },
                &[200],
            );
        }
        assert_eq!(
            r.round_ratios(
                vm,
                Key {
                    pair: Pair::Raw,
                    ..vm
                }
            ),
            [1.0, 10.0, 10.0]
        );
        assert!(
            r.verdict().contains("raw: 10.000x (median of 3"),
            "{}",
            r.verdict()
        );
        assert!(r.verdict().contains("MISSED"));
        assert!(r.svg().contains("<polyline") && r.table().contains("vm-vm poll"));
    }
}
