//! Block-sparse attention (FlashVSR LCSA, spec section 5.4 step 5).
//!
//! q `[heads, q_tokens, head_dim]`, k/v `[heads, k_tokens, head_dim]` in window order, token
//! counts multiples of [`BLOCK_TOKENS`]; `block_mask` u8 `[heads, q_tokens/128, k_tokens/128]`
//! (non-zero = attend). Each query block gets an exact softmax over the union of its selected
//! key blocks; a query block with no selected key block outputs exactly 0 (as upstream's
//! kernel does, unlike a dense masked softmax which gives NaN there).
//!
//! On CUDA this is our kernel (`kernels/block_sparse_attn.cu`); on every other device a
//! gather of the selected key blocks and two candle matmuls per (head, query block), the path
//! the upstream fixtures were matched with.

use candle_core::{
    bail, CpuStorage, CustomOp3, DType, Device, IndexOp, Layout, Result, Shape, Tensor,
};

/// Tokens per attention block: one 2x8x8 LCSA window. The one definition of the block size.
pub const BLOCK_TOKENS: usize = 128;

/// Key blocks the TMA kernel ([`KernelVariant::HopperTma`]) can list per query block.
pub const TMA_MAX_KEY_BLOCKS: usize = 1024;

/// Head dims the CUDA kernels are instantiated for.
pub const HEAD_DIMS: [usize; 3] = [32, 64, 128];

/// Which CUDA kernel to run. The CPU path ignores this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelVariant {
    /// [`KernelVariant::TensorCore`] for bf16/f16 when the inputs are suitably aligned, the
    /// scalar kernel otherwise.
    #[default]
    Auto,
    /// Plain f32 FMAs, every dtype.
    Scalar,
    /// `mma.sync` tensor cores with a cp.async double-buffered K/V pipeline, bf16/f16 only.
    TensorCore,
    /// The first, unpipelined tensor-core kernel (kept as a cross-check), bf16/f16 only.
    TensorCoreSimple,
    /// Hopper warpgroup MMA (`wgmma`, sm_90a PTX), bf16/f16 with head_dim 128 only: needs a
    /// compute capability 9.0 GPU and a build with `CUDA_COMPUTE_CAP=90`. Key blocks in two
    /// 64-key halves, softmax of one overlapping the tensor cores' work on the other; outputs
    /// bit-identical to [`KernelVariant::TensorCore`]'s. K/V tiles loaded by the compute warps
    /// (cp.async, two stages).
    Hopper,
    /// [`KernelVariant::Hopper`]'s math with the tiles brought in by the Tensor Memory
    /// Accelerator: a producer warpgroup fills a 3-stage K/V ring guarded by mbarriers, the two
    /// compute warpgroups never wait at a CTA barrier. Same requirements, plus at most
    /// 1024 key blocks; bit-identical outputs.
    HopperTma,
}

#[cfg(feature = "cuda")]
impl KernelVariant {
    /// What [`KernelVariant::Auto`] picks where the Hopper kernels run:
    /// [`KernelVariant::HopperTma`], or for side-by-side measurements in one binary the
    /// kernel `FLASHVSR_BSA_KERNEL` names (`mma2`: [`KernelVariant::TensorCore`], `wgmma`:
    /// [`KernelVariant::Hopper`]). Read once per process: this is on every attention call.
    fn auto_on_hopper() -> Self {
        static PICK: std::sync::OnceLock<KernelVariant> = std::sync::OnceLock::new();
        *PICK.get_or_init(|| match std::env::var("FLASHVSR_BSA_KERNEL").as_deref() {
            Ok("mma2") => Self::TensorCore,
            Ok("wgmma") => Self::Hopper,
            _ => Self::HopperTma,
        })
    }
}

/// Layout of the attention output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputLayout {
    /// `[heads, q_tokens, head_dim]`, like q.
    #[default]
    HeadsMajor,
    /// `[q_tokens, heads·head_dim]`: the heads of a token side by side, ready for the output
    /// projection (saves the transpose copy).
    TokenMajor,
}

/// Block-sparse attention with a fixed softmax scale.
#[derive(Debug, Clone, Copy)]
pub struct BlockSparseAttention {
    pub scale: f32,
    pub variant: KernelVariant,
    pub layout: OutputLayout,
}

