//! vmpi interconnect (under construction).
#![no_std]
