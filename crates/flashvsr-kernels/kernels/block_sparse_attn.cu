// Block-sparse attention forward (FlashVSR LCSA), flash-attention style.
//
// Layout (all contiguous, row-major):
//   q    [heads, q_tokens, D]      k, v [heads, k_tokens, D]
//   out  element (h, token, d) at h * out_head_stride + token * out_row_stride + d:
//        [heads, q_tokens, D] (q_tokens*D, D) or token-major [q_tokens, heads*D] (D, heads*D)
//   mask [heads, q_tokens/128, k_tokens/128] u8 (non-zero = key block attended)
// One CTA per (query block of 128 tokens, head); it walks the selected key blocks with an
// online softmax in f32 (base-2 exponent, scores pre-multiplied by scale*log2(e)).
// A query block without any selected key block writes exactly 0.
//
// Three variants:
//   bsa_scalar_*  every dtype; two threads per query row, plain f32 FMAs. Reference-grade.
//   bsa_mma_*     bf16/f16; 8 warps x 16 query rows, tensor cores (mma.sync m16n8k16, f32
//                 accumulate). Needs 16-byte aligned k/v rows (checked on the host).
//   bsa_mma2_*    bsa_mma with a cp.async double-buffered K/V pipeline and ldmatrix.trans for V;
//                 dynamic shared memory (the host raises the limit above 48 KB for D = 128).

#include "bsa_common.cuh"

#define BSA_BLOCK 128
#define BSA_THREADS 256

// ---------------------------------------------------------------------------------------------
// Scalar variant.
// ---------------------------------------------------------------------------------------------
#define SC_CHUNK 32 // keys staged in shared memory at a time

template <typename T, int D>
__device__ __forceinline__ void bsa_scalar(const T *__restrict__ q, const T *__restrict__ k,
                                           const T *__restrict__ v,
                                           const uint8_t *__restrict__ mask, T *__restrict__ out,
                                           int q_tokens, int k_tokens, float scale_log2,
                                           long long out_head_stride, long long out_row_stride) {
  constexpr int DPT = D / 2; // dims per thread; thread `half` owns dims 2*i + half
  __shared__ float ks[SC_CHUNK][D];
  __shared__ float vs[SC_CHUNK][D];
  const int nq = q_tokens / BSA_BLOCK, nk = k_tokens / BSA_BLOCK;
  const int qb = blockIdx.x, h = blockIdx.y;
  const int tid = threadIdx.x, row = tid >> 1, half = tid & 1;

  const size_t qrow = (size_t)h * q_tokens + (size_t)qb * BSA_BLOCK + row;
  const T *qp = q + qrow * D;
  float qr[DPT], acc[DPT];
#pragma unroll
  for (int i = 0; i < DPT; ++i) {
    qr[i] = Conv<T>::to_f(qp[2 * i + half]) * scale_log2;
    acc[i] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  const uint8_t *mrow = mask + ((size_t)h * nq + qb) * nk;
  const T *kh = k + (size_t)h * k_tokens * D;
  const T *vh = v + (size_t)h * k_tokens * D;

  for (int kb = 0; kb < nk; ++kb) {
    if (!mrow[kb]) continue; // uniform over the CTA
    for (int c = 0; c < BSA_BLOCK; c += SC_CHUNK) {
      __syncthreads();
      const size_t base = ((size_t)kb * BSA_BLOCK + c) * D;
      for (int i = tid; i < SC_CHUNK * D; i += BSA_THREADS) {
        ks[i / D][i % D] = Conv<T>::to_f(kh[base + i]);
        vs[i / D][i % D] = Conv<T>::to_f(vh[base + i]);
      }
      __syncthreads();
      float s[SC_CHUNK];
      float cmax = -INFINITY;
#pragma unroll
      for (int j = 0; j < SC_CHUNK; ++j) {
        float d = 0.f;
#pragma unroll
        for (int i = 0; i < DPT; ++i) d = fmaf(qr[i], ks[j][2 * i + half], d);
        d += __shfl_xor_sync(0xffffffffu, d, 1);
        s[j] = d;
        cmax = fmaxf(cmax, d);
      }
      const float mn = fmaxf(m, cmax);
      const float corr = exp2f(m - mn); // 0 on the first chunk (m = -inf)
      l *= corr;
#pragma unroll
      for (int i = 0; i < DPT; ++i) acc[i] *= corr;
#pragma unroll
      for (int j = 0; j < SC_CHUNK; ++j) {
        const float p = exp2f(s[j] - mn);
        l += p;
#pragma unroll
        for (int i = 0; i < DPT; ++i) acc[i] = fmaf(p, vs[j][2 * i + half], acc[i]);
      }
      m = mn;
    }
  }
  const float inv = l > 0.f ? 1.f / l : 0.f;
  T *op = out + h * out_head_stride + ((long long)qb * BSA_BLOCK + row) * out_row_stride;
#pragma unroll
  for (int i = 0; i < DPT; ++i) op[2 * i + half] = Conv<T>::from_f(l > 0.f ? acc[i] * inv : 0.f);
}

// ---------------------------------------------------------------------------------------------
// Tensor-core variant (bf16 / f16).
// Fragment layouts of mma.m16n8k16 (g = lane/4, t = lane%4):
//   A 16x16 row-major: a0 (g, 2t..2t+1) a1 (g+8, 2t..) a2 (g, 2t+8..) a3 (g+8, 2t+8..)
//   B 16x8  col-major: b0 (k 2t..2t+1, n g) b1 (k 2t+8.., n g)
//   C 16x8  f32:       c0,c1 (g, 2t..2t+1)  c2,c3 (g+8, 2t..2t+1)
// S = Q K^T takes B straight from K rows; O += P V takes B from V stored transposed in smem,
// and A (= P) from the S accumulators of two neighbouring 8-key tiles.
// ---------------------------------------------------------------------------------------------
#define MMA_CHUNK 64 // keys staged in shared memory at a time

template <typename T> __device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4],
                                                                uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float c[4], const uint32_t a[4],
                                                         uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
               "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__half>(float c[4], const uint32_t a[4], uint32_t b0,
                                                  uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
               "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <typename T> __device__ __forceinline__ uint32_t ld32(const T *p) {
  return *reinterpret_cast<const uint32_t *>(p);
}

