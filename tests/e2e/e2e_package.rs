//! The Debian package (`scripts/package.sh`, here of the binary under test):
//! installed into the minimal Debian the systemd test boots, an /etc/fstab line
//! mounts a Garage prefix at boot, a file reads back and one is written, and
//! removing the package leaves none of its files, only what the administrator
//! wrote (the fstab line, the credentials).

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::nspawn::{self, write};
use common::proxy::FaultProxy;
use common::{Server, ServerKind};

/// What runs in the booted container once the volume's mount is done; each
/// result goes to /out/report as `name=value`.
const CHECK_SCRIPT: &str = r#"#!/bin/bash
exec 2>/out/trace
set -x
report() { printf '%s=%s\n' "$1" "$2" >>/out/report; }
report mounted "$(findmnt -no FSTYPE,SOURCE /mnt/data)"
report input "$(cat /mnt/data/input.txt)"
echo "from boot" >/mnt/data/written.txt; report write $?
report version "$(s3vol --version)"
report helper "$(readlink /sbin/mount.s3vol)"
report pages "$(ls /usr/share/man/man8 | grep -c 's3vol')"
report bash_completion "$(test -f /usr/share/bash-completion/completions/s3vol && echo yes)"
report zsh_completion "$(test -f /usr/share/zsh/vendor-completions/_s3vol && echo yes)"
report docs "$(test -f /usr/share/doc/s3vol/DEPLOY.md && echo yes)"
report cache "$(test -d /var/cache/s3vol && echo yes)"
dpkg -L s3vol >/out/files
umount /mnt/data; report umount $?
dpkg -r s3vol >/out/remove 2>&1; report remove $?
left=
while read -r path; do
    # Directories stay when other packages' files are in them (/usr/bin; /sbin,
    # a link on a merged /usr); the package's own is checked below.
    [ -d "$path" ] && continue
    if [ -L "$path" ] || [ -e "$path" ]; then left="$left $path"; fi
done </out/files
report left "$left"
report doc_dir "$(test -e /usr/share/doc/s3vol && echo yes)"
report cache_after "$(test -e /var/cache/s3vol && echo yes)"
report fstab_after "$(grep -c ' s3vol ' /etc/fstab)"
report credentials_after "$(test -f /root/.aws/credentials && echo yes)"
journalctl --no-pager -o cat -t s3vol >/out/journal
report done yes
"#;

/// Ordered after the volume's mount (with `nofail` nothing else is), but
/// started even if it fails, so that the report says what went wrong.
const CHECK_UNIT: &str = "[Unit]
Wants=mnt-data.mount
After=mnt-data.mount

[Service]
Type=oneshot
ExecStart=/check/run
ExecStopPost=/usr/bin/systemctl poweroff --no-block
";

