//! Everything about an output that can be checked before any frame exists: the name, the
//! container, the encoder and its settings (one test frame through ffmpeg), what happens to the
//! source's audio and subtitles. A long run then cannot fail at its first written frame.

use crate::ffmpeg::sink;
use crate::image_dir::{check_png_dir_target, check_sequence_target, one_picture_only};
use crate::spec::{has_extension, STILL_IMAGE_EXTENSIONS};
use crate::y4m::Y4mLayout;
use crate::{EncodeOptions, InputSpec, OutputSpec, Rational, VideoError, VideoInfo};

/// What an output will be, from [`check_output`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputPlan {
    /// Pixel format written (ffmpeg's name); `None` for PNG/JPEG pictures (8-bit RGB).
    pub pix_fmt: Option<String>,
    /// The source's audio goes into the output, every stream as it is.
    pub audio_copied: bool,
    /// At least one audio stream is re-encoded because the container cannot hold its codec.
    pub audio_reencoded: bool,
    /// One line each, for the user: re-encoded audio, dropped subtitles, pixel format choices,
    /// ignored options.
    pub notes: Vec<String>,
}

/// Checks an output of `width`×`height` frames at `fps` before the frames are computed.
/// `source` is the input with its info: its audio/subtitles/pixel format shape the plan, and its
/// declared frame count tells whether a video is going into a one-picture file. Nothing is left
/// behind (the container test encode writes a hidden file and removes it).
pub fn check_output(
    spec: &OutputSpec,
    width: usize,
    height: usize,
    fps: Rational,
    source: Option<(&InputSpec, &VideoInfo)>,
    opts: &EncodeOptions,
) -> Result<OutputPlan, VideoError> {
    let label = spec.display_path();
    if width == 0 || height == 0 {
        return Err(VideoError::Invalid(format!(
            "{}: frame size {width}x{height} is empty",
            label.display()
        )));
    }
    let info = source.map(|(_, info)| info);
    let frames = info.and_then(|i| i.declared_frames).map(|d| d.count());
    let several_frames = frames.is_some_and(|n| n > 1);
    let mut plan = OutputPlan::default();
    let src_depth_note = |what: &str| {
        let deep = info
            .and_then(|i| i.pix_fmt.as_deref())
            .filter(|p| p.contains("10") || p.contains("12") || p.contains("16"));
        deep.map(|p| format!("the input is more than 8-bit ({p}); {what} output is 8-bit"))
    };
    if !matches!(spec, OutputSpec::Container(_)) {
        if info.is_some_and(|i| i.has_audio || i.has_subtitles) {
            plan.notes.push(
                "y4m and picture outputs hold video only: the input's audio and subtitles are \
                 not carried"
                    .into(),
            );
        }
        if opts.codec.is_some() || opts.crf.is_some() || opts.preset.is_some() {
            plan.notes
                .push("codec, crf and preset apply to video files only; ignored here".into());
        }
    }
    match spec {
        OutputSpec::Container(path) => {
            let still = STILL_IMAGE_EXTENSIONS
                .iter()
                .any(|e| has_extension(path, e));
            if still && several_frames {
                return Err(one_picture_only(path));
            }
            let source = source.map(|(s, _)| s);
            let encode = sink::check(path, width, height, fps, source, opts)?;
            plan.audio_reencoded = encode.audio.iter().any(|(_, enc)| enc.is_some());
            plan.audio_copied = !encode.audio.is_empty() && !plan.audio_reencoded;
            plan.pix_fmt = Some(encode.pix_fmt);
            plan.notes.extend(encode.notes);
        }
        OutputSpec::Y4m(_) | OutputSpec::Stdout => {
            if let OutputSpec::Y4m(path) = spec {
                crate::fs_util::check_output_target(path, opts.overwrite)?;
            }
            let layout = Y4mLayout::for_pix_fmt(opts.pix_fmt.as_deref(), &label)?;
            plan.pix_fmt = Some(layout_name(layout).into());
            plan.notes.extend(src_depth_note("y4m"));
        }
        OutputSpec::PngDir(_) | OutputSpec::ImageSequence(_) | OutputSpec::Image(_) => {
            match spec {
                OutputSpec::PngDir(path) => drop(check_png_dir_target(path, opts.overwrite)?),
                OutputSpec::ImageSequence(path) => {
                    drop(check_sequence_target(path, opts.overwrite)?)
                }
                OutputSpec::Image(path) => {
                    if several_frames {
                        return Err(one_picture_only(path));
                    }
                    crate::fs_util::check_output_target(path, opts.overwrite)?;
                }
                _ => unreachable!("matched above"),
            }
            if let Some(p) = &opts.pix_fmt {
                plan.notes.push(format!(
                    "pictures are written as 8-bit RGB; pixel format {p} is ignored"
                ));
            }
            plan.notes.extend(src_depth_note("picture"));
        }
    }
    Ok(plan)
}

fn layout_name(layout: Y4mLayout) -> &'static str {
    crate::y4m::Y4mHeader {
        width: 1,
        height: 1,
        fps: Rational::new(1, 1),
        subsampling: layout.subsampling,
        range: layout.range,
        colorspace: String::new(),
    }
    .pix_fmt()
}
