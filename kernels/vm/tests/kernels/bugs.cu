// Deliberately broken kernels for the PTX VM's sanitizer tests. NOT shipped: not in
// palm_kernels::FAMILIES, not in the README ptxas table. kernels/gen-ptx compiles this file to
// bugs.ptx next to it (same flags as the shipped kernels: -arch=sm_90a -O3 -std=c++17 -lineinfo;
// first line `// source-sha256: <sha256(bugs.cu bytes)>`; self-contained, system headers only).
//
// Each kernel has exactly ONE defect. Its comment gives the exact signature, the launch shape the
// tests use, the defect, what a sanitizer should report, and the PTX instruction that carries the
// defect (checked in bugs.ptx; `%rN` register numbers are as nvcc 13.0.88 emits them today).
// Everything else in a kernel is correct, so a sanitizer should report nothing else.
//
// Note: compute-sanitizer's own initcheck tracks global memory only; the VM's initcheck also
// tracks shared memory (bug_wrong_fragment, bug_uninit_shared rely on that).

#include <cuda_bf16.h>
#include <stdint.h>

// -------------------------------------------------------------------------------------- (a)
// bug_oob_tail(const float* x, float* y, int n)
// Launch: block 256, grid ceil(n/256) (e.g. n = 300: grid 2, 512 threads); x, y hold n floats.
// Intent: y[i] = 2 * x[i] for i < n.
// Defect: the tail guard `if (i < n)` is missing, so threads i in [n, grid*256) of the last block
//   read x[i] and write y[i] past the end of both buffers (`n` is unused).
// Sanitizer (memcheck): invalid __global__ read of size 4 at x + 4*n (first offender: the thread
//   with i = n, e.g. thread 44 of block 1 for n = 300), and the matching invalid write of y[i].
// PTX: the unguarded `ld.global.f32` of x[i] (then `st.global.f32` to y[i]); no setp/branch on n.
extern "C" __global__ void bug_oob_tail(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    y[i] = 2.0f * x[i];  // BUG: no `if (i < n)`
}

// -------------------------------------------------------------------------------------- (b)
// bug_missing_barrier(const float* x, float* out)
// Launch: grid 1, block 128 (4 warps); x, out hold 128 floats.
// Intent: out[t] = x[(t + 32) % 128] through a shared buffer.
// Defect: no __syncthreads() between the shared store and the shared load, and the load reads an
//   element written by a DIFFERENT warp (thread (t+32)%128 is in warp (w+1)%4).
// Sanitizer (racecheck): shared-memory read-after-write hazard on buf[(t+32)%128] between the
//   write by thread (t+32)%128 and the read by thread t (different warps, no barrier between).
// PTX: `st.shared.f32` of buf[t] followed by `ld.shared.f32` of buf[(t+32)%128] with no
//   `bar.sync` in between (the kernel has no bar.sync at all).
extern "C" __global__ void bug_missing_barrier(const float* x, float* out) {
    __shared__ float buf[128];
    unsigned t = threadIdx.x;
    buf[t] = x[t];
    // BUG: __syncthreads() missing here
    out[t] = buf[(t + 32) % 128];
}

