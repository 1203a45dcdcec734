//! Types shared by the kernel programs (`policy-ebpf`) and the node agent (`policy-agent`).
//!
//! Everything here is `no_std`, `#[repr(C)]` and fixed-width so that both sides read the same bytes.
//! The `user` feature adds the `aya::Pod` impls the agent needs to put these types in maps.
#![no_std]

pub mod maps;
pub mod names;
pub mod ports;
pub mod verdict;
