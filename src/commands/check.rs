//! `s3vol check`: probe what a volume in the given mode needs and print a table
//! of what is allowed and what is denied, with the fix.

use std::process::ExitCode;

use super::{fail, one_shot};
use crate::cse::volume::CseOptions;
use crate::daemon::Failure;
use crate::names::Source;
use crate::preflight::{self, ProbeMode};
use crate::store::stack::Connection;

/// What a worker's death does to a volume on this kernel.
fn healing() -> &'static str {
    if crate::fuse::session::kernel_resends() {
        "kernel: heals (FUSE_NOTIFY_RESEND): if a volume's worker dies, a new one takes \
         the mount over"
    } else {
        "kernel: does not heal (Linux 6.9 or later sends FUSE requests again): if a volume's \
         worker dies, the volume ends and its applications get ENOTCONN"
    }
}

/// `s3vol check`: probes what the mode needs and prints the table; exit 1 when
/// anything needed is denied or S3 cannot be reached.
pub fn run(
    source: &Source,
    mode: ProbeMode,
    connection: &Connection,
    cse: Option<CseOptions>,
) -> ExitCode {
    let result = one_shot(
        connection,
        &source.bucket,
        cse.as_ref(),
        async |store, encryption| {
            let probes = preflight::probe_access(
                store.as_ref(),
                source,
                mode,
                &connection.endpoint(),
                encryption.as_deref(),
            )
            .await?;
            print!("{}", preflight::render(&probes));
            println!("{}", healing());
            Ok(probes
                .iter()
                .all(|p| !matches!(p.outcome, preflight::Outcome::Denied { .. })))
        },
    );
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!(
                "s3vol: some permissions a {} volume needs are denied; see the fixes above",
                if mode.read_write {
                    "read-write"
                } else {
                    "read-only"
                }
            );
            ExitCode::FAILURE
        }
        Err(Failure(message)) => fail(&message),
    }
}
