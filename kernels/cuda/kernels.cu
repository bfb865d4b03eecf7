// Siesta's fused kernels, the GPU versions of kernels/src/preprocess.rs and kernels/src/topk.rs.
// Compiled ahead of time by kernels/build.rs (sm_90 code + PTX for older GPUs) so that no cold
// start pays for NVRTC. Keep the arithmetic in the same order as the CPU references: the
// build disables FMA contraction, so results match them to float rounding.

#include <cuda_fp16.h>

// One output value per thread (grid-stride): the two source rows and columns come from tap
// tables the host computes once per batch (the same tables the CPU reference uses), so the
// resized image never exists.
template <typename Out>
__device__ void preprocess(const unsigned char* __restrict__ src, int batch, int height, int width,
                           int channels, const int* __restrict__ row_lo,
                           const int* __restrict__ row_hi, const float* __restrict__ row_frac,
                           int out_h, const int* __restrict__ col_lo,
                           const int* __restrict__ col_hi, const float* __restrict__ col_frac,
                           int out_w, const float* __restrict__ scale,
                           const float* __restrict__ bias, int nchw, Out* __restrict__ out) {
    long long total = (long long)batch * out_h * out_w * channels;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        long long r = i;
        int n, ch, y, x;
        if (nchw) {
            x = r % out_w; r /= out_w;
            y = r % out_h; r /= out_h;
            ch = r % channels; n = (int)(r / channels);
        } else {
            ch = r % channels; r /= channels;
            x = r % out_w; r /= out_w;
            y = r % out_h; n = (int)(r / out_h);
        }
        const unsigned char* img = src + (long long)n * height * width * channels;
        float fx = col_frac[x], fy = row_frac[y];
        float p00 = img[((long long)row_lo[y] * width + col_lo[x]) * channels + ch];
        float p01 = img[((long long)row_lo[y] * width + col_hi[x]) * channels + ch];
        float p10 = img[((long long)row_hi[y] * width + col_lo[x]) * channels + ch];
        float p11 = img[((long long)row_hi[y] * width + col_hi[x]) * channels + ch];
        float top = p00 * (1.0f - fx) + p01 * fx;
        float bottom = p10 * (1.0f - fx) + p11 * fx;
        float v = top * (1.0f - fy) + bottom * fy;
        float value = v * scale[ch] + bias[ch];
        if constexpr (sizeof(Out) == 2) {
            out[i] = __float2half_rn(value);
        } else {
            out[i] = value;
        }
    }
}

#define PREPROCESS_ARGS                                                                       \
    const unsigned char *src, int batch, int height, int width, int channels,                 \
        const int *row_lo, const int *row_hi, const float *row_frac, int out_h,               \
        const int *col_lo, const int *col_hi, const float *col_frac, int out_w,               \
        const float *scale, const float *bias, int nchw
#define PREPROCESS_PASS                                                                       \
    src, batch, height, width, channels, row_lo, row_hi, row_frac, out_h, col_lo, col_hi,     \
        col_frac, out_w, scale, bias, nchw

extern "C" __global__ void siesta_preprocess_f32(PREPROCESS_ARGS, float* out) {
    preprocess<float>(PREPROCESS_PASS, out);
}

extern "C" __global__ void siesta_preprocess_f16(PREPROCESS_ARGS, __half* out) {
    preprocess<__half>(PREPROCESS_PASS, out);
}

// Higher score first, then the lower index; a negative score marks an entry already taken.
__device__ bool better(float a, int ia, float b, int ib) {
    return a > b || (a == b && ia < ib);
}

// One block per row: softmax in shared memory (max, then sum of exponentials), then k rounds of
// a block-wide argmax, so only k (index, probability) pairs per row leave the device. A row
// holding NaN gives NaN probabilities and the first k indices, as the CPU reference ranks them.
// Launch with blockDim.x a power of two and cols * 4 + blockDim.x * 8 bytes of shared memory.
extern "C" __global__ void siesta_softmax_top_k(const float* __restrict__ logits, int cols, int k,
                                                int* __restrict__ out_index,
                                                float* __restrict__ out_score) {
    extern __shared__ float shared[];
    float* p = shared;
    float* red_v = shared + cols;
    int* red_i = (int*)(red_v + blockDim.x);
    const float* row = logits + (long long)blockIdx.x * cols;
    int t = threadIdx.x;

    float m = -INFINITY;
    int nan = 0;
    for (int j = t; j < cols; j += blockDim.x) {
        float v = row[j];
        p[j] = v;
        if (isnan(v)) nan = 1;
        m = fmaxf(m, v);
    }
    red_v[t] = m;
    red_i[t] = nan;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) {
            red_v[t] = fmaxf(red_v[t], red_v[t + s]);
            red_i[t] |= red_i[t + s];
        }
        __syncthreads();
    }
    m = red_v[0];
    int any_nan = red_i[0];
    __syncthreads();
    if (any_nan) {
        for (int j = t; j < k; j += blockDim.x) {
            out_index[blockIdx.x * k + j] = j;
            out_score[blockIdx.x * k + j] = NAN;
        }
        return;
    }
    float sum = 0.0f;
    for (int j = t; j < cols; j += blockDim.x) {
        float e = expf(p[j] - m);
        p[j] = e;
        sum += e;
    }
    red_v[t] = sum;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) red_v[t] += red_v[t + s];
        __syncthreads();
    }
    float total = red_v[0];
    __syncthreads();
    for (int j = t; j < cols; j += blockDim.x) p[j] = p[j] / total;
    __syncthreads();

    for (int round = 0; round < k; round++) {
        float best = -1.0f;
        int bi = 0x7fffffff;
        for (int j = t; j < cols; j += blockDim.x) {
            if (p[j] >= 0.0f && better(p[j], j, best, bi)) {
                best = p[j];
                bi = j;
            }
        }
        red_v[t] = best;
        red_i[t] = bi;
        __syncthreads();
        for (int s = blockDim.x / 2; s > 0; s >>= 1) {
            if (t < s && better(red_v[t + s], red_i[t + s], red_v[t], red_i[t])) {
                red_v[t] = red_v[t + s];
                red_i[t] = red_i[t + s];
            }
            __syncthreads();
        }
        if (t == 0) {
            out_index[blockIdx.x * k + round] = red_i[0];
            out_score[blockIdx.x * k + round] = red_v[0];
            p[red_i[0]] = -1.0f;
        }
        __syncthreads();
    }
}
