//! The command line: `s3vol mount ...` and the other commands, parsed with clap and
//! turned into the plain values the commands take ([`MountConfig`],
//! [`Connection`]); nothing below this module sees a clap type.
//!
//! Every long option `--name value` can also be given as `-o name=value` and every
//! flag `--flag` as `-o flag`, the way mount(8) and fstab pass them ([`options`]);
//! [`helper`] reads mount(8)'s command line for `mount.s3vol`.

pub mod cse;
mod csi;
pub mod helper;
pub mod manual;
pub mod options;
pub mod scrub;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use self::cse::CseArgs;
pub use self::csi::CsiArgs;
use crate::auth::{BaseCredentials, RoleOptions, Secret, StaticKeys};
use crate::config::MountConfig;
use crate::names::Source;
use crate::store::Encryption;
use crate::store::stack::Connection;
use crate::values::*;

#[derive(Debug, Parser)]
#[command(
    name = "s3vol",
    version = crate::VERSION,
    about = "Attach an S3 bucket prefix to a directory as a filesystem"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount BUCKET[/PREFIX] at MOUNTPOINT (daemonizes unless --foreground).
    Mount(Box<MountArgs>),
    /// Probe whether the credentials (and role) can do what a volume needs.
    Check(Box<CheckArgs>),
    /// Print the least-privilege IAM policy for a volume, and the role's trust
    /// policy when given the principal and external ID.
    Policy(PolicyArgs),
    /// Show what a mounted volume has done: requests to S3, bytes moved, cache
    /// hits and misses, uploads, credential renewals.
    Stats(StatsArgs),
    /// Replace a mounted volume's worker with the installed binary, without
    /// unmounting (after a package upgrade): the old worker finishes what it
    /// has in flight, the new one serves the same files.
    Restart(RestartArgs),
    /// Print what S3 holds for a file on a mounted volume: bucket, key, size,
    /// ETag, version, storage class, encryption, content type, user metadata.
    Info(InfoArgs),
    /// Print a presigned URL of a file on a mounted volume, signed with the
    /// volume's credentials, for anyone to GET (or PUT) without credentials
    /// until it expires.
    Url(UrlArgs),
    /// List the multipart uploads left unfinished under BUCKET[/PREFIX] (by a
    /// killed daemon, say) and, with --abort, abort the stale ones. A dry run by
    /// default.
    Cleanup(Box<CleanupArgs>),
    /// Serve the CSI node plugin for Kubernetes: mount each volume a pod uses
    /// at the pod's target path, with the volume's own role and external ID;
    /// or, with --controller, the controller that makes and deletes volumes
    /// for claims.
    Csi(CsiArgs),
    /// Write the manual pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateAssets {
        /// Where to write man/ and completions/.
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    /// BUCKET, BUCKET/PREFIX or s3://BUCKET/PREFIX/.
    #[arg(value_parser = parse_source)]
    pub source: Source,
    /// Only uploads started at least this long ago count as stale; younger ones
    /// may belong to a mount that is writing them now. Use 0 when no mount
    /// writes under the prefix.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_ttl)]
    pub older_than: Duration,
    /// Abort the stale uploads (their parts are deleted). Without it, nothing is
    /// changed.
    #[arg(long)]
    pub abort: bool,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub role: RoleArgs,
}

#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    /// Where an s3vol volume is mounted.
    pub mountpoint: PathBuf,
    /// Print the report as JSON, for scripts and monitoring.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RestartArgs {
    /// Where an s3vol volume is mounted.
    pub mountpoint: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct InfoArgs {
    /// A file on a mounted s3vol volume (you must be able to read it).
    pub path: PathBuf,
    /// Print the facts as JSON, for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct UrlArgs {
    /// A file on a mounted s3vol volume: readable by you for a GET URL, writable
    /// (on a read-write volume) for a PUT URL.
    pub path: PathBuf,
    /// How long the URL works: at most 7d, and never past the end of the
    /// volume's role session (the output says when it expires).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_url_validity)]
    pub expires: Duration,
    /// What the URL lets its holder do: download the file, or upload a new one
    /// in its place.
    #[arg(long, value_enum, default_value_t = UrlMethodArg::Get)]
    pub method: UrlMethodArg,
    /// Print the URL, its expiry and the object as JSON, for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UrlMethodArg {
    Get,
    Put,
}

