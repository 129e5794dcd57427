//! Mount options as mount(8) and fstab write them: `-o name=value,flag,...`.
//!
//! Every long option of `s3vol mount` can be written this way (`--metadata-ttl 10s`
//! is `metadata_ttl=10s` or `metadata-ttl=10s`), next to mount(8)'s generic options
//! (`defaults`, `noauto`, `nofail`, `_netdev`, `x-systemd.*`, ...), which are accepted
//! and, except for `ro` and `noexec`, have no effect on an s3vol volume.
//!
//! A value holding a comma is written in double quotes (`external_id="a,b"`, which
//! mount(8) passes on unchanged) or with the comma escaped (`external_id=a\,b`).
//!
//! `rw` is where the two callers differ. mount(8) passes `rw` to its helper for
//! every fstab line that does not say `ro`, including lines that say nothing, so
//! the helper cannot tell a line that asked for writes from one that did not. It
//! therefore ignores `rw`: a volume mounted through mount(8) is writable only when
//! its options say `read-write` (or `read_write`). On `s3vol`'s own command line,
//! where nobody adds options behind the user's back, `-o rw` means `--read-write`.

use std::ffi::OsString;

/// Who passed the option list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// `s3vol mount ... -o LIST`, typed by a person or a script.
    CommandLine,
    /// `mount.s3vol SPEC DIR -o LIST`, run by mount(8).
    MountHelper {
        /// mount(8)'s `-s`: options s3vol does not know are ignored with a
        /// warning instead of failing the mount.
        sloppy: bool,
    },
}

/// An option list turned into `s3vol mount` arguments.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expanded {
    /// `--name` and `--name=value` arguments.
    pub args: Vec<OsString>,
    /// Options that were ignored and deserve a word to the user.
    pub warnings: Vec<String>,
}

/// Options in order: each name, with its value if it has one.
pub type OptionList = Vec<(String, Option<String>)>;

/// mount(8)'s options that mean nothing for an s3vol volume: ordering and
/// automounting (read by mount(8) and systemd), who may mount, and kernel flags
/// that a FUSE volume does not use or that s3vol always sets (nodev, nosuid).
const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "nofail",
    "_netdev",
    "async",
    "sync",
    "dirsync",
    "atime",
    "noatime",
    "diratime",
    "nodiratime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "iversion",
    "noiversion",
    "mand",
    "nomand",
    "silent",
    "loud",
    "nodev",
    "nosuid",
    "exec",
];

/// Generic options with a value that mean nothing for an s3vol volume.
const IGNORED_WITH_VALUE: &[&str] = &["user", "comment"];

/// Splits an option list at the commas that are neither escaped nor quoted, and
/// each option at its first `=`. Quotes are removed; `\` keeps the next character
/// as it is. Empty options (`a,,b`) are skipped.
pub fn split(list: &str) -> Result<OptionList, String> {
    let mut options = Vec::new();
    let mut name = String::new();
    let mut value: Option<String> = None;
    let mut quoted = false;
    let mut chars = list.chars();
    let mut finish = |name: &mut String, value: &mut Option<String>| {
        if !name.is_empty() || value.is_some() {
            options.push((std::mem::take(name), value.take()));
        }
    };
    while let Some(c) = chars.next() {
        let literal = match c {
            '\\' => chars
                .next()
                .ok_or_else(|| format!("option list {list:?} ends with a lone backslash"))?,
            '"' => {
                quoted = !quoted;
                continue;
            }
            ',' if !quoted => {
                finish(&mut name, &mut value);
                continue;
            }
            '=' if value.is_none() => {
                value = Some(String::new());
                continue;
            }
            c => c,
        };
        match &mut value {
            Some(value) => value.push(literal),
            None => name.push(literal),
        }
    }
    if quoted {
        return Err(format!("option list {list:?} has an unclosed double quote"));
    }
    finish(&mut name, &mut value);
    if let Some((_, value)) = options.iter().find(|(name, _)| name.is_empty()) {
        return Err(format!(
            "option \"={}\" has no name",
            value.as_deref().unwrap_or_default()
        ));
    }
    Ok(options)
}

