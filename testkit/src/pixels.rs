//! Test images shared by the GPU tests and benches/gpu/gpu_check.rs: the same bytes for the
//! same seed on every machine, so a GPU run compares with a CPU run elsewhere.

/// `len` pseudo-random bytes (a 64-bit LCG), the same for the same seed on every machine.
pub fn pixels(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect()
}
