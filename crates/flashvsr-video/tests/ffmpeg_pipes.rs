//! The ffmpeg backend end to end on tiny generated clips (needs `ffmpeg`/`ffprobe` on PATH; CI
//! installs Debian's). Without them these tests are skipped, except under `CI=...` where they fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use flashvsr_video::{
    ffmpeg_available, open_sink, open_source, EncodeOptions, FrameSink, InputSpec, OutputSpec,
    Rational, RgbFrame, SourceOptions, VideoError,
};

fn have_ffmpeg() -> bool {
    if ffmpeg_available() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "ffmpeg/ffprobe missing on CI"
    );
    eprintln!("skipping: ffmpeg/ffprobe not installed");
    false
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn make_clip(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-v",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=96x64:rate=24",
    ])
    .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
    .args(extra)
    .args([
        "-t", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
    ])
    .arg(&path);
    run(&mut cmd);
    path
}

/// `(frames counted by decoding, r_frame_rate, format duration)` of the first video stream.
fn probe_counted(path: &Path) -> (u64, String, f64) {
    let out = run(Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=nb_read_frames,r_frame_rate:format=duration",
            "-of",
            "default=noprint_wrappers=1",
        ])
        .arg(path));
    let text = String::from_utf8(out).unwrap();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap()
            .to_string()
    };
    (
        field("nb_read_frames").parse().unwrap(),
        field("r_frame_rate"),
        field("duration").parse().unwrap(),
    )
}

/// The packets of the audio streams, byte for byte.
fn audio_packets(path: &Path) -> Vec<u8> {
    run(Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:a", "-c", "copy", "-f", "data", "-"]))
}

fn upscale2(f: &RgbFrame) -> RgbFrame {
    let mut out = RgbFrame::new(f.width * 2, f.height * 2);
    for y in 0..out.height {
        for x in 0..out.width {
            let s = 3 * ((y / 2) * f.width + x / 2);
            out.data[3 * (y * out.width + x)..][..3].copy_from_slice(&f.data[s..s + 3]);
        }
    }
    out
}

#[cfg(unix)]
fn writable(mut perms: std::fs::Permissions) -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    perms.set_mode(0o755);
    perms
}

#[cfg(not(unix))]
#[allow(clippy::permissions_set_readonly_false)]
fn writable(mut perms: std::fs::Permissions) -> std::fs::Permissions {
    perms.set_readonly(false);
    perms
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn decode_upscale_encode_keeps_frames_fps_duration_and_audio() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path(), "clip.mp4", &[]);
    let input = InputSpec::detect(&clip);
    let mut src = open_source(&input, &SourceOptions::default()).unwrap();
    let info = src.info().clone();
    assert_eq!((info.width, info.height), (96, 64));
    assert_eq!(info.fps, Rational::new(24, 1));
    assert_eq!(info.frame_count, Some(24));
    assert!(info.has_audio && !info.has_subtitles && !info.variable_frame_rate);
    assert_eq!(info.rotation, None);

    let out = dir.path().join("up.mp4");
    let mut sink = open_sink(
        &OutputSpec::detect(&out),
        192,
        128,
        info.fps,
        Some(&input),
        &EncodeOptions::default(),
    )
    .unwrap();
    let mut n = 0;
    while let Some(frame) = src.next_frame().unwrap() {
        assert_eq!(
            (frame.width, frame.height, frame.data.len()),
            (96, 64, 96 * 64 * 3)
        );
        sink.write_frame(&upscale2(&frame)).unwrap();
        n += 1;
    }
    assert_eq!(n, 24);
    assert!(!out.exists(), "output must appear only on finish");
    sink.finish().unwrap();
    assert_eq!(dir_names(dir.path()), ["clip.mp4", "up.mp4"]);

    let (frames_in, rate_in, dur_in) = probe_counted(&clip);
    let (frames_out, rate_out, dur_out) = probe_counted(&out);
    assert_eq!(frames_out, frames_in);
    assert_eq!(rate_out, rate_in);
    assert!(
        (dur_out - dur_in).abs() < 1.0 / 24.0,
        "duration {dur_out} vs {dur_in}"
    );
    let audio = audio_packets(&clip);
    assert!(!audio.is_empty());
    assert!(audio == audio_packets(&out), "audio packets differ");

    // Reading our own output back gives the upscaled size and the same count.
    let mut back = open_source(&InputSpec::File(out.clone()), &SourceOptions::default()).unwrap();
    assert_eq!((back.info().width, back.info().height), (192, 128));
    let mut count = 0;
    while let Some(f) = back.next_frame().unwrap() {
        assert_eq!(f.data.len(), 192 * 128 * 3);
        count += 1;
    }
    assert_eq!(count, 24);

    // Without overwrite an existing output is refused and left untouched.
    let before = std::fs::read(&out).unwrap();
    let err = open_sink(
        &OutputSpec::Container(out.clone()),
        192,
        128,
        info.fps,
        None,
        &EncodeOptions::default(),
    )
    .err()
    .expect("overwrite refused");
    assert!(matches!(err, VideoError::OutputExists { .. }), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
}

