// SwiGLU on the fused projection: out = silu(gate) * x, where x and gate are two column ranges of the
// same row of P (rows, ld): x = P[r, x_off .. x_off+f), gate = P[r, gate_off .. gate_off+f).
// out / dout: (rows, f) contiguous. The backward writes dx and dgate into a buffer with the same kind
// of layout (row stride ld_d, column offsets dx_off, dgate_off), e.g. straight into the gradient of
// the fused projection output.
//
// One block per row (grid-stride over rows; grid.x = min(rows, 65535)), threads over columns
// (blockDim.x any, suggested 256). 8 elements per access when all strides/offsets are multiples of 8
// and the pointers are 16-byte aligned.
#include "common.cuh"

__device__ __forceinline__ float sigmoidf_(float a) { return 1.0f / (1.0f + expf(-a)); }

template <typename T>
__device__ __forceinline__ void swiglu_fwd(const T* __restrict__ p, int ld, int x_off, int gate_off,
                                           T* __restrict__ out, int rows, int f) {
    const bool vec = ld % 8 == 0 && x_off % 8 == 0 && gate_off % 8 == 0 && vec8_ok(p, f) && vec8_ok(out, f);
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = p + (long long)r * ld + x_off;
        const T* gr = p + (long long)r * ld + gate_off;
        T* o = out + (long long)r * f;
        if (vec) {
            for (int c = threadIdx.x * 8; c < f; c += blockDim.x * 8) {
                float xv[8], gv[8];
                load8(xr + c, xv);
                load8(gr + c, gv);
#pragma unroll
                for (int j = 0; j < 8; ++j) xv[j] *= gv[j] * sigmoidf_(gv[j]);
                store8(o + c, xv);
            }
        } else {
            for (int c = threadIdx.x; c < f; c += blockDim.x) {
                const float g = to_f32(gr[c]);
                o[c] = from_f32<T>(to_f32(xr[c]) * g * sigmoidf_(g));
            }
        }
    }
}

// dx = dout * silu(gate);  dgate = dout * x * s * (1 + gate * (1 - s)),  s = sigmoid(gate)
template <typename T>
__device__ __forceinline__ void swiglu_bwd(const T* __restrict__ p, int ld, int x_off, int gate_off,
                                           const T* __restrict__ dout, T* __restrict__ dp, int ld_d, int dx_off,
                                           int dgate_off, int rows, int f) {
    const bool vec = ld % 8 == 0 && x_off % 8 == 0 && gate_off % 8 == 0 && ld_d % 8 == 0 && dx_off % 8 == 0 &&
                     dgate_off % 8 == 0 && vec8_ok(p, f) && vec8_ok(dout, f) && aligned16(dp);
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = p + (long long)r * ld + x_off;
        const T* gr = p + (long long)r * ld + gate_off;
        const T* dor = dout + (long long)r * f;
        T* dxr = dp + (long long)r * ld_d + dx_off;
        T* dgr = dp + (long long)r * ld_d + dgate_off;
        if (vec) {
            for (int c = threadIdx.x * 8; c < f; c += blockDim.x * 8) {
                float xv[8], gv[8], dv[8];
                load8(xr + c, xv);
                load8(gr + c, gv);
                load8(dor + c, dv);
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const float s = sigmoidf_(gv[j]);
                    const float dx = dv[j] * gv[j] * s;
                    gv[j] = dv[j] * xv[j] * s * (1.0f + gv[j] * (1.0f - s));
                    xv[j] = dx;
                }
                store8(dxr + c, xv);
                store8(dgr + c, gv);
            }
        } else {
            for (int c = threadIdx.x; c < f; c += blockDim.x) {
                const float x = to_f32(xr[c]), g = to_f32(gr[c]), d = to_f32(dor[c]);
                const float s = sigmoidf_(g);
                dxr[c] = from_f32<T>(d * g * s);
                dgr[c] = from_f32<T>(d * x * s * (1.0f + g * (1.0f - s)));
            }
        }
    }
}

extern "C" __global__ void swiglu_fwd_bf16(const bf16* p, int ld, int x_off, int gate_off, bf16* out, int rows, int f) {
    swiglu_fwd<bf16>(p, ld, x_off, gate_off, out, rows, f);
}
extern "C" __global__ void swiglu_fwd_f32(const float* p, int ld, int x_off, int gate_off, float* out, int rows,
                                          int f) {
    swiglu_fwd<float>(p, ld, x_off, gate_off, out, rows, f);
}
extern "C" __global__ void swiglu_bwd_bf16(const bf16* p, int ld, int x_off, int gate_off, const bf16* dout,
                                           bf16* dp, int ld_d, int dx_off, int dgate_off, int rows, int f) {
    swiglu_bwd<bf16>(p, ld, x_off, gate_off, dout, dp, ld_d, dx_off, dgate_off, rows, f);
}
extern "C" __global__ void swiglu_bwd_f32(const float* p, int ld, int x_off, int gate_off, const float* dout,
                                          float* dp, int ld_d, int dx_off, int dgate_off, int rows, int f) {
    swiglu_bwd<float>(p, ld, x_off, gate_off, dout, dp, ld_d, dx_off, dgate_off, rows, f);
}
