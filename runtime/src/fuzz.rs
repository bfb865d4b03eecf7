//! Property-based fuzzing of every decoder a client's bytes reach on a replica: REST V1 and V2
//! JSON, the binary extension's framing, gRPC messages, tensor bytes, and the image
//! transformer's instances and images. The property is the same everywhere: no panic, and
//! every refusal is a client error (4xx, or a gRPC status a client caused).
//!
//! The inputs are built to reach deep: protocol-shaped documents whose every field may hold the
//! wrong type, a hostile number or non-ASCII text, next to plain random bytes. `PROPTEST_CASES`
//! sets the number of cases per property (256 by default; `benches/fuzz.sh` runs a million in
//! all and prints the count).

use std::path::Path;

use proptest::prelude::*;
use serde_json::{Value, json};
use siesta_models::ModelConfig;
use siesta_models::embedded::MNIST_CONFIG;

use crate::protocol::json_data::{decode_values, quote_non_finite};
use crate::protocol::{v1, v2, validate_inputs};

fn mnist() -> ModelConfig {
    ModelConfig::from_json(MNIST_CONFIG, Path::new("config.json")).unwrap()
}

/// Text that breaks naive slicing and parsing: multi-byte characters, escapes, numbers, keywords.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,12}",
        "[é€𝄞\"\\\\ a0.-]{0,48}",
        Just("NaN".to_string()),
        Just("-Infinity".to_string()),
        Just("1e400".to_string()),
        Just("input".to_string()),
        Just("FP32".to_string()),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN", |f| f.is_finite())
            .prop_map(Value::from),
        (-3i64..300).prop_map(Value::from),
    ]
}

fn leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        number(),
        text().prop_map(Value::from),
    ]
    .boxed()
}

/// Any JSON document, biased towards the protocols' own keys.
fn json_value() -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
        .boxed()
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "inputs",
            "outputs",
            "name",
            "shape",
            "datatype",
            "data",
            "parameters",
            "binary_data_size",
            "binary_data",
            "binary_data_output",
            "classification",
            "instances",
            "signature_name",
            "id",
            "b64",
            "image_bytes",
            "key",
        ])
        .prop_map(str::to_string),
        text(),
    ]
}

fn datatype() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => Just(Value::from("FP32")),
        3 => prop::sample::select(vec![
            "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
            "FP16", "BF16", "FP32", "FP64", "BYTES",
        ])
        .prop_map(Value::from),
        1 => leaf(),
    ]
    .boxed()
}

fn shape() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => Just(json!([1, 1, 28, 28])),
        3 => prop::collection::vec(prop_oneof![0i64..5, any::<i64>(), Just(i64::MAX)], 0..6)
            .prop_map(|v| json!(v)),
        1 => json_value(),
    ]
    .boxed()
}

/// Tensor data: the right count of numbers for MNIST, nested or flat, or anything at all.
fn data() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => prop::collection::vec(
            prop_oneof![
                4 => (-1e6f64..1e6).prop_map(Value::from),
                1 => number(),
            ],
            784..=784
        )
        .prop_map(Value::Array),
        1 => prop::collection::vec(leaf(), 784..=784).prop_map(Value::Array),
        1 => prop::collection::vec(text().prop_map(Value::from), 784..=784).prop_map(Value::Array),
        2 => json_value(),
        1 => prop::collection::vec(prop::collection::vec(number(), 0..30), 0..30)
            .prop_map(|rows| json!(rows)),
    ]
    .boxed()
}

fn v2_input() -> BoxedStrategy<Value> {
    (
        prop_oneof![3 => Just(Value::from("input")), 1 => leaf()],
        shape(),
        datatype(),
        prop::option::weighted(0.9, data()),
        prop::option::weighted(0.2, json_value()),
        prop::option::weighted(0.2, prop_oneof![number(), leaf()]),
    )
        .prop_map(|(name, shape, datatype, data, params, binary_size)| {
            let mut t = json!({"name": name, "shape": shape, "datatype": datatype});
            if let Some(d) = data {
                t["data"] = d;
            }
            if let Some(p) = params {
                t["parameters"] = p;
            }
            if let Some(n) = binary_size {
                t["parameters"] = json!({"binary_data_size": n});
            }
            t
        })
        .boxed()
}

