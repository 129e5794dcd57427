//! `s3vol csi`: serve the CSI node plugin or, with `--controller`, the
//! controller (see `crate::csi`), logging to standard error, which the
//! container runtime keeps. The node's budget for
//! its volumes' local data is settled here, once, from the options or the
//! space free in the cache directory at start.

use std::path::PathBuf;
use std::process::ExitCode;

use super::fail;
use crate::csi::CsiConfig;
use crate::csi::budget::NodeBudget;
use crate::csi::request::Rules;
use crate::csi::volumes::Settings;
use crate::local_dir::LocalDir;
use crate::logging::{self, LogTarget};

/// How `s3vol csi` was asked to run, before the budget is settled.
pub struct CsiOptions {
    pub socket: PathBuf,
    pub node_id: String,
    pub rules: Rules,
    pub volumes: Settings,
    /// The node's budget; a size not given is an eighth of the space free in
    /// the cache directory when the driver starts.
    pub node_cache_size: Option<u64>,
    pub node_staging_size: Option<u64>,
    pub max_volumes: u32,
    pub metrics_listen: Option<std::net::SocketAddr>,
}

pub fn run(options: CsiOptions, log_level: &str) -> ExitCode {
    if let Err(e) = logging::init(log_level, LogTarget::Stderr) {
        return fail(&format!("cannot start logging: {e}"));
    }
    if !nix::unistd::geteuid().is_root() {
        return fail("the CSI plugin mounts volumes for every pod on the node: run it as root");
    }
    match settle(options) {
        Ok(config) => serve(crate::csi::serve(config)),
        Err(message) => fail(&message),
    }
}

/// `s3vol csi --controller`: serve the Controller service, as any user.
pub fn run_controller(socket: PathBuf, rules: Rules, log_level: &str) -> ExitCode {
    if let Err(e) = logging::init(log_level, LogTarget::Stderr) {
        return fail(&format!("cannot start logging: {e}"));
    }
    serve(crate::csi::serve_controller(socket, rules))
}

/// Runs `service` to its end on a runtime of its own.
fn serve(service: impl Future<Output = Result<(), String>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("s3vol-csi")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start: {e}")),
    };
    match runtime.block_on(service) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

/// The configuration to serve with: the cache directory chosen (as `s3vol
/// mount` chooses it) and the budget's sizes known.
fn settle(mut options: CsiOptions) -> Result<CsiConfig, String> {
    let dir = super::mount::local_dir(options.volumes.cache_dir.as_deref())?;
    let free = || -> Result<u64, String> {
        let local = LocalDir::open_or_create(&dir)?;
        nix::sys::statvfs::fstatvfs(&local)
            .map(|s| s.blocks_available() * s.fragment_size())
            .map_err(|e| format!("cannot see the free space in {}: {e}", dir.display()))
    };
    // An eighth each: together the quarter one `s3vol mount` takes.
    let (cache, staging) = match (options.node_cache_size, options.node_staging_size) {
        (Some(cache), Some(staging)) => (cache, staging),
        (cache, staging) => {
            let eighth = free()? / 8;
            (cache.unwrap_or(eighth), staging.unwrap_or(eighth))
        }
    };
    let budget = NodeBudget::new(cache, staging, options.max_volumes)?;
    options.volumes.cache_dir = Some(dir);
    Ok(CsiConfig {
        socket: options.socket,
        node_id: options.node_id,
        rules: options.rules,
        volumes: options.volumes,
        budget,
        metrics_listen: options.metrics_listen,
    })
}