impl From<UrlMethodArg> for crate::store::UrlMethod {
    fn from(method: UrlMethodArg) -> Self {
        match method {
            UrlMethodArg::Get => crate::store::UrlMethod::Get,
            UrlMethodArg::Put => crate::store::UrlMethod::Put,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// BUCKET, BUCKET/PREFIX or s3://BUCKET/PREFIX/.
    #[arg(value_parser = parse_source)]
    pub source: Source,
    /// Also probe uploads (CreateMultipartUpload then AbortMultipartUpload: leaves
    /// nothing behind).
    #[arg(long)]
    pub read_write: bool,
    /// Also probe DeleteObject (on a key that does not exist; on a versioned bucket
    /// this leaves a delete marker, hence off by default).
    #[arg(long)]
    pub probe_delete: bool,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub role: RoleArgs,
    #[command(flatten)]
    pub cse: CseArgs,
}

#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// BUCKET, BUCKET/PREFIX or s3://BUCKET/PREFIX/.
    #[arg(value_parser = parse_source)]
    pub source: Source,
    /// Include what a read-write volume needs (uploads, deletes, aborting uploads).
    #[arg(long, conflicts_with = "version_at")]
    pub read_write: bool,
    /// Include what a view of the past needs (listing versions, reading them,
    /// and whether the bucket keeps them), for a volume mounted with the same
    /// --version-at.
    #[arg(long, value_name = "TIME", value_parser = parse_version_at)]
    pub version_at: Option<std::time::SystemTime>,
    /// The external ID the trust policy requires.
    #[arg(long, value_name = "ID", requires = "trusted_principal")]
    pub external_id: Option<String>,
    /// The IAM role or user that will assume the role (the one running s3vol).
    #[arg(long, value_name = "ARN", requires = "external_id")]
    pub trusted_principal: Option<String>,
    /// Include the use of this KMS key (its ARN) for client-side encryption,
    /// only with the volume's encryption context.
    #[arg(long, value_name = "KEY_ARN")]
    pub cse_kms_key_id: Option<String>,
    /// The volume's encryption context (`name=value,...`), as mounted.
    #[arg(long, value_name = "NAME=VALUE,...", requires = "cse_kms_key_id",
          value_parser = crate::cse::volume::parse_context)]
    pub cse_context: Option<std::collections::BTreeMap<String, String>>,
}

/// Where S3 is and which credentials to start from.
#[derive(Debug, Clone, Args)]
pub struct S3Args {
    /// AWS region of the bucket (default: from the AWS configuration, else us-east-1).
    #[arg(long, value_name = "REGION", value_parser = parse_region)]
    pub region: Option<String>,
    /// S3 endpoint URL, for S3-compatible servers (e.g. http://127.0.0.1:3900).
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    pub endpoint_url: Option<String>,
    /// Address buckets as URL paths instead of host names (needed by most
    /// S3-compatible servers).
    #[arg(long)]
    pub force_path_style: bool,
    /// Profile in the AWS shared config/credentials files to take credentials from.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["credentials_file", "no_shared_config"])]
    pub profile: Option<String>,
    /// Sign with the keys in this file instead of the AWS credential chain: JSON
    /// as `aws configure export-credentials --format process` writes it
    /// (AccessKeyId, SecretAccessKey, optional SessionToken), mode 600, owned by
    /// the user running s3vol or root. s3vol reads it itself: nothing in it runs.
    /// A role (--role-arn) is assumed with these keys. Implies --no-shared-config.
    #[arg(long, value_name = "PATH")]
    pub credentials_file: Option<PathBuf>,
    /// Read neither of AWS's shared files (~/.aws/config, ~/.aws/credentials,
    /// AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE): no profile, and no
    /// credential_process, SSO or source_profile it names. Credentials then come
    /// from AWS_* variables, web identity, container or instance metadata.
    #[arg(long)]
    pub no_shared_config: bool,
    /// Server-side encryption to ask for on every upload and copy.
    #[arg(long, value_name = "ALGORITHM", value_parser = ["AES256", "aws:kms"])]
    pub sse: Option<String>,
    /// KMS key for --sse aws:kms (default: the bucket's or account's S3 key).
    #[arg(long, value_name = "KEY")]
    pub sse_kms_key_id: Option<String>,
    /// How long a request may keep failing (endpoint unreachable, 500, 503
    /// SlowDown) or stay silent before the file operation waiting for it fails with
    /// EIO. Until then it is retried with backoff and jitter.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_io_timeout)]
    pub io_timeout: Duration,
    /// Allow a plain http:// S3 or STS endpoint on another host. Credentials,
    /// the external ID and the data then cross the network in clear (payloads
    /// stay signed, so they cannot be changed unnoticed); http to this host's
    /// loopback needs no flag.
    #[arg(long)]
    pub allow_http: bool,
}

