//! Shared by the loader's integration tests: fixture paths and bitwise tensor comparison.
#![allow(dead_code)] // each test file uses a part

use candle_core::{DType, Tensor};

/// The reduced v1.1 model in the upstream file formats (`../shared/fixtures`).
pub const TINY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/tiny-v1.1"
);
/// Like [`TINY`] with the Wan VAE for full mode.
pub const FULL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/full-v1.1"
);
/// GGUF files written by gguf-py and a byte writer, each with `<stem>.expected.{json,npz}`.
pub const GGUF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/gguf");
/// Seed corpus of the fuzz targets.
pub const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus");

/// The fixture DiT (fp32 safetensors).
pub fn dit() -> String {
    format!("{TINY}/diffusion_pytorch_model_streaming_dmd.safetensors")
}

/// The f32 bit patterns of `t` (converted to f32 first), flattened: for exact comparisons.
pub fn bits(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// Upstream's weights folder (the fixtures' reduced files under their upstream names, linked
/// into `dir`) plus a README: the LQ projection and the Wan VAE both hold `conv2.weight`.
pub fn upstream_folder(dir: &std::path::Path) {
    for (from, name) in [
        (FULL, "diffusion_pytorch_model_streaming_dmd.safetensors"),
        (FULL, "LQ_proj_in.ckpt"),
        (TINY, "TCDecoder.ckpt"),
        (FULL, "Wan2.1_VAE.pth"),
        (FULL, "posi_prompt.pth"),
    ] {
        std::os::unix::fs::symlink(format!("{from}/{name}"), dir.join(name)).unwrap();
    }
    std::fs::write(dir.join("README.md"), "weights").unwrap();
}

/// Whether python3 with PyPI `gguf` and numpy is there (CI installs them); if not, `test` says
/// it is skipped.
pub fn python_gguf_available(test: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import gguf, numpy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIPPED {test}: python3 with the `gguf` package is not available (pip install gguf numpy)");
    }
    ok
}

/// Runs `scripts/<script>` with `args` and asserts that it succeeds (`what` names the case).
pub fn run_script(script: &str, args: &[&std::ffi::OsStr], what: &str) {
    let path = format!("{}/../../scripts/{script}", env!("CARGO_MANIFEST_DIR"));
    let o = std::process::Command::new("python3")
        .arg(path)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Every tensor of `store` as f32 in its PyTorch shape, into an npz (for the Python checks).
pub fn write_npz(store: &flashvsr_loader::WeightStore, path: &std::path::Path) {
    let tensors: Vec<(String, Tensor)> = store
        .names()
        .into_iter()
        .map(|n| {
            let t = store
                .tensor(&n, DType::F32, &candle_core::Device::Cpu)
                .unwrap();
            (n, t)
        })
        .collect();
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_npz(&refs, path).unwrap();
}
