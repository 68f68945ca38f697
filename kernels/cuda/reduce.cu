// Reductions with f32 accumulation: row sum / row max (reduce the last dim), column sum (reduce the
// first dim), and the global sum of squares used for the gradient norm.
#include "common.cuh"

// ---------------------------------------------------------------- row reductions

// out[r] = sum_c x[r, c]  /  max_c x[r, c]   (x: (rows, cols) contiguous, out: (rows))
// One block per row (grid-stride over rows, so any grid.x works; use grid.x = rows up to ~65k).
// blockDim.x: a multiple of 32, at most 1024 (e.g. 32 for cols <= 256, 256 or 1024 above).
// The max of an empty row is -inf; NaN inputs are ignored by the max.
template <typename T, bool MAX>
__device__ __forceinline__ void reduce_rows(const T* __restrict__ x, T* __restrict__ out, int rows, int cols) {
    __shared__ float scratch[32];
    const bool vec = vec8_ok(x, cols);
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* row = x + (long long)r * cols;
        float acc = MAX ? -PALM_INF : 0.0f;
        int c0 = 0;
        if (vec) {
            for (int c = threadIdx.x * 8; c < cols; c += blockDim.x * 8) {
                float v[8];
                load8(row + c, v);
#pragma unroll
                for (int j = 0; j < 8; ++j) acc = MAX ? fmaxf(acc, v[j]) : acc + v[j];
            }
            c0 = cols;
        }
        for (int c = c0 + threadIdx.x; c < cols; c += blockDim.x) {
            const float v = to_f32(row[c]);
            acc = MAX ? fmaxf(acc, v) : acc + v;
        }
        acc = MAX ? block_max(acc, scratch) : block_sum(acc, scratch);
        if (threadIdx.x == 0) out[r] = from_f32<T>(acc);
    }
}

extern "C" __global__ void sum_rows_fwd_f32(const float* x, float* out, int rows, int cols) {
    reduce_rows<float, false>(x, out, rows, cols);
}
extern "C" __global__ void max_rows_fwd_bf16(const bf16* x, bf16* out, int rows, int cols) {
    reduce_rows<bf16, true>(x, out, rows, cols);
}
extern "C" __global__ void max_rows_fwd_f32(const float* x, float* out, int rows, int cols) {
    reduce_rows<float, true>(x, out, rows, cols);
}

// ---------------------------------------------------------------- column sum

// out[c] = sum_r x[r, c] (sums run in f32: the engine widens bf16 inputs first); one thread per column, grid.x = ceil(cols / blockDim.x), any blockDim.
// Deterministic (rows summed in order). Meant for modest row counts (bias-like gradients,
// per-block partials); for huge row counts reduce in two steps.
template <typename T>
__device__ __forceinline__ void sum_cols(const T* __restrict__ x, T* __restrict__ out, int rows, int cols) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float acc = 0.0f;
    for (int r = 0; r < rows; ++r) acc += to_f32(x[(long long)r * cols + c]);
    out[c] = from_f32<T>(acc);
}
extern "C" __global__ void sum_cols_fwd_f32(const float* x, float* out, int rows, int cols) {
    sum_cols<float>(x, out, rows, cols);
}

// ---------------------------------------------------------------- sum of squares (grad norm)

template <typename T>
__device__ __forceinline__ float sumsq_partial(const T* __restrict__ x, long long n) {
    float acc = 0.0f;
    if (aligned16(x)) {
        const long long nv = n / 8;
        GRID_STRIDE(i, nv) {
            float v[8];
            load8(x + 8 * i, v);
#pragma unroll
            for (int j = 0; j < 8; ++j) acc = fmaf(v[j], v[j], acc);
        }
        GRID_STRIDE(i, n - nv * 8) {
            const float v = to_f32(x[nv * 8 + i]);
            acc = fmaf(v, v, acc);
        }
    } else {
        GRID_STRIDE(i, n) {
            const float v = to_f32(x[i]);
            acc = fmaf(v, v, acc);
        }
    }
    return acc;
}

// Sums of squares (the global gradient norm): tensors[t] (device array of device pointers) with sizes[t]
// elements, t < num_tensors. One f32 partial per block is added atomically (the order makes the last bits
// nondeterministic), into out[t] when per_tensor != 0, else everything into out[0].
// Grid: any, blockDim.x a multiple of 32 (suggested 256 x min(ceil(max size/2048), 2 x SMs)).
// Every block walks every tensor with a grid-stride loop; zero `out` first.
template <typename T>
__device__ __forceinline__ void sumsq_multi(const T* const* tensors, const long long* sizes, int num_tensors,
                                            float* out, int per_tensor) {
    __shared__ float scratch[32];
    for (int t = 0; t < num_tensors; ++t) {
        const long long n = sizes[t];
        if ((long long)blockIdx.x * blockDim.x >= n) continue;  // uniform across the block
        const float s = block_sum(sumsq_partial(tensors[t], n), scratch);
        if (threadIdx.x == 0 && s != 0.0f) atomicAdd(out + (per_tensor ? t : 0), s);
    }
}
extern "C" __global__ void sumsq_multi_fwd_bf16(const bf16* const* tensors, const long long* sizes, int num_tensors,
                                                float* out, int per_tensor) {
    sumsq_multi<bf16>(tensors, sizes, num_tensors, out, per_tensor);
}
extern "C" __global__ void sumsq_multi_fwd_f32(const float* const* tensors, const long long* sizes, int num_tensors,
                                               float* out, int per_tensor) {
    sumsq_multi<float>(tensors, sizes, num_tensors, out, per_tensor);
}
