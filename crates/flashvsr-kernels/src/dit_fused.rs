//! Fused element-wise steps of a DiT block: everything between its GEMMs, in one pass each.
//!
//! Each function computes in f32 and rounds once, at its output. On CUDA it is one kernel of
//! `kernels/dit_fused.cu`; on every other device it is the same arithmetic as a chain of Candle
//! ops (the reference the CUDA tests compare against; the model's CPU path does not use these).
//!
//! * [`layer_norm_scaled`]: `LN(x)·(mul + mul_offset) + add` from the f32 residual stream,
//!   rounded to the GEMM's dtype (adaLN modulation with `mul` = scale and offset 1, or an
//!   affine LayerNorm with weight and bias and offset 0).
//! * [`gated_residual`]: `x + (branch + bias)·gate` into a new f32 residual stream.
//! * [`bias_gelu`]: `gelu_tanh(x + bias)` after the first FFN GEMM.
//! * [`bias_gelu_fp8`]: the same, quantized per row to e4m3 on the way out, when the second FFN
//!   GEMM is an FP8 linear (the bytes and scales [`crate::fp8::quantize_rows`] would make).
//! * [`qkv_rope`]: self-attention q, k, v from one fused QKV GEMM output: bias, RMSNorm over
//!   the model dim (q, k), 3-D RoPE (q, k), heads-major layout for the attention kernel.
//! * [`rms_norm_heads`]: bias, RMSNorm, heads-major layout (cross-attention q).
//! * [`window_means`]: per-head means of 128-token windows (the LCSA draft's input).

use candle_core::{bail, DType, Result, Tensor, D};

use crate::{fp8, BLOCK_TOKENS};

/// Where the RoPE tables and the token grid of [`qkv_rope`] come from.
///
/// Tokens are in LCSA window order over a `(f, grid_h, grid_w)` grid (windows of 2×8×8:
/// segment, block row, block column; inside, t, y, x). `cos`/`sin` are `[positions, head_dim/2]`
/// f32: row p holds the rotation of position p for every pair of a head; pair j of a head takes
/// the row of the token's t (`j < t_pairs`, counted from `t_pos0`), y (`j < t_pairs + h_pairs`)
/// or x.
#[derive(Debug, Clone)]
pub struct RopeGrid<'a> {
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    pub grid_h: usize,
    pub grid_w: usize,
    pub t_pos0: usize,
    pub t_pairs: usize,
    pub h_pairs: usize,
}

fn check_vec(t: &Tensor, d: usize, what: &str, op: &str) -> Result<()> {
    if t.elem_count() != d {
        bail!("{op}: {what} has {} elements, expected {d}", t.elem_count())
    }
    Ok(())
}

fn rows_of(x: &Tensor) -> Result<(usize, usize)> {
    let d = x.dim(D::Minus1)?;
    Ok((x.elem_count() / d.max(1), d))
}

/// `LN(x)·(mul + mul_offset) + add` over the last dim, in `out_dtype`. `x` f32 (any rank),
/// `mul`, `add` f32 with `d` elements; LayerNorm without affine parameters, `eps` inside the
/// square root.
pub fn layer_norm_scaled(
    x: &Tensor,
    mul: &Tensor,
    add: &Tensor,
    mul_offset: f32,
    eps: f32,
    out_dtype: DType,
) -> Result<Tensor> {
    let op = "layer_norm_scaled";
    let (rows, d) = rows_of(x)?;
    check_vec(mul, d, "mul", op)?;
    check_vec(add, d, "add", op)?;
    for (t, what) in [(x, "x"), (mul, "mul"), (add, "add")] {
        if t.dtype() != DType::F32 {
            bail!("{op}: {what} must be f32, got {:?}", t.dtype())
        }
    }
    if x.device().is_cuda() {
        #[cfg(feature = "cuda")]
        return cuda::layer_norm(x, mul, add, mul_offset, eps, out_dtype, rows, d);
    }
    let _ = rows;
    let ones = Tensor::ones(d, DType::F32, x.device())?;
    let zeros = Tensor::zeros(d, DType::F32, x.device())?;
    let y = candle_nn::ops::layer_norm(&x.contiguous()?, &ones, &zeros, eps)?;
    let m = (mul.flatten_all()? + mul_offset as f64)?;
    y.broadcast_mul(&m)?
        .broadcast_add(&add.flatten_all()?)?
        .to_dtype(out_dtype)
}

