// Fused element-wise kernels of a DiT block (FlashVSR / Wan), the work between the GEMMs.
// Every kernel computes in f32 and rounds once at its output; T = float, __half or bf16.
//
//   dit_layer_norm_*     y = LN(x) * (mul + mul_offset) + add        x f32 [rows, d] -> T
//                        (modulation: mul = scale, offset 1, add = shift; affine LN: weight, 0, bias)
//   dit_residual_*       out = x + (branch + bias) * gate            x, out f32; branch, bias T;
//                        gate f32; bias and gate may be null
//   dit_bias_gelu_*      y = gelu_tanh(x + bias)                      T -> T
//   dit_bias_gelu_fp8_*  dit_bias_gelu, then fp8_quantize_rows (kernels/fp8.cu) of its T output:
//                        e4m3 bytes [rows, d] + f32 scale per row, the same bytes and scales
//   dit_qkv_rope_*       q, k, v of self-attention from the fused QKV GEMM output [rows, 3d]:
//                        bias, RMSNorm over d (q and k), RoPE (q and k), heads-major layout
//   dit_rms_heads_*      bias + RMSNorm over d + heads-major layout (cross-attention q)
//   dit_window_means_*   mean over each 128-token window, [heads, nw*128, hd] -> f32 [nw, heads*hd]
//
// Tokens of the self-attention are in LCSA window order: window = (segment, block row, block
// column), token inside it = (t, y, x) of a 2x8x8 window.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

template <typename T> struct Cv;
template <> struct Cv<float> {
  static __device__ __forceinline__ float f(float x) { return x; }
  static __device__ __forceinline__ float t(float x) { return x; }
  static __device__ __forceinline__ void store2(float *p, float a, float b) {
    *reinterpret_cast<float2 *>(p) = make_float2(a, b);
  }
  static __device__ __forceinline__ float2 load2(const float *p) {
    return *reinterpret_cast<const float2 *>(p);
  }
};
template <> struct Cv<__half> {
  static __device__ __forceinline__ float f(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half t(float x) { return __float2half_rn(x); }
  static __device__ __forceinline__ void store2(__half *p, float a, float b) {
    *reinterpret_cast<__half2 *>(p) = __floats2half2_rn(a, b);
  }
  static __device__ __forceinline__ float2 load2(const __half *p) {
    return __half22float2(*reinterpret_cast<const __half2 *>(p));
  }
};
template <> struct Cv<__nv_bfloat16> {
  static __device__ __forceinline__ float f(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 t(float x) { return __float2bfloat16_rn(x); }
  static __device__ __forceinline__ void store2(__nv_bfloat16 *p, float a, float b) {
    *reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(a, b);
  }
  static __device__ __forceinline__ float2 load2(const __nv_bfloat16 *p) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(p));
  }
};

// Reduction over the CTA (blockDim.x a multiple of 32) with `Op` (Sum, or Max of values >= 0,
// both with identity 0); every thread gets the result. `red` holds 32 floats of shared memory;
// the leading barrier lets a CTA call this several times in a row.
struct Sum {
  static __device__ __forceinline__ float apply(float a, float b) { return a + b; }
};
struct Max {
  static __device__ __forceinline__ float apply(float a, float b) { return fmaxf(a, b); }
};
template <typename Op> __device__ __forceinline__ float block_reduce(float v, float *red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = Op::apply(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float t = lane < (int)(blockDim.x >> 5) ? red[lane] : 0.f;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) t = Op::apply(t, __shfl_xor_sync(0xffffffffu, t, o));
  return t;
}
__device__ __forceinline__ float block_sum(float v, float *red) { return block_reduce<Sum>(v, red); }

