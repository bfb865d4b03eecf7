fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .build_client(true)
        .compile_protos(&["proto/grpc_predict_v2.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/grpc_predict_v2.proto");
    Ok(())
}
