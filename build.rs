//! Generates the CSI messages and services (src/csi/csi.proto) with a protobuf
//! compiler written in Rust, so building needs no protoc; and records the
//! commit the binary is built from, for `s3vol --version`.

fn main() {
    println!("cargo:rerun-if-changed=src/csi/csi.proto");
    let descriptors = protox::compile(["csi.proto"], ["src/csi"]).expect("src/csi/csi.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .skip_debug(["csi.v1.NodePublishVolumeRequest"])
        .compile_fds(descriptors)
        .expect("generate the CSI bindings");
    println!("cargo:rustc-env=S3VOL_COMMIT={}", commit());
}

/// The commit being built: `S3VOL_COMMIT` when the builder gives it (a source
/// archive has no Git history), else Git's HEAD; `unknown` when neither can
/// say.
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
    let Some(head) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    // Built again when HEAD moves: a checkout changes HEAD, a commit the
    // branch's ref (loose or packed).
    // (A file named here that does not exist would run this script at every
    // build.)
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        let branch = git(&["symbolic-ref", "-q", "HEAD"]);
        let watched = ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref());
        for file in watched.map(|name| format!("{dir}/{name}")) {
            if std::path::Path::new(&file).exists() {
                println!("cargo:rerun-if-changed={file}");
            }
        }
    }
    head
}
