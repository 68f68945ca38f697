// Rotary position embedding with xPos scaling, half-split rotation (not interleaved):
//   rot(u) = cat(-u[dh/2:], u[:dh/2])
//   out    = (u * cos[p] + rot(u) * sin[p]) * scale[p]^scale_sign
// on x: (rows, dh) contiguous, where row r has position p(r) = (r / heads_per_pos) % n + offset.
//   q in (b, n, h, dh) layout: heads_per_pos = h;  q in (b, h, n, dh) or k in (b, n, dh): 1.
// cos, sin, scale: (n_pos, dh) f32 tables from the host (p(r) < n_pos is the caller's duty);
// scale may be null (plain RoPE). scale_sign: +1 for q (multiply), -1 for k (divide), 0 = no scale.
// The backward is the transpose: dx = R^T (dout * scale^sign).
// Grid-stride over rows * dh/2 rotation pairs (any grid, suggested block 256); dh must be even.
// out may alias x (in place).
#include "common.cuh"

__device__ __forceinline__ float rope_scale(const float* scale, long long idx, int sign) {
    if (scale == nullptr || sign == 0) return 1.0f;
    const float s = scale[idx];
    return sign > 0 ? s : 1.0f / s;
}

template <typename T, bool BWD>
__device__ __forceinline__ void rope(const T* x, T* out, const float* __restrict__ cos_t,
                                     const float* __restrict__ sin_t, const float* __restrict__ scale, int rows,
                                     int dh, int heads_per_pos, int n, int offset, int scale_sign) {
    const int half = dh / 2;
    const long long pairs = (long long)rows * half;
    GRID_STRIDE(i, pairs) {
        const int r = (int)(i / half), j = (int)(i % half);
        const int pos = (r / heads_per_pos) % n + offset;
        const long long t = (long long)pos * dh;
        const long long e = (long long)r * dh;
        const float c1 = cos_t[t + j], c2 = cos_t[t + j + half];
        const float s1 = sin_t[t + j], s2 = sin_t[t + j + half];
        const float k1 = rope_scale(scale, t + j, scale_sign), k2 = rope_scale(scale, t + j + half, scale_sign);
        const float u1 = to_f32(x[e + j]), u2 = to_f32(x[e + j + half]);
        float o1, o2;
        if (!BWD) {
            o1 = (u1 * c1 - u2 * s1) * k1;
            o2 = (u2 * c2 + u1 * s2) * k2;
        } else {
            const float a1 = u1 * k1, a2 = u2 * k2;  // u = dout here
            o1 = a1 * c1 + a2 * s2;
            o2 = a2 * c2 - a1 * s1;
        }
        out[e + j] = from_f32<T>(o1);
        out[e + j + half] = from_f32<T>(o2);
    }
}

#define PALM_ROPE(NAME, T, BWD)                                                                          \
    extern "C" __global__ void NAME(const T* x, T* out, const float* cos_t, const float* sin_t,            \
                                    const float* scale, int rows, int dh, int heads_per_pos, int n,       \
                                    int offset, int scale_sign) {                                        \
        rope<T, BWD>(x, out, cos_t, sin_t, scale, rows, dh, heads_per_pos, n, offset, scale_sign);       \
    }
// forward: x = u, out = rotated;  backward: x = dout, out = dx
PALM_ROPE(rope_fwd_bf16, bf16, false)
PALM_ROPE(rope_fwd_f32, float, false)
PALM_ROPE(rope_bwd_bf16, bf16, true)
PALM_ROPE(rope_bwd_f32, float, true)
