//! Per-frame pixel ops at both ends of the pipeline, as Candle custom ops
//! (`kernels/frame_ops.cu`; every offset is 64-bit, so 4K videos stay in one launch):
//!
//! * [`resample_rgb8`]: separable 8-bit resampling with integer fixed-point windows given as
//!   tables (Pillow's arithmetic: horizontal pass rounded and clipped to u8, then vertical).
//!   The model builds the tables (its PIL-exact bicubic windows, with the crop or edge padding
//!   folded in), so the kernel is bit-exact to the host resize. Runs on the CPU too (the same
//!   integer loops), which lets CPU tests check the tables.
//! * [`adain_to_rgb8`] / [`unit_to_rgb8`]: the AdaIN colour fix fused with the [-1, 1] → u8
//!   conversion, or the conversion alone. CUDA only: on other devices the model runs its
//!   tensor code (`color_fix::adain`, `frames::to_rgb_frames`), the reference these match.

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};

/// Fractional bits of the fixed-point weights (Pillow's `PRECISION_BITS`).
pub const RESAMPLE_PRECISION_BITS: u32 = 22;

/// Resamples an interleaved RGB frame `src` (`[H, W, 3]` u8) with one window table per axis,
/// giving `[out_h, out_w, 3]` u8.
///
/// `horizontal` `[out_w, 2 + taps]` i32 and `vertical` `[out_h, 2 + taps]` i32: per output
/// index `[first, count, w_0, .., w_{count-1}, 0 ..]` with weights in
/// [`RESAMPLE_PRECISION_BITS`]-bit fixed point; `first + count` must lie inside the input
/// width (horizontal) or height (vertical). Each pass starts its accumulator at one half, and
/// rounds by shifting and clipping to 0..=255.
pub fn resample_rgb8(src: &Tensor, horizontal: &Tensor, vertical: &Tensor) -> Result<Tensor> {
    let _span = tracing::span!(tracing::Level::TRACE, "resample-rgb8").entered();
    let (h, w, c) = src.dims3()?;
    if c != 3 || src.dtype() != DType::U8 {
        bail!(
            "resample_rgb8: src must be [H, W, 3] u8, got {:?} {:?}",
            src.dims(),
            src.dtype()
        )
    }
    let host_table = |t: &Tensor, what: &str, in_len: usize| -> Result<()> {
        let (_, row) = t.dims2()?;
        if t.dtype() != DType::I32 {
            bail!(
                "resample_rgb8: {what} table must be i32, got {:?}",
                t.dtype()
            )
        }
        let data = t
            .to_device(&candle_core::Device::Cpu)?
            .flatten_all()?
            .to_vec1::<i32>()?;
        check_table(&data, row, in_len, what)
    };
    // The kernel has no bounds checks: the tables are checked here (a copy to the host per
    // call; `ResampleTables` checks once and keeps them on the device).
    host_table(horizontal, "horizontal", w)?;
    host_table(vertical, "vertical", h)?;
    src.contiguous()?.apply_op3_no_bwd(
        &horizontal.contiguous()?,
        &vertical.contiguous()?,
        &Resample,
    )
}

/// Window tables kept on the device, checked once ([`ResampleTables::new`]), for
/// [`ResampleTables::apply`] per frame without re-checking.
#[derive(Debug, Clone)]
pub struct ResampleTables {
    horizontal: Tensor,
    vertical: Tensor,
    in_size: (usize, usize),
}

impl ResampleTables {
    /// Checks the tables against a `in_w`×`in_h` input (see [`resample_rgb8`] for the format)
    /// and moves them to `device`.
    pub fn new(
        horizontal: &[i32],
        vertical: &[i32],
        row_len: usize,
        in_w: usize,
        in_h: usize,
        device: &candle_core::Device,
    ) -> Result<Self> {
        if row_len < 2
            || !horizontal.len().is_multiple_of(row_len)
            || !vertical.len().is_multiple_of(row_len)
        {
            bail!(
                "resample tables: lengths {} / {} are not multiples of the row length {row_len}",
                horizontal.len(),
                vertical.len()
            )
        }
        check_table(horizontal, row_len, in_w, "horizontal")?;
        check_table(vertical, row_len, in_h, "vertical")?;
        let ht = Tensor::from_slice(horizontal, (horizontal.len() / row_len, row_len), device)?;
        let vt = Tensor::from_slice(vertical, (vertical.len() / row_len, row_len), device)?;
        Ok(Self {
            horizontal: ht,
            vertical: vt,
            in_size: (in_w, in_h),
        })
    }

