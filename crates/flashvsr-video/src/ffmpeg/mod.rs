//! The ffmpeg backend: `ffprobe -of json` for stream facts, `ffmpeg` over pipes for pixels.
//! No library bindings; the command-line tools are found on `PATH`, or at `$FLASHVSR_FFMPEG` /
//! `$FLASHVSR_FFPROBE` when those are set.

pub(crate) mod probe;
pub(crate) mod sink;
pub(crate) mod source;

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread::JoinHandle;

use crate::VideoError;

/// Lines of ffmpeg's stderr kept for error messages.
const STDERR_TAIL_LINES: usize = 12;

pub(crate) fn ffmpeg_program() -> OsString {
    std::env::var_os("FLASHVSR_FFMPEG").unwrap_or_else(|| "ffmpeg".into())
}

pub(crate) fn ffprobe_program() -> OsString {
    std::env::var_os("FLASHVSR_FFPROBE").unwrap_or_else(|| "ffprobe".into())
}

fn runs(program: OsString) -> bool {
    Command::new(program)
        .arg("-version")
        .stdin(Stdio::null())
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

/// Collects the last lines of a child's stderr on a thread, so the pipe never fills up.
pub(crate) fn spawn_stderr_tail(stderr: impl Read + Send + 'static) -> JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
        let mut reader = BufReader::new(stderr);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim().to_string();
                    if line.is_empty() {
                        continue;
                    }
                    if tail.len() == STDERR_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            }
        }
        tail.into()
    })
}

/// `status` plus the stderr tail as one line.
pub(crate) fn failure_message(status: Option<std::process::ExitStatus>, tail: &[String]) -> String {
    let status = match status {
        Some(s) => s.to_string(),
        None => "unknown exit status".to_string(),
    };
    if tail.is_empty() {
        status
    } else {
        format!("{status}: {}", tail.join(" | "))
    }
}

/// Maps a spawn error: a missing program becomes [`VideoError::FfmpegNotFound`].
pub(crate) fn spawn_error(path: &Path, e: std::io::Error) -> VideoError {
    if e.kind() == std::io::ErrorKind::NotFound {
        VideoError::FfmpegNotFound
    } else {
        VideoError::io(path, e)
    }
}
