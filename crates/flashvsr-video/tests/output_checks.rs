//! What is known before any frame is computed (`check_output`), and what the decoded stream says
//! afterwards (`VideoInfo::truncation`): truncated inputs, output names and encoder settings that
//! cannot work, pixel formats, image sequences, y4m layouts, audio that is re-encoded.

use std::path::{Path, PathBuf};
use std::process::Command;

use flashvsr_video::{
    check_output, ffmpeg_available, open_sink, open_source, DeclaredFrames, EncodeOptions,
    FrameSource, InputSpec, OutputPlan, OutputSpec, Rational, RgbFrame, SourceOptions, VideoError,
    VideoInfo,
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

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .output()
        .expect("spawn ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ffprobe_entry(path: &Path, entry: &str) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .arg(format!("stream={entry}"))
        .args(["-of", "default=nw=1:nk=1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A 1 s, 30-frame clip of noisy frames (so that the frames are big and a cut loses many).
fn noisy_clip(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let mut args = vec![
        "-f",
        "lavfi",
        "-i",
        "testsrc=s=96x64:r=30,noise=alls=60:allf=t",
        "-t",
        "1",
    ];
    args.extend_from_slice(extra);
    args.push(path.to_str().unwrap());
    ffmpeg(&args);
    path
}

fn source_with_info(input: &InputSpec) -> (Box<dyn FrameSource>, VideoInfo) {
    let src = open_source(input, &SourceOptions::default()).unwrap();
    let info = src.info().clone();
    (src, info)
}

fn count_frames(src: &mut dyn FrameSource) -> u64 {
    let mut n = 0;
    while src.next_frame().unwrap().is_some() {
        n += 1;
    }
    n
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn check(
    out: &Path,
    w: usize,
    h: usize,
    source: Option<(&InputSpec, &VideoInfo)>,
    opts: &EncodeOptions,
) -> Result<OutputPlan, VideoError> {
    check_output(
        &OutputSpec::detect(out),
        w,
        h,
        Rational::new(30, 1),
        source,
        opts,
    )
}

#[test]
fn a_cut_file_is_reported_as_truncated() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let full = noisy_clip(
        dir.path(),
        "full.mp4",
        &[
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
        ],
    );
    let mkv = dir.path().join("full.mkv");
    ffmpeg(&[
        "-i",
        full.to_str().unwrap(),
        "-c",
        "copy",
        mkv.to_str().unwrap(),
    ]);
    for (whole, declared) in [
        (&full, DeclaredFrames::Counted(30)),
        (&mkv, DeclaredFrames::FromDuration(30)),
    ] {
        let (mut src, info) = source_with_info(&InputSpec::File(whole.clone()));
        assert_eq!(info.declared_frames, Some(declared), "{}", whole.display());
        let n = count_frames(src.as_mut());
        assert_eq!(n, 30);
        assert_eq!(info.truncation(n), None, "{}", whole.display());

        // Half the bytes: ffmpeg decodes what is there and exits 0.
        let bytes = std::fs::read(whole).unwrap();
        let half = dir.path().join(format!(
            "half.{}",
            whole.extension().unwrap().to_string_lossy()
        ));
        std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
        let (mut src, info) = source_with_info(&InputSpec::File(half.clone()));
        let n = count_frames(src.as_mut());
        assert!(n > 0 && n < 30, "{}: {n} frames", half.display());
        let t = info.truncation(n).expect("the cut file is noticed");
        assert_eq!(t.decoded, n);
        assert!(t.to_string().contains("truncated"), "{t}");
    }
    // A frame range inside the intact part is complete.
    let (_, info) = {
        let src = open_source(
            &InputSpec::File(full),
            &SourceOptions {
                start_frame: 5,
                end_frame: Some(10),
                ..Default::default()
            },
        )
        .unwrap();
        let info = src.info().clone();
        (src, info)
    };
    assert_eq!(info.declared_frames, Some(DeclaredFrames::Counted(5)));
    assert_eq!(info.truncation(5), None);
}

#[test]
fn output_mistakes_are_found_before_any_frame() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clip = noisy_clip(
        dir.path(),
        "in.mp4",
        &["-c:v", "libx264", "-pix_fmt", "yuv420p"],
    );
    let input = InputSpec::File(clip);
    let (_src, info) = source_with_info(&input);
    let source = Some((&input, &info));
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let at = |name: &str| out.join(name);
    let default = EncodeOptions::default();
    let err = |name: &str, opts: &EncodeOptions| -> String {
        let e = check(&at(name), 384, 256, source, opts).expect_err(name);
        let msg = e.to_string();
        assert!(!msg.contains("partial"), "temporary name in: {msg}");
        assert!(msg.contains(name.split('/').next().unwrap()), "{msg}");
        msg
    };

    let msg = err("upscaled", &default);
    assert!(
        msg.contains("no file extension") && msg.contains("upscaled/"),
        "{msg}"
    );
    let msg = err("o.xyz", &default);
    assert!(msg.contains("no container for .xyz"), "{msg}");
    for name in ["o.png", "o.jpg", "o.bmp"] {
        let msg = err(name, &default);
        assert!(msg.contains("one frame") && msg.contains("_%04d"), "{msg}");
    }
    for name in ["seq_%s.png", "seq_%d_%d.png", "seq_%04d.tif"] {
        let msg = err(name, &default);
        assert!(
            msg.contains("%0Nd") || msg.contains(".png or .jpg"),
            "{msg}"
        );
    }
    let with = |f: fn(&mut EncodeOptions)| {
        let mut o = EncodeOptions::default();
        f(&mut o);
        o
    };
    let msg = err("o.mp4", &with(|o| o.preset = Some("warp9".into())));
    assert!(
        msg.contains("test encode") && msg.contains("warp9"),
        "{msg}"
    );
    let msg = err("o.mp4", &with(|o| o.codec = Some("no_such_encoder".into())));
    assert!(msg.contains("no encoder no_such_encoder"), "{msg}");
    let msg = err("o.webm", &with(|o| o.codec = Some("libx264".into())));
    assert!(msg.contains("test encode") && msg.contains("WebM"), "{msg}");
    // ffmpeg would silently write 8-bit here; we say so instead.
    let msg = err(
        "o.mp4",
        &with(|o| {
            o.codec = Some("mpeg4".into());
            o.pix_fmt = Some("yuv420p10le".into());
        }),
    );
    assert!(msg.contains("cannot encode pixel format"), "{msg}");
    let odd = check(
        &at("o.mp4"),
        385,
        256,
        source,
        &with(|o| o.pix_fmt = Some("yuv420p".into())),
    );
    let msg = odd.unwrap_err().to_string();
    assert!(
        msg.contains("odd size") && msg.contains("--pix-fmt yuv444p"),
        "{msg}"
    );

    // What works: nothing left behind, and the plan says what will happen.
    let plan = check(&at("o.mp4"), 384, 256, source, &default).unwrap();
    assert_eq!(plan.pix_fmt.as_deref(), Some("yuv420p"));
    let plan = check(&at("o.mp4"), 385, 257, source, &default).unwrap();
    assert_eq!(plan.pix_fmt.as_deref(), Some("yuv444p"));
    assert!(
        plan.notes.iter().any(|n| n.contains("odd side")),
        "{:?}",
        plan.notes
    );
    check(&at("seq_%04d.png"), 384, 256, source, &default).unwrap();
    check(&at("frames/"), 384, 256, source, &default).unwrap();
    assert!(names(&out).is_empty(), "left behind: {:?}", names(&out));

    // One frame may go into one picture.
    let mut one = info.clone();
    one.declared_frames = Some(DeclaredFrames::Counted(1));
    check(&at("o.png"), 384, 256, Some((&input, &one)), &default).unwrap();
}

#[test]
fn subtitles_a_container_cannot_hold_are_dropped_with_a_note() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let srt = dir.path().join("s.srt");
    std::fs::write(&srt, "1\n00:00:00,000 --> 00:00:00,500\nhello\n").unwrap();
    let clip = dir.path().join("in.mkv");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=s=64x48:r=30",
        "-f",
        "lavfi",
        "-i",
        "sine",
        "-i",
        srt.to_str().unwrap(),
        "-t",
        "1",
        "-map",
        "0",
        "-map",
        "1",
        "-map",
        "2",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "pcm_s16le",
        "-c:s",
        "srt",
        clip.to_str().unwrap(),
    ]);
    let input = InputSpec::File(clip);
    let (_src, info) = source_with_info(&input);
    let plan = check(
        &dir.path().join("o.avi"),
        128,
        96,
        Some((&input, &info)),
        &EncodeOptions::default(),
    )
    .unwrap();
    assert!(
        plan.notes
            .iter()
            .any(|n| n.contains("subtitle") && n.contains("dropping")),
        "{:?}",
        plan.notes
    );
    assert!(plan.audio_copied, "pcm fits AVI");

    // mp4 cannot copy PCM: re-encoded, said, and not "copied".
    let plan = check(
        &dir.path().join("o.mp4"),
        128,
        96,
        Some((&input, &info)),
        &EncodeOptions::default(),
    )
    .unwrap();
    assert!(plan.audio_reencoded && !plan.audio_copied);
    assert!(
        plan.notes
            .iter()
            .any(|n| n.contains("re-encoding it as AAC")),
        "{:?}",
        plan.notes
    );
    assert_eq!(names(dir.path()), ["in.mkv", "s.srt"]);
}