/// `softmax(q kᵀ · scale) v` restricted to the key blocks `block_mask` selects; see the module doc.
pub fn block_sparse_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    block_mask: &Tensor,
    scale: f32,
) -> Result<Tensor> {
    BlockSparseAttention::new(scale).forward(q, k, v, block_mask)
}

impl BlockSparseAttention {
    pub fn new(scale: f32) -> Self {
        Self {
            scale,
            variant: KernelVariant::Auto,
            layout: OutputLayout::HeadsMajor,
        }
    }

    pub fn with_variant(self, variant: KernelVariant) -> Self {
        Self { variant, ..self }
    }

    pub fn with_layout(self, layout: OutputLayout) -> Self {
        Self { layout, ..self }
    }

    pub fn forward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        block_mask: &Tensor,
    ) -> Result<Tensor> {
        let _span = tracing::span!(tracing::Level::TRACE, "block-sparse-attn").entered();
        if !self.scale.is_finite() {
            bail!("block_sparse_attention: scale {} is not finite", self.scale)
        }
        let dims = Dims::check(q, k, v, block_mask)?;
        let token_major = |t: Tensor| -> Result<Tensor> {
            t.transpose(0, 1)?
                .contiguous()?
                .reshape((dims.q_tokens, dims.heads * dims.head_dim))
        };
        if q.elem_count() == 0 || dims.k_tokens == 0 {
            // No query, or nothing to attend: every query block is empty, hence 0.
            let zeros = Tensor::zeros(q.shape(), q.dtype(), q.device())?;
            return match self.layout {
                OutputLayout::HeadsMajor => Ok(zeros),
                OutputLayout::TokenMajor => token_major(zeros),
            };
        }
        if !q.device().is_cuda() {
            let out = gathered(q, k, v, block_mask, dims, self.scale)?;
            return match self.layout {
                OutputLayout::HeadsMajor => Ok(out),
                OutputLayout::TokenMajor => token_major(out),
            };
        }
        let op = BlockSparseOp {
            mask: block_mask.contiguous()?,
            dims,
            scale: self.scale,
            variant: self.variant,
            layout: self.layout,
        };
        q.contiguous()?
            .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)
    }
}

#[derive(Debug, Clone, Copy)]
struct Dims {
    heads: usize,
    q_tokens: usize,
    k_tokens: usize,
    head_dim: usize,
}

impl Dims {
    fn q_blocks(&self) -> usize {
        self.q_tokens / BLOCK_TOKENS
    }
    fn k_blocks(&self) -> usize {
        self.k_tokens / BLOCK_TOKENS
    }

    fn check(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Self> {
        let name = "block_sparse_attention";
        let (heads, q_tokens, head_dim) = match q.dims() {
            &[h, t, d] => (h, t, d),
            d => bail!("{name}: q must be [heads, q_tokens, head_dim], got {d:?}"),
        };
        let k_tokens = match k.dims() {
            &[h, t, d] if h == heads && d == head_dim => t,
            d => bail!("{name}: k must be [{heads}, k_tokens, {head_dim}] like q, got {d:?}"),
        };
        if v.dims() != k.dims() {
            bail!(
                "{name}: v {:?} must have k's shape {:?}",
                v.dims(),
                k.dims()
            )
        }
        if !HEAD_DIMS.contains(&head_dim) {
            bail!("{name}: head_dim {head_dim} is not one of {HEAD_DIMS:?}")
        }
        if q_tokens % BLOCK_TOKENS != 0 || k_tokens % BLOCK_TOKENS != 0 {
            bail!(
                "{name}: q_tokens {q_tokens} and k_tokens {k_tokens} must be multiples of {BLOCK_TOKENS}"
            )
        }
        if q_tokens > i32::MAX as usize || k_tokens > i32::MAX as usize || heads > 65_535 {
            bail!("{name}: too large (heads {heads}, q_tokens {q_tokens}, k_tokens {k_tokens})")
        }
        let dtype = q.dtype();
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            bail!("{name}: dtype {dtype:?} is not supported (f32, f16, bf16)")
        }
        if k.dtype() != dtype || v.dtype() != dtype {
            bail!(
                "{name}: q, k, v dtypes differ ({dtype:?}, {:?}, {:?})",
                k.dtype(),
                v.dtype()
            )
        }
        let want = [heads, q_tokens / BLOCK_TOKENS, k_tokens / BLOCK_TOKENS];
        if mask.dims() != want {
            bail!("{name}: block_mask must be {want:?}, got {:?}", mask.dims())
        }
        if mask.dtype() != DType::U8 {
            bail!("{name}: block_mask must be u8, got {:?}", mask.dtype())
        }
        for (t, what) in [(k, "k"), (v, "v"), (mask, "block_mask")] {
            if !q.device().same_device(t.device()) {
                bail!(
                    "{name}: {what} is on {:?}, q on {:?}",
                    t.device(),
                    q.device()
                )
            }
        }
        Ok(Self {
            heads,
            q_tokens,
            k_tokens,
            head_dim,
        })
    }
}

