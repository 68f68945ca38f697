// Gain-only LayerNorm (PaLM): y = (x - mean) * rstd * (gamma + 1), rstd = 1/sqrt(var_biased + eps).
//
// x, y, dy, dx: (rows, cols) contiguous; gamma: (cols) in the activation dtype; mean, rstd: (rows) f32.
// One block per row with a grid-stride loop over rows; blockDim.x a multiple of 32, at most 1024
// (suggested 128 for cols <= 1024, 256 above). Statistics are computed in f32 with two passes
// (mean, then the centred sum of squares), so no catastrophic cancellation.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void layernorm_fwd(const T* __restrict__ x, const T* __restrict__ gamma, T* __restrict__ y,
                                              float* __restrict__ mean, float* __restrict__ rstd, int rows, int cols,
                                              float eps) {
    __shared__ float scratch[32];
    const bool vec = vec8_ok(x, cols) && vec8_ok(y, cols) && vec8_ok(gamma, cols);
    const int step = blockDim.x * 8;
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + (long long)r * cols;
        T* yr = y + (long long)r * cols;
        float s = 0.0f;
        if (vec) {
            for (int c = threadIdx.x * 8; c < cols; c += step) {
                float v[8];
                load8(xr + c, v);
#pragma unroll
                for (int j = 0; j < 8; ++j) s += v[j];
            }
        } else {
            for (int c = threadIdx.x; c < cols; c += blockDim.x) s += to_f32(xr[c]);
        }
        const float mu = block_sum(s, scratch) / cols;
        float ss = 0.0f;
        if (vec) {
            for (int c = threadIdx.x * 8; c < cols; c += step) {
                float v[8];
                load8(xr + c, v);
#pragma unroll
                for (int j = 0; j < 8; ++j) ss = fmaf(v[j] - mu, v[j] - mu, ss);
            }
        } else {
            for (int c = threadIdx.x; c < cols; c += blockDim.x) {
                const float d = to_f32(xr[c]) - mu;
                ss = fmaf(d, d, ss);
            }
        }
        const float rs = rsqrtf(block_sum(ss, scratch) / cols + eps);
        if (vec) {
            for (int c = threadIdx.x * 8; c < cols; c += step) {
                float v[8], g[8];
                load8(xr + c, v);
                load8(gamma + c, g);
#pragma unroll
                for (int j = 0; j < 8; ++j) v[j] = (v[j] - mu) * rs * (g[j] + 1.0f);
                store8(yr + c, v);
            }
        } else {
            for (int c = threadIdx.x; c < cols; c += blockDim.x)
                yr[c] = from_f32<T>((to_f32(xr[c]) - mu) * rs * (to_f32(gamma[c]) + 1.0f));
        }
        if (threadIdx.x == 0) {
            if (mean) mean[r] = mu;
            if (rstd) rstd[r] = rs;
        }
    }
}

// mean / rstd may be null (inference). eps is 1e-5 for PaLM.
extern "C" __global__ void layernorm_fwd_bf16(const bf16* x, const bf16* gamma, bf16* y, float* mean, float* rstd,
                                              int rows, int cols, float eps) {
    layernorm_fwd<bf16>(x, gamma, y, mean, rstd, rows, cols, eps);
}
extern "C" __global__ void layernorm_fwd_f32(const float* x, const float* gamma, float* y, float* mean, float* rstd,
                                             int rows, int cols, float eps) {
    layernorm_fwd<float>(x, gamma, y, mean, rstd, rows, cols, eps);
}

// Backward. With xhat = (x - mean) * rstd, g = gamma + 1, dxhat = dy * g:
//   dx = rstd * (dxhat - mean_c(dxhat) - xhat * mean_c(dxhat * xhat))
//   dgamma = sum_rows dy * xhat
// dgamma is produced in two steps without atomics (deterministic): each block accumulates the rows it
// handles into dynamic shared memory (cols * 4 bytes; launch with that much dynamic smem, or 0 when
// dgamma_partial is null) and writes dgamma_partial[blockIdx.x, :] (gridDim.x * cols f32); then
// layernorm_dgamma_bwd_f32 sums the gridDim.x partial rows. Use a fixed grid of about 2 blocks per SM
// (e.g. min(rows, 264)). cols <= 12288 keeps the smem within the default 48 KB.
template <typename T>
__device__ __forceinline__ void layernorm_bwd(const T* __restrict__ x, const T* __restrict__ gamma,
                                              const T* __restrict__ dy, const float* __restrict__ mean,
                                              const float* __restrict__ rstd, T* __restrict__ dx,
                                              float* __restrict__ dgamma_partial, int rows, int cols) {
    extern __shared__ float acc[];  // cols floats when dgamma_partial != null
    __shared__ float scratch[32];
    const bool want_dg = dgamma_partial != nullptr;
    if (want_dg)
        for (int c = threadIdx.x; c < cols; c += blockDim.x) acc[c] = 0.0f;
    // each column is only ever touched by the thread that zeroed it (same c loop in every pass)
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const long long off = (long long)r * cols;
        const float mu = mean[r], rs = rstd[r];
        float s1 = 0.0f, s2 = 0.0f;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            const float xh = (to_f32(x[off + c]) - mu) * rs;
            const float d = to_f32(dy[off + c]);
            const float dxh = d * (to_f32(gamma[c]) + 1.0f);
            s1 += dxh;
            s2 = fmaf(dxh, xh, s2);
            if (want_dg) acc[c] = fmaf(d, xh, acc[c]);
        }
        s1 = block_sum(s1, scratch) / cols;
        s2 = block_sum(s2, scratch) / cols;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            const float xh = (to_f32(x[off + c]) - mu) * rs;
            const float dxh = to_f32(dy[off + c]) * (to_f32(gamma[c]) + 1.0f);
            dx[off + c] = from_f32<T>(rs * (dxh - s1 - xh * s2));
        }
    }
    if (want_dg)
        for (int c = threadIdx.x; c < cols; c += blockDim.x)
            dgamma_partial[(long long)blockIdx.x * cols + c] = acc[c];
}

extern "C" __global__ void layernorm_bwd_bf16(const bf16* x, const bf16* gamma, const bf16* dy, const float* mean,
                                              const float* rstd, bf16* dx, float* dgamma_partial, int rows, int cols) {
    layernorm_bwd<bf16>(x, gamma, dy, mean, rstd, dx, dgamma_partial, rows, cols);
}
extern "C" __global__ void layernorm_bwd_f32(const float* x, const float* gamma, const float* dy, const float* mean,
                                             const float* rstd, float* dx, float* dgamma_partial, int rows, int cols) {
    layernorm_bwd<float>(x, gamma, dy, mean, rstd, dx, dgamma_partial, rows, cols);
}

// dgamma[c] = sum_{p < parts} partial[p, c]   (f32; one thread per column, grid.x = ceil(cols/blockDim))
extern "C" __global__ void layernorm_dgamma_bwd_f32(const float* __restrict__ partial, float* __restrict__ dgamma,
                                                    int parts, int cols) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float s = 0.0f;
    for (int p = 0; p < parts; ++p) s += partial[(long long)p * cols + c];
    dgamma[c] = s;
}