/// `x + (branch + bias)·gate` in f32: `x` f32, `branch` any float dtype of the same shape,
/// `bias` (branch's dtype) and `gate` (f32) with `d` elements each, both optional.
pub fn gated_residual(
    x: &Tensor,
    branch: &Tensor,
    bias: Option<&Tensor>,
    gate: Option<&Tensor>,
) -> Result<Tensor> {
    let op = "gated_residual";
    let (rows, d) = rows_of(x)?;
    if branch.dims() != x.dims() {
        bail!(
            "{op}: branch {:?} and x {:?} differ",
            branch.dims(),
            x.dims()
        )
    }
    if x.dtype() != DType::F32 {
        bail!("{op}: x must be f32, got {:?}", x.dtype())
    }
    if let Some(b) = bias {
        check_vec(b, d, "bias", op)?;
        if b.dtype() != branch.dtype() {
            bail!(
                "{op}: bias {:?} and branch {:?} dtypes differ",
                b.dtype(),
                branch.dtype()
            )
        }
    }
    if let Some(g) = gate {
        check_vec(g, d, "gate", op)?;
        if g.dtype() != DType::F32 {
            bail!("{op}: gate must be f32, got {:?}", g.dtype())
        }
    }
    if x.device().is_cuda() {
        #[cfg(feature = "cuda")]
        return cuda::residual(x, branch, bias, gate, rows, d);
    }
    let _ = rows;
    let mut b = branch.to_dtype(DType::F32)?;
    if let Some(bias) = bias {
        b = b.broadcast_add(&bias.flatten_all()?.to_dtype(DType::F32)?)?;
    }
    if let Some(g) = gate {
        b = b.broadcast_mul(&g.flatten_all()?)?;
    }
    x + b
}

/// `gelu_tanh(x + bias)` over the last dim (even), in `x`'s dtype; `bias` `[d]` in `x`'s dtype.
pub fn bias_gelu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let op = "bias_gelu";
    let (rows, d) = rows_of(x)?;
    check_vec(bias, d, "bias", op)?;
    if bias.dtype() != x.dtype() {
        bail!(
            "{op}: bias {:?} and x {:?} dtypes differ",
            bias.dtype(),
            x.dtype()
        )
    }
    if x.device().is_cuda() && !d.is_multiple_of(2) {
        bail!("{op}: the last dim ({d}) must be even")
    }
    if x.device().is_cuda() {
        #[cfg(feature = "cuda")]
        return cuda::bias_gelu(x, bias, rows, d);
    }
    let _ = rows;
    x.to_dtype(DType::F32)?
        .broadcast_add(&bias.flatten_all()?.to_dtype(DType::F32)?)?
        .gelu()?
        .to_dtype(x.dtype())
}

/// [`bias_gelu`] and then [`fp8::quantize_rows`] of its output (rounded to `x`'s dtype first,
/// as `bias_gelu` returns it): the same e4m3 bytes and per-row scales, for
/// [`fp8::linear_prequantized`]. On CUDA one kernel: the GELU output never goes to memory.
/// `x` any rank with the last dim `d` a multiple of 16, flattened to `[rows, d]`; `bias` `[d]`
/// in `x`'s dtype.
pub fn bias_gelu_fp8(x: &Tensor, bias: &Tensor) -> Result<fp8::Fp8Rows> {
    let op = "bias_gelu_fp8";
    let (rows, d) = rows_of(x)?;
    fp8::check_cols(d, op)?;
    check_vec(bias, d, "bias", op)?;
    if bias.dtype() != x.dtype() {
        bail!(
            "{op}: bias {:?} and x {:?} dtypes differ",
            bias.dtype(),
            x.dtype()
        )
    }
    if x.device().is_cuda() {
        #[cfg(feature = "cuda")]
        return cuda::bias_gelu_fp8(x, bias, rows, d);
    }
    fp8::quantize_rows(&bias_gelu(x, bias)?.reshape((rows, d))?)
}

