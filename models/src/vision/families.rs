//! torchvision families whose state dicts Siesta does not build, recognised by their module
//! names, so that loading one says what it is and which route serves it instead of "not
//! recognised".

/// The family, by the module names only torchvision's builder of that family makes.
pub fn other_family<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    let keys: Vec<&str> = keys.into_iter().collect();
    let any = |pred: &dyn Fn(&str) -> bool| keys.iter().any(|k| pred(k));
    let has = |k: &str| keys.contains(&k);
    Some(if any(&|k| k.contains("relative_position_bias_table")) {
        "Swin Transformer"
    } else if any(&|k| k.starts_with("encoder.layers.encoder_layer_")) {
        "ViT (vision transformer)"
    } else if any(&|k| k.starts_with("blocks.") && k.contains(".attn_layer.")) {
        "MaxViT"
    } else if any(&|k| k.ends_with(".layer_scale")) {
        "ConvNeXt"
    } else if any(&|k| k.starts_with("features.denseblock")) {
        "DenseNet"
    } else if any(&|k| k.starts_with("trunk_output.")) {
        "RegNet"
    } else if any(&|k| k.starts_with("stage2.") && k.contains(".branch2.")) {
        "ShuffleNetV2"
    } else if any(&|k| k.contains(".squeeze.") && k.contains("features.")) {
        "SqueezeNet"
    } else if has("inception3a.branch1.conv.weight") {
        "GoogLeNet"
    } else if any(&|k| k.starts_with("layers.") && k.contains(".layers.")) {
        "MNASNet"
    } else if any(&|k| k.starts_with("features.") && k.contains(".block.")) {
        // Both build inverted residual blocks as `features.N.block`; MobileNetV3's classifier
        // is Linear, Hardswish, Dropout, Linear.
        if has("classifier.3.weight") {
            "MobileNetV3"
        } else {
            "EfficientNet"
        }
    } else if has("classifier.6.weight") && has("features.0.weight") {
        "VGG or AlexNet"
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_told_apart_by_their_module_names() {
        let cases: [(&[&str], Option<&str>); 6] = [
            (
                &["features.1.0.block.0.0.weight", "classifier.1.weight"],
                Some("EfficientNet"),
            ),
            (
                &["features.1.0.block.0.0.weight", "classifier.3.weight"],
                Some("MobileNetV3"),
            ),
            (
                &["features.1.0.layer_scale", "features.1.0.block.0.weight"],
                Some("ConvNeXt"),
            ),
            (
                &["encoder.layers.encoder_layer_0.ln_1.weight"],
                Some("ViT (vision transformer)"),
            ),
            (
                &["features.1.0.attn.relative_position_bias_table"],
                Some("Swin Transformer"),
            ),
            (&["fc.weight", "layer4.0.conv1.weight"], None),
        ];
        for (keys, want) in cases {
            assert_eq!(other_family(keys.iter().copied()), want, "{keys:?}");
        }
    }
}
