//! 2-D convolution (stride 1) as one cuBLAS GEMM per kernel tap, without an im2col buffer.
//!
//! Candle's CUDA conv2d builds an im2col matrix of `kH·kW` times the input and multiplies it
//! once. At FlashVSR's output sizes that matrix is gigabytes per frame and writing it costs
//! more than the multiplication. Here the input is laid out channel-major on a zero-padded
//! grid, `X[C_in, L]` with `L = N·Hp·Wp`, so that the tap `(dy, dx)` of every output position
//! `q` reads `X[:, q + dy·Wp + dx]`: the whole convolution is
//! `Y[:, q] = Σ_taps W_tap · X[:, q + offset_tap]`, one GEMM per tap over a shifted view of the
//! same buffer, accumulated in an f32 output (f32 accumulation for f16/bf16 inputs, like
//! Candle's matmuls; no TF32 for f32). Positions `q` that are not real outputs (the padding
//! border) are computed too and cropped away.
//!
//! cuBLAS runs tensor-core kernels fastest on 16-byte aligned operands, so the padded width is
//! rounded up to a multiple of 8 elements and the `dx` shifts are materialised as `kW` aligned
//! copies of the input (instead of misaligned pointer offsets); the `dy` shifts are whole rows.
//! Scratch per frame: about `(kW + 3)·C_in·Hp·Wp` input-dtype values plus `2·C_out·Hp·Wp` f32.

use candle_core::{DType, Result, Tensor};

/// Rows of the padded grid are padded to a multiple of this many elements (16 bytes in f16).
const ROW_ALIGN: usize = 8;

/// Bytes of scratch one batch item of `x` `[N, C_in, H, W]` needs in [`conv2d`].
pub fn scratch_bytes_per_item(
    x: &Tensor,
    out_channels: usize,
    kw: usize,
    padding: usize,
) -> Result<usize> {
    let (_, cin, h, w) = x.dims4()?;
    let (hp, wp) = padded_grid(h, w, padding);
    Ok(hp * wp * (cin * x.dtype().size_in_bytes() * (kw + 3) + 2 * out_channels * 4))
}

fn padded_grid(h: usize, w: usize, padding: usize) -> (usize, usize) {
    // One extra zero row at the bottom keeps every read of a shifted copy inside its channel
    // for the positions that are real outputs (see `conv2d`).
    (
        h + 2 * padding + 1,
        (w + 2 * padding).div_ceil(ROW_ALIGN) * ROW_ALIGN,
    )
}

/// `x` `[N, C_in, H, W]` ⊛ `weight` `[C_out, C_in, kH, kW]`, stride 1, zero padding `padding`
/// on every side, no bias: `[N, C_out, H', W']` in **f32**. On CUDA this runs the tap GEMMs;
/// elsewhere it is Candle's `conv2d` (cast to f32), so the function works on every device.
pub fn conv2d(x: &Tensor, weight: &Tensor, padding: usize) -> Result<Tensor> {
    let (n, cin, h, w) = x.dims4()?;
    let (cout, cin_w, kh, kw) = weight.dims4()?;
    if cin != cin_w {
        candle_core::bail!(
            "tap conv2d: input has {cin} channels, weight {:?} expects {cin_w}",
            weight.dims()
        )
    }
    if h + 2 * padding < kh || w + 2 * padding < kw || kh == 0 || kw == 0 {
        candle_core::bail!(
            "tap conv2d: {h}x{w} input with padding {padding} is smaller than the {kh}x{kw} kernel"
        )
    }
    if !x.device().is_cuda() {
        return x
            .conv2d(&weight.to_dtype(x.dtype())?, padding, 1, 1, 1)?
            .to_dtype(DType::F32);
    }
    if kw > ROW_ALIGN {
        candle_core::bail!("tap conv2d: kernels wider than {ROW_ALIGN} are not supported")
    }
    let (hp, wp) = padded_grid(h, w, padding);
    let (ho, wo) = (h + 2 * padding - kh + 1, w + 2 * padding - kw + 1);
    let l = n * hp * wp;
    // [C_in, N, Hp, Wp], zero border (plus the extra bottom row and the alignment columns).
    let grid = x
        .transpose(0, 1)?
        .pad_with_zeros(2, padding, hp - h - padding)?
        .pad_with_zeros(3, padding, wp - w - padding)?
        .contiguous()?
        .flatten_all()?;
    // Shifted copy dx holds X[i, q + dx] at i·L + q. Its length is cut by ROW_ALIGN (not kW−1)
    // so that every copy starts aligned; the cut tail is never read (see `rows` below).
    let copy_len = cin * l - ROW_ALIGN;
    let shifted = (0..kw)
        .map(|dx| grid.narrow(0, dx, copy_len))
        .collect::<Result<Vec<_>>>()?;
    let shifted = Tensor::stack(&shifted, 0)?; // [kW, copy_len]
    let taps = pack_taps(&weight.to_dtype(x.dtype())?)?;
    // Output positions computed: the real ones end before the last kH rows of the grid
    // (the bottom padding, the extra row), so the shifted reads stay below i·L + L − Wp.
    let rows = l - kh * wp;
    let op = TapGemms {
        kh,
        kw,
        cin,
        cout,
        l,
        wp,
        copy_len,
        rows,
    };
    let y = shifted.apply_op2_no_bwd(&taps, &op)?; // [C_out, L] f32
    y.reshape((cout, n, hp, wp))?
        .narrow(2, 0, ho)?
        .narrow(3, 0, wo)?
        .transpose(0, 1)
}

