//! The rolling self-attention KV cache (spec §5.4): post-RoPE keys and values of the most
//! recent segments, per block, in a ring of segment slots allocated once per video.
//!
//! Upstream concatenates the cache with the new segment every step and then drops the oldest
//! one, which copies the whole cache twice per block and step and lets memory peak at twice its
//! size. Here each block owns two buffers `[heads, slots·seg_tokens, head_dim]` that are written
//! in place: a step writes its new segments into free slots, attends over the filled slots,
//! then frees the oldest one. Once the ring is full (from the second or third step on) attention
//! reads the buffers as they are, with no copy.
//!
//! Slot order is not time order once the ring wraps. That is harmless: LCSA is invariant under
//! a permutation of whole key segments — the draft's local mask depends only on the window's
//! position inside its segment, the top-k threshold and softmax are order-free, and the
//! attention sums over the selected keys (only the f32 summation order changes). Callers that
//! need the keys in time order (the draft probes compared with upstream) ask for it.

use candle_core::{Result, Tensor};

use crate::config::DitConfig;

/// Segment slots for a cache that keeps `kv_len` segments when a step adds `new_segments`.
/// (Upstream drops one segment per step, so the first step's 3 segments may outlive `kv_len`.)
pub fn slots_for(kv_len: usize, new_segments: usize) -> usize {
    (kv_len + 1).max(new_segments)
}

/// One block's ring of key/value segments.
#[derive(Debug, Clone)]
struct Ring {
    /// `[heads, slots·seg_tokens, head_dim]` each, contiguous.
    k: Tensor,
    v: Tensor,
    seg_tokens: usize,
    slots: usize,
    /// Slot of the oldest filled segment.
    oldest: usize,
    /// Filled segments.
    len: usize,
}

impl Ring {
    fn new(like: &Tensor, seg_tokens: usize, slots: usize) -> Result<Self> {
        let (heads, _, hd) = like.dims3()?;
        let shape = (heads, slots * seg_tokens, hd);
        Ok(Self {
            k: Tensor::zeros(shape, like.dtype(), like.device())?,
            v: Tensor::zeros(shape, like.dtype(), like.device())?,
            seg_tokens,
            slots,
            oldest: 0,
            len: 0,
        })
    }

    fn slot(&self, i: usize) -> usize {
        (self.oldest + i) % self.slots
    }

    /// The filled slots in time order as runs of consecutive slots `(first slot, count)`.
    fn runs(&self) -> Vec<(usize, usize)> {
        let first = self.len.min(self.slots - self.oldest);
        let mut runs = vec![(self.oldest, first)];
        if self.len > first {
            runs.push((0, self.len - first));
        }
        runs.retain(|&(_, n)| n > 0);
        runs
    }

    /// Keys and values of the filled slots in time order (copies unless they are one run).
    fn in_time_order(&self) -> Result<(Tensor, Tensor)> {
        let s = self.seg_tokens;
        let part = |t: &Tensor| -> Result<Tensor> {
            let views = self
                .runs()
                .iter()
                .map(|&(a, n)| t.narrow(1, a * s, n * s))
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&views, 1)?.contiguous()
        };
        Ok((part(&self.k)?, part(&self.v)?))
    }

    /// A ring with room for `slots`, holding the same segments in time order from slot 0.
    fn grown(&self, slots: usize) -> Result<Self> {
        let mut bigger = Ring::new(&self.k, self.seg_tokens, slots)?;
        if self.len > 0 {
            let (k, v) = self.in_time_order()?;
            bigger.k.slice_set(&k, 1, 0)?;
            bigger.v.slice_set(&v, 1, 0)?;
            bigger.len = self.len;
        }
        Ok(bigger)
    }

    /// Writes `k`, `v` (`[heads, m·seg_tokens, hd]`, contiguous) into the next `m` free slots.
    fn push(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        let m = k.dim(1)? / self.seg_tokens;
        let s = self.seg_tokens;
        let mut i = 0;
        while i < m {
            let slot = self.slot(self.len + i);
            let run = (m - i).min(self.slots - slot);
            let (kk, vv) = if run == m {
                (k.clone(), v.clone())
            } else {
                (
                    k.narrow(1, i * s, run * s)?.contiguous()?,
                    v.narrow(1, i * s, run * s)?.contiguous()?,
                )
            };
            self.k.slice_set(&kk, 1, slot * s)?;
            self.v.slice_set(&vv, 1, slot * s)?;
            i += run;
        }
        self.len += m;
        Ok(())
    }
}

