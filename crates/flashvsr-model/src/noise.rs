//! The initial latent noise of a clip: generated from a seed, or given by the caller.
//!
//! Upstream draws its noise with CUDA's Philox generator, which cannot be reproduced elsewhere;
//! exact parity therefore goes through a caller-supplied tensor (e.g. an `.npy` dumped from the
//! reference run). Seeded noise is our own: each latent frame has its own counter-based stream,
//! so a streaming session can draw frame `i` without drawing the frames before it, and the same
//! seed gives the same noise on every device and for every chunking of the clip.

use candle_core::{DType, Device, Result, Tensor};

/// Where the initial noise comes from.
#[derive(Debug, Clone)]
pub enum NoiseSource {
    /// Standard normal noise from our seeded generator.
    Seeded(u64),
    /// A caller-supplied tensor [1, C, T, h, w] covering at least every latent frame used.
    Given(Tensor),
}

impl NoiseSource {
    /// Noise for latent frames `frames` as [1, channels, frames.len(), height, width] f32.
    pub fn frames(
        &self,
        frames: std::ops::Range<usize>,
        channels: usize,
        height: usize,
        width: usize,
        device: &Device,
    ) -> Result<Tensor> {
        match self {
            NoiseSource::Seeded(seed) => {
                let plane = height * width;
                let n_frames = frames.len();
                let mut data = vec![0f32; channels * n_frames * plane];
                for (fi, f) in frames.enumerate() {
                    // Each frame's stream is drawn channel-major, then laid out as [C, T, h, w].
                    let mut rng = FrameRng::new(*seed, f as u64);
                    for c in 0..channels {
                        let base = (c * n_frames + fi) * plane;
                        for v in &mut data[base..base + plane] {
                            *v = rng.normal();
                        }
                    }
                }
                Tensor::from_vec(data, (1, channels, n_frames, height, width), device)
            }
            NoiseSource::Given(t) => {
                let (b, c, t_len, h, w) = t.dims5()?;
                if b != 1 || c != channels || h != height || w != width {
                    candle_core::bail!(
                        "the given noise has shape [{b}, {c}, {t_len}, {h}, {w}], but this video needs [1, {channels}, T, {height}, {width}]"
                    );
                }
                if frames.end > t_len {
                    candle_core::bail!(
                        "the given noise has {t_len} latent frames, but this video needs at least {} (clip too long for the noise file)",
                        frames.end
                    );
                }
                t.narrow(2, frames.start, frames.len())?
                    .to_dtype(DType::F32)?
                    .to_device(device)
            }
        }
    }
}

/// SplitMix64-seeded xoshiro256** stream for one latent frame, with Box–Muller normals.
struct FrameRng {
    s: [u64; 4],
    spare: Option<f32>,
}

impl FrameRng {
    fn new(seed: u64, frame: u64) -> Self {
        let mut x = seed ^ frame.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            s: [next(), next(), next(), next()],
            spare: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in (0, 1], never 0 so the logarithm stays finite.
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn normal(&mut self) -> f32 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let r = (-2.0 * self.uniform().ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * self.uniform();
        self.spare = Some((r * theta.sin()) as f32);
        (r * theta.cos()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_noise_is_independent_of_chunking() -> Result<()> {
        let dev = Device::Cpu;
        let src = NoiseSource::Seeded(7);
        let whole = src.frames(0..6, 3, 4, 5, &dev)?;
        let parts = Tensor::cat(
            &[
                src.frames(0..2, 3, 4, 5, &dev)?,
                src.frames(2..6, 3, 4, 5, &dev)?,
            ],
            2,
        )?;
        let diff = (whole - parts)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }

    #[test]
    fn seeded_noise_is_standard_normal() -> Result<()> {
        let t = NoiseSource::Seeded(0).frames(0..4, 16, 32, 32, &Device::Cpu)?;
        let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.03, "variance {var}");
        let other = NoiseSource::Seeded(1).frames(0..1, 16, 32, 32, &Device::Cpu)?;
        assert_ne!(other.flatten_all()?.to_vec1::<f32>()?[..16], v[..16]);
        Ok(())
    }

    #[test]
    fn given_noise_is_sliced_and_checked() -> Result<()> {
        let dev = Device::Cpu;
        let t = Tensor::arange(0f32, 2.0 * 3.0 * 4.0, &dev)?.reshape((1, 2, 3, 2, 2))?;
        let src = NoiseSource::Given(t.clone());
        let s = src.frames(1..3, 2, 2, 2, &dev)?;
        let expect = t.narrow(2, 1, 2)?;
        assert_eq!(
            s.flatten_all()?.to_vec1::<f32>()?,
            expect.flatten_all()?.to_vec1::<f32>()?
        );
        assert!(src.frames(2..4, 2, 2, 2, &dev).is_err());
        assert!(src.frames(0..1, 3, 2, 2, &dev).is_err());
        Ok(())
    }
}