impl S3Args {
    /// Where S3 is and the credentials to reach it with, the role's external ID
    /// read from its file if given.
    pub fn connection(&self, role: &RoleArgs) -> Result<Connection, String> {
        self.check_transport(role)?;
        let role_options = role.role()?;
        Ok(Connection {
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            force_path_style: self.force_path_style,
            base: self.base_credentials()?,
            encryption: self.encryption()?,
            io_timeout: self.io_timeout,
            role: role_options,
            renew_before: role.renew_before,
            sign_payloads: self
                .endpoint_url
                .as_deref()
                .is_some_and(in_clear_beyond_this_host)
                || ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]
                    .iter()
                    .filter_map(|name| std::env::var(name).ok())
                    .any(|url| in_clear_beyond_this_host(&url)),
        })
    }

    /// Where the base credentials come from; a keys file is read now.
    fn base_credentials(&self) -> Result<BaseCredentials, String> {
        Ok(match (&self.credentials_file, &self.profile) {
            (Some(path), _) => {
                BaseCredentials::Keys(StaticKeys::read_file(path, "--credentials-file")?)
            }
            (None, Some(profile)) => BaseCredentials::Profile(profile.clone()),
            (None, None) if self.no_shared_config => BaseCredentials::ChainWithoutSharedFiles,
            (None, None) => BaseCredentials::Chain,
        })
    }

    /// Refuses a plain http endpoint on another host, from the options or from
    /// the AWS variables the SDK reads, unless --allow-http.
    fn check_transport(&self, role: &RoleArgs) -> Result<(), String> {
        if self.allow_http {
            return Ok(());
        }
        let from_env = |name: &str| std::env::var(name).ok().map(|url| (name.to_string(), url));
        let endpoints = [
            self.endpoint_url
                .clone()
                .map(|url| ("--endpoint-url".to_string(), url)),
            role.sts_endpoint_url
                .clone()
                .map(|url| ("--sts-endpoint-url".to_string(), url)),
            from_env("AWS_ENDPOINT_URL"),
            from_env("AWS_ENDPOINT_URL_S3"),
            from_env("AWS_ENDPOINT_URL_STS"),
            from_env("AWS_ENDPOINT_URL_KMS"),
        ];
        match endpoints
            .into_iter()
            .flatten()
            .find(|(_, url)| in_clear_beyond_this_host(url))
        {
            Some((given, url)) => Err(format!(
                "{given} {url} is plain http to another host: the credentials, the \
                 external ID and the data would cross the network in clear. Use \
                 https://, or give --allow-http (allow_http in fstab) if that network is \
                 trusted"
            )),
            None => Ok(()),
        }
    }

    /// The encryption every upload asks for.
    pub fn encryption(&self) -> Result<Option<Encryption>, String> {
        encryption(self.sse.as_deref(), self.sse_kms_key_id.as_deref())
    }
}

