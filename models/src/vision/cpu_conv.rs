//! Convolution on the CPU as one matrix product per image, with the kernel laid out once at load.
//!
//! candle's CPU conv2d re-lays the kernel out on every call (ResNet-50: 23.5M weights copied
//! per forward pass), converts the input to NHWC and the output back, and a bias is one more
//! pass. Here the input is unfolded (im2col) straight into `[C*kh*kw + 1, OH*OW]` whose last row
//! is ones, the kernel is `[O, C*kh*kw + 1]` with the folded bias as its last column, and
//! `kernel x columns` is the NCHW output, bias included. 1x1 stride-1 convolutions need no
//! unfolding at all: the input already is the column matrix.

use candle_core::{Result, Storage, Tensor};
use rayon::prelude::*;

use super::layers::ConvShape;

/// The kernel with the bias as an extra column, `[O, C*kh*kw + 1]`, or for 1x1 stride-1
/// convolutions `[O, C]` (the bias is added afterwards: appending a row of ones would copy the
/// input).
pub struct CpuKernel {
    matrix: Tensor,
    /// `[1, O, 1]` for the 1x1 path.
    bias: Option<Tensor>,
}

fn pointwise(s: &ConvShape) -> bool {
    s.kernel == (1, 1) && s.stride == 1 && s.padding == (0, 0)
}

impl CpuKernel {
    /// `weight` is `[O, C, kh, kw]`, `bias` `[O]`, both already on the CPU.
    pub fn new(weight: &Tensor, bias: &Tensor, s: &ConvShape) -> Result<Self> {
        let o = s.out_channels;
        let k = s.in_channels * s.kernel.0 * s.kernel.1;
        let w = weight.reshape((o, k))?;
        if pointwise(s) {
            return Ok(CpuKernel {
                matrix: w.contiguous()?,
                bias: Some(bias.reshape((1, o, 1))?),
            });
        }
        let matrix = Tensor::cat(&[&w, &bias.reshape((o, 1))?], 1)?.contiguous()?;
        Ok(CpuKernel { matrix, bias: None })
    }

    pub fn forward(&self, x: &Tensor, s: &ConvShape) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let (kh, kw) = s.kernel;
        let (ph, pw) = s.padding;
        let oh = (h + 2 * ph - kh) / s.stride + 1;
        let ow = (w + 2 * pw - kw) / s.stride + 1;
        let o = s.out_channels;
        if let Some(bias) = &self.bias {
            // [C, N*HW]: the images side by side, so the batch is one wide product; one image
            // already is that matrix, with no copy.
            let cols = if n == 1 {
                x.reshape((c, h * w))?
            } else {
                x.reshape((n, c, h * w))?
                    .transpose(0, 1)?
                    .contiguous()?
                    .reshape((c, n * h * w))?
            };
            let y = self
                .matrix
                .matmul(&cols)?
                .reshape((o, n, h * w))?
                .broadcast_add(&bias.reshape((o, 1, 1))?)?;
            return to_nchw(y, n, o, oh, ow);
        }
        let x = x.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("CpuKernel on a non-CPU tensor")
        };
        let data = &cpu.as_slice::<f32>()?[layout.start_offset()..];
        let rows = c * kh * kw + 1;
        let pixels = oh * ow;
        let mut cols = vec![0f32; rows * n * pixels];
        unfold(data, &mut cols, (n, c, h, w), s, (oh, ow));
        drop(storage);
        let cols = Tensor::from_vec(cols, (rows, n * pixels), x.device())?;
        let y = self.matrix.matmul(&cols)?.reshape((o, n, pixels))?;
        to_nchw(y, n, o, oh, ow)
    }
}

/// `[O, N, pixels]` -> `[N, O, OH, OW]`; a free reshape for one image.
fn to_nchw(y: Tensor, n: usize, o: usize, oh: usize, ow: usize) -> Result<Tensor> {
    if n == 1 {
        y.reshape((1, o, oh, ow))
    } else {
        y.transpose(0, 1)?.contiguous()?.reshape((n, o, oh, ow))
    }
}

