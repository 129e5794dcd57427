//! The deploy guide's systemd units. Both pass `systemd-analyze verify`, and the
//! mount unit runs under systemd for real: a minimal Debian with systemd (built
//! once by scripts/lib.sh) is booted with systemd-nspawn, sharing the host's
//! network so that it reaches Garage on 127.0.0.1. A one-shot service in it
//! follows the guide (the helper linked into /sbin, `systemctl start`, use,
//! `systemctl stop`, with files open and with `LazyUnmount=yes`, `journalctl -t
//! s3vol`), writes what it saw to a report,
//! and powers the container off. Automount units cannot run in a container
//! (autofs is the host kernel's), so only the mount unit is run.

use crate::common;

use std::process::Command;

use common::nspawn::{self, bind, write};
use common::{Server, ServerKind, deploy_guide};

/// The ```ini block that follows the line naming `unit` in the deploy guide.
fn guide_unit(unit: &str) -> String {
    let guide = deploy_guide();
    let after = &guide[guide
        .find(&format!("`/etc/systemd/system/{unit}`"))
        .unwrap()..];
    let start = after.find("```ini\n").unwrap() + "```ini\n".len();
    let end = start + after[start..].find("```").unwrap();
    after[start..end].to_string()
}

#[test]
#[ignore = "needs systemd-analyze; run scripts/test.sh"]
fn the_deploy_guides_systemd_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let units: Vec<_> = ["mnt-scratch.mount", "mnt-scratch.automount"]
        .into_iter()
        .map(|unit| {
            let path = dir.path().join(unit);
            std::fs::write(&path, guide_unit(unit)).unwrap();
            path
        })
        .collect();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// What runs in the container, as root, once it has booted: the guide's steps,
/// each result appended to /out/report as `name=value`.
const CHECK_SCRIPT: &str = r#"#!/bin/bash
exec 2>/out/trace
set -x
report() { printf '%s=%s\n' "$1" "$2" >>/out/report; }
daemons() {
    for p in /proc/[0-9]*; do
        [[ $(readlink "$p/exe" 2>/dev/null) == */s3vol ]] && echo "${p#/proc/}"
    done
}
ln -sfn /usr/local/bin/s3vol /sbin/mount.s3vol
mkdir -p /mnt/scratch

systemctl start mnt-scratch.mount; report start $?
report active "$(systemctl is-active mnt-scratch.mount)"
report findmnt "$(findmnt -no FSTYPE,SOURCE,OPTIONS /mnt/scratch)"
report daemon_cgroup "$(grep -h 'name=systemd\|^0::' /proc/$(daemons | head -1)/cgroup | cut -d: -f3)"
report input "$(cat /mnt/scratch/input.txt)"
echo "from systemd" >/mnt/scratch/result.txt; report write $?
systemctl stop mnt-scratch.mount; report stop $?
report after_stop "$(systemctl is-active mnt-scratch.mount)"
report result "$(systemctl show -p Result --value mnt-scratch.mount)"
report mounted_after_stop "$(findmnt -no FSTYPE /mnt/scratch)"
for _ in $(seq 50); do [ -z "$(daemons)" ] && break; sleep 0.1; done
report daemons_after_stop "$(daemons | wc -l)"

# A file still open: umount refuses, the volume stays; closed, it stops.
systemctl start mnt-scratch.mount
exec 3</mnt/scratch/input.txt
systemctl stop mnt-scratch.mount; report busy_stop $?
report busy_mounted "$(findmnt -no FSTYPE /mnt/scratch)"
exec 3<&-
systemctl stop mnt-scratch.mount; report stop_after_close $?
report mounted_after_close "$(findmnt -no FSTYPE /mnt/scratch)"

# LazyUnmount=yes, in a drop-in: the stop detaches the volume at once, and the
# file still open is served until it is closed, then uploaded.
mkdir -p /run/systemd/system/mnt-scratch.mount.d
printf '[Mount]\nLazyUnmount=yes\n' >/run/systemd/system/mnt-scratch.mount.d/lazy.conf
systemctl daemon-reload
systemctl start mnt-scratch.mount
exec 4>/mnt/scratch/lazy.txt
echo before >&4
systemctl stop mnt-scratch.mount; report lazy_stop $?
report lazy_mounted "$(findmnt -no FSTYPE /mnt/scratch)"
echo after >&4; report lazy_write $?
exec 4>&-
for _ in $(seq 50); do [ -z "$(daemons)" ] && break; sleep 0.1; done
report lazy_daemons_after_close "$(daemons | wc -l)"

journalctl --no-pager -o cat -t s3vol >/out/journal
journalctl --no-pager -o short-monotonic -u mnt-scratch.mount >/out/unit
report done yes
"#;

