//! Helpers for the filesystem tests that run on the memory store.

use std::ffi::OsStr;

use s3vol::fs::{Fs, OpenFlags, ROOT_INO};

pub const READ: OpenFlags = OpenFlags {
    write: false,
    truncate: false,
    process: None,
    direct: false,
};
pub const WRITE: OpenFlags = OpenFlags {
    write: true,
    truncate: false,
    process: None,
    direct: false,
};
pub const TRUNCATE: OpenFlags = OpenFlags {
    write: true,
    truncate: true,
    process: None,
    direct: false,
};

/// Resolves `path` from the root as the kernel does, one lookup per component.
pub async fn lookup_path(fs: &Fs, path: &str) -> Result<u64, i32> {
    let mut ino = ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = fs
            .lookup(ino, OsStr::new(part))
            .await
            .map_err(|e| e.errno())?
            .attr
            .ino;
    }
    Ok(ino)
}

/// Opens `ino`, reads it to the end in reads of `chunk` bytes, and closes it.
pub async fn read_all(fs: &Fs, ino: u64, chunk: u32) -> Vec<u8> {
    let fh = fs.open(ino, READ).await.unwrap();
    let mut out = Vec::new();
    loop {
        let data = fs.read(fh, out.len() as u64, chunk).await.unwrap();
        if data.is_empty() {
            break;
        }
        out.extend_from_slice(&data);
    }
    fs.release(fh).await;
    out
}

/// Renames `from` to `to`, both in the root directory.
pub async fn rename_in_root(fs: &Fs, from: &str, to: &str) {
    fs.rename(ROOT_INO, OsStr::new(from), ROOT_INO, OsStr::new(to), 0)
        .await
        .unwrap_or_else(|e| panic!("rename {from} to {to}: {e}"));
}
