//! Stride-1 `k×k` convolution on channels-last (NHWC) frames as one implicit GEMM on tensor
//! cores (`kernels/implicit_conv.cu`), with its input gathered by addressing instead of copies:
//!
//! * up to two [`Source`]s concatenated along channels (the MemBlock's `cat([x, past])`);
//! * a source read one frame back, frame 0 reading a stored memory frame or zeros
//!   ([`Source::previous`], the MemBlock's `past`);
//! * a source whose stored frames each pack several output frames in channel blocks
//!   ([`Source::grouped`], TGrow's channel-block → time reshape);
//! * nearest ×2 upsampling of every source (the `upsample` argument).
//!
//! The epilogue adds the bias, a residual (same shape as the output) and applies ReLU in f32
//! before the one rounding to the output dtype (the input dtype). GEMM view: M = output pixels,
//! N = `C_out`, K = taps × channels, tap-major, so a K slice is contiguous channels of one tap.
//! Weights are packed once ([`PackedConv::new`]) to `[C_out][kH][kW][K_tap]`, `K_tap` = `C_in`
//! rounded up to [`K_ALIGN`] with zeros.
//!
//! The CUDA kernel takes f16/bf16 with f32 accumulation. On every other device (and for f32)
//! [`conv2d_nhwc`] builds the same logical input with Candle ops and runs Candle's conv2d in
//! f32, so the API works everywhere and the CPU path is the reference of the addressing.

use candle_core::{DType, Result, Tensor};

/// Channels per tap are padded to a multiple of this (the widest K slice of the tiles).
pub const K_ALIGN: usize = 64;

/// Input and output channel counts must be multiples of this (one 16-byte load of halves).
pub const CHANNEL_ALIGN: usize = 8;

/// A conv's weight packed for the implicit GEMM, and its bias in f32.
#[derive(Debug, Clone)]
pub struct PackedConv {
    /// `[C_out, kH·kW·K_tap]` in the compute dtype.
    weight: Tensor,
    bias: Option<Tensor>,
    cout: usize,
    cin: usize,
    kh: usize,
    kw: usize,
    k_tap: usize,
}

impl PackedConv {
    /// Packs `weight` `[C_out, C_in, kH, kW]` (odd square kernels, "same" padding) and `bias`
    /// `[C_out]` for inputs of `dtype`.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, dtype: DType) -> Result<Self> {
        let (cout, cin, kh, kw) = weight.dims4()?;
        if kh != kw || kh % 2 == 0 {
            candle_core::bail!(
                "implicit conv: kernel {kh}x{kw} is not odd and square (weight {:?})",
                weight.dims()
            )
        }
        if let Some(b) = bias {
            if b.elem_count() != cout {
                candle_core::bail!(
                    "implicit conv: bias has {} elements, weight {:?} has {cout} outputs",
                    b.elem_count(),
                    weight.dims()
                )
            }
        }
        let k_tap = cin.div_ceil(K_ALIGN) * K_ALIGN;
        let packed = weight
            .to_dtype(dtype)?
            .permute((0, 2, 3, 1))?
            .pad_with_zeros(3, 0, k_tap - cin)?
            .contiguous()?
            .reshape((cout, kh * kw * k_tap))?;
        let bias = bias
            .map(|b| b.to_dtype(DType::F32)?.flatten_all()?.contiguous())
            .transpose()?;
        Ok(Self {
            weight: packed,
            bias,
            cout,
            cin,
            kh,
            kw,
            k_tap,
        })
    }

    pub fn out_channels(&self) -> usize {
        self.cout
    }

    pub fn in_channels(&self) -> usize {
        self.cin
    }

    pub fn kernel_size(&self) -> usize {
        self.kh
    }

    pub fn dtype(&self) -> DType {
        self.weight.dtype()
    }

    /// The original `[C_out, C_in, kH, kW]` weight (for the Candle path).
    fn unpacked(&self) -> Result<Tensor> {
        self.weight
            .reshape((self.cout, self.kh, self.kw, self.k_tap))?
            .narrow(3, 0, self.cin)?
            .permute((0, 3, 1, 2))
    }
}

