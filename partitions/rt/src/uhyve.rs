//! uhyve entry: boot info (RAM range, TSC frequency) and the command line from
//! the device tree's `/chosen/bootargs`.

use crate::console::{self, kprint};
use crate::state::{K, USER};
use abi::exit;
use hermit_entry::boot_info::{BootInfo, PlatformInfo, RawBootInfo};

// uhyve loads only images carrying this note.
hermit_entry::define_entry_version!();

/// Reads uhyve's boot info at `info`; returns the end of RAM.
#[unsafe(link_section = ".text.rt")]
pub(crate) fn boot(info: u64) -> u64 {
    if info == 0 || info >= crate::paging::MAX_RAM {
        console::exit(exit::BAD_BOOT_INFO)
    }
    // SAFETY: uhyve passes a valid RawBootInfo in identity-mapped RAM.
    let bi = BootInfo::from(unsafe { *(info as *const RawBootInfo) });
    if let PlatformInfo::Uhyve {
        cpu_freq: Some(f), ..
    } = bi.platform_info
    {
        // SAFETY: boot, single-threaded.
        unsafe { K.get() }.tsc_khz = u64::from(f.get());
    }
    if let Some(fdt) = bi.hardware_info.device_tree {
        bootargs(fdt.get());
    }
    if bi.hardware_info.phys_addr_range.start != 0 {
        kprint!("vmpi-rt: uhyve RAM does not start at 0 (interface version 3?)\n");
        console::exit(exit::BAD_BOOT_INFO)
    }
    bi.hardware_info.phys_addr_range.end
}

#[unsafe(link_section = ".text.rt")]
fn be32(p: u64) -> u32 {
    // SAFETY: callers stay inside the FDT blob (bounded by its header's size).
    u32::from_be(unsafe { (p as *const u32).read_unaligned() })
}

/// Copies `/chosen/bootargs` from the FDT at `fdt` into the user info.
#[unsafe(link_section = ".text.rt")]
fn bootargs(fdt: u64) {
    if fdt >= crate::paging::MAX_RAM || be32(fdt) != 0xd00d_feed {
        return;
    }
    let total = u64::from(be32(fdt + 4)).min(1 << 20);
    let st = fdt + u64::from(be32(fdt + 8));
    let strings = fdt + u64::from(be32(fdt + 12));
    let end = fdt + total;
    let mut p = st;
    let mut depth = 0u32;
    let mut in_chosen = false;
    let mut steps = 0;
    while p + 4 <= end && steps < 10_000 {
        steps += 1;
        let tok = be32(p);
        p += 4;
        match tok {
            1 => {
                // SAFETY: inside the blob; node names are NUL-terminated.
                let name = unsafe { core::ffi::CStr::from_ptr(p as *const core::ffi::c_char) };
                depth += 1;
                if depth == 2 {
                    in_chosen = name.to_bytes() == b"chosen";
                }
                p = (p + name.to_bytes().len() as u64 + 1 + 3) & !3;
            }
            2 => {
                depth = depth.saturating_sub(1);
                if depth < 2 {
                    in_chosen = false;
                }
            }
            3 => {
                let len = u64::from(be32(p));
                let nameoff = u64::from(be32(p + 4));
                let val = p + 8;
                // SAFETY: property names live in the strings block, NUL-terminated.
                let name = unsafe {
                    core::ffi::CStr::from_ptr((strings + nameoff) as *const core::ffi::c_char)
                };
                if in_chosen && depth == 2 && name.to_bytes() == b"bootargs" && val + len <= end {
                    // SAFETY: boot, single-threaded.
                    let user = unsafe { USER.get() };
                    let n = len as usize;
                    if n > abi::MAX_CMDLINE {
                        kprint!(
                            "vmpi-rt: command line longer than {} bytes\n",
                            abi::MAX_CMDLINE
                        );
                        console::exit(exit::BAD_COMMAND_LINE)
                    }
                    // SAFETY: inside the blob (checked against its size); one
                    // bulk copy (per-byte loops are slow in emulated ring 0).
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            val as *const u8,
                            user.cmdline.as_mut_ptr(),
                            n,
                        )
                    };
                    // Drop the terminating NUL(s).
                    let mut m = n;
                    while m > 0 && user.cmdline[m - 1] == 0 {
                        m -= 1;
                    }
                    user.cmdline_len = m;
                    return;
                }
                p = (val + len + 3) & !3;
            }
            4 => {}
            _ => return,
        }
    }
}
