// Block-sparse attention forward for Hopper (sm_90a): the same algorithm, selection and
// numerics as bsa_mma2 in block_sparse_attn.cu, with the two GEMMs on warpgroup MMA (`wgmma`).
//
// Layout as in block_sparse_attn.cu: q [heads, q_tokens, 128], k/v [heads, k_tokens, 128],
// mask [heads, q_tokens/128, k_tokens/128] u8; out element (h, token, d) at
// h * out_head_stride + token * out_row_stride + d. head_dim 128, bf16 or f16 only.
//
// One CTA of 2 warpgroups (256 threads) per (query block, head); warpgroup w owns query rows
// 64w..64w+63 and each thread the rows and columns of its accumulator fragment, exactly the
// rows (warp*16 + lane/4, +8) a bsa_mma2 thread owns. Per selected key block (128 keys), in two
// halves of 64 keys:
//   S = Q K^T      wgmma m64n64k16, A = Q and B = K from shared memory (8 k-steps over d)
//   online softmax on S in registers (f32, base 2, per 64 keys as bsa_mma2)
//   O += P V       wgmma m64n128k16, A = P from registers (bf16/f16), B = V from shared memory
// The second half's S is queued with the first's, and the first half's P V runs while the
// second half's softmax does, so a warpgroup's tensor cores and its softmax overlap. (A version
// without the halves measured the same on the H100; see benches/RESULTS.md, session 6.)
// K and V tiles are double-buffered with cp.async (all threads load, the next block's tile is
// in flight while the current one is multiplied).
//
// Shared-memory tiles (128 rows x 128 halves, 32 KB) are stored in wgmma's canonical
// no-swizzle "core matrix" order: 8 rows x 16 bytes contiguous (128 B), core matrix (r/8, c/8)
// at ((r/8) * 16 + c/8) * 128 bytes. Each 16-byte global chunk then lands at a distinct,
// contiguous 16-byte slot (thread i writes bytes 16i..16i+15 of the tile), so the cp.async
// stores are conflict-free and a warp's global reads cover 8 rows x 64 bytes.
// Descriptors: rows of Q and K are the M/N dimension, d the K dimension (K-major); for V the
// keys are the K dimension and d the N dimension (MN-major, transposed B).
// Descriptor byte offsets (checked on the H100): K-major Q/K, LBO = 128 B between core
// matrices along K (d) and SBO = 2048 B along M/N (rows); MN-major V, LBO = 2048 B along K
// (keys) and SBO = 128 B along N (d).

#include "bsa_common.cuh"

#define WG_BLOCK 128       // tokens per attention block
#define WG_D 128           // head dim
#define WG_THREADS 256     // 2 warpgroups
#define WG_TILE_HALVES (WG_BLOCK * WG_D)
#define WG_TILE_BYTES (WG_TILE_HALVES * 2)

template <typename T> struct Wgmma;
template <> struct Wgmma<__nv_bfloat16> {
  // D[64x128] += A[64x16] B[16x128], A from registers, B from shared memory MN-major.
  static __device__ __forceinline__ void rs(float d[64], const uint32_t a[4], uint64_t db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(1));
  }
};
template <> struct Wgmma<__half> {
  // D[64x128] += A[64x16] B[16x128], A from registers, B from shared memory MN-major.
  static __device__ __forceinline__ void rs(float d[64], const uint32_t a[4], uint64_t db) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(1));
  }
};
// Keeps the compiler from moving accumulator registers across wgmma issue / wait.
__device__ __forceinline__ void fence_regs(float d[64]) {
  asm volatile("" : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]) :: "memory");
}

template <typename T> struct Wgmma64;
template <> struct Wgmma64<__nv_bfloat16> {
  // D[64x64] (+)= A[64x16] B[16x64], A and B from shared memory, both K-major.
  static __device__ __forceinline__ void ss(float d[32], uint64_t da, uint64_t db, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(da), "l"(db), "r"(accumulate));
  }
};
template <> struct Wgmma64<__half> {
  // D[64x64] (+)= A[64x16] B[16x64], A and B from shared memory, both K-major.
  static __device__ __forceinline__ void ss(float d[32], uint64_t da, uint64_t db, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(da), "l"(db), "r"(accumulate));
  }
};
__device__ __forceinline__ void fence_regs32(float d[32]) {
  asm volatile("" : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]) :: "memory");
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// cp.async (generic proxy) wrote the tiles the tensor cores (async proxy) read next.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Shared-memory matrix descriptor, no swizzle: start address, leading and stride byte offsets.
__device__ __forceinline__ uint64_t make_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo & 0x3FFFF) >> 4) << 16) |
         ((uint64_t)((sbo & 0x3FFFF) >> 4) << 32);
}

