//! Entry paths: PVH (QEMU `-kernel`, 32-bit protected mode) and uhyve (64-bit).
//!
//! Both land in [`crate::start::rt_start`] in long mode on the runtime's boot
//! stack with the runtime's boot page tables (first GiB identity-mapped with
//! 2 MiB supervisor pages). The tables, the GDT and the stacks are static data
//! in `.rtdata`/`.rtbss`, so nothing is computed in emulated ring 0 before Rust.

use core::arch::global_asm;

/// Entry kind handed to `rt_start` in `edi`: booted through PVH.
pub(crate) const KIND_PVH: u32 = 1;
/// Entry kind: booted by uhyve.
pub(crate) const KIND_UHYVE: u32 = 2;

/// Size of the runtime's stack (boot, traps, system calls).
pub(crate) const KSTACK_SIZE: usize = 32 * 1024;

// The PVH ELF note (XEN_ELFNOTE_PHYS32_ENTRY = 18): QEMU's ELF loader finds it
// and enters `pvh_entry` in 32-bit protected mode with ebx = hvm_start_info.
global_asm!(
    r#"
    .pushsection .note.Xen, "a", @note
    .p2align 2
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .p2align 2
    .long pvh_entry
    .p2align 2
    .popsection

    .pushsection .rtdata, "aw"
    .p2align 12
    .global boot_pml4
boot_pml4:
    .quad boot_pdpt + 0x3
    .fill 511, 8, 0
boot_pdpt:
    .quad boot_pd + 0x3
    .fill 511, 8, 0
boot_pd:
    .set i, 0
    .rept 512
    .quad (i << 21) + 0x83
    .set i, i + 1
    .endr
    .p2align 4
    .global gdt
gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00affa000000ffff
    .quad 0x00cff2000000ffff
    .quad 0
    .quad 0
gdt_end:
    .p2align 4
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt
    .popsection

    .pushsection .text.boot, "ax"
    .code32
    .global pvh_entry
pvh_entry:
    cli
    cld
    movl %ebx, %esi
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x900, %eax
    wrmsr
    movl $0x80010033, %eax
    movl %eax, %cr0
    lgdt gdt_ptr
    ljmp $0x08, $pvh_long
    .code64
pvh_long:
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %eax, %eax
    movl %eax, %fs
    movl %eax, %gs
    movabs $kstack_top, %rsp
    movl $1, %edi
    call rt_start
    ud2

    .global uhyve_entry
uhyve_entry:
    cli
    cld
    movq %rdi, %rsi
    movabs $kstack_top, %rsp
    movabs $boot_pml4, %rax
    movq %rax, %cr3
    movabs $gdt_ptr, %rax
    lgdt (%rax)
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %eax, %eax
    movl %eax, %fs
    movl %eax, %gs
    pushq $0x08
    movabs $uhyve_long, %rax
    pushq %rax
    lretq
uhyve_long:
    movl $2, %edi
    call rt_start
    ud2
    .popsection

    .pushsection .rtbss, "aw", @nobits
    .p2align 12
    .global kstack_bottom
kstack_bottom:
    .fill {kstack}, 1, 0
    .global kstack_top
kstack_top:
    .global dfstack_bottom
dfstack_bottom:
    .fill 4096, 1, 0
    .global dfstack_top
dfstack_top:
    .popsection
"#,
    kstack = const KSTACK_SIZE,
    options(att_syntax)
);

unsafe extern "C" {
    /// The boot and final top-level page table.
    pub(crate) static mut boot_pml4: [u64; 512];
    /// Its PDPT (first 512 GiB).
    pub(crate) static mut boot_pdpt: [u64; 512];
    /// The GDT (null, kernel code 0x08, kernel data 0x10, user code 0x1b,
    /// user data 0x23, TSS 0x28).
    pub(crate) static mut gdt: [u64; 7];
    /// Top of the runtime's stack.
    pub(crate) static kstack_top: u8;
    /// Top of the double-fault stack.
    pub(crate) static dfstack_top: u8;
    static __image_start: u8;
    static __text_start: u8;
    static __rodata_start: u8;
    static __data_start: u8;
    static __rt_start: u8;
    static __image_end: u8;
}

/// Addresses of the image's parts, from the linker script.
#[derive(Clone, Copy)]
pub(crate) struct ImageLayout {
    pub start: u64,
    pub text: u64,
    pub rodata: u64,
    pub data: u64,
    pub rt: u64,
    pub end: u64,
}

/// The image layout.
pub(crate) fn layout() -> ImageLayout {
    ImageLayout {
        start: (&raw const __image_start) as u64,
        text: (&raw const __text_start) as u64,
        rodata: (&raw const __rodata_start) as u64,
        data: (&raw const __data_start) as u64,
        rt: (&raw const __rt_start) as u64,
        end: (&raw const __image_end) as u64,
    }
}
