//! Compiles the .proto files with protox (pure Rust), so no protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/barman/v1/wal.proto",
        "proto/barman/v1/cluster.proto",
        "proto/barman/v1/sync.proto",
        "proto/barman/v1/archive.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