/// The one-shot service that runs the script and then powers off.
const CHECK_UNIT: &str = "[Unit]
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/check/run
ExecStopPost=/usr/bin/systemctl poweroff --no-block
";

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage and systemd-nspawn; run scripts/test.sh"]
async fn the_deploy_guides_mount_unit_runs_under_systemd() {
    let rootfs = nspawn::rootfs();
    let server = Server::start(ServerKind::Garage);
    server.create_bucket("platform-scratch").await;
    server
        .put("platform-scratch", "jobs/input.txt", b"input\n".to_vec())
        .await;

    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    // The guide's unit, pointed at the local server.
    let unit = guide_unit("mnt-scratch.mount").replace(
        "region=eu-west-1",
        &format!(
            "region={},endpoint_url={},force_path_style",
            server.region, server.endpoint
        ),
    );
    assert!(
        unit.contains("endpoint_url="),
        "the guide's Options changed"
    );
    write(&at("units/mnt-scratch.mount"), &unit, 0o644);
    write(&at("units/s3vol-check.service"), CHECK_UNIT, 0o644);
    // The base credentials, in the files the unit's Environment= names.
    write(
        &at("etc/aws-config"),
        &format!("[default]\nregion = {}\n", server.region),
        0o644,
    );
    write(
        &at("etc/aws-credentials"),
        &format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            server.access_key, server.secret_key
        ),
        0o600,
    );
    write(&at("check/run"), CHECK_SCRIPT, 0o755);
    std::fs::create_dir(at("out")).unwrap();

    let powered_off = nspawn::boot(
        &[
            // A writable layer over the cached rootfs, thrown away at the end.
            "--volatile=overlay".into(),
            format!("--directory={}", rootfs.display()),
            bind("bind-ro", &common::binary(), "/usr/local/bin/s3vol"),
            bind("bind-ro", &at("units"), "/usr/local/lib/systemd/system"),
            bind("bind-ro", &at("etc"), "/etc/s3vol"),
            bind("bind-ro", &at("check"), "/check"),
            bind("bind", &at("out"), "/out"),
            // To systemd in the container, as on a kernel command line.
            "systemd.wants=s3vol-check.service".into(),
        ],
        &at("console"),
    );
    let read = |name: &str| std::fs::read_to_string(at(name)).unwrap_or_default();
    assert!(
        powered_off,
        "the container did not power off: {}{}",
        read("out/report"),
        read("console")
    );
    let report = nspawn::report(&at("out/report"));
    let said = format!(
        "report:\n{}\nthe unit's journal:\n{}\ntrace:\n{}",
        read("out/report"),
        read("out/unit"),
        read("out/trace"),
    );
    let field = |name: &str| report.get(name).map(String::as_str).unwrap_or("");
    assert_eq!(field("done"), "yes", "{said}");

    assert_eq!(field("start"), "0", "{said}");
    assert_eq!(field("active"), "active", "{said}");
    assert!(
        field("findmnt").starts_with("fuse.s3vol platform-scratch/jobs rw,"),
        "{said}"
    );
    // The daemon stays in the mount unit's control group.
    assert!(
        field("daemon_cgroup").ends_with("/mnt-scratch.mount"),
        "{said}"
    );
    assert_eq!(field("input"), "input", "{said}");
    assert_eq!(field("write"), "0", "{said}");
    assert_eq!(field("stop"), "0", "{said}");
    assert_eq!(field("after_stop"), "inactive", "{said}");
    assert_eq!(field("result"), "success", "{said}");
    assert_eq!(field("mounted_after_stop"), "", "{said}");
    assert_eq!(field("daemons_after_stop"), "0", "{said}");

    assert_ne!(field("busy_stop"), "0", "{said}");
    assert_eq!(field("busy_mounted"), "fuse.s3vol", "{said}");
    assert_eq!(field("stop_after_close"), "0", "{said}");
    assert_eq!(field("mounted_after_close"), "", "{said}");

    assert_eq!(field("lazy_stop"), "0", "{said}");
    assert_eq!(field("lazy_mounted"), "", "{said}");
    assert_eq!(field("lazy_write"), "0", "{said}");
    assert_eq!(field("lazy_daemons_after_close"), "0", "{said}");

    let journal = read("out/journal");
    assert!(
        journal.contains("mounted source=platform-scratch/jobs"),
        "{journal}"
    );
    assert!(
        journal.contains("unmounted mountpoint=/mnt/scratch"),
        "{journal}"
    );
    assert_eq!(
        server
            .get("platform-scratch", "jobs/result.txt")
            .await
            .unwrap(),
        b"from systemd\n"
    );
    assert_eq!(
        server
            .get("platform-scratch", "jobs/lazy.txt")
            .await
            .unwrap(),
        b"before\nafter\n"
    );
}
