//! torchvision's MobileNetV2 (width 1.0), built from a torchvision state dict
//! (`features.N...`, `classifier.1`).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder, linear};

use super::layers::{ConvBn, ConvShape, global_avg_pool};

const EPS: f64 = 1e-5;
pub const FEATURES: usize = 1280;
/// (expansion t, output channels c, repeats n, first stride s), as in the paper's table 2.
const SETTINGS: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

fn relu6(x: &Tensor) -> Result<Tensor> {
    x.clamp(0f32, 6f32)
}

/// `Conv2dNormActivation`: `{prefix}.0` is the convolution, `{prefix}.1` the norm.
fn conv_norm(vb: VarBuilder<'_>, shape: ConvShape) -> Result<ConvBn> {
    ConvBn::new(vb.pp("0"), vb.pp("1"), shape, EPS)
}

struct InvertedResidual {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
}

impl InvertedResidual {
    fn new(vb: VarBuilder<'_>, inp: usize, out: usize, stride: usize, t: usize) -> Result<Self> {
        let hidden = inp * t;
        let vb = vb.pp("conv");
        // torchvision numbers the sub-modules in order, so the indices shift when t == 1.
        let (expand, first) = if t == 1 {
            (None, 0)
        } else {
            (
                Some(conv_norm(
                    vb.pp("0"),
                    ConvShape::square(inp, hidden, 1, 1, 0),
                )?),
                1,
            )
        };
        let depthwise = conv_norm(
            vb.pp(first.to_string()),
            ConvShape::depthwise(hidden, stride),
        )?;
        let project = ConvBn::new(
            vb.pp((first + 1).to_string()),
            vb.pp((first + 2).to_string()),
            ConvShape::square(hidden, out, 1, 1, 0),
            EPS,
        )?;
        Ok(InvertedResidual {
            expand,
            depthwise,
            project,
            residual: stride == 1 && inp == out,
        })
    }
}

impl Module for InvertedResidual {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        if let Some(e) = &self.expand {
            y = relu6(&e.forward(&y)?)?;
        }
        let y = relu6(&self.depthwise.forward(&y)?)?;
        let y = self.project.forward(&y)?;
        if self.residual { y + x } else { Ok(y) }
    }
}

pub struct MobileNetV2 {
    stem: ConvBn,
    blocks: Vec<InvertedResidual>,
    head: ConvBn,
    classifier: Linear,
}

impl MobileNetV2 {
    pub fn new(vb: VarBuilder<'_>, classes: usize) -> Result<Self> {
        let features = vb.pp("features");
        let stem = conv_norm(features.pp("0"), ConvShape::square(3, 32, 3, 2, 1))?;
        let mut blocks = Vec::new();
        let mut inp = 32;
        let mut index = 1;
        for (t, c, n, s) in SETTINGS {
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                blocks.push(InvertedResidual::new(
                    features.pp(index.to_string()),
                    inp,
                    c,
                    stride,
                    t,
                )?);
                inp = c;
                index += 1;
            }
        }
        let head = conv_norm(
            features.pp(index.to_string()),
            ConvShape::square(inp, FEATURES, 1, 1, 0),
        )?;
        let classifier = linear(FEATURES, classes, vb.pp("classifier").pp("1"))?;
        Ok(MobileNetV2 {
            stem,
            blocks,
            head,
            classifier,
        })
    }
}

impl Module for MobileNetV2 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = relu6(&self.stem.forward(x)?)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let x = relu6(&self.head.forward(&x)?)?;
        self.classifier.forward(&global_avg_pool(&x)?)
    }
}
