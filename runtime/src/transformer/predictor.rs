//! The transformer's side of the predictor: what its V2 metadata says about the input and the
//! scores, and one binary-tensor V2 inference call.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use siesta_kernels::{ImageTransform, Layout};
use siesta_models::{ImagePreprocessing, ScoreKind};

use crate::error::ServeError;

const HEADER_LEN: &str = "inference-header-content-length";

/// What the transformer must produce for the predictor, learned from its metadata.
#[derive(Debug, Clone)]
pub struct PredictorSpec {
    pub input: String,
    /// Raw pixels (UINT8) are sent when the model takes them: a quarter of the bytes of FP32.
    pub uint8: bool,
    pub layout: Layout,
    pub transform: ImageTransform,
    /// Rows per call; 0 = the model takes one unbatched image.
    pub max_batch_size: usize,
    pub scores_output: String,
    pub scores: ScoreKind,
    pub labels: Vec<String>,
}

impl PredictorSpec {
    /// Reads the V2 metadata document (Siesta publishes `parameters.image`).
    pub fn from_metadata(meta: &Value) -> Result<Self, String> {
        let input = meta["inputs"]
            .get(0)
            .ok_or("the predictor's metadata lists no inputs")?;
        let name = input["name"].as_str().ok_or("input without a name")?;
        let datatype = input["datatype"].as_str().unwrap_or_default();
        let uint8 = match datatype {
            "FP32" => false,
            "UINT8" => true,
            other => {
                return Err(format!(
                    "input '{name}' is {other}; an image model takes FP32 or UINT8"
                ));
            }
        };
        let shape: Vec<i64> = serde_json::from_value(input["shape"].clone())
            .map_err(|_| format!("input '{name}' has no shape"))?;
        let params = &meta["parameters"];
        let max_batch_size = params["max_batch_size"].as_u64().unwrap_or(0) as usize;
        let dims: &[i64] = match (shape.len(), max_batch_size > 0) {
            (4, true) => &shape[1..],
            (3, false) => &shape,
            _ => {
                return Err(format!(
                    "input '{name}' has shape {shape:?}; an image model takes [N,C,H,W] or [N,H,W,C]"
                ));
            }
        };
        let (layout, c, h, w) = siesta_models::encoded_images::image_input_layout(dims)
            .map_err(|e| format!("input '{name}' has {e}"))?;
        let image: ImagePreprocessing = serde_json::from_value(params["image"].clone()).map_err(|_| {
            "the predictor's metadata has no `parameters.image` (resize, mean, std, scores output); \
             add an \"image\" block to its config.json"
                .to_string()
        })?;
        if image.mean.len() != c as usize {
            return Err(format!(
                "image.mean has {} values for {c} channels",
                image.mean.len()
            ));
        }
        let transform = ImageTransform {
            resize_shorter: image.resize_shorter,
            crop_height: h,
            crop_width: w,
            mean: image.mean,
            std: image.std,
        };
        transform.validate().map_err(|e| e.to_string())?;
        let labels = serde_json::from_value(params["labels"].clone()).unwrap_or_default();
        Ok(PredictorSpec {
            input: name.to_string(),
            uint8,
            layout,
            transform,
            max_batch_size,
            scores_output: image.scores_output,
            scores: image.scores,
            labels,
        })
    }
}

