//! Component layouts: they parse, have the spec's tensor counts and parameter totals, and the
//! reduced fixtures pass the structural check but fail the real-shape check with a clear list.

use flashvsr_loader::layout::{self, CheckMode};

mod common;
use common::{dit, FULL, TINY};

fn params(c: &str) -> (usize, usize) {
    let l = layout::component_layout(c).unwrap();
    let req: Vec<_> = l.iter().filter(|t| !t.optional).collect();
    (
        req.len(),
        l.iter().map(|t| t.shape.iter().product::<usize>()).sum(),
    )
}

#[test]
fn layouts_match_the_spec_counts() {
    assert_eq!(layout::components().len(), 6);
    assert_eq!(params("dit"), (825, 1_418_996_800));
    assert_eq!(params("lq_proj_v1"), (8, 287_845_888));
    assert_eq!(
        layout::component_layout("lq_proj_v1"),
        layout::component_layout("lq_proj_v1_1")
    );
    assert_eq!(params("tc_decoder").0, 66);
    assert_eq!(params("wan_vae"), (108, 126_892_531));
    assert_eq!(params("prompt"), (1, 512 * 4096));
    assert!(layout::component_layout("nope").is_none());
}

#[test]
fn fixture_dit_is_structurally_valid_but_not_real_sized() {
    let f = [dit()];
    let s = layout::validate_with(&f, "dit", CheckMode::Structure).unwrap();
    // The fixture has 2 blocks instead of 30: the rest are missing, nothing unexpected.
    assert!(s.unexpected.is_empty() && s.mismatched.is_empty(), "{s}");
    assert_eq!(s.missing.len(), 28 * 27);
    assert!(s.missing.iter().all(|m| m.name.starts_with("blocks.")));
    let r = layout::validate(&f, "dit").unwrap();
    assert!(!r.is_ok());
    let text = r.to_string();
    assert!(
        text.contains("mis-shaped  patch_embedding.weight: expected [1536, 16, 1, 2, 2]"),
        "{text}"
    );
    assert!(text.contains("FAILED"));
}

#[test]
fn other_fixture_components_validate_structurally() {
    for (file, comp) in [
        (format!("{TINY}/LQ_proj_in.ckpt"), "lq_proj_v1_1"),
        (format!("{TINY}/LQ_proj_in.ckpt"), "lq_proj_v1"),
        (format!("{TINY}/TCDecoder.ckpt"), "tc_decoder"),
        (format!("{TINY}/posi_prompt.pth"), "prompt"),
        (format!("{FULL}/Wan2.1_VAE.pth"), "wan_vae"),
    ] {
        let r = layout::validate_with(&[&file], comp, CheckMode::Structure).unwrap();
        assert!(r.is_ok(), "{comp}: {r}");
        let exact = layout::validate(&[&file], comp).unwrap();
        assert!(
            !exact.is_ok() && exact.missing.is_empty(),
            "{comp}: {exact}"
        );
    }
    // The wrong component lists what is missing and unexpected.
    let r = layout::validate(&[format!("{TINY}/TCDecoder.ckpt")], "prompt").unwrap();
    assert_eq!(r.missing.len(), 1);
    assert_eq!(r.unexpected.len(), 66);
}
