// Per-row sampling from logits (rows, V) with temperature, top-k and top-p, and a counter-based RNG.
// Writes one u32 token id per row. Exact semantics (the CPU reference must do the same):
//   temperature <= 0 (or NaN): argmax, ties -> smallest index.
//   otherwise, with z_c = x_c * (1 / temperature) in f32 and the order "z descending, index ascending":
//   1. top-k (when 0 < top_k < V): keep the first top_k elements in that order;
//   2. top-p (when top_p < 1): with mass e_c = exp(z_c - max z) over the kept set, keep a kept element
//      iff the mass of the kept elements before it in that order is <= top_p * (total kept mass)
//      (so the first element is always kept; this is the seed's shifted-cumsum rule);
//   3. draw u = uniform01 * (total mass of the final set), where uniform01 is the top 24 bits of
//      Philox4x32-10(counter = {row, step_lo, step_hi, 0}, key = {seed_lo, seed_hi}).x / 2^24, and
//      pick the first element c in index order whose inclusive cumulative mass exceeds u.
// The set selection is exact up to f32 rounding of the mass sums (which are summed in a
// nondeterministic order, so only masses within rounding of the top-p boundary can differ).
//
// Launch: one block of SAMPLE_THREADS (512; any multiple of 32 up to 512 works) threads per row (grid-stride over rows, grid.x =
// min(rows, 65535)), no dynamic shared memory. Each thread owns a contiguous chunk of the row.
#include "common.cuh"

#define SAMPLE_THREADS 512

struct SampleShared {
    float hist[256];
    float scan[32];
    float fb[4];
    int ib[4];
};

// Block-wide exclusive prefix sum in thread order; *total gets the sum. All threads must call.
__device__ __forceinline__ float block_scan_excl(float v, float* scan, float* total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float inc = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const float t = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += t;
    }
    __syncthreads();
    if (lane == 31) scan[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        float w = lane < nw ? scan[lane] : 0.0f;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const float t = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += t;
        }
        scan[lane] = w;
    }
    __syncthreads();
    const float base = warp > 0 ? scan[warp - 1] : 0.0f;
    *total = scan[nw - 1];
    return base + inc - v;
}

// Run by warp 0 only. Bins are visited from 255 down to 0; finds bin b with
// above_b <= t < above_b + hist[b] (above_b = sum of bins > b) among non-empty bins, falling back to
// the nearest non-empty bin under rounding. Writes sh.ib[0] = bin, sh.fb[0] = above_b,
// sh.fb[1] = total of all bins.
__device__ __forceinline__ void select_bin(SampleShared& sh, float t) {
    const int lane = threadIdx.x;
    float v[8], s = 0.0f;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        v[k] = sh.hist[255 - 8 * lane - k];
        s += v[k];
    }
    float inc = s;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const float u = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += u;
    }
    float ex = __shfl_up_sync(0xffffffffu, inc, 1);
    if (lane == 0) ex = 0.0f;
    const float total = __shfl_sync(0xffffffffu, inc, 31);
    const unsigned cand = __ballot_sync(0xffffffffu, s > 0.0f && ex <= t);
    const unsigned nonempty = __ballot_sync(0xffffffffu, s > 0.0f);
    const int owner = cand ? 31 - __clz(cand) : (nonempty ? __ffs(nonempty) - 1 : 0);
    if (lane == owner) {
        float acc = ex;
        int bin = -1, last = 255 - 8 * lane;
        float above = ex, last_above = ex;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            if (bin < 0 && v[k] > 0.0f) {
                last = 255 - 8 * lane - k;
                last_above = acc;
                if (t < acc + v[k]) {
                    bin = last;
                    above = acc;
                }
                acc += v[k];
            }
        }
        if (bin < 0) {
            bin = last;
            above = last_above;
        }
        sh.ib[0] = bin;
        sh.fb[0] = above;
        sh.fb[1] = total;
    }
}