#[test]
fn ten_bit_input_gets_a_ten_bit_output_and_odd_sizes_444() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("in10.mkv");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=s=64x48:r=30",
        "-t",
        "0.2",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p10le",
        clip.to_str().unwrap(),
    ]);
    let input = InputSpec::File(clip);
    let (mut src, info) = source_with_info(&input);
    assert_eq!(info.pix_fmt.as_deref(), Some("yuv420p10le"));
    let frames: Vec<RgbFrame> = std::iter::from_fn(|| src.next_frame().unwrap()).collect();
    for (name, w, h, want) in [
        ("o.mp4", 64, 48, "yuv420p10le"),
        ("odd.mp4", 63, 47, "yuv444p10le"),
    ] {
        let out = dir.path().join(name);
        let spec = OutputSpec::detect(&out);
        let opts = EncodeOptions::default();
        let plan = check_output(&spec, w, h, info.fps, Some((&input, &info)), &opts).unwrap();
        assert_eq!(plan.pix_fmt.as_deref(), Some(want));
        assert!(
            plan.notes
                .iter()
                .any(|n| n.contains("10-bit") && n.contains("8-bit RGB")),
            "{:?}",
            plan.notes
        );
        let mut sink = open_sink(&spec, w, h, info.fps, Some(&input), &opts).unwrap();
        for f in &frames {
            let mut g = RgbFrame::new(w, h);
            for y in 0..h {
                g.data[y * w * 3..(y * w + w.min(f.width)) * 3]
                    .copy_from_slice(&f.data[y * f.width * 3..(y * f.width + w.min(f.width)) * 3]);
            }
            sink.write_frame_owned(g).unwrap();
        }
        sink.finish().unwrap();
        assert_eq!(ffprobe_entry(&out, "pix_fmt"), want);
    }
}

