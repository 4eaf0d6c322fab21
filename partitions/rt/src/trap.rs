//! GDT/TSS/IDT set-up, the exception and interrupt stubs, fault reporting and
//! the system-call dispatcher (entered with `int3` from CPL 3).

use crate::boot::{dfstack_top, gdt, kstack_top};
use crate::console::{self, kprint};
use crate::state::{
    DOORBELL_VECTOR_BASE, Global, IN_SERVICE, K, Kernel, MAX_DOORBELL_DEVS, SPURIOUS_VECTOR,
    TIMER_VECTOR, VECTORS_PER_DEV,
};
use abi::{exit, sys};
use core::arch::{asm, global_asm};

/// Number of IDT entries (exceptions, timer, doorbells, spurious).
const IDT_LEN: usize = 48;
/// User code selector (GDT index 3, RPL 3).
pub(crate) const USER_CS: u64 = 0x1b;
/// User data/stack selector (GDT index 4, RPL 3).
pub(crate) const USER_SS: u64 = 0x23;
const TSS_SEL: u16 = 0x28;

global_asm!(
    r#"
    .pushsection .text.isr, "ax"
    .p2align 4
    .global isr_stubs
isr_stubs:
    .set i, 0
    .rept {n}
    .p2align 4
    .if (i >= {db_first}) && (i <= {db_last})
    // A doorbell: record it (and that its EOI is due) in one instruction.
    orl $((1 << (i - {db_first})) | {in_service}), {k}+{pending}(%rip)
    iretq
    .elseif i == 3
    jmp bp_entry
    .else
    .if (i == 8) || (i == 10) || (i == 11) || (i == 12) || (i == 13) || (i == 14) || (i == 17) || (i == 21) || (i == 29) || (i == 30)
    .else
    pushq $0
    .endif
    pushq $i
    jmp isr_common
    .endif
    .set i, i + 1
    .endr

    // System calls: WAIT is a C call that saves nothing (the caller declared the
    // clobbers); the others go through the full frame.
bp_entry:
    cmpq ${wait}, %rax
    jne 1f
    subq $8, %rsp
    call {wait_entry}
    addq $8, %rsp
    iretq
1:  pushq $0
    pushq $3
    jmp isr_common

isr_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi
    call trap_entry
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp
    iretq

    .global enter_user
enter_user:
    pushq ${ss}
    pushq %rsi
    pushq $0x2
    pushq ${cs}
    pushq %rdi
    xorl %eax, %eax
    xorl %ebx, %ebx
    xorl %ecx, %ecx
    xorl %edx, %edx
    xorl %esi, %esi
    xorl %edi, %edi
    xorl %ebp, %ebp
    xorl %r8d, %r8d
    xorl %r9d, %r9d
    xorl %r10d, %r10d
    xorl %r11d, %r11d
    iretq
    .popsection

    // The IDT, built by the assembler (no ring-0 loop at boot): stub i sits at
    // {base} + 16 * i (link.ld asserts it). #BP (3) is callable from CPL 3
    // (system calls); #DF (8) runs on IST 1.
    .pushsection .rtdata, "aw"
    .p2align 4
    .global idt_table
idt_table:
    .set i, 0
    .rept {n}
    .word ({base} + 16 * i) & 0xffff
    .word 0x08
    .if i == 8
    .byte 1
    .else
    .byte 0
    .endif
    .if i == 3
    .byte 0xee
    .else
    .byte 0x8e
    .endif
    .word (({base} + 16 * i) >> 16) & 0xffff
    .long 0
    .long 0
    .set i, i + 1
    .endr
    .popsection
"#,
    base = const crate::paging::IMAGE_BASE,
    n = const IDT_LEN,
    db_first = const DOORBELL_VECTOR_BASE,
    db_last = const DOORBELL_VECTOR_BASE as usize + MAX_DOORBELL_DEVS * VECTORS_PER_DEV - 1,
    in_service = const IN_SERVICE,
    k = sym K,
    pending = const core::mem::offset_of!(Kernel, pending),
    wait = const sys::WAIT,
    wait_entry = sym wait_entry,
    ss = const USER_SS,
    cs = const USER_CS,
    options(att_syntax)
);

