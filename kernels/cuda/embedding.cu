// Embedding gather (forward) and scatter-add (backward).
//
// ids: (n_ids) u32, table: (vocab, dim) contiguous, out: (n_ids, dim) contiguous.
// One block per id (grid-stride over ids: grid.x = min(n_ids, 65535) is fine), threads over dim
// (blockDim.x: any, suggested 128 or dim/8 rounded up to 32). Ids >= vocab are invalid: the forward
// writes a zero row and the backward drops them (the engine validates ids on the host).
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void embedding_fwd(const uint32_t* __restrict__ ids, const T* __restrict__ table,
                                              T* __restrict__ out, int n_ids, int dim, int vocab) {
    const bool vec = vec8_ok(table, dim) && aligned16(out);
    for (int r = blockIdx.x; r < n_ids; r += gridDim.x) {
        const uint32_t id = ids[r];
        T* dst = out + (long long)r * dim;
        if (id >= (uint32_t)vocab) {
            for (int c = threadIdx.x; c < dim; c += blockDim.x) dst[c] = from_f32<T>(0.0f);
            continue;
        }
        const T* src = table + (long long)id * dim;
        if (vec) {
            for (int c = threadIdx.x * 8; c < dim; c += blockDim.x * 8)
                *reinterpret_cast<uint4*>(dst + c) = *reinterpret_cast<const uint4*>(src + c);
            // f32 rows: 8 elements are 32 bytes, copy the second half
            if (sizeof(T) == 4)
                for (int c = threadIdx.x * 8; c < dim; c += blockDim.x * 8)
                    *reinterpret_cast<uint4*>(dst + c + 4) = *reinterpret_cast<const uint4*>(src + c + 4);
        } else {
            for (int c = threadIdx.x; c < dim; c += blockDim.x) dst[c] = src[c];
        }
    }
}

extern "C" __global__ void embedding_fwd_bf16(const uint32_t* ids, const bf16* table, bf16* out, int n_ids, int dim,
                                              int vocab) {
    embedding_fwd<bf16>(ids, table, out, n_ids, dim, vocab);
}
extern "C" __global__ void embedding_fwd_f32(const uint32_t* ids, const float* table, float* out, int n_ids, int dim,
                                             int vocab) {
    embedding_fwd<float>(ids, table, out, n_ids, dim, vocab);
}

// dtable[ids[r], c] += dout[r, c] with f32 atomics; dtable (vocab, dim) f32 must be zeroed (or hold
// the gradient to accumulate into). Repeated ids make the summation order nondeterministic.
template <typename T>
__device__ __forceinline__ void embedding_bwd(const uint32_t* __restrict__ ids, const T* __restrict__ dout,
                                              float* __restrict__ dtable, int n_ids, int dim, int vocab) {
    for (int r = blockIdx.x; r < n_ids; r += gridDim.x) {
        const uint32_t id = ids[r];
        if (id >= (uint32_t)vocab) continue;
        const T* src = dout + (long long)r * dim;
        float* dst = dtable + (long long)id * dim;
        for (int c = threadIdx.x; c < dim; c += blockDim.x) atomicAdd(dst + c, to_f32(src[c]));
    }
}

extern "C" __global__ void embedding_bwd_bf16(const uint32_t* ids, const bf16* dout, float* dtable, int n_ids, int dim,
                                              int vocab) {
    embedding_bwd<bf16>(ids, dout, dtable, n_ids, dim, vocab);
}
extern "C" __global__ void embedding_bwd_f32(const uint32_t* ids, const float* dout, float* dtable, int n_ids, int dim,
                                             int vocab) {
    embedding_bwd<float>(ids, dout, dtable, n_ids, dim, vocab);
}