template <typename T, int D>
__device__ __forceinline__ void bsa_mma(const T *__restrict__ q, const T *__restrict__ k,
                                        const T *__restrict__ v, const uint8_t *__restrict__ mask,
                                        T *__restrict__ out, int q_tokens, int k_tokens,
                                        float scale_log2, long long out_head_stride,
                                        long long out_row_stride) {
  constexpr int KSTR = D + 8;         // padded smem row strides (halves): conflict-free fragments
  constexpr int VSTR = MMA_CHUNK + 8;
  constexpr int KSTEPS = D / 16;      // k-steps of S = Q K^T
  constexpr int ONT = D / 8;          // n-tiles of O
  constexpr int SNT = MMA_CHUNK / 8;  // n-tiles of S
  __shared__ __align__(16) T ks[MMA_CHUNK * KSTR];
  __shared__ __align__(16) T vts[D * VSTR];

  const int nq = q_tokens / BSA_BLOCK, nk = k_tokens / BSA_BLOCK;
  const int qb = blockIdx.x, h = blockIdx.y;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;

  const size_t row0 = (size_t)h * q_tokens + (size_t)qb * BSA_BLOCK + warp * 16;
  const T *qw = q + row0 * D;
  uint32_t qa[KSTEPS][4];
#pragma unroll
  for (int s = 0; s < KSTEPS; ++s) {
    qa[s][0] = ld32(qw + g * D + s * 16 + 2 * t);
    qa[s][1] = ld32(qw + (g + 8) * D + s * 16 + 2 * t);
    qa[s][2] = ld32(qw + g * D + s * 16 + 8 + 2 * t);
    qa[s][3] = ld32(qw + (g + 8) * D + s * 16 + 8 + 2 * t);
  }
  float o[ONT][4];
#pragma unroll
  for (int n = 0; n < ONT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f; // rows g and g+8

  const uint8_t *mrow = mask + ((size_t)h * nq + qb) * nk;
  const T *kh = k + (size_t)h * k_tokens * D;
  const T *vh = v + (size_t)h * k_tokens * D;

  for (int kb = 0; kb < nk; ++kb) {
    if (!mrow[kb]) continue; // uniform over the CTA
    for (int c = 0; c < BSA_BLOCK; c += MMA_CHUNK) {
      __syncthreads();
      const size_t base = ((size_t)kb * BSA_BLOCK + c) * D;
      for (int i = tid; i < MMA_CHUNK * D / 8; i += BSA_THREADS) {
        const int r = i / (D / 8), c8 = (i % (D / 8)) * 8;
        *reinterpret_cast<uint4 *>(&ks[r * KSTR + c8]) =
            *reinterpret_cast<const uint4 *>(&kh[base + (size_t)r * D + c8]);
        uint4 vv = *reinterpret_cast<const uint4 *>(&vh[base + (size_t)r * D + c8]);
        const T *ve = reinterpret_cast<const T *>(&vv);
#pragma unroll
        for (int e = 0; e < 8; ++e) vts[(c8 + e) * VSTR + r] = ve[e];
      }
      __syncthreads();

      float s[SNT][4];
#pragma unroll
      for (int n = 0; n < SNT; ++n) {
        s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
        const T *kr = &ks[(n * 8 + g) * KSTR + 2 * t];
#pragma unroll
        for (int st = 0; st < KSTEPS; ++st)
          mma16816<T>(s[n], qa[st], ld32(kr + st * 16), ld32(kr + st * 16 + 8));
      }
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int n = 0; n < SNT; ++n) {
        s[n][0] *= scale_log2; s[n][1] *= scale_log2;
        s[n][2] *= scale_log2; s[n][3] *= scale_log2;
        mx0 = fmaxf(mx0, fmaxf(s[n][0], s[n][1]));
        mx1 = fmaxf(mx1, fmaxf(s[n][2], s[n][3]));
      }
      // The four lanes of a quad share rows g and g+8.
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
      const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
      const float corr0 = exp2f(m0 - mn0), corr1 = exp2f(m1 - mn1);
      m0 = mn0;
      m1 = mn1;
      l0 *= corr0;
      l1 *= corr1;
#pragma unroll
      for (int n = 0; n < ONT; ++n) {
        o[n][0] *= corr0; o[n][1] *= corr0;
        o[n][2] *= corr1; o[n][3] *= corr1;
      }
#pragma unroll
      for (int n = 0; n < SNT; ++n) {
        s[n][0] = exp2f(s[n][0] - mn0); s[n][1] = exp2f(s[n][1] - mn0);
        s[n][2] = exp2f(s[n][2] - mn1); s[n][3] = exp2f(s[n][3] - mn1);
        l0 += s[n][0] + s[n][1];
        l1 += s[n][2] + s[n][3];
      }
#pragma unroll
      for (int kk = 0; kk < MMA_CHUNK / 16; ++kk) {
        uint32_t pa[4];
        pa[0] = Conv<T>::pack(s[2 * kk][0], s[2 * kk][1]);
        pa[1] = Conv<T>::pack(s[2 * kk][2], s[2 * kk][3]);
        pa[2] = Conv<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        pa[3] = Conv<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
        for (int n = 0; n < ONT; ++n) {
          const T *vr = &vts[(n * 8 + g) * VSTR + kk * 16 + 2 * t];
          mma16816<T>(o[n], pa, ld32(vr), ld32(vr + 8));
        }
      }
    }
  }
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
  const long long orow = (long long)qb * BSA_BLOCK + warp * 16 + g;
  T *o0 = out + h * out_head_stride + orow * out_row_stride + 2 * t;
  T *o1 = o0 + 8 * out_row_stride;
#pragma unroll
  for (int n = 0; n < ONT; ++n) {
    *reinterpret_cast<uint32_t *>(o0 + n * 8) =
        Conv<T>::pack(l0 > 0.f ? o[n][0] * inv0 : 0.f, l0 > 0.f ? o[n][1] * inv0 : 0.f);
    *reinterpret_cast<uint32_t *>(o1 + n * 8) =
        Conv<T>::pack(l1 > 0.f ? o[n][2] * inv1 : 0.f, l1 > 0.f ? o[n][3] * inv1 : 0.f);
  }
}

