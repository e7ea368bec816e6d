//! The implicit conv's Candle path (every device without the kernel, the CPU included)
//! against the plain-loop f64 reference: the addressing (concat, previous frame + memory,
//! grouped frames, upsample) and the epilogue mean what the kernel computes.

mod conv_common;

use candle_core::{DType, Device};
use conv_common::{cases, errors, random_case, reference, run};

#[test]
fn candle_path_matches_f64_reference() -> anyhow::Result<()> {
    // The two biggest cases take long in a debug build; the rest cover every feature.
    for spec in cases().into_iter().filter(|s| s.flop() < 5e8) {
        let case = random_case(spec, DType::F32)?;
        let got = run(&case, DType::F32, &Device::Cpu, None)?;
        let (oh, ow) = spec.out_hw();
        assert_eq!(got.dims(), &[spec.frames, oh, ow, spec.cout]);
        let (rel, max, finite) = errors(&got, &reference(&case))?;
        assert!(
            finite && rel < 1e-5 && max < 1e-4,
            "{spec:?}: rel {rel:.2e} max {max:.2e}"
        );
    }
    Ok(())
}

#[test]
fn bad_calls_are_refused() -> anyhow::Result<()> {
    use candle_core::Tensor;
    use flashvsr_kernels::implicit_conv::{conv2d_nhwc, ConvEpilogue, PackedConv, Source};
    let dev = Device::Cpu;
    let w = Tensor::zeros((4, 8, 3, 3), DType::F32, &dev)?;
    let conv = PackedConv::new(&w, None, DType::F32)?;
    let x = Tensor::zeros((2, 5, 5, 8), DType::F32, &dev)?;
    let wrong_c = Tensor::zeros((2, 5, 5, 4), DType::F32, &dev)?;
    let ep = ConvEpilogue::default();
    assert!(conv2d_nhwc(&conv, &[Source::new(&x)], false, ep).is_ok());
    assert!(conv2d_nhwc(&conv, &[Source::new(&wrong_c)], false, ep).is_err());
    assert!(conv2d_nhwc(&conv, &[Source::new(&x), Source::new(&x)], false, ep).is_err());
    assert!(conv2d_nhwc(&conv, &[Source::grouped(&x, 3)], false, ep).is_err());
    let bad_res = Tensor::zeros((2, 5, 5, 3), DType::F32, &dev)?;
    let ep_bad = ConvEpilogue {
        residual: Some(&bad_res),
        relu: false,
    };
    assert!(conv2d_nhwc(&conv, &[Source::new(&x)], false, ep_bad).is_err());
    let even = Tensor::zeros((4, 8, 2, 2), DType::F32, &dev)?;
    assert!(PackedConv::new(&even, None, DType::F32).is_err());
    Ok(())
}