// -------------------------------------------------------------------------------------- (c)
// bug_wrong_fragment(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c)
// Launch: grid 1, block 32 (one warp). a: A, 16x16 row-major bf16; b: B, 16x8 row-major bf16;
//   c: C, 16x8 row-major f32 (fully written).
// Intent: C = A·B with one mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32. A is staged in shared with
//   a padded row stride of 24 bf16 (48 B): only columns 0..15 of each row are written, columns
//   16..23 are padding that is never written. B is staged as Bᵀ (8x16 row-major, 32 B rows).
//   A is loaded by ldmatrix.x4 with lane l pointing at row l%16, column 8*(l/16) (matrices
//   0..3 = a0..a3 of the mma A fragment); Bᵀ by ldmatrix.x2 with lane l at row l%8, column
//   8*((l/8)%2).
// Defect: A's ldmatrix column offset is 8*(l/16) + 8 instead of 8*(l/16): lanes 0..15 point at
//   columns 8..15 (matrices 0,1 get the k=8..15 half instead of k=0..7) and lanes 16..31 point at
//   columns 16..23, i.e. matrices 2,3 (fragments a2,a3) are read from the never-written padding.
// Sanitizer (VM initcheck on shared memory): uninitialized shared read of 16 B by ldmatrix at
//   row r, byte offset 32..47 of the row (sA + 48*r + 32), r = 0..15, addressed by lanes 16..31.
//   The result is wrong too: C = A[:, 8:16]·B[0:8, :] + (garbage)·B[8:16, :].
// PTX: the first `ldmatrix.sync.aligned.m8n8.x4.shared.b16` (its address is
//   sA + 48*(l%16) + 16*(l/16) + 16; the +16 is the defect).
extern "C" __global__ void bug_wrong_fragment(const __nv_bfloat16* a, const __nv_bfloat16* b,
                                              float* c) {
    __shared__ __align__(16) __nv_bfloat16 sA[16 * 24];
    __shared__ __align__(16) __nv_bfloat16 sBt[8 * 16];
    const unsigned lane = threadIdx.x;
#pragma unroll
    for (unsigned j = 0; j < 8; ++j) {  // A: element e = lane + 32j, columns 0..15 only
        const unsigned e = lane + 32 * j;
        sA[(e / 16) * 24 + e % 16] = a[e];
    }
#pragma unroll
    for (unsigned j = 0; j < 4; ++j) {  // B[k][n] -> Bt[n][k], e = 8k + n
        const unsigned e = lane + 32 * j;
        sBt[(e % 8) * 16 + e / 8] = b[e];
    }
    __syncwarp();

    uint32_t a0, a1, a2, a3, b0, b1;
    // BUG: `+ 8` — should be column 8 * (lane / 16)
    uint32_t a_addr = (uint32_t)__cvta_generic_to_shared(&sA[(lane % 16) * 24 + 8 * (lane / 16) + 8]);
    uint32_t b_addr = (uint32_t)__cvta_generic_to_shared(&sBt[(lane % 8) * 16 + 8 * ((lane / 8) % 2)]);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(a0), "=r"(a1), "=r"(a2), "=r"(a3)
                 : "r"(a_addr)
                 : "memory");
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(b0), "=r"(b1)
                 : "r"(b_addr)
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

// -------------------------------------------------------------------------------------- (d)
// bug_cp_async_early(const float* x, float* out)
// Launch: grid 1, block 32 (one warp); x, out hold 128 floats (x 16-B aligned).
// Intent: each lane copies x[4l..4l+4) into shared s[4l..4l+4) with one 16-B cp.async, waits, and
//   writes what it copied to out[4l..4l+4).
// Defect: the lane reads its own destination s[4l..4l+4) back (one 16-B shared load) AFTER
//   cp.async.commit_group but BEFORE cp.async.wait_group 0, i.e. while the async copy into those
//   bytes may still be in flight. (The wait comes after; the value written out is the early one.)
// Sanitizer (VM racecheck/initcheck): read of shared bytes that are the destination of a pending,
//   un-waited cp.async (the bytes were never written before, so also an uninitialized read).
// PTX: the `ld.shared.v4.f32` between `cp.async.commit_group;` and `cp.async.wait_group 0;`.
extern "C" __global__ void bug_cp_async_early(const float* x, float* out) {
    __shared__ __align__(16) float s[128];
    const int lane = threadIdx.x;
    uint32_t dst = (uint32_t)__cvta_generic_to_shared(&s[4 * lane]);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(x + 4 * lane)
                 : "memory");
    asm volatile("cp.async.commit_group;\n" ::: "memory");
    float4 v = *reinterpret_cast<const float4*>(&s[4 * lane]);  // BUG: before the wait
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    *reinterpret_cast<float4*>(&out[4 * lane]) = v;
}

