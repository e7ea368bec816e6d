//! `flashvsr synth-weights`: random weights with the upstream file names, formats and shapes
//! (from the loader's component layouts). Outputs made with them are meaningless; they exist for
//! tests, benchmarks and trying the tool without a 7 GB download.
//!
//! `--dims small` keeps every structural number (768 pixel-unshuffle channels, 784 decoder
//! input, 16 latent channels, 256 frequency dims, kernels, head_dim 128 so no extra option is
//! needed) and shrinks the widths:
//!
//! | part | real | small |
//! |---|---|---|
//! | DiT dim / text dim / ffn / layers | 1536 / 4096 / 8960 / 30 | 256 / 64 / 512 / 2 (2 heads of 128) |
//! | LQ projection hidden widths | 2048, 3072 | 8, 16 |
//! | TCDecoder channels | 512, 256, 128, 128 | 32, 16, 8, 8 |
//! | Wan VAE decoder channels | 384, 192, 96 | 24, 12, 6 |
//! | prompt | [1, 512, 4096] | [1, 16, 64] |

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use flashvsr_loader::layout;

use crate::weights::Role;
use crate::{SynthArgs, VersionArg};

/// The loader layout that describes a role.
fn component(role: Role, version: VersionArg) -> &'static str {
    match role {
        Role::Dit => "dit",
        Role::LqProj => match version {
            VersionArg::V1 => "lq_proj_v1",
            VersionArg::V1_1 => "lq_proj_v1_1",
        },
        Role::TcDecoder => "tc_decoder",
        Role::Vae => "wan_vae",
        Role::Prompt => "prompt",
    }
}

/// Real width → small width, per part (dims not listed are structural and kept).
fn small_map(role: Role) -> &'static [(usize, usize)] {
    match role {
        Role::Dit => &[(1536, 256), (4096, 64), (8960, 512), (9216, 1536)],
        Role::LqProj => &[(2048, 8), (3072, 16), (1536, 256)],
        Role::TcDecoder => &[(1024, 64), (512, 32), (256, 16), (128, 8)],
        Role::Vae => &[(1152, 72), (768, 48), (384, 24), (192, 12), (96, 6)],
        Role::Prompt => &[(512, 16), (4096, 64)],
    }
}

const SMALL_DIT_LAYERS: usize = 2;

/// Name and shape of every tensor of a part.
pub fn layout_of(
    role: Role,
    version: VersionArg,
    small: bool,
) -> Result<Vec<(String, Vec<usize>)>> {
    let comp = component(role, version);
    let specs = layout::component_layout(comp)
        .ok_or_else(|| anyhow!("the loader has no layout for {comp}"))?;
    let mut out = Vec::new();
    for s in specs.into_iter().filter(|s| !s.optional) {
        let mut shape = s.shape.clone();
        if small {
            if role == Role::Dit {
                if let Some(rest) = s.name.strip_prefix("blocks.") {
                    let n: usize = rest
                        .split('.')
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    if n >= SMALL_DIT_LAYERS {
                        continue;
                    }
                }
            }
            for d in shape.iter_mut() {
                if let Some((_, small)) = small_map(role).iter().find(|(real, _)| real == d) {
                    *d = *small;
                }
            }
        }
        out.push((s.name, shape));
    }
    Ok(out)
}

/// A deterministic normal generator (splitmix64 + Box–Muller): the same seed gives the same
/// weights on every machine.
struct Normal(u64);

impl Normal {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn fill(&mut self, n: usize, std: f32) -> Vec<f32> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let (u1, u2) = (self.uniform(), self.uniform());
            let r = (-2.0 * u1.ln()).sqrt();
            let t = std::f64::consts::TAU * u2;
            v.push((r * t.cos()) as f32 * std);
            if v.len() < n {
                v.push((r * t.sin()) as f32 * std);
            }
        }
        v
    }
}

/// Values per independently seeded block of [`parallel_normal`].
const BLOCK: usize = 1 << 20;

/// `n` values ~ N(0, std²), filled on all cores. Each block of [`BLOCK`] values has its own
/// generator seeded from (`seed`, block index), so the result does not depend on the thread
/// count. (One thread takes ~40 s for the 1.4 B DiT values: the `bench` warm-up cost.)
fn parallel_normal(seed: u64, n: usize, std: f32) -> Vec<f32> {
    let mut v = vec![0f32; n];
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1);
    let blocks: Vec<(usize, &mut [f32])> = v.chunks_mut(BLOCK).enumerate().collect();
    let per_thread = blocks.len().div_ceil(threads).max(1);
    let mut blocks = blocks.into_iter();
    std::thread::scope(|scope| loop {
        let work: Vec<_> = blocks.by_ref().take(per_thread).collect();
        if work.is_empty() {
            break;
        }
        scope.spawn(move || {
            for (i, out) in work {
                let mut rng = Normal(seed ^ (i as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93));
                out.copy_from_slice(&rng.fill(out.len(), std));
            }
        });
    });
    v
}

