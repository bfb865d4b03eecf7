//! What a model directory's `config.json` says the model is (`"architecture"`), and the engine
//! that runs it. Parsed once, when the config is read: the rest of Siesta matches on the enum.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::engine::Engine;
use crate::error::ModelError;
use crate::vision::{self, Depth};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// The shipped MNIST CNN (candle).
    MnistCnn,
    /// Returns its input (tests, protocol checks).
    Identity,
    /// A torchvision classifier built in candle from its state dict.
    Vision(vision::Arch),
    /// A TorchScript file (`torch.jit.save`), run by libtorch.
    TorchScript,
    /// An ONNX graph.
    Onnx,
}

impl Architecture {
    /// Every architecture, in the order error messages list them.
    pub const ALL: [Architecture; 11] = [
        Architecture::MnistCnn,
        Architecture::Vision(vision::Arch::ResNet(Depth::D18)),
        Architecture::Vision(vision::Arch::ResNet(Depth::D34)),
        Architecture::Vision(vision::Arch::ResNet(Depth::D50)),
        Architecture::Vision(vision::Arch::ResNet(Depth::D101)),
        Architecture::Vision(vision::Arch::ResNet(Depth::D152)),
        Architecture::Vision(vision::Arch::MobileNetV2),
        Architecture::Vision(vision::Arch::InceptionV3),
        Architecture::Onnx,
        Architecture::TorchScript,
        Architecture::Identity,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Architecture::MnistCnn => "mnist_cnn",
            Architecture::Identity => "identity",
            Architecture::Vision(arch) => arch.name(),
            Architecture::TorchScript => "torchscript",
            Architecture::Onnx => "onnx",
        }
    }

    pub fn engine(self) -> Engine {
        match self {
            Architecture::MnistCnn | Architecture::Identity | Architecture::Vision(_) => {
                Engine::Candle
            }
            Architecture::TorchScript => Engine::Torch,
            Architecture::Onnx => Engine::Onnx,
        }
    }

    /// The torchvision classifier, for the built-in vision architectures.
    pub fn vision(self) -> Option<vision::Arch> {
        match self {
            Architecture::Vision(arch) => Some(arch),
            _ => None,
        }
    }

    /// The names of the built-in torchvision classifiers, for messages.
    pub fn vision_names() -> String {
        Self::ALL
            .iter()
            .filter(|a| a.vision().is_some())
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl FromStr for Architecture {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, ModelError> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| ModelError::UnknownArchitecture(s.to_string()))
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Architecture {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Architecture {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips_and_picks_its_engine() {
        for a in Architecture::ALL {
            assert_eq!(a.name().parse::<Architecture>().unwrap(), a);
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(serde_json::from_str::<Architecture>(&json).unwrap(), a);
        }
        assert_eq!(Architecture::TorchScript.engine(), Engine::Torch);
        assert_eq!(Architecture::Onnx.engine(), Engine::Onnx);
        assert_eq!(
            "resnet50".parse::<Architecture>().unwrap().engine(),
            Engine::Candle
        );
        assert_eq!(
            Architecture::vision_names(),
            "resnet18, resnet34, resnet50, resnet101, resnet152, mobilenet_v2, inception_v3"
        );
    }

    #[test]
    fn an_unknown_name_is_an_error_listing_the_known_ones() {
        let e = serde_json::from_str::<Architecture>("\"resnext50\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown architecture 'resnext50'") && e.contains("mobilenet_v2"),
            "{e}"
        );
    }
}
