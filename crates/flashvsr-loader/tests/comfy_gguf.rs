//! ComfyUI-GGUF compatibility of the GGUFs `convert` writes: `general.architecture = wan` for the
//! DiT, `general.file_type`, modulations and patch embedding in F32; PyPI `gguf` reads them the way
//! ComfyUI-GGUF's loader does (scripts/comfy_gguf_check.py). Our own reader loads `wan` and old
//! `flashvsr` files alike.

use candle_core::{DType, Device, Tensor};
use flashvsr_loader::convert::{self, keep_f32, ConvertOptions, Quant};
use flashvsr_loader::WeightStore;

mod common;
use common::{bits, dit, python_gguf_available, run_script, write_npz, TINY};

fn convert_to(src: &str, out: &std::path::Path, quant: Option<Quant>) {
    let opts = ConvertOptions {
        quant,
        ..Default::default()
    };
    convert::convert(&[src], out, &opts).unwrap();
}

fn meta_str(s: &WeightStore, key: &str) -> Option<String> {
    s.metadata()
        .get(key)
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

fn file_type(s: &WeightStore) -> Option<i128> {
    s.metadata()
        .get("general.file_type")
        .and_then(|v| v.as_int())
}

/// The fixture DiT with every tensor in bf16 (upstream ships the DiT in bf16 too).
fn bf16_dit(dir: &std::path::Path) -> String {
    let src = WeightStore::open(&[dit()]).unwrap();
    let tensors: std::collections::HashMap<String, Tensor> = src
        .names()
        .into_iter()
        .map(|n| {
            let t = src.tensor(&n, DType::BF16, &Device::Cpu).unwrap();
            (n, t)
        })
        .collect();
    let p = dir.join("dit-bf16.safetensors");
    candle_core::safetensors::save(&tensors, &p).unwrap();
    p.display().to_string()
}

#[test]
fn dit_gguf_is_wan_with_file_type_and_f32_modulations() {
    let dir = tempfile::tempdir().unwrap();
    let bf16 = bf16_dit(dir.path());
    let mut cases: Vec<(String, Option<Quant>, i128)> = Quant::all()
        .into_iter()
        .map(|q| (dit(), Some(q), q.llama_file_type() as i128))
        .collect();
    cases.push((dit(), None, 0)); // fp32 source kept: ALL_F32
    cases.push((bf16.clone(), None, 32)); // bf16 source kept: MOSTLY_BF16
    for (src, quant, ftype) in cases {
        let out = dir.path().join("out.gguf");
        let _ = std::fs::remove_file(&out);
        convert_to(&src, &out, quant);
        let s = WeightStore::open(&[&out]).unwrap();
        assert_eq!(meta_str(&s, "general.architecture").as_deref(), Some("wan"));
        assert_eq!(file_type(&s), Some(ftype), "{src} {quant:?}");
        let mut kept = 0;
        for info in s.infos() {
            if keep_f32(&info.name) {
                assert_eq!(info.dtype, "F32", "{} under {quant:?}", info.name);
                kept += 1;
            }
        }
        // patch_embedding.weight, head.modulation and one modulation per block.
        assert!(kept >= 3, "{kept}");
    }
    assert!(keep_f32("blocks.11.modulation") && keep_f32("patch_embedding.weight"));
    assert!(!keep_f32("patch_embedding.bias") && !keep_f32("blocks.0.modulation_x"));
}

#[test]
fn architecture_is_an_option_and_both_load() {
    let dir = tempfile::tempdir().unwrap();
    // Other components are not Wan models.
    let tc = dir.path().join("tc.gguf");
    convert_to(&format!("{TINY}/TCDecoder.ckpt"), &tc, None);
    let s = WeightStore::open(&[&tc]).unwrap();
    assert_eq!(
        meta_str(&s, "general.architecture").as_deref(),
        Some("flashvsr")
    );
    // The architecture of files written before `wan` (and of `--arch flashvsr`) loads the same.
    let wan = dir.path().join("wan.gguf");
    convert_to(&dit(), &wan, Some(Quant::Q8_0));
    let old = dir.path().join("old.gguf");
    let opts = ConvertOptions {
        quant: Some(Quant::Q8_0),
        architecture: Some("flashvsr".into()),
        ..Default::default()
    };
    convert::convert(&[dit()], &old, &opts).unwrap();
    let (a, b) = (
        WeightStore::open(&[&wan]).unwrap(),
        WeightStore::open(&[&old]).unwrap(),
    );
    assert_eq!(
        meta_str(&b, "general.architecture").as_deref(),
        Some("flashvsr")
    );
    assert_eq!(a.names(), b.names());
    for n in a.names() {
        let x = a.tensor(&n, DType::F32, &Device::Cpu).unwrap();
        let y = b.tensor(&n, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(bits(&x), bits(&y), "{n}");
    }
}

#[test]
fn comfyui_gguf_loads_our_files() {
    if !python_gguf_available("comfyui_gguf_loads_our_files") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bf16 = bf16_dit(dir.path());
    // llama.cpp's file types: MOSTLY_F16, MOSTLY_BF16, MOSTLY_Q8_0, MOSTLY_Q4_K_M.
    for (label, src, quant, ftype) in [
        ("f16", dit(), Some(Quant::F16), 1),
        ("bf16-source", bf16, None, 32),
        ("q8_0", dit(), Some(Quant::Q8_0), 7),
        ("q4_k", dit(), Some(Quant::Q4K), 15),
    ] {
        let out = dir.path().join(format!("dit-{label}.gguf"));
        convert_to(&src, &out, quant);
        let converted = WeightStore::open(&[&out]).unwrap();
        let ours = dir.path().join(format!("{label}-ours.npz"));
        write_npz(&converted, &ours);
        let source = dir.path().join(format!("{label}-source.npz"));
        write_npz(&WeightStore::open(&[&src]).unwrap(), &source);
        let ftype = ftype.to_string();
        run_script(
            "comfy_gguf_check.py",
            &[
                out.as_os_str(),
                ours.as_os_str(),
                source.as_os_str(),
                ftype.as_ref(),
            ],
            label,
        );
    }
}