#[test]
fn frame_range_selects_frames() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path(), "clip.mp4", &[]);
    let all: Vec<RgbFrame> = {
        let mut s = open_source(&InputSpec::File(clip.clone()), &SourceOptions::default()).unwrap();
        std::iter::from_fn(|| s.next_frame().unwrap()).collect()
    };
    let opts = SourceOptions {
        start_frame: 5,
        end_frame: Some(9),
        ..Default::default()
    };
    let mut s = open_source(&InputSpec::File(clip), &opts).unwrap();
    assert_eq!(s.info().frame_count, Some(4));
    let part: Vec<RgbFrame> = std::iter::from_fn(|| s.next_frame().unwrap()).collect();
    assert_eq!(part.len(), 4);
    assert!(part == all[5..9]);
}

fn feed(sink: &mut Box<dyn FrameSink>, n: usize, w: usize, h: usize) -> Result<(), VideoError> {
    for i in 0..n {
        let mut f = RgbFrame::new(w, h);
        f.data
            .iter_mut()
            .enumerate()
            .for_each(|(j, v)| *v = (i * 31 + j) as u8);
        sink.write_frame(&f)?;
    }
    Ok(())
}

#[test]
fn failing_ffmpeg_reports_stderr_and_leaves_nothing() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bad.mp4");
    let opts = EncodeOptions {
        codec: Some("no_such_encoder".into()),
        ..Default::default()
    };
    let mut sink = open_sink(
        &OutputSpec::Container(out.clone()),
        32,
        32,
        Rational::new(24, 1),
        None,
        &opts,
    )
    .unwrap();
    let err = match feed(&mut sink, 10, 32, 32) {
        Err(e) => e,
        Ok(()) => sink.finish().expect_err("ffmpeg must fail"),
    };
    let msg = err.to_string();
    assert!(
        msg.contains("bad.mp4") && msg.contains("ffmpeg failed") && msg.contains("no_such_encoder"),
        "{msg}"
    );
    assert!(
        dir_names(dir.path()).is_empty(),
        "left behind: {:?}",
        dir_names(dir.path())
    );

    // An output folder ffmpeg cannot write into.
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let mut perms = std::fs::metadata(&ro).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&ro, perms.clone()).unwrap();
    let writable_anyway = std::fs::write(ro.join("probe"), b"").is_ok(); // root ignores permissions
    if !writable_anyway {
        let target = ro.join("x.mp4");
        let result = open_sink(
            &OutputSpec::Container(target),
            32,
            32,
            Rational::new(24, 1),
            None,
            &Default::default(),
        )
        .and_then(|mut s| {
            feed(&mut s, 5, 32, 32)?;
            s.finish()
        });
        let msg = result.expect_err("unwritable folder must fail").to_string();
        assert!(msg.contains("x.mp4"), "{msg}");
        assert!(dir_names(&ro).is_empty());
    }
    // Restore write permission so the temporary folder can be removed.
    std::fs::set_permissions(&ro, writable(perms)).unwrap();
}