fn v2_body() -> BoxedStrategy<Value> {
    (
        prop_oneof![
            4 => v2_input().prop_map(|i| json!([i])),
            2 => prop::collection::vec(v2_input(), 0..4).prop_map(Value::Array),
            1 => json_value(),
        ],
        prop::option::weighted(0.2, json_value()),
        prop::option::weighted(0.2, json_value()),
    )
        .prop_map(|(inputs, outputs, parameters)| {
            let mut b = json!({"inputs": inputs});
            if let Some(o) = outputs {
                b["outputs"] = o;
            }
            if let Some(p) = parameters {
                b["parameters"] = p;
            }
            b
        })
        .boxed()
}

/// The binary extension's `Inference-Header-Content-Length`: absent, right, or anything.
#[derive(Debug, Clone)]
enum HeaderLen {
    Absent,
    Exact,
    Number(u64),
    Text(String),
}

fn header_len() -> impl Strategy<Value = HeaderLen> {
    prop_oneof![
        Just(HeaderLen::Absent),
        Just(HeaderLen::Exact),
        any::<u64>().prop_map(HeaderLen::Number),
        text().prop_map(HeaderLen::Text),
    ]
}

fn client_error(e: &crate::error::ServeError) -> Result<(), TestCaseError> {
    prop_assert!(e.status().is_client_error(), "{} for: {e}", e.status());
    Ok(())
}

proptest! {
    #[test]
    fn v2_rest_requests_are_refused_with_4xx_or_accepted(
        body in v2_body(),
        binary in prop::collection::vec(any::<u8>(), 0..64),
        header_len in header_len(),
    ) {
        let mut whole = body.to_string().into_bytes();
        let header = match header_len {
            HeaderLen::Absent => None,
            HeaderLen::Exact => Some(whole.len().to_string()),
            HeaderLen::Number(n) => Some(n.to_string()),
            HeaderLen::Text(t) => Some(t),
        };
        whole.extend_from_slice(&binary);
        let decoded = v2::split_body(&whole, header.as_deref())
            .and_then(|(json, bin)| v2::parse_infer_request(json, bin))
            .and_then(|req| validate_inputs(&mnist(), req.inputs));
        if let Err(e) = decoded {
            client_error(&e)?;
        }
    }

    #[test]
    fn v1_rest_requests_are_refused_with_4xx_or_accepted(
        body in prop_oneof![
            json_value().prop_map(|instances| json!({"instances": instances})),
            json_value().prop_map(|inputs| json!({"inputs": inputs})),
            prop::collection::vec(data(), 0..3).prop_map(|i| json!({"instances": i})),
            json_value(),
        ],
    ) {
        if let Err(e) = v1::parse_predict(&mnist(), body.to_string().as_bytes()) {
            client_error(&e)?;
        }
    }

    #[test]
    fn random_bytes_are_refused_with_4xx(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let cfg = mnist();
        for r in [
            v2::parse_infer_request(&bytes, &[]).map(drop),
            v1::parse_predict(&cfg, &bytes).map(drop),
            v2::split_body(&bytes, Some("3")).map(drop),
        ] {
            if let Err(e) = r {
                client_error(&e)?;
            }
        }
        let _ = quote_non_finite(&bytes);
    }

    #[test]
    fn tensor_bytes_of_any_length_decode_or_are_refused(
        dt in prop::sample::select(siesta_models::DataType::ALL.to_vec()),
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        if let Err(e) = decode_values(dt, &bytes) {
            client_error(&e)?;
        }
    }

    #[test]
    fn grpc_messages_are_refused_with_client_statuses_or_accepted(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        structured in grpc_request(),
    ) {
        use prost::Message;
        let mut requests = vec![structured];
        if let Ok(m) = crate::grpc::pb::ModelInferRequest::decode(bytes.as_slice()) {
            requests.push(m);
        }
        for req in requests {
            if let Err(s) = crate::grpc::decode_request(req) {
                prop_assert!(
                    matches!(s.code(), tonic::Code::InvalidArgument | tonic::Code::NotFound),
                    "{s:?}"
                );
            }
        }
    }

    #[test]
    fn transformer_instances_and_images_are_refused_with_4xx_or_decoded(
        body in prop_oneof![
            json_value(),
            prop::collection::vec(image_instance(), 0..4).prop_map(|i| json!({"instances": i})),
        ],
        image in image_bytes(),
    ) {
        use crate::transformer::instances::{ImageLimits, parse};
        use siesta_models::image_decode::decode;
        let limits = ImageLimits { max_instances: 3, max_pixels: 1 << 16 };
        if let Err(e) = parse(body.to_string().as_bytes(), &limits) {
            client_error(&e)?;
        }
        let _ = decode(&image, 3, limits.max_pixels);
    }
}

