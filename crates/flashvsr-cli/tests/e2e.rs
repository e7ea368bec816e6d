//! End-to-end tests through the built `flashvsr` binary on the reduced fixture weights
//! (`shared/fixtures/tiny-v1.1`, head_dim 32): containers with audio, y4m, PNG folders, stdin /
//! stdout, odd sizes, short clips, exact reproduction of the upstream fixture, and weights
//! downloaded from a local imitation of the Hub.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::hub::{sha256_hex, Fault, HubEmulator, COMMIT};
use support::{ffmpeg, flashvsr, ok, tiny, upscale, y4m_bytes};

fn ffprobe_json(path: &Path, args: &[&str]) -> serde_json::Value {
    let o = Command::new("ffprobe")
        .args(["-v", "error", "-of", "json"])
        .args(args)
        .arg(path)
        .output()
        .expect("ffprobe is installed");
    assert!(
        o.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// MD5 of the encoded packets of the first audio stream (stream copy, no decoding).
fn audio_md5(path: &Path) -> String {
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:a:0", "-c", "copy", "-f", "md5", "-"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ffmpeg md5: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn png_rgb(path: &Path) -> (u32, u32, Vec<u8>) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    (img.width(), img.height(), img.into_raw())
}

fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Upstream's 8-bit frames vs ours: identical, or off by one on at most 0.1% of the values
/// (fixture README section 4: truncation at integer boundaries).
fn assert_matches_fixture_output(out_dir: &Path) {
    let expected = sorted_files(&tiny().join("output"));
    let got = sorted_files(out_dir);
    assert_eq!(got.len(), expected.len(), "frame count");
    let (mut total, mut off) = (0usize, 0usize);
    for (g, e) in got.iter().zip(&expected) {
        let (gw, gh, gd) = png_rgb(g);
        let (ew, eh, ed) = png_rgb(e);
        assert_eq!((gw, gh), (ew, eh), "{} size", g.display());
        for (a, b) in gd.iter().zip(&ed) {
            let d = (*a as i32 - *b as i32).abs();
            assert!(d <= 1, "{}: a value differs by {d}", g.display());
            off += (d == 1) as usize;
        }
        total += gd.len();
    }
    assert!(
        off * 1000 <= total,
        "{off} of {total} values off by one (> 0.1%)"
    );
}

#[test]
fn y4m_upstream_compat_with_noise_reproduces_the_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("frames/");
    let o = upscale(
        tmp.path(),
        &tiny().join("input.y4m"),
        &out,
        &[
            "--upstream-compat",
            "--noise",
            tiny().join("noise.npy").to_str().unwrap(),
            "--json",
        ],
    );
    ok(&o);
    assert_matches_fixture_output(&out);
    // One line, the last of stdout (what benchmark runners read), with an `fps` key.
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    let summary: serde_json::Value =
        serde_json::from_str(text.lines().last().unwrap()).expect("--json prints JSON on stdout");
    assert!(summary["fps"].as_f64().unwrap_or(0.0) > 0.0, "{summary}");
    assert_eq!(summary["fps"], summary["processing_fps"]);
    assert_eq!(summary["input_frames"], 25);
    assert_eq!(summary["output_frames"], 21);
    assert_eq!(summary["output_size"], serde_json::json!([256, 256]));
    assert_eq!(summary["settings"]["model_version"], "v1.1");
    assert!(summary["peak_ram_bytes"].as_u64().unwrap_or(0) > 0);
    assert!(summary["stages_s"]["dit"].as_f64().unwrap_or(0.0) > 0.0);
}

#[test]
fn png_folder_upstream_compat_with_noise_reproduces_the_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = upscale(
        tmp.path(),
        &tiny().join("input"),
        Path::new(&format!("{}/", out.display())),
        &[
            "--upstream-compat",
            "--noise",
            tiny().join("noise.npy").to_str().unwrap(),
            "--quiet",
        ],
    );
    ok(&o);
    assert!(
        o.stderr.is_empty(),
        "--quiet printed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_matches_fixture_output(&out);
}

#[test]
fn mp4_with_audio_keeps_frames_rate_duration_and_audio() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.mp4");
    let output = tmp.path().join("out.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x48:rate=24:duration=1",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=1",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-shortest",
        input.to_str().unwrap(),
    ]);
    let o = upscale(
        tmp.path(),
        &input,
        &output,
        &["--crf", "23", "--preset", "ultrafast"],
    );
    ok(&o);
    let count = |p: &Path| {
        let v = ffprobe_json(
            p,
            &[
                "-count_frames",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=nb_read_frames,r_frame_rate,width,height,duration",
            ],
        );
        v["streams"][0].clone()
    };
    let (a, b) = (count(&input), count(&output));
    assert_eq!(b["nb_read_frames"], a["nb_read_frames"], "frame count");
    assert_eq!(b["r_frame_rate"], a["r_frame_rate"], "frame rate");
    assert_eq!(
        (b["width"].as_u64(), b["height"].as_u64()),
        (Some(256), Some(192)),
        "exactly 4x"
    );
    let dur = |v: &serde_json::Value| {
        v["duration"]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap()
    };
    assert!(
        (dur(&a) - dur(&b)).abs() < 0.5 / 24.0,
        "duration {} vs {}",
        dur(&a),
        dur(&b)
    );
    assert_eq!(
        audio_md5(&output),
        audio_md5(&input),
        "audio must be copied bit for bit"
    );
    // Nothing but the output in the folder: no temporary files left.
    let names: Vec<String> = sorted_files(tmp.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["in.mp4", "out.mp4"]);
}