/// One input of the convolution: an NHWC tensor `[F, h, w, C]`.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub tensor: &'a Tensor,
    /// Output frame n reads frame n − 1; frame 0 reads `memory` (`[1, h, w, C]`), or zeros.
    pub previous_frame: bool,
    pub memory: Option<&'a Tensor>,
    /// Output frames per stored frame: frame n is channel block `n % g` (of `C / g` channels)
    /// of stored frame `n / g`.
    pub frames_per_stored: usize,
}

impl<'a> Source<'a> {
    pub fn new(tensor: &'a Tensor) -> Self {
        Self {
            tensor,
            previous_frame: false,
            memory: None,
            frames_per_stored: 1,
        }
    }

    /// `tensor` one frame back, `memory` (or zeros) before its first frame.
    pub fn previous(tensor: &'a Tensor, memory: Option<&'a Tensor>) -> Self {
        Self {
            previous_frame: true,
            memory,
            ..Self::new(tensor)
        }
    }

    /// `tensor` `[F, h, w, g·C]` read as `[F·g, h, w, C]`.
    pub fn grouped(tensor: &'a Tensor, frames_per_stored: usize) -> Self {
        Self {
            frames_per_stored,
            ..Self::new(tensor)
        }
    }

    fn dims(&self) -> Result<(usize, usize, usize, usize)> {
        let (f, h, w, c) = self.tensor.dims4()?;
        let g = self.frames_per_stored;
        if g == 0 || c % g != 0 {
            candle_core::bail!(
                "implicit conv: source {:?} cannot hold {g} frames per stored frame",
                self.tensor.dims()
            )
        }
        Ok((f * g, h, w, c / g))
    }
}

/// What is applied to the f32 accumulator before rounding, in this order.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConvEpilogue<'a> {
    /// Added to the output, `[F, H, W, C_out]` in the output dtype.
    pub residual: Option<&'a Tensor>,
    pub relu: bool,
}

/// Output tile shapes the CUDA kernel is built for (`m` pixels × `n` output channels × `k`
/// slice, pipeline stages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tile {
    M128N128K32S4,
    M256N128K32S3,
    M128N128K64S3,
    M128N64K32S4,
    M128N16K32S4,
}