/// Images `[N, C, H, W]` into `[C*kh*kw + 1, N*OH*OW]`: row `(c, i, j)` holds, for every image
/// and output pixel, the input under kernel tap `(i, j)` of channel `c` (0 in the padding); the
/// last row is ones, for the bias.
fn unfold(
    images: &[f32],
    out: &mut [f32],
    (n, c, h, w): (usize, usize, usize, usize),
    s: &ConvShape,
    (oh, ow): (usize, usize),
) {
    let (kh, kw) = s.kernel;
    let (ph, pw) = s.padding;
    let pixels = oh * ow;
    let stride = s.stride;
    let (body, ones) = out.split_at_mut(c * kh * kw * n * pixels);
    ones.fill(1.0);
    body.par_chunks_exact_mut(pixels)
        .enumerate()
        .for_each(|(row_image, dst)| {
            let (row, image) = (row_image / n, row_image % n);
            let img = &images[image * c * h * w..(image + 1) * c * h * w];
            let (ch, tap) = (row / (kh * kw), row % (kh * kw));
            let (i, j) = (tap / kw, tap % kw);
            let plane = &img[ch * h * w..(ch + 1) * h * w];
            // Output columns whose input column x * stride + j - pw lies inside the image.
            let x_lo = (pw.saturating_sub(j)).div_ceil(stride);
            let x_hi = (w + pw).saturating_sub(j).div_ceil(stride);
            let x_hi = x_hi.min(ow);
            if x_lo >= x_hi {
                return;
            }
            for (y, dst_row) in dst.chunks_exact_mut(ow).enumerate() {
                let sy = y * stride + i;
                if sy < ph || sy - ph >= h {
                    continue; // stays 0: padding
                }
                let src = &plane[(sy - ph) * w..(sy - ph + 1) * w];
                let first = x_lo * stride + j - pw;
                let dst_row = &mut dst_row[x_lo..x_hi];
                if stride == 1 {
                    dst_row.copy_from_slice(&src[first..first + dst_row.len()]);
                } else {
                    for (d, v) in dst_row.iter_mut().zip(src[first..].iter().step_by(stride)) {
                        *d = *v;
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candle_conv2d_for_every_kind_of_layer() -> Result<()> {
        let dev = Device::Cpu;
        for (n, s) in [
            ConvShape::square(3, 8, 7, 2, 3),
            ConvShape::square(6, 5, 3, 1, 1),
            ConvShape::square(6, 5, 3, 2, 0),
            ConvShape::square(6, 5, 1, 2, 0),
            ConvShape::square(6, 5, 1, 1, 0),
            ConvShape::same(6, 5, 1, 7),
            ConvShape::same(6, 5, 7, 1),
        ]
        .into_iter()
        .flat_map(|s| [(1, s), (2, s)])
        {
            // One image takes the no-copy path, several the side-by-side one.
            let x = Tensor::randn(0f32, 1.0, (n, s.in_channels, 13, 11), &dev)?;
            let w = Tensor::randn(
                0f32,
                1.0,
                (s.out_channels, s.in_channels, s.kernel.0, s.kernel.1),
                &dev,
            )?;
            let b = Tensor::randn(0f32, 1.0, s.out_channels, &dev)?;
            let got = CpuKernel::new(&w, &b, &s)?.forward(&x, &s)?;
            let (ph, pw) = s.padding;
            let want = x
                .pad_with_zeros(2, ph, ph)?
                .pad_with_zeros(3, pw, pw)?
                .conv2d(&w, 0, s.stride, 1, 1)?
                .broadcast_add(&b.reshape((1, s.out_channels, 1, 1))?)?;
            assert_eq!(got.dims(), want.dims(), "{s:?}");
            let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-4, "batch {n}, {s:?}: max difference {diff}");
        }
        Ok(())
    }
}