#[test]
fn abort_and_drop_leave_nothing() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a.mkv");
    let mut sink = open_sink(
        &OutputSpec::Container(out.clone()),
        64,
        48,
        Rational::new(30, 1),
        None,
        &Default::default(),
    )
    .unwrap();
    feed(&mut sink, 12, 64, 48).unwrap();
    sink.abort();
    assert!(
        dir_names(dir.path()).is_empty(),
        "abort left {:?}",
        dir_names(dir.path())
    );

    let mut sink = open_sink(
        &OutputSpec::Container(out),
        64,
        48,
        Rational::new(30, 1),
        None,
        &Default::default(),
    )
    .unwrap();
    feed(&mut sink, 12, 64, 48).unwrap();
    drop(sink);
    assert!(
        dir_names(dir.path()).is_empty(),
        "drop left {:?}",
        dir_names(dir.path())
    );

    // Dropping a source early stops its ffmpeg (the test would hang otherwise).
    let clip = make_clip(dir.path(), "c.mp4", &[]);
    let mut src = open_source(&InputSpec::File(clip), &SourceOptions::default()).unwrap();
    assert!(src.next_frame().unwrap().is_some());
    drop(src);
}

#[test]
fn subtitles_follow_the_container() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let srt = dir.path().join("s.srt");
    std::fs::write(&srt, "1\n00:00:00,000 --> 00:00:00,800\nhello\n").unwrap();
    let srt_arg = srt.to_string_lossy().into_owned();
    // mp4 with a mov_text subtitle track.
    let clip = make_clip(
        dir.path(),
        "subs.mp4",
        &[
            "-i", &srt_arg, "-map", "0:v", "-map", "1:a", "-map", "2:s", "-c:s", "mov_text",
        ],
    );
    let input = InputSpec::File(clip.clone());
    let src = open_source(&input, &SourceOptions::default()).unwrap();
    assert!(src.info().has_subtitles && src.info().has_audio);
    drop(src);
    for (name, sub_codec, audio_copied) in [
        ("o.mkv", "subrip", true),
        ("o.mp4", "mov_text", true),
        ("o.webm", "webvtt", false),
    ] {
        let out = dir.path().join(name);
        let mut sink = open_sink(
            &OutputSpec::Container(out.clone()),
            96,
            64,
            Rational::new(24, 1),
            Some(&input),
            &Default::default(),
        )
        .unwrap();
        feed(&mut sink, 24, 96, 64).unwrap();
        sink.finish().unwrap_or_else(|e| panic!("{name}: {e}"));
        let codecs = String::from_utf8(run(Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "stream=codec_type,codec_name",
                "-of",
                "csv=p=0",
            ])
            .arg(&out)))
        .unwrap();
        assert!(
            codecs.contains(&format!("{sub_codec},subtitle")),
            "{name}: {codecs}"
        );
        assert_eq!(
            audio_packets(&out) == audio_packets(&clip),
            audio_copied,
            "{name}: {codecs}"
        );
    }
}

fn stream_entries(path: &Path, entries: &str) -> String {
    String::from_utf8(run(Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            entries,
            "-of",
            "default=nw=1",
        ])
        .arg(path)))
    .unwrap()
}

