//! Compiles `settle/v1/*.proto` with protox (pure Rust, no protoc) and writes the file
//! descriptor set next to the generated code so servers can offer gRPC reflection.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "settle/v1/coordinator.proto",
        "settle/v1/participant.proto",
        "settle/v1/admin.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["."])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("settle_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .bytes(".settle.v1")
        .compile_fds(fds)?;
    Ok(())
}
