//! A siesta built with `cuda` on a machine without an NVIDIA driver (CI): it starts, says once
//! that it serves on the CPU, and answers inference requests.

mod common;

use std::time::Duration;

#[tokio::test]
async fn a_cuda_build_without_a_driver_serves_on_the_cpu_and_says_so() {
    if siesta_kernels::cuda::driver_present() {
        eprintln!("an NVIDIA driver is present: the CPU fallback is not exercised here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let stderr = std::fs::File::create(&log).unwrap();
    let mut server = common::Server::start_logging(&["--device", "auto"], "info", stderr.into());
    server.wait_ready().await;
    assert_eq!(server.infer_zeros().await.status(), 200);
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    let stderr = std::fs::read_to_string(&log).unwrap();
    let said = stderr.matches("no NVIDIA driver").count();
    assert_eq!(said, 1, "one clear line about the CPU fallback:\n{stderr}");
}
