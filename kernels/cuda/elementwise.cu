// Elementwise kernels: binary arithmetic, max/min and comparison, affine, unary maps, casts, fill, strided copies.
//
// All are grid-stride loops over `n` elements: any grid and block shape works
// (suggested: block 256, grid min(ceil(n / 256), 132 * 16)). Same-shape contiguous operands;
// `out` may alias an input. When every pointer is 16-byte aligned the kernels move 8 elements per
// access, otherwise one.
#include "common.cuh"

// ---------------------------------------------------------------- generic drivers

template <typename T, typename Op>
__device__ __forceinline__ void unary_map(const T* x, T* out, long long n, Op op) {
    if (aligned16(x) && aligned16(out)) {
        const long long nv = n / 8;
        GRID_STRIDE(i, nv) {
            float v[8];
            load8(x + 8 * i, v);
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] = op(v[j]);
            store8(out + 8 * i, v);
        }
        GRID_STRIDE(i, n - nv * 8) {
            const long long k = nv * 8 + i;
            out[k] = from_f32<T>(op(to_f32(x[k])));
        }
    } else {
        GRID_STRIDE(i, n) { out[i] = from_f32<T>(op(to_f32(x[i]))); }
    }
}

template <typename T, typename Op>
__device__ __forceinline__ void binary_map(const T* a, const T* b, T* out, long long n, Op op) {
    if (aligned16(a) && aligned16(b) && aligned16(out)) {
        const long long nv = n / 8;
        GRID_STRIDE(i, nv) {
            float va[8], vb[8];
            load8(a + 8 * i, va);
            load8(b + 8 * i, vb);
#pragma unroll
            for (int j = 0; j < 8; ++j) va[j] = op(va[j], vb[j]);
            store8(out + 8 * i, va);
        }
        GRID_STRIDE(i, n - nv * 8) {
            const long long k = nv * 8 + i;
            out[k] = from_f32<T>(op(to_f32(a[k]), to_f32(b[k])));
        }
    } else {
        GRID_STRIDE(i, n) { out[i] = from_f32<T>(op(to_f32(a[i]), to_f32(b[i]))); }
    }
}

struct AddOp { __device__ float operator()(float a, float b) const { return a + b; } };
struct SubOp { __device__ float operator()(float a, float b) const { return a - b; } };
struct MulOp { __device__ float operator()(float a, float b) const { return a * b; } };
struct DivOp { __device__ float operator()(float a, float b) const { return a / b; } };
// max/min propagate NaN (like torch.maximum): when neither comparison holds, a + b is NaN.
struct MaxOp {
    __device__ float operator()(float a, float b) const { return a >= b ? a : (b > a ? b : a + b); }
};
struct MinOp {
    __device__ float operator()(float a, float b) const { return a <= b ? a : (b < a ? b : a + b); }
};
// 1 where a >= b, else 0 (NaN compares false): a mask, never differentiated.
struct GeOp { __device__ float operator()(float a, float b) const { return a >= b ? 1.0f : 0.0f; } };
struct LogOp { __device__ float operator()(float a) const { return logf(a); } };
struct SqrOp { __device__ float operator()(float a) const { return a * a; } };
struct SqrtOp { __device__ float operator()(float a) const { return sqrtf(a); } };
struct SigmoidOp { __device__ float operator()(float a) const { return 1.0f / (1.0f + expf(-a)); } };
struct TanhOp { __device__ float operator()(float a) const { return tanhf(a); } };
struct NegOp { __device__ float operator()(float a) const { return -a; } };
struct ExpOp { __device__ float operator()(float a) const { return expf(a); } };
struct SiluOp {
    __device__ float operator()(float a) const { return a / (1.0f + expf(-a)); }
};
struct AffineOp {
    float scale, bias;
    __device__ float operator()(float a) const { return fmaf(a, scale, bias); }
};

// ---------------------------------------------------------------- kernels

#define PALM_BINARY(NAME, T, OP)                                                                  \
    extern "C" __global__ void NAME(const T* a, const T* b, T* out, long long n) {                \
        binary_map<T>(a, b, out, n, OP());                                                        \
    }
#define PALM_UNARY(NAME, T, OP)                                                                   \
    extern "C" __global__ void NAME(const T* x, T* out, long long n) { unary_map<T>(x, out, n, OP()); }