// One CTA per row; the row is kept in shared memory (d floats) for the two-pass mean/variance.
template <typename T>
__device__ __forceinline__ void layer_norm(const float *__restrict__ x, const float *__restrict__ mul,
                                           const float *__restrict__ add, float mul_offset,
                                           T *__restrict__ out, int d, float eps) {
  extern __shared__ float row[];
  __shared__ float red[32];
  const float *xr = x + (size_t)blockIdx.x * d;
  float s = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = xr[i];
    row[i] = v;
    s += v;
  }
  const float mean = block_sum(s, red) / (float)d;
  float s2 = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float c = row[i] - mean;
    s2 += c * c;
  }
  const float rstd = rsqrtf(block_sum(s2, red) / (float)d + eps);
  T *o = out + (size_t)blockIdx.x * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float y = (row[i] - mean) * rstd;
    o[i] = Cv<T>::t(y * (mul[i] + mul_offset) + add[i]);
  }
}

// Rows strided over the grid, columns over the threads.
template <typename T>
__device__ __forceinline__ void residual(const float *__restrict__ x, const T *__restrict__ branch,
                                         const T *__restrict__ bias, const float *__restrict__ gate,
                                         float *__restrict__ out, int rows, int d) {
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const size_t base = (size_t)r * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
      float b = Cv<T>::f(branch[base + c]);
      if (bias) b += Cv<T>::f(bias[c]);
      if (gate) b *= gate[c];
      out[base + c] = x[base + c] + b;
    }
  }
}

__device__ __forceinline__ float gelu_tanh(float x) {
  const float k = 0.7978845608028654f; // sqrt(2 / pi)
  return 0.5f * x * (1.f + tanhf(k * (x + 0.044715f * x * x * x)));
}

// d even; pairs of columns per thread.
template <typename T>
__device__ __forceinline__ void bias_gelu(const T *__restrict__ x, const T *__restrict__ bias,
                                          T *__restrict__ out, int rows, int d) {
  const int pairs = d / 2;
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const size_t base = (size_t)r * d;
    for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
      const float2 v = Cv<T>::load2(x + base + 2 * p);
      const float2 b = Cv<T>::load2(bias + 2 * p);
      Cv<T>::store2(out + base + 2 * p, gelu_tanh(v.x + b.x), gelu_tanh(v.y + b.y));
    }
  }
}

#define E4M3_MAX 448.0f

// bias_gelu and fp8.cu's quantize_rows in one pass, one CTA per row (d a multiple of 4): the
// GELU row is stored to shared memory through the same store2 as bias_gelu's output (rounded
// to T), then scale = amax / 448 (1 for a zero row) and q = e4m3(v / scale) as in
// quantize_rows, so the bytes and scales are those of the two kernels in a row.
template <typename T>
__device__ __forceinline__ void bias_gelu_fp8(const T *__restrict__ x, const T *__restrict__ bias,
                                              uint8_t *__restrict__ q, float *__restrict__ scale,
                                              int d) {
  extern __shared__ float row[];
  __shared__ float red[32];
  T *g = reinterpret_cast<T *>(row);
  const size_t base = (size_t)blockIdx.x * d;
  const int pairs = d / 2;
  float amax = 0.f;
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const float2 v = Cv<T>::load2(x + base + 2 * p);
    const float2 b = Cv<T>::load2(bias + 2 * p);
    Cv<T>::store2(g + 2 * p, gelu_tanh(v.x + b.x), gelu_tanh(v.y + b.y));
    const float2 r = Cv<T>::load2(g + 2 * p);
    amax = fmaxf(amax, fmaxf(fabsf(r.x), fabsf(r.y)));
  }
  // block_reduce's barriers also publish the row to the whole CTA.
  amax = block_reduce<Max>(amax, red);
  const float s = amax > 0.f ? amax / E4M3_MAX : 1.f;
  if (threadIdx.x == 0) scale[blockIdx.x] = s;
  uint32_t *qr = reinterpret_cast<uint32_t *>(q + base);
  for (int c = threadIdx.x * 4; c < d; c += blockDim.x * 4) {
    uint32_t packed = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const __nv_fp8_storage_t e =
          __nv_cvt_float_to_fp8(Cv<T>::f(g[c + i]) / s, __NV_SATFINITE, __NV_E4M3);
      packed |= (uint32_t)e << (8 * i);
    }
    qr[c / 4] = packed;
  }
}

