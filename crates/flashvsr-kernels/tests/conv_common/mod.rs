//! Random cases for the implicit NHWC convolution and a plain-loop f64 reference of its
//! addressing (concat, previous frame + memory, grouped frames, upsample) and epilogue.
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor};
use flashvsr_kernels::implicit_conv::{
    conv2d_nhwc_with_tile, ConvEpilogue, PackedConv, Source, Tile,
};

/// One convolution call.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Output frames.
    pub frames: usize,
    /// Source (pre-upsample) size.
    pub h: usize,
    pub w: usize,
    /// Channels from source 0 and source 1 (0: one source).
    pub c0: usize,
    pub c1: usize,
    pub cout: usize,
    pub k: usize,
    pub upsample: bool,
    /// Source 0 packs this many frames per stored frame.
    pub group: usize,
    /// Source 1 is read one frame back; `memory` gives its frame "-1" (else zeros).
    pub previous: bool,
    pub memory: bool,
    pub bias: bool,
    pub residual: bool,
    pub relu: bool,
}

impl Spec {
    pub fn plain(frames: usize, h: usize, w: usize, cin: usize, cout: usize, k: usize) -> Self {
        Self {
            frames,
            h,
            w,
            c0: cin,
            c1: 0,
            cout,
            k,
            upsample: false,
            group: 1,
            previous: false,
            memory: false,
            bias: false,
            residual: false,
            relu: false,
        }
    }

    pub fn out_hw(&self) -> (usize, usize) {
        let up = if self.upsample { 2 } else { 1 };
        (self.h * up, self.w * up)
    }

    pub fn flop(&self) -> f64 {
        let (oh, ow) = self.out_hw();
        2.0 * (self.frames * oh * ow * self.cout * (self.c0 + self.c1) * self.k * self.k) as f64
    }
}

/// Host data of one case, every value already rounded to the dtype under test.
pub struct Case {
    pub spec: Spec,
    pub src0: Vec<f32>,     // [frames/group, h, w, group*c0]
    pub src1: Vec<f32>,     // [frames, h, w, c1]
    pub memory: Vec<f32>,   // [1, h, w, c1]
    pub weight: Vec<f32>,   // [cout, cin, k, k]
    pub bias: Vec<f32>,     // [cout] (f32)
    pub residual: Vec<f32>, // [frames, H, W, cout]
}

fn rounded(t: Tensor, dtype: DType) -> Result<Vec<f32>> {
    t.to_dtype(dtype)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()
}

pub fn random_case(spec: Spec, dtype: DType) -> Result<Case> {
    let cpu = Device::Cpu;
    let s = spec;
    let (oh, ow) = s.out_hw();
    let cin = s.c0 + s.c1;
    let randn = |n: usize| Tensor::randn(0f32, 1.0, n, &cpu);
    let wscale = 1.0 / ((cin * s.k * s.k) as f64).sqrt();
    Ok(Case {
        spec,
        src0: rounded(randn(s.frames * s.h * s.w * s.c0)?, dtype)?,
        src1: rounded(randn((s.frames * s.h * s.w * s.c1).max(1))?, dtype)?,
        memory: rounded(randn((s.h * s.w * s.c1).max(1))?, dtype)?,
        weight: rounded((randn(s.cout * cin * s.k * s.k)? * wscale)?, dtype)?,
        bias: randn(s.cout)?.to_vec1::<f32>()?,
        residual: rounded(randn(s.frames * oh * ow * s.cout)?, dtype)?,
    })
}

/// The convolution in f64 with plain loops: `[frames, H, W, cout]`.
pub fn reference(c: &Case) -> Vec<f64> {
    let s = c.spec;
    let (oh, ow) = s.out_hw();
    let cin = s.c0 + s.c1;
    let up = if s.upsample { 1 } else { 0 };
    let pad = (s.k / 2) as isize;
    let input = |n: usize, yy: isize, xx: isize, ch: usize| -> f64 {
        if yy < 0 || xx < 0 || yy >= oh as isize || xx >= ow as isize {
            return 0.0;
        }
        let (sy, sx) = ((yy as usize) >> up, (xx as usize) >> up);
        let pix = sy * s.w + sx;
        if ch < s.c0 {
            let (stored, sub) = (n / s.group, n % s.group);
            let stride = s.group * s.c0;
            c.src0[(stored * s.h * s.w + pix) * stride + sub * s.c0 + ch] as f64
        } else {
            let ch = ch - s.c0;
            let f = n as isize - s.previous as isize;
            if f < 0 {
                if s.memory {
                    c.memory[pix * s.c1 + ch] as f64
                } else {
                    0.0
                }
            } else {
                c.src1[(f as usize * s.h * s.w + pix) * s.c1 + ch] as f64
            }
        }
    };
    let mut out = vec![0f64; s.frames * oh * ow * s.cout];
    for n in 0..s.frames {
        for y in 0..oh {
            for x in 0..ow {
                let o_base = ((n * oh + y) * ow + x) * s.cout;
                let mut col = vec![0f64; cin * s.k * s.k];
                for ch in 0..cin {
                    for ty in 0..s.k {
                        for tx in 0..s.k {
                            col[(ch * s.k + ty) * s.k + tx] = input(
                                n,
                                y as isize + ty as isize - pad,
                                x as isize + tx as isize - pad,
                                ch,
                            );
                        }
                    }
                }
                for o in 0..s.cout {
                    let w = &c.weight[o * col.len()..(o + 1) * col.len()];
                    let mut acc: f64 = col.iter().zip(w).map(|(a, b)| a * *b as f64).sum();
                    if s.bias {
                        acc += c.bias[o] as f64;
                    }
                    if s.residual {
                        acc += c.residual[o_base + o] as f64;
                    }
                    if s.relu {
                        acc = acc.max(0.0);
                    }
                    out[o_base + o] = acc;
                }
            }
        }
    }
    out
}