/// The CUDA custom op: q, k, v are the operands; the mask travels inside the op.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct BlockSparseOp {
    mask: Tensor,
    dims: Dims,
    scale: f32,
    variant: KernelVariant,
    layout: OutputLayout,
}

/// Every device but CUDA: per (head, query block) the selected key blocks gathered, f32 scores
/// and softmax, the probabilities rounded to the input dtype, then `P·V`; an empty query block
/// is exactly 0. Never a dense token×token mask.
fn gathered(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    block_mask: &Tensor,
    dims: Dims,
    scale: f32,
) -> Result<Tensor> {
    let Dims {
        heads,
        head_dim: hd,
        ..
    } = dims;
    let (nq, nk) = (dims.q_blocks(), dims.k_blocks());
    let bs = BLOCK_TOKENS;
    let mask = block_mask
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<u8>()?;
    let dtype = q.dtype();
    let kb = k.reshape((heads, nk, bs, hd))?;
    let vb = v.reshape((heads, nk, bs, hd))?;
    let zeros = Tensor::zeros((bs, hd), dtype, q.device())?;
    let mut per_head = Vec::with_capacity(heads);
    for h in 0..heads {
        let (kh, vh) = (kb.i(h)?, vb.i(h)?);
        let qh = q.i(h)?;
        let mut blocks = Vec::with_capacity(nq);
        for i in 0..nq {
            let row = &mask[(h * nq + i) * nk..(h * nq + i + 1) * nk];
            let sel: Vec<u32> = (0..nk as u32).filter(|&j| row[j as usize] != 0).collect();
            if sel.is_empty() {
                blocks.push(zeros.clone());
                continue;
            }
            let n = sel.len();
            let idx = Tensor::new(sel.as_slice(), q.device())?;
            let ks = kh.index_select(&idx, 0)?.reshape((n * bs, hd))?;
            let vs = vh.index_select(&idx, 0)?.reshape((n * bs, hd))?;
            let qi = qh.narrow(0, i * bs, bs)?;
            let s = (qi.matmul(&ks.t()?)?.to_dtype(DType::F32)? * scale as f64)?;
            let p = candle_nn::ops::softmax_last_dim(&s)?.to_dtype(dtype)?;
            blocks.push(p.matmul(&vs)?);
        }
        per_head.push(Tensor::cat(&blocks, 0)?);
    }
    Tensor::stack(&per_head, 0)
}

impl CustomOp3 for BlockSparseOp {
    fn name(&self) -> &'static str {
        "block-sparse-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        // `BlockSparseAttention::forward` runs `gathered` off CUDA; the op is CUDA only.
        bail!("block_sparse_attention: the custom op runs on CUDA only")
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
        let args = cuda::Operands {
            q: (s1, l1),
            k: (s2, l2),
            v: (s3, l3),
        };
        let out = match s1.dtype() {
            DType::F32 => cuda::launch::<f32>(self, args, "f32")?,
            DType::F16 => cuda::launch::<half::f16>(self, args, "f16")?,
            DType::BF16 => cuda::launch::<half::bf16>(self, args, "bf16")?,
            dt => bail!("block_sparse_attention: dtype {dt:?} is not supported"),
        };
        let d = self.dims;
        let shape = match self.layout {
            OutputLayout::HeadsMajor => l1.shape().clone(),
            OutputLayout::TokenMajor => Shape::from((d.q_tokens, d.heads * d.head_dim)),
        };
        Ok((out, shape))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{BlockSparseOp, KernelVariant, OutputLayout, BLOCK_TOKENS};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum as CUfunction_attribute;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{bail, CudaStorage, Layout, Result, Storage};

    use super::TMA_MAX_KEY_BLOCKS;
    use candle_core::cuda_backend::cudarc::driver::sys;
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;

