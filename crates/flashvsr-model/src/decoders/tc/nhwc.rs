//! The TCDecoder's layer stack on channels-last frames `[frames, h, w, C]`: every conv is one
//! implicit-GEMM launch (`flashvsr_kernels::implicit_conv`, tensor cores on CUDA in f16/bf16)
//! with the element-wise work folded in:
//!
//! * a conv followed by ReLU applies it in its epilogue;
//! * a MemBlock is three launches: the first reads `cat([x, past])` by addressing (`past` = x
//!   one frame back, frame 0 the stored memory or zeros), the last adds the skip and applies
//!   the ReLU in its epilogue;
//! * Upsample → TGrow → conv runs the TGrow's 1×1 conv at low resolution (a 1×1 conv commutes
//!   with nearest upsampling: the same products, 4× fewer), and the conv reads the TGrow's
//!   channel blocks as frames at upsampled addresses.
//!
//! The math is the NCHW path's (same products, f32 accumulation); only the roundings between
//! fused steps go away. The memories in the state are NHWC `[1, h, w, C]` on this path.

use super::{Kind, Layer, MemBlock};
use candle_core::{DType, Result, Tensor};
use flashvsr_kernels::implicit_conv::{conv2d_nhwc, ConvEpilogue, PackedConv, Source};

#[derive(Debug, Clone)]
enum Step {
    Clamp,
    Conv {
        conv: PackedConv,
        relu: bool,
    },
    /// Upsample ×2 → TGrow (1×1 conv to `stride·C`) → conv (+ ReLU).
    GrowConv {
        grow: PackedConv,
        stride: usize,
        conv: PackedConv,
        relu: bool,
    },
    Mem {
        index: usize,
        convs: [PackedConv; 3],
        skip: Option<PackedConv>,
    },
}

/// The fused layer program; built once at load.
#[derive(Debug, Clone)]
pub(super) struct NhwcPlan {
    steps: Vec<Step>,
}

fn pack(c: &crate::nn::conv2d::Conv2d, dtype: DType) -> Result<PackedConv> {
    PackedConv::new(c.weight(), c.bias(), dtype)
}

fn pack_mem(m: &MemBlock, dtype: DType) -> Result<([PackedConv; 3], Option<PackedConv>)> {
    Ok((
        [
            pack(&m.convs[0], dtype)?,
            pack(&m.convs[1], dtype)?,
            pack(&m.convs[2], dtype)?,
        ],
        m.skip.as_ref().map(|s| pack(s, dtype)).transpose()?,
    ))
}

impl NhwcPlan {
    /// The program for `layers`, or `None` when a layer sequence has no fused form here (an
    /// upsample not followed by TGrow + conv, a lone TGrow or ReLU): the NCHW path runs then.
    pub(super) fn new(layers: &[Layer], dtype: DType) -> Result<Option<Self>> {
        let kind = |i: usize| {
            layers.get(i).map(|l| match l {
                Layer::Clamp => Kind::Clamp,
                Layer::Conv(_) => Kind::Conv,
                Layer::Relu => Kind::Relu,
                Layer::Mem(_) => Kind::Mem,
                Layer::Upsample => Kind::Upsample,
                Layer::TGrow(_) => Kind::TGrow,
            })
        };
        let mut steps = Vec::new();
        let mut i = 0;
        while i < layers.len() {
            match &layers[i] {
                Layer::Clamp => {
                    steps.push(Step::Clamp);
                    i += 1;
                }
                Layer::Conv(c) => {
                    let relu = kind(i + 1) == Some(Kind::Relu);
                    steps.push(Step::Conv {
                        conv: pack(c, dtype)?,
                        relu,
                    });
                    i += 1 + relu as usize;
                }
                Layer::Mem(m) => {
                    let (convs, skip) = pack_mem(m, dtype)?;
                    steps.push(Step::Mem {
                        index: i,
                        convs,
                        skip,
                    });
                    i += 1;
                }
                Layer::Upsample => {
                    let (Some(Layer::TGrow(g)), Some(Layer::Conv(c))) =
                        (layers.get(i + 1), layers.get(i + 2))
                    else {
                        return Ok(None);
                    };
                    let relu = kind(i + 3) == Some(Kind::Relu);
                    steps.push(Step::GrowConv {
                        grow: pack(&g.conv, dtype)?,
                        stride: g.stride,
                        conv: pack(c, dtype)?,
                        relu,
                    });
                    i += 3 + relu as usize;
                }
                Layer::Relu | Layer::TGrow(_) => return Ok(None),
            }
        }
        Ok(Some(Self { steps }))
    }

    /// Runs the stack on `x` `[T, h, w, C]`; `mem` holds one slot per layer index.
    pub(super) fn run(&self, mut x: Tensor, mem: &mut [Option<Tensor>]) -> Result<Tensor> {
        let plain = ConvEpilogue::default();
        for step in &self.steps {
            x = match step {
                Step::Clamp => ((&x / 3.0)?.tanh()? * 3.0)?,
                Step::Conv { conv, relu } => conv2d_nhwc(
                    conv,
                    &[Source::new(&x)],
                    false,
                    ConvEpilogue {
                        residual: None,
                        relu: *relu,
                    },
                )?,
                Step::GrowConv {
                    grow,
                    stride,
                    conv,
                    relu,
                } => {
                    let grown = conv2d_nhwc(grow, &[Source::new(&x)], false, plain)?;
                    conv2d_nhwc(
                        conv,
                        &[Source::grouped(&grown, *stride)],
                        true,
                        ConvEpilogue {
                            residual: None,
                            relu: *relu,
                        },
                    )?
                }
                Step::Mem { index, convs, skip } => {
                    let memory = mem[*index].take();
                    let relu = ConvEpilogue {
                        residual: None,
                        relu: true,
                    };
                    let h = conv2d_nhwc(
                        &convs[0],
                        &[Source::new(&x), Source::previous(&x, memory.as_ref())],
                        false,
                        relu,
                    )?;
                    let h = conv2d_nhwc(&convs[1], &[Source::new(&h)], false, relu)?;
                    let skip = match skip {
                        Some(s) => conv2d_nhwc(s, &[Source::new(&x)], false, plain)?,
                        None => x.clone(),
                    };
                    let y = conv2d_nhwc(
                        &convs[2],
                        &[Source::new(&h)],
                        false,
                        ConvEpilogue {
                            residual: Some(&skip),
                            relu: true,
                        },
                    )?;
                    // A copy, so the block's whole input can be freed.
                    mem[*index] = Some(x.narrow(0, x.dim(0)? - 1, 1)?.copy()?);
                    y
                }
            };
        }
        Ok(x)
    }
}
