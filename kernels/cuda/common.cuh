// Shared helpers for every kernel family. Included by each <family>.cu; its bytes are part of every
// family's source hash, so edits here make every PTX stale (regenerate with kernels/gen-ptx).
//
// Conventions (see kernels/README.md):
//   - tensors are contiguous row-major unless a kernel takes explicit strides;
//   - activations / weight copies / gradients are bf16, master weights / moments / losses f32;
//   - every reduction and matmul accumulates in f32;
//   - dims are `int`, total element counts and batch strides `long long`;
//   - reductions assume blockDim.x is a multiple of 32 and at most 1024.
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;
typedef __nv_bfloat162 bf162;

#define PALM_INF __int_as_float(0x7f800000)
#define PALM_LOG2E 1.4426950408889634f
#define PALM_LN2 0.6931471805599453f

// ---------------------------------------------------------------- conversions

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }

// Packs two floats into a bf16x2 register (lo in the low half), round-to-nearest-even.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    bf162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// Grid-stride loop over [0, n) with a 64-bit index.
#define GRID_STRIDE(i, n)                                                                       \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);               \
         i += (long long)gridDim.x * blockDim.x)

// ---------------------------------------------------------------- warp / block reductions

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide sum; every thread gets the result. `scratch` holds >= 32 floats of shared memory.
// Must be called by all threads of the block (it synchronises twice).
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : -PALM_INF;
    return warp_max(v);
}

// Online-softmax state: running max m and sum s = sum exp(x - m) (s = 0, m = -inf when empty).
// The optional t = sum exp(x - m) * x is used for the entropy.
struct SoftmaxState {
    float m, s, t;
};

__device__ __forceinline__ SoftmaxState softmax_empty() { return {-PALM_INF, 0.0f, 0.0f}; }

__device__ __forceinline__ void softmax_push(SoftmaxState& st, float x) {
    if (x == -PALM_INF) return;  // masked entry: contributes nothing
    if (x > st.m) {
        // exp(-inf) = 0 takes care of the empty state
        float c = exp2f((st.m - x) * PALM_LOG2E);
        st.s = st.s * c + 1.0f;
        st.t = st.t * c + x;
        st.m = x;
    } else {
        float e = exp2f((x - st.m) * PALM_LOG2E);
        st.s += e;
        st.t += e * x;
    }
}

__device__ __forceinline__ SoftmaxState softmax_merge(SoftmaxState a, SoftmaxState b) {
    float m = fmaxf(a.m, b.m);
    if (m == -PALM_INF) return a;
    float ca = exp2f((a.m - m) * PALM_LOG2E), cb = exp2f((b.m - m) * PALM_LOG2E);
    return {m, a.s * ca + b.s * cb, a.t * ca + b.t * cb};
}

__device__ __forceinline__ SoftmaxState warp_softmax(SoftmaxState st) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        SoftmaxState other;
        other.m = __shfl_xor_sync(0xffffffffu, st.m, o);
        other.s = __shfl_xor_sync(0xffffffffu, st.s, o);
        other.t = __shfl_xor_sync(0xffffffffu, st.t, o);
        st = softmax_merge(st, other);
    }
    return st;
}

// Block-wide online-softmax merge; every thread gets the result. `scratch` holds >= 96 floats.
__device__ __forceinline__ SoftmaxState block_softmax(SoftmaxState st, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    st = warp_softmax(st);
    __syncthreads();
    if (lane == 0) {
        scratch[warp] = st.m;
        scratch[32 + warp] = st.s;
        scratch[64 + warp] = st.t;
    }
    __syncthreads();
    st = lane < nwarps ? SoftmaxState{scratch[lane], scratch[32 + lane], scratch[64 + lane]}
                       : softmax_empty();
    return warp_softmax(st);
}

// ---------------------------------------------------------------- vector loads of 8 bf16

// Loads 8 consecutive elements starting at p (16-byte aligned for bf16, 32-byte for f32)
// and widens them to f32.
__device__ __forceinline__ void load8(const bf16* p, float (&out)[8]) {
    uint4 raw = *reinterpret_cast<const uint4*>(p);
    const bf162* h = reinterpret_cast<const bf162*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float2 f = __bfloat1622float2(h[i]);
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
    }
}
__device__ __forceinline__ void load8(const float* p, float (&out)[8]) {
    float4 a = reinterpret_cast<const float4*>(p)[0];
    float4 b = reinterpret_cast<const float4*>(p)[1];
    out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
    out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
}
__device__ __forceinline__ void store8(bf16* p, const float (&v)[8]) {
    uint4 raw;
    raw.x = pack_bf16x2(v[0], v[1]);
    raw.y = pack_bf16x2(v[2], v[3]);
    raw.z = pack_bf16x2(v[4], v[5]);
    raw.w = pack_bf16x2(v[6], v[7]);
    *reinterpret_cast<uint4*>(p) = raw;
}
__device__ __forceinline__ void store8(float* p, const float (&v)[8]) {
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// True when rows of `cols` elements starting at p can all be read 8 at a time (load8 / store8).
__device__ __forceinline__ bool vec8_ok(const void* p, long long cols) { return (cols % 8 == 0) && aligned16(p); }

// ---------------------------------------------------------------- counter-based RNG (Philox4x32-10)

struct Philox4 {
    uint32_t x, y, z, w;
};

__device__ __forceinline__ Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        uint32_t hi0 = __umulhi(0xD2511F53u, ctr.x), lo0 = 0xD2511F53u * ctr.x;
        uint32_t hi1 = __umulhi(0xCD9E8D57u, ctr.z), lo1 = 0xCD9E8D57u * ctr.z;
        ctr = {hi1 ^ ctr.y ^ k0, lo1, hi0 ^ ctr.w ^ k1, lo0};
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return ctr;
}

// Uniform float in [0, 1) from the top 24 bits.
__device__ __forceinline__ float u32_to_unit(uint32_t x) { return (float)(x >> 8) * (1.0f / 16777216.0f); }

// Order-preserving map f32 -> u32 (larger float <=> larger key; -0 < +0).
__device__ __forceinline__ uint32_t f32_key(float f) {
    uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// ---------------------------------------------------------------- tensor-core / async-copy PTX

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy global -> shared; copies `src_bytes` (0..16) and zero-fills the rest.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// D = A(16x16, row) * B(16x8, col) + D with bf16 inputs and f32 accumulators.
// Fragments (lane l, g = l/4, q = l%4): a0,a1 -> A[g][2q..], a2,a3 -> A[g+8][2q..],
// a4,a5 -> A[g][8+2q..], a6,a7 -> A[g+8][8+2q..] (two bf16 per register);
// b0,b1 -> B[2q..][g], b2,b3 -> B[8+2q..][g]; d0,d1 -> D[g][2q..], d2,d3 -> D[g+8][2q..].
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