/// q, k, v `[heads, rows, head_dim]` each (views of one buffer) from the fused QKV GEMM output
/// `qkv` `[rows, 3·d]` (no bias yet): `v = v + b_v`; `q = rope(rms(q + b_q)·norm_q)`, same for
/// k, with the RMSNorm over the full d = heads·head_dim. `bias` `[3·d]`, `norm_q`, `norm_k`
/// `[d]`, all in `qkv`'s dtype.
pub fn qkv_rope(
    qkv: &Tensor,
    bias: &Tensor,
    norm_q: &Tensor,
    norm_k: &Tensor,
    rope: &RopeGrid,
    heads: usize,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "qkv_rope";
    let (rows, d3) = qkv.dims2()?;
    if heads == 0 || d3 % (3 * heads) != 0 {
        bail!("{op}: qkv width {d3} is not 3 x heads ({heads}) x head_dim")
    }
    let d = d3 / 3;
    let hd = d / heads;
    check_vec(bias, 3 * d, "bias", op)?;
    check_vec(norm_q, d, "norm_q", op)?;
    check_vec(norm_k, d, "norm_k", op)?;
    for (t, what) in [(bias, "bias"), (norm_q, "norm_q"), (norm_k, "norm_k")] {
        if t.dtype() != qkv.dtype() {
            bail!("{op}: {what} is {:?}, qkv {:?}", t.dtype(), qkv.dtype())
        }
    }
    let (positions, half) = rope.cos.dims2()?;
    if !hd.is_multiple_of(2) || half != hd / 2 || rope.sin.dims() != rope.cos.dims() {
        bail!(
            "{op}: RoPE tables {:?} / {:?} do not fit head_dim {hd}",
            rope.cos.dims(),
            rope.sin.dims()
        )
    }
    if rope.t_pairs + rope.h_pairs > half {
        bail!(
            "{op}: RoPE parts {} + {} exceed {half} pairs",
            rope.t_pairs,
            rope.h_pairs
        )
    }
    let (gh, gw) = (rope.grid_h, rope.grid_w);
    let per_frame = gh * gw;
    if gh % 8 != 0 || gw % 8 != 0 || per_frame == 0 || rows % (2 * per_frame) != 0 {
        bail!("{op}: {rows} tokens are not whole 2x{gh}x{gw} segments of 2x8x8 windows")
    }
    let frames = rows / per_frame;
    if rope.t_pos0 + frames > positions || gh > positions || gw > positions {
        bail!("{op}: positions exceed the {positions}-row RoPE tables")
    }
    if qkv.device().is_cuda() {
        #[cfg(feature = "cuda")]
        return cuda::qkv_rope(qkv, bias, norm_q, norm_k, rope, rows, d, hd, eps);
    }
    reference::qkv_rope(qkv, bias, norm_q, norm_k, rope, heads, eps)
}

/// `rms(x + bias)·weight` over the last dim d of `x` `[rows, d]`, as `[heads, rows, d/heads]`.
pub fn rms_norm_heads(
    x: &Tensor,
    bias: &Tensor,
    weight: &Tensor,
    heads: usize,
    eps: f32,
) -> Result<Tensor> {
    let op = "rms_norm_heads";
    let (rows, d) = x.dims2()?;
    if heads == 0 || d % heads != 0 || !(d / heads).is_multiple_of(2) {
        bail!("{op}: width {d} does not split into {heads} heads of even size")
    }
    check_vec(bias, d, "bias", op)?;
    check_vec(weight, d, "weight", op)?;
    for (t, what) in [(bias, "bias"), (weight, "weight")] {
        if t.dtype() != x.dtype() {
            bail!("{op}: {what} is {:?}, x {:?}", t.dtype(), x.dtype())
        }
    }
    if x.device().is_cuda() {
        #[cfg(feature = "cuda")]
        return cuda::rms_heads(x, bias, weight, rows, d, d / heads, eps);
    }
    let _ = rows;
    let y = reference::rms(x, bias, weight, eps)?;
    reference::to_heads(&y, heads)?.to_dtype(x.dtype())
}

/// Means over each window of [`BLOCK_TOKENS`] tokens: `x` `[heads, windows·128, head_dim]`
/// → f32 `[windows, heads·head_dim]` (heads side by side), summed in f32.
pub fn window_means(x: &Tensor) -> Result<Tensor> {
    let (heads, tokens, hd) = x.dims3()?;
    if tokens % BLOCK_TOKENS != 0 {
        bail!("window_means: {tokens} tokens are not whole windows of {BLOCK_TOKENS}")
    }
    let windows = tokens / BLOCK_TOKENS;
    if x.device().is_cuda() {
        #[cfg(feature = "cuda")]
        return cuda::window_means(x, heads, windows, hd);
    }
    x.reshape((heads, windows, BLOCK_TOKENS, hd))?
        .to_dtype(DType::F32)?
        .mean(2)?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((windows, heads * hd))
}

/// The same arithmetic as Candle ops (every device).
mod reference {
    use super::*;

    /// `rms(x + bias)·weight` in f32, `[rows, d]`.
    pub(super) fn rms(x: &Tensor, bias: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
        let d = x.dim(1)?;
        let xf = x
            .to_dtype(DType::F32)?
            .broadcast_add(&bias.flatten_all()?.to_dtype(DType::F32)?)?;
        let ones = Tensor::ones(d, DType::F32, x.device())?;
        candle_nn::ops::rms_norm(&xf, &ones, eps)?
            .broadcast_mul(&weight.flatten_all()?.to_dtype(DType::F32)?)
    }