// One 128 x 128 tile (row stride 128 halves in global memory) into core-matrix order.
template <typename T> __device__ __forceinline__ void load_tile(uint32_t tile, const T *g, int tid) {
#pragma unroll
  for (int i = 0; i < WG_TILE_HALVES / 8 / WG_THREADS; ++i) {
    const int idx = tid + i * WG_THREADS;
    const int r = (idx >> 7) * 8 + (idx & 7), c8 = (idx >> 3) & 15;
    cp_async16(tile + idx * 16, g + (size_t)r * WG_D + c8 * 8);
  }
}

// Online-softmax update for one 64-key half held in s[32] (s[4j + e]: row g (e < 2) or g + 8,
// key 8j + 2t + e%2): scales, row max over the quad, exponentials, row sums; returns the
// correction factors the output must be multiplied by and packs P into A fragments.
template <typename T>
__device__ __forceinline__ void softmax_half(float s[32], float scale_log2, float &m0, float &m1,
                                             float &l0, float &l1, float &corr0, float &corr1,
                                             uint32_t p[4][4]) {
  float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    s[4 * j + 0] *= scale_log2; s[4 * j + 1] *= scale_log2;
    s[4 * j + 2] *= scale_log2; s[4 * j + 3] *= scale_log2;
    mx0 = fmaxf(mx0, fmaxf(s[4 * j + 0], s[4 * j + 1]));
    mx1 = fmaxf(mx1, fmaxf(s[4 * j + 2], s[4 * j + 3]));
  }
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
  const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
  corr0 = exp2f(m0 - mn0);
  corr1 = exp2f(m1 - mn1);
  m0 = mn0;
  m1 = mn1;
  l0 *= corr0;
  l1 *= corr1;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    s[4 * j + 0] = exp2f(s[4 * j + 0] - mn0); s[4 * j + 1] = exp2f(s[4 * j + 1] - mn0);
    s[4 * j + 2] = exp2f(s[4 * j + 2] - mn1); s[4 * j + 3] = exp2f(s[4 * j + 3] - mn1);
    l0 += s[4 * j + 0] + s[4 * j + 1];
    l1 += s[4 * j + 2] + s[4 * j + 3];
  }
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    p[kk][0] = Conv<T>::pack(s[8 * kk + 0], s[8 * kk + 1]);
    p[kk][1] = Conv<T>::pack(s[8 * kk + 2], s[8 * kk + 3]);
    p[kk][2] = Conv<T>::pack(s[8 * kk + 4], s[8 * kk + 5]);
    p[kk][3] = Conv<T>::pack(s[8 * kk + 6], s[8 * kk + 7]);
  }
}

__device__ __forceinline__ void scale_rows(float o[64], float corr0, float corr1) {
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    o[4 * j + 0] *= corr0; o[4 * j + 1] *= corr0;
    o[4 * j + 2] *= corr1; o[4 * j + 3] *= corr1;
  }
}

// One selected key block of a warpgroup's 64 query rows: S = Q K^T in two 64-key halves, the
// online softmax per half, O += P V. `q_wg`, `kt`, `vt` are the tiles' shared-memory
// addresses; in the tiles' core-matrix layout, D_STEP bytes separate neighbouring 8-column
// slices along d and ROW8 bytes neighbouring 8-row groups. `wait_v()` runs just before V is
// first read (the TMA kernel waits there for V's tile; the cp.async one has it already).
template <typename T, uint32_t D_STEP, uint32_t ROW8, typename WaitV>
__device__ __forceinline__ void attend_block(float o[64], float &m0, float &m1, float &l0,
                                             float &l1, uint32_t q_wg, uint32_t kt, uint32_t vt,
                                             float scale_log2, WaitV wait_v) {
  // K-major Q/K: LBO along d, SBO along rows; MN-major V: LBO along keys, SBO along d.
  constexpr uint32_t KM_LBO = D_STEP, KM_SBO = ROW8, MN_LBO = ROW8, MN_SBO = D_STEP;
  // S of both halves queued at once (two groups): keys 0-63 are core rows 0-7 of the tile,
  // keys 64-127 rows 8-15.
  float sa[32], sb[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) sa[i] = sb[i] = 0.f;
  wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < WG_D / 16; ++ks)
    Wgmma64<T>::ss(sa, make_desc(q_wg + ks * 2 * D_STEP, KM_LBO, KM_SBO),
                   make_desc(kt + ks * 2 * D_STEP, KM_LBO, KM_SBO), ks > 0);
  wgmma_commit();
