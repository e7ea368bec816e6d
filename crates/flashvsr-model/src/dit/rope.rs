//! 3-D rotary position embedding of the Wan DiT (spec §5.2, Correction 5).
//!
//! A head of `d` dims is split into temporal `d - 2·(d/3)`, height `d/3` and width `d/3` dims
//! (d = 128 → 44/42/42, d = 32 → 12/10/10), each part read as interleaved complex pairs
//! `(x[2j], x[2j+1])`. Pair j of a part of size `p` rotates by `pos · θ^(-2j/p)`. Upstream
//! builds the tables in f64 (`torch.polar`) and rotates in complex128; here the angles and
//! their cos/sin are computed in f64 and the rotation runs in f32 (an f32 island).

use candle_core::{DType, Device, Result, Tensor};

/// Sizes (in dims, not pairs) of the temporal, height and width parts of one head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RopeSplit {
    pub t: usize,
    pub h: usize,
    pub w: usize,
}

impl RopeSplit {
    /// Upstream's split; errors when a part is odd (upstream fails there too, e.g. d = 64).
    pub fn for_head_dim(d: usize) -> Result<Self> {
        let s = Self {
            t: d - 2 * (d / 3),
            h: d / 3,
            w: d / 3,
        };
        if !s.t.is_multiple_of(2) || !s.h.is_multiple_of(2) {
            candle_core::bail!(
                "RoPE: head_dim {d} splits into {}/{}/{} dims; every part must be even",
                s.t,
                s.h,
                s.w
            );
        }
        Ok(s)
    }
}

/// Per-token cos/sin tables `[f·h·w, head_dim/2]` (f32) for a (f, h, w) token grid whose
/// temporal positions start at `t_pos0`; tokens in (f, h, w) order.
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

fn part_freqs(size: usize, theta: f64) -> Vec<f64> {
    (0..size / 2)
        .map(|j| theta.powf(-((2 * j) as f64) / size as f64))
        .collect()
}

impl RopeTables {
    pub fn new(
        head_dim: usize,
        theta: f64,
        grid: (usize, usize, usize),
        t_pos0: usize,
        max_positions: usize,
        device: &Device,
    ) -> Result<Self> {
        let split = RopeSplit::for_head_dim(head_dim)?;
        let (f, h, w) = grid;
        let last_t = t_pos0 + f;
        if last_t > max_positions || h > max_positions || w > max_positions {
            candle_core::bail!(
                "RoPE: positions up to (t {}, h {}, w {}) exceed the {max_positions}-entry tables \
                 (video too long or frame too large)",
                last_t.saturating_sub(1),
                h.saturating_sub(1),
                w.saturating_sub(1)
            );
        }
        let (ft, fh, fw) = (
            part_freqs(split.t, theta),
            part_freqs(split.h, theta),
            part_freqs(split.w, theta),
        );
        let half = head_dim / 2;
        let n = f * h * w;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for ti in 0..f {
            let tp = (t_pos0 + ti) as f64;
            for yi in 0..h {
                for xi in 0..w {
                    let angles = ft
                        .iter()
                        .map(|fr| tp * fr)
                        .chain(fh.iter().map(|fr| yi as f64 * fr))
                        .chain(fw.iter().map(|fr| xi as f64 * fr));
                    for a in angles {
                        cos.push(a.cos() as f32);
                        sin.push(a.sin() as f32);
                    }
                }
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (n, half), device)?,
            sin: Tensor::from_vec(sin, (n, half), device)?,
        })
    }

    /// Rotates `x` `[heads, tokens, head_dim]` (tokens in the tables' order), in f32.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?.unsqueeze(0)?.contiguous()?;
        let y = candle_nn::rotary_emb::rope_i(&xf, &self.cos, &self.sin)?;
        y.squeeze(0)?.to_dtype(dtype)
    }
}

/// Rotations by position, `[positions, head_dim/2]` f32 each: row p holds, for every pair j of
/// a head, the rotation of position p by pair j's frequency (pair j belongs to the temporal,
/// height or width part). A token (t, y, x) takes pair j from row t, y or x by j's part: the
/// same values as [`RopeTables`] (same f64 angles), built once per model instead of per step.
#[derive(Debug, Clone)]
pub struct RopePositions {
    pub cos: Tensor,
    pub sin: Tensor,
    /// Pairs of the temporal and the height part (the width part is the rest).
    pub t_pairs: usize,
    pub h_pairs: usize,
}