/// Deterministic RGB frames of an odd size, written as PNGs.
fn write_png_clip(dir: &Path, w: u32, h: u32, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 7 + i as u32 * 13) as u8,
                (y * 11 + x) as u8,
                ((x ^ y) * 5 + i as u32) as u8,
            ])
        });
        img.save(dir.join(format!("f{i}.png"))).unwrap();
    }
}

#[test]
fn odd_size_five_frames_give_exactly_scale_times_size() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("odd");
    write_png_clip(&input, 37, 29, 5);
    let out = tmp.path().join("out/");
    let o = upscale(tmp.path(), &input, &out, &[]);
    ok(&o);
    let frames = sorted_files(&out);
    assert_eq!(frames.len(), 5, "every input frame is output");
    for f in &frames {
        let (w, h, _) = png_rgb(f);
        assert_eq!((w, h), (148, 116));
    }
    // Non-integer scale: round(37*2.2) x round(29*2.2) = 81x64 (no .5 ties, which upstream rounds
    // to even).
    let out2 = tmp.path().join("out2/");
    let o = upscale(
        tmp.path(),
        &input,
        &out2,
        &["--scale", "2.2", "--frames", "1:3"],
    );
    ok(&o);
    let frames = sorted_files(&out2);
    assert_eq!(frames.len(), 2, "--frames 1:3 selects two frames");
    let (w, h, _) = png_rgb(&frames[0]);
    assert_eq!((w, h), (81, 64));
}

#[test]
fn tiled_upscale_keeps_size_and_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("odd");
    write_png_clip(&input, 37, 29, 5);
    let out = tmp.path().join("tiled/");
    let o = upscale(
        tmp.path(),
        &input,
        &out,
        &["--tile", "16", "--tile-overlap", "4", "--json"],
    );
    ok(&o);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // 16-px tiles, stride 12, the last one aligned with the edge: columns at 0, 12, 21 of 37,
    // rows at 0, 12, 13 of 29.
    assert_eq!(summary["tiles"], 9, "{summary}");
    assert_eq!(summary["output_size"], serde_json::json!([148, 116]));
    let frames = sorted_files(&out);
    assert_eq!(frames.len(), 5, "every input frame is output");
    for f in &frames {
        assert_eq!(png_rgb(f).0, 148);
        assert_eq!(png_rgb(f).1, 116);
    }
}

