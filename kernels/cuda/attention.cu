// Flash-style causal multi-query attention (one K/V head shared by all H query heads), bf16 tensor
// cores (mma.sync m16n8k16, ldmatrix, cp.async), online softmax in f32, no n x m matrix in memory.
//
// Shapes (element strides are arguments; the head dim d is contiguous):
//   q, out, dout: (B, H, N, d)  element (b, h, i, :) at ptr + b*s_b + h*s_h + i*s_n
//   k, v:         (B, M, d)     element (b, j, :)    at ptr + b*s_b + j*s_n
//   lse, dvec:    (B, H, N) f32 contiguous
// Key j is visible to query i iff j < M and (causal == 0 or j <= i + (M - N)); with a KV cache the
// N new queries are the last N of the M positions. A query with no visible key outputs 0 and
// lse = -inf. scale is the softmax scale (d^-1/2).
// Alignment: all strides multiples of 8 elements and q, k, v, out, dout 16-byte aligned.
//
// Forward  attention_d{64,128}_fwd_bf16: grid (ceil(N/64), H, B), block 128, dynamic smem
//          46080 B (d=64) / 87040 B (d=128; set CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES).
//          Each block owns 64 queries of one (b, h); each warp 16 query rows.
// Backward (FlashAttention-2 style, recomputes P from lse):
//   1. attention_bwd_pre_bf16: dvec[b,h,i] = sum_d dout * out   (grid-stride, one warp per row)
//   2. attention_d{64,128}_bwd_bf16: grid (ceil(M/64), G, B), block 128, dynamic smem 46592 B (d=64)
//      / 57600 B (d=128). Each block owns 64 keys of one batch entry and loops over heads
//      [y*ceil(H/G), ...) and all query tiles that can see its keys; dK/dV accumulate in registers
//      across those heads and are added with f32 atomics into dk, dv (B, M, d) f32; dQ is added
//      with f32 atomics into dq (B, H, N, d) f32. dq, dk, dv must be zeroed first; cast them to bf16
//      afterwards (elementwise to_bf16_fwd_f32). Pick G (1..H) so that ceil(M/64)*G*B >= ~2 x SMs;
//      G = 1 gives deterministic dk/dv sums per block, but dq atomics are always unordered.
#include "common.cuh"

#define ATT_THREADS 128
#define ATT_BKV 64

// Copies `ROWS` rows of D bf16 (row r at g + (row0 + r) * stride) into smem rows of LDS elements;
// rows >= nrows are zero-filled.
template <int ROWS, int D>
__device__ __forceinline__ void att_load_rows(bf16* s, const bf16* g, long long stride, int row0, int nrows) {
    constexpr int CPR = D / 8, LDS = D + 8;
    for (int idx = threadIdx.x; idx < ROWS * CPR; idx += ATT_THREADS) {
        const int r = idx / CPR, c = (idx % CPR) * 8;
        const bool ok = row0 + r < nrows;
        cp_async16(smem_u32(s + r * LDS + c), ok ? g + (long long)(row0 + r) * stride + c : g, ok ? 16 : 0);
    }
}

