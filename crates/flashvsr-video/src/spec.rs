//! Where frames come from / go to, and the options that go with them.

use std::path::{Path, PathBuf};

use crate::Rational;

/// An input, usually from [`InputSpec::detect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSpec {
    /// Any container/codec ffmpeg can read (needs `ffmpeg` and `ffprobe`).
    File(PathBuf),
    /// YUV4MPEG2 file, read in pure Rust.
    Y4m(PathBuf),
    /// YUV4MPEG2 on standard input (`-`), e.g. `ffmpeg -i in.mkv -f yuv4mpegpipe - | flashvsr ...`.
    Stdin,
    /// A folder of PNG/JPEG frames, natural sort order (`frame2` before `frame10`).
    ImageDir(PathBuf),
}

impl InputSpec {
    /// `-` = stdin (y4m); an existing folder = image folder; `.y4m` = y4m; anything else = ffmpeg.
    pub fn detect(path: impl AsRef<Path>) -> InputSpec {
        let path = path.as_ref();
        if path.as_os_str() == "-" {
            InputSpec::Stdin
        } else if path.is_dir() {
            InputSpec::ImageDir(path.to_path_buf())
        } else if has_extension(path, "y4m") {
            InputSpec::Y4m(path.to_path_buf())
        } else {
            InputSpec::File(path.to_path_buf())
        }
    }

    /// The path for messages (`<stdin>` for standard input).
    pub fn display_path(&self) -> PathBuf {
        match self {
            InputSpec::File(p) | InputSpec::Y4m(p) | InputSpec::ImageDir(p) => p.clone(),
            InputSpec::Stdin => PathBuf::from(crate::error::STDIN_LABEL),
        }
    }
}

/// An output, usually from [`OutputSpec::detect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputSpec {
    /// A container written by ffmpeg; the extension picks the muxer (and the default codec).
    Container(PathBuf),
    /// YUV4MPEG2 file (C444 full range by default), pure Rust.
    Y4m(PathBuf),
    /// YUV4MPEG2 on standard output (`-`).
    Stdout,
    /// A folder of `frame_000000.png`, `frame_000001.png`, ...
    PngDir(PathBuf),
    /// Numbered pictures from a printf pattern such as `shots/seq_%04d.png` (`.png`, `.jpg`),
    /// numbered from 1 as ffmpeg does (see [`crate::image_dir::ImagePattern`]).
    ImageSequence(PathBuf),
    /// One picture (`.png`, `.jpg`, `.jpeg`): only for a single frame.
    Image(PathBuf),
}

/// Extensions of still-picture formats: a video into one of these names is a mistake.
pub(crate) const STILL_IMAGE_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "bmp", "tif", "tiff", "ppm", "pgm", "pnm", "dpx", "exr", "tga", "jp2",
];

impl OutputSpec {
    /// `-` = y4m on stdout; an existing folder or a path ending in `/` = PNG folder; `.y4m` = y4m;
    /// a file name with `%` = image sequence; `.png`/`.jpg`/`.jpeg` = one picture; anything else =
    /// container via ffmpeg.
    pub fn detect(path: impl AsRef<Path>) -> OutputSpec {
        let path = path.as_ref();
        let text = path.to_string_lossy();
        let name_has_percent = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains('%'));
        if text == "-" {
            OutputSpec::Stdout
        } else if path.is_dir() || text.ends_with('/') || text.ends_with(std::path::MAIN_SEPARATOR)
        {
            OutputSpec::PngDir(path.to_path_buf())
        } else if has_extension(path, "y4m") {
            OutputSpec::Y4m(path.to_path_buf())
        } else if name_has_percent {
            OutputSpec::ImageSequence(path.to_path_buf())
        } else if ["png", "jpg", "jpeg"]
            .iter()
            .any(|e| has_extension(path, e))
        {
            OutputSpec::Image(path.to_path_buf())
        } else {
            OutputSpec::Container(path.to_path_buf())
        }
    }

    /// The path for messages (`<stdout>` for standard output).
    pub fn display_path(&self) -> PathBuf {
        self.path()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(crate::error::STDOUT_LABEL))
    }

    /// The file, folder or pattern written; `None` for standard output.
    pub fn path(&self) -> Option<&Path> {
        match self {
            OutputSpec::Container(p)
            | OutputSpec::Y4m(p)
            | OutputSpec::PngDir(p)
            | OutputSpec::ImageSequence(p)
            | OutputSpec::Image(p) => Some(p),
            OutputSpec::Stdout => None,
        }
    }

    /// Whether the output is YUV4MPEG2 (a file or standard output).
    pub fn is_y4m(&self) -> bool {
        matches!(self, OutputSpec::Y4m(_) | OutputSpec::Stdout)
    }
}

pub(crate) fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

/// Options for [`crate::open_source`].
#[derive(Debug, Clone, PartialEq)]
pub struct SourceOptions {
    /// First frame delivered (0-based, counted in decoded frames).
    pub start_frame: u64,
    /// One past the last frame delivered; `None` = to the end.
    pub end_frame: Option<u64>,
    /// Frame rate reported for image folders, which have none (default 30/1).
    pub image_fps: Rational,
    /// Decoded frames buffered ahead of the consumer by the reader thread (default 4, min 1).
    pub queue_frames: usize,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            start_frame: 0,
            end_frame: None,
            image_fps: Rational::new(30, 1),
            queue_frames: 4,
        }
    }
}

impl SourceOptions {
    /// Number of frames the range selects out of `total`.
    pub fn selected_count(&self, total: u64) -> u64 {
        self.end_frame
            .unwrap_or(u64::MAX)
            .min(total)
            .saturating_sub(self.start_frame)
    }

    pub(crate) fn wants(&self, index: u64) -> bool {
        index >= self.start_frame && self.end_frame.is_none_or(|e| index < e)
    }

    pub(crate) fn past_end(&self, index: u64) -> bool {
        self.end_frame.is_some_and(|e| index >= e)
    }
}

/// Options for [`crate::open_sink`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EncodeOptions {
    /// ffmpeg video encoder. `None`: `libx264` for mp4/mkv/mov/m4v/avi, `libvpx-vp9` for webm,
    /// ffmpeg's own default for other containers.
    pub codec: Option<String>,
    /// Constant rate factor. `None`: 18 for libx264, 20 for libx265, 30 for libvpx-vp9 and
    /// libsvtav1/libaom-av1 (with `-b:v 0`), the encoder default otherwise.
    pub crf: Option<u32>,
    /// Encoder preset (`-preset`), e.g. `medium`, `slow`.
    pub preset: Option<String>,
    /// Output pixel format. Containers: `None` keeps the input's chroma and bit depth where the
    /// encoder can (`yuv420p` for 8-bit 4:2:0 or non-ffmpeg input, `yuv420p10le` for 10-bit
    /// input, ...), and 4:4:4 for odd frame sizes, which 4:2:0 cannot hold; any format the encoder
    /// lists is allowed. y4m: see [`crate::y4m::Y4mLayout::for_pix_fmt`] (`None` = C444 full
    /// range, `yuv420p` = 4:2:0 limited range, [`crate::y4m::PLAYER_PIX_FMT`]).
    pub pix_fmt: Option<String>,
    /// Replace an existing output.
    pub overwrite: bool,
    /// When the frames are a part of the source (a frame range), the source time in seconds at
    /// which they start and how long they last, so that the copied audio/subtitles are cut to match.
    pub source_start_s: Option<f64>,
    pub source_duration_s: Option<f64>,
    /// Frames buffered between the caller and the writer thread (0 = default 4).
    pub queue_frames: usize,
}
