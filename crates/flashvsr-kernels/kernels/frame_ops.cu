// Per-frame pixel kernels at the two ends of the pipeline (all offsets 64-bit, so 4K videos
// of any length are fine):
//
// * `resample_h_u8` / `resample_v_u8`: Pillow's 8-bit separable resampling with integer
//   fixed-point windows computed on the host (one table row per output index:
//   `[first, count, w_0 .. w_{taps-1}]`, 22 fractional bits). Horizontal pass into a u8
//   intermediate (rounded and clipped), then the vertical pass: the host code's arithmetic,
//   integer for integer, so the result is bit-exact.
// * `adain_stats_<T>` + `to_rgb8_<T>`: the AdaIN colour fix and the [-1, 1] -> u8 conversion.
//   Per frame and channel sums and sums of squares in f64 (decoded frame and LQ reference),
//   as fixed per-chunk partials (deterministic), then one pass that applies the affine map
//   with the host's f32 operations in the host's order, clamps, rounds to the video dtype and
//   writes interleaved RGB bytes.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define PRECISION_BITS 22

extern "C" __global__ void resample_h_u8(const uint8_t *__restrict__ src, long long in_w,
                                         const int *__restrict__ table, int row_len,
                                         long long out_w, uint8_t *__restrict__ mid) {
  const long long x = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long y = blockIdx.y;
  if (x >= out_w) return;
  const int *win = table + x * row_len;
  const int first = win[0], count = win[1];
  const uint8_t *row = src + (y * in_w + first) * 3;
  int acc[3] = {1 << (PRECISION_BITS - 1), 1 << (PRECISION_BITS - 1), 1 << (PRECISION_BITS - 1)};
  for (int k = 0; k < count; ++k) {
    const int w = win[2 + k];
    acc[0] += (int)row[k * 3 + 0] * w;
    acc[1] += (int)row[k * 3 + 1] * w;
    acc[2] += (int)row[k * 3 + 2] * w;
  }
  uint8_t *o = mid + (y * out_w + x) * 3;
  for (int c = 0; c < 3; ++c) o[c] = (uint8_t)min(max(acc[c] >> PRECISION_BITS, 0), 255);
}

// mid [in_h, stride] bytes (stride = 3 * width) -> out [out_h, stride].
extern "C" __global__ void resample_v_u8(const uint8_t *__restrict__ mid, long long stride,
                                         const int *__restrict__ table, int row_len,
                                         uint8_t *__restrict__ out) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long yy = blockIdx.y;
  if (i >= stride) return;
  const int *win = table + yy * row_len;
  const int first = win[0], count = win[1];
  int acc = 1 << (PRECISION_BITS - 1);
  for (int k = 0; k < count; ++k) acc += (int)mid[(first + k) * stride + i] * win[2 + k];
  out[yy * stride + i] = (uint8_t)min(max(acc >> PRECISION_BITS, 0), 255);
}

__device__ __forceinline__ float load_f(const float *p) { return *p; }
__device__ __forceinline__ float load_f(const __half *p) { return __half2float(*p); }
__device__ __forceinline__ float load_f(const __nv_bfloat16 *p) { return __bfloat162float(*p); }

// Rounds an f32 value to the given dtype and back: 0 f32, 1 f16, 2 bf16 (round to nearest even,
// as Candle's casts do).
__device__ __forceinline__ float round_to(float x, int dtype) {
  if (dtype == 1) return __half2float(__float2half_rn(x));
  if (dtype == 2) return __bfloat162float(__float2bfloat16_rn(x));
  return x;
}

// Upstream's u8 -> [-1, 1]: (u8 / 255) * 2 - 1 in f32, then the model dtype.
__device__ __forceinline__ float unit_of_u8(uint8_t v, int dtype) {
  return round_to(__fsub_rn(__fmul_rn(__fdiv_rn((float)v, 255.0f), 2.0f), 1.0f), dtype);
}

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// Block-wide sums of 6 values; thread 0 gets the totals (fixed order: deterministic).
__device__ void block_sum6(double v[6], double out[6]) {
  __shared__ double part[32][6];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int j = 0; j < 6; ++j) v[j] = warp_sum(v[j]);
  if (lane == 0)
    for (int j = 0; j < 6; ++j) part[warp][j] = v[j];
  __syncthreads();
  if (threadIdx.x == 0) {
    const int warps = (blockDim.x + 31) >> 5;
    for (int j = 0; j < 6; ++j) {
      double s = 0.0;
      for (int w = 0; w < warps; ++w) s += part[w][j];
      out[j] = s;
    }
  }
}

// Strides (elements) of the decoded video [C, T, H, W] and of the LQ frames [T, H, W, C].
struct VideoStrides {
  long long c, t, h, w;
};