    /// Output size (width, height).
    pub fn out_size(&self) -> (usize, usize) {
        (self.horizontal.dims()[0], self.vertical.dims()[0])
    }

    /// Resamples one `[in_h, in_w, 3]` u8 frame on the tables' device.
    pub fn apply(&self, src: &Tensor) -> Result<Tensor> {
        let _span = tracing::span!(tracing::Level::TRACE, "resample-rgb8").entered();
        let (h, w, c) = src.dims3()?;
        if (w, h) != self.in_size || c != 3 || src.dtype() != DType::U8 {
            bail!(
                "resample: expected a [{}, {}, 3] u8 frame, got {:?} {:?}",
                self.in_size.1,
                self.in_size.0,
                src.dims(),
                src.dtype()
            )
        }
        src.contiguous()?
            .apply_op3_no_bwd(&self.horizontal, &self.vertical, &Resample)
    }
}

/// Fails unless every window `[first, count, ..]` of `data` (rows of `row` values, at least
/// one) lies inside an input of `in_len` samples and its row.
fn check_table(data: &[i32], row: usize, in_len: usize, what: &str) -> Result<()> {
    if row < 2 || data.is_empty() || !data.len().is_multiple_of(row) {
        bail!("resample: {what} table of {} values is not a non-empty set of rows of 2 + taps ({row})", data.len())
    }
    for (i, win) in data.chunks_exact(row).enumerate() {
        let (first, count) = (win[0] as i64, win[1] as i64);
        if first < 0 || count < 0 || count as usize > row - 2 || (first + count) as usize > in_len {
            bail!("resample: {what} window {i} [{first}, +{count}] does not fit the input ({in_len}) or the table row ({row})")
        }
    }
    Ok(())
}

struct Resample;

fn clip8(acc: i32) -> u8 {
    (acc >> RESAMPLE_PRECISION_BITS).clamp(0, 255) as u8
}

