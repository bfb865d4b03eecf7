//! A classifier's UINT8 pixel input: clients (or the image transformer) send `[N, H, W, 3]`
//! bytes, a quarter of FP32's, and the replica turns them into the network's normalised NCHW
//! input with the fused preprocessing kernel, on the device the network runs on. On a GPU the
//! kernel reads the uploaded bytes and writes the network's input (f32 or f16) in place, so only
//! the bytes cross PCIe; on the CPU its reference implementation does the same in one pass.

use candle_core::{DType, Device, Tensor as CTensor};
use rayon::prelude::*;
#[cfg(feature = "cuda")]
use siesta_kernels::cuda::{CudaKernels, PreprocessPlan};
use siesta_kernels::{ImageTransform, ImageU8, Layout};

use crate::error::ModelError;
use crate::tensor::Tensor;

pub struct PixelInput {
    /// Straight to the network's side (bilinear; the identity when the input already is that
    /// size), then the config's mean and std.
    transform: ImageTransform,
    /// Made on the first GPU batch, on candle's stream.
    #[cfg(feature = "cuda")]
    gpu: Option<GpuPreprocess>,
}

/// The kernels on the model's GPU and the tables for the input's (fixed) image size, so a batch
/// costs one upload of its bytes and one launch.
#[cfg(feature = "cuda")]
struct GpuPreprocess {
    kernels: CudaKernels,
    plan: Option<PreprocessPlan>,
}

fn input_error(e: impl std::fmt::Display) -> ModelError {
    ModelError::Input(e.to_string())
}

impl PixelInput {
    pub fn new(side: u32, mean: Vec<f32>, std: Vec<f32>) -> Result<Self, ModelError> {
        let transform = ImageTransform {
            resize_shorter: 0,
            crop_height: side,
            crop_width: side,
            mean,
            std,
        };
        transform
            .validate()
            .map_err(|e| ModelError::Input(format!("image normalisation: {e}")))?;
        Ok(PixelInput {
            transform,
            #[cfg(feature = "cuda")]
            gpu: None,
        })
    }

    /// `input` is UINT8 `[N, H, W, C]` or `[H, W, C]`; the result is `[N, C, side, side]` in
    /// `dtype` on `device`.
    pub fn network_input(
        &mut self,
        input: &Tensor,
        device: &Device,
        dtype: DType,
    ) -> Result<CTensor, ModelError> {
        let (n, h, w, c) = match input.shape.as_slice() {
            &[n, h, w, c] => (n, h, w, c),
            &[h, w, c] => (1, h, w, c),
            other => {
                return Err(ModelError::Input(format!(
                    "expected UINT8 [N, H, W, 3] pixels, got {other:?}"
                )));
            }
        };
        let per_image = h * w * c;
        let first = ImageU8::new(
            input.data.get(..per_image).unwrap_or_default(),
            h as u32,
            w as u32,
            c as u32,
        )
        .map_err(input_error)?;
        let side = self.transform.crop_height as usize;
        let shape = (n, c, side, side);
        #[cfg(feature = "cuda")]
        if let Device::Cuda(cuda) = device {
            return self.on_gpu(cuda, &input.data, &first, shape, dtype);
        }
        let out_len = self.transform.output_len();
        let mut out = vec![0f32; n * out_len];
        out.par_chunks_mut(out_len)
            .zip(input.data.par_chunks(per_image))
            .try_for_each(|(dst, src)| {
                let img = ImageU8::new(src, first.height, first.width, first.channels)?;
                self.transform.apply_f32(&img, Layout::Nchw, dst)
            })
            .map_err(input_error)?;
        Ok(CTensor::from_vec(out, shape, device)?.to_dtype(dtype)?)
    }

