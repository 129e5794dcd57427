//! Generates the CSI messages and services (src/csi/csi.proto) with a protobuf
//! compiler written in Rust, so building needs no protoc.

fn main() {
    println!("cargo:rerun-if-changed=src/csi/csi.proto");
    let descriptors = protox::compile(["csi.proto"], ["src/csi"]).expect("src/csi/csi.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .skip_debug(["csi.v1.NodePublishVolumeRequest"])
        .compile_fds(descriptors)
        .expect("generate the CSI bindings");
}