impl CustomOp3 for Resample {
    fn name(&self) -> &'static str {
        "resample-rgb8"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let slice = |_: &CpuStorage, l: &Layout| -> Result<(usize, usize)> {
            match l.contiguous_offsets() {
                Some(o) => Ok(o),
                None => bail!("resample_rgb8: an operand is not contiguous"),
            }
        };
        let (src, ht, vt) = match (s1, s2, s3) {
            (CpuStorage::U8(a), CpuStorage::I32(b), CpuStorage::I32(c)) => {
                let (a0, a1) = slice(s1, l1)?;
                let (b0, b1) = slice(s2, l2)?;
                let (c0, c1) = slice(s3, l3)?;
                (&a[a0..a1], &b[b0..b1], &c[c0..c1])
            }
            _ => bail!("resample_rgb8: expected u8 src and i32 tables"),
        };
        let (in_h, in_w, _) = l1.shape().dims3()?;
        let (out_w, row) = l2.shape().dims2()?;
        let (out_h, _) = l3.shape().dims2()?;
        let half = 1i32 << (RESAMPLE_PRECISION_BITS - 1);
        let mut mid = vec![0u8; in_h * out_w * 3];
        for y in 0..in_h {
            let line = &src[y * in_w * 3..(y + 1) * in_w * 3];
            for (x, win) in ht.chunks_exact(row).enumerate() {
                let (first, count) = (win[0] as usize, win[1] as usize);
                for c in 0..3 {
                    let mut acc = half;
                    for (k, &w) in win[2..2 + count].iter().enumerate() {
                        acc += line[(first + k) * 3 + c] as i32 * w;
                    }
                    mid[(y * out_w + x) * 3 + c] = clip8(acc);
                }
            }
        }
        let stride = out_w * 3;
        let mut out = vec![0u8; out_h * stride];
        for (yy, win) in vt.chunks_exact(row).enumerate() {
            let (first, count) = (win[0] as usize, win[1] as usize);
            for i in 0..stride {
                let mut acc = half;
                for (k, &w) in win[2..2 + count].iter().enumerate() {
                    acc += mid[(first + k) * stride + i] as i32 * w;
                }
                out[yy * stride + i] = clip8(acc);
            }
        }
        Ok((CpuStorage::U8(out), Shape::from((out_h, out_w, 3))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::WrapErr;
        let op = "resample_rgb8";
        let dev = s1.device().clone();
        let (in_h, in_w, _) = l1.shape().dims3()?;
        let (out_w, row) = l2.shape().dims2()?;
        let (out_h, _) = l3.shape().dims2()?;
        if in_h > 65535 || out_h > 65535 {
            bail!("{op}: frames taller than 65535 rows are not supported ({in_h} -> {out_h})")
        }
        let src = s1
            .as_cuda_slice::<u8>()?
            .slice(crate::contiguous_start(l1, op, "src")?..);
        let ht = s2
            .as_cuda_slice::<i32>()?
            .slice(crate::contiguous_start(l2, op, "horizontal")?..);
        let vt = s3
            .as_cuda_slice::<i32>()?
            .slice(crate::contiguous_start(l3, op, "vertical")?..);
        // SAFETY: both passes write every element of their output.
        let mid = unsafe { dev.alloc::<u8>(in_h * out_w * 3)? };
        let out = unsafe { dev.alloc::<u8>(out_h * out_w * 3)? };
        let row = row as i32;
        let (in_w, out_w, stride) = (in_w as i64, out_w as i64, out_w as i64 * 3);

        let func = dev.get_or_load_custom_func("resample_h_u8", MODULE, crate::ptx::FRAME_OPS)?;
        let cfg = LaunchConfig {
            grid_dim: ((out_w as u32).div_ceil(128), in_h as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = func.builder();
        b.arg(&src);
        b.arg(&in_w);
        b.arg(&ht);
        b.arg(&row);
        b.arg(&out_w);
        b.arg(&mid);
        // SAFETY: matches resample_h_u8; windows checked to lie inside the input.
        unsafe { b.launch(cfg) }.w()?;

        let func = dev.get_or_load_custom_func("resample_v_u8", MODULE, crate::ptx::FRAME_OPS)?;
        let cfg = LaunchConfig {
            grid_dim: ((stride as u32).div_ceil(256), out_h as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = func.builder();
        b.arg(&mid);
        b.arg(&stride);
        b.arg(&vt);
        b.arg(&row);
        b.arg(&out);
        // SAFETY: matches resample_v_u8; windows checked to lie inside the intermediate.
        unsafe { b.launch(cfg) }.w()?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((out_h, out_w as usize, 3)),
        ))
    }
}

#[cfg(feature = "cuda")]
const MODULE: &str = "flashvsr_frame_ops";

/// The AdaIN colour fix of a decoded video fused with the 8-bit conversion (CUDA only).
///
/// * `hq`: `[1, 3, T, H, W]` f32/f16/bf16 in [-1, 1], any strides (a narrowed view is fine).
/// * `lq`: the LQ reference as `[T, H, W, 3]` u8 frames, any strides; its values are
///   `(u8 / 255) · 2 − 1` rounded to `lq_dtype` (what the model's LQ video holds).
///
/// Per frame and channel: `(x − μ_hq) / σ_hq · σ_lq + μ_lq` with `σ = sqrt(biased var + 1e-5)`
/// (statistics summed in f64, then f32), clamped to [-1, 1], rounded to `hq`'s dtype, then
/// `((x + 1) · 127.5).clip(0, 255)` truncated. Returns `[T, H, W, 3]` u8.
pub fn adain_to_rgb8(hq: &Tensor, lq: &Tensor, lq_dtype: DType) -> Result<Tensor> {
    let _span = tracing::span!(tracing::Level::TRACE, "adain-to-rgb8").entered();
    let (b, c, t, h, w) = hq.dims5()?;
    if b != 1 || c != 3 {
        bail!(
            "adain_to_rgb8: decoded video must be [1, 3, T, H, W], got {:?}",
            hq.dims()
        )
    }
    if lq.dims() != [t, h, w, 3] || lq.dtype() != DType::U8 {
        bail!(
            "adain_to_rgb8: LQ frames must be [{t}, {h}, {w}, 3] u8 to match the decoded video, got {:?} {:?}",
            lq.dims(),
            lq.dtype()
        )
    }
    dtype_code(lq_dtype)?;
    hq.apply_op2_no_bwd(lq, &ToRgb8 { lq_dtype })
}

/// The 8-bit conversion alone: `[1, 3, T, H, W]` in [-1, 1] → clamp to [-1, 1] →
/// `((x + 1) · 127.5).clip(0, 255)` truncated, as `[T, H, W, 3]` u8 (CUDA only).
pub fn unit_to_rgb8(video: &Tensor) -> Result<Tensor> {
    let _span = tracing::span!(tracing::Level::TRACE, "unit-to-rgb8").entered();
    let (b, c, _, _, _) = video.dims5()?;
    if b != 1 || c != 3 {
        bail!(
            "unit_to_rgb8: video must be [1, 3, T, H, W], got {:?}",
            video.dims()
        )
    }
    video.apply_op1_no_bwd(&ToRgb8 {
        lq_dtype: DType::F32,
    })
}

/// The bytes of a u8 tensor `[N, ...]`, one `Vec` per index of dim 0, copied once from
/// wherever the tensor lives. (Candle's `to_vec1` on a CUDA tensor first copies the whole
/// storage to the host; `to_device(Cpu)` + `to_vec1` + splitting copy every byte three times,
/// which cost more than the colour fix kernels themselves at 768×1408.)
pub fn download_u8_items(t: &Tensor) -> Result<Vec<Vec<u8>>> {
    let _span = tracing::span!(tracing::Level::TRACE, "download-u8-items").entered();
    if t.dtype() != DType::U8 || t.rank() == 0 {
        bail!(
            "download_u8_items: expected a u8 tensor of rank >= 1, got {:?} {:?}",
            t.dims(),
            t.dtype()
        )
    }
    let t = t.contiguous()?;
    let n = t.dim(0)?;
    let item = t.elem_count() / n.max(1);
    let (storage, layout) = t.storage_and_layout();
    let start = crate::contiguous_start(layout, "download_u8_items", "input")?;
    match &*storage {
        candle_core::Storage::Cpu(cpu) => {
            let bytes = &cpu.as_slice::<u8>()?[start..start + n * item];
            Ok(bytes
                .chunks_exact(item.max(1))
                .take(n)
                .map(<[u8]>::to_vec)
                .collect())
        }
        #[cfg(feature = "cuda")]
        candle_core::Storage::Cuda(cuda) => {
            use candle_core::backend::BackendStorage;
            use candle_core::cuda_backend::WrapErr;
            let slice = cuda.as_cuda_slice::<u8>()?;
            let stream = cuda.device().cuda_stream();
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                let mut host = vec![0u8; item];
                let from = start + i * item;
                stream
                    .memcpy_dtoh(&slice.slice(from..from + item), &mut host)
                    .w()?;
                out.push(host);
            }
            stream.synchronize().w()?;
            Ok(out)
        }
        _ => bail!("download_u8_items: unsupported device {:?}", t.device()),
    }
}

/// The kernels' dtype code: 0 f32, 1 f16, 2 bf16.
fn dtype_code(dtype: DType) -> Result<i32> {
    match dtype {
        DType::F32 => Ok(0),
        DType::F16 => Ok(1),
        DType::BF16 => Ok(2),
        dt => bail!("frame ops: dtype {dt:?} is not supported (f32, f16, bf16)"),
    }
}

struct ToRgb8 {
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    lq_dtype: DType,
}

const HOST_MESSAGE: &str =
    "runs on CUDA only; on the host use color_fix::adain and frames::to_rgb_frames";

impl CustomOp1 for ToRgb8 {
    fn name(&self) -> &'static str {
        "unit-to-rgb8"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("unit_to_rgb8 {HOST_MESSAGE}")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::launch(self, (s1, l1), None)
    }
}

impl CustomOp2 for ToRgb8 {
    fn name(&self) -> &'static str {
        "adain-to-rgb8"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("adain_to_rgb8 {HOST_MESSAGE}")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::launch(self, (s1, l1), Some((s2, l2)))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{dtype_code, ToRgb8, MODULE};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{bail, CudaStorage, DType, Layout, Result, Shape, WithDType};

