//! Errors that happen before the model runs: usage, paths, overwrite protection, corrupt
//! input, missing or wrong weights, ffmpeg missing. Each must be one clear `error:` line, exit
//! code 1 (2 for usage errors), and leave no output behind.

mod support;

use std::path::Path;

use support::{assert_error, fixtures, flashvsr, names_in, stderr, tiny};

#[test]
fn help_shows_examples_and_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let o = flashvsr(tmp.path())
        .args(["upscale", "--help"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "Examples:",
        "--scale",
        "--mode",
        "--tile",
        "--weights",
        "--model-version",
        "default: v1.1",
        "--frames",
    ] {
        assert!(text.contains(needle), "help lacks {needle}: {text}");
    }
    assert!(!text.contains("--head-dim"), "hidden test option shown");
}

#[test]
fn usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        vec!["upscale", "a.mp4", "b.mp4", "--mode", "huge"],
        vec!["upscale", "a.mp4", "b.mp4", "--scale", "0.5"],
        vec!["upscale", "a.mp4", "b.mp4", "--frames", "10:5"],
        vec!["upscale", "a.mp4", "b.mp4", "--device", "tpu"],
        vec!["upscale", "a.mp4"],
        vec!["frobnicate"],
    ] {
        let o = flashvsr(tmp.path()).args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn missing_input_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let o = flashvsr(tmp.path())
        .args(["upscale", "nope.y4m", "out.y4m"])
        .output()
        .unwrap();
    assert_error(&o, &["nope.y4m", "does not exist"]);
    assert!(!tmp.path().join("out.y4m").exists());
}

#[test]
fn existing_output_is_never_replaced_without_y() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.y4m");
    std::fs::write(&out, b"precious").unwrap();
    // No weights anywhere: the overwrite check must come first anyway.
    let o = flashvsr(tmp.path())
        .args(["upscale"])
        .arg(tiny().join("input.y4m"))
        .arg(&out)
        .output()
        .unwrap();
    assert_error(&o, &["already exists", "-y"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
}

#[test]
fn unwritable_output_folder_is_reported_before_work() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("afile"), b"x").unwrap();
    let o = flashvsr(tmp.path())
        .args(["upscale"])
        .arg(tiny().join("input.y4m"))
        .arg(tmp.path().join("afile/out.y4m"))
        .output()
        .unwrap();
    assert_error(&o, &["cannot write", "afile"]);
    let o = flashvsr(tmp.path())
        .args(["upscale"])
        .arg(tiny().join("input.y4m"))
        .arg(tmp.path().join("no/such/dir/out.y4m"))
        .output()
        .unwrap();
    assert_error(&o, &["does not exist"]);
}

#[test]
fn corrupt_inputs_are_reported_without_output() {
    let tmp = tempfile::tempdir().unwrap();
    let bad_y4m = tmp.path().join("bad.y4m");
    std::fs::write(&bad_y4m, b"YUV4MPEG2 W64 H64 garbage\nFRAME\n\x01\x02").unwrap();
    let o = flashvsr(tmp.path())
        .args(["upscale", "bad.y4m", "out.y4m"])
        .output()
        .unwrap();
    assert_error(&o, &["bad.y4m"]);
    let bad_mp4 = tmp.path().join("bad.mp4");
    std::fs::write(&bad_mp4, vec![0x42u8; 4096]).unwrap();
    let o = flashvsr(tmp.path())
        .args(["upscale", "bad.mp4", "out.mp4"])
        .output()
        .unwrap();
    assert_error(&o, &["bad.mp4"]);
    assert_eq!(
        names_in(tmp.path()),
        vec!["bad.mp4", "bad.y4m"],
        "something was left behind"
    );
}

#[test]
fn no_weights_and_no_download_says_how_to_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let o = flashvsr(tmp.path())
        .args(["upscale"])
        .arg(tiny().join("input.y4m"))
        .arg("out.y4m")
        .output()
        .unwrap();
    assert_error(&o, &["no FlashVSR weights found", "--weights"]);
    assert!(!tmp.path().join("out.y4m").exists());
}

