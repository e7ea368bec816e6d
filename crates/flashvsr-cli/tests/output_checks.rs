//! `flashvsr upscale` end to end on the reduced fixture weights: output mistakes refused before
//! the weights load, truncated inputs (`--strict`), Ctrl-C to the whole process group, image
//! sequences, pixel formats kept from the input, y4m layouts, audio and subtitle notes.
//! Needs ffmpeg on PATH (skipped without it, except under `CI`).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::{ffmpeg, flashvsr, names_in as names, ok, stderr, tiny, upscale};

fn have_ffmpeg() -> bool {
    let ok = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "ffmpeg missing on CI"
    );
    ok
}

fn ffprobe_video(path: &Path, entry: &str) -> String {
    let o = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .arg(format!("stream={entry}"))
        .args(["-of", "default=nw=1:nk=1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// [`support::assert_error`], and no temporary name in the line; returns the line.
fn assert_error(o: &Output, needles: &[&str]) -> String {
    support::assert_error(o, needles);
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert!(
        !lines[0].contains("partial"),
        "temporary name: {}",
        lines[0]
    );
    lines[0].to_string()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).expect("--json prints JSON on stdout")
}

/// A C444 full-range y4m of `n` grey-ramp frames.
fn y4m(dir: &Path, name: &str, w: usize, h: usize, n: usize) -> PathBuf {
    let mut v = format!("YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C444 XCOLORRANGE=FULL\n").into_bytes();
    for i in 0..n {
        v.extend_from_slice(b"FRAME\n");
        v.extend((0..w * h).map(|p| ((p * 5 + i * 9) % 256) as u8));
        v.extend(std::iter::repeat_n(128u8, 2 * w * h));
    }
    let p = dir.join(name);
    std::fs::write(&p, v).unwrap();
    p
}

#[test]
fn output_mistakes_fail_before_the_weights_load() {
    if !have_ffmpeg() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = y4m(dir, "in.y4m", 16, 16, 3);
    let odd = y4m(dir, "odd.y4m", 17, 15, 1);
    let run = |input: &Path, out: &str, extra: &[&str]| {
        // Weights that do not exist: an output error must come first.
        flashvsr(dir)
            .arg("upscale")
            .arg(input)
            .arg(out)
            .args(["--weights", "no-such-weights", "--device", "cpu"])
            .args(extra)
            .output()
            .unwrap()
    };
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("upscaled", &[], &["no file extension", "upscaled/"]),
        ("o.xyz", &[], &["no container for .xyz"]),
        ("o.png", &[], &["one frame", "o_%04d.png"]),
        ("seq_%s.png", &[], &["%0Nd"]),
        ("o.mp4", &["--preset", "warp9"], &["test encode", "warp9"]),
        ("o.mp4", &["--codec", "nope264"], &["no encoder nope264"]),
        ("o.webm", &["--codec", "libx264"], &["WebM"]),
        (
            "o.mp4",
            &["--codec", "mpeg4", "--pix-fmt", "yuv420p10le"],
            &["cannot encode pixel format"],
        ),
        ("o.y4m", &["--pix-fmt", "yuv420p10le"], &["--pix-fmt"]),
    ];
    for (out, extra, needles) in cases {
        let o = run(&input, out, extra);
        let line = assert_error(&o, needles);
        assert!(!line.contains("weights"), "{out}: {line}");
    }
    let o = run(&odd, "odd.mp4", &["--scale", "1", "--pix-fmt", "yuv420p"]);
    assert_error(&o, &["odd size", "--pix-fmt yuv444p"]);
    assert_eq!(names(dir), ["in.y4m", "odd.y4m"]);
}

#[test]
fn a_truncated_input_warns_and_strict_fails() {
    if !have_ffmpeg() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let full = dir.join("full.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=s=32x32:r=30,noise=alls=80:allf=t",
        "-t",
        "1",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-movflags",
        "+faststart",
        full.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&full).unwrap();
    let half = dir.join("half.mp4");
    std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();

    let o = upscale(dir, &half, Path::new("o.mkv"), &["--strict"]);
    assert_error(&o, &["half.mp4", "truncated", "--strict"]);
    assert!(!dir.join("o.mkv").exists());

    let o = upscale(dir, &half, Path::new("o.mkv"), &["--json"]);
    ok(&o);
    assert!(
        stderr(&o).contains("warning:") && stderr(&o).contains("truncated"),
        "{}",
        stderr(&o)
    );
    let s = json(&o);
    assert_eq!(s["frames_expected"], 30);
    assert_eq!(s["input_truncated"], true);
    let decoded = s["input_frames"].as_u64().unwrap();
    assert!(decoded > 0 && decoded < 30, "{decoded}");

    let o = upscale(
        dir,
        &full,
        Path::new("full.mkv"),
        &["--json", "--frames", "0:3"],
    );
    ok(&o);
    let s = json(&o);
    assert_eq!(
        (
            s["frames_expected"].as_u64(),
            s["input_truncated"].as_bool()
        ),
        (Some(3), Some(false))
    );
}

#[test]
#[cfg(unix)]
fn ctrl_c_to_the_whole_process_group_exits_130_and_leaves_nothing() {
    use std::os::unix::process::CommandExt;
    if !have_ffmpeg() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = dir.join("long.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=s=32x32:r=25",
        "-t",
        "120",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        input.to_str().unwrap(),
    ]);
    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    // Its own group, as a shell gives a foreground job: the signal below goes to that group
    // (flashvsr and, unless they are kept apart, its ffmpeg children), not to this test.
    let child = flashvsr(dir)
        .arg("upscale")
        .arg(&input)
        .arg(out.join("o.mp4"))
        .arg("--weights")
        .arg(tiny())
        .args(["--head-dim", "32", "--device", "cpu"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait until the encoder is writing (its hidden file exists), then a little longer.
    let start = Instant::now();
    while names(&out).is_empty() || start.elapsed() < Duration::from_secs(2) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the encoder never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let sent = Command::new("kill")
        .args(["-INT", "--", &format!("-{pid}")])
        .status()
        .unwrap();
    assert!(sent.success());
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "stderr: {err}");
    assert!(
        err.contains("interrupted") && !err.contains("ffmpeg failed"),
        "{err}"
    );
    assert!(names(&out).is_empty(), "left behind: {:?}", names(&out));
}

#[test]
fn image_sequences_and_single_pictures() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let three = y4m(dir, "three.y4m", 16, 16, 3);
    let one = y4m(dir, "one.y4m", 16, 16, 1);
    ok(&upscale(dir, &three, Path::new("seq_%03d.png"), &[]));
    ok(&upscale(dir, &one, Path::new("one.jpg"), &[]));
    assert_eq!(
        names(dir),
        [
            "one.jpg",
            "one.y4m",
            "seq_001.png",
            "seq_002.png",
            "seq_003.png",
            "three.y4m"
        ]
    );
    let o = upscale(dir, &three, Path::new("seq_%03d.png"), &[]);
    assert_error(&o, &["seq_001.png", "already exists"]);
    ok(&upscale(dir, &three, Path::new("seq_%03d.png"), &["-y"]));
}