// out = a + b, a - b, a * b
PALM_BINARY(add_fwd_bf16, bf16, AddOp)
PALM_BINARY(add_fwd_f32, float, AddOp)
PALM_BINARY(sub_fwd_bf16, bf16, SubOp)
PALM_BINARY(sub_fwd_f32, float, SubOp)
PALM_BINARY(mul_fwd_bf16, bf16, MulOp)
PALM_BINARY(mul_fwd_f32, float, MulOp)
PALM_BINARY(div_fwd_bf16, bf16, DivOp)
PALM_BINARY(div_fwd_f32, float, DivOp)
// out = max(a, b), min(a, b), (a >= b ? 1 : 0)
PALM_BINARY(max_fwd_bf16, bf16, MaxOp)
PALM_BINARY(max_fwd_f32, float, MaxOp)
PALM_BINARY(min_fwd_bf16, bf16, MinOp)
PALM_BINARY(min_fwd_f32, float, MinOp)
PALM_BINARY(ge_fwd_bf16, bf16, GeOp)
PALM_BINARY(ge_fwd_f32, float, GeOp)

// out = x * scale + bias   (backward: dx = affine(g, scale, 0))
extern "C" __global__ void affine_fwd_bf16(const bf16* x, bf16* out, long long n, float scale, float bias) {
    unary_map<bf16>(x, out, n, AffineOp{scale, bias});
}
extern "C" __global__ void affine_fwd_f32(const float* x, float* out, long long n, float scale, float bias) {
    unary_map<float>(x, out, n, AffineOp{scale, bias});
}

// out = -x
PALM_UNARY(neg_fwd_bf16, bf16, NegOp)
PALM_UNARY(neg_fwd_f32, float, NegOp)

// out = log x, x², √x, σ(x), tanh x (backwards are composed from the binary kernels)
PALM_UNARY(log_fwd_bf16, bf16, LogOp)
PALM_UNARY(log_fwd_f32, float, LogOp)
PALM_UNARY(sqr_fwd_bf16, bf16, SqrOp)
PALM_UNARY(sqr_fwd_f32, float, SqrOp)
PALM_UNARY(sqrt_fwd_bf16, bf16, SqrtOp)
PALM_UNARY(sqrt_fwd_f32, float, SqrtOp)
PALM_UNARY(sigmoid_fwd_bf16, bf16, SigmoidOp)
PALM_UNARY(sigmoid_fwd_f32, float, SigmoidOp)
PALM_UNARY(tanh_fwd_bf16, bf16, TanhOp)
PALM_UNARY(tanh_fwd_f32, float, TanhOp)

// out = exp(x), x * sigmoid(x) (backwards are composed from the binary kernels)
PALM_UNARY(exp_fwd_bf16, bf16, ExpOp)
PALM_UNARY(exp_fwd_f32, float, ExpOp)
PALM_UNARY(silu_fwd_bf16, bf16, SiluOp)
PALM_UNARY(silu_fwd_f32, float, SiluOp)

// ---------------------------------------------------------------- casts (suffix = input dtype)

// out (bf16) = round-to-nearest-even(x (f32))
extern "C" __global__ void to_bf16_fwd_f32(const float* x, bf16* out, long long n) {
    if (aligned16(x) && aligned16(out)) {
        const long long nv = n / 8;
        GRID_STRIDE(i, nv) {
            float v[8];
            load8(x + 8 * i, v);
            store8(out + 8 * i, v);
        }
        GRID_STRIDE(i, n - nv * 8) { out[nv * 8 + i] = __float2bfloat16_rn(x[nv * 8 + i]); }
    } else {
        GRID_STRIDE(i, n) { out[i] = __float2bfloat16_rn(x[i]); }
    }
}

// out (f32) = x (bf16), exact
extern "C" __global__ void to_f32_fwd_bf16(const bf16* x, float* out, long long n) {
    if (aligned16(x) && aligned16(out)) {
        const long long nv = n / 8;
        GRID_STRIDE(i, nv) {
            float v[8];
            load8(x + 8 * i, v);
            store8(out + 8 * i, v);
        }
        GRID_STRIDE(i, n - nv * 8) { out[nv * 8 + i] = __bfloat162float(x[nv * 8 + i]); }
    } else {
        GRID_STRIDE(i, n) { out[i] = __bfloat162float(x[i]); }
    }
}