    /// `[rows, heads·hd]` → `[heads, rows, hd]`.
    pub(super) fn to_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
        let (rows, d) = x.dims2()?;
        x.reshape((rows, heads, d / heads))?
            .transpose(0, 1)?
            .contiguous()
    }

    /// Per-token cos/sin `[rows, hd/2]` gathered from the position tables.
    fn token_tables(rope: &RopeGrid, rows: usize, half: usize) -> Result<(Tensor, Tensor)> {
        let (gh, gw) = (rope.grid_h, rope.grid_w);
        let (bw, nb) = (gw / 8, (gh / 8) * (gw / 8));
        let mut tpos = Vec::with_capacity(rows);
        let mut ypos = Vec::with_capacity(rows);
        let mut xpos = Vec::with_capacity(rows);
        for n in 0..rows {
            let (win, r) = (n / BLOCK_TOKENS, n % BLOCK_TOKENS);
            let (seg, rem) = (win / nb, win % nb);
            tpos.push((rope.t_pos0 + seg * 2 + r / 64) as u32);
            ypos.push(((rem / bw) * 8 + (r / 8) % 8) as u32);
            xpos.push(((rem % bw) * 8 + r % 8) as u32);
        }
        let dev = rope.cos.device();
        let idx = |v: Vec<u32>| Tensor::from_vec(v, rows, dev);
        let (ti, yi, xi) = (idx(tpos)?, idx(ypos)?, idx(xpos)?);
        let (pt, ph) = (rope.t_pairs, rope.h_pairs);
        let gather = |table: &Tensor| -> Result<Tensor> {
            Tensor::cat(
                &[
                    table.index_select(&ti, 0)?.narrow(1, 0, pt)?,
                    table.index_select(&yi, 0)?.narrow(1, pt, ph)?,
                    table
                        .index_select(&xi, 0)?
                        .narrow(1, pt + ph, half - pt - ph)?,
                ],
                1,
            )?
            .contiguous()
        };
        Ok((gather(rope.cos)?, gather(rope.sin)?))
    }

    pub(super) fn qkv_rope(
        qkv: &Tensor,
        bias: &Tensor,
        norm_q: &Tensor,
        norm_k: &Tensor,
        rope: &RopeGrid,
        heads: usize,
        eps: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (rows, d3) = qkv.dims2()?;
        let d = d3 / 3;
        let dtype = qkv.dtype();
        let part = |i: usize| qkv.narrow(1, i * d, d);
        let bpart = |i: usize| bias.flatten_all()?.narrow(0, i * d, d);
        let (cos, sin) = token_tables(rope, rows, d / heads / 2)?;
        let rotate = |x: Tensor| -> Result<Tensor> {
            let x = to_heads(&x, heads)?.unsqueeze(0)?;
            candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?.squeeze(0)
        };
        let q = rotate(rms(&part(0)?, &bpart(0)?, norm_q, eps)?)?;
        let k = rotate(rms(&part(1)?, &bpart(1)?, norm_k, eps)?)?;
        let v = part(2)?
            .to_dtype(DType::F32)?
            .broadcast_add(&bpart(2)?.to_dtype(DType::F32)?)?;
        let v = to_heads(&v, heads)?;
        Ok((q.to_dtype(dtype)?, k.to_dtype(dtype)?, v.to_dtype(dtype)?))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::RopeGrid;
    use crate::cuda_ops as ops;
    use crate::fp8::Fp8Rows;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{bail, CudaDevice, DType, Device, Result, Tensor, WithDType};

    /// This module's name in error messages.
    const OP: &str = "dit kernels";
    const MODULE: &str = "flashvsr_dit_fused";
    const THREADS: u32 = 256;
    /// Rows handled by the grid-stride element-wise kernels at once.
    const MAX_ROW_BLOCKS: usize = 8192;

    /// Contiguous, at an even element offset (the kernels load pairs), on `dev`.
    fn prepared(t: &Tensor, dev: &CudaDevice, what: &str) -> Result<Tensor> {
        if !t.device().same_device(&Device::Cuda(dev.clone())) {
            bail!("dit kernels: {what} is on another device")
        }
        let t = t.contiguous()?;
        if t.layout().start_offset() % 2 != 0 {
            t.copy()
        } else {
            Ok(t)
        }
    }

    /// Dynamic shared memory a kernel may take without opting in.
    const SMEM_MAX: usize = 48 * 1024;

    fn smem(bytes: usize, op: &str) -> Result<u32> {
        if bytes > SMEM_MAX {
            bail!("{op}: rows too wide for the kernel's shared memory ({bytes} bytes)")
        }
        Ok(bytes as u32)
    }

    /// Threads for one CTA per row over `work` items: a multiple of 32, at most 256.
    fn row_threads(work: usize) -> u32 {
        (work.div_ceil(32) * 32).clamp(32, THREADS as usize) as u32
    }

    macro_rules! dispatch {
        ($dtype:expr, $f:ident ( $($arg:expr),* )) => {
            match $dtype {
                DType::F32 => $f::<f32>($($arg),*),
                DType::F16 => $f::<half::f16>($($arg),*),
                DType::BF16 => $f::<half::bf16>($($arg),*),
                dt => bail!("dit kernels: dtype {dt:?} is not supported (f32, f16, bf16)"),
            }
        };
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn layer_norm(
        x: &Tensor,
        mul: &Tensor,
        add: &Tensor,
        mul_offset: f32,
        eps: f32,
        out_dtype: DType,
        rows: usize,
        d: usize,
    ) -> Result<Tensor> {
        fn go<T: CudaDType + DeviceRepr + WithDType>(
            x: &Tensor,
            mul: &Tensor,
            add: &Tensor,
            mul_offset: f32,
            eps: f32,
            rows: usize,
            d: usize,
        ) -> Result<Tensor> {
            let dev = ops::device(OP, x)?;
            let (x, mul, add) = (
                prepared(x, &dev, "x")?,
                prepared(mul, &dev, "mul")?,
                prepared(add, &dev, "add")?,
            );
            let (sx, lx) = x.storage_and_layout();
            let (sm, lm) = mul.storage_and_layout();
            let (sa, la) = add.storage_and_layout();
            let xv = ops::view::<f32>(OP, &sx, lx, "x")?;
            let mv = ops::view::<f32>(OP, &sm, lm, "mul")?;
            let av = ops::view::<f32>(OP, &sa, la, "add")?;
            let name = format!("dit_layer_norm_{}", ops::suffix(OP, T::DTYPE)?);
            let f = dev.get_or_load_custom_func(&name, MODULE, crate::ptx::DIT_FUSED)?;
            // SAFETY: the kernel writes every element.
            let out = unsafe { dev.alloc::<T>(rows * d)? };
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (row_threads(d), 1, 1),
                shared_mem_bytes: smem(d * 4, "layer_norm_scaled")?,
            };
            let d_i = d as i32;
            let mut b = f.builder();
            b.arg(&xv);
            b.arg(&mv);
            b.arg(&av);
            b.arg(&mul_offset);
            b.arg(&out);
            b.arg(&d_i);
            b.arg(&eps);
            // SAFETY: arguments match dit_layer_norm_* in kernels/dit_fused.cu.
            unsafe { b.launch(cfg) }.w()?;
            Ok(ops::wrap(out, &dev, x.shape().clone()))
        }
        if rows == 0 {
            return Tensor::zeros(x.shape(), out_dtype, x.device());
        }
        dispatch!(out_dtype, go(x, mul, add, mul_offset, eps, rows, d))
    }

    pub(super) fn residual(
        x: &Tensor,
        branch: &Tensor,
        bias: Option<&Tensor>,
        gate: Option<&Tensor>,
        rows: usize,
        d: usize,
    ) -> Result<Tensor> {
        fn go<T: CudaDType + DeviceRepr + WithDType>(
            x: &Tensor,
            branch: &Tensor,
            bias: Option<&Tensor>,
            gate: Option<&Tensor>,
            rows: usize,
            d: usize,
        ) -> Result<Tensor> {
            let dev = ops::device(OP, x)?;
            let x = prepared(x, &dev, "x")?;
            let branch = prepared(branch, &dev, "branch")?;
            let bias = bias.map(|b| prepared(b, &dev, "bias")).transpose()?;
            let gate = gate.map(|g| prepared(g, &dev, "gate")).transpose()?;
            let (sx, lx) = x.storage_and_layout();
            let (sb, lb) = branch.storage_and_layout();
            let xv = ops::view::<f32>(OP, &sx, lx, "x")?;
            let bv = ops::view::<T>(OP, &sb, lb, "branch")?;
            let bias_sl = bias.as_ref().map(|t| t.storage_and_layout());
            let gate_sl = gate.as_ref().map(|t| t.storage_and_layout());
            let biasv = match &bias_sl {
                Some((s, l)) => Some(ops::view::<T>(OP, s, l, "bias")?),
                None => None,
            };
            let gatev = match &gate_sl {
                Some((s, l)) => Some(ops::view::<f32>(OP, s, l, "gate")?),
                None => None,
            };
            let name = format!("dit_residual_{}", ops::suffix(OP, T::DTYPE)?);
            let f = dev.get_or_load_custom_func(&name, MODULE, crate::ptx::DIT_FUSED)?;
            // SAFETY: the kernel writes every element.
            let out = unsafe { dev.alloc::<f32>(rows * d)? };
            let cfg = LaunchConfig {
                grid_dim: (rows.min(MAX_ROW_BLOCKS) as u32, 1, 1),
                block_dim: (row_threads(d), 1, 1),
                shared_mem_bytes: 0,
            };
            let (rows_i, d_i) = (rows as i32, d as i32);
            let null = 0u64;
            let mut b = f.builder();
            b.arg(&xv);
            b.arg(&bv);
            match &biasv {
                Some(v) => b.arg(v),
                None => b.arg(&null),
            };
            match &gatev {
                Some(v) => b.arg(v),
                None => b.arg(&null),
            };
            b.arg(&out);
            b.arg(&rows_i);
            b.arg(&d_i);
            // SAFETY: arguments match dit_residual_* in kernels/dit_fused.cu (null = absent).
            unsafe { b.launch(cfg) }.w()?;
            Ok(ops::wrap(out, &dev, x.shape().clone()))
        }
        if rows == 0 {
            return x.clone().contiguous();
        }
        dispatch!(branch.dtype(), go(x, branch, bias, gate, rows, d))
    }

    pub(super) fn bias_gelu(x: &Tensor, bias: &Tensor, rows: usize, d: usize) -> Result<Tensor> {
        fn go<T: CudaDType + DeviceRepr + WithDType>(
            x: &Tensor,
            bias: &Tensor,
            rows: usize,
            d: usize,
        ) -> Result<Tensor> {
            let dev = ops::device(OP, x)?;
            let (x, bias) = (prepared(x, &dev, "x")?, prepared(bias, &dev, "bias")?);
            let (sx, lx) = x.storage_and_layout();
            let (sb, lb) = bias.storage_and_layout();
            let xv = ops::view::<T>(OP, &sx, lx, "x")?;
            let bv = ops::view::<T>(OP, &sb, lb, "bias")?;
            let name = format!("dit_bias_gelu_{}", ops::suffix(OP, T::DTYPE)?);
            let f = dev.get_or_load_custom_func(&name, MODULE, crate::ptx::DIT_FUSED)?;
            // SAFETY: the kernel writes every element.
            let out = unsafe { dev.alloc::<T>(rows * d)? };
            let cfg = LaunchConfig {
                grid_dim: (rows.min(MAX_ROW_BLOCKS) as u32, 1, 1),
                block_dim: (row_threads(d / 2), 1, 1),
                shared_mem_bytes: 0,
            };
            let (rows_i, d_i) = (rows as i32, d as i32);
            let mut b = f.builder();
            b.arg(&xv);
            b.arg(&bv);
            b.arg(&out);
            b.arg(&rows_i);
            b.arg(&d_i);
            // SAFETY: arguments match dit_bias_gelu_* in kernels/dit_fused.cu.
            unsafe { b.launch(cfg) }.w()?;
            Ok(ops::wrap(out, &dev, x.shape().clone()))
        }
        if rows == 0 {
            return x.clone().contiguous();
        }
        dispatch!(x.dtype(), go(x, bias, rows, d))
    }

    pub(super) fn bias_gelu_fp8(
        x: &Tensor,
        bias: &Tensor,
        rows: usize,
        d: usize,
    ) -> Result<Fp8Rows> {
        fn go<T: CudaDType + DeviceRepr + WithDType>(
            x: &Tensor,
            bias: &Tensor,
            rows: usize,
            d: usize,
        ) -> Result<Fp8Rows> {
            let dev = ops::device(OP, x)?;
            let (x, bias) = (prepared(x, &dev, "x")?, prepared(bias, &dev, "bias")?);
            let (sx, lx) = x.storage_and_layout();
            let (sb, lb) = bias.storage_and_layout();
            let xv = ops::view::<T>(OP, &sx, lx, "x")?;
            let bv = ops::view::<T>(OP, &sb, lb, "bias")?;
            let name = format!("dit_bias_gelu_fp8_{}", ops::suffix(OP, T::DTYPE)?);
            let f = dev.get_or_load_custom_func(&name, MODULE, crate::ptx::DIT_FUSED)?;
            // SAFETY: the kernel writes every byte and every scale.
            let q = unsafe { dev.alloc::<u8>(rows * d)? };
            let scale = unsafe { dev.alloc::<f32>(rows)? };
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (row_threads(d / 2), 1, 1),
                shared_mem_bytes: smem(d * std::mem::size_of::<T>(), "bias_gelu_fp8")?,
            };
            let d_i = d as i32;
            let mut b = f.builder();
            b.arg(&xv);
            b.arg(&bv);
            b.arg(&q);
            b.arg(&scale);
            b.arg(&d_i);
            // SAFETY: arguments match dit_bias_gelu_fp8_* in kernels/dit_fused.cu.
            unsafe { b.launch(cfg) }.w()?;
            Ok(Fp8Rows {
                q: ops::wrap(q, &dev, (rows, d)),
                scale: ops::wrap(scale, &dev, rows),
            })
        }
        if rows == 0 || rows > i32::MAX as usize || d * x.dtype().size_in_bytes() > SMEM_MAX {
            // No rows, or more than one launch or the shared memory takes: the two kernels.
            let h = super::bias_gelu(x, bias)?.reshape((rows, d))?;
            return crate::fp8::quantize_rows(&h);
        }
        dispatch!(x.dtype(), go(x, bias, rows, d))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn qkv_rope(
        qkv: &Tensor,
        bias: &Tensor,
        norm_q: &Tensor,
        norm_k: &Tensor,
        rope: &RopeGrid,
        rows: usize,
        d: usize,
        hd: usize,
        eps: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        #[allow(clippy::too_many_arguments)]
        fn go<T: CudaDType + DeviceRepr + WithDType>(
            qkv: &Tensor,
            bias: &Tensor,
            norm_q: &Tensor,
            norm_k: &Tensor,
            rope: &RopeGrid,
            rows: usize,
            d: usize,
            hd: usize,
            eps: f32,
        ) -> Result<Tensor> {
            let dev = ops::device(OP, qkv)?;
            let qkv = prepared(qkv, &dev, "qkv")?;
            let bias = prepared(bias, &dev, "bias")?;
            let wq = prepared(norm_q, &dev, "norm_q")?;
            let wk = prepared(norm_k, &dev, "norm_k")?;
            let cos = prepared(rope.cos, &dev, "rope cos")?;
            let sin = prepared(rope.sin, &dev, "rope sin")?;
            if cos.dtype() != DType::F32 || sin.dtype() != DType::F32 {
                bail!("qkv_rope: RoPE tables must be f32")
            }
            let (s0, l0) = qkv.storage_and_layout();
            let (s1, l1) = bias.storage_and_layout();
            let (s2, l2) = wq.storage_and_layout();
            let (s3, l3) = wk.storage_and_layout();
            let (s4, l4) = cos.storage_and_layout();
            let (s5, l5) = sin.storage_and_layout();
            let qkv_v = ops::view::<T>(OP, &s0, l0, "qkv")?;
            let bias_v = ops::view::<T>(OP, &s1, l1, "bias")?;
            let wq_v = ops::view::<T>(OP, &s2, l2, "norm_q")?;
            let wk_v = ops::view::<T>(OP, &s3, l3, "norm_k")?;
            let cos_v = ops::view::<f32>(OP, &s4, l4, "rope cos")?;
            let sin_v = ops::view::<f32>(OP, &s5, l5, "rope sin")?;
            let name = format!("dit_qkv_rope_{}", ops::suffix(OP, T::DTYPE)?);
            let f = dev.get_or_load_custom_func(&name, MODULE, crate::ptx::DIT_FUSED)?;
            // SAFETY: the kernel writes every element of q, k and v.
            let out = unsafe { dev.alloc::<T>(3 * rows * d)? };
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (row_threads(d / 2), 1, 1),
                shared_mem_bytes: smem(2 * d * 4, "qkv_rope")?,
            };
            let ints = [
                rows as i32,
                d as i32,
                hd as i32,
                rope.grid_h as i32,
                rope.grid_w as i32,
                rope.t_pos0 as i32,
                rope.t_pairs as i32,
                rope.h_pairs as i32,
            ];
            let mut b = f.builder();
            b.arg(&qkv_v);
            b.arg(&bias_v);
            b.arg(&wq_v);
            b.arg(&wk_v);
            b.arg(&cos_v);
            b.arg(&sin_v);
            b.arg(&out);
            for i in &ints {
                b.arg(i);
            }
            b.arg(&eps);
            // SAFETY: arguments match dit_qkv_rope_* in kernels/dit_fused.cu; the token grid
            // and table sizes were checked by the caller.
            unsafe { b.launch(cfg) }.w()?;
            Ok(ops::wrap(out, &dev, (3, d / hd, rows, hd)))
        }
        if rows > i32::MAX as usize {
            bail!("qkv_rope: too many tokens ({rows})")
        }
        let all = dispatch!(
            qkv.dtype(),
            go(qkv, bias, norm_q, norm_k, rope, rows, d, hd, eps)
        )?;
        Ok((all.get(0)?, all.get(1)?, all.get(2)?))
    }

    pub(super) fn rms_heads(
        x: &Tensor,
        bias: &Tensor,
        weight: &Tensor,
        rows: usize,
        d: usize,
        hd: usize,
        eps: f32,
    ) -> Result<Tensor> {
        fn go<T: CudaDType + DeviceRepr + WithDType>(
            x: &Tensor,
            bias: &Tensor,
            weight: &Tensor,
            rows: usize,
            d: usize,
            hd: usize,
            eps: f32,
        ) -> Result<Tensor> {
            let dev = ops::device(OP, x)?;
            let x = prepared(x, &dev, "x")?;
            let bias = prepared(bias, &dev, "bias")?;
            let w = prepared(weight, &dev, "weight")?;
            let (s0, l0) = x.storage_and_layout();
            let (s1, l1) = bias.storage_and_layout();
            let (s2, l2) = w.storage_and_layout();
            let xv = ops::view::<T>(OP, &s0, l0, "x")?;
            let bv = ops::view::<T>(OP, &s1, l1, "bias")?;
            let wv = ops::view::<T>(OP, &s2, l2, "weight")?;
            let name = format!("dit_rms_heads_{}", ops::suffix(OP, T::DTYPE)?);
            let f = dev.get_or_load_custom_func(&name, MODULE, crate::ptx::DIT_FUSED)?;
            // SAFETY: the kernel writes every element.
            let out = unsafe { dev.alloc::<T>(rows * d)? };
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (row_threads(d / 2), 1, 1),
                shared_mem_bytes: smem(d * 4, "rms_norm_heads")?,
            };
            let (rows_i, d_i, hd_i) = (rows as i32, d as i32, hd as i32);
            let mut b = f.builder();
            b.arg(&xv);
            b.arg(&bv);
            b.arg(&wv);
            b.arg(&out);
            b.arg(&rows_i);
            b.arg(&d_i);
            b.arg(&hd_i);
            b.arg(&eps);
            // SAFETY: arguments match dit_rms_heads_* in kernels/dit_fused.cu.
            unsafe { b.launch(cfg) }.w()?;
            Ok(ops::wrap(out, &dev, (d / hd, rows, hd)))
        }
        if rows == 0 || rows > i32::MAX as usize {
            bail!("rms_norm_heads: {rows} rows")
        }
        dispatch!(x.dtype(), go(x, bias, weight, rows, d, hd, eps))
    }

    pub(super) fn window_means(
        x: &Tensor,
        heads: usize,
        windows: usize,
        hd: usize,
    ) -> Result<Tensor> {
        fn go<T: CudaDType + DeviceRepr + WithDType>(
            x: &Tensor,
            heads: usize,
            windows: usize,
            hd: usize,
        ) -> Result<Tensor> {
            let dev = ops::device(OP, x)?;
            let x = prepared(x, &dev, "x")?;
            let (s0, l0) = x.storage_and_layout();
            let xv = ops::view::<T>(OP, &s0, l0, "x")?;
            let name = format!("dit_window_means_{}", ops::suffix(OP, T::DTYPE)?);
            let f = dev.get_or_load_custom_func(&name, MODULE, crate::ptx::DIT_FUSED)?;
            // SAFETY: the kernel writes every element.
            let out = unsafe { dev.alloc::<f32>(windows * heads * hd)? };
            let cfg = LaunchConfig {
                grid_dim: (windows as u32, heads as u32, 1),
                block_dim: (row_threads(hd).min(128), 1, 1),
                shared_mem_bytes: 0,
            };
            let (w_i, hd_i) = (windows as i32, hd as i32);
            let mut b = f.builder();
            b.arg(&xv);
            b.arg(&out);
            b.arg(&w_i);
            b.arg(&hd_i);
            // SAFETY: arguments match dit_window_means_* in kernels/dit_fused.cu.
            unsafe { b.launch(cfg) }.w()?;
            Ok(ops::wrap(out, &dev, (windows, heads * hd)))
        }
        if windows == 0 || heads > 65_535 {
            bail!("window_means: {windows} windows x {heads} heads")
        }
        dispatch!(x.dtype(), go(x, heads, windows, hd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn bias_gelu_fp8_is_bias_gelu_then_quantize_rows() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (2, 3, 32), &dev)?.to_dtype(DType::BF16)?;
        let b = Tensor::randn(0f32, 0.5, 32, &dev)?.to_dtype(DType::BF16)?;
        let got = bias_gelu_fp8(&x, &b)?;
        let want = fp8::quantize_rows(&bias_gelu(&x, &b)?.reshape((6, 32))?)?;
        assert_eq!(got.q.dims(), &[6, 32]);
        assert_eq!(
            got.q.flatten_all()?.to_vec1::<u8>()?,
            want.q.flatten_all()?.to_vec1::<u8>()?
        );
        assert_eq!(got.scale.to_vec1::<f32>()?, want.scale.to_vec1::<f32>()?);
        // The FP8 GEMM's column rule, and the bias checks of bias_gelu.
        let narrow = x.narrow(2, 0, 24)?.contiguous()?;
        assert!(bias_gelu_fp8(&narrow, &b.narrow(0, 0, 24)?).is_err());
        assert!(bias_gelu_fp8(&x, &b.to_dtype(DType::F32)?).is_err());
        assert!(bias_gelu_fp8(&x, &b.narrow(0, 0, 16)?).is_err());
        Ok(())
    }
}
