//! The command line (`-append`, or uhyve's kernel arguments): space-separated
//! `key=value` pairs. Parsed at CPL 3 by the runtime's prologue before the
//! service's `main` (ring 0 is emulated and slow: about 10 µs per loop
//! iteration under `kvm_pvm`); the settings the runtime consumes go back to
//! ring 0 through the one-time `SETUP` call.

use crate::start::Setup;
use crate::state::USER;
use crate::user::LineBuf;
use abi::key;
use core::fmt::Write;

fn number(k: &[u8], v: &[u8], err: &mut LineBuf) -> Option<u64> {
    let (digits, radix) = match v {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (v, 10),
    };
    let parsed = core::str::from_utf8(digits)
        .ok()
        .and_then(|s| u64::from_str_radix(s, radix).ok());
    if parsed.is_none() {
        let _ = write!(
            err,
            "malformed command line: {} needs a number, got \"{}\"",
            core::str::from_utf8(k).unwrap_or("?"),
            core::str::from_utf8(v).unwrap_or("?")
        );
    }
    parsed
}

fn bad(err: &mut LineBuf, msg: &str, token: &[u8]) {
    let _ = write!(
        err,
        "malformed command line: {msg}: \"{}\" (expected space-separated key=value pairs)",
        core::str::from_utf8(token).unwrap_or("?")
    );
}

/// Splits the command line into the user info's pairs and fills `s`. On a
/// malformed line, returns false with the reason in `err`.
pub(crate) fn parse(s: &mut Setup, err: &mut LineBuf) -> bool {
    // SAFETY: CPL 3, before the service's `main`: nothing else uses the user
    // info yet; the runtime wrote it before entering CPL 3.
    let user = unsafe { USER.get() };
    if user.cmdline_len == usize::MAX {
        match user.cmdline.iter().position(|&c| c == 0) {
            Some(n) => user.cmdline_len = n,
            None => {
                let _ = write!(err, "command line longer than {} bytes", abi::MAX_CMDLINE);
                return false;
            }
        }
    }
    let len = user.cmdline_len.min(abi::MAX_CMDLINE);
    let line = &user.cmdline[..len];
    let mut i = 0;
    let mut n = 0;
    while i < len {
        if line[i] == b' ' {
            i += 1;
            continue;
        }
        let start = i;
        let mut eq = None;
        while i < len && line[i] != b' ' {
            let c = line[i];
            if !(0x21..=0x7e).contains(&c) {
                bad(err, "byte outside printable ASCII", &line[start..=i]);
                return false;
            }
            if c == b'=' && eq.is_none() {
                eq = Some(i);
            }
            i += 1;
        }
        let tok = &line[start..i];
        let Some(eq) = eq else {
            bad(err, "no '=' in", tok);
            return false;
        };
        if eq == start {
            bad(err, "empty key in", tok);
            return false;
        }
        if n == abi::MAX_ARGS {
            bad(err, "more pairs than the runtime accepts, at", tok);
            return false;
        }
        user.args[n] = (start as u16, eq as u16, eq as u16 + 1, i as u16);
        n += 1;
        let (k, v) = (&line[start..eq], &line[eq + 1..i]);
        if k == key::TSC_KHZ.as_bytes() {
            let Some(f) = number(k, v, err) else {
                return false;
            };
            if f == 0 {
                bad(err, "zero TSC frequency", tok);
                return false;
            }
            s.tsc_khz = f;
        } else if k == key::PCI_ECAM.as_bytes() {
            let Some(a) = number(k, v, err) else {
                return false;
            };
            if a == 0 || a & 0xf_ffff != 0 || a >= 1 << 39 {
                bad(err, "ECAM address not 1 MiB-aligned below 512 GiB", tok);
                return false;
            }
            s.ecam = a;
        } else if k == key::NEED_SHM.as_bytes() {
            let Some(m) = number(k, v, err) else {
                return false;
            };
            if m > abi::MAX_SHM as u64 {
                bad(err, "more shared-memory devices than the runtime maps", tok);
                return false;
            }
            s.need_shm = m;
        } else if k == key::VIRTIO_BLK_TEST.as_bytes() {
            let Some(b) = number(k, v, err) else {
                return false;
            };
            s.virtio_blk = b;
        } else if k == key::NEED_DOORBELL.as_bytes() {
            let Some(b) = number(k, v, err) else {
                return false;
            };
            s.need_doorbell = b;
        }
    }
    user.nargs = n;
    true
}
