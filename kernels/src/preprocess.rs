//! Image preprocessing in one pass: uint8 HWC image -> bilinear resize -> centre crop ->
//! per-channel normalisation -> f32 (or uint8) in NCHW or NHWC.
//!
//! The resize is PyTorch's `interpolate(mode="bilinear", align_corners=False, antialias=False)`
//! (half-pixel centres, edge clamping); the crop is torchvision's `center_crop` (offsets rounded
//! half to even, as Python's `round`). Only the output pixels are ever computed: the resized
//! image never exists, which is what lets the GPU version run as one kernel.

use crate::error::KernelError;

/// An 8-bit image, rows of pixels with interleaved channels (what JPEG and PNG decoders give).
#[derive(Debug, Clone, Copy)]
pub struct ImageU8<'a> {
    pub data: &'a [u8],
    pub height: u32,
    pub width: u32,
    pub channels: u32,
}

impl<'a> ImageU8<'a> {
    pub fn new(
        data: &'a [u8],
        height: u32,
        width: u32,
        channels: u32,
    ) -> Result<Self, KernelError> {
        let want = height as usize * width as usize * channels as usize;
        if data.len() != want || want == 0 {
            return Err(KernelError::ImageSize {
                got: data.len(),
                want,
                height,
                width,
                channels,
            });
        }
        Ok(ImageU8 {
            data,
            height,
            width,
            channels,
        })
    }
}

/// Where the channel dimension goes in the model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[N, C, H, W]`: PyTorch models.
    Nchw,
    /// `[N, H, W, C]`: TensorFlow/Keras models.
    Nhwc,
}

/// What an image classifier expects of its input, as torchvision's
/// `Resize(resize_shorter) -> CenterCrop(crop) -> ToTensor -> Normalize(mean, std)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTransform {
    /// The shorter side is resized to this, keeping the aspect ratio; 0 resizes straight to the
    /// crop size.
    pub resize_shorter: u32,
    pub crop_height: u32,
    pub crop_width: u32,
    /// Per channel, in units of `pixel / 255`.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// For one output coordinate: the two source pixels and the weight of the second.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tap {
    pub(crate) lo: usize,
    pub(crate) hi: usize,
    pub(crate) frac: f32,
}

impl ImageTransform {
    pub fn channels(&self) -> u32 {
        self.mean.len() as u32
    }

    /// Values per image in the output.
    pub fn output_len(&self) -> usize {
        self.crop_height as usize * self.crop_width as usize * self.mean.len()
    }

    pub fn validate(&self) -> Result<(), KernelError> {
        let bad = |m: String| Err(KernelError::Transform(m));
        if self.crop_height == 0 || self.crop_width == 0 {
            return bad("the crop must be at least 1x1".into());
        }
        if self.mean.is_empty() || self.mean.len() != self.std.len() {
            return bad(format!(
                "mean has {} values and std {}; both need one per channel",
                self.mean.len(),
                self.std.len()
            ));
        }
        if self.std.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return bad("std values must be finite and non-zero".into());
        }
        Ok(())
    }

    /// The size the image is resized to before cropping (torchvision's `Resize(int)` rule).
    pub fn resized_size(&self, height: u32, width: u32) -> (u32, u32) {
        if self.resize_shorter == 0 {
            return (self.crop_height, self.crop_width);
        }
        let s = self.resize_shorter as u64;
        if height <= width {
            (
                self.resize_shorter,
                (s * width as u64 / height as u64) as u32,
            )
        } else {
            (
                (s * height as u64 / width as u64) as u32,
                self.resize_shorter,
            )
        }
    }

    /// Source taps for each output row and column, or an error when the crop does not fit.
    pub(crate) fn taps(&self, img: &ImageU8) -> Result<(Vec<Tap>, Vec<Tap>), KernelError> {
        self.validate()?;
        if img.channels != self.channels() {
            return Err(KernelError::Channels {
                got: img.channels,
                want: self.channels(),
            });
        }
        let (rh, rw) = self.resized_size(img.height, img.width);
        if self.crop_height > rh || self.crop_width > rw {
            return Err(KernelError::Transform(format!(
                "a {}x{} crop does not fit the image resized to {rh}x{rw}",
                self.crop_height, self.crop_width
            )));
        }
        let top = centre_offset(rh, self.crop_height);
        let left = centre_offset(rw, self.crop_width);
        Ok((
            axis_taps(img.height, rh, top, self.crop_height),
            axis_taps(img.width, rw, left, self.crop_width),
        ))
    }

    /// Calls `write(index, channel, value)` for every output value, `value` being the resized
    /// and cropped pixel (0..=255); `index` follows `layout`.
    fn for_each_output(
        &self,
        img: &ImageU8,
        layout: Layout,
        out_len: usize,
        mut write: impl FnMut(usize, usize, f32),
    ) -> Result<(), KernelError> {
        let (rows, cols) = self.taps(img)?;
        check_output(out_len, self.output_len())?;
        let (h, w, c) = (rows.len(), cols.len(), self.mean.len());
        for (y, ry) in rows.iter().enumerate() {
            for (x, cx) in cols.iter().enumerate() {
                for ch in 0..c {
                    let i = match layout {
                        Layout::Nchw => (ch * h + y) * w + x,
                        Layout::Nhwc => (y * w + x) * c + ch,
                    };
                    write(i, ch, bilinear(img, ry, cx, ch));
                }
            }
        }
        Ok(())
    }

    /// (v / 255 - mean) / std as one multiply-add per value: the per-channel factors.
    pub(crate) fn scale_bias(&self) -> (Vec<f32>, Vec<f32>) {
        let scale = self.std.iter().map(|s| 1.0 / (255.0 * s)).collect();
        let bias = self
            .mean
            .iter()
            .zip(&self.std)
            .map(|(m, s)| -m / s)
            .collect();
        (scale, bias)
    }

    /// Normalised f32 output for one image; `out` holds exactly [`Self::output_len`] values.
    pub fn apply_f32(
        &self,
        img: &ImageU8,
        layout: Layout,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let (scale, bias) = self.scale_bias();
        let len = out.len();
        self.for_each_output(img, layout, len, |i, ch, v| {
            out[i] = v * scale[ch] + bias[ch]
        })
    }

    /// Resized and cropped uint8 output (no normalisation), for models that take raw pixels and
    /// so a quarter of the bytes.
    pub fn apply_u8(
        &self,
        img: &ImageU8,
        layout: Layout,
        out: &mut [u8],
    ) -> Result<(), KernelError> {
        let len = out.len();
        self.for_each_output(img, layout, len, |i, _, v| {
            out[i] = v.round().clamp(0.0, 255.0) as u8
        })
    }
}

