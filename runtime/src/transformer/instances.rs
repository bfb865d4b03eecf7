//! The image transformer's V1 request: `{"instances": [{"image_bytes": {"b64": ...}, "key": ...}]}`
//! (TensorFlow Serving's form, which KServe's image examples use). `image` and a bare
//! `{"b64": ...}` or base64 string are accepted too. Every error names the instance.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use image::{DynamicImage, ImageReader};
use serde_json::Value;

use crate::error::ServeError;

/// Decoded images larger than this on either side are refused before their pixels are
/// allocated (a small PNG can claim a huge canvas).
const MAX_SIDE: u32 = 8192;

/// One instance: its raw image bytes and the client's key (echoed back).
pub struct Instance {
    pub key: Option<Value>,
    pub bytes: Vec<u8>,
}

pub fn parse(body: &[u8]) -> Result<Vec<Instance>, ServeError> {
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

/// Decodes JPEG or PNG into 8-bit pixels with the channels the model wants (1 = grey, 3 = RGB).
pub fn decode(bytes: &[u8], channels: u32) -> Result<(Vec<u8>, u32, u32), String> {
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read the image: {e}"))?;
    if reader.format().is_none() {
        return Err("not a JPEG or PNG image".into());
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    reader.limits(limits);
    let img: DynamicImage = reader
        .decode()
        .map_err(|e| format!("cannot decode the image: {e}"))?;
    let (w, h) = (img.width(), img.height());
    let pixels = match channels {
        1 => img.into_luma8().into_raw(),
        3 => img.into_rgb8().into_raw(),
        n => {
            return Err(format!(
                "the model wants {n} channels; only 1 or 3 are supported"
            ));
        }
    };
    Ok((pixels, h, w))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let got = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].key, Some(Value::from("1")));
        assert!(got[1..].iter().all(|i| i.key.is_none()));
        let (px, h, w) = decode(&got[3].bytes, 3).unwrap();
        assert_eq!((h, w, px.len()), (2, 3, 18));
        assert_eq!(&px[3..6], &[1, 0, 7]);
        let (grey, _, _) = decode(&got[3].bytes, 1).unwrap();
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
            let err = parse(body.as_bytes()).err().expect(body).to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
        assert!(decode(b"GIF89a not really", 3).is_err());
        assert!(
            decode(&[0u8; 16], 3)
                .unwrap_err()
                .contains("not a JPEG or PNG")
        );
    }
}
