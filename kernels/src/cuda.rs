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

use crate::Precision;
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

/// (lo, hi, frac): the two source pixels of each output row (or column) and the second's weight.
type TapTables = (CudaSlice<i32>, CudaSlice<i32>, CudaSlice<f32>);

/// [`CudaKernels::plan_preprocess`]'s tables on the device, for one image size and transform.
pub struct PreprocessPlan {
    height: u32,
    width: u32,
    channels: u32,
    rows: TapTables,
    cols: TapTables,
    scale: CudaSlice<f32>,
    bias: CudaSlice<f32>,
    out_rows: i32,
    out_cols: i32,
    out_per_image: usize,
    nchw: i32,
}

impl PreprocessPlan {
    /// Whether images of this shape can use the plan.
    pub fn fits(&self, height: u32, width: u32, channels: u32) -> bool {
        (self.height, self.width, self.channels) == (height, width, channels)
    }
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
        let plan = self.plan_preprocess(first, t, layout)?;
        let s = &self.stream;
        match precision {
            Precision::F32 => {
                let out = self.preprocess_on_device_f32(&plan, &batch)?;
                s.clone_dtoh(&out).map_err(cuda)
            }
            Precision::F16 => {
                let out = self.preprocess_on_device_f16(&plan, &batch)?;
                let host = s.clone_dtoh(&out).map_err(cuda)?;
                Ok(host.into_iter().map(f32::from).collect())
            }
        }
    }

    /// The device-side tables for images shaped like `image` (source taps per output row and
    /// column, per-channel scale and bias): uploaded once and reused by every batch of that size,
    /// so a batch costs one upload of its bytes and one launch.
    pub fn plan_preprocess(
        &self,
        image: &ImageU8,
        t: &ImageTransform,
        layout: Layout,
    ) -> Result<PreprocessPlan, KernelError> {
        let (rows, cols) = t.taps(image)?;
        let (scale, bias) = t.scale_bias();
        let s = &self.stream;
        let upload = |taps: &[crate::preprocess::Tap]| -> Result<TapTables, KernelError> {
            let lo: Vec<i32> = taps.iter().map(|t| t.lo as i32).collect();
            let hi: Vec<i32> = taps.iter().map(|t| t.hi as i32).collect();
            let frac: Vec<f32> = taps.iter().map(|t| t.frac).collect();
            Ok((
                s.clone_htod(&lo).map_err(cuda)?,
                s.clone_htod(&hi).map_err(cuda)?,
                s.clone_htod(&frac).map_err(cuda)?,
            ))
        };
        Ok(PreprocessPlan {
            height: image.height,
            width: image.width,
            channels: image.channels,
            rows: upload(&rows)?,
            cols: upload(&cols)?,
            scale: s.clone_htod(&scale).map_err(cuda)?,
            bias: s.clone_htod(&bias).map_err(cuda)?,
            out_rows: rows.len() as i32,
            out_cols: cols.len() as i32,
            out_per_image: t.output_len(),
            nchw: i32::from(layout == Layout::Nchw),
        })
    }

    /// Resize, crop and normalise `batch` (whole images of the plan's size, one after another)
    /// into a device buffer of f32, ordered on this object's stream.
    pub fn preprocess_on_device_f32(
        &self,
        plan: &PreprocessPlan,
        batch: &[u8],
    ) -> Result<CudaSlice<f32>, KernelError> {
        self.launch_preprocess(&self.preprocess_f32, plan, batch)
    }

    /// As [`Self::preprocess_on_device_f32`], in half precision (for f16 models: no conversion
    /// pass after it).
    pub fn preprocess_on_device_f16(
        &self,
        plan: &PreprocessPlan,
        batch: &[u8],
    ) -> Result<CudaSlice<half::f16>, KernelError> {
        self.launch_preprocess(&self.preprocess_f16, plan, batch)
    }

    fn launch_preprocess<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        func: &CudaFunction,
        plan: &PreprocessPlan,
        batch: &[u8],
    ) -> Result<CudaSlice<T>, KernelError> {
        let per_image = plan.height as usize * plan.width as usize * plan.channels as usize;
        if batch.is_empty() || !batch.len().is_multiple_of(per_image) {
            return Err(KernelError::Transform(format!(
                "{} bytes are not whole {}x{}x{} images",
                batch.len(),
                plan.height,
                plan.width,
                plan.channels
            )));
        }
        let count = batch.len() / per_image;
        let s = &self.stream;
        let d_src = s.clone_htod(batch).map_err(cuda)?;
        let total = plan.out_per_image * count;
        let dims = (
            count as i32,
            plan.height as i32,
            plan.width as i32,
            plan.channels as i32,
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
            .arg(&dims.0)
            .arg(&dims.1)
            .arg(&dims.2)
            .arg(&dims.3)
            .arg(&plan.rows.0)
            .arg(&plan.rows.1)
            .arg(&plan.rows.2)
            .arg(&plan.out_rows)
            .arg(&plan.cols.0)
            .arg(&plan.cols.1)
            .arg(&plan.cols.2)
            .arg(&plan.out_cols)
            .arg(&plan.scale)
            .arg(&plan.bias)
            .arg(&plan.nchw)
            .arg(&mut out);
        // SAFETY: the argument list matches the kernel's signature in kernels.cu, every buffer
        // holds what the kernel indexes (the plan's tables were made for images of this size),
        // and `func` writes `T` (the f32 kernel for f32, the f16 one for f16: the two public
        // callers pair them).
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
