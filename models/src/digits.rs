//! The scikit-learn digits data set shipped in `models/data/digits.csv.gz`, and its fixed
//! train/held-out split (every fifth sample is held out).

use std::io::Read;

pub const DIGITS_CSV_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

pub struct Digit {
    pub pixels: [f32; 64],
    pub label: u8,
}

pub fn load_digits() -> Result<Vec<Digit>, String> {
    let mut csv = String::new();
    flate2::read::GzDecoder::new(DIGITS_CSV_GZ)
        .read_to_string(&mut csv)
        .map_err(|e| format!("digits.csv.gz: {e}"))?;
    csv.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            let values: Vec<f32> = line
                .split(',')
                .map(|v| v.trim().parse::<f32>())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("digits line {}: {e}", i + 1))?;
            let (px, label) = values.split_at(64.min(values.len()));
            let pixels: [f32; 64] = px
                .try_into()
                .map_err(|_| format!("digits line {}: expected 65 values", i + 1))?;
            Ok(Digit {
                pixels,
                label: *label
                    .first()
                    .ok_or(format!("digits line {}: no label", i + 1))?
                    as u8,
            })
        })
        .collect()
}

pub fn is_held_out(index: usize) -> bool {
    index % 5 == 4
}
