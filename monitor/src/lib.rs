//! vmpi monitor (under construction).
#![no_std]
extern crate alloc;
pub mod id;
pub mod rights;
pub mod wire;
