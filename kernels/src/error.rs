#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KernelError {
    #[error("image buffer holds {got} bytes, but {height}x{width}x{channels} needs {want}")]
    ImageSize {
        got: usize,
        want: usize,
        height: u32,
        width: u32,
        channels: u32,
    },
    #[error("the image has {got} channels; the model wants {want}")]
    Channels { got: u32, want: u32 },
    #[error("invalid transform: {0}")]
    Transform(String),
    #[error("output buffer holds {got} values; the batch needs {want}")]
    Output { got: usize, want: usize },
    #[error("no CUDA driver on this machine (looked for {0})")]
    NoDriver(String),
    #[error("CUDA: {0}")]
    Cuda(String),
    #[error("images in one GPU batch must have one size: image {index} is {got}, the first {want}")]
    MixedSizes {
        index: usize,
        got: String,
        want: String,
    },
}
