//! Shared memory: the one module with `unsafe` that touches memory a peer can write.
//!
//! A [`Region`] is a (pointer, length) span of shared memory. Every access goes through
//! its methods: 8/4-byte atomics at checked, aligned offsets, and volatile byte copies
//! into or out of private buffers. No `&`/`&mut` to plain data in the region is ever
//! formed; the only references are to `AtomicU64`/`AtomicU32` cells (interior mutable),
//! created for the duration of one access. Offsets are checked against the length on
//! every access, so a wrong offset is a panic of *our* code, never an out-of-bounds
//! access; offsets derived from peer data are validated by the caller before use.
//!
//! Under `cfg(loom)` the region is a vector of loom atomics with the same interface, so
//! the ring protocol in `ring.rs` is model-checked unchanged.

use alloc::sync::Arc;
use core::sync::atomic::Ordering;

/// Something that keeps a region's memory alive (a mapping, an allocation).
pub trait Backing: Send + Sync {}
impl<T: Send + Sync> Backing for T {}

#[cfg(not(loom))]
pub use real::Region;

#[cfg(not(loom))]
mod real {
    use super::*;
    use core::sync::atomic::{AtomicU32, AtomicU64};

    /// A span of shared memory (see the module docs).
    #[derive(Clone)]
    pub struct Region {
        base: *mut u8,
        len: usize,
        _keep: Option<Arc<dyn Backing>>,
    }

    // SAFETY: a Region only ever accesses its memory through atomics and volatile
    // copies, which are sound to perform from any thread.
    unsafe impl Send for Region {}
    // SAFETY: as for Send: no method hands out references to non-atomic data.
    unsafe impl Sync for Region {}

    struct HeapBlock {
        ptr: *mut u8,
        layout: core::alloc::Layout,
    }
    // SAFETY: the block is only freed on drop, and only accessed through Region.
    unsafe impl Send for HeapBlock {}
    // SAFETY: as above.
    unsafe impl Sync for HeapBlock {}
    impl Drop for HeapBlock {
        fn drop(&mut self) {
            // SAFETY: ptr came from alloc_zeroed with this layout and is freed once.
            unsafe { alloc::alloc::dealloc(self.ptr, self.layout) }
        }
    }

    /// The panic of a wrong offset (out of line: the checks stay a compare and a branch).
    #[cold]
    #[inline(never)]
    fn out_of_range(off: usize, size: usize, len: usize) -> ! {
        panic!("shared-memory access out of range: {off}+{size} of {len}")
    }

    impl Region {
        /// Wraps raw shared memory.
        ///
        /// # Safety
        /// `base` must be 64-byte aligned and valid for reads and writes of `len` bytes
        /// for as long as this region or a clone of it lives (`keep`, if given, is held
        /// until then). The memory may be written concurrently by other threads,
        /// processes or VMs: that is what this type is for.
        pub unsafe fn from_raw(base: *mut u8, len: usize, keep: Option<Arc<dyn Backing>>) -> Self {
            assert!(
                (base as usize).is_multiple_of(64),
                "shared region must be 64-byte aligned"
            );
            Region {
                base,
                len,
                _keep: keep,
            }
        }

        /// A zeroed, 64-byte aligned region on the heap (threads in one process, tests,
        /// fuzzing).
        pub fn heap(len: usize) -> Self {
            let layout = core::alloc::Layout::from_size_align(len.max(64), 64).expect("layout");
            // SAFETY: the layout has a non-zero size.
            let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
            if ptr.is_null() {
                alloc::alloc::handle_alloc_error(layout);
            }
            let keep: Arc<dyn Backing> = Arc::new(HeapBlock { ptr, layout });
            // SAFETY: freshly allocated, aligned, len bytes, kept alive by `keep`.
            unsafe { Self::from_raw(ptr, len, Some(keep)) }
        }

        /// Length in bytes.
        pub fn len(&self) -> usize {
            self.len
        }

        /// True if the region has no bytes.
        pub fn is_empty(&self) -> bool {
            self.len == 0
        }

        #[inline]
        fn check(&self, off: usize, size: usize, align: usize) {
            if !off.is_multiple_of(align) || self.len < size || off > self.len - size {
                out_of_range(off, size, self.len);
            }
        }

