//! Compiles proto/ with protox (pure Rust: no system protoc) and generates tonic code.
//!
//! Two passes: the messages and clients with tonic's `ProstCodec`, then the servers alone
//! (the messages named by path into the first pass) with [`codec::StrictCodec`], whose decoder
//! answers an undecodable request as `invalid_request`. A client keeps the plain codec: an
//! answer it cannot decode is the server's fault, not its own request's.

use prost::Message as _;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["tessera/token/v1/token.proto", "tessera/admin/v1/admin.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("tessera_descriptor.bin"), fds.encode_to_vec())?;
    tonic_build::configure().build_server(false).build_client(true).compile_fds(fds.clone())?;
    let servers = out.join("servers");
    std::fs::create_dir_all(&servers)?;
    tonic_build::configure()
        .build_server(true)
        .build_client(false)
        .codec_path("crate::codec::StrictCodec")
        .extern_path(".tessera.token.v1", "crate::token::v1")
        .extern_path(".tessera.admin.v1", "crate::admin::v1")
        .out_dir(&servers)
        .compile_fds(fds)?;
    Ok(())
}
