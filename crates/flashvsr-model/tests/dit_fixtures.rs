//! DiT stage by stage vs the upstream fixtures `tiny-v1.1` (1 step) and `tiny-v1-steps`
//! (4 steps: KV cache eviction, RoPE positions continuing).
mod common;

use anyhow::Result;
use candle_core::{IndexOp, Tensor};
use common::*;
use flashvsr_model::config::DitConfig;
use flashvsr_model::dit::{Dit, KvCache, LcsaParams, StepProbes};

struct Case {
    set: &'static str,
    steps: usize,
    params: LcsaParams,
    /// Which block `block_out_stepS.npy` holds.
    block_out_index: usize,
    t_mod_tol: f32,
}

fn check_constants(
    set: &str,
    dit: &Dit,
    prompt: &Tensor,
    t_mod_tol: f32,
) -> Result<flashvsr_model::dit::DitConstants> {
    let c = dit.constants(prompt)?;
    assert_close("t_freq", &c.t_freq, &npy(set, "t_freq.npy")?, 1e-6, 1e-6);
    assert_close("t", &c.t, &npy(set, "t.npy")?, 1e-5, 1e-4);
    assert_close("t_mod", &c.t_mod, &npy(set, "t_mod.npy")?, t_mod_tol, 1e-4);
    assert_close("context", &c.context, &npy(set, "context.npy")?, 1e-5, 1e-4);
    let ks = Tensor::cat(&c.cross.iter().map(|x| x.k.clone()).collect::<Vec<_>>(), 0)?;
    let vs = Tensor::cat(&c.cross.iter().map(|x| x.v.clone()).collect::<Vec<_>>(), 0)?;
    assert_close("cross_k", &ks, &npy(set, "cross_k.npy")?, 1e-5, 1e-4);
    assert_close("cross_v", &vs, &npy(set, "cross_v.npy")?, 1e-5, 1e-4);
    Ok(c)
}

fn run(case: Case) -> Result<()> {
    let set = case.set;
    let vb = weights(set, "diffusion_pytorch_model_streaming_dmd.safetensors")?;
    // The fixture models use head_dim 32 (dim 128 -> 4 heads).
    let cfg = DitConfig::from_weights(&vb, Some(32))?;
    assert_eq!(
        (
            cfg.dim,
            cfg.num_heads,
            cfg.num_layers,
            cfg.ffn_dim,
            cfg.text_dim
        ),
        (128, 4, 2, 256, 64)
    );
    let dit = Dit::new(vb, &cfg)?;
    let prompt = pth_tensor(set, "posi_prompt.fp32.pth", cfg.text_dim)?;
    let consts = check_constants(set, &dit, &prompt, case.t_mod_tol)?;

    let noise = npy(set, "noise.npy")?;
    let latents = npy(set, "latents.npy")?;
    let mut cache = KvCache::new(&cfg);
    for step in 0..case.steps {
        let (start, len) = if step == 0 { (0, 6) } else { (4 + 2 * step, 2) };
        let slice = noise.narrow(2, start, len)?;
        let lq = npy(set, &format!("lq_feat_step{step}.npy"))?;
        let mut taps = StepProbes::default();
        let v = dit.step(
            &slice,
            &lq,
            start,
            &consts,
            &mut cache,
            &case.params,
            Some(&mut taps),
        )?;
        let tag = |n: &str| format!("{set} {n} step{step}");

        if let Ok(want) = npy(set, &format!("patch_tokens_step{step}.npy")) {
            assert_close(
                &tag("patch_tokens"),
                taps.patch_tokens.as_ref().unwrap(),
                &want,
                2e-5,
                1e-4,
            );
        }
        // Masks exactly; draft probabilities and thresholds closely.
        let masks = npy(set, &format!("masks_step{step}.npy"))?;
        let probs = npy(set, &format!("draft_probs_step{step}.npy"))?;
        let ths = npy(set, &format!("draft_thresholds_step{step}.npy"))?;
        for (b, bt) in taps.blocks.iter().enumerate() {
            let d = &bt.draft;
            let want_mask = masks.i(b)?;
            assert_eq!(
                want_mask.dims(),
                &[d.mask.heads, d.mask.nq, d.mask.nk],
                "{}",
                tag("mask shape")
            );
            let want = bools(&want_mask);
            let diff = want
                .iter()
                .zip(&d.mask.data)
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(
                diff,
                0,
                "{}: block {b}: {diff} mask entries differ",
                tag("masks")
            );
            let got_p =
                Tensor::from_vec(d.probs.clone(), want_mask.dims(), &candle_core::Device::Cpu)?;
            assert_close(
                &tag(&format!("draft_probs block {b}")),
                &got_p,
                &probs.i(b)?,
                1e-5,
                1e-4,
            );
            let want_t = ths.i(b)?;
            let got_t = Tensor::from_vec(
                d.thresholds.clone(),
                want_t.dims(),
                &candle_core::Device::Cpu,
            )?;
            assert_close(
                &tag(&format!("draft_thresholds block {b}")),
                &got_t,
                &want_t,
                1e-5,
                1e-4,
            );
        }
        assert_close(
            &tag("self_attn_out"),
            &taps.blocks[0].self_attn_out,
            &npy(set, &format!("self_attn_out_step{step}.npy"))?,
            1e-5,
            1e-4,
        );
        assert_close(
            &tag("block_out"),
            &taps.blocks[case.block_out_index].out,
            &npy(set, &format!("block_out_step{step}.npy"))?,
            1e-4,
            1e-4,
        );
        assert_close(
            &tag("velocity"),
            &v,
            &npy(set, &format!("velocity_step{step}.npy"))?,
            1e-4,
            1e-4,
        );
        let x0 = (&slice - &v)?;
        assert_close(
            &tag("latents"),
            &x0,
            &latents.narrow(2, start, len)?,
            1e-4,
            1e-4,
        );
        // Cache: 3 segments after every step (kv_len 3, one oldest dropped when over).
        for b in &cache.blocks {
            assert_eq!(b.segments(), 3, "{}", tag("cache segments"));
        }
    }
    Ok(())
}

