//! The `s3vol` binary: `s3vol COMMAND ...`, or `mount.s3vol ...` when run through
//! a link of that name (as mount(8) runs filesystem helpers).

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
use s3vol::cli::{self, Cli, Command};
use s3vol::commands::{self, fail};
use s3vol::cse::volume::CseOptions;
use s3vol::preflight::ProbeMode;

fn main() -> ExitCode {
    // A volume's worker, started by its supervisor: nothing on its command
    // line but the mountpoint.
    if let Some(code) = s3vol::daemon::worker::run_if_worker() {
        return code;
    }
    let args: Vec<OsString> = std::env::args_os().collect();
    // First, before anything can take long or fork: other users see the command
    // line in `ps`.
    if let Err(message) = cli::scrub::scrub_external_ids(&args) {
        return fail(&message);
    }
    if args
        .first()
        .is_some_and(|argv0| cli::helper::invoked_as_helper(argv0))
    {
        return commands::helper::run(args);
    }
    let args = match cli::expand_o_options(args) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("s3vol: {message}");
            return ExitCode::from(2);
        }
    };
    match Cli::parse_from(args).command {
        Command::Mount(args) => match args.into_config() {
            Ok(config) => commands::mount::run(config),
            Err(message) => fail(&message),
        },
        Command::Check(args) => match args.s3.connection(&args.role) {
            Ok(connection) => {
                let mode = ProbeMode {
                    read_write: args.read_write,
                    delete: args.probe_delete,
                };
                commands::check::run(&args.source, mode, &connection, args.cse.options())
            }
            Err(message) => fail(&message),
        },
        Command::Policy(args) => commands::policy::run(
            &args.source,
            args.read_write,
            args.version_at.is_some(),
            args.trusted_principal.as_deref(),
            args.external_id.as_deref(),
            args.cse_kms_key_id
                .map(|key_id| CseOptions {
                    key_id,
                    context: args.cse_context.unwrap_or_default(),
                    ..Default::default()
                })
                .as_ref(),
        ),
        Command::Stats(args) => commands::stats::run(&args.mountpoint, args.json),
        Command::Restart(args) => commands::restart::run(&args.mountpoint),
        Command::Info(args) => commands::object::info(&args.path, args.json),
        Command::Url(args) => {
            commands::object::url(&args.path, args.method.into(), args.expires, args.json)
        }
        Command::Csi(args) if args.controller => commands::csi::run_controller(
            args.endpoint,
            s3vol::csi::request::Rules {
                endpoints: args.allow_endpoints,
                allow_driver_credentials: args.allow_driver_credentials,
            },
            &args.log_level,
        ),
        Command::Csi(args) => {
            let program = match std::env::current_exe() {
                Ok(path) => path,
                Err(e) => return fail(&format!("cannot find the s3vol binary: {e}")),
            };
            let config = commands::csi::CsiOptions {
                socket: args.endpoint,
                node_id: args.node_id.unwrap_or_default(),
                rules: s3vol::csi::request::Rules {
                    endpoints: args.allow_endpoints,
                    allow_driver_credentials: args.allow_driver_credentials,
                },
                volumes: s3vol::csi::volumes::Settings {
                    program,
                    state_dir: args.state_dir,
                    cache_dir: args.cache_dir,
                    mount_timeout: args.mount_timeout,
                    stop_timeout: args.stop_timeout,
                },
                node_cache_size: args.node_cache_size,
                node_staging_size: args.node_staging_size,
                max_volumes: args.max_volumes,
                metrics_listen: args.metrics_listen,
            };
            commands::csi::run(config, &args.log_level)
        }
        Command::GenerateAssets { dir } => match cli::manual::generate(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("cannot write into {}: {e}", dir.display())),
        },
        Command::Cleanup(args) => match args.s3.connection(&args.role) {
            Ok(connection) => {
                commands::cleanup::run(&args.source, args.older_than, args.abort, &connection)
            }
            Err(message) => fail(&message),
        },
    }
}
