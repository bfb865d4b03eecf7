//! The default model compiled into the binary: the MNIST CNN trained on the digits data set
//! (`cargo run --release -p siesta-models --bin train-mnist` writes these files).

pub const MNIST_NAME: &str = "mnist";
pub const MNIST_CONFIG: &[u8] = include_bytes!("../mnist/config.json");
pub const MNIST_WEIGHTS: &[u8] = include_bytes!("../mnist/model.safetensors");
