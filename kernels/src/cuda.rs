//! The kernels on an NVIDIA GPU: the same results as [`crate::preprocess`] and [`crate::topk`]
//! (checked against them by `tests/cuda_matches_cpu.rs` where a GPU exists), compiled ahead of
//! time into a fatbin by build.rs. The driver is loaded at run time: [`CudaKernels::new`] on a
//! machine without one is an error, not a panic, so one binary serves both.

// FFI: loading the driver library and launching kernels are unsafe by nature.
#![allow(unsafe_code)]

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use crate::error::KernelError;
use crate::preprocess::{ImageTransform, ImageU8, Layout};
use crate::topk::Scored;

const FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/siesta_kernels.fatbin"));
const THREADS: u32 = 256;

fn cuda(e: impl std::fmt::Display) -> KernelError {
    KernelError::Cuda(e.to_string())
}

/// The names the NVIDIA driver installs its library under.
const DRIVER_LIBRARIES: [&str; 2] = ["libcuda.so.1", "libcuda.so"];

/// Whether the NVIDIA driver library can be loaded here (cudarc panics if it cannot).
pub fn driver_present() -> bool {
    DRIVER_LIBRARIES
        .iter()
        // SAFETY: loading libcuda runs only the driver's own initialisers.
        .any(|name| unsafe { libloading::Library::new(name) }.is_ok())
}

/// The output element type of the preprocessing kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
}

/// The kernels loaded on one GPU.
pub struct CudaKernels {
    stream: Arc<CudaStream>,
    preprocess_f32: CudaFunction,
    preprocess_f16: CudaFunction,
    softmax_top_k: CudaFunction,
    device_name: String,
}

impl CudaKernels {
    pub fn new(ordinal: usize) -> Result<Self, KernelError> {
        if !driver_present() {
            return Err(KernelError::NoDriver(DRIVER_LIBRARIES.join(", ")));
        }
        // Belt and braces: a driver that loads but cannot initialise must not take the
        // process down either.
        let ctx = std::panic::catch_unwind(|| CudaContext::new(ordinal))
            .map_err(|_| KernelError::Cuda("the CUDA driver panicked while initialising".into()))?
            .map_err(cuda)?;
        Self::on_stream(ctx.default_stream())
    }

    /// The kernels on a stream another library owns (candle's), so that they run in order with
    /// its work on the same GPU without any synchronisation.
    pub fn on_stream(stream: Arc<CudaStream>) -> Result<Self, KernelError> {
        let ctx = stream.context();
        let device_name = ctx.name().map_err(cuda)?;
        let module = ctx
            .load_module(Ptx::from_binary(FATBIN.to_vec()))
            .map_err(cuda)?;
        let f = |name: &str| module.load_function(name).map_err(cuda);
        Ok(CudaKernels {
            stream,
            preprocess_f32: f("siesta_preprocess_f32")?,
            preprocess_f16: f("siesta_preprocess_f16")?,
            softmax_top_k: f("siesta_softmax_top_k")?,
            device_name,
        })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// Resize, crop and normalise a batch of same-sized uint8 images on the GPU; the result is
    /// copied back as f32 (from f16 when asked for f16) for checking and for callers that
    /// feed a host engine.
    pub fn preprocess(
        &self,
        images: &[ImageU8],
        t: &ImageTransform,
        layout: Layout,
        precision: Precision,
    ) -> Result<Vec<f32>, KernelError> {
        let Some(first) = images.first() else {
            return Ok(Vec::new());
        };
        let mut batch = Vec::with_capacity(first.data.len() * images.len());
        for (index, img) in images.iter().enumerate() {
            if (img.height, img.width, img.channels) != (first.height, first.width, first.channels)
            {
                return Err(KernelError::MixedSizes {
                    index,
                    got: format!("{}x{}x{}", img.height, img.width, img.channels),
                    want: format!("{}x{}x{}", first.height, first.width, first.channels),
                });
            }
            batch.extend_from_slice(img.data);
        }
        let s = &self.stream;
        match precision {
            Precision::F32 => {
                let out = self.preprocess_on_device_f32(&batch, first, t, layout)?;
                s.clone_dtoh(&out).map_err(cuda)
            }
            Precision::F16 => {
                let out = self.preprocess_on_device_f16(&batch, first, t, layout)?;
                let host = s.clone_dtoh(&out).map_err(cuda)?;
                Ok(host.into_iter().map(f32::from).collect())
            }
        }
    }

    /// [`Self::preprocess`] for a model on this GPU: `batch` is whole images shaped like
    /// `first` (which may be its first image), one after another; the f32 result stays on the
    /// device, ordered on this object's stream.
    pub fn preprocess_on_device_f32(
        &self,
        batch: &[u8],
        first: &ImageU8,
        t: &ImageTransform,
        layout: Layout,
    ) -> Result<CudaSlice<f32>, KernelError> {
        self.launch_preprocess(&self.preprocess_f32, batch, first, t, layout)
    }

    /// As [`Self::preprocess_on_device_f32`], in half precision (for f16 models: no conversion
    /// pass after it).
    pub fn preprocess_on_device_f16(
        &self,
        batch: &[u8],
        first: &ImageU8,
        t: &ImageTransform,
        layout: Layout,
    ) -> Result<CudaSlice<half::f16>, KernelError> {
        self.launch_preprocess(&self.preprocess_f16, batch, first, t, layout)
    }

    fn launch_preprocess<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        func: &CudaFunction,
        batch: &[u8],
        first: &ImageU8,
        t: &ImageTransform,
        layout: Layout,
    ) -> Result<CudaSlice<T>, KernelError> {
        let per_image = first.data.len();
        if batch.is_empty() || !batch.len().is_multiple_of(per_image) {
            return Err(KernelError::Transform(format!(
                "{} bytes are not whole {}x{}x{} images",
                batch.len(),
                first.height,
                first.width,
                first.channels
            )));
        }
        let count = batch.len() / per_image;
        let (rows, cols) = t.taps(first)?;
        let (scale, bias) = t.scale_bias();
        let s = &self.stream;
        let lo =
            |taps: &[crate::preprocess::Tap]| taps.iter().map(|t| t.lo as i32).collect::<Vec<_>>();
        let hi =
            |taps: &[crate::preprocess::Tap]| taps.iter().map(|t| t.hi as i32).collect::<Vec<_>>();
        let frac =
            |taps: &[crate::preprocess::Tap]| taps.iter().map(|t| t.frac).collect::<Vec<_>>();
        let d_src = s.clone_htod(batch).map_err(cuda)?;
        let (d_row_lo, d_row_hi, d_row_frac) = (
            s.clone_htod(&lo(&rows)).map_err(cuda)?,
            s.clone_htod(&hi(&rows)).map_err(cuda)?,
            s.clone_htod(&frac(&rows)).map_err(cuda)?,
        );
        let (d_col_lo, d_col_hi, d_col_frac) = (
            s.clone_htod(&lo(&cols)).map_err(cuda)?,
            s.clone_htod(&hi(&cols)).map_err(cuda)?,
            s.clone_htod(&frac(&cols)).map_err(cuda)?,
        );
        let d_scale = s.clone_htod(&scale).map_err(cuda)?;
        let d_bias = s.clone_htod(&bias).map_err(cuda)?;
        let total = t.output_len() * count;
        let args = (
            count as i32,
            first.height as i32,
            first.width as i32,
            first.channels as i32,
            rows.len() as i32,
            cols.len() as i32,
            i32::from(layout == Layout::Nchw),
        );
        let blocks = (total as u64).div_ceil(u64::from(THREADS)).min(65_535) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks.max(1), 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut out = s.alloc_zeros::<T>(total).map_err(cuda)?;
        let mut b = s.launch_builder(func);
        b.arg(&d_src)
            .arg(&args.0)
            .arg(&args.1)
            .arg(&args.2)
            .arg(&args.3)
            .arg(&d_row_lo)
            .arg(&d_row_hi)
            .arg(&d_row_frac)
            .arg(&args.4)
            .arg(&d_col_lo)
            .arg(&d_col_hi)
            .arg(&d_col_frac)
            .arg(&args.5)
            .arg(&d_scale)
            .arg(&d_bias)
            .arg(&args.6)
            .arg(&mut out);
        // SAFETY: the argument list matches the kernel's signature in kernels.cu, every buffer
        // holds what the kernel indexes (sizes computed above), and `func` writes `T` (the f32
        // kernel for f32, the f16 one for f16: the two public callers pair them).
        unsafe { b.launch(cfg) }.map_err(cuda)?;
        Ok(out)
    }