#pragma unroll
  for (int ks = 0; ks < WG_D / 16; ++ks)
    Wgmma64<T>::ss(sb, make_desc(q_wg + ks * 2 * D_STEP, KM_LBO, KM_SBO),
                   make_desc(kt + 8 * ROW8 + ks * 2 * D_STEP, KM_LBO, KM_SBO), ks > 0);
  wgmma_commit();

  // First half: its S is ready once at most one group (S_b) is pending; every earlier P V
  // has completed too, so O may be rescaled.
  wgmma_wait<1>();
  fence_regs32(sa);
  fence_regs(o);
  uint32_t pa[4][4], pb[4][4];
  float corr0, corr1;
  softmax_half<T>(sa, scale_log2, m0, m1, l0, l1, corr0, corr1, pa);
  scale_rows(o, corr0, corr1);
  wait_v();
  wgmma_fence();
  fence_regs(o);
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
    Wgmma<T>::rs(o, pa[kk], make_desc(vt + kk * 2 * ROW8, MN_LBO, MN_SBO));
  wgmma_commit();

  // Second half: its softmax runs while the first half's P V is on the tensor cores.
  wgmma_wait<1>();
  fence_regs32(sb);
  softmax_half<T>(sb, scale_log2, m0, m1, l0, l1, corr0, corr1, pb);
  wgmma_wait<0>();
  fence_regs(o);
  scale_rows(o, corr0, corr1);
  wgmma_fence();
  fence_regs(o);
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
    Wgmma<T>::rs(o, pb[kk], make_desc(vt + (8 + kk * 2) * ROW8, MN_LBO, MN_SBO));
  wgmma_commit();
  wgmma_wait<0>();
  fence_regs(o);
}

