//! The idle tiers on the CPU: releasing a model's device copy returns its memory to the host
//! allocator (the process's resident set shrinks by about the weights' size), and restoring it
//! rebuilds the network from the host copy. Its own test binary, so no other test's
//! allocations move the resident set while it is measured.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use siesta_models::resident::ResidentWeights;

/// Resident set size of this process, from /proc (Linux).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

const MIB: u64 = 1 << 20;

#[test]
fn release_returns_the_device_copy_to_the_allocator_and_restore_rebuilds_it() {
    // 96 MiB of weights in two tensors of 48 MiB. Each is above glibc's largest mmap threshold
    // (32 MiB), so it is mapped and unmapped on its own and the resident set shows exactly what
    // is allocated and freed; smaller tensors go back to malloc's free lists, which the process
    // reuses but the resident set does not show.
    const LEN: usize = 12 * 1024 * 1024;
    let host: HashMap<String, Tensor> = (0..2)
        .map(|i| {
            let t = Tensor::ones((LEN,), candle_core::DType::F32, &Device::Cpu)
                .unwrap()
                .affine(1.0, f64::from(i))
                .unwrap();
            (format!("layer{i}.weight"), t)
        })
        .collect();
    let before = rss_bytes();
    let mut w = ResidentWeights::new(
        host,
        Device::Cpu,
        // The "network" holds its layers' weights, as a real one does.
        Box::new(|vb| {
            Ok(vec![
                vb.get(LEN, "layer0.weight")?,
                vb.get(LEN, "layer1.weight")?,
            ])
        }),
    )
    .unwrap();
    let hot = rss_bytes();
    assert_eq!(w.device_bytes(), 96 * MIB);
    assert!(
        hot >= before + 90 * MIB,
        "the device copy is real memory: {} MiB -> {} MiB",
        before / MIB,
        hot / MIB
    );
    let last_sum = |w: &mut ResidentWeights<Vec<Tensor>>| {
        w.get().unwrap()[1]
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(last_sum(&mut w), 2.0 * LEN as f32);

    w.release();
    let parked = rss_bytes();
    assert_eq!(w.device_bytes(), 0);
    assert!(
        parked + 90 * MIB <= hot,
        "released memory goes back to the allocator: hot {} MiB, parked {} MiB",
        hot / MIB,
        parked / MIB
    );

    // The next use restores from the host copy, with the same result.
    assert_eq!(last_sum(&mut w), 2.0 * LEN as f32);
    assert_eq!(w.device_bytes(), 96 * MIB);
    assert!(rss_bytes() >= parked + 90 * MIB);
}
