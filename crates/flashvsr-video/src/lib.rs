//! flashvsr-video: frame sources and sinks for the FlashVSR engine. Pure I/O, no model code.
//!
//! Frames are [`RgbFrame`]s (8-bit RGB, row-major). Backends:
//!
//! * **ffmpeg** (any container): `ffprobe -of json` for facts, `ffmpeg` over pipes for pixels
//!   (no library bindings). Decoding runs on a reader thread and encoding on a writer thread,
//!   each behind a bounded queue of a few frames, so inference overlaps with I/O.
//!   Rotation: frames are delivered upright (ffmpeg auto-rotation) and written upright without a
//!   rotation tag. Variable frame rate input: frames are passed exactly as decoded and played back
//!   at the constant average rate ([`VideoInfo::fps`]); [`VideoInfo::variable_frame_rate`] says so.
//! * **y4m** (pure Rust): 8-bit 4:2:0/4:2:2/4:4:4, full or limited range, BT.601; written as
//!   C444 full range, or 4:2:0 / 4:4:4 in either range by pixel format ([`y4m::Y4mLayout`]).
//!   `-` means stdin/stdout.
//! * **pictures**: PNG/JPEG folders in natural order in; `frame_000000.png`... folders, numbered
//!   sequences (`seq_%04d.png`) and single pictures out.
//!
//! [`check_output`] finds what would make an output fail (its name, the container, the encoder
//! and its settings, by a one-frame test encode) before any frame is computed.
//!
//! Outputs never appear half-written: they are produced under a hidden temporary name next to
//! the target and moved into place by [`FrameSink::finish`]; [`FrameSink::abort`] (or dropping
//! the sink) removes them. An existing output is only replaced with [`EncodeOptions::overwrite`].

mod error;
pub mod ffmpeg;
mod frame;
mod fs_util;
pub mod image_dir;
mod output_check;
mod spec;
mod threaded;
pub mod y4m;
pub mod yuv;

pub use error::VideoError;
pub use ffmpeg::ffmpeg_available;
pub use frame::{ColorTags, DeclaredFrames, Rational, RgbFrame, Truncation, VideoInfo};
pub use output_check::{check_output, OutputPlan};
pub use spec::{EncodeOptions, InputSpec, OutputSpec, SourceOptions};

/// A stream of frames, read ahead on a background thread.
pub trait FrameSource: Send {
    /// Size, rate and stream facts (for the selected frame range).
    fn info(&self) -> &VideoInfo;
    /// The next frame, `Ok(None)` at the end.
    fn next_frame(&mut self) -> Result<Option<RgbFrame>, VideoError>;
}

/// A destination for frames, written on a background thread.
pub trait FrameSink: Send {
    /// Queues one frame (must match the size the sink was opened with). An error from an earlier
    /// frame may surface here.
    fn write_frame(&mut self, f: &RgbFrame) -> Result<(), VideoError>;
    /// Same as [`FrameSink::write_frame`] but takes the frame by value, which saves a copy of the
    /// pixels when the sink queues frames for its writer thread (all sinks returned by
    /// [`open_sink`] do).
    fn write_frame_owned(&mut self, f: RgbFrame) -> Result<(), VideoError> {
        self.write_frame(&f)
    }
    /// Flushes everything, waits for the encoder and moves the output into place. Finishing a
    /// sink that received no frame is an error and leaves nothing behind.
    fn finish(self: Box<Self>) -> Result<(), VideoError>;
    /// Stops and deletes everything written so far (also what dropping an unfinished sink does).
    fn abort(self: Box<Self>);
}

/// Opens an input. Needs ffmpeg only for [`InputSpec::File`].
pub fn open_source(
    spec: &InputSpec,
    opts: &SourceOptions,
) -> Result<Box<dyn FrameSource>, VideoError> {
    let label = spec.display_path();
    let queue = opts.queue_frames.max(1);
    // ffmpeg sources run their own reader thread; the others get one here.
    let source: Box<dyn FrameSource> = match spec {
        InputSpec::File(path) => return ffmpeg::source::open(path, opts),
        InputSpec::Y4m(path) => Box::new(y4m::open_file(path, opts)?),
        InputSpec::Stdin => {
            let reader = y4m::Y4mReader::new(std::io::BufReader::with_capacity(1 << 20, std::io::stdin()), &label)
                .map_err(|e| match e {
                    VideoError::Format { path, msg } => VideoError::Format {
                        path,
                        msg: format!("{msg}; standard input must be YUV4MPEG2 (e.g. ffmpeg -i in.mp4 -f yuv4mpegpipe -)"),
                    },
                    other => other,
                })?;
            Box::new(y4m::Y4mSource::new(reader, None, opts))
        }
        InputSpec::ImageDir(dir) => Box::new(image_dir::ImageDirSource::open(dir, opts)?),
    };
    Ok(Box::new(threaded::ThreadedSource::spawn(
        source, queue, label, None,
    )?))
}

/// Opens an output for `width x height` frames at `fps`. With `source` = the input file, its
/// audio, subtitles, metadata and colour tags are carried into container outputs (y4m and
/// picture outputs hold video only). Needs ffmpeg only for [`OutputSpec::Container`].
/// [`check_output`] first finds mistakes before any frame is computed.
pub fn open_sink(
    spec: &OutputSpec,
    width: usize,
    height: usize,
    fps: Rational,
    source: Option<&InputSpec>,
    opts: &EncodeOptions,
) -> Result<Box<dyn FrameSink>, VideoError> {
    let label = spec.display_path();
    if width == 0 || height == 0 {
        return Err(VideoError::Invalid(format!(
            "{}: frame size {width}x{height} is empty",
            label.display()
        )));
    }
    if !fps.is_valid() {
        return Err(VideoError::Invalid(format!(
            "{}: frame rate {fps} is not valid",
            label.display()
        )));
    }
    let queue = if opts.queue_frames == 0 {
        4
    } else {
        opts.queue_frames
    };
    let inner: Box<dyn FrameSink> = match spec {
        OutputSpec::Container(path) => {
            return ffmpeg::sink::open(path, width, height, fps, source, opts)
        }
        OutputSpec::Y4m(path) => {
            let layout = y4m::Y4mLayout::for_pix_fmt(opts.pix_fmt.as_deref(), path)?;
            Box::new(y4m::Y4mSink::create_file(
                path,
                width,
                height,
                fps,
                layout,
                opts.overwrite,
            )?)
        }
        OutputSpec::Stdout => {
            let layout = y4m::Y4mLayout::for_pix_fmt(opts.pix_fmt.as_deref(), &label)?;
            Box::new(y4m::Y4mSink::stdout(width, height, fps, layout)?)
        }
        OutputSpec::PngDir(path) => Box::new(image_dir::PngDirSink::create(path, opts.overwrite)?),
        OutputSpec::ImageSequence(path) => {
            Box::new(image_dir::ImageSequenceSink::create(path, opts.overwrite)?)
        }
        OutputSpec::Image(path) => Box::new(image_dir::ImageSink::create(path, opts.overwrite)?),
    };
    Ok(Box::new(threaded::ThreadedSink::spawn(
        inner, width, height, queue, label, None,
    )?))
}