/// An overlay over the cached rootfs, so the package's install survives from
/// one container run to the next; unmounted when dropped.
struct Overlay(std::path::PathBuf);

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage, cargo-deb and systemd-nspawn; run scripts/test.sh"]
async fn the_package_installs_mounts_an_fstab_line_at_boot_and_removes_cleanly() {
    let rootfs = nspawn::rootfs();
    let package = || {
        let out = Command::new("bash")
            .arg(common::script("package.sh"))
            .env("S3VOL_BIN", common::binary())
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "scripts/package.sh failed");
        let deb = String::from_utf8(out.stdout).unwrap();
        let deb = Path::new(deb.lines().last().unwrap().trim()).to_path_buf();
        let bytes = std::fs::read(&deb).unwrap();
        (deb, bytes)
    };
    let (deb, first) = package();
    let (_, second) = package();
    assert!(
        first == second,
        "the same binary makes the same package, byte for byte"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        deb.file_name().unwrap().to_str().unwrap(),
        format!("s3vol_{version}-1_amd64.deb"),
        "the package's version is the crate's"
    );

    let server = Server::start(ServerKind::Garage);
    server.create_bucket("platform-data").await;
    server
        .put("platform-data", "jobs/input.txt", b"input\n".to_vec())
        .await;

    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    for d in ["upper", "work", "root", "out", "pkg"] {
        std::fs::create_dir(at(d)).unwrap();
    }
    std::fs::copy(&deb, at("pkg/s3vol.deb")).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            rootfs.display(),
            at("upper").display(),
            at("work").display()
        ))
        .arg(at("root"))
        .status()
        .unwrap();
    assert!(mounted.success());
    let _overlay = Overlay(at("root"));
    let root = at("root");

    // The administrator's part: the package, an fstab line, the credentials.
    let install = Command::new("systemd-nspawn")
        .args(["--quiet", "--register=no", "--keep-unit", "--directory"])
        .arg(&root)
        .arg(format!("--bind-ro={}:/pkg", at("pkg").display()))
        .args(["dpkg", "-i", "/pkg/s3vol.deb"])
        .output()
        .unwrap();
    assert!(
        install.status.success(),
        "dpkg -i: {}{}",
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );
    // A slow endpoint, as at many a boot: the volume is mounted seconds after
    // the network is up, and what uses it must wait for it (`nofail` orders
    // nothing after the mount).
    let proxy = FaultProxy::start(&server.endpoint);
    proxy.delay(std::time::Duration::from_secs(2));
    let fstab = format!(
        "platform-data/jobs /mnt/data s3vol read_write,_netdev,nofail,region={},endpoint_url={},force_path_style 0 0\n",
        server.region,
        proxy.endpoint()
    );
    let old = std::fs::read_to_string(root.join("etc/fstab")).unwrap_or_default();
    write(&root.join("etc/fstab"), &(old + &fstab), 0o644);
    std::fs::create_dir_all(root.join("mnt/data")).unwrap();
    write(
        &root.join("root/.aws/credentials"),
        &format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            server.access_key, server.secret_key
        ),
        0o600,
    );
    write(&root.join("check/run"), CHECK_SCRIPT, 0o755);
    write(
        &root.join("etc/systemd/system/s3vol-check.service"),
        CHECK_UNIT,
        0o644,
    );

    let powered_off = nspawn::boot(
        &[
            format!("--directory={}", root.display()),
            nspawn::bind("bind", &at("out"), "/out"),
            "systemd.wants=s3vol-check.service".into(),
        ],
        &at("console"),
    );
    let read = |name: &str| std::fs::read_to_string(at(name)).unwrap_or_default();
    let report = nspawn::report(&at("out/report"));
    let said = format!(
        "report:\n{}\ntrace:\n{}\nremove:\n{}\nconsole:\n{}",
        read("out/report"),
        read("out/trace"),
        read("out/remove"),
        read("console")
    );
    let field = |name: &str| report.get(name).map(String::as_str).unwrap_or("");
    assert!(powered_off, "the container did not power off: {said}");
    assert_eq!(field("done"), "yes", "{said}");
    assert_eq!(
        field("mounted"),
        "fuse.s3vol platform-data/jobs",
        "mounted at boot: {said}"
    );
    assert_eq!(field("input"), "input", "{said}");
    assert_eq!(field("write"), "0", "{said}");
    assert!(
        field("version").starts_with(&format!("s3vol {version} (commit ")),
        "{said}"
    );
    assert_eq!(field("helper"), "/usr/bin/s3vol", "{said}");
    assert!(field("pages").parse::<u32>().unwrap() >= 10, "{said}");
    assert_eq!(field("bash_completion"), "yes", "{said}");
    assert_eq!(field("zsh_completion"), "yes", "{said}");
    assert_eq!(field("docs"), "yes", "{said}");
    assert_eq!(
        field("cache"),
        "yes",
        "the volume used /var/cache/s3vol: {said}"
    );
    assert_eq!(field("umount"), "0", "{said}");
    assert_eq!(field("remove"), "0", "{said}");
    assert_eq!(
        field("left"),
        "",
        "none of the package's files stays: {said}"
    );
    assert_eq!(field("doc_dir"), "", "{said}");
    assert_eq!(
        field("cache_after"),
        "",
        "the cache goes with the package: {said}"
    );
    assert_eq!(
        field("fstab_after"),
        "1",
        "the administrator's line stays: {said}"
    );
    assert_eq!(field("credentials_after"), "yes", "{said}");
    assert!(
        read("out/journal").contains("mounted source=platform-data/jobs"),
        "{said}"
    );
    assert_eq!(
        server
            .get("platform-data", "jobs/written.txt")
            .await
            .unwrap(),
        b"from boot\n"
    );
}