/// `[C_out, C_in, kH, kW]` → `[kH·kW, C_out, C_in]`: the per-tap weight matrices both tap
/// convolutions multiply with (pack once, at load, where a layer runs many times).
pub fn pack_taps(weight: &Tensor) -> Result<Tensor> {
    let (cout, cin, kh, kw) = weight.dims4()?;
    weight
        .permute((2, 3, 0, 1))?
        .contiguous()?
        .reshape((kh * kw, cout, cin))
}

/// Channels-last valid convolution, stride 1: `x` `[N, Hp, Wp, K]` (already padded by the
/// caller, any padding mode) ⊛ `taps` `[kH·kW, C_out, K]` (from [`pack_taps`], `x`'s dtype)
/// → **f32** `[N, Hp − kH + 1, Wp − kW + 1, C_out]`.
///
/// On CUDA every tap is one cuBLAS GEMM over a shifted view of `x` itself, batched over the N
/// frames and accumulated in f32: output row `p = y·Wp + x` of a frame reads input rows
/// `p + dy·Wp + dx`, so computing the output on the padded width (the `kW − 1` extra columns
/// of each row are cropped) makes every tap a plain matrix with leading dimension K. No copy of
/// the input is made. Elsewhere the same sum runs as Candle matmuls in f32 (the reference).
pub fn conv2d_nhwc_valid(x: &Tensor, taps: &Tensor, kh: usize, kw: usize) -> Result<Tensor> {
    let (n, hp, wp, k) = x.dims4()?;
    let (ntaps, cout, k_w) = taps.dims3()?;
    if ntaps != kh * kw || k_w != k {
        candle_core::bail!(
            "tap conv2d (channels-last): taps {:?} do not match a {kh}x{kw} kernel over {k} input channels",
            taps.dims()
        )
    }
    if hp < kh || wp < kw || kh == 0 || kw == 0 {
        candle_core::bail!(
            "tap conv2d (channels-last): {hp}x{wp} input is smaller than the {kh}x{kw} kernel"
        )
    }
    let (ho, wo) = (hp - kh + 1, wp - kw + 1);
    if !x.device().is_cuda() {
        let xf = x.to_dtype(DType::F32)?;
        let tf = taps.to_dtype(DType::F32)?;
        let mut acc: Option<Tensor> = None;
        for dy in 0..kh {
            for dx in 0..kw {
                let a = xf
                    .narrow(1, dy, ho)?
                    .narrow(2, dx, wo)?
                    .contiguous()?
                    .reshape((n * ho * wo, k))?;
                let y = a.matmul(&tf.get(dy * kw + dx)?.t()?)?;
                acc = Some(match acc {
                    Some(s) => (s + y)?,
                    None => y,
                });
            }
        }
        return acc.expect("kh, kw >= 1").reshape((n, ho, wo, cout));
    }
    let op = NhwcTapGemms {
        n,
        hp,
        wp,
        k,
        kh,
        kw,
        cout,
    };
    let y = x.contiguous()?.apply_op2_no_bwd(&taps.contiguous()?, &op)?; // [N, Ho·Wp, C_out]
    y.reshape((n, ho, wp, cout))?.narrow(2, 0, wo)
}

/// The channels-last tap GEMMs of [`conv2d_nhwc_valid`].
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct NhwcTapGemms {
    n: usize,
    hp: usize,
    wp: usize,
    k: usize,
    kh: usize,
    kw: usize,
    cout: usize,
}