        #[inline]
        fn a64(&self, off: usize) -> &AtomicU64 {
            self.check(off, 8, 8);
            // SAFETY: in bounds and 8-aligned (checked; base is 64-aligned); the memory
            // stays valid while self lives; AtomicU64 has interior mutability, so
            // concurrent writers elsewhere are allowed.
            unsafe { AtomicU64::from_ptr(self.base.add(off).cast()) }
        }

        #[inline]
        fn a32(&self, off: usize) -> &AtomicU32 {
            self.check(off, 4, 4);
            // SAFETY: as in a64, for 4 bytes at a 4-aligned offset.
            unsafe { AtomicU32::from_ptr(self.base.add(off).cast()) }
        }

        /// Atomic load of the u64 at `off`.
        #[inline]
        pub fn load64(&self, off: usize, o: Ordering) -> u64 {
            self.a64(off).load(o)
        }
        /// Atomic store of the u64 at `off`.
        #[inline]
        pub fn store64(&self, off: usize, v: u64, o: Ordering) {
            self.a64(off).store(v, o)
        }
        /// Atomic load of the u32 at `off`.
        #[inline]
        pub fn load32(&self, off: usize, o: Ordering) -> u32 {
            self.a32(off).load(o)
        }
        /// Atomic store of the u32 at `off`.
        #[inline]
        pub fn store32(&self, off: usize, v: u32, o: Ordering) {
            self.a32(off).store(v, o)
        }
        /// Sequentially consistent store of the u64 at `off` (a full barrier: an
        /// `xchg` on x86, cheaper than a store plus `mfence`).
        #[inline]
        pub fn swap64(&self, off: usize, v: u64) {
            self.a64(off).swap(v, Ordering::SeqCst);
        }
        /// Atomic add to the u32 at `off`; returns the previous value.
        #[inline]
        pub fn add32(&self, off: usize, v: u32) -> u32 {
            self.a32(off).fetch_add(v, Ordering::SeqCst)
        }
        /// Atomic add to the u64 at `off`.
        #[inline]
        pub fn add64(&self, off: usize, v: u64) {
            self.a64(off).fetch_add(v, Ordering::Relaxed);
        }

        /// Raw address of the u32 at `off` (for futex-style waits on the host).
        pub fn addr32(&self, off: usize) -> *const u32 {
            self.check(off, 4, 4);
            // SAFETY: in bounds (checked).
            unsafe { self.base.add(off).cast() }
        }

        /// Copies `dst.len()` bytes at `off` out of the region (volatile reads).
        pub fn read(&self, off: usize, dst: &mut [u8]) {
            self.check(off, dst.len(), 1);
            // SAFETY: the source range is in bounds (checked); it is only read with
            // volatile loads, so bytes a peer changes meanwhile are merely garbage.
            unsafe { copy_out(self.base.add(off), dst) }
        }

        /// Copies `src` into the region at `off` (volatile writes).
        pub fn write(&self, off: usize, src: &[u8]) {
            self.check(off, src.len(), 1);
            // SAFETY: the destination range is in bounds (checked); only volatile stores.
            unsafe { copy_in(self.base.add(off), src) }
        }
    }

    /// The widest word a volatile access moves: 16 bytes with SSE2 (host), else 8
    /// (the soft-float guest target).
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    type Wide = core::arch::x86_64::__m128i;
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    type Wide = u64;
    const W: usize = core::mem::size_of::<Wide>();

    /// From this size on, copies use `rep movsb` (fast on CPUs with ERMS/FSRM).
    const BULK: usize = 512;

    /// A bulk copy the compiler cannot see into: `rep movsb` in inline assembly, so
    /// like a volatile access it is performed exactly as written, whatever a peer does
    /// to the bytes meanwhile. Integer-only, so fine on the soft-float guest target.
    ///
    /// # Safety
    /// `src` must be valid for reads and `dst` for writes of `n` bytes.
    #[cfg(target_arch = "x86_64")]
    unsafe fn bulk(dst: *mut u8, src: *const u8, n: usize) {
        // SAFETY: the caller guarantees both ranges; rep movsb touches exactly those n
        // bytes (the direction flag is clear by the ABI); no stack use.
        unsafe {
            core::arch::asm!(
                "rep movsb",
                inout("rcx") n => _,
                inout("rdi") dst => _,
                inout("rsi") src => _,
                options(nostack, preserves_flags)
            )
        };
    }

