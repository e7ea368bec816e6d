// Stride-1 k x k convolution as an implicit GEMM on tensor cores, channels-last (NHWC).
//
// GEMM view: M = output pixels (frames x H x W), N = C_out, K = taps x K_tap, tap-major and
// channel-minor, so one BK-wide K slice is BK contiguous channels of one tap: every 8 channels
// are one 16-byte cp.async from the NHWC input, zero-filled (src-size 0) outside the frame,
// past the input channels and past the last pixel. Weights are packed once on the host to
// [C_out][kh][kw][K_tap] (K_tap = C_in rounded up to a multiple of 64, zero padded).
//
// The input is addressed, never materialised:
//   * two sources concatenated on channels (channel c < C_0 from source 0, the rest from 1);
//   * a source may be read one frame back (output frame n reads its frame n-1; frame 0 reads
//     the source's `memory` frame, or zeros without one): the MemBlock's `past`;
//   * a source may pack `group` frames per stored frame in channel blocks (TGrow: frame n is
//     channel block n % group of stored frame n / group);
//   * nearest x2 upsampling (up_shift = 1): output (y, x) reads input (y/2, x/2).
// Epilogue in f32 before the one rounding: + bias[C_out] (f32), + residual (NHWC, the output's
// shape and dtype), ReLU.
//
// mma.sync m16n8k16 (f32 accumulate), ldmatrix, a STAGES-deep cp.async ring in dynamic shared
// memory; smem rows padded by 8 halves (16 bytes) so ldmatrix and cp.async are conflict-free.
// Element offsets are 64-bit; pixel indices 32-bit (the host keeps M < 2^31).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

struct ConvSrc {
  const void *ptr;       // stored frame 0, pixel 0, channel 0
  const void *memory;    // the frame read for n - shift < 0 (nullptr: zeros)
  long long frame_stride; // elements between stored frames
  long long sub_stride;   // elements between the frames packed in one stored frame
  int group;             // frames per stored frame (>= 1)
  int pix_stride;        // elements between neighbouring pixels (the stored channel count)
  int channels;          // channels this source contributes
  int shift;             // 0, or 1 (read the previous frame)
};

struct ConvParams {
  ConvSrc src[2];
  const void *weight;   // [C_out][taps * k_tap]
  const float *bias;    // [C_out] or nullptr
  const void *residual; // [M][C_out] or nullptr
  void *out;            // [M][C_out]
  int frames, height, width;   // output
  int in_height, in_width;     // sources (height >> up_shift, width >> up_shift)
  int up_shift;
  int cout, kh, kw, pad;
  int cin;   // src[0].channels + src[1].channels
  int k_tap; // multiple of BK
  int relu;
};

template <typename T> struct Elem;
template <> struct Elem<__half> {
  static __device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_f(float x) { return __float2half_rn(x); }
  static __device__ __forceinline__ float2 to_f2(uint32_t v) {
    return __half22float2(*reinterpret_cast<__half2 *>(&v));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
  }
};
template <> struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_f(float x) { return __float2bfloat16_rn(x); }
  static __device__ __forceinline__ float2 to_f2(uint32_t v) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162 *>(&v));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
  }
};

template <typename T>
__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], const uint32_t b[2]);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float c[4], const uint32_t a[4],
                                                         const uint32_t b[2]) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
               "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma16816<__half>(float c[4], const uint32_t a[4],
                                                  const uint32_t b[2]) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
               "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ uint32_t smem_u32(const void *p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}
// 16 bytes, or 16 zero bytes when !valid (src-size 0: nothing is read from gmem).
__device__ __forceinline__ void cp_async16_zfill(void *smem, const void *gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)),
               "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_u32(p)));
}

// Stored frame `f` of a source (f >= 0), or its memory frame (f < 0; nullptr = zeros).
template <typename T>
__device__ __forceinline__ const T *frame_base(const ConvSrc &s, int n) {
  const int f = n - s.shift;
  if (f < 0) return reinterpret_cast<const T *>(s.memory);
  const int stored = s.group == 1 ? f : f / s.group;
  const int sub = f - stored * s.group;
  return reinterpret_cast<const T *>(s.ptr) + (long long)stored * s.frame_stride +
         (long long)sub * s.sub_stride;
}