#[test]
fn one_frame_through_stdin_and_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = flashvsr(tmp.path())
        .args(["upscale", "-", "-", "--weights"])
        .arg(tiny())
        .args(["--head-dim", "32", "--device", "cpu", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = y4m_bytes(24, 20, 1);
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let o = child.wait_with_output().unwrap();
    ok(&o);
    let header_end = o
        .stdout
        .iter()
        .position(|&b| b == b'\n')
        .expect("y4m header on stdout");
    let header = String::from_utf8_lossy(&o.stdout[..header_end]).to_string();
    assert!(
        header.starts_with("YUV4MPEG2 ") && header.contains(" W96 ") && header.contains(" H80 "),
        "header: {header}"
    );
    let frames = o.stdout.windows(6).filter(|w| w == b"FRAME\n").count();
    assert_eq!(frames, 1);
    // With the video on stdout, the JSON summary goes to stderr.
    let err = String::from_utf8_lossy(&o.stderr);
    let summary: serde_json::Value = serde_json::from_str(err.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: stderr {err}"));
    assert_eq!(summary["output_frames"], 1, "stderr: {err}");
}

#[test]
fn overwrite_needs_y_and_then_replaces() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.y4m");
    std::fs::write(&input, y4m_bytes(16, 16, 1)).unwrap();
    let out = tmp.path().join("out.y4m");
    std::fs::write(&out, b"old").unwrap();
    let o = upscale(tmp.path(), &input, &out, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    let o = upscale(tmp.path(), &input, &out, &["-y"]);
    ok(&o);
    assert!(std::fs::read(&out)
        .unwrap()
        .starts_with(b"YUV4MPEG2 W64 H64"));
}

#[test]
fn weights_are_downloaded_when_none_are_found() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = HubEmulator::start();
    let repo = "Test/FlashVSR-v1.1";
    let mut files = Vec::new();
    for (name, role) in [
        ("diffusion_pytorch_model_streaming_dmd.safetensors", "dit"),
        ("LQ_proj_in.ckpt", "lq_proj"),
        ("TCDecoder.ckpt", "tc_decoder"),
    ] {
        let bytes = std::fs::read(tiny().join(name)).unwrap();
        let sha = hub.add_hub_file(repo, name, bytes.clone(), Fault::default());
        files.push(
            serde_json::json!({"path": name, "role": role, "bytes": bytes.len(), "sha256": sha}),
        );
    }
    // The full-mode VAE is listed but must not be fetched for tiny mode.
    files.push(serde_json::json!({"path": "Wan2.1_VAE.pth", "role": "vae", "bytes": 1, "sha256": "0".repeat(64)}));
    let prompt = std::fs::read(tiny().join("posi_prompt.pth")).unwrap();
    hub.add_raw_file("posi_prompt.pth", prompt.clone(), Fault::default());
    files.push(serde_json::json!({
        "path": "posi_prompt.pth", "role": "prompt", "bytes": prompt.len(), "sha256": sha256_hex(&prompt),
        "url": "https://invalid.example/p.pth", "url_env": "FLASHVSR_PROMPT_URL"
    }));
    let manifest = tmp.path().join("m.json");
    std::fs::write(
        &manifest,
        serde_json::to_vec(&serde_json::json!({
            "name": "t", "model_version": "v1.1", "hf_repo": repo, "revision": "main", "files": files
        }))
        .unwrap(),
    )
    .unwrap();
    let input = tmp.path().join("in.y4m");
    std::fs::write(&input, y4m_bytes(16, 16, 1)).unwrap();
    let out = tmp.path().join("out.y4m");
    let o = flashvsr(tmp.path())
        .arg("upscale")
        .arg(&input)
        .arg(&out)
        .args(["--head-dim", "32", "--device", "cpu"])
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_ENDPOINT", &hub.base)
        .env("FLASHVSR_MANIFEST", &manifest)
        .env("FLASHVSR_PROMPT_URL", hub.raw_url("posi_prompt.pth"))
        .output()
        .unwrap();
    ok(&o);
    assert!(out.exists());
    let snap = tmp
        .path()
        .join("hf/hub/models--Test--FlashVSR-v1.1/snapshots")
        .join(COMMIT);
    assert!(snap.join("TCDecoder.ckpt").exists() && snap.join("posi_prompt.pth").exists());
    assert!(
        !snap.join("Wan2.1_VAE.pth").exists(),
        "tiny mode fetched the VAE"
    );

    // Next run: found in the cache, offline is fine.
    let out2 = tmp.path().join("out2.y4m");
    let o = flashvsr(tmp.path())
        .arg("upscale")
        .arg(&input)
        .arg(&out2)
        .args(["--head-dim", "32", "--device", "cpu"])
        .env("FLASHVSR_MANIFEST", &manifest)
        .output()
        .unwrap();
    ok(&o);
}