impl Tile {
    pub const ALL: [Tile; 5] = [
        Tile::M128N128K32S4,
        Tile::M256N128K32S3,
        Tile::M128N128K64S3,
        Tile::M128N64K32S4,
        Tile::M128N16K32S4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tile::M128N128K32S4 => "m128n128k32s4",
            Tile::M256N128K32S3 => "m256n128k32s3",
            Tile::M128N128K64S3 => "m128n128k64s3",
            Tile::M128N64K32S4 => "m128n64k32s4",
            Tile::M128N16K32S4 => "m128n16k32s4",
        }
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    /// (BM, BN, BK, stages, threads); must match `CONV_CONFIGS` in the .cu file.
    fn shape(self) -> (usize, usize, usize, usize, usize) {
        match self {
            Tile::M128N128K32S4 => (128, 128, 32, 4, 256),
            Tile::M256N128K32S3 => (256, 128, 32, 3, 256),
            Tile::M128N128K64S3 => (128, 128, 64, 3, 256),
            Tile::M128N64K32S4 => (128, 64, 32, 4, 256),
            Tile::M128N16K32S4 => (128, 16, 32, 4, 128),
        }
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    /// Dynamic shared memory of one CTA: the cp.async ring of A and B slices (rows padded by
    /// 8 halves).
    fn smem_bytes(self) -> usize {
        let (bm, bn, bk, stages, _) = self.shape();
        stages * (bm + bn) * (bk + 8) * 2
    }

    /// The default tile for `cout` output channels.
    pub fn for_out_channels(cout: usize) -> Self {
        if cout <= 16 {
            Tile::M128N16K32S4
        } else if cout <= 64 {
            Tile::M128N64K32S4
        } else {
            Tile::M128N128K32S4
        }
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    /// `FLASHVSR_CONV_TILE=<name>` overrides the default (for benchmarks).
    fn from_env() -> Option<Self> {
        let v = std::env::var("FLASHVSR_CONV_TILE").ok()?;
        Tile::ALL.into_iter().find(|t| t.name() == v)
    }
}

/// Convolves the channel concatenation of `sources` (each optionally upsampled ×2 nearest)
/// with `conv`, stride 1, "same" zero padding: NHWC `[F, H, W, C_out]` in the sources' dtype.
pub fn conv2d_nhwc(
    conv: &PackedConv,
    sources: &[Source],
    upsample: bool,
    epilogue: ConvEpilogue,
) -> Result<Tensor> {
    conv2d_nhwc_with_tile(conv, sources, upsample, epilogue, None)
}

/// [`conv2d_nhwc`] with a chosen CUDA tile (`None`: the default for the shape).
pub fn conv2d_nhwc_with_tile(
    conv: &PackedConv,
    sources: &[Source],
    upsample: bool,
    epilogue: ConvEpilogue,
    tile: Option<Tile>,
) -> Result<Tensor> {
    let shape = Shape::check(conv, sources, upsample, &epilogue)?;
    let dtype = sources[0].tensor.dtype();
    let use_kernel = sources[0].tensor.device().is_cuda()
        && matches!(dtype, DType::F16 | DType::BF16)
        && kernel_layout_ok(conv, sources);
    if !use_kernel {
        return candle_path(conv, sources, upsample, epilogue, &shape);
    }
    #[cfg(feature = "cuda")]
    {
        let tile = tile
            .or_else(Tile::from_env)
            .unwrap_or_else(|| Tile::for_out_channels(conv.cout));
        cuda::launch(conv, sources, upsample, epilogue, &shape, tile)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = tile;
        candle_path(conv, sources, upsample, epilogue, &shape)
    }
}

/// Whether the kernel's 16-byte loads line up: every source's channel count, stored channels
/// and start offset are multiples of [`CHANNEL_ALIGN`].
fn kernel_layout_ok(conv: &PackedConv, sources: &[Source]) -> bool {
    let aligned = |t: &Tensor| {
        t.is_contiguous()
            && t.layout().start_offset() % CHANNEL_ALIGN == 0
            && t.dim(3).is_ok_and(|c| c % CHANNEL_ALIGN == 0)
    };
    conv.cin % CHANNEL_ALIGN == 0
        && sources.iter().all(|s| {
            s.tensor
                .dim(3)
                .is_ok_and(|c| (c / s.frames_per_stored) % CHANNEL_ALIGN == 0)
                && aligned(s.tensor)
                && s.memory.is_none_or(aligned)
        })
}

/// Checked dimensions of one call.
#[derive(Debug, Clone, Copy)]
struct Shape {
    frames: usize,
    in_h: usize,
    in_w: usize,
    h: usize,
    w: usize,
}

impl Shape {
    fn check(
        conv: &PackedConv,
        sources: &[Source],
        upsample: bool,
        epilogue: &ConvEpilogue,
    ) -> Result<Self> {
        let name = "implicit conv";
        if sources.is_empty() || sources.len() > 2 {
            candle_core::bail!("{name}: takes one or two sources, got {}", sources.len())
        }
        let (frames, in_h, in_w, _) = sources[0].dims()?;
        let mut channels = 0;
        for s in sources {
            let (f, h, w, c) = s.dims()?;
            if (f, h, w) != (frames, in_h, in_w) {
                candle_core::bail!(
                    "{name}: sources disagree: {:?} ({} per stored frame) vs {frames}x{in_h}x{in_w}",
                    s.tensor.dims(),
                    s.frames_per_stored
                )
            }
            if s.tensor.dtype() != sources[0].tensor.dtype() {
                candle_core::bail!("{name}: sources have different dtypes")
            }
            if s.tensor.dtype() != conv.dtype() {
                candle_core::bail!(
                    "{name}: source dtype {:?}, weight packed for {:?}",
                    s.tensor.dtype(),
                    conv.dtype()
                )
            }
            if !s.tensor.device().same_device(conv.weight.device()) {
                candle_core::bail!("{name}: source and weight are on different devices")
            }
            if s.previous_frame && s.frames_per_stored != 1 {
                candle_core::bail!("{name}: a grouped source cannot be read one frame back")
            }
            if let Some(m) = s.memory {
                if !s.previous_frame {
                    candle_core::bail!("{name}: a memory frame needs previous_frame")
                }
                let (_, _, _, c_stored) = s.tensor.dims4()?;
                if m.dims() != [1, in_h, in_w, c_stored] || m.dtype() != s.tensor.dtype() {
                    candle_core::bail!(
                        "{name}: memory {:?} {:?} must be [1, {in_h}, {in_w}, {c_stored}] {:?}",
                        m.dims(),
                        m.dtype(),
                        s.tensor.dtype()
                    )
                }
            }
            channels += c;
        }
        if channels != conv.cin {
            candle_core::bail!(
                "{name}: sources give {channels} channels, the weight takes {}",
                conv.cin
            )
        }
        let up = if upsample { 2 } else { 1 };
        let (h, w) = (in_h * up, in_w * up);
        if frames == 0 || h == 0 || w == 0 {
            candle_core::bail!("{name}: empty input {frames}x{h}x{w}")
        }
        if frames * h * w > i32::MAX as usize {
            candle_core::bail!(
                "{name}: {frames} frames of {w}x{h} exceed 2^31 pixels; split the frames"
            )
        }
        if let Some(r) = epilogue.residual {
            if r.dims() != [frames, h, w, conv.cout] || r.dtype() != sources[0].tensor.dtype() {
                candle_core::bail!(
                    "{name}: residual {:?} {:?} must be the output's [{frames}, {h}, {w}, {}] {:?}",
                    r.dims(),
                    r.dtype(),
                    conv.cout,
                    sources[0].tensor.dtype()
                )
            }
        }
        Ok(Self {
            frames,
            in_h,
            in_w,
            h,
            w,
        })
    }
}

/// The logical input `[F, C_in, H, W]` (f32) built with Candle ops, then Candle's conv2d.
fn candle_path(
    conv: &PackedConv,
    sources: &[Source],
    upsample: bool,
    epilogue: ConvEpilogue,
    shape: &Shape,
) -> Result<Tensor> {
    let dtype = sources[0].tensor.dtype();
    let mut parts = Vec::with_capacity(sources.len());
    for s in sources {
        let (f, h, w, c) = s.dims()?;
        let g = s.frames_per_stored;
        let mut t = s
            .tensor
            .to_dtype(DType::F32)?
            .reshape((f / g, h, w, g, c))?
            .permute((0, 3, 1, 2, 4))?
            .reshape((f, h, w, c))?;
        if s.previous_frame {
            let first = match s.memory {
                Some(m) => m.to_dtype(DType::F32)?,
                None => Tensor::zeros((1, h, w, c), DType::F32, t.device())?,
            };
            t = Tensor::cat(&[&first, &t.narrow(0, 0, f - 1)?], 0)?;
        }
        parts.push(t);
    }
    let mut x = Tensor::cat(&parts, 3)?
        .permute((0, 3, 1, 2))?
        .contiguous()?;
    if upsample {
        x = x.upsample_nearest2d(shape.h, shape.w)?;
    }
    let _ = (shape.in_h, shape.in_w, shape.frames);
    let weight = conv.unpacked()?.to_dtype(DType::F32)?.contiguous()?;
    let mut y = x
        .conv2d(&weight, conv.kh / 2, 1, 1, 1)?
        .permute((0, 2, 3, 1))?;
    if let Some(b) = &conv.bias {
        y = y.broadcast_add(b)?;
    }
    if let Some(r) = epilogue.residual {
        y = (y + r.to_dtype(DType::F32)?)?;
    }
    if epilogue.relu {
        y = y.relu()?;
    }
    y.to_dtype(dtype)?.contiguous()
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{ConvEpilogue, PackedConv, Shape, Source, Tile};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum as Attr;
    use candle_core::cuda_backend::cudarc::driver::{
        DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::op::BackpropOp;
    use candle_core::{bail, DType, Result, Storage, Tensor};
    use half::{bf16, f16};

    const MODULE: &str = "flashvsr_implicit_conv";

    /// Mirrors `struct ConvSrc` in kernels/implicit_conv.cu.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct ConvSrc {
        ptr: u64,
        memory: u64,
        frame_stride: i64,
        sub_stride: i64,
        group: i32,
        pix_stride: i32,
        channels: i32,
        shift: i32,
    }

    /// Mirrors `struct ConvParams` in kernels/implicit_conv.cu.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct ConvParams {
        src: [ConvSrc; 2],
        weight: u64,
        bias: u64,
        residual: u64,
        out: u64,
        frames: i32,
        height: i32,
        width: i32,
        in_height: i32,
        in_width: i32,
        up_shift: i32,
        cout: i32,
        kh: i32,
        kw: i32,
        pad: i32,
        cin: i32,
        k_tap: i32,
        relu: i32,
    }

    // SAFETY: plain old data with the kernel's C layout.
    unsafe impl DeviceRepr for ConvParams {}

    /// Device address of `t`'s first element. The tensor must outlive the launch; the kernel
    /// runs on Candle's one stream, where frees are stream-ordered.
    fn address(t: &Tensor, what: &str) -> Result<u64> {
        let (storage, layout) = t.storage_and_layout();
        let start = crate::contiguous_start(layout, "implicit conv", what)?;
        let Storage::Cuda(s) = &*storage else {
            bail!("implicit conv: {what} is not on a CUDA device")
        };
        let stream = s.device().cuda_stream();
        let (base, elem) = match s.dtype() {
            DType::F16 => (s.as_cuda_slice::<f16>()?.device_ptr(&stream).0, 2),
            DType::BF16 => (s.as_cuda_slice::<bf16>()?.device_ptr(&stream).0, 2),
            DType::F32 => (s.as_cuda_slice::<f32>()?.device_ptr(&stream).0, 4),
            dt => bail!("implicit conv: {what} has unsupported dtype {dt:?}"),
        };
        Ok(base + (start * elem) as u64)
    }

    fn i32_of(v: usize, what: &str) -> Result<i32> {
        i32::try_from(v)
            .map_err(|_| candle_core::Error::Msg(format!("implicit conv: {what} {v} too large")))
    }

    pub(super) fn launch(
        conv: &PackedConv,
        sources: &[Source],
        upsample: bool,
        epilogue: ConvEpilogue,
        shape: &Shape,
        tile: Tile,
    ) -> Result<Tensor> {
        match sources[0].tensor.dtype() {
            DType::F16 => {
                launch_typed::<f16>(conv, sources, upsample, epilogue, shape, tile, "f16")
            }
            DType::BF16 => {
                launch_typed::<bf16>(conv, sources, upsample, epilogue, shape, tile, "bf16")
            }
            dt => bail!("implicit conv: dtype {dt:?} runs on the Candle path"),
        }
    }

    fn launch_typed<T: CudaDType + DeviceRepr>(
        conv: &PackedConv,
        sources: &[Source],
        upsample: bool,
        epilogue: ConvEpilogue,
        shape: &Shape,
        tile: Tile,
        dtype_name: &str,
    ) -> Result<Tensor> {
        let x0 = sources[0].tensor;
        let candle_core::Device::Cuda(dev) = x0.device() else {
            bail!("implicit conv: not a CUDA device")
        };
        let gpu = crate::gpu_caps::compute_capability(x0.device())?;
        let ptx = crate::gpu_caps::ptx_arch();
        if !matches!((gpu, ptx), (Some(g), Some(p)) if crate::gpu_caps::tensor_cores(g, p)) {
            bail!("implicit conv: needs an sm_80+ GPU and kernels built for sm_80+")
        }
        let mut params = ConvParams::default();
        for (i, s) in sources.iter().enumerate() {
            let (_, h, w, c_stored) = s.tensor.dims4()?;
            let g = s.frames_per_stored;
            params.src[i] = ConvSrc {
                ptr: address(s.tensor, "source")?,
                memory: s
                    .memory
                    .map(|m| address(m, "memory"))
                    .transpose()?
                    .unwrap_or(0),
                frame_stride: (h * w * c_stored) as i64,
                sub_stride: (c_stored / g) as i64,
                group: i32_of(g, "group")?,
                pix_stride: i32_of(c_stored, "channels")?,
                channels: i32_of(c_stored / g, "channels")?,
                shift: s.previous_frame as i32,
            };
        }
        let (m, cout) = (shape.frames * shape.h * shape.w, conv.cout);
        let out_len = m * cout;
        params.weight = address(&conv.weight, "weight")?;
        params.bias = conv
            .bias
            .as_ref()
            .map(|b| address(b, "bias"))
            .transpose()?
            .unwrap_or(0);
        if let Some(r) = epilogue.residual {
            if !r.is_contiguous() {
                bail!("implicit conv: the residual must be contiguous")
            }
            params.residual = address(r, "residual")?;
        }
        params.frames = i32_of(shape.frames, "frames")?;
        params.height = i32_of(shape.h, "height")?;
        params.width = i32_of(shape.w, "width")?;
        params.in_height = i32_of(shape.in_h, "height")?;
        params.in_width = i32_of(shape.in_w, "width")?;
        params.up_shift = upsample as i32;
        params.cout = i32_of(cout, "C_out")?;
        params.kh = i32_of(conv.kh, "kernel")?;
        params.kw = i32_of(conv.kw, "kernel")?;
        params.pad = i32_of(conv.kh / 2, "padding")?;
        params.cin = i32_of(conv.cin, "C_in")?;
        params.k_tap = i32_of(conv.k_tap, "K_tap")?;
        params.relu = epilogue.relu as i32;

        let (bm, bn, _, _, threads) = tile.shape();
        let blocks = m.div_ceil(bm) * cout.div_ceil(bn);
        let blocks = u32::try_from(blocks)
            .ok()
            .filter(|&b| b <= i32::MAX as u32)
            .ok_or_else(|| candle_core::Error::Msg("implicit conv: grid too large".into()))?;
        let smem = tile.smem_bytes() as u32;
        let name = format!("conv_igemm_{}_{dtype_name}", tile.name());
        let func = dev.get_or_load_custom_func(&name, MODULE, crate::ptx::IMPLICIT_CONV)?;
        if smem > 48 * 1024 {
            func.set_attribute(
                Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .w()?;
        }
        // SAFETY: every output element is written by the kernel (each (pixel, channel) pair
        // belongs to exactly one CTA tile and is stored unconditionally).
        let mut out = unsafe { dev.alloc::<T>(out_len)? };
        {
            let stream = dev.cuda_stream();
            let (out_ptr, _guard) = out.device_ptr_mut(&stream);
            params.out = out_ptr;
            let cfg = LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (threads as u32, 1, 1),
                shared_mem_bytes: smem,
            };
            let mut builder = func.builder();
            builder.arg(&params);
            // SAFETY: `params` mirrors the kernel's ConvParams; every pointer is a live device
            // buffer whose extent `Shape::check` and the packing checked; the inputs outlive
            // the launch (borrowed by the caller) and the stream orders later frees after it.
            unsafe { builder.launch(cfg) }.w()?;
        }
        let storage = T::wrap_cuda_slice(out, dev.clone());
        Ok(Tensor::from_storage(
            Storage::Cuda(storage),
            (shape.frames, shape.h, shape.w, cout),
            BackpropOp::none(),
            false,
        ))
    }
}
