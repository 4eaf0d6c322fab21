//! The service's side (CPL 3): entry, system-call wrappers, logging, panics.

use crate::state::USER;
use abi::sys;
use core::arch::asm;
use core::fmt::{self, Write};

unsafe extern "Rust" {
    /// Defined by [`crate::entry!`] in the service crate.
    fn __vmpi_service_main() -> u8;
}

/// First code at CPL 3: sets up the service's heap and logger, runs its `main`.
pub(crate) extern "C" fn user_entry() -> ! {
    let mut setup = crate::start::Setup::default();
    let mut err = LineBuf::new();
    if !crate::cmdline::parse(&mut setup, &mut err) {
        let e = err.as_str();
        setup.err_ptr = e.as_ptr() as u64;
        setup.err_len = e.len() as u64;
    }
    syscall(sys::SETUP, &raw const setup as u64, 0);
    crate::heap::init_user();
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    // SAFETY: the service crate defines the symbol through `rt::entry!`.
    let status = unsafe { __vmpi_service_main() };
    exit(status)
}

#[inline(always)]
fn syscall(n: u64, a: u64, b: u64) -> u64 {
    let r: u64;
    // SAFETY: `int3` enters the runtime's system-call handler, which reads at
    // most the memory named by the arguments and preserves every register but rax.
    unsafe { asm!("int3", inlateout("rax") n => r, in("rdi") a, in("rsi") b, options(nostack)) }
    r
}

/// Ends the partition with `status` (0..=99; larger values are refused by the
/// runtime as a bad system call).
pub fn exit(status: u8) -> ! {
    syscall(sys::EXIT, u64::from(status), 0);
    // The runtime never returns from EXIT.
    loop {
        core::hint::spin_loop();
    }
}

/// Writes one line to the console (at most 4096 bytes).
pub fn log_str(s: &str) {
    let b = &s.as_bytes()[..s.len().min(4096)];
    if crate::arch::cpl() == 0 {
        crate::console::write(b);
        crate::console::write(b"\n");
    } else {
        syscall(sys::LOG, b.as_ptr() as u64, b.len() as u64);
    }
}

/// Lets pending interrupts in; returns at once.
pub fn yield_now() {
    syscall(sys::YIELD, 0, 0);
}

/// Why [`wait`] returned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Wake(u32);

impl Wake {
    /// The deadline passed with no doorbell.
    pub fn timed_out(self) -> bool {
        self.0 == 0
    }

    /// Bit mask of doorbell vectors that rang (see [`crate::Doorbell::wake_bit`]).
    pub fn doorbells(self) -> u32 {
        self.0
    }
}

/// Blocks until a doorbell interrupt arrives or `deadline` passes (`None`: no
/// deadline). A doorbell that rang since the last `wait` returns at once.
pub fn wait(deadline: Option<crate::time::Instant>) -> Wake {
    let d = deadline.map_or(u64::MAX, |d| d.to_tsc());
    if crate::platform() == crate::Platform::Uhyve {
        // No interrupt controller and no doorbells under uhyve: wait here, at
        // native speed, rather than in emulated ring 0.
        while crate::arch::rdtsc() < d {
            core::hint::spin_loop();
        }
        return Wake(0);
    }
    let r: u64;
    // SAFETY: WAIT touches no memory of the service and follows the C calling
    // convention (hence the clobbers), see `abi::sys::WAIT`.
    unsafe {
        asm!("int3", inlateout("rax") sys::WAIT => r, in("rdi") d, clobber_abi("C"), options(nostack));
    }
    Wake(r as u32)
}

/// A fixed buffer for formatting a line at CPL 3 (truncates).
pub struct LineBuf {
    buf: [u8; 512],
    len: usize,
}

impl LineBuf {
    /// An empty line.
    pub const fn new() -> Self {
        Self {
            buf: [0; 512],
            len: 0,
        }
    }

    /// The text so far.
    pub fn as_str(&self) -> &str {
        match core::str::from_utf8(&self.buf[..self.len]) {
            Ok(s) => s,
            // Truncation may cut a character: keep the valid prefix.
            Err(e) => core::str::from_utf8(&self.buf[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

impl Default for LineBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Formats and logs one line (used by [`crate::log!`]).
pub fn log_fmt(args: fmt::Arguments<'_>) {
    let mut l = LineBuf::new();
    let _ = l.write_fmt(args);
    log_str(l.as_str());
}

struct Logger;
static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        log_fmt(format_args!("[{} {}] {}", r.level(), r.target(), r.args()));
    }

    fn flush(&self) {}
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if crate::arch::cpl() == 0 {
        crate::console::kprint!("vmpi-rt: runtime panic: {info}\n");
        crate::console::exit(abi::exit::RUNTIME_PANIC)
    }
    let mut l = LineBuf::new();
    let _ = write!(l, "{info}");
    let s = l.as_str();
    syscall(sys::PANIC, s.as_ptr() as u64, s.len() as u64);
    loop {
        core::hint::spin_loop();
    }
}

/// The command line's `key=value` pairs, in order.
pub fn args() -> impl Iterator<Item = (&'static str, &'static str)> {
    // SAFETY: written once before the service started; read-only since.
    let u: &'static crate::state::UserInfo = unsafe { USER.get() };
    u.args[..u.nargs].iter().map(move |&(ks, ke, vs, ve)| {
        let s =
            |a: u16, b: u16| core::str::from_utf8(&u.cmdline[a as usize..b as usize]).unwrap_or("");
        (s(ks, ke), s(vs, ve))
    })
}

/// The value of the last `key=...` on the command line.
pub fn arg(key: &str) -> Option<&'static str> {
    args().filter(|(k, _)| *k == key).last().map(|(_, v)| v)
}

/// Logs `len` bytes at address `ptr` through the system call as it is, without
/// checks on this side: for tests that the runtime refuses foreign buffers.
pub fn log_raw(ptr: usize, len: usize) {
    syscall(sys::LOG, ptr as u64, len as u64);
}

/// An address inside the runtime's private data (for fault-injection tests:
/// the service reading it must page-fault).
pub fn debug_runtime_address() -> usize {
    crate::boot::layout().rt as usize
}

/// An address inside the runtime's own code (supervisor-only; for
/// fault-injection tests).
pub fn debug_runtime_code_address() -> usize {
    crate::boot::layout().start as usize
}

/// Makes system call `n` with arguments `a`, `b` as it is: for tests that the
/// runtime refuses bad calls. Services use the typed functions.
pub fn syscall_raw(n: u64, a: u64, b: u64) -> u64 {
    syscall(n, a, b)
}