#[test]
fn image_sequences_and_single_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let pattern = dir.path().join("seq_%03d.png");
    let spec = OutputSpec::detect(&pattern);
    assert_eq!(spec, OutputSpec::ImageSequence(pattern.clone()));
    let frame = |v: u8| RgbFrame {
        width: 4,
        height: 2,
        data: vec![v; 24],
    };
    let fps = Rational::new(24, 1);
    let opts = EncodeOptions::default();

    // Aborted: nothing at all, not even the first pictures.
    let mut sink = open_sink(&spec, 4, 2, fps, None, &opts).unwrap();
    for v in 0..3 {
        sink.write_frame(&frame(v)).unwrap();
    }
    sink.abort();
    assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));

    let mut sink = open_sink(&spec, 4, 2, fps, None, &opts).unwrap();
    for v in [10, 20, 30] {
        sink.write_frame(&frame(v)).unwrap();
    }
    assert!(names(dir.path()).iter().all(|n| n.starts_with('.')));
    sink.finish().unwrap();
    assert_eq!(
        names(dir.path()),
        ["seq_001.png", "seq_002.png", "seq_003.png"]
    );
    let back = flashvsr_video::image_dir::read_rgb_image(&dir.path().join("seq_002.png")).unwrap();
    assert_eq!(back, frame(20));
    // The same pattern again needs overwrite.
    let err = open_sink(&spec, 4, 2, fps, None, &opts).err().unwrap();
    assert!(err.to_string().contains("already exists"), "{err}");

    // One picture: a second frame is refused and nothing is written.
    let one = dir.path().join("one.jpg");
    let spec = OutputSpec::detect(&one);
    assert_eq!(spec, OutputSpec::Image(one.clone()));
    let mut sink = open_sink(&spec, 4, 2, fps, None, &opts).unwrap();
    sink.write_frame(&frame(1)).unwrap();
    let second = sink.write_frame(&frame(2)).and_then(|()| sink.finish());
    let msg = second.unwrap_err().to_string();
    assert!(
        msg.contains("one frame") && msg.contains("one_%04d.jpg"),
        "{msg}"
    );
    assert!(!one.exists());
    let mut sink = open_sink(&spec, 4, 2, fps, None, &opts).unwrap();
    sink.write_frame(&frame(1)).unwrap();
    sink.finish().unwrap();
    assert!(one.exists());
    assert_eq!(names(dir.path()).len(), 4);
}