fn grpc_request() -> impl Strategy<Value = crate::grpc::pb::ModelInferRequest> {
    use crate::grpc::pb::InferTensorContents;
    use crate::grpc::pb::model_infer_request::InferInputTensor;
    let input = (
        text(),
        prop::sample::select(vec![
            "FP32", "INT8", "UINT8", "BYTES", "FP16", "BOOL", "nope",
        ]),
        prop::collection::vec(prop_oneof![-2i64..5, any::<i64>()], 0..5),
        prop::collection::vec(any::<i32>(), 0..16),
        prop::collection::vec(any::<f32>(), 0..16),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..8), 0..4),
    )
        .prop_map(|(name, dt, shape, ints, floats, bytes)| InferInputTensor {
            name,
            datatype: dt.to_string(),
            shape,
            parameters: Default::default(),
            contents: Some(InferTensorContents {
                int_contents: ints,
                fp32_contents: floats,
                bytes_contents: bytes,
                ..Default::default()
            }),
        });
    (
        prop::collection::vec(input, 0..3),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..3),
    )
        .prop_map(|(inputs, raw)| crate::grpc::pb::ModelInferRequest {
            model_name: "mnist".into(),
            inputs,
            raw_input_contents: raw,
            ..Default::default()
        })
}

fn image_instance() -> impl Strategy<Value = Value> {
    use base64::Engine;
    let b64 = || image_bytes().prop_map(|b| base64::engine::general_purpose::STANDARD.encode(b));
    prop_oneof![
        b64().prop_map(|s| json!({"image_bytes": {"b64": s}, "key": "k"})),
        b64().prop_map(Value::from),
        json_value(),
    ]
}

/// A valid 1x1 PNG or JPEG, one with a size claim rewritten, or either with bytes flipped.
fn image_bytes() -> impl Strategy<Value = Vec<u8>> {
    let png = siesta_testkit::pixels::png_claiming(1, 1);
    let base = prop_oneof![
        Just(png),
        (any::<u16>(), any::<u16>())
            .prop_map(|(w, h)| siesta_testkit::pixels::png_claiming(w.into(), h.into())),
        prop::collection::vec(any::<u8>(), 0..128),
    ];
    (
        base,
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
    )
        .prop_map(|(mut b, flips)| {
            let n = b.len();
            for (at, v) in flips {
                if n > 0 {
                    b[at % n] = v;
                }
            }
            b
        })
}

/// The generators are worth their cases only if some of them get through every check: a fuzzer
/// that never builds a valid request never tests what lies behind validation.
#[test]
fn the_generators_reach_valid_requests() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let cfg = mnist();
    let (mut v2_ok, mut grpc_ok) = (0, 0);
    for _ in 0..2000 {
        let body = v2_body().new_tree(&mut runner).unwrap().current();
        let json = body.to_string();
        if v2::parse_infer_request(json.as_bytes(), &[])
            .and_then(|r| validate_inputs(&cfg, r.inputs))
            .is_ok()
        {
            v2_ok += 1;
        }
        let req = grpc_request().new_tree(&mut runner).unwrap().current();
        if crate::grpc::decode_request(req).is_ok() {
            grpc_ok += 1;
        }
    }
    assert!(v2_ok >= 20, "{v2_ok} of 2000 V2 requests were valid");
    assert!(grpc_ok >= 20, "{grpc_ok} of 2000 gRPC requests decoded");
}