// bsa_wgmma: K/V tiles double-buffered by cp.async from all 256 threads, a CTA barrier per key
// block. Each key block is processed as two 64-key halves (attend_block), so that a
// warpgroup's tensor cores and its softmax overlap: S of the second half is computed while the
// first half's softmax runs, and the first half's P V while the second half's softmax runs.
// The online softmax runs per 64 keys, exactly as bsa_mma2's does (the outputs are
// bit-identical to bsa_mma2's).
template <typename T>
__device__ __forceinline__ void bsa_wgmma(const T *__restrict__ q, const T *__restrict__ k,
                                                const T *__restrict__ v,
                                                const uint8_t *__restrict__ mask,
                                                T *__restrict__ out, int q_tokens, int k_tokens,
                                                float scale_log2, long long out_head_stride,
                                                long long out_row_stride) {
  extern __shared__ __align__(128) unsigned char wg_smem[];
  const uint32_t q_tile = smem_u32(wg_smem);
  const uint32_t k_tiles = q_tile + WG_TILE_BYTES, v_tiles = q_tile + 3 * WG_TILE_BYTES;

  const int nq = q_tokens / WG_BLOCK, nk = k_tokens / WG_BLOCK;
  const int qb = blockIdx.x, h = blockIdx.y;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int wg = warp >> 2;
  const uint8_t *mrow = mask + ((size_t)h * nq + qb) * nk;
  const T *kh = k + (size_t)h * k_tokens * WG_D;
  const T *vh = v + (size_t)h * k_tokens * WG_D;

  const long long orow = (long long)qb * WG_BLOCK + warp * 16 + g;
  T *o0 = out + h * out_head_stride + orow * out_row_stride + 2 * t;
  T *o1 = o0 + 8 * out_row_stride;

  int cur = 0;
  while (cur < nk && !mrow[cur]) ++cur;
  if (cur == nk) {
#pragma unroll
    for (int n = 0; n < WG_D / 8; ++n) {
      *reinterpret_cast<uint32_t *>(o0 + n * 8) = 0u;
      *reinterpret_cast<uint32_t *>(o1 + n * 8) = 0u;
    }
    return;
  }
  load_tile(q_tile, q + ((size_t)h * q_tokens + (size_t)qb * WG_BLOCK) * WG_D, tid);
  load_tile(k_tiles, kh + (size_t)cur * WG_BLOCK * WG_D, tid);
  load_tile(v_tiles, vh + (size_t)cur * WG_BLOCK * WG_D, tid);
  cp_async_commit();

  // Core-matrix strides of the cp.async tiles: 8-column slices 128 B apart, 8-row groups 2 KB.
  constexpr uint32_t COL = 128, ROW = 16 * 128;

  float o[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) o[i] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

  const uint32_t q_wg = q_tile + wg * 8 * ROW;
  int stage = 0;
  while (cur >= 0) {
    int nxt = cur + 1;
    while (nxt < nk && !mrow[nxt]) ++nxt;
    if (nxt == nk) nxt = -1;
    if (nxt >= 0) {
      load_tile(k_tiles + (stage ^ 1) * WG_TILE_BYTES, kh + (size_t)nxt * WG_BLOCK * WG_D, tid);
      load_tile(v_tiles + (stage ^ 1) * WG_TILE_BYTES, vh + (size_t)nxt * WG_BLOCK * WG_D, tid);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    fence_proxy_async();
    __syncthreads();
    const uint32_t kt = k_tiles + stage * WG_TILE_BYTES, vt = v_tiles + stage * WG_TILE_BYTES;
    attend_block<T, COL, ROW>(o, m0, m1, l0, l1, q_wg, kt, vt, scale_log2, [] {});
    __syncthreads();
    stage ^= 1;
    cur = nxt;
  }
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float inv0 = 1.f / l0, inv1 = 1.f / l1;
#pragma unroll
  for (int n = 0; n < WG_D / 8; ++n) {
    *reinterpret_cast<uint32_t *>(o0 + n * 8) = Conv<T>::pack(o[4 * n + 0] * inv0, o[4 * n + 1] * inv0);
    *reinterpret_cast<uint32_t *>(o1 + n * 8) = Conv<T>::pack(o[4 * n + 2] * inv1, o[4 * n + 3] * inv1);
  }
}

// ---------------------------------------------------------------------------------------------
// bsa_tma: the same per-thread math as bsa_wgmma (bit-identical outputs), with the K/V tiles
// brought in by the Tensor Memory Accelerator instead of cp.async from the compute warps:
//   * warpgroup 2 is the producer (one thread of it issues): Q once, then for each selected key
//     block its K and V tiles into a 3-stage ring, each stage guarded by "full" mbarriers (the
//     TMA transaction count) and an "empty" mbarrier (all 256 consumer threads arrive when their
//     last wgmma on the stage has completed);
//   * warpgroups 0-1 only wait on "full", multiply and release: no CTA-wide barrier in the
//     loop, so each warpgroup runs at its own pace and loads never wait for compute.
// Registers: 12 warps are 3 per SM sub-partition (16K registers each), so the launch allows 168
// per thread; the producer gives its warpgroup's back (setmaxnreg 40) and the consumers take
// 232, what the math needs without spilling (a 9-warp block could not launch: 3 warps of 176
// on one sub-partition do not fit).
// A tile arrives as 16 TMA boxes of 128 rows x 16 bytes (one 8-column slice of d each): the
// slice c lands at c * 2048 B, row r of it at r * 16 B, i.e. core matrix (r/8, c) at
// c * 2048 + (r/8) * 128, the no-swizzle canonical layout with the strides of bsa_wgmma's tiles
// exchanged: K-major Q/K LBO (along d) = 2048, SBO (along rows) = 128; MN-major V LBO (along
// keys) = 128, SBO (along d) = 2048.
// The selected key blocks of the query block are listed once in shared memory (warp 0, ballots).
#define TMA_STAGES 3
#define TMA_THREADS (WG_THREADS + 128)
#define TMA_MAX_BLOCKS 1024
// Q, then the K stages, then the V stages, then the mbarriers, then the block list.
#define TMA_BAR_OFFSET ((1 + 2 * TMA_STAGES) * WG_TILE_BYTES)
#define TMA_LIST_OFFSET (TMA_BAR_OFFSET + 128)
#define TMA_SMEM_BYTES (TMA_LIST_OFFSET + 2 * TMA_MAX_BLOCKS)

// The driver's CUtensorMap: 128 opaque bytes, passed by value as a __grid_constant__ parameter.
struct __align__(64) TensorMap { unsigned long long opaque[16]; };

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Blocks until the barrier's phase of parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile("{\n.reg .pred done;\nWAIT:\n"
               "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
               "@!done bra WAIT;\n}\n" ::"r"(bar), "r"(parity)
               : "memory");
}
// One 128-row x 128-column tile starting at `row` of the 2-D map [rows, 128]: 16 boxes.
__device__ __forceinline__ void tma_tile(uint32_t dst, const TensorMap *map, int row, uint32_t bar) {
  const unsigned long long desc = reinterpret_cast<unsigned long long>(map);
#pragma unroll
  for (int c = 0; c < WG_D / 8; ++c)
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst + c * 2048), "l"(desc), "r"(c * 8),
                 "r"(row), "r"(bar)
                 : "memory");
}

