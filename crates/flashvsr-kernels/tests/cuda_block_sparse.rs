//! The CUDA kernels against the dense f64 reference and against the CPU reference.
//! Needs a GPU: build with `cargo test -p flashvsr-kernels --features cuda --no-run --release`
//! and run the binary on the device machine (see scripts/cuda/run-gpu-tests.sh).
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Tensor};
use common::{dense_reference, errors, nonzero_in_empty_blocks, random_case, tolerance};
use flashvsr_kernels::{BlockSparseAttention, KernelVariant};

fn device() -> anyhow::Result<Device> {
    Ok(Device::new_cuda(0)?)
}

/// Allocates and drops a NaN buffer the size of the output first, so that the stream-ordered
/// allocator most likely hands that memory to the kernel: unwritten elements then show as NaN.
fn poison(like: &Tensor) -> anyhow::Result<()> {
    let nan = Tensor::full(f32::NAN, like.shape(), like.device())?.to_dtype(like.dtype())?;
    like.device().synchronize()?;
    drop(nan);
    Ok(())
}

#[test]
fn kernels_match_dense_reference() -> anyhow::Result<()> {
    let dev = device()?;
    let mut failures = Vec::new();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let variants: &[KernelVariant] = if dtype == DType::F32 {
            &[KernelVariant::Scalar, KernelVariant::Auto]
        } else {
            &[
                KernelVariant::Scalar,
                KernelVariant::TensorCoreSimple,
                KernelVariant::TensorCore,
                KernelVariant::Auto,
            ]
        };
        for head_dim in [32, 64, 128] {
            // 3 heads x 5 query blocks x 7 key blocks, ~40% selected, plus forced empty/full rows.
            let case = random_case(3, 5, 7, head_dim, dtype, 0.4, &dev)?;
            let reference = dense_reference(&case)?;
            // The Hopper (wgmma) kernels exist for head_dim 128 on compute capability 9.0.
            let hopper = head_dim == 128 && dtype != DType::F32 && common::is_hopper(&dev)?;
            let extra: &[KernelVariant] = if hopper {
                &[KernelVariant::Hopper, KernelVariant::HopperTma]
            } else {
                &[]
            };
            for &variant in variants.iter().chain(extra) {
                poison(&case.q)?;
                let op = BlockSparseAttention::new(case.scale).with_variant(variant);
                let out = op.forward(&case.q, &case.k, &case.v, &case.mask)?;
                dev.synchronize()?;
                let e = errors(&out, &reference)?;
                let zeros = nonzero_in_empty_blocks(&out, &case.mask)?;
                let (max_abs, rel_l2) = tolerance(dtype);
                let line = format!(
                    "{dtype:?} d{head_dim} {variant:?}: max abs {:.3e}, rel l2 {:.3e}, non-finite {}, nonzero in empty blocks {zeros}",
                    e.max_abs, e.rel_l2, e.nan_count
                );
                println!("{line}");
                if e.nan_count > 0 || zeros > 0 || e.max_abs > max_abs || e.rel_l2 > rel_l2 {
                    failures.push(line);
                }
            }
        }
    }
    assert!(failures.is_empty(), "failed:\n{}", failures.join("\n"));
    Ok(())
}

#[test]
fn cuda_matches_cpu_reference_on_offset_views() -> anyhow::Result<()> {
    // Inputs that are narrowed views (non-zero storage offset) of bigger tensors.
    let dev = device()?;
    let case = random_case(4, 2, 3, 64, DType::BF16, 0.5, &dev)?;
    let (q, k, v, mask) = (
        case.q.narrow(0, 1, 3)?,
        case.k.narrow(0, 1, 3)?,
        case.v.narrow(0, 1, 3)?,
        case.mask.narrow(0, 1, 3)?,
    );
    let gpu = BlockSparseAttention::new(case.scale).forward(&q, &k, &v, &mask)?;
    let cpu = Device::Cpu;
    let want = BlockSparseAttention::new(case.scale).forward(
        &q.to_device(&cpu)?,
        &k.to_device(&cpu)?,
        &v.to_device(&cpu)?,
        &mask.to_device(&cpu)?,
    )?;
    let e = errors(&gpu, &want)?;
    println!(
        "offset views bf16 d64: max abs {:.3e}, rel l2 {:.3e}",
        e.max_abs, e.rel_l2
    );
    let (max_abs, rel_l2) = tolerance(DType::BF16);
    assert!(e.nan_count == 0 && e.max_abs <= max_abs && e.rel_l2 <= rel_l2);
    Ok(())
}

#[test]
fn all_empty_mask_writes_exact_zeros() -> anyhow::Result<()> {
    let dev = device()?;
    for dtype in [DType::F32, DType::BF16] {
        let case = random_case(2, 3, 3, 128, dtype, 0.5, &dev)?;
        poison(&case.q)?;
        let out = BlockSparseAttention::new(case.scale).forward(
            &case.q,
            &case.k,
            &case.v,
            &case.mask.zeros_like()?,
        )?;
        let max = out
            .to_dtype(DType::F32)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(max, 0.0, "{dtype:?}");
    }
    Ok(())
}