/// Random tensors for one part: weights ~ N(0, 1/fan_in), biases 0, norm scales 1,
/// modulations and the prompt small.
pub fn synth_part(
    role: Role,
    version: VersionArg,
    small: bool,
    seed: u64,
) -> Result<Vec<(String, Tensor)>> {
    let mut rng = Normal(seed ^ (role as u64).wrapping_mul(0x1234_5678_9ABC_DEF1));
    let mut out = Vec::new();
    for (name, shape) in layout_of(role, version, small)? {
        let n: usize = shape.iter().product();
        let last = name.rsplit('.').next().unwrap_or("");
        let data = if name.contains("norm") || last == "gamma" {
            vec![1.0f32; n]
        } else if last == "bias" {
            vec![0.0f32; n]
        } else if name.contains("modulation") || role == Role::Prompt {
            parallel_normal(rng.next_u64(), n, 0.1)
        } else {
            let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
            parallel_normal(rng.next_u64(), n, 1.0 / (fan_in as f32).sqrt())
        };
        out.push((name, Tensor::from_vec(data, shape, &Device::Cpu)?));
    }
    Ok(out)
}

/// Writes one part with upstream's file name and format: safetensors F32 for the DiT, torch zip
/// for the rest (LQ projection and prompt in BF16, decoders in F32, as shipped).
fn write_part(dir: &Path, role: Role, tensors: Vec<(String, Tensor)>) -> Result<PathBuf> {
    let path = dir.join(role.upstream_file());
    // The partial-output naming `partials` recognises (so a killed run's file is cleaned up).
    let tmp = dir.join(format!(
        ".{}.partial-{}-0",
        role.upstream_file(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        match role {
            Role::Dit => {
                let map: HashMap<String, Tensor> = tensors.into_iter().collect();
                candle_core::safetensors::save(&map, &tmp)?;
            }
            Role::Prompt => {
                let t = tensors
                    .into_iter()
                    .next()
                    .ok_or_else(|| anyhow!("empty prompt layout"))?
                    .1;
                flashvsr_loader::torch_writer::write_single_tensor(
                    &tmp,
                    &t.to_dtype(DType::BF16)?,
                )?;
            }
            Role::LqProj => {
                let t: Vec<(String, Tensor)> = tensors
                    .into_iter()
                    .map(|(n, t)| Ok((n, t.to_dtype(DType::BF16)?)))
                    .collect::<Result<_>>()?;
                flashvsr_loader::torch_writer::write_state_dict(&tmp, &t)?;
            }
            Role::TcDecoder | Role::Vae => {
                flashvsr_loader::torch_writer::write_state_dict(&tmp, &tensors)?
            }
        }
        // Weights are data for everyone to read (0644), whatever the writer's temporary mode.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
        }
        std::fs::rename(&tmp, &path)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("cannot write {}", path.display())));
    }
    Ok(path)
}

pub fn run(args: &SynthArgs, quiet: bool) -> Result<()> {
    let small = args.dims.is_small();
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    crate::partials::clean_next_to(&args.dir.join(Role::Dit.upstream_file()), quiet);
    if !args.overwrite {
        for role in Role::ALL {
            let p = args.dir.join(role.upstream_file());
            if p.exists() {
                bail!(
                    "{} already exists; pass -y/--overwrite to replace it",
                    p.display()
                );
            }
        }
    }
    for role in Role::ALL {
        let tensors = synth_part(role, args.model_version, small, args.seed)?;
        let path = write_part(&args.dir, role, tensors)?;
        if !quiet {
            eprintln!("wrote {}", path.display());
        }
    }
    println!(
        "Random {} weights ({} dims) written to {}. Outputs made with them are meaningless (noise); use them for tests and benchmarks only.",
        args.model_version.as_str(),
        args.dims.as_str(),
        args.dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_layouts_keep_structure() {
        let dit = layout_of(Role::Dit, VersionArg::V1_1, true).unwrap();
        let get = |v: &[(String, Vec<usize>)], n: &str| {
            v.iter().find(|(k, _)| k == n).map(|(_, s)| s.clone())
        };
        assert_eq!(
            get(&dit, "patch_embedding.weight"),
            Some(vec![256, 16, 1, 2, 2])
        );
        assert_eq!(get(&dit, "time_projection.1.weight"), Some(vec![1536, 256]));
        assert!(get(&dit, "blocks.2.self_attn.q.weight").is_none());
        let tc = layout_of(Role::TcDecoder, VersionArg::V1_1, true).unwrap();
        assert_eq!(get(&tc, "decoder.1.weight"), Some(vec![32, 784, 3, 3]));
        assert_eq!(get(&tc, "decoder.15.conv.weight"), Some(vec![32, 16, 1, 1]));
        let p = layout_of(Role::Prompt, VersionArg::V1_1, true).unwrap();
        assert_eq!(p[0].1, vec![1, 16, 64]);
    }

    #[test]
    fn parallel_fill_is_deterministic_and_normal() {
        let n = 2 * BLOCK + 12345;
        let a = parallel_normal(9, n, 2.0);
        assert_eq!(a, parallel_normal(9, n, 2.0));
        assert_ne!(a[..1000], a[BLOCK..BLOCK + 1000], "blocks must not repeat");
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.01 && (var - 4.0).abs() < 0.05,
            "mean {mean} var {var}"
        );
    }

    #[test]
    fn normal_generator_is_deterministic() {
        let a = Normal(5).fill(1000, 1.0);
        let b = Normal(5).fill(1000, 1.0);
        assert_eq!(a, b);
        let mean = a.iter().sum::<f32>() / 1000.0;
        let var = a.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / 1000.0;
        assert!(
            mean.abs() < 0.1 && (var - 1.0).abs() < 0.15,
            "mean {mean} var {var}"
        );
    }
}