#[test]
fn dit_matches_tiny_v1_1() -> Result<()> {
    run(Case {
        set: "tiny-v1.1",
        steps: 1,
        params: LcsaParams {
            sparse_ratio: 2.0,
            kv_ratio: 3.0,
            local_range: 11,
        },
        block_out_index: 0,
        t_mod_tol: 2e-6,
    })
}

#[test]
fn dit_matches_tiny_v1_steps_with_kv_eviction() -> Result<()> {
    run(Case {
        set: "tiny-v1-steps",
        steps: 4,
        params: LcsaParams {
            sparse_ratio: 0.25,
            kv_ratio: 3.0,
            local_range: 5,
        },
        block_out_index: 1,
        t_mod_tol: 3e-6,
    })
}

/// Synthetic weights of the true Wan2.1-1.3B / LQ projection shapes (std 0.02, norms 1).
fn synthetic_weights(
    cfg: &DitConfig,
    lq: &flashvsr_model::config::LqProjConfig,
) -> Result<std::collections::HashMap<String, Tensor>> {
    use candle_core::Device;
    let dev = Device::Cpu;
    let mut m = std::collections::HashMap::new();
    let mut put = |name: String, shape: &[usize], ones: bool| -> Result<()> {
        let t = if ones {
            Tensor::ones(shape, candle_core::DType::F32, &dev)?
        } else {
            (Tensor::randn(0f32, 1.0, shape, &dev)? * 0.02)?
        };
        m.insert(name, t);
        Ok(())
    };
    let d = cfg.dim;
    put("patch_embedding.weight".into(), &[d, 16, 1, 2, 2], false)?;
    put("patch_embedding.bias".into(), &[d], false)?;
    for (n, i, o) in [
        ("text_embedding.0", cfg.text_dim, d),
        ("text_embedding.2", d, d),
        ("time_embedding.0", cfg.freq_dim, d),
        ("time_embedding.2", d, d),
        ("time_projection.1", d, 6 * d),
        ("head.head", d, 64),
    ] {
        put(format!("{n}.weight"), &[o, i], false)?;
        put(format!("{n}.bias"), &[o], false)?;
    }
    put("head.modulation".into(), &[1, 2, d], false)?;
    for b in 0..cfg.num_layers {
        let p = format!("blocks.{b}");
        put(format!("{p}.modulation"), &[1, 6, d], false)?;
        for a in ["self_attn", "cross_attn"] {
            for l in ["q", "k", "v", "o"] {
                put(format!("{p}.{a}.{l}.weight"), &[d, d], false)?;
                put(format!("{p}.{a}.{l}.bias"), &[d], false)?;
            }
            put(format!("{p}.{a}.norm_q.weight"), &[d], true)?;
            put(format!("{p}.{a}.norm_k.weight"), &[d], true)?;
        }
        put(format!("{p}.norm3.weight"), &[d], true)?;
        put(format!("{p}.norm3.bias"), &[d], false)?;
        put(format!("{p}.ffn.0.weight"), &[cfg.ffn_dim, d], false)?;
        put(format!("{p}.ffn.0.bias"), &[cfg.ffn_dim], false)?;
        put(format!("{p}.ffn.2.weight"), &[d, cfg.ffn_dim], false)?;
        put(format!("{p}.ffn.2.bias"), &[d], false)?;
    }
    put("lq.conv1.weight".into(), &[lq.hidden1, 768, 4, 3, 3], false)?;
    put("lq.conv1.bias".into(), &[lq.hidden1], false)?;
    put("lq.norm1.gamma".into(), &[lq.hidden1, 1, 1, 1], true)?;
    put(
        "lq.conv2.weight".into(),
        &[lq.hidden2, lq.hidden1, 4, 3, 3],
        false,
    )?;
    put("lq.conv2.bias".into(), &[lq.hidden2], false)?;
    put("lq.norm2.gamma".into(), &[lq.hidden2, 1, 1, 1], true)?;
    put(
        "lq.linear_layers.0.weight".into(),
        &[lq.dim, lq.hidden2],
        false,
    )?;
    put("lq.linear_layers.0.bias".into(), &[lq.dim], false)?;
    Ok(m)
}