/// Runs the case through `conv2d_nhwc` on `device` in `dtype` (`tile`: `None` = default).
pub fn run(c: &Case, dtype: DType, device: &Device, tile: Option<Tile>) -> Result<Tensor> {
    let s = c.spec;
    let (oh, ow) = s.out_hw();
    let cin = s.c0 + s.c1;
    let t = |v: &[f32], shape: &[usize]| -> Result<Tensor> {
        Tensor::from_slice(v, shape, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    };
    let src0 = t(&c.src0, &[s.frames / s.group, s.h, s.w, s.group * s.c0])?;
    let src1 = if s.c1 > 0 {
        Some(t(&c.src1, &[s.frames, s.h, s.w, s.c1])?)
    } else {
        None
    };
    let memory = if s.memory {
        Some(t(&c.memory, &[1, s.h, s.w, s.c1])?)
    } else {
        None
    };
    let weight =
        Tensor::from_slice(&c.weight, (s.cout, cin, s.k, s.k), &Device::Cpu)?.to_device(device)?;
    let bias = if s.bias {
        Some(Tensor::from_slice(&c.bias, s.cout, &Device::Cpu)?.to_device(device)?)
    } else {
        None
    };
    let residual = if s.residual {
        Some(t(&c.residual, &[s.frames, oh, ow, s.cout])?)
    } else {
        None
    };
    let conv = PackedConv::new(&weight, bias.as_ref(), dtype)?;
    let mut sources = vec![Source::grouped(&src0, s.group)];
    if let Some(src1) = &src1 {
        sources.push(if s.previous {
            Source::previous(src1, memory.as_ref())
        } else {
            Source::new(src1)
        });
    }
    let epilogue = ConvEpilogue {
        residual: residual.as_ref(),
        relu: s.relu,
    };
    conv2d_nhwc_with_tile(&conv, &sources, s.upsample, epilogue, tile)
}

/// (‖out − ref‖ / ‖ref‖, max |out − ref| / max |ref|, all finite)
pub fn errors(out: &Tensor, reference: &[f64]) -> Result<(f64, f64, bool)> {
    let got = out
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    if got.len() != reference.len() {
        candle_core::bail!(
            "output has {} values, reference {}",
            got.len(),
            reference.len()
        )
    }
    let (mut d2, mut r2, mut dmax, mut rmax, mut finite) = (0f64, 0f64, 0f64, 0f64, true);
    for (&g, &r) in got.iter().zip(reference) {
        finite &= g.is_finite();
        let d = g as f64 - r;
        d2 += d * d;
        r2 += r * r;
        dmax = dmax.max(d.abs());
        rmax = rmax.max(r.abs());
    }
    Ok((
        (d2 / r2.max(1e-300)).sqrt(),
        dmax / rmax.max(1e-300),
        finite,
    ))
}

/// The cases: odd sizes, 1x1, 3x3, C_out 3, the decoder's 784 input channels, two sources,
/// previous frame with and without memory, grouped frames, upsample, bias/residual/ReLU, and
/// pixel counts that are not multiples of any tile.
pub fn cases() -> Vec<Spec> {
    let p = Spec::plain;
    vec![
        p(1, 5, 7, 8, 8, 3),
        p(2, 13, 9, 16, 24, 3),
        p(3, 11, 17, 64, 3, 3),
        Spec {
            bias: true,
            ..p(2, 9, 10, 32, 40, 1)
        },
        Spec {
            bias: true,
            relu: true,
            ..p(1, 12, 20, 784, 64, 3)
        },
        Spec {
            bias: true,
            relu: true,
            residual: true,
            ..p(2, 10, 14, 128, 128, 3)
        },
        Spec {
            c0: 64,
            c1: 64,
            previous: true,
            memory: true,
            bias: true,
            relu: true,
            ..p(3, 9, 13, 0, 64, 3)
        },
        Spec {
            c0: 32,
            c1: 32,
            previous: true,
            memory: false,
            ..p(3, 7, 6, 0, 32, 3)
        },
        Spec {
            c0: 16,
            c1: 24,
            ..p(2, 6, 9, 0, 20, 3)
        },
        Spec {
            upsample: true,
            ..p(2, 5, 7, 32, 48, 3)
        },
        Spec {
            upsample: true,
            group: 2,
            ..p(4, 6, 5, 32, 64, 3)
        },
        Spec {
            group: 2,
            ..p(4, 7, 9, 16, 16, 1)
        },
        Spec {
            upsample: true,
            bias: true,
            ..p(1, 9, 11, 128, 3, 3)
        },
        Spec {
            c0: 256,
            c1: 256,
            previous: true,
            memory: true,
            bias: true,
            relu: true,
            ..p(2, 12, 20, 0, 256, 3)
        },
        Spec {
            residual: true,
            relu: true,
            bias: true,
            ..p(1, 33, 47, 128, 128, 3)
        },
    ]
}