template <int D>
__device__ __forceinline__ void attention_fwd(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                              const bf16* __restrict__ v, bf16* __restrict__ o,
                                              float* __restrict__ lse, int H, int N, int M, long long q_sb,
                                              long long q_sh, long long q_sn, long long k_sb, long long k_sn,
                                              long long v_sb, long long v_sn, long long o_sb, long long o_sh,
                                              long long o_sn, float scale, int causal) {
    constexpr int BQ = 64, LDS = D + 8, KD = D / 16, ND = D / 8;
    extern __shared__ uint4 att_smem[];
    bf16* sQ = reinterpret_cast<bf16*>(att_smem);
    bf16* sK = sQ + BQ * LDS;            // 2 stages
    bf16* sV = sK + 2 * ATT_BKV * LDS;   // 2 stages

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, qd = lane & 3;
    const int qt = gridDim.x - 1 - blockIdx.x;  // heaviest (last) query tiles first
    const int h = blockIdx.y, b = blockIdx.z;
    const int q0 = qt * BQ, offset = M - N;
    const bf16* qg = q + b * q_sb + h * q_sh;
    const bf16* kg = k + b * k_sb;
    const bf16* vg = v + b * v_sb;
    bf16* og = o + b * o_sb + h * o_sh;

    int kv_end = M;
    if (causal) kv_end = min(M, q0 + BQ + offset);
    const int n_tiles = kv_end > 0 ? (kv_end + ATT_BKV - 1) / ATT_BKV : 0;

    att_load_rows<BQ, D>(sQ, qg, q_sn, q0, N);
    if (n_tiles > 0) {
        att_load_rows<ATT_BKV, D>(sK, kg, k_sn, 0, M);
        att_load_rows<ATT_BKV, D>(sV, vg, v_sn, 0, M);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    uint32_t qf[KD][4];
#pragma unroll
    for (int kk = 0; kk < KD; ++kk)
        ldmatrix_x4(qf[kk], smem_u32(sQ + (16 * warp + (lane & 15)) * LDS + 16 * kk + 8 * (lane >> 4)));

    const float sl2 = scale * PALM_LOG2E;
    const int i0 = q0 + 16 * warp + g;  // rows i0 and i0 + 8
    float mrow[2] = {-PALM_INF, -PALM_INF}, lrow[2] = {0.0f, 0.0f};
    float oacc[ND][4];
#pragma unroll
    for (int j = 0; j < ND; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) oacc[j][e] = 0.0f;

    for (int t = 0; t < n_tiles; ++t) {
        cp_async_wait<0>();
        __syncthreads();  // tile t is in; every warp is done with tile t-1's stage
        if (t + 1 < n_tiles) {
            att_load_rows<ATT_BKV, D>(sK + ((t + 1) & 1) * ATT_BKV * LDS, kg, k_sn, (t + 1) * ATT_BKV, M);
            att_load_rows<ATT_BKV, D>(sV + ((t + 1) & 1) * ATT_BKV * LDS, vg, v_sn, (t + 1) * ATT_BKV, M);
        }
        cp_async_commit();
        const bf16* sKt = sK + (t & 1) * ATT_BKV * LDS;
        const bf16* sVt = sV + (t & 1) * ATT_BKV * LDS;

        // S = Q K^T for this warp's 16 rows x 64 keys
        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[j][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
#pragma unroll
            for (int j = 0; j < 8; j += 2) {
                uint32_t tt[4];
                ldmatrix_x4(tt, smem_u32(sKt + (8 * j + (lane & 7) + 8 * (lane >> 4)) * LDS + 16 * kk +
                                         8 * ((lane >> 3) & 1)));
                mma_bf16_16816(s[j], qf[kk], tt[0], tt[1]);
                mma_bf16_16816(s[j + 1], qf[kk], tt[2], tt[3]);
            }
        }

        // scale to log2 units and mask
        const int kbase = t * ATT_BKV;
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = kbase + 8 * j + 2 * qd + (e & 1);
                const int row = i0 + 8 * (e >> 1);
                const bool ok = key < M && (!causal || key <= row + offset);
                s[j][e] = ok ? s[j][e] * sl2 : -PALM_INF;
            }

        // online softmax (each row is spread over the 4 lanes of a quad)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            float mx = -PALM_INF;
#pragma unroll
            for (int j = 0; j < 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * hh], s[j][2 * hh + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float mnew = fmaxf(mrow[hh], mx);
            const float muse = mnew == -PALM_INF ? 0.0f : mnew;
            const float alpha = exp2f(mrow[hh] - muse);
            mrow[hh] = mnew;
            float ls = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                s[j][2 * hh] = exp2f(s[j][2 * hh] - muse);
                s[j][2 * hh + 1] = exp2f(s[j][2 * hh + 1] - muse);
                ls += s[j][2 * hh] + s[j][2 * hh + 1];
            }
            lrow[hh] = lrow[hh] * alpha + ls;
#pragma unroll
            for (int j = 0; j < ND; ++j) {
                oacc[j][2 * hh] *= alpha;
                oacc[j][2 * hh + 1] *= alpha;
            }
        }

        // O += P V  (P from the S accumulators, V read k-outer with ldmatrix.trans)
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {
            const uint32_t a[4] = {pack_bf16x2(s[2 * ks][0], s[2 * ks][1]), pack_bf16x2(s[2 * ks][2], s[2 * ks][3]),
                                   pack_bf16x2(s[2 * ks + 1][0], s[2 * ks + 1][1]),
                                   pack_bf16x2(s[2 * ks + 1][2], s[2 * ks + 1][3])};
#pragma unroll
            for (int dn = 0; dn < ND; dn += 2) {
                uint32_t tt[4];
                ldmatrix_x4_trans(tt, smem_u32(sVt + (16 * ks + (lane & 7) + 8 * ((lane >> 3) & 1)) * LDS + 8 * dn +
                                               8 * (lane >> 4)));
                mma_bf16_16816(oacc[dn], a, tt[0], tt[1]);
                mma_bf16_16816(oacc[dn + 1], a, tt[2], tt[3]);
            }
        }
    }
    cp_async_wait<0>();

