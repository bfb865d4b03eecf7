//! The image transformer's V1 request: `{"instances": [{"image_bytes": {"b64": ...}, "key": ...}]}`
//! (TensorFlow Serving's form, which KServe's image examples use). `image` and a bare
//! `{"b64": ...}` or base64 string are accepted too. Every error names the instance.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::error::ServeError;

/// What one request may make the transformer decode. Every instance becomes a decoded image and
/// an input tensor, and a few hundred bytes of PNG can claim a canvas of gigapixels (a
/// decompression bomb), so both the count and each image's pixels are checked before any
/// pixel is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    pub max_instances: usize,
    /// Width x height of one decoded image.
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_instances: 64,
            max_pixels: 25_000_000,
        }
    }
}

/// One instance: its raw image bytes and the client's key (echoed back).
pub struct Instance {
    pub key: Option<Value>,
    pub bytes: Vec<u8>,
}

pub fn parse(body: &[u8], limits: &ImageLimits) -> Result<Vec<Instance>, ServeError> {
    let bad = |m: String| ServeError::InvalidInput(m);
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let instances = v
        .get("instances")
        .ok_or_else(|| bad("the body needs \"instances\": [...]".into()))?
        .as_array()
        .ok_or_else(|| bad("\"instances\" must be a list".into()))?;
    if instances.is_empty() {
        return Err(bad("\"instances\" is empty".into()));
    }
    if instances.len() > limits.max_instances {
        return Err(ServeError::LimitExceeded {
            what: format!("{} instances in one request", instances.len()),
            limit: limits.max_instances as u64,
            flag: "--max-instances",
        });
    }
    instances
        .iter()
        .enumerate()
        .map(|(i, inst)| parse_one(inst).map_err(|m| bad(format!("instance {i}: {m}"))))
        .collect()
}

fn parse_one(inst: &Value) -> Result<Instance, String> {
    let (payload, key) = match inst {
        Value::Object(map) => {
            let payload = map
                .get("image_bytes")
                .or_else(|| map.get("image"))
                .or_else(|| map.get("b64").map(|_| inst))
                .ok_or("expected {\"image_bytes\": {\"b64\": \"...\"}}")?;
            (payload, map.get("key").cloned())
        }
        Value::String(_) => (inst, None),
        _ => return Err("expected {\"image_bytes\": {\"b64\": \"...\"}}".into()),
    };
    let b64 = match payload {
        Value::String(s) => s.as_str(),
        Value::Object(m) => m
            .get("b64")
            .and_then(Value::as_str)
            .ok_or("the image needs a \"b64\" string")?,
        _ => return Err("the image needs a \"b64\" string".into()),
    };
    let bytes = STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("image is not valid base64: {e}"))?;
    Ok(Instance { key, bytes })
}

/// Why an image was not decoded.
#[cfg(test)]
mod tests {
    use super::*;
    use siesta_models::image_decode::{DecodeError, decode};

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn instances_in_every_accepted_form() {
        let b64 = STANDARD.encode(png(3, 2));
        let body = serde_json::json!({"instances": [
            {"image_bytes": {"b64": b64}, "key": "1"},
            {"image": {"b64": b64}},
            {"b64": b64},
            b64,
        ]});
        let got = parse(body.to_string().as_bytes(), &ImageLimits::default()).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].key, Some(Value::from("1")));
        assert!(got[1..].iter().all(|i| i.key.is_none()));
        let (px, h, w) = decode(&got[3].bytes, 3, MP).unwrap();
        assert_eq!((h, w, px.len()), (2, 3, 18));
        assert_eq!(&px[3..6], &[1, 0, 7]);
        let (grey, _, _) = decode(&got[3].bytes, 1, MP).unwrap();
        assert_eq!(grey.len(), 6);
    }

    #[test]
    fn errors_name_the_instance() {
        let cases = [
            (
                r#"{"instances": [{"image_bytes": {"b64": "!!"}}]}"#,
                "instance 0: image is not valid base64",
            ),
            (r#"{"instances": [{"key": 1}, 5]}"#, "instance 0: expected"),
            (r#"{"instances": []}"#, "empty"),
            (r#"{"inputs": []}"#, "needs \"instances\""),
            (r#"{"instances": {}}"#, "must be a list"),
            ("nope", "invalid JSON"),
        ];
        for (body, want) in cases {
            let err = parse(body.as_bytes(), &ImageLimits::default())
                .err()
                .expect(body)
                .to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
        assert!(decode(b"GIF89a not really", 3, MP).is_err());
        assert!(matches!(
            decode(&[0u8; 16], 3, MP),
            Err(DecodeError::Invalid(m)) if m.contains("not a JPEG or PNG")
        ));
    }

    const MP: u64 = 1_000_000;

    #[test]
    fn limits_are_checked_before_anything_is_decoded() {
        // A 67-byte PNG whose header claims 20,000 x 20,000 pixels (1.2 GB as RGB).
        let bomb = siesta_testkit::pixels::png_claiming(20_000, 20_000);
        assert!(bomb.len() < 100, "{} bytes", bomb.len());
        assert_eq!(
            decode(&bomb, 3, 25_000_000),
            Err(DecodeError::TooManyPixels {
                width: 20_000,
                height: 20_000
            })
        );
        assert!(
            decode(&png(1000, 1000), 3, MP).is_ok(),
            "exactly at the limit"
        );
        assert!(decode(&png(1001, 1000), 3, MP).is_err());

        let b64 = STANDARD.encode(png(1, 1));
        let body = serde_json::json!({"instances": vec![serde_json::json!({"b64": b64}); 65]});
        let e = parse(body.to_string().as_bytes(), &ImageLimits::default())
            .err()
            .unwrap();
        assert_eq!(e.status(), axum::http::StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.to_string().contains("--max-instances"), "{e}");
    }
}
