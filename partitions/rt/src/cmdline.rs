//! The command line (`-append`): space-separated `key=value` pairs. The runtime
//! splits it once at boot; the service reads the pairs with [`crate::args`].

use crate::console::{self, kprint};
use crate::state::USER;
use abi::{exit, key};

/// Settings the runtime itself consumes.
pub(crate) struct Settings {
    pub tsc_khz: Option<u64>,
    pub ecam: Option<u64>,
    pub need_shm: usize,
    pub need_doorbell: bool,
    pub virtio_blk: bool,
}

#[unsafe(link_section = ".text.rt")]
fn bad(msg: &str, token: &[u8]) -> ! {
    kprint!("vmpi-rt: malformed command line: {msg}: \"");
    console::write(token);
    kprint!("\" (expected space-separated key=value pairs)\n");
    console::exit(exit::BAD_COMMAND_LINE)
}

#[unsafe(link_section = ".text.rt")]
fn number(k: &[u8], v: &[u8]) -> u64 {
    let (digits, radix) = match v {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (v, 10),
    };
    let parsed = core::str::from_utf8(digits)
        .ok()
        .and_then(|s| u64::from_str_radix(s, radix).ok());
    match parsed {
        Some(n) => n,
        None => {
            kprint!(
                "vmpi-rt: malformed command line: {} needs a number, got \"",
                core::str::from_utf8(k).unwrap_or("?")
            );
            console::write(v);
            kprint!("\"\n");
            console::exit(exit::BAD_COMMAND_LINE)
        }
    }
}

/// Splits the command line copied at entry; exits with
/// [`exit::BAD_COMMAND_LINE`] on anything malformed.
#[unsafe(link_section = ".text.rt")]
pub(crate) fn parse() -> Settings {
    // SAFETY: boot, single-threaded.
    let user = unsafe { USER.get() };
    let mut s = Settings {
        tsc_khz: None,
        ecam: None,
        need_shm: 0,
        need_doorbell: false,
        virtio_blk: false,
    };
    let len = user.cmdline_len;
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
                bad("byte outside printable ASCII", &line[start..=i])
            }
            if c == b'=' && eq.is_none() {
                eq = Some(i);
            }
            i += 1;
        }
        let tok = &line[start..i];
        let Some(eq) = eq else { bad("no '=' in", tok) };
        if eq == start {
            bad("empty key in", tok)
        }
        if n == abi::MAX_ARGS {
            bad("more pairs than the runtime accepts, at", tok)
        }
        user.args[n] = (start as u16, eq as u16, eq as u16 + 1, i as u16);
        n += 1;
        let (k, v) = (&line[start..eq], &line[eq + 1..i]);
        if k == key::TSC_KHZ.as_bytes() {
            let f = number(k, v);
            if f == 0 {
                bad("zero TSC frequency", tok)
            }
            s.tsc_khz = Some(f);
        } else if k == key::PCI_ECAM.as_bytes() {
            let a = number(k, v);
            if a & 0xf_ffff != 0 || a >= 1 << 39 {
                bad("ECAM address not 1 MiB-aligned below 512 GiB", tok)
            }
            s.ecam = Some(a);
        } else if k == key::NEED_SHM.as_bytes() {
            let m = number(k, v);
            if m > abi::MAX_SHM as u64 {
                bad("more shared-memory devices than the runtime maps", tok)
            }
            s.need_shm = m as usize;
        } else if k == key::VIRTIO_BLK_TEST.as_bytes() {
            s.virtio_blk = number(k, v) != 0;
        } else if k == key::NEED_DOORBELL.as_bytes() {
            s.need_doorbell = number(k, v) != 0;
        }
    }
    user.nargs = n;
    s
}
