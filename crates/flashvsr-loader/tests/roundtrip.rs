//! Round trips: torch writer -> reader, safetensors -> GGUF (every --quant) -> tensors,
//! GGUF -> safetensors, and gguf-py reading our GGUF files.

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};
use flashvsr_loader::convert::{self, ConvertOptions, Quant};
use flashvsr_loader::{torch_writer, ShapeSource, WeightStore};

mod common;
use common::{bits, dit, python_gguf_available, run_script, write_npz, TINY};

#[test]
fn torch_writer_round_trip() {
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1., (4, 3, 2, 3, 3), &dev).unwrap();
    let b = Tensor::randn(0f32, 1., (7,), &dev)
        .unwrap()
        .to_dtype(DType::F16)
        .unwrap();
    let c = Tensor::randn(0f32, 1., (1, 6, 5), &dev)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("state.ckpt");
    torch_writer::write_state_dict(
        &p,
        &[
            ("a.weight".into(), a.clone()),
            ("b".into(), b.clone()),
            ("c.modulation".into(), c.clone()),
        ],
    )
    .unwrap();
    let s = WeightStore::open(&[&p]).unwrap();
    assert_eq!(s.names(), vec!["a.weight", "b", "c.modulation"]);
    for (n, t) in [("a.weight", &a), ("b", &b), ("c.modulation", &c)] {
        let got = s.tensor(n, t.dtype(), &dev).unwrap();
        assert_eq!(got.dims(), t.dims());
        assert_eq!(bits(&got), bits(t), "{n}");
    }
    let q = dir.path().join("posi_prompt.pth");
    torch_writer::write_single_tensor(&q, &c).unwrap();
    let s = WeightStore::open(&[&q]).unwrap();
    assert_eq!(
        bits(&s.tensor("posi_prompt", DType::BF16, &dev).unwrap()),
        bits(&c)
    );
    // No temporary files are left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

/// Relative RMS error bound of each quant type on Gaussian-like weights.
fn bound(q: Quant) -> f32 {
    match q {
        Quant::F32 => 0.0,
        Quant::F16 => 1e-3,
        Quant::BF16 => 8e-3,
        Quant::Q8_0 => 0.01,
        Quant::Q6K => 0.03,
        Quant::Q5K => 0.06,
        Quant::Q4K => 0.12,
        Quant::Q4_0 => 0.15,
    }
}

