//! The rolling self-attention KV cache (spec §5.4): post-RoPE keys and values of the most
//! recent segments, per block, in a ring of segment slots allocated once per video.
//!
//! Upstream concatenates the cache with the new segment every step and then drops the oldest
//! one, which copies the whole cache twice per block and step and lets memory peak at twice its
//! size. Here each block owns two buffers `[heads, slots·seg_tokens, head_dim]` with exactly as
//! many slots as segments are kept between steps (no spare): a step copies the cached segments
//! and its new ones into the keys/values it attends over (one block's worth, transient), then
//! drops the oldest segment and writes the new ones into the freed slots (evict before write).
//!
//! Key order: the attended keys come in the order the previous design (a ring with one spare
//! slot, read in place) gave them, which that ring's slot bookkeeping reproduces here as
//! *positions*: LCSA is invariant under a permutation of whole key segments (the draft's local
//! mask depends only on the window's position inside its segment, top-k and softmax are
//! order-free), but the f32 summation order is not, and keeping it keeps the outputs bit for bit.
//! Callers that need the keys in time order (the draft probes compared with upstream) ask for it.

use candle_core::{Result, Tensor};

use crate::config::DitConfig;

/// Positions of the order-keeping layout for a cache that keeps `kv_len` segments when a step
/// adds `new_segments` (the slots of the previous ring, which had one spare).
pub fn slots_for(kv_len: usize, new_segments: usize) -> usize {
    (kv_len + 1).max(new_segments)
}

/// Device slots a block needs: the most segments kept between steps when the first step
/// brings `first_segments` and each step drops one oldest segment once over `kv_len`.
pub fn stored_slots(kv_len: usize, first_segments: usize) -> usize {
    let kept = first_segments - usize::from(first_segments > kv_len);
    kv_len.max(kept).max(1)
}

/// One block's segments: device storage without a spare slot, plus the order-keeping positions.
#[derive(Debug, Clone)]
struct Ring {
    /// `[heads, stored·seg_tokens, head_dim]` each, contiguous.
    k: Tensor,
    v: Tensor,
    seg_tokens: usize,
    /// Device slots not holding a segment.
    free: Vec<usize>,
    /// Positions (see the module doc): `positions` of them, the oldest filled one and how many
    /// are filled; `at[p]` = the device slot of the segment at position `p`.
    positions: usize,
    oldest: usize,
    len: usize,
    at: Vec<Option<usize>>,
}

impl Ring {
    fn new(like: &Tensor, seg_tokens: usize, stored: usize, positions: usize) -> Result<Self> {
        let (heads, _, hd) = like.dims3()?;
        let shape = (heads, stored * seg_tokens, hd);
        Ok(Self {
            k: Tensor::zeros(shape, like.dtype(), like.device())?,
            v: Tensor::zeros(shape, like.dtype(), like.device())?,
            seg_tokens,
            free: (0..stored).rev().collect(),
            positions,
            oldest: 0,
            len: 0,
            at: vec![None; positions],
        })
    }

    fn stored(&self) -> usize {
        self.k.dim(1).unwrap_or(0) / self.seg_tokens
    }

    fn position(&self, i: usize) -> usize {
        (self.oldest + i) % self.positions
    }

    /// Re-lays the positions in time order from 0 with room for `positions` (no data moves).
    fn regrow_positions(&mut self, positions: usize) {
        let order: Vec<Option<usize>> = (0..self.len).map(|i| self.at[self.position(i)]).collect();
        self.at = vec![None; positions];
        self.at[..order.len()].copy_from_slice(&order);
        self.positions = positions;
        self.oldest = 0;
    }

    /// A free device slot, growing the buffers when none is left.
    fn take_slot(&mut self) -> Result<usize> {
        if let Some(s) = self.free.pop() {
            return Ok(s);
        }
        let old = self.stored();
        let (heads, _, hd) = self.k.dims3()?;
        let grow = |t: &Tensor| -> Result<Tensor> {
            let bigger = Tensor::zeros(
                (heads, (old + 1) * self.seg_tokens, hd),
                t.dtype(),
                t.device(),
            )?;
            bigger.slice_set(t, 1, 0)?;
            Ok(bigger)
        };
        self.k = grow(&self.k)?;
        self.v = grow(&self.v)?;
        Ok(old)
    }

    /// The stored segments in time order (copies).
    fn in_time_order(&self) -> Result<(Tensor, Tensor)> {
        let order: Vec<Source> = (0..self.len)
            .map(|i| Source::Stored(self.at[self.position(i)].expect("filled position")))
            .collect();
        Ok((
            self.gather(&self.k, None, &order)?,
            self.gather(&self.v, None, &order)?,
        ))
    }

