//! `inspect`, `validate` and `convert` on upstream's weights folder through the binary: the
//! components are one per file and reuse tensor names (`conv2.weight` is in both the LQ
//! projection and the Wan VAE), so each file is taken on its own; an empty folder says so.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::{fixtures, flashvsr, ok as stdout_of};

// Upstream's file names; the VAE from the full-mode fixture, the rest from the tiny one.
const FILES: [(&str, &str); 5] = [
    (
        "tiny-v1.1",
        "diffusion_pytorch_model_streaming_dmd.safetensors",
    ),
    ("tiny-v1.1", "LQ_proj_in.ckpt"),
    ("tiny-v1.1", "TCDecoder.ckpt"),
    ("tiny-v1.1", "posi_prompt.pth"),
    ("full-v1.1", "Wan2.1_VAE.pth"),
];

fn upstream_folder(dir: &Path) -> PathBuf {
    let w = dir.join("FlashVSR-v1.1");
    std::fs::create_dir(&w).unwrap();
    for (fixture, name) in FILES {
        std::fs::copy(fixtures().join(fixture).join(name), w.join(name)).unwrap();
    }
    w
}

/// Exit code 1 with one `error:` line; the whole stderr.
fn stderr_of_failure(o: &Output) -> String {
    support::assert_error(o, &[]);
    support::stderr(o)
}

#[test]
fn inspect_takes_the_weights_folder_file_by_file() {
    let tmp = tempfile::tempdir().unwrap();
    let w = upstream_folder(tmp.path());
    let o = flashvsr(tmp.path())
        .arg("inspect")
        .arg(&w)
        .arg("--json")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&stdout_of(&o)).unwrap();
    assert_eq!(v["files"].as_array().unwrap().len(), FILES.len());
    let conv2: Vec<&str> = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "conv2.weight")
        .map(|t| t["file"].as_str().unwrap())
        .collect();
    assert_eq!(conv2.len(), 2, "{conv2:?}");
    let text = stdout_of(
        &flashvsr(tmp.path())
            .arg("inspect")
            .arg(&w)
            .output()
            .unwrap(),
    );
    for (_, name) in FILES {
        assert!(
            text.contains(&format!("{name} (")),
            "{name} missing:\n{text}"
        );
    }
}

#[test]
fn inspect_of_an_empty_folder_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("weights");
    std::fs::create_dir(&empty).unwrap();
    let e = stderr_of_failure(
        &flashvsr(tmp.path())
            .arg("inspect")
            .arg(&empty)
            .output()
            .unwrap(),
    );
    assert!(
        e.contains("no weight files") && e.contains("weights: the folder is empty"),
        "{e}"
    );
    std::fs::write(empty.join("notes.txt"), "x").unwrap();
    let e = stderr_of_failure(
        &flashvsr(tmp.path())
            .arg("inspect")
            .arg(&empty)
            .output()
            .unwrap(),
    );
    assert!(e.contains("holds 1 other file (notes.txt)"), "{e}");
}