/// The KV cache of one DiT block.
#[derive(Debug, Clone, Default)]
pub struct BlockKv {
    ring: Option<Ring>,
}

impl BlockKv {
    /// Cached segments (between steps).
    pub fn segments(&self) -> usize {
        self.ring.as_ref().map(|r| r.len).unwrap_or(0)
    }

    /// Adds this step's post-RoPE `k`, `v` (`[heads, m·seg_tokens, hd]`) and returns the keys and
    /// values to attend over: every cached segment plus the new ones. In slot order unless
    /// `time_order` is asked (see the module doc); `kv_len` sizes the ring on first use.
    pub fn append(
        &mut self,
        k: &Tensor,
        v: &Tensor,
        seg_tokens: usize,
        kv_len: usize,
        time_order: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let n = k.dim(1)?;
        if seg_tokens == 0 || n % seg_tokens != 0 || k.dims() != v.dims() {
            candle_core::bail!(
                "KV cache: keys {:?} / values {:?} are not whole segments of {seg_tokens} tokens",
                k.dims(),
                v.dims()
            );
        }
        let m = n / seg_tokens;
        let ring = match self.ring.take() {
            None => Ring::new(&k, seg_tokens, slots_for(kv_len, m))?,
            Some(r) => {
                let (heads, _, hd) = k.dims3()?;
                let (rh, _, rhd) = r.k.dims3()?;
                if r.seg_tokens != seg_tokens
                    || (rh, rhd) != (heads, hd)
                    || r.k.dtype() != k.dtype()
                {
                    candle_core::bail!(
                        "KV cache holds segments of {} tokens × {rh} heads × {rhd}, this step has {seg_tokens} × {heads} × {hd}: clear the cache between videos",
                        r.seg_tokens
                    );
                }
                if r.len + m > r.slots {
                    r.grown(r.len + m)?
                } else {
                    r
                }
            }
        };
        let ring = self.ring.insert(ring);
        ring.push(&k, &v)?;
        if time_order {
            ring.in_time_order()
        } else if ring.len == ring.slots {
            Ok((ring.k.clone(), ring.v.clone()))
        } else if ring.runs().len() == 1 {
            let (a, cnt) = ring.runs()[0];
            let s = ring.seg_tokens;
            Ok((
                ring.k.narrow(1, a * s, cnt * s)?.contiguous()?,
                ring.v.narrow(1, a * s, cnt * s)?.contiguous()?,
            ))
        } else {
            ring.in_time_order()
        }
    }

    /// After the step: drops exactly one oldest segment if more than `kv_len` are held.
    pub fn evict(&mut self, kv_len: usize) {
        if let Some(r) = self.ring.as_mut() {
            if r.len > kv_len {
                r.oldest = (r.oldest + 1) % r.slots;
                r.len -= 1;
            }
        }
    }

    /// The cached segments in time order (tests, diagnostics).
    pub fn contents(&self) -> Result<Option<(Tensor, Tensor)>> {
        match &self.ring {
            Some(r) if r.len > 0 => r.in_time_order().map(Some),
            _ => Ok(None),
        }
    }

    pub fn clear(&mut self) {
        self.ring = None;
    }
}

/// Per-video KV cache: one [`BlockKv`] per DiT block.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub blocks: Vec<BlockKv>,
}