template <typename T>
__device__ __forceinline__ void sample_rows(const T* __restrict__ logits, uint32_t* __restrict__ out, int rows, int V,
                                            float temperature, int top_k, float top_p, unsigned long long seed,
                                            unsigned long long step) {
    __shared__ SampleShared sh;
    const int tid = threadIdx.x;
    const int chunk = (V + blockDim.x - 1) / blockDim.x;
    const int lo = min(tid * chunk, V), hi = min(lo + chunk, V);
    const bool greedy = !(temperature > 0.0f);
    const float inv_temp = greedy ? 1.0f : 1.0f / temperature;

    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* x = logits + (long long)r * V;

        // ---- greedy: argmax, ties -> smallest index
        if (greedy) {
            float best = -PALM_INF;
            int bi = 0x7fffffff;
            for (int c = lo; c < hi; ++c) {
                const float v = to_f32(x[c]);
                if (v > best || bi == 0x7fffffff) best = v, bi = c;
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                const float ob = __shfl_xor_sync(0xffffffffu, best, o);
                const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
                if (ob > best || (ob == best && oi < bi) || (bi == 0x7fffffff && oi != 0x7fffffff)) best = ob, bi = oi;
            }
            __syncthreads();
            if ((tid & 31) == 0) {
                sh.hist[tid >> 5] = best;
                reinterpret_cast<int*>(sh.hist)[128 + (tid >> 5)] = bi;
            }
            __syncthreads();
            if (tid == 0) {
                float b = sh.hist[0];
                int i = reinterpret_cast<int*>(sh.hist)[128];
                for (int w = 1; w < (int)(blockDim.x >> 5); ++w) {
                    const float ob = sh.hist[w];
                    const int oi = reinterpret_cast<int*>(sh.hist)[128 + w];
                    if (ob > b || (ob == b && oi < i) || (i == 0x7fffffff && oi != 0x7fffffff)) b = ob, i = oi;
                }
                out[r] = i == 0x7fffffff ? 0u : (uint32_t)i;
            }
            __syncthreads();
            continue;
        }

        // ---- max of z (for exp stability)
        float m = -PALM_INF;
        for (int c = lo; c < hi; ++c) m = fmaxf(m, to_f32(x[c]) * inv_temp);
        m = block_max(m, sh.scan);

        // ---- top-k: radix-select the key of the k-th largest z, then rank its ties by index
        uint32_t kth = 0;            // keep keys > kth, plus the first `k_ties` keys == kth
        int k_ties = 0x7fffffff;     // (kth = 0 matches no real key, so "keep all" when disabled)
        int k_rank0 = 0;             // ties (== kth) in earlier chunks
        if (top_k > 0 && top_k < V) {
            uint32_t prefix = 0, mask = 0;
            float remaining = (float)top_k;
            for (int shift = 24; shift >= 0; shift -= 8) {
                for (int b = tid; b < 256; b += blockDim.x) sh.hist[b] = 0.0f;
                __syncthreads();
                // warp-aggregated counting: lanes hitting the same bin add once (the trip count
                // `chunk` is uniform, so every lane reaches __match_any_sync)
                for (int it = 0; it < chunk; ++it) {
                    const int c = lo + it;
                    int bin = 256;  // no bin
                    if (c < hi) {
                        const uint32_t key = f32_key(to_f32(x[c]) * inv_temp);
                        if ((key & mask) == prefix) bin = (key >> shift) & 255;
                    }
                    const unsigned peers = __match_any_sync(0xffffffffu, bin);
                    if (bin < 256 && (tid & 31) == __ffs(peers) - 1) atomicAdd(&sh.hist[bin], (float)__popc(peers));
                }
                __syncthreads();
                if (tid < 32) select_bin(sh, remaining - 0.5f);
                __syncthreads();
                prefix |= (uint32_t)sh.ib[0] << shift;
                mask |= 255u << shift;
                remaining -= sh.fb[0];
                __syncthreads();
            }
            kth = prefix;
            k_ties = (int)remaining;
            int mine = 0;
            for (int c = lo; c < hi; ++c) mine += f32_key(to_f32(x[c]) * inv_temp) == kth;
            float tot;
            k_rank0 = (int)block_scan_excl((float)mine, sh.scan, &tot);
        }

        // ---- top-p: radix-select the boundary element by mass among the top-k survivors
        uint32_t pth = 0;
        int p_keep = 0x7fffffff, p_rank0 = 0;
        if (top_p < 1.0f) {
            float z_sum = 0.0f;
            {
                int rank = k_rank0;
                for (int c = lo; c < hi; ++c) {
                    const float z = to_f32(x[c]) * inv_temp;
                    const uint32_t key = f32_key(z);
                    const bool tie = key == kth;
                    if (key > kth || (tie && rank < k_ties)) z_sum += __expf(z - m);
                    rank += tie;
                }
            }
            const float target = fmaxf(top_p, 0.0f) * block_sum(z_sum, sh.scan);
            uint32_t prefix = 0, mask = 0;
            float above = 0.0f;
            bool all = false;
            for (int shift = 24; shift >= 0; shift -= 8) {
                for (int b = tid; b < 256; b += blockDim.x) sh.hist[b] = 0.0f;
                __syncthreads();
                int rank = k_rank0;
                for (int c = lo; c < hi; ++c) {
                    const float z = to_f32(x[c]) * inv_temp;
                    const uint32_t key = f32_key(z);
                    const bool tie = key == kth;
                    if ((key > kth || (tie && rank < k_ties)) && (key & mask) == prefix)
                        atomicAdd(&sh.hist[(key >> shift) & 255], __expf(z - m));
                    rank += tie;
                }
                __syncthreads();
                if (tid < 32) select_bin(sh, target - above);
                __syncthreads();
                if (shift == 24 && target - above >= sh.fb[1]) all = true;  // whole kept mass <= p
                prefix |= (uint32_t)sh.ib[0] << shift;
                mask |= 255u << shift;
                above += sh.fb[0];
                __syncthreads();
                if (all) break;
            }
            if (!all) {
                pth = prefix;
                // element mass of the boundary key; keep ties while the mass before them is <= target
                const float q = __expf(__uint_as_float((pth & 0x80000000u) ? (pth & 0x7fffffffu) : ~pth) - m);
                const float slack = target - above;
                p_keep = q > 0.0f ? (int)fminf(floorf(fmaxf(slack, 0.0f) / q) + 1.0f, 2.0e9f) : 0x7fffffff;
                int mine = 0, rank = k_rank0;
                for (int c = lo; c < hi; ++c) {
                    const uint32_t key = f32_key(to_f32(x[c]) * inv_temp);
                    const bool tie = key == kth;
                    if ((key > kth || (tie && rank < k_ties)) && key == pth) ++mine;
                    rank += tie;
                }
                float tot;
                p_rank0 = (int)block_scan_excl((float)mine, sh.scan, &tot);
            }
        }

        // ---- sample by inverse CDF in index order over the final set
        float my_mass = 0.0f;
        {
            int krank = k_rank0, prank = p_rank0;
            for (int c = lo; c < hi; ++c) {
                const float z = to_f32(x[c]) * inv_temp;
                const uint32_t key = f32_key(z);
                const bool ktie = key == kth;
                bool keep = key > kth || (ktie && krank < k_ties);
                krank += ktie;
                if (keep) {
                    const bool ptie = key == pth;
                    keep = key > pth || (ptie && prank < p_keep);
                    prank += ptie;
                }
                if (keep) my_mass += __expf(z - m);
            }
        }
        float total;
        const float before = block_scan_excl(my_mass, sh.scan, &total);
        const Philox4 rnd = philox4x32_10({(uint32_t)r, (uint32_t)step, (uint32_t)(step >> 32), 0u}, (uint32_t)seed,
                                          (uint32_t)(seed >> 32));
        const float u = u32_to_unit(rnd.x) * total;
        // owner: the last thread with mass whose prefix is <= u
        if (tid == 0) sh.ib[1] = -1;
        __syncthreads();
        if (my_mass > 0.0f && before <= u) atomicMax(&sh.ib[1], tid);
        __syncthreads();
        if (tid == 0 && sh.ib[1] < 0) out[r] = 0u;  // unreachable: the max element always has mass 1
        if (tid == sh.ib[1]) {
            int krank = k_rank0, prank = p_rank0, pick = -1;
            float acc = before;
            for (int c = lo; c < hi; ++c) {
                const float z = to_f32(x[c]) * inv_temp;
                const uint32_t key = f32_key(z);
                const bool ktie = key == kth;
                bool keep = key > kth || (ktie && krank < k_ties);
                krank += ktie;
                if (keep) {
                    const bool ptie = key == pth;
                    keep = key > pth || (ptie && prank < p_keep);
                    prank += ptie;
                }
                if (keep) {
                    const float e = __expf(z - m);
                    if (e > 0.0f) pick = c;  // fallback under rounding: the last element with mass
                    acc += e;
                    if (u < acc && e > 0.0f) break;
                }
            }
            out[r] = (uint32_t)pick;
        }
        __syncthreads();
    }
}

// temperature <= 0: greedy. top_k <= 0 or >= V: no top-k. top_p >= 1: no top-p.
// seed: the run's seed; step: e.g. the decode step (the row index is part of the counter).
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_fwd_bf16(const bf16* logits, uint32_t* out, int rows, int V, float temperature, int top_k, float top_p,
                    unsigned long long seed, unsigned long long step) {
    sample_rows<bf16>(logits, out, rows, V, temperature, top_k, top_p, seed, step);
}
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_fwd_f32(const float* logits, uint32_t* out, int rows, int V, float temperature, int top_k, float top_p,
                   unsigned long long seed, unsigned long long step) {
    sample_rows<float>(logits, out, rows, V, temperature, top_k, top_p, seed, step);
}