/// Real dimensions (dim 1536, 12 heads, 30 layers; LQ projection 768→2048→3072→1536), random
/// weights, one step-0 at 256×256 plus one steady step. Needs ~8 GiB RAM and a few minutes:
/// `cargo test -p flashvsr-model --test dit_fixtures -- --ignored real_dims`
#[test]
#[ignore]
fn real_dims_step_runs_and_is_finite() -> Result<()> {
    use flashvsr_model::config::LqProjConfig;
    use flashvsr_model::lq_proj::{LqProj, LqProjState, LqProjVariant};
    let dev = candle_core::Device::Cpu;
    let cfg0 = DitConfig::wan_1_3b();
    let lqc = LqProjConfig::flashvsr();
    let vb = candle_nn::VarBuilder::from_tensors(
        synthetic_weights(&cfg0, &lqc)?,
        candle_core::DType::F32,
        &dev,
    );
    let cfg = DitConfig::from_weights(&vb, None)?;
    assert_eq!(cfg, cfg0);
    assert_eq!(LqProjConfig::from_weights(&vb.pp("lq"))?, lqc);
    let dit = Dit::new(vb.clone(), &cfg)?;
    let lq = LqProj::new(vb.pp("lq"), &lqc, LqProjVariant::Causal)?;
    let prompt = Tensor::randn(0f32, 1.0, (1, 512, 4096), &dev)?;
    let consts = dit.constants(&prompt)?;
    let video = Tensor::randn(0f32, 0.5, (1, 3, 33, 256, 256), &dev)?.clamp(-1f32, 1f32)?;
    let noise = Tensor::randn(0f32, 1.0, (1, 16, 8, 32, 32), &dev)?;
    let mut state = LqProjState::new();
    let mut cache = KvCache::new(&cfg);
    let params = LcsaParams::default();
    assert!(lq.stream(&video.narrow(2, 0, 1)?, &mut state)?.is_none());
    for step in 0..2 {
        let (start, len, calls) = if step == 0 { (0, 6, 6) } else { (6, 2, 2) };
        let first_frame = if step == 0 { 1 } else { 25 };
        let feats = (0..calls)
            .map(|c| {
                Ok(lq
                    .stream(&video.narrow(2, first_frame + 4 * c, 4)?, &mut state)?
                    .expect("features"))
            })
            .collect::<Result<Vec<_>>>()?;
        let lq_tokens = Tensor::cat(&feats, 1)?;
        assert_eq!(lq_tokens.dims(), &[1, len * 16 * 16, 1536]);
        let slice = noise.narrow(2, start, len)?;
        let v = dit.step(
            &slice, &lq_tokens, start, &consts, &mut cache, &params, None,
        )?;
        assert_eq!(v.dims(), slice.dims());
        let vals = v.flatten_all()?.to_vec1::<f32>()?;
        assert!(
            vals.iter().all(|x| x.is_finite()),
            "step {step}: non-finite velocity"
        );
    }
    Ok(())
}