impl KvCache {
    pub fn new(cfg: &DitConfig) -> Self {
        Self {
            blocks: vec![BlockKv::default(); cfg.num_layers],
        }
    }
    pub fn clear(&mut self) {
        for b in &mut self.blocks {
            b.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Segment `id` of 2 tokens × 2 heads × 1 dim, every value = id.
    fn seg(ids: &[f32]) -> Tensor {
        let data: Vec<f32> = (0..2)
            .flat_map(|_| ids.iter().flat_map(|&i| [i, i]))
            .collect();
        Tensor::from_vec(data, (2, ids.len() * 2, 1), &Device::Cpu).unwrap()
    }

    fn ids(t: &Tensor) -> Vec<f32> {
        let v = t
            .to_dtype(DType::F32)
            .unwrap()
            .get(0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        v.chunks(2).map(|c| c[0]).collect()
    }

    /// The upstream rule, replayed with plain vectors.
    fn upstream(cache: &mut Vec<f32>, new: &[f32], kv_len: usize) -> Vec<f32> {
        cache.extend_from_slice(new);
        let all = cache.clone();
        if cache.len() > kv_len {
            cache.remove(0);
        }
        all
    }

    #[test]
    fn ring_holds_the_same_segments_as_cat_and_drop() -> Result<()> {
        for kv_len in 0..6 {
            let mut kv = BlockKv::default();
            let mut reference = Vec::new();
            let mut next = 0f32;
            for step in 0..9 {
                let m = if step == 0 { 3 } else { 1 };
                let new: Vec<f32> = (0..m).map(|i| next + i as f32).collect();
                next += m as f32;
                let want = upstream(&mut reference, &new, kv_len);
                let time_order = step % 2 == 0;
                let (k, v) = kv.append(&seg(&new), &seg(&new), 2, kv_len, time_order)?;
                let (mut got_k, got_v) = (ids(&k), ids(&v));
                assert_eq!(got_k, got_v);
                if time_order {
                    assert_eq!(got_k, want, "kv_len {kv_len} step {step}");
                } else {
                    got_k.sort_by(f32::total_cmp);
                    assert_eq!(got_k, want, "kv_len {kv_len} step {step} (as a set)");
                }
                kv.evict(kv_len);
                let held = kv.contents()?.map(|(k, _)| ids(&k)).unwrap_or_default();
                assert_eq!(held, reference, "kv_len {kv_len} after step {step}");
            }
            // The ring never grew past its first size for this schedule.
            assert_eq!(kv.ring.as_ref().unwrap().slots, slots_for(kv_len, 3));
        }
        Ok(())
    }

    #[test]
    fn full_ring_is_read_without_a_copy() -> Result<()> {
        let mut kv = BlockKv::default();
        kv.append(&seg(&[0., 1., 2.]), &seg(&[0., 1., 2.]), 2, 3, false)?;
        kv.evict(3);
        let (k, _) = kv.append(&seg(&[3.]), &seg(&[3.]), 2, 3, false)?;
        assert_eq!(ids(&k), vec![0., 1., 2., 3.]);
        // The returned keys are the ring itself: the next step's write into segment 0's freed
        // slot shows through them.
        kv.evict(3);
        kv.append(&seg(&[4.]), &seg(&[4.]), 2, 3, false)?;
        assert_eq!(ids(&k), vec![4., 1., 2., 3.]);
        Ok(())
    }

    #[test]
    fn ring_grows_when_a_step_brings_more_segments() -> Result<()> {
        let mut kv = BlockKv::default();
        kv.append(&seg(&[0.]), &seg(&[0.]), 2, 1, true)?;
        kv.evict(1);
        let (k, _) = kv.append(&seg(&[1., 2., 3.]), &seg(&[1., 2., 3.]), 2, 1, true)?;
        assert_eq!(ids(&k), vec![0., 1., 2., 3.]);
        Ok(())
    }

    #[test]
    fn mismatched_segments_are_refused() -> Result<()> {
        let mut kv = BlockKv::default();
        kv.append(&seg(&[0., 1.]), &seg(&[0., 1.]), 2, 3, false)?;
        let err = kv
            .append(&seg(&[2.]), &seg(&[2.]), 1, 3, false)
            .unwrap_err();
        assert!(err.to_string().contains("clear the cache"), "{err}");
        Ok(())
    }
}
