//! The filesystem in this process, on the in-memory store: no kernel, no
//! server, no root. One binary for them all (each links the whole SDK).

#[path = "../common/mod.rs"]
mod common;

mod fs_cache;
mod fs_memory;
mod fs_metadata;
mod fs_model;
mod fs_takeover;
mod fs_write;