    /// Concatenates stored slots and new segments (`new`: `[heads, m·seg, hd]`) in `order`,
    /// merging runs of consecutive slots into one view.
    fn gather(&self, stored: &Tensor, new: Option<&Tensor>, order: &[Source]) -> Result<Tensor> {
        let s = self.seg_tokens;
        let mut views: Vec<Tensor> = Vec::new();
        let mut run: Option<(Source, usize)> = None;
        let flush = |run: Option<(Source, usize)>, views: &mut Vec<Tensor>| -> Result<()> {
            if let Some((src, n)) = run {
                let (t, first) = match src {
                    Source::Stored(slot) => (stored, slot),
                    Source::New(i) => (new.expect("new segments given"), i),
                };
                views.push(t.narrow(1, first * s, n * s)?);
            }
            Ok(())
        };
        for &src in order {
            run = match run {
                Some((start, n)) if start.offset(n) == Some(src) => Some((start, n + 1)),
                other => {
                    flush(other, &mut views)?;
                    Some((src, 1))
                }
            };
        }
        flush(run, &mut views)?;
        if views.len() == 1 {
            return views.pop().expect("one view").contiguous();
        }
        Tensor::cat(&views, 1)?.contiguous()
    }
}

/// Where one attended segment comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A device slot of the ring.
    Stored(usize),
    /// The i-th of this step's new segments.
    New(usize),
}

impl Source {
    /// The source `n` segments further in the same tensor.
    fn offset(self, n: usize) -> Option<Source> {
        match self {
            Source::Stored(s) => Some(Source::Stored(s + n)),
            Source::New(i) => Some(Source::New(i + n)),
        }
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

    /// Device slots allocated (tests, the memory plan's check).
    pub fn stored_slots(&self) -> usize {
        self.ring.as_ref().map(Ring::stored).unwrap_or(0)
    }

    /// Adds this step's post-RoPE `k`, `v` (`[heads, m·seg_tokens, hd]`) and returns the keys and
    /// values to attend over: every cached segment plus the new ones (a copy, in the order of the
    /// module doc, or in time order if `time_order`). Then drops the oldest segment when more
    /// than `kv_len` are held and stores the new ones in the freed slots. `kv_len` sizes the
    /// ring on first use.
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
        let mut ring = match self.ring.take() {
            None => Ring::new(
                &k,
                seg_tokens,
                stored_slots(kv_len, m),
                slots_for(kv_len, m),
            )?,
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
                r
            }
        };
        if ring.len + m > ring.positions {
            ring.regrow_positions(ring.len + m);
        }
        // What the previous ring returned: its slots in slot order once full, else time order.
        let total = ring.len + m;
        let source = |ring: &Ring, i: usize| -> Source {
            // i-th segment in time order: stored ones first, then the new ones.
            if i < ring.len {
                Source::Stored(ring.at[ring.position(i)].expect("filled position"))
            } else {
                Source::New(i - ring.len)
            }
        };
        let order: Vec<Source> = if !time_order && total == ring.positions {
            (0..ring.positions)
                .map(|p| {
                    let i = (p + ring.positions - ring.oldest) % ring.positions;
                    source(&ring, i)
                })
                .collect()
        } else {
            (0..total).map(|i| source(&ring, i)).collect()
        };
        let attend = if ring.len == 0 {
            (k.clone(), v.clone())
        } else {
            (
                ring.gather(&ring.k, Some(&k), &order)?,
                ring.gather(&ring.v, Some(&v), &order)?,
            )
        };