/// Root mean square of all elements.
fn rms(t: &Tensor) -> f32 {
    t.sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .sqrt()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn safetensors_to_gguf_every_quant() {
    let dev = Device::Cpu;
    let src = WeightStore::open(&[dit()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for q in Quant::all() {
        let out = dir.path().join(format!("dit-{}.gguf", q.name()));
        let opts = ConvertOptions {
            quant: Some(q),
            flashvsr_version: Some("1.1".into()),
            component: Some("dit".into()),
            ..Default::default()
        };
        let report = convert::convert(&[dit()], &out, &opts).unwrap();
        assert_eq!(report.tensors.len(), src.len());
        let got = WeightStore::open(&[&out]).unwrap();
        assert_eq!(got.names(), src.names());
        assert_eq!(got.metadata()["flashvsr.version"].as_str(), Some("1.1"));
        assert_eq!(got.metadata()["flashvsr.component"].as_str(), Some("dit"));
        let pe = got.info("patch_embedding.weight").unwrap();
        assert_eq!(pe.shape_source, ShapeSource::OrigShape);
        assert_eq!(pe.stored_shape.len(), 4);
        let mut quantized = 0;
        for name in src.names() {
            let orig = src.tensor(&name, DType::F32, &dev).unwrap();
            let info = got.info(&name).unwrap();
            assert_eq!(info.shape, src.info(&name).unwrap().shape, "{name}");
            let back = got.tensor(&name, DType::F32, &dev).unwrap();
            let kept = convert::keep_high_precision(&name) || info.shape.len() != 2;
            if kept {
                assert!(
                    ["F32", "F16", "BF16"].contains(&info.dtype.as_str()),
                    "{name}: {}",
                    info.dtype
                );
            }
            match info.dtype.as_str() {
                "F32" => assert_eq!(bits(&back), bits(&orig), "{name}"),
                "F16" => assert_eq!(
                    bits(&back),
                    bits(&orig.to_dtype(DType::F16).unwrap()),
                    "{name}"
                ),
                "BF16" => assert_eq!(
                    bits(&back),
                    bits(&orig.to_dtype(DType::BF16).unwrap()),
                    "{name}"
                ),
                _ => {
                    quantized += 1;
                    // Bit-exact against candle's own quantize + dequantize ...
                    let reference = QTensor::quantize(&orig, q.ggml())
                        .unwrap()
                        .dequantize(&dev)
                        .unwrap();
                    assert_eq!(bits(&back), bits(&reference), "{name}");
                    // ... and within the type's known error.
                    let err = rms(&(&back - &orig).unwrap());
                    let norm = rms(&orig);
                    assert!(
                        err <= bound(q) * norm,
                        "{name} {q:?}: rel rmse {}",
                        err / norm
                    );
                }
            }
        }
        if !q.is_float() {
            assert!(quantized > 0, "{q:?} quantized nothing");
        }
    }
}

#[test]
fn gguf_to_safetensors_dequantizes() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("dit.gguf");
    convert::convert(
        &[dit()],
        &g,
        &ConvertOptions {
            quant: Some(Quant::Q8_0),
            ..Default::default()
        },
    )
    .unwrap();
    let s = dir.path().join("dit.safetensors");
    convert::convert(&[&g], &s, &ConvertOptions::default()).unwrap();
    let a = WeightStore::open(&[&g]).unwrap();
    let b = WeightStore::open(&[&s]).unwrap();
    // candle's own safetensors reader agrees.
    let plain = candle_core::safetensors::load(&s, &dev).unwrap();
    for name in a.names() {
        let x = a.tensor(&name, DType::F32, &dev).unwrap();
        let y = b.tensor(&name, DType::F32, &dev).unwrap();
        assert_eq!(x.dims(), y.dims(), "{name}");
        assert_eq!(bits(&x), bits(&y), "{name}");
        assert_eq!(bits(&plain[&name]), bits(&y), "{name}");
    }
    // bf16 checkpoint -> safetensors keeps bf16.
    let lq = dir.path().join("lq.safetensors");
    convert::convert(
        &[format!("{TINY}/LQ_proj_in.ckpt")],
        &lq,
        &ConvertOptions::default(),
    )
    .unwrap();
    let l = WeightStore::open(&[&lq]).unwrap();
    assert_eq!(l.info("conv1.weight").unwrap().dtype, "BF16");
}

#[test]
fn failed_conversion_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    let e = convert::convert(
        &[dit()],
        &out,
        &ConvertOptions {
            quant: Some(Quant::Q4K),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("safetensors"), "{e}");
    let out = dir.path().join("x.bin");
    assert!(convert::convert(&[dit()], &out, &ConvertOptions::default()).is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn gguf_py_reads_our_files() {
    if !python_gguf_available("gguf_py_reads_our_files") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for q in [Quant::F16, Quant::Q8_0, Quant::Q4K] {
        let out = dir.path().join(format!("dit-{}.gguf", q.name()));
        convert::convert(
            &[dit()],
            &out,
            &ConvertOptions {
                quant: Some(q),
                ..Default::default()
            },
        )
        .unwrap();
        // Our own dequantized values, for the script to compare with.
        let npz = dir.path().join(format!("dit-{}.npz", q.name()));
        write_npz(&WeightStore::open(&[&out]).unwrap(), &npz);
        run_script(
            "gguf_roundtrip.py",
            &[out.as_os_str(), npz.as_os_str()],
            &format!("{q:?}"),
        );
    }
}