// One CTA per token (window order). qkv row = [q | k | v] (3d, bias not yet added). Outputs
// q, k, v at out + {0, 1, 2} * heads*rows*hd, each [heads, rows, hd].
// RoPE: rcos/rsin [positions, hd/2]; pair j of a head rotates by the table of position t
// (j < pt), y (j < pt + ph) or x (otherwise), t counted from t_pos0.
template <typename T>
__device__ __forceinline__ void qkv_rope(const T *__restrict__ qkv, const T *__restrict__ bias,
                                         const T *__restrict__ wq, const T *__restrict__ wk,
                                         const float *__restrict__ rcos,
                                         const float *__restrict__ rsin, T *__restrict__ out,
                                         int rows, int d, int hd, int grid_h, int grid_w,
                                         int t_pos0, int pt, int ph, float eps) {
  extern __shared__ float sm[]; // q and k rows, 2d floats
  __shared__ float red[32];
  float *qs = sm, *ks = sm + d;
  const int n = blockIdx.x;
  const T *row = qkv + (size_t)n * 3 * d;
  const int half = hd / 2, pairs = d / 2;
  const size_t plane = (size_t)rows * d; // heads * rows * hd
  float sq = 0.f, sk = 0.f;
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const float2 q = Cv<T>::load2(row + 2 * p), bq = Cv<T>::load2(bias + 2 * p);
    const float2 k = Cv<T>::load2(row + d + 2 * p), bk = Cv<T>::load2(bias + d + 2 * p);
    const float2 v = Cv<T>::load2(row + 2 * d + 2 * p), bv = Cv<T>::load2(bias + 2 * d + 2 * p);
    const float q0 = q.x + bq.x, q1 = q.y + bq.y, k0 = k.x + bk.x, k1 = k.y + bk.y;
    qs[2 * p] = q0;
    qs[2 * p + 1] = q1;
    ks[2 * p] = k0;
    ks[2 * p + 1] = k1;
    sq += q0 * q0 + q1 * q1;
    sk += k0 * k0 + k1 * k1;
    const int h = p / half, j = p % half;
    Cv<T>::store2(out + 2 * plane + ((size_t)h * rows + n) * hd + 2 * j, v.x + bv.x, v.y + bv.y);
  }
  const float rq = rsqrtf(block_sum(sq, red) / (float)d + eps);
  const float rk = rsqrtf(block_sum(sk, red) / (float)d + eps);
  // Position of token n in the (f, h, w) grid.
  const int bw = grid_w / 8, nb = (grid_h / 8) * bw;
  const int win = n / 128, r = n % 128;
  const int seg = win / nb, rem = win % nb;
  const int tpos = t_pos0 + seg * 2 + r / 64;
  const int ypos = (rem / bw) * 8 + (r / 8) % 8;
  const int xpos = (rem % bw) * 8 + r % 8;
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int h = p / half, j = p % half;
    const int pos = j < pt ? tpos : (j < pt + ph ? ypos : xpos);
    const float c = rcos[(size_t)pos * half + j], s = rsin[(size_t)pos * half + j];
    const float2 wqp = Cv<T>::load2(wq + 2 * p), wkp = Cv<T>::load2(wk + 2 * p);
    const float q0 = qs[2 * p] * rq * wqp.x, q1 = qs[2 * p + 1] * rq * wqp.y;
    const float k0 = ks[2 * p] * rk * wkp.x, k1 = ks[2 * p + 1] * rk * wkp.y;
    const size_t o = ((size_t)h * rows + n) * hd + 2 * j;
    Cv<T>::store2(out + o, q0 * c - q1 * s, q0 * s + q1 * c);
    Cv<T>::store2(out + plane + o, k0 * c - k1 * s, k0 * s + k1 * c);
  }
}

