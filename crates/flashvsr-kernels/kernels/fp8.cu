// FP8 (e4m3) linears: the two passes around cuBLASLt's FP8 GEMM (src/fp8.rs).
//
//   fp8_quantize_rows_*  one CTA per row of x [rows, cols] (T = float, __half or bf16):
//                        scale[row] = amax(row) / 448 (1 for an all-zero row),
//                        q[row, c] = e4m3(x / scale), round to nearest even, saturating.
//                        Weights [out, in] (per output channel) and activations [tokens, in]
//                        (per token) both go through it.
//   fp8_rescale_*        y[r, c] = d[r, c] * sx[r] * sw[c] (+ bias[c]), f32 in, T out, rounded once.
//
// cols must be a multiple of 4 (the host asks for 16, as cuBLASLt's FP8 GEMM does).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

template <typename T> __device__ __forceinline__ float to_f32(T x);
template <> __device__ __forceinline__ float to_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f32<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

#define E4M3_MAX 448.0f

template <typename T>
__device__ void quantize_rows(const T *__restrict__ x, uint8_t *__restrict__ q,
                              float *__restrict__ scale, int cols) {
  __shared__ float red[32];
  const long row = blockIdx.x;
  const T *xr = x + row * (long)cols;
  uint32_t *qr = reinterpret_cast<uint32_t *>(q + row * (long)cols);
  float amax = 0.f;
  for (int c = threadIdx.x * 4; c < cols; c += blockDim.x * 4) {
#pragma unroll
    for (int i = 0; i < 4; ++i) amax = fmaxf(amax, fabsf(to_f32(xr[c + i])));
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) red[warp] = amax;
  __syncthreads();
  if (warp == 0) {
    amax = lane < (int)(blockDim.x >> 5) ? red[lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    if (lane == 0) red[0] = amax;
  }
  __syncthreads();
  amax = red[0];
  const float s = amax > 0.f ? amax / E4M3_MAX : 1.f;
  if (threadIdx.x == 0) scale[row] = s;
  for (int c = threadIdx.x * 4; c < cols; c += blockDim.x * 4) {
    uint32_t packed = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const __nv_fp8_storage_t b = __nv_cvt_float_to_fp8(to_f32(xr[c + i]) / s, __NV_SATFINITE, __NV_E4M3);
      packed |= (uint32_t)b << (8 * i);
    }
    qr[c / 4] = packed;
  }
}

template <typename T>
__device__ void rescale(const float *__restrict__ d, const float *__restrict__ sx,
                        const float *__restrict__ sw, const T *__restrict__ bias,
                        T *__restrict__ y, long rows, int cols) {
  const long n = rows * (long)cols;
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    const long r = i / cols;
    const int c = (int)(i - r * cols);
    float v = d[i] * sx[r] * sw[c];
    if (bias) v += to_f32(bias[c]);
    y[i] = from_f32<T>(v);
  }
}

#define FP8_KERNELS(T, SUFFIX)                                                                   \
  extern "C" __global__ void fp8_quantize_rows_##SUFFIX(const T *x, uint8_t *q, float *scale,   \
                                                         int cols) {                            \
    quantize_rows<T>(x, q, scale, cols);                                                         \
  }                                                                                              \
  extern "C" __global__ void fp8_rescale_##SUFFIX(const float *d, const float *sx,              \
                                                   const float *sw, const T *bias, T *y,        \
                                                   long rows, int cols) {                       \
    rescale<T>(d, sx, sw, bias, y, rows, cols);                                                 \
  }

FP8_KERNELS(float, f32)
FP8_KERNELS(__half, f16)
FP8_KERNELS(__nv_bfloat16, bf16)
