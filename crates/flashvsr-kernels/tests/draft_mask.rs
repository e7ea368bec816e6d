//! Draft block mask and top-k threshold on the CPU, against the upstream draft-mask fixture.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{kth_largest_by_sort, load_draft_case, mask_mismatches, tied_rows, DRAFT_CASES};
use flashvsr_kernels::{draft_block_mask, kth_largest};

#[test]
fn draft_mask_matches_upstream_fixture() -> anyhow::Result<()> {
    for (name, heads, topk) in DRAFT_CASES {
        let case = load_draft_case(name, &Device::Cpu)?;
        let mask = draft_block_mask(&case.q, &case.k, &case.local, heads, topk)?;
        assert_eq!(mask.dims(), case.mask.dims(), "{name}");
        assert_eq!(mask.dtype(), DType::U8);
        assert_eq!(
            mask_mismatches(&mask, &case.mask)?,
            0,
            "{name}: mask differs from upstream"
        );
    }
    Ok(())
}

#[test]
fn kth_largest_matches_sort_with_ties() -> anyhow::Result<()> {
    let x = tied_rows(5, 1000, &Device::Cpu)?;
    for rank in [0, 1, 499, 998, 999] {
        let got = kth_largest(&x, rank)?.to_vec1::<f32>()?;
        assert_eq!(got, kth_largest_by_sort(&x, rank)?, "rank {rank}");
    }
    let neg = Tensor::new(
        &[[-1f32, -0.0, 0.0, -3.5, 2.0, f32::NEG_INFINITY]],
        &Device::Cpu,
    )?;
    assert_eq!(
        kth_largest(&neg, 5)?.to_vec1::<f32>()?,
        vec![f32::NEG_INFINITY]
    );
    assert_eq!(kth_largest(&neg, 3)?.to_vec1::<f32>()?, vec![-1.0]);
    assert!(kth_largest(&neg, 6).is_err());
    Ok(())
}

#[test]
fn draft_mask_bad_inputs_are_errors() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let q = Tensor::zeros((4, 8), DType::F32, &dev)?;
    let local = Tensor::ones((2, 2), DType::U8, &dev)?;
    assert!(draft_block_mask(&q, &q, &local, 2, 3).is_ok());
    assert!(draft_block_mask(&q, &q, &local, 3, 3).is_err()); // 8 channels into 3 heads
    assert!(draft_block_mask(&q, &q, &Tensor::ones((3, 3), DType::U8, &dev)?, 2, 3).is_err());
    assert!(draft_block_mask(&q.unsqueeze(0)?, &q, &local, 2, 3).is_err());
    assert!(draft_block_mask(&q, &q.to_dtype(DType::BF16)?, &local, 2, 3).is_err());
    Ok(())
}