#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
        float l = lrow[hh];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        const int row = i0 + 8 * hh;
        if (row < N) {
            bf16* orow = og + row * o_sn;
#pragma unroll
            for (int dn = 0; dn < ND; ++dn)
                *reinterpret_cast<uint32_t*>(orow + 8 * dn + 2 * qd) =
                    pack_bf16x2(oacc[dn][2 * hh] * inv, oacc[dn][2 * hh + 1] * inv);
            if (lse && qd == 0)
                lse[((long long)b * H + h) * N + row] = l > 0.0f ? (mrow[hh] + log2f(l)) * PALM_LN2 : -PALM_INF;
        }
    }
}

#define ATT_FWD(NAME, D)                                                                                 \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS)                                             \
        NAME(const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse, int B, int H, int N,     \
             int M, long long q_sb, long long q_sh, long long q_sn, long long k_sb, long long k_sn,       \
             long long v_sb, long long v_sn, long long o_sb, long long o_sh, long long o_sn, float scale, \
             int causal) {                                                                               \
        (void)B;                                                                                         \
        attention_fwd<D>(q, k, v, out, lse, H, N, M, q_sb, q_sh, q_sn, k_sb, k_sn, v_sb, v_sn, o_sb,     \
                         o_sh, o_sn, scale, causal);                                                     \
    }
// lse may be null (inference)
ATT_FWD(attention_d64_fwd_bf16, 64)
ATT_FWD(attention_d128_fwd_bf16, 128)

// dvec[b, h, i] = sum_c dout[b, h, i, c] * out[b, h, i, c]  (f32); any grid, blockDim multiple of 32.
extern "C" __global__ void attention_bwd_pre_bf16(const bf16* __restrict__ out, const bf16* __restrict__ dout,
                                                  float* __restrict__ dvec, int B, int H, int N, int D,
                                                  long long o_sb, long long o_sh, long long o_sn, long long do_sb,
                                                  long long do_sh, long long do_sn) {
    const long long rows = (long long)B * H * N;
    const int lane = threadIdx.x & 31;
    const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
    for (long long r = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
        const int i = (int)(r % N);
        const long long bh = r / N;
        const int h = (int)(bh % H), b = (int)(bh / H);
        const bf16* orow = out + b * o_sb + h * o_sh + i * o_sn;
        const bf16* drow = dout + b * do_sb + h * do_sh + i * do_sn;
        float acc = 0.0f;
        for (int c = lane; c < D; c += 32) acc = fmaf(to_f32(orow[c]), to_f32(drow[c]), acc);
        acc = warp_sum(acc);
        if (lane == 0) dvec[r] = acc;
    }
}