template <typename T, int BM, int BN, int BK, int STAGES, int WM, int WN>
__device__ __forceinline__ void conv_igemm(const ConvParams &p) {
  constexpr int THREADS = WM * WN * 32;
  constexpr int WTM = BM / WM, WTN = BN / WN;
  constexpr int MT = WTM / 16, NT = WTN / 8;
  constexpr int LDS = BK + 8; // smem row stride (halves)
  constexpr int CPR = BK / 8; // 16-byte chunks per smem row
  constexpr int ROWS_PER_PASS = THREADS / CPR;
  constexpr int A_ITERS = BM / ROWS_PER_PASS;
  constexpr int B_CHUNKS = BN * CPR;
  constexpr int B_ITERS = (B_CHUNKS + THREADS - 1) / THREADS;
  static_assert(THREADS % CPR == 0 && BM % ROWS_PER_PASS == 0, "A tile split");
  static_assert(WTM % 16 == 0 && WTN % 8 == 0 && BK % 16 == 0, "warp tile");

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T *As = reinterpret_cast<T *>(smem_raw); // [STAGES][BM][LDS]
  T *Bs = As + STAGES * BM * LDS;          // [STAGES][BN][LDS]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / WN, wn = warp % WN;
  const int n_blocks = (p.cout + BN - 1) / BN;
  const int m_block = blockIdx.x / n_blocks, n_block = blockIdx.x - m_block * n_blocks;
  const int m0 = m_block * BM, n0 = n_block * BN;
  const int hw = p.height * p.width;
  const int M = p.frames * hw;
  const T *weight = reinterpret_cast<const T *>(p.weight);
  const long long w_row = (long long)p.kh * p.kw * p.k_tap;

  // This thread's A rows: output pixel coordinates and per-source frame bases.
  const int q = tid % CPR;
  int row_y[A_ITERS], row_x[A_ITERS];
  const T *base0[A_ITERS];
  const T *base1[A_ITERS];
#pragma unroll
  for (int i = 0; i < A_ITERS; ++i) {
    const int m = m0 + tid / CPR + i * ROWS_PER_PASS;
    if (m < M) {
      const int n = m / hw, rem = m - n * hw;
      row_y[i] = rem / p.width;
      row_x[i] = rem - row_y[i] * p.width;
      base0[i] = frame_base<T>(p.src[0], n);
      base1[i] = p.src[1].channels > 0 ? frame_base<T>(p.src[1], n) : nullptr;
    } else {
      row_y[i] = -(1 << 28); // every tap falls outside the frame: zero-filled
      row_x[i] = 0;
      base0[i] = base1[i] = nullptr;
    }
  }

  const int KT = p.kh * p.kw * (p.k_tap / BK);
  int l_kt = 0, l_ty = 0, l_tx = 0, l_c0 = 0; // the loader runs STAGES-1 slices ahead

  auto load_slice = [&](int stage) {
    T *as = As + stage * BM * LDS;
    T *bs = Bs + stage * BN * LDS;
    const int c = l_c0 + q * 8;
    const bool second = c >= p.src[0].channels;
    const int cc = second ? c - p.src[0].channels : c;
    const int pix = second ? p.src[1].pix_stride : p.src[0].pix_stride;
    const bool c_ok = c < p.cin;
#pragma unroll
    for (int i = 0; i < A_ITERS; ++i) {
      const int r = tid / CPR + i * ROWS_PER_PASS;
      const int iy = row_y[i] + l_ty - p.pad, ix = row_x[i] + l_tx - p.pad;
      const T *b = second ? base1[i] : base0[i];
      const bool v = c_ok && b != nullptr && (unsigned)iy < (unsigned)p.height &&
                     (unsigned)ix < (unsigned)p.width;
      const T *src = weight; // any valid address when nothing is read
      if (v) {
        const int sy = iy >> p.up_shift, sx = ix >> p.up_shift;
        src = b + (long long)(sy * p.in_width + sx) * pix + cc;
      }
      cp_async16_zfill(as + r * LDS + q * 8, src, v);
    }
#pragma unroll
    for (int j = 0; j < B_ITERS; ++j) {
      const int idx = tid + j * THREADS;
      if (B_CHUNKS % THREADS == 0 || idx < B_CHUNKS) {
        const int r = idx / CPR, qq = idx % CPR;
        const int n = n0 + r;
        const bool v = n < p.cout;
        const T *src = v ? weight + n * w_row + (long long)l_kt * BK + qq * 8 : weight;
        cp_async16_zfill(bs + r * LDS + qq * 8, src, v);
      }
    }
    ++l_kt;
    l_c0 += BK;
    if (l_c0 == p.k_tap) {
      l_c0 = 0;
      if (++l_tx == p.kw) {
        l_tx = 0;
        ++l_ty;
      }
    }
  };

  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (l_kt < KT) load_slice(s);
    cp_async_commit();
  }

  for (int kt = 0; kt < KT; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads(); // slice kt landed; everyone is done with the stage refilled below
    if (l_kt < KT) load_slice((kt + STAGES - 1) % STAGES);
    cp_async_commit();

    const T *as = As + (kt % STAGES) * BM * LDS;
    const T *bs = Bs + (kt % STAGES) * BN * LDS;
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t af[MT][4], bf[NT][2];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
        ldmatrix_x4(af[mt], as + (wm * WTM + mt * 16 + (lane & 15)) * LDS + kk * 16 +
                                (lane >> 4) * 8);
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t r[4];
        ldmatrix_x4(r, bs + (wn * WTN + np * 16 + (lane & 7) + ((lane >> 4) << 3)) * LDS +
                           kk * 16 + ((lane >> 3) & 1) * 8);
        bf[2 * np][0] = r[0];
        bf[2 * np][1] = r[1];
        bf[2 * np + 1][0] = r[2];
        bf[2 * np + 1][1] = r[3];
      }
      if (NT & 1)
        ldmatrix_x2(bf[NT - 1], bs + (wn * WTN + (NT - 1) * 8 + (lane & 7)) * LDS + kk * 16 +
                                    ((lane >> 3) & 1) * 8);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma16816<T>(acc[mt][nt], af[mt], bf[nt]);
    }
  }
  cp_async_wait<0>();

  // Epilogue: thread holds rows g, g+8 and columns 2t, 2t+1 of each 16x8 tile.
  const int g = lane >> 2, t = lane & 3;
  T *out = reinterpret_cast<T *>(p.out);
  const T *res = reinterpret_cast<const T *>(p.residual);
  const bool even = (p.cout & 1) == 0;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = m0 + wm * WTM + mt * 16 + g + h * 8;
      if (m >= M) continue;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int col = n0 + wn * WTN + nt * 8 + 2 * t;
        if (col >= p.cout) continue;
        const bool pair = col + 1 < p.cout;
        float v0 = acc[mt][nt][2 * h], v1 = acc[mt][nt][2 * h + 1];
        const long long o = (long long)m * p.cout + col;
        if (p.bias) {
          v0 += p.bias[col];
          if (pair) v1 += p.bias[col + 1];
        }
        if (res) {
          if (pair && even) {
            const float2 r2 = Elem<T>::to_f2(*reinterpret_cast<const uint32_t *>(res + o));
            v0 += r2.x;
            v1 += r2.y;
          } else {
            v0 += Elem<T>::to_f(res[o]);
            if (pair) v1 += Elem<T>::to_f(res[o + 1]);
          }
        }
        if (p.relu) {
          v0 = fmaxf(v0, 0.f);
          v1 = fmaxf(v1, 0.f);
        }
        if (pair && even) {
          *reinterpret_cast<uint32_t *>(out + o) = Elem<T>::pack(v0, v1);
        } else {
          out[o] = Elem<T>::from_f(v0);
          if (pair) out[o + 1] = Elem<T>::from_f(v1);
        }
      }
    }
  }
}

