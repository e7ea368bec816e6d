//! Pure-Rust backends against the golden fixtures: y4m reading/writing and image folders.

use std::path::{Path, PathBuf};

use flashvsr_video::image_dir::{list_images, read_rgb_image};
use flashvsr_video::{
    open_sink, open_source, EncodeOptions, FrameSource, InputSpec, OutputSpec, Rational, RgbFrame,
    SourceOptions, VideoError,
};

fn fixture(rel: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/tiny-v1.1"
    ))
    .join(rel)
}

fn read_all(source: &mut dyn FrameSource) -> Vec<RgbFrame> {
    let mut frames = Vec::new();
    while let Some(f) = source.next_frame().expect("frame") {
        frames.push(f);
    }
    frames
}

/// A small synthetic clip with gradients and saturated colours.
fn synthetic_frames(n: usize, w: usize, h: usize) -> Vec<RgbFrame> {
    (0..n)
        .map(|t| {
            let mut f = RgbFrame::new(w, h);
            for y in 0..h {
                for x in 0..w {
                    let i = 3 * (y * w + x);
                    f.data[i] = ((x * 255) / w.max(1) + t * 7) as u8;
                    f.data[i + 1] = ((y * 255) / h.max(1)) as u8;
                    f.data[i + 2] = if (x / 3 + y / 5 + t) % 2 == 0 {
                        255
                    } else {
                        (x * y % 256) as u8
                    };
                }
            }
            f
        })
        .collect()
}

#[test]
fn fixture_y4m_matches_pngs_bit_for_bit() {
    let mut src = open_source(
        &InputSpec::detect(fixture("input.y4m")),
        &SourceOptions::default(),
    )
    .unwrap();
    let info = src.info().clone();
    assert_eq!((info.width, info.height), (64, 64));
    assert_eq!(info.fps, Rational::new(30, 1));
    assert_eq!(info.frame_count, Some(25));
    let frames = read_all(src.as_mut());
    let pngs = list_images(&fixture("input")).unwrap();
    assert_eq!(frames.len(), 25);
    assert_eq!(pngs.len(), 25);
    for (i, (frame, png)) in frames.iter().zip(&pngs).enumerate() {
        let expected = read_rgb_image(png).unwrap();
        assert_eq!((expected.width, expected.height), (64, 64));
        assert!(
            frame.data == expected.data,
            "frame {i} differs from {}",
            png.display()
        );
    }
}

#[test]
fn fixture_png_folder_reads_in_order_and_range() {
    let opts = SourceOptions {
        start_frame: 3,
        end_frame: Some(7),
        image_fps: Rational::new(24, 1),
        ..Default::default()
    };
    let mut src = open_source(&InputSpec::detect(fixture("input")), &opts).unwrap();
    assert_eq!(src.info().frame_count, Some(4));
    assert_eq!(src.info().fps, Rational::new(24, 1));
    let frames = read_all(src.as_mut());
    assert_eq!(frames.len(), 4);
    let expected = read_rgb_image(&fixture("input/frame_0003.png")).unwrap();
    assert!(frames[0].data == expected.data);

    // Same range through y4m must give the same pixels.
    let mut y = open_source(&InputSpec::Y4m(fixture("input.y4m")), &opts).unwrap();
    assert_eq!(y.info().frame_count, Some(4));
    let yframes = read_all(y.as_mut());
    assert_eq!(yframes, frames);
}

