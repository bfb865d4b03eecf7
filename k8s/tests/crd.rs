//! The CRD under deploy/ is the one the Rust types generate (regenerate with
//! `UPDATE_CRDS=1 cargo test -p siesta-k8s --test crd`), and the five scenario manifests
//! round-trip through the typed resource without losing a field.

use siesta_k8s::InferenceService;
use siesta_k8s::crd::{KSERVE_GROUP, SIESTA_GROUP, crd_yaml};

const FILES: [(&str, &str); 2] = [
    (SIESTA_GROUP, "../deploy/base/crd.yaml"),
    (
        KSERVE_GROUP,
        "../deploy/overlays/kserve-group/crd-kserve-group.yaml",
    ),
];

#[test]
fn the_shipped_crds_are_the_generated_ones() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (group, file) in FILES {
        let path = root.join(file);
        let generated = format!(
            "# Generated from k8s/src/crd.rs by `siesta crd --group {group}`; do not edit.\n{}",
            crd_yaml(group)
        );
        if std::env::var_os("UPDATE_CRDS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            shipped == generated,
            "{} is stale: UPDATE_CRDS=1 cargo test -p siesta-k8s --test crd",
            path.display()
        );
    }
    let crd: serde_yaml::Value = serde_yaml::from_str(&crd_yaml(SIESTA_GROUP)).unwrap();
    let version = &crd["spec"]["versions"][0];
    assert_eq!(
        version["subresources"]["status"],
        serde_yaml::Value::Mapping(Default::default())
    );
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["URL", "Ready", "Predictor", "Transformer", "Age"]);
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "isvc");
}

#[test]
fn the_scenario_manifests_round_trip_through_the_typed_resource() {
    for (file, yaml) in [
        (
            "autoscale.yaml",
            include_str!("../../deploy/examples/autoscale.yaml"),
        ),
        (
            "autoscale-qps.yaml",
            include_str!("../../deploy/examples/autoscale-qps.yaml"),
        ),
        (
            "autoscale-custom.yaml",
            include_str!("../../deploy/examples/autoscale-custom.yaml"),
        ),
        (
            "scale-down-to-zero.yaml",
            include_str!("../../deploy/examples/scale-down-to-zero.yaml"),
        ),
        (
            "autoscale-adv.yaml",
            include_str!("../../deploy/examples/autoscale-adv.yaml"),
        ),
    ] {
        let original: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        let typed: InferenceService =
            serde_json::from_value(original.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
        let mut back = serde_json::to_value(&typed).unwrap();
        // The typed resource carries its own apiVersion; the manifests say KServe's.
        back["apiVersion"] = original["apiVersion"].clone();
        assert_eq!(back["spec"], original["spec"], "{file}");
        assert_eq!(
            back["metadata"]["name"], original["metadata"]["name"],
            "{file}"
        );
    }
}