/// Turns an option list into `s3vol mount` arguments. `known` answers, for a
/// long option name of `s3vol mount`, whether it takes a value (`None`: no such
/// option); it is consulted for the mount helper, whose unknown options are an
/// error (or, when sloppy, a warning). On the command line, unknown names are
/// left for the argument parser to refuse.
pub fn expand(
    list: &str,
    caller: Caller,
    known: impl Fn(&str) -> Option<bool>,
) -> Result<Expanded, String> {
    let mut out = Expanded::default();
    for (name, value) in split(list)? {
        let generic = match (name.as_str(), &value) {
            ("ro", None) => Some(Some("read-only")),
            ("rw", None) if caller == Caller::CommandLine => Some(Some("read-write")),
            ("rw", None) => Some(None),
            ("noexec", None) => Some(Some("noexec")),
            ("remount", _) => {
                return Err(
                    "a mounted volume's options cannot be changed; unmount it and mount it \
                     again with the new options"
                        .into(),
                );
            }
            (n, None) if IGNORED.contains(&n) => Some(None),
            (n, Some(_)) if IGNORED_WITH_VALUE.contains(&n) => Some(None),
            // x-systemd.automount, x-mount.mkdir, X-mount.owner, ...: read by
            // mount(8) and systemd, not by filesystems.
            (n, _) if n.starts_with("x-") || n.starts_with("X-") => Some(None),
            _ => None,
        };
        if let Some(flag) = generic {
            if let Some(flag) = flag {
                out.add(format!("--{flag}"))?;
            }
            continue;
        }
        let long = name.replace('_', "-");
        if let Caller::MountHelper { sloppy } = caller {
            let problem = match (known(&long), &value) {
                (Some(true), Some(_)) | (Some(false), None) => None,
                (Some(true), None) => Some(format!("option {name} needs a value, as {name}=VALUE")),
                (Some(false), Some(_)) => Some(format!("option {name} takes no value")),
                (None, _) if sloppy => {
                    out.warnings
                        .push(format!("ignoring unknown option {name:?} (-s)"));
                    continue;
                }
                (None, _) => Some(format!(
                    "unknown option {name:?}; s3vol takes the options of `s3vol mount \
                     --help` written as name=value or name (such as endpoint_url=URL or \
                     read_write), and mount(8)'s generic ones (ro, noauto, nofail, _netdev, \
                     x-systemd.*, ...)"
                )),
            };
            if let Some(problem) = problem {
                return Err(problem);
            }
        }
        out.add(match value {
            Some(value) => format!("--{long}={value}"),
            None => format!("--{long}"),
        })?;
    }
    Ok(out)
}

impl Expanded {
    /// Adds an argument once. An option repeated with the same meaning (`ro` and
    /// `read_only`, or a line that says `noexec` where mount(8) adds it too) is
    /// harmless; one repeated with two values is ambiguous and refused.
    fn add(&mut self, arg: String) -> Result<(), String> {
        if self.args.iter().any(|a| *a == *arg) {
            return Ok(());
        }
        if let Some((name, value)) = arg.split_once('=') {
            let earlier = self
                .args
                .iter()
                .filter_map(|a| a.to_str()?.strip_prefix(name)?.strip_prefix('='))
                .next();
            if let Some(earlier) = earlier {
                let name = name.trim_start_matches('-');
                return Err(format!(
                    "option {name} is given twice, as {name}={earlier} and {name}={value}; \
                     keep one"
                ));
            }
        }
        self.args.push(arg.into());
        Ok(())
    }
}