/// The server-side encryption `--sse` and `--sse-kms-key-id` ask for.
pub fn encryption(sse: Option<&str>, key_id: Option<&str>) -> Result<Option<Encryption>, String> {
    match (sse, key_id) {
        (None, None) => Ok(None),
        (Some("AES256"), None) => Ok(Some(Encryption::Aes256)),
        (Some("aws:kms"), key_id) => Ok(Some(Encryption::Kms {
            key_id: key_id.map(str::to_string),
        })),
        (_, Some(_)) => Err("--sse-kms-key-id needs --sse aws:kms".into()),
        (Some(other), None) => Err(format!("unknown --sse algorithm {other:?}")),
    }
}

/// The role to assume and how to keep its credentials fresh.
#[derive(Debug, Clone, Args)]
pub struct RoleArgs {
    /// IAM role to assume through STS for every request to the bucket.
    #[arg(long, value_name = "ARN", value_parser = parse_role_arn)]
    pub role_arn: Option<String>,
    /// External ID the role's trust policy requires. s3vol hides it from `ps` as
    /// it starts, but it stays in shell history and in the command line of
    /// whatever ran s3vol: prefer --external-id-file.
    #[arg(long, value_name = "ID", requires = "role_arn",
          conflicts_with = "external_id_file", value_parser = parse_external_id)]
    pub external_id: Option<Secret>,
    /// File holding the external ID (trailing newline ignored), mode 600, owned by
    /// the user running s3vol or root; keeps the ID out of every command line.
    #[arg(long, value_name = "PATH", requires = "role_arn")]
    pub external_id_file: Option<PathBuf>,
    /// Session name recorded in CloudTrail (default: s3vol-HOSTNAME).
    #[arg(long, value_name = "NAME", requires = "role_arn", value_parser = parse_session_name)]
    pub role_session_name: Option<String>,
    /// Lifetime of each role session, 900 s to 43200 s.
    #[arg(long, value_name = "DURATION", default_value = "3600", value_parser = parse_role_duration)]
    pub role_duration: Duration,
    /// Renew the role's credentials when this much of their lifetime is left.
    #[arg(long, value_name = "DURATION", default_value = "300", value_parser = parse_ttl)]
    pub renew_before: Duration,
    /// STS endpoint URL, for STS-compatible servers (AWS_ENDPOINT_URL_STS also works).
    #[arg(long, value_name = "URL", requires = "role_arn", value_parser = parse_url)]
    pub sts_endpoint_url: Option<String>,
}

impl RoleArgs {
    /// The role options, with the external ID read from its file if given.
    pub fn role(&self) -> Result<Option<RoleOptions>, String> {
        let Some(role_arn) = &self.role_arn else {
            return Ok(None);
        };
        if self.renew_before >= self.role_duration {
            return Err(format!(
                "--renew-before ({}s) must be shorter than --role-duration ({}s)",
                self.renew_before.as_secs(),
                self.role_duration.as_secs()
            ));
        }
        let external_id = match (&self.external_id, &self.external_id_file) {
            (Some(id), _) => Some(id.clone()),
            (None, Some(path)) => {
                let id = crate::auth::read_secret_file(path, "--external-id-file")?;
                Some(
                    parse_external_id(id.expose())
                        .map_err(|e| format!("--external-id-file {}: {e}", path.display()))?,
                )
            }
            (None, None) => None,
        };
        Ok(Some(RoleOptions {
            role_arn: role_arn.clone(),
            external_id,
            session_name: self
                .role_session_name
                .clone()
                .unwrap_or_else(crate::auth::default_session_name),
            duration: self.role_duration,
            sts_endpoint_url: self.sts_endpoint_url.clone(),
        }))
    }
}

#[derive(Debug, Clone, Args)]
pub struct MountArgs {
    /// BUCKET, BUCKET/PREFIX or s3://BUCKET/PREFIX/.
    #[arg(value_parser = parse_source)]
    pub source: Source,
    /// An existing, empty directory to attach the volume to.
    pub mountpoint: PathBuf,

    /// Mount read-only (the default): no request that changes the bucket is ever sent.
    #[arg(long)]
    pub read_only: bool,
    /// Mount read-write: files can be created, written, renamed and deleted.
    #[arg(long, conflicts_with = "read_only")]
    pub read_write: bool,
    /// Mount a read-only view of the prefix as it was at TIME (RFC 3339, e.g.
    /// 2026-11-30T12:00:00Z) or a duration before now (e.g. 2d), from the
    /// versions S3 keeps (the bucket needs versioning).
    #[arg(long, value_name = "TIME", value_parser = parse_version_at)]
    pub version_at: Option<std::time::SystemTime>,

