//! s3vol: attach an S3 bucket prefix to a Linux directory.
//!
//! The data path, from the kernel down: [`fuse`] (the only fuser user) makes one
//! call per request into [`fs`], which implements S3's semantics with its
//! per-handle reader (`fs::read`) and staged uploads (`fs::upload`), reads through
//! the [`cache`], and speaks to S3 through the [`store::ObjectStore`] trait;
//! [`store::s3`] is the only aws-sdk-s3 user, and [`store::stack`] assembles the
//! layers around it (retries, counting, credential renewal).
//!
//! The control plane, on top: the binary's `main` dispatches to [`commands`] (one
//! module per command) with plain values that [`cli`] parses (with the value
//! parsers of [`values`], which [`csi`] shares); `s3vol mount` hands a
//! [`config::MountConfig`] to the [`daemon`], which assembles a volume and serves it
//! until it stops. [`auth`] (credentials, renewal) is a leaf. [`csi`] is the
//! Kubernetes node plugin, which runs one such daemon per published volume.

pub mod audit;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod cse;
pub mod csi;
pub mod daemon;
pub mod fs;
pub mod fuse;
pub mod journal;
pub mod local_dir;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod mountinfo;
pub mod names;
pub mod preflight;
pub mod procfs;
pub mod startup;
pub mod stats;
pub mod store;
pub mod values;

/// What `s3vol --version` says: the crate's version and the commit it was
/// built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("S3VOL_COMMIT"),
    ")"
);