// One CTA per token: x [rows, d] + bias, RMSNorm over d, x weight -> out [heads, rows, hd].
template <typename T>
__device__ __forceinline__ void rms_heads(const T *__restrict__ x, const T *__restrict__ bias,
                                          const T *__restrict__ w, T *__restrict__ out, int rows,
                                          int d, int hd, float eps) {
  extern __shared__ float sm[]; // d floats
  __shared__ float red[32];
  const int n = blockIdx.x;
  const T *row = x + (size_t)n * d;
  const int half = hd / 2, pairs = d / 2;
  float s = 0.f;
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const float2 v = Cv<T>::load2(row + 2 * p), b = Cv<T>::load2(bias + 2 * p);
    const float v0 = v.x + b.x, v1 = v.y + b.y;
    sm[2 * p] = v0;
    sm[2 * p + 1] = v1;
    s += v0 * v0 + v1 * v1;
  }
  const float rs = rsqrtf(block_sum(s, red) / (float)d + eps);
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int h = p / half, j = p % half;
    const float2 wp = Cv<T>::load2(w + 2 * p);
    Cv<T>::store2(out + ((size_t)h * rows + n) * hd + 2 * j, sm[2 * p] * rs * wp.x,
                  sm[2 * p + 1] * rs * wp.y);
  }
}

// Grid (windows, heads); threads over head dims; sequential f32 sum over the 128 tokens.
template <typename T>
__device__ __forceinline__ void window_means(const T *__restrict__ x, float *__restrict__ out,
                                             int windows, int hd) {
  const int win = blockIdx.x, h = blockIdx.y, heads = gridDim.y;
  const T *base = x + ((size_t)h * windows * 128 + (size_t)win * 128) * hd;
  for (int c = threadIdx.x; c < hd; c += blockDim.x) {
    float s = 0.f;
    for (int r = 0; r < 128; ++r) s += Cv<T>::f(base[(size_t)r * hd + c]);
    out[(size_t)win * heads * hd + (size_t)h * hd + c] = s / 128.f;
  }
}

#define DIT_KERNELS(NAME, T)                                                                   \
  extern "C" __global__ void dit_layer_norm_##NAME(const float *x, const float *mul,          \
                                                   const float *add, float mul_offset, T *out, \
                                                   int d, float eps) {                         \
    layer_norm<T>(x, mul, add, mul_offset, out, d, eps);                                       \
  }                                                                                            \
  extern "C" __global__ void dit_residual_##NAME(const float *x, const T *branch, const T *bias, \
                                                 const float *gate, float *out, int rows,      \
                                                 int d) {                                      \
    residual<T>(x, branch, bias, gate, out, rows, d);                                          \
  }                                                                                            \
  extern "C" __global__ void dit_bias_gelu_##NAME(const T *x, const T *bias, T *out, int rows, \
                                                  int d) {                                     \
    bias_gelu<T>(x, bias, out, rows, d);                                                       \
  }                                                                                            \
  extern "C" __global__ void dit_bias_gelu_fp8_##NAME(const T *x, const T *bias, uint8_t *q,   \
                                                      float *scale, int d) {                   \
    bias_gelu_fp8<T>(x, bias, q, scale, d);                                                    \
  }                                                                                            \
  extern "C" __global__ void dit_qkv_rope_##NAME(                                              \
      const T *qkv, const T *bias, const T *wq, const T *wk, const float *rcos,                \
      const float *rsin, T *out, int rows, int d, int hd, int grid_h, int grid_w, int t_pos0,  \
      int pt, int ph, float eps) {                                                             \
    qkv_rope<T>(qkv, bias, wq, wk, rcos, rsin, out, rows, d, hd, grid_h, grid_w, t_pos0, pt,   \
                ph, eps);                                                                      \
  }                                                                                            \
  extern "C" __global__ void dit_rms_heads_##NAME(const T *x, const T *bias, const T *w,       \
                                                  T *out, int rows, int d, int hd, float eps) { \
    rms_heads<T>(x, bias, w, out, rows, d, hd, eps);                                           \
  }                                                                                            \
  extern "C" __global__ void dit_window_means_##NAME(const T *x, float *out, int windows,      \
                                                     int hd) {                                 \
    window_means<T>(x, out, windows, hd);                                                      \
  }

DIT_KERNELS(f32, float)
DIT_KERNELS(f16, __half)
#if __CUDA_ARCH__ >= 800
DIT_KERNELS(bf16, __nv_bfloat16)
#endif
