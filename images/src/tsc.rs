//! The host's TSC frequency, handed to every partition as `tsc_khz` (CPUID gives
//! guests none here).

use std::time::{Duration, Instant};

/// Where Linux publishes the TSC frequency when it knows it.
const SYSFS: &str = "/sys/devices/system/cpu/cpu0/tsc_freq_khz";

/// TSC frequency in kHz: from sysfs if present, else measured against
/// `CLOCK_MONOTONIC` over about 20 ms.
pub fn tsc_khz() -> u64 {
    std::fs::read_to_string(SYSFS)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&k: &u64| k > 0)
        .unwrap_or_else(|| calibrate(Duration::from_millis(20)))
}

/// Counts TSC ticks over `span` of monotonic time.
pub fn calibrate(span: Duration) -> u64 {
    let t0 = Instant::now();
    let c0 = rdtsc();
    while t0.elapsed() < span {
        std::hint::spin_loop();
    }
    let c1 = rdtsc();
    let ns = t0.elapsed().as_nanos().max(1);
    // ticks per ms = ticks * 1e6 / ns.
    u64::try_from(u128::from(c1.wrapping_sub(c0)) * 1_000_000 / ns).unwrap_or(u64::MAX)
}

/// The time-stamp counter (0 off x86_64).
pub fn rdtsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: rdtsc has no memory effects; every x86_64 CPU has it.
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_agrees_with_sysfs_or_is_plausible() {
        let measured = calibrate(Duration::from_millis(20));
        // Any x86_64 TSC runs between 100 MHz and 10 GHz.
        assert!((100_000..10_000_000).contains(&measured), "{measured} kHz");
        if let Some(k) = std::fs::read_to_string(SYSFS)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            // Within 10 %: a preempted calibration can be off, never by much.
            assert!(
                measured.abs_diff(k) * 10 < k,
                "measured {measured} vs sysfs {k}"
            );
        }
    }
}
