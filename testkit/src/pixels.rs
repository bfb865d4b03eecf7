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

/// A decompression bomb's header: a valid 1x1 grey PNG whose IHDR claims `width` x `height`
/// (CRC recomputed, so decoders believe it), about 70 bytes.
pub fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    // Signature, then the IHDR chunk (length, "IHDR", 13 bytes of data, CRC), one IDAT, IEND.
    const ONE_GREY_PIXEL: [u8; 67] = [
        0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, b'I', b'H', b'D', b'R', 0, 0,
        0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0, 0x3a, 0x7e, 0x9b, 0x55, 0, 0, 0, 10, b'I', b'D', b'A',
        b'T', 0x78, 0x9c, 0x63, 0x60, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01, 0x48, 0xaf, 0xa4, 0x71,
        0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xae, 0x42, 0x60, 0x82,
    ];
    let mut png = ONE_GREY_PIXEL.to_vec();
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = png[12..29].iter().fold(!0u32, |mut c, &b| {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
        c
    });
    png[29..33].copy_from_slice(&(!crc).to_be_bytes());
    png
}