impl candle_core::CustomOp2 for NhwcTapGemms {
    fn name(&self) -> &'static str {
        "flashvsr-tap-conv2d-nhwc"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        candle_core::bail!("channels-last tap GEMMs run on CUDA only (Candle matmuls elsewhere)")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xs_l: &candle_core::Layout,
        taps: &candle_core::CudaStorage,
        taps_l: &candle_core::Layout,
    ) -> Result<(candle_core::CudaStorage, candle_core::Shape)> {
        cuda::run(self, (xs, xs_l), (taps, taps_l))
    }
}

/// The tap GEMMs: `xs` `[kW, copy_len]` (the shifted copies), `taps` `[kH·kW, C_out, C_in]`.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct TapGemms {
    kh: usize,
    kw: usize,
    cin: usize,
    cout: usize,
    l: usize,
    wp: usize,
    copy_len: usize,
    rows: usize,
}

impl candle_core::CustomOp2 for TapGemms {
    fn name(&self) -> &'static str {
        "flashvsr-tap-conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        candle_core::bail!(
            "tap conv2d GEMMs run on CUDA only (conv2d falls back to Candle elsewhere)"
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xs_l: &candle_core::Layout,
        taps: &candle_core::CudaStorage,
        taps_l: &candle_core::Layout,
    ) -> Result<(candle_core::CudaStorage, candle_core::Shape)> {
        cuda::run(self, (xs, xs_l), (taps, taps_l))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{NhwcTapGemms, TapGemms};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::cublas::{
        result::{gemm_ex, gemm_strided_batched_ex},
        sys,
    };
    use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{bail, CudaStorage, DType, Layout, Result, Shape};
    use half::{bf16, f16};
    use std::ffi::c_void;

    fn start(layout: &Layout, what: &str) -> Result<usize> {
        crate::contiguous_start(layout, "tap conv2d", what)
    }

    /// What differs between the two tap-GEMM ops; [`run`] does the rest.
    pub(super) trait TapOp {
        /// The op's name in messages.
        const WHAT: &'static str;
        /// The sizes cuBLAS takes as 32-bit integers.
        fn gemm_sizes(&self) -> Vec<usize>;
        fn out_shape(&self) -> Shape;
        fn gemms<T: CudaDType + DeviceRepr>(
            &self,
            xs: (&CudaStorage, &Layout),
            taps: (&CudaStorage, &Layout),
            data_type: sys::cudaDataType_t,
        ) -> Result<CudaStorage>;
    }

    /// Checks dtypes and sizes, then runs the op's GEMMs in the inputs' dtype.
    pub(super) fn run<Op: TapOp>(
        op: &Op,
        xs: (&CudaStorage, &Layout),
        taps: (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let what = Op::WHAT;
        if xs.0.dtype() != taps.0.dtype() {
            bail!(
                "{what}: input {:?} and weight {:?} dtypes differ",
                xs.0.dtype(),
                taps.0.dtype()
            )
        }
        let dims = op.gemm_sizes();
        if dims.iter().any(|&d| d > i32::MAX as usize) {
            bail!("{what}: {dims:?} exceeds cuBLAS's 32-bit sizes; split the batch")
        }
        let out = match xs.0.dtype() {
            DType::F32 => op.gemms::<f32>(xs, taps, sys::cudaDataType_t::CUDA_R_32F)?,
            DType::F16 => op.gemms::<f16>(xs, taps, sys::cudaDataType_t::CUDA_R_16F)?,
            DType::BF16 => op.gemms::<bf16>(xs, taps, sys::cudaDataType_t::CUDA_R_16BF)?,
            dt => bail!("{what}: dtype {dt:?} is not supported"),
        };
        Ok((out, op.out_shape()))
    }

    /// f32 inputs use TF32 tensor cores only when Candle's reduced-precision f32 switch is on
    /// (as Candle's own matmuls do); half inputs always accumulate in f32.
    fn compute_type(data_type: sys::cudaDataType_t) -> sys::cublasComputeType_t {
        let f32_inputs = matches!(data_type, sys::cudaDataType_t::CUDA_R_32F);
        if f32_inputs && candle_core::cuda::gemm_reduced_precision_f32() {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
        }
    }

    impl TapOp for TapGemms {
        const WHAT: &'static str = "tap conv2d";
        fn gemm_sizes(&self) -> Vec<usize> {
            vec![self.l, self.rows, self.cin, self.cout]
        }
        fn out_shape(&self) -> Shape {
            Shape::from((self.cout, self.l))
        }
        fn gemms<T: CudaDType + DeviceRepr>(
            &self,
            xs: (&CudaStorage, &Layout),
            taps: (&CudaStorage, &Layout),
            data_type: sys::cudaDataType_t,
        ) -> Result<CudaStorage> {
            gemms::<T>(self, xs, taps, data_type)
        }
    }

    impl TapOp for NhwcTapGemms {
        const WHAT: &'static str = "tap conv2d (channels-last)";
        fn gemm_sizes(&self) -> Vec<usize> {
            let rows = (self.hp - self.kh + 1) * self.wp;
            vec![
                rows,
                self.k,
                self.cout,
                self.hp * self.wp * self.k,
                rows * self.cout,
            ]
        }
        fn out_shape(&self) -> Shape {
            Shape::from((self.n, (self.hp - self.kh + 1) * self.wp, self.cout))
        }
        fn gemms<T: CudaDType + DeviceRepr>(
            &self,
            xs: (&CudaStorage, &Layout),
            taps: (&CudaStorage, &Layout),
            data_type: sys::cudaDataType_t,
        ) -> Result<CudaStorage> {
            nhwc_gemms::<T>(self, xs, taps, data_type)
        }
    }

    /// What one tap's GEMM gets: the operands' device addresses, the tap, and the cuBLAS
    /// scalars (`beta` 0 for the first tap, which initialises the output, 1 after).
    struct Tap {
        x: u64,
        w: u64,
        y: u64,
        elem: u64,
        dy: usize,
        dx: usize,
        tap: usize,
        one: *const c_void,
        beta: *const c_void,
        compute: sys::cublasComputeType_t,
    }

    /// The frame of both ops: the operands at their offsets (at least `min_x`/`min_w`
    /// elements), a zeroed f32 output of `out_len`, then `gemm` once per tap in (dy, dx) order.
    #[allow(clippy::too_many_arguments)]
    fn accumulate_taps<T: CudaDType + DeviceRepr>(
        what: &str,
        xs: (&CudaStorage, &Layout),
        taps: (&CudaStorage, &Layout),
        (min_x, min_w): (usize, usize),
        out_len: usize,
        (kh, kw): (usize, usize),
        data_type: sys::cudaDataType_t,
        mut gemm: impl FnMut(sys::cublasHandle_t, &Tap) -> Result<()>,
    ) -> Result<CudaStorage> {
        let dev = xs.0.device().clone();
        let x = xs.0.as_cuda_slice::<T>()?.slice(start(xs.1, "input")?..);
        let w = taps
            .0
            .as_cuda_slice::<T>()?
            .slice(start(taps.1, "weight")?..);
        if x.len() < min_x || w.len() < min_w {
            bail!("{what}: operand buffers are smaller than their shapes")
        }
        // Zeroed: output rows no GEMM writes are cropped by the caller.
        let mut out = dev.alloc_zeros::<f32>(out_len)?;
        let blas = dev.cublas_handle();
        let stream = dev.cuda_stream();
        {
            let (x_ptr, _gx) = x.device_ptr(&stream);
            let (w_ptr, _gw) = w.device_ptr(&stream);
            let (y_ptr, _gy) = out.device_ptr_mut(&stream);
            let (one, zero) = (1f32, 0f32);
            for dy in 0..kh {
                for dx in 0..kw {
                    let index = dy * kw + dx;
                    let beta: &f32 = if index == 0 { &zero } else { &one };
                    let tap = Tap {
                        x: x_ptr,
                        w: w_ptr,
                        y: y_ptr,
                        elem: std::mem::size_of::<T>() as u64,
                        dy,
                        dx,
                        tap: index,
                        one: &one as *const f32 as *const c_void,
                        beta: beta as *const f32 as *const c_void,
                        compute: compute_type(data_type),
                    };
                    gemm(*blas.handle(), &tap)?;
                }
            }
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }

    fn nhwc_gemms<T: CudaDType + DeviceRepr>(
        op: &NhwcTapGemms,
        xs: (&CudaStorage, &Layout),
        taps: (&CudaStorage, &Layout),
        data_type: sys::cudaDataType_t,
    ) -> Result<CudaStorage> {
        let frame_in = op.hp * op.wp * op.k;
        let rows_out = (op.hp - op.kh + 1) * op.wp;
        // Rows computed per frame: the last kW − 1 (cropped columns of the last output row)
        // would read past the frame; they stay zero.
        let rows = rows_out - (op.kw - 1);
        let sizes = (op.n * frame_in, op.kh * op.kw * op.cout * op.k);
        let what = "tap conv2d (channels-last)";
        accumulate_taps::<T>(
            what,
            xs,
            taps,
            sizes,
            op.n * rows_out * op.cout,
            (op.kh, op.kw),
            data_type,
            |handle, t| {
                // Column-major view, per frame: Y^T [C_out, rows] (ld C_out) +=
                // W_tap [C_out, K] (stored row-major: column-major [K, C_out], transposed)
                // · X_shift^T [K, rows] (ld K).
                let a = t.w + t.elem * (t.tap * op.cout * op.k) as u64;
                let b = t.x + t.elem * ((t.dy * op.wp + t.dx) * op.k) as u64;
                // SAFETY: live device buffers of the checked sizes; per frame the largest
                // input row read is rows − 1 + (kH−1)·Wp + kW − 1 = Hp·Wp − 1, inside it.
                unsafe {
                    gemm_strided_batched_ex(
                        handle,
                        sys::cublasOperation_t::CUBLAS_OP_T,
                        sys::cublasOperation_t::CUBLAS_OP_N,
                        op.cout as i32,
                        rows as i32,
                        op.k as i32,
                        t.one,
                        a as *const c_void,
                        data_type,
                        op.k as i32,
                        0,
                        b as *const c_void,
                        data_type,
                        op.k as i32,
                        frame_in as i64,
                        t.beta,
                        t.y as *mut c_void,
                        sys::cudaDataType_t::CUDA_R_32F,
                        op.cout as i32,
                        (rows_out * op.cout) as i64,
                        op.n as i32,
                        t.compute,
                        sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
                    )
                }
                .w()
            },
        )
    }

    fn gemms<T: CudaDType + DeviceRepr>(
        op: &TapGemms,
        xs: (&CudaStorage, &Layout),
        taps: (&CudaStorage, &Layout),
        data_type: sys::cudaDataType_t,
    ) -> Result<CudaStorage> {
        let sizes = (op.kw * op.copy_len, op.kh * op.kw * op.cout * op.cin);
        accumulate_taps::<T>(
            "tap conv2d",
            xs,
            taps,
            sizes,
            op.cout * op.l,
            (op.kh, op.kw),
            data_type,
            |handle, t| {
                // Column-major view: Y^T [rows, C_out] (ld L) += X_shift^T [rows, C_in]
                // (ld L) · W_tap^T [C_in, C_out] (ld C_in).
                let a = t.x + t.elem * (t.dx * op.copy_len + t.dy * op.wp) as u64;
                let b = t.w + t.elem * (t.tap * op.cout * op.cin) as u64;
                // SAFETY: the pointers come from live device buffers of the checked sizes;
                // the largest element read is (C_in−1)·L + rows−1 + (kH−1)·Wp of a copy,
                // below copy_len (see `conv2d`); Y has C_out·L elements.
                unsafe {
                    gemm_ex(
                        handle,
                        sys::cublasOperation_t::CUBLAS_OP_N,
                        sys::cublasOperation_t::CUBLAS_OP_N,
                        op.rows as i32,
                        op.cout as i32,
                        op.cin as i32,
                        t.one,
                        a as *const c_void,
                        data_type,
                        op.l as i32,
                        b as *const c_void,
                        data_type,
                        op.cin as i32,
                        t.beta,
                        t.y as *mut c_void,
                        sys::cudaDataType_t::CUDA_R_32F,
                        op.l as i32,
                        t.compute,
                        sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
                    )
                }
                .w()
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cpu_fallback_is_candles_conv() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 7), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &dev)?;
        let got = conv2d(&x, &w, 1)?;
        let want = x.conv2d(&w, 1, 1, 1, 1)?;
        assert_eq!(got.dims(), &[2, 4, 5, 7]);
        assert_eq!((got - want)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn channels_last_valid_conv_is_the_padded_nchw_conv() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 7), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &dev)?;
        let want = x.conv2d(&w, 1, 1, 1, 1)?.permute((0, 2, 3, 1))?;
        let padded = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
        let nhwc = padded.permute((0, 2, 3, 1))?.contiguous()?;
        let got = conv2d_nhwc_valid(&nhwc, &pack_taps(&w)?, 3, 3)?;
        assert_eq!(got.dims(), &[2, 5, 7, 4]);
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "max abs diff {diff}");
        assert!(conv2d_nhwc_valid(&nhwc, &pack_taps(&w)?, 3, 2).is_err());
        Ok(())
    }

    #[test]
    fn bad_shapes_are_refused() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 2, 2), DType::F32, &dev).unwrap();
        assert!(conv2d(
            &x,
            &Tensor::zeros((4, 5, 3, 3), DType::F32, &dev).unwrap(),
            1
        )
        .is_err());
        assert!(conv2d(
            &x,
            &Tensor::zeros((4, 3, 5, 5), DType::F32, &dev).unwrap(),
            0
        )
        .is_err());
    }
}