// Backward main kernel: BQ queries per inner tile (64 for d=64, 32 for d=128 to stay within
// registers); 4 warps, warp w owns keys k0 + 16w .. +15 for S^T, dP^T, dK, dV.
template <int D, int BQ>
__device__ __forceinline__ void attention_bwd(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                              const bf16* __restrict__ v, const bf16* __restrict__ dout,
                                              const float* __restrict__ lse, const float* __restrict__ dvec,
                                              float* __restrict__ dq, float* __restrict__ dk,
                                              float* __restrict__ dv, int H, int N, int M, long long q_sb,
                                              long long q_sh, long long q_sn, long long k_sb, long long k_sn,
                                              long long v_sb, long long v_sn, long long do_sb, long long do_sh,
                                              long long do_sn, float scale, int causal) {
    constexpr int LDS = D + 8, LDP = BQ + 8, KD = D / 16, ND = D / 8, NQ = BQ / 8;
    constexpr int WQ = BQ / 16, WD = 4 / WQ, DC = D / WD;  // dQ: WQ row groups x WD column groups
    static_assert(WQ * WD == 4, "4 warps");
    extern __shared__ uint4 att_smem[];
    bf16* sK = reinterpret_cast<bf16*>(att_smem);
    bf16* sV = sK + ATT_BKV * LDS;
    bf16* sQ = sV + ATT_BKV * LDS;
    bf16* sdO = sQ + BQ * LDS;
    bf16* sdS = sdO + BQ * LDS;                                   // [64 keys][LDP] dS^T
    float* sL = reinterpret_cast<float*>(sdS + ATT_BKV * LDP);    // [BQ] lse * log2(e)
    float* sDv = sL + BQ;                                         // [BQ]

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, qd = lane & 3;
    const int k0 = blockIdx.x * ATT_BKV, b = blockIdx.z;
    const int hpb = (H + gridDim.y - 1) / gridDim.y;
    const int h_begin = blockIdx.y * hpb, h_end = min(H, h_begin + hpb);
    const int offset = M - N;
    const float sl2 = scale * PALM_LOG2E;

    att_load_rows<ATT_BKV, D>(sK, k + b * k_sb, k_sn, k0, M);
    att_load_rows<ATT_BKV, D>(sV, v + b * v_sb, v_sn, k0, M);
    cp_async_commit();

    float dka[ND][4], dva[ND][4];
#pragma unroll
    for (int j = 0; j < ND; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) dka[j][e] = dva[j][e] = 0.0f;

    const int kr0 = k0 + 16 * warp + g;  // this thread's key rows kr0 and kr0 + 8
    const int first_q = causal ? max(0, k0 - offset) : 0;
    const int qt_begin = first_q / BQ, nqt = (N + BQ - 1) / BQ;

    for (int h = h_begin; h < h_end; ++h) {
        const bf16* qg = q + b * q_sb + h * q_sh;
        const bf16* dog = dout + b * do_sb + h * do_sh;
        const long long rowbase = ((long long)b * H + h) * N;
        for (int qt = qt_begin; qt < nqt; ++qt) {
            const int q0 = qt * BQ;
            __syncthreads();  // previous tile's sQ / sdO / sdS / sL readers are done
            att_load_rows<BQ, D>(sQ, qg, q_sn, q0, N);
            att_load_rows<BQ, D>(sdO, dog, do_sn, q0, N);
            cp_async_commit();
            for (int i = threadIdx.x; i < BQ; i += ATT_THREADS) {
                const int row = q0 + i;
                float l = row < N ? lse[rowbase + row] : PALM_INF;
                if (l == -PALM_INF) l = PALM_INF;  // a query that sees no key: P = 0
                sL[i] = l * PALM_LOG2E;
                sDv[i] = row < N ? dvec[rowbase + row] : 0.0f;
            }
            cp_async_wait<0>();
            __syncthreads();

            // S^T = K_w Q^T  (16 keys x BQ queries)
            float s[NQ][4];
#pragma unroll
            for (int j = 0; j < NQ; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[j][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KD; ++kk) {
                uint32_t ka[4];
                ldmatrix_x4(ka, smem_u32(sK + (16 * warp + (lane & 15)) * LDS + 16 * kk + 8 * (lane >> 4)));
#pragma unroll
                for (int j = 0; j < NQ; j += 2) {
                    uint32_t tt[4];
                    ldmatrix_x4(tt, smem_u32(sQ + (8 * j + (lane & 7) + 8 * (lane >> 4)) * LDS + 16 * kk +
                                             8 * ((lane >> 3) & 1)));
                    mma_bf16_16816(s[j], ka, tt[0], tt[1]);
                    mma_bf16_16816(s[j + 1], ka, tt[2], tt[3]);
                }
            }
            // P^T = exp(S^T * scale - lse), masked
#pragma unroll
            for (int j = 0; j < NQ; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int key = kr0 + 8 * (e >> 1);
                    const int ql = 8 * j + 2 * qd + (e & 1);
                    const int qi = q0 + ql;
                    const bool ok = key < M && qi < N && (!causal || key <= qi + offset);
                    s[j][e] = ok ? exp2f(s[j][e] * sl2 - sL[ql]) : 0.0f;
                }
            // dV += P^T dO
#pragma unroll
            for (int ks = 0; ks < BQ / 16; ++ks) {
                const uint32_t a[4] = {pack_bf16x2(s[2 * ks][0], s[2 * ks][1]), pack_bf16x2(s[2 * ks][2], s[2 * ks][3]),
                                       pack_bf16x2(s[2 * ks + 1][0], s[2 * ks + 1][1]),
                                       pack_bf16x2(s[2 * ks + 1][2], s[2 * ks + 1][3])};
#pragma unroll
                for (int dn = 0; dn < ND; dn += 2) {
                    uint32_t tt[4];
                    ldmatrix_x4_trans(tt, smem_u32(sdO + (16 * ks + (lane & 7) + 8 * ((lane >> 3) & 1)) * LDS +
                                                   8 * dn + 8 * (lane >> 4)));
                    mma_bf16_16816(dva[dn], a, tt[0], tt[1]);
                    mma_bf16_16816(dva[dn + 1], a, tt[2], tt[3]);
                }
            }
            // dP^T = V_w dO^T, then dS^T = P^T * (dP^T - dvec)
            {
                float dp[NQ][4];
#pragma unroll
                for (int j = 0; j < NQ; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) dp[j][e] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < KD; ++kk) {
                    uint32_t va[4];
                    ldmatrix_x4(va, smem_u32(sV + (16 * warp + (lane & 15)) * LDS + 16 * kk + 8 * (lane >> 4)));
#pragma unroll
                    for (int j = 0; j < NQ; j += 2) {
                        uint32_t tt[4];
                        ldmatrix_x4(tt, smem_u32(sdO + (8 * j + (lane & 7) + 8 * (lane >> 4)) * LDS + 16 * kk +
                                                 8 * ((lane >> 3) & 1)));
                        mma_bf16_16816(dp[j], va, tt[0], tt[1]);
                        mma_bf16_16816(dp[j + 1], va, tt[2], tt[3]);
                    }
                }
#pragma unroll
                for (int j = 0; j < NQ; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) s[j][e] *= dp[j][e] - sDv[8 * j + 2 * qd + (e & 1)];
            }
            // dK += dS^T Q;  dS^T -> smem for dQ
#pragma unroll
            for (int ks = 0; ks < BQ / 16; ++ks) {
                const uint32_t a[4] = {pack_bf16x2(s[2 * ks][0], s[2 * ks][1]), pack_bf16x2(s[2 * ks][2], s[2 * ks][3]),
                                       pack_bf16x2(s[2 * ks + 1][0], s[2 * ks + 1][1]),
                                       pack_bf16x2(s[2 * ks + 1][2], s[2 * ks + 1][3])};
                bf16* d0 = sdS + (16 * warp + g) * LDP + 16 * ks + 2 * qd;
                *reinterpret_cast<uint32_t*>(d0) = a[0];
                *reinterpret_cast<uint32_t*>(d0 + 8 * LDP) = a[1];
                *reinterpret_cast<uint32_t*>(d0 + 8) = a[2];
                *reinterpret_cast<uint32_t*>(d0 + 8 * LDP + 8) = a[3];
#pragma unroll
                for (int dn = 0; dn < ND; dn += 2) {
                    uint32_t tt[4];
                    ldmatrix_x4_trans(tt, smem_u32(sQ + (16 * ks + (lane & 7) + 8 * ((lane >> 3) & 1)) * LDS +
                                                   8 * dn + 8 * (lane >> 4)));
                    mma_bf16_16816(dka[dn], a, tt[0], tt[1]);
                    mma_bf16_16816(dka[dn + 1], a, tt[2], tt[3]);
                }
            }
            __syncthreads();  // dS^T complete

            // dQ (BQ x D) = dS K: warp -> query rows 16*rg.., columns cg*DC..
            {
                const int rg = warp % WQ, cg = warp / WQ;
                float dqa[DC / 8][4];
#pragma unroll
                for (int j = 0; j < DC / 8; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) dqa[j][e] = 0.0f;
#pragma unroll
                for (int ks = 0; ks < ATT_BKV / 16; ++ks) {
                    uint32_t a[4];
                    ldmatrix_x4_trans(a, smem_u32(sdS + (16 * ks + (lane & 7) + 8 * (lane >> 4)) * LDP + 16 * rg +
                                                  8 * ((lane >> 3) & 1)));
#pragma unroll
                    for (int dn = 0; dn < DC / 8; dn += 2) {
                        uint32_t tt[4];
                        ldmatrix_x4_trans(tt, smem_u32(sK + (16 * ks + (lane & 7) + 8 * ((lane >> 3) & 1)) * LDS +
                                                       cg * DC + 8 * dn + 8 * (lane >> 4)));
                        mma_bf16_16816(dqa[dn], a, tt[0], tt[1]);
                        mma_bf16_16816(dqa[dn + 1], a, tt[2], tt[3]);
                    }
                }
#pragma unroll
                for (int hh = 0; hh < 2; ++hh) {
                    const int row = q0 + 16 * rg + g + 8 * hh;
                    if (row >= N) continue;
                    float* dqrow = dq + (rowbase + row) * D + cg * DC + 2 * qd;
#pragma unroll
                    for (int dn = 0; dn < DC / 8; ++dn) {
                        atomicAdd(dqrow + 8 * dn, dqa[dn][2 * hh] * scale);
                        atomicAdd(dqrow + 8 * dn + 1, dqa[dn][2 * hh + 1] * scale);
                    }
                }
            }
        }
    }
    cp_async_wait<0>();

#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
        const int key = kr0 + 8 * hh;
        if (key >= M || h_begin >= h_end) continue;
        float* dkrow = dk + ((long long)b * M + key) * D + 2 * qd;
        float* dvrow = dv + ((long long)b * M + key) * D + 2 * qd;
#pragma unroll
        for (int dn = 0; dn < ND; ++dn) {
            atomicAdd(dkrow + 8 * dn, dka[dn][2 * hh] * scale);
            atomicAdd(dkrow + 8 * dn + 1, dka[dn][2 * hh + 1] * scale);
            atomicAdd(dvrow + 8 * dn, dva[dn][2 * hh]);
            atomicAdd(dvrow + 8 * dn + 1, dva[dn][2 * hh + 1]);
        }
    }
}

#define ATT_BWD(NAME, D, BQ)                                                                             \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS)                                             \
        NAME(const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse,             \
             const float* dvec, float* dq, float* dk, float* dv, int B, int H, int N, int M, long long q_sb, \
             long long q_sh, long long q_sn, long long k_sb, long long k_sn, long long v_sb, long long v_sn, \
             long long do_sb, long long do_sh, long long do_sn, float scale, int causal) {               \
        (void)B;                                                                                         \
        attention_bwd<D, BQ>(q, k, v, dout, lse, dvec, dq, dk, dv, H, N, M, q_sb, q_sh, q_sn, k_sb, k_sn, \
                             v_sb, v_sn, do_sb, do_sh, do_sn, scale, causal);                            \
    }
ATT_BWD(attention_d64_bwd_bf16, 64, 64)
ATT_BWD(attention_d128_bwd_bf16, 128, 32)
