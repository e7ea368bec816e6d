//! The memory plan and mid-run failures through the CLI, on the fixture weights on the CPU:
//! `--plan` (a dry run), `--max-vram` refusing at once, and a failure injected at a chosen stage
//! (`FLASHVSR_FAIL_AT`) giving one line, a non-zero exit, and the frames already written kept
//! for formats that stay valid when cut short (y4m, PNG folders), none for others.

mod support;

use support::*;

#[test]
fn plan_is_a_dry_run_with_the_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.y4m");
    std::fs::write(&input, y4m_bytes(32, 32, 3)).unwrap();
    let out = tmp.path().join("out.y4m");
    let o = upscale(tmp.path(), &input, &out, &["--plan", "--json"]);
    let text = ok(&o);
    let plan: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(plan["peak_bytes"].as_u64().unwrap() > 0, "{plan}");
    assert!(plan["weights_bytes"].as_u64().unwrap() > 0, "{plan}");
    assert_eq!(plan["output_size"], serde_json::json!([128, 128]));
    assert!(!out.exists(), "a dry run writes nothing");
    let o = upscale(tmp.path(), &input, &out, &["--plan"]);
    assert!(ok(&o).contains("KV cache"));
}

#[test]
fn fp8_kv_cache_is_planned_smaller_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.y4m");
    // 29 frames: a first step and a later one that attends over the stored segments.
    std::fs::write(&input, y4m_bytes(32, 32, 29)).unwrap();
    let plan = |extra: &[&str]| -> serde_json::Value {
        let args = [&["--plan", "--json"][..], extra].concat();
        let o = upscale(tmp.path(), &input, &tmp.path().join("x.y4m"), &args);
        serde_json::from_str(&ok(&o)).unwrap()
    };
    let (dense, fp8) = (plan(&[]), plan(&["--kv-cache", "fp8"]));
    assert_eq!(dense["kv_storage"], "dense");
    assert_eq!(fp8["kv_storage"], "fp8");
    // f32 on the CPU, 32-wide heads: 128 bytes per row dense, 32 + 4 in fp8.
    let kv = |p: &serde_json::Value| p["kv_device_bytes"].as_u64().unwrap();
    assert_eq!(kv(&fp8) * 128, kv(&dense) * 36, "{fp8}");

    let run = |name: &str, extra: &[&str]| -> (Vec<u8>, serde_json::Value) {
        let out = tmp.path().join(name);
        let args = [&["--json", "-q"][..], extra].concat();
        let o = upscale(tmp.path(), &input, &out, &args);
        let summary = serde_json::from_str(ok(&o).lines().last().unwrap()).unwrap();
        (std::fs::read(&out).unwrap(), summary)
    };
    let (dense_frames, _) = run("dense.y4m", &[]);
    let (fp8_frames, summary) = run("fp8.y4m", &["--kv-cache", "fp8"]);
    assert_eq!(summary["settings"]["kv_cache"], "fp8", "{summary}");
    assert_eq!(dense_frames.len(), fp8_frames.len());
    assert!(
        dense_frames != fp8_frames,
        "--kv-cache fp8 left the frames unchanged"
    );
}

#[test]
fn a_budget_nothing_fits_is_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.y4m");
    std::fs::write(&input, y4m_bytes(32, 32, 3)).unwrap();
    let out = tmp.path().join("out.y4m");
    let o = upscale(tmp.path(), &input, &out, &["--max-vram", "0.0001"]);
    assert_error(&o, &["budget", "predicted peak", "weights"]);
    assert!(!out.exists());
}

fn fail_at(stage: &str, output: &str, frames: usize) -> (tempfile::TempDir, std::process::Output) {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.y4m");
    std::fs::write(&input, y4m_bytes(32, 32, frames)).unwrap();
    let out = tmp.path().join(output);
    let o = flashvsr(tmp.path())
        .arg("upscale")
        .arg(&input)
        .arg(&out)
        .arg("--weights")
        .arg(tiny())
        .args(["--head-dim", "32", "--device", "cpu"])
        .env("FLASHVSR_FAIL_AT", stage)
        .output()
        .unwrap();
    (tmp, o)
}

#[test]
fn failure_mid_run_keeps_the_y4m_frames_written_and_says_how_to_go_on() {
    // Step 0 yields 21 frames, step 1 fails in the decoder.
    let (tmp, o) = fail_at("decoder:1", "out.y4m", 40);
    assert!(!o.status.success());
    let err = stderr(&o);
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default()
        .to_string();
    for needle in [
        "out of device memory",
        "decoder failed (DiT step 1, 128x128 model grid)",
        "memory plan:",
        "keeps the 21 frames",
        "--frames 21:",
    ] {
        assert!(line.contains(needle), "{needle:?} not in {line}");
    }
    assert!(!err.contains("stack backtrace"), "{err}");
    let kept = std::fs::read(tmp.path().join("out.y4m")).unwrap();
    let frames = kept.windows(6).filter(|w| w == b"FRAME\n").count();
    assert_eq!(frames, 21);
    // No partial output is left behind.
    assert!(
        names_in(tmp.path()).iter().all(|n| !n.contains("partial")),
        "{:?}",
        names_in(tmp.path())
    );
}

#[test]
fn failure_in_the_first_step_leaves_nothing() {
    let (tmp, o) = fail_at("DiT:0", "frames/", 5);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("DiT failed (DiT step 0") && err.contains("nothing was written"),
        "{err}"
    );
    assert!(err.contains("--frames 0:"), "{err}");
    assert!(!tmp.path().join("frames").exists() || names_in(&tmp.path().join("frames")).is_empty());
    assert!(
        names_in(tmp.path()).iter().all(|n| !n.contains("partial")),
        "{:?}",
        names_in(tmp.path())
    );
}