    /// Elsewhere: byte-wise volatile copy.
    ///
    /// # Safety
    /// As for the x86-64 version.
    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn bulk(dst: *mut u8, src: *const u8, n: usize) {
        for i in 0..n {
            // SAFETY: i < n, in both ranges.
            unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
        }
    }

    /// Volatile copy from shared memory into a private buffer, four wide words at a
    /// time where the source is aligned.
    ///
    /// # Safety
    /// `src` must be valid for reads of `dst.len()` bytes.
    unsafe fn copy_out(src: *const u8, dst: &mut [u8]) {
        let n = dst.len();
        let d = dst.as_mut_ptr();
        if n >= BULK {
            // SAFETY: src is valid for n reads (caller), d for n writes (the slice).
            return unsafe { bulk(d, src, n) };
        }
        let mut i = 0;
        if (src as usize).is_multiple_of(W) {
            while i + 4 * W <= n {
                // SAFETY: i + 4W <= n: all reads and writes are in bounds; src+i is
                // W-aligned (i is a multiple of W); unaligned writes to the private buffer.
                unsafe {
                    let s = src.add(i).cast::<Wide>();
                    let v = [
                        s.read_volatile(),
                        s.add(1).read_volatile(),
                        s.add(2).read_volatile(),
                        s.add(3).read_volatile(),
                    ];
                    d.add(i).cast::<[Wide; 4]>().write_unaligned(v);
                }
                i += 4 * W;
            }
            while i + 8 <= n {
                // SAFETY: in bounds; src+i is 8-aligned.
                unsafe {
                    d.add(i)
                        .cast::<u64>()
                        .write_unaligned(src.add(i).cast::<u64>().read_volatile())
                };
                i += 8;
            }
        }
        while i < n {
            // SAFETY: i < n, in bounds.
            dst[i] = unsafe { src.add(i).read_volatile() };
            i += 1;
        }
    }

    /// Volatile copy from a private buffer into shared memory.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `src.len()` bytes.
    unsafe fn copy_in(dst: *mut u8, src: &[u8]) {
        let n = src.len();
        let s = src.as_ptr();
        if n >= BULK {
            // SAFETY: dst is valid for n writes (caller), s for n reads (the slice).
            return unsafe { bulk(dst, s, n) };
        }
        let mut i = 0;
        if (dst as usize).is_multiple_of(W) {
            while i + 4 * W <= n {
                // SAFETY: i + 4W <= n: in bounds; dst+i is W-aligned.
                unsafe {
                    let v = s.add(i).cast::<[Wide; 4]>().read_unaligned();
                    let q = dst.add(i).cast::<Wide>();
                    q.write_volatile(v[0]);
                    q.add(1).write_volatile(v[1]);
                    q.add(2).write_volatile(v[2]);
                    q.add(3).write_volatile(v[3]);
                }
                i += 4 * W;
            }
            while i + 8 <= n {
                // SAFETY: in bounds; dst+i is 8-aligned.
                unsafe {
                    dst.add(i)
                        .cast::<u64>()
                        .write_volatile(s.add(i).cast::<u64>().read_unaligned())
                };
                i += 8;
            }
        }
        while i < n {
            // SAFETY: i < n, in bounds.
            unsafe { dst.add(i).write_volatile(src[i]) };
            i += 1;
        }
    }
}

#[cfg(loom)]
pub use model::Region;

#[cfg(loom)]
mod model {
    use super::*;
    use loom::sync::atomic::AtomicU64;

    /// Loom model of a shared region: one loom atomic per 8-byte word.
    #[derive(Clone)]
    pub struct Region {
        words: Arc<alloc::vec::Vec<AtomicU64>>,
        len: usize,
    }

