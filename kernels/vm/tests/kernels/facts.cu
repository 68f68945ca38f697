// Correct kernels that pin down warp-level semantics for the PTX VM's tests. NOT shipped: not in
// palm_kernels::FAMILIES, not in the README ptxas table. kernels/gen-ptx compiles this file to
// facts.ptx next to it (same flags as the shipped kernels: -arch=sm_90a -O3 -std=c++17 -lineinfo;
// first line `// source-sha256: <sha256(facts.cu bytes)>`; self-contained, system headers only).
//
// Each kernel's comment gives its exact signature, launch shape and the expected result. A
// sanitizer should report nothing for any of them. Layout facts are the PTX-ISA ones; the
// non-.trans ldmatrix / mma.m16n8k16 layouts were measured on an H200 (2026-11-27).

#include <cuda_bf16.h>
#include <stdint.h>

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

// -------------------------------------------------------------------------------------- (a)
// mma_fragment_facts(const __nv_bfloat16* a, const __nv_bfloat16* bt, float* c)
// Launch: grid 1, block 32 (one warp). a: A, 16x16 row-major bf16; bt: Bᵀ, 8x16 row-major bf16
//   (bt[n*16 + k] = B[k][n]); c: C, 16x8 row-major f32, fully written.
// Both are copied to shared unpadded (A rows 32 B, Bᵀ rows 32 B). A is loaded with
//   ldmatrix.sync.aligned.m8n8.x4.shared.b16, lane l pointing at row l%16, column 8*(l/16);
//   Bᵀ with ldmatrix.sync.aligned.m8n8.x2.shared.b16, lane l pointing at row l%8, column
//   8*((l/8)%2) (lanes 16..31 give valid but unused addresses); then
//   mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 with C = 0. Lane l stores d0,d1 at
//   C[l/4][2(l%4)+{0,1}] and d2,d3 at C[l/4+8][2(l%4)+{0,1}].
// Expected: C = A·B exactly as an f32 product of the bf16 inputs (each output is a sum of 16
//   products; with small-integer inputs the result is exact).
extern "C" __global__ void mma_fragment_facts(const __nv_bfloat16* a, const __nv_bfloat16* bt,
                                              float* c) {
    __shared__ __align__(16) __nv_bfloat16 sA[16 * 16];
    __shared__ __align__(16) __nv_bfloat16 sBt[8 * 16];
    const unsigned lane = threadIdx.x;
#pragma unroll
    for (unsigned j = 0; j < 8; ++j) sA[lane + 32 * j] = a[lane + 32 * j];
#pragma unroll
    for (unsigned j = 0; j < 4; ++j) sBt[lane + 32 * j] = bt[lane + 32 * j];
    __syncwarp();

    uint32_t a0, a1, a2, a3, b0, b1;
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(a0), "=r"(a1), "=r"(a2), "=r"(a3)
                 : "r"(smem_addr(&sA[(lane % 16) * 16 + 8 * (lane / 16)]))
                 : "memory");
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(b0), "=r"(b1)
                 : "r"(smem_addr(&sBt[(lane % 8) * 16 + 8 * ((lane / 8) % 2)]))
                 : "memory");
    float d0, d1, d2, d3;
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d0), "=f"(d1), "=f"(d2), "=f"(d3)
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(0.0f), "f"(0.0f), "f"(0.0f),
          "f"(0.0f));
    const unsigned row = lane / 4, col = 2 * (lane % 4);
    c[row * 8 + col] = d0;
    c[row * 8 + col + 1] = d1;
    c[(row + 8) * 8 + col] = d2;
    c[(row + 8) * 8 + col + 1] = d3;
}

