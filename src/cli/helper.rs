//! The command line of `mount.s3vol`, the helper mount(8) runs for `mount -t
//! s3vol` and for fstab lines of type `s3vol` (and, installed as
//! `mount.fuse.s3vol`, of type `fuse.s3vol`). It is the `s3vol` binary itself, run
//! through a link of that name; `commands::helper` runs it.
//!
//! mount(8) calls `mount.s3vol SPEC DIR [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]`.
//! This module reads that line and translates the options ([`options`]) into the
//! arguments of `s3vol mount`.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::Parser;

use super::options::{self, Caller};
use super::{Cli, Command, MountArgs, mount_option};

pub const USAGE: &str = "usage: mount.s3vol BUCKET[/PREFIX] MOUNTPOINT [-sfnv] [-N NAMESPACE] \
                     [-o OPTIONS] [-t s3vol]";

/// Whether the program was run under a helper's name (`mount.s3vol`,
/// `mount.fuse.s3vol`).
pub fn invoked_as_helper(argv0: &OsStr) -> bool {
    Path::new(argv0)
        .file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|name| name.starts_with("mount."))
}

/// What mount(8) asked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub source: String,
    pub mountpoint: PathBuf,
    /// Each `-o` list, in order.
    pub options: Vec<String>,
    /// `-t`: checked to be s3vol's.
    pub fstype: Option<String>,
    /// `-N`: the mount namespace (a PID or a namespace file) to mount in.
    pub namespace: Option<String>,
    /// `-f`: check everything, mount nothing.
    pub fake: bool,
    /// `-v`: say what is being run.
    pub verbose: bool,
    /// `-s`: tolerate options s3vol does not know.
    pub sloppy: bool,
}

/// Reads the helper's command line (without argv[0]). `Ok(None)` asks for the
/// usage text.
pub fn parse_args(args: &[OsString]) -> Result<Option<Request>, String> {
    let mut request = Request::default();
    let mut positional = Vec::new();
    let mut iter = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = iter.next() {
        let mut value_of = |flag: &str, attached: &str| -> Result<String, String> {
            if attached.is_empty() {
                iter.next()
                    .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
            } else {
                Ok(attached.to_string())
            }
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            a if a.starts_with("-o") => request.options.push(value_of("-o", &a[2..])?),
            a if a.starts_with("-t") => request.fstype = Some(value_of("-t", &a[2..])?),
            a if a.starts_with("-N") => request.namespace = Some(value_of("-N", &a[2..])?),
            a if a.len() > 1 && a.starts_with('-') => {
                for flag in a[1..].chars() {
                    match flag {
                        's' => request.sloppy = true,
                        'f' => request.fake = true,
                        'n' => {} // there is no mtab to leave alone
                        'v' => request.verbose = true,
                        other => return Err(format!("unknown flag -{other}\n{USAGE}")),
                    }
                }
            }
            _ => positional.push(arg),
        }
    }
    match <[String; 2]>::try_from(positional) {
        Ok([source, mountpoint]) => {
            request.source = source;
            request.mountpoint = PathBuf::from(mountpoint);
            Ok(Some(request))
        }
        Err(given) => Err(format!(
            "expected BUCKET[/PREFIX] and MOUNTPOINT, got {} argument(s)\n{USAGE}",
            given.len()
        )),
    }
}

/// The `s3vol mount` arguments a request stands for, and warnings about options
/// that were ignored.
pub fn mount_args(request: &Request) -> Result<(MountArgs, Vec<String>), String> {
    if let Some(fstype) = &request.fstype
        && fstype != "s3vol"
        && fstype != "fuse.s3vol"
    {
        return Err(format!(
            "this helper mounts type s3vol (or fuse.s3vol), not {fstype:?}"
        ));
    }
    let mut argv: Vec<OsString> = vec![
        "s3vol".into(),
        "mount".into(),
        request.source.clone().into(),
        request.mountpoint.clone().into(),
    ];
    let mut warnings = Vec::new();
    for list in &request.options {
        let caller = Caller::MountHelper {
            sloppy: request.sloppy,
        };
        let expanded = options::expand(list, caller, mount_option)?;
        argv.extend(expanded.args);
        warnings.extend(expanded.warnings);
    }
    if argv.iter().any(|a| a == "--foreground") {
        return Err(
            "option foreground would keep mount(8) waiting for as long as the volume is \
             mounted; the helper always detaches (run `s3vol mount --foreground` directly \
             to stay in the foreground)"
                .into(),
        );
    }
    let cli = Cli::try_parse_from(&argv).map_err(|e| clap_reason(&e))?;
    match cli.command {
        Command::Mount(args) => Ok((*args, warnings)),
        _ => unreachable!("the argument list starts with the mount command"),
    }
}