    /// Softmax and the top `k` of each row of `logits` (`rows` x `cols`), only k pairs per row
    /// coming back.
    pub fn softmax_top_k(
        &self,
        logits: &[f32],
        cols: usize,
        k: usize,
    ) -> Result<Vec<Vec<Scored>>, KernelError> {
        if cols == 0 || !logits.len().is_multiple_of(cols) {
            return Err(KernelError::Transform(format!(
                "{} logits are not whole rows of {cols} classes",
                logits.len()
            )));
        }
        let rows = logits.len() / cols;
        let k = k.min(cols);
        if rows == 0 || k == 0 {
            return Ok(vec![Vec::new(); rows]);
        }
        let shared = cols * 4 + THREADS as usize * 8;
        if shared > 48 * 1024 {
            return Err(KernelError::Cuda(format!(
                "{cols} classes do not fit one block's shared memory (at most {})",
                (48 * 1024 - THREADS as usize * 8) / 4
            )));
        }
        let s = &self.stream;
        let d_logits = s.clone_htod(logits).map_err(cuda)?;
        let mut d_index = s.alloc_zeros::<i32>(rows * k).map_err(cuda)?;
        let mut d_score = s.alloc_zeros::<f32>(rows * k).map_err(cuda)?;
        let (cols_i, k_i) = (cols as i32, k as i32);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: shared as u32,
        };
        let mut b = s.launch_builder(&self.softmax_top_k);
        b.arg(&d_logits)
            .arg(&cols_i)
            .arg(&k_i)
            .arg(&mut d_index)
            .arg(&mut d_score);
        // SAFETY: arguments match `siesta_softmax_top_k`; the outputs hold rows * k values and
        // the shared memory size is the one the kernel documents.
        unsafe { b.launch(cfg) }.map_err(cuda)?;
        let index = s.clone_dtoh(&d_index).map_err(cuda)?;
        let score = s.clone_dtoh(&d_score).map_err(cuda)?;
        Ok(index
            .chunks(k)
            .zip(score.chunks(k))
            .map(|(i, sc)| {
                i.iter()
                    .zip(sc)
                    .map(|(&index, &score)| Scored {
                        index: index as usize,
                        score,
                    })
                    .collect()
            })
            .collect())
    }
}