// -------------------------------------------------------------------------------------- (b)
// ldmatrix_trans_facts(const __nv_bfloat16* m, unsigned* out)
// Launch: grid 1, block 32 (one warp). m: M, 8x8 row-major b16 (any bit patterns; only moved);
//   out: 64 u32, fully written.
// M is copied to shared (rows 16 B); lane l points at row l%8 (lanes 8..31 give valid, unused
//   addresses). out[l] = the register of `ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16`,
//   out[32 + l] = the register of `ldmatrix.sync.aligned.m8n8.x1.shared.b16` (no .trans).
// Expected, t = lane, as (low 16 bits, high 16 bits):
//   .trans:    (M[2(t%4)][t/4],   M[2(t%4)+1][t/4])
//   no .trans: (M[t/4][2(t%4)],   M[t/4][2(t%4)+1])
extern "C" __global__ void ldmatrix_trans_facts(const __nv_bfloat16* m, unsigned* out) {
    __shared__ __align__(16) __nv_bfloat16 sM[8 * 8];
    const unsigned lane = threadIdx.x;
    sM[lane] = m[lane];
    sM[lane + 32] = m[lane + 32];
    __syncwarp();
    const uint32_t addr = smem_addr(&sM[(lane % 8) * 8]);
    uint32_t t, n;
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(t)
                 : "r"(addr)
                 : "memory");
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
                 : "=r"(n)
                 : "r"(addr)
                 : "memory");
    out[lane] = t;
    out[32 + lane] = n;
}

// -------------------------------------------------------------------------------------- (c)
// cp_async_zfill(const float* x, float* out, int valid_bytes)
// Launch: grid 1, block 32 (one warp). x: 128 floats, 16-B aligned; out: 128 floats, fully
//   written; valid_bytes in 0..16 (the same for every lane).
// Each lane issues `cp.async.cg.shared.global [s + 16l], [x + 16l], 16, valid_bytes;` (cp-size 16,
//   src-size = valid_bytes in a register), then cp.async.commit_group, cp.async.wait_group 0,
//   __syncwarp, and copies s[4l..4l+4) to out[4l..4l+4).
// Expected: within each lane's 16-B chunk, bytes [0, valid_bytes) are x's bytes and bytes
//   [valid_bytes, 16) are zero (so valid_bytes = 0 gives all zeros, 16 a plain copy; with
//   valid_bytes = 6, float 1 of each chunk keeps x's low 2 bytes and has zero high bytes). Only
//   the first valid_bytes of each source chunk are read.
extern "C" __global__ void cp_async_zfill(const float* x, float* out, int valid_bytes) {
    __shared__ __align__(16) float s[128];
    const unsigned lane = threadIdx.x;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(&s[4 * lane])),
                 "l"(x + 4 * lane), "r"(valid_bytes)
                 : "memory");
    asm volatile("cp.async.commit_group;\n" ::: "memory");
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    __syncwarp();
    *reinterpret_cast<float4*>(&out[4 * lane]) = *reinterpret_cast<const float4*>(&s[4 * lane]);
}

// -------------------------------------------------------------------------------------- (d)
// shfl_modes(const int* x, int* out)
// Launch: grid 1, block 32 (one warp). x: 32 ints; out: 160 ints, fully written. Full mask.
// Expected, l = lane, v = x:
//   out[  0 + l] = __shfl_up_sync(v, 3)         = l >= 3 ? v[l - 3] : v[l]
//   out[ 32 + l] = __shfl_xor_sync(v, 5)        = v[l ^ 5]
//   out[ 64 + l] = __shfl_sync(v, (l*7) % 32)   = v[(7l) % 32]
//   out[ 96 + l] = __shfl_down_sync(v, 2)       = l + 2 < 32 ? v[l + 2] : v[l]
//   out[128 + l] = __shfl_xor_sync(v, 1, 8)     = v[l ^ 1] (width 8: stays in the 8-lane segment)
extern "C" __global__ void shfl_modes(const int* x, int* out) {
    const unsigned full = 0xffffffffu;
    const int lane = threadIdx.x;
    const int v = x[lane];
    out[lane] = __shfl_up_sync(full, v, 3);
    out[32 + lane] = __shfl_xor_sync(full, v, 5);
    out[64 + lane] = __shfl_sync(full, v, (lane * 7) % 32);
    out[96 + lane] = __shfl_down_sync(full, v, 2);
    out[128 + lane] = __shfl_xor_sync(full, v, 1, 8);
}

