//! The memory plan on the command line: the model's dimensions from the weight files' headers
//! (or `bench`'s synthetic layouts), the budget from `--max-vram` or the device's free memory,
//! the plan's choices handed to the session, and the plan shown by `--plan` and in `--json`.

use std::collections::HashMap;

use anyhow::{anyhow, Result};
use candle_core::{DType, Device};
use flashvsr_model::device_memory;
use flashvsr_model::memory_plan::{
    self, Calibration, MemoryPlan, ModelDims, PartParams, PlanRequest, TileChoice, GIB,
};
use flashvsr_model::pipeline::{KvStorage, Mode};

use crate::weights::components::Resolved;
use crate::weights::Role;

/// Name → shape of one part's tensors (names as the part's var builder sees them).
#[derive(Default)]
pub struct PartShapes {
    shapes: HashMap<String, Vec<usize>>,
}

impl PartShapes {
    pub fn new(list: impl IntoIterator<Item = (String, Vec<usize>)>) -> Self {
        Self {
            shapes: list.into_iter().collect(),
        }
    }

    fn lookup(&self) -> impl Fn(&str) -> Option<Vec<usize>> + '_ {
        |name| self.shapes.get(name).cloned()
    }

    fn params(&self) -> u64 {
        self.shapes
            .values()
            .map(|s| s.iter().product::<usize>() as u64)
            .sum()
    }
}

/// The shapes of one resolved part, from its file headers (nothing is read beyond them).
fn part_shapes(w: &Resolved, role: Role) -> PartShapes {
    let Some(part) = w.part(role) else {
        return PartShapes::default();
    };
    if let Some(name) = &part.tensor {
        let info = part.store.info(name);
        return PartShapes::new(info.map(|i| (name.clone(), i.shape.clone())));
    }
    let prefix = part.prefix.as_str();
    PartShapes::new(part.store.infos().filter_map(|i| {
        i.name
            .strip_prefix(prefix)
            .map(|n| (n.to_string(), i.shape.clone()))
    }))
}

/// The model dimensions from per-part shapes.
pub fn dims_from_parts(
    dit: &PartShapes,
    lq_proj: &PartShapes,
    decoder: &PartShapes,
    prompt: &PartShapes,
    mode: Mode,
    head_dim: Option<usize>,
) -> Result<ModelDims> {
    // The prompt is [L, text_dim] or [1, L, text_dim].
    let text_len = prompt
        .shapes
        .values()
        .next()
        .and_then(|s| s.iter().rev().nth(1).copied())
        .unwrap_or(512);
    let params = PartParams {
        dit: dit.params(),
        lq_proj: lq_proj.params(),
        decoder: decoder.params(),
        prompt: prompt.params(),
    };
    ModelDims::from_shapes(
        &dit.lookup(),
        &lq_proj.lookup(),
        &decoder.lookup(),
        mode,
        text_len,
        head_dim,
        params,
    )
    .map_err(|e| anyhow!("cannot plan the memory of these weights: {e}"))
}

/// The model dimensions of resolved weight files (headers only).
pub fn dims_from_weights(w: &Resolved, mode: Mode, head_dim: Option<usize>) -> Result<ModelDims> {
    let decoder = if mode == Mode::Full {
        Role::Vae
    } else {
        Role::TcDecoder
    };
    dims_from_parts(
        &part_shapes(w, Role::Dit),
        &part_shapes(w, Role::LqProj),
        &part_shapes(w, decoder),
        &part_shapes(w, Role::Prompt),
        mode,
        head_dim,
    )
}

/// `--max-vram` in bytes, else the device's free memory now (CUDA), else no limit.
pub fn budget(max_vram_gib: Option<f64>, device: &Device) -> Option<u64> {
    match max_vram_gib {
        Some(g) => Some((g * GIB) as u64),
        None => device_memory::free_and_total(device).map(|(free, _)| free),
    }
}

/// Everything a plan needs besides the model dimensions.
pub struct Job {
    pub dtype: DType,
    pub mode: Mode,
    pub input_size: (usize, usize),
    pub scale: f64,
    pub upstream_crop: bool,
    pub kv_ratio: f64,
    pub kv_storage: KvStorage,
    pub tile: Option<(usize, usize)>,
    pub tile_overlap: usize,
    pub budget: Option<u64>,
    pub cuda: bool,
    /// `--decoder-latents`: the most latents per decoder call (`None`: the planner decides).
    pub decoder_latents: Option<usize>,
}

pub fn plan(dims: ModelDims, job: &Job) -> Result<MemoryPlan> {
    let req = PlanRequest {
        dims,
        dtype: job.dtype,
        mode: job.mode,
        input_size: job.input_size,
        scale: job.scale,
        upstream_crop: job.upstream_crop,
        kv_len: job.kv_ratio.max(0.0) as usize,
        kv_storage: job.kv_storage,
        tile: job.tile.map(|(size, overlap)| TileChoice { size, overlap }),
        tile_overlap: job.tile_overlap,
        budget: job.budget,
        cuda: job.cuda,
        decoder_latents: job.decoder_latents,
        calibration: Calibration::for_device(job.cuda),
    };
    memory_plan::plan(&req).map_err(|e| {
        let (w, h) = job.input_size;
        anyhow!(
            "cannot upscale {w}x{h} ×{} in {:?} mode: {e}",
            job.scale,
            job.mode
        )
    })
}

/// `--plan`'s output on stdout: the plan as JSON, or in words.
pub fn print_plan(plan: &MemoryPlan, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(plan)?);
    } else {
        println!("{}", describe(plan));
    }
    Ok(())
}

