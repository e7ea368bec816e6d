//! The DiT's linear weights kept quantized (issue 14): a GGUF from `flashvsr convert --quant`
//! and `upscale --quantize-dit` on the float file give the same frames (same quantizer, same
//! weights), close to the dense model's but not equal to them (the weights really are
//! quantized), on the fixture weights on the CPU.

mod support;

use std::path::Path;

use support::{flashvsr, ok, tiny, y4m_bytes};

/// Frames of a 4:4:4 y4m output as bytes (header included).
fn run(home: &Path, weights: &Path, out: &str, extra: &[&str]) -> Vec<u8> {
    let input = home.join("in.y4m");
    if !input.exists() {
        std::fs::write(&input, y4m_bytes(32, 32, 5)).unwrap();
    }
    let o = flashvsr(home)
        .arg("upscale")
        .arg(&input)
        .arg(home.join(out))
        .arg("--weights")
        .arg(weights)
        .args(["--head-dim", "32", "--device", "cpu", "-q", "-y"])
        .args(extra)
        .output()
        .unwrap();
    ok(&o);
    std::fs::read(home.join(out)).unwrap()
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let se: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    10.0 * (255.0f64.powi(2) / (se / a.len() as f64)).log10()
}

#[test]
fn quantized_gguf_and_quantize_at_load_agree_and_stay_close_to_dense() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let w = home.join("w");
    std::fs::create_dir(&w).unwrap();
    ok(&flashvsr(home)
        .arg("convert")
        .arg(tiny().join("diffusion_pytorch_model_streaming_dmd.safetensors"))
        .arg(w.join("flashvsr-dit.gguf"))
        .args(["--quant", "q8_0"])
        .output()
        .unwrap());
    for f in ["LQ_proj_in.ckpt", "TCDecoder.ckpt", "posi_prompt.pth"] {
        std::fs::copy(tiny().join(f), w.join(f)).unwrap();
    }

    let dense = run(home, &tiny(), "dense.y4m", &[]);
    let from_gguf = run(home, &w, "gguf.y4m", &[]);
    let at_load = run(home, &tiny(), "at_load.y4m", &["--quantize-dit", "q8_0"]);
    assert!(
        from_gguf == at_load,
        "a q8_0 GGUF and --quantize-dit q8_0 should give the same frames"
    );
    assert!(
        dense != at_load,
        "--quantize-dit q8_0 left the output unchanged"
    );
    let db = psnr(&dense, &at_load);
    eprintln!("q8_0 vs dense: {db:.2} dB");
    // 58.7 dB measured on these fixture weights (x86-64, 2026-12-06).
    assert!(db > 50.0, "q8_0 vs dense: {db:.1} dB");
}

#[test]
fn quantize_dit_refuses_float_types() {
    let tmp = tempfile::tempdir().unwrap();
    let o = flashvsr(tmp.path())
        .args(["upscale", "in.y4m", "out.y4m", "--quantize-dit", "f16"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not a quantized type"), "{err}");
}

#[test]
fn quantize_dit_fp8_changes_the_frames_and_stays_close_to_dense() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let dense = run(home, &tiny(), "dense.y4m", &[]);
    let fp8 = run(home, &tiny(), "fp8.y4m", &["--quantize-dit", "fp8"]);
    assert!(dense != fp8, "--quantize-dit fp8 left the output unchanged");
    let db = psnr(&dense, &fp8);
    eprintln!("fp8 vs dense: {db:.2} dB");
    // 52.5 dB measured on these fixture weights (x86-64, 2026-12-07): e4m3 keeps 3 mantissa
    // bits of weights and activations, q8_0 8 bits of the weights (58.7 dB above).
    assert!(db > 45.0, "fp8 vs dense: {db:.1} dB");
}