fn check_output(got: usize, want: usize) -> Result<(), KernelError> {
    if got != want {
        return Err(KernelError::Output { got, want });
    }
    Ok(())
}

/// torchvision's centre-crop offset: `int(round((size - crop) / 2))`, ties to even.
fn centre_offset(size: u32, crop: u32) -> usize {
    ((size - crop) as f64 / 2.0).round_ties_even() as usize
}

/// Taps along one axis: output index `i` is resized index `offset + i`, which maps back to the
/// source with half-pixel centres.
fn axis_taps(src: u32, resized: u32, offset: usize, len: u32) -> Vec<Tap> {
    // f64 here costs nothing (one table per axis) and keeps the weights exact to f32.
    let scale = src as f64 / resized as f64;
    let last = src as usize - 1;
    (0..len as usize)
        .map(|i| {
            let pos = (((offset + i) as f64 + 0.5) * scale - 0.5).max(0.0);
            let lo = (pos as usize).min(last);
            Tap {
                lo,
                hi: (lo + 1).min(last),
                frac: (pos - lo as f64) as f32,
            }
        })
        .collect()
}

fn bilinear(img: &ImageU8, ry: &Tap, cx: &Tap, ch: usize) -> f32 {
    let w = img.width as usize;
    let c = img.channels as usize;
    let px = |y: usize, x: usize| img.data[(y * w + x) * c + ch] as f32;
    let top = px(ry.lo, cx.lo) * (1.0 - cx.frac) + px(ry.lo, cx.hi) * cx.frac;
    let bottom = px(ry.hi, cx.lo) * (1.0 - cx.frac) + px(ry.hi, cx.hi) * cx.frac;
    top * (1.0 - ry.frac) + bottom * ry.frac
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unfused pipeline, step by step in f64, as torchvision would run it.
    fn naive(img: &ImageU8, t: &ImageTransform, layout: Layout) -> Vec<f32> {
        let (h, w, c) = (
            img.height as usize,
            img.width as usize,
            img.channels as usize,
        );
        let (rh, rw) = t.resized_size(img.height, img.width);
        let (rh, rw) = (rh as usize, rw as usize);
        let src = |y: usize, x: usize, ch: usize| img.data[(y * w + x) * c + ch] as f64;
        let coord = |i: usize, insize: usize, outsize: usize| {
            let p = ((i as f64 + 0.5) * insize as f64 / outsize as f64 - 0.5).max(0.0);
            let lo = (p.floor() as usize).min(insize - 1);
            (lo, (lo + 1).min(insize - 1), p - lo as f64)
        };
        let mut resized = vec![0.0f64; rh * rw * c];
        for y in 0..rh {
            let (y0, y1, fy) = coord(y, h, rh);
            for x in 0..rw {
                let (x0, x1, fx) = coord(x, w, rw);
                for ch in 0..c {
                    let top = src(y0, x0, ch) * (1.0 - fx) + src(y0, x1, ch) * fx;
                    let bot = src(y1, x0, ch) * (1.0 - fx) + src(y1, x1, ch) * fx;
                    resized[(y * rw + x) * c + ch] = top * (1.0 - fy) + bot * fy;
                }
            }
        }
        let (ch_, cw_) = (t.crop_height as usize, t.crop_width as usize);
        let top = (((rh - ch_) as f64) / 2.0).round_ties_even() as usize;
        let left = (((rw - cw_) as f64) / 2.0).round_ties_even() as usize;
        let mut out = vec![0.0f32; ch_ * cw_ * c];
        for y in 0..ch_ {
            for x in 0..cw_ {
                for ch in 0..c {
                    let v = resized[((y + top) * rw + x + left) * c + ch] / 255.0;
                    let v = (v - t.mean[ch] as f64) / t.std[ch] as f64;
                    let i = match layout {
                        Layout::Nchw => (ch * ch_ + y) * cw_ + x,
                        Layout::Nhwc => (y * cw_ + x) * c + ch,
                    };
                    out[i] = v as f32;
                }
            }
        }
        out
    }

    /// A deterministic pseudo-random image (xorshift), different per seed.
    fn image(h: u32, w: u32, c: u32, seed: u64) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..h * w * c)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    fn imagenet(resize: u32, crop: u32) -> ImageTransform {
        ImageTransform {
            resize_shorter: resize,
            crop_height: crop,
            crop_width: crop,
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }
    }

    #[test]
    fn fused_matches_the_step_by_step_pipeline() {
        let cases = [
            (480, 640, imagenet(256, 224)),
            (37, 23, imagenet(256, 224)), // upscaling
            (299, 299, imagenet(0, 299)), // no resize at all
            (500, 333, imagenet(342, 299)),
            (301, 300, imagenet(0, 32)),
        ];
        for (seed, (h, w, t)) in cases.into_iter().enumerate() {
            let data = image(h, w, 3, seed as u64);
            let img = ImageU8::new(&data, h, w, 3).unwrap();
            for layout in [Layout::Nchw, Layout::Nhwc] {
                let want = naive(&img, &t, layout);
                let mut got = vec![0.0; t.output_len()];
                t.apply_f32(&img, layout, &mut got).unwrap();
                let worst = want
                    .iter()
                    .zip(&got)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(worst < 1e-4, "{h}x{w} {layout:?}: max abs error {worst}");
            }
        }
    }

    #[test]
    fn same_size_is_the_identity_and_u8_keeps_pixels() {
        let data = image(28, 28, 1, 7);
        let img = ImageU8::new(&data, 28, 28, 1).unwrap();
        let t = ImageTransform {
            resize_shorter: 28,
            crop_height: 28,
            crop_width: 28,
            mean: vec![0.0],
            std: vec![1.0],
        };
        let mut f = vec![0.0; 784];
        t.apply_f32(&img, Layout::Nchw, &mut f).unwrap();
        for (p, v) in data.iter().zip(&f) {
            assert!((*p as f32 / 255.0 - v).abs() < 1e-6);
        }
        let mut u = vec![0u8; 784];
        t.apply_u8(&img, Layout::Nchw, &mut u).unwrap();
        assert_eq!(u, data);
    }

    #[test]
    fn bilinear_upscale_of_two_pixels_matches_pytorch() {
        // torch.nn.functional.interpolate(torch.tensor([[[[0., 255.]]]]), size=(1, 4),
        // mode="bilinear", align_corners=False) == [0, 63.75, 191.25, 255]
        let data = [0u8, 255];
        let img = ImageU8::new(&data, 1, 2, 1).unwrap();
        let t = ImageTransform {
            resize_shorter: 0,
            crop_height: 1,
            crop_width: 4,
            mean: vec![0.0],
            std: vec![1.0 / 255.0],
        };
        let mut out = vec![0.0; 4];
        t.apply_f32(&img, Layout::Nchw, &mut out).unwrap();
        for (got, want) in out.iter().zip([0.0, 63.75, 191.25, 255.0]) {
            assert!((got - want).abs() < 1e-3, "{out:?}");
        }
    }

    #[test]
    fn centre_crop_rounds_half_to_even_like_python() {
        assert_eq!(centre_offset(257, 256), 0);
        assert_eq!(centre_offset(259, 256), 2);
        assert_eq!(centre_offset(256, 224), 16);
    }

    #[test]
    fn bad_shapes_are_errors_not_panics() {
        let data = image(4, 4, 3, 1);
        assert!(matches!(
            ImageU8::new(&data, 4, 5, 3),
            Err(KernelError::ImageSize { .. })
        ));
        let img = ImageU8::new(&data, 4, 4, 3).unwrap();
        let t = imagenet(0, 2);
        let mut small = vec![0.0; 3];
        assert!(matches!(
            t.apply_f32(&img, Layout::Nchw, &mut small),
            Err(KernelError::Output { .. })
        ));
        let gray = ImageTransform {
            mean: vec![0.5],
            std: vec![0.5],
            ..imagenet(0, 2)
        };
        let mut out = vec![0.0; gray.output_len()];
        assert!(matches!(
            gray.apply_f32(&img, Layout::Nchw, &mut out),
            Err(KernelError::Channels { got: 3, want: 1 })
        ));
        let too_big = ImageTransform {
            resize_shorter: 4,
            ..imagenet(0, 8)
        };
        let mut out = vec![0.0; too_big.output_len()];
        assert!(matches!(
            too_big.apply_f32(&img, Layout::Nchw, &mut out),
            Err(KernelError::Transform(_))
        ));
        let zero_std = ImageTransform {
            std: vec![0.0, 1.0, 1.0],
            ..imagenet(0, 2)
        };
        assert!(zero_std.validate().is_err());
    }
}