#[test]
fn y4m_write_read_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let detailed = synthetic_frames(3, 18, 10);
    // 4:2:0 keeps one chroma sample per 2x2 block, so it round-trips (within 8-bit rounding) only
    // pictures whose colour is constant over each block.
    let blocky: Vec<RgbFrame> = detailed
        .iter()
        .map(|f| {
            let mut b = f.clone();
            for y in 0..f.height {
                for x in 0..f.width {
                    let src = 3 * ((y & !1) * f.width + (x & !1));
                    b.data[3 * (y * f.width + x)..][..3].copy_from_slice(&f.data[src..src + 3]);
                }
            }
            b
        })
        .collect();
    for (pix_fmt, frames, max_err) in [(None, &detailed, 2i32), (Some("yuv420p"), &blocky, 2)] {
        let out = dir
            .path()
            .join(format!("rt-{}.y4m", pix_fmt.unwrap_or("444")));
        let opts = EncodeOptions {
            pix_fmt: pix_fmt.map(String::from),
            ..Default::default()
        };
        let mut sink = open_sink(
            &OutputSpec::detect(&out),
            18,
            10,
            Rational::new(25, 1),
            None,
            &opts,
        )
        .unwrap();
        for f in frames {
            sink.write_frame_owned(f.clone()).unwrap();
        }
        assert!(!out.exists(), "output must appear only on finish");
        sink.finish().unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.to_string_lossy().contains("partial")),
            "temp file left: {names:?}"
        );

        let mut src = open_source(&InputSpec::detect(&out), &SourceOptions::default()).unwrap();
        assert_eq!(src.info().fps, Rational::new(25, 1));
        assert_eq!(src.info().frame_count, Some(3));
        let back = read_all(src.as_mut());
        assert_eq!(back.len(), 3);
        let worst = frames
            .iter()
            .zip(&back)
            .flat_map(|(a, b)| {
                a.data
                    .iter()
                    .zip(&b.data)
                    .map(|(x, y)| (*x as i32 - *y as i32).abs())
            })
            .max()
            .unwrap();
        assert!(
            worst <= max_err,
            "{pix_fmt:?}: round trip error {worst} > {max_err}"
        );
    }
}

#[test]
fn fixture_frames_survive_y4m_write() {
    // PNG fixture -> our C444 writer -> reader: the fixture's own y4m round-trips within 2 levels.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.y4m");
    let png = read_rgb_image(&fixture("input/frame_0000.png")).unwrap();
    let mut sink = open_sink(
        &OutputSpec::Y4m(out.clone()),
        64,
        64,
        Rational::new(30, 1),
        None,
        &EncodeOptions::default(),
    )
    .unwrap();
    sink.write_frame(&png).unwrap();
    sink.finish().unwrap();
    let text = std::fs::read(&out).unwrap();
    assert!(text.starts_with(b"YUV4MPEG2 W64 H64 F30:1 Ip A1:1 C444 XCOLORRANGE=FULL\nFRAME\n"));
    let mut src = open_source(&InputSpec::Y4m(out), &SourceOptions::default()).unwrap();
    let back = src.next_frame().unwrap().unwrap();
    let worst = png
        .data
        .iter()
        .zip(&back.data)
        .map(|(a, b)| (*a as i32 - *b as i32).abs())
        .max()
        .unwrap();
    assert!(worst <= 2, "round trip error {worst}");
}

fn y4m_error(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.y4m");
    std::fs::write(&path, bytes).unwrap();
    let result = open_source(&InputSpec::Y4m(path), &SourceOptions::default()).and_then(|mut s| {
        while s.next_frame()?.is_some() {}
        Ok(())
    });
    match result {
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("bad.y4m"),
                "error does not name the file: {msg}"
            );
            assert!(!msg.contains('\n'), "error is not one line: {msg}");
            msg
        }
        Ok(()) => panic!("corrupt y4m accepted"),
    }
}

#[test]
fn corrupt_y4m_is_a_clear_error() {
    assert!(y4m_error(b"").contains("empty file"));
    assert!(y4m_error(b"RIFF1234 W2 H2\n").contains("not a y4m file"));
    assert!(y4m_error(b"YUV4MPEG2 H2 F25:1 C444\n").contains("no width"));
    assert!(y4m_error(b"YUV4MPEG2 W2 H2 F25:1 C420p10\n").contains("more than 8 bits"));
    assert!(y4m_error(b"YUV4MPEG2 W2 H2 F25:1 Cmono\n").contains("monochrome"));
    assert!(y4m_error(b"YUV4MPEG2 W2 H2 Fx:1 C444\n").contains("frame rate"));
    assert!(y4m_error(b"YUV4MPEG2 W2 H2 F25:1 C444\nFRAME\n0123").contains("truncated y4m frame 0"));
    assert!(
        y4m_error(b"YUV4MPEG2 W2 H2 F25:1 C444\nFRAME\n012345678901GARBAGE\n")
            .contains("FRAME marker")
    );
}

