//! What every CLI test shares: the fixture paths and the one way to start the binary.

#![allow(dead_code)]
pub mod hub;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Every environment variable the `flashvsr` binary (or a library it calls) reads, except
/// `PATH`. `environment.rs` checks this list against the sources.
pub const BINARY_ENV: &[&str] = &[
    // Weights discovery and the download (weights/discover.rs, download.rs, manifest.rs).
    "FLASHVSR_MODELS",
    "FLASHVSR_MANIFEST",
    "FLASHVSR_PROMPT_URL",
    "COMFYUI_PATH",
    "COMFYUI_DIR",
    "COMFYUI_HOME",
    "HF_ENDPOINT",
    "HF_TOKEN",
    "HF_HUB_OFFLINE",
    "HF_HOME",
    "HF_HUB_CACHE",
    "XDG_CACHE_HOME",
    "HOME",
    "USERPROFILE",
    // The video crate's ffmpeg programs.
    "FLASHVSR_FFMPEG",
    "FLASHVSR_FFPROBE",
    // How a quantized DiT weight multiplies on a GPU (model nn/linear.rs).
    "FLASHVSR_QMATMUL",
    // A/B switches between the new CUDA paths and the ones they replace (model decoders/tc,
    // pipeline frame ops, dit), and the implicit-GEMM tile choice (kernels implicit_conv.rs).
    "FLASHVSR_TC_CONV",
    "FLASHVSR_LQ_CONV",
    "FLASHVSR_LEGACY_FRAME_OPS",
    "FLASHVSR_DIT_FUSED",
    "FLASHVSR_CONV_TILE",
    // Fault injection at a named stage (model pipeline/session.rs), for the failure tests.
    "FLASHVSR_FAIL_AT",
    "FLASHVSR_FP8_RESCALE",
    "FLASHVSR_BSA_KERNEL",
];

pub fn fixtures() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures"
    ))
}

/// The reduced fixture weights (head_dim 32: pass `--head-dim 32`).
pub fn tiny() -> PathBuf {
    fixtures().join("tiny-v1.1")
}

/// The binary isolated from the machine: every variable it reads cleared, then `HOME` and
/// `HF_HOME` inside `home` (also the working folder, so no ComfyUI folder is found) and
/// downloads off. Tests that download remove `HF_HUB_OFFLINE` and set `HF_ENDPOINT` themselves.
pub fn flashvsr(home: &Path) -> Command {
    isolated(env!("CARGO_BIN_EXE_flashvsr"), home)
}

/// `program` (a wrapper that then runs the binary: a shell, `script`) in the environment
/// [`flashvsr`] sets up.
pub fn isolated(program: impl AsRef<std::ffi::OsStr>, home: &Path) -> Command {
    let mut c = Command::new(program);
    for var in BINARY_ENV {
        c.env_remove(var);
    }
    c.current_dir(home)
        .env("HOME", home)
        .env("HF_HOME", home.join("hf"))
        .env("HF_HUB_OFFLINE", "1");
    c
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "flashvsr failed ({:?}): {}",
        o.status.code(),
        stderr(o)
    );
    stdout(o)
}

/// Exit code 1 and exactly one `error:` line that contains every `needle`.
pub fn assert_error(o: &Output, needles: &[&str]) {
    assert_error_code(o, 1, needles)
}

/// Exit code `code` and exactly one `error:` line that contains every `needle`.
pub fn assert_error_code(o: &Output, code: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "exit code; stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line expected, stderr: {err}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks {n:?}: {}", lines[0]);
    }
}

/// Sorted names of the entries of a folder (hidden ones included).
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A C444 full-range y4m with `n` frames of `w`x`h`.
pub fn y4m_bytes(w: usize, h: usize, n: usize) -> Vec<u8> {
    let mut v = format!("YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C444 XCOLORRANGE=FULL\n").into_bytes();
    for i in 0..n {
        v.extend_from_slice(b"FRAME\n");
        for plane in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    v.push(if plane == 0 {
                        (x * 3 + y * 5 + i * 9) as u8
                    } else {
                        128 + ((x + y) % 16) as u8
                    });
                }
            }
        }
    }
    v
}

/// `upscale IN OUT` on the fixture weights on the CPU, plus `extra` arguments.
pub fn upscale(home: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
    flashvsr(home)
        .arg("upscale")
        .arg(input)
        .arg(output)
        .arg("--weights")
        .arg(tiny())
        .args(["--head-dim", "32", "--device", "cpu"])
        .args(extra)
        .output()
        .unwrap()
}

/// Runs `ffmpeg -v error -y ARGS`, asserting success.
pub fn ffmpeg(args: &[&str]) {
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg is installed");
    assert!(
        o.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}