    const MODULE: &str = "flashvsr_block_sparse_attn";
    /// The TMA kernel's block: two compute warpgroups and a producer warpgroup.
    const TMA_THREADS: u32 = 256 + 128;

    /// A `CUtensorMap` (the driver's 128-byte TMA descriptor), passed to the kernel by value.
    #[repr(C, align(64))]
    struct TileMap(sys::CUtensorMap);
    // SAFETY: plain bytes, laid out as the kernel's `TensorMap` parameter.
    unsafe impl DeviceRepr for TileMap {}

    /// The TMA descriptor of a `[rows, 128]` half-precision matrix at `ptr`, in boxes of
    /// 128 rows x 8 columns (16 bytes): one box is one column of a tile's core matrices.
    fn tile_map(ptr: sys::CUdeviceptr, rows: usize, bf16: bool) -> Result<TileMap> {
        let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
        let dtype = if bf16 {
            sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
        } else {
            sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16
        };
        let dims: [u64; 2] = [128, rows as u64];
        let strides: [u64; 1] = [256];
        let boxes: [u32; 2] = [8, BLOCK_TOKENS as u32];
        let element_strides: [u32; 2] = [1, 1];
        // SAFETY: all arrays have the rank's length; the driver only writes `map`.
        let r = unsafe {
            sys::cuTensorMapEncodeTiled(
                map.as_mut_ptr(),
                dtype,
                2,
                ptr as *mut std::ffi::c_void,
                dims.as_ptr(),
                strides.as_ptr(),
                boxes.as_ptr(),
                element_strides.as_ptr(),
                sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE,
                sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        };
        if r != sys::CUresult::CUDA_SUCCESS {
            bail!("block_sparse_attention: cuTensorMapEncodeTiled failed ({r:?}) for a [{rows}, 128] operand")
        }
        // SAFETY: initialised by the successful call.
        Ok(TileMap(unsafe { map.assume_init() }))
    }
    const MODULE_SM90A: &str = "flashvsr_block_sparse_attn_sm90a";
    const THREADS: u32 = 256;

    pub(super) struct Operands<'a> {
        pub q: (&'a CudaStorage, &'a Layout),
        pub k: (&'a CudaStorage, &'a Layout),
        pub v: (&'a CudaStorage, &'a Layout),
    }

    fn offset(layout: &Layout, what: &str) -> Result<usize> {
        crate::contiguous_start(layout, "block_sparse_attention", what)
    }

