//! Compiles `proto/breakwater/v1/*.proto` with the vendored protoc, so the
//! build needs no system set-up.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["signal", "status", "ratelimit", "dedup", "storm", "crd_writer", "ingest"]
        .map(|name| root.join(format!("breakwater/v1/{name}.proto")));
    let descriptor = PathBuf::from(std::env::var("OUT_DIR")?).join("breakwater_descriptor.bin");
    let mut prost = tonic_prost_build::Config::new();
    prost.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().file_descriptor_set_path(&descriptor).compile_with_config(
        prost,
        &files,
        std::slice::from_ref(&root),
    )?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
