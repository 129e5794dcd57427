//! The minimal Debian with systemd (built once by scripts/lib.sh), booted with
//! systemd-nspawn by the tests of the deploy guide's units and of the package:
//! a one-shot service in it writes `name=value` lines to a report and powers
//! the container off.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{tools_dir, wait_until};

/// The cached root file system; panics if scripts/test.sh has not built it.
pub fn rootfs() -> PathBuf {
    let rootfs = tools_dir().join("debian-bookworm-systemd");
    assert!(
        rootfs.join(".complete").exists(),
        "no systemd rootfs in {}; scripts/test.sh builds it",
        rootfs.display()
    );
    rootfs
}

/// Writes `content` to `path` (its directories made) with `mode`.
pub fn write(path: &Path, content: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `--FLAG=HOST:INSIDE`, a bind mount into the container.
pub fn bind(flag: &str, host: &Path, inside: &str) -> String {
    format!("--{flag}={}:{inside}", host.display())
}

/// Boots systemd-nspawn with FUSE and `args` (the directory and binds, then
/// what goes to systemd, such as the unit to start), its console in
/// `console`; waits up to 2 minutes for it to power off. Returns whether it
/// did (one that did not is killed).
pub fn boot(args: &[String], console: &Path) -> bool {
    let console = std::fs::File::create(console).unwrap();
    let mut container = Command::new("systemd-nspawn")
        .args(["--quiet", "--register=no", "--keep-unit", "--boot"])
        .args(["--bind=/dev/fuse", "--property=DeviceAllow=/dev/fuse rwm"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(console.try_clone().unwrap())
        .stderr(console)
        .spawn()
        .expect("run systemd-nspawn");
    let powered_off = wait_until(Duration::from_secs(120), || {
        container.try_wait().unwrap().is_some()
    });
    if !powered_off {
        let _ = container.kill();
    }
    let _ = container.wait();
    powered_off
}

/// The report's `name=value` lines.
pub fn report(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