    impl Region {
        /// A zeroed model region.
        pub fn heap(len: usize) -> Self {
            let words = (0..len.div_ceil(8)).map(|_| AtomicU64::new(0)).collect();
            Region {
                words: Arc::new(words),
                len,
            }
        }
        /// Length in bytes.
        pub fn len(&self) -> usize {
            self.len
        }
        /// True if empty.
        pub fn is_empty(&self) -> bool {
            self.len == 0
        }
        fn w(&self, off: usize) -> &AtomicU64 {
            &self.words[off / 8]
        }
        /// Atomic load.
        pub fn load64(&self, off: usize, o: Ordering) -> u64 {
            self.w(off).load(o)
        }
        /// Atomic store.
        pub fn store64(&self, off: usize, v: u64, o: Ordering) {
            self.w(off).store(v, o)
        }
        /// Atomic load of a u32 (little-endian half of a word).
        pub fn load32(&self, off: usize, o: Ordering) -> u32 {
            (self.w(off).load(o) >> ((off % 8) * 8)) as u32
        }
        /// Atomic store of a u32 (read-modify-write of its word).
        pub fn store32(&self, off: usize, v: u32, o: Ordering) {
            let sh = (off % 8) * 8;
            let m = 0xffff_ffffu64 << sh;
            let _ = self.w(off).fetch_update(o, Ordering::Relaxed, |x| {
                Some((x & !m) | (u64::from(v) << sh))
            });
        }
        /// Sequentially consistent store of a u64.
        pub fn swap64(&self, off: usize, v: u64) {
            self.w(off).swap(v, Ordering::SeqCst);
        }
        /// Atomic add to a u32.
        pub fn add32(&self, off: usize, v: u32) -> u32 {
            let old = self.load32(off, Ordering::SeqCst);
            self.store32(off, old.wrapping_add(v), Ordering::SeqCst);
            old
        }
        /// Atomic add to a u64.
        pub fn add64(&self, off: usize, v: u64) {
            self.w(off).fetch_add(v, Ordering::Relaxed);
        }
        /// Byte copy out (relaxed word loads).
        pub fn read(&self, off: usize, dst: &mut [u8]) {
            let mut word = (usize::MAX, 0u64);
            for (i, b) in dst.iter_mut().enumerate() {
                let o = off + i;
                if word.0 != o / 8 {
                    word = (o / 8, self.w(o).load(Ordering::Relaxed));
                }
                *b = (word.1 >> ((o % 8) * 8)) as u8;
            }
        }
        /// Byte copy in (relaxed stores; read-modify-write for partial words).
        pub fn write(&self, off: usize, src: &[u8]) {
            let mut i = 0;
            while i < src.len() {
                let o = off + i;
                if o % 8 == 0 && i + 8 <= src.len() {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&src[i..i + 8]);
                    self.w(o).store(u64::from_le_bytes(b), Ordering::Relaxed);
                    i += 8;
                    continue;
                }
                let sh = (o % 8) * 8;
                let x = self.w(o).load(Ordering::Relaxed);
                let y = (x & !(0xffu64 << sh)) | (u64::from(src[i]) << sh);
                self.w(o).store(y, Ordering::Relaxed);
                i += 1;
            }
        }
    }
}

/// Host-only system calls: mapping /dev/shm files and futex waits on shared words.
#[cfg(all(feature = "std", not(loom)))]
pub mod host {
    use super::Region;
    use alloc::sync::Arc;
    use std::os::fd::AsRawFd;

    struct Mapping {
        ptr: *mut libc::c_void,
        len: usize,
    }
    // SAFETY: the mapping is only unmapped on drop and accessed through Region.
    unsafe impl Send for Mapping {}
    // SAFETY: as above.
    unsafe impl Sync for Mapping {}
    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: ptr/len are exactly what mmap returned; unmapped once.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }

    /// Maps `len` bytes of an open file shared (MAP_SHARED, read-write).
    pub fn map_file(file: &std::fs::File, len: usize) -> std::io::Result<Region> {
        // SAFETY: a fresh shared mapping of an fd we own; the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let keep: Arc<dyn super::Backing> = Arc::new(Mapping { ptr, len });
        // SAFETY: page-aligned, len bytes, valid until `keep` (held by the region) drops.
        Ok(unsafe { Region::from_raw(ptr.cast(), len, Some(keep)) })
    }

    /// Blocks while the u32 at `off` in `r` equals `seen`, at most `timeout_ns`.
    pub fn futex_wait(r: &Region, off: usize, seen: u32, timeout_ns: u64) {
        let ts = libc::timespec {
            tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: the address is a 4-aligned word inside the live mapping (addr32
        // checks); FUTEX_WAIT only reads it. Shared (not PRIVATE) to work across
        // processes.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                r.addr32(off),
                libc::FUTEX_WAIT,
                seen,
                &ts as *const _,
            )
        };
    }

    /// Wakes every waiter on the u32 at `off` in `r`.
    pub fn futex_wake(r: &Region, off: usize) {
        // SAFETY: as in futex_wait; FUTEX_WAKE does not access the word.
        unsafe { libc::syscall(libc::SYS_futex, r.addr32(off), libc::FUTEX_WAKE, i32::MAX) };
    }
}
