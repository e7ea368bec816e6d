//! Upstream's weights folder through inspect, validate and convert: components are one per file
//! and reuse tensor names, so these tools take the files one by one; empty folders say so.

use flashvsr_loader::convert::{self, ConvertOptions, Quant};
use flashvsr_loader::layout::{self, CheckMode};
use flashvsr_loader::{inspect, LoadError, WeightStore};

mod common;
use common::upstream_folder;

const FILES: usize = 5;

#[test]
fn one_store_over_the_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    upstream_folder(dir.path());
    let e = WeightStore::open(&[dir.path()]).unwrap_err();
    assert!(matches!(e, LoadError::Duplicate { .. }), "{e}");
    let each = WeightStore::open_each(&[dir.path()]).unwrap();
    assert_eq!(each.len(), FILES);
}

#[test]
fn inspect_lists_every_file_with_its_own_tensors_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    upstream_folder(dir.path());
    let r = inspect::inspect(&[dir.path()]).unwrap();
    assert_eq!(r.files.len(), FILES);
    let each = WeightStore::open_each(&[dir.path()]).unwrap();
    for (entry, store) in r.files.iter().zip(&each) {
        assert_eq!(entry.tensor_count, store.len(), "{}", entry.path);
    }
    assert_eq!(r.tensors.len(), each.iter().map(|s| s.len()).sum::<usize>());
    let conv2: Vec<_> = r
        .tensors
        .iter()
        .filter(|t| t.name == "conv2.weight")
        .map(|t| t.file.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(conv2, ["LQ_proj_in.ckpt", "Wan2.1_VAE.pth"]);
    let text = r.to_string();
    assert!(text.contains("Wan2.1_VAE.pth (torch-zip"), "{text}");

    // Converted files keep their own metadata apart.
    let out = tempfile::tempdir().unwrap();
    convert::convert_each(&[dir.path()], out.path(), &ConvertOptions::default()).unwrap();
    let r = inspect::inspect(&[out.path()]).unwrap();
    let arch = |file: &str| {
        let f = r.files.iter().find(|f| f.path.ends_with(file)).unwrap();
        let (_, v) = f
            .metadata
            .iter()
            .find(|(k, _)| k == "general.architecture")
            .unwrap();
        v.as_str().unwrap().to_string()
    };
    assert_eq!(arch("diffusion_pytorch_model_streaming_dmd.gguf"), "wan");
    assert_eq!(arch("Wan2.1_VAE.gguf"), "flashvsr");
    let text = r.to_string();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("    general.architecture (str) = "))
        .collect();
    assert_eq!(lines.len(), FILES, "{text}");
    assert_eq!(
        lines.iter().filter(|l| l.contains("wan")).count(),
        1,
        "{text}"
    );
}

#[test]
fn empty_folders_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let e = inspect::inspect(&[dir.path()]).unwrap_err().to_string();
    assert!(
        e.contains("no weight files") && e.contains(&dir.path().display().to_string()),
        "{e}"
    );
    assert!(e.contains("the folder is empty"), "{e}");
    std::fs::write(dir.path().join("README.md"), "x").unwrap();
    let e = inspect::inspect(&[dir.path()]).unwrap_err().to_string();
    assert!(e.contains("holds 1 other file (README.md)"), "{e}");
    let e = layout::validate(&[dir.path()], "dit")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no weight files"), "{e}");
}

#[test]
fn validate_checks_the_file_that_holds_the_component() {
    let dir = tempfile::tempdir().unwrap();
    upstream_folder(dir.path());
    for (component, file) in [
        ("lq_proj_v1_1", "LQ_proj_in.ckpt"),
        ("wan_vae", "Wan2.1_VAE.pth"),
        ("tc_decoder", "TCDecoder.ckpt"),
        ("prompt", "posi_prompt.pth"),
    ] {
        let r = layout::validate_with(&[dir.path()], component, CheckMode::Structure).unwrap();
        assert!(r.is_ok(), "{r}");
        assert_eq!(r.files.len(), 1, "{r}");
        assert!(r.files[0].ends_with(file), "{r}");
        assert_eq!(r.skipped.len(), FILES - 1, "{r}");
        assert!(r.to_string().contains("skipped (other components)"), "{r}");
    }
    // The reduced DiT has 2 of 30 blocks: checked on its own, nothing unexpected.
    let r = layout::validate_with(&[dir.path()], "dit", CheckMode::Structure).unwrap();
    assert!(r.files[0].ends_with("diffusion_pytorch_model_streaming_dmd.safetensors"));
    assert!(r.unexpected.is_empty() && r.mismatched.is_empty(), "{r}");
    // A file that holds another component is still reported as such when given alone.
    let lq = dir.path().join("LQ_proj_in.ckpt");
    let r = layout::validate_with(&[&lq], "wan_vae", CheckMode::Structure).unwrap();
    assert!(!r.is_ok() && !r.unexpected.is_empty(), "{r}");
}

#[test]
fn convert_takes_the_folder_file_by_file() {
    let dir = tempfile::tempdir().unwrap();
    upstream_folder(dir.path());
    let out = tempfile::tempdir().unwrap();
    // Into one file: refused with what to do instead, nothing written.
    let one = out.path().join("all.gguf");
    let e = convert::convert(&[dir.path()], &one, &ConvertOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("is in both") && e.contains("different components") && e.contains("folder"),
        "{e}"
    );
    assert!(!one.exists());
    // Into a folder: one output per input file, each with the input's tensors.
    let opts = ConvertOptions {
        quant: Some(Quant::Q8_0),
        ..Default::default()
    };
    let folder = out.path().join("gguf");
    let reports = convert::convert_each(&[dir.path()], &folder, &opts).unwrap();
    assert_eq!(reports.len(), FILES);
    for (input, r) in WeightStore::open_each(&[dir.path()])
        .unwrap()
        .iter()
        .zip(&reports)
    {
        let stem = input.files()[0]
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(r.output, folder.join(format!("{stem}.gguf")));
        let got = WeightStore::open(&[&r.output]).unwrap();
        assert_eq!(got.names(), input.names(), "{stem}");
        for n in input.names() {
            assert_eq!(got.info(&n).unwrap().shape, input.info(&n).unwrap().shape);
        }
    }
    assert!(folder.join("Wan2.1_VAE.gguf").is_file());
}