    #[command(flatten)]
    pub s3: S3Args,

    #[command(flatten)]
    pub role: RoleArgs,

    #[command(flatten)]
    pub cse: CseArgs,

    /// Owner of every file and directory (default: the user running s3vol).
    #[arg(long, value_name = "UID")]
    pub uid: Option<u32>,
    /// Group of every file and directory (default: the group running s3vol).
    #[arg(long, value_name = "GID")]
    pub gid: Option<u32>,
    /// Permission bits of files, in octal.
    #[arg(long, value_name = "MODE", default_value = "0644", value_parser = parse_mode)]
    pub file_mode: u16,
    /// Permission bits of directories, in octal.
    #[arg(long, value_name = "MODE", default_value = "0755", value_parser = parse_mode)]
    pub dir_mode: u16,
    /// Let every user access the volume (needs user_allow_other in /etc/fuse.conf
    /// unless run as root).
    #[arg(long, conflicts_with = "allow_root")]
    pub allow_other: bool,
    /// Let root access the volume as well as the user who mounted it.
    #[arg(long)]
    pub allow_root: bool,
    /// Refuse to run programs stored on the volume (mount(8)'s noexec, which it
    /// adds to fstab lines marked user or users).
    #[arg(long)]
    pub noexec: bool,
    /// How long file and directory metadata is trusted before S3 is asked again
    /// (e.g. 5s, 1m, 0 to always ask, or "indefinite" for buckets nobody else changes).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_ttl)]
    pub metadata_ttl: Duration,
    /// Neither read nor keep modes, owners, times and extended attributes in the
    /// objects' user metadata: every file shows --file-mode, --uid, --gid and S3's
    /// LastModified, and nothing sends a HEAD for them or copies an object to
    /// change them.
    #[arg(long)]
    pub no_metadata: bool,
    /// Upload and copy objects without a Content-Type from the file's
    /// extension (S3 then says application/octet-stream, or Garage nothing).
    #[arg(long)]
    pub no_content_type: bool,

    /// Size of the first 1000 parts of a multipart upload (5MiB to 5GiB; later parts
    /// grow so a file never needs more than 10,000).
    #[arg(long, value_name = "SIZE", default_value = "8MiB", value_parser = parse_part_size)]
    pub part_size: u64,
    /// Part uploads in flight at once, across the whole volume.
    #[arg(long, value_name = "N", default_value = "8",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub max_concurrency: u16,
    /// Directory for local data: cached blocks (a subdirectory per mount) and
    /// files being written (default /var/cache/s3vol, or ~/.cache/s3vol when that
    /// is not writable).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Most disk space the block cache may use (default: a quarter of the space
    /// free in the cache directory when the volume is mounted; half of that for
    /// a read-write volume, whose files being written need the rest).
    #[arg(long, value_name = "SIZE", value_parser = parse_cache_size)]
    pub cache_size: Option<u64>,
    /// Most disk space the files being written may take at once (default: what
    /// the block cache leaves of a quarter of the free space, and at least an
    /// eighth of it). A write past it fails with ENOSPC.
    #[arg(long, value_name = "SIZE", value_parser = parse_staging_size)]
    pub staging_size: Option<u64>,
    /// Keep no read data: every read goes to S3 (files being written are still
    /// staged under --cache-dir).
    #[arg(long, conflicts_with = "cache_size")]
    pub no_cache: bool,
    /// Most memory the volume holds for data: read-ahead, the block cache's
    /// memory tier, blocks on their way to the disk cache and parts being
    /// uploaded, together (at least 32MiB). Reads and writes slow down when it is
    /// reached; `s3vol stats` shows how often.
    #[arg(long, value_name = "SIZE", default_value = "128MiB", value_parser = parse_max_memory)]
    pub max_memory: u64,

