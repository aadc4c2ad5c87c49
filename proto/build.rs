//! Generates the Rust types from proto/crstream.proto with protox (pure Rust),
//! so building needs no `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/crstream.proto");
    let fds = protox::compile(["proto/crstream.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
