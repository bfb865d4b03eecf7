//! Empties libtorch's CUDA caching allocator (torch/cuda_cache.cpp), so that a parked
//! TorchScript model gives its GPU memory back to the driver and not just to libtorch's cache.
//! Built only against libtorch's CUDA build; elsewhere there is no CUDA cache to empty.
#![allow(unsafe_code)]

#[cfg(siesta_torch_cuda_cache)]
unsafe extern "C" {
    fn siesta_torch_cuda_empty_cache() -> std::ffi::c_int;
}

/// Whether this build was linked against libtorch's CUDA build and can empty its cache.
pub fn available() -> bool {
    cfg!(siesta_torch_cuda_cache)
}

/// `true` when the cache was emptied (or libtorch sees no GPU), `false` when this build cannot.
pub fn empty() -> bool {
    #[cfg(siesta_torch_cuda_cache)]
    {
        // SAFETY: no arguments; the C++ side catches every exception before returning.
        let rc = unsafe { siesta_torch_cuda_empty_cache() };
        if rc != 0 {
            tracing::warn!("libtorch could not empty its CUDA cache; the memory stays reserved");
        }
        rc == 0
    }
    #[cfg(not(siesta_torch_cuda_cache))]
    {
        false
    }
}