#[test]
fn missing_weight_paths_and_parts_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tiny().join("input.y4m");
    let o = flashvsr(tmp.path())
        .args(["upscale"])
        .arg(&input)
        .arg("o.y4m")
        .args(["--weights", "/no/such/weights"])
        .output()
        .unwrap();
    assert_error(&o, &["/no/such/weights", "does not exist"]);

    // The full-mode fixture has no TCDecoder: tiny mode must say so.
    let o = flashvsr(tmp.path())
        .args(["upscale"])
        .arg(&input)
        .arg("o.y4m")
        .arg("--weights")
        .arg(fixtures().join("full-v1.1"))
        .output()
        .unwrap();
    assert_error(&o, &["TCDecoder", "--mode full"]);

    // Only the DiT given.
    let o = flashvsr(tmp.path())
        .args(["upscale"])
        .arg(&input)
        .arg("o.y4m")
        .arg("--weights")
        .arg(tiny().join("diffusion_pytorch_model_streaming_dmd.safetensors"))
        .output()
        .unwrap();
    assert_error(&o, &["lack", "LQ projection"]);
    assert!(!tmp.path().join("o.y4m").exists());
}

/// A minimal safetensors file with the given f32 tensors.
fn write_safetensors(path: &Path, tensors: &[(&str, &[usize])]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let n: usize = shape.iter().product::<usize>() * 4;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend(h);
    bytes.extend(vec![0u8; offset]);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn weights_of_another_model_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tiny().join("input.y4m");
    let other = tmp.path().join("sd15.safetensors");
    write_safetensors(
        &other,
        &[
            ("model.diffusion_model.input_blocks.0.0.weight", &[4, 4]),
            ("first_stage_model.x", &[2]),
        ],
    );
    let o = flashvsr(tmp.path())
        .args(["upscale"])
        .arg(&input)
        .arg("o.y4m")
        .arg("--weights")
        .arg(&other)
        .output()
        .unwrap();
    assert_error(&o, &["not FlashVSR weights", "sd15.safetensors"]);

    // A VAE saved under the TCDecoder's name.
    let mixed = tmp.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    for f in [
        "diffusion_pytorch_model_streaming_dmd.safetensors",
        "LQ_proj_in.ckpt",
        "posi_prompt.pth",
    ] {
        std::fs::copy(tiny().join(f), mixed.join(f)).unwrap();
    }
    std::fs::copy(
        fixtures().join("full-v1.1/Wan2.1_VAE.pth"),
        mixed.join("TCDecoder.ckpt"),
    )
    .unwrap();
    let o = flashvsr(tmp.path())
        .args(["upscale"])
        .arg(&input)
        .arg("o.y4m")
        .arg("--weights")
        .arg(&mixed)
        .output()
        .unwrap();
    assert_error(
        &o,
        &["TCDecoder.ckpt", "does not hold its tensors", "Wan VAE"],
    );
    assert!(!tmp.path().join("o.y4m").exists());
}

#[test]
fn without_ffmpeg_containers_fail_with_install_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let empty_path = tmp.path().join("bin");
    std::fs::create_dir(&empty_path).unwrap();
    let o = flashvsr(tmp.path())
        .env("PATH", &empty_path)
        .env_remove("FLASHVSR_FFMPEG")
        .env_remove("FLASHVSR_FFPROBE")
        .args(["upscale"])
        .arg(tiny().join("input.y4m"))
        .arg("out.mp4")
        .output()
        .unwrap();
    assert_error(&o, &["ffmpeg not found", "install"]);
    // y4m keeps working without ffmpeg: the run gets past the video checks to the weights.
    let o = flashvsr(tmp.path())
        .env("PATH", &empty_path)
        .args(["upscale"])
        .arg(tiny().join("input.y4m"))
        .arg("out.y4m")
        .output()
        .unwrap();
    assert_error(&o, &["no FlashVSR weights found"]);
}

#[test]
fn devices_lists_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let o = flashvsr(tmp.path())
        .args(["devices", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let list = v.as_array().unwrap();
    assert!(list
        .iter()
        .any(|d| d["name"] == "cpu" && d["usable"] == true));
}
