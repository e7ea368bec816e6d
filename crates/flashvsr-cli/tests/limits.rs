//! Absurd values are refused up front with one clear line (exit 2 for a value out of its
//! range, 1 for a combination with the input), never an aborted allocation (exit 134) or an
//! overflowed size.

mod support;

use std::path::Path;

use support::{assert_error, assert_error_code, flashvsr, stderr, tiny, y4m_bytes};

fn clip(dir: &Path, w: usize, h: usize, n: usize) -> std::path::PathBuf {
    let p = dir.join("in.y4m");
    std::fs::write(&p, y4m_bytes(w, h, n)).unwrap();
    p
}

#[test]
fn out_of_range_numbers_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let input = clip(tmp.path(), 16, 16, 1);
    for (flag, value, needle) in [
        ("--scale", "1e4", "from 1 to 64"),
        ("--scale", "1e30", "from 1 to 64"),
        ("--scale", "inf", "scale"),
        ("--kv-ratio", "1e9", "at most 16"),
        ("--kv-ratio", "0", "more than 0"),
        ("--sparse-ratio", "1e300", "at most 100"),
        ("--local-range", "0", "local-range"),
        ("--local-range", "99999999999", "local-range"),
    ] {
        let o = flashvsr(tmp.path())
            .arg("upscale")
            .arg(&input)
            .arg("out.y4m")
            .args([flag, value])
            .output()
            .unwrap();
        assert_error_code(&o, 2, &[needle]);
        assert!(
            !stderr(&o).contains("18446744073709551615"),
            "{}",
            stderr(&o)
        );
    }
    for size in ["100000x100000", "16385x64", "4x4"] {
        let o = flashvsr(tmp.path())
            .args(["bench", "--size", size, "--device", "cpu"])
            .output()
            .unwrap();
        assert_error_code(&o, 2, &["size"]);
    }
    let o = flashvsr(tmp.path())
        .args(["bench", "--frames", "0", "--device", "cpu"])
        .output()
        .unwrap();
    assert_error_code(&o, 2, &["--frames"]);
}

#[test]
fn an_output_too_large_for_the_input_is_refused_before_the_weights_load() {
    let tmp = tempfile::tempdir().unwrap();
    let input = clip(tmp.path(), 512, 300, 1);
    // 512 x 64 = 32768 px: over the limit. The fixture weights are given, so the error can
    // only come from the size check (it is also reported before they are read).
    let o = flashvsr(tmp.path())
        .arg("upscale")
        .arg(&input)
        .arg("out.y4m")
        .args([
            "--scale",
            "64",
            "--head-dim",
            "32",
            "--device",
            "cpu",
            "--weights",
        ])
        .arg(tiny())
        .output()
        .unwrap();
    assert_error(&o, &["32768x19200", "16384 px a side", "smaller --scale"]);
    assert!(!tmp.path().join("out.y4m").exists());
}

#[test]
fn crf_out_of_range_is_an_error_not_a_clamp() {
    let tmp = tempfile::tempdir().unwrap();
    let input = clip(tmp.path(), 16, 16, 1);
    let run = |out: &str, extra: &[&str]| {
        flashvsr(tmp.path())
            .arg("upscale")
            .arg(&input)
            .arg(out)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run("out.mp4", &["--crf", "60"]);
    assert_error(&o, &["--crf 60", "0 to 51"]);
    let o = run("out.mkv", &["--crf", "52", "--codec", "libx265"]);
    assert_error(&o, &["--crf 52", "libx265", "0 to 51"]);
    let o = run("out.webm", &["--crf", "64"]);
    assert_error(&o, &["--crf 64", "0 to 63"]);
    // In range: the run goes on to the next check (here: no weights anywhere).
    let o = run("out.webm", &["--crf", "60"]);
    assert_error(&o, &["no FlashVSR weights found"]);
}
