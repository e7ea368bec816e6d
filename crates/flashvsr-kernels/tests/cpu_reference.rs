//! The CPU reference of block-sparse attention against a dense masked softmax (f64).

mod common;

use candle_core::{DType, Device, Tensor};
use common::{dense_reference, errors, nonzero_in_empty_blocks, random_case, tolerance};
use flashvsr_kernels::{block_sparse_attention, BLOCK_TOKENS};

#[test]
fn cpu_reference_matches_dense_masked_softmax() -> anyhow::Result<()> {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for head_dim in [32, 64, 128] {
            let case = random_case(2, 3, 4, head_dim, dtype, 0.5, &Device::Cpu)?;
            let out = block_sparse_attention(&case.q, &case.k, &case.v, &case.mask, case.scale)?;
            assert_eq!(out.dims(), case.q.dims());
            assert_eq!(out.dtype(), dtype);
            let e = errors(&out, &dense_reference(&case)?)?;
            let (max_abs, rel_l2) = tolerance(dtype);
            assert_eq!(e.nan_count, 0, "{dtype:?} d{head_dim}: non-finite outputs");
            assert!(
                e.max_abs <= max_abs && e.rel_l2 <= rel_l2,
                "{dtype:?} d{head_dim}: max abs {:.3e} (<= {max_abs:.0e}), rel l2 {:.3e} (<= {rel_l2:.0e})",
                e.max_abs,
                e.rel_l2
            );
            assert_eq!(
                nonzero_in_empty_blocks(&out, &case.mask)?,
                0,
                "{dtype:?} d{head_dim}"
            );
        }
    }
    Ok(())
}

#[test]
fn all_empty_mask_gives_zeros() -> anyhow::Result<()> {
    let case = random_case(1, 2, 2, 64, DType::F32, 0.5, &Device::Cpu)?;
    let mask = case.mask.zeros_like()?;
    let out = block_sparse_attention(&case.q, &case.k, &case.v, &mask, case.scale)?;
    let max = out.abs()?.max_all()?.to_scalar::<f32>()?;
    assert_eq!(max, 0.0);
    Ok(())
}

#[test]
fn non_contiguous_inputs_are_accepted() -> anyhow::Result<()> {
    // k given as the transpose of a [heads, head_dim, k_tokens] tensor.
    let case = random_case(2, 1, 2, 32, DType::F32, 1.0, &Device::Cpu)?;
    let k_t = case.k.transpose(1, 2)?.contiguous()?.transpose(1, 2)?;
    assert!(!k_t.is_contiguous());
    let a = block_sparse_attention(&case.q, &case.k, &case.v, &case.mask, case.scale)?;
    let b = block_sparse_attention(&case.q, &k_t, &case.v, &case.mask, case.scale)?;
    let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert_eq!(diff, 0.0);
    Ok(())
}

fn run(f: impl FnOnce() -> anyhow::Result<Tensor>) -> anyhow::Result<Tensor> {
    f()
}

#[test]
fn bad_inputs_are_errors_not_panics() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let b = BLOCK_TOKENS;
    let q = Tensor::zeros((2, b, 64), DType::F32, &dev)?;
    let k = Tensor::zeros((2, 2 * b, 64), DType::F32, &dev)?;
    let mask = Tensor::ones((2, 1, 2), DType::U8, &dev)?;
    let ok = block_sparse_attention(&q, &k, &k, &mask, 0.125);
    assert!(ok.is_ok());

    let cases: Vec<(&str, anyhow::Result<Tensor>)> = vec![
        (
            "q rank",
            run(|| {
                Ok(block_sparse_attention(
                    &q.unsqueeze(0)?,
                    &k,
                    &k,
                    &mask,
                    0.1,
                )?)
            }),
        ),
        (
            "tokens not multiple of 128",
            run(|| {
                let q = Tensor::zeros((2, 100, 64), DType::F32, &dev)?;
                Ok(block_sparse_attention(&q, &k, &k, &mask, 0.1)?)
            }),
        ),
        (
            "head_dim 48",
            run(|| {
                let q = Tensor::zeros((2, b, 48), DType::F32, &dev)?;
                let k = Tensor::zeros((2, 2 * b, 48), DType::F32, &dev)?;
                Ok(block_sparse_attention(&q, &k, &k, &mask, 0.1)?)
            }),
        ),
        (
            "v shape",
            run(|| Ok(block_sparse_attention(&q, &k, &q, &mask, 0.1)?)),
        ),
        (
            "dtype mix",
            run(|| {
                Ok(block_sparse_attention(
                    &q.to_dtype(DType::BF16)?,
                    &k,
                    &k,
                    &mask,
                    0.1,
                )?)
            }),
        ),
        (
            "mask shape",
            run(|| {
                let mask = Tensor::ones((2, 2, 1), DType::U8, &dev)?;
                Ok(block_sparse_attention(&q, &k, &k, &mask, 0.1)?)
            }),
        ),
        (
            "mask dtype",
            run(|| {
                Ok(block_sparse_attention(
                    &q,
                    &k,
                    &k,
                    &mask.to_dtype(DType::F32)?,
                    0.1,
                )?)
            }),
        ),
        (
            "f64",
            run(|| {
                let q = q.to_dtype(DType::F64)?;
                let k = k.to_dtype(DType::F64)?;
                Ok(block_sparse_attention(&q, &k, &k, &mask, 0.1)?)
            }),
        ),
        (
            "scale",
            run(|| Ok(block_sparse_attention(&q, &k, &k, &mask, f32::NAN)?)),
        ),
    ];
    for (what, r) in cases {
        let err = match r {
            Ok(_) => panic!("{what}: expected an error"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("block_sparse_attention"), "{what}: {err}");
    }
    Ok(())
}

#[test]
fn empty_token_counts_give_zeros() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let q = Tensor::ones((2, BLOCK_TOKENS, 32), DType::F32, &dev)?;
    let k = Tensor::zeros((2, 0, 32), DType::F32, &dev)?;
    let mask = Tensor::zeros((2, 1, 0), DType::U8, &dev)?;
    let out = block_sparse_attention(&q, &k, &k, &mask, 0.1)?;
    assert_eq!(out.dims(), q.dims());
    assert_eq!(out.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
    Ok(())
}
