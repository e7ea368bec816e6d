//! `synth-weights`, `inspect`, `validate`, `convert` and `bench` through the binary, and the
//! weights they write used by `upscale` (GGUF version metadata included).

mod support;

use std::path::{Path, PathBuf};

use support::{flashvsr, ok, tiny};

fn tiny_y4m(dir: &Path) -> PathBuf {
    let (w, h) = (16, 16);
    let mut v = format!("YUV4MPEG2 W{w} H{h} F30:1 C444 XCOLORRANGE=FULL\nFRAME\n").into_bytes();
    v.extend((0..w * h * 3).map(|i| (i * 7 % 251) as u8));
    let p = dir.join("in.y4m");
    std::fs::write(&p, v).unwrap();
    p
}

#[test]
fn synth_small_weights_validate_and_upscale() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("w");
    let out = ok(&flashvsr(tmp.path())
        .arg("synth-weights")
        .arg(&dir)
        .output()
        .unwrap());
    assert!(out.contains("meaningless"), "{out}");
    for f in [
        "diffusion_pytorch_model_streaming_dmd.safetensors",
        "LQ_proj_in.ckpt",
        "TCDecoder.ckpt",
        "Wan2.1_VAE.pth",
        "posi_prompt.pth",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    // Formats and layouts as upstream ships them.
    let o = flashvsr(tmp.path())
        .arg("validate")
        .arg(dir.join("TCDecoder.ckpt"))
        .args(["--against", "tc_decoder", "--structure"])
        .output()
        .unwrap();
    ok(&o);
    let o = flashvsr(tmp.path())
        .arg("inspect")
        .arg(dir.join("LQ_proj_in.ckpt"))
        .arg("--json")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(
        v["files"][0]["format"], "torchzip",
        "LQ_proj_in.ckpt is a torch zip like upstream's"
    );
    assert!(
        v["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["dtype"] == "BF16"),
        "LQ projection is bf16 like upstream"
    );
    // Without -y, existing files are kept.
    let o = flashvsr(tmp.path())
        .arg("synth-weights")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));

    // The small weights run without any hidden option.
    let input = tiny_y4m(tmp.path());
    let o = flashvsr(tmp.path())
        .arg("upscale")
        .arg(&input)
        .arg("o.y4m")
        .arg("--weights")
        .arg(&dir)
        .args(["--device", "cpu"])
        .output()
        .unwrap();
    ok(&o);
    assert!(std::fs::read(tmp.path().join("o.y4m"))
        .unwrap()
        .starts_with(b"YUV4MPEG2 W64 H64"));
}

#[test]
fn converted_gguf_dit_is_used_and_its_version_read() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    std::fs::create_dir(&w).unwrap();
    let gguf = w.join("flashvsr-dit.gguf");
    let o = flashvsr(tmp.path())
        .arg("convert")
        .arg(tiny().join("diffusion_pytorch_model_streaming_dmd.safetensors"))
        .arg(&gguf)
        .args(["--quant", "q8_0", "--model-version", "v1"])
        .output()
        .unwrap();
    ok(&o);
    let v: serde_json::Value = serde_json::from_str(&ok(&flashvsr(tmp.path())
        .arg("inspect")
        .arg(&gguf)
        .arg("--json")
        .output()
        .unwrap()))
    .unwrap();
    assert!(v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["dtype"] == "Q8_0"));
    // Converting again without -y refuses.
    let o = flashvsr(tmp.path())
        .arg("convert")
        .arg(tiny().join("TCDecoder.ckpt"))
        .arg(&gguf)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));

    for f in ["LQ_proj_in.ckpt", "TCDecoder.ckpt", "posi_prompt.pth"] {
        std::fs::copy(tiny().join(f), w.join(f)).unwrap();
    }
    let input = tiny_y4m(tmp.path());
    let o = flashvsr(tmp.path())
        .arg("upscale")
        .arg(&input)
        .arg("o.y4m")
        .arg("--weights")
        .arg(&w)
        .args(["--head-dim", "32", "--device", "cpu", "--json"])
        .output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(
        s["settings"]["model_version"], "v1",
        "version from the GGUF metadata"
    );
    assert_eq!(s["settings"]["model_version_source"], "gguf_metadata");
    assert_eq!(s["output_frames"], 1);
}

#[test]
fn bench_small_reports_json() {
    let tmp = tempfile::tempdir().unwrap();
    let o = flashvsr(tmp.path())
        .args([
            "bench", "--dims", "small", "--size", "64x64", "--frames", "2", "--device", "cpu",
            "--json",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v["output_size"], serde_json::json!([64, 64]));
    assert_eq!(v["output_frames"], 2);
    assert!(v["fps"].as_f64().unwrap() > 0.0);
    assert!(v["peak_ram_bytes"].as_u64().unwrap() > 0);
}
