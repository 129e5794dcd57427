//! Generates the CSI messages and services (src/csi/csi.proto) with a protobuf
//! compiler written in Rust, so building needs no protoc; and records the
//! commit the binary is built from, for `s3vol --version`.

fn main() {
    println!("cargo:rerun-if-changed=src/csi/csi.proto");
    let descriptors = protox::compile(["csi.proto"], ["src/csi"]).expect("src/csi/csi.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .skip_debug([
            "csi.v1.NodePublishVolumeRequest",
            "csi.v1.CreateVolumeRequest",
            "csi.v1.DeleteVolumeRequest",
            "csi.v1.ValidateVolumeCapabilitiesRequest",
            "csi.v1.CreateSnapshotRequest",
        ])
        .compile_fds(descriptors)
        .expect("generate the CSI bindings");
    println!("cargo:rustc-env=S3VOL_COMMIT={}", commit());
}

/// The commit being built: `S3VOL_COMMIT` when the builder gives it (a source
/// archive has no Git history), else the HEAD of this crate's own repository,
/// with `-modified` when its sources differ from that commit; `unknown` when
/// neither can say.
fn commit() -> String {
    println!("cargo:rerun-if-env-changed=S3VOL_COMMIT");
    if let Ok(given) = std::env::var("S3VOL_COMMIT")
        && !given.is_empty()
    {
        return given;
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    // Only a repository of this crate's own: not one it happens to sit in (a
    // vendored copy, a home directory under Git).
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let own = git(&["rev-parse", "--show-toplevel"]).is_some_and(|top| {
        std::fs::canonicalize(&top).ok() == std::fs::canonicalize(&manifest_dir).ok()
    });
    let Some(head) = git(&["rev-parse", "--short=12", "HEAD"]).filter(|_| own) else {
        return "unknown".into();
    };
    // Built again when HEAD moves (a checkout changes HEAD, a commit the
    // branch's ref, loose or packed, in the common directory of every
    // worktree) and when the sources change. A file named here that does not
    // exist would run this script at every build.
    let dirs = [
        git(&["rev-parse", "--absolute-git-dir"]),
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
    ];
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for dir in dirs.iter().flatten() {
        for name in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
            let file = format!("{dir}/{name}");
            if std::path::Path::new(&file).exists() {
                println!("cargo:rerun-if-changed={file}");
            }
        }
    }
    const SOURCES: [&str; 4] = ["src", "Cargo.toml", "Cargo.lock", "build.rs"];
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    // Without the index lock a status may take: the builder's own Git
    // commands never meet it.
    let mut status = vec![
        "--no-optional-locks",
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
    ];
    status.extend(SOURCES);
    match git(&status) {
        Some(changes) if changes.is_empty() => head,
        Some(_) => format!("{head}-modified"),
        None => "unknown".into(),
    }
}
