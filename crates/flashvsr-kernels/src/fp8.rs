//! FP8 (e4m3) linear layers: weights quantized per output channel, activations per token, one
//! cuBLASLt FP8 GEMM (f32 accumulation) between, the two scales applied once in f32.
//!
//! `y[t, o] = (Σ_i e4m3(x[t,i]/sx[t]) · e4m3(w[o,i]/sw[o])) · sx[t] · sw[o]`, with
//! `s = amax(row) / 448` (448 is e4m3's largest finite value) and round-to-nearest-even,
//! saturating conversion. On CUDA it needs sm_89+ (Ada, Hopper); on the CPU the same
//! quantization and scale order run through an f32 matmul of the decoded values (the reference
//! the GPU is tested against).
//!
//! The cuBLASLt descriptors, layouts and algorithm of a GEMM are made once per (device, shape,
//! output dtype, scaling mode) and reused (a DiT step calls the same few shapes ~150 times);
//! [`linear_prequantized`] takes activations a fused kernel already quantized.

use candle_core::{bail, DType, Device, Result, Tensor};

/// e4m3's largest finite magnitude.
pub const E4M3_MAX: f32 = 448.0;

/// FP8 tensor-core GEMMs start at Ada (sm_89).
pub const MIN_COMPUTE_CAP: crate::gpu_caps::ComputeCap = 89;

/// The value of an e4m3 (`fn` variant: no infinities, 0x7f/0xff are NaN) byte.
pub fn e4m3_decode(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = ((b >> 3) & 0x0f) as i32;
    let man = (b & 0x07) as f32;
    if exp == 0x0f && b & 0x07 == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        sign * man / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}

