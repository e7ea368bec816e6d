//! The one error type of the crate: every variant renders as one line that names the file.

use std::path::{Path, PathBuf};

/// Why a video could not be read or written. `Display` is a single line starting with the file
/// (or `<stdin>` / `<stdout>`), so the CLI can print it as is.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    #[error(
        "ffmpeg not found: install it (apt install ffmpeg / brew install ffmpeg / https://ffmpeg.org) \
         or use .y4m / a PNG folder"
    )]
    FfmpegNotFound,

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// The file is readable but its content is not what we can handle (bad header, unsupported
    /// chroma format, mixed frame sizes, ...).
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },

    /// ffmpeg/ffprobe exited with an error; `msg` carries the last lines of its stderr.
    #[error("{}: ffmpeg failed: {msg}", path.display())]
    Ffmpeg { path: PathBuf, msg: String },

    #[error("{}: already exists (pass the overwrite option to replace it)", path.display())]
    OutputExists { path: PathBuf },

    /// A frame handed to a sink does not match the size the sink was opened with.
    #[error(
        "{}: frame {index} is {got_width}x{got_height} with {got_len} bytes, expected {width}x{height} RGB24",
        path.display()
    )]
    FrameSize {
        path: PathBuf,
        index: u64,
        width: usize,
        height: usize,
        got_width: usize,
        got_height: usize,
        got_len: usize,
    },

    /// Invalid arguments that do not belong to a file (e.g. a zero frame size).
    #[error("{0}")]
    Invalid(String),
}

impl VideoError {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        VideoError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub(crate) fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        VideoError::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    pub(crate) fn ffmpeg(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        VideoError::Ffmpeg {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
}

/// Label used in errors for the standard streams.
pub(crate) const STDIN_LABEL: &str = "<stdin>";
pub(crate) const STDOUT_LABEL: &str = "<stdout>";