/// Where the predictor is: a base URL (the gateway, or a replica) and the `Host` that routes to
/// it there.
#[derive(Clone)]
pub struct PredictorClient {
    base: String,
    host: Option<String>,
    pub model: String,
    timeout: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl PredictorClient {
    pub fn new(
        base: &str,
        host: Option<String>,
        model: String,
        timeout: Duration,
    ) -> Result<Self, String> {
        let uri: Uri = base
            .parse()
            .map_err(|e| format!("--predictor-url '{base}': {e}"))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(format!("--predictor-url '{base}' must be http://HOST:PORT"));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Ok(PredictorClient {
            base: base.trim_end_matches('/').to_string(),
            host,
            model,
            timeout,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Bytes,
        head_len: Option<usize>,
    ) -> Result<(axum::http::HeaderMap, Bytes), ServeError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(h) = &self.host {
            req = req.header(header::HOST, h);
        }
        if let Some(n) = head_len {
            req = req
                .header(HEADER_LEN, n)
                .header(header::CONTENT_TYPE, "application/octet-stream");
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ServeError::Predictor {
                status: 0,
                message: e.to_string(),
            })?;
        let unreachable = |e: String| ServeError::Predictor {
            status: 0,
            message: format!("cannot reach {}: {e}", self.base),
        };
        let resp = tokio::time::timeout(self.timeout, async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let (head, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, ServeError>((head, body))
        })
        .await
        .map_err(|_| ServeError::Predictor {
            status: 504,
            message: format!("no answer within {} ms", self.timeout.as_millis()),
        })??;
        let (head, body) = resp;
        if !head.status.is_success() {
            let detail = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
            return Err(ServeError::Predictor {
                status: head.status.as_u16(),
                message: format!("{} answered {}: {detail}", self.model, head.status),
            });
        }
        Ok((head.headers, body))
    }

    pub async fn spec(&self) -> Result<PredictorSpec, ServeError> {
        let (_, body) = self
            .call(
                "GET",
                &format!("/v2/models/{}", self.model),
                Bytes::new(),
                None,
            )
            .await?;
        let meta: Value = serde_json::from_slice(&body).map_err(|e| ServeError::Predictor {
            status: 0,
            message: format!("metadata is not JSON: {e}"),
        })?;
        PredictorSpec::from_metadata(&meta).map_err(|m| ServeError::Predictor {
            status: 0,
            message: m,
        })
    }

    /// One V2 call with the batch as a binary tensor; returns the score rows as f32.
    pub async fn infer(
        &self,
        spec: &PredictorSpec,
        shape: &[usize],
        tensor: Bytes,
    ) -> Result<Vec<f32>, ServeError> {
        let head = json!({
            "inputs": [{
                "name": spec.input,
                "shape": shape,
                "datatype": if spec.uint8 { "UINT8" } else { "FP32" },
                "parameters": {"binary_data_size": tensor.len()},
            }],
            "outputs": [{"name": spec.scores_output, "parameters": {"binary_data": true}}],
        })
        .to_string();
        let mut body = Vec::with_capacity(head.len() + tensor.len());
        body.extend_from_slice(head.as_bytes());
        body.extend_from_slice(&tensor);
        let (headers, resp) = self
            .call(
                "POST",
                &format!("/v2/models/{}/infer", self.model),
                body.into(),
                Some(head.len()),
            )
            .await?;
        scores_from_response(&headers, &resp, &spec.scores_output).map_err(|m| {
            ServeError::Predictor {
                status: 0,
                message: m,
            }
        })
    }
}

/// Finds the scores output in a V2 response, binary or JSON.
fn scores_from_response(
    headers: &axum::http::HeaderMap,
    body: &[u8],
    name: &str,
) -> Result<Vec<f32>, String> {
    let json_len = headers
        .get(HEADER_LEN)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(body.len());
    if json_len > body.len() {
        return Err("the response is shorter than its JSON header".into());
    }
    let head: Value = serde_json::from_slice(&body[..json_len])
        .map_err(|e| format!("response is not V2 JSON: {e}"))?;
    let outputs = head["outputs"]
        .as_array()
        .ok_or("the response has no outputs")?;
    let mut offset = json_len;
    for out in outputs {
        let size = out["parameters"]["binary_data_size"]
            .as_u64()
            .map(|n| n as usize);
        if out["name"] != name {
            offset += size.unwrap_or(0);
            continue;
        }
        if out["datatype"] != "FP32" {
            return Err(format!(
                "output '{name}' is {}, expected FP32",
                out["datatype"]
            ));
        }
        return match size {
            Some(n) => {
                let raw = body
                    .get(offset..offset + n)
                    .ok_or("binary output past the end of the response")?;
                Ok(raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect())
            }
            None => serde_json::from_value(out["data"].clone())
                .map_err(|e| format!("output '{name}': {e}")),
        };
    }
    Err(format!("the response has no output '{name}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mnist_meta() -> Value {
        json!({
            "name": "mnist",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
            "parameters": {
                "max_batch_size": 64,
                "labels": ["0","1","2","3","4","5","6","7","8","9"],
                "image": {"resize_shorter": 28, "mean": [0.0], "std": [1.0],
                          "scores_output": "probabilities", "scores": "probabilities"},
            },
        })
    }

    #[test]
    fn metadata_gives_layout_size_and_scores() {
        let s = PredictorSpec::from_metadata(&mnist_meta()).unwrap();
        assert_eq!(s.layout, Layout::Nchw);
        assert_eq!(
            (
                s.transform.crop_height,
                s.transform.crop_width,
                s.transform.channels()
            ),
            (28, 28, 1)
        );
        assert_eq!(s.max_batch_size, 64);
        assert_eq!(s.scores, ScoreKind::Probabilities);
        assert_eq!(s.labels.len(), 10);
        assert!(!s.uint8);

        let mut keras = mnist_meta();
        keras["inputs"][0] = json!({"name": "x", "datatype": "UINT8", "shape": [-1, 299, 299, 3]});
        keras["parameters"]["image"]["mean"] = json!([0.5, 0.5, 0.5]);
        keras["parameters"]["image"]["std"] = json!([0.5, 0.5, 0.5]);
        let s = PredictorSpec::from_metadata(&keras).unwrap();
        assert_eq!(
            (s.layout, s.uint8, s.transform.crop_width),
            (Layout::Nhwc, true, 299)
        );
    }

    #[test]
    fn unusable_metadata_says_why() {
        let cases: [(&str, Value, &str); 4] = [
            ("/parameters/image", Value::Null, "no `parameters.image`"),
            ("/inputs/0/datatype", json!("BYTES"), "takes FP32 or UINT8"),
            ("/inputs/0/shape", json!([-1, 28, 28]), "takes [N,C,H,W]"),
            (
                "/inputs/0/shape",
                json!([-1, 1, -1, -1]),
                "fixed height and width",
            ),
        ];
        for (path, value, want) in cases {
            let mut m = mnist_meta();
            *m.pointer_mut(path).unwrap() = value;
            let err = PredictorSpec::from_metadata(&m).unwrap_err();
            assert!(err.contains(want), "{path}: {err}");
        }
    }

    #[test]
    fn scores_come_from_binary_or_json_outputs() {
        let head = json!({"outputs": [
            {"name": "class", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}},
            {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}},
        ]})
        .to_string();
        let mut body = head.clone().into_bytes();
        body.extend_from_slice(&1i64.to_le_bytes());
        body.extend_from_slice(&0.25f32.to_le_bytes());
        body.extend_from_slice(&0.75f32.to_le_bytes());
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(HEADER_LEN, head.len().into());
        assert_eq!(
            scores_from_response(&headers, &body, "probabilities").unwrap(),
            [0.25, 0.75]
        );
        let plain = json!({"outputs": [{"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 0.5]}]});
        let empty = axum::http::HeaderMap::new();
        assert_eq!(
            scores_from_response(&empty, plain.to_string().as_bytes(), "p").unwrap(),
            [0.5, 0.5]
        );
        assert!(scores_from_response(&empty, plain.to_string().as_bytes(), "q").is_err());
    }
}
