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

/// Calibrates the TSC against PIT channel 2 (10 ms). CPL 0, boot only.
pub(crate) fn calibrate() -> u64 {
    use crate::arch::{inb, outb};
    // SAFETY: PIT channel 2 gated through port 0x61 (speaker off), mode 0.
    unsafe {
        let g = inb(0x61);
        outb(0x61, (g & !0x02) | 0x01);
        outb(0x43, 0xb0);
        let count: u16 = 11932; // 10 ms at 1.193182 MHz
        outb(0x42, count as u8);
        outb(0x42, (count >> 8) as u8);
        let t0 = crate::arch::rdtsc();
        let mut t1 = t0;
        while inb(0x61) & 0x20 == 0 {
            t1 = crate::arch::rdtsc();
            if t1 - t0 > 1 << 36 {
                crate::console::kprint!(
                    "vmpi-rt: no PIT to calibrate the TSC against; pass tsc_khz=\n"
                );
                crate::console::exit(abi::exit::BAD_BOOT_INFO)
            }
        }
        outb(0x61, g);
        ((t1 - t0) / 10).max(1)
    }
}
