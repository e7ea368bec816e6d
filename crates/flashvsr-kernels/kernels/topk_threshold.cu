// Row-wise k-th largest value, for the per-(head, query segment) top-k threshold of FlashVSR's
// draft block mask. x [rows, n] f32 contiguous; out[row] = the value at position `rank`
// (0-based) of the row sorted in descending order (ties counted, like torch.topk(rank+1)[-1]).
//
// One CTA per row, 4-pass radix select on order-preserving 32-bit keys (8 bits per pass,
// most significant first): each pass histograms the elements that share the prefix found so
// far and picks the bin holding the wanted rank. Reads the row 4 times; no sorting, no limit
// on n beyond int.

#include <stdint.h>

__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float from_key(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

extern "C" __global__ void kth_largest_f32(const float *__restrict__ x, float *__restrict__ out,
                                           int n, int rank) {
  __shared__ unsigned int hist[256];
  __shared__ uint32_t s_prefix, s_rank;
  const float *row = x + (size_t)blockIdx.x * n;
  uint32_t prefix = 0, prefix_mask = 0, r = (uint32_t)rank;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      const uint32_t key = order_key(row[i]);
      if ((key & prefix_mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      // Walk bins from the top; the wanted element lies in the first bin where the count of
      // elements at or above it exceeds r.
      uint32_t above = 0;
      int b = 255;
      for (; b > 0; --b) {
        if (above + hist[b] > r) break;
        above += hist[b];
      }
      s_prefix = prefix | ((uint32_t)b << shift);
      s_rank = r - above;
    }
    __syncthreads();
    prefix = s_prefix;
    r = s_rank;
    prefix_mask |= 255u << shift;
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = from_key(prefix);
}
