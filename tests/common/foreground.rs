//! A volume served by `s3vol mount --foreground` as a child of the test, so
//! that its exit status can be checked.

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use tempfile::TempDir;

use super::{Server, is_mounted, s3vol, wait_until};

/// A read-write volume served by `s3vol mount --foreground`, a child of the test,
/// so that its exit status can be checked.
pub struct Foreground {
    pub child: Child,
    dir: TempDir,
}

impl Foreground {
    /// `vol/root` of the server, read-write.
    pub fn start(server: &Server) -> Foreground {
        Foreground::start_at(server, "vol/root")
    }

    /// `source` of the server, read-write.
    pub fn start_at(server: &Server, source: &str) -> Foreground {
        let dir = tempfile::tempdir().unwrap();
        let child = s3vol()
            .args(["mount", source])
            .arg(dir.path())
            .args(["--foreground", "--read-write", "--cache-dir"])
            .arg(dir.path().with_extension("cache"))
            .arg("--log-file")
            .arg(dir.path().with_extension("log"))
            .args(server.endpoint_args())
            .envs(server.env())
            .spawn()
            .unwrap();
        let volume = Foreground { child, dir };
        assert!(
            wait_until(Duration::from_secs(20), || is_mounted(volume.path())),
            "the volume did not appear: {}",
            volume.log_text()
        );
        volume
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().with_extension("log")).unwrap_or_default()
    }

    /// Waits for s3vol to exit and says whether it exited 0.
    pub fn exited_cleanly(&mut self) -> bool {
        self.exit_code() == Some(0)
    }

    /// Waits for s3vol to exit; its exit code.
    pub fn exit_code(&mut self) -> Option<i32> {
        for _ in 0..1000 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("s3vol did not exit: {}", self.log_text());
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        super::unmount(self.dir.path());
        super::remove_once_the_daemon_is_gone(
            self.dir.path(),
            &self.dir.path().with_extension("cache"),
        );
        let _ = std::fs::remove_file(self.dir.path().with_extension("log"));
    }
}