    /// Stay in the foreground instead of daemonizing; log to standard error.
    #[arg(long)]
    pub foreground: bool,
    /// For a supervisor that runs the volume in the foreground (`s3vol csi`):
    /// an inherited pipe on which the volume writes `ready` once it is mounted,
    /// or why it could not be (the kind of failure on a line, then the reason:
    /// `startup::StartError::report`).
    #[arg(long, value_name = "FD", hide = true, requires = "foreground")]
    pub ready_fd: Option<i32>,
    /// Least severe messages to log.
    #[arg(long, value_name = "LEVEL", default_value = "info",
          value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: String,
    /// Append log lines to this file (default: standard error in the foreground,
    /// syslog when daemonized).
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Append one JSON line per operation that reads or changes the bucket or
    /// hands out access to it (the first read through a handle, a listing, a
    /// link read, every change, `s3vol info` and `s3vol url`) to this file,
    /// naming the caller (uid, gid, pid, command) and the outcome.
    #[arg(long, value_name = "PATH")]
    pub audit_log: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics: a PORT (on 127.0.0.1),
    /// or IP:PORT to listen elsewhere (0.0.0.0:PORT for every address).
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_listen)]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl MountArgs {
    /// The mount as plain values; the external ID is read from its file now.
    pub fn into_config(self) -> Result<MountConfig, String> {
        if self.version_at.is_some() && self.read_write {
            return Err(
                "--version-at mounts a read-only view of the past; leave out --read-write"
                    .to_string(),
            );
        }
        Ok(MountConfig {
            connection: self.s3.connection(&self.role)?,
            cse: self.cse.options(),
            source: self.source,
            mountpoint: self.mountpoint,
            read_write: self.read_write,
            uid: self.uid,
            gid: self.gid,
            file_mode: self.file_mode,
            dir_mode: self.dir_mode,
            allow_other: self.allow_other,
            allow_root: self.allow_root,
            noexec: self.noexec,
            metadata_ttl: self.metadata_ttl,
            no_metadata: self.no_metadata,
            no_content_type: self.no_content_type,
            part_size: self.part_size,
            max_concurrency: self.max_concurrency,
            cache_dir: self.cache_dir,
            cache_size: self.cache_size,
            staging_size: self.staging_size,
            no_cache: self.no_cache,
            max_memory: self.max_memory,
            foreground: self.foreground,
            ready_fd: self.ready_fd,
            log_level: self.log_level,
            log_file: self.log_file,
            audit_log: self.audit_log,
            metrics_listen: self.metrics_listen,
            version_at: self.version_at,
        })
    }
}

/// Rewrites each `-o LIST` into long options (`-o ro,region=x` becomes
/// `--read-only --region=x`), so fstab-style options reach the same parser as
/// long options; see [`options`] for the list's syntax.
pub fn expand_o_options(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        let list = if text == "-o" {
            let next = iter
                .next()
                .ok_or("-o needs a value such as -o ro,region=eu-west-1")?;
            next.to_string_lossy().into_owned()
        } else if let Some(rest) = text.strip_prefix("-o")
            && !rest.is_empty()
            && !text.starts_with("--")
        {
            rest.to_string()
        } else {
            out.push(arg);
            continue;
        };
        out.extend(options::expand(&list, options::Caller::CommandLine, |_| None)?.args);
    }
    Ok(out)
}

/// Checks `options` (long options of `s3vol mount`) the way `s3vol mount`
/// would, without reading any file: the error names the option.
pub fn check_mount_options(options: &[OsString]) -> Result<(), String> {
    let argv = ["s3vol", "mount", "bucket", "/"]
        .into_iter()
        .map(OsString::from)
        .chain(options.iter().cloned());
    let cli = Cli::try_parse_from(argv).map_err(|e| {
        // The error without clap's usage and help lines.
        let text = e.to_string();
        let lines: Vec<&str> = text
            .lines()
            .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
            .map(str::trim)
            .collect();
        lines.join(" ").trim_start_matches("error: ").to_string()
    })?;
    let Command::Mount(args) = cli.command else {
        unreachable!("parsed as a mount")
    };
    args.s3.check_transport(&args.role)
}

