//! Upstream file formats of the tiny-v1.1 fixture: fp32 safetensors, bf16 and fp32 `.ckpt`,
//! the single-tensor `.pth` prompt; folders, duplicates and the VarBuilder backend.

use std::sync::Arc;

use candle_core::{DType, Device};
use flashvsr_loader::{Format, LoadError, WeightStore};

mod common;
use common::{bits, dit, FULL, TINY};

#[test]
fn safetensors_dit_matches_candle_reader() {
    let path = dit();
    let store = WeightStore::open(&[&path]).unwrap();
    let reference = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    assert_eq!(store.len(), reference.len());
    for (name, want) in &reference {
        let info = store.info(name).unwrap();
        assert_eq!(info.format, Format::Safetensors);
        assert_eq!(info.dtype, "F32");
        let got = store.tensor(name, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(got.dims(), want.dims(), "{name}");
        assert_eq!(bits(&got), bits(want), "{name}");
    }
    // Real DiT structure: the 5-D patch embedding and 3-D modulations.
    assert_eq!(store.info("patch_embedding.weight").unwrap().shape.len(), 5);
    assert_eq!(
        store.info("blocks.0.modulation").unwrap().shape[..2],
        [1, 6]
    );
}

#[test]
fn ckpt_bf16_equals_fp32_ckpt() {
    let bf = WeightStore::open(&[format!("{TINY}/LQ_proj_in.ckpt")]).unwrap();
    let fp = WeightStore::open(&[format!("{TINY}/LQ_proj_in.fp32.ckpt")]).unwrap();
    assert_eq!(bf.names(), fp.names());
    assert_eq!(bf.len(), 8);
    for name in bf.names() {
        let a = bf.info(&name).unwrap();
        assert_eq!(a.format, Format::TorchZip);
        assert_eq!(a.dtype, "BF16", "{name}");
        assert_eq!(fp.info(&name).unwrap().dtype, "F32", "{name}");
        let t = bf.tensor(&name, DType::BF16, &Device::Cpu).unwrap();
        assert_eq!(t.dtype(), DType::BF16);
        let f = fp.tensor(&name, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), f.dims(), "{name}");
        assert_eq!(bits(&t), bits(&f), "{name}");
    }
    assert_eq!(bf.info("conv1.weight").unwrap().shape.len(), 5);
    assert_eq!(bf.info("norm1.gamma").unwrap().shape[1..], [1, 1, 1]);
}

#[test]
fn single_tensor_pth_is_named_after_the_file() {
    let bf = WeightStore::open(&[format!("{TINY}/posi_prompt.pth")]).unwrap();
    assert_eq!(bf.names(), vec!["posi_prompt".to_string()]);
    let info = bf.info("posi_prompt").unwrap();
    assert_eq!(info.shape, vec![1, 16, 64]);
    assert_eq!(info.dtype, "BF16");
    let fp = WeightStore::open(&[format!("{TINY}/posi_prompt.fp32.pth")]).unwrap();
    let a = bf.tensor("posi_prompt", DType::F32, &Device::Cpu).unwrap();
    let b = fp
        .tensor("posi_prompt.fp32", DType::F32, &Device::Cpu)
        .unwrap();
    assert_eq!(bits(&a), bits(&b));
}

#[test]
fn tc_decoder_and_wan_vae_pickles_load() {
    let tc = WeightStore::open(&[format!("{TINY}/TCDecoder.ckpt")]).unwrap();
    assert_eq!(tc.len(), 66);
    for n in tc.names() {
        let t = tc.tensor(&n, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), tc.info(&n).unwrap().shape.as_slice());
    }
    let vae = WeightStore::open(&[format!("{FULL}/Wan2.1_VAE.pth")]).unwrap();
    assert!(vae.contains("decoder.conv1.weight"));
    assert_eq!(vae.info("decoder.conv1.weight").unwrap().shape.len(), 5);
    let t = vae
        .tensor("conv2.weight", DType::F32, &Device::Cpu)
        .unwrap();
    assert_eq!(t.rank(), 5);
}

#[test]
fn duplicate_names_across_files_name_both_files() {
    let e = WeightStore::open(&[
        format!("{TINY}/LQ_proj_in.ckpt"),
        format!("{TINY}/LQ_proj_in.fp32.ckpt"),
    ])
    .unwrap_err();
    assert!(matches!(e, LoadError::Duplicate { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("LQ_proj_in.ckpt") && msg.contains("LQ_proj_in.fp32.ckpt"),
        "{msg}"
    );
}

#[test]
fn same_file_twice_is_read_once() {
    let p = format!("{TINY}/TCDecoder.ckpt");
    let q = format!("{TINY}/../tiny-v1.1/TCDecoder.ckpt");
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("link.ckpt");
    std::os::unix::fs::symlink(&p, &link).unwrap();
    let store = WeightStore::open(&[p.clone(), q, link.display().to_string()]).unwrap();
    assert_eq!(store.files().len(), 1);
    assert_eq!(store.len(), 66);
}

#[test]
fn folder_of_components() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["TCDecoder.ckpt", "posi_prompt.pth", "LQ_proj_in.ckpt"] {
        std::os::unix::fs::symlink(format!("{TINY}/{f}"), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("README.md"), "not weights").unwrap();
    let store = WeightStore::open(&[dir.path()]).unwrap();
    assert_eq!(store.files().len(), 3);
    assert_eq!(store.len(), 66 + 1 + 8);
}

#[test]
fn var_builder_reads_and_reshapes() {
    let store = Arc::new(WeightStore::open(&[dit()]).unwrap());
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    let dims = store.info("blocks.0.modulation").unwrap().shape.clone();
    let squeezed: Vec<usize> = dims.iter().copied().filter(|&d| d != 1).collect();
    let m = vb
        .pp("blocks")
        .pp("0")
        .get(squeezed.as_slice(), "modulation")
        .unwrap();
    assert_eq!(m.dims(), squeezed.as_slice());
    let e = vb.get((3, 3), "head.head.weight").unwrap_err().to_string();
    assert!(
        e.contains("head.head.weight") && e.contains("shape mismatch"),
        "{e}"
    );
    assert!(vb.contains_tensor("head.modulation"));
    let bf = vb
        .get_unchecked_dtype("head.modulation", DType::BF16)
        .unwrap();
    assert_eq!(bf.dtype(), DType::BF16);
}
