//! The work between the client and the predictor: images -> one input tensor (through the
//! preprocessing kernel), score rows -> predictions (through the softmax + top-k kernel).

use serde_json::{Value, json};
use siesta_kernels::{ImageU8, softmax_in_place, top_k};
use siesta_models::ScoreKind;

use siesta_models::image_decode::{DecodeError, decode};

use super::instances::{ImageLimits, Instance};
use super::predictor::PredictorSpec;
use crate::error::ServeError;

/// The batch as the predictor's input bytes (little-endian FP32, or UINT8).
pub fn preprocess(
    spec: &PredictorSpec,
    batch: &[Instance],
    first: usize,
    limits: &ImageLimits,
) -> Result<Vec<u8>, ServeError> {
    let per_image = spec.transform.output_len();
    let elem = if spec.uint8 { 1 } else { 4 };
    let mut out = vec![0u8; batch.len() * per_image * elem];
    let channels = spec.transform.channels();
    for (i, (inst, dst)) in batch
        .iter()
        .zip(out.chunks_exact_mut(per_image * elem))
        .enumerate()
    {
        let i = first + i;
        let bad = |m: String| ServeError::InvalidInput(format!("instance {i}: {m}"));
        let (pixels, h, w) =
            decode(&inst.bytes, channels, limits.max_pixels).map_err(|e| match e {
                DecodeError::Invalid(m) => bad(m),
                DecodeError::TooManyPixels { width, height } => ServeError::LimitExceeded {
                    what: format!(
                        "instance {i}: the image is {width}x{height} = {} pixels",
                        u64::from(width) * u64::from(height)
                    ),
                    limit: limits.max_pixels,
                    flag: "--max-image-pixels",
                },
            })?;
        let img = ImageU8::new(&pixels, h, w, channels).map_err(|e| bad(e.to_string()))?;
        if spec.uint8 {
            spec.transform
                .apply_u8(&img, spec.layout, dst)
                .map_err(|e| bad(e.to_string()))?;
        } else {
            let mut values = vec![0f32; per_image];
            spec.transform
                .apply_f32(&img, spec.layout, &mut values)
                .map_err(|e| bad(e.to_string()))?;
            for (d, v) in dst.chunks_exact_mut(4).zip(values) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
    Ok(out)
}

/// One prediction per instance: `prediction` (class index, as TensorFlow's flowers model
/// answers), `label`, `scores` (probabilities over every class), `top_k`, and the client's `key`.
pub fn postprocess(
    spec: &PredictorSpec,
    batch: &[Instance],
    mut scores: Vec<f32>,
    k: usize,
) -> Result<Vec<Value>, ServeError> {
    let rows = batch.len();
    if rows == 0 || !scores.len().is_multiple_of(rows) || scores.is_empty() {
        return Err(ServeError::Predictor {
            status: 0,
            message: format!(
                "'{}' has {} values for {rows} images",
                spec.scores_output,
                scores.len()
            ),
        });
    }
    let classes = scores.len() / rows;
    let label = |i: usize| spec.labels.get(i).cloned();
    Ok(scores
        .chunks_exact_mut(classes)
        .zip(batch)
        .map(|(row, inst)| {
            if spec.scores == ScoreKind::Logits {
                softmax_in_place(row);
            }
            let top = top_k(row, k.max(1));
            let mut p = json!({
                "prediction": top[0].index,
                "scores": row,
                "top_k": top.iter().map(|s| {
                    let mut t = json!({"index": s.index, "score": s.score});
                    if let Some(l) = label(s.index) { t["label"] = json!(l); }
                    t
                }).collect::<Vec<_>>(),
            });
            if let Some(l) = label(top[0].index) {
                p["label"] = json!(l);
            }
            if let Some(key) = &inst.key {
                p["key"] = key.clone();
            }
            p
        })
        .collect())
}
