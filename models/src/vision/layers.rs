//! The building block every torchvision classifier shares: a bias-free convolution followed by
//! eval-mode batch norm. The norm is folded into the convolution's weights and bias when the
//! network is built, so inference runs one convolution where PyTorch eager runs two ops.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::cpu_conv::CpuKernel;

/// Kernel, stride and padding of one convolution; `(height, width)` where they may differ.
#[derive(Debug, Clone, Copy)]
pub struct ConvShape {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: (usize, usize),
    pub stride: usize,
    pub padding: (usize, usize),
    pub groups: usize,
}

impl ConvShape {
    /// A square `k x k` kernel with the given stride and padding.
    pub fn square(
        in_channels: usize,
        out_channels: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        ConvShape {
            in_channels,
            out_channels,
            kernel: (k, k),
            stride,
            padding: (padding, padding),
            groups: 1,
        }
    }

    /// A `kh x kw` kernel, stride 1, padded to keep the spatial size (Inception's 1x7 / 7x1).
    pub fn same(in_channels: usize, out_channels: usize, kh: usize, kw: usize) -> Self {
        ConvShape {
            in_channels,
            out_channels,
            kernel: (kh, kw),
            stride: 1,
            padding: (kh / 2, kw / 2),
            groups: 1,
        }
    }

    pub fn depthwise(channels: usize, stride: usize) -> Self {
        ConvShape {
            groups: channels,
            ..ConvShape::square(channels, channels, 3, stride, 1)
        }
    }
}

/// Convolution with batch norm folded in: `y = conv(x, w * s) + (beta - mean * s)`,
/// `s = gamma / sqrt(var + eps)`.
pub struct ConvBn {
    weight: Tensor,
    bias: Tensor,
    shape: ConvShape,
    /// The CPU path for ungrouped convolutions (see [`CpuKernel`]); candle's conv2d elsewhere.
    cpu: Option<CpuKernel>,
}

impl ConvBn {
    /// `conv` holds `weight` (no bias, as torchvision builds them); `bn` holds `weight`, `bias`,
    /// `running_mean` and `running_var`.
    pub fn new(
        conv: VarBuilder<'_>,
        bn: VarBuilder<'_>,
        shape: ConvShape,
        eps: f64,
    ) -> Result<Self> {
        let (kh, kw) = shape.kernel;
        let out = shape.out_channels;
        // Folded in f32 whatever the network computes in, then converted once.
        let f32 = |vb: &VarBuilder<'_>, s: &[usize], name: &str| {
            vb.get_with_hints_dtype(s, name, candle_nn::Init::Const(0.), DType::F32)
        };
        let w = f32(
            &conv,
            &[out, shape.in_channels / shape.groups, kh, kw],
            "weight",
        )?;
        let gamma = f32(&bn, &[out], "weight")?;
        let beta = f32(&bn, &[out], "bias")?;
        let mean = f32(&bn, &[out], "running_mean")?;
        let var = f32(&bn, &[out], "running_var")?;
        let scale = (gamma / (var + eps)?.sqrt()?)?;
        let weight = w
            .broadcast_mul(&scale.reshape((out, 1, 1, 1))?)?
            .to_dtype(conv.dtype())?
            .contiguous()?;
        let bias = (beta - (mean * &scale)?)?.to_dtype(conv.dtype())?;
        let cpu = if weight.device().is_cpu() && weight.dtype() == DType::F32 && shape.groups == 1 {
            Some(CpuKernel::new(&weight, &bias, &shape)?)
        } else {
            None
        };
        let bias = bias.reshape((1, out, 1, 1))?;
        Ok(ConvBn {
            weight,
            bias,
            shape,
            cpu,
        })
    }
}

impl Module for ConvBn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(cpu) = &self.cpu {
            return cpu.forward(x, &self.shape);
        }
        let (ph, pw) = self.shape.padding;
        let y = if ph == pw {
            x.conv2d(&self.weight, ph, self.shape.stride, 1, self.shape.groups)?
        } else {
            // candle pads both spatial dimensions alike; pad the uneven case by hand.
            let x = x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?;
            x.conv2d(&self.weight, 0, self.shape.stride, 1, self.shape.groups)?
        };
        y.broadcast_add(&self.bias)
    }
}

/// `F.avg_pool2d(x, 3, stride=1, padding=1)` with PyTorch's default `count_include_pad=True`.
pub fn avg_pool_3x3_same(x: &Tensor) -> Result<Tensor> {
    x.pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?
        .avg_pool2d_with_stride(3, 1)
}

/// `nn.AdaptiveAvgPool2d(1)` + `flatten(1)`: one mean per channel.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean(3)?.mean(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    #[test]
    fn folded_batch_norm_equals_conv_then_norm() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 7, 5), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (4, 3, 1, 3), &dev)?;
        let gamma = Tensor::new(&[1.5f32, 0.5, -1.0, 2.0], &dev)?;
        let beta = Tensor::new(&[0.1f32, -0.2, 0.3, 0.0], &dev)?;
        let mean = Tensor::new(&[0.5f32, -1.0, 0.0, 2.0], &dev)?;
        let var = Tensor::new(&[1.0f32, 0.25, 4.0, 0.5], &dev)?;
        let mut t = HashMap::new();
        t.insert("c.weight".to_string(), w.clone());
        t.insert("b.weight".to_string(), gamma.clone());
        t.insert("b.bias".to_string(), beta.clone());
        t.insert("b.running_mean".to_string(), mean.clone());
        t.insert("b.running_var".to_string(), var.clone());
        let vb = VarBuilder::from_tensors(t, DType::F32, &dev);
        let layer = ConvBn::new(vb.pp("c"), vb.pp("b"), ConvShape::same(3, 4, 1, 3), 1e-3)?;
        let got = layer.forward(&x)?;

        let c = |t: &Tensor| t.reshape((1, 4, 1, 1));
        let xp = x.pad_with_zeros(3, 1, 1)?;
        let reference = xp
            .conv2d(&w, 0, 1, 1, 1)?
            .broadcast_sub(&c(&mean)?)?
            .broadcast_div(&c(&(var + 1e-3)?.sqrt()?)?)?
            .broadcast_mul(&c(&gamma)?)?
            .broadcast_add(&c(&beta)?)?;
        assert_eq!(got.dims(), &[2, 4, 7, 5]);
        let diff = (got - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max difference {diff}");
        Ok(())
    }
}