#[test]
fn y4m_layouts_by_pixel_format() {
    let dir = tempfile::tempdir().unwrap();
    let mut frame = RgbFrame::new(6, 4);
    for (i, v) in frame.data.iter_mut().enumerate() {
        *v = (i * 7 % 256) as u8;
    }
    for (pix_fmt, header) in [
        (None, "C444 XCOLORRANGE=FULL"),
        (Some("yuv420p"), "C420jpeg XCOLORRANGE=LIMITED"),
        (Some("yuv444p"), "C444 XCOLORRANGE=LIMITED"),
        (Some("yuvj420p"), "C420jpeg XCOLORRANGE=FULL"),
    ] {
        let out = dir
            .path()
            .join(format!("{}.y4m", pix_fmt.unwrap_or("default")));
        let opts = EncodeOptions {
            pix_fmt: pix_fmt.map(String::from),
            ..Default::default()
        };
        let spec = OutputSpec::detect(&out);
        let plan = check_output(&spec, 6, 4, Rational::new(25, 1), None, &opts).unwrap();
        assert_eq!(plan.pix_fmt.as_deref(), Some(pix_fmt.unwrap_or("yuvj444p")));
        let mut sink = open_sink(&spec, 6, 4, Rational::new(25, 1), None, &opts).unwrap();
        sink.write_frame(&frame).unwrap();
        sink.finish().unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let first_line =
            String::from_utf8_lossy(&bytes[..bytes.iter().position(|b| *b == b'\n').unwrap()])
                .to_string();
        assert!(first_line.ends_with(header), "{first_line}");
        // The reader honours what the writer wrote.
        let mut src = open_source(&InputSpec::Y4m(out), &SourceOptions::default()).unwrap();
        let back = src.next_frame().unwrap().unwrap();
        assert_eq!((back.width, back.height), (6, 4));
        if pix_fmt.is_none_or(|p| p.contains("444")) {
            let worst = frame
                .data
                .iter()
                .zip(&back.data)
                .map(|(a, b)| (*a as i32 - *b as i32).abs())
                .max();
            assert!(worst.unwrap() <= 3, "{pix_fmt:?}: {worst:?}");
        }
    }
    let err = check_output(
        &OutputSpec::Stdout,
        6,
        4,
        Rational::new(25, 1),
        None,
        &EncodeOptions {
            pix_fmt: Some("yuv420p10le".into()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("--pix-fmt"), "{err}");
}