#[test]
fn y4m_420_limited_range_reads() {
    // 2x2 C420 (default range: limited): Y=16/235 black/white, neutral chroma.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.y4m");
    std::fs::write(
        &path,
        b"YUV4MPEG2 W2 H2 F25:1 C420mpeg2\nFRAME\n\x10\xeb\xeb\x10\x80\x80",
    )
    .unwrap();
    let mut src = open_source(&InputSpec::Y4m(path), &SourceOptions::default()).unwrap();
    let f = src.next_frame().unwrap().unwrap();
    assert_eq!(f.data, [0, 0, 0, 255, 255, 255, 255, 255, 255, 0, 0, 0]);
    assert!(src.next_frame().unwrap().is_none());
}

#[test]
fn png_folder_natural_sort_and_conversions() {
    let dir = tempfile::tempdir().unwrap();
    // Written out of order, with mixed formats: gray, RGBA, 16-bit.
    image::GrayImage::from_pixel(4, 2, image::Luma([10]))
        .save(dir.path().join("f10.png"))
        .unwrap();
    image::RgbaImage::from_pixel(4, 2, image::Rgba([1, 2, 3, 0]))
        .save(dir.path().join("f2.png"))
        .unwrap();
    image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_pixel(
        4,
        2,
        image::Rgb([65535, 0, 257 * 100]),
    )
    .save(dir.path().join("f1.png"))
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let mut src = open_source(&InputSpec::detect(dir.path()), &SourceOptions::default()).unwrap();
    assert_eq!(src.info().fps, Rational::new(30, 1));
    assert_eq!(src.info().frame_count, Some(3));
    let frames = read_all(src.as_mut());
    assert_eq!(&frames[0].data[..3], &[255, 0, 100]);
    assert_eq!(&frames[1].data[..3], &[1, 2, 3]);
    assert_eq!(&frames[2].data[..3], &[10, 10, 10]);

    // A frame of another size is an error naming that file.
    image::RgbImage::new(3, 3)
        .save(dir.path().join("f11.png"))
        .unwrap();
    let mut src = open_source(
        &InputSpec::ImageDir(dir.path().to_path_buf()),
        &SourceOptions::default(),
    )
    .unwrap();
    let err = loop {
        match src.next_frame() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("size change not detected"),
            Err(e) => break e.to_string(),
        }
    };
    assert!(
        err.contains("f11.png") && err.contains("same size"),
        "{err}"
    );
}

#[test]
fn png_sink_is_atomic_and_respects_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("frames");
    let spec = OutputSpec::detect(format!("{}/", out.display()));
    assert!(matches!(spec, OutputSpec::PngDir(_)));
    let frames = synthetic_frames(3, 6, 4);
    let mut sink = open_sink(
        &spec,
        6,
        4,
        Rational::new(30, 1),
        None,
        &EncodeOptions::default(),
    )
    .unwrap();
    for f in &frames {
        sink.write_frame(f).unwrap();
    }
    assert!(!out.exists());
    sink.finish().unwrap();
    let written = list_images(&out).unwrap();
    assert_eq!(written.len(), 3);
    assert!(written[0].ends_with("frame_000000.png"));
    assert_eq!(read_rgb_image(&written[2]).unwrap(), frames[2]);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "temporary folder left behind"
    );

    // Existing non-empty folder: refused without overwrite.
    match open_sink(
        &spec,
        6,
        4,
        Rational::new(30, 1),
        None,
        &EncodeOptions::default(),
    ) {
        Err(VideoError::OutputExists { .. }) => {}
        other => panic!("expected OutputExists, got {:?}", other.err()),
    }
    // With overwrite: old frames replaced, foreign files kept.
    std::fs::write(out.join("keep.txt"), "x").unwrap();
    let opts = EncodeOptions {
        overwrite: true,
        ..Default::default()
    };
    let mut sink = open_sink(&spec, 6, 4, Rational::new(30, 1), None, &opts).unwrap();
    sink.write_frame(&frames[1]).unwrap();
    sink.finish().unwrap();
    assert_eq!(list_images(&out).unwrap().len(), 1);
    assert_eq!(
        read_rgb_image(&out.join("frame_000000.png")).unwrap(),
        frames[1]
    );
    assert!(out.join("keep.txt").exists());

    // Abort and drop leave nothing.
    let fresh = OutputSpec::PngDir(dir.path().join("aborted"));
    let mut sink = open_sink(
        &fresh,
        6,
        4,
        Rational::new(30, 1),
        None,
        &EncodeOptions::default(),
    )
    .unwrap();
    sink.write_frame(&frames[0]).unwrap();
    sink.abort();
    let mut sink = open_sink(
        &fresh,
        6,
        4,
        Rational::new(30, 1),
        None,
        &EncodeOptions::default(),
    )
    .unwrap();
    sink.write_frame(&frames[0]).unwrap();
    drop(sink);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "abort/drop left files behind"
    );
}

