//! End to end: the real binary and mounts through the kernel (the FUSE adapter
//! in this process for `fuse_*`), against local S3 servers for the tests
//! marked `#[ignore]` (run by scripts/test.sh). One binary for them all (each
//! links the whole SDK).

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod e2e_audit;
mod e2e_bench;
mod e2e_cache;
mod e2e_cse;
mod e2e_csi;
mod e2e_csi_health;
mod e2e_faults;
mod e2e_hostile;
mod e2e_lies;
mod e2e_lifecycle;
mod e2e_memory;
mod e2e_metadata;
mod e2e_metrics;
mod e2e_package;
mod e2e_provision;
mod e2e_readonly;
mod e2e_role;
mod e2e_storm;
mod e2e_systemd;
mod e2e_takeover;
mod e2e_unprivileged;
mod e2e_urls;
mod e2e_version_at;
mod e2e_write;
mod fuse_close;
mod fuse_memory;
mod mount_helper;
mod servers;
mod store_conformance;