// -------------------------------------------------------------------------------------- (e)
// bug_shfl_inactive(const float* x, float* out)
// Launch: grid 1, block 32 (one warp); x, out hold 32 floats.
// Intent: lanes 0..15 fetch x[lane + 16] from lane lane+16; lanes 16..31 keep x[lane].
// Defect: the __shfl_sync sits inside `if (lane < 16)` but its membermask is 0xffffffff: it names
//   lanes 16..31 as participants, and they do not execute it.
// Sanitizer (synccheck): invalid arguments / barrier error on a warp-synchronous primitive:
//   shfl.sync executed by lanes 0..15 with membermask 0xffffffff whose lanes 16..31 are not
//   executing it (undefined behaviour on hardware: may hang or return garbage).
// PTX: `shfl.sync.idx.b32 %r7|%p2, %r4, %r3, %r5, %r6;` with membermask %r6 = -1
//   (`mov.u32 %r6, -1;`), inside the block that `@%p1 bra` skips for lane > 15.
extern "C" __global__ void bug_shfl_inactive(const float* x, float* out) {
    const int lane = threadIdx.x;
    float v = x[lane];
    float r = v;
    if (lane < 16) r = __shfl_sync(0xffffffffu, v, lane + 16);  // BUG: mask names inactive lanes
    out[lane] = r;
}

// -------------------------------------------------------------------------------------- (f)
// bug_divergent_barrier(float* out)
// Launch: grid 1, block 64 (2 warps); out holds 64 floats.
// Intent: every thread writes out[t] = t.
// Defect: `if (threadIdx.x < 48) __syncthreads();` — a CTA-wide barrier under a condition that
//   splits warp 1: threads 32..47 reach the barrier, threads 48..63 of the same warp do not.
// Sanitizer (synccheck): divergent thread(s) in warp at a block barrier (warp 1, threads 48..63
//   missing; the barrier can never complete with all 64 threads).
// PTX: `bar.sync 0;` skipped by `@%p1 bra` for threadIdx.x > 47.
extern "C" __global__ void bug_divergent_barrier(float* out) {
    const int t = threadIdx.x;
    if (t < 48) __syncthreads();  // BUG: not reached by threads 48..63
    out[t] = (float)t;
}

// -------------------------------------------------------------------------------------- (g)
// bug_uninit_shared(float* out)
// Launch: grid 1, block 64 (2 warps); out holds 64 floats.
// Intent: out[t] = s[63 - t] after a barrier, with s filled by every thread.
// Defect: only threads 0..31 write s[t] = t; s[32..63] are never written, and threads 0..31 read
//   them (s[63 - t]).
// Sanitizer (VM initcheck on shared memory): uninitialized shared read of 4 B at s + 4*(63 - t)
//   by threads t = 0..31.
// PTX: the `ld.shared.f32` of s[63 - t] after `bar.sync 0;` (the `st.shared.f32` of s[t] is
//   skipped by `@%p1 bra` for t > 31).
extern "C" __global__ void bug_uninit_shared(float* out) {
    __shared__ float s[64];
    const int t = threadIdx.x;
    if (t < 32) s[t] = (float)t;  // BUG: s[32..63] never written
    __syncthreads();
    out[t] = s[63 - t];
}

// -------------------------------------------------------------------------------------- (h)
// bug_misaligned(const float* x, float* out)
// Launch: grid 1, block 32 (one warp); x holds 129 floats (16-B aligned), out 32 floats.
// Intent: out[l] = x[1+4l] + x[2+4l] + x[3+4l] + x[4+4l].
// Defect: the 4 floats are read as one float4 through reinterpret_cast<const float4*>(x + 1): a
//   16-B vector load from an address that is only 4-B aligned (byte x + 4 + 16*l).
// Sanitizer (memcheck): misaligned __global__ read of size 16 at x + 4 + 16*l (every lane).
// PTX: `ld.global.v4.f32 {...}, [%rd6+4];` (%rd6 = x + 16*l; the +4 byte offset is the defect).
extern "C" __global__ void bug_misaligned(const float* x, float* out) {
    const int lane = threadIdx.x;
    float4 v = reinterpret_cast<const float4*>(x + 1)[lane];  // BUG: x + 1 is not 16-B aligned
    out[lane] = v.x + v.y + v.z + v.w;
}