// -------------------------------------------------------------------------------------- (e)
// shfl_width_facts(const int* x, int* out)
// Launch: grid 1, block 32 (one warp). x: 32 ints; out: 96 ints, fully written. Full mask.
// Sub-warp widths clamp to the segment of `width` lanes containing the caller:
//   out[ 0 + l] = __shfl_up_sync(v, 1, 8)   = l % 8 >= 1 ? v[l - 1] : v[l]
//   out[32 + l] = __shfl_down_sync(v, 3, 16) = l % 16 + 3 < 16 ? v[l + 3] : v[l]
//   out[64 + l] = __shfl_sync(v, 9, 8)       = v[(l & ~7) + (9 % 8)] = v[(l & ~7) + 1]
// In the PTX the width is in shfl.sync's c operand, c = ((32 - width) << 8) | clamp, clamp = 0
//   for .up and 31 otherwise: 6144 (up, width 8), 4127 (down, 16), 6175 (idx, 8); shfl_modes'
//   width-8 xor uses 6175 as well, the full-width ones 0 (up) and 31.
extern "C" __global__ void shfl_width_facts(const int* x, int* out) {
    const unsigned full = 0xffffffffu;
    const int lane = threadIdx.x;
    const int v = x[lane];
    out[lane] = __shfl_up_sync(full, v, 1, 8);
    out[32 + lane] = __shfl_down_sync(full, v, 3, 16);
    out[64 + lane] = __shfl_sync(full, v, 9, 8);
}

// -------------------------------------------------------------------------------------- (f)
// match_any_facts(const int* x, unsigned* out)
// Launch: grid 1, block 32 (one warp). x: 32 ints; out: 32 u32, fully written. Full mask.
// Expected: out[l] = __match_any_sync(0xffffffff, x[l]) = the bit mask of the lanes j with
//   x[j] == x[l] (always includes bit l).
extern "C" __global__ void match_any_facts(const int* x, unsigned* out) {
    const int lane = threadIdx.x;
    out[lane] = __match_any_sync(0xffffffffu, x[lane]);
}

// -------------------------------------------------------------------------------------- (g)
// vote_facts(const int* x, unsigned* out)
// Launch: grid 1, block 32 (one warp). x: 32 ints; out: 160 u32, fully written. Full mask,
//   p(l) = x[l] != 0.
// Expected, for every lane l:
//   out[  0 + l] = __ballot_sync(p)           = bit j set iff x[j] != 0
//   out[ 32 + l] = __any_sync(p)              = 1 if some x[j] != 0, else 0
//   out[ 64 + l] = __all_sync(p)              = 1 if every x[j] != 0, else 0
//   out[ 96 + l] = __reduce_add_sync(x)       = (unsigned) sum of x[j] (mod 2^32)
//   out[128 + l] = __match_all_sync(x, &pred) = 0xffffffff if all x[j] are equal, else 0
//                                                 (pred is not stored)
extern "C" __global__ void vote_facts(const int* x, unsigned* out) {
    const unsigned full = 0xffffffffu;
    const int lane = threadIdx.x;
    const int v = x[lane];
    const int p = v != 0;
    int pred;
    out[lane] = __ballot_sync(full, p);
    out[32 + lane] = __any_sync(full, p) ? 1u : 0u;
    out[64 + lane] = __all_sync(full, p) ? 1u : 0u;
    out[96 + lane] = __reduce_add_sync(full, (unsigned)v);
    out[128 + lane] = __match_all_sync(full, v, &pred);
}