// ---------------------------------------------------------------------------------------------
// Pipelined tensor-core variant (bf16 / f16): as bsa_mma, plus
//   * K and V chunks copied with cp.async into a double-buffered dynamic smem ring, so the next
//     chunk is in flight while the current one is multiplied;
//   * V kept row-major in smem and read with ldmatrix.trans (no transposing scatter), K read
//     with ldmatrix (one instruction per two k-steps instead of four 32-bit loads).
// Dynamic smem: 2 stages x (K + V) x MMA_CHUNK x (D + 8) halves.
// ---------------------------------------------------------------------------------------------
// Next selected chunk at or after `chunk` (chunk = key block * chunks_per_block + part), or -1.
__device__ __forceinline__ int next_chunk(const uint8_t *mrow, int nk, int chunk) {
  constexpr int CPB = BSA_BLOCK / MMA_CHUNK;
  for (int kb = chunk / CPB; kb < nk; ++kb) {
    if (mrow[kb]) return kb == chunk / CPB ? chunk : kb * CPB;
  }
  return -1;
}

template <typename T, int D>
__device__ __forceinline__ void bsa_mma2(const T *__restrict__ q, const T *__restrict__ k,
                                         const T *__restrict__ v, const uint8_t *__restrict__ mask,
                                         T *__restrict__ out, int q_tokens, int k_tokens,
                                         float scale_log2, long long out_head_stride,
                                         long long out_row_stride) {
  constexpr int STR = D + 8;           // padded smem row stride (halves)
  constexpr int STAGE = MMA_CHUNK * STR; // halves per K (or V) stage
  constexpr int KSTEPS = D / 16;
  constexpr int ONT = D / 8;
  constexpr int SNT = MMA_CHUNK / 8;
  extern __shared__ __align__(16) unsigned char bsa_smem[];
  T *ks = reinterpret_cast<T *>(bsa_smem);  // [2][MMA_CHUNK][STR]
  T *vs = ks + 2 * STAGE;                   // [2][MMA_CHUNK][STR]

  const int nq = q_tokens / BSA_BLOCK, nk = k_tokens / BSA_BLOCK;
  const int qb = blockIdx.x, h = blockIdx.y;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const uint8_t *mrow = mask + ((size_t)h * nq + qb) * nk;
  const T *kh = k + (size_t)h * k_tokens * D;
  const T *vh = v + (size_t)h * k_tokens * D;

  const size_t row0 = (size_t)h * q_tokens + (size_t)qb * BSA_BLOCK + warp * 16;
  const long long orow = (long long)qb * BSA_BLOCK + warp * 16 + g;
  T *o0 = out + h * out_head_stride + orow * out_row_stride + 2 * t;
  T *o1 = o0 + 8 * out_row_stride;

  auto load_chunk = [&](int chunk, int stage) {
    const size_t base = (size_t)chunk * MMA_CHUNK * D;
    T *kd = ks + stage * STAGE;
    T *vd = vs + stage * STAGE;
    for (int i = tid; i < MMA_CHUNK * D / 8; i += BSA_THREADS) {
      const int r = i / (D / 8), c8 = (i % (D / 8)) * 8;
      cp_async16(&kd[r * STR + c8], &kh[base + (size_t)r * D + c8]);
      cp_async16(&vd[r * STR + c8], &vh[base + (size_t)r * D + c8]);
    }
    cp_async_commit();
  };

  int cur = next_chunk(mrow, nk, 0);
  if (cur < 0) { // no key block selected: exact zeros
#pragma unroll
    for (int n = 0; n < ONT; ++n) {
      *reinterpret_cast<uint32_t *>(o0 + n * 8) = 0u;
      *reinterpret_cast<uint32_t *>(o1 + n * 8) = 0u;
    }
    return;
  }
  load_chunk(cur, 0);

  const T *qw = q + row0 * D;
  uint32_t qa[KSTEPS][4];
#pragma unroll
  for (int s = 0; s < KSTEPS; ++s) {
    qa[s][0] = ld32(qw + g * D + s * 16 + 2 * t);
    qa[s][1] = ld32(qw + (g + 8) * D + s * 16 + 2 * t);
    qa[s][2] = ld32(qw + g * D + s * 16 + 8 + 2 * t);
    qa[s][3] = ld32(qw + (g + 8) * D + s * 16 + 8 + 2 * t);
  }
  float o[ONT][4];
#pragma unroll
  for (int n = 0; n < ONT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

  int stage = 0;
  while (cur >= 0) {
    const int nxt = next_chunk(mrow, nk, cur + 1);
    if (nxt >= 0) {
      load_chunk(nxt, stage ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T *kc = ks + stage * STAGE;
    const T *vc = vs + stage * STAGE;

    float s[SNT][4];
    // ldmatrix.x4 (no trans): matrices (keys n*8..+7) x (d 16st..+7 | +8..15 | 16st+16..+23 |
    // +24..31) give the B fragments (b0, b1) of k-steps st and st+1.
    const uint32_t kaddr = smem_u32(&kc[(lane & 7) * STR + (lane >> 3) * 8]);
#pragma unroll
    for (int n = 0; n < SNT; ++n) {
      s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
      for (int st = 0; st < KSTEPS; st += 2) {
        uint32_t b0, b1, b2, b3;
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(b0), "=r"(b1), "=r"(b2), "=r"(b3)
                     : "r"(kaddr + (uint32_t)((n * 8 * STR + st * 16) * sizeof(T))));
        mma16816<T>(s[n], qa[st], b0, b1);
        mma16816<T>(s[n], qa[st + 1], b2, b3);
      }
    }
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int n = 0; n < SNT; ++n) {
      s[n][0] *= scale_log2; s[n][1] *= scale_log2;
      s[n][2] *= scale_log2; s[n][3] *= scale_log2;
      mx0 = fmaxf(mx0, fmaxf(s[n][0], s[n][1]));
      mx1 = fmaxf(mx1, fmaxf(s[n][2], s[n][3]));
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
    const float corr0 = exp2f(m0 - mn0), corr1 = exp2f(m1 - mn1);
    m0 = mn0;
    m1 = mn1;
    l0 *= corr0;
    l1 *= corr1;
#pragma unroll
    for (int n = 0; n < ONT; ++n) {
      o[n][0] *= corr0; o[n][1] *= corr0;
      o[n][2] *= corr1; o[n][3] *= corr1;
    }
#pragma unroll
    for (int n = 0; n < SNT; ++n) {
      s[n][0] = exp2f(s[n][0] - mn0); s[n][1] = exp2f(s[n][1] - mn0);
      s[n][2] = exp2f(s[n][2] - mn1); s[n][3] = exp2f(s[n][3] - mn1);
      l0 += s[n][0] + s[n][1];
      l1 += s[n][2] + s[n][3];
    }
#pragma unroll
    for (int kk = 0; kk < MMA_CHUNK / 16; ++kk) {
      uint32_t pa[4];
      pa[0] = Conv<T>::pack(s[2 * kk][0], s[2 * kk][1]);
      pa[1] = Conv<T>::pack(s[2 * kk][2], s[2 * kk][3]);
      pa[2] = Conv<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[3] = Conv<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
      // ldmatrix.x4.trans: matrices (keys 0-7 | 8-15) x (d n0..n0+7 | n0+8..n0+15) give the
      // B fragments (b0, b1) of two neighbouring 8-wide d tiles.
      const int key = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
      const uint32_t vaddr = smem_u32(&vc[key * STR + (lane >> 4) * 8]);
#pragma unroll
      for (int np = 0; np < ONT / 2; ++np) {
        uint32_t b0, b1, b2, b3;
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(b0), "=r"(b1), "=r"(b2), "=r"(b3)
                     : "r"(vaddr + np * 16 * (uint32_t)sizeof(T)));
        mma16816<T>(o[2 * np], pa, b0, b1);
        mma16816<T>(o[2 * np + 1], pa, b2, b3);
      }
    }
    __syncthreads(); // everyone is done with this stage before it is refilled
    stage ^= 1;
    cur = nxt;
  }
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float inv0 = 1.f / l0, inv1 = 1.f / l1;
#pragma unroll
  for (int n = 0; n < ONT; ++n) {
    *reinterpret_cast<uint32_t *>(o0 + n * 8) = Conv<T>::pack(o[n][0] * inv0, o[n][1] * inv0);
    *reinterpret_cast<uint32_t *>(o1 + n * 8) = Conv<T>::pack(o[n][2] * inv1, o[n][3] * inv1);
  }
}

#define BSA_ARGS(T)                                                                            \
  const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ v,                   \
      const uint8_t *__restrict__ mask, T *__restrict__ out, int q_tokens, int k_tokens,       \
      float scale_log2, long long out_head_stride, long long out_row_stride
#define BSA_PASS q, k, v, mask, out, q_tokens, k_tokens, scale_log2, out_head_stride, out_row_stride

#define BSA_SCALAR(NAME, T, D)                                                                 \
  extern "C" __global__ void __launch_bounds__(BSA_THREADS) bsa_scalar_##NAME##_d##D(BSA_ARGS(T)) { \
    bsa_scalar<T, D>(BSA_PASS);                                                                \
  }