    #[cfg(feature = "cuda")]
    fn on_gpu(
        &mut self,
        cuda: &candle_core::CudaDevice,
        batch: &[u8],
        first: &ImageU8,
        shape: (usize, usize, usize, usize),
        dtype: DType,
    ) -> Result<CTensor, ModelError> {
        use candle_core::Storage;
        use candle_core::cuda_backend::CudaStorage;
        use candle_core::op::BackpropOp;

        let device_error = |e: siesta_kernels::KernelError| match e {
            siesta_kernels::KernelError::Cuda(why) => ModelError::Device("cuda".into(), why),
            other => input_error(other),
        };
        let gpu = match &mut self.gpu {
            Some(g) => g,
            slot => slot.insert(GpuPreprocess {
                kernels: CudaKernels::on_stream(cuda.cuda_stream()).map_err(device_error)?,
                plan: None,
            }),
        };
        let fits = |p: &PreprocessPlan| p.fits(first.height, first.width, first.channels);
        if !gpu.plan.as_ref().is_some_and(fits) {
            gpu.plan = Some(
                gpu.kernels
                    .plan_preprocess(first, &self.transform, Layout::Nchw)
                    .map_err(device_error)?,
            );
        }
        let plan = gpu.plan.as_ref().expect("made above");
        let storage = if dtype == DType::F16 {
            let out = gpu
                .kernels
                .preprocess_on_device_f16(plan, batch)
                .map_err(device_error)?;
            CudaStorage::wrap_cuda_slice(out, cuda.clone())
        } else {
            let out = gpu
                .kernels
                .preprocess_on_device_f32(plan, batch)
                .map_err(device_error)?;
            CudaStorage::wrap_cuda_slice(out, cuda.clone())
        };
        let x = CTensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false);
        Ok(x.to_dtype(dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DataType;

    fn pixels(shape: Vec<usize>, data: Vec<u8>) -> Tensor {
        Tensor::new("image", DataType::U8, shape, data).unwrap()
    }

    #[test]
    fn same_size_pixels_are_only_normalised_into_nchw() {
        let mut p = PixelInput::new(2, vec![0.5, 0.25, 0.0], vec![0.5, 0.5, 1.0]).unwrap();
        // One 2x2 RGB image, pixel (y, x) = [10y + x, 100, 255].
        let data: Vec<u8> = (0..2)
            .flat_map(|y| (0..2).flat_map(move |x| [10 * y + x, 100, 255]))
            .collect();
        let x = p
            .network_input(&pixels(vec![1, 2, 2, 3], data), &Device::Cpu, DType::F32)
            .unwrap();
        assert_eq!(x.dims(), &[1, 3, 2, 2]);
        let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let norm = |px: f32, m: f32, s: f32| (px / 255.0 - m) / s;
        let want: Vec<f32> = [0.0, 1.0, 10.0, 11.0]
            .iter()
            .map(|&px| norm(px, 0.5, 0.5))
            .chain([norm(100.0, 0.25, 0.5); 4])
            .chain([norm(255.0, 0.0, 1.0); 4])
            .collect();
        for (g, w) in v.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{v:?} vs {want:?}");
        }
    }

    #[test]
    fn larger_pixels_are_resized_and_every_image_of_the_batch_is_converted() {
        let mut p = PixelInput::new(4, vec![0.0; 3], vec![1.0; 3]).unwrap();
        // Two flat 8x6 images: resizing keeps a flat image flat.
        let data: Vec<u8> = [51u8, 204]
            .iter()
            .flat_map(|&v| vec![v; 8 * 6 * 3])
            .collect();
        let x = p
            .network_input(&pixels(vec![2, 8, 6, 3], data), &Device::Cpu, DType::F16)
            .unwrap();
        assert_eq!((x.dims(), x.dtype()), (&[2, 3, 4, 4][..], DType::F16));
        let v: Vec<f32> = x
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(v[..48].iter().all(|&a| (a - 0.2).abs() < 1e-3), "{v:?}");
        assert!(v[48..].iter().all(|&a| (a - 0.8).abs() < 1e-3), "{v:?}");
    }

    #[test]
    fn pixels_of_the_wrong_rank_or_channels_are_input_errors() {
        let mut p = PixelInput::new(2, vec![0.0; 3], vec![1.0; 3]).unwrap();
        let err = p
            .network_input(&pixels(vec![4, 3], vec![0; 12]), &Device::Cpu, DType::F32)
            .unwrap_err();
        assert!(matches!(err, ModelError::Input(_)), "{err}");
        let err = p
            .network_input(
                &pixels(vec![1, 2, 2, 1], vec![0; 4]),
                &Device::Cpu,
                DType::F32,
            )
            .unwrap_err();
        assert!(err.to_string().contains("channel"), "{err}");
    }
}