#[test]
fn rotation_vfr_and_colour_tags() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let clip = make_clip(d, "clip.mp4", &[]);

    // Rotation: frames come upright (size swapped), reported, and the output is not re-tagged.
    let rot = d.join("rot.mp4");
    run(Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&clip)
        .args(["-c", "copy", "-metadata:s:v:0", "rotate=90"])
        .arg(&rot));
    let input = InputSpec::File(rot.clone());
    let mut src = open_source(&input, &SourceOptions::default()).unwrap();
    assert_eq!(src.info().rotation, Some(90));
    assert_eq!((src.info().width, src.info().height), (64, 96));
    let first = src.next_frame().unwrap().unwrap();
    assert_eq!(
        (first.width, first.height, first.data.len()),
        (64, 96, 64 * 96 * 3)
    );
    let out = d.join("rot_out.mkv");
    let mut sink = open_sink(
        &OutputSpec::Container(out.clone()),
        64,
        96,
        src.info().fps,
        Some(&input),
        &Default::default(),
    )
    .unwrap();
    sink.write_frame(&first).unwrap();
    while let Some(f) = src.next_frame().unwrap() {
        sink.write_frame(&f).unwrap();
    }
    sink.finish().unwrap();
    let entries = stream_entries(&out, "stream=width,height:stream_side_data=rotation");
    assert!(
        entries.contains("width=64")
            && entries.contains("height=96")
            && !entries.contains("rotation"),
        "{entries}"
    );

    // VFR: 24 frames spread over 1.5 s. They are passed as decoded, at the average rate 16/1.
    let vfr = d.join("vfr.mp4");
    run(Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=96x64:rate=24",
        ])
        .args([
            "-vf",
            "setpts='if(lt(N,12),N,N+12)/24/TB'",
            "-frames:v",
            "24",
            "-fps_mode",
            "vfr",
        ])
        .args([
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-color_primaries",
            "bt709",
            "-color_trc",
            "bt709",
        ])
        .args(["-colorspace", "bt709", "-color_range", "tv"])
        .arg(&vfr));
    let input = InputSpec::File(vfr.clone());
    let mut src = open_source(&input, &SourceOptions::default()).unwrap();
    let info = src.info().clone();
    assert!(info.variable_frame_rate);
    assert_eq!(info.fps, Rational::new(16, 1));
    assert_eq!(info.color.matrix.as_deref(), Some("bt709"));
    assert_eq!(info.color.range.as_deref(), Some("tv"));
    let out = d.join("vfr_out.mp4");
    let mut sink = open_sink(
        &OutputSpec::Container(out.clone()),
        96,
        64,
        info.fps,
        Some(&input),
        &Default::default(),
    )
    .unwrap();
    let mut n = 0;
    while let Some(f) = src.next_frame().unwrap() {
        sink.write_frame(&f).unwrap();
        n += 1;
    }
    sink.finish().unwrap();
    assert_eq!(n, 24);
    let (frames, rate, duration) = probe_counted(&out);
    assert_eq!((frames, rate.as_str()), (24, "16/1"));
    assert!((duration - 1.5).abs() < 1.0 / 16.0, "{duration}");
    let tags = stream_entries(
        &out,
        "stream=color_space,color_primaries,color_transfer,color_range",
    );
    for t in [
        "color_space=bt709",
        "color_primaries=bt709",
        "color_transfer=bt709",
        "color_range=tv",
    ] {
        assert!(tags.contains(t), "{t} missing in {tags}");
    }
}

/// Mean absolute and mean signed difference over all samples.
fn diff_stats(a: &[RgbFrame], b: &[RgbFrame]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let (mut abs, mut signed, mut n) = (0i64, 0i64, 0i64);
    for (x, y) in a.iter().zip(b) {
        for (p, q) in x.data.iter().zip(&y.data) {
            abs += (*p as i64 - *q as i64).abs();
            signed += *p as i64 - *q as i64;
            n += 1;
        }
    }
    (abs as f64 / n as f64, signed as f64 / n as f64)
}

#[test]
fn colours_survive_a_lossless_round_trip() {
    if !have_ffmpeg() {
        return;
    }
    // Lossless 4:4:4 output: any matrix or range mismatch between our encode and ffmpeg's decode
    // would show as a bias; only 8-bit rounding may remain.
    let dir = tempfile::tempdir().unwrap();
    let untagged = make_clip(dir.path(), "plain.mp4", &[]);
    let full_601 = make_clip(
        dir.path(),
        "full601.mp4",
        &["-colorspace", "smpte170m", "-color_range", "pc"],
    );
    for clip in [untagged, full_601] {
        let input = InputSpec::File(clip.clone());
        let mut src = open_source(&input, &SourceOptions::default()).unwrap();
        let frames: Vec<RgbFrame> = std::iter::from_fn(|| src.next_frame().unwrap()).collect();
        let out = dir.path().join(format!(
            "{}.mkv",
            clip.file_stem().unwrap().to_string_lossy()
        ));
        let opts = EncodeOptions {
            crf: Some(0),
            pix_fmt: Some("yuv444p".into()),
            ..Default::default()
        };
        let mut sink = open_sink(
            &OutputSpec::Container(out.clone()),
            96,
            64,
            src.info().fps,
            Some(&input),
            &opts,
        )
        .unwrap();
        for f in &frames {
            sink.write_frame(f).unwrap();
        }
        sink.finish().unwrap();
        let mut back =
            open_source(&InputSpec::File(out.clone()), &SourceOptions::default()).unwrap();
        let again: Vec<RgbFrame> = std::iter::from_fn(|| back.next_frame().unwrap()).collect();
        let (mad, bias) = diff_stats(&frames, &again);
        assert!(
            mad < 0.6 && bias.abs() < 0.1,
            "{}: mean abs diff {mad}, bias {bias}",
            clip.display()
        );
    }
}
