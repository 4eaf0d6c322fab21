//! Two heaps behind one global allocator: the runtime's (2 MiB, supervisor) at
//! CPL 0 and the service's (the rest of RAM, user) at CPL 3. The current
//! privilege level picks the heap, so neither side can reach the other's.

use crate::arch::cpl;
use crate::state::{Global, USER};
use core::alloc::{GlobalAlloc, Layout};
use linked_list_allocator::Heap;

#[unsafe(link_section = ".rtdata")]
static RT_HEAP: Global<Heap> = Global::new(Heap::empty());
static USER_HEAP: Global<Heap> = Global::new(Heap::empty());

/// Gives the runtime its heap.
///
/// # Safety
/// CPL 0, once, after paging mapped [`crate::paging::RT_HEAP`].
#[unsafe(link_section = ".text.rt")]
pub(crate) unsafe fn init_runtime() {
    // SAFETY: the 2 MiB at RT_HEAP are mapped supervisor-only and unused.
    unsafe {
        RT_HEAP
            .get()
            .init(crate::paging::RT_HEAP as *mut u8, 2 << 20)
    }
}

/// Gives the service its heap. CPL 3, once, before the service's `main`.
pub(crate) fn init_user() {
    // SAFETY: the user info is read-only at CPL 3; the heap range is mapped
    // user-accessible and used by nothing else; called once before `main`.
    unsafe {
        let u = USER.get();
        USER_HEAP.get().init(u.heap_start as *mut u8, u.heap_len);
    }
}

struct Alloc;

fn heap() -> &'static mut Heap {
    // SAFETY: one CPU; the runtime's heap is used only at CPL 0 with interrupts
    // off, the service's only at CPL 3, which the runtime never interrupts into.
    unsafe {
        if cpl() == 0 {
            RT_HEAP.get()
        } else {
            USER_HEAP.get()
        }
    }
}

// SAFETY: delegates to linked_list_allocator, which returns blocks fitting `l`.
unsafe impl GlobalAlloc for Alloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        heap()
            .allocate_first_fit(l)
            .map_or(core::ptr::null_mut(), |p| p.as_ptr())
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if let Some(p) = core::ptr::NonNull::new(p) {
            // SAFETY: `p` came from `alloc` with `l` on this side's heap.
            unsafe { heap().deallocate(p, l) }
        }
    }
}

#[global_allocator]
static ALLOC: Alloc = Alloc;