// grid (chunks, frames, 2): z = 0 the decoded video, z = 1 the LQ u8 frames. Each block sums
// rows [chunk*H/chunks, (chunk+1)*H/chunks) of one frame; partials [2][frames][chunks][6] =
// (sum c0..c2, sum of squares c0..c2).
template <typename T>
__device__ void adain_stats(const T *__restrict__ hq, VideoStrides hs, const uint8_t *__restrict__ lq,
                            VideoStrides ls, int lq_dtype, long long height, long long width,
                            double *__restrict__ partials) {
  const int chunks = gridDim.x, chunk = blockIdx.x, frames = gridDim.y;
  const long long t = blockIdx.y;
  const long long y0 = height * chunk / chunks, y1 = height * (chunk + 1) / chunks;
  double acc[6] = {0, 0, 0, 0, 0, 0};
  for (long long y = y0; y < y1; ++y) {
    for (long long x = threadIdx.x; x < width; x += blockDim.x) {
      for (int c = 0; c < 3; ++c) {
        float v;
        if (blockIdx.z == 0)
          v = load_f(hq + c * hs.c + t * hs.t + y * hs.h + x * hs.w);
        else
          v = unit_of_u8(lq[t * ls.t + y * ls.h + x * ls.w + c * ls.c], lq_dtype);
        acc[c] += (double)v;
        acc[3 + c] += (double)v * (double)v;
      }
    }
  }
  double total[6];
  block_sum6(acc, total);
  if (threadIdx.x == 0) {
    double *p = partials + (((long long)blockIdx.z * frames + t) * chunks + chunk) * 6;
    for (int j = 0; j < 6; ++j) p[j] = total[j];
  }
}

// grid (rows, frames). adain = 0: clamp to [-1, 1] and convert; adain = 1: the colour fix first.
// out [frames, H, W, 3] u8.
template <typename T>
__device__ void to_rgb8(const T *__restrict__ hq, VideoStrides hs, const double *__restrict__ partials,
                        int chunks, int adain, int out_dtype, long long height, long long width,
                        uint8_t *__restrict__ out) {
  __shared__ double sums[12];
  __shared__ float mean[2][3], stdv[2][3];
  const int frames = gridDim.y;
  const long long t = blockIdx.y, y = blockIdx.x;
  if (adain) {
    // Thread j < 12: source j / 6, value j % 6, summed over the chunks in order.
    if (threadIdx.x < 12) {
      const int src = threadIdx.x / 6, j = threadIdx.x % 6;
      const double *p = partials + ((long long)src * frames + t) * chunks * 6 + j;
      double s = 0.0;
      for (int k = 0; k < chunks; ++k) s += p[k * 6];
      sums[threadIdx.x] = s;
    }
    __syncthreads();
    if (threadIdx.x < 6) {
      const int src = threadIdx.x / 3, c = threadIdx.x % 3;
      const double n = (double)(height * width);
      const double m = sums[src * 6 + c] / n;
      const double var = fmax(sums[src * 6 + 3 + c] / n - m * m, 0.0);
      mean[src][c] = (float)m;
      // The biased variance plus upstream's eps, then sqrt, in f32.
      stdv[src][c] = __fsqrt_rn(__fadd_rn((float)var, 1e-5f));
    }
    __syncthreads();
  }
  for (long long x = threadIdx.x; x < width; x += blockDim.x) {
    uint8_t *o = out + ((t * height + y) * width + x) * 3;
    for (int c = 0; c < 3; ++c) {
      float v = load_f(hq + c * hs.c + t * hs.t + y * hs.h + x * hs.w);
      if (adain) {
        // (x - mean_hq) / std_hq * std_lq + mean_lq, one rounding per operation.
        v = __fadd_rn(__fmul_rn(__fdiv_rn(__fsub_rn(v, mean[0][c]), stdv[0][c]), stdv[1][c]),
                      mean[1][c]);
        v = fminf(fmaxf(v, -1.0f), 1.0f);
        v = round_to(v, out_dtype);
      }
      v = fminf(fmaxf(v, -1.0f), 1.0f);
      // ((x + 1) * 127.5).clip(0, 255), truncated.
      v = fminf(fmaxf(__fmul_rn(__fadd_rn(v, 1.0f), 127.5f), 0.0f), 255.0f);
      o[c] = (uint8_t)v;
    }
  }
}

#define FRAME_OPS(SUFFIX, T)                                                                     \
  extern "C" __global__ void adain_stats_##SUFFIX(                                               \
      const T *hq, long long hc, long long ht, long long hh, long long hw, const uint8_t *lq,    \
      long long lc, long long lt, long long lh, long long lw, int lq_dtype, long long height,    \
      long long width, double *partials) {                                                       \
    adain_stats<T>(hq, VideoStrides{hc, ht, hh, hw}, lq, VideoStrides{lc, lt, lh, lw}, lq_dtype, \
                   height, width, partials);                                                     \
  }                                                                                              \
  extern "C" __global__ void to_rgb8_##SUFFIX(                                                   \
      const T *hq, long long hc, long long ht, long long hh, long long hw,                       \
      const double *partials, int chunks, int adain, int out_dtype, long long height,            \
      long long width, uint8_t *out) {                                                           \
    to_rgb8<T>(hq, VideoStrides{hc, ht, hh, hw}, partials, chunks, adain, out_dtype, height,     \
               width, out);                                                                      \
  }

FRAME_OPS(f32, float)
FRAME_OPS(f16, __half)
FRAME_OPS(bf16, __nv_bfloat16)