#[test]
fn y4m_output_is_420_limited_by_default_and_444_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let input = y4m(dir, "in.y4m", 16, 16, 1);
    for (extra, header) in [
        (&[][..], "C420jpeg XCOLORRANGE=LIMITED"),
        (&["--pix-fmt", "yuv444p"][..], "C444 XCOLORRANGE=LIMITED"),
        (&["--pix-fmt", "yuvj444p"][..], "C444 XCOLORRANGE=FULL"),
    ] {
        let o = upscale(
            dir,
            &input,
            Path::new("o.y4m"),
            &[extra, &["-y", "--json"]].concat(),
        );
        ok(&o);
        let bytes = std::fs::read(dir.join("o.y4m")).unwrap();
        let line =
            String::from_utf8_lossy(&bytes[..bytes.iter().position(|b| *b == b'\n').unwrap()])
                .to_string();
        assert!(
            line.starts_with("YUV4MPEG2 W64 H64") && line.ends_with(header),
            "{extra:?}: {line}"
        );
        assert_eq!(
            json(&o)["output_pix_fmt"],
            extra.get(1).copied().unwrap_or("yuv420p")
        );
    }
}

#[test]
fn pixel_formats_audio_and_subtitles_are_said() {
    if !have_ffmpeg() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let srt = dir.join("s.srt");
    std::fs::write(&srt, "1\n00:00:00,000 --> 00:00:00,200\nhello\n").unwrap();
    let input = dir.join("in.mkv");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=s=32x32:r=25",
        "-f",
        "lavfi",
        "-i",
        "sine",
        "-i",
        srt.to_str().unwrap(),
        "-t",
        "0.2",
        "-map",
        "0",
        "-map",
        "1",
        "-map",
        "2",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p10le",
        "-c:a",
        "pcm_s16le",
        "-c:s",
        "srt",
        input.to_str().unwrap(),
    ]);
    // 10-bit in, 10-bit out; PCM cannot be copied into mp4; subtitles cannot go into AVI.
    let o = upscale(dir, &input, Path::new("o.mp4"), &["--json"]);
    ok(&o);
    let err = stderr(&o);
    assert!(
        err.contains("note:") && err.contains("re-encoding it as AAC"),
        "{err}"
    );
    assert!(err.contains("10-bit"), "{err}");
    let s = json(&o);
    assert_eq!(s["audio_copied"], false);
    assert_eq!(s["audio_reencoded"], true);
    assert_eq!(s["output_pix_fmt"], "yuv420p10le");
    assert_eq!(ffprobe_video(&dir.join("o.mp4"), "pix_fmt"), "yuv420p10le");

    let o = upscale(
        dir,
        &input,
        Path::new("o.avi"),
        &["--json", "--pix-fmt", "yuv420p"],
    );
    ok(&o);
    assert!(stderr(&o).contains("dropping it"), "{}", stderr(&o));
    assert_eq!(json(&o)["audio_copied"], true);

    // An odd output size without --pix-fmt: 4:4:4 instead of a failure.
    let odd = y4m(dir, "odd.y4m", 17, 15, 1);
    let o = upscale(dir, &odd, Path::new("odd.mp4"), &["--scale", "1"]);
    ok(&o);
    assert!(stderr(&o).contains("odd side"), "{}", stderr(&o));
    assert_eq!(ffprobe_video(&dir.join("odd.mp4"), "pix_fmt"), "yuv444p");
    assert!(
        names(dir).iter().all(|n| !n.contains("partial")),
        "{:?}",
        names(dir)
    );
}