/// Writes options as [`split`] reads them, quoting values that hold a comma,
/// quote or backslash.
pub fn join(options: &[(String, Option<String>)]) -> String {
    let escape = |text: &str| {
        text.chars()
            .flat_map(|c| match c {
                ',' | '"' | '\\' | '=' => vec!['\\', c],
                c => vec![c],
            })
            .collect::<String>()
    };
    options
        .iter()
        .map(|(name, value)| match value {
            Some(value) => format!("{}={}", escape(name), escape(value)),
            None => escape(name),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A few of `s3vol mount`'s options, as the parser reports them.
    fn known(name: &str) -> Option<bool> {
        match name {
            "read-only" | "read-write" | "allow-other" | "force-path-style" | "noexec" => {
                Some(false)
            }
            "region" | "endpoint-url" | "external-id" | "metadata-ttl" | "role-arn" => Some(true),
            _ => None,
        }
    }

    const HELPER: Caller = Caller::MountHelper { sloppy: false };

    fn args(list: &str, caller: Caller) -> Result<Vec<String>, String> {
        expand(list, caller, known).map(|e| {
            e.args
                .into_iter()
                .map(|a| a.into_string().unwrap())
                .collect()
        })
    }

    #[test]
    fn option_lists_split_at_unquoted_commas() {
        let pair = |n: &str, v: Option<&str>| (n.to_string(), v.map(str::to_string));
        let cases: &[(&str, OptionList)] = &[
            ("", vec![]),
            ("ro", vec![pair("ro", None)]),
            (
                "ro,,region=eu-west-1,",
                vec![pair("ro", None), pair("region", Some("eu-west-1"))],
            ),
            (
                r#"external_id="a,b""#,
                vec![pair("external_id", Some("a,b"))],
            ),
            (
                r#""external_id=a,b""#,
                vec![pair("external_id", Some("a,b"))],
            ),
            (
                r"external_id=a\,b,ro",
                vec![pair("external_id", Some("a,b")), pair("ro", None)],
            ),
            (
                "endpoint_url=http://h/?a=b",
                vec![pair("endpoint_url", Some("http://h/?a=b"))],
            ),
            ("region=", vec![pair("region", Some(""))]),
            (r"a\\b", vec![pair(r"a\b", None)]),
        ];
        for (list, want) in cases {
            assert_eq!(&split(list).unwrap(), want, "{list:?}");
        }
        assert!(split(r#"external_id="a,b"#).unwrap_err().contains("quote"));
        assert!(split(r"ro\").unwrap_err().contains("backslash"));
        assert!(split("=x").unwrap_err().contains("no name"));
    }

    #[test]
    fn options_become_mount_arguments() {
        let cases: &[(&str, Caller, &[&str])] = &[
            ("ro", HELPER, &["--read-only"]),
            // mount(8) adds rw to every line without ro: it must not make a volume
            // writable. Only s3vol's own option does.
            ("rw", HELPER, &[]),
            ("rw,read_write", HELPER, &["--read-write"]),
            ("rw", Caller::CommandLine, &["--read-write"]),
            (
                "defaults,noauto,nofail,_netdev,x-systemd.automount,x-systemd.idle-timeout=60,\
                 noatime,user,users,user=alice,nodev,nosuid,exec,comment=x,X-mount.mkdir",
                HELPER,
                &[],
            ),
            ("noexec,user", HELPER, &["--noexec"]),
            // Repeats that mean the same are kept once.
            ("ro,read_only,ro", HELPER, &["--read-only"]),
            (
                "noexec,region=x,noexec,region=x",
                HELPER,
                &["--noexec", "--region=x"],
            ),
            (
                "region=eu-west-1,allow_other,endpoint-url=http://127.0.0.1:1",
                HELPER,
                &[
                    "--region=eu-west-1",
                    "--allow-other",
                    "--endpoint-url=http://127.0.0.1:1",
                ],
            ),
            (
                r#"role_arn=arn:aws:iam::1:role/r,external_id="x,y""#,
                HELPER,
                &["--role-arn=arn:aws:iam::1:role/r", "--external-id=x,y"],
            ),
            // A value that looks like an option stays a value.
            ("region=-x", HELPER, &["--region=-x"]),
            ("whatever=1", Caller::CommandLine, &["--whatever=1"]),
        ];
        for (list, caller, want) in cases {
            assert_eq!(args(list, *caller).unwrap(), *want, "{list:?} {caller:?}");
        }
    }

    #[test]
    fn bad_options_are_refused_with_the_reason() {
        let cases: &[(&str, &str)] = &[
            ("colour=blue", "unknown option \"colour\""),
            ("region", "region needs a value, as region=VALUE"),
            ("allow_other=yes", "allow_other takes no value"),
            ("remount", "unmount it and mount it again"),
            (r#"region="eu"#, "unclosed double quote"),
            (
                "region=eu-west-1,region=us-east-1",
                "option region is given twice, as region=eu-west-1 and region=us-east-1",
            ),
        ];
        for (list, want) in cases {
            let error = args(list, HELPER).unwrap_err();
            assert!(error.contains(want), "{list:?}: {error}");
        }
        let sloppy = expand(
            "colour=blue,ro",
            Caller::MountHelper { sloppy: true },
            known,
        )
        .unwrap();
        assert_eq!(sloppy.args, vec![OsString::from("--read-only")]);
        assert_eq!(sloppy.warnings.len(), 1);
        assert!(sloppy.warnings[0].contains("colour"));
    }

    /// What mount(8) may add to an fstab line's options, and s3vol options that do
    /// not change the mode.
    fn harmless_option() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(IGNORED.to_vec()).prop_map(str::to_string),
            Just("rw".to_string()),
            Just("ro".to_string()),
            Just("noexec".to_string()),
            Just("x-systemd.automount".to_string()),
            Just("allow_other".to_string()),
            "[a-z0-9.,=\\-]{0,12}".prop_map(|v| join(&[("region".into(), Some(v))])),
            "[a-zA-Z0-9+=,.@:/_\\-]{2,20}".prop_map(|v| join(&[("external_id".into(), Some(v))])),
        ]
    }

    proptest! {
        #[test]
        fn joined_options_split_back(
            options in prop::collection::vec(
                ("[a-z_\\-]{1,12}", prop::option::of("[ -~]{0,16}")),
                0..8,
            )
        ) {
            prop_assert_eq!(split(&join(&options)).unwrap(), options);
        }

        #[test]
        fn a_line_without_read_write_never_mounts_writable(
            options in prop::collection::vec(harmless_option(), 0..12)
        ) {
            let list = options.join(",");
            let expanded = match args(&list, HELPER) {
                Ok(expanded) => expanded,
                // Two different regions, say: refused, which is safe too.
                Err(e) if e.contains("given twice") => return Ok(()),
                Err(e) => return Err(TestCaseError::fail(format!("{list:?}: {e}"))),
            };
            prop_assert!(
                !expanded.iter().any(|a| a == "--read-write"),
                "{list:?} gave {expanded:?}"
            );
        }

        #[test]
        fn any_option_list_is_parsed_or_refused_without_panicking(list in "\\PC{0,40}") {
            let _ = expand(&list, HELPER, known);
            let _ = expand(&list, Caller::MountHelper { sloppy: true }, known);
            let _ = expand(&list, Caller::CommandLine, known);
        }
    }
}
