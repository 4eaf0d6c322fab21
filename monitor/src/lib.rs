//! vmpi monitor (under construction).
#![no_std]
