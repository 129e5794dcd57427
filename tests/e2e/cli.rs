//! The command-line interface of the real binary, where no server is needed.

use std::process::Command;

use crate::common;

use common::procs::{seen_by_others_while_it_waits, silent_endpoint};

fn s3vol(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_s3vol"))
        .args(args)
        .output()
        .expect("run s3vol")
}

/// `s3vol check` of a role with the external ID in `file`, against endpoints
/// where nothing listens (port 1).
fn check_with_external_id_file(file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_s3vol"))
        .args([
            "check",
            "bkt",
            "--endpoint-url",
            "http://127.0.0.1:1",
            "--sts-endpoint-url",
            "http://127.0.0.1:1",
            "--role-arn",
            "arn:aws:iam::111122223333:role/reader",
            "--external-id-file",
        ])
        .arg(file)
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_REGION", "us-east-1")
        .output()
        .expect("run s3vol")
}

/// Splits a stream of JSON documents.
fn documents(text: &str) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<serde_json::Value>()
        .map(|d| d.expect("valid JSON"))
        .collect()
}

#[test]
fn policy_prints_pasteable_json() {
    let out = s3vol(&[
        "policy",
        "s3://bkt/root/",
        "--external-id",
        "ext-123",
        "--trusted-principal",
        "arn:aws:iam::111122223333:role/platform",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = documents(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(docs.len(), 2);
    let identity = docs[0].to_string();
    assert!(identity.contains("arn:aws:s3:::bkt/root/*"), "{identity}");
    assert!(!identity.contains("s3:PutObject"), "read-only by default");
    assert_eq!(
        docs[1]["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"],
        "ext-123"
    );

    let rw = s3vol(&["policy", "bkt/root", "--read-write"]);
    assert!(rw.status.success());
    let docs = documents(&String::from_utf8(rw.stdout).unwrap());
    assert_eq!(docs.len(), 1);
    assert!(docs[0].to_string().contains("s3:PutObject"));
}

#[test]
fn policy_refuses_bad_input_with_a_reason() {
    for (args, phrase) in [
        (&["policy", "Bad_Bucket"][..], "not a valid bucket name"),
        (
            &["policy", "bkt", "--external-id", "ext-123"][..],
            "--trusted-principal",
        ),
        (
            &[
                "policy",
                "bkt",
                "--external-id",
                "ext-123",
                "--trusted-principal",
                "alice",
            ][..],
            "is not an IAM principal ARN",
        ),
        (
            &[
                "policy",
                "bkt",
                "--external-id",
                "a b",
                "--trusted-principal",
                "arn:aws:iam::111122223333:root",
            ][..],
            "external ID must be",
        ),
        (
            &["policy", "bkt", "--cse-kms-key-id", "alias/volumes"][..],
            "by its ARN",
        ),
        (
            &["policy", "bkt", "--cse-context", "tenant=a"][..],
            "--cse-kms-key-id",
        ),
    ] {
        let out = s3vol(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(phrase), "{args:?}: {err}");
    }
}

#[test]
fn client_side_encryption_options_are_checked_before_mounting() {
    for (args, phrase) in [
        (&["--cse-context", "tenant=a"][..], "--cse-kms-key-id"),
        (&["--cse-allow-plaintext"][..], "--cse-kms-key-id"),
        (
            &["--cse-kms-key-id", "k", "--cse-context", "aws:x=1"][..],
            "AWS's own",
        ),
        (
            &["--cse-kms-key-id", "k", "--cse-context", "tenant"][..],
            "not NAME=VALUE",
        ),
    ] {
        let out = s3vol(&[&["mount", "bkt", "/tmp"][..], args].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(phrase), "{args:?}: {err}");
    }
}

#[test]
fn mount_usage_errors_exit_2() {
    let out = s3vol(&["mount", "bkt"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MOUNTPOINT"));
    let out = s3vol(&["mount", "bkt", "/tmp", "-o"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn no_credentials_anywhere_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_s3vol"))
        .args(["check", "bkt/root", "--endpoint-url", "http://127.0.0.1:9"])
        .env_clear()
        .env("HOME", dir.path())
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no usable AWS credentials"), "{err}");
    assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
}

#[test]
fn write_options_are_checked_before_mounting() {
    let mountpoint = tempfile::tempdir().unwrap();
    let dir = mountpoint.path().to_str().unwrap();
    for (args, phrase) in [
        (
            &["--read-write", "--cache-dir", "/proc/s3vol-cannot-be-here"][..],
            "--cache-dir cannot create /proc/s3vol-cannot-be-here",
        ),
        (
            &["--cache-size", "100KiB"][..],
            "cannot hold one 1MiB block",
        ),
        (
            &["--no-cache", "--cache-size", "1GiB"][..],
            "cannot be used with",
        ),
        (&["-o", "cache_size=lots"][..], "is not a size"),
        (
            &["--sse-kms-key-id", "key-1"][..],
            "--sse-kms-key-id needs --sse aws:kms",
        ),
        (&["--read-write", "--read-only"][..], "cannot be used with"),
        (&["--part-size", "1MiB"][..], "S3 parts are 5MiB to 5GiB"),
        (&["-o", "rw,part_size=8 parsecs"][..], "is not a size"),
        (
            &["--io-timeout", "0"][..],
            "the I/O timeout must be from 1s to 1h",
        ),
        (
            &["-o", "io_timeout=2days"][..],
            "the I/O timeout must be from 1s to 1h",
        ),
        (&["--io-timeout", "soon"][..], "is not a duration"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_s3vol"))
            .args(["mount", "bkt", dir])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(phrase), "{args:?}: {err}");
    }
}

#[test]
fn cleanup_checks_its_arguments() {
    let out = s3vol(&["cleanup"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SOURCE"));
    let out = s3vol(&["cleanup", "bkt/root", "--older-than", "a while"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a duration"));
    let out = s3vol(&["cleanup", "Not_A_Bucket"]);
    assert_eq!(out.status.code(), Some(2));
    // Nothing listens on port 9: a clear error after the I/O timeout, exit 1.
    let out = Command::new(env!("CARGO_BIN_EXE_s3vol"))
        .args([
            "cleanup",
            "bkt/root",
            "--endpoint-url",
            "http://127.0.0.1:9",
        ])
        .args(["--io-timeout", "1s"])
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot list the uploads under s3://bkt/root/"),
        "{err}"
    );
}

#[test]
fn stats_of_a_directory_that_is_no_volume_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_s3vol"))
        .args(["stats", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is not where an s3vol volume is mounted"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_s3vol"))
        .args(["stats", "/nonexistent/s3vol"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
}

#[test]
fn info_and_url_of_a_file_on_no_volume_say_so() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().to_str().unwrap();
    for args in [
        vec!["info", path],
        vec!["url", path],
        vec!["url", "--method", "put", path],
    ] {
        let out = s3vol(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("is not on an s3vol volume"), "{args:?}: {err}");
    }
    let out = s3vol(&["info", "/nonexistent/s3vol"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
    for (args, why) in [
        (vec!["url", "--expires", "0", path], "from 1s to 7d"),
        (vec!["url", "--expires", "soon", path], "is not a duration"),
        (
            vec!["url", "--method", "delete", path],
            "invalid value 'delete'",
        ),
    ] {
        let out = s3vol(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
    }
}

#[test]
fn a_view_of_the_past_is_read_only_and_takes_a_past_moment() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().to_str().unwrap();
    let out = s3vol(&["mount", "bkt", mnt, "--version-at", "2d", "--read-write"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("read-only view of the past; leave out --read-write"),
        "{err}"
    );
    for (at, why) in [
        ("yesterday", "neither a time (RFC 3339"),
        ("2999-01-01T00:00:00Z", "is in the future"),
    ] {
        let out = s3vol(&["mount", "bkt", mnt, "--version-at", at]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{at}: {err}");
        assert!(err.contains(why), "{at}: {err}");
    }
    // The policy for such a volume lists the version actions; without it, none.
    let out = s3vol(&["policy", "bkt/p", "--version-at", "1d"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for action in [
        "s3:ListBucketVersions",
        "s3:GetObjectVersion",
        "s3:GetBucketVersioning",
    ] {
        assert!(text.contains(action), "{action}: {text}");
    }
    let out = s3vol(&["policy", "bkt/p"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ObjectVersion"));
}

#[test]
fn a_log_file_or_audit_log_reached_through_a_symbolic_link_is_refused() {
    for (option, what) in [("--log-file", "log file"), ("--audit-log", "audit log")] {
        let dir = tempfile::tempdir().unwrap();
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        // Another user's file, or one the daemon may write, behind a link in a
        // directory where the log is expected.
        let target = dir.path().join("someone-elses-file");
        std::fs::write(&target, "theirs\n").unwrap();
        let link = dir.path().join("s3vol.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_s3vol"))
            .args(["mount", "bkt"])
            .arg(&mountpoint)
            .args([
                "--foreground",
                "--no-cache",
                "--endpoint-url",
                "http://127.0.0.1:1",
                option,
            ])
            .arg(&link)
            .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{option}: {stderr}");
        assert!(stderr.contains(&format!("cannot open {what}")), "{stderr}");
        assert!(stderr.contains("symbolic link"), "{stderr}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "theirs\n");
    }
}

#[test]
fn an_external_id_file_others_may_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("team-a.external-id");
    std::fs::write(&file, "ext-secret-123\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check_with_external_id_file(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("may be opened by other users"), "{stderr}");
    assert!(
        stderr.contains(&format!("chmod 600 {}", file.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("ext-secret-123"), "{stderr}");
}

#[test]
fn an_external_id_on_the_command_line_never_shows_in_proc() {
    const SECRET: &str = "ext-visible-9f3c";
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let sts = silent_endpoint();
    let helper = dir.path().join("mount.s3vol");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_s3vol"), &helper).unwrap();
    let role = "arn:aws:iam::111122223333:role/reader";
    // As typed, and as mount(8) passes an fstab line's options to the helper
    // (which forks the daemon).
    let routes: Vec<(&std::path::Path, Vec<String>)> = vec![
        (
            std::path::Path::new(env!("CARGO_BIN_EXE_s3vol")),
            [
                "mount",
                "bkt",
                mountpoint.to_str().unwrap(),
                "--foreground",
                "--no-cache",
                "--role-arn",
                role,
                "--external-id",
                SECRET,
                "--sts-endpoint-url",
                &sts,
            ]
            .map(String::from)
            .to_vec(),
        ),
        (
            &helper,
            vec![
                "bkt".into(),
                mountpoint.to_str().unwrap().into(),
                "-o".into(),
                format!(
                    "rw,role_arn={role},external_id=\"{SECRET}\",sts_endpoint_url={sts},\
                     no_cache,log_file={}",
                    dir.path().join("log").display()
                ),
            ],
        ),
    ];
    for (program, args) in routes {
        // It waits on STS; meanwhile every process it made is looked at.
        let seen = seen_by_others_while_it_waits(Command::new(program).args(&args));
        assert!(
            seen.contains("role/reader"),
            "the processes were seen: {seen}"
        );
        assert!(
            seen.contains("external") && seen.contains("****"),
            "the option shows, its value starred: {seen}"
        );
        assert!(!seen.contains(SECRET), "{program:?}: {seen}");
    }
}

#[test]
fn an_sts_endpoint_that_refuses_connections_is_not_blamed_on_the_external_id() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("external-id");
    std::fs::write(&file, "ext-123\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = check_with_external_id_file(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach STS at http://127.0.0.1:1"),
        "{stderr}"
    );
    assert!(!stderr.contains("external ID"), "{stderr}");
}

#[test]
fn plain_http_to_another_host_is_refused_without_allow_http() {
    // Documentation addresses (TEST-NET-1): refused before any request.
    for (option, url) in [
        ("--endpoint-url", "http://192.0.2.10:9000"),
        ("--sts-endpoint-url", "http://192.0.2.11"),
    ] {
        let mut args = vec!["check", "bkt", option, url];
        if option == "--sts-endpoint-url" {
            args.extend([
                "--endpoint-url",
                "https://192.0.2.12",
                "--role-arn",
                "arn:aws:iam::111122223333:role/r",
            ]);
        }
        let out = s3vol(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("{option} {url} is plain http")),
            "{stderr}"
        );
        assert!(stderr.contains("in clear"), "{stderr}");
        assert!(stderr.contains("--allow-http"), "{stderr}");
    }
    // The variables the AWS SDK reads count too.
    let out = Command::new(env!("CARGO_BIN_EXE_s3vol"))
        .args(["check", "bkt"])
        .env("AWS_ENDPOINT_URL_S3", "http://192.0.2.13")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("AWS_ENDPOINT_URL_S3"), "{stderr}");
}

/// Runs `command`, failing the test if it has not answered within 10 s.
fn answered_at_once(mut command: Command) -> std::process::Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let answered = common::wait_until(std::time::Duration::from_secs(10), || {
        child.try_wait().unwrap().is_some()
    });
    if !answered {
        child.kill().unwrap();
        child.wait().unwrap();
        panic!("{command:?} waited");
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_fifo_given_for_a_file_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for args in [vec!["info"], vec!["url", "--method", "put"], vec!["stats"]] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_s3vol"));
        command.args(&args).arg(&fifo);
        let out = answered_at_once(command);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("not a regular file") || err.contains("is not where an s3vol volume"),
            "{err}"
        );
    }
    // An external ID read from a FIFO would wait for a writer forever.
    let mut command = Command::new(env!("CARGO_BIN_EXE_s3vol"));
    command
        .args(["check", "bkt", "--endpoint-url", "http://127.0.0.1:1"])
        .args(["--role-arn", "arn:aws:iam::111122223333:role/reader"])
        .arg("--external-id-file")
        .arg(&fifo);
    let out = answered_at_once(command);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not a regular file"), "{err}");
}

/// `--ready-fd` (for supervisors such as `s3vol csi`) must name an inherited
/// pipe: standard output, or a number that is not open, is refused before
/// anything is mounted; without --foreground it is a usage error.
#[test]
fn a_ready_fd_that_is_not_an_inherited_pipe_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().to_str().unwrap();
    for fd in ["1", "57"] {
        let out = s3vol(&["mount", "vol", mountpoint, "--foreground", "--ready-fd", fd]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("--ready-fd {fd} is not an open pipe")),
            "{err}"
        );
    }
    let out = s3vol(&["mount", "vol", mountpoint, "--ready-fd", "3"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `s3vol csi` wants a Unix socket and a node ID, and says so.
#[test]
fn csi_refuses_an_endpoint_that_is_not_a_unix_socket() {
    let out = s3vol(&[
        "csi",
        "--endpoint",
        "tcp://127.0.0.1:9000",
        "--node-id",
        "n",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("unix:///PATH"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_s3vol"))
        .args(["csi", "--endpoint", "unix:///tmp/none.sock"])
        .env_remove("CSI_NODE_ID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--node-id"));
}

/// `s3vol csi --controller` needs no node ID, and refuses the node plugin's
/// options rather than ignore them.
#[test]
fn csi_controller_refuses_the_node_plugin_s_options() {
    for option in [
        "--node-id=n",
        "--node-cache-size=1G",
        "--cache-dir=/tmp",
        "--max-volumes=3",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_s3vol"))
            .args([
                "csi",
                "--controller",
                "--endpoint",
                "unix:///tmp/none.sock",
                option,
            ])
            .env_remove("CSI_NODE_ID")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{option}: {err}");
        let name = option.split('=').next().unwrap();
        assert!(
            err.contains("'--controller' cannot be used with") && err.contains(name),
            "{err}"
        );
    }
}

/// `s3vol check` against a port where nothing listens, with `args` and an
/// environment of `env` alone (HOME in `home`; no metadata service).
fn check_in(home: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_s3vol"))
        .args(["check", "bkt/root", "--endpoint-url", "http://127.0.0.1:9"])
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn without_shared_config_no_profile_is_read_and_nothing_it_names_runs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let config = dir.path().join("config");
    std::fs::write(
        &config,
        format!(
            "[default]\ncredential_process = sh -c 'touch {}'\n",
            marker.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let env = [
        ("AWS_CONFIG_FILE", config),
        ("AWS_SHARED_CREDENTIALS_FILE", config),
    ];
    // The profile is read, and its command run, by default: the check can fail.
    check_in(dir.path(), &env, &[]);
    assert!(
        marker.exists(),
        "the default chain did not read the profile"
    );
    std::fs::remove_file(&marker).unwrap();
    let out = check_in(dir.path(), &env, &["--no-shared-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no usable AWS credentials"), "{err}");
    assert!(!marker.exists(), "a profile's credential_process ran");
    // --profile names a profile; with no profile files it means nothing.
    let out = check_in(
        dir.path(),
        &env,
        &["--no-shared-config", "--profile", "ops"],
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_credentials_file_is_read_as_data_and_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let keys = dir.path().join("keys.json");
    let write = |text: &str, mode: u32| {
        std::fs::write(&keys, text).unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let check = |extra: &[&str]| {
        let mut args = vec!["--credentials-file", keys.to_str().unwrap()];
        args.extend_from_slice(extra);
        check_in(dir.path(), &[], &args)
    };
    // An AWS profile file in its place is refused, and what it names never runs.
    write(
        &format!(
            "[default]\naws_access_key_id = AK\ncredential_process = sh -c 'touch {}'\n",
            marker.display()
        ),
        0o600,
    );
    let out = check(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--credentials-file") && err.contains("not a JSON object"),
        "{err}"
    );
    assert!(!marker.exists());
    // Good keys, but others may read them.
    let good = r#"{"Version": 1, "AccessKeyId": "AKIDEXAMPLE", "SecretAccessKey": "hush-hush"}"#;
    write(good, 0o644);
    let err = String::from_utf8_lossy(&check(&[]).stderr).into_owned();
    assert!(err.contains("chmod 600"), "{err}");
    // Private: the keys are taken, and the check goes on to the endpoint.
    write(good, 0o600);
    let out = check(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("no usable AWS credentials"), "{err}");
    assert!(!err.contains("hush-hush"), "{err}");
    // A profile cannot be named beside them.
    assert_eq!(check(&["--profile", "ops"]).status.code(), Some(2));
}

#[test]
fn csi_refuses_a_budget_that_leaves_a_volume_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let socket = format!("unix://{}/csi.sock", dir.path().display());
    let cache = dir.path().join("cache");
    let run = |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_s3vol"));
        command
            .args([
                "csi",
                "--node-id",
                "n",
                "--endpoint",
                &socket,
                "--cache-dir",
            ])
            .arg(&cache)
            .args(extra);
        answered_at_once(command)
    };
    let out = run(&["--node-staging-size=4MiB", "--max-volumes=8"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--node-staging-size 4.0 MiB shared by --max-volumes 8"),
        "{err}"
    );
    let out = run(&["--max-volumes=0"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["--allow-endpoint=https://user@s3.example.com"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("names a user"), "{err}");
}
