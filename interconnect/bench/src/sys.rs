//! Operating-system plumbing: the raw /dev/shm mapping of the baseline pairs, CPU
//! pinning, futex words, the TSC, and removing every file on Ctrl-C.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64};

/// A shared mapping of a whole /dev/shm file: the raw baselines' memory.
///
/// The baselines deliberately use plain `memcpy` (not the fabric's volatile copies)
/// and plain atomics: they are what the hardware does with no protocol around it.
pub struct Raw {
    base: *mut u8,
    len: usize,
}

impl Raw {
    /// Maps `path` (its whole length) shared, read-write.
    pub fn map(path: &Path) -> io::Result<Raw> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        let len = f.metadata()?.len() as usize;
        // SAFETY: a fresh shared mapping of a file we opened; the kernel picks the address.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Raw {
            base: base.cast(),
            len,
        })
    }

    /// Length of the mapping.
    pub fn len_bytes(&self) -> usize {
        self.len
    }

    fn check(&self, off: usize, size: usize, align: usize) {
        assert!(
            off.is_multiple_of(align) && off + size <= self.len,
            "raw shm access {off}+{size} of {}",
            self.len
        );
    }

    /// The u32 at `off`.
    pub fn w32(&self, off: usize) -> &AtomicU32 {
        self.check(off, 4, 4);
        // SAFETY: in bounds and aligned (checked; the mapping is page-aligned); the
        // mapping lives as long as self; atomics tolerate the peer's concurrent writes.
        unsafe { AtomicU32::from_ptr(self.base.add(off).cast()) }
    }

    /// Raw pointer to byte `off` (checked in bounds).
    pub fn ptr(&self, off: usize) -> *mut u8 {
        self.check(off, 1, 1);
        // SAFETY: in bounds (checked).
        unsafe { self.base.add(off) }
    }

    /// The u64 at `off`.
    pub fn w64(&self, off: usize) -> &AtomicU64 {
        self.check(off, 8, 8);
        // SAFETY: as in w32, for 8 bytes.
        unsafe { AtomicU64::from_ptr(self.base.add(off).cast()) }
    }

    /// Plain memcpy of `src` into the mapping at `off`.
    pub fn copy_in(&self, off: usize, src: &[u8]) {
        self.check(off, src.len(), 1);
        // SAFETY: the destination is in bounds (checked) and cannot overlap a private
        // buffer; the protocol (release/acquire on a sequence word) guarantees the peer
        // does not touch these bytes meanwhile.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.base.add(off), src.len()) }
    }

    /// Plain memcpy out of the mapping at `off` into `dst`.
    pub fn copy_out(&self, off: usize, dst: &mut [u8]) {
        self.check(off, dst.len(), 1);
        // SAFETY: as in copy_in, the other way round.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(off), dst.as_mut_ptr(), dst.len()) }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Creates `path` with `len` zero bytes (fails if it exists).
pub fn create_file(path: &Path, len: u64) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    f.set_len(len)?;
    Ok(f)
}

/// Blocks while the u32 at `w` equals `seen` (at most 100 ms; may return early).
pub fn futex_wait(w: &AtomicU32, seen: u32) {
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    // SAFETY: the address is a live, aligned u32 in a shared mapping; FUTEX_WAIT only
    // reads it (shared futex: works across processes).
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            w.as_ptr(),
            libc::FUTEX_WAIT,
            seen,
            &ts as *const libc::timespec,
        )
    };
}

/// Wakes every waiter on `w`.
pub fn futex_wake(w: &AtomicU32) {
    // SAFETY: as in futex_wait; FUTEX_WAKE does not access the word.
    unsafe { libc::syscall(libc::SYS_futex, w.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 = this thread; the size matches the set passed.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if r != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: i < CPU_SETSIZE, within the set.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect()
}

/// Pins this process to `cpu`.
pub fn pin(cpu: usize) -> io::Result<()> {
    // SAFETY: as in allowed_cpus.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: cpu < CPU_SETSIZE is checked by the caller's choice from allowed_cpus.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 = this process's (only) thread; the size matches the set.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks the kernel to kill this process when its parent dies.
pub fn die_with_parent() {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

/// The time-stamp counter.
#[inline(always)]
pub fn tsc() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86_64.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// TSC ticks per nanosecond, measured against the monotonic clock over 50 ms.
pub fn tsc_per_ns() -> f64 {
    let t0 = std::time::Instant::now();
    let c0 = tsc();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let c1 = tsc();
    (c1 - c0) as f64 / t0.elapsed().as_nanos() as f64
}

// ---- clean-up on signals ---------------------------------------------------------

static FILES: OnceLock<Vec<CString>> = OnceLock::new();
static CHILDREN: [AtomicI32; 2] = [AtomicI32::new(0), AtomicI32::new(0)];

/// Registers the files to remove and installs the handler for SIGINT, SIGTERM and
/// SIGHUP: it kills and reaps the two peers, removes the files and exits with
/// 128 + signal.
pub fn cleanup_on_signals(files: &[PathBuf]) {
    let names = files
        .iter()
        .filter_map(|p| CString::new(p.as_os_str().as_encoded_bytes()).ok())
        .collect();
    let _ = FILES.set(names);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only calls async-signal-safe functions
        // (kill, unlink, _exit) on data prepared before installation.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Records a peer's pid for the signal handler (slot 0 or 1; 0 = none).
pub fn set_child(slot: usize, pid: u32) {
    CHILDREN[slot].store(pid as i32, std::sync::atomic::Ordering::SeqCst);
}

extern "C" fn on_signal(sig: libc::c_int) {
    for c in &CHILDREN {
        let pid = c.load(std::sync::atomic::Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill and waitpid are async-signal-safe; pid is a child this process
            // started and has not reaped (reaping it here leaves no zombie behind).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
    if let Some(files) = FILES.get() {
        for f in files {
            // SAFETY: unlink is async-signal-safe; f is a valid C string.
            unsafe { libc::unlink(f.as_ptr()) };
        }
    }
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(128 + sig) };
}
