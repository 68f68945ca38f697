// bf16 tensor-core GEMM:  C = alpha * op(A) * op(B) + beta * C   (f32 accumulation), batched.
//
// Variants (op(A) is M x K, op(B) is K x N, C is M x N row-major with row stride ldc):
//   nn: A (M, K) row-major, lda >= K;  B (K, N) row-major, ldb >= N      C = A B
//   nt: A (M, K) row-major, lda >= K;  B (N, K) row-major, ldb >= K      C = A B^T   (x W^T)
//   tn: A (K, M) row-major, lda >= M;  B (K, N) row-major, ldb >= N      C = A^T B   (dW = dY^T X)
// Batch b = blockIdx.z uses A + b*stride_a, B + b*stride_b, C + b*stride_c (a stride may be 0 to
// broadcast). beta == 0 never reads C (it may hold garbage / NaN).
//
// Kernels (<v> = nn | nt | tn; `_f32out` variants write f32 C, the others bf16 C):
//   matmul_<v>_bf16[_f32out]           128x128x32 tile, 256 threads, 4-stage cp.async pipeline,
//                                      81920 B of DYNAMIC shared memory (set
//                                      CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES to 81920 once)
//   matmul_<v>_bf16_64[_f32out]        64x64x32 tile, 128 threads, 3 stages, 30720 B static smem
//   matmul_<v>_bf16_unaligned[_f32out] 64x64x32 tile, 128 threads, plain loads, 20480 B static smem
// Grid: (ceil(N / BN), ceil(M / BM), batch); block: (threads, 1, 1).
//
// Alignment: the cp.async kernels (first two) need lda, ldb, ldc, stride_a, stride_b, stride_c all
// multiples of 8 elements and A, B, C 16-byte aligned. M, N, K are then arbitrary (tiles are
// predicated and zero-filled per 16-byte chunk; stores are guarded). Anything else -> `_unaligned`,
// which has no alignment requirement at all.
//
// Fragment layouts: kernels/README.md, "Tensor-core fragments" (mma.sync m16n8k16 row.col, ldmatrix x4 for A,
// B given as B^T rows); operands stored k-outer in memory (A of tn, B of nn / tn) are read with
// ldmatrix .trans. Shared-memory rows are padded by 8 elements (16 B) so ldmatrix is conflict-free.
#include "common.cuh"

#define MM_PAD 8

template <int BM, int BN, int BK, int WM, int WN, int STAGES, bool A_KMAJ, bool B_KMAJ, bool ALIGNED>
struct Gemm {
    static constexpr int THREADS = WM * WN * 32;
    static constexpr int WTM = BM / WM, WTN = BN / WN;  // warp tile
    static constexpr int MT = WTM / 16, NT = WTN / 8;   // mma tiles per warp
    static constexpr int A_LD = A_KMAJ ? BK + MM_PAD : BM + MM_PAD;
    static constexpr int B_LD = B_KMAJ ? BK + MM_PAD : BN + MM_PAD;
    // one stage per operand, sized for either layout so the smem size only depends on the tile
    static constexpr int A_STAGE = (BM * (BK + MM_PAD) > BK * (BM + MM_PAD)) ? BM * (BK + MM_PAD) : BK * (BM + MM_PAD);
    static constexpr int B_STAGE = (BN * (BK + MM_PAD) > BK * (BN + MM_PAD)) ? BN * (BK + MM_PAD) : BK * (BN + MM_PAD);
    static constexpr int SMEM_ELEMS = STAGES * (A_STAGE + B_STAGE);
    static_assert(MT >= 1 && NT % 2 == 0 && BK % 16 == 0, "bad tile");

    // Copies the (rows x BK) [k-major] or (BK x rows) [outer-major] tile at (row0, k0) of an operand
    // stored k-major ((rows, K), ld) or outer-major ((K, rows), ld) into shared memory at dst.
    template <bool KMAJ, int ROWS>
    __device__ __forceinline__ static void load_tile(bf16* dst, const bf16* src, int ld, int rows, int K, int row0,
                                                     int k0) {
        constexpr int LDS = KMAJ ? BK + MM_PAD : ROWS + MM_PAD;
        if (ALIGNED) {
            constexpr int CPR = KMAJ ? BK / 8 : ROWS / 8;  // 16-byte chunks per smem row
            constexpr int TOTAL = (KMAJ ? ROWS : BK) * CPR;
#pragma unroll
            for (int idx = threadIdx.x; idx < TOTAL; idx += THREADS) {
                const int sr = idx / CPR, sc = (idx % CPR) * 8;
                // (outer, k) coordinates of the chunk's first element and how many elements are valid
                const int g_outer = KMAJ ? row0 + sr : row0 + sc;
                const int g_k = KMAJ ? k0 + sc : k0 + sr;
                int valid;
                const bf16* p;
                if (KMAJ) {
                    valid = g_outer < rows ? min(max(K - g_k, 0), 8) : 0;
                    p = src + (long long)g_outer * ld + g_k;
                } else {
                    valid = g_k < K ? min(max(rows - g_outer, 0), 8) : 0;
                    p = src + (long long)g_k * ld + g_outer;
                }
                cp_async16(smem_u32(dst + sr * LDS + sc), valid > 0 ? p : src, valid * 2);
            }
        } else {
            constexpr int W = KMAJ ? BK : ROWS;
            constexpr int TOTAL = (KMAJ ? ROWS : BK) * W;
            for (int idx = threadIdx.x; idx < TOTAL; idx += THREADS) {
                const int sr = idx / W, sc = idx % W;
                const int g_outer = KMAJ ? row0 + sr : row0 + sc;
                const int g_k = KMAJ ? k0 + sc : k0 + sr;
                bf16 v = __float2bfloat16_rn(0.0f);
                if (g_outer < rows && g_k < K)
                    v = KMAJ ? src[(long long)g_outer * ld + g_k] : src[(long long)g_k * ld + g_outer];
                dst[sr * LDS + sc] = v;
            }
        }
    }

