//! vmpi's host side: the manifest, the guest command line, the ivshmem doorbell
//! server, the QEMU launcher and the system picture. The `vmpi` binary is a thin
//! CLI over this library.
//!
//! # Assumptions
//! - Linux host with `/dev/shm`; QEMU 7.2 or later for the `ivshmem-doorbell` device.
//! - Partition images are PVH ELFs built by the `partitions/` workspace.
#![deny(missing_docs)]

pub mod control_region;
pub mod describe;
pub mod doorbell;
pub mod graph;
pub mod guest_args;
pub mod images;
pub mod launch;
pub mod manifest;
pub mod qemu;
pub mod tsc;