/// The plan for people, several lines.
pub fn describe(plan: &MemoryPlan) -> String {
    let g = |b: u64| format!("{:.2} GiB", b as f64 / GIB);
    let mut s = String::new();
    s += &format!(
        "memory plan for {}x{} output:\n",
        plan.output_size[0], plan.output_size[1]
    );
    s += &format!("  weights + prompt constants  {}\n", g(plan.weights_bytes));
    s += &format!(
        "  KV cache on the device      {}{}\n",
        g(plan.kv_device_bytes),
        if plan.choices.park_kv {
            format!(" (+ {} parked in host memory)", g(plan.kv_host_bytes))
        } else {
            String::new()
        }
    );
    for st in &plan.session.stages {
        s += &format!("  {:<27} {}\n", st.stage, g(st.bytes));
    }
    s += &format!("  CUDA runtime                {}\n", g(plan.runtime_bytes));
    s += &plan.summary();
    s
}

/// A short note for the start of a run.
pub fn note(plan: &MemoryPlan) -> String {
    plan.summary()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::layout_of;
    use crate::VersionArg;

    fn layout(role: Role, small: bool) -> PartShapes {
        PartShapes::new(layout_of(role, VersionArg::V1_1, small).unwrap())
    }

    #[test]
    fn real_layouts_give_the_wan_dims_and_a_plan() -> Result<()> {
        let dims = dims_from_parts(
            &layout(Role::Dit, false),
            &layout(Role::LqProj, false),
            &layout(Role::TcDecoder, false),
            &layout(Role::Prompt, false),
            Mode::Tiny,
            None,
        )?;
        assert_eq!(dims.dit, flashvsr_model::config::DitConfig::wan_1_3b());
        assert_eq!(
            dims.lq_proj,
            flashvsr_model::config::LqProjConfig::flashvsr()
        );
        assert_eq!(dims.text_len, 512);
        match &dims.decoder {
            memory_plan::DecoderDims::Tiny(c) => {
                assert_eq!(c.channels, [512, 256, 128, 128]);
                assert_eq!(c.frames_per_latent, 4);
                assert_eq!(c.latent_channels, 16);
            }
            _ => panic!("tiny decoder expected"),
        }
        // Every parameter of the layouts is counted.
        let want: u64 = [Role::Dit, Role::LqProj, Role::TcDecoder, Role::Prompt]
            .iter()
            .map(|&r| layout(r, false).params())
            .sum();
        let p = dims.params;
        assert_eq!(p.dit + p.lq_proj + p.decoder + p.prompt, want);
        let job = Job {
            dtype: DType::BF16,
            mode: Mode::Tiny,
            input_size: (352, 192),
            scale: 4.0,
            upstream_crop: false,
            kv_ratio: 3.0,
            kv_storage: KvStorage::Dense,
            tile: None,
            tile_overlap: 32,
            budget: None,
            cuda: true,
            decoder_latents: None,
        };
        let plan = plan(dims, &job)?;
        assert_eq!(plan.tiles, 1);
        assert!(describe(&plan).contains("KV cache"));
        Ok(())
    }

    #[test]
    fn full_mode_layouts_give_the_vae_dims() -> Result<()> {
        let dims = dims_from_parts(
            &layout(Role::Dit, true),
            &layout(Role::LqProj, true),
            &layout(Role::Vae, false),
            &layout(Role::Prompt, true),
            Mode::Full,
            Some(128),
        )?;
        match &dims.decoder {
            memory_plan::DecoderDims::Full(c) => {
                assert_eq!((c.z_dim, c.top_dim, c.base_dim), (16, 384, 96));
                assert_eq!((c.temporal_upsamples, c.spatial_factor), (2, 8));
            }
            _ => panic!("VAE expected"),
        }
        Ok(())
    }

    /// The predictions of the GPU request's cases (`cargo test -p flashvsr-cli --bins
    /// bench_plans -- --ignored --nocapture`), for benches/notes/memory.md.
    #[test]
    #[ignore]
    fn bench_plans() -> Result<()> {
        let cases: [(&str, usize, usize, Mode, Option<f64>); 5] = [
            ("1408x768 tiny", 1408, 768, Mode::Tiny, None),
            ("1920x1080 tiny", 1920, 1080, Mode::Tiny, None),
            (
                "1920x1080 tiny, --max-vram 8",
                1920,
                1080,
                Mode::Tiny,
                Some(8.0),
            ),
            (
                "3840x2160 tiny, --max-vram 24",
                3840,
                2160,
                Mode::Tiny,
                Some(24.0),
            ),
            ("1408x768 full", 1408, 768, Mode::Full, None),
        ];
        for (name, w, h, mode, gib) in cases {
            let decoder = if mode == Mode::Full {
                Role::Vae
            } else {
                Role::TcDecoder
            };
            let dims = dims_from_parts(
                &layout(Role::Dit, false),
                &layout(Role::LqProj, false),
                &layout(decoder, false),
                &layout(Role::Prompt, false),
                mode,
                None,
            )?;
            let job = Job {
                dtype: DType::BF16,
                mode,
                input_size: (w / 4, h / 4),
                scale: 4.0,
                upstream_crop: false,
                kv_ratio: 3.0,
                kv_storage: KvStorage::Dense,
                tile: None,
                tile_overlap: 32,
                budget: gib.map(|g| (g * GIB) as u64).or(Some(79 << 30)),
                cuda: true,
                decoder_latents: None,
            };
            match plan(dims, &job) {
                Ok(p) => println!("== {name}\n{}\n", describe(&p)),
                Err(e) => println!("== {name}: {e}\n"),
            }
        }
        Ok(())
    }
}
