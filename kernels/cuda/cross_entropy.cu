// Fused cross-entropy over rows of logits (rows, V) with u32 targets (rows); target 0 (padding) and
// targets >= V are ignored (loss 0, gradient 0). Logits are read in their own dtype and widened to
// f32 in registers only: no f32 copy of the logits is ever written.
//
//   forward:  lse[r] = log sum_c exp(x[r, c]);  loss[r] = lse[r] - x[r, t_r]  (0 when ignored)
//   backward: dlogits[r, c] = (exp(x[r, c] - lse[r]) - [c == t_r]) * scale * (*dloss)   (0 rows when ignored)
// scale = 1 / num_valid from the host (mean over non-ignored targets); dloss (nullable = 1.0) is the
// upstream gradient of the mean loss, read on the device (no host sync). The mean loss itself is
// sum_r loss[r] * scale (reduce.cu sum_rows_fwd_f32 with rows = 1).
// For next-token loss on (b, n, V) logits use all b*n rows and set the target of every last position
// to 0, instead of slicing.
//
// One block per row (grid-stride over rows, grid.x = min(rows, 65535)); blockDim.x a multiple of 32,
// at most 1024 (suggested 1024 for V ~ 50k, 256 for V <= 4k). dlogits may alias logits.
// 8 elements per access when V % 8 == 0 and the pointers are 16-byte aligned.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void cross_entropy_fwd(const T* __restrict__ logits, const uint32_t* __restrict__ targets,
                                                  float* __restrict__ loss, float* __restrict__ lse, int rows,
                                                  int V) {
    __shared__ float scratch[96];
    const bool vec = vec8_ok(logits, V);
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* x = logits + (long long)r * V;
        SoftmaxState st = softmax_empty();
        if (vec) {
            for (int c = threadIdx.x * 8; c < V; c += blockDim.x * 8) {
                float v[8];
                load8(x + c, v);
#pragma unroll
                for (int j = 0; j < 8; ++j) softmax_push(st, v[j]);
            }
        } else {
            for (int c = threadIdx.x; c < V; c += blockDim.x) softmax_push(st, to_f32(x[c]));
        }
        st = block_softmax(st, scratch);
        if (threadIdx.x == 0) {
            const float l = st.m + logf(st.s);
            const uint32_t t = targets[r];
            if (lse) lse[r] = l;
            loss[r] = (t == 0 || t >= (uint32_t)V) ? 0.0f : l - to_f32(x[t]);
        }
    }
}

template <typename T>
__device__ __forceinline__ void cross_entropy_bwd(const T* logits, const uint32_t* __restrict__ targets,
                                                  const float* __restrict__ lse, T* dlogits, int rows, int V,
                                                  float scale, const float* __restrict__ dloss) {
    const float g = scale * (dloss ? *dloss : 1.0f);
    const bool vec = vec8_ok(logits, V) && aligned16(dlogits);
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const long long off = (long long)r * V;
        const uint32_t t = targets[r];
        const bool valid = t != 0 && t < (uint32_t)V;
        const float l = lse[r];
        if (vec) {
            for (int c = threadIdx.x * 8; c < V; c += blockDim.x * 8) {
                float v[8];
                load8(logits + off + c, v);
#pragma unroll
                for (int j = 0; j < 8; ++j)
                    v[j] = valid ? (__expf(v[j] - l) - ((uint32_t)(c + j) == t ? 1.0f : 0.0f)) * g : 0.0f;
                store8(dlogits + off + c, v);
            }
        } else {
            for (int c = threadIdx.x; c < V; c += blockDim.x) {
                const float v = to_f32(logits[off + c]);
                dlogits[off + c] =
                    from_f32<T>(valid ? (__expf(v - l) - ((uint32_t)c == t ? 1.0f : 0.0f)) * g : 0.0f);
            }
        }
    }
}

// lse may be null when no backward follows.
extern "C" __global__ void cross_entropy_fwd_bf16(const bf16* logits, const uint32_t* targets, float* loss, float* lse,
                                                  int rows, int V) {
    cross_entropy_fwd<bf16>(logits, targets, loss, lse, rows, V);
}
extern "C" __global__ void cross_entropy_fwd_f32(const float* logits, const uint32_t* targets, float* loss,
                                                 float* lse, int rows, int V) {
    cross_entropy_fwd<float>(logits, targets, loss, lse, rows, V);
}
extern "C" __global__ void cross_entropy_bwd_bf16(const bf16* logits, const uint32_t* targets, const float* lse,
                                                  bf16* dlogits, int rows, int V, float scale, const float* dloss) {
    cross_entropy_bwd<bf16>(logits, targets, lse, dlogits, rows, V, scale, dloss);
}
extern "C" __global__ void cross_entropy_bwd_f32(const float* logits, const uint32_t* targets, const float* lse,
                                                 float* dlogits, int rows, int V, float scale, const float* dloss) {
    cross_entropy_bwd<float>(logits, targets, lse, dlogits, rows, V, scale, dloss);
}
