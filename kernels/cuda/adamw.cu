// Mixed-precision AdamW (decoupled weight decay, torch.optim.AdamW semantics):
//   g  = grad * grad_scale * clip,  clip = min(1, max_norm / (sqrt(*clip_sumsq) + 1e-6)) or 1
//   m  = beta1 * m + (1 - beta1) * g
//   v  = beta2 * v + (1 - beta2) * g^2
//   p  = p * (1 - lr * wd) - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
//   p_bf16 = bf16(p)   (same pass, when the bf16 copy pointer is not null)
// with host-computed bias corrections bc1 = 1 - beta1^t, bc2 = 1 - beta2^t (t = 1 on the first step).
// Params, m, v are f32; the gradient is bf16 or f32 (the kernel suffix). `clip_sumsq` (nullable) is
// the device sum of squares of all gradients (reduce.cu sumsq_*), so clipping needs no host sync.
// Grid-stride: any grid (suggested block 256, grid ~ 4 * SMs), in-place on param / m / v.
#include "common.cuh"

struct AdamwArgs {
    float lr, beta1, beta2, eps, bc1, bc2, grad_scale;
};

__device__ __forceinline__ float clip_factor(const float* clip_sumsq, float max_norm) {
    if (clip_sumsq == nullptr) return 1.0f;
    return fminf(1.0f, max_norm / (sqrtf(*clip_sumsq) + 1e-6f));
}

template <typename G>
__device__ __forceinline__ void adamw_tensor(float* __restrict__ p, float* __restrict__ m, float* __restrict__ v,
                                             const G* __restrict__ grad, bf16* __restrict__ p_bf16, long long n,
                                             const AdamwArgs& a, float wd, float gscale) {
    const float decay = 1.0f - a.lr * wd;
    const float step = a.lr / a.bc1;
    const float inv_sqrt_bc2 = rsqrtf(a.bc2);
    GRID_STRIDE(i, n) {
        const float g = to_f32(grad[i]) * gscale;
        const float mi = fmaf(a.beta1, m[i], (1.0f - a.beta1) * g);
        const float vi = fmaf(a.beta2, v[i], (1.0f - a.beta2) * g * g);
        const float pi = p[i] * decay - step * mi / (sqrtf(vi) * inv_sqrt_bc2 + a.eps);
        m[i] = mi;
        v[i] = vi;
        p[i] = pi;
        if (p_bf16) p_bf16[i] = __float2bfloat16_rn(pi);
    }
}

// One launch updates num_tensors tensors. params/ms/vs/grads/sizes are device
// arrays of num_tensors entries; params_bf16 may be null (no copies) or hold null entries;
// weight_decays (device, per tensor) may be null, then `weight_decay` applies to all.
// Every block grid-strides through every tensor in order (suggested grid ~ 4 * SMs, block 256).
#define PALM_ADAMW_MULTI(NAME, G)                                                                        \
    extern "C" __global__ void NAME(float* const* params, float* const* ms, float* const* vs,             \
                                    const G* const* grads, bf16* const* params_bf16,                      \
                                    const long long* sizes, const float* weight_decays, int num_tensors,  \
                                    float lr, float beta1, float beta2, float eps, float weight_decay,    \
                                    float bc1, float bc2, float grad_scale, const float* clip_sumsq,      \
                                    float max_norm) {                                                    \
        const AdamwArgs a{lr, beta1, beta2, eps, bc1, bc2, grad_scale};                                  \
        const float gscale = grad_scale * clip_factor(clip_sumsq, max_norm);                             \
        for (int t = 0; t < num_tensors; ++t) {                                                          \
            const float wd = weight_decays ? weight_decays[t] : weight_decay;                            \
            adamw_tensor<G>(params[t], ms[t], vs[t], grads[t], params_bf16 ? params_bf16[t] : nullptr,   \
                            sizes[t], a, wd, gscale);                                                    \
        }                                                                                                \
    }
PALM_ADAMW_MULTI(adamw_multi_fwd_bf16, bf16)
PALM_ADAMW_MULTI(adamw_multi_fwd_f32, float)