    pub(super) fn launch<T: CudaDType + DeviceRepr>(
        op: &BlockSparseOp,
        args: Operands<'_>,
        dtype_name: &str,
    ) -> Result<CudaStorage> {
        let dims = op.dims;
        let dev = args.q.0.device().clone();
        let (q_off, k_off, v_off) = (
            offset(args.q.1, "q")?,
            offset(args.k.1, "k")?,
            offset(args.v.1, "v")?,
        );
        // The tensor-core kernels load q as 4-byte pairs (the Hopper one as 16-byte vectors)
        // and k/v as 16-byte vectors.
        let aligned = q_off % 2 == 0 && k_off % 8 == 0 && v_off % 8 == 0;
        let hopper_aligned = aligned && q_off % 8 == 0;
        let half_type = dtype_name != "f32";
        let tensor_core = matches!(
            op.variant,
            KernelVariant::TensorCore
                | KernelVariant::TensorCoreSimple
                | KernelVariant::Hopper
                | KernelVariant::HopperTma
        );
        if tensor_core && !half_type {
            bail!("block_sparse_attention: the tensor-core kernels need bf16 or f16, got f32")
        }
        if tensor_core && !aligned {
            bail!("block_sparse_attention: the tensor-core kernels need k/v offsets that are multiples of 8 elements")
        }
        let gpu = crate::gpu_caps::compute_capability(&candle_core::Device::Cuda(dev.clone()))?;
        let ptx = crate::gpu_caps::ptx_arch();
        let tensor_cores =
            matches!((gpu, ptx), (Some(g), Some(p)) if crate::gpu_caps::tensor_cores(g, p));
        if let (Some(g), Some(p)) = (gpu, ptx) {
            let dtype = if dtype_name == "bf16" {
                candle_core::DType::BF16
            } else {
                candle_core::DType::F16
            };
            crate::gpu_caps::check(g, p, dtype)?;
        }
        if tensor_core && !tensor_cores {
            bail!("block_sparse_attention: the tensor-core kernels need an sm_80+ GPU and kernels built for sm_80+")
        }
        // The sm_90a module exists only in builds for compute capability 9.0, and its PTX
        // loads only on such a GPU.
        let hopper = gpu == Some(90)
            && !crate::ptx::BLOCK_SPARSE_ATTN_SM90A.is_empty()
            && half_type
            && dims.head_dim == 128;
        let wants_hopper = matches!(op.variant, KernelVariant::Hopper | KernelVariant::HopperTma);
        if wants_hopper && !hopper {
            bail!("block_sparse_attention: the Hopper kernel needs a compute capability 9.0 GPU, a build with CUDA_COMPUTE_CAP=90, bf16/f16 and head_dim 128")
        }
        if wants_hopper && !hopper_aligned {
            bail!("block_sparse_attention: the Hopper kernel needs q/k/v offsets that are multiples of 8 elements")
        }
        let tma_fits = dims.k_tokens / BLOCK_TOKENS <= TMA_MAX_KEY_BLOCKS;
        if op.variant == KernelVariant::HopperTma && !tma_fits {
            bail!("block_sparse_attention: the TMA kernel lists at most {TMA_MAX_KEY_BLOCKS} key blocks, got {}", dims.k_tokens / BLOCK_TOKENS)
        }
        let variant = match op.variant {
            KernelVariant::Auto if hopper && hopper_aligned => {
                match KernelVariant::auto_on_hopper() {
                    KernelVariant::HopperTma if !tma_fits => KernelVariant::Hopper,
                    v => v,
                }
            }
            v => v,
        };
        let kernel = match variant {
            KernelVariant::Auto if half_type && aligned && tensor_cores => "mma2",
            KernelVariant::Auto | KernelVariant::Scalar => "scalar",
            KernelVariant::TensorCore => "mma2",
            KernelVariant::TensorCoreSimple => "mma",
            KernelVariant::Hopper => "wgmma",
            KernelVariant::HopperTma => "tma",
        };
        let dyn_smem = match kernel {
            // A double buffer of K and V chunks: 2 x 2 x 64 keys x (D + 8) halves.
            "mma2" => (2 * 2 * 64 * (dims.head_dim + 8) * std::mem::size_of::<T>()) as u32,
            // Q plus double-buffered K and V tiles: 5 x 128 x 128 halves.
            "wgmma" => (5 * BLOCK_TOKENS * 128 * std::mem::size_of::<T>()) as u32,
            // Q, 3 stages of K and V tiles, 128 bytes of mbarriers, the key-block list (u16).
            "tma" => {
                (7 * BLOCK_TOKENS * 128 * std::mem::size_of::<T>() + 128 + 2 * TMA_MAX_KEY_BLOCKS)
                    as u32
            }
            _ => 0,
        };
        let q = args.q.0.as_cuda_slice::<T>()?.slice(q_off..);
        let k = args.k.0.as_cuda_slice::<T>()?.slice(k_off..);
        let v = args.v.0.as_cuda_slice::<T>()?.slice(v_off..);

        let (mask_storage, mask_layout) = op.mask.storage_and_layout();
        let mask = match &*mask_storage {
            Storage::Cuda(s) => s.as_cuda_slice::<u8>()?,
            _ => bail!("block_sparse_attention: block_mask must be on the CUDA device of q"),
        };
        let mask = mask.slice(offset(mask_layout, "block_mask")?..);

        let func = if kernel == "wgmma" || kernel == "tma" {
            let name = format!("bsa_{kernel}_{dtype_name}_d128");
            dev.get_or_load_custom_func(&name, MODULE_SM90A, crate::ptx::BLOCK_SPARSE_ATTN_SM90A)?
        } else {
            let name = format!("bsa_{kernel}_{dtype_name}_d{}", dims.head_dim);
            dev.get_or_load_custom_func(&name, MODULE, crate::ptx::BLOCK_SPARSE_ATTN)?
        };
        if dyn_smem > 48 * 1024 {
            func.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                dyn_smem as i32,
            )
            .w()?;
        }
        // SAFETY: every element is written by the kernel (empty query blocks write 0).
        let out = unsafe { dev.alloc::<T>(dims.heads * dims.q_tokens * dims.head_dim)? };
        let cfg = LaunchConfig {
            grid_dim: ((dims.q_tokens / BLOCK_TOKENS) as u32, dims.heads as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: dyn_smem,
        };
        let (q_tokens, k_tokens) = (dims.q_tokens as i32, dims.k_tokens as i32);
        let scale_log2 = op.scale * std::f32::consts::LOG2_E;
        let (hd, heads) = (dims.head_dim as i64, dims.heads as i64);
        let (out_head_stride, out_row_stride) = match op.layout {
            OutputLayout::HeadsMajor => (dims.q_tokens as i64 * hd, hd),
            OutputLayout::TokenMajor => (hd, heads * hd),
        };
        // The TMA kernel takes q/k/v as tensor maps (built here, each holding its operand's
        // address: the guards keep the operands ordered on this stream until the launch is
        // queued) and a block with a producer warpgroup; the others take plain pointers.
        let stream = dev.cuda_stream();
        let (maps, _guards);
        let mut cfg = cfg;
        let mut builder = func.builder();
        if kernel == "tma" {
            let (q_ptr, q_guard) = q.device_ptr(&stream);
            let (k_ptr, k_guard) = k.device_ptr(&stream);
            let (v_ptr, v_guard) = v.device_ptr(&stream);
            _guards = Some((q_guard, k_guard, v_guard));
            let bf16 = dtype_name == "bf16";
            maps = [
                tile_map(q_ptr, dims.heads * dims.q_tokens, bf16)?,
                tile_map(k_ptr, dims.heads * dims.k_tokens, bf16)?,
                tile_map(v_ptr, dims.heads * dims.k_tokens, bf16)?,
            ];
            cfg.block_dim = (TMA_THREADS, 1, 1);
            builder.arg(&maps[0]);
            builder.arg(&maps[1]);
            builder.arg(&maps[2]);
        } else {
            _guards = None;
            builder.arg(&q);
            builder.arg(&k);
            builder.arg(&v);
        }
        builder.arg(&mask);
        builder.arg(&out);
        builder.arg(&q_tokens);
        builder.arg(&k_tokens);
        builder.arg(&scale_log2);
        builder.arg(&out_head_stride);
        builder.arg(&out_row_stride);
        // SAFETY: the argument list matches the kernels' signatures (kernels/block_sparse_attn.cu,
        // and bsa_tma_* in kernels/block_sparse_attn_sm90a.cu: the same after q/k/v); shapes were
        // checked in `Dims::check`, and the maps cover exactly q/k/v.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(T::wrap_cuda_slice(out, dev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    #[test]
    fn empty_rows_output_exact_zero() -> Result<()> {
        let dev = Device::Cpu;
        let (heads, hd, bs) = (2, 32, BLOCK_TOKENS);
        let q = Tensor::randn(0f32, 1.0, (heads, 2 * bs, hd), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (heads, 3 * bs, hd), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (heads, 3 * bs, hd), &dev)?;
        // head 0: q block 0 sees k block 2, q block 1 sees nothing; head 1: all.
        let mut data = vec![0u8; heads * 2 * 3];
        data[2] = 1;
        for x in &mut data[6..] {
            *x = 1;
        }
        let mask = Tensor::from_vec(data, (heads, 2, 3), &dev)?;
        let out = block_sparse_attention(&q, &k, &v, &mask, 0.5)?;
        let empty = out.i((0, bs..2 * bs))?.flatten_all()?.to_vec1::<f32>()?;
        assert!(empty.iter().all(|&x| x == 0.0));
        // Dense reference for the rows that do attend.
        let q0 = q.i((0, 0..bs))?;
        let k0 = k.i((0, 2 * bs..3 * bs))?;
        let v0 = v.i((0, 2 * bs..3 * bs))?;
        let want = candle_nn::ops::softmax_last_dim(&(q0.matmul(&k0.t()?)? * 0.5)?)?.matmul(&v0)?;
        assert!(max_abs_diff(&out.i((0, 0..bs))?, &want)? < 1e-5);
        let want1 = candle_nn::ops::softmax_last_dim(&(q.i(1)?.matmul(&k.i(1)?.t()?)? * 0.5)?)?
            .matmul(&v.i(1)?)?;
        assert!(max_abs_diff(&out.i(1)?, &want1)? < 1e-5);
        Ok(())
    }
}
