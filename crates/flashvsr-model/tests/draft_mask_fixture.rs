//! LCSA draft mask at realistic block grids (fixture `draft-mask`): masks and thresholds exact
//! in selection, thresholds within f32 noise.
mod common;

use anyhow::Result;
use candle_core::Tensor;
use common::*;
use flashvsr_model::dit::lcsa::{draft_mask, local_mask, topk_count};

struct Case {
    name: &'static str,
    h: usize,
    w: usize,
    grid: (usize, usize),
    sparse: f64,
    local_range: usize,
    topk: i64,
}

fn check(c: Case) -> Result<()> {
    let set = "draft-mask";
    let nb = c.grid.0 * c.grid.1;
    assert_eq!(
        topk_count(nb, c.sparse, c.h, c.w),
        c.topk,
        "{}: topk",
        c.name
    );
    let local = local_mask(c.grid.0, c.grid.1, c.local_range);
    let want_local = bools(&npy(set, &format!("{}_local.npy", c.name))?);
    assert_eq!(local, want_local, "{}: local mask", c.name);
    let q = npy(set, &format!("{}_q.npy", c.name))?;
    let k = npy(set, &format!("{}_k.npy", c.name))?;
    let want_mask = npy(set, &format!("{}_mask.npy", c.name))?;
    let heads = want_mask.dim(0)?;
    let d = draft_mask(&q, &k, heads, nb, &local, c.topk)?;
    assert_eq!(want_mask.dims(), &[d.mask.heads, d.mask.nq, d.mask.nk]);
    let want = bools(&want_mask);
    let diff = want
        .iter()
        .zip(&d.mask.data)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(diff, 0, "{}: {diff} mask entries differ", c.name);
    let want_t = npy(set, &format!("{}_thresholds.npy", c.name))?;
    let got_t = Tensor::from_vec(
        d.thresholds.clone(),
        want_t.dims(),
        &candle_core::Device::Cpu,
    )?;
    assert_close(
        &format!("{} thresholds", c.name),
        &got_t,
        &want_t,
        1e-7,
        1e-5,
    );
    Ok(())
}

#[test]
fn draft_mask_a_768x1280_step0() -> Result<()> {
    check(Case {
        name: "A_768x1280_step0",
        h: 768,
        w: 1280,
        grid: (6, 10),
        sparse: 2.0,
        local_range: 11,
        topk: 7199,
    })
}

#[test]
fn draft_mask_b_768x1280_steady_flat_with_empty_rows() -> Result<()> {
    check(Case {
        name: "B_768x1280_steady_flat",
        h: 768,
        w: 1280,
        grid: (6, 10),
        sparse: 2.0,
        local_range: 11,
        topk: 7199,
    })
}

#[test]
fn draft_mask_c_768x1664_sr1_5_l9() -> Result<()> {
    check(Case {
        name: "C_768x1664_sr1.5_L9",
        h: 768,
        w: 1664,
        grid: (6, 13),
        sparse: 1.5,
        local_range: 9,
        topk: 7018,
    })
}

#[test]
fn draft_mask_d_640x1408_l10() -> Result<()> {
    check(Case {
        name: "D_640x1408_L10",
        h: 640,
        w: 1408,
        grid: (5, 11),
        sparse: 2.0,
        local_range: 10,
        topk: 6598,
    })
}