unsafe extern "C" {
    static idt_table: u8;
    /// Enters the service: `rip` at CPL 3 on stack `rsp`, interrupts off.
    pub(crate) fn enter_user(rip: u64, rsp: u64) -> !;
}

/// The registers saved on a trap, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Frame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

#[repr(C, packed(4))]
struct Tss {
    _r0: u32,
    rsp: [u64; 3],
    _r1: u64,
    ist: [u64; 7],
    _r2: u64,
    _r3: u16,
    iomap: u16,
}

#[unsafe(link_section = ".rtdata")]
static TSS: Global<Tss> = Global::new(Tss {
    _r0: 0,
    rsp: [0; 3],
    _r1: 0,
    ist: [0; 7],
    _r2: 0,
    _r3: 0,
    iomap: 104,
});

/// Loads the TSS (with the ring-0 and double-fault stacks) and the IDT.
///
/// # Safety
/// CPL 0, once, at boot.
#[unsafe(link_section = ".text.rt")]
pub(crate) unsafe fn init() {
    // SAFETY: boot, single-threaded, interrupts off.
    unsafe {
        let tss = TSS.get();
        tss.rsp[0] = (&raw const kstack_top) as u64;
        tss.ist[0] = (&raw const dfstack_top) as u64;
        let base = TSS.ptr() as u64;
        let limit = (core::mem::size_of::<Tss>() - 1) as u64;
        let g = core::slice::from_raw_parts_mut((&raw mut gdt).cast::<u64>(), 7);
        g[5] = limit | ((base & 0xff_ffff) << 16) | (0x89 << 40) | (((base >> 24) & 0xff) << 56);
        g[6] = base >> 32;
        asm!("ltr {0:x}", in(reg) TSS_SEL, options(nostack));

        #[repr(C, packed)]
        struct Ptr {
            limit: u16,
            base: u64,
        }
        let p = Ptr {
            limit: (IDT_LEN * 16 - 1) as u16,
            base: (&raw const idt_table) as u64,
        };
        asm!("lidt [{}]", in(reg) &raw const p, options(nostack, readonly));
    }
}

const NAMES: [&str; 32] = [
    "divide error",
    "debug",
    "NMI",
    "breakpoint",
    "overflow",
    "bound range",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor overrun",
    "invalid TSS",
    "segment not present",
    "stack fault",
    "general protection fault",
    "page fault",
    "reserved 15",
    "x87 floating point",
    "alignment check",
    "machine check",
    "SIMD floating point",
    "virtualization",
    "control protection",
    "reserved 22",
    "reserved 23",
    "reserved 24",
    "reserved 25",
    "reserved 26",
    "reserved 27",
    "hypervisor injection",
    "VMM communication",
    "security",
    "reserved 31",
];

/// `sys::WAIT`, called from `bp_entry` with interrupts off and no registers saved.
#[unsafe(link_section = ".text.rt")]
extern "C" fn wait_entry(deadline: u64) -> u64 {
    u64::from(crate::apic::wait(deadline))
}

/// Common trap handler, called by the stubs with interrupts off.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.rt")]
extern "C" fn trap_entry(f: &mut Frame) {
    let v = f.vector as u8;
    let from_user = f.cs & 3 == 3;
    match v {
        3 => syscall(f),
        // The deadline timer: `apic::wait` looks at the clock itself.
        TIMER_VECTOR => crate::apic::eoi(),
        SPURIOUS_VECTOR => {}
        _ if from_user => user_fault(f),
        _ => runtime_fault(f),
    }
}

#[unsafe(link_section = ".text.rt")]
fn user_fault(f: &Frame) -> ! {
    let v = f.vector as usize;
    let name = NAMES.get(v).copied().unwrap_or("interrupt");
    let status = match v {
        14 => {
            // SAFETY: CPL 0.
            let addr = unsafe { crate::arch::cr2() };
            let e = f.error;
            let what = if e & 1 == 0 {
                "page not mapped"
            } else {
                "protection violation"
            };
            let access = if e & 0x10 != 0 {
                "instruction fetch"
            } else if e & 2 != 0 {
                "write"
            } else {
                "read"
            };
            let guard = (crate::paging::STACK_GUARD..crate::paging::USER_STACK).contains(&addr);
            kprint!(
                "vmpi-rt: service {}: {} at address {:#x} ({}, error code {:#x}) rip {:#x} rsp {:#x}\n",
                if guard { "stack overflow" } else { name },
                access,
                addr,
                what,
                e,
                f.rip,
                f.rsp
            );
            if guard {
                exit::SERVICE_STACK_OVERFLOW
            } else {
                exit::SERVICE_PAGE_FAULT
            }
        }
        _ => {
            kprint!(
                "vmpi-rt: service {} (vector {}, error code {:#x}) at rip {:#x} rsp {:#x}\n",
                name,
                v,
                f.error,
                f.rip,
                f.rsp
            );
            match v {
                13 => exit::SERVICE_GP_FAULT,
                6 => exit::SERVICE_INVALID_OPCODE,
                _ => exit::SERVICE_EXCEPTION,
            }
        }
    };
    console::exit(status)
}

