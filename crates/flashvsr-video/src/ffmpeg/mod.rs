//! The ffmpeg backend: `ffprobe -of json` for stream facts, `ffmpeg` over pipes for pixels.
//! No library bindings; the command-line tools are found on `PATH`, or at `$FLASHVSR_FFMPEG` /
//! `$FLASHVSR_FFPROBE` when those are set.

pub(crate) mod command;
pub(crate) mod plan;
pub(crate) mod probe;
pub(crate) mod sink;
pub(crate) mod source;

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::sync::OnceLock;

use crate::VideoError;

pub(crate) fn ffmpeg_program() -> OsString {
    std::env::var_os("FLASHVSR_FFMPEG").unwrap_or_else(|| "ffmpeg".into())
}

pub(crate) fn ffprobe_program() -> OsString {
    std::env::var_os("FLASHVSR_FFPROBE").unwrap_or_else(|| "ffprobe".into())
}

fn runs(program: OsString) -> bool {
    command::tool_command(program)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether both `ffmpeg` and `ffprobe` can be run (checked once per process).
pub fn ffmpeg_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| runs(ffmpeg_program()) && runs(ffprobe_program()))
}

pub(crate) fn require_ffmpeg() -> Result<(), VideoError> {
    if ffmpeg_available() {
        Ok(())
    } else {
        Err(VideoError::FfmpegNotFound)
    }
}

/// A local path as an ffmpeg URL: `file:` keeps names with `:` or a leading `-` from being read
/// as protocols or options. Non-existent paths (URLs) pass through unchanged.
pub(crate) fn ffmpeg_url(path: &Path, is_output: bool) -> OsString {
    if is_output || path.exists() {
        let mut s = OsString::from("file:");
        s.push(path.as_os_str());
        s
    } else {
        path.as_os_str().to_owned()
    }
}