impl RopePositions {
    pub fn new(head_dim: usize, theta: f64, positions: usize, device: &Device) -> Result<Self> {
        let split = RopeSplit::for_head_dim(head_dim)?;
        let freqs: Vec<f64> = part_freqs(split.t, theta)
            .into_iter()
            .chain(part_freqs(split.h, theta))
            .chain(part_freqs(split.w, theta))
            .collect();
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for fr in &freqs {
                let a = p as f64 * fr;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (positions, half), device)?,
            sin: Tensor::from_vec(sin, (positions, half), device)?,
            t_pairs: split.t / 2,
            h_pairs: split.h / 2,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_matches_upstream_rule() -> Result<()> {
        assert_eq!(
            RopeSplit::for_head_dim(128)?,
            RopeSplit {
                t: 44,
                h: 42,
                w: 42
            }
        );
        assert_eq!(
            RopeSplit::for_head_dim(32)?,
            RopeSplit {
                t: 12,
                h: 10,
                w: 10
            }
        );
        assert!(RopeSplit::for_head_dim(64).is_err());
        Ok(())
    }

    /// head_dim 32, grid (1, 2, 2) at t_pos0 = 3: check a few pairs by hand.
    #[test]
    fn rotation_by_hand() -> Result<()> {
        let dev = Device::Cpu;
        let tables = RopeTables::new(32, 10000.0, (1, 2, 2), 3, 1024, &dev)?;
        // x = all pairs (1, 0) -> output pair = (cos a, sin a).
        let mut x = vec![0f32; 4 * 32];
        for i in (0..x.len()).step_by(2) {
            x[i] = 1.0;
        }
        let x = Tensor::from_vec(x, (1, 4, 32), &dev)?;
        let y = tables.apply(&x)?.squeeze(0)?.to_vec2::<f32>()?;
        // token 3 = (t 3, row 1, col 1).
        let tok = &y[3];
        // temporal pair 1: angle 3 * 10000^(-2/12)
        let a = 3.0f64 * 10000f64.powf(-2.0 / 12.0);
        assert!((tok[2] as f64 - a.cos()).abs() < 1e-6 && (tok[3] as f64 - a.sin()).abs() < 1e-6);
        // height pair 0 (pair index 6): angle 1 * 1
        assert!(
            (tok[12] as f64 - 1f64.cos()).abs() < 1e-6
                && (tok[13] as f64 - 1f64.sin()).abs() < 1e-6
        );
        // width pair 2 (pair index 6 + 5 + 2 = 13): angle 1 * 10000^(-4/10)
        let a = 10000f64.powf(-4.0 / 10.0);
        assert!((tok[26] as f64 - a.cos()).abs() < 1e-6 && (tok[27] as f64 - a.sin()).abs() < 1e-6);
        // token 0 = (t 3, row 0, col 0): height/width pairs unrotated.
        assert_eq!((y[0][12], y[0][13]), (1.0, 0.0));
        assert_eq!((y[0][30], y[0][31]), (1.0, 0.0));
        Ok(())
    }

    /// The per-position tables hold exactly the per-token tables' values.
    #[test]
    fn position_tables_match_token_tables() -> Result<()> {
        let dev = Device::Cpu;
        let (f, h, w, t0) = (2, 3, 4, 5);
        let tokens = RopeTables::new(32, 10000.0, (f, h, w), t0, 64, &dev)?;
        let pos = RopePositions::new(32, 10000.0, 64, &dev)?;
        let (tc, pc) = (tokens.cos.to_vec2::<f32>()?, pos.cos.to_vec2::<f32>()?);
        let (ts, ps) = (tokens.sin.to_vec2::<f32>()?, pos.sin.to_vec2::<f32>()?);
        for ti in 0..f {
            for yi in 0..h {
                for xi in 0..w {
                    let n = (ti * h + yi) * w + xi;
                    for j in 0..16 {
                        let row = if j < pos.t_pairs {
                            t0 + ti
                        } else if j < pos.t_pairs + pos.h_pairs {
                            yi
                        } else {
                            xi
                        };
                        assert_eq!(tc[n][j].to_bits(), pc[row][j].to_bits());
                        assert_eq!(ts[n][j].to_bits(), ps[row][j].to_bits());
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn positions_beyond_table_are_an_error() {
        assert!(RopeTables::new(32, 10000.0, (2, 2, 2), 1023, 1024, &Device::Cpu).is_err());
    }
}
