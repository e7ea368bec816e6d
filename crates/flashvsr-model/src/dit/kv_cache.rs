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
//!
//! Storage: the ring holds the compute dtype (exact), or, with [`KvStorage::Fp8`], e4m3 bytes
//! with one f32 scale per (head, token) row of `head_dim` values (quantized when a segment is
//! written, decoded when it is attended over): about half the bytes of bf16. The step's own new
//! segments are always attended over unquantized.

use candle_core::{DType, Device, Result, Tensor};
use flashvsr_kernels::fp8::{self, Fp8Rows};

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

/// How the ring keeps keys and values between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvStorage {
    /// The compute dtype: bit-exact.
    #[default]
    Dense,
    /// e4m3 with one f32 scale per (head, token) row (`amax / 448`, as the FP8 linears).
    Fp8,
}

impl KvStorage {
    /// Bytes of one stored (head, token) row of `head_dim` values with compute dtype `dtype`.
    pub fn row_bytes(self, dtype: DType, head_dim: usize) -> usize {
        match self {
            KvStorage::Dense => head_dim * dtype.size_in_bytes(),
            KvStorage::Fp8 => head_dim + 4,
        }
    }
}

/// The keys or the values of one ring, `[heads, tokens, head_dim]`, in the ring's storage.
#[derive(Debug, Clone)]
enum SlotBuffer {
    Dense(Tensor),
    /// `q`: U8 `[heads, tokens, head_dim]`; `scale`: F32 `[heads, tokens]`; `table`: the
    /// e4m3 decode table, kept on the device.
    Fp8 {
        q: Tensor,
        scale: Tensor,
        table: Tensor,
    },
}

impl SlotBuffer {
    fn zeros(
        storage: KvStorage,
        (heads, tokens, hd): (usize, usize, usize),
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Ok(match storage {
            KvStorage::Dense => {
                SlotBuffer::Dense(Tensor::zeros((heads, tokens, hd), dtype, device)?)
            }
            KvStorage::Fp8 => SlotBuffer::Fp8 {
                q: Tensor::zeros((heads, tokens, hd), DType::U8, device)?,
                scale: Tensor::ones((heads, tokens), DType::F32, device)?,
                table: fp8::decode_table(device)?,
            },
        })
    }

    /// `(heads, tokens, head_dim)`.
    fn dims(&self) -> Result<(usize, usize, usize)> {
        match self {
            SlotBuffer::Dense(t) => t.dims3(),
            SlotBuffer::Fp8 { q, .. } => q.dims3(),
        }
    }

    fn storage(&self) -> KvStorage {
        match self {
            SlotBuffer::Dense(_) => KvStorage::Dense,
            SlotBuffer::Fp8 { .. } => KvStorage::Fp8,
        }
    }

    fn device(&self) -> &Device {
        match self {
            SlotBuffer::Dense(t) => t.device(),
            SlotBuffer::Fp8 { q, .. } => q.device(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            SlotBuffer::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            SlotBuffer::Fp8 { q, scale, .. } => q.elem_count() + 4 * scale.elem_count(),
        }
    }

    /// Tokens `[start, start + len)` in `dtype` (a view when dense, decoded when fp8).
    fn read(&self, start: usize, len: usize, dtype: DType) -> Result<Tensor> {
        match self {
            SlotBuffer::Dense(t) => t.narrow(1, start, len),
            SlotBuffer::Fp8 { q, scale, table } => {
                let (heads, _, hd) = q.dims3()?;
                let rows = Fp8Rows {
                    q: q.narrow(1, start, len)?
                        .contiguous()?
                        .reshape((heads * len, hd))?,
                    scale: scale.narrow(1, start, len)?.contiguous()?.flatten_all()?,
                };
                rows.dequantize_with(table, dtype)?
                    .reshape((heads, len, hd))
            }
        }
    }

    /// Stores `x` (`[heads, len, head_dim]`, contiguous) at token `start`.
    fn write(&mut self, x: &Tensor, start: usize) -> Result<()> {
        match self {
            SlotBuffer::Dense(t) => t.slice_set(x, 1, start),
            SlotBuffer::Fp8 { q, scale, .. } => {
                let (heads, len, hd) = x.dims3()?;
                let rows = fp8::quantize_rows(&x.reshape((heads * len, hd))?)?;
                q.slice_set(&rows.q.reshape((heads, len, hd))?, 1, start)?;
                scale.slice_set(&rows.scale.reshape((heads, len))?, 1, start)
            }
        }
    }

    /// The same contents with room for `tokens` tokens (the new ones zero).
    fn grown(&self, tokens: usize, dtype: DType) -> Result<Self> {
        let (heads, _, hd) = self.dims()?;
        let mut bigger =
            SlotBuffer::zeros(self.storage(), (heads, tokens, hd), dtype, self.device())?;
        match (&mut bigger, self) {
            (SlotBuffer::Dense(b), SlotBuffer::Dense(t)) => b.slice_set(t, 1, 0)?,
            (
                SlotBuffer::Fp8 {
                    q: bq, scale: bs, ..
                },
                SlotBuffer::Fp8 { q, scale, .. },
            ) => {
                bq.slice_set(q, 1, 0)?;
                bs.slice_set(scale, 1, 0)?;
            }
            _ => unreachable!("same storage"),
        }
        Ok(bigger)
    }

    fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(match self {
            SlotBuffer::Dense(t) => SlotBuffer::Dense(t.to_device(device)?),
            SlotBuffer::Fp8 { q, scale, table } => SlotBuffer::Fp8 {
                q: q.to_device(device)?,
                scale: scale.to_device(device)?,
                table: table.to_device(device)?,
            },
        })
    }
}