/// clap's message without its usage and help lines, which name s3vol's command
/// line rather than the helper's.
fn clap_reason(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.split("\n\n").next().unwrap_or(&text);
    format!(
        "bad mount option: {}",
        first.trim_start_matches("error: ").trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn request(args: &[&str]) -> Result<Request, String> {
        parse_args(&strings(args)).map(|r| r.expect("not a help request"))
    }

    #[test]
    fn the_helper_answers_to_its_link_names() {
        assert!(invoked_as_helper(OsStr::new("/sbin/mount.s3vol")));
        assert!(invoked_as_helper(OsStr::new("/usr/sbin/mount.fuse.s3vol")));
        assert!(invoked_as_helper(OsStr::new("mount.s3vol")));
        assert!(!invoked_as_helper(OsStr::new("/usr/local/bin/s3vol")));
        assert!(!invoked_as_helper(OsStr::new("s3vol-mount.x/s3vol")));
    }

    #[test]
    fn mount8s_command_lines_parse() {
        // As mount(8) 2.38 passes them (seen with a logging helper).
        let r = request(&["bkt/pre", "/mnt/x", "-o", "rw"]).unwrap();
        assert_eq!(
            (r.source.as_str(), r.mountpoint.as_path()),
            ("bkt/pre", Path::new("/mnt/x"))
        );
        assert_eq!(r.options, ["rw"]);
        let r = request(&["b", "/m", "-s", "-n", "-v", "-o", "rw,foo=1"]).unwrap();
        assert!(r.sloppy && r.verbose && !r.fake);
        let r = request(&["b", "/m", "-f", "-v", "-o", "ro", "-N", "/proc/376/fd/4"]).unwrap();
        assert!(r.fake && r.verbose);
        assert_eq!(r.namespace.as_deref(), Some("/proc/376/fd/4"));
        let r = request(&["b", "/m", "-sfnv", "-oro", "-tfuse.s3vol"]).unwrap();
        assert!(r.sloppy && r.fake && r.verbose);
        assert_eq!(r.options, ["ro"]);
        assert_eq!(r.fstype.as_deref(), Some("fuse.s3vol"));
        assert_eq!(parse_args(&strings(&["--help"])).unwrap(), None);

        for (bad, why) in [
            (&["b"][..], "got 1 argument"),
            (&["b", "/m", "/x"][..], "got 3 argument"),
            (&["b", "/m", "-o"][..], "-o needs a value"),
            (&["b", "/m", "-x"][..], "unknown flag -x"),
        ] {
            let error = request(bad).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
            assert!(error.contains("usage: mount.s3vol"), "{error}");
        }
    }

    fn mount(args: &[&str]) -> Result<MountArgs, String> {
        mount_args(&request(args).unwrap()).map(|(args, _)| args)
    }

    #[test]
    fn fstab_lines_become_mount_arguments() {
        // `defaults` reaches the helper as `rw`: read-only all the same.
        let args = mount(&["bkt/data", "/mnt/data", "-o", "rw"]).unwrap();
        assert!(!args.read_write);
        assert_eq!(args.source.to_string(), "bkt/data");
        let args = mount(&[
            "bkt/data",
            "/mnt/data",
            "-o",
            "rw,read_write,endpoint_url=http://127.0.0.1:3900,force_path_style,\
             role_arn=arn:aws:iam::111122223333:role/r,external_id=\"a,b\",\
             metadata_ttl=1m,_netdev,nofail,noexec,nosuid,nodev,user",
        ])
        .unwrap();
        assert!(args.read_write && args.noexec && args.s3.force_path_style);
        assert_eq!(
            args.s3.endpoint_url.as_deref(),
            Some("http://127.0.0.1:3900")
        );
        assert_eq!(args.role.external_id.as_ref().unwrap().expose(), "a,b");
        assert_eq!(args.metadata_ttl, std::time::Duration::from_secs(60));
        let args = mount(&["bkt", "/m", "-o", "ro", "-t", "s3vol"]).unwrap();
        assert!(!args.read_write);
    }

    #[test]
    fn every_mount_option_is_an_fstab_option() {
        use std::time::Duration;
        // Every option of `s3vol mount --help`, in two lines because some exclude
        // each other, in both spellings.
        let first = mount(&[
            "bkt/pre",
            "/m",
            "-o",
            "rw,read-write,region=eu-west-1,endpoint_url=http://127.0.0.1:9000,\
             force-path-style,profile=ops,role_arn=arn:aws:iam::111122223333:role/r,\
             external_id_file=/etc/s3vol/id,role_session_name=host-1,role_duration=2h,\
             renew_before=10m,sts_endpoint_url=http://127.0.0.1:9001,uid=1000,gid=1001,\
             file_mode=0640,dir_mode=0750,allow_other,cache_dir=/var/cache/x,\
             cache_size=2GiB,staging_size=3GiB,metadata_ttl=90s,part_size=16MiB,max_concurrency=4,\
             max_memory=48MiB,sse=aws:kms,sse_kms_key_id=alias/s3vol,io_timeout=2m,log_level=debug,\
             log_file=/var/log/s3vol.log,noexec,cse_kms_key_id=alias/volumes,\
             cse_context=\"tenant=a,project=b\",cse_allow_plaintext",
        ])
        .unwrap();
        assert!(first.read_write && first.s3.force_path_style && first.allow_other);
        assert_eq!(first.source.to_string(), "bkt/pre");
        assert_eq!(first.s3.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            first.s3.endpoint_url.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(first.s3.profile.as_deref(), Some("ops"));
        assert_eq!(
            first.role.role_arn.as_deref(),
            Some("arn:aws:iam::111122223333:role/r")
        );
        assert_eq!(
            first.role.external_id_file.as_deref(),
            Some(Path::new("/etc/s3vol/id"))
        );
        assert_eq!(first.role.role_session_name.as_deref(), Some("host-1"));
        assert_eq!(first.role.role_duration, Duration::from_secs(7200));
        assert_eq!(first.role.renew_before, Duration::from_secs(600));
        assert_eq!(
            first.role.sts_endpoint_url.as_deref(),
            Some("http://127.0.0.1:9001")
        );
        assert_eq!((first.uid, first.gid), (Some(1000), Some(1001)));
        assert_eq!((first.file_mode, first.dir_mode), (0o640, 0o750));
        assert_eq!(first.cache_dir.as_deref(), Some(Path::new("/var/cache/x")));
        assert_eq!(first.cache_size, Some(2 << 30));
        assert_eq!(first.staging_size, Some(3 << 30));
        assert_eq!(first.metadata_ttl, Duration::from_secs(90));
        assert_eq!(first.part_size, 16 << 20);
        assert_eq!(first.max_concurrency, 4);
        assert_eq!(first.max_memory, 48 << 20);
        assert_eq!(first.s3.sse.as_deref(), Some("aws:kms"));
        assert_eq!(first.s3.sse_kms_key_id.as_deref(), Some("alias/s3vol"));
        assert_eq!(first.s3.io_timeout, Duration::from_secs(120));
        assert_eq!(first.log_level, "debug");
        assert_eq!(
            first.log_file.as_deref(),
            Some(Path::new("/var/log/s3vol.log"))
        );
        assert!(first.noexec && !first.foreground);
        let cse = first.cse.options().unwrap();
        assert_eq!(cse.key_id, "alias/volumes");
        assert_eq!(cse.context.len(), 2);
        assert_eq!(cse.context["project"], "b");
        assert!(cse.allow_plaintext);

        let second = mount(&[
            "bkt",
            "/m",
            "-o",
            "ro,read_only,role-arn=arn:aws:iam::111122223333:role/r,external-id=x\\,y,\
             allow_root,no_cache,sse=AES256,allow_http",
        ])
        .unwrap();
        assert!(!second.read_write && second.read_only && second.s3.allow_http);
        assert_eq!(second.role.external_id.as_ref().unwrap().expose(), "x,y");
        assert!(second.allow_root && !second.allow_other && second.no_cache);
        assert_eq!(second.s3.sse.as_deref(), Some("AES256"));
    }

    #[test]
    fn bad_fstab_lines_are_refused_with_the_reason() {
        for (bad, why) in [
            (
                &["bkt", "/m", "-o", "colour=blue"][..],
                "unknown option \"colour\"",
            ),
            (
                &["bkt", "/m", "-o", "metadata_ttl=soon"][..],
                "bad mount option",
            ),
            (
                &["bkt", "/m", "-o", "ro,read_write"][..],
                "bad mount option",
            ),
            (&["bkt", "/m", "-o", "foreground"][..], "always detaches"),
            (&["bkt", "/m", "-t", "nfs"][..], "not \"nfs\""),
            (&["Not A Bucket!", "/m"][..], "bad mount option"),
        ] {
            let error = mount(bad).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
            assert!(!error.contains("Usage: s3vol"), "{error}");
        }
        let (args, warnings) =
            mount_args(&request(&["bkt", "/m", "-s", "-o", "colour=blue,ro"]).unwrap()).unwrap();
        assert!(!args.read_write);
        assert!(warnings[0].contains("colour"), "{warnings:?}");
    }
}