    const THREADS: u32 = 256;
    /// Row chunks per frame of the statistics pass (fixed, so the sums are deterministic).
    const MAX_CHUNKS: usize = 32;

    pub(super) fn launch(
        op: &ToRgb8,
        hq: (&CudaStorage, &Layout),
        lq: Option<(&CudaStorage, &Layout)>,
    ) -> Result<(CudaStorage, Shape)> {
        match hq.0.dtype() {
            DType::F32 => launch_t::<f32>(op, hq, lq, "f32"),
            DType::F16 => launch_t::<half::f16>(op, hq, lq, "f16"),
            DType::BF16 => launch_t::<half::bf16>(op, hq, lq, "bf16"),
            dt => bail!("to_rgb8: decoded video dtype {dt:?} is not supported (f32, f16, bf16)"),
        }
    }

    fn launch_t<T: CudaDType + DeviceRepr + WithDType>(
        op: &ToRgb8,
        (hs, hl): (&CudaStorage, &Layout),
        lq: Option<(&CudaStorage, &Layout)>,
        suffix: &str,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = hs.device().clone();
        let (_, _, t, h, w) = hl.shape().dims5()?;
        if t == 0 || h == 0 || w == 0 {
            bail!("to_rgb8: empty video {:?}", hl.shape())
        }
        if t > 65535 {
            bail!("to_rgb8: {t} frames in one call; at most 65535")
        }
        let s: Vec<i64> = hl.stride().iter().map(|&x| x as i64).collect();
        let (sc, st, sh, sw) = (s[1], s[2], s[3], s[4]);
        let hq = hs.as_cuda_slice::<T>()?.slice(hl.start_offset()..);
        let (height, width) = (h as i64, w as i64);
        let out_dtype = dtype_code(T::DTYPE)?;
        let adain = lq.is_some() as i32;
        let chunks = h.min(MAX_CHUNKS);
        // SAFETY: written in full by the stats kernel before the conversion reads it.
        let partials =
            unsafe { dev.alloc::<f64>(if lq.is_some() { 2 * t * chunks * 6 } else { 1 })? };
        if let Some((ls, ll)) = lq {
            let l: Vec<i64> = ll.stride().iter().map(|&x| x as i64).collect();
            let (lt, lh, lw, lc) = (l[0], l[1], l[2], l[3]);
            let lqs = ls.as_cuda_slice::<u8>()?.slice(ll.start_offset()..);
            let lq_dtype = dtype_code(op.lq_dtype)?;
            let func = dev.get_or_load_custom_func(
                &format!("adain_stats_{suffix}"),
                MODULE,
                crate::ptx::FRAME_OPS,
            )?;
            let cfg = LaunchConfig {
                grid_dim: (chunks as u32, t as u32, 2),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = func.builder();
            b.arg(&hq);
            b.arg(&sc);
            b.arg(&st);
            b.arg(&sh);
            b.arg(&sw);
            b.arg(&lqs);
            b.arg(&lc);
            b.arg(&lt);
            b.arg(&lh);
            b.arg(&lw);
            b.arg(&lq_dtype);
            b.arg(&height);
            b.arg(&width);
            b.arg(&partials);
            // SAFETY: matches adain_stats_* in kernels/frame_ops.cu; strides from the layouts.
            unsafe { b.launch(cfg) }.w()?;
        }
        // SAFETY: the conversion writes every byte of [T, H, W, 3].
        let out = unsafe { dev.alloc::<u8>(t * h * w * 3)? };
        let func = dev.get_or_load_custom_func(
            &format!("to_rgb8_{suffix}"),
            MODULE,
            crate::ptx::FRAME_OPS,
        )?;
        let cfg = LaunchConfig {
            grid_dim: (h as u32, t as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let chunks = chunks as i32;
        let mut b = func.builder();
        b.arg(&hq);
        b.arg(&sc);
        b.arg(&st);
        b.arg(&sh);
        b.arg(&sw);
        b.arg(&partials);
        b.arg(&chunks);
        b.arg(&adain);
        b.arg(&out_dtype);
        b.arg(&height);
        b.arg(&width);
        b.arg(&out);
        // SAFETY: matches to_rgb8_* in kernels/frame_ops.cu.
        unsafe { b.launch(cfg) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((t, h, w, 3)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn download_u8_items_splits_dim_0_of_views() -> Result<()> {
        let data: Vec<u8> = (0..5 * 2 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let t = Tensor::from_vec(data.clone(), (5, 2, 3), &Device::Cpu)?;
        // A view with a storage offset, and a transposed (non-contiguous) one.
        let items = download_u8_items(&t.narrow(0, 1, 3)?)?;
        assert_eq!(
            items,
            vec![
                data[6..12].to_vec(),
                data[12..18].to_vec(),
                data[18..24].to_vec()
            ]
        );
        let tr = t.transpose(1, 2)?;
        let items = download_u8_items(&tr)?;
        assert_eq!(items.len(), 5);
        assert_eq!(items[4], tr.get(4)?.flatten_all()?.to_vec1::<u8>()?);
        assert!(download_u8_items(&t.to_dtype(DType::F32)?).is_err());
        Ok(())
    }
}