/// The e4m3 byte nearest to `x` (ties to an even mantissa), saturating at ±448; NaN stays NaN.
pub fn e4m3_encode(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs();
    if a >= E4M3_MAX {
        return sign | 0x7e;
    }
    // Magnitudes are monotonic in the byte: find the neighbours among the 126 finite codes.
    let (mut lo, mut hi) = (0u8, 0x7eu8);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if e4m3_decode(mid) <= a {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (dl, dh) = (a - e4m3_decode(lo), e4m3_decode(hi) - a);
    let code = if dl < dh || (dl == dh && lo % 2 == 0) {
        lo
    } else {
        hi
    };
    sign | code
}

/// The scale of a row whose largest magnitude is `amax` (1 for a row of zeros).
pub fn row_scale(amax: f32) -> f32 {
    if amax > 0.0 {
        amax / E4M3_MAX
    } else {
        1.0
    }
}

/// A matrix `[rows, cols]` in e4m3, one f32 scale per row.
#[derive(Debug, Clone)]
pub struct Fp8Rows {
    /// `[rows, cols]` bytes (U8).
    pub q: Tensor,
    /// `[rows]` f32.
    pub scale: Tensor,
}

impl Fp8Rows {
    pub fn dims(&self) -> Result<(usize, usize)> {
        self.q.dims2()
    }

    /// Bytes on the device (values and scales).
    pub fn bytes(&self) -> usize {
        self.q.elem_count() + 4 * self.scale.elem_count()
    }

    /// The matrix the bytes and scales stand for, in `dtype` (`q · scale`, in f32, rounded once).
    pub fn dequantize(&self, dtype: DType) -> Result<Tensor> {
        self.dequantize_with(&decode_table(self.q.device())?, dtype)
    }

    /// [`Fp8Rows::dequantize`] with a [`decode_table`] the caller keeps on the device (no
    /// upload per call: a host copy in a CUDA step loop stalls it).
    pub fn dequantize_with(&self, table: &Tensor, dtype: DType) -> Result<Tensor> {
        decode_with(&self.q, table)?
            .broadcast_mul(&self.scale.unsqueeze(1)?)?
            .to_dtype(dtype)
    }
}

/// Whether FP8 linears run on `device`: the CPU always (the reference), CUDA from sm_89.
pub fn supported(device: &Device) -> Result<bool> {
    Ok(match crate::gpu_caps::compute_capability(device)? {
        Some(cap) => cap >= MIN_COMPUTE_CAP,
        None => device.is_cpu(),
    })
}

/// `cols` columns can go through the FP8 GEMM (`what` names the caller in the error).
pub(crate) fn check_cols(cols: usize, what: &str) -> Result<()> {
    if cols == 0 || !cols.is_multiple_of(16) {
        bail!("fp8 {what}: {cols} columns, the FP8 GEMM needs a positive multiple of 16")
    }
    Ok(())
}

/// Quantizes each row of `x` `[rows, cols]` (f32/f16/bf16) to e4m3 with its own scale.
pub fn quantize_rows(x: &Tensor) -> Result<Fp8Rows> {
    let (rows, cols) = x.dims2()?;
    check_cols(cols, "quantize")?;
    match x.device() {
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => cuda::quantize_rows(x, rows, cols),
        _ => quantize_rows_host(x, rows, cols),
    }
}

fn quantize_rows_host(x: &Tensor, rows: usize, cols: usize) -> Result<Fp8Rows> {
    let v = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut q = Vec::with_capacity(v.len());
    let mut scale = Vec::with_capacity(rows);
    for row in v.chunks_exact(cols.max(1)) {
        let s = row_scale(row.iter().fold(0f32, |m, &a| m.max(a.abs())));
        q.extend(row.iter().map(|&a| e4m3_encode(a / s)));
        scale.push(s);
    }
    Ok(Fp8Rows {
        q: Tensor::from_vec(q, (rows, cols), x.device())?,
        scale: Tensor::from_vec(scale, rows, x.device())?,
    })
}

/// The f32 values of the 256 e4m3 codes on `device`, for [`Fp8Rows::dequantize_with`].
pub fn decode_table(device: &Device) -> Result<Tensor> {
    let table: Vec<f32> = (0..=255u8).map(e4m3_decode).collect();
    Tensor::from_vec(table, 256, device)
}

/// The e4m3 bytes `q` as f32 values (no scale).
fn decode(q: &Tensor) -> Result<Tensor> {
    decode_with(q, &decode_table(q.device())?)
}

fn decode_with(q: &Tensor, table: &Tensor) -> Result<Tensor> {
    let idx = q.flatten_all()?.to_dtype(DType::U32)?;
    table.index_select(&idx, 0)?.reshape(q.shape())
}

/// The output features of `w`, after checking it takes `k` inputs and `bias` has one element
/// per output.
fn check_operands(k: usize, w: &Fp8Rows, bias: Option<&Tensor>) -> Result<usize> {
    let (n, wk) = w.dims()?;
    if k != wk {
        bail!("fp8 linear: input has {k} features, the weight [{n}, {wk}]")
    }
    if let Some(b) = bias {
        if b.elem_count() != n {
            bail!(
                "fp8 linear: bias has {} elements, expected {n}",
                b.elem_count()
            )
        }
    }
    Ok(n)
}

/// `y = x · Wᵀ (+ bias)` over `x` `[rows, in]` in f32/f16/bf16 (output in `x`'s dtype), `w` the
/// weight `[out, in]` quantized per output channel; `x` is quantized per token on the way.
pub fn linear(x: &Tensor, w: &Fp8Rows, bias: Option<&Tensor>) -> Result<Tensor> {
    let (rows, k) = x.dims2()?;
    let n = check_operands(k, w, bias)?;
    if rows == 0 {
        return Tensor::zeros((0, n), x.dtype(), x.device());
    }
    linear_prequantized(&quantize_rows(x)?, w, bias, x.dtype())
}

/// [`linear`] from activations already quantized per token (`xq` `[rows, in]` with its `[rows]`
/// scales, as [`quantize_rows`] makes them, e.g. by a fused kernel that produced them), output
/// in `out` (f32/f16/bf16: the dtype the activations had).
pub fn linear_prequantized(
    xq: &Fp8Rows,
    w: &Fp8Rows,
    bias: Option<&Tensor>,
    out: DType,
) -> Result<Tensor> {
    let (rows, k) = xq.dims()?;
    let n = check_operands(k, w, bias)?;
    if xq.scale.elem_count() != rows {
        bail!(
            "fp8 linear: {rows} activation rows but {} scales",
            xq.scale.elem_count()
        )
    }
    if rows == 0 {
        return Tensor::zeros((0, n), out, xq.q.device());
    }
    match xq.q.device() {
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => cuda::linear(xq, w, bias, out, rows, n, k),
        _ => {
            let d = decode(&xq.q)?.matmul(&decode(&w.q)?.t()?)?;
            let y = d
                .broadcast_mul(&xq.scale.unsqueeze(1)?)?
                .broadcast_mul(&w.scale.unsqueeze(0)?)?;
            let y = match bias {
                Some(b) => y.broadcast_add(&b.to_dtype(DType::F32)?.reshape((1, n))?)?,
                None => y,
            };
            y.to_dtype(out)
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::Fp8Rows;
    use crate::cuda_ops as ops;
    use candle_core::cuda_backend::cudarc::cublaslt::{result as lt, sys};
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDType, DeviceId, WrapErr};
    use candle_core::{bail, CudaDevice, DType, Result, Tensor, WithDType};
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};

    /// This module's name in error messages.
    const OP: &str = "fp8";
    const MODULE: &str = "flashvsr_fp8";

    pub(super) fn quantize_rows(x: &Tensor, rows: usize, cols: usize) -> Result<Fp8Rows> {
        fn go<T: CudaDType + DeviceRepr + WithDType>(
            x: &Tensor,
            rows: usize,
            cols: usize,
        ) -> Result<Fp8Rows> {
            let dev = ops::device(OP, x)?;
            let x = x.contiguous()?;
            let (sx, lx) = x.storage_and_layout();
            let xv = ops::view::<T>(OP, &sx, lx, "x")?;
            let name = format!("fp8_quantize_rows_{}", ops::suffix(OP, T::DTYPE)?);
            let f = dev.get_or_load_custom_func(&name, MODULE, crate::ptx::FP8)?;
            // SAFETY: the kernel writes every byte and every scale.
            let q = unsafe { dev.alloc::<u8>(rows * cols)? };
            let scale = unsafe { dev.alloc::<f32>(rows)? };
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: ((cols / 4).div_ceil(32).clamp(1, 8) as u32 * 32, 1, 1),
                shared_mem_bytes: 0,
            };
            let cols_i = cols as i32;
            let mut b = f.builder();
            b.arg(&xv);
            b.arg(&q);
            b.arg(&scale);
            b.arg(&cols_i);
            // SAFETY: arguments match fp8_quantize_rows_* in kernels/fp8.cu.
            unsafe { b.launch(cfg) }.w()?;
            Ok(Fp8Rows {
                q: ops::wrap(q, &dev, (rows, cols)),
                scale: ops::wrap(scale, &dev, rows),
            })
        }
        if rows > i32::MAX as usize {
            bail!("fp8 quantize: {rows} rows, at most {} per call", i32::MAX)
        }
        match x.dtype() {
            DType::F32 => go::<f32>(x, rows, cols),
            DType::F16 => go::<half::f16>(x, rows, cols),
            DType::BF16 => go::<half::bf16>(x, rows, cols),
            dt => bail!("fp8 quantize: dtype {dt:?} is not supported (f32, f16, bf16)"),
        }
    }

    /// A cuBLASLt handle and its workspace (32 MiB, NVIDIA's advice for Hopper), one per CUDA
    /// device, made at first use and kept for the process.
    struct LtHandle {
        handle: sys::cublasLtHandle_t,
        workspace: CudaSlice<u8>,
        stream: Arc<CudaStream>,
    }

    // SAFETY: a cuBLASLt handle may be used from any thread; calls are serialised on one stream.
    unsafe impl Send for LtHandle {}
    unsafe impl Sync for LtHandle {}

    const WORKSPACE_BYTES: usize = 32 << 20;

    /// Set once cuBLASLt has refused outer-vector scaling (older cuBLAS or GPU).
    static OUTER_VEC_UNAVAILABLE: AtomicBool = AtomicBool::new(false);

    /// Scales applied by cuBLASLt (one pass, output in the activations' dtype) unless it refused
    /// them before or `FLASHVSR_FP8_RESCALE=kernel` asks for the f32 output + rescale kernel.
    fn outer_vector_scaling() -> bool {
        static KERNEL: OnceLock<bool> = OnceLock::new();
        let kernel = *KERNEL
            .get_or_init(|| std::env::var("FLASHVSR_FP8_RESCALE").is_ok_and(|v| v == "kernel"));
        !kernel && !OUTER_VEC_UNAVAILABLE.load(Ordering::Relaxed)
    }

    fn handle(dev: &CudaDevice) -> Result<Arc<LtHandle>> {
        static HANDLES: OnceLock<Mutex<HashMap<DeviceId, Arc<LtHandle>>>> = OnceLock::new();
        let mut map = HANDLES
            .get_or_init(Default::default)
            .lock()
            .map_err(|_| candle_core::Error::Msg("fp8: poisoned cuBLASLt handle lock".into()))?;
        if let Some(h) = map.get(&dev.id()) {
            return Ok(h.clone());
        }
        let stream = dev.cuda_stream();
        stream.context().bind_to_thread().w()?;
        let handle = lt::create_handle().map_err(|e| {
            candle_core::Error::Msg(format!("fp8: cannot create a cuBLASLt handle: {e:?}"))
        })?;
        // SAFETY: scratch for cuBLASLt, never read by us.
        let workspace = unsafe { dev.alloc::<u8>(WORKSPACE_BYTES)? };
        let h = Arc::new(LtHandle {
            handle,
            workspace,
            stream,
        });
        map.insert(dev.id(), h.clone());
        Ok(h)
    }

    /// Sets a matmul-descriptor attribute to `value` (the attribute's C type: i32 enums, device
    /// pointers).
    fn set_desc_attribute<V>(
        desc: sys::cublasLtMatmulDesc_t,
        attr: sys::cublasLtMatmulDescAttributes_t,
        value: &V,
    ) -> std::result::Result<(), lt::CublasError> {
        // SAFETY: `value` is live for the call and sized as the attribute expects (callers pass
        // the attribute's type); cuBLASLt copies it.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                attr,
                value as *const V as *const _,
                std::mem::size_of::<V>(),
            )
        }
    }

    fn lt_err(what: &str) -> impl Fn(lt::CublasError) -> candle_core::Error + '_ {
        move |e| candle_core::Error::Msg(format!("fp8 GEMM ({what}): {e:?}"))
    }

    /// Owns cuBLASLt descriptors (destroyed on drop).
    struct Descriptors {
        desc: sys::cublasLtMatmulDesc_t,
        layouts: Vec<sys::cublasLtMatrixLayout_t>,
        pref: Option<sys::cublasLtMatmulPreference_t>,
    }

    impl Drop for Descriptors {
        fn drop(&mut self) {
            // SAFETY: each handle was created once and is destroyed once, here.
            unsafe {
                if let Some(p) = self.pref.take() {
                    let _ = lt::destroy_matmul_pref(p);
                }
                for l in &self.layouts {
                    let _ = lt::destroy_matrix_layout(*l);
                }
                let _ = lt::destroy_matmul_desc(self.desc);
            }
        }
    }

    /// What a [`Plan`] is made for: the device (one cuBLASLt handle each), the shape, the output
    /// dtype and whether cuBLASLt applies the scales (A and B are always e4m3).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    struct PlanKey {
        device: DeviceId,
        rows: usize,
        n: usize,
        k: usize,
        out: DType,
        outer_vec: bool,
    }

    /// The cuBLASLt objects of one GEMM shape: the matmul descriptor (transpose, scale modes),
    /// the layouts of A, B and D, and the algorithm the heuristic chose. Made at a shape's first
    /// call and reused; only the scale pointers are set per call.
    struct Plan {
        owned: Descriptors,
        algo: sys::cublasLtMatmulAlgo_t,
    }

    // SAFETY: the descriptors are plain host objects; a plan is only used under its mutex.
    unsafe impl Send for Plan {}

    /// Plans kept at most (a run has a handful of shapes; past this the cache starts over).
    const MAX_PLANS: usize = 256;

    /// Device pointers of the weight's and the activations' scales.
    type ScalePtrs = (u64, u64);

    impl Plan {
        /// `None` when the scales were asked for and cuBLASLt refuses outer-vector scaling (or
        /// has no algorithm with it). `scale_ptrs` (weight, activations) are set for the
        /// heuristic, as a call would.
        fn new(h: &LtHandle, key: &PlanKey, scale_ptrs: Option<ScalePtrs>) -> Result<Option<Plan>> {
            let PlanKey { rows, n, k, .. } = *key;
            let d_type = match key.out {
                DType::F32 => sys::cudaDataType_t::CUDA_R_32F,
                DType::F16 => sys::cudaDataType_t::CUDA_R_16F,
                DType::BF16 => sys::cudaDataType_t::CUDA_R_16BF,
                dt => bail!("fp8 GEMM: output dtype {dt:?} is not supported"),
            };
            let desc = lt::create_matmul_desc(
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType_t::CUDA_R_32F,
            )
            .map_err(lt_err("descriptor"))?;
            let mut owned = Descriptors {
                desc,
                layouts: Vec::new(),
                pref: None,
            };
            // cublasOperation_t: CUBLAS_OP_T = 1 (the operation enums live in cuBLAS, not
            // cuBLASLt).
            let trans: i32 = 1;
            set_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &trans,
            )
            .map_err(lt_err("TRANSA"))?;
            if key.outer_vec {
                // CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F (cuBLAS 12.9+; not in every
                // binding).
                let mode: i32 = 3;
                use sys::cublasLtMatmulDescAttributes_t as Attr;
                let set = set_desc_attribute(desc, Attr::CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode)
                    .and_then(|_| {
                        set_desc_attribute(desc, Attr::CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode)
                    })
                    .and_then(|_| match scale_ptrs {
                        Some(p) => set_scale_pointers(desc, p),
                        None => Ok(()),
                    });
                if set.is_err() {
                    return Ok(None);
                }
            }
            let e4m3 = sys::cudaDataType_t::CUDA_R_8F_E4M3;
            let a = lt::create_matrix_layout(e4m3, k as u64, n as u64, k as i64)
                .map_err(lt_err("layout A"))?;
            owned.layouts.push(a);
            let b = lt::create_matrix_layout(e4m3, k as u64, rows as u64, k as i64)
                .map_err(lt_err("layout B"))?;
            owned.layouts.push(b);
            let c = lt::create_matrix_layout(d_type, n as u64, rows as u64, n as i64)
                .map_err(lt_err("layout D"))?;
            owned.layouts.push(c);
            let pref = lt::create_matmul_pref().map_err(lt_err("preference"))?;
            owned.pref = Some(pref);
            let ws_size = WORKSPACE_BYTES;
            // SAFETY: a live usize, as the attribute expects.
            unsafe {
                lt::set_matmul_pref_attribute(
                    pref,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    (&ws_size) as *const usize as *const _,
                    std::mem::size_of::<usize>(),
                )
            }
            .map_err(lt_err("workspace size"))?;
            // SAFETY: every descriptor is live (owned).
            let heuristic =
                unsafe { lt::get_matmul_algo_heuristic(h.handle, desc, a, b, c, c, pref) };
            if heuristic.is_err() && key.outer_vec {
                return Ok(None);
            }
            let heuristic = heuristic.map_err(|e| {
                candle_core::Error::Msg(format!(
                    "fp8 GEMM: cuBLASLt has no algorithm for [{rows}, {k}] x [{n}, {k}]^T ({e:?}); FP8 needs sm_89+ and dims in multiples of 16"
                ))
            })?;
            // The preference is only for the heuristic.
            if let Some(p) = owned.pref.take() {
                // SAFETY: created above, destroyed once.
                let _ = unsafe { lt::destroy_matmul_pref(p) };
            }
            Ok(Some(Plan {
                owned,
                algo: heuristic.algo,
            }))
        }
    }

    /// Points the descriptor's A and B scales at the weight's and the activations' scales.
    fn set_scale_pointers(
        desc: sys::cublasLtMatmulDesc_t,
        (wp, xp): ScalePtrs,
    ) -> std::result::Result<(), lt::CublasError> {
        use sys::cublasLtMatmulDescAttributes_t as Attr;
        set_desc_attribute(desc, Attr::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &wp)
            .and_then(|_| set_desc_attribute(desc, Attr::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &xp))
    }

    /// The plan of `key`, made now if there is none; `None` as [`Plan::new`] says.
    fn plan(
        h: &LtHandle,
        key: PlanKey,
        scale_ptrs: Option<ScalePtrs>,
    ) -> Result<Option<Arc<Mutex<Plan>>>> {
        static PLANS: OnceLock<Mutex<HashMap<PlanKey, Arc<Mutex<Plan>>>>> = OnceLock::new();
        let mut map = PLANS
            .get_or_init(Default::default)
            .lock()
            .map_err(|_| candle_core::Error::Msg("fp8: poisoned GEMM plan lock".into()))?;
        if let Some(p) = map.get(&key) {
            return Ok(Some(p.clone()));
        }
        let Some(p) = Plan::new(h, &key, scale_ptrs)? else {
            return Ok(None);
        };
        if map.len() >= MAX_PLANS {
            // Plans in use elsewhere live on through their Arc.
            map.clear();
        }
        let p = Arc::new(Mutex::new(p));
        map.insert(key, p.clone());
        Ok(Some(p))
    }

    /// `d [rows, n] = xq [rows, k] · wqᵀ` in `T`. In cuBLASLt's column-major terms:
    /// D (n × rows) = Wᵀ-op(A = the weight bytes, k × n, ld k) · B (the activation bytes,
    /// k × rows, ld k) — the "TN" layout FP8 requires.
    /// With `scales = (sw [n], sx [rows])` cuBLASLt applies them itself ("outer vector"
    /// scaling, cuBLAS 12.9+: `d[r, o] = sw[o] · sx[r] · Σ`, one rounding into `T`); `None` is
    /// returned when it has no algorithm for that (the caller then rescales an f32 `d`).
    /// Descriptors, layouts and algorithm come from the shape's cached [`Plan`].
    #[allow(clippy::too_many_arguments)]
    fn gemm<T: CudaDType + DeviceRepr + WithDType>(
        dev: &CudaDevice,
        xq: &Tensor,
        wq: &Tensor,
        scales: Option<(&Tensor, &Tensor)>,
        rows: usize,
        n: usize,
        k: usize,
    ) -> Result<Option<CudaSlice<T>>> {
        let h = handle(dev)?;
        let stream = h.stream.clone();
        let (sx, lx) = xq.storage_and_layout();
        let (sw, lw) = wq.storage_and_layout();
        let xv = ops::view::<u8>(OP, &sx, lx, "activations")?;
        let wv = ops::view::<u8>(OP, &sw, lw, "weight")?;
        let scale_guards = scales.map(|(a, b)| (a.storage_and_layout(), b.storage_and_layout()));
        let scale_views = match &scale_guards {
            Some(((sa, la), (sb, lb))) => Some((
                ops::view::<f32>(OP, sa, la, "weight scales")?,
                ops::view::<f32>(OP, sb, lb, "activation scales")?,
            )),
            None => None,
        };
        // Kept alive until the GEMM is queued: cuBLASLt reads the pointers at launch.
        let scale_ptrs = scale_views
            .as_ref()
            .map(|(a, b)| (a.device_ptr(&stream), b.device_ptr(&stream)));
        let ptrs = scale_ptrs.as_ref().map(|((ap, _), (bp, _))| (*ap, *bp));
        let key = PlanKey {
            device: dev.id(),
            rows,
            n,
            k,
            out: T::DTYPE,
            outer_vec: scales.is_some(),
        };
        let Some(plan) = plan(&h, key, ptrs)? else {
            return Ok(None);
        };
        let plan = plan
            .lock()
            .map_err(|_| candle_core::Error::Msg("fp8: poisoned GEMM plan".into()))?;
        let desc = plan.owned.desc;
        let (a, b, c) = (
            plan.owned.layouts[0],
            plan.owned.layouts[1],
            plan.owned.layouts[2],
        );
        if let Some(p) = ptrs {
            set_scale_pointers(desc, p).map_err(lt_err("scale pointers"))?;
        }
        let (alpha, beta) = (1f32, 0f32);
        // SAFETY: the GEMM writes every element (beta = 0).
        let d = unsafe { dev.alloc::<T>(rows * n)? };
        {
            let (ap, _ra) = wv.device_ptr(&stream);
            let (bp, _rb) = xv.device_ptr(&stream);
            let (dp, _rd) = d.device_ptr(&stream);
            let (wp, _rw) = h.workspace.device_ptr(&stream);
            // SAFETY: pointers are live device buffers of the sizes the layouts describe; one
            // stream; the plan (its descriptor holds this call's scale pointers) is locked
            // until the GEMM is queued.
            unsafe {
                lt::matmul(
                    h.handle,
                    desc,
                    (&alpha) as *const f32 as *const _,
                    (&beta) as *const f32 as *const _,
                    ap as *const _,
                    a,
                    bp as *const _,
                    b,
                    dp as *const _,
                    c,
                    dp as *mut _,
                    c,
                    (&plan.algo) as *const _,
                    wp as *mut _,
                    WORKSPACE_BYTES,
                    stream.cu_stream() as *mut _,
                )
            }
            .map_err(lt_err("matmul"))?;
        }
        drop(plan);
        drop(scale_ptrs);
        Ok(Some(d))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn linear(
        xq: &Fp8Rows,
        w: &Fp8Rows,
        bias: Option<&Tensor>,
        out: DType,
        rows: usize,
        n: usize,
        k: usize,
    ) -> Result<Tensor> {
        fn go<T: CudaDType + DeviceRepr + WithDType>(
            xq: &Fp8Rows,
            w: &Fp8Rows,
            bias: Option<&Tensor>,
            rows: usize,
            n: usize,
            k: usize,
        ) -> Result<Tensor> {
            let dev = ops::device(OP, &xq.q)?;
            let (xb, wq) = (xq.q.contiguous()?, w.q.contiguous()?);
            let (sw, sx) = (w.scale.contiguous()?, xq.scale.contiguous()?);
            if outer_vector_scaling() {
                if let Some(y) = gemm::<T>(&dev, &xb, &wq, Some((&sw, &sx)), rows, n, k)? {
                    let y = ops::wrap(y, &dev, (rows, n));
                    return match bias {
                        Some(b) => y.broadcast_add(&b.to_dtype(T::DTYPE)?.reshape((1, n))?),
                        None => Ok(y),
                    };
                }
                OUTER_VEC_UNAVAILABLE.store(true, Ordering::Relaxed);
            }
            let d = gemm::<f32>(&dev, &xb, &wq, None, rows, n, k)?
                .ok_or_else(|| candle_core::Error::Msg("fp8 GEMM: no algorithm".into()))?;
            let name = format!("fp8_rescale_{}", ops::suffix(OP, T::DTYPE)?);
            let f = dev.get_or_load_custom_func(&name, MODULE, crate::ptx::FP8)?;
            let bias = bias
                .map(|b| b.to_dtype(T::DTYPE)?.contiguous())
                .transpose()?;
            let (s1, l1) = sx.storage_and_layout();
            let (s2, l2) = sw.storage_and_layout();
            let sxv = ops::view::<f32>(OP, &s1, l1, "activation scales")?;
            let swv = ops::view::<f32>(OP, &s2, l2, "weight scales")?;
            let bias_guard = bias.as_ref().map(|b| b.storage_and_layout());
            let bias_view = match &bias_guard {
                Some((s, l)) => Some(ops::view::<T>(OP, s, l, "bias")?),
                None => None,
            };
            // SAFETY: the kernel writes every element.
            let y = unsafe { dev.alloc::<T>(rows * n)? };
            let total = rows * n;
            let cfg = LaunchConfig {
                grid_dim: (total.div_ceil(256).min(65_535 * 8) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let (rows_i, n_i) = (rows as i64, n as i32);
            let null: u64 = 0;
            let mut b = f.builder();
            b.arg(&d);
            b.arg(&sxv);
            b.arg(&swv);
            match &bias_view {
                Some(v) => b.arg(v),
                None => b.arg(&null),
            };
            b.arg(&y);
            b.arg(&rows_i);
            b.arg(&n_i);
            // SAFETY: arguments match fp8_rescale_* in kernels/fp8.cu.
            unsafe { b.launch(cfg) }.w()?;
            Ok(ops::wrap(y, &dev, (rows, n)))
        }
        match out {
            DType::F32 => go::<f32>(xq, w, bias, rows, n, k),
            DType::F16 => go::<half::f16>(xq, w, bias, rows, n, k),
            DType::BF16 => go::<half::bf16>(xq, w, bias, rows, n, k),
            dt => bail!("fp8 linear: dtype {dt:?} is not supported (f32, f16, bf16)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_table_is_the_format() {
        assert_eq!(e4m3_decode(0x00), 0.0);
        assert_eq!(e4m3_decode(0x01), 2f32.powi(-9)); // smallest subnormal
        assert_eq!(e4m3_decode(0x08), 2f32.powi(-6)); // smallest normal
        assert_eq!(e4m3_decode(0x38), 1.0);
        assert_eq!(e4m3_decode(0x7e), 448.0);
        assert_eq!(e4m3_decode(0xbe), -1.75);
        assert!(e4m3_decode(0x7f).is_nan() && e4m3_decode(0xff).is_nan());
    }

    #[test]
    fn encode_rounds_to_the_nearest_code_ties_to_even() {
        // Every finite code encodes to itself.
        for b in (0..=0x7eu8).chain(0x80..=0xfe) {
            let v = e4m3_decode(b);
            let want = if v == 0.0 && b == 0x80 { 0x80 } else { b };
            assert_eq!(e4m3_encode(v), want, "{b:#x} ({v})");
        }
        // Midpoints go to the even mantissa; just off them to the nearer side.
        for b in 0..0x7eu8 {
            let (lo, hi) = (e4m3_decode(b), e4m3_decode(b + 1));
            let mid = (lo + hi) / 2.0;
            let even = if b % 2 == 0 { b } else { b + 1 };
            assert_eq!(e4m3_encode(mid), even, "midpoint of {b:#x}");
            assert_eq!(e4m3_encode(mid - (hi - lo) * 0.01), b);
            assert_eq!(e4m3_encode(mid + (hi - lo) * 0.01), b + 1);
        }
        assert_eq!(e4m3_encode(1e6), 0x7e);
        assert_eq!(e4m3_encode(-500.0), 0xfe);
        assert_eq!(e4m3_encode(f32::NAN), 0x7f);
    }

    #[test]
    fn rows_quantize_within_half_a_step_and_zero_rows_stay_zero() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 32), &dev)?;
        let x = Tensor::cat(&[x, Tensor::zeros((1, 32), DType::F32, &dev)?], 0)?;
        let r = quantize_rows(&x)?;
        let back = r.dequantize(DType::F32)?;
        let xs = x.to_vec2::<f32>()?;
        let bs = back.to_vec2::<f32>()?;
        let scales = r.scale.to_vec1::<f32>()?;
        for (row, (xr, br)) in xs.iter().zip(&bs).enumerate() {
            let amax = xr.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in xr.iter().zip(br) {
                // 3 mantissa bits: relative error at most 1/16 (normals) or half a subnormal step.
                let tol = (a.abs() / 16.0).max(scales[row] * 2f32.powi(-10)) * 1.0001;
                assert!((a - b).abs() <= tol, "row {row}: {a} -> {b}");
            }
            if amax > 0.0 {
                let largest = br.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!((largest - amax).abs() <= amax * 1e-6, "{largest} vs {amax}");
            } else {
                assert_eq!(scales[row], 1.0);
                assert!(br.iter().all(|&v| v == 0.0));
            }
        }
        Ok(())
    }

    #[test]
    fn linear_is_the_product_of_the_quantized_operands() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (5, 48), &dev)?;
        let w = Tensor::randn(0f32, 0.1, (16, 48), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 16, &dev)?;
        let wq = quantize_rows(&w)?;
        let y = linear(&x, &wq, Some(&b))?;
        // f64 reference over the dequantized operands.
        let xd = quantize_rows(&x)?
            .dequantize(DType::F32)?
            .to_vec2::<f32>()?;
        let wd = wq.dequantize(DType::F32)?.to_vec2::<f32>()?;
        let bv = b.to_vec1::<f32>()?;
        let yv = y.to_vec2::<f32>()?;
        for (r, xr) in xd.iter().enumerate() {
            for (o, wr) in wd.iter().enumerate() {
                let want: f64 = xr
                    .iter()
                    .zip(wr)
                    .map(|(&a, &c)| a as f64 * c as f64)
                    .sum::<f64>()
                    + bv[o] as f64;
                assert!(
                    (yv[r][o] as f64 - want).abs() < 1e-4,
                    "[{r},{o}] {} vs {want}",
                    yv[r][o]
                );
            }
        }
        // And close to the float product (e4m3 keeps ~2 significant digits).
        let exact = x.matmul(&w.t()?)?.broadcast_add(&b)?;
        let err = (y - &exact)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = exact.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 0.08 * scale, "{err} vs {scale}");
        // Pre-quantized activations give the same product.
        let pre = linear_prequantized(&quantize_rows(&x)?, &wq, Some(&b), DType::F32)?;
        assert_eq!(pre.to_vec2::<f32>()?, yv);
        assert!(linear(&x, &quantize_rows(&w.narrow(1, 0, 32)?)?, None).is_err());
        assert!(quantize_rows(&Tensor::zeros((2, 20), DType::F32, &dev)?).is_err());
        Ok(())
    }
}
