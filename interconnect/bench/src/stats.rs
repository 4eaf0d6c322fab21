//! Statistics shared by the two latency benchmarks: `fabric-bench` and `vmpi bench`
//! (which includes this file with `#[path]`).
//!
//! Round trips are timed with the TSC, which under `kvm_pvm` advances in steps of about
//! 26 ticks (10 ns). A plain median can then only be a multiple of the step, and the
//! ratio of two such medians jumps by 10-20% between neighbouring steps; the median
//! interpolated within its step (the grouped-data median) does not.

/// The clock's step in ticks: the most common difference between two differing reads
/// of `read`.
pub fn clock_step(read: impl Fn() -> u64) -> u64 {
    let mut steps = std::collections::BTreeMap::new();
    for _ in 0..20_000 {
        let a = read();
        let mut b = read();
        while b == a {
            b = read();
        }
        *steps.entry(b.wrapping_sub(a)).or_insert(0u32) += 1;
    }
    steps
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .map_or(1, |(d, _)| d)
}

/// Median of sorted samples taken with a clock that advances in steps of `step` ticks,
/// interpolated within the step that holds it; 0 for no samples.
pub fn median_in_steps<T: Copy + Into<u64>>(sorted: &[T], step: u64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    let step = step.max(1) as f64;
    let bin = |v: T| (v.into() as f64 / step).round();
    let b = bin(sorted[(n - 1) / 2]);
    let below = sorted.partition_point(|&v| bin(v) < b);
    let within = sorted.partition_point(|&v| bin(v) <= b) - below;
    (b - 0.5 + (n as f64 / 2.0 - below as f64) / within as f64) * step
}

#[cfg(test)]
mod tests {
    use super::median_in_steps;

    #[test]
    fn median_interpolates_within_the_clock_step() {
        assert_eq!(median_in_steps::<u64>(&[], 26), 0.0);
        // All in one step: that step's value.
        assert_eq!(median_in_steps(&[260u32; 5], 26), 260.0);
        // Four samples one step below, six at 20: the median lies a sixth into the step
        // that starts at 15.
        let v = [10u64, 10, 10, 10, 20, 20, 20, 20, 20, 20];
        assert!((median_in_steps(&v, 10) - (15.0 + 10.0 / 6.0)).abs() < 1e-9);
    }
}
