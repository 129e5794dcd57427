//! `s3vol csi`: serve the CSI node plugin (see `crate::csi`), logging to
//! standard error, which the container runtime keeps.

use std::process::ExitCode;

use super::fail;
use crate::csi::CsiConfig;
use crate::logging::{self, LogTarget};

pub fn run(config: CsiConfig, log_level: &str) -> ExitCode {
    if let Err(e) = logging::init(log_level, LogTarget::Stderr) {
        return fail(&format!("cannot start logging: {e}"));
    }
    if !nix::unistd::geteuid().is_root() {
        return fail("the CSI plugin mounts volumes for every pod on the node: run it as root");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("s3vol-csi")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start: {e}")),
    };
    match runtime.block_on(crate::csi::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}