#define BSA_MMA(NAME, T, D)                                                                    \
  extern "C" __global__ void __launch_bounds__(BSA_THREADS) bsa_mma_##NAME##_d##D(BSA_ARGS(T)) { \
    bsa_mma<T, D>(BSA_PASS);                                                                   \
  }

#define BSA_MMA2(NAME, T, D)                                                                   \
  extern "C" __global__ void __launch_bounds__(BSA_THREADS) bsa_mma2_##NAME##_d##D(BSA_ARGS(T)) { \
    bsa_mma2<T, D>(BSA_PASS);                                                                  \
  }

BSA_SCALAR(f32, float, 32)
BSA_SCALAR(f32, float, 64)
BSA_SCALAR(f32, float, 128)
BSA_SCALAR(f16, __half, 32)
BSA_SCALAR(f16, __half, 64)
BSA_SCALAR(f16, __half, 128)
// Tensor cores (mma.m16n8k16) and bf16 need sm_80 (Ampere): older targets get the f32/f16 scalar
// kernels only, so that the module still loads there (the Rust side picks kernels by compute
// capability and refuses bf16 before launching).
#if __CUDA_ARCH__ >= 800
BSA_SCALAR(bf16, __nv_bfloat16, 32)
BSA_SCALAR(bf16, __nv_bfloat16, 64)
BSA_SCALAR(bf16, __nv_bfloat16, 128)
BSA_MMA(f16, __half, 32)
BSA_MMA(f16, __half, 64)
BSA_MMA(f16, __half, 128)
BSA_MMA(bf16, __nv_bfloat16, 32)
BSA_MMA(bf16, __nv_bfloat16, 64)
BSA_MMA(bf16, __nv_bfloat16, 128)
BSA_MMA2(f16, __half, 32)
BSA_MMA2(f16, __half, 64)
BSA_MMA2(f16, __half, 128)
BSA_MMA2(bf16, __nv_bfloat16, 32)
BSA_MMA2(bf16, __nv_bfloat16, 64)
BSA_MMA2(bf16, __nv_bfloat16, 128)
#endif // __CUDA_ARCH__ >= 800
