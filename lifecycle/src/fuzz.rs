//! Property-based fuzzing of what reaches the lifecycle manager from outside: InferenceService
//! manifests (files and API-server documents), the model name a gRPC call carries, and the
//! request line the gateway decides to forward. No input panics; a refused manifest names a
//! field path. `PROPTEST_CASES` sets the cases per property (see `benches/fuzz.sh`).

use axum::http::Method;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::gateway::forwarded;
use crate::gateway::grpc::model_name;
use crate::manifest::{self, ClusterDefaults};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,12}",
        "[a-z0-9-]{0,70}",
        "[é€\"'{}:\\[\\]#&*!|>-]{0,24}"
    ]
}

fn leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-3i64..20).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::from),
        prop::sample::select(vec![
            "concurrency",
            "rps",
            "cpu",
            "siesta",
            "v2",
            "siesta://mnist",
            "kserve/image-transformer:v0.11",
            "10s",
            "1.5",
            "-1",
            "99999999999999999999",
        ])
        .prop_map(Value::from),
    ]
    .boxed()
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "minReplicas",
            "maxReplicas",
            "scaleTarget",
            "scaleMetric",
            "containerConcurrency",
            "timeout",
            "model",
            "modelFormat",
            "name",
            "storageUri",
            "protocolVersion",
            "containers",
            "image",
            "args",
            "env",
            "annotations",
            "autoscaling.knative.dev/target",
            "autoscaling.knative.dev/window",
            "autoscaling.knative.dev/panic-window-percentage",
            "autoscaling.knative.dev/initial-scale",
            "autoscaling.knative.dev/min-scale",
        ])
        .prop_map(str::to_string),
        text(),
    ]
}

fn json_value() -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(key(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
        .boxed()
}

fn component() -> BoxedStrategy<Value> {
    (
        prop::collection::btree_map(key(), leaf(), 0..6),
        prop::option::weighted(0.8, json_value()),
        prop::option::weighted(0.5, json_value()),
    )
        .prop_map(|(fields, model, annotations)| {
            let mut c: serde_json::Map<String, Value> = fields.into_iter().collect();
            c.insert(
                "model".into(),
                model.unwrap_or_else(
                    || json!({"modelFormat": {"name": "siesta"}, "storageUri": "siesta://mnist"}),
                ),
            );
            if let Some(a) = annotations {
                c.insert("annotations".into(), a);
            }
            Value::Object(c)
        })
        .boxed()
}

fn document() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => (component(), prop::option::of(component()), prop::option::weighted(0.3, json_value()))
            .prop_map(|(p, t, annotations)| {
                let mut d = json!({
                    "apiVersion": "serving.kserve.io/v1beta1",
                    "kind": "InferenceService",
                    "metadata": {"name": "fuzz"},
                    "spec": {"predictor": p},
                });
                if let Some(t) = t {
                    d["spec"]["transformer"] = t;
                }
                if let Some(a) = annotations {
                    d["metadata"]["annotations"] = a;
                }
                d
            }),
        1 => json_value(),
    ]
    .boxed()
}

proptest! {
    #[test]
    fn manifests_are_checked_or_refused_with_a_field_path(doc in document(), raw in "\\PC{0,200}") {
        let defaults = ClusterDefaults::default();
        let yaml = serde_yaml::to_string(&doc).unwrap();
        for text in [yaml.as_str(), raw.as_str()] {
            if let Err(e) = manifest::parse(text, &defaults) {
                prop_assert!(!e.path.is_empty(), "{e}");
            }
        }
        if let Err(e) = manifest::from_json(doc, &defaults) {
            prop_assert!(!e.path.is_empty(), "{e}");
        }
    }

    #[test]
    fn grpc_model_names_are_read_or_not_found(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = model_name(&bytes);
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        framed.extend_from_slice(&bytes);
        let _ = model_name(&framed);
    }

    #[test]
    fn any_request_line_gets_a_verdict(path in "(/[a-z0-9:%.é-]{0,12}){0,7}", post in any::<bool>()) {
        let method = if post { Method::POST } else { Method::GET };
        let _ = forwarded::rest(&method, &path);
        let _ = forwarded::grpc(&path);
    }
}

/// A fuzzer that never builds a valid manifest never tests the checks behind parsing.
#[test]
fn the_generator_reaches_valid_manifests() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let defaults = ClusterDefaults::default();
    let ok = (0..2000)
        .filter(|_| {
            let doc = document().new_tree(&mut runner).unwrap().current();
            manifest::from_json(doc, &defaults).is_ok()
        })
        .count();
    assert!(ok >= 20, "{ok} of 2000 manifests were valid");
}