    template <typename OutT>
    __device__ __forceinline__ static void run(bf16* smem, const bf16* A, const bf16* B, OutT* C, int M, int N, int K,
                                               int lda, int ldb, int ldc, long long stride_a, long long stride_b,
                                               long long stride_c, float alpha, float beta) {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const int wm0 = (warp / WN) * WTM, wn0 = (warp % WN) * WTN;
        const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
        A += blockIdx.z * stride_a;
        B += blockIdx.z * stride_b;
        C += blockIdx.z * stride_c;
        bf16* sA = smem;
        bf16* sB = smem + STAGES * A_STAGE;

        float acc[MT][NT][4];
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

        const int KT = (K + BK - 1) / BK;
#pragma unroll
        for (int s = 0; s < STAGES - 1; ++s) {
            if (s < KT) {
                load_tile<A_KMAJ, BM>(sA + s * A_STAGE, A, lda, M, K, m0, s * BK);
                load_tile<B_KMAJ, BN>(sB + s * B_STAGE, B, ldb, N, K, n0, s * BK);
            }
            cp_async_commit();
        }

        for (int kt = 0; kt < KT; ++kt) {
            cp_async_wait<STAGES - 2>();
            __syncthreads();  // tile kt landed for everyone; everyone is done with tile kt-1's buffer
            const int nk = kt + STAGES - 1;
            if (nk < KT) {
                load_tile<A_KMAJ, BM>(sA + (nk % STAGES) * A_STAGE, A, lda, M, K, m0, nk * BK);
                load_tile<B_KMAJ, BN>(sB + (nk % STAGES) * B_STAGE, B, ldb, N, K, n0, nk * BK);
            }
            cp_async_commit();

            const bf16* a = sA + (kt % STAGES) * A_STAGE;
            const bf16* b = sB + (kt % STAGES) * B_STAGE;
#pragma unroll
            for (int kk = 0; kk < BK; kk += 16) {
                uint32_t af[MT][4], bfr[NT][2];
#pragma unroll
                for (int i = 0; i < MT; ++i) {
                    if (A_KMAJ) {
                        const int r = wm0 + 16 * i + (lane & 15), c = kk + 8 * (lane >> 4);
                        ldmatrix_x4(af[i], smem_u32(a + r * A_LD + c));
                    } else {
                        const int r = kk + (lane & 7) + 8 * (lane >> 4), c = wm0 + 16 * i + 8 * ((lane >> 3) & 1);
                        ldmatrix_x4_trans(af[i], smem_u32(a + r * A_LD + c));
                    }
                }
#pragma unroll
                for (int j = 0; j < NT; j += 2) {
                    uint32_t t[4];
                    if (B_KMAJ) {
                        const int r = wn0 + 8 * j + (lane & 7) + 8 * (lane >> 4), c = kk + 8 * ((lane >> 3) & 1);
                        ldmatrix_x4(t, smem_u32(b + r * B_LD + c));
                    } else {
                        const int r = kk + (lane & 7) + 8 * ((lane >> 3) & 1), c = wn0 + 8 * j + 8 * (lane >> 4);
                        ldmatrix_x4_trans(t, smem_u32(b + r * B_LD + c));
                    }
                    bfr[j][0] = t[0];
                    bfr[j][1] = t[1];
                    bfr[j + 1][0] = t[2];
                    bfr[j + 1][1] = t[3];
                }
#pragma unroll
                for (int i = 0; i < MT; ++i)
#pragma unroll
                    for (int j = 0; j < NT; ++j) mma_bf16_16816(acc[i][j], af[i], bfr[j][0], bfr[j][1]);
            }
        }
        cp_async_wait<0>();

        // epilogue: c0,c1 -> (row g, cols 2q, 2q+1), c2,c3 -> (row g+8, same cols)
        const bool pair_ok = ALIGNED;  // ldc % 8 == 0 and C 16-byte aligned -> (row, even col) is 4/8-byte aligned
#pragma unroll
        for (int i = 0; i < MT; ++i) {
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                const int col = n0 + wn0 + 8 * j + 2 * (lane & 3);
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int row = m0 + wm0 + 16 * i + (lane >> 2) + 8 * h;
                    if (row >= M) continue;
                    OutT* crow = C + (long long)row * ldc;
                    float v0 = alpha * acc[i][j][2 * h], v1 = alpha * acc[i][j][2 * h + 1];
                    if (pair_ok && col + 1 < N) {
                        if (beta != 0.0f) {
                            v0 = fmaf(beta, to_f32(crow[col]), v0);
                            v1 = fmaf(beta, to_f32(crow[col + 1]), v1);
                        }
                        store_pair(crow + col, v0, v1);
                    } else {
                        if (col < N) crow[col] = from_f32<OutT>(beta != 0.0f ? fmaf(beta, to_f32(crow[col]), v0) : v0);
                        if (col + 1 < N)
                            crow[col + 1] =
                                from_f32<OutT>(beta != 0.0f ? fmaf(beta, to_f32(crow[col + 1]), v1) : v1);
                    }
                }
            }
        }
    }

    __device__ __forceinline__ static void store_pair(bf16* p, float a, float b) {
        *reinterpret_cast<uint32_t*>(p) = pack_bf16x2(a, b);
    }
    __device__ __forceinline__ static void store_pair(float* p, float a, float b) {
        *reinterpret_cast<float2*>(p) = make_float2(a, b);
    }
};