/// One block's segments: device storage without a spare slot, plus the order-keeping positions.
#[derive(Debug, Clone)]
struct Ring {
    /// `[heads, stored·seg_tokens, head_dim]` each.
    k: SlotBuffer,
    v: SlotBuffer,
    /// The compute dtype the segments come and go in.
    dtype: DType,
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
    fn new(
        like: &Tensor,
        storage: KvStorage,
        seg_tokens: usize,
        stored: usize,
        positions: usize,
    ) -> Result<Self> {
        let (heads, _, hd) = like.dims3()?;
        let shape = (heads, stored * seg_tokens, hd);
        let (dtype, device) = (like.dtype(), like.device());
        Ok(Self {
            k: SlotBuffer::zeros(storage, shape, dtype, device)?,
            v: SlotBuffer::zeros(storage, shape, dtype, device)?,
            dtype,
            seg_tokens,
            free: (0..stored).rev().collect(),
            positions,
            oldest: 0,
            len: 0,
            at: vec![None; positions],
        })
    }

    fn stored(&self) -> usize {
        self.k.dims().map(|(_, t, _)| t).unwrap_or(0) / self.seg_tokens
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
        let tokens = (old + 1) * self.seg_tokens;
        self.k = self.k.grown(tokens, self.dtype)?;
        self.v = self.v.grown(tokens, self.dtype)?;
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
    /// merging runs of consecutive slots into one read.
    fn gather(
        &self,
        stored: &SlotBuffer,
        new: Option<&Tensor>,
        order: &[Source],
    ) -> Result<Tensor> {
        let s = self.seg_tokens;
        let mut views: Vec<Tensor> = Vec::new();
        let mut run: Option<(Source, usize)> = None;
        let flush = |run: Option<(Source, usize)>, views: &mut Vec<Tensor>| -> Result<()> {
            if let Some((src, n)) = run {
                views.push(match src {
                    Source::Stored(slot) => stored.read(slot * s, n * s, self.dtype)?,
                    Source::New(i) => new.expect("new segments given").narrow(1, i * s, n * s)?,
                });
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
    storage: KvStorage,
}

impl BlockKv {
    /// An empty cache keeping its segments as `storage`.
    pub fn with_storage(storage: KvStorage) -> Self {
        Self {
            ring: None,
            storage,
        }
    }

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
                self.storage,
                seg_tokens,
                stored_slots(kv_len, m),
                slots_for(kv_len, m),
            )?,
            Some(r) => {
                let (heads, _, hd) = k.dims3()?;
                let (rh, _, rhd) = r.k.dims()?;
                if r.seg_tokens != seg_tokens || (rh, rhd) != (heads, hd) || r.dtype != k.dtype() {
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
                .write(&k.narrow(1, i * s, s)?.contiguous()?, slot * s)?;
            ring.v
                .write(&v.narrow(1, i * s, s)?.contiguous()?, slot * s)?;
            ring.at[p] = Some(slot);
        }
        self.ring = Some(ring);
        Ok(attend)
    }

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
            .map(|r| r.k.bytes() + r.v.bytes())
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
        Self::with_storage(cfg, KvStorage::Dense)
    }

    /// One empty [`BlockKv`] per block, each keeping its segments as `storage`.
    pub fn with_storage(cfg: &DitConfig, storage: KvStorage) -> Self {
        Self {
            blocks: vec![BlockKv::with_storage(storage); cfg.num_layers],
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

    /// Random `[heads, segments·seg, hd]` keys, segment `i` scaled by `i + 1` (rows of
    /// different magnitudes get different fp8 scales).
    fn random_segments(first: usize, m: usize, seg: usize) -> Result<Tensor> {
        let (heads, hd) = (2, 16);
        let parts: Vec<Tensor> = (first..first + m)
            .map(|i| {
                Tensor::randn(0f32, 1.0, (heads, seg, hd), &Device::Cpu)?
                    .affine((i + 1) as f64, 0.0)
            })
            .collect::<Result<_>>()?;
        Tensor::cat(&parts, 1)
    }

    /// What an fp8 ring returns for a stored segment: its rows quantized and decoded.
    fn through_fp8(x: &Tensor) -> Result<Tensor> {
        let (heads, n, hd) = x.dims3()?;
        fp8::quantize_rows(&x.reshape((heads * n, hd))?)?
            .dequantize(x.dtype())?
            .reshape((heads, n, hd))
    }

    #[test]
    fn fp8_ring_attends_over_decoded_stored_segments_and_exact_new_ones() -> Result<()> {
        let seg = 4;
        for kv_len in [1usize, 3] {
            let mut dense = BlockKv::default();
            let mut fp8_kv = BlockKv::with_storage(KvStorage::Fp8);
            let mut next = 0;
            for step in 0..7 {
                let m = if step == 0 { 3 } else { 1 };
                let k = random_segments(next, m, seg)?;
                let v = random_segments(next, m, seg)?.affine(-0.5, 0.25)?;
                next += m;
                let time_order = step % 2 == 1;
                // The dense ring with the same history, fed the quantized-and-decoded segments
                // of earlier steps, is what the fp8 ring must return: same order, stored
                // segments decoded, this step's segments untouched.
                let (dk, dv) = dense.append(&k, &v, seg, kv_len, time_order)?;
                let (fk, fv) = fp8_kv.append(&k, &v, seg, kv_len, time_order)?;
                assert_eq!(fk.dims(), dk.dims());
                let max_abs = |t: Tensor| -> Result<f32> { t.abs()?.max_all()?.to_scalar::<f32>() };
                let tokens = dk.dim(1)?;
                for (f, d, new) in [(&fk, &dk, &k), (&fv, &dv, &v)] {
                    // Each attended segment is either one of this step's (exact) or a stored
                    // one (its decode).
                    for j in 0..tokens / seg {
                        let got = f.narrow(1, j * seg, seg)?;
                        let want = d.narrow(1, j * seg, seg)?;
                        let mut is_new = false;
                        for i in 0..m {
                            is_new |= max_abs((&new.narrow(1, i * seg, seg)? - &want)?)? == 0.0;
                        }
                        let expect = if is_new {
                            want.clone()
                        } else {
                            through_fp8(&want)?
                        };
                        let diff = max_abs((&got - &expect)?)?;
                        assert_eq!(diff, 0.0, "kv_len {kv_len} step {step} segment {j}");
                        // e4m3 keeps 3 mantissa bits: within 1/16 of the row's largest value.
                        let amax = want.abs()?.max_keepdim(2)?;
                        let err = (&got - &want)?.abs()?.broadcast_div(&amax)?.max_all()?;
                        assert!(err.to_scalar::<f32>()? <= 1.0 / 16.0 + 1e-6);
                    }
                }
                assert_eq!(fp8_kv.segments(), dense.segments());
            }
            assert_eq!(fp8_kv.stored_slots(), dense.stored_slots());
            // 2 heads × 16 dims per token: dense f32 64 bytes per row, fp8 16 + 4.
            let rows = 2 * fp8_kv.stored_slots() * seg * 2;
            assert_eq!(dense.bytes(), rows * 16 * 4);
            assert_eq!(fp8_kv.bytes(), rows * (16 + 4));
        }
        Ok(())
    }

    #[test]
    fn fp8_ring_survives_a_trip_to_the_host_and_growing() -> Result<()> {
        let seg = 4;
        let mut kv = BlockKv::with_storage(KvStorage::Fp8);
        let first = random_segments(0, 1, seg)?;
        kv.append(&first, &first, seg, 1, true)?;
        let before = kv.contents()?.expect("one segment").0;
        assert_eq!(
            (&before - &through_fp8(&first)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?,
            0.0
        );
        kv.move_to(&Device::Cpu)?;
        // Three new segments with kv_len 1: the ring grows to hold them.
        let more = random_segments(1, 3, seg)?;
        let (k, _) = kv.append(&more, &more, seg, 1, true)?;
        assert_eq!(k.dim(1)?, 4 * seg);
        let old = k.narrow(1, 0, seg)?;
        assert_eq!((&old - &before)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        let held = kv.contents()?.expect("segments").0;
        let want = through_fp8(&more)?;
        assert_eq!((&held - &want)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }
}
