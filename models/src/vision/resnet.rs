//! torchvision's ResNet-18/34/50/101/152 (v1.5: the bottleneck strides in its 3x3 convolution),
//! built from a torchvision state dict (`conv1`, `bn1`, `layer1.0.conv1`, ..., `fc`).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder, linear};

use super::layers::{ConvBn, ConvShape, global_avg_pool};

const EPS: f64 = 1e-5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    D18,
    D34,
    D50,
    D101,
    D152,
}

impl Depth {
    fn blocks(self) -> [usize; 4] {
        match self {
            Depth::D18 => [2, 2, 2, 2],
            Depth::D34 | Depth::D50 => [3, 4, 6, 3],
            Depth::D101 => [3, 4, 23, 3],
            Depth::D152 => [3, 8, 36, 3],
        }
    }

    pub fn bottleneck(self) -> bool {
        !matches!(self, Depth::D18 | Depth::D34)
    }

    /// Channels entering `fc`.
    pub fn features(self) -> usize {
        if self.bottleneck() { 2048 } else { 512 }
    }
}

struct Block {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Block {
    fn new(
        vb: VarBuilder<'_>,
        inp: usize,
        planes: usize,
        stride: usize,
        bottleneck: bool,
    ) -> Result<Self> {
        let out = if bottleneck { planes * 4 } else { planes };
        let convs = if bottleneck {
            vec![
                ConvBn::new(
                    vb.pp("conv1"),
                    vb.pp("bn1"),
                    ConvShape::square(inp, planes, 1, 1, 0),
                    EPS,
                )?,
                ConvBn::new(
                    vb.pp("conv2"),
                    vb.pp("bn2"),
                    ConvShape::square(planes, planes, 3, stride, 1),
                    EPS,
                )?,
                ConvBn::new(
                    vb.pp("conv3"),
                    vb.pp("bn3"),
                    ConvShape::square(planes, out, 1, 1, 0),
                    EPS,
                )?,
            ]
        } else {
            vec![
                ConvBn::new(
                    vb.pp("conv1"),
                    vb.pp("bn1"),
                    ConvShape::square(inp, planes, 3, stride, 1),
                    EPS,
                )?,
                ConvBn::new(
                    vb.pp("conv2"),
                    vb.pp("bn2"),
                    ConvShape::square(planes, planes, 3, 1, 1),
                    EPS,
                )?,
            ]
        };
        let downsample = if stride != 1 || inp != out {
            let ds = vb.pp("downsample");
            Some(ConvBn::new(
                ds.pp("0"),
                ds.pp("1"),
                ConvShape::square(inp, out, 1, stride, 0),
                EPS,
            )?)
        } else {
            None
        };
        Ok(Block { convs, downsample })
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        let last = self.convs.len() - 1;
        for (i, conv) in self.convs.iter().enumerate() {
            y = conv.forward(&y)?;
            if i != last {
                y = y.relu()?;
            }
        }
        let identity = match &self.downsample {
            Some(ds) => ds.forward(x)?,
            None => x.clone(),
        };
        (y + identity)?.relu()
    }
}

pub struct ResNet {
    stem: ConvBn,
    blocks: Vec<Block>,
    fc: Linear,
}

impl ResNet {
    pub fn new(vb: VarBuilder<'_>, depth: Depth, classes: usize) -> Result<Self> {
        let stem = ConvBn::new(
            vb.pp("conv1"),
            vb.pp("bn1"),
            ConvShape::square(3, 64, 7, 2, 3),
            EPS,
        )?;
        let expansion = if depth.bottleneck() { 4 } else { 1 };
        let mut inp = 64;
        let mut blocks = Vec::new();
        for (layer, (&n, planes)) in depth.blocks().iter().zip([64, 128, 256, 512]).enumerate() {
            let lvb = vb.pp(format!("layer{}", layer + 1));
            for i in 0..n {
                let stride = if i == 0 && layer > 0 { 2 } else { 1 };
                blocks.push(Block::new(
                    lvb.pp(i.to_string()),
                    inp,
                    planes,
                    stride,
                    depth.bottleneck(),
                )?);
                inp = planes * expansion;
            }
        }
        let fc = linear(depth.features(), classes, vb.pp("fc"))?;
        Ok(ResNet { stem, blocks, fc })
    }
}

impl Module for ResNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.stem.forward(x)?.relu()?;
        // MaxPool2d(3, 2, padding=1): after the ReLU every value is >= 0, so zero padding never
        // wins the max and stands in for PyTorch's -inf padding.
        let mut x = x
            .pad_with_zeros(2, 1, 1)?
            .pad_with_zeros(3, 1, 1)?
            .max_pool2d_with_stride(3, 2)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        self.fc.forward(&global_avg_pool(&x)?)
    }
}