#[unsafe(link_section = ".text.rt")]
fn runtime_fault(f: &Frame) -> ! {
    let v = f.vector as usize;
    let name = NAMES.get(v).copied().unwrap_or("unexpected interrupt");
    let cr2 = if v == 14 {
        // SAFETY: CPL 0.
        unsafe { crate::arch::cr2() }
    } else {
        0
    };
    kprint!(
        "vmpi-rt: runtime {} (vector {}, error code {:#x}) at rip {:#x}, address {:#x}\n",
        name,
        v,
        f.error,
        f.rip,
        cr2
    );
    console::exit(if v == 8 {
        exit::DOUBLE_FAULT
    } else {
        exit::RUNTIME_FAULT
    })
}

#[unsafe(link_section = ".text.rt")]
fn bad_syscall(f: &Frame, why: &str) -> ! {
    kprint!(
        "vmpi-rt: service bad system call {} at rip {:#x}: {}\n",
        f.rax,
        f.rip,
        why
    );
    console::exit(exit::SERVICE_BAD_SYSCALL)
}

#[unsafe(link_section = ".text.rt")]
fn syscall(f: &mut Frame) {
    match f.rax {
        sys::LOG | sys::PANIC => {
            let (ptr, len) = (f.rdi, f.rsi);
            if len > 4096 || !crate::paging::user_readable(ptr, len) {
                bad_syscall(f, "buffer outside the service's memory")
            }
            // SAFETY: the range lies in memory mapped for the service (checked above)
            // and nothing else runs while the runtime reads it.
            let bytes = unsafe { core::slice::from_raw_parts(ptr as *const u8, len as usize) };
            if f.rax == sys::PANIC {
                console::write(b"vmpi-rt: service panicked: ");
                console::write(bytes);
                console::write(b"\n");
                console::exit(exit::SERVICE_PANIC)
            }
            console::write(bytes);
            console::write(b"\n");
            f.rax = 0;
        }
        sys::EXIT => {
            if f.rdi > u64::from(exit::SERVICE_MAX) {
                bad_syscall(f, "exit status above 99 (reserved for the runtime)")
            }
            console::exit(f.rdi as u8)
        }
        sys::YIELD => {
            crate::apic::ack();
            // SAFETY: opens a one-instruction window for pending interrupts.
            unsafe { asm!("sti", "nop", "cli", options(nomem, nostack)) };
            f.rax = 0;
        }
        sys::SETUP => {
            // SAFETY: CPL 0, interrupts off.
            let k = unsafe { K.get() };
            let size = core::mem::size_of::<crate::start::Setup>() as u64;
            if k.setup_done
                || !crate::paging::user_readable(f.rdi, size)
                || !f.rdi.is_multiple_of(8)
            {
                bad_syscall(f, "SETUP is the runtime prologue's, once")
            }
            k.setup_done = true;
            // SAFETY: an aligned Setup in the service's memory (checked above);
            // copied before use.
            let s: crate::start::Setup = unsafe { core::ptr::read(f.rdi as *const _) };
            let err = if s.err_ptr == 0 {
                None
            } else if s.err_len <= 512 && crate::paging::user_readable(s.err_ptr, s.err_len) {
                // SAFETY: range checked above.
                Some(unsafe {
                    core::slice::from_raw_parts(s.err_ptr as *const u8, s.err_len as usize)
                })
            } else {
                bad_syscall(f, "SETUP error message outside the service's memory")
            };
            crate::start::setup(&s, err);
            f.rax = 0;
        }
        _ => bad_syscall(f, "unknown number"),
    }
}