// ---------------------------------------------------------------- fill

extern "C" __global__ void fill_fwd_f32(float* out, long long n, float value) {
    GRID_STRIDE(i, n) { out[i] = value; }
}
// value is given as f32 and rounded to bf16
extern "C" __global__ void fill_fwd_bf16(bf16* out, long long n, float value) {
    const bf16 v = __float2bfloat16_rn(value);
    GRID_STRIDE(i, n) { out[i] = v; }
}
extern "C" __global__ void fill_fwd_u32(uint32_t* out, long long n, uint32_t value) {
    GRID_STRIDE(i, n) { out[i] = value; }
}

// ---------------------------------------------------------------- strided view -> contiguous

// dst[i0, i1, i2, i3] = src[offset + i0*s0 + i1*s1 + i2*s2 + i3*s3] for a rank <= 4 view with
// dims d0..d3 (pad lower ranks on the left with dim 1 / stride 0), strides in elements (may be 0 for
// broadcast; negative strides are fine), n = d0*d1*d2*d3.
template <typename T>
__device__ __forceinline__ void copy_strided(const T* src, T* dst, long long n, int d1, int d2, int d3,
                                             long long s0, long long s1, long long s2, long long s3,
                                             long long offset) {
    GRID_STRIDE(i, n) {
        long long r = i;
        const long long i3 = r % d3;
        r /= d3;
        const long long i2 = r % d2;
        r /= d2;
        const long long i1 = r % d1;
        const long long i0 = r / d1;
        dst[i] = src[offset + i0 * s0 + i1 * s1 + i2 * s2 + i3 * s3];
    }
}

#define PALM_COPY(NAME, T)                                                                        \
    extern "C" __global__ void NAME(const T* src, T* dst, long long n, int d0, int d1, int d2, int d3, \
                                    long long s0, long long s1, long long s2, long long s3,       \
                                    long long offset) {                                           \
        (void)d0;                                                                                 \
        copy_strided<T>(src, dst, n, d1, d2, d3, s0, s1, s2, s3, offset);                         \
    }
PALM_COPY(copy_strided_fwd_bf16, bf16)
PALM_COPY(copy_strided_fwd_f32, float)
PALM_COPY(copy_strided_fwd_u32, uint32_t)

// ---------------------------------------------------------------- strided view -> strided view

// dst[doff + i0*t0 + i1*t1 + i2*t2 + i3*t3] = src[soff + i0*s0 + ...] over dims d0..d3 (rank <= 4,
// padded on the left with dim 1): writes into a view of a larger tensor (a slice of a
// concatenation, a KV-cache slot). The destination view must not overlap itself.
template <typename T>
__device__ __forceinline__ void copy_into(const T* src, T* dst, long long n, int d1, int d2, int d3,
                                          long long s0, long long s1, long long s2, long long s3,
                                          long long soff, long long t0, long long t1, long long t2,
                                          long long t3, long long doff) {
    GRID_STRIDE(i, n) {
        long long r = i;
        const long long i3 = r % d3;
        r /= d3;
        const long long i2 = r % d2;
        r /= d2;
        const long long i1 = r % d1;
        const long long i0 = r / d1;
        dst[doff + i0 * t0 + i1 * t1 + i2 * t2 + i3 * t3] =
            src[soff + i0 * s0 + i1 * s1 + i2 * s2 + i3 * s3];
    }
}

#define PALM_COPY_INTO(NAME, T)                                                                   \
    extern "C" __global__ void NAME(const T* src, T* dst, long long n, int d0, int d1, int d2, int d3, \
                                    long long s0, long long s1, long long s2, long long s3,       \
                                    long long soff, long long t0, long long t1, long long t2,     \
                                    long long t3, long long doff) {                               \
        (void)d0;                                                                                 \
        copy_into<T>(src, dst, n, d1, d2, d3, s0, s1, s2, s3, soff, t0, t1, t2, t3, doff);        \
    }
PALM_COPY_INTO(copy_into_fwd_bf16, bf16)
PALM_COPY_INTO(copy_into_fwd_f32, float)
PALM_COPY_INTO(copy_into_fwd_u32, uint32_t)
