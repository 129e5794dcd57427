//! s3vol: attach an S3 bucket prefix to a Linux directory.
//!
//! Layers, from the kernel down: [`fuse`] (the only fuser user) calls [`fs`], which
//! uses [`read`], [`cache`], [`upload`] and the [`store::ObjectStore`] trait; [`store::s3`] is the only
//! aws-sdk-s3 user. [`cli`] and [`run`] wire concrete types on top.

pub mod auth;
pub mod cache;
pub mod cleanup;
pub mod cli;
pub mod fs;
pub mod fuse;
pub mod helper;
pub mod logging;
pub mod mountinfo;
pub mod names;
pub mod options;
pub mod policy;
pub mod preflight;
pub mod run;
pub mod stats;
pub mod store;