// Tile configurations: L = 128x128x32, 8 warps (2x4, warp tile 64x32), 4 stages, dynamic smem;
// S = 64x64x32, 4 warps (2x2, warp tile 32x32), 3 stages; U = S with plain loads, 2 stages.
template <bool AK, bool BK_>
using GemmL = Gemm<128, 128, 32, 2, 4, 4, AK, BK_, true>;
template <bool AK, bool BK_>
using GemmS = Gemm<64, 64, 32, 2, 2, 3, AK, BK_, true>;
template <bool AK, bool BK_>
using GemmU = Gemm<64, 64, 32, 2, 2, 2, AK, BK_, false>;

#define MM_ARGS                                                                                          \
    const bf16 *A, const bf16 *B, OUT_T *C, int M, int N, int K, int lda, int ldb, int ldc,              \
        long long stride_a, long long stride_b, long long stride_c, float alpha, float beta
#define MM_PASS A, B, C, M, N, K, lda, ldb, ldc, stride_a, stride_b, stride_c, alpha, beta

#define MM_DYN(NAME, G)                                                                                  \
    extern "C" __global__ void __launch_bounds__(G::THREADS) NAME(MM_ARGS) {                             \
        extern __shared__ uint4 mm_dyn_smem[];                                                           \
        G::template run<OUT_T>(reinterpret_cast<bf16*>(mm_dyn_smem), MM_PASS);                                    \
    }
#define MM_STATIC(NAME, G)                                                                               \
    extern "C" __global__ void __launch_bounds__(G::THREADS) NAME(MM_ARGS) {                             \
        __shared__ uint4 mm_smem[G::SMEM_ELEMS * 2 / 16];                                                \
        G::template run<OUT_T>(reinterpret_cast<bf16*>(mm_smem), MM_PASS);                                        \
    }

// A is k-major for nn / nt, B is k-major for nt only.
typedef GemmL<true, false> GL_nn;
typedef GemmL<true, true> GL_nt;
typedef GemmL<false, false> GL_tn;
typedef GemmS<true, false> GS_nn;
typedef GemmS<true, true> GS_nt;
typedef GemmS<false, false> GS_tn;
typedef GemmU<true, false> GU_nn;
typedef GemmU<true, true> GU_nt;
typedef GemmU<false, false> GU_tn;

#define OUT_T bf16
MM_DYN(matmul_nn_bf16, GL_nn)
MM_DYN(matmul_nt_bf16, GL_nt)
MM_DYN(matmul_tn_bf16, GL_tn)
MM_STATIC(matmul_nn_bf16_64, GS_nn)
MM_STATIC(matmul_nt_bf16_64, GS_nt)
MM_STATIC(matmul_tn_bf16_64, GS_tn)
MM_STATIC(matmul_nn_bf16_unaligned, GU_nn)
MM_STATIC(matmul_nt_bf16_unaligned, GU_nt)
MM_STATIC(matmul_tn_bf16_unaligned, GU_tn)
#undef OUT_T
#define OUT_T float
MM_DYN(matmul_nn_bf16_f32out, GL_nn)
MM_DYN(matmul_nt_bf16_f32out, GL_nt)
MM_DYN(matmul_tn_bf16_f32out, GL_tn)
MM_STATIC(matmul_nn_bf16_64_f32out, GS_nn)
MM_STATIC(matmul_nt_bf16_64_f32out, GS_nt)
MM_STATIC(matmul_tn_bf16_64_f32out, GS_tn)
MM_STATIC(matmul_nn_bf16_unaligned_f32out, GU_nn)
MM_STATIC(matmul_nt_bf16_unaligned_f32out, GU_nt)
MM_STATIC(matmul_tn_bf16_unaligned_f32out, GU_tn)
#undef OUT_T