#[test]
fn validate_checks_the_file_holding_the_component() {
    let tmp = tempfile::tempdir().unwrap();
    let w = upstream_folder(tmp.path());
    for (component, file) in [
        ("lq_proj_v1_1", "LQ_proj_in.ckpt"),
        ("wan_vae", "Wan2.1_VAE.pth"),
        ("tc_decoder", "TCDecoder.ckpt"),
    ] {
        let o = flashvsr(tmp.path())
            .arg("validate")
            .arg(&w)
            .args(["--against", component, "--structure", "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&stdout_of(&o)).unwrap();
        let files = v["files"].as_array().unwrap();
        assert_eq!(files.len(), 1, "{v}");
        assert!(files[0].as_str().unwrap().ends_with(file), "{v}");
        assert_eq!(v["skipped"].as_array().unwrap().len(), FILES.len() - 1);
    }
}

#[test]
fn convert_folder_into_a_folder_and_upscale_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let w = upstream_folder(tmp.path());
    // One output file for several components: refused, with the way out.
    let e = stderr_of_failure(
        &flashvsr(tmp.path())
            .arg("convert")
            .arg(&w)
            .arg("all.gguf")
            .output()
            .unwrap(),
    );
    assert!(
        e.contains("is in both") && e.contains("different components"),
        "{e}"
    );
    assert!(!tmp.path().join("all.gguf").exists());
    // Into a folder: one GGUF per file.
    let o = flashvsr(tmp.path())
        .arg("convert")
        .arg(&w)
        .arg("gguf/")
        .args(["--quant", "q8_0", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&stdout_of(&o)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), FILES.len());
    let out = tmp.path().join("gguf");
    for (_, name) in FILES {
        let stem = name.rsplit_once('.').unwrap().0;
        assert!(out.join(format!("{stem}.gguf")).is_file(), "{stem}.gguf");
    }
    // Again without -y: refused; --component with several files: refused.
    let o = flashvsr(tmp.path())
        .arg("convert")
        .arg(&w)
        .arg("gguf/")
        .output()
        .unwrap();
    assert!(stderr_of_failure(&o).contains("already exists"));
    let o = flashvsr(tmp.path())
        .arg("convert")
        .arg(&w)
        .arg("other/")
        .args(["--component", "dit"])
        .output()
        .unwrap();
    assert!(stderr_of_failure(&o).contains("--component"));

    // The converted folder is a weights folder (the DiT's GGUF says `wan`).
    let o = flashvsr(tmp.path())
        .arg("inspect")
        .arg(out.join("diffusion_pytorch_model_streaming_dmd.gguf"))
        .arg("--json")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&stdout_of(&o)).unwrap();
    let meta = v["files"][0]["metadata"].as_array().unwrap();
    assert!(
        meta.iter()
            .any(|kv| kv[0] == "general.architecture" && kv[1]["value"] == "wan"),
        "{meta:?}"
    );
    let (w16, h16) = (16, 16);
    let mut y4m =
        format!("YUV4MPEG2 W{w16} H{h16} F30:1 C444 XCOLORRANGE=FULL\nFRAME\n").into_bytes();
    y4m.extend((0..w16 * h16 * 3).map(|i| (i * 7 % 251) as u8));
    std::fs::write(tmp.path().join("in.y4m"), y4m).unwrap();
    let o = flashvsr(tmp.path())
        .args(["upscale", "in.y4m", "o.y4m", "--weights"])
        .arg(&out)
        .args(["--head-dim", "32", "--device", "cpu", "--json"])
        .output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_str(&stdout_of(&o)).unwrap();
    assert_eq!(s["output_frames"], 1);
}

#[test]
fn validate_json_failures_are_one_object_with_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let w = upstream_folder(tmp.path());
    // A mismatch: the report goes into the failure object, on one line.
    let o = flashvsr(tmp.path())
        .arg("validate")
        .arg(w.join("TCDecoder.ckpt"))
        .args(["--against", "lq_proj_v1_1", "--structure", "--json"])
        .output()
        .unwrap();
    support::assert_error(&o, &["do not match", "lq_proj_v1_1"]);
    let out = support::stdout(&o);
    assert_eq!(out.lines().count(), 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["command"].as_str(), v["ok"].as_bool()),
        (Some("validate"), Some(false))
    );
    assert_eq!(v["report"]["component"], "lq_proj_v1_1", "{v}");
    assert!(
        !v["report"]["missing"].as_array().unwrap().is_empty(),
        "{v}"
    );
    // An error before any report: the plain failure object.
    let o = flashvsr(tmp.path())
        .arg("validate")
        .arg(&w)
        .args(["--against", "no_such_part", "--json"])
        .output()
        .unwrap();
    support::assert_error(&o, &["unknown component"]);
    let v: serde_json::Value = serde_json::from_str(&support::stdout(&o)).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v.get("report").is_none(), "{v}");
}

#[test]
fn convert_removes_the_temporary_files_of_killed_conversions() {
    let tmp = tempfile::tempdir().unwrap();
    let w = upstream_folder(tmp.path());
    let dead = u32::MAX - 1; // above any pid_max
    let stale = tmp.path().join(format!(".lq.gguf.tmp-{dead}"));
    let other = tmp.path().join("lq.gguf.tmp-1"); // not hidden: not ours
    std::fs::write(&stale, b"half a file").unwrap();
    std::fs::write(&other, b"x").unwrap();
    stdout_of(
        &flashvsr(tmp.path())
            .arg("convert")
            .arg(w.join("LQ_proj_in.ckpt"))
            .arg("lq.gguf")
            .output()
            .unwrap(),
    );
    assert!(tmp.path().join("lq.gguf").is_file());
    assert!(!stale.exists(), "the stale temporary file is still there");
    assert!(other.exists());
}