        // Evict before write: upstream drops exactly one oldest segment per step once over
        // kv_len; its slot takes a new segment.
        let new_positions: Vec<usize> = (0..m).map(|i| ring.position(ring.len + i)).collect();
        ring.len += m;
        let mut dropped_new = None;
        if ring.len > kv_len {
            let p = ring.oldest;
            match ring.at[p].take() {
                Some(slot) => ring.free.push(slot),
                None => dropped_new = Some(p), // a new segment that is never stored
            }
            ring.oldest = (ring.oldest + 1) % ring.positions;
            ring.len -= 1;
        }
        let s = seg_tokens;
        for (i, &p) in new_positions.iter().enumerate() {
            if dropped_new == Some(p) {
                continue;
            }
            let slot = ring.take_slot()?;
            ring.k
                .slice_set(&k.narrow(1, i * s, s)?.contiguous()?, 1, slot * s)?;
            ring.v
                .slice_set(&v.narrow(1, i * s, s)?.contiguous()?, 1, slot * s)?;
            ring.at[p] = Some(slot);
        }
        self.ring = Some(ring);
        Ok(attend)
    }

    /// Kept for callers written against the ring with a spare slot: the oldest segment is now
    /// dropped inside [`BlockKv::append`], before the new ones are written.
    pub fn evict(&mut self, _kv_len: usize) {}

    /// The cached segments in time order (tests, diagnostics).
    pub fn contents(&self) -> Result<Option<(Tensor, Tensor)>> {
        match &self.ring {
            Some(r) if r.len > 0 => r.in_time_order().map(Some),
            _ => Ok(None),
        }
    }

    /// Bytes of the device buffers.
    pub fn bytes(&self) -> usize {
        self.ring
            .as_ref()
            .map(|r| 2 * r.k.elem_count() * r.k.dtype().size_in_bytes())
            .unwrap_or(0)
    }

    /// Moves the buffers to `device` (parking a tile's cache in host memory and back).
    pub fn move_to(&mut self, device: &candle_core::Device) -> Result<()> {
        if let Some(r) = self.ring.as_mut() {
            if !r.k.device().same_device(device) {
                r.k = r.k.to_device(device)?;
                r.v = r.v.to_device(device)?;
            }
        }
        Ok(())
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

    /// Bytes of every block's buffers.
    pub fn bytes(&self) -> usize {
        self.blocks.iter().map(BlockKv::bytes).sum()
    }

    /// Moves every block's buffers to `device` (host parking between a tile's steps).
    pub fn move_to(&mut self, device: &candle_core::Device) -> Result<()> {
        for b in &mut self.blocks {
            b.move_to(device)?;
        }
        Ok(())
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
            assert_eq!(kv.ring.as_ref().unwrap().positions, slots_for(kv_len, 3));
            assert_eq!(kv.stored_slots(), stored_slots(kv_len, 3));
        }
        Ok(())
    }

    /// The previous ring (one spare slot, read in place), replayed with plain vectors: the
    /// keys it handed to attention, in its order.
    struct SpareRing {
        slots: Vec<Option<f32>>,
        oldest: usize,
        len: usize,
    }

    impl SpareRing {
        fn step(&mut self, new: &[f32], kv_len: usize, time_order: bool) -> Vec<f32> {
            if self.slots.is_empty() {
                self.slots = vec![None; slots_for(kv_len, new.len())];
            }
            let n = self.slots.len();
            if self.len + new.len() > n {
                let kept: Vec<_> = (0..self.len)
                    .map(|i| self.slots[(self.oldest + i) % n])
                    .collect();
                self.slots = kept;
                self.slots.resize(self.len + new.len(), None);
                self.oldest = 0;
            }
            let n = self.slots.len();
            for (i, &x) in new.iter().enumerate() {
                self.slots[(self.oldest + self.len + i) % n] = Some(x);
            }
            self.len += new.len();
            let out = if !time_order && self.len == n {
                self.slots.iter().map(|x| x.unwrap()).collect()
            } else {
                (0..self.len)
                    .map(|i| self.slots[(self.oldest + i) % n].unwrap())
                    .collect()
            };
            if self.len > kv_len {
                self.slots[self.oldest] = None;
                self.oldest = (self.oldest + 1) % n;
                self.len -= 1;
            }
            out
        }
    }

    #[test]
    fn attends_in_the_spare_rings_order_without_its_spare_slot() -> Result<()> {
        for kv_len in 0..6 {
            let mut kv = BlockKv::default();
            let mut spare = SpareRing {
                slots: Vec::new(),
                oldest: 0,
                len: 0,
            };
            let mut next = 0f32;
            for step in 0..11 {
                let m = if step == 0 { 3 } else { 1 };
                let new: Vec<f32> = (0..m).map(|i| next + i as f32).collect();
                next += m as f32;
                let time_order = step % 3 == 2;
                let want = spare.step(&new, kv_len, time_order);
                let (k, v) = kv.append(&seg(&new), &seg(&new), 2, kv_len, time_order)?;
                assert_eq!(ids(&k), want, "kv_len {kv_len} step {step}");
                assert_eq!(ids(&v), want, "kv_len {kv_len} step {step}");
            }
            // Device slots = segments kept between steps: one fewer than the spare ring's.
            assert_eq!(
                kv.stored_slots(),
                stored_slots(kv_len, 3),
                "kv_len {kv_len}"
            );
            assert_eq!(
                stored_slots(kv_len, 3),
                crate::memory_plan::ring_slots(kv_len)
            );
            if kv_len >= 3 {
                assert_eq!(kv.stored_slots() + 1, slots_for(kv_len, 3));
            }
        }
        Ok(())
    }

    #[test]
    fn cache_survives_a_trip_to_the_host() -> Result<()> {
        let mut kv = BlockKv::default();
        kv.append(&seg(&[0., 1., 2.]), &seg(&[0., 1., 2.]), 2, 3, false)?;
        let before = kv.contents()?.map(|(k, _)| ids(&k));
        kv.move_to(&Device::Cpu)?;
        assert_eq!(kv.contents()?.map(|(k, _)| ids(&k)), before);
        assert_eq!(kv.bytes(), 2 * 2 * 6 * 4);
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
