//! Generates the protobuf and gRPC code at build time. `protox` compiles the `.proto` files in
//! pure Rust, so a fresh machine needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/pillion/discovery/v1/discovery.proto",
        "proto/pillion/demo/v1/demo.proto",
        "proto/pillion/identity/v1/identity.proto",
        "proto/pillion/policy/v1/policy.proto",
        "proto/pillion/report/v1/report.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Small per-RPC buffers: see src/codec.rs.
        .codec_path("crate::codec::LeanCodec")
        .compile_fds(fds)?;
    Ok(())
}