/// Whether `s3vol mount --NAME` exists (`None` if not) and takes a value.
pub fn mount_option(name: &str) -> Option<bool> {
    use clap::CommandFactory;
    let command = Cli::command();
    let mount = command.find_subcommand("mount")?;
    let arg = mount.get_arguments().find(|a| a.get_long() == Some(name))?;
    Some(arg.get_action().takes_values())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn o_options_become_long_options() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["-o", "ro"], &["--read-only"]),
            (
                &["-o", "region=eu-west-1,allow_other"],
                &["--region=eu-west-1", "--allow-other"],
            ),
            (&["-ometadata_ttl=10s"], &["--metadata-ttl=10s"]),
            (&["-o", "rw,nofail"], &["--read-write"]),
            (&["--foreground", "-o", ""], &["--foreground"]),
            (&["x", "--other"], &["x", "--other"]),
        ];
        for (input, want) in cases {
            assert_eq!(
                expand_o_options(strings(input)).unwrap(),
                strings(want),
                "{input:?}"
            );
        }
        assert!(expand_o_options(strings(&["-o"])).is_err());
        assert!(expand_o_options(strings(&["-o", "a=\"b"])).is_err());
    }

    #[test]
    fn mount_options_are_looked_up_in_the_parser() {
        assert_eq!(mount_option("region"), Some(true));
        assert_eq!(mount_option("external-id-file"), Some(true));
        assert_eq!(mount_option("read-write"), Some(false));
        assert_eq!(mount_option("noexec"), Some(false));
        assert_eq!(mount_option("colour"), None);
        assert_eq!(mount_option("mountpoint"), None);
    }

    #[test]
    fn external_id_comes_from_a_file_and_stays_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("id");
        std::fs::write(&file, "from-file-123\n").unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let cli = Cli::try_parse_from(strings(&[
            "s3vol",
            "mount",
            "bkt",
            "/m",
            "--role-arn",
            "arn:aws:iam::111122223333:role/reader",
            "--external-id-file",
            file.to_str().unwrap(),
        ]))
        .unwrap();
        let Command::Mount(args) = cli.command else {
            panic!("parsed as another command");
        };
        let role = args.role.role().unwrap().unwrap();
        assert_eq!(role.external_id.as_ref().unwrap().expose(), "from-file-123");
        assert!(role.session_name.starts_with("s3vol-"));
        let shown = format!("{args:?} {role:?}");
        assert!(!shown.contains("from-file-123"), "{shown}");
        // Options that make no sense without a role, or together, are refused.
        for bad in [
            &["--external-id", "abc"][..],
            &[
                "--role-arn",
                "arn:aws:iam::111122223333:role/r",
                "--external-id",
                "abc",
                "--external-id-file",
                "/x",
            ][..],
        ] {
            let mut argv = vec!["s3vol", "mount", "bkt", "/m"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(strings(&argv)).is_err(), "{bad:?}");
        }
        let short = Cli::try_parse_from(strings(&[
            "s3vol",
            "mount",
            "bkt",
            "/m",
            "--role-arn",
            "arn:aws:iam::111122223333:role/r",
            "--role-duration",
            "900",
            "--renew-before",
            "900",
        ]))
        .unwrap();
        let Command::Mount(args) = short.command else {
            panic!("parsed as another command");
        };
        assert!(args.role.role().unwrap_err().contains("--renew-before"));
    }

    #[test]
    fn mount_arguments_parse() {
        let cli = Cli::try_parse_from(strings(&[
            "s3vol",
            "mount",
            "s3://bkt/data/",
            "/mnt/x",
            "--endpoint-url",
            "http://127.0.0.1:1",
            "--metadata-ttl",
            "2s",
        ]))
        .unwrap();
        let Command::Mount(args) = cli.command else {
            panic!("parsed as another command");
        };
        assert_eq!(args.source.to_string(), "bkt/data");
        assert_eq!(args.metadata_ttl, Duration::from_secs(2));
        assert!(
            Cli::try_parse_from(strings(&[
                "s3vol",
                "mount",
                "bkt",
                "/m",
                "--allow-other",
                "--allow-root"
            ]))
            .is_err()
        );
    }
}
