// Per-row log-probability of a chosen token and per-row entropy of softmax(logits * inv_temp), for
// RLHF (PPO / DPO / GRPO). logits: (rows, V) contiguous, ids: (rows) u32.
//   z = x * inv_temp,  lse = log sum exp z,  logp = z[id] - lse,  H = lse - sum_c softmax(z)_c z_c
// Backward for upstream per-row gradients dlogp and dentropy (either nullable = 0):
//   p = softmax(z);  dz_c = dlogp * ([c == id] - p_c) - dentropy * p_c * (log p_c + H);  dx = inv_temp * dz
// Ids >= V are invalid: logp is written as 0 and contributes no gradient (the entropy still counts).
//
// One block per row (grid-stride over rows, grid.x = min(rows, 65535)); blockDim.x a multiple of 32,
// at most 1024 (suggested 1024 for V ~ 50k). dlogits may alias logits. No f32 logits are materialised.
#include "common.cuh"

// logp, entropy, lse: (rows) f32, each nullable (ids may be null when logp is). The backward needs lse
// (and entropy when dentropy is given).
template <typename T>
__device__ __forceinline__ void logprob_fwd(const T* __restrict__ logits, const uint32_t* __restrict__ ids,
                                            float* __restrict__ logp, float* __restrict__ entropy,
                                            float* __restrict__ lse, int rows, int V, float inv_temp) {
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
                for (int j = 0; j < 8; ++j) softmax_push(st, v[j] * inv_temp);
            }
        } else {
            for (int c = threadIdx.x; c < V; c += blockDim.x) softmax_push(st, to_f32(x[c]) * inv_temp);
        }
        st = block_softmax(st, scratch);
        if (threadIdx.x == 0) {
            const float l = st.m + logf(st.s);
            if (lse) lse[r] = l;
            if (entropy) entropy[r] = l - st.t / st.s;
            if (logp) {
                const uint32_t id = ids[r];
                logp[r] = id < (uint32_t)V ? to_f32(x[id]) * inv_temp - l : 0.0f;
            }
        }
    }
}

template <typename T>
__device__ __forceinline__ void logprob_bwd(const T* logits, const uint32_t* __restrict__ ids,
                                            const float* __restrict__ lse, const float* __restrict__ entropy,
                                            const float* __restrict__ dlogp, const float* __restrict__ dentropy,
                                            T* dlogits, int rows, int V, float inv_temp) {
    const bool vec = vec8_ok(logits, V) && aligned16(dlogits);
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const long long off = (long long)r * V;
        const uint32_t id = ids ? ids[r] : 0xffffffffu;
        const float gl = (dlogp && id < (uint32_t)V) ? dlogp[r] : 0.0f;
        const float gh = dentropy ? dentropy[r] : 0.0f;
        const float l = lse[r];
        const float h = dentropy ? entropy[r] : 0.0f;
        if (vec) {
            for (int c = threadIdx.x * 8; c < V; c += blockDim.x * 8) {
                float v[8];
                load8(logits + off + c, v);
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const float lp = v[j] * inv_temp - l;
                    const float p = __expf(lp);
                    const float onehot = (uint32_t)(c + j) == id ? 1.0f : 0.0f;
                    v[j] = inv_temp * (gl * (onehot - p) - gh * p * (lp + h));
                }
                store8(dlogits + off + c, v);
            }
        } else {
            for (int c = threadIdx.x; c < V; c += blockDim.x) {
                const float lp = to_f32(logits[off + c]) * inv_temp - l;
                const float p = __expf(lp);
                const float onehot = (uint32_t)c == id ? 1.0f : 0.0f;
                dlogits[off + c] = from_f32<T>(inv_temp * (gl * (onehot - p) - gh * p * (lp + h)));
            }
        }
    }
}

extern "C" __global__ void logprob_fwd_bf16(const bf16* logits, const uint32_t* ids, float* logp, float* entropy,
                                            float* lse, int rows, int V, float inv_temp) {
    logprob_fwd<bf16>(logits, ids, logp, entropy, lse, rows, V, inv_temp);
}
extern "C" __global__ void logprob_fwd_f32(const float* logits, const uint32_t* ids, float* logp, float* entropy,
                                           float* lse, int rows, int V, float inv_temp) {
    logprob_fwd<float>(logits, ids, logp, entropy, lse, rows, V, inv_temp);
}
extern "C" __global__ void logprob_bwd_bf16(const bf16* logits, const uint32_t* ids, const float* lse,
                                            const float* entropy, const float* dlogp, const float* dentropy,
                                            bf16* dlogits, int rows, int V, float inv_temp) {
    logprob_bwd<bf16>(logits, ids, lse, entropy, dlogp, dentropy, dlogits, rows, V, inv_temp);
}
extern "C" __global__ void logprob_bwd_f32(const float* logits, const uint32_t* ids, const float* lse,
                                           const float* entropy, const float* dlogp, const float* dentropy,
                                           float* dlogits, int rows, int V, float inv_temp) {
    logprob_bwd<float>(logits, ids, lse, entropy, dlogp, dentropy, dlogits, rows, V, inv_temp);
}
