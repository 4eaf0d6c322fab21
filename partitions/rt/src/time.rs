//! Monotonic time from the TSC, readable at CPL 3 without entering the runtime.

use crate::state::USER;
use core::time::Duration;

/// A point on the partition's monotonic clock (nanoseconds since the TSC was 0).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub struct Instant(u64);

impl Instant {
    /// Nanoseconds since the clock's origin.
    pub fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time since `earlier` (zero if `earlier` is later).
    pub fn duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// Time since this instant.
    pub fn elapsed(self) -> Duration {
        now().duration_since(self)
    }

    /// This instant plus `d`, saturating.
    pub fn after(self, d: Duration) -> Instant {
        Instant(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }

    /// The TSC value at this instant.
    pub(crate) fn to_tsc(self) -> u64 {
        let khz = u128::from(tsc_khz().max(1));
        u64::try_from(u128::from(self.0) * khz / 1_000_000).unwrap_or(u64::MAX)
    }
}

/// The TSC frequency in kHz (from `tsc_khz=`, uhyve's boot info, or calibrated).
pub fn tsc_khz() -> u64 {
    // SAFETY: written once before the service started; read-only since.
    unsafe { USER.get() }.tsc_khz
}

/// The time stamp counter (`rdtsc`, native at CPL 3).
pub fn tsc() -> u64 {
    crate::arch::rdtsc()
}

/// Converts TSC ticks to nanoseconds.
pub fn tsc_to_nanos(ticks: u64) -> u64 {
    u64::try_from(u128::from(ticks) * 1_000_000 / u128::from(tsc_khz().max(1))).unwrap_or(u64::MAX)
}

/// The current time.
pub fn now() -> Instant {
    Instant(tsc_to_nanos(tsc()))
}

/// TSC values recorded by the runtime: (at runtime entry, just before CPL 3).
pub fn boot_tsc() -> (u64, u64) {
    // SAFETY: as in `tsc_khz`.
    let u = unsafe { USER.get() };
    (u.entry_tsc, u.user_tsc)
}

/// Calibrates the TSC against the PIT (channel 0 counter read back, 10 ms).
/// CPL 0, boot only. Exits with [`abi::exit::BAD_BOOT_INFO`] when there is no
/// PIT or the result is implausible.
#[unsafe(link_section = ".text.rt")]
pub(crate) fn calibrate() -> u64 {
    use crate::arch::{inb, outb, rdtsc};
    const PIT_HZ: u64 = 1_193_182;
    const TICKS: u64 = PIT_HZ / 100;
    let fail = |why: &str| -> ! {
        crate::console::kprint!("vmpi-rt: cannot calibrate the TSC ({why}); pass tsc_khz=\n");
        crate::console::exit(abi::exit::BAD_BOOT_INFO)
    };
    // SAFETY: PIT channel 0 in rate-generator mode, counter latched and read
    // back; its interrupt is never unmasked (interrupts are off).
    let read = || unsafe {
        outb(0x43, 0x00);
        let lo = inb(0x40);
        let hi = inb(0x40);
        u16::from(lo) | u16::from(hi) << 8
    };
    // SAFETY: as above.
    unsafe {
        outb(0x43, 0x34);
        outb(0x40, 0xff);
        outb(0x40, 0xff);
    }
    let c0 = read();
    let t0 = rdtsc();
    let mut last = c0;
    let mut elapsed = 0u64;
    let mut t1 = t0;
    while elapsed < TICKS {
        let c = read();
        // The counter counts down and reloads at 0: accumulate the decrements.
        elapsed += u64::from(last.wrapping_sub(c));
        last = c;
        t1 = rdtsc();
        if t1.wrapping_sub(t0) > 1 << 32 {
            fail("the PIT does not count")
        }
    }
    let khz = (u128::from(t1 - t0) * u128::from(PIT_HZ) / (u128::from(elapsed) * 1000)) as u64;
    if !(100_000..=10_000_000).contains(&khz) {
        fail("implausible result")
    }
    khz
}