#[test]
fn sink_rejects_wrong_frame_size_and_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.y4m");
    let mut sink = open_sink(
        &OutputSpec::Y4m(out.clone()),
        4,
        4,
        Rational::new(30, 1),
        None,
        &EncodeOptions::default(),
    )
    .unwrap();
    let empty = open_sink(
        &OutputSpec::Y4m(dir.path().join("e.y4m")),
        4,
        4,
        Rational::new(30, 1),
        None,
        &Default::default(),
    )
    .unwrap();
    let msg = empty.finish().unwrap_err().to_string();
    assert!(msg.contains("e.y4m") && msg.contains("no frames"), "{msg}");
    // Only the other (still open) sink's temporary file may exist.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with(".o.partial")),
        "{names:?}"
    );
    let err = sink.write_frame(&RgbFrame::new(4, 2)).unwrap_err();
    assert!(matches!(err, VideoError::FrameSize { .. }), "{err}");
    sink.write_frame(&RgbFrame::new(4, 4)).unwrap();
    sink.finish().unwrap();
    let before = std::fs::read(&out).unwrap();
    let err = open_sink(
        &OutputSpec::Y4m(out.clone()),
        2,
        2,
        Rational::new(30, 1),
        None,
        &EncodeOptions::default(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
}

#[test]
fn detect_specs() {
    assert_eq!(InputSpec::detect("-"), InputSpec::Stdin);
    assert_eq!(
        InputSpec::detect("a/b.Y4M"),
        InputSpec::Y4m("a/b.Y4M".into())
    );
    assert_eq!(
        InputSpec::detect("clip.mp4"),
        InputSpec::File("clip.mp4".into())
    );
    assert_eq!(OutputSpec::detect("-"), OutputSpec::Stdout);
    assert_eq!(
        OutputSpec::detect("out/"),
        OutputSpec::PngDir("out/".into())
    );
    assert_eq!(OutputSpec::detect("o.y4m"), OutputSpec::Y4m("o.y4m".into()));
    assert_eq!(
        OutputSpec::detect("o.mkv"),
        OutputSpec::Container("o.mkv".into())
    );
}

#[test]
fn y4m_streams_in_memory() {
    // What stdin/stdout use: the reader and writer over plain byte streams.
    use flashvsr_video::y4m::{Y4mReader, Y4mWriter};
    use flashvsr_video::yuv::Subsampling;
    let frames = synthetic_frames(2, 5, 3);
    let mut w = Y4mWriter::new(
        Vec::new(),
        5,
        3,
        Rational::new(24000, 1001),
        Subsampling::S444,
    )
    .unwrap();
    for f in &frames {
        w.write_frame(f).unwrap();
    }
    let bytes = w.into_inner();
    assert_eq!(
        bytes.len(),
        "YUV4MPEG2 W5 H3 F24000:1001 Ip A1:1 C444 XCOLORRANGE=FULL\n".len() + 2 * (6 + 45)
    );
    let mut r = Y4mReader::new(std::io::Cursor::new(bytes), "<stdin>").unwrap();
    assert_eq!(r.header().fps, Rational::new(24000, 1001));
    let mut n = 0;
    while let Some(f) = r.read_frame().unwrap() {
        assert_eq!((f.width, f.height), (5, 3));
        n += 1;
    }
    assert_eq!(n, 2);
}