// Tile configurations: name, BM, BN, BK, STAGES, warps along M, along N, min CTAs per SM.
// Dynamic smem = STAGES * (BM + BN) * (BK + 8) * 2 bytes (the host computes the same).
#define CONV_KERNEL(CFG, DT, T, BM, BN, BK, ST, WM, WN, MINB)                                 \
  extern "C" __global__ void __launch_bounds__(WM * WN * 32, MINB)                            \
      conv_igemm_##CFG##_##DT(const ConvParams p) {                                          \
    conv_igemm<T, BM, BN, BK, ST, WM, WN>(p);                                                 \
  }
#define CONV_CONFIGS(DT, T)                                                                   \
  CONV_KERNEL(m128n128k32s4, DT, T, 128, 128, 32, 4, 2, 4, 2)                                 \
  CONV_KERNEL(m256n128k32s3, DT, T, 256, 128, 32, 3, 4, 2, 1)                                 \
  CONV_KERNEL(m128n128k64s3, DT, T, 128, 128, 64, 3, 2, 4, 1)                                 \
  CONV_KERNEL(m128n64k32s4, DT, T, 128, 64, 32, 4, 4, 2, 2)                                   \
  CONV_KERNEL(m128n16k32s4, DT, T, 128, 16, 32, 4, 4, 1, 4)

// mma.m16n8k16, ldmatrix, cp.async and bf16 need sm_80: older targets get an empty module.
#if __CUDA_ARCH__ >= 800
CONV_CONFIGS(f16, __half)
CONV_CONFIGS(bf16, __nv_bfloat16)
#endif