#[test]
fn tensor_core_variant_rejects_f32() -> anyhow::Result<()> {
    let dev = device()?;
    let case = random_case(1, 1, 1, 32, DType::F32, 1.0, &dev)?;
    for variant in [
        KernelVariant::TensorCore,
        KernelVariant::TensorCoreSimple,
        KernelVariant::Hopper,
        KernelVariant::HopperTma,
    ] {
        let r = BlockSparseAttention::new(case.scale)
            .with_variant(variant)
            .forward(&case.q, &case.k, &case.v, &case.mask);
        assert!(r.is_err());
    }
    Ok(())
}

#[test]
fn cuda_draft_mask_matches_upstream_fixture() -> anyhow::Result<()> {
    let dev = device()?;
    for (name, heads, topk) in common::DRAFT_CASES {
        let case = common::load_draft_case(name, &dev)?;
        let mask = flashvsr_kernels::draft_block_mask(&case.q, &case.k, &case.local, heads, topk)?;
        let bad = common::mask_mismatches(&mask, &case.mask)?;
        println!("draft mask {name}: {bad} mismatches");
        assert_eq!(bad, 0, "{name}");
    }
    Ok(())
}

#[test]
fn cuda_kth_largest_matches_sort() -> anyhow::Result<()> {
    let dev = device()?;
    // Ties, and a row as long as 1536x2560's (nb 240, 4 key segments).
    for (rows, n) in [(7, 1000), (3, 240 * 960)] {
        let x = common::tied_rows(rows, n, &dev)?;
        let r = Tensor::randn(0f32, 1., (rows, n), &dev)?;
        for rank in [0, 1, n / 3, n - 2, n - 1] {
            let got = flashvsr_kernels::kth_largest(&x, rank)?.to_vec1::<f32>()?;
            assert_eq!(
                got,
                common::kth_largest_by_sort(&x, rank)?,
                "ties [{rows},{n}] rank {rank}"
            );
            let got = flashvsr_kernels::kth_largest(&r, rank)?.to_vec1::<f32>()?;
            assert_eq!(
                got,
                common::kth_largest_by_sort(&r, rank)?,
                "randn [{rows},{n}] rank {rank}"
            );
        }
    }
    Ok(())
}

#[test]
fn hopper_kernel_matches_the_references_on_long_pipelines() -> anyhow::Result<()> {
    let dev = device()?;
    if !common::is_hopper(&dev)? {
        println!("not a compute capability 9.0 GPU: skipped");
        return Ok(());
    }
    for dtype in [DType::BF16, DType::F16] {
        let (max_abs, rel_l2) = tolerance(dtype);
        // Against the dense f64 reference: 40 key blocks, ~half selected, so each CTA cycles
        // through its K/V stages many times.
        let case = random_case(2, 16, 40, 128, dtype, 0.5, &dev)?;
        let reference = dense_reference(&case)?;
        for variant in [KernelVariant::Hopper, KernelVariant::HopperTma] {
            poison(&case.q)?;
            let out = BlockSparseAttention::new(case.scale)
                .with_variant(variant)
                .forward(&case.q, &case.k, &case.v, &case.mask)?;
            let e = errors(&out, &reference)?;
            let zeros = nonzero_in_empty_blocks(&out, &case.mask)?;
            println!(
                "long pipeline {dtype:?} {variant:?}: max abs {:.3e}, rel l2 {:.3e}, non-finite {}, nonzero in empty blocks {zeros}",
                e.max_abs, e.rel_l2, e.nan_count
            );
            assert!(e.nan_count == 0 && zeros == 0 && e.max_abs <= max_abs && e.rel_l2 <= rel_l2);
        }

        // FlashVSR's steady-state shape at 768x1408 (12 heads, 66 query blocks, 264 key
        // blocks, ~46% selected, token-major output as the DiT uses), against the mma2 kernel
        // (a dense f64 reference of this size would need 27 GB). Both Hopper kernels run the
        // online softmax per 64 keys in mma2's order: their outputs equal mma2's bit for bit.
        let case = random_case(12, 66, 264, 128, dtype, 0.46, &dev)?;
        let run = |variant| {
            BlockSparseAttention::new(case.scale)
                .with_variant(variant)
                .with_layout(flashvsr_kernels::OutputLayout::TokenMajor)
                .forward(&case.q, &case.k, &case.v, &case.mask)
        };
        let want = run(KernelVariant::TensorCore)?;
        for variant in [KernelVariant::Hopper, KernelVariant::HopperTma] {
            poison(&want)?;
            let got = run(variant)?;
            let e = errors(&got, &want)?;
            println!(
                "real shape {dtype:?} {variant:?} vs mma2: max abs {:.3e}, rel l2 {:.3e}, non-finite {}",
                e.max_abs, e.rel_l2, e.nan_count
            );
            assert!(
                e.nan_count == 0 && e.max_abs == 0.0,
                "{variant:?} differs from mma2"
            );
        }
    }
    Ok(())
}
