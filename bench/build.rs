//! Compiles `../proto` (the service's own protobuf) with protox, a pure-Rust protobuf
//! compiler, so no system `protoc` is needed. Only the client side is generated.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let mut compiler = protox::Compiler::new([&proto])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files([proto.join("messaging.proto")])?;
    tonic_prost_build::configure()
        .build_server(false)
        .type_attribute(".", "#[allow(clippy::all)]")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
