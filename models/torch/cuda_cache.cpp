// Empties libtorch's CUDA caching allocator, which tch does not expose: after a parked
// TorchScript model's weights move to the CPU, the blocks they used stay reserved by the
// allocator (and counted by NVML against the process) until this runs. Same as Python's
// torch.cuda.empty_cache(). Returns 0, or -1 when libtorch threw (the message goes to stderr).
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>

#include <cstdio>
#include <exception>

extern "C" int siesta_torch_cuda_empty_cache() {
  try {
    if (c10::cuda::device_count() > 0) {
      c10::cuda::CUDACachingAllocator::emptyCache();
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "siesta: emptying the CUDA cache failed: %s\n", e.what());
    return -1;
  }
}