template <typename T>
__device__ __forceinline__ void bsa_tma(const TensorMap *qmap, const TensorMap *kmap,
                                        const TensorMap *vmap, const uint8_t *__restrict__ mask,
                                        T *__restrict__ out, int q_tokens, int k_tokens,
                                        float scale_log2, long long out_head_stride,
                                        long long out_row_stride) {
  extern __shared__ __align__(128) unsigned char wg_smem[];
  const uint32_t q_tile = smem_u32(wg_smem);
  const uint32_t k_tiles = q_tile + WG_TILE_BYTES;
  const uint32_t v_tiles = k_tiles + TMA_STAGES * WG_TILE_BYTES;
  // mbarriers: q_full, k_full[3], v_full[3], empty[3].
  const uint32_t bars = q_tile + TMA_BAR_OFFSET;
  const uint32_t q_full = bars, k_full = bars + 8, v_full = bars + 8 * (1 + TMA_STAGES);
  const uint32_t empty = bars + 8 * (1 + 2 * TMA_STAGES);
  unsigned short *list = reinterpret_cast<unsigned short *>(wg_smem + TMA_LIST_OFFSET);
  __shared__ int n_selected;

  const int nq = q_tokens / WG_BLOCK, nk = k_tokens / WG_BLOCK;
  const int qb = blockIdx.x, h = blockIdx.y;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const uint8_t *mrow = mask + ((size_t)h * nq + qb) * nk;

  if (warp == 0) {
    int n = 0;
    for (int base = 0; base < nk; base += 32) {
      const bool sel = base + lane < nk && mrow[base + lane] != 0;
      const unsigned ballot = __ballot_sync(0xffffffffu, sel);
      if (sel) list[n + __popc(ballot & ((1u << lane) - 1))] = (unsigned short)(base + lane);
      n += __popc(ballot);
    }
    if (lane == 0) {
      n_selected = n;
      mbar_init(q_full, 1);
      for (int s = 0; s < TMA_STAGES; ++s) {
        mbar_init(k_full + 8 * s, 1);
        mbar_init(v_full + 8 * s, 1);
        mbar_init(empty + 8 * s, WG_THREADS);
      }
      asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
  }
  __syncthreads();
  const int n_sel = n_selected;

  if (warp >= WG_THREADS / 32) {
    // Producer.
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    if (warp == WG_THREADS / 32 && lane == 0 && n_sel > 0) {
      mbar_expect_tx(q_full, WG_TILE_BYTES);
      tma_tile(q_tile, qmap, h * q_tokens + qb * WG_BLOCK, q_full);
      for (int i = 0; i < n_sel; ++i) {
        const int s = i % TMA_STAGES, use = i / TMA_STAGES;
        // Stage s was last filled for block i - 3: wait until every consumer released it.
        if (use > 0) mbar_wait(empty + 8 * s, (use - 1) & 1);
        const int row = h * k_tokens + (int)list[i] * WG_BLOCK;
        mbar_expect_tx(k_full + 8 * s, WG_TILE_BYTES);
        tma_tile(k_tiles + s * WG_TILE_BYTES, kmap, row, k_full + 8 * s);
        mbar_expect_tx(v_full + 8 * s, WG_TILE_BYTES);
        tma_tile(v_tiles + s * WG_TILE_BYTES, vmap, row, v_full + 8 * s);
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
  const int wg = warp >> 2;
  const long long orow = (long long)qb * WG_BLOCK + warp * 16 + g;
  T *o0 = out + h * out_head_stride + orow * out_row_stride + 2 * t;
  T *o1 = o0 + 8 * out_row_stride;
  if (n_sel == 0) {
#pragma unroll
    for (int n = 0; n < WG_D / 8; ++n) {
      *reinterpret_cast<uint32_t *>(o0 + n * 8) = 0u;
      *reinterpret_cast<uint32_t *>(o1 + n * 8) = 0u;
    }
    return;
  }

  // Core-matrix strides of the TMA layout (see above).
  constexpr uint32_t D_SLICE = 2048, ROW8 = 128;

  float o[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) o[i] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

  const uint32_t q_wg = q_tile + wg * 8 * ROW8;
  mbar_wait(q_full, 0);
  for (int i = 0; i < n_sel; ++i) {
    const int s = i % TMA_STAGES;
    const uint32_t parity = (i / TMA_STAGES) & 1;
    const uint32_t kt = k_tiles + s * WG_TILE_BYTES, vt = v_tiles + s * WG_TILE_BYTES;
    mbar_wait(k_full + 8 * s, parity);
    attend_block<T, D_SLICE, ROW8>(o, m0, m1, l0, l1, q_wg, kt, vt, scale_log2,
                                   [&] { mbar_wait(v_full + 8 * s, parity); });
    // This thread's reads of stage s are done.
    mbar_arrive(empty + 8 * s);
  }
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float inv0 = 1.f / l0, inv1 = 1.f / l1;
#pragma unroll
  for (int n = 0; n < WG_D / 8; ++n) {
    *reinterpret_cast<uint32_t *>(o0 + n * 8) = Conv<T>::pack(o[4 * n + 0] * inv0, o[4 * n + 1] * inv0);
    *reinterpret_cast<uint32_t *>(o1 + n * 8) = Conv<T>::pack(o[4 * n + 2] * inv1, o[4 * n + 3] * inv1);
  }
}

#define WG_ARGS(T)                                                                             \
  const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ v,                   \
      const uint8_t *__restrict__ mask, T *__restrict__ out, int q_tokens, int k_tokens,       \
      float scale_log2, long long out_head_stride, long long out_row_stride
#define WG_PASS q, k, v, mask, out, q_tokens, k_tokens, scale_log2, out_head_stride, out_row_stride
#define BSA_WGMMA(NAME, T)                                                                     \
  extern "C" __global__ void __launch_bounds__(WG_THREADS, 1)                                  \
      bsa_wgmma_##NAME##_d128(WG_ARGS(T)) {                                                    \
    bsa_wgmma<T>(WG_PASS);                                                                     \
  }

BSA_WGMMA(bf16, __nv_bfloat16)
BSA_WGMMA(f16, __half)

#define TMA_ARGS(T)                                                                            \
  const __grid_constant__ TensorMap qmap, const __grid_constant__ TensorMap kmap,              \
      const __grid_constant__ TensorMap vmap, const uint8_t *__restrict__ mask,                \
      T *__restrict__ out, int q_tokens, int k_tokens, float scale_log2,                       \
      long long out_head_stride, long long out_row_stride
#define BSA_TMA(NAME, T)                                                                       \
  extern "C" __global__ void __launch_bounds__(TMA_THREADS, 1)                                  \
      bsa_tma_##NAME##_d128(TMA_ARGS(T)) {                                                     \
    bsa_tma<T>(&qmap, &kmap, &vmap, mask, out, q_tokens, k_tokens, scale_log2,                 \
               out_head_stride, out_row_stride);                                               \
  }

BSA_TMA(bf16, __nv_bfloat16)
BSA_TMA(f16, __half)
