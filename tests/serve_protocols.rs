//! `siesta serve` answers KServe V1, V2 REST (JSON and binary tensors) and V2 gRPC correctly,
//! checked against the shipped model's held-out accuracy and an identity model for every datatype.

mod common;

use base64::Engine;
use common::{Server, held_out_digits, mnist_v2_body};
use serde_json::{Value, json};
use siesta_runtime::grpc::pb;

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

#[tokio::test]
async fn v2_json_matches_the_readme_accuracy_on_held_out_digits() {
    let server = Server::start(&[]);
    server.wait_ready().await;
    let digits = held_out_digits();
    let mut correct = 0;
    for chunk in digits.chunks(50) {
        let images: Vec<Vec<f32>> = chunk.iter().map(|(x, _)| x.clone()).collect();
        let resp: Value = server
            .post_json("/v2/models/mnist/infer", &mnist_v2_body(&images))
            .await
            .json()
            .await
            .unwrap();
        let class = resp["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "class")
            .unwrap();
        assert_eq!(class["shape"], json!([chunk.len()]));
        let probs = resp["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "probabilities")
            .unwrap();
        let p: Vec<f64> = probs["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (i, (_, label)) in chunk.iter().enumerate() {
            let row = &p[i * 10..(i + 1) * 10];
            assert!(
                (row.iter().sum::<f64>() - 1.0).abs() < 1e-4,
                "probabilities sum to 1"
            );
            assert_eq!(class["data"][i].as_u64().unwrap() as usize, argmax(row));
            correct += usize::from(argmax(row) == usize::from(*label));
        }
    }
    let acc = correct as f64 / digits.len() as f64;
    assert!(acc >= 0.99, "held-out accuracy {acc}");
}

#[tokio::test]
async fn v1_instances_inputs_and_b64_give_the_same_predictions() {
    let server = Server::start(&[]);
    server.wait_ready().await;
    let (img, label) = held_out_digits().swap_remove(3);
    let nested: Vec<Vec<Vec<f32>>> = vec![img.chunks(28).map(|r| r.to_vec()).collect()];
    let raw: Vec<u8> = img.iter().flat_map(|v| v.to_le_bytes()).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
    let bodies = [
        json!({"instances": [nested, nested]}),
        json!({"inputs": [nested]}),
        json!({"inputs": {"input": [nested]}}),
        json!({"instances": [{"input": nested}]}),
        json!({"instances": [{"b64": b64}]}),
    ];
    for body in bodies {
        let resp = server.post_json("/v1/models/mnist:predict", &body).await;
        assert_eq!(resp.status(), 200, "{body}");
        assert!(resp.headers().contains_key("x-siesta-compute-ms"));
        let v: Value = resp.json().await.unwrap();
        let preds = v["predictions"].as_array().unwrap();
        assert!(!preds.is_empty());
        for p in preds {
            assert_eq!(p["class"], json!(label), "{body}");
            assert_eq!(p["probabilities"].as_array().unwrap().len(), 10);
        }
    }
    let list: Value = server.get("/v1/models").await.json().await.unwrap();
    assert_eq!(list, json!({"models": ["mnist"]}));
    let status: Value = server.get("/v1/models/mnist").await.json().await.unwrap();
    assert_eq!(status, json!({"name": "mnist", "ready": true}));
}

/// Builds a binary-extension request: JSON header, then the raw tensors.
fn binary_request(header: &Value, tensors: &[&[u8]]) -> (Vec<u8>, usize) {
    let mut body = serde_json::to_vec(header).unwrap();
    let n = body.len();
    for t in tensors {
        body.extend_from_slice(t);
    }
    (body, n)
}

#[tokio::test]
async fn v2_binary_tensors_in_and_out_agree_with_json() {
    let server = Server::start(&[]);
    server.wait_ready().await;
    let client = reqwest::Client::new();
    let (img, label) = held_out_digits().swap_remove(7);
    let raw: Vec<u8> = img.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({
        "id": "req-7",
        "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "class", "parameters": {"binary_data": false}}, {"name": "probabilities", "parameters": {"binary_data": true}}]
    });
    let (body, n) = binary_request(&header, &[&raw]);
    let resp = client
        .post(server.url("/v2/models/mnist/infer"))
        .header("Inference-Header-Content-Length", n)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let json_len: usize = resp.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = resp.bytes().await.unwrap();
    let head: Value = serde_json::from_slice(&bytes[..json_len]).unwrap();
    assert_eq!(head["id"], "req-7");
    let outs = head["outputs"].as_array().unwrap();
    assert_eq!(outs[0]["name"], "class");
    assert_eq!(outs[0]["data"], json!([label]));
    assert_eq!(outs[1]["name"], "probabilities");
    assert!(outs[1].get("data").is_none());
    assert_eq!(outs[1]["parameters"]["binary_data_size"], 40);
    let probs: Vec<f32> = bytes[json_len..]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(probs.len(), 10);
    let best = probs
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    assert_eq!(best, usize::from(label));

    // binary_data_output=true makes every output binary.
    let header = json!({
        "parameters": {"binary_data_output": true},
        "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "parameters": {"binary_data_size": raw.len()}}]
    });
    let (body, n) = binary_request(&header, &[&raw]);
    let resp = client
        .post(server.url("/v2/models/mnist/infer"))
        .header("Inference-Header-Content-Length", n)
        .body(body)
        .send()
        .await
        .unwrap();
    let json_len: usize = resp.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(bytes.len() - json_len, 40 + 8);
}

fn identity_model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let specs: Vec<Value> = siesta_models::DataType::ALL
        .iter()
        .map(|d| json!({"name": format!("in_{d}"), "datatype": d.as_str(), "shape": [-1]}))
        .collect();
    let outs: Vec<Value> = siesta_models::DataType::ALL
        .iter()
        .map(|d| json!({"name": format!("out_{d}"), "datatype": d.as_str(), "shape": [-1]}))
        .collect();
    let cfg = json!({"name": "identity", "architecture": "identity", "max_batch_size": 8, "inputs": specs, "outputs": outs});
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    dir
}

fn sample(dt: siesta_models::DataType) -> Value {
    use siesta_models::DataType as D;
    match dt {
        D::Bool => json!([[true, false, true]]),
        D::U8 => json!([[0, 7, 255]]),
        D::U16 => json!([[0, 7, 65535]]),
        D::U32 => json!([[0, 7, 4294967295u64]]),
        D::U64 => json!([[0, 7, u64::MAX]]),
        D::I8 => json!([[-128, 7, 127]]),
        D::I16 => json!([[-32768, 7, 32767]]),
        D::I32 => json!([[i32::MIN, 7, i32::MAX]]),
        D::I64 => json!([[i64::MIN, 7, i64::MAX]]),
        D::F16 | D::BF16 => json!([[0.5, -2.0, 1024.0]]),
        D::F32 | D::F64 => json!([[0.25, -2.5, 1.0e10]]),
        D::Bytes => json!([["a", "", "héllo"]]),
    }
}

#[tokio::test]
async fn every_datatype_round_trips_as_json_and_as_binary() {
    let dir = identity_model_dir();
    let server = Server::start(&[
        "--model-name",
        "identity",
        "--storage-uri",
        dir.path().to_str().unwrap(),
    ]);
    server.wait_ready().await;
    let client = reqwest::Client::new();
    let inputs: Vec<Value> = siesta_models::DataType::ALL
        .iter()
        .map(|d| json!({"name": format!("in_{d}"), "shape": [1, 3], "datatype": d.as_str(), "data": sample(*d)}))
        .collect();
    let resp: Value = server
        .post_json("/v2/models/identity/infer", &json!({"inputs": inputs}))
        .await
        .json()
        .await
        .unwrap();
    for (d, out) in siesta_models::DataType::ALL
        .iter()
        .zip(resp["outputs"].as_array().unwrap())
    {
        assert_eq!(out["datatype"], d.as_str());
        assert_eq!(out["shape"], json!([1, 3]));
        let flat: Vec<Value> = sample(*d)[0].as_array().unwrap().clone();
        assert_eq!(out["data"], Value::Array(flat), "{d}");
    }

    // The same tensors sent as binary come back byte for byte as binary.
    let raw: Vec<Vec<u8>> = siesta_models::DataType::ALL
        .iter()
        .map(|d| {
            let v = sample(*d);
            siesta_runtime::protocol::json_data::decode_data("x", *d, 3, &v[0].to_string()).unwrap()
        })
        .collect();
    let inputs: Vec<Value> = siesta_models::DataType::ALL
        .iter()
        .zip(&raw)
        .map(|(d, r)| {
            json!({"name": format!("in_{d}"), "shape": [1, 3], "datatype": d.as_str(), "parameters": {"binary_data_size": r.len()}})
        })
        .collect();
    let header = json!({"inputs": inputs, "parameters": {"binary_data_output": true}});
    let refs: Vec<&[u8]> = raw.iter().map(Vec::as_slice).collect();
    let (body, n) = binary_request(&header, &refs);
    let resp = client
        .post(server.url("/v2/models/identity/infer"))
        .header("Inference-Header-Content-Length", n)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let json_len: usize = resp.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(&bytes[json_len..], raw.concat().as_slice());
}

#[tokio::test]
async fn grpc_infer_with_raw_and_typed_contents() {
    let server = Server::start(&[]);
    server.wait_ready().await;
    let mut client =
        pb::grpc_inference_service_client::GrpcInferenceServiceClient::connect(server.grpc.clone())
            .await
            .unwrap();
    assert!(
        client
            .server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        client
            .server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let ready = client
        .model_ready(pb::ModelReadyRequest {
            name: "mnist".into(),
            version: String::new(),
        })
        .await
        .unwrap();
    assert!(ready.into_inner().ready);
    let meta = client
        .model_metadata(pb::ModelMetadataRequest {
            name: "mnist".into(),
            version: "1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.inputs[0].shape, vec![-1, 1, 28, 28]);
    let config = client
        .model_config(pb::ModelConfigRequest {
            name: "mnist".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(config.max_batch_size, 64);

    let (img, label) = held_out_digits().swap_remove(11);
    let input = |contents| pb::model_infer_request::InferInputTensor {
        name: "input".into(),
        datatype: "FP32".into(),
        shape: vec![1, 1, 28, 28],
        parameters: Default::default(),
        contents,
    };
    let raw_req = pb::ModelInferRequest {
        model_name: "mnist".into(),
        id: "g1".into(),
        inputs: vec![input(None)],
        raw_input_contents: vec![img.iter().flat_map(|v| v.to_le_bytes()).collect()],
        ..Default::default()
    };
    let typed_req = pb::ModelInferRequest {
        model_name: "mnist".into(),
        inputs: vec![input(Some(pb::InferTensorContents {
            fp32_contents: img.clone(),
            ..Default::default()
        }))],
        outputs: vec![pb::model_infer_request::InferRequestedOutputTensor {
            name: "class".into(),
            parameters: Default::default(),
        }],
        ..Default::default()
    };
    for req in [raw_req, typed_req] {
        let resp = client.model_infer(req).await.unwrap().into_inner();
        let class_at = resp.outputs.iter().position(|o| o.name == "class").unwrap();
        let class = i64::from_le_bytes(resp.raw_output_contents[class_at][..8].try_into().unwrap());
        assert_eq!(class, i64::from(label));
    }

    let err = client
        .model_infer(pb::ModelInferRequest {
            model_name: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = client
        .model_infer(pb::ModelInferRequest {
            model_name: "mnist".into(),
            inputs: vec![input(None)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn repository_index_unload_and_load() {
    let repo = tempfile::tempdir().unwrap();
    let id = identity_model_dir();
    std::fs::create_dir(repo.path().join("echo")).unwrap();
    std::fs::copy(
        id.path().join("config.json"),
        repo.path().join("echo/config.json"),
    )
    .unwrap();
    // Off by default (Triton's --model-control-mode none): no client can take the model away.
    let locked = Server::start(&["--model-repository", repo.path().to_str().unwrap()]);
    locked.wait_ready().await;
    for path in [
        "/v2/repository/models/mnist/unload",
        "/v2/repository/models/echo/load",
    ] {
        let r = locked.post(path).await;
        assert_eq!(r.status(), 403, "{path}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("--model-control-mode"),
            "{body}"
        );
    }
    assert_eq!(locked.infer_zeros().await.status(), 200);
    assert_eq!(locked.get("/v2/health/live").await.status(), 200);
    drop(locked);

    let server = Server::start(&[
        "--model-repository",
        repo.path().to_str().unwrap(),
        "--model-control-mode",
        "explicit",
    ]);
    server.wait_ready().await;
    let index: Value = server
        .post("/v2/repository/index")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        index,
        json!([
            {"name": "echo", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
            {"name": "mnist", "version": "1", "state": "READY", "reason": ""}
        ])
    );
    let r = server.post("/v2/repository/models/echo/load").await;
    assert_eq!(r.status(), 200);
    assert_eq!(server.get("/v2/models/echo/ready").await.status(), 200);
    let r = server.post("/v2/repository/models/mnist/unload").await;
    assert_eq!(r.status(), 200);
    let r = server.get("/v2/models/mnist/ready").await;
    assert_eq!(r.status(), 503);
    let r = server.infer_zeros().await;
    assert_eq!(r.status(), 503);
    // An operator's unload is deliberate: the process stays live (nothing to restart).
    assert_eq!(server.get("/v2/health/live").await.status(), 200);
    let r = server.post("/v2/repository/models/mnist/load").await;
    assert_eq!(r.status(), 200);
    let r = server.infer_zeros().await;
    assert_eq!(r.status(), 200);
    let r = server.post("/v2/repository/models/missing/load").await;
    assert_eq!(r.status(), 404);
    // A model that fails to load says why, but not where the host keeps its files.
    std::fs::create_dir(repo.path().join("broken")).unwrap();
    std::fs::write(repo.path().join("broken/config.json"), "{not json").unwrap();
    let r = server.post("/v2/repository/models/broken/load").await;
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    let dir = repo.path().to_str().unwrap();
    assert!(error.contains("config.json"), "{error}");
    assert!(!error.contains(dir), "{error}");
    let index = server
        .post("/v2/repository/index")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        index.contains("config.json") && !index.contains(dir),
        "{index}"
    );
    let r = server.post("/v2/repository/models/..%2Fetc/load").await;
    assert!(r.status() == 400 || r.status() == 404, "{}", r.status());
}
